//! The queue conformance suite against `KafkaQueue` on a real Kafka-protocol
//! broker (`AGENTSCALE_KAFKA_BROKERS`, tansu from `scripts/dev-services up`),
//! plus Kafka-specific checks: only contiguous offsets are committed,
//! revoked partitions fence their leases, dead-letter headers, unreachable
//! brokers fail fast.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::{ErrorKind, Nack, Task, TaskQueue};
use agentscale_queue::kafka::{self, KafkaQueue, KafkaQueueConfig};
use agentscale_testkit::{service_env, unique_name, QueueFixture, QueueOptions, SetupResult, Suites};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// tansu does not implement the idempotent producer handshake
/// (`InitProducerId`) for non-transactional producers the way librdkafka
/// expects, so the tests turn idempotence off (see docs/kafka.md).
fn config(brokers: &str, topic: &str) -> agentscale_queue::kafka::KafkaQueueConfigBuilder {
    KafkaQueueConfig::builder()
        .brokers(brokers)
        .topic(topic)
        .group_id(format!("{topic}-g"))
        .partitions(2)
        .idempotence(false)
        .revoke_drain(Duration::from_millis(500))
}

/// Topics are left in place: deleting topics on tansu 0.6 while other
/// clients are connected makes librdkafka 2.12 crash in its metadata cache
/// (a null topic name in the broker's metadata response). Each test uses
/// fresh random topic names, and the dev broker keeps them in memory only.
async fn delete_topics(brokers: &str, topics: Vec<String>) {
    if std::env::var("AGENTSCALE_KAFKA_DELETE_TOPICS").is_err() {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _ = admin
        .delete_topics(
            &refs,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(5))),
        )
        .await;
}

fn raw_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

async fn setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let brokers = service_env("AGENTSCALE_KAFKA_BROKERS")?;
    let cfg = config(&brokers, &opts.name)
        .lease_timeout(opts.lease_timeout)
        .max_envelope_bytes(opts.max_envelope_bytes)
        .build()?;
    let topics = cfg.all_topics();
    let queue = Arc::new(KafkaQueue::connect(cfg).await?);
    let producer = raw_producer(&brokers);
    let topic = opts.name.clone();
    let closing = queue.clone();
    Ok(QueueFixture::from_arc(queue)
        .with_raw_injector(move |bytes| {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move {
                producer
                    .send(
                        FutureRecord::<(), _>::to(&topic).payload(&bytes),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("produce raw");
            }
        })
        .with_cleanup(move || async move {
            closing.close().await;
            delete_topics(&brokers, topics).await;
        }))
}

