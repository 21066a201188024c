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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use barge_store::{ChecksumMode, Store, StoreError, UploadRef};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::finalize::{Expected, complete_and_verify, reconcile_parts, settle_vanished_upload};
use crate::input::TransferSpec;
use crate::journal::queue::{Task, TaskKind};
use crate::journal::{FileRecord, FileState, Journal, SqlJournal, TransferRecord, TransferState};
use crate::location::ConnRef;
use crate::plan::{FilePlan, PlanOptions};
use crate::report::{FileOutcome, Status, Summary, Verification};
use crate::retry::{RetryPolicy, retry};
use crate::run::{Engine, RunOptions, TransferRequest, fingerprint};
use crate::worker::{Limits, move_part};

pub use metrics::Metrics;

/// A task claimed more often than this without finishing fails its file: some worker keeps
/// dying on it, and its log says why.
const MAX_CLAIMS: u32 = 10;

/// Completions tried by one finalize when the store answers InvalidPart (a part uploaded again
/// since it was listed).
const COMPLETION_TRIES: u32 = 3;

/// A completion the store refused because a listed part is no longer the part it holds.
fn is_invalid_part(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::Permanent { detail, .. }) if detail.contains("InvalidPart"))
}

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

/// One transfer as a worker needs it: the request, and an engine planned with its options.
struct TransferCtx {
    request: TransferRequest,
    engine: Engine,
    queue: String,
}

pub struct Worker {
    conns: Arc<Connections>,
    journal: Arc<SqlJournal>,
    opts: WorkerOptions,
    limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    transfers: tokio::sync::Mutex<HashMap<String, Arc<TransferCtx>>>,
    /// The tasks being run now: the leases housekeeping renews.
    running: std::sync::Mutex<HashSet<Task>>,
    /// Part tasks under way, and how many this worker holds at most now (`pace`): no more
    /// than raise its throughput, so others find parts to claim.
    parts_running: AtomicUsize,
    pace: std::sync::Mutex<pace::Pace>,
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
    pub fn new(conns: Arc<Connections>, journal: Arc<SqlJournal>, opts: WorkerOptions) -> Self {
        let limits = Arc::new(Limits::new(
            opts.concurrency,
            opts.files,
            opts.max_memory,
            opts.retry.clone(),
        ));
        Self {
            pace: std::sync::Mutex::new(pace::Pace::new(opts.concurrency)),
            conns,
            journal,
            opts,
            limits,
            metrics: Arc::new(Metrics::default()),
            transfers: Default::default(),
            running: Default::default(),
            parts_running: AtomicUsize::new(0),
        }
    }

    pub fn id(&self) -> &str {
        &self.opts.id
    }

    /// Requests retried so far (for the metrics).
    pub fn retries(&self) -> u64 {
        self.limits.stats.retries.load(Ordering::Relaxed)
    }

