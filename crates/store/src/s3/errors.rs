//! Mapping SDK errors to what barge does about them.

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::{ObjectPath, StoreError};

pub(super) fn map_sdk_error<E>(
    store: &str,
    op: &str,
    path: &ObjectPath,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let store = store.to_string();
    let transient = |detail: String| StoreError::Transient {
        store: store.clone(),
        op: op.to_string(),
        detail: format!("{path}: {detail}"),
    };
    match &err {
        SdkError::TimeoutError(_) => transient("timed out".into()),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            match crate::tls::failure(&err) {
                Some(why) => StoreError::Permanent {
                    store,
                    op: op.to_string(),
                    detail: format!("{path}: {why}"),
                },
                None => transient(error_chain(&err)),
            }
        }
        SdkError::ServiceError(se) => map_status(
            &store,
            op,
            path,
            se.raw().status().as_u16(),
            se.err().code().unwrap_or(""),
            se.err().message().unwrap_or(""),
        ),
        // A 200 answer whose body is an error document fails to parse: treat as a server error.
        _ => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            if status == Some(200) || status.is_some_and(|s| s >= 500) {
                transient(DisplayErrorContext(&err).to_string())
            } else {
                StoreError::Permanent {
                    store,
                    op: op.to_string(),
                    detail: format!("{path}: {}", DisplayErrorContext(&err)),
                }
            }
        }
    }
}

/// An error and its causes on one line ("dispatch failure: io error: ...: Connection refused"):
/// what `DisplayErrorContext` prints, without the debug dump of the whole error it appends.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// What an error answer (status, S3 error code and message) means to barge; shared by the SDK
/// path and the lean path for small objects.
pub(super) fn map_status(
    store: &str,
    op: &str,
    path: &ObjectPath,
    status: u16,
    code: &str,
    message: &str,
) -> StoreError {
    let store = store.to_string();
    let detail = if code.is_empty() && message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {code}: {message}")
    };
    match (status, code) {
        (_, "NoSuchBucket") => StoreError::NoSuchBucket {
            store,
            bucket: path.bucket.clone(),
        },
        (_, "NoSuchUpload") => StoreError::NoSuchUpload {
            store,
            path: path.to_string(),
            upload_id: String::new(),
        },
        (_, "NoSuchKey") | (404, "") | (404, "NotFound") => StoreError::NotFound {
            store,
            path: path.to_string(),
        },
        (412, _) | (_, "PreconditionFailed") => StoreError::SourceChanged {
            store,
            path: path.to_string(),
        },
        (_, "AccessDenied")
        | (_, "InvalidAccessKeyId")
        | (_, "SignatureDoesNotMatch")
        | (_, "ExpiredToken")
        | (401, _)
        | (403, _) => StoreError::AccessDenied {
            store,
            what: format!("{op} on {path}"),
            detail,
        },
        (429, _) | (503, _) | (_, "SlowDown") => StoreError::Throttled {
            store,
            op: op.to_string(),
            detail: format!("{path}: {detail}"),
        },
        // An SSE-C object read without its key (or with another): say what to do.
        // (A HEAD's answer has no body: a bare 400 is what S3 and Garage answer then.)
        (400, "InvalidRequest")
            if message.contains("ncrypt") || message.contains("Server Side Encryption") =>
        {
            StoreError::Permanent {
                store,
                op: op.to_string(),
                detail: format!(
                    "{path}: {detail} (an object written with a customer key, SSE-C: the connection needs the same key, sse_c_key_env)"
                ),
            }
        }
        (400, "") if op == "HeadObject" => StoreError::Permanent {
            store,
            op: op.to_string(),
            detail: format!(
                "{path}: {detail} (a stat answers so for an object written with a customer key, SSE-C, asked without that key: the connection needs the same key, sse_c_key_env)"
            ),
        },
        // Never worth another try: the store does not have the operation (Garage answers so
        // for GetObjectTagging).
        (501, _) | (_, "NotImplemented") => StoreError::Unsupported {
            store,
            what: format!("{op} ({detail})"),
        },
        (500..=599, _)
        | (_, "InternalError")
        | (_, "RequestTimeout")
        | (_, "ServiceUnavailable")
        | (_, "RequestTimeTooSkewed") => StoreError::Transient {
            store,
            op: op.to_string(),
            detail: format!("{path}: {detail}"),
        },
        _ => StoreError::Permanent {
            store,
            op: op.to_string(),
            detail: format!("{path}: {detail}"),
        },
    }
}

/// An answer's body broke off while being read: always worth another try.
pub(super) fn body_error(
    store: &str,
    op: &str,
    path: &ObjectPath,
    err: &dyn std::error::Error,
) -> StoreError {
    StoreError::Transient {
        store: store.to_string(),
        op: op.to_string(),
        detail: format!("{path}: reading the answer failed: {err}"),
    }
}
