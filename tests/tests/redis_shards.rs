//! One Redis queue over several streams (`RedisQueueConfig::shards`): the
//! queue conformance suite with 3 shards on one Redis server
//! (`AGENTSCALE_REDIS_URL`) and on the Redis Cluster
//! (`AGENTSCALE_REDIS_CLUSTER_URLS`, from `AGENTSCALE_SERVICES=rediscluster
//! scripts/dev-services up`), plus checks specific to shards: leases are
//! shared fairly between loaded shards, an idempotency key is deduplicated
//! whichever process and shard enqueues it, receipts route to their shard
//! (an unknown shard is a typed error), and on the Cluster the shards land on
//! different slots and masters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentscale_core::{ErrorKind, Lease, Nack, Priority, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_redis::{key_slot, Redis, RedisConfig, RedisConnection};
use agentscale_testkit::{service_env, unique_name, QueueFixture, QueueOptions, SetupResult, Suites};
use agentscale_tests::redis_fixture::queue_fixture;

const SHARDS: usize = 3;
const CLUSTER: &str = "AGENTSCALE_REDIS_CLUSTER_URLS";
const SINGLE: &str = "AGENTSCALE_REDIS_URL";

fn config(name: &str) -> RedisQueueConfig {
    RedisQueueConfig::builder()
        .url("redis://unused")
        .queue(name)
        .key_prefix("astest")
        .shards(SHARDS)
        .build()
        .expect("config")
}

async fn cluster(urls: &str) -> Redis {
    let seeds: Vec<String> = urls
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let cfg = RedisConfig::builder()
        .cluster_nodes(seeds)
        .build()
        .expect("cluster config");
    Redis::connect(cfg).await.expect("connect to the cluster")
}

async fn single(url: &str) -> Redis {
    let cfg = RedisConfig::builder().url(url).build().expect("config");
    Redis::connect(cfg).await.expect("connect")
}

/// The conformance fixture: a 3-shard queue on `redis`. Raw entries are
/// injected into shard 0's normal stream.
async fn fixture(redis: Redis, opts: QueueOptions) -> SetupResult<QueueFixture> {
    let config = config(&opts.name)
        .with_lease_timeout(opts.lease_timeout)
        .with_max_envelope_bytes(opts.max_envelope_bytes)
        .with_ordered_sessions(opts.ordered_sessions);
    let queue = RedisQueue::new(redis.clone(), config).await?;
    assert_eq!(queue.shards(), SHARDS);
    Ok(queue_fixture(redis, queue))
}

async fn single_setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let url = service_env(SINGLE)?;
    fixture(single(&url).await, opts).await
}

async fn cluster_setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let urls = service_env(CLUSTER)?;
    fixture(cluster(&urls).await, opts).await
}

/// The shard a lease came from (receipts are `<shard>:<prio>:<entry>`).
fn shard_of(l: &Lease) -> usize {
    l.receipt()
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("receipt {:?} names no shard", l.receipt()))
}

/// With every shard loaded, the first N leases are shared between the
/// shards: each gets at least N / (2 · shards) (exact counts, no timing).
/// Then the queue drains completely, each shard's tasks exactly once.
async fn lease_is_fair_across_shards(url: String) {
    const PER_SHARD: usize = 200;
    const FIRST: usize = 300;
    let name = unique_name("fair");
    let q = RedisQueue::new(single(&url).await, config(&name))
        .await
        .expect("queue");
    // Without keys, enqueue is round-robin: PER_SHARD on each shard.
    let tasks: Vec<Task> = (0..PER_SHARD * SHARDS)
        .map(|i| Task::new("k", format!("{i}")))
        .collect();
    for r in q.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    for keys in q.shard_keys() {
        let mut conn = q.redis().connection();
        let len: usize = redis::cmd("XLEN")
            .arg(keys.stream(Priority::Normal))
            .query_async(&mut conn)
            .await
            .expect("xlen");
        assert_eq!(len, PER_SHARD, "round-robin enqueue fills {}", keys.dead);
    }
    let mut per_shard: BTreeMap<usize, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut leased = 0;
    while leased < PER_SHARD * SHARDS {
        let leases = q.lease(7, Duration::from_secs(2)).await.expect("lease");
        assert!(!leases.is_empty(), "ran dry after {leased}");
        for l in &leases {
            if leased < FIRST {
                *per_shard.entry(shard_of(l)).or_default() += 1;
            }
            leased += 1;
            assert!(seen.insert(l.task().id.clone()), "delivered twice");
        }
        for r in q.ack_batch(&leases).await {
            r.expect("ack");
        }
    }
    assert_eq!(per_shard.values().sum::<usize>(), FIRST);
    for s in 0..SHARDS {
        let got = per_shard.get(&s).copied().unwrap_or(0);
        assert!(
            got >= FIRST / (2 * SHARDS),
            "shard {s} got {got} of the first {FIRST} leases: {per_shard:?}"
        );
    }
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight), (0, 0), "{d:?}");
    q.destroy().await.expect("destroy");
}

