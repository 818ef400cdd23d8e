//! Unary gRPC calls on a lean HTTP/2 connection of this crate's own.
//!
//! Every [`TritonClient`](crate::TritonClient) call except the streaming
//! `ModelStreamInfer` is unary: one request message, one response message.
//! For those, a general-purpose HTTP/2 stack (h2 under tonic) spends about
//! 58,000 instructions per call on this workload (callgrind): building and
//! HPACK-encoding `http` header maps, per-stream state machines, tonic's
//! body and codec layers. This module does only what a unary gRPC call
//! needs, with the same protocol obligations:
//!
//! * one connection (plain or TLS) per client, driven by one task that
//!   owns the socket; callers queue their frames under a short lock and
//!   wake it, and it writes whatever is queued in one vectored write;
//! * request headers are encoded without the HPACK dynamic table (allowed
//!   by RFC 7541), from a block prepared once per client; responses are
//!   decoded with a full HPACK decoder (dynamic table, Huffman);
//! * flow control both ways (request bodies wait for send window; receive
//!   window is returned as response bytes arrive), peer SETTINGS, PING,
//!   GOAWAY, RST_STREAM, CONTINUATION, and the peer's stream limit;
//! * a dropped call (deadline, cancellation) resets its stream;
//! * keepalive pings only while calls are open, as the h2 transport does.
//!
//! Streaming calls stay on [`transport::Channel`](crate::transport::Channel)
//! (h2 with flow-controlled request streams), which connects only when a
//! stream is opened.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io::{IoSlice, Read as _, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use agentscale_core::{Error, RpcCode};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::{error_chain, CallError};
use crate::transport::{dial, ChannelConfig, Io, CONNECTION_WINDOW, STREAM_WINDOW, USER_AGENT};

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
// Error codes.
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;

/// The largest frame payload we accept (our SETTINGS_MAX_FRAME_SIZE is the
/// protocol default).
const MAX_RECV_FRAME: usize = 16_384;
/// Largest flow-control window (2^31 - 1).
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Stream ids are 31-bit; the connection is retired before they run out.
const LAST_STREAM_ID: u32 = (1 << 31) - 1;
/// Request payloads at least this long are queued by reference, not copied.
const COPY_LIMIT: usize = 1024;

/// Every call's `:path` is this plus the method name.
const SERVICE_PATH: &str = "/inference.GRPCInferenceService/";

/// What goes wrong on the connection, for the calls on it.
#[derive(Debug, Clone)]
struct Broken {
    message: Arc<str>,
    /// Nothing of the call was processed by the server (GOAWAY above the
    /// call's stream, REFUSED_STREAM, or the connection never opened).
    retry_safe: bool,
}

/// A response as it arrives.
#[derive(Debug, Default)]
struct Response {
    http_status: u16,
    grpc_status: Option<i32>,
    grpc_message: Option<String>,
    gzip: bool,
    unknown_encoding: Option<String>,
    headers_seen: bool,
    data: BytesMut,
    /// Set when the response was refused while arriving (over the size limit).
    rejected: Option<String>,
}

#[derive(Debug)]
enum StreamState {
    Open,
    Done,
    Failed(Broken),
}

#[derive(Debug)]
struct Stream {
    send_window: i64,
    /// Request bytes still to send (waiting for window).
    pending: Bytes,
    /// Our side has sent END_STREAM.
    sent_end: bool,
    /// Response bytes taken since the last stream WINDOW_UPDATE.
    recv_unacked: u32,
    response: Response,
    state: StreamState,
    waker: Option<Waker>,
}

/// Hashes stream ids (odd, sequential) by Fibonacci multiplication: the
/// stream map is looked up a few times per call, and SipHash showed up in
/// profiles.
#[derive(Default, Clone, Copy)]
struct BuildStreamHasher;

#[derive(Default)]
struct StreamHasher(u64);

impl std::hash::BuildHasher for BuildStreamHasher {
    type Hasher = StreamHasher;
    fn build_hasher(&self) -> StreamHasher {
        StreamHasher(0)
    }
}

impl std::hash::Hasher for StreamHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Connection state shared between the calls and the connection task.
struct State {
    /// Small frames queued for writing (copied).
    small: BytesMut,
    /// Frames queued for writing, in order (large payloads by reference).
    queue: VecDeque<Bytes>,
    /// The connection task, to wake when something was queued.
    task: Option<Waker>,
    streams: HashMap<u32, Stream, BuildStreamHasher>,
    next_id: u32,
    /// Streams counted against the peer's limit (open ones).
    open: usize,
    /// Calls waiting for a free stream slot.
    slot_waiters: Vec<Waker>,
    /// Streams with request bytes waiting for send window, in order.
    blocked: VecDeque<u32>,
    // Peer settings.
    max_frame: usize,
    peer_initial_window: i64,
    max_concurrent: usize,
    /// Connection-level send window.
    send_window: i64,
    /// Response bytes taken since the last connection WINDOW_UPDATE.
    recv_unacked: u32,
    /// Set when no new stream may start (GOAWAY, error, ids exhausted,
    /// client dropped); the reason is what open calls are failed with.
    closed: Option<Broken>,
    /// A keepalive ping is out and not yet answered.
    ping_out: bool,
    /// The client's max message size (responses over it are refused as
    /// soon as their length prefix arrives).
    max_message: usize,
}

