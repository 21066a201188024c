//! The conformance suite against the in-process backends. The S3 run lives in the engine's
//! integration tests, against a real server.

use barge_store::conformance;
use barge_store::local::LocalStore;
use barge_store::memory::MemoryStore;

#[tokio::test]
async fn memory_store_conforms() {
    let store = MemoryStore::new("mem", &["b"]);
    conformance::run_all(&store, "b", "suite/").await;
    assert_eq!(store.open_uploads(), 0, "no upload left open");
}

#[tokio::test]
async fn local_store_conforms() {
    let dir = std::env::temp_dir().join(format!("barge-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let prefix = format!("{}/", dir.display());
    conformance::run_all(&LocalStore::new(), "", &prefix).await;
    let leftovers: Vec<_> = walk(&dir)
        .into_iter()
        .filter(|p| p.ends_with(".barge-tmp"))
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}
