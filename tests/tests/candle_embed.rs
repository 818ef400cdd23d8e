//! The in-process embedder (`agentscale_state::candle`, feature `candle`) on
//! the real all-MiniLM-L6-v2 weights (`AGENTSCALE_MINILM_DIR`, exported by
//! `scripts/dev-services up` from the Triton venv): the same vectors as the
//! Triton model `minilm`, the semantic check on the shipped paraphrase set in
//! the in-process store, batching, and typed errors for bad input and bad
//! model files. Under CI=true a missing weights directory fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Embedder, ErrorKind, Metric, MAX_MEMORY_TEXT_BYTES};
use agentscale_infer::{TritonClient, TritonEmbedder, TritonEmbedderConfig};
use agentscale_state::candle::{
    CandleEmbedder, CandleEmbedderConfig, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE,
};
use agentscale_state::local::LocalMemoryStore;
use agentscale_tests::semantic::recall_sources;
use agentscale_tests::service_env;

fn minilm_dir() -> Option<PathBuf> {
    service_env("AGENTSCALE_MINILM_DIR").map(PathBuf::from)
}

async fn load(dir: &Path) -> CandleEmbedder {
    CandleEmbedder::load(CandleEmbedderConfig::builder().model_dir(dir).build().unwrap())
        .await
        .unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// A dozen varied sentences: short, long, punctuation, numbers, accents,
/// CJK, Cyrillic, emoji, and one far over 256 tokens (truncated).
fn sentences() -> Vec<String> {
    let long = (0..120)
        .map(|i| format!("clause {i} of a very long document about distributed task queues"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        "A man is eating food.".into(),
        "Hi".into(),
        "The quick brown fox jumps over the lazy dog near the riverbank at dawn.".into(),
        "Ünïcödé text, numbers like 3.14159, and punctuation!?".into(),
        "Der Kühlschrank ist leer; wir müssen heute Abend einkaufen gehen.".into(),
        "東京は日本の首都です。".into(),
        "Москва — столица России.".into(),
        "I love pizza 🍕 and ☕ in the morning!!!".into(),
        "SELECT * FROM users WHERE id = 42; -- a SQL query".into(),
        "   leading and trailing spaces   ".into(),
        "The server crashed because it ran out of memory at 03:14 UTC.".into(),
        long,
    ]
}

/// (a) The same vectors as the Triton model (NumPy forward pass, batched and
/// padded there too): cosine ≥ 0.999 for every sentence.
#[tokio::test]
async fn candle_matches_the_triton_minilm_model() {
    let Some(dir) = minilm_dir() else { return };
    let Some(url) = service_env("AGENTSCALE_TRITON_URL") else {
        return;
    };
    let client = TritonClient::builder(&url)
        .default_deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    let triton = TritonEmbedder::new(client, TritonEmbedderConfig::default()).unwrap();
    let texts = sentences();
    let want = triton.embed(&texts).await.unwrap();
    let ours = load(&dir).await;
    let got = ours.embed(&texts).await.unwrap();
    assert_eq!(got.len(), texts.len());
    let mut worst = 1.0f32;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), 384);
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "vector {i} has norm {norm}");
        let cos = cosine(g, w);
        worst = worst.min(cos);
        assert!(cos >= 0.999, "sentence {i} ({:.40}…): cosine {cos}", texts[i]);
    }
    eprintln!(
        "candle vs triton minilm: worst cosine over {} sentences = {worst:.6}",
        texts.len()
    );
    // The check can tell models apart: different sentences are far apart.
    assert!(cosine(&got[0], &got[5]) < 0.9);
}

/// (b) The semantic check: with the in-process store, the paraphrase's
/// source is recalled first for at least 9 of 10.
#[tokio::test]
async fn candle_semantic_check_in_the_local_store() {
    let Some(dir) = minilm_dir() else { return };
    let store = Arc::new(LocalMemoryStore::new(384, Metric::Cosine).unwrap());
    let (hits, misses) = recall_sources(store, Arc::new(load(&dir).await)).await;
    eprintln!("minilm in process (candle), local store: {hits}/10 sources recalled first; misses {misses:?}");
    assert!(hits >= 9, "{hits}/10; misses {misses:?}");
}

