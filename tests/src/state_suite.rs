//! Conformance suite for state backends: [`SessionStore`], [`MemoryStore`] and
//! [`ToolCache`].
//!
//! A backend runs a whole suite with one line and its own `setup`:
//!
//! ```text
//! async fn setup(p: SessionParams) -> Option<Fixture<dyn SessionStore>> { ... }
//! agentscale_tests::session_store_conformance!(setup);
//! ```
//!
//! `setup` builds a fresh store with the given parameters in its own random
//! namespace (key prefix) and returns a [`Fixture`] whose cleanup removes what
//! the test wrote; it returns `None` to skip when the backend's service is not
//! configured ([`crate::service_env`]). Every check also uses a fresh random
//! tenant. The macros expand to one `#[tokio::test(flavor = "multi_thread")]`
//! per check.
//!
//! Waits for expiry poll generously (up to [`EXPIRY_WAIT`]); no check asserts
//! on wall-clock speed.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{
    Error, ErrorKind, ExpiryMode, Filter, MemoryRecord, MemoryStore, Metric, Namespace, SessionKey,
    SessionStore, ToolCache, ToolKey,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::unique_name;

/// Longest time a check waits for something to expire before failing.
pub const EXPIRY_WAIT: Duration = Duration::from_secs(30);
/// Short TTL used by the expiry checks.
pub const SHORT_TTL: Duration = Duration::from_millis(1500);

/// A store under test and how to clean up after it.
pub struct Fixture<S: ?Sized> {
    /// The store.
    pub store: Arc<S>,
    cleanup: Option<BoxFuture<'static, ()>>,
}

impl<S: ?Sized> Fixture<S> {
    /// A fixture with nothing to clean up (in-process stores).
    pub fn new(store: Arc<S>) -> Self {
        Fixture { store, cleanup: None }
    }

    /// A fixture whose `cleanup` future removes what the test wrote.
    pub fn with_cleanup(store: Arc<S>, cleanup: impl Future<Output = ()> + Send + 'static) -> Self {
        Fixture {
            store,
            cleanup: Some(Box::pin(cleanup)),
        }
    }

    /// Runs the cleanup.
    pub async fn cleanup(self) {
        if let Some(c) = self.cleanup {
            c.await;
        }
    }
}

/// Parameters of a session store under test.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// TTL applied on every write.
    pub ttl: Duration,
    /// History cap.
    pub history_cap: usize,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            ttl: Duration::from_secs(600),
            history_cap: 100,
        }
    }
}

/// Parameters of a memory store under test.
#[derive(Debug, Clone, Default)]
pub struct MemoryParams {
    /// Vector dimension.
    pub dimensions: usize,
    /// Metric.
    pub metric: Metric,
    /// What happens to expired records.
    pub expiry_mode: ExpiryMode,
}

/// Parameters of a tool cache under test.
#[derive(Debug, Clone)]
pub struct ToolCacheParams {
    /// Negative TTL.
    pub negative_ttl: Duration,
    /// Per-value size limit.
    pub max_value_bytes: usize,
}

impl Default for ToolCacheParams {
    fn default() -> Self {
        ToolCacheParams {
            negative_ttl: Duration::from_secs(600),
            max_value_bytes: 64 * 1024,
        }
    }
}

/// Polls `cond` every 50 ms until it holds; panics after [`EXPIRY_WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + EXPIRY_WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not true after {EXPIRY_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn key(tenant: &str, session: &str) -> SessionKey {
    SessionKey::new(tenant, session).expect("valid key")
}

// ---------------------------------------------------------------------------
// Session store
// ---------------------------------------------------------------------------

/// Session store checks.
pub mod session {
    use super::*;

    /// Runs `check` on a fresh store, then its cleanup.
    async fn with_store<F, Fut, C, CFut>(setup: F, params: SessionParams, check: C)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
        C: FnOnce(Arc<dyn SessionStore>, String) -> CFut,
        CFut: Future<Output = ()>,
    {
        let Some(fx) = setup(params).await else { return };
        check(fx.store.clone(), unique_name("tenant")).await;
        fx.cleanup().await;
    }

