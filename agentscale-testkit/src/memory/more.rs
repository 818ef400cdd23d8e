//! Long-term memory checks beyond search: L2, selective filters, idempotent
//! and concurrent adds, update/get, bad input, adversarial tenant isolation,
//! expiry modes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{
    now_ms, Added, ErrorKind, ExpiryMode, Filter, MemoryRecord, MemoryStore, Metric,
    MAX_MEMORY_METADATA_BYTES, MAX_MEMORY_TEXT_BYTES,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{brute_force, ns, random_vec, record, search_matches_brute_force};

/// Dimension of the selective-filter check.
pub(super) const SELECTIVE_DIM: usize = 8;

fn ids(hits: &[agentscale_core::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.record.id.as_str()).collect()
}

/// L2 top-k equals brute force, order included.
pub(super) async fn l2_matches_brute_force(s: Arc<dyn MemoryStore>, t: String) {
    search_matches_brute_force(s, t, Metric::L2).await
}

/// A filter matching 1 % of the rows still returns k rows (the exact top-k
/// among the matching ones).
pub(super) async fn selective_filter_returns_k(s: Arc<dyn MemoryStore>, t: String) {
    const DIM: usize = SELECTIVE_DIM;
    let space = ns(&t, "sel");
    let mut rng = StdRng::seed_from_u64(11);
    let records: Vec<MemoryRecord> = (0..3000)
        .map(|i| {
            let tag = if i % 100 == 0 { "rare" } else { "common" };
            record(&format!("r{i}"), random_vec(&mut rng, DIM), &[("tag", tag)])
        })
        .collect();
    for chunk in records.chunks(500) {
        s.upsert(&space, chunk.to_vec()).await.expect("upsert");
    }
    let filter = Filter::all().eq("tag", "rare");
    for _ in 0..5 {
        let q = random_vec(&mut rng, DIM);
        let hits = s.search(&space, &q, 10, &filter).await.expect("search");
        let want = brute_force(Metric::Cosine, &records, &q, 10, &filter);
        assert_eq!(hits.len(), 10, "a 1% filter returned {} rows", hits.len());
        let want_ids: Vec<&str> = want.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids(&hits), want_ids);
    }
    // Fewer matches than k: all of them.
    let one = Filter::all().eq("tag", "rare").eq("nope", "x");
    assert!(s
        .search(&space, &[1.0; DIM], 10, &one)
        .await
        .expect("none")
        .is_empty());
}

/// `add` stores each content once and reports the stored id.
pub(super) async fn add_is_idempotent(s: Arc<dyn MemoryStore>, t: String) {
    let space = ns(&t, "add");
    let tea = MemoryRecord::new("", vec![1.0, 0.0]).with_text("likes tea");
    let coffee = MemoryRecord::new("c1", vec![0.0, 1.0]).with_text("hates coffee");
    let out = s
        .add(&space, vec![tea.clone(), coffee.clone(), tea.clone()])
        .await
        .expect("add");
    assert_eq!(
        out,
        vec![
            Added {
                id: tea.content_id(),
                inserted: true
            },
            Added {
                id: "c1".into(),
                inserted: true
            },
            Added {
                id: tea.content_id(),
                inserted: false
            },
        ]
    );
    // Again, with another id for the same content: nothing new.
    let mut again = coffee.clone();
    again.id = "c2".into();
    let out = s.add(&space, vec![again, tea.clone()]).await.expect("add again");
    assert_eq!(
        out,
        vec![
            Added {
                id: "c1".into(),
                inserted: false
            },
            Added {
                id: tea.content_id(),
                inserted: false
            },
        ]
    );
    let all = s
        .search(&space, &[1.0, 1.0], 10, &Filter::all())
        .await
        .expect("search");
    assert_eq!(all.len(), 2);
    // An id holding other content is a conflict, and the batch is not stored.
    let other = MemoryRecord::new("c1", vec![0.5, 0.5]).with_text("other");
    let fresh = MemoryRecord::new("f1", vec![0.3, 0.7]).with_text("fresh");
    let err = s.add(&space, vec![fresh, other]).await.expect_err("id conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(s.get(&space, &["f1".to_string()]).await.expect("get").is_empty());
    // Upserting a second copy of stored content under another id is a conflict.
    let mut dup = tea.clone();
    dup.id = "tea-2".into();
    let err = s.upsert(&space, vec![dup]).await.expect_err("content conflict");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

/// 100 concurrent adders of one memory store it exactly once.
pub(super) async fn concurrent_adds_store_once(s: Arc<dyn MemoryStore>, t: String) {
    let space = ns(&t, "race");
    let memory = MemoryRecord::new("", vec![0.1, 0.2, 0.3, 0.4])
        .with_text("the deploy key rotates on Mondays")
        .with_meta("kind", "fact");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (s, space, m) = (s.clone(), space.clone(), memory.clone());
            tokio::spawn(async move { s.add(&space, vec![m]).await })
        })
        .collect();
    let mut inserted = 0;
    for task in tasks {
        let out = task.await.expect("join").expect("add");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, memory.content_id());
        inserted += usize::from(out[0].inserted);
    }
    assert_eq!(inserted, 1, "exactly one adder inserted");
    let hits = s
        .search(&space, &[1.0, 1.0, 1.0, 1.0], 100, &Filter::all())
        .await
        .expect("search");
    assert_eq!(hits.len(), 1, "no duplicates");
}

