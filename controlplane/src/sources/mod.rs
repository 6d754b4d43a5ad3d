//! Where decisions come from: one async trait per kind of source, and the
//! chains that combine them.
//!
//! | kind | trait | answers | built-in source |
//! |---|---|---|---|
//! | identity | [`IdentitySource`] | access key → principal + derived signing key; token or certificate → identity | [`identity::Keys`] (s3gate-issued keys), [`mtls::ClientCertificates`] (verified client certificates), [`oidc::Oidc`] (JWT bearer tokens, standing), [`sessions::Sessions`] (STS session keys, standing), [`sql::identity::SqlKeys`] (`[[identity]] kind = "sql"`, standing) |
//! | policy | [`PolicySource`] | request → allow / deny / abstain, with reason, scope, TTL | [`policy::Rules`] (built-in rules), [`sql::policy::SqlPolicy`] (`[[policy]] kind = "sql"`, standing) |
//! | credentials | [`CredentialSource`] | backend → the credentials to sign with, and until when | [`credentials::StaticHmac`], [`exchanged::ExchangedCredentials`] (IBM IAM tokens and STS sessions, refreshed by the standing [`exchanged::Exchanges`]), [`plugin::PluginCredentials`] and [`sql::credentials::SqlCredentialSources`] (per bucket, asked first) |
//!
//! A source is a value behind an `Arc<dyn …>`. Two lifetimes:
//! - **compiled** sources ([`identity::Keys`], [`policy::Rules`],
//!   [`credentials::StaticHmac`]) are built from each version of the state
//!   and replaced with the snapshot;
//! - **standing** sources live in the replica's [`Registry`] for as long as
//!   the replica does, across every state change, so they can hold state and
//!   run background tasks of their own (a JWKS cache, an OPA client, a
//!   token refresher).
//!
//! A source that cannot decide returns [`SourceError`]; the chains fail
//! closed on it, and an explicit deny from any policy source wins over every
//! allow.
//!
//! Adding a source is one file here and one registration line: in
//! [`Sources::compile`] for a compiled source, in the [`Registry`] the
//! replica starts with for a standing one.

pub mod credentials;
pub mod exchanged;
pub mod guard;
pub mod identity;
pub mod input;
pub mod mtls;
pub mod oidc;
pub mod opa;
pub mod plugin;
pub mod policy;
pub mod rego;
pub mod sessions;
pub mod sql;

use std::sync::Arc;

pub use credentials::CredentialSource;
pub use identity::IdentitySource;
pub use policy::{
    Answer, Explanation, PolicyChain, PolicySource, SourceAnswer, Verdict, VerdictKind,
};

use crate::config::{CacheConfig, IdentityConfig, PolicyConfig, Secret};
use crate::state::State;

/// A source could not answer (timeout, transport error, bad answer). The
/// caller fails closed: the data plane answers 503, never allow.
///
/// An identity source that did answer, with a definitive no about a
/// credential it owns (a token with a bad signature, an expired one), says
/// so with [`SourceError::refused`] or [`SourceError::expired`]: the client
/// then gets `InvalidToken` or `ExpiredToken`, not 503.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct SourceError {
    pub source_name: &'static str,
    pub message: String,
    /// `None`: could not decide.
    pub refusal: Option<Refusal>,
}

/// An identity source's definitive no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The credential is not good (S3 `InvalidToken`).
    Invalid,
    /// The credential was good but has expired (S3 `ExpiredToken`).
    Expired,
}

impl SourceError {
    pub fn new(source_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            source_name,
            message: message.into(),
            refusal: None,
        }
    }

    /// The credential is this source's, and it is not good.
    pub fn refused(source_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            refusal: Some(Refusal::Invalid),
            ..Self::new(source_name, message)
        }
    }

    /// The credential is this source's, and it has expired.
    pub fn expired(source_name: &'static str, message: impl Into<String>) -> Self {
        Self {
            refusal: Some(Refusal::Expired),
            ..Self::new(source_name, message)
        }
    }
}

/// Where a policy source sits in the chain.
#[derive(Clone)]
pub enum PolicySlot {
    /// The built-in rules, compiled from each state version.
    Rules,
    /// A standing source.
    Source(Arc<dyn PolicySource>),
}

/// Raised by a standing policy source whose policy changed without a state
/// change (a Rego file reloaded): the replica announces a policy
/// invalidation to every data plane. Cheap to clone; a counter, so a
/// change is never lost between two looks.
#[derive(Clone, Default)]
pub struct PolicyChanged(Arc<tokio::sync::watch::Sender<u64>>);

