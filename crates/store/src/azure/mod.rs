//! Azure Blob Storage, through the official `azure_storage_blob` crate.
//!
//! Objects are block blobs. An upload is a set of uncommitted blocks whose ids are derived from
//! the upload id and the part number, so a resume lists the uncommitted blocks and moves only
//! the missing ones; Put Block List commits them in order. Every block carries a transactional
//! CRC64 the service checks. The destination's attributes wait in a small opener blob
//! `.barge-uploads/KEY/ID` until the commit (uncommitted blocks hold none), so any worker can
//! complete the upload; `list_uploads` finds openers an interrupted run left.
//!
//! Within one account a copy is the service's Copy Blob (any size, no byte through barge).
//!
//! Reads, copies and deletes are pinned by ETag (and version id where the account keeps versions).
//! Metadata names must be identifiers on Azure: barge's own keys (`barge-...`) are stored with
//! `_` for `-` and read back as written; any other key Azure cannot hold is left out with a
//! warning naming the file.

mod auth;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::{ClientOptions, RequestContent, RetryOptions, Transport, Url};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientDownloadOptions, BlobClientGetPropertiesOptions,
    BlobClientGetPropertiesResultHeaders, BlobClientSetMetadataOptions,
    BlobClientSetPropertiesOptions, BlobClientStartCopyFromUrlOptions,
    BlobClientStartCopyFromUrlResultHeaders, BlobContainerClientListBlobsOptions,
    BlockBlobClientCommitBlockListOptions, BlockBlobClientStageBlockOptions, BlockListType,
    BlockLookupList, CopyStatus, HttpRange,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;

pub use auth::AzureCredentials;
use auth::{Auth, SasSource, entra_credential, parse_connection_string};

use crate::{
    Capabilities, ChecksumMode, Endpoint, Listing, MIB, ObjectAttrs, ObjectMeta, ObjectPath,
    PartReceipt, PartSpec, PendingUpload, Pin, PutReceipt, Result, Store, StoreError, UploadRef,
};

pub use crate::uploads::UPLOADS;

/// The largest block blob: 50,000 blocks of 4,000 MiB.
const MAX_BLOB: u64 = 50_000 * 4000 * MIB;

#[derive(Clone, Debug)]
pub struct AzureConfig {
    /// The connection's name, for messages.
    pub name: String,
    /// The storage account (read from a connection string when one is given).
    pub account: Option<String>,
    /// The blob endpoint, `https://ACCOUNT.blob.core.windows.net` unless given (Azurite:
    /// `http://127.0.0.1:10000/ACCOUNT`).
    pub endpoint: Option<String>,
    pub credentials: AzureCredentials,
    pub http: crate::http::HttpOptions,
}

impl AzureConfig {
    /// The connection the standard environment describes, as the Azure CLI reads it:
    /// `AZURE_STORAGE_CONNECTION_STRING`, else `AZURE_STORAGE_ACCOUNT` with
    /// `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`, else Entra ID.
    pub fn from_env(name: &str) -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let credentials = if let Some(c) = var("AZURE_STORAGE_CONNECTION_STRING") {
            AzureCredentials::ConnectionString(crate::s3::Secret::new(c))
        } else if let Some(k) = var("AZURE_STORAGE_KEY") {
            AzureCredentials::AccountKey(crate::s3::Secret::new(k))
        } else if let Some(s) = var("AZURE_STORAGE_SAS_TOKEN") {
            AzureCredentials::Sas(crate::s3::Secret::new(s))
        } else {
            AzureCredentials::EntraId
        };
        Self {
            name: name.to_string(),
            account: var("AZURE_STORAGE_ACCOUNT"),
            endpoint: var("AZURE_STORAGE_BLOB_ENDPOINT"),
            credentials,
            http: Default::default(),
        }
    }
}

