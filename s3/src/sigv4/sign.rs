//! Signing a request for a backend: header authentication, the same
//! canonical form that [`verify`](super::verify) checks.
//!
//! A [`Signer`] holds one backend credential and keeps the signing key of
//! the current day, so a request costs one SHA-256 of its canonical request
//! and one HMAC, not the four HMACs of a key derivation as well.

use std::sync::Mutex;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION};

use super::canonical::{canonical_query, push_trimmed};
use super::*;

/// Headers never signed: the signature's own header, and those a proxy on
/// the way may change (the set aws-sigv4 and the AWS SDKs leave out).
const UNSIGNED_HEADERS: &[&str] = &[
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
];

/// One backend credential, ready to sign with.
pub struct Signer {
    access_key: String,
    secret: String,
    session_token: Option<HeaderValue>,
    region: String,
    service: String,
    /// `/region/service/aws4_request`: the credential scope after its date.
    scope_tail: String,
    /// The signing key of the last day signed for. `try_lock` only: a
    /// request that finds it busy derives its own.
    today: Mutex<Option<([u8; 8], SigningKey)>>,
}

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// A header value is not visible ASCII (SigV4 signs text).
    NonAsciiHeader(HeaderName),
    /// The clock is outside what `x-amz-date` can say.
    Clock,
}

impl Signer {
    /// `session_token`, when set, goes out as `x-amz-security-token` and is
    /// signed (temporary credentials).
    pub fn new(
        access_key: impl Into<String>,
        secret: impl Into<String>,
        session_token: Option<&str>,
        region: impl Into<String>,
        service: impl Into<String>,
    ) -> Result<Self, InvalidSessionToken> {
        let session_token = session_token
            .map(|t| {
                HeaderValue::from_str(t).map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
            })
            .transpose()
            .map_err(|_| InvalidSessionToken)?;
        let (region, service) = (region.into(), service.into());
        let scope_tail = format!("/{region}/{service}/{TERMINATOR}");
        Ok(Self {
            access_key: access_key.into(),
            secret: secret.into(),
            session_token,
            region,
            service,
            scope_tail,
            today: Mutex::new(None),
        })
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Signs a request whose path (`/bucket/key`, already percent-encoded
    /// once, as sent) and query (as sent, without `?`) are given: sets
    /// `x-amz-date`, `x-amz-content-sha256` (`payload`: a hex digest or
    /// one of the `UNSIGNED-PAYLOAD`/`STREAMING-…` markers), the session
    /// token if any, and `Authorization`. Every other header present is
    /// signed (except [`UNSIGNED_HEADERS`]), `host` included, so `headers`
    /// must hold the final `Host`.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &mut HeaderMap,
        payload: &str,
        now_unix: i64,
    ) -> Result<(), SignError> {
        let stamp = amz_date_bytes(now_unix).ok_or(SignError::Clock)?;
        // Digits, `T` and `Z`: ASCII by construction.
        let amz_date = std::str::from_utf8(&stamp).map_err(|_| SignError::Clock)?;
        let mut date = [0u8; 8];
        date.copy_from_slice(&stamp[..8]);
        let date_str = &amz_date[..8];
        headers.insert(
            X_AMZ_DATE,
            HeaderValue::from_bytes(&stamp).map_err(|_| SignError::Clock)?,
        );
        let payload_value = HeaderValue::from_str(payload)
            .map_err(|_| SignError::NonAsciiHeader(X_AMZ_CONTENT_SHA256))?;
        headers.insert(X_AMZ_CONTENT_SHA256, payload_value);
        if let Some(token) = &self.session_token {
            headers.insert(crate::names::X_AMZ_SECURITY_TOKEN, token.clone());
        }

        // Every (name, value) once, sorted by name: a stable sort keeps a
        // name's values in their order, and no name is looked up again.
        let mut entries: Vec<(&HeaderName, &HeaderValue)> = headers
            .iter()
            .filter(|(n, _)| !UNSIGNED_HEADERS.contains(&n.as_str()))
            .collect();
        entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));

