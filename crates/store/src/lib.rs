//! Object store backends for barge.
//!
//! The engine talks to every store through the small [`Store`] trait. What a backend can do beyond
//! the basics (server-side part copy, per-part checksums, versions, metadata) is declared in its
//! [`Capabilities`], so the planner can choose a strategy without knowing which backend it has.
//!
//! Backends live one per folder: [`s3`] (any S3-compatible service, through `aws-sdk-s3`),
//! [`local`] (the local file system) and [`memory`] (an in-process store for fast engine tests).
//! Every backend passes the same [`conformance`] suite.

mod aligned;
pub mod azure;
pub mod checksum;
pub mod conformance;
mod error;
pub mod gcs;
mod http;
pub mod local;
pub mod memory;
pub mod s3;
mod tls;
mod uploads;

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

pub use error::{Result, StoreError};
pub use http::HttpOptions;

/// Chunks of an object's bytes, as they arrive.
pub type ByteChunks = BoxStream<'static, Result<Bytes>>;

/// A bucket and a key. For the local file system the bucket is empty and the key is a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectPath {
    pub bucket: String,
    pub key: String,
}

impl ObjectPath {
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bucket.is_empty() {
            write!(f, "{}", self.key)
        } else {
            write!(f, "{}/{}", self.bucket, self.key)
        }
    }
}

/// The standard headers and user metadata that travel with an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectAttrs {
    pub content_type: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    /// The `Expires` header as the store returned it (an HTTP date).
    pub expires: Option<String>,
    pub user_metadata: BTreeMap<String, String>,
    /// Object tags (S3's tagging), where the store keeps them and they were read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<(String, String)>,
}

/// What a stat of an object returns.
#[derive(Clone, Debug)]
pub struct ObjectMeta {
    pub path: ObjectPath,
    pub size: u64,
    /// The store's entity tag (quotes included, as S3 sends it), or a synthetic one.
    pub etag: Option<String>,
    pub version_id: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub attrs: ObjectAttrs,
    /// A CRC32C the store reports for the whole object: `base64` for a full-object checksum,
    /// `base64-N` for a composite of N parts.
    pub crc32c: Option<String>,
}

/// What a listing found: the objects, and the entries under the prefix that are not objects
/// barge copies (a local symlink or device, a temporary file of an unfinished download), each
/// with why, so that nothing is left out without a word.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub objects: Vec<ObjectMeta>,
    pub skipped: Vec<SkippedEntry>,
}

/// An entry a listing passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedEntry {
    pub path: String,
    pub reason: String,
}

impl From<Vec<ObjectMeta>> for Listing {
    fn from(objects: Vec<ObjectMeta>) -> Self {
        Self {
            objects,
            skipped: Vec::new(),
        }
    }
}

/// The version of a source that a transfer planned with. Every read is pinned to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

impl Pin {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            etag: meta.etag.clone(),
            version_id: meta.version_id.clone(),
        }
    }
}

/// An open multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRef {
    pub path: ObjectPath,
    pub upload_id: String,
}

/// One part of a multipart upload: plain data, so it can be journaled and handed to any worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartSpec {
    /// 1-based part number.
    pub number: u32,
    pub offset: u64,
    pub len: u64,
}

/// What the store answered for a part: the receipt the completion needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReceipt {
    pub number: u32,
    pub etag: String,
    pub len: u64,
    /// The CRC32C of the part's bytes as base64, when one was sent or reported.
    pub crc32c: Option<String>,
}

/// A multipart upload that is open on the store.
#[derive(Clone, Debug)]
pub struct PendingUpload {
    pub upload: UploadRef,
    pub initiated: Option<SystemTime>,
}

/// What the store answered for a finished object.
#[derive(Clone, Debug, Default)]
pub struct PutReceipt {
    pub etag: Option<String>,
    pub version_id: Option<String>,
    /// The CRC32C the store computed and acknowledged for what it stored, when it says.
    pub crc32c: Option<String>,
}

/// Which checksum barge sends with each part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChecksumMode {
    /// Send a CRC32C with every part and whole-object write (`x-amz-checksum-crc32c`).
    #[default]
    Crc32c,
    /// Send no additional checksum: for stores that reject them. Sizes are still verified.
    Off,
}

