//! AWS Signature Version 4, as S3 uses it.
//!
//! Verification happens in three steps so the caller can fetch the secret in
//! between:
//!
//! 1. [`parse`] reads what the client claims (access key, scope, signed
//!    headers, signature) from the `Authorization` header or the presigned
//!    query, without trusting any of it.
//! 2. [`check_time`] rejects stale, future or expired requests.
//! 3. [`verify`] rebuilds the canonical request exactly as the client signed
//!    it and compares signatures in constant time, with a [`SigningKey`] the
//!    caller derived for `auth.scope` (the key is never derived from a secret
//!    here, so the secret can stay in the control plane).
//!
//! The canonical form follows S3's flavour of SigV4: the path is encoded once
//! (no double encoding, no dot-segment normalization), and presigned URLs
//! always sign `UNSIGNED-PAYLOAD`. SigV2 and SigV4A are rejected.

use std::fmt;

use http::header::{HeaderMap, AUTHORIZATION};
use http::{Method, Uri};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::S3ErrorCode;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Longest lifetime S3 allows for a presigned URL: seven days.
pub const MAX_PRESIGN_EXPIRES: u64 = 604_800;
/// How far a header-signed request's `x-amz-date` may be from our clock.
pub const MAX_CLOCK_SKEW_SECS: i64 = 15 * 60;
/// Hex SHA-256 of the empty string.
pub const EMPTY_SHA256_HEX: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const TERMINATOR: &str = "aws4_request";

/// A derived SigV4 signing key: `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
///
/// It is valid for one day, region and service only, which is what makes it
/// safe to cache and to hand to the data plane instead of the secret.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

/// The scope a client claims in its credential: `AK/date/region/service/aws4_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialScope {
    pub access_key: String,
    /// `YYYYMMDD`
    pub date: String,
    pub region: String,
    pub service: String,
}

