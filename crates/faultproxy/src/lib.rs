//! A fault-injecting TCP proxy for tests: put it between barge and an S3 server and it answers a
//! share of new connections with `503 SlowDown` or `500 InternalError`, and cuts or stalls the
//! others after a random number of bytes. Every connection, healthy ones included, has a byte
//! budget, so faults keep coming for as long as the transfer runs.
//!
//! [`TlsFront`] puts TLS in front of a plain-HTTP server, with a certificate authority of its own;
//! [`ForwardProxy`] is a forward HTTP proxy (absolute-form requests and `CONNECT` tunnels);
//! [`DelayProxy`] adds latency to every byte, both ways (benchmarks over a slow link).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

mod delay;
mod forward;
mod tls;
pub use delay::DelayProxy;
pub use forward::{ForwardProxy, ProxyCounts};
pub use tls::TlsFront;

/// How often each fault happens.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Share of new connections answered `503 SlowDown`.
    pub slowdown: f64,
    /// Share of new connections answered `500 InternalError`.
    pub internal_error: f64,
    /// Share of connections that stall (stop forwarding) when their byte budget runs out; the
    /// others are cut.
    pub stall: f64,
    /// How long a stalled connection hangs before it is closed.
    pub stall_for: Duration,
    /// Mean bytes a connection carries before it is cut or stalled.
    pub mean_budget: u64,
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            slowdown: 0.15,
            internal_error: 0.05,
            stall: 0.2,
            stall_for: Duration::from_secs(8),
            mean_budget: 24 * 1024 * 1024,
            seed: 42,
        }
    }
}

/// How many of each fault were injected.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    pub slowdowns: AtomicU64,
    pub internal_errors: AtomicU64,
    pub cuts: AtomicU64,
    pub stalls: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.connections.load(Ordering::Relaxed),
            self.slowdowns.load(Ordering::Relaxed),
            self.internal_errors.load(Ordering::Relaxed),
            self.cuts.load(Ordering::Relaxed),
            self.stalls.load(Ordering::Relaxed),
        ]
    }
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Fate {
    Reply(&'static str, &'static str),
    Pipe { budget: u64, stall: bool },
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(faults.seed)));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                c.connections.fetch_add(1, Ordering::Relaxed);
                let fate = {
                    let mut r = rng.lock().await;
                    let x: f64 = r.random();
                    if x < faults.slowdown {
                        Fate::Reply("503 Slow Down", "SlowDown")
                    } else if x < faults.slowdown + faults.internal_error {
                        Fate::Reply("500 Internal Server Error", "InternalError")
                    } else {
                        // Exponentially distributed budget around the mean.
                        let u: f64 = r.random_range(1e-6..1.0);
                        let budget = (-(u.ln()) * faults.mean_budget as f64) as u64 + 1024;
                        Fate::Pipe {
                            budget,
                            stall: r.random::<f64>() < faults.stall,
                        }
                    }
                };
                let c = c.clone();
                let stall_for = faults.stall_for;
                tokio::spawn(async move {
                    let _ = serve(client, upstream, fate, stall_for, &c).await;
                });
            }
        });
        Ok(Self { addr, counts, task })
    }
}

/// Where the head of the request in `bytes` ends (after its blank line), if it is all there.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Read from `client` until the first request's head is all in (64 KiB at most): what was
/// read, or `None` if the client closed before that.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head_end(&head).is_none() && head.len() < 65536 {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(Some(head))
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fate: Fate,
    stall_for: Duration,
    counts: &Counts,
) -> std::io::Result<()> {
    match fate {
        Fate::Reply(status, code) => {
            // Read the request head, answer, close.
            if read_head(&mut client).await?.is_none() {
                return Ok(());
            }
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by faultproxy</Message><RequestId>fp</RequestId></Error>"
            );
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if code == "SlowDown" {
                counts.slowdowns.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.internal_errors.fetch_add(1, Ordering::Relaxed);
            }
            client.write_all(resp.as_bytes()).await?;
            client.shutdown().await?;
            Ok(())
        }
        Fate::Pipe { budget, stall } => {
            let up = TcpStream::connect(upstream).await?;
            let (cr, cw) = client.into_split();
            let (ur, uw) = up.into_split();
            let used = Arc::new(AtomicU64::new(0));
            let (u1, u2) = (used.clone(), used);
            let pump = |mut r: tokio::net::tcp::OwnedReadHalf,
                        mut w: tokio::net::tcp::OwnedWriteHalf,
                        used: Arc<AtomicU64>| async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = r.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<bool, std::io::Error>(false);
                    }
                    let before = used.fetch_add(n as u64, Ordering::Relaxed);
                    if before + n as u64 > budget {
                        // Forward part of it, then fault.
                        let keep = budget.saturating_sub(before) as usize;
                        w.write_all(&buf[..keep.min(n)]).await?;
                        return Ok(true);
                    }
                    w.write_all(&buf[..n]).await?;
                }
            };
            let faulted = tokio::select! {
                r = pump(cr, uw, u1) => r.unwrap_or(false),
                r = pump(ur, cw, u2) => r.unwrap_or(false),
            };
            if faulted {
                if stall {
                    counts.stalls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(stall_for).await;
                } else {
                    counts.cuts.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
    }
}
