//! kill -9 in the middle of a multi-GiB transfer, then the same command again: the object is
//! byte-identical and only the parts that were not recorded move a second time.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use barge_engine::location::ConnRef;
use common::*;
use sha2::{Digest, Sha256};

const PART: u64 = 16 * 1024 * 1024;
const CONCURRENCY: u64 = 4;

fn status(config: &std::path::Path, journal: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(config)
        .arg("--journal")
        .arg(journal)
        .args(["status", "--json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn parts_done(v: &serde_json::Value) -> u64 {
    v["files"][0]["parts_done"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_then_rerun_resumes() {
    let dir = temp_dir("crash");
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text()).expect("config");
    let journal = dir.join("journal.sqlite");
    let p = prefix("crash");

    // A 2 GiB (plus a little) file of incompressible data.
    let size: u64 = 2 * 1024 * 1024 * 1024 + 12_345;
    let file = dir.join("big.bin");
    let mut want = Sha256::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        let mut left = size;
        let mut seed = 0;
        while left > 0 {
            let n = left.min(8 * MIB as u64) as usize;
            let chunk = data(n, seed);
            want.update(&chunk);
            f.write_all(&chunk).expect("write");
            left -= n as u64;
            seed += 1;
        }
        f.flush().expect("flush");
    }
    let want = format!("{:x}", want.finalize());
    let total_parts = size.div_ceil(PART);

    let args = |json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_barge"));
        c.arg("--config")
            .arg(&config)
            .arg("--journal")
            .arg(&journal)
            .arg("cp")
            .arg(&file)
            .arg(format!("ga:dst/{p}big.bin"))
            .args(["--part-size", "16MiB", "--concurrency", "4", "--quiet"]);
        if json {
            c.arg("--json");
        }
        c
    };

    let mut child = args(false)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start barge");
    let t0 = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if status(&config, &journal).is_some_and(|v| parts_done(&v) >= total_parts / 4) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no progress recorded within 5 minutes"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "barge ended before the kill"
        );
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let at_kill = status(&config, &journal).expect("status after kill");
    let recorded = parts_done(&at_kill);
    assert!(recorded < total_parts, "the kill came before the end");

    let out = args(true).output().expect("rerun");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["resumed"], true, "{v}");
    let reused = v["parts_reused"].as_u64().unwrap_or(0);
    let moved_again = v["bytes_through_client"].as_u64().unwrap_or(u64::MAX);
    // Every part recorded before the kill is reused; parts in flight at the kill (at most
    // --concurrency of them) are the only ones moved twice.
    assert_eq!(reused, recorded, "{v}");
    assert_eq!(moved_again, size - recorded * PART, "{v}");
    println!(
        "kill -9 after {recorded} of {total_parts} parts recorded; rerun moved {moved_again} bytes \
         ({} parts); at most {CONCURRENCY} parts ({} MiB) were in flight at the kill and moved twice",
        total_parts - recorded,
        CONCURRENCY * PART / (1024 * 1024)
    );

    let ga = connections()
        .get(&ConnRef::Named("ga".into()))
        .await
        .expect("ga");
    let got = read(ga.as_ref(), "dst", &format!("{p}big.bin")).await;
    assert_eq!(got.len() as u64, size);
    assert_eq!(
        sha256(&got),
        want,
        "byte-identical after the crash and resume"
    );
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&dir).ok();
}
