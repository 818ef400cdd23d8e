//! Long-term memory search: the in-process HNSW index (`Index::Hnsw`) and
//! pgvector (HNSW) recall and speed, against an exact scan and against the
//! same SQL sent through the raw driver, in one run.
//!
//! ```text
//! cargo run --release -p agentscale-benches --example bench_memory           # ANN part only
//! eval "$(AGENTSCALE_SERVICES=pgvector scripts/dev-services up)"
//! cargo run --release -p agentscale-benches --example bench_memory             # both parts
//! cargo run --release -p agentscale-benches --example bench_memory -- --skip-ann # pgvector only
//! ```
//!
//! Data: `n` vectors of `dim` dimensions around `clusters` random centres
//! (seeded RNG, generated in the run); queries are fresh points of the same
//! clusters. Ground truth is the in-process exact scan (`LocalMemoryStore`,
//! `Index::Exact`), whose queries per second are printed too.
//!
//! * `memory_ann_recall_at_10`: mean recall@k of `LocalMemoryStore` with
//!   `Index::Hnsw` (`--m`, `--ef-construction`, `--ef-search`) against the
//!   exact top-k.
//! * `memory_ann_qps`: searches per second through `MemoryStore::search`,
//!   HNSW against the exact scan (`Index::Exact`), one thread each; the two
//!   alternate in rounds and each side's figure is the median over rounds.
//! * `pgvector_recall_at_10`: mean recall@k of `PgVectorMemoryStore::search`
//!   (HNSW, `--ef-search`) against the exact top-k.
//! * `pgvector_search_p50_us`: median latency of one search through our store
//!   (pool, validation, transaction with `SET LOCAL`, decoding into records)
//!   against the same statements on one raw `tokio-postgres` connection; the
//!   two alternate in rounds and each side's p50 is the median over rounds.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use agentscale_core::{Filter, MemoryRecord, MemoryStore, Metric, Namespace};
use agentscale_state::local::{Index, LocalMemoryStore};
use agentscale_state::pgvector::{PgVectorConfig, PgVectorMemoryStore};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Memory search: pgvector recall and latency vs exact scan and raw SQL")]
struct Args {
    /// Vectors stored.
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Clusters the vectors are drawn around.
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    /// Queries for recall.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// HNSW ef_search.
    #[arg(long, default_value_t = 100)]
    ef_search: u32,
    /// Latency rounds (each: `--round` searches per side).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Searches per side per round.
    #[arg(long, default_value_t = 200)]
    round: usize,
    /// In-process HNSW: links per node.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// In-process HNSW: ef_construction.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// In-process HNSW: ef_search.
    #[arg(long, default_value_t = 128)]
    ann_ef_search: usize,
    /// Exact-scan searches per QPS round (the ANN side runs `--round`).
    #[arg(long, default_value_t = 20)]
    exact_round: usize,
    /// PostgreSQL URL (default: $AGENTSCALE_PGVECTOR_URL).
    #[arg(long)]
    pg_url: Option<String>,
    /// Skip the in-process HNSW part (its graph build takes minutes), e.g.
    /// to measure pgvector alone.
    #[arg(long)]
    skip_ann: bool,
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Irwin-Hall approximation: enough for clustered test data.
    (0..6).map(|_| rng.random::<f32>()).sum::<f32>() - 3.0
}

