//! AWS Signature Version 2, as S3 uses it: the legacy scheme that boto3's
//! `generate_presigned_url` and `aws s3 presign` (aws cli v1) still produce
//! for S3 by default.
//!
//! SigV2 signs with the raw secret (`HMAC-SHA1(secret, string-to-sign)`):
//! unlike SigV4 there is no derived key the secret could stay behind. So
//! verification is split where the secret lives:
//!
//! 1. [`fold_presigned_query`] turns the `x-amz-*`, `Content-Type` and
//!    `Content-MD5` parameters a signer moved into a presigned URL back into
//!    the headers they stand for (as botocore's signer moves them), so the
//!    request is the one that was signed for every later stage too.
//! 2. [`parse`] reads what the request claims (access key, signature, and
//!    its date or expiry), without trusting any of it.
//! 3. [`check_time`] rejects stale and expired requests.
//! 4. [`string_to_sign`] rebuilds the string the client signed: method,
//!    `Content-MD5`, `Content-Type`, the date (or `Expires`), the
//!    canonicalized `x-amz-*` headers and the canonicalized resource.
//! 5. [`signature_matches`] — where the secret is (the control plane) —
//!    signs that string and compares in constant time.
//!
//! Nothing here ever sees a secret except [`sign`] and [`signature_matches`].

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac as _};
use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use http::uri::PathAndQuery;
use http::{Method, Uri};
use percent_encoding::percent_decode_str;
use sha1::{Digest as _, Sha1};
use subtle::ConstantTimeEq as _;

use crate::sigv4::{parse_amz_date, MAX_CLOCK_SKEW_SECS};
use crate::{S3Error, S3ErrorCode};

/// Bytes of an HMAC-SHA1 signature.
pub const SIGNATURE_LEN: usize = 20;

/// The query parameters that are part of the canonicalized resource: the
/// sub-resources and `response-*` overrides, as botocore's SigV2 signer
/// (`HmacV1Auth.QSAOfInterest`) lists them. Matched by exact (raw) name.
pub const SIGNED_SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "defaultObjectAcl",
    "delete",
    "inventory",
    "lifecycle",
    "location",
    "logging",
    "metrics",
    "notification",
    "object-lock",
    "partNumber",
    "policy",
    "replication",
    "requestPayment",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "restore",
    "select",
    "select-type",
    "storageClass",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "website",
];

/// The presign parameters of SigV2.
pub const QUERY_PARAMS: &[&str] = &["AWSAccessKeyId", "Signature", "Expires"];

/// How the request carries its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Authorization: AWS <key>:<signature>`, sent at `date` (unix seconds,
    /// from `x-amz-date`, else `Date`).
    Header { date: i64 },
    /// `?AWSAccessKeyId=…&Signature=…&Expires=…`, valid until `expires`
    /// (unix seconds) inclusive.
    Presigned { expires: i64 },
}

/// What a SigV2 request claims, parsed but not verified.
#[derive(Clone)]
pub struct Auth {
    pub kind: Kind,
    pub access_key: String,
    /// Never printed by `Debug`.
    pub signature: [u8; SIGNATURE_LEN],
    /// The date line of the string to sign, as sent: the `Date` header
    /// (empty when `x-amz-date` is sent, which is signed among the `x-amz-*`
    /// headers instead), or the `Expires` parameter.
    pub date_line: String,
}

/// Why a SigV2 request was refused. Messages are shown to clients: they
/// never contain a signature or the string to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV2Error {
    #[error("AWS authorization header is invalid. Expected AwsAccessKeyId:signature")]
    MalformedHeader,
    #[error(
        "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters"
    )]
    MissingQueryParams,
    #[error("a query-string authentication parameter appears more than once")]
    DuplicateQueryParam,
    #[error("Invalid date (should be seconds since epoch): Expires")]
    InvalidExpires,
    #[error("AWS authentication requires a valid Date or x-amz-date header")]
    MissingDate,
    #[error("Request has expired")]
    Expired,
    #[error("The difference between the request time and the current time is too large.")]
    Skewed,
    #[error("Only one auth mechanism allowed; only the AWSAccessKeyId query parameters or the Authorization header should be specified")]
    Ambiguous,
    /// Temporary credentials need a session check this gateway does only
    /// for SigV4.
    #[error("requests signed with temporary credentials (x-amz-security-token) must use Signature Version 4 (AWS4-HMAC-SHA256)")]
    SessionToken,
    #[error("the value of a signed header is not valid UTF-8")]
    InvalidHeaderValue,
    #[error("The request signature we calculated does not match the signature you provided. Check your key and signing method.")]
    SignatureMismatch,
}

// === fold_presigned_query ===

