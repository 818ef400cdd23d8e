//! The queue, session-store and tool-cache conformance suites on a real
//! Redis Cluster (3 masters + 3 replicas from `scripts/dev-services up`,
//! seed nodes in `AGENTSCALE_REDIS_CLUSTER_URLS`), through the same
//! `Redis` handle as on one server, plus cluster checks: queues whose hash
//! tags live on different masters work through one handle, and a queue
//! keeps working while its slot is migrated to another master (the client
//! follows `ASK` and `MOVED`; nothing is lost or duplicated).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_redis::{key_slot, Redis, RedisConfig, RedisConnection};
use agentscale_state::redis::{RedisSessionStore, RedisStateConfig, RedisToolCache};
use agentscale_testkit::{
    service_env, unique_name, QueueFixture, QueueOptions, SessionFixture, SessionParams, SetupResult, Suites,
    ToolCacheFixture, ToolCacheParams,
};
use agentscale_tests::redis_fixture::queue_fixture;

const VAR: &str = "AGENTSCALE_REDIS_CLUSTER_URLS";

fn seeds(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn cluster(urls: &str) -> Redis {
    let cfg = RedisConfig::builder()
        .cluster_nodes(seeds(urls))
        .build()
        .expect("cluster config");
    let redis = Redis::connect(cfg).await.expect("connect to the cluster");
    assert!(redis.is_cluster());
    redis
}

/// One plain connection per node (masters and replicas).
async fn nodes(urls: &str) -> Vec<(String, redis::aio::MultiplexedConnection)> {
    let mut out = Vec::new();
    for url in seeds(urls) {
        let c = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a node");
        out.push((url, c));
    }
    out
}

/// Deletes every key under `prefix` on every master (SCAN per node, DEL
/// through the cluster connection, which routes each key to its master).
async fn cleanup(urls: String, prefix: String) {
    let redis = cluster(&urls).await;
    let mut conn = redis.connection();
    for (_, mut node) in nodes(&urls).await {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut node)
                .await
                .expect("scan");
            for key in batch {
                let _: i64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("del");
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}

async fn queue_setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let urls = service_env(VAR)?;
    let redis = cluster(&urls).await;
    let config = RedisQueueConfig::new("redis://unused", opts.name.clone())
        .with_key_prefix("astest")
        .with_lease_timeout(opts.lease_timeout)
        .with_max_envelope_bytes(opts.max_envelope_bytes);
    let queue = RedisQueue::new(redis.clone(), config).await?;
    Ok(queue_fixture(redis, queue))
}

async fn sessions(p: SessionParams) -> SetupResult<SessionFixture> {
    let urls = service_env(VAR)?;
    let prefix = p.namespace;
    let cfg = RedisStateConfig::new("redis://unused")
        .with_key_prefix(&prefix)
        .with_ttl(p.ttl)
        .with_history_cap(p.history_cap);
    let store = RedisSessionStore::new(cluster(&urls).await, cfg).await?;
    Ok(SessionFixture::new(Arc::new(store)).with_cleanup(move || cleanup(urls, prefix)))
}

async fn tools(p: ToolCacheParams) -> SetupResult<ToolCacheFixture> {
    let urls = service_env(VAR)?;
    let prefix = p.namespace.clone();
    let mut cfg = RedisStateConfig::new("redis://unused").with_key_prefix(&prefix);
    cfg.tool_negative_ttl = p.negative_ttl;
    cfg.tool_max_value_bytes = p.max_value_bytes;
    let cache = RedisToolCache::new(cluster(&urls).await, cfg).await?;
    Ok(ToolCacheFixture::new(Arc::new(cache)).with_cleanup(move || cleanup(urls, prefix)))
}

/// The master serving each slot range: `CLUSTER SLOTS` as (start, end,
/// "host:port", node id).
async fn slot_owners(conn: &mut RedisConnection) -> Vec<(u16, u16, String, String)> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .expect("cluster slots");
    let mut out = Vec::new();
    for range in slots {
        let (start, end, master): (u16, u16, (String, u16, String)) =
            match redis::from_owned_redis_value::<(u16, u16, (String, u16, String))>(trim(range)) {
                Ok(v) => v,
                Err(e) => panic!("cluster slots reply: {e}"),
            };
        out.push((start, end, format!("{}:{}", master.0, master.1), master.2));
    }
    out
}

/// The first three entries of a `CLUSTER SLOTS` range (start, end, master),
/// the master itself cut to (host, port, id).
fn trim(v: redis::Value) -> redis::Value {
    match v {
        redis::Value::Array(mut items) => {
            items.truncate(3);
            if let Some(redis::Value::Array(m)) = items.get_mut(2) {
                m.truncate(3);
            }
            redis::Value::Array(items)
        }
        other => other,
    }
}

fn owner_of(owners: &[(u16, u16, String, String)], slot: u16) -> (String, String) {
    owners
        .iter()
        .find(|(s, e, _, _)| (*s..=*e).contains(&slot))
        .map(|(_, _, addr, id)| (addr.clone(), id.clone()))
        .unwrap_or_else(|| panic!("no master serves slot {slot}"))
}

