//! The conformance suite against fake-gcs-server (started by scripts/testbed.sh), and what a
//! composite upload must leave behind: nothing.

use barge_store::gcs::{GcsConfig, GcsCredentials, GcsStore, UPLOADS, create_bucket};
use barge_store::{Store, conformance};

fn endpoint() -> String {
    std::env::var("BARGE_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!("BARGE_TEST_GCS_ENDPOINT is not set: run the tests with scripts/test.sh, which starts fake-gcs-server")
    })
}

/// A store on the emulator and a bucket of its own, so that tests never share one.
pub async fn gcs(tag: &str) -> (GcsStore, String) {
    let mut cfg = GcsConfig::from_env("gcs");
    cfg.endpoint = endpoint();
    cfg.credentials = GcsCredentials::Anonymous;
    let store = GcsStore::connect(cfg)
        .await
        .expect("connect to fake-gcs-server");
    let bucket = format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&store, &bucket).await.expect("create bucket");
    (store, bucket)
}

#[tokio::test]
async fn gcs_store_conforms() {
    let (store, bucket) = gcs("conf").await;
    conformance::run_all(&store, &bucket, "suite/").await;
    let left = store.list_uploads(&bucket, "").await.expect("list uploads");
    assert!(left.is_empty(), "temporary parts left: {left:?}");
    let listing = store.list(&bucket, "").await.expect("list");
    assert!(
        listing
            .objects
            .iter()
            .all(|o| !o.path.key.starts_with(UPLOADS)),
        "a listing shows no temporary part"
    );
}

/// More parts than one compose call takes: composed in rounds, every temporary deleted, the
/// object's CRC32C that of the bytes.
#[tokio::test]
async fn seventy_parts_compose_in_rounds() {
    use barge_store::checksum::{crc32c, crc32c_b64};
    use barge_store::{ChecksumMode, ObjectAttrs, ObjectPath, PartSpec, Pin};
    let (store, bucket) = gcs("rounds").await;
    let path = ObjectPath::new(bucket.clone(), "many/parts.bin");
    let attrs = ObjectAttrs {
        content_type: Some("application/x-barge".into()),
        user_metadata: [("origin".to_string(), "test".to_string())].into(),
        ..Default::default()
    };
    let up = store
        .create_upload(&path, &attrs, ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let body: Vec<u8> = (0..70 * 1000u32).map(|i| (i % 251) as u8).collect();
    let mut receipts = Vec::new();
    for n in 0..70u32 {
        let off = u64::from(n) * 1000;
        let chunk = bytes::Bytes::copy_from_slice(&body[off as usize..off as usize + 1000]);
        let spec = PartSpec {
            number: n + 1,
            offset: off,
            len: 1000,
        };
        let crc = crc32c(&chunk);
        receipts.push(
            store
                .upload_part(&up, &spec, chunk, Some(crc))
                .await
                .expect("part"),
        );
    }
    let r = store
        .complete_upload(&up, &receipts)
        .await
        .expect("compose");
    assert_eq!(
        r.crc32c.as_deref(),
        Some(crc32c_b64(crc32c(&body)).as_str())
    );
    let meta = store.head(&path).await.expect("head");
    assert_eq!(meta.attrs.content_type, attrs.content_type);
    assert_eq!(meta.attrs.user_metadata, attrs.user_metadata);
    let got = store
        .get_range(&path, &Pin::of(&meta), 0, meta.size)
        .await
        .expect("read");
    assert!(
        got[..] == body[..],
        "the composed object is the parts in order"
    );
    let left = store.list_uploads(&bucket, "").await.expect("list uploads");
    assert!(left.is_empty(), "temporaries left: {left:?}");
    let all = store.list(&bucket, "").await.expect("list");
    assert_eq!(all.objects.len(), 1, "only the object: {:?}", all.objects);
    assert!(all.skipped.is_empty(), "no temporary: {:?}", all.skipped);
}
