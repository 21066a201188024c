//! The conformance suite against Azurite (started by scripts/testbed.sh), with each way of
//! signing in that Azurite takes: a connection string, an account key (barge signs an account
//! SAS) and a SAS token.

use barge_store::azure::{AzureConfig, AzureCredentials, AzureStore, UPLOADS, create_container};
use barge_store::s3::Secret;
use barge_store::{Store, conformance};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts Azurite")
    })
}

/// A store on Azurite and a container of its own, so that tests never share one.
pub async fn azure(tag: &str, credentials: AzureCredentials) -> (AzureStore, String) {
    let cfg = AzureConfig {
        name: "azure".into(),
        account: Some(env("BARGE_TEST_AZ_ACCOUNT")),
        endpoint: Some(env("BARGE_TEST_AZ_ENDPOINT")),
        credentials,
        http: Default::default(),
    };
    let store = AzureStore::connect(cfg).await.expect("connect to Azurite");
    let container = format!("{tag}-{}", uuid::Uuid::new_v4().simple());
    create_container(&store, &container)
        .await
        .expect("create container");
    (store, container)
}

#[tokio::test]
async fn azure_store_conforms() {
    let creds =
        AzureCredentials::ConnectionString(Secret::new(env("BARGE_TEST_AZ_CONNECTION_STRING")));
    let (store, container) = azure("conf", creds).await;
    let (s, c, p) = (&store, container.as_str(), "suite/");
    // Every check of `run_all` but `control_characters_list`: Azurite answers a listing that
    // holds a blob name with a control character with HTTP 500 (Azure itself encodes such
    // names in its listing).
    conformance::put_head_get(s, c, p).await;
    conformance::odd_keys(s, c, p).await;
    conformance::missing_object(s, c, p).await;
    conformance::pinned_reads(s, c, p).await;
    conformance::multipart_round_trip(s, c, p).await;
    conformance::abort_leaves_nothing(s, c, p).await;
    conformance::wrong_checksum_rejected(s, c, p).await;
    conformance::server_side_part_copy(s, c, p).await;
    conformance::delete_is_exact(s, c, p).await;
    conformance::pinned_delete_spares_a_rewrite(s, c, p).await;
    let left = store
        .list_uploads(&container, "")
        .await
        .expect("list uploads");
    assert!(left.is_empty(), "upload openers left: {left:?}");
    let listing = store.list(&container, "").await.expect("list");
    assert!(
        listing
            .objects
            .iter()
            .all(|o| !o.path.key.starts_with(UPLOADS)),
        "a listing shows no opener"
    );
}

#[tokio::test]
async fn an_account_key_signs_requests() {
    let (store, container) = azure(
        "key",
        AzureCredentials::AccountKey(Secret::new(env("BARGE_TEST_AZ_KEY"))),
    )
    .await;
    conformance::put_head_get(&store, &container, "key/").await;
    // A wrong key is refused, and the message holds no key or signature.
    let wrong = AzureConfig {
        name: "azure".into(),
        account: Some(env("BARGE_TEST_AZ_ACCOUNT")),
        endpoint: Some(env("BARGE_TEST_AZ_ENDPOINT")),
        credentials: AzureCredentials::AccountKey(Secret::new("d3Jvbmcga2V5IGZvciB0ZXN0cw==")),
        http: Default::default(),
    };
    let bad = AzureStore::connect(wrong).await.expect("connect");
    let e = bad
        .head(&barge_store::ObjectPath::new(container.clone(), "key/x"))
        .await
        .expect_err("a wrong key is refused");
    let msg = e.to_string();
    assert!(
        matches!(e, barge_store::StoreError::AccessDenied { .. }),
        "{msg}"
    );
    assert!(!msg.contains("sig="), "no signature in messages: {msg}");
}
