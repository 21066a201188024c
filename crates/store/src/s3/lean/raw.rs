//! Ranged GETs read from the socket into barge's own buffers.
//!
//! hyper reads an answer into a buffer of its own and hands the body out as chunks of it, which
//! barge then copied once more: into the part buffer of an S3-to-S3 part, or into the aligned
//! window a downloaded part is written to disk from. Here the request is written by hand (signed
//! as on the rest of the lean path), the answer's head is parsed with `httparse`, and the body
//! is read from the socket straight into the memory it is meant for: a part buffer, or a pooled
//! aligned window that the local file's direct writes take as it is.
//!
//! Only what a ranged GET needs: HTTP/1.1 keep-alive connections, pooled per store; a body of
//! exactly the Content-Length asked for. Anything else (a head over [`HEAD_MAX`], a short or long
//! body, a stall past the read timeout, an answer that is not HTTP) drops the connection and is a
//! transient error the engine retries. A server that sends ranged bodies without a
//! Content-Length (chunked) sends that store's ranged GETs back to the SDK, which reads any body.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sigv4::http_request::SignableBody;
use bytes::{BufMut, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::{ERROR_BODY_MAX, Failure, Lean, xml_field};
use crate::aligned::Windows;
use crate::checksum::crc32c_append;
use crate::{ByteChunks, ObjectPath, Pin, Result, StoreError};

/// The most an answer's head may take.
const HEAD_MAX: usize = 64 * 1024;
/// Idle connections older than this are closed rather than reused: servers close idle
/// connections after a while, and a request on one the server has just closed is lost (it is
/// then sent once more on a new connection, see [`Lean::open_range`]).
const IDLE_MAX: Duration = Duration::from_secs(15);
/// Idle connections kept per store.
const IDLE_KEEP: usize = 128;
/// Headers an answer may have.
const HEADERS_MAX: usize = 96;

/// A connection: plain, or TLS for an `https://` endpoint.
type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// A store's idle connections, by `host:port`.
#[derive(Default)]
pub(in crate::s3) struct Conns {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    authority: String,
    stream: Stream,
    since: Instant,
}

impl Conns {
    fn take(&self, authority: &str) -> Option<Stream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < IDLE_MAX);
        let i = idle.iter().rposition(|c| c.authority == authority)?;
        Some(idle.swap_remove(i).stream)
    }

    fn put(&self, authority: &str, stream: Stream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_KEEP {
            idle.push(Idle {
                authority: authority.to_string(),
                stream,
                since: Instant::now(),
            });
        }
    }
}

/// The body of a ranged GET, still on its connection. Dropped before its end, it closes the
/// connection; read to its end, the connection goes back to the pool.
struct Body {
    stream: Option<Stream>,
    /// Body bytes that came with the head.
    early: Vec<u8>,
    early_at: usize,
    len: u64,
    remaining: u64,
    reuse: bool,
    authority: String,
    conns: Arc<Conns>,
    read_timeout: Duration,
    store: String,
    shown: String,
    /// The socket's receive low-water mark as last set (see [`LOW_WATER`]).
    lowat: usize,
}

/// A body read waits until this many bytes have arrived (or the rest of the body, if less):
/// at a gigabyte a second over many connections, waking for every few kilobytes costs more CPU
/// than the copy. Plain TCP on Linux only (`SO_RCVLOWAT`); a connection goes back to the pool
/// with the mark reset, for the next answer's head.
const LOW_WATER: usize = 1024 * 1024;

/// Set a plain TCP connection's receive low-water mark; where it cannot be set, reads just wake
/// as data arrives. Whether the socket took it (or has no such mark here).
fn set_low_water(stream: &Stream, bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    if let Either::Left(tcp) = stream {
        use std::os::fd::AsRawFd;
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: an open socket descriptor, and a pointer to a c_int with its size.
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw const v).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!("SO_RCVLOWAT: {}", std::io::Error::last_os_error());
            return false;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, bytes);
    true
}

impl Body {
    fn remaining(&self) -> u64 {
        self.remaining
    }

    fn fail(&mut self, detail: String) -> StoreError {
        self.stream = None;
        StoreError::Transient {
            store: self.store.clone(),
            op: "GetObject".into(),
            detail: format!("{}: {detail}", self.shown),
        }
    }

