//! The queue conformance suite against the Redis Streams queue (real Redis
//! from `AGENTSCALE_REDIS_URL`), plus checks specific to Redis: fencing across
//! processes' consumer names, XDEL of settled entries, KEDA's lag, recovery
//! when the group vanishes, and foreign stream entries.

use std::time::Duration;

use agentscale_core::{ErrorKind, Nack, Priority, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_testkit::{service_env, unique_name, QueueFixture, QueueOptions, SetupResult, Suites};
use redis::AsyncCommands;

async fn raw_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let url = service_env("AGENTSCALE_REDIS_URL")?;
    let config = RedisQueueConfig::new(url.clone(), opts.name.clone())
        .with_key_prefix("astest")
        .with_lease_timeout(opts.lease_timeout)
        .with_max_envelope_bytes(opts.max_envelope_bytes)
        .with_ordered_sessions(opts.ordered_sessions);
    let queue = RedisQueue::connect(config).await?;
    let stream = queue.keys().stream(Priority::Normal).to_string();
    let (inject_url, inject_stream) = (url.clone(), stream);
    let cleanup_queue = queue.clone();
    Ok(QueueFixture::new(queue)
        .with_raw_injector(move |bytes| {
            let (url, stream) = (inject_url.clone(), inject_stream.clone());
            async move {
                let mut c = raw_conn(&url).await;
                let _: String = c.xadd(&stream, "*", &[("task", bytes)]).await.expect("xadd raw");
            }
        })
        .with_cleanup(move || async move {
            cleanup_queue.destroy().await.expect("destroy");
        }))
}

async fn queue(url: &str, name: &str, consumer: &str, lease: Duration) -> RedisQueue {
    let cfg = RedisQueueConfig::new(url, name)
        .with_key_prefix("astest")
        .with_consumer_name(consumer)
        .with_lease_timeout(lease)
        .with_reclaim_interval(Duration::from_millis(50));
    RedisQueue::connect(cfg).await.expect("connect")
}

/// A worker whose lease was reclaimed by another process (another consumer
/// name) cannot ack, nack or extend the new owner's delivery.
async fn fencing_across_consumers(url: String) {
    let name = unique_name("fence");
    let a = queue(&url, &name, "proc-a", Duration::from_millis(300)).await;
    let b = queue(&url, &name, "proc-b", Duration::from_millis(300)).await;
    a.enqueue(Task::new("k", "x")).await.expect("enqueue");
    let la = a.lease(1, Duration::from_secs(2)).await.expect("lease a");
    assert_eq!(la.len(), 1);
    // b reclaims once the lease has been idle for the lease timeout.
    let lb = loop {
        let l = b.lease(1, Duration::from_secs(2)).await.expect("lease b");
        if !l.is_empty() {
            break l;
        }
    };
    assert_eq!(lb[0].task().id, la[0].task().id);
    assert_eq!(lb[0].attempt(), 2);
    assert_ne!(lb[0].fence(), la[0].fence());
    assert_eq!(
        a.ack(&la[0]).await.map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost)
    );
    assert_eq!(
        a.extend(&la[0], Duration::from_secs(1))
            .await
            .map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost)
    );
    assert_eq!(
        a.nack(&la[0], Nack::DeadLetter("late".into()))
            .await
            .map_err(|e| e.kind()),
        Err(ErrorKind::LeaseLost)
    );
    let batch = a.ack_batch(&la).await;
    assert_eq!(
        batch[0].as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::LeaseLost)
    );
    b.ack(&lb[0]).await.expect("new owner acks");
    let d = b.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.dead), (0, 0, 0));
    a.destroy().await.expect("destroy");
}

