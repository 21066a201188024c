//! The `barge` binary as a user runs it: exit statuses, the messages a user sees, and what is
//! (and is not) left behind.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use barge_engine::location::ConnRef;
use barge_store::{ObjectAttrs, ObjectPath, Store, StoreError};
use common::*;

/// A command that must succeed and print JSON: the JSON, and stdout for messages.
fn json_ok(o: &Output) -> (serde_json::Value, String) {
    let (out, err) = text(o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON on stdout ({e}): {out}"));
    (v, out)
}

async fn ga() -> std::sync::Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named("ga".into()))
        .await
        .expect("connect")
}

async fn gb() -> std::sync::Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named("gb".into()))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_source_exits_1_naming_the_object() {
    let e = env("cli-missing");
    let p = prefix("cli-missing");
    let o = barge(
        &e,
        &["cp", &format!("ga:src/{p}nothing"), &format!("gb:dst/{p}x")],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("ga: object src/{p}nothing does not exist")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_destinations_are_refused_before_anything_moves() {
    let e = env("cli-dup");
    let p = prefix("cli-dup");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}a"),
        data(10, 1),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        store.as_ref(),
        "other",
        &format!("{p}a"),
        data(10, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let manifest = e.dir.join("m.json");
    std::fs::write(
        &manifest,
        format!(
            r#"[
  {{"src_conn_id": "ga", "src_bucket": "src", "src_key": "{p}a", "dest_conn_id": "gb", "dest_bucket": "dst", "dest_key": "{p}same"}},
  {{"src_conn_id": "ga", "src_bucket": "other", "src_key": "{p}a", "dest_conn_id": "gb", "dest_bucket": "dst", "dest_key": "{p}same"}}
]"#
        ),
    )
    .expect("manifest");
    let o = barge(&e, &["run", &manifest.to_string_lossy()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "two transfers write the same destination gb:dst/{p}same"
        )),
        "{err}"
    );
    let gb = gb().await;
    assert!(
        matches!(
            gb.head(&ObjectPath::new("dst", format!("{p}same"))).await,
            Err(StoreError::NotFound { .. })
        ),
        "nothing moved"
    );
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let e = env("cli-bad");
    for (args, expect) in [
        (
            vec!["cp", "nope:b/k", "/tmp/x"],
            "no connection named 'nope'",
        ),
        (
            vec!["cp", "s3://b/k", "/tmp/x", "--part-size", "big"],
            "'big' is not a size",
        ),
        (vec!["cp", "ga:src/dir/", "/tmp/x"], "add -r"),
        (
            vec!["cp", "ga:src/k", "/tmp/x", "--include", "*.csv"],
            "--include and --exclude go with -r",
        ),
        (
            vec!["run", "/definitely/not/here.json"],
            "cannot read manifest",
        ),
        (
            vec!["cleanup", "ga:dst/", "--older-than", "soon"],
            "not a duration",
        ),
        (
            vec!["--threads", "0", "cp", "ga:src/k", "/tmp/x"],
            "invalid value '0' for '--threads <N>'",
        ),
        (
            vec!["cp", "ga:src/k", "/tmp/x", "--bwlimit", "fast"],
            "--bwlimit 'fast' is not a rate",
        ),
        (
            vec!["cp", "ga:src/k", "/tmp/x", "--bwlimit", "100"],
            "--bwlimit 100 is out of range",
        ),
    ] {
        let o = barge(&e, &args);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(expect),
            "{args:?}: expected '{expect}' in: {err}"
        );
    }
    let bad_cfg = e.dir.join("bad.toml");
    std::fs::write(&bad_cfg, "[connections.x]\nendpont = 'http://x'\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_barge"))
        .args([
            "--config",
            &bad_cfg.to_string_lossy(),
            "cp",
            "x:b/k",
            "/tmp/y",
        ])
        .output()
        .expect("run");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml") && err.contains("endpont"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_plan_and_moves_nothing() {
    let e = env("cli-dry");
    let p = prefix("cli-dry");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}big"),
        data(12 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge(
        &e,
        &[
            "cp",
            &format!("ga:src/{p}big"),
            &format!("gb:dst/{p}big"),
            "--dry-run",
            "--part-size",
            "5MiB",
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("StreamParts: 3 parts of 5.0 MiB"), "{out}");
    let gb = gb().await;
    assert!(
        gb.head(&ObjectPath::new("dst", format!("{p}big")))
            .await
            .is_err()
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

fn write_tree(root: &Path) {
    for (rel, size) in [
        ("a.csv", 10),
        ("b.log", 20),
        ("deep/c.csv", 6 * MIB),
        ("deep/tmp.csv", 5),
    ] {
        let f = root.join(rel);
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f, data(size, size as u64)).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_folder_upload_with_json_summary() {
    let e = env("cli-tree");
    let p = prefix("cli-tree");
    let tree = e.dir.join("tree");
    write_tree(&tree);
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            &tree.to_string_lossy(),
            &format!("ga:dst/{p}"),
            "--include",
            "**.csv",
            "--exclude",
            "**/tmp.csv",
            "--json",
            "--part-size",
            "5MiB",
        ],
    );
    let (v, out) = json_ok(&o);
    assert_eq!(v["files_ok"], 2, "{out}");
    assert_eq!(v["files_failed"], 0);
    let store = ga().await;
    let got = read(store.as_ref(), "dst", &format!("{p}deep/c.csv")).await;
    assert_eq!(sha256(&got), sha256(&data(6 * MIB, (6 * MIB) as u64)));
    let meta = store
        .head(&ObjectPath::new("dst", format!("{p}a.csv")))
        .await
        .expect("a.csv");
    assert_eq!(meta.attrs.content_type.as_deref(), Some("text/csv"));
    assert!(
        store
            .head(&ObjectPath::new("dst", format!("{p}b.log")))
            .await
            .is_err()
    );
    assert!(
        store
            .head(&ObjectPath::new("dst", format!("{p}deep/tmp.csv")))
            .await
            .is_err()
    );
    assert_no_uploads(store.as_ref(), "dst", &p).await;

    // Back down: a local file keeps no checksum, so each is checked against the CRC32C the
    // source keeps (the small one's arrives with its GET; the multipart one's composite matches
    // as it is read in the parts it was uploaded in).
    let back = e.dir.join("back");
    let o = barge(
        &e,
        &[
            "cp",
            "-r",
            &format!("ga:dst/{p}"),
            &back.to_string_lossy(),
            "--json",
            "--part-size",
            "5MiB",
        ],
    );
    let (v, out) = json_ok(&o);
    assert_eq!(v["files_ok"], 2, "{out}");
    for f in v["files"].as_array().expect("files") {
        assert_eq!(f["verified"], "source-crc32c", "{out}");
    }
    let got = std::fs::read(back.join("deep/c.csv")).expect("downloaded c.csv");
    assert_eq!(sha256(&got), sha256(&data(6 * MIB, (6 * MIB) as u64)));
}

/// One network thread (the default on small machines) and several (the default on larger
/// ones) move the same files, byte for byte: a multipart file, a small one and an empty one, up
/// to S3, across to the second server, and back down.
#[tokio::test(flavor = "multi_thread")]
async fn every_runtime_size_moves_the_same_bytes() {
    let e = env("cli-threads");
    let src = e.dir.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let files = [
        ("big.bin", 13 * MIB + 7),
        ("small.bin", 1000),
        ("empty.bin", 0),
    ];
    for (name, size) in files {
        std::fs::write(src.join(name), data(size, size as u64 + 3)).expect("write");
    }
    for threads in ["1", "3"] {
        let p = prefix(&format!("cli-threads-{threads}"));
        let back = e.dir.join(format!("back-{threads}"));
        for (from, to) in [
            (src.to_string_lossy().into_owned(), format!("ga:dst/{p}")),
            (format!("ga:dst/{p}"), format!("gb:dst/{p}")),
            (format!("gb:dst/{p}"), back.to_string_lossy().into_owned()),
        ] {
            let o = barge(
                &e,
                &[
                    "--threads",
                    threads,
                    "cp",
                    "-r",
                    &from,
                    &to,
                    "--part-size",
                    "5MiB",
                ],
            );
            assert_eq!(
                o.status.code(),
                Some(0),
                "--threads {threads}: {from} -> {to}: {}",
                text(&o).1
            );
        }
        for (name, size) in files {
            let got = std::fs::read(back.join(name)).expect("downloaded file");
            assert_eq!(
                sha256(&got),
                sha256(&data(size, size as u64 + 3)),
                "--threads {threads}: {name}"
            );
        }
        assert_no_uploads(ga().await.as_ref(), "dst", &p).await;
        assert_no_uploads(gb().await.as_ref(), "dst", &p).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_output() {
    let e = env("cli-secret");
    let p = prefix("cli-secret");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}f"),
        data(6 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge(
        &e,
        &[
            "-vv",
            "cp",
            &format!("ga:src/{p}f"),
            &format!("gb:dst/{p}f"),
            "--json",
            "--part-size",
            "5MiB",
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    for var in ["BARGE_TEST_A_SECRET", "BARGE_TEST_B_SECRET"] {
        let secret = std::env::var(var).expect("secret set");
        assert!(
            !out.contains(&secret) && !err.contains(&secret),
            "{var} leaked"
        );
    }
    // Nor does the journal, which records connections by name only.
    let journal = std::fs::read(e.dir.join("journal.sqlite")).expect("journal written");
    let wal = std::fs::read(e.dir.join("journal.sqlite-wal")).unwrap_or_default();
    for var in [
        "BARGE_TEST_A_SECRET",
        "BARGE_TEST_B_SECRET",
        "BARGE_TEST_A_KEY_ID",
    ] {
        let v = std::env::var(var).expect("set");
        for bytes in [&journal, &wal] {
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "{var} found in the journal"
            );
        }
    }
    // A missing key with verbose logs: the error path does not leak either.
    let o = barge(
        &e,
        &["-vv", "cp", &format!("ga:src/{p}missing"), "/tmp/none"],
    );
    let (out, err) = text(&o);
    for var in ["BARGE_TEST_A_SECRET", "BARGE_TEST_B_SECRET"] {
        let secret = std::env::var(var).expect("secret set");
        assert!(
            !out.contains(&secret) && !err.contains(&secret),
            "{var} leaked"
        );
    }
}

/// A manifest whose connection ids are defined only as Airflow connections (`AIRFLOW_CONN_*`,
/// one in the URI form, one in the JSON form; no config file names them) moves its files
/// byte-identical, the empty one and a multipart one included, and neither the output at debug
/// level nor the journal holds a secret. An id nothing defines is refused naming both places.
#[tokio::test(flavor = "multi_thread")]
async fn airflow_connections_from_the_environment_move_a_manifest() {
    let e = env("cli-airflow");
    std::fs::write(&e.config, "").expect("an empty config");
    let p = prefix("cli-airflow");
    let ga = ga().await;
    let files = [("empty", 0), ("small", 1000), ("big", 6 * MIB)];
    for (name, len) in files {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}{name}"),
            data(len, len as u64),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let var = |v: &str| std::env::var(v).expect("test bed variable");
    let enc = uri_encode;
    let src_uri = format!(
        "aws://{}:{}@/?region_name=us-east-1&endpoint_url={}",
        enc(&var("BARGE_TEST_A_KEY_ID")),
        enc(&var("BARGE_TEST_A_SECRET")),
        enc(&var("BARGE_TEST_A_ENDPOINT")),
    );
    let dst_json = serde_json::json!({
        "conn_type": "aws",
        "login": var("BARGE_TEST_B_KEY_ID"),
        "password": var("BARGE_TEST_B_SECRET"),
        "extra": {"region_name": "us-east-1", "endpoint_url": var("BARGE_TEST_B_ENDPOINT")},
    })
    .to_string();
    let entries: Vec<_> = files
        .iter()
        .map(|(name, _)| {
            serde_json::json!({
                "src_conn_id": "lake_src", "src_bucket": "src", "src_key": format!("{p}{name}"),
                "dest_conn_id": "lake_dst", "dest_bucket": "dst", "dest_key": format!("{p}{name}"),
            })
        })
        .collect();
    let manifest = e.dir.join("m.json");
    std::fs::write(&manifest, serde_json::to_string(&entries).expect("json")).expect("manifest");
    let run = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
        c.arg("--config")
            .arg(&e.config)
            .arg("--journal")
            .arg(e.dir.join("journal.sqlite"))
            .args(args)
            .env_remove("BARGE_CONFIG")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().expect("run barge")
    };
    let both = [
        ("AIRFLOW_CONN_LAKE_SRC", src_uri.as_str()),
        ("AIRFLOW_CONN_LAKE_DST", dst_json.as_str()),
    ];
    let o = run(
        &both,
        &[
            "-vv",
            "run",
            &manifest.to_string_lossy(),
            "--part-size",
            "5MiB",
            "--json",
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let gb = gb().await;
    for (name, len) in files {
        assert_eq!(
            sha256(&read(gb.as_ref(), "dst", &format!("{p}{name}")).await),
            sha256(&data(len, len as u64)),
            "{name}"
        );
    }
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    let journal = std::fs::read(e.dir.join("journal.sqlite")).expect("journal written");
    let wal = std::fs::read(e.dir.join("journal.sqlite-wal")).unwrap_or_default();
    for v in ["BARGE_TEST_A_SECRET", "BARGE_TEST_B_SECRET"] {
        let secret = var(v);
        assert!(
            !out.contains(&secret) && !err.contains(&secret),
            "{v} leaked"
        );
        assert!(
            !out.contains(&enc(&secret)) && !err.contains(&enc(&secret)),
            "{v} leaked"
        );
        for bytes in [&journal, &wal] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{v} found in the journal"
            );
        }
    }
    // `aws_default` is the default AWS chain unless an Airflow connection defines it: defined
    // (and no AWS_* keys in the environment), it reaches server A.
    let default_manifest = e.dir.join("d.json");
    std::fs::write(
        &default_manifest,
        serde_json::json!([{
            "src_conn_id": "aws_default", "src_bucket": "src", "src_key": format!("{p}small"),
            "dest_conn_id": "lake_dst", "dest_bucket": "dst", "dest_key": format!("{p}via-default"),
        }])
        .to_string(),
    )
    .expect("manifest");
    let o = run(
        &[("AIRFLOW_CONN_AWS_DEFAULT", src_uri.as_str()), both[1]],
        &["run", &default_manifest.to_string_lossy()],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}via-default")).await),
        sha256(&data(1000, 1000))
    );
    // Without the destination's variable, the id is refused by name before anything moves.
    let o = run(&both[..1], &["run", &manifest.to_string_lossy()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("connection id 'lake_dst' is not configured")
            && err.contains("AIRFLOW_CONN_LAKE_DST"),
        "{err}"
    );
    // A connection barge cannot honour fails the file naming the variable, not quoting it, as a
    // config file's connection whose key variable is missing does.
    let role = format!("{src_uri}&role_arn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr");
    let o = run(
        &[("AIRFLOW_CONN_LAKE_SRC", role.as_str()), both[1]],
        &[
            "cp",
            &format!("lake_src:src/{p}small"),
            &format!("lake_dst:dst/{p}again"),
        ],
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("AIRFLOW_CONN_LAKE_SRC") && err.contains("role_arn"),
        "{err}"
    );
    let secret = var("BARGE_TEST_A_SECRET");
    assert!(!out.contains(&secret) && !err.contains(&secret) && !err.contains(&enc(&secret)));
}

/// `--bwlimit` holds reads and writes to the rate: 24 MiB between the two servers at 8 MiB/s
/// takes at least the three seconds the limit allows (and arrives byte-identical). Only a lower
/// bound is asserted: the limit is what is tested, not the speed.
#[tokio::test(flavor = "multi_thread")]
async fn bwlimit_holds_a_copy_to_the_rate() {
    let e = env("cli-bwlimit");
    let p = prefix("cli-bwlimit");
    let body = data(24 * MIB, 5);
    put(
        ga().await.as_ref(),
        "src",
        &format!("{p}f"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let t0 = std::time::Instant::now();
    let o = barge(
        &e,
        &[
            "cp",
            &format!("ga:src/{p}f"),
            &format!("gb:dst/{p}f"),
            "--bwlimit",
            "8MiB/s",
            "--part-size",
            "8MiB",
        ],
    );
    let took = t0.elapsed();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        took >= std::time::Duration::from_millis(2700),
        "24 MiB at 8 MiB/s took {took:?}"
    );
    let gb = gb().await;
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}f")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_command_aborts_stale_uploads() {
    let e = env("cli-cleanup");
    let p = prefix("cli-cleanup");
    let store = ga().await;
    store
        .create_upload(
            &ObjectPath::new("dst", format!("{p}left")),
            &ObjectAttrs::default(),
            barge_store::ChecksumMode::Crc32c,
        )
        .await
        .expect("create");
    let o = barge(
        &e,
        &[
            "cleanup",
            &format!("ga:dst/{p}"),
            "--older-than",
            "0s",
            "--json",
        ],
    );
    let (v, out) = json_ok(&o);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");
    assert_no_uploads(store.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn move_to_local_deletes_only_the_source_key() {
    let e = env("cli-move");
    let p = prefix("cli-move");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}x"),
        data(1234, 5),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}xy"),
        data(10, 6),
        &ObjectAttrs::default(),
    )
    .await;
    let dest = e.dir.join("out/");
    std::fs::create_dir_all(&dest).expect("mkdir");
    let o = barge(
        &e,
        &[
            "cp",
            &format!("ga:src/{p}x"),
            &format!("{}/", dest.display()),
            "--delete-source",
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(
        std::fs::read(dest.join("x")).expect("local copy"),
        data(1234, 5)
    );
    assert!(
        store
            .head(&ObjectPath::new("src", format!("{p}x")))
            .await
            .is_err()
    );
    assert!(
        store
            .head(&ObjectPath::new("src", format!("{p}xy")))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_journal_stops_before_anything_moves() {
    let e = env("cli-journal");
    let p = prefix("cli-journal");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}f"),
        data(10, 1),
        &ObjectAttrs::default(),
    )
    .await;
    // A journal path below a regular file can never be created, whoever runs the test.
    let blocker = e.dir.join("not-a-folder");
    std::fs::write(&blocker, b"x").expect("file");
    let journal = blocker.join("journal.sqlite");
    let o = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&e.config)
        .arg("--journal")
        .arg(&journal)
        .args(["cp", &format!("ga:src/{p}f"), &format!("gb:dst/{p}f")])
        .output()
        .expect("run");
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("journal") && err.contains("not-a-folder"),
        "{err}"
    );
    let gb = gb().await;
    assert!(
        gb.head(&ObjectPath::new("dst", format!("{p}f")))
            .await
            .is_err(),
        "nothing moved"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_credentials_fail_each_file_by_name_and_leave_nothing() {
    let e = env("cli-creds");
    let p = prefix("cli-creds");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}f"),
        data(6 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let cfg = format!(
        "{}[connections.badb]\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_B_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_WRONG_SECRET\"\n",
        config_text(),
        std::env::var("BARGE_TEST_B_ENDPOINT").expect("endpoint")
    );
    std::fs::write(&e.config, cfg).expect("config");
    let wrong = "0".repeat(64);
    let o = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&e.config)
        .arg("--journal")
        .arg(e.dir.join("j.sqlite"))
        .args([
            "cp",
            &format!("ga:src/{p}f"),
            &format!("badb:dst/{p}f"),
            "--part-size",
            "5MiB",
        ])
        .env("BARGE_TEST_WRONG_SECRET", &wrong)
        .output()
        .expect("run");
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("badb: access denied") && err.contains(&format!("dst/{p}f")),
        "{err}"
    );
    assert!(
        !err.contains(&wrong) && !out.contains(&wrong),
        "secret leaked"
    );
    let gb = gb().await;
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    assert!(
        store
            .head(&ObjectPath::new("src", format!("{p}f")))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_local_destination_is_named_and_nothing_is_left() {
    let e = env("cli-unwritable");
    let p = prefix("cli-unwritable");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}f"),
        data(6 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let blocker = e.dir.join("file");
    std::fs::write(&blocker, b"x").expect("file");
    let dest = blocker.join("out.bin");
    let o = barge(
        &e,
        &[
            "cp",
            &format!("ga:src/{p}f"),
            &dest.to_string_lossy(),
            "--part-size",
            "5MiB",
        ],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&dest.to_string_lossy().to_string()), "{err}");
    let left: Vec<_> = std::fs::read_dir(&e.dir)
        .expect("dir")
        .flatten()
        .filter(|x| x.file_name().to_string_lossy().contains("barge-tmp"))
        .collect();
    assert!(left.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_and_status_commands() {
    let e = env("cli-verify");
    let p = prefix("cli-verify");
    let store = ga().await;
    put(
        store.as_ref(),
        "src",
        &format!("{p}f"),
        data(7 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge(
        &e,
        &[
            "cp",
            &format!("ga:src/{p}f"),
            &format!("gb:dst/{p}f"),
            "--part-size",
            "5MiB",
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let o = barge(
        &e,
        &[
            "verify",
            &format!("ga:src/{p}f"),
            &format!("gb:dst/{p}f"),
            "--json",
        ],
    );
    let (v, out) = json_ok(&o);
    assert_eq!(v["same"], true, "{out}");
    // A different object with the same size is caught.
    put(
        store.as_ref(),
        "src",
        &format!("{p}g"),
        data(7 * MIB, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge(
        &e,
        &["verify", &format!("ga:src/{p}g"), &format!("gb:dst/{p}f")],
    );
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("DIFFERENT"), "{out}");
    let o = barge(&e, &["status", "--json"]);
    let (v, out) = json_ok(&o);
    assert_eq!(v["transfer"]["state"], "done", "{out}");
    assert_eq!(v["files"][0]["parts_done"], 2, "{out}");
    let o = barge(&e, &["list"]);
    assert!(text(&o).0.contains("done"), "{:?}", text(&o));
    let o = barge(&e, &["resume", "nosuchid"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("no transfer with id 'nosuchid'"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_standard_output_ends_quietly_not_with_a_panic() {
    let e = env("cli-pipe");
    let p = prefix("cli-pipe");
    let s = ga().await;
    put(
        s.as_ref(),
        "src",
        &format!("{p}a"),
        data(100, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&e.config)
        .args(["verify", &format!("ga:src/{p}a"), &format!("ga:src/{p}a")])
        .env_remove("BARGE_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run barge");
    drop(child.stdout.take()); // like `barge ... | head -0`
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}

/// An HTTPS endpoint whose certificate a private CA signed (a TLS front before server A): barge
/// copies both ways through it when the connection names the CA (`ca_bundle`, here a path
/// relative to the config file, or `AWS_CA_BUNDLE`), and without it refuses at once with the fix, retrying nothing and
/// leaving nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_private_ca_copies_when_trusted_and_says_how_when_not() {
    let e = env("cli-tls");
    let p = prefix("cli-tls");
    let front = barge_faultproxy::TlsFront::start(upstream("A"))
        .await
        .expect("TLS front");
    let ca = e.dir.join("private-ca.pem");
    std::fs::write(&ca, &front.ca_pem).expect("CA file");
    let tls_conn = |name: &str, bundle: Option<&Path>| {
        let mut s = format!(
            "[connections.{name}]\nendpoint = \"https://{}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_A_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_A_SECRET\"\n",
            front.addr
        );
        if let Some(b) = bundle {
            s.push_str(&format!("ca_bundle = \"{}\"\n", b.display()));
        }
        s + "\n"
    };
    std::fs::write(
        &e.config,
        format!(
            "{}{}{}",
            config_text(),
            // Relative to the config file's folder, not to where barge runs.
            tls_conn("ta", Some(Path::new("private-ca.pem"))),
            tls_conn("tn", None)
        ),
    )
    .expect("config");
    let a = ga().await;
    let big = data(12 * MIB + 3, 41);
    put(
        a.as_ref(),
        "src",
        &format!("{p}in/big"),
        big.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    for i in 0..3 {
        put(
            a.as_ref(),
            "src",
            &format!("{p}in/small{i}"),
            data(70_000 + i, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let run = |args: &[&str], ca_env: Option<&Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
        c.arg("--config")
            .arg(&e.config)
            .arg("--journal")
            .arg("none")
            .args(args)
            .env_remove("BARGE_CONFIG")
            .env_remove("AWS_CA_BUNDLE");
        if let Some(b) = ca_env {
            c.env("AWS_CA_BUNDLE", b);
        }
        c.output().expect("run barge")
    };
    // From HTTPS (ranged GETs of 5 MiB parts, whole small objects), then back to it
    // (multipart upload).
    let o = run(
        &[
            "cp",
            "-r",
            &format!("ta:src/{p}in/"),
            &format!("gb:dst/{p}"),
            "--part-size",
            "5MiB",
            "--json",
        ],
        None,
    );
    let (v, _) = json_ok(&o);
    assert_eq!(v["files_ok"], 4, "{v}");
    let o = run(
        &[
            "cp",
            &format!("gb:dst/{p}big"),
            &format!("ta:src/{p}back/big"),
            "--part-size",
            "5MiB",
        ],
        None,
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let b = gb().await;
    assert_eq!(
        sha256(&read(b.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&big)
    );
    assert_eq!(
        sha256(&read(a.as_ref(), "src", &format!("{p}back/big")).await),
        sha256(&big)
    );
    for i in 0..3 {
        assert_eq!(
            sha256(&read(b.as_ref(), "dst", &format!("{p}small{i}")).await),
            sha256(&data(70_000 + i, i as u64))
        );
    }
    // The connection without ca_bundle, trusting the CA through AWS_CA_BUNDLE.
    let o = run(
        &[
            "cp",
            &format!("tn:src/{p}in/small0"),
            &format!("gb:dst/{p}env/small0"),
        ],
        Some(&ca),
    );
    assert!(o.status.success(), "{}", text(&o).1);
    // And trusting nothing but the system's authorities: refused, with what to do.
    let o = run(
        &[
            "cp",
            &format!("tn:src/{p}in/big"),
            &format!("gb:dst/{p}untrusted/big"),
            "--part-size",
            "5MiB",
        ],
        None,
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tn: ")
            && err.contains("invalid peer certificate")
            && err.contains("name its PEM file as ca_bundle"),
        "{err}"
    );
    assert!(!err.contains("retry 1/"), "a TLS refusal is retried: {err}");
    assert!(
        b.head(&ObjectPath::new("dst", format!("{p}untrusted/big")))
            .await
            .is_err(),
        "something was written"
    );
    assert_no_uploads(b.as_ref(), "dst", &p).await;
    assert_no_uploads(a.as_ref(), "src", &p).await;
}

/// A proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, as curl and the AWS CLI read
/// them) carries every request. The endpoints here name a port nothing listens on and only the
/// proxies know the way to server A, so every path must go through them: whole small objects,
/// ranged GETs and multipart uploads over plain HTTP (absolute-form requests), and over HTTPS
/// with a private CA (CONNECT tunnels to a TLS front). `NO_PROXY` sends barge straight there.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_from_the_environment_carries_every_request() {
    const SECRET: &str = "pr0xy-pa55word";
    let e = env("cli-proxy");
    let p = prefix("cli-proxy");
    let plain = barge_faultproxy::ForwardProxy::start(upstream("A"))
        .await
        .expect("proxy");
    let front = barge_faultproxy::TlsFront::start(upstream("A"))
        .await
        .expect("TLS front");
    let tunnel = barge_faultproxy::ForwardProxy::start(front.addr)
        .await
        .expect("proxy");
    std::fs::write(e.dir.join("ca.pem"), &front.ca_pem).expect("CA file");
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let conn = |name: &str, scheme: &str| {
        format!(
            "[connections.{name}]\nendpoint = \"{scheme}://localhost:{nowhere}\"\nregion = \"us-east-1\"\naccess_key_id_env = \"BARGE_TEST_A_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_A_SECRET\"\nca_bundle = \"ca.pem\"\n\n"
        )
    };
    std::fs::write(&e.config, conn("pa", "http") + &conn("pt", "https")).expect("config");
    let input = e.dir.join("in");
    std::fs::create_dir_all(&input).expect("input folder");
    let big = data(12 * MIB + 3, 51);
    std::fs::write(input.join("big"), &big).expect("input");
    for i in 0..3 {
        std::fs::write(
            input.join(format!("small{i}")),
            data(70_000 + i, 60 + i as u64),
        )
        .expect("input");
    }
    let run = |args: &[&str], no_proxy: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
        c.arg("--config")
            .arg(&e.config)
            .arg("--journal")
            .arg("none");
        for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
            c.env_remove(v).env_remove(v.to_lowercase());
        }
        c.args(args)
            .env_remove("BARGE_CONFIG")
            .env_remove("AWS_CA_BUNDLE")
            // The proxies' credentials (ignored by these proxies) must never be shown.
            .env("HTTP_PROXY", format!("http://me:{SECRET}@{}", plain.addr))
            .env("HTTPS_PROXY", format!("http://me:{SECRET}@{}", tunnel.addr))
            .env("BARGE_LOG", "debug");
        if let Some(n) = no_proxy {
            c.env("NO_PROXY", n);
        }
        let o = c.output().expect("run barge");
        let (out, err) = text(&o);
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "the proxy's password was shown"
        );
        o
    };
    let ok = |o: &Output| assert_eq!(o.status.code(), Some(0), "{}", text(o).1);
    let dir = |d: &Path| format!("{}/", d.display());
    let parts = ["--part-size", "5MiB"];
    // Plain HTTP: up (a multipart upload and single PUTs), then down (ranged GETs, whole GETs).
    let up = run(
        &[
            "cp",
            "-r",
            &dir(&input),
            &format!("pa:src/{p}plain/"),
            parts[0],
            parts[1],
        ],
        None,
    );
    ok(&up);
    // The debug log names the proxy (so the check for its password above saw the logs).
    let (_, log) = text(&up);
    assert!(
        log.contains("lean path off") && log.contains(&plain.addr.to_string()),
        "{log}"
    );
    let down = e.dir.join("down-plain");
    ok(&run(
        &[
            "cp",
            "-r",
            &format!("pa:src/{p}plain/"),
            &dir(&down),
            parts[0],
            parts[1],
        ],
        None,
    ));
    // HTTPS through CONNECT tunnels, both ways.
    ok(&run(
        &[
            "cp",
            &input.join("big").display().to_string(),
            &format!("pt:src/{p}tls/big"),
            parts[0],
            parts[1],
        ],
        None,
    ));
    let down_tls = e.dir.join("down-tls");
    ok(&run(
        &[
            "cp",
            "-r",
            &format!("pt:src/{p}plain/"),
            &dir(&down_tls),
            parts[0],
            parts[1],
        ],
        None,
    ));
    let a = ga().await;
    for (name, len, seed) in [
        ("big", 12 * MIB + 3, 51),
        ("small0", 70_000, 60),
        ("small1", 70_001, 61),
        ("small2", 70_002, 62),
    ] {
        let want = sha256(&data(len, seed));
        assert_eq!(
            sha256(&read(a.as_ref(), "src", &format!("{p}plain/{name}")).await),
            want,
            "{name}"
        );
        for d in [&down, &down_tls] {
            assert_eq!(
                sha256(&std::fs::read(d.join(name)).expect("downloaded")),
                want,
                "{name} in {}",
                d.display()
            );
        }
    }
    assert_eq!(
        sha256(&read(a.as_ref(), "src", &format!("{p}tls/big")).await),
        sha256(&big)
    );
    assert_no_uploads(a.as_ref(), "src", &p).await;
    let [forwarded, _, refused] = plain.counts.snapshot();
    let [_, tunnels, _] = tunnel.counts.snapshot();
    assert!(
        forwarded > 0 && tunnels > 0 && refused == 0,
        "{forwarded} {tunnels} {refused}"
    );
    // NO_PROXY naming the endpoint's host: straight to the port nothing listens on.
    let o = run(
        &[
            "cp",
            &format!("pa:src/{p}plain/small0"),
            &dir(&e.dir.join("direct")),
            "--retries",
            "1",
        ],
        Some("localhost"),
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pa: ") && err.contains("Connection refused"),
        "{err}"
    );
    assert!(!err.contains("DispatchFailure"), "a debug dump: {err}");
    assert_eq!(
        plain.counts.snapshot()[0],
        forwarded,
        "NO_PROXY was not followed"
    );
}

/// The two hidden commands `bench/` measures the servers' ceilings with: each moves every byte
/// it reports, and the upload leaves neither an object nor an upload behind.
#[tokio::test(flavor = "multi_thread")]
async fn the_benchmark_ceilings_move_every_byte_and_leave_nothing() {
    let e = env("cli-ceiling");
    let p = prefix("cli-ceiling");
    let store = ga().await;
    let up = barge(
        &e,
        &[
            "debug",
            "upload-ceiling",
            &format!("ga:dst/{p}up"),
            "--size",
            "40MiB",
            "--part-size",
            "16MiB",
            "--concurrency",
            "3",
        ],
    );
    let (out, err) = text(&up);
    assert_eq!(up.status.code(), Some(0), "{err}");
    assert!(out.starts_with("40.0 MiB in "), "{out}");
    let left = store.list("dst", &p).await.expect("list");
    assert!(
        left.objects.is_empty(),
        "the ceiling's object is deleted: {left:?}"
    );
    assert_no_uploads(store.as_ref(), "dst", &p).await;

    // 20 MiB and 5 bytes, read in 8 MiB ranges: the last range is 4 MiB and 5 bytes.
    let size = (20 << 20) + 5;
    put(
        store.as_ref(),
        "src",
        &format!("{p}down"),
        data(size, 7),
        &ObjectAttrs::default(),
    )
    .await;
    let down = barge(
        &e,
        &[
            "debug",
            "download-ceiling",
            &format!("ga:src/{p}down"),
            "--part-size",
            "8MiB",
        ],
    );
    let (out, err) = text(&down);
    assert_eq!(down.status.code(), Some(0), "{err}");
    assert!(out.starts_with("20.0 MiB in "), "{out}");
    let missing = barge(
        &e,
        &["debug", "download-ceiling", &format!("ga:src/{p}none")],
    );
    let (_, err) = text(&missing);
    assert_ne!(missing.status.code(), Some(0));
    assert!(err.contains(&format!("{p}none")), "{err}");
}
