//! `Index::Hnsw` behaves like `Index::Exact`: the same operations on both
//! stores give the same search results (with a generous `ef_search`).

use agentscale_core::{now_ms, Error, Filter, MemoryRecord, MemoryStore, Metric, Namespace};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Index, LocalMemoryStore};

const DIM: usize = 16;

fn generous() -> Index {
    Index::Hnsw {
        m: 16,
        ef_construction: 200,
        ef_search: 1000,
    }
}

fn pair(metric: Metric) -> (LocalMemoryStore, LocalMemoryStore) {
    let exact = LocalMemoryStore::new(DIM, metric).unwrap();
    let ann = LocalMemoryStore::builder()
        .dimensions(DIM)
        .metric(metric)
        .index(generous())
        .build()
        .unwrap();
    assert_eq!(ann.index(), generous());
    (exact, ann)
}

fn vector(rng: &mut StdRng) -> Vec<f32> {
    (0..DIM).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn records(rng: &mut StdRng, n: usize) -> Vec<MemoryRecord> {
    (0..n)
        .map(|i| {
            MemoryRecord::new(format!("r{i}"), vector(rng))
                .with_meta("parity", (i % 2).to_string())
                .with_meta("rare", if i % 97 == 0 { "yes" } else { "no" })
        })
        .collect()
}

fn ns() -> Namespace {
    Namespace::new(format!("t{}", uuid::Uuid::new_v4().simple()), "mem").unwrap()
}

async fn ids(store: &LocalMemoryStore, ns: &Namespace, q: &[f32], k: usize, f: &Filter) -> Vec<String> {
    store
        .search(ns, q, k, f)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.record.id)
        .collect()
}

/// Both stores answer 20 random queries identically.
async fn assert_same(exact: &LocalMemoryStore, ann: &LocalMemoryStore, ns: &Namespace, f: &Filter, k: usize) {
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..20 {
        let q = vector(&mut rng);
        let want = ids(exact, ns, &q, k, f).await;
        let got = ids(ann, ns, &q, k, f).await;
        assert_eq!(got, want, "filter {f:?}");
    }
}

#[tokio::test]
async fn hnsw_equals_exact_on_a_small_set() {
    for metric in [Metric::Cosine, Metric::L2] {
        let (exact, ann) = pair(metric);
        let ns = ns();
        let mut rng = StdRng::seed_from_u64(1);
        let recs = records(&mut rng, 500);
        // Several writes: the graph grows incrementally (small and parallel batches).
        for chunk in recs.chunks(300) {
            exact.upsert(&ns, chunk.to_vec()).await.unwrap();
            ann.upsert(&ns, chunk.to_vec()).await.unwrap();
        }
        assert_same(&exact, &ann, &ns, &Filter::all(), 10).await;
        // k larger than the namespace: every record, as in exact mode.
        assert_same(&exact, &ann, &ns, &Filter::all(), 600).await;
    }
}

#[tokio::test]
async fn deletes_and_updates_match_exact_mode_including_rebuilds() {
    let (exact, ann) = pair(Metric::Cosine);
    let ns = ns();
    let mut rng = StdRng::seed_from_u64(2);
    let recs = records(&mut rng, 400);
    exact.upsert(&ns, recs.clone()).await.unwrap();
    ann.upsert(&ns, recs.clone()).await.unwrap();

    // A few deletes: tombstones, no rebuild yet.
    let few: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    assert_eq!(exact.delete(&ns, &few).await.unwrap(), 30);
    assert_eq!(ann.delete(&ns, &few).await.unwrap(), 30);
    assert_same(&exact, &ann, &ns, &Filter::all(), 10).await;

    // Updates move records: the old vector must never be found again.
    for i in 100..140 {
        let moved = MemoryRecord::new(format!("r{i}"), vector(&mut rng)).with_meta("parity", "moved");
        exact.update(&ns, moved.clone()).await.unwrap();
        ann.update(&ns, moved).await.unwrap();
    }
    for r in &recs[100..140] {
        let got = ann.search(&ns, &r.vector, 10, &Filter::all()).await.unwrap();
        assert!(
            got.iter().all(|h| h.record.vector != r.vector),
            "stale vector returned"
        );
    }
    assert_same(&exact, &ann, &ns, &Filter::all(), 10).await;
    assert_same(&exact, &ann, &ns, &Filter::all().eq("parity", "moved"), 10).await;

    // Many deletes: past the tombstone fraction, the graph is rebuilt.
    let many: Vec<String> = (200..380).map(|i| format!("r{i}")).collect();
    assert_eq!(exact.delete(&ns, &many).await.unwrap(), 180);
    assert_eq!(ann.delete(&ns, &many).await.unwrap(), 180);
    assert_same(&exact, &ann, &ns, &Filter::all(), 10).await;
    assert_eq!(ann.count(&ns), exact.count(&ns));
}