impl PolicyChanged {
    /// Tells the replica (and so every data plane) to forget decisions.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// The standing sources of a replica, and where the compiled built-ins go
/// among them. Built once (from the process's configuration) and kept for
/// the replica's lifetime.
#[derive(Clone)]
pub struct Registry {
    /// Asked after the built-in keys.
    pub identity: Vec<Arc<dyn IdentitySource>>,
    /// The policy chain, in order; [`PolicySlot::Rules`] marks where the
    /// built-in rules go (absent: they are not asked).
    pub policy: Vec<PolicySlot>,
    /// Asked after the static HMAC keys of the backend records.
    pub credentials: Vec<Arc<dyn CredentialSource>>,
    /// Mints STS sessions (`[[roles]]`); none: STS calls are refused.
    pub sessions: Option<Arc<dyn crate::session::SessionIssuer>>,
    /// Raised when a standing policy source reloaded its policy.
    pub policy_changed: PolicyChanged,
    /// The `[[identity]]` sources of the config file, asked after
    /// `identity`; replaced as a whole by a reload.
    pub configured_identity: Vec<Arc<dyn IdentitySource>>,
    /// The database a bucket's `credentials = { kind = "sql" }` without a
    /// URL uses: the first `[[policy]]` (else `[[identity]]`) sql entry's.
    pub sql_default_url: Option<Secret>,
    /// The pools of SQL bucket credential sources, kept across snapshots.
    pub bucket_sql: sql::credentials::Pools,
    /// Exchanged backend credentials (`ibm_iam`, `aws_assume_role`), kept
    /// across snapshots.
    pub exchanges: Arc<exchanged::Exchanges>,
}

impl Default for Registry {
    /// The built-in sources alone.
    fn default() -> Self {
        Self {
            identity: Vec::new(),
            policy: vec![PolicySlot::Rules],
            credentials: Vec::new(),
            sessions: None,
            policy_changed: PolicyChanged::default(),
            configured_identity: Vec::new(),
            sql_default_url: None,
            bucket_sql: sql::credentials::Pools::default(),
            exchanges: exchanged::Exchanges::new(None),
        }
    }
}

impl Registry {
    /// This registry with the configured sources of `configured` in place
    /// of its own (what a reload swaps in); the standing built-ins (JWT,
    /// STS sessions, credential sources) stay as they are.
    pub fn with_configured(&self, configured: Configured) -> Self {
        Self {
            policy: configured.policy,
            configured_identity: configured.identity,
            sql_default_url: configured.sql_default_url,
            ..self.clone()
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
    /// The built-in rules, also for ListBuckets (which buckets a principal
    /// has any allow on).
    pub rules: Arc<policy::Rules>,
}

impl Sources {
    /// The compiled sources of one state version, placed among the standing
    /// ones. Register a new compiled source here.
    pub fn compile(state: &State, cache: &CacheConfig, registry: &Registry) -> Self {
        let rules = Arc::new(policy::Rules::from_state(state, cache.decision_ttl));
        let keys: Arc<dyn IdentitySource> =
            Arc::new(identity::Keys::from_state(state, cache.key_ttl));
        let certificates: Arc<dyn IdentitySource> =
            Arc::new(mtls::ClientCertificates::new(cache.key_ttl));
        let hmac: Arc<dyn CredentialSource> = Arc::new(credentials::StaticHmac::from_state(state));
        let exchanged: Arc<dyn CredentialSource> = Arc::new(
            exchanged::ExchangedCredentials::from_state(state, &registry.exchanges),
        );
        // Before the backends' keys: a bucket with a source of its own is
        // answered by it alone.
        let bucket_plugins: Arc<dyn CredentialSource> =
            Arc::new(plugin::PluginCredentials::from_state(state));
        let bucket_sql: Arc<dyn CredentialSource> =
            Arc::new(sql::credentials::SqlCredentialSources::from_state(
                state,
                &registry.bucket_sql,
                registry.sql_default_url.as_ref(),
            ));
        let policy = registry
            .policy
            .iter()
            .map(|slot| match slot {
                PolicySlot::Rules => rules.clone() as Arc<dyn PolicySource>,
                PolicySlot::Source(source) => source.clone(),
            })
            .collect();
        Self {
            identity: [keys, certificates]
                .into_iter()
                .chain(registry.identity.iter().cloned())
                .chain(registry.configured_identity.iter().cloned())
                .collect(),
            policy: PolicyChain::new(policy),
            credentials: [bucket_plugins, bucket_sql, hmac, exchanged]
                .into_iter()
                .chain(registry.credentials.iter().cloned())
                .collect(),
            rules,
        }
    }
}

/// Why a configured source could not be set up (a Rego file that does not
/// compile, a database that cannot be reached): `s3gate` refuses to start,
/// or a reload keeps the sources it has.
#[derive(Debug, thiserror::Error)]
#[error("[[{section}]] {kind}: {message}")]
pub struct BuildError {
    pub section: &'static str,
    pub kind: &'static str,
    pub message: String,
}

/// Where one `[[policy]]` entry goes in the chain. Register a new policy
/// source kind here (and its settings in [`PolicyConfig`]). `cache`: the
/// `[cache]` TTLs (an answer is never cached longer than
/// `decision_ttl`); `changed`: what a source raises when its policy changed
/// on its own (a reload).
pub async fn policy_slot(
    config: &PolicyConfig,
    cache: &CacheConfig,
    changed: &PolicyChanged,
) -> Result<PolicySlot, BuildError> {
    match config {
        PolicyConfig::Builtin(_) => Ok(PolicySlot::Rules),
        PolicyConfig::Rego(c) => Ok(PolicySlot::Source(
            rego::build(c, cache.decision_ttl, changed.clone()).await?,
        )),
        PolicyConfig::Opa(c) => Ok(PolicySlot::Source(opa::build(c, cache.decision_ttl)?)),
        PolicyConfig::Sql(c) => Ok(PolicySlot::Source(Arc::new(sql::policy::SqlPolicy::new(
            c, cache,
        )?))),
        PolicyConfig::Plugin(c) => Ok(PolicySlot::Source(plugin::policy(c, cache).await?)),
    }
}

/// The source of one `[[identity]]` entry. Register a new secret lookup
/// kind here (and its settings in [`IdentityConfig`]).
pub async fn identity_source(
    config: &IdentityConfig,
    cache: &CacheConfig,
) -> Result<Arc<dyn IdentitySource>, BuildError> {
    match config {
        IdentityConfig::Sql(c) => Ok(Arc::new(sql::identity::SqlKeys::new(c, cache)?)),
        IdentityConfig::Plugin(c) => plugin::identity(c, cache).await,
    }
}

/// The sources of a config file's `[[policy]]` and `[[identity]]`
/// entries, built (what start-up registers and a reload swaps in).
pub struct Configured {
    /// The policy chain in order; no entry: the built-in rules alone.
    pub policy: Vec<PolicySlot>,
    pub identity: Vec<Arc<dyn IdentitySource>>,
    /// See [`Registry::sql_default_url`].
    pub sql_default_url: Option<Secret>,
}

/// Builds the sources of `policy` and `identity` (in order; the first
/// entry that does not build is the error). `changed` is what a source
/// raises when its policy changes on its own.
pub async fn configure(
    policy: &[PolicyConfig],
    identity: &[IdentityConfig],
    cache: &CacheConfig,
    changed: &PolicyChanged,
) -> Result<Configured, BuildError> {
    let mut chain = Vec::with_capacity(policy.len().max(1));
    for entry in policy {
        chain.push(policy_slot(entry, cache, changed).await?);
    }
    if chain.is_empty() {
        chain.push(PolicySlot::Rules);
    }
    let mut lookups = Vec::with_capacity(identity.len());
    for entry in identity {
        lookups.push(identity_source(entry, cache).await?);
    }
    Ok(Configured {
        policy: chain,
        identity: lookups,
        sql_default_url: sql_default_url(policy, identity),
    })
}

/// The URL of the first `[[policy]]` sql entry, else of the first
/// `[[identity]]` one.
pub fn sql_default_url(policy: &[PolicyConfig], identity: &[IdentityConfig]) -> Option<Secret> {
    policy
        .iter()
        .find_map(|p| match p {
            PolicyConfig::Sql(c) => Some(c.url.clone()),
            _ => None,
        })
        .or_else(|| {
            identity.iter().find_map(|p| match p {
                IdentityConfig::Sql(c) => Some(c.url.clone()),
                _ => None,
            })
        })
}

/// The `[[policy]]` and `[[identity]]` entries of a config file, placed in
/// `registry`: the policy chain replaced by the entries in order (none: the
/// built-in rules alone), the identity sources asked after the built-in
/// ones.
pub async fn register_configured(
    registry: &mut Registry,
    policy: &[PolicyConfig],
    identity: &[IdentityConfig],
    cache: &CacheConfig,
) -> Result<(), BuildError> {
    let configured = configure(policy, identity, cache, &registry.policy_changed).await?;
    *registry = registry.with_configured(configured);
    Ok(())
}
