//! Stage 2: who is asking? SigV4 (header or presigned) against a signing key
//! from the control plane, cached until its TTL; or anonymous.

use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{ControlPlaneError, Principal, SigningKeyGrant, SigningKeyRequest};
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::request::S3Request;
use s3gate_s3::sigv4::{self, PayloadMode};
use s3gate_s3::{S3Error, S3ErrorCode};

use super::Ctx;
use crate::error::Error;

pub type KeyCache = Cache<SigningKeyRequest, SigningKeyGrant>;

/// Proof that a request was authenticated (or is anonymous).
pub struct Authenticated {
    pub principal: Principal,
    /// How the body is bound to the signature.
    pub payload: PayloadMode,
    /// For signed aws-chunked bodies: what the chunk signatures chain from.
    pub chunk_signing: Option<ChunkSigning>,
}

pub async fn verify(cx: &Ctx, head: &Parts, _req: &S3Request) -> Result<Authenticated, Error> {
    let Some(auth) = sigv4::parse(&head.method, &head.uri, &head.headers)? else {
        return anonymous(head);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    sigv4::check_time(&auth, now)?;
    if auth.scope.service != "s3" {
        return Err(S3Error::new(
            S3ErrorCode::AuthorizationHeaderMalformed,
            "the credential scope must name the service 's3'",
        )
        .into());
    }
    if auth.scope.region != cx.cfg.region {
        return Err(S3Error::new(
            S3ErrorCode::AuthorizationHeaderMalformed,
            format!(
                "the region '{}' is wrong; expecting '{}'",
                truncate(&auth.scope.region),
                cx.cfg.region
            ),
        )
        .into());
    }
    let lookup = SigningKeyRequest {
        access_key: auth.scope.access_key.clone(),
        date: auth.scope.date.clone(),
        region: auth.scope.region.clone(),
        service: auth.scope.service.clone(),
    };
    let grant = cx
        .keys
        .try_get_with(lookup.clone(), cx.control_plane.signing_key(lookup))
        .await
        .map_err(|e| match &*e {
            ControlPlaneError::UnknownAccessKey => Error::UnknownAccessKey,
            other => Error::ControlPlane(other.to_string()),
        })?;
    sigv4::verify(&auth, &head.method, &head.uri, &head.headers, &grant.key)?;
    let chunk_signing = matches!(
        auth.payload,
        PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer
    )
    .then(|| ChunkSigning {
        key: grant.key.clone(),
        amz_date: auth.amz_date.clone(),
        scope: auth.scope.to_scope_string(),
        seed_signature: auth.signature,
    });
    Ok(Authenticated {
        principal: grant.principal.clone(),
        payload: auth.payload,
        chunk_signing,
    })
}

/// An unsigned request. Whether it may do anything is for authz to decide;
/// here we only make sure it cannot claim a signed payload.
fn anonymous(head: &Parts) -> Result<Authenticated, Error> {
    let payload = match head.headers.get("x-amz-content-sha256") {
        None => PayloadMode::Unsigned,
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                S3Error::new(S3ErrorCode::InvalidArgument, "invalid x-amz-content-sha256")
            })?;
            match PayloadMode::parse(v)? {
                PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer => {
                    return Err(S3Error::new(
                        S3ErrorCode::AccessDenied,
                        "a signed streaming payload requires a signed request",
                    )
                    .into())
                }
                mode => mode,
            }
        }
    };
    Ok(Authenticated {
        principal: Principal::anonymous(),
        payload,
        chunk_signing: None,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
