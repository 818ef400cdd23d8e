//! The tool-cache suite: 7 checks every [`ToolCache`]
//! backend runs.
//!
//! Each check gets a cache built from [`ToolCacheParams`] (a fresh
//! namespace) and a fresh random tenant. A backend passes only if a miss
//! computes once and hits never compute, entries expire after their TTL,
//! concurrent callers of one key share one computation, non-retryable
//! failures are cached for the negative TTL (and replayed with the same kind
//! and message) while retryable ones are not, values over the size limit are
//! refused, and keys are tenant + tool + version + canonical arguments.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, ErrorKind, ToolCache, ToolKey};
use bytes::Bytes;

use crate::harness::{unchanged, StateCheck};
use crate::setup::ToolCacheParams;
use crate::support::{b, eventually, SHORT_TTL};

fn short_negative_ttl(p: &mut ToolCacheParams) {
    p.negative_ttl = SHORT_TTL;
}

fn max_value_1024(p: &mut ToolCacheParams) {
    p.max_value_bytes = 1024;
}

fn tkey(tenant: &str, tool: &str, args: serde_json::Value) -> ToolKey {
    ToolKey::new(tenant, tool, "v1", &args).expect("valid tool key")
}

const TTL: Duration = Duration::from_secs(600);

/// `get_or_compute` through `cache`, counting computations in `calls`.
async fn counted(
    cache: &dyn ToolCache,
    key: &ToolKey,
    ttl: Duration,
    calls: &AtomicUsize,
    result: Result<Bytes, Error>,
) -> Result<Bytes, Error> {
    cache
        .get_or_compute(
            key,
            ttl,
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                result
            }),
        )
        .await
}

/// Every ToolCache check, in the order they are listed.
pub(crate) fn checks() -> Vec<StateCheck<ToolCacheParams, dyn ToolCache>> {
    vec![
        StateCheck {
            name: "hit_and_miss",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(hit_and_miss(s, t)),
        },
        StateCheck {
            name: "ttl_expiry",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(ttl_expiry(s, t)),
        },
        StateCheck {
            name: "single_flight",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(single_flight(s, t)),
        },
        StateCheck {
            name: "negative_caching",
            configure: short_negative_ttl,
            requires: None,
            run: |s, t| Box::pin(negative_caching(s, t)),
        },
        StateCheck {
            name: "retryable_not_cached",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(retryable_not_cached(s, t)),
        },
        StateCheck {
            name: "size_limit",
            configure: max_value_1024,
            requires: None,
            run: |s, t| Box::pin(size_limit(s, t)),
        },
        StateCheck {
            name: "canonical_args",
            configure: unchanged,
            requires: None,
            run: |s, t| Box::pin(canonical_args(s, t)),
        },
    ]
}

