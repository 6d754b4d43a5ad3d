//! No credential at all. Whether an anonymous request may do anything is for
//! authorization to decide; here it is only kept from claiming a signed
//! payload.

use http::request::Parts;
use s3gate_proto::Principal;
use s3gate_s3::sigv4::PayloadMode;
use s3gate_s3::{S3Error, S3ErrorCode};

use super::Authenticated;
use crate::error::Error;

/// An unsigned request.
pub(super) fn verify(head: &Parts) -> Result<Authenticated, Error> {
    Ok(Authenticated {
        principal: Principal::anonymous(),
        source: "anonymous",
        payload: unsigned_payload(head)?,
        chunk_signing: None,
        claims: None,
    })
}

/// The payload mode of a request whose credential signs nothing (none at
/// all, a bearer token): a hex digest or unsigned, never a signed stream
/// (there is no signature for its chunks to chain from).
pub(super) fn unsigned_payload(head: &Parts) -> Result<PayloadMode, Error> {
    Ok(match head.headers.get("x-amz-content-sha256") {
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
    })
}
