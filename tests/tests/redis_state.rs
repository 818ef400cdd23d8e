//! The state conformance suites against real Redis (`AGENTSCALE_REDIS_URL`),
//! plus Redis-specific checks: single-flight across replicas, lock lease
//! recovery, TTL on every key, refresh on read, error mapping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{ErrorKind, SessionKey, SessionStore, ToolCache, ToolKey};
use agentscale_state::redis::{RedisSessionStore, RedisStateConfig, RedisToolCache};
use agentscale_testkit::{
    service_env, unique_name, SessionFixture, SessionParams, SetupResult, Suites, ToolCacheFixture,
    ToolCacheParams,
};
use agentscale_tests::redis_server::TestRedis;
use agentscale_tests::OwnedServer;
use bytes::Bytes;
use redis::AsyncCommands;

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// Every key under `prefix`.
async fn keys_under(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = raw(url).await;
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys
}

/// Deletes every key under `prefix`.
async fn cleanup(url: String, prefix: String) {
    let keys = keys_under(&url, &prefix).await;
    if !keys.is_empty() {
        let mut conn = raw(&url).await;
        let _: () = conn.del(keys).await.expect("del");
    }
}

fn config(url: &str, prefix: &str) -> RedisStateConfig {
    RedisStateConfig::new(url).with_key_prefix(prefix)
}

async fn sessions(p: SessionParams) -> SetupResult<SessionFixture> {
    let url = service_env("AGENTSCALE_REDIS_URL")?;
    let prefix = p.namespace;
    let cfg = config(&url, &prefix)
        .with_ttl(p.ttl)
        .with_history_cap(p.history_cap);
    let store = RedisSessionStore::connect(cfg).await?;
    Ok(SessionFixture::new(Arc::new(store)).with_cleanup(move || cleanup(url, prefix)))
}

/// The tool-cache settings of the Redis-specific tests below.
const NEGATIVE_TTL: Duration = Duration::from_secs(600);
const MAX_VALUE_BYTES: usize = 64 * 1024;

fn tool_config(url: &str, prefix: &str, negative_ttl: Duration, max_value_bytes: usize) -> RedisStateConfig {
    let mut cfg = config(url, prefix);
    cfg.tool_negative_ttl = negative_ttl;
    cfg.tool_max_value_bytes = max_value_bytes;
    cfg
}

async fn tools(p: ToolCacheParams) -> SetupResult<ToolCacheFixture> {
    let url = service_env("AGENTSCALE_REDIS_URL")?;
    let prefix = p.namespace.clone();
    let cache =
        RedisToolCache::connect(tool_config(&url, &prefix, p.negative_ttl, p.max_value_bytes)).await?;
    Ok(ToolCacheFixture::new(Arc::new(cache)).with_cleanup(move || cleanup(url, prefix)))
}

/// Two replicas (separate instances, separate connections, separate level-1
/// caches) and many concurrent callers: one computation per key fleet-wide.
async fn single_flight_across_replicas(url: String) {
    let prefix = unique_name("st");
    let cfg = tool_config(&url, &prefix, NEGATIVE_TTL, MAX_VALUE_BYTES);
    let replicas = [
        Arc::new(RedisToolCache::connect(cfg.clone()).await.expect("replica a")),
        Arc::new(RedisToolCache::connect(cfg).await.expect("replica b")),
    ];
    const KEYS: usize = 3;
    const CALLERS_PER_REPLICA_AND_KEY: usize = 24;
    let tenant = unique_name("tenant");
    let computed: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..CALLERS_PER_REPLICA_AND_KEY {
        for ki in 0..KEYS {
            for (ri, replica) in replicas.iter().enumerate() {
                let (replica, computed, tenant) = (replica.clone(), computed.clone(), tenant.clone());
                tasks.push(tokio::spawn(async move {
                    let key =
                        ToolKey::new(tenant, "search", "v1", &serde_json::json!({ "q": ki })).expect("key");
                    let v = replica
                        .get_or_compute(
                            &key,
                            Duration::from_secs(600),
                            Box::pin(async move {
                                computed[ki].fetch_add(1, Ordering::SeqCst);
                                // Simulated tool latency so that callers overlap.
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                Ok(Bytes::from(format!("answer-{ki}")))
                            }),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("replica {ri} caller {i}: {e}"));
                    assert_eq!(v, Bytes::from(format!("answer-{ki}")));
                }));
            }
        }
    }
    for t in tasks {
        t.await.expect("join");
    }
    for (ki, n) in computed.iter().enumerate() {
        assert_eq!(
            n.load(Ordering::SeqCst),
            1,
            "key {ki} computed more than once fleet-wide"
        );
    }
    cleanup(url, prefix).await;
}

