//! Contracts for state that lives outside the worker process: session state,
//! long-term memory (vector search) and the tool-result cache.
//!
//! Every key is tenant-scoped, and identifiers are validated
//! ([`validate_ident`]) so that no input can address another tenant's keys
//! (no separators, no wildcards, no empty strings).

use std::collections::BTreeMap;
use std::fmt::{self, Debug};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest identifier accepted for a tenant, session, namespace or tool.
pub const MAX_IDENT_LEN: usize = 128;

/// Checks an identifier: 1–128 characters from `[A-Za-z0-9_.-]`.
/// `what` names the field in the error.
pub fn validate_ident(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::InvalidInput(format!("{what} is empty")));
    }
    if s.len() > MAX_IDENT_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} is {} bytes; at most {MAX_IDENT_LEN}",
            s.len()
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::InvalidInput(format!(
            "{what} {s:?} contains {c:?}; allowed are A-Z a-z 0-9 _ - ."
        )));
    }
    Ok(())
}

/// A validated (tenant, session) pair.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    tenant: String,
    session: String,
}

/// The tenant of [`SessionKey::for_task`] for a task that names none.
pub const DEFAULT_TENANT: &str = "default";

impl SessionKey {
    /// Validates both parts with [`validate_ident`].
    pub fn new(tenant: impl Into<String>, session: impl Into<String>) -> Result<Self> {
        let (tenant, session) = (tenant.into(), session.into());
        validate_ident("tenant", &tenant)?;
        validate_ident("session id", &session)?;
        Ok(SessionKey { tenant, session })
    }

    /// The session a task belongs to: its `tenant` (or [`DEFAULT_TENANT`]
    /// when the task has none) and its `session_id`. A task without a
    /// session id, or with parts that fail [`validate_ident`], is
    /// [`Error::InvalidInput`] (the worker dead-letters it without retrying).
    ///
    /// ```
    /// use agentscale_core::{SessionKey, Task};
    /// let task = Task::new("chat", "hi").with_tenant("acme").with_session("c-42");
    /// let key = SessionKey::for_task(&task)?;
    /// assert_eq!((key.tenant(), key.session()), ("acme", "c-42"));
    /// assert!(SessionKey::for_task(&Task::new("chat", "hi")).is_err());
    /// # Ok::<(), agentscale_core::Error>(())
    /// ```
    pub fn for_task(task: &crate::task::Task) -> Result<Self> {
        let Some(session) = task.session_id.as_deref() else {
            return Err(Error::InvalidInput(format!(
                "task {} ({}) has no session_id",
                task.id, task.kind
            )));
        };
        let tenant = task.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        SessionKey::new(tenant, session)
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.session
    }
}

impl Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}/{})", self.tenant, self.session)
    }
}

/// A stored session state and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// Version of this state; the first write creates version 1.
    pub version: u64,
    /// The state (opaque bytes; JSON by convention).
    pub data: Bytes,
}

/// Versioned session state with compare-and-set.
///
/// * `put(key, expected, data)` writes only if the stored version equals
///   `expected` (0 = the session must not exist yet) and returns the new
///   version; otherwise [`Error::Conflict`], never a silent overwrite.
/// * Every write (put, append) sets the store's TTL on all of the session's
///   keys; backends may refresh it on read when configured.
/// * `append` adds to an append-only history capped at the store's limit (the
///   oldest entries drop off).
/// * `delete` leaves a tombstone (for the TTL) so a late `put` or `append`
///   cannot bring the session back: those get [`Error::Conflict`].
#[async_trait]
pub trait SessionStore: Send + Sync + Debug {
    /// Reads the current state, `None` if absent, expired or deleted.
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionState>>;
    /// Compare-and-set write; returns the new version.
    async fn put(&self, key: &SessionKey, expected_version: u64, data: Bytes) -> Result<u64>;
    /// Appends one entry to the session's history; returns the history length.
    async fn append(&self, key: &SessionKey, entry: Bytes) -> Result<u64>;
    /// The newest `limit` history entries, oldest first.
    async fn history(&self, key: &SessionKey, limit: usize) -> Result<Vec<Bytes>>;
    /// Deletes the session and leaves a tombstone; true if it existed.
    async fn delete(&self, key: &SessionKey) -> Result<bool>;
}

/// A validated (tenant, namespace) pair for long-term memory.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    tenant: String,
    name: String,
}

impl Namespace {
    /// Validates both parts with [`validate_ident`].
    pub fn new(tenant: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let (tenant, name) = (tenant.into(), name.into());
        validate_ident("tenant", &tenant)?;
        validate_ident("namespace", &name)?;
        Ok(Namespace { tenant, name })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({}/{})", self.tenant, self.name)
    }
}

