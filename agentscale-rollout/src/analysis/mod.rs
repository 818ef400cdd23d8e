//! The rollout analysis loop, with the semantics of Argo Rollouts'
//! analysis: steps (weight, pause), metrics measured every interval,
//! success and failure conditions, a failure limit — and **inconclusive**
//! when a window has too few samples, which pauses the rollout instead of
//! failing it.
//!
//! Every `interval` the loop takes one window of the versions' counters
//! (what finished since the previous measurement) and measures each
//! [`MetricCheck`]:
//!
//! * fewer samples than `min_samples` → **inconclusive** (never "failed for
//!   lack of data");
//! * else the failure condition holds → **failed**;
//! * else the success condition holds → **successful**;
//! * else → failed when there is no failure condition, inconclusive when
//!   there is one (the value lies between the two).
//!
//! The interval's verdict is failed if any metric failed, else inconclusive
//! if any was, else successful. Then:
//!
//! | verdict | action |
//! |---|---|
//! | failed, failures so far > `failure_limit` | **rollback**: candidate weight 0 at once; terminal |
//! | failed, within the limit | hold the step |
//! | inconclusive | **pause**: hold the step (not counted as a failure); resumes by itself when data arrives |
//! | successful, the step's pause elapsed | next step; after the last (weight 100 %) **promote**; terminal |
//! | successful, pause not elapsed | hold |
//!
//! Every decision is logged (`tracing`), kept (the last 1,000), exported as
//! metrics and served as JSON ([`crate::http`]).

mod config;

pub use config::{AnalysisConfig, AnalysisConfigBuilder, Condition, MetricCheck, MetricKind, Step};

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use agentscale_core::Result;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::canary::Router;
use crate::counters::CounterSnapshot;

/// Decisions kept in memory per rollout.
pub const MAX_DECISIONS: usize = 1000;

/// The verdict of one measurement or one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The conditions hold.
    Successful,
    /// A failure condition holds (or the success condition does not, without
    /// a failure condition).
    Failed,
    /// Too few samples, or between the conditions.
    Inconclusive,
}

impl Verdict {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Successful => "successful",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Moving through the steps.
    Progressing,
    /// Holding: the last interval was inconclusive.
    Paused,
    /// Done: the candidate takes all traffic.
    Promoted,
    /// Done: the candidate takes no traffic.
    RolledBack,
}

impl Phase {
    /// All phases.
    pub const ALL: [Phase; 4] = [
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
        }
    }

    /// Promoted or rolled back.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stayed on the step.
    Hold,
    /// Stayed on the step because the data was inconclusive.
    Pause,
    /// Moved to the next step.
    Advance,
    /// Candidate weight to 100 %; done.
    Promote,
    /// Candidate weight to 0 %; done.
    Rollback,
}

/// One metric measured over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The metric.
    pub metric: MetricKind,
    /// Its value (none without data).
    pub value: Option<f64>,
    /// Samples in the window (the smaller side for metrics over stable).
    pub samples: u64,
    /// Its verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// One decision of the analysis loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// 1 for the first interval.
    pub seq: u64,
    /// Time since the rollout started, in milliseconds.
    pub elapsed_ms: u64,
    /// The step (0-based) the decision was taken on.
    pub step: usize,
    /// Candidate weight before, in percent.
    pub weight_before: f64,
    /// Candidate weight after, in percent.
    pub weight_after: f64,
    /// The interval's verdict.
    pub verdict: Verdict,
    /// What was done.
    pub action: Action,
    /// The phase after.
    pub phase: Phase,
    /// Failed intervals so far.
    pub failures: u32,
    /// The measurements.
    pub measurements: Vec<Measurement>,
    /// A one-line summary.
    pub reason: String,
}

/// The state of a rollout, as served over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The rollout's name.
    pub name: String,
    /// Stable version.
    pub stable: String,
    /// Candidate version.
    pub candidate: String,
    /// Current phase.
    pub phase: Phase,
    /// Current step (0-based).
    pub step: usize,
    /// Steps in total.
    pub steps: usize,
    /// Current candidate weight in percent.
    pub weight: f64,
    /// Failed intervals so far.
    pub failures: u32,
    /// The last decision's verdict (none before the first interval).
    pub verdict: Option<Verdict>,
    /// Decisions taken.
    pub decisions: u64,
}

struct State {
    phase: Phase,
    step: usize,
    step_started: Instant,
    failures: u32,
    seq: u64,
    last: (CounterSnapshot, CounterSnapshot),
    /// The stable's counters when the rollout started.
    stable_start: CounterSnapshot,
    verdict: Option<Verdict>,
    decisions: VecDeque<Decision>,
    verdict_counts: [u64; 3],
}

/// A running rollout: a [`Router`] driven by an [`AnalysisConfig`].
pub struct Rollout {
    name: String,
    router: Arc<Router>,
    config: AnalysisConfig,
    started: Instant,
    state: Mutex<State>,
}

