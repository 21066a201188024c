//! Trust, against the Garage test bed as a user meets it: barge never deletes the only copy,
//! never writes outside the destination folder, never loses one of two bodies, never hangs or
//! panics on a flag, never prints a password, and settles a lost completion answer by the
//! destination alone.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barge_engine::connections::Connections;
use barge_engine::input::TransferSpec;
use barge_engine::location::ConnRef;
use barge_engine::report::{Status, Verification};
use barge_engine::run::{Engine, RunOptions};
use barge_store::{ObjectAttrs, ObjectPath, Store, StoreError};
use bytes::Bytes;
use common::*;

/// A config naming server A twice (`ga` by IP, `ga2` by `localhost`) and server B once.
fn env(tag: &str) -> Env {
    let a = std::env::var("BARGE_TEST_A_ENDPOINT").unwrap_or_default();
    let alias = format!(
        "[connections.ga2]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_A_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_A_SECRET\"\n",
        a.replace("127.0.0.1", "localhost")
    );
    Env::new(tag, &alias)
}

async fn ga() -> Arc<dyn Store> {
    store("ga").await
}

async fn exists(store: &dyn Store, bucket: &str, key: &str) -> bool {
    match store.head(&ObjectPath::new(bucket, key)).await {
        Ok(_) => true,
        Err(StoreError::NotFound { .. }) => false,
        Err(e) => panic!("head {key}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_onto_itself_is_refused_and_the_only_copy_kept() {
    let e = env("trust-self");
    let p = prefix("trust-self");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}k"),
        data(5000, 1),
        &ObjectAttrs::default(),
    )
    .await;
    // One server under two names: 127.0.0.1 and localhost.
    let o = barge(
        &e,
        &[
            "cp",
            "--delete-source",
            &format!("ga:src/{p}k"),
            &format!("ga2:src/{p}k"),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "'ga2:src/{p}k' is the source 'ga:src/{p}k' itself (both are ga:src/{p}k): nothing was moved"
        )),
        "{err}"
    );
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}k")).await,
        data(5000, 1)
    );

    // Local files, spelled with '//', '..' and '.'.
    let f = e.dir.join("f");
    std::fs::write(&f, data(3000, 2)).expect("write");
    std::fs::create_dir_all(e.dir.join("d")).expect("mkdir");
    let d = e.dir.to_string_lossy();
    for dst in [format!("/{d}/f"), format!("{d}/d/../f"), format!("{d}/./f")] {
        let o = barge(&e, &["cp", "--delete-source", &f.to_string_lossy(), &dst]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{dst}: {err}");
        assert!(
            err.contains(&format!("'{dst}' is the source '{}' itself", f.display())),
            "{dst}: {err}"
        );
        assert_eq!(std::fs::read(&f).expect("kept"), data(3000, 2), "{dst}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_would_escape_or_collide_fail_alone_and_write_nothing_outside() {
    let e = env("trust-keys");
    let p = prefix("trust-keys");
    let store = ga().await;
    for (i, k) in ["q/x", "q//x", "q/../../escape.txt", "q/ok/y.bin"]
        .iter()
        .enumerate()
    {
        put(
            store.as_ref(),
            "src",
            &format!("{p}{k}"),
            data(2000 + i, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let out = e.dir.join("t").join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            "--delete-source",
            "--json",
            &format!("ga:src/{p}q/"),
            &format!("{}/", out.display()),
        ],
    );
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["files_ok"], 2, "{stdout}");
    assert_eq!(v["files_failed"], 2, "{stdout}");
    let errors: Vec<String> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter_map(|f| f["error"].as_str().map(str::to_string))
        .collect();
    assert!(
        errors.iter().any(|m| m.contains("empty segment")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|m| m.contains("'..' segment, which would leave the destination folder")),
        "{errors:?}"
    );
    // Only the two good files, inside the folder; nothing beside it or above it.
    assert_eq!(files_under(&e.dir.join("t")), ["out/ok/y.bin", "out/x"]);
    assert!(!e.dir.join("escape.txt").exists());
    assert_eq!(std::fs::read(out.join("x")).expect("x"), data(2000, 0));
    // The moved files' sources are gone; the refused ones' are kept with their bytes.
    assert!(!exists(store.as_ref(), "src", &format!("{p}q/x")).await);
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}q//x")).await,
        data(2001, 1)
    );
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}q/../../escape.txt")).await,
        data(2002, 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_in_a_manifest_with_delete_source_is_refused() {
    let e = env("trust-swap");
    let p = prefix("trust-swap");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}sw/A"),
        data(100, 1),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}sw/B"),
        data(100, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let manifest = e.dir.join("swap.json");
    std::fs::write(
        &manifest,
        format!(
            r#"[
  {{"src_conn_id": "ga", "src_bucket": "src", "src_key": "{p}sw/A", "dest_conn_id": "ga", "dest_bucket": "src", "dest_key": "{p}sw/B"}},
  {{"src_conn_id": "ga2", "src_bucket": "src", "src_key": "{p}sw/B", "dest_conn_id": "ga", "dest_bucket": "src", "dest_key": "{p}sw/A"}}
]"#
        ),
    )
    .expect("manifest");
    let o = barge(&e, &["run", &manifest.to_string_lossy(), "--delete-source"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("with --delete-source one of the two bodies would be lost"),
        "{err}"
    );
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}sw/A")).await,
        data(100, 1)
    );
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}sw/B")).await,
        data(100, 2)
    );
    // A prefix moved into its own subfolder (through another name for the server), and a
    // local folder into itself: refused, whatever they hold.
    put(
        store.as_ref(),
        "src",
        &format!("{p}sw/sub/C"),
        data(100, 3),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            "--delete-source",
            &format!("ga:src/{p}sw/"),
            &format!("ga2:src/{p}sw/sub/"),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("that moves a folder into itself; nothing was moved"),
        "{err}"
    );
    for (k, seed) in [("sw/A", 1), ("sw/B", 2), ("sw/sub/C", 3)] {
        assert_eq!(
            read(store.as_ref(), "src", &format!("{p}{k}")).await,
            data(100, seed),
            "{k}"
        );
    }
    assert!(!exists(store.as_ref(), "src", &format!("{p}sw/sub/A")).await);
    let local = e.dir.join("tree");
    std::fs::create_dir_all(local.join("sub")).expect("mkdir");
    std::fs::write(local.join("f"), b"kept").expect("write");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            "--delete-source",
            &format!("{}/", local.display()),
            &format!("{}/sub/../sub/", local.display()),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("moves a folder into itself"), "{err}");
    assert_eq!(std::fs::read(local.join("f")).expect("kept"), b"kept");
    // Without --delete-source, a copy into a subfolder is an ordinary copy.
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            &format!("ga:src/{p}sw/"),
            &format!("ga:src/{p}sw/sub/"),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        read(store.as_ref(), "src", &format!("{p}sw/sub/A")).await,
        data(100, 1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn folder_markers_and_file_folder_clashes_are_reported() {
    let e = env("trust-marker");
    let p = prefix("trust-marker");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}m/sub/"),
        Bytes::new(),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}m/a"),
        data(700, 1),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}m/a/b"),
        data(800, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let out = e.dir.join("out");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            "--json",
            &format!("ga:src/{p}m/"),
            &format!("{}/", out.display()),
        ],
    );
    let (stdout, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["files_skipped"], 1, "{stdout}");
    assert_eq!(v["skipped"][0]["path"], format!("ga:src/{p}m/sub/"));
    let failed: Vec<&serde_json::Value> = v["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|f| f["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert_eq!(failed[0]["src"], format!("ga:src/{p}m/a"));
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|m| m.contains("need as their folder")),
        "{stdout}"
    );
    // The folder's file arrived; no temporary file is left anywhere.
    assert_eq!(files_under(&out), ["a/b"]);
}

