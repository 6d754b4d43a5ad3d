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
    buckets, AddressingStyle, AuthorizeRequest, Backend, BackendListing, BucketCors, BucketEntry,
    ControlPlane, ControlPlaneError, Decision, Identity, Listing, PresentedCredential, Principal,
    Route, SigV2Grant, SigV2Request, SigningKeyGrant, SigningKeyRequest,
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
    /// Bucket name → where it lives (exact names, patterns, the default
    /// backend); the credentials come from the credential sources on every
    /// lookup.
    routes: buckets::Table<Placement>,
    /// The entries as data planes see them, for ListBuckets.
    entries: Vec<BucketEntry>,
    default_backend: Option<String>,
    version: u64,
}

/// Where an entry's buckets live.
struct Placement {
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
        let resolved = self.resolve(bucket)?;
        let placement = resolved.value;
        let credentials = self
            .credentials(&CredentialRequest {
                backend: &placement.backend.name,
                bucket,
                entry: resolved.matched.entry(bucket),
                principal,
            })
            .await?;
        if credentials.per_principal && principal.is_none() {
            return Err(ControlPlaneError::Unavailable(format!(
                "bucket {bucket}: its credentials are per principal, and none was given"
            )));
        }
        Ok(Route {
            bucket: bucket.to_owned(),
            backend_bucket: resolved.backend_bucket,
            backend: placement.backend.clone(),
            credentials,
            ttl: placement.ttl,
            cors: placement.cors.clone(),
        })
    }

    /// The entry serving `bucket`: exact, pattern, or the default backend.
    fn resolve(&self, bucket: &str) -> Result<buckets::Resolved<'_, Placement>, ControlPlaneError> {
        self.routes
            .resolve(bucket)
            .map_err(|e| ControlPlaneError::InvalidBucketName(e.0))?
            .ok_or(ControlPlaneError::NoSuchBucket)
    }

    /// The first credential source's answer.
    async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Arc<s3gate_proto::BackendCredentials>, ControlPlaneError> {
        for source in &self.sources.credentials {
            if let Some(credentials) = source.credentials(req).await.map_err(unavailable)? {
                return Ok(credentials);
            }
        }
        Err(ControlPlaneError::Unavailable(format!(
            "no credentials for backend {}",
            req.backend
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
                    egress: b.egress.clone(),
                    limits: b.limits,
                };
                (b.name.as_str(), Arc::new(backend))
            })
            .collect();
        let mut routes = buckets::Table::default();
        let mut entries = Vec::with_capacity(state.buckets.len());
        for b in state.buckets.values() {
            let Some(backend) = backends.get(b.backend.as_str()) else {
                continue;
            };
            let placement = Placement {
                backend: backend.clone(),
                ttl: cache.route_ttl,
                cors: b.cors.iter().cloned().collect(),
            };
            // The state was checked entry by entry when it changed; an
            // entry that fails here anyway (a record written by hand) is
            // left out, loudly, rather than routed wrongly.
            let placed = buckets::Template::parse(Some(&b.backend_bucket))
                .and_then(|t| routes.insert(&b.name, t, placement));
            match placed {
                Ok(()) => entries.push(BucketEntry {
                    name: b.name.clone(),
                    backend: b.backend.clone(),
                    backend_bucket: b.backend_bucket.clone(),
                }),
                Err(error) => {
                    tracing::warn!(bucket = b.name, %error, "bucket entry left out");
                }
            }
        }
        let default_backend = state
            .default_backend
            .as_ref()
            .filter(|d| backends.contains_key(d.as_str()))
            .cloned();
        routes.set_default(default_backend.as_ref().map(|d| Placement {
            backend: backends[d.as_str()].clone(),
            ttl: cache.route_ttl,
            cors: Arc::from([]),
        }));
        Self {
            sources,
            routes,
            entries,
            default_backend,
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
        let placement = self.resolve(bucket)?.value;
        Ok(BucketCors {
            rules: placement.cors.clone(),
            ttl: placement.ttl,
        })
    }

    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError> {
        // Exact names only: a pattern is no bucket (`listing` lists them).
        let names = self.entries.iter().map(|e| e.name.as_str());
        Ok(self
            .sources
            .rules
            .visible(principal, names.filter(|n| !buckets::is_pattern(n))))
    }

    async fn listing(&self, principal: &Principal) -> Result<Listing, ControlPlaneError> {
        let mut backends: Vec<BackendListing> = Vec::new();
        for (entry, placement) in self.routes.values() {
            let credentials = self
                .credentials(&CredentialRequest {
                    backend: &placement.backend.name,
                    bucket: entry,
                    entry,
                    principal: Some(principal),
                })
                .await?;
            // One listing per backend and credentials.
            let seen = backends.iter().any(|b| {
                b.backend.name == placement.backend.name
                    && b.credentials.public_id() == credentials.public_id()
            });
            if !seen {
                backends.push(BackendListing {
                    backend: placement.backend.clone(),
                    credentials,
                });
            }
        }
        Ok(Listing {
            entries: self.entries.clone(),
            default_backend: self.default_backend.clone(),
            backends,
        })
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