    /// Expected 0 creates version 1; a second create is a conflict; missing
    /// sessions read as absent.
    pub async fn session_create_only_with_zero<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "s1");
            assert_eq!(s.get(&k).await.expect("get"), None);
            assert!(s.history(&k, 10).await.expect("history").is_empty());
            assert_eq!(s.put(&k, 0, b("one")).await.expect("create"), 1);
            let err = s
                .put(&k, 0, b("again"))
                .await
                .expect_err("second create must conflict");
            assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            let st = s.get(&k).await.expect("get").expect("present");
            assert_eq!((st.version, st.data), (1, b("one")));
            // A write naming a version that does not exist yet is a conflict too.
            let fresh = key(&t, "s2");
            let err = s
                .put(&fresh, 5, b("x"))
                .await
                .expect_err("expected 5 on a missing session");
            assert_eq!(err.kind(), ErrorKind::Conflict);
            assert_eq!(s.get(&fresh).await.expect("get"), None);
        })
        .await
    }

    /// Versions go 1, 2, 3…; stale and future expected versions conflict and
    /// change nothing.
    pub async fn session_version_increments<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "s");
            let mut v = 0;
            for i in 1..=10u64 {
                v = s.put(&k, v, b(&format!("state-{i}"))).await.expect("put");
                assert_eq!(v, i);
            }
            for stale in [0, 3, 9, 11, 99] {
                let err = s.put(&k, stale, b("stale")).await.expect_err("stale write");
                assert_eq!(err.kind(), ErrorKind::Conflict, "expected {stale}: {err}");
            }
            let st = s.get(&k).await.expect("get").expect("present");
            assert_eq!((st.version, st.data), (10, b("state-10")));
        })
        .await
    }

    /// N writers with the same expected version: exactly one wins, per round.
    pub async fn session_cas_single_winner<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "race");
            const WRITERS: usize = 16;
            const ROUNDS: u64 = 8;
            let mut expected = 0;
            for round in 0..ROUNDS {
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let (s, k) = (s.clone(), k.clone());
                        tokio::spawn(async move { s.put(&k, expected, b(&format!("r{round}-w{w}"))).await })
                    })
                    .collect();
                let mut wins = Vec::new();
                let mut conflicts = 0;
                for (w, t) in tasks.into_iter().enumerate() {
                    match t.await.expect("join") {
                        Ok(v) => wins.push((w, v)),
                        Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                assert_eq!(wins.len(), 1, "round {round}: winners {wins:?}");
                assert_eq!(conflicts, WRITERS - 1);
                let (winner, version) = wins[0];
                assert_eq!(version, expected + 1);
                let st = s.get(&k).await.expect("get").expect("present");
                assert_eq!(st.version, version);
                assert_eq!(
                    st.data,
                    b(&format!("r{round}-w{winner}")),
                    "the winner's data is stored"
                );
                expected = version;
            }
        })
        .await
    }

    /// Concurrent read-modify-CAS loops lose no update.
    pub async fn session_no_lost_updates<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "counter");
            assert_eq!(s.put(&k, 0, b("0")).await.expect("create"), 1);
            const WORKERS: u64 = 8;
            const INCREMENTS: u64 = 25;
            let conflicts = Arc::new(AtomicUsize::new(0));
            let tasks: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (s, k, conflicts) = (s.clone(), k.clone(), conflicts.clone());
                    tokio::spawn(async move {
                        for _ in 0..INCREMENTS {
                            loop {
                                let st = s.get(&k).await.expect("get").expect("present");
                                let n: u64 =
                                    std::str::from_utf8(&st.data).expect("utf8").parse().expect("int");
                                match s.put(&k, st.version, b(&(n + 1).to_string())).await {
                                    Ok(_) => break,
                                    Err(e) if e.kind() == ErrorKind::Conflict => {
                                        conflicts.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => panic!("unexpected error {e}"),
                                }
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("join");
            }
            let st = s.get(&k).await.expect("get").expect("present");
            assert_eq!(st.data, b(&(WORKERS * INCREMENTS).to_string()));
            assert_eq!(st.version, 1 + WORKERS * INCREMENTS);
            eprintln!(
                "no_lost_updates: {} conflicts retried",
                conflicts.load(Ordering::Relaxed)
            );
        })
        .await
    }

    /// State and history expire after the TTL; afterwards the session can be
    /// created again from version 0.
    pub async fn session_ttl_expiry<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        let params = SessionParams {
            ttl: SHORT_TTL,
            ..SessionParams::default()
        };
        with_store(setup, params, |s, t| async move {
            let k = key(&t, "short");
            assert_eq!(s.put(&k, 0, b("a")).await.expect("put"), 1);
            assert_eq!(s.append(&k, b("h1")).await.expect("append"), 1);
            eventually("session expires", || async {
                s.get(&k).await.expect("get").is_none()
            })
            .await;
            eventually("history expires", || async {
                s.history(&k, 10).await.expect("history").is_empty()
            })
            .await;
            assert_eq!(s.put(&k, 0, b("b")).await.expect("recreate"), 1);
            assert_eq!(s.history(&k, 10).await.expect("history"), Vec::<Bytes>::new());
        })
        .await
    }

    /// History keeps the newest `cap` entries, oldest first.
    pub async fn session_history_cap<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        let params = SessionParams {
            history_cap: 5,
            ..SessionParams::default()
        };
        with_store(setup, params, |s, t| async move {
            let k = key(&t, "hist");
            for i in 0..12u64 {
                let len = s.append(&k, b(&format!("e{i}"))).await.expect("append");
                assert_eq!(len, (i + 1).min(5));
            }
            let all: Vec<Bytes> = (7..12).map(|i| b(&format!("e{i}"))).collect();
            assert_eq!(s.history(&k, 100).await.expect("history"), all);
            assert_eq!(s.history(&k, 2).await.expect("history"), all[3..].to_vec());
            assert!(s.history(&k, 0).await.expect("history").is_empty());
            // History does not create a state version.
            assert_eq!(s.get(&k).await.expect("get"), None);
            assert_eq!(s.put(&k, 0, b("x")).await.expect("create"), 1);
        })
        .await
    }

    /// A delete leaves a tombstone: late puts and appends get Conflict.
    pub async fn session_tombstone_refuses_late_writes<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "gone");
            assert_eq!(s.put(&k, 0, b("a")).await.expect("put"), 1);
            assert_eq!(s.append(&k, b("h")).await.expect("append"), 1);
            assert!(s.delete(&k).await.expect("delete"), "existed");
            assert_eq!(s.get(&k).await.expect("get"), None);
            assert!(s.history(&k, 10).await.expect("history").is_empty());
            for expected in [0, 1, 2] {
                let err = s.put(&k, expected, b("late")).await.expect_err("late put");
                assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            }
            let err = s.append(&k, b("late")).await.expect_err("late append");
            assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
            assert_eq!(s.get(&k).await.expect("get"), None);
            assert!(!s.delete(&k).await.expect("delete again"), "already deleted");
            assert!(!s.delete(&key(&t, "never")).await.expect("delete missing"));
            // A session that only has history counts as existing.
            let h = key(&t, "only-history");
            s.append(&h, b("x")).await.expect("append");
            assert!(s.delete(&h).await.expect("delete"));
        })
        .await
    }

    /// The tombstone lives for the TTL; after it the id can be used again.
    pub async fn session_tombstone_expires<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        let params = SessionParams {
            ttl: SHORT_TTL,
            ..SessionParams::default()
        };
        with_store(setup, params, |s, t| async move {
            let k = key(&t, "reborn");
            s.put(&k, 0, b("a")).await.expect("put");
            assert!(s.delete(&k).await.expect("delete"));
            let deadline = tokio::time::Instant::now() + EXPIRY_WAIT;
            let created = loop {
                match s.put(&k, 0, b("again")).await {
                    Ok(v) => break v,
                    Err(e) if e.kind() == ErrorKind::Conflict => {
                        assert!(tokio::time::Instant::now() < deadline, "tombstone never expired");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                }
            };
            assert_eq!(created, 1);
        })
        .await
    }

    /// The same session id under two tenants never mixes.
    pub async fn session_tenant_isolation<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let other = format!("{t}-b");
            let (a, bk) = (key(&t, "shared"), key(&other, "shared"));
            assert_eq!(s.put(&a, 0, b("A1")).await.expect("put a"), 1);
            assert_eq!(s.get(&bk).await.expect("get b"), None);
            assert_eq!(s.put(&bk, 0, b("B1")).await.expect("put b"), 1);
            assert_eq!(s.put(&a, 1, b("A2")).await.expect("put a"), 2);
            s.append(&a, b("ha")).await.expect("append a");
            assert!(s.history(&bk, 10).await.expect("history b").is_empty());
            assert_eq!(s.get(&bk).await.expect("get").expect("b").data, b("B1"));
            assert!(s.delete(&a).await.expect("delete a"));
            let st = s.get(&bk).await.expect("get").expect("b survives");
            assert_eq!((st.version, st.data), (1, b("B1")));
            assert_eq!(s.put(&bk, 1, b("B2")).await.expect("b still writable"), 2);
        })
        .await
    }

    /// Arbitrary bytes (all 256 values, 1 MiB) round-trip exactly.
    pub async fn session_binary_data_round_trips<F, Fut>(setup: F)
    where
        F: Fn(SessionParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn SessionStore>>>,
    {
        with_store(setup, SessionParams::default(), |s, t| async move {
            let k = key(&t, "bin");
            let data: Bytes = (0..(1usize << 20))
                .map(|i| (i % 256) as u8)
                .collect::<Vec<u8>>()
                .into();
            assert_eq!(s.put(&k, 0, data.clone()).await.expect("put"), 1);
            assert_eq!(s.get(&k).await.expect("get").expect("present").data, data);
            assert_eq!(s.put(&k, 1, Bytes::new()).await.expect("empty"), 2);
            let st = s.get(&k).await.expect("get").expect("empty state is present");
            assert_eq!((st.version, st.data.len()), (2, 0));
            s.append(&k, Bytes::from_static(&[0, 255, 10, 13]))
                .await
                .expect("append");
            assert_eq!(
                s.history(&k, 1).await.expect("history"),
                vec![Bytes::from_static(&[0, 255, 10, 13])]
            );
        })
        .await
    }
}

