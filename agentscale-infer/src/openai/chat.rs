//! `/v1/chat/completions`, whole and streamed (server-sent events).

use std::pin::Pin;

use agentscale_core::{
    ChatChunk, ChatModel, ChatRequest, ChatResponse, ChatStream, Error, Result, RpcCode, Usage,
};
use async_trait::async_trait;
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{server_message, status_code, OpenAiClient, WireUsage};
use crate::errors::{clip, MAX_SERVER_TEXT};

const PATH: &str = "/chat/completions";

#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<Message>,
    delta: Option<Message>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<String>,
}

impl OpenAiClient {
    fn chat_body(&self, request: &ChatRequest, stream: bool) -> Result<serde_json::Value> {
        request.validate()?;
        if self.config.chat_model.is_empty() {
            return Err(Error::InvalidConfig("openai chat_model is not set".into()));
        }
        let messages: Vec<_> = request
            .messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({"model": self.config.chat_model, "messages": messages, "stream": stream});
        if let Some(n) = request.max_tokens.or(self.config.max_tokens) {
            body["max_tokens"] = json!(n);
        }
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        Ok(body)
    }
}

#[async_trait]
impl ChatModel for OpenAiClient {
    async fn chat(&self, request: &ChatRequest) -> Result<ChatResponse> {
        let body = self.chat_body(request, false)?;
        let until = Instant::now() + self.config.request_timeout;
        let resp = self.post(PATH, &body, until).await?;
        let c: Completion = self.read_json(PATH, resp, until).await?;
        let choice = c.choices.into_iter().next().ok_or_else(|| Error::Backend {
            message: format!("openai {PATH}: answer without choices"),
            source: None,
        })?;
        let mut out = ChatResponse::new(choice.message.and_then(|m| m.content).unwrap_or_default());
        out.finish_reason = choice.finish_reason;
        out.usage = c.usage.map(Usage::from);
        if let Some(u) = &out.usage {
            self.record(u);
        }
        Ok(out)
    }

    async fn chat_stream(&self, request: &ChatRequest) -> Result<ChatStream> {
        let body = self.chat_body(request, true)?;
        let start = Instant::now();
        let resp = self
            .post(PATH, &body, start + self.config.request_timeout)
            .await?;
        let max = self.config.max_response_bytes;
        let mut seen = 0usize;
        // Bound what the event parser may buffer: the whole stream is capped.
        let bytes = resp
            .bytes_stream()
            .map_err(|e| e.to_string())
            .and_then(move |chunk| {
                seen += chunk.len();
                let over = seen > max;
                async move {
                    if over {
                        Err(format!("stream larger than {max} bytes"))
                    } else {
                        Ok(chunk)
                    }
                }
            });
        let state = StreamState {
            events: Box::pin(bytes.eventsource()),
            client: self.clone(),
            until: start + self.config.stream_timeout,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_chunk)))
    }
}

type Events = Pin<Box<dyn Stream<Item = std::result::Result<Event, EventStreamError<String>>> + Send>>;

struct StreamState {
    events: Events,
    client: OpenAiClient,
    until: Instant,
    done: bool,
}

/// The next chunk of a stream: skips empty keep-alive chunks, ends on
/// `[DONE]`, and turns a missing `[DONE]`, an error event, a stalled or an
/// overlong stream into one final `Err`.
async fn next_chunk(mut s: StreamState) -> Option<(Result<ChatChunk>, StreamState)> {
    if s.done {
        return None;
    }
    loop {
        let idle = Instant::now() + s.client.config.stream_idle_timeout;
        let next = tokio::time::timeout_at(idle.min(s.until), s.events.next()).await;
        let event = match next {
            Err(_) => {
                s.done = true;
                let which = if s.until <= idle {
                    "stream deadline"
                } else {
                    "idle timeout"
                };
                return Some((Err(Error::Timeout(format!("openai {PATH}: {which} passed"))), s));
            }
            Ok(None) => {
                s.done = true;
                let e = Error::Unavailable {
                    message: format!("openai {PATH}: stream ended before [DONE]"),
                    source: None,
                };
                return Some((Err(e), s));
            }
            Ok(Some(Err(e))) => {
                s.done = true;
                let e = Error::Unavailable {
                    message: format!(
                        "openai {PATH}: stream broke: {}",
                        clip(&e.to_string(), MAX_SERVER_TEXT)
                    ),
                    source: None,
                };
                return Some((Err(e), s));
            }
            Ok(Some(Ok(event))) => event,
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            s.done = true;
            return None;
        }
        if data.is_empty() {
            continue;
        }
        match parse_chunk(data) {
            Ok(Some(chunk)) => {
                if let Some(u) = &chunk.usage {
                    s.client.record(u);
                }
                return Some((Ok(chunk), s));
            }
            Ok(None) => continue,
            Err(e) => {
                s.done = true;
                return Some((Err(e), s));
            }
        }
    }
}

/// One `data:` payload: a chunk, nothing worth passing on (`None`), or the
/// server's error event.
fn parse_chunk(data: &str) -> Result<Option<ChatChunk>> {
    #[derive(Deserialize)]
    struct WithError {
        error: Option<serde_json::Value>,
    }
    if let Ok(WithError { error: Some(err) }) = serde_json::from_str::<WithError>(data) {
        let code = err
            .get("code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .map_or(RpcCode::Unknown, status_code);
        let message = server_message(data.as_bytes());
        return Err(Error::Rpc {
            code,
            message: format!("openai {PATH}: error event: {message}"),
        });
    }
    let c: Completion = serde_json::from_str(data).map_err(|e| Error::Backend {
        message: format!("openai {PATH}: malformed stream chunk: {e}"),
        source: None,
    })?;
    let usage = c.usage.map(Usage::from);
    let (text, finish_reason) = match c.choices.into_iter().next() {
        Some(ch) => (
            ch.delta.and_then(|d| d.content).unwrap_or_default(),
            ch.finish_reason,
        ),
        None => (String::new(), None),
    };
    if text.is_empty() && finish_reason.is_none() && usage.is_none() {
        return Ok(None);
    }
    let mut chunk = ChatChunk::text(text);
    chunk.finish_reason = finish_reason;
    chunk.usage = usage;
    Ok(Some(chunk))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunks() {
        let c = parse_chunk(r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c.text, "Hel");
        assert!(
            parse_chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#)
                .unwrap()
                .is_none()
        );
        let last = parse_chunk(
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(last.usage.unwrap().total_tokens, 5);
        let e = parse_chunk(r#"{"error":{"message":"engine died","code":500}}"#).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Rpc {
                    code: RpcCode::Internal,
                    ..
                }
            ),
            "{e}"
        );
        assert!(parse_chunk("{not json").is_err());
    }
}
