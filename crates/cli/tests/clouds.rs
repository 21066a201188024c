//! GCS (fake-gcs-server) and Azure Blob Storage (Azurite) through the barge binary: any store
//! to any store, byte-identical by SHA-256; metadata carried (and a key Azure cannot hold named
//! in a warning); a server-side rewrite within GCS; an exact delete of the source; kill -9
//! mid-upload and the same command again on each backend; two workers sharing one object.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use barge_store::azure::{AzureConfig, AzureCredentials, AzureStore, create_container};
use barge_store::gcs::{GcsConfig, GcsCredentials, GcsStore, create_bucket};
use barge_store::s3::Secret;
use barge_store::{ObjectAttrs, Store};
use common::*;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the emulators")
    })
}

/// The emulators as named connections `gcs` (anonymous) and `azure` (a connection string),
/// and `azkey` (the same account by its key: barge signs an account SAS).
fn clouds_config() -> String {
    format!(
        "[connections.gcs]\nkind = \"gcs\"\nendpoint = \"{}\"\nanonymous = true\n\n\
         [connections.azure]\nkind = \"azure\"\nconnection_string_env = \"BARGE_TEST_AZ_CONNECTION_STRING\"\n\n\
         [connections.azkey]\nkind = \"azure\"\nendpoint = \"{}\"\naccount = \"{}\"\naccount_key_env = \"BARGE_TEST_AZ_KEY\"\n\n",
        var("BARGE_TEST_GCS_ENDPOINT"),
        var("BARGE_TEST_AZ_ENDPOINT"),
        var("BARGE_TEST_AZ_ACCOUNT"),
    )
}

/// A fresh bucket on the GCS emulator and a fresh container on Azurite, with stores on both.
async fn clouds(tag: &str) -> (Arc<GcsStore>, String, Arc<AzureStore>, String) {
    let mut g = GcsConfig::from_env("gcs");
    g.endpoint = var("BARGE_TEST_GCS_ENDPOINT");
    g.credentials = GcsCredentials::Anonymous;
    let gcs = GcsStore::connect(g).await.expect("gcs");
    let bucket = format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&gcs, &bucket).await.expect("bucket");
    let az = AzureStore::connect(AzureConfig {
        name: "azure".into(),
        account: None,
        endpoint: None,
        credentials: AzureCredentials::ConnectionString(Secret::new(var(
            "BARGE_TEST_AZ_CONNECTION_STRING",
        ))),
        http: Default::default(),
    })
    .await
    .expect("azure");
    let container = format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    create_container(&az, &container).await.expect("container");
    (Arc::new(gcs), bucket, Arc::new(az), container)
}

