//! Stage 3: where does this bucket live, and with which credentials do we
//! sign for it? Routes come from the control plane, cached per bucket for
//! the TTL it names, together with the pooled client for the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use s3gate_proto::{Backend, BackendAuth, Principal, Route};
use s3gate_s3::request::CopySource;
use s3gate_s3::sigv4::Signer;
use s3gate_s3::{S3Error, S3ErrorCode};

use super::Ctx;
use crate::error::Error;
use crate::upstream::Upstream;

pub type RouteCache = Cache<String, Arc<RouteEntry>>;

/// Bucket names the control plane recently said nothing serves: a storm of
/// requests for a name that does not exist costs one control-plane call
/// per [`UNKNOWN_BUCKET_TTL`]. Forgotten when bucket entries change.
pub type UnknownBuckets = Cache<String, ()>;

/// How long an unknown bucket name is remembered: short, so that a bucket
/// entry added while the Watch stream is down still shows soon.
pub const UNKNOWN_BUCKET_TTL: Duration = Duration::from_secs(5);

pub fn unknown_buckets(capacity: u64) -> UnknownBuckets {
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(UNKNOWN_BUCKET_TTL)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::UnknownBuckets,
        ))
        .build()
}

/// Buckets' CORS rules fetched for preflights (and cross-origin responses)
/// when the bucket's shared route is not cached: a bucket whose credentials
/// are per principal never has one, and a preflight has no principal.
pub type CorsCache = Cache<String, Arc<CorsEntry>>;

/// A bucket's compiled CORS rules and how long they may be cached.
pub struct CorsEntry {
    pub rules: Arc<super::cors::Rules>,
    ttl: Duration,
}

/// Routes of buckets whose credentials are per principal, by (bucket,
/// principal name). Only such buckets have entries here: a shared route
/// lives in the [`RouteCache`] and is found there first.
pub type PrincipalRouteCache = Cache<(String, Arc<str>), Arc<RouteEntry>>;

/// A route plus what it takes to use it, built once per cache fill.
pub struct RouteEntry {
    pub route: Route,
    /// The backend's client and pool.
    pub upstream: Arc<Upstream>,
    /// How backend requests are authenticated, built once per fill.
    pub auth: UpstreamAuth,
    /// Where backend requests go (URL scheme, authority, `Host`), parsed
    /// once per fill; a bad endpoint fails each request routed here.
    pub target: Result<super::forward::Target, super::forward::TargetError>,
    /// The bucket's CORS rules, compiled; cached and invalidated with the
    /// route.
    pub cors: Arc<super::cors::Rules>,
    /// When the cache entry ends ([`effective_ttl`] from the fill).
    pub expires: Instant,
}

impl RouteEntry {
    /// The entry as a per-worker front copies it.
    pub fn stamped(self: &Arc<Self>) -> crate::cache::Stamped<Arc<Self>> {
        crate::cache::Stamped {
            value: self.clone(),
            expires: self.expires,
        }
    }
}

/// The backend credentials in the form a request takes them.
pub enum UpstreamAuth {
    /// Signed with SigV4 (the signer keeps the day's signing key, its
    /// HMAC already keyed: a few hundred bytes, boxed).
    SigV4(Box<Signer>),
    /// `Authorization: Bearer …` (marked sensitive, so no HTTP layer logs
    /// it) and, when set, `ibm-service-instance-id`.
    Bearer {
        authorization: http::HeaderValue,
        service_instance_id: Option<http::HeaderValue>,
    },
}

struct RouteTtl;

impl<K> Expiry<K, Arc<RouteEntry>> for RouteTtl {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Arc<RouteEntry>,
        at: Instant,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(at))
    }
}

/// How long a route may be cached: its TTL, but never past one minute
/// before its credentials expire (so requests never sign with expired ones).
fn effective_ttl(route: &Route, now: i64) -> Duration {
    match route.credentials.expires_unix {
        Some(expires) => {
            let left = u64::try_from(expires.saturating_sub(now).saturating_sub(60)).unwrap_or(0);
            route.ttl.min(Duration::from_secs(left))
        }
        None => route.ttl,
    }
}

struct CorsTtl;

impl Expiry<String, Arc<CorsEntry>> for CorsTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<CorsEntry>,
        _at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub fn cors_cache(capacity: u64) -> CorsCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(CorsTtl)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Cors,
        ))
        .build()
}

