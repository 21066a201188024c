//! The engine's promises where data could be lost, against the in-memory store and local
//! files: what it refuses before anything moves, what fails file by file, and when a source may
//! be deleted. The same rules are proven against Garage in crates/cli/tests/trust.rs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use barge_engine::EngineError;
use barge_engine::connections::Connections;
use barge_engine::input::TransferSpec;
use barge_engine::location::{ConnRef, Location};
use barge_engine::plan::PlanOptions;
use barge_engine::report::{Observer, Status, Verification};
use barge_engine::retry::RetryPolicy;
use barge_engine::run::{Engine, RunOptions};
use barge_store::memory::{CompletionFault, MemoryStore};
use barge_store::{ObjectAttrs, ObjectPath, Pin, Store};
use bytes::Bytes;
use common::{caps, loc};

fn body(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| ((i * 31 + usize::from(seed) * 7) % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn opts(delete_source: bool) -> RunOptions {
    RunOptions {
        plan: PlanOptions {
            part_size: 1024,
            copy_part_size: 1024,
            max_memory: 1 << 20,
        },
        concurrency: 4,
        delete_source,
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        },
        ..RunOptions::default()
    }
}

/// Store `a` (bucket src) under two names, `a` and `alias`, and store `b` (bucket dst).
fn setup() -> (Arc<MemoryStore>, Arc<MemoryStore>, Arc<Connections>) {
    let a = Arc::new(MemoryStore::new("a", &["src"]).with_limits(caps()));
    let b = Arc::new(MemoryStore::new("b", &["dst"]).with_limits(caps()));
    let conns = Arc::new(Connections::with_stores(vec![
        (ConnRef::Named("a".into()), a.clone() as Arc<dyn Store>),
        (ConnRef::Named("alias".into()), a.clone() as Arc<dyn Store>),
        (ConnRef::Named("b".into()), b.clone() as Arc<dyn Store>),
    ]));
    (a, b, conns)
}

fn put(store: &MemoryStore, bucket: &str, key: &str, data: Bytes) {
    store.insert(&ObjectPath::new(bucket, key), data, ObjectAttrs::default());
}

async fn run(
    conns: Arc<Connections>,
    opts: RunOptions,
    specs: Vec<TransferSpec>,
) -> barge_engine::report::Summary {
    Engine::new(conns, opts).run(specs).await.expect("run")
}

async fn bytes_of(store: &dyn Store, bucket: &str, key: &str) -> Option<Bytes> {
    let path = ObjectPath::new(bucket, key);
    let meta = store.head(&path).await.ok()?;
    store
        .get_range(&path, &Pin::of(&meta), 0, meta.size)
        .await
        .ok()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("barge-trust-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn refused(r: barge_engine::Result<barge_engine::report::Summary>) -> String {
    match r {
        Err(EngineError::Input(msg)) => msg,
        other => panic!("expected the run to be refused, got {other:?}"),
    }
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .expect("under dir")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn an_object_copied_onto_itself_through_another_name_is_refused() {
    let (a, _, conns) = setup();
    put(&a, "src", "k", body(5000, 1));
    let spec = TransferSpec {
        src: loc("a", "src", "k"),
        dst: loc("alias", "src", "k"),
    };
    let msg = refused(Engine::new(conns, opts(true)).run(vec![spec]).await);
    assert_eq!(
        msg,
        "alias:src/k is the source itself (a:src/k and alias:src/k are one object): nothing was moved"
    );
    assert_eq!(bytes_of(a.as_ref(), "src", "k").await, Some(body(5000, 1)));
}

#[tokio::test]
async fn a_local_file_copied_onto_itself_in_any_spelling_is_refused() {
    let dir = temp_dir("self");
    std::fs::create_dir_all(dir.join("d")).expect("mkdir");
    let f = dir.join("f");
    std::fs::write(&f, b"the only copy").expect("write");
    let conns = Arc::new(Connections::with_stores(vec![]));
    let d = dir.to_string_lossy();
    #[allow(unused_mut)]
    let mut spellings = vec![format!("/{d}/f"), format!("{d}/d/../f"), format!("{d}/./f")];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&f, dir.join("link")).expect("symlink");
        std::fs::hard_link(&f, dir.join("hard")).expect("hard link");
        spellings.push(format!("{d}/link"));
        spellings.push(format!("{d}/hard"));
    }
    for dst in spellings {
        let spec = TransferSpec {
            src: Location::local(&f.to_string_lossy()),
            dst: Location::local(&dst),
        };
        let msg = refused(Engine::new(conns.clone(), opts(true)).run(vec![spec]).await);
        assert!(msg.contains("is the source itself"), "{dst}: {msg}");
        assert_eq!(std::fs::read(&f).expect("kept"), b"the only copy", "{dst}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_swap_or_a_chain_with_delete_source_is_refused_and_loses_nothing() {
    let (a, _, conns) = setup();
    put(&a, "src", "A", body(3000, 1));
    put(&a, "src", "B", body(3000, 2));
    let swap = vec![
        TransferSpec {
            src: loc("a", "src", "A"),
            dst: loc("alias", "src", "B"),
        },
        TransferSpec {
            src: loc("a", "src", "B"),
            dst: loc("a", "src", "A"),
        },
    ];
    let msg = refused(
        Engine::new(conns.clone(), opts(true))
            .run(swap.clone())
            .await,
    );
    assert!(
        msg.starts_with("alias:src/B is the destination of a:src/A and the source of another transfer (a:src/B -> a:src/A)"),
        "{msg}"
    );
    let chain = vec![
        TransferSpec {
            src: loc("a", "src", "A"),
            dst: loc("a", "src", "C"),
        },
        TransferSpec {
            src: loc("a", "src", "C0"),
            dst: loc("a", "src", "A2"),
        },
        TransferSpec {
            src: loc("alias", "src", "C"),
            dst: loc("b", "dst", "C"),
        },
    ];
    let msg = refused(Engine::new(conns.clone(), opts(true)).run(chain).await);
    assert!(
        msg.contains("with --delete-source one of the two bodies would be lost"),
        "{msg}"
    );
    assert_eq!(bytes_of(a.as_ref(), "src", "A").await, Some(body(3000, 1)));
    assert_eq!(bytes_of(a.as_ref(), "src", "B").await, Some(body(3000, 2)));
    // Without --delete-source too: the order would decide which body survives.
    let msg = refused(Engine::new(conns, opts(false)).run(swap).await);
    assert!(
        msg.contains("which body it ends up with would depend on the order"),
        "{msg}"
    );
    assert_eq!(bytes_of(a.as_ref(), "src", "A").await, Some(body(3000, 1)));
    assert_eq!(bytes_of(a.as_ref(), "src", "B").await, Some(body(3000, 2)));
}

#[tokio::test]
async fn keys_that_cannot_be_file_names_fail_alone_and_write_nothing_outside() {
    let (a, _, conns) = setup();
    let root = temp_dir("keys");
    let out = root.join("t").join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let keys = [
        ("p/x", true),
        ("p//x", false),
        ("p/../../escape.txt", false),
        ("p/./y", false),
        ("p/ctl\u{1}.bin", false),
        ("p/sub/ok.bin", true),
    ];
    for (i, (k, _)) in keys.iter().enumerate() {
        put(&a, "src", k, body(2000 + i, i as u8));
    }
    let src = loc("a", "src", "p/");
    let dst = Location::local(&format!("{}/", out.to_string_lossy()));
    let listing = barge_engine::input::list_prefix(&src, &dst, a.as_ref(), &Default::default())
        .await
        .expect("list");
    let specs: Vec<TransferSpec> = listing.files.iter().map(|(s, _)| s.clone()).collect();
    let s = Engine::new(conns, opts(true))
        .with_listing(listing.files)
        .run(specs)
        .await
        .expect("run");
    assert_eq!(s.files_ok, 2, "{s:#?}");
    assert_eq!(s.files_failed, 4, "{s:#?}");
    for f in &s.files {
        let key = f.src.trim_start_matches("a:src/");
        let good = keys.iter().any(|(k, ok)| *k == key && *ok);
        if good {
            assert_eq!(f.status, Status::Ok, "{f:?}");
        } else {
            let e = f.error.as_deref().unwrap_or_default();
            assert!(e.contains("nothing was written"), "{key}: {e}");
        }
    }
    // Nothing anywhere but the two good files, in the destination folder.
    assert_eq!(files_under(&root), ["t/out/sub/ok.bin", "t/out/x"]);
    assert_eq!(std::fs::read(out.join("x")).expect("x"), body(2000, 0));
    // The good files' sources are gone (moved); every refused file's source is kept.
    for (i, (k, ok)) in keys.iter().enumerate() {
        let kept = bytes_of(a.as_ref(), "src", k).await;
        if *ok {
            assert_eq!(kept, None, "{k} was moved");
        } else {
            assert_eq!(kept, Some(body(2000 + i, i as u8)), "{k} is kept");
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn a_key_that_is_also_a_folder_fails_alone_and_leaves_no_temporary_file() {
    let (a, _, conns) = setup();
    let out = temp_dir("filefolder");
    put(&a, "src", "d/a", body(4000, 1));
    put(&a, "src", "d/a/b", body(4000, 2));
    put(&a, "src", "d/marker/", Bytes::new());
    let src = loc("a", "src", "d/");
    let dst = Location::local(&format!("{}/", out.to_string_lossy()));
    let listing = barge_engine::input::list_prefix(&src, &dst, a.as_ref(), &Default::default())
        .await
        .expect("list");
    assert_eq!(listing.skipped.len(), 1, "{:?}", listing.skipped);
    assert_eq!(listing.skipped[0].path, "a:src/d/marker/");
    assert!(listing.skipped[0].reason.contains("folder marker"));
    let specs: Vec<TransferSpec> = listing.files.iter().map(|(s, _)| s.clone()).collect();
    let s = run(conns, opts(false), specs).await;
    assert_eq!((s.files_ok, s.files_failed), (1, 1), "{s:#?}");
    let failed = s
        .files
        .iter()
        .find(|f| f.status == Status::Failed)
        .expect("one failed");
    assert_eq!(failed.src, "a:src/d/a");
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("other files of this transfer need as their folder")),
        "{failed:?}"
    );
    assert_eq!(files_under(&out), ["a/b"]);
    assert_eq!(std::fs::read(out.join("a/b")).expect("a/b"), body(4000, 2));
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test]
async fn a_lost_completion_answer_is_settled_by_the_destination() {
    let (a, b, conns) = setup();
    put(&a, "src", "big", body(10_000, 3));
    *b.completion_fault.lock().expect("lock") = Some(CompletionFault::LoseAnswer);
    let spec = TransferSpec {
        src: loc("a", "src", "big"),
        dst: loc("b", "dst", "big"),
    };
    let s = run(conns, opts(true), vec![spec]).await;
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].verified, Verification::SizeAndCrc32c);
    assert!(s.files[0].source_deleted);
    assert_eq!(
        bytes_of(b.as_ref(), "dst", "big").await,
        Some(body(10_000, 3))
    );
}

#[tokio::test]
async fn an_upload_aborted_elsewhere_over_an_object_of_the_same_size_is_not_a_copy() {
    let (a, b, conns) = setup();
    put(&a, "src", "big", body(10_000, 3));
    // An older object of the same size already at the destination.
    put(&b, "dst", "big", body(10_000, 9));
    *b.completion_fault.lock().expect("lock") = Some(CompletionFault::AbortedElsewhere);
    let spec = TransferSpec {
        src: loc("a", "src", "big"),
        dst: loc("b", "dst", "big"),
    };
    let s = run(conns, opts(true), vec![spec]).await;
    assert_eq!(s.files[0].status, Status::Failed, "{s:#?}");
    let e = s.files[0].error.clone().unwrap_or_default();
    assert!(
        e.contains("the upload is gone from the store and the destination is not barge's copy"),
        "{e}"
    );
    assert!(!s.files[0].source_deleted);
    assert_eq!(
        bytes_of(a.as_ref(), "src", "big").await,
        Some(body(10_000, 3)),
        "source kept"
    );
    assert_eq!(
        bytes_of(b.as_ref(), "dst", "big").await,
        Some(body(10_000, 9)),
        "the older object is left as it was"
    );
}

/// Rewrites the source after barge read it, before it could be deleted.
struct RewriteAfterRead(Arc<MemoryStore>);

impl Observer for RewriteAfterRead {
    fn progress(&self, _file: usize, _bytes: u64) {
        self.0.insert(
            &ObjectPath::new("src", "k"),
            body(700, 8),
            ObjectAttrs::default(),
        );
    }
}

#[tokio::test]
async fn a_source_rewritten_after_its_copy_is_not_deleted() {
    let (a, b, conns) = setup();
    put(&a, "src", "k", body(500, 7));
    let spec = TransferSpec {
        src: loc("a", "src", "k"),
        dst: loc("b", "dst", "k"),
    };
    let s = Engine::new(conns, opts(true))
        .with_observer(Arc::new(RewriteAfterRead(a.clone())))
        .run(vec![spec])
        .await
        .expect("run");
    assert_eq!(s.files[0].status, Status::Failed, "{s:#?}");
    assert!(!s.files[0].source_deleted);
    let e = s.files[0].error.clone().unwrap_or_default();
    assert!(
        e.contains("was rewritten since it was copied: it was kept"),
        "{e}"
    );
    assert_eq!(
        bytes_of(a.as_ref(), "src", "k").await,
        Some(body(700, 8)),
        "the rewrite is kept"
    );
    assert_eq!(
        bytes_of(b.as_ref(), "dst", "k").await,
        Some(body(500, 7)),
        "the copy is of what was read"
    );
}

#[tokio::test]
async fn a_move_between_stores_without_checksums_is_proven_by_reading_back() {
    let dir = temp_dir("readback");
    let (src, dst) = (dir.join("a.bin"), dir.join("b.bin"));
    std::fs::write(&src, body(300_000, 5)).expect("write");
    let conns = Arc::new(Connections::with_stores(vec![]));
    let spec = TransferSpec {
        src: Location::local(&src.to_string_lossy()),
        dst: Location::local(&dst.to_string_lossy()),
    };
    let s = Engine::new(conns.clone(), opts(true))
        .run(vec![spec.clone()])
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].verified, Verification::ReadBack);
    assert!(s.files[0].source_deleted);
    assert!(!src.exists());
    assert_eq!(std::fs::read(&dst).expect("dst"), body(300_000, 5));
    // Without --delete-source, nothing is read back: the size is all either side can show.
    std::fs::write(&src, body(1000, 6)).expect("write");
    let s = run(conns, opts(false), vec![spec]).await;
    assert_eq!(s.files[0].verified, Verification::SizeOnly);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn local_symlinks_and_special_files_are_reported_not_copied() {
    let dir = temp_dir("links");
    let src_dir = dir.join("in");
    std::fs::create_dir_all(src_dir.join("sub")).expect("mkdir");
    std::fs::write(src_dir.join("real.bin"), b"real").expect("write");
    std::fs::write(src_dir.join("notes.barge-tmp"), b"a user's own file").expect("write");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("/etc/hostname", src_dir.join("link")).expect("symlink");
        std::os::unix::fs::symlink(&src_dir, src_dir.join("sub/loop")).expect("loop");
    }
    let store = barge_store::local::LocalStore::new();
    let src = Location::local(&format!("{}/", src_dir.to_string_lossy()));
    let dst = Location::local(&format!("{}/", dir.join("out").to_string_lossy()));
    let listing = barge_engine::input::list_prefix(&src, &dst, &store, &Default::default())
        .await
        .expect("list");
    let mut copied: Vec<String> = listing
        .files
        .iter()
        .map(|(s, _)| {
            s.src
                .path
                .key
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    copied.sort();
    assert_eq!(copied, ["notes.barge-tmp", "real.bin"]);
    #[cfg(unix)]
    {
        let mut skipped: Vec<(String, String)> = listing
            .skipped
            .iter()
            .map(|s| {
                (
                    s.path.rsplit('/').next().unwrap_or_default().to_string(),
                    s.reason.clone(),
                )
            })
            .collect();
        skipped.sort();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert_eq!(skipped[0].0, "link");
        assert_eq!(skipped[1].0, "loop");
        assert!(
            skipped.iter().all(|(_, r)| r.contains("symbolic link")),
            "{skipped:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_part_exactly_the_size_of_the_memory_budget_moves() {
    let (a, b, conns) = setup();
    put(&a, "src", "r10k", body(10_000, 4));
    let mut o = opts(false);
    o.plan = PlanOptions {
        part_size: 3000,
        copy_part_size: 3000,
        max_memory: 3000,
    };
    let spec = TransferSpec {
        src: loc("a", "src", "r10k"),
        dst: loc("b", "dst", "r10k"),
    };
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        Engine::new(conns, o).run(vec![spec]),
    )
    .await
    .expect("the run ends")
    .expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(
        bytes_of(b.as_ref(), "dst", "r10k").await,
        Some(body(10_000, 4))
    );
}

#[tokio::test]
async fn a_connection_that_cannot_be_opened_fails_its_files_not_the_run() {
    let (a, _, conns) = setup();
    put(&a, "src", "k", body(10, 1));
    let spec = TransferSpec {
        src: loc("a", "src", "k"),
        dst: loc("nowhere", "dst", "k"),
    };
    let s = run(conns, opts(true), vec![spec]).await;
    assert_eq!(s.files[0].status, Status::Failed);
    assert_eq!(
        s.files[0].error.as_deref(),
        Some("no connection named 'nowhere' is configured")
    );
    assert_eq!(bytes_of(a.as_ref(), "src", "k").await, Some(body(10, 1)));
}

/// A worker's completion refused with InvalidPart (a part moved twice landed between the list of
/// the parts and the completion): the finalizer lists again and completes, instead of failing
/// the file. Memory stores, the queue on a SQLite journal.
#[tokio::test]
async fn a_worker_lists_again_when_a_completion_is_refused_for_a_changed_part() {
    use barge_engine::cluster::{SubmitOptions, Until, Worker, WorkerOptions, submit};
    use barge_engine::journal::{FileState, Journal, SqlJournal};
    let (a, b, conns) = setup();
    put(&a, "src", "big", body(10_000, 5));
    *b.completion_fault.lock().expect("lock") = Some(CompletionFault::InvalidPart);
    let dir = temp_dir("relist");
    let j = Arc::new(
        SqlJournal::open(&dir.join("j.sqlite").to_string_lossy())
            .await
            .expect("journal"),
    );
    let spec = TransferSpec {
        src: loc("a", "src", "big"),
        dst: loc("b", "dst", "big"),
    };
    let tid = submit(
        &conns,
        &j,
        vec![spec],
        &SubmitOptions {
            queue: "relist".into(),
            part_size: Some(4096),
            delete_source: true,
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let worker = Arc::new(Worker::new(
        conns,
        j.clone(),
        WorkerOptions {
            queue: "relist".into(),
            ..WorkerOptions::default()
        },
    ));
    tokio::time::timeout(
        Duration::from_secs(30),
        worker.run(
            tokio_util::sync::CancellationToken::new(),
            Until::Settled(tid.clone()),
        ),
    )
    .await
    .expect("settles")
    .expect("worker");
    let files = j.files(&tid).await.expect("files");
    assert_eq!(files[0].state, FileState::Completed, "{files:#?}");
    assert_eq!(files[0].plan.part_count, 3);
    assert_eq!(
        bytes_of(b.as_ref(), "dst", "big").await,
        Some(body(10_000, 5))
    );
    assert_eq!(bytes_of(a.as_ref(), "src", "big").await, None, "moved");
    let _ = std::fs::remove_dir_all(&dir);
}
