//! The journal: a durable record of every file and every part receipt.
//!
//! The engine never keeps a transfer's progress only inside running futures: each receipt is
//! recorded here as plain data, and completion reads the receipts back from here. This module
//! holds the trait and the in-memory journal a one-shot run uses; the SQLite (one machine) and
//! PostgreSQL (many machines) journals implement the same trait.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use barge_store::PartReceipt;
use serde::Serialize;

use crate::error::Result;
use crate::plan::FilePlan;

pub type FileId = usize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileState {
    Planned,
    Uploading,
    Completed,
    Failed,
}

#[async_trait]
pub trait Journal: Send + Sync {
    async fn file_planned(&self, plan: &FilePlan) -> Result<()>;
    async fn upload_started(&self, file: FileId, upload_id: &str) -> Result<()>;
    async fn part_done(&self, file: FileId, receipt: &PartReceipt) -> Result<()>;
    /// Every recorded receipt of a file, by part number.
    async fn receipts(&self, file: FileId) -> Result<Vec<PartReceipt>>;
    async fn file_state(&self, file: FileId, state: FileState, error: Option<&str>) -> Result<()>;
}

#[derive(Debug, Default)]
struct FileRow {
    upload_id: Option<String>,
    state: Option<FileState>,
    error: Option<String>,
    parts: BTreeMap<u32, PartReceipt>,
}

/// A journal that lives as long as the process: for one-shot runs and tests.
#[derive(Debug, Default)]
pub struct MemoryJournal {
    files: Mutex<HashMap<FileId, FileRow>>,
}

impl MemoryJournal {
    fn with<T>(&self, file: FileId, f: impl FnOnce(&mut FileRow) -> T) -> T {
        let mut g = self.files.lock().unwrap_or_else(|e| e.into_inner());
        f(g.entry(file).or_default())
    }

    pub fn state(&self, file: FileId) -> (Option<FileState>, Option<String>) {
        self.with(file, |r| (r.state, r.error.clone()))
    }

    pub fn upload_id(&self, file: FileId) -> Option<String> {
        self.with(file, |r| r.upload_id.clone())
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn file_planned(&self, plan: &FilePlan) -> Result<()> {
        self.with(plan.id, |r| r.state = Some(FileState::Planned));
        Ok(())
    }

    async fn upload_started(&self, file: FileId, upload_id: &str) -> Result<()> {
        self.with(file, |r| {
            r.upload_id = Some(upload_id.to_string());
            r.state = Some(FileState::Uploading);
        });
        Ok(())
    }

    async fn part_done(&self, file: FileId, receipt: &PartReceipt) -> Result<()> {
        self.with(file, |r| {
            r.parts.insert(receipt.number, receipt.clone());
        });
        Ok(())
    }

    async fn receipts(&self, file: FileId) -> Result<Vec<PartReceipt>> {
        Ok(self.with(file, |r| r.parts.values().cloned().collect()))
    }

    async fn file_state(&self, file: FileId, state: FileState, error: Option<&str>) -> Result<()> {
        self.with(file, |r| {
            r.state = Some(state);
            r.error = error.map(str::to_string);
        });
        Ok(())
    }
}
