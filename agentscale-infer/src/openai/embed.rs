//! `/v1/embeddings`.

use agentscale_core::{validate_embeddings, validate_texts, Embedder, Error, Result, Usage};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{OpenAiClient, WireUsage};

const PATH: &str = "/embeddings";

/// Vectors and the tokens they cost.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens, summed over the requests, if the server reported them.
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiClient {
    /// Embeds `texts` with the configured embedding model, in batches of
    /// `max_batch`, under one deadline (`request_timeout`). Texts are checked
    /// first ([`validate_texts`]); every vector is checked
    /// ([`validate_embeddings`]: another dimension than configured is
    /// [`Error::InvalidConfig`]).
    pub async fn embeddings(&self, texts: &[String]) -> Result<Embeddings> {
        validate_texts(texts)?;
        let model = &self.config.embedding_model;
        if model.is_empty() {
            return Err(Error::InvalidConfig("openai embedding_model is not set".into()));
        }
        let until = Instant::now() + self.config.request_timeout;
        let mut out = Embeddings::default();
        for batch in texts.chunks(self.config.max_batch) {
            let body = json!({"model": model, "input": batch, "encoding_format": "float"});
            let resp = self.post(PATH, &body, until).await?;
            let answer: Answer = self.read_json(PATH, resp, until).await?;
            let mut slots: Vec<Option<Vec<f32>>> = vec![None; batch.len()];
            for item in answer.data {
                match slots.get_mut(item.index) {
                    Some(slot @ None) => *slot = Some(item.embedding),
                    _ => {
                        return Err(Error::Backend {
                            message: format!(
                                "openai {PATH}: answer has a stray or repeated index {}",
                                item.index
                            ),
                            source: None,
                        })
                    }
                }
            }
            let vectors: Vec<Vec<f32>> = slots.into_iter().flatten().collect();
            validate_embeddings(model, batch.len(), self.config.dimensions, &vectors)?;
            out.vectors.extend(vectors);
            if let Some(u) = answer.usage.map(Usage::from) {
                self.record(&u);
                let sum = out.usage.get_or_insert_with(Usage::default);
                sum.prompt_tokens += u.prompt_tokens;
                sum.completion_tokens += u.completion_tokens;
                sum.total_tokens += u.total_tokens;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Embedder for OpenAiClient {
    fn dimensions(&self) -> usize {
        self.config.dimensions
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        Ok(self.embeddings(texts).await?.vectors)
    }
}
