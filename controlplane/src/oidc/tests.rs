//! Unit tests of the verifier: key parsing, algorithm refusal, claim
//! checks and mapping, and the refetch rules against a real (tiny) HTTP
//! server on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

// Test-only keys, generated with openssl for these tests.
const RSA_N: &str = "3VSK__dw5Eg6whj8fKVoR9sjpfJ5iAQuAaOBd758B8uOjdX-2Ob_n_dH8T6Vj0--0tXiAhyitRH2c_tUY8lDR5i1sRS_p85rFssOnSWr-tpSOSTwG6nlNHa7a41ueZdzPk2gQHqO5yWpWudY1louNoSimVWklcV0tYpntGQ2a58xu71BTcTfBv7O2oipC_3Pupb4lqECmysUYtCmwH9Njt_AFwZR1OY3Y-N-8Qga2EHlLkOvfCvhDX6vMA9q9THe1BH5u-jLAG2MmzEoX5O_dxbt4LEaDYGYhTD9a458bgE8qaKlIUdGG-FQIplfjsHx3MQ6zpMg9amVD5eIkoYP9w";
const RSA_E: &str = "AQAB";
const RSA_PKCS1: &str = "MIIEowIBAAKCAQEA3VSK//dw5Eg6whj8fKVoR9sjpfJ5iAQuAaOBd758B8uOjdX+2Ob/n/dH8T6Vj0++0tXiAhyitRH2c/tUY8lDR5i1sRS/p85rFssOnSWr+tpSOSTwG6nlNHa7a41ueZdzPk2gQHqO5yWpWudY1louNoSimVWklcV0tYpntGQ2a58xu71BTcTfBv7O2oipC/3Pupb4lqECmysUYtCmwH9Njt/AFwZR1OY3Y+N+8Qga2EHlLkOvfCvhDX6vMA9q9THe1BH5u+jLAG2MmzEoX5O/dxbt4LEaDYGYhTD9a458bgE8qaKlIUdGG+FQIplfjsHx3MQ6zpMg9amVD5eIkoYP9wIDAQABAoIBAD0iqaRrfljoJKbRjQiHDedvPgkMEYrDEMwuFEh1qr/id7Vw60yRfgF7JfmanmgwEFcfcibALydR12ARB63qfXWM1n8b6paY+1aX7yj0K22GmZikPdh+VMvpkfpy3hWjAleuzHmTAN8TNZTg+1Z2IXa4q0ssb2JZYNP2b4/R8IBIPMCC4H8GTvWqgT1uMQ7sjCtEU1UqsoXFAd69IcRUT2PiukXSHxvDcP3ShqtTX8z1JH8XsnJ9L+yG7EMW+NvQgpgji7LYLrrbvUQSoQf0oXcX0bCKvK/+Lsbbf8N+cxfOR3jLJjoujvTffWO6n5MWA2QFMSjbDEk5d0iyoV9O7S0CgYEA9NFn5x7BilBu0OR1gY3Tt8VjAN2U2FQtpj93K/R3B6a9RisyDzF8/zAuP/tCBwLyjsbcx/kvm0+rD1uPvnvHFbR6AImKJ9HCXVCFDy0VPvCl1wTBC6+8DgwKt8DaWT9CRnWahvMlM8UO399iz489esnHm6AN3X+yeODkDYjEs6MCgYEA53CAOtNpt4y++NmUjQkehG1fQtRY/omansgzAAMmAowQQm+C0b1f3HfZeFIjvHJwZsUEafkk+wOGsk5XGhi9QuNrM//dQtdoZhm45vqYyRcQmLXKokrPOWJbM+l5wmEMvLO8jvva9xpsceZfa63lvTWcj9K7IJHDp8lyogVC150CgYAG0jbU57R4yBjuVQ85FtyJSESj54iYJnBHK4mEfgE7A1hOtjFk3voemhcPzU5fp6Neewf3wmejKisX+HMe2ZAIeMjVbv+ccGm789xhOd5XrJjSTt2aF8Fjms5JpGPxDKQqFmjBzdCBisIJVs4H/nO2Eh0vptv8CezNFWcFQYRJhQKBgG6NLaNr4z67K2nhPPVVms81E2Dv4AbOIh6gkMP7vQdQcl/ZtkqLxCOi2C2CRvG4VHqyt5YLXZ/NomS/yRl9IcK2sTmoib9o98R1mv4yTBMaQmI/zChTxcKqedhFOVUhWJ022eYO5hxM8epCWegsq+YCmuOUjLBVEHmwX2KHUtN9AoGBAK4KxXz850NiGnkxLyKZMWAKJPLZbUyZFHtH+3FVJ0dEz8nNUfKoLOtVYdYF4CNYOa4ShyjjLH8ce9v2aDNuOouSWtIhKKbT47gV3Z08OGqpbOn+Wn1JGBaYAANz6bzZWYrrwRKd3OldwmfQdhd1s6jl89WfCmOhUZYLXBSVoNiF";
const EC_X: &str = "jII7z4fZGh5RzFJqcNAXYhJS2KVWFH546yFzqhySTCM";
const EC_Y: &str = "VJw_pd6buWOoNggglA8tCelePsymxV2A5rXqOyr6fTs";
const EC_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNZV9vWWLDPWzumt7yaXDe4s/E2+BJ7u9bu9u9tN0OpGhRANCAASMgjvPh9kaHlHMUmpw0BdiElLYpVYUfnjrIXOqHJJMI1ScP6Xem7ljqDYIIJQPLQnpXj7MpsVdgOa16jsq+n07";
const ED_X: &str = "eUzMT2Dv4gFq_lsG84UhqLV23D1b_Y0phC8Lx3HmnCs";
const ED_PKCS8: &str = "MC4CAQAwBQYDK2VwBCIEIPxPNL3Ug2cJsUJIyQOGtCt7TvDASHbPQihmqXHYM3nG";

