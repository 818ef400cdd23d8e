//! The HTTP/2 transport under [`TritonClient`](crate::TritonClient): one
//! [`h2`] connection per client, driven by one task, with requests written
//! straight onto it from the calling task. Every call — unary, streaming,
//! admin — runs on it through tonic's generated gRPC client and codec; no
//! frame is parsed or written here, h2 does all of HTTP/2 (HPACK, flow
//! control, SETTINGS, PING, GOAWAY) and enforces the limits set below.
//!
//! tonic's own `Channel` puts a `tower::buffer` worker task and hyper's
//! dispatch task between the caller and the connection, and hyper pipes
//! every request body through another spawned task. Here a unary call
//! encodes its body in the calling task (tonic's encoder is ready at once
//! for a single message) and hands HEADERS and DATA to h2 together.
//! Streaming request bodies (`ModelStreamInfer`) are piped by a task per
//! call, with flow-control backpressure; dropping the response cancels the
//! stream.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::uri::{PathAndQuery, Scheme, Uri};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// hyper's client defaults: a 2 MiB stream window and a 5 MiB connection
/// window, so large tensors do not wait on WINDOW_UPDATE round trips.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// How often a refused, fully buffered request is sent again.
const MAX_REFUSALS: u32 = 3;
const USER_AGENT: &str = concat!("agentscale-infer/", env!("CARGO_PKG_VERSION"));

/// TLS for a [`Channel`]: a rustls connector (ALPN `h2`) and the server name.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
}

/// Where and how a [`Channel`] connects.
#[derive(Clone)]
pub(crate) struct ChannelConfig {
    /// `scheme://authority` of the server.
    pub(crate) origin: Uri,
    pub(crate) tls: Option<Tls>,
    pub(crate) connect_timeout: Duration,
    /// Ping interval and ack timeout; pings are sent only while calls are open.
    pub(crate) keepalive: Option<(Duration, Duration)>,
    /// Largest decoded response header list h2 accepts (HPACK output, not
    /// the encoded block).
    pub(crate) max_header_list_size: u32,
}

/// The HTTP/2 channel the generated gRPC client runs on; cheap to clone
/// (clones share the connection). Connects lazily on the first call and
/// again after the connection broke.
#[derive(Clone)]
pub struct Channel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("origin", &self.shared.config.origin)
            .field("connected", &self.shared.conn.lock().is_some())
            .finish()
    }
}

struct Shared {
    config: ChannelConfig,
    conn: parking_lot::Mutex<Option<Conn>>,
    /// Serializes connection attempts so concurrent first calls share one.
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    tx: h2::client::SendRequest<Bytes>,
    /// Calls open on this connection (keepalive pings only while > 0).
    active: Arc<AtomicUsize>,
}

/// An error of the transport itself (the server's answers are gRPC statuses).
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct TransportError {
    what: &'static str,
    /// Failed while connecting: nothing of the call was sent.
    connecting: bool,
    #[source]
    source: BoxError,
}

impl TransportError {
    /// Whether the call failed before any of it was sent.
    pub(crate) fn before_sending(&self) -> bool {
        self.connecting
    }
}

fn transport(what: &'static str, source: impl Into<BoxError>) -> BoxError {
    Box::new(TransportError {
        what,
        connecting: false,
        source: source.into(),
    })
}

fn connecting(what: &'static str, source: impl Into<BoxError>) -> BoxError {
    Box::new(TransportError {
        what,
        connecting: true,
        source: source.into(),
    })
}