/// An idempotency key is stored once across shards and processes: two
/// queue handles (two consumer names, their own round-robin) enqueue the
/// same keys, singly and in batches; every second enqueue is a duplicate
/// returning the first id, and the keys spread over more than one shard.
async fn idempotency_holds_across_shards(redis: Redis) {
    const KEYS: usize = 60;
    let name = unique_name("idem");
    let a = RedisQueue::new(redis.clone(), config(&name).with_consumer_name("a"))
        .await
        .expect("queue a");
    let b = RedisQueue::new(redis, config(&name).with_consumer_name("b"))
        .await
        .expect("queue b");
    let keyed = |i: usize, p: &str| Task::new("k", p.to_string()).with_idempotency_key(format!("key-{i}"));
    let mut first = Vec::new();
    for i in 0..KEYS / 2 {
        let e = a.enqueue(keyed(i, "a")).await.expect("enqueue");
        assert!(!e.duplicate);
        first.push(e.id);
    }
    for r in a
        .enqueue_batch((KEYS / 2..KEYS).map(|i| keyed(i, "a")).collect())
        .await
    {
        let e = r.expect("enqueue batch");
        assert!(!e.duplicate);
        first.push(e.id);
    }
    // The other handle, in the other order, singly and batched.
    for i in (0..KEYS / 2).rev() {
        let e = b.enqueue(keyed(i, "b")).await.expect("enqueue again");
        assert!(e.duplicate, "key-{i} stored twice");
        assert_eq!(e.id, first[i]);
    }
    let again = b
        .enqueue_batch((KEYS / 2..KEYS).map(|i| keyed(i, "b")).collect())
        .await;
    for (i, r) in (KEYS / 2..KEYS).zip(again) {
        let e = r.expect("enqueue batch again");
        assert!(e.duplicate, "key-{i} stored twice");
        assert_eq!(e.id, first[i]);
    }
    assert_eq!(a.depth().await.expect("depth").ready, KEYS as u64);
    let mut used = BTreeSet::new();
    let mut got = 0;
    while got < KEYS {
        let leases = b.lease(16, Duration::from_secs(2)).await.expect("lease");
        assert!(!leases.is_empty(), "ran dry after {got}");
        for l in &leases {
            assert_eq!(l.task().payload.as_ref(), b"a", "the first enqueue is kept");
            used.insert(shard_of(l));
            b.ack(l).await.expect("ack");
            got += 1;
        }
    }
    assert!(used.len() > 1, "keys spread over shards: {used:?}");
    a.destroy().await.expect("destroy");
}

async fn idempotency_single(url: String) {
    idempotency_holds_across_shards(single(&url).await).await;
}

async fn idempotency_cluster(urls: String) {
    idempotency_holds_across_shards(cluster(&urls).await).await;
}

/// Receipts route to their shard: a forged receipt naming shard 7 of a
/// 3-shard queue is `InvalidInput` (for ack, nack, extend, ack_batch),
/// never a panic, and the genuine lease still settles; a dead-letter id
/// names its shard and replays there.
async fn receipts_and_dead_letter_ids_route_by_shard(url: String) {
    let name = unique_name("route");
    let q = RedisQueue::new(single(&url).await, config(&name))
        .await
        .expect("queue");
    for i in 0..SHARDS {
        q.enqueue(Task::new("k", format!("{i}"))).await.expect("enqueue");
    }
    let mut leases = Vec::new();
    while leases.len() < SHARDS {
        leases.extend(q.lease(SHARDS, Duration::from_secs(2)).await.expect("lease"));
    }
    let shards: BTreeSet<usize> = leases.iter().map(shard_of).collect();
    assert_eq!(shards.len(), SHARDS, "one task per shard");
    let real = &leases[0];
    let forged_receipt = format!("7:{}", real.receipt().split_once(':').expect("receipt").1);
    let forged = Lease::new(real.task().clone(), real.attempt(), forged_receipt, real.fence());
    let kind = |r: agentscale_core::Result<()>| r.map_err(|e| e.kind());
    assert_eq!(kind(q.ack(&forged).await), Err(ErrorKind::InvalidInput));
    assert_eq!(
        kind(q.extend(&forged, Duration::from_secs(1)).await),
        Err(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(q.nack(&forged, Nack::Release).await),
        Err(ErrorKind::InvalidInput)
    );
    let batch = q.ack_batch(&[forged, real.clone()]).await;
    assert_eq!(
        batch[0].as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::InvalidInput)
    );
    assert!(batch[1].is_ok(), "the genuine lease in the same batch acks");
    // Dead-letter the other two, list them (ids name the shard), replay one.
    for l in &leases[1..] {
        q.nack(l, Nack::DeadLetter("route test".into()))
            .await
            .expect("dead-letter");
    }
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 2);
    for d in &dead {
        let (s, _) = d.id.split_once(':').expect("shard in the dead-letter id");
        assert!(s.parse::<usize>().expect("shard number") < SHARDS, "{}", d.id);
    }
    assert_eq!(
        q.replay_dead_letter("9:1-0").await.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound)
    );
    q.replay_dead_letter(&dead[0].id).await.expect("replay");
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.dead), (1, 1), "{d:?}");
    assert_eq!(q.purge_dead_letters().await.expect("purge"), 1);
    q.destroy().await.expect("destroy");
}

