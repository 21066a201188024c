//! Shared set-up for the integration tests: connections to the two Garage servers that
//! scripts/testbed.sh starts, unique prefixes, data, checksums.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use barge_engine::connections::{ConfigFile, Connections};
use barge_engine::location::{ConnRef, Location};
use barge_store::{
    ByteChunks, Capabilities, ChecksumMode, Endpoint, Listing, ObjectAttrs, ObjectMeta, ObjectPath,
    PartReceipt, PartSpec, PendingUpload, Pin, PutReceipt, Store, StoreError, UploadRef,
};
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub const MIB: usize = 1024 * 1024;

pub fn require_testbed() {
    assert!(
        std::env::var("BARGE_TEST_A_ENDPOINT").is_ok()
            && std::env::var("BARGE_TEST_B_ENDPOINT").is_ok(),
        "the S3 test servers are not running: run the tests with scripts/test.sh"
    );
}

/// The address of test server `which` (`A` or `B`), for a proxy in front of it.
pub fn upstream(which: &str) -> std::net::SocketAddr {
    require_testbed();
    let ep = std::env::var(format!("BARGE_TEST_{which}_ENDPOINT")).unwrap_or_default();
    ep.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("test server {which}'s endpoint {ep}: {e}"))
}

/// The config file text naming both test servers as `ga` and `gb`.
pub fn config_text() -> String {
    require_testbed();
    let mut s = String::new();
    for (name, which) in [("ga", "A"), ("gb", "B")] {
        s.push_str(&format!(
            "[connections.{name}]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_{which}_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_{which}_SECRET\"\n\n",
            std::env::var(format!("BARGE_TEST_{which}_ENDPOINT")).unwrap_or_default()
        ));
    }
    s
}

pub fn connections() -> Arc<Connections> {
    Arc::new(Connections::new(
        ConfigFile::parse(&config_text(), "test").expect("test config"),
    ))
}

/// A fresh folder for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("barge-it-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// `s` percent-encoded but for ASCII letters and digits, as a URI's user, password or query
/// value (Airflow's connection URIs).
pub fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A unique key prefix for one test.
pub fn prefix(tag: &str) -> String {
    format!("it-{tag}-{}/", uuid::Uuid::new_v4().simple())
}

pub fn named(conn: &str, bucket: &str, key: &str) -> Location {
    Location {
        conn: ConnRef::Named(conn.into()),
        path: ObjectPath::new(bucket, key),
    }
}

/// Deterministic, incompressible test data.
pub fn data(len: usize, seed: u64) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

pub fn sha256(b: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b);
    format!("{:x}", h.finalize())
}

pub async fn put(store: &dyn Store, bucket: &str, key: &str, body: Bytes, attrs: &ObjectAttrs) {
    store
        .put(&ObjectPath::new(bucket, key), body, attrs, None)
        .await
        .expect("test set-up put");
}

pub async fn read(store: &dyn Store, bucket: &str, key: &str) -> Bytes {
    let path = ObjectPath::new(bucket, key);
    let meta = store.head(&path).await.expect("destination exists");
    store
        .get_range(&path, &Pin::of(&meta), 0, meta.size)
        .await
        .expect("read destination")
}

/// No multipart upload is left open under the prefix.
pub async fn assert_no_uploads(store: &dyn Store, bucket: &str, prefix: &str) {
    let left = store
        .list_uploads(bucket, prefix)
        .await
        .expect("list uploads");
    assert!(
        left.is_empty(),
        "multipart uploads left behind under {bucket}/{prefix}: {left:?}"
    );
}

/// The throwaway PostgreSQL server scripts/testbed.sh starts.
pub fn pg_url() -> String {
    std::env::var("BARGE_TEST_PG_URL")
        .expect("BARGE_TEST_PG_URL is not set: run the tests with scripts/test.sh")
}

/// A config file naming both test servers, in a fresh folder.
pub fn config_file(tag: &str) -> PathBuf {
    let path = temp_dir(tag).join("config.toml");
    std::fs::write(&path, config_text()).expect("config");
    path
}

/// The barge binary with a config file and a journal.
pub fn barge_cmd(config: &std::path::Path, journal: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_barge"));
    c.arg("--config")
        .arg(config)
        .arg("--journal")
        .arg(journal)
        .env_remove("BARGE_CONFIG")
        .env_remove("BARGE_JOURNAL")
        .env_remove("BARGE_LOG");
    c
}

