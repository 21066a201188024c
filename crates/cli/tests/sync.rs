//! `barge sync` against the Garage test servers: exactly which files are copied, skipped and
//! deleted as a tree changes between runs; deletes held back by a failed copy and by
//! `--max-delete`; refusals; kill -9 and the same sync again.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use barge_engine::location::ConnRef;
use barge_store::{ObjectAttrs, ObjectPath, Store};
use common::*;

/// `barge sync ... --json`: the exit code and the report.
fn sync_json(e: &Env, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = barge(e, &all);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|err| {
        panic!(
            "JSON on stdout ({err}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o)
        )
    });
    (o.status.code(), v)
}

/// The report's decisions as `name -> action`, names relative to `root`.
fn actions(v: &serde_json::Value, root: &str) -> BTreeMap<String, String> {
    v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| {
            let dst = d["dst"].as_str().unwrap_or_default();
            (
                dst.strip_prefix(root).unwrap_or(dst).to_string(),
                d["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn reason<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["dst"].as_str().is_some_and(|s| s.ends_with(name)))
        .and_then(|d| d["reason"].as_str())
        .unwrap_or_default()
}

async fn store(name: &str) -> std::sync::Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named(name.into()))
        .await
        .expect("connect")
}

fn write(root: &Path, rel: &str, body: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, body).expect("write");
}

/// Every object under `prefix` of `bucket`, by path relative to it, with its SHA-256.
async fn tree(s: &dyn Store, bucket: &str, prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in s.list(bucket, prefix).await.expect("list").objects {
        let rel = m
            .path
            .key
            .strip_prefix(prefix)
            .unwrap_or_default()
            .to_string();
        out.insert(rel, sha256(&read(s, bucket, &m.path.key).await));
    }
    out
}

