//! One behaviour suite that every backend must pass.
//!
//! Each backend's tests call [`run_all`] with a bucket and a fresh prefix (ending in `/`). The
//! suite panics with a message naming the broken promise: it is test code.

use bytes::Bytes;

use crate::checksum::crc32c;
use crate::{ChecksumMode, ObjectAttrs, ObjectPath, PartSpec, Pin, Store, StoreError};

fn data(len: usize, seed: u8) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push((x >> 24) as u8);
    }
    Bytes::from(v)
}

async fn read_all(store: &dyn Store, path: &ObjectPath) -> Bytes {
    let meta = store.head(path).await.expect("head after write");
    store
        .get_range(path, &Pin::of(&meta), 0, meta.size)
        .await
        .expect("read back")
}

/// Run every check against `store`.
pub async fn run_all(store: &dyn Store, bucket: &str, prefix: &str) {
    put_head_get(store, bucket, prefix).await;
    odd_keys(store, bucket, prefix).await;
    missing_object(store, bucket, prefix).await;
    pinned_reads(store, bucket, prefix).await;
    multipart_round_trip(store, bucket, prefix).await;
    abort_leaves_nothing(store, bucket, prefix).await;
    wrong_checksum_rejected(store, bucket, prefix).await;
    server_side_part_copy(store, bucket, prefix).await;
    delete_is_exact(store, bucket, prefix).await;
    pinned_delete_spares_a_rewrite(store, bucket, prefix).await;
    control_characters_list(store, bucket, prefix).await;
}

/// `delete_pinned` deletes the object it was pinned to, never one that replaced it.
pub async fn pinned_delete_spares_a_rewrite(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}pinned-delete.bin"));
    let first = data(1500, 41);
    store
        .put(
            &path,
            first.clone(),
            &ObjectAttrs::default(),
            Some(crc32c(&first)),
        )
        .await
        .expect("put first");
    let old = Pin::of(&store.head(&path).await.expect("head first"));
    // Another size, so that even a store whose version tag is its size and time tells them
    // apart within one clock tick.
    let second = data(2500, 42);
    store
        .put(
            &path,
            second.clone(),
            &ObjectAttrs::default(),
            Some(crc32c(&second)),
        )
        .await
        .expect("put second");
    if old.version_id.is_none() {
        let e = store
            .delete_pinned(&path, &old)
            .await
            .expect_err("the pinned object was replaced");
        assert!(matches!(e, StoreError::SourceChanged { .. }), "{e}");
        assert_eq!(read_all(store, &path).await, second, "the rewrite is kept");
    }
    let now = Pin::of(&store.head(&path).await.expect("head second"));
    store
        .delete_pinned(&path, &now)
        .await
        .expect("delete pinned");
    assert!(
        matches!(store.head(&path).await, Err(StoreError::NotFound { .. })),
        "the pinned object is gone"
    );
}

/// Keys holding control characters (which XML 1.0 cannot carry raw) come back whole from a
/// listing, and do not break the listing of the others.
pub async fn control_characters_list(store: &dyn Store, bucket: &str, prefix: &str) {
    let dir = format!("{prefix}ctl/");
    let names = [
        "a\u{1}b.bin",
        "line\nbreak.bin",
        "tab\there.bin",
        "plain.bin",
    ];
    for (i, name) in names.iter().enumerate() {
        let body = data(100 + i, 50 + i as u8);
        store
            .put(
                &ObjectPath::new(bucket, format!("{dir}{name}")),
                body.clone(),
                &ObjectAttrs::default(),
                Some(crc32c(&body)),
            )
            .await
            .unwrap_or_else(|e| panic!("put {name:?}: {e}"));
    }
    let listed = store.list(bucket, &dir).await.expect("list");
    let mut keys: Vec<String> = listed.objects.into_iter().map(|m| m.path.key).collect();
    keys.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("{dir}{n}")).collect();
    want.sort();
    assert_eq!(keys, want, "listed under exactly the keys written");
}

