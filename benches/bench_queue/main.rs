//! Queue benchmark: the worker runtime over a queue backend, against a
//! baseline measured in the same run.
//!
//! ```text
//! cargo run --release --example bench_queue -- --backend memory
//! ```
//!
//! Ends with `RESULT <name> ours=<v> baseline=<name>:<v> ratio=<ours/baseline>`.
#![allow(clippy::print_stdout)]

mod common;
mod kafka;
mod local;
#[path = "../common/proc_cpu.rs"]
mod proc_cpu;
mod redis;
mod redis_cluster;

use clap::{Parser, ValueEnum};

/// Which queue backend to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// agentscale_queue::LocalQueue vs a raw tokio mpsc channel.
    Memory,
    /// agentscale_queue::redis::RedisQueue vs redis-benchmark pipelined XADD.
    Redis,
    /// RedisQueue with 3 shards vs 1 shard on Redis Cluster.
    RedisCluster,
    /// agentscale_queue::kafka::KafkaQueue vs raw rdkafka produce + consume.
    Kafka,
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Worker runtime + queue backend throughput against a same-run baseline")]
pub struct Args {
    /// Backend to measure.
    #[arg(long, value_enum, default_value = "memory")]
    pub backend: Backend,
    /// Tasks per round.
    #[arg(long, default_value_t = 200_000)]
    pub tasks: usize,
    /// Worker concurrency (handler slots).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Tasks per enqueue_batch call.
    #[arg(long, default_value_t = 1000)]
    pub enqueue_batch: usize,
    /// Measured rounds (the RESULT line reports the medians).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Kafka scaling: partition counts of the fresh topics, comma-separated
    /// (with `--workers`, every pair is measured; see kafka/scale.rs).
    #[arg(long, value_delimiter = ',')]
    pub partitions: Vec<i32>,
    /// Kafka scaling: worker instances (consumers of one group), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let outcome = match args.backend {
        Backend::Memory => local::run(&args).await,
        Backend::Redis => redis::run(&args).await,
        Backend::RedisCluster => redis_cluster::run(&args).await,
        Backend::Kafka => kafka::run(&args).await,
    };
    if let Err(e) = outcome {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
