//! Stage 2: who is asking? Authentication by credential: the request (and
//! its connection) carry at most one credential, and each kind is verified
//! in its own module.
//!
//! | credential | module | today |
//! |---|---|---|
//! | SigV4 `Authorization` header or presigned query | [`sigv4`] | yes |
//! | SigV2 `Authorization: AWS key:signature` or presigned query (legacy) | [`sigv2`] | yes, unless `sigv2` is off |
//! | none (anonymous) | [`anonymous`] | yes |
//! | `Authorization: Bearer` (JWT) | `bearer` | next (identity issue) |
//! | mTLS client certificate (from [`ConnInfo`]) | `mtls` | next (identity issue) |
//!
//! Anything auth-like that is malformed is an error, never anonymous.

mod anonymous;
mod sigv2;
mod sigv4;

use http::request::Parts;
use s3gate_proto::Principal;
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::sigv4::{AuthRequest, PayloadMode, VerifyError};

pub(crate) use self::sigv2::sigv2_entry_of;
pub use self::sigv2::{fold_presigned, signature_version, sigv2_cache, SigV2Cache};
pub(crate) use self::sigv4::key_cache_entry_of;
pub use self::sigv4::{key_cache, KeyCache};
use super::Ctx;
use crate::error::Error;
use crate::listen::ConnInfo;

/// Proof that a request was authenticated (or is anonymous).
pub struct Authenticated {
    pub principal: Principal,
    /// How: `sigv4`, `presigned`, `key` (SigV2), `anonymous` (the identity
    /// source named in a decision's request context).
    pub source: &'static str,
    /// How the body is bound to the signature.
    pub payload: PayloadMode,
    /// For signed aws-chunked bodies: what the chunk signatures chain from.
    pub chunk_signing: Option<ChunkSigning>,
}

/// The one credential a request presents.
pub enum Credential {
    SigV4(Box<AuthRequest>),
    /// Parsed by its own module, which also refuses it when SigV2 is off.
    SigV2,
    Anonymous,
}

/// Which credential the request presents. Pure: nothing is verified yet.
pub fn credential(head: &Parts, _conn: &ConnInfo) -> Result<Credential, Error> {
    Ok(
        match s3gate_s3::sigv4::parse(&head.method, &head.uri, &head.headers) {
            Ok(Some(auth)) => Credential::SigV4(Box::new(auth)),
            Ok(None) => Credential::Anonymous,
            Err(VerifyError::SigV2) => Credential::SigV2,
            Err(e) => return Err(e.into()),
        },
    )
}

pub async fn verify(cx: &Ctx, head: &Parts, conn: &ConnInfo) -> Result<Authenticated, Error> {
    match credential(head, conn)? {
        Credential::SigV4(auth) => sigv4::verify(cx, head, *auth).await,
        Credential::SigV2 => sigv2::verify(cx, head).await,
        Credential::Anonymous => anonymous::verify(head),
    }
}