impl State {
    fn new(max_message: usize) -> State {
        State {
            small: BytesMut::with_capacity(4096),
            queue: VecDeque::new(),
            task: None,
            streams: HashMap::default(),
            next_id: 1,
            open: 0,
            slot_waiters: Vec::new(),
            blocked: VecDeque::new(),
            max_frame: 16_384,
            peer_initial_window: 65_535,
            max_concurrent: usize::MAX,
            send_window: 65_535,
            recv_unacked: 0,
            closed: None,
            ping_out: false,
            max_message,
        }
    }

    fn frame_head(&mut self, len: usize, kind: u8, flags: u8, stream: u32) {
        let b = &mut self.small;
        b.put_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        b.put_u32(stream & LAST_STREAM_ID);
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.frame_head(payload.len(), kind, flags, stream);
        self.small.put_slice(payload);
    }

    /// Queues a payload: copied when small, by reference when large.
    fn payload(&mut self, data: Bytes) {
        if data.len() < COPY_LIMIT {
            self.small.put_slice(&data);
        } else {
            if !self.small.is_empty() {
                let small = self.small.split().freeze();
                self.queue.push_back(small);
            }
            self.queue.push_back(data);
        }
    }

    fn wake_task(&mut self) {
        if let Some(w) = self.task.take() {
            w.wake();
        }
    }

    /// Sends as much of stream `id`'s pending body as the windows allow.
    /// Returns whether something is still pending.
    fn send_pending(&mut self, id: u32) -> bool {
        let max_frame = self.max_frame;
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return false;
            };
            if s.sent_end || !matches!(s.state, StreamState::Open) {
                return false;
            }
            let window = s.send_window.min(self.send_window);
            let len = s.pending.len();
            if len > 0 && window <= 0 {
                return true;
            }
            let n = len.min(window.max(0) as usize).min(max_frame);
            let chunk = s.pending.split_to(n);
            s.send_window -= n as i64;
            let end = s.pending.is_empty();
            s.sent_end = end;
            self.send_window -= n as i64;
            self.frame_head(n, DATA, if end { END_STREAM } else { 0 }, id);
            self.payload(chunk);
            if end {
                return false;
            }
        }
    }

    /// Retries the streams waiting for send window, in order.
    fn unblock(&mut self) {
        let mut still = VecDeque::new();
        while let Some(id) = self.blocked.pop_front() {
            if self.send_pending(id) {
                still.push_back(id);
            }
        }
        self.blocked = still;
    }

    /// Ends stream `id` (response complete, reset or failed): frees its slot
    /// and wakes its caller.
    fn finish(&mut self, id: u32, outcome: StreamState) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !matches!(s.state, StreamState::Open) {
            return;
        }
        s.state = outcome;
        s.pending = Bytes::new();
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        self.release_slot();
    }

    fn release_slot(&mut self) {
        self.open -= 1;
        for w in self.slot_waiters.drain(..) {
            w.wake();
        }
    }

    /// Closes the connection for new calls and fails every open one.
    fn fail_all(&mut self, why: Broken) {
        if self.closed.is_none() {
            self.closed = Some(why.clone());
        }
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.finish(id, StreamState::Failed(why.clone()));
        }
        for w in self.slot_waiters.drain(..) {
            w.wake();
        }
        self.wake_task();
    }

    /// A connection error: tells the peer (GOAWAY) and fails every call.
    fn connection_error(&mut self, code: u32, message: String) {
        let mut payload = [0u8; 8];
        payload[4..].copy_from_slice(&code.to_be_bytes());
        self.frame(GOAWAY, 0, 0, &payload);
        self.fail_all(Broken {
            message: message.into(),
            retry_safe: false,
        });
    }
}

/// One HTTP/2 connection for unary calls.
struct Conn {
    state: parking_lot::Mutex<State>,
}

/// Settings of a [`UnaryChannel`] beyond where it connects.
#[derive(Clone)]
pub(crate) struct UnaryConfig {
    pub(crate) channel: ChannelConfig,
    /// Metadata sent with every call (lower-case names, printable values).
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) gzip: bool,
    pub(crate) max_message_size: usize,
}

/// Unary gRPC calls over one lazily opened connection, replaced when it
/// breaks. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub(crate) struct UnaryChannel {
    shared: Arc<Shared>,
}

struct Shared {
    config: UnaryConfig,
    /// The header block after `:method`, `:scheme` and `:path`, encoded once.
    headers: Bytes,
    conn: parking_lot::Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.get_mut().take() {
            let mut st = conn.state.lock();
            st.fail_all(Broken {
                message: "client dropped".into(),
                retry_safe: false,
            });
        }
    }
}

