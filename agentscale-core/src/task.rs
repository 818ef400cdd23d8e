//! The task envelope and its versioned wire encoding.
//!
//! A [`Task`] is what producers enqueue and workers lease. On the wire (Redis
//! stream entries, Kafka records) it is encoded by [`Task::encode`] as
//!
//! ```text
//! b"AS" | version: u8 | MessagePack map of the envelope fields (named)
//! ```
//!
//! MessagePack with named fields keeps the format readable from any language
//! (a Python or Go producer can write tasks) and lets later versions add
//! fields. [`Task::decode`] never panics: bad magic, an unknown version or a
//! malformed body is a typed [`CodecError`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{CodecError, Error, Result};

/// Magic bytes that start every encoded envelope.
pub const ENVELOPE_MAGIC: [u8; 2] = *b"AS";
/// The newest envelope wire version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Default limit on an encoded envelope (1 MiB); backends may lower or raise it.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// A task's unique id (a UUIDv7 string by default: time-ordered, so ids sort
/// roughly by creation).
///
/// Cloning is cheap (a shared, immutable string): queues and result stores
/// hand ids around often. Serialized as a plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(Arc<str>);

impl TaskId {
    /// A fresh time-ordered id.
    pub fn generate() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let id: &str = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
        TaskId(Arc::from(id))
    }

    /// Wraps an existing id (for example one read back from a backend).
    pub fn new(id: impl Into<String>) -> Self {
        TaskId(Arc::from(id.into()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct IdVisitor;
        impl serde::de::Visitor<'_> for IdVisitor {
            type Value = TaskId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task id string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<TaskId, E> {
                Ok(TaskId(Arc::from(v)))
            }
            // As `String` does: UTF-8 bytes are accepted too.
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<TaskId, E> {
                match std::str::from_utf8(v) {
                    Ok(s) => Ok(TaskId(Arc::from(s))),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(v), &self)),
                }
            }
        }
        deserializer.deserialize_string(IdVisitor)
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskId({})", self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Delivery priority. Backends that support priorities deliver every ready
/// `High` task before any ready `Normal` one, and `Normal` before `Low`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Interactive work that should overtake the backlog.
    High,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL_HIGHEST_FIRST: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// A dense index (High = 0, Normal = 1, Low = 2) for per-priority arrays.
    pub fn index(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }

    /// A short stable name (`high`, `normal`, `low`).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// Milliseconds since the Unix epoch, the time unit of the envelope.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The task envelope.
///
/// Build one with [`Task::new`] or [`Task::json`] and the `with_*` methods;
/// the queue validates it on enqueue ([`Task::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Unique id; also the fencing subject of a lease.
    pub id: TaskId,
    /// What kind of work this is (routes to handler logic), e.g. `"research"`.
    pub kind: String,
    /// The work itself, opaque to agentscale (JSON by convention).
    pub payload: Bytes,
    /// Failed attempts charged so far (0 for a new task). The lease of a
    /// delivery reports `attempt + 1` as the attempt number.
    #[serde(default)]
    pub attempt: u32,
    /// Attempts allowed before the task is dead-lettered.
    pub max_attempts: u32,
    /// When the producer created the task, in ms since the epoch.
    pub enqueued_at_ms: u64,
    /// Not to be delivered before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// Pointless to run after this time (ms since the epoch): a worker
    /// dead-letters a task leased at or after its deadline instead of running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Delivery priority.
    #[serde(default)]
    pub priority: Priority,
    /// Owning tenant, if the service is multi-tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The agent session this task belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Producer-chosen key that makes enqueue idempotent on backends that
    /// support it: a second enqueue with the same key is reported as a
    /// duplicate and not stored again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context (`traceparent` header value) of the producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Free-form headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Default attempts before dead-lettering.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

