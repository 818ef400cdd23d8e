//! Conformance suite for task results, request/response and fan-out /
//! fan-in, run on every combination of queue backend (local, Redis, Kafka)
//! and state backend (local, Redis).
//!
//! A combination runs the whole suite with one line and its own `setup`:
//!
//! ```text
//! async fn setup(name: String) -> Option<Backends> { ... }
//! agentscale_tests::orchestration_conformance!(setup);
//! ```
//!
//! `setup` builds two fresh queues (coordinators and continuations on
//! `main`, children on `specialists`) and fresh result and join stores, all
//! in the random namespace `name`; it returns `None` to skip when a service
//! is not configured ([`crate::service_env`], which fails under `CI=true`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::join::{ChildStatus, Decision, JoinPolicy, Slot};
use agentscale_core::results::{Client, TaskOutcome};
use agentscale_core::worker::{Backoff, Handler, TaskContext, Worker};
use agentscale_core::{
    Error, ErrorKind, JoinId, JoinStore, Orchestrator, Output, ResultStore, Task, TaskId, TaskQueue,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// Longest a check runs before it fails (a hang is a failure).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a check waits for a result it expects.
pub const WAIT: Duration = Duration::from_secs(60);
/// Result size limit the stores are built with.
pub const SUITE_MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// The backends of one check.
pub struct Backends {
    /// Coordinators and continuations.
    pub main: Arc<dyn TaskQueue>,
    /// Children.
    pub specialists: Arc<dyn TaskQueue>,
    /// Result store (built with [`SUITE_MAX_OUTPUT_BYTES`]).
    pub results: Arc<dyn ResultStore>,
    /// Join store.
    pub joins: Arc<dyn JoinStore>,
    /// Runs after the check, pass or fail.
    pub cleanup: Option<BoxFuture<'static, ()>>,
}

/// A child in a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Label (unique in the plan).
    pub label: String,
    /// Kind: `echo`, `fail`, `hang`, `plan`.
    pub kind: String,
    /// Payload.
    pub payload: serde_json::Value,
}

/// What a `plan` task fans out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// `all`, `first` or `quorum:<k>`.
    pub policy: String,
    /// Deadline in ms from the fan-out.
    pub deadline_ms: Option<u64>,
    /// Children.
    pub steps: Vec<Step>,
}

/// What a `gather` continuation returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gathered {
    /// The decision.
    pub decision: String,
    /// `(label, status, output)`, status one of ok/failed/timed_out.
    pub children: Vec<(String, String, serde_json::Value)>,
}

/// The handler every worker of the suite runs.
#[derive(Debug)]
pub struct Agent {
    orch: Arc<Orchestrator>,
    main: String,
    specialists: String,
    /// Hanging children that saw `is_cancelled`.
    pub saw_cancel: AtomicU64,
    /// Continuation runs.
    pub gathers: AtomicU64,
}

fn policy(p: &str) -> JoinPolicy {
    match p {
        "first" => JoinPolicy::FirstSuccess,
        p if p.starts_with("quorum:") => JoinPolicy::Quorum(p[7..].parse().unwrap_or(1)),
        _ => JoinPolicy::All,
    }
}

