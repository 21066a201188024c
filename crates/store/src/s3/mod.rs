//! Any S3-compatible service, through `aws-sdk-s3`.
//!
//! Retries are left to the engine (the SDK makes one attempt per call), so that every retry is
//! counted, logged and bounded in one place.

mod config;
mod endpoint;
mod errors;
mod lean;
pub(crate) mod proxy;

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, DateTime, DateTimeFormat};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode as S3ChecksumMode, ChecksumType, CompletedMultipartUpload,
    CompletedPart, MetadataDirective, ObjectCannedAcl, ServerSideEncryption, StorageClass,
    TaggingDirective,
};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::checksum::{crc32c_append, crc32c_b64};
use crate::{
    Capabilities, ChecksumMode, ObjectAttrs, ObjectMeta, ObjectPath, PartReceipt, PartSpec,
    PendingUpload, Pin, PutReceipt, Result, Store, StoreError, UploadRef,
};

pub use config::{CredentialSource, S3Config, Secret, Sse, SseCKey, WriteOptions};
use errors::{body_error, map_sdk_error};

/// A connection to one S3-compatible endpoint with one set of credentials.
#[derive(Debug)]
pub struct S3Store {
    name: String,
    client: Client,
    caps: Capabilities,
    identity: Option<String>,
    endpoint: crate::Endpoint,
    checksum: ChecksumMode,
    /// Whole small objects without the SDK's per-request machinery (plain HTTP endpoints).
    lean: Option<lean::Lean>,
    /// What every write asks for: storage class, encryption, ACL, tags.
    write: WriteOptions,
    /// SSE-C: the key every object of this connection is written and read with.
    sse_c: Option<SseCKey>,
    /// The store answered that it has no tagging: tags are not asked for again.
    no_tagging: std::sync::atomic::AtomicBool,
}

/// Characters that must be escaped in an `x-amz-copy-source` key, and in a key's URL path on
/// the lean path (S3's URI encoding, which SigV4 signs as is): everything but unreserved
/// characters and the path separator.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn copy_source(src: &ObjectPath, pin: &Pin) -> String {
    let mut s = format!(
        "{}/{}",
        src.bucket,
        utf8_percent_encode(&src.key, COPY_SOURCE)
    );
    if let Some(v) = &pin.version_id {
        s.push_str("?versionId=");
        s.push_str(&utf8_percent_encode(v, COPY_SOURCE).to_string());
    }
    s
}

/// Set the standard headers and user metadata on any request builder that takes them.
macro_rules! with_attrs {
    ($req:expr, $attrs:expr) => {
        $req.set_content_type($attrs.content_type.clone())
            .set_cache_control($attrs.cache_control.clone())
            .set_content_disposition($attrs.content_disposition.clone())
            .set_content_encoding($attrs.content_encoding.clone())
            .set_content_language($attrs.content_language.clone())
            .set_expires(parse_expires(&$attrs.expires))
            .set_metadata(user_metadata($attrs))
            .set_tagging(encode_tags(&$attrs.tags))
    };
}

