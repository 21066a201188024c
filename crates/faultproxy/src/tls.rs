//! A TLS front for a plain-HTTP S3 server, as a load balancer in front of a private store
//! would be: it accepts TLS on a loopback port with a certificate for `localhost` and
//! `127.0.0.1` signed by a certificate authority made for it (so a client trusts it only when
//! told to, as with a company's own CA), and passes the decrypted bytes to the server.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

pub struct TlsFront {
    /// Where it listens: `https://{addr}` is the endpoint.
    pub addr: SocketAddr,
    /// The certificate authority that signed its certificate, PEM: what a client must trust.
    pub ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// A new certificate authority, and a server certificate it signed for loopback: (CA PEM,
/// server chain, server key).
fn certificates() -> std::io::Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>
{
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| io_error("CA", e))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "barge test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| io_error("CA key", e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| io_error("CA", e))?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| io_error("server certificate", e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "barge test server");
    let leaf_key = KeyPair::generate().map_err(|e| io_error("server key", e))?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| io_error("server certificate", e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    Ok((ca_cert.pem(), vec![leaf_cert.der().clone()], key))
}

impl TlsFront {
    /// Listen on a free loopback port and pass each connection, decrypted, to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let (ca_pem, chain, key) = certificates()?;
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| io_error("TLS versions", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| io_error("TLS certificate", e))?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends the handshake: nothing to do.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    // Large buffers: the front should cost the clients it serves little.
                    let _ = tokio::io::copy_bidirectional_with_sizes(
                        &mut tls,
                        &mut up,
                        256 * 1024,
                        256 * 1024,
                    )
                    .await;
                });
            }
        });
        Ok(Self { addr, ca_pem, task })
    }
}
