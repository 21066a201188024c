//! Finalize: complete the upload from the journaled receipts, verify the object, and only then
//! delete the exact source key.

use barge_store::checksum::{
    combine_crc32c, composite_crc32c, crc32c_b64, crc32c_from_b64, same_checksum,
};
use barge_store::{ObjectMeta, PartReceipt, Pin, PutReceipt, Store};

use crate::error::{EngineError, Result};
use crate::plan::FilePlan;
use crate::report::Verification;

/// What the finished object must look like.
pub struct Expected {
    pub size: u64,
    /// The CRC32C the store should report: `b64` (full object) or `b64-N` (composite).
    pub crc32c: Option<String>,
    /// The CRC32C of the whole object's bytes as barge moved them (its parts' combined), to
    /// compare with a full-object checksum.
    pub full_crc32c: Option<u32>,
}

impl Expected {
    /// From the receipts of every part, in part order.
    pub fn from_parts(size: u64, receipts: &[PartReceipt]) -> Self {
        let crcs: Option<Vec<(u32, u64)>> = receipts
            .iter()
            .map(|r| {
                r.crc32c
                    .as_deref()
                    .and_then(crc32c_from_b64)
                    .map(|c| (c, r.len))
            })
            .collect();
        let crcs = crcs.filter(|c| !c.is_empty());
        Self {
            size,
            crc32c: crcs
                .as_ref()
                .map(|c| composite_crc32c(&c.iter().map(|(crc, _)| *crc).collect::<Vec<_>>())),
            full_crc32c: crcs.as_deref().map(combine_crc32c),
        }
    }

    pub fn whole(size: u64, crc: Option<u32>) -> Self {
        Self {
            size,
            crc32c: crc.map(crc32c_b64),
            full_crc32c: crc,
        }
    }

    /// barge's own CRC32C in the form of `kept`, a checksum a store keeps for the object: the
    /// whole object's for a full-object checksum, the composite of barge's parts for a
    /// composite one (a store reports a composite as b64-N, a full-object checksum as b64: only
    /// like is compared with like). `None` where barge has none of that form.
    fn comparable(&self, kept: &str) -> Option<String> {
        if kept.contains('-') {
            self.crc32c.clone().filter(|c| c.contains('-'))
        } else {
            self.full_crc32c.map(crc32c_b64)
        }
    }
}

/// A full-object CRC32C (not a composite `base64-N` of its parts') a store reports.
pub(crate) fn full_crc(reported: &Option<String>) -> Option<&str> {
    reported.as_deref().filter(|c| !c.contains('-'))
}

/// Check the destination object against what barge sent. Where the destination keeps no
/// checksum to compare (a local file), and `src` is given, the bytes barge moved are compared
/// with the checksum the source keeps instead.
pub async fn verify(
    dst: &dyn Store,
    src: Option<&dyn Store>,
    plan: &FilePlan,
    exp: &Expected,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    verify_and_clean(dst, src, plan, exp, None, policy, stats).await
}

/// `verify` for the object barge has just written, `written` being the store's answer to the
/// PUT, copy or completion. An object that fails is not left at the destination as if copied:
/// barge deletes what it wrote (that version, where the store keeps versions), unless the
/// destination already holds another object (its ETag not the one barge's write got: someone
/// wrote after barge), which it leaves alone. The error says which.
pub async fn verify_written(
    dst: &dyn Store,
    src: Option<&dyn Store>,
    plan: &FilePlan,
    exp: &Expected,
    written: &PutReceipt,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    verify_and_clean(dst, src, plan, exp, Some(written), policy, stats).await
}

/// `verify`, and where barge's own write is `written`, the clean-up of `verify_written`.
async fn verify_and_clean(
    dst: &dyn Store,
    src: Option<&dyn Store>,
    plan: &FilePlan,
    exp: &Expected,
    written: Option<&PutReceipt>,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    let what = format!("stat of {}", plan.dst);
    let meta = crate::retry::retry(policy, stats, &what, || dst.head(&plan.dst.path)).await?;
    match (check(&meta, src, plan, exp, policy, stats).await, written) {
        (Err(EngineError::Verify { dest, msg }), Some(written)) => {
            let fate = remove_written(dst, plan, &meta, written, policy, stats).await;
            Err(EngineError::Verify {
                dest,
                msg: format!("{msg}; {fate}"),
            })
        }
        (r, _) => r,
    }
}

