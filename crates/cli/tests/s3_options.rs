//! S3 write options (storage class, SSE-S3/SSE-KMS, canned ACLs, tags, requester pays) as a user
//! sets them, per connection and per command, checked on the objects written. Garage ignores
//! these headers, so moto's S3 server (started by the test bed) stands in for AWS; Garage shows
//! what happens on a store that ignores encryption.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::types::{Permission, ServerSideEncryption, StorageClass};
use barge_engine::connections::{ConfigFile, s3_config};
use barge_store::s3::S3Store;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn moto_endpoint() -> String {
    std::env::var("BARGE_TEST_M_ENDPOINT")
        .expect("moto's S3 server is not running: run the tests with scripts/test.sh")
}

/// `mo` (moto), `modef` (moto with write defaults), `mo2` (moto under another key) and any
/// extra connection text, beside the test bed's servers.
fn moto_connections(extra: &str) -> String {
    let mo = moto_endpoint();
    format!(
        "[connections.mo]\nendpoint = \"{mo}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_M_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_M_SECRET\"\n\n\
         [connections.modef]\nendpoint = \"{mo}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_M_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_M_SECRET\"\n\
         storage_class = \"STANDARD_IA\"\ntags = {{ team = \"data\" }}\n\n\
         [connections.mo2]\nendpoint = \"{mo}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_M2_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_M_SECRET\"\n\n{extra}"
    )
}

fn config_with(extra: &str) -> String {
    format!("{}{}", config_text(), moto_connections(extra))
}

fn env(tag: &str, extra: &str) -> Env {
    Env::new(tag, &moto_connections(extra))
}

/// barge as these tests run it: no journal, and `mo2`'s key (another service to barge than
/// `mo`, so copies between them go through it).
fn cmd(e: &Env, args: &[&str]) -> Command {
    let mut c = barge_cmd(&e.config, "none");
    c.args(args).env("BARGE_TEST_M2_KEY_ID", "moto-other");
    c
}

fn barge(e: &Env, args: &[&str]) -> Output {
    cmd(e, args).output().expect("run barge")
}

/// moto as an S3 store, and its SDK client for what barge's store does not read back.
async fn moto() -> S3Store {
    let file = ConfigFile::parse(&config_with(""), "test").expect("config");
    S3Store::connect(s3_config("mo", &file.connections["mo"]).expect("mo"))
        .await
        .expect("connect to moto")
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, body).expect("write");
}

