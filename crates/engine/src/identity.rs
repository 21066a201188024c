//! What each source and destination really is, whatever its spelling, checked before anything
//! moves. Local paths are resolved (symlinks, `.`, `..`, repeated `/`; an existing file by its
//! device and inode, so hard links are one file too); stores by endpoint (scheme, resolved host,
//! port), so two connection names for one server are one store.
//!
//! Refused for the whole run (nothing moves): a transfer onto its own source, two transfers
//! onto one object or file, and a destination that is another transfer's source (a swap, a
//! chain). Failed file by file (the others go on): a key that cannot be a
//! local file name inside the destination folder, and a local file that other files need as
//! their folder.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use barge_store::Endpoint;

use crate::connections::Connections;
use crate::error::{EngineError, Result};
use crate::input::TransferSpec;
use crate::location::{ConnRef, Location};

/// One object or file, however it was spelled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ObjectId {
    /// An existing local file (symlinks followed).
    Inode { dev: u64, ino: u64 },
    /// A local file that does not exist yet: its resolved path.
    Path(PathBuf),
    /// An object of a store; `store` numbers the stores that are one endpoint.
    Object {
        store: usize,
        bucket: String,
        key: String,
    },
}

/// Which connections reach the same objects.
pub struct Resolver {
    store_of: HashMap<ConnRef, usize>,
    /// Connections to the local file system (`local`, and named ones of kind `local`).
    local: HashSet<ConnRef>,
}

/// The names an endpoint URL goes by: its host as written and every address it resolves to.
struct Reach {
    scheme: String,
    port: u16,
    names: BTreeSet<String>,
}

/// `scheme://host[:port]/...` taken apart (IPv6 hosts in brackets).
fn split_url(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), default_port),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    Some((scheme, host, port))
}

async fn reach(conns: &Connections, url: &str) -> Reach {
    let Some((scheme, host, port)) = split_url(url) else {
        return Reach {
            scheme: String::new(),
            port: 0,
            names: BTreeSet::from([url.to_ascii_lowercase()]),
        };
    };
    // A name that does not resolve (or not in time) is compared as written.
    let mut names = BTreeSet::from([host.clone()]);
    names.extend(conns.addresses(&host, port).await);
    Reach {
        scheme,
        port,
        names,
    }
}

impl Resolver {
    /// Group the connections `specs` use by the endpoint they reach.
    /// A connection that cannot be opened is taken as a store of its own (its files then fail
    /// when they are planned, with that error).
    pub async fn new(conns: &Connections, specs: &[TransferSpec]) -> Self {
        let used: BTreeSet<&ConnRef> = specs
            .iter()
            .flat_map(|s| [&s.src.conn, &s.dst.conn])
            .collect();
        let mut endpoints = Vec::new();
        for c in used {
            let endpoint = match c {
                ConnRef::Local => Endpoint::Local,
                _ => match conns.get(c).await {
                    Ok(store) => store.endpoint(),
                    Err(_) => Endpoint::Instance(format!("unopened:{c}")),
                },
            };
            endpoints.push((c.clone(), endpoint));
        }
        let mut reaches = HashMap::new();
        for (_, e) in &endpoints {
            if let Endpoint::Url(u) = e
                && !reaches.contains_key(u)
            {
                reaches.insert(u.clone(), reach(conns, u).await);
            }
        }
        let same = |a: &Endpoint, b: &Endpoint| match (a, b) {
            (Endpoint::Url(x), Endpoint::Url(y)) => match (reaches.get(x), reaches.get(y)) {
                (Some(x), Some(y)) => {
                    x.scheme == y.scheme && x.port == y.port && !x.names.is_disjoint(&y.names)
                }
                _ => x == y,
            },
            _ => a == b,
        };
        // A handful of connections: grouping pair by pair is cheap.
        let mut store_of: HashMap<ConnRef, usize> = HashMap::new();
        let mut groups: Vec<Endpoint> = Vec::new();
        let local = endpoints
            .iter()
            .filter(|(_, e)| *e == Endpoint::Local)
            .map(|(c, _)| c.clone())
            .collect();
        for (c, e) in &endpoints {
            let g = match groups.iter().position(|g| same(g, e)) {
                Some(g) => g,
                None => {
                    groups.push(e.clone());
                    groups.len() - 1
                }
            };
            store_of.insert(c.clone(), g);
        }
        Self { store_of, local }
    }

    /// The identity of `loc`. Local paths are read from the file system as they are now.
    pub fn id(&self, loc: &Location) -> ObjectId {
        match self.store_of.get(&loc.conn) {
            Some(&store) if !self.is_local(loc) => ObjectId::Object {
                store,
                bucket: loc.path.bucket.clone(),
                key: loc.path.key.clone(),
            },
            _ => local_id(Path::new(&loc.path.key)),
        }
    }

