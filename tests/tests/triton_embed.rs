//! Sentence embeddings from the real all-MiniLM-L6-v2 model served by Triton
//! (`minilm` in scripts/triton/serve.py, started by `scripts/dev-services up`):
//! the semantic check on the shipped paraphrase set in the in-process store
//! and in pgvector, vectors against the NumPy reference, batching, dimension
//! checks, and Triton's LLM helper behind the common `ChatModel` interface.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{ChatModel, ChatRequest, Embedder, ErrorKind, Metric};
use agentscale_infer::{LlmClient, TritonClient, TritonEmbedder, TritonEmbedderConfig};
use agentscale_state::local::{HashEmbedder, LocalMemoryStore};
use agentscale_state::pgvector::{PgVectorConfig, PgVectorMemoryStore};
use agentscale_tests::semantic::recall_sources;
use agentscale_tests::{service_env, unique_name};
use futures::StreamExt;

fn client() -> Option<TritonClient> {
    let url = service_env("AGENTSCALE_TRITON_URL")?;
    Some(
        TritonClient::builder(&url)
            .default_deadline(Duration::from_secs(60))
            .build()
            .unwrap(),
    )
}

fn embedder(client: TritonClient) -> Arc<TritonEmbedder<TritonClient>> {
    Arc::new(TritonEmbedder::new(client, TritonEmbedderConfig::default()).unwrap())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[tokio::test]
async fn embed_semantic_check_in_the_local_store() {
    let Some(c) = client() else { return };
    let store = Arc::new(LocalMemoryStore::new(384, Metric::Cosine).unwrap());
    let (hits, misses) = recall_sources(store, embedder(c)).await;
    eprintln!("minilm on triton, local store: {hits}/10 sources recalled first; misses {misses:?}");
    assert!(hits >= 9, "{hits}/10; misses {misses:?}");

    // The set needs meaning, not shared words: the hash embedder fails it.
    let store = Arc::new(LocalMemoryStore::new(384, Metric::Cosine).unwrap());
    let (hash_hits, _) = recall_sources(store, Arc::new(HashEmbedder::new(384).unwrap())).await;
    eprintln!("hash embedder, local store: {hash_hits}/10");
    assert!(
        hash_hits < 9,
        "the paraphrase set is too easy: the hash embedder got {hash_hits}/10"
    );
}

#[tokio::test]
async fn embed_semantic_check_in_pgvector() {
    let Some(c) = client() else { return };
    let Some(url) = service_env("AGENTSCALE_PGVECTOR_URL") else {
        return;
    };
    let table = unique_name("sem").replace('-', "_");
    let config = PgVectorConfig::builder()
        .url(url.as_str())
        .table(table.as_str())
        .dimensions(384)
        .build()
        .unwrap();
    let store = Arc::new(PgVectorMemoryStore::connect(config).await.unwrap());
    let (hits, misses) = recall_sources(store, embedder(c)).await;
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; DROP TABLE IF EXISTS \"{table}_schema_version\""
    ))
    .await
    .unwrap();
    eprintln!("minilm on triton, pgvector: {hits}/10; misses {misses:?}");
    assert!(hits >= 9, "{hits}/10; misses {misses:?}");
}

/// Triton's batched, padded vectors equal the NumPy forward pass run on one
/// sentence at a time (no padding) by the venv's python.
#[tokio::test]
async fn embed_matches_the_numpy_reference() {
    let Some(c) = client() else { return };
    let Some(python) = service_env("AGENTSCALE_TRITON_PYTHON") else {
        return;
    };
    let sentences = [
        "A man is eating food.".to_string(),
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn.".to_string(),
        "Ünïcödé text, numbers like 3.14159, and punctuation!?".to_string(),
    ];
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/triton/minilm.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .args(&sentences)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference: Vec<Vec<f32>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reference.len(), 3);
    let got = embedder(c).embed(&sentences).await.unwrap();
    for (i, (g, r)) in got.iter().zip(&reference).enumerate() {
        assert_eq!(g.len(), 384);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "vector {i} has norm {norm}");
        let cos = cosine(g, r);
        eprintln!("sentence {i}: cosine(triton, numpy reference) = {cos:.6}");
        assert!(cos >= 0.999, "sentence {i}: cosine {cos}");
    }
}

#[tokio::test]
async fn embed_batches_keep_order_and_dimensions_are_checked() {
    let Some(c) = client() else { return };
    let texts: Vec<String> = (0..10)
        .map(|i| format!("sentence number {i} about topic {}", i * 7))
        .collect();
    let whole = embedder(c.clone()).embed(&texts).await.unwrap();
    let small = TritonEmbedder::new(
        c.clone(),
        TritonEmbedderConfig::builder().max_batch(3).build().unwrap(),
    )
    .unwrap();
    let split = small.embed(&texts).await.unwrap();
    assert_eq!(split.len(), 10);
    for (a, b) in whole.iter().zip(&split) {
        assert!(cosine(a, b) > 0.9999);
    }
    // Rows are different sentences, not one vector repeated.
    assert!(cosine(&whole[0], &whole[9]) < 0.9999);

    let wrong = TritonEmbedder::new(
        c.clone(),
        TritonEmbedderConfig::builder().dimensions(768).build().unwrap(),
    )
    .unwrap();
    assert_eq!(
        wrong.embed(&texts[..1]).await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    let e = embedder(c.clone());
    assert_eq!(
        e.embed(&["".to_string()]).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let missing = TritonEmbedder::new(
        c,
        TritonEmbedderConfig::builder()
            .model("no_such_model")
            .build()
            .unwrap(),
    )
    .unwrap();
    let err = missing.embed(&texts[..1]).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
}

/// Triton's LLM helper behind the common interface an agent holds.
#[tokio::test]
async fn embed_suite_llm_helper_is_a_chat_model() {
    let Some(c) = client() else { return };
    let llm: Arc<dyn ChatModel> = Arc::new(LlmClient::new(c, "llm_stream"));
    let r = llm
        .chat(&ChatRequest::user("hello world").max_tokens(4))
        .await
        .unwrap();
    assert_eq!(r.text, "hello world hello world ");
    let chunks: Vec<_> = llm
        .chat_stream(&ChatRequest::user("a b c").max_tokens(5))
        .await
        .unwrap()
        .map(|c| c.unwrap().text)
        .collect()
        .await;
    assert_eq!(chunks.iter().filter(|t| !t.is_empty()).count(), 5, "{chunks:?}");
    assert_eq!(chunks.concat(), "a b c a b ");
    let e = llm.chat(&ChatRequest::user("please FAIL")).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Rpc | ErrorKind::Backend), "{e:?}");
}
