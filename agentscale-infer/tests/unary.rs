//! The unary HTTP/2 transport (`src/unary.rs`) against tonic's server
//! (hyper and h2: a different HTTP/2 implementation) on loopback: flow
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

// ---------------------------------------------------------------------------
// 1. Large messages and flow control
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_default_server_windows() {
    large_round_trip(Opts::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_small_server_windows() {
    large_round_trip(Opts {
        stream_window: Some(65_535),
        connection_window: Some(65_535),
        ..Opts::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_message_round_trips_with_large_server_frames() {
    // The server accepts frames up to 16 MiB - 1, so our DATA frames may be
    // larger than the 16 KiB default; responses still come in 16 KiB frames.
    large_round_trip(Opts {
        max_frame_size: Some(16_777_215),
        ..Opts::default()
    })
    .await;
}

async fn rejected_early(opts: Opts) {
    // The server refuses requests over 1 MiB as soon as it reads the length
    // prefix, while ours is still being sent (or waiting for window).
    let server = TestServer::start(
        Svc::new(Infer::Echo),
        Opts {
            max_request: Some(1 << 20),
            ..opts
        },
    )
    .await;
    let client = client(&server.url());
    let too_large = vec![0.5f32; 2 * 1024 * 1024];
    for _ in 0..4 {
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            client.infer(&echo_request("echo", &too_large)),
        )
        .await
        .expect("the rejected call finishes");
        match r {
            Err(Error::Rpc { code, message }) => {
                assert_eq!(code, RpcCode::OutOfRange, "{message}");
                assert!(message.contains("too large"), "{message}");
            }
            other => panic!("expected the server's OutOfRange, got {other:?}"),
        }
    }
    // No flow-control window was lost with the unsent request bytes.
    let fits: Vec<f32> = (0..200_000).map(|i| i as f32).collect();
    for _ in 0..4 {
        echo_ok(&client, &fits).await;
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rejected_while_sending_leaves_the_connection_usable() {
    rejected_early(Opts::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_rejected_while_waiting_for_window_leaves_the_connection_usable() {
    rejected_early(Opts {
        stream_window: Some(65_535),
        connection_window: Some(65_535),
        ..Opts::default()
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Demultiplexing
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_get_their_own_responses() {
    let server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let client = client(&server.url());
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..40u32 {
                // Mostly small messages, every eighth one of 80 KB or more, so
                // that DATA frames of different streams interleave.
                let len = if c % 8 == 0 {
                    20_000 + t as usize
                } else {
                    2 + ((t * 7 + c) % 300) as usize
                };
                let mut data: Vec<f32> = (0..len)
                    .map(|k| (((t * 40 + c) * 31 + k as u32) % 65_536) as f32)
                    .collect();
                data[0] = t as f32;
                data[1] = c as f32;
                let id = format!("{t}/{c}");
                let req = echo_request("echo", &data).id(id.clone());
                let r = client
                    .infer(&req)
                    .await
                    .unwrap_or_else(|e| panic!("call {id}: {e}"));
                assert_eq!(r.id, id, "response id");
                assert_same(&output(&r), &data);
            }
        }));
    }
    join_all(tasks).await;
    assert_eq!(server.accepted(), 1, "every call on one connection");
}

// ---------------------------------------------------------------------------
// 3. The peer's stream limit
// ---------------------------------------------------------------------------

async fn sixty_four_at_once(client: &TritonClient) {
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = [i as f32, 0.5];
            let r = client
                .infer(&echo_request("slow", &data))
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_same(&output(&r), &data);
        }));
    }
    join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queue_for_the_peers_stream_limit() {
    let svc = Svc::new(Infer::Slow(Duration::from_millis(20)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_concurrent_streams: Some(4),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    // Cold: the calls may be written before the server's SETTINGS arrive
    // (refused streams are retried once).
    sixty_four_at_once(&client).await;
    // Warm: the limit is known; a client ignoring it would have streams
    // refused twice and fail.
    svc.peak.store(0, Ordering::SeqCst);
    sixty_four_at_once(&client).await;
    assert!(svc.peak.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        svc.peak.load(Ordering::SeqCst),
        4,
        "the client uses every stream slot the server allows"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_before_the_peers_settings_are_retried() {
    // The server's SETTINGS (its limit of 4 streams) reach the client only
    // after it has sent all 64 calls: the server refuses 60 of them
    // (REFUSED_STREAM, nothing processed) and the client sends them again,
    // now within the limit.
    let svc = Svc::new(Infer::Slow(Duration::from_millis(20)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_concurrent_streams: Some(4),
            ..Opts::default()
        },
    )
    .await;
    let proxy = Proxy::start_with(server.addr, Some(Duration::from_millis(300)), None).await;
    let client = client(&proxy.url());
    sixty_four_at_once(&client).await;
    assert!(svc.peak.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        svc.methods().len(),
        64,
        "each call was processed once (refused streams never reach the service)"
    );
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_free_their_stream_slots() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(
        Svc::new(Infer::Hang(tx)),
        Opts {
            max_concurrent_streams: Some(2),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    // Learn the limit first.
    echo_ok(&client, &[1.0]).await;
    // Two calls take both slots; four more wait for one.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let _ = client.infer(&echo_request("hang", &[0.0])).await;
        }));
    }
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Started).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.expect_err("aborted").is_cancelled());
    }
    // The server saw every call it started cancelled (RST_STREAM). A
    // waiting call may have taken a freed slot before its own abort.
    let (mut started, mut dropped) = (2, 0);
    while dropped < started {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{dropped} of {started} handlers dropped"))
            .expect("event channel open");
        match event {
            Event::Started => started += 1,
            Event::Dropped => dropped += 1,
        }
    }
    // Every slot is free again: more calls than slots complete.
    for i in 0..8 {
        let data = [i as f32];
        let r = client
            .infer(&echo_request("echo", &data).deadline(PATIENCE))
            .await
            .unwrap_or_else(|e| panic!("call {i} after cancellations: {e}"));
        assert_same(&output(&r), &data);
    }
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 4. Request headers
// ---------------------------------------------------------------------------

/// Parses a `grpc-timeout` value (at most 8 digits and a unit).
fn parse_grpc_timeout(v: &str) -> Duration {
    assert!(v.len() >= 2 && v.len() <= 9, "grpc-timeout '{v}'");
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().unwrap_or_else(|_| panic!("grpc-timeout '{v}'"));
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("grpc-timeout '{v}': unit"),
    }
}

fn assert_grpc_headers(s: &Seen) {
    assert_eq!(s.header("content-type"), Some("application/grpc"), "{s:?}");
    assert_eq!(s.header("te"), Some("trailers"), "{s:?}");
    let ua = s.header("user-agent").expect("user-agent");
    assert!(ua.starts_with("agentscale-infer/"), "user-agent '{ua}'");
}

#[tokio::test]
async fn request_headers() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(
        svc.clone(),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;

    let builder = TritonClient::builder(server.url())
        .bearer_token("s3cret-token")
        .header("x-agentscale-test", "1")
        .header("X-Agentscale-Tenant", "team-a");
    let shown = format!("{builder:?}");
    assert!(
        !shown.contains("s3cret") && shown.contains("authorization"),
        "{shown}"
    );
    let plain = builder.build().expect("client");
    let shown = format!("{plain:?}");
    assert!(!shown.contains("s3cret") && !shown.contains("team-a"), "{shown}");
    assert!(shown.contains("authorization"), "{shown}");
    echo_ok(&plain, &[1.0]).await;
    let r = plain
        .infer(&echo_request("echo", &[2.0]).deadline(Duration::from_secs(2)))
        .await
        .expect("call with a deadline");
    assert_same(&output(&r), &[2.0]);
    assert!(plain.server_live().await.expect("live"));

    let seen = svc.seen();
    assert_eq!(
        seen.iter().map(|s| s.method).collect::<Vec<_>>(),
        ["ModelInfer", "ModelInfer", "ServerLive"]
    );
    for s in &seen {
        assert_grpc_headers(s);
        assert_eq!(s.header("authorization"), Some("Bearer s3cret-token"), "{s:?}");
        assert_eq!(s.header("x-agentscale-test"), Some("1"), "{s:?}");
        assert_eq!(s.header("x-agentscale-tenant"), Some("team-a"), "{s:?}");
        assert_eq!(s.header("grpc-encoding"), None, "not compressed: {s:?}");
    }
    // Calls without a deadline of their own carry the client's default.
    for i in [0, 2] {
        let t = parse_grpc_timeout(seen[i].header("grpc-timeout").expect("default deadline"));
        assert_eq!(t, agentscale_infer::DEFAULT_DEADLINE, "{:?}", seen[i]);
    }
    let t = parse_grpc_timeout(
        seen[1]
            .header("grpc-timeout")
            .expect("grpc-timeout with a deadline"),
    );
    assert!(
        t > Duration::from_secs(1) && t <= Duration::from_secs(2),
        "grpc-timeout {t:?} for a 2 s deadline"
    );

    svc.clear();
    let gzip = TritonClient::builder(server.url())
        .gzip(true)
        .default_deadline(Duration::from_secs(3))
        .build()
        .expect("client");
    assert!(gzip.server_ready().await.expect("ready"));
    echo_ok(&gzip, &[3.0]).await;
    let seen = svc.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_grpc_headers(s);
        assert_eq!(s.header("grpc-encoding"), Some("gzip"), "{s:?}");
        let accept = s.header("grpc-accept-encoding").expect("grpc-accept-encoding");
        assert!(accept.split(',').any(|e| e.trim() == "gzip"), "{s:?}");
        assert_eq!(s.header("authorization"), None, "{s:?}");
        let t = parse_grpc_timeout(s.header("grpc-timeout").expect("default deadline sent"));
        assert!(
            t > Duration::from_secs(2) && t <= Duration::from_secs(3),
            "grpc-timeout {t:?} for a 3 s default deadline"
        );
    }
}

#[tokio::test]
async fn header_blocks_larger_than_a_frame() {
    // Over 16 KiB: our HEADERS are followed by CONTINUATION frames, and so
    // are the server's trailers carrying a long grpc-message.
    let svc = Svc::new(Infer::Fail(Code::FailedPrecondition, "why? ".repeat(8_000)));
    let server = TestServer::start(
        svc.clone(),
        Opts {
            max_header_list: Some(1 << 20),
            ..Opts::default()
        },
    )
    .await;
    let token: String = (0..40_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let client = TritonClient::builder(server.url())
        .bearer_token(&token)
        .max_header_list_size(1 << 20)
        .build()
        .expect("client");
    assert!(client.server_live().await.expect("live"));
    match client.infer(&echo_request("m", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::FailedPrecondition);
            // Server-controlled text is clipped in errors.
            assert!(message.starts_with("why? why? "), "{message}");
            assert!(message.len() < 1_000, "{} bytes", message.len());
        }
        other => panic!("expected Rpc FailedPrecondition, got {other:?}"),
    }
    echo_ok(&client, &[1.0]).await;
    let seen = svc.seen();
    assert_eq!(seen.len(), 3);
    let want = format!("Bearer {token}");
    for s in &seen {
        assert_eq!(s.header("authorization"), Some(want.as_str()), "{}", s.method);
    }
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 5. gzip both ways
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_both_ways() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(
        svc.clone(),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;
    // 1 MiB of very compressible floats.
    let data: Vec<f32> = (0..256 * 1024).map(|i| (i % 64) as f32).collect();
    const MIB: u64 = 1024 * 1024;

    let proxy = Proxy::start(server.addr).await;
    let client = TritonClient::builder(proxy.url())
        .gzip(true)
        .build()
        .expect("client");
    echo_ok(&client, &data).await;
    assert!(
        proxy.up() < MIB / 4,
        "request compressed: {} bytes sent",
        proxy.up()
    );
    assert!(
        proxy.down() < MIB / 4,
        "response compressed: {} bytes received",
        proxy.down()
    );
    assert_eq!(svc.seen()[0].header("grpc-encoding"), Some("gzip"));
    // Again on the same connection.
    echo_ok(&client, &data).await;
    echo_ok(&client, &[0.5]).await;

    // Control: the same call uncompressed moves the whole megabyte each way.
    let proxy = Proxy::start(server.addr).await;
    let plain = TritonClient::new(proxy.url()).expect("client");
    echo_ok(&plain, &data).await;
    assert!(proxy.up() > MIB, "{} bytes sent", proxy.up());
    assert!(proxy.down() > MIB, "{} bytes received", proxy.down());
}

// ---------------------------------------------------------------------------
// 6. Status errors
// ---------------------------------------------------------------------------

async fn infer_error(infer: Infer) -> Error {
    let server = TestServer::start(Svc::new(infer), Opts::default()).await;
    let client = client(&server.url());
    let err = client
        .infer(&echo_request("m", &[1.0]))
        .await
        .expect_err("the handler fails");
    // The connection survives a failed call.
    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1);
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_statuses_become_rpc_errors() {
    let message = "model 'x' is unknown: 100% sure\n";
    match infer_error(Infer::Fail(Code::NotFound, message.into())).await {
        Error::Rpc { code, message: m } => {
            assert_eq!(code, RpcCode::NotFound);
            assert_eq!(m, message);
        }
        other => panic!("expected Rpc NotFound, got {other:?}"),
    }

    let message = "r\u{e9}sum\u{e9} \u{2713} {a} <b> #c ?d `e` \"f\" %41 \t end";
    match infer_error(Infer::Fail(Code::Unavailable, message.into())).await {
        Error::Rpc { code, message: m } => {
            assert_eq!(code, RpcCode::Unavailable);
            assert_eq!(m, message);
        }
        other => panic!("expected Rpc Unavailable, got {other:?}"),
    }

    match infer_error(Infer::Fail(Code::Internal, String::new())).await {
        Error::Rpc { code, message } => {
            assert_eq!(code, RpcCode::Internal);
            assert_eq!(message, "");
        }
        other => panic!("expected Rpc Internal, got {other:?}"),
    }

    let err = infer_error(Infer::Fail(Code::DeadlineExceeded, "too slow".into())).await;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(err.to_string().contains("too slow"), "{err}");

    let mut svc = Svc::new(Infer::Echo);
    svc.ready_error = Some((Code::InvalidArgument, "version 'abc' is not a number".into()));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = client(&server.url());
    match client.model_ready("m", "abc").await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::InvalidArgument);
            assert_eq!(message, "version 'abc' is not a number");
        }
        other => panic!("expected Rpc InvalidArgument, got {other:?}"),
    }
    assert_eq!(svc.seen()[0].detail, "m@abc");
    assert!(client.server_live().await.expect("live"));
}

