//! Golden cases ported from the upstream controllers' test tables
//! (kubernetes/kubernetes `pkg/controller/podautoscaler/horizontal_test.go`
//! and `replica_calculator_test.go`; kedacore/keda
//! `pkg/scaling/executor/scale_scaledobjects_test.go`). Case names are the
//! upstream ones.
#![allow(clippy::unwrap_used)]

use agentscale_autoscale::hpa::*;
use agentscale_autoscale::keda::{KedaAction, KedaController, KedaSpec, TriggerModel, TriggerSignal};

const NOW: i64 = 1_000_000;

/// `generateScalingRules(pods, podsPeriod, percent, percentPeriod, window)`.
fn rules(pods: i32, pods_period: i32, percent: i32, percent_period: i32, window: i32) -> ScalingRules {
    let mut policies = Vec::new();
    if pods != 0 {
        policies.push(Policy {
            kind: PolicyKind::Pods,
            value: pods,
            period_s: pods_period,
        });
    }
    if percent != 0 {
        policies.push(Policy {
            kind: PolicyKind::Percent,
            value: percent,
            period_s: percent_period,
        });
    }
    ScalingRules {
        stabilization_window_s: window,
        select: SelectPolicy::Max,
        policies,
        tolerance: None,
    }
}

/// `generateEventsUniformDistribution(events, period)`: each event at the
/// centre of its segment of the last `period` seconds.
fn events(raw: &[i32], period: i64) -> Vec<ScaleEvent> {
    let seg = period as f64 / raw.len() as f64;
    raw.iter()
        .enumerate()
        .map(|(i, &c)| {
            let back = period as f64 - seg * (i as f64 + 1.0) + seg / 2.0;
            ScaleEvent {
                change: c,
                at: NOW - back as i64,
                outdated: false,
            }
        })
        .collect()
}

struct Rate {
    name: &'static str,
    up_events: Vec<ScaleEvent>,
    down_events: Vec<ScaleEvent>,
    min: i32,
    max: i32,
    up: Option<ScalingRules>,
    down: Option<ScalingRules>,
    current: i32,
    desired: i32,
    expected: i32,
    condition: &'static str,
}

