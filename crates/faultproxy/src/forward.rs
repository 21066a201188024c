//! A forward HTTP proxy, as a company's egress proxy would be: it takes plain-HTTP requests in
//! absolute form (`GET http://host:port/path HTTP/1.1`) and `CONNECT host:port` tunnels (for
//! HTTPS), and sends both to its one upstream whatever host they name. A test can then give a
//! client an endpoint it cannot reach directly: the client gets through only where it goes
//! through the proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What went through the proxy.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Connections whose first request was a plain-HTTP request in absolute form.
    pub forwarded: AtomicU64,
    /// `CONNECT` tunnels.
    pub tunnels: AtomicU64,
    /// Connections that were neither (refused with `400`).
    pub refused: AtomicU64,
}

impl ProxyCounts {
    /// `[forwarded, tunnels, refused]`.
    pub fn snapshot(&self) -> [u64; 3] {
        [
            self.forwarded.load(Ordering::Relaxed),
            self.tunnels.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        ]
    }
}

pub struct ForwardProxy {
    /// Where it listens: `http://{addr}` is the proxy's address.
    pub addr: SocketAddr,
    pub counts: Arc<ProxyCounts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ForwardProxy {
    /// Listen on a free loopback port and send every request and tunnel to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(ProxyCounts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, &c).await;
                });
            }
        });
        Ok(Self { addr, counts, task })
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    counts: &ProxyCounts,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    // The first request's head (a CONNECT has nothing after it until the proxy answers).
    let Some(head) = super::read_head(&mut client).await? else {
        return Ok(());
    };
    let Some(end) = super::head_end(&head) else {
        return Ok(());
    };
    let tunnel = head.starts_with(b"CONNECT ");
    let absolute = head
        .splitn(2, |&b| b == b' ')
        .nth(1)
        .is_some_and(|rest| rest.starts_with(b"http://"));
    if !tunnel && !absolute {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        client
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream).await?;
    let _ = up.set_nodelay(true);
    if tunnel {
        counts.tunnels.fetch_add(1, Ordering::Relaxed);
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        up.write_all(&head[end..]).await?;
    } else {
        counts.forwarded.fetch_add(1, Ordering::Relaxed);
        up.write_all(&head).await?;
    }
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, 256 * 1024, 256 * 1024).await?;
    Ok(())
}
