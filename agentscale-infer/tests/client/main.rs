//! The client's calls against tonic's server (hyper's server side, a
//! different HTTP/2 stack from the client's) on loopback: flow
//! control with large messages, demultiplexing of concurrent calls, the
//! peer's stream limit, request headers, gzip, gRPC statuses, deadlines and
//! cancellation (RST_STREAM), requests the server rejects while they are
//! being sent, server restarts, GOAWAY, keepalive and the maximum message
//! size.
//!
//! Each server runs on a runtime of its own, so that a test can kill it
//! with every connection at once (tonic serves each connection on a task
//! of its own, which aborting the accept loop would leave running).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::{Error, ErrorKind, RpcCode};
use agentscale_infer::pb;
use agentscale_infer::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use agentscale_infer::testing::{echo, NoopInferenceService};
use agentscale_infer::{InferRequest, InferResponse, Tensor, TritonClient};
use futures::StreamExt as _;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};

type Rs<T> = std::result::Result<Response<T>, Status>;

/// Generous bound for events that should happen promptly; reaching it is a
/// failure, never a measurement.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// The test service
// ---------------------------------------------------------------------------

/// What `ModelInfer` does for every model except `echo` (which always echoes
/// its inputs as `OUTPUT<i>`, like [`NoopInferenceService`]).
#[derive(Clone)]
enum Infer {
    Echo,
    /// Fails with this status.
    Fail(Code, String),
    /// Reports `Started`, then waits (30 s) holding a guard that reports
    /// `Dropped` when the handler future is dropped.
    Hang(mpsc::UnboundedSender<Event>),
    /// Reports `Started`, waits for a permit, then echoes.
    Gate(Arc<Semaphore>, mpsc::UnboundedSender<Event>),
    /// Echoes after a pause, counting handlers running at once.
    Slow(Duration),
    /// Answers with one UINT8 output of this many bytes (all 7).
    Big(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Started,
    Dropped,
}

/// Reports `Dropped` when the handler holding it is dropped.
struct DropSignal(mpsc::UnboundedSender<Event>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(Event::Dropped);
    }
}

/// One call as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: &'static str,
    /// Request metadata (every HTTP header the server got), in order.
    headers: Vec<(String, String)>,
    /// The model name (and version) the request named, where it has one.
    detail: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Delegates to [`NoopInferenceService`], except `ModelInfer` (see [`Infer`])
