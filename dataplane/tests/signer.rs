//! The backend signer (`s3gate_s3::sigv4::Signer`) against aws-sigv4, the
//! signer the gateway used before and the AWS SDKs' own: for the requests
//! the forward stage builds (strictly encoded paths and queries, S3 headers,
//! every payload marker, with and without a session token), both must
//! produce the same `Authorization` header, byte for byte. The e2e suite
//! checks the same signatures once more against s3s-fs, a third
//! implementation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use s3gate_s3::request::{encode_component, encode_key};
use s3gate_s3::sigv4::{self, Signer};

const AK: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

struct Case<'a> {
    method: &'a str,
    host: &'a str,
    path: String,
    query: String,
    headers: Vec<(&'a str, String)>,
    payload: &'a str,
    token: Option<&'a str>,
    region: &'a str,
    now: i64,
}

fn with_aws_sigv4(c: &Case) -> String {
    let mut uri = format!("http://{}{}", c.host, c.path);
    if !c.query.is_empty() {
        uri.push('?');
        uri.push_str(&c.query);
    }
    let mut pairs: Vec<(&str, &str)> = vec![("host", c.host)];
    pairs.extend(c.headers.iter().map(|(n, v)| (*n, v.as_str())));
    let body = match c.payload {
        sigv4::UNSIGNED_PAYLOAD => SignableBody::UnsignedPayload,
        sigv4::STREAMING_UNSIGNED_TRAILER => SignableBody::StreamingUnsignedPayloadTrailer,
        hex => SignableBody::Precomputed(hex.to_owned()),
    };
    let signable = SignableRequest::new(c.method, uri.as_str(), pairs.into_iter(), body).unwrap();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let identity: Identity =
        Credentials::new(AK, SECRET, c.token.map(str::to_owned), None, "t").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(c.region)
        .name("s3")
        .time(UNIX_EPOCH + Duration::from_secs(u64::try_from(c.now).unwrap()))
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::builder().uri(uri.as_str()).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request.headers()["authorization"]
        .to_str()
        .unwrap()
        .to_owned()
}

fn with_signer(c: &Case) -> (String, HeaderMap) {
    let signer = Signer::new(AK, SECRET, c.token, c.region, "s3").unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_str(c.host).unwrap());
    for (n, v) in &c.headers {
        headers.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    signer
        .sign(c.method, &c.path, &c.query, &mut headers, c.payload, c.now)
        .unwrap();
    let auth = headers["authorization"].to_str().unwrap().to_owned();
    (auth, headers)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn the_same_signature_as_aws_sigv4_for_the_requests_the_gateway_sends() {
    let cases = [
        Case {
            method: "GET",
            host: "127.0.0.1:9000",
            path: "/data-prod/small/1".into(),
            query: String::new(),
            headers: vec![],
            payload: sigv4::UNSIGNED_PAYLOAD,
            token: None,
            region: "us-east-1",
            now: now(),
        },
        Case {
            method: "PUT",
            host: "bucket.s3.eu-de.cloud-object-storage.appdomain.cloud",
            path: format!("/{}", encode_key("dir/a key+plus/€uro/~tilde*star!(x)")),
            query: format!("partNumber=3&uploadId={}", encode_component("id+/=x y")),
            headers: vec![
                ("content-length", "12".into()),
                ("content-type", "text/plain; charset=utf-8".into()),
                ("x-amz-meta-note", "  several   spaces  here ".into()),
                ("x-amz-meta-multi", "one".into()),
                ("x-amz-meta-multi", "two".into()),
                ("user-agent", "aws-cli/2".into()),
                ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==".into()),
            ],
            payload: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            token: Some("FwoGZXIvYXdzEJr//////////wEaDOp+token/with+plus=="),
            region: "eu-de",
            now: 1_700_000_000,
        },
        Case {
            method: "GET",
            host: "minio:9000",
            path: "/b".into(),
            query: format!(
                "list-type=2&prefix={}&delimiter=%2F&max-keys=1000&encoding-type=url",
                encode_component("päth/with spaces&amp=")
            ),
            headers: vec![("range", "bytes=0-1023".into())],
            payload: sigv4::UNSIGNED_PAYLOAD,
            token: None,
            region: "us-west-2",
            now: 1_440_938_160,
        },
        Case {
            method: "PUT",
            host: "127.0.0.1:9000",
            path: "/b/streamed".into(),
            query: "uploads".into(),
            headers: vec![
                ("content-encoding", "aws-chunked".into()),
                ("x-amz-decoded-content-length", "66560".into()),
                ("x-amz-trailer", "x-amz-checksum-crc32".into()),
            ],
            payload: sigv4::STREAMING_UNSIGNED_TRAILER,
            token: None,
            region: "us-east-1",
            now: 1_440_938_160,
        },
        Case {
            method: "DELETE",
            host: "127.0.0.1:9000",
            path: "/".into(),
            query: String::new(),
            headers: vec![],
            payload: sigv4::EMPTY_SHA256_HEX,
            token: None,
            region: "us-east-1",
            now: 1_440_938_160,
        },
    ];
    for c in &cases {
        let (ours, headers) = with_signer(c);
        assert_eq!(
            ours,
            with_aws_sigv4(c),
            "{} {}?{}",
            c.method,
            c.path,
            c.query
        );
        assert_eq!(headers["x-amz-content-sha256"], c.payload);
        assert_eq!(
            headers
                .get("x-amz-security-token")
                .map(|v| v.to_str().unwrap()),
            c.token
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_same_signature_as_aws_sigv4_for_any_key_query_and_metadata(
        key in "[ -~\u{a0}-\u{2fff}]{1,40}",
        prefix in "[ -~\u{a0}-\u{2fff}]{0,20}",
        meta in "[!-~]([ !-~]{0,30}[!-~])?",
        now in 0i64..4_000_000_000,
        token in proptest::option::of("[A-Za-z0-9+/=]{16,64}"),
    ) {
        let c = Case {
            method: "GET",
            host: "127.0.0.1:9000",
            path: format!("/bucket/{}", encode_key(&key)),
            query: format!("prefix={}&list-type=2", encode_component(&prefix)),
            headers: vec![("x-amz-meta-m", meta.clone())],
            payload: sigv4::UNSIGNED_PAYLOAD,
            token: token.as_deref(),
            region: "us-east-1",
            now,
        };
        prop_assert_eq!(with_signer(&c).0, with_aws_sigv4(&c));
    }
}
