//! Inputs: what to move. A single pair, a prefix (or folder) with filters, or a manifest in the
//! Airflow pattern's shape (JSON, YAML or CSV).

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::location::Location;
use barge_store::{ObjectPath, SkippedEntry, Store};

/// One file to move.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferSpec {
    pub src: Location,
    pub dst: Location,
}

/// One entry of a manifest: exactly the Airflow pattern's file-config dict.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    #[serde(default)]
    src_conn_id: String,
    #[serde(default)]
    src_bucket: String,
    src_key: String,
    #[serde(default)]
    dest_conn_id: String,
    #[serde(default)]
    dest_bucket: String,
    dest_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFormat {
    Json,
    Yaml,
    Csv,
}

impl ManifestFormat {
    /// From the file name, else from the first character of the content.
    pub fn detect(name: &str, text: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            ManifestFormat::Json
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            ManifestFormat::Yaml
        } else if lower.ends_with(".csv") {
            ManifestFormat::Csv
        } else if text.trim_start().starts_with(['[', '{']) {
            ManifestFormat::Json
        } else if text
            .lines()
            .next()
            .is_some_and(|l| l.contains("src_key") && l.contains(','))
        {
            ManifestFormat::Csv
        } else {
            ManifestFormat::Yaml
        }
    }
}

fn entries(text: &str, format: ManifestFormat, origin: &str) -> Result<Vec<ManifestEntry>> {
    let bad = |e: String| {
        EngineError::Input(format!(
            "manifest {origin}: {e} (expected a list of {{src_conn_id, src_bucket, src_key, dest_conn_id, dest_bucket, dest_key}})"
        ))
    };
    match format {
        ManifestFormat::Json => serde_json::from_str(text).map_err(|e| bad(e.to_string())),
        ManifestFormat::Yaml => serde_yaml_ng::from_str(text).map_err(|e| bad(e.to_string())),
        ManifestFormat::Csv => {
            let mut rdr = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            rdr.deserialize()
                .collect::<std::result::Result<Vec<ManifestEntry>, _>>()
                .map_err(|e| bad(e.to_string()))
        }
    }
}

/// The longest key S3, GCS and Azure accept.
const MAX_KEY_BYTES: usize = 1024;

/// Parse a manifest into transfers, resolving connection ids.
pub fn parse_manifest(
    text: &str,
    format: ManifestFormat,
    origin: &str,
    conns: &Connections,
) -> Result<Vec<TransferSpec>> {
    let list = entries(text, format, origin)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, e) in list.into_iter().enumerate() {
        let at =
            |what: &str| EngineError::Input(format!("manifest {origin}: entry {}: {what}", i + 1));
        let side = |conn_id: &str, bucket: String, key: String, which: &str| -> Result<Location> {
            let conn = conns
                .resolve_conn_id(conn_id)
                .map_err(|e| at(&format!("{which}: {e}")))?;
            if conn == crate::location::ConnRef::Local {
                // With a bucket (a folder), the key is a file inside it and must stay there.
                if !bucket.is_empty()
                    && let Some(why) = crate::identity::local_key_problem(&key)
                {
                    return Err(at(&format!(
                        "{which}_key '{}' cannot be a file inside the folder {which}_bucket '{bucket}': {why}",
                        key.escape_debug()
                    )));
                }
                let p = if bucket.is_empty() {
                    key
                } else {
                    format!("{}/{}", bucket.trim_end_matches('/'), key)
                };
                if p.is_empty() {
                    return Err(at(&format!("{which}: empty local path")));
                }
                return Ok(Location::local(&p));
            }
            if bucket.is_empty() {
                return Err(at(&format!("{which}_bucket is empty")));
            }
            if key.is_empty() || key.ends_with('/') {
                return Err(at(&format!("{which}_key '{key}' is not an object key")));
            }
            if bucket.contains('/') || bucket.chars().any(char::is_control) {
                return Err(at(&format!(
                    "{which}_bucket '{}' is not a bucket name (no '/' or control characters)",
                    bucket.escape_debug()
                )));
            }
            if key.len() > MAX_KEY_BYTES {
                return Err(at(&format!(
                    "{which}_key is {} bytes long: object keys are 1 to {MAX_KEY_BYTES} bytes",
                    key.len()
                )));
            }
            Ok(Location {
                conn,
                path: ObjectPath::new(bucket, key),
            })
        };
        out.push(TransferSpec {
            src: side(&e.src_conn_id, e.src_bucket, e.src_key, "src")?,
            dst: side(&e.dest_conn_id, e.dest_bucket, e.dest_key, "dest")?,
        });
    }
    Ok(out)
}

