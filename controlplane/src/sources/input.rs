//! The decision input document: one JSON object describing a request, the
//! same for every policy source outside the gateway (Rego's `input`, the
//! body OPA is sent, the binds of a SQL query, a plugin's request).
//!
//! ```json
//! {
//!   "principal": "alice",
//!   "groups": ["analysts"],
//!   "identity": {"source": "jwt", "claims": {"sub": "alice", "email": "a@example.com"}},
//!   "action": "s3:GetObject",
//!   "bucket": "data",
//!   "key": "reports/q1.csv",
//!   "prefix": "",
//!   "kind": "object",
//!   "method": "GET",
//!   "client_ip": "127.0.0.1",
//!   "time": "2026-12-03T18:00:00Z",
//!   "headers": {"content-type": "text/csv"}
//! }
//! ```
//!
//! - `principal`: the principal name (`*anonymous*` without credentials);
//!   `groups`: its groups, always a list.
//! - `identity.source`: `key`, `sts`, `jwt`, `mtls` or `anonymous`;
//!   `identity.claims`: the verified claims of the token or session (string
//!   values), `{}` for others.
//! - `key`: the object key for object requests, else `""`; `prefix`: the
//!   listed prefix for `s3:ListBucket` on a prefix, else `""`; `kind`:
//!   `object`, `prefix` or `bucket`.
//! - `method`: the HTTP method (`""` when unknown, e.g. `admin explain`);
//!   `client_ip`: the client's address as the data plane saw it (`""` when
//!   unknown); `time`: when the decision is made, RFC 3339, UTC, seconds.
//! - `headers`: only the S3 headers of
//!   [`RequestContext::HEADERS`](s3gate_proto::RequestContext::HEADERS),
//!   lower-case names. Never a secret: `authorization`,
//!   `x-amz-security-token` and `cookie` are not among them, and would be
//!   dropped here if a caller put them in the context.
//!
//! Decisions are cached by (principal, action, bucket, kind, key) under the
//! answer's scope: a policy that looks at `time`, `client_ip`, `method`,
//! `headers` or `identity.claims` must answer with no `scope_prefix` and
//! `ttl_s: 0`, or the cached answer is reused for other requests.

use std::time::SystemTime;

use s3gate_proto::{AuthorizeRequest, RequestContext, Resource};
use serde_json::{Map, Value};

/// Header names never put in the document, whatever the context carries.
const SECRET_HEADERS: &[&str] = &["authorization", "x-amz-security-token", "cookie"];

/// The input document of `req`, at the current time.
pub fn input_document(req: &AuthorizeRequest) -> Value {
    input_document_at(req, SystemTime::now())
}

