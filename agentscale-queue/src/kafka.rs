//! Kafka task queue on [rdkafka] (bundled librdkafka).
//!
//! # Model
//!
//! Tasks are records of one topic, read by a consumer group. Kafka has no
//! per-record acknowledgement, only a committed offset per partition, so this
//! backend tracks every record it hands out and **commits only the highest
//! contiguous completed offset of each partition**: with many tasks in flight
//! and finishing out of order, nothing unfinished is ever committed. A worker
//! that dies loses its partitions to the other group members, which resume
//! from the committed offsets and so run its unfinished tasks again
//! (at-least-once; tasks completed after the last commit may run twice).
//!
//! * **Polling is separate from processing.** A dedicated thread polls the
//!   consumer and buffers records; [`lease`](TaskQueue::lease) takes from that
//!   buffer. A partition whose buffer reaches
//!   [`KafkaQueueConfigBuilder::prefetch_per_partition`] is paused and resumed
//!   when workers catch up, so prefetch is bounded and buffered records still
//!   count as lag ([`depth`](TaskQueue::depth) is computed from committed
//!   offsets, not from what was fetched). A resumed partition waits for
//!   librdkafka's next Fetch (see [`KafkaQueueConfigBuilder::fetch_wait`]).
//! * **Rebalancing** is cooperative (`cooperative-sticky`) by default. When a
//!   partition is revoked the queue stops dispatching its buffered records,
//!   waits up to [`KafkaQueueConfigBuilder::revoke_drain`] for in-flight tasks
//!   of that partition, commits synchronously, and forgets the partition: an
//!   ack or nack that arrives later returns [`Error::LeaseLost`] (the task
//!   will be delivered again by the new owner).
//! * **Retries** go through delay-tiered retry topics (`<topic>.retry.1s`,
//!   `.retry.10s`, `.retry.60s` by default). [`Nack::Retry`] produces the task
//!   (attempt charged) to the smallest tier at least as long as the delay,
//!   with a due-time header; a relay consumer (group `<group>.retry`) holds
//!   each tier partition until its head record is due and then re-produces it
//!   to the main topic. A delay shorter than its tier still waits for records
//!   ahead of it in the same tier (head-of-line), at most the tier length.
//! * **Dead letters** go to `<topic>.dlt` with headers
//!   `agentscale-origin-topic`, `agentscale-origin-partition`,
//!   `agentscale-origin-offset`, `agentscale-attempt`, `agentscale-reason`,
//!   `agentscale-dead-at-ms`. Records that are not task envelopes go there with
//!   the decode error as the reason and the consumer continues.
//!   [`replay_dead_letter`](TaskQueue::replay_dead_letter) re-produces one to
//!   the main topic and records the replay in `<topic>.dlt.replayed`.
//!
//! # What Kafka cannot do (see [`TaskQueue::capabilities`])
//!
//! * **No per-task lease extension**: [`extend`](TaskQueue::extend) returns
//!   [`Error::Unsupported`]. A lease lives as long as this process owns the
//!   partition, bounded by [`KafkaQueueConfigBuilder::lease_timeout`]: a lease
//!   not settled within it is taken back (the task is re-produced with the
//!   attempt charged and the old lease fenced), the same budget as Kafka's
//!   `max.poll.interval.ms`, which is set to it. **Long tasks** therefore need
//!   `lease_timeout` (default 5 minutes) above their longest run time and the
//!   worker's task timeout below it. A process that stops entirely loses its
//!   partitions after `session.timeout.ms`.
//! * **Fencing is partition ownership**: a lease is valid while its partition
//!   stays assigned to this queue with the same assignment generation.
//! * **No idempotent enqueue** by idempotency key, and **no priorities**.
//!
//! # Topics
//!
//! Topics are created explicitly with the admin API by
//! [`KafkaQueue::ensure_topics`], which [`KafkaQueue::connect`] calls unless
//! [`KafkaQueueConfigBuilder::create_topics`] is off.
//!
//! ```no_run
//! # async fn demo() -> agentscale_core::Result<()> {
//! use agentscale_core::{Task, TaskQueue};
//! use agentscale_queue::kafka::{KafkaQueue, KafkaQueueConfig};
//! use std::time::Duration;
//!
//! let config = KafkaQueueConfig::builder("127.0.0.1:9092", "agent-tasks")
//!     .group_id("agent-workers")
//!     .partitions(6)
//!     .build()?;
//! let queue = KafkaQueue::connect(config).await?;
//! queue.enqueue(Task::new("research", "{}")).await?;
//! for lease in queue.lease(10, Duration::from_secs(1)).await? {
//!     queue.ack(&lease).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! [rdkafka]: https://docs.rs/rdkafka

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::{Condvar, Mutex};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::Notify;

use agentscale_core::task::now_ms;
use agentscale_core::{
    Capabilities, DeadLetter, Depth, Enqueued, Error, Lease, Nack, Result, Task, TaskQueue,
};

/// Header: when a record in a retry topic is due (ms since the epoch).
pub const HEADER_DUE_MS: &str = "agentscale-due-ms";
/// Header: topic the dead letter came from.
pub const HEADER_ORIGIN_TOPIC: &str = "agentscale-origin-topic";
/// Header: partition the dead letter came from.
pub const HEADER_ORIGIN_PARTITION: &str = "agentscale-origin-partition";
/// Header: offset the dead letter came from.
pub const HEADER_ORIGIN_OFFSET: &str = "agentscale-origin-offset";
/// Header: attempts made before dead-lettering.
pub const HEADER_ATTEMPT: &str = "agentscale-attempt";
/// Header: why the record was dead-lettered.
pub const HEADER_REASON: &str = "agentscale-reason";
/// Header: when the record was dead-lettered (ms since the epoch).
pub const HEADER_DEAD_AT_MS: &str = "agentscale-dead-at-ms";
/// Header on `<topic>.dlt.replayed` records: the dead letter id replayed.
pub const HEADER_REPLAYED_ID: &str = "agentscale-replayed-id";

/// The partition assignment strategy of the consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AssignmentStrategy {
    /// `cooperative-sticky`: incremental rebalances; partitions that stay with a
    /// member keep running through a rebalance (the default).
    #[default]
    CooperativeSticky,
    /// `range`: eager rebalances (every partition is revoked and reassigned).
    Range,
    /// `roundrobin`: eager rebalances.
    RoundRobin,
}

impl AssignmentStrategy {
    fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
        }
    }
}

/// Configuration of a [`KafkaQueue`]; build it with [`KafkaQueueConfig::builder`].
#[derive(Clone)]
#[non_exhaustive]
pub struct KafkaQueueConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The task topic; also the queue's name.
    pub topic: String,
    /// The consumer group of the workers.
    pub group_id: String,
    /// Partitions of each topic created by [`KafkaQueue::ensure_topics`].
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Delays of the retry tiers, ascending.
    pub retry_tiers: Vec<Duration>,
    /// Use Kafka's idempotent producer (`enable.idempotence`).
    pub idempotence: bool,
    /// Key records by the task's session id (per-session ordering within a partition).
    pub key_by_session: bool,
    /// Records buffered per partition before the partition is paused.
    pub prefetch_per_partition: usize,
    /// A lease not settled within this time is taken back (also `max.poll.interval.ms`).
    pub lease_timeout: Duration,
    /// `session.timeout.ms` of the consumer group.
    pub session_timeout: Duration,
    /// How long a revoke waits for in-flight tasks of the revoked partitions.
    pub revoke_drain: Duration,
    /// Bound on start-up checks and admin calls.
    pub connect_timeout: Duration,
    /// Bound on one produce (`message.timeout.ms`).
    pub delivery_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    pub commit_interval: Duration,
    /// Longest time the broker may hold a fetch of the task consumer
    /// (`fetch.wait.max.ms`); see [`KafkaQueueConfigBuilder::fetch_wait`].
    pub fetch_wait: Duration,
    /// Create the topics at connect.
    pub create_topics: bool,
    /// Join the consumer group (lease tasks). Off for producer-only queues,
    /// which must not hold partitions they never lease from.
    pub consume: bool,
    /// Partition assignment strategy.
    pub assignment: AssignmentStrategy,
    /// Largest encoded envelope accepted at enqueue.
    pub max_envelope_bytes: usize,
    /// Extra librdkafka properties for every client (escape hatch, e.g. SASL/TLS).
    pub client_properties: BTreeMap<String, String>,
}

impl fmt::Debug for KafkaQueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: BTreeMap<&str, &str> = self
            .client_properties
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "token", "key"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("KafkaQueueConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("retry_tiers", &self.retry_tiers)
            .field("idempotence", &self.idempotence)
            .field("key_by_session", &self.key_by_session)
            .field("prefetch_per_partition", &self.prefetch_per_partition)
            .field("lease_timeout", &self.lease_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("revoke_drain", &self.revoke_drain)
            .field("connect_timeout", &self.connect_timeout)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("fetch_wait", &self.fetch_wait)
            .field("create_topics", &self.create_topics)
            .field("consume", &self.consume)
            .field("assignment", &self.assignment)
            .field("max_envelope_bytes", &self.max_envelope_bytes)
            .field("client_properties", &props)
            .finish()
    }
}

