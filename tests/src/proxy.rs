//! A TCP proxy the test controls, placed between one member and etcd. `partition()` makes it
//! a black hole (open connections stop carrying bytes, new ones hang), like a network cut
//! rather than a refused connection; `heal()` closes the stuck connections so clients
//! reconnect; `reset()` closes every open connection at once (the clients connect again).

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy.
pub struct Proxy {
    /// `127.0.0.1:<port>` to connect to instead of the upstream.
    pub addr: String,
    cut: Arc<watch::Sender<bool>>,
    reset: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let (tx, rx) = watch::channel(false);
        let cut = Arc::new(tx);
        let (reset_tx, reset_rx) = watch::channel(0u64);
        let reset = Arc::new(reset_tx);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let rx = rx.clone();
                let mut reset = reset_rx.clone();
                reset.mark_unchanged();
                let upstream = upstream.clone();
                tokio::spawn(async move { relay(client, upstream, rx, reset).await });
            }
        });
        Ok(Self {
            addr,
            cut,
            reset,
            task,
        })
    }

    /// Closes every connection open now; new ones are carried as before.
    pub fn reset(&self) {
        self.reset.send_modify(|n| *n += 1);
    }

    /// Stops carrying bytes.
    pub fn partition(&self) {
        self.cut.send_replace(true);
    }

    /// Carries bytes again (connections stuck during the partition are closed).
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    upstream: String,
    mut cut: watch::Receiver<bool>,
    mut reset: watch::Receiver<u64>,
) {
    if *cut.borrow() {
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut a = tokio::spawn(pipe(cr, sw, cut.clone()));
    let mut b = tokio::spawn(pipe(sr, cw, cut));
    tokio::select! {
        _ = async { let _ = tokio::join!(&mut a, &mut b); } => {}
        _ = reset.changed() => {
            // Dropping both halves of both sockets closes the connection on each side.
            a.abort();
            b.abort();
        }
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if *cut.borrow() {
            let _ = cut.wait_for(|c| !*c).await;
            return;
        }
        tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *cut.borrow() {
                        let _ = cut.wait_for(|c| !*c).await;
                        return;
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = cut.changed() => if r.is_err() { return },
        }
    }
}
