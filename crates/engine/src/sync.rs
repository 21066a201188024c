//! `barge sync`: compare a source tree with a destination tree and decide, file by file, what
//! to copy, what to skip (and why), and what to delete. The copies then run as any transfer
//! does (journaled, resumable); the deletes run after them, and only if every copy succeeded.
//!
//! "The same" is decided by content unless the user asks otherwise: the CRC32Cs the stores
//! keep (a full-object one on both sides; a composite one only where the other is the same
//! composite), else the source's CRC32C that barge recorded on the destination when it copied
//! it, else the bytes read and checksummed (a side that keeps a composite of known part size
//! is matched by reading only the other side in parts of that size).

use std::collections::BTreeMap;

use barge_store::checksum::crc32c_b64;
use barge_store::{ObjectMeta, Pin, SkippedEntry, Store, StoreError};
use futures::{StreamExt, stream};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::finalize::full_crc;
use crate::input::{Filters, TransferSpec, list_prefix};
use crate::location::Location;
use crate::retry::{RetryPolicy, RetryStats, retry};
use crate::steps::{META_PART_SIZE, META_SOURCE_CRC32C};

/// How a file present on both sides is judged unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compare {
    /// Same size and same content by CRC32C (the default).
    #[default]
    Checksum,
    /// Same size (`--size-only`).
    SizeOnly,
    /// Same size, and the destination no older than the source (`--size-and-time`).
    SizeAndTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Copy,
    Skip,
    Delete,
}

/// One line of a sync's plan.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    pub dst: String,
    pub reason: String,
}

/// What a sync will do.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// The files to copy, with what the source's listing said of each.
    pub copies: Vec<(TransferSpec, ObjectMeta)>,
    /// Destination objects with no source (only filled when deletes were asked for).
    pub deletes: Vec<(Location, ObjectMeta)>,
    /// Every copy, skip and delete, in destination order.
    pub decisions: Vec<Decision>,
    /// Source entries passed over (folder markers, local symlinks), with why.
    pub skipped_entries: Vec<SkippedEntry>,
    /// Files the source listing held (after filters).
    pub source_files: usize,
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub compare: Compare,
    /// Look for destination objects without a source.
    pub delete: bool,
    /// Comparisons in flight (each one or two stats, sometimes reads).
    pub requests: usize,
    /// Both sides are object stores, whose listings' ETags are MD5 digests of the content
    /// where they have that form (a local file's ETag is made up of its inode and times).
    pub listed_etags: bool,
    pub retry: RetryPolicy,
}

/// What finds an interrupted sync again in the journal: its two trees (its files differ from
/// run to run, so the pairs' fingerprint would not).
pub fn fingerprint(src: &Location, dst: &Location) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"sync\n");
    h.update(serde_json::to_vec(src).unwrap_or_default());
    h.update(b"\n");
    h.update(serde_json::to_vec(dst).unwrap_or_default());
    format!("{:x}", h.finalize())
}