fn point(rng: &mut StdRng, centre: &[f32], spread: f32) -> Vec<f32> {
    centre.iter().map(|c| c + spread * gaussian(rng)).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = args
        .pg_url
        .clone()
        .or_else(|| std::env::var("AGENTSCALE_PGVECTOR_URL").ok());
    let mut rng = StdRng::seed_from_u64(42);
    let centres: Vec<Vec<f32>> = (0..args.clusters)
        .map(|_| (0..args.dim).map(|_| gaussian(&mut rng)).collect())
        .collect();
    let records: Vec<MemoryRecord> = (0..args.n)
        .map(|i| MemoryRecord::new(format!("r{i}"), point(&mut rng, &centres[i % args.clusters], 0.5)))
        .collect();
    let queries: Vec<Vec<f32>> = (0..args.queries)
        .map(|i| point(&mut rng, &centres[(i * 7) % args.clusters], 0.5))
        .collect();
    let ns = Namespace::new("bench", "memory")?;
    println!(
        "n={} dim={} clusters={} queries={} k={}",
        args.n, args.dim, args.clusters, args.queries, args.k
    );

    // Ground truth: the exact scan.
    let exact = LocalMemoryStore::new(args.dim, Metric::Cosine)?;
    for chunk in records.chunks(10_000) {
        exact.upsert(&ns, chunk.to_vec()).await?;
    }
    let t = Instant::now();
    let mut truth = Vec::with_capacity(queries.len());
    for q in &queries {
        let hits = exact.search(&ns, q, args.k, &Filter::all()).await?;
        truth.push(hits.into_iter().map(|h| h.record.id).collect::<Vec<_>>());
    }
    let exact_qps = queries.len() as f64 / t.elapsed().as_secs_f64();
    println!("exact scan: {exact_qps:.1} queries/s");

    let ann_results = if args.skip_ann {
        println!("in-process HNSW: skipped (--skip-ann)");
        None
    } else {
        Some(ann(&args, &records, &queries, &truth, &exact, &ns).await?)
    };

    let pg_results = match url {
        Some(url) => Some(pgvector_part(&args, url, &records, &queries, &truth, &ns).await?),
        None => {
            println!("pgvector: skipped (set --pg-url or AGENTSCALE_PGVECTOR_URL, e.g. via scripts/dev-services up)");
            None
        }
    };

    if let Some((recall, ours_qps, exact_qps)) = ann_results {
        println!("RESULT memory_ann_recall_at_10 ours={recall:.4} baseline=exact_scan:1.0 ratio={recall:.4}");
        println!(
            "RESULT memory_ann_qps ours={ours_qps:.1} baseline=exact_scan:{exact_qps:.1} ratio={:.1}",
            ours_qps / exact_qps
        );
    }
    if let Some((recall, ours, base)) = pg_results {
        println!("RESULT pgvector_recall_at_10 ours={recall:.4} baseline=exact_scan:1.0 ratio={recall:.4}");
        println!(
            "RESULT pgvector_search_p50_us ours={ours:.1} baseline=raw_sql:{base:.1} ratio={:.3}",
            ours / base
        );
    }
    Ok(())
}

/// Recall of the in-process HNSW store, then queries/s of it and of the exact
/// store, alternating rounds; medians over rounds.
async fn ann(
    args: &Args,
    records: &[MemoryRecord],
    queries: &[Vec<f32>],
    truth: &[Vec<String>],
    exact: &LocalMemoryStore,
    ns: &Namespace,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    let store = LocalMemoryStore::builder()
        .dimensions(args.dim)
        .metric(Metric::Cosine)
        .index(Index::Hnsw {
            m: args.m,
            ef_construction: args.ef_construction,
            ef_search: args.ann_ef_search,
        })
        .build()?;
    let t = Instant::now();
    for chunk in records.chunks(10_000) {
        store.upsert(ns, chunk.to_vec()).await?;
    }
    println!(
        "HNSW build (m={}, ef_construction={}): {:.1} s",
        args.m,
        args.ef_construction,
        t.elapsed().as_secs_f64()
    );
    let mut found = 0usize;
    for (q, want) in queries.iter().zip(truth) {
        let hits = store.search(ns, q, args.k, &Filter::all()).await?;
        found += hits.iter().filter(|h| want.contains(&h.record.id)).count();
    }
    let recall = found as f64 / (queries.len() * args.k) as f64;

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let t = Instant::now();
        for i in 0..args.round {
            let q = &queries[(round * args.round + i) % queries.len()];
            let hits = store.search(ns, q, args.k, &Filter::all()).await?;
            assert_eq!(hits.len(), args.k);
        }
        ours.push(args.round as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for i in 0..args.exact_round {
            let q = &queries[(round * args.exact_round + i) % queries.len()];
            let hits = exact.search(ns, q, args.k, &Filter::all()).await?;
            assert_eq!(hits.len(), args.k);
        }
        base.push(args.exact_round as f64 / t.elapsed().as_secs_f64());
    }
    Ok((recall, median(ours), median(base)))
}