impl KafkaQueueConfig {
    /// A builder for a queue on `topic` at `brokers`, with defaults: group
    /// `<topic>-workers`, 6 partitions, replication 1, retry tiers 1s/10s/60s,
    /// idempotent producer on, keyed by session id, prefetch 256 per
    /// partition, lease timeout 5 min, session timeout 10 s, revoke drain 2 s,
    /// connect timeout 10 s, delivery timeout 30 s, commit every 500 ms,
    /// fetch wait 100 ms, topics created at connect, cooperative-sticky
    /// assignment.
    pub fn builder(brokers: impl Into<String>, topic: impl Into<String>) -> KafkaQueueConfigBuilder {
        let topic = topic.into();
        KafkaQueueConfigBuilder {
            config: KafkaQueueConfig {
                brokers: brokers.into(),
                group_id: format!("{topic}-workers"),
                topic,
                partitions: 6,
                replication_factor: 1,
                retry_tiers: vec![
                    Duration::from_secs(1),
                    Duration::from_secs(10),
                    Duration::from_secs(60),
                ],
                idempotence: true,
                key_by_session: true,
                prefetch_per_partition: 256,
                lease_timeout: Duration::from_secs(300),
                session_timeout: Duration::from_secs(10),
                revoke_drain: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(10),
                delivery_timeout: Duration::from_secs(30),
                commit_interval: Duration::from_millis(500),
                fetch_wait: Duration::from_millis(100),
                create_topics: true,
                consume: true,
                assignment: AssignmentStrategy::CooperativeSticky,
                max_envelope_bytes: agentscale_core::task::DEFAULT_MAX_ENVELOPE_BYTES,
                client_properties: BTreeMap::new(),
            },
        }
    }

    /// The retry topic of tier `i`.
    pub fn retry_topic(&self, tier: Duration) -> String {
        format!("{}.retry.{}", self.topic, tier_label(tier))
    }

    /// The dead-letter topic, `<topic>.dlt`.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlt", self.topic)
    }

    /// The topic recording replayed dead letters, `<topic>.dlt.replayed`.
    pub fn replayed_topic(&self) -> String {
        format!("{}.dlt.replayed", self.topic)
    }

    /// The consumer group of the retry relay, `<group>.retry`.
    pub fn retry_group_id(&self) -> String {
        format!("{}.retry", self.group_id)
    }

    /// Every topic the queue uses: main, retry tiers, dead letters, replays.
    pub fn all_topics(&self) -> Vec<String> {
        let mut t = vec![self.topic.clone()];
        t.extend(self.retry_tiers.iter().map(|d| self.retry_topic(*d)));
        t.push(self.dead_letter_topic());
        t.push(self.replayed_topic());
        t
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set(
            "socket.connection.setup.timeout.ms",
            ms(self.connect_timeout).to_string(),
        );
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }

    /// `client_config` plus what every consumer group member of this queue
    /// shares: manual offset storage with periodic commits of stored offsets,
    /// start from the earliest record, assignment strategy, session timeout
    /// with heartbeats at a third of it.
    fn group_client_config(&self, group_id: &str) -> ClientConfig {
        let mut c = self.client_config();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", ms(self.commit_interval).to_string())
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", self.assignment.as_str())
            .set("session.timeout.ms", ms(self.session_timeout).to_string())
            .set(
                "heartbeat.interval.ms",
                (ms(self.session_timeout) / 3).max(1).to_string(),
            );
        c
    }
}

fn tier_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms >= 60_000 * 60 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(i32::MAX as u128) as u64
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builder of [`KafkaQueueConfig`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct KafkaQueueConfigBuilder {
    config: KafkaQueueConfig,
}

impl KafkaQueueConfigBuilder {
    /// The consumer group (default `<topic>-workers`).
    pub fn group_id(mut self, group: impl Into<String>) -> Self {
        self.config.group_id = group.into();
        self
    }
    /// Partitions of created topics (default 6).
    pub fn partitions(mut self, n: i32) -> Self {
        self.config.partitions = n;
        self
    }
    /// Replication factor of created topics (default 1).
    pub fn replication_factor(mut self, n: i32) -> Self {
        self.config.replication_factor = n;
        self
    }
    /// Delays of the retry tiers (default 1 s, 10 s, 60 s).
    pub fn retry_tiers(mut self, tiers: impl IntoIterator<Item = Duration>) -> Self {
        self.config.retry_tiers = tiers.into_iter().collect();
        self
    }
    /// Kafka's idempotent producer (default on). Turn it off for brokers that
    /// do not implement `InitProducerId`.
    pub fn idempotence(mut self, on: bool) -> Self {
        self.config.idempotence = on;
        self
    }
    /// Key records by session id so a session's tasks share a partition (default on).
    pub fn key_by_session(mut self, on: bool) -> Self {
        self.config.key_by_session = on;
        self
    }
    /// Records buffered per partition before it is paused (default 256).
    pub fn prefetch_per_partition(mut self, n: usize) -> Self {
        self.config.prefetch_per_partition = n;
        self
    }
    /// How long a lease may stay unsettled (default 5 min); also `max.poll.interval.ms`.
    pub fn lease_timeout(mut self, d: Duration) -> Self {
        self.config.lease_timeout = d;
        self
    }
    /// `session.timeout.ms` (default 10 s): how soon a dead member's partitions move.
    pub fn session_timeout(mut self, d: Duration) -> Self {
        self.config.session_timeout = d;
        self
    }
    /// How long a revoke waits for in-flight tasks (default 2 s).
    pub fn revoke_drain(mut self, d: Duration) -> Self {
        self.config.revoke_drain = d;
        self
    }
    /// Bound on start-up checks and admin calls (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }
    /// Bound on one produce including retries (default 30 s).
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.config.delivery_timeout = d;
        self
    }
    /// How often completed offsets are committed (default 500 ms).
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.config.commit_interval = d;
        self
    }
    /// Longest time the broker may hold a fetch of the task consumer when it
    /// has nothing to return (`fetch.wait.max.ms`, default 100 ms; librdkafka's
    /// own default is 500 ms).
    ///
    /// librdkafka keeps one fetch per broker in flight, so a partition
    /// resumed after backpressure (see
    /// [`prefetch_per_partition`](Self::prefetch_per_partition)) is fetched
    /// again only when the fetch in flight for the caught-up partitions
    /// returns: up to this long. Some Kafka-protocol brokers (tansu 0.6) hold
    /// *every* fetch for at least half of it, even with records ready.
    /// Higher values mean fewer empty fetches on an idle topic.
    pub fn fetch_wait(mut self, d: Duration) -> Self {
        self.config.fetch_wait = d;
        self
    }
    /// Create topics at connect (default on).
    pub fn create_topics(mut self, on: bool) -> Self {
        self.config.create_topics = on;
        self
    }
    /// Join the consumer group and lease tasks (default on). Turn it off for
    /// a producer-only queue: a group member that never leases would hold
    /// partitions and starve the workers.
    pub fn consume(mut self, on: bool) -> Self {
        self.config.consume = on;
        self
    }
    /// Partition assignment strategy (default cooperative-sticky).
    pub fn assignment(mut self, s: AssignmentStrategy) -> Self {
        self.config.assignment = s;
        self
    }
    /// Largest encoded envelope accepted at enqueue (default 1 MiB).
    pub fn max_envelope_bytes(mut self, n: usize) -> Self {
        self.config.max_envelope_bytes = n;
        self
    }
    /// An extra librdkafka property for every client (escape hatch).
    pub fn client_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.client_properties.insert(key.into(), value.into());
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<KafkaQueueConfig> {
        let c = self.config;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if c.brokers.trim().is_empty() {
            return bad("kafka: brokers must not be empty".into());
        }
        if !valid_topic(&c.topic) || c.topic.len() > 180 {
            return bad(format!(
                "kafka: invalid topic name {:?} (use [A-Za-z0-9._-], at most 180)",
                c.topic
            ));
        }
        if c.group_id.is_empty() {
            return bad("kafka: group_id must not be empty".into());
        }
        if c.partitions < 1 || c.replication_factor < 1 {
            return bad("kafka: partitions and replication_factor must be at least 1".into());
        }
        if c.retry_tiers.is_empty() {
            return bad("kafka: at least one retry tier is needed".into());
        }
        if c.retry_tiers.windows(2).any(|w| w[0] >= w[1]) || c.retry_tiers[0].is_zero() {
            return bad("kafka: retry tiers must be positive and strictly ascending".into());
        }
        if c.prefetch_per_partition == 0 {
            return bad("kafka: prefetch_per_partition must be at least 1".into());
        }
        for (name, d) in [
            ("lease_timeout", c.lease_timeout),
            ("session_timeout", c.session_timeout),
            ("connect_timeout", c.connect_timeout),
            ("delivery_timeout", c.delivery_timeout),
            ("commit_interval", c.commit_interval),
        ] {
            if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
                return bad(format!("kafka: {name} must be between 1 ms and 1 day"));
            }
        }
        if c.fetch_wait < Duration::from_millis(1) || c.fetch_wait > Duration::from_secs(300) {
            return bad("kafka: fetch_wait must be between 1 ms and 5 min".into());
        }
        if c.max_envelope_bytes < 64 {
            return bad("kafka: max_envelope_bytes must be at least 64".into());
        }
        Ok(c)
    }
}

