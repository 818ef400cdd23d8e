//! A client of OpenAI-compatible HTTP APIs — NVIDIA NIM, vLLM, TGI/TEI,
//! OpenAI itself: `/v1/chat/completions` (whole or streamed over
//! server-sent events) and `/v1/embeddings`.
//!
//! [`OpenAiClient`] is an [`agentscale_core::ChatModel`] (the same interface
//! as Triton's [`LlmClient`](crate::LlmClient)) and an
//! [`agentscale_core::Embedder`] (like [`TritonEmbedder`](crate::TritonEmbedder)),
//! so an agent moves between Triton, NIM and vLLM by configuration.
//!
//! * Every call has one deadline (`request_timeout`); a stream also has an
//!   idle deadline between events and a total one.
//! * Retried, with exponential backoff (honouring `Retry-After`): HTTP 429
//!   and 5xx answers and connections that could not be made — nothing else.
//!   A stream is retried only before its first event.
//! * Server errors are [`Error::Rpc`] with the HTTP status mapped to a gRPC
//!   code (`429` → `ResourceExhausted`, `401` → `Unauthenticated`, …) and the
//!   server's message (clipped); bodies and streams are read up to
//!   `max_response_bytes`.
//! * Token usage is reported on every answer
//!   ([`ChatResponse::usage`](agentscale_core::ChatResponse::usage), the
//!   last [`ChatChunk`](agentscale_core::ChatChunk) of a stream, [`Embeddings::usage`]) and summed
//!   in [`OpenAiClient::usage_totals`].
//! * The API key is a [`Secret`](agentscale_core::config::Secret): never in
//!   `Debug` output or logs.
//!
//! HTTP is [reqwest](https://docs.rs/reqwest) on rustls (ring, the platform's
//! root certificates), the event stream is parsed by
//! [eventsource-stream](https://docs.rs/eventsource-stream).
//!
//! ```no_run
//! # async fn run() -> agentscale_core::Result<()> {
//! use agentscale_core::{ChatModel, ChatRequest};
//! use agentscale_infer::openai::{OpenAiClient, OpenAiConfig};
//!
//! let nim = OpenAiClient::new(OpenAiConfig::from_env("AGENTSCALE_OPENAI")?)?;
//! let answer = nim.chat(&ChatRequest::user("Say hello").max_tokens(16)).await?;
//! println!("{} ({:?})", answer.text, answer.usage);
//! # Ok(()) }
//! ```

mod chat;
mod config;
mod embed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, Result, RpcCode, Usage};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

pub use config::{OpenAiConfig, OpenAiConfigBuilder, MAX_OPENAI_BATCH};
pub use embed::Embeddings;

use crate::errors::{clip, MAX_SERVER_TEXT};

/// Longest backoff between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A client of an OpenAI-compatible server; cheap to clone (one connection
/// pool). See the [module docs](self).
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    config: Arc<OpenAiConfig>,
    base: Arc<str>,
    totals: Arc<Totals>,
}

#[derive(Debug, Default)]
struct Totals {
    prompt: AtomicU64,
    completion: AtomicU64,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("config", &self.config)
            .finish()
    }
}

