//! Many workers, one PostgreSQL journal: submit, workers on queues, a worker killed mid-part, a
//! part moved twice, a part whose stored bytes differ from the journal, refused duplicate
//! destinations, metrics. Every test uses its own queue, so tests running at once do not take
//! each other's work.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barge_engine::cluster::{SubmitOptions, Until, Worker, WorkerOptions, submit};
use barge_engine::input::TransferSpec;
use barge_engine::journal::{FileState, Journal, SqlJournal, TransferState};
use barge_engine::location::ConnRef;
use barge_store::{ObjectAttrs, PartSpec, Store, UploadRef};
use common::*;
use tokio_util::sync::CancellationToken;

fn queue(tag: &str) -> String {
    format!("{tag}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn out_text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Wait for a child, killing it after `secs`.
fn wait(mut child: Child, secs: u64, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let o = child.wait_with_output().expect("output");
                panic!(
                    "{what} did not finish in {secs}s; stderr:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

async fn store(name: &str) -> Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named(name.into()))
        .await
        .expect("connect")
}

/// Run `worker` until transfer `tid` settles, at most a minute (`why` says what it means if not).
async fn settle(worker: &Arc<Worker>, tid: &str, why: &str) {
    tokio::time::timeout(
        Duration::from_secs(60),
        worker.run(CancellationToken::new(), Until::Settled(tid.to_string())),
    )
    .await
    .expect(why)
    .expect("worker");
}

async fn journal() -> Arc<SqlJournal> {
    Arc::new(SqlJournal::open(&pg_url()).await.expect("open the journal"))
}

/// Put `body` at ga:src/`key`; its copy to gb:dst/`key`.
async fn source(ga: &dyn Store, key: &str, body: bytes::Bytes) -> TransferSpec {
    put(ga, "src", key, body, &ObjectAttrs::default()).await;
    TransferSpec {
        src: named("ga", "src", key),
        dst: named("gb", "dst", key),
    }
}

/// Put `len` bytes of test data at ga:src/{p}big and submit its copy to gb:dst/{p}big on queue
/// `q`, in 5 MiB parts, with `args` added to `barge submit`. Returns the transfer id and the
/// bytes.
async fn submit_big(
    config: &std::path::Path,
    p: &str,
    q: &str,
    len: usize,
    seed: u64,
    args: &[&str],
) -> (String, bytes::Bytes) {
    let body = data(len, seed);
    let ga = store("ga").await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge_cmd(config, &pg_url())
        .args([
            "submit",
            &format!("ga:src/{p}big"),
            &format!("gb:dst/{p}big"),
        ])
        .args(["--queue", q, "--part-size", "5MiB"])
        .args(args)
        .output()
        .expect("submit");
    let (id, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    (id, body)
}

/// Start a worker on queue `q` (with `args`) and return once it holds a part.
fn worker_holding_parts(config: &std::path::Path, q: &str, args: &[&str]) -> Child {
    let mut w = barge_cmd(config, &pg_url())
        .args(["worker", "--queue", q])
        .args(args)
        .env("BARGE_LOG", "warn,barge_engine::cluster=debug")
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let stderr = w.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let status = w.wait().expect("wait");
            panic!("the worker ended ({status}) before claiming a part:\n{seen}");
        };
        if line.contains("claimed part") {
            break;
        }
        seen.push_str(&line);
        seen.push('\n');
        assert!(
            Instant::now() < deadline,
            "the worker never claimed a part:\n{seen}"
        );
    }
    // Keep draining its log, so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    w
}

fn status_json(config: &std::path::Path, id: &str) -> serde_json::Value {
    let o = barge_cmd(config, &pg_url())
        .args(["status", id, "--json"])
        .output()
        .expect("status");
    serde_json::from_slice(&o.stdout).expect("status JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_returns_an_id_and_only_workers_of_its_queue_do_it() {
    let config = config_file("cl-queue");
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-queue");
    let body = data(21 * MIB + 5, 1);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}obj"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}empty"),
        bytes::Bytes::new(),
        &ObjectAttrs::default(),
    )
    .await;
    let manifest = config.with_file_name("m.csv");
    std::fs::write(
        &manifest,
        format!(
            "src_conn_id,src_bucket,src_key,dest_conn_id,dest_bucket,dest_key\n\
             ga,src,{p}obj,gb,dst,{p}obj\nga,src,{p}empty,gb,dst,{p}empty\n"
        ),
    )
    .expect("manifest");
    let q = queue("large");
    let o = barge_cmd(&config, &pg_url())
        .args([
            "submit",
            manifest.to_str().expect("utf-8"),
            "--queue",
            &q,
            "--part-size",
            "5MiB",
        ])
        .output()
        .expect("submit");
    let (id, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(id.len(), 16, "submit prints the transfer id: {id:?}");
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "running");
    assert_eq!(
        s["files"][0]["state"], "pending",
        "planning is left to workers"
    );

    // A worker of another queue finds nothing to do.
    let other = barge_cmd(&config, &pg_url())
        .args(["worker", "--exit-when-idle", "--queue", &queue("small")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let o = wait(other, 60, "idle worker");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o).1);
    assert_eq!(status_json(&config, &id)["files"][0]["state"], "pending");

    let w = barge_cmd(&config, &pg_url())
        .args([
            "worker",
            "--exit-when-idle",
            "--queue",
            &q,
            "--concurrency",
            "4",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let o = wait(w, 120, "worker");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o).1);
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "done", "{s:#}");
    assert_eq!(s["files"][0]["parts_total"], 5);
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}obj")).await),
        sha256(&body)
    );
    assert!(
        read(gb.as_ref(), "dst", &format!("{p}empty"))
            .await
            .is_empty()
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_one_worker_of_three_and_the_others_finish_byte_identical() {
    let config = config_file("cl-kill");
    let gb = store("gb").await;
    let p = prefix("cl-kill");
    let q = queue("kill");
    let (id, body) = submit_big(&config, &p, &q, 160 * MIB + 77, 2, &[]).await;
    // The victim starts alone, and dies as soon as it holds parts.
    let mut victim = worker_holding_parts(
        &config,
        &q,
        &["--lease", "2s", "--concurrency", "4", "--id", "victim"],
    );
    victim.kill().expect("kill -9");
    victim.wait().expect("reap");

    let survivors: Vec<Child> = (0..2)
        .map(|i| {
            barge_cmd(&config, &pg_url())
                .args(["worker", "--queue", &q, "--lease", "2s", "--exit-when-idle"])
                .args(["--concurrency", "2", "--id", &format!("survivor-{i}")])
                .env("BARGE_LOG", "warn,barge_engine::cluster=info")
                .stderr(Stdio::piped())
                .spawn()
                .expect("survivor")
        })
        .collect();
    let mut logs = String::new();
    for s in survivors {
        let o = wait(s, 240, "survivor");
        let (_, err) = out_text(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
        logs.push_str(&err);
    }
    assert!(
        logs.contains("reclaimed"),
        "the victim's parts came back through lease expiry: {logs}"
    );
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "done", "{s:#}");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

/// Engine-level: a part moved by two workers (the first one's lease expired), and a part whose
/// stored bytes were replaced after its receipt was recorded. Completion must use neither
/// blindly: the object ends byte-identical to the source.
#[tokio::test(flavor = "multi_thread")]
async fn a_part_moved_twice_or_changed_on_the_store_never_corrupts_the_object() {
    let j = journal().await;
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-twice");
    let body = data(13 * MIB, 3);
    let spec = source(ga.as_ref(), &format!("{p}obj"), body.clone()).await;
    let q = queue("twice");
    let tid = submit(
        &connections(),
        &j,
        vec![spec],
        &SubmitOptions {
            queue: q.clone(),
            part_size: Some(5 * MIB as u64),
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let worker = |id: &str| {
        Arc::new(Worker::new(
            connections(),
            j.clone(),
            WorkerOptions {
                id: id.into(),
                queue: q.clone(),
                concurrency: 4,
                lease: Duration::from_secs(30),
                ..WorkerOptions::default()
            },
        ))
    };
    let (slow, fast) = (worker("slow"), worker("fast"));

    // The fast worker plans the file: three parts are queued.
    let plan = j.claim("fast", &q, 1, 30_000).await.expect("claim");
    assert_eq!(plan.len(), 1);
    fast.execute(plan[0].clone()).await;
    // The slow worker claims part 1 with a short lease, and stalls past it.
    let stale = j.claim("slow", &q, 1, 200).await.expect("claim");
    assert_eq!((stale.len(), stale[0].number), (1, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Put back here, or already by another test's worker: housekeeping reclaims expired leases
    // across the whole journal, so this call's count may be 0.
    j.reclaim_expired().await.expect("reclaim");
    // The fast worker moves parts 1 and 2; then the slow one wakes and moves part 1 again.
    for n in 1..=2 {
        let t = j.claim("fast", &q, 1, 30_000).await.expect("claim");
        assert_eq!(
            t[0].number, n,
            "part 1 is claimable again once its lease expired"
        );
        fast.execute(t[0].clone()).await;
    }
    slow.execute(stale[0].clone()).await;
    // The fast worker moves part 3.
    let t = j.claim("fast", &q, 1, 30_000).await.expect("claim");
    assert_eq!(t[0].number, 3);
    fast.execute(t[0].clone()).await;

    // Behind barge's back, part 2 on the store is replaced by other bytes of the same length.
    let file = j.file(&tid, 0).await.expect("read").expect("file");
    let upload = UploadRef {
        path: file.plan.dst.path.clone(),
        upload_id: file.upload_id.clone().expect("upload started"),
    };
    let spec = PartSpec {
        number: 2,
        offset: 5 * MIB as u64,
        len: 5 * MIB as u64,
    };
    let other = data(5 * MIB, 99);
    let crc = barge_store::checksum::crc32c(&other);
    gb.upload_part(&upload, &spec, other, Some(crc))
        .await
        .expect("overwrite part 2");

    // Finalize finds part 2 differs from its receipt, moves it again, and completes.
    fast.run(CancellationToken::new(), Until::Settled(tid.clone()))
        .await
        .expect("run");
    let t = j.transfer(&tid).await.expect("read").expect("transfer");
    assert_eq!(t.state, TransferState::Done);
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}obj")).await),
        sha256(&body),
        "the object is the source's bytes, not the replaced part's"
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;

    // A worker waking up after the file is complete changes nothing.
    slow.execute(stale[0].clone()).await;
    let f = j.file(&tid, 0).await.expect("read").expect("file");
    assert_eq!(f.state, FileState::Completed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_submission_of_a_destination_is_refused_while_the_first_is_unfinished() {
    let config = config_file("cl-dup");
    let ga = store("ga").await;
    let p = prefix("cl-dup");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}a"),
        data(1000, 4),
        &ObjectAttrs::default(),
    )
    .await;
    let q = queue("dup");
    let sub = |queue: &str| {
        barge_cmd(&config, &pg_url())
            .args([
                "submit",
                &format!("ga:src/{p}a"),
                &format!("gb:dst/{p}a"),
                "--queue",
                queue,
            ])
            .output()
            .expect("submit")
    };
    let first = sub(&q);
    let (id, err) = out_text(&first);
    assert_eq!(first.status.code(), Some(0), "{err}");
    // The same files to the same queue again (a retried task): the same transfer.
    let again = sub(&q);
    let (id_again, err) = out_text(&again);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert_eq!(id_again, id, "{err}");
    assert!(
        err.contains(&format!("transfer {id} holds these files already")),
        "{err}"
    );
    let second = sub(&queue("dup2"));
    let (_, err) = out_text(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "gb:dst/{p}a is already the destination of unfinished transfer {id}"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("barge abort {id}")), "{err}");

    // Aborted, the destination is free again.
    let o = barge_cmd(&config, &pg_url())
        .args(["abort", &id])
        .output()
        .expect("abort");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o).1);
    let third = sub(&q);
    assert_eq!(third.status.code(), Some(0), "{}", out_text(&third).1);
    let w = barge_cmd(&config, &pg_url())
        .args(["worker", "--exit-when-idle", "--queue", &q])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let o = wait(w, 60, "worker");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o).1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cp_with_a_postgresql_journal_submits_and_works_until_done() {
    let config = config_file("cl-cp");
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-cp");
    let body = data(12 * MIB + 1, 5);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}x"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge_cmd(&config, &pg_url())
        .args(["cp", &format!("ga:src/{p}x"), &format!("gb:dst/{p}x")])
        .args(["--part-size", "5MiB", "--json", "--delete-source"])
        .output()
        .expect("cp");
    let (out, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
    assert_eq!(s["files_ok"], 1, "{s:#}");
    assert_eq!(s["files"][0]["parts"], 3);
    assert_eq!(s["files"][0]["source_deleted"], true);
    let id = s["transfer_id"].as_str().expect("id");
    assert_eq!(status_json(&config, id)["transfer"]["state"], "done");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}x")).await),
        sha256(&body)
    );
    assert!(
        ga.head(&barge_store::ObjectPath::new("src", format!("{p}x")))
            .await
            .is_err(),
        "the exact source key is deleted after verification"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_serves_prometheus_metrics() {
    let config = config_file("cl-metrics");
    let ga = store("ga").await;
    let p = prefix("cl-metrics");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}m"),
        data(11 * MIB, 6),
        &ObjectAttrs::default(),
    )
    .await;
    let q = queue("metrics");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let mut w = barge_cmd(&config, &pg_url())
        .args([
            "worker",
            "--queue",
            &q,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let o = barge_cmd(&config, &pg_url())
        .args(["submit", &format!("ga:src/{p}m"), &format!("gb:dst/{p}m")])
        .args(["--queue", &q, "--part-size", "5MiB"])
        .output()
        .expect("submit");
    let (id, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_json(&config, &id)["transfer"]["state"] != "done" {
        assert!(Instant::now() < deadline, "the worker did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut got = String::new();
    sock.read_to_string(&mut got).expect("read");
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    for line in [
        "barge_parts_done_total 3",
        "barge_files_completed_total 1",
        &format!("barge_bytes_moved_total {}", 11 * MIB),
        "barge_claim_seconds_count",
        "barge_tasks_in_flight 0",
        "barge_throttled_total 0",
    ] {
        assert!(got.contains(line), "missing {line:?} in:\n{got}");
    }
    // SIGTERM: it stops cleanly.
    let pid = w.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the worker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_of_a_submitted_transfer_retries_its_failed_files() {
    let config = config_file("cl-resume");
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-resume");
    let body = data(6 * MIB, 7);
    let q = queue("resume");
    // The source does not exist yet: the worker fails the file and the transfer.
    let o = barge_cmd(&config, &pg_url())
        .args([
            "submit",
            &format!("ga:src/{p}late"),
            &format!("gb:dst/{p}late"),
        ])
        .args(["--queue", &q])
        .output()
        .expect("submit");
    let (id, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let w = barge_cmd(&config, &pg_url())
        .args(["worker", "--exit-when-idle", "--queue", &q])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    wait(w, 60, "worker");
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "failed", "{s:#}");
    assert!(
        s["files"][0]["error"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("{p}late")),
        "the error names the missing source: {s:#}"
    );
    // The source appears; resume plans the failed file again and works on it here.
    put(
        ga.as_ref(),
        "src",
        &format!("{p}late"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let o = barge_cmd(&config, &pg_url())
        .args(["resume", &id, "--json"])
        .output()
        .expect("resume");
    let (out, err) = out_text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let sum: serde_json::Value = serde_json::from_str(&out).expect("summary JSON");
    assert_eq!(sum["files_ok"], 1, "{sum:#}");
    assert_eq!(sum["bytes_through_client"], 6 * MIB);
    assert_eq!(status_json(&config, &id)["transfer"]["state"], "done");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}late")).await),
        sha256(&body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_with_sigterm_gives_its_parts_back_at_once() {
    let config = config_file("cl-leave");
    let gb = store("gb").await;
    let p = prefix("cl-leave");
    let q = queue("leave");
    let (id, body) = submit_big(&config, &p, &q, 120 * MIB, 9, &[]).await;
    // A long lease: if the leaving worker did not give its parts back, the next one would wait
    // ten minutes for them.
    let mut leaving = worker_holding_parts(&config, &q, &["--lease", "600s", "--concurrency", "4"]);
    Command::new("kill")
        .args(["-TERM", &leaving.id().to_string()])
        .status()
        .expect("kill");
    let status = leaving.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "a stop on a signal exits 130");
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "running", "{s:#}");

    let joining = barge_cmd(&config, &pg_url())
        .args([
            "worker",
            "--queue",
            &q,
            "--lease",
            "600s",
            "--exit-when-idle",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");
    let o = wait(joining, 120, "joining worker");
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o).1);
    assert_eq!(status_json(&config, &id)["transfer"]["state"], "done");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

/// A worker claims parts against `--concurrency` and file-level tasks (plans, small files moved
/// whole, completions) against `--files`, each from its own budget: small files do not wait
/// behind parts, parts do not wait behind small files. Everything then arrives byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn parts_and_file_level_tasks_are_claimed_each_against_its_own_limit() {
    use barge_engine::journal::queue::TaskKind;
    let j = journal().await;
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-split");
    let big = data(13 * MIB, 21);
    let mut specs = vec![source(ga.as_ref(), &format!("{p}big"), big.clone()).await];
    let mut small = Vec::new();
    for i in 0..6 {
        let body = data(1000 + i, 30 + i as u64);
        let key = format!("{p}s{i}");
        specs.push(source(ga.as_ref(), &key, body.clone()).await);
        small.push((key, body));
    }
    let q = queue("split");
    let tid = submit(
        &connections(),
        &j,
        specs,
        &SubmitOptions {
            queue: q.clone(),
            part_size: Some(5 * MIB as u64),
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let worker = Arc::new(Worker::new(
        connections(),
        j.clone(),
        WorkerOptions {
            id: "split".into(),
            queue: q.clone(),
            concurrency: 2,
            files: 4,
            lease: Duration::from_secs(30),
            ..WorkerOptions::default()
        },
    ));
    let kinds = |tasks: &[barge_engine::journal::queue::Task]| {
        let parts = tasks.iter().filter(|t| t.kind == TaskKind::Part).count();
        (parts, tasks.len() - parts)
    };

    // Nothing is planned yet: no parts to claim, however many are free.
    let none = j
        .claim_split("split", &q, 5, 0, 30_000)
        .await
        .expect("claim");
    assert!(none.is_empty(), "{none:?}");
    // Four file-level tasks: the large file's plan (it starts the upload) and three small files.
    let first = j
        .claim_split("split", &q, 0, 4, 30_000)
        .await
        .expect("claim");
    assert_eq!(kinds(&first), (0, 4), "{first:?}");
    assert!(first.iter().all(|t| t.kind == TaskKind::Plan), "{first:?}");
    for t in first {
        worker.execute(t).await;
    }
    // Now three parts are ready: two parts and two file-level tasks, as asked.
    let second = j
        .claim_split("split", &q, 2, 2, 30_000)
        .await
        .expect("claim");
    assert_eq!(kinds(&second), (2, 2), "{second:?}");
    for t in second {
        worker.execute(t).await;
    }
    // The worker does the rest (one part, one small file, the large file's completion).
    worker
        .run(CancellationToken::new(), Until::Settled(tid.clone()))
        .await
        .expect("run");
    let t = j.transfer(&tid).await.expect("read").expect("transfer");
    assert_eq!(t.state, TransferState::Done);
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&big)
    );
    for (key, body) in &small {
        assert_eq!(
            sha256(&read(gb.as_ref(), "dst", key).await),
            sha256(body),
            "{key}"
        );
    }
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

/// A transfer submitted with `--bwlimit` is held to it as a whole: two workers share the rate
/// instead of each taking all of it. 24 MiB at 8 MiB/s take about three seconds; two workers
/// each at the full rate took two (tried by hand). Only a lower bound is asserted.
#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_transfer_s_bwlimit_is_shared_by_its_workers() {
    let config = config_file("cl-bw");
    let gb = store("gb").await;
    let p = prefix("cl-bw");
    let q = queue("bw");
    let (id, body) = submit_big(&config, &p, &q, 24 * MIB, 9, &["--bwlimit", "8MiB"]).await;
    let t0 = Instant::now();
    let workers: Vec<Child> = (0..2)
        .map(|i| {
            barge_cmd(&config, &pg_url())
                .args([
                    "worker",
                    "--queue",
                    &q,
                    "--exit-when-idle",
                    "--concurrency",
                    "2",
                ])
                .args(["--id", &format!("bw-{i}")])
                .stderr(Stdio::piped())
                .spawn()
                .expect("worker")
        })
        .collect();
    for w in workers {
        let o = wait(w, 120, "worker");
        let (_, err) = out_text(&o);
        assert_eq!(o.status.code(), Some(0), "{err}");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2400),
        "24 MiB at a shared 8 MiB/s took {took:?}"
    );
    let s = status_json(&config, &id);
    assert_eq!(s["transfer"]["state"], "done", "{s:#}");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

/// What a worker's share of the parts left is counted from (see `pace::fair_share`): the part
/// tasks ready on its queue and the other workers holding parts there, exactly, and nothing of
/// another queue. The transfer then finishes byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_counts_the_parts_left_and_the_workers_holding_them() {
    use barge_engine::journal::queue::PartDemand;
    let j = journal().await;
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-demand");
    let big = data(20 * MIB, 41);
    let specs = vec![source(ga.as_ref(), &format!("{p}big"), big.clone()).await];
    let q = queue("demand");
    let tid = submit(
        &connections(),
        &j,
        specs,
        &SubmitOptions {
            queue: q.clone(),
            part_size: Some(5 * MIB as u64),
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let worker = Arc::new(Worker::new(
        connections(),
        j.clone(),
        WorkerOptions {
            id: "a".into(),
            queue: q.clone(),
            ..WorkerOptions::default()
        },
    ));
    let demand = |owner: &'static str| {
        let (j, q) = (j.clone(), q.clone());
        async move { j.part_demand(&q, owner).await.expect("count") }
    };
    let want = |ready, other_workers| PartDemand {
        ready,
        other_workers,
    };
    // Only the plan is queued: no parts yet.
    assert_eq!(demand("a").await, want(0, 0));
    let plan = j.claim_split("a", &q, 0, 1, 30_000).await.expect("claim");
    assert_eq!(plan.len(), 1, "{plan:?}");
    worker.execute(plan[0].clone()).await;
    // The upload is open: four parts of 5 MiB ready, nobody holds one.
    assert_eq!(demand("a").await, want(4, 0));
    let a = j.claim_split("a", &q, 2, 0, 30_000).await.expect("claim");
    let b = j.claim_split("b", &q, 1, 0, 30_000).await.expect("claim");
    assert_eq!((a.len(), b.len()), (2, 1));
    // One left; each of a and b sees the other, a third worker sees both.
    assert_eq!(demand("a").await, want(1, 1));
    assert_eq!(demand("b").await, want(1, 1));
    assert_eq!(demand("c").await, want(1, 2));
    assert_eq!(
        j.part_demand(&queue("demand-other"), "c")
            .await
            .expect("count"),
        want(0, 0)
    );
    // Given back, the parts are ready again, and the worker finishes the transfer.
    j.release("a").await.expect("release");
    j.release("b").await.expect("release");
    assert_eq!(demand("a").await, want(4, 0));
    settle(&worker, &tid, "the worker finishes the transfer").await;
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&big)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

/// A claim that commits but whose answer never reaches the worker (the connection drops after
/// the UPDATE) leaves rows leased to that worker that it does not know it holds. Its housekeeping
/// renews only the tasks it runs, so those leases expire and the work is done anyway, instead of
/// staying leased forever to a worker that keeps renewing them.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_whose_claim_answer_was_lost_expires_and_the_work_is_done() {
    let j = journal().await;
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("cl-lost");
    let body = data(3000, 41);
    let key = format!("{p}small");
    let spec = source(ga.as_ref(), &key, body.clone()).await;
    let q = queue("lost");
    let tid = submit(
        &connections(),
        &j,
        vec![spec],
        &SubmitOptions {
            queue: q.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    // The claim whose answer was lost: the file's only task, leased to "lost" for 1 s.
    let lost = j.claim_split("lost", &q, 4, 4, 1_000).await.expect("claim");
    assert_eq!(lost.len(), 1, "{lost:?}");
    let worker = Arc::new(Worker::new(
        connections(),
        j.clone(),
        WorkerOptions {
            id: "lost".into(),
            queue: q.clone(),
            lease: Duration::from_secs(1),
            ..WorkerOptions::default()
        },
    ));
    settle(
        &worker,
        &tid,
        "the transfer never settled: the lost lease was renewed forever",
    )
    .await;
    let t = j.transfer(&tid).await.expect("read").expect("transfer");
    assert_eq!(t.state, TransferState::Done);
    assert_eq!(sha256(&read(gb.as_ref(), "dst", &key).await), sha256(&body));
}

/// Rows of the shared journal are not trusted: one naming a local file (as anyone who can write
/// the journal could write), and one naming a connection the worker's config does not have,
/// fail their files with the reason. The local file is neither read nor deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_journal_rows_naming_local_files_or_unknown_connections() {
    use barge_engine::journal::TransferRecord;
    use barge_engine::location::Location;
    use barge_engine::run::{TransferRequest, fingerprint};
    let j = journal().await;
    let p = prefix("cl-rows");
    let q = queue("rows");
    let dir = temp_dir("cl-rows");
    let secret_file = dir.join("id_rsa");
    std::fs::write(&secret_file, b"a file the worker must not read").expect("write");
    let ga = store("ga").await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}x"),
        data(100, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![
        TransferSpec {
            src: Location::local(&secret_file.to_string_lossy()),
            dst: named("gb", "dst", &format!("{p}stolen")),
        },
        TransferSpec {
            src: named("ga", "src", &format!("{p}x")),
            dst: named("elsewhere", "dst", &format!("{p}x")),
        },
    ];
    let request = TransferRequest {
        transfers: specs.clone(),
        delete_source: true,
        part_size: None,
        copy_part_size: None,
        bwlimit: None,
    };
    let tid = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let now = barge_engine::journal::now_secs();
    j.submit(
        &TransferRecord {
            id: tid.clone(),
            fingerprint: fingerprint(&specs),
            created_at: now,
            updated_at: now,
            state: TransferState::Running,
            spec: serde_json::to_string(&request).expect("json"),
        },
        &q,
        &specs,
    )
    .await
    .expect("rows written straight into the journal");
    let worker = Arc::new(Worker::new(
        connections(),
        j.clone(),
        WorkerOptions {
            queue: q.clone(),
            ..WorkerOptions::default()
        },
    ));
    settle(&worker, &tid, "the transfer never settled").await;
    let files = j.files(&tid).await.expect("files");
    assert!(
        files.iter().all(|f| f.state == FileState::Failed),
        "{files:#?}"
    );
    let err = |i: usize| files[i].error.clone().unwrap_or_default();
    assert!(
        err(0).contains("this worker reads and writes no local files (start it with --allow-local"),
        "{}",
        err(0)
    );
    assert!(
        err(1).contains("the connection 'elsewhere'") && err(1).contains("config does not have"),
        "{}",
        err(1)
    );
    assert_eq!(
        std::fs::read(&secret_file).expect("kept"),
        b"a file the worker must not read"
    );
    assert_eq!(
        read(ga.as_ref(), "src", &format!("{p}x")).await,
        data(100, 1)
    );
    let gb = store("gb").await;
    assert!(
        gb.head(&barge_store::ObjectPath::new("dst", format!("{p}stolen")))
            .await
            .is_err()
    );
}

/// A planned row whose part size, count and numbers disagree (a part size of 1 for a big file
/// would make a worker build a list of billions of parts) fails its file; the worker goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_a_plan_no_barge_would_make() {
    use sqlx::Connection;
    let j = journal().await;
    let p = prefix("cl-badplan");
    let q = queue("badplan");
    let ga = store("ga").await;
    let spec = source(ga.as_ref(), &format!("{p}obj"), data(12 * MIB, 4)).await;
    let tid = submit(
        &connections(),
        &j,
        vec![spec],
        &SubmitOptions {
            queue: q.clone(),
            part_size: Some(5 * MIB as u64),
            delete_source: true,
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let worker = Arc::new(Worker::new(
        connections(),
        j.clone(),
        WorkerOptions {
            id: "w".into(),
            queue: q.clone(),
            ..WorkerOptions::default()
        },
    ));
    let plan = j.claim("w", &q, 1, 30_000).await.expect("claim");
    assert_eq!(plan.len(), 1);
    worker.execute(plan[0].clone()).await;
    // Someone with write access to the journal rewrites the plan.
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&pg_url())
        .await
        .expect("connect");
    sqlx::query("UPDATE barge_files SET part_size = 1 WHERE transfer_id = $1")
        .bind(&tid)
        .execute(&mut c)
        .await
        .expect("rewrite the plan");
    settle(&worker, &tid, "the transfer never settled").await;
    let files = j.files(&tid).await.expect("files");
    assert_eq!(files[0].state, FileState::Failed, "{files:#?}");
    let e = files[0].error.clone().unwrap_or_default();
    assert!(e.contains("size, part size and part count disagree"), "{e}");
    assert_eq!(
        read(ga.as_ref(), "src", &format!("{p}obj")).await,
        data(12 * MIB, 4),
        "the source is kept"
    );
    assert_no_uploads(store("gb").await.as_ref(), "dst", &p).await;
}
