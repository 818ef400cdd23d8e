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
//!   `lease_timeout` (default 15 minutes) above their longest run time, and
//!   the worker's task timeout (default 10 minutes) must be below it: the
//!   worker builder refuses a `task_timeout` at or above the lease timeout of
//!   a queue that cannot extend leases. A process that stops entirely loses
//!   its partitions after `session.timeout.ms`.
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
//! let config = KafkaQueueConfig::builder().brokers("127.0.0.1:9092").topic("agent-tasks")
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

mod admin;
mod config;
mod offsets;
mod poller;
mod records;
mod relay;
mod security;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};

use agentscale_core::task::now_ms;
use agentscale_core::{
    Capabilities, DeadLetter, Depth, Enqueued, Error, Lease, Nack, Result, Task, TaskQueue,
};

pub use admin::HEADER_PURGED;
use admin::*;
use config::*;
pub use config::{AssignmentStrategy, KafkaQueueConfig, KafkaQueueConfigBuilder};
use offsets::*;
use poller::*;
use records::*;
use relay::*;
pub use security::{KafkaProtocol, KafkaSaslMechanism, KafkaSecurityConfig, KAFKA_TLS_BUILT};

/// Reads a group's committed offsets of the given partitions.
type Committed<'a> = &'a dyn Fn(TopicPartitionList) -> rdkafka::error::KafkaResult<TopicPartitionList>;

/// Header: when a record in a retry topic is due (ms since the epoch).
pub const HEADER_DUE_MS: &str = "agentscale-due-ms";
/// Header: when a delayed task is finally due (ms since the epoch); a record
/// whose hop ends before it is parked again in a retry tier.
pub const HEADER_FINAL_DUE_MS: &str = "agentscale-final-due-ms";
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

/// A [`TaskQueue`] on a Kafka topic and consumer group. See the [module docs](self).
pub struct KafkaQueue {
    shared: Arc<Shared>,
    producer: FutureProducer,
    consumer: Arc<GroupConsumer>,
    relay: Arc<BaseConsumer<RelayContext>>,
    relay_stored: RelayStored,
    reader: Arc<Reader>,
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

impl KafkaQueue {
    /// Connects: checks that a broker answers within `connect_timeout`
    /// ([`Error::Unavailable`] if not), creates the topics (unless turned
    /// off), joins the consumer group and starts the poll and retry-relay
    /// threads. Must be called inside a Tokio runtime.
    pub async fn connect(config: KafkaQueueConfig) -> Result<KafkaQueue> {
        let config = config.validated()?;
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
            reader: Arc::new(Reader::default()),
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

    /// Where a task goes when enqueued now: the main topic, or a retry tier
    /// when it is not due yet.
    fn route(&self, task: &Task) -> (String, Vec<(&'static str, String)>) {
        let now = now_ms();
        match task.not_before_ms {
            Some(nb) if nb > now => park(&self.shared.config, now, nb),
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

    /// Produces `out`, then completes the settling slot; restores the lease
    /// on failure. The produce and the slot's completion (or roll-back) run
    /// on a task of their own, so a caller that drops this future midway
    /// never leaves the slot settling (which would freeze the partition's
    /// commit).
    async fn settle_via(&self, lease: &Lease, out: Result<Outgoing>) -> Result<()> {
        let (p, o) = self.parse_receipt(lease)?;
        let out = Arc::new(out?);
        let fence = lease.fence();
        self.shared.begin_settle(p, o, fence, out.clone())?;
        let (shared, consumer, producer) =
            (self.shared.clone(), self.consumer.clone(), self.producer.clone());
        let task = lease.task().clone();
        tokio::spawn(async move {
            if let Err(e) = out.deliver(&producer).await {
                shared.abort_settle(p, o, fence, task);
                return Err(e);
            }
            shared.complete(&consumer, p, o, fence, true)
        })
        .await
        .map_err(|e| Error::backend("kafka settle task failed", e))?
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

impl Drop for KafkaQueue {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }
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
            Nack::Release | Nack::Defer(Duration::ZERO) => {
                self.outgoing_for(&task, c.topic.clone(), Vec::new())
            }
            // Uncharged: the envelope keeps its attempt count.
            Nack::Defer(delay) => {
                let now = now_ms();
                let due = now.saturating_add(delay.as_millis().min(u64::MAX as u128) as u64);
                let (topic, headers) = park(c, now, due);
                self.outgoing_for(&task, topic, headers)
            }
            Nack::Retry(delay) => {
                task.attempt = lease.attempt();
                if delay.is_zero() {
                    self.outgoing_for(&task, c.topic.clone(), Vec::new())
                } else {
                    let now = now_ms();
                    let due = now.saturating_add(delay.as_millis().min(u64::MAX as u128) as u64);
                    let (topic, headers) = park(c, now, due);
                    self.outgoing_for(&task, topic, headers)
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
        let reader = self.reader.clone();
        let (lag, delayed, dead) = self
            .blocking(move |c| {
                reader.with(c, |probe| {
                    let timeout = c.connect_timeout;
                    let lag_of = |cons: Committed<'_>,
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
                    let main = lag_of(
                        &|t| consumer.committed_offsets(t, timeout),
                        &c.topic,
                        probe,
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
                        delayed += lag_of(&|t| relay.committed_offsets(t, timeout), &topic, probe, &local)?;
                    }
                    let dead = record_count(probe, &c.dead_letter_topic(), timeout)?
                        .saturating_sub(record_count(probe, &c.replayed_topic(), timeout)?);
                    Ok((main, delayed, dead))
                })
            })
            .await?;
        let in_flight = in_flight.min(lag);
        Ok(Depth {
            ready: lag - in_flight,
            in_flight,
            delayed,
            // A retry record's due time is in the record (its tier and
            // timestamp), and reading every tier to count them is too dear
            // for a depth poll: count every retry as due. A fleet with
            // retries pending then never scales to zero (it may wake before
            // a long backoff ends), and the worker's retry relay moves them.
            due_delayed: delayed,
            dead,
            oldest_ready_age: None,
        })
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let reader = self.reader.clone();
        let records = self
            .blocking(move |c| reader.with(c, |r| dead_letter_page(r, c, max)))
            .await?;
        Ok(records
            .into_iter()
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
        let reader = self.reader.clone();
        let wanted = id.to_owned();
        let found = self
            .blocking(move |c| reader.with(c, |r| dead_letter_by_id(r, c, &wanted)))
            .await?;
        let Some(r) = found else {
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
