//! `--backend kafka`: KafkaQueue + Worker end to end against raw rdkafka
//! produce + consume of the same payloads on the same broker, same run.
//!
//! Per round, on fresh topics: ours = enqueue N no-op tasks (enqueue_batch,
//! every delivery report awaited) then drain them with the worker runtime
//! (consumer group, contiguous commits); baseline = a raw `FutureProducer`
//! sends the same encoded envelopes, then a raw group `BaseConsumer` reads
//! all N with auto-commit. Reads `AGENTSCALE_KAFKA_BROKERS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::{Error, Result, TaskQueue};
use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::{enqueue_all, median, noop_tasks, rate, result_line, run_worker_until_drained};
use crate::Args;

const DEFAULT_TASKS: usize = 50_000;
const PARTITIONS: i32 = 4;

fn config(brokers: &str, topic: &str, consume: bool) -> Result<KafkaQueueConfig> {
    let mut c = KafkaQueueConfig::builder(brokers, topic)
        .group_id(format!("{topic}-g"))
        .partitions(PARTITIONS)
        .idempotence(false)
        // tansu 0.6 cannot fetch from an offset inside a record batch (it
        // skips to the next batch or answers nothing; docs/kafka.md), which a
        // paused-and-resumed partition does: one record per batch, on both
        // sides of the comparison.
        .client_property("batch.num.messages", "1")
        .prefetch_per_partition(2048)
        .build()?;
    c.consume = consume;
    Ok(c)
}

/// Runs the Kafka benchmark and prints its table and RESULT line.
pub async fn run(args: &Args) -> Result<()> {
    let brokers = std::env::var("AGENTSCALE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let n = if args.tasks == 200_000 {
        DEFAULT_TASKS
    } else {
        args.tasks
    };
    println!(
        "# bench_queue --backend kafka: {n} no-op tasks, {PARTITIONS} partitions, worker concurrency {}, brokers {brokers}",
        args.concurrency
    );
    println!("| round | ours end-to-end (tasks/s) | raw rdkafka produce+consume (msgs/s) | ratio |");
    println!("|---|---|---|---|");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let b = raw_once(&brokers, n).await?;
        let o = ours_once(&brokers, n, args).await?;
        println!("| {round} | {o:.0} | {b:.0} | {:.3} |", o / b);
        ours.push(o);
        base.push(b);
    }
    let (o, b) = (median(ours), median(base));
    println!("| median | {o:.0} | {b:.0} | {:.3} |", o / b);
    result_line("kafka_tasks_per_s", o, "raw_rdkafka", b);
    Ok(())
}

async fn ours_once(brokers: &str, n: usize, args: &Args) -> Result<f64> {
    let topic = format!("bench-ours-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let producer = KafkaQueue::connect(config(brokers, &topic, false)?).await?;
    let consumer = Arc::new(KafkaQueue::connect(config(brokers, &topic, true)?).await?);
    let tasks = noop_tasks(n);
    let started = Instant::now();
    enqueue_all(&producer, tasks, args.enqueue_batch).await?;
    let shared: Arc<dyn TaskQueue> = consumer.clone();
    let (_, report) = run_worker_until_drained(shared, n as u64, args.concurrency).await?;
    let elapsed = started.elapsed();
    if report.completed != n as u64 {
        return Err(Error::Handler(format!("kafka run incomplete: {report:?}")));
    }
    consumer.close().await;
    producer.close().await;
    Ok(rate(n as u64, elapsed))
}

async fn raw_once(brokers: &str, n: usize) -> Result<f64> {
    let topic = format!("bench-raw-{}-{:08x}", std::process::id(), rand::random::<u32>());
    // Same topic layout, created the same way.
    let setup = KafkaQueue::connect(config(brokers, &topic, false)?).await?;
    setup.close().await;
    let payloads: Vec<Vec<u8>> = noop_tasks(n).iter().map(|t| t.encode()).collect::<Result<_>>()?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "false")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("batch.num.messages", "1")
        .create()
        .map_err(|e| Error::backend("raw producer", e))?;
    let started = Instant::now();
    let mut futs = Vec::with_capacity(n);
    for p in &payloads {
        let record = FutureRecord::<(), _>::to(&topic).payload(p);
        futs.push(producer.send(record, Duration::from_secs(30)));
        if futs.len() >= 1000 {
            for r in futures::future::join_all(futs.drain(..)).await {
                r.map_err(|(e, _)| Error::backend("raw produce", e))?;
            }
        }
    }
    for r in futures::future::join_all(futs).await {
        r.map_err(|(e, _)| Error::backend("raw produce", e))?;
    }
    let (brokers, topic) = (brokers.to_string(), topic.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{topic}-raw"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .create()
            .map_err(|e| Error::backend("raw consumer", e))?;
        c.subscribe(&[topic.as_str()])
            .map_err(|e| Error::backend("subscribe", e))?;
        let mut got = 0usize;
        let give_up = Instant::now() + Duration::from_secs(300);
        while got < n {
            if Instant::now() > give_up {
                return Err(Error::Timeout(format!("raw consumer read {got} of {n}")));
            }
            if let Some(Ok(_)) = c.poll(Duration::from_millis(100)) {
                got += 1;
            }
        }
        let _ = c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        Ok(())
    })
    .await
    .map_err(|e| Error::backend("raw consumer task", e))??;
    Ok(rate(n as u64, started.elapsed()))
}
