//! The retry relay: holds each retry-tier partition until its head is due.
//!
//! Every record in tier `T` is due exactly `T` after it was produced (see
//! [`park`]), so records of a tier are due in the order they were written
//! and holding a partition at its head never delays a record that is due
//! earlier. A delay longer than one tier is served in hops: at the end of a
//! hop the relay parks the record again until its final due time.

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

    /// librdkafka has kept a partition's pause across a revoke and a later
    /// assignment (reported for several versions): a tier partition revoked
    /// while held would come back paused, with nothing left to resume it,
    /// and its retries would wait forever. A newly assigned partition is
    /// therefore resumed; its head record is read again from the committed
    /// position and held anew if it is not due yet. (With the bundled
    /// librdkafka against tansu the relay's test passes without this resume
    /// too: it guards the behaviour, it did not reproduce a failure.)
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let held = self.held.lock();
            let mut resume = TopicPartitionList::new();
            for e in tpl.elements() {
                if !held.contains_key(&(e.topic().to_string(), e.partition())) {
                    resume.add_partition(e.topic(), e.partition());
                }
            }
            drop(held);
            if resume.count() > 0 {
                if let Err(e) = consumer.resume(&resume) {
                    tracing::warn!(error = %e, "retry relay could not resume assigned partitions");
                }
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
        // A long delay: park it for another hop; else hand it to the workers.
        let now = now_ms();
        let (topic, headers) = match header_str(msg, HEADER_FINAL_DUE_MS)
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|f| *f > now)
        {
            Some(final_due) => park(&self.shared.config, now, final_due),
            None => (self.shared.config.topic.clone(), Vec::new()),
        };
        let out = Outgoing {
            topic,
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
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

/// Where to park a task that is due at `final_due` (ms), seen at `now`: the
/// largest tier not longer than the time left (the smallest tier when less
/// than it is left), due exactly one tier from now, plus the final due time
/// when the hop ends before it. A task is therefore late by less than the
/// smallest tier, and never waits behind a record due after it.
pub(crate) fn park(
    config: &KafkaQueueConfig,
    now: u64,
    final_due: u64,
) -> (String, Vec<(&'static str, String)>) {
    let left = Duration::from_millis(final_due.saturating_sub(now));
    let tiers = &config.retry_tiers;
    let tier = tiers.iter().copied().rfind(|t| *t <= left).unwrap_or(tiers[0]);
    let hop_due = now.saturating_add(tier.as_millis().min(u64::MAX as u128) as u64);
    let mut headers = vec![(HEADER_DUE_MS, hop_due.to_string())];
    if final_due > hop_due {
        headers.push((HEADER_FINAL_DUE_MS, final_due.to_string()));
    }
    (config.retry_topic(tier), headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_of(headers: &[(&'static str, String)], name: &str) -> Option<u64> {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    }

    #[test]
    fn a_long_delay_is_parked_in_hops_never_past_its_tier() {
        let c = KafkaQueueConfig::builder().topic("t").build().expect("config");
        // 5 minutes, longer than the largest tier (60 s).
        let (topic, h) = park(&c, 1_000, 1_000 + 300_000);
        assert_eq!(topic, "t.retry.60s");
        assert_eq!(
            due_of(&h, HEADER_DUE_MS),
            Some(61_000),
            "held the tier past its length"
        );
        assert_eq!(due_of(&h, HEADER_FINAL_DUE_MS), Some(301_000));
        // 2.5 s: a 1 s hop with the rest to go; 400 ms: the smallest tier, late < 1 s.
        let (topic, h) = park(&c, 0, 2_500);
        assert_eq!(
            (topic.as_str(), due_of(&h, HEADER_DUE_MS)),
            ("t.retry.1s", Some(1_000))
        );
        let (topic, h) = park(&c, 0, 400);
        assert_eq!(
            (topic.as_str(), due_of(&h, HEADER_DUE_MS)),
            ("t.retry.1s", Some(1_000))
        );
        assert_eq!(due_of(&h, HEADER_FINAL_DUE_MS), None);
        // 10 s exactly: one hop in the 10 s tier.
        let (topic, h) = park(&c, 0, 10_000);
        assert_eq!(
            (topic.as_str(), due_of(&h, HEADER_FINAL_DUE_MS)),
            ("t.retry.10s", None)
        );
    }

    #[test]
    fn records_of_a_tier_are_due_in_the_order_written() {
        let c = KafkaQueueConfig::builder().topic("t").build().expect("config");
        // Retries written over time with mixed delays: within each tier the
        // due times never decrease, so no retry waits behind a later-due one.
        let mut last: HashMap<String, u64> = HashMap::new();
        let delays = [
            300_000u64, 2_000, 45_000, 9_000, 120_000, 1_500, 61_000, 10, 700_000,
        ];
        for (i, d) in delays.iter().cycle().take(200).enumerate() {
            let now = 1_000 + i as u64 * 37;
            let (topic, h) = park(&c, now, now + d);
            let due = due_of(&h, HEADER_DUE_MS).expect("due");
            let prev = last.insert(topic.clone(), due).unwrap_or(0);
            assert!(due >= prev, "{topic}: {due} written after {prev}");
        }
    }
}
