//! Fast tests of the engine's rules against the in-memory store. The same behaviours are proven
//! against a real S3 server in crates/cli/tests.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use barge_engine::EngineError;
use barge_engine::connections::Connections;
use barge_engine::input::TransferSpec;
use barge_engine::journal::{FileState, Journal, MemoryJournal};
use barge_engine::location::{ConnRef, Location};
use barge_engine::plan::{PlanOptions, Strategy};
use barge_engine::report::{Observer, Status, Verification};
use barge_engine::retry::RetryPolicy;
use barge_engine::run::{Engine, RunOptions};
use barge_store::memory::MemoryStore;
use barge_store::{Capabilities, ObjectAttrs, ObjectPath, Store};
use bytes::Bytes;
use common::{caps, loc};

fn body(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
}

fn opts() -> RunOptions {
    RunOptions {
        plan: PlanOptions {
            part_size: 1024,
            copy_part_size: 1024,
            max_memory: 1 << 20,
        },
        concurrency: 4,
        retry: RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..RunOptions::default()
    }
}

fn setup() -> (Arc<MemoryStore>, Arc<MemoryStore>, Arc<Connections>) {
    let a = Arc::new(MemoryStore::new("a", &["src"]).with_limits(caps()));
    let b = Arc::new(MemoryStore::new("b", &["dst"]).with_limits(caps()));
    let conns = Arc::new(Connections::with_stores(vec![
        (ConnRef::Named("a".into()), a.clone() as Arc<dyn Store>),
        (ConnRef::Named("b".into()), b.clone() as Arc<dyn Store>),
    ]));
    (a, b, conns)
}

fn spec(key: &str) -> TransferSpec {
    TransferSpec {
        src: loc("a", "src", key),
        dst: loc("b", "dst", key),
    }
}

#[tokio::test]
async fn throttling_is_retried_and_counted() {
    let (a, b, conns) = setup();
    a.insert(
        &ObjectPath::new("src", "f"),
        body(10_000),
        ObjectAttrs::default(),
    );
    b.fail_next.store(5, Ordering::SeqCst);
    let s = Engine::new(conns, opts())
        .run(vec![spec("f")])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.retries, 5);
    assert_eq!(b.get(&ObjectPath::new("dst", "f")), Some(body(10_000)));
    assert_eq!(b.open_uploads(), 0);
}

#[tokio::test]
async fn exhausted_retries_fail_the_file_and_abort_its_upload() {
    let (a, b, conns) = setup();
    a.insert(
        &ObjectPath::new("src", "f"),
        body(10_000),
        ObjectAttrs::default(),
    );
    b.fail_next.store(1000, Ordering::SeqCst);
    let s = Engine::new(conns, opts())
        .run(vec![spec("f")])
        .await
        .expect("run");
    assert_eq!(s.files[0].status, Status::Failed);
    assert!(
        s.files[0].error.as_deref().unwrap_or("").contains("503"),
        "{s:#?}"
    );
    assert_eq!(b.open_uploads(), 0, "the failed file's upload was aborted");
    assert!(b.get(&ObjectPath::new("dst", "f")).is_none());
}

#[tokio::test]
async fn changed_source_is_not_spliced() {
    let (a, b, conns) = setup();
    let p = ObjectPath::new("src", "f");
    a.insert(&p, body(10_000), ObjectAttrs::default());
    a.overwrite_after(p, 2, body(10_000).slice(1..));
    let mut o = opts();
    o.concurrency = 1;
    let s = Engine::new(conns, o)
        .run(vec![spec("f")])
        .await
        .expect("run");
    assert_eq!(s.files[0].status, Status::Failed);
    assert!(
        s.files[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("changed"),
        "{s:#?}"
    );
    assert_eq!(b.open_uploads(), 0);
    assert!(b.get(&ObjectPath::new("dst", "f")).is_none());
}

#[tokio::test]
async fn part_size_grows_to_fit_the_part_cap() {
    let (a, b, conns) = setup();
    let small_cap = Capabilities {
        max_parts: 4,
        ..caps()
    };
    let b2 = Arc::new(MemoryStore::new("b2", &["dst"]).with_limits(small_cap));
    let conns2 = Arc::new(Connections::with_stores(vec![
        (ConnRef::Named("a".into()), a.clone() as Arc<dyn Store>),
        (ConnRef::Named("b".into()), b2.clone() as Arc<dyn Store>),
    ]));
    drop((b, conns));
    a.insert(
        &ObjectPath::new("src", "f"),
        body(10_000),
        ObjectAttrs::default(),
    );
    let s = Engine::new(conns2, opts())
        .run(vec![spec("f")])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].parts, Some(4));
    assert_eq!(b2.get(&ObjectPath::new("dst", "f")), Some(body(10_000)));
}

