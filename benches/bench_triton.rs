//! perf_analyzer-style sweep of agentscale-infer against Triton, with NVIDIA's
//! Python `tritonclient` measured in the same run as the baseline.
//!
//! ```text
//! eval "$(scripts/dev-services up)"
//! cargo run --release -p agentscale-benches --example bench_triton
//! ```
//! Env: AGENTSCALE_TRITON_URL, AGENTSCALE_TRITON_PYTHON (from dev-services),
//! BENCH_SECS (seconds per point, default 4), BENCH_THREADS (client runtime
//! threads, default 1), BENCH_CONCS (comma-separated concurrencies, default
//! 1,4,16,64) and BENCH_PYTHON=0 (ours only, for profiling; no RESULT lines;
//! with BENCH_NOOP=0 also no no-op server run).
//!
//! For each concurrency 1/4/16/64: throughput, p50/p99 latency and client
//! CPU time per inference (user+sys of the client process / inferences, from
//! /proc/self/stat) of three clients doing the same work per call — build
//! the request (a 16-float input) anew, send it with a deadline, decode the
//! output to floats:
//! * ours: `TritonClient::infer`;
//! * `tonic_channel`: the same generated client on tonic's default
//!   `transport::Channel` (what a Rust user would write first);
//! * `python_tritonclient`: NVIDIA's Python client.
//!
//! Then ours and Python's against an in-process no-op
//! `GRPCInferenceService` (the client's own ceiling).
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_infer::pb;
use agentscale_infer::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use agentscale_infer::testing::NoopServer;
use agentscale_infer::{InferRequest, Tensor, TritonClient};
use hdrhistogram::Histogram;

/// The per-call deadline both Rust clients send.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default)]
struct Point {
    infer_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_infer: f64,
}

#[path = "common/proc_cpu.rs"]
mod proc_cpu;

/// (user, sys) CPU time of this process, in µs.
fn process_user_sys_us() -> (f64, f64) {
    proc_cpu::cpu_seconds("self").map_or((0.0, 0.0), |(u, s)| (u * 1e6, s * 1e6))
}

/// Which Rust client a run measures.
#[derive(Clone)]
enum Rust {
    Ours(TritonClient),
    Tonic(GrpcInferenceServiceClient<tonic::transport::Channel>),
}

impl Rust {
    fn ours(url: &str) -> Rust {
        Rust::Ours(TritonClient::new(url).expect("client"))
    }

    fn tonic(url: &str) -> Rust {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect_lazy();
        Rust::Tonic(
            GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    }

    /// One inference: build the request, send it, decode the output.
    async fn infer(&mut self, data: &[f32]) -> Vec<f32> {
        match self {
            Rust::Ours(client) => {
                let req = InferRequest::new("identity_fp32")
                    .input(Tensor::from_slice("INPUT0", data))
                    .deadline(DEADLINE);
                let r = client.infer(&req).await.expect("inference");
                r.output("OUTPUT0")
                    .expect("output")
                    .to_vec::<f32>()
                    .expect("fp32")
            }
            Rust::Tonic(client) => {
                let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                let msg = pb::ModelInferRequest {
                    model_name: "identity_fp32".into(),
                    inputs: vec![pb::model_infer_request::InferInputTensor {
                        name: "INPUT0".into(),
                        datatype: "FP32".into(),
                        shape: vec![data.len() as i64],
                        ..Default::default()
                    }],
                    raw_input_contents: vec![raw.into()],
                    ..Default::default()
                };
                let mut req = tonic::Request::new(msg);
                req.set_timeout(DEADLINE);
                let r = client.model_infer(req).await.expect("inference").into_inner();
                let i = r
                    .outputs
                    .iter()
                    .position(|o| o.name == "OUTPUT0")
                    .expect("output");
                r.raw_output_contents[i]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }
        }
    }
}

async fn run_rust(client: Rust, conc: usize, secs: f64) -> Point {
    let data: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let mut warm = client.clone();
    for _ in 0..20 {
        warm.infer(&data).await;
    }
    let (user0, sys0) = process_user_sys_us();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(secs);
    let data = Arc::new(data);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (mut client, data) = (client.clone(), Arc::clone(&data));
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                loop {
                    let s = Instant::now();
                    if s >= end {
                        return h;
                    }
                    let out = client.infer(&data).await;
                    debug_assert_eq!(out.len(), 16);
                    h.record(s.elapsed().as_micros() as u64).ok();
                }
            })
        })
        .collect();
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        h.add(t.await.expect("task")).ok();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (user1, sys1) = process_user_sys_us();
    let cpu = (user1 - user0) + (sys1 - sys0);
    let n = h.len() as f64;
    Point {
        infer_per_s: n / elapsed,
        p50_us: h.value_at_quantile(0.5) as f64,
        p99_us: h.value_at_quantile(0.99) as f64,
        cpu_us_per_infer: cpu / n.max(1.0),
    }
}

