//! Stage 5: bind the body to the signature. Wraps the client body in the
//! verifier its `x-amz-content-sha256` mode asks for; never buffers it.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::Method;
use s3gate_s3::checksum::ChecksumAlgorithm;
use s3gate_s3::chunked::{ChunkedDecoder, DecoderConfig};
use s3gate_s3::chunked_encoder::TrailerEncoder;
use s3gate_s3::sigv4::{PayloadMode, EMPTY_SHA256_HEX};
use s3gate_s3::{S3Error, S3ErrorCode};

use super::authn::Authenticated;
use super::Ctx;
use crate::body::{self, Body, ChunkedBody, ClientBody, FailureSlot, Sha256Body, TimedBody};
use crate::error::Error;

/// What the forward stage must tell the backend about the body it sends.
#[derive(Debug)]
pub struct PayloadPlan {
    pub upstream: UpstreamPayload,
    /// For aws-chunked input: the decoded length.
    pub decoded_length: Option<u64>,
}

/// How the body goes upstream, which decides `x-amz-content-sha256` there.
#[derive(Debug)]
pub enum UpstreamPayload {
    /// As received; signed with the client's hex digest so the backend checks it too.
    Sha256(String),
    /// As received, or aws-chunked decoded to plain bytes: UNSIGNED-PAYLOAD.
    Unsigned,
    /// Re-framed as unsigned aws-chunked with the client's trailing checksum;
    /// `encoded_length` is the new Content-Length.
    UnsignedTrailer { encoded_length: u64 },
    /// A document the gateway wrote itself in place of the client's (the
    /// DeleteObjects key list it authorized): sent plain, with its own
    /// digest, MD5 and length; the client's checksum headers no longer apply.
    Replaced {
        sha256_hex: String,
        content_md5: String,
        len: u64,
    },
}

/// Whether a verified aws-chunked body with a trailing checksum is passed on
/// re-framed (streamed, the backend checks the checksum too) or decoded to
/// plain bytes (for bodies the gateway reads itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer {
    Reframe,
    Decode,
}

pub fn verify(
    cx: &Ctx,
    head: &Parts,
    body: ClientBody,
    who: &Authenticated,
    slot: &FailureSlot,
    trailer_mode: Trailer,
) -> Result<(Body, PayloadPlan), Error> {
    let idle = cx.cfg.limits.body_idle_timeout;
    let content_length = match head.headers.get(CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    S3Error::new(S3ErrorCode::InvalidArgument, "invalid Content-Length")
                })?,
        ),
        None => None,
    };
    let chunked_transfer = head.headers.contains_key(TRANSFER_ENCODING);
    let has_body = content_length.is_some_and(|n| n > 0) || chunked_transfer;
    if chunked_transfer
        && content_length.is_none()
        && !who.payload.is_streaming()
        && writes_body(&head.method)
    {
        return Err(S3Error::new(
            S3ErrorCode::MissingContentLength,
            "You must provide the Content-Length HTTP header.",
        )
        .into());
    }

    match who.payload {
        PayloadMode::Sha256(expected) => {
            let hex = s3gate_s3::sigv4::hex_string(&expected);
            if !has_body {
                // Nothing to stream: check now, before anything goes upstream.
                if hex != EMPTY_SHA256_HEX {
                    return Err(S3Error::new(
                        S3ErrorCode::XAmzContentSHA256Mismatch,
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    )
                    .into());
                }
                return Ok((
                    body::empty(),
                    PayloadPlan {
                        upstream: UpstreamPayload::Sha256(hex),
                        decoded_length: None,
                    },
                ));
            }
            let body = Sha256Body::new(
                TimedBody::new(body, idle, slot.clone()),
                expected,
                content_length,
                slot.clone(),
            );
            Ok((
                http_body_util::BodyExt::boxed_unsync(body),
                PayloadPlan {
                    upstream: UpstreamPayload::Sha256(hex),
                    decoded_length: None,
                },
            ))
        }
        PayloadMode::Unsigned => Ok((
            if has_body {
                body::timed(TimedBody::new(body, idle, slot.clone()))
            } else {
                body::empty()
            },
            PayloadPlan {
                upstream: UpstreamPayload::Unsigned,
                decoded_length: None,
            },
        )),
        PayloadMode::StreamingSigned
        | PayloadMode::StreamingSignedTrailer
        | PayloadMode::StreamingUnsignedTrailer => {
            let decoded = head
                .headers
                .get(s3gate_s3::names::X_AMZ_DECODED_CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    S3Error::new(
                        S3ErrorCode::MissingContentLength,
                        "aws-chunked uploads need a valid x-amz-decoded-content-length header",
                    )
                })?;
            let trailer = if who.payload.has_trailer() {
                let name = head
                    .headers
                    .get(s3gate_s3::names::X_AMZ_TRAILER)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        S3Error::new(S3ErrorCode::InvalidRequest, "missing x-amz-trailer header")
                    })?;
                Some(
                    ChecksumAlgorithm::from_header_name(name.trim()).ok_or_else(|| {
                        S3Error::new(
                            S3ErrorCode::InvalidRequest,
                            "unsupported x-amz-trailer checksum",
                        )
                    })?,
                )
            } else {
                None
            };
            let signing = match who.payload {
                PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer => {
                    Some(who.chunk_signing.clone().ok_or_else(|| {
                        S3Error::new(
                            S3ErrorCode::AccessDenied,
                            "signed chunks need a signed request",
                        )
                    })?)
                }
                _ => None,
            };
            let decoder = ChunkedDecoder::new(DecoderConfig {
                signing,
                trailer,
                decoded_length: Some(decoded),
                max_chunk_size: cx.cfg.max_chunk_size,
                // Nothing is held per chunk: the body wrapper withholds the
                // end of the body until everything verified.
                stream_unverified: true,
            });
            let encoder = match trailer_mode {
                Trailer::Reframe => trailer.map(TrailerEncoder::new),
                Trailer::Decode => None,
            };
            let (len, upstream) = match &encoder {
                Some(enc) => {
                    let encoded_length = enc.encoded_len(decoded);
                    (
                        encoded_length,
                        UpstreamPayload::UnsignedTrailer { encoded_length },
                    )
                }
                None => (decoded, UpstreamPayload::Unsigned),
            };
            let body = ChunkedBody::new(
                TimedBody::new(body, idle, slot.clone()),
                decoder,
                encoder,
                len,
                slot.clone(),
            );
            Ok((
                http_body_util::BodyExt::boxed_unsync(body),
                PayloadPlan {
                    upstream,
                    decoded_length: Some(decoded),
                },
            ))
        }
    }
}

/// The body and plan for a document the gateway wrote in place of the
/// client's.
pub fn replaced(doc: String) -> (Body, PayloadPlan) {
    use base64::Engine as _;
    use md5::Digest as _;
    let sha256_hex = hex::encode(sha2::Sha256::digest(doc.as_bytes()));
    let content_md5 =
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(doc.as_bytes()));
    let len = doc.len() as u64;
    (
        body::full(doc),
        PayloadPlan {
            upstream: UpstreamPayload::Replaced {
                sha256_hex,
                content_md5,
                len,
            },
            decoded_length: None,
        },
    )
}

fn writes_body(method: &Method) -> bool {
    matches!(*method, Method::PUT | Method::POST)
}
