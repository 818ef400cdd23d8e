//! The HNSW graph of one namespace of a [`LocalMemoryStore`](super::LocalMemoryStore)
//! in [`Index::Hnsw`](super::Index::Hnsw) mode.
//!
//! The graph (`hnsw_rs`) only grows: a record that is deleted or replaced
//! leaves a tombstone (its slot maps to no record) that searches skip, and the
//! namespace rebuilds its graph once tombstones pass [`REBUILD_FRACTION`] of
//! the slots.

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::hnsw::Hnsw;

/// Tombstones (as a fraction of all slots) that trigger a rebuild.
pub(super) const REBUILD_FRACTION: f64 = 0.25;
/// Below this many tombstones a namespace is never rebuilt.
const REBUILD_MIN_TOMBSTONES: usize = 64;
/// Maximum layers of the graph (the crate's recommended value).
const MAX_LAYERS: usize = 16;
/// Batches at least this large are inserted on all cores.
const PARALLEL_BATCH: usize = 256;

/// Graph parameters, already validated by the store's builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Params {
    pub(super) m: usize,
    pub(super) ef_construction: usize,
    pub(super) ef_search: usize,
}

/// The graph's distance: `1 - cos` on unit vectors, or squared L2. Both are
/// finite or +inf and never negative (the crate requires non-negative
/// distances), since stored vectors and queries are validated finite.
#[derive(Debug, Clone, Copy)]
struct AnnDistance {
    l2: bool,
}

impl Distance<f32> for AnnDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        if self.l2 {
            a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
        } else {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let d = 1.0 - dot;
            if d.is_nan() || d < 0.0 {
                0.0
            } else {
                d
            }
        }
    }
}

/// One namespace's graph plus the slot → record-id table.
pub(super) struct AnnIndex {
    graph: Hnsw<'static, f32, AnnDistance>,
    /// Slot (the graph's data id) → record id; `None` is a tombstone.
    slots: Vec<Option<String>>,
    tombstones: usize,
    params: Params,
    l2: bool,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnIndex")
            .field("slots", &self.slots.len())
            .field("tombstones", &self.tombstones)
            .field("params", &self.params)
            .field("l2", &self.l2)
            .finish()
    }
}

impl AnnIndex {
    pub(super) fn new(params: Params, l2: bool, capacity: usize) -> Self {
        AnnIndex {
            graph: Hnsw::new(
                params.m,
                capacity.max(1024),
                MAX_LAYERS,
                params.ef_construction,
                AnnDistance { l2 },
            ),
            slots: Vec::new(),
            tombstones: 0,
            params,
            l2,
        }
    }

    /// The vector as the graph stores it: unit length under cosine.
    fn prepare(&self, v: &[f32]) -> Vec<f32> {
        if self.l2 {
            return v.to_vec();
        }
        let n = v
            .iter()
            .map(|x| f64::from(*x) * f64::from(*x))
            .sum::<f64>()
            .sqrt();
        if n > 0.0 && n.is_finite() {
            v.iter().map(|x| (f64::from(*x) / n) as f32).collect()
        } else {
            v.to_vec()
        }
    }

    /// Adds records (id, vector) to the graph; returns their slots in order.
    pub(super) fn insert_many(&mut self, items: &[(String, &[f32])]) -> Vec<usize> {
        let start = self.slots.len();
        let prepared: Vec<Vec<f32>> = items.iter().map(|(_, v)| self.prepare(v)).collect();
        let batch: Vec<(&[f32], usize)> = prepared
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), start + i))
            .collect();
        if batch.len() >= PARALLEL_BATCH {
            self.graph.parallel_insert_slice(&batch);
        } else {
            for item in &batch {
                self.graph.insert_slice(*item);
            }
        }
        self.slots.extend(items.iter().map(|(id, _)| Some(id.clone())));
        (start..self.slots.len()).collect()
    }

    /// Marks a slot dead (its record was deleted or replaced).
    pub(super) fn tombstone(&mut self, slot: usize) {
        if let Some(s) = self.slots.get_mut(slot) {
            if s.take().is_some() {
                self.tombstones += 1;
            }
        }
    }

    /// Whether tombstones have passed the rebuild threshold.
    pub(super) fn needs_rebuild(&self) -> bool {
        self.tombstones >= REBUILD_MIN_TOMBSTONES
            && self.tombstones as f64 > REBUILD_FRACTION * self.slots.len() as f64
    }

    pub(super) fn tombstones(&self) -> usize {
        self.tombstones
    }

    pub(super) fn is_l2(&self) -> bool {
        self.l2
    }

    pub(super) fn params(&self) -> Params {
        self.params
    }

    /// Ids of the (about) `fetch` nearest live records, nearest first.
    /// Tombstones are dropped, so fewer may come back.
    pub(super) fn search(&self, query: &[f32], fetch: usize) -> Vec<&str> {
        let q = self.prepare(query);
        let ef = self.params.ef_search.max(fetch);
        self.graph
            .search(&q, fetch, ef)
            .into_iter()
            .filter_map(|n| self.slots.get(n.d_id).and_then(|s| s.as_deref()))
            .collect()
    }
}
