//! An in-process no-op `GRPCInferenceService` for tests and client
//! benchmarks (built from the same `.proto` as the client).

use std::net::SocketAddr;
use std::pin::Pin;

use agentscale_core::{Error, Result};
use futures::Stream;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};

use crate::pb;
use crate::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// A server that answers every call at once: ready, and `ModelInfer` echoes
/// the inputs back as outputs `OUTPUT<i>` (raw contents shared, not copied).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopInferenceService;

type Rs<T> = std::result::Result<Response<T>, Status>;

/// The no-op `ModelInfer` answer: every input back as output `OUTPUT<i>`
/// (same datatype and shape; raw contents shared, not copied).
pub fn echo(req: pb::ModelInferRequest) -> pb::ModelInferResponse {
    let outputs = req
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| pb::model_infer_response::InferOutputTensor {
            name: format!("OUTPUT{i}"),
            datatype: t.datatype.clone(),
            shape: t.shape.clone(),
            parameters: Default::default(),
            contents: None,
        })
        .collect();
    pb::ModelInferResponse {
        model_name: req.model_name,
        model_version: "1".into(),
        id: req.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents: req.raw_input_contents,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for NoopInferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Rs<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Rs<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(&self, _: Request<pb::ModelReadyRequest>) -> Rs<pb::ModelReadyResponse> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Rs<pb::ServerMetadataResponse> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "agentscale-noop".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec![],
        }))
    }
    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Rs<pb::ModelMetadataResponse> {
        Ok(Response::new(pb::ModelMetadataResponse {
            name: r.into_inner().name,
            ..Default::default()
        }))
    }
    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Rs<pb::ModelInferResponse> {
        Ok(Response::new(echo(r.into_inner())))
    }
    type ModelStreamInferStream = Pin<
        Box<dyn Stream<Item = std::result::Result<pb::ModelStreamInferResponse, Status>> + Send + 'static>,
    >;
    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Rs<Self::ModelStreamInferStream> {
        use futures::StreamExt;
        let s = r.into_inner().map(|m| {
            m.map(|req| {
                let mut resp = echo(req);
                resp.parameters.insert(
                    "triton_final_response".into(),
                    pb::InferParameter {
                        parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
                    },
                );
                pb::ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(resp),
                }
            })
        });
        Ok(Response::new(Box::pin(s)))
    }
    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Rs<pb::ModelConfigResponse> {
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(pb::ModelConfig {
                name: r.into_inner().name,
                ..Default::default()
            }),
        }))
    }
    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Rs<pb::ModelStatisticsResponse> {
        Ok(Response::new(pb::ModelStatisticsResponse::default()))
    }
    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Rs<pb::RepositoryIndexResponse> {
        Ok(Response::new(pb::RepositoryIndexResponse::default()))
    }
    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rs<pb::RepositoryModelLoadResponse> {
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }
    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rs<pb::RepositoryModelUnloadResponse> {
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

/// A running no-op server; stops when dropped.
#[derive(Debug)]
pub struct NoopServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl NoopServer {
    /// Starts the no-op server on `addr` (`127.0.0.1:0` for a free port).
    pub async fn start(addr: SocketAddr) -> Result<NoopServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::unavailable(format!("bind {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::backend("local_addr", e))?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let svc = GrpcInferenceServiceServer::new(NoopInferenceService)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let task = tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::warn!(error = %e, "noop triton server stopped");
            }
        });
        Ok(NoopServer { addr, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for NoopServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
