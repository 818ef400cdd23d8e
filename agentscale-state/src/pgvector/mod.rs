//! Long-term memory in PostgreSQL with the pgvector extension.
//!
//! [`PgVectorMemoryStore`] implements [`MemoryStore`](agentscale_core::MemoryStore)
//! on one table (schema created and versioned by the store) with an HNSW
//! index:
//!
//! * **Isolation in SQL.** Every search, read, update and delete has
//!   `WHERE tenant = $1 AND namespace = $2` in the statement itself; filters
//!   and ids are parameters, never SQL text. One tenant can never see, rank
//!   against or delete another's rows.
//! * **ANN with `k` rows under filters.** Searches use the HNSW index with
//!   `ef_search` set per query (`SET LOCAL` in the search's transaction) and,
//!   on pgvector 0.8+, `hnsw.iterative_scan = relaxed_order`, so a filtered
//!   search keeps scanning until it has `k` rows; if it still has fewer, it
//!   is redone as an exact scan of the namespace (configurable).
//! * **Idempotent add.** `(tenant, namespace, content_hash)` is unique and
//!   [`add`](agentscale_core::MemoryStore::add) inserts with `ON CONFLICT DO
//!   NOTHING`: concurrent adds of one memory store it once.
//! * **Expiry.** Expired rows are excluded by every statement; in
//!   [`ExpiryMode::Delete`](agentscale_core::ExpiryMode::Delete) they are also
//!   deleted (a bounded sweep per write and `purge_expired`).
//! * **Deadlines.** Connections are pooled (bb8); every operation, including
//!   the wait for a connection, runs under `query_timeout`, which is also the
//!   server's `statement_timeout`.
//!
//! Connections are made without TLS (use a private network or a local
//! proxy); the store talks to any PostgreSQL with pgvector 0.5+ (HNSW).
//!
//! ```no_run
//! # async fn demo() -> agentscale_core::Result<()> {
//! use agentscale_core::{Filter, MemoryRecord, MemoryStore, Namespace};
//! use agentscale_state::pgvector::{PgVectorConfig, PgVectorMemoryStore};
//!
//! let config = PgVectorConfig::builder()
//!     .url("postgres://postgres@127.0.0.1:5432/postgres")
//!     .dimensions(3)
//!     .build()?;
//! let store = PgVectorMemoryStore::connect(config).await?;
//! let ns = Namespace::new("acme", "facts")?;
//! store.add(&ns, vec![MemoryRecord::new("", vec![1.0, 0.0, 0.0]).with_text("tea")]).await?;
//! let hits = store.search(&ns, &[1.0, 0.1, 0.0], 5, &Filter::all()).await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod schema;
mod store;
mod tls;

pub use config::{PgVectorConfig, PgVectorConfigBuilder, MAX_HNSW_DIMENSIONS};
pub use store::{PgVectorMemoryStore, SearchOptions};
pub use tls::PgSslMode;