/// A presigned SigV2 URL carries the headers it signed as query parameters
/// (botocore's `HmacV1QueryAuth` moves every `x-amz-*`, `Content-Type` and
/// `Content-MD5` header there). This puts them back: each such parameter
/// becomes a header (a header already sent with the same value is kept
/// once; a different value is added next to it, so the signature no longer
/// matches) and leaves the query. Returns the new URI, having changed
/// `headers`; `None` (and nothing changed) when the request is not a SigV2
/// presigned one or carries nothing to fold.
///
/// Parameters that cannot be headers stay in the query: they are then not
/// signed as the client signed them, and the signature fails.
pub fn fold_presigned_query(uri: &Uri, headers: &mut HeaderMap) -> Option<Uri> {
    let query = uri.query()?;
    if headers.contains_key(AUTHORIZATION) {
        return None;
    }
    let mut presigned = false;
    for piece in query.split('&') {
        let name = piece.split_once('=').map_or(piece, |(n, _)| n);
        match name {
            "AWSAccessKeyId" => presigned = true,
            // SigV4 signs the query as it is: never touch it.
            "X-Amz-Signature" | "X-Amz-Credential" | "X-Amz-Algorithm" => return None,
            _ => {}
        }
    }
    if !presigned {
        return None;
    }
    let mut folded: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let mut kept = String::with_capacity(query.len());
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        match as_header(name, value) {
            Some(header) => folded.push(header),
            None => {
                if !kept.is_empty() {
                    kept.push('&');
                }
                kept.push_str(piece);
            }
        }
    }
    if folded.is_empty() {
        return None;
    }
    let path = uri.path();
    let pq = if kept.is_empty() {
        PathAndQuery::try_from(path)
    } else {
        PathAndQuery::try_from(format!("{path}?{kept}"))
    }
    .ok()?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    let uri = Uri::from_parts(parts).ok()?;
    for (name, value) in folded {
        if !headers.get_all(&name).iter().any(|v| *v == value) {
            headers.append(name, value);
        }
    }
    Some(uri)
}

/// A query parameter that stands for a signed header, as that header.
fn as_header(raw_name: &str, raw_value: &str) -> Option<(HeaderName, HeaderValue)> {
    let name = percent_decode_str(raw_name).decode_utf8().ok()?;
    let lower = name.to_ascii_lowercase();
    if !(lower.starts_with("x-amz-") || lower == "content-type" || lower == "content-md5") {
        return None;
    }
    let value: Vec<u8> = percent_decode_str(raw_value).collect();
    Some((
        HeaderName::from_bytes(lower.as_bytes()).ok()?,
        HeaderValue::from_bytes(&value).ok()?,
    ))
}

// === parse ===

/// Reads the SigV2 authentication a request claims.
///
/// `Ok(None)`: no SigV2 authentication (no `Authorization: AWS …` header,
/// no `AWSAccessKeyId`/`Signature` parameter). `Err`: SigV2 that is
/// malformed, ambiguous or unsupported.
pub fn parse(uri: &Uri, headers: &HeaderMap) -> Result<Option<Auth>, SigV2Error> {
    let query = uri.query().unwrap_or("");
    let access_key = query_param(query, "AWSAccessKeyId")?;
    let signature = query_param(query, "Signature")?;
    let expires = query_param(query, "Expires")?;
    let presigned = access_key.is_some() || signature.is_some();

    let mut authorization = headers.get_all(AUTHORIZATION).iter();
    let header = authorization.next();
    if authorization.next().is_some() {
        return Err(SigV2Error::MalformedHeader);
    }
    let auth = match header {
        Some(value) => {
            let Some(rest) = value.to_str().ok().and_then(|v| v.strip_prefix("AWS ")) else {
                return Ok(None);
            };
            if presigned {
                return Err(SigV2Error::Ambiguous);
            }
            let (access_key, signature) =
                rest.split_once(':').ok_or(SigV2Error::MalformedHeader)?;
            if access_key.is_empty() || signature.is_empty() {
                return Err(SigV2Error::MalformedHeader);
            }
            let (date_line, date) = header_date(headers)?;
            Auth {
                kind: Kind::Header { date },
                access_key: access_key.to_owned(),
                signature: decode_signature(signature)?,
                date_line,
            }
        }
        None if presigned => {
            let (Some(access_key), Some(signature), Some(expires)) =
                (access_key, signature, expires)
            else {
                return Err(SigV2Error::MissingQueryParams);
            };
            if access_key.is_empty() {
                return Err(SigV2Error::MissingQueryParams);
            }
            let at = parse_epoch(&expires).ok_or(SigV2Error::InvalidExpires)?;
            Auth {
                kind: Kind::Presigned { expires: at },
                access_key,
                signature: decode_signature(&signature)?,
                date_line: expires,
            }
        }
        None => return Ok(None),
    };
    let token_param = query.split('&').any(|p| {
        let name = p.split_once('=').map_or(p, |(n, _)| n);
        name.eq_ignore_ascii_case("x-amz-security-token")
    });
    if headers.contains_key("x-amz-security-token") || token_param {
        return Err(SigV2Error::SessionToken);
    }
    Ok(Some(auth))
}

