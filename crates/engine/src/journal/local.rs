//! The work queue of one process: what `barge cp` and `barge run` schedule on, with the SQLite
//! journal or none.
//!
//! The tasks (plan, part, finalize) are the shared queue's, with its rules, but they live in
//! memory: one process owns them all, so there are no leases to take or renew, and a claim is a
//! lock, not a statement. Every fact a resume needs (a plan, an upload id, a part's receipt, a
//! file's end) is written through to the journal before it is acted on, as the shared queue
//! writes it; a resume rebuilds the tasks from those facts. Plans of multipart files are
//! written a group at a time (whatever queued while the last write ran), before their uploads
//! open; a file moved whole has its plan written with its completion, in batches
//! ([`Completions`]): 5,000 small files are a few transactions, not 10,000.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use barge_store::PartReceipt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::batch::Completions;
use super::queue::{Task, TaskKind, WorkQueue};
use super::{FileId, FileRecord, FileState, Journal, TransferRecord, TransferState};
use crate::error::{EngineError, Result};
use crate::plan::FilePlan;

/// One process's queue for one transfer (see the module's notes).
pub struct LocalQueue {
    journal: Arc<dyn Journal>,
    transfer: String,
    state: Mutex<State>,
    completions: Completions,
    plans: PlanWriter,
}

#[derive(Default)]
struct State {
    /// Every file still to do, as the journal has it (the memory copy is the one read).
    records: HashMap<FileId, FileRecord>,
    finalize: VecDeque<FileId>,
    plan: VecDeque<FileId>,
    parts: BTreeSet<(FileId, u32)>,
    running: HashSet<Task>,
    /// Part tasks of a file not yet recorded (ready or running).
    parts_left: HashMap<FileId, u32>,
    /// Files neither completed nor failed.
    open: HashSet<FileId>,
    /// Files moved whole whose plans are not written yet: they go with the completion.
    unsaved: HashSet<FileId>,
    failed: bool,
}

