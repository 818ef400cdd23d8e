//! The evaluation gate end to end: golden set on disk, a handler target, a
//! stored baseline, JSON + JUnit outputs, the exit code.

use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Embedder, Error, Handler, Output, Task, TaskContext};
use agentscale_rollout::eval::{run_gate, EvalConfig, GateRun, HandlerTarget};
use agentscale_rollout::golden::GoldenSet;
use agentscale_rollout::scorers::{Score, Scorer, ScorerRegistry};
use agentscale_state::local::HashEmbedder;
use async_trait::async_trait;
use serde_json::{json, Value};

const GOLDEN: &str = r#"{"id": "capital-fr", "input": {"q": "capital of France"}, "expected": "Paris", "scorer": "exact", "tags": ["geo"]}
{"id": "capital-it", "input": {"q": "capital of Italy"}, "expected": "Rome", "tags": ["geo"]}
{"id": "sum", "input": {"q": "sum", "a": 2, "b": 2.5}, "expected": 4.5, "scorer": {"name": "numeric", "tolerance": 0.01}, "weight": 2}
{"id": "greeting", "input": {"q": "greet"}, "expected": ["hello", "world"], "scorer": "contains"}
{"id": "order-id", "input": {"q": "order"}, "expected": "^ORD-\\d{4}$", "scorer": "regex"}
{"id": "profile", "input": {"q": "profile"}, "expected": {"/name": "Ada", "/langs/0": "en"}, "scorer": "json_fields"}
{"id": "profile-schema", "input": {"q": "profile"}, "expected": {"type": "object", "required": ["name", "langs"], "properties": {"langs": {"type": "array", "items": {"type": "string"}}}}, "scorer": "json_schema"}
{"id": "tone", "input": {"q": "tone"}, "expected": "a warm friendly welcome", "scorer": "embedding", "threshold": 0.95}
{"id": "polite", "input": {"q": "greet"}, "expected": null, "scorer": "politeness"}
"#;

/// A toy agent; `broken` makes it forget Italy's capital.
#[derive(Debug)]
struct Agent {
    broken: bool,
}

#[async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        let input: Value = task.payload_json()?;
        let out = match input["q"].as_str().unwrap_or_default() {
            "capital of France" => json!("Paris"),
            "capital of Italy" if self.broken => json!("Milan"),
            "capital of Italy" => json!("Rome"),
            "sum" => json!(input["a"].as_f64().unwrap_or(0.0) + input["b"].as_f64().unwrap_or(0.0)),
            "greet" => json!("hello world, please"),
            "order" => json!("ORD-1234"),
            "profile" => json!({"name": "Ada", "langs": ["en", "fr"]}),
            "tone" => json!("a warm friendly welcome"),
            _ => return Err(Error::invalid_input("unknown question")),
        };
        Output::json(&out)
    }
}

/// A user-defined scorer: 1 when the output says "please".
#[derive(Debug)]
struct Politeness;

#[async_trait]
impl Scorer for Politeness {
    async fn score(&self, _expected: &Value, actual: &Value) -> agentscale_core::Result<Score> {
        Ok(Score::new(if actual.to_string().contains("please") {
            1.0
        } else {
            0.0
        }))
    }
}

fn registry() -> ScorerRegistry {
    let embedder: Arc<dyn Embedder> = Arc::new(HashEmbedder::new(64).expect("embedder"));
    ScorerRegistry::new()
        .embedder(embedder)
        .register("politeness", Arc::new(Politeness))
        .expect("register")
}

