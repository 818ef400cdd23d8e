//! The state conformance suites on the in-memory backends.

use std::sync::Arc;

use agentscale_core::{MemoryStore, SessionStore, ToolCache};
use agentscale_state::local::{LocalMemoryStore, LocalSessionStore, LocalToolCache};
use agentscale_tests::state_suite::{Fixture, MemoryParams, SessionParams, ToolCacheParams};

async fn sessions(p: SessionParams) -> Option<Fixture<dyn SessionStore>> {
    let store = LocalSessionStore::builder()
        .ttl(p.ttl)
        .history_cap(p.history_cap)
        .build()
        .expect("build");
    Some(Fixture::new(Arc::new(store)))
}

async fn memory(p: MemoryParams) -> Option<Fixture<dyn MemoryStore>> {
    Some(Fixture::new(Arc::new(
        LocalMemoryStore::new(p.dimensions, p.metric).expect("build"),
    )))
}

async fn tools(p: ToolCacheParams) -> Option<Fixture<dyn ToolCache>> {
    let cache = LocalToolCache::builder()
        .negative_ttl(p.negative_ttl)
        .max_value_bytes(p.max_value_bytes)
        .build()
        .expect("build");
    Some(Fixture::new(Arc::new(cache)))
}

agentscale_tests::session_store_conformance!(sessions);
agentscale_tests::memory_store_conformance!(memory);
agentscale_tests::tool_cache_conformance!(tools);

/// A computation whose caller is cancelled is taken over by a waiting caller.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_computation_is_taken_over() {
    use std::time::Duration;
    let cache = Arc::new(LocalToolCache::builder().build().expect("build"));
    let key = agentscale_core::ToolKey::new("t", "tool", "v1", &serde_json::json!({})).expect("key");
    let started = Arc::new(tokio::sync::Notify::new());
    let (c1, k1, s1) = (cache.clone(), key.clone(), started.clone());
    let first = tokio::spawn(async move {
        c1.get_or_compute(
            &k1,
            Duration::from_secs(60),
            Box::pin(async move {
                s1.notify_one();
                futures::future::pending::<()>().await;
                Ok(bytes::Bytes::from_static(b"never"))
            }),
        )
        .await
    });
    started.notified().await;
    let (c2, k2) = (cache.clone(), key.clone());
    let second = tokio::spawn(async move {
        c2.get_or_compute(
            &k2,
            Duration::from_secs(60),
            Box::pin(async { Ok(bytes::Bytes::from_static(b"second")) }),
        )
        .await
    });
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    assert_eq!(&second.await.expect("join").expect("value")[..], b"second");
}

#[test]
fn invalid_configs_are_refused() {
    use agentscale_core::{ErrorKind, Metric};
    use std::time::Duration;
    let kind = |r: agentscale_core::Result<()>| r.expect_err("refused").kind();
    assert_eq!(
        kind(
            LocalSessionStore::builder()
                .ttl(Duration::ZERO)
                .build()
                .map(drop)
        ),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(LocalSessionStore::builder().history_cap(0).build().map(drop)),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(LocalMemoryStore::new(0, Metric::Cosine).map(drop)),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(
            LocalToolCache::builder()
                .negative_ttl(Duration::ZERO)
                .build()
                .map(drop)
        ),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(LocalToolCache::builder().max_value_bytes(0).build().map(drop)),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(
            LocalToolCache::builder()
                .max_value_bytes(1000)
                .capacity_bytes(10)
                .build()
                .map(drop)
        ),
        ErrorKind::InvalidConfig
    );
}
