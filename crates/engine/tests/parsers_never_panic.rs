//! Property tests of every input parser: manifests (JSON, YAML, CSV), locations, sizes, the
//! config file. Whatever the input, a parser returns a value or an error; it never panics.

use barge_engine::connections::{ConfigFile, Connections};
use barge_engine::input::{ManifestFormat, parse_manifest};
use barge_engine::location::Location;
use barge_engine::size::parse_size;
use proptest::prelude::*;

fn conns() -> Connections {
    Connections::new(
        ConfigFile::parse(
            "[connections.other]\nendpoint = 'http://127.0.0.1:1'\n",
            "t",
        )
        .expect("config"),
    )
}

/// Strings that look a bit like what the parsers expect, plus arbitrary noise.
fn fragments() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9_:/.\\-]{0,40}",
        "(s3://|other:|local:|/|\\./)[a-zA-Z0-9_/.:\\-]{0,30}",
        "[0-9.]{0,8}(|k|M|GiB|TiB|b|xb|e9)",
    ]
}

fn manifest_text() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        fragments(),
        Just(String::new()),
        Just("aws_default".to_string())
    ];
    let entry = (
        field.clone(),
        field.clone(),
        field.clone(),
        field.clone(),
        field.clone(),
        field,
    );
    prop_oneof![
        any::<String>(),
        prop::collection::vec(entry.clone(), 0..4).prop_map(|es| {
            let items: Vec<serde_json::Value> = es
                .into_iter()
                .map(|(a, b, c, d, e, f)| {
                    serde_json::json!({"src_conn_id": a, "src_bucket": b, "src_key": c,
                                       "dest_conn_id": d, "dest_bucket": e, "dest_key": f})
                })
                .collect();
            serde_json::to_string(&items).unwrap_or_default()
        }),
        prop::collection::vec(entry, 0..4).prop_map(|es| {
            let mut s =
                String::from("src_conn_id,src_bucket,src_key,dest_conn_id,dest_bucket,dest_key\n");
            for (a, b, c, d, e, f) in es {
                s.push_str(&format!("{a},{b},{c},{d},{e},{f}\n"));
            }
            s
        }),
        "(- \\{src_key: [a-z]{0,3}, dest_key: [a-z]{0,3}\\}\n){0,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn manifests(text in manifest_text()) {
        let c = conns();
        for f in [ManifestFormat::Json, ManifestFormat::Yaml, ManifestFormat::Csv] {
            let _ = parse_manifest(&text, f, "fuzz", &c);
        }
        let _ = ManifestFormat::detect("x", &text);
    }

    #[test]
    fn locations(s in fragments()) {
        let _ = Location::parse(&s, &|n| n == "other");
    }

    #[test]
    fn sizes(s in fragments()) {
        let _ = parse_size(&s);
    }

    #[test]
    fn config_files(s in prop_oneof![
        any::<String>(),
        "\\[connections\\.[a-z ]{0,5}\\]\n(endpoint|region|checksum|path_style|read_timeout|max_object_size) = (\"[a-z0-9:/.]{0,10}\"|true|1)\n",
    ]) {
        if let Ok(cfg) = ConfigFile::parse(&s, "fuzz") {
            for (name, c) in &cfg.connections {
                let _ = barge_engine::connections::s3_config(name, c);
            }
        }
    }
}

#[test]
fn valid_manifests_parse_to_every_entry() {
    let c = conns();
    let text = r#"[{"src_conn_id":"aws_default","src_bucket":"a","src_key":"k1","dest_conn_id":"other","dest_bucket":"b","dest_key":"k1"},
                  {"src_conn_id":"aws_default","src_bucket":"a","src_key":"k2","dest_conn_id":"other","dest_bucket":"b","dest_key":"k2"}]"#;
    let specs = parse_manifest(text, ManifestFormat::Json, "m", &c).expect("valid");
    assert_eq!(specs.len(), 2);
}