#[tokio::test]
async fn a_regression_is_reported_by_name_and_fails_the_gate() {
    let dir = tempfile::tempdir().expect("tmp");
    let golden = dir.path().join("agent.jsonl");
    std::fs::write(&golden, GOLDEN).expect("write");
    let baseline = dir.path().join("baseline.json");
    let config = EvalConfig::builder()
        .concurrency(3)
        .case_timeout(Duration::from_secs(5))
        .build()
        .expect("config");

    // The good version passes and becomes the baseline.
    let good = HandlerTarget::new("ask", Agent { broken: false });
    let run = GateRun::new(&golden).json_out(&baseline).config(config.clone());
    let outcome = run_gate(&run, &registry(), &good).await.expect("gate");
    assert_eq!(outcome.report.total, 9);
    assert_eq!(outcome.report.passed, 9, "{:#?}", outcome.report.cases);
    assert_eq!(outcome.verdict.exit_code(), 0);
    assert!((outcome.report.weighted_score - 1.0).abs() < 1e-9);

    // The same version against the baseline: no regression, exit 0.
    let run = GateRun::new(&golden).baseline(&baseline).config(config.clone());
    let outcome = run_gate(&run, &registry(), &good).await.expect("gate");
    assert_eq!(outcome.comparison.as_ref().map(|c| c.regressions.len()), Some(0));
    assert_eq!(outcome.verdict.exit_code(), 0);

    // The broken version: one case regresses, by name; exit 1; reports written.
    let junit = dir.path().join("junit.xml");
    let json_out = dir.path().join("report.json");
    let bad = HandlerTarget::new("ask", Agent { broken: true });
    let run = GateRun::new(&golden)
        .baseline(&baseline)
        .junit_out(&junit)
        .json_out(&json_out)
        .config(config.clone());
    let outcome = run_gate(&run, &registry(), &bad).await.expect("gate");
    let regressions = outcome.comparison.expect("compared").regressions;
    assert_eq!(regressions.len(), 1);
    assert_eq!(regressions[0].id, "capital-it");
    assert_eq!((regressions[0].baseline_score, regressions[0].score), (1.0, 0.0));
    assert_eq!(outcome.verdict.exit_code(), 1);
    assert!(
        outcome.verdict.reasons.iter().any(|r| r.contains("capital-it")),
        "{:?}",
        outcome.verdict
    );
    // Pass rate and weighted score are kept apart: 8/9 vs (10 - 1) / 10.
    assert!((outcome.report.pass_rate - 8.0 / 9.0).abs() < 1e-9);
    assert!((outcome.report.weighted_score - 0.9).abs() < 1e-9);
    let xml = std::fs::read_to_string(&junit).expect("junit");
    assert!(xml.contains(r#"tests="9" failures="1""#), "{xml}");
    assert!(
        xml.contains(r#"name="capital-it""#) && xml.contains("<failure"),
        "{xml}"
    );
    assert!(std::fs::read_to_string(&json_out)
        .expect("json")
        .contains("\"capital-it\""));

    // A gate that tolerates one regression and a lower pass rate passes.
    let lenient = EvalConfig::builder()
        .max_regressions(1)
        .min_pass_rate(0.8)
        .build()
        .expect("config");
    let run = GateRun::new(&golden).baseline(&baseline).config(lenient);
    assert_eq!(
        run_gate(&run, &registry(), &bad)
            .await
            .expect("gate")
            .verdict
            .exit_code(),
        0
    );
}

#[tokio::test]
async fn bad_inputs_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let golden = dir.path().join("bad.jsonl");
    let target = HandlerTarget::new("ask", Agent { broken: false });
    for (text, want) in [
        (
            "{\"id\":\"a\",\"input\":1,\"expected\":1}\n{\"id\":\"b\",\"input\":1,\"expected\":1,\"scorer\":\"bleu\"}\n",
            "line 2, field `scorer`: unknown scorer \"bleu\"",
        ),
        ("{\"id\":\"a\",\"input\":1,\"expected\":1,\"weight\":-1}\n", "line 1, field `weight`"),
        ("{\"id\":\"a\",\"input\":1}\n", "line 1, field `expected`: missing"),
        ("{\"id\":\"a\",\"input\":1,\"expected\":1}\nnot json\n", "line 2: not valid JSON"),
    ] {
        std::fs::write(&golden, text).expect("write");
        let e = run_gate(&GateRun::new(&golden), &registry(), &target)
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
        assert!(e.to_string().contains(want), "{e} does not contain {want}");
    }
    // The embedding scorer without an embedder, directly through the loader.
    let e = GoldenSet::parse(
        "t",
        "{\"id\":\"a\",\"input\":1,\"expected\":\"x\",\"scorer\":\"embedding\"}",
        &ScorerRegistry::new(),
    )
    .expect_err("refused");
    assert_eq!((e.line, e.field.as_deref()), (1, Some("scorer")));
    // A missing baseline and a bad config are errors too.
    std::fs::write(&golden, "{\"id\":\"a\",\"input\":1,\"expected\":1}\n").expect("write");
    let run = GateRun::new(&golden).baseline(dir.path().join("missing.json"));
    assert!(run_gate(&run, &registry(), &target).await.is_err());
    assert!(EvalConfig::builder().concurrency(0).build().is_err());
    assert!(EvalConfig::builder().min_pass_rate(1.5).build().is_err());
}
