//! SigV2 against known vectors: two from S3's own documentation (the
//! "Authenticating requests (AWS signature version 2)" examples), the rest
//! computed once with botocore 1.43's `HmacV1Auth` / `HmacV1QueryAuth`
//! (the signers behind boto3's `signature_version='s3'` and its default
//! `generate_presigned_url`), with access key `AKSIGV2TEST` and secret
//! `sigv2/secret+key=` (and, where the client signs another path than the
//! URL's, the `auth_path` botocore signs). The expected strings and
//! signatures are pasted data, not computed here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const AK: &str = "AKSIGV2TEST";
const SECRET: &str = "sigv2/secret+key=";
const DATE: &str = "Wed, 03 Dec 2025 15:35:59 GMT";
/// `DATE` in unix seconds.
const DATE_UNIX: i64 = 1_764_776_159;

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// `(name, value)` headers of a test request.
type Headers<'a> = &'a [(&'a str, &'a str)];
/// Method, target, headers, virtual-host bucket, string to sign, signature.
type Vector<'a> = (
    &'a str,
    &'a str,
    Headers<'a>,
    Option<&'a str>,
    &'a str,
    &'a str,
);

fn head(method: &str, target: &str, headers: &[(&str, &str)]) -> (Method, Uri, HeaderMap) {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (method.parse().unwrap(), target.parse().unwrap(), map)
}

/// Parses, rebuilds the string to sign and checks it and the signature.
fn check(
    (method, uri, headers): (Method, Uri, HeaderMap),
    vhost: Option<&str>,
    secret: &str,
    want_sts: &str,
    want_sig: &str,
) {
    let auth = parse(&uri, &headers).unwrap().expect("a SigV2 request");
    let sts = string_to_sign(&auth, &method, &uri, &headers, vhost).unwrap();
    assert_eq!(sts, want_sts);
    assert_eq!(auth.signature.to_vec(), b64(want_sig));
    assert_eq!(
        sign(secret.as_bytes(), sts.as_bytes()).to_vec(),
        b64(want_sig)
    );
    assert!(signature_matches(
        secret.as_bytes(),
        sts.as_bytes(),
        &auth.signature
    ));
    assert!(!signature_matches(
        b"another secret",
        sts.as_bytes(),
        &auth.signature
    ));
}

fn signed(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    sig: &str,
) -> (Method, Uri, HeaderMap) {
    let auth = format!("AWS {AK}:{sig}");
    let mut all = vec![("Date", DATE), ("Authorization", auth.as_str())];
    all.extend_from_slice(headers);
    head(method, target, &all)
}

#[test]
fn s3_documentation_examples() {
    const DOC_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    // Object GET, virtual-hosted.
    check(
        head(
            "GET",
            "/photos/puppy.jpg",
            &[
                ("Host", "johnsmith.s3.amazonaws.com"),
                ("Date", "Tue, 27 Mar 2007 19:36:42 +0000"),
                (
                    "Authorization",
                    "AWS AKIAIOSFODNN7EXAMPLE:bWq2s1WEIj+Ydj0vQ697zp+IXMU=",
                ),
            ],
        ),
        Some("johnsmith"),
        DOC_SECRET,
        "GET\n\n\nTue, 27 Mar 2007 19:36:42 +0000\n/johnsmith/photos/puppy.jpg",
        "bWq2s1WEIj+Ydj0vQ697zp+IXMU=",
    );
    // Upload: repeated x-amz-meta headers join with ',', names lower-case
    // and sorted, Content-Disposition and Content-Encoding not signed.
    check(
        head(
            "PUT",
            "/db-backup.dat.gz",
            &[
                ("Host", "static.johnsmith.net:8080"),
                ("Date", "Tue, 27 Mar 2007 21:06:08 +0000"),
                ("x-amz-acl", "public-read"),
                ("content-type", "application/x-download"),
                ("Content-MD5", "4gJE4saaMU4BqNR0kLY+lw=="),
                ("X-Amz-Meta-ReviewedBy", "joe@johnsmith.net"),
                ("X-Amz-Meta-ReviewedBy", "jane@johnsmith.net"),
                ("X-Amz-Meta-FileChecksum", "0x02661779"),
                ("X-Amz-Meta-ChecksumAlgorithm", "crc32"),
                ("Content-Disposition", "attachment; filename=database.dat"),
                ("Content-Encoding", "gzip"),
                ("Content-Length", "5913339"),
                (
                    "Authorization",
                    "AWS AKIAIOSFODNN7EXAMPLE:ilyl83RwaSoYIEdixDQcA4OnAnc=",
                ),
            ],
        ),
        Some("static.johnsmith.net"),
        DOC_SECRET,
        "PUT\n4gJE4saaMU4BqNR0kLY+lw==\napplication/x-download\nTue, 27 Mar 2007 21:06:08 +0000\n\
         x-amz-acl:public-read\nx-amz-meta-checksumalgorithm:crc32\nx-amz-meta-filechecksum:0x02661779\n\
         x-amz-meta-reviewedby:joe@johnsmith.net,jane@johnsmith.net\n/static.johnsmith.net/db-backup.dat.gz",
        "ilyl83RwaSoYIEdixDQcA4OnAnc=",
    );
}