const ISSUER: &str = "https://idp.example.com";

fn rsa_jwk(kid: &str, alg: Option<&str>) -> Value {
    let mut k = json!({"kty": "RSA", "kid": kid, "use": "sig", "n": RSA_N, "e": RSA_E});
    if let Some(alg) = alg {
        k["alg"] = json!(alg);
    }
    k
}

fn jwks() -> Value {
    json!({"keys": [
        rsa_jwk("rsa", None),
        rsa_jwk("rsa-rs256", Some("RS256")),
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": EC_X, "y": EC_Y},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": ED_X, "alg": "EdDSA"},
    ]})
}

fn config(issuer: &str) -> OidcConfig {
    OidcConfig {
        name: "corp".into(),
        issuer: issuer.into(),
        audiences: vec!["s3gate".into(), "other".into()],
        principal_claim: "sub".into(),
        groups_claim: Some("groups".into()),
        ca_bundle: None,
    }
}

fn provider_with(cfg: &OidcConfig, doc: &Value) -> Arc<Provider> {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let p = Arc::new(Provider::new(cfg, Fetcher::new(None).unwrap()));
    p.install(Arc::new(KeySet {
        keys: parse_jwks(doc).unwrap(),
        fetched: Instant::now(),
        generation: 1,
    }));
    p
}

fn provider() -> Arc<Provider> {
    provider_with(&config(ISSUER), &jwks())
}

fn now() -> i64 {
    crate::unix_now()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": "s3gate", "sub": "alice", "email": "alice@example.com",
        "groups": ["analysts", "staff"], "iat": now(), "nbf": now() - 10, "exp": now() + 600,
    })
}

fn key_for(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&STANDARD.decode(EC_PKCS8).unwrap()),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&STANDARD.decode(ED_PKCS8).unwrap()),
        _ => EncodingKey::from_rsa_der(&STANDARD.decode(RSA_PKCS1).unwrap()),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key_for(alg)).unwrap()
}

fn rs256(claims: &Value) -> String {
    sign(Algorithm::RS256, Some("rsa"), claims)
}

