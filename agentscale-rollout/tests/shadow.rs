//! Shadow traffic on the in-memory backends, in virtual time; and the
//! rollout HTTP routes and metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::metrics::Metrics;
use agentscale_core::{Error, Handler, Output, ResultStore, Task, TaskContext, TaskId, TaskQueue, Worker};
use agentscale_queue::LocalQueue;
use agentscale_rollout::analysis::{AnalysisConfig, Condition, MetricCheck, MetricKind, Rollout};
use agentscale_rollout::canary::{Fleet, Router};
use agentscale_rollout::shadow::{Shadow, ShadowConfig};
use agentscale_state::local::LocalResultStore;
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

/// Answers `{"answer": n}`; the candidate answers odd multiples of 5
/// differently. Counts the shadow flag it sees.
#[derive(Debug, Default)]
struct Agent {
    candidate: bool,
    shadow_seen: AtomicU64,
    live_seen: AtomicU64,
}

#[async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        if cx.is_shadow() {
            self.shadow_seen.fetch_add(1, Ordering::Relaxed);
        } else {
            self.live_seen.fetch_add(1, Ordering::Relaxed);
        }
        let n: u64 = task.payload_json()?;
        let answer = if self.candidate && n % 10 == 5 { n + 1 } else { n };
        Output::json(&json!({ "answer": answer, "n": n }))
    }
}