/// Settled entries are deleted from the stream (it does not grow), and the
/// group's lag (what KEDA's redis-streams scaler reads) equals `ready`.
async fn settled_entries_deleted_and_lag_matches_ready(url: String) {
    let name = unique_name("xdel");
    let q = queue(&url, &name, "c1", Duration::from_secs(30)).await;
    let tasks: Vec<Task> = (0..20).map(|i| Task::new("k", format!("{i}"))).collect();
    for r in q.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    let stream = q.keys().stream(Priority::Normal).to_string();
    let mut c = raw_conn(&url).await;
    let lag_of = |info: redis::Value| -> i64 {
        let redis::Value::Array(groups) = info else {
            panic!("XINFO GROUPS reply")
        };
        for g in groups {
            let items: Vec<redis::Value> = match g {
                redis::Value::Array(i) => i,
                redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                other => panic!("group entry {other:?}"),
            };
            for pair in items.chunks(2) {
                if let (redis::Value::BulkString(k), redis::Value::Int(v)) = (&pair[0], &pair[1]) {
                    if k == b"lag" {
                        return *v;
                    }
                }
            }
        }
        panic!("no lag field")
    };
    let info: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .expect("xinfo");
    assert_eq!(lag_of(info), 20);
    assert_eq!(q.depth().await.expect("depth").ready, 20);
    let leases = q.lease(15, Duration::from_secs(1)).await.expect("lease");
    assert_eq!(leases.len(), 15);
    let info: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .expect("xinfo");
    assert_eq!(lag_of(info), 5);
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight), (5, 15));
    for r in q.ack_batch(&leases).await {
        r.expect("ack");
    }
    let len: i64 = c.xlen(&stream).await.expect("xlen");
    assert_eq!(len, 5, "acked entries are XDEL'd; the 5 unleased remain");
    let info: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut c)
        .await
        .expect("xinfo");
    assert_eq!(lag_of(info), 5, "lag stays valid after XDEL of delivered entries");
    q.destroy().await.expect("destroy");
    let exists: i64 = c.exists(&stream).await.expect("exists");
    assert_eq!(exists, 0);
}

/// An entry written by a foreign producer without a `task` field is
/// dead-lettered with its raw content and the reason; leasing continues.
async fn foreign_entry_without_task_field(url: String) {
    let name = unique_name("foreign");
    let q = queue(&url, &name, "c1", Duration::from_secs(30)).await;
    let mut c = raw_conn(&url).await;
    let _: String = c
        .xadd(q.keys().stream(Priority::Normal), "*", &[("foo", "bar")])
        .await
        .expect("xadd");
    let t = Task::new("k", "x");
    q.enqueue(t.clone()).await.expect("enqueue");
    let l = q.lease(10, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].task().id, t.id);
    q.ack(&l[0]).await.expect("ack");
    let dl = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dl.len(), 1);
    assert!(dl[0].task.is_none());
    assert_eq!(dl[0].raw.as_deref(), Some(&b"foo bar"[..]));
    assert!(dl[0].reason.contains("no `task` field"), "{}", dl[0].reason);
    let err = q
        .replay_dead_letter(&dl[0].id)
        .await
        .expect_err("raw entries cannot be replayed");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        q.replay_dead_letter("1-1").await.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound)
    );
    q.destroy().await.expect("destroy");
}

/// If the streams and group vanish (Redis restarted without persistence, or
/// someone deleted them), the queue recreates them by itself.
async fn recovers_when_group_vanishes(url: String) {
    let name = unique_name("nogroup");
    let q = queue(&url, &name, "c1", Duration::from_secs(30)).await;
    let mut c = raw_conn(&url).await;
    let keys = q.keys().clone();
    let _: i64 = c.del(&keys.streams[..]).await.expect("del");
    // A blocking leaser hits NOGROUP first; then an enqueue arrives.
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            loop {
                match q.lease(1, Duration::from_secs(5)).await {
                    Ok(l) if !l.is_empty() => return l,
                    Ok(_) => continue,
                    Err(e) => panic!("lease failed: {e}"),
                }
            }
        })
    };
    let _: i64 = c.del(&keys.streams[..]).await.expect("del");
    let t = Task::new("k", "after");
    q.enqueue(t.clone()).await.expect("enqueue");
    let l = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("leased in time")
        .expect("join");
    assert_eq!(l[0].task().id, t.id);
    q.ack(&l[0]).await.expect("ack");
    q.destroy().await.expect("destroy");
}

/// Keys of one queue carry one hash tag, and the prefix is configurable.
async fn key_layout(url: String) {
    let name = unique_name("layout");
    let q = queue(&url, &name, "c1", Duration::from_secs(30)).await;
    let k = q.keys();
    for key in k
        .streams
        .iter()
        .chain([&k.delayed, &k.dead, &k.idempotency_prefix])
    {
        assert!(key.starts_with(&format!("astest:{{{name}}}:")), "{key}");
    }
    q.enqueue(Task::new("k", "x").with_priority(Priority::High))
        .await
        .expect("enqueue");
    let mut c = raw_conn(&url).await;
    let len: i64 = c.xlen(&k.streams[0]).await.expect("xlen");
    assert_eq!(len, 1);
    assert_eq!(q.capabilities().priority_levels, 3);
    assert!(format!("{q:?}").contains(&name));
    q.destroy().await.expect("destroy");
}