/// Include/exclude globs matched against each object's path relative to the copied prefix.
#[derive(Debug, Default)]
pub struct Filters {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filters {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        let build = |pats: &[String], flag: &str| -> Result<Option<GlobSet>> {
            if pats.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in pats {
                b.add(Glob::new(p).map_err(|e| {
                    EngineError::Input(format!("{flag} '{p}' is not a valid glob: {e}"))
                })?);
            }
            b.build()
                .map(Some)
                .map_err(|e| EngineError::Input(format!("{flag}: {e}")))
        };
        Ok(Self {
            include: build(include, "--include")?,
            exclude: build(exclude, "--exclude")?,
        })
    }

    pub fn accepts(&self, rel: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(rel))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }
}

/// A prefix or folder as the parent of what is under it: ending in `/` (or empty).
pub(crate) fn as_dir(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    }
}

/// Every object under `src` (a prefix or a folder), mapped under `dst`.
pub async fn expand_prefix(
    src: &Location,
    dst: &Location,
    src_store: &dyn Store,
    filters: &Filters,
) -> Result<Vec<TransferSpec>> {
    Ok(list_prefix(src, dst, src_store, filters)
        .await?
        .files
        .into_iter()
        .map(|(s, _)| s)
        .collect())
}

/// What a prefix listing gives a transfer: the files, with what the listing said of each (size,
/// ETag: small objects are planned without a stat of each), and the entries passed over.
#[derive(Debug, Default)]
pub struct Listed {
    pub files: Vec<(TransferSpec, barge_store::ObjectMeta)>,
    pub skipped: Vec<SkippedEntry>,
}

/// Every object under `src` mapped under `dst`. Folder markers (keys ending in `/`, the empty
/// objects some tools write to show a folder) are passed over and reported, as are the entries
/// the store itself passed over (local symlinks and special files).
pub async fn list_prefix(
    src: &Location,
    dst: &Location,
    src_store: &dyn Store,
    filters: &Filters,
) -> Result<Listed> {
    let src_dir = as_dir(&src.path.key);
    let dst_dir = as_dir(&dst.path.key);
    let policy = crate::retry::RetryPolicy::default();
    let stats = crate::retry::RetryStats::default();
    let what = format!("listing of {src}");
    let listed = crate::retry::retry(&policy, &stats, &what, || {
        src_store.list(&src.path.bucket, &src_dir)
    })
    .await
    .map_err(EngineError::Store)?;
    let mut out = Listed {
        files: Vec::new(),
        skipped: listed.skipped,
    };
    for meta in listed.objects {
        let Some(rel) = meta.path.key.strip_prefix(&src_dir) else {
            continue;
        };
        if !filters.accepts(rel) {
            continue;
        }
        if rel.is_empty() || rel.ends_with('/') {
            out.skipped.push(SkippedEntry {
                path: src.with_key(meta.path.key.clone()).to_string(),
                reason: "a folder marker (a key ending in '/'), not a file".into(),
            });
            continue;
        }
        let spec = TransferSpec {
            src: src.with_key(meta.path.key.clone()),
            dst: dst.with_key(format!("{dst_dir}{rel}")),
        };
        out.files.push((spec, meta));
    }
    Ok(out)
}

