//! Per-partition tracking of fetched records and the contiguous commit
//! position; shared between the poll thread, the rebalance callbacks and the API.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::Notify;

use agentscale_core::{Error, Result, Task};

use super::*;

#[derive(Debug)]
pub(crate) enum Slot {
    /// Fetched, waiting in the ready buffer.
    Buffered,
    /// Handed to a worker.
    Leased {
        at: Instant,
        task: Box<Task>,
        fence: u64,
    },
    /// Being moved elsewhere (retry, dead letter, reaped); completes on delivery.
    Settling {
        fence: u64,
        /// When the produce began; the reaper re-sends `out` if it seems lost.
        since: Instant,
        /// What is being produced (retry, dead letter, re-delivery).
        out: Arc<Outgoing>,
    },
    /// Finished; its offset may be committed once everything before it is.
    Done,
}

#[derive(Debug)]
pub(crate) struct Part {
    /// Assignment generation: ready records of an older one are dropped.
    pub(crate) generation: u64,
    pub(crate) slots: BTreeMap<i64, Slot>,
    /// The position committed or stored: everything below is finished.
    pub(crate) stored: i64,
    /// One past the last offset received.
    pub(crate) next: i64,
    pub(crate) buffered: usize,
    pub(crate) paused: bool,
}

impl Part {
    pub(crate) fn new(generation: u64) -> Self {
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
    pub(crate) fn position(&self) -> i64 {
        self.slots
            .iter()
            .find(|(_, s)| !matches!(s, Slot::Done))
            .map(|(o, _)| *o)
            .unwrap_or(self.next)
    }

    /// Drops finished slots at the front; returns the new position if it moved.
    pub(crate) fn advance(&mut self) -> Option<i64> {
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

    pub(crate) fn unsettled(&self) -> usize {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Leased { .. } | Slot::Settling { .. }))
            .count()
    }

    /// Forgets all tracking (a new log) under a new generation; returns how
    /// many leases were outstanding, to take off the in-flight count.
    pub(crate) fn reset(&mut self, generation: u64) -> u64 {
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
pub(crate) struct Ready {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) generation: u64,
    pub(crate) task: Task,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) parts: HashMap<i32, Part>,
    pub(crate) ready: VecDeque<Ready>,
    pub(crate) in_flight: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: KafkaQueueConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) settled: Condvar,
    pub(crate) ready_notify: Notify,
    pub(crate) fences: AtomicU64,
    pub(crate) closed: AtomicBool,
    /// Set when this queue had to create its (previously existing) main
    /// topic: the broker lost its log, so offsets held for the old one are
    /// meaningless (see [`Poller::restart_log`]).
    pub(crate) log_reset: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: KafkaQueueConfig) -> Shared {
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

    pub(crate) fn on_assign(&self, tpl: &TopicPartitionList) {
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
    pub(crate) fn on_revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
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
        let mut positions = Vec::new();
        let mut dropped = 0u64;
        for p in &revoked {
            if let Some(part) = st.parts.remove(p) {
                dropped += part
                    .slots
                    .values()
                    .filter(|s| matches!(s, Slot::Leased { .. }))
                    .count() as u64;
                let pos = part.position();
                positions.push((*p, pos));
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
        tracing::debug!(topic = %self.config.topic, partitions = ?revoked, ?positions, lost, "partitions revoked");
    }

    /// Marks `offset` finished if its slot is still `Leased` (or, with
    /// `from_settling`, `Settling`) under `fence`, then stores the new
    /// contiguous position. Fences are unique per delivery, and a revoked
    /// partition's slots are forgotten, so a stale lease never matches.
    pub(crate) fn complete<C: ConsumerContext>(
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
    pub(crate) fn complete_leases<C: ConsumerContext>(
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
    pub(crate) fn finish(
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
    pub(crate) fn store_positions<C: ConsumerContext>(
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
    pub(crate) fn begin_settle(
        &self,
        partition: i32,
        offset: i64,
        fence: u64,
        out: Arc<Outgoing>,
    ) -> Result<()> {
        let mut st = self.state.lock();
        let ok = match st
            .parts
            .get_mut(&partition)
            .and_then(|p| p.slots.get_mut(&offset))
        {
            Some(slot @ Slot::Leased { .. }) if slot.fence() == fence => {
                *slot = Slot::Settling {
                    fence,
                    since: Instant::now(),
                    out,
                };
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
    pub(crate) fn abort_settle(&self, partition: i32, offset: i64, fence: u64, task: Task) {
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
    pub(crate) fn next_token(&self) -> u64 {
        self.fences.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Slot {
    pub(crate) fn fence(&self) -> u64 {
        match self {
            Slot::Leased { fence, .. } | Slot::Settling { fence, .. } => *fence,
            Slot::Buffered | Slot::Done => 0,
        }
    }
}

pub(crate) struct GroupContext {
    pub(crate) shared: Arc<Shared>,
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

pub(crate) type GroupConsumer = BaseConsumer<GroupContext>;

#[cfg(test)]
mod tests {
    use super::*;

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
        let config = KafkaQueueConfig::builder()
            .brokers("127.0.0.1:1")
            .topic("t")
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
