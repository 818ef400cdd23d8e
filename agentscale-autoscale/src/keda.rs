//! KEDA `ScaledObject` / `TriggerAuthentication` (`keda.sh/v1alpha1`) as
//! typed structs that reject unknown fields, and a model of KEDA's scale
//! loop (`pkg/scaling/executor/scale_scaledobjects.go`): KEDA owns
//! 0 <-> 1 (activation, cooldown), the HPA it creates owns 1 <-> N.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::hpa::{HpaSpec, ScalingRules};
use crate::quantity::parse_quantity_milli;
use crate::{Error, Result};

/// KEDA's default `pollingInterval`, seconds.
pub const DEFAULT_POLLING_INTERVAL_S: i32 = 30;
/// KEDA's default `cooldownPeriod`, seconds.
pub const DEFAULT_COOLDOWN_PERIOD_S: i32 = 300;
/// KEDA's default `maxReplicaCount`.
pub const DEFAULT_MAX_REPLICA_COUNT: i32 = 100;

/// A KEDA `ScaledObject`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObject {
    /// `keda.sh/v1alpha1`.
    pub api_version: String,
    /// `ScaledObject`.
    pub kind: String,
    /// Name, labels, annotations.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: ScaledObjectSpec,
}

/// `ScaledObject.spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaledObjectSpec {
    /// The workload to scale.
    pub scale_target_ref: ScaleTarget,
    /// Seconds between trigger checks (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polling_interval: Option<i32>,
    /// Seconds after the last active check before scaling to zero (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_period: Option<i32>,
    /// Replicas while no trigger is active (instead of zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_replica_count: Option<i32>,
    /// Lower bound (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replica_count: Option<i32>,
    /// Upper bound (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replica_count: Option<i32>,
    /// Replicas to hold while the scaler fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// HPA tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advanced: Option<Advanced>,
    /// The triggers; KEDA scales on the largest demand among them.
    pub triggers: Vec<Trigger>,
}

/// `scaleTargetRef`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScaleTarget {
    /// The Deployment's name.
    pub name: String,
    /// Defaults to `apps/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Defaults to `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Container whose env KEDA may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_source_container_name: Option<String>,
}

/// `fallback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fallback {
    /// Consecutive failures before falling back.
    pub failure_threshold: i32,
    /// Replicas to hold.
    pub replicas: i32,
}

/// `advanced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Advanced {
    /// Restore the original replica count when the ScaledObject is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_to_original_replica_count: Option<bool>,
    /// The HPA KEDA creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
}

/// `advanced.horizontalPodAutoscalerConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HpaConfig {
    /// Name of the generated HPA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The generated HPA's `behavior`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// One trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    /// Scaler type: `redis-streams`, `kafka`, `prometheus`, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// Trigger name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Scaler parameters (all strings, as KEDA requires).
    pub metadata: BTreeMap<String, String>,
    /// Credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_ref: Option<AuthenticationRef>,
    /// `AverageValue` (default), `Value` or `Utilization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
    /// Serve the metric from KEDA's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_cached_metrics: Option<bool>,
}

/// `authenticationRef`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationRef {
    /// The TriggerAuthentication's name.
    pub name: String,
    /// `TriggerAuthentication` (default) or `ClusterTriggerAuthentication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A KEDA `TriggerAuthentication`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerAuthentication {
    /// `keda.sh/v1alpha1`.
    pub api_version: String,
    /// `TriggerAuthentication`.
    pub kind: String,
    /// Name.
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: TriggerAuthenticationSpec,
}

/// `TriggerAuthentication.spec` (Secret references only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TriggerAuthenticationSpec {
    /// Parameters read from Secrets.
    pub secret_target_ref: Vec<SecretTargetRef>,
}

/// One `secretTargetRef` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretTargetRef {
    /// The scaler parameter (`password`, `sasl`, ...).
    pub parameter: String,
    /// The Secret.
    pub name: String,
    /// The key in the Secret.
    pub key: String,
}

/// What a trigger measures, in the simulator's queue model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerSignal {
    /// Undelivered entries of a Redis stream group (`XINFO GROUPS` lag): ready tasks.
    RedisStreamLag,
    /// Consumer-group lag (committed offsets trail until a task is done):
    /// ready + in flight, capped by KEDA at `partitions × lagThreshold`
    /// unless `allowIdleConsumers` is true.
    KafkaLag {
        /// Whether KEDA may ask for more replicas than partitions.
        allow_idle_consumers: bool,
    },
    /// A PromQL query over `agentscale_task_queue_due` (or `…_depth`): ready +
    /// in flight (the simulator models no delayed tasks, so both agree).
    PrometheusDepth,
}