pub fn cache(capacity: u64) -> RouteCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(RouteTtl)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::Routes,
        ))
        .build()
}

pub fn principal_cache(capacity: u64) -> PrincipalRouteCache {
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(RouteTtl)
        .eviction_listener(crate::cache::count_evictions(
            s3gate_observe::CacheKind::PrincipalRoutes,
        ))
        .build()
}

/// The bucket's CORS rules (preflights, which run before and without
/// authentication, and cross-origin responses). From the shared route when
/// it is cached; otherwise the control plane is asked for the rules alone,
/// never for credentials: a preflight has no principal, and a bucket whose
/// credentials are per principal has no shared route to give.
pub async fn cors_rules(cx: &Ctx, bucket: &str) -> Result<Arc<super::cors::Rules>, Error> {
    if let Some(entry) = crate::cache::seen(
        s3gate_observe::CacheKind::Routes,
        cx.routes.get(bucket).await,
    ) {
        return Ok(entry.cors.clone());
    }
    if let Some(entry) =
        crate::cache::seen(s3gate_observe::CacheKind::Cors, cx.cors.get(bucket).await)
    {
        return Ok(entry.rules.clone());
    }
    let entry = cx
        .cors
        .try_get_with(bucket.to_owned(), async {
            let cors = cx.control_plane.bucket_cors(bucket).await?;
            Ok::<_, Error>(Arc::new(CorsEntry {
                rules: Arc::new(super::cors::Rules::compile(&cors.rules)),
                ttl: cors.ttl,
            }))
        })
        .await
        .map_err(shared_error)?;
    Ok(entry.rules.clone())
}

/// The route for an authenticated principal. A bucket with shared
/// credentials costs one cache lookup, as [`lookup`] does; a bucket whose
/// credentials are per principal misses there and is found by (bucket,
/// principal). On a miss the control plane is asked with the principal,
/// and its answer says which cache the route belongs in.
pub async fn lookup_for(
    cx: &Ctx,
    bucket: &str,
    principal: &Principal,
) -> Result<Arc<RouteEntry>, Error> {
    let generation = cx.generation.current();
    if let Some(entry) = cx.front_routes.get(bucket, generation) {
        return Ok(crate::cache::front_hit(
            s3gate_observe::CacheKind::Routes,
            entry,
        ));
    }
    if let Some(entry) = crate::cache::seen(
        s3gate_observe::CacheKind::Routes,
        cx.routes.get(bucket).await,
    ) {
        cx.front_routes
            .insert(bucket.to_owned(), entry.stamped(), generation);
        return Ok(entry);
    }
    let key = (bucket.to_owned(), principal.name.clone());
    if let Some(entry) = crate::cache::seen(
        s3gate_observe::CacheKind::PrincipalRoutes,
        cx.principal_routes.get(&key).await,
    ) {
        return Ok(entry);
    }
    if crate::cache::seen_key(
        s3gate_observe::CacheKind::UnknownBuckets,
        cx.unknown_buckets.contains_key(bucket),
    ) {
        return Err(Error::NoSuchBucket);
    }
    // Boxed: the miss path's future is large and rare; kept inline it
    // would grow every request's future (see `pipeline::handle`).
    let entry = match Box::pin(
        cx.principal_routes
            .try_get_with(key.clone(), fill(cx, bucket, Some(principal))),
    )
    .await
    .map_err(shared_error)
    {
        Ok(entry) => entry,
        Err(Error::NoSuchBucket) => {
            cx.unknown_buckets.insert(bucket.to_owned(), ()).await;
            return Err(Error::NoSuchBucket);
        }
        Err(e) => return Err(e),
    };
    if !entry.route.credentials.per_principal {
        // Shared after all: one entry for everyone.
        cx.routes.insert(bucket.to_owned(), entry.clone()).await;
        cx.principal_routes.invalidate(&key).await;
    }
    Ok(entry)
}

fn shared_error(e: Arc<Error>) -> Error {
    match &*e {
        Error::NoSuchBucket => Error::NoSuchBucket,
        Error::S3(e) => Error::S3(e.clone()),
        Error::ControlPlane(m) => Error::ControlPlane(m.clone()),
        Error::Config(m) => Error::Config(m.clone()),
        other => Error::ControlPlane(other.to_string()),
    }
}

