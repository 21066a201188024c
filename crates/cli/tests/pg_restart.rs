//! PostgreSQL restarting mid-transfer: workers wait for it and carry on. In its own test binary,
//! so no other test is using the server when it goes down.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use barge_engine::location::ConnRef;
use barge_store::ObjectAttrs;
use common::*;

fn status_parts(config: &std::path::Path, id: &str) -> (String, u64) {
    let o = barge_cmd(config, &pg_url())
        .args(["status", id, "--json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    (
        v["transfer"]["state"].as_str().unwrap_or("").to_string(),
        v["files"][0]["parts_done"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_wait_for_a_restarting_postgresql_and_carry_on() {
    let config = config_file("pg-restart");
    let conns = connections();
    let ga = conns.get(&ConnRef::Named("ga".into())).await.expect("ga");
    let gb = conns.get(&ConnRef::Named("gb".into())).await.expect("gb");
    let p = prefix("pg-restart");
    let body = data(400 * MIB, 8);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let q = format!(
        "restart-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let o = barge_cmd(&config, &pg_url())
        .args([
            "submit",
            &format!("ga:src/{p}big"),
            &format!("gb:dst/{p}big"),
        ])
        .args(["--queue", &q, "--part-size", "5MiB"])
        .output()
        .expect("submit");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let worker = barge_cmd(&config, &pg_url())
        .args([
            "worker",
            "--queue",
            &q,
            "--exit-when-idle",
            "--concurrency",
            "1",
        ])
        .args(["--lease", "5s"])
        .env("BARGE_LOG", "warn,sqlx=error")
        .stderr(Stdio::piped())
        .spawn()
        .expect("worker");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, done) = status_parts(&config, &id);
        if done >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no part was recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/testbed.sh");
    let bed = std::env::var("BARGE_TESTBED").expect("BARGE_TESTBED: run with scripts/test.sh");
    let restarted = std::process::Command::new(script)
        .args(["pg-restart", "7"])
        .env("BARGE_TESTBED_DIR", bed)
        .status()
        .expect("restart PostgreSQL");
    assert!(restarted.success());

    let o = worker.wait_with_output().expect("worker");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("waiting for the journal"),
        "the worker saw the outage: {err}"
    );
    assert!(err.contains("the journal is back"), "{err}");
    assert_eq!(status_parts(&config, &id).0, "done");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}
