//! Stage 4: may this principal do this? Decisions come from the control
//! plane and are cached under the scope they name (the exact key, every key
//! under a prefix, or the whole bucket), denials included. Explicit deny is the control plane's
//! business; here every non-allow is a deny, and any failure to decide is a
//! 503, never an allow.

use std::borrow::Cow;
use std::sync::Arc;

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
use crate::cache::{PrefixCache, Stamped};
use crate::error::Error;
use crate::limits::Reservation;

pub type DecisionCache = Cache<DecisionKey, Stamped<Decision>>;

/// A decision cache holding at most about `max_bytes` of entries.
pub fn decision_cache(max_bytes: u64) -> DecisionCache {
    Cache::builder()
        .max_capacity(max_bytes)
        .weigher(|k: &DecisionKey, v: &Stamped<Decision>| -> u32 {
            // Heap bytes of the key and value plus moka's per-entry overhead
            // (measured: ~700 B for a typical exact-scope entry).
            let heap = k.bucket.len() + k.key.as_deref().map_or(0, str::len) + v.value.reason.len();
            u32::try_from(heap + 512).unwrap_or(u32::MAX)
        })
        .expire_after(crate::cache::ByStamp)
        .support_invalidation_closures()
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Decisions,
        ))
        .build()
}

/// Prefix-scoped decisions, under the wide (bucket) key of their requests.
pub type PrefixDecisions = PrefixCache<DecisionKey, Decision>;

/// A prefix decision cache holding at most about `max_bytes`.
pub fn prefix_cache(max_bytes: u64) -> PrefixDecisions {
    PrefixCache::new(
        s3gate_observe::CacheKind::Prefixes,
        max_bytes,
        |k| k.bucket.len(),
        |v| {
            let prefix = match &v.scope {
                Scope::Prefix(p) => p.len(),
                Scope::Exact | Scope::Bucket => 0,
            };
            v.reason.len() + prefix
        },
    )
}

/// Cache key of a decision. `key` is `None` for bucket-scoped entries (and
/// for the groups of the prefix cache).
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
    /// The client's address (`forwarded::Origin::client_ip`: the peer, or
    /// what a trusted proxy says it was).
    pub client_ip: std::net::IpAddr,
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
            client_ip: Some(self.client_ip),
            identity_source: Cow::Borrowed(self.who.source),
            claims: self.who.claims.clone().unwrap_or_default(),
            method: Cow::Owned(self.head.method.as_str().to_owned()),
            headers,
        }
    }
}

/// Proof that the request was authorized: the allowing decision, shared
/// with the cache it came from (a front hit copies no reason text).
#[derive(Debug)]
pub struct Granted {
    decision: Arc<Decision>,
}

impl Granted {
    /// Why it was allowed (for the audit log).
    pub fn reason(&self) -> &str {
        &self.decision.reason
    }