async fn run_python(python: &str, url: &str, conc: usize, secs: f64) -> Point {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/triton/bench_tritonclient.py"
    );
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(url)
        .arg(conc.to_string())
        .arg(secs.to_string())
        .output()
        .await
        .expect("run python baseline");
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        panic!(
            "python baseline failed: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Point {
        infer_per_s: f("infer_per_s"),
        p50_us: f("p50_us"),
        p99_us: f("p99_us"),
        cpu_us_per_infer: f("cpu_us_per_infer"),
    }
}

fn main() {
    // The client runs on a single-threaded runtime by default (one core does
    // all the client work; cross-thread wake-ups cost more CPU than they save
    // on this 2-core machine). BENCH_THREADS=N uses a multi-thread runtime.
    let threads: usize = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    println!("client runtime: {} thread(s)", threads.max(1));
    rt.block_on(run());
}

async fn run() {
    let url = std::env::var("AGENTSCALE_TRITON_URL")
        .expect("AGENTSCALE_TRITON_URL (eval \"$(scripts/dev-services up)\")");
    let python = std::env::var("AGENTSCALE_TRITON_PYTHON").expect("AGENTSCALE_TRITON_PYTHON");
    let secs: f64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let mut results = Vec::new();
    println!("Triton identity_fp32 (16 floats), {secs} s per point, server {url}");
    println!(
        "{:>5} | {:>29} | {:>29} | {:>29}",
        "conc", "ours", "tonic Channel", "python tritonclient"
    );
    println!(
        "{:>5} | {:>8} {:>6} {:>6} {:>6} | {:>8} {:>6} {:>6} {:>6} | {:>8} {:>6} {:>6} {:>6}",
        "",
        "inf/s",
        "p50µs",
        "p99µs",
        "cpuµs",
        "inf/s",
        "p50µs",
        "p99µs",
        "cpuµs",
        "inf/s",
        "p50µs",
        "p99µs",
        "cpuµs"
    );
    let concs: Vec<usize> = std::env::var("BENCH_CONCS")
        .ok()
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 64]);
    let with_python = std::env::var("BENCH_PYTHON").map_or(true, |v| v != "0");
    for conc in concs {
        let ours = run_rust(Rust::ours(&url), conc, secs).await;
        let tonic = run_rust(Rust::tonic(&url), conc, secs).await;
        let py = if with_python {
            run_python(&python, &url, conc, secs).await
        } else {
            Point::default()
        };
        let cell = |p: &Point| {
            format!(
                "{:>8.0} {:>6.0} {:>6.0} {:>6.1}",
                p.infer_per_s, p.p50_us, p.p99_us, p.cpu_us_per_infer
            )
        };
        println!("{conc:>5} | {} | {} | {}", cell(&ours), cell(&tonic), cell(&py));
        results.push((conc, ours, tonic, py));
    }
    if !with_python && std::env::var("BENCH_NOOP").is_ok_and(|v| v == "0") {
        return;
    }
    // Client ceiling: the clients against an in-process no-op server.
    let server = NoopServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("noop server");
    let noop_conc = 16;
    let ours_noop = run_rust(Rust::ours(&server.url()), noop_conc, secs).await;
    let tonic_noop = run_rust(Rust::tonic(&server.url()), noop_conc, secs).await;
    println!(
        "no-op server, concurrency {noop_conc} (CPU incl. the in-process server): ours {:.0} inf/s {:.1} µs CPU/inf, tonic Channel {:.0} inf/s {:.1} µs CPU/inf",
        ours_noop.infer_per_s, ours_noop.cpu_us_per_infer, tonic_noop.infer_per_s, tonic_noop.cpu_us_per_infer
    );
    if !with_python {
        return;
    }
    let py_noop = run_python(&python, &server.url(), noop_conc, secs).await;
    println!(
        "no-op server, concurrency {noop_conc}: python {:.0} inf/s ({:.1} µs CPU/inf)",
        py_noop.infer_per_s, py_noop.cpu_us_per_infer
    );
    for (conc, ours, _, py) in &results {
        result_line(
            &format!("triton_client_cpu_us_c{conc}"),
            ours.cpu_us_per_infer,
            "python_tritonclient",
            py.cpu_us_per_infer,
            1,
        );
    }
    for (conc, ours, tonic, _) in &results {
        result_line(
            &format!("triton_client_cpu_vs_tonic_c{conc}"),
            ours.cpu_us_per_infer,
            "tonic_channel",
            tonic.cpu_us_per_infer,
            1,
        );
    }
    for (conc, ours, _, py) in &results {
        result_line(
            &format!("triton_infer_per_s_c{conc}"),
            ours.infer_per_s,
            "python_tritonclient",
            py.infer_per_s,
            0,
        );
    }
    result_line(
        "triton_noop_server_infer_per_s",
        ours_noop.infer_per_s,
        "python_tritonclient",
        py_noop.infer_per_s,
        0,
    );
}

/// `RESULT <name> ours=… baseline=<baseline>:… ratio=…` with `decimals`
/// digits for the two values.
fn result_line(name: &str, ours: f64, baseline: &str, theirs: f64, decimals: usize) {
    println!(
        "RESULT {name} ours={ours:.decimals$} baseline={baseline}:{theirs:.decimals$} ratio={:.3}",
        ours / theirs.max(1e-9)
    );
}
