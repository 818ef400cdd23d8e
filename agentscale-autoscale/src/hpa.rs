//! A model of the Kubernetes HorizontalPodAutoscaler controller
//! (`autoscaling/v2`), ported in logic from `pkg/controller/podautoscaler`
//! (`replica_calculator.go`, `horizontal.go`) and the API defaults
//! (`pkg/apis/autoscaling/v2/defaults.go`).
//!
//! Time is whole seconds (`i64`). The functions are the controller's steps
//! with the clock passed in, so the upstream test tables run against them
//! unchanged (see `tests/golden_hpa.rs`).

use k8s_openapi::api::autoscaling::v2 as k8s;

use crate::quantity::parse_quantity_milli;
use crate::{Error, Result};

/// The controller's default tolerance (`--horizontal-pod-autoscaler-tolerance`).
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// The controller's default sync period (`--horizontal-pod-autoscaler-sync-period`), seconds.
pub const DEFAULT_SYNC_PERIOD_S: i64 = 15;
/// The default scale-down stabilization window
/// (`--horizontal-pod-autoscaler-downscale-stabilization`), seconds.
pub const DEFAULT_DOWNSCALE_STABILIZATION_S: i64 = 300;
/// Without `behavior`, one sync may at most double the replicas (`scaleUpLimitFactor`)...
pub const SCALE_UP_LIMIT_FACTOR: f64 = 2.0;
/// ... or go to 4 (`scaleUpLimitMinimum`), whichever is larger.
pub const SCALE_UP_LIMIT_MINIMUM: f64 = 4.0;

/// `selectPolicy` of a scaling direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the largest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// The kind of a scaling policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// At most `value` pods per period.
    Pods,
    /// At most `value` percent of the replicas at the start of the period.
    Percent,
}

/// One `HPAScalingPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Pods or Percent.
    pub kind: PolicyKind,
    /// The amount.
    pub value: i32,
    /// The look-back window of the policy.
    pub period_s: i32,
}

/// One direction's `HPAScalingRules`, with the defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`.
    pub stabilization_window_s: i32,
    /// `selectPolicy`.
    pub select: SelectPolicy,
    /// `policies`.
    pub policies: Vec<Policy>,
    /// `tolerance` (alpha in Kubernetes 1.33+); `None` is the controller's.
    pub tolerance: Option<f64>,
}

impl ScalingRules {
    /// The scale-up defaults: no stabilization, 4 pods or 100 % per 15 s, Max.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window_s: 0,
            select: SelectPolicy::Max,
            policies: vec![
                Policy {
                    kind: PolicyKind::Pods,
                    value: 4,
                    period_s: 15,
                },
                Policy {
                    kind: PolicyKind::Percent,
                    value: 100,
                    period_s: 15,
                },
            ],
            tolerance: None,
        }
    }

    /// The scale-down defaults: the controller's window (300 s), 100 % per 15 s, Max.
    pub fn default_scale_down() -> Self {
        ScalingRules {
            stabilization_window_s: DEFAULT_DOWNSCALE_STABILIZATION_S as i32,
            select: SelectPolicy::Max,
            policies: vec![Policy {
                kind: PolicyKind::Percent,
                value: 100,
                period_s: 15,
            }],
            tolerance: None,
        }
    }

    /// `GenerateHPAScale{Up,Down}Rules`: fields set in `from` override `defaults`.
    fn merged(from: Option<&k8s::HPAScalingRules>, mut defaults: ScalingRules, what: &str) -> Result<Self> {
        let Some(from) = from else { return Ok(defaults) };
        if let Some(s) = &from.select_policy {
            defaults.select = match s.as_str() {
                "Max" => SelectPolicy::Max,
                "Min" => SelectPolicy::Min,
                "Disabled" => SelectPolicy::Disabled,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "hpa behavior.{what}.selectPolicy: {other:?} is not Max, Min or Disabled"
                    )))
                }
            };
        }
        if let Some(w) = from.stabilization_window_seconds {
            if !(0..=3600).contains(&w) {
                return Err(Error::InvalidConfig(format!(
                    "hpa behavior.{what}.stabilizationWindowSeconds: {w} is outside 0..=3600"
                )));
            }
            defaults.stabilization_window_s = w;
        }
        if let Some(policies) = &from.policies {
            let mut out = Vec::with_capacity(policies.len());
            for (i, p) in policies.iter().enumerate() {
                let kind = match p.type_.as_str() {
                    "Pods" => PolicyKind::Pods,
                    "Percent" => PolicyKind::Percent,
                    other => {
                        return Err(Error::InvalidConfig(format!(
                            "hpa behavior.{what}.policies[{i}].type: {other:?} is not Pods or Percent"
                        )))
                    }
                };
                if p.value <= 0 || !(1..=1800).contains(&p.period_seconds) {
                    return Err(Error::InvalidConfig(format!(
                        "hpa behavior.{what}.policies[{i}]: value must be > 0 and periodSeconds in 1..=1800"
                    )));
                }
                out.push(Policy {
                    kind,
                    value: p.value,
                    period_s: p.period_seconds,
                });
            }
            defaults.policies = out;
        }
        if let Some(t) = &from.tolerance {
            let milli = parse_quantity_milli(&t.0)
                .map_err(|e| Error::InvalidConfig(format!("hpa behavior.{what}.tolerance: {e}")))?;
            defaults.tolerance = Some(milli as f64 / 1000.0);
        }
        Ok(defaults)
    }
}

