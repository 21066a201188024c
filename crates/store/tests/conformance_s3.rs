//! The conformance suite against a real S3 server (Garage, started by scripts/testbed.sh).

use barge_faultproxy::TlsFront;
use barge_store::s3::{CredentialSource, S3Config, S3Store, Secret};
use barge_store::{Store, StoreError, conformance};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the S3 test servers")
    })
}

async fn garage(which: &str) -> S3Store {
    S3Store::connect(garage_config(which))
        .await
        .expect("connect to Garage")
}

fn garage_config(which: &str) -> S3Config {
    let mut cfg = S3Config::new(format!("garage-{which}"));
    cfg.endpoint = Some(env(&format!("BARGE_TEST_{which}_ENDPOINT")));
    cfg.region = Some("us-east-1".into());
    cfg.path_style = true;
    cfg.credentials = CredentialSource::Static {
        access_key_id: env(&format!("BARGE_TEST_{which}_KEY_ID")),
        secret_access_key: Secret::new(env(&format!("BARGE_TEST_{which}_SECRET"))),
        session_token: None,
    };
    cfg
}

/// A TLS front for server A, with a certificate authority of its own, and the connection
/// settings for it: endpoint `https://127.0.0.1:PORT`, no CA bundle yet.
async fn garage_over_tls() -> (TlsFront, S3Config) {
    let front = TlsFront::start(server_a()).await.expect("TLS front");
    let mut cfg = garage_config("A");
    cfg.name = "garage-a-tls".into();
    cfg.endpoint = Some(format!("https://{}", front.addr));
    (front, cfg)
}

/// Server A's address (its endpoint is plain HTTP).
fn server_a() -> std::net::SocketAddr {
    env("BARGE_TEST_A_ENDPOINT")
        .trim_start_matches("http://")
        .parse()
        .expect("server A's address")
}

fn ca_file(front: &TlsFront) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("barge-ca-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, &front.ca_pem).expect("write the CA");
    path
}

#[tokio::test]
async fn s3_store_conforms() {
    let store = garage("A").await;
    // The test servers speak plain HTTP: the suite covers the lean small-object path.
    assert!(store.uses_lean_path());
    let prefix = format!("conformance-{}/", uuid::Uuid::new_v4().simple());
    conformance::run_all(&store, "src", &prefix).await;
    let left = store
        .list_uploads("src", &prefix)
        .await
        .expect("list uploads");
    assert!(left.is_empty(), "uploads left behind: {left:?}");
}

#[tokio::test]
async fn s3_store_conforms_over_https_with_a_private_ca() {
    let (front, mut cfg) = garage_over_tls().await;
    let ca = ca_file(&front);
    cfg.ca_bundle = Some(ca.clone());
    let store = S3Store::connect(cfg).await.expect("connect over TLS");
    // HTTPS takes the same lean path as plain HTTP, ranged GETs read by hand included.
    assert!(store.uses_lean_path());
    let prefix = format!("conformance-tls-{}/", uuid::Uuid::new_v4().simple());
    conformance::run_all(&store, "src", &prefix).await;
    assert!(
        store.reads_ranges_by_hand(),
        "ranged GETs went back to the SDK"
    );
    let left = store
        .list_uploads("src", &prefix)
        .await
        .expect("list uploads");
    assert!(left.is_empty(), "uploads left behind: {left:?}");
    let _ = std::fs::remove_file(ca);
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_with_the_fix_not_retried() {
    let (front, cfg) = garage_over_tls().await;
    let store = S3Store::connect(cfg).await.expect("client builds");
    let path = barge_store::ObjectPath::new("src", "tls/any");
    let pin = barge_store::Pin::default();
    let body = bytes::Bytes::from_static(b"some bytes");
    let crc = barge_store::checksum::crc32c(&body);
    // HEAD goes through the SDK; GET, ranged GET and PUT through the lean path.
    let errors = [
        store.head(&path).await.expect_err("head"),
        store.get(&path, &pin).await.map(|_| ()).expect_err("get"),
        store
            .get_range(&path, &pin, 0, 10)
            .await
            .map(|_| ())
            .expect_err("ranged get"),
        store
            .put(&path, body, &Default::default(), Some(crc))
            .await
            .map(|_| ())
            .expect_err("put"),
    ];
    for err in errors {
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Permanent { .. })
                && msg.starts_with("garage-a-tls: ")
                && msg.contains("invalid peer certificate")
                && msg.contains("name its PEM file as ca_bundle"),
            "{msg}"
        );
    }
    drop(front);
}