#[tokio::test]
async fn same_store_copies_without_reading_bytes() {
    let a = Arc::new(MemoryStore::new("a", &["src", "dst"]).with_limits(caps()));
    let conns = Arc::new(Connections::with_stores(vec![(
        ConnRef::Named("a".into()),
        a.clone() as Arc<dyn Store>,
    )]));
    a.insert(
        &ObjectPath::new("src", "f"),
        body(10_000),
        ObjectAttrs::default(),
    );
    let s = Engine::new(conns, opts())
        .run(vec![TransferSpec {
            src: loc("a", "src", "f"),
            dst: loc("a", "dst", "f"),
        }])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].strategy, Some(Strategy::ServerPartCopy));
    assert_eq!(a.bytes_read.load(Ordering::Relaxed), 0);
    assert_eq!(a.get(&ObjectPath::new("dst", "f")), Some(body(10_000)));
}

struct CancelOnFirstPart(tokio_util::sync::CancellationToken);
impl Observer for CancelOnFirstPart {
    fn progress(&self, _file: usize, _bytes: u64) {
        self.0.cancel();
    }
}

#[tokio::test]
async fn cancelling_aborts_every_unfinished_upload() {
    let (a, b, conns) = setup();
    let mut specs = Vec::new();
    for i in 0..6 {
        let k = format!("f{i}");
        a.insert(
            &ObjectPath::new("src", &k),
            body(50_000),
            ObjectAttrs::default(),
        );
        specs.push(spec(&k));
    }
    let mut o = opts();
    o.concurrency = 2;
    let engine = Engine::new(conns, o);
    let token = engine.cancel_token();
    let engine = engine.with_observer(Arc::new(CancelOnFirstPart(token)));
    let s = engine.run(specs).await.expect("run");
    assert!(
        s.files.iter().any(|f| f.status == Status::Cancelled),
        "{s:#?}"
    );
    assert_eq!(b.open_uploads(), 0, "no upload left open after cancel");
    for f in &s.files {
        if f.status != Status::Ok {
            assert!(
                b.get(&ObjectPath::new(
                    "dst",
                    f.dst.rsplit('/').next().unwrap_or("")
                ))
                .is_none()
            );
        }
    }
}

#[tokio::test]
async fn zero_byte_objects_are_copied() {
    let (a, b, conns) = setup();
    a.insert(
        &ObjectPath::new("src", "empty"),
        Bytes::new(),
        ObjectAttrs::default(),
    );
    let mut o = opts();
    o.delete_source = true;
    let s = Engine::new(conns, o)
        .run(vec![spec("empty")])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(b.get(&ObjectPath::new("dst", "empty")), Some(Bytes::new()));
    assert!(s.files[0].source_deleted);
    assert!(a.get(&ObjectPath::new("src", "empty")).is_none());
}

fn small_files(a: &MemoryStore, n: usize) -> Vec<TransferSpec> {
    files(a, n, "s", 100)
}

/// `n` files of about 10 KB, moved in parts by `opts()`.
fn large_files(a: &MemoryStore, n: usize) -> Vec<TransferSpec> {
    files(a, n, "large", 10_000)
}

/// `n` source objects `{prefix}{i}` of `size + i` bytes, and their transfers.
fn files(a: &MemoryStore, n: usize, prefix: &str, size: usize) -> Vec<TransferSpec> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}{i}");
            a.insert(
                &ObjectPath::new("src", &key),
                body(size + i),
                ObjectAttrs::default(),
            );
            spec(&key)
        })
        .collect()
}

#[tokio::test]
async fn every_finished_file_is_recorded_by_the_time_the_run_returns() {
    let (a, _b, conns) = setup();
    let specs = small_files(&a, 300);
    let journal = Arc::new(MemoryJournal::default());
    let s = Engine::new(conns, opts())
        .with_journal(journal.clone())
        .run(specs)
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    let tid = s.transfer_id.expect("a journal id");
    let files = journal.files(&tid).await.expect("files");
    assert_eq!(files.len(), 300);
    assert!(files.iter().all(|f| f.state == FileState::Completed));
}

