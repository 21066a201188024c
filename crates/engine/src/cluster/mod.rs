//! Many workers, one journal: `submit` records a transfer as work, and [`Worker`] does work.
//!
//! A worker claims tasks under a lease (see `journal/queue.rs`), does each with the same
//! functions as a one-machine run (plan, move a part, move a small file whole, verify, delete the
//! exact source), and records the outcome while it still holds the lease. Finalize happens once
//! per file: its task is queued by whichever worker recorded the file's last part, and claimed
//! like any other. It completes the upload from the store's own list of parts, checked part by
//! part against the journal's receipts: a part moved twice (a slow worker whose lease expired)
//! or changed behind barge's back is moved again, never completed as found.

pub mod metrics;
mod pace;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use barge_store::{Store, UploadRef};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bwlimit::Duplex;
use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::input::TransferSpec;
use crate::journal::queue::{Task, TaskKind, WorkQueue};
use crate::journal::{
    FileId, FileRecord, FileState, Journal, SqlJournal, TransferRecord, TransferState,
};
use crate::location::ConnRef;
use crate::plan::{FilePlan, PlanOptions};
use crate::report::{FileOutcome, Observer, Silent, Status, Summary, Verification};
use crate::retry::RetryPolicy;
use crate::run::{TransferRequest, fingerprint};
use crate::steps::{Finished, Steps};
use crate::worker::{Limits, move_part};

pub use metrics::Metrics;

/// A task claimed more often than this without finishing fails its file: some worker keeps
/// dying on it, and its log says why.
const MAX_CLAIMS: u32 = 10;

/// The most parts any store takes in one upload (local files; S3 takes 10,000): a journal row
/// planning more was not written by barge.
const MAX_PLANNED_PARTS: u32 = 1_000_000;

/// What one `submit` asks for beyond the files.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    pub queue: String,
    pub delete_source: bool,
    pub part_size: Option<u64>,
    pub copy_part_size: Option<u64>,
    /// Bytes per second read, and written, for the whole transfer, shared by its workers.
    pub bwlimit: Option<u64>,
}

/// Record a transfer for workers and return its id at once: planning (a stat per source, part
/// sizes, starting uploads) is itself work that workers pick up.
pub async fn submit(
    conns: &Connections,
    journal: &SqlJournal,
    specs: Vec<TransferSpec>,
    opts: &SubmitOptions,
) -> Result<String> {
    if specs.is_empty() {
        return Err(EngineError::Input("nothing to submit: no files".into()));
    }
    let resolver = crate::identity::Resolver::new(conns, &specs).await;
    if let Some(local) = specs
        .iter()
        .flat_map(|s| [&s.src, &s.dst])
        .find(|l| resolver.is_local(l))
    {
        return Err(EngineError::Input(format!(
            "{local} is a local path: workers on other machines cannot reach it; submit \
             s3:// or NAME: locations, or copy local files with `barge cp` and a SQLite journal"
        )));
    }
    crate::identity::check(&resolver, &specs, opts.delete_source)?;
    let id = new_id();
    let request = TransferRequest {
        transfers: specs,
        delete_source: opts.delete_source,
        part_size: opts.part_size,
        copy_part_size: opts.copy_part_size,
        bwlimit: opts.bwlimit,
    };
    let spec = serde_json::to_string(&request)
        .map_err(|e| EngineError::Journal(format!("cannot record the transfer: {e}")))?;
    let now = crate::journal::now_secs();
    let record = TransferRecord {
        id: id.clone(),
        fingerprint: fingerprint(&request.transfers),
        created_at: now,
        updated_at: now,
        state: TransferState::Running,
        spec,
    };
    journal
        .submit(&record, &opts.queue, &request.transfers)
        .await?;
    Ok(id)
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// Why a journal row is not worked on (`Worker::check_row`).
enum RowProblem {
    /// It names a connection or path this worker must not touch.
    Locations(String),
    /// Its plan is not one barge makes.
    Plan(String),
}

/// How a worker is set up.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// This worker's name in leases: unique per process.
    pub id: String,
    pub queue: String,
    /// Part tasks in flight at once.
    pub concurrency: usize,
    /// File-level tasks in flight at once (plans, small files moved whole, completions): round
    /// trips rather than bandwidth, so more of them than parts.
    pub files: usize,
    pub max_memory: u64,
    /// How long a claim lasts without renewal: a dead worker's parts wait this long.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// How long to wait for an unreachable journal before giving up.
    pub journal_wait: Duration,
    /// Work on files of the local file system that journal rows name. Off unless asked for:
    /// anyone who can write the shared journal could otherwise make a worker read, upload and
    /// delete files on its own disk.
    pub allow_local: bool,
    /// `--bwlimit`: bytes per second this worker reads, and writes.
    pub bwlimit: Option<u64>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            id: default_worker_id(),
            queue: String::new(),
            concurrency: 16,
            files: crate::run::DEFAULT_FILES,
            max_memory: PlanOptions::default().max_memory,
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            journal_wait: Duration::from_secs(600),
            allow_local: false,
            bwlimit: None,
        }
    }
}

/// `host-pid-random`: readable in the journal, unique across restarts.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

/// When a worker's loop ends.
#[derive(Clone, Debug)]
pub enum Until {
    /// When its stop token is cancelled (`barge worker`).
    Stopped,
    /// When its queue holds no unfinished work (`barge worker --exit-when-idle`).
    Idle,
    /// When this transfer is finished (`barge cp`/`run` with a shared journal).
    Settled(String),
}

/// One transfer as a worker needs it: the request, and the steps planned with its options.
struct TransferCtx {
    request: TransferRequest,
    steps: Steps,
    queue: String,
    /// The transfer's own `--bwlimit`, this worker's share of it (see `pace_transfer`).
    bandwidth: Option<Duplex>,
}