impl LocalQueue {
    /// A queue over `files` (each with a plan task: to plan, or, for a file whose upload an
    /// earlier run started, to continue that upload). `stop` is cancelled when a batched
    /// completion record cannot be written.
    pub fn new(
        journal: Arc<dyn Journal>,
        transfer: &str,
        files: Vec<FileRecord>,
        stop: CancellationToken,
    ) -> Self {
        let mut state = State::default();
        for rec in files {
            let id = rec.plan.id;
            state.plan.push_back(id);
            state.open.insert(id);
            state.records.insert(id, rec);
        }
        Self {
            completions: Completions::new(journal.clone(), transfer.to_string(), stop),
            plans: PlanWriter::default(),
            journal,
            transfer: transfer.to_string(),
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files not finished: their last records.
    pub fn unfinished(&self) -> Vec<FileRecord> {
        let st = self.lock();
        let mut v: Vec<FileRecord> = st
            .open
            .iter()
            .filter_map(|id| st.records.get(id).cloned())
            .collect();
        v.sort_by_key(|r| r.plan.id);
        v
    }

    /// Write every queued completion; an error says how many files finished unrecorded.
    pub async fn finish(self) -> Result<()> {
        self.completions.finish().await
    }

    fn check_transfer(&self, transfer: &str) -> Result<()> {
        if transfer == self.transfer {
            Ok(())
        } else {
            Err(EngineError::Journal(format!(
                "transfer {transfer} is not the one this process runs"
            )))
        }
    }

    /// The plan of a file whose plan is not written yet, taken off the unsaved list.
    fn unsaved_plan(&self, file: FileId) -> Option<FilePlan> {
        let mut st = self.lock();
        if !st.unsaved.remove(&file) {
            return None;
        }
        st.records.get(&file).map(|r| r.plan.clone())
    }

    fn settled(&self, st: &mut State, file: FileId, failed: bool) {
        st.open.remove(&file);
        st.failed |= failed;
    }
}

#[async_trait]
impl WorkQueue for LocalQueue {
    fn shared(&self) -> bool {
        false
    }

    async fn claim_split(
        &self,
        _owner: &str,
        _queue: &str,
        parts: usize,
        files: usize,
        _lease_ms: u64,
    ) -> Result<Vec<Task>> {
        let mut st = self.lock();
        let mut out = Vec::new();
        let task = |file, kind, number| Task {
            transfer: self.transfer.clone(),
            file,
            kind,
            number,
            claims: 1,
        };
        // Work already started is finished before more starts, as the shared queue orders it.
        while out.len() < files {
            if let Some(f) = st.finalize.pop_front() {
                out.push(task(f, TaskKind::Finalize, 0));
            } else if let Some(f) = st.plan.pop_front() {
                out.push(task(f, TaskKind::Plan, 0));
            } else {
                break;
            }
        }
        for _ in 0..parts {
            let Some((f, n)) = st.parts.pop_first() else {
                break;
            };
            out.push(task(f, TaskKind::Part, n));
        }
        for t in &out {
            st.running.insert(t.clone());
        }
        Ok(out)
    }

    async fn renew(&self, _owner: &str, _tasks: &[Task], _lease_ms: u64) -> Result<u64> {
        Ok(0)
    }

    async fn reclaim_expired(&self) -> Result<u64> {
        Ok(0)
    }

    async fn release(&self, _owner: &str) -> Result<u64> {
        let mut st = self.lock();
        let n = st.running.len() as u64;
        st.running.clear();
        Ok(n)
    }

    async fn task_done(&self, task: &Task, _owner: &str) -> Result<bool> {
        Ok(self.lock().running.remove(task))
    }

    async fn part_recorded(
        &self,
        task: &Task,
        _owner: &str,
        upload_id: &str,
        receipt: &PartReceipt,
        _queue: &str,
    ) -> Result<bool> {
        self.journal
            .part_done(&task.transfer, task.file, upload_id, receipt)
            .await?;
        let mut st = self.lock();
        if !st.running.remove(task) {
            return Ok(false);
        }
        let left = st.parts_left.entry(task.file).or_insert(1);
        *left = left.saturating_sub(1);
        if *left > 0 {
            return Ok(false);
        }
        st.finalize.push_back(task.file);
        Ok(true)
    }

    async fn start_parts(
        &self,
        task: &Task,
        _owner: &str,
        upload_id: &str,
        parts: &[u32],
        _queue: &str,
    ) -> Result<bool> {
        self.check_transfer(&task.transfer)?;
        let known = self
            .lock()
            .records
            .get(&task.file)
            .and_then(|r| r.upload_id.clone());
        if known.as_deref() != Some(upload_id) {
            self.journal
                .upload_started(&task.transfer, task.file, upload_id)
                .await?;
        }
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&task.file) {
            r.upload_id = Some(upload_id.to_string());
            r.state = FileState::Uploading;
        }
        st.running.remove(task);
        if parts.is_empty() {
            st.finalize.push_back(task.file);
        } else {
            st.parts_left.insert(task.file, parts.len() as u32);
            st.parts.extend(parts.iter().map(|n| (task.file, *n)));
        }
        Ok(true)
    }

    async fn redo_parts(&self, task: &Task, numbers: &[u32]) -> Result<()> {
        let mut st = self.lock();
        st.running.remove(task);
        *st.parts_left.entry(task.file).or_insert(0) += numbers.len() as u32;
        st.parts.extend(numbers.iter().map(|n| (task.file, *n)));
        Ok(())
    }

    async fn file(&self, transfer: &str, file: FileId) -> Result<Option<FileRecord>> {
        self.check_transfer(transfer)?;
        Ok(self.lock().records.get(&file).cloned())
    }

    async fn receipts(
        &self,
        transfer: &str,
        file: FileId,
        upload: &str,
    ) -> Result<Vec<PartReceipt>> {
        self.journal.receipts(transfer, file, upload).await
    }

    /// A plan is written before anything a resume must find: before an upload is opened for
    /// the file (its upload id is recorded against the plan) and before its source is deleted.
    /// A file moved whole is written with its completion instead, in the same batch: a crash
    /// before that loses the record of a file that is then copied again, as it would lose a
    /// queued completion; 5,000 small files cost a few transactions, not one per sixteen.
    async fn save_plan(&self, transfer: &str, plan: &FilePlan) -> Result<()> {
        self.check_transfer(transfer)?;
        let later = !plan.strategy.is_multipart();
        if !later {
            self.plans
                .save(self.journal.as_ref(), transfer, plan)
                .await?;
        }
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&plan.id) {
            r.plan = plan.clone();
            r.state = FileState::Planned;
            r.upload_id = None;
        }
        if later {
            st.unsaved.insert(plan.id);
        } else {
            st.unsaved.remove(&plan.id);
        }
        Ok(())
    }

