//! The HTTP client exchanges use: http or https over rustls with the webpki
//! roots and an optional CA bundle, bounded in time and size. No redirects
//! are followed, and no error quotes a request or answer body (either may
//! hold a secret).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The whole exchange, connect to last byte: below a data plane's RPC
/// timeout, so a hanging token service gives a 503, not a client timeout.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read (a token answer is a few kilobytes).
const MAX_ANSWER: usize = 64 << 10;

pub(super) struct Poster {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// What came back: the status and the body.
pub(super) struct Answer {
    pub status: http::StatusCode,
    pub body: Bytes,
}

impl Poster {
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
            .pool_max_idle_per_host(1)
            .build(https);
        Ok(Self { client })
    }

    /// Sends `req` and reads the answer (any status), within
    /// [`REQUEST_TIMEOUT`].
    pub(super) async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Answer, String> {
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|_| format!("HTTP {}: answer unreadable or too large", status.as_u16()))?;
            Ok(Answer { status, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))?
    }
}

/// An error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused"). Transport errors name no body.
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
