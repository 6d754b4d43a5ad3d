//! Rebuilding the canonical request and comparing signatures.

use super::canonical::*;
use super::parse::{header_str, single_header};
use super::*;
use subtle::ConstantTimeEq as _;

// === verify ===

/// Rebuilds the canonical request as the client signed it, signs it with
/// `key` and compares in constant time.
///
/// `key` must have been derived for `auth.scope` with the secret of
/// `auth.scope.access_key()`; that is the caller's job.
pub fn verify(
    auth: &AuthRequest,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    key: &SigningKey,
) -> Result<(), VerifyError> {
    let canonical = canonical_request(auth, method, uri, headers)?;
    let sts = string_to_sign(&auth.amz_date, auth.scope.scope(), &canonical);
    let expected = key.sign(sts.as_bytes());
    if !bool::from(expected.ct_eq(&auth.signature)) {
        return Err(VerifyError::SignatureMismatch);
    }
    check_amz_headers_signed(auth, headers)
}

/// Every `x-amz-*` header must be among the signed headers.
/// `x-amz-content-sha256` is exempt for header auth: its value is the
/// payload line of the canonical request, so it is bound anyway.
pub(super) fn check_amz_headers_signed(
    auth: &AuthRequest,
    headers: &HeaderMap,
) -> Result<(), VerifyError> {
    for name in headers.keys() {
        let name = name.as_str();
        if !name.starts_with("x-amz-") {
            continue;
        }
        if name == "x-amz-content-sha256" && !auth.is_presigned() {
            continue;
        }
        if !auth.signed_headers.contains(name) {
            return Err(VerifyError::UnsignedAmzHeader);
        }
    }
    Ok(())
}

/// The canonical request:
/// `method \n uri \n query \n headers \n \n signed-headers \n payload-hash`.
pub fn canonical_request(
    auth: &AuthRequest,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, VerifyError> {
    let mut out = String::with_capacity(512);
    out.push_str(method.as_str());
    out.push('\n');
    canonical_uri(&mut out, uri.path());
    out.push('\n');
    canonical_query(&mut out, uri.query().unwrap_or(""), auth.is_presigned());
    out.push('\n');
    for name in auth.signed_headers.iter() {
        out.push_str(name);
        out.push(':');
        match (name, &auth.kind, &auth.content_sha256) {
            // Header auth: `parse` read both from the headers, each present
            // once, and neither can hold a blank (a date and a payload mode
            // have none), so they are their own canonical form.
            ("x-amz-date", AuthKind::Header, _) => out.push_str(&auth.amz_date),
            ("x-amz-content-sha256", AuthKind::Header, Some(value)) => {
                out.push_str(header_str(value)?);
            }
            _ => canonical_header_value(&mut out, name, uri, headers)?,
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(auth.signed_headers.as_str());
    out.push('\n');
    match auth.kind {
        AuthKind::Presigned { .. } => out.push_str(UNSIGNED_PAYLOAD),
        // The client signed the header as sent; `parse` made sure it is there.
        AuthKind::Header => match &auth.content_sha256 {
            Some(value) => out.push_str(header_str(value)?),
            None => match single_header(headers, &X_AMZ_CONTENT_SHA256)? {
                Some(value) => out.push_str(value),
                None => out.push_str(&auth.payload.to_header_value()),
            },
        },
    }
    Ok(out)
}

/// `AWS4-HMAC-SHA256 \n amz_date \n scope \n hex(sha256(canonical_request))`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let mut hex = [0u8; 64];
    let hash = super::sign::hex_lower(
        &Sha256::digest(canonical_request.as_bytes()).into(),
        &mut hex,
    );
    let mut sts = String::with_capacity(ALGORITHM.len() + amz_date.len() + scope.len() + 3 + 64);
    for part in [ALGORITHM, "\n", amz_date, "\n", scope, "\n", hash] {
        sts.push_str(part);
    }
    sts
}
