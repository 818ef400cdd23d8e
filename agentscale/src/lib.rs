//! # agentscale
//!
//! Run AI-agent workers at scale. Producers push tasks onto a queue;
//! stateless workers lease them, run your handler with retries, heartbeats,
//! timeouts and graceful shutdown, and acknowledge only after the handler
//! finished; session state, long-term memory and a tool-result cache live
//! outside the process; models are called on NVIDIA Triton; Kubernetes
//! scales the workers on the queue depth the SDK exports.
//!
//! This is the one crate to add. It re-exports the parts, each backend behind
//! a cargo feature; the in-process backends are always on, so a first service
//! needs no external service at all:
//!
//! ```toml
//! [dependencies]
//! agentscale = { version = "0.1", features = ["redis"] }
//! ```
//!
//! ## Cargo features
#![doc = document_features::document_features!()]
//!
//! ## A worker on the in-process backends
//!
//! ```
//! use std::time::Duration;
//! use agentscale::{async_trait, Error, Handler, LocalQueue, Output, Task, TaskContext, TaskQueue, Worker};
//! # use std::sync::Arc;
//!
//! #[derive(Debug)]
//! struct Greeter;
//!
//! #[async_trait]
//! impl Handler for Greeter {
//!     async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
//!         let name: String = task.payload_json()?; // malformed input: dead letter, no retry
//!         Output::json(&format!("hello, {name}"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> agentscale::Result<()> {
//! let queue = Arc::new(LocalQueue::new("greetings"));
//! queue.enqueue(Task::json("greet", &"ada")?).await?;
//! let worker = Worker::builder(queue.clone(), Greeter).concurrency(4).build()?;
//! let report = worker
//!     .run_until(async { tokio::time::sleep(Duration::from_millis(200)).await })
//!     .await?;
//! assert_eq!(report.completed, 1);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use agentscale_core::{
    balance, chat, config, error, flow, join, keeper, metrics, orchestrate, output, results, task, typed,
    worker,
};
pub use agentscale_core::{
    Backoff, BoxError, CacheOutcome, Cached, Capabilities, ChatChunk, ChatMessage, ChatModel, ChatRequest,
    ChatResponse, ChatStream, Client, CodecError, DeadLetter, Depth, Embedder, Enqueued, Error, ErrorKind,
    Filter, Handler, Hit, JoinId, JoinPolicy, JoinStore, KindRouter, Lease, MemoryRecord, MemoryStore,
    Metric, Nack, Namespace, Orchestrator, Output, Pending, Priority, QueueKeeper, QueueKeeperConfig,
    Recorded, Result, ResultStore, SessionKey, SessionState, SessionStore, SessionStoreExt, Task,
    TaskContext, TaskId, TaskOutcome, TaskQueue, TaskResult, ToolCache, ToolCacheExt, ToolKey, Updated,
    Usage, Worker, WorkerReport, WorkerStats,
};

/// Task queues: the [`queue::TaskQueue`] contract and its
/// backends — [`LocalQueue`] (in-process, always on), `redis::RedisQueue`
/// (feature `redis`), `kafka::KafkaQueue` (feature `kafka`).
pub mod queue {
    pub use agentscale_core::queue::*;
    pub use agentscale_queue::*;
}

/// Session state, long-term memory and the tool cache: the contracts and
/// their backends — [`local`](state::local) (in-process, always on), `redis`
/// (feature `redis`); `candle::CandleEmbedder`, a semantic in-process
/// embedder (feature `candle`).
pub mod state {
    pub use agentscale_core::state::*;
    pub use agentscale_state::*;
}

/// The Redis connection the Redis queue and stores share: [`redis::RedisConfig`]
/// (URL, ACL user, password, TLS with a CA and client certificates) and the
/// [`redis::Redis`] handle to pass to `RedisQueue::new`,
/// `RedisSessionStore::new`, … (feature `redis`).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis {
    pub use agentscale_redis::*;
}

/// The NVIDIA Triton (KServe v2 gRPC) client, replica pool, LLM helper
/// ([`ChatModel`]) and sentence embedder (`TritonEmbedder`, an [`Embedder`]).
/// With feature `openai`, `infer::openai` is the OpenAI-compatible client
/// (NIM, vLLM) behind the same interfaces.
#[cfg(any(feature = "triton", feature = "openai"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "triton", feature = "openai"))))]
pub mod infer {
    pub use agentscale_infer::*;
}

/// Shipping agent versions safely: the evaluation gate, shadow traffic,
/// canary / blue-green rollouts with analysis and rollback (see
/// `docs/rollout.md`).
#[cfg(feature = "rollout")]
#[cfg_attr(docsrs, doc(cfg(feature = "rollout")))]
pub mod rollout {
    pub use agentscale_rollout::*;
}

pub use agentscale_queue::LocalQueue;
/// The in-process semantic embedder (all-MiniLM-L6-v2 on candle) and its
/// configuration (feature `candle`).
#[cfg(feature = "candle")]
#[cfg_attr(docsrs, doc(cfg(feature = "candle")))]
pub use agentscale_state::candle::{CandleEmbedder, CandleEmbedderConfig};
pub use agentscale_state::local::{
    HashEmbedder, LocalJoinStore, LocalMemoryStore, LocalResultStore, LocalSessionStore, LocalToolCache,
};
pub use agentscale_state::rag::{Document, Rag, Recalled};

/// `#[async_trait]`, re-exported so a handler needs no extra dependency (and
/// no version to guess).
pub use async_trait::async_trait;
/// The byte buffer type of payloads, outputs and cached values.
pub use bytes::Bytes;
/// The JSON value type and macro, as used by the JSON helpers.
pub use serde_json::{json, Value as JsonValue};