/// A token with a hand-made header and signature (for what no library signs).
fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn invalid(r: Result<VerifiedToken, TokenError>, needle: &str) {
    match r {
        Err(TokenError::Invalid(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected Invalid({needle}), got {other:?}"),
    }
}

#[tokio::test]
async fn every_accepted_algorithm_verifies() {
    let p = provider();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::RS384, "rsa"),
        (Algorithm::RS512, "rsa"),
        (Algorithm::PS256, "rsa"),
        (Algorithm::PS512, "rsa"),
        (Algorithm::RS256, "rsa-rs256"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let v = p
            .verify(&sign(alg, Some(kid), &claims()))
            .await
            .unwrap_or_else(|e| panic!("{alg:?} with {kid}: {e}"));
        assert_eq!(v.principal, "alice");
        assert_eq!(v.subject, "alice");
        assert_eq!(v.groups, ["analysts", "staff"]);
        assert_eq!(v.audience, "s3gate");
        assert_eq!(&*v.provider, "corp");
        assert_eq!(v.issuer, ISSUER);
        assert_eq!(v.claims["email"], "alice@example.com");
    }
    // Without a kid, the keys that fit the alg are tried.
    let v = p
        .verify(&sign(Algorithm::ES256, None, &claims()))
        .await
        .unwrap();
    assert_eq!(v.principal, "alice");
}

#[tokio::test]
async fn principal_and_groups_follow_the_configured_claims() {
    let mut cfg = config(ISSUER);
    cfg.principal_claim = "email".into();
    cfg.groups_claim = Some("roles".into());
    let p = provider_with(&cfg, &jwks());
    let mut c = claims();
    c["roles"] = json!("admins");
    let v = p.verify(&rs256(&c)).await.unwrap();
    assert_eq!(v.principal, "alice@example.com");
    assert_eq!(v.groups, ["admins"]);
    assert_eq!(v.expires_unix, c["exp"].as_i64().unwrap());

    // absent groups: none; a numeric principal is a name too
    let mut c = claims();
    c["email"] = json!(12345);
    let v = p.verify(&rs256(&c)).await.unwrap();
    assert_eq!((v.principal.as_str(), v.groups.len()), ("12345", 0));

    // no groups claim configured: the token's groups are not looked at
    let mut cfg = config(ISSUER);
    cfg.groups_claim = None;
    let p2 = provider_with(&cfg, &jwks());
    assert!(p2
        .verify(&rs256(&claims()))
        .await
        .unwrap()
        .groups
        .is_empty());

    for (field, value, needle) in [
        ("roles", json!(7), "groups claim"),
        ("roles", json!(["ok", 7]), "groups claim"),
        ("roles", json!([""]), "groups claim"),
        ("roles", json!({"a": 1}), "groups claim"),
        ("email", json!(""), "usable principal"),
        ("email", json!("*anonymous*"), "usable principal"),
        ("email", json!("bad\nname"), "usable principal"),
        ("email", json!(["a"]), "not a string"),
        ("email", Value::Null, "not a string"),
    ] {
        let mut c = claims();
        c[field] = value;
        invalid(p.verify(&rs256(&c)).await, needle);
    }
    let mut c = claims();
    c.as_object_mut().unwrap().remove("email");
    invalid(p.verify(&rs256(&c)).await, "no principal claim");
}

#[tokio::test]
async fn none_and_hmac_are_refused() {
    let p = provider();
    let none = raw_token(&json!({"alg": "none", "kid": "rsa"}), &claims(), b"");
    invalid(p.verify(&none).await, "alg none");
    let none = raw_token(&json!({"alg": "None"}), &claims(), b"");
    invalid(p.verify(&none).await, "alg none");

    // HS256 "signed" with what an attacker knows: the public key, as the
    // modulus bytes and as the JWK text.
    for secret in [
        URL_SAFE_NO_PAD.decode(RSA_N).unwrap(),
        rsa_jwk("rsa", None).to_string().into_bytes(),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa".into());
        let forged =
            jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&secret).unwrap())
                .unwrap();
        invalid(p.verify(&forged).await, "HMAC");
    }
    for alg in ["HS384", "HS512", "ES512", "RSA-OAEP", ""] {
        let t = raw_token(&json!({"alg": alg, "kid": "rsa"}), &claims(), b"sig");
        assert!(
            matches!(p.verify(&t).await, Err(TokenError::Invalid(_))),
            "{alg}"
        );
    }
}

