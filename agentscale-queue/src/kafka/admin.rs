//! Topics, watermarks and dead letters: admin calls and reads outside the group,
//! and the purge of dead letters.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use agentscale_core::{Error, Result};

use super::*;

/// Returns whether the main topic was created by this call.
pub(crate) async fn ensure_topics(config: &KafkaQueueConfig) -> Result<bool> {
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

pub(crate) fn reader(config: &KafkaQueueConfig) -> Result<BaseConsumer> {
    config
        .client_config()
        .set("group.id", format!("{}.reader", config.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|e| Error::InvalidConfig(format!("kafka reader config: {e}")))
}

pub(crate) fn partitions_of(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<Vec<i32>> {
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
pub(crate) fn watermarks(
    c: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64)> {
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
pub(crate) fn record_count(c: &BaseConsumer, topic: &str, timeout: Duration) -> Result<u64> {
    let mut n = 0u64;
    for p in partitions_of(c, topic, timeout)? {
        let (lo, hi) = watermarks(c, topic, p, timeout)?;
        n += (hi - lo).max(0) as u64;
    }
    Ok(n)
}

pub(crate) struct DltRecord {
    pub(crate) id: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) reason: String,
    pub(crate) attempts: u32,
    pub(crate) dead_at_ms: u64,
}

/// The consumer that reads outside the group (depth, dead letters), made on
/// first use and kept: `depth()` runs every few seconds on every worker with
/// metrics on, and a new librdkafka client per call costs threads, sockets
/// and a metadata round trip. Calls through it are serialized; a call that
/// fails drops it, and the next call makes a fresh one.
#[derive(Default)]
pub(crate) struct Reader(Mutex<Option<BaseConsumer>>);

impl Reader {
    /// Runs `f` on the kept consumer (made now if there is none).
    pub(crate) fn with<T>(
        &self,
        config: &KafkaQueueConfig,
        f: impl FnOnce(&BaseConsumer) -> Result<T>,
    ) -> Result<T> {
        let mut slot = self.0.lock();
        let c = match slot.take() {
            Some(c) => c,
            None => reader(config)?,
        };
        let out = f(&c);
        let _ = c.unassign();
        if out.is_ok() {
            *slot = Some(c);
        }
        out
    }
}

/// Reads `topic` from each partition's low watermark on and hands every
/// record to `f`, which answers whether it wants more of that partition. A
/// partition is done at its high watermark or when `f` says so; the read
/// ends when all are. `idle` bounds the wait for the *next* record, not the
/// whole read, so a large topic stays readable.
pub(crate) fn read_partitions(
    c: &BaseConsumer,
    topic: &str,
    idle: Duration,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for p in partitions_of(c, topic, idle)? {
        let (lo, hi) = watermarks(c, topic, p, idle)?;
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
    let mut deadline = Instant::now() + idle;
    let mut seen = HashSet::new();
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "reading {topic}: no record for {idle:?} with {} partition(s) unread",
                remaining.len()
            )));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let Some(hi) = remaining.get(&m.partition()).copied() else {
                    continue;
                };
                if m.topic() != topic || !seen.insert((m.partition(), m.offset())) {
                    continue;
                }
                deadline = Instant::now() + idle;
                if !f(&m) || m.offset() + 1 >= hi {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "kafka reader poll error"),
            None => {}
        }
    }
    Ok(())
}

/// The ids of the dead letters already replayed (the markers in
/// `<topic>.dlt.replayed`: headers only, a few dozen bytes each).
pub(crate) fn replayed_ids(c: &BaseConsumer, config: &KafkaQueueConfig) -> Result<HashSet<String>> {
    let mut replayed = HashSet::new();
    read_partitions(c, &config.replayed_topic(), config.connect_timeout, |m| {
        if let Some(id) = header_str(m, HEADER_REPLAYED_ID) {
            replayed.insert(id.to_string());
        }
        true
    })?;
    Ok(replayed)
}

fn dlt_record(m: &BorrowedMessage<'_>) -> DltRecord {
    DltRecord {
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
    }
}

