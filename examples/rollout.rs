//! Shipping agent versions safely, on the in-memory backends: a stable
//! version and candidates each with their own queue, result store and
//! worker; shadow traffic to a candidate; then a canary of a bad candidate
//! (rolled back) and of a good one (promoted), printing every decision.
//!
//! ```text
//! cargo run --release --example rollout
//! ```
//!
//! In production each version is its own Deployment with its own queue
//! (`RedisQueue`/`KafkaQueue`) and the router runs in the API gateway;
//! `agentscale::rollout::http::serve` exposes the decisions to Argo
//! Rollouts / Flagger (see `docs/rollout.md`).
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale::queue::LocalQueue;
use agentscale::rollout::analysis::{AnalysisConfig, Condition, Decision, MetricCheck, MetricKind, Rollout};
use agentscale::rollout::canary::{Fleet, Router};
use agentscale::rollout::shadow::{Shadow, ShadowConfig};
use agentscale::state::local::LocalResultStore;
use agentscale::worker::{Handler, TaskContext, Worker};
use agentscale::{json, Error, JsonValue, Output, ResultStore, Task, TaskQueue};
use tokio::sync::watch;

/// One agent version: answers `{"answer": 2n}` after `work`, fails every
/// `fail_every`-th call, and stubs its side effect (a notification) when
/// it runs a shadow copy.
#[derive(Debug)]
struct Agent {
    work: Duration,
    fail_every: u64,
    calls: AtomicU64,
    notifications_sent: AtomicU64,
    notifications_stubbed: AtomicU64,
}

#[agentscale::async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let input: JsonValue = task.payload_json()?;
        tokio::time::sleep(self.work).await;
        if n.checked_rem(self.fail_every) == Some(0) {
            return Err(Error::invalid_input("the model returned garbage"));
        }
        // A tool with a side effect: never really called for a shadow copy.
        if cx.is_shadow() {
            self.notifications_stubbed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.notifications_sent.fetch_add(1, Ordering::Relaxed);
        }
        let q = input["q"].as_u64().unwrap_or(0);
        Output::json(&json!({ "answer": q * 2 }))
    }
}

struct Version {
    fleet: Fleet,
    agent: Arc<Agent>,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

fn version(name: &str, work_ms: u64, fail_every: u64) -> agentscale::Result<Version> {
    let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new(format!("agent-{name}")));
    let results: Arc<dyn ResultStore> = Arc::new(LocalResultStore::builder().build()?);
    let agent = Arc::new(Agent {
        work: Duration::from_millis(work_ms),
        fail_every,
        calls: AtomicU64::new(0),
        notifications_sent: AtomicU64::new(0),
        notifications_stubbed: AtomicU64::new(0),
    });
    let worker = Worker::builder(queue.clone(), agent.clone())
        .concurrency(64)
        .results(results.clone())
        .name(name)
        .build()?;
    let fleet = Fleet::new(name, queue, results).worker(worker.stats());
    let (stop, mut rx) = watch::channel(false);
    let worker = tokio::spawn(async move {
        let _ = worker
            .run_until(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(Version {
        fleet,
        agent,
        stop,
        worker,
    })
}

async fn shut(v: Version) {
    let _ = v.stop.send(true);
    let _ = v.worker.await;
}

/// 16 users sending requests in a loop, each in its own session, until
/// `stop` is set.
fn traffic(router: Arc<Router>, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16u64)
        .map(|user| {
            let (router, stop) = (router.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let Ok(task) = Task::json("ask", &json!({ "q": i })) else {
                        break;
                    };
                    let task = task.with_session(format!("user-{user}-{}", i / 20));
                    if let Ok(routed) = router.submit(task).await {
                        let _ = routed.wait(Duration::from_secs(5)).await;
                    }
                }
            })
        })
        .collect()
}

