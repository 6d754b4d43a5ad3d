//! The s3gate control plane: who a key belongs to, what a principal may do,
//! and how to reach (and sign for) the backend of a bucket.
//!
//! A [`replica::Replica`] answers from a compiled snapshot ([`Embedded`]) of
//! the state a [`store::Store`] holds (memory, or Redis shared by replicas),
//! and serves it over gRPC ([`grpc`], [`admin`]) or in-process to `s3gate
//! serve`. Data planes see it only through [`s3gate_proto::ControlPlane`],
//! so both deployment modes run one code path.
//!
//! This crate never sees request bodies and never talks to backends.

pub mod admin;
pub mod config;
pub mod crypto;
pub mod grpc;
pub mod policy;
pub mod redis_store;
pub mod replica;
pub mod state;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use s3gate_proto::{
    AddressingStyle, AuthorizeRequest, Backend, BackendCredentials, ControlPlane,
    ControlPlaneError, Decision, Principal, Route, SigningKey, SigningKeyGrant, SigningKeyRequest,
};

use crate::config::{AddressingStyleConfig, CacheConfig, Secret};
use crate::policy::Policy;
use crate::state::State;

/// A compiled snapshot of the control-plane state: what a replica answers
/// decisions from. Immutable; a change builds a new one.
pub struct Embedded {
    keys: HashMap<String, KeyEntry>,
    policy: Policy,
    routes: HashMap<String, Route>,
    cache: CacheConfig,
    version: u64,
}

struct KeyEntry {
    secret: Secret,
    principal: Principal,
}

impl Embedded {
    pub fn from_state(state: &State, cache: &CacheConfig) -> Self {
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
        let backends: HashMap<&str, (Arc<Backend>, Arc<BackendCredentials>)> = state
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
                };
                let creds = BackendCredentials {
                    access_key: b.access_key.clone(),
                    secret_key: b.secret.expose().to_owned(),
                    session_token: b.session_token.as_ref().map(|t| t.expose().to_owned()),
                    expires_unix: None,
                };
                (b.name.as_str(), (Arc::new(backend), Arc::new(creds)))
            })
            .collect();
        let routes = state
            .buckets
            .values()
            .filter_map(|b| {
                let (backend, credentials) = backends.get(b.backend.as_str())?;
                let route = Route {
                    bucket: b.name.clone(),
                    backend_bucket: b.backend_bucket.clone(),
                    backend: backend.clone(),
                    credentials: credentials.clone(),
                    ttl: cache.route_ttl,
                };
                Some((b.name.clone(), route))
            })
            .collect();
        Self {
            keys,
            policy: Policy::new(state.rules.values()),
            routes,
            cache: cache.clone(),
            version: state.version,
        }
    }

    /// The state version this snapshot was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A dry-run decision and the id of the rule that decided.
    pub fn explain(&self, req: &AuthorizeRequest) -> (Decision, Option<String>) {
        let (decision, rule) = self.policy.explain(req, self.cache.decision_ttl);
        (decision, rule.map(str::to_owned))
    }

    /// The principal an access key belongs to, if it exists.
    pub fn principal_of(&self, access_key: &str) -> Option<Principal> {
        self.keys.get(access_key).map(|k| k.principal.clone())
    }
}

#[async_trait]
impl ControlPlane for Embedded {
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError> {
        let entry = self
            .keys
            .get(&req.access_key)
            .ok_or(ControlPlaneError::UnknownAccessKey)?;
        Ok(SigningKeyGrant {
            key: SigningKey::derive(entry.secret.expose(), &req.date, &req.region, &req.service),
            principal: entry.principal.clone(),
            ttl: self.cache.key_ttl,
        })
    }

    async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
        Ok(self.policy.decide(&req, self.cache.decision_ttl))
    }

    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError> {
        self.routes
            .get(bucket)
            .cloned()
            .ok_or(ControlPlaneError::NoSuchBucket)
    }

    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError> {
        Ok(self
            .policy
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