impl Channel {
    pub(crate) fn new(config: ChannelConfig) -> Channel {
        Channel {
            shared: Arc::new(Shared {
                config,
                conn: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// The live connection, connecting first if there is none.
    async fn conn(&self) -> Result<Conn, BoxError> {
        if let Some(c) = self.shared.conn.lock().as_ref() {
            return Ok(c.clone());
        }
        let _one_at_a_time = self.shared.connecting.lock().await;
        if let Some(c) = self.shared.conn.lock().as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.shared).await?;
        *self.shared.conn.lock() = Some(c.clone());
        Ok(c)
    }

    /// A connection that can open a stream now. A connection that turns
    /// out to be closed (GOAWAY, reset, keepalive timeout) is replaced
    /// once: nothing was sent on it for this call, so that is safe.
    async fn ready(&self) -> Result<Conn, BoxError> {
        let mut retried = false;
        loop {
            let mut conn = self.conn().await?;
            match conn.tx.clone().ready().await {
                Ok(tx) => {
                    conn.tx = tx;
                    return Ok(conn);
                }
                Err(e) => {
                    forget(&self.shared, conn.id);
                    if retried {
                        return Err(connecting("http2 connection closed", e));
                    }
                    retried = true;
                }
            }
        }
    }

    async fn send(self, req: http::Request<tonic::body::Body>) -> Result<http::Response<RecvBody>, BoxError> {
        let (mut parts, mut body) = req.into_parts();
        let origin = &self.shared.config.origin;
        let mut uri = http::uri::Parts::default();
        uri.scheme = origin.scheme().cloned().or(Some(Scheme::HTTP));
        uri.authority = origin.authority().cloned();
        uri.path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .or_else(|| Some(PathAndQuery::from_static("/")));
        parts.uri = Uri::from_parts(uri).map_err(|e| transport("request uri", e))?;
        parts.version = http::Version::HTTP_2;
        parts
            .headers
            .entry(http::header::USER_AGENT)
            .or_insert(http::HeaderValue::from_static(USER_AGENT));

        // Take every body frame that is ready now: all of a unary request.
        let mut data: Vec<Bytes> = Vec::new();
        let mut trailers = None;
        let mut ended = false;
        while !ended {
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).now_or_never() {
                Some(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        if !d.is_empty() {
                            data.push(d);
                        }
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        ended = true;
                    }
                },
                Some(Some(Err(e))) => return Err(transport("encoding the request", e)),
                Some(None) => ended = true,
                None => break,
            }
        }

        // A fully buffered request the server did not process (see
        // `not_processed`) is sent again on a new stream, a few times.
        let mut refusals = 0;
        let (response, active, cancel) = loop {
            let conn = self.ready().await?;
            let active = ActiveGuard::new(&conn.active);
            let mut tx = conn.tx;
            let mut head = http::Request::new(());
            *head.method_mut() = parts.method.clone();
            *head.uri_mut() = parts.uri.clone();
            *head.version_mut() = parts.version;
            *head.headers_mut() = parts.headers.clone();
            let end_now = ended && data.is_empty() && trailers.is_none();
            let (response, mut stream) = match tx.send_request(head, end_now) {
                Ok(r) => r,
                Err(e) => {
                    forget(&self.shared, conn.id);
                    return Err(connecting("http2 send", e));
                }
            };
            let count = data.len();
            for (i, d) in data.iter().enumerate() {
                let last = ended && trailers.is_none() && i + 1 == count;
                stream
                    .send_data(d.clone(), last)
                    .map_err(|e| transport("http2 send", e))?;
            }
            if !ended {
                let (cancel_tx, cancel_rx) = oneshot::channel();
                let body = std::mem::take(&mut body);
                tokio::spawn(pipe(body, stream, cancel_rx));
                let response = response.await.map_err(|e| transport("http2 response", e))?;
                break (response, active, Some(cancel_tx));
            }
            if let Some(t) = &trailers {
                stream
                    .send_trailers(t.clone())
                    .map_err(|e| transport("http2 send", e))?;
            }
            match response.await {
                Ok(r) => break (r, active, None),
                Err(e) if not_processed(&e) && refusals < MAX_REFUSALS => {
                    refusals += 1;
                    tracing::debug!(error = %e, "triton server did not process a call; sending it again");
                }
                Err(e) => return Err(transport("http2 response", e)),
            }
        };
        let (parts, recv) = response.into_parts();
        Ok(http::Response::from_parts(
            parts,
            RecvBody {
                recv,
                data_done: false,
                done: false,
                _cancel: cancel,
                _active: active,
            },
        ))
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<RecvBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness (a connection with a free stream slot) is awaited per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}

/// Whether the server says it did not process the stream: REFUSED_STREAM
/// (for example above a stream limit it had not announced yet), or a
/// graceful GOAWAY (NO_ERROR) whose last stream id is below this one — h2
/// fails only those streams with the GOAWAY itself.
fn not_processed(e: &h2::Error) -> bool {
    e.is_remote()
        && (e.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
}

/// Forgets connection `id` if it is still the current one.
fn forget(shared: &Shared, id: u64) {
    let mut conn = shared.conn.lock();
    if conn.as_ref().is_some_and(|c| c.id == id) {
        *conn = None;
    }
}

/// A connected byte stream: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a TCP connection (TCP_NODELAY) to the configured origin, with the
/// TLS handshake (ALPN `h2` required) when TLS is configured.
async fn dial(config: &ChannelConfig) -> Result<Box<dyn Io>, BoxError> {
    let host = config.origin.host().unwrap_or("localhost");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = config
        .origin
        .port_u16()
        .unwrap_or(if config.tls.is_some() { 443 } else { 80 });
    let tcp = match tokio::time::timeout(config.connect_timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(connecting("tcp connect error", e)),
        Err(_) => {
            return Err(connecting(
                "tcp connect error",
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", config.connect_timeout),
                ),
            ))
        }
    };
    tcp.set_nodelay(true)
        .map_err(|e| connecting("tcp connect error", e))?;
    match &config.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => {
            let stream = tokio::time::timeout(
                config.connect_timeout,
                tls.connector.connect(tls.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| connecting("tls handshake", "timed out"))?
            .map_err(|e| connecting("tls handshake", e))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(connecting(
                    "tls handshake",
                    "the server did not agree to HTTP/2 (ALPN h2)",
                ));
            }
            Ok(Box::new(stream))
        }
    }
}

async fn connect(shared: &Arc<Shared>) -> Result<Conn, BoxError> {
    let io = dial(&shared.config).await?;
    handshake(shared, io).await
}

async fn handshake<T>(shared: &Arc<Shared>, io: T) -> Result<Conn, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .enable_push(false)
        .max_header_list_size(shared.config.max_header_list_size)
        .handshake::<T, Bytes>(io)
        .await
        .map_err(|e| connecting("http2 handshake", e))?;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let active = Arc::new(AtomicUsize::new(0));
    let ping = connection.ping_pong();
    let keepalive = shared.config.keepalive;
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let counter = Arc::clone(&active);
    tokio::spawn(async move {
        let pinger = async {
            match (ping, keepalive) {
                (Some(ping), Some((every, timeout))) => keep_alive(ping, every, timeout, counter).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut connection => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "triton http2 connection closed");
                }
            }
            why = pinger => tracing::warn!(%why, "triton http2 connection dropped"),
        }
        if let Some(shared) = weak.upgrade() {
            forget(&shared, id);
        }
    });
    Ok(Conn { id, tx, active })
}