/// How the body is covered by the signature, from `x-amz-content-sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// The SHA-256 of the whole body, which the body must then match.
    Sha256([u8; 32]),
    /// `UNSIGNED-PAYLOAD`, also the mode of every presigned URL.
    Unsigned,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: aws-chunked with signed chunks.
    StreamingSigned,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`: signed chunks and a signed trailer.
    StreamingSignedTrailer,
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: unsigned chunks and an unsigned trailer.
    StreamingUnsignedTrailer,
}

/// Where the signature was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// `Authorization: AWS4-HMAC-SHA256 ...`
    Header,
    /// `?X-Amz-Algorithm=...&X-Amz-Signature=...`, valid for `expires` seconds.
    Presigned { expires: u64 },
}

/// What the client claims, parsed but not yet verified.
#[derive(Clone)]
pub struct AuthRequest {
    pub kind: AuthKind,
    pub scope: CredentialScope,
    /// Lowercase, in the order the client listed them.
    pub signed_headers: Vec<String>,
    /// Never printed by `Debug`.
    pub signature: [u8; 32],
    /// The raw `YYYYMMDDTHHMMSSZ` timestamp that was signed.
    pub amz_date: String,
    /// `amz_date` in unix seconds.
    pub timestamp: i64,
    /// Always [`PayloadMode::Unsigned`] for presigned requests.
    pub payload: PayloadMode,
}

/// Why a request's authentication was rejected.
///
/// Messages are shown to clients: they never contain a signature, a secret or
/// the string to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The `Authorization` header (or, for presigned, the query) is not well formed.
    #[error("{reason}")]
    Malformed {
        presigned: bool,
        reason: &'static str,
    },
    /// An algorithm other than `AWS4-HMAC-SHA256` (for example SigV4A).
    #[error("unsupported signing algorithm, only AWS4-HMAC-SHA256 is supported")]
    UnsupportedAlgorithm { presigned: bool },
    #[error("signature version 2 is not supported, use AWS4-HMAC-SHA256")]
    SigV2,
    #[error("only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the Authorization header should be specified")]
    Ambiguous,
    #[error("Missing required header for this request: x-amz-content-sha256")]
    MissingContentSha256,
    #[error("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a hex SHA-256")]
    InvalidPayloadMode,
    #[error("AWS authentication requires a valid Date or x-amz-date header")]
    MissingDate,
    #[error("the value of a signed header is not valid UTF-8")]
    InvalidHeaderValue,
    #[error("a header listed in SignedHeaders is missing from the request")]
    SignedHeaderMissing,
    #[error("the request signature we calculated does not match the signature you provided")]
    SignatureMismatch,
    #[error("the difference between the request time and the current time is too large")]
    Skewed,
    #[error("Request has expired")]
    Expired,
    #[error("Request is not valid yet")]
    NotYetValid,
    /// An `x-amz-*` header the client did not sign. S3 refuses these, and so
    /// must we: the gateway re-signs every header it forwards, so an unsigned
    /// one would otherwise become authentic at the backend.
    #[error("There were headers present in the request which were not signed")]
    UnsignedAmzHeader,
}

// === impl SigningKey ===

impl SigningKey {
    /// Derives the key for one `YYYYMMDD` date, region and service.
    pub fn derive(secret: &str, date: &str, region: &str, service: &str) -> Self {
        let mut first = Vec::with_capacity(secret.len().saturating_add(4));
        first.extend_from_slice(b"AWS4");
        first.extend_from_slice(secret.as_bytes());
        let k_date = hmac_sha256(&first, date.as_bytes());
        let k_region = hmac_sha256(&k_date, region.as_bytes());
        let k_service = hmac_sha256(&k_region, service.as_bytes());
        Self(hmac_sha256(&k_service, TERMINATOR.as_bytes()))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `HMAC-SHA256(key, string_to_sign)`.
    pub fn sign(&self, string_to_sign: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0, string_to_sign)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

// === impl CredentialScope ===

impl CredentialScope {
    /// `date/region/service/aws4_request`, the third line of the string to sign.
    pub fn to_scope_string(&self) -> String {
        format!(
            "{}/{}/{}/{TERMINATOR}",
            self.date, self.region, self.service
        )
    }

    /// Parses `AK/YYYYMMDD/region/service/aws4_request`.
    fn parse(credential: &str, presigned: bool) -> Result<Self, VerifyError> {
        let bad = |reason| VerifyError::Malformed { presigned, reason };
        let mut parts = credential.split('/');
        let (Some(access_key), Some(date), Some(region), Some(service), Some(term), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad(
                "the credential must have the form <key>/<date>/<region>/<service>/aws4_request",
            ));
        };
        if access_key.is_empty() || region.is_empty() || service.is_empty() {
            return Err(bad(
                "the credential has an empty access key, region or service",
            ));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the credential date must have the form YYYYMMDD"));
        }
        if term != TERMINATOR {
            return Err(bad("the credential must end with aws4_request"));
        }
        Ok(Self {
            access_key: access_key.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
        })
    }
}

// === impl PayloadMode ===

impl PayloadMode {
    /// Parses an `x-amz-content-sha256` value. SigV4A streaming modes
    /// (`STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD`) are not supported.
    pub fn parse(value: &str) -> Result<Self, VerifyError> {
        match value {
            UNSIGNED_PAYLOAD => Ok(Self::Unsigned),
            STREAMING_SIGNED => Ok(Self::StreamingSigned),
            STREAMING_SIGNED_TRAILER => Ok(Self::StreamingSignedTrailer),
            STREAMING_UNSIGNED_TRAILER => Ok(Self::StreamingUnsignedTrailer),
            hash => decode_hex32(hash)
                .map(Self::Sha256)
                .ok_or(VerifyError::InvalidPayloadMode),
        }
    }

    /// The body is `aws-chunked` encoded.
    pub fn is_streaming(self) -> bool {
        matches!(
            self,
            Self::StreamingSigned | Self::StreamingSignedTrailer | Self::StreamingUnsignedTrailer
        )
    }

    /// The body ends with a trailer (`x-amz-trailer`).
    pub fn has_trailer(self) -> bool {
        matches!(
            self,
            Self::StreamingSignedTrailer | Self::StreamingUnsignedTrailer
        )
    }

    /// The chunks carry signatures that chain from the request's signature.
    pub fn has_chunk_signatures(self) -> bool {
        matches!(self, Self::StreamingSigned | Self::StreamingSignedTrailer)
    }

    /// The value as it appears in `x-amz-content-sha256` (hashes in lowercase hex).
    pub fn to_header_value(self) -> String {
        match self {
            Self::Sha256(hash) => hex::encode(hash),
            Self::Unsigned => UNSIGNED_PAYLOAD.to_owned(),
            Self::StreamingSigned => STREAMING_SIGNED.to_owned(),
            Self::StreamingSignedTrailer => STREAMING_SIGNED_TRAILER.to_owned(),
            Self::StreamingUnsignedTrailer => STREAMING_UNSIGNED_TRAILER.to_owned(),
        }
    }
}

// === impl AuthRequest ===

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("signed_headers", &self.signed_headers)
            .field("signature", &"<redacted>")
            .field("amz_date", &self.amz_date)
            .field("timestamp", &self.timestamp)
            .field("payload", &self.payload)
            .finish()
    }
}

impl AuthRequest {
    fn is_presigned(&self) -> bool {
        matches!(self.kind, AuthKind::Presigned { .. })
    }
}

// === impl VerifyError ===

impl VerifyError {
    /// The S3 error code a client should see.
    pub fn code(&self) -> S3ErrorCode {
        match self {
            Self::Malformed { presigned, .. } | Self::UnsupportedAlgorithm { presigned } => {
                if *presigned {
                    S3ErrorCode::AuthorizationQueryParametersError
                } else {
                    S3ErrorCode::AuthorizationHeaderMalformed
                }
            }
            Self::SigV2 | Self::MissingContentSha256 | Self::InvalidHeaderValue => {
                S3ErrorCode::InvalidRequest
            }
            Self::Ambiguous | Self::InvalidPayloadMode => S3ErrorCode::InvalidArgument,
            Self::MissingDate | Self::Expired | Self::NotYetValid | Self::UnsignedAmzHeader => {
                S3ErrorCode::AccessDenied
            }
            Self::SignedHeaderMissing | Self::SignatureMismatch => {
                S3ErrorCode::SignatureDoesNotMatch
            }
            Self::Skewed => S3ErrorCode::RequestTimeTooSkewed,
        }
    }

    fn header(reason: &'static str) -> Self {
        Self::Malformed {
            presigned: false,
            reason,
        }
    }

    fn query(reason: &'static str) -> Self {
        Self::Malformed {
            presigned: true,
            reason,
        }
    }
}

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

fn parse_header(value: &str, headers: &HeaderMap) -> Result<AuthRequest, VerifyError> {
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
    for component in rest.split(',') {
        let component = component.trim_matches([' ', '\t']);
        let Some((name, value)) = component.split_once('=') else {
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
    let signed_headers = parse_signed_headers(signed_headers, false)?;
    let signature = decode_hex32(signature)
        .ok_or_else(|| VerifyError::header("the signature must be 64 hex characters"))?;

    let amz_date = single_header(headers, X_AMZ_DATE)?.ok_or(VerifyError::MissingDate)?;
    let timestamp = parse_amz_date(amz_date).ok_or(VerifyError::MissingDate)?;

    let payload =
        single_header(headers, X_AMZ_CONTENT_SHA256)?.ok_or(VerifyError::MissingContentSha256)?;
    let payload = PayloadMode::parse(payload)?;

    Ok(AuthRequest {
        kind: AuthKind::Header,
        scope,
        signed_headers,
        signature,
        amz_date: amz_date.to_owned(),
        timestamp,
        payload,
    })
}

fn parse_presigned(query: &QueryParams) -> Result<AuthRequest, VerifyError> {
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
    let signed_headers = parse_signed_headers(&query.required("X-Amz-SignedHeaders")?, true)?;
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
    })
}

fn parse_signed_headers(list: &str, presigned: bool) -> Result<Vec<String>, VerifyError> {
    let bad = |reason| VerifyError::Malformed { presigned, reason };
    let mut out = Vec::new();
    for name in list.split(';') {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase() && b != b';');
        if !valid {
            return Err(bad(
                "SignedHeaders must be a ;-separated list of lowercase header names",
            ));
        }
        out.push(name.to_owned());
    }
    if !out.iter().any(|name| name == "host") {
        return Err(bad("the host header must be signed"));
    }
    Ok(out)
}

/// The value of a header that must not repeat, if present.
fn single_header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(VerifyError::header(
            "a signing header appears more than once",
        ));
    }
    value
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| VerifyError::header("a signing header is not ASCII"))
}

// === check_time ===

/// Clock checks, `now` in unix seconds.
///
/// Header auth: `|now - timestamp| <= MAX_CLOCK_SKEW_SECS`. Presigned: not
/// before `timestamp - MAX_CLOCK_SKEW_SECS`, not after `timestamp + expires`.
/// Both: the credential date must be the signing day.
pub fn check_time(auth: &AuthRequest, now: i64) -> Result<(), VerifyError> {
    if auth.amz_date.get(..8) != Some(auth.scope.date.as_str()) {
        return Err(VerifyError::Malformed {
            presigned: auth.is_presigned(),
            reason: "the credential date does not match the request date",
        });
    }
    let (now, ts, skew) = (
        i128::from(now),
        i128::from(auth.timestamp),
        i128::from(MAX_CLOCK_SKEW_SECS),
    );
    match auth.kind {
        AuthKind::Header => {
            if (now - ts).abs() > skew {
                return Err(VerifyError::Skewed);
            }
        }
        AuthKind::Presigned { expires } => {
            if now < ts - skew {
                return Err(VerifyError::NotYetValid);
            }
            if now > ts + i128::from(expires) {
                return Err(VerifyError::Expired);
            }
        }
    }
    Ok(())
}

// === verify ===

/// Rebuilds the canonical request as the client signed it, signs it with
/// `key` and compares in constant time.
///
/// `key` must have been derived for `auth.scope` with the secret of
/// `auth.scope.access_key`; that is the caller's job.
pub fn verify(
    auth: &AuthRequest,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    key: &SigningKey,
) -> Result<(), VerifyError> {
    let canonical = canonical_request(auth, method, uri, headers)?;
    let sts = string_to_sign(&auth.amz_date, &auth.scope.to_scope_string(), &canonical);
    let expected = key.sign(sts.as_bytes());
    if !bool::from(expected.ct_eq(&auth.signature)) {
        return Err(VerifyError::SignatureMismatch);
    }
    check_amz_headers_signed(auth, headers)
}

/// Every `x-amz-*` header must be among the signed headers.
/// `x-amz-content-sha256` is exempt for header auth: its value is the
/// payload line of the canonical request, so it is bound anyway.
fn check_amz_headers_signed(auth: &AuthRequest, headers: &HeaderMap) -> Result<(), VerifyError> {
    for name in headers.keys() {
        let name = name.as_str();
        if !name.starts_with("x-amz-") {
            continue;
        }
        if name == "x-amz-content-sha256" && !auth.is_presigned() {
            continue;
        }
        if !auth.signed_headers.iter().any(|h| h == name) {
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
    for name in &auth.signed_headers {
        out.push_str(name);
        out.push(':');
        canonical_header_value(&mut out, name, uri, headers)?;
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&auth.signed_headers.join(";"));
    out.push('\n');
    match auth.kind {
        AuthKind::Presigned { .. } => out.push_str(UNSIGNED_PAYLOAD),
        // The client signed the header as sent; `parse` made sure it is there.
        AuthKind::Header => match single_header(headers, X_AMZ_CONTENT_SHA256)? {
            Some(value) => out.push_str(value),
            None => out.push_str(&auth.payload.to_header_value()),
        },
    }
    Ok(out)
}

/// `AWS4-HMAC-SHA256 \n amz_date \n scope \n hex(sha256(canonical_request))`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// Parses `YYYYMMDDTHHMMSSZ` into unix seconds; anything else is `None`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let hour = u8::try_from(num(9..11)?).ok()?;
    let minute = u8::try_from(num(11..13)?).ok()?;
    let second = u8::try_from(num(13..15)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(hour, minute, second).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// Formats unix seconds as `YYYYMMDDTHHMMSSZ`, the inverse of [`parse_amz_date`].
pub fn format_amz_date(unix: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

// === canonicalization ===

/// Unreserved characters in the SigV4 sense: `A-Z a-z 0-9 - . _ ~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_encoded(out: &mut String, bytes: &[u8], keep_slash: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// S3 encodes the path once: decode what the client sent, re-encode strictly.
fn canonical_uri(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    push_encoded(out, &percent_decode(path), true);
}

fn canonical_query(out: &mut String, query: &str, presigned: bool) {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = percent_decode(name);
        if presigned && name == b"X-Amz-Signature" {
            continue;
        }
        let mut enc_name = String::with_capacity(name.len());
        push_encoded(&mut enc_name, &name, false);
        let mut enc_value = String::new();
        push_encoded(&mut enc_value, &percent_decode(value), false);
        pairs.push((enc_name, enc_value));
    }
    pairs.sort_unstable();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

fn canonical_header_value(
    out: &mut String,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), VerifyError> {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        // HTTP/2 carries the host in the :authority pseudo-header, which
        // `http` exposes through the URI rather than the header map.
        if name == "host" {
            if let Some(authority) = uri.authority() {
                push_trimmed(out, authority.as_str());
                return Ok(());
            }
        }
        return Err(VerifyError::SignedHeaderMissing);
    }
    for (i, value) in values.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|_| VerifyError::InvalidHeaderValue)?;
        push_trimmed(out, value);
    }
    Ok(())
}