/// When a file started here, and the bytes it moved through this process (for its outcome).
struct FileClock {
    started: Instant,
    bytes: u64,
}

pub struct Worker {
    conns: Arc<Connections>,
    queue: Arc<dyn WorkQueue>,
    opts: WorkerOptions,
    limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    transfers: tokio::sync::Mutex<HashMap<String, Arc<TransferCtx>>>,
    /// The tasks being run now: the leases housekeeping renews.
    running: std::sync::Mutex<HashSet<Task>>,
    /// Part tasks under way, and how many this worker holds at most now (`pace`): no more
    /// than raise its throughput, so others find parts to claim.
    parts_running: AtomicUsize,
    /// Of those, the parts still reading their bytes (see [`PartRead`]).
    parts_reading: Arc<ReadPhase>,
    pace: std::sync::Mutex<pace::Pace>,
    observer: Arc<dyn Observer>,
    clocks: std::sync::Mutex<HashMap<(String, FileId), FileClock>>,
    parts_reused: AtomicU64,
    /// On a queue of its own (not shared), a task that cannot record its outcome stops the
    /// run: nobody else will take the task up. The first such error is kept for the caller.
    halt: CancellationToken,
    first_error: std::sync::Mutex<Option<EngineError>>,
    /// On a queue of its own, cancelled when the run stops: part and finalize tasks in flight
    /// are dropped (what they recorded stays recorded), a plan task stops at its next step
    /// that records nothing (an upload it opened is always recorded first).
    quit: CancellationToken,
}

/// A task's place in [`Worker::running`], given up when the task ends however it ends.
struct Running<'a> {
    set: &'a std::sync::Mutex<HashSet<Task>>,
    task: &'a Task,
}

impl<'a> Running<'a> {
    fn new(set: &'a std::sync::Mutex<HashSet<Task>>, task: &'a Task) -> Self {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.clone());
        Self { set, task }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.task);
    }
}

