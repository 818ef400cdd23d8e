//! The analysis config: steps, metrics, conditions.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// One canary step: set the candidate's weight, then hold it at least
/// `pause` (and until an interval is successful).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Candidate weight in percent.
    pub weight: f64,
    /// Least time at this weight.
    #[serde(with = "agentscale_core::config::duration", default)]
    pub pause: Duration,
}

impl Step {
    /// A step at `weight` % held for `pause`.
    pub fn new(weight: f64, pause: Duration) -> Self {
        Step { weight, pause }
    }
}

/// What a metric measures, over one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Candidate errors / requests.
    ErrorRate,
    /// Candidate error rate minus stable error rate (needs samples on both;
    /// when the stable has too few in the window — at high weights — its
    /// numbers since the rollout started are used).
    ErrorRateOverStable,
    /// Candidate p95 latency in milliseconds.
    P95LatencyMs,
    /// Candidate p95 latency / stable p95 latency (needs samples on both;
    /// same fallback as [`MetricKind::ErrorRateOverStable`]).
    P95LatencyRatio,
    /// Mean of the candidate's scores (shadow comparisons, online eval).
    MeanScore,
}

impl MetricKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::ErrorRate => "error_rate",
            MetricKind::ErrorRateOverStable => "error_rate_over_stable",
            MetricKind::P95LatencyMs => "p95_latency_ms",
            MetricKind::P95LatencyRatio => "p95_latency_ratio",
            MetricKind::MeanScore => "mean_score",
        }
    }
}

/// A comparison with a threshold: `"<= 0.02"`, `"> 100"`, `"< 1.5"`, `">= 0.9"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    op: Op,
    value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Condition {
    /// `x <= value`.
    pub fn at_most(value: f64) -> Self {
        Condition { op: Op::Le, value }
    }
    /// `x < value`.
    pub fn below(value: f64) -> Self {
        Condition { op: Op::Lt, value }
    }
    /// `x >= value`.
    pub fn at_least(value: f64) -> Self {
        Condition { op: Op::Ge, value }
    }
    /// `x > value`.
    pub fn above(value: f64) -> Self {
        Condition { op: Op::Gt, value }
    }
    /// Whether `x` satisfies the condition.
    pub fn holds(&self, x: f64) -> bool {
        match self.op {
            Op::Lt => x < self.value,
            Op::Le => x <= self.value,
            Op::Gt => x > self.value,
            Op::Ge => x >= self.value,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        };
        write!(f, "{op} {}", self.value)
    }
}

impl FromStr for Condition {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (op, rest) = if let Some(r) = s.strip_prefix("<=") {
            (Op::Le, r)
        } else if let Some(r) = s.strip_prefix(">=") {
            (Op::Ge, r)
        } else if let Some(r) = s.strip_prefix('<') {
            (Op::Lt, r)
        } else if let Some(r) = s.strip_prefix('>') {
            (Op::Gt, r)
        } else {
            return Err(Error::InvalidConfig(format!(
                "condition {s:?} must start with <, <=, > or >="
            )));
        };
        let value: f64 = rest
            .trim()
            .parse()
            .map_err(|_| Error::InvalidConfig(format!("condition {s:?} has no number")))?;
        if !value.is_finite() {
            return Err(Error::InvalidConfig(format!("condition {s:?} is not finite")));
        }
        Ok(Condition { op, value })
    }
}

impl Serialize for Condition {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One metric of the analysis and its conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricCheck {
    /// What is measured.
    pub metric: MetricKind,
    /// Successful when this holds.
    pub success: Condition,
    /// Failed when this holds (checked first).
    #[serde(default)]
    pub failure: Option<Condition>,
    /// Samples a window needs to be measured at all (default: the
    /// analysis' `min_samples`).
    #[serde(default)]
    pub min_samples: Option<u64>,
}

impl MetricCheck {
    /// Measures `metric`, successful when `success` holds.
    pub fn new(metric: MetricKind, success: Condition) -> Self {
        MetricCheck {
            metric,
            success,
            failure: None,
            min_samples: None,
        }
    }
    /// Failed when `failure` holds.
    pub fn failure(mut self, failure: Condition) -> Self {
        self.failure = Some(failure);
        self
    }
    /// Samples needed per window.
    pub fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = Some(n);
        self
    }
}

