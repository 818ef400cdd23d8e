//! In-process [`MemoryStore`] with exact (brute-force) search.

use std::cmp::Ordering;
use std::collections::HashMap;

use agentscale_core::{Error, Filter, Hit, MemoryRecord, MemoryStore, Metric, Namespace, Result};
use async_trait::async_trait;
use parking_lot::RwLock;

/// Long-term memory held in this process, searched exactly: every query scores
/// every record of the namespace (O(n·d)), so results are the true top-k under
/// the store's [`Metric`]. Good for tests, demos and up to some tens of
/// thousands of records per namespace; beyond that use an indexed backend.
///
/// Namespaces (tenant + name) are fully isolated. Vectors of the wrong length
/// and non-finite values are [`Error::InvalidInput`]. Under
/// [`Metric::Cosine`], a zero vector has similarity 0 to everything.
/// Equal scores are ordered by record id, so results are deterministic.
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
///     MemoryRecord { id: "x".into(), vector: vec![1.0, 0.0], text: None, metadata: Default::default() },
///     MemoryRecord { id: "y".into(), vector: vec![0.0, 1.0], text: None, metadata: Default::default() },
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
    namespaces: RwLock<HashMap<Namespace, HashMap<String, Stored>>>,
}

#[derive(Debug)]
struct Stored {
    record: MemoryRecord,
    /// Euclidean norm of the vector, precomputed for cosine.
    norm: f32,
}

/// Longest record id accepted.
const MAX_ID_LEN: usize = 512;

impl LocalMemoryStore {
    /// A store of `dimensions`-long vectors compared with `metric`. Zero
    /// dimensions is [`Error::InvalidConfig`].
    pub fn new(dimensions: usize, metric: Metric) -> Result<Self> {
        if dimensions == 0 {
            return Err(Error::InvalidConfig(
                "memory store dimensions must be greater than zero".into(),
            ));
        }
        Ok(LocalMemoryStore {
            dimensions,
            metric,
            namespaces: RwLock::new(HashMap::new()),
        })
    }

    /// Number of records in `ns`.
    pub fn count(&self, ns: &Namespace) -> usize {
        self.namespaces.read().get(ns).map_or(0, HashMap::len)
    }

    fn check_vector(&self, what: &str, v: &[f32]) -> Result<()> {
        if v.len() != self.dimensions {
            return Err(Error::InvalidInput(format!(
                "{what} has {} dimensions; this store holds {}",
                v.len(),
                self.dimensions
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "{what} contains a NaN or infinite value"
            )));
        }
        Ok(())
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

#[async_trait]
impl MemoryStore for LocalMemoryStore {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    async fn upsert(&self, ns: &Namespace, records: Vec<MemoryRecord>) -> Result<()> {
        for r in &records {
            if r.id.is_empty() || r.id.len() > MAX_ID_LEN {
                return Err(Error::InvalidInput(format!(
                    "record id must be 1..={MAX_ID_LEN} bytes"
                )));
            }
            self.check_vector(&format!("vector of record {:?}", r.id), &r.vector)?;
        }
        let mut map = self.namespaces.write();
        let space = map.entry(ns.clone()).or_default();
        for record in records {
            let norm = norm(&record.vector);
            space.insert(record.id.clone(), Stored { record, norm });
        }
        Ok(())
    }

    async fn search(&self, ns: &Namespace, query: &[f32], k: usize, filter: &Filter) -> Result<Vec<Hit>> {
        self.check_vector("query vector", query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let qnorm = norm(query);
        let map = self.namespaces.read();
        let Some(space) = map.get(ns) else {
            return Ok(Vec::new());
        };
        // Score by reference; clone only the k records returned.
        let mut scored: Vec<(f32, &Stored)> = space
            .values()
            .filter(|s| filter.matches(&s.record.metadata))
            .map(|s| {
                let d = dot(query, &s.record.vector);
                let score = match self.metric {
                    Metric::Dot => d,
                    Metric::Cosine => {
                        let denom = qnorm * s.norm;
                        if denom > 0.0 {
                            d / denom
                        } else {
                            0.0
                        }
                    }
                };
                (score, s)
            })
            .collect();
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, closer);
            scored.truncate(k);
        }
        scored.sort_by(closer);
        let hits = scored
            .into_iter()
            .map(|(score, s)| Hit {
                record: s.record.clone(),
                score,
            })
            .collect();
        Ok(hits)
    }

    async fn delete(&self, ns: &Namespace, ids: &[String]) -> Result<u64> {
        let mut map = self.namespaces.write();
        let Some(space) = map.get_mut(ns) else {
            return Ok(0);
        };
        let removed = ids
            .iter()
            .filter(|id| space.remove(id.as_str()).is_some())
            .count() as u64;
        if space.is_empty() {
            map.remove(ns);
        }
        Ok(removed)
    }
}
