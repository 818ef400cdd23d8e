//! Shadow traffic: mirror a fraction of live tasks to a candidate version,
//! discard its outputs, and compare them with production's.
//!
//! [`Shadow::submit`] enqueues the task on the primary fleet first — the
//! caller gets the primary's [`Pending`] as with [`Client::submit`](agentscale_core::Client::submit) —
//! then, for a sampled task, *tries* to put a copy into a bounded buffer and
//! returns. It never waits for the candidate: a full buffer drops the copy
//! and counts it ([`ShadowReport::dropped`]). A background loop enqueues
//! each copy on the candidate's queue (id `<id>.shadow`, header
//! [`SHADOW_HEADER`] so the handler sees [`TaskContext::is_shadow`](agentscale_core::TaskContext::is_shadow)
//! and stubs side effects), waits for both results (at most
//! `compare_timeout`, at most `max_comparing` at once), and compares them:
//! outcome (completed or not), a score from the comparison scorer (default
//! [`StructuredDiff`]), the differing JSON paths, and latency. The
//! candidate's outcome, latency and score go into the candidate fleet's
//! [`VersionCounters`](crate::counters::VersionCounters), which the rollout
//! analysis reads (a blue-green preview can be judged on shadow traffic
//! alone). The candidate's results live in its own result store: they never
//! reach a user or the result the caller awaits.
//!
//! Sampling is deterministic: a task is mirrored when the hash of its
//! session id (else its task id) falls below the fraction, so a sampled
//! session is mirrored as a whole.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::worker::SHADOW_HEADER;
use agentscale_core::{Error, Pending, Result, Task, TaskId, TaskOutcome, TaskResult};
use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::canary::{fnv1a, Fleet};
use crate::scorers::{output_to_json, Score, Scorer};

/// Shadow settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShadowConfig {
    /// Fraction of tasks mirrored, `0..=1` (default 0.1).
    pub fraction: f64,
    /// Copies waiting to be mirrored; more are dropped (default 1024).
    pub buffer: usize,
    /// Comparisons waiting on results at once (default 256).
    pub max_comparing: usize,
    /// How long a comparison waits for each result (default 60 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub compare_timeout: Duration,
    /// Recent comparisons kept for inspection (default 100).
    pub keep: usize,
    /// Run the mirror loop and the comparisons on a thread of their own (a
    /// current-thread Tokio runtime) instead of the runtime that called
    /// [`Shadow::start`] (default true), so comparing never takes the
    /// executor threads the primary path runs on. `bench_rollout` measured
    /// the primary's p99 at 1.08x with the comparisons on its runtime.
    pub own_thread: bool,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        ShadowConfig {
            fraction: 0.1,
            buffer: 1024,
            max_comparing: 256,
            compare_timeout: Duration::from_secs(60),
            keep: 100,
            own_thread: true,
        }
    }
}

impl ShadowConfig {
    /// Starts a config from the defaults.
    pub fn builder() -> ShadowConfigBuilder {
        ShadowConfigBuilder(ShadowConfig::default())
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.fraction) {
            return Err(Error::InvalidConfig(format!(
                "shadow fraction must be in 0..=1, got {}",
                self.fraction
            )));
        }
        if self.buffer == 0
            || self.buffer > 1 << 20
            || self.max_comparing == 0
            || self.max_comparing > 1 << 16
        {
            return Err(Error::InvalidConfig(
                "shadow buffer must be in 1..=1048576 and max_comparing in 1..=65536".into(),
            ));
        }
        if self.compare_timeout.is_zero() {
            return Err(Error::InvalidConfig("shadow compare_timeout must be > 0".into()));
        }
        Ok(())
    }
}

/// Builds a [`ShadowConfig`].
#[derive(Debug, Clone)]
pub struct ShadowConfigBuilder(ShadowConfig);

