//! The long-term memory suite: 15 checks every
//! [`MemoryStore`] backend runs.
//!
//! Each check gets a store built from [`MemoryParams`] (a fresh namespace,
//! the dimension, metric and expiry mode the check needs) and a fresh
//! random tenant. A backend passes only if
//!
//! * top-k search equals brute force, order and scores included, for cosine,
//!   dot product and L2 (`cosine_matches_brute_force`,
//!   `dot_matches_brute_force`, `l2_matches_brute_force`), also when a filter
//!   matches 1 % of the rows (`selective_filter_returns_k`);
//! * filters are conjunctions of metadata equalities (`filters`);
//! * bad input — wrong vector lengths, NaN, infinities, zero vectors under
//!   cosine, empty or oversized text and ids, NUL characters, oversized
//!   metadata, a huge `k` — is refused with `InvalidInput` and stores nothing
//!   of the batch, while SQL-looking strings are plain data
//!   (`dimension_mismatch`, `bad_input_stores_nothing`);
//! * namespaces (tenant + name) never see, rank, read, update or delete each
//!   other's records (`namespace_isolation`, `tenant_isolation_adversarial`);
//! * upsert replaces by id, delete counts what existed and `k` bounds the
//!   results (`upsert_delete_and_k`); `update` replaces existing records only
//!   and `get` keeps the order asked (`update_and_get`);
//! * `add` stores each content once and reports its id, also for 100
//!   concurrent adders, and an id holding other content is a `Conflict`
//!   (`add_is_idempotent`, `concurrent_adds_store_once`);
//! * expired records are invisible to every read, and `purge_expired` keeps
//!   them under [`ExpiryMode::Hide`] and deletes them under
//!   [`ExpiryMode::Delete`] (`expiry_hides`, `expiry_deletes`).
//!
//! Three checks need something a store may not offer: `l2_matches_brute_force`
//! needs [`Metric::L2`], `expiry_hides` and `expiry_deletes` their expiry
//! mode. The harness builds a store with each one's parameters before running
//! anything; if the store then declares another metric
//! ([`MemoryStore::metric`]) or expiry mode ([`MemoryStore::expiry_mode`]),
//! the check is reported as ignored with what the store declared.

use std::sync::Arc;