/// A trigger reduced to what the scale loop needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerModel {
    /// What is measured.
    pub signal: TriggerSignal,
    /// Per-replica target (`lagCount`, `lagThreshold`, `threshold`), milli.
    pub target_milli: i64,
    /// Active when the metric is above this (milli).
    pub activation_milli: i64,
}

fn meta<'a>(t: &'a Trigger, key: &str) -> Option<&'a str> {
    t.metadata.get(key).map(String::as_str)
}

fn number(t: &Trigger, key: &str, default: Option<&str>) -> Result<i64> {
    let raw = meta(t, key).or(default).ok_or_else(|| {
        Error::InvalidConfig(format!("keda trigger {}: metadata.{key} is required", t.type_))
    })?;
    parse_quantity_milli(raw)
        .map_err(|e| Error::InvalidConfig(format!("keda trigger {}: metadata.{key}: {e}", t.type_)))
}

impl TriggerModel {
    /// Interprets a trigger; unknown scaler types are `InvalidConfig`.
    pub fn from_trigger(t: &Trigger) -> Result<Self> {
        if let Some(mt) = &t.metric_type {
            if mt != "AverageValue" {
                return Err(Error::InvalidConfig(format!(
                    "keda trigger {}: metricType {mt:?} is not modelled (AverageValue only)",
                    t.type_
                )));
            }
        }
        let m = match t.type_.as_str() {
            "redis-streams" => TriggerModel {
                signal: TriggerSignal::RedisStreamLag,
                target_milli: number(t, "lagCount", None)?,
                activation_milli: number(t, "activationLagCount", Some("0"))?,
            },
            "kafka" => TriggerModel {
                signal: TriggerSignal::KafkaLag {
                    allow_idle_consumers: meta(t, "allowIdleConsumers") == Some("true"),
                },
                target_milli: number(t, "lagThreshold", Some("10"))?,
                activation_milli: number(t, "activationLagThreshold", Some("0"))?,
            },
            "prometheus" => TriggerModel {
                signal: TriggerSignal::PrometheusDepth,
                target_milli: number(t, "threshold", None)?,
                activation_milli: number(t, "activationThreshold", Some("0"))?,
            },
            other => {
                return Err(Error::InvalidConfig(format!(
                    "keda trigger type {other:?} is not modelled (redis-streams, kafka, prometheus)"
                )))
            }
        };
        if m.target_milli <= 0 {
            return Err(Error::InvalidConfig(format!(
                "keda trigger {}: the per-replica target must be > 0",
                t.type_
            )));
        }
        Ok(m)
    }
}

/// A ScaledObject reduced to the scale loop's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaSpec {
    /// The Deployment.
    pub target: String,
    /// `pollingInterval`.
    pub polling_interval_s: i64,
    /// `cooldownPeriod`.
    pub cooldown_period_s: i64,
    /// `minReplicaCount`.
    pub min_replicas: i32,
    /// `maxReplicaCount`.
    pub max_replicas: i32,
    /// `idleReplicaCount`.
    pub idle_replicas: Option<i32>,
    /// The triggers.
    pub triggers: Vec<TriggerModel>,
    /// The HPA KEDA creates (1 <-> N), one External metric per trigger; the
    /// simulator feeds it the largest per-trigger proposal.
    pub hpa: HpaSpec,
}

