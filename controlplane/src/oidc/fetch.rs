//! Reading an IdP's JSON documents (discovery, JWKS): http or https over
//! rustls with the webpki roots and an optional CA bundle, bounded in time
//! and size. No redirects are followed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use serde_json::Value;

/// Largest discovery document read.
pub(super) const MAX_DISCOVERY: usize = 64 << 10;
/// Largest JWKS read.
pub(super) const MAX_JWKS: usize = 512 << 10;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole exchange, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl Fetcher {
    /// A client trusting the webpki roots plus the certificates of
    /// `ca_bundle` (a PEM file).
    pub(super) fn new(ca_bundle: Option<&str>) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_bundle {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca_bundle {path}: {e}"))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca_bundle {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_bundle {path}: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("ca_bundle {path}: no certificate in it"));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(Self { client })
    }

    /// GETs `url` and parses its body (at most `limit` bytes) as JSON. Any
    /// status but 200 is an error.
    pub(super) async fn get_json(&self, url: &str, limit: usize) -> Result<Value, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err("not an http(s) URL".to_owned());
        }
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("s3gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("answered HTTP {}", resp.status().as_u16()));
            }
            if resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|n| n > limit)
            {
                return Err(format!("document larger than {limit} bytes"));
            }
            Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("document larger than {limit} bytes")
                    } else {
                        format!("reading the body failed: {e}")
                    }
                })
        };
        let body = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))??;
        serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))
    }
}

/// An error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