impl std::fmt::Debug for UnaryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnaryChannel")
            .field("origin", &self.shared.config.channel.origin)
            .field("connected", &self.shared.conn.lock().is_some())
            .finish()
    }
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the
/// representation's leading bits.
fn hpack_int(out: &mut BytesMut, first: u8, n: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    value -= max;
    while value >= 128 {
        out.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.put_u8(value as u8);
}

/// A header field as a literal without indexing (or never indexed), with an
/// indexed name from the static table when `name_index` is not 0.
fn hpack_literal(out: &mut BytesMut, never: bool, name_index: usize, name: &str, value: &[u8]) {
    let first = if never { 0x10 } else { 0x00 };
    hpack_int(out, first, 4, name_index);
    if name_index == 0 {
        hpack_int(out, 0, 7, name.len());
        out.put_slice(name.as_bytes());
    }
    hpack_int(out, 0, 7, value.len());
    out.put_slice(value);
}

/// `grpc-timeout` value: at most 8 digits and a unit.
fn grpc_timeout(d: Duration) -> String {
    let micros = d.as_micros();
    if micros < 100_000_000 {
        return format!("{}u", micros.max(1));
    }
    let millis = d.as_millis();
    if millis < 100_000_000 {
        return format!("{millis}m");
    }
    let secs = d.as_secs();
    if secs < 100_000_000 {
        return format!("{secs}S");
    }
    format!("{}H", (secs / 3600).min(99_999_999))
}

/// Decodes a percent-encoded `grpc-message`.
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%' && i + 2 < v.len() {
            let hex = std::str::from_utf8(&v[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The gRPC code for an HTTP status without `grpc-status` (gRPC's
/// "HTTP to gRPC status code mapping").
fn code_for_http(status: u16) -> RpcCode {
    match status {
        400 => RpcCode::Internal,
        401 => RpcCode::Unauthenticated,
        403 => RpcCode::PermissionDenied,
        404 => RpcCode::Unimplemented,
        429 | 502..=504 => RpcCode::Unavailable,
        _ => RpcCode::Unknown,
    }
}

fn unavailable(what: &str, message: &str, retry_safe: bool) -> CallError {
    CallError {
        error: Error::Unavailable {
            message: format!("{what}: {message}"),
            source: None,
        },
        retry_safe,
    }
}

impl UnaryChannel {
    pub(crate) fn new(config: UnaryConfig) -> UnaryChannel {
        let mut h = BytesMut::new();
        let authority = config
            .channel
            .origin
            .authority()
            .map_or("localhost", |a| a.as_str())
            .to_string();
        hpack_literal(&mut h, false, 1, ":authority", authority.as_bytes());
        hpack_literal(&mut h, false, 31, "content-type", b"application/grpc");
        hpack_literal(&mut h, false, 0, "te", b"trailers");
        hpack_literal(&mut h, false, 58, "user-agent", USER_AGENT.as_bytes());
        if config.gzip {
            hpack_literal(&mut h, false, 0, "grpc-encoding", b"gzip");
            hpack_literal(&mut h, false, 0, "grpc-accept-encoding", b"gzip");
        }
        for (k, v) in &config.headers {
            hpack_literal(&mut h, true, 0, k, v.as_bytes());
        }
        UnaryChannel {
            shared: Arc::new(Shared {
                config,
                headers: h.freeze(),
                conn: parking_lot::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Encodes `msg` as one gRPC message (5-byte prefix; gzip when enabled).
    fn encode<M: prost::Message>(&self, msg: &M, what: &str) -> Result<Bytes, CallError> {
        let len = msg.encoded_len();
        let max = self.shared.config.max_message_size;
        let mut out = BytesMut::with_capacity(len + 5);
        if self.shared.config.gzip {
            let mut plain = Vec::with_capacity(len);
            msg.encode_raw(&mut plain);
            let mut gz =
                flate2::write::GzEncoder::new(Vec::with_capacity(len / 2 + 64), flate2::Compression::fast());
            gz.write_all(&plain)
                .and_then(|()| gz.finish())
                .map(|z| {
                    out.put_u8(1);
                    out.put_u32(z.len() as u32);
                    out.put_slice(&z);
                })
                .map_err(|e| CallError::from(Error::InvalidInput(format!("{what}: gzip: {e}"))))?;
        } else {
            out.put_u8(0);
            out.put_u32(len as u32);
            msg.encode_raw(&mut out);
        }
        if out.len() - 5 > max || out.len() - 5 > u32::MAX as usize {
            return Err(Error::InvalidInput(format!(
                "{what}: request message of {} bytes exceeds max_message_size {max}",
                out.len() - 5
            ))
            .into());
        }
        Ok(out.freeze())
    }

    /// Runs one unary call of `GRPCInferenceService/<what>`.
    pub(crate) async fn call<Req, Resp>(
        &self,
        what: &'static str,
        msg: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CallError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let body = self.encode(msg, what)?;
        let mut block =
            BytesMut::with_capacity(self.shared.headers.len() + SERVICE_PATH.len() + what.len() + 32);
        block.put_u8(0x83); // :method POST
        block.put_u8(if self.shared.config.channel.tls.is_some() {
            0x87
        } else {
            0x86
        });
        // :path (static name 4), literal without indexing.
        hpack_int(&mut block, 0, 4, 4);
        hpack_int(&mut block, 0, 7, SERVICE_PATH.len() + what.len());
        block.put_slice(SERVICE_PATH.as_bytes());
        block.put_slice(what.as_bytes());
        block.put_slice(&self.shared.headers);
        if let Some(d) = timeout {
            hpack_literal(&mut block, false, 0, "grpc-timeout", grpc_timeout(d).as_bytes());
        }
        let block = block.freeze();

        // A call refused before the server processed it (connection closed
        // before sending, GOAWAY above its stream, REFUSED_STREAM) is sent
        // once more on a fresh connection, as gRPC's transparent retry does.
        let mut retried = false;
        let response = loop {
            let conn = self.conn().await.map_err(|e| unavailable(what, &e, true))?;
            let outcome = match Call::start(conn, &block, body.clone()).await {
                Ok(call) => call.await,
                Err(refused) => Err(refused),
            };
            match outcome {
                Ok(r) => break r,
                Err(b) if b.retry_safe && !retried => {
                    self.forget_closed();
                    retried = true;
                }
                Err(b) => return Err(unavailable(what, &b.message, b.retry_safe)),
            }
        };
        self.decode(response, what)
    }

    fn decode<Resp: prost::Message + Default>(&self, r: Response, what: &str) -> Result<Resp, CallError> {
        let rpc = |code: RpcCode, message: String| -> CallError {
            let error = match code {
                RpcCode::DeadlineExceeded => Error::Timeout(format!("{what}: {message}")),
                _ => Error::Rpc { code, message },
            };
            CallError {
                error,
                retry_safe: false,
            }
        };
        if let Some(why) = r.rejected {
            return Err(rpc(RpcCode::ResourceExhausted, format!("{what}: {why}")));
        }
        let status = match r.grpc_status {
            Some(s) => s,
            None if r.http_status != 200 => {
                return Err(rpc(
                    code_for_http(r.http_status),
                    format!("HTTP status {} without grpc-status", r.http_status),
                ))
            }
            None => {
                return Err(rpc(
                    RpcCode::Internal,
                    "the server ended the call without grpc-status".into(),
                ))
            }
        };
        if status != 0 {
            return Err(rpc(RpcCode::from_i32(status), r.grpc_message.unwrap_or_default()));
        }
        let data = r.data.freeze();
        if data.len() < 5 {
            return Err(rpc(RpcCode::Internal, "no response message".into()));
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() != 5 + len {
            return Err(rpc(
                RpcCode::Internal,
                format!(
                    "response framing: {} bytes for a {len}-byte message",
                    data.len() - 5
                ),
            ));
        }
        let max = self.shared.config.max_message_size;
        let payload = data.slice(5..);
        let payload = match data[0] {
            0 => payload,
            1 => {
                if let Some(enc) = r.unknown_encoding {
                    return Err(rpc(
                        RpcCode::Internal,
                        format!("unsupported grpc-encoding '{enc}'"),
                    ));
                }
                if !r.gzip {
                    return Err(rpc(
                        RpcCode::Internal,
                        "compressed message without grpc-encoding".into(),
                    ));
                }
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&payload[..])
                    .take(max as u64 + 1)
                    .read_to_end(&mut plain)
                    .map_err(|e| rpc(RpcCode::Internal, format!("gunzip: {e}")))?;
                Bytes::from(plain)
            }
            f => return Err(rpc(RpcCode::Internal, format!("bad message flag {f}"))),
        };
        if payload.len() > max {
            return Err(rpc(
                RpcCode::ResourceExhausted,
                format!(
                    "{what}: response message of {} bytes exceeds max_message_size {max}",
                    payload.len()
                ),
            ));
        }
        Resp::decode(payload)
            .map_err(|e| rpc(RpcCode::Internal, format!("{what}: decoding the response: {e}")))
    }

    fn forget_closed(&self) {
        let mut slot = self.shared.conn.lock();
        if slot.as_ref().is_some_and(|c| c.state.lock().closed.is_some()) {
            *slot = None;
        }
    }

    /// The current connection, opening one if there is none or it closed.
    async fn conn(&self) -> Result<Arc<Conn>, String> {
        if let Some(c) = self.shared.conn.lock().as_ref() {
            if c.state.lock().closed.is_none() {
                return Ok(Arc::clone(c));
            }
        }
        let _one_at_a_time = self.shared.connecting.lock().await;
        if let Some(c) = self.shared.conn.lock().as_ref() {
            if c.state.lock().closed.is_none() {
                return Ok(Arc::clone(c));
            }
        }
        let io = dial(&self.shared.config.channel)
            .await
            .map_err(|e| error_chain(e.as_ref()))?;
        let conn = Arc::new(Conn {
            state: parking_lot::Mutex::new(State::new(self.shared.config.max_message_size)),
        });
        {
            let mut st = conn.state.lock();
            st.small.put_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            let mut settings = BytesMut::new();
            for (id, v) in [(0x2u16, 0u32), (0x4, STREAM_WINDOW)] {
                settings.put_u16(id);
                settings.put_u32(v);
            }
            st.frame(SETTINGS, 0, 0, &settings);
            st.frame(WINDOW_UPDATE, 0, 0, &(CONNECTION_WINDOW - 65_535).to_be_bytes());
        }
        tokio::spawn(Driver::new(
            Arc::clone(&conn),
            io,
            self.shared.config.channel.keepalive,
        ));
        *self.shared.conn.lock() = Some(Arc::clone(&conn));
        Ok(conn)
    }
}

/// A call in flight: resolves to its response; dropping it resets the stream.
struct Call {
    conn: Arc<Conn>,
    id: u32,
    taken: bool,
}

impl Call {
    /// Opens a stream and queues HEADERS and the body; waits for a free
    /// stream slot when the peer limits them. Fails (retry-safe) when the
    /// connection closed before anything of this call was queued.
    async fn start(conn: Arc<Conn>, block: &Bytes, body: Bytes) -> Result<Call, Broken> {
        let id = poll_fn(|cx| {
            let mut st = conn.state.lock();
            if let Some(why) = &st.closed {
                return Poll::Ready(Err(Broken {
                    message: why.message.clone(),
                    retry_safe: true,
                }));
            }
            if st.open >= st.max_concurrent {
                st.slot_waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            let id = st.next_id;
            st.next_id += 2;
            if st.next_id > LAST_STREAM_ID {
                st.closed = Some(Broken {
                    message: "stream ids exhausted; reconnecting".into(),
                    retry_safe: true,
                });
            }
            // HEADERS, then CONTINUATION frames if the block is larger than a frame.
            let max_frame = st.max_frame;
            let mut rest = block.clone();
            let first = rest.split_to(rest.len().min(max_frame));
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            st.frame(HEADERS, flags, id, &first);
            while !rest.is_empty() {
                let part = rest.split_to(rest.len().min(max_frame));
                st.frame(
                    CONTINUATION,
                    if rest.is_empty() { END_HEADERS } else { 0 },
                    id,
                    &part,
                );
            }
            let send_window = st.peer_initial_window;
            st.streams.insert(
                id,
                Stream {
                    send_window,
                    pending: body.clone(),
                    sent_end: false,
                    recv_unacked: 0,
                    response: Response::default(),
                    state: StreamState::Open,
                    waker: None,
                },
            );
            st.open += 1;
            if st.send_pending(id) {
                st.blocked.push_back(id);
            }
            st.wake_task();
            Poll::Ready(Ok(id))
        })
        .await?;
        Ok(Call {
            conn,
            id,
            taken: false,
        })
    }
}

impl Future for Call {
    type Output = Result<Response, Broken>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id;
        let conn = Arc::clone(&self.conn);
        let mut st = conn.state.lock();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(Broken {
                message: "stream gone".into(),
                retry_safe: false,
            }));
        };
        match s.state {
            StreamState::Open => {
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            StreamState::Done | StreamState::Failed(_) => {
                let s = st.streams.remove(&id).expect("present");
                drop(st);
                self.taken = true;
                Poll::Ready(match s.state {
                    StreamState::Failed(b) => Err(b),
                    _ => Ok(s.response),
                })
            }
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        let mut st = self.conn.state.lock();
        if let Some(s) = st.streams.remove(&self.id) {
            if matches!(s.state, StreamState::Open) {
                st.release_slot();
                st.frame(RST_STREAM, 0, self.id, &CANCEL.to_be_bytes());
                st.wake_task();
            }
        }
    }
}

/// The task that owns the socket: writes what calls queue, reads and
/// dispatches frames, answers pings and settings, sends keepalive pings.
struct Driver {
    conn: Arc<Conn>,
    io: Box<dyn Io>,
    hpack: loona_hpack::Decoder<'static>,
    /// Frames being written (taken from the queue).
    writing: VecDeque<Bytes>,
    rbuf: Vec<u8>,
    rlen: usize,
    /// A header block being assembled from HEADERS + CONTINUATION.
    partial: Option<(u32, bool, Vec<u8>)>,
    keepalive: Option<(Duration, Duration)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the timer is waiting for a ping ack (else for the interval).
    awaiting_ack: bool,
    read_closed: bool,
}

impl Driver {
    fn new(conn: Arc<Conn>, io: Box<dyn Io>, keepalive: Option<(Duration, Duration)>) -> Driver {
        let mut hpack = loona_hpack::Decoder::new();
        hpack.set_max_allowed_table_size(4096);
        Driver {
            conn,
            io,
            hpack,
            writing: VecDeque::new(),
            rbuf: vec![0; 64 * 1024],
            rlen: 0,
            partial: None,
            timer: keepalive.map(|(every, _)| Box::pin(tokio::time::sleep(every))),
            keepalive,
            awaiting_ack: false,
            read_closed: false,
        }
    }

    /// Writes queued frames until done or the socket is full.
    /// Ready(Err) when writing failed.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if self.writing.is_empty() {
                let mut st = self.conn.state.lock();
                if !st.small.is_empty() {
                    let small = st.small.split().freeze();
                    st.queue.push_back(small);
                }
                std::mem::swap(&mut self.writing, &mut st.queue);
            }
            if self.writing.is_empty() {
                return match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(format!("write: {e}"))),
                    _ => Poll::Ready(Ok(())),
                };
            }
            let mut slices = [IoSlice::new(&[]); 64];
            let n = self.writing.len().min(64);
            for (slot, b) in slices.iter_mut().zip(self.writing.iter()) {
                *slot = IoSlice::new(b);
            }
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("write: {e}"))),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err("write: connection closed".into())),
                Poll::Ready(Ok(mut written)) => {
                    while written > 0 {
                        let front = self.writing.front_mut().expect("written bytes were queued");
                        if written >= front.len() {
                            written -= front.len();
                            self.writing.pop_front();
                        } else {
                            let _ = front.split_to(written);
                            written = 0;
                        }
                    }
                }
            }
        }
    }

    /// Reads and handles frames until the socket has no more. Ready(Err)
    /// on EOF or a read error.
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        for _ in 0..32 {
            if self.rlen == self.rbuf.len() {
                // A whole frame always fits (MAX_RECV_FRAME + 9 < buffer).
                return Poll::Ready(Err("read buffer full".into()));
            }
            let mut buf = ReadBuf::new(&mut self.rbuf[self.rlen..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read: {e}"))),
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err("connection closed by the server".into()));
                    }
                    self.rlen += n;
                    self.handle_frames()?;
                }
            }
        }
        // Yield after a long burst, to be polled again at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Handles every complete frame in the read buffer.
    fn handle_frames(&mut self) -> Result<(), String> {
        let mut pos = 0;
        let conn = Arc::clone(&self.conn);
        let mut st = conn.state.lock();
        while self.rlen - pos >= 9 {
            let h = &self.rbuf[pos..pos + 9];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            let (kind, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & LAST_STREAM_ID;
            if len > MAX_RECV_FRAME {
                st.connection_error(
                    FRAME_SIZE_ERROR,
                    format!("frame of {len} bytes exceeds the limit"),
                );
                return Err("frame too large".into());
            }
            if self.rlen - pos < 9 + len {
                break;
            }
            let start = pos + 9;
            pos += 9 + len;
            let payload = &self.rbuf[start..start + len];
            if let Some((pid, _, _)) = &self.partial {
                if kind != CONTINUATION || id != *pid {
                    st.connection_error(PROTOCOL_ERROR, "expected CONTINUATION".into());
                    return Err("protocol error: expected CONTINUATION".into());
                }
            }
            let r = match kind {
                DATA => on_data(&mut st, id, flags, payload),
                HEADERS => {
                    let Some(block) = strip_padding(flags, payload, true) else {
                        st.connection_error(PROTOCOL_ERROR, "bad HEADERS padding".into());
                        return Err("protocol error: bad padding".into());
                    };
                    if flags & END_HEADERS != 0 {
                        on_headers(&mut st, &mut self.hpack, id, flags & END_STREAM != 0, block)
                    } else {
                        self.partial = Some((id, flags & END_STREAM != 0, block.to_vec()));
                        Ok(())
                    }
                }
                CONTINUATION => match self.partial.take() {
                    None => Err((PROTOCOL_ERROR, "unexpected CONTINUATION".into())),
                    Some((pid, end, mut block)) => {
                        block.extend_from_slice(payload);
                        if flags & END_HEADERS != 0 {
                            on_headers(&mut st, &mut self.hpack, pid, end, &block)
                        } else if block.len() > 1 << 20 {
                            Err((PROTOCOL_ERROR, "header block over 1 MiB".into()))
                        } else {
                            self.partial = Some((pid, end, block));
                            Ok(())
                        }
                    }
                },
                RST_STREAM if len == 4 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    st.finish(
                        id,
                        StreamState::Failed(Broken {
                            message: format!("stream reset by the server (HTTP/2 error code {code:#x})")
                                .into(),
                            retry_safe: code == REFUSED_STREAM,
                        }),
                    );
                    Ok(())
                }
                SETTINGS => on_settings(&mut st, flags, payload),
                PING if len == 8 => {
                    if flags & ACK != 0 {
                        st.ping_out = false;
                    } else {
                        let p = payload.to_vec();
                        st.frame(PING, ACK, 0, &p);
                        st.wake_task();
                    }
                    Ok(())
                }
                GOAWAY if len >= 8 => {
                    let last =
                        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & LAST_STREAM_ID;
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    let detail = String::from_utf8_lossy(&payload[8..]).into_owned();
                    on_goaway(&mut st, last, code, &detail);
                    Ok(())
                }
                WINDOW_UPDATE if len == 4 => {
                    let inc = i64::from(
                        u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & LAST_STREAM_ID,
                    );
                    on_window_update(&mut st, id, inc)
                }
                RST_STREAM | PING | GOAWAY | WINDOW_UPDATE => {
                    Err((FRAME_SIZE_ERROR, format!("frame type {kind} of bad length {len}")))
                }
                PUSH_PROMISE => Err((PROTOCOL_ERROR, "PUSH_PROMISE with push disabled".into())),
                _ => Ok(()), // PRIORITY and unknown frame types are ignored.
            };
            if let Err((code, message)) = r {
                st.connection_error(code, message.clone());
                return Err(message);
            }
        }
        drop(st);
        self.rbuf.copy_within(pos..self.rlen, 0);
        self.rlen -= pos;
        Ok(())
    }

    /// Keepalive: a ping every interval while calls are open; the
    /// connection fails when one is not answered in time.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        let (Some((every, timeout)), Some(timer)) = (self.keepalive, self.timer.as_mut()) else {
            return Ok(());
        };
        while timer.as_mut().poll(cx).is_ready() {
            let mut st = self.conn.state.lock();
            if self.awaiting_ack && st.ping_out {
                let msg = format!("keepalive ping not answered within {timeout:?}");
                st.fail_all(Broken {
                    message: msg.clone().into(),
                    retry_safe: false,
                });
                return Err(msg);
            }
            if !self.awaiting_ack && st.open > 0 {
                st.ping_out = true;
                st.frame(PING, 0, 0, &[0x61, 0x73, 0, 0, 0, 0, 0, 1]);
                st.wake_task();
                self.awaiting_ack = true;
                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            } else {
                self.awaiting_ack = false;
                timer.as_mut().reset(tokio::time::Instant::now() + every);
            }
        }
        Ok(())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Also when the runtime that ran this task shuts down: calls on the
        // connection fail instead of waiting, and the next call reconnects.
        self.conn.state.lock().fail_all(Broken {
            message: "connection task stopped".into(),
            retry_safe: false,
        });
    }
}