/// Longest memory record id accepted.
pub const MAX_MEMORY_ID_LEN: usize = 512;
/// Largest memory text accepted, in bytes (64 KiB).
pub const MAX_MEMORY_TEXT_BYTES: usize = 64 * 1024;
/// Largest memory metadata accepted: the sum of its keys' and values' bytes
/// (16 KiB).
pub const MAX_MEMORY_METADATA_BYTES: usize = 16 * 1024;
/// Longest metadata key accepted, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Largest `k` a search accepts.
pub const MAX_SEARCH_K: usize = 10_000;
/// Most records one write accepts.
pub const MAX_MEMORY_BATCH: usize = 10_000;

/// A record in long-term memory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Id, unique within the namespace; upserting the same id replaces. For
    /// [`MemoryStore::add`] an empty id means "derive it from the content"
    /// ([`MemoryRecord::content_id`]).
    pub id: String,
    /// The embedding.
    pub vector: Vec<f32>,
    /// The text the vector was made from, if kept (non-empty, at most
    /// [`MAX_MEMORY_TEXT_BYTES`], no NUL characters).
    #[serde(default)]
    pub text: Option<String>,
    /// String metadata that [`Filter`]s match on (at most
    /// [`MAX_MEMORY_METADATA_BYTES`] in all, no NUL characters).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// When the record expires, in milliseconds since the Unix epoch; `None`
    /// never expires. An expired record is invisible to every read; whether it
    /// is also deleted depends on the store's [`ExpiryMode`].
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl MemoryRecord {
    /// A record with `id` and `vector`, no text, metadata or expiry.
    pub fn new(id: impl Into<String>, vector: Vec<f32>) -> Self {
        MemoryRecord {
            id: id.into(),
            vector,
            ..Default::default()
        }
    }

    /// Sets the text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.text = Some(text.into());
        self
    }

    /// Adds one metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Expires the record `ttl` from now (by this process's clock).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.expires_at_ms = Some(now_ms().saturating_add(ms));
        self
    }

    /// SHA-256 of the record's content: text, metadata and vector (not the id
    /// or the expiry). Two records with the same content are "the same
    /// memory": a namespace holds at most one of them.
    pub fn content_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match &self.text {
            Some(t) => {
                h.update([1u8]);
                h.update((t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            None => h.update([0u8]),
        }
        h.update((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        for x in &self.vector {
            // -0.0 and 0.0 are the same content.
            let x = if *x == 0.0 { 0.0f32 } else { *x };
            h.update(x.to_le_bytes());
        }
        h.finalize().into()
    }

    /// The id [`MemoryStore::add`] gives a record whose id is empty: the first
    /// 32 hex digits of [`content_hash`](Self::content_hash).
    pub fn content_id(&self) -> String {
        hex::encode(&self.content_hash()[..16])
    }

    /// Whether the record has expired at `now_ms`.
    pub fn expired_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}

/// Milliseconds since the Unix epoch by this process's clock (the clock
/// [`MemoryRecord::expires_at_ms`] is compared with).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Similarity metric of a memory store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Metric {
    /// Cosine similarity (higher is closer). Zero vectors have no direction
    /// and are refused.
    #[default]
    Cosine,
    /// Dot (inner) product (higher is closer).
    Dot,
    /// Euclidean distance; the score is its negation (higher is closer).
    L2,
}

impl Metric {
    /// The score of `b` against `a` under this metric (higher is closer),
    /// computed exactly in `f64`.
    pub fn score(self, a: &[f32], b: &[f32]) -> f64 {
        let dot = || -> f64 { a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum() };
        match self {
            Metric::Dot => dot(),
            Metric::Cosine => {
                let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                if na == 0.0 || nb == 0.0 {
                    0.0
                } else {
                    dot() / (na * nb)
                }
            }
            Metric::L2 => -a
                .iter()
                .zip(b)
                .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
                .sum::<f64>()
                .sqrt(),
        }
    }
}

/// What happens to a memory record once it has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ExpiryMode {
    /// Expired records are invisible to every read but stay stored (for audit
    /// or restore) until deleted by id or replaced by a write of the same id
    /// or content; [`MemoryStore::purge_expired`] keeps them.
    #[default]
    Hide,
    /// Expired records are invisible and are deleted: by
    /// [`MemoryStore::purge_expired`] and by a bounded sweep of the namespace
    /// on every write.
    Delete,
}

/// A conjunction of metadata equalities; the empty filter matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Every (key, value) pair must be present in a record's metadata.
    pub equals: BTreeMap<String, String>,
}

