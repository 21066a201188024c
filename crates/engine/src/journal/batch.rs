//! Group commit of "file completed" records.
//!
//! Many small files finish at nearly the same time; recording each in its own transaction made
//! the journal a fifth of the wall time of a many-small-files copy. Here each caller still waits
//! until its own record is written (nothing is reported done, and no source deleted, before
//! then), but the records that arrive while one write is in flight go together in the next one.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{FileId, Journal};
use crate::error::{EngineError, Result};

type Waiter = (FileId, oneshot::Sender<Result<()>>);

/// Records files of one transfer as completed, in batches. Dropping it ends its writer task
/// once the records already queued are written.
pub struct Completions {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Completions {
    pub fn new(journal: Arc<dyn Journal>, transfer: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let ids: Vec<FileId> = batch.iter().map(|(id, _)| *id).collect();
                let result = journal.files_completed(&transfer, &ids).await;
                for (_, waiter) in batch {
                    // A waiter that went away (its run was cancelled) needs no answer.
                    let _ = waiter.send(copy_result(&result));
                }
            }
        });
        Self { tx }
    }

    /// Record one file as completed; returns once the record is written.
    pub async fn completed(&self, file: FileId) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let gone = || EngineError::Journal("the journal writer stopped".into());
        self.tx.send((file, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// The same outcome for every file of a batch (errors are not `Clone`).
fn copy_result(r: &Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(EngineError::JournalUnavailable(m)) => Err(EngineError::JournalUnavailable(m.clone())),
        Err(e) => Err(EngineError::Journal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::sample_plans as plans;
    use crate::journal::{FileState, MemoryJournal};

    #[tokio::test]
    async fn every_caller_returns_after_its_file_is_recorded() {
        let j = Arc::new(MemoryJournal::default());
        let plans = plans(50);
        j.save_plans("t", &plans).await.unwrap();
        let c = Arc::new(Completions::new(j.clone(), "t".into()));
        let mut tasks = Vec::new();
        for id in 0..50 {
            let (c, j) = (c.clone(), j.clone());
            tasks.push(tokio::spawn(async move {
                c.completed(id).await.unwrap();
                // Recorded by the time the call returns.
                let files = j.files("t").await.unwrap();
                assert_eq!(files[id].state, FileState::Completed);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
