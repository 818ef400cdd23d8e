//! Configuration of the Kafka queue.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::config::ClientConfig;

use super::security::KafkaSecurityConfig;
use serde::{Deserialize, Serialize};

use agentscale_core::config::Secret;
use agentscale_core::{Error, Result};

/// The partition assignment strategy of the consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
        }
    }
}

/// Configuration of a [`KafkaQueue`](super::KafkaQueue).
///
/// Build one with [`KafkaQueueConfig::builder`], or load it with
/// [`ConfigLoader`](agentscale_core::config::ConfigLoader) (serde; durations
/// as milliseconds or strings such as `"30s"`; the assignment strategy as
/// `cooperative-sticky`, `range` or `roundrobin`) and pass it to
/// [`KafkaQueue::connect`](super::KafkaQueue::connect), which validates it.
/// An empty `group_id` means `<topic>-workers`. `Debug` hides the values of
/// client properties whose name says secret, password, token or key.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KafkaQueueConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The task topic; also the queue's name.
    pub topic: String,
    /// The consumer group of the workers.
    pub group_id: String,
    /// Partitions of each topic created by [`KafkaQueue::ensure_topics`](super::KafkaQueue::ensure_topics).
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Delays of the retry tiers, ascending.
    #[serde(with = "duration_list")]
    pub retry_tiers: Vec<Duration>,
    /// Use Kafka's idempotent producer (`enable.idempotence`).
    pub idempotence: bool,
    /// Key records by the task's session id (per-session ordering within a partition).
    pub key_by_session: bool,
    /// Records buffered per partition before the partition is paused.
    pub prefetch_per_partition: usize,
    /// A lease not settled within this time is taken back (also `max.poll.interval.ms`).
    #[serde(with = "agentscale_core::config::duration")]
    pub lease_timeout: Duration,
    /// `session.timeout.ms` of the consumer group.
    #[serde(with = "agentscale_core::config::duration")]
    pub session_timeout: Duration,
    /// How long a revoke waits for in-flight tasks of the revoked partitions.
    #[serde(with = "agentscale_core::config::duration")]
    pub revoke_drain: Duration,
    /// Bound on start-up checks and admin calls.
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Bound on one produce (`message.timeout.ms`).
    #[serde(with = "agentscale_core::config::duration")]
    pub delivery_timeout: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(with = "agentscale_core::config::duration")]
    pub commit_interval: Duration,
    /// Longest time the broker may hold a fetch of the task consumer
    /// (`fetch.wait.max.ms`); see [`KafkaQueueConfigBuilder::fetch_wait`].
    #[serde(with = "agentscale_core::config::duration")]
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
    /// TLS and SASL (typed; see [`KafkaSecurityConfig`]).
    pub security: KafkaSecurityConfig,
    /// Extra librdkafka properties for every client (escape hatch; prefer
    /// `security` for TLS and SASL).
    pub client_properties: BTreeMap<String, Secret>,
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
                (k.as_str(), if secret { "<redacted>" } else { v.expose() })
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
            .field("security", &self.security)
            .field("client_properties", &props)
            .finish()
    }
}

impl Default for KafkaQueueConfig {
    /// Brokers `127.0.0.1:9092`, topic `tasks`, group `<topic>-workers`, 6
    /// partitions, replication 1, retry tiers 1s/10s/60s, idempotent
    /// producer on, keyed by session id, prefetch 256 per partition, lease
    /// timeout 15 min, session timeout 10 s, revoke drain 2 s, connect
    /// timeout 10 s, delivery timeout 30 s, commit every 500 ms, fetch wait
    /// 100 ms, topics created at connect, cooperative-sticky assignment.
    fn default() -> Self {
        KafkaQueueConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "tasks".into(),
            group_id: String::new(),
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
            lease_timeout: Duration::from_secs(900),
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
            security: KafkaSecurityConfig::default(),
            client_properties: BTreeMap::new(),
        }
    }
}

impl KafkaQueueConfig {
    /// A builder starting from the [defaults](Self::default); set at least
    /// `brokers` and `topic`.
    pub fn builder() -> KafkaQueueConfigBuilder {
        KafkaQueueConfigBuilder {
            config: KafkaQueueConfig::default(),
        }
    }

    /// Checks every field and fills an empty `group_id` with
    /// `<topic>-workers`; [`Error::InvalidConfig`] names the field.
    pub fn validated(mut self) -> Result<KafkaQueueConfig> {
        if self.group_id.is_empty() {
            self.group_id = format!("{}-workers", self.topic);
        }
        self.validate()?;
        Ok(self)
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

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set(
            "socket.connection.setup.timeout.ms",
            ms(self.connect_timeout).to_string(),
        );
        self.security.apply(&mut c);
        for (k, v) in &self.client_properties {
            c.set(k, v.expose());
        }
        c
    }

