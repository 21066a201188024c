//! A TCP proxy that adds latency, as a link to a store in another building or region would: every
//! byte arrives `one_way` later than it was sent, in both directions, so each request/response
//! round trip takes `2 x one_way` longer. This kernel has no `netem`; this stands in for
//! `tc qdisc add dev lo root netem delay`.
//!
//! Bytes are read as they come and held in a queue per direction until their time; the queue
//! holds at most 16 MiB in flight per direction and connection, as a TCP window would (a sender
//! that fills it waits).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes read per step.
const CHUNK: usize = 64 * 1024;
/// Bytes in flight per direction and connection: 256 x 64 KiB = 16 MiB, a generous TCP window
/// (about 500 MiB/s at 30 ms).
const WINDOW_CHUNKS: usize = 256;

pub struct DelayProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Listen on a free loopback port; every connection goes to `upstream`, each direction
    /// `one_way` late.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = serve(client, upstream, one_way).await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, one_way: Duration) -> io::Result<()> {
    let up = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::try_join!(delay_line(cr, uw, one_way), delay_line(ur, cw, one_way))?;
    Ok(())
}

/// Copy `from` to `to`, each chunk written `delay` after it was read; the end of `from` is passed
/// on (as a shutdown of `to`) once everything before it is written.
async fn delay_line<R, W>(mut from: R, mut to: W, delay: Duration) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(WINDOW_CHUNKS);
    let read = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
            buf.truncate(n);
            if tx.send((Instant::now() + delay, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            to.write_all(&buf).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the proxy gets back every byte, each round trip at least two
    /// delays long.
    #[tokio::test]
    async fn bytes_arrive_whole_and_late() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let one_way = Duration::from_millis(40);
        let proxy = DelayProxy::start(echo_addr, one_way).await.expect("proxy");
        let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
        let sent: Vec<u8> = (0..3 * CHUNK + 7).map(|i| (i % 251) as u8).collect();
        for _ in 0..2 {
            let start = std::time::Instant::now();
            conn.write_all(&sent).await.expect("write");
            let mut got = vec![0u8; sent.len()];
            conn.read_exact(&mut got).await.expect("read");
            assert!(start.elapsed() >= 2 * one_way, "{:?}", start.elapsed());
            assert!(got == sent, "the bytes came back changed");
        }
        // The end of the stream is passed on: the echo server closes, the client reads EOF.
        conn.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }
}