pub async fn put_head_get(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}small.bin"));
    let body = data(1000, 1);
    let mut attrs = ObjectAttrs {
        content_type: Some("application/x-barge-test".into()),
        cache_control: Some("max-age=60".into()),
        ..Default::default()
    };
    attrs
        .user_metadata
        .insert("origin".into(), "conformance".into());
    store
        .put(&path, body.clone(), &attrs, Some(crc32c(&body)))
        .await
        .expect("put");
    let meta = store.head(&path).await.expect("head");
    assert_eq!(meta.size, 1000, "head reports the size written");
    if store.capabilities().metadata {
        assert_eq!(
            meta.attrs.content_type, attrs.content_type,
            "content type kept"
        );
        assert_eq!(
            meta.attrs.cache_control, attrs.cache_control,
            "cache control kept"
        );
        assert_eq!(
            meta.attrs.user_metadata, attrs.user_metadata,
            "user metadata kept"
        );
    }
    let (got_meta, whole) = store.get(&path, &Pin::of(&meta)).await.expect("get");
    assert_eq!(whole, body, "get returns the whole object");
    assert_eq!(got_meta.size, 1000);
    if store.capabilities().metadata {
        assert_eq!(
            got_meta.attrs.content_type, attrs.content_type,
            "get brings the metadata"
        );
        assert_eq!(
            got_meta.attrs.user_metadata, attrs.user_metadata,
            "get brings user metadata"
        );
    }
    let mut streamed = Vec::new();
    let mut chunks = store
        .get_range_stream(&path, &Pin::of(&meta), 10, 900)
        .await
        .expect("ranged stream");
    while let Some(c) = futures::StreamExt::next(&mut chunks).await {
        streamed.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(
        streamed,
        body.slice(10..910),
        "a ranged stream returns exactly the range"
    );
    let part = store
        .get_range(&path, &Pin::of(&meta), 100, 50)
        .await
        .expect("ranged read");
    assert_eq!(
        part,
        body.slice(100..150),
        "ranged read returns exactly the range"
    );
    // Into a reused buffer that holds other bytes: the range and its CRC32C.
    let reused = bytes::BytesMut::from(&data(2000, 9)[..]);
    let (part, crc) = store
        .get_range_into(&path, &Pin::of(&meta), 10, 900, reused)
        .await
        .expect("ranged read into a buffer");
    assert_eq!(
        part,
        body.slice(10..910),
        "a ranged read into a reused buffer returns exactly the range"
    );
    assert_eq!(
        crc,
        crc32c(&body[10..910]),
        "a ranged read returns the CRC32C of the range"
    );
    // Zero-byte objects exist too.
    let empty = ObjectPath::new(bucket, format!("{prefix}empty.bin"));
    store
        .put(
            &empty,
            Bytes::new(),
            &ObjectAttrs::default(),
            Some(crc32c(&[])),
        )
        .await
        .expect("put empty");
    assert_eq!(store.head(&empty).await.expect("head empty").size, 0);
    let listed = store.list(bucket, prefix).await.expect("list");
    let keys: Vec<&str> = listed.objects.iter().map(|m| m.path.key.as_str()).collect();
    assert!(
        keys.contains(&path.key.as_str()),
        "list shows {}: {keys:?}",
        path.key
    );
    assert!(
        keys.contains(&empty.key.as_str()),
        "list shows the empty object: {keys:?}"
    );
}