    /// `client_config` plus what every consumer group member of this queue
    /// shares: manual offset storage with periodic commits of stored offsets,
    /// start from the earliest record, assignment strategy, session timeout
    /// with heartbeats at a third of it.
    pub(crate) fn group_client_config(&self, group_id: &str) -> ClientConfig {
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

pub(crate) fn tier_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms >= 60_000 * 60 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(i32::MAX as u128) as u64
}

pub(crate) fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Builder of [`KafkaQueueConfig`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct KafkaQueueConfigBuilder {
    pub(crate) config: KafkaQueueConfig,
}

impl KafkaQueueConfigBuilder {
    /// Bootstrap servers, `host:port[,host:port…]` (default `127.0.0.1:9092`).
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.config.brokers = brokers.into();
        self
    }
    /// The task topic, also the queue's name (default `tasks`).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.config.topic = topic.into();
        self
    }
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
    /// How long a lease may stay unsettled (default 15 min, above the worker's default task timeout of 10 min); also `max.poll.interval.ms`.
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
    /// TLS and SASL settings.
    pub fn security(mut self, security: KafkaSecurityConfig) -> Self {
        self.config.security = security;
        self
    }
    /// An extra librdkafka property for every client (escape hatch).
    pub fn client_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .client_properties
            .insert(key.into(), Secret::new(value.into()));
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<KafkaQueueConfig> {
        self.config.validated()
    }
}

impl KafkaQueueConfig {
    /// Checks every field; [`Error::InvalidConfig`] names the field.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        c.security.validate()?;
        if c.brokers.trim().is_empty() {
            return bad("kafka: brokers must not be empty".into());
        }
        if !valid_topic(&c.topic) || c.topic.len() > 180 {
            return bad(format!(
                "kafka: invalid topic name {:?} (use [A-Za-z0-9._-], at most 180)",
                c.topic
            ));
        }
        if c.group_id.is_empty() || !valid_topic(&c.group_id) {
            return bad(format!(
                "kafka: group_id {:?} must be 1-200 characters from [A-Za-z0-9._-]",
                c.group_id
            ));
        }
        if c.partitions < 1 || c.replication_factor < 1 {
            return bad(format!(
                "kafka: partitions ({}) and replication_factor ({}) must be at least 1",
                c.partitions, c.replication_factor
            ));
        }
        if c.retry_tiers.is_empty() {
            return bad("kafka: retry_tiers needs at least one tier".into());
        }
        if c.retry_tiers.windows(2).any(|w| w[0] >= w[1]) || c.retry_tiers[0].is_zero() {
            return bad("kafka: retry_tiers must be positive and strictly ascending".into());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_validates() {
        assert!(KafkaQueueConfig::builder()
            .brokers("127.0.0.1:9092")
            .topic("tasks")
            .build()
            .is_ok());
        assert!(KafkaQueueConfig::builder()
            .brokers("")
            .topic("tasks")
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("bad topic")
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .partitions(0)
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .retry_tiers([])
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .retry_tiers([Duration::from_secs(10), Duration::from_secs(1)])
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .prefetch_per_partition(0)
            .build()
            .is_err());
        assert!(KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .fetch_wait(Duration::ZERO)
            .build()
            .is_err());
    }

    #[test]
    fn topic_names() {
        let c = KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .build()
            .expect("config");
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
    fn loads_from_toml_and_env_through_the_loader() {
        use agentscale_core::config::ConfigLoader;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kafka.toml");
        std::fs::write(
            &path,
            "brokers = \"k1:9092,k2:9092\"\ntopic = \"jobs\"\nretry_tiers = [\"500ms\", \"5s\"]\n\
             assignment = \"range\"\n[client_properties]\n\"sasl.password\" = \"hunter2\"\n",
        )
        .expect("write");
        let c: KafkaQueueConfig = ConfigLoader::new()
            .file(&path)
            .env_prefix("K")
            .env_vars([("K_LEASE_TIMEOUT", "20m"), ("K_PARTITIONS", "12")])
            .load()
            .expect("load");
        let c = c.validated().expect("valid");
        assert_eq!(c.brokers, "k1:9092,k2:9092");
        assert_eq!(c.group_id, "jobs-workers");
        assert_eq!(
            c.retry_tiers,
            [Duration::from_millis(500), Duration::from_secs(5)]
        );
        assert_eq!(c.assignment, AssignmentStrategy::Range);
        assert_eq!(c.lease_timeout, Duration::from_secs(1200));
        assert_eq!(c.partitions, 12);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_field() {
        use agentscale_core::config::ConfigLoader;
        let e = ConfigLoader::new()
            .env_prefix("K")
            .env_vars([("K_SESSION_TIMEOUT", "forever")])
            .load::<KafkaQueueConfig>()
            .map(|_| ())
            .expect_err("bad duration");
        assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("session_timeout"), "{e}");
        for (b, field) in [
            (KafkaQueueConfig::builder().partitions(0), "partitions"),
            (KafkaQueueConfig::builder().topic("a b"), "topic"),
            (KafkaQueueConfig::builder().retry_tiers([]), "retry_tiers"),
            (
                KafkaQueueConfig::builder().prefetch_per_partition(0),
                "prefetch_per_partition",
            ),
            (
                KafkaQueueConfig::builder().lease_timeout(Duration::ZERO),
                "lease_timeout",
            ),
        ] {
            let e = b.build().map(|_| ()).expect_err(field);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = KafkaQueueConfig::builder()
            .brokers("b:1")
            .topic("t")
            .client_property("sasl.password", "hunter2")
            .build()
            .expect("config");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}

/// Serde for a list of durations (each as milliseconds or a duration string).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Ms(u64),
        Text(String),
    }

    pub(super) fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let ms: Vec<u64> = v
            .iter()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .collect();
        ms.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(|r| match r {
                Repr::Ms(ms) => Ok(Duration::from_millis(ms)),
                Repr::Text(t) => {
                    agentscale_core::config::parse_duration(&t).map_err(serde::de::Error::custom)
                }
            })
            .collect()
    }
}
