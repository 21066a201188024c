//! Properties of the rules that keep data safe, over generated inputs: which keys may become
//! local file names (and that those stay inside the folder), how local paths are normalized,
//! sizes round-tripping, and the exact errors for manifest values that would escape a folder.

use barge_engine::connections::{ConfigFile, Connections};
use barge_engine::identity::{local_key_problem, resolve_path};
use barge_engine::input::{ManifestFormat, parse_manifest};
use barge_engine::location::Location;
use barge_engine::size::parse_size;
use proptest::prelude::*;

/// A segment of a key: an ordinary name, or one of the spellings a file system reads apart.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 _.+=-]{1,12}",
        1 => Just(String::new()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => r"[a-z]{0,3}[\x00-\x1f\x7f][a-z]{0,3}",
    ]
}

fn is_name(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && !seg.chars().any(char::is_control)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A key is a file name inside the folder exactly when every segment is a name; then the
    /// path it makes resolves to a place inside the folder.
    #[test]
    fn keys_become_files_only_inside_the_folder(
        segs in prop::collection::vec(segment(), 1..6),
        leading_slash in any::<bool>(),
    ) {
        let rel = format!("{}{}", if leading_slash { "/" } else { "" }, segs.join("/"));
        let ok = !leading_slash && segs.iter().all(|s| is_name(s));
        let problem = local_key_problem(&rel);
        prop_assert_eq!(problem.is_none(), ok, "{:?}: {:?}", rel, problem);
        if ok {
            let dir = std::env::temp_dir().join("barge-prop-never-created");
            let at = resolve_path(&dir.join(&rel));
            prop_assert!(at.starts_with(&dir), "{:?} -> {:?}", rel, at);
            prop_assert!(at != dir);
        }
    }

    /// A local path is normalized once and for all: no '.', '..' or empty segment is left, and
    /// normalizing again changes nothing.
    #[test]
    fn local_paths_normalize_once(segs in prop::collection::vec(prop_oneof![
        3 => "[a-z]{1,6}",
        1 => Just(String::new()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
    ], 0..8)) {
        let typed = format!("/barge-prop-missing/{}", segs.join("/"));
        let once = Location::local(&typed);
        let key = once.path.key.as_str();
        prop_assert!(key.starts_with('/'), "{:?} -> {:?}", typed, key);
        let inner = key.trim_start_matches('/').trim_end_matches('/');
        if !inner.is_empty() {
            for seg in inner.split('/') {
                prop_assert!(is_name(seg), "{:?} -> {:?}", typed, key);
            }
        }
        let twice = Location::local(&once.path.key);
        prop_assert_eq!(&twice, &once);
    }

    /// Sizes as numbers and in whole binary units come back exactly.
    #[test]
    fn sizes_round_trip(n in 0u64..(1 << 53), k in 0u64..(1 << 30)) {
        prop_assert_eq!(parse_size(&n.to_string()).ok(), Some(n));
        prop_assert_eq!(parse_size(&format!("{k}KiB")).ok(), Some(k << 10));
        prop_assert_eq!(parse_size(&format!("{k}MiB")).ok(), Some(k << 20));
    }

    /// A manifest naming a local folder refuses any key that would leave it, naming the entry,
    /// the field and the reason.
    #[test]
    fn manifest_keys_stay_inside_a_local_folder(
        before in prop::collection::vec("[a-z]{1,5}", 0..3),
        after in prop::collection::vec("[a-z]{1,5}", 1..3),
    ) {
        let key = [before.join("/"), "..".into(), after.join("/")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        let conns = Connections::new(ConfigFile::default());
        let text = serde_json::json!([{
            "src_conn_id": "aws_default", "src_bucket": "b", "src_key": "k",
            "dest_conn_id": "local", "dest_bucket": "/data/out", "dest_key": key,
        }])
        .to_string();
        let e = parse_manifest(&text, ManifestFormat::Json, "m.json", &conns)
            .expect_err("refused")
            .to_string();
        prop_assert_eq!(
            e,
            format!(
                "manifest m.json: entry 1: dest_key '{key}' cannot be a file inside the folder dest_bucket '/data/out': it has a '..' segment, which would leave the destination folder"
            )
        );
    }
}
