//! The evaluation gate as a CI step: run a golden set (JSONL) against the
//! agent, compare with a stored baseline, write JSON + JUnit XML, and exit
//! non-zero when the gate fails.
//!
//! ```text
//! # record a baseline from the current version
//! cargo run --example eval_gate -- --json-out target/eval-baseline.json
//! # gate a change: exits 1, naming the regressed case
//! cargo run --example eval_gate -- --baseline target/eval-baseline.json --junit-out target/eval.xml --broken
//! ```
//!
//! Copy this file into your CI tool: replace `Agent` with your handler (or
//! use `ClientTarget` to evaluate a deployed version through its queue).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentscale::rollout::eval::{run_gate, EvalConfig, GateRun, HandlerTarget};
use agentscale::rollout::scorers::ScorerRegistry;
use agentscale::worker::{Handler, TaskContext};
use agentscale::{json, Embedder, Error, HashEmbedder, JsonValue, Output, Task};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The golden set.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/agent.jsonl"))]
    golden: PathBuf,
    /// A stored baseline report to list regressions against.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Write this run's report (JSON; a future baseline) here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write JUnit XML here.
    #[arg(long)]
    junit_out: Option<PathBuf>,
    /// Least pass rate.
    #[arg(long, default_value_t = 1.0)]
    min_pass_rate: f64,
    /// Cases run at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Simulate a regression (the agent forgets Italy's capital).
    #[arg(long)]
    broken: bool,
}

#[derive(Debug)]
struct Agent {
    broken: bool,
}

#[agentscale::async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        let input: JsonValue = task.payload_json()?;
        let answer = match input["q"].as_str().unwrap_or_default() {
            "capital of France" => json!("Paris"),
            "capital of Italy" if self.broken => json!("Milan"),
            "capital of Italy" => json!("rome"),
            "sum" => json!(input["a"].as_f64().unwrap_or(0.0) + input["b"].as_f64().unwrap_or(0.0)),
            "greet" => json!("hello world"),
            "order" => json!("ORD-2041"),
            "profile" => json!({"name": "Ada", "langs": ["en", "fr"]}),
            "tone" => json!("a warm friendly welcome"),
            other => return Err(Error::invalid_input(format!("unknown question {other:?}"))),
        };
        Output::json(&answer)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match gate(args).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("eval gate error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn gate(args: Args) -> agentscale::Result<u8> {
    let embedder: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(256)?);
    let scorers = ScorerRegistry::new().embedder(embedder);
    let config = EvalConfig::builder()
        .concurrency(args.concurrency)
        .min_pass_rate(args.min_pass_rate)
        .build()?;
    let mut run = GateRun::new(&args.golden).config(config);
    if let Some(b) = args.baseline {
        run = run.baseline(b);
    }
    if let Some(p) = args.json_out {
        run = run.json_out(p);
    }
    if let Some(p) = args.junit_out {
        run = run.junit_out(p);
    }
    let target = HandlerTarget::new("ask", Agent { broken: args.broken });
    let outcome = run_gate(&run, &scorers, &target).await?;
    let r = &outcome.report;
    println!(
        "{}: {}/{} passed (pass rate {:.3}), weighted score {:.3}",
        r.suite, r.passed, r.total, r.pass_rate, r.weighted_score
    );
    for c in r.cases.iter().filter(|c| !c.passed) {
        println!(
            "  FAIL {} score {:.3} < {:.3}: {}",
            c.id,
            c.score,
            c.threshold,
            c.error.as_deref().or(c.note.as_deref()).unwrap_or("")
        );
    }
    if let Some(cmp) = &outcome.comparison {
        for reg in &cmp.regressions {
            println!(
                "  REGRESSION {}: {:.3} -> {:.3}",
                reg.id, reg.baseline_score, reg.score
            );
        }
    }
    if outcome.verdict.passed {
        println!("gate: PASSED");
    } else {
        println!("gate: FAILED ({})", outcome.verdict.reasons.join("; "));
    }
    Ok(outcome.verdict.exit_code())
}
