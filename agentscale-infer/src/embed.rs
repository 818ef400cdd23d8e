//! Sentence embeddings from a model served by Triton.

use std::fmt::Debug;
use std::time::Duration;

use agentscale_core::{validate_embeddings, validate_texts, Embedder, Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::llm::Inference;
use crate::request::{InferRequest, InferResponse};
use crate::tensor::Tensor;

/// Largest `max_batch` accepted.
pub const MAX_EMBED_BATCH: usize = 4096;

/// Configuration of a [`TritonEmbedder`].
///
/// The defaults match the `minilm` model of the project's test server
/// (all-MiniLM-L6-v2): input `TEXT` (BYTES, one string per row, shape
/// `[n, 1]`), output `EMBEDDING` (FP32 `[n, 384]`), batches of at most 64.
/// Serde-loadable (durations as milliseconds or strings such as `"5s"`).
///
/// ```
/// use agentscale_infer::TritonEmbedderConfig;
///
/// let config = TritonEmbedderConfig::builder().model("minilm").dimensions(384).build()?;
/// assert_eq!(config.max_batch, 64);
/// # Ok::<(), agentscale_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TritonEmbedderConfig {
    /// Model name (default `minilm`).
    pub model: String,
    /// Model version (default empty: the server's choice).
    pub version: String,
    /// Name of the BYTES input holding the texts (default `TEXT`).
    pub input: String,
    /// Name of the FP32 output holding the vectors (default `EMBEDDING`).
    pub output: String,
    /// The model's vector dimension (default 384). A model answering with
    /// another is [`Error::InvalidConfig`], never a silent mismatch.
    pub dimensions: usize,
    /// Most texts per request (default 64; at most [`MAX_EMBED_BATCH`]):
    /// longer inputs are split into several requests, sent one after another.
    /// Keep it at or below the model's `max_batch_size`.
    pub max_batch: usize,
    /// Whether the input has a batch dimension, `[n, 1]` (default true, for a
    /// model with batching on); false sends `[n]`.
    pub batch_dim: bool,
    /// Deadline of one `embed` call, all batches and retries included
    /// (default 30 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub deadline: Duration,
    /// Attempts per batch for transient failures (default 3; 1 = no retry).
    /// Only retryable errors are retried ([`Error::is_retryable`]: timeouts,
    /// unavailability, `UNAVAILABLE`/`RESOURCE_EXHAUSTED`); a model error or
    /// bad input is returned at once.
    pub max_attempts: u32,
    /// First backoff between attempts, doubled each time (default 50 ms).
    #[serde(with = "agentscale_core::config::duration")]
    pub retry_backoff: Duration,
}

impl Default for TritonEmbedderConfig {
    fn default() -> Self {
        TritonEmbedderConfig {
            model: "minilm".into(),
            version: String::new(),
            input: "TEXT".into(),
            output: "EMBEDDING".into(),
            dimensions: 384,
            max_batch: 64,
            batch_dim: true,
            deadline: Duration::from_secs(30),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
        }
    }
}

impl TritonEmbedderConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> TritonEmbedderConfigBuilder {
        TritonEmbedderConfigBuilder::default()
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.model.is_empty() || self.input.is_empty() || self.output.is_empty() {
            return bad("embedder model, input and output names must not be empty".into());
        }
        if self.dimensions == 0 {
            return bad("embedder dimensions must be greater than zero".into());
        }
        if self.max_batch == 0 || self.max_batch > MAX_EMBED_BATCH {
            return bad(format!("embedder max_batch must be 1..={MAX_EMBED_BATCH}"));
        }
        if self.deadline.is_zero() {
            return bad("embedder deadline must be positive".into());
        }
        if self.max_attempts == 0 {
            return bad("embedder max_attempts must be at least 1".into());
        }
        Ok(())
    }
}

/// Builder of a [`TritonEmbedderConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone, Default)]
pub struct TritonEmbedderConfigBuilder {
    config: TritonEmbedderConfig,
}

impl TritonEmbedderConfigBuilder {
    /// Sets the model name.
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.config.model = model.into();
        self
    }
    /// Sets the model version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.config.version = version.into();
        self
    }
    /// Sets the input tensor name.
    pub fn input(mut self, name: impl Into<String>) -> Self {
        self.config.input = name.into();
        self
    }
    /// Sets the output tensor name.
    pub fn output(mut self, name: impl Into<String>) -> Self {
        self.config.output = name.into();
        self
    }
    /// Sets the expected dimension.
    pub fn dimensions(mut self, d: usize) -> Self {
        self.config.dimensions = d;
        self
    }
    /// Sets the most texts per request.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n;
        self
    }
    /// Sets whether the input has a batch dimension.
    pub fn batch_dim(mut self, on: bool) -> Self {
        self.config.batch_dim = on;
        self
    }
    /// Sets the deadline of one `embed` call.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.config.deadline = d;
        self
    }
    /// Sets the attempts per batch.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }
    /// Sets the first retry backoff.
    pub fn retry_backoff(mut self, d: Duration) -> Self {
        self.config.retry_backoff = d;
        self
    }
    /// Validates and returns the config.
    pub fn build(self) -> Result<TritonEmbedderConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// An [`Embedder`] over a sentence-embedding model on Triton, through a