/// Batches keep order, padding does not change a vector, an empty input is
/// an empty answer, and `Debug` does not print the model.
#[tokio::test]
async fn candle_batches_keep_order() {
    let Some(dir) = minilm_dir() else { return };
    let texts = sentences();
    let whole = load(&dir).await.embed(&texts).await.unwrap();
    let small = CandleEmbedder::load(
        CandleEmbedderConfig::builder()
            .model_dir(&dir)
            .max_batch(5)
            .max_concurrent_batches(2)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let split = small.embed(&texts).await.unwrap();
    assert_eq!(split.len(), texts.len());
    for (i, text) in texts.iter().enumerate() {
        assert!(cosine(&whole[i], &split[i]) > 0.9999, "{i}");
        // Alone, unpadded: the same vector as inside a padded batch.
        let alone = small.embed(std::slice::from_ref(text)).await.unwrap();
        assert!(cosine(&alone[0], &whole[i]) > 0.9999, "{i}");
    }
    assert!(small.embed(&[]).await.unwrap().is_empty());
    let debug = format!("{small:?}");
    assert!(debug.contains("max_batch: 5") && debug.len() < 400, "{debug}");
}

/// (c) Bad input is `InvalidInput` and runs nothing; bad model files and a
/// wrong dimension are `InvalidConfig` at load, naming the file.
#[tokio::test]
async fn candle_bad_input_and_bad_files_are_typed_errors() {
    let Some(dir) = minilm_dir() else { return };
    let e = load(&dir).await;
    for bad in [
        vec!["".to_string()],
        vec!["fine".to_string(), "   ".to_string()],
        vec!["nul \0 inside".to_string()],
        vec!["x".repeat(MAX_MEMORY_TEXT_BYTES + 1)],
    ] {
        assert_eq!(e.embed(&bad).await.unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    let load_err =
        |config: CandleEmbedderConfig| async move { CandleEmbedder::load(config).await.unwrap_err() };
    let config = |d: &Path| CandleEmbedderConfig::builder().model_dir(d);

    // A model of another dimension than configured.
    let err = load_err(config(&dir).dimensions(768).build().unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(err.to_string().contains("hidden size 384"), "{err}");
    // More tokens than the model has positions (512).
    let err = load_err(config(&dir).max_tokens(513).build().unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");

    // Missing and corrupt files, each in a copy of the model directory.
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE] {
            std::fs::copy(dir.join(f), d.join(f)).unwrap();
        }
        d
    };
    let missing_dir = tmp.path().join("nowhere");
    let err = load_err(config(&missing_dir).build().unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");

    let weights = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "garbage-weights",
            WEIGHTS_FILE,
            b"not a safetensors file".to_vec(),
        ),
        (
            "truncated-weights",
            WEIGHTS_FILE,
            weights[..weights.len() / 2].to_vec(),
        ),
        ("empty-weights", WEIGHTS_FILE, Vec::new()),
        ("bad-config", CONFIG_FILE, b"{\"hidden_size\": ".to_vec()),
        ("bad-tokenizer", TOKENIZER_FILE, b"[1, 2, 3]".to_vec()),
    ];
    for (case, file, bytes) in cases {
        let d = fresh(case);
        std::fs::write(d.join(file), bytes).unwrap();
        let err = load_err(config(&d).build().unwrap()).await;
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{case}: {err}");
        assert!(err.to_string().contains(file), "{case}: {err}");
    }
    for file in [WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE] {
        let d = fresh(&format!("no-{file}"));
        std::fs::remove_file(d.join(file)).unwrap();
        let err = load_err(config(&d).build().unwrap()).await;
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{file}: {err}");
        assert!(err.to_string().contains(file), "{file}: {err}");
    }
    // Weights of another shape than config.json says.
    let d = fresh("wrong-shape");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join(CONFIG_FILE)).unwrap()).unwrap();
    cfg["intermediate_size"] = 1024.into();
    std::fs::write(d.join(CONFIG_FILE), cfg.to_string()).unwrap();
    let err = load_err(config(&d).build().unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
}