pub struct AzureStore {
    name: String,
    endpoint: String,
    identity: String,
    auth: Auth,
    caps: Capabilities,
    transport: Transport,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureStore")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A block id: the upload id and the part number, the same length for every block of a blob.
fn block_id(upload_id: &str, n: u32) -> Vec<u8> {
    format!("{upload_id}-{n:06}").into_bytes()
}

fn part_of(upload_id: &str, id: &[u8]) -> Option<u32> {
    std::str::from_utf8(id)
        .ok()?
        .strip_prefix(upload_id)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The blob that opens an upload (`uploads.rs`).
fn opener(up: &UploadRef) -> ObjectPath {
    ObjectPath::new(
        up.path.bucket.clone(),
        format!("{UPLOADS}{}/{}", up.path.key, up.upload_id),
    )
}

/// Azure metadata names are C# identifiers.
fn legal_name(k: &str) -> bool {
    let mut c = k.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// User metadata as Azure can hold it: barge's keys renamed, others that cannot be held left
/// out with a warning.
fn to_azure(path: &ObjectPath, m: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in m {
        let name = if k.starts_with("barge-") {
            k.replace('-', "_")
        } else {
            k.clone()
        };
        if legal_name(&name) {
            out.insert(name, v.clone());
        } else {
            tracing::warn!(
                "{path}: metadata key '{k}' is not a legal Azure metadata name (letters, digits and _, not starting with a digit); it was not copied"
            );
        }
    }
    out
}

fn from_azure(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| {
            if k.starts_with("barge_") {
                (k.replace('_', "-"), v)
            } else {
                (k, v)
            }
        })
        .collect()
}

/// ETags as HTTP writes them, quoted: a listing gives them bare, a stat quoted.
fn quoted(e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.starts_with('"') {
        e
    } else {
        format!("\"{e}\"")
    }
}

/// An answer's ETag, quoted as S3's are.
fn etag_of(h: &azure_core::http::headers::Headers) -> Option<String> {
    h.get_optional_string(&azure_core::http::headers::ETAG)
        .map(quoted)
}

fn system_time(t: Option<azure_core::time::OffsetDateTime>) -> Option<SystemTime> {
    t.map(SystemTime::from)
}

impl AzureStore {
    pub async fn connect(cfg: AzureConfig) -> Result<Self> {
        let name = cfg.name.clone();
        let mut account = cfg.account.clone();
        let mut endpoint = cfg.endpoint.clone();
        let auth = match &cfg.credentials {
            AzureCredentials::ConnectionString(s) => {
                let c = parse_connection_string(s.expose());
                if c.account.is_some() {
                    account = c.account.clone();
                }
                if endpoint.is_none() {
                    endpoint = c.blob_endpoint.clone().or_else(|| {
                        let acc = c.account.as_deref()?;
                        Some(format!(
                            "{}://{acc}.blob.{}",
                            c.protocol.as_deref().unwrap_or("https"),
                            c.suffix.as_deref().unwrap_or("core.windows.net")
                        ))
                    });
                }
                match (c.sas, c.key, &account) {
                    (Some(sas), _, _) => Auth::Sas(SasSource::Fixed(sas)),
                    (None, Some(key), Some(acc)) => {
                        Auth::Sas(SasSource::from_key(&name, acc, &key)?)
                    }
                    _ => {
                        return Err(StoreError::AccessDenied {
                            store: name,
                            what: "the connection string".into(),
                            detail: "it names neither AccountName with AccountKey nor SharedAccessSignature".into(),
                        });
                    }
                }
            }
            AzureCredentials::AccountKey(key) => {
                let acc = account.clone().ok_or_else(|| StoreError::AccessDenied {
                    store: name.clone(),
                    what: "the account key".into(),
                    detail: "no account is named (set account in the connection, or AZURE_STORAGE_ACCOUNT)".into(),
                })?;
                Auth::Sas(SasSource::from_key(&name, &acc, key)?)
            }
            AzureCredentials::Sas(s) => Auth::Sas(SasSource::Fixed(crate::s3::Secret::new(
                s.expose().trim_start_matches('?'),
            ))),
            AzureCredentials::EntraId => Auth::Token(entra_credential(&name)?),
            AzureCredentials::ServicePrincipal {
                tenant_id,
                client_id,
                secret,
            } => Auth::Token(
                azure_identity::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    secret.expose().to_string().into(),
                    None,
                )
                .map_err(|e| StoreError::AccessDenied {
                    store: name.clone(),
                    what: "the service principal".into(),
                    detail: scrub(&e.to_string()),
                })?,
            ),
        };
        let endpoint = match (endpoint, &account) {
            (Some(e), _) => e.trim_end_matches('/').to_string(),
            (None, Some(acc)) => format!("https://{acc}.blob.core.windows.net"),
            (None, None) => {
                return Err(StoreError::AccessDenied {
                    store: name,
                    what: "the storage account".into(),
                    detail: "no account or endpoint is named (set account in the connection, AZURE_STORAGE_ACCOUNT, or a connection string)".into(),
                });
            }
        };
        // Who the copies within the account act as: any account key can read every blob of
        // the account; a SAS only what it grants, so it counts as its connection's own.
        let who = match &auth {
            Auth::Token(_) => "entra".to_string(),
            Auth::Sas(SasSource::Fixed(_)) => format!("sas:{name}"),
            Auth::Sas(SasSource::Key { .. }) => "key".to_string(),
        };
        let http = crate::http::client(&name, &endpoint, &cfg.http)?;
        Ok(Self {
            transport: Transport::new(Arc::new(http)),
            identity: format!("azure|{endpoint}|{who}"),
            name,
            endpoint,
            auth,
            caps: Capabilities {
                server_side_copy: true,
                part_checksums: true,
                versions: false,
                metadata: true,
                min_part_size: 5 * MIB,
                max_part_size: 4000 * MIB,
                max_parts: 50_000,
                max_single_put: 4000 * MIB,
                max_single_copy: MAX_BLOB,
                copies_parts: false,
                max_object_size: Some(MAX_BLOB),
                lists_parts: true,
                streams_parts: false,
            },
        })
    }

    fn url(&self, container: &str, blob: Option<&str>) -> Result<Url> {
        if !legal_container(container) {
            return Err(StoreError::Permanent {
                store: self.name.clone(),
                op: "address".into(),
                detail: format!(
                    "'{container}' is not an Azure container name: 3 to 63 lower-case letters, digits and single hyphens, beginning and ending with a letter or digit (or $root, $web, $logs)"
                ),
            });
        }
        let seg = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
        let mut u = format!("{}/{}", self.endpoint, seg(container));
        if let Some(b) = blob {
            u.push('/');
            u.push_str(&seg(b));
        }
        if let Auth::Sas(s) = &self.auth {
            u.push('?');
            u.push_str(&s.token());
        }
        Url::parse(&u).map_err(|e| StoreError::Permanent {
            store: self.name.clone(),
            op: "address".into(),
            detail: format!("{container}: {e}"),
        })
    }

    fn credential(&self) -> Option<Arc<dyn azure_core::credentials::TokenCredential>> {
        match &self.auth {
            Auth::Token(t) => Some(t.clone()),
            Auth::Sas(_) => None,
        }
    }

    /// barge retries itself (with its own backoff and throttle gates): the SDK sends once,
    /// through barge's client (the connection's timeouts and CA bundle).
    fn client_options(&self) -> ClientOptions {
        ClientOptions {
            retry: RetryOptions::none(),
            transport: Some(self.transport.clone()),
            ..Default::default()
        }
    }

    fn blob(&self, p: &ObjectPath) -> Result<BlobClient> {
        let opts = BlobClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        BlobClient::new(
            self.url(&p.bucket, Some(&p.key))?,
            self.credential(),
            Some(opts),
        )
        .map_err(|e| self.map(e, "connect", &p.to_string()))
    }

    fn container(&self, c: &str) -> Result<BlobContainerClient> {
        let opts = BlobContainerClientOptions {
            client_options: self.client_options(),
            ..Default::default()
        };
        BlobContainerClient::new(self.url(c, None)?, self.credential(), Some(opts))
            .map_err(|e| self.map(e, "connect", c))
    }

    /// An SDK error, sorted by what barge does about it. Messages never carry the URL's SAS:
    /// they are built from the status and the service's error code only.
    fn map(&self, e: azure_core::Error, op: &str, what: &str) -> StoreError {
        let code = match e.kind() {
            azure_core::error::ErrorKind::HttpResponse { error_code, .. } => {
                error_code.clone().unwrap_or_default()
            }
            _ => String::new(),
        };
        match e.http_status().map(u16::from) {
            Some(404) if code == "ContainerNotFound" => StoreError::NoSuchBucket {
                store: self.name.clone(),
                bucket: what.split('/').next().unwrap_or(what).to_string(),
            },
            Some(404) => StoreError::NotFound {
                store: self.name.clone(),
                path: what.to_string(),
            },
            Some(412) | Some(409)
                if matches!(
                    code.as_str(),
                    "ConditionNotMet" | "SourceConditionNotMet" | "TargetConditionNotMet"
                ) =>
            {
                StoreError::SourceChanged {
                    store: self.name.clone(),
                    path: what.to_string(),
                }
            }
            Some(status) => crate::http::status_error(&self.name, op, what, status, &code),
            None => match crate::tls::failure(&e) {
                Some(tls) => StoreError::Permanent {
                    store: self.name.clone(),
                    op: op.to_string(),
                    detail: format!("{what}: {tls}"),
                },
                None => StoreError::Transient {
                    store: self.name.clone(),
                    op: op.to_string(),
                    detail: format!("{what}: {}", scrub(&e.to_string())),
                },
            },
        }
    }

    async fn list_items(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<azure_storage_blob::models::BlobItem>> {
        let c = self.container(bucket)?;
        let opts = BlobContainerClientListBlobsOptions {
            prefix: Some(prefix.to_string()).filter(|p| !p.is_empty()),
            include: Some(vec![
                azure_storage_blob::models::ListBlobsIncludeItem::Metadata,
            ]),
            ..Default::default()
        };
        let what = format!("{bucket}/{prefix}");
        let mut pages = c
            .list_blobs(Some(opts))
            .map_err(|e| self.map(e, "list", &what))?
            .into_pages();
        let mut out = Vec::new();
        while let Some(page) = pages
            .try_next()
            .await
            .map_err(|e| self.map(e, "list", &what))?
        {
            let body = page.into_model().map_err(|e| self.map(e, "list", &what))?;
            out.extend(body.blob_items);
        }
        Ok(out)
    }

    async fn put_blocks(
        &self,
        path: &ObjectPath,
        blocks: Vec<Vec<u8>>,
        attrs: &ObjectAttrs,
    ) -> Result<PutReceipt> {
        let b = self.blob(path)?.block_blob_client();
        let opts = BlockBlobClientCommitBlockListOptions {
            blob_content_type: attrs.content_type.clone(),
            blob_cache_control: attrs.cache_control.clone(),
            blob_content_disposition: attrs.content_disposition.clone(),
            blob_content_encoding: attrs.content_encoding.clone(),
            blob_content_language: attrs.content_language.clone(),
            metadata: Some(to_azure(path, &attrs.user_metadata)).filter(|m| !m.is_empty()),
            ..Default::default()
        };
        let list = BlockLookupList {
            latest: Some(blocks),
            ..Default::default()
        };
        let what = path.to_string();
        let content: RequestContent<BlockLookupList, azure_core::http::XmlFormat> = list
            .try_into()
            .map_err(|e: azure_core::Error| self.map(e, "commit", &what))?;
        let resp = b
            .commit_block_list(content, Some(opts))
            .await
            .map_err(|e| self.map(e, "commit", &what))?;
        let etag = etag_of(resp.headers());
        Ok(PutReceipt {
            etag,
            version_id: None,
            crc32c: None,
        })
    }

    /// Wait for a pending Copy Blob to end; its ETag once it succeeded.
    async fn copy_done(&self, dst: &ObjectPath, id: Option<&str>) -> Result<Option<String>> {
        let what = dst.to_string();
        let client = self.blob(dst)?;
        let mut wait = std::time::Duration::from_millis(100);
        loop {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(5));
            let p = client
                .get_properties(None)
                .await
                .map_err(|e| self.map(e, "server-side copy", &what))?;
            let bad = |e: azure_core::Error| self.map(e, "server-side copy", &what);
            if p.copy_id().map_err(bad)?.as_deref() != id {
                return Err(StoreError::Transient {
                    store: self.name.clone(),
                    op: "server-side copy".into(),
                    detail: format!("{what}: another copy or write replaced this one"),
                });
            }
            match p.copy_status().map_err(bad)? {
                Some(CopyStatus::Pending) => continue,
                Some(CopyStatus::Success) | None => return Ok(p.etag().map_err(bad)?.map(quoted)),
                Some(s) => {
                    return Err(StoreError::Transient {
                        store: self.name.clone(),
                        op: "server-side copy".into(),
                        detail: format!(
                            "{what}: the service's copy ended {s}: {}",
                            scrub(
                                &p.copy_status_description()
                                    .map_err(bad)?
                                    .unwrap_or_default()
                            )
                        ),
                    });
                }
            }
        }
    }

    /// Set a blob's content headers (all of them: absent ones are cleared) and, where a copy
    /// brought the source's, its metadata, only while it is the blob at `etag`.
    async fn set_attrs(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        etag: Option<String>,
    ) -> Result<Option<String>> {
        let what = path.to_string();
        let client = self.blob(path)?;
        let mut etag = etag;
        if attrs.user_metadata.is_empty() {
            let opts = BlobClientSetMetadataOptions {
                if_match: etag.clone().map(Into::into),
                ..Default::default()
            };
            let r = client
                .set_metadata(&HashMap::new(), Some(opts))
                .await
                .map_err(|e| self.map(e, "metadata", &what))?;
            etag = etag_of(r.headers());
        }
        let opts = BlobClientSetPropertiesOptions {
            blob_content_type: attrs.content_type.clone(),
            blob_cache_control: attrs.cache_control.clone(),
            blob_content_disposition: attrs.content_disposition.clone(),
            blob_content_encoding: attrs.content_encoding.clone(),
            blob_content_language: attrs.content_language.clone(),
            if_match: etag.map(Into::into),
            ..Default::default()
        };
        let r = client
            .set_properties(Some(opts))
            .await
            .map_err(|e| self.map(e, "metadata", &what))?;
        Ok(etag_of(r.headers()))
    }

    /// Stage one block with its CRC64 (which the service checks). Azure keeps no CRC32C, so the
    /// one barge computed where it read the bytes is checked here first: bytes damaged in
    /// between are refused before they are sent.
    /// Returns the bytes' CRC32C (computed once: checked against `crc32c` where given).
    async fn stage(
        &self,
        path: &ObjectPath,
        id: Vec<u8>,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<u32> {
        let got = crate::checksum::crc32c(&data);
        if let Some(want) = crc32c
            && got != want
        {
            return Err(StoreError::Permanent {
                store: self.name.clone(),
                op: "upload of a block".into(),
                detail: format!(
                    "{path}: the bytes' CRC32C is {} where {} was read: they were damaged in memory; nothing was written",
                    crate::checksum::crc32c_b64(got),
                    crate::checksum::crc32c_b64(want)
                ),
            });
        }
        let b = self.blob(path)?.block_blob_client();
        let opts = BlockBlobClientStageBlockOptions {
            transactional_content_crc64: Some(block_crc64(&data).to_vec()),
            ..Default::default()
        };
        let len = data.len() as u64;
        b.stage_block(&id, len, data.into(), Some(opts))
            .await
            .map_err(|e| self.map(e, "upload of a block", &path.to_string()))?;
        Ok(got)
    }
}

/// Azure's rule for container names, checked before a request is made (the service answers a
/// bad one with a bare `OutOfRangeInput` or `InvalidResourceName`).
fn legal_container(c: &str) -> bool {
    if matches!(c, "$root" | "$web" | "$logs") {
        return true;
    }
    let b = c.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !c.contains("--")
}

/// A block's transactional checksum as Azure computes it: CRC-64 with the polynomial
/// 0x9A6C9329AC4BC9B5 (reflected), all-ones in and out, which is CRC-64/NVME, sent as its
/// little-endian bytes (base64 in `x-ms-content-crc64`). One SIMD pass, where an MD5 cost
/// more CPU than the rest of the copy.
fn block_crc64(data: &[u8]) -> [u8; 8] {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data).to_le_bytes()
}

/// Everything but the unreserved characters and `/`, for a blob name in a URL path.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// An SDK message without a URL's query (where a SAS would be).
fn scrub(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_query = false;
    for ch in s.chars() {
        if ch == '?' {
            in_query = true;
            out.push_str("?…");
            continue;
        }
        if in_query && (ch.is_whitespace() || ch == '\'' || ch == '"' || ch == ')') {
            in_query = false;
        }
        if !in_query {
            out.push(ch);
        }
    }
    out
}

#[async_trait]
impl Store for AzureStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn service_identity(&self) -> Option<&str> {
        Some(&self.identity)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Url(self.endpoint.clone())
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let what = path.to_string();
        let resp = self
            .blob(path)?
            .get_properties(Some(BlobClientGetPropertiesOptions::default()))
            .await
            .map_err(|e| self.map(e, "stat", &what))?;
        let bad = |e: azure_core::Error| self.map(e, "stat", &what);
        Ok(ObjectMeta {
            path: path.clone(),
            size: resp.content_length().map_err(bad)?.unwrap_or(0),
            etag: resp.etag().map_err(bad)?.map(quoted),
            version_id: resp.version_id().map_err(bad)?,
            last_modified: system_time(resp.last_modified().map_err(bad)?),
            crc32c: None,
            attrs: ObjectAttrs {
                content_type: resp.content_type().map_err(bad)?,
                cache_control: resp.cache_control().map_err(bad)?,
                content_disposition: resp.content_disposition().map_err(bad)?,
                content_encoding: resp.content_encoding().map_err(bad)?,
                content_language: resp.content_language().map_err(bad)?,
                expires: None,
                user_metadata: from_azure(resp.metadata().map_err(bad)?),
                tags: Vec::new(),
            },
        })
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Listing> {
        let mut listing = Listing::default();
        for item in self.list_items(bucket, prefix).await? {
            let Some(name) = item.name.clone() else {
                continue;
            };
            if let Some(skip) = crate::uploads::passed_over(bucket, &name) {
                listing.skipped.push(skip);
                continue;
            }
            let p = item.properties.unwrap_or_default();
            listing.objects.push(ObjectMeta {
                path: ObjectPath::new(bucket, name),
                size: p.content_length.unwrap_or(0),
                etag: p.etag.map(quoted),
                version_id: item.version_id,
                last_modified: system_time(p.last_modified),
                crc32c: None,
                attrs: ObjectAttrs {
                    content_type: p.content_type,
                    cache_control: p.cache_control,
                    content_disposition: p.content_disposition,
                    content_encoding: p.content_encoding,
                    content_language: p.content_language,
                    expires: None,
                    user_metadata: from_azure(
                        item.metadata.and_then(|m| m.values).unwrap_or_default(),
                    ),
                    tags: Vec::new(),
                },
            });
        }
        Ok(listing)
    }

