//! SigV4, header or presigned, against a signing key from the control plane,
//! cached until its TTL.

use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{SigningKeyGrant, SigningKeyRequest};
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::sigv4::{self, AuthKind, AuthRequest, PayloadMode};
use s3gate_s3::{S3Error, S3ErrorCode};

use super::Authenticated;
use crate::error::Error;
use crate::pipeline::Ctx;

/// Signing keys by `access-key/date/region/service` (access keys never
/// contain '/').
pub type KeyCache = Cache<String, SigningKeyGrant>;

/// A signing-key cache of at most `capacity` entries, each living for the
/// TTL the control plane gave it. Invalidation closures are on so that a
/// changed access key drops its own entries only (`Ctx::invalidate`):
/// without them every key create, rotate or revoke emptied the whole cache.
pub fn key_cache(capacity: u64) -> KeyCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(crate::cache::ByValueTtl)
        .support_invalidation_closures()
        .build()
}

fn key_cache_key(access_key: &str, date: &str, region: &str, service: &str) -> String {
    let mut k =
        String::with_capacity(access_key.len() + date.len() + region.len() + service.len() + 3);
    for (i, part) in [access_key, date, region, service].into_iter().enumerate() {
        if i > 0 {
            k.push('/');
        }
        k.push_str(part);
    }
    k
}

/// Whether a key-cache entry belongs to `access_key`.
pub(crate) fn key_cache_entry_of(entry: &str, access_key: &str) -> bool {
    entry.split('/').next() == Some(access_key)
}

pub(super) async fn verify(
    cx: &Ctx,
    head: &Parts,
    auth: AuthRequest,
) -> Result<Authenticated, Error> {
    sigv4::check_time(&auth, crate::unix_now())?;
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
    // One allocation for the cache key; the control-plane request is only
    // built on a miss.
    let scope = &auth.scope;
    let cache_key = key_cache_key(
        &scope.access_key,
        &scope.date,
        &scope.region,
        &scope.service,
    );
    let grant = match cx.keys.get(&cache_key).await {
        Some(grant) => grant,
        None => {
            let ask = SigningKeyRequest {
                access_key: scope.access_key.clone(),
                date: scope.date.clone(),
                region: scope.region.clone(),
                service: scope.service.clone(),
            };
            cx.keys
                .try_get_with(cache_key, cx.control_plane.signing_key(ask))
                .await
                .map_err(|e| Error::from(&*e))?
        }
    };
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
        source: match auth.kind {
            AuthKind::Header => "sigv4",
            AuthKind::Presigned { .. } => "presigned",
        },
        payload: auth.payload,
        chunk_signing,
        claims: None,
    })
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