// ---------------------------------------------------------------------------
// 7. Deadlines and cancellation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expires_and_the_server_call_is_cancelled() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(Svc::new(Infer::Hang(tx)), Opts::default()).await;
    // tonic's server enforces grpc-timeout too, and answers CANCELLED
    // ("Timeout expired") when it expires; 100 ms of latency to the server
    // makes its clock start well after ours, so that our deadline is the
    // one that expires (see `dropping_a_call_resets_its_stream` for
    // cancellation without grpc-timeout).
    let proxy = Proxy::start_with(server.addr, None, Some(Duration::from_millis(100))).await;
    let client = client(&proxy.url());
    // Connected.
    echo_ok(&client, &[1.0]).await;

    let err = client
        .infer(&echo_request("hang", &[1.0]).deadline(Duration::from_millis(200)))
        .await
        .expect_err("deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Dropped).await;

    // The same client still works, on the same connection.
    echo_ok(&client, &[4.0, 5.0]).await;
    assert_eq!(server.accepted(), 1);

    // A default deadline works the same way.
    let with_default = TritonClient::builder(proxy.url())
        .default_deadline(Duration::from_millis(200))
        .build()
        .expect("client");
    let err = with_default
        .infer(&echo_request("hang", &[1.0]))
        .await
        .expect_err("default deadline");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    next_event(&mut events, Event::Started).await;
    next_event(&mut events, Event::Dropped).await;
    echo_ok(&with_default, &[6.0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_resets_its_stream() {
    // A deadline far away: only our RST_STREAM can end the server's
    // handler.
    let (tx, mut events) = mpsc::unbounded_channel();
    let svc = Svc::new(Infer::Hang(tx));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = TritonClient::builder(server.url())
        .default_deadline(Duration::from_secs(3600))
        .build()
        .expect("client");
    echo_ok(&client, &[1.0]).await;

    let c = client.clone();
    let call = tokio::spawn(async move { c.infer(&echo_request("hang", &[1.0])).await });
    next_event(&mut events, Event::Started).await;
    call.abort();
    assert!(call.await.expect_err("aborted").is_cancelled());
    next_event(&mut events, Event::Dropped).await;

    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1, "the stream was reset, not the connection");
}

// ---------------------------------------------------------------------------
// 8. Server restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts() {
    let server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let addr = server.addr;
    let client = client(&server.url());
    echo_ok(&client, &[1.0]).await;
    server.kill().await;

    let err = client
        .infer(&echo_request("echo", &[2.0]))
        .await
        .expect_err("server down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    let err = client.server_live().await.expect_err("still down");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");

    let server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[3.0]).await;
    assert!(client.server_live().await.expect("live"));
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 9. Maximum message size
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_both_ways() {
    let svc = Svc::new(Infer::Big(4000));
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = TritonClient::builder(server.url())
        .max_message_size(1000)
        .build()
        .expect("client");

    let data = vec![0.25f32; 1000];
    let err = client
        .infer(&echo_request("echo", &data))
        .await
        .expect_err("request too large");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err:?}");
    assert!(svc.seen().is_empty(), "nothing was sent");
    assert_eq!(server.accepted(), 0, "not even a connection");

    match client.infer(&echo_request("big", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::OutOfRange, "{message}");
        }
        other => panic!("expected Rpc OutOfRange, got {other:?}"),
    }
    // Small calls still pass on the same connection.
    echo_ok(&client, &[1.0, 2.0]).await;
    assert_eq!(server.accepted(), 1);

    // The limit applies to the decompressed response.
    let server = TestServer::start(
        Svc::new(Infer::Big(4000)),
        Opts {
            gzip: true,
            ..Opts::default()
        },
    )
    .await;
    let proxy = Proxy::start(server.addr).await;
    let gzip = TritonClient::builder(proxy.url())
        .gzip(true)
        .max_message_size(1000)
        .build()
        .expect("client");
    match gzip.infer(&echo_request("big", &[1.0])).await {
        Err(Error::Rpc { code, message }) => {
            assert_eq!(code, RpcCode::ResourceExhausted, "{message}");
        }
        other => panic!("expected Rpc ResourceExhausted, got {other:?}"),
    }
    assert!(
        proxy.down() < 1000,
        "the response came compressed: {} bytes",
        proxy.down()
    );
    echo_ok(&gzip, &[1.0, 2.0]).await;
}

