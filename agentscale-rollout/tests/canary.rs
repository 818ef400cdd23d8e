//! Canary analysis end to end on the in-memory backends, in virtual time:
//! real workers per version, the router, and the analysis loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, Handler, Output, ResultStore, Task, TaskContext, TaskQueue, Worker};
use agentscale_queue::LocalQueue;
use agentscale_rollout::analysis::{
    Action, AnalysisConfig, Condition, MetricCheck, MetricKind, Phase, Rollout, Verdict,
};
use agentscale_rollout::canary::{Fleet, Router, Side};
use agentscale_state::local::LocalResultStore;
use async_trait::async_trait;
use tokio::sync::watch;

const INTERVAL: Duration = Duration::from_secs(60);

/// Fails every `fail_every`-th call (non-retryable, so it dead-letters at
/// once): an exact, deterministic error rate.
#[derive(Debug)]
struct Agent {
    fail_every: u64,
    calls: AtomicU64,
}

#[async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if n.checked_rem(self.fail_every) == Some(0) {
            return Err(Error::invalid_input("injected failure"));
        }
        Ok(Output::bytes(task.payload.clone()))
    }
}

struct Version {
    fleet: Fleet,
    stop: watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

fn version(name: &str, fail_every: u64, with_worker: bool) -> Version {
    let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new(format!("agent-{name}")));
    let results: Arc<dyn ResultStore> = Arc::new(LocalResultStore::builder().build().expect("store"));
    let agent = Agent {
        fail_every,
        calls: AtomicU64::new(0),
    };
    let worker = Worker::builder(queue.clone(), agent)
        .concurrency(64)
        .results(results.clone())
        .name(name)
        .build()
        .expect("worker");
    let mut fleet = Fleet::new(name, queue, results);
    if with_worker {
        fleet = fleet.worker(worker.stats());
    }
    let (stop, mut rx) = watch::channel(false);
    let worker = tokio::spawn(async move {
        let _ = worker
            .run_until(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
    });
    Version { fleet, stop, worker }
}

async fn stop(v: Version) {
    let _ = v.stop.send(true);
    let _ = v.worker.await;
}

fn analysis() -> AnalysisConfig {
    AnalysisConfig::builder()
        .interval(INTERVAL)
        .step(10.0, INTERVAL)
        .step(50.0, INTERVAL)
        .step(100.0, Duration::ZERO)
        .metric(
            MetricCheck::new(MetricKind::ErrorRateOverStable, Condition::at_most(0.01))
                .failure(Condition::above(0.02)),
        )
        .failure_limit(1)
        .min_samples(20)
        .build()
        .expect("config")
}

/// Sends `per_interval` requests (one session each) in the middle of every
/// interval, until `rounds` intervals passed.
async fn traffic(router: Arc<Router>, per_interval: usize, rounds: u32, sent: Arc<[AtomicU64; 2]>) {
    tokio::time::sleep(INTERVAL / 2).await;
    for round in 0..rounds {
        let calls = (0..per_interval).map(|i| {
            let router = router.clone();
            async move {
                let task = Task::new("ask", format!("q{i}")).with_session(format!("s{round}-{i}"));
                let routed = router.submit(task).await.expect("submit");
                let side = routed.side();
                let _ = routed.wait(Duration::from_secs(30)).await;
                side
            }
        });
        for side in futures::future::join_all(calls).await {
            sent[usize::from(side == Side::Candidate)].fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

async fn run(
    candidate_fail_every: u64,
    per_interval: usize,
    intervals: u32,
) -> (Arc<Rollout>, Phase, [u64; 2]) {
    let stable = version("v1", 200, true);
    let candidate = version("v2", candidate_fail_every, true);
    let router = Arc::new(
        Router::builder(stable.fleet.clone(), candidate.fleet.clone())
            .build()
            .expect("router"),
    );
    let rollout = Rollout::start("agent", router.clone(), analysis()).expect("start");
    let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let driver = tokio::spawn(traffic(router, per_interval, intervals, sent.clone()));
    let phase = rollout
        .run_until(tokio::time::sleep(INTERVAL * intervals + INTERVAL / 4))
        .await;
    driver.abort();
    let _ = driver.await;
    let sent = [sent[0].load(Ordering::Relaxed), sent[1].load(Ordering::Relaxed)];
    stop(stable).await;
    stop(candidate).await;
    (rollout, phase, sent)
}

#[tokio::test(start_paused = true)]
async fn a_candidate_with_5_percent_errors_is_rolled_back_within_three_intervals() {
    let (rollout, phase, _) = run(20, 1000, 10).await;
    let decisions = rollout.decisions();
    assert_eq!(phase, Phase::RolledBack, "{decisions:#?}");
    let last = decisions.last().expect("a decision");
    assert!(
        last.seq <= 3,
        "rolled back only after {} intervals: {decisions:#?}",
        last.seq
    );
    assert_eq!(last.action, Action::Rollback);
    assert_eq!(last.weight_after, 0.0);
    assert_eq!(rollout.router().candidate_weight(), 0.0);
    assert!(
        decisions.iter().all(|d| d.verdict == Verdict::Failed),
        "{decisions:#?}"
    );
    // After the rollback every new session goes to stable.
    for i in 0..1000 {
        let t = Task::new("ask", "x").with_session(format!("after-{i}"));
        assert_eq!(rollout.router().route(&t), Side::Stable);
    }
}

#[tokio::test(start_paused = true)]
async fn a_candidate_equal_to_stable_is_promoted() {
    let (rollout, phase, sent) = run(200, 1000, 10).await;
    let decisions = rollout.decisions();
    assert_eq!(phase, Phase::Promoted, "{decisions:#?}");
    assert_eq!(rollout.router().candidate_weight(), 100.0);
    let actions: Vec<Action> = decisions.iter().map(|d| d.action).collect();
    assert_eq!(
        actions,
        [Action::Advance, Action::Advance, Action::Promote],
        "{decisions:#?}"
    );
    assert!(sent[1] > 0 && sent[0] > 0, "{sent:?}");
    let weights: Vec<f64> = decisions.iter().map(|d| d.weight_after).collect();
    assert_eq!(weights, [50.0, 100.0, 100.0]);
}

#[tokio::test(start_paused = true)]
async fn a_candidate_without_traffic_stays_inconclusive() {
    let (rollout, phase, _) = run(20, 0, 8).await;
    let decisions = rollout.decisions();
    assert_eq!(phase, Phase::Paused, "{decisions:#?}");
    assert_eq!(decisions.len(), 8);
    for d in &decisions {
        assert_eq!(
            (d.verdict, d.action),
            (Verdict::Inconclusive, Action::Pause),
            "{d:#?}"
        );
        assert!(d.measurements[0].reason.contains("sample"), "{d:#?}");
    }
    // Neither promoted nor rolled back: still on the first step.
    assert_eq!(rollout.router().candidate_weight(), 10.0);
    assert_eq!(rollout.status().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn sessions_stick_and_bad_inputs_are_typed_errors() {
    let stable = version("v1", 0, true);
    let candidate = version("v2", 0, true);
    let no_workers = version("v3", 0, false);

    let e = Router::builder(stable.fleet.clone(), candidate.fleet.clone())
        .weights(90, 5)
        .build()
        .expect_err("weights refused");
    assert!(e.to_string().contains("sum to 100"), "{e}");
    let e = Router::builder(stable.fleet.clone(), no_workers.fleet.clone())
        .build()
        .expect_err("no workers refused");
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.to_string().contains("no workers"),
        "{e}"
    );

    let router = Arc::new(
        Router::builder(stable.fleet.clone(), candidate.fleet.clone())
            .weights(80, 20)
            .build()
            .expect("router"),
    );
    let mut never_100 = analysis();
    never_100.steps = vec![agentscale_rollout::analysis::Step::new(20.0, INTERVAL)];
    let e = Rollout::start("x", router.clone(), never_100).expect_err("refused");
    assert!(e.to_string().contains("never reaches 100"), "{e}");
    // Refused before anything moved.
    assert_eq!(router.candidate_weight(), 20.0);

    // Stickiness: a session keeps its side while the weight holds, and a
    // raise only moves stable sessions over.
    let tasks: Vec<Task> = (0..2000)
        .map(|i| Task::new("k", "x").with_session(format!("user-{}", i % 500)))
        .collect();
    let at20: Vec<Side> = tasks.iter().map(|t| router.route(t)).collect();
    for (t, s) in tasks.iter().zip(&at20) {
        let again = Task::new("k", "y").with_session(t.session_id.clone().unwrap_or_default());
        assert_eq!(router.route(&again), *s);
    }
    let share = at20.iter().filter(|s| **s == Side::Candidate).count() as f64 / at20.len() as f64;
    assert!((0.14..0.26).contains(&share), "{share}");
    router.set_candidate_weight(50.0).expect("weight");
    for (t, before) in tasks.iter().zip(&at20) {
        if *before == Side::Candidate {
            assert_eq!(router.route(t), Side::Candidate);
        }
    }
    assert!(router.set_candidate_weight(101.0).is_err());
    stop(stable).await;
    stop(candidate).await;
    stop(no_workers).await;
}