/// What an HPA scales on, as far as this model goes: one External metric
/// with an `AverageValue` target.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaSpec {
    /// `metadata.name`.
    pub name: String,
    /// `spec.scaleTargetRef.name`.
    pub target: String,
    /// `spec.minReplicas` (default 1).
    pub min_replicas: i32,
    /// `spec.maxReplicas`.
    pub max_replicas: i32,
    /// The External metric's name.
    pub metric: String,
    /// The `AverageValue` target, in milli-units.
    pub target_average_milli: i64,
    /// `spec.behavior` with defaults applied; `None` when absent (the
    /// controller's legacy path: downscale window and the ×2/4-pod limit).
    pub behavior: Option<(ScalingRules, ScalingRules)>,
}

impl HpaSpec {
    /// Reads the model's spec from a typed `HorizontalPodAutoscaler`.
    /// Anything this model cannot simulate is an `InvalidConfig` error.
    pub fn from_k8s(hpa: &k8s::HorizontalPodAutoscaler) -> Result<Self> {
        let name = hpa.metadata.name.clone().unwrap_or_default();
        let spec = hpa
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidConfig(format!("hpa {name}: no spec")))?;
        let min_replicas = spec.min_replicas.unwrap_or(1);
        if min_replicas < 0 || spec.max_replicas < 1 || spec.max_replicas < min_replicas {
            return Err(Error::InvalidConfig(format!(
                "hpa {name}: need 0 <= minReplicas ({min_replicas}) <= maxReplicas ({}) and maxReplicas >= 1",
                spec.max_replicas
            )));
        }
        let metrics = spec.metrics.as_deref().unwrap_or_default();
        let [metric] = metrics else {
            return Err(Error::InvalidConfig(format!(
                "hpa {name}: the simulator models exactly one metric, found {}",
                metrics.len()
            )));
        };
        let external = match (metric.type_.as_str(), &metric.external) {
            ("External", Some(e)) => e,
            (t, _) => {
                return Err(Error::InvalidConfig(format!(
                    "hpa {name}: metric type {t:?} is not modelled (External only)"
                )))
            }
        };
        if external.target.type_ != "AverageValue" {
            return Err(Error::InvalidConfig(format!(
                "hpa {name}: target type {:?} is not modelled (AverageValue only)",
                external.target.type_
            )));
        }
        let avg = external.target.average_value.as_ref().ok_or_else(|| {
            Error::InvalidConfig(format!("hpa {name}: AverageValue target without averageValue"))
        })?;
        let target_average_milli = parse_quantity_milli(&avg.0)
            .map_err(|e| Error::InvalidConfig(format!("hpa {name}: averageValue: {e}")))?;
        if target_average_milli <= 0 {
            return Err(Error::InvalidConfig(format!(
                "hpa {name}: averageValue must be > 0"
            )));
        }
        let behavior = match &spec.behavior {
            None => None,
            Some(b) => Some((
                ScalingRules::merged(b.scale_up.as_ref(), ScalingRules::default_scale_up(), "scaleUp")?,
                ScalingRules::merged(
                    b.scale_down.as_ref(),
                    ScalingRules::default_scale_down(),
                    "scaleDown",
                )?,
            )),
        };
        Ok(HpaSpec {
            name,
            target: spec.scale_target_ref.name.clone(),
            min_replicas,
            max_replicas: spec.max_replicas,
            metric: external.metric.name.clone(),
            target_average_milli,
            behavior,
        })
    }
}

