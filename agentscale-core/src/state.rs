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

impl SessionKey {
    /// Validates both parts with [`validate_ident`].
    pub fn new(tenant: impl Into<String>, session: impl Into<String>) -> Result<Self> {
        let (tenant, session) = (tenant.into(), session.into());
        validate_ident("tenant", &tenant)?;
        validate_ident("session id", &session)?;
        Ok(SessionKey { tenant, session })
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

/// A record in long-term memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// Id, unique within the namespace; upserting the same id replaces.
    pub id: String,
    /// The embedding.
    pub vector: Vec<f32>,
    /// The text the vector was made from, if kept.
    #[serde(default)]
    pub text: Option<String>,
    /// String metadata that [`Filter`]s match on.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Similarity metric of a memory store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity (higher is closer).
    #[default]
    Cosine,
    /// Dot product (higher is closer).
    Dot,
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
}

/// A search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record.
    pub record: MemoryRecord,
    /// Its similarity to the query under the store's [`Metric`] (higher is closer).
    pub score: f32,
}

/// Namespaced vector memory.
#[async_trait]
pub trait MemoryStore: Send + Sync + Debug {
    /// The vector dimension this store holds; other lengths are
    /// [`Error::InvalidInput`].
    fn dimensions(&self) -> usize;
    /// The similarity metric.
    fn metric(&self) -> Metric;
    /// Inserts or replaces records by id.
    async fn upsert(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<()>;
    /// The `k` records closest to `query` that match `filter`, closest first.
    async fn search(&self, ns: &Namespace, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>>;
    /// Deletes records by id; returns how many existed.
    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64>;
}

/// Turns text into vectors.
#[async_trait]
pub trait Embedder: Send + Sync + Debug {
    /// Output dimension.
    fn dimensions(&self) -> usize;
    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>>;
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