#[test]
fn symmetric_and_unusable_keys_are_never_loaded() {
    let doc = json!({"keys": [
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "es", "alg": "ES256", "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xC1u8; 128]), "e": "AQAB"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": EC_X, "y": EC_Y},
        {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AAAA", "y": EC_Y},
        {"kty": "OKP", "kid": "ed-short", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": ED_X},
        {"kid": "no-kty"},
        "not an object",
    ]});
    assert_eq!(parse_jwks(&doc).unwrap().len(), 0);
    assert!(parse_jwks(&json!({"nokeys": []})).is_err());
    assert!(parse_jwks(&json!([])).is_err());
    let keys = parse_jwks(&jwks()).unwrap();
    let kinds: Vec<KeyKind> = keys.iter().map(|k| k.kind).collect();
    assert_eq!(
        kinds,
        [KeyKind::Rsa, KeyKind::Rsa, KeyKind::P256, KeyKind::Ed25519]
    );
}

#[tokio::test]
async fn the_alg_must_fit_the_key() {
    let p = provider();
    // an RSA key pinned to RS256 does not verify PS256 or RS512
    invalid(
        p.verify(&sign(Algorithm::PS256, Some("rsa-rs256"), &claims()))
            .await,
        "does not fit",
    );
    // an EC header naming the RSA key
    let es = sign(Algorithm::ES256, Some("ec"), &claims());
    let [_, payload, sig] = parts(&es).unwrap();
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "kid": "rsa"}).to_string());
    invalid(
        p.verify(&format!("{header}.{payload}.{sig}")).await,
        "does not fit",
    );
    // an RSA token relabelled EdDSA for the Ed25519 key
    let rs = rs256(&claims());
    let [_, payload, sig] = parts(&rs).unwrap();
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "kid": "ed"}).to_string());
    invalid(
        p.verify(&format!("{header}.{payload}.{sig}")).await,
        "signature",
    );
}

#[tokio::test]
async fn time_claims_are_checked_with_leeway() {
    let p = provider();
    let with = |field: &str, value: Value| {
        let mut c = claims();
        c[field] = value;
        rs256(&c)
    };
    assert_eq!(
        p.verify(&with("exp", json!(now() - 120))).await,
        Err(TokenError::Expired)
    );
    // within the leeway
    assert!(p.verify(&with("exp", json!(now() - 30))).await.is_ok());
    assert_eq!(
        p.verify(&with("nbf", json!(now() + 120))).await,
        Err(TokenError::NotYetValid)
    );
    assert!(p.verify(&with("nbf", json!(now() + 30))).await.is_ok());
    assert_eq!(
        p.verify(&with("iat", json!(now() + 120))).await,
        Err(TokenError::NotYetValid)
    );
    assert!(p.verify(&with("iat", json!(now() + 30))).await.is_ok());
    invalid(p.verify(&with("iat", json!("yesterday"))).await, "iat");
    invalid(p.verify(&with("exp", json!("never"))).await, "exp");
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    invalid(p.verify(&rs256(&c)).await, "no exp claim");
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let p = provider();
    let with = |field: &str, value: Value| {
        let mut c = claims();
        c[field] = value;
        rs256(&c)
    };
    invalid(p.verify(&with("aud", json!("someone-else"))).await, "aud");
    invalid(p.verify(&with("aud", json!(["a", "b"]))).await, "aud");
    let v = p.verify(&with("aud", json!(["a", "other"]))).await.unwrap();
    assert_eq!(v.audience, "other");
    invalid(
        p.verify(&with("iss", json!("https://evil.example.com")))
            .await,
        "iss",
    );
    invalid(
        p.verify(&with("iss", json!(format!("{ISSUER}/")))).await,
        "iss",
    );
    for field in ["aud", "iss"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(field);
        invalid(p.verify(&rs256(&c)).await, field);
    }
}

#[tokio::test]
async fn tampered_and_malformed_tokens_are_invalid() {
    let p = provider();
    let good = rs256(&claims());
    let [header, _, sig] = parts(&good).unwrap();
    let mut c = claims();
    c["sub"] = json!("mallory");
    let payload = URL_SAFE_NO_PAD.encode(c.to_string());
    invalid(
        p.verify(&format!("{header}.{payload}.{sig}")).await,
        "signature",
    );
    for junk in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "!!.!!.!!",
        &"x".repeat(MAX_TOKEN + 1),
    ] {
        assert!(
            matches!(p.verify(junk).await, Err(TokenError::Invalid(_))),
            "{junk:.20}"
        );
    }
    // an unknown kid asks the IdP, which cannot be reached here: fail closed
    assert!(matches!(
        p.verify(&sign(Algorithm::RS256, Some("nope"), &claims()))
            .await,
        Err(TokenError::Unavailable(_))
    ));
}

