//! Temporary sessions, as STS `AssumeRoleWithWebIdentity` mints them.
//!
//! A session is an access key (`ASIA…`), a secret and an opaque session
//! token, bound to the principal, groups and claims of a verified web
//! identity token, until an expiry. Sessions are not part of the versioned
//! [`crate::state::State`]: they come and go far more often than
//! configuration, expire on their own, and a replica never reloads them
//! all. A [`crate::store::Store`] keeps them (memory in `serve`; Redis,
//! secret sealed and token hashed, in distributed mode) and
//! [`crate::sources::sessions`] answers signing-key lookups from it.

use async_trait::async_trait;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use s3gate_proto::{AssumedRole, StsError, WebIdentityRequest};

use crate::config::Secret;

/// How long an expired session is still known as expired (so its key gets
/// `ExpiredToken` rather than `InvalidAccessKeyId`).
pub const EXPIRED_KNOWN_FOR: i64 = 24 * 3600;

/// How many sessions a store keeps. Every `AssumeRoleWithWebIdentity` with
/// a valid token adds one, so without a bound one token holder could fill
/// the control plane's memory (or Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Live sessions in all; past it new sessions are refused (STS
    /// `ServiceUnavailable`, 503) until some expire or are revoked.
    pub total: usize,
    /// Live sessions of one principal; a new one past it ends that
    /// principal's sessions that expire first (they are revoked, as
    /// `admin sessions revoke` would).
    pub per_principal: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            total: 100_000,
            per_principal: 1_000,
        }
    }
}

/// What mints sessions for STS calls (the STS engine, [`crate::sts::Sts`]),
/// as a replica's [`crate::sources::Registry`] holds it.
#[async_trait]
pub trait SessionIssuer: Send + Sync + 'static {
    async fn assume_role_with_web_identity(
        &self,
        req: WebIdentityRequest,
    ) -> Result<AssumedRole, StsError>;

    /// Puts `roles` in force for the sessions minted from now on (a
    /// reload of the config file); sessions already minted keep what they
    /// got. `false`: this issuer's roles do not change while it runs.
    fn set_roles(&self, roles: crate::roles::Roles) -> bool {
        let _ = roles;
        false
    }
}

/// A session with its secret. Deliberately not `Serialize`: a store
/// defines its own (sealed) stored form.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub info: SessionInfo,
    pub secret: Secret,
    /// SHA-256 of the session token: the token itself is never kept.
    pub token_sha256: [u8; 32],
}

/// What may be shown of a session: everything but its secret and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub access_key: String,
    pub principal: String,
    /// The token's groups and the role's.
    pub groups: Vec<String>,
    /// The token's claims, flattened to strings, for policy.
    pub claims: Vec<(String, String)>,
    pub role_arn: String,
    pub session_name: String,
    /// The token's `sub` and issuer.
    pub subject: String,
    pub provider: String,
    /// Unix seconds.
    pub created: i64,
    pub expires: i64,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("info", &self.info)
            .field("secret", &"<redacted>")
            .field("token_sha256", &"<redacted>")
            .finish()
    }
}

/// What a store knows of an access key that looks like a session's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionLookup {
    Live(Box<SessionRecord>),
    /// It was a session, and it expired (at most [`EXPIRED_KNOWN_FOR`]
    /// ago). Its secret is gone; the SHA-256 of its token is kept (`None`
    /// when the store no longer has it), so that only a caller who shows
    /// the token hears that it expired.
    Expired {
        token_sha256: Option<[u8; 32]>,
    },
    /// Never issued, revoked, or expired long ago.
    Unknown,
}

/// Which sessions a revocation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionTarget {
    AccessKey(String),
    Principal(String),
}

/// Whether `access_key` has the shape of a session key: `ASIA` and 16
/// characters of `[A-Z2-7]`. Identity sources skip the store for any other.
pub fn is_session_key(access_key: &str) -> bool {
    access_key.len() == 20
        && access_key.starts_with("ASIA")
        && access_key[4..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

/// A fresh session's credentials: what the client gets once.
pub struct NewCredentials {
    pub access_key: String,
    pub secret: Secret,
    pub token: Secret,
}

/// Mints random credentials: an `ASIA…` key of 20 characters (80 random
/// bits), a 40-character secret (240 bits) and a 64-character token (384
/// bits), the last two base64url.
pub fn new_credentials(rng: &SystemRandom) -> Result<NewCredentials, ring::error::Unspecified> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut key = [0u8; 16];
    let mut secret = [0u8; 30];
    let mut token = [0u8; 48];
    rng.fill(&mut key)?;
    rng.fill(&mut secret)?;
    rng.fill(&mut token)?;
    let mut access_key = String::from("ASIA");
    access_key.extend(
        key.iter()
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
    );
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok(NewCredentials {
        access_key,
        secret: Secret::new(b64.encode(secret)),
        token: Secret::new(b64.encode(token)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_have_aws_shapes() {
        let rng = SystemRandom::new();
        let a = new_credentials(&rng).unwrap();
        let b = new_credentials(&rng).unwrap();
        assert!(is_session_key(&a.access_key), "{}", a.access_key);
        assert_eq!(a.secret.expose().len(), 40);
        assert_eq!(a.token.expose().len(), 64);
        assert_ne!(a.access_key, b.access_key);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn session_keys_are_told_apart() {
        assert!(is_session_key("ASIAABCDEFGHIJKLMN23"));
        for not in [
            "AKIAABCDEFGHIJKLMN23",
            "ASIAABCDEFGHIJKLMN2",
            "ASIAabcdefghijklmn23",
            "ASIAABCDEFGHIJKLMN18",
            "S3GATEALICE01",
            "ASIAABCDEFGHIJKLMNÄ",
        ] {
            assert!(!is_session_key(not), "{not}");
        }
    }

    #[test]
    fn debug_hides_secret_and_token() {
        let rec = SessionRecord {
            info: SessionInfo {
                access_key: "ASIAABCDEFGHIJKLMN23".into(),
                principal: "p".into(),
                groups: vec![],
                claims: vec![],
                role_arn: "r".into(),
                session_name: "s".into(),
                subject: "sub".into(),
                provider: "iss".into(),
                created: 1,
                expires: 2,
            },
            secret: Secret::new("the-secret-value"),
            token_sha256: [9; 32],
        };
        let dbg = format!("{rec:?}");
        assert!(
            !dbg.contains("the-secret-value") && !dbg.contains("9, 9"),
            "{dbg}"
        );
    }
}
