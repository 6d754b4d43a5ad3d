//! JWT bearer tokens of the configured OpenID Connect providers: a standing
//! identity source (its providers keep their key caches across every state
//! change), registered when the config has `[[oidc]]` entries.
//!
//! A token that verifies becomes an [`Identity`]: the provider's
//! `principal_claim` as the principal, its `groups_claim` as the groups,
//! source `jwt`, the token's claims for policies, and a TTL that ends at
//! the token's `exp` (the data plane caches it no longer). A token that
//! does not verify is refused (`InvalidToken`), an expired one is
//! `ExpiredToken`, and an IdP that cannot be reached fails closed (503).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{Identity, PresentedCredential, Principal};
use serde_json::Value;

use super::{IdentitySource, Registry, SourceError};
use crate::oidc::{Providers, TokenError, VerifiedToken};

/// What the access log and a decision's request context call an identity
/// from a bearer token.
pub const SOURCE: &str = "jwt";

/// Most claims passed on to policies, and the longest value kept.
const MAX_CLAIMS: usize = 64;
const MAX_CLAIM_VALUE: usize = 1024;

/// Bearer tokens of the configured providers.
pub struct Oidc {
    providers: Arc<Providers>,
}

impl Oidc {
    pub fn new(providers: Arc<Providers>) -> Self {
        Self { providers }
    }
}

/// Registers the bearer-token source among a replica's standing sources.
/// Without providers there is nothing to register.
pub fn register(registry: &mut Registry, providers: Arc<Providers>) {
    if !providers.is_empty() {
        registry.identity.push(Arc::new(Oidc::new(providers)));
    }
}

#[async_trait]
impl IdentitySource for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    async fn authenticate(
        &self,
        credential: &PresentedCredential,
    ) -> Result<Option<Identity>, SourceError> {
        let PresentedCredential::BearerToken(token) = credential else {
            return Ok(None);
        };
        match self.providers.verify_any(token.expose()).await {
            Ok(v) => Ok(Some(identity(&v, crate::unix_now()))),
            Err(TokenError::Expired) => Err(SourceError::expired(self.name(), "token has expired")),
            Err(e @ (TokenError::NotYetValid | TokenError::Invalid(_))) => {
                Err(SourceError::refused(self.name(), e.to_string()))
            }
            Err(e @ TokenError::Unavailable(_)) => {
                Err(SourceError::new(self.name(), e.to_string()))
            }
        }
    }
}

/// The identity of a verified token at `now` (Unix seconds).
pub fn identity(v: &VerifiedToken, now: i64) -> Identity {
    let ttl = u64::try_from(v.expires_unix.saturating_sub(now)).unwrap_or(0);
    Identity {
        principal: Principal {
            name: Arc::from(v.principal.as_str()),
            groups: v.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
            access_key: None,
        },
        ttl: Duration::from_secs(ttl),
        source: Arc::from(SOURCE),
        claims: claims(v),
    }
}

/// The token's claims as policies see them: strings as they are, anything
/// else as JSON text; sorted by name, bounded in number and size.
fn claims(v: &VerifiedToken) -> Arc<[(String, String)]> {
    let mut out: Vec<(String, String)> = v
        .claims
        .iter()
        .filter_map(|(k, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (text.len() <= MAX_CLAIM_VALUE).then(|| (k.clone(), text))
        })
        .collect();
    out.sort();
    out.truncate(MAX_CLAIMS);
    Arc::from(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn verified(claims: Value) -> VerifiedToken {
        VerifiedToken {
            provider: Arc::from("corp"),
            issuer: "https://idp.example.com".into(),
            subject: "u-1".into(),
            principal: "alice@example.com".into(),
            groups: vec!["analysts".into(), "staff".into()],
            audience: "s3gate".into(),
            expires_unix: 1_000_600,
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_verified_token_maps_to_an_identity_until_its_exp() {
        let v = verified(json!({
            "sub": "u-1", "email": "alice@example.com", "groups": ["analysts", "staff"],
            "exp": 1_000_600, "email_verified": true, "big": "x".repeat(2000),
        }));
        let id = identity(&v, 1_000_000);
        assert_eq!(&*id.principal.name, "alice@example.com");
        let groups: Vec<&str> = id.principal.groups.iter().map(|g| &**g).collect();
        assert_eq!(groups, ["analysts", "staff"]);
        assert_eq!(id.principal.access_key, None);
        assert!(!id.principal.is_anonymous());
        assert_eq!(id.ttl, Duration::from_secs(600));
        assert_eq!(&*id.source, "jwt");
        let names: Vec<(&str, &str)> = id
            .claims
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("email", "alice@example.com"),
                ("email_verified", "true"),
                ("exp", "1000600"),
                ("groups", r#"["analysts","staff"]"#),
                ("sub", "u-1"),
            ]
        );
        // used within the leeway after exp: valid, but not cacheable
        assert_eq!(identity(&v, 1_000_630).ttl, Duration::ZERO);
    }

    #[tokio::test]
    async fn only_bearer_tokens_are_this_sources() {
        let providers = Providers::new(&[]).unwrap();
        let source = Oidc::new(providers.clone());
        let cert = PresentedCredential::ClientCertificate {
            der: Arc::from(&b"x"[..]),
            name: "cn".into(),
        };
        assert!(source.authenticate(&cert).await.unwrap().is_none());
        // with no provider for its issuer, a token is refused, not "unknown"
        let token = PresentedCredential::BearerToken(s3gate_proto::Redacted::new(
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL3gifQ.c2ln".to_owned(),
        ));
        let err = source.authenticate(&token).await.unwrap_err();
        assert_eq!(err.refusal, Some(super::super::Refusal::Invalid));
        let mut registry = Registry::default();
        register(&mut registry, providers);
        assert!(registry.identity.is_empty());
    }
}
