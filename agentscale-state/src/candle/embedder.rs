//! The model: loading, tokenization and the forward pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentscale_core::{validate_embeddings, validate_texts, Embedder, Error, Result};
use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use futures::{StreamExt, TryStreamExt};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

use super::config::CandleEmbedderConfig;

/// File names in the model directory (the Hugging Face layout).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The model's `config.json`.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer, in the `tokenizers` JSON format.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Largest weights file read (BERT-large in f32 is 1.3 GB).
const MAX_WEIGHTS_BYTES: u64 = 2 << 30;
/// Largest `config.json` / `tokenizer.json` read.
const MAX_TEXT_FILE_BYTES: u64 = 64 << 20;

/// An in-process [`Embedder`]: a BERT sentence-embedding model
/// (all-MiniLM-L6-v2 by default) run on the CPU by candle, with the Hugging
/// Face tokenizer. Semantic vectors without a server.
///
/// It computes what sentence-transformers computes for this model, and what
/// the project's Triton model `minilm` computes (`scripts/triton/minilm.py`):
/// WordPiece tokens with `[CLS]`/`[SEP]`, truncated to `max_tokens`; BERT
/// with exact (erf) GELU; mean pooling over the attention mask; L2
/// normalisation. The tests check cosine ≥ 0.999 against Triton's vectors.
///
/// * Texts are checked first ([`validate_texts`]: none empty, none over
///   64 KiB, no NUL): bad input is [`Error::InvalidInput`] and nothing runs.
/// * Inputs are split into batches of `max_batch` texts, each padded to its
///   longest text; the vectors come back in input order.
/// * Each forward pass runs on tokio's blocking pool, at most
///   `max_concurrent_batches` at once over all callers; one deadline bounds
///   the call ([`Error::Timeout`]). A panic inside the model is
///   [`Error::Backend`], not a crashed task.
/// * Cost: ~22 ms of CPU per short sentence, ~0.4 s per 256-token text
///   (2 shared vCPU; `docs/models.md`).
///
/// ```no_run
/// # async fn run() -> agentscale_core::Result<()> {
/// use agentscale_core::Embedder;
/// use agentscale_state::candle::{CandleEmbedder, CandleEmbedderConfig};
///
/// let config = CandleEmbedderConfig::builder().model_dir("/models/all-MiniLM-L6-v2").build()?;
/// let embedder = CandleEmbedder::load(config).await?;
/// let v = embedder.embed(&["The cat sleeps on the windowsill.".to_string()]).await?;
/// assert_eq!(v[0].len(), 384);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CandleEmbedder {
    model: Arc<Model>,
    slots: Arc<Semaphore>,
    config: CandleEmbedderConfig,
}

/// The loaded weights and tokenizer, shared with the blocking tasks.
struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
    name: String,
}

impl fmt::Debug for CandleEmbedder {
    // The weights and vocabulary are large: show what was loaded, not them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CandleEmbedder")
            .field("model_dir", &self.config.model_dir)
            .field("dimensions", &self.model.dimensions)
            .field("max_tokens", &self.config.max_tokens)
            .field("max_batch", &self.config.max_batch)
            .field("max_concurrent_batches", &self.config.max_concurrent_batches)
            .field("deadline", &self.config.deadline)
            .finish_non_exhaustive()
    }
}

impl CandleEmbedder {
    /// Loads the model from `config.model_dir` on tokio's blocking pool (it
    /// reads the whole weights file: ~90 MB for all-MiniLM-L6-v2).
    ///
    /// A missing, unreadable or corrupt file, a config that is not BERT, a
    /// hidden size other than `config.dimensions` or `max_tokens` over the
    /// model's positions is [`Error::InvalidConfig`] naming the file.
    pub async fn load(config: CandleEmbedderConfig) -> Result<Self> {
        config.validate()?;
        let c = config.clone();
        let model = tokio::task::spawn_blocking(move || Model::load(&c))
            .await
            .map_err(|e| Error::InvalidConfig(format!("loading the candle model panicked: {e}")))??;
        tracing::debug!(dir = %config.model_dir.display(), "candle embedder loaded");
        Ok(CandleEmbedder {
            model: Arc::new(model),
            slots: Arc::new(Semaphore::new(config.max_concurrent_batches)),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CandleEmbedderConfig {
        &self.config
    }

    async fn embed_batch(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed("candle embedder closed".into()))?;
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the pass ends, even if the caller gave up.
            let _permit = permit;
            model.forward(&texts)
        })
        .await
        .map_err(|e| Error::Backend {
            message: format!("candle forward pass failed: {e}"),
            source: None,
        })?
    }
}

