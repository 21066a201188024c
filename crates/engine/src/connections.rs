//! Connections: named endpoints and credentials, from a TOML config file, Airflow's
//! `AIRFLOW_CONN_{ID}` variables (`airflow`) and the standard AWS environment. Credentials are
//! referenced (an environment variable, a profile), never stored in the config, the journal or
//! any message.

pub mod airflow;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use barge_store::azure::{AzureConfig, AzureCredentials, AzureStore};
use barge_store::gcs::{GcsConfig, GcsCredentials, GcsStore};
use barge_store::local::LocalStore;
use barge_store::s3::{CredentialSource, S3Config, S3Store, Secret, Sse, WriteOptions};
use barge_store::{ChecksumMode, HttpOptions, Store};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::{EngineError, Result};
use crate::location::ConnRef;
use crate::size::parse_size;

/// One `[connections.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `s3` (the default), `gcs`, `azure` or `local`.
    #[serde(default)]
    pub kind: Option<String>,
    /// GCS: a credentials JSON file (service account, authorized user, external account)
    /// instead of Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
    /// GCS: send no credentials (an emulator, public buckets).
    pub anonymous: Option<bool>,
    /// Azure: the storage account (its endpoint is `https://ACCOUNT.blob.core.windows.net`
    /// unless `endpoint` says otherwise).
    pub account: Option<String>,
    /// Azure: environment variables holding a connection string, an account key or a SAS token.
    /// With none of them, Entra ID (service principal, workload or managed identity).
    pub connection_string_env: Option<String>,
    pub account_key_env: Option<String>,
    pub sas_token_env: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` (most S3-compatible stores want this). Defaults to
    /// true when an endpoint is given.
    pub path_style: Option<bool>,
    /// Names of environment variables holding the keys.
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub session_token_env: Option<String>,
    /// A profile of the shared AWS config and credentials files.
    pub profile: Option<String>,
    /// `crc32c` (default) or `off` for stores that reject additional checksums.
    pub checksum: Option<String>,
    /// The largest object the store accepts, like `5TiB`.
    pub max_object_size: Option<String>,
    /// How long to wait for the next bytes of an answer before the attempt is retried (`60s`).
    pub read_timeout: Option<String>,
    /// How long to wait for a connection (`10s`).
    pub connect_timeout: Option<String>,
    /// A PEM file of certificate authorities to trust for this endpoint's HTTPS, besides the
    /// system's (a store whose certificate a private CA signed). Defaults to `AWS_CA_BUNDLE`.
    /// In a config file, a relative path is relative to the file's folder, and `~/` is the
    /// user's home.
    pub ca_bundle: Option<PathBuf>,
    /// The storage class of every object written (`STANDARD_IA`, `GLACIER_IR`, ...).
    pub storage_class: Option<String>,
    /// Server-side encryption of every object written: `AES256` (SSE-S3) or `aws:kms`.
    pub sse: Option<String>,
    /// With `sse = "aws:kms"`: the KMS key (else the bucket's default key).
    pub sse_kms_key_id: Option<String>,
    /// With `sse = "aws:kms"`: an encryption context, a JSON object of strings.
    pub sse_kms_context: Option<String>,
    /// A canned ACL for every object written (`bucket-owner-full-control`, ...).
    pub acl: Option<String>,
    /// Tags set on every object written.
    pub tags: Option<BTreeMap<String, String>>,
    /// The buckets are requester-pays: every request says the requester pays.
    pub requester_pays: Option<bool>,
    /// `composite` (default: a multipart object's CRC32C is the composite of its parts') or
    /// `full_object` (the CRC32C of all its bytes, where the store supports it).
    pub checksum_type: Option<String>,
    /// SSE-C: the name of an environment variable holding the 256-bit key (base64, or 32 raw
    /// bytes) every object of this connection is written and read with.
    pub sse_c_key_env: Option<String>,
}

/// The write options as typed (a connection's settings, or the flags), checked.
#[derive(Clone, Debug, Default)]
pub struct WriteSettings<'a> {
    pub storage_class: Option<&'a str>,
    pub sse: Option<&'a str>,
    pub sse_kms_key_id: Option<&'a str>,
    pub sse_kms_context: Option<&'a str>,
    pub acl: Option<&'a str>,
    pub tags: Vec<(String, String)>,
    pub requester_pays: bool,
    pub checksum_type: Option<&'a str>,
    /// `crc32c` or `crc64nvme`.
    pub checksum_algorithm: Option<&'a str>,
}

/// Canned ACLs S3 defines.
const ACLS: &[&str] = &[
    "private",
    "public-read",
    "public-read-write",
    "authenticated-read",
    "aws-exec-read",
    "bucket-owner-read",
    "bucket-owner-full-control",
];

impl WriteSettings<'_> {
    /// Checked into the store's options; `what` names where they came from, for messages.
    pub fn check(&self, what: &str) -> Result<WriteOptions> {
        let bad = |m: String| EngineError::Input(format!("{what}: {m}"));
        if let Some(c) = self.storage_class
            && (c.is_empty() || !c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        {
            return Err(bad(format!(
                "storage class '{c}' is not a storage class name (like STANDARD_IA or GLACIER_IR)"
            )));
        }
        let sse = match self.sse {
            None => None,
            Some("AES256") => Some(Sse::S3),
            Some("aws:kms") => Some(Sse::Kms {
                key_id: self.sse_kms_key_id.map(str::to_string),
                context: self.sse_kms_context.map(str::to_string),
            }),
            Some(o) => {
                return Err(bad(format!(
                    "sse '{o}' is not one of AES256 (SSE-S3), aws:kms (SSE-KMS)"
                )));
            }
        };
        if !matches!(sse, Some(Sse::Kms { .. }))
            && (self.sse_kms_key_id.is_some() || self.sse_kms_context.is_some())
        {
            return Err(bad(
                "a KMS key id or encryption context goes with sse aws:kms".into(),
            ));
        }
        if let Some(c) = self.sse_kms_context {
            let ok = serde_json::from_str::<serde_json::Value>(c).is_ok_and(|v| {
                v.as_object()
                    .is_some_and(|o| o.values().all(serde_json::Value::is_string))
            });
            if !ok {
                return Err(bad(
                    "the KMS encryption context must be a JSON object of strings, like {\"project\":\"x\"}".into(),
                ));
            }
        }
        if let Some(a) = self.acl
            && !ACLS.contains(&a)
        {
            return Err(bad(format!(
                "acl '{a}' is not a canned ACL: use one of {}",
                ACLS.join(", ")
            )));
        }
        if self.tags.len() > 10 {
            return Err(bad(format!(
                "{} tags: an object takes at most 10",
                self.tags.len()
            )));
        }
        // S3's rule for tags: letters, digits, spaces and + - = . _ : / @.
        let legal = |t: &str| {
            t.chars()
                .all(|c| c.is_alphanumeric() || c == ' ' || "+-=._:/@".contains(c))
        };
        for (k, v) in &self.tags {
            if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
                return Err(bad(format!(
                    "tag '{k}': keys are 1 to 128 characters, values up to 256"
                )));
            }
            if !legal(k) || !legal(v) {
                return Err(bad(format!(
                    "tag '{k}={v}': tags take letters, digits, spaces and + - = . _ : / @ only"
                )));
            }
        }
        let full_object_checksum = match self.checksum_type {
            None | Some("composite") => false,
            Some("full_object" | "full-object") => true,
            Some(o) => {
                return Err(bad(format!(
                    "checksum type '{o}' is not one of composite, full_object"
                )));
            }
        };
        let crc64nvme = match self.checksum_algorithm {
            None | Some("crc32c" | "CRC32C") => false,
            Some("crc64nvme" | "CRC64NVME") => true,
            Some(o) => {
                return Err(bad(format!(
                    "checksum algorithm '{o}' is not one of crc32c, crc64nvme"
                )));
            }
        };
        Ok(WriteOptions {
            crc64nvme,
            full_object_checksum,
            storage_class: self.storage_class.map(str::to_string),
            sse,
            acl: self.acl.map(str::to_string),
            tags: self.tags.clone(),
            requester_pays: self.requester_pays,
        })
    }
}

/// `over` (the flags) on top of `base` (a connection's settings): each option the flags set
/// replaces the connection's.
pub fn merge_write(base: WriteOptions, over: &WriteOptions) -> WriteOptions {
    WriteOptions {
        storage_class: over.storage_class.clone().or(base.storage_class),
        sse: over.sse.clone().or(base.sse),
        acl: over.acl.clone().or(base.acl),
        tags: if over.tags.is_empty() {
            base.tags
        } else {
            over.tags.clone()
        },
        requester_pays: over.requester_pays || base.requester_pays,
        full_object_checksum: over.full_object_checksum || base.full_object_checksum,
        crc64nvme: over.crc64nvme || base.crc64nvme,
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub connections: BTreeMap<String, ConnectionConfig>,
}

impl ConfigFile {
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let cfg: ConfigFile = toml::from_str(text).map_err(|e| EngineError::Config {
            path: origin.to_string(),
            msg: e.to_string(),
        })?;
        for (name, c) in &cfg.connections {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!(
                        "connection name '{name}' may only use letters, digits, '-' and '_'"
                    ),
                });
            }
            if let Some(k) = &c.kind
                && !["s3", "gcs", "azure", "local"].contains(&k.as_str())
            {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!(
                        "connection '{name}': kind '{k}' is not one of s3, gcs, azure, local"
                    ),
                });
            }
            let foreign = c.settings_foreign_to_kind();
            if !foreign.is_empty() {
                let (verb, what) = if foreign.len() == 1 {
                    ("is not a setting", "it")
                } else {
                    ("are not settings", "them")
                };
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!(
                        "connection '{name}': {} {verb} of kind {}, which takes {}: remove {what}",
                        list_and(&foreign),
                        c.kind(),
                        c.settings_of_kind().join(", "),
                    ),
                });
            }
            if let Some(m) = &c.checksum
                && m != "crc32c"
                && m != "crc64nvme"
                && m != "off"
            {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!(
                        "connection '{name}': checksum '{m}' is not one of crc32c, crc64nvme, off"
                    ),
                });
            }
            c.write_settings()
                .check(&format!("connection '{name}'"))
                .map_err(|e| EngineError::Config {
                    path: origin.to_string(),
                    msg: e.to_string(),
                })?;
            if c.access_key_id_env.is_some() != c.secret_access_key_env.is_some() {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!(
                        "connection '{name}': set both access_key_id_env and secret_access_key_env, or neither"
                    ),
                });
            }
        }
        Ok(cfg)
    }

    /// Paths in the file (`ca_bundle`) as the file means them: `~/` from the user's home, a
    /// relative path from `dir`, the file's folder, not from wherever barge is started.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for c in self.connections.values_mut() {
            if let Some(p) = c.credentials_file.take() {
                c.credentials_file = Some(file_path(p, dir));
            }
            if let Some(p) = c.ca_bundle.take() {
                c.ca_bundle = Some(file_path(p, dir));
            }
        }
    }

    /// Load from an explicit path, else `BARGE_CONFIG`, else the user's config folder. A missing
    /// file is an error only when it was named explicitly.
    pub fn load(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>)> {
        let (path, must_exist) = match explicit {
            Some(p) => (Some(p.to_path_buf()), true),
            None => match std::env::var_os("BARGE_CONFIG") {
                Some(p) if !p.is_empty() => (Some(PathBuf::from(p)), true),
                _ => (
                    dirs::config_dir().map(|d| d.join("barge").join("config.toml")),
                    false,
                ),
            },
        };
        let Some(path) = path else {
            return Ok((Self::default(), None));
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut cfg = Self::parse(&text, &path.display().to_string())?;
                cfg.resolve_paths(path.parent().unwrap_or(Path::new("")));
                Ok((cfg, Some(path)))
            }
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                Ok((Self::default(), None))
            }
            Err(e) => Err(EngineError::Config {
                path: path.display().to_string(),
                msg: format!("cannot read: {e}"),
            }),
        }
    }
}

/// A path as a config file means it: `~/` from the user's home, relative from the file's folder.
fn file_path(p: PathBuf, dir: &Path) -> PathBuf {
    let home = p
        .strip_prefix("~")
        .ok()
        .and_then(|rest| Some(dirs::home_dir()?.join(rest)));
    match home {
        Some(h) => h,
        None if p.is_relative() && !p.as_os_str().is_empty() => dir.join(p),
        None => p,
    }
}

/// A connection's timeouts and CA bundle, checked.
fn http_options(name: &str, c: &ConnectionConfig) -> Result<HttpOptions> {
    let duration = |v: &str, key: &str| {
        humantime::parse_duration(v).map_err(|e| {
            EngineError::Input(format!(
                "connection '{name}': {key} '{v}' is not a duration ({e}): write like 30s or 2m"
            ))
        })
    };
    let mut http = HttpOptions::default();
    if let Some(t) = &c.read_timeout {
        http.read_timeout = duration(t, "read_timeout")?;
    }
    if let Some(t) = &c.connect_timeout {
        http.connect_timeout = duration(t, "connect_timeout")?;
    }
    http.ca_bundle = c.ca_bundle.clone();
    Ok(http)
}

/// A GCS connection's settings: `endpoint` (else `STORAGE_EMULATOR_HOST`, else Google's),
/// `credentials_file` or `anonymous` (else Application Default Credentials; none for an
/// emulator named by the environment).
pub fn gcs_config(name: &str, c: &ConnectionConfig) -> Result<GcsConfig> {
    let mut cfg = GcsConfig::from_env(name);
    if let Some(ep) = &c.endpoint {
        cfg.endpoint = ep.clone();
        cfg.credentials = GcsCredentials::Default;
    }
    if let Some(f) = &c.credentials_file {
        cfg.credentials = GcsCredentials::File(f.clone());
    }
    if c.anonymous == Some(true) {
        cfg.credentials = GcsCredentials::Anonymous;
    }
    cfg.http = http_options(name, c)?;
    Ok(cfg)
}

/// An Azure connection: the standard environment (`AZURE_STORAGE_*`, then Entra ID) for `az://`,
/// or a named connection's `account`, `endpoint` and the variable holding its connection
/// string, key or SAS token (else Entra ID).
pub fn azure_config(name: &str, c: Option<&ConnectionConfig>) -> Result<AzureConfig> {
    let mut cfg = AzureConfig::from_env(name);
    let Some(c) = c else {
        return Ok(cfg);
    };
    cfg.account = c.account.clone().or(cfg.account);
    cfg.endpoint = c.endpoint.clone();
    cfg.http = http_options(name, c)?;
    let set = [
        &c.connection_string_env,
        &c.account_key_env,
        &c.sas_token_env,
    ]
    .iter()
    .filter(|v| v.is_some())
    .count();
    if set > 1 {
        return Err(EngineError::Input(format!(
            "connection '{name}': name one of connection_string_env, account_key_env, sas_token_env"
        )));
    }
    cfg.credentials = if let Some(v) = &c.connection_string_env {
        AzureCredentials::ConnectionString(Secret::new(env_var(name, v)?))
    } else if let Some(v) = &c.account_key_env {
        AzureCredentials::AccountKey(Secret::new(env_var(name, v)?))
    } else if let Some(v) = &c.sas_token_env {
        AzureCredentials::Sas(Secret::new(env_var(name, v)?))
    } else {
        AzureCredentials::EntraId
    };
    Ok(cfg)
}

