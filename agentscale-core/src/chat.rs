//! The contract for text generation: a conversation in, text (whole or
//! streamed) out.
//!
//! [`ChatModel`] is what an agent holds (`Arc<dyn ChatModel>`), so the model
//! behind it is a matter of configuration: Triton's TensorRT-LLM ensemble
//! (`agentscale_infer::LlmClient`), or an OpenAI-compatible server such as
//! NVIDIA NIM or vLLM (`agentscale_infer::openai::OpenAiClient`).

use std::fmt::Debug;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Who said a [`ChatMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user's turn.
    User,
    /// The model's earlier turns.
    Assistant,
}

impl Role {
    /// The OpenAI wire name (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

/// Most messages one request accepts.
pub const MAX_CHAT_MESSAGES: usize = 1024;
/// Largest total message text one request accepts, in bytes (1 MiB).
pub const MAX_CHAT_BYTES: usize = 1024 * 1024;

/// A generation request. Settings left `None` are the model's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// The conversation, oldest first; at least one message.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature (0 = greedy).
    pub temperature: Option<f32>,
}

impl ChatRequest {
    /// A request with these messages.
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        ChatRequest {
            messages,
            ..Default::default()
        }
    }

    /// A request with one user message.
    pub fn user(prompt: impl Into<String>) -> Self {
        Self::new(vec![ChatMessage::user(prompt)])
    }

    /// Sets the most tokens to generate.
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Checks the request: 1..=[`MAX_CHAT_MESSAGES`] messages of at most
    /// [`MAX_CHAT_BYTES`] in all, `max_tokens` positive, a finite temperature
    /// in 0..=2. Every [`ChatModel`] calls this before sending.
    pub fn validate(&self) -> Result<()> {
        if self.messages.is_empty() {
            return Err(Error::InvalidInput(
                "a chat request needs at least one message".into(),
            ));
        }
        if self.messages.len() > MAX_CHAT_MESSAGES {
            return Err(Error::InvalidInput(format!(
                "{} messages; at most {MAX_CHAT_MESSAGES}",
                self.messages.len()
            )));
        }
        let bytes: usize = self.messages.iter().map(|m| m.content.len()).sum();
        if bytes > MAX_CHAT_BYTES {
            return Err(Error::InvalidInput(format!(
                "messages hold {bytes} bytes; at most {MAX_CHAT_BYTES}"
            )));
        }
        if self.max_tokens == Some(0) {
            return Err(Error::InvalidInput("max_tokens must be positive".into()));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(Error::InvalidInput(format!("temperature {t} is outside 0..=2")));
            }
        }
        Ok(())
    }

    /// The conversation as one prompt, for models that take plain text: each
    /// message on its own line as `role: content`, then `assistant:`. A
    /// single user message is sent as it is.
    pub fn to_prompt(&self) -> String {
        if let [m] = self.messages.as_slice() {
            if m.role == Role::User {
                return m.content.clone();
            }
        }
        let mut p = String::new();
        for m in &self.messages {
            p.push_str(m.role.as_str());
            p.push_str(": ");
            p.push_str(&m.content);
            p.push('\n');
        }
        p.push_str("assistant:");
        p
    }
}

/// Token counts of one generation, as the server reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// A finished generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatResponse {
    /// The generated text.
    pub text: String,
    /// Why generation stopped (`stop`, `length`, …), if the server said.
    pub finish_reason: Option<String>,
    /// Token counts, if the server reported them.
    pub usage: Option<Usage>,
}

impl ChatResponse {
    /// A response with this text, no finish reason and no usage.
    pub fn new(text: impl Into<String>) -> Self {
        ChatResponse {
            text: text.into(),
            ..Default::default()
        }
    }
}

/// One piece of a streamed generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChatChunk {
    /// Text generated since the previous chunk (may be empty).
    pub text: String,
    /// Set on the chunk that ends the generation, if the server said.
    pub finish_reason: Option<String>,
    /// Token counts, on the last chunk if the server reported them.
    pub usage: Option<Usage>,
}

impl ChatChunk {
    /// A chunk of text.
    pub fn text(text: impl Into<String>) -> Self {
        ChatChunk {
            text: text.into(),
            ..Default::default()
        }
    }
}

/// A stream of [`ChatChunk`]s; an `Err` item ends it.
pub type ChatStream = BoxStream<'static, Result<ChatChunk>>;

/// Generates text from a conversation.
///
/// Implementations validate the request ([`ChatRequest::validate`]), bound
/// every call by a deadline ([`Error::Timeout`]), retry only transient
/// failures and report server errors as typed [`Error`]s.
#[async_trait]
pub trait ChatModel: Send + Sync + Debug {
    /// Generates the whole answer.
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse>;
    /// Generates the answer piece by piece.
    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream>;
}

fn _obj_safe(_: Box<dyn ChatModel>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_and_prompt() {
        assert!(ChatRequest::new(vec![]).validate().is_err());
        assert!(ChatRequest::user("hi").max_tokens(0).validate().is_err());
        assert!(ChatRequest::user("hi").temperature(f32::NAN).validate().is_err());
        assert!(ChatRequest::user("hi").temperature(0.5).validate().is_ok());
        assert_eq!(ChatRequest::user("hi").to_prompt(), "hi");
        let r = ChatRequest::new(vec![ChatMessage::system("be brief"), ChatMessage::user("hi")]);
        assert_eq!(r.to_prompt(), "system: be brief\nuser: hi\nassistant:");
        let big = "x".repeat(MAX_CHAT_BYTES + 1);
        assert!(ChatRequest::user(big).validate().is_err());
    }
}
