//! Legacy SigV2, header (`Authorization: AWS key:signature`) or presigned
//! (`?AWSAccessKeyId=…&Signature=…&Expires=…`).
//!
//! SigV2 signs with the raw secret, which the data plane never holds: the
//! string to sign is rebuilt here and the control plane checks the
//! signature (`ControlPlane::verify_sigv2`). A match is cached under the
//! access key, the signature and the SHA-256 of the string to sign, for as
//! long as the request itself stays acceptable (a presigned URL until its
//! `Expires`, a header-signed request for its clock-skew window) and never
//! past the TTL the control plane named: a hot presigned URL costs one
//! control-plane call, not one per request. Mismatches are not cached.
//!
//! The payload is not signed (SigV2 signs `Content-MD5`, which the backend
//! checks); an `x-amz-content-sha256` the client signed is verified like
//! any other.

use std::time::Duration;

use http::header::HOST;
use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{Principal, SigV2Request};
use s3gate_s3::request::virtual_host_bucket;
use s3gate_s3::sigv2::{self, SIGNATURE_LEN};
use s3gate_s3::sigv4::PayloadMode;
use s3gate_s3::{S3Error, S3ErrorCode};
use sha2::{Digest as _, Sha256};

use super::Authenticated;
use crate::cache::Ttl;
use crate::error::Error;
use crate::pipeline::Ctx;
use crate::Config;

/// Verified SigV2 requests: who signed them, until when.
pub type SigV2Cache = Cache<SigV2CacheKey, SigV2Entry>;

/// One signed request: a different string to sign or signature is another
/// entry.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SigV2CacheKey {
    access_key: Box<str>,
    signature: [u8; SIGNATURE_LEN],
    string_to_sign_sha256: [u8; 32],
}

#[derive(Clone)]
pub struct SigV2Entry {
    principal: Principal,
    ttl: Duration,
}

impl Ttl for SigV2Entry {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// A cache of at most `capacity` verified requests. Invalidation closures
/// are on so that a changed access key drops its own entries only.
pub fn sigv2_cache(capacity: u64) -> SigV2Cache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(crate::cache::ByValueTtl)
        .support_invalidation_closures()
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::SigV2,
        ))
        .build()
}

/// Whether a SigV2 cache entry belongs to `access_key`.
pub(crate) fn sigv2_entry_of(entry: &SigV2CacheKey, access_key: &str) -> bool {
    &*entry.access_key == access_key
}

/// Puts the headers a SigV2 presigned URL carries in its query back where
/// they were signed, before anything looks at the request (see
/// [`sigv2::fold_presigned_query`]): classification, authorization and the
/// forwarded request then all see the request that was signed. Other
/// requests pay one scan of the query string.
pub fn fold_presigned(cfg: &Config, head: &mut Parts) {
    if !cfg.sigv2
        || !head
            .uri
            .query()
            .is_some_and(|q| q.contains("AWSAccessKeyId="))
    {
        return;
    }
    if let Some(uri) = sigv2::fold_presigned_query(&head.uri, &mut head.headers) {
        head.uri = uri;
    }
}

pub(super) async fn verify(cx: &Ctx, head: &Parts) -> Result<Authenticated, Error> {
    if !cx.cfg.sigv2 {
        return Err(disabled().into());
    }
    let auth = sigv2::parse(&head.uri, &head.headers)
        .map_err(S3Error::from)?
        .ok_or_else(|| S3Error::from(sigv2::SigV2Error::MalformedHeader))?;
    let now = crate::unix_now();
    sigv2::check_time(&auth, now).map_err(S3Error::from)?;
    let payload = payload_mode(head)?;
    // HTTP/1.1 requests carry Host; an absolute-form URI the authority.
    let host = head
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()));
    let bucket = host.and_then(|h| virtual_host_bucket(&cx.cfg.hosts, h));
    let string_to_sign =
        sigv2::string_to_sign(&auth, &head.method, &head.uri, &head.headers, bucket)
            .map_err(S3Error::from)?;
    let key = SigV2CacheKey {
        access_key: auth.access_key.as_str().into(),
        signature: auth.signature,
        string_to_sign_sha256: Sha256::digest(string_to_sign.as_bytes()).into(),
    };
    let entry = match crate::cache::seen(s3gate_observe::CacheKind::SigV2, cx.sigv2.get(&key).await)
    {
        Some(entry) => entry,
        None => {
            let reusable = sigv2::valid_for(&auth, now);
            let ask = SigV2Request {
                access_key: auth.access_key,
                string_to_sign,
                signature: auth.signature,
            };
            let verified = async {
                let grant = cx.control_plane.verify_sigv2(ask).await?;
                Ok::<_, s3gate_proto::ControlPlaneError>(SigV2Entry {
                    principal: grant.principal,
                    ttl: grant.ttl.min(reusable),
                })
            };
            let access_key = key.access_key.clone();
            Box::pin(super::known_key(
                cx,
                &access_key,
                cx.sigv2.try_get_with(key, verified),
            ))
            .await?
        }
    };
    Ok(Authenticated {
        principal: entry.principal,
        // SigV2 and SigV4 keys are the same identity; the access log tells
        // the signature version apart (`auth=sigv2`).
        source: "key",
        claims: None,
        payload,
        chunk_signing: None,
    })
}

/// SigV2 turned off (`[auth] sigv2 = false`, `--sigv2 false`).
fn disabled() -> S3Error {
    S3Error::new(
        S3ErrorCode::InvalidRequest,
        "Signature Version 2 is disabled on this gateway: sign requests with Signature Version 4 \
         (AWS4-HMAC-SHA256; for boto3 and the aws cli, signature_version = s3v4)",
    )
}

/// The payload is unsigned unless the client signed an
/// `x-amz-content-sha256` (it is among the `x-amz-*` headers SigV2 signs),
/// which is then verified. Chunk signatures chain from a SigV4 signature:
/// a SigV2 request cannot carry them.
fn payload_mode(head: &Parts) -> Result<PayloadMode, Error> {
    let Some(value) = head.headers.get("x-amz-content-sha256") else {
        return Ok(PayloadMode::Unsigned);
    };
    let value = value
        .to_str()
        .map_err(|_| S3Error::new(S3ErrorCode::InvalidArgument, "invalid x-amz-content-sha256"))?;
    match PayloadMode::parse(value)? {
        PayloadMode::StreamingSigned | PayloadMode::StreamingSignedTrailer => Err(S3Error::new(
            S3ErrorCode::InvalidRequest,
            "aws-chunked payloads with chunk signatures need Signature Version 4",
        )
        .into()),
        mode => Ok(mode),
    }
}
