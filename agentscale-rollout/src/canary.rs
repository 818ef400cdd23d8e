//! Versioned fleets and the weighted, session-sticky router between a
//! stable and a candidate version (canary and blue-green).
//!
//! Each version is a [`Fleet`]: its own queue, result store and workers
//! (usually a Deployment per version). The [`Router`] sends each new task to
//! one of them: a task's *key* (its session id, or its task id when it has
//! none) is hashed (FNV-1a, salted with the router's salt) into one of
//! 10,000 buckets, and buckets below `candidate weight × 100` go to the
//! candidate. So a session stays on one version while the weight holds,
//! and raising the weight only moves stable sessions to the candidate,
//! never back. On rollback the weight drops to 0 and every session goes to
//! stable at once.
//!
//! The router counts every task it sees finish ([`Routed::wait`]) in the
//! version's [`VersionCounters`]: the error rate and latency the
//! [analysis](crate::analysis) reads.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::worker::WorkerStats;
use agentscale_core::{Client, Error, Pending, Result, ResultStore, Task, TaskQueue, TaskResult};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::counters::VersionCounters;

/// Which side of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The version in production.
    Stable,
    /// The version being rolled out.
    Candidate,
}

impl Side {
    /// `"stable"` or `"candidate"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Stable => "stable",
            Side::Candidate => "candidate",
        }
    }
}

/// One version of an agent: its queue, result store, workers and counters.
#[derive(Clone)]
pub struct Fleet {
    version: String,
    client: Client,
    queue: Arc<dyn TaskQueue>,
    results: Arc<dyn ResultStore>,
    workers: Vec<Arc<WorkerStats>>,
    counters: Arc<VersionCounters>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("version", &self.version)
            .field("queue", &self.queue.name())
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Version `version` served from `queue`, its results recorded in
    /// `results`. Register its workers with [`Fleet::worker`].
    pub fn new(version: impl Into<String>, queue: Arc<dyn TaskQueue>, results: Arc<dyn ResultStore>) -> Self {
        Fleet {
            version: version.into(),
            client: Client::new(queue.clone(), results.clone()),
            queue,
            results,
            workers: Vec::new(),
            counters: Arc::default(),
        }
    }

    /// Registers a worker of this version (its [`Worker::stats`](agentscale_core::Worker::stats)
    /// handle). A fleet without workers is refused by the router and the
    /// shadow: its tasks would never run.
    pub fn worker(mut self, stats: Arc<WorkerStats>) -> Self {
        self.workers.push(stats);
        self
    }

    /// The version name.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The fleet's queue.
    pub fn queue(&self) -> &Arc<dyn TaskQueue> {
        &self.queue
    }

    /// The fleet's result store.
    pub fn results(&self) -> &Arc<dyn ResultStore> {
        &self.results
    }

    /// A client on the fleet's queue and result store.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Registered workers.
    pub fn workers(&self) -> &[Arc<WorkerStats>] {
        &self.workers
    }

    /// The version's live counters.
    pub fn counters(&self) -> &Arc<VersionCounters> {
        &self.counters
    }

    pub(crate) fn require_workers(&self, role: &str) -> Result<()> {
        if self.workers.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the {role} version {:?} has no workers: its tasks would never run (register them with Fleet::worker)",
                self.version
            )));
        }
        Ok(())
    }
}