#[async_trait]
impl Embedder for CandleEmbedder {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        validate_texts(texts)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let batches: Vec<Vec<String>> = texts
            .chunks(self.config.max_batch)
            .map(<[String]>::to_vec)
            .collect();
        let work = futures::stream::iter(batches)
            .map(|b| self.embed_batch(b))
            .buffered(self.config.max_concurrent_batches)
            .try_concat();
        let vectors = tokio::time::timeout(self.config.deadline, work)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "candle embedder: {} texts not embedded within {:?}",
                    texts.len(),
                    self.config.deadline
                ))
            })??;
        validate_embeddings(&self.model.name, texts.len(), self.config.dimensions, &vectors)?;
        Ok(vectors)
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let bad = |what: String| Error::InvalidConfig(format!("candle model file {}: {what}", path.display()));
    let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
    if len > max {
        return Err(bad(format!("{len} bytes; at most {max}")));
    }
    std::fs::read(path).map_err(|e| bad(e.to_string()))
}

impl Model {
    fn load(config: &CandleEmbedderConfig) -> Result<Self> {
        let dir = &config.model_dir;
        let path = |name: &str| -> PathBuf { dir.join(name) };
        let bad = |p: &Path, what: String| {
            Error::InvalidConfig(format!("candle model file {}: {what}", p.display()))
        };

        let config_path = path(CONFIG_FILE);
        let bert_config: BertConfig =
            serde_json::from_slice(&read_bounded(&config_path, MAX_TEXT_FILE_BYTES)?)
                .map_err(|e| bad(&config_path, format!("not a BERT config: {e}")))?;
        if bert_config.hidden_size != config.dimensions {
            return Err(bad(
                &config_path,
                format!(
                    "the model has hidden size {}; the embedder is configured for {} dimensions",
                    bert_config.hidden_size, config.dimensions
                ),
            ));
        }
        if config.max_tokens > bert_config.max_position_embeddings {
            return Err(bad(
                &config_path,
                format!(
                    "max_tokens {} is over the model's {} positions",
                    config.max_tokens, bert_config.max_position_embeddings
                ),
            ));
        }
        if bert_config.num_attention_heads == 0
            || bert_config.hidden_size % bert_config.num_attention_heads != 0
        {
            return Err(bad(
                &config_path,
                "hidden size not divisible by the attention heads".into(),
            ));
        }

        let tokenizer_path = path(TOKENIZER_FILE);
        let mut tokenizer = Tokenizer::from_bytes(read_bounded(&tokenizer_path, MAX_TEXT_FILE_BYTES)?)
            .map_err(|e| bad(&tokenizer_path, format!("not a tokenizer: {e}")))?;
        // What scripts/triton/minilm.py (and sentence-transformers) set,
        // whatever the file says: truncate on the right to max_tokens, pad
        // with [PAD] (id 0) to the longest text of the batch.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| bad(&tokenizer_path, e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: 0,
            pad_type_id: 0,
            pad_token: "[PAD]".into(),
            ..Default::default()
        }));

        let weights_path = path(WEIGHTS_FILE);
        let weights = read_bounded(&weights_path, MAX_WEIGHTS_BYTES)?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| bad(&weights_path, format!("not safetensors: {e}")))?;
        let bert = BertModel::load(vb, &bert_config)
            .map_err(|e| bad(&weights_path, format!("weights do not fit the config: {e}")))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "candle".into());
        Ok(Model {
            bert,
            tokenizer,
            dimensions: config.dimensions,
            name,
        })
    }

    /// One batch: tokens, BERT, mean pooling over the mask, L2 norm.
    fn forward(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let backend = |what: &str, e: &dyn fmt::Display| Error::Backend {
            message: format!("candle embedder {}: {what}: {e}", self.name),
            source: None,
        };
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| backend("tokenizing", &e))?;
        let n = encodings.len();
        let t = encodings.first().map_or(0, |e| e.len());
        let (mut ids, mut types, mut mask) = (
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
        );
        for e in &encodings {
            if e.len() != t {
                return Err(backend("tokenizing", &"the batch was not padded to one length"));
            }
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend(e.get_attention_mask().iter().map(|&m| m as f32));
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let dev = Device::Cpu;
            let ids = Tensor::from_vec(ids, (n, t), &dev)?;
            let types = Tensor::from_vec(types, (n, t), &dev)?;
            let mask = Tensor::from_vec(mask, (n, t), &dev)?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?; // [n, t, d]
            let m = mask.unsqueeze(2)?; // [n, t, 1]
            let summed = hidden.broadcast_mul(&m)?.sum(1)?; // [n, d]
            let counts = m.sum(1)?.maximum(1e-9)?; // [n, 1]
            let pooled = summed.broadcast_div(&counts)?;
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
            pooled.broadcast_div(&norm)?.to_vec2::<f32>()
        };
        run().map_err(|e| backend("forward pass", &e))
    }
}
