//! The memory conformance suite against PostgreSQL + pgvector
//! (`AGENTSCALE_PGVECTOR_URL`, started by `scripts/dev-services`), plus
//! pgvector-specific tests: schema versioning, dimension mismatch, rows as
//! stored (hide vs delete), isolation seen in the table itself.

use std::sync::Arc;

use agentscale_core::{ErrorKind, ExpiryMode, Filter, MemoryRecord, MemoryStore, Metric, Namespace};
use agentscale_state::pgvector::{PgVectorConfig, PgVectorMemoryStore, SearchOptions};
use agentscale_testkit::{service_env, unique_name, MemoryFixture, MemoryParams, SetupResult, Suites};

const URL_VAR: &str = "AGENTSCALE_PGVECTOR_URL";

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

/// A fresh random table name.
fn table() -> String {
    unique_name("t").replace('-', "_")
}

/// The table for a suite check: its namespace, shortened to the 40
/// characters a table name may have (keeping the random tail).
fn suite_table(namespace: &str) -> String {
    if namespace.len() <= 40 {
        namespace.to_string()
    } else {
        format!("{}{}", &namespace[..23], &namespace[namespace.len() - 17..])
    }
}

async fn drop_table(url: String, table: String) {
    let c = raw(&url).await;
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; DROP TABLE IF EXISTS \"{table}_schema_version\""
    ))
    .await
    .expect("drop");
}

fn config(
    url: &str,
    table: &str,
    dimensions: usize,
    metric: Metric,
    expiry_mode: ExpiryMode,
) -> PgVectorConfig {
    PgVectorConfig::builder()
        .url(url)
        .table(table)
        .dimensions(dimensions)
        .metric(metric)
        .expiry_mode(expiry_mode)
        // The suite compares with brute force: search wide on its small tables.
        .ef_search(1000)
        .pool_size(8)
        .build()
        .expect("config")
}

/// A cosine store config of `dimensions` that hides expired records.
fn cosine(url: &str, table: &str, dimensions: usize) -> PgVectorConfig {
    config(url, table, dimensions, Metric::Cosine, ExpiryMode::Hide)
}

async fn memory(p: MemoryParams) -> SetupResult<MemoryFixture> {
    let url = service_env(URL_VAR)?;
    let table = suite_table(&p.namespace);
    let cfg = PgVectorConfig::builder()
        .url(url.as_str())
        .table(table.as_str())
        .dimensions(p.dimensions)
        .metric(p.metric)
        .expiry_mode(p.expiry_mode)
        // The suite compares with brute force: search wide on its small tables.
        .ef_search(1000)
        .pool_size(8)
        .build()?;
    let store = PgVectorMemoryStore::connect(cfg).await?;
    Ok(MemoryFixture::new(Arc::new(store)).with_cleanup(move || drop_table(url, table)))
}

/// Connecting twice (and concurrently) applies the schema once; a store of
/// another dimension on the same table is refused.
async fn schema_is_versioned_and_idempotent(url: String) {
    let table = table();
    let cfg = cosine(&url, &table, 4);
    let stores = futures::future::join_all((0..4).map(|_| PgVectorMemoryStore::connect(cfg.clone()))).await;
    for s in &stores {
        assert!(s.is_ok(), "{:?}", s.as_ref().err());
    }
    let c = raw(&url).await;
    let versions: Vec<i32> = c
        .query(&format!("SELECT version FROM \"{table}_schema_version\""), &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1]);
    let err = PgVectorMemoryStore::connect(cosine(&url, &table, 5))
        .await
        .expect_err("other dimension");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    let store = stores.into_iter().next().expect("one").expect("store");
    assert!(store.iterative_scan(), "pgvector 0.8 has iterative scans");
    let indexes: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexdef LIKE '%hnsw%'",
            &[&table],
        )
        .await
        .expect("indexes")
        .get(0);
    assert_eq!(indexes, 1);
    drop_table(url, table).await;
}

