//! Airflow connections, read the way Airflow hands them to a task: an `AIRFLOW_CONN_{ID}`
//! environment variable (the id upper-cased) holding the connection as a URI
//! (`aws://KEY:SECRET@/?region_name=eu-west-1`) or as JSON (`{"conn_type": "aws", "login": ...,
//! "password": ..., "extra": {...}}`). A manifest's `src_conn_id`/`dest_conn_id` that the config
//! file does not name is looked up here, so a DAG's connections need no second copy in TOML.
//! Types `aws` (S3), `google_cloud_platform` (GCS) and `wasb` (Azure Blob Storage) are read,
//! with the fields and extras each of Airflow's hooks reads.
//!
//! The variable's value holds secrets: no message here quotes it, and what is kept of it
//! (`Secret`) prints as `***`. The journal records only the id.

use std::path::PathBuf;

use barge_store::azure::{AzureConfig, AzureCredentials};
use barge_store::gcs::{GcsConfig, GcsCredentials};
use barge_store::s3::{CredentialSource, S3Config, Secret};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use super::{ConnectionConfig, s3_config};
use crate::error::{EngineError, Result};

/// The environment variable Airflow reads connection `id` from.
pub fn var_name(id: &str) -> String {
    format!("AIRFLOW_CONN_{}", id.to_uppercase())
}

/// The raw value of `id`'s variable, if it is set and not empty.
pub fn lookup(id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    std::env::var(var_name(id))
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// One Airflow connection, its fields as Airflow's `Connection` has them.
#[derive(Debug, Default)]
pub struct AirflowConn {
    pub conn_type: String,
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<Secret>,
    pub extra: Map<String, Value>,
}

fn bad(id: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::Input(format!(
        "connection '{id}': {} is not an Airflow connection barge can use: {why}",
        var_name(id)
    ))
}

/// Parse a variable's value: JSON when it starts with `{`, a URI otherwise (as Airflow does).
pub fn parse(id: &str, raw: &str) -> Result<AirflowConn> {
    let raw = raw.trim();
    if raw.starts_with('{') {
        parse_json(id, raw)
    } else {
        parse_uri(id, raw)
    }
}

fn parse_json(id: &str, raw: &str) -> Result<AirflowConn> {
    // serde_json's syntax errors name a line and column, never the text.
    let v: Value = serde_json::from_str(raw).map_err(|e| bad(id, format!("invalid JSON ({e})")))?;
    let Value::Object(mut o) = v else {
        return Err(bad(id, "the JSON form must be an object"));
    };
    let mut text = |key: &str| -> Result<Option<String>> {
        match o.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s).filter(|s| !s.is_empty())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(bad(id, format!("\"{key}\" must be a string"))),
        }
    };
    let conn_type = text("conn_type")?.unwrap_or_default();
    let host = text("host")?;
    let login = text("login")?;
    let password = text("password")?.map(Secret::new);
    let extra = match o.remove("extra") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        // Airflow also accepts the extras as a JSON string.
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => extra_from_text(id, &s)?,
        Some(_) => return Err(bad(id, "\"extra\" must be an object or a JSON string")),
    };
    Ok(AirflowConn {
        conn_type: normalize_type(&conn_type),
        host,
        login,
        password,
        extra,
    })
}

fn extra_from_text(id: &str, s: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(id, "the extras must be a JSON object")),
        Err(e) => Err(bad(id, format!("the extras are not JSON ({e})"))),
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// The URI form, split as Airflow splits it (Python's `urlsplit`, which accepts the usual
/// `aws://KEY:SECRET@/?...` with an empty host, as a strict URL parser does not).
fn parse_uri(id: &str, raw: &str) -> Result<AirflowConn> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(bad(id, "it is neither a URI (TYPE://...) nor JSON ({...})"));
    };
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_'))
    {
        return Err(bad(
            id,
            "its URI scheme (the connection type) is not a name",
        ));
    }
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let netloc = before_query
        .split_once('/')
        .map_or(before_query, |(n, _)| n);
    let (userinfo, hostport) = match netloc.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, netloc),
    };
    let (login, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((l, p)) => (Some(decode(l)), Some(decode(p))),
            None => (Some(decode(u)), None),
        },
        None => (None, None),
    };
    let host = match hostport.rsplit_once(':') {
        // A port, unless the colon is inside an IPv6 literal.
        Some((h, port)) if !port.contains(']') => {
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(bad(id, "its URI port is not a number"));
            }
            h
        }
        _ => hostport,
    };
    let mut extra = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if k == "__extra__" {
            extra = extra_from_text(id, &v)?;
            break;
        }
        extra.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    Ok(AirflowConn {
        conn_type: normalize_type(&scheme.to_ascii_lowercase()),
        host: Some(decode(host)).filter(|h| !h.is_empty()),
        login: login.filter(|s| !s.is_empty()),
        password: password.filter(|s| !s.is_empty()).map(Secret::new),
        extra,
    })
}