// ---------------------------------------------------------------------------
// Shared state between the poll thread, the rebalance callbacks and the API.

#[derive(Debug)]
enum Slot {
    /// Fetched, waiting in the ready buffer.
    Buffered,
    /// Handed to a worker.
    Leased {
        at: Instant,
        task: Box<Task>,
        fence: u64,
    },
    /// Being moved elsewhere (retry, dead letter, reaped); completes on delivery.
    Settling { fence: u64 },
    /// Finished; its offset may be committed once everything before it is.
    Done,
}

#[derive(Debug)]
struct Part {
    /// Assignment generation: ready records of an older one are dropped.
    generation: u64,
    slots: BTreeMap<i64, Slot>,
    /// The position committed or stored: everything below is finished.
    stored: i64,
    /// One past the last offset received.
    next: i64,
    buffered: usize,
    paused: bool,
}

impl Part {
    fn new(generation: u64) -> Self {
        Part {
            generation,
            slots: BTreeMap::new(),
            stored: -1,
            next: -1,
            buffered: 0,
            paused: false,
        }
    }

    /// The position to commit: the first unfinished offset, else one past the last received.
    fn position(&self) -> i64 {
        self.slots
            .iter()
            .find(|(_, s)| !matches!(s, Slot::Done))
            .map(|(o, _)| *o)
            .unwrap_or(self.next)
    }

    /// Drops finished slots at the front; returns the new position if it moved.
    fn advance(&mut self) -> Option<i64> {
        while let Some(entry) = self.slots.first_entry() {
            if matches!(entry.get(), Slot::Done) {
                entry.remove();
            } else {
                break;
            }
        }
        let pos = self.slots.keys().next().copied().unwrap_or(self.next);
        if pos > self.stored && pos >= 0 {
            self.stored = pos;
            Some(pos)
        } else {
            None
        }
    }

    fn unsettled(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Leased { .. } | Slot::Settling { .. }))
            .count()
    }

    /// Forgets all tracking (a new log) under a new generation; returns how
    /// many leases were outstanding, to take off the in-flight count.
    fn reset(&mut self, generation: u64) -> u64 {
        let leased = self
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Leased { .. }))
            .count() as u64;
        *self = Part::new(generation);
        leased
    }
}

#[derive(Debug)]
struct Ready {
    partition: i32,
    offset: i64,
    generation: u64,
    task: Task,
}

#[derive(Debug, Default)]
struct State {
    parts: HashMap<i32, Part>,
    ready: VecDeque<Ready>,
    in_flight: u64,
}

#[derive(Debug)]
struct Shared {
    config: KafkaQueueConfig,
    state: Mutex<State>,
    settled: Condvar,
    ready_notify: Notify,
    fences: AtomicU64,
    closed: AtomicBool,
    /// Set when this queue had to create its (previously existing) main
    /// topic: the broker lost its log, so offsets held for the old one are
    /// meaningless (see [`Poller::restart_log`]).
    log_reset: AtomicBool,
}

impl Shared {
    fn new(config: KafkaQueueConfig) -> Shared {
        Shared {
            config,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            ready_notify: Notify::new(),
            fences: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            log_reset: AtomicBool::new(false),
        }
    }

    fn on_assign(&self, tpl: &TopicPartitionList) {
        let mut st = self.state.lock();
        for e in tpl.elements_for_topic(&self.config.topic) {
            if st.parts.contains_key(&e.partition()) {
                // Assigned again without a revoke in between (seen with
                // tansu's coordinator): keep the tracking state, since the
                // fetched-but-unfinished records will not be fetched again.
                continue;
            }
            let generation = self.next_token();
            tracing::debug!(topic = %self.config.topic, partition = e.partition(), generation, "partition assigned");
            st.parts.insert(e.partition(), Part::new(generation));
        }
    }

    /// Revoke: stop dispatching, drain briefly, commit synchronously, forget.
    fn on_revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
        let revoked: HashSet<i32> = tpl
            .elements_for_topic(&self.config.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if revoked.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        let mut st = self.state.lock();
        // Stop dispatching: buffered records stay in the slots (unfinished),
        // so the commit below stops at the first of them.
        st.ready.retain(|r| !revoked.contains(&r.partition));
        if !lost {
            let deadline = Instant::now() + self.config.revoke_drain;
            loop {
                let busy: usize = revoked
                    .iter()
                    .filter_map(|p| st.parts.get(p))
                    .map(Part::unsettled)
                    .sum();
                if busy == 0 || self.settled.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
        }
        let mut commit = TopicPartitionList::new();
        let mut dropped = 0u64;
        for p in &revoked {
            if let Some(part) = st.parts.remove(p) {
                dropped += part
                    .slots
                    .values()
                    .filter(|s| matches!(s, Slot::Leased { .. }))
                    .count() as u64;
                let pos = part.position();
                if pos >= 0 {
                    let _ = commit.add_partition_offset(&self.config.topic, *p, Offset::Offset(pos));
                }
            }
        }
        st.in_flight = st.in_flight.saturating_sub(dropped);
        drop(st);
        if !lost && commit.count() > 0 {
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(topic = %self.config.topic, error = %e, "commit on revoke failed");
            }
        }
        tracing::debug!(topic = %self.config.topic, partitions = ?revoked, lost, "partitions revoked");
    }

    /// Marks `offset` finished if its slot is still `Leased` (or, with
    /// `from_settling`, `Settling`) under `fence`, then stores the new
    /// contiguous position. Fences are unique per delivery, and a revoked
    /// partition's slots are forgotten, so a stale lease never matches.
    fn complete<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        partition: i32,
        offset: i64,
        fence: u64,
        from_settling: bool,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let done = self.finish(&mut st, partition, offset, fence, from_settling);
        if done.is_ok() {
            self.store_positions(consumer, &mut st, &[partition]);
        }
        drop(st);
        self.settled.notify_all();
        done
    }

    /// [`complete`](Self::complete) for the leases of a batch of acks under
    /// one lock, with one offset store for every partition whose contiguous
    /// position moved and one wake-up of revoke/close drains.
    fn complete_leases<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        acks: impl Iterator<Item = Result<(i32, i64, u64)>>,
    ) -> Vec<Result<()>> {
        let mut st = self.state.lock();
        let mut touched: Vec<i32> = Vec::new();
        let results: Vec<Result<()>> = acks
            .map(|ack| {
                let (partition, offset, fence) = ack?;
                self.finish(&mut st, partition, offset, fence, false)?;
                if !touched.contains(&partition) {
                    touched.push(partition);
                }
                Ok(())
            })
            .collect();
        if !touched.is_empty() {
            self.store_positions(consumer, &mut st, &touched);
        }
        drop(st);
        self.settled.notify_all();
        results
    }

    /// Marks one slot `Done` (see [`complete`](Self::complete)).
    fn finish(
        &self,
        st: &mut State,
        partition: i32,
        offset: i64,
        fence: u64,
        from_settling: bool,
    ) -> Result<()> {
        let lost = || {
            Error::LeaseLost(format!(
                "{}:{partition}:{offset} is no longer leased by this consumer (settled, taken back or \
                 its partition was revoked)",
                self.config.topic
            ))
        };
        let Some(part) = st.parts.get_mut(&partition) else {
            return Err(lost());
        };
        match part.slots.get_mut(&offset) {
            Some(slot @ Slot::Leased { .. }) if !from_settling && slot.fence() == fence => {
                *slot = Slot::Done;
                st.in_flight = st.in_flight.saturating_sub(1);
                Ok(())
            }
            Some(slot @ Slot::Settling { .. }) if from_settling && slot.fence() == fence => {
                *slot = Slot::Done;
                Ok(())
            }
            _ => Err(lost()),
        }
    }

    /// Advances the contiguous position of `partitions` and stores the ones
    /// that moved (one `store_offsets` call). Called under the state lock,
    /// so nothing is stored for a partition after its revoke committed.
    fn store_positions<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        st: &mut State,
        partitions: &[i32],
    ) {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            if let Some(pos) = st.parts.get_mut(p).and_then(Part::advance) {
                let _ = tpl.add_partition_offset(&self.config.topic, *p, Offset::Offset(pos));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.store_offsets(&tpl) {
                // The partition was unassigned underneath us; the commit on
                // revoke (or the new owner) takes care of it.
                tracing::debug!(partitions = ?partitions, error = %e, "store offsets failed");
            }
        }
    }

    /// Moves a leased slot to `Settling` (before a nack produces elsewhere).
    fn begin_settle(&self, partition: i32, offset: i64, fence: u64) -> Result<()> {
        let mut st = self.state.lock();
        let ok = match st
            .parts
            .get_mut(&partition)
            .and_then(|p| p.slots.get_mut(&offset))
        {
            Some(slot @ Slot::Leased { .. }) if slot.fence() == fence => {
                *slot = Slot::Settling { fence };
                true
            }
            _ => false,
        };
        if ok {
            st.in_flight = st.in_flight.saturating_sub(1);
            Ok(())
        } else {
            Err(Error::LeaseLost(format!(
                "{}:{partition}:{offset} is no longer leased by this consumer",
                self.config.topic
            )))
        }
    }

    /// Puts a `Settling` slot back to `Leased` after a failed produce.
    fn abort_settle(&self, partition: i32, offset: i64, fence: u64, task: Task) {
        let mut st = self.state.lock();
        let mut restored = false;
        if let Some(slot @ Slot::Settling { .. }) = st
            .parts
            .get_mut(&partition)
            .and_then(|p| p.slots.get_mut(&offset))
        {
            if slot.fence() == fence {
                *slot = Slot::Leased {
                    at: Instant::now(),
                    task: Box::new(task),
                    fence,
                };
                restored = true;
            }
        }
        if restored {
            st.in_flight += 1;
        }
        drop(st);
        self.settled.notify_all();
    }

    /// A fresh token: partition generations and per-delivery fences.
    fn next_token(&self) -> u64 {
        self.fences.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Slot {
    fn fence(&self) -> u64 {
        match self {
            Slot::Leased { fence, .. } | Slot::Settling { fence } => *fence,
            Slot::Buffered | Slot::Done => 0,
        }
    }
}

struct GroupContext {
    shared: Arc<Shared>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.on_revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.shared.on_assign(tpl),
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

type GroupConsumer = BaseConsumer<GroupContext>;

// ---------------------------------------------------------------------------

/// Leaves the consumer group now. librdkafka keeps heartbeating from its own
/// threads, so a consumer that merely stops polling stays a member (holding
/// its partitions) until `max.poll.interval.ms`; unsubscribing and polling
/// until the revoke is served makes it leave at once.
fn leave_group<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        if consumer.assignment().map(|a| a.count() == 0).unwrap_or(true) {
            // One more poll lets the LeaveGroup go out.
            let _ = consumer.poll(Duration::from_millis(50));
            break;
        }
    }
}