#[test]
fn x_amz_date_replaces_the_date_line() {
    // S3's rule (documented with the DELETE example): with x-amz-date, the
    // Date line is empty and x-amz-date is signed among the x-amz-* headers.
    // Signature computed with Python's hmac over the string below.
    check(
        head(
            "DELETE",
            "/johnsmith/photos/puppy.jpg",
            &[
                ("Date", "Tue, 27 Mar 2007 21:20:27 +0000"),
                ("x-amz-date", "Tue, 27 Mar 2007 21:20:26 +0000"),
                (
                    "Authorization",
                    "AWS AKIAIOSFODNN7EXAMPLE:R4dJ53KECjStyBO5iTBJZ4XVOaI=",
                ),
            ],
        ),
        None,
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "DELETE\n\n\n\nx-amz-date:Tue, 27 Mar 2007 21:20:26 +0000\n/johnsmith/photos/puppy.jpg",
        "R4dJ53KECjStyBO5iTBJZ4XVOaI=",
    );
    let (_, uri, headers) = head(
        "GET",
        "/b/k",
        &[
            ("x-amz-date", "20251203T153559Z"),
            ("Authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
        ],
    );
    let auth = parse(&uri, &headers).unwrap().unwrap();
    assert_eq!(auth.kind, Kind::Header { date: DATE_UNIX });
    assert_eq!(auth.date_line, "");
}

#[test]
fn botocore_header_vectors() {
    let cases: &[Vector] = &[
        (
            "GET",
            "/data/a%20b/c.txt",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/a%20b/c.txt",
            "P5VwPS0mSZRN2sDt9N936o9u76s=",
        ),
        (
            "PUT",
            "/data/k",
            &[
                ("Content-Type", "text/plain"),
                ("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
                ("x-amz-meta-Foo", " bar "),
                ("X-Amz-Acl", "private"),
            ],
            None,
            "PUT\n1B2M2Y8AsgTpgAmY7PhCfg==\ntext/plain\nWed, 03 Dec 2025 15:35:59 GMT\n\
             x-amz-acl:private\nx-amz-meta-foo:bar\n/data/k",
            "2yceUZTsg4C1y5vEG6NgWPK2GMM=",
        ),
        (
            "GET",
            "/data/k?versionId=v%2B1&response-content-type=text%2Fplain&prefix=x",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/k?response-content-type=text/plain&versionId=v+1",
            "PLIUOfuH9oN3dPtsNv6NQawPGzk=",
        ),
        (
            "PUT",
            "/data/k?uploadId=u1&partNumber=2",
            &[],
            None,
            "PUT\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/k?partNumber=2&uploadId=u1",
            "e130luFevLm4sdhPuXHqrwGXLlM=",
        ),
        // The bucket alone, path-style: botocore signs `/data/` (its
        // authPath), as S3 wants.
        (
            "GET",
            "/data?acl",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/?acl",
            "JtZEIwB/ZkKW1LB6SHsjlvfk2mI=",
        ),
        (
            "GET",
            "/data?list-type=2&prefix=a%2F",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/",
            "52HXtjAe2Uv/4qA3IaFq0gJc8/g=",
        ),
        (
            "GET",
            "/data/?list-type=2&prefix=a%2F&delimiter=%2F",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/",
            "52HXtjAe2Uv/4qA3IaFq0gJc8/g=",
        ),
        (
            "GET",
            "/k%2Bx",
            &[("Host", "data.s3.localhost:9000")],
            Some("data"),
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/k%2Bx",
            "lSAqxoKxz5sd5H6UerS9x2+rkjg=",
        ),
        (
            "GET",
            "/",
            &[],
            None,
            "GET\n\n\nWed, 03 Dec 2025 15:35:59 GMT\n/",
            "tRM/eClUhi0Qp8EhcLsBGQi+aU0=",
        ),
        (
            "POST",
            "/data?delete",
            &[("Content-MD5", "abc==")],
            None,
            "POST\nabc==\n\nWed, 03 Dec 2025 15:35:59 GMT\n/data/?delete",
            "1g+OovpW9tBcYGfzBUnmG3233UA=",
        ),
    ];
    for (method, target, headers, vhost, sts, sig) in cases {
        check(
            signed(method, target, headers, sig),
            *vhost,
            SECRET,
            sts,
            sig,
        );
        let auth = parse(
            &target.parse().unwrap(),
            &signed(method, target, headers, sig).2,
        )
        .unwrap()
        .unwrap();
        assert_eq!(auth.access_key, AK);
        assert_eq!(auth.kind, Kind::Header { date: DATE_UNIX });
        assert_eq!(auth.date_line, DATE);
    }
}

#[test]
fn botocore_presigned_vectors() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "GET",
            "/data/a%20b/c.txt?AWSAccessKeyId=AKSIGV2TEST&Signature=4urDmbvCz1w8W21HPltgwsdvcSo%3D&Expires=1764776159",
            "GET\n\n\n1764776159\n/data/a%20b/c.txt",
            "4urDmbvCz1w8W21HPltgwsdvcSo=",
        ),
        // Headers botocore moved into the query come back as headers.
        (
            "PUT",
            "/data/k?AWSAccessKeyId=AKSIGV2TEST&Signature=j5haYx8%2Bqq1AnGnkWCDrVUWLFW0%3D&content-type=text%2Fplain\
             &x-amz-meta-foo=bar&x-amz-acl=public-read&Expires=1764776159",
            "PUT\n\ntext/plain\n1764776159\nx-amz-acl:public-read\nx-amz-meta-foo:bar\n/data/k",
            "j5haYx8+qq1AnGnkWCDrVUWLFW0=",
        ),
        (
            "GET",
            "/data/k?response-content-disposition=attachment%3B%20filename%3D%22x.txt%22\
             &AWSAccessKeyId=AKSIGV2TEST&Signature=VkjGXYy%2BQA1suMeIQfnLzTfHPKk%3D&Expires=1764776159",
            "GET\n\n\n1764776159\n/data/k?response-content-disposition=attachment; filename=\"x.txt\"",
            "VkjGXYy+QA1suMeIQfnLzTfHPKk=",
        ),
    ];
    for (method, target, sts, sig) in cases {
        let (method, uri, mut headers) = head(method, target, &[]);
        let uri = fold_presigned_query(&uri, &mut headers).unwrap_or(uri);
        let auth = parse(&uri, &headers).unwrap().unwrap();
        assert_eq!(auth.kind, Kind::Presigned { expires: DATE_UNIX });
        assert_eq!(auth.access_key, AK);
        check((method, uri, headers), None, SECRET, sts, sig);
    }
}

