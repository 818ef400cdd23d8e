//! The long-term memory suite: 6 checks every
//! [`MemoryStore`] backend runs.
//!
//! Each check gets a store built from [`MemoryParams`] (a fresh namespace,
//! the dimension and metric the check needs) and a fresh random tenant. A
//! backend passes only if top-k search equals brute force, order and scores
//! included, for cosine and dot product; filters are conjunctions of
//! metadata equalities; wrong vector lengths and NaN are refused with
//! `InvalidInput` and store nothing; namespaces (tenant + name) never see
//! each other's records; and upsert replaces by id, delete counts what
//! existed and `k` bounds the results.

use std::sync::Arc;

use agentscale_core::{ErrorKind, Filter, MemoryRecord, MemoryStore, Metric, Namespace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::StateCheck;
use crate::setup::MemoryParams;

fn dims(p: &mut MemoryParams, dimensions: usize, metric: Metric) {
    p.dimensions = dimensions;
    p.metric = metric;
}

/// Every MemoryStore check, in the order they are listed.
pub(crate) fn checks() -> Vec<StateCheck<MemoryParams, dyn MemoryStore>> {
    vec![
        StateCheck {
            name: "cosine_matches_brute_force",
            configure: |p| dims(p, BRUTE_FORCE_DIM, Metric::Cosine),
            run: |s, t| Box::pin(cosine_matches_brute_force(s, t)),
        },
        StateCheck {
            name: "dot_matches_brute_force",
            configure: |p| dims(p, BRUTE_FORCE_DIM, Metric::Dot),
            run: |s, t| Box::pin(dot_matches_brute_force(s, t)),
        },
        StateCheck {
            name: "filters",
            configure: |p| dims(p, 2, Metric::Cosine),
            run: |s, t| Box::pin(filters(s, t)),
        },
        StateCheck {
            name: "dimension_mismatch",
            configure: |p| dims(p, 3, Metric::Cosine),
            run: |s, t| Box::pin(dimension_mismatch(s, t)),
        },
        StateCheck {
            name: "namespace_isolation",
            configure: |p| dims(p, 2, Metric::Dot),
            run: |s, t| Box::pin(namespace_isolation(s, t)),
        },
        StateCheck {
            name: "upsert_delete_and_k",
            configure: |p| dims(p, 2, Metric::Cosine),
            run: |s, t| Box::pin(upsert_delete_and_k(s, t)),
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
    }
}

fn score(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    match metric {
        Metric::Dot => dot,
        Metric::Cosine => {
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb)
        }
    }
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
