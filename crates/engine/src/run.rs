//! The engine: plan every file, move the parts, finalize, report.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use barge_store::{Store, StoreError, UploadRef};
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Until, Worker, WorkerOptions};
use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::input::TransferSpec;
use crate::journal::local::LocalQueue;
use crate::journal::{
    FileId, FileRecord, FileState, Journal, MemoryJournal, TransferRecord, TransferState,
};
use crate::plan::{FilePlan, PlanOptions, Strategy};
use crate::report::{FileOutcome, Observer, Silent, Status, Summary, Verification};
use crate::retry::{RetryPolicy, retry};
use crate::steps::Steps;
use crate::worker::Limits;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub plan: PlanOptions,
    /// Parts (requests) in flight across all files; also how many large (multipart) files
    /// are under way at once.
    pub concurrency: usize,
    /// Files moved at once. Small files (one request each way) wait mostly on round trips, not
    /// on bandwidth, and use this many requests in flight besides the parts' `concurrency`.
    pub files: usize,
    pub delete_source: bool,
    pub dry_run: bool,
    pub retry: RetryPolicy,
    /// Continue an unfinished transfer of the same files instead of starting over.
    pub resume: bool,
    /// `--bwlimit`: bytes per second read, and written, by this process.
    pub bwlimit: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            plan: PlanOptions::default(),
            concurrency: 16,
            files: DEFAULT_FILES,
            delete_source: false,
            dry_run: false,
            retry: RetryPolicy::default(),
            resume: true,
            bwlimit: None,
        }
    }
}

pub struct Engine {
    conns: Arc<Connections>,
    opts: RunOptions,
    observer: Arc<dyn Observer>,
    journal: Arc<dyn Journal>,
    cancel: CancellationToken,
    limits: Arc<Limits>,
    /// What a listing said of sources (size, ETag): small objects are planned without a stat.
    listing: HashMap<crate::location::Location, barge_store::ObjectMeta>,
    /// What finds this transfer again, when not its pairs (a sync: its two trees).
    fingerprint: Option<String>,
}

/// What the journal keeps of a transfer's request: enough for `barge resume ID`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferRequest {
    pub transfers: Vec<TransferSpec>,
    pub delete_source: bool,
    /// Part sizes asked for at submission (workers plan with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_part_size: Option<u64>,
    /// A transfer-wide `--bwlimit` (bytes per second each way), shared by the workers on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<u64>,
}

