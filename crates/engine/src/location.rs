//! Where an object lives: a connection and a path. Parsed from the forms users type:
//! `s3://bucket/key`, `gs://bucket/key`, `az://container/blob` (each cloud's default
//! connection, from its standard environment), `NAME:bucket/key` (a named connection, like
//! rclone's `remote:path`), or a local path.

use std::fmt;

use barge_store::ObjectPath;
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// Which connection an object is reached through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConnRef {
    /// The local file system.
    Local,
    /// The default connection: the standard AWS environment and files.
    Default,
    /// A connection named in the config file.
    Named(String),
    /// Google Cloud Storage as its environment describes it (`gs://`).
    Gcs,
    /// Azure Blob Storage as its environment describes it (`az://`).
    Azure,
}

impl fmt::Display for ConnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnRef::Local => f.write_str("local"),
            ConnRef::Default => f.write_str("default"),
            ConnRef::Named(n) => f.write_str(n),
            ConnRef::Gcs => f.write_str("gs"),
            ConnRef::Azure => f.write_str("az"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    pub conn: ConnRef,
    pub path: ObjectPath,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.conn {
            ConnRef::Local => write!(f, "{}", self.path.key),
            ConnRef::Default => write!(f, "s3://{}/{}", self.path.bucket, self.path.key),
            ConnRef::Named(n) => write!(f, "{n}:{}/{}", self.path.bucket, self.path.key),
            ConnRef::Gcs => write!(f, "gs://{}/{}", self.path.bucket, self.path.key),
            ConnRef::Azure => write!(f, "az://{}/{}", self.path.bucket, self.path.key),
        }
    }
}

impl Location {
    pub fn is_local(&self) -> bool {
        self.conn == ConnRef::Local
    }

    /// Parse a location. `is_connection` says whether a `NAME:` prefix names a configured
    /// connection; an unknown name is an error rather than a silently local path.
    pub fn parse(s: &str, is_connection: &dyn Fn(&str) -> bool) -> Result<Self> {
        let bad = |why: &str| EngineError::Input(format!("'{s}': {why}"));
        if s.is_empty() {
            return Err(bad("empty location"));
        }
        for (scheme, conn, form) in [
            ("s3://", ConnRef::Default, "s3://BUCKET/KEY"),
            ("gs://", ConnRef::Gcs, "gs://BUCKET/KEY"),
            ("az://", ConnRef::Azure, "az://CONTAINER/BLOB"),
        ] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(bad(&format!("no bucket: write {form}")));
                }
                return Ok(Location {
                    conn,
                    path: ObjectPath::new(bucket, key),
                });
            }
        }
        if s.contains("://") {
            return Err(bad(
                "unknown scheme: use s3://BUCKET/KEY, gs://BUCKET/KEY, az://CONTAINER/BLOB, NAME:BUCKET/KEY for a configured connection, or a local path",
            ));
        }
        if !(s.starts_with('/') || s.starts_with('.'))
            && let Some((name, rest)) = s.split_once(':')
            && !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            if name == "local" {
                return Ok(Location::local(rest));
            }
            if !is_connection(name) {
                return Err(bad(&format!(
                    "no connection named '{name}' is configured (add [connections.{name}] to the config file, define the Airflow connection in {}, or write ./{s} for a local path)",
                    crate::connections::airflow::var_name(name)
                )));
            }
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad(&format!("no bucket: write {name}:BUCKET/KEY")));
            }
            return Ok(Location {
                conn: ConnRef::Named(name.to_string()),
                path: ObjectPath::new(bucket, key),
            });
        }
        Ok(Location::local(s))
    }

    /// A local path as typed: made absolute, `.` and repeated `/` dropped, `..` taken (see
    /// [`normalize_path`]), so that any such segment in a destination comes from a key.
    pub fn local(path: &str) -> Self {
        let abs = normalize_path(std::path::Path::new(path))
            .to_string_lossy()
            .into_owned();
        // Keep a trailing slash: it says "a folder".
        let abs = if path.ends_with('/') && !abs.ends_with('/') {
            format!("{abs}/")
        } else {
            abs
        };
        Location {
            conn: ConnRef::Local,
            path: ObjectPath::new("", abs),
        }
    }

    /// The same connection and bucket, another key.
    pub fn with_key(&self, key: String) -> Self {
        Location {
            conn: self.conn.clone(),
            path: ObjectPath::new(self.path.bucket.clone(), key),
        }
    }
}

/// `path` made absolute, with `.` and repeated `/` dropped and each `..` taken physically where
/// the folder before it exists (a symlinked folder's `..` is its target's parent, as the kernel
/// reads it), lexically where it does not. Other symlinks are kept as spelled.
pub fn normalize_path(path: &std::path::Path) -> std::path::PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = std::path::PathBuf::new();
    for c in abs.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Location> {
        Location::parse(s, &|n| n == "wasabi")
    }

    #[test]
    fn forms() {
        let l = parse("s3://b/k/x.bin").expect("s3 url");
        assert_eq!(l.conn, ConnRef::Default);
        assert_eq!(l.path, ObjectPath::new("b", "k/x.bin"));
        let l = parse("wasabi:b/k").expect("named");
        assert_eq!(l.conn, ConnRef::Named("wasabi".into()));
        assert_eq!(l.path, ObjectPath::new("b", "k"));
        let l = parse("/tmp/x").expect("local");
        assert!(l.is_local());
        assert_eq!(l.path.key, "/tmp/x");
        assert!(parse("./a:b").expect("dotted local").is_local());
        assert_eq!(parse("//tmp/./x//y").expect("local").path.key, "/tmp/x/y");
        assert_eq!(
            parse("/a-missing-dir/b/../c").expect("local").path.key,
            "/a-missing-dir/c"
        );
        assert_eq!(parse("/tmp/d/").expect("folder").path.key, "/tmp/d/");
        assert_eq!(parse("s3://b").expect("bucket only").path.key, "");
        let l = parse("gs://b/k/x").expect("gcs url");
        assert_eq!((l.conn, l.path.key.as_str()), (ConnRef::Gcs, "k/x"));
        let l = parse("az://c/d/y").expect("azure url");
        assert_eq!((l.conn, l.path.bucket.as_str()), (ConnRef::Azure, "c"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("nope:b/k").expect_err("unknown connection");
        assert!(e.to_string().contains("no connection named 'nope'"), "{e}");
        assert!(e.to_string().contains("AIRFLOW_CONN_NOPE"), "{e}");
        assert!(parse("s3:///k").is_err());
        assert!(
            parse("gcs://b/k")
                .expect_err("scheme")
                .to_string()
                .contains("unknown scheme")
        );
        assert!(parse("az:///k").is_err());
        assert!(parse("").is_err());
        assert!(parse("wasabi:/k").is_err());
    }
}
