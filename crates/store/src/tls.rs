//! What a connection trusts over HTTPS: the system's certificate authorities, plus those of a
//! CA bundle when the connection names one (a PEM file, for a store whose certificate a private
//! authority signed). The S3 SDK's client, S3's lean path and the REST client of GCS and Azure
//! are given the same trust, and a certificate the connection does not trust is an error that
//! names the fix, not a retry.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::{Result, StoreError};

/// The system's certificate authorities, read once.
static SYSTEM: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(errors = ?found.errors, "reading the system's certificate authorities");
    }
    found.certs
});

/// What a connection trusts.
pub(crate) struct Trust {
    /// The CA bundle's certificates that can be trust anchors.
    bundle: Option<Vec<CertificateDer<'static>>>,
}

impl Trust {
    /// The system's authorities, and those of the PEM file `bundle` if given.
    pub(crate) fn load(store: &str, bundle: Option<&Path>) -> Result<Self> {
        let Some(path) = bundle else {
            return Ok(Self { bundle: None });
        };
        let bad = |detail: String| StoreError::Permanent {
            store: store.to_string(),
            op: "reading the CA bundle".into(),
            detail: format!("{} (the connection's ca_bundle): {detail}", path.display()),
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM file of certificates ({e})")))?;
        // A system bundle may hold a certificate rustls cannot use: leave it out, as rustls
        // does with the system's own (the SDK's client would panic on it).
        let mut check = RootCertStore::empty();
        let total = certs.len();
        let mut usable = Vec::with_capacity(total);
        for (i, c) in certs.into_iter().enumerate() {
            match check.add(c.clone()) {
                Ok(()) => usable.push(c),
                Err(e) => tracing::debug!(
                    store,
                    bundle = %path.display(),
                    "certificate {} of {total} is left out: {e}",
                    i + 1
                ),
            }
        }
        if usable.is_empty() {
            return Err(bad(if total == 0 {
                "holds no certificate (expected PEM blocks that begin with -----BEGIN CERTIFICATE-----)"
                    .into()
            } else {
                format!("none of its {total} certificates can be a trust anchor")
            }));
        }
        Ok(Self {
            bundle: Some(usable),
        })
    }

    /// The SDK's HTTP client for this trust; `None` for the SDK's own default (no bundle).
    pub(crate) fn sdk_client(&self) -> std::result::Result<Option<SharedHttpClient>, String> {
        let Some(certs) = self.bundle.as_ref() else {
            return Ok(None);
        };
        // The SDK's client takes PEM.
        let store = TrustStore::default()
            .with_native_roots(!SYSTEM.is_empty())
            .with_pem_certificate(pem_text(certs).into_bytes());
        let context = TlsContext::builder()
            .with_trust_store(store)
            .build()
            .map_err(|e| format!("the SDK's TLS settings: {e}"))?;
        // As the SDK's default client is made, with the proxy from the environment too.
        Ok(Some(
            aws_smithy_http_client::Builder::new().build_with_connector_fn(
                move |settings, components| {
                    let mut connector = aws_smithy_http_client::ConnectorBuilder::default()
                        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                        .tls_context(context.clone())
                        .proxy_config(crate::s3::proxy::sdk_config());
                    connector.set_connector_settings(settings.cloned());
                    if let Some(components) = components {
                        connector.set_sleep_impl(components.sleep_impl());
                    }
                    connector.build()
                },
            ),
        ))
    }

    /// The bundle's certificates for a reqwest client (GCS, Azure), added to the system's.
    pub(crate) fn reqwest_certs(&self) -> Vec<reqwest::Certificate> {
        self.bundle
            .iter()
            .flatten()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok())
            .collect()
    }

    /// A rustls client configuration for this trust (the lean path's HTTPS).
    pub(crate) fn client_config(&self) -> std::result::Result<rustls::ClientConfig, String> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(SYSTEM.iter().cloned());
        if let Some(certs) = &self.bundle {
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("the CA bundle: {e}"))?;
            }
        }
        config(roots)
    }
}

/// Whether an endpoint URL speaks TLS: `Some(true)` for `https://`, `Some(false)` for
/// `http://`, `None` for anything else.
pub(crate) fn is_https(endpoint: &str) -> Option<bool> {
    let scheme = |s: &str| {
        endpoint
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    if scheme("https://") {
        Some(true)
    } else if scheme("http://") {
        Some(false)
    } else {
        None
    }
}

/// A rustls client configuration that trusts nothing: for a plain-HTTP endpoint, whose
/// connections never use it (the system's certificates are then not even read).
pub(crate) fn plain_config() -> std::result::Result<rustls::ClientConfig, String> {
    config(RootCertStore::empty())
}

fn config(roots: RootCertStore) -> std::result::Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS versions: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Certificates as PEM text.
fn pem_text(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// The TLS failure somewhere in `err`'s chain of causes, if there is one: what the handshake
/// said, and what to do about it. Nothing about TLS gets better by trying again.
pub(crate) fn failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(t) = rustls_error(e) {
            return Some(explain(t));
        }
        next = e.source();
    }
    None
}

/// `e` as rustls's error, also when wrapped in I/O errors (hyper-rustls wraps it twice).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

fn explain(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(_) => format!(
            "TLS: {e}: the endpoint's certificate is not trusted; if a private certificate \
             authority signed it, name its PEM file as ca_bundle in the connection's settings \
             (for S3, AWS_CA_BUNDLE also does)"
        ),
        rustls::Error::InvalidMessage(_) => format!(
            "TLS: {e}: the endpoint does not answer in TLS; if it speaks plain HTTP, write its \
             endpoint with http://"
        ),
        _ => format!("TLS: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_bundle_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("barge-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let missing = dir.join("missing.pem");
        for (path, says) in [
            (&empty, "holds no certificate"),
            (&broken, "none of its 1 certificates can be a trust anchor"),
            (&missing, "No such file"),
        ] {
            let err = Trust::load("conn", Some(path))
                .err()
                .expect("a bad bundle is refused");
            let msg = err.to_string();
            assert!(
                msg.starts_with("conn: reading the CA bundle failed: ")
                    && msg.contains(&path.display().to_string())
                    && msg.contains(says),
                "{msg}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