/// "The same command": a hash of the source/destination pairs.
pub fn fingerprint(specs: &[TransferSpec]) -> String {
    let mut h = Sha256::new();
    for s in specs {
        h.update(serde_json::to_vec(s).unwrap_or_default());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

/// Files moved at once by default (`RunOptions::files`): enough small objects in flight to keep
/// the machine busy over a 30 ms round trip (BENCHMARKS.md, "Small files over a link with a
/// round trip").
pub const DEFAULT_FILES: usize = 64;

/// Passes every event on, and keeps each file's outcome for the summary.
struct Collect {
    inner: Arc<dyn Observer>,
    outcomes: std::sync::Mutex<Vec<FileOutcome>>,
}

impl Observer for Collect {
    fn transfer_started(&self, id: &str, resumed: bool) {
        self.inner.transfer_started(id, resumed);
    }
    fn planned(&self, plans: &[FilePlan]) {
        self.inner.planned(plans);
    }
    fn file_started(&self, plan: &FilePlan) {
        self.inner.file_started(plan);
    }
    fn progress(&self, file: FileId, bytes: u64) {
        self.inner.progress(file, bytes);
    }
    fn file_finished(&self, outcome: &FileOutcome) {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(outcome.clone());
        self.inner.file_finished(outcome);
    }
}

impl Engine {
    pub fn new(conns: Arc<Connections>, opts: RunOptions) -> Self {
        let limits = Arc::new(
            Limits::new(
                opts.concurrency,
                opts.files,
                opts.plan.max_memory,
                opts.retry.clone(),
            )
            .with_bwlimit(opts.bwlimit),
        );
        Self {
            conns,
            opts,
            observer: Arc::new(Silent),
            journal: Arc::new(MemoryJournal::default()),
            cancel: CancellationToken::new(),
            limits,
            listing: HashMap::new(),
            fingerprint: None,
        }
    }

    pub fn with_observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = o;
        self
    }

    /// Sources as a listing described them: small ones are then planned without a stat each
    /// and read with one GET that also brings their metadata.
    pub fn with_listing(mut self, metas: Vec<(TransferSpec, barge_store::ObjectMeta)>) -> Self {
        self.listing = metas.into_iter().map(|(s, m)| (s.src, m)).collect();
        self
    }

    /// Record the transfer under this fingerprint instead of its pairs' (`barge sync`, whose
    /// files differ from run to run, is found again by its two trees).
    pub fn with_fingerprint(mut self, fp: String) -> Self {
        self.fingerprint = Some(fp);
        self
    }

    pub fn options(&self) -> &RunOptions {
        &self.opts
    }

    pub fn with_journal(mut self, j: Arc<dyn Journal>) -> Self {
        self.journal = j;
        self
    }

    /// Cancelling this token stops the run: unfinished files are aborted, nothing is left open.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    fn steps(&self) -> Steps {
        Steps {
            conns: self.conns.clone(),
            plan: self.opts.plan.clone(),
            retry: self.opts.retry.clone(),
            delete_source: self.opts.delete_source,
            limits: self.limits.clone(),
            listing: self.listing.clone(),
        }
    }

    /// Plan and move every file, continuing an unfinished transfer of the same files if the
    /// journal has one. Errors of single files are in the summary; an `Err` means the run as a
    /// whole was refused before anything moved, or its journal failed.
    ///
    /// The files go through the same work queue as many workers' (plan, part and finalize
    /// tasks, done by [`Worker`]), held in this process ([`LocalQueue`]) with every durable
    /// fact written to this engine's journal.
    pub async fn run(&self, specs: Vec<TransferSpec>) -> Result<Summary> {
        let resolver = crate::identity::Resolver::new(&self.conns, &specs).await;
        let refused = crate::identity::check(&resolver, &specs, self.opts.delete_source)?;
        let refused_outcome = |i: usize| {
            refused[i]
                .as_ref()
                .map(|msg| failed_unplanned(i, &specs[i], &EngineError::Input(msg.clone())))
        };
        let started = Instant::now();
        if self.opts.dry_run {
            let steps = self.steps();
            let steps = &steps;
            let mut outcomes = Vec::new();
            let mut plans = Vec::new();
            let planned = stream::iter(specs.iter().enumerate())
                .map(|(i, s)| async move {
                    match refused_outcome(i) {
                        Some(o) => Err(o),
                        None => steps
                            .plan_one(i, s)
                            .await
                            .map_err(|e| failed_unplanned(i, s, &e)),
                    }
                })
                .buffered(64)
                .collect::<Vec<_>>()
                .await;
            for p in planned {
                match p {
                    Ok(plan) => plans.push(plan),
                    Err(o) => outcomes.push(o),
                }
            }
            self.observer.planned(&plans);
            outcomes.extend(
                plans
                    .iter()
                    .map(|p| outcome(p, Status::Planned, None, None, 0.0)),
            );
            outcomes.sort_by_key(|o| o.id);
            return Ok(Summary::new(outcomes, started.elapsed(), 0));
        }

        // The transfer is recorded before anything moves: an unwritable journal stops here.
        let fp = self
            .fingerprint
            .clone()
            .unwrap_or_else(|| fingerprint(&specs));
        let earlier = if self.opts.resume {
            self.journal.find_resumable(&fp).await?
        } else {
            None
        };
        let resumed = earlier.is_some();
        let request = TransferRequest {
            transfers: specs.clone(),
            delete_source: self.opts.delete_source,
            part_size: None,
            copy_part_size: None,
            // This process alone moves it: its own limit (`Limits`) is the transfer's.
            bwlimit: None,
        };
        let tid = match earlier {
            Some(t) => {
                self.journal
                    .set_transfer_state(&t.id, TransferState::Running)
                    .await?;
                t.id
            }
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
                let spec = serde_json::to_string(&request).map_err(|e| {
                    EngineError::Journal(format!("cannot record the transfer: {e}"))
                })?;
                self.journal
                    .create_transfer(&TransferRecord {
                        id: id.clone(),
                        fingerprint: fp,
                        created_at: crate::journal::now(),
                        updated_at: crate::journal::now(),
                        state: TransferState::Running,
                        spec,
                    })
                    .await?;
                id
            }
        };
        self.observer.transfer_started(&tid, resumed);

        // Sort the files: done in an earlier run, an upload to continue, or to plan now.
        let known: HashMap<usize, FileRecord> = if resumed {
            self.journal
                .files(&tid)
                .await?
                .into_iter()
                .map(|r| (r.plan.id, r))
                .collect()
        } else {
            HashMap::new()
        };
        let mut outcomes = Vec::new();
        let mut todo = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            if let Some(o) = refused_outcome(i) {
                self.observer.file_finished(&o);
                outcomes.push(o);
                continue;
            }
            match known.get(&i) {
                Some(r) if r.plan.src == spec.src && r.plan.dst == spec.dst => match r.state {
                    FileState::Completed => {
                        outcomes.push(outcome(
                            &r.plan,
                            Status::Ok,
                            Some(Verification::Earlier),
                            None,
                            0.0,
                        ));
                    }
                    FileState::Uploading if r.upload_id.is_some() => todo.push(r.clone()),
                    _ => todo.push(pending(i, spec)),
                },
                _ => todo.push(pending(i, spec)),
            }
        }

        // A failed batch of completion records stops the run as a cancel would.
        let stop = self.cancel.child_token();
        let queue = Arc::new(LocalQueue::new(
            self.journal.clone(),
            &tid,
            todo,
            stop.clone(),
        ));
        let collect = Arc::new(Collect {
            inner: self.observer.clone(),
            outcomes: Default::default(),
        });
        let worker = Arc::new(
            Worker::with_limits(
                self.conns.clone(),
                queue.clone(),
                WorkerOptions {
                    id: "local".into(),
                    concurrency: self.opts.concurrency,
                    files: self.opts.files.max(self.opts.concurrency).max(1),
                    max_memory: self.opts.plan.max_memory,
                    retry: self.opts.retry.clone(),
                    allow_local: true,
                    ..WorkerOptions::default()
                },
                self.limits.clone(),
            )
            .with_observer(collect.clone()),
        );
        worker.adopt(&tid, request, self.steps()).await;
        let ran = worker.run(stop, Until::Settled(tid.clone())).await;
        let task_error = worker.take_error();
        let parts_reused = worker.parts_reused();
        drop(worker);

        // Files left unfinished (cancelled, or the journal failed): a durable journal keeps
        // their uploads for a resume; without one they are aborted, nothing is left open.
        let stopped = ran.as_ref().err().map(|e| e.to_string());
        let keep = self.journal.durable();
        let steps = self.steps();
        for rec in queue.unfinished() {
            if !keep
                && rec.state == FileState::Uploading
                && let Some(id) = &rec.upload_id
                && let Ok(dst) = self.conns.get(&rec.plan.dst.conn).await
            {
                let up = UploadRef {
                    path: rec.plan.dst.path.clone(),
                    upload_id: id.clone(),
                };
                steps.abort(dst.as_ref(), &up).await;
            }
            let msg = stopped.clone().unwrap_or_else(|| "cancelled".into());
            let o = if rec.state == FileState::Pending {
                unplanned(&rec.plan, Status::Cancelled, Some(msg))
            } else {
                outcome(&rec.plan, Status::Cancelled, None, Some(msg), 0.0)
            };
            self.observer.file_finished(&o);
            outcomes.push(o);
        }
        // Every finished file's record written, or the run says how many were not.
        let recorded = match Arc::try_unwrap(queue) {
            Ok(q) => q.finish().await,
            Err(_) => Err(EngineError::Journal(
                "the run's queue is still in use after the run".into(),
            )),
        };
        let failure = match (task_error, recorded, ran) {
            (_, _, Err(e)) => Some(e),
            (Some(e), Err(also), _) => {
                tracing::error!("{also}");
                Some(e)
            }
            (Some(e), Ok(()), _) | (None, Err(e), _) => Some(e),
            (None, Ok(()), Ok(())) => None,
        };
        if let Some(e) = failure {
            if let Err(e) = self
                .journal
                .set_transfer_state(&tid, TransferState::Interrupted)
                .await
            {
                tracing::error!("{e}");
            }
            return Err(e);
        }
        outcomes.extend(
            collect
                .outcomes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..),
        );
        outcomes.sort_by_key(|o| o.id);
        let mut summary = Summary::new(
            outcomes,
            started.elapsed(),
            self.limits.stats.retries.load(Ordering::Relaxed),
        );
        summary.throttled = self.limits.stats.throttled.load(Ordering::Relaxed);
        let state = if self.cancel.is_cancelled() {
            TransferState::Interrupted
        } else if summary.success() {
            TransferState::Done
        } else {
            TransferState::Failed
        };
        if let Err(e) = self.journal.set_transfer_state(&tid, state).await {
            tracing::error!("{e}");
        }
        summary.transfer_id = Some(tid);
        summary.resumed = resumed;
        summary.parts_reused = parts_reused;
        Ok(summary)
    }
}

