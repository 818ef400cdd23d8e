//! Embedded backends: everything in this process, no service needed.
//!
//! These are the defaults of `cargo run --example quickstart` and the
//! reference implementations the conformance suite checks other backends
//! against. State is lost when the process exits.

mod ann;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod ann_tests;
mod embedder;
mod joins;
mod results;
mod session;
mod tool_cache;
mod vector;

pub use embedder::HashEmbedder;
pub use joins::{LocalJoinStore, LocalJoinStoreBuilder, DEFAULT_MAX_JOINS};
pub use results::{LocalResultStore, LocalResultStoreBuilder, DEFAULT_MAX_RESULTS};
pub use session::{LocalSessionStore, LocalSessionStoreBuilder, DEFAULT_HISTORY_CAP, DEFAULT_SESSION_TTL};
#[cfg(feature = "redis")]
pub(crate) use tool_cache::{compute_outcome, new_cache, validate as validate_tool_cache};
pub use tool_cache::{
    LocalToolCache, LocalToolCacheBuilder, DEFAULT_CAPACITY_BYTES, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_NEGATIVE_TTL,
};
pub use vector::{Index, LocalMemoryStore, LocalMemoryStoreBuilder};
