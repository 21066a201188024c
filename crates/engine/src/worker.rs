//! Workers: move one part (or one small whole object) and return its receipt.
//!
//! A part is plain data (file, upload, number, byte range); what comes back is plain data too.
//! Nothing here knows about other parts, so any worker, on any machine, can move any part.

use std::sync::Arc;

use barge_store::checksum::{crc32c, crc32c_b64, same_checksum};
use barge_store::{PartReceipt, PartSpec, PutReceipt, Store, StoreError, UploadRef};
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::bwlimit::Duplex;
use crate::finalize::full_crc;
use crate::plan::{FilePlan, Strategy};
use crate::retry::{RetryPolicy, RetryStats, retry};

/// Memory a streamed part holds at once (its write batch plus chunks in flight).
const STREAM_BUFFER: u64 = 2 * 1024 * 1024;

/// What every worker shares: the limits on requests and on buffered bytes, and the counters.
pub struct Limits {
    /// Parts (requests) in flight across all files.
    pub requests: Semaphore,
    /// At most the requests of both kinds in flight: where each store's gate starts.
    gate_max: usize,
    /// `--bwlimit`: bytes read from sources, and bytes written to destinations, per second.
    bwlimit: Option<Duplex>,
    /// Whole objects (one request each way) in flight. A small object's move is mostly waiting
    /// on two round trips, not on bandwidth: many more of them run at once than parts.
    pub objects: Semaphore,
    /// Buffered part data, in KiB.
    pub memory_kib: Semaphore,
    pub retry: RetryPolicy,
    pub stats: RetryStats,
    /// Part buffers handed back after their upload, reused by the next reads: no fresh
    /// allocation (and page faults) per part, and resident memory stays near the live buffers.
    /// Idle buffers are not counted by `memory_kib`: the pool keeps at most a quarter of the
    /// budget, so in-flight plus idle stays within the budget plus a small constant.
    pool: std::sync::Mutex<Vec<bytes::BytesMut>>,
    pool_max_bytes: usize,
}

impl Limits {
    /// `concurrency` parts and `objects` whole objects in flight, `max_memory` of their data.
    pub fn new(concurrency: usize, objects: usize, max_memory: u64, retry: RetryPolicy) -> Self {
        // The budget and each request are counted alike, rounded up to whole KiB: a request no
        // larger than the budget always fits (rounding the budget down once left a part of
        // exactly the budget's size waiting for ever).
        let kib = u64::from(Self::kib(max_memory)) as usize;
        Self {
            requests: Semaphore::new(concurrency.clamp(1, Semaphore::MAX_PERMITS)),
            gate_max: concurrency.saturating_add(objects),
            bwlimit: None,
            objects: Semaphore::new(objects.clamp(1, Semaphore::MAX_PERMITS)),
            memory_kib: Semaphore::new(kib),
            retry,
            stats: RetryStats::default(),
            pool: std::sync::Mutex::new(Vec::new()),
            pool_max_bytes: (max_memory / 4) as usize,
        }
    }

    /// Hold reads and writes each to `rate` bytes per second (`--bwlimit`).
    pub fn with_bwlimit(mut self, rate: Option<u64>) -> Self {
        self.bwlimit = rate.map(Duplex::new);
        self
    }

    /// Wait until `n` more bytes may be read.
    async fn read_paced(&self, n: u64) {
        if let Some(bw) = &self.bwlimit {
            bw.read(n).await;
        }
    }

    /// Wait until `n` more bytes may be written.
    async fn write_paced(&self, n: u64) {
        if let Some(bw) = &self.bwlimit {
            bw.write(n).await;
        }
    }

    fn take_buffer(&self) -> bytes::BytesMut {
        self.pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Give a part's bytes back for reuse, if nothing else still holds them.
    fn give_back(&self, data: Bytes) {
        if let Ok(buf) = data.try_into_mut() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let pooled: usize = pool.iter().map(|b| b.capacity()).sum();
            if pooled + buf.capacity() <= self.pool_max_bytes {
                pool.push(buf);
            }
        }
    }