// ---------------------------------------------------------------------------
// 10. Admin calls
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_calls() {
    let svc = Svc::new(Infer::Echo);
    let server = TestServer::start(svc.clone(), Opts::default()).await;
    let client = client(&server.url());

    assert!(client.server_live().await.expect("live"));
    assert!(client.server_ready().await.expect("ready"));
    assert!(client.model_ready("resnet", "3").await.expect("model ready"));
    let meta = client.server_metadata().await.expect("server metadata");
    assert_eq!(meta.name, "agentscale-noop");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert!(meta.extensions.is_empty());
    let model = client.model_metadata("resnet", "").await.expect("model metadata");
    assert_eq!(model.name, "resnet");
    assert!(model.inputs.is_empty() && model.outputs.is_empty() && model.versions.is_empty());
    let config = client.model_config("bert", "7").await.expect("model config");
    assert_eq!(config.name, "bert");
    assert!(client
        .model_statistics("", "")
        .await
        .expect("statistics")
        .is_empty());
    assert!(client
        .repository_index(true)
        .await
        .expect("repository index")
        .is_empty());
    client.load_model("gpt").await.expect("load");
    client.unload_model("gpt").await.expect("unload");

    assert_eq!(
        svc.methods(),
        [
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelConfig",
            "ModelStatistics",
            "RepositoryIndex",
            "RepositoryModelLoad",
            "RepositoryModelUnload",
        ]
    );
    let details: Vec<String> = svc.seen().into_iter().map(|s| s.detail).collect();
    assert_eq!(details[2], "resnet@3");
    assert_eq!(details[4], "resnet@");
    assert_eq!(details[5], "bert@7");
    assert_eq!(details[8], "gpt");
    assert_eq!(details[9], "gpt");
    assert_eq!(server.accepted(), 1);
}