/// A replica that died while computing (its lock key left behind, no more
/// renewals) blocks others only until the lease runs out; then another
/// replica computes.
async fn crashed_computer_lease_expires(url: String) {
    let prefix = unique_name("st");
    let mut cfg = tool_config(&url, &prefix, NEGATIVE_TTL, MAX_VALUE_BYTES);
    cfg.tool_lock_lease = Duration::from_secs(30);
    let b = RedisToolCache::connect(cfg).await.expect("replica b");
    let tenant = unique_name("tenant");
    let key = ToolKey::new(tenant.as_str(), "slow", "v1", &serde_json::json!({})).expect("key");
    // What a crashed replica leaves behind: its lock, with a short remaining lease.
    let lock = format!("{prefix}:{{{tenant}:tool:slow:v1:{}}}:lock", key.args_digest());
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("dead-replica")
        .arg("PX")
        .arg(700)
        .query_async(&mut conn)
        .await
        .expect("set");
    let computed = AtomicUsize::new(0);
    let v = b
        .get_or_compute(
            &key,
            Duration::from_secs(600),
            Box::pin(async {
                computed.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::from_static(b"recovered"))
            }),
        )
        .await
        .expect("b computes after the lease expires");
    assert_eq!(&v[..], b"recovered");
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    let exists: bool = conn.exists(&lock).await.expect("exists");
    assert!(!exists, "b released its own lock");
    cleanup(url, prefix).await;
}

/// A caller cancelled while computing (task timeout, shutdown) releases the
/// lock at once: another replica computes without waiting for the (here one
/// hour) lease, well within its wait timeout.
async fn cancelled_computer_releases_the_lock(url: String) {
    let prefix = unique_name("st");
    let mut cfg = tool_config(&url, &prefix, NEGATIVE_TTL, MAX_VALUE_BYTES);
    cfg.tool_lock_lease = Duration::from_secs(3600);
    cfg.tool_wait_timeout = Duration::from_secs(20);
    let a = Arc::new(RedisToolCache::connect(cfg.clone()).await.expect("replica a"));
    let b = RedisToolCache::connect(cfg).await.expect("replica b");
    let key = ToolKey::new(unique_name("tenant"), "slow", "v1", &serde_json::json!({})).expect("key");
    let started = Arc::new(tokio::sync::Notify::new());
    let (a2, k2, s2) = (a.clone(), key.clone(), started.clone());
    let cancelled = tokio::spawn(async move {
        a2.get_or_compute(
            &k2,
            Duration::from_secs(600),
            Box::pin(async move {
                s2.notify_one();
                futures::future::pending::<()>().await;
                Ok(Bytes::from_static(b"never"))
            }),
        )
        .await
    });
    started.notified().await;
    cancelled.abort();
    assert!(cancelled.await.expect_err("aborted").is_cancelled());
    let computed = AtomicUsize::new(0);
    let v = b
        .get_or_compute(
            &key,
            Duration::from_secs(600),
            Box::pin(async {
                computed.fetch_add(1, Ordering::SeqCst);
                Ok(Bytes::from_static(b"taken over"))
            }),
        )
        .await
        .expect("b computes once a's lock is released");
    assert_eq!(&v[..], b"taken over");
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    cleanup(url, prefix).await;
}

/// The documented key layout: every key of a session carries the same hash
/// tag and a TTL; no key is ever left without one.
async fn every_key_has_a_ttl_and_the_session_hash_tag(url: String) {
    let prefix = unique_name("st");
    let ttl = Duration::from_secs(3600);
    let store = RedisSessionStore::connect(config(&url, &prefix).with_ttl(ttl))
        .await
        .expect("connect");
    let tools = RedisToolCache::connect(config(&url, &prefix))
        .await
        .expect("connect");
    let tenant = unique_name("tenant");
    let key = SessionKey::new(tenant.as_str(), "chat-1").expect("key");
    store.put(&key, 0, Bytes::from_static(b"s")).await.expect("put");
    store
        .append(&key, Bytes::from_static(b"h"))
        .await
        .expect("append");
    let gone = SessionKey::new(tenant.as_str(), "chat-2").expect("key");
    store.put(&gone, 0, Bytes::from_static(b"s")).await.expect("put");
    store.delete(&gone).await.expect("delete");
    let tk = ToolKey::new(tenant.as_str(), "t", "v1", &serde_json::json!({})).expect("key");
    tools
        .get_or_compute(
            &tk,
            Duration::from_secs(60),
            Box::pin(async { Ok(Bytes::from_static(b"v")) }),
        )
        .await
        .expect("tool");

    let mut keys = keys_under(&url, &prefix).await;
    keys.sort();
    let want = [
        format!("{prefix}:{{{tenant}:sess:chat-1}}:hist"),
        format!("{prefix}:{{{tenant}:sess:chat-1}}:state"),
        format!("{prefix}:{{{tenant}:sess:chat-2}}:state"),
        format!("{prefix}:{{{tenant}:tool:t:v1:{}}}:val", tk.args_digest()),
    ];
    assert_eq!(keys, want);
    let mut conn = raw(&url).await;
    for k in &keys {
        let pttl: i64 = conn.pttl(k).await.expect("pttl");
        assert!(pttl > 0, "{k} has no TTL ({pttl})");
        assert!(pttl <= 3_600_000, "{k}: {pttl}");
    }
    cleanup(url, prefix).await;
}