/// Two ETags name the same object, quoted or not.
pub(crate) fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// Delete the object barge wrote to `plan.dst` (now `meta`) after it failed verification;
/// what became of it, for the error.
async fn remove_written(
    dst: &dyn Store,
    plan: &FilePlan,
    meta: &ObjectMeta,
    written: &PutReceipt,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> String {
    let version = written.version_id.as_deref().filter(|v| !v.is_empty());
    let ours = version.is_some()
        || match (&written.etag, &meta.etag) {
            (Some(w), Some(now)) => same_etag(w, now),
            _ => true,
        };
    if !ours {
        return "the destination now holds another object than the one barge wrote; left as it is"
            .into();
    }
    let what = format!("delete of {} (failed verification)", plan.dst);
    match crate::retry::retry(policy, stats, &what, || dst.delete(&plan.dst.path, version)).await {
        Ok(()) => "the object barge wrote was deleted".into(),
        Err(e) => format!("the object barge wrote could not be deleted ({e}): do not use it"),
    }
}

/// The checks of `verify` on the destination's `meta`.
async fn check(
    meta: &ObjectMeta,
    src: Option<&dyn Store>,
    plan: &FilePlan,
    exp: &Expected,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    if meta.size != exp.size {
        return Err(EngineError::Verify {
            dest: plan.dst.to_string(),
            msg: format!("size is {} bytes, expected {}", meta.size, exp.size),
        });
    }
    if let Some(reported) = &meta.crc32c
        && let Some(expected) = exp.comparable(reported)
    {
        return if same_checksum(reported, &expected) {
            Ok(Verification::SizeAndCrc32c)
        } else {
            Err(EngineError::Verify {
                dest: plan.dst.to_string(),
                msg: format!("store reports CRC32C {reported}, barge sent {expected}"),
            })
        };
    }
    match src {
        Some(src) => against_source(src, plan, exp, policy, stats).await,
        None => Ok(Verification::SizeOnly),
    }
}

/// Compare the bytes barge moved with the CRC32C the source keeps for the object: a full-object
/// checksum always, a composite one where barge's parts gave the same (it was uploaded in the
/// same parts; other part boundaries give another composite, which says nothing).
async fn against_source(
    src: &dyn Store,
    plan: &FilePlan,
    exp: &Expected,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    if exp.full_crc32c.is_none() && exp.crc32c.is_none() {
        return Ok(Verification::SizeOnly);
    }
    let what = format!("stat of {}", plan.src);
    let meta = match crate::retry::retry(policy, stats, &what, || src.head(&plan.src.path)).await {
        Ok(m) => m,
        Err(e) => {
            // The copy is complete and was read from the pinned source: a source that is gone
            // or failing now only leaves this check undone.
            tracing::warn!("{}: not compared with the source's CRC32C: {e}", plan.dst);
            return Ok(Verification::SizeOnly);
        }
    };
    // A source replaced since it was read keeps another object's checksum.
    if Pin::of(&meta) != plan.pin || meta.size != exp.size {
        return Ok(Verification::SizeOnly);
    }
    let Some(kept) = meta.crc32c.as_deref() else {
        return Ok(Verification::SizeOnly);
    };
    let Some(ours) = exp.comparable(kept) else {
        return Ok(Verification::SizeOnly);
    };
    if same_checksum(kept, &ours) {
        Ok(Verification::SourceCrc32c)
    } else if full_crc(&meta.crc32c).is_some() {
        Err(EngineError::Verify {
            dest: plan.dst.to_string(),
            msg: format!(
                "the source keeps CRC32C {kept} for {}, the bytes barge read have {ours}",
                plan.src
            ),
        })
    } else {
        // A composite of other part boundaries than barge's.
        Ok(Verification::SizeOnly)
    }
}

/// The one rule for the parts an upload holds, for a resume and for a worker's completion
/// alike: a part counts when the store lists it with the recorded length and the same bytes
/// (the same CRC32C where both say one, else the same ETag). Returns the parts to complete with
/// (the store's ETags, the journal's checksums) and the numbers to move again (missing, or other
/// bytes than recorded).
pub fn reconcile_parts(
    part_count: u32,
    recorded: &[PartReceipt],
    listed: &[PartReceipt],
) -> (Vec<PartReceipt>, Vec<u32>) {
    let rec: std::collections::HashMap<u32, &PartReceipt> =
        recorded.iter().map(|r| (r.number, r)).collect();
    let on_store: std::collections::HashMap<u32, &PartReceipt> =
        listed.iter().map(|r| (r.number, r)).collect();
    let mut out = Vec::with_capacity(part_count as usize);
    let mut redo = Vec::new();
    for n in 1..=part_count {
        match (rec.get(&n), on_store.get(&n)) {
            (Some(r), Some(s)) if r.len == s.len && same_part(r, s) => out.push(PartReceipt {
                number: n,
                etag: s.etag.clone(),
                len: s.len,
                crc32c: r.crc32c.clone(),
            }),
            _ => redo.push(n),
        }
    }
    (out, redo)
}

/// The same bytes: by CRC32C where the store reports one (ETags of equal bytes may differ,
/// with SSE-KMS for one), else by ETag.
fn same_part(journal: &PartReceipt, store: &PartReceipt) -> bool {
    match (&journal.crc32c, &store.crc32c) {
        (Some(a), Some(b)) => same_checksum(a, b),
        _ => journal.etag == store.etag,
    }
}

/// Complete an upload from its receipts and verify the object: the one way both the
/// one-machine run and the workers finish a multipart file. A completion whose answer was lost
/// (or an upload gone for another reason) is settled by the destination alone
/// (`settle_vanished_upload`); an object that fails verification is removed (`verify_written`).
pub async fn complete_and_verify(
    dst: &dyn Store,
    src: &dyn Store,
    plan: &FilePlan,
    upload: &barge_store::UploadRef,
    receipts: &[PartReceipt],
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    let exp = Expected::from_parts(plan.size, receipts);
    let what = format!("completion of {}", plan.dst);
    let written = match crate::retry::retry(policy, stats, &what, || {
        dst.complete_upload(upload, receipts)
    })
    .await
    {
        Ok(w) => w,
        Err(barge_store::StoreError::NoSuchUpload { .. }) => {
            return settle_vanished_upload(dst, plan, &exp, policy, stats).await;
        }
        Err(e) => return Err(e.into()),
    };
    verify_written(dst, Some(src), plan, &exp, &written, policy, stats).await
}

/// Whether `v` proves the destination holds the source's bytes: a checksum compared, not a
/// size alone. A source is deleted only after such a proof.
pub fn proves_bytes(v: Verification) -> bool {
    matches!(
        v,
        Verification::SizeAndCrc32c
            | Verification::SourceCrc32c
            | Verification::SourceEtag
            | Verification::ReadBack
    )
}

/// Before a source is deleted: a check that compared sizes only is made into a checksum one
/// by reading both objects (the source pinned to the planned version) and comparing their
/// CRC32Cs. A destination that cannot be proven keeps its source, and the error says why.
pub async fn prove_for_delete(
    src: &dyn Store,
    dst: &dyn Store,
    plan: &FilePlan,
    verified: Verification,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    if proves_bytes(verified) {
        return Ok(verified);
    }
    let kept = |why: String| EngineError::Verify {
        dest: plan.dst.to_string(),
        msg: format!(
            "{why}; the stores keep no checksum to compare, so the source {} was kept",
            plan.src
        ),
    };
    let what = format!("read-back of {} and {}", plan.src, plan.dst);
    let (a, b) = crate::retry::retry(policy, stats, &what, || async {
        let dst_meta = dst.head(&plan.dst.path).await?;
        let src_meta = src.head(&plan.src.path).await?;
        // The planned version, as a resume checks it.
        if Pin::of(&src_meta) != plan.pin || src_meta.size != plan.size {
            return Err(barge_store::StoreError::SourceChanged {
                store: src.name().to_string(),
                path: plan.src.path.to_string(),
            });
        }
        Ok((
            read_crc(src, &src_meta).await?,
            read_crc(dst, &dst_meta).await?,
        ))
    })
    .await
    .map_err(|e| kept(format!("copied, but reading both sides back failed: {e}")))?;
    if a == b {
        Ok(Verification::ReadBack)
    } else {
        Err(kept(format!(
            "read back, the destination's bytes have CRC32C {}, the source's {}",
            crc32c_b64(b),
            crc32c_b64(a)
        )))
    }
}

/// An upload found gone when barge went to complete it: a completion whose answer was lost (the
/// retry then finds no upload), one a finalizer made before it stopped, or an upload aborted by
/// someone else (`barge cleanup`, a lifecycle rule). The destination counts as barge's copy only
/// if it proves to hold barge's bytes: its own CRC32C equal to barge's parts', else its bytes
/// read back and compared with the CRC32C of what barge uploaded. Never by size alone: an
/// older object of the same size is not the copy.
pub async fn settle_vanished_upload(
    dst: &dyn Store,
    plan: &FilePlan,
    exp: &Expected,
    policy: &crate::retry::RetryPolicy,
    stats: &crate::retry::RetryStats,
) -> Result<Verification> {
    let gone = |why: String| EngineError::Verify {
        dest: plan.dst.to_string(),
        msg: format!("the upload is gone from the store and {why}"),
    };
    let what = format!("stat of {}", plan.dst);
    let meta = crate::retry::retry(policy, stats, &what, || dst.head(&plan.dst.path))
        .await
        .map_err(|e| gone(format!("the destination cannot be read: {e}")))?;
    match check(&meta, None, plan, exp, policy, stats).await {
        Ok(Verification::SizeAndCrc32c) => return Ok(Verification::SizeAndCrc32c),
        Ok(_) => {}
        Err(e) => return Err(gone(format!("the destination is not barge's copy ({e})"))),
    }
    let Some(want) = exp.full_crc32c else {
        return Err(gone(
            "barge has no checksum of its parts to prove the destination is its copy".into(),
        ));
    };
    let what = format!("read-back of {}", plan.dst);
    let got = crate::retry::retry(policy, stats, &what, || read_crc(dst, &meta))
        .await
        .map_err(|e| gone(format!("the destination cannot be read back: {e}")))?;
    if got == want {
        Ok(Verification::ReadBack)
    } else {
        Err(gone(format!(
            "the destination holds other bytes (CRC32C {}, barge uploaded {})",
            crc32c_b64(got),
            crc32c_b64(want)
        )))
    }
}

/// What `barge verify` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PairCheck {
    pub src_size: u64,
    pub dst_size: u64,
    /// `reported-crc32c` (both stores reported a full-object CRC32C), `read-crc32c` (both sides
    /// were read and checksummed) or `size` (sizes differ: nothing more to compare).
    pub method: &'static str,
    pub src_crc32c: Option<String>,
    pub dst_crc32c: Option<String>,
    pub same: bool,
}