fn env_var(conn: &str, var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        EngineError::Input(format!(
            "connection '{conn}': environment variable {var} is not set (the config names it for this connection's credentials)"
        ))
    })
}

/// `a`, `a and b`, `a, b and c`.
fn list_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The settings only some kinds take. A setting a kind does not use is refused rather than
/// ignored: `sse` on an Azure connection would otherwise look like encryption barge asked for.
const GCS_SETTINGS: &[&str] = &["credentials_file", "anonymous"];
const AZURE_SETTINGS: &[&str] = &[
    "account",
    "connection_string_env",
    "account_key_env",
    "sas_token_env",
];
/// What every kind that talks HTTP takes.
const HTTP_SETTINGS: &[&str] = &["endpoint", "read_timeout", "connect_timeout", "ca_bundle"];

impl ConnectionConfig {
    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("s3")
    }

    /// The settings this connection gives, by name.
    fn settings_given(&self) -> Vec<&'static str> {
        let given: [(&'static str, bool); 27] = [
            ("credentials_file", self.credentials_file.is_some()),
            ("anonymous", self.anonymous.is_some()),
            ("account", self.account.is_some()),
            (
                "connection_string_env",
                self.connection_string_env.is_some(),
            ),
            ("account_key_env", self.account_key_env.is_some()),
            ("sas_token_env", self.sas_token_env.is_some()),
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("path_style", self.path_style.is_some()),
            ("access_key_id_env", self.access_key_id_env.is_some()),
            (
                "secret_access_key_env",
                self.secret_access_key_env.is_some(),
            ),
            ("session_token_env", self.session_token_env.is_some()),
            ("profile", self.profile.is_some()),
            ("checksum", self.checksum.is_some()),
            ("max_object_size", self.max_object_size.is_some()),
            ("read_timeout", self.read_timeout.is_some()),
            ("connect_timeout", self.connect_timeout.is_some()),
            ("ca_bundle", self.ca_bundle.is_some()),
            ("storage_class", self.storage_class.is_some()),
            ("sse", self.sse.is_some()),
            ("sse_kms_key_id", self.sse_kms_key_id.is_some()),
            ("sse_kms_context", self.sse_kms_context.is_some()),
            ("acl", self.acl.is_some()),
            ("tags", self.tags.is_some()),
            ("requester_pays", self.requester_pays.is_some()),
            ("checksum_type", self.checksum_type.is_some()),
            ("sse_c_key_env", self.sse_c_key_env.is_some()),
        ];
        given
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The settings this connection's kind takes (besides `kind`).
    fn settings_of_kind(&self) -> Vec<&'static str> {
        match self.kind() {
            "local" => vec!["no other setting"],
            "gcs" => [HTTP_SETTINGS, GCS_SETTINGS].concat(),
            "azure" => [HTTP_SETTINGS, AZURE_SETTINGS].concat(),
            _ => vec!["the S3 settings the README lists"],
        }
    }

    /// The settings given that this connection's kind does not use.
    fn settings_foreign_to_kind(&self) -> Vec<&'static str> {
        let takes = |k: &str| match self.kind() {
            "local" => false,
            "gcs" => HTTP_SETTINGS.contains(&k) || GCS_SETTINGS.contains(&k),
            "azure" => HTTP_SETTINGS.contains(&k) || AZURE_SETTINGS.contains(&k),
            _ => !GCS_SETTINGS.contains(&k) && !AZURE_SETTINGS.contains(&k),
        };
        self.settings_given()
            .into_iter()
            .filter(|k| !takes(k))
            .collect()
    }

    pub fn write_settings(&self) -> WriteSettings<'_> {
        WriteSettings {
            storage_class: self.storage_class.as_deref(),
            sse: self.sse.as_deref(),
            sse_kms_key_id: self.sse_kms_key_id.as_deref(),
            sse_kms_context: self.sse_kms_context.as_deref(),
            acl: self.acl.as_deref(),
            tags: self
                .tags
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            requester_pays: self.requester_pays.unwrap_or(false),
            checksum_type: self.checksum_type.as_deref(),
            checksum_algorithm: self.checksum.as_deref().filter(|c| *c != "off"),
        }
    }
}

