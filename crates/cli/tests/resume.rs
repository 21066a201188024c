//! Interrupted transfers resume from the journal against a real S3 server: only the parts not yet
//! recorded move again, a changed source is reported instead of spliced, a vanished upload
//! starts over.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use barge_engine::input::TransferSpec;
use barge_engine::journal::{FileState, Journal, SqlJournal, TransferRecord, TransferState};
use barge_engine::location::{ConnRef, Location};
use barge_engine::plan::{FilePlan, PlanOptions, Strategy};
use barge_engine::report::{Observer, Status};
use barge_engine::run::{Engine, RunOptions};
use barge_store::{MIB as MIB64, ObjectAttrs, ObjectPath, Store, UploadRef};
use common::*;
use tokio_util::sync::CancellationToken;

fn opts() -> RunOptions {
    RunOptions {
        plan: PlanOptions {
            part_size: 5 * MIB64,
            copy_part_size: 5 * MIB64,
            max_memory: 64 * MIB64,
        },
        concurrency: 2,
        ..RunOptions::default()
    }
}

/// Cancels the run once `after` parts are done.
struct StopAfter {
    after: usize,
    seen: AtomicUsize,
    token: CancellationToken,
}

impl Observer for StopAfter {
    fn progress(&self, _file: usize, _bytes: u64) {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.token.cancel();
        }
    }
}

async fn journal(tag: &str) -> Arc<SqlJournal> {
    let path = temp_dir(tag).join("journal.sqlite");
    Arc::new(
        SqlJournal::open(&path.to_string_lossy())
            .await
            .expect("open journal"),
    )
}

async fn interrupted_run(
    j: &Arc<SqlJournal>,
    specs: Vec<TransferSpec>,
    after: usize,
) -> barge_engine::report::Summary {
    let engine = Engine::new(connections(), opts()).with_journal(j.clone());
    let stop = Arc::new(StopAfter {
        after,
        seen: 0.into(),
        token: engine.cancel_token(),
    });
    engine
        .with_observer(stop)
        .run(specs)
        .await
        .expect("first run")
}

