//! Each per-file step, once: plan a file, move a small one whole, open or continue an upload,
//! reconcile its parts, complete and verify it, delete its exact source, abort it.
//!
//! The scheduler (`cluster::Worker`, over the in-process queue of `cp`/`run` or the shared one
//! of `barge worker`) decides when a step runs; the steps decide how. Nothing here records
//! anything: the scheduler records each outcome while it owns the task.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use barge_store::{ChecksumMode, PartReceipt, Pin, Store, StoreError, UploadRef};

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::finalize::{
    Expected, complete_and_verify, reconcile_parts, settle_vanished_upload, verify_written,
};
use crate::input::TransferSpec;
use crate::location::Location;
use crate::plan::{Ends, FilePlan, PlanOptions, Strategy, choose};
use crate::report::Verification;
use crate::retry::{RetryPolicy, retry};
use crate::worker::{Limits, move_whole};

/// Completions tried by one finalize when the store answers InvalidPart (a part uploaded again
/// since it was listed).
const COMPLETION_TRIES: u32 = 3;

/// A completion the store refused because a listed part is no longer the part it holds.
fn is_invalid_part(e: &EngineError) -> bool {
    matches!(e, EngineError::Store(StoreError::Permanent { detail, .. }) if detail.contains("InvalidPart"))
}

/// How one transfer's files are moved: its options, and the stores and limits it shares.
pub struct Steps {
    pub(crate) conns: Arc<Connections>,
    pub(crate) plan: PlanOptions,
    pub(crate) retry: RetryPolicy,
    pub(crate) delete_source: bool,
    pub(crate) limits: Arc<Limits>,
    /// What a listing said of sources (size, ETag): small objects are planned without a stat.
    pub(crate) listing: HashMap<Location, barge_store::ObjectMeta>,
}

/// What finishing an upload came to.
pub enum Finished {
    /// Completed (or found completed) and verified.
    Verified(Verification),
    /// These parts on the store are not what the journal recorded: move them again first.
    Redo(Vec<u32>),
}