fn strip_padding(flags: u8, payload: &[u8], headers: bool) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = usize::from(*p.first()?);
        p = &p[1..];
    }
    if headers && flags & PRIORITY != 0 {
        p = p.get(5..)?;
    }
    if pad > p.len() {
        return None;
    }
    Some(&p[..p.len() - pad])
}

type FrameResult = Result<(), (u32, String)>;

fn on_data(st: &mut State, id: u32, flags: u8, payload: &[u8]) -> FrameResult {
    if id == 0 {
        return Err((PROTOCOL_ERROR, "DATA on stream 0".into()));
    }
    let Some(data) = strip_padding(flags, payload, false) else {
        return Err((PROTOCOL_ERROR, "bad DATA padding".into()));
    };
    // Every byte counts against the connection window, whoever reads it.
    st.recv_unacked += payload.len() as u32;
    if st.recv_unacked >= CONNECTION_WINDOW / 2 {
        let n = std::mem::take(&mut st.recv_unacked);
        st.frame(WINDOW_UPDATE, 0, 0, &n.to_be_bytes());
        st.wake_task();
    }
    if id >= st.next_id {
        return Err((PROTOCOL_ERROR, "DATA on an idle stream".into()));
    }
    let Some(s) = st.streams.get_mut(&id) else {
        return Ok(());
    };
    if !matches!(s.state, StreamState::Open) {
        return Ok(());
    }
    if !s.response.headers_seen {
        return Err((PROTOCOL_ERROR, "DATA before response headers".into()));
    }
    s.response.data.extend_from_slice(data);
    let got = &s.response.data;
    let announced = (got.len() >= 5).then(|| u32::from_be_bytes([got[1], got[2], got[3], got[4]]) as usize);
    let limit = st.max_message;
    if announced.is_some_and(|n| n > limit) || got.len() - 5.min(got.len()) > limit {
        // Refused as soon as the length prefix shows it, not after buffering.
        s.response.rejected = Some(format!(
            "response message of {} bytes exceeds max_message_size {limit}",
            announced.unwrap_or(got.len() - 5)
        ));
        s.response.data = BytesMut::new();
        st.finish(id, StreamState::Done);
        st.frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        st.wake_task();
        return Ok(());
    }
    let end = flags & END_STREAM != 0;
    s.recv_unacked += payload.len() as u32;
    if !end && s.recv_unacked >= STREAM_WINDOW / 2 {
        let n = std::mem::take(&mut s.recv_unacked);
        st.frame(WINDOW_UPDATE, 0, id, &n.to_be_bytes());
        st.wake_task();
    }
    if end {
        st.finish(id, StreamState::Done);
        reset_if_unsent(st, id);
    }
    Ok(())
}