#[test]
fn folding_moves_signed_parameters_to_headers() {
    let (_, uri, mut headers) = head(
        "PUT",
        "/b/k?AWSAccessKeyId=AK&Signature=s&content-type=text%2Fplain&X-Amz-Meta-A=1%202&uploadId=u&Expires=9",
        &[("content-type", "text/plain")],
    );
    let folded = fold_presigned_query(&uri, &mut headers).unwrap();
    assert_eq!(folded.path(), "/b/k");
    assert_eq!(
        folded.query(),
        Some("AWSAccessKeyId=AK&Signature=s&uploadId=u&Expires=9")
    );
    // the same value sent both ways is one header; the metadata decoded
    assert_eq!(headers.get_all("content-type").iter().count(), 1);
    assert_eq!(headers["x-amz-meta-a"], "1 2");

    // a different header value stays next to the folded one: the string to
    // sign then no longer matches what was signed
    let (_, uri, mut headers) = head(
        "PUT",
        "/b/k?AWSAccessKeyId=AK&Signature=s&x-amz-acl=private&Expires=9",
        &[("x-amz-acl", "public-read")],
    );
    fold_presigned_query(&uri, &mut headers).unwrap();
    let acl: Vec<_> = headers.get_all("x-amz-acl").iter().collect();
    assert_eq!(acl, ["public-read", "private"]);

    // not SigV2 presigned, or SigV4, or header auth: nothing changes
    for (target, extra) in [
        ("/b/k?x-amz-acl=private", None),
        (
            "/b/k?AWSAccessKeyId=AK&X-Amz-Signature=00&x-amz-acl=private",
            None,
        ),
        (
            "/b/k?AWSAccessKeyId=AK&x-amz-acl=private",
            Some(("authorization", "AWS AK:x")),
        ),
        ("/b/k?AWSAccessKeyId=AK&Signature=s&Expires=9", None),
    ] {
        let (_, uri, mut headers) = head("GET", target, extra.as_slice());
        let before = headers.clone();
        assert!(
            fold_presigned_query(&uri, &mut headers).is_none(),
            "{target}"
        );
        assert_eq!(headers, before);
    }
}

