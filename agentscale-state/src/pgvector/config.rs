//! Configuration of the pgvector memory store.

use std::fmt;
use std::time::Duration;

use agentscale_core::config::{redact_url, Secret};
use agentscale_core::{Error, ExpiryMode, Metric, Result};
use serde::{Deserialize, Serialize};

pub use super::tls::PgSslMode;

/// Most dimensions an HNSW index on pgvector's `vector` type accepts.
pub const MAX_HNSW_DIMENSIONS: usize = 2000;

/// Configuration of [`PgVectorMemoryStore`](super::PgVectorMemoryStore).
///
/// Serde-loadable (durations as milliseconds or strings such as `"5s"`); build
/// one with [`PgVectorConfig::builder`]. `Debug` shows the URL with its
/// password replaced by `***`, and never the separate `password`.
///
/// A managed PostgreSQL over TLS, the certificate and host name checked
/// (`verify-full`), the password apart from the URL (through the loader it
/// comes from a mounted file: `…__PASSWORD_FILE=/var/run/secrets/pg/password`):
///
/// ```no_run
/// use agentscale_core::Metric;
/// use agentscale_state::pgvector::PgVectorConfig;
///
/// let ca_pem = std::fs::read_to_string("/var/run/secrets/pg/ca.pem")?;
/// let config = PgVectorConfig::builder()
///     .url("postgres://app@db.internal:5432/agents?sslmode=verify-full")
///     .password("secret")
///     .ssl_root_cert_pem(ca_pem)
///     .dimensions(384)
///     .metric(Metric::Cosine)
///     .pool_size(16)
///     .build()?;
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PgVectorConfig {
    /// `postgres://[user[:password]@]host[:port]/database` (libpq URL form).
    pub url: Secret,
    /// Password; when set it replaces any password in `url` (so the URL
    /// can come from a ConfigMap and the password from a Secret).
    pub password: Option<Secret>,
    /// Schema holding the table (default `public`).
    pub schema: String,
    /// Table name (default `agentscale_memory`); its version table is
    /// `<table>_schema_version`. One table holds one dimension.
    pub table: String,
    /// Vector dimension (required; 1 to [`MAX_HNSW_DIMENSIONS`]).
    pub dimensions: usize,
    /// Similarity metric (default cosine); picks the HNSW operator class.
    pub metric: Metric,
    /// What happens to expired records (default hide).
    pub expiry_mode: ExpiryMode,
    /// HNSW `m`: links per node (default 16; 2 to 100).
    pub hnsw_m: u32,
    /// HNSW `ef_construction`: candidate list while building (default 64;
    /// at least `2 * hnsw_m`, at most 1000).
    pub hnsw_ef_construction: u32,
    /// HNSW `ef_search` of every search unless the call overrides it
    /// (default 100; 1 to 1000). Higher is slower and closer to exact.
    pub ef_search: u32,
    /// Whether `connect` creates the HNSW index (default true). Bulk loads may
    /// set false, load, then call `create_index` (building once is faster than
    /// inserting into an index).
    pub create_index: bool,
    /// Use pgvector's iterative index scan (`relaxed_order`, pgvector 0.8+)
    /// so filtered searches keep scanning until they have `k` rows (default
    /// true; ignored on older servers).
    pub iterative_scan: bool,
    /// When an index search returns fewer than `k` rows, run it again as an
    /// exact scan of the namespace (default true), so a selective filter
    /// still gets every matching row.
    pub exact_fallback: bool,
    /// Most pooled connections (default 16).
    pub pool_size: u32,
    /// Deadline for establishing a connection and for waiting for a pooled
    /// one (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one store operation, end to end (default 10 s); also set as
    /// the server's `statement_timeout`, so the server stops the work too.
    #[serde(with = "agentscale_core::config::duration")]
    pub query_timeout: Duration,
    /// TLS: `disable` (default) or `verify-full` (also set by
    /// `?sslmode=verify-full` in the URL); see [`PgSslMode`].
    pub ssl_mode: PgSslMode,
    /// CA certificate(s), PEM, that sign the server's certificate; required
    /// for `verify-full` (through the loader, from a mounted file:
    /// `…__SSL_ROOT_CERT_PEM_FILE=/var/run/secrets/pg/ca.pem`).
    pub ssl_root_cert_pem: Option<String>,
}

impl Default for PgVectorConfig {
    fn default() -> Self {
        PgVectorConfig {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/postgres"),
            password: None,
            schema: "public".into(),
            table: "agentscale_memory".into(),
            dimensions: 0,
            metric: Metric::Cosine,
            expiry_mode: ExpiryMode::Hide,
            hnsw_m: 16,
            hnsw_ef_construction: 64,
            ef_search: 100,
            create_index: true,
            iterative_scan: true,
            exact_fallback: true,
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            ssl_mode: PgSslMode::Disable,
            ssl_root_cert_pem: None,
        }
    }
}

impl fmt::Debug for PgVectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgVectorConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("password", &self.password)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("dimensions", &self.dimensions)
            .field("metric", &self.metric)
            .field("expiry_mode", &self.expiry_mode)
            .field("hnsw_m", &self.hnsw_m)
            .field("hnsw_ef_construction", &self.hnsw_ef_construction)
            .field("ef_search", &self.ef_search)
            .field("create_index", &self.create_index)
            .field("iterative_scan", &self.iterative_scan)
            .field("exact_fallback", &self.exact_fallback)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field(
                "ssl_root_cert_pem_bytes",
                &self.ssl_root_cert_pem.as_ref().map(String::len),
            )
            .finish()
    }
}

