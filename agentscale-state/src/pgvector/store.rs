//! [`PgVectorMemoryStore`]: the [`MemoryStore`] implementation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use agentscale_core::{
    now_ms, validate_records, validate_search, Added, Error, ExpiryMode, Filter, Hit, MemoryRecord,
    MemoryStore, Metric, Namespace, Result,
};
use async_trait::async_trait;
use bb8::{Pool, PooledConnection, RunError};
use bb8_postgres::PostgresConnectionManager;
use pgvector::Vector;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Row, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::config::PgVectorConfig;
use super::schema::{self, Names};

type Manager = PostgresConnectionManager<MakeRustlsConnect>;

/// Most expired rows one write's sweep deletes (ExpiryMode::Delete).
const SWEEP_LIMIT: i64 = 1000;

/// Per-search options of [`PgVectorMemoryStore::search_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SearchOptions {
    /// HNSW `ef_search` for this query (1 to 1000); `None` uses the config's.
    pub ef_search: Option<u32>,
    /// Skip the index: an exact scan of the namespace.
    pub exact: bool,
}

impl SearchOptions {
    /// Sets `ef_search`.
    pub fn ef_search(mut self, ef: u32) -> Self {
        self.ef_search = Some(ef);
        self
    }

    /// Sets exact search.
    pub fn exact(mut self, exact: bool) -> Self {
        self.exact = exact;
        self
    }
}

/// Long-term memory in PostgreSQL + pgvector; see the [module docs](super).
#[derive(Debug)]
pub struct PgVectorMemoryStore {
    pool: Pool<Manager>,
    config: PgVectorConfig,
    names: Names,
    iterative_scan: bool,
    sql: Statements,
}

/// SQL text of every statement, built once from validated names.
#[derive(Debug)]
struct Statements {
    search: String,
    get: String,
    delete: String,
    update: String,
    upsert: String,
    add: String,
    by_hash: String,
    drop_expired_holders: String,
    sweep: String,
}

/// Maps a driver error to the crate's error kinds.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> Error {
    let Some(code) = e.code() else {
        if let Some(why) = super::tls::tls_failure(&e) {
            return Error::InvalidConfig(format!("postgres connect: {why}"));
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            return Error::Unavailable {
                message: "postgres connection failed".into(),
                source: Some(Box::new(e)),
            };
        }
        return Error::Backend {
            message: "postgres client error".into(),
            source: Some(Box::new(e)),
        };
    };
    let class = &code.code()[..2];
    if *code == SqlState::UNIQUE_VIOLATION {
        Error::Conflict(format!("memory record conflicts with a stored one: {e}"))
    } else if *code == SqlState::QUERY_CANCELED {
        Error::Timeout(format!("postgres statement cancelled (statement_timeout): {e}"))
    } else if class == "28" {
        // invalid_authorization_specification: wrong password, unknown user,
        // pg_hba refusing the connection (e.g. `hostssl` only).
        let why = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        Error::InvalidConfig(format!(
            "postgres refused the login (check user, password and TLS): {why}"
        ))
    } else if class == "22" {
        Error::InvalidInput(format!("postgres refused the data: {e}"))
    } else if matches!(class, "08" | "53" | "57") {
        Error::Unavailable {
            message: "postgres is unavailable".into(),
            source: Some(Box::new(e)),
        }
    } else {
        Error::Backend {
            message: "postgres statement failed".into(),
            source: Some(Box::new(e)),
        }
    }
}

fn pool_error(e: RunError<tokio_postgres::Error>) -> Error {
    match e {
        RunError::User(e) => pg_error(e),
        RunError::TimedOut => Error::Timeout("waiting for a postgres connection".into()),
    }
}