/// As Airflow normalizes a URI's scheme: `postgresql` is `postgres`, dashes are underscores.
fn normalize_type(t: &str) -> String {
    match t {
        "postgresql" => "postgres".into(),
        t => t.replace('-', "_"),
    }
}

/// A string extra, or a string one level down (`service_config.s3.endpoint_url`).
fn extra_str<'a>(extra: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut m = extra;
    for p in parents {
        m = m.get(*p)?.as_object()?;
    }
    m.get(*last)?.as_str().filter(|s| !s.is_empty())
}

/// What an Airflow connection opens.
#[derive(Debug)]
pub enum StoreConfig {
    S3(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
}

/// The store an Airflow connection describes, by its type: `aws` (or `s3`),
/// `google_cloud_platform`, `wasb`.
pub fn store_config_of(id: &str, c: &AirflowConn) -> Result<StoreConfig> {
    match c.conn_type.as_str() {
        "aws" | "s3" => Ok(StoreConfig::S3(s3_config_of(id, c)?)),
        "google_cloud_platform" => Ok(StoreConfig::Gcs(gcs_config_of(id, c)?)),
        "wasb" => Ok(StoreConfig::Azure(wasb_config_of(id, c)?)),
        "azure_data_lake" | "adls" => Err(bad(
            id,
            format!(
                "its type is '{}' (Data Lake): barge reads the account's blobs through a 'wasb' connection to the same account",
                c.conn_type
            ),
        )),
        "" => Err(bad(
            id,
            "it has no connection type (conn_type, or the URI's scheme)",
        )),
        t => Err(bad(
            id,
            format!(
                "its type is '{t}'; barge reads Airflow connections of type aws, google_cloud_platform and wasb"
            ),
        )),
    }
}

/// An extra as Airflow's hooks read it: `name`, or the older `extra__TYPE__name`.
fn field<'a>(c: &'a AirflowConn, name: &str) -> Option<&'a Value> {
    c.extra
        .get(name)
        .or_else(|| c.extra.get(&format!("extra__{}__{name}", c.conn_type)))
        .filter(|v| !v.is_null() && v.as_str() != Some(""))
}

fn field_str<'a>(id: &str, c: &'a AirflowConn, name: &str) -> Result<Option<&'a str>> {
    match field(c, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(id, format!("its extra '{name}' must be a string"))),
    }
}

/// A `google_cloud_platform` connection, as Airflow's Google hooks read it: `key_path` (a
/// credentials file), `keyfile_dict` (its JSON, as an object or as text), else Application
/// Default Credentials. `STORAGE_EMULATOR_HOST` points it at an emulator, as it does the
/// Python client.
fn gcs_config_of(id: &str, c: &AirflowConn) -> Result<GcsConfig> {
    let mut cfg = GcsConfig::from_env(id);
    if field(c, "key_secret_name").is_some() {
        return Err(bad(
            id,
            "its extra 'key_secret_name' keeps the key in Secret Manager, which barge does not read: give key_path or keyfile_dict, or use Application Default Credentials",
        ));
    }
    if let Some(path) = field_str(id, c, "key_path")? {
        cfg.credentials = GcsCredentials::File(PathBuf::from(path));
    }
    match field(c, "keyfile_dict") {
        None => {}
        Some(Value::String(s)) => cfg.credentials = GcsCredentials::Json(Secret::new(s.clone())),
        Some(v @ Value::Object(_)) => {
            cfg.credentials = GcsCredentials::Json(Secret::new(v.to_string()));
        }
        Some(_) => {
            return Err(bad(
                id,
                "its extra 'keyfile_dict' must be the key's JSON, as an object or as text",
            ));
        }
    }
    Ok(cfg)
}

