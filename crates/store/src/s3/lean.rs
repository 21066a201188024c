//! Whole small objects (one GET, one PUT) without the SDK's per-request machinery.
//!
//! For an object of 64 KiB the SDK's orchestrator (interceptors, config layers, auth scheme and
//! endpoint resolution, response deserializers) costs several times the bytes' own handling: a
//! callgrind count of 1,000 objects copied between two servers put ~510,000 instructions in each
//! SDK GET and ~480,000 in each PUT, against ~260,000 and ~190,000 here (most of what is left
//! is SigV4's SHA-256, which valgrind runs without the CPU's SHA instructions). This path
//! builds the same request by hand: the URL from the SDK's own endpoint rules (once per bucket),
//! SigV4 from `aws-sigv4` (the SDK's signer crate), the connection's credentials from the SDK's
//! provider (cached until shortly before they expire), sent with hyper's pooled client. Errors
//! map through the same table as the SDK path. Used for endpoints a connection names, `http://`
//! or `https://` (TLS by rustls, trusting what the SDK's client trusts: `super::tls`); AWS's
//! own endpoints (no endpoint named) and everything else stay on the SDK.

mod raw;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::config::endpoint::{Params, ResolveEndpoint};
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::utf8_percent_encode;

use super::endpoint::PerBucket;
use super::errors::{error_chain, map_status};
use crate::{ObjectAttrs, ObjectMeta, ObjectPath, Pin, PutReceipt, Result, StoreError};

/// Credentials this close to their expiry are fetched again before use.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// An error answer's body is read up to this much for its code and message.
const ERROR_BODY_MAX: usize = 64 * 1024;

pub(super) struct Lean {
    store: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: String,
    region: String,
    path_style: bool,
    resolver: PerBucket,
    provider: SharedCredentialsProvider,
    credentials: Mutex<Option<Credentials>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// Connections of ranged GETs read by hand (`raw`).
    conns: Arc<raw::Conns>,
    /// Ranged GETs go through the SDK: the server's answers cannot be read by hand.
    raw_off: AtomicBool,
    /// Aligned windows that downloaded chunks are read into.
    windows: Arc<crate::aligned::Windows>,
    /// For an `https://` endpoint: the TLS of the connections ranged GETs are read from.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Lean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credentials here, not even their shape.
        f.debug_struct("Lean")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A failed exchange: an answer with a status, no usable answer at all, or a request that
/// cannot be sent as it is.
enum Failure {
    Status(u16, String, String),
    Transport(String),
    Refused(String),
    /// An answer this path cannot read (the SDK can).
    Unreadable(String),
}

/// A header's value as text: UTF-8, as the SDK reads and signs them.
fn text(v: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()).ok()
}

