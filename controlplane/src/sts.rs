//! STS `AssumeRoleWithWebIdentity`: a verified web identity token (from an
//! `[[oidc]]` provider) becomes a temporary session for a `[[roles]]`
//! entry.
//!
//! Standing (built once from the config, kept across state changes): it
//! holds the roles, the OIDC providers and the store sessions go to. The
//! token is verified by [`crate::oidc::Providers`] only; nothing here looks
//! inside a JWT.

use std::sync::Arc;
use std::time::Duration;

use ring::rand::SystemRandom;
use s3gate_proto::{AssumedRole, StsError, StsErrorCode, WebIdentityRequest};
use tracing::{debug, info, warn};

use crate::oidc::{Providers, TokenError};
use crate::roles::{flatten_claims, Roles};
use crate::session::{new_credentials, SessionInfo, SessionIssuer, SessionLimits, SessionRecord};
use crate::sources::sessions::Sessions;
use crate::sources::Registry;
use crate::store::{Store, StoreError};

/// Registers what sessions need in a replica's standing sources: the
/// identity source of session keys always (every replica accepts sessions
/// minted by any other), and the STS engine when there are roles and
/// providers to mint them with. `key_ttl` caps how long a data plane caches
/// a session's grant; `min_duration` is the shortest session granted (900 s
/// outside tests); `limits` bound the sessions kept.
pub fn register(
    registry: &mut Registry,
    store: Arc<dyn Store>,
    key_ttl: Duration,
    roles: Roles,
    providers: Option<Arc<Providers>>,
    min_duration: Duration,
    limits: SessionLimits,
) {
    registry
        .identity
        .push(Arc::new(Sessions::new(store.clone(), key_ttl)));
    if let (false, Some(providers)) = (roles.is_empty(), providers) {
        registry.sessions = Some(Arc::new(
            Sts::new(roles, providers, store, min_duration).with_limits(limits),
        ));
    }
}

pub struct Sts {
    /// Replaced by a reload of the config file ([`SessionIssuer::set_roles`]).
    roles: std::sync::RwLock<Arc<Roles>>,
    providers: Arc<Providers>,
    store: Arc<dyn Store>,
    /// The shortest `DurationSeconds` accepted: 900, lowered by tests only.
    min_duration: u64,
    limits: SessionLimits,
    rng: SystemRandom,
}

impl Sts {
    /// `min_duration` is 900 s outside tests (`serve --sts-min-duration`).
    pub fn new(
        roles: Roles,
        providers: Arc<Providers>,
        store: Arc<dyn Store>,
        min_duration: Duration,
    ) -> Self {
        Self {
            roles: std::sync::RwLock::new(Arc::new(roles)),
            providers,
            store,
            min_duration: min_duration.as_secs().max(1),
            limits: SessionLimits::default(),
            rng: SystemRandom::new(),
        }
    }

