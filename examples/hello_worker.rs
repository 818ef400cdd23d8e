//! The smallest useful agentscale service: a producer, a worker, a handler.
//!
//! ```text
//! cargo run --example hello_worker
//! ```
//!
//! Swap `LocalQueue` for `agentscale::queue::redis::RedisQueue` (feature
//! `redis`) and run the worker in many processes: the handler stays the same.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use agentscale::{async_trait, Error, Handler, LocalQueue, Output, Task, TaskContext, TaskQueue, Worker};

/// The agent: turns a name into a greeting.
#[derive(Debug)]
struct Greeter;

#[async_trait]
impl Handler for Greeter {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        // A payload that is not a JSON string is dead-lettered with the reason.
        let name: String = task.payload_json()?;
        println!("attempt {}: hello, {name}!", cx.attempt());
        Output::json(&format!("hello, {name}!")) // acked only now; an Err is retried
    }
}

#[tokio::main]
async fn main() -> agentscale::Result<()> {
    let queue = Arc::new(LocalQueue::new("hello"));
    for name in ["Ada", "Grace", "Barbara"] {
        queue.enqueue(Task::json("greet", &name)?).await?;
    }
    let worker = Worker::builder(queue.clone(), Greeter).concurrency(2).build()?;
    // Stop once the queue is empty (a service would use a shutdown signal).
    let drained = async {
        while queue.depth().await.map(|d| d.backlog() > 0).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let report = worker.run_until(drained).await?;
    println!("completed {} tasks", report.completed);
    Ok(())
}
