//! The engine: plan every file, move the parts, finalize, report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use barge_store::{ChecksumMode, PartReceipt, Store, StoreError, UploadRef};
use futures::{StreamExt, TryStreamExt, stream};
use tokio_util::sync::CancellationToken;

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::finalize::{Expected, verify};
use crate::input::{TransferSpec, check_unique};
use crate::journal::{FileState, Journal, MemoryJournal};
use crate::plan::{Ends, FilePlan, PlanOptions, Strategy, choose};
use crate::report::{FileOutcome, Observer, Silent, Status, Summary, Verification};
use crate::retry::{RetryPolicy, retry};
use crate::worker::{Limits, move_part, move_whole};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub plan: PlanOptions,
    /// Parts (requests) in flight across all files.
    pub concurrency: usize,
    pub delete_source: bool,
    pub dry_run: bool,
    pub retry: RetryPolicy,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            plan: PlanOptions::default(),
            concurrency: 16,
            delete_source: false,
            dry_run: false,
            retry: RetryPolicy::default(),
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
}

/// A file's result before it is turned into an outcome.
struct Done {
    verified: Verification,
    source_deleted: bool,
}

impl Engine {
    pub fn new(conns: Arc<Connections>, opts: RunOptions) -> Self {
        let limits = Arc::new(Limits::new(
            opts.concurrency,
            opts.plan.max_memory,
            opts.retry.clone(),
        ));
        Self {
            conns,
            opts,
            observer: Arc::new(Silent),
            journal: Arc::new(MemoryJournal::default()),
            cancel: CancellationToken::new(),
            limits,
        }
    }

