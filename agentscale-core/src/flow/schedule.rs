//! Scheduled and repeating tasks: cron expressions with time zones, and
//! fixed intervals.
//!
//! A [`Schedule`] names a task template and when to enqueue it. Schedules
//! live in a [`ScheduleStore`] ([`LocalScheduleStore`] in process,
//! `agentscale_queue::redis::RedisScheduleStore` shared by a fleet), so
//! `list`, `pause` and `remove` act on every scheduler at once. Any number
//! of [`Scheduler`]s may run over one store (one per replica, for
//! availability).
//!
//! # Guarantees
//!
//! * **One enqueue per tick.** Before firing a tick, a scheduler claims it
//!   in the store (an atomic set-if-absent on the key (schedule, tick),
//!   valid for `claim_ttl`); only the claimant enqueues, then marks the tick
//!   fired. The task carries the idempotency key `schedule:<name>:<tick ms>`,
//!   so on a queue with idempotent enqueue even a claimant that died between
//!   its enqueue and its mark cannot cause a second copy.
//! * **No tick lost to a dead scheduler.** A claim that is not marked fired
//!   expires after `claim_ttl`, and another scheduler fires the tick then
//!   (late, not lost), as long as the tick is still within the
//!   `catch_up_window`.
//! * **Downtime.** Ticks that fall while *every* scheduler is down are not
//!   replayed one by one: when a scheduler comes back, ticks within the
//!   `catch_up_window` fire, and of the older ones only the most recent
//!   fires, once (at most one catch-up per schedule). A schedule never fires
//!   ticks from before it was created.
//! * A paused schedule fires nothing; its missed ticks follow the downtime
//!   rule when it is resumed.

mod runner;
mod store;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::validate_identifier;
use crate::error::{Error, Result};
use crate::task::{now_ms, Task};

pub use runner::{tick_of, Scheduler, SchedulerBuilder, SchedulerReport};
pub use store::{LocalScheduleStore, ScheduleState, ScheduleStore};

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Timing {
    /// A cron expression (5 fields, or 6 with seconds first) in an IANA
    /// time zone (`Europe/Paris`; `UTC` by default).
    Cron {
        /// The expression, e.g. `0 3 * * *`.
        expr: String,
        /// The IANA time zone name.
        time_zone: String,
    },
    /// Every `interval`, counted from the schedule's creation.
    Every {
        /// The interval in milliseconds (at least 1 s).
        interval_ms: u64,
    },
}

/// A named, repeating enqueue of a task template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Schedule {
    /// The name (an identifier): the key of the schedule in its store.
    pub name: String,
    /// When it fires.
    pub timing: Timing,
    /// The task enqueued at each tick (a fresh id each time; the
    /// idempotency key and the `agentscale-schedule` headers are set).
    pub template: Task,
    /// When the schedule was created (ms since the epoch): no tick before
    /// this fires, and intervals count from it.
    pub created_ms: u64,
}

