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
    match credential {
        Credential::SigV4(auth) => sigv4::verify(cx, head, *auth).await,
        Credential::Bearer(token) => bearer::verify(cx, head, token).await,
        Credential::ClientCertificate => mtls::verify(cx, head, conn).await,
        Credential::SigV2 => sigv2::verify(cx, head).await,
        Credential::Anonymous => anonymous::verify(head),
    }
}
