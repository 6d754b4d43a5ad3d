//! Identity sources: who an access key belongs to, and the SigV4 signing key
//! derived from its secret (the secret itself never leaves the source); who
//! a bearer token or client certificate belongs to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{
    Identity, PresentedCredential, Principal, SigningKey, SigningKeyGrant, SigningKeyRequest,
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
    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError>;

    /// The principal an access key belongs to (for Explain), if this
    /// source knows it.
    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError>;

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

/// s3gate-issued keys, from the state (config file, Admin API).
pub struct Keys {
    keys: HashMap<String, KeyEntry>,
    ttl: Duration,
}

struct KeyEntry {
    secret: Secret,
    principal: Principal,
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
                    KeyEntry {
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
        Ok(self.keys.get(&req.access_key).map(|entry| SigningKeyGrant {
            key: SigningKey::derive(entry.secret.expose(), &req.date, &req.region, &req.service),
            principal: entry.principal.clone(),
            ttl: self.ttl,
            session: None,
        }))
    }

    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        Ok(self.keys.get(access_key).map(|k| k.principal.clone()))
    }
}