#[test]
fn flags_out_of_range_are_refused_with_their_range_never_a_panic() {
    let e = env("trust-flags");
    for (flag, value, expect) in [
        (
            "--part-size",
            "18446744073709551615",
            "--part-size 18446744073709551615 is out of range: use 1 bytes to 5GiB",
        ),
        (
            "--concurrency",
            "2305843009213693952",
            "--concurrency 2305843009213693952 is out of range: use 1 to 4096",
        ),
        (
            "--files",
            "2305843009213693952",
            "--files 2305843009213693952 is out of range: use 1 to 65536",
        ),
        (
            "--copy-part-size",
            "6GiB",
            "--copy-part-size 6GiB is out of range: use 1 bytes to 5GiB",
        ),
        (
            "--retries",
            "4294967295",
            "--retries 4294967295 is out of range: use 1 to 100",
        ),
    ] {
        let o = barge(&e, &["cp", "ga:src/k", "/tmp/x", flag, value]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        assert_eq!(err.trim(), format!("barge: {expect}"), "{flag}");
    }
    for (args, expect) in [
        (
            vec!["worker", "--concurrency", "2305843009213693952"],
            "--concurrency 2305843009213693952 is out of range: use 1 to 4096",
        ),
        (
            vec!["worker", "--lease", "100000000s"],
            "--lease 100000000s is out of range: use 1s to 24h",
        ),
        (
            vec!["list", "--limit", "0"],
            "--limit 0 is out of range: use 1 to 100000",
        ),
        (
            vec![
                "submit",
                "ga:src/k",
                "gb:dst/k",
                "--part-size",
                "18446744073709551615",
            ],
            "--part-size 18446744073709551615 is out of range: use 1 bytes to 5GiB",
        ),
    ] {
        let o = barge(&e, &args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("barge: {expect}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_part_the_size_of_the_memory_budget_moves_instead_of_hanging() {
    let e = env("trust-hang");
    let p = prefix("trust-hang");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}r10k"),
        data(10_000, 4),
        &ObjectAttrs::default(),
    )
    .await;
    let out = e.dir.join("o");
    let mut child = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&e.config)
        .args(["--journal", "none", "cp"])
        .arg(format!("ga:src/{p}r10k"))
        .arg(&out)
        .args(["--part-size", "3000", "--max-memory", "3000"])
        .env_remove("BARGE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("barge hung with a part the size of its memory budget");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(std::fs::read(&out).expect("copied"), data(10_000, 4));
}

#[test]
fn a_postgres_password_is_never_printed_in_any_spelling() {
    let e = env("trust-pgpass");
    let pg = pg_url();
    let rest = pg.split_once("://").map(|(_, r)| r).expect("url");
    let (user, host) = rest
        .split_once('@')
        .map_or(("", rest), |(u, h)| (u.split(':').next().unwrap_or(""), h));
    let user = if user.is_empty() { "postgres" } else { user };
    // The test server trusts every local connection: these passwords are sent and ignored, and
    // each command works; a dead port makes every message an error message instead.
    let sep = if host.contains('?') { '&' } else { '?' };
    let cases = [
        (format!("postgres://{user}:Pw1xQ9z@{host}"), vec!["Pw1xQ9z"]),
        (
            format!("postgres://{user}:p@ss7Zk@{host}"),
            vec!["p@ss7Zk", "ss7Zk"],
        ),
        (
            format!("postgres://{user}:p%40ss8Yk@{host}"),
            vec!["p@ss8Yk", "p%40ss8Yk", "ss8Yk"],
        ),
        (
            format!("postgres://{user}@{host}{sep}password=Qq3Secret"),
            vec!["Qq3Secret"],
        ),
        (
            format!("postgres://{user}@{host}{sep}sslpassword=Ssl5Secret"),
            vec!["Ssl5Secret"],
        ),
        (
            "postgres://u:Dead9Pass@127.0.0.1:1/db".to_string(),
            vec!["Dead9Pass"],
        ),
        (
            "postgres://u@127.0.0.1:1/db?password=Dead8Pass".to_string(),
            vec!["Dead8Pass"],
        ),
        (
            "postgres://u:x@y@127.0.0.1:1/db".to_string(),
            vec!["x@y", "@y@"],
        ),
    ];
    for (url, secrets) in cases {
        for args in [
            vec!["-vv", "list", "--json"],
            vec!["-vv", "status"],
            vec!["-vv", "status", "--json"],
            vec!["-vv", "cp", "ga:src/none", "/tmp/none", "--json"],
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_barge"))
                .arg("--config")
                .arg(&e.config)
                .arg("--journal")
                .arg(&url)
                .args(&args)
                .env_remove("BARGE_CONFIG")
                .output()
                .expect("run");
            let (out, err) = text(&o);
            for s in &secrets {
                assert!(
                    !out.contains(s) && !err.contains(s),
                    "{s} printed by {args:?} with {url}:\n{out}\n{err}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_completion_answer_is_settled_by_the_destination_and_a_vanished_upload_is_not_a_copy()
 {
    let p = prefix("trust-lost");
    let conns = connections();
    let a = conns.get(&ConnRef::Named("ga".into())).await.expect("ga");
    let b = conns.get(&ConnRef::Named("gb".into())).await.expect("gb");
    let body = data(12 * MIB, 9);
    put(
        a.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let lossy = Arc::new(Faulty {
        inner: b.clone(),
        fault: Fault::LoseFirstAnswer(false.into()),
    });
    let with_lossy_b = Arc::new(Connections::with_stores(vec![
        (ConnRef::Named("ga".into()), a.clone()),
        (ConnRef::Named("gb".into()), lossy as Arc<dyn Store>),
    ]));
    let mut opts = RunOptions::default();
    opts.plan.part_size = 5 * MIB as u64;
    opts.delete_source = true;
    opts.retry.base_delay = Duration::from_millis(10);
    let spec = TransferSpec {
        src: named("ga", "src", &format!("{p}big")),
        dst: named("gb", "dst", &format!("{p}big")),
    };
    let s = Engine::new(with_lossy_b, opts.clone())
        .run(vec![spec])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].verified, Verification::SizeAndCrc32c);
    assert!(s.files[0].source_deleted);
    assert_eq!(
        sha256(&read(b.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(b.as_ref(), "dst", &p).await;

    // An upload aborted by someone else (as `barge cleanup` does) over an older object of the
    // same size: not taken as the copy, the source kept, the older object left alone.
    put(
        a.as_ref(),
        "src",
        &format!("{p}big2"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let older = data(12 * MIB, 10);
    put(
        b.as_ref(),
        "dst",
        &format!("{p}big2"),
        older.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let aborts = Arc::new(Faulty {
        inner: b.clone(),
        fault: Fault::AbortBeforeCompletion,
    });
    let with_aborting_b = Arc::new(Connections::with_stores(vec![
        (ConnRef::Named("ga".into()), a.clone()),
        (ConnRef::Named("gb".into()), aborts as Arc<dyn Store>),
    ]));
    let spec = TransferSpec {
        src: named("ga", "src", &format!("{p}big2")),
        dst: named("gb", "dst", &format!("{p}big2")),
    };
    let s = Engine::new(with_aborting_b, opts)
        .run(vec![spec])
        .await
        .expect("run");
    assert_eq!(s.files[0].status, Status::Failed, "{s:#?}");
    assert!(!s.files[0].source_deleted);
    assert_eq!(
        sha256(&read(a.as_ref(), "src", &format!("{p}big2")).await),
        sha256(&body)
    );
    assert_eq!(
        sha256(&read(b.as_ref(), "dst", &format!("{p}big2")).await),
        sha256(&older)
    );
    assert_no_uploads(b.as_ref(), "dst", &p).await;
}

/// Cancels the run once `after` parts are done.
struct StopAfter {
    after: usize,
    seen: std::sync::atomic::AtomicUsize,
    token: tokio_util::sync::CancellationToken,
}

impl barge_engine::report::Observer for StopAfter {
    fn progress(&self, _file: usize, _bytes: u64) {
        if self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= self.after {
            self.token.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_download_reads_back_the_parts_it_keeps() {
    use barge_engine::journal::{Journal, SqlJournal};
    let p = prefix("trust-resume-local");
    let dir = temp_dir("trust-resume-local");
    let a = ga().await;
    let size = 30 * MIB + 7; // 6 parts of 5 MiB and a tail
    let body = data(size, 21);
    put(
        a.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let j = Arc::new(
        SqlJournal::open(&dir.join("journal.sqlite").to_string_lossy())
            .await
            .expect("journal"),
    );
    let mut opts = RunOptions::default();
    opts.plan.part_size = 5 * MIB as u64;
    opts.concurrency = 2;
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}big")),
        dst: barge_engine::location::Location::local(&out.join("big").to_string_lossy()),
    }];
    let engine = Engine::new(connections(), opts.clone()).with_journal(j.clone());
    let stop = Arc::new(StopAfter {
        after: 3,
        seen: 0.into(),
        token: engine.cancel_token(),
    });
    let first = engine
        .with_observer(stop)
        .run(specs.clone())
        .await
        .expect("first run");
    assert_eq!(first.files[0].status, Status::Cancelled, "{first:#?}");
    let tid = first.transfer_id.clone().expect("id");
    let files = j.files(&tid).await.expect("files");
    let upload_id = files[0].upload_id.clone().expect("an upload kept");
    let receipts = j.receipts(&tid, 0, &upload_id).await.expect("receipts");
    assert!(receipts.len() >= 3, "{receipts:?}");
    // A power cut after the receipt was recorded, before the page cache reached the disk: the
    // first recorded part's range holds zeros.
    let tmp = std::fs::read_dir(&out)
        .expect("out")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".barge-tmp"))
        .expect("the kept temporary file");
    let lost = &receipts[0];
    let offset = u64::from(lost.number - 1) * 5 * MIB as u64;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .expect("open tmp");
        f.write_all_at(&vec![0u8; lost.len as usize], offset)
            .expect("zero");
        f.sync_all().expect("sync");
    }
    let second = Engine::new(connections(), opts)
        .with_journal(j.clone())
        .run(specs)
        .await
        .expect("second run");
    assert!(second.success(), "{second:#?}");
    assert!(second.resumed);
    assert_eq!(
        second.parts_reused,
        receipts.len() as u64 - 1,
        "every recorded part but the zeroed one is kept"
    );
    assert_eq!(
        sha256(&std::fs::read(out.join("big")).expect("copied")),
        sha256(&body)
    );
    assert_eq!(files_under(&out), ["big"], "no temporary file left");
}

#[tokio::test(flavor = "multi_thread")]
async fn names_up_to_the_file_system_limit_download_whole() {
    let e = env("trust-longname");
    let p = prefix("trust-longname");
    let a = ga().await;
    // 255 bytes is the longest file name; the temporary name beside it must fit too.
    let long = format!("{}.bin", "n".repeat(251));
    let small = format!("{}.txt", "é".repeat(125));
    put(
        a.as_ref(),
        "src",
        &format!("{p}d/{long}"),
        data(12 * MIB, 5),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        a.as_ref(),
        "src",
        &format!("{p}d/{small}"),
        data(1000, 6),
        &ObjectAttrs::default(),
    )
    .await;
    let out = e.dir.join("out");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            "--part-size",
            "5MiB",
            &format!("ga:src/{p}d/"),
            &format!("{}/", out.display()),
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        std::fs::read(out.join(&long)).expect("long"),
        data(12 * MIB, 5)
    );
    assert_eq!(
        std::fs::read(out.join(&small)).expect("small"),
        data(1000, 6)
    );
    let mut want = vec![long, small];
    want.sort();
    assert_eq!(files_under(&out), want, "no temporary file left");
}