/// The decoded value of a parameter that must not repeat.
fn query_param(query: &str, name: &str) -> Result<Option<String>, SigV2Error> {
    let mut found = None;
    for piece in query.split('&') {
        let (n, v) = piece.split_once('=').unwrap_or((piece, ""));
        if n != name {
            continue;
        }
        if found.is_some() {
            return Err(SigV2Error::DuplicateQueryParam);
        }
        found = Some(percent_decode_str(v).decode_utf8_lossy().into_owned());
    }
    Ok(found)
}

/// Base64 of 20 bytes; anything else cannot match any signature.
fn decode_signature(s: &str) -> Result<[u8; SIGNATURE_LEN], SigV2Error> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| SigV2Error::SignatureMismatch)?;
    bytes.try_into().map_err(|_| SigV2Error::SignatureMismatch)
}

/// The date line and the request time: `x-amz-date` wins over `Date` (and
/// then the date line is empty, as S3 signs it).
fn header_date(headers: &HeaderMap) -> Result<(String, i64), SigV2Error> {
    if let Some(v) = single(headers, "x-amz-date")? {
        let at = parse_http_date(v)
            .or_else(|| parse_amz_date(v))
            .ok_or(SigV2Error::MissingDate)?;
        return Ok((String::new(), at));
    }
    let v = single(headers, "date")?.ok_or(SigV2Error::MissingDate)?;
    let at = parse_http_date(v).ok_or(SigV2Error::MissingDate)?;
    Ok((v.to_owned(), at))
}

fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SigV2Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SigV2Error::MissingDate);
    }
    value
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| SigV2Error::MissingDate)
}

/// Unix seconds, in decimal.
fn parse_epoch(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An RFC 1123 date as HTTP and SigV2 clients send it —
/// `Wed, 03 Dec 2025 15:35:59 GMT`, or with a numeric zone (`+0000`) — in
/// unix seconds. The day name is optional.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = match s.split_once(',') {
        Some((day, rest)) if day.bytes().all(|b| b.is_ascii_alphabetic()) => rest,
        Some(_) => return None,
        None => s,
    };
    let mut fields = s.split_ascii_whitespace();
    let (Some(day), Some(month), Some(year), Some(clock), Some(zone), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return None;
    };
    let number = |s: &str, digits: std::ops::RangeInclusive<usize>| -> Option<u32> {
        (digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month))
        .and_then(|i| u8::try_from(i + 1).ok())?;
    let month = time::Month::try_from(month).ok()?;
    let day = u8::try_from(number(day, 1..=2)?).ok()?;
    let year = i32::try_from(number(year, 4..=4)?).ok()?;
    let mut hms = clock.split(':');
    let (Some(h), Some(m), Some(sec), None) = (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    let (h, m, sec) = (
        u8::try_from(number(h, 2..=2)?).ok()?,
        u8::try_from(number(m, 2..=2)?).ok()?,
        u8::try_from(number(sec, 2..=2)?).ok()?,
    );
    let offset: i64 = match zone {
        "GMT" | "UTC" | "UT" | "Z" => 0,
        z => {
            let (sign, hhmm) = match z.split_at_checked(1)? {
                ("+", rest) => (1, rest),
                ("-", rest) => (-1, rest),
                _ => return None,
            };
            let hhmm = i64::from(number(hhmm, 4..=4)?);
            sign * ((hhmm / 100) * 3600 + (hhmm % 100) * 60)
        }
    };
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(h, m, sec).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp()
            - offset,
    )
}

// === check_time ===

/// Header auth: the request time within ±15 minutes of `now`. Presigned:
/// `now` not past `Expires`. `now` in unix seconds.
pub fn check_time(auth: &Auth, now: i64) -> Result<(), SigV2Error> {
    let now = i128::from(now);
    match auth.kind {
        Kind::Header { date } => {
            if (now - i128::from(date)).abs() > i128::from(MAX_CLOCK_SKEW_SECS) {
                return Err(SigV2Error::Skewed);
            }
        }
        Kind::Presigned { expires } => {
            if now > i128::from(expires) {
                return Err(SigV2Error::Expired);
            }
        }
    }
    Ok(())
}

