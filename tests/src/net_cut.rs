//! A TCP proxy on loopback that a test can cut: while cut, it forwards
//! nothing in either direction but keeps every connection open (bytes are
//! read and dropped), like a network partition that loses packets. Healing
//! closes the connections that lived through the cut (as TCP would once
//! its retransmissions gave up) and forwards new ones normally.
//!
//! It can also hold back a client's Redis blocking reads (a command with a
//! `BLOCK` argument) until released, so a test can put data in place
//! *before* the read reaches the server, whatever the server version.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A cuttable proxy to one upstream address.
pub struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: watch::Sender<u64>,
    hold: Arc<Hold>,
    accept: tokio::task::JoinHandle<()>,
}

/// Holding back blocking reads: whether to, and how many are held now.
struct Hold {
    on: watch::Sender<bool>,
    held: AtomicU64,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = watch::channel(0u64);
        let hold = Arc::new(Hold {
            on: watch::channel(false).0,
            held: AtomicU64::new(0),
        });
        let accept = {
            let (cut, epoch, hold) = (cut.clone(), epoch.clone(), hold.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = Pump {
                        cut: cut.clone(),
                        epoch: epoch.subscribe(),
                        hold: Some(hold.clone()),
                    };
                    let down = Pump {
                        cut: cut.clone(),
                        epoch: epoch.subscribe(),
                        hold: None,
                    };
                    tokio::spawn(up.run(cr, sw));
                    tokio::spawn(down.run(sr, cw));
                }
            })
        };
        CutProxy {
            addr,
            cut,
            epoch,
            hold,
            accept,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding (connections stay open, traffic is dropped).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again; connections that lived through the cut are closed.
    pub fn heal(&self) {
        self.epoch.send_modify(|e| *e += 1);
        self.cut.store(false, Ordering::SeqCst);
    }

    /// From now on, a client write that carries a Redis `BLOCK` argument
    /// (a blocking `XREADGROUP`/`XREAD`) is held at the proxy, with the
    /// connection's later writes, until [`release_blocking_reads`].
    ///
    /// [`release_blocking_reads`]: Self::release_blocking_reads
    pub fn hold_blocking_reads(&self) {
        self.hold.on.send_replace(true);
    }

    /// Forwards the held blocking reads, and stops holding new ones.
    pub fn release_blocking_reads(&self) {
        self.hold.on.send_replace(false);
    }

    /// Waits until `n` blocking reads are held; panics after `limit`.
    pub async fn wait_held(&self, n: u64, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.hold.held.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{n} held blocking reads never seen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

/// One direction of one connection.
struct Pump {
    cut: Arc<AtomicBool>,
    epoch: watch::Receiver<u64>,
    /// Client to server only: blocking reads may be held.
    hold: Option<Arc<Hold>>,
}

/// A RESP bulk string `BLOCK`: the argument of a blocking read.
const BLOCK_ARG: &[u8] = b"$5\r\nBLOCK\r\n";

impl Pump {
    async fn run(
        mut self,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        self.epoch.borrow_and_update();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                r = from.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if self.cut.load(Ordering::SeqCst) {
                        continue; // dropped on the floor
                    }
                    if let Some(hold) = &self.hold {
                        let blocking = buf[..n].windows(BLOCK_ARG.len()).any(|w| w == BLOCK_ARG);
                        if blocking && *hold.on.borrow() {
                            hold.held.fetch_add(1, Ordering::SeqCst);
                            let mut on = hold.on.subscribe();
                            // Bounded: a test that never releases still ends.
                            let _ = tokio::time::timeout(Duration::from_secs(30), on.wait_for(|on| !on)).await;
                            hold.held.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                // Healed (or the proxy dropped): this connection lived through
                // the cut, close it.
                _ = self.epoch.changed() => return,
            }
        }
    }
}
