//! Stage 4: may this principal do this? Decisions come from the control
//! plane and are cached under the scope they name (the exact key, or the
//! whole bucket), denials included. Explicit deny is the control plane's
//! business; here every non-allow is a deny, and any failure to decide is a
//! 503, never an allow.

use bytes::Bytes;
use moka::future::Cache;
use s3gate_proto::{
    AuthorizeRequest, ControlPlaneError, Decision, Principal, Resource, ResourceKind, Scope,
};
use s3gate_s3::request::S3Request;
use s3gate_s3::{S3Error, S3ErrorCode};

use super::authn::Authenticated;
use super::Ctx;
use crate::body::{self, Body};
use crate::error::Error;

pub type DecisionCache = Cache<DecisionKey, Decision>;

/// A decision cache holding at most about `max_bytes` of entries.
pub fn decision_cache(max_bytes: u64) -> DecisionCache {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|k: &DecisionKey, v: &Decision| -> u32 {
            // Heap bytes of the key and value plus moka's per-entry overhead
            // (measured: ~700 B for a typical exact-scope entry).
            let heap = k.bucket.len() + k.key.as_deref().map_or(0, str::len) + v.reason.len();
            u32::try_from(heap + 512).unwrap_or(u32::MAX)
        })
        .expire_after(crate::cache::ByValueTtl)
        .support_invalidation_closures()
        .build()
}

/// Cache key of a decision. `key` is `None` for bucket-scoped entries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    principal: Principal,
    action: &'static str,
    bucket: String,
    kind: ResourceKind,
    key: Option<String>,
}

/// Proof that the request was authorized.
#[derive(Debug)]
pub struct Granted {
    pub reason: String,
}

/// Largest DeleteObjects document accepted (1000 keys of 1 KiB, plus XML).
const MAX_DELETE_BODY: usize = 2 << 20;

pub async fn check(cx: &Ctx, who: &Authenticated, req: &S3Request) -> Result<Granted, Error> {
    let bucket = req.bucket.as_deref().unwrap_or_default();
    let resource = match (&req.op, &req.key) {
        (_, Some(k)) if req.is_list() => Resource::Prefix(k.clone()),
        (_, Some(k)) => Resource::Object(k.clone()),
        (_, None) => Resource::Bucket,
    };
    let granted = decide(cx, &who.principal, req.action, bucket, resource).await?;
    if let Some(src) = &req.copy_source {
        decide(
            cx,
            &who.principal,
            "s3:GetObject",
            &src.bucket,
            Resource::Object(src.key.clone()),
        )
        .await?;
    }
    Ok(granted)
}

/// Authorizes s3:DeleteObject for every key named in a DeleteObjects body.
/// The (small) body is collected through its verifier first, so its keys are
/// only trusted once the payload signature holds.
pub async fn check_delete_objects(
    cx: &Ctx,
    who: &Authenticated,
    bucket: &str,
    body: Body,
) -> Result<Body, Error> {
    let bytes = body::collect_limited(body, MAX_DELETE_BODY)
        .await
        .map_err(|e| match e.downcast::<S3Error>() {
            Ok(s3) => Error::S3(*s3),
            Err(other) => Error::S3(S3Error::new(
                S3ErrorCode::IncompleteBody,
                format!("could not read the request body: {other}"),
            )),
        })?;
    for key in delete_keys(&bytes)? {
        decide(
            cx,
            &who.principal,
            "s3:DeleteObject",
            bucket,
            Resource::Object(key),
        )
        .await?;
    }
    Ok(body::full(bytes))
}

fn delete_keys(xml: &Bytes) -> Result<Vec<String>, Error> {
    use quick_xml::events::Event;
    let malformed = || {
        Error::S3(S3Error::new(
            S3ErrorCode::MalformedXML,
            "The XML you provided was not well-formed or did not validate against our published schema.",
        ))
    };
    let mut reader = quick_xml::Reader::from_reader(xml.as_ref());
    let mut keys = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf).map_err(|_| malformed())? {
            Event::Start(e) => path.push(e.local_name().as_ref().to_vec()),
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let in_key = path.len() == 3
                    && path[0] == b"Delete"
                    && path[1] == b"Object"
                    && path[2] == b"Key";
                if in_key {
                    let text = t.unescape().map_err(|_| malformed())?;
                    keys.push(text.into_owned());
                }
            }
            Event::CData(t) if path.len() == 3 && path[2] == b"Key" => {
                keys.push(String::from_utf8(t.into_inner().into_owned()).map_err(|_| malformed())?);
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if keys.is_empty() || keys.len() > 1000 {
        return Err(malformed());
    }
    Ok(keys)
}

async fn decide(
    cx: &Ctx,
    principal: &Principal,
    action: &'static str,
    bucket: &str,
    resource: Resource,
) -> Result<Granted, Error> {
    let wide = DecisionKey {
        principal: principal.clone(),
        action,
        bucket: bucket.to_owned(),
        kind: resource.kind(),
        key: None,
    };
    let decision = match cx.decisions.get(&wide).await {
        Some(d) => d,
        None => {
            let exact = DecisionKey {
                key: resource.key().map(str::to_owned),
                ..wide.clone()
            };
            let ask = AuthorizeRequest {
                principal: principal.clone(),
                action: std::borrow::Cow::Borrowed(action),
                bucket: bucket.to_owned(),
                resource,
            };
            let decision = cx
                .decisions
                .try_get_with(exact, cx.control_plane.authorize(ask))
                .await
                .map_err(|e| match &*e {
                    ControlPlaneError::Unavailable(m) => Error::ControlPlane(m.clone()),
                    other => Error::ControlPlane(other.to_string()),
                })?;
            if decision.scope == Scope::Bucket {
                cx.decisions.insert(wide, decision.clone()).await;
            }
            decision
        }
    };
    if decision.allow {
        Ok(Granted {
            reason: decision.reason,
        })
    } else {
        Err(Error::Denied {
            reason: decision.reason,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn delete_keys_parse() {
        let xml = Bytes::from_static(
            b"<?xml version=\"1.0\"?><Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Object><Key>a&amp;b</Key></Object><Object><Key>c/d</Key><VersionId>1</VersionId></Object><Quiet>true</Quiet></Delete>",
        );
        assert_eq!(delete_keys(&xml).unwrap(), vec!["a&b", "c/d"]);
        assert!(delete_keys(&Bytes::from_static(b"<Delete></Delete>")).is_err());
        assert!(delete_keys(&Bytes::from_static(
            b"<Delete><Object><Key>x</Nope></Object></Delete>"
        ))
        .is_err());
    }
}