/// A `wasb` connection, as Airflow's WasbHook reads it: `connection_string`; else the account
/// URL from the host (or `https://LOGIN.blob.core.windows.net`) with, in the hook's order,
/// `tenant_id` (a service principal: login and password are its client id and secret),
/// `sas_token` (a token, or a URL with one), the password as the account key (the login
/// naming the account), else Entra ID from the environment (managed or workload identity).
fn wasb_config_of(id: &str, c: &AirflowConn) -> Result<AzureConfig> {
    let mut cfg = AzureConfig {
        name: id.to_string(),
        account: None,
        endpoint: None,
        credentials: AzureCredentials::EntraId,
        http: Default::default(),
    };
    if let Some(s) = field_str(id, c, "connection_string")? {
        cfg.credentials = AzureCredentials::ConnectionString(Secret::new(s));
        return Ok(cfg);
    }
    match c.host.as_deref() {
        Some(h) if h.contains("://") => cfg.endpoint = Some(h.trim_end_matches('/').to_string()),
        Some(h) if !h.is_empty() => {
            cfg.endpoint = Some(format!("https://{}", h.trim_end_matches('/')));
        }
        _ => {}
    }
    if let Some(tenant) = field_str(id, c, "tenant_id")? {
        let (Some(client), Some(secret)) = (&c.login, &c.password) else {
            return Err(bad(
                id,
                "its extra 'tenant_id' asks for a service principal, whose client id (login) and secret (password) it lacks",
            ));
        };
        if cfg.endpoint.is_none() {
            return Err(bad(
                id,
                "with a service principal, the account's URL must be the host (https://ACCOUNT.blob.core.windows.net)",
            ));
        }
        cfg.credentials = AzureCredentials::ServicePrincipal {
            tenant_id: tenant.to_string(),
            client_id: client.clone(),
            secret: secret.clone(),
        };
        return Ok(cfg);
    }
    cfg.account = c.login.clone();
    if let Some(sas) = field_str(id, c, "sas_token")? {
        let token = match sas.split_once('?') {
            Some((url, token)) if url.contains("://") => {
                cfg.endpoint = Some(url.trim_end_matches('/').to_string());
                token
            }
            _ => sas.trim_start_matches('?'),
        };
        cfg.credentials = AzureCredentials::Sas(Secret::new(token));
        return Ok(cfg);
    }
    if let Some(key) = &c.password {
        if cfg.account.is_none() {
            return Err(bad(
                id,
                "it gives an account key (password) without the account's name (login)",
            ));
        }
        cfg.credentials = AzureCredentials::AccountKey(key.clone());
    }
    if cfg.account.is_none() && cfg.endpoint.is_none() {
        return Err(bad(
            id,
            "it names no storage account: set the login to the account's name, or the host to its URL",
        ));
    }
    Ok(cfg)
}

