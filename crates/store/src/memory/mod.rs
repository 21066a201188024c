//! An in-process store with S3's rules, for fast tests of the engine.
//!
//! It counts the object bytes it serves, can fail a number of requests on purpose, can
//! overwrite an object after a number of reads, and can make its uploads take time (counting how
//! many run at once), so tests can prove what the engine does about throttling, sources that
//! change and how many requests it keeps in flight. It is never the only proof that a feature
//! works against S3: the same conformance suite runs against a real S3 server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::checksum::{composite_crc32c, crc32c, crc32c_b64, crc32c_from_b64};
use crate::{
    Capabilities, ChecksumMode, ObjectAttrs, ObjectMeta, ObjectPath, PartReceipt, PartSpec,
    PendingUpload, Pin, PutReceipt, Result, Store, StoreError, UploadRef,
};

#[derive(Clone, Debug)]
struct Obj {
    data: Bytes,
    etag: String,
    attrs: ObjectAttrs,
    crc32c: String,
    modified: SystemTime,
}

#[derive(Debug)]
struct Upload {
    path: ObjectPath,
    attrs: ObjectAttrs,
    parts: BTreeMap<u32, (Bytes, String, u32)>,
    initiated: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    buckets: BTreeMap<String, BTreeMap<String, Obj>>,
    uploads: HashMap<String, Upload>,
    /// After this many more reads of the path, replace its content.
    overwrite: Option<(ObjectPath, u32, Bytes)>,
}

/// Requests of one kind under way, and the most that ever were at once.
#[derive(Debug, Default)]
pub struct InFlight {
    now: AtomicU64,
    pub most: AtomicU64,
}

impl InFlight {
    fn enter(&self) -> Entered<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        Entered(self)
    }
}

struct Entered<'a>(&'a InFlight);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    name: String,
    identity: String,
    caps: Capabilities,
    state: Mutex<State>,
    counter: AtomicU64,
    /// Object bytes served by `get_range`.
    pub bytes_read: AtomicU64,
    /// The next N data requests fail with a transient error.
    pub fail_next: AtomicU32,
    /// How long each `put` and `upload_part` takes (zero: no wait).
    upload_time: Duration,
    /// Whole-object PUTs under way.
    pub puts: InFlight,
    /// Part uploads under way.
    pub part_uploads: InFlight,
    /// What the next `complete_upload` does wrong (test set-up).
    pub completion_fault: Mutex<Option<CompletionFault>>,
}

/// A fault of the next completion, for the engine's rules on vanished uploads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionFault {
    /// The object is completed, but the answer is lost (a 503 instead): the retry then finds
    /// no upload.
    LoseAnswer,
    /// Someone else aborts the upload just before the completion (`barge cleanup`, a
    /// lifecycle rule).
    AbortedElsewhere,
    /// The completion is refused as S3 refuses one whose listed part was uploaded again since
    /// (InvalidPart); the upload stays open.
    InvalidPart,
}

impl MemoryStore {
    pub fn new(name: &str, buckets: &[&str]) -> Self {
        let mut state = State::default();
        for b in buckets {
            state.buckets.insert((*b).to_string(), BTreeMap::new());
        }
        Self {
            name: name.to_string(),
            identity: format!("memory:{}", uuid::Uuid::new_v4()),
            caps: Capabilities::s3(),
            state: Mutex::new(state),
            counter: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            fail_next: AtomicU32::new(0),
            upload_time: Duration::ZERO,
            puts: InFlight::default(),
            part_uploads: InFlight::default(),
            completion_fault: Mutex::new(None),
        }
    }

    /// Every `put` and `upload_part` takes `d`, as over a network with that round trip.
    pub fn with_upload_time(mut self, d: Duration) -> Self {
        self.upload_time = d;
        self
    }

    async fn take_upload_time(&self) {
        if !self.upload_time.is_zero() {
            tokio::time::sleep(self.upload_time).await;
        }
    }

    /// The same store under another connection name (same identity: server-side copies work).
    pub fn with_limits(mut self, caps: Capabilities) -> Self {
        self.caps = caps;
        self
    }

    /// Replace `path`'s content after `reads` more ranged reads of it.
    pub fn overwrite_after(&self, path: ObjectPath, reads: u32, data: Bytes) {
        self.lock().overwrite = Some((path, reads, data));
    }

