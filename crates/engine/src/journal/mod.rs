//! The journal: a durable record of every transfer, file and part receipt.
//!
//! The engine never keeps a transfer's progress only inside running futures: each receipt is
//! recorded here as plain data, completion reads the receipts back from here, and a resumed run
//! starts from here. Receipts are keyed by upload id, so parts are grouped by upload, never by key.
//!
//! Backends: [`memory`] (process lifetime, for tests and `--journal none`) and [`sql`] (one schema
//! and one set of queries for SQLite, the default, and PostgreSQL, for many machines).
//! The journal stores connection names, never credentials.

pub mod batch;
pub mod local;
pub mod memory;
pub mod queue;
pub mod sql;

use async_trait::async_trait;
use barge_store::{ObjectPath, PartReceipt};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::location::{ConnRef, Location};
use crate::plan::{FilePlan, Strategy};

pub use memory::MemoryJournal;
pub use queue::TaskKind;
pub use sql::SqlJournal;

pub type FileId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileState {
    /// Submitted, not yet planned: a worker will stat the source and plan it.
    Pending,
    Planned,
    Uploading,
    Completed,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferState {
    Running,
    /// Stopped by the user or a crash: resumable.
    Interrupted,
    Done,
    /// Some files failed: running it again retries them.
    Failed,
    Aborted,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            pub fn parse(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok(<$t>::$v),)*
                    other => Err(EngineError::Journal(format!(
                        "unknown {} '{other}' in the journal (written by a newer barge?)",
                        stringify!($t)
                    ))),
                }
            }
        }
    };
}

str_enum!(FileState { Pending = "pending", Planned = "planned", Uploading = "uploading", Completed = "completed", Failed = "failed" });
str_enum!(TransferState { Running = "running", Interrupted = "interrupted", Done = "done", Failed = "failed", Aborted = "aborted" });
str_enum!(TaskKind { Plan = "plan", Part = "part", Finalize = "finalize" });
str_enum!(Strategy { SinglePut = "single-put", ServerCopy = "server-copy", ServerPartCopy = "server-part-copy", StreamParts = "stream-parts" });

impl TransferState {
    /// Running it again continues it.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            TransferState::Running | TransferState::Interrupted | TransferState::Failed
        )
    }
}

/// One transfer: what was asked (as JSON, secret-free) and where it stands.
#[derive(Clone, Debug, Serialize)]
pub struct TransferRecord {
    pub id: String,
    /// Identifies "the same command": a hash of the source/destination pairs.
    pub fingerprint: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub state: TransferState,
    /// The transfer list and options, as JSON.
    #[serde(skip)]
    pub spec: String,
}

/// A file as the journal has it: its plan, its upload, its state.
#[derive(Clone, Debug)]
pub struct FileRecord {
    pub plan: FilePlan,
    pub upload_id: Option<String>,
    pub state: FileState,
    pub error: Option<String>,
}

/// Per-file progress for `barge status`.
#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    pub id: FileId,
    pub src: String,
    pub dst: String,
    pub size: u64,
    pub strategy: Strategy,
    pub state: FileState,
    pub parts_done: u64,
    pub parts_total: u64,
    pub bytes_done: u64,
    pub upload_id: Option<String>,
    pub error: Option<String>,
}

#[async_trait]
pub trait Journal: Send + Sync {
    /// Whether the record outlives the process (and so a cancelled run should stay resumable).
    fn durable(&self) -> bool;

    /// The newest unfinished transfer with this fingerprint.
    async fn find_resumable(&self, fingerprint: &str) -> Result<Option<TransferRecord>>;
    async fn create_transfer(&self, t: &TransferRecord) -> Result<()>;
    /// A transfer by id, or by a unique prefix of its id.
    async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>>;
    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>>;
    async fn set_transfer_state(&self, id: &str, state: TransferState) -> Result<()>;