/// The committed offset of `partition` for `group`.
fn committed(brokers: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed");
    match got.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

async fn wait_committed(brokers: &str, group: &str, topic: &str, partition: i32, want: i64) {
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let (b, g, t) = (brokers.to_string(), group.to_string(), topic.to_string());
        let got = tokio::task::spawn_blocking(move || committed(&b, &g, &t, partition))
            .await
            .expect("join");
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "committed offset stayed {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With many tasks in flight finishing out of order, only the highest
/// contiguous completed offset is committed.
async fn commits_only_contiguous_offsets(brokers: String) {
    let topic = unique_name("askq-contig");
    let cfg = config(&brokers, &topic)
        .partitions(1)
        .commit_interval(Duration::from_millis(100))
        .build()
        .expect("cfg");
    let group = cfg.group_id.clone();
    let topics = cfg.all_topics();
    let q = KafkaQueue::connect(cfg).await.expect("connect");
    let tasks: Vec<Task> = (0..10).map(|i| Task::new("t", format!("{i}"))).collect();
    for r in q.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    let mut leases = Vec::new();
    while leases.len() < 10 {
        leases.extend(
            q.lease(10 - leases.len(), Duration::from_secs(10))
                .await
                .expect("lease"),
        );
    }
    leases.sort_by_key(|l| l.receipt().split(':').nth(1).and_then(|o| o.parse::<i64>().ok()));
    // Complete 0..3 and 5..10, leaving offset 3 and 4 unfinished.
    for l in leases[..3].iter().chain(&leases[5..]) {
        q.ack(l).await.expect("ack");
    }
    wait_committed(&brokers, &group, &topic, 0, 3).await;
    assert_eq!(q.depth().await.expect("depth").backlog(), 2);
    q.ack(&leases[4]).await.expect("ack 4");
    // Still blocked by offset 3: the commit must not move.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
    let now = tokio::task::spawn_blocking(move || committed(&b, &g, &t, 0))
        .await
        .expect("join");
    assert_eq!(now, Some(3), "an unfinished offset was committed past");
    q.ack(&leases[3]).await.expect("ack 3");
    wait_committed(&brokers, &group, &topic, 0, 10).await;
    assert_eq!(q.depth().await.expect("depth").backlog(), 0);
    q.close().await;
    delete_topics(&brokers, topics).await;
}

/// A second group member takes a partition: the first stops dispatching it,
/// its late acks are refused with LeaseLost, and the task is delivered to
/// the new owner; nothing that finished before the revoke runs again.
async fn revoked_partition_fences_leases(brokers: String) {
    let topic = unique_name("askq-revoke");
    let cfg = config(&brokers, &topic)
        .partitions(2)
        .key_by_session(true)
        .revoke_drain(Duration::from_millis(200))
        .build()
        .expect("cfg");
    let topics = cfg.all_topics();
    let a = KafkaQueue::connect(cfg.clone()).await.expect("connect a");
    // One task per partition (keys chosen so both partitions get one).
    let mut tasks = Vec::new();
    for i in 0..16 {
        tasks.push(Task::new("t", format!("{i}")).with_session(format!("s{i}")));
    }
    for r in a.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    let mut held = Vec::new();
    while held.len() < 16 {
        held.extend(a.lease(16, Duration::from_secs(10)).await.expect("lease"));
    }
    assert_eq!(a.assigned_partitions(), vec![0, 1]);
    // B joins; A must give up one partition while its leases are still open.
    let b = KafkaQueue::connect(cfg.clone()).await.expect("connect b");
    let give_up = Instant::now() + Duration::from_secs(30);
    while b.assigned_partitions().is_empty() {
        assert!(Instant::now() < give_up, "b never got a partition");
        let _ = b.lease(1, Duration::from_millis(100)).await.expect("lease b");
    }
    let moved = b.assigned_partitions();
    let mut lost = 0;
    let mut acked = 0;
    for l in &held {
        let p: i32 = l
            .receipt()
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("receipt");
        match a.ack(l).await {
            Ok(()) => {
                assert!(!moved.contains(&p), "ack accepted for a revoked partition {p}");
                acked += 1
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::LeaseLost, "{e}");
                assert!(moved.contains(&p));
                lost += 1
            }
        }
    }
    assert!(lost > 0 && acked > 0, "lost {lost}, acked {acked}");
    // B receives exactly the tasks whose acks were refused.
    let mut got = Vec::new();
    while got.len() < lost {
        got.extend(b.lease(16, Duration::from_secs(10)).await.expect("lease b"));
    }
    for l in &got {
        b.ack(l).await.expect("ack on b");
    }
    assert!(b
        .lease(16, Duration::from_millis(500))
        .await
        .expect("lease")
        .is_empty());
    assert_eq!(got.len(), lost);
    a.close().await;
    b.close().await;
    delete_topics(&brokers, topics).await;
}

/// A dead letter carries origin topic/partition/offset, attempt and reason.
async fn dead_letter_headers(brokers: String) {
    let topic = unique_name("askq-dlt");
    let cfg = config(&brokers, &topic).partitions(1).build().expect("cfg");
    let topics = cfg.all_topics();
    let dlt = cfg.dead_letter_topic();
    let q = KafkaQueue::connect(cfg).await.expect("connect");
    let t = Task::new("t", "payload");
    q.enqueue(t.clone()).await.expect("enqueue");
    let l = q
        .lease(1, Duration::from_secs(10))
        .await
        .expect("lease")
        .remove(0);
    q.nack(&l, Nack::DeadLetter("bad payload".into()))
        .await
        .expect("dead-letter");

    let b = brokers.clone();
    let headers: HashMap<String, String> = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "reader")
            .create()
            .expect("c");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&dlt, 0, Offset::Beginning).expect("tpl");
        c.assign(&tpl).expect("assign");
        let give_up = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < give_up, "no dead letter in {dlt}");
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let h = m.headers().expect("headers");
                return h
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect();
            }
        }
    })
    .await
    .expect("join");
    assert_eq!(headers[kafka::HEADER_ORIGIN_TOPIC], topic);
    assert_eq!(headers[kafka::HEADER_ORIGIN_PARTITION], "0");
    assert_eq!(headers[kafka::HEADER_ORIGIN_OFFSET], "0");
    assert_eq!(headers[kafka::HEADER_ATTEMPT], "1");
    assert_eq!(headers[kafka::HEADER_REASON], "bad payload");
    assert!(headers[kafka::HEADER_DEAD_AT_MS].parse::<u64>().expect("ms") > 0);
    q.close().await;
    delete_topics(&brokers, topics).await;
}

