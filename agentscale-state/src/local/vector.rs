//! In-process [`MemoryStore`]: exact (brute-force) search, or an approximate
//! HNSW index beside it.

use std::cmp::Ordering;
use std::collections::HashMap;

use agentscale_core::{
    now_ms, validate_records, validate_search, Added, Error, ExpiryMode, Filter, Hit, MemoryRecord,
    MemoryStore, Metric, Namespace, Result,
};
use async_trait::async_trait;
use parking_lot::RwLock;

/// Long-term memory held in this process.
///
/// With [`Index::Exact`] (the default) every query scores every record of the
/// namespace (O(n·d)), so results are the true top-k under the store's
/// [`Metric`]: good for tests, demos and up to some tens of thousands of
/// records per namespace.
///
/// Namespaces (tenant + name) are fully isolated. Input is validated like
/// every backend's ([`agentscale_core::validate_records`]): vectors of the
/// wrong length, non-finite values, zero vectors under cosine, empty or
/// oversized text and oversized metadata are [`Error::InvalidInput`], and a
/// batch with one bad record stores nothing. A namespace holds each content
/// once (see [`MemoryStore`]). Equal scores are ordered by record id, so exact
/// results are deterministic.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> agentscale_core::Result<()> {
/// use agentscale_core::{Filter, MemoryRecord, MemoryStore, Metric, Namespace};
/// use agentscale_state::local::LocalMemoryStore;
///
/// let store = LocalMemoryStore::new(2, Metric::Cosine)?;
/// let ns = Namespace::new("acme", "facts")?;
/// store.upsert(&ns, vec![
///     MemoryRecord::new("x", vec![1.0, 0.0]),
///     MemoryRecord::new("y", vec![0.0, 1.0]),
/// ]).await?;
/// let hits = store.search(&ns, &[0.9, 0.1], 1, &Filter::all()).await?;
/// assert_eq!(hits[0].record.id, "x");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct LocalMemoryStore {
    dimensions: usize,
    metric: Metric,
    expiry: ExpiryMode,
    namespaces: RwLock<HashMap<Namespace, Space>>,
}

/// Which search structure a [`LocalMemoryStore`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Index {
    /// Score every record: exact top-k.
    #[default]
    Exact,
}

/// Builder of a [`LocalMemoryStore`].
#[derive(Debug, Clone)]
pub struct LocalMemoryStoreBuilder {
    dimensions: usize,
    metric: Metric,
    expiry: ExpiryMode,
    index: Index,
}

#[derive(Debug, Default)]
struct Space {
    records: HashMap<String, Stored>,
    /// Content hash → id of the record holding that content.
    by_hash: HashMap<[u8; 32], String>,
}

#[derive(Debug)]
struct Stored {
    record: MemoryRecord,
    hash: [u8; 32],
    /// Euclidean norm of the vector, precomputed for cosine.
    norm: f32,
}

impl LocalMemoryStoreBuilder {
    /// Vector dimension (required, greater than zero).
    pub fn dimensions(mut self, dimensions: usize) -> Self {
        self.dimensions = dimensions;
        self
    }

    /// Similarity metric (default cosine).
    pub fn metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// What happens to expired records (default [`ExpiryMode::Hide`]).
    pub fn expiry_mode(mut self, mode: ExpiryMode) -> Self {
        self.expiry = mode;
        self
    }

    /// The search structure (default [`Index::Exact`]).
    pub fn index(mut self, index: Index) -> Self {
        self.index = index;
        self
    }

    /// Checks the settings; zero dimensions is [`Error::InvalidConfig`].
    pub fn build(self) -> Result<LocalMemoryStore> {
        if self.dimensions == 0 {
            return Err(Error::InvalidConfig(
                "memory store dimensions must be greater than zero".into(),
            ));
        }
        let Index::Exact = self.index;
        Ok(LocalMemoryStore {
            dimensions: self.dimensions,
            metric: self.metric,
            expiry: self.expiry,
            namespaces: RwLock::new(HashMap::new()),
        })
    }
}

impl LocalMemoryStore {
    /// A builder; set at least [`dimensions`](LocalMemoryStoreBuilder::dimensions).
    pub fn builder() -> LocalMemoryStoreBuilder {
        LocalMemoryStoreBuilder {
            dimensions: 0,
            metric: Metric::Cosine,
            expiry: ExpiryMode::Hide,
            index: Index::Exact,
        }
    }

