//! Connections: named endpoints and credentials, from a TOML config file, Airflow's
//! `AIRFLOW_CONN_{ID}` variables (`airflow`) and the standard AWS environment. Credentials are
//! referenced (an environment variable, a profile), never stored in the config, the journal or
//! any message.

pub mod airflow;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use barge_store::local::LocalStore;
use barge_store::s3::{CredentialSource, S3Config, S3Store, Secret};
use barge_store::{ChecksumMode, Store};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::{EngineError, Result};
use crate::location::ConnRef;
use crate::size::parse_size;

/// One `[connections.NAME]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// `s3` (the default) or `local`.
    #[serde(default)]
    pub kind: Option<String>,
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
                && k != "s3"
                && k != "local"
            {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!("connection '{name}': kind '{k}' is not one of s3, local"),
                });
            }
            if let Some(m) = &c.checksum
                && m != "crc32c"
                && m != "off"
            {
                return Err(EngineError::Config {
                    path: origin.to_string(),
                    msg: format!("connection '{name}': checksum '{m}' is not one of crc32c, off"),
                });
            }
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
            if let Some(p) = c.ca_bundle.take() {
                let home = p
                    .strip_prefix("~")
                    .ok()
                    .and_then(|rest| Some(dirs::home_dir()?.join(rest)));
                c.ca_bundle = Some(match home {
                    Some(h) => h,
                    None if p.is_relative() && !p.as_os_str().is_empty() => dir.join(p),
                    None => p,
                });
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

fn env_var(conn: &str, var: &str) -> Result<String> {
    std::env::var(var).map_err(|_| {
        EngineError::Input(format!(
            "connection '{conn}': environment variable {var} is not set (the config names it for this connection's credentials)"
        ))
    })
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
    let duration = |v: &str, key: &str| {
        humantime::parse_duration(v).map_err(|e| {
            EngineError::Input(format!(
                "connection '{name}': {key} '{v}' is not a duration ({e}): write like 30s or 2m"
            ))
        })
    };
    if let Some(t) = &c.read_timeout {
        cfg.read_timeout = duration(t, "read_timeout")?;
    }
    if let Some(t) = &c.connect_timeout {
        cfg.connect_timeout = duration(t, "connect_timeout")?;
    }
    // As the AWS CLI and the SDKs for Python do, AWS_CA_BUNDLE applies where nothing else is said.
    cfg.ca_bundle = c
        .ca_bundle
        .clone()
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
    Ok(cfg)
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
}

impl Connections {
    pub fn new(file: ConfigFile) -> Self {
        Self {
            file,
            open: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
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
            ConnRef::Default => false,
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
            ConnRef::Default => Arc::new(S3Store::connect(default_config(&self.file)?).await?),
            ConnRef::Named(name) => match self.file.connections.get(name) {
                Some(c) if c.kind.as_deref() == Some("local") => Arc::new(LocalStore::new()),
                Some(c) => Arc::new(S3Store::connect(s3_config(name, c)?).await?),
                None => {
                    let raw = airflow::lookup(name).ok_or_else(|| {
                        EngineError::Input(format!("no connection named '{name}' is configured"))
                    })?;
                    let conn = airflow::parse(name, &raw)?;
                    Arc::new(S3Store::connect(airflow::s3_config_of(name, &conn)?).await?)
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
        assert!(e.to_string().contains("crc32c, off"), "{e}");
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