    async fn file_state(
        &self,
        transfer: &str,
        file: FileId,
        state: FileState,
        error: Option<&str>,
    ) -> Result<()> {
        if let Some(plan) = self.unsaved_plan(file) {
            self.plans
                .save(self.journal.as_ref(), transfer, &plan)
                .await?;
        }
        self.journal
            .file_state(transfer, file, state, error)
            .await?;
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&file) {
            r.state = state;
            r.error = error.map(str::to_string);
        }
        match state {
            FileState::Completed => self.settled(&mut st, file, false),
            FileState::Failed => self.settled(&mut st, file, true),
            _ => {}
        }
        Ok(())
    }

    async fn file_completed(&self, transfer: &str, file: FileId, durable: bool) -> Result<()> {
        self.check_transfer(transfer)?;
        let plan = self.unsaved_plan(file);
        if durable {
            self.completions.completed(file, plan).await?;
        } else {
            self.completions.record(file, plan)?;
        }
        let mut st = self.lock();
        if let Some(r) = st.records.get_mut(&file) {
            r.state = FileState::Completed;
        }
        self.settled(&mut st, file, false);
        Ok(())
    }

    async fn settle(&self, transfer: &str) -> Result<Option<TransferState>> {
        self.transfer_state(transfer)
            .await
            .map(|s| s.filter(|s| *s != TransferState::Running))
    }

    async fn transfer_state(&self, transfer: &str) -> Result<Option<TransferState>> {
        self.check_transfer(transfer)?;
        let st = self.lock();
        Ok(Some(if !st.open.is_empty() {
            TransferState::Running
        } else if st.failed {
            TransferState::Failed
        } else {
            TransferState::Done
        }))
    }

    async fn unfinished_work(&self, _queue: &str) -> Result<u64> {
        let st = self.lock();
        Ok((st.finalize.len() + st.plan.len() + st.parts.len() + st.running.len()) as u64)
    }

    async fn transfer_request(&self, transfer: &str) -> Result<Option<(TransferRecord, String)>> {
        Ok(self
            .journal
            .transfer(transfer)
            .await?
            .map(|t| (t, String::new())))
    }
}

/// Group commit of plans: a plan is written before its file moves, and the plans that queue
/// while one write runs go together in the next.
#[derive(Default)]
struct PlanWriter {
    queued: Mutex<Vec<(FilePlan, oneshot::Sender<Result<()>>)>>,
    writing: tokio::sync::Mutex<()>,
}