    /// Read some of the body (at most what is left of it, at most `dst`'s room) into `dst`;
    /// how many bytes. Fails if the body ends early; returns 0 only once it is all read.
    async fn read_into<B: BufMut>(&mut self, dst: &mut B) -> Result<usize> {
        let want = dst
            .remaining_mut()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = if self.early_at < self.early.len() {
            let n = want.min(self.early.len() - self.early_at);
            dst.put_slice(&self.early[self.early_at..self.early_at + n]);
            self.early_at += n;
            n
        } else {
            let Some(stream) = self.stream.as_mut() else {
                return Err(self.fail("the connection was closed after an error".into()));
            };
            let low = LOW_WATER.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            if low != self.lowat && set_low_water(stream, low) {
                self.lowat = low;
            }
            let mut room = (&mut *dst).limit(want);
            match timed_read(stream, &mut room, self.read_timeout).await {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(self.fail("timed out reading the answer".into()));
                }
                Err(e) => return Err(self.fail(format!("reading the answer failed: {e}"))),
                Ok(n) => n,
            }
        };
        if n == 0 {
            let seen = self.len - self.remaining;
            return Err(self.fail(format!(
                "the answer ended after {seen} of {} bytes",
                self.len
            )));
        }
        self.remaining -= n as u64;
        if self.remaining == 0
            && self.reuse
            && let Some(s) = self.stream.take()
            // A connection still waiting for a megabyte would never read a short answer.
            && (self.lowat == 1 || set_low_water(&s, 1))
        {
            self.conns.put(&self.authority, s);
        }
        Ok(n)
    }
}

/// One read from the socket into `dst`'s spare room, given up (as `TimedOut`) after `timeout`.
async fn timed_read<B: BufMut>(
    stream: &mut Stream,
    dst: &mut B,
    timeout: Duration,
) -> std::io::Result<usize> {
    tokio::time::timeout(timeout, stream.read_buf(dst))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// How one request on one connection went.
enum Sent {
    /// The head of the answer, and the bytes read with it.
    Answer(Head, Vec<u8>),
    /// The connection closed (or was reset) before any byte of an answer: on a pooled
    /// connection, the server had closed it while idle.
    Closed,
    Failed(Failure),
}

struct Head {
    status: u16,
    /// Bytes of the head, in the buffer read with it.
    len: usize,
    content_length: Option<u64>,
    content_range: Option<String>,
    chunked: bool,
    keep_alive: bool,
}

fn parse_head(buf: &[u8]) -> std::result::Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the answer is not HTTP/1.1 ({e})")),
    };
    let mut head = Head {
        status: answer.code.unwrap_or(0),
        len,
        content_length: None,
        content_range: None,
        chunked: false,
        // HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes it.
        keep_alive: answer.version == Some(1),
    };
    for h in answer.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| format!("the answer's Content-Length {value:?} is not a number"))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("the answer has two different Content-Lengths".into());
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("content-range") {
            head.content_range = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                head.keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                head.keep_alive = true;
            }
        }
    }
    Ok(Some(head))
}

/// Chunks of a ranged GET read into pooled aligned windows of this size: the local file's
/// write batch, so each chunk goes to disk as it is.
const WINDOW: usize = 1024 * 1024;
/// Idle windows kept per store (a part in flight holds one or two).
const WINDOWS_KEPT: usize = 32;

pub(in crate::s3) fn windows() -> Arc<Windows> {
    Windows::new(WINDOW, WINDOWS_KEPT)
}

impl Lean {
    /// Whether ranged GETs are still read here (not sent back to the SDK).
    pub(in crate::s3) fn reads_ranges_by_hand(&self) -> bool {
        !self.raw_off.load(Ordering::Relaxed)
    }

    /// Bytes `[offset, offset + len)` of the pinned object read into `buf` (empty; a reused
    /// part buffer, so into its spare room), and their CRC32C computed read by read while the bytes are in the
    /// CPU cache; `None` when the SDK must read this store's answers.
    pub(in crate::s3) async fn get_range_into(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
        buf: &mut BytesMut,
    ) -> Result<Option<u32>> {
        let Some(mut body) = self.get_range_body(path, pin, offset, len).await? else {
            return Ok(None);
        };
        buf.clear();
        buf.reserve(usize::try_from(len).unwrap_or(usize::MAX));
        let mut crc = 0;
        while body.remaining() > 0 {
            let start = buf.len();
            body.read_into(buf).await?;
            crc = crc32c_append(crc, &buf[start..]);
        }
        Ok(Some(crc))
    }

