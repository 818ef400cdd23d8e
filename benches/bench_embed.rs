//! The in-process sentence embedder (`agentscale_state::candle`, all-MiniLM-L6-v2
//! on candle's CPU backend) against the same model served by the test Triton
//! (`minilm`: the NumPy forward pass of scripts/triton/minilm.py), measured in
//! the same run on the same texts.
//!
//! ```text
//! eval "$(AGENTSCALE_SERVICES=triton scripts/dev-services up)"
//! cargo run --release -p agentscale-benches --features candle --example bench_embed
//! ```
//! Env: AGENTSCALE_MINILM_DIR (required), AGENTSCALE_TRITON_URL (the
//! baseline; without it only ours is printed), BENCH_REPS (batches per point,
//! default 9).
//!
//! Two points: a batch of 32 short sentences (~15 tokens each) and a batch
//! of 8 long texts (truncated to 256 tokens). For each: the median wall time
//! of one `embed` call, and for ours also the CPU time (user+sys of this
//! process, /proc/self/stat) per batch — candle's matrix products use every
//! core, so CPU time is the cost on a loaded machine.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use agentscale_core::Embedder;
use agentscale_infer::{TritonClient, TritonEmbedder, TritonEmbedderConfig};
use agentscale_state::candle::{CandleEmbedder, CandleEmbedderConfig};

#[path = "common/proc_cpu.rs"]
mod proc_cpu;

/// user+sys CPU time of this process, in ms.
fn cpu_ms() -> f64 {
    proc_cpu::cpu_seconds("self").map_or(0.0, |(u, s)| (u + s) * 1e3)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median wall ms and CPU ms per `embed` call over `reps` calls (after one
/// warm-up call).
async fn measure(e: &dyn Embedder, texts: &[String], reps: usize) -> (f64, f64) {
    e.embed(texts).await.unwrap();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_ms());
        let v = e.embed(texts).await.unwrap();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(cpu_ms() - c);
        assert_eq!(v.len(), texts.len());
    }
    (median(wall), median(cpu))
}

#[tokio::main]
async fn main() {
    cpu_ms(); // asks the clock rate once, outside any measured window
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let config = CandleEmbedderConfig::from_env().expect("AGENTSCALE_MINILM_DIR is not set");
    let t = Instant::now();
    let ours = CandleEmbedder::load(config).await.unwrap();
    println!("load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let baseline = std::env::var("AGENTSCALE_TRITON_URL").ok().map(|url| {
        let client = TritonClient::builder(&url)
            .default_deadline(Duration::from_secs(120))
            .build()
            .unwrap();
        TritonEmbedder::new(client, TritonEmbedderConfig::default()).unwrap()
    });

    let short: Vec<String> = (0..32)
        .map(|i| format!("Sentence {i}: the central bank raised interest rates to fight inflation."))
        .collect();
    let long_text = (0..100)
        .map(|i| format!("clause {i} of a long document"))
        .collect::<Vec<_>>()
        .join(", ");
    let long: Vec<String> = (0..8).map(|i| format!("{i} {long_text}")).collect();

    for (name, texts) in [("batch32_short", &short), ("batch8_256tok", &long)] {
        let (wall, cpu) = measure(&ours, texts, reps).await;
        println!("{name}: candle {wall:.1} ms wall, {cpu:.0} ms CPU per batch");
        match &baseline {
            Some(b) => {
                let (bwall, _) = measure(b, texts, reps).await;
                println!(
                    "RESULT embed_{name}_ms ours={wall:.1} baseline=triton_minilm:{bwall:.1} ratio={:.2}",
                    wall / bwall
                );
            }
            None => println!("RESULT embed_{name}_ms ours={wall:.1}"),
        }
        println!("RESULT embed_{name}_cpu_ms ours={cpu:.0}");
    }
}
