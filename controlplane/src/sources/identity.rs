//! Identity sources: who an access key belongs to, and the SigV4 signing key
//! derived from its secret (the secret itself never leaves the source);
//! whether a legacy SigV2 signature was made with that secret; who a bearer
//! token or client certificate belongs to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{
    Identity, PresentedCredential, Principal, SigV2Grant, SigV2Request, SigningKey,
    SigningKeyGrant, SigningKeyRequest,
};

use super::SourceError;
use crate::config::Secret;
use crate::state::State;

#[async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// The principal and the signing key derived for the request's date,
    /// region and service; `Ok(None)` when the key is not this source's.
    /// Sources of tokens or certificates, which own no access keys, keep
    /// this default.
    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError> {
        let _ = req;
        Ok(None)
    }

    /// The principal an access key belongs to (for Explain), if this
    /// source knows it.
    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        let _ = access_key;
        Ok(None)
    }

    /// Whether a SigV2 signature (HMAC-SHA1 of the string to sign under the
    /// access key's secret) matches; `Ok(None)` when the key is not this
    /// source's. Sources whose keys cannot sign SigV2 (temporary session
    /// keys, which need their token checked) keep this default.
    async fn verify_sigv2(&self, req: &SigV2Request) -> Result<Option<SigV2Check>, SourceError> {
        let _ = req;
        Ok(None)
    }

    /// Who a bearer token or a verified client certificate belongs to;
    /// `Ok(None)` when the credential is not for this source. Sources of
    /// access keys know none.
    async fn authenticate(
        &self,
        credential: &PresentedCredential,
    ) -> Result<Option<Identity>, SourceError> {
        let _ = credential;
        Ok(None)
    }
}

/// What an identity source says of a SigV2 signature made with one of its keys.
#[derive(Debug)]
pub enum SigV2Check {
    Match(SigV2Grant),
    Mismatch,
}

/// s3gate-issued keys, from the state (config file, Admin API).
pub struct Keys {
    keys: HashMap<String, SecretEntry>,
    ttl: Duration,
}

/// An access key's secret and principal, wherever a source found them (the
/// state, a database row, a plugin's answer): what every source of secrets
/// answers SigV4 and SigV2 from, so the secret stays in the control plane.
pub struct SecretEntry {
    pub secret: Secret,
    pub principal: Principal,
}

impl SecretEntry {
    /// The signing key derived for the request's date, region and service.
    pub fn grant(&self, req: &SigningKeyRequest, ttl: Duration) -> SigningKeyGrant {
        SigningKeyGrant {
            key: SigningKey::derive(self.secret.expose(), &req.date, &req.region, &req.service),
            principal: self.principal.clone(),
            ttl,
            session: None,
        }
    }

    /// Whether the SigV2 signature was made with the secret.
    pub fn check_sigv2(&self, req: &SigV2Request, ttl: Duration) -> SigV2Check {
        let matches = s3gate_s3::sigv2::signature_matches(
            self.secret.expose().as_bytes(),
            req.string_to_sign.as_bytes(),
            &req.signature,
        );
        if matches {
            SigV2Check::Match(SigV2Grant {
                principal: self.principal.clone(),
                ttl,
            })
        } else {
            SigV2Check::Mismatch
        }
    }
}

impl Keys {
    pub fn from_state(state: &State, ttl: Duration) -> Self {
        let keys = state
            .keys
            .values()
            .map(|k| {
                let principal = Principal {
                    name: Arc::from(k.principal.as_str()),
                    groups: k.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                    access_key: Some(Arc::from(k.access_key.as_str())),
                };
                (
                    k.access_key.clone(),
                    SecretEntry {
                        secret: k.secret.clone(),
                        principal,
                    },
                )
            })
            .collect();
        Self { keys, ttl }
    }
}

#[async_trait]
impl IdentitySource for Keys {
    fn name(&self) -> &'static str {
        "keys"
    }

    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError> {
        Ok(self
            .keys
            .get(&req.access_key)
            .map(|e| e.grant(req, self.ttl)))
    }

    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        Ok(self.keys.get(access_key).map(|k| k.principal.clone()))
    }

    async fn verify_sigv2(&self, req: &SigV2Request) -> Result<Option<SigV2Check>, SourceError> {
        Ok(self
            .keys
            .get(&req.access_key)
            .map(|e| e.check_sigv2(req, self.ttl)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::state::KeyRecord;

    #[tokio::test]
    async fn keys_check_sigv2_with_the_secret() {
        let mut state = State::default();
        state.keys.insert(
            "AK1".into(),
            KeyRecord {
                access_key: "AK1".into(),
                secret: Secret::new("s1"),
                principal: "p1".into(),
                groups: vec!["g".into()],
                created: 0,
            },
        );
        let keys = Keys::from_state(&state, Duration::from_secs(60));
        let sts = "GET\n\n\n1764776159\n/b/k";
        let ask = |access_key: &str, secret: &str| SigV2Request {
            access_key: access_key.into(),
            string_to_sign: sts.into(),
            signature: s3gate_s3::sigv2::sign(secret.as_bytes(), sts.as_bytes()),
        };
        match keys.verify_sigv2(&ask("AK1", "s1")).await.unwrap() {
            Some(SigV2Check::Match(grant)) => {
                assert_eq!(&*grant.principal.name, "p1");
                assert_eq!(grant.principal.access_key.as_deref(), Some("AK1"));
                assert_eq!(grant.ttl, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            keys.verify_sigv2(&ask("AK1", "wrong")).await.unwrap(),
            Some(SigV2Check::Mismatch)
        ));
        let mut tampered = ask("AK1", "s1");
        tampered.string_to_sign.push('x');
        assert!(matches!(
            keys.verify_sigv2(&tampered).await.unwrap(),
            Some(SigV2Check::Mismatch)
        ));
        assert!(keys
            .verify_sigv2(&ask("AK2", "s1"))
            .await
            .unwrap()
            .is_none());
    }
}