fn i64_ms(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn metadata_json(md: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(md).map_err(|e| Error::InvalidInput(format!("metadata: {e}")))
}

/// Column order of `SELECT_COLUMNS`.
const SELECT_COLUMNS: &str = "id, embedding, text, metadata::text, expires_at_ms";

fn row_record(row: &Row) -> Result<MemoryRecord> {
    let decode = |what: &str, e: tokio_postgres::Error| {
        Error::Codec(agentscale_core::CodecError::Malformed(format!(
            "memory row {what}: {e}"
        )))
    };
    let id: String = row.try_get(0).map_err(|e| decode("id", e))?;
    let vector: Vector = row.try_get(1).map_err(|e| decode("embedding", e))?;
    let text: Option<String> = row.try_get(2).map_err(|e| decode("text", e))?;
    let md: String = row.try_get(3).map_err(|e| decode("metadata", e))?;
    let expires: Option<i64> = row.try_get(4).map_err(|e| decode("expires_at_ms", e))?;
    let metadata: BTreeMap<String, String> = serde_json::from_str(&md).map_err(|e| {
        Error::Codec(agentscale_core::CodecError::Malformed(format!(
            "metadata of memory row {id:?} is not a string map: {e}"
        )))
    })?;
    Ok(MemoryRecord {
        id,
        vector: vector.to_vec(),
        text,
        metadata,
        expires_at_ms: expires.map(|e| u64::try_from(e).unwrap_or(0)),
    })
}

/// Columns of a batch write, as parallel arrays for `unnest`.
struct Batch {
    ids: Vec<String>,
    hashes: Vec<Vec<u8>>,
    vectors: Vec<Vector>,
    texts: Vec<Option<String>>,
    metadata: Vec<String>,
    expires: Vec<Option<i64>>,
}

impl Batch {
    fn new(records: &[(MemoryRecord, [u8; 32])]) -> Result<Self> {
        let mut b = Batch {
            ids: Vec::with_capacity(records.len()),
            hashes: Vec::with_capacity(records.len()),
            vectors: Vec::with_capacity(records.len()),
            texts: Vec::with_capacity(records.len()),
            metadata: Vec::with_capacity(records.len()),
            expires: Vec::with_capacity(records.len()),
        };
        for (r, hash) in records {
            b.ids.push(r.id.clone());
            b.hashes.push(hash.to_vec());
            b.vectors.push(Vector::from(r.vector.clone()));
            b.texts.push(r.text.clone());
            b.metadata.push(metadata_json(&r.metadata)?);
            b.expires.push(r.expires_at_ms.map(i64_ms));
        }
        Ok(b)
    }
}

/// Whether a filter is present beyond tenant and namespace.
fn filter_json(filter: &Filter) -> Result<String> {
    metadata_json(&filter.equals)
}

impl PgVectorMemoryStore {
    /// Validates `config`, connects the pool, applies the schema migrations
    /// and (if configured) creates the HNSW index.
    ///
    /// Errors: [`Error::InvalidConfig`] for a bad config, a URL that does not
    /// parse, or a table of another dimension; [`Error::Unavailable`] or
    /// [`Error::Timeout`] if the server cannot be reached in
    /// `connect_timeout`.
    pub async fn connect(config: PgVectorConfig) -> Result<Self> {
        config.validate()?;
        let (url, ssl_mode) = super::tls::split_sslmode(config.url.expose(), config.ssl_mode)?;
        let tls = super::tls::connector(ssl_mode, config.ssl_root_cert_pem.as_deref())?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::InvalidConfig(format!("pgvector url does not parse: {e}")))?;
        if let Some(p) = &config.password {
            pg.password(p.expose());
        }
        pg.ssl_mode(match ssl_mode {
            super::tls::PgSslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
            _ => tokio_postgres::config::SslMode::Disable,
        });
        let statement_ms = config.query_timeout.as_millis().max(1);
        pg.connect_timeout(config.connect_timeout)
            .options(format!("-c statement_timeout={statement_ms}"))
            .application_name("agentscale");
        // One direct connection first: the pool would turn a refused
        // certificate or login into a bare timeout.
        let (probe, conn) = tokio::time::timeout(config.connect_timeout, pg.connect(tls.clone()))
            .await
            .map_err(|_| Error::Timeout("connecting to postgres".into()))?
            .map_err(pg_error)?;
        drop(probe);
        let _ = conn.await;
        let pool = Pool::builder()
            .max_size(config.pool_size)
            .connection_timeout(config.connect_timeout)
            .build(PostgresConnectionManager::new(pg, tls))
            .await
            .map_err(pg_error)?;
        let names = Names::new(&config);
        let version = {
            let mut conn = tokio::time::timeout(config.connect_timeout, pool.get())
                .await
                .map_err(|_| Error::Timeout("connecting to postgres".into()))?
                .map_err(pool_error)?;
            tokio::time::timeout(
                config.query_timeout.max(Duration::from_secs(60)),
                schema::migrate(&mut conn, &config, &names),
            )
            .await
            .map_err(|_| Error::Timeout("applying the memory schema".into()))??
        };
        let iterative_scan = config.iterative_scan && schema::has_iterative_scan(&version);
        tracing::debug!(table = %names.table, pgvector = %version, iterative_scan, "pgvector memory store ready");
        let sql = Statements::new(&config, &names);
        Ok(PgVectorMemoryStore {
            pool,
            config,
            names,
            iterative_scan,
            sql,
        })
    }

    /// The config the store runs with.
    pub fn config(&self) -> &PgVectorConfig {
        &self.config
    }

    /// Whether filtered searches use pgvector's iterative index scan (the
    /// config asks for it and the server has pgvector 0.8+).
    pub fn iterative_scan(&self) -> bool {
        self.iterative_scan
    }

    /// The schema-qualified, quoted table name.
    pub fn table(&self) -> &str {
        &self.names.table
    }

    /// Creates the configured HNSW index if it is missing (after a bulk load
    /// with `create_index(false)`). Runs without the per-operation deadline:
    /// building an index over many rows takes minutes.
    pub async fn create_index(&self) -> Result<()> {
        let conn = self.pool.get().await.map_err(pool_error)?;
        conn.batch_execute(&format!(
            "SET statement_timeout = 0; {}; RESET statement_timeout",
            schema::index_sql(&self.config, &self.names)
        ))
        .await
        .map_err(pg_error)
    }

    /// Runs `f` under the store's deadline.
    async fn deadline<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.config.query_timeout, f)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "pgvector {what} did not finish in {:?}",
                    self.config.query_timeout
                ))
            })?
    }

    async fn conn(&self) -> Result<PooledConnection<'_, Manager>> {
        self.pool.get().await.map_err(pool_error)
    }

    /// [`MemoryStore::search`] with per-query options.
    pub async fn search_with(
        &self,
        ns: &Namespace,
        query: &[f32],
        k: usize,
        filter: &Filter,
        options: SearchOptions,
    ) -> Result<Vec<Hit>> {
        validate_search(query, k, filter, self.config.dimensions, self.config.metric)?;
        let ef = options.ef_search.unwrap_or(self.config.ef_search);
        if !(1..=1000).contains(&ef) {
            return Err(Error::InvalidInput(format!(
                "ef_search is {ef}; must be 1..=1000"
            )));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let q = Vector::from(query.to_vec());
        let fjson = filter_json(filter)?;
        let k64 = i64::try_from(k).unwrap_or(i64::MAX);
        let now = i64_ms(now_ms());
        self.deadline("search", async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            // ef_search is a validated integer; SET takes no parameters.
            let mut settings = format!("SET LOCAL hnsw.ef_search = {ef};");
            if self.iterative_scan {
                settings.push_str(" SET LOCAL hnsw.iterative_scan = relaxed_order;");
            }
            if options.exact {
                settings.push_str(" SET LOCAL enable_indexscan = off;");
            }
            tx.batch_execute(&settings).await.map_err(pg_error)?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                [&ns.tenant(), &ns.name(), &q, &now, &fjson, &k64];
            let mut rows = tx.query(&self.sql.search, &params).await.map_err(pg_error)?;
            if rows.len() < k && !options.exact && self.config.exact_fallback {
                // The index ran out before k rows (a selective filter, or
                // many other tenants' rows): redo it exactly.
                tx.batch_execute("SET LOCAL enable_indexscan = off")
                    .await
                    .map_err(pg_error)?;
                rows = tx.query(&self.sql.search, &params).await.map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            let mut hits = Vec::with_capacity(rows.len());
            for row in &rows {
                let distance: f64 = row.try_get(5).map_err(pg_error)?;
                let score = match self.config.metric {
                    Metric::Cosine => 1.0 - distance,
                    _ => -distance,
                };
                hits.push(Hit {
                    record: row_record(row)?,
                    score: score as f32,
                });
            }
            // relaxed_order may return rows slightly out of order.
            hits.sort_by(|a, b| {
                b.score
                    .total_cmp(&a.score)
                    .then_with(|| a.record.id.cmp(&b.record.id))
            });
            Ok(hits)
        })
        .await
    }

    /// Deletes expired rows of `ns` that hold one of `hashes` or `ids`: their
    /// content or id is written anew.
    async fn drop_expired_holders(
        &self,
        tx: &Transaction<'_>,
        ns: &Namespace,
        now: i64,
        batch: &Batch,
    ) -> Result<()> {
        tx.execute(
            &self.sql.drop_expired_holders,
            &[&ns.tenant(), &ns.name(), &now, &batch.hashes, &batch.ids],
        )
        .await
        .map_err(pg_error)?;
        if self.config.expiry_mode == ExpiryMode::Delete {
            tx.execute(&self.sql.sweep, &[&ns.tenant(), &ns.name(), &now, &SWEEP_LIMIT])
                .await
                .map_err(pg_error)?;
        }
        Ok(())
    }
}