impl Steps {
    pub(crate) async fn stores(&self, plan: &FilePlan) -> Result<(Arc<dyn Store>, Arc<dyn Store>)> {
        Ok((
            self.conns.get(&plan.src.conn).await?,
            self.conns.get(&plan.dst.conn).await?,
        ))
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
            && !self.delete_source
            && listed.etag.is_some()
            && !spec.src.is_local()
            && let Ok((
                strategy @ (Strategy::SinglePut | Strategy::ServerCopy),
                part_size,
                part_count,
            )) = choose(listed.size, &ends, &self.plan)
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
        let meta = retry(&self.retry, &self.limits.stats, &what, || {
            src.head(&spec.src.path)
        })
        .await?;
        let (strategy, part_size, part_count) = choose(meta.size, &ends, &self.plan)
            .map_err(|e| EngineError::Input(format!("{}: {e}", spec.src)))?;
        let mut attrs = meta.attrs.clone();
        if spec.src.is_local() && attrs.content_type.is_none() {
            attrs.content_type = guess_content_type(&spec.src.path.key);
        }
        if strategy.is_multipart() {
            record_checksum_basis(&mut attrs, &meta, part_size);
        }
        // A stat brings no tags: read them for a copy to carry (a whole server-side copy has
        // the store copy them itself).
        if strategy != Strategy::ServerCopy && !spec.src.is_local() && !spec.dst.is_local() {
            let what = format!("tags of {}", spec.src);
            attrs.tags = retry(&self.retry, &self.limits.stats, &what, || {
                src.tags(&spec.src.path)
            })
            .await?;
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

    /// Move a single-request file (single PUT or server-side copy) and verify it.
    pub(crate) async fn move_whole_verified(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
    ) -> Result<Verification> {
        let moved = move_whole(&self.limits, src, dst, plan).await?;
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
            &self.retry,
            &self.limits.stats,
        )
        .await?;
        Ok(match verified {
            Verification::SizeOnly if moved.source_crc_matched => Verification::SourceCrc32c,
            v => v,
        })
    }

    /// Open a multipart upload for a planned file.
    pub(crate) async fn start_upload(
        &self,
        plan: &FilePlan,
        dst: &Arc<dyn Store>,
    ) -> Result<UploadRef> {
        let what = format!("start of upload to {}", plan.dst);
        Ok(retry(&self.retry, &self.limits.stats, &what, || {
            dst.create_upload(&plan.dst.path, &plan.attrs, ChecksumMode::Crc32c)
        })
        .await?)
    }

    /// Continue an upload recorded earlier: the source must still be the planned version (else
    /// the upload is aborted and the error says the source changed), and the upload must still
    /// exist (`None`: it is gone, start the file over). Returns the parts that need not move
    /// again: those whose receipts the store's own list confirms (one rule, `reconcile_parts`),
    /// or, on a store that keeps no list (a local file), those whose bytes read back match.
    pub(crate) async fn continue_upload(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        upload: &UploadRef,
        recorded: Vec<PartReceipt>,
    ) -> Result<Option<HashSet<u32>>> {
        let what = format!("stat of {}", plan.src);
        let meta = retry(&self.retry, &self.limits.stats, &what, || {
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
        let listed = match retry(&self.retry, &self.limits.stats, &what, || {
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
            let good = retry(&self.retry, &self.limits.stats, &what, || {
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
        let (kept, _) = reconcile_parts(plan.part_count, &recorded, &listed);
        Ok(Some(kept.iter().map(|r| r.number).collect()))
    }

    /// Complete an upload whose parts are all recorded, and verify the object. Completes from
    /// the store's own list of parts, checked part by part against the receipts: a part moved
    /// twice or changed behind barge's back is moved again (`Finished::Redo`), never completed
    /// as found. An upload found gone (a lost completion answer, an abort elsewhere) is settled
    /// by the destination alone.
    pub(crate) async fn finish_upload(
        &self,
        plan: &FilePlan,
        src: &Arc<dyn Store>,
        dst: &Arc<dyn Store>,
        upload: &UploadRef,
        recorded: &[PartReceipt],
    ) -> Result<Finished> {
        let exp = Expected::from_parts(plan.size, recorded);
        // A part moved twice (its lease expired while its slow owner was still uploading it)
        // can land between the list and the completion: the store then refuses the completion
        // (S3's InvalidPart: the ETag listed is not the part's latest). The parts are all there,
        // so list again and complete again, a few times, before failing the file.
        let mut left = COMPLETION_TRIES;
        loop {
            left -= 1;
            let what = format!("list of the parts of {}", plan.dst);
            let listed = match retry(&self.retry, &self.limits.stats, &what, || {
                dst.list_parts(upload)
            })
            .await
            {
                Ok(l) => l,
                Err(StoreError::NoSuchUpload { .. } | StoreError::NotFound { .. }) => {
                    return settle_vanished_upload(
                        dst.as_ref(),
                        plan,
                        &exp,
                        &self.retry,
                        &self.limits.stats,
                    )
                    .await
                    .map(Finished::Verified);
                }
                Err(e) => return Err(e.into()),
            };
            let receipts = if dst.capabilities().lists_parts {
                let (receipts, redo) = reconcile_parts(plan.part_count, recorded, &listed);
                if !redo.is_empty() {
                    tracing::warn!(
                        "{}: part(s) {redo:?} on the store differ from the journal's receipts; moving them again",
                        plan.dst
                    );
                    return Ok(Finished::Redo(redo));
                }
                receipts
            } else {
                recorded.to_vec()
            };
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
            match complete_and_verify(
                dst.as_ref(),
                src.as_ref(),
                plan,
                upload,
                &receipts,
                &self.retry,
                &self.limits.stats,
            )
            .await
            {
                Ok(v) => return Ok(Finished::Verified(v)),
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
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn abort(&self, dst: &dyn Store, upload: &UploadRef) {
        let what = format!("abort of upload {} of {}", upload.upload_id, upload.path);
        match retry(&self.retry, &self.limits.stats, &what, || {
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
    /// not enough to delete on: `prove_for_delete`), then delete the source.
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
            &self.retry,
            &self.limits.stats,
        )
        .await?;
        self.delete_source(plan, src).await?;
        Ok(verified)
    }

    /// Delete exactly the planned source key and the version copied (never a version written
    /// since), after verification.
    async fn delete_source(&self, plan: &FilePlan, src: &Arc<dyn Store>) -> Result<()> {
        let what = format!("delete of {}", plan.src);
        retry(&self.retry, &self.limits.stats, &what, || {
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

/// User metadata barge writes on an object it uploads in parts, so that `barge sync` can later
/// tell whether it still holds the source's bytes without reading it: the part size (a store
/// reports a multipart object's CRC32C as a composite of its parts', which another copy of the
/// same bytes matches only when read in parts of that size) and the CRC32C the source reported
/// when it was copied. Values copied from the source's own metadata are replaced.
pub const META_PART_SIZE: &str = "barge-part-size";
pub const META_SOURCE_CRC32C: &str = "barge-source-crc32c";

fn record_checksum_basis(
    attrs: &mut barge_store::ObjectAttrs,
    src: &barge_store::ObjectMeta,
    part_size: u64,
) {
    let meta = &mut attrs.user_metadata;
    meta.retain(|k, _| k != META_PART_SIZE && k != META_SOURCE_CRC32C);
    meta.insert(META_PART_SIZE.into(), part_size.to_string());
    if let Some(crc) = &src.crc32c {
        meta.insert(META_SOURCE_CRC32C.into(), crc.clone());
    }
}