/// [`TritonClient`](crate::TritonClient) or a [`TritonPool`](crate::TritonPool).
///
/// * Texts are checked first ([`validate_texts`]: none empty, none over
///   64 KiB): bad input is [`Error::InvalidInput`] and nothing is sent.
/// * Inputs are split into batches of `max_batch` texts; the vectors come
///   back in input order.
/// * Every vector is checked ([`validate_embeddings`]): a model of another
///   dimension is [`Error::InvalidConfig`]; a short answer or a NaN is
///   [`Error::Backend`].
/// * One deadline bounds the whole call ([`Error::Timeout`]); transient
///   failures are retried with exponential backoff, others returned at once.
///
/// ```no_run
/// # async fn run() -> agentscale_core::Result<()> {
/// use agentscale_core::Embedder;
/// use agentscale_infer::{TritonClient, TritonEmbedder, TritonEmbedderConfig};
///
/// let client = TritonClient::new("http://127.0.0.1:8001")?;
/// let embedder = TritonEmbedder::new(client, TritonEmbedderConfig::default())?;
/// let v = embedder.embed(&["hello".to_string()]).await?;
/// assert_eq!(v[0].len(), 384);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TritonEmbedder<I> {
    inner: I,
    config: TritonEmbedderConfig,
}

impl<I: Inference + Debug + 'static> TritonEmbedder<I> {
    /// An embedder over `inner` (validates `config`).
    pub fn new(inner: I, config: TritonEmbedderConfig) -> Result<Self> {
        config.validate()?;
        Ok(TritonEmbedder { inner, config })
    }

    /// The configuration.
    pub fn config(&self) -> &TritonEmbedderConfig {
        &self.config
    }

    fn request(&self, texts: &[String], deadline: Duration) -> InferRequest {
        let n = texts.len() as i64;
        let shape = if self.config.batch_dim {
            vec![n, 1]
        } else {
            vec![n]
        };
        let mut req = InferRequest::new(self.config.model.clone())
            .input(Tensor::from_bytes(
                self.config.input.clone(),
                shape,
                texts.iter().map(|t| t.as_bytes()),
            ))
            .output(self.config.output.clone())
            .deadline(deadline);
        if !self.config.version.is_empty() {
            req = req.version(self.config.version.clone());
        }
        req
    }

    async fn embed_batch(&self, texts: &[String], until: Instant) -> Result<Vec<Vec<f32>>> {
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 1;
        // Only the call is retried; a malformed answer is not transient.
        let resp = loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout());
            }
            let req = self.request(texts, left);
            let result = tokio::time::timeout(left, self.inner.infer(&req))
                .await
                .unwrap_or_else(|_| Err(self.timeout()));
            match result {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && attempt < self.config.max_attempts => {
                    tracing::debug!(model = %self.config.model, attempt, error = %e, "embedding retry");
                    attempt += 1;
                    if Instant::now() + backoff >= until {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                Err(e) => return Err(e),
            }
        };
        self.decode(texts.len(), &resp)
    }

    fn decode(&self, texts: usize, resp: &InferResponse) -> Result<Vec<Vec<f32>>> {
        let out = resp.output(&self.config.output)?;
        let model = &self.config.model;
        let shape = out.shape();
        let dims = match shape {
            [rows, d] if *rows == texts as i64 && *d >= 0 => *d as usize,
            [d] if texts == 1 && *d >= 0 => *d as usize,
            _ => {
                return Err(Error::Backend {
                    message: format!(
                        "model {model} output {:?} has shape {shape:?} for {texts} texts",
                        self.config.output
                    ),
                    source: None,
                })
            }
        };
        let flat: Vec<f32> = out.to_vec()?;
        let vectors: Vec<Vec<f32>> = if dims == 0 {
            vec![Vec::new(); texts]
        } else {
            flat.chunks(dims).map(<[f32]>::to_vec).collect()
        };
        validate_embeddings(model, texts, self.config.dimensions, &vectors)?;
        Ok(vectors)
    }

    fn timeout(&self) -> Error {
        Error::Timeout(format!(
            "embedding with model {} took longer than {:?}",
            self.config.model, self.config.deadline
        ))
    }
}

