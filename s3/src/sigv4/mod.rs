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

use hmac::digest::KeyInit;
use hmac::{Hmac, HmacCore, Mac as _};
use http::header::{HeaderMap, AUTHORIZATION};
use http::{Method, Uri};
use sha2::{Digest as _, Sha256};

use crate::S3ErrorCode;

mod canonical;
mod clock;
mod parse;
mod sign;
#[cfg(test)]
mod tests;
mod verify;

pub use clock::{amz_date_bytes, check_time, format_amz_date, parse_amz_date};
pub use parse::parse;
pub use sign::{InvalidSessionToken, SignError, Signer};
pub use verify::{canonical_request, string_to_sign, verify};

/// A digest in lowercase hex. (`hex::encode` builds its `String` a char at
/// a time, ≈ 30 times slower; this runs once or twice per request.)
pub fn hex_string(bytes: &[u8; 32]) -> String {
    let mut buf = [0u8; 64];
    sign::hex_lower(bytes, &mut buf).to_owned()
}

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

use crate::names::{X_AMZ_CONTENT_SHA256, X_AMZ_DATE};
const TERMINATOR: &str = "aws4_request";

/// A derived SigV4 signing key: `HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")`.
///
/// It is valid for one day, region and service only, which is what makes it
/// safe to cache and to hand to the data plane instead of the secret.
///
/// It also keeps the HMAC already keyed with it: the two pad blocks are
/// compressed once per key, not once per signature, which saves two of the
/// five SHA-256 blocks each request's HMAC would otherwise cost.
#[derive(Clone)]
pub struct SigningKey {
    bytes: [u8; 32],
    /// The two SHA-256 states after the pad blocks (80 bytes; without the
    /// 64-byte buffer a whole `Hmac` carries, as a grant is copied per
    /// request out of a cache front).
    mac: HmacCore<Sha256>,
}

/// The scope a client claims in its credential: `AK/date/region/service/aws4_request`.
///
/// Held as the one string the client sent, with the ends of its parts: the
/// scope line of the string to sign and the signing-key cache's key are
/// slices of it, so a verified request allocates once here, not five times.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialScope {
    /// `AK/YYYYMMDD/region/service/aws4_request`
    credential: String,
    /// Where the date starts: one past the access key's `/`.
    date_at: usize,
    /// Where the region starts and ends (its `/` follows).
    region_at: usize,
    region_end: usize,
}

/// The signed header names, lowercase, as the client listed them
/// (`host;x-amz-content-sha256;x-amz-date`): kept as that one string,
/// which is also the canonical request's signed-headers line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders(String);

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
    pub signed_headers: SignedHeaders,
    /// Never printed by `Debug`.
    pub signature: [u8; 32],
    /// The raw `YYYYMMDDTHHMMSSZ` timestamp that was signed.
    pub amz_date: String,
    /// `amz_date` in unix seconds.
    pub timestamp: i64,
    /// Always [`PayloadMode::Unsigned`] for presigned requests.
    pub payload: PayloadMode,
    /// Header auth: the `x-amz-content-sha256` header as sent, which is
    /// the canonical request's payload line (and, when signed, a header
    /// line), kept so `verify` does not look it up again. `None` for
    /// presigned requests.
    pub content_sha256: Option<http::HeaderValue>,
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
        Self::from_bytes(hmac_sha256(&k_service, TERMINATOR.as_bytes()))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            bytes,
            mac: keyed(&bytes),
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// `HMAC-SHA256(key, string_to_sign)`.
    pub fn sign(&self, string_to_sign: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::from_core(self.mac.clone());
        mac.update(string_to_sign);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

// === impl CredentialScope ===

impl CredentialScope {
    /// The scope of `access_key` for one day (`YYYYMMDD`), region and
    /// service. The parts are taken as given: [`parse`] is what checks a
    /// client's.
    pub fn new(access_key: &str, date: &str, region: &str, service: &str) -> Self {
        let mut credential = String::with_capacity(
            access_key.len() + date.len() + region.len() + service.len() + TERMINATOR.len() + 4,
        );
        for (i, part) in [access_key, date, region, service, TERMINATOR]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                credential.push('/');
            }
            credential.push_str(part);
        }
        Self::with_parts(credential, access_key, date, region)
    }

    /// `credential` (`AK/date/region/service/aws4_request`) with the ends
    /// of its parts, from the lengths of the first three.
    fn with_parts(credential: String, access_key: &str, date: &str, region: &str) -> Self {
        let date_at = access_key.len() + 1;
        let region_at = date_at + date.len() + 1;
        Self {
            credential,
            date_at,
            region_at,
            region_end: region_at + region.len(),
        }
    }

    pub fn access_key(&self) -> &str {
        self.credential.get(..self.date_at - 1).unwrap_or_default()
    }

    /// `YYYYMMDD`
    pub fn date(&self) -> &str {
        self.credential
            .get(self.date_at..self.region_at - 1)
            .unwrap_or_default()
    }

    pub fn region(&self) -> &str {
        self.credential
            .get(self.region_at..self.region_end)
            .unwrap_or_default()
    }

    pub fn service(&self) -> &str {
        self.credential
            .get(self.region_end + 1..self.service_end())
            .unwrap_or_default()
    }

    /// `date/region/service/aws4_request`, the third line of the string to sign.
    pub fn scope(&self) -> &str {
        self.credential.get(self.date_at..).unwrap_or_default()
    }

    /// `AK/date/region/service`: what a signing key is derived for, and the
    /// key it is cached under (access keys never contain `/`).
    pub fn key_id(&self) -> &str {
        self.credential
            .get(..self.service_end())
            .unwrap_or_default()
    }

    /// [`scope`](Self::scope), owned.
    pub fn to_scope_string(&self) -> String {
        self.scope().to_owned()
    }

    fn service_end(&self) -> usize {
        self.credential.len() - TERMINATOR.len() - 1
    }

    /// Parses `AK/YYYYMMDD/region/service/aws4_request`.
    fn parse(credential: &str, presigned: bool) -> Result<Self, VerifyError> {
        let bad = |reason| VerifyError::Malformed { presigned, reason };
        let mut parts = crate::scan::split(credential, b'/');
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
        Ok(Self::with_parts(
            credential.to_owned(),
            access_key,
            date,
            region,
        ))
    }
}

