//! `--backend kafka`: KafkaQueue + Worker end to end against raw rdkafka
//! produce + consume of the same payloads on the same broker, same run.
//!
//! Per round, on fresh topics: ours = enqueue N no-op tasks (enqueue_batch,
//! every delivery report awaited) then drain them with the worker runtime
//! (consumer group, contiguous commits); baseline = a raw `FutureProducer`
//! sends the same encoded envelopes, then a raw group `BaseConsumer` reads
//! all N with auto-commit (it joins its group before its clock starts, as
//! ours is connected before its clock, and is paused while producing). Both clocks stop when the last task was handled
//! (ours: the last ack; raw: the last record read), and the two sides take
//! turns going first, since the broker's speed drifts during a run.
//! Reads `AGENTSCALE_KAFKA_BROKERS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::{Error, Result, TaskQueue};
use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::{enqueue_all, median, noop_tasks, rate, result_line, run_worker_until_drained};
use crate::Args;

mod scale;

const DEFAULT_TASKS: usize = 50_000;
const PARTITIONS: i32 = 4;

fn config(brokers: &str, topic: &str, consume: bool) -> Result<KafkaQueueConfig> {
    config_with(brokers, topic, consume, PARTITIONS)
}

fn config_with(brokers: &str, topic: &str, consume: bool, partitions: i32) -> Result<KafkaQueueConfig> {
    let mut c = KafkaQueueConfig::builder()
        .brokers(brokers)
        .topic(topic)
        .group_id(format!("{topic}-g"))
        .partitions(partitions)
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

/// Runs the Kafka benchmark and prints its table and RESULT line; with
/// `--partitions` or `--workers`, the scaling matrix instead (kafka/scale.rs).
pub async fn run(args: &Args) -> Result<()> {
    let brokers = std::env::var("AGENTSCALE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    if !args.partitions.is_empty() || !args.workers.is_empty() {
        return scale::run(&brokers, args).await;
    }
    let n = if args.tasks == 200_000 {
        DEFAULT_TASKS
    } else {
        args.tasks
    };
    println!(
        "# bench_queue --backend kafka: {n} no-op tasks, {PARTITIONS} partitions, worker concurrency {}, brokers {brokers}",
        args.concurrency
    );
    println!(
        "| round | ours end-to-end (tasks/s) | raw rdkafka produce+consume (msgs/s) | ratio | \
         ours enqueue / drain | raw produce / consume |"
    );
    println!("|---|---|---|---|---|---|");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (o, b) = if round % 2 == 1 {
            let b = raw_once(&brokers, n).await?;
            (ours_once(&brokers, n, args).await?, b)
        } else {
            let o = ours_once(&brokers, n, args).await?;
            (o, raw_once(&brokers, n).await?)
        };
        println!(
            "| {round} | {:.0} | {:.0} | {:.3} | {:.0} / {:.0} | {:.0} / {:.0} |",
            o.total,
            b.total,
            o.total / b.total,
            o.first,
            o.second,
            b.first,
            b.second
        );
        ours.push(o.total);
        base.push(b.total);
    }
    let (o, b) = (median(ours), median(base));
    println!("| median | {o:.0} | {b:.0} | {:.3} | | |", o / b);
    result_line("kafka_tasks_per_s", o, "raw_rdkafka", b);
    Ok(())
}

/// Rates of one side in one round (tasks/s): end to end, and of its two
/// phases (produce, then consume).
struct Rates {
    total: f64,
    first: f64,
    second: f64,
}

impl Rates {
    fn new(n: usize, first: Duration, second: Duration) -> Rates {
        let n = n as u64;
        Rates {
            total: rate(n, first + second),
            first: rate(n, first),
            second: rate(n, second),
        }
    }
}

async fn ours_once(brokers: &str, n: usize, args: &Args) -> Result<Rates> {
    let topic = format!("bench-ours-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let producer = KafkaQueue::connect(config(brokers, &topic, false)?).await?;
    let consumer = Arc::new(KafkaQueue::connect(config(brokers, &topic, true)?).await?);
    let tasks = noop_tasks(n);
    let started = Instant::now();
    enqueue_all(&producer, tasks, args.enqueue_batch).await?;
    let enqueued = started.elapsed();
    let shared: Arc<dyn TaskQueue> = consumer.clone();
    // Until the last ack (not until the worker has shut down).
    let (drained, report) = run_worker_until_drained(shared, n as u64, args.concurrency).await?;
    if report.completed != n as u64 {
        return Err(Error::Handler(format!("kafka run incomplete: {report:?}")));
    }
    consumer.close().await;
    producer.close().await;
    Ok(Rates::new(n, enqueued, drained))
}

async fn raw_once(brokers: &str, n: usize) -> Result<Rates> {
    let topic = format!("bench-raw-{}-{:08x}", std::process::id(), rand::random::<u32>());
    // Same topic layout, created the same way.
    let setup_config = config(brokers, &topic, false)?;
    // The consumer setting KafkaQueue applies to its own consumer, so that
    // both sides fetch alike.
    let fetch_wait = setup_config.fetch_wait.as_millis().to_string();
    let setup = KafkaQueue::connect(setup_config).await?;
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
    // The raw consumer joins its group before the clock starts (ours is
    // connected before its clock too) and is paused while the producer runs,
    // so its fetches do not load the broker during the produce phase (ours
    // prefetches at most `prefetch_per_partition` per partition, then pauses).
    let (b, t) = (brokers.to_string(), topic.clone());
    let consumer = tokio::task::spawn_blocking(move || -> Result<BaseConsumer> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", format!("{t}-raw"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            .set("fetch.wait.max.ms", &fetch_wait)
            .create()
            .map_err(|e| Error::backend("raw consumer", e))?;
        c.subscribe(&[t.as_str()])
            .map_err(|e| Error::backend("subscribe", e))?;
        let give_up = Instant::now() + Duration::from_secs(60);
        while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            if Instant::now() > give_up {
                return Err(Error::Timeout("raw consumer got no partitions".into()));
            }
            if let Some(Ok(_)) = c.poll(Duration::from_millis(50)) {
                return Err(Error::Handler(
                    "raw consumer read a record before any was produced".into(),
                ));
            }
        }
        let assigned = c.assignment().map_err(|e| Error::backend("assignment", e))?;
        c.pause(&assigned).map_err(|e| Error::backend("pause", e))?;
        Ok(c)
    })
    .await
    .map_err(|e| Error::backend("raw consumer task", e))??;
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
    let produced = started.elapsed();
    let consumed = tokio::task::spawn_blocking(move || -> Result<Duration> {
        let (c, consume_started) = (consumer, Instant::now());
        let assigned = c.assignment().map_err(|e| Error::backend("assignment", e))?;
        c.resume(&assigned).map_err(|e| Error::backend("resume", e))?;
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
        let consumed = consume_started.elapsed();
        let _ = c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        Ok(consumed)
    })
    .await
    .map_err(|e| Error::backend("raw consumer task", e))??;
    Ok(Rates::new(n, produced, consumed))
}
