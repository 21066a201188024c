//! Shared HTTP client code for the backends that speak plain REST (GCS's JSON API): one client
//! setup and one mapping from an answer's status to what barge does about it.

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

/// A client with the connection's timeouts. No automatic decompression (reqwest is built without
/// it): bytes are moved as stored, `Content-Encoding: gzip` objects included.
pub(crate) fn client(
    store: &str,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<reqwest::Client, StoreError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .pool_max_idle_per_host(256)
        .build()
        .map_err(|e| StoreError::Permanent {
            store: store.to_string(),
            op: "setup of the HTTP client".into(),
            detail: e.to_string(),
        })
}

/// A request that got no answer (refused, reset, timed out): worth trying again.
pub(crate) fn send_error(store: &str, op: &str, what: &str, e: &reqwest::Error) -> StoreError {
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
