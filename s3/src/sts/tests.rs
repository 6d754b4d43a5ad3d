use http::HeaderValue;

use super::*;

fn host_config() -> HostConfig {
    HostConfig {
        base_domains: vec!["s3.example.com".into()],
    }
}

fn call(method: &str, target: &str, host: &str, content_type: Option<&str>) -> Option<StsCall> {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
    }
    recognise(
        &host_config(),
        &method.parse().unwrap(),
        &target.parse().unwrap(),
        Some(host),
        &headers,
    )
}

const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

#[test]
fn only_service_root_calls_are_sts() {
    assert_eq!(
        call("POST", "/", "gw:9080", Some(FORM)),
        Some(StsCall::Form)
    );
    assert_eq!(
        call("POST", "/", "gw", Some("Application/X-WWW-Form-Urlencoded")),
        Some(StsCall::Form)
    );
    assert_eq!(
        call(
            "GET",
            "/?Action=AssumeRoleWithWebIdentity&Version=2011-06-15",
            "gw",
            None
        ),
        Some(StsCall::Query)
    );
    assert_eq!(
        call("GET", "/?Act%69on=X", "gw", None),
        Some(StsCall::Query)
    );
    // ListBuckets, and anything below the root, are S3.
    assert_eq!(call("GET", "/", "gw", None), None);
    assert_eq!(call("GET", "/?x-id=ListBuckets", "gw", None), None);
    assert_eq!(call("POST", "/data", "gw", Some(FORM)), None);
    assert_eq!(call("GET", "/data?Action=x", "gw", None), None);
    assert_eq!(call("POST", "/", "gw", Some("application/xml")), None);
    // The root of a virtual-host bucket is that bucket (a form POST there is
    // a browser upload).
    assert_eq!(call("POST", "/", "data.s3.example.com", Some(FORM)), None);
    assert_eq!(call("GET", "/?Action=x", "data.s3.example.com", None), None);
    assert_eq!(
        call("POST", "/", "s3.example.com", Some(FORM)),
        Some(StsCall::Form)
    );
}

fn body(token: &str) -> String {
    format!(
        "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A000000000000%3Arole%2Fanalysts\
         &RoleSessionName=my-session&WebIdentityToken={token}&DurationSeconds=3600"
    )
}

#[test]
fn parses_what_botocore_sends() {
    let p = parse("", body("eyJhbGciOi.eyJzdWIi.c2ln%0A").as_bytes()).unwrap();
    assert_eq!(p.role_arn, "arn:aws:iam::000000000000:role/analysts");
    assert_eq!(p.role_session_name, "my-session");
    assert_eq!(
        p.web_identity_token, "eyJhbGciOi.eyJzdWIi.c2ln",
        "trailing newline trimmed"
    );
    assert_eq!(p.duration_seconds, Some(3600));
    assert_eq!(p.provider_id, None);
    // All in the query string, as a GET sends it.
    let q = parse(&body("tok.en.x"), b"").unwrap();
    assert_eq!(q.web_identity_token, "tok.en.x");
    // `+` is a space in a form.
    let spaced = body("a+b.c.d").replace("my-session", "x");
    assert!(
        parse("", spaced.as_bytes()).is_err(),
        "session name too short"
    );
    let p = parse("", body("a+b.c.d").as_bytes()).unwrap();
    assert_eq!(p.web_identity_token, "a b.c.d");
    assert!(
        !format!("{p:?}").contains("a b.c.d"),
        "Debug hides the token"
    );
}

fn fault(query: &str, body: &str) -> (StsErrorCode, String) {
    let f = parse(query, body.as_bytes()).unwrap_err();
    (f.code, f.message)
}