/// The input document of `req`, decided at `now`.
pub fn input_document_at(req: &AuthorizeRequest, now: SystemTime) -> Value {
    let ctx = &req.context;
    let (kind, key, prefix) = match &req.resource {
        Resource::Bucket => ("bucket", "", ""),
        Resource::Object(k) => ("object", k.as_str(), ""),
        Resource::Prefix(p) => ("prefix", "", p.as_str()),
    };
    let claims: Map<String, Value> = ctx
        .claims
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let headers: Map<String, Value> = ctx
        .headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            let allowed = RequestContext::header_name(&name).is_some()
                && !SECRET_HEADERS.contains(&name.as_str());
            allowed.then(|| (name, Value::String(value.clone())))
        })
        .collect();
    let identity_source = if ctx.identity_source.is_empty() {
        if req.principal.is_anonymous() {
            "anonymous"
        } else {
            "key"
        }
    } else {
        &ctx.identity_source
    };
    serde_json::json!({
        "principal": &*req.principal.name,
        "groups": req.principal.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
        "identity": {"source": identity_source, "claims": claims},
        "action": &*req.action,
        "bucket": &req.bucket,
        "key": key,
        "prefix": prefix,
        "kind": kind,
        "method": &*ctx.method,
        "client_ip": ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "time": humantime::format_rfc3339_seconds(now).to_string(),
        "headers": headers,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;
    use std::time::Duration;

    use s3gate_proto::Principal;
    use serde_json::json;

    use super::*;

    fn request(resource: Resource) -> AuthorizeRequest {
        AuthorizeRequest {
            principal: Principal {
                name: Arc::from("alice"),
                groups: Arc::from(vec![Arc::from("analysts"), Arc::from("eu")]),
                access_key: Some(Arc::from("AKIDEXAMPLE")),
            },
            action: Cow::Borrowed("s3:GetObject"),
            bucket: "data".to_owned(),
            resource,
            context: RequestContext {
                client_ip: Some("10.1.2.3".parse().unwrap()),
                identity_source: Cow::Borrowed("jwt"),
                claims: Arc::from(vec![("email".to_owned(), "a@example.com".to_owned())]),
                method: Cow::Borrowed("GET"),
                headers: vec![
                    ("content-type", "text/csv".to_owned()),
                    ("authorization", "AWS4-HMAC-SHA256 Credential=…".to_owned()),
                    ("x-amz-security-token", "FwoGZX…".to_owned()),
                    ("cookie", "session=1".to_owned()),
                ],
            },
        }
    }

    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_784_800)
    }

    #[test]
    fn an_object_request_has_every_field() {
        let doc = input_document_at(&request(Resource::Object("reports/q1.csv".into())), at());
        assert_eq!(
            doc,
            json!({
                "principal": "alice",
                "groups": ["analysts", "eu"],
                "identity": {"source": "jwt", "claims": {"email": "a@example.com"}},
                "action": "s3:GetObject",
                "bucket": "data",
                "key": "reports/q1.csv",
                "prefix": "",
                "kind": "object",
                "method": "GET",
                "client_ip": "10.1.2.3",
                "time": "2025-12-03T18:00:00Z",
                "headers": {"content-type": "text/csv"},
            })
        );
    }

    #[test]
    fn never_a_secret_header() {
        let doc = input_document_at(&request(Resource::Bucket), at()).to_string();
        for secret in [
            "authorization",
            "AWS4-HMAC",
            "x-amz-security-token",
            "FwoGZX",
            "cookie",
        ] {
            assert!(!doc.contains(secret), "{secret} leaked into {doc}");
        }
        // Nor the access key: the principal is who, not how.
        assert!(!doc.contains("AKIDEXAMPLE"), "{doc}");
    }

    #[test]
    fn listings_carry_the_prefix_and_buckets_neither() {
        let mut req = request(Resource::Prefix("reports/".into()));
        req.action = Cow::Borrowed("s3:ListBucket");
        let doc = input_document_at(&req, at());
        assert_eq!(
            (&doc["kind"], &doc["key"], &doc["prefix"]),
            (&json!("prefix"), &json!(""), &json!("reports/"))
        );
        let doc = input_document_at(&request(Resource::Bucket), at());
        assert_eq!(
            (&doc["kind"], &doc["key"], &doc["prefix"]),
            (&json!("bucket"), &json!(""), &json!(""))
        );
    }

    #[test]
    fn anonymous_and_unknown_context() {
        let req = AuthorizeRequest {
            principal: Principal::anonymous(),
            action: Cow::Borrowed("s3:GetObject"),
            bucket: "public".to_owned(),
            resource: Resource::Object("index.html".into()),
            context: RequestContext::default(),
        };
        let doc = input_document_at(&req, at());
        assert_eq!(doc["principal"], json!("*anonymous*"));
        assert_eq!(doc["groups"], json!([]));
        assert_eq!(
            doc["identity"],
            json!({"source": "anonymous", "claims": {}})
        );
        assert_eq!(
            (&doc["method"], &doc["client_ip"], &doc["headers"]),
            (&json!(""), &json!(""), &json!({}))
        );
    }
}
