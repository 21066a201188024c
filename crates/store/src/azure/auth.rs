//! Azure credentials: what the SDK takes (an Entra ID token credential, or a SAS in the URL),
//! and the one thing it does not do, signing with an account key: barge turns the key into a
//! short-lived account SAS (HMAC-SHA256 over the documented string), renewed before it expires.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

use crate::s3::Secret;
use crate::{Result, StoreError};

/// How a connection proves who it is.
#[derive(Clone, Debug)]
pub enum AzureCredentials {
    /// A connection string (`AccountName`, `AccountKey` or `SharedAccessSignature`,
    /// `BlobEndpoint`), as the portal and the Azure CLI give it.
    ConnectionString(Secret),
    /// The storage account's key.
    AccountKey(Secret),
    /// A SAS token (`sv=...&sig=...`).
    Sas(Secret),
    /// A service principal given by the connection (an Airflow `wasb` connection's `tenant_id`,
    /// login and password).
    ServicePrincipal {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    /// Entra ID from the environment: a service principal (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_CLIENT_SECRET`), workload identity (`AZURE_FEDERATED_TOKEN_FILE`), a managed
    /// identity, or the developer tools' login (az, azd).
    EntraId,
}

/// The parts of a connection string barge reads.
#[derive(Debug, Default)]
pub(crate) struct ConnString {
    pub account: Option<String>,
    pub key: Option<Secret>,
    pub sas: Option<Secret>,
    pub blob_endpoint: Option<String>,
    pub protocol: Option<String>,
    pub suffix: Option<String>,
}

pub(crate) fn parse_connection_string(s: &str) -> ConnString {
    let mut c = ConnString::default();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        match k {
            "AccountName" => c.account = Some(v.to_string()),
            "AccountKey" => c.key = Some(Secret::new(v)),
            "SharedAccessSignature" => c.sas = Some(Secret::new(v.trim_start_matches('?'))),
            "BlobEndpoint" => c.blob_endpoint = Some(v.trim_end_matches('/').to_string()),
            "DefaultEndpointsProtocol" => c.protocol = Some(v.to_string()),
            "EndpointSuffix" => c.suffix = Some(v.to_string()),
            _ => {}
        }
    }
    c
}

/// What each request carries.
pub(crate) enum Auth {
    /// A SAS appended to every URL (given, or made from the key).
    Sas(SasSource),
    Token(Arc<dyn TokenCredential>),
}

pub(crate) enum SasSource {
    Fixed(Secret),
    Key {
        account: String,
        key: Vec<u8>,
        current: Mutex<Option<(String, SystemTime)>>,
    },
}

/// How long an account SAS made from the key lives; renewed when less than half is left.
const SAS_LIFE: Duration = Duration::from_secs(4 * 3600);
const SAS_VERSION: &str = "2021-12-02";

impl SasSource {
    pub(crate) fn from_key(store: &str, account: &str, key: &Secret) -> Result<Self> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.expose().trim())
            .map_err(|_| StoreError::AccessDenied {
                store: store.to_string(),
                what: "the account key".into(),
                detail: "it is not base64 (copy it from the portal's Access keys page)".into(),
            })?;
        Ok(SasSource::Key {
            account: account.to_string(),
            key,
            current: Mutex::new(None),
        })
    }

    /// The query string to append (without `?`).
    pub(crate) fn token(&self) -> String {
        match self {
            SasSource::Fixed(s) => s.expose().to_string(),
            SasSource::Key {
                account,
                key,
                current,
            } => {
                let now = SystemTime::now();
                let mut cur = current.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((t, exp)) = cur.as_ref()
                    && exp.duration_since(now).unwrap_or_default() > SAS_LIFE / 2
                {
                    return t.clone();
                }
                let start = now - Duration::from_secs(300);
                let exp = now + SAS_LIFE;
                let t = account_sas(account, key, start, exp);
                *cur = Some((t.clone(), exp));
                t
            }
        }
    }
}

fn iso(t: SystemTime) -> String {
    // Seconds precision, as the service wants it: 2026-12-05T06:00:00Z.
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An account SAS for the blob service: every resource type, the permissions barge uses.
fn account_sas(account: &str, key: &[u8], start: SystemTime, expiry: SystemTime) -> String {
    let (sp, ss, srt, spr) = ("rwdlac", "b", "sco", "https,http");
    let (st, se) = (iso(start), iso(expiry));
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n{st}\n{se}\n\n{spr}\n{SAS_VERSION}\n\n");
    let sig = match Hmac::<sha2_next::Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(to_sign.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    let q = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "sv={SAS_VERSION}&ss={ss}&srt={srt}&sp={sp}&st={}&se={}&spr={}&sig={}",
        q(&st),
        q(&se),
        q(spr),
        q(&sig)
    )
}

/// Entra ID as the environment offers it, in the order the Azure tools try.
pub(crate) fn entra_credential(store: &str) -> Result<Arc<dyn TokenCredential>> {
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    let err = |e: azure_core::Error| StoreError::AccessDenied {
        store: store.to_string(),
        what: "Entra ID credentials".into(),
        detail: e.to_string(),
    };
    if let (Some(tenant), Some(client), Some(secret)) = (
        var("AZURE_TENANT_ID"),
        var("AZURE_CLIENT_ID"),
        var("AZURE_CLIENT_SECRET"),
    ) {
        let c = azure_identity::ClientSecretCredential::new(&tenant, client, secret.into(), None)
            .map_err(err)?;
        return Ok(c);
    }
    if var("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        return Ok(azure_identity::WorkloadIdentityCredential::new(None).map_err(err)?);
    }
    if var("IDENTITY_ENDPOINT").is_some()
        || var("MSI_ENDPOINT").is_some()
        || var("AZURE_USE_MANAGED_IDENTITY").is_some()
    {
        return Ok(azure_identity::ManagedIdentityCredential::new(None).map_err(err)?);
    }
    Ok(azure_identity::DeveloperToolsCredential::new(None).map_err(err)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_read() {
        let c = parse_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=acc;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:10000/acc/;",
        );
        assert_eq!(c.account.as_deref(), Some("acc"));
        assert_eq!(c.key.as_ref().map(Secret::expose), Some("a2V5"));
        assert_eq!(
            c.blob_endpoint.as_deref(),
            Some("http://127.0.0.1:10000/acc")
        );
        assert!(
            !format!("{c:?}").contains("a2V5"),
            "the key is never printed"
        );
    }

    #[test]
    fn a_key_makes_a_signed_account_sas() {
        let s = SasSource::from_key("t", "acc", &Secret::new("a2V5a2V5")).expect("key");
        let t = s.token();
        assert!(
            t.starts_with("sv=2021-12-02&ss=b&srt=sco&sp=rwdlac&st="),
            "{t}"
        );
        assert!(t.contains("&sig="), "{t}");
        assert_eq!(s.token(), t, "reused while fresh");
        assert!(SasSource::from_key("t", "acc", &Secret::new("not base64!")).is_err());
    }
}