struct Version {
    fleet: Fleet,
    agent: Arc<Agent>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

fn version(name: &str, candidate: bool, running: bool) -> Version {
    let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new(format!("agent-{name}")));
    let results: Arc<dyn ResultStore> = Arc::new(LocalResultStore::builder().build().expect("store"));
    let agent = Arc::new(Agent {
        candidate,
        ..Agent::default()
    });
    let worker = Worker::builder(queue.clone(), agent.clone())
        .concurrency(16)
        .results(results.clone())
        .build()
        .expect("worker");
    let fleet = Fleet::new(name, queue, results).worker(worker.stats());
    let (stop, mut rx) = watch::channel(!running);
    let worker = tokio::spawn(async move {
        if running {
            let _ = worker
                .run_until(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        }
    });
    Version {
        fleet,
        agent,
        stop,
        worker,
    }
}

async fn stop(v: Version) {
    let _ = v.stop.send(true);
    let _ = v.worker.await;
}

#[tokio::test(start_paused = true)]
async fn shadows_are_compared_discarded_and_flagged() {
    let prod = version("v1", false, true);
    let cand = version("v2", true, true);
    let config = ShadowConfig::builder()
        .fraction(1.0)
        .compare_timeout(Duration::from_secs(10))
        // On the test's runtime, whose clock is virtual.
        .own_thread(false)
        .build()
        .expect("config");
    let shadow = Shadow::start(prod.fleet.clone(), cand.fleet.clone(), config, None).expect("shadow");
    for n in 0..50u64 {
        let pending = shadow
            .submit(Task::json("ask", &n).expect("task"))
            .await
            .expect("submit");
        // The caller gets production's answer, never the candidate's.
        let out: Value = pending
            .output(Duration::from_secs(5))
            .await
            .expect("result")
            .parse_json()
            .expect("json");
        assert_eq!(out["answer"], n);
        // The shadow copy's result lives only in the candidate's store.
        let shadow_id = TaskId::new(format!("{}.shadow", pending.id()));
        assert!(prod.fleet.results().get(&shadow_id).await.expect("get").is_none());
    }
    let report = shadow.close().await;
    assert_eq!(
        (report.sampled, report.mirrored, report.dropped),
        (50, 50, 0),
        "{report:?}"
    );
    assert_eq!(report.compared, 50, "{report:?}");
    assert_eq!((report.matched, report.mismatched), (45, 5), "{report:?}");
    assert_eq!(cand.agent.shadow_seen.load(Ordering::Relaxed), 50);
    assert_eq!(cand.agent.live_seen.load(Ordering::Relaxed), 0);
    assert_eq!(prod.agent.shadow_seen.load(Ordering::Relaxed), 0);
    let window = cand.fleet.counters().snapshot();
    assert_eq!((window.requests, window.errors, window.scores), (50, 0, 50));
    let mean = window.mean_score().expect("scores");
    // 45 equal (1.0) and 5 that differ in 1 of 2 leaves (0.5): 47.5 / 50.
    assert!((mean - 0.95).abs() < 1e-6, "{mean}");
    stop(prod).await;
    stop(cand).await;
}

#[tokio::test(start_paused = true)]
async fn a_down_candidate_never_blocks_the_primary_and_drops_are_counted() {
    let prod = version("v1", false, true);
    let cand = version("v2", true, false); // its worker never runs
    let config = ShadowConfig::builder()
        .fraction(1.0)
        .buffer(1)
        .max_comparing(1)
        .compare_timeout(Duration::from_secs(10))
        // On the test's runtime, whose clock is virtual.
        .own_thread(false)
        .build()
        .expect("config");
    let shadow = Shadow::start(prod.fleet.clone(), cand.fleet.clone(), config, None).expect("shadow");
    let mut pendings = Vec::new();
    for n in 0..20u64 {
        pendings.push(
            shadow
                .submit(Task::json("ask", &n).expect("task"))
                .await
                .expect("submit"),
        );
    }
    for p in pendings {
        assert!(p
            .wait(Duration::from_secs(5))
            .await
            .expect("primary result")
            .outcome
            .is_completed());
    }
    let report = shadow.close().await;
    assert_eq!(report.sampled, 20);
    assert!(report.dropped >= 18, "{report:?}");
    assert_eq!(report.mirrored + report.dropped, 20, "{report:?}");
    assert_eq!(report.candidate_timeouts, report.mirrored, "{report:?}");
    // Timed-out shadows count as candidate errors for the analysis.
    assert_eq!(cand.fleet.counters().snapshot().errors, report.mirrored);

    let none = version("v3", true, true);
    let bare = Fleet::new("v4", none.fleet.queue().clone(), none.fleet.results().clone());
    let e = Shadow::start(prod.fleet.clone(), bare, ShadowConfig::default(), None).expect_err("refused");
    assert!(e.to_string().contains("no workers"), "{e}");
    assert!(ShadowConfig::builder().fraction(1.5).build().is_err());
    stop(prod).await;
    stop(cand).await;
    stop(none).await;
}

async fn get(app: &axum::Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test(start_paused = true)]
async fn decisions_are_served_as_json_and_metrics() {
    let a = version("v1", false, true);
    let b = version("v2", false, true);
    let router = Arc::new(
        Router::builder(a.fleet.clone(), b.fleet.clone())
            .build()
            .expect("router"),
    );
    let config = AnalysisConfig::builder()
        .step(20.0, Duration::from_secs(60))
        .step(100.0, Duration::ZERO)
        .metric(MetricCheck::new(MetricKind::ErrorRate, Condition::at_most(0.01)))
        .build()
        .expect("config");
    let rollout = Rollout::start("agent", router, config).expect("rollout");
    let metrics = Metrics::new();
    agentscale_rollout::http::register_metrics(&metrics, rollout.clone());
    let app = agentscale_rollout::http::routes(vec![rollout.clone()]);

    let (code, v) = get(&app, "GET", "/rollouts/agent/verdict").await;
    assert_eq!(
        (code, v["verdict"].clone(), v["weight"].clone()),
        (StatusCode::OK, Value::Null, json!(20.0))
    );
    // No traffic: inconclusive. Not a failure for the rollout webhook, not a
    // success for the promotion gate.
    rollout.analyze();
    let (code, v) = get(&app, "GET", "/rollouts/agent/verdict").await;
    assert_eq!(
        (code, v["verdict"].as_str()),
        (StatusCode::OK, Some("inconclusive"))
    );
    assert_eq!(get(&app, "POST", "/rollouts/agent/check").await.0, StatusCode::OK);
    assert_eq!(
        get(&app, "POST", "/rollouts/agent/gate").await.0,
        StatusCode::PRECONDITION_FAILED
    );
    let (code, v) = get(&app, "GET", "/rollouts/agent").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["decisions"][0]["action"], "pause");
    assert_eq!(v["status"]["phase"], "paused");
    assert_eq!(get(&app, "GET", "/rollouts/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(get(&app, "GET", "/rollouts").await.1[0]["name"], "agent");
    let text = metrics.encode();
    for line in [
        "agentscale_rollout_weight_percent{rollout=\"agent\"} 20",
        "agentscale_rollout_phase{rollout=\"agent\",phase=\"paused\"} 1",
        "agentscale_rollout_decisions_total{rollout=\"agent\",verdict=\"inconclusive\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    rollout.abort("by hand");
    assert_eq!(
        get(&app, "GET", "/rollouts/agent/check").await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(rollout.router().candidate_weight(), 0.0);
    stop(a).await;
    stop(b).await;
}

/// The default: the mirror loop and the comparisons on a thread of their own
/// (real time). Copies are still mirrored, compared and counted, and `close`
/// waits for the running comparisons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparisons_on_their_own_thread_are_counted_and_awaited_by_close() {
    let prod = version("v1", false, true);
    let cand = version("v2", true, true);
    let config = ShadowConfig::builder()
        .fraction(1.0)
        .compare_timeout(Duration::from_secs(30))
        .build()
        .expect("config");
    assert!(config.own_thread);
    let shadow = Shadow::start(prod.fleet.clone(), cand.fleet.clone(), config, None).expect("shadow");
    for n in 0..20u64 {
        let pending = shadow
            .submit(Task::json("ask", &n).expect("task"))
            .await
            .expect("submit");
        assert!(pending
            .wait(Duration::from_secs(30))
            .await
            .expect("primary result")
            .outcome
            .is_completed());
    }
    let report = shadow.close().await;
    assert_eq!(
        (report.sampled, report.mirrored, report.dropped),
        (20, 20, 0),
        "{report:?}"
    );
    assert_eq!(report.compared, 20, "{report:?}");
    assert_eq!(report.matched + report.mismatched, 20, "{report:?}");
    assert_eq!(cand.agent.shadow_seen.load(Ordering::Relaxed), 20);
    stop(prod).await;
    stop(cand).await;
}
