//! Reading what a request claims: the `Authorization` header or the presigned query.

use super::canonical::QueryParams;
use super::*;
use http::HeaderValue;

// === parse ===

/// Reads the authentication a request claims.
///
/// `Ok(None)`: the request carries no authentication at all (anonymous).
/// `Err`: it carries something auth-like that is malformed, ambiguous or unsupported.
pub fn parse(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<AuthRequest>, VerifyError> {
    // The method plays no part in parsing; it is taken for symmetry with
    // `verify` so callers hand over the same triple everywhere.
    let _ = method;
    let query = QueryParams::parse(uri.query().unwrap_or(""));

    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    let header = authorization.next();
    if authorization.next().is_some() {
        return Err(VerifyError::header("more than one Authorization header"));
    }

    let query_v4 = query.contains("X-Amz-Signature")
        || query.contains("X-Amz-Credential")
        || query.contains("X-Amz-Algorithm");
    let query_v2 = query.contains("AWSAccessKeyId") || query.contains("Signature");

    match header {
        Some(value) => {
            if query_v4 {
                return Err(VerifyError::Ambiguous);
            }
            let value = value
                .to_str()
                .map_err(|_| VerifyError::header("the Authorization header is not ASCII"))?;
            parse_header(value, headers).map(Some)
        }
        None if query_v4 => parse_presigned(&query).map(Some),
        None if query_v2 => Err(VerifyError::SigV2),
        None => Ok(None),
    }
}

pub(super) fn parse_header(value: &str, headers: &HeaderMap) -> Result<AuthRequest, VerifyError> {
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        if value.starts_with("AWS ") {
            return Err(VerifyError::SigV2);
        }
        if value.starts_with("AWS4-") {
            return Err(VerifyError::UnsupportedAlgorithm { presigned: false });
        }
        return Err(VerifyError::header(
            "the Authorization header must start with AWS4-HMAC-SHA256",
        ));
    };
    if !rest.starts_with([' ', '\t']) {
        return Err(VerifyError::UnsupportedAlgorithm { presigned: false });
    }

    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for component in crate::scan::split(rest, b',') {
        let component = component.trim_matches([' ', '\t']);
        let Some((name, value)) = crate::scan::split_once(component, b'=') else {
            return Err(VerifyError::header(
                "each Authorization component must have the form name=value",
            ));
        };
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(VerifyError::header(
                    "unknown component in the Authorization header",
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(VerifyError::header(
                "duplicate component in the Authorization header",
            ));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(VerifyError::header(
            "the Authorization header needs Credential, SignedHeaders and Signature",
        ));
    };

    let scope = CredentialScope::parse(credential, false)?;
    let signed_headers = SignedHeaders::parse(signed_headers, false)?;
    let signature = decode_hex32(signature)
        .ok_or_else(|| VerifyError::header("the signature must be 64 hex characters"))?;

    let amz_date = single_header(headers, &X_AMZ_DATE)?.ok_or(VerifyError::MissingDate)?;
    let timestamp = parse_amz_date(amz_date).ok_or(VerifyError::MissingDate)?;

    let content_sha256 =
        single_value(headers, &X_AMZ_CONTENT_SHA256)?.ok_or(VerifyError::MissingContentSha256)?;
    let payload = PayloadMode::parse(header_str(content_sha256)?)?;

    Ok(AuthRequest {
        kind: AuthKind::Header,
        scope,
        signed_headers,
        signature,
        amz_date: amz_date.to_owned(),
        timestamp,
        payload,
        content_sha256: Some(content_sha256.clone()),
    })
}

pub(super) fn parse_presigned(query: &QueryParams) -> Result<AuthRequest, VerifyError> {
    let algorithm = query.required("X-Amz-Algorithm")?;
    if algorithm != ALGORITHM {
        return Err(VerifyError::UnsupportedAlgorithm { presigned: true });
    }
    let scope = CredentialScope::parse(&query.required("X-Amz-Credential")?, true)?;
    let amz_date = query.required("X-Amz-Date")?;
    let timestamp = parse_amz_date(&amz_date).ok_or(VerifyError::query(
        "X-Amz-Date must be in the ISO8601 long format YYYYMMDDTHHMMSSZ",
    ))?;
    let expires = query.required("X-Amz-Expires")?;
    let expires = parse_decimal(&expires)
        .filter(|e| (1..=MAX_PRESIGN_EXPIRES).contains(e))
        .ok_or(VerifyError::query(
            "X-Amz-Expires must be a number of seconds between 1 and 604800",
        ))?;
    let signed_headers = SignedHeaders::parse(&query.required("X-Amz-SignedHeaders")?, true)?;
    let signature = decode_hex32(&query.required("X-Amz-Signature")?).ok_or(VerifyError::query(
        "the signature must be 64 hex characters",
    ))?;
    if query.count("X-Amz-Security-Token") > 1 {
        return Err(VerifyError::query(
            "X-Amz-Security-Token appears more than once",
        ));
    }
    Ok(AuthRequest {
        kind: AuthKind::Presigned { expires },
        scope,
        signed_headers,
        signature,
        amz_date,
        timestamp,
        payload: PayloadMode::Unsigned,
        content_sha256: None,
    })
}

/// The value of a header that must not repeat, if present, trimmed.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a str>, VerifyError> {
    single_value(headers, name)?.map(header_str).transpose()
}

/// The header that must not repeat, if present.
pub(super) fn single_value<'a>(
    headers: &'a HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'a HeaderValue>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(VerifyError::header(
            "a signing header appears more than once",
        ));
    }
    Ok(Some(value))
}

/// A signing header's value, trimmed.
pub(super) fn header_str(value: &HeaderValue) -> Result<&str, VerifyError> {
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| VerifyError::header("a signing header is not ASCII"))
}
