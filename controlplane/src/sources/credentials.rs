//! Credential sources: what the gateway signs backend requests with.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3gate_proto::{BackendAuth, BackendCredentials, Principal};

use super::SourceError;
use crate::credential::CredentialSpec;
use crate::state::State;

#[async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// A short name for logs and errors.
    fn name(&self) -> &'static str;

    /// Credentials for the request's backend (with their expiry, if they
    /// have one); `Ok(None)` when this source has none for it.
    async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Option<Arc<BackendCredentials>>, SourceError>;
}

/// What a credential source is asked for.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRequest<'a> {
    /// The backend's name.
    pub backend: &'a str,
    /// The client's bucket name (for a ListBuckets listing, which has
    /// none: the entry's name).
    pub bucket: &'a str,
    /// The `[[buckets]]` entry that serves it: the bucket's own name, the
    /// pattern that matched (`team-*`), or empty for the default backend.
    /// Sources configured per entry are looked up by this.
    pub entry: &'a str,
    /// Who asks, when the route is resolved for a principal; `None` for
    /// the bucket's shared credentials.
    pub principal: Option<&'a Principal>,
}

/// Static HMAC keys (`kind = "static_hmac"`) from the backend records: they
/// never expire.
pub struct StaticHmac {
    by_backend: HashMap<String, Arc<BackendCredentials>>,
}

impl StaticHmac {
    pub fn from_state(state: &State) -> Self {
        let by_backend = state
            .backends
            .values()
            .filter_map(|b| match &b.credentials {
                CredentialSpec::StaticHmac {
                    access_key,
                    secret_key,
                    session_token,
                } => {
                    let creds = BackendCredentials {
                        per_principal: false,
                        auth: BackendAuth::SigV4 {
                            access_key: access_key.clone(),
                            secret_key: secret_key.clone(),
                            session_token: session_token.clone(),
                        },
                        expires_unix: None,
                    };
                    Some((b.name.clone(), Arc::new(creds)))
                }
                // Exchanged first: `super::exchanged`.
                CredentialSpec::IbmIam { .. } | CredentialSpec::AwsAssumeRole { .. } => None,
            })
            .collect();
        Self { by_backend }
    }
}

#[async_trait]
impl CredentialSource for StaticHmac {
    fn name(&self) -> &'static str {
        "static-hmac"
    }

    async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Option<Arc<BackendCredentials>>, SourceError> {
        Ok(self.by_backend.get(req.backend).cloned())
    }
}