/// Pings every `every` while calls are open; returns when one is not
/// answered within `timeout` (the connection is then dropped).
async fn keep_alive(
    mut ping: h2::PingPong,
    every: Duration,
    timeout: Duration,
    active: Arc<AtomicUsize>,
) -> String {
    loop {
        tokio::time::sleep(every).await;
        if active.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keepalive ping failed: {e}"),
            Err(_) => return format!("keepalive ping not answered within {timeout:?}"),
        }
    }
}

/// Sends the rest of a streaming request body; stops (resetting the stream)
/// when the response side is dropped or the peer resets it.
async fn pipe(
    mut body: tonic::body::Body,
    mut stream: h2::SendStream<Bytes>,
    mut cancel: oneshot::Receiver<()>,
) {
    loop {
        let frame = tokio::select! {
            f = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => f,
            _ = &mut cancel => break,
            _ = poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        let sent = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => send_with_capacity(&mut stream, d, &mut cancel).await,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        let _ = stream.send_trailers(t);
                    }
                    return;
                }
            },
            Some(Err(e)) => {
                tracing::debug!(error = %e, "triton request stream failed");
                false
            }
        };
        if !sent {
            break;
        }
    }
    stream.send_reset(h2::Reason::CANCEL);
}

/// Waits for send window (backpressure against a server that stops
/// reading), then queues `data`. False when the stream is gone.
async fn send_with_capacity(
    stream: &mut h2::SendStream<Bytes>,
    data: Bytes,
    cancel: &mut oneshot::Receiver<()>,
) -> bool {
    if data.is_empty() {
        return true;
    }
    stream.reserve_capacity(1);
    while stream.capacity() == 0 {
        let more = tokio::select! {
            c = poll_fn(|cx| stream.poll_capacity(cx)) => c,
            _ = &mut *cancel => return false,
        };
        match more {
            Some(Ok(_)) => {}
            _ => return false,
        }
    }
    stream.send_data(data, false).is_ok()
}

/// Counts an open call on its connection until dropped.
struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body read from an h2 stream (DATA frames, then trailers),
/// releasing flow-control window as frames are taken.
pub struct RecvBody {
    recv: h2::RecvStream,
    data_done: bool,
    done: bool,
    _cancel: Option<oneshot::Sender<()>>,
    _active: ActiveGuard,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody").field("done", &self.done).finish()
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(d)) => {
                    let _ = this.recv.flow_control().release_capacity(d.len());
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        if this.done {
            return Poll::Ready(None);
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(t)) => Some(Ok(Frame::trailers(t))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