    /// Put an object directly (test set-up).
    pub fn insert(&self, path: &ObjectPath, data: Bytes, attrs: ObjectAttrs) {
        let obj = self.make_obj(data, attrs, None);
        let mut st = self.lock();
        st.buckets
            .entry(path.bucket.clone())
            .or_default()
            .insert(path.key.clone(), obj);
    }

    /// Replace an object's bytes in place, keeping its ETag and the checksum it was stored with
    /// (test set-up: data that rotted on the store).
    pub fn corrupt(&self, path: &ObjectPath, data: Bytes) {
        if let Some(o) = self
            .lock()
            .buckets
            .get_mut(&path.bucket)
            .and_then(|b| b.get_mut(&path.key))
        {
            o.data = data;
        }
    }

    pub fn get(&self, path: &ObjectPath) -> Option<Bytes> {
        let st = self.lock();
        st.buckets
            .get(&path.bucket)
            .and_then(|b| b.get(&path.key))
            .map(|o| o.data.clone())
    }

    pub fn open_uploads(&self) -> usize {
        self.lock().uploads.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves the state as it was: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn make_obj(&self, data: Bytes, attrs: ObjectAttrs, crc: Option<String>) -> Obj {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let crc = crc.unwrap_or_else(|| crc32c_b64(crc32c(&data)));
        Obj {
            etag: format!("\"{:08x}-{n}\"", crc32c(&data)),
            data,
            attrs,
            crc32c: crc,
            modified: SystemTime::now(),
        }
    }

    fn maybe_fail(&self, op: &str) -> Result<()> {
        let left = self.fail_next.load(Ordering::SeqCst);
        if left > 0
            && self
                .fail_next
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(StoreError::Transient {
                store: self.name.clone(),
                op: op.into(),
                detail: "HTTP 503 SlowDown: injected".into(),
            });
        }
        Ok(())
    }

    fn no_bucket(&self, bucket: &str) -> StoreError {
        StoreError::NoSuchBucket {
            store: self.name.clone(),
            bucket: bucket.to_string(),
        }
    }

    fn read_pinned(&self, st: &mut State, path: &ObjectPath, pin: &Pin) -> Result<Obj> {
        if let Some((p, reads, data)) = st.overwrite.take() {
            if &p == path && reads == 0 {
                let obj = self.make_obj(data, ObjectAttrs::default(), None);
                st.buckets
                    .entry(p.bucket.clone())
                    .or_default()
                    .insert(p.key.clone(), obj);
            } else if &p == path {
                st.overwrite = Some((p, reads - 1, data));
            } else {
                st.overwrite = Some((p, reads, data));
            }
        }
        let bucket = st
            .buckets
            .get(&path.bucket)
            .ok_or_else(|| self.no_bucket(&path.bucket))?;
        let obj = bucket.get(&path.key).ok_or_else(|| StoreError::NotFound {
            store: self.name.clone(),
            path: path.to_string(),
        })?;
        if pin.etag.as_ref().is_some_and(|e| e != &obj.etag) {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            });
        }
        Ok(obj.clone())
    }

    fn no_upload(&self, upload: &UploadRef) -> StoreError {
        StoreError::NoSuchUpload {
            store: self.name.clone(),
            path: upload.path.to_string(),
            upload_id: upload.upload_id.clone(),
        }
    }

    fn check_crc(&self, data: &[u8], crc: Option<u32>, what: &str) -> Result<u32> {
        let actual = crc32c(data);
        if crc.is_some_and(|c| c != actual) {
            return Err(StoreError::Permanent {
                store: self.name.clone(),
                op: what.into(),
                detail: "BadDigest: the CRC32C sent does not match the data".into(),
            });
        }
        Ok(actual)
    }
}

