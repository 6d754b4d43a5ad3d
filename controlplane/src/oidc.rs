//! OpenID Connect providers (`[[oidc]]`): who a JWT belongs to.
//!
//! [`Providers`] is built once from the config and kept for the process's
//! life (a standing part of the control plane, like the identity sources
//! that use it). Per provider it holds the discovery document and the JSON
//! Web Key Set, both fetched over http(s) from the issuer, and verifies
//! tokens against them locally:
//!
//! - **Algorithms.** RS256/384/512, PS256/384/512, ES256, ES384, EdDSA
//!   (Ed25519), through `jsonwebtoken`'s RustCrypto backend. `alg: none` and
//!   every HMAC algorithm are refused before any key is looked at; a
//!   symmetric JWK (`kty: oct`) is never loaded, so a public key can never
//!   be used as an HMAC secret. The token's `alg` must fit the key's type
//!   and curve, and equal the JWK's own `alg` when it has one.
//! - **Claims.** `iss` (exactly the configured issuer), `aud` (any of the
//!   configured audiences), `exp`, `nbf` and `iat` (not in the future) are
//!   checked with [`LEEWAY`] of clock skew either way; `exp`, `iss` and
//!   `aud` are required.
//! - **Keys.** Fetched on first use (and in the background at start-up),
//!   used as they are for [`FRESH_FOR`], then refreshed in the background;
//!   a set that could not be refreshed for [`MAX_STALE`] is not used (fail
//!   closed: [`TokenError::Unavailable`]). A token naming an unknown `kid`
//!   triggers a refetch — one at a time per provider, and at most one per
//!   [`MIN_REFETCH`], so junk tokens cannot make s3gate hammer the IdP. A
//!   `kid` still unknown after a refetch is [`TokenError::Invalid`].
//!
//! Neither a token nor anything derived from its signature reaches a log
//! line or an error message.

mod fetch;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use self::fetch::Fetcher;
use crate::config::OidcConfig;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY: u64 = 60;
/// Keys are used without asking the IdP again for this long.
pub const FRESH_FOR: Duration = Duration::from_secs(300);
/// Keys the IdP could not confirm for this long are not used any more.
pub const MAX_STALE: Duration = Duration::from_secs(3600);
/// At most one JWKS fetch per provider in this window, whatever the tokens.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Largest token accepted, in bytes.
pub const MAX_TOKEN: usize = 16 << 10;

/// Most keys read from one JWKS.
const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;
/// Limits on the principal and group names taken from a token.
const MAX_NAME: usize = 256;
const MAX_GROUPS: usize = 256;

// === public types ===

/// The configured providers. Built once; holds each provider's discovery
/// document and key set across every state change.
pub struct Providers {
    /// In config order.
    providers: Vec<Arc<Provider>>,
    by_name: HashMap<Arc<str>, Arc<Provider>>,
}

/// A token that verified, and what s3gate makes of it.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// The `[[oidc]]` entry that verified it.
    pub provider: Arc<str>,
    pub issuer: String,
    /// The `sub` claim (empty if the token has none).
    pub subject: String,
    /// The value of the provider's `principal_claim`.
    pub principal: String,
    /// The values of the provider's `groups_claim`.
    pub groups: Vec<String>,
    /// The configured audience the token was for.
    pub audience: String,
    /// The `exp` claim, Unix seconds.
    pub expires_unix: i64,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

/// Why a token was not accepted. The messages never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    /// Signature, `aud`, `iss`, `alg`, unknown `kid`, malformed.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The IdP could not be reached or answered nonsense: nobody can tell
    /// whether the token is good, so it is refused as a server fault (503).
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

/// A provider that cannot be set up (its CA bundle does not load).
#[derive(Debug, thiserror::Error)]
#[error("oidc provider {name:?}: {message}")]
pub struct SetupError {
    pub name: String,
    pub message: String,
}

// === impl Providers ===