/// Searches use the HNSW index (EXPLAIN), per-query ef_search and exact mode work.
async fn searches_use_the_index(url: String) {
    let table = table();
    let store = PgVectorMemoryStore::connect(cosine(&url, &table, 3))
        .await
        .expect("connect");
    let ns = Namespace::new(unique_name("tenant"), "n").expect("ns");
    let records: Vec<MemoryRecord> = (0..200)
        .map(|i| MemoryRecord::new(format!("r{i}"), vec![1.0, i as f32 / 10.0, 0.5]))
        .collect();
    store.upsert(&ns, records).await.expect("upsert");
    let q = [1.0, 3.0, 0.5];
    let approx = store
        .search_with(&ns, &q, 5, &Filter::all(), SearchOptions::default().ef_search(10))
        .await
        .expect("ann");
    let exact = store
        .search_with(&ns, &q, 5, &Filter::all(), SearchOptions::default().exact(true))
        .await
        .expect("exact");
    assert_eq!(approx.len(), 5);
    assert_eq!(exact[0].record.id, "r30");
    let err = store
        .search_with(&ns, &q, 5, &Filter::all(), SearchOptions::default().ef_search(0))
        .await
        .expect_err("ef 0");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let c = raw(&url).await;
    c.batch_execute("SET enable_seqscan = off").await.expect("set");
    let plan: Vec<String> = c
        .query(
            &format!("EXPLAIN SELECT id FROM \"{table}\" ORDER BY embedding <=> '[1,3,0.5]' LIMIT 5"),
            &[],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("hnsw")), "{plan:?}");
    drop_table(url, table).await;
}

/// Hide keeps expired rows in the table; delete removes them.
async fn expiry_modes_in_the_table(url: String) {
    for mode in [ExpiryMode::Hide, ExpiryMode::Delete] {
        let table = table();
        let store = PgVectorMemoryStore::connect(config(&url, &table, 2, Metric::Cosine, mode))
            .await
            .expect("connect");
        let ns = Namespace::new(unique_name("tenant"), "n").expect("ns");
        let mut old = MemoryRecord::new("old", vec![1.0, 0.0]);
        old.expires_at_ms = Some(1);
        store.upsert(&ns, vec![old]).await.expect("upsert");
        store.purge_expired(&ns).await.expect("purge");
        let c = raw(&url).await;
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, i64::from(mode == ExpiryMode::Hide), "{mode:?}");
        drop_table(url.clone(), table).await;
    }
}

/// Isolation seen from the table: a cross-tenant delete leaves the other
/// tenant's rows, counted in SQL.
async fn cross_tenant_delete_touches_no_row(url: String) {
    let table = table();
    let store = PgVectorMemoryStore::connect(cosine(&url, &table, 2))
        .await
        .expect("connect");
    let a = Namespace::new(unique_name("a"), "n").expect("ns");
    let b = Namespace::new(unique_name("b"), "n").expect("ns");
    let ids: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    let records: Vec<MemoryRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| MemoryRecord::new(id.clone(), vec![1.0, i as f32]))
        .collect();
    store.upsert(&a, records).await.expect("upsert");
    assert_eq!(store.delete(&b, &ids).await.expect("delete"), 0);
    let c = raw(&url).await;
    let n: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM \"{table}\" WHERE tenant = $1"),
            &[&a.tenant()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 50);
    drop_table(url, table).await;
}

/// An unreachable server is Unavailable or Timeout, within the deadline.
async fn unreachable_server_is_a_typed_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cfg = PgVectorConfig::builder()
        .url(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .dimensions(2)
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("config");
    let err = PgVectorMemoryStore::connect(cfg).await.expect_err("no server");
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{err}"
    );
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .memory("pgvector", memory)
            .service_test(
                URL_VAR,
                "schema_is_versioned_and_idempotent",
                schema_is_versioned_and_idempotent,
            )
            .service_test(URL_VAR, "searches_use_the_index", searches_use_the_index)
            .service_test(URL_VAR, "expiry_modes_in_the_table", expiry_modes_in_the_table)
            .service_test(
                URL_VAR,
                "cross_tenant_delete_touches_no_row",
                cross_tenant_delete_touches_no_row,
            )
            .test(
                "unreachable_server_is_a_typed_error",
                unreachable_server_is_a_typed_error,
            )
    })
}