/// `update` replaces an existing record only; `get` returns records in the
/// order asked.
pub(super) async fn update_and_get(s: Arc<dyn MemoryStore>, t: String) {
    let space = ns(&t, "upd");
    let a = record("a", vec![1.0, 0.0], &[("v", "1")]);
    let b = record("b", vec![0.0, 1.0], &[]);
    s.upsert(&space, vec![a.clone(), b.clone()])
        .await
        .expect("upsert");
    let got = s
        .get(&space, &["b".into(), "missing".into(), "a".into()])
        .await
        .expect("get");
    assert_eq!(got, vec![b.clone(), a.clone()]);
    let a2 = record("a", vec![0.0, 1.0], &[("v", "2")]).with_text("changed");
    s.update(&space, a2.clone()).await.expect("update");
    assert_eq!(s.get(&space, &["a".into()]).await.expect("get"), vec![a2]);
    let err = s
        .update(&space, record("nope", vec![1.0, 1.0], &[]))
        .await
        .expect_err("update of a missing id");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(s.get(&space, &["nope".into()]).await.expect("get").is_empty());
}

/// Every kind of bad input is InvalidInput and stores nothing; SQL-looking
/// strings are data.
pub(super) async fn bad_input_stores_nothing(s: Arc<dyn MemoryStore>, t: String) {
    let space = ns(&t, "bad");
    let ok = record("ok", vec![1.0, 0.0, 0.0], &[]);
    let big_md: BTreeMap<String, String> = [("k".to_string(), "x".repeat(MAX_MEMORY_METADATA_BYTES))].into();
    let bads = vec![
        (
            "empty text",
            record("e", vec![1.0, 1.0, 0.0], &[]).with_text("  "),
        ),
        ("NaN", record("n", vec![f32::NAN, 0.0, 0.0], &[])),
        ("inf", record("i", vec![f32::INFINITY, 0.0, 0.0], &[])),
        ("short", record("s", vec![1.0, 0.0], &[])),
        ("zero vector", record("z", vec![0.0, 0.0, 0.0], &[])),
        (
            "big text",
            record("t", vec![0.0, 1.0, 1.0], &[]).with_text("x".repeat(MAX_MEMORY_TEXT_BYTES + 1)),
        ),
        (
            "NUL text",
            record("u", vec![0.0, 1.0, 1.0], &[]).with_text("a\0b"),
        ),
        (
            "big metadata",
            MemoryRecord {
                metadata: big_md,
                ..record("m", vec![1.0, 0.0, 1.0], &[])
            },
        ),
        ("empty id", record("", vec![1.0, 0.5, 0.0], &[])),
        ("long id", record(&"x".repeat(600), vec![1.0, 0.5, 0.5], &[])),
    ];
    for (what, bad) in bads {
        let batch = vec![ok.clone(), bad.clone()];
        let err = s.upsert(&space, batch.clone()).await.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
        if what != "empty id" {
            let err = s.add(&space, batch).await.expect_err(what);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
        }
        assert!(
            s.get(&space, &["ok".into()]).await.expect("get").is_empty(),
            "{what}: half a batch stored"
        );
    }
    for q in [vec![f32::NAN, 0.0, 0.0], vec![0.0, 0.0, 0.0], vec![1.0]] {
        let err = s
            .search(&space, &q, 3, &Filter::all())
            .await
            .expect_err("bad query");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    let err = s
        .search(&space, &[1.0, 0.0, 0.0], 1, &Filter::all().eq("k", "a\0"))
        .await
        .expect_err("NUL filter");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let err = s
        .search(&space, &[1.0, 0.0, 0.0], 1_000_000, &Filter::all())
        .await
        .expect_err("huge k");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // SQL-looking text, ids and filter values are stored and matched literally.
    let sql = "x' OR '1'='1'; DROP TABLE memory; --";
    let r = record(sql, vec![1.0, 0.0, 0.0], &[(sql, sql), ("k", "v")]).with_text(sql);
    s.upsert(&space, vec![r.clone()]).await.expect("sql-looking data");
    let hits = s
        .search(&space, &[1.0, 0.0, 0.0], 5, &Filter::all().eq(sql, sql))
        .await
        .expect("sql-looking filter");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].record, r);
    for filter in [
        Filter::all().eq("k", "v' OR '1'='1"),
        Filter::all().eq("k' OR '1'='1", "v"),
        Filter::all().eq("k", "v").eq("}", "{"),
    ] {
        assert!(
            s.search(&space, &[1.0, 0.0, 0.0], 5, &filter)
                .await
                .expect("f")
                .is_empty(),
            "{filter:?} matched"
        );
    }
}

