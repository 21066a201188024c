//! Group commit of "file completed" records.
//!
//! Many small files finish at nearly the same time; recording each in its own transaction made
//! the journal a fifth of the wall time of a many-small-files copy, and even grouped by what
//! arrived during the previous write (two files a batch, measured) the hand-offs to the
//! journal's thread were a fifth of barge's CPU on 5,000 small objects.
//!
//! So a record is either *awaited* ([`Completions::completed`]: the caller goes on only once its
//! file is recorded, as before deleting a source) or *queued* ([`Completions::record`]: the
//! file's slot is free at once). Queued records are written together, up to [`MAX_BATCH`] at a
//! time or once [`WINDOW`] has passed since the first of them; an awaited one is written with
//! whatever is queued, without waiting for the window. [`Completions::finish`] writes what is
//! left and says whether every record was written. A queued record lost to a crash costs only
//! that file being copied again by a resume (the destination is verified either way).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{FileId, Journal};
use crate::error::{EngineError, Result};
use crate::plan::FilePlan;

/// The longest a queued record waits for company before it is written.
pub const WINDOW: Duration = Duration::from_millis(50);
/// The most records written in one transaction.
pub const MAX_BATCH: usize = 1024;

struct Entry {
    file: FileId,
    /// The file's plan, when it was not recorded before the file moved (a file moved whole
    /// and its source kept: see `LocalQueue::save_plan`): written with the record.
    plan: Option<FilePlan>,
    /// `Some` when the caller waits for this record to be written.
    waiter: Option<oneshot::Sender<Result<()>>>,
}

/// Records files of one transfer as completed, in batches (see the module's notes).
pub struct Completions {
    tx: mpsc::UnboundedSender<Entry>,
    writer: JoinHandle<std::result::Result<(), (usize, EngineError)>>,
}

impl Completions {
    /// `stop` is cancelled when a write fails: nothing more can be recorded, so the run
    /// should stop starting files.
    pub fn new(journal: Arc<dyn Journal>, transfer: String, stop: CancellationToken) -> Self {
        Self::with_window(journal, transfer, stop, WINDOW)
    }

    /// As [`Self::new`], with another window (tests).
    fn with_window(
        journal: Arc<dyn Journal>,
        transfer: String,
        stop: CancellationToken,
        window: Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Entry>();
        let writer = tokio::spawn(async move {
            // The first failure, and how many records it (and any later write) lost.
            let mut failed: Option<(usize, EngineError)> = None;
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + window;
                loop {
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let awaited = batch.iter().any(|e| e.waiter.is_some());
                    if awaited || batch.len() >= MAX_BATCH {
                        break;
                    }
                    // Closed (`finish`): write now; the outer loop then ends.
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(e)) => batch.push(e),
                        Ok(None) | Err(_) => break,
                    }
                }
                let ids: Vec<FileId> = batch.iter().map(|e| e.file).collect();
                let plans: Vec<FilePlan> = batch.iter_mut().filter_map(|e| e.plan.take()).collect();
                let result = match &failed {
                    // After a failure nothing more is written: a later record must not make a
                    // journal that missed some files look complete.
                    Some((_, e)) => Err(copy_error(e)),
                    None if plans.is_empty() => journal.files_completed(&transfer, &ids).await,
                    None => match journal.save_plans(&transfer, &plans).await {
                        Ok(()) => journal.files_completed(&transfer, &ids).await,
                        Err(e) => Err(e),
                    },
                };
                for e in batch {
                    if let Some(w) = e.waiter {
                        // A waiter that went away (its run was cancelled) needs no answer.
                        let _ = w.send(copy_result(&result));
                    }
                }
                if let Err(e) = result {
                    stop.cancel();
                    match &mut failed {
                        Some((lost, _)) => *lost += ids.len(),
                        None => failed = Some((ids.len(), e)),
                    }
                }
            }
            failed.map_or(Ok(()), Err)
        });
        Self { tx, writer }
    }

    /// Record one file as completed (with its plan, if that is not recorded yet); returns once
    /// the record is written.
    pub async fn completed(&self, file: FileId, plan: Option<FilePlan>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Entry {
                file,
                plan,
                waiter: Some(tx),
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Queue one file's record; it is written within [`WINDOW`], or by [`Self::finish`].
    pub fn record(&self, file: FileId, plan: Option<FilePlan>) -> Result<()> {
        self.tx
            .send(Entry {
                file,
                plan,
                waiter: None,
            })
            .map_err(|_| gone())
    }

    /// Write every queued record; an error says how many files finished without a record.
    pub async fn finish(self) -> Result<()> {
        let Self { tx, writer } = self;
        drop(tx);
        match writer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((lost, e))) => Err(EngineError::Unrecorded(format!(
                "the journal could not record {lost} finished file(s) (they are copied and \
                 verified; running the same command again copies them again): {e}"
            ))),
            Err(_) => Err(gone()),
        }
    }
}

