//! A worker process for the Redis fault tests (`tests/tests/redis_faults.rs`):
//! the tests `kill -9` it mid-task and restart Redis under it.
//!
//! ```text
//! redis_fault_worker <redis-url> <queue> <concurrency> <lease-timeout-ms>
//! ```
//!
//! Task payloads are JSON `{"sleep_ms": n, "first_attempt_sleep_ms": m}`. The
//! handler records `SADD <queue>:started <id>` when it starts, sleeps, then
//! `HINCRBY <queue>:done <id> 1` — a record that survives this process's
//! death, so the test counts completions (and duplicates) exactly. If the
//! record cannot be written (Redis down) the handler fails and the task is
//! retried.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use agentscale_core::worker::{Backoff, Handler, TaskContext, Worker};
use agentscale_core::{Error, Output, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};

#[derive(serde::Deserialize)]
struct Work {
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    first_attempt_sleep_ms: u64,
}

struct Recorder {
    conn: redis::aio::ConnectionManager,
    started: String,
    done: String,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let work: Work = task.payload_json()?;
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("SADD")
            .arg(&self.started)
            .arg(task.id.as_str())
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::handler(format!("record start: {e}")))?;
        let sleep = if cx.attempt() == 1 {
            work.first_attempt_sleep_ms.max(work.sleep_ms)
        } else {
            work.sleep_ms
        };
        if sleep > 0 {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        let _: i64 = redis::cmd("HINCRBY")
            .arg(&self.done)
            .arg(task.id.as_str())
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::handler(format!("record completion: {e}")))?;
        Ok(Output::none())
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("redis_fault_worker: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err(Error::InvalidInput(
            "usage: redis_fault_worker <redis-url> <queue> <concurrency> <lease-timeout-ms>".into(),
        ));
    }
    let (url, queue_name) = (&args[1], &args[2]);
    let concurrency: usize = args[3]
        .parse()
        .map_err(|_| Error::InvalidInput("concurrency".into()))?;
    let lease_ms: u64 = args[4]
        .parse()
        .map_err(|_| Error::InvalidInput("lease-timeout-ms".into()))?;
    let config = RedisQueueConfig::new(url.as_str(), queue_name.as_str())
        .with_lease_timeout(Duration::from_millis(lease_ms))
        .with_reclaim_interval(Duration::from_millis((lease_ms / 4).max(20)));
    let queue = RedisQueue::connect(config).await?;
    let client = redis::Client::open(url.as_str()).map_err(|e| Error::backend("redis url", e))?;
    // Timeouts and a capped reconnect delay matter: redis-rs' defaults back
    // off up to 60 s between reconnect attempts (all requests wait for it).
    let cm_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(3)
        .set_max_delay(200);
    let conn = redis::aio::ConnectionManager::new_with_config(client, cm_config)
        .await
        .map_err(|e| Error::backend("connect", e))?;
    let recorder = Recorder {
        conn,
        started: format!("{queue_name}:started"),
        done: format!("{queue_name}:done"),
    };
    let queue: Arc<dyn TaskQueue> = Arc::new(queue);
    let worker = Worker::builder(queue, recorder)
        .concurrency(concurrency)
        .backoff(Backoff::exponential(
            Duration::from_millis(20),
            Duration::from_millis(500),
        ))
        .poll_wait(Duration::from_millis(200))
        .grace_period(Duration::from_secs(2))
        .build()?;
    let report = worker
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    eprintln!("redis_fault_worker: stopped: {report:?}");
    Ok(())
}