/// Two tenants with the same namespace name, ids and contents: no search,
/// filter, read, update or delete of one ever touches the other.
pub(super) async fn tenant_isolation_adversarial(s: Arc<dyn MemoryStore>, t: String) {
    let (alice, mallory) = (ns(&format!("{t}-a"), "mem"), ns(&format!("{t}-m"), "mem"));
    let secret =
        record("s1", vec![10.0, 0.0], &[("owner", "alice"), ("tenant", "alice")]).with_text("alice's secret");
    s.upsert(&alice, vec![secret.clone()]).await.expect("alice");
    // Mallory adds the very same content and id: a separate record.
    let out = s.add(&mallory, vec![secret.clone()]).await.expect("mallory add");
    assert_eq!(
        out,
        vec![Added {
            id: "s1".into(),
            inserted: true
        }]
    );
    s.upsert(
        &mallory,
        vec![record("m1", vec![0.0, 1.0], &[("owner", "mallory")])],
    )
    .await
    .expect("mallory");
    for filter in [
        Filter::all(),
        Filter::all().eq("owner", "alice"),
        Filter::all().eq("tenant", "alice"),
        Filter::all().eq("tenant", "' OR tenant <> '"),
    ] {
        let hits = s
            .search(&mallory, &[1.0, 0.0], 100, &filter)
            .await
            .expect("search");
        assert!(
            hits.iter()
                .all(|h| h.record.id != "s1" || h.record.text.as_deref() == Some("alice's secret")),
            "unexpected record"
        );
        assert!(hits.len() <= 2, "{filter:?}: {} hits", hits.len());
    }
    // Mallory deletes "s1": only her copy goes.
    assert_eq!(s.delete(&mallory, &["s1".into()]).await.expect("delete"), 1);
    assert_eq!(s.delete(&mallory, &["s1".into()]).await.expect("delete again"), 0);
    assert_eq!(
        s.get(&alice, &["s1".into()]).await.expect("get"),
        vec![secret.clone()]
    );
    // Mallory can neither read, update nor rank against Alice's row.
    assert!(s.get(&mallory, &["s1".into()]).await.expect("get").is_empty());
    let err = s
        .update(&mallory, record("s1", vec![1.0, 1.0], &[]))
        .await
        .expect_err("cross-tenant update");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let hits = s
        .search(&mallory, &[1.0, 0.0], 100, &Filter::all().eq("owner", "alice"))
        .await
        .expect("search");
    assert!(hits.is_empty(), "alice's row ranked in mallory's search");
    let hits = s
        .search(&alice, &[1.0, 0.0], 100, &Filter::all())
        .await
        .expect("alice");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].record, secret);
}

