//! Session store latency on Redis against raw `GET`/`SET` round trips on the
//! same Redis, measured in the same run over the same kind of connection
//! (redis-rs `ConnectionManager`, multiplexed, auto-reconnecting).
//!
//! ```text
//! cargo run --release --example bench_state -- --redis-url redis://127.0.0.1:6379
//! ```
//!
//! Sequential operations (one in flight), interleaved in rounds so that drift
//! of the machine hits ours and the baseline alike. Ends with `RESULT` lines:
//! `session_cas_p50_us` (baseline `raw_set_p50_us`) and `session_get_p50_us`
//! (baseline `raw_get_p50_us`).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use agentscale_core::{SessionKey, SessionStore};
use agentscale_state::local::LocalSessionStore;
use agentscale_state::redis::{RedisSessionStore, RedisStateConfig};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Parser, Debug)]
#[command(about = "Session store latency vs raw Redis GET/SET")]
struct Args {
    /// Redis URL (default: $AGENTSCALE_REDIS_URL, else redis://127.0.0.1:6379).
    #[arg(long)]
    redis_url: Option<String>,
    /// Operations per kind.
    #[arg(long, default_value_t = 20_000)]
    ops: usize,
    /// Operations per kind per round (kinds alternate round by round).
    #[arg(long, default_value_t = 500)]
    round: usize,
    /// Size of the session state in bytes.
    #[arg(long, default_value_t = 512)]
    value_bytes: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    RawSet,
    OurPut,
    RawGet,
    OurGet,
}

const KINDS: [Kind; 4] = [Kind::RawSet, Kind::OurPut, Kind::RawGet, Kind::OurGet];

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let url = args
        .redis_url
        .clone()
        .or_else(|| {
            std::env::var("AGENTSCALE_REDIS_URL")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string());
    let prefix = format!("bench-state-{}", std::process::id());
    let value = Bytes::from(vec![b'x'; args.value_bytes]);

    // Ours.
    let cfg = RedisStateConfig::new(url.as_str()).with_key_prefix(prefix.as_str());
    let store = RedisSessionStore::connect(cfg).await?;
    let key = SessionKey::new("bench", "session-1")?;
    // Baseline: the same connection type, plain commands.
    let client = redis::Client::open(url.as_str())?;
    let mut raw = ConnectionManager::new_with_config(
        client,
        ConnectionManagerConfig::new().set_response_timeout(Duration::from_secs(5)),
    )
    .await?;
    let raw_key = format!("{prefix}:raw");

    let mut version = store.put(&key, 0, value.clone()).await?;
    let _: () = redis::cmd("SET")
        .arg(&raw_key)
        .arg(value.as_ref())
        .query_async(&mut raw)
        .await?;

    // Warm-up (connections, script cache, allocator).
    for _ in 0..1000 {
        version = store.put(&key, version, value.clone()).await?;
        let _ = store.get(&key).await?;
        let _: () = redis::cmd("SET")
            .arg(&raw_key)
            .arg(value.as_ref())
            .query_async(&mut raw)
            .await?;
        let _: Option<Vec<u8>> = redis::cmd("GET").arg(&raw_key).query_async(&mut raw).await?;
    }

    let mut hists: Vec<Histogram<u64>> = KINDS.iter().map(|_| hist()).collect();
    let mut done = 0;
    while done < args.ops {
        let n = args.round.min(args.ops - done);
        for (i, kind) in KINDS.iter().enumerate() {
            for _ in 0..n {
                let t = Instant::now();
                match kind {
                    Kind::RawSet => {
                        let _: () = redis::cmd("SET")
                            .arg(&raw_key)
                            .arg(value.as_ref())
                            .query_async(&mut raw)
                            .await?;
                    }
                    Kind::OurPut => version = store.put(&key, version, value.clone()).await?,
                    Kind::RawGet => {
                        let v: Option<Vec<u8>> =
                            redis::cmd("GET").arg(&raw_key).query_async(&mut raw).await?;
                        assert!(v.is_some());
                    }
                    Kind::OurGet => {
                        let s = store.get(&key).await?;
                        assert_eq!(s.map(|s| s.version), Some(version));
                    }
                }
                hists[i].record(t.elapsed().as_nanos().max(1) as u64)?;
            }
        }
        done += n;
    }

    // In-memory store for reference (not a headline figure).
    let mem = LocalSessionStore::builder().build()?;
    let mut mem_put = hist();
    let mut mem_get = hist();
    let mut mv = 0;
    for _ in 0..args.ops {
        let t = Instant::now();
        mv = mem.put(&key, mv, value.clone()).await?;
        mem_put.record(t.elapsed().as_nanos().max(1) as u64)?;
        let t = Instant::now();
        let _ = mem.get(&key).await?;
        mem_get.record(t.elapsed().as_nanos().max(1) as u64)?;
    }

    // Clean up.
    store.delete(&key).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut raw)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut raw).await?;
    }

    println!(
        "bench_state: {} sequential ops per kind, {}-byte state, redis {}",
        args.ops,
        args.value_bytes,
        redact(&url)
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        "operation", "p50 µs", "p90 µs", "p99 µs", "mean µs"
    );
    let names = [
        "raw SET (baseline)",
        "session put (CAS, EVALSHA)",
        "raw GET (baseline)",
        "session get (HMGET)",
    ];
    let mut rows: Vec<(&str, &Histogram<u64>)> = names.iter().copied().zip(&hists).collect();
    rows.push(("in-memory put", &mem_put));
    rows.push(("in-memory get", &mem_get));
    for (name, h) in rows {
        println!(
            "{:<34} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            name,
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            h.mean() / 1000.0
        );
    }
    let p50 = |h: &Histogram<u64>| us(h.value_at_quantile(0.5));
    let (raw_set, put, raw_get, get) = (p50(&hists[0]), p50(&hists[1]), p50(&hists[2]), p50(&hists[3]));
    println!(
        "RESULT session_cas_p50_us ours={put:.1} baseline=raw_set_p50_us:{raw_set:.1} ratio={:.3}",
        put / raw_set
    );
    println!(
        "RESULT session_get_p50_us ours={get:.1} baseline=raw_get_p50_us:{raw_get:.1} ratio={:.3}",
        get / raw_get
    );
    Ok(())
}

fn redact(url: &str) -> String {
    agentscale_core::config::redact_url(url)
}