#[tokio::test]
async fn verify_any_picks_the_provider_by_issuer() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let mut other = config("https://other.example.com");
    other.name = "other".into();
    let a = provider();
    let b = provider_with(&other, &jwks());
    let providers = Providers {
        by_name: [(a.name.clone(), a.clone()), (b.name.clone(), b.clone())].into(),
        providers: vec![a, b],
    };
    assert_eq!(providers.names().collect::<Vec<_>>(), ["corp", "other"]);
    let v = providers.verify_any(&rs256(&claims())).await.unwrap();
    assert_eq!(&*v.provider, "corp");
    let mut c = claims();
    c["iss"] = json!("https://other.example.com");
    let v = providers.verify_any(&rs256(&c)).await.unwrap();
    assert_eq!(&*v.provider, "other");
    // by name, the other provider refuses it
    invalid(providers.verify("corp", &rs256(&c)).await, "iss");
    invalid(
        providers.verify("nobody", &rs256(&c)).await,
        "no oidc provider",
    );
    c["iss"] = json!("https://unknown.example.com");
    invalid(providers.verify_any(&rs256(&c)).await, "no oidc provider");
    c["iss"] = json!(42);
    invalid(providers.verify_any(&rs256(&c)).await, "iss");
}

// === against a real HTTP server ===

/// A tiny IdP: discovery and JWKS over HTTP/1.1 on 127.0.0.1, counting
/// requests per path.
struct Idp {
    issuer: String,
    state: Arc<Mutex<IdpState>>,
    task: tokio::task::JoinHandle<()>,
}

struct IdpState {
    jwks: Value,
    hits: HashMap<String, usize>,
}