#[async_trait]
impl<I: Inference + Debug + 'static> Embedder for TritonEmbedder<I> {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        validate_texts(texts)?;
        let until = Instant::now() + self.config.deadline;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.config.max_batch) {
            vectors.extend(self.embed_batch(batch, until).await?);
        }
        Ok(vectors)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use agentscale_core::{ErrorKind, RpcCode};
    use parking_lot::Mutex;

    use super::*;
    use crate::stream::ResponseStream;

    /// A scripted model: answers each text with `[len, 1, 1, …]` (`dims`
    /// long), after failing with the queued errors first.
    #[derive(Debug, Clone, Default)]
    struct Fake {
        dims: usize,
        calls: Arc<AtomicUsize>,
        batches: Arc<Mutex<Vec<usize>>>,
        errors: Arc<Mutex<Vec<Error>>>,
        nan: bool,
        hang: bool,
    }

    #[async_trait]
    impl Inference for Fake {
        async fn infer(&self, req: &InferRequest) -> Result<InferResponse> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            if let Some(e) = self.errors.lock().pop() {
                return Err(e);
            }
            let texts = req.inputs[0].to_strings()?;
            self.batches.lock().push(texts.len());
            let mut flat = Vec::new();
            for t in &texts {
                flat.push(if self.nan { f32::NAN } else { t.len() as f32 });
                flat.extend(std::iter::repeat_n(1.0f32, self.dims - 1));
            }
            Ok(InferResponse {
                model_name: "minilm".into(),
                model_version: "1".into(),
                id: String::new(),
                parameters: HashMap::new(),
                outputs: vec![Tensor::new(
                    "EMBEDDING",
                    vec![texts.len() as i64, self.dims as i64],
                    &flat,
                )],
            })
        }
        async fn infer_stream(&self, _req: InferRequest) -> Result<ResponseStream> {
            Err(Error::Unsupported("no streams".into()))
        }
    }

    fn texts(n: usize) -> Vec<String> {
        (1..=n).map(|i| "x".repeat(i)).collect()
    }

    fn embedder(fake: &Fake, dims: usize) -> TritonEmbedder<Fake> {
        let config = TritonEmbedderConfig::builder()
            .dimensions(dims)
            .max_batch(2)
            .retry_backoff(Duration::from_millis(10))
            .deadline(Duration::from_secs(5))
            .build()
            .unwrap();
        TritonEmbedder::new(fake.clone(), config).unwrap()
    }

    #[tokio::test]
    async fn batches_in_order() {
        let fake = Fake {
            dims: 4,
            ..Default::default()
        };
        let v = embedder(&fake, 4).embed(&texts(5)).await.unwrap();
        assert_eq!(
            v.iter().map(|v| v[0]).collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(*fake.batches.lock(), [2, 2, 1]);
        assert!(embedder(&fake, 4).embed(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn wrong_dimension_is_a_config_error() {
        let fake = Fake {
            dims: 8,
            ..Default::default()
        };
        let err = embedder(&fake, 4).embed(&texts(1)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_texts_send_nothing() {
        let fake = Fake {
            dims: 4,
            ..Default::default()
        };
        let e = embedder(&fake, 4);
        for bad in [vec!["ok".to_string(), " ".to_string()], vec!["a\0b".to_string()]] {
            assert_eq!(e.embed(&bad).await.unwrap_err().kind(), ErrorKind::InvalidInput);
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_only() {
        let fake = Fake {
            dims: 4,
            ..Default::default()
        };
        fake.errors.lock().extend([
            Error::Rpc {
                code: RpcCode::Unavailable,
                message: "busy".into(),
            },
            Error::Timeout("slow".into()),
        ]);
        assert_eq!(embedder(&fake, 4).embed(&texts(1)).await.unwrap().len(), 1);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);

        let fake = Fake {
            dims: 4,
            ..Default::default()
        };
        fake.errors.lock().push(Error::Rpc {
            code: RpcCode::InvalidArgument,
            message: "no".into(),
        });
        assert_eq!(
            embedder(&fake, 4).embed(&texts(1)).await.unwrap_err().kind(),
            ErrorKind::Rpc
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

        // A NaN in the answer is the model's fault, not transient.
        let fake = Fake {
            dims: 4,
            nan: true,
            ..Default::default()
        };
        assert_eq!(
            embedder(&fake, 4).embed(&texts(1)).await.unwrap_err().kind(),
            ErrorKind::Backend
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);

        // Three transient failures exhaust three attempts.
        let fake = Fake {
            dims: 4,
            ..Default::default()
        };
        fake.errors.lock().extend((0..3).map(|_| Error::Rpc {
            code: RpcCode::Unavailable,
            message: "busy".into(),
        }));
        assert_eq!(
            embedder(&fake, 4).embed(&texts(1)).await.unwrap_err().kind(),
            ErrorKind::Rpc
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn one_deadline_bounds_the_call() {
        let fake = Fake {
            dims: 4,
            hang: true,
            ..Default::default()
        };
        let err = embedder(&fake, 4).embed(&texts(3)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }

    #[test]
    fn config_validates() {
        assert!(TritonEmbedderConfig::builder().dimensions(0).build().is_err());
        assert!(TritonEmbedderConfig::builder().max_batch(0).build().is_err());
        assert!(TritonEmbedderConfig::builder().max_attempts(0).build().is_err());
        let c: TritonEmbedderConfig =
            serde_json::from_str(r#"{"model":"e5","dimensions":768,"deadline":"2s"}"#).unwrap();
        assert_eq!((c.dimensions, c.deadline), (768, Duration::from_secs(2)));
    }
}
