//! The always-on queue keeper: lets a worker fleet scale to zero without
//! stranding retries. It runs no handler; every few seconds it moves the
//! retries whose backoff ended to the ready stream (so KEDA's
//! `redis-streams` lag sees them) and exports the queue gauges — among them
//! `agentscale_task_queue_due`, the number to scale on — on `/metrics`
//! (so the Prometheus trigger sees them while no worker runs).
//!
//! ```text
//! cargo run -p agentscale-examples --features redis --example queue_keeper
//! curl -s localhost:9091/metrics | grep agentscale_task_queue_due
//! ```
//!
//! Configuration is that of the workers (`deploy/base/`): the optional file
//! `/etc/agentscale/config.toml`, then `AGENTSCALE_REDIS_URL` (or
//! `AGENTSCALE_REDIS_URL_FILE`), `AGENTSCALE_QUEUE` (default `agents`),
//! `AGENTSCALE_METRICS_ADDR` (default `0.0.0.0:9090`) and
//! `AGENTSCALE_KEEPER_INTERVAL_MS` (default 2000). One replica is enough;
//! `deploy/base/queue-keeper.yaml` runs it.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use agentscale::config::{ConfigLoader, Secret};
use agentscale::metrics::{Exporter, Metrics};
use agentscale::queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale::worker::shutdown_signal;
use agentscale::{Error, QueueKeeper, QueueKeeperConfig};
use serde::Deserialize;

/// `/etc/agentscale/config.toml`, then `AGENTSCALE_*` (the workers' file:
/// keys the keeper does not use are ignored).
#[derive(Debug, Default, Deserialize)]
struct Settings {
    redis_url: Option<Secret>,
    queue: Option<String>,
    metrics_addr: Option<String>,
    keeper_interval_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let s: Settings = ConfigLoader::new()
        .optional_file("/etc/agentscale/config.toml")
        .file_from_env("AGENTSCALE_CONFIG")
        .env_prefix("AGENTSCALE")
        .load()?;
    let url = s
        .redis_url
        .as_ref()
        .map(|u| u.expose().to_string())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let queue = RedisQueue::connect(RedisQueueConfig::new(
        url,
        s.queue.unwrap_or_else(|| "agents".into()),
    ))
    .await?;
    let metrics = Metrics::new();
    let addr = s.metrics_addr.unwrap_or_else(|| "0.0.0.0:9090".into());
    let exporter = Exporter::bind(addr, metrics.clone()).await?;
    println!("queue keeper on http://{}/metrics", exporter.local_addr());
    let config = QueueKeeperConfig::builder()
        .interval(Duration::from_millis(s.keeper_interval_ms.unwrap_or(2000)))
        .build()?;
    let report = QueueKeeper::new(Arc::new(queue), metrics, config)
        .run_until(shutdown_signal())
        .await?;
    println!("{report:?}");
    exporter.shutdown().await;
    Ok(())
}
