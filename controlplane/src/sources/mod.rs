//! Where decisions come from: one async trait per kind of source, and the
//! chains that combine them.
//!
//! | kind | trait | answers | built-in source |
//! |---|---|---|---|
//! | identity | [`IdentitySource`] | access key → principal + derived signing key | [`identity::Keys`] (s3gate-issued keys) |
//! | policy | [`PolicySource`] | request → allow / deny / abstain, with reason, scope, TTL | [`policy::Rules`] (built-in rules) |
//! | credentials | [`CredentialSource`] | backend → the credentials to sign with, and until when | [`credentials::StaticHmac`] |
//!
//! A source is a value behind an `Arc<dyn …>`: it may hold state and run
//! background tasks of its own (a JWKS refresher, an OPA client, a token
//! refresher). A source that cannot decide returns [`SourceError`]; the
//! chains fail closed on it, and an explicit deny from any policy source
//! wins over every allow.
//!
//! Adding a source is one file here and one line in [`Sources::from_state`].

pub mod credentials;
pub mod identity;
pub mod policy;

use std::sync::Arc;

pub use credentials::CredentialSource;
pub use identity::IdentitySource;
pub use policy::{PolicyChain, PolicySource, Verdict, VerdictKind};

use crate::config::CacheConfig;
use crate::state::State;

/// A source could not answer (timeout, transport error, bad answer). The
/// caller fails closed: the data plane answers 503, never allow.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    pub source_name: &'static str,
    pub message: String,
}

impl SourceError {
    pub fn new(source_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            source_name,
            message: message.into(),
        }
    }
}

/// Every source a control plane asks, in the order it asks them.
pub struct Sources {
    /// Asked in order; the first that knows the access key answers.
    pub identity: Vec<Arc<dyn IdentitySource>>,
    pub policy: PolicyChain,
    /// Asked in order; the first that has credentials for the backend answers.
    pub credentials: Vec<Arc<dyn CredentialSource>>,
}

impl Sources {
    /// The chain builder: the sources compiled from the control-plane state.
    /// Register a new source here.
    pub fn from_state(state: &State, cache: &CacheConfig) -> Self {
        Self {
            identity: vec![Arc::new(identity::Keys::from_state(state, cache.key_ttl))],
            policy: PolicyChain::new(vec![Arc::new(policy::Rules::from_state(
                state,
                cache.decision_ttl,
            ))]),
            credentials: vec![Arc::new(credentials::StaticHmac::from_state(state))],
        }
    }
}