    /// Bytes `[offset, offset + len)` of the pinned object as chunks of up to [`WINDOW`] bytes,
    /// each read into a pooled aligned window; `None` when the SDK must read this store's
    /// answers.
    pub(in crate::s3) async fn get_range_chunks(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Option<ByteChunks>> {
        let Some(body) = self.get_range_body(path, pin, offset, len).await? else {
            return Ok(None);
        };
        let windows = self.windows.clone();
        let chunks = futures::stream::unfold(Some(body), move |state| {
            let windows = windows.clone();
            async move {
                let mut body = state?;
                if body.remaining() == 0 {
                    return None;
                }
                let mut window = windows.take();
                let want = usize::try_from(body.remaining())
                    .unwrap_or(usize::MAX)
                    .min(window.cap());
                let mut got = 0;
                while got < want {
                    let mut room = &mut window.spare_mut()[..want - got];
                    match body.read_into(&mut room).await {
                        Ok(n) => {
                            window.advance(n);
                            got += n;
                        }
                        Err(e) => return Some((Err(e), None)),
                    }
                }
                Some((Ok(windows.freeze(window)), Some(body)))
            }
        });
        Ok(Some(Box::pin(chunks)))
    }

    /// The body of bytes `[offset, offset + len)` (`len` > 0) of the pinned object, on its
    /// connection; `None` when this store's answers cannot be read here (the caller uses the
    /// SDK, and does for every later read).
    async fn get_range_body(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Option<Body>> {
        if self.raw_off.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match self.open_range(path, pin, offset, len).await {
            Ok(body) => Ok(Some(body)),
            Err(Failure::Unreadable(why)) => {
                if !self.raw_off.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.store, "ranged GETs go through the SDK: {why}");
                }
                Ok(None)
            }
            Err(f) => Err(self.fail("GetObject", path, f)),
        }
    }