    /// Claim and do work until `until`; then finish what is in flight and give back any lease
    /// still held. An `Err` means the journal stayed unreachable longer than `journal_wait`.
    pub async fn run(self: &Arc<Self>, stop: CancellationToken, until: Until) -> Result<()> {
        let lease_ms = self.opts.lease.as_millis().max(1) as u64;
        let housekeeping = CancellationToken::new();
        let hk = {
            let me = self.clone();
            let done = housekeeping.clone();
            tokio::spawn(async move { me.housekeeping(done, lease_ms).await })
        };
        let result = self.claim_loop(&stop, &until, lease_ms).await;
        housekeeping.cancel();
        let _ = hk.await;
        if let Err(e) = self.journal.release(&self.opts.id).await {
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
        let mut set: JoinSet<()> = JoinSet::new();
        // File-level tasks under way (part tasks: `self.parts_running`), each against its own
        // limit.
        let files_running = Arc::new(AtomicUsize::new(0));
        let poll_min = Duration::from_millis(50);
        let poll_max = Duration::from_millis(1000);
        let mut idle_wait = poll_min;
        let result = loop {
            while let Some(r) = set.try_join_next() {
                if let Err(e) = r {
                    tracing::error!("a task panicked: {e}");
                }
            }
            if stop.is_cancelled() {
                break Ok(());
            }
            let held = self.parts_running.load(Ordering::SeqCst);
            let free_parts = {
                let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
                if held == 0 {
                    // Time without parts is not a rate: the next window starts now.
                    pace.idle(Instant::now());
                }
                pace.target().saturating_sub(held)
            };
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
                        self.journal.claim_split(
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
                    if part {
                        self.parts_running.fetch_add(1, Ordering::SeqCst);
                    } else {
                        files.fetch_add(1, Ordering::SeqCst);
                    }
                    self.metrics.parts_in_flight.inc();
                    set.spawn(async move {
                        me.execute(t).await;
                        me.metrics.parts_in_flight.dec();
                        if part {
                            me.parts_running.fetch_sub(1, Ordering::SeqCst);
                        } else {
                            files.fetch_sub(1, Ordering::SeqCst);
                        }
                    });
                }
            }
            if got > 0 && got < free {
                idle_wait = poll_min;
                continue;
            }
            if got == 0 && set.is_empty() {
                let finished = match until {
                    Until::Stopped => false,
                    Until::Idle => {
                        self.db(|| self.journal.unfinished_work(&self.opts.queue))
                            .await?
                            == 0
                    }
                    Until::Settled(tid) => !matches!(
                        self.db(|| self.journal.transfer_state(tid)).await?,
                        Some(TransferState::Running)
                    ),
                };
                if finished {
                    break Ok(());
                }
            }
            let wait = if got == 0 {
                let w = idle_wait;
                idle_wait = (idle_wait * 2).min(poll_max);
                w
            } else {
                idle_wait = poll_min;
                poll_max
            };
            tokio::select! {
                _ = set.join_next(), if !set.is_empty() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        };
        // What is in flight finishes (a part takes seconds); a second signal kills the process
        // and its leases expire instead.
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                tracing::error!("a task panicked: {e}");
            }
        }
        result
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
                && let Err(e) = self.journal.renew(&self.opts.id, &running, lease_ms).await
            {
                tracing::warn!("cannot renew leases: {e}");
            }
            match self.journal.reclaim_expired().await {
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
        let record = self
            .db(|| self.journal.transfer(id))
            .await?
            .ok_or_else(|| EngineError::Journal(format!("transfer {id} is not in the journal")))?;
        let queue = self
            .db(|| self.journal.submitted_queue(id))
            .await?
            .unwrap_or_default();
        let request: TransferRequest = serde_json::from_str(&record.spec)
            .map_err(|e| EngineError::Journal(format!("transfer {id}: unreadable request: {e}")))?;
        let defaults = PlanOptions::default();
        let opts = RunOptions {
            plan: PlanOptions {
                part_size: request.part_size.unwrap_or(defaults.part_size),
                copy_part_size: request.copy_part_size.unwrap_or(defaults.copy_part_size),
                max_memory: self.opts.max_memory,
            },
            concurrency: self.opts.concurrency,
            files: self.opts.files,
            delete_source: request.delete_source,
            retry: self.opts.retry.clone(),
            ..RunOptions::default()
        };
        let engine = Engine::new(self.conns.clone(), opts)
            .with_limits(self.limits.clone())
            .with_journal(self.journal.clone() as Arc<dyn Journal>);
        let ctx = Arc::new(TransferCtx {
            request,
            engine,
            queue,
        });
        cache.insert(id.to_string(), ctx.clone());
        Ok(ctx)
    }

    /// Do one task. Store errors fail the file (as in a one-machine run); a journal that stays
    /// unreachable leaves the task to expire and be claimed again.
    pub async fn execute(&self, task: Task) {
        let _running = Running::new(&self.running, &task);
        let result = match task.kind {
            TaskKind::Plan => self.plan_task(&task).await,
            TaskKind::Part => self.part_task(&task).await,
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
        }
    }

    async fn file(&self, task: &Task) -> Result<FileRecord> {
        self.db(|| self.journal.file(&task.transfer, task.file))
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
        self.check_locations(rec).map_err(RowProblem::Locations)?;
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
            self.db(|| self.journal.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        }
        self.fail(task, rec, upload.as_ref(), &msg).await
    }

    async fn stores(&self, plan: &FilePlan) -> Result<(Arc<dyn Store>, Arc<dyn Store>)> {
        Ok((
            self.conns.get(&plan.src.conn).await?,
            self.conns.get(&plan.dst.conn).await?,
        ))
    }

