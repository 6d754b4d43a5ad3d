//! A verified client certificate as the request's identity (mTLS).
//!
//! The TLS handshake verified the chain against the client CA; here the
//! leaf's name (per `principal_from`: the subject's CN, or the first DNS,
//! URI or email SAN) is read and the control plane asked who that is
//! (`ControlPlane::authenticate`, the `mtls` identity source). The answer
//! is cached per certificate (the SHA-256 of its DER), for the TTL the
//! control plane gave and never past the certificate's notAfter: a
//! connection that outlives its certificate is refused from then on.
//!
//! Only requests without a credential of their own get here (see
//! [`super::credential`]).

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{ControlPlaneError, PresentedCredential, Principal};
use sha2::{Digest, Sha256};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use super::{anonymous, Authenticated};
use crate::cache::Ttl;
use crate::error::Error;
use crate::listen::ConnInfo;
use crate::pipeline::Ctx;
use crate::tls::PrincipalFrom;

/// Identities by the SHA-256 of their certificate's DER.
pub type CertCache = Cache<[u8; 32], CertIdentity>;

/// Who a certificate is, as the control plane said.
#[derive(Debug, Clone)]
pub struct CertIdentity {
    principal: Principal,
    claims: Arc<[(String, String)]>,
    /// The control plane's TTL, cut at the certificate's notAfter.
    ttl: Duration,
}

impl Ttl for CertIdentity {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A certificate identity cache of at most `capacity` entries.
pub fn cert_cache(capacity: u64) -> CertCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(crate::cache::ByValueTtl)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Certs,
        ))
        .build()
}

/// The connection's verified client certificate (DER), if it sent one.
pub fn leaf(conn: &ConnInfo) -> Option<&[u8]> {
    conn.tls
        .as_ref()
        .and_then(|tls| tls.client_certificates.first())
        .map(Vec::as_slice)
}

pub(super) async fn verify(
    cx: &Ctx,
    head: &Parts,
    conn: &ConnInfo,
) -> Result<Authenticated, Error> {
    let Some(leaf) = leaf(conn) else {
        return Err(Error::Denied {
            reason: "no client certificate".to_owned(),
            decided_by: None,
        });
    };
    // Nothing signs the body: it is bound as an anonymous request's is.
    let payload = anonymous::unsigned_payload(head)?;
    let fingerprint: [u8; 32] = Sha256::digest(leaf).into();
    let identity = match crate::cache::seen(
        s3gate_observe::CacheKind::Certs,
        cx.certs.get(&fingerprint).await,
    ) {
        Some(identity) => identity,
        None => cx
            .certs
            .try_get_with(fingerprint, resolve(cx, leaf))
            .await
            .map_err(|e| e.to_error())?,
    };
    Ok(Authenticated {
        principal: identity.principal,
        source: "mtls",
        payload,
        chunk_signing: None,
        claims: Some(identity.claims),
    })
}

/// Why a certificate is nobody (cloneable, as the cache shares it with
/// every request waiting for the same certificate).
#[derive(Debug)]
enum Refused {
    Certificate(String),
    ControlPlane(ControlPlaneError),
}

impl Refused {
    fn to_error(&self) -> Error {
        match self {
            Self::Certificate(reason) => Error::Denied {
                reason: reason.clone(),
                decided_by: None,
            },
            // A certificate no identity source takes is a refusal, not a
            // malformed token.
            Self::ControlPlane(ControlPlaneError::NotAuthenticated(reason)) => Error::Denied {
                reason: format!("client certificate not accepted: {reason}"),
                decided_by: None,
            },
            Self::ControlPlane(e) => Error::from(e),
        }
    }
}

async fn resolve(cx: &Ctx, leaf: &[u8]) -> Result<CertIdentity, Refused> {
    let cert = ClientCert::parse(leaf).map_err(Refused::Certificate)?;
    let left = cert.not_after - crate::unix_now();
    if left <= 0 {
        return Err(Refused::Certificate(
            "client certificate expired".to_owned(),
        ));
    }
    let name = cert
        .principal_name(cx.cfg.principal_from)
        .map_err(Refused::Certificate)?;
    let identity = cx
        .control_plane
        .authenticate(PresentedCredential::ClientCertificate {
            der: Arc::from(leaf),
            name,
        })
        .await
        .map_err(Refused::ControlPlane)?;
    Ok(CertIdentity {
        principal: identity.principal,
        claims: identity.claims,
        ttl: identity
            .ttl
            .min(Duration::from_secs(u64::try_from(left).unwrap_or(0))),
    })
}

/// What the data plane reads from a client certificate.
#[derive(Debug)]
pub struct ClientCert {
    cert: x509_cert::Certificate,
    /// Unix seconds.
    pub not_after: i64,
}

