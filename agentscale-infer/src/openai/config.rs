//! Configuration of the OpenAI-compatible client.

use std::time::Duration;

use agentscale_core::config::{redact_url, Secret};
use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Largest `max_batch` accepted (texts per `/v1/embeddings` request).
pub const MAX_OPENAI_BATCH: usize = 2048;

/// Configuration of an [`OpenAiClient`](super::OpenAiClient).
///
/// Serde-loadable (durations as milliseconds or strings such as `"5s"`), so
/// it loads from the environment with the `_FILE` convention for the key:
/// `AGENTSCALE_OPENAI_API_KEY_FILE=/var/run/secrets/nim-key` (see
/// [`OpenAiConfig::from_env`]). `Debug` shows neither the key nor a password
/// in the URL.
///
/// ```
/// use agentscale_infer::openai::OpenAiConfig;
///
/// let config = OpenAiConfig::builder()
///     .base_url("https://nim.internal/v1")
///     .api_key("nvapi-secret")
///     .chat_model("meta/llama-3.1-8b-instruct")
///     .build()?;
/// assert!(!format!("{config:?}").contains("nvapi-secret"));
/// # Ok::<(), agentscale_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OpenAiConfig {
    /// The API root, up to and including `/v1` (default
    /// `http://127.0.0.1:8000/v1`, vLLM's default); `http` or `https`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>`; empty sends no header (local
    /// vLLM / TEI).
    pub api_key: Secret,
    /// Model of chat completions (default empty: chat is refused).
    pub chat_model: String,
    /// Model of embeddings (default empty: embedding is refused).
    pub embedding_model: String,
    /// Dimension of the embedding model's vectors (default 384); an answer
    /// of another dimension is [`Error::InvalidConfig`].
    pub dimensions: usize,
    /// Most texts per embeddings request (default 64, at most
    /// [`MAX_OPENAI_BATCH`]); longer inputs are split.
    pub max_batch: usize,
    /// `max_tokens` of a chat request that sets none (default none: the
    /// server's default).
    pub max_tokens: Option<u32>,
    /// Deadline of establishing a connection (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one call, retries included (default 60 s). For a stream
    /// it bounds the wait for the response head.
    #[serde(with = "agentscale_core::config::duration")]
    pub request_timeout: Duration,
    /// Longest wait for the next event of a stream (default 30 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub stream_idle_timeout: Duration,
    /// Deadline of a whole stream (default 10 min).
    #[serde(with = "agentscale_core::config::duration")]
    pub stream_timeout: Duration,
    /// Attempts per request (default 3; 1 = no retry). Retried are HTTP 429
    /// and 5xx answers and connections that could not be made; nothing else.
    pub max_attempts: u32,
    /// First backoff between attempts, doubled each time, capped at 10 s
    /// (default 200 ms). A `Retry-After` in seconds is honoured up to the cap.
    #[serde(with = "agentscale_core::config::duration")]
    pub retry_backoff: Duration,
    /// Largest response body (or total streamed bytes) read (default 16 MiB).
    pub max_response_bytes: usize,
    /// PEM certificate(s) of a private CA to trust for `https` besides the
    /// system's roots (default empty: the system's roots only). The server's
    /// certificate and host name are always verified.
    pub ca_pem: String,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            api_key: Secret::default(),
            chat_model: String::new(),
            embedding_model: String::new(),
            dimensions: 384,
            max_batch: 64,
            max_tokens: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(600),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(200),
            max_response_bytes: 16 * 1024 * 1024,
            ca_pem: String::new(),
        }
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &redact_url(&self.base_url))
            .field("api_key", &self.api_key)
            .field("chat_model", &self.chat_model)
            .field("embedding_model", &self.embedding_model)
            .field("dimensions", &self.dimensions)
            .field("max_batch", &self.max_batch)
            .field("max_tokens", &self.max_tokens)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("stream_timeout", &self.stream_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("custom_ca", &!self.ca_pem.is_empty())
            .finish()
    }
}

