//! Google Cloud Storage, through its JSON API.
//!
//! Credentials come from `google-cloud-auth` (Application Default Credentials: a service-account
//! file named by `GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user file, the metadata server), or
//! none for an emulator (`STORAGE_EMULATOR_HOST`). The requests themselves are a handful of REST
//! calls written here (see ARCHITECTURE.md for why not the storage client crate).
//!
//! Parts are parallel composite uploads: each part is a temporary object
//! `.barge-uploads/KEY/ID/part-NNNNN` written with its CRC32C, and completion composes them
//! (32 per compose call, in rounds) into the destination, then deletes every temporary. A
//! listing passes over `.barge-uploads/`; `list_uploads` finds what an interrupted run left.
//! Reads are pinned by generation; deletes check the generation and send it as a precondition.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::checksum::{crc32c_b64, crc32c_from_b64};
use crate::http::{send_error, status_error};
use crate::{
    Capabilities, ChecksumMode, Endpoint, Listing, ObjectAttrs, ObjectMeta, ObjectPath,
    PartReceipt, PartSpec, PendingUpload, Pin, PutReceipt, Result, Store, StoreError, TIB,
    UploadRef,
};

pub use crate::uploads::UPLOADS;
/// Sources per compose call: GCS's limit.
const COMPOSE_MAX: usize = 32;

/// Everything but the unreserved characters, for an object name in a URL path.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Where a GCS connection's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum GcsCredentials {
    /// Application Default Credentials, as gcloud and the client libraries find them.
    #[default]
    Default,
    /// A service-account (or other credentials) JSON file.
    File(PathBuf),
    /// The same JSON, given as text (an Airflow connection's `keyfile_dict`).
    Json(crate::s3::Secret),
    /// No credentials: an emulator, or public buckets.
    Anonymous,
}

#[derive(Clone, Debug)]
pub struct GcsConfig {
    /// The connection's name, for messages.
    pub name: String,
    /// `https://storage.googleapis.com` unless an emulator or another endpoint is named.
    pub endpoint: String,
    pub credentials: GcsCredentials,
    pub http: crate::http::HttpOptions,
}

impl GcsConfig {
    /// A connection as the environment describes it: `STORAGE_EMULATOR_HOST` (an emulator,
    /// no credentials) or Google's endpoint with Application Default Credentials.
    pub fn from_env(name: &str) -> Self {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST")
            .ok()
            .filter(|s| !s.is_empty());
        let (endpoint, credentials) = match emulator {
            Some(h) if h.contains("://") => (h, GcsCredentials::Anonymous),
            Some(h) => (format!("http://{h}"), GcsCredentials::Anonymous),
            None => (
                "https://storage.googleapis.com".to_string(),
                GcsCredentials::Default,
            ),
        };
        Self {
            name: name.to_string(),
            endpoint,
            credentials,
            http: Default::default(),
        }
    }
}

