//! `[[policy]] kind = "opa"`: an external OPA server, through its REST data
//! API.
//!
//! Each decision POSTs `{"input": <input document>}` to `url` (e.g.
//! `http://127.0.0.1:8181/v1/data/s3gate/decision`); OPA answers
//! `{"result": <value>}`, the value of that rule: a bool or
//! `{allow, deny, reason, ttl_s, scope_prefix}`, read exactly as the
//! [Rego source](super::rego) reads its query. No `result` (the rule is
//! undefined) abstains. Every call goes through a [`Guard`]: past the
//! timeout, on any error or non-200 answer, or while the breaker is open,
//! the source cannot decide and the data plane answers 503, never allow.
//!
//! HTTP is hyper-util's pooled client over rustls with the webpki roots
//! (the stack the data plane and the OIDC fetcher already use), keep-alive
//! on, no redirects.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use s3gate_proto::AuthorizeRequest;
use serde_json::Value as Json;

use super::guard::Guard;
use super::policy::{PolicySource, Verdict};
use super::{BuildError, SourceError};
use crate::config::RemoteSourceConfig;

const NAME: &str = "opa";

/// Largest answer read.
const MAX_ANSWER: usize = 64 << 10;

pub struct Opa {
    url: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    guard: Guard,
    max_ttl: Duration,
}

/// The OPA source of a `[[policy]]` entry.
pub fn build(config: &RemoteSourceConfig, max_ttl: Duration) -> Result<Arc<Opa>, BuildError> {
    let err = |message: String| BuildError {
        section: "policy",
        kind: NAME,
        message,
    };
    let url: http::Uri = config
        .url
        .parse()
        .map_err(|_| err(format!("url {:?} is not a URL", config.url)))?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(err(format!("url {:?} is not an http(s) URL", config.url)));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("tls config: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build(https);
    Ok(Arc::new(Opa {
        url,
        client,
        guard: Guard::new(NAME, config.timeout),
        max_ttl,
    }))
}

impl Opa {
    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    /// One exchange: the `result` of OPA's answer (`None`: undefined).
    async fn ask(&self, input: Json) -> Result<Option<Json>, SourceError> {
        let fail = |m: String| SourceError::new(NAME, m);
        let body = serde_json::to_vec(&serde_json::json!({ "input": input }))
            .map_err(|e| fail(e.to_string()))?;
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("s3gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| fail(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| fail(format!("request failed: {}", error_chain(&e))))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer failed: {e}")))?
            .to_bytes();
        if status != http::StatusCode::OK {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(fail(format!("answered HTTP {}: {text}", status.as_u16())));
        }
        let mut doc: Json =
            serde_json::from_slice(&body).map_err(|e| fail(format!("answer is not JSON: {e}")))?;
        Ok(doc.get_mut("result").map(Json::take))
    }
}

#[async_trait]
impl PolicySource for Opa {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn decide(&self, req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
        let input = super::input::input_document(req);
        let result = self.guard.run(self.ask(input)).await?;
        let answer = match result {
            None => super::rego::from_json(&Json::Bool(false)),
            Some(value) => super::rego::from_json(&value),
        }
        .ok_or_else(|| {
            SourceError::new(
                NAME,
                "result is neither a bool nor {allow, deny, reason, ttl_s, scope_prefix}",
            )
        })?;
        let mut verdict = answer.into_verdict(NAME, req, self.max_ttl);
        verdict.by = Some(self.url.path().to_owned());
        Ok(verdict)
    }
}

/// An error and its causes on one line.
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls() {
        let config = |url: &str| RemoteSourceConfig {
            url: url.into(),
            timeout: Duration::from_millis(200),
        };
        assert!(build(
            &config("http://127.0.0.1:8181/v1/data/s3gate/decision"),
            Duration::ZERO
        )
        .is_ok());
        for bad in ["ftp://x/v1/data", "not a url", "/v1/data/s3gate"] {
            assert!(build(&config(bad), Duration::ZERO).is_err(), "{bad}");
        }
    }

    /// A port nobody listens on: cannot decide, never an allow.
    #[tokio::test]
    async fn an_unreachable_server_cannot_decide() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let opa = build(
            &RemoteSourceConfig {
                url: format!("http://127.0.0.1:{port}/v1/data/s3gate/decision"),
                timeout: Duration::from_millis(500),
            },
            Duration::from_secs(30),
        )
        .unwrap();
        let req = AuthorizeRequest {
            principal: s3gate_proto::Principal::anonymous(),
            action: "s3:GetObject".into(),
            bucket: "b".into(),
            resource: s3gate_proto::Resource::Object("k".into()),
            context: Default::default(),
        };
        let err = opa.decide(&req).await.unwrap_err();
        assert!(err.refusal.is_none());
        assert!(err.message.contains("request failed"), "{err}");
    }
}