/// A test's own folder: a config file naming the test servers (and `extra` connections) and
/// the SQLite journal of the commands it runs.
pub struct Env {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Env {
    pub fn new(tag: &str, extra: &str) -> Self {
        let dir = temp_dir(tag);
        let config = dir.join("config.toml");
        std::fs::write(&config, format!("{}{extra}", config_text())).expect("config");
        Env { dir, config }
    }

    /// The barge binary with this folder's config and journal, and `args`.
    pub fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = barge_cmd(
            &self.config,
            &self.dir.join("journal.sqlite").to_string_lossy(),
        );
        c.args(args);
        c
    }
}

/// A folder with the test servers' config.
pub fn env(tag: &str) -> Env {
    Env::new(tag, "")
}

/// barge run to the end in `e`'s folder.
pub fn barge(e: &Env, args: &[&str]) -> std::process::Output {
    e.cmd(args).output().expect("run barge")
}

/// A finished command's standard error, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A finished command's standard output and error, as text.
pub fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every file under `dir` (hidden ones too), relative to it, sorted.
pub fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The test server a connection of `connections()` names (`ga` or `gb`).
pub async fn store(name: &str) -> Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named(name.into()))
        .await
        .expect("connect")
}

/// What goes wrong with a completion on server B.
#[derive(Debug)]
pub enum Fault {
    /// Garage completes the object, the 200 never arrives (once), and the retry finds no upload.
    LoseFirstAnswer(std::sync::atomic::AtomicBool),
    /// Someone else (as `barge cleanup` does) aborts every upload just before its completion.
    AbortBeforeCompletion,
}

/// Server B as barge sees it, but for `fault`.
#[derive(Debug)]
pub struct Faulty {
    pub inner: Arc<dyn Store>,
    pub fault: Fault,
}

#[async_trait::async_trait]
impl Store for Faulty {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn service_identity(&self) -> Option<&str> {
        self.inner.service_identity()
    }
    fn endpoint(&self) -> Endpoint {
        self.inner.endpoint()
    }
    async fn head(&self, path: &ObjectPath) -> barge_store::Result<ObjectMeta> {
        self.inner.head(path).await
    }
    async fn list(&self, bucket: &str, prefix: &str) -> barge_store::Result<Listing> {
        self.inner.list(bucket, prefix).await
    }
    async fn get_range(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> barge_store::Result<Bytes> {
        self.inner.get_range(path, pin, offset, len).await
    }
    async fn get_range_stream(
        &self,
        path: &ObjectPath,
        pin: &Pin,
        offset: u64,
        len: u64,
    ) -> barge_store::Result<ByteChunks> {
        self.inner.get_range_stream(path, pin, offset, len).await
    }
    async fn put(
        &self,
        path: &ObjectPath,
        data: Bytes,
        attrs: &ObjectAttrs,
        crc32c: Option<u32>,
    ) -> barge_store::Result<PutReceipt> {
        self.inner.put(path, data, attrs, crc32c).await
    }
    async fn create_upload(
        &self,
        path: &ObjectPath,
        attrs: &ObjectAttrs,
        checksums: ChecksumMode,
    ) -> barge_store::Result<UploadRef> {
        self.inner.create_upload(path, attrs, checksums).await
    }
    async fn upload_part(
        &self,
        upload: &UploadRef,
        part: &PartSpec,
        data: Bytes,
        crc32c: Option<u32>,
    ) -> barge_store::Result<PartReceipt> {
        self.inner.upload_part(upload, part, data, crc32c).await
    }
    async fn complete_upload(
        &self,
        upload: &UploadRef,
        parts: &[PartReceipt],
    ) -> barge_store::Result<PutReceipt> {
        if let Fault::AbortBeforeCompletion = self.fault {
            self.inner.abort_upload(upload).await?;
        }
        let r = self.inner.complete_upload(upload, parts).await;
        if let Fault::LoseFirstAnswer(lost) = &self.fault
            && r.is_ok()
            && !lost.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::Transient {
                store: self.name().to_string(),
                op: "CompleteMultipartUpload".into(),
                detail: "connection reset before the answer (injected)".into(),
            });
        }
        r
    }
    async fn abort_upload(&self, upload: &UploadRef) -> barge_store::Result<()> {
        self.inner.abort_upload(upload).await
    }
    async fn list_parts(&self, upload: &UploadRef) -> barge_store::Result<Vec<PartReceipt>> {
        self.inner.list_parts(upload).await
    }
    async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> barge_store::Result<Vec<PendingUpload>> {
        self.inner.list_uploads(bucket, prefix).await
    }
    async fn delete(&self, path: &ObjectPath, version_id: Option<&str>) -> barge_store::Result<()> {
        self.inner.delete(path, version_id).await
    }
}
