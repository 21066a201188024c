//! End-to-end transfers through the engine against two real S3 servers (Garage on loopback).
//! Every test compares source and destination by SHA-256 and checks that no multipart upload is
//! left on the server.

mod common;

use std::sync::Arc;

use barge_engine::input::{Filters, TransferSpec, expand_prefix};
use barge_engine::location::{ConnRef, Location};
use barge_engine::plan::{PlanOptions, Strategy};
use barge_engine::report::{Observer, Status, Verification};
use barge_engine::run::{Engine, RunOptions};
use barge_store::{MIB as MIB64, ObjectAttrs, ObjectPath, Store, StoreError};
use common::*;

fn opts(part_mib: u64) -> RunOptions {
    RunOptions {
        plan: PlanOptions {
            part_size: part_mib * MIB64,
            copy_part_size: part_mib * MIB64,
            max_memory: 64 * MIB64,
        },
        concurrency: 4,
        ..RunOptions::default()
    }
}

async fn store(name: &str) -> Arc<dyn Store> {
    connections()
        .get(&ConnRef::Named(name.into()))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_size_between_two_endpoints() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("sizes");
    let sizes = [0, 1, 5 * MIB, 5 * MIB + 1, 23 * MIB];
    let mut specs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("{p}f{i}");
        put(
            ga.as_ref(),
            "src",
            &key,
            data(*size, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
        specs.push(TransferSpec {
            src: named("ga", "src", &key),
            dst: named("gb", "dst", &key),
        });
    }
    let summary = Engine::new(connections(), opts(5))
        .run(specs)
        .await
        .expect("run");
    assert!(summary.success(), "{summary:#?}");
    for (i, size) in sizes.iter().enumerate() {
        let key = format!("{p}f{i}");
        let got = read(gb.as_ref(), "dst", &key).await;
        assert_eq!(got.len(), *size);
        assert_eq!(sha256(&got), sha256(&data(*size, i as u64)), "size {size}");
    }
    // Exactly one part is a single PUT; one byte more is two parts; 23 MiB is five.
    let parts: Vec<_> = summary
        .files
        .iter()
        .map(|f| (f.strategy, f.parts))
        .collect();
    assert_eq!(parts[2], (Some(Strategy::SinglePut), Some(1)));
    assert_eq!(parts[3], (Some(Strategy::StreamParts), Some(2)));
    assert_eq!(parts[4], (Some(Strategy::StreamParts), Some(5)));
    assert_eq!(summary.files[4].verified, Verification::SizeAndCrc32c);
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_endpoint_copies_server_side() {
    let ga = store("ga").await;
    let p = prefix("server");
    let body = data(17 * MIB, 7);
    put(
        ga.as_ref(),
        "src",
        &format!("{p}big"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}small"),
        data(1000, 8),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![
        TransferSpec {
            src: named("ga", "src", &format!("{p}big")),
            dst: named("ga", "dst", &format!("{p}big")),
        },
        TransferSpec {
            src: named("ga", "src", &format!("{p}small")),
            dst: named("ga", "dst", &format!("{p}small")),
        },
    ];
    let summary = Engine::new(connections(), opts(5))
        .run(specs)
        .await
        .expect("run");
    assert!(summary.success(), "{summary:#?}");
    assert_eq!(summary.files[0].strategy, Some(Strategy::ServerPartCopy));
    assert_eq!(summary.files[0].parts, Some(4));
    assert_eq!(summary.files[1].strategy, Some(Strategy::ServerCopy));
    assert_eq!(
        summary.bytes_through_client, 0,
        "no object bytes flowed through barge"
    );
    assert_eq!(
        sha256(&read(ga.as_ref(), "dst", &format!("{p}big")).await),
        sha256(&body)
    );
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_and_back() {
    let ga = store("ga").await;
    let dir = temp_dir("local");
    let p = prefix("local");
    let body = data(12 * MIB + 3, 9);
    let src_file = dir.join("in.bin");
    std::fs::write(&src_file, &body).expect("write source");
    let up = vec![TransferSpec {
        src: Location::local(&src_file.to_string_lossy()),
        dst: named("ga", "dst", &format!("{p}in.bin")),
    }];
    let s = Engine::new(connections(), opts(5))
        .run(up)
        .await
        .expect("upload");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files[0].strategy, Some(Strategy::StreamParts));
    // The uploaded object down to a local file, in parts of `part_mib`.
    let download = |to: std::path::PathBuf, part_mib: u64| {
        let down = vec![TransferSpec {
            src: named("ga", "dst", &format!("{p}in.bin")),
            dst: Location::local(&to.to_string_lossy()),
        }];
        async move {
            let s = Engine::new(connections(), opts(part_mib))
                .run(down)
                .await
                .expect("download");
            assert!(s.success(), "{s:#?}");
            s
        }
    };
    let back = dir.join("sub/out.bin");
    let s = download(back.clone(), 5).await;
    // Read in the parts it was uploaded in: its composite CRC32C on the server is barge's.
    assert_eq!(s.files[0].verified, Verification::SourceCrc32c);
    let got = std::fs::read(&back).expect("downloaded file");
    assert_eq!(sha256(&got), sha256(&body));
    // In other parts (6 MiB: three again, other boundaries) the composites differ and say
    // nothing: size only, not a failure.
    let again = dir.join("sub/again.bin");
    let s = download(again.clone(), 6).await;
    assert_eq!(s.files[0].parts, Some(3));
    assert_eq!(s.files[0].verified, Verification::SizeOnly);
    assert_eq!(
        sha256(&std::fs::read(&again).expect("downloaded again")),
        sha256(&body)
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub"))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".barge-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_copied() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("meta");
    let mut attrs = ObjectAttrs {
        content_type: Some("application/x-parquet".into()),
        cache_control: Some("max-age=3600".into()),
        content_disposition: Some("attachment; filename=\"x.parquet\"".into()),
        content_encoding: Some("identity".into()),
        content_language: Some("en".into()),
        expires: Some("Wed, 21 Oct 2037 07:28:00 GMT".into()),
        ..Default::default()
    };
    attrs.user_metadata.insert("team".into(), "data-eng".into());
    attrs.user_metadata.insert("run-id".into(), "42".into());
    for (key, size) in [("small", 100), ("big", 11 * MIB)] {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}{key}"),
            data(size, 1),
            &attrs,
        )
        .await;
    }
    let mut specs = Vec::new();
    for key in ["small", "big"] {
        specs.push(TransferSpec {
            src: named("ga", "src", &format!("{p}{key}")),
            dst: named("gb", "dst", &format!("{p}{key}")),
        });
        specs.push(TransferSpec {
            src: named("ga", "src", &format!("{p}{key}")),
            dst: named("ga", "other", &format!("{p}{key}")),
        });
    }
    let s = Engine::new(connections(), opts(5))
        .run(specs)
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    for (store, bucket) in [(&gb, "dst"), (&ga, "other")] {
        for key in ["small", "big"] {
            let meta = store
                .head(&ObjectPath::new(bucket, format!("{p}{key}")))
                .await
                .expect("head");
            let mut got = meta.attrs.clone();
            // What barge records for `barge sync` on what it uploads in parts (a single
            // server-side copy keeps the source's metadata as it is).
            let recorded = got.user_metadata.remove("barge-part-size");
            got.user_metadata.remove("barge-source-crc32c");
            let want = (key == "big").then_some("5242880");
            assert_eq!(recorded.as_deref(), want, "{bucket}/{key}");
            // Stores may normalise the date's spelling; compare the rest exactly.
            assert!(got.expires.is_some(), "{bucket}/{key}: Expires kept");
            got.expires = attrs.expires.clone();
            assert_eq!(got, attrs, "{bucket}/{key}: metadata kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_copy_with_filters() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("tree");
    for (i, key) in ["a.csv", "b.json", "sub/c.csv", "tmp/d.csv"]
        .iter()
        .enumerate()
    {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}{key}"),
            data(100 + i, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let src = named("ga", "src", p.trim_end_matches('/'));
    let dst = named("gb", "dst", &format!("{p}copy"));
    let filters = Filters::new(&["**.csv".into()], &["tmp/**".into()]).expect("globs");
    let specs = expand_prefix(&src, &dst, ga.as_ref(), &filters)
        .await
        .expect("list");
    let mut keys: Vec<String> = specs.iter().map(|s| s.dst.path.key.clone()).collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![format!("{p}copy/a.csv"), format!("{p}copy/sub/c.csv")]
    );
    let s = Engine::new(connections(), opts(5))
        .run(specs)
        .await
        .expect("run");
    assert!(s.success(), "{s:#?}");
    let listed = gb
        .list("dst", &format!("{p}copy/"))
        .await
        .expect("list dst");
    assert_eq!(listed.objects.len(), 2);
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}copy/sub/c.csv")).await),
        sha256(&data(102, 2))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_source_deletes_exactly_one_key() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("move");
    for key in ["file", "file2", "file/child"] {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}{key}"),
            data(7 * MIB, 3),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let specs = vec![TransferSpec {
        src: named("ga", "src", &format!("{p}file")),
        dst: named("gb", "dst", &format!("{p}file")),
    }];
    let mut o = opts(5);
    o.delete_source = true;
    let s = Engine::new(connections(), o).run(specs).await.expect("run");
    assert!(s.success(), "{s:#?}");
    assert!(s.files[0].source_deleted);
    assert!(matches!(
        ga.head(&ObjectPath::new("src", format!("{p}file"))).await,
        Err(StoreError::NotFound { .. })
    ));
    for sibling in ["file2", "file/child"] {
        assert!(
            ga.head(&ObjectPath::new("src", format!("{p}{sibling}")))
                .await
                .is_ok(),
            "{sibling} shares the prefix and must survive"
        );
    }
    assert_eq!(
        sha256(&read(gb.as_ref(), "dst", &format!("{p}file")).await),
        sha256(&data(7 * MIB, 3))
    );
}

/// Overwrites a source object when the first part of file 0 is done.
struct Saboteur {
    store: Arc<dyn Store>,
    path: ObjectPath,
    done: std::sync::atomic::AtomicBool,
}

impl Observer for Saboteur {
    fn progress(&self, file: usize, _bytes: u64) {
        if file != 0 || self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (store, path) = (self.store.clone(), self.path.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                store
                    .put(&path, data(30 * MIB, 99), &ObjectAttrs::default(), None)
                    .await
                    .expect("overwrite source");
            })
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn source_changed_mid_transfer_fails_that_file_only() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("changed");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}moving"),
        data(30 * MIB, 1),
        &ObjectAttrs::default(),
    )
    .await;
    put(
        ga.as_ref(),
        "src",
        &format!("{p}steady"),
        data(6 * MIB, 2),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![
        TransferSpec {
            src: named("ga", "src", &format!("{p}moving")),
            dst: named("gb", "dst", &format!("{p}moving")),
        },
        TransferSpec {
            src: named("ga", "src", &format!("{p}steady")),
            dst: named("gb", "dst", &format!("{p}steady")),
        },
    ];
    let mut o = opts(5);
    o.concurrency = 1;
    o.delete_source = true;
    let saboteur = Arc::new(Saboteur {
        store: ga.clone(),
        path: ObjectPath::new("src", format!("{p}moving")),
        done: false.into(),
    });
    let s = Engine::new(connections(), o)
        .with_observer(saboteur)
        .run(specs)
        .await
        .expect("run");
    assert_eq!(s.files[0].status, Status::Failed);
    let err = s.files[0].error.as_deref().unwrap_or_default();
    assert!(
        err.contains(&format!("{p}moving"))
            && err.contains("changed since the transfer planned it"),
        "{err}"
    );
    assert!(!s.files[0].source_deleted);
    assert_eq!(s.files[1].status, Status::Ok, "the other file completes");
    assert!(
        matches!(
            gb.head(&ObjectPath::new("dst", format!("{p}moving"))).await,
            Err(StoreError::NotFound { .. })
        ),
        "no spliced destination"
    );
    // The changed source was not deleted.
    assert!(
        ga.head(&ObjectPath::new("src", format!("{p}moving")))
            .await
            .is_ok()
    );
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_of_many_files() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("manifest");
    let mut entries = Vec::new();
    for i in 0..40 {
        let size = if i % 10 == 0 { 6 * MIB } else { 1000 + i };
        put(
            ga.as_ref(),
            "src",
            &format!("{p}in/{i}"),
            data(size, i as u64),
            &ObjectAttrs::default(),
        )
        .await;
        entries.push(serde_json::json!({
            "src_conn_id": "ga", "src_bucket": "src", "src_key": format!("{p}in/{i}"),
            "dest_conn_id": "gb", "dest_bucket": "dst", "dest_key": format!("{p}out/{i}"),
        }));
    }
    let text = serde_json::to_string(&entries).expect("json");
    let conns = connections();
    let specs = barge_engine::input::parse_manifest(
        &text,
        barge_engine::input::ManifestFormat::Json,
        "m.json",
        &conns,
    )
    .expect("manifest");
    let s = Engine::new(conns, opts(5)).run(specs).await.expect("run");
    assert!(s.success(), "{s:#?}");
    assert_eq!(s.files_ok, 40);
    for i in 0..40 {
        let size = if i % 10 == 0 { 6 * MIB } else { 1000 + i };
        assert_eq!(
            sha256(&read(gb.as_ref(), "dst", &format!("{p}out/{i}")).await),
            sha256(&data(size, i as u64))
        );
    }
    assert_no_uploads(gb.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_aborts_stale_uploads() {
    let ga = store("ga").await;
    let p = prefix("cleanup");
    let up = ga
        .create_upload(
            &ObjectPath::new("dst", format!("{p}abandoned")),
            &ObjectAttrs::default(),
            barge_store::ChecksumMode::Crc32c,
        )
        .await
        .expect("create");
    let found = barge_engine::run::cleanup(ga.as_ref(), "dst", &p, std::time::Duration::ZERO, true)
        .await
        .expect("dry run");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].upload.upload_id, up.upload_id);
    assert_eq!(
        ga.list_uploads("dst", &p).await.expect("list").len(),
        1,
        "dry run aborts nothing"
    );
    let young = barge_engine::run::cleanup(
        ga.as_ref(),
        "dst",
        &p,
        std::time::Duration::from_secs(3600),
        false,
    )
    .await
    .expect("young");
    assert!(
        young.is_empty(),
        "uploads younger than --older-than are kept"
    );
    barge_engine::run::cleanup(ga.as_ref(), "dst", &p, std::time::Duration::ZERO, false)
        .await
        .expect("cleanup");
    assert_no_uploads(ga.as_ref(), "dst", &p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_source_fails_that_file_with_its_name() {
    let ga = store("ga").await;
    let p = prefix("missing");
    put(
        ga.as_ref(),
        "src",
        &format!("{p}here"),
        data(10, 1),
        &ObjectAttrs::default(),
    )
    .await;
    let specs = vec![
        TransferSpec {
            src: named("ga", "src", &format!("{p}not-here")),
            dst: named("gb", "dst", &format!("{p}a")),
        },
        TransferSpec {
            src: named("ga", "src", &format!("{p}here")),
            dst: named("gb", "nope-bucket", &format!("{p}b")),
        },
    ];
    let s = Engine::new(connections(), opts(5))
        .run(specs)
        .await
        .expect("run");
    assert!(!s.success());
    let e0 = s.files[0].error.as_deref().unwrap_or_default();
    assert!(
        e0.contains("ga:") && e0.contains(&format!("{p}not-here")) && e0.contains("does not exist"),
        "{e0}"
    );
    let e1 = s.files[1].error.as_deref().unwrap_or_default();
    assert!(
        e1.contains("gb:") && e1.contains("bucket 'nope-bucket' does not exist"),
        "{e1}"
    );
    // The source of the failed file is untouched.
    assert!(
        ga.head(&ObjectPath::new("src", format!("{p}here")))
            .await
            .is_ok()
    );
    let _ = Location::local("/");
}

#[tokio::test(flavor = "multi_thread")]
async fn listed_small_objects_keep_metadata_without_a_stat_each() {
    let (ga, gb) = (store("ga").await, store("gb").await);
    let p = prefix("listed");
    let mut attrs = ObjectAttrs {
        content_type: Some("text/csv".into()),
        cache_control: Some("no-cache".into()),
        ..Default::default()
    };
    attrs
        .user_metadata
        .insert("source".into(), "listing".into());
    for i in 0..5 {
        put(
            ga.as_ref(),
            "src",
            &format!("{p}in/{i}.csv"),
            data(1000 * i, i as u64),
            &attrs,
        )
        .await;
    }
    // A prefix copy as `barge cp -r` makes it: the source's listing planned without a stat.
    let src = named("ga", "src", &format!("{p}in"));
    let copy_listed = async |dst: Location| {
        let listing =
            barge_engine::input::list_prefix(&src, &dst, ga.as_ref(), &Filters::default())
                .await
                .expect("list");
        let specs: Vec<TransferSpec> = listing.files.iter().map(|(s, _)| s.clone()).collect();
        let s = Engine::new(connections(), opts(5))
            .with_listing(listing.files)
            .run(specs)
            .await
            .expect("run");
        assert!(s.success(), "{s:#?}");
        s
    };
    copy_listed(named("gb", "dst", &format!("{p}out"))).await;
    for i in 0..5 {
        let key = format!("{p}out/{i}.csv");
        let meta = gb
            .head(&ObjectPath::new("dst", key.clone()))
            .await
            .expect("head");
        assert_eq!(meta.attrs.content_type, attrs.content_type, "{key}");
        assert_eq!(meta.attrs.user_metadata, attrs.user_metadata, "{key}");
        assert_eq!(
            sha256(&read(gb.as_ref(), "dst", &key).await),
            sha256(&data(1000 * i, i as u64))
        );
    }

    // Within one endpoint: server-side copies straight from the listing, the store keeping the
    // source's metadata itself (no stat), each verified by the copy's ETag (no stat either).
    let s = copy_listed(named("ga", "other", &format!("{p}out"))).await;
    assert_eq!(s.bytes_through_client, 0, "{s:#?}");
    for f in &s.files {
        assert_eq!(f.strategy, Some(Strategy::ServerCopy), "{f:?}");
        assert_eq!(f.verified, Verification::SourceEtag, "{f:?}");
    }
    for i in 0..5 {
        let key = format!("{p}out/{i}.csv");
        let meta = ga
            .head(&ObjectPath::new("other", key.clone()))
            .await
            .expect("head");
        assert_eq!(meta.attrs, attrs, "{key}: metadata kept");
        assert_eq!(
            sha256(&read(ga.as_ref(), "other", &key).await),
            sha256(&data(1000 * i, i as u64))
        );
    }
}