impl OpenAiConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> OpenAiConfigBuilder {
        OpenAiConfigBuilder::default()
    }

    /// Loads and validates the config from environment variables with
    /// `prefix` (`AGENTSCALE_OPENAI` reads `AGENTSCALE_OPENAI_BASE_URL`,
    /// `AGENTSCALE_OPENAI_API_KEY` or `AGENTSCALE_OPENAI_API_KEY_FILE`, …;
    /// see [`agentscale_core::config::ConfigLoader`]).
    pub fn from_env(prefix: &str) -> Result<Self> {
        let c: OpenAiConfig = agentscale_core::config::ConfigLoader::new()
            .env_prefix(prefix)
            .load()?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return bad(format!("openai base_url {} must be http(s)://…", redact_url(url)));
        }
        if reqwest::Url::parse(url).is_err() {
            return bad(format!("openai base_url {} is not a URL", redact_url(url)));
        }
        if self.api_key.expose().chars().any(|c| c.is_control()) {
            return bad("openai api_key contains a control character".into());
        }
        if self.dimensions == 0 {
            return bad("openai dimensions must be greater than zero".into());
        }
        if self.max_batch == 0 || self.max_batch > MAX_OPENAI_BATCH {
            return bad(format!("openai max_batch must be 1..={MAX_OPENAI_BATCH}"));
        }
        if self.max_tokens == Some(0) {
            return bad("openai max_tokens must be positive".into());
        }
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("stream_idle_timeout", self.stream_idle_timeout),
            ("stream_timeout", self.stream_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("openai {name} must be positive"));
            }
        }
        if self.max_attempts == 0 {
            return bad("openai max_attempts must be at least 1".into());
        }
        if self.max_response_bytes < 1024 {
            return bad("openai max_response_bytes must be at least 1024".into());
        }
        if !self.ca_pem.is_empty() {
            match reqwest::Certificate::from_pem_bundle(self.ca_pem.as_bytes()) {
                Ok(certs) if !certs.is_empty() => {}
                _ => return bad("openai ca_pem holds no PEM certificate".into()),
            }
        }
        Ok(())
    }
}

/// Builder of an [`OpenAiConfig`]; [`build`](Self::build) validates.
#[derive(Debug, Clone, Default)]
pub struct OpenAiConfigBuilder {
    config: OpenAiConfig,
}

impl OpenAiConfigBuilder {
    /// Sets the API root (up to and including `/v1`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.config.base_url = url.into();
        self
    }
    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<Secret>) -> Self {
        self.config.api_key = key.into();
        self
    }
    /// Sets the chat model.
    pub fn chat_model(mut self, model: impl Into<String>) -> Self {
        self.config.chat_model = model.into();
        self
    }
    /// Sets the embedding model.
    pub fn embedding_model(mut self, model: impl Into<String>) -> Self {
        self.config.embedding_model = model.into();
        self
    }
    agentscale_core::config_setters! {
        /// Sets the embedding dimension.
        dimensions: usize,
        /// Sets the most texts per embeddings request.
        max_batch: usize,
        /// Sets the default `max_tokens`.
        max_tokens: Option<u32>,
        /// Sets the connect timeout.
        connect_timeout: Duration,
        /// Sets the deadline of one call.
        request_timeout: Duration,
        /// Sets the longest wait for a stream's next event.
        stream_idle_timeout: Duration,
        /// Sets the deadline of a whole stream.
        stream_timeout: Duration,
        /// Sets the attempts per request.
        max_attempts: u32,
        /// Sets the first retry backoff.
        retry_backoff: Duration,
        /// Sets the largest response read.
        max_response_bytes: usize,
    }
    /// Trusts the private CA(s) in `pem` for `https`, besides the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.config.ca_pem = pem.into();
        self
    }

    /// Validates and returns the config.
    pub fn build(self) -> Result<OpenAiConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}
