//! Simulates one day (86,400 one-second ticks) of a diurnal agent workload
//! under the shipped HPA overlay, with the default run-length backlog
//! (ours) and the straightforward per-task backlog (baseline: one queue
//! entry per task, every wait kept and sorted for the percentiles). Both do
//! the same simulation and must produce identical reports; 5 runs each,
//! median reported. Also prints the KEDA overlays' outcome on the same day.
//!
//! ```text
//! cargo run --release -p agentscale-autoscale --example bench_autoscale [-- --csv day.csv]
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use agentscale_autoscale::autoscaler_for;
use agentscale_autoscale::manifest;
use agentscale_autoscale::queue::{ArrivalTrace, PerTaskBacklog, RunLengthBacklog};
use agentscale_autoscale::sim::{simulate_with, Autoscaler, SimConfig, SimReport};

fn overlay(name: &str) -> Autoscaler {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/overlays")
        .join(name);
    autoscaler_for(&manifest::load_kustomization(dir).unwrap(), "agentscale-worker").unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn line(name: &str, r: &SimReport) {
    let peak = r.samples.iter().map(|s| s.desired).max().unwrap_or(0);
    println!(
        "{name:<16} tasks {:>9}  wait p50/p95/p99 {:>3}/{:>3}/{:>3} s  backlog max {:>6}  pod-hours {:>7.1}  peak {:>2}  scale events {:>4}  flaps {:>3}",
        r.arrived, r.wait_p50_s, r.wait_p95_s, r.wait_p99_s, r.backlog_max,
        r.pod_seconds as f64 / 3600.0, peak, r.events.len(), r.flaps
    );
}

fn main() {
    let csv = std::env::args().skip_while(|a| a != "--csv").nth(1);
    let trace = ArrivalTrace::diurnal_day(15.0);
    let cfg = SimConfig::default();
    let hpa = overlay("hpa");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut reports = None;
    for _ in 0..5 {
        let t = Instant::now();
        let a = simulate_with(&trace, &hpa, &cfg, RunLengthBacklog::default()).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let b = simulate_with(&trace, &hpa, &cfg, PerTaskBacklog::default()).unwrap();
        base.push(t.elapsed().as_secs_f64());
        assert_eq!(a, b, "both stores must give the same report");
        reports = Some(a);
    }
    let r = reports.unwrap();
    println!(
        "one day, diurnal trace peaking at 15 tasks/s (x2.5 burst at 14:00), 8 slots/pod, 4 s mean service"
    );
    line("hpa", &r);
    for o in ["keda-redis", "keda-prometheus"] {
        let k = simulate_with(&trace, &overlay(o), &cfg, RunLengthBacklog::default()).unwrap();
        line(o, &k);
    }
    line(
        "fixed-20",
        &simulate_with(&trace, &Autoscaler::Fixed(20), &cfg, RunLengthBacklog::default()).unwrap(),
    );
    if let Some(path) = csv {
        let mut out = String::from("t,rate,desired,ready,backlog,in_flight\n");
        for s in &r.samples {
            out.push_str(&format!(
                "{},{},{},{},{},{}\n",
                s.t, s.rate, s.desired, s.ready, s.backlog, s.in_flight
            ));
        }
        std::fs::write(&path, out).unwrap();
        println!("wrote {path}");
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "RESULT autoscale_sim_day_s ours={o:.3} baseline=per_task_backlog:{b:.3} ratio={:.2}",
        b / o
    );
}
