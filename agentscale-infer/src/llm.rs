//! Text in, text out over Triton's TensorRT-LLM ensemble convention.

use std::time::Duration;

use agentscale_core::{ChatChunk, ChatModel, ChatRequest, ChatResponse, ChatStream, Error, Result};
use async_trait::async_trait;
use futures::{Stream, StreamExt};

use crate::client::TritonClient;
use crate::pool::TritonPool;
use crate::request::{InferRequest, InferResponse, Param};
use crate::stream::ResponseStream;
use crate::tensor::Tensor;

/// Something that runs inferences: a [`TritonClient`] or a [`TritonPool`].
#[async_trait]
pub trait Inference: Send + Sync {
    /// One inference.
    async fn infer(&self, req: &InferRequest) -> Result<InferResponse>;
    /// One streamed request (decoupled models).
    async fn infer_stream(&self, req: InferRequest) -> Result<ResponseStream>;
}

#[async_trait]
impl Inference for TritonClient {
    async fn infer(&self, req: &InferRequest) -> Result<InferResponse> {
        TritonClient::infer(self, req).await
    }
    async fn infer_stream(&self, req: InferRequest) -> Result<ResponseStream> {
        TritonClient::infer_stream(self, req).await
    }
}

#[async_trait]
impl Inference for TritonPool {
    async fn infer(&self, req: &InferRequest) -> Result<InferResponse> {
        TritonPool::infer(self, req).await
    }
    async fn infer_stream(&self, req: InferRequest) -> Result<ResponseStream> {
        TritonPool::infer_stream(self, req).await
    }
}

/// Text generation over the TensorRT-LLM ensemble convention: inputs
/// `text_input` (BYTES), `max_tokens` (INT32), `stream` (BOOL), output
/// `text_output` (BYTES). Tensors are shaped `[1, 1]` (the ensemble's batch
/// dimension); use [`LlmClient::without_batch_dim`] for models declared
/// without batching.
///
/// Requests go over `ModelStreamInfer`, which works for decoupled and
/// non-decoupled models alike.
#[derive(Debug, Clone)]
pub struct LlmClient<I> {
    inner: I,
    model: String,
    max_tokens: i32,
    batch_dim: bool,
    deadline: Option<Duration>,
    params: Vec<(String, Param)>,
}

impl<I: Inference> LlmClient<I> {
    /// A helper for `model` (default 64 max tokens).
    pub fn new(inner: I, model: impl Into<String>) -> Self {
        LlmClient {
            inner,
            model: model.into(),
            max_tokens: 64,
            batch_dim: true,
            deadline: None,
            params: Vec::new(),
        }
    }

    /// Maximum tokens to generate.
    pub fn max_tokens(mut self, n: i32) -> Self {
        self.max_tokens = n;
        self
    }

    /// Deadline of a whole generation.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Sends tensors shaped `[1]` instead of `[1, 1]`.
    pub fn without_batch_dim(mut self) -> Self {
        self.batch_dim = false;
        self
    }

    /// Adds a request parameter (sampling settings of custom backends).
    pub fn param(mut self, key: impl Into<String>, value: Param) -> Self {
        self.params.push((key.into(), value));
        self
    }

    fn request(&self, prompt: &str, stream: bool) -> Result<InferRequest> {
        self.request_with(prompt, stream, self.max_tokens)
    }

    fn request_with(&self, prompt: &str, stream: bool, max_tokens: i32) -> Result<InferRequest> {
        if max_tokens <= 0 {
            return Err(Error::InvalidInput("max_tokens must be positive".into()));
        }
        let shape = if self.batch_dim { vec![1, 1] } else { vec![1] };
        let mut req = InferRequest::new(self.model.clone())
            .input(Tensor::from_bytes(
                "text_input",
                shape.clone(),
                [prompt.as_bytes()],
            ))
            .input(Tensor::new("max_tokens", shape.clone(), &[max_tokens]))
            .input(Tensor::new("stream", shape, &[stream]))
            .output("text_output");
        for (k, v) in &self.params {
            req = req.param(k.clone(), v.clone());
        }
        if let Some(d) = self.deadline {
            req = req.deadline(d);
        }
        Ok(req)
    }

    /// Generates and returns the whole text.
    pub async fn generate(&self, prompt: &str) -> Result<String> {
        let mut s = self.inner.infer_stream(self.request(prompt, false)?).await?;
        let mut text = String::new();
        while let Some(r) = s.next().await {
            text.push_str(&text_of(&r?)?);
        }
        Ok(text)
    }

    /// Generates token by token: each item is the text of one response.
    pub async fn generate_stream(
        &self,
        prompt: &str,
    ) -> Result<impl Stream<Item = Result<String>> + Send + 'static> {
        let s = self.inner.infer_stream(self.request(prompt, true)?).await?;
        Ok(s.map(|r| r.and_then(|r| text_of(&r))))
    }
}

impl<I: Inference> LlmClient<I> {
    fn chat_request(&self, request: &ChatRequest, stream: bool) -> Result<InferRequest> {
        request.validate()?;
        let max_tokens = match request.max_tokens {
            Some(n) => {
                i32::try_from(n).map_err(|_| Error::InvalidInput(format!("max_tokens {n} is too large")))?
            }
            None => self.max_tokens,
        };
        let mut req = self.request_with(&request.to_prompt(), stream, max_tokens)?;
        if let Some(t) = request.temperature {
            req = req.param("temperature", Param::Double(f64::from(t)));
        }
        Ok(req)
    }
}

/// The TensorRT-LLM ensemble behind the common chat interface, so an agent
/// can swap it for an OpenAI-compatible server by configuration. The
/// conversation is sent as one prompt ([`ChatRequest::to_prompt`]); a
/// temperature goes as the request parameter `temperature`. The ensemble
/// reports no token counts, so `usage` is `None`.
#[async_trait]
impl<I: Inference + std::fmt::Debug + 'static> ChatModel for LlmClient<I> {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        let mut s = self
            .inner
            .infer_stream(self.chat_request(request, false)?)
            .await?;
        let mut text = String::new();
        while let Some(r) = s.next().await {
            text.push_str(&text_of(&r?)?);
        }
        Ok(ChatResponse::new(text))
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream> {
        let s = self.inner.infer_stream(self.chat_request(request, true)?).await?;
        Ok(Box::pin(
            s.map(|r| r.and_then(|r| text_of(&r)).map(ChatChunk::text)),
        ))
    }
}

fn text_of(r: &InferResponse) -> Result<String> {
    Ok(r.output("text_output")?.to_strings()?.concat())
}