/// The master serving each slot range (`CLUSTER SLOTS`: start, end, master
/// "host:port").
async fn slot_owners(conn: &mut RedisConnection) -> Vec<(u16, u16, String)> {
    let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(conn)
        .await
        .expect("cluster slots");
    let mut out = Vec::new();
    for range in slots {
        let redis::Value::Array(mut items) = range else {
            panic!("cluster slots reply")
        };
        items.truncate(3);
        if let Some(redis::Value::Array(m)) = items.get_mut(2) {
            m.truncate(2);
        }
        let (start, end, (host, port)): (u16, u16, (String, u16)) =
            redis::from_owned_redis_value(redis::Value::Array(items)).expect("slot range");
        out.push((start, end, format!("{host}:{port}")));
    }
    out
}

/// On the Cluster the shards' keys live in different slots, served by
/// more than one master (with the cluster's even split, by all three).
async fn shards_spread_over_masters(urls: String) {
    let redis = cluster(&urls).await;
    let name = unique_name("spread");
    let q = RedisQueue::new(redis.clone(), config(&name))
        .await
        .expect("queue");
    let owners = slot_owners(&mut redis.connection()).await;
    let mut slots = BTreeSet::new();
    let mut masters = BTreeSet::new();
    for keys in q.shard_keys() {
        let slot = key_slot(keys.stream(Priority::Normal).as_bytes());
        // Every key of a shard shares its slot.
        for k in [&keys.streams[0], &keys.streams[2], &keys.delayed, &keys.dead] {
            assert_eq!(key_slot(k.as_bytes()), slot, "{k}");
        }
        let master = owners
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&slot))
            .map(|o| o.2.clone())
            .unwrap_or_else(|| panic!("no master serves slot {slot}"));
        eprintln!("shard {} slot {slot} on {master}", keys.dead);
        slots.insert(slot);
        masters.insert(master);
    }
    assert_eq!(slots.len(), SHARDS, "one slot per shard");
    assert!(masters.len() > 1, "shards on one master: {masters:?}");
    // Work flows through every shard on its own master.
    for i in 0..30 {
        q.enqueue(Task::new("k", format!("{i}"))).await.expect("enqueue");
    }
    let mut used = BTreeSet::new();
    let mut got = 0;
    while got < 30 {
        let leases = q.lease(8, Duration::from_secs(2)).await.expect("lease");
        assert!(!leases.is_empty(), "ran dry after {got}");
        used.extend(leases.iter().map(shard_of));
        got += leases.len();
        for r in q.ack_batch(&leases).await {
            r.expect("ack");
        }
    }
    assert_eq!(used.len(), SHARDS);
    q.destroy().await.expect("destroy");
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .queue("redis_shards3", single_setup)
            .queue("redis_cluster_shards3", cluster_setup)
            .service_test(SINGLE, "lease_is_fair_across_shards", lease_is_fair_across_shards)
            .service_test(SINGLE, "idempotency_holds_across_shards", idempotency_single)
            .service_test(
                CLUSTER,
                "cluster_idempotency_holds_across_shards",
                idempotency_cluster,
            )
            .service_test(
                SINGLE,
                "receipts_and_dead_letter_ids_route_by_shard",
                receipts_and_dead_letter_ids_route_by_shard,
            )
            .service_test(
                CLUSTER,
                "cluster_shards_spread_over_masters",
                shards_spread_over_masters,
            )
    })
}