/// How long from `now` this request's signature stays acceptable to
/// [`check_time`]: a verified signature need not be verified again before.
pub fn valid_for(auth: &Auth, now: i64) -> Duration {
    let until = match auth.kind {
        Kind::Header { date } => i128::from(date) + i128::from(MAX_CLOCK_SKEW_SECS),
        Kind::Presigned { expires } => i128::from(expires),
    };
    let secs = (until - i128::from(now)).clamp(0, i128::from(u32::MAX));
    Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

// === string_to_sign ===

/// The string the client signed:
///
/// ```text
/// METHOD \n Content-MD5 \n Content-Type \n Date-or-Expires \n
/// x-amz-name:value \n …  (every x-amz-* header, sorted, values joined by ',')
/// /bucket/path?sub-resources (sorted)
/// ```
///
/// `virtual_host_bucket`: the bucket the Host header named, prefixed to the
/// path (SigV2 always signs the path with the bucket; the bucket alone as
/// `/bucket/`). The path is signed as sent; sub-resource values decoded.
pub fn string_to_sign(
    auth: &Auth,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    virtual_host_bucket: Option<&str>,
) -> Result<String, SigV2Error> {
    let mut out = String::with_capacity(256);
    out.push_str(method.as_str());
    out.push('\n');
    push_values(&mut out, headers, "content-md5")?;
    out.push('\n');
    push_values(&mut out, headers, "content-type")?;
    out.push('\n');
    out.push_str(&auth.date_line);
    out.push('\n');

    let mut amz: Vec<&str> = headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| n.starts_with("x-amz-"))
        .collect();
    amz.sort_unstable();
    for name in amz {
        out.push_str(name);
        out.push(':');
        push_values(&mut out, headers, name)?;
        out.push('\n');
    }

    let path = uri.path();
    if let Some(bucket) = virtual_host_bucket {
        out.push('/');
        out.push_str(bucket);
    }
    out.push_str(path);
    // A path-style request for the bucket alone signs `/bucket/` (what S3
    // accepts, and botocore signs `/bucket` requests as).
    if virtual_host_bucket.is_none() && path.len() > 1 && !path[1..].contains('/') {
        out.push('/');
    }
    let mut subresources: Vec<(&str, Option<&str>)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        })
        .filter(|(n, _)| SIGNED_SUBRESOURCES.contains(n))
        .collect();
    // Stable: a name given twice keeps its order, as botocore's sort does.
    subresources.sort_by(|a, b| a.0.cmp(b.0));
    for (i, (name, value)) in subresources.into_iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(name);
        if let Some(value) = value {
            out.push('=');
            out.push_str(&percent_decode_str(value).decode_utf8_lossy());
        }
    }
    Ok(out)
}

/// Every value of header `name`, trimmed, joined by ','.
fn push_values(out: &mut String, headers: &HeaderMap, name: &str) -> Result<(), SigV2Error> {
    for (i, value) in headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|_| SigV2Error::InvalidHeaderValue)?;
        out.push_str(value.trim());
    }
    Ok(())
}

// === signing (where the secret lives) ===

/// `HMAC-SHA1(secret, string_to_sign)`.
pub fn sign(secret: &[u8], string_to_sign: &[u8]) -> [u8; SIGNATURE_LEN] {
    // One block exactly (a longer key hashed first, as RFC 2104 says): the
    // key length `Hmac::new` takes without a `Result`.
    let mut block = [0u8; 64];
    if secret.len() > block.len() {
        let digest: [u8; SIGNATURE_LEN] = Sha1::digest(secret).into();
        block[..SIGNATURE_LEN].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    let mut mac = <Hmac<Sha1> as KeyInit>::new(&block.into());
    mac.update(string_to_sign);
    mac.finalize().into_bytes().into()
}

/// Whether `presented` is the signature of `string_to_sign` under
/// `secret`, compared in constant time.
pub fn signature_matches(secret: &[u8], string_to_sign: &[u8], presented: &[u8]) -> bool {
    bool::from(sign(secret, string_to_sign).as_slice().ct_eq(presented))
}

// === impls ===

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("kind", &self.kind)
            .field("access_key", &self.access_key)
            .field("signature", &"<redacted>")
            .field("date_line", &self.date_line)
            .finish()
    }
}

impl Auth {
    pub fn is_presigned(&self) -> bool {
        matches!(self.kind, Kind::Presigned { .. })
    }
}

impl SigV2Error {
    /// The S3 error code a client should see.
    pub fn code(&self) -> S3ErrorCode {
        match self {
            Self::MalformedHeader | Self::DuplicateQueryParam | Self::Ambiguous => {
                S3ErrorCode::InvalidArgument
            }
            Self::SessionToken | Self::InvalidHeaderValue => S3ErrorCode::InvalidRequest,
            Self::MissingQueryParams | Self::InvalidExpires | Self::MissingDate | Self::Expired => {
                S3ErrorCode::AccessDenied
            }
            Self::Skewed => S3ErrorCode::RequestTimeTooSkewed,
            Self::SignatureMismatch => S3ErrorCode::SignatureDoesNotMatch,
        }
    }
}

impl From<SigV2Error> for S3Error {
    fn from(e: SigV2Error) -> Self {
        S3Error::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests;
