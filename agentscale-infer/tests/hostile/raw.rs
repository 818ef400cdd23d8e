//! A misbehaving HTTP/2 server for the hostile-server tests: frames are
//! written by hand (test code only), the client's frames are read just far
//! enough to see which streams it opens.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: 9-byte header, then the payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header field as an HPACK literal with a new name (no Huffman);
/// `index` adds it to the dynamic table.
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8], index: bool) {
    out.push(if index { 0x40 } else { 0x00 });
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// An HPACK indexed header field.
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// `:status 200`, `content-type: application/grpc` and `extra`.
pub fn response_headers(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":status", b"200", false);
    literal(&mut block, "content-type", b"application/grpc", false);
    for (k, v) in extra {
        literal(&mut block, k, v.as_bytes(), false);
    }
    block
}

/// A gRPC length-prefixed message.
pub fn grpc_message(compressed: bool, body: &[u8]) -> Vec<u8> {
    let mut m = vec![u8::from(compressed)];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A SETTINGS frame with `(id, value)` pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// What the server saw of the client's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// HEADERS opening (or continuing) this stream.
    Headers(u32),
    /// The client acknowledged our SETTINGS.
    SettingsAck,
}

/// One accepted connection handed to a behaviour.
pub struct Conn {
    pub write: OwnedWriteHalf,
    /// Frames the client sent (only when the behaviour asked for reading).
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Bytes this connection managed to write.
    pub written: Arc<AtomicU64>,
}

impl Conn {
    /// Writes `bytes`, counting them; false once the client is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        if self.write.write_all(bytes).await.is_err() {
            return false;
        }
        self.written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        true
    }

    /// The next stream the client opens.
    pub async fn next_stream(&mut self) -> Option<u32> {
        while let Some(s) = self.seen.recv().await {
            if let Seen::Headers(id) = s {
                return Some(id);
            }
        }
        None
    }

    /// Waits for the client's SETTINGS acknowledgement.
    pub async fn settings_acked(&mut self) {
        while let Some(s) = self.seen.recv().await {
            if s == Seen::SettingsAck {
                return;
            }
        }
    }
}

/// Reads the preface and frames, reporting HEADERS and SETTINGS acks.
async fn read_frames(mut read: tokio::net::tcp::OwnedReadHalf, seen: mpsc::UnboundedSender<Seen>) {
    let mut preface = [0u8; 24];
    if read.read_exact(&mut preface).await.is_err() {
        return;
    }
    let mut head = [0u8; 9];
    let mut payload = Vec::new();
    loop {
        if read.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        payload.resize(len, 0);
        if read.read_exact(&mut payload).await.is_err() {
            return;
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let event = match (head[3], head[4] & ACK) {
            (HEADERS, _) => Some(Seen::Headers(stream)),
            (SETTINGS, ACK) => Some(Seen::SettingsAck),
            _ => None,
        };
        if let Some(e) = event {
            let _ = seen.send(e);
        }
    }
}

/// A server running `behaviour` on every accepted connection.
pub struct RawServer {
    pub addr: SocketAddr,
    /// Bytes written on all connections.
    pub written: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RawServer {
    /// `read`: whether the client's frames are read at all (a server that
    /// never reads lets the client's writes back up).
    pub async fn start<F, Fut>(read: bool, behaviour: F) -> RawServer
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let written = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&written);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, rx) = mpsc::unbounded_channel();
                let (r, w) = TcpStream::into_split(tcp);
                if read {
                    tokio::spawn(read_frames(r, tx));
                } else {
                    // Keep the read half open, unread.
                    tokio::spawn(async move {
                        let _keep = (r, tx);
                        std::future::pending::<()>().await;
                    });
                }
                tokio::spawn(behaviour(Conn {
                    write: w,
                    seen: rx,
                    written: Arc::clone(&counter),
                }));
            }
        });
        RawServer { addr, written, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