impl Filter {
    /// Matches everything.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Adds `metadata[key] == value`.
    pub fn eq(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.equals.insert(key.into(), value.into());
        self
    }

    /// Whether `metadata` satisfies the filter.
    pub fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.equals.iter().all(|(k, v)| metadata.get(k) == Some(v))
    }

    /// Checks keys and values like record metadata (sizes, no NUL); values are
    /// data, never syntax, in every backend.
    pub fn validate(&self) -> Result<()> {
        validate_metadata("filter", &self.equals)
    }
}

fn validate_metadata(what: &str, md: &BTreeMap<String, String>) -> Result<()> {
    let mut total = 0usize;
    for (k, v) in md {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_LEN {
            return Err(Error::InvalidInput(format!(
                "{what} key {k:?} must be 1..={MAX_METADATA_KEY_LEN} bytes"
            )));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(Error::InvalidInput(format!(
                "{what} entry {k:?} contains a NUL character"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_MEMORY_METADATA_BYTES {
        return Err(Error::InvalidInput(format!(
            "{what} is {total} bytes; at most {MAX_MEMORY_METADATA_BYTES}"
        )));
    }
    Ok(())
}

/// Checks a vector against a store: `dimensions` long, finite, and (under
/// [`Metric::Cosine`]) not zero. `what` names it in the error.
pub fn validate_vector(what: &str, v: &[f32], dimensions: usize, metric: Metric) -> Result<()> {
    if v.len() != dimensions {
        return Err(Error::InvalidInput(format!(
            "{what} has {} dimensions; this store holds {dimensions}",
            v.len()
        )));
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "{what} contains a NaN or infinite value"
        )));
    }
    if metric == Metric::Cosine && v.iter().all(|x| *x == 0.0) {
        return Err(Error::InvalidInput(format!(
            "{what} is the zero vector, which has no cosine similarity"
        )));
    }
    Ok(())
}

/// Checks a batch of records before a store writes any of them, so a bad
/// record stores nothing: batch size, ids (empty only when `allow_empty_id`),
/// vectors ([`validate_vector`]), text (non-empty, size, no NUL) and metadata.
pub fn validate_records(
    records: &[MemoryRecord],
    dimensions: usize,
    metric: Metric,
    allow_empty_id: bool,
) -> Result<()> {
    if records.len() > MAX_MEMORY_BATCH {
        return Err(Error::InvalidInput(format!(
            "{} records in one write; at most {MAX_MEMORY_BATCH}",
            records.len()
        )));
    }
    for r in records {
        if (r.id.is_empty() && !allow_empty_id) || r.id.len() > MAX_MEMORY_ID_LEN {
            return Err(Error::InvalidInput(format!(
                "record id must be 1..={MAX_MEMORY_ID_LEN} bytes"
            )));
        }
        if r.id.contains('\0') {
            return Err(Error::InvalidInput("record id contains a NUL character".into()));
        }
        validate_vector(
            &format!("vector of record {:?}", r.id),
            &r.vector,
            dimensions,
            metric,
        )?;
        if let Some(t) = &r.text {
            if t.trim().is_empty() {
                return Err(Error::InvalidInput(format!("text of record {:?} is empty", r.id)));
            }
            if t.len() > MAX_MEMORY_TEXT_BYTES {
                return Err(Error::InvalidInput(format!(
                    "text of record {:?} is {} bytes; at most {MAX_MEMORY_TEXT_BYTES}",
                    r.id,
                    t.len()
                )));
            }
            if t.contains('\0') {
                return Err(Error::InvalidInput(format!(
                    "text of record {:?} contains a NUL character",
                    r.id
                )));
            }
        }
        validate_metadata(&format!("metadata of record {:?}", r.id), &r.metadata)?;
    }
    Ok(())
}

/// Checks a search's arguments: the query vector and `k` (at most
/// [`MAX_SEARCH_K`]) and the filter.
pub fn validate_search(
    query: &[f32],
    k: usize,
    filter: &Filter,
    dimensions: usize,
    metric: Metric,
) -> Result<()> {
    validate_vector("query vector", query, dimensions, metric)?;
    if k > MAX_SEARCH_K {
        return Err(Error::InvalidInput(format!("k is {k}; at most {MAX_SEARCH_K}")));
    }
    filter.validate()
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record.
    pub record: MemoryRecord,
    /// Its similarity to the query under the store's [`Metric`] (higher is closer).
    pub score: f32,
}

/// The outcome of adding one record with [`MemoryStore::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The id the memory is stored under: the new record's, or the id of the
    /// record with the same content that was already there.
    pub id: String,
    /// True if this call stored it; false if the same content was already
    /// stored (nothing was written).
    pub inserted: bool,
}

/// Namespaced vector memory.
///
/// * Every read, search and delete is confined to one [`Namespace`] (tenant +
///   name): no filter can reach another namespace's records.
/// * A namespace holds each content ([`MemoryRecord::content_hash`]) at most
///   once: [`add`](Self::add) is idempotent, also under concurrent callers,
///   and an [`upsert`](Self::upsert) that would store a second copy of some
///   content under another id is [`Error::Conflict`].
/// * Writes are validated whole first ([`validate_records`]): one bad record
///   is [`Error::InvalidInput`] and nothing of the batch is stored.
/// * Expired records ([`MemoryRecord::expires_at_ms`]) are invisible to every
///   read; the store's [`ExpiryMode`] decides whether they are also deleted.
#[async_trait]
pub trait MemoryStore: Send + Sync + Debug {
    /// The vector dimension this store holds; other lengths are
    /// [`Error::InvalidInput`].
    fn dimensions(&self) -> usize;
    /// The similarity metric.
    fn metric(&self) -> Metric;
    /// What happens to expired records.
    fn expiry_mode(&self) -> ExpiryMode {
        ExpiryMode::Hide
    }
    /// Inserts or replaces records by id.
    async fn upsert(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<()>;
    /// Adds records idempotently by content: a record whose content is
    /// already stored is not written again, and its existing id is returned.
    /// An empty id is derived from the content ([`MemoryRecord::content_id`]);
    /// an id already used by other content is [`Error::Conflict`] (and the
    /// batch is not stored). One outcome per record, in order.
    async fn add(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<Vec<Added>>;
    /// Replaces an existing, unexpired record; [`Error::NotFound`] if there is none.
    async fn update(&self, ns: &Namespace, record: MemoryRecord) -> Result<()>;
    /// The unexpired records among `ids`, in the order of `ids` (missing ones
    /// left out).
    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<MemoryRecord>>;
    /// The `k` unexpired records closest to `query` that match `filter`,
    /// closest first.
    async fn search(&self, ns: &Namespace, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>>;
    /// Deletes records by id (expired ones too); returns how many were stored.
    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64>;
    /// Under [`ExpiryMode::Delete`], deletes the namespace's expired records
    /// and returns how many; under [`ExpiryMode::Hide`] keeps them and returns 0.
    async fn purge_expired(&self, ns: &Namespace) -> Result<u64>;
}

/// Turns text into vectors.
#[async_trait]
pub trait Embedder: Send + Sync + Debug {
    /// Output dimension.
    fn dimensions(&self) -> usize;
    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// Checks texts before they are sent to an embedding model: none empty (or
/// only whitespace), none over [`MAX_MEMORY_TEXT_BYTES`], no NUL characters.
pub fn validate_texts(texts: &[String]) -> Result<()> {
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            return Err(Error::InvalidInput(format!("text {i} is empty")));
        }
        if t.len() > MAX_MEMORY_TEXT_BYTES {
            return Err(Error::InvalidInput(format!(
                "text {i} is {} bytes; at most {MAX_MEMORY_TEXT_BYTES}",
                t.len()
            )));
        }
        if t.contains('\0') {
            return Err(Error::InvalidInput(format!("text {i} contains a NUL character")));
        }
    }
    Ok(())
}

/// Checks what an embedding model returned: one vector per text, each
/// `dimensions` long and finite. A model of another dimension than the
/// embedder was configured for is [`Error::InvalidConfig`] (it would
/// silently mismatch the store); a short or non-finite answer is
/// [`Error::Backend`]. `model` names the model in the error.
pub fn validate_embeddings(model: &str, texts: usize, dimensions: usize, vectors: &[Vec<f32>]) -> Result<()> {
    if vectors.len() != texts {
        return Err(Error::Backend {
            message: format!(
                "model {model} returned {} vectors for {texts} texts",
                vectors.len()
            ),
            source: None,
        });
    }
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != dimensions {
            return Err(Error::InvalidConfig(format!(
                "model {model} returned a {}-dimensional vector; the embedder is configured for {dimensions}",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::Backend {
                message: format!("model {model} returned a NaN or infinite value in vector {i}"),
                source: None,
            });
        }
    }
    Ok(())
}

/// The key of a cached tool result: tenant + tool + tool version + canonical
/// arguments. Arguments are canonicalised (object keys sorted, no whitespace)
/// so `{"a":1,"b":2}` and `{"b":2,"a":1}` share an entry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ToolKey {
    tenant: String,
    tool: String,
    version: String,
    digest: String,
}

impl ToolKey {
    /// Validates tenant, tool and version ([`validate_ident`]) and digests the
    /// canonical arguments (SHA-256).
    pub fn new(
        tenant: impl Into<String>,
        tool: impl Into<String>,
        version: impl Into<String>,
        args: &serde_json::Value,
    ) -> Result<Self> {
        let (tenant, tool, version) = (tenant.into(), tool.into(), version.into());
        validate_ident("tenant", &tenant)?;
        validate_ident("tool", &tool)?;
        validate_ident("tool version", &version)?;
        let mut canonical = String::new();
        canonical_json(args, &mut canonical);
        let digest = hex::encode(Sha256::digest(canonical.as_bytes()));
        Ok(ToolKey {
            tenant,
            tool,
            version,
            digest,
        })
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The tool name.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The tool version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Hex SHA-256 of the canonical arguments.
    pub fn args_digest(&self) -> &str {
        &self.digest
    }

    /// `tenant:tool:version:digest`, unique per key (parts cannot contain `:`).
    pub fn joined(&self) -> String {
        format!("{}:{}:{}:{}", self.tenant, self.tool, self.version, self.digest)
    }
}

impl Debug for ToolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ToolKey({})", self.joined())
    }
}

fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The future a [`ToolCache`] runs on a miss.
pub type ComputeFuture<'a> = BoxFuture<'a, Result<Bytes>>;

/// A cache of tool results.
///
/// `get_or_compute(key, ttl, compute)`:
/// * a hit returns the cached bytes without running `compute`;
/// * on a miss, concurrent callers of one key run **one** computation
///   (single-flight; fleet-wide on shared backends) and all get its result;
/// * a computation that fails with a non-retryable error (invalid input, not
///   found, …) is cached negatively for the store's negative TTL: callers get
///   the same error kind and message back without recomputing. Retryable
///   failures (timeouts, unavailability) are not cached;
/// * a value larger than the store's size limit is refused with
///   [`Error::InvalidInput`] (and returned to no one as cached).
#[async_trait]
pub trait ToolCache: Send + Sync + Debug {
    /// Reads a cached value without computing; `Ok(None)` on a miss. A
    /// negatively cached failure is returned as its error.
    async fn get(&self, key: &ToolKey) -> Result<Option<Bytes>>;
    /// Stores a value for `ttl`.
    async fn put(&self, key: &ToolKey, value: Bytes, ttl: Duration) -> Result<()>;
    /// See the trait docs.
    async fn get_or_compute<'a>(
        &'a self,
        key: &'a ToolKey,
        ttl: Duration,
        compute: ComputeFuture<'a>,
    ) -> Result<Bytes>;
    /// Drops a cached value or failure.
    async fn invalidate(&self, key: &ToolKey) -> Result<()>;
}

#[allow(dead_code)]
fn _object_safe(
    _: Box<dyn SessionStore>,
    _: Box<dyn MemoryStore>,
    _: Box<dyn Embedder>,
    _: Box<dyn ToolCache>,
) {
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_are_validated() {
        assert!(SessionKey::new("acme", "s-1.a_b").is_ok());
        for bad in ["", "a:b", "a*", "a b", "a/b", "é", &"x".repeat(129)] {
            assert!(SessionKey::new(bad, "s").is_err(), "{bad:?} accepted");
            assert!(SessionKey::new("t", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tool_keys_are_canonical() {
        let a = ToolKey::new(
            "t",
            "search",
            "v1",
            &serde_json::json!({"a":1,"b":[1,{"y":2,"x":1}]}),
        )
        .expect("key");
        let b = ToolKey::new(
            "t",
            "search",
            "v1",
            &serde_json::json!({"b":[1,{"x":1,"y":2}],"a":1}),
        )
        .expect("key");
        let c = ToolKey::new(
            "t",
            "search",
            "v2",
            &serde_json::json!({"a":1,"b":[1,{"y":2,"x":1}]}),
        )
        .expect("key");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.joined(), c.joined());
    }

    #[test]
    fn filters_match_conjunctions() {
        let mut md = BTreeMap::new();
        md.insert("kind".to_string(), "fact".to_string());
        md.insert("user".to_string(), "u1".to_string());
        assert!(Filter::all().matches(&md));
        assert!(Filter::all().eq("kind", "fact").matches(&md));
        assert!(!Filter::all().eq("kind", "fact").eq("user", "u2").matches(&md));
    }
}
