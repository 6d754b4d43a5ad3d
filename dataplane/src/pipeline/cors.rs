//! CORS, answered by the gateway from the bucket's rules (on its `Route`),
//! so a web page holding a presigned URL or a token can talk to s3gate
//! directly:
//!
//! - a **preflight** (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) is answered here, before and instead
//!   of authentication: browsers send it without credentials. It costs a
//!   lookup of the bucket's rules (cached), never an authorization call or
//!   a credential source, and never reaches a backend; so a bucket whose
//!   credentials are per principal answers too. The first rule (in order)
//!   that allows the origin, the method and every requested header
//!   answers; none → `403 AccessForbidden`, as S3 answers.
//! - an **actual request** carrying `Origin` is authenticated and served as
//!   any other; its response (success or S3 error) gets the headers of the
//!   first rule allowing the origin and the method. A request without
//!   `Origin` pays one header lookup.
//!
//! The backend's own `Access-Control-*` response headers are dropped
//! (`forward::strip_backend_headers`) and the request's CORS headers are not
//! forwarded, so the gateway's answer is the only one.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, HOST, ORIGIN,
    VARY,
};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use s3gate_proto::CorsRule;
use s3gate_s3::request::{bucket_of, Addressing, Op, S3Request};
use s3gate_s3::{S3Error, S3ErrorCode};

use super::{respond, route, Ctx, Exchange};
use crate::body::{self, Body};
use crate::error::Error;

/// What a preflight's answer varies with, for caches.
const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Headers, Access-Control-Request-Method",
);

/// A bucket's CORS rules, compiled once per route fill: patterns split at
/// their wildcard, methods as a bit set, and the header values a matching
/// rule sends ready to be cloned (a reference count, no copy).
#[derive(Debug, Default)]
pub struct Rules(Box<[Rule]>);

#[derive(Debug)]
struct Rule {
    origins: Box<[Pattern]>,
    /// `*` is among the origins: `Access-Control-Allow-Origin: *`, without
    /// credentials (as S3 answers).
    any_origin: bool,
    methods: u8,
    headers: Box<[Pattern]>,
    allow_methods: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// `literal`, or `prefix*suffix`; compared ASCII case-insensitively.
#[derive(Debug)]
struct Pattern {
    prefix: Box<str>,
    /// `Some` when the pattern had a `*`.
    suffix: Option<Box<str>>,
}

/// The methods a rule may allow, one bit each.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::HEAD,
    Method::POST,
    Method::DELETE,
];

fn method_bit(m: &Method) -> u8 {
    METHODS.iter().position(|x| x == m).map_or(0, |i| 1 << i)
}

// === impl Rules ===

impl Rules {
    /// Compiles a route's rules. They were validated when they entered the
    /// control plane's state; what still does not fit a header value is
    /// left out, never a reason to fail the route.
    pub fn compile(rules: &[CorsRule]) -> Self {
        Self(rules.iter().map(Rule::compile).collect())
    }

    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The first rule allowing `origin` to use `method` (and, for a
    /// preflight, to send every header of `requested`).
    fn find(&self, origin: &str, method: &Method, requested: &[&str]) -> Option<&Rule> {
        let bit = method_bit(method);
        self.0.iter().find(|r| {
            bit != 0
                && r.methods & bit != 0
                && r.origins.iter().any(|p| p.matches(origin))
                && requested
                    .iter()
                    .all(|h| r.headers.iter().any(|p| p.matches(h)))
        })
    }
}

impl Rule {
    fn compile(r: &CorsRule) -> Self {
        let methods = r
            .allowed_methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .fold(0, |bits, m| bits | method_bit(&m));
        Self {
            origins: r.allowed_origins.iter().map(|o| Pattern::new(o)).collect(),
            any_origin: r.allowed_origins.iter().any(|o| o == "*"),
            methods,
            headers: r.allowed_headers.iter().map(|h| Pattern::new(h)).collect(),
            allow_methods: joined(&r.allowed_methods),
            expose_headers: joined(&r.expose_headers),
            max_age: r.max_age.map(HeaderValue::from),
        }
    }

    /// `Access-Control-Allow-Origin` (and `-Allow-Credentials`) for a
    /// request from `origin`.
    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if self.any_origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

/// `a, b, c`, or `None` when empty (or not a header value).
fn joined(items: &[String]) -> Option<HeaderValue> {
    if items.is_empty() {
        return None;
    }
    HeaderValue::from_str(&items.join(", ")).ok()
}

impl Pattern {
    fn new(p: &str) -> Self {
        match p.split_once('*') {
            Some((prefix, suffix)) => Self {
                prefix: prefix.into(),
                suffix: Some(suffix.into()),
            },
            None => Self {
                prefix: p.into(),
                suffix: None,
            },
        }
    }

