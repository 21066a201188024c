//! Turning a connection's settings into an `aws-sdk-s3` client.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};

use crate::{ChecksumMode, Result, StoreError};

/// A secret string: never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a connection's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// The standard AWS chain: environment, shared files, web identity, container and instance roles.
    #[default]
    DefaultChain,
    /// A named profile of the shared AWS files.
    Profile(String),
    /// Keys resolved by the caller (for example from environment variables the config names).
    Static {
        access_key_id: String,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
}

/// Server-side encryption asked of every object a connection writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3: keys the store manages (`AES256`).
    S3,
    /// SSE-KMS: a KMS key (the bucket's default key where none is named) and an optional
    /// encryption context (a JSON object).
    Kms {
        key_id: Option<String>,
        context: Option<String>,
    },
}

/// What a connection asks of every object it writes (and, for requester pays, of every
/// request). The defaults ask nothing: the store's own defaults apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// `STANDARD_IA`, `GLACIER_IR`, ...: sent as given, the store says whether it has it.
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    /// A canned ACL (`private`, `bucket-owner-full-control`, ...).
    pub acl: Option<String>,
    /// Tags set on every object written (replacing the source's on a server-side copy).
    pub tags: Vec<(String, String)>,
    /// Send `x-amz-request-payer: requester` with every request (a requester-pays bucket).
    pub requester_pays: bool,
    /// Multipart objects get a full-object CRC32C (S3's `FULL_OBJECT` checksum type, the
    /// CRC32C of all the bytes, comparable with any copy) instead of the composite of parts'.
    pub full_object_checksum: bool,
    /// Send CRC64NVME checksums (the store checks every part and keeps the whole object's)
    /// instead of CRC32C.
    pub crc64nvme: bool,
}

impl WriteOptions {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Whether whole-object writes need headers the lean path does not send (a full-object
    /// checksum changes nothing for them: a single PUT's checksum is the whole object's).
    pub fn needs_sdk_writes(&self) -> bool {
        Self {
            full_object_checksum: false,
            ..self.clone()
        } != Self::default()
    }

    /// The options as a user set them, for messages: `--storage-class X, --sse aws:kms`.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(c) = &self.storage_class {
            v.push(format!("storage class {c}"));
        }
        match &self.sse {
            Some(Sse::S3) => v.push("SSE-S3 (AES256)".into()),
            Some(Sse::Kms { key_id, context }) => v.push(format!(
                "SSE-KMS{}{}",
                key_id
                    .as_deref()
                    .map(|k| format!(" key {k}"))
                    .unwrap_or_default(),
                if context.is_some() {
                    " with an encryption context"
                } else {
                    ""
                }
            )),
            None => {}
        }
        if let Some(a) = &self.acl {
            v.push(format!("ACL {a}"));
        }
        if !self.tags.is_empty() {
            v.push("tags".into());
        }
        if self.requester_pays {
            v.push("requester pays".into());
        }
        if self.full_object_checksum {
            v.push("full-object checksums".into());
        }
        if self.crc64nvme {
            v.push("CRC64NVME checksums".into());
        }
        v.join(", ")
    }
}

/// A customer-provided key (SSE-C): the connection's objects are written with it and read with
/// it. Held as a `Secret`; only its MD5 (what S3 itself echoes) ever appears in an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseCKey {
    /// The 256-bit key, base64, as the header carries it.
    pub key: Secret,
    /// The key's MD5, base64.
    pub md5: String,
}

impl SseCKey {
    /// From how a user writes a key: the base64 of 32 bytes, or 32 bytes as they are.
    pub fn parse(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let v = text.trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v)
            .ok()
            .filter(|r| r.len() == 32)
            .or_else(|| (v.len() == 32).then(|| v.as_bytes().to_vec()))?;
        let key: [u8; 32] = raw.try_into().ok()?;
        Some(Self::new(&key))
    }

    /// From the raw 32-byte key.
    pub fn new(raw: &[u8; 32]) -> Self {
        use base64::Engine as _;
        use md5::Digest as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            key: Secret::new(b64.encode(raw)),
            md5: b64.encode(md5::Md5::digest(raw)),
        }
    }
}

/// Everything needed to talk to one S3-compatible endpoint.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The connection name, for messages.
    pub name: String,
    /// `None` for AWS itself (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    pub credentials: CredentialSource,
    pub checksum: ChecksumMode,
    pub connect_timeout: Duration,
    /// How long to wait for the next bytes of an answer before the attempt is abandoned.
    pub read_timeout: Duration,
    pub max_object_size: Option<u64>,
    /// A PEM file of certificate authorities trusted for HTTPS besides the system's.
    pub ca_bundle: Option<PathBuf>,
    pub write: WriteOptions,
    /// SSE-C: every object of this connection is written and read with this key.
    pub sse_c: Option<SseCKey>,
}

