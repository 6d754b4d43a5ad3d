//! Client certificates (mTLS) as identities.
//!
//! The data plane verified the certificate's chain against its client CA
//! during the TLS handshake and read the name its `principal_from` picks;
//! this source turns that into a principal: the name, with the subject's
//! OU values as groups, and the subject, issuer and serial as claims for
//! policy sources. It trusts the data plane for the chain, as it trusts it
//! for everything else (over gRPC, data planes present the cluster token).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{Identity, PresentedCredential, Principal};
use x509_cert::der::oid::db::rfc4519;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::name::DirectoryString;

use super::{IdentitySource, SourceError};

/// The identity source of verified client certificates.
pub struct ClientCertificates {
    /// How long a data plane may cache an identity (it also stops at the
    /// certificate's notAfter).
    ttl: Duration,
}

impl ClientCertificates {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl }
    }
}

#[async_trait]
impl IdentitySource for ClientCertificates {
    fn name(&self) -> &'static str {
        "mtls"
    }

    async fn authenticate(
        &self,
        credential: &PresentedCredential,
    ) -> Result<Option<Identity>, SourceError> {
        let PresentedCredential::ClientCertificate { der, name } = credential else {
            return Ok(None);
        };
        // A refusal is "no identity", never an error: an error would be a
        // 503, and the certificate is not going to change.
        Ok(identity(der, name, self.ttl)
            .map_err(|reason| {
                tracing::debug!(%reason, "client certificate refused");
            })
            .ok())
    }
}

/// The identity of a certificate the data plane verified, named `name`.
fn identity(der: &[u8], name: &str, ttl: Duration) -> Result<Identity, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} cannot be a principal"));
    }
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let tbs = cert.tbs_certificate();
    let groups: Arc<[Arc<str>]> = tbs
        .subject()
        .iter()
        .filter(|atv| atv.oid == rfc4519::ORGANIZATIONAL_UNIT_NAME)
        .filter_map(|atv| atv.value.decode_as::<DirectoryString>().ok())
        .map(String::from)
        .filter(|ou| !ou.is_empty())
        .map(Arc::from)
        .collect();
    let claims: Arc<[(String, String)]> = Arc::from([
        ("subject".to_owned(), tbs.subject().to_string()),
        ("issuer".to_owned(), tbs.issuer().to_string()),
        (
            "serial".to_owned(),
            hex_upper(tbs.serial_number().as_bytes()),
        ),
    ]);
    Ok(Identity {
        principal: Principal {
            name: Arc::from(name),
            groups,
            access_key: None,
        },
        ttl,
        source: Arc::from("mtls"),
        claims,
    })
}

/// Whether a certificate's name may be a principal: not anonymous, not a
/// group reference or the everyone wildcard a rule would read differently.
fn valid_name(name: &str) -> bool {
    crate::state::valid_principal(name)
        && name != "*"
        && !name.starts_with("group:")
        && !name.chars().any(char::is_control)
}

/// Upper-case hex, as `openssl x509 -serial` prints a serial.
fn hex_upper(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A test certificate of `tests/fixtures/tls` as DER.
    fn fixture(name: &str) -> Arc<[u8]> {
        let path = format!(
            "{}/../tests/fixtures/tls/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let pem = std::fs::read_to_string(path).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine as _;
        Arc::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
    }

    async fn ask(der: Arc<[u8]>, name: &str) -> Option<Identity> {
        ClientCertificates::new(Duration::from_secs(60))
            .authenticate(&PresentedCredential::ClientCertificate {
                der,
                name: name.to_owned(),
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_principal_is_the_name_and_the_groups_are_the_ous() {
        let id = ask(fixture("client.pem"), "alice").await.unwrap();
        assert_eq!(&*id.principal.name, "alice");
        let groups: Vec<&str> = id.principal.groups.iter().map(|g| &**g).collect();
        assert_eq!(groups, ["analysts", "ops"]);
        assert_eq!(id.principal.access_key, None);
        assert_eq!(&*id.source, "mtls");
        assert_eq!(id.ttl, Duration::from_secs(60));
        let claim = |k: &str| {
            id.claims
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert!(
            claim("subject").contains("CN=alice"),
            "{}",
            claim("subject")
        );
        assert!(
            claim("subject").contains("OU=analysts"),
            "{}",
            claim("subject")
        );
        assert_eq!(claim("issuer"), "CN=s3gate test CA");
        assert!(!claim("serial").is_empty());
        // No OU, no groups.
        let bare = ask(fixture("client-bare.pem"), "bob").await.unwrap();
        assert!(bare.principal.groups.is_empty());
    }

    #[tokio::test]
    async fn names_a_rule_would_misread_are_nobody() {
        for name in ["", "*", "group:admins", "*anonymous*", "a\nb"] {
            assert!(ask(fixture("client.pem"), name).await.is_none(), "{name:?}");
        }
        assert!(ask(Arc::from(&b"junk"[..]), "alice").await.is_none());
        // Tokens are another source's.
        let token = PresentedCredential::BearerToken(s3gate_proto::Redacted::new("x".to_owned()));
        assert!(ClientCertificates::new(Duration::from_secs(1))
            .authenticate(&token)
            .await
            .unwrap()
            .is_none());
    }
}
