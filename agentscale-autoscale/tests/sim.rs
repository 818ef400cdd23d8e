//! The simulator: input validation, determinism, conservation, the two
//! backlog stores agreeing, and specs loaded from the shipped manifests.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use agentscale_autoscale::manifest;
use agentscale_autoscale::queue::{ArrivalTrace, PerTaskBacklog, RunLengthBacklog, Segment};
use agentscale_autoscale::sim::{simulate, simulate_with, Autoscaler, SimConfig};
use agentscale_autoscale::{autoscaler_for, Error};

fn overlay(name: &str) -> Autoscaler {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/overlays")
        .join(name);
    autoscaler_for(&manifest::load_kustomization(dir).unwrap(), "agentscale-worker").unwrap()
}

fn seg(start_s: u32, end_s: u32, rate: f64) -> Segment {
    Segment { start_s, end_s, rate }
}

#[test]
fn bad_traces_are_typed_errors() {
    let cases = [
        vec![seg(0, 10, 1.0), seg(20, 30, 1.0)],
        vec![seg(0, 10, -1.0)],
        vec![seg(0, 10, f64::NAN)],
        vec![seg(5, 10, 1.0)],
        vec![seg(0, 10, 1.0), seg(5, 20, 1.0)],
        vec![seg(0, 0, 1.0)],
        vec![],
    ];
    for c in cases {
        let err = ArrivalTrace::from_segments(&c).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{c:?}: {err}");
    }
    let err = ArrivalTrace::from_segments(&[seg(0, 10, 1.0), seg(20, 30, 1.0)]).unwrap_err();
    assert!(err.to_string().contains("gap from 10 s to 20 s"), "{err}");
    assert!(matches!(
        ArrivalTrace::parse_csv("0,10,x"),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        ArrivalTrace::parse_csv("# s,e,r\n0,10,2\n10,20,0\n")
            .unwrap()
            .len(),
        20
    );
}

#[test]
fn hpa_spec_with_unknown_fields_is_a_typed_error() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/overlays/hpa/hpa.yaml"),
    )
    .unwrap();
    let bad = text.replace(
        "      selectPolicy: Max\n      policies:\n        - type: Pods\n          value: 4",
        "      selectPolicy: Max\n      policies:\n        - type: Pods\n          valu: 4",
    );
    assert_ne!(bad, text);
    let err = manifest::parse_documents(&bad, "hpa.yaml").unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    let bad = text.replace("selectPolicy: Max", "selectPolicy: Maximum");
    let docs = manifest::parse_documents(&bad, "hpa.yaml").unwrap();
    let err = autoscaler_for(&docs, "agentscale-worker").unwrap_err();
    assert!(err.to_string().contains("Maximum"), "{err}");
}

fn trace() -> ArrivalTrace {
    ArrivalTrace::from_segments(&[seg(0, 900, 2.0), seg(900, 2700, 60.0), seg(2700, 5400, 5.0)]).unwrap()
}

#[test]
fn deterministic_and_conserving() {
    let cfg = SimConfig::default();
    let a = simulate(&trace(), &overlay("hpa"), &cfg).unwrap();
    let b = simulate(&trace(), &overlay("hpa"), &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.arrived, a.started + a.backlog_end);
    let other = simulate(&trace(), &overlay("hpa"), &SimConfig { seed: 7, ..cfg }).unwrap();
    assert_ne!(a.arrived, other.arrived, "the seed drives arrivals");
}

#[test]
fn run_length_and_per_task_stores_agree() {
    for o in ["hpa", "keda-redis"] {
        let s = overlay(o);
        let cfg = SimConfig::default();
        let fast = simulate_with(&trace(), &s, &cfg, RunLengthBacklog::default()).unwrap();
        let slow = simulate_with(&trace(), &s, &cfg, PerTaskBacklog::default()).unwrap();
        assert_eq!(fast, slow, "{o}");
    }
}

#[test]
fn hpa_scales_up_under_load_and_back_down_within_bounds() {
    let r = simulate(&trace(), &overlay("hpa"), &SimConfig::default()).unwrap();
    let max = r.samples.iter().map(|s| s.desired).max().unwrap();
    let min = r.samples.iter().map(|s| s.desired).min().unwrap();
    assert!(max > 2 && max <= 20, "max {max}");
    assert!(min >= 2, "min {min}");
    // 5 tasks/s x 4 s = 20 busy slots = 2.5 pods of 8: the fleet settles at 3-4.
    let end = r.samples.last().unwrap().desired;
    assert!((3..=4).contains(&end), "end {end}");
    assert!(r.events.iter().any(|e| e.to > e.from) && r.events.iter().any(|e| e.to < e.from));
}

#[test]
fn keda_scales_to_zero_and_back() {
    let t =
        ArrivalTrace::from_segments(&[seg(0, 600, 5.0), seg(600, 1800, 0.0), seg(1800, 2400, 5.0)]).unwrap();
    let cfg = SimConfig {
        initial_replicas: 0,
        ..SimConfig::default()
    };
    let r = simulate(&t, &overlay("keda-redis"), &cfg).unwrap();
    assert!(
        r.events.first().is_some_and(|e| e.from == 0 && e.to == 1),
        "{:?}",
        r.events.first()
    );
    assert!(
        r.events.iter().any(|e| e.to == 0),
        "scaled to zero in the idle gap"
    );
    assert_eq!(r.backlog_end + r.started, r.arrived);
    // The HPA alone never goes below minReplicas 2...
    let h = simulate(&t, &overlay("hpa"), &SimConfig::default()).unwrap();
    assert!(h.samples.iter().all(|s| s.desired >= 2));
    // ...and, as upstream, treats spec.replicas = 0 as "autoscaling disabled".
    let off = simulate(&t, &overlay("hpa"), &cfg).unwrap();
    assert!(off.events.is_empty() && off.started == 0);
    assert!(
        r.samples
            .iter()
            .filter(|s| (1500..1800).contains(&s.t))
            .all(|s| s.desired == 0),
        "zero replicas late in the idle gap"
    );
    assert!(
        r.samples.iter().any(|s| s.t > 1800 && s.desired > 0),
        "woken by the second wave"
    );
}

#[test]
fn partition_cap_limits_useful_replicas() {
    let t = ArrivalTrace::from_segments(&[seg(0, 1200, 40.0)]).unwrap();
    let capped = SimConfig {
        partitions: Some(2),
        ..SimConfig::default()
    };
    let a = simulate(&t, &Autoscaler::Fixed(10), &capped).unwrap();
    let b = simulate(&t, &Autoscaler::Fixed(10), &SimConfig::default()).unwrap();
    assert!(
        a.wait_p95_s > b.wait_p95_s,
        "{} vs {}",
        a.wait_p95_s,
        b.wait_p95_s
    );
}