    /// Whether `loc` is a local file (through any connection).
    pub fn is_local(&self, loc: &Location) -> bool {
        loc.is_local() || self.local.contains(&loc.conn)
    }
}

/// An existing file by device and inode; a new one by its resolved path.
fn local_id(path: &Path) -> ObjectId {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(md) = std::fs::metadata(path) {
            return ObjectId::Inode {
                dev: md.dev(),
                ino: md.ino(),
            };
        }
    }
    ObjectId::Path(resolve_path(path))
}

/// `path` normalized (`location::normalize_path`), its existing part resolved through symlinks.
pub fn resolve_path(path: &Path) -> PathBuf {
    let out = crate::location::normalize_path(path);
    // The longest existing folder, through its symlinks; the rest as written.
    let mut base = out.clone();
    let mut rest = Vec::new();
    while !base.exists() {
        match (base.file_name().map(|n| n.to_os_string()), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                base = parent.to_path_buf();
            }
            _ => return out,
        }
    }
    let mut real = std::fs::canonicalize(&base).unwrap_or(base);
    for name in rest.into_iter().rev() {
        real.push(name);
    }
    real
}

/// Why `rel`, a key's part below a local destination folder, cannot be a file name there, if
/// it cannot: a segment that would climb out (`..`) or that file systems drop (empty, `.`,
/// which would make two keys one file), an absolute path, or a character no file name should
/// hold (NUL, control characters; on Windows also `\` and drive letters).
pub fn local_key_problem(rel: &str) -> Option<String> {
    if rel.is_empty() {
        return Some("the key names no file".into());
    }
    if rel.starts_with('/') {
        return Some("it is an absolute path".into());
    }
    if let Some(c) = rel.chars().find(|c| c.is_control()) {
        return Some(format!(
            "it holds the control character {:?}",
            c.escape_default().to_string()
        ));
    }
    #[cfg(windows)]
    if rel.contains('\\') || rel.as_bytes().get(1) == Some(&b':') {
        return Some("it holds a backslash or a drive letter".into());
    }
    for seg in rel.split('/') {
        match seg {
            "" => return Some("it has an empty segment ('//'), which a file system drops".into()),
            "." => return Some("it has a '.' segment, which a file system drops".into()),
            ".." => {
                return Some(
                    "it has a '..' segment, which would leave the destination folder".into(),
                );
            }
            _ => {}
        }
    }
    None
}

/// The run-wide and file-by-file checks described in the module comment (`delete_source` only
/// words the refusals). `Err`: the run is refused. `Ok(v)`: `v[i]` is why file `i` fails before
/// it starts, if it does.
pub fn check(
    resolver: &Resolver,
    specs: &[TransferSpec],
    delete_source: bool,
) -> Result<Vec<Option<String>>> {
    let mut file_errors: Vec<Option<String>> = vec![None; specs.len()];
    let mut dsts: HashMap<ObjectId, usize> = HashMap::new();
    let mut srcs: HashMap<ObjectId, usize> = HashMap::new();
    let mut ids = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        if resolver.is_local(&s.dst)
            && let Some(why) = local_destination_problem(&s.dst.path.key)
        {
            file_errors[i] = Some(format!(
                "{} cannot be written as {}: {why}; nothing was written",
                s.src, s.dst
            ));
            ids.push(None);
            continue;
        }
        let (src, dst) = (resolver.id(&s.src), resolver.id(&s.dst));
        if src == dst {
            return Err(EngineError::Input(format!(
                "{} is the source itself ({} and {} are one {}): nothing was moved",
                s.dst,
                s.src,
                s.dst,
                if s.src.is_local() { "file" } else { "object" }
            )));
        }
        if let Some(&j) = dsts.get(&dst) {
            return Err(EngineError::Input(format!(
                "two transfers write the same destination {} (also written as {}): nothing was moved; give each file its own destination",
                specs[j].dst, s.dst
            )));
        }
        dsts.insert(dst.clone(), i);
        srcs.entry(src.clone()).or_insert(i);
        ids.push(Some(dst));
    }
    // A destination that is another transfer's source (a swap, a chain): overwritten before
    // or after it is read depending on the order, so one of the two bodies can be lost (a
    // pinned read of the overwritten source fails, and the other copy has already replaced
    // it), and with --delete-source the source is deleted too.
    for (i, id) in ids.iter().enumerate() {
        if let Some(id) = id
            && let Some(&j) = srcs.get(id)
        {
            let why = if delete_source {
                "with --delete-source one of the two bodies would be lost"
            } else {
                "which body it ends up with would depend on the order, and one of the two could be lost"
            };
            return Err(EngineError::Input(format!(
                "{} is the destination of {} and the source of another transfer ({} -> {}): {why}; nothing was moved. Copy in two runs, through a destination no transfer reads",
                specs[i].dst, specs[i].src, specs[j].src, specs[j].dst
            )));
        }
    }
    // A local file that other files need as their folder: the file fails, they go on.
    let local_dsts: Vec<(usize, PathBuf)> = specs
        .iter()
        .enumerate()
        .filter(|(i, s)| resolver.is_local(&s.dst) && file_errors[*i].is_none())
        .map(|(i, s)| (i, resolve_path(Path::new(&s.dst.path.key))))
        .collect();
    let folders: HashSet<&Path> = local_dsts
        .iter()
        .flat_map(|(_, p)| p.ancestors().skip(1))
        .collect();
    for (i, path) in &local_dsts {
        if folders.contains(path.as_path()) {
            let s = &specs[*i];
            file_errors[*i] = Some(format!(
                "{} would be written as the file {}, which other files of this transfer need as their folder: a file and a folder cannot share one name; nothing was written for it",
                s.src, s.dst
            ));
        }
    }
    Ok(file_errors)
}