/// Tags as S3's `x-amz-tagging` header wants them: URL query form.
fn encode_tags(tags: &[(String, String)]) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    Some(
        tags.iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// A request on an SSE-C connection's object carries its key.
macro_rules! with_ssec {
    ($req:expr, $k:expr) => {{
        let k: &Option<SseCKey> = $k;
        $req.set_sse_customer_algorithm(k.as_ref().map(|_| "AES256".to_string()))
            .set_sse_customer_key(k.as_ref().map(|k| k.key.expose().to_string()))
            .set_sse_customer_key_md5(k.as_ref().map(|k| k.md5.clone()))
    }};
}

/// A server-side copy from an SSE-C object: the source's key (the same connection's: two
/// connections with other keys never copy server-side).
macro_rules! with_copy_ssec {
    ($req:expr, $k:expr) => {{
        let k: &Option<SseCKey> = $k;
        $req.set_copy_source_sse_customer_algorithm(k.as_ref().map(|_| "AES256".to_string()))
            .set_copy_source_sse_customer_key(k.as_ref().map(|k| k.key.expose().to_string()))
            .set_copy_source_sse_customer_key_md5(k.as_ref().map(|k| k.md5.clone()))
    }};
}

/// A write request (PutObject, CreateMultipartUpload, CopyObject: they share these setters)
/// with the connection's write options.
macro_rules! with_write {
    ($req:expr, $w:expr) => {{
        let w: &WriteOptions = $w;
        let (sse, key, ctx) = match &w.sse {
            None => (None, None, None),
            Some(Sse::S3) => (Some(ServerSideEncryption::Aes256), None, None),
            Some(Sse::Kms { key_id, context }) => (
                Some(ServerSideEncryption::AwsKms),
                key_id.clone(),
                context.as_deref().map(|c| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(c)
                }),
            ),
        };
        let req = $req
            .set_storage_class(w.storage_class.as_deref().map(StorageClass::from))
            .set_server_side_encryption(sse)
            .set_ssekms_key_id(key)
            .set_ssekms_encryption_context(ctx)
            .set_acl(w.acl.as_deref().map(ObjectCannedAcl::from));
        // Tags the connection sets replace the object's own.
        match encode_tags(&w.tags) {
            Some(t) => req.tagging(t),
            None => req,
        }
    }};
}

/// An `ObjectMeta` from a HeadObject or GetObject answer (they share these accessors).
macro_rules! object_meta {
    ($out:expr, $path:expr) => {
        ObjectMeta {
            path: $path.clone(),
            size: $out.content_length().unwrap_or(0).max(0) as u64,
            etag: $out.e_tag().map(str::to_string),
            version_id: $out
                .version_id()
                .filter(|v| !v.is_empty() && *v != "null")
                .map(str::to_string),
            last_modified: to_system_time($out.last_modified()),
            crc32c: $out.checksum_crc32_c().map(str::to_string),
            attrs: ObjectAttrs {
                content_type: $out.content_type().map(str::to_string),
                cache_control: $out.cache_control().map(str::to_string),
                content_disposition: $out.content_disposition().map(str::to_string),
                content_encoding: $out.content_encoding().map(str::to_string),
                content_language: $out.content_language().map(str::to_string),
                expires: $out.expires_string().map(str::to_string),
                user_metadata: $out
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                tags: Vec::new(),
            },
        }
    };
}