#[async_trait::async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        match task.kind.as_str() {
            "echo" => Ok(Output::bytes(task.payload.clone())),
            "fail" => Err(Error::invalid_input("this child always fails")),
            "big" => Ok(Output::bytes(vec![b'x'; SUITE_MAX_OUTPUT_BYTES + 1])),
            "hang" => {
                // Works until its join is decided without it (or the timeout).
                while !cx.is_cancelled() {
                    if cx.remaining().is_zero() {
                        return Err(Error::handler("never cancelled"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.saw_cancel.fetch_add(1, Ordering::SeqCst);
                Err(Error::handler("cancelled"))
            }
            "plan" => {
                let plan: Plan = task.payload_json()?;
                let mut f = self.orch.fan_out(task, policy(&plan.policy));
                if let Some(d) = plan.deadline_ms {
                    f = f.deadline(Duration::from_millis(d));
                }
                for s in plan.steps {
                    let kind = if s.kind == "plan" { "plan" } else { s.kind.as_str() };
                    let child = Task::json(kind, &s.payload)?.with_max_attempts(2);
                    // Nested plans coordinate from the main queue.
                    let queue = if kind == "plan" { "main" } else { "specialists" };
                    let queue = self.queue_name(queue);
                    f = f.child(s.label, queue, child);
                }
                let main = self.queue_name("main");
                Ok(f.then(main, Task::new("gather", ""))
                    .submit()
                    .await?
                    .into_output())
            }
            "gather" => {
                self.gathers.fetch_add(1, Ordering::SeqCst);
                let join = self.orch.join_of(task).await?;
                let children = join
                    .children
                    .iter()
                    .map(|c| {
                        let (status, out) = match &c.status {
                            ChildStatus::Ok(o) => (
                                "ok",
                                o.parse_json::<serde_json::Value>()
                                    .unwrap_or(serde_json::Value::Null),
                            ),
                            ChildStatus::Failed(r) => ("failed", serde_json::Value::String(r.clone())),
                            ChildStatus::TimedOut => ("timed_out", serde_json::Value::Null),
                            ChildStatus::Pending => ("pending", serde_json::Value::Null),
                        };
                        (c.label.clone(), status.to_string(), out)
                    })
                    .collect();
                let decision = join.decision.map(|d| d.as_str()).unwrap_or("open").to_string();
                Output::json(&Gathered { decision, children })
            }
            other => Err(Error::invalid_input(format!("unknown kind {other}"))),
        }
    }
}

impl Agent {
    fn queue_name(&self, role: &str) -> String {
        if role == "main" {
            self.main.clone()
        } else {
            self.specialists.clone()
        }
    }
}

/// A running pair of workers (main and specialists) over one fixture.
pub struct Harness {
    /// The backends.
    pub b: Backends,
    /// The orchestrator.
    pub orch: Arc<Orchestrator>,
    /// The handler (for its counters).
    pub agent: Arc<Agent>,
    /// The request/response client on the main queue.
    pub client: Client,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// One orchestrator over both queues, by their real names.
fn orchestrator(b: &Backends) -> Arc<Orchestrator> {
    Arc::new(
        Orchestrator::builder(b.results.clone(), b.joins.clone())
            .queue(b.main.clone())
            .queue(b.specialists.clone())
            .build()
            .expect("orchestrator"),
    )
}

impl Harness {
    /// Starts a worker on each queue with the orchestrator.
    pub fn start(b: Backends) -> Harness {
        let orch = orchestrator(&b);
        let agent = Arc::new(Agent {
            orch: orch.clone(),
            main: b.main.name().to_owned(),
            specialists: b.specialists.name().to_owned(),
            saw_cancel: AtomicU64::new(0),
            gathers: AtomicU64::new(0),
        });
        let (stop, rx) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for q in [b.main.clone(), b.specialists.clone()] {
            let w = Worker::builder(q, agent.clone())
                .concurrency(16)
                .backoff(Backoff::exponential(
                    Duration::from_millis(10),
                    Duration::from_millis(50),
                ))
                .task_timeout(Duration::from_secs(60))
                .poll_wait(Duration::from_millis(200))
                .grace_period(Duration::from_secs(5))
                .orchestrator(orch.clone())
                .build()
                .expect("worker");
            let mut rx = rx.clone();
            workers.push(tokio::spawn(async move {
                let _ = w
                    .run_until(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        let client = Client::new(b.main.clone(), b.results.clone());
        Harness {
            b,
            orch,
            agent,
            client,
            stop,
            workers,
        }
    }

    /// Stops the workers and runs the cleanup.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for w in self.workers.drain(..) {
            let _ = w.await;
        }
        if let Some(c) = self.b.cleanup.take() {
            c.await;
        }
    }

    /// Submits a plan and awaits the gathered result of the coordinator.
    pub async fn run_plan(&self, plan: &Plan) -> Gathered {
        let task = Task::json("plan", plan).expect("plan task");
        let pending = self.client.submit(task).await.expect("submit");
        let out = pending.output(WAIT).await.expect("coordinator result");
        out.parse_json().expect("gathered")
    }
}

fn step(label: &str, kind: &str, payload: serde_json::Value) -> Step {
    Step {
        label: label.into(),
        kind: kind.into(),
        payload,
    }
}

fn statuses(g: &Gathered) -> Vec<(&str, &str)> {
    g.children
        .iter()
        .map(|(l, s, _)| (l.as_str(), s.as_str()))
        .collect()
}

/// Runs one check against fresh backends from `setup`, with a hang guard;
/// the cleanup runs pass or fail.
pub async fn run<S, Fut, C, CF>(check_name: &str, setup: S, check: C)
where
    S: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Option<Backends>>,
    C: FnOnce(Harness) -> CF,
    CF: std::future::Future<Output = Harness>,
{
    let name = crate::unique_name(&format!("aso-{}", check_name.replace('_', "-")));
    let Some(b) = setup(name).await else {
        eprintln!("skipping {check_name}: backend not configured");
        return;
    };
    let h = Harness::start(b);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let outcome = tokio::time::timeout(
        CHECK_TIMEOUT,
        std::panic::AssertUnwindSafe(async move {
            let h = check(h).await;
            let _ = tx.send(h);
        })
        .catch_unwind(),
    )
    .await;
    if let Ok(h) = rx.await {
        h.stop().await;
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{check_name}: did not finish within {CHECK_TIMEOUT:?}"),
    }
}

/// A task's output reaches the producer awaiting it; a later lookup by id
/// finds it too.
pub async fn result_awaited(h: Harness) -> Harness {
    let task = Task::json("echo", &serde_json::json!({"q": 42})).expect("task");
    let pending = h.client.submit(task).await.expect("submit");
    let r = pending.wait(WAIT).await.expect("result");
    let v: serde_json::Value = r
        .clone()
        .into_output()
        .expect("completed")
        .parse_json()
        .expect("json");
    assert_eq!(v["q"], 42);
    let again = h
        .client
        .result(pending.id())
        .await
        .expect("get")
        .expect("recorded");
    assert_eq!(again.outcome, r.outcome);
    h
}

/// First record wins, later ones are counted; oversize is a typed error.
pub async fn first_result_wins(h: Harness) -> Harness {
    let id = TaskId::new(crate::unique_name("t"));
    let s = &h.b.results;
    let a = TaskOutcome::Completed(Output::bytes("first"));
    assert_eq!(
        s.record(&id, a.clone()).await.expect("record"),
        agentscale_core::Recorded::First
    );
    for _ in 0..2 {
        let dup = s
            .record(&id, TaskOutcome::DeadLettered("later".into()))
            .await
            .expect("record");
        assert_eq!(dup, agentscale_core::Recorded::Duplicate);
    }
    let r = s.get(&id).await.expect("get").expect("some");
    assert_eq!((r.outcome, r.duplicates), (a, 2));
    let big = TaskOutcome::Completed(Output::bytes(vec![0u8; SUITE_MAX_OUTPUT_BYTES + 1]));
    let e = s
        .record(&TaskId::new(crate::unique_name("t")), big)
        .await
        .expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::Codec);
    h
}

/// A dead-lettered task and an oversize output are recorded with the reason.
pub async fn dead_letters_recorded(h: Harness) -> Harness {
    let failed = h.client.submit(Task::new("fail", "{}")).await.expect("submit");
    match failed.wait(WAIT).await.expect("result").outcome {
        TaskOutcome::DeadLettered(r) => assert!(r.contains("always fails"), "{r}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    let big = h.client.submit(Task::new("big", "{}")).await.expect("submit");
    match big.wait(WAIT).await.expect("result").outcome {
        TaskOutcome::DeadLettered(r) => assert!(r.contains("exceeds the result limit"), "{r}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    h
}

/// A waiter that times out gets a timeout; the task goes on and its result
/// is there later.
pub async fn waiter_timeout_leaves_task_running(h: Harness) -> Harness {
    // Not yet due: the waiter certainly times out first.
    let task = Task::json("echo", &"late")
        .expect("task")
        .with_delay(Duration::from_millis(1500));
    let pending = h.client.submit(task).await.expect("submit");
    let e = pending
        .wait(Duration::from_millis(100))
        .await
        .expect_err("timeout");
    assert_eq!(e.kind(), ErrorKind::Timeout);
    let out: String = pending
        .output(WAIT)
        .await
        .expect("output")
        .parse_json()
        .expect("json");
    assert_eq!(out, "late");
    h
}

/// Fan-out to three specialists, all policy: the continuation's output is
/// the coordinator's result, and it ran once.
pub async fn fan_out_all(h: Harness) -> Harness {
    let plan = Plan {
        policy: "all".into(),
        deadline_ms: None,
        steps: vec![
            step("research", "echo", "r".into()),
            step("code", "echo", "c".into()),
            step("critique", "fail", "x".into()),
        ],
    };
    let g = h.run_plan(&plan).await;
    assert_eq!(g.decision, "settled");
    assert_eq!(
        statuses(&g),
        vec![("research", "ok"), ("code", "ok"), ("critique", "failed")]
    );
    assert_eq!(g.children[0].2, serde_json::json!("r"));
    assert_eq!(h.agent.gathers.load(Ordering::SeqCst), 1);
    h
}

/// Quorum and first success decide early; unmet policies decide as failed.
pub async fn quorum_and_first_success(h: Harness) -> Harness {
    let q = h
        .run_plan(&Plan {
            policy: "quorum:2".into(),
            deadline_ms: Some(60_000),
            steps: vec![
                step("a", "echo", 1.into()),
                step("b", "echo", 2.into()),
                step("c", "hang", 3.into()),
            ],
        })
        .await;
    assert_eq!(q.decision, "met");
    assert_eq!(statuses(&q)[2], ("c", "timed_out"));
    let f = h
        .run_plan(&Plan {
            policy: "first".into(),
            deadline_ms: None,
            steps: vec![step("a", "fail", 1.into()), step("b", "fail", 2.into())],
        })
        .await;
    assert_eq!(f.decision, "unmet");
    assert_eq!(statuses(&f), vec![("a", "failed"), ("b", "failed")]);
    h
}

/// The deadline decides with what the join has; the hanging child is
/// reported as timed out and sees its cancellation.
pub async fn deadline_settles_and_cancels(h: Harness) -> Harness {
    let g = h
        .run_plan(&Plan {
            policy: "all".into(),
            deadline_ms: Some(1500),
            steps: vec![
                step("quick", "echo", "q".into()),
                step("slow", "hang", "s".into()),
            ],
        })
        .await;
    assert_eq!(g.decision, "deadline");
    assert_eq!(statuses(&g), vec![("quick", "ok"), ("slow", "timed_out")]);
    let agent = h.agent.clone();
    eventually("the hanging child saw its cancellation", || {
        let agent = agent.clone();
        async move { agent.saw_cancel.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    h
}

/// Three levels of fan-out; the leaves' outputs reach the top.
pub async fn nested_three_levels(h: Harness) -> Harness {
    let leaf = |l: &str| step(l, "echo", l.into());
    let level3 = Plan {
        policy: "all".into(),
        deadline_ms: None,
        steps: vec![leaf("x"), leaf("y")],
    };
    let level2 = Plan {
        policy: "all".into(),
        deadline_ms: None,
        steps: vec![
            leaf("m"),
            step("deep", "plan", serde_json::to_value(&level3).expect("plan")),
        ],
    };
    let top = Plan {
        policy: "all".into(),
        deadline_ms: Some(60_000),
        steps: vec![
            leaf("a"),
            step("mid", "plan", serde_json::to_value(&level2).expect("plan")),
        ],
    };
    let g = h.run_plan(&top).await;
    assert_eq!(statuses(&g), vec![("a", "ok"), ("mid", "ok")]);
    let mid: Gathered = serde_json::from_value(g.children[1].2.clone()).expect("mid gathered");
    assert_eq!(statuses(&mid), vec![("m", "ok"), ("deep", "ok")]);
    let deep: Gathered = serde_json::from_value(mid.children[1].2.clone()).expect("deep gathered");
    assert_eq!(deep.children[1].2, serde_json::json!("y"));
    assert_eq!(h.agent.gathers.load(Ordering::SeqCst), 3);
    h
}

/// A parent deadline bounds a nested tree whose leaf hangs.
pub async fn parent_deadline_bounds_tree(h: Harness) -> Harness {
    let inner = Plan {
        policy: "all".into(),
        deadline_ms: None,
        steps: vec![step("stuck", "hang", 0.into())],
    };
    let g = h
        .run_plan(&Plan {
            policy: "all".into(),
            deadline_ms: Some(1500),
            steps: vec![
                step("fine", "echo", 1.into()),
                step("sub", "plan", serde_json::to_value(&inner).expect("plan")),
            ],
        })
        .await;
    assert_eq!(g.decision, "deadline", "{:?}", g.children);
    assert_eq!(statuses(&g), vec![("fine", "ok"), ("sub", "timed_out")]);
    h
}

/// Bad input and faults: unknown join, a stranger, a duplicate report, a
/// continuation whose join is gone. Typed errors or counted no-ops.
pub async fn join_faults(h: Harness) -> Harness {
    let joins = &h.b.joins;
    let unknown = JoinId::new(crate::unique_name("nojoin"));
    let e = joins
        .report(&unknown, &TaskId::new("c"), ChildStatus::Ok(Output::none()))
        .await
        .expect_err("unknown join");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        joins.expire(&unknown).await.expect_err("unknown").kind(),
        ErrorKind::NotFound
    );
    assert!(joins.state(&unknown).await.expect("state").is_none());

    let coordinator = Task::new("manual", "");
    let spec = agentscale_core::join::JoinSpec {
        id: JoinId::new(format!("{}.join", coordinator.id)),
        policy: JoinPolicy::All,
        children: vec![
            (TaskId::new("k1"), "one".into()),
            (TaskId::new("k2"), "two".into()),
        ],
        deadline_ms: None,
        continuation: Task::new("gather", ""),
        continuation_queue: h.b.main.name().to_owned(),
    };
    assert!(joins.create(&spec).await.expect("create"));
    assert!(
        !joins.create(&spec).await.expect("create again"),
        "create is idempotent"
    );
    let stranger = joins
        .report(&spec.id, &TaskId::new("k9"), ChildStatus::Ok(Output::none()))
        .await
        .expect_err("stranger");
    assert_eq!(stranger.kind(), ErrorKind::NotFound);
    let r1 = joins
        .report(&spec.id, &TaskId::new("k1"), ChildStatus::Ok(Output::none()))
        .await
        .expect("k1");
    assert_eq!((r1.slot, r1.decided_now), (Slot::Filled, false));
    let dup = joins
        .report(&spec.id, &TaskId::new("k1"), ChildStatus::Failed("again".into()))
        .await
        .expect("dup");
    assert_eq!((dup.slot, dup.decision), (Slot::Duplicate, None));
    let r2 = joins
        .report(&spec.id, &TaskId::new("k2"), ChildStatus::Failed("no".into()))
        .await
        .expect("k2");
    assert!(r2.decided_now);
    assert_eq!(r2.decision, Some(Decision::Settled));
    assert!(r2.continuation.is_some(), "the decider gets the continuation");
    // Nobody marked it: a later reporter re-drives it.
    let late = joins
        .report(&spec.id, &TaskId::new("k2"), ChildStatus::Ok(Output::none()))
        .await
        .expect("late");
    assert_eq!(late.slot, Slot::Duplicate);
    assert!(!late.decided_now);
    assert!(
        late.continuation.is_some(),
        "re-drive of an unmarked continuation"
    );
    joins.mark_enqueued(&spec.id).await.expect("mark");
    let after = joins.expire(&spec.id).await.expect("expire");
    assert!(after.continuation.is_none() && !after.decided_now);
    let st = joins.state(&spec.id).await.expect("state").expect("some");
    assert_eq!((st.decisions, st.duplicates), (1, 2));
    assert!(st.continuation_enqueued);

    // A continuation whose join is gone dead-letters with the reason.
    let mut orphan = Task::new("gather", "");
    orphan.headers.insert(
        agentscale_core::orchestrate::HEADER_CONTINUES.into(),
        unknown.to_string(),
    );
    let pending = h.client.submit(orphan).await.expect("submit");
    match pending.wait(WAIT).await.expect("result").outcome {
        TaskOutcome::DeadLettered(r) => assert!(r.contains("unknown or expired"), "{r}"),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    h
}

/// Runs the whole results and orchestration suite for one backend
/// combination: one `#[tokio::test(flavor = "multi_thread")]` per check in
/// a module `orchestration_conformance`.
#[macro_export]
macro_rules! orchestration_conformance {
    ($setup:path) => {
        mod orchestration_conformance {
            #[allow(unused_imports)]
            use super::*;
            $crate::__orchestration_tests!(
                $setup;
                result_awaited,
                first_result_wins,
                dead_letters_recorded,
                waiter_timeout_leaves_task_running,
                fan_out_all,
                quorum_and_first_success,
                deadline_settles_and_cancels,
                nested_three_levels,
                parent_deadline_bounds_tree,
                join_faults
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __orchestration_tests {
    ($setup:path; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $check() {
                $crate::orchestration_suite::run(
                    stringify!($check),
                    $setup,
                    $crate::orchestration_suite::$check,
                )
                .await;
            }
        )+
    };
}

/// Waits (up to 10 s, polling every 50 ms) until `cond` holds.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let wait = std::time::Duration::from_secs(10);
    let deadline = tokio::time::Instant::now() + wait;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true after {wait:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