/// `cp -r SRC DST --delete-source` where one folder (or prefix) holds the other: moving a
/// folder into itself, or over the folder that holds it, is refused whatever the listing holds
/// (as `mv` refuses it), since a later run would find its own copies among the sources.
pub fn check_tree(resolver: &Resolver, src: &Location, dst: &Location) -> Result<()> {
    if trees_overlap(resolver, src, dst) {
        return Err(EngineError::Input(format!(
            "{dst} and {src} are one folder or one holds the other: with --delete-source that moves a folder into itself; nothing was moved. Move it to a folder outside it, or copy without --delete-source"
        )));
    }
    Ok(())
}

/// Whether two folders (or prefixes of one bucket on one store) are one, or one holds the other.
pub fn trees_overlap(resolver: &Resolver, src: &Location, dst: &Location) -> bool {
    let dir = crate::input::as_dir;
    match (resolver.is_local(src), resolver.is_local(dst)) {
        (true, true) => {
            let (a, b) = (
                resolve_path(Path::new(&src.path.key)),
                resolve_path(Path::new(&dst.path.key)),
            );
            a.starts_with(&b) || b.starts_with(&a)
        }
        (false, false) => {
            let (a, b) = (dir(&src.path.key), dir(&dst.path.key));
            resolver.store_of.get(&src.conn) == resolver.store_of.get(&dst.conn)
                && src.path.bucket == dst.path.bucket
                && (a.starts_with(&b) || b.starts_with(&a))
        }
        _ => false,
    }
}

/// A local destination path as built from a key: every segment after the root must be a name.
fn local_destination_problem(path: &str) -> Option<String> {
    let rel = path.strip_prefix('/').unwrap_or(path);
    local_key_problem(rel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://127.0.0.1:3900"),
            Some(("http".into(), "127.0.0.1".into(), 3900))
        );
        assert_eq!(
            split_url("HTTPS://S3.Example.com./x"),
            Some(("https".into(), "s3.example.com".into(), 443))
        );
        assert_eq!(
            split_url("http://[::1]:9000"),
            Some(("http".into(), "::1".into(), 9000))
        );
        assert_eq!(split_url("nonsense"), None);
    }

    #[test]
    fn keys_that_cannot_be_files() {
        for (rel, why) in [
            ("../../escape.txt", "'..' segment"),
            ("a/../b", "'..' segment"),
            ("q//x", "empty segment"),
            ("./x", "'.' segment"),
            ("/etc/passwd", "absolute path"),
            ("a\u{0}b", "control character"),
            ("a\nb", "control character"),
            ("", "names no file"),
        ] {
            let got = local_key_problem(rel).unwrap_or_default();
            assert!(got.contains(why), "{rel:?}: {got}");
        }
        for ok in ["x", "a/b/c.bin", "..x", "x..", ".hidden", "sp ace/ü"] {
            assert_eq!(local_key_problem(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn paths_resolve_through_dots_and_symlinks() {
        let dir = std::env::temp_dir().join(format!("barge-id-{}", uuid::Uuid::new_v4()));
        let real = dir.join("real");
        std::fs::create_dir_all(real.join("sub")).expect("mkdir");
        let link = dir.join("link");
        #[cfg(unix)]
        std::os::unix::fs::symlink(real.join("sub"), &link).expect("symlink");
        let r = std::fs::canonicalize(&real).expect("canonical");
        assert_eq!(resolve_path(&dir.join("real/./x//y")), r.join("x/y"));
        assert_eq!(resolve_path(&dir.join("real/sub/../new")), r.join("new"));
        #[cfg(unix)]
        {
            // `link/..` is the parent of the link's target: real, not dir.
            assert_eq!(resolve_path(&link.join("../f")), r.join("f"));
            assert_eq!(resolve_path(&link.join("f")), r.join("sub/f"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