/// A miss computes once; hits do not compute; put/get/invalidate work.
async fn hit_and_miss(c: Arc<dyn ToolCache>, t: String) {
    let k = tkey(&t, "weather", serde_json::json!({"city": "Oslo"}));
    let calls = AtomicUsize::new(0);
    assert_eq!(c.get(&k).await.expect("get"), None);
    for _ in 0..3 {
        let v = counted(&*c, &k, TTL, &calls, Ok(b("rain")))
            .await
            .expect("compute");
        assert_eq!(v, b("rain"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.get(&k).await.expect("get"), Some(b("rain")));
    c.invalidate(&k).await.expect("invalidate");
    assert_eq!(c.get(&k).await.expect("get"), None);
    assert_eq!(
        counted(&*c, &k, TTL, &calls, Ok(b("sun")))
            .await
            .expect("recompute"),
        b("sun")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let p = tkey(&t, "weather", serde_json::json!({"city": "Bergen"}));
    c.put(&p, b("fog"), TTL).await.expect("put");
    assert_eq!(c.get(&p).await.expect("get"), Some(b("fog")));
    assert_eq!(
        counted(&*c, &p, TTL, &calls, Ok(b("never"))).await.expect("hit"),
        b("fog")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let err = c.put(&p, b("x"), Duration::ZERO).await.expect_err("zero ttl");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

/// Entries expire after their TTL and are then computed again.
async fn ttl_expiry(c: Arc<dyn ToolCache>, t: String) {
    let k = tkey(&t, "clock", serde_json::json!({}));
    let calls = AtomicUsize::new(0);
    counted(&*c, &k, SHORT_TTL, &calls, Ok(b("12:00")))
        .await
        .expect("compute");
    eventually("tool entry expires", || async {
        c.get(&k).await.expect("get").is_none()
    })
    .await;
    assert_eq!(
        counted(&*c, &k, TTL, &calls, Ok(b("12:01")))
            .await
            .expect("recompute"),
        b("12:01")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// N concurrent callers of one key run one computation and all get its
/// result; distinct keys compute independently.
async fn single_flight(c: Arc<dyn ToolCache>, t: String) {
    const CALLERS: usize = 32;
    const KEYS: usize = 4;
    let calls: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let tasks: Vec<_> = (0..CALLERS * KEYS)
        .map(|i| {
            let (c, calls, t) = (c.clone(), calls.clone(), t.clone());
            tokio::spawn(async move {
                let ki = i % KEYS;
                let k = tkey(&t, "slow", serde_json::json!({ "k": ki }));
                let v = c
                    .get_or_compute(
                        &k,
                        TTL,
                        Box::pin(async move {
                            calls[ki].fetch_add(1, Ordering::SeqCst);
                            // Simulated tool latency, so callers overlap.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok(b(&format!("result-{ki}")))
                        }),
                    )
                    .await
                    .expect("get_or_compute");
                (ki, v)
            })
        })
        .collect();
    for task in tasks {
        let (ki, v) = task.await.expect("join");
        assert_eq!(v, b(&format!("result-{ki}")));
    }
    for (ki, n) in calls.iter().enumerate() {
        assert_eq!(n.load(Ordering::SeqCst), 1, "key {ki} computed more than once");
    }
}

/// Non-retryable failures are cached for the negative TTL and replayed
/// with the same kind and message.
async fn negative_caching(c: Arc<dyn ToolCache>, t: String) {
    let k = tkey(&t, "lookup", serde_json::json!({"id": 404}));
    let calls = AtomicUsize::new(0);
    let err = counted(&*c, &k, TTL, &calls, Err(Error::NotFound("no record 404".into())))
        .await
        .expect_err("tool failure");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let again = counted(&*c, &k, TTL, &calls, Ok(b("late")))
        .await
        .expect_err("negatively cached");
    assert_eq!(again.kind(), ErrorKind::NotFound);
    assert_eq!(again.to_string(), err.to_string());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let via_get = c.get(&k).await.expect_err("get replays the failure");
    assert_eq!(via_get.kind(), ErrorKind::NotFound);
    // The negative entry expires after the negative TTL, not the value TTL.
    eventually("negative entry expires", || async {
        matches!(c.get(&k).await, Ok(None))
    })
    .await;
    assert_eq!(
        counted(&*c, &k, TTL, &calls, Ok(b("found")))
            .await
            .expect("recompute"),
        b("found")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // invalidate drops a negative entry too.
    let k2 = tkey(&t, "lookup", serde_json::json!({"id": 400}));
    counted(&*c, &k2, TTL, &calls, Err(Error::InvalidInput("bad id".into())))
        .await
        .expect_err("fail");
    c.invalidate(&k2).await.expect("invalidate");
    assert_eq!(
        counted(&*c, &k2, TTL, &calls, Ok(b("ok")))
            .await
            .expect("recompute"),
        b("ok")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

/// Retryable failures (timeouts, unavailability) are not cached.
async fn retryable_not_cached(c: Arc<dyn ToolCache>, t: String) {
    let k = tkey(&t, "flaky", serde_json::json!({}));
    let calls = AtomicUsize::new(0);
    let err = counted(&*c, &k, TTL, &calls, Err(Error::Timeout("upstream slow".into())))
        .await
        .expect_err("timeout");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(c.get(&k).await.expect("not cached"), None);
    let err = counted(
        &*c,
        &k,
        TTL,
        &calls,
        Err(Error::Unavailable {
            message: "down".into(),
            source: None,
        }),
    )
    .await
    .expect_err("unavailable");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        counted(&*c, &k, TTL, &calls, Ok(b("finally")))
            .await
            .expect("value"),
        b("finally")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Values over the size limit are refused with InvalidInput and not cached.
async fn size_limit(c: Arc<dyn ToolCache>, t: String) {
    let k = tkey(&t, "big", serde_json::json!({}));
    let calls = AtomicUsize::new(0);
    let big = Bytes::from(vec![7u8; 1025]);
    let err = counted(&*c, &k, TTL, &calls, Ok(big.clone()))
        .await
        .expect_err("too big");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("1024"), "error names the limit: {err}");
    assert_eq!(c.get(&k).await.expect("get"), None);
    let err = c.put(&k, big, TTL).await.expect_err("put too big");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let fits = Bytes::from(vec![7u8; 1024]);
    assert_eq!(
        counted(&*c, &k, TTL, &calls, Ok(fits.clone()))
            .await
            .expect("fits"),
        fits
    );
    assert_eq!(c.get(&k).await.expect("get"), Some(fits));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Keys are tenant + tool + version + canonical args.
async fn canonical_args(c: Arc<dyn ToolCache>, t: String) {
    let calls = AtomicUsize::new(0);
    let args_a = serde_json::json!({"q": "rust", "opts": {"lang": "en", "n": 5}});
    let args_b = serde_json::json!({"opts": {"n": 5, "lang": "en"}, "q": "rust"});
    let k1 = tkey(&t, "search", args_a.clone());
    let k2 = tkey(&t, "search", args_b);
    assert_eq!(
        counted(&*c, &k1, TTL, &calls, Ok(b("r1"))).await.expect("k1"),
        b("r1")
    );
    assert_eq!(
        counted(&*c, &k2, TTL, &calls, Ok(b("r2")))
            .await
            .expect("k2 hits k1"),
        b("r1")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let v2 = ToolKey::new(t.as_str(), "search", "v2", &args_a).expect("key");
    assert_eq!(
        counted(&*c, &v2, TTL, &calls, Ok(b("r3"))).await.expect("v2"),
        b("r3")
    );
    let other_tenant = ToolKey::new(format!("{t}-b"), "search", "v1", &args_a).expect("key");
    assert_eq!(
        counted(&*c, &other_tenant, TTL, &calls, Ok(b("r4")))
            .await
            .expect("tenant"),
        b("r4")
    );
    let other_tool = tkey(&t, "search2", args_a);
    assert_eq!(
        counted(&*c, &other_tool, TTL, &calls, Ok(b("r5")))
            .await
            .expect("tool"),
        b("r5")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