impl Worker {
    pub fn new<Q: WorkQueue + 'static>(
        conns: Arc<Connections>,
        queue: Arc<Q>,
        opts: WorkerOptions,
    ) -> Self {
        let limits = Arc::new(
            Limits::new(
                opts.concurrency,
                opts.files,
                opts.max_memory,
                opts.retry.clone(),
            )
            .with_bwlimit(opts.bwlimit),
        );
        Self::with_limits(conns, queue, opts, limits)
    }

    pub(crate) fn with_limits(
        conns: Arc<Connections>,
        queue: Arc<dyn WorkQueue>,
        opts: WorkerOptions,
        limits: Arc<Limits>,
    ) -> Self {
        Self {
            pace: std::sync::Mutex::new(pace::Pace::new(opts.concurrency)),
            conns,
            queue,
            opts,
            limits,
            metrics: Arc::new(Metrics::default()),
            transfers: Default::default(),
            running: Default::default(),
            parts_running: AtomicUsize::new(0),
            parts_reading: Default::default(),
            observer: Arc::new(Silent),
            clocks: Default::default(),
            parts_reused: AtomicU64::new(0),
            halt: CancellationToken::new(),
            first_error: Default::default(),
            quit: CancellationToken::new(),
        }
    }

    pub(crate) fn with_observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = o;
        self
    }

    /// Work on a transfer with steps given here (a listing's metadata, the caller's options)
    /// instead of the ones its journal record asks for.
    pub(crate) async fn adopt(&self, id: &str, request: TransferRequest, steps: Steps) {
        self.transfers.lock().await.insert(
            id.to_string(),
            Arc::new(TransferCtx {
                request,
                steps,
                queue: self.opts.queue.clone(),
                // One process's own run: its `Limits` hold its `--bwlimit`.
                bandwidth: None,
            }),
        );
    }

    pub fn id(&self) -> &str {
        &self.opts.id
    }

    /// Requests retried so far (for the metrics).
    pub fn retries(&self) -> u64 {
        self.limits.stats.retries.load(Ordering::Relaxed)
    }

    /// Answers that asked this worker for fewer requests.
    pub fn throttled(&self) -> u64 {
        self.limits.stats.throttled.load(Ordering::Relaxed)
    }

    pub(crate) fn parts_reused(&self) -> u64 {
        self.parts_reused.load(Ordering::Relaxed)
    }

    /// The error that stopped a worker on a queue of its own, if one did.
    pub(crate) fn take_error(&self) -> Option<EngineError> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Claim and do work until `until`; then finish what is in flight and give back any lease
    /// still held. An `Err` means the journal stayed unreachable longer than `journal_wait`.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken, until: Until) -> Result<()> {
        let lease_ms = self.opts.lease.as_millis().max(1) as u64;
        let housekeeping = CancellationToken::new();
        let hk = self.queue.shared().then(|| {
            let me = self.clone();
            let done = housekeeping.clone();
            tokio::spawn(async move { me.housekeeping(done, lease_ms).await })
        });
        let result = self.claim_loop(&stop, &until, lease_ms).await;
        housekeeping.cancel();
        if let Some(hk) = hk {
            let _ = hk.await;
        }
        if let Err(e) = self.queue.release(&self.opts.id).await {
            tracing::warn!("could not give back leases (they expire by themselves): {e}");
        }
        result
    }

    async fn claim_loop(
        self: &Arc<Self>,
        stop: &CancellationToken,
        until: &Until,
        lease_ms: u64,
    ) -> Result<()> {
        let shared = self.queue.shared();
        // On a queue of its own a stopped run leaves at once (see `quit`).
        let quit = self.quit.clone();
        let _quit_on_drop = (!shared).then(|| quit.clone().drop_guard());
        if !shared {
            let (stop, halt, quit) = (stop.clone(), self.halt.clone(), quit.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = halt.cancelled() => {}
                    _ = quit.cancelled() => return,
                }
                quit.cancel();
            });
        }
        let mut set = if shared {
            Tasks::Spawned(JoinSet::new())
        } else {
            Tasks::Inline(FuturesUnordered::new())
        };
        // File-level tasks under way (part tasks: `self.parts_running`), each against its own
        // limit.
        let files_running = Arc::new(AtomicUsize::new(0));
        let poll_min = Duration::from_millis(50);
        let poll_max = Duration::from_millis(1000);
        let poll_busy = Duration::from_millis(200);
        let mut idle_wait = poll_min;
        let result = loop {
            set.reap();
            if stop.is_cancelled() || self.halt.is_cancelled() {
                break Ok(());
            }
            let held = self.parts_running.load(Ordering::SeqCst);
            let reading = self.parts_reading.count.load(Ordering::SeqCst);
            let mut free_parts = if shared {
                let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
                if held == 0 {
                    // Time without parts is not a rate: the next window starts now.
                    pace.idle(Instant::now());
                }
                // The pace counts parts reading: a part whose bytes are in hand only writes
                // them, so the next part's read starts then, and the links both ways stay busy
                // with one part each. A part being written is held too, never more of them
                // than reads (a slow write side does not gather parts others could move).
                let target = pace.target();
                target
                    .saturating_sub(reading)
                    .min((2 * target).saturating_sub(held))
            } else {
                // Alone on its queue, nothing is gained by holding back.
                self.opts.concurrency.saturating_sub(held)
            };
            if shared && free_parts > 0 {
                free_parts = free_parts.min(self.fair_share(reading).await);
            }
            let free_files = self
                .opts
                .files
                .saturating_sub(files_running.load(Ordering::SeqCst));
            let free = free_parts + free_files;
            let mut got = 0;
            if free > 0 {
                let t0 = Instant::now();
                let claimed = self
                    .db(|| {
                        self.queue.claim_split(
                            &self.opts.id,
                            &self.opts.queue,
                            free_parts,
                            free_files,
                            lease_ms,
                        )
                    })
                    .await;
                let tasks = match claimed {
                    Ok(t) => t,
                    Err(EngineError::JournalUnavailable(msg)) => {
                        break Err(EngineError::JournalUnavailable(msg));
                    }
                    Err(e) => {
                        // A statement that failed for another reason is no reason to stop
                        // working: say so, wait, claim again.
                        tracing::error!("claiming work failed: {e}; trying again");
                        tokio::time::sleep(poll_max).await;
                        continue;
                    }
                };
                self.metrics
                    .claim_seconds
                    .observe(t0.elapsed().as_secs_f64());
                got = tasks.len();
                for t in tasks {
                    tracing::debug!(
                        "claimed {} {} of file {} of {}",
                        t.kind.as_str(),
                        t.number,
                        t.file,
                        t.transfer
                    );
                    let me = self.clone();
                    let files = files_running.clone();
                    let part = t.kind == TaskKind::Part;
                    let read = PartRead::new(&self.parts_reading, part);
                    if part {
                        self.parts_running.fetch_add(1, Ordering::SeqCst);
                    } else {
                        files.fetch_add(1, Ordering::SeqCst);
                    }
                    self.metrics.parts_in_flight.inc();
                    let quit = quit.clone();
                    set.push(async move {
                        // Counted back however the task ends, dropped included.
                        let _count = Counted {
                            me: &me,
                            files: &files,
                            part,
                        };
                        if shared || t.kind == TaskKind::Plan {
                            me.execute_claimed(t, &read).await;
                        } else {
                            tokio::select! {
                                _ = me.execute_claimed(t, &read) => {}
                                _ = quit.cancelled() => {}
                            }
                        }
                    });
                }
            }
            if got > 0 && got < free {
                idle_wait = poll_min;
                continue;
            }
            // Others hold the work this worker waits to see finish: it ends (or a task is put
            // back) within moments, so the wait stays short instead of backing off.
            let mut others_busy = false;
            if got == 0 && set.is_empty() {
                let finished = match until {
                    Until::Stopped => false,
                    Until::Idle => {
                        self.db(|| self.queue.unfinished_work(&self.opts.queue))
                            .await?
                            == 0
                    }
                    Until::Settled(tid) => !matches!(
                        self.db(|| self.queue.transfer_state(tid)).await?,
                        Some(TransferState::Running)
                    ),
                };
                if finished {
                    break Ok(());
                }
                others_busy = !matches!(until, Until::Stopped);
                if !shared && self.queue.unfinished_work(&self.opts.queue).await? == 0 {
                    // Nothing left to do, and yet files are open: waiting would be for ever.
                    break Err(EngineError::Journal(
                        "the run's queue holds unfinished files but no work for them".into(),
                    ));
                }
            }
            let wait = if got == 0 {
                let w = idle_wait;
                let cap = if others_busy { poll_busy } else { poll_max };
                idle_wait = (idle_wait * 2).min(cap);
                w.min(cap)
            } else {
                idle_wait = poll_min;
                poll_max
            };
            tokio::select! {
                _ = set.next(), if !set.is_empty() => {}
                _ = self.parts_reading.read.notified(), if shared => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
                _ = self.halt.cancelled() => {}
            }
        };
        // What is in flight finishes (a part takes seconds); a second signal kills the process
        // and its leases expire instead. On a queue of its own, it is dropped (see `quit`).
        if !shared {
            quit.cancel();
        }
        while !set.is_empty() {
            set.next().await;
        }
        result
    }

    /// Wait until `bytes` more may be read and written under the transfer's own `--bwlimit`,
    /// if it has one: each of the workers holding its tasks takes an even share of the rate,
    /// counted again before each move (workers come and go).
    async fn pace_transfer(&self, task: &Task, ctx: &TransferCtx, bytes: u64) {
        let (Some(bw), Some(total)) = (&ctx.bandwidth, ctx.request.bwlimit) else {
            return;
        };
        let workers = match self.queue.transfer_workers(&task.transfer).await {
            Ok(n) => n.max(1),
            Err(e) => {
                tracing::debug!(
                    "could not count the workers of transfer {}: {e}",
                    task.transfer
                );
                1
            }
        };
        bw.set_rate(total / workers);
        bw.both(bytes).await;
    }

    /// How many more parts this worker may start reading ([`pace::fair_share`]); unlimited
    /// when the queue cannot say.
    async fn fair_share(&self, reading: usize) -> usize {
        match self
            .queue
            .part_demand(&self.opts.queue, &self.opts.id)
            .await
        {
            Ok(Some(d)) => pace::fair_share(d.ready, d.other_workers, reading),
            Ok(None) => usize::MAX,
            Err(e) => {
                tracing::debug!("could not count the parts left: {e}");
                usize::MAX
            }
        }
    }

    /// Renew the leases of the tasks this worker is running and put back expired ones of any
    /// worker, a few times per lease period.
    async fn housekeeping(&self, done: CancellationToken, lease_ms: u64) {
        let every = Duration::from_millis((lease_ms / 3).max(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.cancelled() => return,
            }
            let running: Vec<Task> = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            if !running.is_empty()
                && let Err(e) = self.queue.renew(&self.opts.id, &running, lease_ms).await
            {
                tracing::warn!("cannot renew leases: {e}");
            }
            match self.queue.reclaim_expired().await {
                Ok(0) => {}
                Ok(n) => {
                    self.metrics.leases_reclaimed.inc_by(n);
                    tracing::info!("reclaimed {n} expired lease(s) of workers that stopped");
                }
                Err(e) => tracing::warn!("cannot reclaim expired leases: {e}"),
            }
        }
    }

    /// A journal call, retried while the journal's server cannot be reached (restarting, a
    /// network blip) or the statement lost a conflict with another worker's, up to
    /// `journal_wait`.
    async fn db<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut wait = Duration::from_millis(200);
        let mut warned = false;
        loop {
            match f().await {
                Err(EngineError::JournalUnavailable(msg))
                    if start.elapsed() < self.opts.journal_wait =>
                {
                    if !warned {
                        tracing::warn!("{msg}; waiting for the journal to come back");
                        warned = true;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                r => {
                    if warned && r.is_ok() {
                        tracing::warn!("the journal is back; carrying on");
                    }
                    return r;
                }
            }
        }
    }

    async fn transfer(&self, id: &str) -> Result<Arc<TransferCtx>> {
        let mut cache = self.transfers.lock().await;
        if let Some(t) = cache.get(id) {
            return Ok(t.clone());
        }
        let (record, queue) = self
            .db(|| self.queue.transfer_request(id))
            .await?
            .ok_or_else(|| EngineError::Journal(format!("transfer {id} is not in the journal")))?;
        let request: TransferRequest = serde_json::from_str(&record.spec)
            .map_err(|e| EngineError::Journal(format!("transfer {id}: unreadable request: {e}")))?;
        let defaults = PlanOptions::default();
        let steps = Steps {
            conns: self.conns.clone(),
            plan: PlanOptions {
                part_size: request.part_size.unwrap_or(defaults.part_size),
                copy_part_size: request.copy_part_size.unwrap_or(defaults.copy_part_size),
                max_memory: self.opts.max_memory,
            },
            retry: self.opts.retry.clone(),
            delete_source: request.delete_source,
            limits: self.limits.clone(),
            listing: HashMap::new(),
        };
        let bandwidth = request.bwlimit.map(Duplex::new);
        let ctx = Arc::new(TransferCtx {
            request,
            steps,
            queue,
            bandwidth,
        });
        cache.insert(id.to_string(), ctx.clone());
        Ok(ctx)
    }

    /// Do one task. Store errors fail the file (as in a one-machine run); a journal that stays
    /// unreachable leaves the task to expire and be claimed again, or, on a queue of this
    /// process's own, stops the run.
    pub async fn execute(&self, task: Task) {
        let read = PartRead::new(&self.parts_reading, false);
        self.execute_claimed(task, &read).await
    }

    /// Run `task`; a part's `read` ends when its bytes are in hand.
    async fn execute_claimed(&self, task: Task, read: &PartRead) {
        let _running = Running::new(&self.running, &task);
        let result = match task.kind {
            TaskKind::Plan => self.plan_task(&task).await,
            TaskKind::Part => self.part_task(&task, read).await,
            TaskKind::Finalize => self.finalize_task(&task).await,
        };
        if let Err(e) = result {
            tracing::error!(
                "{} {} of file {} of transfer {}: {e}",
                task.kind.as_str(),
                task.number,
                task.file,
                task.transfer
            );
            if !self.queue.shared() {
                self.first_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
                self.halt.cancel();
            }
        }
    }

    async fn file(&self, task: &Task) -> Result<FileRecord> {
        self.db(|| self.queue.file(&task.transfer, task.file))
            .await?
            .ok_or_else(|| {
                EngineError::Journal(format!(
                    "file {} of transfer {} is not in the journal",
                    task.file, task.transfer
                ))
            })
    }

    /// A row of the shared journal, checked before this worker acts on it: it may name only
    /// connections of this worker's own config, local files only when this worker was started
    /// with `--allow-local`, and (once planned) part sizes, counts and numbers that agree and
    /// are in range. Why it cannot be worked on, if it cannot.
    fn check_row(&self, rec: &FileRecord, task: &Task) -> std::result::Result<(), RowProblem> {
        // A queue of this process's own holds only the rows it made from its own command.
        if self.queue.shared() {
            self.check_locations(rec).map_err(RowProblem::Locations)?;
        }
        self.check_plan(rec, task).map_err(RowProblem::Plan)
    }

    /// The connections and paths a row names (see `check_row`).
    fn check_locations(&self, rec: &FileRecord) -> std::result::Result<(), String> {
        let plan = &rec.plan;
        for (side, loc) in [("source", &plan.src), ("destination", &plan.dst)] {
            if let ConnRef::Named(n) = &loc.conn
                && !self.conns.is_configured(n)
            {
                return Err(format!(
                    "the journal names the connection '{n}' for the {side} {loc}, which this worker's config does not have; not worked on"
                ));
            }
            if self.conns.is_local(&loc.conn) {
                if !self.opts.allow_local {
                    return Err(format!(
                        "the journal names a local {side} ({loc}): this worker reads and writes no local files (start it with --allow-local to allow them); not worked on"
                    ));
                }
                if side == "destination"
                    && let Some(why) =
                        crate::identity::local_key_problem(loc.path.key.trim_start_matches('/'))
                {
                    return Err(format!(
                        "{loc} cannot be written: {why}; nothing was written"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The part size, count and number of a planned row (see `check_row`).
    fn check_plan(&self, rec: &FileRecord, task: &Task) -> std::result::Result<(), String> {
        let plan = &rec.plan;
        if task.kind != TaskKind::Plan {
            let bad = |why: &str| {
                Err(format!(
                    "the journal's plan of {} is not one barge makes ({why}: {} bytes, parts of {}, {} parts); not worked on",
                    plan.dst, plan.size, plan.part_size, plan.part_count
                ))
            };
            if !plan.strategy.is_multipart() {
                return bad("not a multipart strategy");
            }
            if plan.part_size == 0
                || plan.part_count == 0
                || plan.part_count > MAX_PLANNED_PARTS
                || plan.size.div_ceil(plan.part_size) != u64::from(plan.part_count)
            {
                return bad("size, part size and part count disagree");
            }
            if task.kind == TaskKind::Part && !(1..=plan.part_count).contains(&task.number) {
                return bad(&format!("part {} is outside it", task.number));
            }
        }
        Ok(())
    }

    /// A row `check_row` refused: its file fails with the reason (one already settled is only
    /// left alone). Nothing a row with bad locations names is touched; a row whose plan alone is
    /// wrong names this worker's own stores, and its open upload is aborted.
    async fn refuse_row(&self, task: &Task, rec: &FileRecord, problem: RowProblem) -> Result<()> {
        let (msg, upload) = match problem {
            RowProblem::Locations(msg) => (msg, None),
            RowProblem::Plan(msg) => (
                msg,
                rec.upload_id.as_ref().map(|id| UploadRef {
                    path: rec.plan.dst.path.clone(),
                    upload_id: id.clone(),
                }),
            ),
        };
        if matches!(rec.state, FileState::Completed | FileState::Failed) {
            tracing::error!("{msg}");
            self.db(|| self.queue.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        }
        self.fail(task, rec, upload.as_ref(), &msg).await
    }

    async fn plan_task(&self, task: &Task) -> Result<()> {
        let ctx = self.transfer(&task.transfer).await?;
        let rec = self.file(task).await?;
        if let Err(problem) = self.check_row(&rec, task) {
            return self.refuse_row(task, &rec, problem).await;
        }
        if matches!(rec.state, FileState::Completed | FileState::Failed) {
            self.db(|| self.queue.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        }
        if task.claims > MAX_CLAIMS {
            return self.fail(task, &rec, None, &too_many_claims(task)).await;
        }
        self.clock(task);
        if let (FileState::Uploading, Some(upload_id)) = (rec.state, &rec.upload_id) {
            return self.continue_task(task, &ctx, &rec, upload_id).await;
        }
        let spec = TransferSpec {
            src: rec.plan.src.clone(),
            dst: rec.plan.dst.clone(),
        };
        let plan = match self.unless_quit(ctx.steps.plan_one(task.file, &spec)).await {
            Ok(p) => p,
            Err(EngineError::Cancelled) => return Ok(()),
            Err(e) => return self.fail(task, &rec, None, &e.to_string()).await,
        };
        self.db(|| self.queue.save_plan(&task.transfer, &plan))
            .await?;
        self.observer.planned(std::slice::from_ref(&plan));
        self.observer.file_started(&plan);
        let (src, dst) = match ctx.steps.stores(&plan).await {
            Ok(s) => s,
            Err(e) => return self.fail(task, &rec, None, &e.to_string()).await,
        };
        if !plan.strategy.is_multipart() {
            if !plan.strategy.is_server_side() {
                self.pace_transfer(task, &ctx, plan.size).await;
            }
            let moved = self.unless_quit(ctx.steps.move_whole_verified(&plan, &src, &dst));
            return match moved.await {
                Ok(v) => {
                    if !plan.strategy.is_server_side() {
                        self.moved(task, plan.size);
                    }
                    self.observer.progress(plan.id, plan.size);
                    self.completed(task, &ctx, &plan, &src, &dst, v).await
                }
                Err(EngineError::Cancelled) => Ok(()),
                Err(e) => self.fail_planned(task, &plan, None, &e.to_string()).await,
            };
        }
        let upload = match self.unless_quit(ctx.steps.start_upload(&plan, &dst)).await {
            Ok(u) => u,
            Err(EngineError::Cancelled) => return Ok(()),
            Err(e) => return self.fail_planned(task, &plan, None, &e.to_string()).await,
        };
        let all: Vec<u32> = (1..=plan.part_count).collect();
        let started = self
            .db(|| {
                self.queue
                    .start_parts(task, &self.opts.id, &upload.upload_id, &all, &ctx.queue)
            })
            .await;
        match started {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Another worker took this file over: the upload started here is not recorded.
                ctx.steps.abort(dst.as_ref(), &upload).await;
                Ok(())
            }
            Err(e) => {
                ctx.steps.abort(dst.as_ref(), &upload).await;
                Err(e)
            }
        }
    }

    /// A file whose upload an earlier run started: check the source is still the version
    /// planned, keep the parts the store confirms, and queue the rest (or its finalize).
    async fn continue_task(
        &self,
        task: &Task,
        ctx: &TransferCtx,
        rec: &FileRecord,
        upload_id: &str,
    ) -> Result<()> {
        let plan = &rec.plan;
        self.observer.planned(std::slice::from_ref(plan));
        self.observer.file_started(plan);
        let (src, dst) = match ctx.steps.stores(plan).await {
            Ok(s) => s,
            Err(e) => return self.fail(task, rec, None, &e.to_string()).await,
        };
        let upload = UploadRef {
            path: plan.dst.path.clone(),
            upload_id: upload_id.to_string(),
        };
        let recorded = self
            .db(|| self.queue.receipts(&task.transfer, task.file, upload_id))
            .await?;
        let kept = match self
            .unless_quit(
                ctx.steps
                    .continue_upload(plan, &src, &dst, &upload, recorded),
            )
            .await
        {
            Err(EngineError::Cancelled) => return Ok(()),
            Ok(Some(kept)) => kept,
            Ok(None) => {
                // The upload is gone: plan the file afresh (its source may have changed too).
                self.db(|| self.queue.save_plan(&task.transfer, &rec.plan))
                    .await?;
                return Box::pin(self.plan_task(task)).await;
            }
            Err(e) => return self.fail(task, rec, None, &e.to_string()).await,
        };
        let reused: u64 = plan
            .parts()
            .iter()
            .filter(|p| kept.contains(&p.number))
            .map(|p| p.len)
            .sum();
        if !kept.is_empty() {
            self.parts_reused
                .fetch_add(kept.len() as u64, Ordering::Relaxed);
            self.observer.progress(plan.id, reused);
        }
        let missing: Vec<u32> = (1..=plan.part_count)
            .filter(|n| !kept.contains(n))
            .collect();
        self.db(|| {
            self.queue
                .start_parts(task, &self.opts.id, upload_id, &missing, &ctx.queue)
        })
        .await?;
        Ok(())
    }

    async fn part_task(&self, task: &Task, read: &PartRead) -> Result<()> {
        let ctx = self.transfer(&task.transfer).await?;
        let rec = self.file(task).await?;
        if let Err(problem) = self.check_row(&rec, task) {
            return self.refuse_row(task, &rec, problem).await;
        }
        let (Some(upload_id), FileState::Uploading) = (&rec.upload_id, rec.state) else {
            // The file failed, was aborted or was re-planned meanwhile: nothing to do.
            self.db(|| self.queue.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        };
        let plan = &rec.plan;
        let upload = UploadRef {
            path: plan.dst.path.clone(),
            upload_id: upload_id.clone(),
        };
        if task.claims > MAX_CLAIMS {
            return self
                .fail(task, &rec, Some(&upload), &too_many_claims(task))
                .await;
        }
        let Some(part) = (task.number as usize)
            .checked_sub(1)
            .and_then(|i| plan.parts().get(i).copied())
        else {
            return Err(EngineError::Journal(format!(
                "part {} of file {} of transfer {} is outside its plan",
                task.number, task.file, task.transfer
            )));
        };
        let (src, dst) = ctx.steps.stores(plan).await?;
        if !plan.strategy.is_server_side() {
            self.pace_transfer(task, &ctx, part.len).await;
        }
        match move_part(&self.limits, &src, &dst, plan, &upload, part, || read.end()).await {
            Ok(receipt) => {
                if !plan.strategy.is_server_side() {
                    self.moved(task, part.len);
                }
                self.metrics.parts_done.inc();
                if self.queue.shared() {
                    let held = self.parts_running.load(Ordering::SeqCst);
                    let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
                    let before = pace.target();
                    pace.part_done(part.len, held.saturating_sub(1), Instant::now());
                    if pace.target() != before {
                        tracing::debug!("parts held at once: {before} -> {}", pace.target());
                    }
                }
                self.db(|| {
                    self.queue.part_recorded(
                        task,
                        &self.opts.id,
                        &upload.upload_id,
                        &receipt,
                        &ctx.queue,
                    )
                })
                .await?;
                self.observer.progress(plan.id, part.len);
                Ok(())
            }
            Err(e) => {
                self.metrics.parts_failed.inc();
                // A late worker finding the upload completed (or aborted) by others is not a
                // failure of the file.
                let now = self.file(task).await?;
                if now.state != FileState::Uploading || now.upload_id != rec.upload_id {
                    self.db(|| self.queue.task_done(task, &self.opts.id))
                        .await?;
                    return Ok(());
                }
                self.fail(task, &rec, Some(&upload), &e.to_string()).await
            }
        }
    }

    async fn finalize_task(&self, task: &Task) -> Result<()> {
        let ctx = self.transfer(&task.transfer).await?;
        let rec = self.file(task).await?;
        if let Err(problem) = self.check_row(&rec, task) {
            return self.refuse_row(task, &rec, problem).await;
        }
        let plan = &rec.plan;
        let (src, dst) = ctx.steps.stores(plan).await?;
        if rec.state == FileState::Completed {
            // An earlier finalizer recorded the completion and stopped before the rest: how it
            // verified is not recorded, so a source to delete is proven again.
            return self
                .completed(task, &ctx, plan, &src, &dst, Verification::NotVerified)
                .await;
        }
        let (Some(upload_id), FileState::Uploading) = (&rec.upload_id, rec.state) else {
            self.db(|| self.queue.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        };
        let upload = UploadRef {
            path: plan.dst.path.clone(),
            upload_id: upload_id.clone(),
        };
        let recorded = self
            .db(|| self.queue.receipts(&task.transfer, task.file, upload_id))
            .await?;
        match ctx
            .steps
            .finish_upload(plan, &src, &dst, &upload, &recorded)
            .await
        {
            Ok(Finished::Verified(v)) => self.completed(task, &ctx, plan, &src, &dst, v).await,
            Ok(Finished::Redo(parts)) => self.db(|| self.queue.redo_parts(task, &parts)).await,
            // The upload, if it is still open, is aborted (one already completed or gone
            // answers that it is gone, which is fine).
            Err(e) => self.fail(task, &rec, Some(&upload), &e.to_string()).await,
        }
    }

    /// A verified file: recorded as completed before its source may go, and the source deleted
    /// only once the copy is proven by a checksum (`prove_for_delete`).
    async fn completed(
        &self,
        task: &Task,
        ctx: &TransferCtx,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        verified: Verification,
    ) -> Result<()> {
        // Recorded as done before the source goes: a crash between the two must not leave a
        // journal that sends a resume looking for a source that is already deleted. Without a
        // source to delete, the record may be written with others a moment later (a lost one
        // only means the file is copied again on resume).
        let delete = ctx.request.delete_source;
        self.db(|| self.queue.file_completed(&task.transfer, task.file, delete))
            .await?;
        let mut out = self.outcome(task, plan, Status::Ok, None);
        out.verified = verified;
        if delete {
            match ctx
                .steps
                .prove_and_delete_source(plan, src, dst, verified)
                .await
            {
                Ok(v) => {
                    out.verified = v;
                    out.source_deleted = true;
                }
                Err(e) => {
                    let msg = e.to_string();
                    tracing::error!("{}: {msg}", plan.src);
                    self.db(|| {
                        self.queue.file_state(
                            &task.transfer,
                            task.file,
                            FileState::Failed,
                            Some(&msg),
                        )
                    })
                    .await?;
                    out.status = Status::Failed;
                    out.verified = Verification::NotVerified;
                    out.error = Some(msg);
                }
            }
        }
        self.db(|| self.queue.task_done(task, &self.opts.id))
            .await?;
        self.metrics.files_completed.inc();
        self.db(|| self.queue.settle(&task.transfer)).await?;
        self.observer.file_finished(&out);
        Ok(())
    }

    /// A planned file failed before anything was recorded of its upload.
    async fn fail_planned(
        &self,
        task: &Task,
        plan: &FilePlan,
        upload: Option<&UploadRef>,
        msg: &str,
    ) -> Result<()> {
        let rec = FileRecord {
            plan: plan.clone(),
            upload_id: None,
            state: FileState::Planned,
            error: None,
        };
        self.fail(task, &rec, upload, msg).await
    }

    /// A failed file: its upload aborted, its work stopped, its destination freed.
    async fn fail(
        &self,
        task: &Task,
        rec: &FileRecord,
        upload: Option<&UploadRef>,
        msg: &str,
    ) -> Result<()> {
        tracing::error!("{} -> {}: {msg}", rec.plan.src, rec.plan.dst);
        if let Some(up) = upload
            && let Ok(dst) = self.conns.get(&rec.plan.dst.conn).await
        {
            let ctx = self.transfer(&task.transfer).await?;
            ctx.steps.abort(dst.as_ref(), up).await;
        }
        self.db(|| {
            self.queue
                .file_state(&task.transfer, task.file, FileState::Failed, Some(msg))
        })
        .await?;
        self.db(|| self.queue.task_done(task, &self.opts.id))
            .await?;
        self.metrics.files_failed.inc();
        self.db(|| self.queue.settle(&task.transfer)).await?;
        let mut out = self.outcome(task, &rec.plan, Status::Failed, Some(msg.to_string()));
        if rec.state == FileState::Pending {
            out = crate::run::unplanned(&rec.plan, Status::Failed, Some(msg.to_string()));
        }
        self.observer.file_finished(&out);
        Ok(())
    }

    /// A step that records nothing, given up when a run of this process's own stops.
    async fn unless_quit<T>(&self, step: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            r = step => r,
            _ = self.quit.cancelled() => Err(EngineError::Cancelled),
        }
    }

    /// A file's work started here now (kept until its outcome).
    fn clock(&self, task: &Task) {
        self.clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((task.transfer.clone(), task.file))
            .or_insert(FileClock {
                started: Instant::now(),
                bytes: 0,
            });
    }

    /// Bytes of a file that passed through this process.
    fn moved(&self, task: &Task, bytes: u64) {
        self.metrics.bytes_moved.inc_by(bytes);
        if let Some(c) = self
            .clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&(task.transfer.clone(), task.file))
        {
            c.bytes += bytes;
        }
    }

    /// A finished file's outcome, with its time and bytes as this process saw them.
    fn outcome(
        &self,
        task: &Task,
        plan: &FilePlan,
        status: Status,
        error: Option<String>,
    ) -> FileOutcome {
        let clock = self
            .clocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(task.transfer.clone(), task.file));
        let mut o = crate::run::outcome(plan, status, None, error, 0.0);
        if let Some(c) = clock {
            o.seconds = c.started.elapsed().as_secs_f64();
            o.bytes_through_client = c.bytes.min(plan.size);
        }
        o
    }
}

/// The tasks a worker runs. On a shared queue each is spawned (a panic ends that task alone,
/// and tasks spread over the runtime's threads). On a queue of its own they are polled by the
/// claim loop itself, as one run's files and parts always were: 5,000 small files spawned as
/// tasks cost a fifth more CPU and a tenth more time in the same-run bench (wake-ups handed
/// between threads), and a panic stops the run, which is what a one-process run should do.
enum Tasks {
    Spawned(JoinSet<()>),
    Inline(FuturesUnordered<BoxFuture<'static, ()>>),
}

impl Tasks {
    fn push(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        match self {
            Tasks::Spawned(set) => {
                set.spawn(task);
            }
            Tasks::Inline(set) => set.push(task.boxed()),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Tasks::Spawned(set) => set.is_empty(),
            Tasks::Inline(set) => set.is_empty(),
        }
    }

    /// Wait for one task to end (and run the others meanwhile, when they are inline).
    async fn next(&mut self) {
        match self {
            Tasks::Spawned(set) => {
                if let Some(Err(e)) = set.join_next().await
                    && e.is_panic()
                {
                    tracing::error!("a task panicked: {e}");
                }
            }
            Tasks::Inline(set) => {
                set.next().await;
            }
        }
    }

    /// Collect the tasks that have ended, without waiting.
    fn reap(&mut self) {
        match self {
            Tasks::Spawned(set) => {
                while let Some(r) = set.try_join_next() {
                    if let Err(e) = r
                        && e.is_panic()
                    {
                        tracing::error!("a task panicked: {e}");
                    }
                }
            }
            Tasks::Inline(set) => while let Some(Some(())) = set.next().now_or_never() {},
        }
    }
}

/// The parts of a worker reading their bytes, and a wake-up for its claim loop when one has.
#[derive(Default)]
struct ReadPhase {
    count: AtomicUsize,
    read: tokio::sync::Notify,
}

/// A claimed part's place among the parts reading, given back once its bytes are in hand (a
/// buffered move: it only writes them from then on) or however the task ends. A part streamed
/// or copied server-side reads until it is done.
struct PartRead {
    phase: Arc<ReadPhase>,
    open: std::sync::atomic::AtomicBool,
}

impl PartRead {
    fn new(phase: &Arc<ReadPhase>, part: bool) -> Self {
        if part {
            phase.count.fetch_add(1, Ordering::SeqCst);
        }
        Self {
            phase: phase.clone(),
            open: std::sync::atomic::AtomicBool::new(part),
        }
    }

    fn end(&self) {
        if self.open.swap(false, Ordering::SeqCst) {
            self.phase.count.fetch_sub(1, Ordering::SeqCst);
            self.phase.read.notify_one();
        }
    }
}

impl Drop for PartRead {
    fn drop(&mut self) {
        self.end();
    }
}

/// A task's place in the worker's counts, given back however the task ends.
struct Counted<'a> {
    me: &'a Worker,
    files: &'a AtomicUsize,
    part: bool,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.me.metrics.parts_in_flight.dec();
        if self.part {
            self.me.parts_running.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.files.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A submitted transfer's outcome, file by file, as the journal has it.
pub async fn summary(
    journal: &SqlJournal,
    transfer: &str,
    elapsed: Duration,
    retries: u64,
) -> Result<Summary> {
    let files = journal.files(transfer).await?;
    let request = journal
        .transfer(transfer)
        .await?
        .and_then(|t| serde_json::from_str::<TransferRequest>(&t.spec).ok());
    let delete = request.is_some_and(|r| r.delete_source);
    let outcomes = files
        .iter()
        .map(|f| {
            let (status, verified) = match f.state {
                FileState::Completed => (Status::Ok, Verification::ByWorker),
                FileState::Failed => (Status::Failed, Verification::NotVerified),
                _ => (Status::Cancelled, Verification::NotVerified),
            };
            let planned = f.state != FileState::Pending;
            FileOutcome {
                id: f.plan.id,
                src: f.plan.src.to_string(),
                dst: f.plan.dst.to_string(),
                size: planned.then_some(f.plan.size),
                strategy: planned.then_some(f.plan.strategy),
                part_size: planned.then_some(f.plan.part_size),
                parts: planned.then_some(f.plan.part_count),
                status,
                verified,
                bytes_through_client: 0,
                source_deleted: delete && status == Status::Ok,
                seconds: 0.0,
                error: f.error.clone(),
            }
        })
        .collect();
    let mut s = Summary::new(outcomes, elapsed, retries);
    s.transfer_id = Some(transfer.to_string());
    Ok(s)
}

fn too_many_claims(task: &Task) -> String {
    format!(
        "{} {} was claimed {} times and never finished: a worker may be crashing on it (see the \
         workers' logs); `barge resume` tries the file again",
        task.kind.as_str(),
        task.number,
        task.claims
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part counts as reading from its claim until its bytes are in hand or its task ends,
    /// once, and the claim loop is woken when it stops; file-level tasks never count.
    #[tokio::test]
    async fn a_part_reads_from_its_claim_until_its_bytes_are_in_hand() {
        let phase = Arc::new(ReadPhase::default());
        let count = || phase.count.load(Ordering::SeqCst);
        let a = PartRead::new(&phase, true);
        let b = PartRead::new(&phase, true);
        let plan = PartRead::new(&phase, false);
        assert_eq!(count(), 2);
        a.end();
        assert_eq!(count(), 1);
        // The wake-up was kept for the loop that waits next.
        tokio::time::timeout(Duration::from_secs(1), phase.read.notified())
            .await
            .expect("woken");
        a.end();
        drop(a);
        drop(plan);
        assert_eq!(count(), 1);
        // A task that ends (or is dropped) before its bytes arrive gives its place back.
        drop(b);
        assert_eq!(count(), 0);
    }
}