/// A file not yet planned: what the journal holds of it before its plan task runs.
fn pending(id: usize, spec: &TransferSpec) -> FileRecord {
    FileRecord {
        plan: FilePlan {
            id,
            src: spec.src.clone(),
            dst: spec.dst.clone(),
            size: 0,
            pin: Default::default(),
            attrs: Default::default(),
            strategy: Strategy::SinglePut,
            part_size: 0,
            part_count: 0,
            attrs_pending: false,
        },
        upload_id: None,
        state: FileState::Pending,
        error: None,
    }
}

/// The outcome of a file that was never planned (size, strategy and parts unknown).
pub(crate) fn unplanned(plan: &FilePlan, status: Status, error: Option<String>) -> FileOutcome {
    FileOutcome {
        size: None,
        strategy: None,
        part_size: None,
        parts: None,
        ..outcome(plan, status, None, error, 0.0)
    }
}

pub(crate) fn outcome(
    plan: &FilePlan,
    status: Status,
    verified: Option<Verification>,
    error: Option<String>,
    secs: f64,
) -> FileOutcome {
    FileOutcome {
        id: plan.id,
        src: plan.src.to_string(),
        dst: plan.dst.to_string(),
        size: Some(plan.size),
        strategy: Some(plan.strategy),
        part_size: Some(plan.part_size),
        parts: Some(plan.part_count),
        status,
        verified: verified.unwrap_or(Verification::NotVerified),
        bytes_through_client: 0,
        source_deleted: false,
        seconds: secs,
        error,
    }
}

