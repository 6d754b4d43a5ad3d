//! Exchanged backend credentials: a long-lived secret (an IBM Cloud API
//! key, an AWS key pair allowed to assume a role) traded at a token
//! service for a temporary credential, which is all a data plane ever
//! gets.
//!
//! - [`ibm`]: `kind = "ibm_iam"`, IAM's apikey grant → a bearer token.
//! - [`sts`]: `kind = "aws_assume_role"`, STS `AssumeRole` → a SigV4 session.
//!
//! [`Exchanges`] is standing (it lives as long as the replica and keeps each
//! backend's temporary credential across state versions);
//! [`ExchangedCredentials`] is the compiled source that hands them out for
//! one state version. A credential is refreshed when less than
//! max(5 min, ⅙ of its lifetime) is left (at most half of it). One exchange
//! runs at a time per backend: inside a replica, askers wait for the
//! exchange in flight; across replicas sharing a Redis store, a lock
//! (`p:exchange-lock:<backend>`) elects the one that exchanges and the
//! others read its result (`p:exchanged:<backend>`, sealed). A failed
//! exchange backs off (1 s doubling to 30 s); meanwhile a credential that
//! is still valid is used, and without one the route fails (503), never an
//! unsigned request. Logs and errors name the backend and the HTTP status,
//! never a key, secret or token.

mod http;
mod ibm;
mod sts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use s3gate_proto::{BackendAuth, BackendCredentials, Redacted};
use serde::{Deserialize, Serialize};

use super::credentials::{CredentialRequest, CredentialSource};
use super::SourceError;
use crate::config::Secret;
use crate::credential::CredentialSpec;
use crate::state::State;
use crate::store::Store;

const SOURCE: &str = "exchanged";
/// How long one replica may hold a backend's exchange lock.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long a replica waits for another's exchange before giving up.
const WAIT_FOR_PEER: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(100);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A temporary credential as an exchange answers it.
pub(crate) struct Temporary {
    pub auth: BackendAuth,
    pub expires_unix: i64,
}

/// Percent-encodes a form value (`application/x-www-form-urlencoded`,
/// spaces as `%20`, which every form parser reads).
pub(crate) fn form_encode(value: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const FORM: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(value, FORM).to_string()
}