impl fmt::Debug for CredentialScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialScope")
            .field("access_key", &self.access_key())
            .field("date", &self.date())
            .field("region", &self.region())
            .field("service", &self.service())
            .finish()
    }
}

// === impl SignedHeaders ===

impl SignedHeaders {
    /// Checks a `;`-separated list of lowercase header names that includes
    /// `host`.
    pub fn parse(list: &str, presigned: bool) -> Result<Self, VerifyError> {
        let bad = |reason| VerifyError::Malformed { presigned, reason };
        // One pass: every byte a `;` or a visible lowercase character, and
        // no name empty (no `;` first, last or after another).
        let mut previous = b';';
        let valid = list.bytes().all(|b| {
            let ok = if b == b';' {
                previous != b';'
            } else {
                b.is_ascii_graphic() && !b.is_ascii_uppercase()
            };
            previous = b;
            ok
        });
        if !valid || previous == b';' {
            return Err(bad(
                "SignedHeaders must be a ;-separated list of lowercase header names",
            ));
        }
        let has_host = list == "host"
            || list.starts_with("host;")
            || list.ends_with(";host")
            || list.contains(";host;");
        if !has_host {
            return Err(bad("the host header must be signed"));
        }
        Ok(Self(list.to_owned()))
    }

    /// The names, in the client's order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        crate::scan::split(&self.0, b';')
    }

    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|h| h == name)
    }

    /// The list as sent: `host;x-amz-date`.
    pub fn as_str(&self) -> &str {
        &self.0
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
            Self::Sha256(hash) => hex_string(&hash),
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
            .field("content_sha256", &self.content_sha256)
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

// === helpers ===

/// HMAC-SHA256 through the `hmac` crate, infallibly: a key is zero-padded
/// (or, when longer than a block, hashed first, as RFC 2104 says) to exactly
/// one block, the key length `Hmac::new` takes without a `Result`.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::from_core(keyed(key));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SHA256 keyed with `key`, its pad blocks compressed.
fn keyed(key: &[u8]) -> HmacCore<Sha256> {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        let digest: [u8; 32] = Sha256::digest(key).into();
        block[..32].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacCore<Sha256> as KeyInit>::new(&block.into())
}

/// Exactly 64 hex digits (either case) into 32 bytes.
pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s: &[u8; 64] = s.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    // Two digits per byte; a bad digit anywhere sets the high bit of `bad`.
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0x80 == 0).then_some(out)
}

/// The value of each hex digit (either case); 0xff for every other byte.
static HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