const VERIFY_CHUNK: u64 = 8 * barge_store::MIB;

async fn read_crc(
    store: &dyn Store,
    meta: &barge_store::ObjectMeta,
) -> std::result::Result<u32, barge_store::StoreError> {
    Ok(read_crcs(store, meta, None).await?.0)
}

/// Read an object (in bounded chunks) and checksum it: the whole object's CRC32C and, given a
/// part size, the composite CRC32C (`b64-N`) a store would report for it uploaded in parts of
/// that size.
pub(crate) async fn read_crcs(
    store: &dyn Store,
    meta: &barge_store::ObjectMeta,
    part_size: Option<u64>,
) -> std::result::Result<(u32, Option<String>), barge_store::StoreError> {
    let pin = barge_store::Pin::of(meta);
    let part_size = part_size.filter(|p| *p > 0);
    let mut chunks = Vec::new();
    let mut parts = Vec::new();
    let (mut off, mut part_start) = (0u64, 0u64);
    let mut part: Vec<(u32, u64)> = Vec::new();
    let mut buf = bytes::BytesMut::new();
    while off < meta.size {
        let part_end = part_size.map_or(meta.size, |p| part_start.saturating_add(p).min(meta.size));
        let len = VERIFY_CHUNK.min(part_end - off);
        // The store checksums the bytes as they arrive; one buffer serves every chunk.
        let (data, crc) = store
            .get_range_into(&meta.path, &pin, off, len, buf)
            .await?;
        chunks.push((crc, len));
        part.push((crc, len));
        buf = data.try_into_mut().unwrap_or_default();
        off += len;
        if off == part_end {
            parts.push(barge_store::checksum::combine_crc32c(&part));
            part.clear();
            part_start = off;
        }
    }
    let composite = part_size
        .filter(|_| !parts.is_empty())
        .map(|_| composite_crc32c(&parts));
    Ok((barge_store::checksum::combine_crc32c(&chunks), composite))
}