/// `TestScalingWithRules` (horizontal_test.go). Rules absent in a case are
/// `GenerateHPAScale{Up,Down}Rules(nil)`: the API defaults.
#[test]
fn test_scaling_with_rules() {
    let e = Vec::new;
    let cases = vec![
        Rate { name: "prenormalized desired replicas within range", up_events: e(), down_events: e(), min: 3, max: 8, up: None, down: None, current: 5, desired: 7, expected: 7, condition: "DesiredWithinRange" },
        Rate { name: "prenormalized desired replicas < minReplicas", up_events: e(), down_events: e(), min: 2, max: 8, up: None, down: None, current: 3, desired: 1, expected: 2, condition: "TooFewReplicas" },
        Rate { name: "prenormalized desired replicas within range when minReplicas is 0", up_events: e(), down_events: e(), min: 0, max: 10, up: None, down: None, current: 1, desired: 0, expected: 0, condition: "DesiredWithinRange" },
        Rate { name: "maxReplicas is the limit because maxReplicas < scaleUpLimit", up_events: e(), down_events: e(), min: 1, max: 10, up: None, down: None, current: 20, desired: 1000, expected: 10, condition: "TooManyReplicas" },
        Rate { name: "desired replica count is more than the maximum replica count", up_events: e(), down_events: e(), min: 100, max: 150, up: None, down: None, current: 100, desired: 1000, expected: 150, condition: "TooManyReplicas" },
        Rate { name: "scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies", up_events: e(), down_events: e(), min: 1, max: 2000, up: Some(rules(0, 0, 1, 60, 0)), down: None, current: 3, desired: 1000, expected: 4, condition: "ScaleUpLimit" },
        // (upstream skips "scaleDownLimit is the limit because scaleDownLimit > minReplicas with user defined policies" via testThis)
        Rate { name: "scaleUp with default behavior", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: None, current: 10, desired: 50, expected: 20, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with pods policy larger than percent policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(100, 60, 100, 60, 0)), down: None, current: 10, desired: 500, expected: 110, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with percent policy larger than pods policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(2, 60, 100, 60, 0)), down: None, current: 10, desired: 500, expected: 20, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with spec MaxReplicas limitation with large pod policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(100, 60, 0, 0, 0)), down: None, current: 10, desired: 50, expected: 50, condition: "DesiredWithinRange" },
        Rate { name: "scaleUp with spec MaxReplicas limitation with large percent policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(10000, 60, 0, 0, 0)), down: None, current: 10, desired: 50, expected: 50, condition: "DesiredWithinRange" },
        Rate { name: "scaleUp with pod policy limitation", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(30, 60, 0, 0, 0)), down: None, current: 10, desired: 50, expected: 40, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with percent policy limitation", up_events: e(), down_events: e(), min: 1, max: 1000, up: Some(rules(0, 0, 200, 60, 0)), down: None, current: 10, desired: 50, expected: 30, condition: "ScaleUpLimit" },
        Rate { name: "scaleDown with percent policy larger than pod policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: Some(rules(20, 60, 1, 60, 300)), current: 100, desired: 2, expected: 80, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with pod policy larger than percent policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: Some(rules(2, 60, 1, 60, 300)), current: 100, desired: 2, expected: 98, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with spec MinReplicas=nil limitation with large pod policy", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: Some(rules(100, 60, 0, 0, 300)), current: 10, desired: 0, expected: 1, condition: "TooFewReplicas" },
        Rate { name: "scaleDown with spec MinReplicas limitation with large percent policy", up_events: e(), down_events: e(), min: 5, max: 1000, up: None, down: Some(rules(0, 0, 100, 60, 300)), current: 10, desired: 2, expected: 5, condition: "TooFewReplicas" },
        Rate { name: "scaleDown with pod policy limitation", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: Some(rules(5, 60, 0, 0, 300)), current: 10, desired: 2, expected: 5, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with percent policy limitation", up_events: e(), down_events: e(), min: 1, max: 1000, up: None, down: Some(rules(0, 0, 50, 60, 300)), current: 10, desired: 5, expected: 5, condition: "DesiredWithinRange" },
        Rate { name: "scaleUp with spec MaxReplicas limitation with large pod policy and events", up_events: events(&[1, 5, 9], 120), down_events: e(), min: 1, max: 200, up: Some(rules(300, 60, 0, 0, 0)), down: None, current: 100, desired: 500, expected: 200, condition: "TooManyReplicas" },
        Rate { name: "scaleUp with spec MaxReplicas limitation with large percent policy and events", up_events: events(&[1, 5, 9], 120), down_events: e(), min: 1, max: 200, up: Some(rules(0, 0, 10000, 60, 0)), down: None, current: 100, desired: 500, expected: 200, condition: "TooManyReplicas" },
        Rate { name: "scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events", up_events: events(&[1, 5, 9], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(5, 120, 0, 0, 0)), down: None, current: 100, desired: 500, expected: 100, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with pod policy and previous scale up events", up_events: events(&[1, 5, 9], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(150, 120, 0, 0, 0)), down: None, current: 100, desired: 500, expected: 235, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with percent policy and previous scale up events", up_events: events(&[1, 5, 9], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(0, 0, 200, 120, 0)), down: None, current: 100, desired: 500, expected: 255, condition: "ScaleUpLimit" },
        Rate { name: "scaleUp with percent policy and previous scale up and down events", up_events: events(&[4], 120), down_events: events(&[2], 120), min: 1, max: 1000, up: Some(rules(0, 0, 300, 300, 0)), down: None, current: 6, desired: 24, expected: 16, condition: "ScaleUpLimit" },
        Rate { name: "scaleDown with default policy and previous events", up_events: e(), down_events: events(&[1, 5, 9], 120), min: 1, max: 1000, up: None, down: None, current: 10, desired: 5, expected: 5, condition: "DesiredWithinRange" },
        Rate { name: "scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events", up_events: e(), down_events: events(&[1, 5, 9], 120), min: 1, max: 1000, up: None, down: Some(rules(115, 120, 0, 0, 300)), current: 100, desired: 0, expected: 1, condition: "TooFewReplicas" },
        Rate { name: "scaleDown with spec MinReplicas limitation with large pod policy and previous events", up_events: e(), down_events: events(&[1, 5, 9], 120), min: 5, max: 1000, up: None, down: Some(rules(130, 120, 0, 0, 300)), current: 100, desired: 0, expected: 5, condition: "TooFewReplicas" },
        Rate { name: "scaleDown with spec MinReplicas limitation with large percent policy and previous events", up_events: e(), down_events: events(&[1, 5, 9], 120), min: 5, max: 1000, up: None, down: Some(rules(0, 0, 100, 120, 300)), current: 100, desired: 2, expected: 5, condition: "TooFewReplicas" },
        Rate { name: "scaleDown with pod policy limitation and previous events", up_events: e(), down_events: events(&[1, 5, 9], 120), min: 1, max: 1000, up: None, down: Some(rules(5, 120, 0, 0, 300)), current: 100, desired: 2, expected: 100, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with percent policy limitation and previous events", up_events: e(), down_events: events(&[2, 4, 6], 120), min: 1, max: 1000, up: None, down: Some(rules(0, 0, 50, 120, 300)), current: 100, desired: 0, expected: 56, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with percent policy and previous scale up and down events", up_events: events(&[2], 120), down_events: events(&[4], 120), min: 1, max: 1000, up: None, down: Some(rules(0, 0, 50, 180, 0)), current: 10, desired: 1, expected: 6, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with previous events preventing further scale down", up_events: e(), down_events: events(&[10, 10, 10], 120), min: 1, max: 1000, up: None, down: Some(rules(0, 0, 10, 120, 300)), current: 100, desired: 0, expected: 100, condition: "ScaleDownLimit" },
        Rate { name: "scaleDown with with previous events still allowing more scale down", up_events: e(), down_events: events(&[10, 10, 10], 120), min: 1, max: 1000, up: None, down: Some(rules(0, 0, 1000, 120, 300)), current: 10, desired: 5, expected: 5, condition: "DesiredWithinRange" },
        Rate { name: "check 'outdated' flag for events for one behavior for up", up_events: events(&[8, 12, 9, 11], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(1000, 60, 0, 0, 0)), down: None, current: 100, desired: 200, expected: 200, condition: "DesiredWithinRange" },
        Rate { name: "check that events were not marked 'outdated' for two different policies in the behavior for up", up_events: events(&[8, 12, 9, 11], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(1000, 120, 100, 60, 0)), down: None, current: 100, desired: 200, expected: 200, condition: "DesiredWithinRange" },
        Rate { name: "check that events were marked 'outdated' for two different policies in the behavior for up", up_events: events(&[8, 12, 9, 11], 120), down_events: e(), min: 1, max: 1000, up: Some(rules(1000, 30, 100, 60, 0)), down: None, current: 100, desired: 200, expected: 200, condition: "DesiredWithinRange" },
        Rate { name: "check 'outdated' flag for events for one behavior for down", up_events: e(), down_events: events(&[8, 12, 9, 11], 120), min: 1, max: 1000, up: None, down: Some(rules(1000, 60, 0, 0, 300)), current: 100, desired: 5, expected: 5, condition: "DesiredWithinRange" },
        Rate { name: "check that events were not marked 'outdated' for two different policies in the behavior for down", up_events: e(), down_events: events(&[8, 12, 9, 11], 120), min: 1, max: 1000, up: None, down: Some(rules(1000, 120, 100, 60, 300)), current: 100, desired: 5, expected: 5, condition: "DesiredWithinRange" },
        Rate { name: "check that events were marked 'outdated' for two different policies in the behavior for down", up_events: e(), down_events: events(&[8, 12, 9, 11], 120), min: 1, max: 1000, up: None, down: Some(rules(1000, 30, 100, 60, 300)), current: 100, desired: 5, expected: 5, condition: "DesiredWithinRange" },
    ];
    assert_eq!(cases.len(), 40);
    for c in cases {
        let up = c.up.unwrap_or_else(ScalingRules::default_scale_up);
        let down = c.down.unwrap_or_else(ScalingRules::default_scale_down);
        let n = Normalization {
            up: &up,
            down: &down,
            min: c.min,
            max: c.max,
            current: c.current,
            desired: c.desired,
        };
        let (got, why) = convert_with_behavior_rate(&n, &c.up_events, &c.down_events, NOW);
        assert_eq!((got, why.as_str()), (c.expected, c.condition), "{}", c.name);
    }
}

/// `TestNormalizeDesiredReplicasWithBehavior` (horizontal_test.go).
#[test]
fn test_normalize_desired_replicas_with_behavior() {
    struct C {
        name: &'static str,
        recs: Vec<(i32, i64)>,
        current: i32,
        desired: i32,
        expected: i32,
        expected_recs: Option<Vec<i32>>,
        up_w: i64,
        down_w: i64,
    }
    let m = 60;
    let cases = vec![
        C {
            name: "empty recommendations for scaling down",
            recs: vec![],
            current: 100,
            desired: 5,
            expected: 5,
            expected_recs: Some(vec![5]),
            up_w: 0,
            down_w: 0,
        },
        C {
            name: "simple scale down stabilization",
            recs: vec![(4, -2 * m), (5, -m)],
            current: 100,
            desired: 3,
            expected: 5,
            expected_recs: Some(vec![4, 5, 3]),
            up_w: 0,
            down_w: 3 * m,
        },
        C {
            name: "simple scale up stabilization",
            recs: vec![(4, -2 * m), (5, -m)],
            current: 1,
            desired: 7,
            expected: 4,
            expected_recs: Some(vec![4, 5, 7]),
            up_w: 5 * m,
            down_w: 0,
        },
        C {
            name: "no scale down stabilization",
            recs: vec![(1, -2 * m), (2, -m)],
            current: 100,
            desired: 3,
            expected: 3,
            expected_recs: Some(vec![1, 2, 3]),
            up_w: 5 * m,
            down_w: 0,
        },
        C {
            name: "no scale up stabilization",
            recs: vec![(4, -2 * m), (5, -m)],
            current: 1,
            desired: 3,
            expected: 3,
            expected_recs: Some(vec![4, 5, 3]),
            up_w: 0,
            down_w: 5 * m,
        },
        C {
            name: "no scale down stabilization, reuse recommendation element",
            recs: vec![(10, -10 * m), (9, -9 * m)],
            current: 100,
            desired: 3,
            expected: 3,
            expected_recs: Some(vec![10, 3]),
            up_w: 0,
            down_w: 0,
        },
        C {
            name: "no scale up stabilization, reuse recommendation element",
            recs: vec![(10, -10 * m), (9, -9 * m)],
            current: 1,
            desired: 100,
            expected: 100,
            expected_recs: Some(vec![10, 100]),
            up_w: 0,
            down_w: 0,
        },
        C {
            name: "scale down stabilization, reuse one of obsolete recommendation element",
            recs: vec![(10, -10 * m), (4, -m), (5, -2 * m), (9, -9 * m)],
            current: 100,
            desired: 3,
            expected: 5,
            expected_recs: Some(vec![10, 4, 5, 3]),
            up_w: 0,
            down_w: 3 * m,
        },
        C {
            name: "scale up stabilization, reuse one of obsolete recommendation element",
            recs: vec![(10, -100 * m), (6, -m), (5, -2 * m), (9, -3 * m)],
            current: 1,
            desired: 100,
            expected: 5,
            expected_recs: Some(vec![100, 6, 5, 9]),
            up_w: 300,
            down_w: 0,
        },
        C {
            name: "scale up and down stabilization, do not scale up when prenormalized rec goes down",
            recs: vec![(2, -100 * m), (3, -3 * m)],
            current: 2,
            desired: 1,
            expected: 2,
            expected_recs: None,
            up_w: 300,
            down_w: 300,
        },
        C {
            name: "scale up and down stabilization, do not scale down when prenormalized rec goes up",
            recs: vec![(2, -100 * m), (1, -3 * m)],
            current: 2,
            desired: 3,
            expected: 2,
            expected_recs: None,
            up_w: 300,
            down_w: 300,
        },
    ];
    for c in cases {
        let mut recs: Vec<Recommendation> = c
            .recs
            .iter()
            .map(|&(r, back)| Recommendation {
                replicas: r,
                at: NOW + back,
            })
            .collect();
        let got = stabilize_with_behaviors(&mut recs, NOW, c.current, c.desired, c.up_w, c.down_w);
        assert_eq!(got, c.expected, "{}", c.name);
        if let Some(exp) = c.expected_recs {
            let stored: Vec<i32> = recs.iter().map(|r| r.replicas).collect();
            assert_eq!(stored, exp, "{}: stored recommendations", c.name);
        }
    }
}

/// `TestNormalizeDesiredReplicas` (horizontal_test.go; no behavior, 5 min window).
#[test]
#[allow(clippy::type_complexity)]
fn test_normalize_desired_replicas() {
    let m = 60;
    let cases: Vec<(&str, Vec<(i32, i64)>, i32, i32, usize)> = vec![
        ("empty log", vec![], 5, 5, 1),
        ("stabilize", vec![(4, -2 * m), (5, -m)], 3, 5, 3),
        ("no stabilize", vec![(1, -2 * m), (2, -m)], 3, 3, 3),
        (
            "no stabilize - old recommendations",
            vec![(10, -10 * m), (9, -9 * m)],
            3,
            3,
            2,
        ),
        (
            "stabilize - old recommendations",
            vec![(10, -10 * m), (4, -m), (5, -2 * m), (9, -9 * m)],
            3,
            5,
            4,
        ),
    ];
    for (name, recs, desired, expected, log_len) in cases {
        let mut recs: Vec<Recommendation> = recs
            .iter()
            .map(|&(r, back)| Recommendation {
                replicas: r,
                at: NOW + back,
            })
            .collect();
        assert_eq!(stabilize_legacy(&mut recs, NOW, desired, 300), expected, "{name}");
        assert_eq!(recs.len(), log_len, "{name}: log length");
    }
}

/// External `AverageValue` cases of replica_calculator_test.go
/// (`TestReplicaCalcScaleUpPerPodCMExternal`, `TestReplicaCalcScaleDownPerPodCMExternal`,
/// `TestReplicaCalcTolerancePerPodCMExternal`): levels are milli-values.
#[test]
fn test_replica_calc_external_per_pod() {
    let cases = [
        ("TestReplicaCalcScaleUpPerPodCMExternal", 3, 2150, 8600, 4, 2867),
        ("TestReplicaCalcScaleDownPerPodCMExternal", 5, 2867, 8600, 3, 1720),
        ("TestReplicaCalcTolerancePerPodCMExternal", 3, 2900, 8600, 3, 2867),
    ];
    for (name, current, per_pod, level, expected, usage) in cases {
        let got = external_per_pod_replicas(current, per_pod, level, DEFAULT_TOLERANCE, DEFAULT_TOLERANCE);
        assert_eq!(got, (expected, usage), "{name}");
    }
    // "outside configurable 1% tolerance" (TestReplicaCalcConfigurableTolerance family).
    assert_eq!(
        external_per_pod_replicas(3, 2900, 8600, 0.01, 0.01).0,
        3 /* ceil(2.97) */
    );
}

fn keda(min: i32, idle: Option<i32>) -> KedaController {
    let hpa = HpaSpec {
        name: "h".into(),
        target: "t".into(),
        min_replicas: min.max(1),
        max_replicas: 100,
        metric: "m".into(),
        target_average_milli: 1000,
        behavior: None,
    };
    KedaController::new(KedaSpec {
        target: "t".into(),
        polling_interval_s: 30,
        cooldown_period_s: 300,
        min_replicas: min,
        max_replicas: 100,
        idle_replicas: idle,
        triggers: vec![TriggerModel {
            signal: TriggerSignal::PrometheusDepth,
            target_milli: 1000,
            activation_milli: 0,
        }],
        hpa,
    })
}

/// scale_scaledobjects_test.go (KEDA executor): 0 <-> 1 and min/idle handling.
#[test]
fn test_keda_executor_cases() {
    // TestScaleToMinReplicasWhenNotActive: min 0, 10 replicas, never active -> 0.
    assert_eq!(keda(0, None).request_scale(NOW, 10, false), KedaAction::Scale(0));
    // TestScaleToMinReplicasFromLowerInitialReplicaCount: min 5, 1 replica -> 5.
    assert_eq!(keda(5, None).request_scale(NOW, 1, false), KedaAction::Scale(5));
    // TestScaleFromMinReplicasWhenActive: min 0, 0 replicas, active -> 1.
    assert_eq!(keda(0, None).request_scale(NOW, 0, true), KedaAction::Scale(1));
    // TestScaleToIdleReplicasWhenNotActive: idle 0, min 5, 10 replicas -> 0.
    assert_eq!(
        keda(5, Some(0)).request_scale(NOW, 10, false),
        KedaAction::Scale(0)
    );
    // TestScaleFromIdleToMinReplicasWhenActive: idle 0, min 5, 0 replicas, active -> 5.
    assert_eq!(keda(5, Some(0)).request_scale(NOW, 0, true), KedaAction::Scale(5));
    // Cooldown (scaleToZero): active at NOW, inactive afterwards: held until
    // lastActiveTime + cooldownPeriod has passed.
    let mut k = keda(0, None);
    assert_eq!(k.request_scale(NOW, 3, true), KedaAction::None);
    assert_eq!(k.request_scale(NOW + 300, 3, false), KedaAction::None);
    assert_eq!(k.request_scale(NOW + 301, 3, false), KedaAction::Scale(0));
}