/// A [`TaskQueue`] on a Kafka topic and consumer group. See the [module docs](self).
pub struct KafkaQueue {
    shared: Arc<Shared>,
    producer: FutureProducer,
    consumer: Arc<GroupConsumer>,
    relay: Arc<BaseConsumer<RelayContext>>,
    relay_stored: RelayStored,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for KafkaQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaQueue")
            .field("topic", &self.shared.config.topic)
            .field("group_id", &self.shared.config.group_id)
            .field("brokers", &self.shared.config.brokers)
            .finish_non_exhaustive()
    }
}

fn kafka_err(what: &str, e: KafkaError) -> Error {
    match &e {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge) => {
            Error::InvalidInput(format!("{what}: record too large for the broker"))
        }
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::QueueFull,
        )
        | KafkaError::MetadataFetch(_) => Error::unavailable(what.to_string(), e),
        _ => Error::backend(what.to_string(), e),
    }
}

fn header_str<'a>(msg: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Outgoing {
    fn send(&self, producer: &FutureProducer) -> std::result::Result<DeliveryFuture, KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).payload(&self.payload[..]);
        // No header list at all for plain tasks (the common case): an empty
        // one is still allocated and copied by librdkafka per record.
        if !self.headers.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
            for (k, v) in &self.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_str()),
                });
            }
            record = record.headers(headers);
        }
        if let Some(k) = &self.key {
            record = record.key(&k[..]);
        }
        let mut record = record;
        loop {
            match producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    async fn deliver(&self, producer: &FutureProducer) -> Result<()> {
        let fut = self.send(producer).map_err(|e| kafka_err("kafka produce", e))?;
        match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka_err(&format!("kafka produce to {}", self.topic), e)),
            Err(_) => Err(Error::Closed("kafka producer dropped".into())),
        }
    }

    fn deliver_blocking(&self, producer: &FutureProducer) -> Result<()> {
        let fut = self.send(producer).map_err(|e| kafka_err("kafka produce", e))?;
        match futures::executor::block_on(fut) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka_err(&format!("kafka produce to {}", self.topic), e)),
            Err(_) => Err(Error::Closed("kafka producer dropped".into())),
        }
    }
}

impl KafkaQueue {
    /// Connects: checks that a broker answers within `connect_timeout`
    /// ([`Error::Unavailable`] if not), creates the topics (unless turned
    /// off), joins the consumer group and starts the poll and retry-relay
    /// threads. Must be called inside a Tokio runtime.
    pub async fn connect(config: KafkaQueueConfig) -> Result<KafkaQueue> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::InvalidConfig("KafkaQueue::connect needs a Tokio runtime".into()))?;
        // Fail fast and clearly when no broker is reachable.
        let probe: BaseConsumer = config
            .client_config()
            .create()
            .map_err(|e| Error::InvalidConfig(format!("kafka client config: {e}")))?;
        let timeout = config.connect_timeout;
        let brokers = config.brokers.clone();
        // Metadata of our own topic only: all-topic metadata from some brokers
        // (tansu, after deletions) has crashed librdkafka's metadata cache.
        let probe_topic = config.topic.clone();
        tokio::task::spawn_blocking(move || probe.fetch_metadata(Some(&probe_topic), timeout).map(|_| ()))
            .await
            .map_err(|e| Error::backend("kafka probe task failed", e))?
            .map_err(|e| {
                Error::unavailable(
                    format!("no Kafka broker reachable at {brokers} within {timeout:?}"),
                    e,
                )
            })?;

        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", config.idempotence.to_string())
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", ms(config.delivery_timeout).to_string())
            .set(
                "message.max.bytes",
                (config.max_envelope_bytes + 64 * 1024).to_string(),
            )
            .create()
            .map_err(|e| Error::InvalidConfig(format!("kafka producer config: {e}")))?;

        let shared = Arc::new(Shared::new(config.clone()));
        if config.create_topics {
            ensure_topics(&config).await?;
        }
        let max_poll = ms(config.lease_timeout).max(ms(config.session_timeout) + 1000);
        let consumer: GroupConsumer = config
            .group_client_config(&config.group_id)
            .set("max.poll.interval.ms", max_poll.to_string())
            // Find recreated or new partitions within seconds, not 5 minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("queued.max.messages.kbytes", "16384")
            .set("fetch.wait.max.ms", ms(config.fetch_wait).to_string())
            .create_with_context(GroupContext {
                shared: shared.clone(),
            })
            .map_err(|e| Error::InvalidConfig(format!("kafka consumer config: {e}")))?;
        if config.consume {
            consumer
                .subscribe(&[config.topic.as_str()])
                .map_err(|e| Error::backend(format!("kafka subscribe to {}", config.topic), e))?;
        }
        let consumer = Arc::new(consumer);

        let held = Arc::new(Mutex::new(HashMap::new()));
        let relay: BaseConsumer<RelayContext> = config
            .group_client_config(&config.retry_group_id())
            .create_with_context(RelayContext { held: held.clone() })
            .map_err(|e| Error::InvalidConfig(format!("kafka relay consumer config: {e}")))?;
        let tier_topics: Vec<String> = config
            .retry_tiers
            .iter()
            .map(|d| config.retry_topic(*d))
            .collect();
        let tier_refs: Vec<&str> = tier_topics.iter().map(String::as_str).collect();
        if config.consume {
            relay
                .subscribe(&tier_refs)
                .map_err(|e| Error::backend("kafka subscribe to retry tiers", e))?;
        }
        let relay = Arc::new(relay);

        let poller = Poller {
            shared: shared.clone(),
            consumer: consumer.clone(),
            producer: producer.clone(),
            runtime: runtime.clone(),
        };
        let poll_thread = std::thread::Builder::new()
            .name(format!("kafka-poll-{}", config.topic))
            .spawn(move || poller.run())
            .map_err(|e| Error::backend("spawn kafka poll thread", e))?;
        let relay_stored: RelayStored = Arc::new(Mutex::new(HashMap::new()));
        let relayer = Relayer {
            shared: shared.clone(),
            consumer: relay.clone(),
            producer: producer.clone(),
            held,
            stored: relay_stored.clone(),
        };
        let relay_thread = std::thread::Builder::new()
            .name(format!("kafka-retry-{}", config.topic))
            .spawn(move || relayer.run())
            .map_err(|e| Error::backend("spawn kafka retry thread", e))?;

        Ok(KafkaQueue {
            shared,
            producer,
            consumer,
            relay,
            relay_stored,
            threads: Mutex::new(vec![poll_thread, relay_thread]),
        })
    }

    /// Creates the main, retry, dead-letter and replay topics if missing (admin
    /// API) and waits until the broker lists them.
    ///
    /// If the main topic had to be created again (a broker that lost its
    /// log), this consumer restarts every partition from the beginning of
    /// the new log instead of resuming at offsets of the old one.
    pub async fn ensure_topics(&self) -> Result<()> {
        if ensure_topics(&self.shared.config).await? && self.shared.config.consume {
            self.shared.log_reset.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaQueueConfig {
        &self.shared.config
    }

    /// Partitions of the main topic this queue owns right now.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.shared.state.lock().parts.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Partitions of the main topic the Kafka client says are assigned (for
    /// diagnostics; compare with [`assigned_partitions`](Self::assigned_partitions)).
    pub fn client_assignment(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&self.shared.config.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Stops polling, waits briefly for in-flight tasks, commits what finished
    /// and leaves the consumer group. Leases still held afterwards are lost
    /// (their tasks are delivered again to another member).
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.ready_notify.notify_waiters();
        let threads: Vec<JoinHandle<()>> = std::mem::take(&mut *self.threads.lock());
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        let _ = self.producer.flush(self.shared.config.delivery_timeout);
    }

    fn outgoing_for(
        &self,
        task: &Task,
        topic: String,
        extra: Vec<(&'static str, String)>,
    ) -> Result<Outgoing> {
        let payload = task.encode_limited(self.shared.config.max_envelope_bytes)?;
        let key = if self.shared.config.key_by_session {
            task.session_id.clone().map(String::into_bytes)
        } else {
            None
        };
        Ok(Outgoing {
            topic,
            key,
            payload,
            headers: extra,
        })
    }

    fn tier_for(&self, delay: Duration) -> Duration {
        let tiers = &self.shared.config.retry_tiers;
        tiers
            .iter()
            .copied()
            .find(|t| *t >= delay)
            .unwrap_or_else(|| tiers[tiers.len() - 1])
    }

    /// Where a task goes when enqueued now: the main topic, or a retry tier
    /// when it is not due yet.
    fn route(&self, task: &Task) -> (String, Vec<(&'static str, String)>) {
        let now = now_ms();
        match task.not_before_ms {
            Some(nb) if nb > now => {
                let tier = self.tier_for(Duration::from_millis(nb - now));
                (
                    self.shared.config.retry_topic(tier),
                    vec![(HEADER_DUE_MS, nb.to_string())],
                )
            }
            _ => (self.shared.config.topic.clone(), Vec::new()),
        }
    }

    fn parse_receipt(&self, lease: &Lease) -> Result<(i32, i64)> {
        let mut it = lease.receipt().splitn(2, ':');
        let p = it.next().and_then(|s| s.parse().ok());
        let o = it.next().and_then(|s| s.parse().ok());
        match (p, o) {
            (Some(p), Some(o)) => Ok((p, o)),
            _ => Err(Error::InvalidInput(format!(
                "not a Kafka lease receipt: {:?}",
                lease.receipt()
            ))),
        }
    }

    /// Produces `out`, then completes the settling slot; restores the lease on failure.
    async fn settle_via(&self, lease: &Lease, out: Result<Outgoing>) -> Result<()> {
        let (p, o) = self.parse_receipt(lease)?;
        let out = out?;
        self.shared.begin_settle(p, o, lease.fence())?;
        if let Err(e) = out.deliver(&self.producer).await {
            self.shared
                .abort_settle(p, o, lease.fence(), lease.task().clone());
            return Err(e);
        }
        self.shared.complete(&self.consumer, p, o, lease.fence(), true)
    }

    fn dead_letter_outgoing(
        &self,
        task: &Task,
        partition: i32,
        offset: i64,
        attempts: u32,
        reason: &str,
    ) -> Result<Outgoing> {
        let c = &self.shared.config;
        self.outgoing_for(
            task,
            c.dead_letter_topic(),
            dlt_headers(&c.topic, partition, offset, attempts, reason),
        )
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&KafkaQueueConfig) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> {
        let config = self.shared.config.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&config))
                .await
                .map_err(|e| Error::backend("kafka blocking task failed", e))?
        }
    }
}