impl S3Config {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: CredentialSource::DefaultChain,
            checksum: ChecksumMode::Crc32c,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            max_object_size: None,
            ca_bundle: None,
            write: WriteOptions::default(),
            sse_c: None,
        }
    }
}

/// What `build_client` makes: the SDK client, the identity used to decide whether two
/// connections can copy server-side, and the lean path for small objects where it applies.
pub(super) struct Built {
    pub client: Client,
    pub identity: Option<String>,
    pub lean: Option<super::lean::Lean>,
}

pub(super) async fn build_client(cfg: &S3Config) -> Result<Built> {
    // A plain-HTTP endpoint has no use for certificates: its CA bundle (perhaps only
    // AWS_CA_BUNDLE, set for other tools) is not even read.
    let plain_http = cfg.endpoint.as_deref().and_then(crate::tls::is_https) == Some(false);
    let bundle = cfg.ca_bundle.as_deref().filter(|_| !plain_http);
    let trust = crate::tls::Trust::load(&cfg.name, bundle)?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(cfg.connect_timeout)
                .read_timeout(cfg.read_timeout)
                .build(),
        );
    let sdk_http = trust.sdk_client().map_err(|detail| StoreError::Permanent {
        store: cfg.name.clone(),
        op: "setting up TLS".into(),
        detail,
    })?;
    if let Some(http) = sdk_http {
        loader = loader.http_client(http);
    }
    if let Some(region) = &cfg.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &cfg.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    match &cfg.credentials {
        CredentialSource::DefaultChain => {}
        CredentialSource::Profile(p) => loader = loader.profile_name(p),
        CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id.clone(),
                secret_access_key.expose().to_string(),
                session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "barge-connection",
            ))
        }
    }
    let sdk = loader.load().await;
    // S3-compatible stores often have no region of their own; SigV4 still needs one.
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".to_string());
    let builder = aws_sdk_s3::config::Builder::from(&sdk)
        .region(Region::new(region.clone()))
        .force_path_style(cfg.path_style)
        .endpoint_resolver(super::endpoint::PerBucket::new())
        // Send checksums only where barge sets them itself: many S3-compatible stores reject the
        // SDK's default trailing checksums.
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    let builder = if cfg.write.requester_pays {
        builder.interceptor(RequesterPays)
    } else {
        builder
    };
    let endpoint = sdk.endpoint_url().map(str::to_string).unwrap_or_else(|| {
        format!(
            "aws:{}",
            sdk.region().map(|r| r.to_string()).unwrap_or_default()
        )
    });
    let identity = match sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            // Two connections with other SSE-C keys are not one service to copy within: the
            // bytes go through barge, read with one key and written with the other.
            Ok(c) => Some(format!(
                "{endpoint}|{}{}",
                c.access_key_id(),
                cfg.sse_c
                    .as_ref()
                    .map(|k| format!("|sse-c:{}", k.md5))
                    .unwrap_or_default()
            )),
            Err(e) => {
                return Err(StoreError::AccessDenied {
                    store: cfg.name.clone(),
                    what: "loading credentials".into(),
                    detail: aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                });
            }
        },
        None => None,
    };
    // Only an endpoint the connection names itself (not one from the environment), and only
    // for plain reads and writes: the lean path sends none of the write options' headers.
    let lean = if cfg.write.needs_sdk_writes() || cfg.sse_c.is_some() {
        None
    } else {
        super::lean::Lean::new(
            &cfg.name,
            cfg.endpoint.as_deref(),
            &region,
            cfg.path_style,
            sdk.credentials_provider(),
            cfg.connect_timeout,
            cfg.read_timeout,
            &trust,
        )?
    };
    Ok(Built {
        client: Client::from_conf(builder.build()),
        identity,
        lean,
    })
}

/// `x-amz-request-payer: requester` on every request of a requester-pays connection, added
/// before signing (it is a signed header), so no call can forget it.
#[derive(Debug)]
struct RequesterPays;

impl aws_sdk_s3::config::Intercept for RequesterPays {
    fn name(&self) -> &'static str {
        "RequesterPays"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _rc: &aws_sdk_s3::config::RuntimeComponents,
        _cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> std::result::Result<(), aws_sdk_s3::error::BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-amz-request-payer", "requester");
        Ok(())
    }
}
