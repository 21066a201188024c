//! The engine: plan every file, move the parts, finalize, report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use barge_store::{ChecksumMode, PartReceipt, Pin, Store, StoreError, UploadRef};
use futures::{StreamExt, TryStreamExt, stream};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::finalize::{Expected, verify_written};
use crate::input::TransferSpec;
use crate::journal::batch::Completions;
use crate::journal::{
    FileRecord, FileState, Journal, MemoryJournal, TransferRecord, TransferState,
};
use crate::plan::{Ends, FilePlan, PlanOptions, Strategy, choose};
use crate::report::{FileOutcome, Observer, Silent, Status, Summary, Verification};
use crate::retry::{RetryPolicy, retry};
use crate::worker::{Limits, move_part, move_whole};

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
    /// Large (multipart) files under way: `concurrency` at most, as their parts share that many
    /// requests (more would only spread the same requests over more open uploads).
    large_files: tokio::sync::Semaphore,
    parts_reused: std::sync::atomic::AtomicU64,
    /// What a listing said of sources (size, ETag): small objects are planned without a stat.
    listing: HashMap<crate::location::Location, barge_store::ObjectMeta>,
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

/// One file's work: a fresh plan, or an earlier plan whose upload is to be continued.
enum Work {
    Fresh(FilePlan),
    Resume(FilePlan, String),
}

impl Work {
    fn plan(&self) -> &FilePlan {
        match self {
            Work::Fresh(p) | Work::Resume(p, _) => p,
        }
    }
}

/// A file's result before it is turned into an outcome.
struct Done {
    verified: Verification,
    source_deleted: bool,
}

/// Files moved at once by default (`RunOptions::files`): enough small objects in flight to keep
/// the machine busy over a 30 ms round trip (BENCHMARKS.md, "Small files over a link with a
/// round trip").
pub const DEFAULT_FILES: usize = 64;

/// How many files' plans are recorded at a time (see `Engine::run`).
const SAVE_CHUNK: usize = 256;