/// After the server ended a stream, stops sending the rest of its request.
fn reset_if_unsent(st: &mut State, id: u32) {
    if st.streams.get(&id).is_some_and(|s| !s.sent_end) {
        st.frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes());
        st.wake_task();
    }
}

fn on_headers(
    st: &mut State,
    hpack: &mut loona_hpack::Decoder<'static>,
    id: u32,
    end: bool,
    block: &[u8],
) -> FrameResult {
    // The block is decoded even for streams we no longer track, to keep the
    // HPACK dynamic table in step with the server's.
    let mut fields = Response::default();
    let mut bad_status = false;
    hpack
        .decode_with_cb(block, |name, value| match &*name {
            b":status" => match std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()) {
                Some(s) => fields.http_status = s,
                None => bad_status = true,
            },
            b"grpc-status" => {
                fields.grpc_status = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .or(Some(2));
            }
            b"grpc-message" => fields.grpc_message = Some(percent_decode(&value)),
            b"grpc-encoding" => match &*value {
                b"identity" => {}
                b"gzip" => fields.gzip = true,
                other => fields.unknown_encoding = Some(String::from_utf8_lossy(other).into_owned()),
            },
            _ => {}
        })
        .map_err(|e| (COMPRESSION_ERROR, format!("HPACK: {e:?}")))?;
    if id == 0 || id >= st.next_id || id % 2 == 0 {
        return Err((PROTOCOL_ERROR, format!("HEADERS on stream {id}")));
    }
    let Some(s) = st.streams.get_mut(&id) else {
        return Ok(());
    };
    if !matches!(s.state, StreamState::Open) {
        return Ok(());
    }
    let r = &mut s.response;
    if !r.headers_seen {
        r.headers_seen = true;
        if bad_status || fields.http_status == 0 {
            st.finish(
                id,
                StreamState::Failed(Broken {
                    message: "response without a valid :status".into(),
                    retry_safe: false,
                }),
            );
            reset_if_unsent(st, id);
            return Ok(());
        }
        r.http_status = fields.http_status;
        r.gzip = fields.gzip;
        r.unknown_encoding = fields.unknown_encoding;
        // Trailers-only responses carry the status here.
        r.grpc_status = fields.grpc_status;
        r.grpc_message = fields.grpc_message;
    } else {
        if !end {
            return Err((PROTOCOL_ERROR, "trailers without END_STREAM".into()));
        }
        r.grpc_status = fields.grpc_status.or(r.grpc_status);
        r.grpc_message = fields.grpc_message.or(r.grpc_message.take());
    }
    if end {
        st.finish(id, StreamState::Done);
        reset_if_unsent(st, id);
    }
    Ok(())
}