/// Queues whose hash tags live on three different masters all enqueue,
/// lease and ack through one handle (commands routed by slot).
async fn cluster_queues_on_every_master(urls: String) {
    let redis = cluster(&urls).await;
    let owners = slot_owners(&mut redis.connection()).await;
    let masters: BTreeSet<String> = owners.iter().map(|o| o.2.clone()).collect();
    assert!(masters.len() >= 3, "expected 3 masters, got {masters:?}");
    // Pick one queue name per master.
    let mut picked: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while picked.len() < masters.len() {
        let name = unique_name(&format!("spread{i}"));
        let (addr, _) = owner_of(&owners, key_slot(name.as_bytes()));
        if !picked.iter().any(|(_, a)| *a == addr) {
            picked.push((name, addr));
        }
        i += 1;
        assert!(i < 10_000, "could not place a queue on every master");
    }
    for (name, addr) in &picked {
        let q = RedisQueue::new(
            redis.clone(),
            RedisQueueConfig::new("redis://unused", name.clone()).with_key_prefix("astest"),
        )
        .await
        .expect("queue");
        for n in 0..20 {
            q.enqueue(Task::new("k", format!("{n}")).with_idempotency_key(format!("i{n}")))
                .await
                .expect("enqueue");
        }
        let dup = q
            .enqueue(Task::new("k", "again").with_idempotency_key("i3"))
            .await
            .expect("enqueue duplicate");
        assert!(dup.duplicate, "idempotency holds on master {addr}");
        let mut got = 0;
        while got < 20 {
            let leases = q.lease(8, Duration::from_secs(2)).await.expect("lease");
            assert!(!leases.is_empty(), "queue on {addr} ran dry after {got}");
            for l in leases {
                q.ack(&l).await.expect("ack");
                got += 1;
            }
        }
        let d = q.depth().await.expect("depth");
        assert_eq!((d.ready, d.in_flight), (0, 0), "queue on {addr}: {d:?}");
        q.destroy().await.expect("destroy");
    }
}

/// Migrates the slot of a busy queue to another master while producers and
/// a consumer run (`ASK` during the migration, `MOVED` after it): every task
/// is processed once, no call errors.
async fn cluster_slot_migration_under_load(urls: String) {
    const TASKS: usize = 600;
    let redis = cluster(&urls).await;
    let name = unique_name("migrate");
    let slot = key_slot(name.as_bytes());
    let owners = slot_owners(&mut redis.connection()).await;
    let (src_addr, src_id) = owner_of(&owners, slot);
    let (dst_addr, dst_id) = owners
        .iter()
        .map(|o| (o.2.clone(), o.3.clone()))
        .find(|(a, _)| *a != src_addr)
        .expect("another master");
    let q = RedisQueue::new(
        redis.clone(),
        RedisQueueConfig::new("redis://unused", name.clone())
            .with_key_prefix("astest")
            .with_lease_timeout(Duration::from_secs(30)),
    )
    .await
    .expect("queue");

    let producer = {
        let q = q.clone();
        tokio::spawn(async move {
            for n in 0..TASKS {
                q.enqueue(Task::new("k", format!("{n}")).with_idempotency_key(format!("t{n}")))
                    .await
                    .unwrap_or_else(|e| panic!("enqueue {n} during migration: {e}"));
                if n % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };
    let consumer = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while seen.len() < TASKS {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "consumed {} of {TASKS}",
                    seen.len()
                );
                let leases = q
                    .lease(16, Duration::from_millis(200))
                    .await
                    .unwrap_or_else(|e| panic!("lease during migration: {e}"));
                for l in leases {
                    seen.push(String::from_utf8_lossy(&l.task().payload).to_string());
                    q.ack(&l)
                        .await
                        .unwrap_or_else(|e| panic!("ack during migration: {e}"));
                }
            }
            seen
        })
    };

    // Migrate the slot: SETSLOT IMPORTING/MIGRATING, MIGRATE the keys in
    // batches, SETSLOT NODE on both (the documented manual resharding).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut src = node(&src_addr).await;
    let mut dst = node(&dst_addr).await;
    let _: () = cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "IMPORTING", &src_id])
        .query_async(&mut dst)
        .await
        .expect("importing");
    let _: () = cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "MIGRATING", &dst_id])
        .query_async(&mut src)
        .await
        .expect("migrating");
    let (dst_host, dst_port) = dst_addr.rsplit_once(':').expect("addr");
    loop {
        let keys: Vec<String> = cmd(&["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"])
            .query_async(&mut src)
            .await
            .expect("getkeysinslot");
        if keys.is_empty() {
            break;
        }
        let mut m = cmd(&["MIGRATE", dst_host, dst_port, "", "0", "5000", "KEYS"]);
        m.arg(&keys);
        let _: redis::Value = m.query_async(&mut src).await.expect("migrate");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for c in [&mut dst, &mut src] {
        let _: () = cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", &dst_id])
            .query_async(c)
            .await
            .expect("setslot node");
    }

    producer.await.expect("producer");
    let seen = consumer.await.expect("consumer");
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), TASKS, "every task processed");
    assert_eq!(seen.len(), TASKS, "no task processed twice");
    let owners = slot_owners(&mut redis.connection()).await;
    assert_eq!(owner_of(&owners, slot).0, dst_addr, "the slot moved");
    let d = q.depth().await.expect("depth after the migration");
    assert_eq!((d.ready, d.in_flight), (0, 0), "{d:?}");
    q.destroy().await.expect("destroy");
}

fn cmd(parts: &[&str]) -> redis::Cmd {
    let mut c = redis::cmd(parts[0]);
    for p in &parts[1..] {
        c.arg(*p);
    }
    c
}

async fn node(addr: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{addr}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a node")
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .queue("redis_cluster", queue_setup)
            .session("redis_cluster", sessions)
            .tool_cache("redis_cluster", tools)
            .service_test(
                VAR,
                "cluster_queues_on_every_master",
                cluster_queues_on_every_master,
            )
            .service_test(
                VAR,
                "cluster_slot_migration_under_load",
                cluster_slot_migration_under_load,
            )
    })
}