/// pgvector recall, and p50 latency of our store against raw SQL.
async fn pgvector_part(
    args: &Args,
    url: String,
    records: &[MemoryRecord],
    queries: &[Vec<f32>],
    truth: &[Vec<String>],
    ns: &Namespace,
) -> Result<(f64, f64, f64), Box<dyn std::error::Error>> {
    // pgvector: bulk load, then build the index once.
    let table = format!("bench_memory_{}", std::process::id());
    let config = PgVectorConfig::builder()
        .url(url.clone())
        .table(table.clone())
        .dimensions(args.dim)
        .metric(Metric::Cosine)
        .ef_search(args.ef_search)
        .create_index(false)
        .pool_size(4)
        .query_timeout(std::time::Duration::from_secs(60))
        .build()?;
    let store = Arc::new(PgVectorMemoryStore::connect(config).await?);
    let t = Instant::now();
    for chunk in records.chunks(1000) {
        store.upsert(ns, chunk.to_vec()).await?;
    }
    println!("pgvector load: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    store.create_index().await?;
    println!(
        "pgvector HNSW build (m=16, ef_construction=64): {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let (raw, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    raw.batch_execute("ANALYZE").await?;

    let mut found = 0usize;
    for (q, want) in queries.iter().zip(truth) {
        let hits = store.search(ns, q, args.k, &Filter::all()).await?;
        found += hits.iter().filter(|h| want.contains(&h.record.id)).count();
    }
    let recall = found as f64 / (queries.len() * args.k) as f64;

    // Latency: ours vs the same statements on a raw connection.
    let sql = format!(
        "SELECT id, embedding, text, metadata::text, expires_at_ms, (embedding <=> $3)::float8 AS distance \
         FROM \"public\".\"{table}\" WHERE tenant = $1 AND namespace = $2 \
         AND (expires_at_ms IS NULL OR expires_at_ms > $4) AND metadata @> $5::text::jsonb \
         ORDER BY embedding <=> $3 LIMIT $6"
    );
    let settings = format!(
        "SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = relaxed_order;",
        args.ef_search
    );
    let (mut ours_p50, mut raw_p50) = (Vec::new(), Vec::new());
    let k64 = args.k as i64;
    let mut raw = raw;
    for round in 0..args.rounds {
        let mut ours = Vec::with_capacity(args.round);
        let mut base = Vec::with_capacity(args.round);
        for i in 0..args.round {
            let q = &queries[(round * args.round + i) % queries.len()];
            let t = Instant::now();
            let hits = store.search(ns, q, args.k, &Filter::all()).await?;
            ours.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(hits.len(), args.k);

            let t = Instant::now();
            let tx = raw.transaction().await?;
            tx.batch_execute(&settings).await?;
            let v = pgvector::Vector::from(q.clone());
            let now = agentscale_core::now_ms() as i64;
            let rows = tx
                .query(&sql, &[&"bench", &"memory", &v, &now, &"{}", &k64])
                .await?;
            tx.commit().await?;
            base.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(rows.len(), args.k);
        }
        ours_p50.push(median(ours));
        raw_p50.push(median(base));
    }
    let (ours, base) = (median(ours_p50), median(raw_p50));
    raw.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; DROP TABLE IF EXISTS \"{table}_schema_version\""
    ))
    .await?;
    Ok((recall, ours, base))
}