fn gone() -> EngineError {
    EngineError::Journal("the journal writer stopped".into())
}

/// The same outcome for every file of a batch (errors are not `Clone`).
fn copy_result(r: &Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(copy_error(e)),
    }
}

fn copy_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::JournalUnavailable(m) => EngineError::JournalUnavailable(m.clone()),
        e => EngineError::Journal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sample_plans as plans;
    use crate::journal::{FileState, MemoryJournal};

    #[tokio::test]
    async fn every_awaiting_caller_returns_after_its_file_is_recorded() {
        let j = Arc::new(MemoryJournal::default());
        let plans = plans(50);
        j.save_plans("t", &plans).await.unwrap();
        let c = Arc::new(Completions::new(
            j.clone(),
            "t".into(),
            CancellationToken::new(),
        ));
        let mut tasks = Vec::new();
        for id in 0..50 {
            let (c, j) = (c.clone(), j.clone());
            tasks.push(tokio::spawn(async move {
                c.completed(id, None).await.unwrap();
                // Recorded by the time the call returns.
                let files = j.files("t").await.unwrap();
                assert_eq!(files[id].state, FileState::Completed);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    async fn state(j: &MemoryJournal, id: FileId) -> FileState {
        j.files("t").await.unwrap()[id].state
    }

    #[tokio::test]
    async fn queued_records_wait_for_the_window_or_an_awaited_record() {
        let j = Arc::new(MemoryJournal::default());
        j.save_plans("t", &plans(3000)).await.unwrap();
        // A window longer than any test: what is written early was written for another reason.
        let long = Duration::from_secs(3600);
        let c = Completions::with_window(j.clone(), "t".into(), CancellationToken::new(), long);
        c.record(0, None).unwrap();
        c.record(1, None).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_ne!(
            state(&j, 0).await,
            FileState::Completed,
            "the window is open"
        );
        // An awaited record does not wait for the window, and takes the queued ones along.
        tokio::time::timeout(Duration::from_secs(30), c.completed(2, None))
            .await
            .expect("an awaited record is written at once")
            .unwrap();
        assert_eq!(state(&j, 0).await, FileState::Completed);
        assert_eq!(state(&j, 1).await, FileState::Completed);
        // More than one batch's worth, all written by `finish`.
        for id in 3..3000 {
            c.record(id, None).unwrap();
        }
        c.finish().await.unwrap();
        let files = j.files("t").await.unwrap();
        assert!(files.iter().all(|f| f.state == FileState::Completed));
    }

    /// A file whose plan was not recorded before it moved: plan and completion are written
    /// together.
    #[tokio::test]
    async fn a_record_brings_its_plan_along() {
        let j = Arc::new(MemoryJournal::default());
        let c = Completions::new(j.clone(), "t".into(), CancellationToken::new());
        let mut p = plans(2);
        c.record(1, p.pop()).unwrap();
        c.completed(0, p.pop()).await.unwrap();
        c.finish().await.unwrap();
        assert_eq!(state(&j, 0).await, FileState::Completed);
        assert_eq!(state(&j, 1).await, FileState::Completed);
    }

    #[tokio::test]
    async fn a_queued_record_is_written_once_the_window_has_passed() {
        let j = Arc::new(MemoryJournal::default());
        j.save_plans("t", &plans(1)).await.unwrap();
        let short = Duration::from_millis(10);
        let c = Completions::with_window(j.clone(), "t".into(), CancellationToken::new(), short);
        c.record(0, None).unwrap();
        // Nothing else arrives and nobody calls `finish`: the window alone writes it.
        let written = async {
            while state(&j, 0).await != FileState::Completed {
                tokio::time::sleep(short).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), written)
            .await
            .expect("written after the window");
        c.finish().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_write_stops_the_run_and_finish_says_how_many_were_lost() {
        let j = Arc::new(MemoryJournal::default());
        j.save_plans("t", &plans(4)).await.unwrap();
        j.refuse_file_states();
        let stop = CancellationToken::new();
        let c = Completions::new(j, "t".into(), stop.clone());
        c.record(0, None).unwrap();
        c.record(1, None).unwrap();
        let err = c
            .completed(2, None)
            .await
            .expect_err("nothing to record into");
        assert!(err.is_journal(), "{err}");
        assert!(stop.is_cancelled());
        c.record(3, None).unwrap();
        let err = c.finish().await.expect_err("records were lost").to_string();
        assert!(err.contains("could not record 4 finished file(s)"), "{err}");
        assert!(err.contains("copies them again"), "{err}");
    }
}