async fn tags(s: &S3Store, key: &str) -> Vec<(String, String)> {
    let out = s
        .client()
        .get_object_tagging()
        .bucket("moto")
        .key(key)
        .send()
        .await
        .expect("tags");
    let mut v: Vec<_> = out
        .tag_set()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    v.sort();
    v
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn write_options_reach_every_object_written() {
    let e = env("s3opts", "");
    let mo = moto().await;
    let p = prefix("s3opts");
    let src = e.dir.join("src");
    write(&src, "small.bin", &data(1000, 1));
    write(&src, "sub/empty.bin", b"");
    let src_arg = format!("{}/", src.to_string_lossy());
    let dst = format!("modef:moto/{p}");
    // The connection's storage class and tags; the command's encryption, ACL and tags (which
    // replace the connection's).
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            &src_arg,
            &dst,
            "--sse",
            "aws:kms",
            "--sse-kms-key-id",
            "alias/barge-test",
            "--sse-kms-context",
            r#"{"project":"barge"}"#,
            "--acl",
            "public-read",
            "--tag",
            "tier=raw",
            "--tag",
            "owner=data eng",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for (rel, body) in [
        ("small.bin", data(1000, 1)),
        ("sub/empty.bin", bytes::Bytes::new()),
    ] {
        let key = format!("{p}{rel}");
        let head = mo
            .client()
            .head_object()
            .bucket("moto")
            .key(&key)
            .send()
            .await
            .expect("head");
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::StandardIa),
            "{rel}"
        );
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::AwsKms),
            "{rel}"
        );
        assert_eq!(head.ssekms_key_id(), Some("alias/barge-test"), "{rel}");
        assert_eq!(
            tags(&mo, &key).await,
            pairs(&[("owner", "data eng"), ("tier", "raw")]),
            "{rel}"
        );
        let acl = mo
            .client()
            .get_object_acl()
            .bucket("moto")
            .key(&key)
            .send()
            .await
            .expect("acl");
        assert!(
            acl.grants()
                .iter()
                .any(|g| g.permission() == Some(&Permission::Read)
                    && g.grantee()
                        .and_then(|g| g.uri())
                        .is_some_and(|u| u.ends_with("/AllUsers"))),
            "{rel}: public-read grants everyone READ: {:?}",
            acl.grants()
        );
        assert_eq!(
            sha256(&read(&mo, "moto", &key).await),
            sha256(&body),
            "{rel}"
        );
    }

    // A server-side copy within the store: the class the command asks for, the source's tags
    // copied by the store.
    let o = barge(
        &e,
        &[
            "cp",
            &format!("mo:moto/{p}small.bin"),
            &format!("mo:moto/{p}copy/small.bin"),
            "--storage-class",
            "GLACIER_IR",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let key = format!("{p}copy/small.bin");
    let head = mo
        .client()
        .head_object()
        .bucket("moto")
        .key(&key)
        .send()
        .await
        .expect("head");
    assert_eq!(head.storage_class(), Some(&StorageClass::GlacierIr));
    assert_eq!(
        tags(&mo, &key).await,
        pairs(&[("owner", "data eng"), ("tier", "raw")])
    );
    assert_eq!(
        sha256(&read(&mo, "moto", &key).await),
        sha256(&data(1000, 1))
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_ignores_encryption_keeps_nothing_barge_wrote() {
    let e = env("s3sse", "");
    let ga = connections()
        .get(&barge_engine::location::ConnRef::Named("ga".into()))
        .await
        .expect("ga");
    let p = prefix("s3sse");
    let src = e.dir.join("src");
    write(&src, "small.bin", &data(1000, 1));
    write(&src, "big.bin", &data(12 * MIB, 2));
    let src_arg = format!("{}/", src.to_string_lossy());
    let dst = format!("ga:dst/{p}");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            &src_arg,
            &dst,
            "--sse",
            "AES256",
            "--part-size",
            "5MiB",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    for f in ["small.bin", "big.bin"] {
        assert!(
            err.contains(&format!("{f}: server-side encryption AES256 was asked")),
            "{f}: {err}"
        );
    }
    assert!(err.contains("ga: "), "the store is named: {err}");
    let left = ga.list("dst", &p).await.expect("list").objects;
    assert!(left.is_empty(), "nothing kept: {left:?}");
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&e.dir).ok();
}

#[test]
fn bad_write_options_are_refused_by_name() {
    let e = env("s3bad", "");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--tag", "a=b&c"],
            "tag 'a=b&c': tags take letters, digits, spaces and",
        ),
        (&["--tag", "novalue"], "--tag 'novalue' is not KEY=VALUE"),
        (
            &["--sse-kms-key-id", "k"],
            "a KMS key id or encryption context goes with sse aws:kms",
        ),
        (&["--acl", "everyone"], "acl 'everyone' is not a canned ACL"),
        (
            &["--sse", "aws:kms", "--sse-kms-context", "[1]"],
            "the KMS encryption context must be a JSON object of strings",
        ),
    ];
    for (flags, msg) in cases {
        let mut args = vec!["cp", "ga:src/x", "ga:dst/x"];
        args.extend_from_slice(flags);
        let o = barge(&e, &args);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{flags:?}: {}", stderr(&o));
    }
    // A config file's own settings are checked when it is read.
    let e = env(
        "s3badcfg",
        "[connections.badsse]\nendpoint = \"http://127.0.0.1:1\"\nsse = \"kms\"\n",
    );
    let o = barge(&e, &["cp", "ga:src/x", "ga:dst/x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("connection 'badsse': sse 'kms' is not one of AES256"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

/// A TCP relay that counts, in what clients send, the requests (every SigV4 request carries
/// `x-amz-content-sha256`) and the requester-pays headers.
struct Counting {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
    payer: Arc<AtomicU64>,
}

async fn counting_relay(upstream: std::net::SocketAddr) -> Counting {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicU64::new(0));
    let payer = Arc::new(AtomicU64::new(0));
    let (r, py) = (requests.clone(), payer.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (r, py) = (r.clone(), py.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut tail: Vec<u8> = Vec::new();
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    // Headers may straddle two reads: search the last bytes of the one before.
                    let mut hay = std::mem::take(&mut tail);
                    hay.extend_from_slice(&buf[..n]);
                    let lower = hay.to_ascii_lowercase();
                    let count = |pat: &[u8]| lower.windows(pat.len()).filter(|w| *w == pat).count();
                    r.fetch_add(
                        count(b"\r\nx-amz-content-sha256:") as u64,
                        Ordering::Relaxed,
                    );
                    py.fetch_add(
                        count(b"\r\nx-amz-request-payer: requester\r\n") as u64,
                        Ordering::Relaxed,
                    );
                    let keep = hay.len().min(40);
                    tail = hay[hay.len() - keep..].to_vec();
                }
                sw.shutdown().await.ok();
            });
            tokio::spawn(async move {
                tokio::io::copy(&mut sr, &mut cw).await.ok();
            });
        }
    });
    Counting {
        addr,
        requests,
        payer,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requester_pays_goes_with_every_request() {
    let mo: std::net::SocketAddr = moto_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("moto address");
    let relay = counting_relay(mo).await;
    let e = env(
        "s3rp",
        &format!(
            "[connections.rp]\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_M_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_M_SECRET\"\n",
            relay.addr
        ),
    );
    let p = prefix("s3rp");
    let src = e.dir.join("src");
    write(&src, "a.bin", &data(1000, 1));
    write(&src, "b.bin", &data(2000, 2));
    let src_arg = format!("{}/", src.to_string_lossy());
    // Without the flag no request says it: the count below is not vacuous.
    let o = barge(&e, &["cp", "-r", &src_arg, &format!("rp:moto/{p}plain/")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(relay.requests.load(Ordering::Relaxed) >= 2);
    assert_eq!(relay.payer.load(Ordering::Relaxed), 0);
    // Up, a listing, and back down: every request carries it.
    let before = relay.requests.load(Ordering::Relaxed);
    let up = format!("rp:moto/{p}paid/");
    let down = e.dir.join("down");
    let down_arg = format!("{}/", down.to_string_lossy());
    for args in [
        vec!["cp", "-r", &src_arg, &up, "--requester-pays"],
        vec!["cp", "-r", &up, &down_arg, "--requester-pays"],
    ] {
        let o = barge(&e, &args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    let sent = relay.requests.load(Ordering::Relaxed) - before;
    assert!(sent >= 5, "uploads, a listing, downloads: {sent}");
    assert_eq!(relay.payer.load(Ordering::Relaxed), sent);
    assert_eq!(
        std::fs::read(down.join("b.bin")).expect("read"),
        data(2000, 2)
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_travel_with_copies_between_stores() {
    let e = env("s3tags", "");
    let mo = moto().await;
    let p = prefix("s3tags");
    for (name, size) in [("small.bin", 1000), ("big.bin", 6 * MIB)] {
        mo.client()
            .put_object()
            .bucket("moto")
            .key(format!("{p}in/{name}"))
            .body(data(size, 3).to_vec().into())
            .tagging("team=data&stage=raw")
            .send()
            .await
            .expect("put with tags");
    }
    // A prefix (small objects planned from the listing, read with one GET) and one object
    // (planned from a stat), through barge: not a server-side copy.
    for args in [
        vec![
            "cp".to_string(),
            "-r".into(),
            format!("mo:moto/{p}in/"),
            format!("mo2:moto/{p}out/"),
        ],
        vec![
            "cp".to_string(),
            format!("mo:moto/{p}in/small.bin"),
            format!("mo2:moto/{p}one/small.bin"),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = barge(&e, &[&args[..], &["--json"]].concat());
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert!(
            v["bytes_through_client"].as_u64() > Some(0),
            "not server-side: {v}"
        );
    }
    for key in [
        format!("{p}out/small.bin"),
        format!("{p}out/big.bin"),
        format!("{p}one/small.bin"),
    ] {
        assert_eq!(
            tags(&mo, &key).await,
            pairs(&[("stage", "raw"), ("team", "data")]),
            "{key}"
        );
    }
    assert_eq!(
        sha256(&read(&mo, "moto", &format!("{p}out/big.bin")).await),
        sha256(&data(6 * MIB, 3))
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_c_objects_are_written_and_read_with_their_connection_s_key() {
    let ep = |w: &str| std::env::var(format!("BARGE_TEST_{w}_ENDPOINT")).expect("test bed");
    let conn = |name: &str, w: &str, var: &str| {
        format!(
            "[connections.{name}]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_{w}_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_{w}_SECRET\"\nsse_c_key_env = \"{var}\"\n\n",
            ep(w)
        )
    };
    let e = env(
        "s3ssec",
        &format!(
            "{}{}{}",
            conn("gae", "A", "KEY_ONE"),
            conn("gbe", "B", "KEY_TWO"),
            conn("bad", "A", "KEY_BAD")
        ),
    );
    // Two 256-bit keys, 32 bytes as they are.
    let (k1, k2) = (
        uuid::Uuid::new_v4().simple().to_string(),
        uuid::Uuid::new_v4().simple().to_string(),
    );
    let run = |args: &[&str]| {
        let o = e
            .cmd(args)
            .env("KEY_ONE", &k1)
            .env("KEY_TWO", &k2)
            .env("KEY_BAD", "not a key")
            .output()
            .expect("run barge");
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert!(
            !all.contains(&k1) && !all.contains(&k2),
            "a key was printed: {all}"
        );
        o
    };
    let p = prefix("s3ssec");
    let src = e.dir.join("src");
    write(&src, "small.bin", &data(1000, 1));
    write(&src, "big.bin", &data(12 * MIB, 2));
    let src_arg = format!("{}/", src.to_string_lossy());
    let up = format!("gae:dst/{p}");
    let o = run(&["cp", "-r", &src_arg, &up, "--part-size", "5MiB"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Without the key the store refuses the bytes, and the message says why.
    let o = run(&[
        "cp",
        &format!("ga:dst/{p}small.bin"),
        &e.dir.join("x").to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("sse_c_key_env"), "{}", stderr(&o));

    // Within the key's connection: server-side. To another store with another key: through
    // barge, read with one key and written with the other. Back down: the same bytes.
    let o = run(&["cp", "-r", &up, &format!("gae:other/{p}"), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["bytes_through_client"].as_u64(), Some(0), "{v}");
    let o = run(&[
        "cp",
        "-r",
        &format!("gae:other/{p}"),
        &format!("gbe:dst/{p}"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let down = e.dir.join("down");
    let o = run(&[
        "cp",
        "-r",
        &format!("gbe:dst/{p}"),
        &format!("{}/", down.to_string_lossy()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(down.join("small.bin")).expect("read"),
        data(1000, 1)
    );
    assert_eq!(
        std::fs::read(down.join("big.bin")).expect("read"),
        data(12 * MIB, 2)
    );
    let o = run(&[
        "verify",
        &format!("gae:dst/{p}big.bin"),
        &format!("gbe:dst/{p}big.bin"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // A variable that holds no key is refused by name, its value not shown.
    let o = run(&["cp", &src_arg, &format!("bad:dst/{p}y/"), "-r"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("KEY_BAD does not hold an SSE-C key"), "{err}");
    assert!(!err.contains("not a key"), "{err}");
    let ga = connections()
        .get(&barge_engine::location::ConnRef::Named("ga".into()))
        .await
        .expect("ga");
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn full_object_checksums_match_across_part_sizes() {
    let e = env("s3full", "");
    let p = prefix("s3full");
    let body = data(12 * MIB + 7, 4);
    let file = e.dir.join("big.bin");
    std::fs::write(&file, &body).expect("write");
    let file = file.to_string_lossy().into_owned();
    let (a, b) = (format!("ga:dst/{p}big.bin"), format!("gb:dst/{p}big.bin"));
    for (src, dst, part) in [(&file, &a, "5MiB"), (&a, &b, "8MiB")] {
        let o = barge(
            &e,
            &[
                "cp",
                src,
                dst,
                "--part-size",
                part,
                "--checksum-type",
                "full-object",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let want = barge_store::checksum::crc32c_b64(barge_store::checksum::crc32c(&body));
    for (conn, bucket) in [("ga", "dst"), ("gb", "dst")] {
        let s = connections()
            .get(&barge_engine::location::ConnRef::Named(conn.into()))
            .await
            .expect("connect");
        let meta = s
            .head(&barge_store::ObjectPath::new(bucket, format!("{p}big.bin")))
            .await
            .expect("head");
        assert_eq!(meta.crc32c.as_deref(), Some(want.as_str()), "{conn}");
    }
    // Two objects cut into other parts compare by what the stores keep, reading nothing.
    let o = barge(&e, &["verify", &a, &b, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["method"], "reported-crc32c", "{v}");
    let o = barge(&e, &["cp", &file, &a, "--checksum-type", "sha1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checksum type 'sha1' is not one of composite, full_object"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn crc64nvme_goes_with_every_part_and_the_store_keeps_the_object_s() {
    use base64::Engine as _;
    let e = env("s3c64", "");
    let p = prefix("s3c64");
    let file = ConfigFile::parse(&config_with(""), "test").expect("config");
    let ga = S3Store::connect(s3_config("ga", &file.connections["ga"]).expect("ga"))
        .await
        .expect("connect");
    for (name, size) in [("small.bin", 1000), ("big.bin", 12 * MIB + 3)] {
        let body = data(size, 6);
        let local = e.dir.join(name);
        std::fs::write(&local, &body).expect("write");
        let key = format!("{p}{name}");
        let o = barge(
            &e,
            &[
                "cp",
                &local.to_string_lossy(),
                &format!("ga:dst/{key}"),
                "--part-size",
                "5MiB",
                "--checksum-algorithm",
                "crc64nvme",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let head = ga
            .client()
            .head_object()
            .bucket("dst")
            .key(&key)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .expect("head");
        let want = base64::engine::general_purpose::STANDARD
            .encode(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &body).to_be_bytes());
        assert_eq!(head.checksum_crc64_nvme(), Some(want.as_str()), "{name}");
        assert_eq!(
            sha256(&read(&ga, "dst", &key).await),
            sha256(&body),
            "{name}"
        );
    }
    let o = barge(&e, &["cp", "x", "ga:dst/x", "--checksum-algorithm", "md5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("checksum algorithm 'md5' is not one of crc32c, crc64nvme"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&e.dir).ok();
}