    /// What decided (`Decision::decided_by`), for the audit log.
    pub fn decided_by(&self) -> Option<&Arc<str>> {
        self.decision.decided_by.as_ref()
    }
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

pub(crate) async fn decide(
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
    let generation = cx.generation.current();
    let decision = if let Some(d) = cx.front_decisions.get(&wide, generation) {
        crate::cache::front_hit(s3gate_observe::CacheKind::Decisions, d)
    } else if let Some(d) = crate::cache::seen(
        s3gate_observe::CacheKind::Decisions,
        cx.decisions.get(&wide).await,
    ) {
        let decision = Arc::new(d.value);
        let copy = Stamped {
            value: decision.clone(),
            expires: d.expires,
        };
        cx.front_decisions.insert(wide, copy, generation);
        decision
    } else if let Some(d) = crate::cache::seen(
        s3gate_observe::CacheKind::Prefixes,
        prefixed(cx, &wide, &resource).await,
    ) {
        Arc::new(d)
    } else {
        // Boxed: a miss's future is large and rare (see `pipeline::handle`).
        Arc::new(Box::pin(ask(cx, asker, wide, resource)).await?)
    };
    if decision.allow {
        Ok(Granted { decision })
    } else {
        Err(Error::Denied {
            reason: decision.reason.clone(),
            decided_by: decision.decided_by.clone(),
        })
    }
}

/// A cached prefix-scoped decision covering `resource`'s key, if any.
async fn prefixed(cx: &Ctx, wide: &DecisionKey, resource: &Resource) -> Option<Decision> {
    cx.prefixes.get(wide, resource.key()?).await
}

/// Asks the control plane (once for concurrent askers of the same exact
/// key) and caches the answer under the exact key and the scope it names.
async fn ask(
    cx: &Ctx,
    asker: &Asker<'_>,
    wide: DecisionKey,
    resource: Resource,
) -> Result<Decision, Error> {
    let key = resource.key().map(str::to_owned);
    let exact = DecisionKey {
        key: key.clone(),
        ..wide.clone()
    };
    let ask = AuthorizeRequest {
        principal: wide.principal.clone(),
        action: std::borrow::Cow::Borrowed(wide.action),
        bucket: wide.bucket.clone(),
        resource,
        context: asker.context(),
    };
    let stamped = cx
        .decisions
        .try_get_with(exact, async {
            cx.control_plane.authorize(ask).await.map(Stamped::new)
        })
        .await
        .map_err(|e| Error::from(&*e))?;
    let decision = stamped.value.clone();
    match &decision.scope {
        // Under the bucket-wide key too, ending when the exact entry does.
        Scope::Bucket => cx.decisions.insert(wide, stamped).await,
        // A prefix that does not cover the key breaks the contract: keep
        // the answer for the exact key only.
        Scope::Prefix(p) if key.is_some_and(|k| k.starts_with(p.as_str())) => {
            cx.prefixes
                .insert(wide, p, decision.clone(), decision.ttl)
                .await
        }
        Scope::Prefix(_) | Scope::Exact => {}
    }
    Ok(decision)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use s3gate_proto::{
        ControlPlane, ControlPlaneError, Invalidation, Route, SigningKeyGrant, SigningKeyRequest,
    };

    use super::*;
    use crate::Config;

    /// Decides with `policy` (key → allow, scope) and counts the calls.
    struct Scripted {
        policy: fn(&str) -> (bool, Scope),
        ttl: Duration,
        calls: AtomicUsize,
        last_context: std::sync::Mutex<Option<RequestContext>>,
    }

    #[async_trait]
    impl ControlPlane for Scripted {
        async fn signing_key(
            &self,
            _req: SigningKeyRequest,
        ) -> Result<SigningKeyGrant, ControlPlaneError> {
            Err(ControlPlaneError::UnknownAccessKey)
        }

        async fn authenticate(
            &self,
            _credential: s3gate_proto::PresentedCredential,
        ) -> Result<s3gate_proto::Identity, ControlPlaneError> {
            Err(ControlPlaneError::NotAuthenticated("scripted".into()))
        }

        async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_context.lock() {
                *last = Some(req.context.clone());
            }
            let (allow, scope) = (self.policy)(req.resource.key().unwrap_or_default());
            Ok(Decision {
                allow,
                reason: format!("scripted {allow}"),
                scope,
                ttl: self.ttl,
                decided_by: None,
            })
        }

        async fn route(&self, _bucket: &str) -> Result<Route, ControlPlaneError> {
            Err(ControlPlaneError::NoSuchBucket)
        }

        async fn visible_buckets(&self, _p: &Principal) -> Result<Vec<String>, ControlPlaneError> {
            Ok(Vec::new())
        }
    }

