//! S3's header names as `HeaderName` constants.
//!
//! A lookup by `&str` parses and validates the name on every call; these are
//! built at compile time, so a lookup by one of them only hashes it. (A
//! `HeaderName::from_static` call outside a `const` runs its check each time
//! too.)

use http::HeaderName;

pub const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
pub const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
pub const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
pub const X_AMZ_COPY_SOURCE: HeaderName = HeaderName::from_static("x-amz-copy-source");
pub const X_AMZ_DECODED_CONTENT_LENGTH: HeaderName =
    HeaderName::from_static("x-amz-decoded-content-length");
pub const X_AMZ_TRAILER: HeaderName = HeaderName::from_static("x-amz-trailer");
pub const X_AMZ_REQUEST_ID: HeaderName = HeaderName::from_static("x-amz-request-id");
pub const X_AMZ_ID_2: HeaderName = HeaderName::from_static("x-amz-id-2");
pub const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");
/// IBM COS: the service instance a bucket is created in or listed for.
pub const IBM_SERVICE_INSTANCE_ID: HeaderName = HeaderName::from_static("ibm-service-instance-id");

/// S3's own names, by length, for [`from_bytes`].
const KNOWN: [HeaderName; 8] = [
    X_AMZ_DATE,
    X_AMZ_ID_2,
    X_AMZ_TRAILER,
    X_AMZ_REQUEST_ID,
    X_AMZ_COPY_SOURCE,
    X_AMZ_CONTENT_SHA256,
    X_AMZ_SECURITY_TOKEN,
    X_AMZ_DECODED_CONTENT_LENGTH,
];

/// A header name read off the wire, as `HeaderName::from_bytes` makes it;
/// but S3's own names (`x-amz-date`, `x-amz-content-sha256`, ...) in any
/// case come from the constants above, without the allocation and copy an
/// unknown name costs. (Standard names never allocate.)
pub fn from_bytes(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if raw.len() >= 10 && raw[..6].eq_ignore_ascii_case(b"x-amz-") {
        for known in &KNOWN {
            if known.as_str().len() == raw.len()
                && raw.eq_ignore_ascii_case(known.as_str().as_bytes())
            {
                return Ok(known.clone());
            }
        }
    }
    HeaderName::from_bytes(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_their_lowercase_text() {
        for (name, text) in [
            (X_AMZ_DATE, "x-amz-date"),
            (X_AMZ_CONTENT_SHA256, "x-amz-content-sha256"),
            (X_AMZ_SECURITY_TOKEN, "x-amz-security-token"),
            (X_AMZ_COPY_SOURCE, "x-amz-copy-source"),
            (X_AMZ_DECODED_CONTENT_LENGTH, "x-amz-decoded-content-length"),
            (X_AMZ_TRAILER, "x-amz-trailer"),
            (X_AMZ_REQUEST_ID, "x-amz-request-id"),
            (X_AMZ_ID_2, "x-amz-id-2"),
            (CONTENT_MD5, "content-md5"),
            (IBM_SERVICE_INSTANCE_ID, "ibm-service-instance-id"),
        ] {
            assert_eq!(name, HeaderName::from_bytes(text.as_bytes()).unwrap());
            let mut h = http::HeaderMap::new();
            h.insert(text.parse::<HeaderName>().unwrap(), "v".parse().unwrap());
            assert!(h.contains_key(&name), "{text}");
            let upper = text.to_ascii_uppercase();
            for spelling in [text, upper.as_str()] {
                let parsed = from_bytes(spelling.as_bytes()).unwrap();
                assert_eq!(parsed, name, "{spelling}");
                assert_eq!(parsed.as_str(), text);
            }
        }
        assert_eq!(
            from_bytes(b"x-amz-meta-a").unwrap().as_str(),
            "x-amz-meta-a"
        );
        assert_eq!(
            from_bytes(b"Content-Type").unwrap(),
            http::header::CONTENT_TYPE
        );
        assert!(from_bytes(b"x-amz-d\xe4te").is_err());
        assert!(from_bytes(b"").is_err());
    }
}
