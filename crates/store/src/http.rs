//! Shared HTTP client code for the backends that speak REST (GCS's JSON API, Azure's SDK): one
//! client setup (timeouts, trust) and one mapping from an answer's status to what barge does.

use std::path::PathBuf;
use std::time::Duration;

use crate::StoreError;

/// A ranged read's answer holds exactly the bytes asked for; else the read is tried again.
pub(crate) fn whole_range(store: &str, what: &str, got: usize, len: u64) -> Result<(), StoreError> {
    if got as u64 == len {
        return Ok(());
    }
    Err(StoreError::Transient {
        store: store.to_string(),
        op: "read".into(),
        detail: format!("{what}: {got} bytes came for a range of {len}"),
    })
}

/// What an HTTP client of a store is set up with: the connection's timeouts and trust.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub connect_timeout: Duration,
    /// How long to wait for the next bytes of an answer.
    pub read_timeout: Duration,
    /// A PEM file of certificate authorities trusted besides the system's.
    pub ca_bundle: Option<PathBuf>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            ca_bundle: None,
        }
    }
}

/// A client with the connection's timeouts and trust (`endpoint` decides whether the CA bundle
/// is read at all: a plain-HTTP endpoint has no use for it). No automatic decompression (reqwest
/// is built without it): bytes are moved as stored, `Content-Encoding: gzip` objects included.
pub(crate) fn client(
    store: &str,
    endpoint: &str,
    opts: &HttpOptions,
) -> Result<reqwest::Client, StoreError> {
    let bundle = opts
        .ca_bundle
        .as_deref()
        .filter(|_| crate::tls::is_https(endpoint) != Some(false));
    let trust = crate::tls::Trust::load(store, bundle)?;
    reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .pool_max_idle_per_host(256)
        .tls_certs_merge(trust.reqwest_certs())
        .build()
        .map_err(|e| StoreError::Permanent {
            store: store.to_string(),
            op: "setup of the HTTP client".into(),
            detail: e.to_string(),
        })
}

/// A request that got no answer (refused, reset, timed out): worth trying again; one that
/// failed its TLS handshake is not, and says what to do.
pub(crate) fn send_error(store: &str, op: &str, what: &str, e: &reqwest::Error) -> StoreError {
    if let Some(detail) = crate::tls::failure(e) {
        return StoreError::Permanent {
            store: store.to_string(),
            op: op.to_string(),
            detail: format!("{what}: {detail}"),
        };
    }
    let mut detail = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        detail.push_str(": ");
        detail.push_str(&c.to_string());
        cause = c.source();
    }
    StoreError::Transient {
        store: store.to_string(),
        op: op.to_string(),
        detail: format!("{what}: {detail}"),
    }
}

/// An error answer, sorted as S3's are (`s3/errors.rs`): 404 (the caller says what was
/// missing), 401/403, 412 (a pinned precondition failed), 501 (the store lacks the call: never
/// retried), 408/429/5xx (retried), the rest permanent. `body` is the service's
/// message, cut short: it never carries credentials (they travel in headers).
pub(crate) fn status_error(
    store: &str,
    op: &str,
    what: &str,
    status: u16,
    body: &str,
) -> StoreError {
    let body: String = body.chars().take(300).collect();
    let detail = format!("{what}: HTTP {status}: {}", body.trim());
    match status {
        401 | 403 => StoreError::AccessDenied {
            store: store.to_string(),
            what: what.to_string(),
            detail: format!("HTTP {status}: {}", body.trim()),
        },
        412 => StoreError::SourceChanged {
            store: store.to_string(),
            path: what.to_string(),
        },
        501 => StoreError::Unsupported {
            store: store.to_string(),
            what: format!("{op} ({detail})"),
        },
        429 | 503 => StoreError::Throttled {
            store: store.to_string(),
            op: op.to_string(),
            detail,
        },
        408 | 500..=599 => StoreError::Transient {
            store: store.to_string(),
            op: op.to_string(),
            detail,
        },
        _ => StoreError::Permanent {
            store: store.to_string(),
            op: op.to_string(),
            detail,
        },
    }
}