fn ok(o: &std::process::Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_gcs_to_azure_to_s3_and_back_byte_identical() {
    let e = Env::new("clouds", &clouds_config());
    let (gcs, bucket, az, container) = clouds("chain").await;
    let p = prefix("chain");
    let src = e.dir.join("src");
    std::fs::create_dir_all(src.join("sub")).expect("dir");
    let files = [
        ("empty.bin", Vec::new()),
        ("small.txt", data(1000, 1).to_vec()),
        ("sub/big.bin", data(12 * MIB + 3, 2).to_vec()),
    ];
    for (name, body) in &files {
        std::fs::write(src.join(name), body).expect("write");
    }
    let gs_dir = format!("gcs:{bucket}/{p}");
    let az_dir = format!("azure:{container}/{p}");
    let s3_dir = format!("ga:dst/{p}");
    let back = e.dir.join("back");
    let src_arg = format!("{}/", src.display());
    let back_arg = format!("{}/", back.display());
    for (from, to) in [
        (src_arg.as_str(), gs_dir.as_str()),
        (gs_dir.as_str(), az_dir.as_str()),
        (az_dir.as_str(), s3_dir.as_str()),
        (s3_dir.as_str(), back_arg.as_str()),
    ] {
        let o = barge(
            &e,
            &[
                "cp",
                "-r",
                from,
                to,
                "--part-size",
                "5MiB",
                "--json",
                "--quiet",
            ],
        );
        let v = ok(&o);
        assert_eq!(v["files_ok"], 3, "{from} -> {to}: {v}");
    }
    for (name, body) in &files {
        let key = format!("{p}{name}");
        assert_eq!(
            sha256(&read(gcs.as_ref(), &bucket, &key).await),
            sha256(body),
            "gcs {name}"
        );
        assert_eq!(
            sha256(&read(az.as_ref(), &container, &key).await),
            sha256(body),
            "azure {name}"
        );
        let got = std::fs::read(back.join(name)).expect("read back");
        assert_eq!(sha256(&got), sha256(body), "back home: {name}");
    }
    assert_eq!(files_under(&back).len(), 3, "nothing else written");
    // The 12 MiB file went up to GCS in parts: a composite upload, its temporaries all gone.
    assert_no_uploads(gcs.as_ref(), &bucket, "").await;
    assert_no_uploads(az.as_ref(), &container, "").await;

    // Metadata: GCS to Azure carries type and legal keys; a key Azure cannot hold is named.
    let meta_key = format!("{p}meta.txt");
    let attrs = ObjectAttrs {
        content_type: Some("text/plain; charset=utf-8".into()),
        cache_control: Some("max-age=60".into()),
        content_language: Some("en".into()),
        user_metadata: [
            ("team".to_string(), "data".to_string()),
            ("origin-site".to_string(), "eu".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    put(gcs.as_ref(), &bucket, &meta_key, data(100, 3), &attrs).await;
    let o = barge(
        &e,
        &[
            "cp",
            &format!("gcs:{bucket}/{meta_key}"),
            &format!("azkey:{container}/{meta_key}"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("metadata key 'origin-site' is not a legal Azure metadata name"),
        "{}",
        stderr(&o)
    );
    let m = az
        .head(&barge_store::ObjectPath::new(
            container.clone(),
            meta_key.clone(),
        ))
        .await
        .expect("head");
    assert_eq!(m.attrs.content_type, attrs.content_type);
    assert_eq!(m.attrs.cache_control, attrs.cache_control);
    assert_eq!(m.attrs.content_language, attrs.content_language);
    assert_eq!(
        m.attrs.user_metadata.get("team").map(String::as_str),
        Some("data")
    );
    assert!(!m.attrs.user_metadata.contains_key("origin-site"));

    // Within GCS: one server-side rewrite, no byte through barge.
    let v = ok(&barge(
        &e,
        &[
            "cp",
            &format!("gcs:{bucket}/{p}sub/big.bin"),
            &format!("gcs:{bucket}/{p}copy/big.bin"),
            "--json",
        ],
    ));
    assert_eq!(v["bytes_through_client"], 0, "{v}");
    assert_eq!(
        sha256(&read(gcs.as_ref(), &bucket, &format!("{p}copy/big.bin")).await),
        sha256(&files[2].1)
    );

    // Within one Azure account (two connections, one with the connection string, one with the
    // account key): Copy Blob, no byte through barge; a prefix copy keeps each blob's
    // attributes, a single copy sets the planned ones.
    let v = ok(&barge(
        &e,
        &[
            "cp",
            "-r",
            &format!("azure:{container}/{p}sub/"),
            &format!("azkey:{container}/{p}azcopy/"),
            "--json",
        ],
    ));
    assert_eq!(v["files_ok"], 1, "{v}");
    assert_eq!(v["bytes_through_client"], 0, "{v}");
    assert_eq!(
        sha256(&read(az.as_ref(), &container, &format!("{p}azcopy/big.bin")).await),
        sha256(&files[2].1)
    );
    let v = ok(&barge(
        &e,
        &[
            "cp",
            &format!("azure:{container}/{meta_key}"),
            &format!("azkey:{container}/{p}azcopy/meta.txt"),
            "--json",
        ],
    ));
    assert_eq!(v["bytes_through_client"], 0, "{v}");
    let copied = az
        .head(&barge_store::ObjectPath::new(
            container.clone(),
            format!("{p}azcopy/meta.txt"),
        ))
        .await
        .expect("head copy");
    assert_eq!(copied.attrs, m.attrs, "attributes kept within Azure");
    assert_eq!(
        read(az.as_ref(), &container, &format!("{p}azcopy/meta.txt")).await,
        read(az.as_ref(), &container, &meta_key).await
    );

    // A move from Azure deletes exactly the copied source.
    let moved = format!("{p}small.txt");
    ok(&barge(
        &e,
        &[
            "cp",
            &format!("azure:{container}/{moved}"),
            &format!("gcs:{bucket}/{p}moved.txt"),
            "--delete-source",
        ],
    ));
    assert!(
        az.head(&barge_store::ObjectPath::new(
            container.clone(),
            moved.clone()
        ))
        .await
        .is_err(),
        "the source is deleted after the copy is verified"
    );
    assert_eq!(
        sha256(&read(gcs.as_ref(), &bucket, &format!("{p}moved.txt")).await),
        sha256(&files[1].1)
    );

    // What a killed run leaves (a composite upload's temporaries on GCS, an opener and
    // uncommitted blocks on Azure) is found and removed by `barge cleanup`.
    for (store, bucket, conn) in [
        (gcs.as_ref() as &dyn Store, bucket.as_str(), "gcs"),
        (az.as_ref() as &dyn Store, container.as_str(), "azure"),
    ] {
        let path = barge_store::ObjectPath::new(bucket, format!("{p}left/over.bin"));
        let up = store
            .create_upload(
                &path,
                &ObjectAttrs::default(),
                barge_store::ChecksumMode::Crc32c,
            )
            .await
            .expect("create upload");
        let chunk = data(1000, 7);
        let spec = barge_store::PartSpec {
            number: 1,
            offset: 0,
            len: 1000,
        };
        store
            .upload_part(&up, &spec, chunk, None)
            .await
            .expect("part");
        let v = ok(&barge(
            &e,
            &[
                "cleanup",
                &format!("{conn}:{bucket}/{p}"),
                "--older-than",
                "0s",
                "--json",
            ],
        ));
        assert!(v.to_string().contains(&up.upload_id), "{conn}: {v}");
        assert_no_uploads(store, bucket, "").await;
        assert!(store.head(&path).await.is_err(), "{conn}: no object left");
    }

    // A container name Azure cannot have is refused by name, with the rule, before a request.
    let o = barge(
        &e,
        &[
            "cp",
            &src.join("small.txt").to_string_lossy(),
            "azure:C1/small.txt",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'C1' is not an Azure container name: 3 to 63 lower-case letters"),
        "{}",
        stderr(&o)
    );

    // `verify` compares both sides.
    let o = barge(
        &e,
        &[
            "verify",
            &format!("gcs:{bucket}/{p}sub/big.bin"),
            &format!("azure:{container}/{p}sub/big.bin"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::remove_dir_all(&e.dir).ok();
}

fn status(e: &Env) -> Option<serde_json::Value> {
    let out = e.cmd(&["status", "--json"]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// kill -9 while a file goes up in parts, then the same command: every recorded part is
/// reused, the object is byte-identical and nothing of the upload is left.
async fn kill_and_resume(dest: &str, store: &dyn Store, bucket: &str) {
    const PART: u64 = 5 * 1024 * 1024;
    let e = Env::new("clouds-kill", &clouds_config());
    let p = prefix("kill");
    let size = 60 * MIB as u64 + 11;
    let body = data(size as usize, 9);
    let file = e.dir.join("big.bin");
    std::fs::write(&file, &body).expect("write");
    let to = format!("{dest}:{bucket}/{p}big.bin");
    let cmd = |json: bool, rate: &str| {
        let mut c = e.cmd(&[
            "cp",
            file.to_str().expect("utf-8"),
            &to,
            "--part-size",
            "5MiB",
            "--concurrency",
            "2",
            "--bwlimit",
            rate,
            "--quiet",
        ]);
        if json {
            c.arg("--json");
        }
        c
    };
    let mut child = cmd(false, "8MiB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let t0 = Instant::now();
    let parts = |v: &serde_json::Value| v["files"][0]["parts_done"].as_u64().unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if status(&e).is_some_and(|v| parts(&v) >= 3) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "ended before the kill"
        );
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let recorded = parts(&status(&e).expect("status"));
    assert!(
        recorded < size.div_ceil(PART),
        "the kill came before the end"
    );
    let o = cmd(true, "1GiB").output().expect("rerun");
    let v = ok(&o);
    assert_eq!(v["resumed"], true, "{v}");
    assert_eq!(v["parts_reused"].as_u64(), Some(recorded), "{v}");
    assert_eq!(
        sha256(&read(store, bucket, &format!("{p}big.bin")).await),
        sha256(&body),
        "{dest}: byte-identical after kill -9 and resume"
    );
    assert_no_uploads(store, bucket, "").await;
    std::fs::remove_dir_all(&e.dir).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_upload_resumes_on_gcs_and_azure() {
    let (gcs, bucket, az, container) = clouds("kill").await;
    kill_and_resume("gcs", gcs.as_ref(), &bucket).await;
    kill_and_resume("azure", az.as_ref(), &container).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_move_one_gcs_object_to_azure() {
    let e = Env::new("clouds-workers", &clouds_config());
    let (gcs, bucket, az, container) = clouds("workers").await;
    let p = prefix("workers");
    let body = data(40 * MIB + 5, 4);
    put(
        gcs.as_ref(),
        &bucket,
        &format!("{p}obj"),
        body.clone(),
        &ObjectAttrs::default(),
    )
    .await;
    let manifest = e.dir.join("m.csv");
    std::fs::write(
        &manifest,
        format!(
            "src_conn_id,src_bucket,src_key,dest_conn_id,dest_bucket,dest_key\n\
             gcs,{bucket},{p}obj,azure,{container},{p}obj\n"
        ),
    )
    .expect("manifest");
    let pg = pg_url();
    let queue = format!("clouds-{}", uuid::Uuid::new_v4().simple());
    let o = barge_cmd(&e.config, &pg)
        .args([
            "submit",
            manifest.to_str().expect("utf-8"),
            "--queue",
            &queue,
            "--part-size",
            "5MiB",
        ])
        .output()
        .expect("submit");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            barge_cmd(&e.config, &pg)
                .args([
                    "worker",
                    "--exit-when-idle",
                    "--queue",
                    &queue,
                    "--concurrency",
                    "2",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("worker")
        })
        .collect();
    for w in workers {
        let o = w.wait_with_output().expect("worker");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let s = Command::new(env!("CARGO_BIN_EXE_barge"))
        .arg("--config")
        .arg(&e.config)
        .args(["--journal", &pg, "status", &id, "--json"])
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).expect("status json");
    assert_eq!(v["transfer"]["state"], "done", "{v:#}");
    assert_eq!(
        sha256(&read(az.as_ref(), &container, &format!("{p}obj")).await),
        sha256(&body)
    );
    assert_no_uploads(az.as_ref(), &container, "").await;
    std::fs::remove_dir_all(&e.dir).ok();
}

/// GCS and Azure over HTTPS whose certificate a private CA signed (a TLS front before each
/// emulator): barge copies through both when the connection names the CA (`ca_bundle`, relative
/// to the config file), and without it stops at once with the fix, retrying nothing and
/// writing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn https_with_a_private_ca_on_gcs_and_azure() {
    let (gcs, bucket, az, container) = clouds("tls").await;
    let gcs_front = barge_faultproxy::TlsFront::start(upstream("GCS"))
        .await
        .expect("TLS front for GCS");
    let az_addr: std::net::SocketAddr = var("BARGE_TEST_AZ_ENDPOINT")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("Azurite's address");
    let az_front = barge_faultproxy::TlsFront::start(az_addr)
        .await
        .expect("TLS front for Azurite");
    let conns = |trusted: bool| {
        let bundle = |file: &str| {
            if trusted {
                format!("ca_bundle = \"{file}\"\n")
            } else {
                String::new()
            }
        };
        let tag = if trusted { "t" } else { "n" };
        format!(
            "[connections.g{tag}]\nkind = \"gcs\"\nendpoint = \"https://{}\"\nanonymous = true\n{}\n\
             [connections.a{tag}]\nkind = \"azure\"\nendpoint = \"https://{}/{}\"\naccount = \"{}\"\naccount_key_env = \"BARGE_TEST_AZ_KEY\"\n{}\n",
            gcs_front.addr,
            bundle("gcs-ca.pem"),
            az_front.addr,
            var("BARGE_TEST_AZ_ACCOUNT"),
            var("BARGE_TEST_AZ_ACCOUNT"),
            bundle("azure-ca.pem"),
        )
    };
    let e = Env::new("clouds-tls", &(conns(true) + &conns(false)));
    std::fs::write(e.dir.join("gcs-ca.pem"), &gcs_front.ca_pem).expect("CA file");
    std::fs::write(e.dir.join("azure-ca.pem"), &az_front.ca_pem).expect("CA file");
    let p = prefix("tls");
    let body = data(6 * MIB + 5, 61);
    let file = e.dir.join("big.bin");
    std::fs::write(&file, &body).expect("write");
    let back = e.dir.join("back.bin");
    let gs = format!("gt:{bucket}/{p}big.bin");
    let azp = format!("at:{container}/{p}big.bin");
    for (from, to) in [
        (file.to_string_lossy().to_string(), gs.clone()),
        (gs.clone(), azp.clone()),
        (azp.clone(), back.to_string_lossy().to_string()),
    ] {
        let o = barge(&e, &["cp", &from, &to, "--part-size", "5MiB"]);
        assert_eq!(o.status.code(), Some(0), "{from} -> {to}: {}", stderr(&o));
    }
    assert_eq!(
        sha256(&std::fs::read(&back).expect("read back")),
        sha256(&body)
    );
    assert_eq!(
        sha256(&read(az.as_ref(), &container, &format!("{p}big.bin")).await),
        sha256(&body)
    );
    // Trusting only the system's authorities: refused at once, with what to do.
    for (conn, store, bucket) in [
        ("gn", gcs.as_ref() as &dyn Store, bucket.as_str()),
        ("an", az.as_ref() as &dyn Store, container.as_str()),
    ] {
        let key = format!("{p}untrusted/{conn}.bin");
        let o = barge(
            &e,
            &[
                "cp",
                &file.to_string_lossy(),
                &format!("{conn}:{bucket}/{key}"),
                "--part-size",
                "5MiB",
            ],
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{conn}: {err}");
        assert!(
            err.contains(&format!("{conn}: "))
                && err.contains("invalid peer certificate")
                && err.contains("name its PEM file as ca_bundle"),
            "{conn}: {err}"
        );
        assert!(
            !err.contains("retry 1/"),
            "{conn}: a TLS refusal is retried: {err}"
        );
        assert!(
            store
                .head(&barge_store::ObjectPath::new(bucket, key))
                .await
                .is_err(),
            "{conn}: something was written"
        );
        assert_no_uploads(store, bucket, "").await;
    }
    std::fs::remove_dir_all(&e.dir).ok();
}

/// A DAG's Airflow connections of type `wasb` and `google_cloud_platform`, from the environment
/// as Airflow hands them to a task, move a manifest from Azure to GCS with no barge config.
#[tokio::test(flavor = "multi_thread")]
async fn airflow_wasb_and_google_connections_move_a_manifest() {
    let (gcs, bucket, az, container) = clouds("airflow").await;
    let e = Env::new("clouds-airflow", "");
    std::fs::write(&e.config, "").expect("an empty config");
    let p = prefix("airflow");
    let files = [("small", data(1000, 71)), ("big", data(6 * MIB + 1, 72))];
    for (name, body) in &files {
        put(
            az.as_ref(),
            &container,
            &format!("{p}{name}"),
            body.clone(),
            &ObjectAttrs::default(),
        )
        .await;
    }
    let enc = uri_encode;
    let key = var("BARGE_TEST_AZ_KEY");
    let wasb = format!(
        "wasb://{}:{}@{}",
        enc(&var("BARGE_TEST_AZ_ACCOUNT")),
        enc(&key),
        enc(&var("BARGE_TEST_AZ_ENDPOINT")),
    );
    let entries: Vec<_> = files
        .iter()
        .map(|(name, _)| {
            serde_json::json!({
                "src_conn_id": "lake_wasb", "src_bucket": container, "src_key": format!("{p}{name}"),
                "dest_conn_id": "google_cloud_default", "dest_bucket": bucket, "dest_key": format!("{p}{name}"),
            })
        })
        .collect();
    let manifest = e.dir.join("m.json");
    std::fs::write(&manifest, serde_json::to_string(&entries).expect("json")).expect("manifest");
    let emulator = var("BARGE_TEST_GCS_ENDPOINT");
    let o = e
        .cmd(&[
            "run",
            &manifest.to_string_lossy(),
            "--part-size",
            "5MiB",
            "--json",
        ])
        .env("AIRFLOW_CONN_LAKE_WASB", &wasb)
        .env(
            "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
            "google-cloud-platform://",
        )
        .env(
            "STORAGE_EMULATOR_HOST",
            emulator.trim_start_matches("http://"),
        )
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .output()
        .expect("run barge");
    let v = ok(&o);
    assert_eq!(v["files_ok"], 2, "{v}");
    for (name, body) in &files {
        assert_eq!(
            sha256(&read(gcs.as_ref(), &bucket, &format!("{p}{name}")).await),
            sha256(body),
            "{name}"
        );
    }
    let (out, err) = text(&o);
    assert!(
        !out.contains(&key) && !err.contains(&key),
        "the account key was printed"
    );
    let journal = std::fs::read(e.dir.join("journal.sqlite")).expect("journal");
    assert!(
        !String::from_utf8_lossy(&journal).contains(&key),
        "the account key reached the journal"
    );
    std::fs::remove_dir_all(&e.dir).ok();
}