    async fn plan_task(&self, task: &Task) -> Result<()> {
        let ctx = self.transfer(&task.transfer).await?;
        let rec = self.file(task).await?;
        if let Err(problem) = self.check_row(&rec, task) {
            return self.refuse_row(task, &rec, problem).await;
        }
        if matches!(rec.state, FileState::Completed | FileState::Failed) {
            self.db(|| self.journal.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        }
        if task.claims > MAX_CLAIMS {
            return self.fail(task, &rec, None, &too_many_claims(task)).await;
        }
        let spec = TransferSpec {
            src: rec.plan.src.clone(),
            dst: rec.plan.dst.clone(),
        };
        let plan = match ctx.engine.plan_one(task.file, &spec).await {
            Ok(p) => p,
            Err(e) => return self.fail(task, &rec, None, &e.to_string()).await,
        };
        self.db(|| {
            self.journal
                .save_plans(&task.transfer, std::slice::from_ref(&plan))
        })
        .await?;
        let (src, dst) = match self.stores(&plan).await {
            Ok(s) => s,
            Err(e) => return self.fail(task, &rec, None, &e.to_string()).await,
        };
        if !plan.strategy.is_multipart() {
            return match ctx.engine.move_whole_verified(&plan, &src, &dst).await {
                Ok(v) => {
                    if !plan.strategy.is_server_side() {
                        self.metrics.bytes_moved.inc_by(plan.size);
                    }
                    self.completed(task, &ctx, &plan, &src, &dst, v).await
                }
                Err(e) => self.fail(task, &rec, None, &e.to_string()).await,
            };
        }
        let what = format!("start of upload to {}", plan.dst);
        let upload = match retry(&self.opts.retry, &self.limits.stats, &what, || {
            dst.create_upload(&plan.dst.path, &plan.attrs, ChecksumMode::Crc32c)
        })
        .await
        {
            Ok(u) => u,
            Err(e) => return self.fail(task, &rec, None, &e.to_string()).await,
        };
        let started = self
            .db(|| {
                self.journal.start_parts(
                    task,
                    &self.opts.id,
                    &upload.upload_id,
                    plan.part_count,
                    &ctx.queue,
                )
            })
            .await;
        match started {
            Ok(true) => Ok(()),
            Ok(false) => {
                // Another worker took this file over: the upload started here is not recorded.
                ctx.engine.abort(dst.as_ref(), &upload).await;
                Ok(())
            }
            Err(e) => {
                ctx.engine.abort(dst.as_ref(), &upload).await;
                Err(e)
            }
        }
    }

    async fn part_task(&self, task: &Task) -> Result<()> {
        let ctx = self.transfer(&task.transfer).await?;
        let rec = self.file(task).await?;
        if let Err(problem) = self.check_row(&rec, task) {
            return self.refuse_row(task, &rec, problem).await;
        }
        let (Some(upload_id), FileState::Uploading) = (&rec.upload_id, rec.state) else {
            // The file failed, was aborted or was re-planned meanwhile: nothing to do.
            self.db(|| self.journal.task_done(task, &self.opts.id))
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
        let (src, dst) = self.stores(plan).await?;
        match move_part(&self.limits, &src, &dst, plan, &upload, part).await {
            Ok(receipt) => {
                if !plan.strategy.is_server_side() {
                    self.metrics.bytes_moved.inc_by(part.len);
                }
                self.metrics.parts_done.inc();
                {
                    let held = self.parts_running.load(Ordering::SeqCst);
                    let mut pace = self.pace.lock().unwrap_or_else(|e| e.into_inner());
                    let before = pace.target();
                    pace.part_done(part.len, held.saturating_sub(1), Instant::now());
                    if pace.target() != before {
                        tracing::debug!("parts held at once: {before} -> {}", pace.target());
                    }
                }
                self.db(|| {
                    self.journal.part_recorded(
                        task,
                        &self.opts.id,
                        &upload.upload_id,
                        &receipt,
                        &ctx.queue,
                    )
                })
                .await?;
                Ok(())
            }
            Err(e) => {
                self.metrics.parts_failed.inc();
                // A late worker finding the upload completed (or aborted) by others is not a
                // failure of the file.
                let now = self.file(task).await?;
                if now.state != FileState::Uploading || now.upload_id != rec.upload_id {
                    self.db(|| self.journal.task_done(task, &self.opts.id))
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
        let (src, dst) = self.stores(plan).await?;
        if rec.state == FileState::Completed {
            // An earlier finalizer recorded the completion and stopped before the rest: how it
            // verified is not recorded, so a source to delete is proven again.
            return self
                .completed(task, &ctx, plan, &src, &dst, Verification::NotVerified)
                .await;
        }
        let (Some(upload_id), FileState::Uploading) = (&rec.upload_id, rec.state) else {
            self.db(|| self.journal.task_done(task, &self.opts.id))
                .await?;
            return Ok(());
        };
        let upload = UploadRef {
            path: plan.dst.path.clone(),
            upload_id: upload_id.clone(),
        };
        let recorded = self
            .db(|| self.journal.receipts(&task.transfer, task.file, upload_id))
            .await?;
        let exp = Expected::from_parts(plan.size, &recorded);
        // A part moved twice (its lease expired while its slow owner was still uploading it)
        // can land between the list and the completion: the store then refuses the completion
        // (S3's InvalidPart: the ETag listed is not the part's latest). The parts are all there,
        // so list again and complete again, a few times, before failing the file.
        let mut left = COMPLETION_TRIES;
        loop {
            left -= 1;
            let what = format!("list of the parts of {}", plan.dst);
            let listed = match retry(&self.opts.retry, &self.limits.stats, &what, || {
                dst.list_parts(&upload)
            })
            .await
            {
                Ok(l) => l,
                Err(StoreError::NoSuchUpload { .. } | StoreError::NotFound { .. }) => {
                    // Completed by a finalizer that stopped before recording it, or aborted:
                    // the destination itself says which (the same rule as a one-machine run's).
                    return match settle_vanished_upload(
                        dst.as_ref(),
                        plan,
                        &exp,
                        &self.opts.retry,
                        &self.limits.stats,
                    )
                    .await
                    {
                        Ok(v) => self.completed(task, &ctx, plan, &src, &dst, v).await,
                        Err(e) => self.fail(task, &rec, None, &e.to_string()).await,
                    };
                }
                Err(e) => return self.fail(task, &rec, Some(&upload), &e.to_string()).await,
            };
            let (receipts, redo) = if dst.capabilities().lists_parts {
                reconcile_parts(plan.part_count, &recorded, &listed)
            } else {
                (recorded.clone(), Vec::new())
            };
            if !redo.is_empty() {
                tracing::warn!(
                    "{}: part(s) {redo:?} on the store differ from the journal's receipts; moving them again",
                    plan.dst
                );
                return self.db(|| self.journal.redo_parts(task, &redo)).await;
            }
            match complete_and_verify(
                dst.as_ref(),
                src.as_ref(),
                plan,
                &upload,
                &receipts,
                &self.opts.retry,
                &self.limits.stats,
            )
            .await
            {
                Ok(v) => return self.completed(task, &ctx, plan, &src, &dst, v).await,
                Err(e) if left > 0 && is_invalid_part(&e) => {
                    tracing::warn!(
                        "{}: the store refused the completion ({e}); a part changed since it was listed: listing again",
                        plan.dst
                    );
                    // The other upload of that part may still be under way: give it a moment.
                    tokio::time::sleep(Duration::from_millis(
                        500 * u64::from(COMPLETION_TRIES - left),
                    ))
                    .await;
                }
                // The upload, if it is still open, is aborted (one already completed or gone
                // answers that it is gone, which is fine).
                Err(e) => return self.fail(task, &rec, Some(&upload), &e.to_string()).await,
            }
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
        self.db(|| {
            self.journal
                .file_state(&task.transfer, task.file, FileState::Completed, None)
        })
        .await?;
        if ctx.request.delete_source
            && let Err(e) = ctx
                .engine
                .prove_and_delete_source(plan, src, dst, verified)
                .await
        {
            let msg = e.to_string();
            tracing::error!("{}: {msg}", plan.src);
            self.db(|| {
                self.journal
                    .file_state(&task.transfer, task.file, FileState::Failed, Some(&msg))
            })
            .await?;
        }
        self.db(|| self.journal.task_done(task, &self.opts.id))
            .await?;
        self.metrics.files_completed.inc();
        self.db(|| self.journal.settle(&task.transfer)).await?;
        Ok(())
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
            ctx.engine.abort(dst.as_ref(), up).await;
        }
        self.db(|| {
            self.journal
                .file_state(&task.transfer, task.file, FileState::Failed, Some(msg))
        })
        .await?;
        self.metrics.files_failed.inc();
        self.db(|| self.journal.settle(&task.transfer)).await?;
        Ok(())
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