/// `GetExternalPerPodMetricReplicas`: the replica proposal for an External
/// metric with an `AverageValue` target. `usage_milli` is the sum of the
/// metric's series; returns (replicas, usage per current replica).
pub fn external_per_pod_replicas(
    status_replicas: i32,
    target_per_pod_milli: i64,
    usage_milli: i64,
    tolerance_down: f64,
    tolerance_up: f64,
) -> (i32, i64) {
    let mut replicas = status_replicas;
    let ratio = usage_milli as f64 / (target_per_pod_milli as f64 * f64::from(status_replicas.max(0)));
    // With zero replicas the ratio is inf or NaN; upstream never gets here
    // (scaling is disabled at zero), but the ceil below is the sane answer.
    if !(ratio >= 1.0 - tolerance_down && ratio <= 1.0 + tolerance_up) {
        replicas = (usage_milli as f64 / target_per_pod_milli as f64).ceil() as i32;
    }
    let per_pod = if status_replicas > 0 {
        (usage_milli as f64 / f64::from(status_replicas)).ceil() as i64
    } else {
        usage_milli
    };
    (replicas, per_pod)
}

/// One stored recommendation (`timestampedRecommendation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The unstabilized proposal.
    pub replicas: i32,
    /// When it was made (s).
    pub at: i64,
}

/// One stored scale event (`timestampedScaleEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleEvent {
    /// Pods added (up list) or removed (down list), positive.
    pub change: i32,
    /// When (s).
    pub at: i64,
    /// Marked for reuse.
    pub outdated: bool,
}

/// Why a normalized recommendation is what it is (the `ScalingLimited`
/// condition's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `DesiredWithinRange`.
    DesiredWithinRange,
    /// `ScaleUpLimit`.
    ScaleUpLimit,
    /// `TooManyReplicas`.
    TooManyReplicas,
    /// `ScaleDownLimit`.
    ScaleDownLimit,
    /// `TooFewReplicas`.
    TooFewReplicas,
}

impl Limit {
    /// The upstream reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::DesiredWithinRange => "DesiredWithinRange",
            Limit::ScaleUpLimit => "ScaleUpLimit",
            Limit::TooManyReplicas => "TooManyReplicas",
            Limit::ScaleDownLimit => "ScaleDownLimit",
            Limit::TooFewReplicas => "TooFewReplicas",
        }
    }
}

fn store_recommendation(recs: &mut Vec<Recommendation>, old: Option<usize>, rec: Recommendation) {
    match old {
        Some(i) => recs[i] = rec,
        None => recs.push(rec),
    }
}

/// `stabilizeRecommendation` (no `behavior`): the highest recommendation of
/// the last `window_s` seconds, recording `desired` (reusing the slot of an
/// expired one).
pub fn stabilize_legacy(recs: &mut Vec<Recommendation>, now: i64, desired: i32, window_s: i64) -> i32 {
    let cutoff = now - window_s;
    let mut best = desired;
    let mut old = None;
    for (i, r) in recs.iter().enumerate() {
        if r.at < cutoff {
            old = Some(i);
        } else if r.replicas > best {
            best = r.replicas;
        }
    }
    store_recommendation(
        recs,
        old,
        Recommendation {
            replicas: desired,
            at: now,
        },
    );
    best
}