fn slice(data: &Bytes, offset: u64, len: u64) -> Option<Bytes> {
    let end = offset.checked_add(len)?;
    if end > data.len() as u64 {
        return None;
    }
    Some(data.slice(offset as usize..end as usize))
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn service_identity(&self) -> Option<&str> {
        Some(&self.identity)
    }

    fn endpoint(&self) -> crate::Endpoint {
        crate::Endpoint::Instance(self.identity.clone())
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let st = self.lock();
        let bucket = st
            .buckets
            .get(&path.bucket)
            .ok_or_else(|| self.no_bucket(&path.bucket))?;
        let obj = bucket.get(&path.key).ok_or_else(|| StoreError::NotFound {
            store: self.name.clone(),
            path: path.to_string(),
        })?;
        Ok(ObjectMeta {
            path: path.clone(),
            size: obj.data.len() as u64,
            etag: Some(obj.etag.clone()),
            version_id: None,
            last_modified: Some(obj.modified),
            attrs: obj.attrs.clone(),
            crc32c: Some(obj.crc32c.clone()),
        })
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<crate::Listing> {
        let st = self.lock();
        let b = st
            .buckets
            .get(bucket)
            .ok_or_else(|| self.no_bucket(bucket))?;
        Ok(b.range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectMeta {
                path: ObjectPath::new(bucket, k.clone()),
                size: o.data.len() as u64,
                etag: Some(o.etag.clone()),
                version_id: None,
                last_modified: Some(o.modified),
                attrs: ObjectAttrs::default(),
                crc32c: None,
            })
            .collect::<Vec<_>>()
            .into())
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        self.maybe_fail("GetObject")?;
        let mut st = self.lock();
        let obj = self.read_pinned(&mut st, path, pin)?;
        let data = slice(&obj.data, offset, len).ok_or_else(|| StoreError::Permanent {
            store: self.name.clone(),
            op: "GetObject".into(),
            detail: format!("{path}: range {offset}+{len} is past the end"),
        })?;
        self.bytes_read.fetch_add(len, Ordering::Relaxed);
        Ok(data)
    }

    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> Result<PutReceipt> {
        let _under_way = self.puts.enter();
        self.take_upload_time().await;
        self.maybe_fail("PutObject")?;
        self.check_crc(&data, crc32c, "PutObject")?;
        let obj = self.make_obj(data, attrs.clone(), None);
        let etag = obj.etag.clone();
        let mut st = self.lock();
        let b = st
            .buckets
            .get_mut(&path.bucket)
            .ok_or_else(|| self.no_bucket(&path.bucket))?;
        b.insert(path.key.clone(), obj);
        Ok(PutReceipt {
            etag: Some(etag),
            version_id: None,
            crc32c: None,
        })
    }

    async fn copy_object(
        &self,
        src: &ObjectPath,
        pin: &Pin,
        dst: &ObjectPath,
        attrs: Option<&ObjectAttrs>,
    ) -> Result<PutReceipt> {
        self.maybe_fail("CopyObject")?;
        let mut st = self.lock();
        let obj = self.read_pinned(&mut st, src, pin)?;
        let attrs = attrs.cloned().unwrap_or(obj.attrs);
        let new = self.make_obj(obj.data, attrs, None);
        let etag = new.etag.clone();
        let b = st
            .buckets
            .get_mut(&dst.bucket)
            .ok_or_else(|| self.no_bucket(&dst.bucket))?;
        b.insert(dst.key.clone(), new);
        Ok(PutReceipt {
            etag: Some(etag),
            version_id: None,
            crc32c: None,
        })
    }

    async fn create_upload(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        _checksums: ChecksumMode,
    ) -> Result<UploadRef> {
        let mut st = self.lock();
        if !st.buckets.contains_key(&path.bucket) {
            return Err(self.no_bucket(&path.bucket));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        st.uploads.insert(
            id.clone(),
            Upload {
                path: path.clone(),
                attrs: attrs.clone(),
                parts: BTreeMap::new(),
                initiated: SystemTime::now(),
            },
        );
        Ok(UploadRef {
            path: path.clone(),
            upload_id: id,
        })
    }

    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<PartReceipt> {
        let _under_way = self.part_uploads.enter();
        self.take_upload_time().await;
        self.maybe_fail("UploadPart")?;
        let crc = self.check_crc(&data, crc32c, "UploadPart")?;
        let etag = format!(
            "\"{crc:08x}-{}\"",
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let len = data.len() as u64;
        let mut st = self.lock();
        let up = st
            .uploads
            .get_mut(&upload.upload_id)
            .ok_or_else(|| self.no_upload(upload))?;
        up.parts.insert(part.number, (data, etag.clone(), crc));
        Ok(PartReceipt {
            number: part.number,
            etag,
            len,
            crc32c: crc32c.map(crc32c_b64),
        })
    }

    async fn copy_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        src: &ObjectPath,
        pin: &Pin,
    ) -> Result<PartReceipt> {
        self.maybe_fail("UploadPartCopy")?;
        let mut st = self.lock();
        let obj = self.read_pinned(&mut st, src, pin)?;
        let data =
            slice(&obj.data, part.offset, part.len).ok_or_else(|| StoreError::Permanent {
                store: self.name.clone(),
                op: "UploadPartCopy".into(),
                detail: format!("{src}: range past the end"),
            })?;
        let crc = crc32c(&data);
        let etag = format!(
            "\"{crc:08x}-{}\"",
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let up = st
            .uploads
            .get_mut(&upload.upload_id)
            .ok_or_else(|| self.no_upload(upload))?;
        up.parts.insert(part.number, (data, etag.clone(), crc));
        Ok(PartReceipt {
            number: part.number,
            etag,
            len: part.len,
            crc32c: Some(crc32c_b64(crc)),
        })
    }

    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt> {
        self.maybe_fail("CompleteMultipartUpload")?;
        let fault = self
            .completion_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if fault == Some(CompletionFault::AbortedElsewhere) {
            self.lock().uploads.remove(&upload.upload_id);
        }
        if fault == Some(CompletionFault::InvalidPart) {
            return Err(StoreError::Permanent {
                store: self.name.clone(),
                op: "CompleteMultipartUpload".into(),
                detail: "HTTP 400 InvalidPart: a part changed since it was listed (injected)"
                    .into(),
            });
        }
        let mut st = self.lock();
        let up = st
            .uploads
            .get(&upload.upload_id)
            .ok_or_else(|| self.no_upload(upload))?;
        let mut buf = BytesMut::new();
        let mut crcs = Vec::new();
        let mut last = 0;
        for (i, p) in parts.iter().enumerate() {
            let invalid = |detail: String| StoreError::Permanent {
                store: self.name.clone(),
                op: "CompleteMultipartUpload".into(),
                detail,
            };
            if p.number <= last {
                return Err(invalid("InvalidPartOrder".into()));
            }
            last = p.number;
            let (data, etag, crc) = up
                .parts
                .get(&p.number)
                .ok_or_else(|| invalid(format!("InvalidPart: part {} not uploaded", p.number)))?;
            if etag != &p.etag {
                return Err(invalid(format!(
                    "InvalidPart: part {} ETag mismatch",
                    p.number
                )));
            }
            if let Some(c) = p.crc32c.as_deref().and_then(crc32c_from_b64)
                && c != *crc
            {
                return Err(invalid(format!(
                    "InvalidPart: part {} checksum mismatch",
                    p.number
                )));
            }
            if i + 1 < parts.len() && (data.len() as u64) < self.caps.min_part_size {
                return Err(invalid("EntityTooSmall".into()));
            }
            buf.extend_from_slice(data);
            crcs.push(*crc);
        }
        let up = st
            .uploads
            .remove(&upload.upload_id)
            .ok_or_else(|| self.no_upload(upload))?;
        let obj = self.make_obj(buf.freeze(), up.attrs, Some(composite_crc32c(&crcs)));
        let etag = obj.etag.clone();
        st.buckets
            .entry(up.path.bucket.clone())
            .or_default()
            .insert(up.path.key.clone(), obj);
        if fault == Some(CompletionFault::LoseAnswer) {
            return Err(StoreError::Transient {
                store: self.name.clone(),
                op: "CompleteMultipartUpload".into(),
                detail: "the answer was lost (injected)".into(),
            });
        }
        Ok(PutReceipt {
            etag: Some(etag),
            version_id: None,
            crc32c: None,
        })
    }

    async fn abort_upload(&self, upload: &UploadRef) -> Result<()> {
        self.lock().uploads.remove(&upload.upload_id);
        Ok(())
    }

    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>> {
        let st = self.lock();
        let up = st
            .uploads
            .get(&upload.upload_id)
            .ok_or_else(|| self.no_upload(upload))?;
        Ok(up
            .parts
            .iter()
            .map(|(n, (d, e, c))| PartReceipt {
                number: *n,
                etag: e.clone(),
                len: d.len() as u64,
                crc32c: Some(crc32c_b64(*c)),
            })
            .collect())
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>> {
        let st = self.lock();
        Ok(st
            .uploads
            .iter()
            .filter(|(_, u)| u.path.bucket == bucket && u.path.key.starts_with(prefix))
            .map(|(id, u)| PendingUpload {
                upload: UploadRef {
                    path: u.path.clone(),
                    upload_id: id.clone(),
                },
                initiated: Some(u.initiated),
            })
            .collect())
    }

    async fn delete(&self, path: &ObjectPath, _version_id: Option<&str>) -> Result<()> {
        let mut st = self.lock();
        if let Some(b) = st.buckets.get_mut(&path.bucket) {
            b.remove(&path.key);
        }
        Ok(())
    }
}
