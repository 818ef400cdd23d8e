//! The OpenAI-compatible client against the tests' own server
//! (tests/servers/openai_server.py): chat completions whole and streamed
//! (SSE), token usage, retries on 429/5xx only, typed errors, timeouts, the
//! API key, and `/v1/embeddings` with the real MiniLM model (semantic check).
//! The server runs on the Triton venv's python (`AGENTSCALE_TRITON_PYTHON`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{
    ChatMessage, ChatModel, ChatRequest, Embedder, Error, ErrorKind, Metric, RpcCode, Usage,
};
use agentscale_infer::openai::{OpenAiClient, OpenAiConfig};
use agentscale_state::local::LocalMemoryStore;
use agentscale_tests::openai_server::OpenAiServer;
use agentscale_tests::semantic::recall_sources;
use agentscale_tests::{service_env, unique_name};
use futures::StreamExt;

const KEY: &str = "sk-test-0123456789";

fn server() -> Option<OpenAiServer> {
    let python = service_env("AGENTSCALE_TRITON_PYTHON")?;
    Some(OpenAiServer::start(&python, KEY))
}

fn config(s: &OpenAiServer) -> agentscale_infer::openai::OpenAiConfigBuilder {
    OpenAiConfig::builder()
        .base_url(s.base_url())
        .api_key(KEY)
        .chat_model("scripted")
        .embedding_model("minilm")
        .retry_backoff(Duration::from_millis(10))
        .request_timeout(Duration::from_secs(60))
}

fn client(s: &OpenAiServer) -> OpenAiClient {
    OpenAiClient::new(config(s).build().unwrap()).unwrap()
}