/// A plan is recorded before anything a resume must find (an upload opened for its file, a
/// source deleted); a file moved whole has its plan recorded with its completion. A journal that
/// refuses plans stops the run with its error; nothing is left open, and every file it
/// recorded as done is at the destination, byte for byte.
#[tokio::test]
async fn a_journal_that_refuses_plans_stops_the_run_and_leaves_nothing_open() {
    let (a, b, conns) = setup();
    let mut specs = large_files(&a, 3);
    specs.extend(small_files(&a, 700));
    let journal = Arc::new(MemoryJournal::default());
    journal.refuse_plans_beyond(300);
    let err = Engine::new(conns, opts())
        .with_journal(journal.clone())
        .run(specs)
        .await
        .expect_err("the journal failed")
        .to_string();
    assert!(err.contains("refused the write"), "{err}");
    let tid = journal.list_transfers(1).await.expect("transfers")[0]
        .id
        .clone();
    let files = journal.files(&tid).await.expect("files");
    assert!(files.len() <= 300, "{}", files.len());
    for f in files.iter().filter(|f| f.state == FileState::Completed) {
        let key = &f.plan.dst.path.key;
        assert_eq!(
            b.get(&ObjectPath::new("dst", key)),
            a.get(&ObjectPath::new("src", key)),
            "{key} recorded as copied"
        );
    }
    assert_eq!(b.open_uploads(), 0, "no upload left open");
}

#[tokio::test]
async fn a_journal_that_stops_recording_fails_the_run_and_says_what_was_copied() {
    let (a, b, conns) = setup();
    let specs = small_files(&a, 40);
    let journal = Arc::new(MemoryJournal::default());
    journal.refuse_file_states();
    let err = Engine::new(conns, opts())
        .with_journal(journal)
        .run(specs)
        .await
        .expect_err("the journal failed");
    // Not a refusal: files did move (the CLI exits 1, not 2).
    assert!(matches!(err, EngineError::Unrecorded(_)), "{err:?}");
    let err = err.to_string();
    assert!(err.contains("could not record"), "{err}");
    assert!(err.contains("refused the write"), "{err}");
    assert!(err.contains("copied and verified"), "{err}");
    // What was reported copied is there, byte for byte.
    assert_eq!(b.get(&ObjectPath::new("dst", "s0")), Some(body(100)));
}

#[tokio::test]
async fn no_source_is_deleted_when_its_completion_cannot_be_recorded() {
    let (a, b, conns) = setup();
    let specs = small_files(&a, 5);
    let journal = Arc::new(MemoryJournal::default());
    journal.refuse_file_states();
    let mut o = opts();
    o.delete_source = true;
    let err = Engine::new(conns, o)
        .with_journal(journal)
        .run(specs)
        .await
        .expect_err("the journal failed")
        .to_string();
    assert!(err.contains("refused the write"), "{err}");
    for i in 0..5 {
        let key = format!("s{i}");
        assert_eq!(
            a.get(&ObjectPath::new("src", &key)),
            Some(body(100 + i)),
            "source {key} kept"
        );
    }
    assert_eq!(b.open_uploads(), 0);
}