fn dlt_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    attempts: u32,
    reason: &str,
) -> Vec<(&'static str, String)> {
    vec![
        (HEADER_ORIGIN_TOPIC, topic.to_string()),
        (HEADER_ORIGIN_PARTITION, partition.to_string()),
        (HEADER_ORIGIN_OFFSET, offset.to_string()),
        (HEADER_ATTEMPT, attempts.to_string()),
        (HEADER_REASON, reason.to_string()),
        (HEADER_DEAD_AT_MS, now_ms().to_string()),
    ]
}

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
}

/// Returns whether the main topic was created by this call.
async fn ensure_topics(config: &KafkaQueueConfig) -> Result<bool> {
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| Error::InvalidConfig(format!("kafka admin config: {e}")))?;
    let names = config.all_topics();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(config.connect_timeout))
        .request_timeout(Some(config.connect_timeout));
    let results = admin
        .create_topics(topics.iter(), &opts)
        .await
        .map_err(|e| Error::unavailable(format!("kafka create topics at {}", config.brokers), e))?;
    let mut created = false;
    for r in results {
        match r {
            Ok(name) => created |= name == config.topic,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Backend {
                    message: format!("kafka create topic {name}: {code}"),
                    source: None,
                })
            }
        }
    }
    // Wait until metadata lists every topic with its partitions.
    let timeout = config.connect_timeout;
    let wanted = names.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = wanted
                .iter()
                .all(|w| match admin.inner().fetch_metadata(Some(w), timeout) {
                    Ok(md) => md
                        .topics()
                        .iter()
                        .any(|t| t.name() == w && t.error().is_none() && !t.partitions().is_empty()),
                    Err(_) => false,
                });
            if ok {
                return Ok(created);
            }
            if Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    message: format!("kafka topics {wanted:?} not visible within {timeout:?}"),
                    source: None,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .map_err(|e| Error::backend("kafka metadata task failed", e))?
}

// ---------------------------------------------------------------------------
// The poll thread.

struct Poller {
    shared: Arc<Shared>,
    consumer: Arc<GroupConsumer>,
    producer: FutureProducer,
    runtime: tokio::runtime::Handle,
}