#[test]
fn refusals_name_the_problem() {
    use StsErrorCode::*;
    let ok = body("tok.en.sig");
    assert_eq!(fault("", "Version=2011-06-15").0, MissingAction);
    assert_eq!(
        fault("", &ok.replace("AssumeRoleWithWebIdentity", "AssumeRole")).0,
        InvalidAction
    );
    assert_eq!(
        fault(
            "",
            &ok.replace("AssumeRoleWithWebIdentity", "GetCallerIdentity")
        )
        .0,
        InvalidAction
    );
    assert_eq!(
        fault("", &ok.replace("2011-06-15", "2020-01-01")).0,
        InvalidAction
    );
    assert_eq!(
        fault("", &ok.replace("&Version=2011-06-15", "")).0,
        ValidationError
    );
    for missing in ["RoleArn", "RoleSessionName", "WebIdentityToken"] {
        let without: Vec<&str> = ok.split('&').filter(|p| !p.starts_with(missing)).collect();
        let (code, message) = fault("", &without.join("&"));
        assert_eq!(code, ValidationError, "{missing}");
        assert!(message.contains(missing), "{message}");
    }
    for bad in ["abc", "-1", "1.5", "", "99999999999", " 900"] {
        let (code, _) = fault(
            "",
            &ok.replace("DurationSeconds=3600", &format!("DurationSeconds={bad}")),
        );
        assert_eq!(code, InvalidParameterValue, "{bad:?}");
    }
    assert_eq!(
        fault("", &format!("{ok}&Policy=%7B%7D")).0,
        InvalidParameterValue
    );
    assert_eq!(
        fault("", &format!("{ok}&PolicyArns.member.1.arn=x")).0,
        InvalidParameterValue
    );
    // Given twice: in the body, or once in the query and once in the body.
    assert_eq!(fault("", &format!("{ok}&RoleArn=other")).0, ValidationError);
    assert_eq!(fault("RoleSessionName=x", &ok).0, ValidationError);
    assert_eq!(
        fault("", &ok.replace("my-session", "bad session!")).0,
        ValidationError
    );
    assert_eq!(
        fault("", &ok.replace("tok.en.sig", "ab")).0,
        ValidationError
    );
    // Huge values are not echoed whole.
    let huge = "A".repeat(5000);
    let (_, message) = fault("", &ok.replace("AssumeRoleWithWebIdentity", &huge));
    assert!(message.len() < 300, "{message}");
}

#[test]
fn session_names_follow_aws() {
    for good in [
        "ab",
        "ci-job_42",
        "user@example.com",
        "a=b,c+d.e-f",
        &"x".repeat(64),
    ] {
        assert!(valid_session_name(good), "{good}");
    }
    for bad in ["a", "", "has space", "slash/no", "ümlaut", &"x".repeat(65)] {
        assert!(!valid_session_name(bad), "{bad}");
    }
}

#[test]
fn documents_have_aws_shape() {
    let xml = WebIdentityResult {
        access_key_id: "ASIAEXAMPLE",
        secret_access_key: "sec<ret>",
        session_token: "tok&en",
        expiration: 1_700_000_000,
        subject: "alice",
        audience: "s3gate",
        provider: "http://idp",
        assumed_role_arn: "arn:aws:sts::000000000000:assumed-role/analysts/s",
        assumed_role_id: "AROAX:s",
    }
    .to_xml("REQ1");
    assert!(xml.contains(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
    ));
    for part in [
        "<AccessKeyId>ASIAEXAMPLE</AccessKeyId>",
        "<SecretAccessKey>sec&lt;ret&gt;</SecretAccessKey>",
        "<SessionToken>tok&amp;en</SessionToken>",
        "<Expiration>2023-11-14T22:13:20Z</Expiration>",
        "<SubjectFromWebIdentityToken>alice</SubjectFromWebIdentityToken>",
        "<ResponseMetadata><RequestId>REQ1</RequestId></ResponseMetadata>",
    ] {
        assert!(xml.contains(part), "{part} missing: {xml}");
    }
    let err = StsFault::new(StsErrorCode::AccessDenied, "no <role>").to_xml("R2");
    assert!(err.contains("<Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no &lt;role&gt;</Message></Error>"));
    assert!(err.contains("<RequestId>R2</RequestId></ErrorResponse>"));
    let busy = StsFault::new(StsErrorCode::ServiceUnavailable, "x").to_xml("R3");
    assert!(busy.contains("<Type>Receiver</Type>"));
}

#[test]
fn codes_round_trip_with_their_statuses() {
    for code in StsErrorCode::ALL {
        assert_eq!(StsErrorCode::parse(code.as_str()), Some(code));
    }
    assert_eq!(StsErrorCode::AccessDenied.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        StsErrorCode::InvalidIdentityToken.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        StsErrorCode::ExpiredTokenException.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        StsErrorCode::IDPCommunicationError.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(StsErrorCode::parse("Nope"), None);
}

#[test]
fn tokens_compare_by_digest() {
    let digest = token_sha256("the-token");
    assert!(token_matches("the-token", &digest));
    assert!(!token_matches("the-token ", &digest));
    assert!(!token_matches("", &digest));
}

proptest::proptest! {
    #[test]
    fn parse_never_panics(query in ".{0,200}", body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let _ = parse(&query, &body);
    }
}