/// List both trees and decide every file.
pub async fn plan(
    src: &Location,
    dst: &Location,
    src_store: &dyn Store,
    dst_store: &dyn Store,
    filters: &Filters,
    opts: &SyncOptions,
) -> Result<SyncPlan> {
    let listed = list_prefix(src, dst, src_store, filters).await?;
    let existing = match list_prefix(dst, dst, dst_store, filters).await {
        Ok(l) => l.files,
        // A destination folder that does not exist yet holds nothing.
        Err(EngineError::Store(StoreError::NotFound { .. })) if dst.is_local() => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut theirs: BTreeMap<String, ObjectMeta> = existing
        .into_iter()
        .map(|(s, m)| (s.dst.path.key, m))
        .collect();
    let mut out = SyncPlan {
        skipped_entries: listed.skipped,
        source_files: listed.files.len(),
        ..SyncPlan::default()
    };
    let stats = RetryStats::default();
    let pairs: Vec<_> = listed
        .files
        .into_iter()
        .map(|(spec, meta)| {
            let there = theirs.remove(&spec.dst.path.key);
            (spec, meta, there)
        })
        .collect();
    let judged = stream::iter(pairs)
        .map(|(spec, meta, there)| {
            let stats = &stats;
            async move {
                let verdict = match &there {
                    None => Verdict::copy("missing on the destination"),
                    Some(d) => judge(src_store, &meta, dst_store, d, opts, stats)
                        .await
                        .unwrap_or_else(|e| Verdict {
                            copy: true,
                            reason: format!("could not be compared ({e}): copied to be sure"),
                        }),
                };
                (spec, meta, verdict)
            }
        })
        .buffered(opts.requests.max(1))
        .collect::<Vec<_>>()
        .await;
    for (spec, meta, v) in judged {
        out.decisions.push(Decision {
            action: if v.copy { Action::Copy } else { Action::Skip },
            src: Some(spec.src.to_string()),
            dst: spec.dst.to_string(),
            reason: v.reason,
        });
        if v.copy {
            out.copies.push((spec, meta));
        }
    }
    if opts.delete {
        for (key, meta) in theirs {
            let loc = dst.with_key(key);
            out.decisions.push(Decision {
                action: Action::Delete,
                src: None,
                dst: loc.to_string(),
                reason: "not in the source".into(),
            });
            out.deletes.push((loc, meta));
        }
    }
    out.decisions.sort_by(|a, b| a.dst.cmp(&b.dst));
    Ok(out)
}

struct Verdict {
    copy: bool,
    reason: String,
}

impl Verdict {
    fn copy(reason: &str) -> Self {
        Self {
            copy: true,
            reason: reason.into(),
        }
    }
    fn sizes_differ(src: u64, dst: u64) -> Self {
        Self::copy(&format!(
            "sizes differ ({src} bytes, the destination {dst})"
        ))
    }
    fn by(same: bool, what: &str) -> Self {
        Self {
            copy: !same,
            reason: if same {
                format!("same size and {what}")
            } else {
                format!("{what} differs")
            },
        }
    }
}

fn composite(crc: &Option<String>) -> Option<&str> {
    crc.as_deref().filter(|c| c.contains('-'))
}

/// An ETag of the form S3 gives an unencrypted object: 32 hex digits (an MD5), or that and
/// `-N` for a multipart object.
fn md5_etag(etag: &Option<String>) -> Option<&str> {
    let e = etag.as_deref()?.trim().trim_matches('"');
    let digest = e.split_once('-').map_or(e, |(d, n)| {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            d
        } else {
            ""
        }
    });
    (digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(e)
}

/// The part size barge recorded on an object it uploaded in parts.
fn recorded_part_size(m: &ObjectMeta) -> Option<u64> {
    m.attrs
        .user_metadata
        .get(META_PART_SIZE)
        .and_then(|v| v.trim().parse().ok())
        .filter(|p| *p > 0)
}

async fn judge(
    src_store: &dyn Store,
    listed_src: &ObjectMeta,
    dst_store: &dyn Store,
    listed_dst: &ObjectMeta,
    opts: &SyncOptions,
    stats: &RetryStats,
) -> std::result::Result<Verdict, StoreError> {
    if listed_src.size != listed_dst.size {
        return Ok(Verdict::sizes_differ(listed_src.size, listed_dst.size));
    }
    match opts.compare {
        Compare::SizeOnly => {
            return Ok(Verdict {
                copy: false,
                reason: "same size (--size-only)".into(),
            });
        }
        Compare::SizeAndTime => {
            let newer = match (listed_src.last_modified, listed_dst.last_modified) {
                (Some(s), Some(d)) => s > d,
                _ => true,
            };
            return Ok(if newer {
                Verdict::copy("the source is newer (--size-and-time)")
            } else {
                Verdict {
                    copy: false,
                    reason: "same size, the destination no older (--size-and-time)".into(),
                }
            });
        }
        Compare::Checksum => {}
    }
    // Equal MD5 ETags in the listings are equal content (a multipart ETag, MD5 of the parts'
    // MD5s with `-N`, only where the parts were the same too): no stat needed. Unequal ones
    // say nothing (other part sizes, encryption), so the checksums below decide.
    if opts.listed_etags
        && let (Some(a), Some(b)) = (md5_etag(&listed_src.etag), md5_etag(&listed_dst.etag))
        && a == b
    {
        return Ok(Verdict::by(true, "MD5 ETag"));
    }
    // Listings carry no checksums or metadata: a stat of each side does.
    let (s, d) = futures::try_join!(
        retry(&opts.retry, stats, "stat of the source", || {
            src_store.head(&listed_src.path)
        }),
        retry(&opts.retry, stats, "stat of the destination", || {
            dst_store.head(&listed_dst.path)
        }),
    )?;
    if s.size != d.size {
        return Ok(Verdict::sizes_differ(s.size, d.size));
    }
    if let (Some(a), Some(b)) = (full_crc(&s.crc32c), full_crc(&d.crc32c)) {
        return Ok(Verdict::by(a == b, "CRC32C"));
    }
    if let (Some(a), Some(b)) = (&s.crc32c, d.attrs.user_metadata.get(META_SOURCE_CRC32C)) {
        return Ok(Verdict::by(
            a.trim() == b.trim(),
            "the source's CRC32C barge recorded when it copied it",
        ));
    }
    if let (Some(a), Some(b)) = (composite(&s.crc32c), composite(&d.crc32c))
        && a == b
    {
        return Ok(Verdict::by(true, "composite CRC32C"));
    }
    // Read what must be read. A side that keeps a composite of parts whose size barge
    // recorded is matched by reading the other side in parts of that size; else each side
    // without a full-object CRC32C is read whole.
    if let (Some(k), Some(p)) = (composite(&d.crc32c), recorded_part_size(&d))
        && let (_, Some(c)) = read(src_store, &s, Some(p), &opts.retry, stats).await?
    {
        return Ok(Verdict::by(
            c == k,
            "CRC32C (source read in the destination's parts)",
        ));
    }
    if let (Some(k), Some(p)) = (composite(&s.crc32c), recorded_part_size(&s))
        && let (_, Some(c)) = read(dst_store, &d, Some(p), &opts.retry, stats).await?
    {
        return Ok(Verdict::by(
            c == k,
            "CRC32C (destination read in the source's parts)",
        ));
    }
    let s_full = full_crc(&s.crc32c).map(str::to_string);
    let d_full = full_crc(&d.crc32c).map(str::to_string);
    let a = match s_full {
        Some(a) => a,
        None => crc32c_b64(read(src_store, &s, None, &opts.retry, stats).await?.0),
    };
    let b = match d_full {
        Some(b) => b,
        None => crc32c_b64(read(dst_store, &d, None, &opts.retry, stats).await?.0),
    };
    Ok(Verdict::by(a == b, "CRC32C (read)"))
}

async fn read(
    store: &dyn Store,
    meta: &ObjectMeta,
    part_size: Option<u64>,
    policy: &RetryPolicy,
    stats: &RetryStats,
) -> std::result::Result<(u32, Option<String>), StoreError> {
    let what = format!("read of {} to compare it", meta.path);
    retry(policy, stats, &what, || {
        crate::finalize::read_crcs(store, meta, part_size)
    })
    .await
}

/// A delete that was not made, and why.
#[derive(Clone, Debug, Serialize)]
pub struct NotDeleted {
    pub dst: String,
    pub reason: String,
}

/// How many of `n` deletes `--max-delete` allows (all without it).
pub fn allowed_deletes(n: usize, max: Option<u64>) -> usize {
    max.map_or(n, |m| usize::try_from(m).unwrap_or(usize::MAX).min(n))
}

/// Delete the destination objects without a source, at most `max` of them (in key order),
/// each only while it is still the object the listing saw (its version or ETag). Returns the
/// objects deleted and those not deleted, with why.
pub async fn delete_extra(
    dst_store: &dyn Store,
    deletes: &[(Location, ObjectMeta)],
    max: Option<u64>,
    opts: &SyncOptions,
) -> (Vec<String>, Vec<NotDeleted>) {
    let stats = RetryStats::default();
    let (now, refused) = deletes.split_at(allowed_deletes(deletes.len(), max));
    let done = stream::iter(now)
        .map(|(loc, meta)| {
            let stats = &stats;
            async move {
                let what = format!("delete of {loc}");
                let pin = Pin::of(meta);
                let r = retry(&opts.retry, stats, &what, || {
                    dst_store.delete_pinned(&meta.path, &pin)
                })
                .await;
                (loc.to_string(), r)
            }
        })
        .buffered(opts.requests.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut deleted = Vec::new();
    let mut not = Vec::new();
    for (dst, r) in done {
        match r {
            Ok(()) => deleted.push(dst),
            Err(StoreError::SourceChanged { .. }) => not.push(NotDeleted {
                dst,
                reason: "changed since it was listed: kept".into(),
            }),
            Err(StoreError::NotFound { .. }) => deleted.push(dst),
            Err(e) => not.push(NotDeleted {
                dst,
                reason: e.to_string(),
            }),
        }
    }
    for (loc, _) in refused {
        not.push(NotDeleted {
            dst: loc.to_string(),
            reason: format!(
                "--max-delete {} reached: not deleted",
                max.unwrap_or_default()
            ),
        });
    }
    (deleted, not)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_delete_bounds_the_deletes() {
        assert_eq!(allowed_deletes(5, None), 5);
        assert_eq!(allowed_deletes(5, Some(2)), 2);
        assert_eq!(allowed_deletes(5, Some(0)), 0);
        assert_eq!(allowed_deletes(5, Some(u64::MAX)), 5);
        assert_eq!(allowed_deletes(0, Some(3)), 0);
    }

    #[test]
    fn only_md5_shaped_etags_are_compared() {
        let e = |s: &str| Some(s.to_string());
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        assert_eq!(md5_etag(&e(md5)), Some("9e107d9d372bb6826bd81d3542a419d6"));
        assert!(md5_etag(&e("\"9e107d9d372bb6826bd81d3542a419d6-12\"")).is_some());
        for not in [
            "\"9e107d9d372bb6826bd81d3542a419d6-\"",
            "\"9e107d9d372bb6826bd81d3542a419d6-x\"",
            "\"0000000a\"",
            "\"9e107d9d372bb6826bd81d3542a419zz\"",
            "",
        ] {
            assert_eq!(md5_etag(&e(not)), None, "{not}");
        }
        assert_eq!(md5_etag(&None), None);
    }
}