impl Statements {
    fn new(config: &PgVectorConfig, names: &Names) -> Self {
        let t = &names.table;
        let op = schema::ops(config.metric).2;
        let live = "(expires_at_ms IS NULL OR expires_at_ms > $4)";
        let insert_cols =
            "INSERT INTO {t} (tenant, namespace, id, content_hash, embedding, text, metadata, expires_at_ms)
             SELECT $1, $2, u.id, u.h, u.e, u.tx, u.md::jsonb, u.ex
             FROM unnest($3::text[], $4::bytea[], $5::vector[], $6::text[], $7::text[], $8::int8[])
                  AS u(id, h, e, tx, md, ex)"
                .replace("{t}", t);
        Statements {
            search: format!(
                "SELECT {SELECT_COLUMNS}, (embedding {op} $3)::float8 AS distance FROM {t}
                 WHERE tenant = $1 AND namespace = $2 AND {live} AND metadata @> $5::text::jsonb
                 ORDER BY embedding {op} $3 LIMIT $6"
            ),
            get: format!(
                "SELECT {SELECT_COLUMNS} FROM {t}
                 WHERE tenant = $1 AND namespace = $2 AND id = ANY($3) AND {live}"
            ),
            delete: format!("DELETE FROM {t} WHERE tenant = $1 AND namespace = $2 AND id = ANY($3)"),
            update: format!(
                "UPDATE {t} SET content_hash = $5, embedding = $6, text = $7, metadata = $8::text::jsonb,
                        expires_at_ms = $9, updated_at = now()
                 WHERE tenant = $1 AND namespace = $2 AND id = $3 AND {live}"
            ),
            upsert: format!(
                "{insert_cols}
                 ON CONFLICT (tenant, namespace, id) DO UPDATE SET
                    content_hash = EXCLUDED.content_hash, embedding = EXCLUDED.embedding,
                    text = EXCLUDED.text, metadata = EXCLUDED.metadata,
                    expires_at_ms = EXCLUDED.expires_at_ms, updated_at = now()"
            ),
            add: format!("{insert_cols} ON CONFLICT DO NOTHING RETURNING content_hash"),
            by_hash: format!(
                "SELECT id, content_hash FROM {t}
                 WHERE tenant = $1 AND namespace = $2 AND content_hash = ANY($3)"
            ),
            drop_expired_holders: format!(
                "DELETE FROM {t} WHERE tenant = $1 AND namespace = $2
                   AND expires_at_ms IS NOT NULL AND expires_at_ms <= $3
                   AND (content_hash = ANY($4) OR id = ANY($5))"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE ctid IN (
                   SELECT ctid FROM {t} WHERE tenant = $1 AND namespace = $2
                     AND expires_at_ms IS NOT NULL AND expires_at_ms <= $3 LIMIT $4)"
            ),
        }
    }
}

