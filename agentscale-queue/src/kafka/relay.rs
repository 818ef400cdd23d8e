//! The retry relay: holds each retry-tier partition until its head is due.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use agentscale_core::task::now_ms;

use super::*;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Held {
    pub(crate) offset: i64,
    pub(crate) due_ms: u64,
}

pub(crate) type HeldMap = Arc<Mutex<HashMap<(String, i32), Held>>>;
/// Positions the relay stored per retry-tier partition (fresher than commits).
pub(crate) type RelayStored = Arc<Mutex<HashMap<(String, i32), i64>>>;

pub(crate) struct RelayContext {
    pub(crate) held: HeldMap,
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

pub(crate) struct Relayer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: Arc<BaseConsumer<RelayContext>>,
    pub(crate) producer: FutureProducer,
    pub(crate) held: HeldMap,
    pub(crate) stored: RelayStored,
}

impl Relayer {
    pub(crate) fn run(self) {
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

    pub(crate) fn on_message(&self, msg: &BorrowedMessage<'_>) {
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