/// Compare two objects: sizes, then full-object CRC32Cs the stores report, else read both sides
/// (in bounded chunks) and compare their CRC32Cs.
pub async fn verify_pair(
    src: &dyn Store,
    src_path: &barge_store::ObjectPath,
    dst: &dyn Store,
    dst_path: &barge_store::ObjectPath,
) -> Result<PairCheck> {
    let (a, b) = (src.head(src_path).await?, dst.head(dst_path).await?);
    if a.size != b.size {
        return Ok(PairCheck {
            src_size: a.size,
            dst_size: b.size,
            method: "size",
            src_crc32c: None,
            dst_crc32c: None,
            same: false,
        });
    }
    let full = |m: &barge_store::ObjectMeta| m.crc32c.clone().filter(|c| !c.contains('-'));
    if let (Some(x), Some(y)) = (full(&a), full(&b)) {
        return Ok(PairCheck {
            src_size: a.size,
            dst_size: b.size,
            method: "reported-crc32c",
            same: same_checksum(&x, &y),
            src_crc32c: Some(x),
            dst_crc32c: Some(y),
        });
    }
    let (x, y) = (read_crc(src, &a).await?, read_crc(dst, &b).await?);
    Ok(PairCheck {
        src_size: a.size,
        dst_size: b.size,
        method: "read-crc32c",
        same: x == y,
        src_crc32c: Some(crc32c_b64(x)),
        dst_crc32c: Some(crc32c_b64(y)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u32, etag: &str, crc: Option<&str>) -> PartReceipt {
        PartReceipt {
            number: n,
            etag: etag.into(),
            len: 10,
            crc32c: crc.map(str::to_string),
        }
    }

    #[test]
    fn parts_the_store_holds_differently_are_moved_again() {
        let journal = [
            r(1, "a", Some("AAAA")),
            r(2, "b", Some("BBBB")),
            r(3, "c", None),
        ];
        // Part 2 was overwritten by other bytes, part 3 has another ETag and no checksum, part 4
        // is missing from the journal; part 1 differs only by ETag (same checksum).
        let store = [
            r(1, "x", Some("AAAA")),
            r(2, "b", Some("ZZZZ")),
            r(3, "d", None),
            r(4, "e", None),
        ];
        let (ok, redo) = reconcile_parts(4, &journal, &store);
        assert_eq!(redo, vec![2, 3, 4]);
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].etag, "x", "completion uses the store's ETag");
        // A part of another length is other bytes, whatever its ETag.
        let mut short = r(1, "a", None);
        short.len = 9;
        assert_eq!(reconcile_parts(1, &[r(1, "a", None)], &[short]).1, vec![1]);
    }
}