fn on_settings(st: &mut State, flags: u8, payload: &[u8]) -> FrameResult {
    if flags & ACK != 0 {
        return Ok(());
    }
    if payload.len() % 6 != 0 {
        return Err((FRAME_SIZE_ERROR, "SETTINGS length".into()));
    }
    for p in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([p[0], p[1]]);
        let v = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        match id {
            0x3 => st.max_concurrent = v as usize,
            0x4 => {
                if i64::from(v) > MAX_WINDOW {
                    return Err((
                        FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE too large".into(),
                    ));
                }
                let delta = i64::from(v) - st.peer_initial_window;
                st.peer_initial_window = i64::from(v);
                for s in st.streams.values_mut() {
                    s.send_window += delta;
                }
            }
            0x5 => {
                if !(16_384..=16_777_215).contains(&v) {
                    return Err((PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range".into()));
                }
                st.max_frame = v as usize;
            }
            _ => {} // Header table size (we do not index), push, header list size.
        }
    }
    st.frame(SETTINGS, ACK, 0, &[]);
    st.unblock();
    for w in st.slot_waiters.drain(..) {
        w.wake();
    }
    st.wake_task();
    Ok(())
}

fn on_window_update(st: &mut State, id: u32, inc: i64) -> FrameResult {
    if id == 0 {
        if inc == 0 {
            return Err((PROTOCOL_ERROR, "WINDOW_UPDATE of 0".into()));
        }
        st.send_window += inc;
        if st.send_window > MAX_WINDOW {
            return Err((FLOW_CONTROL_ERROR, "connection window overflow".into()));
        }
    } else if let Some(s) = st.streams.get_mut(&id) {
        s.send_window += inc;
        if inc == 0 || s.send_window > MAX_WINDOW {
            st.finish(
                id,
                StreamState::Failed(Broken {
                    message: "bad stream WINDOW_UPDATE from the server".into(),
                    retry_safe: false,
                }),
            );
            st.frame(RST_STREAM, 0, id, &FLOW_CONTROL_ERROR.to_be_bytes());
        }
    }
    st.unblock();
    st.wake_task();
    Ok(())
}

fn on_goaway(st: &mut State, last: u32, code: u32, detail: &str) {
    let message: Arc<str> = format!(
        "the server closed the connection (GOAWAY code {code:#x}{}{detail})",
        if detail.is_empty() { "" } else { ": " }
    )
    .into();
    if st.closed.is_none() {
        st.closed = Some(Broken {
            message: message.clone(),
            retry_safe: true,
        });
    }
    // Streams above `last` were not processed: safe to retry elsewhere.
    let refused: Vec<u32> = st.streams.keys().copied().filter(|&id| id > last).collect();
    for id in refused {
        st.finish(
            id,
            StreamState::Failed(Broken {
                message: message.clone(),
                retry_safe: true,
            }),
        );
    }
    if code != NO_ERROR {
        tracing::debug!(code, reason = detail, "triton connection GOAWAY");
    }
    st.wake_task();
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        loop {
            if let Err(e) = this.poll_keepalive(cx) {
                tracing::warn!(error = %e, "triton connection dropped");
                return Poll::Ready(());
            }
            let wrote = this.poll_write_out(cx);
            if let Poll::Ready(Err(e)) = wrote {
                this.conn.state.lock().fail_all(Broken {
                    message: e.into(),
                    retry_safe: false,
                });
                return Poll::Ready(());
            }
            if !this.read_closed {
                if let Poll::Ready(Err(e)) = this.poll_read_in(cx) {
                    this.read_closed = true;
                    let mut st = this.conn.state.lock();
                    st.fail_all(Broken {
                        message: e.into(),
                        retry_safe: false,
                    });
                }
            }
            let mut st = this.conn.state.lock();
            // Done once closed, every call finished and everything written.
            if st.closed.is_some()
                && st.streams.is_empty()
                && st.queue.is_empty()
                && st.small.is_empty()
                && this.writing.is_empty()
            {
                return Poll::Ready(());
            }
            if this.read_closed && this.writing.is_empty() && st.queue.is_empty() && st.small.is_empty() {
                return Poll::Ready(());
            }
            // New frames were queued while we worked: go round again.
            if this.writing.is_empty() && (!st.small.is_empty() || !st.queue.is_empty()) {
                continue;
            }
            if !st.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.task = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc7541_examples() {
        let mut b = BytesMut::new();
        hpack_int(&mut b, 0, 5, 10);
        assert_eq!(&b[..], &[0b0000_1010]);
        let mut b = BytesMut::new();
        hpack_int(&mut b, 0, 5, 1337);
        assert_eq!(&b[..], &[0b0001_1111, 0b1001_1010, 0b0000_1010]);
        let mut b = BytesMut::new();
        hpack_int(&mut b, 0, 8, 42);
        assert_eq!(&b[..], &[42]);
    }

    #[test]
    fn encoded_headers_decode_back() {
        let mut b = BytesMut::new();
        b.put_u8(0x83);
        b.put_u8(0x86);
        hpack_literal(
            &mut b,
            false,
            4,
            ":path",
            b"/inference.GRPCInferenceService/ModelInfer",
        );
        hpack_literal(&mut b, false, 31, "content-type", b"application/grpc");
        hpack_literal(&mut b, true, 0, "authorization", b"Bearer x");
        hpack_literal(
            &mut b,
            false,
            0,
            "grpc-timeout",
            grpc_timeout(Duration::from_secs(3)).as_bytes(),
        );
        let mut d = loona_hpack::Decoder::new();
        let got = d.decode(&b).expect("decodes");
        let got: Vec<(String, String)> = got
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (":method".into(), "POST".into()),
                (":scheme".into(), "http".into()),
                (
                    ":path".into(),
                    "/inference.GRPCInferenceService/ModelInfer".into()
                ),
                ("content-type".into(), "application/grpc".into()),
                ("authorization".into(), "Bearer x".into()),
                ("grpc-timeout".into(), "3000000u".into()),
            ]
        );
    }

    #[test]
    fn grpc_timeouts_fit_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_millis(250)), "250000u");
        assert_eq!(grpc_timeout(Duration::from_secs(1000)), "1000000m");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX / 2)), "99999999H");
        assert_eq!(grpc_timeout(Duration::ZERO), "1u");
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode(b"unknown%20model %25 x%"), "unknown model % x%");
        assert_eq!(percent_decode(b"%E2%9C%93 ok%2"), "\u{2713} ok%2");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        assert_eq!(code_for_http(401), RpcCode::Unauthenticated);
        assert_eq!(code_for_http(503), RpcCode::Unavailable);
        assert_eq!(code_for_http(404), RpcCode::Unimplemented);
        assert_eq!(code_for_http(500), RpcCode::Unknown);
    }
}