    async fn get_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> Result<Bytes> {
        let what = path.to_string();
        if len == 0 {
            let meta = self.head(path).await?;
            if pin.etag.is_some() && meta.etag != pin.etag {
                return Err(StoreError::SourceChanged {
                    store: self.name.clone(),
                    path: what,
                });
            }
            return Ok(Bytes::new());
        }
        let mut client = self.blob(path)?;
        if let Some(v) = pin.version_id.as_deref().filter(|v| !v.is_empty()) {
            client = client
                .with_version(v)
                .map_err(|e| self.map(e, "read", &what))?;
        }
        let part = usize::try_from(len).ok().and_then(std::num::NonZero::new);
        let opts = BlobClientDownloadOptions {
            range: Some(HttpRange::new(offset, len)),
            if_match: pin.etag.clone().map(Into::into),
            parallel: std::num::NonZero::new(1),
            partition_size: part,
            ..Default::default()
        };
        let resp = client
            .download(Some(opts))
            .await
            .map_err(|e| self.map(e, "read", &what))?;
        let data = resp
            .body
            .collect()
            .await
            .map_err(|e| self.map(e, "read", &what))?;
        crate::http::whole_range(&self.name, &what, data.len(), len)?;
        Ok(data)
    }

    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> Result<PutReceipt> {
        let id = block_id(&uuid::Uuid::new_v4().simple().to_string(), 1);
        let blocks = if data.is_empty() {
            Vec::new()
        } else {
            self.stage(path, id.clone(), data, crc32c).await?;
            vec![id]
        };
        self.put_blocks(path, blocks, attrs).await
    }

