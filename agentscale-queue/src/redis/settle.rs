//! Settling a lease on one shard: ack, ack in batches, nack, extend. Every
//! path runs the fenced settle script (see the module docs); the receipt was
//! parsed and routed to this shard by [`RedisQueue`](super::RedisQueue).

use std::time::Duration;

use agentscale_core::queue::{Lease, Nack};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Result, Task};

use super::reply::{bad_reply, parse_receipt};
use super::{delayed_member, Shard};

impl Shard {
    /// Runs the settle script on the entry `id` of priority stream `prio`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn settle(
        &self,
        prio: usize,
        id: &str,
        fence: u64,
        action: &str,
        target: &str,
        payload: &[u8],
        extra: [&str; 4],
    ) -> Result<bool> {
        let mut inv = self.inner.scripts.settle.key(&self.inner.keys.streams[prio]);
        inv.key(target);
        if action == "delay" {
            inv.key(&self.inner.keys.delayed_tasks);
        }
        inv.arg(&self.inner.config.consumer_group)
            .arg(&self.inner.consumer)
            .arg(id)
            .arg(fence)
            .arg(action)
            .arg(payload)
            .arg(&extra[..]);
        let done: i64 = self.eval(&inv, action).await?;
        Ok(done == 1)
    }

    pub(super) fn lease_lost(lease: &Lease, op: &str) -> Error {
        Error::LeaseLost(format!(
            "{op} of task {} (delivery {}, receipt {}) refused: the lease expired and was reclaimed, or was already settled",
            lease.task().id,
            lease.fence(),
            lease.receipt()
        ))
    }

    /// Settles entry `id` by putting `task` back: into its priority stream
    /// when `delay` is zero, else into the delayed set, due `delay` from now.
    /// Serves `Nack::Retry`, `Nack::Release` and `Nack::Defer` alike.
    async fn requeue(&self, prio: usize, id: &str, fence: u64, task: &Task, delay: Duration) -> Result<bool> {
        let env = task.encode()?;
        let target_prio = task.priority.index();
        if delay.is_zero() {
            let stream = &self.inner.keys.streams[target_prio];
            return self
                .settle(prio, id, fence, "xadd", stream, &env, ["", "", "", ""])
                .await;
        }
        let due = (now_ms() + delay.as_millis() as u64).to_string();
        let member = delayed_member(target_prio, &task.id);
        self.settle(
            prio,
            id,
            fence,
            "delay",
            &self.inner.keys.delayed,
            &env,
            [&due, &member, "", ""],
        )
        .await
    }

    pub(super) async fn ack(&self, lease: &Lease, prio: usize, id: &str) -> Result<()> {
        let stream = self.inner.keys.streams[prio].clone();
        let done = match self.ordered_session(lease.task()) {
            Some(s) => {
                self.settle_session(lease, s, prio, id, "ack", &stream, b"", ["", "", "", ""])
                    .await?
            }
            None => {
                self.settle(prio, id, lease.fence(), "ack", &stream, b"", ["", "", "", ""])
                    .await?
            }
        };
        if done {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "ack"))
        }
    }

    /// Acks `leases` (all issued by this shard): one script per 1,000.
    pub(super) async fn ack_batch(&self, leases: &[&Lease]) -> Vec<Result<()>> {
        if leases.iter().any(|l| self.ordered_session(l.task()).is_some()) {
            // Heads of ordered sessions advance their session in the same
            // script as the ack: one script per lease, pipelined.
            let mut out = Vec::with_capacity(leases.len());
            for chunk in leases.chunks(1000) {
                out.extend(self.ack_batch_ordered(chunk).await);
            }
            return out;
        }
        let mut out: Vec<Result<()>> = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(1000) {
            let parsed: Vec<Result<(usize, &str)>> = chunk
                .iter()
                .map(|l| parse_receipt(l).map(|r| (r.prio, r.id)))
                .collect();
            let mut inv = self.inner.scripts.ack_batch.key(&self.inner.keys.streams[..]);
            inv.arg(&self.inner.config.consumer_group)
                .arg(&self.inner.consumer);
            let mut n = 0;
            for (l, p) in chunk.iter().zip(&parsed) {
                if let Ok((p, id)) = p {
                    inv.arg(*p).arg(*id).arg(l.fence());
                    n += 1;
                }
            }
            let codes: Result<Vec<i64>> = if n > 0 {
                self.eval(&inv, "ack_batch").await
            } else {
                Ok(Vec::new())
            };
            let mut codes_it = codes.as_ref().ok().map(|c| c.iter());
            for (l, p) in chunk.iter().zip(parsed) {
                out.push(match (p, &codes) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(Error::from_kind(e.kind(), e.to_string())),
                    (Ok(_), Ok(_)) => match codes_it.as_mut().and_then(|i| i.next()) {
                        Some(1) => Ok(()),
                        Some(_) => Err(Self::lease_lost(l, "ack")),
                        None => Err(bad_reply("ack_batch")),
                    },
                });
            }
        }
        out
    }

    pub(super) async fn nack(&self, lease: &Lease, prio: usize, id: &str, nack: Nack) -> Result<()> {
        let mut task = lease.task().clone();
        let done = match nack {
            Nack::Retry(delay) => {
                task.attempt = lease.attempt();
                self.requeue(prio, id, lease.fence(), &task, delay).await?
            }
            Nack::Release | Nack::Defer(_) => {
                let delay = match nack {
                    Nack::Defer(d) => d,
                    _ => Duration::ZERO,
                };
                task.attempt = lease.attempt().saturating_sub(1);
                self.requeue(prio, id, lease.fence(), &task, delay).await?
            }
            Nack::DeadLetter(reason) => {
                task.attempt = lease.attempt();
                let env = task.encode()?;
                match self.ordered_session(lease.task()) {
                    Some(s) => {
                        let (attempts, at) = (lease.attempt().to_string(), now_ms().to_string());
                        self.settle_session(
                            lease,
                            s,
                            prio,
                            id,
                            "dead",
                            &self.inner.keys.dead,
                            &env,
                            [&reason, &attempts, &at, "0"],
                        )
                        .await?
                    }
                    None => {
                        self.dead_letter_entry(prio, id, lease.fence(), &env, false, &reason, lease.attempt())
                            .await?
                    }
                }
            }
        };
        if done {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "nack"))
        }
    }

    pub(super) async fn extend(&self, lease: &Lease, prio: usize, id: &str, by: Duration) -> Result<()> {
        // The lease expires when the entry's idle time reaches lease_timeout;
        // setting idle = lease_timeout - by makes it expire `by` from now
        // (at most one full lease_timeout: Redis clamps idle at 0).
        let idle = self
            .inner
            .config
            .lease_timeout
            .saturating_sub(by)
            .as_millis()
            .to_string();
        let stream = self.inner.keys.streams[prio].clone();
        if self
            .settle(
                prio,
                id,
                lease.fence(),
                "extend",
                &stream,
                b"",
                [&idle, "", "", ""],
            )
            .await?
        {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "extend"))
        }
    }
}