impl ShadowConfigBuilder {
    /// Fraction mirrored.
    pub fn fraction(mut self, f: f64) -> Self {
        self.0.fraction = f;
        self
    }
    /// Buffer bound.
    pub fn buffer(mut self, n: usize) -> Self {
        self.0.buffer = n;
        self
    }
    /// Concurrent comparisons.
    pub fn max_comparing(mut self, n: usize) -> Self {
        self.0.max_comparing = n;
        self
    }
    /// Wait per result.
    pub fn compare_timeout(mut self, d: Duration) -> Self {
        self.0.compare_timeout = d;
        self
    }
    /// Comparisons kept.
    pub fn keep(mut self, n: usize) -> Self {
        self.0.keep = n;
        self
    }
    /// Whether comparing runs on a thread of its own.
    pub fn own_thread(mut self, on: bool) -> Self {
        self.0.own_thread = on;
        self
    }
    /// Checks and returns the config.
    pub fn build(self) -> Result<ShadowConfig> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// The default comparison: the JSON outputs leaf by leaf; the score is the
/// share of leaves (in either output) that are equal.
#[derive(Debug, Clone, Copy, Default)]
pub struct StructuredDiff;

#[async_trait]
impl Scorer for StructuredDiff {
    async fn score(&self, expected: &JsonValue, actual: &JsonValue) -> Result<Score> {
        let (diff, leaves) = json_diff(expected, actual);
        let value = 1.0 - diff.len() as f64 / leaves.max(1) as f64;
        Ok(if diff.is_empty() {
            Score::new(1.0)
        } else {
            Score::with_note(value, diff.join(" "))
        })
    }
}

/// The JSON pointers at which `a` and `b` differ, and the number of leaves
/// compared.
pub fn json_diff(a: &JsonValue, b: &JsonValue) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let leaves = diff_at(a, b, &mut String::new(), &mut out);
    (out, leaves)
}

fn diff_at(a: &JsonValue, b: &JsonValue, path: &mut String, out: &mut Vec<String>) -> usize {
    match (a, b) {
        (JsonValue::Object(x), JsonValue::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut n = 0;
            for k in keys {
                let len = path.len();
                path.push('/');
                path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                n += match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_at(p, q, path, out),
                    _ => {
                        out.push(path.clone());
                        1
                    }
                };
                path.truncate(len);
            }
            n
        }
        (JsonValue::Array(x), JsonValue::Array(y)) => {
            let mut n = 0;
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                n += match (x.get(i), y.get(i)) {
                    (Some(p), Some(q)) => diff_at(p, q, path, out),
                    _ => {
                        out.push(path.clone());
                        1
                    }
                };
                path.truncate(len);
            }
            n
        }
        (p, q) => {
            if p != q {
                out.push(if path.is_empty() { "/".into() } else { path.clone() });
            }
            1
        }
    }
}

/// One comparison of a primary result with its shadow's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowComparison {
    /// The primary task.
    pub primary_id: String,
    /// The primary's terminal state (`completed`, `dead_lettered`, …).
    pub primary_state: String,
    /// The shadow's terminal state, or `timed_out`.
    pub candidate_state: String,
    /// The scorer's score of the candidate's output against the primary's
    /// (none unless both completed).
    pub score: Option<f64>,
    /// Differing JSON paths (up to 20).
    pub diff: Vec<String>,
    /// Primary: enqueue → result recorded, in ms.
    pub primary_latency_ms: Option<u64>,
    /// Shadow: enqueue → result recorded, in ms.
    pub candidate_latency_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Counts {
    sampled: AtomicU64,
    dropped: AtomicU64,
    mirrored: AtomicU64,
    mirror_errors: AtomicU64,
    compared: AtomicU64,
    matched: AtomicU64,
    mismatched: AtomicU64,
    candidate_errors: AtomicU64,
    candidate_timeouts: AtomicU64,
    primary_missing: AtomicU64,
}

/// The shadow's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ShadowReport {
    /// Tasks chosen for mirroring.
    pub sampled: u64,
    /// Copies dropped because the buffer was full (or the loop stopped).
    pub dropped: u64,
    /// Copies enqueued on the candidate.
    pub mirrored: u64,
    /// Copies the candidate's queue refused.
    pub mirror_errors: u64,
    /// Pairs compared (both results arrived).
    pub compared: u64,
    /// Pairs with the same outcome and a score of 1.
    pub matched: u64,
    /// Pairs that differ in outcome or output.
    pub mismatched: u64,
    /// Shadows that did not complete (dead-lettered, expired, cancelled).
    pub candidate_errors: u64,
    /// Shadows with no result within the compare timeout.
    pub candidate_timeouts: u64,
    /// Primaries with no result within the compare timeout (not compared).
    pub primary_missing: u64,
}

struct Mirror {
    primary_id: TaskId,
    primary_enqueued_ms: u64,
    copy: Task,
}

struct Inner {
    primary: Fleet,
    candidate: Fleet,
    scorer: Arc<dyn Scorer>,
    config: ShadowConfig,
    counts: Counts,
    recent: Mutex<VecDeque<ShadowComparison>>,
    comparing: Arc<Semaphore>,
}

/// Mirrors live tasks to a candidate fleet. See the [module docs](self).
pub struct Shadow {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Mirror>,
    fraction_bp: u64,
    /// Resolves when the mirror loop has ended (and, on its own thread,
    /// the comparisons it started have finished).
    done: oneshot::Receiver<()>,
}