/// Connecting with an invalid config fails with InvalidConfig; a URL with a
/// password never shows up in Debug or errors.
async fn invalid_config_refused() {
    let err = RedisQueue::connect(RedisQueueConfig::new("http://x", "q"))
        .await
        .expect_err("invalid");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    let err = RedisQueue::connect(RedisQueueConfig::new("redis://u:sekrit@127.0.0.1:1", "q"))
        .await
        .expect_err("nothing listens on port 1");
    assert!(!err.to_string().contains("sekrit"), "{err}");
}

/// The KEDA manifest shipped in deploy/ names exactly the keys and
/// consumer group the queue uses (queue `agents`, default prefix and group),
/// so the native `redis-streams` scaler reads the right lag.
async fn keda_manifest_matches_key_layout() {
    let manifest = include_str!("../../deploy/overlays/keda-redis/scaledobject.yaml");
    let defaults = RedisQueueConfig::new("redis://h", "agents");
    let keys = agentscale_queue::redis::RedisQueueKeys::new(&defaults.key_prefix, &defaults.queue);
    for stream in &keys.streams {
        assert!(
            manifest.contains(&format!("stream: \"{stream}\"")),
            "manifest lacks a trigger on {stream}"
        );
    }
    let group_lines = manifest
        .lines()
        .filter(|l| l.trim() == format!("consumerGroup: {}", defaults.consumer_group))
        .count();
    assert_eq!(
        group_lines, 3,
        "one trigger per priority stream, all on the default group"
    );
    assert!(manifest.contains("lagCount:"), "scales on group lag");
    let config = include_str!("../../deploy/base/configmap.yaml");
    assert!(
        config.contains("queue = \"agents\""),
        "the Deployment's ConfigMap runs queue `agents`"
    );
}

/// One `RedisConfig` and one `Redis` handle serve a queue, a session store
/// and a tool cache together: every command of all three goes over the one
/// multiplexed connection of the handle.
async fn one_connection_serves_queue_session_store_and_tool_cache(url: String) {
    use agentscale_core::{SessionKey, SessionStore, ToolCache, ToolKey};
    use agentscale_redis::{Redis, RedisConfig};
    use agentscale_state::redis::{RedisSessionStore, RedisStateConfig, RedisToolCache};

    let name = agentscale_tests::unique_name("shared-conn");
    let redis = Redis::connect(RedisConfig::builder().url(url.clone()).build().expect("config"))
        .await
        .expect("connect");
    // Name the shared connection so the server can tell us who talks on it.
    let mut conn = redis.connection();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(&name)
        .query_async(&mut conn)
        .await
        .expect("setname");

    let queue = RedisQueue::new(
        redis.clone(),
        RedisQueueConfig::new("redis://unused.invalid:1", name.clone()).with_key_prefix("astest"),
    )
    .await
    .expect("queue");
    let state_cfg =
        RedisStateConfig::new("redis://unused.invalid:1").with_key_prefix(format!("astest:{name}"));
    let sessions = RedisSessionStore::new(redis.clone(), state_cfg.clone())
        .await
        .expect("sessions");
    let tools = RedisToolCache::new(redis.clone(), state_cfg)
        .await
        .expect("tools");

    queue.enqueue(Task::new("k", "shared")).await.expect("enqueue");
    let leases = queue.lease(1, Duration::from_secs(2)).await.expect("lease");
    assert_eq!(leases.len(), 1);
    queue.ack(&leases[0]).await.expect("ack");
    let key = SessionKey::new("acme", &name).expect("key");
    let v = sessions.put(&key, 0, "{}".into()).await.expect("put");
    assert_eq!(sessions.get(&key).await.expect("get").map(|s| s.version), Some(v));
    let tk = ToolKey::new("acme", "search", "v1", &serde_json::json!({"q": name})).expect("tool key");
    tools
        .put(&tk, "hit".into(), Duration::from_secs(60))
        .await
        .expect("tool put");
    assert_eq!(
        tools.get(&tk).await.expect("tool get").as_deref(),
        Some(&b"hit"[..])
    );

    // Exactly one client carries the name: the three backends did not open
    // connections of their own for ordinary commands.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut conn)
        .await
        .expect("client list");
    let ours = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
        .count();
    assert_eq!(ours, 1, "{list}");
    queue.destroy().await.expect("destroy");
    sessions.delete(&key).await.expect("delete");
    tools.invalidate(&tk).await.expect("invalidate");
}