pub struct GcsStore {
    name: String,
    endpoint: String,
    identity: String,
    http: reqwest::Client,
    auth: Option<google_cloud_auth::credentials::Credentials>,
    caps: Capabilities,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// An object resource, as the JSON API returns it (numbers come as strings).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Object {
    name: String,
    size: String,
    etag: Option<String>,
    generation: Option<String>,
    crc32c: Option<String>,
    updated: Option<String>,
    time_created: Option<String>,
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    content_language: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ObjectList {
    items: Vec<Object>,
    next_page_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RewriteAnswer {
    done: bool,
    rewrite_token: Option<String>,
    resource: Option<Object>,
}

fn parse_time(s: &Option<String>) -> Option<SystemTime> {
    s.as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
}

impl Object {
    fn meta(self, bucket: &str) -> ObjectMeta {
        ObjectMeta {
            path: ObjectPath::new(bucket, self.name.clone()),
            size: self.size.parse().unwrap_or(0),
            etag: self.etag.clone(),
            version_id: self.generation.clone(),
            last_modified: parse_time(&self.updated).or_else(|| parse_time(&self.time_created)),
            crc32c: self.crc32c.clone(),
            attrs: ObjectAttrs {
                content_type: self.content_type,
                cache_control: self.cache_control,
                content_disposition: self.content_disposition,
                content_encoding: self.content_encoding,
                content_language: self.content_language,
                expires: None,
                user_metadata: self.metadata.unwrap_or_default(),
                tags: Vec::new(),
            },
        }
    }
}

/// The resource fields that carry `attrs`.
fn resource(name: Option<&str>, attrs: &ObjectAttrs, crc: Option<u32>) -> Value {
    let mut v = serde_json::Map::new();
    if let Some(n) = name {
        v.insert("name".into(), json!(n));
    }
    let mut set = |k: &str, val: &Option<String>| {
        if let Some(x) = val {
            v.insert(k.into(), json!(x));
        }
    };
    set("contentType", &attrs.content_type);
    set("cacheControl", &attrs.cache_control);
    set("contentDisposition", &attrs.content_disposition);
    set("contentEncoding", &attrs.content_encoding);
    set("contentLanguage", &attrs.content_language);
    if !attrs.user_metadata.is_empty() {
        v.insert("metadata".into(), json!(attrs.user_metadata));
    }
    if let Some(c) = crc {
        v.insert("crc32c".into(), json!(crc32c_b64(c)));
    }
    Value::Object(v)
}

fn temp_folder(up: &UploadRef) -> String {
    format!("{UPLOADS}{}/{}/", up.path.key, up.upload_id)
}

/// The object that opens an upload (`uploads.rs`).
fn opener(up: &UploadRef) -> ObjectPath {
    ObjectPath::new(up.path.bucket.clone(), format!("{}upload", temp_folder(up)))
}

fn part_name(up: &UploadRef, n: u32) -> String {
    format!("{}part-{n:05}", temp_folder(up))
}

/// Credentials from a credentials file's JSON (`label` names it in messages).
fn credentials_from_json(
    v: Value,
    label: &str,
) -> std::result::Result<google_cloud_auth::credentials::Credentials, String> {
    use google_cloud_auth::credentials as gc;
    let built = match v.get("type").and_then(Value::as_str) {
        Some("service_account") => gc::service_account::Builder::new(v).build(),
        Some("authorized_user") => gc::user_account::Builder::new(v).build(),
        Some("external_account") => gc::external_account::Builder::new(v).build(),
        Some("impersonated_service_account") => gc::impersonated::Builder::new(v).build(),
        other => {
            return Err(format!(
                "{label}: credentials of type {other:?} are not one of service_account, authorized_user, external_account, impersonated_service_account"
            ));
        }
    };
    built.map_err(|e| format!("{label}: {e}"))
}

impl GcsStore {
    pub async fn connect(cfg: GcsConfig) -> Result<Self> {
        let http = crate::http::client(&cfg.name, &cfg.endpoint, &cfg.http)?;
        let auth_err = |e: String| StoreError::AccessDenied {
            store: cfg.name.clone(),
            what: "Google credentials".into(),
            detail: e,
        };
        let (auth, who) = match &cfg.credentials {
            GcsCredentials::Anonymous => (None, "anonymous".to_string()),
            GcsCredentials::Default => (
                Some(
                    google_cloud_auth::credentials::Builder::default()
                        .build()
                        .map_err(|e| {
                            auth_err(format!(
                                "no Application Default Credentials: {e} (set GOOGLE_APPLICATION_CREDENTIALS to a service-account file, run gcloud auth application-default login, or run on Google Cloud)"
                            ))
                        })?,
                ),
                "adc".to_string(),
            ),
            GcsCredentials::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    auth_err(format!("cannot read credentials file {}: {e}", p.display()))
                })?;
                let label = p.display().to_string();
                let v: Value = serde_json::from_str(&text)
                    .map_err(|_| auth_err(format!("{label} is not a JSON credentials file")))?;
                let creds = credentials_from_json(v, &label).map_err(auth_err)?;
                (Some(creds), format!("file:{label}"))
            }
            GcsCredentials::Json(text) => {
                // serde_json's message names a line and column, never the text.
                let v: Value = serde_json::from_str(text.expose()).map_err(|e| {
                    auth_err(format!("the credentials JSON given is not JSON ({e})"))
                })?;
                let who = v
                    .get("client_email")
                    .and_then(Value::as_str)
                    .map(|e| format!("json:{e}"))
                    .unwrap_or_else(|| format!("json:{}", cfg.name));
                let creds = credentials_from_json(v, "the credentials JSON given").map_err(auth_err)?;
                (Some(creds), who)
            }
        };
        let endpoint = cfg.endpoint.trim_end_matches('/').to_string();
        Ok(Self {
            identity: format!("gcs|{endpoint}|{who}"),
            name: cfg.name,
            endpoint,
            http,
            auth,
            // S3's part limits (barge's choice for composite parts); a rewrite copies any size.
            caps: Capabilities {
                max_single_copy: 5 * TIB,
                copies_parts: false,
                max_object_size: Some(5 * TIB),
                ..Capabilities::s3()
            },
        })
    }

    fn object_url(&self, p: &ObjectPath) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.endpoint,
            enc(&p.bucket),
            enc(&p.key)
        )
    }

    /// A request with the credentials' headers.
    async fn req(
        &self,
        method: reqwest::Method,
        url: &str,
        op: &str,
    ) -> Result<reqwest::RequestBuilder> {
        let mut rb = self.http.request(method, url);
        if let Some(auth) = &self.auth {
            match auth.headers(http::Extensions::new()).await {
                Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => {
                    rb = rb.headers(data);
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(StoreError::Transient {
                        store: self.name.clone(),
                        op: op.to_string(),
                        detail: format!("fetching a Google access token: {e}"),
                    });
                }
            }
        }
        Ok(rb)
    }

    /// Send, and turn an error answer into a `StoreError`; 404 into `missing`.
    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
        what: &str,
        missing: impl FnOnce() -> StoreError,
    ) -> Result<reqwest::Response> {
        let resp = rb
            .send()
            .await
            .map_err(|e| send_error(&self.name, op, what, &e))?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        if status == 404 {
            return Err(missing());
        }
        let body = resp.text().await.unwrap_or_default();
        Err(status_error(&self.name, op, what, status, &body))
    }

    /// The generation a pin names: its version id, or (a pin of an ETag only) the generation
    /// the key holds now, when its ETag is still the pinned one.
    async fn generation(&self, path: &ObjectPath, pin: &Pin) -> Result<Option<String>> {
        if let Some(g) = pin.version_id.as_deref().filter(|g| !g.is_empty()) {
            return Ok(Some(g.to_string()));
        }
        let Some(etag) = &pin.etag else {
            return Ok(None);
        };
        let now = self.head(path).await?;
        if now.etag.as_ref() != Some(etag) {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            });
        }
        Ok(now.version_id)
    }

    /// What a 404 for a pinned generation means: the source changed if the key still holds
    /// another generation, else whatever the stat says (gone).
    async fn gone_or_changed(&self, path: &ObjectPath) -> StoreError {
        match self.head(path).await {
            Ok(_) => StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            },
            Err(e) => e,
        }
    }

    fn not_found(&self, p: &ObjectPath) -> StoreError {
        StoreError::NotFound {
            store: self.name.clone(),
            path: p.to_string(),
        }
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        &self,
        resp: reqwest::Response,
        op: &str,
    ) -> Result<T> {
        let body = resp
            .bytes()
            .await
            .map_err(|e| send_error(&self.name, op, "answer", &e))?;
        serde_json::from_slice(&body).map_err(|e| StoreError::Transient {
            store: self.name.clone(),
            op: op.to_string(),
            detail: format!("unreadable answer: {e}"),
        })
    }

    /// Write one object with its resource in one request (`uploadType=multipart`), and check
    /// the CRC32C the store computed: GCS refuses a mismatch itself, an emulator may not, so a
    /// stored object whose CRC32C differs is deleted and the write refused.
    async fn write(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc: Option<u32>,
    ) -> Result<Object> {
        let boundary = format!("barge-{}", uuid::Uuid::new_v4().simple());
        let meta = resource(Some(&path.key), attrs, crc).to_string();
        let ctype = attrs
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let mut body = bytes::BytesMut::with_capacity(head.len() + data.len() + tail.len());
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(&data);
        body.extend_from_slice(tail.as_bytes());
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.endpoint,
            enc(&path.bucket)
        );
        let what = path.to_string();
        let rb = self
            .req(reqwest::Method::POST, &url, "upload")
            .await?
            .header(
                "content-type",
                format!("multipart/related; boundary={boundary}"),
            )
            .body(body.freeze());
        let resp = self
            .send(rb, "upload", &what, || StoreError::NoSuchBucket {
                store: self.name.clone(),
                bucket: path.bucket.clone(),
            })
            .await?;
        let obj: Object = self.json(resp, "upload").await?;
        if let Some(want) = crc {
            let got = obj.crc32c.as_deref().and_then(crc32c_from_b64);
            if got != Some(want) {
                let pin = Pin {
                    etag: None,
                    version_id: obj.generation.clone(),
                };
                let _ = self.delete_pinned(path, &pin).await;
                return Err(StoreError::Permanent {
                    store: self.name.clone(),
                    op: "upload".into(),
                    detail: format!(
                        "{what}: the store holds CRC32C {} for what was sent with {}: the bytes were damaged on the way; the object was deleted",
                        obj.crc32c.as_deref().unwrap_or("none"),
                        crc32c_b64(want)
                    ),
                });
            }
        }
        Ok(obj)
    }

    /// Every object under `prefix`, pages followed.
    async fn list_objects(&self, bucket: &str, prefix: &str) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/storage/v1/b/{}/o?prefix={}&maxResults=1000",
                self.endpoint,
                enc(bucket),
                enc(prefix)
            );
            if let Some(t) = &token {
                url.push_str(&format!("&pageToken={}", enc(t)));
            }
            let rb = self.req(reqwest::Method::GET, &url, "list").await?;
            let resp = self
                .send(rb, "list", &format!("{bucket}/{prefix}"), || {
                    StoreError::NoSuchBucket {
                        store: self.name.clone(),
                        bucket: bucket.to_string(),
                    }
                })
                .await?;
            let page: ObjectList = self.json(resp, "list").await?;
            out.extend(page.items);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    async fn delete_name(&self, bucket: &str, name: &str, generation: Option<&str>) -> Result<()> {
        let p = ObjectPath::new(bucket, name);
        let mut url = self.object_url(&p);
        if let Some(g) = generation {
            url.push_str(&format!("?generation={g}&ifGenerationMatch={g}"));
        }
        let rb = self.req(reqwest::Method::DELETE, &url, "delete").await?;
        self.send(rb, "delete", &p.to_string(), || self.not_found(&p))
            .await?;
        Ok(())
    }

    /// Compose `sources` (name, generation) into `dst` with `attrs`.
    async fn compose(
        &self,
        bucket: &str,
        sources: &[(String, Option<String>)],
        dst: &str,
        attrs: &ObjectAttrs,
    ) -> Result<Object> {
        let src: Vec<Value> = sources
            .iter()
            .map(|(n, g)| match g {
                Some(g) => json!({"name": n, "generation": g,
                    "objectPreconditions": {"ifGenerationMatch": g}}),
                None => json!({"name": n}),
            })
            .collect();
        let body = json!({"sourceObjects": src, "destination": resource(None, attrs, None)});
        let p = ObjectPath::new(bucket, dst);
        let url = format!("{}/compose", self.object_url(&p));
        let rb = self
            .req(reqwest::Method::POST, &url, "compose")
            .await?
            .header("content-type", "application/json")
            .body(body.to_string());
        let resp = self
            .send(rb, "compose", &p.to_string(), || StoreError::NotFound {
                store: self.name.clone(),
                path: format!("{bucket}/{UPLOADS}… (a part of {dst})"),
            })
            .await?;
        self.json(resp, "compose").await
    }
}

