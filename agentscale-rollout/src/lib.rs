//! Ship agent versions safely: an evaluation gate for CI, shadow traffic,
//! and canary / blue-green rollouts with automatic analysis and rollback.
//!
//! * [`golden`] + [`scorers`] + [`eval`] + [`report`]: run a JSONL golden
//!   set against a handler or a deployed fleet with bounded concurrency,
//!   score each case, compare with a stored baseline (regressions listed
//!   case by case), write JSON and JUnit XML, and exit non-zero when the
//!   gate fails ([`eval::run_gate`], example `eval_gate`).
//! * [`shadow`]: mirror a fraction of live tasks to a candidate version
//!   (fire-and-forget, bounded buffer, drops counted), discard its outputs
//!   and compare them with production's. Handlers see
//!   `TaskContext::is_shadow()` and stub side effects.
//! * [`canary`] + [`analysis`] + [`http`]: a weighted, session-sticky router
//!   between a stable and a candidate [`canary::Fleet`], driven by an
//!   analysis loop with Argo Rollouts' semantics (steps, conditions, failure
//!   limit, *inconclusive* pauses instead of failing), whose decisions are
//!   logged, exported as metrics and served as JSON for Argo Rollouts or
//!   Flagger.
//!
//! See `docs/rollout.md` and `cargo run --release --example rollout`.
//!
//! ```
//! use std::time::Duration;
//! use agentscale_rollout::analysis::{AnalysisConfig, Condition, MetricCheck, MetricKind};
//!
//! let analysis = AnalysisConfig::builder()
//!     .interval(Duration::from_secs(60))
//!     .step(5.0, Duration::from_secs(300))
//!     .step(25.0, Duration::from_secs(600))
//!     .step(100.0, Duration::ZERO)
//!     .metric(
//!         MetricCheck::new(MetricKind::ErrorRateOverStable, Condition::at_most(0.01))
//!             .failure(Condition::above(0.02)),
//!     )
//!     .failure_limit(1)
//!     .build()?;
//! assert_eq!(analysis.steps.len(), 3);
//! # Ok::<(), agentscale_core::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analysis;
pub mod canary;
pub mod counters;
pub mod eval;
pub mod golden;
pub mod http;
pub mod report;
pub mod scorers;
pub mod shadow;

pub use analysis::{AnalysisConfig, Decision, MetricCheck, MetricKind, Phase, Rollout, Verdict};
pub use canary::{Fleet, Router, Side};
pub use eval::{evaluate, run_gate, EvalConfig, GateRun};
pub use golden::{GoldenError, GoldenSet};
pub use report::{EvalReport, GateConfig, GateVerdict};
pub use scorers::{Scorer, ScorerRegistry};
pub use shadow::{Shadow, ShadowConfig};
