use thiserror::Error;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store can answer, sorted by what the caller should do about it.
///
/// Messages name the connection and the object, and never carry credentials.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{store}: object {path} does not exist")]
    NotFound { store: String, path: String },

    #[error(
        "{store}: bucket '{bucket}' does not exist (create it, or check the bucket name and the connection's endpoint)"
    )]
    NoSuchBucket { store: String, bucket: String },

    #[error(
        "{store}: access denied for {what}: {detail} (check the connection's credentials and their permissions)"
    )]
    AccessDenied {
        store: String,
        what: String,
        detail: String,
    },

    #[error(
        "{store}: source {path} changed since the transfer planned it (its ETag or version no longer matches); it was not copied, run the transfer again to copy the new version"
    )]
    SourceChanged { store: String, path: String },

    #[error(
        "{store}: multipart upload {upload_id} of {path} no longer exists (it was completed or aborted elsewhere)"
    )]
    NoSuchUpload {
        store: String,
        path: String,
        upload_id: String,
    },

    #[error("{store}: {what} is not supported by this store")]
    Unsupported { store: String, what: String },

    // No "will retry" here: the engine's retry log says so while it retries, and the error
    // that ends a file (its retries used up) must not.
    #[error("{store}: {op} failed: {detail}")]
    Transient {
        store: String,
        op: String,
        detail: String,
    },

    /// The store asked for fewer requests (503 SlowDown, 429): retried, and fewer sent at once.
    #[error("{store}: {op} was throttled: {detail}")]
    Throttled {
        store: String,
        op: String,
        detail: String,
    },

    #[error("{store}: {op} failed: {detail}")]
    Permanent {
        store: String,
        op: String,
        detail: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Transient { .. } | StoreError::Throttled { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}
