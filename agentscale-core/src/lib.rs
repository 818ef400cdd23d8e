//! # agentscale-core
//!
//! Contracts, worker runtime, load-balancing policies, metrics/health exporter
//! and config loading for [agentscale](https://github.com/agentscale/agentscale),
//! an embeddable SDK for running AI-agent workers at scale.
//!
//! This crate is pure: it talks to no service. Backends live in
//! `agentscale-queue` (in-process, Redis Streams, Kafka), `agentscale-state`
//! (in-process, Redis) and `agentscale-infer` (Triton).
//!
//! * [`Task`]: the envelope producers enqueue, with a versioned wire encoding.
//! * [`TaskQueue`]: at-least-once queue with leases, fencing and dead letters.
//! * [`SessionStore`], [`MemoryStore`], [`ToolCache`]: state outside the process.
//! * [`Embedder`], [`ChatModel`]: the model contracts (embeddings, text generation).
//! * [`balance::Policy`]: endpoint selection.
//! * [`worker::Worker`]: N concurrent handlers over any queue, with retries,
//!   heartbeats and graceful shutdown.
//! * [`Output`], [`ResultStore`], [`Client`]: task results and request/response.
//! * [`Orchestrator`], [`JoinStore`]: fan-out / fan-in with continuations.
//! * [`keeper::QueueKeeper`]: promotes due retries and exports the queue
//!   depth while no worker runs (scale to zero without stranded work).
//! * [`metrics`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` exporter.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod balance;
pub mod chat;
pub mod config;
pub mod error;
pub mod flow;
pub mod join;
pub mod keeper;
pub mod metrics;
pub mod orchestrate;
pub mod output;
pub mod queue;
pub mod results;
pub mod state;
pub mod task;
pub mod typed;
pub mod worker;

pub use chat::{ChatChunk, ChatMessage, ChatModel, ChatRequest, ChatResponse, ChatStream, Role, Usage};
pub use error::{BoxError, CodecError, Error, ErrorKind, Result, RpcCode};
pub use join::{JoinId, JoinPolicy, JoinStore};
pub use keeper::{QueueKeeper, QueueKeeperConfig};
pub use orchestrate::Orchestrator;
pub use output::Output;
pub use queue::{Capabilities, DeadLetter, Depth, Enqueued, Lease, Nack, TaskQueue};
pub use results::{Client, Pending, Recorded, ResultStore, TaskOutcome, TaskResult};
pub use state::{
    now_ms, validate_embeddings, validate_ident, validate_records, validate_search, validate_texts,
    validate_vector, Added, ComputeFuture, Embedder, ExpiryMode, Filter, Hit, MemoryRecord, MemoryStore,
    Metric, Namespace, SessionKey, SessionState, SessionStore, ToolCache, ToolKey, MAX_MEMORY_BATCH,
    MAX_MEMORY_ID_LEN, MAX_MEMORY_METADATA_BYTES, MAX_MEMORY_TEXT_BYTES, MAX_METADATA_KEY_LEN, MAX_SEARCH_K,
};
pub use task::{Priority, Task, TaskId};
pub use typed::{CacheOutcome, Cached, SessionStoreExt, ToolCacheExt, Updated};
pub use worker::{Backoff, Handler, KindRouter, TaskContext, Worker, WorkerReport, WorkerStats};
