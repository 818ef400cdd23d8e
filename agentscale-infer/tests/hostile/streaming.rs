//! Streaming against a server that never ends its response stream, and one
//! that floods it faster than the consumer reads.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::ErrorKind;
use agentscale_infer::pb;
use agentscale_infer::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use agentscale_infer::testing::{echo, NoopInferenceService};
use agentscale_infer::{InferRequest, Tensor, TritonClient};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Rs<T> = Result<Response<T>, Status>;

/// Answers the first streamed request with `count` responses of `size`
/// bytes each (never final), then keeps the stream open forever.
#[derive(Clone)]
struct Endless {
    count: usize,
    size: usize,
    produced: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl GrpcInferenceService for Endless {
    async fn server_live(&self, r: Request<pb::ServerLiveRequest>) -> Rs<pb::ServerLiveResponse> {
        NoopInferenceService.server_live(r).await
    }
    async fn server_ready(&self, r: Request<pb::ServerReadyRequest>) -> Rs<pb::ServerReadyResponse> {
        NoopInferenceService.server_ready(r).await
    }
    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Rs<pb::ModelReadyResponse> {
        NoopInferenceService.model_ready(r).await
    }
    async fn server_metadata(&self, r: Request<pb::ServerMetadataRequest>) -> Rs<pb::ServerMetadataResponse> {
        NoopInferenceService.server_metadata(r).await
    }
    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Rs<pb::ModelMetadataResponse> {
        NoopInferenceService.model_metadata(r).await
    }
    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Rs<pb::ModelInferResponse> {
        NoopInferenceService.model_infer(r).await
    }
    type ModelStreamInferStream =
        Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send + 'static>>;
    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Rs<Self::ModelStreamInferStream> {
        let mut requests = r.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no request"))?;
        let template = echo(first);
        let me = self.clone();
        let responses = futures::stream::iter(0..self.count)
            .map(move |_| {
                me.produced.fetch_add(1, Ordering::Relaxed);
                let mut resp = template.clone();
                let size = me.size;
                resp.outputs = vec![pb::model_infer_response::InferOutputTensor {
                    name: "OUTPUT0".into(),
                    datatype: "UINT8".into(),
                    shape: vec![size as i64],
                    parameters: Default::default(),
                    contents: None,
                }];
                resp.raw_output_contents = vec![vec![7u8; size].into()];
                Ok(pb::ModelStreamInferResponse {
                    error_message: String::new(),
                    infer_response: Some(resp),
                })
            })
            .chain(futures::stream::pending());
        Ok(Response::new(Box::pin(responses)))
    }
    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Rs<pb::ModelConfigResponse> {
        NoopInferenceService.model_config(r).await
    }
    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Rs<pb::ModelStatisticsResponse> {
        NoopInferenceService.model_statistics(r).await
    }
    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Rs<pb::RepositoryIndexResponse> {
        NoopInferenceService.repository_index(r).await
    }
    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rs<pb::RepositoryModelLoadResponse> {
        NoopInferenceService.repository_model_load(r).await
    }
    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rs<pb::RepositoryModelUnloadResponse> {
        NoopInferenceService.repository_model_unload(r).await
    }
}

async fn serve(svc: Endless) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(svc))
            .serve_with_incoming(incoming)
            .await;
    });
    (url, task)
}

fn stream_request(deadline: Duration) -> InferRequest {
    InferRequest::new("llm")
        .input(Tensor::from_slice("INPUT0", &[1u8]))
        .deadline(deadline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_ends_ends_at_its_deadline() {
    let produced = Arc::new(AtomicUsize::new(0));
    let (url, server) = serve(Endless {
        count: 3,
        size: 16,
        produced: Arc::clone(&produced),
    })
    .await;
    let client = TritonClient::new(url).expect("client");
    let mut s = client
        .infer_stream(stream_request(Duration::from_secs(1)))
        .await
        .expect("stream");
    for _ in 0..3 {
        s.next().await.expect("a response").expect("ok");
    }
    let err = s.next().await.expect("an error").expect_err("deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(s.next().await.is_none(), "the stream ended");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_holds_back_a_flooding_server() {
    // The server could send 8192 × 16 KiB = 128 MiB. The consumer takes one
    // response and then stalls (the scenario, not a synchronisation): the
    // client buffers a bounded number of responses and HTTP/2 flow control
    // stops the server.
    const COUNT: usize = 8192;
    let produced = Arc::new(AtomicUsize::new(0));
    let (url, server) = serve(Endless {
        count: COUNT,
        size: 16 * 1024,
        produced: Arc::clone(&produced),
    })
    .await;
    let client = TritonClient::new(url).expect("client");
    let mut s = client
        .infer_stream(stream_request(Duration::from_secs(60)))
        .await
        .expect("stream");
    s.next().await.expect("a response").expect("ok");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let n = produced.load(Ordering::Relaxed);
    assert!(
        n < COUNT / 8,
        "the server produced {n} of {COUNT} responses while the consumer stalled"
    );
    // Reading again lets the server go on.
    for _ in 0..n {
        s.next().await.expect("a response").expect("ok");
    }
    assert!(produced.load(Ordering::Relaxed) > n, "the server resumed");
    drop(s);
    server.abort();
}