/// and, when set, a failing `ModelReady`; records every call.
#[derive(Clone)]
struct Svc {
    infer: Infer,
    ready_error: Option<(Code, String)>,
    seen: Arc<Mutex<Vec<Seen>>>,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Svc {
    fn new(infer: Infer) -> Svc {
        Svc {
            infer,
            ready_error: None,
            seen: Arc::default(),
            active: Arc::default(),
            peak: Arc::default(),
        }
    }

    fn record<T>(&self, method: &'static str, r: &Request<T>, detail: String) {
        let map = r.metadata().clone().into_headers();
        let headers = map
            .iter()
            .map(|(k, v)| {
                let v = v.to_str().unwrap_or("<not ascii>");
                (k.as_str().to_string(), v.to_string())
            })
            .collect();
        self.seen.lock().push(Seen {
            method,
            headers,
            detail,
        });
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    fn methods(&self) -> Vec<&'static str> {
        self.seen.lock().iter().map(|s| s.method).collect()
    }

    fn clear(&self) {
        self.seen.lock().clear();
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Svc {
    async fn server_live(&self, r: Request<pb::ServerLiveRequest>) -> Rs<pb::ServerLiveResponse> {
        self.record("ServerLive", &r, String::new());
        NoopInferenceService.server_live(r).await
    }
    async fn server_ready(&self, r: Request<pb::ServerReadyRequest>) -> Rs<pb::ServerReadyResponse> {
        self.record("ServerReady", &r, String::new());
        NoopInferenceService.server_ready(r).await
    }
    async fn model_ready(&self, r: Request<pb::ModelReadyRequest>) -> Rs<pb::ModelReadyResponse> {
        let detail = format!("{}@{}", r.get_ref().name, r.get_ref().version);
        self.record("ModelReady", &r, detail);
        if let Some((code, message)) = &self.ready_error {
            return Err(Status::new(*code, message.clone()));
        }
        NoopInferenceService.model_ready(r).await
    }
    async fn server_metadata(&self, r: Request<pb::ServerMetadataRequest>) -> Rs<pb::ServerMetadataResponse> {
        self.record("ServerMetadata", &r, String::new());
        NoopInferenceService.server_metadata(r).await
    }
    async fn model_metadata(&self, r: Request<pb::ModelMetadataRequest>) -> Rs<pb::ModelMetadataResponse> {
        let detail = format!("{}@{}", r.get_ref().name, r.get_ref().version);
        self.record("ModelMetadata", &r, detail);
        NoopInferenceService.model_metadata(r).await
    }
    async fn model_infer(&self, r: Request<pb::ModelInferRequest>) -> Rs<pb::ModelInferResponse> {
        self.record("ModelInfer", &r, r.get_ref().model_name.clone());
        let req = r.into_inner();
        if req.model_name == "echo" {
            return Ok(Response::new(echo(req)));
        }
        match &self.infer {
            Infer::Echo => Ok(Response::new(echo(req))),
            Infer::Fail(code, message) => Err(Status::new(*code, message.clone())),
            Infer::Hang(events) => {
                let _ = events.send(Event::Started);
                let _guard = DropSignal(events.clone());
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(Status::internal("the hanging handler was not cancelled"))
            }
            Infer::Gate(permits, events) => {
                let _ = events.send(Event::Started);
                permits
                    .acquire()
                    .await
                    .map_err(|_| Status::internal("gate closed"))?
                    .forget();
                Ok(Response::new(echo(req)))
            }
            Infer::Slow(pause) => {
                let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(*pause).await;
                self.active.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::new(echo(req)))
            }
            Infer::Big(n) => Ok(Response::new(pb::ModelInferResponse {
                model_name: req.model_name,
                model_version: "1".into(),
                id: req.id,
                parameters: Default::default(),
                outputs: vec![pb::model_infer_response::InferOutputTensor {
                    name: "OUTPUT0".into(),
                    datatype: "UINT8".into(),
                    shape: vec![*n as i64],
                    parameters: Default::default(),
                    contents: None,
                }],
                raw_output_contents: vec![vec![7u8; *n].into()],
            })),
        }
    }
    type ModelStreamInferStream = <NoopInferenceService as GrpcInferenceService>::ModelStreamInferStream;
    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Rs<Self::ModelStreamInferStream> {
        NoopInferenceService.model_stream_infer(r).await
    }
    async fn model_config(&self, r: Request<pb::ModelConfigRequest>) -> Rs<pb::ModelConfigResponse> {
        let detail = format!("{}@{}", r.get_ref().name, r.get_ref().version);
        self.record("ModelConfig", &r, detail);
        NoopInferenceService.model_config(r).await
    }
    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Rs<pb::ModelStatisticsResponse> {
        self.record("ModelStatistics", &r, String::new());
        NoopInferenceService.model_statistics(r).await
    }
    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Rs<pb::RepositoryIndexResponse> {
        self.record("RepositoryIndex", &r, String::new());
        NoopInferenceService.repository_index(r).await
    }
    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Rs<pb::RepositoryModelLoadResponse> {
        let detail = r.get_ref().model_name.clone();
        self.record("RepositoryModelLoad", &r, detail);
        NoopInferenceService.repository_model_load(r).await
    }
    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Rs<pb::RepositoryModelUnloadResponse> {
        let detail = r.get_ref().model_name.clone();
        self.record("RepositoryModelUnload", &r, detail);
        NoopInferenceService.repository_model_unload(r).await
    }
}

// ---------------------------------------------------------------------------
// The test server
// ---------------------------------------------------------------------------

/// tonic `Server::builder()` settings (None: tonic's and hyper's defaults).
#[derive(Debug, Clone, Copy, Default)]
struct Opts {
    max_concurrent_streams: Option<u32>,
    stream_window: Option<u32>,
    connection_window: Option<u32>,
    max_frame_size: Option<u32>,
    /// The service sends and accepts gzip.
    gzip: bool,
    /// The service's request size limit (default: none).
    max_request: Option<usize>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    max_header_list: Option<u32>,
    /// The server says GOAWAY to every connection this old.
    max_connection_age: Option<Duration>,
}

/// A tonic server on a runtime of its own.
struct TestServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
}

/// Binds `addr`, retrying while the port is still taken (a server on it was
/// just stopped).
async fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let mut last = None;
    for _ in 0..200 {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
    panic!("bind {addr}: still in use: {last:?}");
}

impl TestServer {
    async fn start(svc: Svc, opts: Opts) -> TestServer {
        TestServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), svc, opts).await
    }

    async fn start_on(addr: SocketAddr, svc: Svc, opts: Opts) -> TestServer {
        let listener = bind(addr).await;
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let (tx, rx) = oneshot::channel::<()>();
        let mut service = GrpcInferenceServiceServer::new(svc)
            .max_decoding_message_size(opts.max_request.unwrap_or(usize::MAX))
            .max_encoding_message_size(usize::MAX);
        if opts.gzip {
            service = service
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        let serving = rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            });
            let mut builder = Server::builder()
                .initial_stream_window_size(opts.stream_window)
                .initial_connection_window_size(opts.connection_window)
                .max_frame_size(opts.max_frame_size)
                .http2_max_header_list_size(opts.max_header_list);
            if let Some(n) = opts.max_concurrent_streams {
                builder = builder.max_concurrent_streams(n);
            }
            if let Some(age) = opts.max_connection_age {
                builder = builder.max_connection_age(age);
            }
            // Shut down gracefully only when asked (not when the sender is
            // dropped: a killed server must not say GOAWAY).
            let signal = async move {
                if rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .expect("serve");
        });
        TestServer {
            addr,
            accepted,
            rt: Some(rt),
            shutdown: Some(tx),
            serving: Some(serving),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops the server abruptly: the listener and every connection are
    /// closed at once (no GOAWAY), as when the process dies.
    async fn kill(mut self) {
        let rt = self.rt.take().expect("runtime");
        tokio::task::spawn_blocking(move || rt.shutdown_timeout(PATIENCE))
            .await
            .expect("runtime shutdown");
    }

    /// Tells the server to shut down gracefully (GOAWAY on every
    /// connection); returns at once. See [`TestServer::stopped`].
    fn begin_graceful_shutdown(&mut self) {
        self.shutdown
            .take()
            .expect("not shut down yet")
            .send(())
            .expect("server listening for shutdown");
    }

    /// Waits until a graceful shutdown finished: the listener is closed and
    /// every connection has ended.
    async fn stopped(mut self) {
        let serving = self.serving.take().expect("serving");
        tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("graceful shutdown finishes")
            .expect("server task");
        self.kill().await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// A byte-counting TCP proxy that can go silent
// ---------------------------------------------------------------------------

/// Forwards TCP connections to `upstream`, counting bytes each way. Frozen
/// connections swallow everything in both directions but stay open.
struct Proxy {
    addr: SocketAddr,
    /// Client to server bytes.
    up: Arc<AtomicU64>,
    /// Server to client bytes.
    down: Arc<AtomicU64>,
    /// One flag per accepted connection.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: Arc<AtomicU64>,
    frozen: Arc<AtomicBool>,
    mut hold_first: Option<Duration>,
    latency: Option<Duration>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(d) = hold_first.take().or(latency) {
            tokio::time::sleep(d).await;
        }
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if !frozen.load(Ordering::SeqCst) {
        let _ = to.shutdown().await;
    } else {
        // Keep the socket open: a frozen peer neither answers nor closes.
        std::future::pending::<()>().await;
    }
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start_with(upstream, None, None).await
    }

    /// A proxy that holds the server's first bytes on each connection (its
    /// SETTINGS) for `hold`, and delays every write to the server by
    /// `latency`.
    async fn start_with(upstream: SocketAddr, hold: Option<Duration>, latency: Option<Duration>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let (u, d, f) = (Arc::clone(&up), Arc::clone(&down), Arc::clone(&frozen));
        let task = tokio::spawn(async move {
            let mut pumps = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let flag = Arc::new(AtomicBool::new(false));
                f.lock().push(Arc::clone(&flag));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let up = pump(cr, sw, Arc::clone(&u), Arc::clone(&flag), None, latency);
                pumps.push(tokio::spawn(up));
                pumps.push(tokio::spawn(pump(sr, cw, Arc::clone(&d), flag, hold, None)));
            }
        });
        Proxy {
            addr,
            up,
            down,
            frozen,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }

    fn down(&self) -> u64 {
        self.down.load(Ordering::SeqCst)
    }

    /// Silences every connection accepted so far; later ones work.
    fn freeze_existing(&self) {
        for f in self.frozen.lock().iter() {
            f.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn client(url: &str) -> TritonClient {
    TritonClient::builder(url).build().expect("client")
}

fn echo_request(model: &str, data: &[f32]) -> InferRequest {
    InferRequest::new(model)
        .input(Tensor::from_slice("INPUT0", data))
        .output("OUTPUT0")
}

fn output(r: &InferResponse) -> Vec<f32> {
    r.output("OUTPUT0")
        .expect("OUTPUT0")
        .to_vec::<f32>()
        .expect("fp32 output")
}

/// Compares two long float vectors without printing them whole.
fn assert_same(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "output length");
    if let Some(i) = (0..want.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "output differs first at element {i} of {}: got {}, want {}",
            want.len(),
            got[i],
            want[i]
        );
    }
}

async fn echo_ok(client: &TritonClient, data: &[f32]) {
    // A bound for a transport that stalls (a lost WINDOW_UPDATE, say): a
    // failure, not a measurement.
    let r = tokio::time::timeout(Duration::from_secs(60), client.infer(&echo_request("echo", data)))
        .await
        .expect("the echo call finishes")
        .expect("echo call");
    assert_same(&output(&r), data);
}

/// Waits for every task; a failure if they stall (bound: 60 s).
async fn join_all(tasks: Vec<JoinHandle<()>>) {
    let all = async {
        for t in tasks {
            t.await.expect("task");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("the calls finish");
}

/// The next event, or a failure after [`PATIENCE`].
async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, want: Event) {
    let got = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no {want:?} event within {PATIENCE:?}"))
        .expect("event channel open");
    assert_eq!(got, want);
}

/// 24 MiB of FP32, all values distinct.
fn large_input() -> Vec<f32> {
    (0..24 * 1024 * 1024 / 4).map(|i| i as f32).collect()
}

async fn large_round_trip(opts: Opts) {
    let server = TestServer::start(Svc::new(Infer::Echo), opts).await;
    let client = client(&server.url());
    let data = large_input();
    echo_ok(&client, &data).await;
    // The connection (and its flow-control windows) is still good.
    echo_ok(&client, &data).await;
    echo_ok(&client, &[1.0, 2.0]).await;
    assert_eq!(server.accepted(), 1, "one connection for every call");
}

mod calls;
mod connection;