    /// Make `request` under the gates of `src` and `dst` (see `throttle`): it waits for room
    /// under what a throttling store lowered, and an answer without throttling opens the gates
    /// a little. A local store never throttles, and its gate stays open.
    async fn gated<T>(
        &self,
        src: &dyn Store,
        dst: &dyn Store,
        request: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let gate = |name: &str| self.stats.gates.gate(name, self.gate_max);
        // Always in name order: two files moving in opposite directions never each hold one
        // gate while waiting for the other's.
        let (first, second) = if src.name() <= dst.name() {
            (src.name(), dst.name())
        } else {
            (dst.name(), src.name())
        };
        let a = gate(first).enter().await;
        let b = if first == second {
            None
        } else {
            Some(gate(second).enter().await)
        };
        let r = request.await;
        if r.is_ok() {
            a.clean();
            if let Some(b) = &b {
                b.clean();
            }
        }
        r
    }

    fn kib(len: u64) -> u32 {
        len.div_ceil(1024).clamp(1, u64::from(u32::MAX)) as u32
    }
}

fn closed() -> StoreError {
    StoreError::Permanent {
        store: "barge".into(),
        op: "scheduling".into(),
        detail: "the run was shut down".into(),
    }
}

/// Read a byte range of the planned source version, within the memory budget; returns the
/// bytes and their CRC32C.
async fn read_range(
    limits: &Limits,
    src: &dyn Store,
    plan: &FilePlan,
    offset: u64,
    len: u64,
) -> Result<(Bytes, u32), StoreError> {
    limits.read_paced(len).await;
    let what = format!("read of {} bytes {offset}+{len}", plan.src);
    let data = retry(&limits.retry, &limits.stats, &what, || {
        src.get_range_into(&plan.src.path, &plan.pin, offset, len, limits.take_buffer())
    })
    .await?;
    Ok(data)
}

/// Move one part of a multipart plan. `read` is called once the part's bytes are in hand, if
/// they are buffered before they are written (a streamed or server-side part reads until done).
pub async fn move_part(
    limits: &Limits,
    src: &Arc<dyn Store>,
    dst: &Arc<dyn Store>,
    plan: &FilePlan,
    upload: &UploadRef,
    part: PartSpec,
    read: impl FnOnce(),
) -> Result<PartReceipt, StoreError> {
    let _req = limits.requests.acquire().await.map_err(|_| closed())?;
    let request = move_part_within(limits, src, dst, plan, upload, part, read);
    limits.gated(src.as_ref(), dst.as_ref(), request).await
}

async fn move_part_within(
    limits: &Limits,
    src: &Arc<dyn Store>,
    dst: &Arc<dyn Store>,
    plan: &FilePlan,
    upload: &UploadRef,
    part: PartSpec,
    read: impl FnOnce(),
) -> Result<PartReceipt, StoreError> {
    match plan.strategy {
        Strategy::ServerPartCopy => {
            let what = format!("copy of part {} of {}", part.number, plan.dst);
            retry(&limits.retry, &limits.stats, &what, || {
                dst.copy_part(upload, &part, &plan.src.path, &plan.pin)
            })
            .await
        }
        _ if dst.capabilities().streams_parts => {
            // The destination writes chunks as they arrive: no part-sized buffer, one CRC pass.
            let _mem = limits
                .memory_kib
                .acquire_many(Limits::kib(STREAM_BUFFER.min(part.len)))
                .await
                .map_err(|_| closed())?;
            // Read and written at once.
            if let Some(bw) = &limits.bwlimit {
                bw.both(part.len).await;
            }
            let what = format!(
                "copy of part {} of {} to {}",
                part.number, plan.src, plan.dst
            );
            let r = retry(&limits.retry, &limits.stats, &what, || async {
                let chunks = src
                    .get_range_stream(&plan.src.path, &plan.pin, part.offset, part.len)
                    .await?;
                dst.upload_part_stream(upload, &part, chunks).await
            })
            .await?;
            Ok(r)
        }
        _ => {
            let _mem = limits
                .memory_kib
                .acquire_many(Limits::kib(part.len))
                .await
                .map_err(|_| closed())?;
            let (data, crc) = read_range(limits, src.as_ref(), plan, part.offset, part.len).await?;
            read();
            limits.write_paced(part.len).await;
            let what = format!("upload of part {} of {}", part.number, plan.dst);
            let r = retry(&limits.retry, &limits.stats, &what, || {
                dst.upload_part(upload, &part, data.clone(), Some(crc))
            })
            .await;
            limits.give_back(data);
            r
        }
    }
}

