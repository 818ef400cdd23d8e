//! # agentscale-state
//!
//! State that lives outside the worker, so that any replica can pick up any
//! task: session state, long-term memory and the tool-result cache, behind the
//! object-safe traits of `agentscale-core`
//! ([`SessionStore`](agentscale_core::SessionStore),
//! [`MemoryStore`](agentscale_core::MemoryStore),
//! [`Embedder`](agentscale_core::Embedder),
//! [`ToolCache`](agentscale_core::ToolCache)).
//!
//! | module | backends | feature |
//! |---|---|---|
//! | [`local`] | in-process session store, exact vector memory, moka tool cache, hash embedder (tests/demos) | always on |
//! | `redis` | Redis session store (Lua CAS), two-level tool cache with fleet-wide single-flight | `redis` |
//! | `pgvector` | long-term memory in PostgreSQL + pgvector (HNSW, tenant isolation in SQL, idempotent add) | `pgvector` |
//! | `candle` | in-process sentence embedder (all-MiniLM-L6-v2 on candle, CPU): semantic vectors without a server | `candle` |
//!
//! [`rag::Rag`] remembers and recalls text over any store and embedder.
//!
//! ## Guarantees (every backend)
//!
//! * Session writes are compare-and-set on a version: a stale writer gets
//!   [`Error::Conflict`](agentscale_core::Error::Conflict), never a silent
//!   overwrite. Every write sets the TTL; deletes leave a tombstone so a late
//!   write cannot bring a session back.
//! * Tool computations are single-flight per key and non-retryable failures
//!   are cached negatively; values over the size limit are refused.
//!
//! ## Example (in-memory, runs as is)
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> agentscale_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use agentscale_core::{Embedder, Filter, MemoryRecord, MemoryStore, Metric, Namespace};
//! use agentscale_core::{SessionKey, SessionStore, ToolCache, ToolKey};
//! use agentscale_state::local::{HashEmbedder, LocalMemoryStore, LocalSessionStore, LocalToolCache};
//!
//! // Session state with optimistic concurrency.
//! let sessions: Arc<dyn SessionStore> = Arc::new(LocalSessionStore::builder().build()?);
//! let key = SessionKey::new("acme", "chat-42")?;
//! let v = sessions.put(&key, 0, r#"{"step":1}"#.into()).await?;
//! let v = sessions.put(&key, v, r#"{"step":2}"#.into()).await?;
//! sessions.append(&key, "user: hi".into()).await?;
//! assert_eq!(sessions.get(&key).await?.map(|s| s.version), Some(v));
//!
//! // Long-term memory (the hash embedder is for demos: not semantic).
//! let embedder = HashEmbedder::new(64)?;
//! let memory = LocalMemoryStore::new(embedder.dimensions(), Metric::Cosine)?;
//! let ns = Namespace::new("acme", "notes")?;
//! let texts = vec!["the user likes tea".to_string(), "invoice 17 is overdue".to_string()];
//! let vectors = embedder.embed(&texts).await?;
//! let records = texts.iter().zip(vectors).enumerate().map(|(i, (t, v))| MemoryRecord {
//!     id: format!("n{i}"), vector: v, text: Some(t.clone()), ..Default::default()
//! }).collect();
//! memory.upsert(&ns, records).await?;
//! let query = embedder.embed(&["what does the user like to drink? tea".to_string()]).await?;
//! let hits = memory.search(&ns, &query[0], 1, &Filter::all()).await?;
//! assert_eq!(hits[0].record.id, "n0");
//!
//! // A cached tool call: the second call does not compute.
//! let tools = LocalToolCache::builder().build()?;
//! let tool_key = ToolKey::new("acme", "fx-rate", "v1", &serde_json::json!({"from": "EUR", "to": "NOK"}))?;
//! let rate = tools
//!     .get_or_compute(&tool_key, Duration::from_secs(300), Box::pin(async { Ok("11.7".into()) }))
//!     .await?;
//! assert_eq!(&rate[..], b"11.7");
//! assert_eq!(tools.get(&tool_key).await?.as_deref(), Some(&b"11.7"[..]));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cached;
#[cfg(feature = "candle")]
#[cfg_attr(docsrs, doc(cfg(feature = "candle")))]
pub mod candle;
pub mod local;
pub mod rag;

#[cfg(feature = "pgvector")]
#[cfg_attr(docsrs, doc(cfg(feature = "pgvector")))]
pub mod pgvector;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