impl OpenAiClient {
    /// A client for `config` (validated here).
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        config.validate()?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("agentscale/", env!("CARGO_PKG_VERSION")));
        if !config.ca_pem.is_empty() {
            let certs = reqwest::Certificate::from_pem_bundle(config.ca_pem.as_bytes())
                .map_err(|e| Error::InvalidConfig(format!("openai ca_pem: {e}")))?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http
            .build()
            .map_err(|e| Error::InvalidConfig(format!("openai HTTP client: {e}")))?;
        Ok(OpenAiClient {
            http,
            base: config.base_url.trim_end_matches('/').into(),
            config: Arc::new(config),
            totals: Arc::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// Tokens reported by the server over this client's life (all clones).
    pub fn usage_totals(&self) -> Usage {
        let prompt_tokens = self.totals.prompt.load(Ordering::Relaxed);
        let completion_tokens = self.totals.completion.load(Ordering::Relaxed);
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }

    fn record(&self, u: &Usage) {
        self.totals.prompt.fetch_add(u.prompt_tokens, Ordering::Relaxed);
        self.totals
            .completion
            .fetch_add(u.completion_tokens, Ordering::Relaxed);
    }

    /// POSTs `body` to `path` until a 2xx answer, retrying 429/5xx answers
    /// and failed connections, all before `until`.
    async fn post(&self, path: &str, body: &serde_json::Value, until: Instant) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut backoff = self.config.retry_backoff;
        let mut attempt = 1;
        loop {
            let mut req = self.http.post(&url).json(body);
            if !self.config.api_key.is_empty() {
                req = req.bearer_auth(self.config.api_key.expose());
            }
            let left = until.saturating_duration_since(Instant::now());
            let (err, retry_after) = match tokio::time::timeout(left, req.send()).await {
                Err(_) => return Err(self.timeout(path)),
                Ok(Ok(resp)) if resp.status().is_success() => return Ok(resp),
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let retry_after = retry_after(&resp);
                    let err = self.status_error(path, resp, until).await;
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        return Err(err);
                    }
                    (err, retry_after)
                }
                Ok(Err(e)) if e.is_connect() => (
                    Error::Unavailable {
                        message: format!("openai {path}: cannot connect: {}", error_chain(&e)),
                        source: None,
                    },
                    None,
                ),
                Ok(Err(e)) => return Err(self.transport_error(path, &e)),
            };
            if attempt >= self.config.max_attempts {
                return Err(err);
            }
            let wait = retry_after.unwrap_or(backoff).min(MAX_BACKOFF);
            if Instant::now() + wait >= until {
                return Err(err);
            }
            tracing::debug!(path, attempt, error = %err, ?wait, "openai retry");
            tokio::time::sleep(wait).await;
            attempt += 1;
            backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        }
    }

    /// Reads a whole JSON body (at most `max_response_bytes`) before `until`.
    async fn read_json<T: DeserializeOwned>(
        &self,
        path: &str,
        resp: reqwest::Response,
        until: Instant,
    ) -> Result<T> {
        let body = self
            .read_body(path, resp, self.config.max_response_bytes, until)
            .await?;
        serde_json::from_slice(&body).map_err(|e| Error::Backend {
            message: format!("openai {path}: malformed response: {e}"),
            source: None,
        })
    }

    async fn read_body(
        &self,
        path: &str,
        mut resp: reqwest::Response,
        max: usize,
        until: Instant,
    ) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, resp.chunk()).await {
                Err(_) => return Err(self.timeout(path)),
                Ok(Err(e)) => return Err(self.transport_error(path, &e)),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(chunk))) => {
                    if body.len() + chunk.len() > max {
                        return Err(Error::Backend {
                            message: format!("openai {path}: response larger than {max} bytes"),
                            source: None,
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// The typed error of a non-2xx answer, with the server's message.
    async fn status_error(&self, path: &str, resp: reqwest::Response, until: Instant) -> Error {
        let status = resp.status();
        let text = match self.read_body(path, resp, 64 * 1024, until).await {
            Ok(body) => server_message(&body),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Error::Rpc {
            code: status_code(status.as_u16()),
            message: format!("openai {path}: HTTP {status}: {text}"),
        }
    }

    fn transport_error(&self, path: &str, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            return self.timeout(path);
        }
        Error::Unavailable {
            message: format!("openai {path}: {}", error_chain(e)),
            source: None,
        }
    }

    fn timeout(&self, path: &str) -> Error {
        Error::Timeout(format!(
            "openai {path} took longer than its deadline ({:?})",
            self.config.request_timeout
        ))
    }
}

/// The gRPC code closest to an HTTP status.
pub(crate) fn status_code(status: u16) -> RpcCode {
    match status {
        400 | 413 | 422 => RpcCode::InvalidArgument,
        401 => RpcCode::Unauthenticated,
        403 => RpcCode::PermissionDenied,
        404 => RpcCode::NotFound,
        408 | 504 => RpcCode::DeadlineExceeded,
        409 => RpcCode::Aborted,
        429 => RpcCode::ResourceExhausted,
        499 => RpcCode::Cancelled,
        501 => RpcCode::Unimplemented,
        502 | 503 => RpcCode::Unavailable,
        500..=599 => RpcCode::Internal,
        _ => RpcCode::Unknown,
    }
}

/// `{"error": {"message": …}}` (OpenAI's shape), `{"message": …}`,
/// `{"detail": …}`, or the text itself; clipped.
fn server_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Inner {
        message: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Object(Inner),
        Text(String),
    }
    #[derive(Deserialize)]
    struct Shape {
        error: Option<ErrorField>,
        message: Option<String>,
        detail: Option<serde_json::Value>,
    }
    let text = match serde_json::from_slice::<Shape>(body) {
        Ok(Shape {
            error: Some(ErrorField::Object(Inner { message: Some(m) })),
            ..
        }) => m,
        Ok(Shape {
            error: Some(ErrorField::Text(m)),
            ..
        }) => m,
        Ok(Shape { message: Some(m), .. }) => m,
        Ok(Shape { detail: Some(d), .. }) => d.to_string(),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    clip(text.trim(), MAX_SERVER_TEXT)
}

/// `Retry-After` in seconds, if present.
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::errors::error_chain(e)
}

/// The usage block of an answer.
#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens.max(u.prompt_tokens + u.completion_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_and_codes() {
        assert_eq!(
            server_message(br#"{"error":{"message":"bad model","type":"x"}}"#),
            "bad model"
        );
        assert_eq!(server_message(br#"{"error":"overloaded"}"#), "overloaded");
        assert_eq!(server_message(br#"{"detail":"nope"}"#), "\"nope\"");
        assert_eq!(server_message(b"plain text\n"), "plain text");
        assert_eq!(status_code(429), RpcCode::ResourceExhausted);
        assert_eq!(status_code(503), RpcCode::Unavailable);
        assert_eq!(status_code(500), RpcCode::Internal);
        assert_eq!(status_code(401), RpcCode::Unauthenticated);
    }

    #[test]
    fn config_validates_and_redacts() {
        let c = OpenAiConfig::builder()
            .base_url("https://user:pw@nim.example/v1/")
            .api_key("nvapi-123")
            .build();
        let c = c.unwrap_or_default();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("nvapi-123") && !dbg.contains("pw@"), "{dbg}");
        assert!(OpenAiConfig::builder().base_url("ftp://x").build().is_err());
        assert!(OpenAiConfig::builder().max_attempts(0).build().is_err());
        assert!(OpenAiConfig::builder().api_key("a\nb").build().is_err());
        let err = OpenAiConfig::builder()
            .ca_pem("not a certificate")
            .build()
            .expect_err("bad CA");
        assert_eq!(err.kind(), agentscale_core::ErrorKind::InvalidConfig, "{err}");
        let loaded = agentscale_core::config::ConfigLoader::new()
            .env_prefix("T")
            .env_vars([
                ("T_BASE_URL", "http://h:1/v1"),
                ("T_CHAT_MODEL", "m"),
                ("T_REQUEST_TIMEOUT", "2s"),
            ])
            .load::<OpenAiConfig>();
        let loaded = loaded.unwrap_or_default();
        assert_eq!(loaded.chat_model, "m");
        assert_eq!(loaded.request_timeout, Duration::from_secs(2));
    }
}
