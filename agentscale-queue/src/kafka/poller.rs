//! The poll thread: fetches records, reaps expired leases, settles dead
//! letters and handles a recreated log.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};

use agentscale_core::Task;

use super::*;

/// Leaves the consumer group now. librdkafka keeps heartbeating from its own
/// threads, so a consumer that merely stops polling stays a member (holding
/// its partitions) until `max.poll.interval.ms`; unsubscribing and polling
/// until the revoke is served makes it leave at once.
pub(crate) fn leave_group<C: ConsumerContext>(consumer: &BaseConsumer<C>) {
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

pub(crate) struct Poller {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: Arc<GroupConsumer>,
    pub(crate) producer: FutureProducer,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Poller {
    pub(crate) fn run(self) {
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

    pub(crate) fn on_message(&self, msg: &BorrowedMessage<'_>) {
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
            tracing::debug!(topic = %shared.config.topic, partition = p, offset = off, "first record of the assignment");
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
                let out = Arc::new(Outgoing {
                    topic: shared.config.dead_letter_topic(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    headers: dlt_headers(&shared.config.topic, p, off, 0, &reason),
                });
                part.slots.insert(
                    off,
                    Slot::Settling {
                        fence,
                        since: Instant::now(),
                        out: out.clone(),
                    },
                );
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
    pub(crate) fn restart_log(&self) {
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
        // write the old log's offsets back; then commit them. Only the
        // partitions this member owns: another member's committed progress
        // is its own (it sees the new log start below its position and
        // resets itself), and overwriting it would replay its work.
        let restart = restart_positions(topic, &owned);
        if restart.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&restart) {
                tracing::debug!(error = %e, "store offsets after topic recreation failed");
            }
            if let Err(e) = self.consumer.commit(&restart, CommitMode::Sync) {
                tracing::warn!(%topic, error = %e, "commit after topic recreation failed");
            }
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
    pub(crate) fn resync_pause(&self) {
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
    pub(crate) fn settle_async(&self, out: Arc<Outgoing>, p: i32, off: i64, fence: u64) {
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
    /// again (attempt charged) and the old lease is fenced. Also re-sends
    /// what a slot stuck in `Settling` was producing (its produce is
    /// overdue: the task that ran it is gone), under a new fence, so no
    /// partition's commit waits on it forever.
    pub(crate) fn reap(&self) {
        let limit = self.shared.config.lease_timeout;
        let stale = self.shared.config.delivery_timeout * 2 + Duration::from_secs(1);
        let c = &self.shared.config;
        let mut resend = Vec::new();
        {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            let mut n = 0u64;
            for (p, part) in st.parts.iter_mut() {
                for (off, slot) in part.slots.iter_mut() {
                    match slot {
                        Slot::Leased { at, .. } if at.elapsed() >= limit => {
                            let fence = slot.fence();
                            let placeholder = Slot::Done;
                            let Slot::Leased { task, .. } = std::mem::replace(slot, placeholder) else {
                                continue;
                            };
                            let out = Arc::new(take_back(c, *p, *off, *task, limit));
                            *slot = Slot::Settling {
                                fence,
                                since: Instant::now(),
                                out: out.clone(),
                            };
                            resend.push((*p, *off, fence, out));
                            n += 1;
                        }
                        Slot::Settling { since, out, .. } if since.elapsed() >= stale => {
                            tracing::warn!(topic = %c.topic, partition = *p, offset = *off, "a settle did not finish; producing again");
                            let out = out.clone();
                            let fence = self.shared.next_token();
                            *slot = Slot::Settling {
                                fence,
                                since: Instant::now(),
                                out: out.clone(),
                            };
                            resend.push((*p, *off, fence, out));
                        }
                        _ => {}
                    }
                }
            }
            st.in_flight = st.in_flight.saturating_sub(n);
        }
        for (p, off, fence, out) in resend {
            self.settle_async(out, p, off, fence);
        }
    }
}

/// Offset 0 of each partition this member owns, for a restarted log.
pub(crate) fn restart_positions(topic: &str, owned: &[i32]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for p in owned {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(0));
    }
    tpl
}

/// The record that takes back an expired lease: the task again on the main
/// topic with the attempt charged, or to the dead-letter topic once its
/// attempts are spent. A task that cannot be encoded again (it was decoded
/// from this very record, so this should not happen) is dead-lettered with
/// its raw payload and the reason, rather than left unsettled.
pub(crate) fn take_back(c: &KafkaQueueConfig, p: i32, off: i64, mut task: Task, limit: Duration) -> Outgoing {
    task.attempt = task.attempt.saturating_add(1);
    let reason = format!("lease not settled within {limit:?}");
    tracing::warn!(topic = %c.topic, partition = p, offset = off, task = %task.id, "{reason}; taking it back");
    let key = if c.key_by_session {
        task.session_id.clone().map(String::into_bytes)
    } else {
        None
    };
    let (topic, headers) = if task.attempt >= task.max_attempts {
        (
            c.dead_letter_topic(),
            dlt_headers(&c.topic, p, off, task.attempt, &reason),
        )
    } else {
        (c.topic.clone(), Vec::new())
    };
    match task.encode() {
        Ok(payload) => Outgoing {
            topic,
            key,
            payload,
            headers,
        },
        Err(e) => {
            let reason = format!("{reason}; the task could not be encoded again: {e}");
            tracing::error!(topic = %c.topic, partition = p, offset = off, %reason, "dead-lettering the raw payload");
            Outgoing {
                topic: c.dead_letter_topic(),
                key,
                payload: task.payload.to_vec(),
                headers: dlt_headers(&c.topic, p, off, task.attempt, &reason),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_log_commits_only_owned_partitions() {
        let tpl = restart_positions("t", &[1, 4]);
        let mut got: Vec<(i32, Offset)> = tpl
            .elements_for_topic("t")
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        got.sort_by_key(|(p, _)| *p);
        assert_eq!(got, vec![(1, Offset::Offset(0)), (4, Offset::Offset(0))]);
        assert_eq!(tpl.count(), 2, "a partition another member owns was committed");
    }

    /// A slot left settling (its nack future dropped, or its produce task
    /// gone) used to stay so forever and freeze the partition's commit; the
    /// reaper now produces it again under a new fence.
    #[tokio::test]
    async fn the_reaper_recovers_a_stale_settling_slot() {
        let config = KafkaQueueConfig::builder()
            .brokers("127.0.0.1:1")
            .topic("t")
            .delivery_timeout(Duration::from_millis(10))
            .build()
            .expect("config");
        let shared = Arc::new(Shared::new(config.clone()));
        // Never connects: nothing here talks to a broker before the test ends.
        let consumer: GroupConsumer = config
            .group_client_config("g")
            .create_with_context(GroupContext {
                shared: shared.clone(),
            })
            .expect("consumer");
        let producer: FutureProducer = config.client_config().create().expect("producer");
        let poller = Poller {
            shared: shared.clone(),
            consumer: Arc::new(consumer),
            producer,
            runtime: tokio::runtime::Handle::current(),
        };
        let out = Arc::new(Outgoing {
            topic: "t.retry.1s".into(),
            key: None,
            payload: b"x".to_vec(),
            headers: Vec::new(),
        });
        {
            let mut st = shared.state.lock();
            let mut part = Part::new(1);
            part.stored = 5;
            part.next = 6;
            let since = Instant::now()
                .checked_sub(Duration::from_secs(5))
                .expect("an instant 5 s ago");
            part.slots.insert(5, Slot::Settling { fence: 7, since, out });
            st.parts.insert(0, part);
        }
        poller.reap();
        let st = shared.state.lock();
        match st.parts[&0].slots.get(&5) {
            Some(Slot::Settling { fence, since, .. }) => {
                assert_ne!(*fence, 7, "the stale settle was not taken over");
                assert!(since.elapsed() < Duration::from_secs(5));
            }
            other => panic!("unexpected slot {other:?}"),
        }
        drop(st);
        shared.closed.store(true, Ordering::SeqCst);
    }
}