/// `stabilizeRecommendationWithBehaviors`: bounds `current` between the
/// lowest recommendation of the scale-up window and the highest of the
/// scale-down window, recording `desired`.
pub fn stabilize_with_behaviors(
    recs: &mut Vec<Recommendation>,
    now: i64,
    current: i32,
    desired: i32,
    up_window_s: i64,
    down_window_s: i64,
) -> i32 {
    let up_cutoff = now - up_window_s;
    let down_cutoff = now - down_window_s;
    let mut up = desired;
    let mut down = desired;
    let mut old = None;
    for (i, r) in recs.iter().enumerate() {
        if r.at > up_cutoff {
            up = up.min(r.replicas);
        }
        if r.at > down_cutoff {
            down = down.max(r.replicas);
        }
        if r.at < up_cutoff && r.at < down_cutoff {
            old = Some(i);
        }
    }
    let mut rec = current;
    if rec < up {
        rec = up;
    }
    if rec > down {
        rec = down;
    }
    store_recommendation(
        recs,
        old,
        Recommendation {
            replicas: desired,
            at: now,
        },
    );
    rec
}

fn change_in_period(period_s: i32, events: &[ScaleEvent], now: i64) -> i32 {
    let cutoff = now - i64::from(period_s);
    events.iter().filter(|e| e.at > cutoff).map(|e| e.change).sum()
}