/// Keys with spaces, non-ASCII letters and the characters URLs and signatures treat specially
/// go in and come back byte for byte, under the key they were written to.
pub async fn odd_keys(store: &dyn Store, bucket: &str, prefix: &str) {
    for (i, name) in [
        "sp ace/plus+percent%41 ü é.bin",
        "q?h#amp&eq=semi;comma,.bin",
        "bang!dollar$quote'paren()star*at@tilde~.bin",
    ]
    .into_iter()
    .enumerate()
    {
        let path = ObjectPath::new(bucket, format!("{prefix}odd/{name}"));
        let body = data(3000 + i, 20 + i as u8);
        store
            .put(
                &path,
                body.clone(),
                &ObjectAttrs::default(),
                Some(crc32c(&body)),
            )
            .await
            .unwrap_or_else(|e| panic!("put {name:?}: {e}"));
        let meta = store
            .head(&path)
            .await
            .unwrap_or_else(|e| panic!("head {name:?}: {e}"));
        let (got, bytes) = store
            .get(&path, &Pin::of(&meta))
            .await
            .unwrap_or_else(|e| panic!("get {name:?}: {e}"));
        assert_eq!(bytes, body, "{name:?} comes back as written");
        assert_eq!(got.size, body.len() as u64, "{name:?}");
    }
    let listed = store
        .list(bucket, &format!("{prefix}odd/"))
        .await
        .expect("list");
    let mut keys: Vec<String> = listed.objects.into_iter().map(|m| m.path.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}odd/bang!dollar$quote'paren()star*at@tilde~.bin"),
            format!("{prefix}odd/q?h#amp&eq=semi;comma,.bin"),
            format!("{prefix}odd/sp ace/plus+percent%41 ü é.bin"),
        ],
        "stored under exactly the keys written"
    );
}

pub async fn missing_object(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}does-not-exist"));
    match store.head(&path).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("head of a missing key must be NotFound, got {other:?}"),
    }
    match store.get(&path, &Pin::default()).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!(
            "get of a missing key must be NotFound, got {:?}",
            other.map(|(m, _)| m)
        ),
    }
}

pub async fn pinned_reads(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}pinned.bin"));
    let v1 = data(4096, 2);
    store
        .put(&path, v1, &ObjectAttrs::default(), None)
        .await
        .expect("put v1");
    let pin = Pin::of(&store.head(&path).await.expect("head v1"));
    // Some stores keep a one-second time resolution for version tags.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store
        .put(&path, data(4096, 3), &ObjectAttrs::default(), None)
        .await
        .expect("put v2");
    match store.get_range(&path, &pin, 0, 10).await {
        Err(StoreError::SourceChanged { .. }) => {}
        other => panic!("a read pinned to an old version must fail SourceChanged, got {other:?}"),
    }
    match store.get(&path, &pin).await {
        Err(StoreError::SourceChanged { .. }) => {}
        other => panic!(
            "a get pinned to an old version must fail SourceChanged, got {:?}",
            other.map(|(m, _)| m)
        ),
    }
}

/// `data` as a stream of `n`-byte chunks, as a download hands them to a store.
pub fn in_pieces(data: &Bytes, n: usize) -> crate::ByteChunks {
    let pieces: Vec<crate::Result<Bytes>> = (0..data.len())
        .step_by(n.max(1))
        .map(|i| Ok(data.slice(i..(i + n).min(data.len()))))
        .collect();
    Box::pin(futures::stream::iter(pieces))
}

fn part_size(store: &dyn Store) -> u64 {
    store.capabilities().min_part_size.max(1024)
}