        let mut canonical =
            String::with_capacity(256 + path.len() + query.len() + 64 * entries.len());
        canonical.push_str(method);
        canonical.push('\n');
        canonical.push_str(if path.is_empty() { "/" } else { path });
        canonical.push('\n');
        canonical_query(&mut canonical, query, false);
        canonical.push('\n');
        let mut previous: Option<&str> = None;
        for &(header, value) in &entries {
            let name = header.as_str();
            if previous == Some(name) {
                canonical.push(',');
            } else {
                if previous.is_some() {
                    canonical.push('\n');
                }
                canonical.push_str(name);
                canonical.push(':');
            }
            let value = value
                .to_str()
                .map_err(|_| SignError::NonAsciiHeader(header.clone()))?;
            push_trimmed(&mut canonical, value);
            previous = Some(name);
        }
        canonical.push_str("\n\n");
        let signed_at = canonical.len();
        let mut previous: Option<&str> = None;
        for (name, _) in &entries {
            let name = name.as_str();
            if previous == Some(name) {
                continue;
            }
            if previous.is_some() {
                canonical.push(';');
            }
            canonical.push_str(name);
            previous = Some(name);
        }
        let signed_end = canonical.len();
        canonical.push('\n');
        canonical.push_str(payload);

        // The string to sign, written in place: algorithm, timestamp, scope
        // and the canonical request's digest.
        let mut hex_buf = [0u8; 64];
        let mut sts = String::with_capacity(
            ALGORITHM.len() + amz_date.len() + date_str.len() + self.scope_tail.len() + 64 + 3,
        );
        sts.push_str(ALGORITHM);
        sts.push('\n');
        sts.push_str(amz_date);
        sts.push('\n');
        sts.push_str(date_str);
        sts.push_str(&self.scope_tail);
        sts.push('\n');
        sts.push_str(hex_lower(
            &Sha256::digest(canonical.as_bytes()).into(),
            &mut hex_buf,
        ));
        let mac = self.key(date).sign(sts.as_bytes());

        let signed_headers = &canonical[signed_at..signed_end];
        let mut authorization = String::with_capacity(
            ALGORITHM.len()
                + self.access_key.len()
                + date_str.len()
                + self.scope_tail.len()
                + signed_headers.len()
                + 64
                + 40,
        );
        authorization.push_str(ALGORITHM);
        authorization.push_str(" Credential=");
        authorization.push_str(&self.access_key);
        authorization.push('/');
        authorization.push_str(date_str);
        authorization.push_str(&self.scope_tail);
        authorization.push_str(", SignedHeaders=");
        authorization.push_str(signed_headers);
        authorization.push_str(", Signature=");
        authorization.push_str(hex_lower(&mac, &mut hex_buf));
        let mut value = HeaderValue::from_str(&authorization)
            .map_err(|_| SignError::NonAsciiHeader(AUTHORIZATION))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
        Ok(())
    }

    /// The signing key for `date` (`YYYYMMDD`): the cached one, or derived
    /// (and cached, unless another request holds the cache this instant).
    fn key(&self, date: [u8; 8]) -> SigningKey {
        if let Ok(mut today) = self.today.try_lock() {
            if let Some((day, key)) = today.as_ref() {
                if *day == date {
                    return key.clone();
                }
            }
            let key = self.derive(&date);
            *today = Some((date, key.clone()));
            return key;
        }
        self.derive(&date)
    }

    fn derive(&self, date: &[u8; 8]) -> SigningKey {
        SigningKey::derive(
            &self.secret,
            std::str::from_utf8(date).unwrap_or_default(),
            &self.region,
            &self.service,
        )
    }
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xF]];
        i += 1;
    }
    table
};

/// Lower-case hex of a 32-byte digest, written into `buf`: one table load
/// per byte (`hex::encode_to_slice` spends about twice the instructions,
/// and this runs three or four times per forwarded request).
pub(crate) fn hex_lower<'a>(bytes: &[u8; 32], buf: &'a mut [u8; 64]) -> &'a str {
    for (pair, byte) in buf.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
    // Hex digits only: ASCII.
    std::str::from_utf8(buf).unwrap_or_default()
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("secret", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The session token is not a valid header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSessionToken;

impl fmt::Display for InvalidSessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session token is not a valid header value")
    }
}

