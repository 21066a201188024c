//! Uploads that GCS and Azure keep as objects beside the destination, under `.barge-uploads/` at
//! the bucket's root: an opener holding the destination's attributes (set only when the upload
//! completes, so any worker holding the journal's upload id can complete it), and on GCS the
//! parts themselves. Listings pass over them; `list_uploads` finds them for `barge cleanup`.

use bytes::Bytes;

use crate::{ObjectAttrs, ObjectPath, Pin, Result, SkippedEntry, Store, StoreError, UploadRef};

/// The folder (at the bucket's root) holding what unfinished uploads keep as objects.
pub const UPLOADS: &str = ".barge-uploads/";

/// A listed object under `.barge-uploads/`: passed over, and said why.
pub(crate) fn passed_over(bucket: &str, name: &str) -> Option<SkippedEntry> {
    name.starts_with(UPLOADS).then(|| SkippedEntry {
        path: format!("{bucket}/{name}"),
        reason: "part of an unfinished barge upload (barge cleanup removes it)".into(),
    })
}

/// Open an upload of `path`: a new upload id, and its opener (at the path `opener` gives it)
/// holding the attributes as JSON.
pub(crate) async fn open(
    store: &dyn Store,
    path: &ObjectPath,
    attrs: &ObjectAttrs,
    opener: fn(&UploadRef) -> ObjectPath,
) -> Result<UploadRef> {
    let up = UploadRef {
        path: path.clone(),
        upload_id: uuid::Uuid::new_v4().simple().to_string(),
    };
    let body = Bytes::from(serde_json::to_vec(attrs).unwrap_or_default());
    let crc = crate::checksum::crc32c(&body);
    let json = ObjectAttrs {
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    store.put(&opener(&up), body, &json, Some(crc)).await?;
    Ok(up)
}

/// The attributes the opener at `at` holds. No opener: the upload is gone (completed, aborted).
pub(crate) async fn read_opener(
    store: &dyn Store,
    at: &ObjectPath,
    up: &UploadRef,
) -> Result<ObjectAttrs> {
    match store.get(at, &Pin::default()).await {
        Ok((_, body)) => Ok(serde_json::from_slice(&body).unwrap_or_default()),
        Err(StoreError::NotFound { .. }) => Err(StoreError::NoSuchUpload {
            store: store.name().to_string(),
            path: up.path.to_string(),
            upload_id: up.upload_id.clone(),
        }),
        Err(e) => Err(e),
    }
}
