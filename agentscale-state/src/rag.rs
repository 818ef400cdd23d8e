//! Retrieval-augmented generation over any [`MemoryStore`] and [`Embedder`]:
//! remember texts with metadata, recall the closest ones to a question.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use agentscale_core::{
    validate_texts, Added, Embedder, Error, Filter, MemoryRecord, MemoryStore, Namespace, Result,
};

/// A text to remember.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Document {
    /// Id; empty derives it from the content, so remembering the same text
    /// twice stores it once.
    pub id: String,
    /// The text (non-empty, at most 64 KiB).
    pub text: String,
    /// Metadata that [`Filter`]s match on.
    pub metadata: BTreeMap<String, String>,
}

impl Document {
    /// A document with this text, an id derived from its content and no
    /// metadata.
    pub fn new(text: impl Into<String>) -> Self {
        Document {
            text: text.into(),
            ..Default::default()
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Adds one metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// A recalled memory.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Recalled {
    /// Its id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
    /// Similarity to the question under the store's metric (higher is closer).
    pub score: f32,
}

/// Remember and recall text over a store and an embedder.
///
/// * The embedder's dimension must equal the store's ([`Rag::new`] checks:
///   [`Error::InvalidConfig`]), and every write is validated by the store
///   first, so a bad document stores nothing of its batch.
/// * Adds are idempotent by content ([`MemoryStore::add`]: text, metadata
///   and vector), so the same document remembered twice is stored once as
///   long as the embedder gives it the same vector (deterministic models do;
///   give documents ids when a model's batching may change the last bits).
/// * Everything is confined to one [`Namespace`] (tenant + name).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> agentscale_core::Result<()> {
/// use std::sync::Arc;
/// use agentscale_core::{Filter, Metric, Namespace};
/// use agentscale_state::local::{HashEmbedder, LocalMemoryStore};
/// use agentscale_state::rag::{Document, Rag};
///
/// // The hash embedder is not semantic: use a real model in production.
/// let rag = Rag::new(Arc::new(LocalMemoryStore::new(256, Metric::Cosine)?), Arc::new(HashEmbedder::new(256)?))?;
/// let ns = Namespace::new("acme", "handbook")?;
/// rag.remember_all(&ns, vec![
///     Document::new("Expense reports are due on the fifth of each month.").with_meta("team", "finance"),
///     Document::new("The office closes at six on Fridays.").with_meta("team", "facilities"),
/// ]).await?;
/// let hits = rag.recall(&ns, "when are expense reports due", 1, &Filter::all()).await?;
/// assert!(hits[0].text.starts_with("Expense reports"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Rag {
    store: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
}

impl Rag {
    /// A helper over `store` and `embedder`, which must agree on the dimension.
    pub fn new(store: Arc<dyn MemoryStore>, embedder: Arc<dyn Embedder>) -> Result<Self> {
        if store.dimensions() != embedder.dimensions() {
            return Err(Error::InvalidConfig(format!(
                "the embedder makes {}-dimensional vectors; the store holds {}",
                embedder.dimensions(),
                store.dimensions()
            )));
        }
        Ok(Rag { store, embedder })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn MemoryStore> {
        &self.store
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Remembers one text with metadata; see [`Rag::remember_all`].
    pub async fn remember(
        &self,
        ns: &Namespace,
        text: impl Into<String>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Added> {
        let mut doc = Document::new(text);
        doc.metadata = metadata;
        let mut added = self.remember_all(ns, vec![doc]).await?;
        added.pop().ok_or_else(|| Error::Backend {
            message: "the store returned no outcome for one record".into(),
            source: None,
        })
    }

    /// Embeds the documents (one call to the embedder) and adds them; one
    /// outcome per document, in order. Nothing is stored if any document is
    /// invalid.
    pub async fn remember_all(&self, ns: &Namespace, docs: Vec<Document>) -> Result<Vec<Added>> {
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = docs.iter().map(|d| d.text.clone()).collect();
        validate_texts(&texts)?;
        let vectors = self.embedder.embed(&texts).await?;
        if vectors.len() != docs.len() {
            return Err(Error::Backend {
                message: format!(
                    "the embedder returned {} vectors for {} texts",
                    vectors.len(),
                    docs.len()
                ),
                source: None,
            });
        }
        let records = docs
            .into_iter()
            .zip(vectors)
            .map(|(d, vector)| MemoryRecord {
                id: d.id,
                vector,
                text: Some(d.text),
                metadata: d.metadata,
                expires_at_ms: None,
            })
            .collect();
        self.store.add(ns, records).await
    }

    /// The `k` remembered texts closest to `query` that match `filter`,
    /// closest first, with their scores.
    pub async fn recall(
        &self,
        ns: &Namespace,
        query: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Recalled>> {
        let query = [query.to_string()];
        validate_texts(&query)?;
        filter.validate()?;
        let mut vectors = self.embedder.embed(&query).await?;
        let vector = vectors.pop().ok_or_else(|| Error::Backend {
            message: "the embedder returned no vector".into(),
            source: None,
        })?;
        let hits = self.store.search(ns, &vector, k, filter).await?;
        Ok(hits
            .into_iter()
            .map(|h| Recalled {
                id: h.record.id,
                text: h.record.text.unwrap_or_default(),
                metadata: h.record.metadata,
                score: h.score,
            })
            .collect())
    }

    /// Recalled texts as a numbered context block for a prompt:
    /// `[1] text\n[2] text\n…`.
    pub fn context(recalled: &[Recalled]) -> String {
        let mut out = String::new();
        for (i, r) in recalled.iter().enumerate() {
            let _ = writeln!(out, "[{}] {}", i + 1, r.text);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use agentscale_core::{ErrorKind, Metric};

    use super::*;
    use crate::local::{HashEmbedder, LocalMemoryStore};

    fn rag(dims: usize) -> Rag {
        Rag::new(
            Arc::new(LocalMemoryStore::new(dims, Metric::Cosine).unwrap()),
            Arc::new(HashEmbedder::new(dims).unwrap()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn remember_recall_filter_and_idempotence() {
        let rag = rag(256);
        let ns = Namespace::new("t1", "docs").unwrap();
        let added = rag
            .remember_all(
                &ns,
                vec![
                    Document::new("red apples grow on trees").with_meta("kind", "fruit"),
                    Document::new("green apples are sour").with_meta("kind", "fruit"),
                    Document::new("apples of the computer kind run software")
                        .with_id("mac")
                        .with_meta("kind", "tech"),
                ],
            )
            .await
            .unwrap();
        assert!(added.iter().all(|a| a.inserted));
        assert_eq!(added[2].id, "mac");
        // The same text again stores nothing and returns the existing id.
        let fruit = BTreeMap::from([("kind".to_string(), "fruit".to_string())]);
        let again = rag
            .remember(&ns, "red apples grow on trees", fruit)
            .await
            .unwrap();
        assert_eq!((again.inserted, &again.id), (false, &added[0].id));

        let hits = rag
            .recall(&ns, "red apples trees", 3, &Filter::all())
            .await
            .unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(hits[0].text, "red apples grow on trees");
        assert!(hits[0].score >= hits[1].score && hits[1].score >= hits[2].score);
        let tech = rag
            .recall(&ns, "red apples trees", 3, &Filter::all().eq("kind", "tech"))
            .await
            .unwrap();
        assert_eq!(tech.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["mac"]);
        assert_eq!(
            Rag::context(&tech),
            "[1] apples of the computer kind run software\n"
        );

        // Other tenants see nothing.
        let other = Namespace::new("t2", "docs").unwrap();
        assert!(rag
            .recall(&other, "apples", 3, &Filter::all())
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn bad_input_stores_nothing() {
        let rag = rag(64);
        let ns = Namespace::new("t1", "docs").unwrap();
        let err = rag
            .remember_all(&ns, vec![Document::new("fine"), Document::new("   ")])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let big = "word ".repeat(20_000);
        assert_eq!(
            rag.remember(&ns, big, BTreeMap::new()).await.unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let oversize_meta = Document::new("ok").with_meta("k", "v".repeat(20_000));
        assert_eq!(
            rag.remember_all(&ns, vec![oversize_meta])
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        assert!(rag
            .recall(&ns, "fine", 5, &Filter::all())
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            rag.recall(&ns, "", 5, &Filter::all()).await.unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn dimensions_must_agree() {
        let err = Rag::new(
            Arc::new(LocalMemoryStore::new(64, Metric::Cosine).unwrap()),
            Arc::new(HashEmbedder::new(32).unwrap()),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
    }
}