impl fmt::Debug for Shadow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shadow")
            .field("primary", &self.inner.primary.version())
            .field("candidate", &self.inner.candidate.version())
            .field("report", &self.report())
            .finish_non_exhaustive()
    }
}

impl Shadow {
    /// Starts mirroring from `primary` to `candidate`: the mirror loop runs
    /// on a thread of its own ([`ShadowConfig::own_thread`], the default) or
    /// is spawned on the current Tokio runtime. A candidate without workers
    /// is refused.
    pub fn start(
        primary: Fleet,
        candidate: Fleet,
        config: ShadowConfig,
        scorer: Option<Arc<dyn Scorer>>,
    ) -> Result<Shadow> {
        config.validate()?;
        candidate.require_workers("candidate")?;
        if primary.version() == candidate.version() {
            return Err(Error::InvalidConfig("shadowing a version onto itself".into()));
        }
        let (tx, rx) = mpsc::channel(config.buffer);
        let inner = Arc::new(Inner {
            primary,
            candidate,
            scorer: scorer.unwrap_or_else(|| Arc::new(StructuredDiff)),
            comparing: Arc::new(Semaphore::new(config.max_comparing)),
            config,
            counts: Counts::default(),
            recent: Mutex::new(VecDeque::new()),
        });
        let fraction_bp = (inner.config.fraction * 10_000.0).round() as u64;
        let (done_tx, done) = oneshot::channel();
        if inner.config.own_thread {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::backend("shadow: building the mirror runtime", e))?;
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("agentscale-shadow".into())
                .spawn(move || {
                    rt.block_on(async {
                        mirror_loop(inner.clone(), rx).await;
                        // The runtime ends with this call: let the running
                        // comparisons (each bounded by compare_timeout) finish.
                        let all = u32::try_from(inner.config.max_comparing).unwrap_or(u32::MAX);
                        let _ = inner.comparing.acquire_many(all).await;
                    });
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::backend("shadow: starting the mirror thread", e))?;
        } else {
            tokio::spawn({
                let inner = inner.clone();
                async move {
                    mirror_loop(inner, rx).await;
                    let _ = done_tx.send(());
                }
            });
        }
        Ok(Shadow {
            inner,
            tx,
            fraction_bp,
            done,
        })
    }

    /// Enqueues `task` on the primary fleet and, when sampled, hands a copy
    /// to the mirror loop without waiting. Fails only when the primary
    /// enqueue fails.
    pub async fn submit(&self, task: Task) -> Result<Pending> {
        let key = task.session_id.as_deref().unwrap_or(task.id.as_str());
        let sampled = fnv1a(&[b"shadow", key.as_bytes()]) % 10_000 < self.fraction_bp;
        let copy = sampled.then(|| task.clone());
        let pending = self.inner.primary.client().submit(task).await?;
        if let Some(mut copy) = copy {
            let c = &self.inner.counts;
            c.sampled.fetch_add(1, Ordering::Relaxed);
            let primary_enqueued_ms = copy.enqueued_at_ms;
            copy.id = TaskId::new(format!("{}.shadow", pending.id()));
            copy.idempotency_key = None;
            copy.enqueued_at_ms = agentscale_core::task::now_ms();
            let copy = copy.with_header(SHADOW_HEADER, "1");
            let mirror = Mirror {
                primary_id: pending.id().clone(),
                primary_enqueued_ms,
                copy,
            };
            if self.tx.try_send(mirror).is_err() {
                c.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(pending)
    }

    /// The counters so far.
    pub fn report(&self) -> ShadowReport {
        self.inner.report()
    }

    /// The most recent comparisons, oldest first.
    pub fn recent(&self) -> Vec<ShadowComparison> {
        self.inner.recent.lock().iter().cloned().collect()
    }

    /// Stops taking copies, lets the buffered ones and the running
    /// comparisons finish (each is bounded by the compare timeout), and
    /// returns the final counters.
    pub async fn close(self) -> ShadowReport {
        let Shadow { inner, tx, done, .. } = self;
        drop(tx);
        let _ = done.await;
        let all = u32::try_from(inner.config.max_comparing).unwrap_or(u32::MAX);
        if let Ok(p) = inner.comparing.acquire_many(all).await {
            p.forget();
        }
        inner.report()
    }
}

impl Inner {
    fn report(&self) -> ShadowReport {
        let c = &self.counts;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShadowReport {
            sampled: r(&c.sampled),
            dropped: r(&c.dropped),
            mirrored: r(&c.mirrored),
            mirror_errors: r(&c.mirror_errors),
            compared: r(&c.compared),
            matched: r(&c.matched),
            mismatched: r(&c.mismatched),
            candidate_errors: r(&c.candidate_errors),
            candidate_timeouts: r(&c.candidate_timeouts),
            primary_missing: r(&c.primary_missing),
        }
    }
}

async fn mirror_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<Mirror>) {
    while let Some(m) = rx.recv().await {
        let Ok(permit) = inner.comparing.clone().acquire_owned().await else {
            return;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            compare(&inner, m).await;
            drop(permit);
        });
    }
}