    /// Alice may do anything under `home/alice/`; everything else is denied,
    /// settled one byte after the key leaves `home/alice/`.
    fn home(key: &str) -> (bool, Scope) {
        const HOME: &str = "home/alice/";
        if key.starts_with(HOME) {
            return (true, Scope::Prefix(HOME.to_owned()));
        }
        let d = key
            .bytes()
            .zip(HOME.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        match key.get(..d + 1) {
            Some(p) => (false, Scope::Prefix(p.to_owned())),
            None => (false, Scope::Exact),
        }
    }

    struct Harness {
        cx: Ctx,
        cp: Arc<Scripted>,
        alice: Authenticated,
        head: Parts,
        client_ip: std::net::IpAddr,
    }

    impl Harness {
        fn new(policy: fn(&str) -> (bool, Scope), ttl: Duration) -> Self {
            let cp = Arc::new(Scripted {
                policy,
                ttl,
                calls: AtomicUsize::new(0),
                last_context: Default::default(),
            });
            let (mut head, ()) = http::Request::put("/data/k")
                .header("content-type", "text/csv")
                .header("x-amz-meta-not-for-policy", "x")
                .body(())
                .unwrap()
                .into_parts();
            head.headers
                .insert("x-amz-storage-class", "STANDARD".parse().unwrap());
            Self {
                cx: Ctx::new(Config::default(), cp.clone()),
                cp,
                alice: Authenticated {
                    principal: Principal {
                        name: Arc::from("alice"),
                        groups: Arc::from(Vec::<Arc<str>>::new()),
                        access_key: None,
                    },
                    source: "key",
                    payload: s3gate_s3::sigv4::PayloadMode::Unsigned,
                    chunk_signing: None,
                    claims: None,
                },
                head,
                client_ip: "192.0.2.7".parse().unwrap(),
            }
        }

        /// Whether alice may GetObject `key`.
        async fn get(&self, key: &str) -> bool {
            let object = Resource::Object(key.to_owned());
            self.ask("s3:GetObject", object).await
        }

        async fn ask(&self, action: &'static str, resource: Resource) -> bool {
            let asker = Asker {
                who: &self.alice,
                head: &self.head,
                client_ip: self.client_ip,
            };
            decide(&self.cx, &asker, action, "data", resource)
                .await
                .is_ok()
        }

        fn calls(&self) -> usize {
            self.cp.calls.load(Ordering::SeqCst)
        }
    }

    #[tokio::test]
    async fn a_prefix_decision_answers_every_key_under_it() {
        let h = Harness::new(home, Duration::from_secs(60));
        assert!(h.get("home/alice/a").await);
        assert_eq!(h.calls(), 1);
        assert!(h.get("home/alice/b/c").await);
        assert!(h.get("home/alice/").await);
        assert_eq!(h.calls(), 1, "answered from the prefix cache");
        // Denials too.
        assert!(!h.get("home/bob/x").await);
        assert!(!h.get("home/bob/y").await);
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test]
    async fn a_key_outside_the_prefix_asks_again() {
        let h = Harness::new(home, Duration::from_secs(60));
        assert!(h.get("home/alice/a").await);
        assert!(!h.get("home/alicex").await);
        assert!(!h.get("other").await);
        assert_eq!(h.calls(), 3);
        // Another action or resource kind is another decision.
        assert!(
            h.ask("s3:PutObject", Resource::Object("home/alice/a".into()))
                .await
        );
        assert!(
            h.ask("s3:ListBucket", Resource::Prefix("home/alice/a".into()))
                .await
        );
        assert_eq!(h.calls(), 5);
    }

    #[tokio::test]
    async fn invalidations_forget_prefix_decisions() {
        let h = Harness::new(home, Duration::from_secs(60));
        assert!(h.get("home/alice/a").await);
        h.cx.invalidate(&Invalidation::Policy).await;
        assert!(h.get("home/alice/b").await);
        assert_eq!(h.calls(), 2);
        h.cx.invalidate(&Invalidation::All).await;
        assert!(h.get("home/alice/c").await);
        assert_eq!(h.calls(), 3);
        // A bucket route change leaves decisions alone.
        h.cx.invalidate(&Invalidation::Bucket("data".into())).await;
        assert!(h.get("home/alice/d").await);
        assert_eq!(h.calls(), 3);
    }

    fn everywhere(_key: &str) -> (bool, Scope) {
        (true, Scope::Bucket)
    }

    #[tokio::test]
    async fn a_bucket_decision_is_answered_by_the_front_until_invalidated() {
        let h = Harness::new(everywhere, Duration::from_secs(60));
        assert!(h.get("a").await);
        assert!(h.get("b").await, "the shared cache answers and is copied");
        assert!(h.get("c").await, "the front answers");
        assert_eq!(h.calls(), 1);
        let wide = DecisionKey {
            principal: h.alice.principal.clone(),
            action: "s3:GetObject",
            bucket: "data".into(),
            kind: s3gate_proto::ResourceKind::Object,
            key: None,
        };
        let now = h.cx.generation.current();
        assert!(h.cx.front_decisions.get(&wide, now).is_some());
        // A policy change reaches the front at once.
        h.cx.invalidate(&Invalidation::Policy).await;
        assert!(h
            .cx
            .front_decisions
            .get(&wide, h.cx.generation.current())
            .is_none());
        assert!(h.get("d").await);
        assert_eq!(h.calls(), 2);
        assert!(h.get("e").await);
        assert!(h.get("f").await);
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test]
    async fn a_bucket_decision_in_the_front_expires_with_its_ttl() {
        let h = Harness::new(everywhere, Duration::from_millis(50));
        for key in ["a", "b", "c"] {
            assert!(h.get(key).await);
        }
        assert_eq!(h.calls(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(h.get("d").await);
        assert_eq!(h.calls(), 2, "the front copy ended with the shared entry");
    }

    #[tokio::test]
    async fn prefix_decisions_expire_with_their_ttl() {
        let h = Harness::new(home, Duration::from_millis(50));
        assert!(h.get("home/alice/a").await);
        assert!(h.get("home/alice/b").await);
        assert_eq!(h.calls(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(h.get("home/alice/c").await);
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test]
    async fn a_prefix_that_does_not_cover_the_key_is_not_cached_as_one() {
        fn wrong(_key: &str) -> (bool, Scope) {
            (true, Scope::Prefix("elsewhere/".to_owned()))
        }
        let h = Harness::new(wrong, Duration::from_secs(60));
        assert!(h.get("k").await);
        assert!(h.get("elsewhere/k").await);
        assert!(h.get("k").await, "the exact key is still cached");
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test]
    async fn bucket_and_exact_scopes_are_cached_as_before() {
        fn bucket(_key: &str) -> (bool, Scope) {
            (true, Scope::Bucket)
        }
        fn exact(_key: &str) -> (bool, Scope) {
            (true, Scope::Exact)
        }
        let h = Harness::new(bucket, Duration::from_secs(60));
        assert!(h.get("a").await && h.get("b").await);
        assert_eq!(h.calls(), 1);
        let h = Harness::new(exact, Duration::from_secs(60));
        assert!(h.get("a").await && h.get("a").await && h.get("ab").await);
        assert_eq!(h.calls(), 2);
    }

    #[tokio::test]
    async fn a_miss_sends_the_request_context() {
        let h = Harness::new(home, Duration::from_secs(60));
        assert!(h.get("home/alice/a").await);
        let context = h.cp.last_context.lock().unwrap().clone().unwrap();
        assert_eq!(context.client_ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(context.identity_source, "key");
        assert_eq!(context.method, "PUT");
        assert_eq!(
            context.headers,
            vec![
                ("content-type", "text/csv".to_owned()),
                ("x-amz-storage-class", "STANDARD".to_owned()),
            ]
        );
        assert!(context.claims.is_empty());
    }

    #[tokio::test]
    async fn a_tokens_source_and_claims_reach_the_policy() {
        let mut h = Harness::new(home, Duration::from_secs(60));
        h.alice.source = "jwt";
        h.alice.claims = Some(Arc::from(vec![
            ("email".to_owned(), "alice@example.com".to_owned()),
            ("groups".to_owned(), r#"["analysts"]"#.to_owned()),
        ]));
        assert!(h.get("home/alice/a").await);
        let context = h.cp.last_context.lock().unwrap().clone().unwrap();
        assert_eq!(context.identity_source, "jwt");
        assert_eq!(context.claims[0].1, "alice@example.com");
        assert_eq!(context.claims.len(), 2);
    }
}
