//! Endpoint resolution once per bucket, not once per object.
//!
//! The SDK runs S3's endpoint rules twice for every request (once to choose the auth scheme,
//! once for the URL), and its own one-entry cache misses on every new object, because the
//! object key is one of the rules' parameters. The rules never read the key (nor `Prefix` or
//! `CopySource`): the endpoint depends on the bucket and the connection's settings. A profile
//! of 5,000 small objects had the rules at about 3% of barge's CPU. This resolver asks the SDK's
//! own rules once per bucket and settings and answers later requests from a small map; a test
//! below checks, against the SDK in the tree, that the key really does not change the answer.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_s3::config::endpoint::{
    DefaultResolver, Endpoint, EndpointFuture, Params, ResolveEndpoint,
};

/// Buckets remembered per connection; past this the map starts again (a run touches a few).
const MAX_BUCKETS: usize = 64;

/// Every rule parameter except the per-object ones. A parameter a newer SDK adds is not here;
/// the test below then fails if it makes answers differ.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketParams {
    bucket: Option<String>,
    region: Option<String>,
    endpoint: Option<String>,
    flags: [Option<bool>; 11],
}

impl BucketParams {
    fn of(p: &Params) -> Self {
        Self {
            bucket: p.bucket().map(str::to_string),
            region: p.region().map(str::to_string),
            endpoint: p.endpoint().map(str::to_string),
            flags: [
                p.use_fips(),
                p.use_dual_stack(),
                p.force_path_style(),
                p.accelerate(),
                p.use_global_endpoint(),
                p.use_object_lambda_endpoint(),
                p.disable_access_points(),
                p.disable_multi_region_access_points(),
                p.use_arn_region(),
                p.use_s3_express_control_endpoint(),
                p.disable_s3_express_session_auth(),
            ],
        }
    }
}

/// The SDK's resolver behind a per-bucket memory.
#[derive(Debug)]
pub(super) struct PerBucket<R = DefaultResolver> {
    inner: R,
    known: Mutex<HashMap<BucketParams, Endpoint>>,
}

impl PerBucket {
    pub(super) fn new() -> Self {
        Self::over(DefaultResolver::new())
    }
}

impl<R> PerBucket<R> {
    fn over(inner: R) -> Self {
        Self {
            inner,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self, key: &BucketParams) -> Option<Endpoint> {
        self.known.lock().ok()?.get(key).cloned()
    }

    fn remember(&self, key: BucketParams, endpoint: &Endpoint) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= MAX_BUCKETS {
                known.clear();
            }
            known.insert(key, endpoint.clone());
        }
    }
}

impl<R: ResolveEndpoint> ResolveEndpoint for PerBucket<R> {
    fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
        let key = BucketParams::of(params);
        if let Some(e) = self.known(&key) {
            return EndpointFuture::ready(Ok(e));
        }
        // Resolved from the request's own parameters; errors are not remembered.
        EndpointFuture::new(async move {
            let e = self.inner.resolve_endpoint(params).await?;
            self.remember(key, &e);
            Ok(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn params(bucket: &str, endpoint: Option<&str>, path_style: bool, key: Option<&str>) -> Params {
        Params::builder()
            .bucket(bucket)
            .region("eu-west-1")
            .set_endpoint(endpoint.map(str::to_string))
            .force_path_style(path_style)
            .set_key(key.map(str::to_string))
            .set_prefix(key.map(|k| format!("{k}/")))
            .set_copy_source(key.map(|k| format!("other/{k}")))
            .build()
            .expect("params")
    }

    async fn resolve(r: &impl ResolveEndpoint, p: &Params) -> Endpoint {
        r.resolve_endpoint(p).await.expect("resolves")
    }

    const KEYS: [Option<&str>; 6] = [
        None,
        Some("a"),
        Some("dir/file.bin"),
        Some("../up"),
        Some("sp ace/ü/%41"),
        Some("a..b/./c"),
    ];

    #[tokio::test]
    async fn the_sdk_rules_do_not_read_the_object_key() {
        // If this fails after an SDK upgrade, the rules started reading a per-object
        // parameter: PerBucket must then stop ignoring it.
        let sdk = DefaultResolver::new();
        for (endpoint, path_style) in [
            (None, false),
            (None, true),
            (Some("http://127.0.0.1:3900"), true),
            (Some("https://s3.example.com"), false),
        ] {
            for bucket in ["data", "my.dotted.bucket"] {
                let first = resolve(&sdk, &params(bucket, endpoint, path_style, None)).await;
                for key in KEYS {
                    let e = resolve(&sdk, &params(bucket, endpoint, path_style, key)).await;
                    assert_eq!(e, first, "{bucket} {endpoint:?} {key:?}");
                }
            }
        }
    }

    #[derive(Debug, Default)]
    struct Counting {
        calls: AtomicUsize,
        sdk: DefaultResolver,
    }

    impl ResolveEndpoint for Counting {
        fn resolve_endpoint<'a>(&'a self, params: &'a Params) -> EndpointFuture<'a> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.sdk.resolve_endpoint(params)
        }
    }

    #[tokio::test]
    async fn one_resolution_per_bucket_and_the_sdks_answers() {
        let r = PerBucket::over(Counting::default());
        let sdk = DefaultResolver::new();
        let ep = Some("http://127.0.0.1:3900");
        for bucket in ["src", "dst", "src"] {
            for key in KEYS {
                let p = params(bucket, ep, true, key);
                assert_eq!(resolve(&r, &p).await, resolve(&sdk, &p).await);
            }
        }
        assert_eq!(
            r.inner.calls.load(Ordering::Relaxed),
            2,
            "src and dst once each"
        );
        // A setting that changes the answer is a different entry.
        let virtual_host = params("src", ep, false, Some("k"));
        assert_eq!(
            resolve(&r, &virtual_host).await,
            resolve(&sdk, &virtual_host).await
        );
        assert_eq!(r.inner.calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn errors_are_not_remembered() {
        let r = PerBucket::over(Counting::default());
        // Accelerate with a custom endpoint is refused by the rules.
        let bad = Params::builder()
            .bucket("b")
            .region("us-east-1")
            .endpoint("http://127.0.0.1:3900")
            .accelerate(true)
            .build()
            .expect("params");
        for _ in 0..2 {
            assert!(r.resolve_endpoint(&bad).await.is_err());
        }
        assert_eq!(r.inner.calls.load(Ordering::Relaxed), 2);
    }
}