async fn stores() -> (Arc<dyn Store>, Arc<dyn Store>) {
    let c = connections();
    (
        c.get(&ConnRef::Named("ga".into())).await.expect("ga"),
        c.get(&ConnRef::Named("gb".into())).await.expect("gb"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_transfer_resumes_where_it_stopped() {
    resumes_where_it_stopped(journal("resume").await).await;
}

/// The same journal code against PostgreSQL: resume, a changed source, a vanished upload, abort.
/// One test, run in sequence, so the schema is created once.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_journal_behaves_like_sqlite() {
    let url = pg_url();
    let j = Arc::new(
        SqlJournal::open(&url)
            .await
            .expect("open the PostgreSQL journal"),
    );
    plans_round_trip(j.as_ref()).await;
    resumes_where_it_stopped(j.clone()).await;
    changed_source_is_reported(j.clone()).await;
    vanished_upload_starts_over(j.clone()).await;
    abort_discards(j).await;
}

/// A worker or a `submit` that opens a PostgreSQL journal while other processes are writing to
/// it neither waits for their transactions nor makes them wait (the two waiting on each other
/// is a deadlock that PostgreSQL ends by failing one of them): once the schema exists, opening
/// takes no lock on its tables.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_journal_opens_while_another_transaction_writes_to_it() {
    use sqlx::Connection;
    let url = pg_url();
    SqlJournal::open(&url).await.expect("create the schema");
    sqlx::any::install_default_drivers();
    let mut other = sqlx::AnyConnection::connect(&url)
        .await
        .expect("a second connection");
    let mut tx = other.begin().await.expect("begin");
    sqlx::query(
        "LOCK TABLE barge_transfers, barge_files, barge_parts, barge_work, barge_destinations \
         IN ROW EXCLUSIVE MODE",
    )
    .execute(&mut *tx)
    .await
    .expect("hold the locks a writing transaction holds");
    let opened =
        tokio::time::timeout(std::time::Duration::from_secs(30), SqlJournal::open(&url)).await;
    tx.rollback().await.expect("rollback");
    let j = opened
        .expect("opening the journal waited for another process's transaction")
        .expect("open");
    assert!(
        j.transfer("no-such-transfer")
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plans_are_recorded_exactly_in_sqlite() {
    plans_round_trip(journal("plans").await.as_ref()).await;
}

/// 150 plans (more than one statement's rows), every field distinct, come back exactly as they
/// were saved; planning them again (a changed source) replaces each row, not adds one.
async fn plans_round_trip(j: &SqlJournal) {
    let tid = format!("plans-{}", prefix("plans").trim_end_matches('/'));
    let plan = |id: usize, round: u64| {
        let mut attrs = ObjectAttrs {
            content_type: Some(format!("text/x-{id}")),
            ..ObjectAttrs::default()
        };
        attrs
            .user_metadata
            .insert("k".into(), format!("v{id}-{round}"));
        FilePlan {
            id,
            src: named("ga", "src", &format!("dir/{id}.bin")),
            dst: Location::local(&format!("/tmp/out/{id}.bin")),
            size: (id as u64 + 1) * 1000 + round,
            pin: barge_store::Pin {
                etag: Some(format!("\"e{id}-{round}\"")),
                version_id: id.is_multiple_of(2).then(|| format!("v{id}")),
            },
            attrs,
            strategy: if id.is_multiple_of(3) {
                Strategy::StreamParts
            } else {
                Strategy::SinglePut
            },
            part_size: 5 * MIB64 + id as u64,
            part_count: id as u32 + 1,
            attrs_pending: false,
        }
    };
    j.create_transfer(&TransferRecord {
        id: tid.clone(),
        fingerprint: tid.clone(),
        created_at: 0,
        updated_at: 0,
        state: TransferState::Running,
        spec: "{}".into(),
    })
    .await
    .expect("create transfer");
    for round in [0, 1] {
        let plans: Vec<FilePlan> = (0..150).map(|id| plan(id, round)).collect();
        j.save_plans(&tid, &plans).await.expect("save plans");
        let got = j.files(&tid).await.expect("read plans");
        assert_eq!(got.len(), plans.len(), "one row per file (round {round})");
        for (r, want) in got.iter().zip(&plans) {
            assert_eq!(format!("{:?}", r.plan), format!("{want:?}"));
            assert_eq!(r.state, FileState::Planned);
            assert_eq!((r.upload_id.as_deref(), r.error.as_deref()), (None, None));
        }
    }
}

async fn resumes_where_it_stopped(j: Arc<SqlJournal>) {
    let (ga, gb) = stores().await;
    let p = prefix("resume");
    let size = 40 * MIB + 123; // 9 parts of 5 MiB
    let body = data(size, 11);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}big")),
        dst: named("gb", "dst", &format!("{p}big")),
    }];
    let first = interrupted_run(&j, specs.clone(), 3).await;
    assert_eq!(first.files[0].status, Status::Cancelled, "{first:#?}");
    let tid = first.transfer_id.clone().expect("transfer id");
    let t = j.transfer(&tid).await.expect("read").expect("recorded");
    assert_eq!(t.state, TransferState::Interrupted);
    assert_eq!(
        gb.list_uploads("dst", &p).await.expect("list").len(),
        1,
        "the upload is kept for the resume"
    );
    let status = j.status(&tid).await.expect("status");
    let recorded = status[0].parts_done;
    assert!(recorded >= 3, "{status:#?}");

    let second = Engine::new(connections(), opts())
        .with_journal(j.clone())
        .run(specs)
        .await
        .expect("second run");
    assert!(second.success(), "{second:#?}");
    assert!(second.resumed);
    assert_eq!(second.transfer_id.as_deref(), Some(tid.as_str()));
    assert_eq!(
        second.parts_reused, recorded,
        "every recorded part is reused"
    );
    let moved_again = second.bytes_through_client;
    let left = size as u64 - recorded * 5 * MIB64;
    assert_eq!(moved_again, left, "only the parts not recorded move again");
    println!(
        "resume: {recorded} of 9 parts recorded before the stop; the second run moved {moved_again} bytes of {size}"
    );
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    let t = j.transfer(&tid).await.expect("read").expect("recorded");
    assert_eq!(t.state, TransferState::Done);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_changed_between_runs_is_reported_not_spliced() {
    changed_source_is_reported(journal("resume-changed").await).await;
}

async fn changed_source_is_reported(j: Arc<SqlJournal>) {
    let (ga, gb) = stores().await;
    let p = prefix("resume-changed");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}f"),
        data(30 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}f")),
        dst: named("gb", "dst", &format!("{p}f")),
    }];
    interrupted_run(&j, specs.clone(), 2).await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}f"),
        data(30 * MIB, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let second = Engine::new(connections(), opts())
        .with_journal(j.clone())
        .run(specs.clone())
        .await
        .expect("second run");
    assert_eq!(second.files[0].status, Status::Failed);
    let err = second.files[0].error.clone().unwrap_or_default();
    assert!(
        err.contains("changed since the transfer planned it") && err.contains(&format!("{p}f")),
        "{err}"
    );
    assert!(
        gb.head(&ObjectPath::new("dst", format!("{p}f")))
            .await
            .is_err(),
        "nothing spliced"
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    // Running it again copies the new version.
    let third = Engine::new(connections(), opts())
        .with_journal(j.clone())
        .run(specs)
        .await
        .expect("third run");
    assert!(third.success(), "{third:#?}");
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}f")).await),
        sha256(&data(30 * MIB, 2))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_upload_starts_that_file_over() {
    vanished_upload_starts_over(journal("resume-gone").await).await;
}

async fn vanished_upload_starts_over(j: Arc<SqlJournal>) {
    let (ga, gb) = stores().await;
    let p = prefix("resume-gone");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}f"),
        data(30 * MIB, 3),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}f")),
        dst: named("gb", "dst", &format!("{p}f")),
    }];
    let first = interrupted_run(&j, specs.clone(), 2).await;
    let tid = first.transfer_id.expect("id");
    let files = j.files(&tid).await.expect("files");
    assert_eq!(files[0].state, FileState::Uploading);
    let upload_id = files[0].upload_id.clone().expect("upload id");
    gb.abort_upload(&UploadRef {
        path: ObjectPath::new("dst", format!("{p}f")),
        upload_id,
    })
    .await
    .expect("abort behind barge's back");
    let second = Engine::new(connections(), opts())
        .with_journal(j.clone())
        .run(specs)
        .await
        .expect("second run");
    assert!(second.success(), "{second:#?}");
    assert_eq!(second.parts_reused, 0);
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}f")).await),
        sha256(&data(30 * MIB, 3))
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_discards_a_kept_upload() {
    abort_discards(journal("abort").await).await;
}

async fn abort_discards(j: Arc<SqlJournal>) {
    let (ga, gb) = stores().await;
    let p = prefix("abort");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}f"),
        data(30 * MIB, 4),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}f")),
        dst: named("gb", "dst", &format!("{p}f")),
    }];
    let first = interrupted_run(&j, specs, 2).await;
    let tid = first.transfer_id.expect("id");
    assert_eq!(gb.list_uploads("dst", &p).await.expect("list").len(), 1);
    let n = barge_engine::run::abort_transfer(&connections(), j.as_ref(), &tid[..8])
        .await
        .expect("abort");
    assert_eq!(n, 1);
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
    let t = j.transfer(&tid).await.expect("read").expect("recorded");
    assert_eq!(t.state, TransferState::Aborted);
}