/// Header naming the schedule on an enqueued task.
pub const HEADER_SCHEDULE: &str = "agentscale-schedule";
/// Header holding the tick (ms since the epoch) of an enqueued task.
pub const HEADER_TICK: &str = "agentscale-schedule-tick";
/// Shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Schedule {
    /// A cron schedule. [`Error::InvalidConfig`] for a name that is not an
    /// identifier, an invalid cron expression or an unknown time zone.
    pub fn cron(name: impl Into<String>, expr: &str, time_zone: &str, template: Task) -> Result<Schedule> {
        let s = Schedule {
            name: name.into(),
            timing: Timing::Cron {
                expr: expr.to_string(),
                time_zone: time_zone.to_string(),
            },
            template,
            created_ms: now_ms(),
        };
        s.validate()?;
        Ok(s)
    }

    /// A fixed-interval schedule (at least [`MIN_INTERVAL`]).
    pub fn every(name: impl Into<String>, interval: Duration, template: Task) -> Result<Schedule> {
        let s = Schedule {
            name: name.into(),
            timing: Timing::Every {
                interval_ms: interval.as_millis().min(u64::MAX as u128) as u64,
            },
            template,
            created_ms: now_ms(),
        };
        s.validate()?;
        Ok(s)
    }

    /// Sets the creation time (ms since the epoch) that ticks count from.
    pub fn with_created_ms(mut self, ms: u64) -> Self {
        self.created_ms = ms;
        self
    }

    /// Checks name, timing and template; [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let cfg = |e: Error| Error::InvalidConfig(e.to_string());
        validate_identifier("schedule name", &self.name).map_err(cfg)?;
        self.template
            .validate()
            .map_err(|e| Error::InvalidConfig(format!("schedule {}: template: {e}", self.name)))?;
        match &self.timing {
            Timing::Cron { expr, time_zone } => {
                parse_cron(&self.name, expr)?;
                parse_tz(&self.name, time_zone)?;
            }
            Timing::Every { interval_ms } => {
                if *interval_ms < MIN_INTERVAL.as_millis() as u64 {
                    return Err(Error::InvalidConfig(format!(
                        "schedule {}: interval of {interval_ms} ms is below the minimum of {MIN_INTERVAL:?}",
                        self.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The ticks (ms since the epoch) after `after_ms` and at or before
    /// `until_ms`, oldest first, at most `max` (the most recent ones).
    pub fn ticks_between(&self, after_ms: u64, until_ms: u64, max: usize) -> Result<Vec<u64>> {
        let after_ms = after_ms.max(self.created_ms.saturating_sub(1));
        if until_ms <= after_ms || max == 0 {
            return Ok(Vec::new());
        }
        match &self.timing {
            Timing::Every { interval_ms } => {
                let i = (*interval_ms).max(1);
                let last_k = (until_ms - self.created_ms) / i;
                let first_k = (after_ms.saturating_sub(self.created_ms) / i) + 1;
                let first_k = first_k.max(last_k.saturating_sub(max as u64 - 1)).max(1);
                Ok((first_k..=last_k).map(|k| self.created_ms + k * i).collect())
            }
            Timing::Cron { expr, time_zone } => {
                let cron = parse_cron(&self.name, expr)?;
                let tz = parse_tz(&self.name, time_zone)?;
                // Walk back from `until` so only the `max` most recent are computed.
                let mut out = Vec::new();
                let mut at = to_tz(&tz, until_ms);
                let mut inclusive = true;
                while out.len() < max {
                    let Ok(prev) = cron.find_previous_occurrence(&at, inclusive) else {
                        break;
                    };
                    let ms = prev.timestamp_millis().max(0) as u64;
                    if ms <= after_ms {
                        break;
                    }
                    out.push(ms);
                    at = prev;
                    inclusive = false;
                }
                out.reverse();
                Ok(out)
            }
        }
    }

    /// The most recent tick at or before `until_ms` (after creation), if any.
    pub fn latest_tick(&self, until_ms: u64) -> Result<Option<u64>> {
        Ok(self.ticks_between(0, until_ms, 1)?.pop())
    }

    /// The task to enqueue for `tick_ms`.
    pub fn task_for(&self, tick_ms: u64) -> Task {
        let mut t = self.template.clone();
        t.id = crate::TaskId::generate();
        t.enqueued_at_ms = now_ms();
        t.idempotency_key = Some(format!("schedule:{}:{tick_ms}", self.name));
        t.headers.insert(HEADER_SCHEDULE.into(), self.name.clone());
        t.headers.insert(HEADER_TICK.into(), tick_ms.to_string());
        t
    }
}

fn parse_cron(name: &str, expr: &str) -> Result<croner::Cron> {
    // Seconds are optional: 5 fields, or 6 with seconds first.
    croner::parser::CronParser::new()
        .parse(expr)
        .map_err(|e| Error::InvalidConfig(format!("schedule {name}: invalid cron expression {expr:?}: {e}")))
}

fn parse_tz(name: &str, tz: &str) -> Result<chrono_tz::Tz> {
    tz.parse::<chrono_tz::Tz>()
        .map_err(|_| Error::InvalidConfig(format!("schedule {name}: unknown time zone {tz:?}")))
}

fn to_tz(tz: &chrono_tz::Tz, ms: u64) -> DateTime<chrono_tz::Tz> {
    let utc = Utc
        .timestamp_millis_opt(ms.min(i64::MAX as u64) as i64)
        .single()
        .unwrap_or_default();
    utc.with_timezone(tz)
}

#[cfg(test)]
mod tests;