/// The store configuration of an Airflow connection of type `aws` (Amazon Web Services;
/// Airflow's older `s3` type too): the login and password (or the extras'
/// `aws_access_key_id`/`aws_secret_access_key`) as keys with `aws_session_token`,
/// `region_name`, `endpoint_url` (or `service_config.s3.endpoint_url`, or the host),
/// `profile_name` for a profile of the shared AWS files (which may itself assume a role),
/// `verify` as a CA bundle path, and the S3 `addressing_style`. With no keys and no profile,
/// the standard AWS chain, as Airflow's hook does.
pub fn s3_config_of(id: &str, c: &AirflowConn) -> Result<S3Config> {
    let x = &c.extra;
    for unsupported in ["role_arn", "assume_role_method"] {
        if extra_str(x, &[unsupported]).is_some() {
            return Err(bad(
                id,
                format!(
                    "its extra '{unsupported}' asks barge to assume a role itself, which it does not do; name a profile of the shared AWS config that assumes the role (extra 'profile_name'), or give the role's credentials"
                ),
            ));
        }
    }
    let ca_bundle = match x.get("verify") {
        None | Some(Value::Null) | Some(Value::Bool(true)) => None,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") || s.is_empty() => None,
        Some(Value::String(s)) if !s.eq_ignore_ascii_case("false") => Some(PathBuf::from(s)),
        Some(_) => {
            return Err(bad(
                id,
                "its extra 'verify' turns certificate checks off, which barge does not do; give a CA bundle path instead",
            ));
        }
    };
    let endpoint = extra_str(x, &["endpoint_url"])
        .or_else(|| extra_str(x, &["service_config", "s3", "endpoint_url"]))
        .map(str::to_string)
        .or_else(|| c.host.clone().filter(|h| h.contains("://")));
    let style = extra_str(x, &["config_kwargs", "s3", "addressing_style"])
        .or_else(|| extra_str(x, &["botocore_config", "s3", "addressing_style"]));
    let path_style = match style {
        Some("path") => Some(true),
        Some("virtual") => Some(false),
        _ => None,
    };
    let profile = extra_str(x, &["profile_name"]).map(str::to_string);
    let base = ConnectionConfig {
        endpoint,
        region: extra_str(x, &["region_name"]).map(str::to_string),
        path_style,
        profile: profile.clone(),
        ca_bundle,
        ..Default::default()
    };
    let mut cfg = s3_config(id, &base)?;
    let key = c
        .login
        .clone()
        .or_else(|| extra_str(x, &["aws_access_key_id"]).map(str::to_string));
    let secret = c
        .password
        .clone()
        .or_else(|| extra_str(x, &["aws_secret_access_key"]).map(Secret::new));
    match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            cfg.credentials = CredentialSource::Static {
                access_key_id,
                secret_access_key,
                session_token: extra_str(x, &["aws_session_token"]).map(Secret::new),
            };
        }
        (None, None) => {}
        _ => {
            return Err(bad(
                id,
                "it gives an access key id without a secret access key, or a secret without an id (login and password)",
            ));
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(cfg: &S3Config) -> (String, String, Option<String>) {
        match &cfg.credentials {
            CredentialSource::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => (
                access_key_id.clone(),
                secret_access_key.expose().to_string(),
                session_token.as_ref().map(|t| t.expose().to_string()),
            ),
            other => panic!("not static keys: {other:?}"),
        }
    }

    #[test]
    fn the_uri_form_gives_keys_region_and_endpoint() {
        let c = parse(
            "my_s3",
            "aws://AKID%2Fx:se%2Bcr%2Fet@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2F127.0.0.1%3A3900",
        )
        .expect("parse");
        let cfg = s3_config_of("my_s3", &c).expect("config");
        assert_eq!(creds(&cfg), ("AKID/x".into(), "se+cr/et".into(), None));
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cfg.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert!(
            cfg.path_style,
            "an endpoint means path-style, as in the config file"
        );
    }

    #[test]
    fn the_json_form_and_extras_as_a_string_or_under_extra() {
        let c = parse(
            "j",
            r#"{"conn_type": "aws", "login": "AK", "password": "pw",
                "extra": "{\"region_name\": \"us-east-1\", \"aws_session_token\": \"tok\", \"service_config\": {\"s3\": {\"endpoint_url\": \"https://s3.example\"}}, \"config_kwargs\": {\"s3\": {\"addressing_style\": \"virtual\"}}}"}"#,
        )
        .expect("parse");
        let cfg = s3_config_of("j", &c).expect("config");
        assert_eq!(creds(&cfg), ("AK".into(), "pw".into(), Some("tok".into())));
        assert_eq!(cfg.endpoint.as_deref(), Some("https://s3.example"));
        assert!(!cfg.path_style);
        // The URI form's `__extra__` carries the same JSON.
        let c = parse(
            "u",
            "aws://@/?__extra__=%7B%22region_name%22%3A%22ap-south-1%22%2C%22profile_name%22%3A%22ops%22%7D",
        )
        .expect("parse");
        let cfg = s3_config_of("u", &c).expect("config");
        assert_eq!(cfg.region.as_deref(), Some("ap-south-1"));
        assert_eq!(cfg.credentials, CredentialSource::Profile("ops".into()));
    }

    #[test]
    fn no_keys_means_the_standard_chain() {
        let c = parse("aws_default", "aws://").expect("parse");
        let cfg = s3_config_of("aws_default", &c).expect("config");
        assert_eq!(cfg.credentials, CredentialSource::DefaultChain);
        let c = parse("k", r#"{"conn_type": "aws", "extra": {"aws_access_key_id": "A", "aws_secret_access_key": "S"}}"#)
            .expect("parse");
        assert_eq!(creds(&s3_config_of("k", &c).expect("config")).1, "S");
    }

    /// What barge cannot honour is refused by name, and no message quotes the variable's value.
    #[test]
    fn refusals_name_the_variable_and_never_the_secret() {
        let secret = "hunter2-SECRET";
        let cases = [
            format!("aws://AK:{secret}@/?role_arn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr"),
            format!("aws://AK:{secret}@/?verify=false"),
            format!("wasb://:{secret}@"),
            format!("wasb://client:{secret}@?tenant_id=t1"),
            format!("adls://acct:{secret}@"),
            format!("google-cloud-platform://:{secret}@?key_secret_name=k"),
            format!(
                r#"{{"conn_type": "google_cloud_platform", "password": "{secret}", "extra": {{"keyfile_dict": 5}}}}"#
            ),
            format!("ftp://u:{secret}@host/"),
            format!("aws://AK:{secret}@host:notaport/"),
            format!(r#"{{"conn_type": "aws", "password": "{secret}""#),
            format!(r#"{{"conn_type": "aws", "login": "AK", "password": "{secret}", "extra": 5}}"#),
            format!(r#"{{"conn_type": "aws", "password": "{secret}"}}"#),
            format!("//AK:{secret}@"),
            format!("AK:{secret}"),
        ];
        for raw in &cases {
            let e = parse("my_conn", raw)
                .and_then(|c| store_config_of("my_conn", &c))
                .expect_err(raw);
            let msg = e.to_string();
            assert!(msg.contains("AIRFLOW_CONN_MY_CONN"), "{raw}: {msg}");
            assert!(!msg.contains(secret), "{raw}: {msg}");
        }
        let e = parse("x", &format!("aws://AK:{secret}@/?role_arn=r"))
            .and_then(|c| s3_config_of("x", &c))
            .expect_err("role");
        assert!(e.to_string().contains("role_arn"), "{e}");
        let c = parse("x", &format!("aws://AK:{secret}@/")).expect("parse");
        assert!(!format!("{c:?}").contains(secret));
    }

    /// Google and Azure connections as Airflow's hooks read them.
    #[test]
    fn google_and_wasb_connections() {
        let gcs = |raw: &str| match parse("g", raw).and_then(|c| store_config_of("g", &c)) {
            Ok(StoreConfig::Gcs(cfg)) => cfg.credentials,
            other => panic!("{raw}: {other:?}"),
        };
        assert_eq!(
            gcs("google-cloud-platform://?key_path=%2Fkeys%2Fsa.json"),
            GcsCredentials::File("/keys/sa.json".into())
        );
        assert_eq!(
            gcs("google-cloud-platform://?extra__google_cloud_platform__key_path=%2Fk.json"),
            GcsCredentials::File("/k.json".into())
        );
        let json = r#"{"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": {"type": "service_account", "client_email": "a@b"}}}"#;
        match gcs(json) {
            GcsCredentials::Json(s) => assert!(s.expose().contains("service_account")),
            other => panic!("{other:?}"),
        }
        let az = |raw: &str| match parse("w", raw).and_then(|c| store_config_of("w", &c)) {
            Ok(StoreConfig::Azure(cfg)) => cfg,
            other => panic!("{raw}: {other:?}"),
        };
        let key = az("wasb://acct:a2V5%2B%2F%3D@");
        assert_eq!(key.account.as_deref(), Some("acct"));
        assert!(
            matches!(&key.credentials, AzureCredentials::AccountKey(k) if k.expose() == "a2V5+/=")
        );
        let local = az("wasb://acct:k@http%3A%2F%2F127.0.0.1%3A10000%2Facct");
        assert_eq!(
            local.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/acct")
        );
        let cs = az(
            r#"{"conn_type": "wasb", "extra": {"connection_string": "AccountName=a;AccountKey=k"}}"#,
        );
        assert!(matches!(
            cs.credentials,
            AzureCredentials::ConnectionString(_)
        ));
        let sp = az("wasb://cid:csecret@acct.blob.core.windows.net?tenant_id=t1");
        assert_eq!(
            sp.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(matches!(
            &sp.credentials,
            AzureCredentials::ServicePrincipal { tenant_id, client_id, .. }
                if tenant_id == "t1" && client_id == "cid"
        ));
        let sas = az("wasb://acct@?sas_token=sv%3D2021%26sig%3Dx");
        assert!(
            matches!(&sas.credentials, AzureCredentials::Sas(t) if t.expose() == "sv=2021&sig=x")
        );
        let sas_url = az(
            "wasb://acct@?sas_token=https%3A%2F%2Facct.blob.core.windows.net%2F%3Fsv%3D1%26sig%3Dy",
        );
        assert_eq!(
            sas_url.endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(
            matches!(&sas_url.credentials, AzureCredentials::Sas(t) if t.expose() == "sv=1&sig=y")
        );
        let entra = az("wasb://acct@");
        assert!(matches!(entra.credentials, AzureCredentials::EntraId));
    }

    #[test]
    fn the_variable_is_the_id_upper_cased() {
        assert_eq!(var_name("my_s3-conn"), "AIRFLOW_CONN_MY_S3-CONN");
        assert_eq!(lookup(""), None);
    }
}