fn state_and_latency(r: &Option<TaskResult>, enqueued_at_ms: u64) -> (String, Option<u64>) {
    match r {
        None => ("timed_out".into(), None),
        Some(r) => (
            r.outcome.state().to_owned(),
            Some(r.recorded_at_ms.saturating_sub(enqueued_at_ms)),
        ),
    }
}

async fn compare(inner: &Inner, m: Mirror) {
    let c = &inner.counts;
    let candidate_id = m.copy.id.clone();
    let copy_enqueued_ms = m.copy.enqueued_at_ms;
    let started = Instant::now();
    if let Err(e) = inner.candidate.queue().enqueue(m.copy).await {
        c.mirror_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "shadow copy refused by the candidate queue");
        return;
    }
    c.mirrored.fetch_add(1, Ordering::Relaxed);
    let timeout = inner.config.compare_timeout;
    let (primary, candidate) = tokio::join!(inner.primary.results().wait(&m.primary_id, timeout), async {
        let r = inner.candidate.results().wait(&candidate_id, timeout).await;
        (r, started.elapsed())
    });
    let (candidate, candidate_elapsed) = candidate;
    let primary = primary.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "primary result unavailable for the shadow comparison");
        None
    });
    let candidate = candidate.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "shadow result unavailable");
        None
    });
    let counters = inner.candidate.counters();
    let candidate_ok = candidate.as_ref().is_some_and(|r| r.outcome.is_completed());
    counters.record(candidate_ok, candidate_elapsed);
    match &candidate {
        None => c.candidate_timeouts.fetch_add(1, Ordering::Relaxed),
        Some(_) if !candidate_ok => c.candidate_errors.fetch_add(1, Ordering::Relaxed),
        Some(_) => 0,
    };
    let (primary_state, primary_latency_ms) = state_and_latency(&primary, m.primary_enqueued_ms);
    let (candidate_state, candidate_latency_ms) = state_and_latency(&candidate, copy_enqueued_ms);
    let Some(primary) = primary else {
        c.primary_missing.fetch_add(1, Ordering::Relaxed);
        return;
    };
    c.compared.fetch_add(1, Ordering::Relaxed);
    let (score, diff) = match (&primary.outcome, candidate.as_ref().map(|r| &r.outcome)) {
        (TaskOutcome::Completed(p), Some(TaskOutcome::Completed(q))) => {
            let (pj, qj) = (output_to_json(p), output_to_json(q));
            let (mut diff, _) = json_diff(&pj, &qj);
            diff.truncate(20);
            let score = match inner.scorer.score(&pj, &qj).await {
                Ok(s) => s.value,
                Err(e) => {
                    tracing::debug!(error = %e, "shadow scorer failed");
                    0.0
                }
            };
            (Some(score), diff)
        }
        _ => (None, Vec::new()),
    };
    // An outcome mismatch scores 0 for the analysis; two failures agree.
    let outcome_match = primary.outcome.state() == candidate_state;
    let s = score.unwrap_or(if outcome_match { 1.0 } else { 0.0 });
    counters.record_score(s);
    if outcome_match && s >= 1.0 {
        c.matched.fetch_add(1, Ordering::Relaxed);
    } else {
        c.mismatched.fetch_add(1, Ordering::Relaxed);
    }
    let cmp = ShadowComparison {
        primary_id: m.primary_id.to_string(),
        primary_state,
        candidate_state,
        score,
        diff,
        primary_latency_ms,
        candidate_latency_ms,
    };
    let mut recent = inner.recent.lock();
    if recent.len() >= inner.config.keep {
        recent.pop_front();
    }
    if inner.config.keep > 0 {
        recent.push_back(cmp);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn diff_lists_paths() {
        let (d, n) = json_diff(
            &json!({"a": 1, "b": [1, 2], "c": {"x": 1}}),
            &json!({"a": 1, "b": [1, 3], "d": 1}),
        );
        assert_eq!(d, ["/b/1", "/c", "/d"]);
        assert_eq!(n, 5);
        assert_eq!(json_diff(&json!("x"), &json!("y")).0, ["/"]);
    }
}