#[tokio::test]
async fn missing_bucket_is_named() {
    let store = garage("A").await;
    let path = barge_store::ObjectPath::new("no-such-bucket-here", "k");
    let errors = [
        store.head(&path).await.expect_err("missing bucket"),
        store
            .get(&path, &Default::default())
            .await
            .map(|_| ())
            .expect_err("missing bucket"),
    ];
    for err in errors {
        assert!(
            err.to_string()
                .contains("bucket 'no-such-bucket-here' does not exist"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_access_denied_and_secret_free() {
    let mut cfg = S3Config::new("bad-creds");
    cfg.endpoint = Some(env("BARGE_TEST_A_ENDPOINT"));
    cfg.region = Some("us-east-1".into());
    cfg.path_style = true;
    let secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    cfg.credentials = CredentialSource::Static {
        access_key_id: "GK000000000000000000000000".into(),
        secret_access_key: Secret::new(secret),
        session_token: None,
    };
    let store = S3Store::connect(cfg).await.expect("client builds");
    let path = barge_store::ObjectPath::new("src", "k");
    let body = bytes::Bytes::from_static(b"some bytes");
    let crc = barge_store::checksum::crc32c(&body);
    let errors = [
        store
            .head(&path)
            .await
            .expect_err("head with bad credentials"),
        store
            .get(&path, &Default::default())
            .await
            .map(|_| ())
            .expect_err("get with bad credentials"),
        store
            .put(&path, body, &Default::default(), Some(crc))
            .await
            .map(|_| ())
            .expect_err("put with bad credentials"),
    ];
    for err in errors {
        let msg = err.to_string();
        assert!(
            matches!(err, barge_store::StoreError::AccessDenied { .. })
                && msg.contains("bad-creds")
                && msg.contains("access denied"),
            "{msg}"
        );
        assert!(!msg.contains(secret), "the secret leaked into: {msg}");
    }
}

/// A TCP proxy to server A that holds each piece of every answer back for a few milliseconds,
/// so that the client always finds nothing to read yet and waits for the socket to wake it.
async fn slow_answers_to_a() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = server_a();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Ranged GETs read by hand wait for a megabyte at a time (`SO_RCVLOWAT`); a connection goes
/// back to the pool with that reset, or the next answer on it, smaller than the mark, is never
/// read (checked: without the reset this fails on the read timeout). One connection in turn: a
/// 2 MiB range, then 5 bytes, then 5 bytes again, each answer late.
#[tokio::test]
async fn a_pooled_connection_reads_a_small_answer_after_a_large_one() {
    use futures::TryStreamExt;
    let mut cfg = garage_config("A");
    cfg.endpoint = Some(format!("http://{}", slow_answers_to_a().await));
    cfg.read_timeout = std::time::Duration::from_secs(5);
    let store = S3Store::connect(cfg).await.expect("connect to Garage");
    let path = barge_store::ObjectPath::new(
        "src",
        format!("lowat-{}/obj", uuid::Uuid::new_v4().simple()),
    );
    let body: Vec<u8> = (0..2 * 1024 * 1024 + 5).map(|i| (i % 253) as u8).collect();
    store
        .put(&path, body.clone().into(), &Default::default(), None)
        .await
        .expect("put");
    let meta = store.head(&path).await.expect("head");
    let pin = barge_store::Pin::of(&meta);
    for (offset, len) in [(0, 2 * 1024 * 1024), (2 * 1024 * 1024, 5), (3, 5)] {
        let chunks: Vec<bytes::Bytes> = store
            .get_range_stream(&path, &pin, offset, len)
            .await
            .expect("ranged GET")
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("range {offset}+{len}: {e}"));
        let got: Vec<u8> = chunks.concat();
        assert_eq!(got, body[offset as usize..(offset + len) as usize]);
    }
    assert!(store.reads_ranges_by_hand());
    store.delete(&path, None).await.expect("delete");
}