/// A key from a listing sent with `encoding-type=url`: percent-escapes decoded, `+` a space (as
/// S3 encodes it, and as the AWS CLI and boto3 decode it).
fn url_decode_key(raw: &str) -> Option<String> {
    let plus_as_space = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// Whether an answer to a ranged GET holds the range asked for: a `Content-Range` of exactly
/// `bytes OFFSET-LAST/TOTAL`, or (a server that ignores ranges) none, for a read from the start
/// whose length is the body's. What is wrong, if it is not.
pub(crate) fn range_answer_problem(
    content_range: Option<&str>,
    offset: u64,
    len: u64,
) -> Option<String> {
    let Some(got) = content_range else {
        return (offset != 0).then(|| {
            format!("the answer to a read of bytes {offset}+{len} names no Content-Range")
        });
    };
    let last = offset.saturating_add(len).saturating_sub(1);
    let want = format!("bytes {offset}-{last}/");
    match got.trim().strip_prefix(&want) {
        Some(total) if total == "*" || total.parse::<u64>().is_ok_and(|t| t > last) => None,
        _ => Some(format!(
            "the answer's Content-Range is {got:?} where bytes {offset}-{last} were asked"
        )),
    }
}

fn range_header(offset: u64, len: u64) -> String {
    format!("bytes={}-{}", offset, offset + len - 1)
}

fn to_system_time(t: Option<&DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn parse_expires(s: &Option<String>) -> Option<DateTime> {
    s.as_deref()
        .and_then(|v| DateTime::from_str(v, DateTimeFormat::HttpDate).ok())
}

fn user_metadata(attrs: &ObjectAttrs) -> Option<HashMap<String, String>> {
    if attrs.user_metadata.is_empty() {
        None
    } else {
        Some(
            attrs
                .user_metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

impl S3Store {
    pub async fn connect(cfg: S3Config) -> Result<Self> {
        let config::Built {
            client,
            identity,
            lean,
        } = config::build_client(&cfg).await?;
        let mut caps = Capabilities::s3();
        caps.part_checksums = cfg.checksum == ChecksumMode::Crc32c;
        if let Some(max) = cfg.max_object_size {
            caps.max_object_size = Some(max);
        }
        let endpoint = match &cfg.endpoint {
            Some(url) => crate::Endpoint::Url(url.clone()),
            None => crate::Endpoint::Aws,
        };
        Ok(Self {
            name: cfg.name,
            client,
            caps,
            identity,
            endpoint,
            checksum: cfg.checksum,
            lean,
            write: cfg.write,
            sse_c: cfg.sse_c,
            no_tagging: Default::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether whole small objects go through the lean path (endpoints the connection names,
    /// `http://` or `https://`) rather than the SDK.
    pub fn uses_lean_path(&self) -> bool {
        self.lean.is_some()
    }

    /// Whether ranged GETs are read from the socket by hand (the lean path, while the server's
    /// answers allow it) rather than by the SDK.
    pub fn reads_ranges_by_hand(&self) -> bool {
        self.lean.as_ref().is_some_and(|l| l.reads_ranges_by_hand())
    }

    /// A whole object's answer: the bytes must be as many as the answer said.
    fn whole(
        &self,
        path: &ObjectPath,
        meta: ObjectMeta,
        data: Bytes,
    ) -> Result<(ObjectMeta, Bytes)> {
        if data.len() as u64 != meta.size {
            return Err(StoreError::Transient {
                store: self.name.clone(),
                op: "GetObject".into(),
                detail: format!("{path}: expected {} bytes, got {}", meta.size, data.len()),
            });
        }
        Ok((meta, data))
    }

    fn crc_header(&self, crc32c: Option<u32>) -> Option<String> {
        match self.checksum {
            ChecksumMode::Crc32c if !self.write.crc64nvme => crc32c.map(crc32c_b64),
            _ => None,
        }
    }

    /// The CRC64NVME header of a body, on a connection that sends those instead of CRC32Cs
    /// (one more pass over bytes already in memory).
    fn crc64_header(&self, data: &[u8]) -> Option<String> {
        (self.write.crc64nvme && self.checksum == ChecksumMode::Crc32c).then(|| {
            use base64::Engine as _;
            let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
            base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
        })
    }

    fn err<E>(
        &self,
        op: &str,
        path: &ObjectPath,
        e: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        map_sdk_error(&self.name, op, path, e)
    }

    /// A store that ignores server-side encryption headers (Garage does) still answers 200: a
    /// write asked to be encrypted is taken as done only when the answer says it was.
    fn check_sse(
        &self,
        op: &str,
        path: &ObjectPath,
        got: Option<&ServerSideEncryption>,
    ) -> Result<()> {
        let want = match &self.write.sse {
            None => return Ok(()),
            Some(Sse::S3) => "AES256",
            Some(Sse::Kms { .. }) => "aws:kms",
        };
        // `aws:kms:dsse` is KMS too.
        if got.is_some_and(|g| g.as_str().starts_with(want)) {
            return Ok(());
        }
        Err(StoreError::Permanent {
            store: self.name.clone(),
            op: op.into(),
            detail: format!(
                "{path}: server-side encryption {want} was asked, and the store's answer does not say it encrypted the object so ({}): it may not support server-side encryption, and nothing is kept. Drop --sse (or the connection's sse) for this store",
                got.map_or("no encryption named", |g| g.as_str())
            ),
        })
    }

    /// The error of a write, naming the write options where the store refused the request:
    /// a store without storage classes, KMS or ACLs answers 400, 403 or 501.
    fn write_err<E>(
        &self,
        op: &str,
        path: &ObjectPath,
        e: aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
    ) -> StoreError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let mut err = self.err(op, path, e);
        if !self.write.is_default() {
            let note = format!(
                " (this connection writes with {}: the store may not support them; change the connection's settings or the flags that set them)",
                self.write.describe()
            );
            match &mut err {
                StoreError::Permanent { detail, .. } | StoreError::AccessDenied { detail, .. } => {
                    detail.push_str(&note)
                }
                _ => {}
            }
        }
        err
    }
}

#[async_trait]
impl Store for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn service_identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    fn endpoint(&self) -> crate::Endpoint {
        self.endpoint.clone()
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let req = self
            .client
            .head_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .checksum_mode(S3ChecksumMode::Enabled);
        let out = with_ssec!(req, &self.sse_c).send().await;
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let err = self.err("HeadObject", path, e);
                // A HEAD answers a bare 404 for a missing bucket too: say which one it is.
                if let StoreError::NotFound { .. } = err
                    && self
                        .client
                        .head_bucket()
                        .bucket(&path.bucket)
                        .send()
                        .await
                        .is_err_and(|e| {
                            e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
                        })
                {
                    return Err(StoreError::NoSuchBucket {
                        store: self.name.clone(),
                        bucket: path.bucket.clone(),
                    });
                }
                return Err(err);
            }
        };
        Ok(object_meta!(out, path))
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<crate::Listing> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            // Keys come back URL-encoded: a key with a character XML 1.0 cannot carry (a
            // control character) would otherwise break the whole listing.
            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        let at = ObjectPath::new(bucket, prefix);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("ListObjectsV2", &at, e))?;
            // A server that ignored the request sends keys as they are.
            let encoded = page.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
            for o in page.contents() {
                let Some(raw) = o.key() else { continue };
                let key = if encoded {
                    url_decode_key(raw).ok_or_else(|| StoreError::Permanent {
                        store: self.name.clone(),
                        op: "ListObjectsV2".into(),
                        detail: format!(
                            "the listing of {at} holds a key that is not valid URL-encoded UTF-8: {raw:?}"
                        ),
                    })?
                } else {
                    raw.to_string()
                };
                out.push(ObjectMeta {
                    path: ObjectPath::new(bucket, key),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                    version_id: None,
                    last_modified: to_system_time(o.last_modified()),
                    attrs: ObjectAttrs::default(),
                    crc32c: None,
                });
            }
        }
        Ok(out.into())
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        // Copy the body's chunks straight into one buffer of the part's size: no second copy,
        // so buffered data stays within the memory budget the engine reserved for it. The
        // stream checks the length.
        Ok(self
            .get_range_into(path, pin, offset, len, BytesMut::new())
            .await?
            .0)
    }

    async fn get_range_into(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
        mut buf: BytesMut,
    ) -> Result<(Bytes, u32)> {
        buf.clear();
        // The lean path: the body read from the socket straight into the buffer.
        if let Some(lean) = &self.lean
            && len > 0
            && let Some(crc) = lean
                .get_range_into(path, pin, offset, len, &mut buf)
                .await?
        {
            return Ok((buf.freeze(), crc));
        }
        buf.reserve(len as usize);
        let mut crc = 0;
        let mut chunks = self.get_range_stream(path, pin, offset, len).await?;
        while let Some(chunk) = futures::StreamExt::next(&mut chunks).await {
            let chunk = chunk?;
            crc = crc32c_append(crc, &chunk);
            buf.extend_from_slice(&chunk);
        }
        Ok((buf.freeze(), crc))
    }

    async fn tags(&self, path: &ObjectPath) -> Result<Vec<(String, String)>> {
        if self.no_tagging.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        match self
            .client
            .get_object_tagging()
            .bucket(&path.bucket)
            .key(&path.key)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .tag_set()
                .iter()
                .map(|t| (t.key().to_string(), t.value().to_string()))
                .collect()),
            Err(e) => match self.err("GetObjectTagging", path, e) {
                // A store without tagging (Garage answers 501) has none to copy: not asked
                // again.
                StoreError::Unsupported { .. } => {
                    self.no_tagging
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Ok(Vec::new())
                }
                // A connection not allowed to read them copies the object without them, and
                // says so.
                e @ (StoreError::Permanent { .. } | StoreError::AccessDenied { .. }) => {
                    tracing::warn!("{path}: its tags are not copied: {e}");
                    Ok(Vec::new())
                }
                e => Err(e),
            },
        }
    }

    async fn get(&self, path: &ObjectPath, pin: &Pin) -> Result<(ObjectMeta, Bytes)> {
        if let Some(lean) = &self.lean {
            let (mut meta, data, tag_count) = lean.get(path, pin).await?;
            if tag_count > 0 {
                meta.attrs.tags = self.tags(path).await?;
            }
            return self.whole(path, meta, data);
        }
        let req = self
            .client
            .get_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .set_if_match(pin.etag.clone())
            .set_version_id(pin.version_id.clone())
            .checksum_mode(S3ChecksumMode::Enabled);
        let out = with_ssec!(req, &self.sse_c)
            .send()
            .await
            .map_err(|e| self.err("GetObject", path, e))?;
        let mut meta = object_meta!(out, path);
        if out.tag_count().is_some_and(|n| n > 0) {
            meta.attrs.tags = self.tags(path).await?;
        }
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| body_error(&self.name, "GetObject", path, &e))?
            .into_bytes();
        self.whole(path, meta, data)
    }

    async fn get_range_stream(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<crate::ByteChunks> {
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        // The lean path: each chunk read from the socket into an aligned window of its own.
        if let Some(lean) = &self.lean
            && let Some(chunks) = lean.get_range_chunks(path, pin, offset, len).await?
        {
            return Ok(chunks);
        }
        let req = self
            .client
            .get_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .range(range_header(offset, len))
            .set_if_match(pin.etag.clone())
            .set_version_id(pin.version_id.clone());
        let out = with_ssec!(req, &self.sse_c)
            .send()
            .await
            .map_err(|e| self.err("GetObject", path, e))?;
        if let Some(why) = range_answer_problem(out.content_range(), offset, len) {
            return Err(StoreError::Transient {
                store: self.name.clone(),
                op: "GetObject".into(),
                detail: format!("{path}: {why}"),
            });
        }
        // State: the body, the bytes seen so far, and the names an error would carry (moved
        // along, not cloned per chunk); `None` once an error was yielded.
        let names = (self.name.clone(), path.clone());
        let chunks =
            futures::stream::unfold(Some((out.body, 0u64, names)), move |state| async move {
                let (mut body, seen, (name, shown)) = state?;
                let fail = |detail: String| StoreError::Transient {
                    store: name.clone(),
                    op: "GetObject".into(),
                    detail: format!("{shown}: {detail}"),
                };
                match body.next().await {
                    Some(Ok(chunk)) => {
                        let seen = seen + chunk.len() as u64;
                        if seen > len {
                            return Some((
                                Err(fail("the answer is longer than asked".into())),
                                None,
                            ));
                        }
                        Some((Ok(chunk), Some((body, seen, (name, shown)))))
                    }
                    Some(Err(e)) => Some((Err(body_error(&name, "GetObject", &shown, &e)), None)),
                    None if seen < len => Some((
                        Err(fail(format!(
                            "the answer ended after {seen} of {len} bytes"
                        ))),
                        None,
                    )),
                    None => None,
                }
            });
        Ok(Box::pin(chunks))
    }

    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> Result<PutReceipt> {
        let crc = self.crc_header(crc32c);
        // The lean path sends no tags.
        if let (Some(lean), Some(crc), true) = (&self.lean, &crc, attrs.tags.is_empty()) {
            return lean.put(path, data, attrs, crc).await;
        }
        let len = data.len() as i64;
        let crc64 = self.crc64_header(&data);
        let signed = crc.is_none() && crc64.is_none();
        let req = self
            .client
            .put_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .content_length(len)
            .body(ByteStream::from(data))
            .set_checksum_crc32_c(crc)
            .set_checksum_crc64_nvme(crc64);
        let req = with_ssec!(
            with_write!(with_attrs!(req, attrs), &self.write),
            &self.sse_c
        );
        // With a CRC32C the store checks every byte itself: hashing the body again for the
        // signature only costs CPU.
        let out = if signed {
            req.send().await
        } else {
            req.customize().disable_payload_signing().send().await
        }
        .map_err(|e| self.write_err("PutObject", path, e))?;
        if let Err(e) = self.check_sse("PutObject", path, out.server_side_encryption()) {
            // Not what was asked: the object barge wrote goes.
            self.delete(path, out.version_id()).await.ok();
            return Err(e);
        }
        Ok(PutReceipt {
            etag: out.e_tag().map(str::to_string),
            version_id: out.version_id().map(str::to_string),
            crc32c: out.checksum_crc32_c().map(str::to_string),
        })
    }

    async fn copy_object(
        &self,
        src: &ObjectPath,
        pin: &Pin,
        dst: &ObjectPath,
        attrs: Option<&ObjectAttrs>,
    ) -> Result<PutReceipt> {
        let req = self
            .client
            .copy_object()
            .bucket(&dst.bucket)
            .key(&dst.key)
            .copy_source(copy_source(src, pin))
            .set_copy_source_if_match(pin.etag.clone());
        let req = match attrs {
            Some(attrs) => with_attrs!(req.metadata_directive(MetadataDirective::Replace), attrs),
            None => req.metadata_directive(MetadataDirective::Copy),
        };
        let req = with_copy_ssec!(with_ssec!(req, &self.sse_c), &self.sse_c);
        // Tags the connection sets replace the source's; else the store copies them.
        let req = with_write!(req, &self.write).set_tagging_directive(
            (!self.write.tags.is_empty()).then_some(TaggingDirective::Replace),
        );
        let out = req
            .send()
            .await
            .map_err(|e| self.write_err("CopyObject", src, e))?;
        if let Err(e) = self.check_sse("CopyObject", dst, out.server_side_encryption()) {
            self.delete(dst, out.version_id()).await.ok();
            return Err(e);
        }
        // An error can hide inside a 200 answer: a result without an ETag is not a copy.
        let etag = out.copy_object_result().and_then(|r| r.e_tag());
        if etag.is_none() {
            return Err(StoreError::Transient {
                store: self.name.clone(),
                op: "CopyObject".into(),
                detail: format!("{src} -> {dst}: the answer carried no copy result"),
            });
        }
        Ok(PutReceipt {
            etag: etag.map(str::to_string),
            version_id: out.version_id().map(str::to_string),
            crc32c: None,
        })
    }

    async fn create_upload(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        checksums: ChecksumMode,
    ) -> Result<UploadRef> {
        let algo = match (checksums, self.checksum) {
            // CRC64NVME objects are always of the full-object type.
            (ChecksumMode::Crc32c, ChecksumMode::Crc32c) if self.write.crc64nvme => {
                Some(ChecksumAlgorithm::Crc64Nvme)
            }
            (ChecksumMode::Crc32c, ChecksumMode::Crc32c) => Some(ChecksumAlgorithm::Crc32C),
            _ => None,
        };
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&path.bucket)
            .key(&path.key)
            .set_checksum_type(
                (algo.is_some() && (self.write.full_object_checksum || self.write.crc64nvme))
                    .then_some(ChecksumType::FullObject),
            )
            .set_checksum_algorithm(algo);
        let out = with_ssec!(
            with_write!(with_attrs!(req, attrs), &self.write),
            &self.sse_c
        )
        .send()
        .await
        .map_err(|e| self.write_err("CreateMultipartUpload", path, e))?;
        let upload_id = out.upload_id().ok_or_else(|| StoreError::Permanent {
            store: self.name.clone(),
            op: "CreateMultipartUpload".into(),
            detail: format!("{path}: the answer carried no upload id"),
        })?;
        if let Err(e) = self.check_sse("CreateMultipartUpload", path, out.server_side_encryption())
        {
            let up = UploadRef {
                path: path.clone(),
                upload_id: upload_id.to_string(),
            };
            self.abort_upload(&up).await.ok();
            return Err(e);
        }
        Ok(UploadRef {
            path: path.clone(),
            upload_id: upload_id.to_string(),
        })
    }

    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<PartReceipt> {
        let len = data.len() as u64;
        let crc = self.crc_header(crc32c);
        let crc64 = self.crc64_header(&data);
        let checked = crc.is_some() || crc64.is_some();
        let out = self
            .client
            .upload_part()
            .bucket(&upload.path.bucket)
            .key(&upload.path.key)
            .upload_id(&upload.upload_id)
            .part_number(part.number as i32)
            .content_length(len as i64)
            .body(ByteStream::from(data))
            .set_checksum_crc32_c(crc.clone())
            .set_checksum_crc64_nvme(crc64);
        let out = with_ssec!(out, &self.sse_c);
        // The store checks the checksum: no need to hash the body for the signature too.
        let out = if checked {
            out.customize().disable_payload_signing().send().await
        } else {
            out.send().await
        }
        .map_err(|e| self.err("UploadPart", &upload.path, e))?;
        let etag = out.e_tag().ok_or_else(|| StoreError::Transient {
            store: self.name.clone(),
            op: "UploadPart".into(),
            detail: format!(
                "{}: part {} answer carried no ETag",
                upload.path, part.number
            ),
        })?;
        Ok(PartReceipt {
            number: part.number,
            etag: etag.to_string(),
            len,
            crc32c: crc,
        })
    }

    async fn copy_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        src: &ObjectPath,
        pin: &Pin,
    ) -> Result<PartReceipt> {
        let out = self
            .client
            .upload_part_copy()
            .bucket(&upload.path.bucket)
            .key(&upload.path.key)
            .upload_id(&upload.upload_id)
            .part_number(part.number as i32)
            .copy_source(copy_source(src, pin))
            .copy_source_range(range_header(part.offset, part.len))
            .set_copy_source_if_match(pin.etag.clone());
        let out = with_copy_ssec!(with_ssec!(out, &self.sse_c), &self.sse_c)
            .send()
            .await
            .map_err(|e| self.err("UploadPartCopy", src, e))?;
        // UploadPartCopy can answer 200 with an error in the body: no result, no ETag, no part.
        let result = out.copy_part_result();
        let etag = result
            .and_then(|r| r.e_tag())
            .ok_or_else(|| StoreError::Transient {
                store: self.name.clone(),
                op: "UploadPartCopy".into(),
                detail: format!(
                    "{}: part {} answer carried no copy result",
                    upload.path, part.number
                ),
            })?;
        Ok(PartReceipt {
            number: part.number,
            etag: etag.to_string(),
            len: part.len,
            crc32c: result
                .and_then(|r| r.checksum_crc32_c())
                .map(str::to_string),
        })
    }

    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt> {
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number as i32)
                    .e_tag(&p.etag)
                    .set_checksum_crc32_c(match self.checksum {
                        ChecksumMode::Crc32c => p.crc32c.clone(),
                        ChecksumMode::Off => None,
                    })
                    .build()
            })
            .collect();
        // A full-object checksum is given at completion: the parts' CRC32Cs combined.
        let full = (self.write.full_object_checksum
            && !self.write.crc64nvme
            && self.checksum == ChecksumMode::Crc32c)
            .then(|| {
                parts
                    .iter()
                    .map(|p| {
                        p.crc32c
                            .as_deref()
                            .and_then(crate::checksum::crc32c_from_b64)
                            .map(|c| (c, p.len))
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .flatten()
            .map(|c| crc32c_b64(crate::checksum::combine_crc32c(&c)));
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&upload.path.bucket)
            .key(&upload.path.key)
            .upload_id(&upload.upload_id)
            .set_checksum_type(full.as_ref().map(|_| ChecksumType::FullObject))
            .set_checksum_crc32_c(full)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        let out = with_ssec!(out, &self.sse_c)
            .send()
            .await
            .map_err(|e| self.err("CompleteMultipartUpload", &upload.path, e))?;
        Ok(PutReceipt {
            etag: out.e_tag().map(str::to_string),
            version_id: out.version_id().map(str::to_string),
            crc32c: out.checksum_crc32_c().map(str::to_string),
        })
    }

    async fn abort_upload(&self, upload: &UploadRef) -> Result<()> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&upload.path.bucket)
            .key(&upload.path.key)
            .upload_id(&upload.upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.err("AbortMultipartUpload", &upload.path, e) {
                // Already gone is what we wanted.
                StoreError::NoSuchUpload { .. } | StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&upload.path.bucket)
                .key(&upload.path.key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.clone());
            let page = with_ssec!(page, &self.sse_c)
                .send()
                .await
                .map_err(|e| self.err("ListParts", &upload.path, e))?;
            for p in page.parts() {
                out.push(PartReceipt {
                    number: p.part_number().unwrap_or(0).max(0) as u32,
                    etag: p.e_tag().unwrap_or_default().to_string(),
                    len: p.size().unwrap_or(0).max(0) as u64,
                    crc32c: p.checksum_crc32_c().map(str::to_string),
                });
            }
            if page.is_truncated() == Some(true) && page.next_part_number_marker().is_some() {
                marker = page.next_part_number_marker().map(str::to_string);
            } else {
                break;
            }
        }
        out.sort_by_key(|p| p.number);
        Ok(out)
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut id_marker: Option<String> = None;
        let at = ObjectPath::new(bucket, prefix);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.err("ListMultipartUploads", &at, e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                out.push(PendingUpload {
                    upload: UploadRef {
                        path: ObjectPath::new(bucket, key),
                        upload_id: id.to_string(),
                    },
                    initiated: to_system_time(u.initiated()),
                });
            }
            if page.is_truncated() == Some(true)
                && (page.next_key_marker().is_some() || page.next_upload_id_marker().is_some())
            {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, path: &ObjectPath, version_id: Option<&str>) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .set_version_id(version_id.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.err("DeleteObject", path, e))?;
        Ok(())
    }

    async fn delete_pinned(&self, path: &ObjectPath, pin: &Pin) -> Result<()> {
        if let Some(v) = pin.version_id.as_deref().filter(|v| !v.is_empty()) {
            return self.delete(path, Some(v)).await;
        }
        // The stat narrows the window to the delete's round trip; `If-Match` closes it where the
        // store honours it (AWS does; a store that ignores the header deletes as before).
        let now = self.head(path).await?;
        let Some(etag) = pin.etag.as_deref().filter(|_| now.etag == pin.etag) else {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            });
        };
        self.client
            .delete_object()
            .bucket(&path.bucket)
            .key(&path.key)
            .if_match(etag)
            .send()
            .await
            .map_err(|e| self.err("DeleteObject", path, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_escapes_key_but_keeps_slashes() {
        let p = ObjectPath::new("b", "dir/a b+c?.bin");
        assert_eq!(copy_source(&p, &Pin::default()), "b/dir/a%20b%2Bc%3F.bin");
        let pin = Pin {
            etag: None,
            version_id: Some("v1".into()),
        };
        assert_eq!(copy_source(&p, &pin), "b/dir/a%20b%2Bc%3F.bin?versionId=v1");
    }

    #[test]
    fn listed_keys_decode() {
        assert_eq!(
            url_decode_key("a+b%2Bc%0A%2F.bin").as_deref(),
            Some("a b+c\n/.bin")
        );
        assert_eq!(url_decode_key("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(url_decode_key("%FF"), None);
    }

    #[test]
    fn ranged_answers_must_hold_the_range_asked() {
        assert_eq!(range_answer_problem(Some("bytes 10-14/100"), 10, 5), None);
        assert_eq!(range_answer_problem(Some("bytes 0-99/100"), 0, 100), None);
        assert_eq!(range_answer_problem(Some("bytes 10-14/*"), 10, 5), None);
        assert_eq!(range_answer_problem(None, 0, 100), None);
        for (cr, off, len) in [
            (Some("bytes 0-4/100"), 10, 5),
            (Some("bytes 10-13/100"), 10, 5),
            (Some("bytes 10-14/12"), 10, 5),
            (Some("bytes 10-14"), 10, 5),
            (None, 10, 5),
        ] {
            let why = range_answer_problem(cr, off, len).unwrap_or_default();
            assert!(why.contains("Content-Range"), "{cr:?} {off}+{len}: {why}");
        }
    }

    #[test]
    fn range_is_inclusive() {
        assert_eq!(range_header(0, 1), "bytes=0-0");
        assert_eq!(range_header(10, 5), "bytes=10-14");
    }
}