    /// An exact store of `dimensions`-long vectors compared with `metric`.
    /// Zero dimensions is [`Error::InvalidConfig`].
    pub fn new(dimensions: usize, metric: Metric) -> Result<Self> {
        Self::builder().dimensions(dimensions).metric(metric).build()
    }

    /// Number of records stored in `ns`, expired ones included.
    pub fn count(&self, ns: &Namespace) -> usize {
        self.namespaces.read().get(ns).map_or(0, |s| s.records.len())
    }

    fn score(&self, query: &[f32], qnorm: f32, s: &Stored) -> f32 {
        match self.metric {
            Metric::Dot => dot(query, &s.record.vector),
            Metric::L2 => -query
                .iter()
                .zip(&s.record.vector)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt(),
            // Cosine and any later metric default to cosine here; `build`
            // only accepts the metrics above.
            _ => {
                let denom = qnorm * s.norm;
                if denom > 0.0 {
                    dot(query, &s.record.vector) / denom
                } else {
                    0.0
                }
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt()
}

/// Closest first; equal scores by id.
fn closer(a: &(f32, &Stored), b: &(f32, &Stored)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.1.record.id.cmp(&b.1.record.id))
}

impl Space {
    fn remove(&mut self, id: &str) -> Option<Stored> {
        let old = self.records.remove(id)?;
        if self.by_hash.get(&old.hash).map(String::as_str) == Some(id) {
            self.by_hash.remove(&old.hash);
        }
        Some(old)
    }

    fn insert(&mut self, record: MemoryRecord, hash: [u8; 32]) {
        let norm = norm(&record.vector);
        self.remove(&record.id);
        self.by_hash.insert(hash, record.id.clone());
        self.records
            .insert(record.id.clone(), Stored { record, hash, norm });
    }

    /// Drops an expired record holding `hash` (its content is written anew).
    fn drop_expired_holder(&mut self, hash: &[u8; 32], now: u64) {
        let expired = self
            .by_hash
            .get(hash)
            .and_then(|id| self.records.get(id))
            .filter(|s| s.record.expired_at(now))
            .map(|s| s.record.id.clone());
        if let Some(id) = expired {
            self.remove(&id);
        }
    }

    fn purge(&mut self, now: u64) -> u64 {
        let expired: Vec<String> = self
            .records
            .values()
            .filter(|s| s.record.expired_at(now))
            .map(|s| s.record.id.clone())
            .collect();
        for id in &expired {
            self.remove(id);
        }
        expired.len() as u64
    }
}

/// Last record of each id wins (the order a sequence of upserts would give).
fn last_per_id(records: Vec<MemoryRecord>) -> Vec<MemoryRecord> {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<MemoryRecord> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.id.clone()))
        .collect();
    out.reverse();
    out
}

#[async_trait]
impl MemoryStore for LocalMemoryStore {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn expiry_mode(&self) -> ExpiryMode {
        self.expiry
    }