/// Dead letters are listed a page at a time and replayed by seeking to the
/// id: with more dead letters than asked for, `dead_letters(3)` gives the 3
/// oldest; a dead letter deep in the topic replays by its id; an id past the
/// end or of a partition that does not exist is NotFound; `depth` counts
/// them all through the one kept reader, call after call.
async fn dead_letters_paged_and_replayed_by_id(brokers: String) {
    let topic = unique_name("askq-dltpage");
    let cfg = config(&brokers, &topic).partitions(2).build().expect("cfg");
    let topics = cfg.all_topics();
    let q = KafkaQueue::connect(cfg).await.expect("connect");
    let n = 40;
    let tasks: Vec<Task> = (0..n).map(|i| Task::new("t", format!("{i}"))).collect();
    for r in q.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    let mut order = Vec::new();
    while order.len() < n {
        for l in q
            .lease(n - order.len(), Duration::from_secs(10))
            .await
            .expect("lease")
        {
            q.nack(&l, Nack::DeadLetter(format!("bad {}", order.len())))
                .await
                .expect("dead-letter");
            order.push(l.task().id.clone());
            // Distinct dead_at_ms stamps, so "oldest" is well defined.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let page = q.dead_letters(3).await.expect("page");
    let got: Vec<_> = page
        .iter()
        .map(|d| d.task.as_ref().expect("task").id.clone())
        .collect();
    assert_eq!(
        got,
        order[..3].to_vec(),
        "the three oldest dead letters, oldest first"
    );
    let all = q.dead_letters(1000).await.expect("all");
    assert_eq!(all.len(), n);
    for _ in 0..3 {
        assert_eq!(q.depth().await.expect("depth").dead, n as u64);
    }
    let last = all.last().expect("last").clone();
    q.replay_dead_letter(&last.id)
        .await
        .expect("replay the newest by id");
    let again = q
        .lease(1, Duration::from_secs(10))
        .await
        .expect("lease")
        .remove(0);
    assert_eq!(Some(&again.task().id), last.task.as_ref().map(|t| &t.id));
    q.ack(&again).await.expect("ack");
    assert_eq!(q.dead_letters(1000).await.expect("after replay").len(), n - 1);
    for missing in ["0:999999", "7:0", "x"] {
        let err = q.replay_dead_letter(missing).await.expect_err(missing);
        assert_eq!(err.kind(), ErrorKind::NotFound, "{missing}: {err}");
    }
    q.close().await;
    delete_topics(&brokers, topics).await;
}

/// A retry tier partition that is held (paused until its head is due) when
/// the relay's group rebalances is consumed again after the reassignment:
/// a second member joins and leaves while the first holds a retry, and the
/// retry is still delivered. (librdkafka has kept a pause across a revoke
/// and a reassignment; the relay resumes newly assigned partitions. With
/// the bundled librdkafka against tansu this passes without that resume
/// too: a guard, not a reproduction.)
async fn retry_relay_resumes_after_reassignment(brokers: String) {
    let topic = unique_name("askq-relay");
    let cfg = config(&brokers, &topic)
        .partitions(1)
        .retry_tiers([Duration::from_secs(12)])
        .session_timeout(Duration::from_secs(6))
        .build()
        .expect("cfg");
    let topics = cfg.all_topics();
    let a = KafkaQueue::connect(cfg.clone()).await.expect("connect a");
    a.enqueue(Task::new("t", "retry me")).await.expect("enqueue");
    let l = a
        .lease(1, Duration::from_secs(10))
        .await
        .expect("lease")
        .remove(0);
    let id = l.task().id.clone();
    a.nack(&l, Nack::Retry(Duration::from_secs(12)))
        .await
        .expect("nack");
    // Let a's relay read the retry and hold (pause) its partition.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A second member joins both groups and leaves again: two rebalances
    // while the retry is held.
    let b = KafkaQueue::connect(cfg).await.expect("connect b");
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.close().await;
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < give_up,
            "the held retry was never delivered after the relay's partition was reassigned"
        );
        if let Some(l) = a.lease(1, Duration::from_secs(1)).await.expect("lease").pop() {
            assert_eq!(l.task().id, id);
            assert_eq!(l.attempt(), 2);
            a.ack(&l).await.expect("ack");
            break;
        }
    }
    a.close().await;
    delete_topics(&brokers, topics).await;
}