fn expired(id: &str, v: Vec<f32>) -> MemoryRecord {
    let mut r = record(id, v, &[("e", "1")]);
    r.expires_at_ms = Some(now_ms().saturating_sub(1));
    r
}

async fn expiry_check(s: Arc<dyn MemoryStore>, t: String, mode: ExpiryMode) {
    assert_eq!(s.expiry_mode(), mode);
    let space = ns(&t, "ttl");
    let live = record("live", vec![1.0, 0.0], &[("e", "1")]).with_ttl(Duration::from_secs(3600));
    s.upsert(&space, vec![live.clone(), expired("gone-1", vec![1.0, 0.1])])
        .await
        .expect("upsert");
    s.add(&space, vec![expired("gone-2", vec![1.0, 0.2])])
        .await
        .expect("add");
    let hits = s
        .search(&space, &[1.0, 0.0], 10, &Filter::all().eq("e", "1"))
        .await
        .expect("search");
    assert_eq!(ids(&hits), ["live"], "expired records are invisible");
    assert!(s
        .get(&space, &["gone-1".into(), "gone-2".into()])
        .await
        .expect("get")
        .is_empty());
    let err = s
        .update(&space, record("gone-1", vec![0.5, 0.5], &[]))
        .await
        .expect_err("update of an expired record");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // Adding the content of an expired record stores it anew.
    let mut revived = expired("gone-1", vec![1.0, 0.1]);
    revived.expires_at_ms = None;
    let out = s.add(&space, vec![revived.clone()]).await.expect("re-add");
    assert_eq!(
        out,
        vec![Added {
            id: "gone-1".into(),
            inserted: true
        }]
    );
    assert_eq!(
        s.get(&space, &["gone-1".into()]).await.expect("get"),
        vec![revived]
    );
    s.upsert(&space, vec![expired("gone-3", vec![1.0, 0.3])])
        .await
        .expect("upsert");
    let purged = s.purge_expired(&space).await.expect("purge");
    match mode {
        ExpiryMode::Hide => assert_eq!(purged, 0, "hide mode keeps expired records"),
        // gone-2 may already have gone with the sweep of a later write.
        _ => assert!((1..=2).contains(&purged), "purged {purged}"),
    }
    assert_eq!(s.purge_expired(&space).await.expect("purge again"), 0);
    // Deleting by id counts stored records, expired ones included (hide) or
    // finds nothing left (delete).
    let n = s.delete(&space, &["gone-3".into()]).await.expect("delete");
    assert_eq!(n, u64::from(mode == ExpiryMode::Hide));
    let hits = s
        .search(&space, &[1.0, 0.0], 10, &Filter::all())
        .await
        .expect("search");
    assert_eq!(ids(&hits), ["live", "gone-1"]);
}

/// Hide mode: expired records are invisible, kept by `purge_expired`.
pub(super) async fn expiry_hides(s: Arc<dyn MemoryStore>, t: String) {
    expiry_check(s, t, ExpiryMode::Hide).await
}

/// Delete mode: expired records are invisible and deleted.
pub(super) async fn expiry_deletes(s: Arc<dyn MemoryStore>, t: String) {
    expiry_check(s, t, ExpiryMode::Delete).await
}