impl fmt::Debug for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollout")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Rollout {
    /// Checks `config` and starts the rollout: the candidate weight goes to
    /// the first step's weight. Typed errors (bad steps, no workers…) come
    /// before any traffic moves.
    pub fn start(
        name: impl Into<String>,
        router: Arc<Router>,
        config: AnalysisConfig,
    ) -> Result<Arc<Rollout>> {
        config.validate()?;
        router.stable().require_workers("stable")?;
        router.candidate().require_workers("candidate")?;
        let first = config.steps[0].weight;
        router.set_candidate_weight(first)?;
        let now = Instant::now();
        let last = (
            router.stable().counters().snapshot(),
            router.candidate().counters().snapshot(),
        );
        let name = name.into();
        tracing::info!(rollout = %name, candidate = router.candidate().version(), weight = first, "rollout started");
        Ok(Arc::new(Rollout {
            name,
            router,
            started: now,
            state: Mutex::new(State {
                phase: Phase::Progressing,
                step: 0,
                step_started: now,
                failures: 0,
                seq: 0,
                stable_start: last.0.clone(),
                last,
                verdict: None,
                decisions: VecDeque::new(),
                verdict_counts: [0; 3],
            }),
            config,
        }))
    }

    /// The rollout's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The router it drives.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The config.
    pub fn config(&self) -> &AnalysisConfig {
        &self.config
    }

    /// The current state.
    pub fn status(&self) -> RolloutStatus {
        let s = self.state.lock();
        RolloutStatus {
            name: self.name.clone(),
            stable: self.router.stable().version().to_owned(),
            candidate: self.router.candidate().version().to_owned(),
            phase: s.phase,
            step: s.step,
            steps: self.config.steps.len(),
            weight: self.router.candidate_weight(),
            failures: s.failures,
            verdict: s.verdict,
            decisions: s.seq,
        }
    }

    /// The kept decisions, oldest first.
    pub fn decisions(&self) -> Vec<Decision> {
        self.state.lock().decisions.iter().cloned().collect()
    }

    /// Decisions taken so far by verdict: successful, failed, inconclusive.
    pub fn verdict_counts(&self) -> [u64; 3] {
        self.state.lock().verdict_counts
    }

    /// Measures one window (everything finished since the previous call)
    /// and decides. After a terminal phase it decides nothing (`None`).
    pub fn analyze(&self) -> Option<Decision> {
        let mut s = self.state.lock();
        if s.phase.is_terminal() {
            return None;
        }
        let now = (
            self.router.stable().counters().snapshot(),
            self.router.candidate().counters().snapshot(),
        );
        let window = now.0.since(&s.last.0);
        let candidate = now.1.since(&s.last.1);
        let since_start = now.0.since(&s.stable_start);
        s.last = now;
        let measurements: Vec<Measurement> = self
            .config
            .metrics
            .iter()
            .map(|m| {
                let min = m.min_samples.unwrap_or(self.config.min_samples);
                // Late steps leave the stable with little traffic: compare
                // with its numbers since the start instead.
                let stable = if window.requests >= min {
                    &window
                } else {
                    &since_start
                };
                measure(m, min, stable, &candidate)
            })
            .collect();
        let verdict = if measurements.iter().any(|m| m.verdict == Verdict::Failed) {
            Verdict::Failed
        } else if measurements.iter().any(|m| m.verdict == Verdict::Inconclusive) {
            Verdict::Inconclusive
        } else {
            Verdict::Successful
        };
        s.seq += 1;
        s.verdict = Some(verdict);
        let vi = match verdict {
            Verdict::Successful => 0,
            Verdict::Failed => 1,
            Verdict::Inconclusive => 2,
        };
        s.verdict_counts[vi] += 1;
        let weight_before = self.router.candidate_weight();
        let step = s.step;
        let (action, reason) = match verdict {
            Verdict::Failed => {
                s.failures += 1;
                if s.failures > self.config.failure_limit {
                    (
                        Action::Rollback,
                        format!(
                            "{} failed interval(s) > failure limit {}",
                            s.failures, self.config.failure_limit
                        ),
                    )
                } else {
                    (
                        Action::Hold,
                        format!(
                            "failed interval {} of {} tolerated",
                            s.failures, self.config.failure_limit
                        ),
                    )
                }
            }
            Verdict::Inconclusive => (
                Action::Pause,
                "inconclusive: holding the step until there is enough data".to_owned(),
            ),
            Verdict::Successful => {
                let held = Instant::now().saturating_duration_since(s.step_started);
                if held < self.config.steps[step].pause {
                    (
                        Action::Hold,
                        format!(
                            "successful; step pause {:?} not over",
                            self.config.steps[step].pause
                        ),
                    )
                } else if step + 1 == self.config.steps.len() {
                    (Action::Promote, "successful at the last step".to_owned())
                } else {
                    (Action::Advance, format!("successful; step {} done", step + 1))
                }
            }
        };
        // Weights in 0..=100 were validated; a refusal here cannot happen.
        match action {
            Action::Rollback => {
                let _ = self.router.set_candidate_weight(0.0);
                s.phase = Phase::RolledBack;
            }
            Action::Promote => {
                let _ = self.router.set_candidate_weight(100.0);
                s.phase = Phase::Promoted;
            }
            Action::Advance => {
                s.step += 1;
                s.step_started = Instant::now();
                let _ = self.router.set_candidate_weight(self.config.steps[s.step].weight);
                s.phase = Phase::Progressing;
            }
            Action::Pause => s.phase = Phase::Paused,
            Action::Hold => s.phase = Phase::Progressing,
        }
        let decision = Decision {
            seq: s.seq,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            step,
            weight_before,
            weight_after: self.router.candidate_weight(),
            verdict,
            action,
            phase: s.phase,
            failures: s.failures,
            measurements,
            reason,
        };
        tracing::info!(
            rollout = %self.name,
            seq = decision.seq,
            step = decision.step,
            verdict = verdict.as_str(),
            action = ?decision.action,
            weight = decision.weight_after,
            phase = decision.phase.as_str(),
            reason = %decision.reason,
            "rollout decision"
        );
        if s.decisions.len() == MAX_DECISIONS {
            s.decisions.pop_front();
        }
        s.decisions.push_back(decision.clone());
        Some(decision)
    }

    /// Rolls back by hand (weight 0 at once).
    pub fn abort(&self, reason: &str) {
        let mut s = self.state.lock();
        if s.phase.is_terminal() {
            return;
        }
        let _ = self.router.set_candidate_weight(0.0);
        s.phase = Phase::RolledBack;
        tracing::warn!(rollout = %self.name, reason, "rollout aborted by hand");
    }

    /// Runs the loop: one [`Rollout::analyze`] every interval until the
    /// rollout is promoted or rolled back (returns its phase), or
    /// `shutdown` resolves (returns the phase then).
    pub async fn run_until<F>(&self, shutdown: F) -> Phase
    where
        F: std::future::Future<Output = ()> + Send,
    {
        tokio::pin!(shutdown);
        let mut next = Instant::now() + self.config.interval;
        loop {
            tokio::select! {
                () = &mut shutdown => return self.status().phase,
                () = tokio::time::sleep_until(next) => {}
            }
            next += self.config.interval;
            if let Some(d) = self.analyze() {
                if d.phase.is_terminal() {
                    return d.phase;
                }
            } else {
                return self.status().phase;
            }
        }
    }
}