impl Providers {
    /// Builds every provider and starts fetching their keys in the
    /// background (a provider that cannot be reached yet is not an error:
    /// its tokens get [`TokenError::Unavailable`] until it answers). Must
    /// run inside a tokio runtime.
    pub async fn start(cfg: &[OidcConfig]) -> Result<Arc<Self>, SetupError> {
        let providers = Self::new(cfg)?;
        providers.prefetch();
        Ok(providers)
    }

    /// Starts fetching every provider's keys in the background. Must run
    /// inside a tokio runtime.
    pub fn prefetch(&self) {
        for p in &self.providers {
            let p = p.clone();
            tokio::spawn(async move {
                match p.refresh(0).await {
                    Ok(Some(set)) => info!(
                        provider = &*p.name,
                        keys = set.keys.len(),
                        "oidc provider keys loaded"
                    ),
                    Ok(None) => {}
                    Err(error) => {
                        warn!(provider = &*p.name, %error, "oidc provider not reachable yet")
                    }
                }
            });
        }
    }

    /// Builds every provider without fetching anything (no runtime needed):
    /// keys are fetched on the first token, or by [`Providers::prefetch`].
    pub fn new(cfg: &[OidcConfig]) -> Result<Arc<Self>, SetupError> {
        // jsonwebtoken picks its backend from its features; installing ours
        // explicitly keeps a second backend elsewhere in the build from
        // leaving it with none. An `Err` means one is installed already.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let mut providers = Vec::with_capacity(cfg.len());
        let mut by_name = HashMap::with_capacity(cfg.len());
        for c in cfg {
            let fetcher = Fetcher::new(c.ca_bundle.as_deref()).map_err(|message| SetupError {
                name: c.name.clone(),
                message,
            })?;
            let p = Arc::new(Provider::new(c, fetcher));
            by_name.insert(p.name.clone(), p.clone());
            providers.push(p);
        }
        Ok(Arc::new(Self { providers, by_name }))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| &*p.name)
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Verifies a JWT against the provider named `name`.
    pub async fn verify(&self, name: &str, token: &str) -> Result<VerifiedToken, TokenError> {
        let provider = self
            .by_name
            .get(name)
            .ok_or_else(|| TokenError::Invalid(format!("no oidc provider {:?}", clip(name))))?;
        provider.verify(token).await
    }

