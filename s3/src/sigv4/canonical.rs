//! S3's flavour of SigV4 canonicalization: URI, query and header values.

use super::*;

// === canonicalization ===

/// Unreserved characters in the SigV4 sense: `A-Z a-z 0-9 - . _ ~`.
pub(super) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

pub(super) fn push_encoded(out: &mut String, bytes: &[u8], keep_slash: bool) {
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

pub(super) fn percent_decode(s: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(s).collect()
}

/// S3 encodes the path once: decode what the client sent, re-encode strictly.
pub(super) fn canonical_uri(out: &mut String, path: &str) {
    if path.is_empty() {
        out.push('/');
        return;
    }
    if path.contains('%') {
        push_encoded(out, &percent_decode(path), true);
    } else {
        // Nothing to decode (most paths): encoded as it is, without
        // collecting a decoded copy first.
        push_encoded(out, path.as_bytes(), true);
    }
}

pub(super) fn canonical_query(out: &mut String, query: &str, presigned: bool) {
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

pub(super) fn canonical_header_value(
    out: &mut String,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), VerifyError> {
    // The names every request signs are looked up without parsing them.
    let values = match name {
        "host" => headers.get_all(http::header::HOST),
        "x-amz-date" => headers.get_all(crate::names::X_AMZ_DATE),
        "x-amz-content-sha256" => headers.get_all(crate::names::X_AMZ_CONTENT_SHA256),
        _ => headers.get_all(name),
    };
    let mut values = values.iter().peekable();
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
pub(super) fn push_trimmed(out: &mut String, value: &str) {
    if !crate::scan::has_blank(value.as_bytes()) {
        out.push_str(value);
        return;
    }
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
pub(super) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(super) fn parse(query: &str) -> Self {
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

    pub(super) fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    pub(super) fn count(&self, name: &str) -> usize {
        self.0.iter().filter(|(n, _)| n == name).count()
    }

    /// A parameter that must appear exactly once.
    pub(super) fn required(&self, name: &'static str) -> Result<String, VerifyError> {
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