/// A whole object moved in one request.
pub struct MovedWhole {
    pub receipt: PutReceipt,
    /// The CRC32C of the bytes, where they passed through barge.
    pub crc: Option<u32>,
    /// The source reported the CRC32C it keeps for the object with its bytes, and they matched.
    pub source_crc_matched: bool,
}

/// Move a whole small object in one request.
pub async fn move_whole(
    limits: &Limits,
    src: &Arc<dyn Store>,
    dst: &Arc<dyn Store>,
    plan: &FilePlan,
) -> Result<MovedWhole, StoreError> {
    let _req = limits.objects.acquire().await.map_err(|_| closed())?;
    let request = move_whole_within(limits, src, dst, plan);
    limits.gated(src.as_ref(), dst.as_ref(), request).await
}

async fn move_whole_within(
    limits: &Limits,
    src: &Arc<dyn Store>,
    dst: &Arc<dyn Store>,
    plan: &FilePlan,
) -> Result<MovedWhole, StoreError> {
    if plan.strategy == Strategy::ServerCopy {
        let what = format!("server-side copy to {}", plan.dst);
        let r = retry(&limits.retry, &limits.stats, &what, || {
            // Planned from a listing: the store copies the source's attributes itself.
            let attrs = (!plan.attrs_pending).then_some(&plan.attrs);
            dst.copy_object(&plan.src.path, &plan.pin, &plan.dst.path, attrs)
        })
        .await?;
        return Ok(MovedWhole {
            receipt: r,
            crc: None,
            source_crc_matched: false,
        });
    }
    let _mem = limits
        .memory_kib
        .acquire_many(Limits::kib(plan.size))
        .await
        .map_err(|_| closed())?;
    let mut source_crc_matched = false;
    let (data, attrs, crc) = if plan.attrs_pending && plan.size > 0 {
        // One GET brings the bytes, the metadata and the CRC32C the source keeps, if it keeps
        // one for the whole object: bytes that differ from it are read again.
        limits.read_paced(plan.size).await;
        let what = format!("read of {}", plan.src);
        let (meta, data, crc) = retry(&limits.retry, &limits.stats, &what, || async {
            let (meta, data) = src.get(&plan.src.path, &plan.pin).await?;
            let crc = crc32c(&data);
            if let Some(kept) = full_crc(&meta.crc32c)
                && !same_checksum(kept, &crc32c_b64(crc))
            {
                return Err(StoreError::Transient {
                    store: src.name().to_string(),
                    op: "GetObject".into(),
                    detail: format!(
                        "{}: the bytes read have CRC32C {}, the store keeps {kept} for them",
                        plan.src.path,
                        crc32c_b64(crc)
                    ),
                });
            }
            Ok((meta, data, crc))
        })
        .await?;
        if meta.size != plan.size {
            return Err(StoreError::SourceChanged {
                store: src.name().to_string(),
                path: plan.src.path.to_string(),
            });
        }
        source_crc_matched = full_crc(&meta.crc32c).is_some();
        (data, meta.attrs, crc)
    } else if plan.attrs_pending {
        // Empty: a stat is the only way to its metadata.
        let what = format!("stat of {}", plan.src);
        let meta = retry(&limits.retry, &limits.stats, &what, || {
            src.head(&plan.src.path)
        })
        .await?;
        (Bytes::new(), meta.attrs, crc32c(&[]))
    } else {
        let (data, crc) = read_range(limits, src.as_ref(), plan, 0, plan.size).await?;
        (data, plan.attrs.clone(), crc)
    };
    limits.write_paced(plan.size).await;
    let what = format!("upload of {}", plan.dst);
    let r = retry(&limits.retry, &limits.stats, &what, || {
        dst.put(&plan.dst.path, data.clone(), &attrs, Some(crc))
    })
    .await?;
    Ok(MovedWhole {
        receipt: r,
        crc: Some(crc),
        source_crc_matched,
    })
}