    /// Verifies against the configured provider whose issuer is the token's
    /// `iss` (read unverified, only to pick the provider; the provider then
    /// checks everything). With several providers for one issuer (different
    /// audiences), the first that accepts the token wins.
    pub async fn verify_any(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let iss = unverified_issuer(token)?;
        let mut first_error = None;
        let mut unavailable = None;
        for p in self.providers.iter().filter(|p| p.issuer == iss) {
            match p.verify(token).await {
                Ok(v) => return Ok(v),
                Err(e @ TokenError::Unavailable(_)) => unavailable = Some(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // A provider that could not tell fails the whole answer closed.
        Err(unavailable.or(first_error).unwrap_or_else(|| {
            TokenError::Invalid(format!(
                "no oidc provider is configured for issuer {:?}",
                clip(&iss)
            ))
        }))
    }

    /// How many times the keys of provider `name` were fetched (for tests
    /// and metrics).
    pub fn jwks_fetches(&self, name: &str) -> Option<u64> {
        self.by_name
            .get(name)
            .map(|p| p.fetches.load(Ordering::Relaxed))
    }
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.providers.iter().map(|p| (&*p.name, &p.issuer)))
            .finish()
    }
}

// === one provider ===

struct Provider {
    name: Arc<str>,
    issuer: String,
    audiences: Vec<String>,
    principal_claim: String,
    groups_claim: Option<String>,
    fetcher: Fetcher,
    /// The key set tokens are verified against; replaced whole by a fetch.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching: one fetch at a time, and the others wait for
    /// its result instead of fetching again.
    fetch: tokio::sync::Mutex<FetchState>,
    /// When the last fetch started (ms since `born`), readable without
    /// the lock: whether a background refresh is worth spawning.
    last_attempt_ms: AtomicU64,
    refreshing: AtomicBool,
    born: Instant,
    /// [`MIN_REFETCH`] (shorter in tests).
    min_refetch: Duration,
    /// JWKS fetches attempted.
    fetches: AtomicU64,
}

#[derive(Default)]
struct FetchState {
    /// From discovery; forgotten when the JWKS cannot be fetched, so the
    /// next attempt discovers again.
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
    /// Why the last attempt failed, if it did.
    last_error: Option<String>,
    generation: u64,
}

struct KeySet {
    keys: Vec<Key>,
    fetched: Instant,
    generation: u64,
}

/// One verification key from the JWKS.
struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, if it names one (then it is the only one).
    alg: Option<Algorithm>,
    kind: KeyKind,
    decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::P256, ES256)
                | (KeyKind::P384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl Provider {
    fn new(c: &OidcConfig, fetcher: Fetcher) -> Self {
        Self {
            name: Arc::from(c.name.as_str()),
            issuer: c.issuer.clone(),
            audiences: c.audiences.clone(),
            principal_claim: c.principal_claim.clone(),
            groups_claim: c.groups_claim.clone(),
            fetcher,
            keys: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            last_attempt_ms: AtomicU64::new(u64::MAX),
            refreshing: AtomicBool::new(false),
            born: Instant::now(),
            min_refetch: MIN_REFETCH,
            fetches: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        match self.keys.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, set: Arc<KeySet>) {
        match self.keys.write() {
            Ok(mut guard) => *guard = Some(set),
            Err(poisoned) => *poisoned.into_inner() = Some(set),
        }
    }

    /// The keys to verify with now: the current set while fresh; a stale
    /// one while a background refresh runs; none once it is too old.
    async fn keys_for_verify(self: &Arc<Self>) -> Result<Arc<KeySet>, TokenError> {
        let set = match self.current() {
            Some(set) if set.fetched.elapsed() < FRESH_FOR => return Ok(set),
            Some(set) if set.fetched.elapsed() < MAX_STALE => {
                self.refresh_in_background(set.generation);
                return Ok(set);
            }
            Some(set) => self.refresh(set.generation).await?,
            None => self.refresh(0).await?,
        };
        match set {
            Some(set) if set.fetched.elapsed() < MAX_STALE => Ok(set),
            _ => Err(TokenError::Unavailable(format!(
                "no current keys for oidc provider {}",
                self.name
            ))),
        }
    }

    fn refresh_in_background(self: &Arc<Self>, seen: u64) {
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        let now = self.born.elapsed().as_millis() as u64;
        if last != u64::MAX && now.saturating_sub(last) < self.min_refetch.as_millis() as u64 {
            return;
        }
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let p = self.clone();
        tokio::spawn(async move {
            if let Err(error) = p.refresh(seen).await {
                warn!(provider = &*p.name, %error, "oidc keys not refreshed; using the previous ones");
            }
            p.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the key set again, unless another caller did since the set
    /// of generation `seen` (then that result is used), or a fetch was
    /// attempted within [`MIN_REFETCH`] (then its outcome stands: the
    /// current set, or the error). `Ok(None)`: no set and no error yet.
    async fn refresh(&self, seen: u64) -> Result<Option<Arc<KeySet>>, TokenError> {
        let mut st = self.fetch.lock().await;
        let current = self.current();
        if let Some(set) = &current {
            if set.generation != seen {
                return Ok(current);
            }
        }
        if st
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refetch)
        {
            return match &st.last_error {
                Some(e) => Err(TokenError::Unavailable(e.clone())),
                None => Ok(current),
            };
        }
        st.last_attempt = Some(Instant::now());
        self.last_attempt_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch_keys(&mut st).await {
            Ok(keys) => {
                st.last_error = None;
                st.generation += 1;
                debug!(
                    provider = &*self.name,
                    keys = keys.len(),
                    "oidc keys fetched"
                );
                let set = Arc::new(KeySet {
                    keys,
                    fetched: Instant::now(),
                    generation: st.generation,
                });
                self.install(set.clone());
                Ok(Some(set))
            }
            Err(e) => {
                let e = format!("oidc provider {}: {e}", self.name);
                warn!(provider = &*self.name, error = %e, "cannot fetch oidc keys");
                st.last_error = Some(e.clone());
                Err(TokenError::Unavailable(e))
            }
        }
    }

    async fn fetch_keys(&self, st: &mut FetchState) -> Result<Vec<Key>, String> {
        let jwks_uri = match &st.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                st.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let doc = match self.fetcher.get_json(&jwks_uri, fetch::MAX_JWKS).await {
            Ok(doc) => doc,
            Err(e) => {
                st.jwks_uri = None;
                return Err(format!("JWKS {jwks_uri}: {e}"));
            }
        };
        let keys = parse_jwks(&doc).map_err(|e| format!("JWKS {jwks_uri}: {e}"))?;
        if keys.is_empty() {
            warn!(provider = &*self.name, %jwks_uri, "the JWKS holds no usable signing key");
        }
        Ok(keys)
    }

    /// `jwks_uri` from the discovery document, whose `issuer` must be
    /// exactly the configured one.
    async fn discover(&self) -> Result<String, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let doc = self
            .fetcher
            .get_json(&url, fetch::MAX_DISCOVERY)
            .await
            .map_err(|e| format!("discovery {url}: {e}"))?;
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let d: Discovery = serde_json::from_value(doc)
            .map_err(|e| format!("discovery {url}: not a discovery document: {e}"))?;
        if d.issuer != self.issuer {
            return Err(format!(
                "discovery {url}: issuer is {:?}, not the configured {:?}",
                clip(&d.issuer),
                self.issuer
            ));
        }
        if !(d.jwks_uri.starts_with("https://") || d.jwks_uri.starts_with("http://")) {
            return Err(format!(
                "discovery {url}: jwks_uri {:?} is not an http(s) URL",
                clip(&d.jwks_uri)
            ));
        }
        Ok(d.jwks_uri)
    }

    async fn verify(self: &Arc<Self>, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Invalid(format!(
                "token is larger than {MAX_TOKEN} bytes"
            )));
        }
        let header = parse_header(token)?;
        let alg = accepted_alg(&header.alg)?;
        let mut set = self.keys_for_verify().await?;
        if let Some(kid) = &header.kid {
            if !set.keys.iter().any(|k| k.kid.as_ref() == Some(kid)) {
                // A key the IdP may have added since: ask again (rate-limited).
                set = match self.refresh(set.generation).await? {
                    Some(set) => set,
                    None => {
                        return Err(TokenError::Unavailable(format!(
                            "no keys for oidc provider {}",
                            self.name
                        )))
                    }
                };
            }
        }
        let named: Vec<&Key> = set
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if named.is_empty() {
            return Err(TokenError::Invalid(match &header.kid {
                Some(kid) => format!("unknown kid {:?}", clip(kid)),
                None => "the provider has no keys".to_owned(),
            }));
        }
        let candidates: Vec<&Key> = named.into_iter().filter(|k| k.fits(alg)).collect();
        if candidates.is_empty() {
            return Err(TokenError::Invalid(format!(
                "alg {alg:?} does not fit the provider's key"
            )));
        }
        let validation = self.validation(alg);
        let mut result = Err(TokenError::Invalid("no key verified the token".to_owned()));
        for key in candidates {
            result = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
                .map(|data| data.claims)
                .map_err(token_error);
            // Without a kid every fitting key is tried; only a bad
            // signature means "try the next one".
            match &result {
                Err(TokenError::Invalid(m)) if m == BAD_SIGNATURE => continue,
                _ => break,
            }
        }
        let claims = result?;
        self.accept(claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = LEEWAY;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.set_audience(&self.audiences);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v
    }

    /// The checks `jsonwebtoken` does not make, and the mapping of claims
    /// to a principal and groups.
    fn accept(&self, claims: Map<String, Value>) -> Result<VerifiedToken, TokenError> {
        let now = crate::unix_now();
        match claims.get("iat") {
            None => {}
            Some(Value::Number(n)) => {
                let iat = n.as_f64().unwrap_or(f64::MAX);
                if iat > (now + LEEWAY as i64) as f64 {
                    return Err(TokenError::NotYetValid);
                }
            }
            Some(_) => return Err(TokenError::Invalid("iat is not a number".to_owned())),
        }
        let expires_unix = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|exp| exp.floor() as i64)
            .ok_or_else(|| TokenError::Invalid("exp is not a number".to_owned()))?;
        let principal = principal_of(&claims, &self.principal_claim)?;
        let groups = match &self.groups_claim {
            Some(claim) => groups_of(&claims, claim)?,
            None => Vec::new(),
        };
        let audience = self
            .audiences
            .iter()
            .find(|a| audience_names(&claims, a))
            .cloned()
            .unwrap_or_default();
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(VerifiedToken {
            provider: self.name.clone(),
            issuer: self.issuer.clone(),
            subject,
            principal,
            groups,
            audience,
            expires_unix,
            claims,
        })
    }
}

// === tokens ===

/// The JOSE header fields s3gate looks at before verifying.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn b64url(part: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Invalid("not base64url".to_owned()))
}