/// No broker at start-up: a clear Unavailable error within the connect timeout.
async fn unreachable_broker_fails_fast() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }; // closed again: nothing listens there
    let cfg = KafkaQueueConfig::builder()
        .brokers(format!("127.0.0.1:{port}"))
        .topic("never")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("cfg");
    let result = tokio::time::timeout(Duration::from_secs(30), KafkaQueue::connect(cfg))
        .await
        .expect("connect hung instead of failing");
    let err = result.expect_err("connected to a closed port");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

/// `extend` is honestly unsupported.
async fn extend_is_unsupported(brokers: String) {
    let topic = unique_name("askq-ext");
    let cfg = config(&brokers, &topic).partitions(1).build().expect("cfg");
    let topics = cfg.all_topics();
    let q = KafkaQueue::connect(cfg).await.expect("connect");
    assert!(!q.capabilities().lease_extension);
    q.enqueue(Task::new("t", "x")).await.expect("enqueue");
    let l = q
        .lease(1, Duration::from_secs(10))
        .await
        .expect("lease")
        .remove(0);
    assert_eq!(
        q.extend(&l, Duration::from_secs(1))
            .await
            .expect_err("extend")
            .kind(),
        ErrorKind::Unsupported
    );
    q.ack(&l).await.expect("ack");
    q.close().await;
    delete_topics(&brokers, topics).await;
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .queue("kafka", setup)
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "commits_only_contiguous_offsets",
                commits_only_contiguous_offsets,
            )
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "revoked_partition_fences_leases",
                revoked_partition_fences_leases,
            )
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "dead_letter_headers",
                dead_letter_headers,
            )
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "dead_letters_paged_and_replayed_by_id",
                dead_letters_paged_and_replayed_by_id,
            )
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "retry_relay_resumes_after_reassignment",
                retry_relay_resumes_after_reassignment,
            )
            .test("unreachable_broker_fails_fast", unreachable_broker_fails_fast)
            .service_test(
                "AGENTSCALE_KAFKA_BROKERS",
                "extend_is_unsupported",
                extend_is_unsupported,
            )
    })
}
