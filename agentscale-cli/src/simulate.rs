//! `autoscale simulate`: an arrival trace through the HPA or KEDA
//! ScaledObject of a manifest file, on `agentscale_autoscale::sim`.

use std::path::{Path, PathBuf};

use agentscale_autoscale::manifest::{parse_documents, Object};
use agentscale_autoscale::queue::ArrivalTrace;
use agentscale_autoscale::sim::{simulate, Autoscaler, ServiceTime, SimConfig};
use agentscale_autoscale::{autoscaler_for, hpa::HpaSpec, keda::KedaSpec};
use clap::Args;
use serde_json::json;

use crate::render::{pairs, table};
use crate::{CliError, CliResult, Output};

/// Largest trace or manifest file read (8 MiB).
const MAX_FILE_BYTES: u64 = 8 << 20;

/// Arguments of `autoscale simulate`.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Arrival trace, CSV lines `start_s,end_s,rate` (contiguous from 0).
    #[arg(long)]
    trace: PathBuf,
    /// YAML with the HorizontalPodAutoscaler or KEDA ScaledObject (other
    /// kinds in the file are checked and ignored).
    #[arg(long)]
    hpa: PathBuf,
    /// The Deployment whose autoscaler to use, when the file has several.
    #[arg(long)]
    target: Option<String>,
    /// Handler slots per pod (the worker's concurrency).
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Mean task run time, seconds.
    #[arg(long, default_value_t = 4.0)]
    service_mean_s: f64,
    /// Run time standard deviation / mean.
    #[arg(long, default_value_t = 0.8)]
    service_cv: f64,
    /// Image pull + scheduling time of a new pod, seconds.
    #[arg(long, default_value_t = 20)]
    image_pull_s: u32,
    /// Model / client warm-up of a new pod, seconds.
    #[arg(long, default_value_t = 10)]
    model_load_s: u32,
    /// Kafka partitions (pods beyond this get no work).
    #[arg(long)]
    partitions: Option<u32>,
    /// Replicas at second 0.
    #[arg(long, default_value_t = 2)]
    initial_replicas: i32,
    /// RNG seed for arrivals and run times.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Time-series step in the JSON output, seconds.
    #[arg(long, default_value_t = 60)]
    sample_every_s: u32,
}

fn read(path: &Path, what: &str) -> CliResult<String> {
    let meta =
        std::fs::metadata(path).map_err(|e| CliError::Usage(format!("{what} {}: {e}", path.display())))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(CliError::Usage(format!(
            "{what} {}: {} bytes, at most {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{what} {}: {e}", path.display())))
}

fn bad(what: &str, path: &Path, e: agentscale_core::Error) -> CliError {
    CliError::Usage(format!("{what} {}: {e}", path.display()))
}

fn pick_autoscaler(args: &SimulateArgs) -> CliResult<Autoscaler> {
    let text = read(&args.hpa, "autoscaler file")?;
    let source = args.hpa.display().to_string();
    let docs = parse_documents(&text, &source).map_err(|e| bad("autoscaler file", &args.hpa, e))?;
    if let Some(target) = &args.target {
        return autoscaler_for(&docs, target).map_err(|e| bad("autoscaler file", &args.hpa, e));
    }
    let mut found = Vec::new();
    for d in &docs {
        match &d.object {
            Object::HorizontalPodAutoscaler(h) => found.push(Autoscaler::Hpa(
                HpaSpec::from_k8s(h).map_err(|e| bad("autoscaler file", &args.hpa, e))?,
            )),
            Object::ScaledObject(s) => found.push(Autoscaler::Keda(
                KedaSpec::from_scaled_object(s).map_err(|e| bad("autoscaler file", &args.hpa, e))?,
            )),
            _ => {}
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CliError::Usage(format!(
            "autoscaler file {}: no HorizontalPodAutoscaler or ScaledObject in it",
            args.hpa.display()
        ))),
        n => Err(CliError::Usage(format!(
            "autoscaler file {}: {n} autoscalers; choose one with --target <deployment>",
            args.hpa.display()
        ))),
    }
}

pub(crate) fn run(args: &SimulateArgs) -> CliResult<Output> {
    let trace_text = read(&args.trace, "trace")?;
    let trace = ArrivalTrace::parse_csv(&trace_text).map_err(|e| bad("trace", &args.trace, e))?;
    let scaler = pick_autoscaler(args)?;
    let cfg = SimConfig {
        concurrency: args.concurrency,
        service: ServiceTime {
            mean_s: args.service_mean_s,
            cv: args.service_cv,
        },
        image_pull_s: args.image_pull_s,
        model_load_s: args.model_load_s,
        partitions: args.partitions,
        initial_replicas: args.initial_replicas,
        seed: args.seed,
        sample_every_s: args.sample_every_s,
        ..SimConfig::default()
    };
    let r = simulate(&trace, &scaler, &cfg)?;
    let (kind, target, min, max) = match &scaler {
        Autoscaler::Hpa(h) => ("hpa", h.target.clone(), h.min_replicas, h.max_replicas),
        Autoscaler::Keda(k) => ("keda", k.target.clone(), k.min_replicas, k.max_replicas),
        Autoscaler::Fixed(n) => ("fixed", String::new(), *n, *n),
    };
    let peak = r.samples.iter().map(|s| s.desired).max().unwrap_or(0);
    let mut human = pairs(&[
        ("autoscaler", format!("{kind} → {target} ({min}..{max} replicas)")),
        ("simulated", format!("{} s", trace.len())),
        ("arrived", r.arrived.to_string()),
        ("started", r.started.to_string()),
        ("backlog at end", r.backlog_end.to_string()),
        ("backlog max", r.backlog_max.to_string()),
        (
            "queue wait p50/p95/p99",
            format!("{} s / {} s / {} s", r.wait_p50_s, r.wait_p95_s, r.wait_p99_s),
        ),
        ("pod-seconds", r.pod_seconds.to_string()),
        ("peak replicas", peak.to_string()),
        ("scale events", r.events.len().to_string()),
        ("flaps", r.flaps.to_string()),
    ]);
    if !r.events.is_empty() {
        human.push('\n');
        let rows: Vec<Vec<String>> = r
            .events
            .iter()
            .take(20)
            .map(|e| vec![e.t.to_string(), e.from.to_string(), e.to.to_string()])
            .collect();
        human.push_str(&table(&["T (s)", "FROM", "TO"], &rows));
        if r.events.len() > 20 {
            human.push_str(&format!("… {} more (see --json)\n", r.events.len() - 20));
        }
    }
    let json = json!({
        "autoscaler": kind,
        "target": target,
        "min_replicas": min,
        "max_replicas": max,
        "seconds": trace.len(),
        "arrived": r.arrived,
        "started": r.started,
        "backlog_end": r.backlog_end,
        "backlog_max": r.backlog_max,
        "wait_p50_s": r.wait_p50_s,
        "wait_p95_s": r.wait_p95_s,
        "wait_p99_s": r.wait_p99_s,
        "pod_seconds": r.pod_seconds,
        "flaps": r.flaps,
        "events": r.events.iter().map(|e| json!({"t": e.t, "from": e.from, "to": e.to})).collect::<Vec<_>>(),
        "samples": r.samples.iter().map(|s| json!({
            "t": s.t, "desired": s.desired, "ready": s.ready, "backlog": s.backlog,
            "in_flight": s.in_flight, "rate": s.rate,
        })).collect::<Vec<_>>(),
    });
    Ok(Output { human, json })
}