fn measure(
    check: &MetricCheck,
    min: u64,
    stable: &CounterSnapshot,
    candidate: &CounterSnapshot,
) -> Measurement {
    let (value, samples) = match check.metric {
        MetricKind::ErrorRate => (candidate.error_rate(), candidate.requests),
        MetricKind::P95LatencyMs => (candidate.latency_quantile_ms(0.95), candidate.requests),
        MetricKind::MeanScore => (candidate.mean_score(), candidate.scores),
        MetricKind::ErrorRateOverStable => (
            candidate
                .error_rate()
                .zip(stable.error_rate())
                .map(|(c, s)| c - s),
            candidate.requests.min(stable.requests),
        ),
        MetricKind::P95LatencyRatio => (
            candidate
                .latency_quantile_ms(0.95)
                .zip(stable.latency_quantile_ms(0.95))
                .map(|(c, s)| if s > 0.0 { c / s } else { f64::INFINITY }),
            candidate.requests.min(stable.requests),
        ),
    };
    let name = check.metric.as_str();
    let (verdict, reason) = match value {
        _ if samples < min => (
            Verdict::Inconclusive,
            format!("{name}: {samples} sample(s) < {min}"),
        ),
        None => (Verdict::Inconclusive, format!("{name}: no data")),
        Some(v) if check.failure.is_some_and(|f| f.holds(v)) => (
            Verdict::Failed,
            format!(
                "{name} = {v:.4} meets the failure condition {}",
                check.failure.map(|f| f.to_string()).unwrap_or_default()
            ),
        ),
        Some(v) if check.success.holds(v) => {
            (Verdict::Successful, format!("{name} = {v:.4} {}", check.success))
        }
        Some(v) if check.failure.is_none() => (
            Verdict::Failed,
            format!("{name} = {v:.4} does not meet {}", check.success),
        ),
        Some(v) => (
            Verdict::Inconclusive,
            format!("{name} = {v:.4} between success ({}) and failure", check.success),
        ),
    };
    Measurement {
        metric: check.metric,
        value,
        samples,
        verdict,
        reason,
    }
}