/// The three parts of a compact JWS.
fn parts(token: &str) -> Result<[&str; 3], TokenError> {
    let mut it = token.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() => Ok([h, p, s]),
        _ => Err(TokenError::Invalid(
            "not a JWT (header.payload.signature)".to_owned(),
        )),
    }
}

fn parse_header(token: &str) -> Result<RawHeader, TokenError> {
    let [header, _, _] = parts(token)?;
    serde_json::from_slice(&b64url(header)?)
        .map_err(|_| TokenError::Invalid("malformed JOSE header".to_owned()))
}

/// The token's `iss`, unverified: only to pick the provider that verifies.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Invalid(format!(
            "token is larger than {MAX_TOKEN} bytes"
        )));
    }
    let [_, payload, _] = parts(token)?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<Value>,
    }
    let claims: Iss = serde_json::from_slice(&b64url(payload)?)
        .map_err(|_| TokenError::Invalid("malformed claims".to_owned()))?;
    match claims.iss {
        Some(Value::String(iss)) => Ok(iss),
        Some(_) => Err(TokenError::Invalid("iss is not a string".to_owned())),
        None => Err(TokenError::Invalid("token has no iss".to_owned())),
    }
}

/// The algorithms s3gate verifies. `none` and HMAC are refused by name,
/// before any key is looked at.
fn accepted_alg(alg: &str) -> Result<Algorithm, TokenError> {
    Ok(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        a if a.eq_ignore_ascii_case("none") => {
            return Err(TokenError::Invalid(
                "unsigned tokens (alg none) are refused".to_owned(),
            ))
        }
        a if a.starts_with("HS") => {
            return Err(TokenError::Invalid(format!(
                "HMAC algorithms ({}) are refused",
                clip(a)
            )))
        }
        a => {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted",
                clip(a)
            )))
        }
    })
}