    async fn open_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Body, Failure> {
        let url = self.url(path, Some(pin)).await.map_err(Failure::Refused)?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| Failure::Refused(format!("the URL {url}: {e}")))?;
        let host = uri
            .host()
            .ok_or_else(|| Failure::Refused(format!("the URL {url} names no host")))?;
        let port = uri.port_u16();
        let authority = match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let port = port.unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        let header = |v: &str, what: &str| {
            HeaderValue::from_str(v)
                .map_err(|_| Failure::Refused(format!("{what} {v:?} cannot be sent in a header")))
        };
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, header(&authority, "the host")?);
        let range = super::super::range_header(offset, len);
        headers.insert(http::header::RANGE, header(&range, "the range")?);
        if let Some(etag) = &pin.etag {
            headers.insert(http::header::IF_MATCH, header(etag, "the ETag")?);
        }
        self.sign(
            &http::Method::GET,
            &url,
            &mut headers,
            SignableBody::Bytes(&[]),
        )
        .await?;
        let mut request = format!("GET {target} HTTP/1.1\r\n").into_bytes();
        for (k, v) in &headers {
            request.extend_from_slice(k.as_str().as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(v.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        // A pooled connection the server closed while it was idle loses the request before any
        // answer: send it again, on the next pooled one or a new one (pooled ones run out).
        let (mut stream, head, mut buf) = loop {
            let (mut stream, pooled) = match self.conns.take(&authority) {
                Some(s) => (s, true),
                None => (self.connect(host, port).await?, false),
            };
            match self.send(&mut stream, &request).await {
                Sent::Answer(head, buf) => break (stream, head, buf),
                Sent::Closed if pooled => continue,
                Sent::Closed => {
                    return Err(Failure::Transport(
                        "the connection closed before an answer".into(),
                    ));
                }
                Sent::Failed(f) => return Err(f),
            }
        };
        tracing::debug!(%url, status = head.status, "S3 answer (lean path, ranged)");
        let ranged = head.status == 206 || (head.status == 200 && offset == 0);
        if !ranged {
            let detail = self.error_body(&mut stream, &head, &mut buf).await;
            return Err(Failure::Status(
                head.status,
                xml_field(&detail, "Code").unwrap_or_default(),
                xml_field(&detail, "Message").unwrap_or_default(),
            ));
        }
        let Some(content_length) = head.content_length.filter(|_| !head.chunked) else {
            return Err(Failure::Unreadable(
                "the server sends ranged answers without a Content-Length".into(),
            ));
        };
        let early = buf.split_off(head.len);
        if content_length != len || early.len() as u64 > len {
            return Err(Failure::Transport(format!(
                "the answer holds {content_length} bytes where {len} were asked"
            )));
        }
        let range = if head.status == 206 {
            head.content_range.as_deref().or(Some(""))
        } else {
            None
        };
        if let Some(why) = crate::s3::range_answer_problem(range, offset, len) {
            return Err(Failure::Transport(why));
        }
        Ok(Body {
            stream: Some(stream),
            early,
            early_at: 0,
            len,
            remaining: len,
            reuse: head.keep_alive,
            authority,
            conns: self.conns.clone(),
            read_timeout: self.read_timeout,
            store: self.store.clone(),
            shown: path.to_string(),
            lowat: 1,
        })
    }

    async fn connect(&self, host: &str, port: u16) -> std::result::Result<Stream, Failure> {
        // An IPv6 literal comes bracketed in a URL.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| Failure::Transport(format!("timed out connecting to {host}:{port}")))?
            .map_err(|e| Failure::Transport(format!("connecting to {host}:{port}: {e}")))?;
        // Small requests go out at once rather than waiting for more to send.
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::Transport(format!("connecting to {host}:{port}: {e}")))?;
        let Some(tls) = &self.tls else {
            return Ok(Either::Left(stream));
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Failure::Refused(format!("the host {host}: {e}")))?;
        let stream = tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
            .await
            .map_err(|_| Failure::Transport(format!("timed out in TLS with {host}:{port}")))?
            .map_err(|e| match crate::tls::failure(&e) {
                Some(why) => Failure::Refused(format!("{host}:{port}: {why}")),
                None => Failure::Transport(format!("TLS with {host}:{port}: {e}")),
            })?;
        Ok(Either::Right(stream))
    }

    /// Write the request, read the answer's head.
    async fn send(&self, stream: &mut Stream, request: &[u8]) -> Sent {
        // A TLS connection the server closed without a word reads as an unexpected end.
        let gone = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        };
        // TLS holds written bytes until flushed; a plain socket's flush does nothing.
        let write = async {
            stream.write_all(request).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.read_timeout, write).await {
            Err(_) => {
                return Sent::Failed(Failure::Transport("timed out sending the request".into()));
            }
            Ok(Err(e)) if gone(&e) => return Sent::Closed,
            Ok(Err(e)) => {
                return Sent::Failed(Failure::Transport(format!("sending the request: {e}")));
            }
            Ok(Ok(())) => {}
        }
        let mut buf = Vec::with_capacity(16 * 1024);
        loop {
            if buf.len() >= HEAD_MAX {
                return Sent::Failed(Failure::Transport(format!(
                    "the answer's head is over {HEAD_MAX} bytes"
                )));
            }
            buf.reserve(8 * 1024);
            match timed_read(stream, &mut buf, self.read_timeout).await {
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Sent::Failed(Failure::Transport(
                        "timed out waiting for the answer".into(),
                    ));
                }
                Ok(0) if buf.is_empty() => return Sent::Closed,
                Err(e) if buf.is_empty() && gone(&e) => return Sent::Closed,
                Ok(0) => {
                    return Sent::Failed(Failure::Transport(
                        "the connection closed in the middle of the answer's head".into(),
                    ));
                }
                Err(e) => {
                    return Sent::Failed(Failure::Transport(format!(
                        "reading the answer failed: {e}"
                    )));
                }
                Ok(_) => {}
            }
            match parse_head(&buf) {
                Ok(Some(head)) => return Sent::Answer(head, buf),
                Ok(None) => {}
                Err(e) => return Sent::Failed(Failure::Transport(e)),
            }
        }
    }

    /// The start of an error answer's body (its XML has the code and message), read within the
    /// read timeout; the connection is closed after it.
    async fn error_body(&self, stream: &mut Stream, head: &Head, buf: &mut Vec<u8>) -> String {
        let want = head
            .content_length
            .map_or(ERROR_BODY_MAX, |n| n.min(ERROR_BODY_MAX as u64) as usize);
        let mut body = buf.split_off(head.len.min(buf.len()));
        while body.len() < want {
            let left = want - body.len();
            let mut room = (&mut body).limit(left);
            match timed_read(stream, &mut room, self.read_timeout).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        body.truncate(want);
        String::from_utf8_lossy(&body).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use bytes::BytesMut;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::{Lean, parse_head};
    use crate::{ObjectPath, Pin, StoreError};

    #[test]
    fn heads_give_status_length_and_keep_alive() {
        let h = parse_head(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhello")
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (h.status, h.content_length, h.chunked, h.keep_alive),
            (206, Some(5), false, true)
        );
        assert_eq!(h.len, 51);
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert!(h.chunked && !h.keep_alive && h.content_length.is_none());
        let h = parse_head(b"HTTP/1.0 206 x\r\ncontent-length: 1\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!h.keep_alive, "HTTP/1.0 closes unless told otherwise");
        assert!(
            parse_head(b"HTTP/1.1 206 Partial")
                .expect("valid")
                .is_none()
        );
        assert!(parse_head(b"HTTP/1.1 206 x\r\nContent-Length: 5x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 206 x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// One canned answer: its bytes, and whether the server closes the connection after it
    /// (without saying so).
    type Script = Vec<(Vec<u8>, bool)>;

    /// A server on loopback that answers each request with the next scripted answer, and keeps
    /// the heads of the requests it got, with a line "connection" for each connection accepted.
    async fn server(script: Script) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads = seen.clone();
        tokio::spawn(async move {
            let mut script = script.into_iter();
            'conns: while let Ok((mut conn, _)) = listener.accept().await {
                heads.lock().expect("heads").push("connection".into());
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        match conn.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => continue 'conns,
                        }
                    }
                    heads
                        .lock()
                        .expect("heads")
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let Some((answer, close)) = script.next() else {
                        return;
                    };
                    if conn.write_all(&answer).await.is_err() || close {
                        continue 'conns;
                    }
                }
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn lean(endpoint: &str) -> Lean {
        let creds = Credentials::new("AKIDTEST", "not-a-real-secret", None, None, "test");
        Lean::new(
            "fake",
            Some(endpoint),
            "us-east-1",
            true,
            Some(SharedCredentialsProvider::new(creds)),
            Duration::from_secs(5),
            Duration::from_secs(5),
            &crate::tls::Trust::load("fake", None).expect("no bundle"),
        )
        .expect("a plain HTTP endpoint")
        .expect("a plain HTTP endpoint")
    }

    fn partial(offset: usize, body: &[u8]) -> Vec<u8> {
        let mut a = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {offset}-{}/100\r\nETag: \"e1\"\r\n\r\n",
            body.len(),
            offset + body.len() - 1
        )
        .into_bytes();
        a.extend_from_slice(body);
        a
    }

    fn pin() -> Pin {
        Pin {
            etag: Some("\"e1\"".into()),
            version_id: None,
        }
    }

    #[tokio::test]
    async fn ranged_reads_are_signed_pinned_and_reuse_or_replace_connections() {
        // The first answer's connection is closed by the server behind barge's back: the
        // second read finds it dead in the pool and goes again on a new one.
        let (url, seen) = server(vec![
            (partial(10, b"hello"), true),
            (partial(15, b"world!"), false),
            (partial(0, b"again"), false),
        ])
        .await;
        let lean = lean(&url);
        let path = ObjectPath::new("bkt", "dir/a b.bin");
        let mut buf = BytesMut::new();
        let crc = lean
            .get_range_into(&path, &pin(), 10, 5, &mut buf)
            .await
            .expect("read")
            .expect("read by hand");
        assert_eq!(&buf[..], b"hello");
        assert_eq!(crc, crate::checksum::crc32c(b"hello"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut chunks = lean
            .get_range_chunks(&path, &pin(), 15, 6)
            .await
            .expect("read")
            .expect("read by hand");
        let chunk = chunks.next().await.expect("a chunk").expect("bytes");
        assert_eq!(&chunk[..], b"world!");
        assert_eq!(chunk.as_ptr() as usize % crate::aligned::ALIGN, 0);
        assert!(chunks.next().await.is_none());
        // That connection was kept: the third read uses it.
        let mut buf = BytesMut::new();
        lean.get_range_into(&path, &pin(), 0, 5, &mut buf)
            .await
            .expect("read")
            .expect("read by hand");
        assert_eq!(&buf[..], b"again");
        let heads = seen.lock().expect("heads").clone();
        let got: Vec<&str> = heads
            .iter()
            .map(|h| {
                h.split("\r\n")
                    .find(|l| l.starts_with("range:"))
                    .unwrap_or(h)
            })
            .collect();
        // The request lost on the dead connection never reached the server; it came again on
        // the second connection, which then served the third read too.
        assert_eq!(
            got,
            [
                "connection",
                "range: bytes=10-14",
                "connection",
                "range: bytes=15-20",
                "range: bytes=0-4"
            ],
            "{heads:?}"
        );
        let first = heads[1].to_ascii_lowercase();
        assert!(
            first.starts_with("get /bkt/dir/a%20b.bin http/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains("range: bytes=10-14\r\n"), "{first}");
        assert!(first.contains("if-match: \"e1\"\r\n"), "{first}");
        assert!(first.contains("authorization: aws4-hmac-sha256 credential=akidtest/"));
        assert!(
            !first.contains("not-a-real-secret"),
            "no secret on the wire"
        );
    }

    #[tokio::test]
    async fn bad_answers_are_errors_and_chunked_ones_go_back_to_the_sdk() {
        let (url, _) = server(vec![
            // Shorter than it says, then the connection closes.
            (
                b"HTTP/1.1 206 x\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/10\r\n\r\nabc"
                    .to_vec(),
                true,
            ),
            // Not the length asked for.
            (partial(0, b"toolong"), true),
            // The right length, but another range than the one asked for.
            (partial(5, b"fives"), false),
            // The pin no longer matches.
            (
                b"HTTP/1.1 412 Precondition Failed\r\nContent-Length: 72\r\n\r\n\
                  <Error><Code>PreconditionFailed</Code><Message>changed</Message></Error>"
                    .to_vec(),
                false,
            ),
            (
                b"HTTP/1.1 206 x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                    .to_vec(),
                true,
            ),
        ])
        .await;
        let lean = lean(&url);
        let path = ObjectPath::new("bkt", "k");
        let err = lean
            .get_range_into(&path, &pin(), 0, 10, &mut BytesMut::new())
            .await
            .expect_err("short body");
        assert!(
            matches!(&err, StoreError::Transient { detail, .. } if detail.contains("ended after 3 of 10 bytes")),
            "{err}"
        );
        let err = lean
            .get_range_into(&path, &pin(), 0, 5, &mut BytesMut::new())
            .await
            .expect_err("wrong length");
        assert!(
            matches!(&err, StoreError::Transient { detail, .. } if detail.contains("holds 7 bytes where 5 were asked")),
            "{err}"
        );
        let err = lean
            .get_range_into(&path, &pin(), 0, 5, &mut BytesMut::new())
            .await
            .expect_err("another range");
        assert!(
            matches!(&err, StoreError::Transient { detail, .. } if detail.contains("Content-Range is \"bytes 5-9/100\" where bytes 0-4 were asked")),
            "{err}"
        );
        let err = lean
            .get_range_into(&path, &pin(), 0, 5, &mut BytesMut::new())
            .await
            .expect_err("changed source");
        assert!(matches!(err, StoreError::SourceChanged { .. }), "{err}");
        let fell_back = lean
            .get_range_chunks(&path, &pin(), 0, 3)
            .await
            .expect("no error");
        assert!(
            fell_back.is_none(),
            "a chunked answer sends the reads to the SDK"
        );
        let again = lean
            .get_range_into(&path, &pin(), 0, 3, &mut BytesMut::new())
            .await
            .expect("no error");
        assert!(again.is_none(), "and every later one, without asking");
    }
}
