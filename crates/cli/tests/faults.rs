//! A fault-injecting proxy between barge and both S3 servers: dropped connections, stalls
//! longer than the read timeout, 503 SlowDown and 500 answers. Transfers still complete
//! byte-identical, and the retries show in the log and in `--json`.

mod common;

use std::process::Command;
use std::time::Duration;

use barge_engine::location::ConnRef;
use barge_faultproxy::{FaultProxy, Faults};
use barge_store::ObjectAttrs;
use common::*;

fn config_through(a: &FaultProxy, b: &FaultProxy) -> String {
    let mut s = String::new();
    for (name, which, p) in [("fa", "A", a), ("fb", "B", b)] {
        s.push_str(&format!(
            "[connections.{name}]\nendpoint = \"http://{}\"\nregion = \"us-east-1\"\n\
             access_key_id_env = \"BARGE_TEST_{which}_KEY_ID\"\nsecret_access_key_env = \"BARGE_TEST_{which}_SECRET\"\n\
             read_timeout = \"2s\"\nconnect_timeout = \"2s\"\n\n",
            p.addr
        ));
    }
    s
}

async fn run_through_faults(
    tag: &str,
    faults: Faults,
    big: usize,
    small: usize,
) -> (FaultProxy, FaultProxy, serde_json::Value, String) {
    require_testbed();
    let ga = connections()
        .get(&ConnRef::Named("ga".into()))
        .await
        .expect("ga");
    let gb = connections()
        .get(&ConnRef::Named("gb".into()))
        .await
        .expect("gb");
    let p = prefix(tag);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}big"),
        data(big, 1),
        &ObjectAttrs::default(),
    )
    .await;
    for i in 0..small {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}small/{i}"),
            data(100_000 + i, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let pa = FaultProxy::start(upstream("A"), faults.clone())
        .await
        .expect("proxy a");
    let pb = FaultProxy::start(
        upstream("B"),
        Faults {
            seed: faults.seed + 1,
            ..faults
        },
    )
    .await
    .expect("proxy b");
    let dir = temp_dir(tag);
    let config = dir.join("config.toml");
    std::fs::write(&config, config_through(&pa, &pb)).expect("config");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&config)
        .arg("--journal")
        .arg(dir.join("journal.sqlite"))
        .args(["cp", "-r", &format!("fa:src/{p}"), &format!("fb:dst/{p}")])
        .args([
            "--part-size",
            "5MiB",
            "--concurrency",
            "4",
            "--retries",
            "40",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start barge");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let read_all = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>| async move {
        let mut s = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut r, &mut s).await;
        s
    };
    let (out, err) = (
        tokio::spawn(read_all(Box::new(stdout))),
        tokio::spawn(read_all(Box::new(stderr))),
    );
    // Never waited on forever: a hang here is the failure this test exists to catch.
    let status = tokio::time::timeout(Duration::from_secs(600), child.wait())
        .await
        .expect("barge hung on a stalled connection")
        .expect("wait");
    let (out, err) = (out.await.expect("stdout"), err.await.expect("stderr"));
    assert!(status.success(), "barge failed under faults:\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json summary");
    assert_eq!(v["files_ok"], (1 + small) as u64, "{v}");
    let retries = v["retries"].as_u64().unwrap_or(0);
    assert!(
        retries > 0,
        "faults were injected, so retries must show in --json: {v}"
    );
    assert!(
        err.contains("retry"),
        "retries must show in the log:\n{err}"
    );
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&data(big, 1))
    );
    for i in 0..small {
        assert_eq!(
            sha256(&read(gb.as_ref(), "dst", &format!("{p}small/{i}")).await),
            sha256(&data(100_000 + i, i as u64))
        );
    }
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    let _ = Command::new("true").status();
    println!(
        "{tag}: {retries} retries; proxy A [conns, 503, 500, cut, stall] = {:?}, proxy B = {:?}",
        pa.counts.snapshot(),
        pb.counts.snapshot()
    );
    (pa, pb, v, err)
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_survive_drops_throttling_and_errors() {
    let faults = Faults {
        slowdown: 0.2,
        internal_error: 0.1,
        stall: 0.15,
        stall_for: Duration::from_secs(6),
        mean_budget: 8 * 1024 * 1024,
        seed: 7,
    };
    let (pa, pb, _, _) = run_through_faults("faults", faults, 60 * MIB + 5, 12).await;
    let [_, s1, e1, c1, st1] = pa.counts.snapshot();
    let [_, s2, e2, c2, st2] = pb.counts.snapshot();
    // Which fault each connection gets is drawn per connection: with a few dozen connections
    // every kind is very likely but not certain, so assert on what is certain enough not to
    // flake. Stalls on their own are proven by the next test.
    assert!(
        s1 + s2 + e1 + e2 > 0,
        "503 SlowDown or 500 answers were injected"
    );
    assert!(
        c1 + c2 + st1 + st2 > 0,
        "connections were cut or stalled mid-body"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stalls_longer_than_the_timeout_are_retried() {
    let faults = Faults {
        slowdown: 0.0,
        internal_error: 0.0,
        stall: 1.0,
        stall_for: Duration::from_secs(60),
        mean_budget: 6 * 1024 * 1024,
        seed: 11,
    };
    let (pa, pb, _, _) = run_through_faults("stalls", faults, 20 * MIB, 0).await;
    assert!(
        pa.counts.snapshot()[4] + pb.counts.snapshot()[4] > 0,
        "connections stalled"
    );
}

/// A store answering 503 SlowDown is sent fewer requests at once, not only the same ones again:
/// the log says to how many its requests in flight were lowered, and `--json` counts every
/// throttling answer, no more than the proxies gave. Everything still arrives byte-identical.
#[tokio::test(flavor = "multi_thread")]
async fn throttling_lowers_the_requests_in_flight_and_is_counted() {
    let faults = Faults {
        slowdown: 0.3,
        internal_error: 0.0,
        stall: 0.0,
        stall_for: Duration::from_secs(1),
        mean_budget: 64 * 1024 * 1024,
        seed: 23,
    };
    let (pa, pb, v, err) = run_through_faults("throttle", faults, 12 * MIB, 30).await;
    let slowdowns = pa.counts.snapshot()[1] + pb.counts.snapshot()[1];
    assert!(slowdowns > 0, "the proxies answered 503 SlowDown");
    let throttled = v["throttled"].as_u64().expect("throttled in --json");
    assert!(
        throttled > 0 && throttled <= slowdowns,
        "{throttled} throttled answers counted, {slowdowns} given: {v}"
    );
    assert!(
        err.contains("is throttling: requests in flight to it lowered to"),
        "the lowering shows in the log:\n{err}"
    );
}
