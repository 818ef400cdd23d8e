//! # agentscale-queue
//!
//! Task queues for [agentscale](https://github.com/agentscale/agentscale):
//! implementations of [`TaskQueue`](agentscale_core::TaskQueue).
//!
//! | backend | module | feature | use it when |
//! |---|---|---|---|
//! | in-process | [`local`] ([`LocalQueue`]) | always on | one process: tests, demos, embedded workers |
//! | Redis Streams | `redis` | `redis` | several processes, modest volume, delays and priorities |
//! | Kafka | `kafka` | `kafka` | very high volume, long retention, partitioned ordering |
//!
//! Every backend gives the same guarantees (at-least-once delivery, leases
//! with fencing, dead letters that keep the reason) and runs the same
//! conformance suite (`agentscale-testkit`). What a backend
//! cannot do is stated in its [`capabilities`](agentscale_core::TaskQueue::capabilities).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> agentscale_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use agentscale_core::{Nack, Task, TaskQueue};
//! use agentscale_queue::LocalQueue;
//!
//! // Choose the backend at run time; workers only see `dyn TaskQueue`.
//! let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new("agents"));
//!
//! // A producer enqueues work.
//! let task = Task::json("research", &serde_json::json!({ "question": "why is the sky blue?" }))?;
//! queue.enqueue(task).await?;
//!
//! // A worker leases it, and acks when done (or nacks to retry later).
//! let leases = queue.lease(16, Duration::from_millis(100)).await?;
//! for lease in &leases {
//!     assert_eq!(lease.attempt(), 1);
//!     queue.ack(lease).await?;
//! }
//! assert_eq!(queue.depth().await?.backlog(), 0);
//! # let _ = Nack::Release;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod local;

pub use local::{LocalQueue, LocalQueueBuilder, LocalQueueConfig};

// Feature-gated backends (added by their own modules):
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