impl Lean {
    /// The lean path for a connection, where it applies: an `http://` or `https://` endpoint
    /// the connection names, with credentials.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        store: &str,
        endpoint: Option<&str>,
        region: &str,
        path_style: bool,
        provider: Option<SharedCredentialsProvider>,
        connect_timeout: Duration,
        read_timeout: Duration,
        trust: &crate::tls::Trust,
    ) -> Result<Option<Self>> {
        let (Some(endpoint), Some(provider)) = (endpoint, provider) else {
            return Ok(None);
        };
        let endpoint = endpoint.trim_end_matches('/');
        let Some(https) = crate::tls::is_https(endpoint) else {
            return Ok(None);
        };
        // A proxy from the environment carries every request to this endpoint: the SDK's
        // client goes through it, while the lean path would connect straight to the endpoint.
        if let Some(proxy) = super::proxy::proxy_for(endpoint) {
            tracing::debug!(store, proxy, "requests go through a proxy: lean path off");
            return Ok(None);
        }
        // Certificates are read only for an HTTPS endpoint; a plain one never uses them.
        let tls = if https {
            trust.client_config()
        } else {
            crate::tls::plain_config()
        }
        .map_err(|detail| StoreError::Permanent {
            store: store.to_string(),
            op: "setting up TLS".into(),
            detail,
        })?;
        let tls = Arc::new(tls);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Some(Self {
            store: store.to_string(),
            http,
            endpoint: endpoint.to_string(),
            region: region.to_string(),
            path_style,
            resolver: PerBucket::new(),
            provider,
            credentials: Mutex::new(None),
            connect_timeout,
            read_timeout,
            conns: Arc::default(),
            raw_off: AtomicBool::new(false),
            windows: raw::windows(),
            tls: https.then(|| tokio_rustls::TlsConnector::from(tls)),
        }))
    }

    async fn identity(&self) -> std::result::Result<Identity, String> {
        let fresh = |c: &Credentials| {
            c.expiry()
                .is_none_or(|t| t > SystemTime::now() + REFRESH_BEFORE)
        };
        if let Ok(held) = self.credentials.lock()
            && let Some(c) = held.as_ref().filter(|c| fresh(c))
        {
            return Ok(c.clone().into());
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            format!(
                "loading credentials: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
        if let Ok(mut held) = self.credentials.lock() {
            *held = Some(c.clone());
        }
        Ok(c.into())
    }

    /// The object's URL: the bucket's URL from the SDK's endpoint rules, then the key.
    async fn url(
        &self,
        path: &ObjectPath,
        pin: Option<&Pin>,
    ) -> std::result::Result<String, String> {
        let params = Params::builder()
            .bucket(&path.bucket)
            .region(&self.region)
            .endpoint(&self.endpoint)
            .force_path_style(self.path_style)
            .build()
            .map_err(|e| format!("endpoint parameters: {e}"))?;
        let bucket = self
            .resolver
            .resolve_endpoint(&params)
            .await
            .map_err(|e| format!("resolving the endpoint: {e}"))?;
        let mut url = bucket.url().trim_end_matches('/').to_string();
        url.push('/');
        url.extend(utf8_percent_encode(&path.key, super::COPY_SOURCE));
        if let Some(v) = pin.and_then(|p| p.version_id.as_deref()) {
            url.push_str("?versionId=");
            url.extend(utf8_percent_encode(v, super::COPY_SOURCE));
        }
        Ok(url)
    }

    /// Add SigV4's headers (date, payload hash, authorization) for a request to `url` to
    /// `headers`, with the connection's credentials.
    async fn sign(
        &self,
        method: &http::Method,
        url: &str,
        headers: &mut HeaderMap,
        payload: SignableBody<'_>,
    ) -> std::result::Result<(), Failure> {
        let identity = self.identity().await.map_err(Failure::Transport)?;
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| Failure::Refused(format!("signing: {e}")))?;
        let instructions = {
            let mut pairs = Vec::with_capacity(headers.len());
            for (k, v) in headers.iter() {
                let v = text(v).ok_or_else(|| {
                    Failure::Refused(format!("the value of header {k} is not UTF-8 text"))
                })?;
                pairs.push((k.as_str(), v));
            }
            let signable = SignableRequest::new(method.as_str(), url, pairs.into_iter(), payload)
                .map_err(|e| Failure::Refused(format!("signing: {e}")))?;
            sign(signable, &params.into())
                .map_err(|e| Failure::Refused(format!("signing: {e}")))?
                .into_parts()
                .0
        };
        let (added, _) = instructions.into_parts();
        for h in added {
            let name = HeaderName::from_bytes(h.name().as_bytes())
                .map_err(|e| Failure::Refused(format!("signing: {e}")))?;
            let mut value = HeaderValue::from_str(h.value())
                .map_err(|e| Failure::Refused(format!("signing: {e}")))?;
            value.set_sensitive(h.sensitive());
            headers.insert(name, value);
        }
        Ok(())
    }

    /// Sign and send one request; the answer's status, headers and whole body.
    async fn exchange(
        &self,
        method: http::Method,
        path: &ObjectPath,
        pin: Option<&Pin>,
        mut headers: HeaderMap,
        body: Bytes,
        unsigned_body: bool,
    ) -> std::result::Result<(HeaderMap, Bytes), Failure> {
        let url = self.url(path, pin).await.map_err(Failure::Refused)?;
        let payload = if unsigned_body {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(&body)
        };
        self.sign(&method, &url, &mut headers, payload).await?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .body(Full::new(body.clone()))
            .map_err(|e| Failure::Refused(format!("building the request: {e}")))?;
        *req.headers_mut() = headers;
        let answer = tokio::time::timeout(self.read_timeout, self.http.request(req))
            .await
            .map_err(|_| Failure::Transport("timed out waiting for the answer".into()))?
            .map_err(|e| match crate::tls::failure(&e) {
                Some(why) => Failure::Refused(why),
                None => Failure::Transport(error_chain(&e)),
            })?;
        let (parts, mut incoming) = answer.into_parts();
        let status = parts.status.as_u16();
        let expected = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        let mut data = bytes::BytesMut::with_capacity(expected.min(64 << 20));
        while let Some(frame) = tokio::time::timeout(self.read_timeout, incoming.frame())
            .await
            .map_err(|_| Failure::Transport("timed out reading the answer".into()))?
        {
            let frame = frame.map_err(|e| {
                Failure::Transport(format!("reading the answer failed: {}", error_chain(&e)))
            })?;
            if let Ok(chunk) = frame.into_data() {
                data.extend_from_slice(&chunk);
                if status >= 300 && data.len() > ERROR_BODY_MAX {
                    break;
                }
            }
        }
        tracing::debug!(%url, status, bytes = data.len(), "S3 answer (lean path)");
        if (200..300).contains(&status) {
            Ok((parts.headers, data.freeze()))
        } else {
            let text = String::from_utf8_lossy(&data);
            Err(Failure::Status(
                status,
                xml_field(&text, "Code").unwrap_or_default(),
                xml_field(&text, "Message").unwrap_or_default(),
            ))
        }
    }

    fn fail(&self, op: &str, path: &ObjectPath, f: Failure) -> StoreError {
        match f {
            Failure::Status(status, code, message) => {
                map_status(&self.store, op, path, status, &code, &message)
            }
            Failure::Transport(detail) | Failure::Unreadable(detail) => StoreError::Transient {
                store: self.store.clone(),
                op: op.to_string(),
                detail: format!("{path}: {detail}"),
            },
            Failure::Refused(detail) => StoreError::Permanent {
                store: self.store.clone(),
                op: op.to_string(),
                detail: format!("{path}: {detail}"),
            },
        }
    }

    /// GetObject of a whole object: its metadata, its bytes and how many tags it has.
    pub(super) async fn get(
        &self,
        path: &ObjectPath,
        pin: &Pin,
    ) -> Result<(ObjectMeta, Bytes, u32)> {
        let mut headers = HeaderMap::new();
        if let Some(etag) = &pin.etag {
            let v = HeaderValue::from_str(etag).map_err(|_| StoreError::Permanent {
                store: self.store.clone(),
                op: "GetObject".into(),
                detail: format!("{path}: the ETag {etag:?} cannot be sent in a header"),
            })?;
            headers.insert(http::header::IF_MATCH, v);
        }
        // The checksum the object was stored with, to check the bytes read against.
        headers.insert(
            HeaderName::from_static("x-amz-checksum-mode"),
            HeaderValue::from_static("ENABLED"),
        );
        let (h, data) = self
            .exchange(
                http::Method::GET,
                path,
                Some(pin),
                headers,
                Bytes::new(),
                false,
            )
            .await
            .map_err(|f| self.fail("GetObject", path, f))?;
        let header = |name: &str| h.get(name).and_then(text).map(str::to_string);
        let size = header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut user_metadata = std::collections::BTreeMap::new();
        for (k, v) in &h {
            if let (Some(name), Some(v)) = (k.as_str().strip_prefix("x-amz-meta-"), text(v)) {
                user_metadata.insert(name.to_string(), v.to_string());
            }
        }
        let meta = ObjectMeta {
            path: path.clone(),
            size,
            etag: header("etag"),
            version_id: header("x-amz-version-id").filter(|v| !v.is_empty() && v != "null"),
            last_modified: header("last-modified")
                .and_then(|v| DateTime::from_str(&v, DateTimeFormat::HttpDate).ok())
                .and_then(|t| SystemTime::try_from(t).ok()),
            crc32c: header("x-amz-checksum-crc32c"),
            attrs: ObjectAttrs {
                content_type: header("content-type"),
                cache_control: header("cache-control"),
                content_disposition: header("content-disposition"),
                content_encoding: header("content-encoding"),
                content_language: header("content-language"),
                expires: header("expires"),
                user_metadata: user_metadata.into_iter().collect(),
                tags: Vec::new(),
            },
        };
        let tag_count = header("x-amz-tagging-count")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Ok((meta, data, tag_count))
    }

    /// PutObject of a whole object whose CRC32C the store checks (so the body is not hashed
    /// for the signature, as on the SDK path).
    pub(super) async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c_b64: &str,
    ) -> Result<PutReceipt> {
        let bad = |what: &str| StoreError::Permanent {
            store: self.store.clone(),
            op: "PutObject".into(),
            detail: format!("{path}: {what} cannot be sent in an HTTP header"),
        };
        let mut headers = HeaderMap::new();
        let mut set = |name: HeaderName, value: &str, what: &str| -> Result<()> {
            headers.insert(name, HeaderValue::from_str(value).map_err(|_| bad(what))?);
            Ok(())
        };
        set(
            HeaderName::from_static("x-amz-checksum-crc32c"),
            crc32c_b64,
            "the checksum",
        )?;
        for (name, value) in [
            (http::header::CONTENT_TYPE, &attrs.content_type),
            (http::header::CACHE_CONTROL, &attrs.cache_control),
            (
                http::header::CONTENT_DISPOSITION,
                &attrs.content_disposition,
            ),
            (http::header::CONTENT_ENCODING, &attrs.content_encoding),
            (http::header::CONTENT_LANGUAGE, &attrs.content_language),
        ] {
            if let Some(v) = value {
                set(name.clone(), v, name.as_str())?;
            }
        }
        // As the SDK does: an Expires that is not an HTTP date is left out.
        if let Some(t) = attrs
            .expires
            .as_deref()
            .and_then(|v| DateTime::from_str(v, DateTimeFormat::HttpDate).ok())
            .and_then(|t| t.fmt(DateTimeFormat::HttpDate).ok())
        {
            set(http::header::EXPIRES, &t, "expires")?;
        }
        for (k, v) in &attrs.user_metadata {
            let name = HeaderName::from_bytes(format!("x-amz-meta-{k}").as_bytes())
                .map_err(|_| bad(&format!("the metadata name {k:?}")))?;
            set(name, v, &format!("the metadata value of {k:?}"))?;
        }
        let (h, _) = self
            .exchange(http::Method::PUT, path, None, headers, data, true)
            .await
            .map_err(|f| self.fail("PutObject", path, f))?;
        let header = |name: &str| h.get(name).and_then(text).map(str::to_string);
        Ok(PutReceipt {
            etag: header("etag"),
            version_id: header("x-amz-version-id"),
            crc32c: header("x-amz-checksum-crc32c"),
        })
    }
}

/// The text of the first `<name>` element of an S3 error document.
fn xml_field(doc: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = doc.find(&open)? + open.len();
    let len = doc[start..].find(&format!("</{name}>"))?;
    Some(doc[start..start + len].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::xml_field;

    #[test]
    fn error_documents_give_their_code_and_message() {
        let doc = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                   <Message>The specified key does not exist.</Message></Error>";
        assert_eq!(xml_field(doc, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(
            xml_field(doc, "Message").as_deref(),
            Some("The specified key does not exist.")
        );
        assert_eq!(xml_field(doc, "Resource"), None);
        assert_eq!(xml_field("", "Code"), None);
        assert_eq!(xml_field("<Code>unclosed", "Code"), None);
    }
}