const BAD_SIGNATURE: &str = "signature does not verify";

fn token_error(e: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => TokenError::Expired,
        K::ImmatureSignature => TokenError::NotYetValid,
        K::InvalidSignature => TokenError::Invalid(BAD_SIGNATURE.to_owned()),
        K::InvalidAudience => TokenError::Invalid("aud names none of the audiences".to_owned()),
        K::InvalidIssuer => TokenError::Invalid("iss is not the provider's issuer".to_owned()),
        K::MissingRequiredClaim(c) => TokenError::Invalid(format!("token has no {c} claim")),
        K::InvalidClaimFormat(c) => TokenError::Invalid(format!("malformed {c} claim")),
        K::InvalidAlgorithm => TokenError::Invalid("alg does not fit the key".to_owned()),
        K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => {
            TokenError::Invalid("the provider's key is unusable".to_owned())
        }
        _ => TokenError::Invalid("malformed token".to_owned()),
    }
}

/// Whether the token's `aud` (a string or an array) names `audience`.
fn audience_names(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// A principal or group name s3gate will use: not empty, not too long, no
/// control characters, not the anonymous marker.
fn usable_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.chars().any(char::is_control)
        && s != s3gate_proto::Principal::ANONYMOUS
}

fn principal_of(claims: &Map<String, Value>, claim: &str) -> Result<String, TokenError> {
    let value = match claims.get(claim) {
        Some(Value::String(s)) => s.clone(),
        // Numeric ids (some CI providers) are principals too.
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
        Some(_) => {
            return Err(TokenError::Invalid(format!(
                "the principal claim {claim:?} is not a string"
            )))
        }
        None => {
            return Err(TokenError::Invalid(format!(
                "token has no principal claim {claim:?}"
            )))
        }
    };
    if !usable_name(&value) {
        return Err(TokenError::Invalid(format!(
            "the principal claim {claim:?} is not a usable principal name"
        )));
    }
    Ok(value)
}

