//! The `agentscale` binary against a real Kafka-protocol broker
//! (`AGENTSCALE_KAFKA_BROKERS`, tansu from `scripts/dev-services up`):
//! stats, dead letters (list, replay, purge with confirmation), and peek
//! reported as not offered.

mod common;

use std::time::{Duration, Instant};

use agentscale_core::{Lease, Nack, Task, TaskQueue};
use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
use agentscale_testkit::unique_name;
use common::{agentscale, service, Run};

fn cli(brokers: &str, topic: &str, args: &[&str], stdin: &str) -> Run {
    let group = format!("{topic}-g");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--backend",
        "kafka",
        "--queue",
        topic,
        "--brokers",
        brokers,
        "--group",
        &group,
    ]);
    agentscale(&all, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stats_and_dead_letters() {
    let Some(brokers) = service("AGENTSCALE_KAFKA_BROKERS") else {
        return;
    };
    let topic = unique_name("cli");
    let config = KafkaQueueConfig::builder()
        .brokers(brokers.as_str())
        .topic(topic.as_str())
        .group_id(format!("{topic}-g"))
        .partitions(1)
        .idempotence(false)
        .build()
        .expect("config");
    let q = KafkaQueue::connect(config).await.expect("connect");
    for i in 0..3 {
        q.enqueue(Task::new("doomed", format!("{i}")))
            .await
            .expect("enqueue");
    }
    let mut leases: Vec<Lease> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases.len() < 3 {
        assert!(Instant::now() < deadline, "leased only {}", leases.len());
        leases.extend(
            q.lease(3 - leases.len(), Duration::from_millis(500))
                .await
                .expect("lease"),
        );
    }
    for (i, l) in leases.iter().enumerate() {
        q.nack(l, Nack::DeadLetter(format!("reason-{i}")))
            .await
            .expect("dead-letter");
    }

    let list = cli(&brokers, &topic, &["--json", "dlq", "list"], "").ok().json();
    let list = list.as_array().expect("array").clone();
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list
        .iter()
        .all(|d| d["reason"].as_str().is_some_and(|r| r.starts_with("reason-"))));
    let stats = cli(&brokers, &topic, &["--json", "queue", "stats"], "")
        .ok()
        .json();
    assert_eq!(stats["dead"], 3, "{stats}");
    assert_eq!(stats["backend"], "kafka");
    assert!(stats["in_flight"].is_null(), "{stats}");

    let id = list[0]["id"].as_str().expect("id").to_string();
    cli(&brokers, &topic, &["dlq", "replay", &id], "").ok();
    for unknown in [id.as_str(), "0:999999"] {
        let r = cli(&brokers, &topic, &["dlq", "replay", unknown], "");
        assert_eq!(r.code, 2, "{unknown}: {r:?}");
    }
    let left = cli(&brokers, &topic, &["--json", "dlq", "list"], "").ok().json();
    assert_eq!(left.as_array().map(Vec::len), Some(2));

    let r = cli(&brokers, &topic, &["dlq", "purge"], "wrong\n");
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        cli(&brokers, &topic, &["--json", "dlq", "list"], "")
            .ok()
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let purged = cli(&brokers, &topic, &["--json", "dlq", "purge", "--yes"], "")
        .ok()
        .json();
    assert_eq!(purged["purged"], 2);
    let after = cli(&brokers, &topic, &["--json", "dlq", "list"], "").ok().json();
    assert_eq!(after, serde_json::json!([]));
    let stats = cli(&brokers, &topic, &["--json", "queue", "stats"], "")
        .ok()
        .json();
    assert_eq!(stats["dead"], 0, "{stats}");

    let peek = cli(&brokers, &topic, &["queue", "peek"], "");
    assert_eq!(peek.code, 2, "{peek:?}");
    assert!(peek.stderr.contains("peek is not offered"), "{peek:?}");
    q.close().await;
}