fn local_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                let body = std::fs::read(&p).expect("read");
                out.insert(rel.to_string_lossy().into_owned(), sha256(&body));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_copies_what_changed_skips_what_is_the_same_and_deletes_what_is_gone() {
    let e = env("sync");
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("sync");
    let src = e.dir.join("src");
    let big = 20 * MIB;
    write(&src, "a.bin", &data(1000, 1));
    write(&src, "empty.bin", b"");
    write(&src, "sub/big.bin", &data(big, 2));
    write(&src, "d.bin", &data(5000, 3));
    // Already on the destination: an object without a source, and one the filters leave out.
    put(
        ga.as_ref(),
        "dst",
        &format!("{p}old.bin"),
        data(10, 4),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        ga.as_ref(),
        "dst",
        &format!("{p}keep.tmp"),
        data(10, 5),
        &ObjectAttrs::default(),
    )
    .await;

    let s3 = format!("ga:dst/{p}");
    let root = format!("ga:dst/{p}");
    let src_arg = src.to_string_lossy().into_owned();
    let flags = ["--delete", "--exclude", "*.tmp", "--part-size", "8MiB"];
    let run = |extra: &[&str]| {
        let mut a = vec![src_arg.as_str(), s3.as_str()];
        a.extend_from_slice(&flags);
        a.extend_from_slice(extra);
        sync_json(&e, &a)
    };

    let (code, v) = run(&[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        actions(&v, &root),
        expect(&[
            ("a.bin", "copy"),
            ("d.bin", "copy"),
            ("empty.bin", "copy"),
            ("old.bin", "delete"),
            ("sub/big.bin", "copy"),
        ])
    );
    assert_eq!(
        (v["copied"].as_u64(), v["deleted"].as_u64()),
        (Some(4), Some(1)),
        "{v}"
    );
    let mut want = local_tree(&src);
    let mut kept = want.clone();
    kept.insert("keep.tmp".into(), sha256(&data(10, 5)));
    assert_eq!(
        tree(ga.as_ref(), "dst", &p).await,
        kept,
        "the excluded object is kept"
    );

    // Same size, other bytes (the first file, and the big one's last part); one removed, one
    // added. Only a checksum tells the first two apart.
    write(&src, "a.bin", &data(1000, 11));
    let mut changed = data(big, 2).to_vec();
    changed[big - 1] ^= 0xff;
    write(&src, "sub/big.bin", &changed);
    std::fs::remove_file(src.join("d.bin")).expect("rm");
    write(&src, "e.bin", &data(3000, 6));

    // --size-only sees no change in the two rewritten files.
    let (code, v) = run(&["--dry-run", "--size-only"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(actions(&v, &root)["a.bin"], "skip", "{v}");

    let (code, v) = run(&["--dry-run"]);
    assert_eq!(code, Some(0), "{v}");
    let plan = expect(&[
        ("a.bin", "copy"),
        ("d.bin", "delete"),
        ("e.bin", "copy"),
        ("empty.bin", "skip"),
        ("sub/big.bin", "copy"),
    ]);
    assert_eq!(actions(&v, &root), plan, "{v}");
    assert!(reason(&v, "a.bin").contains("CRC32C"), "{v}");
    assert_eq!(
        tree(ga.as_ref(), "dst", &p).await,
        kept,
        "a dry run touches nothing"
    );

    let (code, v) = run(&[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(actions(&v, &root), plan, "{v}");
    assert_eq!(
        (
            v["copied"].as_u64(),
            v["skipped"].as_u64(),
            v["deleted"].as_u64()
        ),
        (Some(3), Some(1), Some(1)),
        "{v}"
    );
    want = local_tree(&src);
    kept = want.clone();
    kept.insert("keep.tmp".into(), sha256(&data(10, 5)));
    assert_eq!(tree(ga.as_ref(), "dst", &p).await, kept);
    assert_no_uploads(ga.as_ref(), "dst", &p).await;

    // Nothing changed: nothing copied; the big file is matched by reading the local side in
    // the destination's parts, not by reading the destination back.
    let (code, v) = run(&[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["copied"].as_u64(), v["skipped"].as_u64()),
        (Some(0), Some(4)),
        "{v}"
    );
    assert!(
        reason(&v, "sub/big.bin").contains("source read in the destination's parts"),
        "{v}"
    );

    // Between two endpoints, then back down to a folder: byte-identical, and a second run
    // decides the big file by the source checksum barge recorded, reading nothing.
    let other = format!("gb:dst/{p}");
    let (code, v) = sync_json(&e, &[&s3, &other, "--exclude", "*.tmp"]);
    assert_eq!((code, v["copied"].as_u64()), (Some(0), Some(4)), "{v}");
    assert_eq!(tree(gb.as_ref(), "dst", &p).await, want);
    let (code, v) = sync_json(&e, &[&s3, &other, "--exclude", "*.tmp"]);
    assert_eq!((code, v["copied"].as_u64()), (Some(0), Some(0)), "{v}");
    assert!(
        reason(&v, "sub/big.bin").contains("recorded when it copied it"),
        "{v}"
    );
    // A same-size rewrite on the source store (by another tool: no checksum kept) is found.
    put(
        ga.as_ref(),
        "dst",
        &format!("{p}a.bin"),
        data(1000, 12),
        &ObjectAttrs::default(),
    )
    .await;
    let (code, v) = sync_json(&e, &[&s3, &other, "--exclude", "*.tmp"]);
    assert_eq!((code, v["copied"].as_u64()), (Some(0), Some(1)), "{v}");
    assert_eq!(actions(&v, &other)["a.bin"], "copy", "{v}");
    want.insert("a.bin".into(), sha256(&data(1000, 12)));
    assert_eq!(tree(gb.as_ref(), "dst", &p).await, want);
    let down = e.dir.join("down");
    let down_arg = down.to_string_lossy().into_owned();
    let (code, v) = sync_json(&e, &[&other, &down_arg]);
    assert_eq!((code, v["copied"].as_u64()), (Some(0), Some(4)), "{v}");
    assert_eq!(local_tree(&down), want);
    let (code, v) = sync_json(&e, &[&other, &down_arg]);
    assert_eq!((code, v["copied"].as_u64()), (Some(0), Some(0)), "{v}");
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_wait_for_every_copy_and_stop_at_max_delete() {
    let e = env("syncdel");
    let ga = store("ga").await;
    let p = prefix("syncdel");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}in/ok.bin"),
        data(100, 1),
        &ObjectAttrs::default(),
    )
    .await;
    // A key that cannot be a file inside the destination folder: that file fails alone.
    let hostile = format!("{p}in/sub/../../../escape.bin");
    put(
        ga.as_ref(),
        "src",
        &hostile,
        data(100, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let dst = e.dir.join("out");
    for name in ["x1", "x2", "x3"] {
        write(&dst, name, b"extra");
    }
    let src = format!("ga:src/{p}in/");
    let dst_arg = dst.to_string_lossy().into_owned();

    let o = barge(&e, &["sync", &src, &dst_arg, "--delete"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("1 copies failed: nothing is deleted"), "{err}");
    assert_eq!(
        local_tree(&dst).keys().cloned().collect::<Vec<_>>(),
        ["ok.bin", "x1", "x2", "x3"],
        "no delete after a failed copy"
    );
    assert!(!e.dir.join("escape.bin").exists() && !dst.join("escape.bin").exists());
    ga.delete(&ObjectPath::new("src", hostile.clone()), None)
        .await
        .expect("rm");

    let (code, v) = sync_json(&e, &[&src, &dst_arg, "--delete", "--max-delete", "2"]);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["deleted"].as_u64(), Some(2), "{v}");
    assert_eq!(
        v["not_deleted"][0]["reason"].as_str(),
        Some("--max-delete 2 reached: not deleted"),
        "{v}"
    );
    assert_eq!(
        local_tree(&dst).keys().cloned().collect::<Vec<_>>(),
        ["ok.bin", "x3"]
    );
    let (code, v) = sync_json(&e, &[&src, &dst_arg, "--delete", "--max-delete", "5"]);
    assert_eq!((code, v["deleted"].as_u64()), (Some(0), Some(1)), "{v}");
    assert_eq!(
        local_tree(&dst).keys().cloned().collect::<Vec<_>>(),
        ["ok.bin"]
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_that_could_lose_data_is_refused() {
    let e = env("syncno");
    let ga = store("ga").await;
    let p = prefix("syncno");
    put(
        ga.as_ref(),
        "dst",
        &format!("{p}a.bin"),
        data(10, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let inside = format!("ga:dst/{p}");
    let nested = format!("ga:dst/{p}backup/");
    let empty = e.dir.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let empty = empty.to_string_lossy().into_owned();
    for (args, msg) in [
        (
            vec!["sync", &inside, &nested, "--delete"],
            "one folder or one holds the other",
        ),
        (
            vec!["sync", &empty, &inside, "--delete"],
            "nothing to sync: no object under",
        ),
        (
            vec!["sync", &inside, &empty, "--delete-source"],
            "sync never deletes sources",
        ),
        (
            vec!["sync", &inside, &empty, "--max-delete", "3"],
            "--max-delete goes with --delete",
        ),
    ] {
        let o = barge(&e, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(
        tree(ga.as_ref(), "dst", &p).await.len(),
        1,
        "nothing deleted or written"
    );
    std::fs::remove_dir_all(&e.dir).ok();
}

fn parts_done(e: &Env) -> u64 {
    let o = barge(e, &["status", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .ok()
        .and_then(|v| {
            v["files"].as_array().map(|f| {
                f.iter()
                    .filter(|f| f["dst"].as_str().is_some_and(|d| d.ends_with("big.bin")))
                    .filter_map(|f| f["parts_done"].as_u64())
                    .sum()
            })
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_then_the_same_sync_continues_the_upload() {
    let e = env("synckill");
    let ga = store("ga").await;
    let p = prefix("synckill");
    let src = e.dir.join("src");
    let size = 96 * MIB;
    let body = data(size, 7);
    write(&src, "big.bin", &body);
    write(&src, "small.bin", &data(100, 8));
    let src_arg = src.to_string_lossy().into_owned();
    let dst = format!("ga:dst/{p}");
    let args = [
        "sync",
        src_arg.as_str(),
        dst.as_str(),
        "--part-size",
        "8MiB",
        "--concurrency",
        "2",
        "--bwlimit",
        "16MiB",
        "--quiet",
    ];
    let mut child = e
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let t0 = Instant::now();
    while parts_done(&e) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        assert!(child.try_wait().expect("poll").is_none(), "ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let recorded = parts_done(&e);
    assert!(recorded < 12, "killed before the end");

    let mut again: Vec<&str> = args[..7].to_vec();
    again.push("--json");
    let o = barge(&e, &again);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v["copied"].as_u64(),
        Some(1),
        "only the big file is copied now: {v}"
    );
    let resumed = &v["copies"][0];
    assert_eq!(resumed["resumed"], true, "{v}");
    assert!(
        resumed["parts_reused"].as_u64() >= Some(recorded),
        "every part recorded before the kill is kept: {v}"
    );
    assert_eq!(
        sha256(&read(ga.as_ref(), "dst", &format!("{p}big.bin")).await),
        sha256(&body)
    );
    assert_eq!(tree(ga.as_ref(), "dst", &p).await, local_tree(&src));
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&e.dir).ok();
}
