//! Reporting: events for progress displays, and the per-file outcome and run summary that
//! `--json` prints.

use std::time::Duration;

use serde::Serialize;

use crate::journal::FileId;
use crate::plan::{FilePlan, Strategy};

/// Receives what happens during a run. Every method has a no-op default.
pub trait Observer: Send + Sync {
    /// The run has a transfer id (new, or an earlier one it resumes).
    fn transfer_started(&self, _id: &str, _resumed: bool) {}
    /// These files are planned (called as files are planned, a few at a time or one by one).
    fn planned(&self, _plans: &[FilePlan]) {}
    fn file_started(&self, _plan: &FilePlan) {}
    /// `bytes` more of file `file` are done.
    fn progress(&self, _file: FileId, _bytes: u64) {}
    fn file_finished(&self, _outcome: &FileOutcome) {}
}

/// An observer that reports nothing.
pub struct Silent;
impl Observer for Silent {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Failed,
    Cancelled,
    /// `--dry-run`: planned, not moved.
    Planned,
}

/// How a finished object was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verification {
    /// Size and the store's CRC32C of the whole object (composite or full) matched barge's own.
    SizeAndCrc32c,
    /// The destination keeps no checksum (a local file): its size, and the CRC32C the source
    /// keeps for the object matched the bytes barge read and wrote.
    SourceCrc32c,
    /// A server-side copy answered with the pinned source's ETag (for an object written in one
    /// piece, the MD5 of its bytes): the store copied exactly that object.
    SourceEtag,
    /// Both objects read back after the copy and their CRC32Cs compared: how a copy is proven
    /// where the stores keep no checksum to compare, before its source is deleted, or where an
    /// upload was found gone and the destination had to prove it is barge's copy.
    ReadBack,
    /// Only the size could be checked: neither store keeps a checksum barge could compare with
    /// its own (none at all, or a composite of other part boundaries than barge's).
    SizeOnly,
    /// Completed and verified by an earlier run of the same transfer.
    Earlier,
    /// Completed and verified by the worker that finalized it (size, and the CRC32C wherever
    /// the store reports one; the worker's log has the detail).
    ByWorker,
    NotVerified,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileOutcome {
    pub id: FileId,
    pub src: String,
    pub dst: String,
    pub size: Option<u64>,
    pub strategy: Option<Strategy>,
    pub part_size: Option<u64>,
    pub parts: Option<u32>,
    pub status: Status,
    pub verified: Verification,
    /// Object bytes that passed through barge (zero for server-side copies).
    pub bytes_through_client: u64,
    pub source_deleted: bool,
    pub seconds: f64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The journal's id for this transfer (`barge status ID`, `barge resume ID`).
    pub transfer_id: Option<String>,
    /// This run continued an earlier, interrupted one.
    pub resumed: bool,
    /// Parts already moved by an earlier run and not moved again.
    pub parts_reused: u64,
    pub files_total: usize,
    pub files_ok: usize,
    pub files_failed: usize,
    pub bytes: u64,
    pub bytes_through_client: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
    pub retries: u64,
    /// Answers that asked for fewer requests (503 SlowDown, 429): each lowered, for a while,
    /// the requests in flight to its store.
    pub throttled: u64,
    pub files: Vec<FileOutcome>,
    /// Entries of a listed prefix that are not files barge copies (folder markers, local
    /// symlinks and special files), each with why.
    pub files_skipped: usize,
    pub skipped: Vec<barge_store::SkippedEntry>,
}

impl Summary {
    pub fn new(files: Vec<FileOutcome>, elapsed: Duration, retries: u64) -> Self {
        let ok: Vec<&FileOutcome> = files.iter().filter(|f| f.status == Status::Ok).collect();
        let bytes: u64 = ok.iter().filter_map(|f| f.size).sum();
        let secs = elapsed.as_secs_f64();
        Self {
            transfer_id: None,
            resumed: false,
            parts_reused: 0,
            files_total: files.len(),
            files_ok: ok.len(),
            files_failed: files
                .iter()
                .filter(|f| matches!(f.status, Status::Failed | Status::Cancelled))
                .count(),
            bytes,
            bytes_through_client: files.iter().map(|f| f.bytes_through_client).sum(),
            seconds: secs,
            bytes_per_second: if secs > 0.0 { bytes as f64 / secs } else { 0.0 },
            retries,
            throttled: 0,
            files,
            files_skipped: 0,
            skipped: Vec::new(),
        }
    }

    /// Report the entries a listing passed over.
    pub fn with_skipped(mut self, skipped: Vec<barge_store::SkippedEntry>) -> Self {
        self.files_skipped = skipped.len();
        self.skipped = skipped;
        self
    }

    /// Every file was moved and verified.
    pub fn success(&self) -> bool {
        self.files
            .iter()
            .all(|f| matches!(f.status, Status::Ok | Status::Planned))
    }
}