    /// How many sessions are kept ([`SessionLimits::default`] otherwise).
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Mints a session, or says which STS error the client gets.
    pub async fn assume(&self, req: WebIdentityRequest) -> Result<AssumedRole, StsError> {
        use StsErrorCode::*;
        let refuse = |code, message: String| {
            debug!(role = %req.role_arn, code = ?code, %message, "AssumeRoleWithWebIdentity refused");
            Err(StsError::refused(code, message))
        };
        // The data plane checked the parameters' shape; a direct gRPC
        // caller may not have.
        if !s3gate_s3::sts::valid_session_name(&req.role_session_name) {
            return refuse(
                ValidationError,
                "RoleSessionName must be 2 to 64 characters of letters, digits and +=,.@_-".into(),
            );
        }
        let roles = match self.roles.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let Some(role) = roles.get(&req.role_arn) else {
            return refuse(
                AccessDenied,
                format!(
                    "Not authorized to perform sts:AssumeRoleWithWebIdentity: no role {:?} is \
                     configured",
                    truncated(&req.role_arn)
                ),
            );
        };
        let duration = match role.duration(req.duration_seconds, self.min_duration) {
            Ok(d) => d,
            Err(message) => return refuse(ValidationError, message),
        };
        let token = match self.providers.verify(&role.oidc, req.token.expose()).await {
            Ok(token) => token,
            Err(TokenError::Expired) => {
                return refuse(ExpiredTokenException, "Token is expired".into())
            }
            Err(TokenError::NotYetValid) => {
                return refuse(
                    InvalidIdentityToken,
                    "Token is not valid yet (nbf/iat)".into(),
                )
            }
            Err(TokenError::Invalid(why)) => return refuse(InvalidIdentityToken, why),
            Err(TokenError::Unavailable(why)) => {
                warn!(provider = %role.oidc, error = %why, "identity provider unreachable");
                return refuse(
                    IDPCommunicationError,
                    format!("could not reach the identity provider to verify the token: {why}"),
                );
            }
        };
        if let Some(p) = &req.provider_id {
            if p != &role.oidc && p != &token.issuer {
                return refuse(
                    InvalidParameterValue,
                    format!(
                        "ProviderId {:?} is not this role's identity provider",
                        truncated(p)
                    ),
                );
            }
        }
        if let Some(claim) = role.unmet_claim(&token.claims) {
            return refuse(
                AccessDenied,
                format!(
                    "Not authorized to perform sts:AssumeRoleWithWebIdentity: the token's \
                     {claim:?} claim does not carry what the role requires"
                ),
            );
        }

        let creds = new_credentials(&self.rng)
            .map_err(|_| StsError::Unavailable("no randomness available".into()))?;
        let now = crate::unix_now();
        let expires = now.saturating_add(i64::try_from(duration).unwrap_or(i64::MAX));
        let record = SessionRecord {
            info: SessionInfo {
                access_key: creds.access_key.clone(),
                principal: token.principal.clone(),
                groups: role.session_groups(&token.groups),
                claims: flatten_claims(&token.claims),
                role_arn: role.arn.clone(),
                session_name: req.role_session_name.clone(),
                subject: token.subject.clone(),
                provider: token.issuer.clone(),
                created: now,
                expires,
            },
            secret: creds.secret.clone(),
            token_sha256: s3gate_s3::sts::token_sha256(creds.token.expose()),
        };
        let evicted = match self.store.put_session(&record, self.limits).await {
            Ok(evicted) => evicted,
            Err(StoreError::Full(why)) => {
                warn!(principal = %token.principal, %why, "session refused: the session bound is reached");
                return Err(StsError::Unavailable(
                    "too many sessions are live; try again later".into(),
                ));
            }
            Err(e) => {
                return Err(StsError::Unavailable(format!(
                    "cannot store the session: {e}"
                )))
            }
        };
        if !evicted.is_empty() {
            info!(
                principal = %token.principal,
                ended = evicted.len(),
                bound = self.limits.per_principal,
                "sessions ended: the principal holds the most sessions allowed"
            );
        }
        info!(
            access_key = %creds.access_key,
            principal = %token.principal,
            role = %role.arn,
            provider = %token.provider,
            expires,
            "session issued"
        );
        Ok(AssumedRole {
            access_key: creds.access_key,
            secret_key: creds.secret,
            session_token: creds.token,
            expires_unix: expires,
            subject: token.subject,
            audience: token.audience,
            provider: token.issuer,
            assumed_role_arn: role.assumed_role_arn(&req.role_session_name),
            assumed_role_id: role.assumed_role_id(&req.role_session_name),
            principal: token.principal,
        })
    }
}

#[async_trait::async_trait]
impl SessionIssuer for Sts {
    fn set_roles(&self, roles: Roles) -> bool {
        let roles = Arc::new(roles);
        match self.roles.write() {
            Ok(mut guard) => *guard = roles,
            Err(poisoned) => *poisoned.into_inner() = roles,
        }
        true
    }

    async fn assume_role_with_web_identity(
        &self,
        req: WebIdentityRequest,
    ) -> Result<AssumedRole, StsError> {
        self.assume(req).await
    }
}

/// A client-supplied value as quoted in a message: at most 128 characters.
fn truncated(s: &str) -> String {
    s.chars().take(128).collect()
}