#[async_trait]
impl Store for GcsStore {
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
        let rb = self
            .req(reqwest::Method::GET, &self.object_url(path), "stat")
            .await?;
        let resp = self
            .send(rb, "stat", &path.to_string(), || self.not_found(path))
            .await?;
        let obj: Object = self.json(resp, "stat").await?;
        Ok(obj.meta(&path.bucket))
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Listing> {
        let mut listing = Listing::default();
        for o in self.list_objects(bucket, prefix).await? {
            match crate::uploads::passed_over(bucket, &o.name) {
                Some(skip) => listing.skipped.push(skip),
                None => listing.objects.push(o.meta(bucket)),
            }
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
        let mut url = format!(
            "{}/download/storage/v1/b/{}/o/{}?alt=media",
            self.endpoint,
            enc(&path.bucket),
            enc(&path.key)
        );
        let generation = self.generation(path, pin).await?;
        if let Some(g) = &generation {
            url.push_str(&format!("&generation={g}"));
        }
        if len == 0 {
            // No range of zero bytes exists: a stat says whether the pinned object is there.
            let meta = self.head(path).await?;
            if generation.is_some() && meta.version_id != generation {
                return Err(StoreError::SourceChanged {
                    store: self.name.clone(),
                    path: path.to_string(),
                });
            }
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(len) - 1;
        let rb = self
            .req(reqwest::Method::GET, &url, "read")
            .await?
            // Stored bytes as they are: no decompressive transcoding of gzip objects.
            .header("accept-encoding", "gzip")
            .header("range", format!("bytes={offset}-{end}"));
        let what = path.to_string();
        let pinned = generation.is_some();
        let resp = match self.send(rb, "read", &what, || self.not_found(path)).await {
            Err(StoreError::NotFound { .. }) if pinned => {
                return Err(self.gone_or_changed(path).await);
            }
            r => r?,
        };
        let data = resp
            .bytes()
            .await
            .map_err(|e| send_error(&self.name, "read", &what, &e))?;
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
        let obj = self.write(path, data, attrs, crc32c).await?;
        Ok(PutReceipt {
            etag: obj.etag,
            version_id: obj.generation,
            crc32c: obj.crc32c,
        })
    }

    /// A rewrite: any size, in as many calls as the service asks for (its token loop).
    async fn copy_object(
        &self,
        src: &ObjectPath,
        pin: &Pin,
        dst: &ObjectPath,
        attrs: Option<&ObjectAttrs>,
    ) -> Result<PutReceipt> {
        let base = format!(
            "{}/rewriteTo/b/{}/o/{}",
            self.object_url(src),
            enc(&dst.bucket),
            enc(&dst.key)
        );
        let body = attrs
            .map(|a| resource(None, a, None).to_string())
            .unwrap_or_default();
        let what = format!("{src} to {dst}");
        let generation = self.generation(src, pin).await?;
        let mut token: Option<String> = None;
        loop {
            let mut url = base.clone();
            let mut sep = '?';
            if let Some(g) = &generation {
                url.push_str(&format!(
                    "{sep}sourceGeneration={g}&ifSourceGenerationMatch={g}"
                ));
                sep = '&';
            }
            if let Some(t) = &token {
                url.push_str(&format!("{sep}rewriteToken={}", enc(t)));
            }
            let rb = self
                .req(reqwest::Method::POST, &url, "server-side copy")
                .await?
                .header("content-type", "application/json")
                .body(if body.is_empty() {
                    "{}".to_string()
                } else {
                    body.clone()
                });
            let resp = match self
                .send(rb, "server-side copy", &what, || self.not_found(src))
                .await
            {
                Err(StoreError::NotFound { .. }) if generation.is_some() => {
                    return Err(self.gone_or_changed(src).await);
                }
                r => r?,
            };
            let a: RewriteAnswer = self.json(resp, "server-side copy").await?;
            if a.done {
                let o = a.resource.unwrap_or_default();
                return Ok(PutReceipt {
                    etag: o.etag,
                    version_id: o.generation,
                    crc32c: o.crc32c,
                });
            }
            token = a.rewrite_token;
            if token.is_none() {
                return Err(StoreError::Transient {
                    store: self.name.clone(),
                    op: "server-side copy".into(),
                    detail: format!("{what}: the rewrite is not done and gave no token"),
                });
            }
        }
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
        let name = ObjectPath::new(upload.path.bucket.clone(), part_name(upload, part.number));
        let crc = crc32c.unwrap_or_else(|| crate::checksum::crc32c(&data));
        let len = data.len() as u64;
        let obj = self
            .write(&name, data, &ObjectAttrs::default(), Some(crc))
            .await?;
        Ok(PartReceipt {
            number: part.number,
            etag: obj.generation.unwrap_or_default(),
            len,
            crc32c: Some(crc32c_b64(crc)),
        })
    }

    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> Result<PutReceipt> {
        let bucket = &upload.path.bucket;
        let attrs = crate::uploads::read_opener(self, &opener(upload), upload).await?;
        let folder = temp_folder(upload);
        let mut sources: Vec<(String, Option<String>)> = parts
            .iter()
            .map(|r| {
                (
                    part_name(upload, r.number),
                    Some(r.etag.clone()).filter(|e| !e.is_empty()),
                )
            })
            .collect();
        // Rounds of 32: each round composes groups into temporaries, until one call is left.
        let mut round = 0;
        while sources.len() > COMPOSE_MAX {
            round += 1;
            let mut next = Vec::new();
            for (i, group) in sources.chunks(COMPOSE_MAX).enumerate() {
                let name = format!("{folder}compose-{round}-{i:05}");
                let o = self
                    .compose(bucket, group, &name, &ObjectAttrs::default())
                    .await?;
                next.push((name, o.generation));
            }
            sources = next;
        }
        let o = self
            .compose(bucket, &sources, &upload.path.key, &attrs)
            .await?;
        // The temporaries go once the object exists; one left is found by `barge cleanup`.
        if let Err(e) = self.abort_upload(upload).await {
            tracing::warn!("{}: temporary parts not all deleted: {e}", upload.path);
        }
        Ok(PutReceipt {
            etag: o.etag,
            version_id: o.generation,
            crc32c: o.crc32c,
        })
    }

    async fn abort_upload(&self, upload: &UploadRef) -> Result<()> {
        let bucket = &upload.path.bucket;
        for o in self.list_objects(bucket, &temp_folder(upload)).await? {
            match self.delete_name(bucket, &o.name, None).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn list_parts(&self, upload: &UploadRef) -> Result<Vec<PartReceipt>> {
        let folder = temp_folder(upload);
        let mut out = Vec::new();
        let opener = opener(upload);
        let mut open = false;
        for o in self.list_objects(&upload.path.bucket, &folder).await? {
            open |= o.name == opener.key;
            let Some(n) = o
                .name
                .strip_prefix(&folder)
                .and_then(|l| l.strip_prefix("part-"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            out.push(PartReceipt {
                number: n,
                etag: o.generation.unwrap_or_default(),
                len: o.size.parse().unwrap_or(0),
                crc32c: o.crc32c,
            });
        }
        if !open {
            // Completed (its temporaries deleted), aborted, or never opened.
            return Err(StoreError::NoSuchUpload {
                store: self.name.clone(),
                path: upload.path.to_string(),
                upload_id: upload.upload_id.clone(),
            });
        }
        out.sort_by_key(|r| r.number);
        Ok(out)
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> Result<Vec<PendingUpload>> {
        let mut found: BTreeMap<(String, String), Option<SystemTime>> = BTreeMap::new();
        for o in self
            .list_objects(bucket, &format!("{UPLOADS}{prefix}"))
            .await?
        {
            let Some(rest) = o.name.strip_prefix(UPLOADS) else {
                continue;
            };
            let mut it = rest.rsplitn(3, '/');
            let (Some(_leaf), Some(id), Some(key)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let t = parse_time(&o.time_created);
            let e = found.entry((key.to_string(), id.to_string())).or_insert(t);
            if t < *e {
                *e = t;
            }
        }
        Ok(found
            .into_iter()
            .map(|((key, id), initiated)| PendingUpload {
                upload: UploadRef {
                    path: ObjectPath::new(bucket, key),
                    upload_id: id,
                },
                initiated,
            })
            .collect())
    }

    async fn delete(&self, path: &ObjectPath, version_id: Option<&str>) -> Result<()> {
        self.delete_name(&path.bucket, &path.key, version_id).await
    }

    /// By generation: checked first (an emulator may ignore the precondition), then sent as
    /// `generation` and `ifGenerationMatch`, so a rewrite in between is never deleted.
    async fn delete_pinned(&self, path: &ObjectPath, pin: &Pin) -> Result<()> {
        let Some(g) = pin.version_id.as_deref().filter(|g| !g.is_empty()) else {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            });
        };
        let now = self.head(path).await?;
        if now.version_id.as_deref() != Some(g) {
            return Err(StoreError::SourceChanged {
                store: self.name.clone(),
                path: path.to_string(),
            });
        }
        self.delete_name(&path.bucket, &path.key, Some(g)).await
    }
}

/// For tests and `barge`'s test bed: create a bucket (an emulator takes any project).
pub async fn create_bucket(store: &GcsStore, bucket: &str) -> Result<()> {
    let url = format!("{}/storage/v1/b?project=barge", store.endpoint);
    let rb = store
        .req(reqwest::Method::POST, &url, "create bucket")
        .await?
        .header("content-type", "application/json")
        .body(json!({ "name": bucket }).to_string());
    match store
        .send(rb, "create bucket", bucket, || StoreError::NoSuchBucket {
            store: store.name.clone(),
            bucket: bucket.to_string(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::Permanent { detail, .. }) if detail.contains("409") => Ok(()),
        Err(e) => Err(e),
    }
}
