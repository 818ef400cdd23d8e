//! Shared setup of the orchestration conformance test files (included with
//! `#[path]`, not a test of its own).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{JoinStore, ResultStore, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_state::local::{LocalJoinStore, LocalResultStore};
use agentscale_state::redis::{RedisJoinStore, RedisResultStore, RedisStateConfig};
use agentscale_tests::orchestration_suite::SUITE_MAX_OUTPUT_BYTES;
use futures::future::BoxFuture;

pub fn redis_url() -> Option<String> {
    agentscale_tests::service_env("AGENTSCALE_REDIS_URL")
}

pub fn kafka_brokers() -> Option<String> {
    agentscale_tests::service_env("AGENTSCALE_KAFKA_BROKERS")
}

/// Deletes every key under `prefix`.
pub async fn delete_prefix(url: String, prefix: String) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

pub async fn redis_state(
    url: &str,
    name: &str,
) -> (Arc<dyn ResultStore>, Arc<dyn JoinStore>, BoxFuture<'static, ()>) {
    let prefix = format!("st-{name}");
    let cfg = RedisStateConfig::new(url).with_key_prefix(prefix.clone());
    let results = RedisResultStore::builder(cfg.clone())
        .max_output_bytes(SUITE_MAX_OUTPUT_BYTES)
        .connect()
        .await
        .expect("results");
    let joins = RedisJoinStore::builder(cfg).connect().await.expect("joins");
    (
        Arc::new(results),
        Arc::new(joins),
        Box::pin(delete_prefix(url.to_owned(), prefix)),
    )
}

pub fn local_state() -> (Arc<dyn ResultStore>, Arc<dyn JoinStore>) {
    (
        Arc::new(
            LocalResultStore::builder()
                .max_output_bytes(SUITE_MAX_OUTPUT_BYTES)
                .build()
                .expect("results"),
        ),
        Arc::new(LocalJoinStore::builder().build().expect("joins")),
    )
}

pub async fn redis_queue(url: &str, name: &str) -> (Arc<dyn TaskQueue>, BoxFuture<'static, ()>) {
    let cfg = RedisQueueConfig::new(url, name)
        .with_key_prefix("astest")
        .with_lease_timeout(Duration::from_secs(5));
    let q = RedisQueue::connect(cfg).await.expect("redis queue");
    let gone = q.clone();
    (
        Arc::new(q),
        Box::pin(async move {
            let _ = gone.destroy().await;
        }),
    )
}

pub async fn kafka_queue(brokers: &str, topic: &str) -> (Arc<dyn TaskQueue>, BoxFuture<'static, ()>) {
    use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
    // tansu does not implement the idempotent producer handshake the way
    // librdkafka expects, so idempotence is off (as in tests/kafka_queue.rs).
    // Kafka cannot extend a lease, so it must outlast the suite's 60 s task
    // timeout (the worker builder refuses a shorter one).
    let cfg = KafkaQueueConfig::builder()
        .brokers(brokers)
        .topic(topic)
        .group_id(format!("{topic}-g"))
        .partitions(2)
        .idempotence(false)
        .lease_timeout(Duration::from_secs(90))
        .build()
        .expect("kafka config");
    let q = Arc::new(KafkaQueue::connect(cfg).await.expect("kafka queue"));
    let closing = q.clone();
    (q, Box::pin(async move { closing.close().await }))
}