/// `calculateScaleUpLimitWithScalingRules`.
pub fn scale_up_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &ScalingRules,
    now: i64,
) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MAX, std::cmp::min),
        SelectPolicy::Max => (i32::MIN, std::cmp::max),
    };
    for p in &rules.policies {
        let start = current - change_in_period(p.period_s, up, now) + change_in_period(p.period_s, down, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start + p.value,
            PolicyKind::Percent => (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// `calculateScaleDownLimitWithBehaviors`.
pub fn scale_down_limit(
    current: i32,
    up: &[ScaleEvent],
    down: &[ScaleEvent],
    rules: &ScalingRules,
    now: i64,
) -> i32 {
    let (mut result, pick): (i32, fn(i32, i32) -> i32) = match rules.select {
        SelectPolicy::Disabled => return current,
        SelectPolicy::Min => (i32::MIN, std::cmp::max),
        SelectPolicy::Max => (i32::MAX, std::cmp::min),
    };
    for p in &rules.policies {
        let start = current - change_in_period(p.period_s, up, now) + change_in_period(p.period_s, down, now);
        let proposed = match p.kind {
            PolicyKind::Pods => start - p.value,
            PolicyKind::Percent => (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)) as i32,
        };
        result = pick(result, proposed);
    }
    result
}

/// The inputs of `convertDesiredReplicasWithBehaviorRate` (`NormalizationArg`).
#[derive(Debug, Clone)]
pub struct Normalization<'a> {
    /// Scale-up rules.
    pub up: &'a ScalingRules,
    /// Scale-down rules.
    pub down: &'a ScalingRules,
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// Current replicas.
    pub current: i32,
    /// Desired (stabilized) replicas.
    pub desired: i32,
}

/// `convertDesiredReplicasWithBehaviorRate`: applies the policies' rate
/// limits and min/max.
pub fn convert_with_behavior_rate(
    a: &Normalization<'_>,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    now: i64,
) -> (i32, Limit) {
    if a.desired > a.current {
        let limit = scale_up_limit(a.current, up_events, down_events, a.up, now).max(a.current);
        let (allowed, why) = if a.max > limit {
            (limit, Limit::ScaleUpLimit)
        } else {
            (a.max, Limit::TooManyReplicas)
        };
        if a.desired > allowed {
            return (allowed, why);
        }
    } else if a.desired < a.current {
        let limit = scale_down_limit(a.current, up_events, down_events, a.down, now).min(a.current);
        let (allowed, why) = if a.min < limit {
            (limit, Limit::ScaleDownLimit)
        } else {
            (a.min, Limit::TooFewReplicas)
        };
        if a.desired < allowed {
            return (allowed, why);
        }
    }
    (a.desired, Limit::DesiredWithinRange)
}

/// `convertDesiredReplicasWithRules` (no `behavior`).
pub fn convert_with_rules(current: i32, desired: i32, min: i32, max: i32) -> (i32, Limit) {
    let up_limit = (SCALE_UP_LIMIT_FACTOR * f64::from(current)).max(SCALE_UP_LIMIT_MINIMUM) as i32;
    let (allowed_max, why) = if max > up_limit {
        (up_limit, Limit::ScaleUpLimit)
    } else {
        (max, Limit::TooManyReplicas)
    };
    if desired < min {
        (min, Limit::TooFewReplicas)
    } else if desired > allowed_max {
        (allowed_max, why)
    } else {
        (desired, Limit::DesiredWithinRange)
    }
}

fn longest_period(rules: &ScalingRules) -> i32 {
    rules.policies.iter().map(|p| p.period_s).max().unwrap_or(0)
}

/// `storeScaleEvent`: records a rescale from `prev` to `new`, reusing the
/// slot of an event older than the direction's longest policy period.
pub fn store_scale_event(
    behavior: Option<&(ScalingRules, ScalingRules)>,
    up_events: &mut Vec<ScaleEvent>,
    down_events: &mut Vec<ScaleEvent>,
    prev: i32,
    new: i32,
    now: i64,
) {
    let Some((up_rules, down_rules)) = behavior else {
        return;
    };
    let (events, rules, change) = if new > prev {
        (up_events, up_rules, new - prev)
    } else {
        (down_events, down_rules, prev - new)
    };
    let cutoff = now - i64::from(longest_period(rules));
    let mut old = None;
    for (i, e) in events.iter_mut().enumerate() {
        if e.at < cutoff {
            e.outdated = true;
        }
        if e.outdated {
            old = Some(i);
        }
    }
    let ev = ScaleEvent {
        change,
        at: now,
        outdated: false,
    };
    match old {
        Some(i) => events[i] = ev,
        None => events.push(ev),
    }
}

/// A running HPA controller for one HPA object.
#[derive(Debug, Clone)]
pub struct HpaController {
    spec: HpaSpec,
    tolerance: f64,
    recommendations: Vec<Recommendation>,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
}

impl HpaController {
    /// A controller with the default tolerance.
    pub fn new(spec: HpaSpec) -> Self {
        HpaController {
            spec,
            tolerance: DEFAULT_TOLERANCE,
            recommendations: Vec::new(),
            up_events: Vec::new(),
            down_events: Vec::new(),
        }
    }

    /// The spec being simulated.
    pub fn spec(&self) -> &HpaSpec {
        &self.spec
    }

    /// One `reconcileAutoscaler` pass at `now`: `spec_replicas` is the
    /// target's `spec.replicas`, `status_replicas` its pods, `usage_milli`
    /// the External metric's value. Returns the new `spec.replicas`.
    pub fn reconcile(&mut self, now: i64, spec_replicas: i32, status_replicas: i32, usage_milli: i64) -> i32 {
        if self.recommendations.is_empty() {
            self.recommendations.push(Recommendation {
                replicas: spec_replicas,
                at: now,
            });
        }
        let min = self.spec.min_replicas;
        let current = spec_replicas;
        if current == 0 && min != 0 {
            return 0; // scaling disabled at zero (KEDA owns 0 <-> 1)
        }
        let desired = if current > self.spec.max_replicas {
            self.spec.max_replicas
        } else if current < min {
            min
        } else {
            let (tol_down, tol_up) = match &self.spec.behavior {
                Some((up, down)) => (
                    down.tolerance.unwrap_or(self.tolerance),
                    up.tolerance.unwrap_or(self.tolerance),
                ),
                None => (self.tolerance, self.tolerance),
            };
            let (proposal, _) = external_per_pod_replicas(
                status_replicas.max(1),
                self.spec.target_average_milli,
                usage_milli,
                tol_down,
                tol_up,
            );
            match &self.spec.behavior {
                None => {
                    let s = stabilize_legacy(
                        &mut self.recommendations,
                        now,
                        proposal,
                        DEFAULT_DOWNSCALE_STABILIZATION_S,
                    );
                    convert_with_rules(current, s, min, self.spec.max_replicas).0
                }
                Some((up, down)) => {
                    let s = stabilize_with_behaviors(
                        &mut self.recommendations,
                        now,
                        current,
                        proposal,
                        i64::from(up.stabilization_window_s),
                        i64::from(down.stabilization_window_s),
                    );
                    let n = Normalization {
                        up,
                        down,
                        min,
                        max: self.spec.max_replicas,
                        current,
                        desired: s,
                    };
                    convert_with_behavior_rate(&n, &self.up_events, &self.down_events, now).0
                }
            }
        };
        if desired != current {
            store_scale_event(
                self.spec.behavior.as_ref(),
                &mut self.up_events,
                &mut self.down_events,
                current,
                desired,
                now,
            );
        }
        desired
    }
}
