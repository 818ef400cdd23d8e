//! NVIDIA Triton Inference Server (KServe v2 gRPC) client for agentscale.
//!
//! * [`TritonClient`]: the whole protocol — health, metadata, model config,
//!   statistics, repository index/load/unload, `infer` with typed tensors for
//!   every Triton datatype, request parameters, deadlines, headers, TLS, gzip.
//! * [`InferStream`]: `ModelStreamInfer` for decoupled (streaming) models,
//!   many requests per stream, responses split per request id.
//! * [`TritonPool`]: many replicas behind an `agentscale_core::balance::Router`
//!   (peak-EWMA power-of-two-choices by default), active health checks, safe
//!   retries, deadlines.
//! * [`LlmClient`]: text in, text (or a token stream) out over the
//!   TensorRT-LLM ensemble convention.
//!
//! Generated protocol types are in [`pb`] (an escape hatch); everything else
//! uses the hand-written types here. Unary calls run on a lean HTTP/2
//! connection of this crate's own; [`transport::Channel`] is the HTTP/2
//! transport the generated client (streaming calls, [`TritonClient::raw_grpc`])
//! runs on.
#![forbid(unsafe_code)]

/// Generated protocol types and the tonic client/server for
/// `inference.GRPCInferenceService`, from `proto/inference.proto` (this
/// crate's own description of the KServe v2 / Triton protocol). Exposed on
/// purpose as an escape hatch and for test servers.
#[allow(missing_docs, clippy::all, clippy::pedantic, rust_2018_idioms)]
pub mod pb {
    include!("pb/inference.rs");
}

mod client;
mod llm;
mod pool;
mod request;
mod stream;
mod tensor;
pub mod testing;
pub mod transport;
mod unary;

pub use client::{
    ModelMetadata, RepositoryModel, ServerMetadata, TensorMetadata, TlsConfig, TritonClient,
    TritonClientBuilder, DEFAULT_KEEPALIVE, DEFAULT_MAX_MESSAGE_SIZE,
};
pub use llm::{Inference, LlmClient};
pub use pool::{PoolStats, TritonPool, TritonPoolBuilder};
pub use request::{InferRequest, InferResponse, Param, SequenceId, RESERVED_PARAMETERS};
pub use stream::{InferStream, ResponseStream};
pub use tensor::{DataType, Element, Tensor};
