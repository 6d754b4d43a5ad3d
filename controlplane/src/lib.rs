//! The s3gate control plane: who a key belongs to, what a principal may do,
//! and how to reach (and sign for) the backend of a bucket.
//!
//! A [`replica::Replica`] answers from a compiled [`Snapshot`] of the state a
//! [`store::Store`] holds (memory, or Redis shared by replicas) and the
//! decision [`sources`] built from it,
//! and serves it over gRPC ([`grpc`], [`admin`]) or in-process to `s3gate
//! serve`. Data planes see it only through [`s3gate_proto::ControlPlane`],
//! so both deployment modes run one code path.
//!
//! This crate never sees request bodies and never talks to backends.

pub mod admin;
pub mod config;
pub mod credential;
pub mod crypto;
pub mod grpc;
pub mod oidc;
pub mod policy;
pub mod redis_store;
pub mod replica;
pub mod roles;
pub mod session;
pub mod sources;
pub mod state;
pub mod store;
pub mod sts;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3gate_proto::{
    AddressingStyle, AuthorizeRequest, Backend, BucketCors, ControlPlane, ControlPlaneError,
    Decision, Identity, PresentedCredential, Principal, Route, SigV2Grant, SigV2Request,
    SigningKeyGrant, SigningKeyRequest,
};

use crate::config::{AddressingStyleConfig, CacheConfig};
use crate::sources::credentials::CredentialRequest;
use crate::sources::identity::SigV2Check;
use crate::sources::{Refusal, Registry, SourceError, Sources};
use crate::state::State;

/// A compiled snapshot of the control-plane state, and the sources built
/// from it: what a replica answers decisions from. Immutable; a change
/// builds a new one.
pub struct Snapshot {
    sources: Sources,
    /// Bucket → where it lives; the credentials come from the credential
    /// sources on every lookup.
    routes: HashMap<String, Placement>,
    version: u64,
}

/// A bucket's backend and name there.
struct Placement {
    backend_bucket: String,
    backend: Arc<Backend>,
    ttl: std::time::Duration,
    cors: Arc<[s3gate_proto::CorsRule]>,
}

impl Snapshot {
    /// The route of `bucket`, with credentials for `principal` (`None`:
    /// the bucket's shared ones). A bucket whose credential source answers
    /// per principal has no shared route.
    async fn route_with(
        &self,
        bucket: &str,
        principal: Option<&Principal>,
    ) -> Result<Route, ControlPlaneError> {
        let placement = self
            .routes
            .get(bucket)
            .ok_or(ControlPlaneError::NoSuchBucket)?;
        for source in &self.sources.credentials {
            if let Some(credentials) = source
                .credentials(&CredentialRequest {
                    backend: &placement.backend.name,
                    bucket,
                    principal,
                })
                .await
                .map_err(unavailable)?
            {
                if credentials.per_principal && principal.is_none() {
                    return Err(ControlPlaneError::Unavailable(format!(
                        "bucket {bucket}: its credentials are per principal, and none was given"
                    )));
                }
                return Ok(Route {
                    bucket: bucket.to_owned(),
                    backend_bucket: placement.backend_bucket.clone(),
                    backend: placement.backend.clone(),
                    credentials,
                    ttl: placement.ttl,
                    cors: placement.cors.clone(),
                });
            }
        }
        Err(ControlPlaneError::Unavailable(format!(
            "no credentials for backend {}",
            placement.backend.name
        )))
    }

    /// Compiles `state`, placing its sources among the standing ones of
    /// `registry`.
    pub fn compile(state: &State, cache: &CacheConfig, registry: &Registry) -> Self {
        let sources = Sources::compile(state, cache, registry);
        let backends: HashMap<&str, Arc<Backend>> = state
            .backends
            .values()
            .map(|b| {
                let backend = Backend {
                    name: b.name.clone(),
                    endpoint: b.endpoint.clone(),
                    region: b.region.clone(),
                    addressing_style: match b.addressing_style {
                        AddressingStyleConfig::Path => AddressingStyle::Path,
                        AddressingStyleConfig::Virtual => AddressingStyle::Virtual,
                    },
                    ca_bundle: b.ca_bundle.clone(),
                    insecure_skip_verify: b.insecure_skip_verify,
                    key_segment_guard: b.key_segment_guard,
                };
                (b.name.as_str(), Arc::new(backend))
            })
            .collect();
        let routes = state
            .buckets
            .values()
            .filter_map(|b| {
                let backend = backends.get(b.backend.as_str())?;
                let placement = Placement {
                    backend_bucket: b.backend_bucket.clone(),
                    backend: backend.clone(),
                    ttl: cache.route_ttl,
                    cors: b.cors.iter().cloned().collect(),
                };
                Some((b.name.clone(), placement))
            })
            .collect();
        Self {
            sources,
            routes,
            version: state.version,
        }
    }