/// A download to a local file, which keeps no checksum, is checked against the CRC32C the
/// source keeps for the object: clean objects say `SourceCrc32c`; objects whose bytes no longer
/// match the checksum they were stored with fail, naming both checksums, and their files are
/// deleted.
#[tokio::test]
async fn downloads_are_checked_against_the_sources_crc32c() {
    let (a, _b, conns) = setup();
    let dir = std::env::temp_dir().join(format!("barge-source-crc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // 10,000 bytes move as ten 1 KiB parts, 500 bytes as one PUT.
    let files = [
        ("big", 10_000),
        ("small", 500),
        ("big-rotten", 10_000),
        ("small-rotten", 500),
    ];
    let mut specs = Vec::new();
    for (key, len) in files {
        let path = ObjectPath::new("src", key);
        a.insert(&path, body(len), ObjectAttrs::default());
        if key.ends_with("rotten") {
            let mut bad = body(len).to_vec();
            bad[len / 2] ^= 1;
            a.corrupt(&path, Bytes::from(bad));
        }
        specs.push(TransferSpec {
            src: loc("a", "src", key),
            dst: Location::local(&dir.join(key).to_string_lossy()),
        });
    }
    let s = Engine::new(conns, opts()).run(specs).await.expect("run");
    let on_disk = |key: &str| std::fs::read(dir.join(key)).ok();
    let (big, small) = (on_disk("big"), on_disk("small"));
    let (big_rotten, small_rotten) = (on_disk("big-rotten"), on_disk("small-rotten"));
    std::fs::remove_dir_all(&dir).ok();
    let f = &s.files;
    assert_eq!(f[0].strategy, Some(Strategy::StreamParts));
    assert_eq!(f[1].strategy, Some(Strategy::SinglePut));
    for o in &f[..2] {
        assert_eq!(o.status, Status::Ok, "{o:?}");
        assert_eq!(o.verified, Verification::SourceCrc32c, "{o:?}");
    }
    assert_eq!(big.as_deref(), Some(&body(10_000)[..]));
    assert_eq!(small.as_deref(), Some(&body(500)[..]));
    for o in &f[2..] {
        assert_eq!(o.status, Status::Failed, "{o:?}");
        let err = o.error.as_deref().unwrap_or_default();
        assert!(err.contains("the source keeps CRC32C"), "{err}");
        assert!(err.contains("the bytes barge read have"), "{err}");
        assert!(err.contains("the object barge wrote was deleted"), "{err}");
    }
    // A file that failed is not left looking copied.
    assert_eq!(big_rotten, None);
    assert_eq!(small_rotten, None);
}

/// Small objects planned from a listing come with one GET, which brings the checksum the
/// source keeps: bytes that do not match it are read again, and the file fails once the
/// retries are spent, naming both checksums; the one that matches needs no stat to say so.
#[tokio::test]
async fn a_listed_small_object_is_checked_against_its_sources_crc32c_as_it_is_read() {
    let (a, _b, conns) = setup();
    let dir = std::env::temp_dir().join(format!("barge-listed-crc-{}", std::process::id()));
    for (key, rotten) in [("in/good", false), ("in/rotten", true)] {
        let path = ObjectPath::new("src", key);
        a.insert(&path, body(500), ObjectAttrs::default());
        if rotten {
            let mut bad = body(500).to_vec();
            bad[7] ^= 0x80;
            a.corrupt(&path, Bytes::from(bad));
        }
    }
    let src = loc("a", "src", "in/");
    let dst = Location::local(&format!("{}/", dir.to_string_lossy()));
    let listing = barge_engine::input::list_prefix(&src, &dst, a.as_ref(), &Default::default())
        .await
        .expect("list");
    let specs: Vec<TransferSpec> = listing.files.iter().map(|(s, _)| s.clone()).collect();
    let s = Engine::new(conns, opts())
        .with_listing(listing.files)
        .run(specs)
        .await
        .expect("run");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(s.files[0].status, Status::Ok, "{:?}", s.files[0]);
    assert_eq!(s.files[0].verified, Verification::SourceCrc32c);
    assert_eq!(s.files[1].status, Status::Failed, "{:?}", s.files[1]);
    let err = s.files[1].error.as_deref().unwrap_or_default();
    assert!(err.contains("the bytes read have CRC32C"), "{err}");
    assert!(err.contains("the store keeps"), "{err}");
    // Read again before giving up: seven retries of eight attempts.
    assert!(s.retries >= 7, "{s:?}");
}

/// Small files (one request each way) are moved `files` at a time, more than the parts'
/// `concurrency` (over a real network they mostly wait on round trips); large files' parts stay
/// within `concurrency`. Every byte arrives.
#[tokio::test]
async fn small_files_are_moved_files_at_a_time_and_parts_concurrency_at_a_time() {
    for files in [12, 3] {
        let a = Arc::new(MemoryStore::new("a", &["src"]).with_limits(caps()));
        let b = Arc::new(
            MemoryStore::new("b", &["dst"])
                .with_limits(caps())
                .with_upload_time(Duration::from_millis(20)),
        );
        let conns = Arc::new(Connections::with_stores(vec![
            (ConnRef::Named("a".into()), a.clone() as Arc<dyn Store>),
            (ConnRef::Named("b".into()), b.clone() as Arc<dyn Store>),
        ]));
        let mut specs = small_files(&a, 40);
        specs.extend(large_files(&a, 3));
        let mut o = opts();
        o.concurrency = 4;
        o.files = files;
        let s = Engine::new(conns, o).run(specs).await.expect("run");
        assert!(s.success(), "{s:#?}");
        for f in &s.files {
            let key = f.src.rsplit('/').next().unwrap_or_default();
            let want = a.get(&ObjectPath::new("src", key));
            assert!(want.is_some(), "{}", f.src);
            assert_eq!(b.get(&ObjectPath::new("dst", key)), want, "{}", f.dst);
        }
        assert_eq!(s.files.len(), 43);
        let large = s
            .files
            .iter()
            .filter(|f| f.strategy == Some(Strategy::StreamParts))
            .count();
        assert_eq!(large, 3, "{s:#?}");
        assert_eq!(
            b.puts.most.load(Ordering::SeqCst),
            files as u64,
            "whole-object PUTs in flight at most, with {files} files at a time"
        );
        let parts = b.part_uploads.most.load(Ordering::SeqCst);
        assert!((1..=4).contains(&parts), "{parts} parts in flight");
        assert_eq!(b.open_uploads(), 0);
    }
}