fn print_decision(d: &Decision) {
    let m: Vec<String> = d
        .measurements
        .iter()
        .map(|m| match m.value {
            Some(v) => format!(
                "{}={v:.4} (n={}, {})",
                m.metric.as_str(),
                m.samples,
                m.verdict.as_str()
            ),
            None => format!(
                "{}=- (n={}, {})",
                m.metric.as_str(),
                m.samples,
                m.verdict.as_str()
            ),
        })
        .collect();
    println!(
        "  #{:<2} step {} weight {:>5.1}% -> {:>5.1}%  {:<12} {:?}: {}  [{}]",
        d.seq,
        d.step + 1,
        d.weight_before,
        d.weight_after,
        d.verdict.as_str(),
        d.action,
        d.reason,
        m.join(", ")
    );
}

async fn canary(name: &str, stable: &Version, candidate: &Version) -> agentscale::Result<()> {
    let router = Arc::new(Router::builder(stable.fleet.clone(), candidate.fleet.clone()).build()?);
    let interval = Duration::from_millis(500);
    let analysis = AnalysisConfig::builder()
        .interval(interval)
        .step(10.0, Duration::from_secs(1))
        .step(50.0, Duration::from_secs(1))
        .step(100.0, Duration::ZERO)
        .metric(
            MetricCheck::new(MetricKind::ErrorRateOverStable, Condition::at_most(0.01))
                .failure(Condition::above(0.02)),
        )
        .metric(
            MetricCheck::new(MetricKind::P95LatencyRatio, Condition::at_most(1.5))
                .failure(Condition::above(3.0)),
        )
        .failure_limit(1)
        .min_samples(50)
        .build()?;
    let rollout = Rollout::start(name, router.clone(), analysis)?;
    let http = agentscale::rollout::http::serve("127.0.0.1:0", vec![rollout.clone()]).await?;
    println!(
        "canary {name}: {} -> {} (decisions on http://{}/rollouts/{name})",
        stable.fleet.version(),
        candidate.fleet.version(),
        http.local_addr()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let users = traffic(router.clone(), stop.clone());
    // The loop `Rollout::run_until` runs, spelled out to print each decision.
    for _ in 0..60 {
        tokio::time::sleep(interval).await;
        let Some(d) = rollout.analyze() else { break };
        print_decision(&d);
        if d.phase.is_terminal() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for u in users {
        let _ = u.await;
    }
    let s = rollout.status();
    println!(
        "  => {} (candidate weight {}%, {} failed interval(s))\n",
        s.phase.as_str(),
        s.weight,
        s.failures
    );
    http.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> agentscale::Result<()> {
    let stable = version("v1", 5, 200)?; // 0.5 % errors
    let bad = version("v2", 5, 20)?; // 5 % errors
    let good = version("v3", 5, 200)?; // like stable

    // 1. Shadow: mirror half of the live tasks to v2; its answers are
    //    compared and discarded; its side effects are stubbed.
    let shadow = Shadow::start(
        stable.fleet.clone(),
        bad.fleet.clone(),
        ShadowConfig::builder().fraction(0.5).build()?,
        None,
    )?;
    for i in 0..400u64 {
        let pending = shadow.submit(Task::json("ask", &json!({ "q": i }))?).await?;
        let _ = pending.wait(Duration::from_secs(5)).await;
    }
    let report = shadow.close().await;
    println!(
        "shadow v1 -> v2: sampled {}, mirrored {}, dropped {}, compared {}, matched {}, mismatched {} (candidate errors {})",
        report.sampled,
        report.mirrored,
        report.dropped,
        report.compared,
        report.matched,
        report.mismatched,
        report.candidate_errors
    );
    println!(
        "  v2 side effects: {} sent, {} stubbed in shadow mode\n",
        bad.agent.notifications_sent.load(Ordering::Relaxed),
        bad.agent.notifications_stubbed.load(Ordering::Relaxed)
    );

    // 2. Canary the bad candidate: rolled back.
    canary("agent-v2", &stable, &bad).await?;
    // 3. Canary the good candidate: promoted.
    canary("agent-v3", &stable, &good).await?;

    shut(stable).await;
    shut(bad).await;
    shut(good).await;
    Ok(())
}