impl Idp {
    async fn start(jwks: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(IdpState {
            jwks,
            hits: HashMap::new(),
        }));
        let (st, iss) = (state.clone(), issuer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (st, iss) = (st.clone(), iss.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    let body = {
                        let mut s = st.lock().unwrap();
                        *s.hits.entry(path.clone()).or_default() += 1;
                        match path.as_str() {
                            "/.well-known/openid-configuration" => Some(
                                json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")})
                                    .to_string(),
                            ),
                            "/jwks" => Some(s.jwks.to_string()),
                            _ => None,
                        }
                    };
                    let resp = match body {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                            b.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        Self {
            issuer,
            state,
            task,
        }
    }

    fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn set_keys(&self, keys: Value) {
        self.state.lock().unwrap().jwks = keys;
    }
}

/// The refetch window of `fast` providers, and a wait just past it. Wide
/// enough that a loaded CI machine (test binaries in parallel on 2 cores)
/// does not cross it between two steps meant to fall inside.
const WINDOW: Duration = Duration::from_millis(1000);
const PAST_WINDOW: Duration = Duration::from_millis(1100);

fn fast(p: Provider) -> Arc<Provider> {
    Arc::new(Provider {
        min_refetch: WINDOW,
        ..p
    })
}

fn claims_for(issuer: &str) -> Value {
    let mut c = claims();
    c["iss"] = json!(issuer);
    c
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_window() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let idp = Idp::start(json!({"keys": [rsa_jwk("a", None)]})).await;
    let p = fast(Provider::new(
        &config(&idp.issuer),
        Fetcher::new(None).unwrap(),
    ));
    let c = claims_for(&idp.issuer);
    // Signed before the first fetch starts the window.
    let flood: Vec<_> = (0..50)
        .map(|i| sign(Algorithm::RS256, Some(&format!("junk-{i}")), &c))
        .collect();

    // first use: discovery, then the JWKS
    let a = sign(Algorithm::RS256, Some("a"), &c);
    assert_eq!(p.verify(&a).await.unwrap().principal, "alice");
    assert_eq!(
        (
            idp.hits("/.well-known/openid-configuration"),
            idp.hits("/jwks")
        ),
        (1, 1)
    );

    // a flood of unknown kids within the window: no fetch at all
    let answers = futures_join(&p, &flood).await;
    assert!(answers
        .iter()
        .all(|r| matches!(r, Err(TokenError::Invalid(m)) if m.contains("unknown kid"))));
    assert_eq!(idp.hits("/jwks"), 1);

    // after the window, the same flood costs one fetch (single flight)
    tokio::time::sleep(PAST_WINDOW).await;
    futures_join(&p, &flood).await;
    assert_eq!(idp.hits("/jwks"), 2);
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);

    // rotation: a new kid is fetched and accepted, without a new provider
    tokio::time::sleep(PAST_WINDOW).await;
    idp.set_keys(json!({"keys": [rsa_jwk("a", None), rsa_jwk("b", None)]}));
    let b = sign(Algorithm::RS256, Some("b"), &c);
    assert!(p.verify(&b).await.is_ok());
    assert_eq!(idp.hits("/jwks"), 3);

    // removal: once a refetch saw the new set, the removed kid is unknown
    idp.set_keys(json!({"keys": [rsa_jwk("b", None)]}));
    tokio::time::sleep(PAST_WINDOW).await;
    let _ = p.verify(&sign(Algorithm::RS256, Some("trigger"), &c)).await;
    assert_eq!(idp.hits("/jwks"), 4);
    invalid(p.verify(&a).await, "unknown kid");
    assert!(p.verify(&b).await.is_ok());

    // the IdP goes away: known keys still verify; an unknown kid cannot be
    // told apart from a rotation, so it fails closed
    idp.task.abort();
    let _ = idp.task.await;
    tokio::time::sleep(PAST_WINDOW).await;
    assert!(p.verify(&b).await.is_ok());
    let z = sign(Algorithm::RS256, Some("z"), &c);
    assert!(matches!(
        p.verify(&z).await,
        Err(TokenError::Unavailable(_))
    ));
    // ... and keeps failing closed within the window, without asking again
    assert!(matches!(
        p.verify(&z).await,
        Err(TokenError::Unavailable(_))
    ));
    assert_eq!(p.fetches.load(Ordering::Relaxed), 5);
}

async fn futures_join(
    p: &Arc<Provider>,
    tokens: &[String],
) -> Vec<Result<VerifiedToken, TokenError>> {
    let tasks: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (p, t) = (p.clone(), t.clone());
            tokio::spawn(async move { p.verify(&t).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn an_unreachable_or_lying_idp_fails_closed() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    // nothing listens there
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let p = fast(Provider::new(&config(&dead), Fetcher::new(None).unwrap()));
    let t = sign(Algorithm::RS256, Some("a"), &claims_for(&dead));
    assert!(matches!(
        p.verify(&t).await,
        Err(TokenError::Unavailable(_))
    ));

    // discovery naming another issuer is not trusted
    let idp = Idp::start(json!({"keys": [rsa_jwk("a", None)]})).await;
    let mut cfg = config(&idp.issuer);
    cfg.issuer = format!("{}/", idp.issuer);
    let p = fast(Provider::new(&cfg, Fetcher::new(None).unwrap()));
    let mut c = claims_for(&idp.issuer);
    c["iss"] = json!(cfg.issuer);
    match p.verify(&sign(Algorithm::RS256, Some("a"), &c)).await {
        Err(TokenError::Unavailable(m)) => assert!(m.contains("not the configured"), "{m}"),
        other => panic!("{other:?}"),
    }
    // a JWKS that is not one
    idp.set_keys(json!({"hello": "world"}));
    let p = fast(Provider::new(
        &config(&idp.issuer),
        Fetcher::new(None).unwrap(),
    ));
    let t = sign(Algorithm::RS256, Some("a"), &claims_for(&idp.issuer));
    assert!(matches!(
        p.verify(&t).await,
        Err(TokenError::Unavailable(_))
    ));
}

#[test]
fn errors_and_debug_never_show_the_token() {
    let t = rs256(&claims());
    let [_, _, sig] = parts(&t).unwrap();
    let cred =
        s3gate_proto::PresentedCredential::BearerToken(s3gate_proto::Redacted::new(t.clone()));
    assert!(!format!("{cred:?}").contains(sig));
    for e in [
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::Invalid(BAD_SIGNATURE.into()),
    ] {
        assert!(!e.to_string().contains(sig));
    }
}