#[tokio::test]
async fn chat_whole_and_streamed_with_usage() {
    let Some(s) = server() else { return };
    let c = client(&s);
    assert!(!format!("{c:?}").contains(KEY));
    let chat: Arc<dyn ChatModel> = Arc::new(c.clone());
    let req = ChatRequest::new(vec![
        ChatMessage::system("be brief"),
        ChatMessage::user("hello big world"),
    ]);
    let r = chat.chat(&req).await.unwrap();
    assert_eq!(r.text, "you said: hello big world");
    assert_eq!(r.finish_reason.as_deref(), Some("stop"));
    let want = Usage {
        prompt_tokens: 5,
        completion_tokens: 5,
        total_tokens: 10,
    };
    assert_eq!(r.usage, Some(want));

    let chunks: Vec<_> = chat.chat_stream(&req).await.unwrap().collect().await;
    let chunks: Vec<_> = chunks.into_iter().map(|c| c.unwrap()).collect();
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(text, "you said: hello big world");
    assert_eq!(
        chunks.iter().filter(|c| !c.text.is_empty()).count(),
        5,
        "one chunk per word: {chunks:?}"
    );
    assert_eq!(
        chunks
            .iter()
            .filter_map(|c| c.finish_reason.as_deref())
            .collect::<Vec<_>>(),
        ["stop"]
    );
    assert_eq!(chunks.last().unwrap().usage, Some(want));
    assert_eq!(
        c.usage_totals(),
        Usage {
            prompt_tokens: 10,
            completion_tokens: 10,
            total_tokens: 20
        }
    );

    let short = chat
        .chat(&ChatRequest::user("one two three four").max_tokens(2))
        .await
        .unwrap();
    assert_eq!(
        (short.text.as_str(), short.finish_reason.as_deref()),
        ("you said:", Some("length"))
    );
    assert_eq!(
        chat.chat(&ChatRequest::new(vec![])).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn retries_429_and_5xx_only() {
    let Some(s) = server() else { return };
    let c = client(&s);
    let id = unique_name("k");

    let m = format!("flaky-429:{id}:2");
    assert_eq!(
        c.chat(&ChatRequest::user(m.as_str())).await.unwrap().text,
        format!("you said: {m}")
    );
    assert_eq!(s.seen(&m).await, 3);

    let m = format!("flaky-500:{id}:2");
    let chunks: Vec<_> = c
        .chat_stream(&ChatRequest::user(m.as_str()))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(chunks.iter().all(|c| c.is_ok()));
    assert_eq!(s.seen(&m).await, 3);

    // Three attempts, then the typed error of the last answer.
    let m = format!("flaky-500:{id}:9");
    match c.chat(&ChatRequest::user(m.as_str())).await.unwrap_err() {
        Error::Rpc {
            code: RpcCode::Internal,
            message,
        } => assert!(message.contains("HTTP 500"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.seen(&m).await, 3);
    let m = format!("flaky-429:{id}:9");
    let e = c.chat(&ChatRequest::user(m.as_str())).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rpc {
                code: RpcCode::ResourceExhausted,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(s.seen(&m).await, 3);

    // A 400 is not retried, and keeps the server's message.
    let m = format!("bad-request:{id}");
    match c.chat(&ChatRequest::user(m.as_str())).await.unwrap_err() {
        Error::Rpc {
            code: RpcCode::InvalidArgument,
            message,
        } => {
            assert!(message.contains("scripted model refuses"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.seen(&m).await, 1);
}

#[tokio::test]
async fn typed_errors_auth_and_unknown_model() {
    let Some(s) = server() else { return };
    let wrong_key = OpenAiClient::new(config(&s).api_key("sk-wrong").build().unwrap()).unwrap();
    let e = wrong_key.chat(&ChatRequest::user("hi")).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rpc {
                code: RpcCode::Unauthenticated,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.to_string().contains("sk-wrong"));

    let other_model = OpenAiClient::new(config(&s).chat_model("gpt-nope").build().unwrap()).unwrap();
    let e = other_model.chat(&ChatRequest::user("hi")).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Rpc {
                code: RpcCode::NotFound,
                ..
            }
        ),
        "{e:?}"
    );

    // Nothing listens here: the connection fails, is retried, and is `Unavailable`.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = OpenAiClient::new(
        config(&s)
            .base_url(format!("http://127.0.0.1:{port}/v1"))
            .max_attempts(2)
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        closed.chat(&ChatRequest::user("hi")).await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn timeouts_and_broken_streams() {
    let Some(s) = server() else { return };
    // The server sleeps 30 s; the client's deadline is 300 ms.
    let quick = OpenAiClient::new(
        config(&s)
            .request_timeout(Duration::from_millis(300))
            .stream_idle_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        quick
            .chat(&ChatRequest::user("slow:30000"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Timeout
    );

    // A stream that stalls after its first word: the idle deadline ends it.
    let items: Vec<_> = quick
        .chat_stream(&ChatRequest::user("stall"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items[0].as_ref().unwrap().text, "you");
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(items.len(), 2);

    let c = client(&s);
    let items: Vec<_> = c
        .chat_stream(&ChatRequest::user("error-midstream"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    match items[1].as_ref().unwrap_err() {
        Error::Rpc {
            code: RpcCode::Internal,
            message,
        } => assert!(message.contains("crashed mid-stream"), "{message}"),
        other => panic!("{other:?}"),
    }
    let items: Vec<_> = c
        .chat_stream(&ChatRequest::user("cut"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(
        items.last().unwrap().as_ref().unwrap_err().kind(),
        ErrorKind::Unavailable
    );
}

#[tokio::test]
async fn embeddings_are_minilm_and_semantic() {
    let Some(s) = server() else { return };
    let c = client(&s);
    let texts: Vec<String> = (0..7).map(|i| format!("text number {i}")).collect();
    let whole = c.embeddings(&texts).await.unwrap();
    assert_eq!(whole.vectors.len(), 7);
    assert!(whole.vectors.iter().all(|v| v.len() == 384));
    assert!(whole.usage.unwrap().prompt_tokens >= 7 * 4);
    let batched = OpenAiClient::new(config(&s).max_batch(3).build().unwrap()).unwrap();
    let split = batched.embed(&texts).await.unwrap();
    for (a, b) in whole.vectors.iter().zip(&split) {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(dot > 0.9999, "{dot}");
    }

    let wrong = OpenAiClient::new(config(&s).dimensions(768).build().unwrap()).unwrap();
    assert_eq!(
        wrong.embed(&texts[..1]).await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        c.embed(&["  ".to_string()]).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    let store = Arc::new(LocalMemoryStore::new(384, Metric::Cosine).unwrap());
    let (hits, misses) = recall_sources(store, Arc::new(c)).await;
    assert!(hits >= 9, "{hits}/10; misses {misses:?}");
}
