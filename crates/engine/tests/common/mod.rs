//! What the engine's test files share: the memory store's limits for small parts, locations.
#![allow(dead_code)]

use barge_engine::location::{ConnRef, Location};
use barge_store::{Capabilities, ObjectPath};

/// S3's limits, with parts down to 1 KiB so that small test objects go multipart.
pub fn caps() -> Capabilities {
    Capabilities {
        min_part_size: 1024,
        ..Capabilities::s3()
    }
}

/// `conn:bucket/key`.
pub fn loc(conn: &str, bucket: &str, key: &str) -> Location {
    Location {
        conn: ConnRef::Named(conn.into()),
        path: ObjectPath::new(bucket, key),
    }
}