/// FNV-1a, 64 bit: stable across processes and releases (unlike
/// `DefaultHasher`), so every replica routes a session the same way.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Splits new tasks between a stable and a candidate [`Fleet`].
pub struct Router {
    stable: Fleet,
    candidate: Fleet,
    /// Candidate weight in basis points (0..=10_000).
    weight_bp: AtomicU32,
    salt: String,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("stable", &self.stable.version)
            .field("candidate", &self.candidate.version)
            .field("candidate_weight", &self.candidate_weight())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Router`].
#[derive(Debug)]
pub struct RouterBuilder {
    stable: Fleet,
    candidate: Fleet,
    weights: (u32, u32),
    salt: String,
}

impl RouterBuilder {
    /// The starting split in percent, stable first; the two must sum to 100
    /// (default 100 / 0).
    pub fn weights(mut self, stable: u32, candidate: u32) -> Self {
        self.weights = (stable, candidate);
        self
    }

    /// Salt of the session hash (default: the candidate's version name), so
    /// two rollouts do not pick the same sessions.
    pub fn salt(mut self, salt: impl Into<String>) -> Self {
        self.salt = salt.into();
        self
    }

    /// Checks the weights and that both versions have workers.
    pub fn build(self) -> Result<Router> {
        let (s, c) = self.weights;
        if s.checked_add(c) != Some(100) {
            return Err(Error::InvalidConfig(format!(
                "router weights must sum to 100 %: stable {s} + candidate {c} = {}",
                u64::from(s) + u64::from(c)
            )));
        }
        if self.stable.version == self.candidate.version {
            return Err(Error::InvalidConfig(format!(
                "stable and candidate are the same version {:?}",
                self.stable.version
            )));
        }
        self.stable.require_workers("stable")?;
        self.candidate.require_workers("candidate")?;
        Ok(Router {
            stable: self.stable,
            candidate: self.candidate,
            weight_bp: AtomicU32::new(c * 100),
            salt: self.salt,
        })
    }
}

impl Router {
    /// A router between `stable` and `candidate`.
    pub fn builder(stable: Fleet, candidate: Fleet) -> RouterBuilder {
        let salt = candidate.version.clone();
        RouterBuilder {
            stable,
            candidate,
            weights: (100, 0),
            salt,
        }
    }

    /// The stable fleet.
    pub fn stable(&self) -> &Fleet {
        &self.stable
    }

    /// The candidate fleet.
    pub fn candidate(&self) -> &Fleet {
        &self.candidate
    }

    /// The fleet of `side`.
    pub fn fleet(&self, side: Side) -> &Fleet {
        match side {
            Side::Stable => &self.stable,
            Side::Candidate => &self.candidate,
        }
    }

    /// The candidate's share of new tasks, in percent.
    pub fn candidate_weight(&self) -> f64 {
        f64::from(self.weight_bp.load(Ordering::Acquire)) / 100.0
    }

    /// Sets the candidate's share of new tasks, in percent (`0..=100`).
    pub fn set_candidate_weight(&self, percent: f64) -> Result<()> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::InvalidInput(format!(
                "candidate weight must be in 0..=100 %, got {percent}"
            )));
        }
        self.weight_bp
            .store((percent * 100.0).round() as u32, Ordering::Release);
        Ok(())
    }

    /// The side a task goes to at the current weight.
    pub fn route(&self, task: &Task) -> Side {
        let key = task.session_id.as_deref().unwrap_or(task.id.as_str());
        let bucket = fnv1a(&[self.salt.as_bytes(), key.as_bytes()]) % 10_000;
        if bucket < u64::from(self.weight_bp.load(Ordering::Acquire)) {
            Side::Candidate
        } else {
            Side::Stable
        }
    }

    /// Routes `task` and enqueues it on its version's queue. The task gets
    /// the header `agentscale-version` with the version name.
    pub async fn submit(&self, task: Task) -> Result<Routed> {
        let side = self.route(&task);
        let fleet = self.fleet(side);
        let task = task.with_header(VERSION_HEADER, fleet.version.clone());
        let pending = fleet.client.submit(task).await?;
        Ok(Routed {
            side,
            version: fleet.version.clone(),
            pending,
            started: Instant::now(),
            counters: fleet.counters.clone(),
        })
    }

    /// [`Router::submit`] then [`Routed::wait`].
    pub async fn call(&self, task: Task, timeout: Duration) -> Result<TaskResult> {
        self.submit(task).await?.wait(timeout).await
    }
}

/// The task header naming the version a task was routed to.
pub const VERSION_HEADER: &str = "agentscale-version";

/// A routed task.
#[derive(Debug)]
pub struct Routed {
    side: Side,
    version: String,
    pending: Pending,
    started: Instant,
    counters: Arc<VersionCounters>,
}

impl Routed {
    /// The side it went to.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The version it went to.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The pending result.
    pub fn pending(&self) -> &Pending {
        &self.pending
    }

    /// Waits for the task's result and counts it in its version's counters:
    /// an error unless it completed; a wait that times out counts as an
    /// error with the timeout as latency (and returns `Error::Timeout`).
    pub async fn wait(self, timeout: Duration) -> Result<TaskResult> {
        let r = self.pending.wait(timeout).await;
        let ok = matches!(&r, Ok(res) if res.outcome.is_completed());
        self.counters.record(ok, self.started.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable() {
        // Pinned: changing the hash would move live sessions between versions.
        assert_eq!(fnv1a(&[b"a"]), fnv1a(&[b"a"]));
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
