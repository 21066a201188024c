use barge_store::StoreError;
use thiserror::Error;

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum EngineError {
    /// Something the user typed or wrote is wrong; the message says what and how to fix it.
    #[error("{0}")]
    Input(String),
    #[error("config {path}: {msg}")]
    Config { path: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("verification failed for {dest}: {msg}")]
    Verify { dest: String, msg: String },
    /// The journal cannot be opened, read or written.
    #[error("{0}")]
    Journal(String),
    /// The journal's server cannot be reached right now (restarting, network): worth waiting for.
    #[error("{0}")]
    JournalUnavailable(String),
    /// Files were moved and verified, but the journal failed to record some of them as done
    /// (the run is not "refused": things did move).
    #[error("{0}")]
    Unrecorded(String),
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    /// The journal failed (unwritable, unreadable or unreachable).
    pub fn is_journal(&self) -> bool {
        matches!(
            self,
            EngineError::Journal(_)
                | EngineError::JournalUnavailable(_)
                | EngineError::Unrecorded(_)
        )
    }
}
