//! The evaluation gate: run a golden set against an agent with bounded
//! concurrency, score every case, compare with a stored baseline, write
//! JSON and JUnit XML, and decide pass/fail for CI.
//!
//! The target is anything implementing [`Target`]: a [`Handler`] called in
//! process ([`HandlerTarget`]), a deployed fleet reached through its queue
//! and result store ([`ClientTarget`], the same path production requests
//! take), or your own (an HTTP model endpoint).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use agentscale_core::{Client, Error, Handler, Output, Result, Task, TaskContext};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::golden::{GoldenCase, GoldenSet};
use crate::report::{CaseResult, Comparison, EvalReport, GateConfig, GateVerdict};
use crate::scorers::{output_to_json, ScorerRegistry};

/// What a golden set runs against.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    /// Runs one case's input and returns the output.
    async fn run(&self, case: &GoldenCase) -> Result<Output>;
}

#[allow(dead_code)]
fn _object_safe(_: Box<dyn Target>) {}

/// Calls a [`Handler`] in process with a task of kind `kind` whose payload
/// is the case's input (JSON), in a detached [`TaskContext`] (one attempt).
#[derive(Debug)]
pub struct HandlerTarget<H> {
    handler: H,
    kind: String,
    timeout: Duration,
}

impl<H: Handler> HandlerTarget<H> {
    /// `handler` runs tasks of kind `kind`.
    pub fn new(kind: impl Into<String>, handler: H) -> Self {
        HandlerTarget {
            handler,
            kind: kind.into(),
            timeout: Duration::from_secs(300),
        }
    }
}

#[async_trait]
impl<H: Handler + fmt::Debug> Target for HandlerTarget<H> {
    async fn run(&self, case: &GoldenCase) -> Result<Output> {
        let task = Task::json(self.kind.clone(), &case.input)?
            .with_id(agentscale_core::TaskId::new(format!("eval.{}", case.id)));
        let cx = TaskContext::detached(1, 1, self.timeout);
        self.handler.handle(&task, &cx).await
    }
}

/// Submits each case as a task through a [`Client`] (queue + result store)
/// and waits for its result: the deployed version, end to end.
#[derive(Debug, Clone)]
pub struct ClientTarget {
    client: Client,
    kind: String,
    timeout: Duration,
}

impl ClientTarget {
    /// Tasks of kind `kind` through `client`, each waited for up to
    /// `timeout`.
    pub fn new(client: Client, kind: impl Into<String>, timeout: Duration) -> Self {
        ClientTarget {
            client,
            kind: kind.into(),
            timeout,
        }
    }
}

#[async_trait]
impl Target for ClientTarget {
    async fn run(&self, case: &GoldenCase) -> Result<Output> {
        let task = Task::json(self.kind.clone(), &case.input)?;
        self.client.submit(task).await?.output(self.timeout).await
    }
}

/// How a golden set is run and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EvalConfig {
    /// Cases run at once (default 8).
    pub concurrency: usize,
    /// Deadline of one case (default 60 s); a case past it fails.
    #[serde(with = "agentscale_core::config::duration")]
    pub case_timeout: Duration,
    /// What the gate requires.
    pub gate: GateConfig,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            concurrency: 8,
            case_timeout: Duration::from_secs(60),
            gate: GateConfig::default(),
        }
    }
}

impl EvalConfig {
    /// Starts a config from the defaults.
    pub fn builder() -> EvalConfigBuilder {
        EvalConfigBuilder(EvalConfig::default())
    }

    /// Checks the bounds.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(Error::InvalidConfig(format!(
                "eval concurrency must be in 1..=1024, got {}",
                self.concurrency
            )));
        }
        if self.case_timeout.is_zero() {
            return Err(Error::InvalidConfig("eval case_timeout must be > 0".into()));
        }
        self.gate.validate()
    }
}

/// Builds an [`EvalConfig`].
#[derive(Debug, Clone)]
pub struct EvalConfigBuilder(EvalConfig);

impl EvalConfigBuilder {
    /// Cases run at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.0.concurrency = n;
        self
    }
    /// Deadline of one case.
    pub fn case_timeout(mut self, d: Duration) -> Self {
        self.0.case_timeout = d;
        self
    }
    /// Least pass rate.
    pub fn min_pass_rate(mut self, r: f64) -> Self {
        self.0.gate.min_pass_rate = r;
        self
    }
    /// Least weighted mean score.
    pub fn min_weighted_score(mut self, s: f64) -> Self {
        self.0.gate.min_weighted_score = s;
        self
    }
    /// Most regressions against the baseline.
    pub fn max_regressions(mut self, n: usize) -> Self {
        self.0.gate.max_regressions = n;
        self
    }
    /// Score drop that still counts as equal.
    pub fn regression_tolerance(mut self, t: f64) -> Self {
        self.0.gate.regression_tolerance = t;
        self
    }
    /// Checks and returns the config.
    pub fn build(self) -> Result<EvalConfig> {
        self.0.validate()?;
        Ok(self.0)
    }
}