    /// Record (or replace) the plans of files.
    async fn save_plans(&self, transfer: &str, plans: &[FilePlan]) -> Result<()>;
    async fn files(&self, transfer: &str) -> Result<Vec<FileRecord>>;
    async fn upload_started(&self, transfer: &str, file: FileId, upload_id: &str) -> Result<()>;
    async fn part_done(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
        receipt: &PartReceipt,
    ) -> Result<()>;
    /// Every recorded receipt of one upload, by part number.
    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
    ) -> Result<Vec<PartReceipt>>;
    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()>;

    /// Record several files completed at once (see [`batch`]). Backends override it with one
    /// transaction.
    async fn files_completed(&self, transfer: &str, files: &[FileId]) -> Result<()> {
        for f in files {
            self.file_state(transfer, *f, FileState::Completed, None)
                .await?;
        }
        Ok(())
    }

    /// Mark every unfinished file of a transfer failed (for workers: its work stopped, its
    /// destination freed). Backends override it with one statement.
    async fn fail_unfinished(&self, transfer: &str, error: &str) -> Result<()> {
        for f in self.files(transfer).await? {
            if !matches!(f.state, FileState::Completed | FileState::Failed) {
                self.file_state(transfer, f.plan.id, FileState::Failed, Some(error))
                    .await?;
            }
        }
        Ok(())
    }

    /// Per-file progress for `barge status`, from `files` and `receipts`.
    async fn status(&self, transfer: &str) -> Result<Vec<FileStatus>> {
        let files = self.files(transfer).await?;
        let mut out = Vec::with_capacity(files.len());
        for f in &files {
            // A completed file counts as whole: its receipts need not be read.
            let receipts = match &f.upload_id {
                Some(u) if f.state != FileState::Completed => {
                    self.receipts(transfer, f.plan.id, u).await?
                }
                _ => Vec::new(),
            };
            out.push(status_of(f, &receipts));
        }
        Ok(out)
    }
}

/// How a connection is written in the journal.
pub(crate) fn conn_to_str(c: &ConnRef) -> String {
    match c {
        ConnRef::Local => "@local".into(),
        ConnRef::Default => "@default".into(),
        ConnRef::Gcs => "@gs".into(),
        ConnRef::Azure => "@az".into(),
        ConnRef::Named(n) => n.clone(),
    }
}

pub(crate) fn conn_from_str(s: &str) -> ConnRef {
    match s {
        "@local" => ConnRef::Local,
        "@default" => ConnRef::Default,
        "@gs" => ConnRef::Gcs,
        "@az" => ConnRef::Azure,
        n => ConnRef::Named(n.to_string()),
    }
}

pub(crate) fn location(conn: &str, bucket: String, key: String) -> Location {
    Location {
        conn: conn_from_str(conn),
        path: ObjectPath::new(bucket, key),
    }
}

pub fn now_secs() -> i64 {
    now()
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn status_of(r: &FileRecord, receipts: &[PartReceipt]) -> FileStatus {
    let done = r.state == FileState::Completed;
    FileStatus {
        id: r.plan.id,
        src: r.plan.src.to_string(),
        dst: r.plan.dst.to_string(),
        size: r.plan.size,
        strategy: r.plan.strategy,
        state: r.state,
        parts_done: if done {
            u64::from(r.plan.part_count)
        } else {
            receipts.len() as u64
        },
        parts_total: u64::from(r.plan.part_count),
        bytes_done: if done {
            r.plan.size
        } else {
            receipts.iter().map(|p| p.len).sum()
        },
        upload_id: r.upload_id.clone(),
        error: r.error.clone(),
    }
}

/// `n` one-byte local files planned as single PUTs, for journal tests.
#[cfg(test)]
pub(crate) fn sample_plans(n: usize) -> Vec<FilePlan> {
    (0..n)
        .map(|id| FilePlan {
            id,
            src: Location::local(&format!("/src/{id}")),
            dst: Location::local(&format!("/dst/{id}")),
            size: 1,
            pin: Default::default(),
            attrs: Default::default(),
            strategy: Strategy::SinglePut,
            part_size: 1,
            part_count: 1,
            attrs_pending: false,
        })
        .collect()
}