/// Trims the value and collapses inner runs of blanks to one space.
fn push_trimmed(out: &mut String, value: &str) {
    let mut words = value.split([' ', '\t']).filter(|w| !w.is_empty());
    if let Some(first) = words.next() {
        out.push_str(first);
    }
    for word in words {
        out.push(' ');
        out.push_str(word);
    }
}

/// Decoded query parameters, in order, duplicates kept.
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: &str) -> Self {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|piece| {
                let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
                (
                    String::from_utf8_lossy(&percent_decode(name)).into_owned(),
                    String::from_utf8_lossy(&percent_decode(value)).into_owned(),
                )
            })
            .collect();
        Self(pairs)
    }

    fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }

    /// A parameter that must appear exactly once.
    fn required(&self, name: &'static str) -> Result<String, VerifyError> {
        let mut found = self.0.iter().filter(|(n, _)| n == name);
        match (found.next(), found.next()) {
            (Some((_, value)), None) => Ok(value.clone()),
            (None, _) => Err(VerifyError::query(
                "the presigned query needs X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature",
            )),
            (Some(_), Some(_)) => Err(VerifyError::query(
                "an X-Amz-* query parameter appears more than once",
            )),
        }
    }
}

// === helpers ===

/// HMAC-SHA256 (RFC 2104) written out over `sha2`, so it is infallible for
/// every key length instead of going through a `Result` that cannot fail.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block.iter_mut().zip(digest).for_each(|(b, k)| *b = k);
    } else {
        block.iter_mut().zip(key).for_each(|(b, k)| *b = *k);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(data);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Exactly 64 hex digits (either case) into 32 bytes.
pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::{HeaderValue, Request};
    use proptest::prelude::*;

    type Parts = (Method, Uri, HeaderMap);

    /// Builds the request parts from a method, a URI and `name: value` header lines.
    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (parts, ()) = builder.body(()).unwrap().into_parts();
        (parts.method, parts.uri, parts.headers)
    }

    /// Parses and verifies against the derived key, at the signing time.
    fn check(parts: &Parts, secret: &str) -> Result<AuthRequest, VerifyError> {
        let (method, uri, headers) = parts;
        let auth = parse(method, uri, headers)?.expect("request carries auth");
        let key = SigningKey::derive(
            secret,
            &auth.scope.date,
            &auth.scope.region,
            &auth.scope.service,
        );
        check_time(&auth, auth.timestamp)?;
        verify(&auth, method, uri, headers, &key)?;
        Ok(auth)
    }

    // --- AWS SigV4 test suite (awslabs/aws-c-auth tests/aws-signing-test-suite/v4) ---
    //
    // Credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, region
    // us-east-1, service "service", 20150830T123600Z. The suite signs the empty
    // body's hash without sending x-amz-content-sha256, which S3 (and `parse`)
    // requires, so these tests add it unsigned with the value the suite hashed:
    // it only feeds the payload line, which is the same either way.

    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_AUTH: &str =
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, ";

    fn suite(method: &str, uri: &str, extra: &[(&str, &str)], authorization: &str) -> Parts {
        let mut headers = vec![
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", authorization),
        ];
        headers.extend_from_slice(extra);
        if !extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(X_AMZ_CONTENT_SHA256))
        {
            headers.push((X_AMZ_CONTENT_SHA256, EMPTY_SHA256_HEX));
        }
        request(method, uri, &headers)
    }

    #[test]
    fn suite_get_vanilla() {
        let auth = format!("{SUITE_AUTH}SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
        let parts = suite("GET", "/", &[], &auth);
        let (method, uri, headers) = &parts;
        let parsed = parse(method, uri, headers).unwrap().unwrap();
        assert_eq!(
            canonical_request(&parsed, method, uri, headers).unwrap(),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        check(&parts, SUITE_SECRET).unwrap();
    }

    #[test]
    fn suite_get_vanilla_query_order_key_case() {
        let auth = format!("{SUITE_AUTH}SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
        check(
            &suite("GET", "/?Param2=value2&Param1=value1", &[], &auth),
            SUITE_SECRET,
        )
        .unwrap();
    }

    #[test]
    fn suite_get_header_value_trim() {
        let auth = format!("{SUITE_AUTH}SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736");
        let extra = [("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")];
        check(&suite("GET", "/", &extra, &auth), SUITE_SECRET).unwrap();
    }

    #[test]
    fn suite_get_vanilla_query_unreserved() {
        let auth = format!("{SUITE_AUTH}SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197");
        let uri = "/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        check(&suite("GET", uri, &[], &auth), SUITE_SECRET).unwrap();
    }

    #[test]
    fn suite_get_utf8() {
        // The suite's request line is `GET /ሴ`; `http::Uri` only holds the
        // percent-encoded form, whose single encoding is the canonical URI.
        let auth = format!("{SUITE_AUTH}SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85");
        check(&suite("GET", "/%E1%88%B4", &[], &auth), SUITE_SECRET).unwrap();
    }

    #[test]
    fn suite_post_x_www_form_urlencoded() {
        let auth = format!("{SUITE_AUTH}SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b");
        let extra = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Content-Length", "13"),
            (
                "x-amz-content-sha256",
                "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
            ),
        ];
        let auth = check(&suite("POST", "/", &extra, &auth), SUITE_SECRET).unwrap();
        assert_eq!(
            auth.payload,
            PayloadMode::Sha256(
                decode_hex32("9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e")
                    .unwrap()
            )
        );
    }

    #[test]
    fn suite_signing_key() {
        // aws-c-auth's get-vanilla context: the derived key for the suite's scope.
        let key = SigningKey::derive(SUITE_SECRET, "20150830", "us-east-1", "service");
        assert_eq!(
            hex::encode(key.as_bytes()),
            "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75"
        );
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
    }

    // --- AWS S3 documentation examples ("Signature Calculations for the
    // Authorization Header" and "Authenticating Requests: Using Query
    // Parameters"), AKIAIOSFODNN7EXAMPLE, 20130524T000000Z, us-east-1. ---

    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DOC_CREDENTIAL: &str =
        "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request";

    fn doc(
        method: &str,
        uri: &str,
        signed: &str,
        signature: &str,
        extra: &[(&str, &str)],
    ) -> Parts {
        let authorization = format!(
            "AWS4-HMAC-SHA256 {DOC_CREDENTIAL},SignedHeaders={signed},Signature={signature}"
        );
        let mut headers = vec![
            ("Host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("Authorization", authorization.as_str()),
        ];
        headers.extend_from_slice(extra);
        if !extra.iter().any(|(n, _)| *n == X_AMZ_CONTENT_SHA256) {
            headers.push((X_AMZ_CONTENT_SHA256, EMPTY_SHA256_HEX));
        }
        request(method, uri, &headers)
    }

    #[test]
    fn doc_get_object_with_range() {
        let parts = doc(
            "GET",
            "/test.txt",
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            &[("Range", "bytes=0-9")],
        );
        let (method, uri, headers) = &parts;
        let auth = parse(method, uri, headers).unwrap().unwrap();
        let canonical = canonical_request(&auth, method, uri, headers).unwrap();
        assert_eq!(
            string_to_sign(&auth.amz_date, &auth.scope.to_scope_string(), &canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let auth = check(&parts, DOC_SECRET).unwrap();
        assert_eq!(auth.scope.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(
            auth.payload,
            PayloadMode::Sha256(decode_hex32(EMPTY_SHA256_HEX).unwrap())
        );
        assert_eq!(
            check(&parts, "wrong").unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    #[test]
    fn doc_put_object() {
        let parts = doc(
            "PUT",
            "/test$file.text",
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            &[
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                (
                    "x-amz-content-sha256",
                    "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
                ),
            ],
        );
        check(&parts, DOC_SECRET).unwrap();
    }

    #[test]
    fn doc_get_bucket_lifecycle() {
        let parts = doc(
            "GET",
            "/?lifecycle",
            "host;x-amz-content-sha256;x-amz-date",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            &[],
        );
        check(&parts, DOC_SECRET).unwrap();
    }

    #[test]
    fn doc_list_objects() {
        let parts = doc(
            "GET",
            "/?max-keys=2&prefix=J",
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            &[],
        );
        check(&parts, DOC_SECRET).unwrap();
    }

    const DOC_PRESIGNED: &str = "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";

    #[test]
    fn doc_presigned_url() {
        let parts = request(
            "GET",
            DOC_PRESIGNED,
            &[("Host", "examplebucket.s3.amazonaws.com")],
        );
        let (method, uri, headers) = &parts;
        let auth = parse(method, uri, headers).unwrap().unwrap();
        assert_eq!(auth.kind, AuthKind::Presigned { expires: 86_400 });
        assert_eq!(auth.payload, PayloadMode::Unsigned);
        assert_eq!(
            canonical_request(&auth, method, uri, headers).unwrap(),
            "GET\n/test.txt\nX-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\nhost:examplebucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
        );
        check(&parts, DOC_SECRET).unwrap();

        // Without a Host header (HTTP/2), the URI authority stands in.
        let parts = request("GET", DOC_PRESIGNED, &[]);
        check(&parts, DOC_SECRET).unwrap();
    }

    #[test]
    fn doc_chunked_upload_seed_signature() {
        let parts = request(
            "PUT",
            "/examplebucket/chunkObject.txt",
            &[
                ("Host", "s3.amazonaws.com"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
                ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
                ("Content-Encoding", "aws-chunked"),
                ("x-amz-decoded-content-length", "66560"),
                ("Content-Length", "66824"),
            ],
        );
        let auth = check(&parts, DOC_SECRET).unwrap();
        assert_eq!(auth.payload, PayloadMode::StreamingSigned);
        assert!(auth.payload.is_streaming() && !auth.payload.has_trailer());
    }

    // --- botocore 1.43 (an independent implementation) signed these on this
    // machine with a fixed clock of 2024-03-01T12:00:00Z:
    // S3SigV4Auth / S3SigV4QueryAuth, AKIAGATEWAYTEST00001 / gatewaySecret/with+chars=. ---

    const BOTO_SECRET: &str = "gatewaySecret/with+chars=";

    #[test]
    fn botocore_header_signed_put_with_odd_key() {
        let parts = request(
            "PUT",
            "https://s3.us-west-2.amazonaws.com/my-bucket/dir/a%20b%2Bc%C3%BC%25d~.txt?partNumber=2&uploadId=x%2By%20z",
            &[
                ("Content-Type", "text/plain"),
                ("X-Amz-Meta-Note", "  two   spaces  "),
                ("X-Amz-Date", "20240301T120000Z"),
                ("X-Amz-Content-SHA256", "16cacfab791192d9232885fb8dc5896f64d17f97e969e446c36b4717543b985b"),
                ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAGATEWAYTEST00001/20240301/us-west-2/s3/aws4_request, SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-note, Signature=d12cd2e6cf3a954dd82ff5424a01d4c89fd59e8a9d879661763d472234da1dc6"),
                ("Content-Length", "14"),
                ("Host", "s3.us-west-2.amazonaws.com"),
            ],
        );
        let auth = check(&parts, BOTO_SECRET).unwrap();
        assert_eq!(auth.scope.region, "us-west-2");
        assert_eq!(
            auth.payload.to_header_value(),
            "16cacfab791192d9232885fb8dc5896f64d17f97e969e446c36b4717543b985b"
        );
    }

    #[test]
    fn botocore_presigned_get_with_unicode_key() {
        let url = "https://my-bucket.s3.us-west-2.amazonaws.com/caf%C3%A9/%F0%9F%98%80%20x.txt?versionId=a%2Fb&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAGATEWAYTEST00001%2F20240301%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date=20240301T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host&X-Amz-Signature=44fff2a3ab945900b63239f782792e1e14a091e59df5d858cfbbe1d76dd7f7cc";
        let parts = request(
            "GET",
            url,
            &[("Host", "my-bucket.s3.us-west-2.amazonaws.com")],
        );
        let auth = check(&parts, BOTO_SECRET).unwrap();
        assert_eq!(auth.kind, AuthKind::Presigned { expires: 900 });

        // The same URL with its path encoded differently (but equivalently)
        // still verifies: S3 decodes before it canonicalizes.
        let lower = url.replace("caf%C3%A9", "caf%c3%a9");
        let parts = request(
            "GET",
            &lower,
            &[("Host", "my-bucket.s3.us-west-2.amazonaws.com")],
        );
        check(&parts, BOTO_SECRET).unwrap();

        // Tampering with the unsigned-looking but signed version id fails.
        let tampered = url.replace("versionId=a%2Fb", "versionId=a%2Fc");
        let parts = request(
            "GET",
            &tampered,
            &[("Host", "my-bucket.s3.us-west-2.amazonaws.com")],
        );
        assert_eq!(
            check(&parts, BOTO_SECRET).unwrap_err(),
            VerifyError::SignatureMismatch
        );
    }

    // --- parsing ---

    fn parse_err(uri: &str, headers: &[(&str, &str)]) -> VerifyError {
        let (method, uri, headers) = request("GET", uri, headers);
        parse(&method, &uri, &headers).unwrap_err()
    }

    const GOOD_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AK/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";

    fn with_auth(authorization: &str) -> Vec<(&str, &str)> {
        vec![
            ("host", "h"),
            ("x-amz-date", "20130524T000000Z"),
            (X_AMZ_CONTENT_SHA256, UNSIGNED_PAYLOAD),
            ("authorization", authorization),
        ]
    }

    #[test]
    fn anonymous_requests_parse_to_none() {
        let (method, uri, headers) = request("GET", "/b/k?list-type=2", &[("host", "h")]);
        assert!(parse(&method, &uri, &headers).unwrap().is_none());
    }

    #[test]
    fn header_form_is_flexible_about_whitespace() {
        for value in [
            GOOD_AUTH.to_owned(),
            GOOD_AUTH.replace(", ", ","),
            GOOD_AUTH.replace(", ", ",   "),
            GOOD_AUTH.replace("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256   "),
        ] {
            let (method, uri, headers) = request("GET", "/", &with_auth(&value));
            let auth = parse(&method, &uri, &headers).unwrap().unwrap();
            assert_eq!(auth.signed_headers, ["host", "x-amz-date"]);
            assert_eq!(auth.timestamp, 1_369_353_600);
        }
    }

    #[test]
    fn malformed_headers_are_rejected_with_the_right_code() {
        use S3ErrorCode::*;
        let cases: &[(String, S3ErrorCode)] = &[
            (
                GOOD_AUTH.replace(", Signature", ", Signature=ab, Signature"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("SignedHeaders=host;x-amz-date, ", ""),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("f0e8bdb8", "g0e8bdb8"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("f0e8bdb8", "f0e8bdb"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("aws4_request", "aws5_request"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("/20130524/", "/2013052/"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("/us-east-1/", "/"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("host;", "Host;"),
                AuthorizationHeaderMalformed,
            ),
            (GOOD_AUTH.replace("host;", ""), AuthorizationHeaderMalformed),
            (
                GOOD_AUTH.replace("host;", ";"),
                AuthorizationHeaderMalformed,
            ),
            (
                GOOD_AUTH.replace("Credential", "Cred"),
                AuthorizationHeaderMalformed,
            ),
            (format!("{GOOD_AUTH},"), AuthorizationHeaderMalformed),
            (
                GOOD_AUTH.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
                AuthorizationHeaderMalformed,
            ),
            ("Bearer token".to_owned(), AuthorizationHeaderMalformed),
            (
                "AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=".to_owned(),
                InvalidRequest,
            ),
        ];
        for (value, code) in cases {
            let err = parse_err("/", &with_auth(value));
            assert_eq!(err.code(), *code, "{value}: {err}");
        }
    }

    #[test]
    fn header_auth_requirements() {
        let mut headers = with_auth(GOOD_AUTH);
        headers.retain(|(n, _)| *n != X_AMZ_CONTENT_SHA256);
        let err = parse_err("/", &headers);
        assert_eq!(err, VerifyError::MissingContentSha256);
        assert_eq!(err.code(), S3ErrorCode::InvalidRequest);
        assert_eq!(
            err.to_string(),
            "Missing required header for this request: x-amz-content-sha256"
        );

        let mut headers = with_auth(GOOD_AUTH);
        headers.push((
            X_AMZ_CONTENT_SHA256,
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        ));
        assert_eq!(
            parse_err("/", &headers).code(),
            S3ErrorCode::AuthorizationHeaderMalformed
        );

        let mut headers = with_auth(GOOD_AUTH);
        headers.retain(|(n, _)| *n != X_AMZ_CONTENT_SHA256);
        headers.push((
            X_AMZ_CONTENT_SHA256,
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        ));
        let err = parse_err("/", &headers);
        assert_eq!(err.code(), S3ErrorCode::InvalidArgument);

        let mut headers = with_auth(GOOD_AUTH);
        headers.retain(|(n, _)| *n != "x-amz-date");
        assert_eq!(parse_err("/", &headers).code(), S3ErrorCode::AccessDenied);

        let mut headers = with_auth(GOOD_AUTH);
        headers.push(("authorization", GOOD_AUTH));
        assert_eq!(
            parse_err("/", &headers).code(),
            S3ErrorCode::AuthorizationHeaderMalformed
        );
    }

    #[test]
    fn ambiguous_and_v2_requests_are_rejected() {
        let err = parse_err("/k?X-Amz-Signature=00", &with_auth(GOOD_AUTH));
        assert_eq!(err.code(), S3ErrorCode::InvalidArgument);
        let err = parse_err("/k?X-Amz-Credential=x", &with_auth(GOOD_AUTH));
        assert_eq!(err, VerifyError::Ambiguous);

        let err = parse_err(
            "/k?AWSAccessKeyId=AK&Expires=1&Signature=abc",
            &[("host", "h")],
        );
        assert_eq!(err, VerifyError::SigV2);
        assert_eq!(err.code(), S3ErrorCode::InvalidRequest);
    }

    #[test]
    fn malformed_presigned_queries_are_rejected() {
        let good = DOC_PRESIGNED;
        let cases = [
            good.replace("&X-Amz-Expires=86400", ""),
            good.replace("X-Amz-Expires=86400", "X-Amz-Expires=604801"),
            good.replace("X-Amz-Expires=86400", "X-Amz-Expires=0"),
            good.replace("X-Amz-Expires=86400", "X-Amz-Expires=-1"),
            good.replace(
                "X-Amz-Expires=86400",
                "X-Amz-Expires=99999999999999999999999",
            ),
            good.replace("X-Amz-Date=20130524T000000Z", "X-Amz-Date=20130524T240000Z"),
            good.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=range"),
            good.replace("aeeed9bb", "aeeed9b"),
            good.replace("%2Faws4_request", "%2Faws4"),
            format!("{good}&X-Amz-Date=20130524T000000Z"),
            good.replace("x-amz-algorithm", "X-Amz-Algorithm").replace(
                "X-Amz-Algorithm=AWS4-HMAC-SHA256",
                "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256",
            ),
            good.replace("X-Amz-Credential", "x-amz-credential"),
        ];
        for uri in cases {
            let err = parse_err(&uri, &[("host", "examplebucket.s3.amazonaws.com")]);
            assert_eq!(
                err.code(),
                S3ErrorCode::AuthorizationQueryParametersError,
                "{uri}: {err}"
            );
        }
        // At the limit is fine.
        let uri = good.replace("X-Amz-Expires=86400", "X-Amz-Expires=604800");
        let (method, uri, headers) = request("GET", &uri, &[]);
        assert!(parse(&method, &uri, &headers).unwrap().is_some());
    }

    #[test]
    fn debug_and_display_hide_the_signature() {
        let (method, uri, headers) = request("GET", DOC_PRESIGNED, &[]);
        let auth = parse(&method, &uri, &headers).unwrap().unwrap();
        let debug = format!("{auth:?}");
        assert!(!debug.contains("aeeed9bb"), "{debug}");
        assert!(!debug.contains("174"), "{debug}"); // first byte 0xae printed as decimal
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn payload_modes() {
        use PayloadMode::*;
        for (value, mode) in [
            ("UNSIGNED-PAYLOAD", Unsigned),
            ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", StreamingSigned),
            (
                "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
                StreamingSignedTrailer,
            ),
            (
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                StreamingUnsignedTrailer,
            ),
        ] {
            assert_eq!(PayloadMode::parse(value).unwrap(), mode);
            assert_eq!(mode.to_header_value(), value);
        }
        assert!(
            StreamingUnsignedTrailer.has_trailer()
                && !StreamingUnsignedTrailer.has_chunk_signatures()
        );
        assert!(!Unsigned.is_streaming());
        for bad in [
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
            "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
            "unsigned-payload",
            "",
            &EMPTY_SHA256_HEX[1..],
        ] {
            assert_eq!(
                PayloadMode::parse(bad).unwrap_err().code(),
                S3ErrorCode::InvalidArgument
            );
        }
    }

    #[test]
    fn amz_dates() {
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        for bad in [
            "",
            "20130524T000000",
            "20130524 000000Z",
            "20130524T000000z",
            "2013-05-24T00:00:00Z",
            "20130532T000000Z",
            "20130229T000000Z",
            "20131324T000000Z",
            "20130524T250000Z",
            "20130524T006000Z",
            "+0130524T000000Z",
            "20130524T00000\u{e9}",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
        assert_eq!(
            format_amz_date(1_369_353_600).as_deref(),
            Some("20130524T000000Z")
        );
    }

    #[test]
    fn time_boundaries() {
        let header = |ts: i64| AuthRequest {
            kind: AuthKind::Header,
            scope: CredentialScope {
                access_key: "AK".into(),
                date: "20130524".into(),
                region: "us-east-1".into(),
                service: "s3".into(),
            },
            signed_headers: vec!["host".into()],
            signature: [0; 32],
            amz_date: "20130524T000000Z".into(),
            timestamp: ts,
            payload: PayloadMode::Unsigned,
        };
        let t = 1_369_353_600;
        let auth = header(t);
        assert_eq!(check_time(&auth, t + MAX_CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(check_time(&auth, t - MAX_CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(
            check_time(&auth, t + MAX_CLOCK_SKEW_SECS + 1),
            Err(VerifyError::Skewed)
        );
        assert_eq!(
            check_time(&auth, t - MAX_CLOCK_SKEW_SECS - 1),
            Err(VerifyError::Skewed)
        );
        assert_eq!(
            VerifyError::Skewed.code(),
            S3ErrorCode::RequestTimeTooSkewed
        );
        assert_eq!(check_time(&auth, i64::MIN), Err(VerifyError::Skewed));
        assert_eq!(
            check_time(&header(i64::MIN), i64::MAX),
            Err(VerifyError::Skewed)
        );

        let presigned = AuthRequest {
            kind: AuthKind::Presigned { expires: 100 },
            ..header(t)
        };
        assert_eq!(check_time(&presigned, t + 100), Ok(()));
        assert_eq!(check_time(&presigned, t + 101), Err(VerifyError::Expired));
        assert_eq!(check_time(&presigned, t - MAX_CLOCK_SKEW_SECS), Ok(()));
        assert_eq!(
            check_time(&presigned, t - MAX_CLOCK_SKEW_SECS - 1),
            Err(VerifyError::NotYetValid)
        );
        assert_eq!(VerifyError::Expired.code(), S3ErrorCode::AccessDenied);
        assert_eq!(VerifyError::Expired.to_string(), "Request has expired");
        assert_eq!(VerifyError::NotYetValid.code(), S3ErrorCode::AccessDenied);

        let mut other_day = header(t);
        other_day.scope.date = "20130523".into();
        assert_eq!(
            check_time(&other_day, t).unwrap_err().code(),
            S3ErrorCode::AuthorizationHeaderMalformed
        );
        other_day.kind = AuthKind::Presigned { expires: 1 };
        assert_eq!(
            check_time(&other_day, t).unwrap_err().code(),
            S3ErrorCode::AuthorizationQueryParametersError
        );
    }

    #[test]
    fn unsigned_amz_headers_are_refused() {
        let extra = vec![("x-amz-meta-a".to_owned(), "1".to_owned())];
        let (m, u, mut h) = sign_request("PUT", "/k", "", &extra, "secret");
        assert!(check(&(m.clone(), u.clone(), h.clone()), "secret").is_ok());
        // an x-amz header added after signing
        h.insert("x-amz-meta-injected", HeaderValue::from_static("yes"));
        let err = check(&(m.clone(), u.clone(), h.clone()), "secret").unwrap_err();
        assert_eq!(err, VerifyError::UnsignedAmzHeader);
        assert_eq!(err.code(), S3ErrorCode::AccessDenied);
        // a plain header added after signing is tolerated, as S3 does
        h.remove("x-amz-meta-injected");
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(check(&(m, u, h), "secret").is_ok());
    }

    #[test]
    fn missing_signed_header_is_a_mismatch() {
        let parts = doc(
            "GET",
            "/test.txt",
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            &[],
        );
        let err = check(&parts, DOC_SECRET).unwrap_err();
        assert_eq!(err, VerifyError::SignedHeaderMissing);
        assert_eq!(err.code(), S3ErrorCode::SignatureDoesNotMatch);
    }

    #[test]
    fn canonical_forms() {
        let uri = |path: &str| {
            let mut out = String::new();
            canonical_uri(&mut out, path);
            out
        };
        assert_eq!(uri("/a b"), "/a%20b");
        assert_eq!(uri("/a%20b/c+d"), "/a%20b/c%2Bd");
        assert_eq!(uri("/a/../b/./c//"), "/a/../b/./c//");
        // An encoded slash decodes to a slash, which stays a slash; broken
        // escapes are taken literally.
        assert_eq!(uri("/%2F%zz%"), "//%25zz%25");
        assert_eq!(uri("/%ff%fe"), "/%FF%FE");
        assert_eq!(uri(""), "/");
        let query = |q: &str, presigned| {
            let mut out = String::new();
            canonical_query(&mut out, q, presigned);
            out
        };
        assert_eq!(query("b=2&a=1&a=0&c", false), "a=0&a=1&b=2&c=");
        assert_eq!(query("a+b=c+d&x=%2f/", false), "a%2Bb=c%2Bd&x=%2F%2F");
        assert_eq!(query("X-Amz-Signature=1&x=1", true), "x=1");
        assert_eq!(
            query("X-Amz-Signature=1&x=1", false),
            "X-Amz-Signature=1&x=1"
        );
        assert_eq!(query("&&a=1&", false), "a=1");
        let mut out = String::new();
        push_trimmed(&mut out, " \t a \t  b  c ");
        assert_eq!(out, "a b c");
    }

    #[test]
    fn multiple_header_values_are_joined_with_commas() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static(" 2  3 "));
        let mut out = String::new();
        canonical_header_value(&mut out, "x-a", &Uri::from_static("/"), &headers).unwrap();
        assert_eq!(out, "1,2 3");
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_bytes(b"\xff").unwrap());
        let err = canonical_header_value(&mut out, "x-a", &Uri::from_static("/"), &headers);
        assert_eq!(err, Err(VerifyError::InvalidHeaderValue));
    }

    #[test]
    fn hmac_matches_rfc_4231_and_the_hmac_crate() {
        use hmac::Mac as _;
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        for len in [0, 1, 32, 63, 64, 65, 200] {
            let key = vec![0x5a; len];
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(b"data");
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            assert_eq!(hmac_sha256(&key, b"data"), expected, "key length {len}");
        }
    }

    // --- properties ---

    /// Signs a request the way a client would and returns its parts.
    fn sign_request(
        method: &str,
        path: &str,
        query: &str,
        extra: &[(String, String)],
        secret: &str,
    ) -> Parts {
        let uri = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let mut headers: Vec<(String, String)> = vec![
            ("host".into(), "bucket.example.com".into()),
            ("x-amz-date".into(), "20240301T120000Z".into()),
            (X_AMZ_CONTENT_SHA256.into(), UNSIGNED_PAYLOAD.into()),
        ];
        headers.extend_from_slice(extra);
        let mut signed: Vec<String> = headers
            .iter()
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        signed.sort();
        signed.dedup();
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (m, u, h) = request(method, &uri, &refs);
        let mut auth = AuthRequest {
            kind: AuthKind::Header,
            scope: CredentialScope {
                access_key: "AKTEST".into(),
                date: "20240301".into(),
                region: "eu-west-1".into(),
                service: "s3".into(),
            },
            signed_headers: signed,
            signature: [0; 32],
            amz_date: "20240301T120000Z".into(),
            timestamp: 0,
            payload: PayloadMode::Unsigned,
        };
        let canonical = canonical_request(&auth, &m, &u, &h).unwrap();
        let key = SigningKey::derive(secret, "20240301", "eu-west-1", "s3");
        auth.signature = key.sign(
            string_to_sign(&auth.amz_date, &auth.scope.to_scope_string(), &canonical).as_bytes(),
        );
        let value = format!(
            "AWS4-HMAC-SHA256 Credential=AKTEST/{}, SignedHeaders={}, Signature={}",
            auth.scope.to_scope_string(),
            auth.signed_headers.join(";"),
            hex::encode(auth.signature)
        );
        let mut h = h;
        h.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
        (m, u, h)
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        // Raw path segments, percent-encoded the way a client would.
        prop::collection::vec("[a-zA-Z0-9 +%~._\\-/é😀=&?#]{0,12}", 1..4).prop_map(|segments| {
            let mut path = String::new();
            for segment in segments {
                path.push('/');
                percent_encoding::utf8_percent_encode(&segment, percent_encoding::NON_ALPHANUMERIC)
                    .for_each(|s| path.push_str(s));
            }
            path
        })
    }

    fn query_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(("[a-zA-Z-]{1,8}", "[a-zA-Z0-9 /+=&%é]{0,8}"), 0..4).prop_map(
            |pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            percent_encoding::utf8_percent_encode(
                                v,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            },
        )
    }

    proptest! {
        // Regressions are kept as explicit tests instead of files.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn sign_then_verify_round_trips(
            method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "HEAD"]),
            path in path_strategy(),
            query in query_strategy(),
            meta in prop::collection::vec(("[a-z]{1,6}", "[ -~]{0,16}"), 0..3),
            secret in "[ -~]{1,40}",
            flip in any::<prop::sample::Index>(),
        ) {
            let extra: Vec<(String, String)> = meta
                .iter()
                .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone()))
                .collect();
            let parts = sign_request(method, &path, &query, &extra, &secret);
            check(&parts, &secret).unwrap();

            // Change one literal letter or digit of the path or query (not
            // one inside a %XX escape), which changes what was signed.
            let (m, u, h) = parts;
            let pq = u.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
            let bytes = pq.as_bytes();
            let i = flip.index(bytes.len());
            let in_escape = bytes.get(i.saturating_sub(2)..i).is_some_and(|b| b.contains(&b'%'));
            if let (Some(&original), false) = (bytes.get(i), in_escape) {
                if original.is_ascii_alphanumeric() {
                    let mut changed = bytes.to_vec();
                    changed[i] = if original == b'a' { b'b' } else { b'a' };
                    let uri: Uri = String::from_utf8(changed).unwrap().parse().unwrap();
                    let err = check(&(m.clone(), uri, h.clone()), &secret).unwrap_err();
                    prop_assert_eq!(err, VerifyError::SignatureMismatch);
                }
            }
            let mut h2 = h.clone();
            h2.insert("x-amz-date", HeaderValue::from_static("20240301T120001Z"));
            prop_assert!(check(&(m.clone(), u.clone(), h2), &secret).is_err());
            if let Some((name, value)) = extra.first() {
                let mut h3 = h.clone();
                h3.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(&format!("{value}x")).unwrap(),
                );
                prop_assert_eq!(check(&(m.clone(), u.clone(), h3), &secret).unwrap_err(), VerifyError::SignatureMismatch);
            }
            prop_assert_eq!(check(&(m, u, h), "other secret").unwrap_err(), VerifyError::SignatureMismatch);
        }

        #[test]
        fn parse_never_panics(
            authorization in prop::option::of("[ -~]{0,300}"),
            query in "[ -~]{0,300}",
            date in prop::option::of("[0-9TZ]{0,20}"),
            sha in prop::option::of("[ -~]{0,70}"),
        ) {
            let mut headers = HeaderMap::new();
            if let Some(a) = authorization.as_deref().and_then(|a| HeaderValue::from_str(a).ok()) {
                headers.insert(AUTHORIZATION, a);
            }
            if let Some(d) = date.as_deref().and_then(|d| HeaderValue::from_str(d).ok()) {
                headers.insert("x-amz-date", d);
            }
            if let Some(s) = sha.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
                headers.insert(X_AMZ_CONTENT_SHA256, s);
            }
            let uri = format!("/k?{}", query.replace(['#', ' ', '"', '<', '>', '\\', '^', '`', '{', '|', '}'], ""));
            if let Ok(uri) = uri.parse::<Uri>() {
                if let Ok(Some(auth)) = parse(&Method::GET, &uri, &headers) {
                    let _ = check_time(&auth, 0);
                    let key = SigningKey::from_bytes([7; 32]);
                    let _ = verify(&auth, &Method::GET, &uri, &headers, &key);
                }
            }
        }

        #[test]
        fn parse_never_panics_on_structured_garbage(
            parts in prop::collection::vec(prop::sample::select(vec![
                "AWS4-HMAC-SHA256", " ", ",", "=", "/", ";", "Credential", "SignedHeaders",
                "Signature", "aws4_request", "20130524", "host", "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            ]), 0..30),
        ) {
            let value = parts.concat();
            let headers = with_auth(&value);
            let (method, uri, headers) = request("GET", "/", &headers);
            let _ = parse(&method, &uri, &headers);
        }

        #[test]
        fn amz_date_round_trips(ts in 0i64..253_402_300_799) {
            let s = format_amz_date(ts).unwrap();
            prop_assert_eq!(parse_amz_date(&s), Some(ts));
        }
    }
}
