//! `Authorization: Bearer <jwt>`: a token of an OIDC provider, verified by
//! the control plane (which alone holds the providers' keys) and cached
//! here under the token's SHA-256 until the TTL the control plane gave,
//! which never reaches past the token's `exp`. A repeated token costs no
//! call.
//!
//! A bearer token signs nothing of the request: the payload is unsigned
//! (a hex `x-amz-content-sha256` is still checked against the body), and a
//! signed aws-chunked stream is refused, having no signature to chain from.

use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{Identity, PresentedCredential, Redacted};
use s3gate_s3::{S3Error, S3ErrorCode};
use sha2::{Digest, Sha256};

use super::{anonymous, Authenticated};
use crate::error::Error;
use crate::pipeline::Ctx;

/// Verified tokens by the SHA-256 of the token: the token itself is not
/// kept.
pub type TokenCache = Cache<[u8; 32], Identity>;

/// The source name of a bearer identity (the access log, a decision's
/// request context).
pub const SOURCE: &str = "jwt";

/// Longest token looked at; a longer one is refused without a call.
const MAX_TOKEN: usize = 16 << 10;

/// A token cache holding about `max_bytes` of identities, each for the TTL
/// the control plane gave it.
pub fn token_cache(max_bytes: u64) -> TokenCache {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|_: &[u8; 32], id: &Identity| -> u32 {
            let groups: usize = id.principal.groups.iter().map(|g| g.len() + 16).sum();
            let claims: usize = id.claims.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
            u32::try_from(id.principal.name.len() + groups + claims + 512).unwrap_or(u32::MAX)
        })
        .expire_after(crate::cache::ByValueTtl)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Tokens,
        ))
        .build()
}

/// The token of an `Authorization: Bearer` header, if the request has one
/// (and only one Authorization header; several are refused by the SigV4
/// parser). Pure.
pub(super) fn token(head: &Parts) -> Result<Option<&str>, Error> {
    let mut values = head.headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.len() < 7 || !bytes[..7].eq_ignore_ascii_case(b"bearer ") {
        return Ok(None);
    }
    // SigV4 or SigV2 parameters in the query as well: two credentials, of
    // which neither may quietly win.
    let empty = http::HeaderMap::new();
    if !matches!(
        s3gate_s3::sigv4::parse(&head.method, &head.uri, &empty),
        Ok(None)
    ) {
        return Err(s3gate_s3::sigv4::VerifyError::Ambiguous.into());
    }
    let token = std::str::from_utf8(&bytes[7..])
        .unwrap_or_default()
        .trim_matches(' ');
    // A compact JWS is base64url parts joined by dots. Anything else is
    // refused here, without a call.
    let shaped = !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='));
    if !shaped {
        return Err(Error::NotAuthenticated(
            "the bearer token is not a JWT".to_owned(),
        ));
    }
    Ok(Some(token))
}

pub(super) async fn verify(cx: &Ctx, head: &Parts, token: &str) -> Result<Authenticated, Error> {
    let payload = anonymous::unsigned_payload(head).map_err(|e| match e {
        Error::S3(s) if s.code == S3ErrorCode::AccessDenied => Error::S3(S3Error::new(
            S3ErrorCode::InvalidRequest,
            "a bearer token signs no payload: send UNSIGNED-PAYLOAD or the body's SHA-256, not a signed aws-chunked stream",
        )),
        other => other,
    })?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let identity = match crate::cache::seen(
        s3gate_observe::CacheKind::Tokens,
        cx.tokens.get(&digest).await,
    ) {
        Some(identity) => identity,
        None => {
            let credential = PresentedCredential::BearerToken(Redacted::new(token.to_owned()));
            cx.tokens
                .try_get_with(digest, cx.control_plane.authenticate(credential))
                .await
                .map_err(|e| Error::from(&*e))?
        }
    };
    Ok(Authenticated {
        principal: identity.principal,
        source: SOURCE,
        payload,
        chunk_signing: None,
        claims: Some(identity.claims),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn head(auth: Option<&str>, uri: &str) -> Parts {
        let mut b = http::Request::get(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_a_bearer_header_is_a_bearer_token() {
        let h = head(Some("Bearer aaa.bbb.ccc"), "/b/k");
        assert_eq!(token(&h).unwrap(), Some("aaa.bbb.ccc"));
        let h = head(Some("bearer  aaa.bbb.ccc "), "/b/k");
        assert_eq!(token(&h).unwrap(), Some("aaa.bbb.ccc"));
        for other in [
            "AWS4-HMAC-SHA256 Credential=x",
            "AWS ak:sig",
            "Basic dXNlcg==",
            "Bearer",
        ] {
            assert_eq!(token(&head(Some(other), "/b/k")).unwrap(), None, "{other}");
        }
        assert_eq!(token(&head(None, "/b/k")).unwrap(), None);
    }

    #[test]
    fn a_bearer_token_with_query_signatures_is_refused() {
        for uri in [
            "/b/k?X-Amz-Signature=abc",
            "/b/k?X-Amz-Credential=AK%2F20240101%2Fus-east-1%2Fs3%2Faws4_request",
            "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "/b/k?AWSAccessKeyId=AK&Signature=x&Expires=1",
        ] {
            let err = token(&head(Some("Bearer a.b.c"), uri)).unwrap_err();
            assert_eq!(err.to_s3().code, S3ErrorCode::InvalidArgument, "{uri}");
        }
    }

    #[test]
    fn a_token_of_the_wrong_shape_is_refused_without_a_call() {
        for bad in [
            "Bearer a b",
            "Bearer a.b.c;x",
            "Bearer ",
            &format!("Bearer {}", "a".repeat(MAX_TOKEN + 1)),
        ] {
            let err = token(&head(Some(bad), "/b/k")).unwrap_err();
            assert_eq!(err.to_s3().code, S3ErrorCode::InvalidToken, "{bad:.20}");
        }
    }
}