pub async fn multipart_round_trip(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}multi.bin"));
    let ps = part_size(store);
    let body = data((2 * ps + 17) as usize, 4);
    let up = store
        .create_upload(&path, &ObjectAttrs::default(), ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let mut receipts = Vec::new();
    // Upload out of order: parts are placed by number, not by arrival.
    for (n, off) in [(3u32, 2 * ps), (1, 0), (2, ps)] {
        let len = (body.len() as u64 - off).min(ps);
        let chunk = body.slice(off as usize..(off + len) as usize);
        let spec = PartSpec {
            number: n,
            offset: off,
            len,
        };
        let r = if n == 2 {
            // One part from a stream of small chunks, as downloads write them.
            let r = store
                .upload_part_stream(&up, &spec, in_pieces(&chunk, 7000))
                .await
                .expect("upload part from a stream");
            assert_eq!(
                r.crc32c
                    .as_deref()
                    .and_then(crate::checksum::crc32c_from_b64),
                Some(crc32c(&chunk)),
                "a streamed part's receipt carries the CRC32C of its bytes"
            );
            r
        } else {
            store
                .upload_part(&up, &spec, chunk.clone(), Some(crc32c(&chunk)))
                .await
                .expect("upload part")
        };
        assert_eq!(r.number, n);
        receipts.push(r);
    }
    receipts.sort_by_key(|r| r.number);
    let listed = store.list_parts(&up).await.expect("list parts");
    if !listed.is_empty() {
        let nums: Vec<u32> = listed.iter().map(|p| p.number).collect();
        assert_eq!(nums, vec![1, 2, 3], "list_parts shows every uploaded part");
    }
    let pending = store
        .list_uploads(bucket, prefix)
        .await
        .expect("list uploads");
    assert!(
        pending.iter().any(|p| p.upload.upload_id == up.upload_id),
        "an open upload is listed"
    );
    store
        .complete_upload(&up, &receipts)
        .await
        .expect("complete");
    assert_eq!(
        read_all(store, &path).await,
        body,
        "assembled object is the parts in order"
    );
    // A long range from an odd offset to the end, as chunks: what a download's part reads.
    let meta = store.head(&path).await.expect("head");
    let from = ps - 1000;
    let mut chunks = store
        .get_range_stream(&path, &Pin::of(&meta), from, meta.size - from)
        .await
        .expect("ranged stream");
    let mut streamed = Vec::new();
    while let Some(c) = futures::StreamExt::next(&mut chunks).await {
        streamed.extend_from_slice(&c.expect("chunk"));
    }
    assert!(
        streamed[..] == body[from as usize..],
        "a long ranged stream returns exactly the range"
    );
    let pending = store
        .list_uploads(bucket, prefix)
        .await
        .expect("list uploads");
    assert!(
        !pending.iter().any(|p| p.upload.upload_id == up.upload_id),
        "a completed upload is no longer listed"
    );
}