/// What a backend can do. The planner reads these; it never asks which backend it has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `copy_part` and `copy_object` work between two stores with the same `service_identity`.
    pub server_side_copy: bool,
    /// Per-part CRC32C is accepted (and a wrong one rejected).
    pub part_checksums: bool,
    /// Objects carry version ids that reads can be pinned to.
    pub versions: bool,
    /// Content-Type, user metadata and the other standard headers are kept.
    pub metadata: bool,
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    /// The largest object a single PUT can write.
    pub max_single_put: u64,
    /// The largest object one server-side whole-object copy (`copy_object`) can write.
    pub max_single_copy: u64,
    /// `copy_part` copies byte ranges server-side (S3's UploadPartCopy). Without it, a
    /// server-side copy is one `copy_object` of any size up to `max_single_copy`.
    pub copies_parts: bool,
    /// The largest object the store accepts, if it says.
    pub max_object_size: Option<u64>,
    /// `list_parts` reports the parts an upload holds (a file cannot: the journal is the record).
    pub lists_parts: bool,
    /// `upload_part_stream` writes chunks as they arrive (no part-sized buffer): a file can,
    /// S3 needs the whole part first to send its checksum.
    pub streams_parts: bool,
}

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

impl Capabilities {
    /// The limits of S3 and most S3-compatible services.
    pub fn s3() -> Self {
        Self {
            server_side_copy: true,
            part_checksums: true,
            versions: true,
            metadata: true,
            min_part_size: 5 * MIB,
            max_part_size: 5 * GIB,
            max_parts: 10_000,
            max_single_put: 5 * GIB,
            max_single_copy: 5 * GIB,
            copies_parts: true,
            max_object_size: None,
            lists_parts: true,
            streams_parts: false,
        }
    }
}

/// Where a store's objects live: what tells two spellings of one object apart. Two connections
/// with equal endpoints (after the engine resolves host names) reach the same objects, whatever
/// their names or credentials.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The local file system: a key is a path.
    Local,
    /// AWS S3 itself: bucket names are global.
    Aws,
    /// A service at `scheme://host[:port]`, as the connection names it.
    Url(String),
    /// Objects only this store instance holds (in-process stores).
    Instance(String),
}

