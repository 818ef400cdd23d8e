//! NVIDIA Triton Inference Server (KServe v2 gRPC) client for agentscale.
//!
//! * [`TritonClient`]: the whole protocol — health, metadata, statistics,
//!   repository index/load/unload, `infer` with typed tensors for every
//!   Triton datatype, request parameters, deadlines, headers, TLS, gzip.
//! * [`InferStream`]: `ModelStreamInfer` for decoupled (streaming) models,
//!   many requests per stream, responses split per request id.
//! * [`TritonPool`]: many replicas behind an `agentscale_core::balance::Router`
//!   (peak-EWMA power-of-two-choices by default), active health checks, safe
//!   retries, deadlines.
//! * [`LlmClient`]: text in, text (or a token stream) out over the
//!   TensorRT-LLM ensemble convention; an `agentscale_core::ChatModel`.
//! * [`TritonEmbedder`]: an `agentscale_core::Embedder` over a
//!   sentence-embedding model (batching, dimension checks, deadline,
//!   retries of transient failures).
//!
//! Every call — unary, streaming, admin — runs on one transport: tonic's
//! gRPC codec over one [`h2`](https://docs.rs/h2) HTTP/2 connection per
//! client, with the same limits for all: messages up to
//! [`DEFAULT_MAX_MESSAGE_SIZE`] both ways (gzip output capped while
//! inflating), response header lists up to
//! [`DEFAULT_MAX_HEADER_LIST_SIZE`], a deadline on every call
//! ([`DEFAULT_DEADLINE`], [`DEFAULT_STREAM_DEADLINE`]) that also bounds the
//! wait for a stream slot, and bounded streaming buffers, so a slow reader
//! slows the server through HTTP/2 flow control.
//!
//! Cargo features:
//! * `raw`: the generated protocol types ([`pb`]), [`TritonClient::raw_grpc`]
//!   and the calls that return protocol messages (`model_config`,
//!   `model_statistics`) — an escape hatch that ties you to tonic/prost.
//! * `openai`: `openai::OpenAiClient`, a client of OpenAI-compatible HTTP
//!   APIs (NVIDIA NIM, vLLM, TEI) for chat completions (streamed too) and
//!   embeddings, behind the same `ChatModel` / `Embedder` interfaces.
//! * `testing`: an in-process no-op server ([`testing`]) for tests and
//!   benchmarks (implies `raw`).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Generated protocol types and the tonic client/server for
/// `inference.GRPCInferenceService`, from `proto/inference.proto` (this
/// crate's own description of the KServe v2 / Triton protocol). An escape
/// hatch and for test servers.
#[cfg(feature = "raw")]
#[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    include!("pb/inference.rs");
}

#[cfg(not(feature = "raw"))]
#[allow(
    missing_docs,
    dead_code,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
mod pb {
    include!("pb/inference.rs");
}

mod client;
mod embed;
mod errors;
mod llm;
#[cfg(feature = "openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "openai")))]
pub mod openai;
mod pool;
mod request;
mod stream;
mod tensor;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod tls;
#[cfg(feature = "raw")]
#[cfg_attr(docsrs, doc(cfg(feature = "raw")))]
pub mod transport;
#[cfg(not(feature = "raw"))]
mod transport;

pub use client::{
    ModelMetadata, RepositoryModel, ServerMetadata, TensorMetadata, TritonClient, TritonClientBuilder,
    DEFAULT_DEADLINE, DEFAULT_KEEPALIVE, DEFAULT_MAX_HEADER_LIST_SIZE, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_STREAM_BUFFER, DEFAULT_STREAM_DEADLINE,
};
pub use embed::{TritonEmbedder, TritonEmbedderConfig, TritonEmbedderConfigBuilder, MAX_EMBED_BATCH};
pub use llm::{Inference, LlmClient};
pub use pool::{PoolStats, TritonPool, TritonPoolBuilder};
pub use request::{InferRequest, InferResponse, Param, SequenceId, RESERVED_PARAMETERS};
pub use stream::{InferStream, ResponseStream};
pub use tensor::{DataType, Element, Tensor};
pub use tls::TlsConfig;