fn failed_unplanned(id: usize, spec: &TransferSpec, e: &EngineError) -> FileOutcome {
    unplanned(&pending(id, spec).plan, Status::Failed, Some(e.to_string()))
}

/// `barge abort`: abort every unfinished upload of a transfer and mark it aborted. Returns the
/// number of uploads aborted.
pub async fn abort_transfer(conns: &Connections, journal: &dyn Journal, id: &str) -> Result<usize> {
    let t = journal.transfer(id).await?.ok_or_else(|| {
        EngineError::Input(format!(
            "no transfer with id '{id}' in the journal (see `barge list`)"
        ))
    })?;
    // The journal first, in one statement: workers stop claiming the transfer's work at once.
    let open: Vec<FileRecord> = journal
        .files(&t.id)
        .await?
        .into_iter()
        .filter(|f| !matches!(f.state, FileState::Completed | FileState::Failed))
        .collect();
    journal
        .fail_unfinished(&t.id, "aborted by the user")
        .await?;
    journal
        .set_transfer_state(&t.id, TransferState::Aborted)
        .await?;
    let mut aborted = 0;
    let mut left = Vec::new();
    for f in open {
        let Some(upload_id) = f.upload_id else {
            continue;
        };
        let store = conns.get(&f.plan.dst.conn).await?;
        match store
            .abort_upload(&UploadRef {
                path: f.plan.dst.path.clone(),
                upload_id,
            })
            .await
        {
            Ok(()) | Err(StoreError::NoSuchUpload { .. }) => aborted += 1,
            Err(e) => left.push(format!("{}: {e}", f.plan.dst)),
        }
    }
    if !left.is_empty() {
        return Err(EngineError::Input(format!(
            "transfer {} is aborted, but {} upload(s) could not be aborted ({}); `barge cleanup` removes them later",
            t.id,
            left.len(),
            left.join("; ")
        )));
    }
    Ok(aborted)
}

/// `barge cleanup`: abort multipart uploads under a prefix started more than `older_than` ago.
pub async fn cleanup(
    store: &dyn Store,
    bucket: &str,
    prefix: &str,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<barge_store::PendingUpload>> {
    let now = std::time::SystemTime::now();
    let policy = RetryPolicy::default();
    let stats = crate::retry::RetryStats::default();
    let pending = retry(&policy, &stats, "listing of multipart uploads", || {
        store.list_uploads(bucket, prefix)
    })
    .await?;
    let mut out = Vec::new();
    for p in pending {
        let age = p
            .initiated
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::MAX);
        if age < older_than {
            continue;
        }
        if !dry_run {
            let what = format!(
                "abort of upload {} of {}",
                p.upload.upload_id, p.upload.path
            );
            retry(&policy, &stats, &what, || store.abort_upload(&p.upload)).await?;
        }
        out.push(p);
    }
    Ok(out)
}

/// Strategy names for plans printed to people.
pub fn describe(plan: &FilePlan) -> String {
    let s = match plan.strategy {
        Strategy::SinglePut => "single PUT",
        Strategy::ServerCopy => "server-side copy",
        Strategy::ServerPartCopy => "server-side multipart copy",
        Strategy::StreamParts => "streamed multipart",
    };
    if plan.strategy.is_multipart() {
        format!(
            "{s}, {} parts of {}",
            plan.part_count,
            crate::size::human(plan.part_size)
        )
    } else {
        s.to_string()
    }
}