async fn fill(
    cx: &Ctx,
    bucket: &str,
    principal: Option<&Principal>,
) -> Result<Arc<RouteEntry>, Error> {
    let route = match principal {
        Some(p) => cx.control_plane.route_for(bucket, p).await?,
        None => cx.control_plane.route(bucket).await?,
    };
    let upstream = cx
        .upstreams
        .for_backend(&route.backend)
        .map_err(|m| Error::Config(format!("backend {}: {m}", route.backend.name)))?;
    let auth =
        upstream_auth(&route.credentials.auth, &route.backend).map_err(Error::ControlPlane)?;
    let now = Instant::now();
    let ttl = effective_ttl(&route, crate::unix_now());
    let target = super::forward::Target::new(
        &route.backend.endpoint,
        route.backend.addressing_style,
        &route.backend_bucket,
    );
    Ok(Arc::new(RouteEntry {
        target,
        cors: Arc::new(super::cors::Rules::compile(&route.cors)),
        expires: now.checked_add(ttl).unwrap_or(now),
        route,
        upstream,
        auth,
    }))
}

/// Backend credentials in the form a request takes them: a signer for the
/// backend's region, or the bearer headers.
pub fn upstream_auth(auth: &BackendAuth, backend: &Backend) -> Result<UpstreamAuth, String> {
    Ok(match auth {
        BackendAuth::SigV4 {
            access_key,
            secret_key,
            session_token,
        } => UpstreamAuth::SigV4(Box::new(
            Signer::new(
                access_key.clone(),
                secret_key.expose().clone(),
                session_token.as_ref().map(|t| t.expose().as_str()),
                backend.region.clone(),
                "s3",
            )
            .map_err(|e| format!("backend {}: {e}", backend.name))?,
        )),
        BackendAuth::Bearer {
            token,
            service_instance_id,
        } => {
            let bad = || {
                format!(
                    "backend {}: the bearer credential is not a valid header value",
                    backend.name
                )
            };
            let mut authorization =
                http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| bad())?;
            authorization.set_sensitive(true);
            let service_instance_id = service_instance_id
                .as_deref()
                .map(http::HeaderValue::from_str)
                .transpose()
                .map_err(|_| bad())?;
            UpstreamAuth::Bearer {
                authorization,
                service_instance_id,
            }
        }
    })
}

/// The route of a CopyObject source. A copy runs inside one backend, so the
/// source bucket must live on the same backend as the destination.
pub async fn lookup_copy_source(
    cx: &Ctx,
    dest: &RouteEntry,
    src: &CopySource,
    principal: &Principal,
) -> Result<Arc<RouteEntry>, Error> {
    let entry = lookup_for(cx, &src.bucket, principal).await?;
    if entry.route.backend.name != dest.route.backend.name {
        return Err(S3Error::new(
            S3ErrorCode::NotImplemented,
            "copying between buckets on different backends is not supported",
        )
        .into());
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use s3gate_proto::{AddressingStyle, Backend, BackendCredentials};

    use super::*;

    #[test]
    fn ttl_stops_short_of_credential_expiry() {
        let route = |expires_unix| Route {
            bucket: "b".into(),
            backend_bucket: "b".into(),
            backend: Arc::new(Backend {
                name: "x".into(),
                endpoint: "http://127.0.0.1:1".into(),
                region: "us-east-1".into(),
                addressing_style: AddressingStyle::Path,
                ca_bundle: None,
                insecure_skip_verify: false,
                key_segment_guard: true,
                egress: Default::default(),
                limits: Default::default(),
            }),
            credentials: Arc::new(BackendCredentials {
                auth: BackendAuth::SigV4 {
                    access_key: "a".into(),
                    secret_key: s3gate_proto::Redacted::new("s"),
                    session_token: None,
                },
                expires_unix,
                per_principal: false,
            }),
            ttl: Duration::from_secs(300),
            cors: Arc::from([]),
        };
        assert_eq!(effective_ttl(&route(None), 1000), Duration::from_secs(300));
        assert_eq!(
            effective_ttl(&route(Some(1000 + 120)), 1000),
            Duration::from_secs(60)
        );
        assert_eq!(effective_ttl(&route(Some(1000 + 30)), 1000), Duration::ZERO);
        assert_eq!(
            effective_ttl(&route(Some(5000)), 1000),
            Duration::from_secs(300)
        );
    }
}