    async fn create_upload(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        _checksums: ChecksumMode,
    ) -> Result<UploadRef> {
        crate::uploads::open(self, path, attrs, opener).await
    }

    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> Result<PartReceipt> {
        let id = block_id(&upload.upload_id, part.number);
        let len = data.len() as u64;
        let crc = self.stage(&upload.path, id.clone(), data, crc32c).await?;
        Ok(PartReceipt {
            number: part.number,
            etag: base64::engine::general_purpose::STANDARD.encode(&id),
            len,
            crc32c: Some(crate::checksum::crc32c_b64(crc)),
        })
    }

    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt> {
        let opener = opener(upload);
        let attrs = crate::uploads::read_opener(self, &opener, upload).await?;
        let blocks = parts
            .iter()
            .map(|r| block_id(&upload.upload_id, r.number))
            .collect();
        let r = self.put_blocks(&upload.path, blocks, &attrs).await?;
        if let Err(e) = self.delete(&opener, None).await {
            tracing::warn!("{}: upload opener not deleted: {e}", upload.path);
        }
        Ok(r)
    }

    /// Deletes the opener. Uncommitted blocks cannot be deleted one by one: where no blob exists
    /// under the key they are dropped by committing an empty blob and deleting it; beside an
    /// existing blob the service discards them at its next commit, or after seven days.
    async fn abort_upload(&self, upload: &UploadRef) -> Result<()> {
        match self.head(&upload.path).await {
            Err(StoreError::NotFound { .. }) => {
                let b = self.blob(&upload.path)?.block_blob_client();
                let content: RequestContent<BlockLookupList, azure_core::http::XmlFormat> =
                    BlockLookupList::default()
                        .try_into()
                        .map_err(|e: azure_core::Error| {
                            self.map(e, "abort", &upload.path.to_string())
                        })?;
                let opts = BlockBlobClientCommitBlockListOptions {
                    if_none_match: Some("*".into()),
                    ..Default::default()
                };
                if let Ok(resp) = b.commit_block_list(content, Some(opts)).await {
                    let etag = resp
                        .headers()
                        .get_optional_string(&azure_core::http::headers::ETAG);
                    let pin = Pin {
                        etag,
                        version_id: None,
                    };
                    let _ = self.delete_pinned(&upload.path, &pin).await;
                }
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        match self.delete(&opener(upload), None).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>> {
        if let Err(StoreError::NotFound { .. }) = self.head(&opener(upload)).await {
            return Err(StoreError::NoSuchUpload {
                store: self.name.clone(),
                path: upload.path.to_string(),
                upload_id: upload.upload_id.clone(),
            });
        }
        let what = upload.path.to_string();
        let b = self.blob(&upload.path)?.block_blob_client();
        let list = match b.get_block_list(BlockListType::Uncommitted, None).await {
            Ok(r) => r
                .into_model()
                .map_err(|e| self.map(e, "list of blocks", &what))?,
            Err(e) => match self.map(e, "list of blocks", &what) {
                StoreError::NotFound { .. } => return Ok(Vec::new()),
                e => return Err(e),
            },
        };
        let mut out: Vec<PartReceipt> = list
            .uncommitted_blocks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|blk| {
                let id = blk.name?;
                let n = part_of(&upload.upload_id, &id)?;
                Some(PartReceipt {
                    number: n,
                    etag: base64::engine::general_purpose::STANDARD.encode(&id),
                    len: u64::try_from(blk.size.unwrap_or(0)).unwrap_or(0),
                    crc32c: None,
                })
            })
            .collect();
        out.sort_by_key(|r| r.number);
        Ok(out)
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut out = Vec::new();
        for item in self
            .list_items(bucket, &format!("{UPLOADS}{prefix}"))
            .await?
        {
            let Some(rest) = item.name.as_deref().and_then(|n| n.strip_prefix(UPLOADS)) else {
                continue;
            };
            let Some((key, id)) = rest.rsplit_once('/') else {
                continue;
            };
            out.push(PendingUpload {
                upload: UploadRef {
                    path: ObjectPath::new(bucket, key),
                    upload_id: id.to_string(),
                },
                initiated: system_time(item.properties.and_then(|p| p.creation_time)),
            });
        }
        Ok(out)
    }

    async fn delete(&self, path: &ObjectPath, version_id: Option<&str>) -> Result<()> {
        let what = path.to_string();
        let mut client = self.blob(path)?;
        if let Some(v) = version_id.filter(|v| !v.is_empty()) {
            client = client
                .with_version(v)
                .map_err(|e| self.map(e, "delete", &what))?;
        }
        client
            .delete(None)
            .await
            .map_err(|e| self.map(e, "delete", &what))?;
        Ok(())
    }

    /// Copy Blob within the account: the service copies any size itself (within one account it
    /// completes at once; a copy the service reports pending is waited for). The source is
    /// pinned by `x-ms-source-if-match` (and its version id). Copy Blob keeps the source's
    /// content headers and metadata; where `attrs` are given they are set on the copy after.
    async fn copy_object(
        &self,
        src: &ObjectPath,
        pin: &Pin,
        dst: &ObjectPath,
        attrs: Option<&ObjectAttrs>,
    ) -> Result<PutReceipt> {
        let what = src.to_string();
        let mut source = self.url(&src.bucket, Some(&src.key))?;
        if let Some(v) = pin.version_id.as_deref().filter(|v| !v.is_empty()) {
            source.query_pairs_mut().append_pair("versionid", v);
        }
        let opts = BlobClientStartCopyFromUrlOptions {
            source_if_match: pin.etag.clone().map(Into::into),
            metadata: attrs
                .map(|a| to_azure(dst, &a.user_metadata))
                .filter(|m| !m.is_empty()),
            ..Default::default()
        };
        let client = self.blob(dst)?;
        let resp = client
            .start_copy_from_url(source.to_string(), Some(opts))
            .await
            .map_err(|e| self.map(e, "server-side copy", &what))?;
        let bad = |e: azure_core::Error| self.map(e, "server-side copy", &what);
        let mut etag = resp.etag().map_err(bad)?.map(quoted);
        let version_id = resp.version_id().map_err(bad)?;
        if resp.copy_status().map_err(bad)? != Some(CopyStatus::Success) {
            let id = resp.copy_id().map_err(bad)?;
            etag = self.copy_done(dst, id.as_deref()).await?;
        }
        if let Some(a) = attrs {
            etag = self.set_attrs(dst, a, etag).await?;
        }
        Ok(PutReceipt {
            etag,
            version_id,
            crc32c: None,
        })
    }

    /// Only while the blob still holds the pinned ETag: sent as `If-Match`.
    async fn delete_pinned(&self, path: &ObjectPath, pin: &Pin) -> Result<()> {
        let what = path.to_string();
        let Some(etag) = pin.etag.clone() else {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: what,
            });
        };
        let opts = BlobClientDeleteOptions {
            if_match: Some(etag.into()),
            ..Default::default()
        };
        self.blob(path)?
            .delete(Some(opts))
            .await
            .map_err(|e| self.map(e, "delete", &what))?;
        Ok(())
    }
}

/// For tests and the test bed: create a container (an existing one is fine).
pub async fn create_container(store: &AzureStore, container: &str) -> Result<()> {
    match store.container(container)?.create(None).await {
        Ok(_) => Ok(()),
        Err(e) if e.http_status().map(u16::from) == Some(409) => Ok(()),
        Err(e) => Err(store.map(e, "create container", container)),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    /// The values Azure's own SDK for Go sends for these bytes (`crc64.Checksum` over the table
    /// of 0x9A6C9329AC4BC9B5, `binary.LittleEndian`), worked out apart from this code.
    #[test]
    fn container_names_follow_azures_rule() {
        for ok in ["abc", "my-container-1", "$root", &"a".repeat(63)] {
            assert!(super::legal_container(ok), "{ok}");
        }
        for bad in [
            "c1",
            "Data",
            "a--b",
            "-abc",
            "abc-",
            "a_b",
            "",
            &"a".repeat(64),
        ] {
            assert!(!super::legal_container(bad), "{bad}");
        }
    }

    #[test]
    fn block_checksums_are_azures_crc64() {
        let b64 =
            |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(super::block_crc64(d));
        assert_eq!(b64(b"123456789"), "iJh5CoYUi64=");
        let ramp: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
        assert_eq!(b64(&ramp), "RxTQGC+NjYg=");
    }
}