impl Poller {
    fn run(self) {
        let mut last_reap = Instant::now();
        let mut last_resync = Instant::now();
        let mut last_topic_check = Instant::now();
        while !self.shared.closed.load(Ordering::SeqCst) {
            match self.consumer.poll(Duration::from_millis(50)) {
                Some(Ok(msg)) => self.on_message(&msg),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.shared.config.topic, error = %e, "kafka poll error");
                    let missing = matches!(
                        e.rdkafka_error_code(),
                        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
                    );
                    // A broker that lost its topics (restart of a memory-backed
                    // broker): recreate them, at most every 2 s.
                    if missing
                        && self.shared.config.create_topics
                        && last_topic_check.elapsed() > Duration::from_secs(2)
                    {
                        last_topic_check = Instant::now();
                        let shared = self.shared.clone();
                        self.runtime.spawn(async move {
                            match ensure_topics(&shared.config).await {
                                Ok(true) => shared.log_reset.store(true, Ordering::SeqCst),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(error = %e, "recreating kafka topics failed"),
                            }
                        });
                    }
                }
            }
            if last_reap.elapsed() >= Duration::from_millis(200) {
                last_reap = Instant::now();
                self.reap();
            }
            if last_resync.elapsed() >= Duration::from_secs(1) {
                last_resync = Instant::now();
                self.resync_pause();
            }
            if self.shared.log_reset.swap(false, Ordering::SeqCst) {
                self.restart_log();
            }
        }
        // Closing: drain briefly and commit what finished.
        let deadline = Instant::now() + self.shared.config.revoke_drain;
        let mut st = self.shared.state.lock();
        st.ready.clear();
        loop {
            let busy: usize = st.parts.values().map(Part::unsettled).sum();
            if busy == 0 || self.shared.settled.wait_until(&mut st, deadline).timed_out() {
                break;
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, part) in st.parts.iter() {
            let pos = part.position();
            if pos >= 0 {
                let _ = tpl.add_partition_offset(&self.shared.config.topic, *p, Offset::Offset(pos));
            }
        }
        st.parts.clear();
        st.in_flight = 0;
        drop(st);
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "kafka commit on close failed");
            }
        }
        leave_group(&*self.consumer);
    }

    fn on_message(&self, msg: &BorrowedMessage<'_>) {
        let (p, off) = (msg.partition(), msg.offset());
        let shared = &self.shared;
        let decoded = msg.payload().map(Task::decode);
        let mut st = shared.state.lock();
        let st = &mut *st;
        let Some(part) = st.parts.get_mut(&p) else { return };
        if part.stored >= 0 && off < part.stored {
            // The log went backwards (a broker that lost its data): start over.
            tracing::warn!(
                partition = p,
                offset = off,
                stored = part.stored,
                "kafka partition reset"
            );
            let leased = part.reset(shared.next_token());
            st.in_flight = st.in_flight.saturating_sub(leased);
            st.ready.retain(|r| r.partition != p);
        }
        let Some(part) = st.parts.get_mut(&p) else { return };
        if part.slots.contains_key(&off) {
            return; // fetched again after a pause/resume: already tracked
        }
        if part.stored < 0 {
            part.stored = off;
        }
        part.next = part.next.max(off + 1);
        let generation = part.generation;
        match decoded {
            Some(Ok(task)) => {
                part.slots.insert(off, Slot::Buffered);
                part.buffered += 1;
                let pause = part.buffered >= shared.config.prefetch_per_partition && !part.paused;
                if pause {
                    part.paused = true;
                }
                st.ready.push_back(Ready {
                    partition: p,
                    offset: off,
                    generation,
                    task,
                });
                if pause {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&shared.config.topic, p);
                    if let Err(e) = self.consumer.pause(&tpl) {
                        tracing::debug!(partition = p, error = %e, "pause failed");
                    }
                }
                shared.ready_notify.notify_waiters();
            }
            other => {
                // Not an envelope: dead-letter it with the reason and go on.
                let reason = match other {
                    Some(Err(e)) => format!("not a task envelope: {e}"),
                    _ => "not a task envelope: empty record".to_string(),
                };
                let fence = shared.next_token();
                part.slots.insert(off, Slot::Settling { fence });
                let out = Outgoing {
                    topic: shared.config.dead_letter_topic(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: dlt_headers(&shared.config.topic, p, off, 0, &reason),
                };
                tracing::warn!(topic = %shared.config.topic, partition = p, offset = off, %reason, "dead-lettering record");
                self.settle_async(out, p, off, fence);
            }
        }
    }

    /// The main topic was created again (the broker lost its log): forget
    /// the tracking of the old log, commit offset 0 for every partition (so
    /// the next assignment, whoever gets it, starts at the new log's
    /// beginning instead of at old offsets past its end) and seek owned
    /// partitions to the beginning.
    fn restart_log(&self) {
        let topic = &self.shared.config.topic;
        tracing::warn!(%topic, "kafka topic was recreated: restarting from the beginning of the new log");
        let owned: Vec<i32> = {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            let mut owned = Vec::new();
            for (p, part) in st.parts.iter_mut() {
                let leased = part.reset(self.shared.next_token());
                st.in_flight = st.in_flight.saturating_sub(leased);
                owned.push(*p);
            }
            st.ready.clear();
            owned
        };
        // Overwrite the stored positions too, or the next auto-commit would
        // write the old log's offsets back.
        let mut stored = TopicPartitionList::new();
        for p in &owned {
            let _ = stored.add_partition_offset(topic, *p, Offset::Offset(0));
        }
        if stored.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&stored) {
                tracing::debug!(error = %e, "store offsets after topic recreation failed");
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.shared.config.partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(0));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(%topic, error = %e, "commit after topic recreation failed");
        }
        for p in owned {
            if let Err(e) = self
                .consumer
                .seek(topic, p, Offset::Beginning, Duration::from_secs(1))
            {
                tracing::debug!(partition = p, error = %e, "seek after topic recreation failed");
            }
        }
        self.shared.settled.notify_all();
    }

    /// Resumes every owned partition whose buffer is not full. A partition
    /// can be left paused in librdkafka when it was reassigned or reset
    /// while paused; this keeps the client's pause state in line with ours.
    fn resync_pause(&self) {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in self.shared.state.lock().parts.iter() {
            if !part.paused {
                tpl.add_partition(&self.shared.config.topic, *p);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::debug!(error = %e, "resume failed");
            }
        }
    }

    /// Produces `out` and completes the settling slot when it is delivered
    /// (retrying the produce until it succeeds or the partition moves).
    fn settle_async(&self, out: Outgoing, p: i32, off: i64, fence: u64) {
        let shared = self.shared.clone();
        let consumer = self.consumer.clone();
        let producer = self.producer.clone();
        self.runtime.spawn(async move {
            loop {
                match out.deliver(&producer).await {
                    Ok(()) => {
                        let _ = shared.complete(&consumer, p, off, fence, true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, topic = %out.topic, "kafka produce failed; retrying");
                        let owned = shared
                            .state
                            .lock()
                            .parts
                            .get(&p)
                            .and_then(|x| x.slots.get(&off))
                            .map(|slot| matches!(slot, Slot::Settling { .. }) && slot.fence() == fence)
                            .unwrap_or(false);
                        if !owned || shared.closed.load(Ordering::SeqCst) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }

    /// Takes back leases older than `lease_timeout`: the task is produced
    /// again (attempt charged) and the old lease is fenced.
    fn reap(&self) {
        let limit = self.shared.config.lease_timeout;
        let mut expired = Vec::new();
        {
            let mut st = self.shared.state.lock();
            let mut n = 0u64;
            for (p, part) in st.parts.iter_mut() {
                for (off, slot) in part.slots.iter_mut() {
                    if let Slot::Leased { at, .. } = slot {
                        let at = *at;
                        if at.elapsed() >= limit {
                            let fence = slot.fence();
                            if let Slot::Leased { task, .. } =
                                std::mem::replace(slot, Slot::Settling { fence })
                            {
                                expired.push((*p, *off, fence, task));
                                n += 1;
                            }
                        }
                    }
                }
            }
            st.in_flight = st.in_flight.saturating_sub(n);
        }
        for (p, off, fence, task) in expired {
            let c = &self.shared.config;
            let mut task = *task;
            task.attempt = task.attempt.saturating_add(1);
            let reason = format!("lease not settled within {limit:?}");
            tracing::warn!(topic = %c.topic, partition = p, offset = off, task = %task.id, "{reason}; taking it back");
            let (topic, headers) = if task.attempt >= task.max_attempts {
                (
                    c.dead_letter_topic(),
                    dlt_headers(&c.topic, p, off, task.attempt, &reason),
                )
            } else {
                (c.topic.clone(), Vec::new())
            };
            let key = if c.key_by_session {
                task.session_id.clone().map(String::into_bytes)
            } else {
                None
            };
            match task.encode() {
                Ok(payload) => self.settle_async(
                    Outgoing {
                        topic,
                        key,
                        payload,
                        headers,
                    },
                    p,
                    off,
                    fence,
                ),
                Err(e) => tracing::error!(error = %e, "re-encoding a leased task failed"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The retry relay: holds each retry-tier partition until its head is due.

#[derive(Debug, Clone, Copy)]
struct Held {
    offset: i64,
    due_ms: u64,
}

type HeldMap = Arc<Mutex<HashMap<(String, i32), Held>>>;
/// Positions the relay stored per retry-tier partition (fresher than commits).
type RelayStored = Arc<Mutex<HashMap<(String, i32), i64>>>;

struct RelayContext {
    held: HeldMap,
}

impl ClientContext for RelayContext {}

impl ConsumerContext for RelayContext {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut held = self.held.lock();
            for e in tpl.elements() {
                held.remove(&(e.topic().to_string(), e.partition()));
            }
        }
    }
}

struct Relayer {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<RelayContext>>,
    producer: FutureProducer,
    held: HeldMap,
    stored: RelayStored,
}

impl Relayer {
    fn run(self) {
        while !self.shared.closed.load(Ordering::SeqCst) {
            let now = now_ms();
            // Release partitions whose head record is due: seek back to it and resume.
            let due: Vec<((String, i32), Held)> = {
                let held = self.held.lock();
                held.iter()
                    .filter(|(_, h)| h.due_ms <= now)
                    .map(|(k, h)| (k.clone(), *h))
                    .collect()
            };
            for ((topic, p), h) in due {
                let mut tpl = TopicPartitionList::new();
                let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(h.offset));
                if let Err(e) = self.consumer.seek_partitions(tpl, Duration::from_secs(1)) {
                    tracing::debug!(error = %e, "retry relay seek failed");
                    continue;
                }
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&topic, p);
                let _ = self.consumer.resume(&tpl);
                self.held.lock().remove(&(topic, p));
            }
            let wait = {
                let held = self.held.lock();
                held.values()
                    .map(|h| h.due_ms.saturating_sub(now))
                    .min()
                    .unwrap_or(100)
                    .clamp(1, 100)
            };
            match self.consumer.poll(Duration::from_millis(wait)) {
                Some(Ok(msg)) => self.on_message(&msg),
                Some(Err(e)) => tracing::debug!(error = %e, "retry relay poll error"),
                None => {}
            }
        }
        let _ = self.consumer.commit_consumer_state(CommitMode::Sync);
        leave_group(&*self.consumer);
    }

    fn on_message(&self, msg: &BorrowedMessage<'_>) {
        let key = (msg.topic().to_string(), msg.partition());
        if self.held.lock().contains_key(&key) {
            return; // fetched before the pause took effect; re-read after the seek
        }
        let due = header_str(msg, HEADER_DUE_MS)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let hold = |due_ms: u64| {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(msg.topic(), msg.partition());
            let _ = self.consumer.pause(&tpl);
            self.held.lock().insert(
                key.clone(),
                Held {
                    offset: msg.offset(),
                    due_ms,
                },
            );
        };
        if due > now_ms() {
            hold(due);
            return;
        }
        let out = Outgoing {
            topic: self.shared.config.topic.clone(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: Vec::new(),
        };
        match out.deliver_blocking(&self.producer) {
            Ok(()) => {
                let mut tpl = TopicPartitionList::new();
                let _ =
                    tpl.add_partition_offset(msg.topic(), msg.partition(), Offset::Offset(msg.offset() + 1));
                let _ = self.consumer.store_offsets(&tpl);
                self.stored.lock().insert(key, msg.offset() + 1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "retry relay produce failed; will try again");
                hold(now_ms() + 1000);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Blocking helpers for reads outside the group (dead letters, watermarks).

fn reader(config: &KafkaQueueConfig) -> Result<BaseConsumer> {
    config
        .client_config()
        .set("group.id", format!("{}.reader", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| Error::InvalidConfig(format!("kafka reader config: {e}")))
}

fn partitions_of(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| Error::unavailable(format!("kafka metadata of {topic}"), e))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Low and high watermark of a partition. The high watermark is verified by
/// reading the last batch: some Kafka-protocol brokers (tansu 0.6) answer
/// ListOffsets(latest) with the *base* offset of the last batch + 1, which
/// undercounts when producers batch. On Kafka itself the read confirms the
/// reported value.
fn watermarks(c: &BaseConsumer, topic: &str, partition: i32, timeout: Duration) -> Result<(i64, i64)> {
    let (lo, hi) = c
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| Error::unavailable(format!("kafka watermarks of {topic}"), e))?;
    if hi <= lo {
        return Ok((lo, hi));
    }
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(hi - 1));
    c.assign(&tpl)
        .map_err(|e| Error::backend(format!("kafka assign {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    let mut top = hi;
    let mut seen = false;
    loop {
        let wait = if seen {
            Duration::ZERO
        } else {
            Duration::from_millis(20)
        };
        match c.poll(wait) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition && m.offset() >= hi - 1 => {
                top = top.max(m.offset() + 1);
                seen = true;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!(error = %e, "kafka watermark read error"),
            None if seen => break,
            None if Instant::now() >= deadline => break,
            None => {}
        }
    }
    let _ = c.unassign();
    Ok((lo, top))
}

/// Total records (high - low) of a topic.
fn record_count(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<u64> {
    let mut n = 0u64;
    for p in partitions_of(c, topic, timeout)? {
        let (lo, hi) = watermarks(c, topic, p, timeout)?;
        n += (hi - lo).max(0) as u64;
    }
    Ok(n)
}

struct DltRecord {
    id: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    reason: String,
    attempts: u32,
    dead_at_ms: u64,
}

/// Reads every record of `topic` (all partitions, low to high watermark).
fn read_all(
    c: &BaseConsumer,
    topic: &str,
    timeout: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in partitions_of(c, topic, timeout)? {
        let (lo, hi) = watermarks(c, topic, p, timeout)?;
        if hi > lo {
            let _ = tpl.add_partition_offset(topic, p, Offset::Offset(lo));
            remaining.insert(p, hi);
        }
    }
    if remaining.is_empty() {
        return Ok(());
    }
    c.assign(&tpl)
        .map_err(|e| Error::backend(format!("kafka assign {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    let mut seen = HashSet::new();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "reading {topic} did not finish within {timeout:?}"
            )));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if m.topic() != topic || !seen.insert((m.partition(), m.offset())) {
                    continue;
                }
                f(&m);
                if let Some(hi) = remaining.get(&m.partition()) {
                    if m.offset() + 1 >= *hi {
                        remaining.remove(&m.partition());
                    }
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "kafka reader poll error"),
            None => {}
        }
    }
    Ok(())
}

fn read_dead_letters(config: &KafkaQueueConfig) -> Result<(Vec<DltRecord>, HashSet<String>)> {
    let timeout = config.connect_timeout;
    let c = reader(config)?;
    let mut replayed = HashSet::new();
    read_all(&c, &config.replayed_topic(), timeout, |m| {
        if let Some(id) = header_str(m, HEADER_REPLAYED_ID) {
            replayed.insert(id.to_string());
        }
    })?;
    let c = reader(config)?;
    let mut out = Vec::new();
    read_all(&c, &config.dead_letter_topic(), timeout, |m| {
        out.push(DltRecord {
            id: format!("{}:{}", m.partition(), m.offset()),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            reason: header_str(m, HEADER_REASON).unwrap_or_default().to_string(),
            attempts: header_str(m, HEADER_ATTEMPT)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            dead_at_ms: header_str(m, HEADER_DEAD_AT_MS)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        });
    })?;
    out.sort_by_key(|r| r.dead_at_ms);
    Ok((out, replayed))
}

#[async_trait]
impl TaskQueue for KafkaQueue {
    fn name(&self) -> &str {
        &self.shared.config.topic
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.lease_extension = false;
        c.delayed_retry = true;
        c.priority_levels = 1;
        c.idempotent_enqueue = false;
        c.fencing = true;
        c.wire_format = true;
        c.dead_letter_replay = true;
        c.lease_timeout = self.shared.config.lease_timeout;
        c.max_envelope_bytes = self.shared.config.max_envelope_bytes;
        c
    }

    async fn enqueue(&self, task: Task) -> Result<Enqueued> {
        self.enqueue_batch(vec![task]).await.pop().unwrap_or_else(|| {
            Err(Error::Backend {
                message: "kafka enqueue produced no result".into(),
                source: None,
            })
        })
    }

    /// Sends every record, then waits for every delivery report; one result
    /// per task, in order.
    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let mut pending = Vec::with_capacity(tasks.len());
        for task in tasks {
            let sent = task.validate().and_then(|()| {
                let (topic, headers) = self.route(&task);
                let out = self.outgoing_for(&task, topic, headers)?;
                out.send(&self.producer)
                    .map_err(|e| kafka_err("kafka produce", e))
            });
            pending.push((task.id, sent));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (id, sent) in pending {
            out.push(match sent {
                Ok(fut) => match fut.await {
                    Ok(Ok(_)) => Ok(Enqueued { id, duplicate: false }),
                    Ok(Err((e, _))) => Err(kafka_err(&format!("kafka delivery of task {id}"), e)),
                    Err(_) => Err(Error::Closed("kafka producer dropped".into())),
                },
                Err(e) => Err(e),
            });
        }
        out
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed(format!(
                    "kafka queue {} is closed",
                    self.shared.config.topic
                )));
            }
            let notified = self.shared.ready_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut leases = Vec::new();
            let mut resume = Vec::new();
            {
                let mut st = self.shared.state.lock();
                let st = &mut *st;
                while leases.len() < max {
                    let Some(r) = st.ready.pop_front() else { break };
                    let Some(part) = st
                        .parts
                        .get_mut(&r.partition)
                        .filter(|p| p.generation == r.generation)
                    else {
                        continue;
                    };
                    let Some(slot) = part.slots.get_mut(&r.offset) else {
                        continue;
                    };
                    let fence = self.shared.next_token();
                    *slot = Slot::Leased {
                        at: Instant::now(),
                        task: Box::new(r.task.clone()),
                        fence,
                    };
                    part.buffered = part.buffered.saturating_sub(1);
                    if part.paused && part.buffered <= self.shared.config.prefetch_per_partition / 2 {
                        part.paused = false;
                        resume.push(r.partition);
                    }
                    st.in_flight += 1;
                    let attempt = r.task.attempt.saturating_add(1);
                    leases.push(Lease::new(
                        r.task,
                        attempt,
                        format!("{}:{}", r.partition, r.offset),
                        fence,
                    ));
                }
            }
            if !resume.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for p in resume {
                    tpl.add_partition(&self.shared.config.topic, p);
                }
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::debug!(error = %e, "resume failed");
                }
            }
            if !leases.is_empty() {
                return Ok(leases);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let (p, o) = self.parse_receipt(lease)?;
        self.shared.complete(&self.consumer, p, o, lease.fence(), false)
    }

    /// Acks a batch under one lock, storing each moved partition position
    /// once; one result per lease, in order (same outcomes as [`ack`](Self::ack)).
    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        self.shared.complete_leases(
            &self.consumer,
            leases
                .iter()
                .map(|l| self.parse_receipt(l).map(|(p, o)| (p, o, l.fence()))),
        )
    }

    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()> {
        let (p, o) = self.parse_receipt(lease)?;
        let c = &self.shared.config;
        let mut task = lease.task().clone();
        let out = match nack {
            Nack::Release => self.outgoing_for(&task, c.topic.clone(), Vec::new()),
            Nack::Retry(delay) => {
                task.attempt = lease.attempt();
                if delay.is_zero() {
                    self.outgoing_for(&task, c.topic.clone(), Vec::new())
                } else {
                    let due = now_ms() + delay.as_millis() as u64;
                    let topic = c.retry_topic(self.tier_for(delay));
                    self.outgoing_for(&task, topic, vec![(HEADER_DUE_MS, due.to_string())])
                }
            }
            Nack::DeadLetter(reason) => {
                task.attempt = lease.attempt();
                self.dead_letter_outgoing(&task, p, o, lease.attempt(), &reason)
            }
        };
        self.settle_via(lease, out).await
    }

    async fn extend(&self, _lease: &Lease, _by: Duration) -> Result<()> {
        Err(Error::Unsupported(format!(
            "kafka queue {}: leases cannot be extended per task; a lease lasts while the partition is owned, \
             up to lease_timeout ({:?})",
            self.shared.config.topic, self.shared.config.lease_timeout
        )))
    }

    async fn depth(&self) -> Result<Depth> {
        let consumer = self.consumer.clone();
        let relay = self.relay.clone();
        let relay_stored = self.relay_stored.lock().clone();
        // Owned partitions: the stored position and the tasks finished ahead
        // of it (finished out of order, not yet committable).
        let local: HashMap<i32, (i64, u64)> = self
            .shared
            .state
            .lock()
            .parts
            .iter()
            .map(|(p, x)| {
                (
                    *p,
                    (
                        x.stored,
                        x.slots.values().filter(|s| matches!(s, Slot::Done)).count() as u64,
                    ),
                )
            })
            .collect();
        let in_flight = self.shared.state.lock().in_flight;
        let (lag, delayed, dead) = self
            .blocking(move |c| {
                let timeout = c.connect_timeout;
                let lag_of =
                    |cons: &dyn Fn(TopicPartitionList) -> rdkafka::error::KafkaResult<TopicPartitionList>,
                     topic: &str,
                     probe: &BaseConsumer,
                     local: &HashMap<i32, (i64, u64)>|
                     -> Result<u64> {
                        let parts = partitions_of(probe, topic, timeout)?;
                        let mut tpl = TopicPartitionList::new();
                        for p in &parts {
                            tpl.add_partition(topic, *p);
                        }
                        let committed =
                            cons(tpl).map_err(|e| Error::unavailable("kafka committed offsets", e))?;
                        let mut lag = 0u64;
                        for p in parts {
                            let (lo, hi) = watermarks(probe, topic, p, timeout)?;
                            let mut pos = match committed.find_partition(topic, p).map(|e| e.offset()) {
                                Some(Offset::Offset(o)) => o,
                                _ => lo,
                            };
                            let mut done_ahead = 0;
                            if let Some((stored, done)) = local.get(&p) {
                                if *stored >= pos {
                                    pos = *stored;
                                    done_ahead = *done;
                                }
                            }
                            lag += ((hi - pos.max(lo)).max(0) as u64).saturating_sub(done_ahead);
                        }
                        Ok(lag)
                    };
                let probe = reader(c)?;
                let main = lag_of(
                    &|t| consumer.committed_offsets(t, timeout),
                    &c.topic,
                    &probe,
                    &local,
                )?;
                let mut delayed = 0;
                for tier in &c.retry_tiers {
                    let topic = c.retry_topic(*tier);
                    let local: HashMap<i32, (i64, u64)> = relay_stored
                        .iter()
                        .filter(|((t, _), _)| *t == topic)
                        .map(|((_, p), o)| (*p, (*o, 0)))
                        .collect();
                    delayed += lag_of(&|t| relay.committed_offsets(t, timeout), &topic, &probe, &local)?;
                }
                let dead = record_count(&probe, &c.dead_letter_topic(), timeout)?
                    .saturating_sub(record_count(&probe, &c.replayed_topic(), timeout)?);
                Ok((main, delayed, dead))
            })
            .await?;
        let in_flight = in_flight.min(lag);
        Ok(Depth {
            ready: lag - in_flight,
            in_flight,
            delayed,
            dead,
            oldest_ready_age: None,
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let (records, replayed) = self.blocking(read_dead_letters).await?;
        Ok(records
            .into_iter()
            .filter(|r| !replayed.contains(&r.id))
            .take(max)
            .map(|r| {
                let task = Task::decode(&r.payload).ok();
                DeadLetter {
                    id: r.id,
                    raw: if task.is_none() { Some(r.payload) } else { None },
                    task,
                    reason: r.reason,
                    attempts: r.attempts,
                    dead_at_ms: r.dead_at_ms,
                }
            })
            .collect())
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<()> {
        let (records, replayed) = self.blocking(read_dead_letters).await?;
        if replayed.contains(id) {
            return Err(Error::NotFound(format!("dead letter {id} was already replayed")));
        }
        let Some(r) = records.into_iter().find(|r| r.id == id) else {
            return Err(Error::NotFound(format!(
                "dead letter {id} in {}",
                self.shared.config.dead_letter_topic()
            )));
        };
        let mut task = Task::decode(&r.payload).map_err(|e| {
            Error::InvalidInput(format!(
                "dead letter {id} is not a task envelope ({e}); cannot replay"
            ))
        })?;
        task.attempt = 0;
        let out = Outgoing {
            topic: self.shared.config.topic.clone(),
            key: r.key,
            payload: task.encode()?,
            headers: Vec::new(),
        };
        out.deliver(&self.producer).await?;
        let marker = Outgoing {
            topic: self.shared.config.replayed_topic(),
            key: Some(id.as_bytes().to_vec()),
            payload: Vec::new(),
            headers: vec![(HEADER_REPLAYED_ID, id.to_string())],
        };
        marker.deliver(&self.producer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        assert!(KafkaQueueConfig::builder("127.0.0.1:9092", "tasks")
            .build()
            .is_ok());
        assert!(KafkaQueueConfig::builder("", "tasks").build().is_err());
        assert!(KafkaQueueConfig::builder("b:1", "bad topic").build().is_err());
        assert!(KafkaQueueConfig::builder("b:1", "t")
            .partitions(0)
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder("b:1", "t")
            .retry_tiers([])
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder("b:1", "t")
            .retry_tiers([Duration::from_secs(10), Duration::from_secs(1)])
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder("b:1", "t")
            .prefetch_per_partition(0)
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder("b:1", "t")
            .fetch_wait(Duration::ZERO)
            .build()
            .is_err());
    }

    #[test]
    fn topic_names() {
        let c = KafkaQueueConfig::builder("b:1", "t").build().expect("config");
        assert_eq!(
            c.all_topics(),
            vec![
                "t",
                "t.retry.1s",
                "t.retry.10s",
                "t.retry.60s",
                "t.dlt",
                "t.dlt.replayed"
            ]
        );
        assert_eq!(tier_label(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = KafkaQueueConfig::builder("b:1", "t")
            .client_property("sasl.password", "hunter2")
            .build()
            .expect("config");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn commits_only_contiguous_offsets() {
        let mut part = Part::new(1);
        part.stored = 10;
        part.next = 14;
        for o in 10..14 {
            part.slots.insert(
                o,
                Slot::Leased {
                    at: Instant::now(),
                    task: Box::new(Task::new("k", "x")),
                    fence: 1,
                },
            );
        }
        // 11 and 13 finish first: nothing can be committed yet.
        part.slots.insert(11, Slot::Done);
        part.slots.insert(13, Slot::Done);
        assert_eq!(part.advance(), None);
        assert_eq!(part.position(), 10);
        // 10 finishes: 10 and 11 are contiguous, 12 is not done.
        part.slots.insert(10, Slot::Done);
        assert_eq!(part.advance(), Some(12));
        part.slots.insert(12, Slot::Done);
        assert_eq!(part.advance(), Some(14));
        assert!(part.slots.is_empty());
    }

    #[test]
    fn batched_acks_store_only_contiguous_offsets() {
        let config = KafkaQueueConfig::builder("127.0.0.1:1", "t")
            .build()
            .expect("config");
        // Never connects: store_offsets on an unassigned partition just fails (logged).
        let consumer: BaseConsumer = config.group_client_config("g").create().expect("consumer");
        let shared = Shared::new(config);
        {
            let mut st = shared.state.lock();
            for p in [0, 1] {
                let mut part = Part::new(1);
                part.stored = 10;
                part.next = 14;
                for o in 10..14 {
                    let leased = Slot::Leased {
                        at: Instant::now(),
                        task: Box::new(Task::new("k", "x")),
                        fence: 100 + o as u64,
                    };
                    part.slots.insert(o, leased);
                }
                st.parts.insert(p, part);
            }
            st.in_flight = 8;
        }
        let lost = Error::LeaseLost("x".into());
        // Out of order, one stale fence, one unknown partition, one bad receipt.
        let results = shared.complete_leases(
            &consumer,
            vec![
                Ok((0, 11, 111)),
                Ok((0, 13, 113)),
                Ok((0, 12, 999)),
                Ok((1, 10, 110)),
                Ok((7, 10, 110)),
                Err(lost),
                Ok((1, 11, 111)),
            ]
            .into_iter(),
        );
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, false, true, false, false, true]);
        assert!(matches!(results[2], Err(Error::LeaseLost(_))));
        let st = shared.state.lock();
        assert_eq!(st.in_flight, 4);
        // Partition 0: 10 is unfinished, so nothing moves past it.
        assert_eq!(st.parts[&0].stored, 10);
        assert_eq!(st.parts[&0].position(), 10);
        // Partition 1: 10 and 11 done, 12 is not.
        assert_eq!(st.parts[&1].stored, 12);
        drop(st);
        // The stale fence did not settle offset 12 of partition 0.
        assert!(shared.complete_leases(&consumer, [Ok((0, 12, 112))].into_iter())[0].is_ok());
        assert!(shared.complete_leases(&consumer, [Ok((0, 12, 112))].into_iter())[0].is_err());
        assert!(shared.complete_leases(&consumer, [Ok((0, 10, 110))].into_iter())[0].is_ok());
        assert_eq!(shared.state.lock().parts[&0].stored, 14);
    }

    #[test]
    fn buffered_records_block_the_commit() {
        let mut part = Part::new(1);
        part.stored = 0;
        part.next = 3;
        part.slots.insert(0, Slot::Done);
        part.slots.insert(1, Slot::Buffered);
        part.slots.insert(2, Slot::Done);
        assert_eq!(part.advance(), Some(1));
        assert_eq!(
            part.position(),
            1,
            "a buffered (never leased) record was committed past"
        );
    }
}