/// Last record of each id wins (what a sequence of upserts would give).
fn last_per_id(records: Vec<MemoryRecord>) -> Vec<MemoryRecord> {
    let mut seen = HashSet::new();
    let mut out: Vec<MemoryRecord> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    out.reverse();
    out
}

#[async_trait]
impl MemoryStore for PgVectorMemoryStore {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    fn metric(&self) -> Metric {
        self.config.metric
    }

    fn expiry_mode(&self) -> ExpiryMode {
        self.config.expiry_mode
    }

    async fn upsert(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<()> {
        validate_records(&records, self.config.dimensions, self.config.metric, false)?;
        let hashed: Vec<(MemoryRecord, [u8; 32])> = last_per_id(records)
            .into_iter()
            .map(|r| {
                let h = r.content_hash();
                (r, h)
            })
            .collect();
        let mut seen = HashMap::new();
        for (r, h) in &hashed {
            if let Some(other) = seen.insert(*h, &r.id) {
                return Err(Error::Conflict(format!(
                    "records {other:?} and {:?} have the same content",
                    r.id
                )));
            }
        }
        if hashed.is_empty() {
            return Ok(());
        }
        let batch = Batch::new(&hashed)?;
        let now = i64_ms(now_ms());
        self.deadline("upsert", async {
            let mut conn = self.conn().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            self.drop_expired_holders(&tx, ns, now, &batch).await?;
            tx.execute(
                &self.sql.upsert,
                &[
                    &ns.tenant(),
                    &ns.name(),
                    &batch.ids,
                    &batch.hashes,
                    &batch.vectors,
                    &batch.texts,
                    &batch.metadata,
                    &batch.expires,
                ],
            )
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    async fn add(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<Vec<Added>> {
        validate_records(&records, self.config.dimensions, self.config.metric, true)?;
        // One row per distinct content; each input maps to its content.
        let mut order: Vec<[u8; 32]> = Vec::with_capacity(records.len());
        let mut unique: Vec<(MemoryRecord, [u8; 32])> = Vec::new();
        let mut seen_hash = HashSet::new();
        let mut seen_id: HashMap<String, [u8; 32]> = HashMap::new();
        for mut r in records {
            let h = r.content_hash();
            if r.id.is_empty() {
                r.id = r.content_id();
            }
            order.push(h);
            if seen_hash.insert(h) {
                if seen_id.insert(r.id.clone(), h).is_some() {
                    return Err(Error::Conflict(format!(
                        "id {:?} is given to two different contents",
                        r.id
                    )));
                }
                unique.push((r, h));
            }
        }
        if unique.is_empty() {
            return Ok(Vec::new());
        }
        let batch = Batch::new(&unique)?;
        let now = i64_ms(now_ms());
        let (inserted, stored) = self
            .deadline("add", async {
                let mut conn = self.conn().await?;
                let tx = conn.transaction().await.map_err(pg_error)?;
                self.drop_expired_holders(&tx, ns, now, &batch).await?;
                let rows = tx
                    .query(
                        &self.sql.add,
                        &[
                            &ns.tenant(),
                            &ns.name(),
                            &batch.ids,
                            &batch.hashes,
                            &batch.vectors,
                            &batch.texts,
                            &batch.metadata,
                            &batch.expires,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                let mut inserted = HashSet::new();
                for row in &rows {
                    let h: Vec<u8> = row.try_get(0).map_err(pg_error)?;
                    inserted.insert(h);
                }
                let rows = tx
                    .query(&self.sql.by_hash, &[&ns.tenant(), &ns.name(), &batch.hashes])
                    .await
                    .map_err(pg_error)?;
                let mut stored: HashMap<Vec<u8>, String> = HashMap::new();
                for row in &rows {
                    let id: String = row.try_get(0).map_err(pg_error)?;
                    let h: Vec<u8> = row.try_get(1).map_err(pg_error)?;
                    stored.insert(h, id);
                }
                if let Some((r, _)) = unique.iter().find(|(_, h)| !stored.contains_key(&h[..])) {
                    // Neither inserted nor found by content: the id holds
                    // other content. Roll back the whole batch.
                    return Err(Error::Conflict(format!(
                        "id {:?} already holds other content",
                        r.id
                    )));
                }
                tx.commit().await.map_err(pg_error)?;
                Ok((inserted, stored))
            })
            .await?;
        let mut reported = HashSet::new();
        Ok(order
            .iter()
            .map(|h| Added {
                id: stored.get(&h[..]).cloned().unwrap_or_default(),
                // Only the first input of a content counts as the insert.
                inserted: inserted.contains(&h[..]) && reported.insert(*h),
            })
            .collect())
    }

    async fn update(&self, ns: &Namespace, record: MemoryRecord) -> Result<()> {
        validate_records(
            std::slice::from_ref(&record),
            self.config.dimensions,
            self.config.metric,
            false,
        )?;
        let hash = record.content_hash();
        let batch = Batch::new(&[(record.clone(), hash)])?;
        let now = i64_ms(now_ms());
        let md = metadata_json(&record.metadata)?;
        let n = self
            .deadline("update", async {
                let mut conn = self.conn().await?;
                let tx = conn.transaction().await.map_err(pg_error)?;
                self.drop_expired_holders(
                    &tx,
                    ns,
                    now,
                    &Batch {
                        ids: Vec::new(),
                        ..batch
                    },
                )
                .await?;
                let n = tx
                    .execute(
                        &self.sql.update,
                        &[
                            &ns.tenant(),
                            &ns.name(),
                            &record.id,
                            &now,
                            &hash.to_vec(),
                            &Vector::from(record.vector.clone()),
                            &record.text,
                            &md,
                            &record.expires_at_ms.map(i64_ms),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                Ok(n)
            })
            .await?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "memory record {:?} in {ns:?}",
                record.id
            )));
        }
        Ok(())
    }

    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<MemoryRecord>> {
        let now = i64_ms(now_ms());
        let rows = self
            .deadline("get", async {
                let conn = self.conn().await?;
                conn.query(&self.sql.get, &[&ns.tenant(), &ns.name(), &ids, &now])
                    .await
                    .map_err(pg_error)
            })
            .await?;
        let mut by_id: HashMap<String, MemoryRecord> = HashMap::new();
        for row in &rows {
            let r = row_record(row)?;
            by_id.insert(r.id.clone(), r);
        }
        Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
    }

    async fn search(&self, ns: &Namespace, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        self.search_with(ns, query, k, filter, SearchOptions::default())
            .await
    }

    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.deadline("delete", async {
            let conn = self.conn().await?;
            conn.execute(&self.sql.delete, &[&ns.tenant(), &ns.name(), &ids])
                .await
                .map_err(pg_error)
        })
        .await
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        if self.config.expiry_mode != ExpiryMode::Delete {
            return Ok(0);
        }
        let now = i64_ms(now_ms());
        self.deadline("purge_expired", async {
            let conn = self.conn().await?;
            let mut total = 0;
            loop {
                let n = conn
                    .execute(&self.sql.sweep, &[&ns.tenant(), &ns.name(), &now, &SWEEP_LIMIT])
                    .await
                    .map_err(pg_error)?;
                total += n;
                if n < SWEEP_LIMIT as u64 {
                    return Ok(total);
                }
            }
        })
        .await
    }
}