#[tokio::test]
async fn filters_return_k_rows_like_exact_mode() {
    let (exact, ann) = pair(Metric::Cosine);
    let ns = ns();
    let mut rng = StdRng::seed_from_u64(3);
    let recs = records(&mut rng, 600);
    exact.upsert(&ns, recs.clone()).await.unwrap();
    ann.upsert(&ns, recs).await.unwrap();
    // Half the rows match: over-fetching is enough.
    assert_same(&exact, &ann, &ns, &Filter::all().eq("parity", "1"), 10).await;
    // 7 rows match, fewer than k: the exact fallback returns all of them.
    let rare = Filter::all().eq("rare", "yes");
    assert_same(&exact, &ann, &ns, &rare, 10).await;
    let q = vector(&mut rng);
    assert_eq!(ann.search(&ns, &q, 10, &rare).await.unwrap().len(), 7);
    // A filter no row matches.
    assert!(ann
        .search(&ns, &q, 10, &Filter::all().eq("parity", "2"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn expired_rows_are_never_returned() {
    let (exact, ann) = pair(Metric::L2);
    let ns = ns();
    let mut rng = StdRng::seed_from_u64(4);
    let mut recs = records(&mut rng, 300);
    let past = now_ms().saturating_sub(1_000);
    for r in recs.iter_mut().take(150) {
        r.expires_at_ms = Some(past);
    }
    exact.upsert(&ns, recs.clone()).await.unwrap();
    ann.upsert(&ns, recs.clone()).await.unwrap();
    for r in &recs[..150] {
        // Query at an expired record: it is the nearest, and hidden.
        let got = ann.search(&ns, &r.vector, 10, &Filter::all()).await.unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|h| h.record.expires_at_ms.is_none()));
    }
    assert_same(&exact, &ann, &ns, &Filter::all(), 10).await;
}

#[tokio::test]
async fn namespaces_are_isolated() {
    let (_, ann) = pair(Metric::Cosine);
    let (a, b) = (ns(), Namespace::new("other-tenant", "mem").unwrap());
    let mut rng = StdRng::seed_from_u64(5);
    // Same ids in both namespaces, different vectors and texts.
    let in_a: Vec<MemoryRecord> = records(&mut rng, 200)
        .into_iter()
        .map(|r| r.with_text("a"))
        .collect();
    let in_b: Vec<MemoryRecord> = records(&mut rng, 200)
        .into_iter()
        .map(|r| r.with_text("b"))
        .collect();
    ann.upsert(&a, in_a).await.unwrap();
    ann.upsert(&b, in_b.clone()).await.unwrap();
    for r in &in_b[..20] {
        // Query exactly at a record of b, from a: only a's rows come back.
        let got = ann.search(&a, &r.vector, 10, &Filter::all()).await.unwrap();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|h| h.record.text.as_deref() == Some("a")));
    }
    let empty = Namespace::new("nobody", "mem").unwrap();
    assert!(ann
        .search(&empty, &in_b[0].vector, 10, &Filter::all())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn same_validation_and_config_errors() {
    let (_, ann) = pair(Metric::Cosine);
    let ns = ns();
    let bad = ann
        .upsert(&ns, vec![MemoryRecord::new("x", vec![1.0; DIM + 1])])
        .await;
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
    let bad = ann.search(&ns, &[f32::NAN; DIM], 10, &Filter::all()).await;
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
    let bad = ann.search(&ns, &[0.0; DIM], 10, &Filter::all()).await;
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");

    let build = |metric, index| {
        LocalMemoryStore::builder()
            .dimensions(DIM)
            .metric(metric)
            .index(index)
            .build()
    };
    assert!(matches!(
        build(Metric::Dot, Index::hnsw()),
        Err(Error::InvalidConfig(_))
    ));
    for (m, ef_construction, ef_search) in [
        (1, 200, 100),
        (256, 300, 100),
        (16, 8, 100),
        (16, 200, 0),
        (16, 200, 5000),
    ] {
        let index = Index::Hnsw {
            m,
            ef_construction,
            ef_search,
        };
        assert!(
            matches!(build(Metric::Cosine, index), Err(Error::InvalidConfig(_))),
            "{index:?}"
        );
    }
    assert!(build(Metric::L2, Index::hnsw()).is_ok());
}
