//! Leasing: the lease script, the blocking read, reclaim, and turning
//! entries into leases (dead-lettering the malformed ones).

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentscale_core::queue::Lease;
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Result, Task};
use redis::Value;

use super::*;

/// Blocking reads wake up at least this often (to promote delayed tasks
/// and reclaim expired leases).
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(2);

impl RedisQueue {
    /// Moves an entry this consumer holds to the dead-letter stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dead_letter_entry(
        &self,
        prio: usize,
        id: &str,
        fence: u64,
        payload: &[u8],
        raw: bool,
        reason: &str,
        attempts: u32,
    ) -> Result<bool> {
        let attempts = attempts.to_string();
        let at = now_ms().to_string();
        self.settle(
            prio,
            id,
            fence,
            "dead",
            &self.inner.keys.dead,
            payload,
            [reason, &attempts, &at, if raw { "1" } else { "0" }],
        )
        .await
    }

    /// A failed dead-lettering leaves the entry pending: it is reclaimed
    /// after the lease timeout and tried again. Leases already read in the
    /// same call are still returned.
    pub(super) fn dead_letter_failed(&self, entry: &str, err: &Error) -> bool {
        tracing::warn!(queue = %self.inner.config.queue, %entry, error = %err, "could not dead-letter a malformed entry; it will be retried");
        false
    }

    /// Turns entries into leases; dead-letters entries that are not
    /// envelopes and tasks whose attempts are exhausted.
    pub(super) async fn to_leases(&self, entries: Vec<RawEntry>) -> Result<Vec<Lease>> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let fence = e.deliveries;
            if e.raw {
                tracing::warn!(queue = %self.inner.config.queue, entry = %e.id, "dead-lettering a stream entry without a `task` field");
                self.dead_letter_entry(
                    e.prio,
                    &e.id,
                    fence,
                    &e.payload,
                    true,
                    "stream entry is not a task envelope: no `task` field",
                    e.deliveries as u32,
                )
                .await
                .unwrap_or_else(|err| self.dead_letter_failed(&e.id, &err));
                continue;
            }
            match Task::decode(&e.payload) {
                Err(err) => {
                    tracing::warn!(queue = %self.inner.config.queue, entry = %e.id, error = %err, "dead-lettering a malformed stream entry");
                    self.dead_letter_entry(
                        e.prio,
                        &e.id,
                        fence,
                        &e.payload,
                        true,
                        &format!("stream entry is not a task envelope: {err}"),
                        e.deliveries as u32,
                    )
                    .await
                    .unwrap_or_else(|err| self.dead_letter_failed(&e.id, &err));
                }
                Ok(task) => {
                    // Attempts beyond max_attempts are still delivered: the
                    // worker runtime dead-letters them with its reason.
                    let attempt = task
                        .attempt
                        .saturating_add(e.deliveries.min(u32::MAX as u64) as u32);
                    out.push(Lease::new(task, attempt, format!("{}:{}", e.prio, e.id), fence));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn take_reclaim_turn(&self, now: u64) -> bool {
        let every = self.inner.config.reclaim_every().as_millis() as u64;
        let last = self.inner.last_reclaim_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every
            && self
                .inner
                .last_reclaim_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// One round of the lease script. Returns entries and the next due time
    /// of the delayed set.
    pub(super) async fn lease_round(&self, max: usize) -> Result<(Vec<RawEntry>, Option<u64>)> {
        let now = now_ms();
        let reclaim = self.take_reclaim_turn(now);
        let cursors = self.inner.cursors.lock().clone();
        let keys = &self.inner.keys;
        let mut inv = self.inner.scripts.lease.key(&keys.streams[..]);
        inv.key(&keys.delayed)
            .key(&keys.delayed_tasks)
            .arg(&self.inner.config.consumer_group)
            .arg(&self.inner.consumer)
            .arg(max)
            .arg(now)
            .arg(if reclaim { "1" } else { "0" })
            .arg(self.inner.config.lease_timeout.as_millis() as u64)
            .arg(self.inner.config.promote_batch)
            .arg(&cursors[..]);
        let reply: Vec<Value> = match self.eval(&inv, "lease").await {
            Ok(r) => r,
            Err(e) => {
                if reclaim {
                    // Let the next call try the reclaim again.
                    self.inner.last_reclaim_ms.store(0, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        let mut it = reply.into_iter();
        let next_due = it
            .next()
            .as_ref()
            .and_then(value_i64)
            .and_then(|d| u64::try_from(d).ok());
        let mut new_cursors = cursors;
        for c in new_cursors.iter_mut() {
            if let Some(s) = it.next().and_then(value_string) {
                *c = s;
            }
        }
        if reclaim {
            *self.inner.cursors.lock() = new_cursors;
        }
        let mut entries = Vec::new();
        while let Some(p) = it.next() {
            let (Some(id), Some(d), Some(raw), Some(payload)) = (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(bad_reply("lease"));
            };
            let prio = value_i64(&p)
                .and_then(|p| usize::try_from(p).ok())
                .filter(|p| *p < 3);
            let (Some(prio), Some(id), Some(deliveries), Some(raw)) =
                (prio, value_string(id), value_i64(&d), value_i64(&raw))
            else {
                return Err(bad_reply("lease"));
            };
            entries.push(RawEntry {
                prio,
                id,
                deliveries: deliveries.max(1) as u64,
                raw: raw == 1,
                payload: value_bytes(payload).unwrap_or_default(),
            });
        }
        Ok((entries, next_due))
    }

    /// Blocks on a dedicated connection for new entries on any priority.
    pub(super) async fn block_read(&self, max: usize, block: Duration) -> Result<Vec<RawEntry>> {
        let keys = &self.inner.keys;
        let mut conn = self.inner.redis.blocking_connection().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.inner.config.consumer_group)
            .arg(&self.inner.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&keys.streams[..])
            .arg(&[">", ">", ">"][..]);
        let limit = block + self.inner.redis.config().command_timeout;
        let reply: Value = match tokio::time::timeout(limit, cmd.query_async(&mut *conn)).await {
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "redis blocking XREADGROUP exceeded {limit:?}"
                )))
            }
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.code() == Some("NOGROUP") => {
                drop(conn);
                tracing::info!(queue = %self.inner.config.queue, "consumer group missing (Redis restarted?); recreating");
                self.ensure_groups().await?;
                return Ok(Vec::new());
            }
            Ok(Err(e)) => return Err(map_err("XREADGROUP", e)),
        };
        let mut out = Vec::new();
        let streams = match reply {
            Value::Nil => return Ok(out),
            Value::Array(s) => s
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut kv) if kv.len() == 2 => {
                        let entries = kv.pop()?;
                        let key = value_string(kv.pop()?)?;
                        Some((key, entries))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Value::Map(m) => m
                .into_iter()
                .filter_map(|(k, v)| Some((value_string(k)?, v)))
                .collect(),
            _ => return Err(bad_reply("XREADGROUP")),
        };
        for (key, entries) in streams {
            let Some(prio) = keys.streams.iter().position(|s| *s == key) else {
                continue;
            };
            let Value::Array(entries) = entries else { continue };
            for e in entries {
                let Value::Array(mut parts) = e else { continue };
                if parts.len() != 2 {
                    continue;
                }
                let fields = parts.pop().unwrap_or(Value::Nil);
                let Some(id) = parts.pop().and_then(value_string) else {
                    continue;
                };
                let fields = entry_fields(fields);
                let (raw, payload) = match fields.iter().find(|(k, _)| k == "task") {
                    Some((_, v)) => (false, v.clone()),
                    None => (
                        true,
                        fields
                            .iter()
                            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.clone()])
                            .collect::<Vec<_>>()
                            .join(&b' '),
                    ),
                };
                out.push(RawEntry {
                    prio,
                    id,
                    deliveries: 1,
                    raw,
                    payload,
                });
            }
        }
        // COUNT applies per stream: hand back anything beyond `max`,
        // uncharged, so callers never hold more than they asked for.
        if out.len() > max {
            for e in out.split_off(max) {
                let target = keys.streams[e.prio].clone();
                self.settle(e.prio, &e.id, 1, "xadd", &target, &e.payload, ["", "", "", ""])
                    .await?;
            }
        }
        Ok(out)
    }

    pub(super) async fn lease_inner(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (entries, next_due) = self.lease_round(max).await?;
            let got = !entries.is_empty();
            let leases = self.to_leases(entries).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
            if got {
                // Everything read was dead-lettered; read again at once.
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut block = (deadline - now)
                .min(MAX_BLOCK)
                .min(self.inner.config.reclaim_every());
            if let Some(due) = next_due {
                block = block.min(Duration::from_millis(due.saturating_sub(now_ms())));
            }
            if block < Duration::from_millis(1) {
                continue;
            }
            let entries = self.block_read(max, block).await?;
            let leases = self.to_leases(entries).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
        }
    }
}