impl ClientCert {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| format!("client certificate does not parse: {e}"))?;
        let not_after = cert
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs();
        Ok(Self {
            cert,
            not_after: i64::try_from(not_after).unwrap_or(i64::MAX),
        })
    }

    /// The name `from` picks: the subject's one CN, or the first SAN of the
    /// kind. A certificate without it (or with two CNs, which would make
    /// the choice arbitrary) names nobody.
    pub fn principal_name(&self, from: PrincipalFrom) -> Result<String, String> {
        let tbs = self.cert.tbs_certificate();
        let name = match from {
            PrincipalFrom::Cn => {
                let mut cns = tbs
                    .subject()
                    .iter()
                    .filter(|atv| atv.oid == x509_cert::der::oid::db::rfc4519::COMMON_NAME);
                let first = cns.next();
                if cns.next().is_some() {
                    return Err("client certificate has more than one CN".to_owned());
                }
                let Some(cn) = first else {
                    return Err("client certificate has no CN".to_owned());
                };
                let value: x509_cert::ext::pkix::name::DirectoryString = cn
                    .value
                    .decode_as()
                    .map_err(|e| format!("client certificate CN is not a string: {e}"))?;
                String::from(value)
            }
            PrincipalFrom::SanDns | PrincipalFrom::SanUri | PrincipalFrom::SanEmail => {
                let sans = tbs
                    .get_extension::<SubjectAltName>()
                    .map_err(|e| format!("client certificate SANs do not parse: {e}"))?
                    .map(|(_critical, sans)| sans.0)
                    .unwrap_or_default();
                sans.iter()
                    .find_map(|san| match (from, san) {
                        (PrincipalFrom::SanDns, GeneralName::DnsName(s))
                        | (PrincipalFrom::SanUri, GeneralName::UniformResourceIdentifier(s))
                        | (PrincipalFrom::SanEmail, GeneralName::Rfc822Name(s)) => {
                            Some(s.to_string())
                        }
                        _ => None,
                    })
                    .ok_or_else(|| {
                        format!(
                            "client certificate has no {} SAN",
                            match from {
                                PrincipalFrom::SanDns => "DNS",
                                PrincipalFrom::SanUri => "URI",
                                _ => "email",
                            }
                        )
                    })?
            }
        };
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(format!(
                "client certificate {} is empty or holds control characters",
                from.as_str()
            ));
        }
        Ok(name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    use super::*;

    /// A test certificate of `tests/fixtures/tls` (made by its make.py).
    fn fixture(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls/");
        let pem = std::fs::read(format!("{path}{name}")).unwrap();
        CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
    }

    fn check(cert: &str, from: PrincipalFrom, expected: Result<&str, &str>) {
        let parsed = ClientCert::parse(&fixture(cert)).unwrap();
        assert_eq!(
            parsed.principal_name(from).as_deref(),
            expected.map_err(str::to_owned).as_deref(),
            "{cert} {from:?}"
        );
    }

    #[test]
    fn the_principal_is_the_name_principal_from_picks() {
        check("client.pem", PrincipalFrom::Cn, Ok("alice"));
        check(
            "client.pem",
            PrincipalFrom::SanDns,
            Ok("alice.clients.test"),
        );
        check(
            "client.pem",
            PrincipalFrom::SanUri,
            Ok("spiffe://clients.test/alice"),
        );
        check(
            "client.pem",
            PrincipalFrom::SanEmail,
            Ok("alice@clients.test"),
        );
        check("client-bare.pem", PrincipalFrom::Cn, Ok("bob"));
        check(
            "client-bare.pem",
            PrincipalFrom::SanDns,
            Err("client certificate has no DNS SAN"),
        );
        check(
            "client-bare.pem",
            PrincipalFrom::SanUri,
            Err("client certificate has no URI SAN"),
        );
        check(
            "client-bare.pem",
            PrincipalFrom::SanEmail,
            Err("client certificate has no email SAN"),
        );
        // The server certificate's CN is there too; notAfter is 2099-12-31.
        let server = ClientCert::parse(&fixture("server.pem")).unwrap();
        assert_eq!(
            server.principal_name(PrincipalFrom::Cn).unwrap(),
            "localhost"
        );
        assert_eq!(server.not_after, 4_102_358_400);
    }

    #[test]
    fn what_is_not_a_certificate_names_nobody() {
        assert!(ClientCert::parse(b"").is_err());
        assert!(ClientCert::parse(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        let mut der = fixture("client.pem");
        der.truncate(der.len() / 2);
        assert!(ClientCert::parse(&der).is_err());
    }
}
