//! Retrieval-augmented generation: ingest a few documents into long-term
//! memory with a real sentence-embedding model on Triton, recall the ones
//! closest to a question, and answer from that context through the LLM
//! helper (streaming).
//!
//! ```text
//! eval "$(scripts/dev-services up)"
//! cargo run -p agentscale-examples --features triton --example rag_agent -- "How do I get my money back?"
//! ```
//! The embedder is `minilm` (all-MiniLM-L6-v2) on `AGENTSCALE_TRITON_URL`;
//! the chat model is Triton's `llm_stream` (a scripted test model that echoes
//! its prompt). Built with `--features triton,openai` and with
//! `AGENTSCALE_OPENAI_BASE_URL` (and `AGENTSCALE_OPENAI_API_KEY[_FILE]`,
//! `AGENTSCALE_OPENAI_CHAT_MODEL`) set, the same code asks an
//! OpenAI-compatible server (NVIDIA NIM, vLLM) instead: the agent holds an
//! `Arc<dyn ChatModel>`, so the model is configuration.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use agentscale::infer::{LlmClient, TritonClient, TritonEmbedder, TritonEmbedderConfig};
use agentscale::{
    ChatMessage, ChatModel, ChatRequest, Document, Filter, LocalMemoryStore, Metric, Namespace, Rag,
};
use futures::StreamExt;

fn chat_model(triton: TritonClient) -> agentscale::Result<Arc<dyn ChatModel>> {
    #[cfg(feature = "openai")]
    if std::env::var("AGENTSCALE_OPENAI_BASE_URL").is_ok() {
        use agentscale::infer::openai::{OpenAiClient, OpenAiConfig};
        return Ok(Arc::new(OpenAiClient::new(OpenAiConfig::from_env(
            "AGENTSCALE_OPENAI",
        )?)?));
    }
    Ok(Arc::new(
        LlmClient::new(triton, "llm_stream").deadline(Duration::from_secs(30)),
    ))
}

#[tokio::main]
async fn main() -> agentscale::Result<()> {
    let url = std::env::var("AGENTSCALE_TRITON_URL").unwrap_or_else(|_| "http://127.0.0.1:8001".into());
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "How do I get my money back for something I bought?".into());
    let triton = TritonClient::new(url)?;

    // Long-term memory: an in-process HNSW-capable store and a semantic embedder.
    let embedder = Arc::new(TritonEmbedder::new(
        triton.clone(),
        TritonEmbedderConfig::default(),
    )?);
    let store = Arc::new(LocalMemoryStore::new(384, Metric::Cosine)?);
    let rag = Rag::new(store, embedder)?;
    let ns = Namespace::new("acme", "support-handbook")?;
    let added = rag
        .remember_all(
            &ns,
            vec![
                Document::new(
                    "Refunds are paid to the original card within 14 days of receiving the returned item.",
                )
                .with_meta("topic", "billing"),
                Document::new("Orders ship from the Oslo warehouse every weekday at 3 pm.")
                    .with_meta("topic", "shipping"),
                Document::new("Passwords can be reset from the login page with the 'forgot password' link.")
                    .with_meta("topic", "account"),
                Document::new(
                    "Items may be returned unused within 30 days; print the label from your order page.",
                )
                .with_meta("topic", "billing"),
                Document::new("Support is open from 8 am to 6 pm CET, Monday to Friday.")
                    .with_meta("topic", "contact"),
            ],
        )
        .await?;
    println!(
        "remembered {} documents",
        added.iter().filter(|a| a.inserted).count()
    );

    // Recall the closest documents, then answer from them.
    let recalled = rag.recall(&ns, &question, 2, &Filter::all()).await?;
    for r in &recalled {
        println!(
            "recalled ({:.3}) [{}] {}",
            r.score,
            r.metadata.get("topic").map_or("", String::as_str),
            r.text
        );
    }
    let request = ChatRequest::new(vec![
        ChatMessage::system(format!(
            "Answer from this context only:\n{}",
            Rag::context(&recalled)
        )),
        ChatMessage::user(question),
    ])
    .max_tokens(48);
    let llm = chat_model(triton)?;
    let mut answer = llm.chat_stream(&request).await?;
    print!("answer: ");
    while let Some(chunk) = answer.next().await {
        let chunk = chunk?;
        print!("{}", chunk.text);
        let _ = std::io::stdout().flush();
        if let Some(u) = chunk.usage {
            print!(
                " [tokens: {} prompt + {} completion]",
                u.prompt_tokens, u.completion_tokens
            );
        }
    }
    println!();
    Ok(())
}