impl Task {
    /// A new task of `kind` carrying raw `payload`, with a fresh id.
    pub fn new(kind: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Task {
            id: TaskId::generate(),
            kind: kind.into(),
            payload: payload.into(),
            attempt: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            enqueued_at_ms: now_ms(),
            not_before_ms: None,
            deadline_ms: None,
            priority: Priority::Normal,
            tenant: None,
            session_id: None,
            idempotency_key: None,
            traceparent: None,
            headers: BTreeMap::new(),
        }
    }

    /// A new task whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(kind: impl Into<String>, value: &T) -> Result<Self> {
        let payload = serde_json::to_vec(value)
            .map_err(|e| Error::InvalidInput(format!("payload is not serialisable as JSON: {e}")))?;
        Ok(Task::new(kind, payload))
    }

    /// The payload parsed as JSON; a malformed payload is
    /// [`Error::InvalidInput`] (the worker dead-letters it without retrying).
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            Error::InvalidInput(format!(
                "payload of task {} ({}) is not valid: {e}",
                self.id, self.kind
            ))
        })
    }

    /// Sets the id (for producers that derive ids themselves).
    pub fn with_id(mut self, id: TaskId) -> Self {
        self.id = id;
        self
    }

    /// Sets the attempts allowed.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Delays the first delivery by `delay`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.not_before_ms = Some(now_ms() + delay.as_millis() as u64);
        self
    }

    /// Sets a deadline `within` from now.
    pub fn with_deadline_in(mut self, within: Duration) -> Self {
        self.deadline_ms = Some(now_ms() + within.as_millis() as u64);
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, p: Priority) -> Self {
        self.priority = p;
        self
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the session id.
    pub fn with_session(mut self, session: impl Into<String>) -> Self {
        self.session_id = Some(session.into());
        self
    }

    /// Sets the idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the W3C `traceparent`.
    pub fn with_traceparent(mut self, tp: impl Into<String>) -> Self {
        self.traceparent = Some(tp.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.insert(k.into(), v.into());
        self
    }

    /// Checks what a queue must refuse at enqueue: empty id or kind,
    /// `max_attempts` of 0, a malformed `traceparent`.
    pub fn validate(&self) -> Result<()> {
        if self.id.as_str().is_empty() {
            return Err(Error::InvalidInput("task id is empty".into()));
        }
        if self.kind.is_empty() {
            return Err(Error::InvalidInput("task kind is empty".into()));
        }
        if self.max_attempts == 0 {
            return Err(Error::InvalidInput(format!(
                "task {}: max_attempts must be at least 1",
                self.id
            )));
        }
        if let Some(tp) = &self.traceparent {
            if !is_valid_traceparent(tp) {
                return Err(Error::InvalidInput(format!(
                    "task {}: malformed traceparent {tp:?}",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// Encodes the envelope (magic, version, MessagePack body).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.payload.len());
        out.extend_from_slice(&ENVELOPE_MAGIC);
        out.push(ENVELOPE_VERSION);
        rmp_serde::encode::write_named(&mut out, &Wire::from(self))
            .map_err(|e| CodecError::Malformed(format!("encode failed: {e}")))?;
        Ok(out)
    }

    /// Encodes and refuses envelopes larger than `limit` bytes.
    pub fn encode_limited(&self, limit: usize) -> Result<Vec<u8>> {
        let bytes = self.encode()?;
        if bytes.len() > limit {
            return Err(Error::InvalidInput(
                CodecError::TooLarge {
                    size: bytes.len(),
                    limit,
                }
                .to_string(),
            ));
        }
        Ok(bytes)
    }

    /// Decodes an envelope. Never panics; any defect is a [`CodecError`].
    pub fn decode(bytes: &[u8]) -> std::result::Result<Task, CodecError> {
        if bytes.len() < 3 {
            return Err(CodecError::Malformed(format!(
                "{} bytes is too short for an envelope",
                bytes.len()
            )));
        }
        if bytes[..2] != ENVELOPE_MAGIC {
            return Err(CodecError::BadMagic);
        }
        let version = bytes[2];
        if version != ENVELOPE_VERSION {
            return Err(CodecError::UnknownVersion {
                found: version,
                supported: ENVELOPE_VERSION,
            });
        }
        let wire: Wire =
            rmp_serde::from_slice(&bytes[3..]).map_err(|e| CodecError::Malformed(e.to_string()))?;
        Ok(wire.into())
    }
}

/// The serialised form; `payload` goes as MessagePack binary, not an array.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: TaskId,
    kind: String,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    #[serde(default)]
    attempt: u32,
    max_attempts: u32,
    enqueued_at_ms: u64,
    #[serde(default)]
    not_before_ms: Option<u64>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

impl From<&Task> for Wire {
    fn from(t: &Task) -> Self {
        Wire {
            id: t.id.clone(),
            kind: t.kind.clone(),
            payload: t.payload.to_vec(),
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            enqueued_at_ms: t.enqueued_at_ms,
            not_before_ms: t.not_before_ms,
            deadline_ms: t.deadline_ms,
            priority: t.priority,
            tenant: t.tenant.clone(),
            session_id: t.session_id.clone(),
            idempotency_key: t.idempotency_key.clone(),
            traceparent: t.traceparent.clone(),
            headers: t.headers.clone(),
        }
    }
}

impl From<Wire> for Task {
    fn from(w: Wire) -> Self {
        Task {
            id: w.id,
            kind: w.kind,
            payload: Bytes::from(w.payload),
            attempt: w.attempt,
            max_attempts: w.max_attempts,
            enqueued_at_ms: w.enqueued_at_ms,
            not_before_ms: w.not_before_ms,
            deadline_ms: w.deadline_ms,
            priority: w.priority,
            tenant: w.tenant,
            session_id: w.session_id,
            idempotency_key: w.idempotency_key,
            traceparent: w.traceparent,
            headers: w.headers,
        }
    }
}

/// Checks the W3C trace-context `traceparent` shape:
/// `vv-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
pub fn is_valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Task {
        Task::new("research", &b"{\"q\":1}"[..])
            .with_tenant("acme")
            .with_session("s-1")
            .with_priority(Priority::High)
            .with_idempotency_key("k1")
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .with_header("x", "y")
    }

    #[test]
    fn round_trips() {
        let t = sample();
        let bytes = t.encode().expect("encode");
        assert_eq!(&bytes[..3], b"AS\x01");
        assert_eq!(Task::decode(&bytes).expect("decode"), t);
    }

    #[test]
    fn rejects_bad_input_without_panicking() {
        assert_eq!(
            Task::decode(b""),
            Err(CodecError::Malformed(
                "0 bytes is too short for an envelope".into()
            ))
        );
        assert_eq!(Task::decode(b"{\"id\":1}"), Err(CodecError::BadMagic));
        let mut bytes = sample().encode().expect("encode");
        bytes[2] = 9;
        assert_eq!(
            Task::decode(&bytes),
            Err(CodecError::UnknownVersion {
                found: 9,
                supported: 1
            })
        );
        let good = sample().encode().expect("encode");
        for cut in 3..good.len() {
            assert!(Task::decode(&good[..cut]).is_err(), "truncated at {cut} decoded");
        }
        // Every single-byte corruption either decodes or is a typed error.
        for i in 3..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = Task::decode(&b);
        }
    }

    #[test]
    fn validates() {
        assert!(sample().validate().is_ok());
        assert!(Task::new("", "x").validate().is_err());
        assert!(Task::new("k", "x").with_max_attempts(0).validate().is_err());
        assert!(Task::new("k", "x").with_traceparent("nope").validate().is_err());
        let err = Task::new("k", vec![0u8; 100])
            .encode_limited(50)
            .expect_err("too large");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
    }

    #[test]
    fn payload_json_errors_are_invalid_input() {
        let t = Task::new("k", "not json");
        let err = t.payload_json::<serde_json::Value>().expect_err("malformed");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
    }
}
