//! Stage 2: who is asking? Authentication by credential: the request (and
//! its connection) carry at most one credential, and each kind is verified
//! in its own module.
//!
//! | credential | module | today |
//! |---|---|---|
//! | SigV4 `Authorization` header or presigned query (an STS session's key also needs its `X-Amz-Security-Token`) | [`sigv4`] | yes |
//! | none (anonymous) | [`anonymous`] | yes |
//! | `Authorization: Bearer` (JWT), verified by the control plane | [`bearer`] | yes |
//! | mTLS client certificate (from [`ConnInfo`]) | `mtls` | next (identity issue) |
//!
//! Anything auth-like that is malformed is an error, never anonymous.

mod anonymous;
mod bearer;
mod sigv4;

use std::sync::Arc;

use http::request::Parts;
use s3gate_proto::Principal;
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::sigv4::{AuthRequest, PayloadMode};

pub use self::bearer::{token_cache, TokenCache};
pub(crate) use self::sigv4::key_cache_entry_of;
pub use self::sigv4::{key_cache, KeyCache};
use super::Ctx;
use crate::error::Error;
use crate::listen::ConnInfo;

/// Proof that a request was authenticated (or is anonymous).
pub struct Authenticated {
    pub principal: Principal,
    /// How: `sigv4`, `presigned`, `sts` (a temporary session's key, header
    /// or presigned), `jwt`, `anonymous` (the identity source named in the
    /// access log and a decision's request context).
    pub source: &'static str,
    /// How the body is bound to the signature.
    pub payload: PayloadMode,
    /// For signed aws-chunked bodies: what the chunk signatures chain from.
    pub chunk_signing: Option<ChunkSigning>,
    /// A token's claims, for policies (a bearer token's, an STS session's;
    /// `None` for long-term access keys).
    pub claims: Option<Arc<[(String, String)]>>,
}

/// The one credential a request presents.
pub enum Credential<'a> {
    SigV4(Box<AuthRequest>),
    /// The token of an `Authorization: Bearer` header.
    Bearer(&'a str),
    Anonymous,
}

/// Which credential the request presents. Pure: nothing is verified yet.
pub fn credential<'a>(head: &'a Parts, _conn: &ConnInfo) -> Result<Credential<'a>, Error> {
    if let Some(token) = bearer::token(head)? {
        return Ok(Credential::Bearer(token));
    }
    Ok(
        match s3gate_s3::sigv4::parse(&head.method, &head.uri, &head.headers)? {
            Some(auth) => Credential::SigV4(Box::new(auth)),
            None => Credential::Anonymous,
        },
    )
}

pub async fn verify(cx: &Ctx, head: &Parts, conn: &ConnInfo) -> Result<Authenticated, Error> {
    match credential(head, conn)? {
        Credential::SigV4(auth) => sigv4::verify(cx, head, *auth).await,
        Credential::Bearer(token) => bearer::verify(cx, head, token).await,
        Credential::Anonymous => anonymous::verify(head),
    }
}
