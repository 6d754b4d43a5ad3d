//! SigV4, header or presigned, against a signing key from the control plane,
//! cached until its TTL.
//!
//! A temporary (STS session) key's grant names its token's SHA-256 and its
//! expiry: past the expiry the request gets `ExpiredToken`, and it must
//! carry the token (`X-Amz-Security-Token`, header or presigned query) —
//! missing or wrong, `InvalidToken`, compared in constant time. A long-term
//! key with a security token is refused the same way, as AWS does. Both
//! checks come after the signature's: a caller who cannot sign learns
//! nothing about a session key but `SignatureDoesNotMatch`.

use std::borrow::Cow;

use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{SessionGrant, SigningKeyGrant, SigningKeyRequest};
use s3gate_s3::chunked::ChunkSigning;
use s3gate_s3::sigv4::{self, AuthKind, AuthRequest, PayloadMode};
use s3gate_s3::{names, S3Error, S3ErrorCode};

use super::Authenticated;
use crate::cache::Stamped;
use crate::error::Error;
use crate::pipeline::Ctx;

/// Signing keys by `access-key/date/region/service` (access keys never
/// contain '/'): the credential scope's [`key_id`](sigv4::CredentialScope::key_id).
pub type KeyCache = Cache<String, Stamped<SigningKeyGrant>>;

/// A signing-key cache of at most `capacity` entries, each living for the
/// TTL the control plane gave it. Invalidation closures are on so that a
/// changed access key drops its own entries only (`Ctx::invalidate`):
/// without them every key create, rotate or revoke emptied the whole cache.
pub fn key_cache(capacity: u64) -> KeyCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(crate::cache::ByStamp)
        .support_invalidation_closures()
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Keys,
        ))
        .build()
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
    if auth.scope.service() != "s3" {
        return Err(S3Error::new(
            S3ErrorCode::AuthorizationHeaderMalformed,
            "the credential scope must name the service 's3'",
        )
        .into());
    }
    if auth.scope.region() != cx.cfg.region {
        return Err(S3Error::new(
            S3ErrorCode::AuthorizationHeaderMalformed,
            format!(
                "the region '{}' is wrong; expecting '{}'",
                truncate(auth.scope.region()),
                cx.cfg.region
            ),
        )
        .into());
    }
    // The cache key is a slice of the credential: no allocation unless
    // the front misses; the control-plane request is only built on a miss
    // of both.
    let key_id = auth.scope.key_id();
    let generation = cx.generation.current();
    let front = cx.front_keys.get(key_id, generation);
    let grant = match front {
        Some(grant) => crate::cache::front_hit(s3gate_observe::CacheKind::Keys, grant),
        None => {
            match crate::cache::seen(s3gate_observe::CacheKind::Keys, cx.keys.get(key_id).await) {
                Some(stamped) => {
                    let grant = stamped.value.clone();
                    cx.front_keys.insert(key_id.to_owned(), stamped, generation);
                    grant
                }
                None => Box::pin(fetch_key(cx, head, &auth, generation)).await?,
            }
        }
    };
    // The signature first: until it matches, the caller has not shown it
    // holds the key's secret, and must not learn anything about the key
    // (that it is a live, an expired or a revoked session) beyond what any
    // wrong signature tells.
    sigv4::verify(&auth, &head.method, &head.uri, &head.headers, &grant.key)?;
    match &grant.session {
        Some(session) => check_session(head, &auth, session)?,
        None if has_security_token(head, &auth) => {
            return Err(invalid_token(
                "a security token was sent with a long-term access key",
            ))
        }
        None => {}
    }
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
        // Header-signed and presigned alike: the identity is the key's, or
        // the session's for temporary keys.
        source: if grant.session.is_some() {
            "sts"
        } else {
            "key"
        },
        payload: auth.payload,
        chunk_signing,
        claims: grant.session.as_ref().map(|s| s.claims.clone()),
    })
}

/// A signing key the caches do not hold: asked of the control plane (once
/// for concurrent askers), cached, and copied to this worker's front.
/// Boxed where it is awaited: a miss's future is large and rare (see
/// `pipeline::handle`).
async fn fetch_key(
    cx: &Ctx,
    head: &Parts,
    auth: &AuthRequest,
    generation: u64,
) -> Result<SigningKeyGrant, Error> {
    let scope = &auth.scope;
    let cache_key = scope.key_id().to_owned();
    let ask = SigningKeyRequest {
        access_key: scope.access_key().to_owned(),
        date: scope.date().to_owned(),
        region: scope.region().to_owned(),
        service: scope.service().to_owned(),
        security_token_sha256: security_token(head, auth)?
            .map(|t| s3gate_s3::sts::token_sha256(&t)),
    };
    let stamped = super::known_key(
        cx,
        scope.access_key(),
        cx.keys.try_get_with(cache_key.clone(), async {
            cx.control_plane.signing_key(ask).await.map(Stamped::new)
        }),
    )
    .await?;
    let grant = stamped.value.clone();
    cx.front_keys.insert(cache_key, stamped, generation);
    Ok(grant)
}

const SECURITY_TOKEN_QUERY: &str = "X-Amz-Security-Token";

/// A session key's request: not past the session's expiry, and carrying
/// its token.
fn check_session(head: &Parts, auth: &AuthRequest, session: &SessionGrant) -> Result<(), Error> {
    if crate::unix_now() >= session.expires_unix {
        return Err(
            S3Error::new(S3ErrorCode::ExpiredToken, "The provided token has expired.").into(),
        );
    }
    match security_token(head, auth)? {
        Some(token) if s3gate_s3::sts::token_matches(&token, &session.token_sha256) => Ok(()),
        Some(_) => Err(invalid_token(
            "The provided token is malformed or otherwise invalid.",
        )),
        None => Err(invalid_token(
            "a temporary access key needs its session token (X-Amz-Security-Token)",
        )),
    }
}

/// Whether the request carries a security token at all (no allocation: this
/// runs for every request signed with a long-term key).
fn has_security_token(head: &Parts, auth: &AuthRequest) -> bool {
    match auth.kind {
        AuthKind::Header => head.headers.contains_key(names::X_AMZ_SECURITY_TOKEN),
        AuthKind::Presigned { .. } => head.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p.split('=').next() == Some(SECURITY_TOKEN_QUERY))
        }),
    }
}

/// The security token a request carries, decoded; the header for header
/// auth, the query parameter for presigned URLs. Given twice: refused.
fn security_token<'a>(head: &'a Parts, auth: &AuthRequest) -> Result<Option<Cow<'a, str>>, Error> {
    let twice = || invalid_token("the security token is given more than once");
    match auth.kind {
        AuthKind::Header => {
            let mut values = head.headers.get_all(names::X_AMZ_SECURITY_TOKEN).iter();
            let Some(value) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(twice());
            }
            let value = value.to_str().map_err(|_| {
                invalid_token("The provided token is malformed or otherwise invalid.")
            })?;
            Ok(Some(Cow::Borrowed(value.trim())))
        }
        AuthKind::Presigned { .. } => {
            let mut found = None;
            for pair in head.uri.query().unwrap_or("").split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if name == SECURITY_TOKEN_QUERY {
                    if found.is_some() {
                        return Err(twice());
                    }
                    found = Some(value);
                }
            }
            found
                .map(|v| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .map_err(|_| {
                            invalid_token("The provided token is malformed or otherwise invalid.")
                        })
                })
                .transpose()
        }
    }
}

fn invalid_token(message: &str) -> Error {
    S3Error::new(S3ErrorCode::InvalidToken, message).into()
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