/// Runs every case of `set` against `target`, at most
/// `config.concurrency` at once, each within `config.case_timeout`. A
/// target error or timeout fails its case (score 0) and never stops the run.
pub async fn evaluate(set: &GoldenSet, target: &dyn Target, config: &EvalConfig) -> Result<EvalReport> {
    config.validate()?;
    let started = Instant::now();
    let cases: Vec<CaseResult> = futures::stream::iter(set.cases())
        .map(|case| run_case(case, target, config.case_timeout))
        .buffered(config.concurrency)
        .collect()
        .await;
    let report = EvalReport::from_cases(set.name(), cases, started.elapsed().as_secs_f64() * 1e3);
    tracing::info!(
        suite = %report.suite,
        total = report.total,
        passed = report.passed,
        pass_rate = report.pass_rate,
        weighted_score = report.weighted_score,
        "evaluation finished"
    );
    Ok(report)
}

async fn run_case(case: &GoldenCase, target: &dyn Target, timeout: Duration) -> CaseResult {
    let started = Instant::now();
    let out = tokio::time::timeout(timeout, target.run(case)).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut result = CaseResult {
        id: case.id.clone(),
        tags: case.tags.clone(),
        scorer: case.scorer_name.clone(),
        passed: false,
        score: 0.0,
        threshold: case.threshold,
        weight: case.weight,
        latency_ms,
        error: None,
        note: None,
    };
    let output = match out {
        Err(_) => {
            result.error = Some(format!("timed out after {timeout:?}"));
            return result;
        }
        Ok(Err(e)) => {
            result.error = Some(format!("target failed: {e}"));
            return result;
        }
        Ok(Ok(o)) => o,
    };
    let actual = output_to_json(&output);
    match case.scorer.score(&case.expected, &actual).await {
        Ok(score) => {
            result.score = score.value;
            result.passed = score.value >= case.threshold;
            result.note = score.note;
        }
        Err(e) => result.error = Some(format!("scorer failed: {e}")),
    }
    result
}

/// What a CI gate run reads and writes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct GateRun {
    /// The golden set (JSONL).
    pub golden: PathBuf,
    /// A stored baseline report (JSON), to list regressions against.
    pub baseline: Option<PathBuf>,
    /// Where to write this run's report as JSON (a future baseline).
    pub json_out: Option<PathBuf>,
    /// Where to write JUnit XML.
    pub junit_out: Option<PathBuf>,
    /// Concurrency, timeout and gate.
    pub config: EvalConfig,
}

impl GateRun {
    /// A gate run over `golden` with the default config.
    pub fn new(golden: impl Into<PathBuf>) -> Self {
        GateRun {
            golden: golden.into(),
            ..GateRun::default()
        }
    }
    /// Compares with this baseline report.
    pub fn baseline(mut self, path: impl Into<PathBuf>) -> Self {
        self.baseline = Some(path.into());
        self
    }
    /// Writes the JSON report here.
    pub fn json_out(mut self, path: impl Into<PathBuf>) -> Self {
        self.json_out = Some(path.into());
        self
    }
    /// Writes JUnit XML here.
    pub fn junit_out(mut self, path: impl Into<PathBuf>) -> Self {
        self.junit_out = Some(path.into());
        self
    }
    /// Uses this config.
    pub fn config(mut self, config: EvalConfig) -> Self {
        self.config = config;
        self
    }
}

/// The outcome of [`run_gate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateOutcome {
    /// The run's report.
    pub report: EvalReport,
    /// Its comparison with the baseline, when one was given.
    pub comparison: Option<Comparison>,
    /// The gate's decision; [`GateVerdict::exit_code`] is the CI exit code.
    pub verdict: GateVerdict,
}

/// The whole CI step: load and check the golden set and the baseline
/// (errors before anything runs), evaluate, compare, write the reports,
/// decide. A CLI returns `verdict.exit_code()` (see the `eval_gate`
/// example).
pub async fn run_gate(run: &GateRun, scorers: &ScorerRegistry, target: &dyn Target) -> Result<GateOutcome> {
    run.config.validate()?;
    let set = GoldenSet::load(&run.golden, scorers)?;
    let baseline = run
        .baseline
        .as_ref()
        .map(crate::report::EvalReport::load_json)
        .transpose()?;
    let report = evaluate(&set, target, &run.config).await?;
    let comparison = baseline
        .as_ref()
        .map(|b| report.compare(b, run.config.gate.regression_tolerance));
    let verdict = run.config.gate.verdict(&report, comparison.as_ref());
    if let Some(path) = &run.json_out {
        std::fs::write(path, report.to_json())
            .map_err(|e| Error::InvalidConfig(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &run.junit_out {
        std::fs::write(path, report.to_junit())
            .map_err(|e| Error::InvalidConfig(format!("cannot write {}: {e}", path.display())))?;
    }
    if verdict.passed {
        tracing::info!(suite = %report.suite, "evaluation gate passed");
    } else {
        tracing::warn!(suite = %report.suite, reasons = ?verdict.reasons, "evaluation gate failed");
    }
    Ok(GateOutcome {
        report,
        comparison,
        verdict,
    })
}
