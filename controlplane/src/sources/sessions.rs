//! Temporary sessions (STS) as an identity source: the signing key of a
//! session's access key, bound to its token and expiry.
//!
//! A standing source: it reads the [`Store`] on every lookup (a data-plane
//! cache miss), so a session minted through any replica is usable at once
//! and a revoked one is gone at once. Only keys of the session shape
//! (`ASIA…`) reach the store.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{Principal, SessionGrant, SigningKey, SigningKeyGrant, SigningKeyRequest};

use super::{IdentitySource, SourceError};
use crate::session::{is_session_key, SessionLookup, SessionRecord};
use crate::store::Store;

pub struct Sessions {
    store: Arc<dyn Store>,
    /// The longest a data plane may cache a session's grant (`key_ttl`);
    /// never past the session's expiry.
    ttl: Duration,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    async fn lookup(&self, access_key: &str) -> Result<SessionLookup, SourceError> {
        if !is_session_key(access_key) {
            return Ok(SessionLookup::Unknown);
        }
        self.store
            .session(access_key)
            .await
            .map_err(|e| SourceError::new("sessions", e.to_string()))
    }
}

fn principal(s: &SessionRecord) -> Principal {
    Principal {
        name: Arc::from(s.info.principal.as_str()),
        groups: s
            .info
            .groups
            .iter()
            .map(|g| Arc::from(g.as_str()))
            .collect(),
        access_key: Some(Arc::from(s.info.access_key.as_str())),
    }
}

#[async_trait]
impl IdentitySource for Sessions {
    fn name(&self) -> &'static str {
        "sessions"
    }

    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError> {
        let s = match self.lookup(&req.access_key).await? {
            SessionLookup::Live(s) => s,
            // Its secret is gone, so no signature can be checked: the
            // caller hears ExpiredToken (rather than InvalidAccessKeyId)
            // only when it shows the session's token; anyone else learns
            // no more than of any unknown key.
            SessionLookup::Expired { token_sha256 } => {
                let shown = match (&req.security_token_sha256, &token_sha256) {
                    (Some(presented), Some(expected)) => {
                        s3gate_s3::sts::token_hash_matches(presented, expected)
                    }
                    _ => false,
                };
                if shown {
                    return Err(SourceError::expired("sessions", "the session has expired"));
                }
                return Ok(None);
            }
            SessionLookup::Unknown => return Ok(None),
        };
        let left = u64::try_from(s.info.expires - crate::unix_now()).unwrap_or(0);
        Ok(Some(SigningKeyGrant {
            key: SigningKey::derive(s.secret.expose(), &req.date, &req.region, &req.service),
            principal: principal(&s),
            ttl: self.ttl.min(Duration::from_secs(left)),
            session: Some(Arc::new(SessionGrant {
                token_sha256: s.token_sha256,
                expires_unix: s.info.expires,
                claims: Arc::from(s.info.claims.clone()),
            })),
        }))
    }

    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        Ok(match self.lookup(access_key).await? {
            SessionLookup::Live(s) => Some(principal(&s)),
            SessionLookup::Expired { .. } | SessionLookup::Unknown => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::session::{SessionInfo, SessionLimits};
    use crate::store::MemoryStore;

    fn session(ak: &str, expires: i64) -> SessionRecord {
        SessionRecord {
            info: SessionInfo {
                access_key: ak.into(),
                principal: "alice@example.com".into(),
                groups: vec!["analysts".into(), "dev".into()],
                claims: vec![("email".into(), "alice@example.com".into())],
                role_arn: "arn:aws:iam::000000000000:role/analysts".into(),
                session_name: "s".into(),
                subject: "alice".into(),
                provider: "http://idp".into(),
                created: crate::unix_now(),
                expires,
            },
            secret: Secret::new("session-secret"),
            token_sha256: s3gate_s3::sts::token_sha256("session-token"),
        }
    }

    fn ask(ak: &str) -> SigningKeyRequest {
        SigningKeyRequest {
            access_key: ak.into(),
            date: "20240101".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            security_token_sha256: Some(s3gate_s3::sts::token_sha256("session-token")),
        }
    }

    #[tokio::test]
    async fn live_sessions_are_bound_to_token_and_expiry() {
        let store = Arc::new(MemoryStore::new());
        let source = Sessions::new(store.clone(), Duration::from_secs(60));
        let live = "ASIAAAAAAAAAAAAAAAA2";
        let soon = "ASIAAAAAAAAAAAAAAAA3";
        let gone = "ASIAAAAAAAAAAAAAAAA4";
        let now = crate::unix_now();
        store
            .put_session(&session(live, now + 3600), SessionLimits::default())
            .await
            .unwrap();
        store
            .put_session(&session(soon, now + 5), SessionLimits::default())
            .await
            .unwrap();
        store
            .put_session(&session(gone, now - 5), SessionLimits::default())
            .await
            .unwrap();

        let grant = source.signing_key(&ask(live)).await.unwrap().unwrap();
        assert_eq!(
            grant.key.as_bytes(),
            SigningKey::derive("session-secret", "20240101", "us-east-1", "s3").as_bytes()
        );
        assert_eq!(&*grant.principal.name, "alice@example.com");
        assert_eq!(grant.principal.groups.len(), 2);
        assert_eq!(grant.ttl, Duration::from_secs(60));
        let bound = grant.session.unwrap();
        assert!(s3gate_s3::sts::token_matches(
            "session-token",
            &bound.token_sha256
        ));
        assert_eq!(bound.expires_unix, now + 3600);
        assert_eq!(bound.claims[0].0, "email");

        // Cached no longer than the session lives.
        let grant = source.signing_key(&ask(soon)).await.unwrap().unwrap();
        assert!(grant.ttl <= Duration::from_secs(5));

        let expired = source.signing_key(&ask(gone)).await.unwrap_err();
        assert_eq!(expired.refusal, Some(crate::sources::Refusal::Expired));
        // Without its token (or with another), an expired session's key is
        // as unknown as any: the caller cannot sign, so it learns nothing.
        for token in [None, Some(s3gate_s3::sts::token_sha256("another-token"))] {
            let mut without = ask(gone);
            without.security_token_sha256 = token;
            assert!(source.signing_key(&without).await.unwrap().is_none());
        }
        assert!(source.principal(gone).await.unwrap().is_none());
        let unknown = "ASIAAAAAAAAAAAAAAAA5";
        assert!(source.signing_key(&ask(unknown)).await.unwrap().is_none());
        // Keys of another shape never reach the store.
        assert!(source
            .signing_key(&ask("S3GATEALICE01"))
            .await
            .unwrap()
            .is_none());
    }
}