    async fn upsert(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<()> {
        validate_records(&records, self.dimensions, self.metric, false)?;
        let records = last_per_id(records);
        let hashed: Vec<([u8; 32], MemoryRecord)> =
            records.into_iter().map(|r| (r.content_hash(), r)).collect();
        let now = now_ms();
        let mut map = self.namespaces.write();
        let space = map.entry(ns.clone()).or_default();
        if self.expiry == ExpiryMode::Delete {
            space.purge(now);
        }
        // Check the whole batch first: nothing is written on a conflict.
        let mut batch_hashes: HashMap<[u8; 32], &str> = HashMap::new();
        for (hash, r) in &hashed {
            if let Some(other) = batch_hashes.insert(*hash, &r.id) {
                return Err(Error::Conflict(format!(
                    "records {other:?} and {:?} have the same content",
                    r.id
                )));
            }
            let holder = space.by_hash.get(hash).and_then(|id| space.records.get(id));
            if let Some(h) = holder {
                let replaced_in_batch = hashed.iter().any(|(_, o)| o.id == h.record.id);
                if h.record.id != r.id && !h.record.expired_at(now) && !replaced_in_batch {
                    return Err(Error::Conflict(format!(
                        "record {:?} has the same content as stored record {:?}",
                        r.id, h.record.id
                    )));
                }
            }
        }
        for (hash, record) in hashed {
            space.drop_expired_holder(&hash, now);
            space.insert(record, hash);
        }
        Ok(())
    }

    async fn add(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<Vec<Added>> {
        validate_records(&records, self.dimensions, self.metric, true)?;
        let now = now_ms();
        let mut map = self.namespaces.write();
        let space = map.entry(ns.clone()).or_default();
        if self.expiry == ExpiryMode::Delete {
            space.purge(now);
        }
        // Plan first (nothing written on a conflict), then write.
        let mut outcomes = Vec::with_capacity(records.len());
        let mut new: HashMap<[u8; 32], MemoryRecord> = HashMap::new();
        let mut new_ids: HashMap<String, [u8; 32]> = HashMap::new();
        for mut r in records {
            let hash = r.content_hash();
            if r.id.is_empty() {
                r.id = r.content_id();
            }
            if let Some(existing) = new.get(&hash) {
                outcomes.push(Added {
                    id: existing.id.clone(),
                    inserted: false,
                });
                continue;
            }
            let live_holder = space
                .by_hash
                .get(&hash)
                .and_then(|id| space.records.get(id))
                .filter(|s| !s.record.expired_at(now));
            if let Some(h) = live_holder {
                outcomes.push(Added {
                    id: h.record.id.clone(),
                    inserted: false,
                });
                continue;
            }
            let id_taken = space
                .records
                .get(&r.id)
                .is_some_and(|s| s.hash != hash && !s.record.expired_at(now));
            if id_taken || new_ids.contains_key(&r.id) {
                return Err(Error::Conflict(format!(
                    "id {:?} already holds other content",
                    r.id
                )));
            }
            outcomes.push(Added {
                id: r.id.clone(),
                inserted: true,
            });
            new_ids.insert(r.id.clone(), hash);
            new.insert(hash, r);
        }
        for (hash, record) in new {
            space.drop_expired_holder(&hash, now);
            space.insert(record, hash);
        }
        Ok(outcomes)
    }

    async fn update(&self, ns: &Namespace, record: MemoryRecord) -> Result<()> {
        validate_records(std::slice::from_ref(&record), self.dimensions, self.metric, false)?;
        let now = now_ms();
        let live = {
            let map = self.namespaces.read();
            map.get(ns)
                .and_then(|s| s.records.get(&record.id))
                .is_some_and(|s| !s.record.expired_at(now))
        };
        if !live {
            return Err(Error::NotFound(format!(
                "memory record {:?} in {ns:?}",
                record.id
            )));
        }
        self.upsert(ns, vec![record]).await
    }

    async fn get(&self, ns: &Namespace, ids: &[String]) -> Result<Vec<MemoryRecord>> {
        let now = now_ms();
        let map = self.namespaces.read();
        let Some(space) = map.get(ns) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| space.records.get(id))
            .filter(|s| !s.record.expired_at(now))
            .map(|s| s.record.clone())
            .collect())
    }

    async fn search(&self, ns: &Namespace, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        validate_search(query, k, filter, self.dimensions, self.metric)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let qnorm = norm(query);
        let map = self.namespaces.read();
        let Some(space) = map.get(ns) else {
            return Ok(Vec::new());
        };
        // Score by reference; clone only the k records returned.
        let mut scored: Vec<(f32, &Stored)> = space
            .records
            .values()
            .filter(|s| !s.record.expired_at(now) && filter.matches(&s.record.metadata))
            .map(|s| (self.score(query, qnorm, s), s))
            .collect();
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, closer);
            scored.truncate(k);
        }
        scored.sort_by(closer);
        Ok(scored
            .into_iter()
            .map(|(score, s)| Hit {
                record: s.record.clone(),
                score,
            })
            .collect())
    }

    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64> {
        let mut map = self.namespaces.write();
        let Some(space) = map.get_mut(ns) else {
            return Ok(0);
        };
        let removed = ids.iter().filter(|id| space.remove(id).is_some()).count() as u64;
        if space.records.is_empty() {
            map.remove(ns);
        }
        Ok(removed)
    }

    async fn purge_expired(&self, ns: &Namespace) -> Result<u64> {
        if self.expiry != ExpiryMode::Delete {
            return Ok(0);
        }
        let mut map = self.namespaces.write();
        Ok(map.get_mut(ns).map_or(0, |s| s.purge(now_ms())))
    }
}