/// With refresh_on_read, get and history restart the TTL; without, they don't.
async fn refresh_on_read_restarts_the_ttl(url: String) {
    let prefix = unique_name("st");
    let ttl = Duration::from_secs(3600);
    let tenant = unique_name("tenant");
    let key = SessionKey::new(tenant.as_str(), "s").expect("key");
    let state = format!("{prefix}:{{{tenant}:sess:s}}:state");
    let hist = format!("{prefix}:{{{tenant}:sess:s}}:hist");
    let mut conn = raw(&url).await;
    for refresh in [false, true] {
        let store =
            RedisSessionStore::connect(config(&url, &prefix).with_ttl(ttl).with_refresh_on_read(refresh))
                .await
                .expect("c");
        let v = store.get(&key).await.expect("get").map_or(0, |s| s.version);
        store.put(&key, v, Bytes::from_static(b"x")).await.expect("put");
        store
            .append(&key, Bytes::from_static(b"h"))
            .await
            .expect("append");
        for k in [&state, &hist] {
            let _: () = conn.pexpire(k, 100_000).await.expect("pexpire");
        }
        assert!(store.get(&key).await.expect("get").is_some());
        let after_get: i64 = conn.pttl(&state).await.expect("pttl");
        let hist_after_get: i64 = conn.pttl(&hist).await.expect("pttl");
        for k in [&state, &hist] {
            let _: () = conn.pexpire(k, 100_000).await.expect("pexpire");
        }
        assert!(!store.history(&key, 10).await.expect("history").is_empty());
        let after_history: i64 = conn.pttl(&state).await.expect("pttl");
        if refresh {
            assert!(
                after_get > 100_000 && hist_after_get > 100_000,
                "get refreshed: {after_get} {hist_after_get}"
            );
            assert!(after_history > 100_000, "history refreshed: {after_history}");
        } else {
            assert!(
                after_get <= 100_000 && hist_after_get <= 100_000,
                "get must not refresh"
            );
            assert!(after_history <= 100_000, "history must not refresh");
        }
    }
    cleanup(url, prefix).await;
}

/// Unreachable Redis is a retryable Unavailable, not a panic or a hang.
async fn connection_refused_is_unavailable() {
    let mut cfg = RedisStateConfig::new("redis://:secret-pw@127.0.0.1:1");
    cfg.connect_timeout = Duration::from_secs(2);
    let err = RedisSessionStore::connect(cfg.clone())
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(!err.to_string().contains("secret-pw"), "{err}");
    let err = RedisToolCache::connect(cfg)
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let err = RedisSessionStore::connect(RedisStateConfig::new("redis://h:1").with_history_cap(0))
        .await
        .expect_err("invalid config");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}

/// Redis killed and restarted: calls fail with a retryable error while it is
/// down, then the stores recover by themselves (reconnect, scripts reloaded
/// after `NOSCRIPT`) with the data the AOF kept.
async fn recovers_after_redis_restart(_url: String) {
    let mut server = TestRedis::start();
    let mut cfg = config(&server.url(), "st");
    cfg.command_timeout = Duration::from_secs(1);
    cfg.connect_timeout = Duration::from_secs(1);
    let store = RedisSessionStore::connect(cfg.clone()).await.expect("connect");
    let tools = RedisToolCache::connect(cfg).await.expect("connect");
    let key = SessionKey::new("acme", "survivor").expect("key");
    assert_eq!(
        store.put(&key, 0, Bytes::from_static(b"one")).await.expect("put"),
        1
    );

    server.kill();
    let err = store.get(&key).await.expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");
    let err = store
        .put(&key, 1, Bytes::from_static(b"two"))
        .await
        .expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");

    server.spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        match store.get(&key).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no recovery after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        state.map(|s| (s.version, s.data)),
        Some((1, Bytes::from_static(b"one")))
    );
    assert_eq!(
        store
            .put(&key, 1, Bytes::from_static(b"two"))
            .await
            .expect("put after restart"),
        2
    );
    let tk = ToolKey::new("acme", "t", "v1", &serde_json::json!({})).expect("key");
    let calls = AtomicUsize::new(0);
    let v = loop {
        let r = tools
            .get_or_compute(
                &tk,
                Duration::from_secs(60),
                Box::pin(async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(Bytes::from_static(b"v"))
                }),
            )
            .await;
        match r {
            Ok(v) => break v,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "tool cache did not recover: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(&v[..], b"v");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .session("redis", sessions)
            .tool_cache("redis", tools)
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "single_flight_across_replicas",
                single_flight_across_replicas,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "crashed_computer_lease_expires",
                crashed_computer_lease_expires,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "cancelled_computer_releases_the_lock",
                cancelled_computer_releases_the_lock,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "every_key_has_a_ttl_and_the_session_hash_tag",
                every_key_has_a_ttl_and_the_session_hash_tag,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "refresh_on_read_restarts_the_ttl",
                refresh_on_read_restarts_the_ttl,
            )
            .test(
                "connection_refused_is_unavailable",
                connection_refused_is_unavailable,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "recovers_after_redis_restart",
                recovers_after_redis_restart,
            )
    })
}
