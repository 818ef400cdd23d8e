//! The queue a command works on: Redis or Kafka, connected for administration
//! only (a Kafka queue here never joins the workers' consumer group, creates
//! no topics and consumes nothing).

use agentscale_core::queue::{DeadLetter, Depth};
use agentscale_core::{Error, Priority, Result, Task, TaskQueue};

use crate::{BackendKind, CliError, CliResult, QueueArgs};

/// One ready task, as `queue peek` shows it.
pub(crate) struct Peeked {
    pub(crate) entry_id: String,
    pub(crate) priority: Priority,
    pub(crate) task: Option<Task>,
    pub(crate) raw_len: usize,
}

pub(crate) enum Queue {
    #[cfg(feature = "redis")]
    Redis(agentscale_queue::redis::RedisQueue),
    #[cfg(feature = "kafka")]
    Kafka(agentscale_queue::kafka::KafkaQueue),
}

#[cfg(not(all(feature = "redis", feature = "kafka")))]
fn not_built(kind: BackendKind) -> CliError {
    CliError::Usage(format!(
        "this agentscale binary was built without the `{}` feature",
        kind.as_str()
    ))
}

impl Queue {
    pub(crate) async fn connect(args: &QueueArgs) -> CliResult<Queue> {
        match args.backend {
            BackendKind::Redis => Self::redis(args).await,
            BackendKind::Kafka => Self::kafka(args).await,
        }
    }

    #[cfg(feature = "redis")]
    async fn redis(args: &QueueArgs) -> CliResult<Queue> {
        use agentscale_queue::redis::{RedisQueue, RedisQueueConfig, RedisQueueKeys};
        let mut cfg = RedisQueueConfig::new(args.url.as_str(), args.queue.as_str())
            .with_key_prefix(args.key_prefix.as_str())
            .with_consumer_name("agentscale-cli")
            .with_block_connections(1);
        if let Some(g) = &args.group {
            cfg = cfg.with_consumer_group(g.as_str());
        }
        cfg.connect_timeout = args.timeout;
        cfg.command_timeout = args.timeout;
        let connect = async {
            cfg.validate()?;
            let redis = agentscale_redis::Redis::connect(cfg.connection()).await?;
            // Connecting a queue creates its streams and consumer groups; an
            // operator's typo must not create a new, empty queue.
            let keys = RedisQueueKeys::new(&cfg.key_prefix, &cfg.queue);
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&keys.streams[..]).arg(&keys.delayed).arg(&keys.dead);
            let found: i64 = exists
                .query_async(&mut redis.connection())
                .await
                .map_err(|e| agentscale_redis::map_error("EXISTS", e))?;
            if found == 0 {
                return Err(Error::NotFound(format!(
                    "queue {} has no keys under prefix {:?} (check --queue and --key-prefix); nothing changed",
                    cfg.queue, cfg.key_prefix
                )));
            }
            RedisQueue::new(redis, cfg).await
        };
        let q = tokio::time::timeout(args.timeout + args.timeout, connect)
            .await
            .map_err(|_| CliError::Runtime(format!("redis did not answer within {:?}", args.timeout)))?
            .map_err(unreachable)?;
        Ok(Queue::Redis(q))
    }

    #[cfg(not(feature = "redis"))]
    async fn redis(args: &QueueArgs) -> CliResult<Queue> {
        Err(not_built(args.backend))
    }

    #[cfg(feature = "kafka")]
    async fn kafka(args: &QueueArgs) -> CliResult<Queue> {
        use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
        let mut b = KafkaQueueConfig::builder()
            .brokers(args.brokers.as_str())
            .topic(args.queue.as_str())
            .consume(false)
            .create_topics(false)
            // A handful of records (replays, purge markers): no need for the
            // idempotent producer handshake, which some brokers lack.
            .idempotence(false)
            .connect_timeout(args.timeout);
        if let Some(g) = &args.group {
            b = b.group_id(g.as_str());
        }
        for p in &args.kafka_properties {
            let Some((k, v)) = p.split_once('=') else {
                return Err(CliError::Usage(format!(
                    "--kafka-property {p:?}: expected KEY=VALUE"
                )));
            };
            b = b.client_property(k.trim(), v.trim());
        }
        let cfg = b.build()?;
        let q = KafkaQueue::connect(cfg).await.map_err(unreachable)?;
        Ok(Queue::Kafka(q))
    }

    #[cfg(not(feature = "kafka"))]
    async fn kafka(args: &QueueArgs) -> CliResult<Queue> {
        Err(not_built(args.backend))
    }

    fn as_dyn(&self) -> &dyn TaskQueue {
        match self {
            #[cfg(feature = "redis")]
            Queue::Redis(q) => q,
            #[cfg(feature = "kafka")]
            Queue::Kafka(q) => q,
        }
    }

    pub(crate) async fn depth(&self) -> Result<Depth> {
        self.as_dyn().depth().await
    }

    pub(crate) async fn peek(&self, limit: usize) -> Result<Vec<Peeked>> {
        match self {
            #[cfg(feature = "redis")]
            Queue::Redis(q) => Ok(q
                .peek_ready(limit)
                .await?
                .into_iter()
                .map(|e| Peeked {
                    entry_id: e.entry_id,
                    priority: e.priority,
                    raw_len: e.raw.as_ref().map_or(0, Vec::len),
                    task: e.task,
                })
                .collect()),
            #[cfg(feature = "kafka")]
            Queue::Kafka(q) => Err(Error::Unsupported(format!(
                "kafka queue {}: peek is not offered (a Kafka topic has no view of undelivered records \
                 apart from the group's offsets); use `queue stats` for the counts",
                q.config().topic
            ))),
        }
    }

    pub(crate) async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.as_dyn().dead_letters(limit).await
    }

    pub(crate) async fn replay(&self, id: &str) -> Result<()> {
        self.as_dyn().replay_dead_letter(id).await
    }

    pub(crate) async fn purge(&self) -> Result<u64> {
        match self {
            #[cfg(feature = "redis")]
            Queue::Redis(q) => q.purge_dead_letters().await,
            #[cfg(feature = "kafka")]
            Queue::Kafka(q) => {
                let n = q.purge_dead_letters().await;
                q.close().await;
                n
            }
        }
    }
}

/// A connection failure is a runtime error even when the backend calls it
/// invalid config (an unreachable URL is not a usage mistake).
fn unreachable(e: Error) -> CliError {
    match e.kind() {
        agentscale_core::ErrorKind::InvalidConfig | agentscale_core::ErrorKind::NotFound => {
            CliError::Usage(e.to_string())
        }
        _ => CliError::Runtime(e.to_string()),
    }
}
