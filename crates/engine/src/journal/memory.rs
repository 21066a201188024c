//! A journal that lives as long as the process: for tests and `--journal none`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use barge_store::PartReceipt;

use super::{FileId, FileRecord, FileState, Journal, TransferRecord, TransferState, now};
use crate::error::{EngineError, Result};
use crate::plan::FilePlan;

#[derive(Debug, Default)]
struct State {
    transfers: Vec<TransferRecord>,
    files: HashMap<(String, FileId), FileRecord>,
    receipts: HashMap<(String, FileId, String), BTreeMap<u32, PartReceipt>>,
}

#[derive(Debug, Default)]
pub struct MemoryJournal {
    state: Mutex<State>,
    refuse_file_states: AtomicBool,
    /// Refuse to record plans beyond this many files (0: no limit).
    plan_limit: AtomicUsize,
}

impl MemoryJournal {
    /// From now on, refuse to record file states (tests of what a run does when its journal
    /// fails mid-way).
    pub fn refuse_file_states(&self) {
        self.refuse_file_states.store(true, Ordering::Relaxed);
    }

    /// Refuse to record the plans of more than `files` files (tests of a journal that fails
    /// while a run is recording its plans).
    pub fn refuse_plans_beyond(&self, files: usize) {
        self.plan_limit.store(files, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    fn durable(&self) -> bool {
        false
    }

    async fn find_resumable(&self, fingerprint: &str) -> Result<Option<TransferRecord>> {
        Ok(self
            .lock()
            .transfers
            .iter()
            .rev()
            .find(|t| t.fingerprint == fingerprint && t.state.is_resumable())
            .cloned())
    }

    async fn create_transfer(&self, t: &TransferRecord) -> Result<()> {
        self.lock().transfers.push(t.clone());
        Ok(())
    }

    async fn transfer(&self, id: &str) -> Result<Option<TransferRecord>> {
        let st = self.lock();
        let found: Vec<&TransferRecord> = st
            .transfers
            .iter()
            .filter(|t| t.id.starts_with(id))
            .collect();
        Ok(if found.len() == 1 {
            Some(found[0].clone())
        } else {
            None
        })
    }

    async fn list_transfers(&self, limit: usize) -> Result<Vec<TransferRecord>> {
        Ok(self
            .lock()
            .transfers
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn set_transfer_state(&self, id: &str, state: TransferState) -> Result<()> {
        for t in self.lock().transfers.iter_mut().filter(|t| t.id == id) {
            t.state = state;
            t.updated_at = now();
        }
        Ok(())
    }

    async fn save_plans(&self, transfer: &str, plans: &[FilePlan]) -> Result<()> {
        let mut st = self.lock();
        let limit = self.plan_limit.load(Ordering::Relaxed);
        if limit > 0 && st.files.len() + plans.len() > limit {
            return Err(EngineError::Journal(
                "the journal refused the write (as the test asked)".into(),
            ));
        }
        for p in plans {
            st.files.insert(
                (transfer.to_string(), p.id),
                FileRecord {
                    plan: p.clone(),
                    upload_id: None,
                    state: FileState::Planned,
                    error: None,
                },
            );
        }
        Ok(())
    }

    async fn files(&self, transfer: &str) -> Result<Vec<FileRecord>> {
        let st = self.lock();
        let mut v: Vec<FileRecord> = st
            .files
            .iter()
            .filter(|((t, _), _)| t == transfer)
            .map(|(_, r)| r.clone())
            .collect();
        v.sort_by_key(|r| r.plan.id);
        Ok(v)
    }

    async fn upload_started(&self, transfer: &str, file: FileId, upload_id: &str) -> Result<()> {
        if let Some(r) = self.lock().files.get_mut(&(transfer.to_string(), file)) {
            r.upload_id = Some(upload_id.to_string());
            r.state = FileState::Uploading;
        }
        Ok(())
    }

    async fn part_done(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
        receipt: &PartReceipt,
    ) -> Result<()> {
        self.lock()
            .receipts
            .entry((transfer.to_string(), file, upload_id.to_string()))
            .or_default()
            .insert(receipt.number, receipt.clone());
        Ok(())
    }

    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload_id: &str,
    ) -> Result<Vec<PartReceipt>> {
        Ok(self
            .lock()
            .receipts
            .get(&(transfer.to_string(), file, upload_id.to_string()))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()> {
        if self.refuse_file_states.load(Ordering::Relaxed) {
            return Err(EngineError::Journal(
                "the journal refused the write (as the test asked)".into(),
            ));
        }
        if let Some(r) = self.lock().files.get_mut(&(transfer.to_string(), file)) {
            r.state = state;
            r.error = error.map(str::to_string);
        }
        Ok(())
    }
}
