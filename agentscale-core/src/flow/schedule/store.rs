//! Where schedules live, and the claim that makes a tick fire once.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Schedule;
use crate::error::{Error, Result};

/// A schedule and its run state, as listed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleState {
    /// The schedule.
    pub schedule: Schedule,
    /// Paused: fires nothing until resumed.
    pub paused: bool,
    /// The most recent tick fired (ms since the epoch), if any.
    pub last_fired_ms: Option<u64>,
}

impl ScheduleState {
    /// A listed state (for store implementations).
    pub fn new(schedule: Schedule, paused: bool, last_fired_ms: Option<u64>) -> Self {
        ScheduleState {
            schedule,
            paused,
            last_fired_ms,
        }
    }
}

/// Holds schedules and arbitrates which scheduler fires a tick.
/// Object-safe: use it as `Arc<dyn ScheduleStore>`.
#[async_trait]
pub trait ScheduleStore: Send + Sync + Debug {
    /// Adds or replaces a schedule (validated first). Replacing keeps its
    /// paused flag and fired ticks.
    async fn put(&self, schedule: &Schedule) -> Result<()>;

    /// Removes a schedule; false when there was none by that name.
    async fn remove(&self, name: &str) -> Result<bool>;

    /// Pauses or resumes a schedule; [`Error::NotFound`] when unknown.
    async fn set_paused(&self, name: &str, paused: bool) -> Result<()>;

    /// Every schedule with its state, sorted by name.
    async fn list(&self) -> Result<Vec<ScheduleState>>;

    /// Of `ticks` (of schedule `name`), claims for `owner` those that are
    /// neither fired nor claimed by a live claim, each for `ttl`; returns the
    /// ticks claimed. Atomic per tick: two schedulers never both claim one.
    async fn claim(&self, name: &str, ticks: &[u64], owner: &str, ttl: Duration) -> Result<Vec<u64>>;

    /// Marks a claimed tick fired (remembered for `retain`) and raises the
    /// schedule's last fired tick.
    async fn mark_fired(&self, name: &str, tick: u64, retain: Duration) -> Result<()>;
}

/// Compile-time check that the trait stays object-safe.
#[allow(dead_code)]
fn _object_safe(_: Box<dyn ScheduleStore>) {}

/// Schedules in process memory: for schedulers in one process (tests, a
/// single replica with the in-memory queue).
#[derive(Debug, Default)]
pub struct LocalScheduleStore {
    state: Mutex<LocalState>,
}

#[derive(Debug, Default)]
struct LocalState {
    schedules: BTreeMap<String, ScheduleState>,
    /// (name, tick) -> (fired, valid until).
    ticks: HashMap<(String, u64), (bool, Instant)>,
}

impl LocalScheduleStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ScheduleStore for LocalScheduleStore {
    async fn put(&self, schedule: &Schedule) -> Result<()> {
        schedule.validate()?;
        let mut st = self.state.lock();
        match st.schedules.get_mut(&schedule.name) {
            Some(s) => s.schedule = schedule.clone(),
            None => {
                st.schedules.insert(
                    schedule.name.clone(),
                    ScheduleState {
                        schedule: schedule.clone(),
                        paused: false,
                        last_fired_ms: None,
                    },
                );
            }
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<bool> {
        let mut st = self.state.lock();
        st.ticks.retain(|(n, _), _| n != name);
        Ok(st.schedules.remove(name).is_some())
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        match self.state.lock().schedules.get_mut(name) {
            Some(s) => {
                s.paused = paused;
                Ok(())
            }
            None => Err(Error::NotFound(format!("schedule {name:?}"))),
        }
    }

    async fn list(&self) -> Result<Vec<ScheduleState>> {
        Ok(self.state.lock().schedules.values().cloned().collect())
    }

    async fn claim(&self, name: &str, ticks: &[u64], _owner: &str, ttl: Duration) -> Result<Vec<u64>> {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.ticks.retain(|_, (_, until)| *until > now);
        let mut out = Vec::new();
        for &t in ticks {
            if let std::collections::hash_map::Entry::Vacant(e) = st.ticks.entry((name.to_string(), t)) {
                e.insert((false, now + ttl));
                out.push(t);
            }
        }
        Ok(out)
    }

    async fn mark_fired(&self, name: &str, tick: u64, retain: Duration) -> Result<()> {
        let now = Instant::now();
        let mut st = self.state.lock();
        st.ticks.insert((name.to_string(), tick), (true, now + retain));
        if let Some(s) = st.schedules.get_mut(name) {
            s.last_fired_ms = Some(s.last_fired_ms.map_or(tick, |l| l.max(tick)));
        }
        Ok(())
    }
}
