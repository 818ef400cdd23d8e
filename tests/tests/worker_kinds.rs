//! Handlers by kind on a real worker (in-process queue): typed payloads are
//! routed by `task.kind`; an unknown kind and an undecodable payload are
//! dead-lettered at once with the reason; a failed attempt is logged at
//! `warn` with the task id, kind and attempt (captured from the real
//! tracing output).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentscale_core::worker::{Backoff, KindRouter, TaskContext, Worker};
use agentscale_core::{Error, Output, Task, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_tests::unique_name;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Refund {
    order: String,
    cents: u64,
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

// Current-thread runtime: the worker's tasks run on this thread, where the
// capturing subscriber is the default.
#[tokio::test]
async fn routes_by_kind_dead_letters_unknown_and_undecodable_and_warns_on_failures() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let refunded = Arc::new(AtomicU64::new(0));
    let router = KindRouter::new(refunded.clone())
        .on(
            "refund",
            |total: Arc<AtomicU64>, r: Refund, _t: Task, cx: TaskContext| async move {
                if cx.attempt() == 1 {
                    return Err(Error::handler(format!(
                        "payment provider timed out for {}",
                        r.order
                    )));
                }
                total.fetch_add(r.cents, Ordering::SeqCst);
                Output::json(&r.order)
            },
        )
        .on(
            "ping",
            |_: Arc<AtomicU64>, _: (), _: Task, _: TaskContext| async { Ok(Output::none()) },
        );

    let queue = Arc::new(LocalQueue::new(unique_name("kinds")));
    let good = Task::json("refund", &serde_json::json!({"order": "o-1", "cents": 250})).expect("task");
    let unknown = Task::new("teleport", "{}");
    let undecodable = Task::new("refund", r#"{"order":"o-2","cents":"lots"}"#);
    for t in [good.clone(), unknown.clone(), undecodable.clone()] {
        queue.enqueue(t).await.expect("enqueue");
    }
    let worker = Worker::builder(queue.clone(), router)
        .backoff(Backoff::fixed(Duration::from_millis(10)))
        .poll_wait(Duration::from_millis(20))
        .build()
        .expect("worker");
    let stats = worker.stats();
    let report = worker
        .run_until(async move {
            stats
                .wait_until(|r| r.completed == 1 && r.dead_lettered == 2)
                .await;
        })
        .await
        .expect("run");
    assert_eq!(
        (report.completed, report.retried, report.dead_lettered),
        (1, 1, 2)
    );
    assert_eq!(refunded.load(Ordering::SeqCst), 250);

    let dead = queue.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason_of = |id| {
        dead.iter()
            .find(|d| d.task.as_ref().map(|t| &t.id) == Some(id))
            .map(|d| (d.reason.clone(), d.attempts))
            .unwrap_or_else(|| panic!("no dead letter for {id}"))
    };
    let (reason, attempts) = reason_of(&unknown.id);
    assert!(
        reason.contains("no handler for task kind \"teleport\""),
        "{reason}"
    );
    assert!(reason.contains("non-retryable"), "{reason}");
    assert_eq!(attempts, 1, "dead-lettered without retrying");
    let (reason, attempts) = reason_of(&undecodable.id);
    assert!(
        reason.contains("does not decode") && reason.contains("Refund"),
        "{reason}"
    );
    assert_eq!(attempts, 1);

    let text = logs.text();
    let failed = text
        .lines()
        .find(|l| l.contains("task attempt failed"))
        .unwrap_or_else(|| panic!("no failed-attempt line in:\n{text}"));
    assert!(failed.contains(" WARN "), "{failed}");
    for field in [
        format!("task.id={}", good.id),
        "task.kind=refund".into(),
        "attempt=1".into(),
    ] {
        assert!(failed.contains(&field), "{field} missing in {failed}");
    }
    assert!(failed.contains("payment provider timed out for o-1"), "{failed}");
    let dead_line = text
        .lines()
        .find(|l| l.contains("dead-lettering task") && l.contains("task.kind=teleport"))
        .unwrap_or_else(|| panic!("no dead-letter line in:\n{text}"));
    assert!(dead_line.contains(" WARN ") && dead_line.contains(&format!("task.id={}", unknown.id)));
}