/// Runs every session store check against `setup`
/// (`async fn(SessionParams) -> Option<Fixture<dyn SessionStore>>`).
#[macro_export]
macro_rules! session_store_conformance {
    ($setup:path) => {
        $crate::__state_checks!($setup, session;
            session_create_only_with_zero,
            session_version_increments,
            session_cas_single_winner,
            session_no_lost_updates,
            session_ttl_expiry,
            session_history_cap,
            session_tombstone_refuses_late_writes,
            session_tombstone_expires,
            session_tenant_isolation,
            session_binary_data_round_trips
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __state_checks {
    ($setup:path, $module:ident; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $check() {
                $crate::state_suite::$module::$check($setup).await
            }
        )+
    };
}

// ---------------------------------------------------------------------------
// Memory store
// ---------------------------------------------------------------------------

/// Memory store checks.
pub mod memory {
    use super::*;

    mod more;
    pub use more::*;

    async fn with_store<F, Fut, C, CFut>(setup: F, params: MemoryParams, check: C)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
        C: FnOnce(Arc<dyn MemoryStore>, String) -> CFut,
        CFut: Future<Output = ()>,
    {
        let Some(fx) = setup(params).await else { return };
        check(fx.store.clone(), unique_name("tenant")).await;
        fx.cleanup().await;
    }

    fn ns(tenant: &str, name: &str) -> Namespace {
        Namespace::new(tenant, name).expect("valid namespace")
    }

    fn random_vec(rng: &mut StdRng, dim: usize) -> Vec<f32> {
        (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn record(id: &str, vector: Vec<f32>, md: &[(&str, &str)]) -> MemoryRecord {
        MemoryRecord {
            id: id.to_string(),
            vector,
            text: Some(format!("text of {id}")),
            metadata: md.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            expires_at_ms: None,
        }
    }

    fn score(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
        metric.score(a, b)
    }

    /// Brute-force top-k ids over `records` that match `filter`.
    fn brute_force(
        metric: Metric,
        records: &[MemoryRecord],
        q: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Vec<(String, f64)> {
        let mut all: Vec<(String, f64)> = records
            .iter()
            .filter(|r| filter.matches(&r.metadata))
            .map(|r| (r.id.clone(), score(metric, q, &r.vector)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    async fn search_matches_brute_force<F, Fut>(setup: F, metric: Metric)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        const DIM: usize = 16;
        with_store(
            setup,
            MemoryParams {
                dimensions: DIM,
                metric,
                ..Default::default()
            },
            |s, t| async move {
                assert_eq!(s.dimensions(), DIM);
                assert_eq!(s.metric(), metric);
                let space = ns(&t, "bf");
                let mut rng = StdRng::seed_from_u64(7);
                let records: Vec<MemoryRecord> = (0..400)
                    .map(|i| {
                        let kind = if i % 3 == 0 { "fact" } else { "chat" };
                        record(&format!("r{i}"), random_vec(&mut rng, DIM), &[("kind", kind)])
                    })
                    .collect();
                for chunk in records.chunks(100) {
                    s.upsert(&space, chunk.to_vec()).await.expect("upsert");
                }
                for (qi, filter) in [Filter::all(), Filter::all().eq("kind", "fact")]
                    .iter()
                    .cycle()
                    .take(20)
                    .enumerate()
                {
                    let q = random_vec(&mut rng, DIM);
                    let k = 1 + qi % 12;
                    let hits = s.search(&space, &q, k, filter).await.expect("search");
                    let want = brute_force(metric, &records, &q, k, filter);
                    let got: Vec<&str> = hits.iter().map(|h| h.record.id.as_str()).collect();
                    let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
                    assert_eq!(got, want_ids, "query {qi} k={k} filter={filter:?}");
                    for (h, (_, w)) in hits.iter().zip(&want) {
                        assert!((f64::from(h.score) - w).abs() < 1e-3, "score {} vs {w}", h.score);
                        let stored = &records[h.record.id[1..].parse::<usize>().expect("id")];
                        assert_eq!(&h.record, stored, "record returned intact");
                    }
                }
            },
        )
        .await
    }

    /// Cosine top-k equals brute force, order included.
    pub async fn memory_cosine_matches_brute_force<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        search_matches_brute_force(setup, Metric::Cosine).await
    }

    /// Dot-product top-k equals brute force, order included.
    pub async fn memory_dot_matches_brute_force<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        search_matches_brute_force(setup, Metric::Dot).await
    }

    /// Filters are conjunctions of metadata equalities.
    pub async fn memory_filters<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        with_store(
            setup,
            MemoryParams {
                dimensions: 2,
                metric: Metric::Cosine,
                ..Default::default()
            },
            |s, t| async move {
                let space = ns(&t, "f");
                s.upsert(
                    &space,
                    vec![
                        record("a", vec![1.0, 0.0], &[("kind", "fact"), ("user", "u1")]),
                        record("b", vec![0.9, 0.1], &[("kind", "fact"), ("user", "u2")]),
                        record("c", vec![0.8, 0.2], &[("kind", "chat"), ("user", "u1")]),
                        record("d", vec![0.0, 1.0], &[]),
                    ],
                )
                .await
                .expect("upsert");
                let ids = |hits: Vec<agentscale_core::Hit>| {
                    hits.into_iter().map(|h| h.record.id).collect::<Vec<_>>()
                };
                let q = [1.0, 0.0];
                assert_eq!(
                    ids(s.search(&space, &q, 10, &Filter::all()).await.expect("all")),
                    ["a", "b", "c", "d"]
                );
                assert_eq!(
                    ids(s
                        .search(&space, &q, 10, &Filter::all().eq("kind", "fact"))
                        .await
                        .expect("f")),
                    ["a", "b"]
                );
                assert_eq!(
                    ids(s
                        .search(&space, &q, 10, &Filter::all().eq("user", "u1"))
                        .await
                        .expect("u")),
                    ["a", "c"]
                );
                let both = Filter::all().eq("kind", "fact").eq("user", "u2");
                assert_eq!(ids(s.search(&space, &q, 10, &both).await.expect("both")), ["b"]);
                let none = Filter::all().eq("kind", "nope");
                assert!(s.search(&space, &q, 10, &none).await.expect("none").is_empty());
                assert_eq!(
                    ids(s
                        .search(&space, &q, 1, &Filter::all().eq("kind", "chat"))
                        .await
                        .expect("k1")),
                    ["c"]
                );
            },
        )
        .await
    }

    /// Wrong vector lengths are InvalidInput and store nothing.
    pub async fn memory_dimension_mismatch<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        with_store(
            setup,
            MemoryParams {
                dimensions: 3,
                metric: Metric::Cosine,
                ..Default::default()
            },
            |s, t| async move {
                let space = ns(&t, "dim");
                let bad = vec![
                    record("ok", vec![1.0, 0.0, 0.0], &[]),
                    record("bad", vec![1.0, 0.0], &[]),
                ];
                let err = s.upsert(&space, bad).await.expect_err("wrong length");
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
                assert!(s
                    .search(&space, &[1.0, 0.0, 0.0], 10, &Filter::all())
                    .await
                    .expect("search")
                    .is_empty());
                for q in [vec![1.0, 0.0], vec![1.0, 0.0, 0.0, 0.0], vec![]] {
                    let err = s
                        .search(&space, &q, 1, &Filter::all())
                        .await
                        .expect_err("wrong query length");
                    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
                }
                let err = s
                    .upsert(&space, vec![record("nan", vec![f32::NAN, 0.0, 0.0], &[])])
                    .await
                    .expect_err("NaN");
                assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
            },
        )
        .await
    }

    /// Namespaces (tenant + name) never see each other's records.
    pub async fn memory_namespace_isolation<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        with_store(
            setup,
            MemoryParams {
                dimensions: 2,
                metric: Metric::Dot,
                ..Default::default()
            },
            |s, t| async move {
                let other_tenant = format!("{t}-b");
                let spaces = [ns(&t, "one"), ns(&t, "two"), ns(&other_tenant, "one")];
                for (i, space) in spaces.iter().enumerate() {
                    let v = vec![i as f32 + 1.0, 0.0];
                    s.upsert(space, vec![record("same-id", v, &[("owner", &i.to_string())])])
                        .await
                        .expect("upsert");
                }
                for (i, space) in spaces.iter().enumerate() {
                    let hits = s
                        .search(space, &[1.0, 0.0], 10, &Filter::all())
                        .await
                        .expect("search");
                    assert_eq!(hits.len(), 1, "namespace {i}");
                    assert_eq!(hits[0].record.metadata["owner"], i.to_string());
                    assert!((hits[0].score - (i as f32 + 1.0)).abs() < 1e-5);
                }
                assert_eq!(
                    s.delete(&spaces[0], &["same-id".to_string()])
                        .await
                        .expect("delete"),
                    1
                );
                assert!(s
                    .search(&spaces[0], &[1.0, 0.0], 10, &Filter::all())
                    .await
                    .expect("search")
                    .is_empty());
                for space in &spaces[1..] {
                    assert_eq!(
                        s.search(space, &[1.0, 0.0], 10, &Filter::all())
                            .await
                            .expect("search")
                            .len(),
                        1
                    );
                }
            },
        )
        .await
    }

    /// Upsert replaces by id; delete counts what existed; k bounds results.
    pub async fn memory_upsert_delete_and_k<F, Fut>(setup: F)
    where
        F: Fn(MemoryParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn MemoryStore>>>,
    {
        with_store(
            setup,
            MemoryParams {
                dimensions: 2,
                metric: Metric::Cosine,
                ..Default::default()
            },
            |s, t| async move {
                let space = ns(&t, "crud");
                let q = [1.0, 0.0];
                assert!(s
                    .search(&space, &q, 5, &Filter::all())
                    .await
                    .expect("empty ns")
                    .is_empty());
                s.upsert(
                    &space,
                    vec![record("x", vec![0.0, 1.0], &[]), record("y", vec![1.0, 1.0], &[])],
                )
                .await
                .expect("upsert");
                let mut replaced = record("x", vec![1.0, 0.0], &[("v", "2")]);
                replaced.text = Some("new text".into());
                s.upsert(&space, vec![replaced.clone()]).await.expect("replace");
                let hits = s.search(&space, &q, 10, &Filter::all()).await.expect("search");
                assert_eq!(hits.len(), 2);
                assert_eq!(hits[0].record, replaced);
                assert!((hits[0].score - 1.0).abs() < 1e-5);
                assert!(s
                    .search(&space, &q, 0, &Filter::all())
                    .await
                    .expect("k=0")
                    .is_empty());
                assert_eq!(
                    s.search(&space, &q, 1, &Filter::all()).await.expect("k=1").len(),
                    1
                );
                let n = s
                    .delete(&space, &["x".to_string(), "missing".to_string()])
                    .await
                    .expect("delete");
                assert_eq!(n, 1);
                let hits = s.search(&space, &q, 10, &Filter::all()).await.expect("search");
                assert_eq!(
                    hits.iter().map(|h| h.record.id.as_str()).collect::<Vec<_>>(),
                    ["y"]
                );
                assert_eq!(
                    s.delete(&space, &["x".to_string()]).await.expect("delete again"),
                    0
                );
                assert_eq!(
                    s.delete(&ns(&t, "never"), &["y".to_string()])
                        .await
                        .expect("other ns"),
                    0
                );
            },
        )
        .await
    }
}

/// Runs every memory store check against `setup`
/// (`async fn(MemoryParams) -> Option<Fixture<dyn MemoryStore>>`).
#[macro_export]
macro_rules! memory_store_conformance {
    ($setup:path) => {
        $crate::__state_checks!($setup, memory;
            memory_cosine_matches_brute_force,
            memory_dot_matches_brute_force,
            memory_filters,
            memory_dimension_mismatch,
            memory_namespace_isolation,
            memory_upsert_delete_and_k,
            memory_l2_matches_brute_force,
            memory_selective_filter_returns_k,
            memory_add_is_idempotent,
            memory_concurrent_adds_store_once,
            memory_update_and_get,
            memory_bad_input_stores_nothing,
            memory_tenant_isolation_adversarial,
            memory_expiry_hides,
            memory_expiry_deletes
        );
    };
}

// ---------------------------------------------------------------------------
// Tool cache
// ---------------------------------------------------------------------------

/// Tool cache checks.
pub mod tool {
    use super::*;

    async fn with_cache<F, Fut, C, CFut>(setup: F, params: ToolCacheParams, check: C)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
        C: FnOnce(Arc<dyn ToolCache>, String) -> CFut,
        CFut: Future<Output = ()>,
    {
        let Some(fx) = setup(params).await else { return };
        check(fx.store.clone(), unique_name("tenant")).await;
        fx.cleanup().await;
    }

    fn tkey(tenant: &str, tool: &str, args: serde_json::Value) -> ToolKey {
        ToolKey::new(tenant, tool, "v1", &args).expect("valid tool key")
    }

    const TTL: Duration = Duration::from_secs(600);

    /// `get_or_compute` through `cache`, counting computations in `calls`.
    pub async fn counted(
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

    /// A miss computes once; hits do not compute; put/get/invalidate work.
    pub async fn tool_hit_and_miss<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        with_cache(setup, ToolCacheParams::default(), |c, t| async move {
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
        })
        .await
    }

    /// Entries expire after their TTL and are then computed again.
    pub async fn tool_ttl_expiry<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        with_cache(setup, ToolCacheParams::default(), |c, t| async move {
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
        })
        .await
    }

    /// N concurrent callers of one key run one computation and all get its
    /// result; distinct keys compute independently.
    pub async fn tool_single_flight<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        with_cache(setup, ToolCacheParams::default(), |c, t| async move {
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
        })
        .await
    }

    /// Non-retryable failures are cached for the negative TTL and replayed
    /// with the same kind and message.
    pub async fn tool_negative_caching<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        let params = ToolCacheParams {
            negative_ttl: SHORT_TTL,
            ..ToolCacheParams::default()
        };
        with_cache(setup, params, |c, t| async move {
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
        })
        .await
    }

    /// Retryable failures (timeouts, unavailability) are not cached.
    pub async fn tool_retryable_not_cached<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        with_cache(setup, ToolCacheParams::default(), |c, t| async move {
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
        })
        .await
    }

    /// Values over the size limit are refused with InvalidInput and not cached.
    pub async fn tool_size_limit<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        let params = ToolCacheParams {
            max_value_bytes: 1024,
            ..ToolCacheParams::default()
        };
        with_cache(setup, params, |c, t| async move {
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
        })
        .await
    }

    /// Keys are tenant + tool + version + canonical args.
    pub async fn tool_canonical_args<F, Fut>(setup: F)
    where
        F: Fn(ToolCacheParams) -> Fut,
        Fut: Future<Output = Option<Fixture<dyn ToolCache>>>,
    {
        with_cache(setup, ToolCacheParams::default(), |c, t| async move {
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
        })
        .await
    }
}

/// Runs every tool cache check against `setup`
/// (`async fn(ToolCacheParams) -> Option<Fixture<dyn ToolCache>>`).
#[macro_export]
macro_rules! tool_cache_conformance {
    ($setup:path) => {
        $crate::__state_checks!($setup, tool;
            tool_hit_and_miss,
            tool_ttl_expiry,
            tool_single_flight,
            tool_negative_caching,
            tool_retryable_not_cached,
            tool_size_limit,
            tool_canonical_args
        );
    };
}