impl KedaSpec {
    /// Reads a typed ScaledObject; anything not modelled is `InvalidConfig`.
    pub fn from_scaled_object(so: &ScaledObject) -> Result<Self> {
        let name = so.metadata.name.clone().unwrap_or_default();
        let s = &so.spec;
        let min_replicas = s.min_replica_count.unwrap_or(0);
        let max_replicas = s.max_replica_count.unwrap_or(DEFAULT_MAX_REPLICA_COUNT);
        if min_replicas < 0 || max_replicas < 1 || max_replicas < min_replicas {
            return Err(Error::InvalidConfig(format!(
                "scaledobject {name}: need 0 <= minReplicaCount ({min_replicas}) <= maxReplicaCount ({max_replicas})"
            )));
        }
        if s.triggers.is_empty() {
            return Err(Error::InvalidConfig(format!("scaledobject {name}: no triggers")));
        }
        let triggers = s
            .triggers
            .iter()
            .map(TriggerModel::from_trigger)
            .collect::<Result<Vec<_>>>()?;
        let polling = s.polling_interval.unwrap_or(DEFAULT_POLLING_INTERVAL_S);
        let cooldown = s.cooldown_period.unwrap_or(DEFAULT_COOLDOWN_PERIOD_S);
        if polling < 1 || cooldown < 0 {
            return Err(Error::InvalidConfig(format!(
                "scaledobject {name}: pollingInterval must be >= 1 and cooldownPeriod >= 0"
            )));
        }
        let behavior = match s
            .advanced
            .as_ref()
            .and_then(|a| a.horizontal_pod_autoscaler_config.as_ref())
        {
            Some(HpaConfig {
                behavior: Some(b), ..
            }) => Some(behavior_rules(b, &name)?),
            _ => None,
        };
        let hpa = HpaSpec {
            name: format!("keda-hpa-{name}"),
            target: s.scale_target_ref.name.clone(),
            min_replicas: min_replicas.max(1),
            max_replicas,
            metric: format!("s0-{}", s.triggers[0].type_),
            target_average_milli: triggers[0].target_milli,
            behavior,
        };
        Ok(KedaSpec {
            target: s.scale_target_ref.name.clone(),
            polling_interval_s: i64::from(polling),
            cooldown_period_s: i64::from(cooldown),
            min_replicas,
            max_replicas,
            idle_replicas: s.idle_replica_count,
            triggers,
            hpa,
        })
    }
}

fn behavior_rules(b: &HorizontalPodAutoscalerBehavior, name: &str) -> Result<(ScalingRules, ScalingRules)> {
    // Reuse the HPA parser through a minimal HPA object.
    use k8s_openapi::api::autoscaling::v2 as k8s;
    let hpa = k8s::HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(k8s::HorizontalPodAutoscalerSpec {
            max_replicas: 1,
            min_replicas: Some(1),
            behavior: Some(b.clone()),
            metrics: Some(vec![k8s::MetricSpec {
                type_: "External".into(),
                external: Some(k8s::ExternalMetricSource {
                    metric: k8s::MetricIdentifier {
                        name: "x".into(),
                        selector: None,
                    },
                    target: k8s::MetricTarget {
                        type_: "AverageValue".into(),
                        average_value: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                            "1".into(),
                        )),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            scale_target_ref: k8s::CrossVersionObjectReference {
                kind: "Deployment".into(),
                name: name.into(),
                api_version: Some("apps/v1".into()),
            },
        }),
        status: None,
    };
    HpaSpec::from_k8s(&hpa)?
        .behavior
        .ok_or_else(|| Error::InvalidConfig(format!("scaledobject {name}: behavior lost")))
}

/// What one KEDA poll decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KedaAction {
    /// Leave the replicas to the HPA.
    None,
    /// Set `spec.replicas`.
    Scale(i32),
}

/// KEDA's scale loop state for one ScaledObject.
#[derive(Debug, Clone)]
pub struct KedaController {
    spec: KedaSpec,
    last_active: Option<i64>,
}

impl KedaController {
    /// A controller that has never seen an active trigger.
    pub fn new(spec: KedaSpec) -> Self {
        KedaController {
            spec,
            last_active: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &KedaSpec {
        &self.spec
    }

    /// `RequestScale`: one poll at `now` with `current` = `spec.replicas`
    /// and `active` = any trigger's metric above its activation threshold.
    pub fn request_scale(&mut self, now: i64, current: i32, active: bool) -> KedaAction {
        let min = self.spec.min_replicas;
        let idle = self.spec.idle_replicas;
        let at_idle = match idle {
            Some(i) => current == i,
            None => current == 0,
        };
        if active && at_idle && current < min.max(1) {
            // scaleFromZeroOrIdle
            self.last_active = Some(now);
            return KedaAction::Scale(min.max(1));
        }
        if active {
            self.last_active = Some(now);
            return KedaAction::None;
        }
        // Not active.
        let scale_in_target = match idle {
            Some(i) => Some(i),
            None if min == 0 => Some(0),
            None => None,
        };
        if let Some(target) = scale_in_target {
            if current > target {
                let cooled = match self.last_active {
                    None => true,
                    Some(t) => t + self.spec.cooldown_period_s < now,
                };
                return if cooled {
                    KedaAction::Scale(target)
                } else {
                    KedaAction::None
                };
            }
        }
        if current < min {
            return KedaAction::Scale(min);
        }
        KedaAction::None
    }
}