// ---------------------------------------------------------------------------
// 11. GOAWAY (graceful server shutdown)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_while_idle_reconnects() {
    let mut server = TestServer::start(Svc::new(Infer::Echo), Opts::default()).await;
    let addr = server.addr;
    let client = client(&server.url());
    echo_ok(&client, &[1.0]).await;

    // GOAWAY on the idle connection; a new server on the same port.
    server.begin_graceful_shutdown();
    server.stopped().await;
    let mut server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[2.0]).await;
    assert_eq!(server.accepted(), 1);

    // GOAWAY and no server: the next call is Unavailable, and succeeds once
    // a server is back.
    server.begin_graceful_shutdown();
    server.stopped().await;
    let err = client
        .infer(&echo_request("echo", &[3.0]))
        .await
        .expect_err("no server");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    let server = TestServer::start_on(addr, Svc::new(Infer::Echo), Opts::default()).await;
    echo_ok(&client, &[4.0]).await;
    assert_eq!(server.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_moves_new_calls_to_a_new_connection_while_open_calls_finish() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let mut old = TestServer::start(Svc::new(Infer::Gate(Arc::clone(&gate), tx)), Opts::default()).await;
    let addr = old.addr;
    // Through a proxy, to see when the GOAWAY has gone to the client.
    let proxy = Proxy::start(addr).await;
    let client = client(&proxy.url());
    echo_ok(&client, &[1.0]).await;

    let c = client.clone();
    let open = tokio::spawn(async move { c.infer(&echo_request("gated", &[7.0, 8.0])).await });
    next_event(&mut events, Event::Started).await;
    let before = proxy.down();
    old.begin_graceful_shutdown();
    // GOAWAY is a 17-byte frame; give the client a moment to read it.
    eventually("GOAWAY sent to the client", || proxy.down() >= before + 17).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The old server stopped listening at once; a new one takes the port
    // while the old connection drains. A new call must not go to the old
    // connection (the server ignores streams above its GOAWAY).
    let new_svc = Svc::new(Infer::Echo);
    let new = TestServer::start_on(addr, new_svc.clone(), Opts::default()).await;
    echo_ok(&client, &[3.0]).await;
    assert_eq!(
        new_svc.methods(),
        ["ModelInfer"],
        "the new call went to the new server"
    );
    assert_eq!(new.accepted(), 1);
    assert!(!open.is_finished(), "the open call waits for its handler");

    // The call open before the GOAWAY completes on the old connection.
    gate.add_permits(1);
    let r = tokio::time::timeout(PATIENCE, open)
        .await
        .expect("the open call finishes")
        .expect("task")
        .expect("the open call succeeds despite GOAWAY");
    assert_same(&output(&r), &[7.0, 8.0]);
    old.stopped().await;
    echo_ok(&client, &[9.0]).await;
    assert_eq!(new.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_the_server_retiring_connections() {
    // The server sends GOAWAY to each connection after 100 ms, while calls
    // keep coming: every call must succeed, on one connection or the next.
    let server = TestServer::start(
        Svc::new(Infer::Slow(Duration::from_millis(5))),
        Opts {
            max_connection_age: Some(Duration::from_millis(100)),
            ..Opts::default()
        },
    )
    .await;
    let client = client(&server.url());
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..60u32 {
                let data = [t as f32, c as f32];
                let r = client
                    .infer(&echo_request("slow", &data))
                    .await
                    .unwrap_or_else(|e| panic!("call {t}/{c}: {e}"));
                assert_same(&output(&r), &data);
            }
        }));
    }
    join_all(tasks).await;
    assert!(server.accepted() >= 2, "connections were retired and replaced");
}