impl Engine {
    pub fn new(conns: Arc<Connections>, opts: RunOptions) -> Self {
        let limits = Arc::new(Limits::new(
            opts.concurrency,
            opts.files,
            opts.plan.max_memory,
            opts.retry.clone(),
        ));
        Self {
            large_files: tokio::sync::Semaphore::new(
                opts.concurrency
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ),
            conns,
            opts,
            observer: Arc::new(Silent),
            journal: Arc::new(MemoryJournal::default()),
            cancel: CancellationToken::new(),
            limits,
            parts_reused: 0.into(),
            listing: HashMap::new(),
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

    /// Share request and memory limits (and counters) with other engines in this process: a
    /// worker runs one engine per transfer under one budget.
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Self {
        self.limits = limits;
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

    /// Stat one source and plan its transfer.
    pub(crate) async fn plan_one(&self, id: usize, spec: &TransferSpec) -> Result<FilePlan> {
        let src = self.conns.get(&spec.src.conn).await?;
        let dst = self.conns.get(&spec.dst.conn).await?;
        let same_service = matches!(
            (src.service_identity(), dst.service_identity()),
            (Some(a), Some(b)) if a == b
        );
        let ends = Ends {
            src_caps: src.capabilities(),
            dst_caps: dst.capabilities(),
            same_service,
        };
        // A small object the listing described needs no stat: its one GET brings the metadata,
        // or its server-side copy keeps the source's.
        // Not when the source is to be deleted: a listing names no version, and the delete
        // must name the exact version copied.
        if let Some(listed) = self.listing.get(&spec.src)
            && !self.opts.delete_source
            && listed.etag.is_some()
            && !spec.src.is_local()
            && let Ok((
                strategy @ (Strategy::SinglePut | Strategy::ServerCopy),
                part_size,
                part_count,
            )) = choose(listed.size, &ends, &self.opts.plan)
        {
            return Ok(FilePlan {
                id,
                src: spec.src.clone(),
                dst: spec.dst.clone(),
                size: listed.size,
                pin: barge_store::Pin::of(listed),
                attrs: Default::default(),
                strategy,
                part_size,
                part_count,
                attrs_pending: true,
            });
        }
        let what = format!("stat of {}", spec.src);
        let meta = retry(&self.opts.retry, &self.limits.stats, &what, || {
            src.head(&spec.src.path)
        })
        .await?;
        let (strategy, part_size, part_count) = choose(meta.size, &ends, &self.opts.plan)
            .map_err(|e| EngineError::Input(format!("{}: {e}", spec.src)))?;
        let mut attrs = meta.attrs.clone();
        if spec.src.is_local() && attrs.content_type.is_none() {
            attrs.content_type = guess_content_type(&spec.src.path.key);
        }
        Ok(FilePlan {
            id,
            src: spec.src.clone(),
            dst: spec.dst.clone(),
            size: meta.size,
            pin: barge_store::Pin::of(&meta),
            attrs,
            strategy,
            part_size,
            part_count,
            attrs_pending: false,
        })
    }

    /// Plan and move every file, continuing an unfinished transfer of the same files if the
    /// journal has one. Errors of single files are in the summary; an `Err` means the run as a
    /// whole was refused before anything moved.
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
            let mut outcomes = Vec::new();
            let mut plans = Vec::new();
            let planned = stream::iter(specs.iter().enumerate())
                .map(|(i, s)| async move {
                    match refused_outcome(i) {
                        Some(o) => Err(o),
                        None => self
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
        let fp = fingerprint(&specs);
        let earlier = if self.opts.resume {
            self.journal.find_resumable(&fp).await?
        } else {
            None
        };
        let resumed = earlier.is_some();
        let tid = match earlier {
            Some(t) => {
                self.journal
                    .set_transfer_state(&t.id, TransferState::Running)
                    .await?;
                t.id
            }
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
                let request = TransferRequest {
                    transfers: specs.clone(),
                    delete_source: self.opts.delete_source,
                    part_size: None,
                    copy_part_size: None,
                };
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

        // Sort the files: done in an earlier run, to continue, or to plan now.
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
        let mut work = Vec::new();
        let mut to_plan = Vec::new();
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
                    FileState::Uploading if r.upload_id.is_some() => work.push(Work::Resume(
                        r.plan.clone(),
                        r.upload_id.clone().unwrap_or_default(),
                    )),
                    _ => to_plan.push(i),
                },
                _ => to_plan.push(i),
            }
        }
        let specs_ref = &specs;
        let planned = stream::iter(to_plan)
            .map(|i| async move { (i, self.plan_one(i, &specs_ref[i]).await) })
            .buffered(64)
            .collect::<Vec<_>>()
            .await;
        let mut fresh = Vec::new();
        for (i, p) in planned {
            match p {
                Ok(plan) => fresh.push(plan),
                Err(e) => {
                    let o = failed_unplanned(i, &specs[i], &e);
                    self.observer.file_finished(&o);
                    outcomes.push(o);
                }
            }
        }
        work.extend(fresh.into_iter().map(Work::Fresh));
        work.sort_by_key(|w| w.plan().id);
        let all_plans: Vec<FilePlan> = work.iter().map(|w| w.plan().clone()).collect();
        self.observer.planned(&all_plans);

        // Plans are recorded a chunk at a time, each chunk just before its files start, so the
        // first files move while later plans are still being written (5,000 small files spent
        // a tenth of a second here before the first byte moved). No file starts before its
        // plan is recorded. The first chunk is recorded before anything moves: a journal that
        // cannot be written stops the run before it starts; one that fails later stops it
        // starting files, and the run ends with that error.
        let mut chunks = work.chunks(SAVE_CHUNK);
        let first = chunks.next().unwrap_or(&[]);
        self.save_fresh(&tid, first).await?;
        let files_in_flight = self.opts.files.max(self.opts.concurrency).max(1);
        let tid_ref = tid.as_str();
        let unsaved: std::sync::Mutex<Option<EngineError>> = std::sync::Mutex::new(None);
        let unsaved_ref = &unsaved;
        let later = stream::iter(chunks)
            .then(|chunk| async move {
                if let Err(e) = self.save_fresh(tid_ref, chunk).await {
                    tracing::error!("{e}");
                    self.cancel.cancel();
                    if let Ok(mut first_error) = unsaved_ref.lock() {
                        first_error.get_or_insert(e);
                    }
                }
                stream::iter(chunk)
            })
            .flatten();
        let completions = Completions::new(self.journal.clone(), tid.clone(), self.cancel.clone());
        let done = &completions;
        let moved: Vec<FileOutcome> = stream::iter(first)
            .chain(later)
            .map(|w| self.run_file(tid_ref, w, done))
            .buffer_unordered(files_in_flight)
            .collect()
            .await;
        // Every finished file's record written (or the run says how many were not).
        let finished = match unsaved.into_inner().ok().flatten() {
            Some(e) => {
                // The plans that were recorded keep what is resumable; the error is the run's.
                if let Err(also) = completions.finish().await {
                    tracing::error!("{also}");
                }
                Err(e)
            }
            None => completions.finish().await,
        };
        if let Err(e) = finished {
            if let Err(e) = self
                .journal
                .set_transfer_state(&tid, TransferState::Interrupted)
                .await
            {
                tracing::error!("{e}");
            }
            return Err(e);
        }
        outcomes.extend(moved);
        outcomes.sort_by_key(|o| o.id);
        let mut summary = Summary::new(
            outcomes,
            started.elapsed(),
            self.limits.stats.retries.load(Ordering::Relaxed),
        );
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
        summary.parts_reused = self.parts_reused.load(Ordering::Relaxed);
        Ok(summary)
    }

    /// Record the plans of the fresh files among `work`.
    async fn save_fresh(&self, tid: &str, work: &[Work]) -> Result<()> {
        let fresh: Vec<FilePlan> = work
            .iter()
            .filter_map(|w| match w {
                Work::Fresh(p) => Some(p.clone()),
                Work::Resume(..) => None,
            })
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        self.journal.save_plans(tid, &fresh).await
    }

    async fn run_file(&self, tid: &str, work: &Work, done: &Completions) -> FileOutcome {
        let plan = work.plan();
        // A large file waits here for its turn, before it starts (no upload opened yet).
        let _turn = if plan.strategy.is_multipart() {
            self.large_files.acquire().await.ok()
        } else {
            None
        };
        self.observer.file_started(plan);
        let t0 = Instant::now();
        let through_before = self.limits.bytes_through.load(Ordering::Relaxed);
        let result = if self.cancel.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            self.move_file(tid, work, done).await
        };
        let secs = t0.elapsed().as_secs_f64();
        let out = match result {
            Ok(done) => {
                let mut o = outcome(plan, Status::Ok, Some(done.verified), None, secs);
                o.source_deleted = done.source_deleted;
                o
            }
            Err(e) => {
                let msg = e.to_string();
                if e.is_journal() {
                    // Without a record nothing can go on safely: stop, keep what is resumable.
                    self.cancel.cancel();
                }
                let kept = self.keeps_upload(&e);
                if !kept {
                    tracing::error!("{} -> {}: {msg}", plan.src, plan.dst);
                    if let Err(e) = self
                        .journal
                        .file_state(tid, plan.id, FileState::Failed, Some(&msg))
                        .await
                    {
                        tracing::error!("{e}");
                    }
                }
                let status = if matches!(e, EngineError::Cancelled) || e.is_journal() {
                    Status::Cancelled
                } else {
                    Status::Failed
                };
                outcome(plan, status, None, Some(msg), secs)
            }
        };
        let mut out = out;
        // Per-file bytes are approximate when files overlap; exact for the server-side case.
        out.bytes_through_client = if plan.strategy.is_server_side() {
            0
        } else {
            (self.limits.bytes_through.load(Ordering::Relaxed) - through_before).min(plan.size)
        };
        self.observer.file_finished(&out);
        out
    }

    /// A cancelled run, or one whose journal failed, keeps its uploads when the journal is
    /// durable: running the same command again continues them.
    fn keeps_upload(&self, e: &EngineError) -> bool {
        self.journal.durable() && (matches!(e, EngineError::Cancelled) || e.is_journal())
    }

    async fn move_file(&self, tid: &str, work: &Work, done: &Completions) -> Result<Done> {
        let plan = work.plan();
        let src = self.conns.get(&plan.src.conn).await?;
        let dst = self.conns.get(&plan.dst.conn).await?;
        let verified = if plan.strategy.is_multipart() {
            let earlier = match work {
                Work::Resume(_, id) => Some(id.as_str()),
                Work::Fresh(_) => None,
            };
            self.move_multipart(tid, plan, &src, &dst, earlier).await?
        } else {
            let whole = self.move_whole_verified(plan, &src, &dst);
            tokio::select! {
                r = whole => r?,
                _ = self.cancel.cancelled() => return Err(EngineError::Cancelled),
            }
        };
        // Recorded as done before the source goes: a crash between the two must not leave a
        // journal that sends a resume looking for a source that is already deleted. Without a
        // source to delete, the record is queued and the file's slot freed at once (records are
        // written in batches; a lost one only means the file is copied again on resume).
        let (verified, source_deleted) = if self.opts.delete_source {
            done.completed(plan.id).await?;
            let verified = self
                .prove_and_delete_source(plan, &src, &dst, verified)
                .await?;
            (verified, true)
        } else {
            done.record(plan.id)?;
            (verified, false)
        };
        Ok(Done {
            verified,
            source_deleted,
        })
    }

    /// Move a single-request file (single PUT or server-side copy) and verify it.
    pub(crate) async fn move_whole_verified(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
    ) -> Result<Verification> {
        let moved = move_whole(&self.limits, src, dst, plan).await?;
        self.observer.progress(plan.id, plan.size);
        // A server-side copy that answers with the pinned source's ETag is a copy of exactly
        // that object (for one written in one piece, the ETag is the MD5 of its bytes): no stat.
        if plan.strategy == Strategy::ServerCopy
            && let (Some(copied), Some(pinned)) = (&moved.receipt.etag, &plan.pin.etag)
            && crate::finalize::same_etag(copied, pinned)
        {
            return Ok(Verification::SourceEtag);
        }
        let exp = Expected::whole(plan.size, moved.crc);
        // The store computed the CRC32C of what it stored and answered with it: that is the
        // check, no stat needed.
        if let (Some(sent), Some(acked)) = (&exp.crc32c, &moved.receipt.crc32c)
            && barge_store::checksum::same_checksum(acked, sent)
        {
            return Ok(Verification::SizeAndCrc32c);
        }
        // Where the read already matched the source's checksum, no stat of the source either.
        let verified = verify_written(
            dst.as_ref(),
            (!moved.source_crc_matched).then_some(src.as_ref()),
            plan,
            &exp,
            &moved.receipt,
            &self.opts.retry,
            &self.limits.stats,
        )
        .await?;
        Ok(match verified {
            Verification::SizeOnly if moved.source_crc_matched => Verification::SourceCrc32c,
            v => v,
        })
    }

    async fn start_upload(
        &self,
        tid: &str,
        plan: &FilePlan,
        dst: &Arc<dyn Store>,
    ) -> Result<UploadRef> {
        let what = format!("start of upload to {}", plan.dst);
        let upload = tokio::select! {
            r = retry(&self.opts.retry, &self.limits.stats, &what, || {
                dst.create_upload(&plan.dst.path, &plan.attrs, ChecksumMode::Crc32c)
            }) => r?,
            _ = self.cancel.cancelled() => return Err(EngineError::Cancelled),
        };
        if let Err(e) = self
            .journal
            .upload_started(tid, plan.id, &upload.upload_id)
            .await
        {
            self.abort(dst.as_ref(), &upload).await;
            return Err(e);
        }
        Ok(upload)
    }

    /// Continue an earlier upload: the source must still be the planned version, and the
    /// upload must still exist. Returns the parts that need not move again.
    async fn reuse_upload(
        &self,
        tid: &str,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        upload: &UploadRef,
    ) -> Result<Option<HashSet<u32>>> {
        let what = format!("stat of {}", plan.src);
        let meta = retry(&self.opts.retry, &self.limits.stats, &what, || {
            src.head(&plan.src.path)
        })
        .await?;
        if Pin::of(&meta) != plan.pin || meta.size != plan.size {
            self.abort(dst.as_ref(), upload).await;
            return Err(StoreError::SourceChanged {
                store: src.name().to_string(),
                path: plan.src.path.to_string(),
            }
            .into());
        }
        let what = format!("list of the parts of {}", plan.dst);
        let listed = match retry(&self.opts.retry, &self.limits.stats, &what, || {
            dst.list_parts(upload)
        })
        .await
        {
            Ok(l) => l,
            Err(StoreError::NoSuchUpload { .. }) | Err(StoreError::NotFound { .. }) => {
                tracing::warn!(
                    "upload {} of {} is gone from the store; starting that file over",
                    upload.upload_id,
                    plan.dst
                );
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let recorded = self
            .journal
            .receipts(tid, plan.id, &upload.upload_id)
            .await?;
        if !dst.capabilities().lists_parts {
            // A file keeps no list of its parts, and a crash may have left a recorded range
            // unwritten (receipts are recorded before the page cache reaches the disk): each
            // recorded part is read back, and only those whose bytes match are kept.
            let specs = plan.parts();
            let recorded: Vec<_> = recorded
                .into_iter()
                .filter_map(|r| {
                    let spec = *specs.get((r.number as usize).checked_sub(1)?)?;
                    Some((spec, r))
                })
                .collect();
            let what = format!("check of the parts written to {}", plan.dst);
            let good = retry(&self.opts.retry, &self.limits.stats, &what, || {
                dst.check_parts(upload, &recorded)
            })
            .await?;
            if good.len() < recorded.len() {
                tracing::warn!(
                    "{}: {} of {} recorded parts do not hold their bytes; moving them again",
                    plan.dst,
                    recorded.len() - good.len(),
                    recorded.len()
                );
            }
            return Ok(Some(good.into_iter().collect()));
        }
        // The workers' rule, not a second one: same length, same CRC32C (else same ETag).
        let (kept, _) = crate::finalize::reconcile_parts(plan.part_count, &recorded, &listed);
        Ok(Some(kept.iter().map(|r| r.number).collect()))
    }

    async fn move_multipart(
        &self,
        tid: &str,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        earlier: Option<&str>,
    ) -> Result<Verification> {
        let mut done = HashSet::new();
        let upload = match earlier {
            Some(id) => {
                let up = UploadRef {
                    path: plan.dst.path.clone(),
                    upload_id: id.to_string(),
                };
                match self.reuse_upload(tid, plan, src, dst, &up).await? {
                    Some(keep) => {
                        done = keep;
                        up
                    }
                    None => self.start_upload(tid, plan, dst).await?,
                }
            }
            None => self.start_upload(tid, plan, dst).await?,
        };
        if !done.is_empty() {
            self.parts_reused
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            let bytes: u64 = plan
                .parts()
                .iter()
                .filter(|p| done.contains(&p.number))
                .map(|p| p.len)
                .sum();
            self.observer.progress(plan.id, bytes);
        }
        let work = self.parts_and_complete(tid, plan, src, dst, &upload, &done);
        let result = tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => Err(EngineError::Cancelled),
        };
        if let Err(e) = &result
            && !self.keeps_upload(e)
        {
            self.abort(dst.as_ref(), &upload).await;
        }
        result
    }

    async fn parts_and_complete(
        &self,
        tid: &str,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        upload: &UploadRef,
        done: &HashSet<u32>,
    ) -> Result<Verification> {
        let parts: Vec<_> = plan
            .parts()
            .into_iter()
            .filter(|p| !done.contains(&p.number))
            .collect();
        // At most `concurrency` parts of one file are scheduled at once; the shared request
        // semaphore keeps the total across files at `concurrency` too.
        stream::iter(parts)
            .map(|part| async move {
                let r = move_part(&self.limits, src, dst, plan, upload, part).await?;
                self.journal
                    .part_done(tid, plan.id, &upload.upload_id, &r)
                    .await?;
                self.observer.progress(plan.id, part.len);
                Ok::<_, EngineError>(())
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let receipts: Vec<PartReceipt> = self
            .journal
            .receipts(tid, plan.id, &upload.upload_id)
            .await?;
        if receipts.len() != plan.part_count as usize {
            return Err(EngineError::Verify {
                dest: plan.dst.to_string(),
                msg: format!(
                    "{} receipts recorded for {} parts",
                    receipts.len(),
                    plan.part_count
                ),
            });
        }
        crate::finalize::complete_and_verify(
            dst.as_ref(),
            src.as_ref(),
            plan,
            upload,
            &receipts,
            &self.opts.retry,
            &self.limits.stats,
        )
        .await
    }

    pub(crate) async fn abort(&self, dst: &dyn Store, upload: &UploadRef) {
        let what = format!("abort of upload {} of {}", upload.upload_id, upload.path);
        match retry(&self.opts.retry, &self.limits.stats, &what, || {
            dst.abort_upload(upload)
        })
        .await
        {
            // Completed or aborted already: nothing is left open.
            Ok(()) | Err(StoreError::NoSuchUpload { .. }) => {}
            Err(e) => {
                tracing::error!(
                    "could not abort upload {} of {}: {e}; `barge cleanup` removes it later",
                    upload.upload_id,
                    upload.path
                );
            }
        }
    }

    /// After a file is recorded as copied: prove the copy by a checksum (a size-only check is
    /// not enough to delete on: `prove_for_delete`), then delete the source. The one way both
    /// the one-machine run and the workers delete a source.
    pub(crate) async fn prove_and_delete_source(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        verified: Verification,
    ) -> Result<Verification> {
        let verified = crate::finalize::prove_for_delete(
            src.as_ref(),
            dst.as_ref(),
            plan,
            verified,
            &self.opts.retry,
            &self.limits.stats,
        )
        .await?;
        self.delete_source(plan, src).await?;
        Ok(verified)
    }

    /// Delete exactly the planned source key and the version copied (never a version written
    /// since), after verification.
    pub(crate) async fn delete_source(&self, plan: &FilePlan, src: &Arc<dyn Store>) -> Result<()> {
        let what = format!("delete of {}", plan.src);
        retry(&self.opts.retry, &self.limits.stats, &what, || {
            src.delete_pinned(&plan.src.path, &plan.pin)
        })
        .await
        .map_err(|e: StoreError| match e {
            StoreError::SourceChanged { .. } => EngineError::Input(format!(
                "copied and verified, but the source {} was rewritten since it was copied: it was kept (the copy holds the version read before)",
                plan.src
            )),
            e => EngineError::Input(format!(
                "copied and verified, but deleting the source failed: {e}"
            )),
        })
    }
}

fn guess_content_type(path: &str) -> Option<String> {
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    let t = match ext.as_str() {
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "parquet" => "application/vnd.apache.parquet",
        "gz" => "application/gzip",
        "zst" => "application/zstd",
        "tar" => "application/x-tar",
        "zip" => "application/zip",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "pdf" => "application/pdf",
        _ => return None,
    };
    Some(t.to_string())
}

fn outcome(
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
    FileOutcome {
        id,
        src: spec.src.to_string(),
        dst: spec.dst.to_string(),
        size: None,
        strategy: None,
        part_size: None,
        parts: None,
        status: Status::Failed,
        verified: Verification::NotVerified,
        bytes_through_client: 0,
        source_deleted: false,
        seconds: 0.0,
        error: Some(e.to_string()),
    }
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