/// `cp SRC DST` for one object: a destination ending in `/` (or an existing local folder) gets
/// the source's file name.
pub fn single(src: Location, dst: Location) -> TransferSpec {
    let name = src
        .path
        .key
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let into_dir = dst.path.key.is_empty()
        || dst.path.key.ends_with('/')
        || (dst.is_local() && std::path::Path::new(&dst.path.key).is_dir());
    let dst = if into_dir {
        let key = format!("{}{name}", as_dir(&dst.path.key));
        dst.with_key(key)
    } else {
        dst
    };
    TransferSpec { src, dst }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::ConfigFile;
    use crate::location::ConnRef;

    fn conns() -> Connections {
        Connections::new(
            ConfigFile::parse("[connections.other]\nendpoint='http://x'", "t").expect("cfg"),
        )
    }

    const JSON: &str = r#"[
      {"src_conn_id": "aws_default", "src_bucket": "a", "src_key": "big/file1.bin",
       "dest_conn_id": "other", "dest_bucket": "b", "dest_key": "copy/file1.bin"}
    ]"#;

    #[test]
    fn airflow_json_works_unchanged() {
        let specs =
            parse_manifest(JSON, ManifestFormat::Json, "m.json", &conns()).expect("manifest");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].src.conn, ConnRef::Default);
        assert_eq!(specs[0].dst.conn, ConnRef::Named("other".into()));
        assert_eq!(specs[0].dst.path, ObjectPath::new("b", "copy/file1.bin"));
    }

    #[test]
    fn yaml_and_csv() {
        let yaml = "- {src_conn_id: aws_default, src_bucket: a, src_key: k, dest_conn_id: other, dest_bucket: b, dest_key: k2}\n";
        let csv = "src_conn_id,src_bucket,src_key,dest_conn_id,dest_bucket,dest_key\naws_default,a,k,other,b,k2\n";
        let y = parse_manifest(yaml, ManifestFormat::Yaml, "m.yaml", &conns()).expect("yaml");
        let c = parse_manifest(csv, ManifestFormat::Csv, "m.csv", &conns()).expect("csv");
        assert_eq!(y, c);
        assert_eq!(ManifestFormat::detect("x", csv), ManifestFormat::Csv);
        assert_eq!(ManifestFormat::detect("x", JSON), ManifestFormat::Json);
    }

    #[test]
    fn manifest_errors_name_the_entry() {
        let bad = r#"[{"src_conn_id": "nope", "src_bucket": "a", "src_key": "k", "dest_bucket": "b", "dest_key": "k"}]"#;
        let e = parse_manifest(bad, ManifestFormat::Json, "m.json", &conns()).expect_err("conn");
        assert!(
            e.to_string().contains("entry 1") && e.to_string().contains("'nope'"),
            "{e}"
        );
        let e = parse_manifest(
            "[{\"src_key\": 1}]",
            ManifestFormat::Json,
            "m.json",
            &conns(),
        )
        .expect_err("type");
        assert!(e.to_string().contains("manifest m.json"), "{e}");
        let e = parse_manifest(
            r#"[{"src_bucket": "", "src_key": "k", "dest_bucket": "b", "dest_key": "k"}]"#,
            ManifestFormat::Json,
            "m.json",
            &conns(),
        )
        .expect_err("empty bucket");
        assert!(e.to_string().contains("src_bucket is empty"), "{e}");
    }

    #[test]
    fn filters() {
        let f = Filters::new(&["*.csv".into()], &["tmp/**".into()]).expect("globs");
        assert!(f.accepts("a.csv"));
        assert!(f.accepts("x/a.csv"));
        assert!(!f.accepts("a.json"));
        assert!(!f.accepts("tmp/a.csv"));
        assert!(Filters::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn single_into_folder() {
        let src = Location {
            conn: ConnRef::Default,
            path: ObjectPath::new("b", "dir/f.bin"),
        };
        let dst = Location {
            conn: ConnRef::Default,
            path: ObjectPath::new("c", "out/"),
        };
        assert_eq!(single(src, dst).dst.path.key, "out/f.bin");
    }
}
