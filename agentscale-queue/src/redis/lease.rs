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

impl Shard {
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
    /// after the lease timeout and tried again.
    pub(super) fn dead_letter_failed(&self, entry: &str, err: &Error) -> bool {
        tracing::warn!(queue = %self.inner.config.queue, %entry, error = %err, "could not dead-letter a malformed entry; it will be retried");
        false
    }

    /// Runs `fetch` (a Redis read that takes entries into this consumer's
    /// pending list) on its own task and stashes what it read before
    /// returning. The read completes even if the caller's future is
    /// dropped, so entries it took are never stranded: the next `lease`
    /// hands them out, in the order read, with no attempt charged.
    pub(super) async fn fetch_into_stash<T, F, Fut>(&self, fetch: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Shard) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(Vec<RawEntry>, T)>> + Send + 'static,
    {
        let q = self.clone();
        tokio::spawn(async move {
            let (entries, extra) = fetch(q.clone()).await?;
            if !entries.is_empty() {
                let now = std::time::Instant::now();
                let mut stash = q.inner.stash.lock();
                stash.extend(entries.into_iter().map(|e| Stashed::new(e, now)));
            }
            Ok(extra)
        })
        .await
        .map_err(|e| Error::backend("redis lease task failed", e))?
    }

    /// Hands out up to `max` stashed tasks, oldest read first. Malformed
    /// entries and entries stashed for more than half the lease timeout
    /// are dealt with first, on a task of their own (see [`tidy_stash`]).
    ///
    /// [`tidy_stash`]: Self::tidy_stash
    pub(super) async fn take_stashed(&self, max: usize) -> Result<Vec<Lease>> {
        let stale_after = self.inner.config.lease_timeout / 2;
        let needs_tidy = {
            let stash = self.inner.stash.lock();
            stash
                .iter()
                .any(|s| s.task.is_err() || s.at.elapsed() >= stale_after)
        };
        if needs_tidy {
            let q = self.clone();
            tokio::spawn(async move { q.tidy_stash(stale_after).await })
                .await
                .map_err(|e| Error::backend("redis lease task failed", e))?;
        }
        let mut stash = self.inner.stash.lock();
        let mut out = Vec::with_capacity(max.min(stash.len()));
        // A malformed entry stashed since the tidy stops the hand-out; the
        // next round dead-letters it.
        while out.len() < max && stash.front().is_some_and(|s| s.task.is_ok()) {
            let Some(Stashed {
                entry,
                task: Ok(task),
                ..
            }) = stash.pop_front()
            else {
                break;
            };
            // Attempts beyond max_attempts are still delivered: the worker
            // runtime dead-letters them with its reason.
            let attempt = task
                .attempt
                .saturating_add(entry.deliveries.min(u32::MAX as u64) as u32);
            let receipt = if self.inner.sharded {
                format!("{}:{}:{}", self.inner.index, entry.prio, entry.id)
            } else {
                format!("{}:{}", entry.prio, entry.id)
            };
            out.push(Lease::new(task, attempt, receipt, entry.deliveries));
        }
        Ok(out)
    }

    /// Dead-letters malformed stashed entries and renews the pending-entry
    /// idle time of stale ones (fenced; an entry another consumer reclaimed
    /// meanwhile is dropped from the stash, it is theirs now). Survivors go
    /// back to the front of the stash in their order.
    async fn tidy_stash(&self, stale_after: Duration) {
        let work: Vec<Stashed> = {
            let mut stash = self.inner.stash.lock();
            let mut work = Vec::new();
            let mut keep = std::collections::VecDeque::with_capacity(stash.len());
            for s in stash.drain(..) {
                if s.task.is_err() || s.at.elapsed() >= stale_after {
                    work.push(s);
                } else {
                    keep.push_back(s);
                }
            }
            *stash = keep;
            work
        };
        let mut survivors = Vec::new();
        for mut s in work {
            let e = &s.entry;
            match &s.task {
                Err(reason) => {
                    tracing::warn!(queue = %self.inner.config.queue, entry = %e.id, %reason, "dead-lettering a malformed stream entry");
                    if let Err(err) = self
                        .dead_letter_entry(
                            e.prio,
                            &e.id,
                            e.deliveries,
                            &e.payload,
                            true,
                            reason,
                            e.deliveries as u32,
                        )
                        .await
                    {
                        self.dead_letter_failed(&e.id, &err);
                    }
                }
                Ok(_) => {
                    let stream = self.inner.keys.streams[e.prio].clone();
                    match self
                        .settle(
                            e.prio,
                            &e.id,
                            e.deliveries,
                            "extend",
                            &stream,
                            b"",
                            ["0", "", "", ""],
                        )
                        .await
                    {
                        Ok(true) => {
                            s.at = std::time::Instant::now();
                            survivors.push(s);
                        }
                        Ok(false) => {
                            tracing::debug!(entry = %e.id, "stashed entry was reclaimed by another consumer");
                        }
                        // Keep it: the next lease tries again, and if the
                        // lease expires meanwhile the ack is refused (fenced).
                        Err(_) => survivors.push(s),
                    }
                }
            }
        }
        let mut stash = self.inner.stash.lock();
        for s in survivors.into_iter().rev() {
            stash.push_front(s);
        }
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
            // NOGROUP: the group is gone; UNBLOCKED: the stream was deleted
            // while this read blocked on it. Both: recreate and read again.
            Ok(Err(e)) if matches!(e.code(), Some("NOGROUP") | Some("UNBLOCKED")) => {
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
        // COUNT applies per stream, so this may hold more than `max`: the
        // rest stays stashed, in order and uncharged, for the next lease.
        Ok(out)
    }

    pub(super) async fn lease_inner(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let leases = self.take_stashed(max).await?;
            if !leases.is_empty() {
                return Ok(leases);
            }
            if !self.inner.stash.lock().is_empty() {
                continue; // a malformed entry to dead-letter first
            }
            let (got, next_due) = self
                .fetch_into_stash(move |q| async move {
                    let (entries, next_due) = q.lease_round(max).await?;
                    let got = !entries.is_empty();
                    Ok((entries, (got, next_due)))
                })
                .await?;
            if got {
                // Hand them out (or dead-letter them) on the next round.
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
            self.fetch_into_stash(move |q| async move { Ok((q.block_read(max, block).await?, ())) })
                .await?;
        }
    }
}

/// An entry read into this consumer's pending list, waiting to be handed out.
pub(super) struct Stashed {
    pub(super) entry: RawEntry,
    /// The decoded task, or why the entry is not one.
    pub(super) task: std::result::Result<Task, String>,
    /// When it was read (or its idle time last renewed).
    pub(super) at: std::time::Instant,
}

impl Stashed {
    fn new(entry: RawEntry, at: std::time::Instant) -> Self {
        let task = if entry.raw {
            Err("stream entry is not a task envelope: no `task` field".to_string())
        } else {
            Task::decode(&entry.payload).map_err(|e| format!("stream entry is not a task envelope: {e}"))
        };
        Stashed { entry, task, at }
    }
}