use agentscale_core::{ErrorKind, ExpiryMode, Filter, MemoryRecord, MemoryStore, Metric, Namespace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::StateCheck;
use crate::setup::MemoryParams;

mod more;

fn dims(p: &mut MemoryParams, dimensions: usize, metric: Metric) {
    p.dimensions = dimensions;
    p.metric = metric;
}

fn expiry(p: &mut MemoryParams, mode: ExpiryMode) {
    dims(p, 2, Metric::Cosine);
    p.expiry_mode = mode;
}

/// The store must use the metric the check asked for.
fn declares_metric(s: &dyn MemoryStore, want: Metric) -> Result<(), String> {
    if s.metric() == want {
        Ok(())
    } else {
        Err(format!("metric {:?} when asked for {want:?}", s.metric()))
    }
}

/// The store must use the expiry mode the check asked for.
fn declares_expiry(s: &dyn MemoryStore, want: ExpiryMode) -> Result<(), String> {
    if s.expiry_mode() == want {
        Ok(())
    } else {
        Err(format!(
            "expiry mode {:?} when asked for {want:?}",
            s.expiry_mode()
        ))
    }
}

/// Every MemoryStore check, in the order they are listed.
pub(crate) fn checks() -> Vec<StateCheck<MemoryParams, dyn MemoryStore>> {
    vec![
        StateCheck {
            name: "cosine_matches_brute_force",
            configure: |p| dims(p, BRUTE_FORCE_DIM, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(cosine_matches_brute_force(s, t)),
        },
        StateCheck {
            name: "dot_matches_brute_force",
            configure: |p| dims(p, BRUTE_FORCE_DIM, Metric::Dot),
            requires: None,
            run: |s, t| Box::pin(dot_matches_brute_force(s, t)),
        },
        StateCheck {
            name: "filters",
            configure: |p| dims(p, 2, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(filters(s, t)),
        },
        StateCheck {
            name: "dimension_mismatch",
            configure: |p| dims(p, 3, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(dimension_mismatch(s, t)),
        },
        StateCheck {
            name: "namespace_isolation",
            configure: |p| dims(p, 2, Metric::Dot),
            requires: None,
            run: |s, t| Box::pin(namespace_isolation(s, t)),
        },
        StateCheck {
            name: "upsert_delete_and_k",
            configure: |p| dims(p, 2, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(upsert_delete_and_k(s, t)),
        },
        StateCheck {
            name: "l2_matches_brute_force",
            configure: |p| dims(p, BRUTE_FORCE_DIM, Metric::L2),
            requires: Some(|s| declares_metric(s, Metric::L2)),
            run: |s, t| Box::pin(more::l2_matches_brute_force(s, t)),
        },
        StateCheck {
            name: "selective_filter_returns_k",
            configure: |p| dims(p, more::SELECTIVE_DIM, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(more::selective_filter_returns_k(s, t)),
        },
        StateCheck {
            name: "add_is_idempotent",
            configure: |p| dims(p, 2, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(more::add_is_idempotent(s, t)),
        },
        StateCheck {
            name: "concurrent_adds_store_once",
            configure: |p| dims(p, 4, Metric::Dot),
            requires: None,
            run: |s, t| Box::pin(more::concurrent_adds_store_once(s, t)),
        },
        StateCheck {
            name: "update_and_get",
            configure: |p| dims(p, 2, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(more::update_and_get(s, t)),
        },
        StateCheck {
            name: "bad_input_stores_nothing",
            configure: |p| dims(p, 3, Metric::Cosine),
            requires: None,
            run: |s, t| Box::pin(more::bad_input_stores_nothing(s, t)),
        },
        StateCheck {
            name: "tenant_isolation_adversarial",
            configure: |p| dims(p, 2, Metric::Dot),
            requires: None,
            run: |s, t| Box::pin(more::tenant_isolation_adversarial(s, t)),
        },
        StateCheck {
            name: "expiry_hides",
            configure: |p| expiry(p, ExpiryMode::Hide),
            requires: Some(|s| declares_expiry(s, ExpiryMode::Hide)),
            run: |s, t| Box::pin(more::expiry_hides(s, t)),
        },
        StateCheck {
            name: "expiry_deletes",
            configure: |p| expiry(p, ExpiryMode::Delete),
            requires: Some(|s| declares_expiry(s, ExpiryMode::Delete)),
            run: |s, t| Box::pin(more::expiry_deletes(s, t)),
        },
    ]
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

/// Dimension of the brute-force comparisons.
const BRUTE_FORCE_DIM: usize = 16;

async fn search_matches_brute_force(s: Arc<dyn MemoryStore>, t: String, metric: Metric) {
    assert_eq!(s.dimensions(), BRUTE_FORCE_DIM);
    assert_eq!(s.metric(), metric);
    let space = ns(&t, "bf");
    let mut rng = StdRng::seed_from_u64(7);
    let records: Vec<MemoryRecord> = (0..400)
        .map(|i| {
            let kind = if i % 3 == 0 { "fact" } else { "chat" };
            record(
                &format!("r{i}"),
                random_vec(&mut rng, BRUTE_FORCE_DIM),
                &[("kind", kind)],
            )
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
        let q = random_vec(&mut rng, BRUTE_FORCE_DIM);
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
}

/// Cosine top-k equals brute force, order included.
async fn cosine_matches_brute_force(s: Arc<dyn MemoryStore>, t: String) {
    search_matches_brute_force(s, t, Metric::Cosine).await
}

/// Dot-product top-k equals brute force, order included.
async fn dot_matches_brute_force(s: Arc<dyn MemoryStore>, t: String) {
    search_matches_brute_force(s, t, Metric::Dot).await
}

/// Filters are conjunctions of metadata equalities.
async fn filters(s: Arc<dyn MemoryStore>, t: String) {
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
    let ids = |hits: Vec<agentscale_core::Hit>| hits.into_iter().map(|h| h.record.id).collect::<Vec<_>>();
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
}

/// Wrong vector lengths are InvalidInput and store nothing.
async fn dimension_mismatch(s: Arc<dyn MemoryStore>, t: String) {
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
}

/// Namespaces (tenant + name) never see each other's records.
async fn namespace_isolation(s: Arc<dyn MemoryStore>, t: String) {
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
}

/// Upsert replaces by id; delete counts what existed; k bounds results.
async fn upsert_delete_and_k(s: Arc<dyn MemoryStore>, t: String) {
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
}
