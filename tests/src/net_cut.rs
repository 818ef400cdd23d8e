//! A TCP proxy on loopback that a test can cut: while cut, it forwards
//! nothing in either direction but keeps every connection open (bytes are
//! read and dropped), like a network partition that loses packets. Healing
//! closes the connections that lived through the cut (as TCP would once
//! its retransmissions gave up) and forwards new ones normally.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A cuttable proxy to one upstream address.
pub struct CutProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    epoch: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let cut = Arc::new(AtomicBool::new(false));
        let (epoch, _) = watch::channel(0u64);
        let accept = {
            let (cut, epoch) = (cut.clone(), epoch.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, cut.clone(), epoch.subscribe()));
                    tokio::spawn(pump(sr, cw, cut.clone(), epoch.subscribe()));
                }
            })
        };
        CutProxy {
            addr,
            cut,
            epoch,
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
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.epoch.send_modify(|e| *e += 1);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    mut epoch: watch::Receiver<u64>,
) {
    epoch.borrow_and_update();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = from.read(&mut buf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped on the floor
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            // Healed (or the proxy dropped): this connection lived through
            // the cut, close it.
            _ = epoch.changed() => return,
        }
    }
}