    pub fn with_observer(mut self, o: Arc<dyn Observer>) -> Self {
        self.observer = o;
        self
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
    async fn plan_one(&self, id: usize, spec: &TransferSpec) -> Result<FilePlan> {
        let src = self.conns.get(&spec.src.conn).await?;
        let dst = self.conns.get(&spec.dst.conn).await?;
        let what = format!("stat of {}", spec.src);
        let meta = retry(&self.opts.retry, &self.limits.stats, &what, || {
            src.head(&spec.src.path)
        })
        .await?;
        let same_service = matches!(
            (src.service_identity(), dst.service_identity()),
            (Some(a), Some(b)) if a == b
        );
        let ends = Ends {
            src_caps: src.capabilities(),
            dst_caps: dst.capabilities(),
            same_service,
        };
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
        })
    }

    /// Plan every file (stat each source); a file that cannot be planned carries its error.
    pub async fn plan(&self, specs: &[TransferSpec]) -> Vec<Result<FilePlan>> {
        stream::iter(specs.iter().enumerate())
            .map(|(i, s)| self.plan_one(i, s))
            .buffered(64)
            .collect()
            .await
    }

    /// Plan and move every file. Errors of single files are in the summary; an `Err` means the
    /// run as a whole was refused before anything moved.
    pub async fn run(&self, specs: Vec<TransferSpec>) -> Result<Summary> {
        check_unique(&specs)?;
        let started = Instant::now();
        let planned = self.plan(&specs).await;
        let mut outcomes = Vec::new();
        let mut plans = Vec::new();
        for (i, p) in planned.into_iter().enumerate() {
            match p {
                Ok(plan) => plans.push(plan),
                Err(e) => {
                    let o = failed_unplanned(i, &specs[i], &e);
                    self.observer.file_finished(&o);
                    outcomes.push(o);
                }
            }
        }
        self.observer.planned(&plans);
        if self.opts.dry_run {
            outcomes.extend(
                plans
                    .iter()
                    .map(|p| outcome(p, Status::Planned, None, None, 0.0)),
            );
            outcomes.sort_by_key(|o| o.id);
            return Ok(Summary::new(outcomes, started.elapsed(), 0));
        }
        for p in &plans {
            self.journal.file_planned(p).await?;
        }
        let files_in_flight = self.opts.concurrency.max(1);
        let moved: Vec<FileOutcome> = stream::iter(plans.iter())
            .map(|p| self.run_file(p))
            .buffer_unordered(files_in_flight)
            .collect()
            .await;
        outcomes.extend(moved);
        outcomes.sort_by_key(|o| o.id);
        Ok(Summary::new(
            outcomes,
            started.elapsed(),
            self.limits.stats.retries.load(Ordering::Relaxed),
        ))
    }

    async fn run_file(&self, plan: &FilePlan) -> FileOutcome {
        self.observer.file_started(plan);
        let t0 = Instant::now();
        let through_before = self.limits.bytes_through.load(Ordering::Relaxed);
        let result = if self.cancel.is_cancelled() {
            Err(EngineError::Cancelled)
        } else {
            self.move_file(plan).await
        };
        let secs = t0.elapsed().as_secs_f64();
        let out = match result {
            Ok(done) => {
                let _ = self
                    .journal
                    .file_state(plan.id, FileState::Completed, None)
                    .await;
                let mut o = outcome(plan, Status::Ok, Some(done.verified), None, secs);
                o.source_deleted = done.source_deleted;
                o
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!("{} -> {}: {msg}", plan.src, plan.dst);
                let _ = self
                    .journal
                    .file_state(plan.id, FileState::Failed, Some(&msg))
                    .await;
                let status = if matches!(e, EngineError::Cancelled) {
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

    async fn move_file(&self, plan: &FilePlan) -> Result<Done> {
        let src = self.conns.get(&plan.src.conn).await?;
        let dst = self.conns.get(&plan.dst.conn).await?;
        let verified = if plan.strategy.is_multipart() {
            self.move_multipart(plan, &src, &dst).await?
        } else {
            let whole = async {
                let (_, crc) = move_whole(&self.limits, &src, &dst, plan).await?;
                self.observer.progress(plan.id, plan.size);
                let exp = Expected::whole(plan.size, crc);
                verify(dst.as_ref(), plan, &exp).await
            };
            tokio::select! {
                r = whole => r?,
                _ = self.cancel.cancelled() => return Err(EngineError::Cancelled),
            }
        };
        let source_deleted = if self.opts.delete_source {
            self.delete_source(plan, &src).await?;
            true
        } else {
            false
        };
        Ok(Done {
            verified,
            source_deleted,
        })
    }

    async fn move_multipart(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
    ) -> Result<Verification> {
        let what = format!("start of upload to {}", plan.dst);
        let upload = tokio::select! {
            r = retry(&self.opts.retry, &self.limits.stats, &what, || {
                dst.create_upload(&plan.dst.path, &plan.attrs, ChecksumMode::Crc32c)
            }) => r?,
            _ = self.cancel.cancelled() => return Err(EngineError::Cancelled),
        };
        self.journal
            .upload_started(plan.id, &upload.upload_id)
            .await?;
        let work = self.parts_and_complete(plan, src, dst, &upload);
        let result = tokio::select! {
            r = work => r,
            _ = self.cancel.cancelled() => Err(EngineError::Cancelled),
        };
        if result.is_err() {
            self.abort(dst.as_ref(), &upload).await;
        }
        result
    }

    async fn parts_and_complete(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        upload: &UploadRef,
    ) -> Result<Verification> {
        let parts = plan.parts();
        // At most `concurrency` parts of one file are scheduled at once; the shared request
        // semaphore keeps the total across files at `concurrency` too.
        stream::iter(parts)
            .map(|part| async move {
                let r = move_part(&self.limits, src, dst, plan, upload, part).await?;
                self.journal.part_done(plan.id, &r).await?;
                self.observer.progress(plan.id, part.len);
                Ok::<_, EngineError>(())
            })
            .buffer_unordered(self.opts.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        let receipts: Vec<PartReceipt> = self.journal.receipts(plan.id).await?;
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
        let what = format!("completion of {}", plan.dst);
        retry(&self.opts.retry, &self.limits.stats, &what, || {
            dst.complete_upload(upload, &receipts)
        })
        .await?;
        verify(
            dst.as_ref(),
            plan,
            &Expected::from_parts(plan.size, &receipts),
        )
        .await
    }

    async fn abort(&self, dst: &dyn Store, upload: &UploadRef) {
        let what = format!("abort of upload {} of {}", upload.upload_id, upload.path);
        if let Err(e) = retry(&self.opts.retry, &self.limits.stats, &what, || {
            dst.abort_upload(upload)
        })
        .await
        {
            tracing::error!(
                "could not abort upload {} of {}: {e}; `barge cleanup` removes it later",
                upload.upload_id,
                upload.path
            );
        }
    }

    /// Delete exactly the planned source key (and version), after verification.
    async fn delete_source(&self, plan: &FilePlan, src: &Arc<dyn Store>) -> Result<()> {
        let what = format!("delete of {}", plan.src);
        retry(&self.opts.retry, &self.limits.stats, &what, || {
            src.delete(&plan.src.path, plan.pin.version_id.as_deref())
        })
        .await
        .map_err(|e: StoreError| {
            EngineError::Input(format!(
                "copied and verified, but deleting the source failed: {e}"
            ))
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

/// `barge cleanup`: abort multipart uploads under a prefix started more than `older_than` ago.
pub async fn cleanup(
    store: &dyn Store,
    bucket: &str,
    prefix: &str,
    older_than: Duration,
    dry_run: bool,
) -> Result<Vec<barge_store::PendingUpload>> {
    let now = std::time::SystemTime::now();
    let pending = store.list_uploads(bucket, prefix).await?;
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
            store.abort_upload(&p.upload).await?;
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