/// The groups claim: absent (no groups), a string (one group) or an array of
/// strings. Anything else refuses the token: dropping a group silently
/// could slip past a rule that denies it.
fn groups_of(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, TokenError> {
    let bad = || TokenError::Invalid(format!("the groups claim {claim:?} is not usable"));
    let groups = match claims.get(claim) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(g)) => vec![g.clone()],
        Some(Value::Array(list)) if list.len() <= MAX_GROUPS => list
            .iter()
            .map(|g| g.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(bad()),
    };
    if groups.iter().any(|g| !usable_name(g)) {
        return Err(bad());
    }
    Ok(groups)
}

// === keys ===

/// The JWK fields s3gate reads.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The signing keys of a JWKS document. Keys s3gate cannot or will not use
/// (symmetric, encryption-only, unknown types, small RSA) are skipped; a
/// document that is not a JWKS at all is an error.
fn parse_jwks(doc: &Value) -> Result<Vec<Key>, String> {
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS (no `keys` array)")?;
    let mut keys = Vec::new();
    for (i, raw) in list.iter().enumerate().take(MAX_KEYS) {
        match serde_json::from_value::<RawJwk>(raw.clone())
            .map_err(|e| e.to_string())
            .and_then(parse_jwk)
        {
            Ok(key) => keys.push(key),
            Err(why) => debug!(index = i, %why, "JWK skipped"),
        }
    }
    Ok(keys)
}

fn parse_jwk(jwk: RawJwk) -> Result<Key, String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signing key (use)".to_owned());
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err("not a verification key (key_ops)".to_owned());
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        Some(a) => Some(accepted_alg(a).map_err(|e| e.to_string())?),
    };
    let field = |f: &Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let v = f.as_deref().ok_or_else(|| format!("no {name}"))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|_| format!("{name} is not base64url"))
    };
    let (kind, decoding) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let n = field(&jwk.n, "n")?;
            let e = field(&jwk.e, "e")?;
            let n = strip_leading_zeros(&n);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is too small"));
            }
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range".to_owned());
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, &e))
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            let x = field(&jwk.x, "x")?;
            let y = field(&jwk.y, "y")?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        ("OKP", Some("Ed25519")) => {
            let x = field(&jwk.x, "x")?;
            // The backend slices 32 bytes off this key: anything else must
            // never reach it.
            if x.len() != 32 {
                return Err("Ed25519 keys are 32 bytes".to_owned());
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        ("oct", _) => return Err("symmetric keys are never used".to_owned()),
        (kty, crv) => return Err(format!("unsupported key type {kty} {crv:?}")),
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("alg {alg:?} does not fit a {kind:?} key"));
        }
    }
    Ok(Key {
        kid: jwk.kid,
        alg,
        kind,
        decoding,
    })
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// At most 64 characters of an untrusted string, for a message.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