// ---------------------------------------------------------------------------
// 12. Keepalive
// ---------------------------------------------------------------------------

/// Waits until `f` holds, polling; fails after [`PATIENCE`].
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_while_calls_are_open_and_detects_a_dead_peer() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(Svc::new(Infer::Hang(tx)), Opts::default()).await;
    let proxy = Proxy::start(server.addr).await;
    let client = TritonClient::builder(proxy.url())
        .keepalive(Some((Duration::from_millis(100), Duration::from_millis(500))))
        .build()
        .expect("client");
    assert!(client.server_live().await.expect("live"));

    // Idle: no pings (after a moment for frames queued with the response,
    // such as the SETTINGS ack, to be written).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = proxy.up();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(proxy.up(), idle, "the client sent frames while idle");

    // A call is open: pings (17-byte frames) go out and are answered.
    let c = client.clone();
    let call = tokio::spawn(async move { c.infer(&echo_request("hang", &[1.0])).await });
    next_event(&mut events, Event::Started).await;
    let open = proxy.up();
    eventually("three keepalive pings", || proxy.up() >= open + 3 * 17).await;
    assert!(!call.is_finished(), "answered pings keep the call open");

    // The peer goes silent: the call fails once a ping is not answered.
    proxy.freeze_existing();
    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("keepalive ends the call")
        .expect("task")
        .expect_err("dead connection");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");

    // A new connection is made for the next call.
    assert!(client.server_live().await.expect("live after reconnecting"));
}
