//! Pooled HTTP clients towards backends: plain http, or https over rustls
//! with the webpki roots, an optional extra CA bundle, and (for development
//! only) no certificate verification.
//!
//! Clients are built on a route-cache miss and kept per TLS setting, so the
//! request path only clones an `Arc`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use s3gate_proto::Backend;

use crate::body::Body;

pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, Body>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    ca_bundle: Option<String>,
    insecure: bool,
}

pub struct Upstreams {
    connect_timeout: Duration,
    /// Only touched on route-cache misses, never per request.
    clients: Mutex<HashMap<TlsKey, HttpClient>>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn client_for(&self, backend: &Backend) -> Result<HttpClient, String> {
        let key = TlsKey {
            ca_bundle: backend.ca_bundle.clone(),
            insecure: backend.insecure_skip_verify,
        };
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| "client map poisoned".to_owned())?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let client = build(&key, self.connect_timeout)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build(key: &TlsKey, connect_timeout: Duration) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls config: {e}"))?;
    let tls = if key.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &key.ca_bundle {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca bundle {path}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca bundle {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca bundle {path}: {e}"))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let mut http = HttpConnector::new_with_resolver(Resolver(GaiResolver::new()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .http1_max_buf_size(crate::CONNECTION_BUFFER)
        .build(https))
}

/// The system resolver, except that `localhost` and `*.localhost` are
/// loopback without asking it (RFC 6761 §6.3): virtual-host-style requests
/// to a backend on `localhost` need `<bucket>.localhost` to resolve, and
/// glibc does not do that by itself.
#[derive(Clone)]
pub struct Resolver(GaiResolver);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if is_localhost(name.as_str()) {
            let addrs = vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
            ];
            return Box::pin(std::future::ready(Ok(addrs.into_iter())));
        }
        let lookup = self.0.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host
            .len()
            .checked_sub(".localhost".len())
            .and_then(|i| host.get(i..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
}

/// Accepts any server certificate. Only reachable through a backend's
/// `insecure_skip_verify = true`, which is documented as development-only.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_names() {
        for h in [
            "localhost",
            "LOCALHOST",
            "data.localhost",
            "a.b.localhost.",
            "x.LocalHost",
        ] {
            assert!(is_localhost(h), "{h}");
        }
        for h in [
            "localhost.com",
            "notlocalhost",
            "example.com",
            "",
            "localhos",
        ] {
            assert!(!is_localhost(h), "{h}");
        }
    }
}