/// The same task enqueued twice (a producer's retry after a lost reply)
/// is two entries on the ready stream; a delayed enqueue, or two retries of
/// its two deliveries with the same delay, must not merge them into one
/// (identical envelopes once collapsed into one sorted-set member).
async fn identical_delayed_envelopes_stay_two_tasks(url: String) {
    let q = queue(
        &url,
        &agentscale_tests::unique_name("delayed-twins"),
        "c1",
        Duration::from_secs(30),
    )
    .await;
    let task = Task::new("twin", "same").with_delay(Duration::from_millis(200));
    q.enqueue(task.clone()).await.expect("first");
    q.enqueue(task.clone()).await.expect("second");
    assert_eq!(q.depth().await.expect("depth").delayed, 2);
    let mut leases = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leases.len() < 2 && std::time::Instant::now() < deadline {
        leases.extend(q.lease(2, Duration::from_millis(500)).await.expect("lease"));
    }
    assert_eq!(leases.len(), 2, "both copies are delivered");
    // Both deliveries retried with the same delay: identical envelopes again.
    for l in &leases {
        q.nack(l, Nack::Retry(Duration::from_millis(200)))
            .await
            .expect("nack");
    }
    assert_eq!(q.depth().await.expect("depth").delayed, 2);
    let mut again = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while again.len() < 2 && std::time::Instant::now() < deadline {
        again.extend(q.lease(2, Duration::from_millis(500)).await.expect("lease"));
    }
    assert_eq!(again.len(), 2, "both retries are delivered");
    assert!(again.iter().all(|l| l.attempt() == 2 && l.task().id == task.id));
    for l in &again {
        q.ack(l).await.expect("ack");
    }
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed), (0, 0, 0));
    q.destroy().await.expect("destroy");
}

/// The idempotency-key retention is the configured one (not the 24 h
/// default), a key within it deduplicates, and `destroy` removes the keys
/// with the rest of the queue; out-of-range retentions are refused.
async fn idempotency_retention_is_configurable_and_destroy_removes_keys(url: String) {
    let name = unique_name("idem-ttl");
    let ttl = Duration::from_secs(90);
    let cfg = RedisQueueConfig::new(url.clone(), name.clone())
        .with_key_prefix("astest")
        .with_idempotency_ttl(ttl);
    let q = RedisQueue::connect(cfg.clone()).await.expect("connect");
    let first = q
        .enqueue(Task::new("k", "a").with_idempotency_key("order-7"))
        .await
        .expect("first");
    let again = q
        .enqueue(Task::new("k", "b").with_idempotency_key("order-7"))
        .await
        .expect("again");
    assert!(!first.duplicate && again.duplicate && again.id == first.id);
    let key = format!("{}order-7", q.keys().idempotency_prefix);
    let mut c = raw_conn(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!(pttl > 0 && pttl <= ttl.as_millis() as i64, "PTTL {pttl}");
    q.destroy().await.expect("destroy");
    let exists: i64 = c.exists(&key).await.expect("exists");
    assert_eq!(exists, 0, "destroy leaves no idempotency key");
    // A fresh queue of the same name stores the key again as new.
    let q = RedisQueue::connect(cfg.clone()).await.expect("connect");
    let after = q
        .enqueue(Task::new("k", "c").with_idempotency_key("order-7"))
        .await
        .expect("after");
    assert!(!after.duplicate);
    q.destroy().await.expect("destroy");
    for bad in [Duration::from_millis(500), Duration::from_secs(31 * 24 * 3600)] {
        let e = RedisQueue::connect(cfg.clone().with_idempotency_ttl(bad))
            .await
            .expect_err("out of range");
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    }
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .queue("redis", setup)
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "fencing_across_consumers",
                fencing_across_consumers,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "settled_entries_deleted_and_lag_matches_ready",
                settled_entries_deleted_and_lag_matches_ready,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "foreign_entry_without_task_field",
                foreign_entry_without_task_field,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "recovers_when_group_vanishes",
                recovers_when_group_vanishes,
            )
            .service_test("AGENTSCALE_REDIS_URL", "key_layout", key_layout)
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "one_connection_serves_queue_session_store_and_tool_cache",
                one_connection_serves_queue_session_store_and_tool_cache,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "identical_delayed_envelopes_stay_two_tasks",
                identical_delayed_envelopes_stay_two_tasks,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "idempotency_retention_is_configurable_and_destroy_removes_keys",
                idempotency_retention_is_configurable_and_destroy_removes_keys,
            )
            .test("invalid_config_refused", invalid_config_refused)
            .test(
                "keda_manifest_matches_key_layout",
                keda_manifest_matches_key_layout,
            )
    })
}