impl PlanWriter {
    async fn save(&self, journal: &dyn Journal, transfer: &str, plan: &FilePlan) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((plan.clone(), tx));
        {
            let _writer = self.writing.lock().await;
            let batch = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|e| e.into_inner()));
            if !batch.is_empty() {
                let (plans, waiters): (Vec<FilePlan>, Vec<_>) = batch.into_iter().unzip();
                let result = journal.save_plans(transfer, &plans).await;
                for w in waiters {
                    let _ = w.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(EngineError::Journal(e.to_string())),
                    });
                }
            }
        }
        rx.await
            .map_err(|_| EngineError::Journal("the journal writer went away".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{MemoryJournal, sample_plans};

    async fn queue(files: usize) -> (Arc<MemoryJournal>, LocalQueue) {
        let j = Arc::new(MemoryJournal::default());
        j.create_transfer(&TransferRecord {
            id: "t".into(),
            fingerprint: "f".into(),
            created_at: 0,
            updated_at: 0,
            state: TransferState::Running,
            spec: "{}".into(),
        })
        .await
        .expect("transfer");
        let recs = sample_plans(files)
            .into_iter()
            .map(|plan| FileRecord {
                plan,
                upload_id: None,
                state: FileState::Pending,
                error: None,
            })
            .collect();
        let q = LocalQueue::new(j.clone(), "t", recs, CancellationToken::new());
        (j, q)
    }

    fn receipt(number: u32) -> PartReceipt {
        PartReceipt {
            number,
            etag: format!("e{number}"),
            len: 1,
            crc32c: None,
        }
    }

    /// The shared queue's order: a file's finalize before any plan, parts in file and number
    /// order, each file's finalize queued once, when its last part is recorded.
    #[tokio::test]
    async fn work_started_is_finished_before_more_starts() {
        let (j, q) = queue(3).await;
        let plans = q.claim_split("w", "", 0, 2, 0).await.expect("claim");
        assert_eq!(
            plans.iter().map(|t| (t.kind, t.file)).collect::<Vec<_>>(),
            [(TaskKind::Plan, 0), (TaskKind::Plan, 1)]
        );
        let mut plan = sample_plans(1).remove(0);
        plan.size = 3;
        plan.part_count = 3;
        q.save_plan("t", &plan).await.expect("plan");
        assert!(
            q.start_parts(&plans[0], "w", "up", &[1, 2, 3], "")
                .await
                .expect("parts")
        );
        let parts = q.claim_split("w", "", 2, 0, 0).await.expect("claim");
        assert_eq!(
            parts.iter().map(|t| t.number).collect::<Vec<_>>(),
            [1, 2],
            "parts in order"
        );
        assert!(
            !q.part_recorded(&parts[0], "w", "up", &receipt(1), "")
                .await
                .expect("rec")
        );
        assert!(
            !q.part_recorded(&parts[1], "w", "up", &receipt(2), "")
                .await
                .expect("rec")
        );
        let last = q.claim_split("w", "", 5, 0, 0).await.expect("claim");
        assert_eq!(last.len(), 1);
        assert!(
            q.part_recorded(&last[0], "w", "up", &receipt(3), "")
                .await
                .expect("rec")
        );
        assert_eq!(j.receipts("t", 0, "up").await.expect("receipts").len(), 3);
        let next = q.claim_split("w", "", 5, 5, 0).await.expect("claim");
        assert_eq!(
            next.iter().map(|t| (t.kind, t.file)).collect::<Vec<_>>(),
            [(TaskKind::Finalize, 0), (TaskKind::Plan, 2)],
            "the finalize first, then the next plan"
        );
        // A finalize that found a part to move again: the part, then the finalize once more.
        q.redo_parts(&next[0], &[2]).await.expect("redo");
        let again = q.claim_split("w", "", 5, 0, 0).await.expect("claim");
        assert_eq!(again.iter().map(|t| t.number).collect::<Vec<_>>(), [2]);
        assert!(
            q.part_recorded(&again[0], "w", "up", &receipt(2), "")
                .await
                .expect("rec")
        );
        let fin = q.claim_split("w", "", 0, 5, 0).await.expect("claim");
        assert_eq!(fin[0].kind, TaskKind::Finalize);
    }

    /// The transfer is running while any file is open; it settles as failed if one failed.
    #[tokio::test]
    async fn the_transfer_settles_when_every_file_has_ended() {
        let (j, q) = queue(2).await;
        for plan in sample_plans(2) {
            q.save_plan("t", &plan).await.expect("plan");
        }
        assert_eq!(
            q.transfer_state("t").await.expect("state"),
            Some(TransferState::Running)
        );
        q.file_completed("t", 0, true).await.expect("completed");
        assert_eq!(q.settle("t").await.expect("settle"), None);
        q.file_state("t", 1, FileState::Failed, Some("no"))
            .await
            .expect("failed");
        assert_eq!(
            q.settle("t").await.expect("settle"),
            Some(TransferState::Failed)
        );
        assert!(q.unfinished().is_empty());
        q.finish().await.expect("recorded");
        let states: Vec<FileState> = j
            .files("t")
            .await
            .expect("files")
            .iter()
            .map(|f| f.state)
            .collect();
        assert_eq!(
            states,
            [FileState::Completed, FileState::Failed],
            "written through"
        );
    }
}