/// What every backend implements. Small on purpose: a new backend is one folder and one impl.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// The connection name, for messages.
    fn name(&self) -> &str;

    fn capabilities(&self) -> &Capabilities;

    /// Two stores whose identities are equal (same service, same credentials) can copy between each
    /// other server-side. `None` means never.
    fn service_identity(&self) -> Option<&str>;

    /// Where this store's objects live (see [`Endpoint`]).
    fn endpoint(&self) -> Endpoint;

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta>;

    /// Every object under `prefix` in `bucket` (for the local store: every file under a folder),
    /// and what was passed over.
    async fn list(&self, bucket: &str, prefix: &str) -> Result<Listing>;

    /// Bytes `[offset, offset + len)` of the object, failing with [`StoreError::SourceChanged`]
    /// when the object no longer matches `pin`.
    async fn get_range(&self, path: &ObjectPath, pin: &Pin, offset: u64, len: u64)
    -> Result<Bytes>;

    /// A whole object and its metadata, pinned, in as few requests as the store allows (S3: one
    /// GET). The default stats, then reads.
    async fn get(&self, path: &ObjectPath, pin: &Pin) -> Result<(ObjectMeta, Bytes)> {
        let meta = self.head(path).await?;
        if pin.etag.is_some() && pin.etag != meta.etag {
            return Err(StoreError::SourceChanged {
                store: self.name().to_string(),
                path: path.to_string(),
            });
        }
        let data = self.get_range(path, pin, 0, meta.size).await?;
        Ok((meta, data))
    }

    /// Like `get_range`, reading into `buf` (a reused part buffer) where the backend can, and
    /// returning the bytes' CRC32C as well. Backends compute it piece by piece as the bytes
    /// arrive, while each piece is still in the CPU cache: a separate pass over a whole part
    /// afterwards reads it back from memory, which costs about as much as the copy itself.
    async fn get_range_into(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
        _buf: bytes::BytesMut,
    ) -> Result<(Bytes, u32)> {
        let data = self.get_range(path, pin, offset, len).await?;
        let crc = checksum::crc32c(&data);
        Ok((data, crc))
    }

    /// Bytes `[offset, offset + len)` as they arrive, pinned like `get_range`. The default reads
    /// the whole range first.
    async fn get_range_stream(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<ByteChunks> {
        let data = self.get_range(path, pin, offset, len).await?;
        Ok(Box::pin(futures::stream::once(async move { Ok(data) })))
    }

    /// Write one part from chunks as they arrive; the receipt carries the CRC32C of what was
    /// written. The default gathers the part, then uploads it.
    async fn upload_part_stream(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        mut chunks: ByteChunks,
    ) -> Result<PartReceipt> {
        use futures::StreamExt;
        let mut buf = bytes::BytesMut::with_capacity(part.len as usize);
        while let Some(c) = chunks.next().await {
            buf.extend_from_slice(&c?);
        }
        let data = buf.freeze();
        let crc = checksum::crc32c(&data);
        self.upload_part(upload, part, data, Some(crc)).await
    }

    /// Write a whole object in one request.
    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> Result<PutReceipt>;

    /// Server-side copy of a whole object (at most `max_single_put` bytes), with `attrs`, or
    /// with the source's own attributes where `attrs` is `None` (S3's `MetadataDirective: COPY`:
    /// no stat of the source needed to keep them).
    async fn copy_object(
        &self,
        _src: &ObjectPath,
        _pin: &Pin,
        _dst: &ObjectPath,
        _attrs: Option<&ObjectAttrs>,
    ) -> Result<PutReceipt> {
        Err(StoreError::Unsupported {
            store: self.name().to_string(),
            what: "server-side copy".into(),
        })
    }

    async fn create_upload(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        checksums: ChecksumMode,
    ) -> Result<UploadRef>;

    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<PartReceipt>;

    /// Server-side copy of `part`'s byte range of `src` into `upload`.
    async fn copy_part(
        &self,
        _upload: &UploadRef,
        _part: &PartSpec,
        _src: &ObjectPath,
        _pin: &Pin,
    ) -> Result<PartReceipt> {
        Err(StoreError::Unsupported {
            store: self.name().to_string(),
            what: "server-side part copy".into(),
        })
    }

    /// Complete an upload from the receipts, sorted by part number.
    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt>;

    async fn abort_upload(&self, upload: &UploadRef) -> Result<()>;

    /// The parts the store holds for an upload.
    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>>;

    /// The numbers of `parts` whose bytes the upload still holds as their receipts say. A store
    /// that lists parts (`lists_parts`) keeps its own record, checked with `list_parts`; one that
    /// does not (a file, where a crash can leave a recorded range unwritten) reads each part
    /// back and compares its CRC32C. The default takes the receipts as they are.
    async fn check_parts(
        &self,
        _upload: &UploadRef,
        parts: &[(PartSpec, PartReceipt)],
    ) -> Result<Vec<u32>> {
        Ok(parts.iter().map(|(_, r)| r.number).collect())
    }

    /// Open multipart uploads under a prefix.
    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>>;

    /// Delete exactly one key (and version, when given). Never a prefix.
    async fn delete(&self, path: &ObjectPath, version_id: Option<&str>) -> Result<()>;

    /// Delete exactly the object `pin` names, and nothing that replaced it: by its version id
    /// where it has one; else only while the key still holds the pinned ETag (checked first,
    /// and sent as a condition of the delete where the store takes one). A key rewritten since
    /// fails with [`StoreError::SourceChanged`] and is left as it is.
    /// The object's tags, for a copy to carry them: empty where the store keeps none.
    async fn tags(&self, _path: &ObjectPath) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    async fn delete_pinned(&self, path: &ObjectPath, pin: &Pin) -> Result<()> {
        if let Some(v) = pin.version_id.as_deref().filter(|v| !v.is_empty()) {
            return self.delete(path, Some(v)).await;
        }
        let now = self.head(path).await?;
        if pin.etag.is_none() || now.etag != pin.etag {
            return Err(StoreError::SourceChanged {
                store: self.name().to_string(),
                path: path.to_string(),
            });
        }
        self.delete(path, None).await
    }
}
