//! Proxies from the environment, as curl and the AWS CLI read them: `HTTPS_PROXY`,
//! `HTTP_PROXY` and `ALL_PROXY` (or their lower-case forms), minus the hosts `NO_PROXY` names.
//! The SDK's client connects through such a proxy; the lean path does not, so a store whose
//! endpoint goes through one leaves every request to the SDK.

use aws_smithy_http_client::proxy::ProxyConfig;
use hyper_util::client::proxy::matcher::Matcher;

/// The proxy (`host:port`, never its credentials) that the environment routes `endpoint`
/// through, if any.
pub(super) fn proxy_for(endpoint: &str) -> Option<String> {
    through(&Matcher::from_env(), endpoint)
}

fn through(matcher: &Matcher, endpoint: &str) -> Option<String> {
    let uri: http::Uri = endpoint.parse().ok()?;
    let proxy = matcher.intercept(&uri)?;
    let uri = proxy.uri();
    Some(match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        _ => "a proxy".to_string(),
    })
}

/// What the SDK's own clients are given: the same environment.
pub(crate) fn sdk_config() -> ProxyConfig {
    ProxyConfig::from_env()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(http: &str, https: &str, no: &str) -> Matcher {
        Matcher::builder().http(http).https(https).no(no).build()
    }

    #[test]
    fn an_endpoint_goes_through_the_proxy_for_its_scheme_unless_no_proxy_names_it() {
        let m = matcher(
            "http://user:secret@plain.proxy:3128",
            "http://tls.proxy:8080",
            "internal.example,10.0.0.0/8",
        );
        assert_eq!(
            through(&m, "http://s3.example:9000").as_deref(),
            Some("plain.proxy:3128"),
            "the proxy's credentials are never part of what is logged"
        );
        assert_eq!(
            through(&m, "https://s3.example").as_deref(),
            Some("tls.proxy:8080")
        );
        assert_eq!(through(&m, "https://store.internal.example:443"), None);
        assert_eq!(through(&m, "http://10.1.2.3:3900"), None);
        assert_eq!(
            through(&Matcher::builder().build(), "http://s3.example"),
            None
        );
        assert_eq!(through(&m, "not a url"), None);
    }
}