/// Turn one connection's settings into a store configuration.
pub fn s3_config(name: &str, c: &ConnectionConfig) -> Result<S3Config> {
    let mut cfg = S3Config::new(name);
    cfg.endpoint = c.endpoint.clone();
    cfg.region = c.region.clone();
    cfg.path_style = c.path_style.unwrap_or(c.endpoint.is_some());
    cfg.checksum = match c.checksum.as_deref() {
        Some("off") => ChecksumMode::Off,
        _ => ChecksumMode::Crc32c,
    };
    if let Some(m) = &c.max_object_size {
        cfg.max_object_size = Some(parse_size(m)?);
    }
    let http = http_options(name, c)?;
    cfg.read_timeout = http.read_timeout;
    cfg.connect_timeout = http.connect_timeout;
    // As the AWS CLI and the SDKs for Python do, AWS_CA_BUNDLE applies where nothing else is said.
    cfg.ca_bundle = http
        .ca_bundle
        .or_else(|| std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    cfg.credentials = match (&c.access_key_id_env, &c.secret_access_key_env, &c.profile) {
        (Some(k), Some(s), _) => CredentialSource::Static {
            access_key_id: env_var(name, k)?,
            secret_access_key: Secret::new(env_var(name, s)?),
            session_token: match &c.session_token_env {
                Some(t) => Some(Secret::new(env_var(name, t)?)),
                None => None,
            },
        },
        (_, _, Some(p)) => CredentialSource::Profile(p.clone()),
        _ => CredentialSource::DefaultChain,
    };
    cfg.write = c.write_settings().check(&format!("connection '{name}'"))?;
    if let Some(var) = &c.sse_c_key_env {
        cfg.sse_c = Some(sse_c_key(name, var, &env_var(name, var)?)?);
    }
    Ok(cfg)
}

/// An SSE-C key from the variable `var`: the base64 of 32 bytes, or 32 bytes as they are. The
/// message never shows the value.
fn sse_c_key(conn: &str, var: &str, value: &str) -> Result<barge_store::s3::SseCKey> {
    barge_store::s3::SseCKey::parse(value).ok_or_else(|| {
        EngineError::Input(format!(
            "connection '{conn}': {var} does not hold an SSE-C key: give 256 bits as 44 characters of base64 (openssl rand -base64 32) or 32 bytes"
        ))
    })
}

/// The default connection: the standard AWS environment, unless `[connections.default]` says
/// otherwise.
fn default_config(file: &ConfigFile) -> Result<S3Config> {
    if let Some(c) = file.connections.get("default") {
        return s3_config("default", c);
    }
    let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let c = ConnectionConfig {
        path_style: Some(
            std::env::var("BARGE_S3_PATH_STYLE")
                .map(|v| v != "0" && v != "false")
                .unwrap_or(endpoint.is_some()),
        ),
        endpoint,
        ..Default::default()
    };
    s3_config("default", &c)
}

/// Opens each connection once, when first used.
pub struct Connections {
    file: ConfigFile,
    open: Mutex<HashMap<ConnRef, Arc<dyn Store>>>,
    /// What each endpoint's host resolves to (`addresses`), looked up once: a command checks
    /// identities more than once (`cp` itself, then the engine), and a slow DNS would be paid
    /// each time.
    addresses: Mutex<HashMap<(String, u16), Vec<String>>>,
    /// Write options from the command line, over every S3 connection's own.
    write: WriteOptions,
}

impl Connections {
    pub fn new(file: ConfigFile) -> Self {
        Self {
            file,
            open: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            write: WriteOptions::default(),
        }
    }

    /// Write options (`--storage-class`, `--sse`, ...) for every S3 connection opened, over
    /// what each connection's settings say.
    pub fn with_write_options(mut self, w: WriteOptions) -> Self {
        self.write = w;
        self
    }

    fn s3(&self, mut cfg: S3Config) -> S3Config {
        cfg.write = merge_write(cfg.write, &self.write);
        cfg
    }

    /// A registry with stores already open (tests, embedding).
    pub fn with_stores(stores: Vec<(ConnRef, Arc<dyn Store>)>) -> Self {
        let mut file = ConfigFile::default();
        for (c, _) in &stores {
            if let ConnRef::Named(n) = c {
                file.connections
                    .insert(n.clone(), ConnectionConfig::default());
            }
        }
        Self {
            file,
            open: Mutex::new(stores.into_iter().collect()),
            addresses: Mutex::new(HashMap::new()),
            write: WriteOptions::default(),
        }
    }

    /// Whether `name` is a connection: the config file's, or else an Airflow connection in the
    /// environment (`AIRFLOW_CONN_{NAME}`).
    pub fn is_configured(&self, name: &str) -> bool {
        self.file.connections.contains_key(name) || airflow::lookup(name).is_some()
    }

    /// The addresses `host` resolves to (an empty list when it does not resolve within 5 s),
    /// looked up once per host and port.
    pub async fn addresses(&self, host: &str, port: u16) -> Vec<String> {
        let key = (host.to_string(), port);
        let mut known = self.addresses.lock().await;
        if let Some(a) = known.get(&key) {
            return a.clone();
        }
        let found = match tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::net::lookup_host((host, port)),
        )
        .await
        {
            Ok(Ok(addrs)) => addrs.map(|a| a.ip().to_canonical().to_string()).collect(),
            _ => Vec::new(),
        };
        known.insert(key, found.clone());
        found
    }

    /// Whether `conn` reaches the local file system (`local`, or a connection of kind local).
    pub fn is_local(&self, conn: &ConnRef) -> bool {
        match conn {
            ConnRef::Local => true,
            ConnRef::Default | ConnRef::Gcs | ConnRef::Azure => false,
            ConnRef::Named(n) => self
                .file
                .connections
                .get(n)
                .is_some_and(|c| c.kind.as_deref() == Some("local")),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.file.connections.keys().cloned().collect()
    }

    /// A manifest's `src_conn_id`/`dest_conn_id`: a configured name (the config file's, else an
    /// Airflow connection variable), `local`, or (for Airflow's `aws_default` when nothing
    /// defines it, and an empty id) the default connection.
    pub fn resolve_conn_id(&self, id: &str) -> Result<ConnRef> {
        match id {
            "local" => Ok(ConnRef::Local),
            _ if self.is_configured(id) => Ok(ConnRef::Named(id.to_string())),
            "" | "default" | "aws_default" | "s3" => Ok(ConnRef::Default),
            "google_cloud_default" | "gs" | "gcs" => Ok(ConnRef::Gcs),
            "azure_default" | "wasb_default" | "az" | "azure" => Ok(ConnRef::Azure),
            _ => Err(EngineError::Input(format!(
                "connection id '{id}' is not configured (add [connections.{id}] to the config file, or define the Airflow connection in {}; configured: {})",
                airflow::var_name(id),
                if self.file.connections.is_empty() {
                    "none".to_string()
                } else {
                    self.names().join(", ")
                }
            ))),
        }
    }

    pub async fn get(&self, conn: &ConnRef) -> Result<Arc<dyn Store>> {
        let mut open = self.open.lock().await;
        if let Some(s) = open.get(conn) {
            return Ok(s.clone());
        }
        let store: Arc<dyn Store> = match conn {
            ConnRef::Local => Arc::new(LocalStore::new()),
            ConnRef::Default => {
                Arc::new(S3Store::connect(self.s3(default_config(&self.file)?)).await?)
            }
            ConnRef::Gcs => Arc::new(GcsStore::connect(GcsConfig::from_env("gs")).await?),
            ConnRef::Azure => Arc::new(AzureStore::connect(azure_config("az", None)?).await?),
            ConnRef::Named(name) => match self.file.connections.get(name) {
                Some(c) if c.kind() == "local" => Arc::new(LocalStore::new()),
                Some(c) if c.kind() == "gcs" => {
                    Arc::new(GcsStore::connect(gcs_config(name, c)?).await?)
                }
                Some(c) if c.kind() == "azure" => {
                    Arc::new(AzureStore::connect(azure_config(name, Some(c))?).await?)
                }
                Some(c) => Arc::new(S3Store::connect(self.s3(s3_config(name, c)?)).await?),
                None => {
                    let raw = airflow::lookup(name).ok_or_else(|| {
                        EngineError::Input(format!("no connection named '{name}' is configured"))
                    })?;
                    let conn = airflow::parse(name, &raw)?;
                    match airflow::store_config_of(name, &conn)? {
                        airflow::StoreConfig::S3(cfg) => {
                            Arc::new(S3Store::connect(self.s3(cfg)).await?)
                        }
                        airflow::StoreConfig::Gcs(cfg) => Arc::new(GcsStore::connect(cfg).await?),
                        airflow::StoreConfig::Azure(cfg) => {
                            Arc::new(AzureStore::connect(cfg).await?)
                        }
                    }
                }
            },
        };
        open.insert(conn.clone(), store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_the_kind_does_not_use_is_refused() {
        let err = |text: &str| {
            ConfigFile::parse(text, "test")
                .expect_err("refused")
                .to_string()
        };
        let e = err("[connections.az]\nkind = \"azure\"\naccount = \"a\"\nsse = \"aws:kms\"\n");
        assert!(
            e.contains("connection 'az': sse is not a setting of kind azure, which takes endpoint, read_timeout, connect_timeout, ca_bundle, account, connection_string_env, account_key_env, sas_token_env: remove it"),
            "{e}"
        );
        let e = err("[connections.g]\nkind = \"gcs\"\nregion = \"eu\"\nstorage_class = \"COLD\"\n");
        assert!(
            e.contains("region and storage_class are not settings of kind gcs"),
            "{e}"
        );
        let e = err("[connections.s]\nendpoint = \"http://x\"\naccount_key_env = \"K\"\n");
        assert!(
            e.contains("account_key_env is not a setting of kind s3"),
            "{e}"
        );
        let e = err("[connections.l]\nkind = \"local\"\nendpoint = \"http://x\"\n");
        assert!(e.contains("endpoint is not a setting of kind local"), "{e}");
        // What each kind does take passes.
        ConfigFile::parse(
            "[connections.g]\nkind = \"gcs\"\nendpoint = \"http://x\"\nanonymous = true\nread_timeout = \"5s\"\nca_bundle = \"ca.pem\"\n\n\
             [connections.az]\nkind = \"azure\"\naccount = \"a\"\naccount_key_env = \"K\"\nconnect_timeout = \"2s\"\n",
            "test",
        )
        .expect("valid");
    }

    #[test]
    fn parses_a_connection() {
        let cfg = ConfigFile::parse(
            r#"
            [connections.garage]
            endpoint = "http://127.0.0.1:3900"
            region = "us-east-1"
            access_key_id_env = "GK_ID"
            secret_access_key_env = "GK_SECRET"
            checksum = "off"
            "#,
            "test",
        )
        .expect("valid config");
        let c = &cfg.connections["garage"];
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        let s3 = s3_config(
            "garage",
            &ConnectionConfig {
                access_key_id_env: None,
                secret_access_key_env: None,
                ..c.clone()
            },
        )
        .expect("config");
        assert!(s3.path_style, "path style defaults on with an endpoint");
        assert_eq!(s3.checksum, ChecksumMode::Off);
    }

    #[test]
    fn ca_bundle_paths_are_read_from_the_config_files_folder() {
        let mut cfg = ConfigFile::parse(
            r#"
            [connections.rel]
            ca_bundle = "certs/ca.pem"
            [connections.abs]
            ca_bundle = "/etc/ssl/ca.pem"
            [connections.home]
            ca_bundle = "~/ca.pem"
            [connections.none]
            region = "x"
            "#,
            "test",
        )
        .expect("valid config");
        cfg.resolve_paths(Path::new("/srv/barge"));
        let bundle = |n: &str| cfg.connections[n].ca_bundle.clone();
        assert_eq!(
            bundle("rel"),
            Some(PathBuf::from("/srv/barge/certs/ca.pem"))
        );
        assert_eq!(bundle("abs"), Some(PathBuf::from("/etc/ssl/ca.pem")));
        if let Some(home) = dirs::home_dir() {
            assert_eq!(bundle("home"), Some(home.join("ca.pem")));
        }
        assert_eq!(bundle("none"), None);
    }

    #[test]
    fn rejects_bad_configs_with_a_reason() {
        let e = ConfigFile::parse("[connections.x]\nendpont = 'x'", "f.toml").expect_err("typo");
        assert!(e.to_string().contains("endpont"), "{e}");
        let e = ConfigFile::parse("[connections.x]\nchecksum = 'md5'", "f.toml").expect_err("mode");
        assert!(e.to_string().contains("crc32c, crc64nvme, off"), "{e}");
        for (text, msg) in [
            (
                "sse = 'kms'",
                "connection 'x': sse 'kms' is not one of AES256",
            ),
            ("sse_kms_key_id = 'k'", "goes with sse aws:kms"),
            ("acl = 'everyone'", "acl 'everyone' is not a canned ACL"),
            (
                "tags = { 'a' = 'b&c' }",
                "tags take letters, digits, spaces",
            ),
            (
                "checksum_type = 'both'",
                "checksum type 'both' is not one of",
            ),
            (
                "storage_class = 'cold storage'",
                "is not a storage class name",
            ),
        ] {
            let e =
                ConfigFile::parse(&format!("[connections.x]\n{text}"), "f.toml").expect_err(text);
            assert!(e.to_string().contains(msg), "{text}: {e}");
        }
        let e = ConfigFile::parse("[connections.x]\naccess_key_id_env = 'A'", "f.toml")
            .expect_err("half keys");
        assert!(e.to_string().contains("both"), "{e}");
        let e = ConfigFile::parse("[connections.'a b']\n", "f.toml").expect_err("name");
        assert!(e.to_string().contains("may only use"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named_and_secret_is_not_printed() {
        let c = ConnectionConfig {
            access_key_id_env: Some("BARGE_TEST_SURELY_UNSET_ID".into()),
            secret_access_key_env: Some("BARGE_TEST_SURELY_UNSET_SECRET".into()),
            ..Default::default()
        };
        let e = s3_config("x", &c).expect_err("unset var");
        assert!(e.to_string().contains("BARGE_TEST_SURELY_UNSET_ID"), "{e}");
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn airflow_conn_ids() {
        let c = Connections::new(ConfigFile::default());
        assert_eq!(
            c.resolve_conn_id("aws_default").ok(),
            Some(ConnRef::Default)
        );
        assert_eq!(c.resolve_conn_id("local").ok(), Some(ConnRef::Local));
        assert!(c.resolve_conn_id("my_conn").is_err());
    }
}
