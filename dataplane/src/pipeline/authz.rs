//! Stage 4: may this principal do this? Decisions come from the control
//! plane and are cached under the scope they name (the exact key, or the
//! whole bucket), denials included. Explicit deny is the control plane's
//! business; here every non-allow is a deny, and any failure to decide is a
//! 503, never an allow.

use std::borrow::Cow;

use bytes::Bytes;
use http::request::Parts;
use moka::future::Cache;
use s3gate_proto::{
    AuthorizeRequest, Decision, Principal, RequestContext, Resource, ResourceKind, Scope,
};
use s3gate_s3::delete::DeleteRequest;
use s3gate_s3::request::S3Request;

use super::authn::Authenticated;
use super::Ctx;
use crate::body::{self, Body};
use crate::error::Error;
use crate::limits::Reservation;
use crate::listen::ConnInfo;

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

/// Who asks, and under which circumstances: what every decision of one
/// request shares.
pub struct Asker<'a> {
    pub who: &'a Authenticated,
    pub head: &'a Parts,
    pub conn: &'a ConnInfo,
}

impl Asker<'_> {
    /// The request context sent with a decision the cache cannot answer
    /// (so it is built on misses only).
    fn context(&self) -> RequestContext {
        let headers = RequestContext::HEADERS
            .iter()
            .filter_map(|&name| {
                let value = self.head.headers.get(name)?.to_str().ok()?;
                Some((name, value.to_owned()))
            })
            .collect();
        RequestContext {
            client_ip: Some(self.conn.peer.ip()),
            identity_source: Cow::Borrowed(self.who.source),
            claims: Default::default(),
            method: Cow::Owned(self.head.method.as_str().to_owned()),
            headers,
        }
    }
}

/// Proof that the request was authorized.
#[derive(Debug)]
pub struct Granted {
    pub reason: String,
}

/// Largest DeleteObjects document accepted (1000 keys of 1 KiB, plus XML).
const MAX_DELETE_BODY: usize = 2 << 20;

pub async fn check(cx: &Ctx, asker: &Asker<'_>, req: &S3Request) -> Result<Granted, Error> {
    let bucket = req.bucket.as_deref().unwrap_or_default();
    let resource = match (&req.op, &req.key) {
        (_, Some(k)) if req.is_list() => Resource::Prefix(k.clone()),
        (_, Some(k)) => Resource::Object(k.clone()),
        (_, None) => Resource::Bucket,
    };
    // Every action the request needs, each on its own: a deny of any wins.
    for action in &req.also {
        decide(cx, asker, action, bucket, resource.clone()).await?;
    }
    let granted = decide(cx, asker, req.action, bucket, resource).await?;
    if let Some(src) = &req.copy_source {
        let source = Resource::Object(src.key.clone());
        if src.version_id.is_some() {
            decide(
                cx,
                asker,
                "s3:GetObjectVersion",
                &src.bucket,
                source.clone(),
            )
            .await?;
        }
        decide(cx, asker, "s3:GetObject", &src.bucket, source).await?;
    }
    Ok(granted)
}

/// Reads a request document the gateway must see whole before it can
/// authorize (DeleteObjects): through its verifier, so its content is only
/// trusted once the payload signature holds; within the body deadline; and
/// charged to the buffer budget.
pub async fn read_document(cx: &Ctx, body: Body, budget: &mut Reservation) -> Result<Bytes, Error> {
    tokio::time::timeout(
        cx.cfg.limits.body_deadline,
        body::collect_limited(body, MAX_DELETE_BODY, budget),
    )
    .await
    .map_err(|_| Error::body_deadline())?
    .map_err(Error::from_collect)
}

/// Authorizes every object a DeleteObjects document names: `s3:DeleteObject`
/// on each key, `s3:DeleteObjectVersion` as well where a version is named,
/// and whatever the request's headers add. On a refusal, says which key.
pub async fn check_delete_objects(
    cx: &Ctx,
    asker: &Asker<'_>,
    req: &S3Request,
    bucket: &str,
    doc: &DeleteRequest,
) -> Result<(), (Error, String)> {
    for object in &doc.objects {
        let version = object.version_id.as_ref().map(|_| "s3:DeleteObjectVersion");
        let actions = std::iter::once("s3:DeleteObject")
            .chain(version)
            .chain(req.also.iter().copied());
        for action in actions {
            decide(
                cx,
                asker,
                action,
                bucket,
                Resource::Object(object.key.clone()),
            )
            .await
            .map_err(|e| (e, object.key.clone()))?;
        }
    }
    Ok(())
}

async fn decide(
    cx: &Ctx,
    asker: &Asker<'_>,
    action: &'static str,
    bucket: &str,
    resource: Resource,
) -> Result<Granted, Error> {
    let principal = &asker.who.principal;
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
                context: asker.context(),
            };
            let decision = cx
                .decisions
                .try_get_with(exact, cx.control_plane.authorize(ask))
                .await
                .map_err(|e| Error::from(&*e))?;
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
