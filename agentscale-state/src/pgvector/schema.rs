//! The store's schema and its versioned, idempotent migrations.
//!
//! `<table>_schema_version` records each applied migration. `connect` takes a
//! transaction-scoped advisory lock, applies the migrations newer than the
//! recorded version in order, and records them, so any number of replicas
//! may connect at once. The HNSW index is not a migration: its parameters
//! come from the config, and it is created (if missing) under the same lock.

use agentscale_core::{Error, Metric, Result};
use tokio_postgres::Client;

use super::config::PgVectorConfig;
use super::store::pg_error;

/// Advisory-lock key serialising every agentscale memory migration.
const MIGRATION_LOCK: i64 = 0x6167_6d65_6d00_0001;

/// The newest schema version this build knows.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// Quoted, schema-qualified names used in SQL text. Built only from names
/// that passed `valid_sql_name`.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub table: String,
    pub version_table: String,
    schema: String,
    raw_table: String,
}

impl Names {
    pub(crate) fn new(config: &PgVectorConfig) -> Self {
        let (s, t) = (&config.schema, &config.table);
        Names {
            table: format!("\"{s}\".\"{t}\""),
            version_table: format!("\"{s}\".\"{t}_schema_version\""),
            schema: s.clone(),
            raw_table: t.clone(),
        }
    }

    /// The HNSW index of `metric` (unquoted name; parameters are part of it,
    /// so a changed config gets its own index).
    fn hnsw_index(&self, metric: Metric, m: u32, ef: u32) -> String {
        format!("{}_hnsw_{}_m{m}_ef{ef}", self.raw_table, ops(metric).1)
    }
}

/// (operator class, short name, distance operator) of a metric.
pub(crate) fn ops(metric: Metric) -> (&'static str, &'static str, &'static str) {
    match metric {
        Metric::Dot => ("vector_ip_ops", "ip", "<#>"),
        Metric::L2 => ("vector_l2_ops", "l2", "<->"),
        _ => ("vector_cosine_ops", "cos", "<=>"),
    }
}

/// Migration `n` (1-based) as SQL.
fn migration(names: &Names, dimensions: usize, n: i32) -> Option<String> {
    let t = &names.table;
    let raw = &names.raw_table;
    match n {
        1 => Some(format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                tenant text NOT NULL,
                namespace text NOT NULL,
                id text NOT NULL,
                content_hash bytea NOT NULL,
                embedding vector({dimensions}) NOT NULL,
                text text,
                metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                expires_at_ms bigint,
                created_at timestamptz NOT NULL DEFAULT now(),
                updated_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (tenant, namespace, id),
                CONSTRAINT \"{raw}_content_key\" UNIQUE (tenant, namespace, content_hash)
            );
            CREATE INDEX IF NOT EXISTS \"{raw}_metadata_idx\" ON {t} USING gin (metadata jsonb_path_ops);
            CREATE INDEX IF NOT EXISTS \"{raw}_expiry_idx\" ON {t} (tenant, namespace, expires_at_ms)
                WHERE expires_at_ms IS NOT NULL;"
        )),
        _ => None,
    }
}

/// Creates the extension, applies pending migrations and checks that the
/// table holds `config.dimensions`. Returns the pgvector version.
pub(crate) async fn migrate(client: &mut Client, config: &PgVectorConfig, names: &Names) -> Result<String> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE EXTENSION IF NOT EXISTS vector")
        .await
        .map_err(|e| Error::Unavailable {
            message:
                "the pgvector extension is not available on this server (CREATE EXTENSION vector failed)"
                    .into(),
            source: Some(Box::new(e)),
        })?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        names.version_table
    ))
    .await
    .map_err(pg_error)?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {}", names.version_table),
            &[],
        )
        .await
        .map_err(pg_error)?;
    let current: i32 = row.get(0);
    if current > SCHEMA_VERSION {
        return Err(Error::InvalidConfig(format!(
            "table {} is at schema version {current}; this build knows up to {SCHEMA_VERSION}",
            names.table
        )));
    }
    for n in current + 1..=SCHEMA_VERSION {
        if let Some(sql) = migration(names, config.dimensions, n) {
            tx.batch_execute(&sql).await.map_err(pg_error)?;
        }
        tx.execute(
            &format!("INSERT INTO {} (version) VALUES ($1)", names.version_table),
            &[&n],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!(table = %names.table, version = n, "applied memory schema migration");
    }
    let row = tx
        .query_one(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding'",
            &[&format!("{}.{}", names.schema, names.raw_table)],
        )
        .await
        .map_err(pg_error)?;
    let column: String = row.get(0);
    let want = format!("vector({})", config.dimensions);
    if column != want {
        return Err(Error::InvalidConfig(format!(
            "table {} holds {column}; this store is configured for {want}",
            names.table
        )));
    }
    if config.create_index {
        tx.batch_execute(&index_sql(config, names))
            .await
            .map_err(pg_error)?;
    }
    let row = tx
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &[],
        )
        .await
        .map_err(pg_error)?;
    let version: String = row.get(0);
    tx.commit().await.map_err(pg_error)?;
    Ok(version)
}

/// `CREATE INDEX IF NOT EXISTS` of the configured HNSW index.
pub(crate) fn index_sql(config: &PgVectorConfig, names: &Names) -> String {
    let (class, _, _) = ops(config.metric);
    let (m, ef) = (config.hnsw_m, config.hnsw_ef_construction);
    format!(
        "CREATE INDEX IF NOT EXISTS \"{}\" ON {} USING hnsw (embedding {class}) WITH (m = {m}, ef_construction = {ef})",
        names.hnsw_index(config.metric, m, ef),
        names.table
    )
}

/// Whether a pgvector version string is at least 0.8 (iterative scans).
pub(crate) fn has_iterative_scan(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major > 0 || minor >= 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(has_iterative_scan("0.8.2"));
        assert!(has_iterative_scan("1.0.0"));
        assert!(!has_iterative_scan("0.6.2"));
        assert!(!has_iterative_scan("garbage"));
    }
}
