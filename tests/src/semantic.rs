//! The semantic check shipped with the tests (`tests/data/paraphrases.json`):
//! 10 paraphrase → source pairs and 10 lexical distractors. A semantic
//! embedder recalls each paraphrase's source first for at least 9 of 10.

use std::sync::Arc;

use agentscale_core::{Embedder, Filter, MemoryStore, Namespace};
use agentscale_state::rag::{Document, Rag};
use serde::Deserialize;

/// The labelled set.
#[derive(Debug, Deserialize)]
pub struct Paraphrases {
    /// The texts the queries paraphrase.
    pub sources: Vec<Doc>,
    /// Texts sharing words, not meaning, with the queries.
    pub distractors: Vec<Doc>,
    /// (query, source id) pairs.
    pub pairs: Vec<Pair>,
}

/// A stored text.
#[derive(Debug, Deserialize)]
pub struct Doc {
    /// Its id.
    pub id: String,
    /// Its text.
    pub text: String,
}

/// A query and the id of the source it paraphrases.
#[derive(Debug, Deserialize)]
pub struct Pair {
    /// The paraphrase.
    pub query: String,
    /// The source's id.
    pub source: String,
}

/// Loads `tests/data/paraphrases.json`.
pub fn paraphrases() -> Paraphrases {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/paraphrases.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read paraphrases.json"))
        .expect("parse paraphrases.json")
}

/// Remembers sources and distractors in `store` through `embedder` (in a
/// fresh namespace), then recalls each paraphrase; returns how many recalled
/// their source first, and the misses (query, recalled id).
pub async fn recall_sources(
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
) -> (usize, Vec<(String, String)>) {
    let set = paraphrases();
    let rag = Rag::new(store, embedder).expect("rag");
    let ns = Namespace::new("semantic", crate::unique_name("para")).expect("namespace");
    let docs = set
        .sources
        .iter()
        .chain(&set.distractors)
        .map(|d| Document::new(d.text.clone()).with_id(d.id.clone()))
        .collect();
    rag.remember_all(&ns, docs).await.expect("remember");
    let mut hits = 0;
    let mut misses = Vec::new();
    for p in &set.pairs {
        let got = rag
            .recall(&ns, &p.query, 1, &Filter::all())
            .await
            .expect("recall");
        let id = got.first().map(|r| r.id.clone()).unwrap_or_default();
        if id == p.source {
            hits += 1;
        } else {
            misses.push((p.query.clone(), id));
        }
    }
    let ids: Vec<String> = set
        .sources
        .iter()
        .chain(&set.distractors)
        .map(|d| d.id.clone())
        .collect();
    rag.store().delete(&ns, &ids).await.expect("clean up");
    (hits, misses)
}
