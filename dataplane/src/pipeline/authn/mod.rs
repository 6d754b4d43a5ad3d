//! Stage 2: who is asking? Authentication by credential: the request (and
//! its connection) carry at most one credential, and each kind is verified
//! in its own module.
//!
//! | credential | module | today |
//! |---|---|---|
//! | SigV4 `Authorization` header or presigned query (an STS session's key also needs its `X-Amz-Security-Token`) | [`sigv4`] | yes |
//! | SigV2 `Authorization: AWS key:signature` or presigned query (legacy) | [`sigv2`] | yes, unless `sigv2` is off |
//! | none (anonymous) | [`anonymous`] | yes |
//! | `Authorization: Bearer` (JWT), verified by the control plane | [`bearer`] | yes |
//! | mTLS client certificate (from [`ConnInfo`]) | [`mtls`] | yes |
//!
//! Anything auth-like that is malformed is an error, never anonymous.
//! Which credential counts when a request has more than one is
//! [`credential`]'s decision, and only its.

mod anonymous;
mod bearer;
pub mod mtls;
mod sigv2;
mod sigv4;

use std::sync::Arc;

use http::request::Parts;
use s3gate_proto::Principal;
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::sigv4::{AuthRequest, PayloadMode, VerifyError};

pub use self::bearer::{token_cache, TokenCache};
pub use self::mtls::{cert_cache, CertCache};
pub(crate) use self::sigv2::sigv2_entry_of;
pub use self::sigv2::{fold_presigned, sigv2_cache, SigV2Cache};
pub(crate) use self::sigv4::key_cache_entry_of;
pub use self::sigv4::{key_cache, KeyCache};

/// Access keys the control plane just said it does not know, so that a
/// flood of requests naming junk keys (say, random `ASIA…` ids, each of
/// which costs a session-store read) reaches the control plane once per
/// key per [`UNKNOWN_KEY_TTL`], not once per request.
pub type UnknownKeys = moka::future::Cache<Box<str>, ()>;

/// How long "unknown" is believed. Short: a key created meanwhile is also
/// announced (`Invalidation::Key` drops its entry), but a data plane that
/// missed the announcement must not refuse a new key for long.
pub const UNKNOWN_KEY_TTL: std::time::Duration = std::time::Duration::from_secs(5);

pub fn unknown_keys(capacity: u64) -> UnknownKeys {
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(UNKNOWN_KEY_TTL)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::UnknownKeys,
        ))
        .build()
}

/// Asks `lookup` unless `access_key` was just found unknown; remembers it
/// when the control plane says so now.
async fn known_key<T>(
    cx: &Ctx,
    access_key: &str,
    lookup: impl std::future::Future<Output = Result<T, Arc<s3gate_proto::ControlPlaneError>>>,
) -> Result<T, Error> {
    if crate::cache::seen_key(
        s3gate_observe::CacheKind::UnknownKeys,
        cx.unknown_keys.contains_key(access_key),
    ) {
        return Err(Error::UnknownAccessKey);
    }
    match lookup.await {
        Ok(found) => Ok(found),
        Err(e) => {
            if matches!(*e, s3gate_proto::ControlPlaneError::UnknownAccessKey) {
                cx.unknown_keys.insert(Box::from(access_key), ()).await;
            }
            Err(Error::from(&*e))
        }
    }
}
use super::{Ctx, Trace};
use crate::error::Error;
use crate::listen::ConnInfo;

/// Proof that a request was authenticated (or is anonymous).
pub struct Authenticated {
    pub principal: Principal,
    /// The identity source: `key` (an s3gate-issued access key, header-signed
    /// or presigned, or SigV2), `sts` (a temporary session's key, which
    /// also needs its `X-Amz-Security-Token`), `jwt` (a bearer token), `mtls` (a verified client certificate),
    /// `anonymous`. Named in the access log and in a decision's request
    /// context.
    pub source: &'static str,
    /// What the identity source vouched for beyond the principal (a client
    /// certificate's subject, issuer and serial), for policy sources.
    /// `None` for access keys: nothing to add, nothing allocated.
    pub claims: Option<Arc<[(String, String)]>>,
    /// How the body is bound to the signature.
    pub payload: PayloadMode,
    /// For signed aws-chunked bodies: what the chunk signatures chain from.
    pub chunk_signing: Option<ChunkSigning>,
}

/// The one credential a request presents.
pub enum Credential<'a> {
    SigV4(Box<AuthRequest>),
    /// The token of an `Authorization: Bearer` header.
    Bearer(&'a str),
    /// The verified client certificate of the connection (mTLS).
    ClientCertificate,
    /// Parsed by its own module, which also refuses it when SigV2 is off.
    SigV2,
    Anonymous,
}