impl std::error::Error for InvalidSessionToken {}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NonAsciiHeader(name) => write!(
                f,
                "header {name} must be US-ASCII (encode non-ASCII metadata per RFC 2047)"
            ),
            Self::Clock => f.write_str("the clock is outside what x-amz-date can say"),
        }
    }
}

impl std::error::Error for SignError {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn signer(token: Option<&str>) -> Signer {
        Signer::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            token,
            "us-east-1",
            "s3",
        )
        .unwrap()
    }

    /// What the gateway signs, its own verifier accepts: the two share the
    /// canonical form.
    #[test]
    fn a_signed_request_verifies() {
        let now = 1_440_938_160; // 2015-08-30T12:36:00Z
        for token in [None, Some("session-token")] {
            let s = signer(token);
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static("backend.example:9000"));
            headers.insert("x-amz-meta-a", HeaderValue::from_static("  one   two "));
            headers.append("x-amz-meta-b", HeaderValue::from_static("1"));
            headers.append("x-amz-meta-b", HeaderValue::from_static("2"));
            headers.insert("user-agent", HeaderValue::from_static("changes on the way"));
            s.sign(
                "PUT",
                "/bucket/a%20key/%E2%82%AC",
                "partNumber=1&uploadId=x%2By",
                &mut headers,
                EMPTY_SHA256_HEX,
                now,
            )
            .unwrap();
            let uri: Uri =
                "http://backend.example:9000/bucket/a%20key/%E2%82%AC?partNumber=1&uploadId=x%2By"
                    .parse()
                    .unwrap();
            let auth = parse(&Method::PUT, &uri, &headers).unwrap().unwrap();
            check_time(&auth, now + 10).unwrap();
            assert!(!auth.signed_headers.iter().any(|h| h == "user-agent"));
            assert_eq!(
                auth.signed_headers
                    .iter()
                    .any(|h| h == "x-amz-security-token"),
                token.is_some()
            );
            let key = SigningKey::derive(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830",
                "us-east-1",
                "s3",
            );
            verify(&auth, &Method::PUT, &uri, &headers, &key).unwrap();
            // Any change to what was signed breaks it.
            headers.insert("x-amz-meta-a", HeaderValue::from_static("one two three"));
            assert_eq!(
                verify(&auth, &Method::PUT, &uri, &headers, &key),
                Err(VerifyError::SignatureMismatch)
            );
        }
    }

    #[test]
    fn the_key_follows_the_day() {
        let s = signer(None);
        let sign_at = |now| {
            let mut headers = HeaderMap::new();
            headers.insert("host", HeaderValue::from_static("h"));
            s.sign("GET", "/b/k", "", &mut headers, UNSIGNED_PAYLOAD, now)
                .unwrap();
            headers
        };
        let day1 = sign_at(1_440_938_160);
        let day2 = sign_at(1_440_938_160 + 86_400);
        let credential = |h: &HeaderMap| h.get(AUTHORIZATION).unwrap().to_str().unwrap().to_owned();
        assert!(credential(&day1).contains("/20150830/us-east-1/s3/aws4_request"));
        assert!(credential(&day2).contains("/20150831/us-east-1/s3/aws4_request"));
        // Day 2 was signed with day 2's key, not the cached one of day 1.
        let uri: Uri = "http://h/b/k".parse().unwrap();
        let auth = parse(&Method::GET, &uri, &day2).unwrap().unwrap();
        let key = SigningKey::derive(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150831",
            "us-east-1",
            "s3",
        );
        verify(&auth, &Method::GET, &uri, &day2, &key).unwrap();
    }

    #[test]
    fn non_ascii_values_are_refused_and_secrets_are_not_shown() {
        let s = signer(Some("tok-secret"));
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h"));
        headers.insert(
            "x-amz-meta-n",
            HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        );
        assert!(matches!(
            s.sign(
                "GET",
                "/b/k",
                "",
                &mut headers,
                UNSIGNED_PAYLOAD,
                1_440_938_160
            ),
            Err(SignError::NonAsciiHeader(_))
        ));
        let debug = format!("{s:?}");
        assert!(
            !debug.contains("wJalr") && !debug.contains("tok-secret"),
            "{debug}"
        );
    }
}