    fn matches(&self, s: &str) -> bool {
        let (s, prefix) = (s.as_bytes(), self.prefix.as_bytes());
        match &self.suffix {
            None => s.eq_ignore_ascii_case(prefix),
            Some(suffix) => {
                let suffix = suffix.as_bytes();
                s.len() >= prefix.len() + suffix.len()
                    && s[..prefix.len()].eq_ignore_ascii_case(prefix)
                    && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

// === preflight ===

/// Answers an `OPTIONS` request: a preflight, from the bucket's rules.
/// Nothing is authenticated or authorized, and nothing is forwarded.
pub async fn preflight(cx: &Ctx, head: &Parts, ex: &mut Exchange) -> Response<Body> {
    let host = head
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()));
    let bucket = bucket_of(&cx.cfg.hosts, &head.uri, host);
    // For the access log: the bucket, and what the request was.
    let logged = match &bucket {
        Ok(Some(b)) => Some(S3Request {
            op: Op::Preflight,
            action: "",
            also: Vec::new(),
            bucket: Some(b.clone()),
            key: None,
            addressing: Addressing::Path,
            copy_source: None,
        }),
        _ => None,
    };
    let result = answer(cx, head, bucket.map_err(Error::from)).await;
    ex.trace.decision = Some(if result.is_ok() {
        "cors-allow"
    } else {
        "cors-deny"
    });
    respond::finish(head, result, ex, logged.as_ref())
}

async fn answer(
    cx: &Ctx,
    head: &Parts,
    bucket: Result<Option<String>, Error>,
) -> Result<Response<Body>, Error> {
    let bad = |m: &str| Error::from(S3Error::new(S3ErrorCode::BadRequest, m));
    let origin = head
        .headers
        .get(ORIGIN)
        .ok_or_else(|| bad("Insufficient information. Origin request header needed."))?;
    let method = head
        .headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .ok_or_else(|| bad("Invalid Access-Control-Request-Method: null"))?;
    let Some(bucket) = bucket? else {
        return Err(S3Error::new(
            S3ErrorCode::MethodNotAllowed,
            "The specified method is not allowed against this resource.",
        )
        .into());
    };
    let rules = route::cors_rules(cx, &bucket).await?;
    if !rules.is_enabled() {
        return Err(forbidden(
            "CORSResponse: CORS is not enabled for this bucket.",
        ));
    }
    // Header names are ASCII; a value that is not, or a method s3gate does
    // not know, matches no rule.
    let not_allowed = || forbidden("CORSResponse: This CORS request is not allowed.");
    let origin_str = origin.to_str().map_err(|_| not_allowed())?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| not_allowed())?;
    let requested_value = head.headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS);
    let mut requested: Vec<&str> = Vec::new();
    for v in requested_value {
        let v = v.to_str().map_err(|_| not_allowed())?;
        requested.extend(v.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let rule = rules
        .find(origin_str, &method, &requested)
        .ok_or_else(not_allowed)?;

    let mut response = Response::new(body::empty());
    let headers = response.headers_mut();
    rule.allow_origin(origin, headers);
    if let Some(v) = &rule.allow_methods {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
    }
    if !requested.is_empty() {
        let list = requested
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&list) {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    if let Some(v) = &rule.expose_headers {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
    if let Some(v) = &rule.max_age {
        headers.insert(ACCESS_CONTROL_MAX_AGE, v.clone());
    }
    headers.insert(VARY, PREFLIGHT_VARY);
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(response)
}

fn forbidden(message: &str) -> Error {
    S3Error::new(S3ErrorCode::AccessForbidden, message).into()
}

// === actual requests ===

/// Adds the CORS headers of the bucket's first rule allowing `origin` and
/// the request's method to a finished response (a backend's or an S3
/// error). A bucket without a matching rule, or one that cannot be looked
/// up, leaves the response as it is: the browser then withholds it from
/// the page.
pub async fn decorate(
    cx: &Ctx,
    head: &Parts,
    origin: &HeaderValue,
    req: Option<&S3Request>,
    mut response: Response<Body>,
) -> Response<Body> {
    let Some(bucket) = req.and_then(|r| r.bucket.as_deref()) else {
        return response;
    };
    let Ok(origin_str) = origin.to_str() else {
        return response;
    };
    // Cached: the shared route, or the rules a preflight or an earlier
    // cross-origin request fetched (a bucket whose credentials are per
    // principal has only the latter).
    let Ok(rules) = route::cors_rules(cx, bucket).await else {
        return response;
    };
    let Some(rule) = rules.find(origin_str, &head.method, &[]) else {
        return response;
    };
    let headers = response.headers_mut();
    rule.allow_origin(origin, headers);
    if let Some(v) = &rule.allow_methods {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, v.clone());
    }
    if let Some(v) = &rule.expose_headers {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
    }
    headers.append(VARY, HeaderValue::from_static("Origin"));
    response
}

// === what crosses to and from the backend ===

/// Whether a request header is a browser's CORS header, not forwarded: the
/// gateway answers CORS, the backend never sees it.
pub fn is_request_header(name: &str) -> bool {
    name == "origin" || name.starts_with("access-control-request-")
}

/// A CORS response header (`Access-Control-*`).
pub fn is_cors_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("access-control-")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CorsRule {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect();
        CorsRule {
            allowed_origins: v(origins),
            allowed_methods: v(methods),
            allowed_headers: v(headers),
            expose_headers: v(&["ETag", "x-amz-request-id"]),
            max_age: Some(600),
        }
    }

    #[test]
    fn origins_match_literally_or_around_one_wildcard() {
        let p = Pattern::new("https://*.example.org");
        assert!(p.matches("https://a.example.org"));
        assert!(p.matches("HTTPS://A.b.EXAMPLE.org"));
        assert!(p.matches("https://.example.org"));
        assert!(!p.matches("https://example.org"));
        assert!(!p.matches("http://a.example.org"));
        assert!(!p.matches("https://a.example.org.evil.com"));
        // Prefix and suffix may not overlap.
        assert!(!Pattern::new("ab*ba").matches("aba"));
        assert!(Pattern::new("ab*ba").matches("abba"));
        assert!(Pattern::new("*").matches("anything at all"));
        assert!(Pattern::new("https://app.example.com").matches("https://app.example.com"));
        assert!(!Pattern::new("https://app.example.com").matches("https://app.example.com:8443"));
        // Non-ASCII never panics on a char boundary.
        assert!(!Pattern::new("é*é").matches("é"));
        assert!(Pattern::new("é*é").matches("éaé"));
        assert!(!Pattern::new("x*").matches("é"));
    }

    #[test]
    fn the_first_rule_allowing_origin_method_and_headers_answers() {
        let rules = Rules::compile(&[
            rule(
                &["https://app.example.com"],
                &["GET", "PUT"],
                &["content-type", "x-amz-*"],
            ),
            rule(&["*"], &["GET"], &[]),
        ]);
        let app = "https://app.example.com";
        let first = rules.find(app, &Method::PUT, &["Content-Type", "X-Amz-Meta-A"]);
        assert!(first.is_some_and(|r| !r.any_origin));
        // A header outside the first rule: the second has none → refused.
        assert!(rules.find(app, &Method::PUT, &["authorization"]).is_none());
        // GET without headers: the first rule still comes first.
        assert!(rules
            .find(app, &Method::GET, &[])
            .is_some_and(|r| !r.any_origin));
        // Another origin: only the wildcard rule, and only for GET.
        assert!(rules
            .find("https://x.test", &Method::GET, &[])
            .is_some_and(|r| r.any_origin));
        assert!(rules.find("https://x.test", &Method::PUT, &[]).is_none());
        assert!(rules.find(app, &Method::PATCH, &[]).is_none());
        assert!(rules.find(app, &Method::OPTIONS, &[]).is_none());
        assert!(!Rules::compile(&[]).is_enabled());
    }

    #[test]
    fn a_matching_rule_names_origin_credentials_and_headers() {
        let rules = Rules::compile(&[rule(&["https://app.example.com"], &["GET", "PUT"], &["*"])]);
        let r = rules
            .find("https://app.example.com", &Method::GET, &["anything"])
            .unwrap();
        let mut h = HeaderMap::new();
        r.allow_origin(&HeaderValue::from_static("https://app.example.com"), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(r.allow_methods.as_ref().unwrap(), "GET, PUT");
        assert_eq!(r.expose_headers.as_ref().unwrap(), "ETag, x-amz-request-id");
        assert_eq!(r.max_age.as_ref().unwrap(), "600");

        let any = Rules::compile(&[rule(&["*"], &["GET"], &[])]);
        let r = any.find("https://x.test", &Method::GET, &[]).unwrap();
        let mut h = HeaderMap::new();
        r.allow_origin(&HeaderValue::from_static("https://x.test"), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn backend_cors_headers_are_dropped_and_request_ones_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("etag", HeaderValue::from_static("\"x\""));
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(
            "access-control-allow-private-network",
            HeaderValue::from_static("true"),
        );
        super::super::forward::strip_backend_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("etag"));
        for name in [
            "origin",
            "access-control-request-method",
            "access-control-request-headers",
        ] {
            assert!(is_request_header(name));
        }
        assert!(!is_request_header("originator"));
        assert!(!is_request_header("x-amz-date"));
    }
}