/// Which credential counts for the request. Pure: nothing is verified yet.
///
/// The trust decision, in order:
/// 1. **The request's own credential wins.** A request that carries one
///    (a bearer token, a SigV4 header or presigned URL, SigV2) is the
///    principal of that credential, whether or not its connection presented
///    a client certificate. On such a connection the certificate only gated
///    the connection: the handshake refused anyone without a certificate
///    from the client CA (`client_auth = "required"`), but the request acts
///    as its credential's principal, with its groups, never a mix of the two.
///    A bearer token together with a signature is refused, not resolved.
/// 2. **Otherwise the connection's client certificate** (verified against
///    the client CA during the handshake) is the principal: its name per
///    `principal_from`, its subject's OU values as groups, identity source
///    `mtls`.
/// 3. **Otherwise the request is anonymous.**
///
/// A malformed credential is an error at its step, never a fall-through
/// to the next one.
pub fn credential<'a>(head: &'a Parts, conn: &ConnInfo) -> Result<Credential<'a>, Error> {
    if let Some(token) = bearer::token(head)? {
        return Ok(Credential::Bearer(token));
    }
    match s3gate_s3::sigv4::parse(&head.method, &head.uri, &head.headers) {
        Ok(Some(auth)) => return Ok(Credential::SigV4(Box::new(auth))),
        Ok(None) => {}
        Err(VerifyError::SigV2) => return Ok(Credential::SigV2),
        Err(e) => return Err(e.into()),
    }
    if mtls::leaf(conn).is_some() {
        return Ok(Credential::ClientCertificate);
    }
    Ok(Credential::Anonymous)
}

/// Verifies the request's credential. `trace` learns which kind it was
/// before the verdict, so that the access log names it either way.
pub async fn verify(
    cx: &Ctx,
    head: &Parts,
    conn: &ConnInfo,
    trace: &mut Trace,
) -> Result<Authenticated, Error> {
    let credential = credential(head, conn)?;
    if matches!(credential, Credential::SigV2) {
        trace.auth = Some("sigv2");
    }
    // The other kinds are boxed: their futures would otherwise size this
    // one, and so every request's (see `pipeline::handle`).
    match credential {
        Credential::SigV4(auth) => sigv4::verify(cx, head, *auth).await,
        Credential::Bearer(token) => Box::pin(bearer::verify(cx, head, token)).await,
        Credential::ClientCertificate => Box::pin(mtls::verify(cx, head, conn)).await,
        Credential::SigV2 => Box::pin(sigv2::verify(cx, head)).await,
        Credential::Anonymous => anonymous::verify(head),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use s3gate_proto::{
        AuthorizeRequest, ControlPlane, ControlPlaneError, Decision, Identity, Invalidation,
        PresentedCredential, Route, SigningKeyGrant, SigningKeyRequest,
    };

    use super::*;
    use crate::Config;

    /// Knows nothing; `known_key` is given its lookups directly.
    struct Nothing;

    #[async_trait]
    impl ControlPlane for Nothing {
        async fn signing_key(
            &self,
            _: SigningKeyRequest,
        ) -> Result<SigningKeyGrant, ControlPlaneError> {
            Err(ControlPlaneError::UnknownAccessKey)
        }
        async fn authenticate(
            &self,
            _: PresentedCredential,
        ) -> Result<Identity, ControlPlaneError> {
            Err(ControlPlaneError::NotAuthenticated("none".into()))
        }
        async fn authorize(&self, _: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
            Err(ControlPlaneError::Unavailable("none".into()))
        }
        async fn route(&self, _: &str) -> Result<Route, ControlPlaneError> {
            Err(ControlPlaneError::NoSuchBucket)
        }
        async fn visible_buckets(&self, _: &Principal) -> Result<Vec<String>, ControlPlaneError> {
            Ok(Vec::new())
        }
    }

    async fn ask(cx: &Ctx, key: &str, calls: &AtomicUsize, answer: ControlPlaneError) -> Error {
        known_key(cx, key, async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Arc::new(answer))
        })
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn an_unknown_key_is_asked_about_once_until_announced() {
        let cx = Ctx::new(Config::default(), Arc::new(Nothing));
        let calls = AtomicUsize::new(0);
        let junk = "ASIAJUNKJUNKJUNKJUNK";
        for _ in 0..50 {
            let e = ask(&cx, junk, &calls, ControlPlaneError::UnknownAccessKey).await;
            assert!(matches!(e, Error::UnknownAccessKey));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another key is its own question.
        ask(
            &cx,
            "AKIAOTHER",
            &calls,
            ControlPlaneError::UnknownAccessKey,
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A key created (or a session minted) under that name is announced.
        cx.invalidate(&Invalidation::Key(junk.into())).await;
        ask(&cx, junk, &calls, ControlPlaneError::UnknownAccessKey).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn only_unknown_is_remembered_never_unavailable() {
        let cx = Ctx::new(Config::default(), Arc::new(Nothing));
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            let e = ask(
                &cx,
                "AKIAFLAKY",
                &calls,
                ControlPlaneError::Unavailable("down".into()),
            )
            .await;
            assert!(!matches!(e, Error::UnknownAccessKey));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