#[test]
fn not_sigv2() {
    for (target, headers) in [
        ("/b/k", vec![]),
        ("/b/k?prefix=a", vec![]),
        (
            "/b/k",
            vec![("authorization", "AWS4-HMAC-SHA256 Credential=AK/…")],
        ),
        ("/b/k", vec![("authorization", "Bearer eyJ")]),
    ] {
        let (_, uri, headers) = head("GET", target, &headers);
        assert!(parse(&uri, &headers).unwrap().is_none(), "{target}");
    }
}

#[test]
fn refusals() {
    use SigV2Error::*;
    let cases: &[(&str, Headers, SigV2Error)] = &[
        ("/b/k", &[("authorization", "AWS AKnocolon")], MalformedHeader),
        ("/b/k", &[("authorization", "AWS :c2ln")], MalformedHeader),
        ("/b/k", &[("authorization", "AWS AK:")], MalformedHeader),
        (
            "/b/k",
            &[
                ("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
                ("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
            ],
            MalformedHeader,
        ),
        (
            "/b/k",
            &[("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s=")],
            MissingDate,
        ),
        (
            "/b/k",
            &[
                ("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
                ("date", "yesterday"),
            ],
            MissingDate,
        ),
        (
            "/b/k",
            &[("authorization", "AWS AK:bm90IHR3ZW50eQ=="), ("date", DATE)],
            SignatureMismatch,
        ),
        (
            "/b/k",
            &[("authorization", "AWS AK:!!!"), ("date", DATE)],
            SignatureMismatch,
        ),
        (
            "/b/k?AWSAccessKeyId=AK",
            &[("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="), ("date", DATE)],
            Ambiguous,
        ),
        (
            "/b/k",
            &[
                ("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
                ("date", DATE),
                ("x-amz-security-token", "tok"),
            ],
            SessionToken,
        ),
        ("/b/k?AWSAccessKeyId=AK&Signature=x", &[], MissingQueryParams),
        ("/b/k?Signature=x&Expires=1", &[], MissingQueryParams),
        (
            "/b/k?AWSAccessKeyId=&Signature=x&Expires=1",
            &[],
            MissingQueryParams,
        ),
        (
            "/b/k?AWSAccessKeyId=AK&Signature=P5VwPS0mSZRN2sDt9N936o9u76s%3D&Expires=soon",
            &[],
            InvalidExpires,
        ),
        (
            "/b/k?AWSAccessKeyId=AK&AWSAccessKeyId=BK&Signature=x&Expires=1",
            &[],
            DuplicateQueryParam,
        ),
        (
            "/b/k?AWSAccessKeyId=AK&Signature=P5VwPS0mSZRN2sDt9N936o9u76s%3D&Expires=1&X-Amz-Security-Token=t",
            &[],
            SessionToken,
        ),
    ];
    for (target, headers, want) in cases {
        let (_, uri, headers) = head("GET", target, headers);
        assert_eq!(
            parse(&uri, &headers).unwrap_err(),
            *want,
            "{target} {headers:?}"
        );
    }
    // every refusal is a 400 or a 403, never a 5xx
    for e in [
        MalformedHeader,
        MissingQueryParams,
        DuplicateQueryParam,
        InvalidExpires,
        MissingDate,
        Expired,
        Skewed,
        Ambiguous,
        SessionToken,
        InvalidHeaderValue,
        SignatureMismatch,
    ] {
        let status = e.code().status().as_u16();
        assert!(status == 400 || status == 403, "{e:?} → {status}");
    }
    assert_eq!(Expired.code(), S3ErrorCode::AccessDenied);
    assert_eq!(SignatureMismatch.code(), S3ErrorCode::SignatureDoesNotMatch);
}

#[test]
fn time_checks() {
    let header = |date| Auth {
        kind: Kind::Header { date },
        access_key: AK.into(),
        signature: [0; SIGNATURE_LEN],
        date_line: String::new(),
    };
    let presigned = |expires| Auth {
        kind: Kind::Presigned { expires },
        ..header(0)
    };
    let now = DATE_UNIX;
    assert_eq!(check_time(&header(now - 900), now), Ok(()));
    assert_eq!(check_time(&header(now + 900), now), Ok(()));
    assert_eq!(check_time(&header(now - 901), now), Err(SigV2Error::Skewed));
    assert_eq!(check_time(&header(now + 901), now), Err(SigV2Error::Skewed));
    assert_eq!(check_time(&header(i64::MIN), now), Err(SigV2Error::Skewed));
    assert_eq!(check_time(&presigned(now), now), Ok(()));
    assert_eq!(
        check_time(&presigned(now - 1), now),
        Err(SigV2Error::Expired)
    );
    // a verification is reusable until the request would fail check_time
    assert_eq!(
        valid_for(&presigned(now + 300), now),
        Duration::from_secs(300)
    );
    assert_eq!(valid_for(&presigned(now - 5), now), Duration::ZERO);
    assert_eq!(valid_for(&header(now - 100), now), Duration::from_secs(800));
    assert_eq!(
        valid_for(&presigned(i64::MAX), now),
        Duration::from_secs(u64::from(u32::MAX))
    );
}

#[test]
fn http_dates() {
    for (s, want) in [
        ("Wed, 03 Dec 2025 15:35:59 GMT", Some(DATE_UNIX)),
        ("03 Dec 2025 15:35:59 GMT", Some(DATE_UNIX)),
        ("Wed, 3 Dec 2025 15:35:59 UTC", Some(DATE_UNIX)),
        ("Wed, 03 Dec 2025 16:35:59 +0100", Some(DATE_UNIX)),
        ("Wed, 03 Dec 2025 14:35:59 -0100", Some(DATE_UNIX)),
        ("Wed, 03 dec 2025 15:35:59 GMT", Some(DATE_UNIX)),
        ("Wed, 03 Dec 2025 15:35:59", None),
        ("Wed, 32 Dec 2025 15:35:59 GMT", None),
        ("Wed, 03 Dex 2025 15:35:59 GMT", None),
        ("Wed, 03 Dec 25 15:35:59 GMT", None),
        ("Wed, 03 Dec 2025 15:35 GMT", None),
        ("Wed, 03 Dec 2025 15:35:59 CET", None),
        ("Wed, 03 Dec 2025 15:35:59 GMT extra", None),
        ("1764776159", None),
        ("", None),
    ] {
        assert_eq!(parse_http_date(s), want, "{s:?}");
    }
}

#[test]
fn debug_redacts_the_signature() {
    let (_, uri, headers) = head(
        "GET",
        "/b/k",
        &[
            ("authorization", "AWS AK:P5VwPS0mSZRN2sDt9N936o9u76s="),
            ("date", DATE),
        ],
    );
    let auth = parse(&uri, &headers).unwrap().unwrap();
    let dbg = format!("{auth:?}");
    assert!(dbg.contains("<redacted>") && !dbg.contains('['), "{dbg}");
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parse_and_fold_never_panic(
            target in "/[a-zA-Z0-9%/._~-]{0,24}(\\?[a-zA-Z0-9%=&._~+-]{0,80})?",
            authz in proptest::option::of("AWS [ -~]{0,40}"),
            date in proptest::option::of("[ -~]{0,40}"),
        ) {
            let mut headers = HeaderMap::new();
            if let Some(a) = authz.and_then(|a| HeaderValue::from_str(&a).ok()) {
                headers.insert(AUTHORIZATION, a);
            }
            if let Some(d) = date.and_then(|d| HeaderValue::from_str(&d).ok()) {
                headers.insert("date", d);
            }
            let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
            let uri = fold_presigned_query(&uri, &mut headers).unwrap_or(uri);
            if let Ok(Some(auth)) = parse(&uri, &headers) {
                let _ = string_to_sign(&auth, &Method::GET, &uri, &headers, Some("b"));
            }
        }

        #[test]
        fn sign_then_verify(secret in "[ -~]{1,100}", sts in "[ -~\n]{0,200}") {
            let sig = sign(secret.as_bytes(), sts.as_bytes());
            prop_assert!(signature_matches(secret.as_bytes(), sts.as_bytes(), &sig));
            let mut other = sig;
            other[0] ^= 1;
            prop_assert!(!signature_matches(secret.as_bytes(), sts.as_bytes(), &other));
            prop_assert!(!signature_matches(secret.as_bytes(), sts.as_bytes(), &sig[..19]));
        }
    }
}