/// Builder of a [`PgVectorConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone, Default)]
pub struct PgVectorConfigBuilder {
    config: PgVectorConfig,
}

impl PgVectorConfigBuilder {
    /// Sets the server URL.
    pub fn url(mut self, url: impl Into<Secret>) -> Self {
        self.config.url = url.into();
        self
    }

    /// Sets the password (replaces one in the URL).
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.config.password = Some(password.into());
        self
    }

    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.config.schema = schema.into();
        self
    }

    /// Sets the table name.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.config.table = table.into();
        self
    }

    agentscale_core::config_setters! {
        /// Sets the vector dimension.
        dimensions: usize,
        /// Sets the metric.
        metric: Metric,
        /// Sets the expiry mode.
        expiry_mode: ExpiryMode,
        /// Sets HNSW `m`.
        hnsw_m: u32,
        /// Sets HNSW `ef_construction`.
        hnsw_ef_construction: u32,
        /// Sets the default `ef_search`.
        ef_search: u32,
        /// Sets whether `connect` creates the HNSW index.
        create_index: bool,
        /// Sets whether filtered searches use the iterative index scan.
        iterative_scan: bool,
        /// Sets whether short index results are redone exactly.
        exact_fallback: bool,
        /// Sets the pool size.
        pool_size: u32,
        /// Sets the connect timeout.
        connect_timeout: Duration,
        /// Sets the per-operation deadline.
        query_timeout: Duration,
        /// Sets the TLS mode.
        ssl_mode: PgSslMode,
    }

    /// Sets the CA certificate(s), PEM, for `verify-full`.
    pub fn ssl_root_cert_pem(mut self, pem: impl Into<String>) -> Self {
        self.config.ssl_root_cert_pem = Some(pem.into());
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<PgVectorConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// A PostgreSQL identifier we create: lower-case ASCII, digits and `_`,
/// starting with a letter or `_`, at most `max` bytes. Only such names are
/// ever put into SQL text (always double-quoted); everything else is a
/// parameter.
pub(crate) fn valid_sql_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PgVectorConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> PgVectorConfigBuilder {
        PgVectorConfigBuilder::default()
    }

    /// Checks every field; the first problem is [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.url.is_empty() {
            return bad("pgvector url is empty".into());
        }
        let (_, mode) = super::tls::split_sslmode(self.url.expose(), self.ssl_mode)?;
        super::tls::connector(mode, self.ssl_root_cert_pem.as_deref())?;
        if !valid_sql_name(&self.schema, 63) {
            return bad(format!(
                "schema {:?} must be 1-63 characters from a-z 0-9 _, not starting with a digit",
                self.schema
            ));
        }
        // Room for the suffixes of the version table and the index names.
        if !valid_sql_name(&self.table, 40) {
            return bad(format!(
                "table {:?} must be 1-40 characters from a-z 0-9 _, not starting with a digit",
                self.table
            ));
        }
        if self.dimensions == 0 || self.dimensions > MAX_HNSW_DIMENSIONS {
            return bad(format!(
                "dimensions is {}; must be 1..={MAX_HNSW_DIMENSIONS}",
                self.dimensions
            ));
        }
        if !matches!(self.metric, Metric::Cosine | Metric::Dot | Metric::L2) {
            return bad(format!(
                "metric {:?} is not supported by pgvector here",
                self.metric
            ));
        }
        if !(2..=100).contains(&self.hnsw_m) {
            return bad(format!("hnsw_m is {}; must be 2..=100", self.hnsw_m));
        }
        if self.hnsw_ef_construction < 2 * self.hnsw_m || self.hnsw_ef_construction > 1000 {
            return bad(format!(
                "hnsw_ef_construction is {}; must be 2*hnsw_m..=1000",
                self.hnsw_ef_construction
            ));
        }
        if !(1..=1000).contains(&self.ef_search) {
            return bad(format!("ef_search is {}; must be 1..=1000", self.ef_search));
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return bad(format!("pool_size is {}; must be 1..=1024", self.pool_size));
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("query_timeout", self.query_timeout),
        ] {
            if d.as_millis() == 0 {
                return bad(format!("{name} must be at least 1 ms"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = PgVectorConfig::builder()
            .url("postgres://app:hunter2@db:5432/x")
            .dimensions(3)
            .build()
            .unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn loads_from_json() {
        let c: PgVectorConfig = serde_json::from_str(
            r#"{"url":"postgres://h/db","dimensions":384,"metric":"l2","query_timeout":"2s","expiry_mode":"delete"}"#,
        )
        .unwrap();
        assert_eq!(c.metric, Metric::L2);
        assert_eq!(c.expiry_mode, ExpiryMode::Delete);
        assert_eq!(c.query_timeout, Duration::from_secs(2));
        c.validate().unwrap();
        assert!(serde_json::from_str::<PgVectorConfig>(r#"{"tabel":"x"}"#).is_err());
    }

    #[test]
    fn validation_refuses_bad_values() {
        let ok = || PgVectorConfig::builder().url("postgres://h/db").dimensions(8);
        ok().build().unwrap();
        for b in [
            ok().dimensions(0),
            ok().dimensions(MAX_HNSW_DIMENSIONS + 1),
            ok().table("Memory"),
            ok().table("mem; drop table x"),
            ok().table("1mem"),
            ok().schema(""),
            ok().hnsw_m(1),
            ok().hnsw_m(16).hnsw_ef_construction(20),
            ok().ef_search(0),
            ok().pool_size(0),
            ok().query_timeout(Duration::ZERO),
            ok().url(""),
        ] {
            assert!(
                matches!(b.clone().build(), Err(Error::InvalidConfig(_))),
                "{b:?} accepted"
            );
        }
    }
}
