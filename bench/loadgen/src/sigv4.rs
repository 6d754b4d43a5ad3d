//! Just enough SigV4 to pre-sign benchmark requests: header authentication
//! for GET/PUT on keys made of unreserved characters, and the chunk
//! signatures of `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` bodies.
//!
//! Written out by hand (not aws-sigv4, not the gateway's own `s3gate-s3`) so
//! the benchmark does not sign with the code it measures. Both servers in the
//! harness verify every signature, so a mistake here shows up as 403s, which
//! the harness treats as a failed run.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub const STREAMING_SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

/// One access key and the signing key derived from its secret for one day.
#[derive(Clone)]
pub struct Signer {
    pub access_key: String,
    pub region: String,
    pub date: String,
    /// The session token of temporary (STS) keys: sent and signed as
    /// `x-amz-security-token`.
    pub session_token: Option<String>,
    key: [u8; 32],
}

/// What a signed request carries, plus what its chunk signatures chain from.
pub struct Signed {
    pub amz_date: String,
    pub authorization: String,
    pub signature: String,
    pub scope: String,
}

impl Signer {
    pub fn new(access_key: &str, secret: &str, region: &str, amz_date: &str) -> Self {
        let date = amz_date[..8].to_owned();
        let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let k = hmac(&k, region.as_bytes());
        let k = hmac(&k, b"s3");
        let key = hmac(&k, b"aws4_request");
        Self {
            access_key: access_key.to_owned(),
            region: region.to_owned(),
            date,
            session_token: None,
            key,
        }
    }

    pub fn scope(&self) -> String {
        format!("{}/{}/s3/aws4_request", self.date, self.region)
    }

    /// Signs `method path` with the given headers (lower-case names, each
    /// one signed) and payload hash. `path` must already be a valid
    /// canonical URI (the harness only uses unreserved characters and `/`).
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        amz_date: &str,
        headers: &[(&str, &str)],
        payload_hash: &str,
    ) -> Signed {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(token) = &self.session_token {
            all.push(("x-amz-security-token", token));
        }
        all.push(("x-amz-date", amz_date));
        all.push(("x-amz-content-sha256", payload_hash));
        all.sort_by(|a, b| a.0.cmp(b.0));
        let mut creq = String::with_capacity(256);
        creq.push_str(method);
        creq.push('\n');
        creq.push_str(path);
        creq.push_str("\n\n");
        for (n, v) in &all {
            creq.push_str(n);
            creq.push(':');
            creq.push_str(v.trim());
            creq.push('\n');
        }
        creq.push('\n');
        let signed_headers = all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(";");
        creq.push_str(&signed_headers);
        creq.push('\n');
        creq.push_str(payload_hash);
        let scope = self.scope();
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(creq.as_bytes()))
        );
        let signature = hex::encode(hmac(&self.key, sts.as_bytes()));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        );
        Signed {
            amz_date: amz_date.to_owned(),
            authorization,
            signature,
            scope,
        }
    }

    /// The signature of one aws-chunked chunk, chained from `prev`.
    pub fn chunk_signature(
        &self,
        amz_date: &str,
        scope: &str,
        prev: &str,
        chunk_sha256_hex: &str,
    ) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{prev}\n{EMPTY_SHA256}\n{chunk_sha256_hex}"
        );
        hex::encode(hmac(&self.key, sts.as_bytes()))
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // A key of any length is valid for HMAC; `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// `YYYYMMDDTHHMMSSZ` for now (UTC).
pub fn amz_date_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    amz_date(secs)
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (civil-from-days, H. Hinnant).
pub fn amz_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let sod = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400 + 3661), "20000229T010101Z");
    }

    /// The AWS documentation's GetObject example (header auth, Range header).
    #[test]
    fn aws_get_object_example() {
        let s = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "20130524T000000Z",
        );
        let signed = s.sign(
            "GET",
            "/test.txt",
            "20130524T000000Z",
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("range", "bytes=0-9"),
            ],
            EMPTY_SHA256,
        );
        assert_eq!(
            signed.signature,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The AWS documentation's streaming PUT example: seed and first chunk.
    #[test]
    fn aws_streaming_example() {
        let s = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "20130524T000000Z",
        );
        let signed = s.sign(
            "PUT",
            "/examplebucket/chunkObject.txt",
            "20130524T000000Z",
            &[
                ("host", "s3.amazonaws.com"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("content-encoding", "aws-chunked"),
                ("content-length", "66824"),
                ("x-amz-decoded-content-length", "66560"),
            ],
            STREAMING_SIGNED,
        );
        assert_eq!(
            signed.signature,
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
        );
        let chunk = vec![b'a'; 65536];
        let c1 = s.chunk_signature(
            &signed.amz_date,
            &signed.scope,
            &signed.signature,
            &hex::encode(Sha256::digest(&chunk)),
        );
        assert_eq!(
            c1,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
    }
}