    /// The state version this snapshot was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A dry-run decision and what decided it.
    pub async fn explain(
        &self,
        req: &AuthorizeRequest,
    ) -> Result<(Decision, Option<String>), ControlPlaneError> {
        self.sources.policy.explain(req).await.map_err(unavailable)
    }

    /// A dry run through every policy source, with each one's answer.
    pub async fn explain_sources(&self, req: &AuthorizeRequest) -> crate::sources::Explanation {
        self.sources.policy.explain_sources(req).await
    }

    /// The principal an access key belongs to, if any identity source knows it.
    pub async fn principal_of(
        &self,
        access_key: &str,
    ) -> Result<Option<Principal>, ControlPlaneError> {
        for source in &self.sources.identity {
            if let Some(p) = source.principal(access_key).await.map_err(unavailable)? {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// A source that cannot answer: the data plane fails closed (503).
fn unavailable(e: SourceError) -> ControlPlaneError {
    tracing::warn!(source = e.source_name, error = %e.message, "decision source could not answer");
    ControlPlaneError::Unavailable(e.to_string())
}

/// An identity source's error: a definitive refusal of the credential, or
/// "could not decide" (503).
fn refused_or_unavailable(e: SourceError) -> ControlPlaneError {
    match e.refusal {
        Some(Refusal::Invalid) => {
            tracing::debug!(source = e.source_name, reason = %e.message, "credential refused");
            ControlPlaneError::NotAuthenticated(e.to_string())
        }
        Some(Refusal::Expired) => {
            tracing::debug!(source = e.source_name, reason = %e.message, "credential expired");
            ControlPlaneError::CredentialExpired(e.to_string())
        }
        None => unavailable(e),
    }
}

#[async_trait]
impl ControlPlane for Snapshot {
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError> {
        for source in &self.sources.identity {
            if let Some(grant) = source
                .signing_key(&req)
                .await
                .map_err(refused_or_unavailable)?
            {
                return Ok(grant);
            }
        }
        Err(ControlPlaneError::UnknownAccessKey)
    }

    async fn verify_sigv2(&self, req: SigV2Request) -> Result<SigV2Grant, ControlPlaneError> {
        for source in &self.sources.identity {
            match source.verify_sigv2(&req).await.map_err(unavailable)? {
                Some(SigV2Check::Match(grant)) => return Ok(grant),
                Some(SigV2Check::Mismatch) => return Err(ControlPlaneError::SignatureMismatch),
                None => {}
            }
        }
        Err(ControlPlaneError::UnknownAccessKey)
    }

    async fn authenticate(
        &self,
        credential: PresentedCredential,
    ) -> Result<Identity, ControlPlaneError> {
        for source in &self.sources.identity {
            if let Some(identity) = source
                .authenticate(&credential)
                .await
                .map_err(refused_or_unavailable)?
            {
                return Ok(identity);
            }
        }
        let what = match credential {
            PresentedCredential::BearerToken(_) => "bearer tokens",
            PresentedCredential::ClientCertificate { .. } => "client certificates",
        };
        Err(ControlPlaneError::NotAuthenticated(format!(
            "no identity source accepts {what}"
        )))
    }

    async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
        self.sources.policy.decide(&req).await.map_err(unavailable)
    }

    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError> {
        self.route_with(bucket, None).await
    }

    async fn route_for(
        &self,
        bucket: &str,
        principal: &Principal,
    ) -> Result<Route, ControlPlaneError> {
        self.route_with(bucket, Some(principal)).await
    }

    async fn bucket_cors(&self, bucket: &str) -> Result<BucketCors, ControlPlaneError> {
        // From the placement alone: a preflight has no principal to ask a
        // credential source for.
        let placement = self
            .routes
            .get(bucket)
            .ok_or(ControlPlaneError::NoSuchBucket)?;
        Ok(BucketCors {
            rules: placement.cors.clone(),
            ttl: placement.ttl,
        })
    }

    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError> {
        Ok(self
            .sources
            .rules
            .visible(principal, self.routes.keys().map(String::as_str)))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