/// The oldest `max` dead letters not yet replayed. Each partition is read
/// from its start only until it gave `max` of them, so memory is bounded by
/// `partitions × max` records whatever the topic's size.
pub(crate) fn dead_letter_page(
    c: &BaseConsumer,
    config: &KafkaQueueConfig,
    max: usize,
) -> Result<Vec<DltRecord>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let replayed = replayed_ids(c, config)?;
    let mut per_partition: HashMap<i32, usize> = HashMap::new();
    let mut out = Vec::new();
    read_partitions(c, &config.dead_letter_topic(), config.connect_timeout, |m| {
        let n = per_partition.entry(m.partition()).or_default();
        let r = dlt_record(m);
        if !replayed.contains(&r.id) {
            out.push(r);
            *n += 1;
        }
        *n < max
    })?;
    out.sort_by_key(|r| r.dead_at_ms);
    out.truncate(max);
    Ok(out)
}

/// One dead letter by id (`partition:offset`), read by seeking to it.
/// `Ok(None)` when no such record exists; an id already replayed is
/// [`Error::NotFound`] with that reason.
pub(crate) fn dead_letter_by_id(
    c: &BaseConsumer,
    config: &KafkaQueueConfig,
    id: &str,
) -> Result<Option<DltRecord>> {
    let Some((p, o)) = id
        .split_once(':')
        .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
    else {
        return Ok(None);
    };
    if replayed_ids(c, config)?.contains(id) {
        return Err(Error::NotFound(format!("dead letter {id} was already replayed")));
    }
    let topic = config.dead_letter_topic();
    let timeout = config.connect_timeout;
    if !partitions_of(c, &topic, timeout)?.contains(&p) {
        return Ok(None);
    }
    let (lo, hi) = watermarks(c, &topic, p, timeout)?;
    if o < lo || o >= hi {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(o));
    c.assign(&tpl)
        .map_err(|e| Error::backend(format!("kafka assign {topic}"), e))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == p && m.offset() >= o => {
                return Ok((m.offset() == o).then(|| dlt_record(&m)));
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => tracing::debug!(error = %e, "kafka reader poll error"),
        }
    }
    Err(Error::Timeout(format!(
        "reading dead letter {id} of {topic} did not finish within {timeout:?}"
    )))
}

/// Header on `<topic>.dlt.replayed` records written by a purge: the dead
/// letter was dropped, not re-produced.
pub const HEADER_PURGED: &str = "agentscale-purged";

impl KafkaQueue {
    /// Drops every dead letter not yet replayed and returns how many. Kafka
    /// cannot delete single records, so each one is marked settled in
    /// `<topic>.dlt.replayed` (with the [`HEADER_PURGED`] header), exactly as a
    /// replay marks it: it leaves [`dead_letters`](TaskQueue::dead_letters)
    /// and the `dead` count of [`depth`](TaskQueue::depth), and can no longer be
    /// replayed. The records stay in `<topic>.dlt` until its retention removes
    /// them. A purge that fails part-way leaves the unmarked ones in place.
    pub async fn purge_dead_letters(&self) -> Result<u64> {
        const PAGE: usize = 1000;
        let mut marked: HashSet<String> = HashSet::new();
        loop {
            let reader = self.reader.clone();
            let page = self
                .blocking(move |c| reader.with(c, |r| dead_letter_page(r, c, PAGE)))
                .await?;
            let fresh: Vec<DltRecord> = page.into_iter().filter(|r| !marked.contains(&r.id)).collect();
            if fresh.is_empty() {
                return Ok(marked.len() as u64);
            }
            for r in fresh {
                let marker = Outgoing {
                    topic: self.shared.config.replayed_topic(),
                    key: Some(r.id.as_bytes().to_vec()),
                    payload: Vec::new(),
                    headers: vec![(HEADER_REPLAYED_ID, r.id.clone()), (HEADER_PURGED, "1".into())],
                };
                marker.deliver(&self.producer).await?;
                marked.insert(r.id);
            }
        }
    }
}