/// The standing half: every backend's exchanger and temporary credential,
/// kept across state versions (a backend whose spec changed starts over).
pub struct Exchanges {
    /// Set when other replicas share the store.
    store: Option<Arc<dyn Store>>,
    /// This replica's lock value.
    holder: String,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Exchanges {
    /// Exchanges coordinated with the other replicas of `store` when it is
    /// shared (Redis); one replica's own otherwise.
    pub fn new(store: Option<Arc<dyn Store>>) -> Arc<Self> {
        let mut id = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        Arc::new(Self {
            store: store.filter(|s| s.shares_exchanges()),
            holder: id.iter().map(|b| format!("{b:02x}")).collect(),
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The slot of `backend` for `spec`: the kept one while the spec is the
    /// same, a new one when it changed.
    fn slot(&self, backend: &str, spec: &CredentialSpec) -> Result<Arc<Slot>, SourceError> {
        let fingerprint = fingerprint(backend, spec);
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| SourceError::new(SOURCE, "exchange table poisoned"))?;
        if let Some(slot) = slots.get(backend) {
            if slot.fingerprint == fingerprint {
                return Ok(slot.clone());
            }
        }
        let exchanger = Exchanger::new(spec)
            .map_err(|m| SourceError::new(SOURCE, format!("backend {backend}: {m}")))?;
        let slot = Arc::new(Slot {
            backend: backend.to_owned(),
            fingerprint,
            exchanger,
            current: RwLock::new(None),
            flight: Arc::new(tokio::sync::Mutex::new(Flight::default())),
        });
        slots.insert(backend.to_owned(), slot.clone());
        Ok(slot)
    }

    /// Forgets backends no longer in `state`.
    fn retain(&self, state: &State) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.retain(|name, _| {
                state
                    .backends
                    .get(name)
                    .is_some_and(|b| b.credentials.is_exchanged())
            });
        }
    }

    /// `backend`'s temporary credential: the kept one while fresh, else
    /// from one exchange (this replica's, or another's through the store).
    pub async fn credentials(
        self: &Arc<Self>,
        backend: &str,
        spec: &CredentialSpec,
    ) -> Result<Arc<BackendCredentials>, SourceError> {
        let slot = self.slot(backend, spec)?;
        if let Some(c) = slot.current().filter(|c| c.fresh(crate::unix_now())) {
            return Ok(c.creds);
        }
        let flight = slot.flight.clone().lock_owned().await;
        if let Some(c) = slot.current().filter(|c| c.fresh(crate::unix_now())) {
            return Ok(c.creds);
        }
        if flight.retry_at.is_some_and(|at| Instant::now() < at) {
            let error = flight.last_error.clone();
            return slot.stale_or(error);
        }
        // In a task of its own, holding the flight: an asker that gives up
        // (its RPC deadline passed) neither cancels the exchange nor lets a
        // second one start.
        let this = self.clone();
        let task_slot = slot.clone();
        let task = tokio::spawn(async move {
            let mut flight = flight;
            let outcome = this.refresh(&task_slot).await;
            match outcome {
                Ok(current) => {
                    tracing::info!(
                        backend = %task_slot.backend,
                        expires_unix = current.expires_unix,
                        "exchanged backend credential refreshed"
                    );
                    *flight = Flight::default();
                    task_slot.set(current);
                    Ok(())
                }
                Err(error) => {
                    flight.failures = flight.failures.saturating_add(1);
                    let backoff = MIN_BACKOFF
                        .saturating_mul(1 << flight.failures.saturating_sub(1).min(5))
                        .min(MAX_BACKOFF);
                    flight.retry_at = Some(Instant::now() + backoff);
                    tracing::warn!(
                        backend = %task_slot.backend,
                        %error,
                        retry_in = ?backoff,
                        "backend credential exchange failed"
                    );
                    flight.last_error = error.clone();
                    Err(error)
                }
            }
        });
        match task.await {
            Ok(Ok(())) => slot.current().map(|c| c.creds).ok_or_else(|| {
                SourceError::new(SOURCE, format!("backend {backend}: no credential"))
            }),
            Ok(Err(error)) => slot.stale_or(error),
            Err(_) => slot.stale_or("the exchange task failed".to_owned()),
        }
    }

    /// One exchange, or another replica's result.
    async fn refresh(&self, slot: &Slot) -> Result<Current, String> {
        let Some(store) = &self.store else {
            return slot.exchange().await;
        };
        let deadline = Instant::now() + WAIT_FOR_PEER;
        loop {
            match store.exchanged(&slot.backend).await {
                Ok(Some(shared)) => {
                    if let Some(c) = Current::from_shared(&shared, &slot.fingerprint)
                        .filter(|c| c.fresh(crate::unix_now()))
                    {
                        return Ok(c);
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    // Still a correct credential, only not shared.
                    tracing::warn!(backend = %slot.backend, %error, "store unavailable; exchanging without it");
                    return slot.exchange().await;
                }
            }
            match store
                .lock_exchange(&slot.backend, &self.holder, LOCK_TTL)
                .await
            {
                Ok(true) => {
                    let outcome = slot.exchange().await;
                    if let Ok(c) = &outcome {
                        let shared = c.to_shared(&slot.fingerprint);
                        if let Err(error) = store
                            .put_exchanged(&slot.backend, &shared, c.expires_unix)
                            .await
                        {
                            tracing::warn!(backend = %slot.backend, %error, "cannot share the exchanged credential");
                        }
                    }
                    if let Err(error) = store.unlock_exchange(&slot.backend, &self.holder).await {
                        tracing::warn!(backend = %slot.backend, %error, "cannot release the exchange lock");
                    }
                    return outcome;
                }
                Ok(false) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(false) => {
                    return Err("another control plane is exchanging and has no result yet".into())
                }
                Err(error) => {
                    tracing::warn!(backend = %slot.backend, %error, "store unavailable; exchanging without it");
                    return slot.exchange().await;
                }
            }
        }
    }
}

/// What identifies a backend's spec, secrets included (a rotated API key
/// invalidates the kept token). Kept in memory and inside the sealed
/// shared record only.
fn fingerprint(backend: &str, spec: &CredentialSpec) -> String {
    let plain: Result<CredentialSpec<String>, std::convert::Infallible> =
        spec.try_map(|_, s| Ok(s.expose().clone()));
    let json = plain
        .ok()
        .and_then(|p| serde_json::to_vec(&p).ok())
        .unwrap_or_default();
    let mut input = backend.as_bytes().to_vec();
    input.push(0);
    input.extend_from_slice(&json);
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// One backend's exchanger and what it got.
struct Slot {
    backend: String,
    fingerprint: String,
    exchanger: Exchanger,
    current: RwLock<Option<Current>>,
    /// Held while an exchange is in flight; its state is the backoff.
    flight: Arc<tokio::sync::Mutex<Flight>>,
}

#[derive(Default)]
struct Flight {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl Slot {
    fn current(&self) -> Option<Current> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, current: Current) {
        if let Ok(mut c) = self.current.write() {
            *c = Some(current);
        }
    }

    /// The kept credential while it is still valid, else the error.
    fn stale_or(&self, error: String) -> Result<Arc<BackendCredentials>, SourceError> {
        match self.current().filter(|c| c.usable(crate::unix_now())) {
            Some(c) => Ok(c.creds),
            None => Err(SourceError::new(
                SOURCE,
                format!(
                    "backend {}: credential exchange failed: {error}",
                    self.backend
                ),
            )),
        }
    }

    async fn exchange(&self) -> Result<Current, String> {
        let obtained_unix = crate::unix_now();
        let exchanged = match &self.exchanger {
            Exchanger::Ibm(x) => x.exchange().await,
            Exchanger::Sts(x) => x.exchange().await,
        };
        let metrics = s3gate_observe::metrics();
        let t = match exchanged {
            Ok(t) => {
                metrics.credential_refresh(&self.backend, "ok");
                t
            }
            Err(error) => {
                metrics.credential_refresh(&self.backend, "failed");
                return Err(error);
            }
        };
        Ok(Current::new(t.auth, obtained_unix, t.expires_unix))
    }
}

enum Exchanger {
    Ibm(Box<ibm::IbmIam>),
    Sts(Box<sts::AssumeRole>),
}

impl Exchanger {
    fn new(spec: &CredentialSpec) -> Result<Self, String> {
        match spec {
            CredentialSpec::IbmIam {
                api_key,
                iam_endpoint,
                service_instance_id,
                ca_bundle,
            } => Ok(Self::Ibm(Box::new(ibm::IbmIam::new(
                iam_endpoint,
                api_key.clone(),
                service_instance_id.clone(),
                ca_bundle.as_deref(),
            )?))),
            CredentialSpec::AwsAssumeRole {
                role_arn,
                access_key,
                secret_key,
                session_token,
                sts_endpoint,
                duration,
                session_name,
                external_id,
                sts_region,
                ca_bundle,
            } => Ok(Self::Sts(Box::new(sts::AssumeRole::new(sts::Settings {
                endpoint: sts_endpoint,
                region: sts_region.as_deref(),
                role_arn,
                access_key,
                secret_key,
                session_token: session_token.as_ref(),
                duration: *duration,
                session_name,
                external_id: external_id.as_deref(),
                ca_bundle: ca_bundle.as_deref(),
            })?))),
            CredentialSpec::StaticHmac { .. } => Err("static_hmac is not exchanged".to_owned()),
        }
    }
}

/// A temporary credential and its lifetime.
#[derive(Clone)]
struct Current {
    creds: Arc<BackendCredentials>,
    obtained_unix: i64,
    expires_unix: i64,
}

impl Current {
    fn new(auth: BackendAuth, obtained_unix: i64, expires_unix: i64) -> Self {
        Self {
            creds: Arc::new(BackendCredentials {
                auth,
                expires_unix: Some(expires_unix),
                per_principal: false,
            }),
            obtained_unix,
            expires_unix,
        }
    }

    fn lifetime(&self) -> i64 {
        self.expires_unix.saturating_sub(self.obtained_unix).max(0)
    }

    /// When to exchange again: max(5 min, ⅙ of the lifetime) before
    /// expiry, but not earlier than half-way.
    fn refresh_at(&self) -> i64 {
        let life = self.lifetime();
        let margin = (life / 6).max(300).min(life / 2);
        self.expires_unix - margin
    }

    fn fresh(&self, now: i64) -> bool {
        now < self.refresh_at()
    }

    /// Still good to hand out while a refresh fails: a data plane keeps it
    /// until a minute (at most a quarter of the lifetime) before expiry.
    fn usable(&self, now: i64) -> bool {
        now < self.expires_unix - 60.min(self.lifetime() / 4)
    }

    fn to_shared(&self, fingerprint: &str) -> Secret {
        let auth = match &self.creds.auth {
            BackendAuth::SigV4 {
                access_key,
                secret_key,
                session_token,
            } => SharedAuth::Sigv4 {
                access_key: access_key.clone(),
                secret_key: secret_key.expose().clone(),
                session_token: session_token.as_ref().map(|t| t.expose().clone()),
            },
            BackendAuth::Bearer {
                token,
                service_instance_id,
            } => SharedAuth::Bearer {
                token: token.expose().clone(),
                service_instance_id: service_instance_id.clone(),
            },
        };
        let shared = Shared {
            fingerprint: fingerprint.to_owned(),
            obtained_unix: self.obtained_unix,
            expires_unix: self.expires_unix,
            auth,
        };
        Secret::new(serde_json::to_string(&shared).unwrap_or_default())
    }

    /// Another replica's result, if it was made from the same spec.
    fn from_shared(shared: &Secret, fingerprint: &str) -> Option<Self> {
        let s: Shared = serde_json::from_str(shared.expose()).ok()?;
        if s.fingerprint != fingerprint {
            return None;
        }
        let auth = match s.auth {
            SharedAuth::Sigv4 {
                access_key,
                secret_key,
                session_token,
            } => BackendAuth::SigV4 {
                access_key,
                secret_key: Redacted::new(secret_key),
                session_token: session_token.map(Redacted::new),
            },
            SharedAuth::Bearer {
                token,
                service_instance_id,
            } => BackendAuth::Bearer {
                token: Redacted::new(token),
                service_instance_id,
            },
        };
        Some(Self::new(auth, s.obtained_unix, s.expires_unix))
    }
}

/// An exchange's result as replicas share it (sealed whole by the store).
/// No `Debug`: it holds the secrets.
#[derive(Serialize, Deserialize)]
struct Shared {
    fingerprint: String,
    obtained_unix: i64,
    expires_unix: i64,
    auth: SharedAuth,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SharedAuth {
    Sigv4 {
        access_key: String,
        secret_key: String,
        session_token: Option<String>,
    },
    Bearer {
        token: String,
        service_instance_id: Option<String>,
    },
}

/// The compiled half: the exchanged backends of one state version.
pub struct ExchangedCredentials {
    specs: HashMap<String, CredentialSpec>,
    exchanges: Arc<Exchanges>,
}

impl ExchangedCredentials {
    pub fn from_state(state: &State, exchanges: &Arc<Exchanges>) -> Self {
        exchanges.retain(state);
        Self {
            specs: state
                .backends
                .values()
                .filter(|b| b.credentials.is_exchanged())
                .map(|b| (b.name.clone(), b.credentials.clone()))
                .collect(),
            exchanges: exchanges.clone(),
        }
    }
}

#[async_trait]
impl CredentialSource for ExchangedCredentials {
    fn name(&self) -> &'static str {
        SOURCE
    }

    async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Option<Arc<BackendCredentials>>, SourceError> {
        let Some(spec) = self.specs.get(req.backend) else {
            return Ok(None);
        };
        self.exchanges
            .credentials(req.backend, spec)
            .await
            .map(Some)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bearer(obtained: i64, expires: i64) -> Current {
        Current::new(
            BackendAuth::Bearer {
                token: Redacted::new("tok".to_owned()),
                service_instance_id: Some("crn:x".into()),
            },
            obtained,
            expires,
        )
    }

    #[test]
    fn refreshed_before_expiry() {
        // An hour: ⅙ (10 min) before.
        let c = bearer(0, 3600);
        assert_eq!(c.refresh_at(), 3000);
        assert!(c.fresh(2999) && !c.fresh(3000));
        // Fifteen minutes: the five-minute floor.
        assert_eq!(bearer(0, 900).refresh_at(), 600);
        // Short-lived: half-way.
        assert_eq!(bearer(100, 120).refresh_at(), 110);
        assert!(bearer(0, 3600).usable(3539) && !bearer(0, 3600).usable(3540));
        assert!(bearer(0, 20).usable(14) && !bearer(0, 20).usable(15));
    }

    #[test]
    fn shared_form_round_trips_and_checks_the_spec() {
        let c = bearer(10, 4000);
        let shared = c.to_shared("fp1");
        let back = Current::from_shared(&shared, "fp1").unwrap();
        assert_eq!(back.creds, c.creds);
        assert_eq!((back.obtained_unix, back.expires_unix), (10, 4000));
        assert!(Current::from_shared(&shared, "fp2").is_none());
        let sigv4 = Current::new(
            BackendAuth::SigV4 {
                access_key: "ASIA".into(),
                secret_key: Redacted::new("s".to_owned()),
                session_token: Some(Redacted::new("t".to_owned())),
            },
            1,
            2000,
        );
        let back = Current::from_shared(&sigv4.to_shared("f"), "f").unwrap();
        assert_eq!(back.creds, sigv4.creds);
    }

    #[test]
    fn fingerprint_follows_secrets() {
        let spec = |key: &str| CredentialSpec::IbmIam {
            api_key: Secret::new(key.to_owned()),
            iam_endpoint: "https://iam".into(),
            service_instance_id: None,
            ca_bundle: None,
        };
        assert_eq!(fingerprint("b", &spec("k1")), fingerprint("b", &spec("k1")));
        assert_ne!(fingerprint("b", &spec("k1")), fingerprint("b", &spec("k2")));
        assert_ne!(fingerprint("a", &spec("k1")), fingerprint("b", &spec("k1")));
        assert!(!fingerprint("b", &spec("k1")).contains("k1"));
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(form_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(
            form_encode("urn:ibm:params:oauth:grant-type:apikey"),
            "urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey"
        );
    }

    #[test]
    fn rfc3339_expirations_parse() {
        for text in ["2030-01-01T00:00:00Z", "2030-01-01T00:00:00.123Z"] {
            let t = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).unwrap();
            assert_eq!(
                t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
                1_893_456_000
            );
        }
    }

    /// A dead token service: the route fails at once (no hang), and the
    /// error names the backend, never the key.
    #[tokio::test]
    async fn failure_is_closed_and_quiet() {
        let exchanges = Exchanges::new(None);
        let spec = CredentialSpec::IbmIam {
            api_key: Secret::new("APIKEY-SECRET-VALUE".to_owned()),
            iam_endpoint: "http://127.0.0.1:9/identity/token".into(),
            service_instance_id: None,
            ca_bundle: None,
        };
        let started = Instant::now();
        let e = exchanges.credentials("ibm", &spec).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(e.message.contains("backend ibm"), "{e}");
        assert!(!e.to_string().contains("APIKEY-SECRET-VALUE"), "{e}");
        // Backing off: the next ask fails without trying.
        let started = Instant::now();
        exchanges.credentials("ibm", &spec).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