pub async fn abort_leaves_nothing(store: &dyn Store, bucket: &str, prefix: &str) {
    let path = ObjectPath::new(bucket, format!("{prefix}aborted.bin"));
    let up = store
        .create_upload(&path, &ObjectAttrs::default(), ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let chunk = data(1024, 5);
    store
        .upload_part(
            &up,
            &PartSpec {
                number: 1,
                offset: 0,
                len: 1024,
            },
            chunk.clone(),
            Some(crc32c(&chunk)),
        )
        .await
        .expect("upload part");
    store.abort_upload(&up).await.expect("abort");
    store.abort_upload(&up).await.expect("abort twice is fine");
    let pending = store
        .list_uploads(bucket, prefix)
        .await
        .expect("list uploads");
    assert!(
        !pending.iter().any(|p| p.upload.upload_id == up.upload_id),
        "an aborted upload is gone"
    );
    assert!(
        matches!(store.head(&path).await, Err(StoreError::NotFound { .. })),
        "an aborted upload leaves no object"
    );
}

pub async fn wrong_checksum_rejected(store: &dyn Store, bucket: &str, prefix: &str) {
    if !store.capabilities().part_checksums {
        return;
    }
    let path = ObjectPath::new(bucket, format!("{prefix}badsum.bin"));
    let up = store
        .create_upload(&path, &ObjectAttrs::default(), ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let chunk = data(2048, 6);
    let res = store
        .upload_part(
            &up,
            &PartSpec {
                number: 1,
                offset: 0,
                len: 2048,
            },
            chunk.clone(),
            Some(crc32c(&chunk) ^ 1),
        )
        .await;
    store.abort_upload(&up).await.expect("abort");
    assert!(
        res.is_err(),
        "a part whose CRC32C does not match is rejected"
    );
    // A whole object too, and nothing is left under its key.
    let whole = ObjectPath::new(bucket, format!("{prefix}badsum-whole.bin"));
    let res = store
        .put(
            &whole,
            chunk.clone(),
            &ObjectAttrs::default(),
            Some(crc32c(&chunk) ^ 1),
        )
        .await;
    assert!(
        !matches!(
            res,
            Ok(_) | Err(StoreError::Transient { .. }) | Err(StoreError::Throttled { .. })
        ),
        "an object whose CRC32C does not match is refused for good, got {res:?}"
    );
    match store.head(&whole).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("a refused object must not exist, got {other:?}"),
    }
}

pub async fn server_side_part_copy(store: &dyn Store, bucket: &str, prefix: &str) {
    if !store.capabilities().server_side_copy {
        return;
    }
    let src = ObjectPath::new(bucket, format!("{prefix}copy-src.bin"));
    let ps = part_size(store);
    let body = data((ps + 100) as usize, 7);
    store
        .put(&src, body.clone(), &ObjectAttrs::default(), None)
        .await
        .expect("put source");
    let pin = Pin::of(&store.head(&src).await.expect("head source"));
    let stale = Pin {
        etag: Some("\"0000000000\"".into()),
        version_id: None,
    };
    if store.capabilities().copies_parts {
        part_copies(store, bucket, prefix, &src, &pin, &body, &stale).await;
    }
    let whole = ObjectPath::new(bucket, format!("{prefix}copy-whole.bin"));
    let attrs = ObjectAttrs {
        content_type: Some("text/x-copied".into()),
        ..Default::default()
    };
    store
        .copy_object(&src, &pin, &whole, Some(&attrs))
        .await
        .expect("copy object");
    let meta = store.head(&whole).await.expect("head copy");
    assert_eq!(
        meta.attrs.content_type, attrs.content_type,
        "copy sets the given attributes"
    );
    assert_eq!(read_all(store, &whole).await, body);
    // Without attributes, the copy keeps the source's.
    let kept = ObjectPath::new(bucket, format!("{prefix}copy-kept.bin"));
    store
        .copy_object(&whole, &Pin::of(&meta), &kept, None)
        .await
        .expect("copy object keeping attributes");
    let kept_meta = store.head(&kept).await.expect("head copy");
    assert_eq!(
        kept_meta.attrs, meta.attrs,
        "copy keeps the source's attributes"
    );
    assert_eq!(read_all(store, &kept).await, body);
    let res = store.copy_object(&src, &stale, &kept, None).await;
    assert!(
        matches!(res, Err(StoreError::SourceChanged { .. })),
        "a copy pinned to another version fails SourceChanged, got {res:?}"
    );
}

/// Server-side copies of byte ranges into an upload (S3's UploadPartCopy).
async fn part_copies(
    store: &dyn Store,
    bucket: &str,
    prefix: &str,
    src: &ObjectPath,
    pin: &Pin,
    body: &Bytes,
    stale: &Pin,
) {
    let ps = part_size(store);
    let dst = ObjectPath::new(bucket, format!("{prefix}copy-dst.bin"));
    let up = store
        .create_upload(&dst, &ObjectAttrs::default(), ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let mut receipts = Vec::new();
    for (n, off, len) in [(1u32, 0, ps), (2, ps, 100)] {
        let spec = PartSpec {
            number: n,
            offset: off,
            len,
        };
        receipts.push(
            store
                .copy_part(&up, &spec, src, pin)
                .await
                .expect("copy part"),
        );
    }
    store
        .complete_upload(&up, &receipts)
        .await
        .expect("complete copy");
    assert_eq!(
        read_all(store, &dst).await,
        *body,
        "server-side copy is byte-identical"
    );
    let up = store
        .create_upload(&dst, &ObjectAttrs::default(), ChecksumMode::Crc32c)
        .await
        .expect("create upload");
    let res = store
        .copy_part(
            &up,
            &PartSpec {
                number: 1,
                offset: 0,
                len: 10,
            },
            src,
            stale,
        )
        .await;
    store.abort_upload(&up).await.expect("abort");
    assert!(
        matches!(res, Err(StoreError::SourceChanged { .. })),
        "a part copy pinned to another version fails SourceChanged, got {res:?}"
    );
}

pub async fn delete_is_exact(store: &dyn Store, bucket: &str, prefix: &str) {
    let a = ObjectPath::new(bucket, format!("{prefix}del/x"));
    let b = ObjectPath::new(bucket, format!("{prefix}del/xy"));
    for p in [&a, &b] {
        store
            .put(p, data(10, 8), &ObjectAttrs::default(), None)
            .await
            .expect("put");
    }
    store.delete(&a, None).await.expect("delete");
    assert!(matches!(
        store.head(&a).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(
        store.head(&b).await.is_ok(),
        "delete removes one exact key, not a prefix"
    );
}