/// The analysis of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AnalysisConfig {
    /// Time between measurements (default 60 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub interval: Duration,
    /// The steps; the last must reach 100 %.
    pub steps: Vec<Step>,
    /// The metrics measured each interval (at least one).
    pub metrics: Vec<MetricCheck>,
    /// Failed intervals tolerated; one more rolls back (default 0).
    pub failure_limit: u32,
    /// Samples a window needs (default 20), unless a metric sets its own.
    pub min_samples: u64,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            interval: Duration::from_secs(60),
            steps: Vec::new(),
            metrics: Vec::new(),
            failure_limit: 0,
            min_samples: 20,
        }
    }
}

impl AnalysisConfig {
    /// Starts a config from the defaults.
    pub fn builder() -> AnalysisConfigBuilder {
        AnalysisConfigBuilder(AnalysisConfig::default())
    }

    /// Checks the config: an interval, steps within `0..=100` whose last
    /// reaches 100 %, at least one metric, samples ≥ 1.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(Error::InvalidConfig("analysis interval must be > 0".into()));
        }
        let Some(last) = self.steps.last() else {
            return Err(Error::InvalidConfig("a rollout needs at least one step".into()));
        };
        if let Some(s) = self.steps.iter().find(|s| !(0.0..=100.0).contains(&s.weight)) {
            return Err(Error::InvalidConfig(format!(
                "step weight {} is outside 0..=100 %",
                s.weight
            )));
        }
        if last.weight != 100.0 {
            return Err(Error::InvalidConfig(format!(
                "the step list never reaches 100 % (last step: {} %); a rollout must end fully on the candidate",
                last.weight
            )));
        }
        if self.metrics.is_empty() {
            return Err(Error::InvalidConfig(
                "the analysis needs at least one metric".into(),
            ));
        }
        if self.min_samples == 0 || self.metrics.iter().any(|m| m.min_samples == Some(0)) {
            return Err(Error::InvalidConfig("min_samples must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// Builds an [`AnalysisConfig`].
#[derive(Debug, Clone)]
pub struct AnalysisConfigBuilder(AnalysisConfig);

impl AnalysisConfigBuilder {
    /// Time between measurements.
    pub fn interval(mut self, d: Duration) -> Self {
        self.0.interval = d;
        self
    }
    /// Adds a step.
    pub fn step(mut self, weight: f64, pause: Duration) -> Self {
        self.0.steps.push(Step::new(weight, pause));
        self
    }
    /// Adds a metric.
    pub fn metric(mut self, m: MetricCheck) -> Self {
        self.0.metrics.push(m);
        self
    }
    /// Failed intervals tolerated.
    pub fn failure_limit(mut self, n: u32) -> Self {
        self.0.failure_limit = n;
        self
    }
    /// Samples a window needs.
    pub fn min_samples(mut self, n: u64) -> Self {
        self.0.min_samples = n;
        self
    }
    /// Checks and returns the config.
    pub fn build(self) -> Result<AnalysisConfig> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_hold() {
        let c: Condition = "<= 0.02".parse().expect("parses");
        assert!(c.holds(0.02) && !c.holds(0.03));
        assert!(">3".parse::<Condition>().expect("parses").holds(4.0));
        assert!("= 3".parse::<Condition>().is_err());
        assert!("< x".parse::<Condition>().is_err());
        let json = serde_json::to_string(&MetricCheck::new(MetricKind::ErrorRate, c)).expect("ser");
        assert!(json.contains("\"<= 0.02\""), "{json}");
    }

    #[test]
    fn bad_configs_are_refused() {
        let metric = MetricCheck::new(MetricKind::ErrorRate, Condition::at_most(0.01));
        let base = || AnalysisConfig::builder().metric(metric.clone());
        let e = base()
            .step(10.0, Duration::ZERO)
            .step(50.0, Duration::ZERO)
            .build()
            .expect_err("refused");
        assert!(e.to_string().contains("never reaches 100"), "{e}");
        assert!(base().build().is_err());
        assert!(base()
            .step(120.0, Duration::ZERO)
            .step(100.0, Duration::ZERO)
            .build()
            .is_err());
        assert!(AnalysisConfig::builder()
            .step(100.0, Duration::ZERO)
            .build()
            .is_err());
        assert!(base().step(100.0, Duration::ZERO).min_samples(0).build().is_err());
        assert!(base().step(100.0, Duration::ZERO).build().is_ok());
    }
}
