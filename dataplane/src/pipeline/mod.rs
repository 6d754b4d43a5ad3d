//! The request pipeline. Each stage is one module with one job and a typed
//! output that proves it ran:
//!
//! | stage     | in → out                                        | I/O                       |
//! |-----------|-------------------------------------------------|---------------------------|
//! | sts       | STS call (before authn) → STS XML answer        | control plane             |
//! | parse     | request head → `S3Request`                      | none                      |
//! | authn     | head + `ConnInfo` → `Authenticated`             | control plane on miss     |
//! | authz     | principal + `S3Request` → `Granted`             | control plane on miss     |
//! | route     | bucket → `RouteEntry` (backend, creds, client)  | control plane on miss     |
//! | payload   | body + payload mode → verified `Body`           | none (wraps the stream)   |
//! | forward   | `RouteEntry` + head + body → cleaned response   | backend                   |
//! | respond   | result + `Exchange` → response, XML, access log | none                      |
//!
//! The request's shape is classified first but acted on only after
//! authentication (see [`handle`]). Two things sit beside the stages, in
//! `cors`: an `OPTIONS` preflight is answered before authentication from
//! the bucket's CORS rules (and nothing else happens), and a response to a
//! request carrying `Origin` gets the CORS headers of the matching rule.
//! ListBuckets, which names no bucket, is answered by `listing` (every
//! backend listed, names mapped back, filtered by s3:ListBucket).

pub mod authn;
pub mod authz;
pub mod cors;
pub mod forward;
pub mod forwarded;
pub mod listing;
pub mod parse;
pub mod payload;
pub mod respond;
pub mod route;
pub mod sts;

/// Awaits one stage of a request. When the request's trace is recorded
/// (`Exchange::traced`) the stage runs inside its own span, a child of the
/// request's; otherwise (an unsampled request makes no stage spans, only
/// the request span whose context it passes on) it is awaited bare:
/// wrapping it in a disabled span's `Instrumented` still moved the whole
/// stage future once more, on every request.
macro_rules! staged {
    ($ex:expr, $name:literal, $stage:expr) => {
        if $ex.traced {
            $stage
                .instrument(tracing::info_span!(target: s3gate_proto::trace::TARGET, $name))
                .await
        } else {
            $stage.await
        }
    };
}

pub(crate) mod spans;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::{Method, Request, Response};
use s3gate_proto::{ControlPlane, Invalidation};
use s3gate_s3::request::{Op, S3Request};
use tracing::Instrument as _;

use crate::body::{self, Body, ClientBody, FailureSlot};
use crate::cache::{Front, Generation};
use crate::error::Error;
use crate::limits::Budget;
use crate::listen::ConnInfo;
use crate::upstream::Upstreams;
use crate::Config;

/// Memory for verified bearer tokens' identities.
const TOKEN_CACHE_BYTES: u64 = 32 << 20;

/// Everything a request needs, shared by all connections.
pub struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) control_plane: Arc<dyn ControlPlane>,
    pub(crate) keys: authn::KeyCache,
    /// Access keys the control plane recently did not know.
    pub(crate) unknown_keys: authn::UnknownKeys,
    /// Identities of client certificates (mTLS).
    pub(crate) certs: authn::CertCache,
    /// SigV2 requests the control plane verified.
    pub(crate) sigv2: authn::SigV2Cache,
    /// Identities of verified bearer tokens, by the token's SHA-256.
    pub(crate) tokens: authn::TokenCache,
    pub(crate) decisions: authz::DecisionCache,
    /// Prefix-scoped decisions; forgotten whenever `decisions` is.
    pub(crate) prefixes: authz::PrefixDecisions,
    pub(crate) routes: route::RouteCache,
    pub(crate) principal_routes: route::PrincipalRouteCache,
    /// Bucket names nothing serves, remembered briefly.
    pub(crate) unknown_buckets: route::UnknownBuckets,
    /// CORS rules of buckets whose shared route is not cached; forgotten
    /// with the routes.
    pub(crate) cors: route::CorsCache,
    /// Per-worker copies of the hottest entries of `keys`, `decisions`
    /// and `routes` (see `cache::Front`), good until the next invalidation
    /// of any kind.
    pub(crate) front_keys: Front<String, s3gate_proto::SigningKeyGrant>,
    pub(crate) front_decisions: Front<authz::DecisionKey, Arc<s3gate_proto::Decision>>,
    pub(crate) front_routes: Front<String, Arc<route::RouteEntry>>,
    /// Advanced after every invalidation, once the shared caches forgot.
    pub(crate) generation: Generation,
    pub(crate) upstreams: Upstreams,
    /// Bytes buffered on requests' behalf, for all of them together.
    pub(crate) budget: Arc<Budget>,
    request_ids: RequestIds,
}

impl Ctx {
    pub fn new(cfg: Config, control_plane: Arc<dyn ControlPlane>) -> Self {
        Self {
            keys: authn::key_cache(cfg.key_cache_capacity),
            unknown_keys: authn::unknown_keys(cfg.key_cache_capacity),
            certs: authn::cert_cache(cfg.key_cache_capacity),
            sigv2: authn::sigv2_cache(cfg.key_cache_capacity),
            tokens: authn::token_cache(TOKEN_CACHE_BYTES),
            // A quarter of the decision budget goes to prefix-scoped ones.
            decisions: authz::decision_cache(
                cfg.decision_cache_bytes - cfg.decision_cache_bytes / 4,
            ),
            prefixes: authz::prefix_cache(cfg.decision_cache_bytes / 4),
            routes: route::cache(cfg.route_cache_capacity),
            principal_routes: route::principal_cache(cfg.route_cache_capacity),
            unknown_buckets: route::unknown_buckets(cfg.route_cache_capacity),
            cors: route::cors_cache(cfg.route_cache_capacity),
            front_keys: Front::default(),
            front_decisions: Front::default(),
            front_routes: Front::default(),
            generation: Generation::default(),
            upstreams: Upstreams::new(cfg.upstream_connect_timeout, cfg.proxy_env.clone())
                .skipping(forward::skipped_at_parse),
            budget: Budget::new(cfg.limits.buffer_budget),
            request_ids: RequestIds::new(),
            control_plane,
            cfg,
        }
    }
}

impl Ctx {
    /// Forgets what an invalidation names. Revoking a key drops its signing
    /// keys (decisions are per principal and unreachable without them).
    pub(crate) async fn invalidate(&self, inv: &Invalidation) {
        match inv {
            Invalidation::Key(access_key) => {
                self.unknown_keys.invalidate(access_key.as_str()).await;
                let access_key = access_key.clone();
                let sigv2_key = access_key.clone();
                if let Err(error) = self
                    .keys
                    .invalidate_entries_if(move |k, _| authn::key_cache_entry_of(k, &access_key))
                {
                    tracing::warn!(%error, "cannot invalidate by key; flushing all signing keys");
                    self.keys.invalidate_all();
                }
                if let Err(error) = self
                    .sigv2
                    .invalidate_entries_if(move |k, _| authn::sigv2_entry_of(k, &sigv2_key))
                {
                    tracing::warn!(%error, "cannot invalidate by key; flushing all SigV2 verifications");
                    self.sigv2.invalidate_all();
                }
            }
            Invalidation::Policy => {
                self.decisions.invalidate_all();
                self.prefixes.invalidate_all();
            }
            Invalidation::Bucket(bucket) if s3gate_proto::buckets::is_pattern(bucket) => {
                // A pattern entry (or, as `*`, the default backend) changed:
                // any cached bucket may have been routed by it. Rare.
                self.routes.invalidate_all();
                self.cors.invalidate_all();
                self.unknown_buckets.invalidate_all();
                self.principal_routes.invalidate_all();
            }
            Invalidation::Bucket(bucket) => {
                self.routes.invalidate(bucket).await;
                self.cors.invalidate(bucket).await;
                self.unknown_buckets.invalidate(bucket).await;
                // Rare: per-principal routes of every bucket go too.
                self.principal_routes.invalidate_all();
            }
            Invalidation::All => {
                self.keys.invalidate_all();
                self.unknown_keys.invalidate_all();
                self.certs.invalidate_all();
                self.sigv2.invalidate_all();
                self.tokens.invalidate_all();
                self.decisions.invalidate_all();
                self.prefixes.invalidate_all();
                self.routes.invalidate_all();
                self.principal_routes.invalidate_all();
                self.unknown_buckets.invalidate_all();
                self.cors.invalidate_all();
            }
        }
        // Last: a front copy stamped before this reads as stale from now
        // on, and one stamped after it was read from the shared caches as
        // they are now.
        self.generation.advance();
    }
}

/// What the access log line says about a request, filled in as stages run.
#[derive(Default)]
pub struct Trace {
    pub principal: Option<Arc<str>>,
    /// The identity source that vouched for the principal
    /// (`Authenticated::source`: `key`, `mtls`, `anonymous`, …).
    pub identity: Option<&'static str>,
    /// The operation, for requests that are no S3 operation (an STS call).
    pub op: Option<&'static str>,
    pub decision: Option<&'static str>,
    /// `sigv2` for a request that presents a SigV2 credential (legacy,
    /// worth seeing in the log); `None` otherwise.
    pub auth: Option<&'static str>,
    /// For DeleteObjects: every key of the document.
    pub keys: Option<Vec<String>>,
    /// What allowed the request (`Decision::decided_by`); a denial carries
    /// its own in `Error::Denied`.
    pub decided_by: Option<Arc<str>>,
    /// Why it was allowed, kept only for the audit log.
    pub reason: Option<String>,
    /// The key a refusal was about, when it is not the request's own key
    /// (a DeleteObjects key).
    pub refused_key: Option<String>,
}

/// One request's context: what the stages share besides the request itself,
/// and what observers of the finished request see (`respond::finish`: the
/// access log, metrics, the audit log).
pub struct Exchange {
    pub request_id: RequestId,
    pub conn: Arc<ConnInfo>,
    /// Who the client is and what it addressed, believing trusted proxies.
    pub origin: forwarded::Origin,
    pub start: Instant,
    pub trace: Trace,
    /// Where a body verifier leaves its verdict.
    pub slot: FailureSlot,
    /// The request's trace span; disabled (and free) unless traces are
    /// exported.
    pub span: tracing::Span,
    /// Whether the request's trace is recorded (exported and sampled): only
    /// then are stage spans made and the outcome recorded.
    pub traced: bool,
    /// Counts the request in flight until its response body is done
    /// (`respond::finish` hands it to the body).
    in_flight: Option<s3gate_observe::Open>,
    /// The audit log, when there is one.
    audit: Option<Arc<s3gate_observe::Audit>>,
}

impl Exchange {
    fn new(cx: &Ctx, conn: Arc<ConnInfo>) -> Self {
        Self {
            request_id: cx.request_ids.next(),
            origin: forwarded::Origin::direct(&conn),
            conn,
            start: Instant::now(),
            trace: Trace::default(),
            slot: FailureSlot::default(),
            span: tracing::Span::none(),
            traced: false,
            in_flight: Some(s3gate_observe::metrics().in_flight()),
            audit: cx.cfg.audit.clone(),
        }
    }
}

/// Serves one request.
///
/// hyper moves this future whole into its connection's slot, so every byte
/// of it is copied once per request, and its size is that of the largest
/// path through the stages. Rare paths (cache misses and the control-plane
/// calls behind them, credentials other than SigV4, bearer backends, new
/// backend connections) are boxed where they are awaited: they cost an
/// allocation when taken instead of bytes copied on every request.
/// `tests::a_request_future_stays_small` bounds the size.
pub async fn handle(cx: Arc<Ctx>, conn: Arc<ConnInfo>, req: Request<ClientBody>) -> Response<Body> {
    let mut ex = Exchange::new(&cx, conn);
    let (mut head, body) = req.into_parts();
    host_from_authority(&mut head);
    // Before anything reads `Host`: behind a trusted proxy the host the
    // client addressed (and signed) is the one the proxy names.
    ex.origin = forwarded::resolve(&cx.cfg.trusted_proxies, &ex.conn, &head.headers);
    if let Some(host) = ex.origin.host.take() {
        head.headers.insert(http::header::HOST, host);
    }
    match spans::request(&cx, &ex, &head) {
        spans::Traced::Off => return stages(&cx, head, body, &mut ex).await,
        spans::Traced::Unsampled(ids) => {
            return spans::in_unsampled(ids, stages(&cx, head, body, &mut ex)).await;
        }
        spans::Traced::Span(span, traced) => (ex.span, ex.traced) = (span, traced),
    }
    let span = ex.span.clone();
    let response = stages(&cx, head, body, &mut ex).instrument(span).await;
    if ex.traced {
        spans::finish(&ex, response.status());
    }
    response
}

/// The stages of [`handle`], after the request's origin is known.
async fn stages(
    cx: &Arc<Ctx>,
    mut head: http::request::Parts,
    body: ClientBody,
    ex: &mut Exchange,
) -> Response<Body> {
    if head.method == Method::OPTIONS {
        // A browser's CORS preflight carries no credentials: answered from
        // the bucket's CORS rules alone, never authenticated or forwarded.
        return cors::preflight(cx, &head, ex).await;
    }
    // STS calls carry no signature: the token in them is the credential,
    // and only the control plane can judge it.
    if let Some(call) = s3gate_s3::sts::recognise(
        &cx.cfg.hosts,
        &head.method,
        &head.uri,
        parse::host(&head),
        &head.headers,
    ) {
        let response = staged!(ex, "sts", sts::answer(cx, &head, body, call, ex));
        return respond::finish(&head, Ok(response), ex, None);
    }
    authn::fold_presigned(&cx.cfg, &mut head);
    // Classifying is pure and cheap; its verdict waits for authentication,
    // so a caller whose signature does not hold learns nothing about what
    // the gateway thinks of the request's shape. (The access log still
    // names what the request looked like.)
    let parsed = parse::s3_request(&cx.cfg.hosts, &head);
    if let Ok(req) = &parsed {
        spans::record_request(ex, req);
    }
    let who = match staged!(
        ex,
        "authn",
        authn::verify(cx, &head, &ex.conn, &mut ex.trace)
    ) {
        Ok(who) => who,
        Err(e) => {
            let response = respond::finish(&head, Err(e), ex, parsed.as_ref().ok());
            return cross_origin(cx, &head, parsed.as_ref().ok(), response).await;
        }
    };
    ex.trace.principal = Some(who.principal.name.clone());
    ex.trace.identity = Some(who.source);
    let req = match parsed {
        Ok(req) => req,
        Err(e) => {
            // Nor does an anonymous caller: to it every refusal looks alike.
            let e = if who.principal.is_anonymous() {
                tracing::debug!(request_id = ex.request_id.as_str(), error = %e, "anonymous request refused on its shape");
                Error::Denied {
                    reason: "anonymous request of an unsupported shape".to_owned(),
                    decided_by: None,
                }
            } else {
                e
            };
            return respond::finish(&head, Err(e), ex, None);
        }
    };
    let result = run(cx, &head, &req, who, body, ex).await;
    let response = respond::finish(&head, result, ex, Some(&req));
    cross_origin(cx, &head, Some(&req), response).await
}

/// The response, with the bucket's CORS headers when the request came from
/// a browser page of another origin. Without `Origin`: one header lookup.
async fn cross_origin(
    cx: &Ctx,
    head: &http::request::Parts,
    req: Option<&S3Request>,
    response: Response<Body>,
) -> Response<Body> {
    match head.headers.get(http::header::ORIGIN) {
        None => response,
        Some(origin) => cors::decorate(cx, head, origin, req, response).await,
    }
}

/// An HTTP/2 request names its host in the `:authority` pseudo-header,
/// which arrives as the URI's authority, and usually has no `Host` header;
/// but a SigV4 signature covers `host`, and the stages read it from the
/// header. So it is put there, once, before anything reads it.
fn host_from_authority(head: &mut http::request::Parts) {
    if head.version != http::Version::HTTP_2 || head.headers.contains_key(http::header::HOST) {
        return;
    }
    if let Some(value) = head
        .uri
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        head.headers.insert(http::header::HOST, value);
    }
}

/// A request refused before it was looked at, because too many are in flight.
pub fn shed(cx: &Ctx, conn: Arc<ConnInfo>, req: Request<ClientBody>) -> Response<Body> {
    let mut ex = Exchange::new(cx, conn);
    let (head, _body) = req.into_parts();
    respond::finish(&head, Err(Error::slow_down()), &mut ex, None)
}

async fn run(
    cx: &Ctx,
    head: &http::request::Parts,
    req: &S3Request,
    who: authn::Authenticated,
    body: ClientBody,
    ex: &mut Exchange,
) -> Result<Response<Body>, Error> {
    let slot = &ex.slot;
    let ex_audited = ex.audit.is_some();
    let trace = &mut ex.trace;
    let asker = authz::Asker {
        who: &who,
        head,
        client_ip: ex.origin.client_ip,
    };
    let Some(bucket) = req.bucket.as_deref() else {
        // Only ListBuckets has no bucket.
        let listed = listing::list_buckets(cx, &asker).await;
        if listed.is_ok() {
            // Each bucket listed was allowed (s3:ListBucket) on its own.
            trace.decision = Some("allow");
        }
        return listed;
    };
    // Authorized before routed: a caller who may not touch a bucket hears
    // AccessDenied whether or not it exists, never NoSuchBucket.
    let grant = staged!(ex, "authz", authz::check(cx, &asker, req));
    trace.decision = Some(if grant.is_ok() { "allow" } else { "deny" });
    let grant = grant?;
    trace.decided_by = grant.decided_by().cloned();
    if ex_audited {
        trace.reason = Some(grant.reason().to_owned());
    }
    let route = match staged!(ex, "route", route::lookup_for(cx, bucket, &who.principal)) {
        Err(Error::NoSuchBucket) if req.op == Op::CreateBucket => {
            // The name is allowed but not served here: no entry or pattern
            // matches it and there is no default backend. AccessDenied is
            // what S3 says to a CreateBucket it will not do, and what
            // tools report without retrying.
            return Err(s3gate_s3::S3Error::new(
                s3gate_s3::S3ErrorCode::AccessDenied,
                "This gateway serves no bucket of this name: no bucket entry or pattern matches it, and there is no default backend.",
            )
            .into());
        }
        other => other?,
    };
    // The key-segment guard, unless this backend stores keys literally. A
    // copy's source lives on the same backend (`lookup_copy_source`).
    let guarded = route.route.backend.key_segment_guard;
    if guarded {
        req.check_key_segments()?;
    }
    let source_route = match &req.copy_source {
        Some(src) => Some(staged!(
            ex,
            "route",
            route::lookup_copy_source(cx, &route, src, &who.principal)
        )?),
        None => None,
    };

    // Held until the backend answered: the bytes it accounts for live as
    // long as the request document does.
    let mut buffered = cx.budget.reservation();
    let (body, payload) = if req.op == Op::DeleteObjects {
        let (body, payload) =
            payload::verify(cx, head, body, &who, slot, payload::Trailer::Decode)?;
        let doc = authz::read_document(cx, body, &mut buffered).await?;
        let doc = s3gate_s3::delete::parse(&doc)?;
        if guarded {
            doc.check_key_segments()?;
        }
        trace.keys = Some(doc.objects.iter().map(|o| o.key.clone()).collect());
        if let Err((e, key)) = staged!(
            ex,
            "authz",
            authz::check_delete_objects(cx, &asker, req, bucket, &doc)
        ) {
            trace.decision = Some("deny");
            trace.refused_key = Some(key);
            return Err(e);
        }
        drop(payload);
        payload::replaced(doc.to_xml())
    } else {
        let (body, payload) =
            payload::verify(cx, head, body, &who, slot, payload::Trailer::Reframe)?;
        if payload.decoded_length == Some(0)
            && matches!(payload.upstream, payload::UpstreamPayload::Unsigned)
        {
            // An empty decoded body would complete at the backend before its
            // final chunk and trailer were verified: verify first.
            let mut nothing = cx.budget.reservation();
            tokio::time::timeout(
                cx.cfg.limits.body_deadline,
                body::collect_limited(body, 64 << 10, &mut nothing),
            )
            .await
            .map_err(|_| Error::body_deadline())?
            .map_err(Error::from_collect)?;
            (body::empty(), payload)
        } else {
            (body, payload)
        }
    };
    let response = staged!(
        ex,
        "forward",
        forward::send(
            &route,
            source_route.as_ref(),
            head,
            req,
            &grant,
            body,
            payload,
        )
    )?;
    drop(buffered);
    forward::downstream(cx, response, &route, head, req, ex).await
}

/// Request ids: a per-process random prefix and a counter. Unique enough to
/// find a request in logs, cheap, and without a lock.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0)
            ^ std::process::id().rotate_left(16);
        Self {
            prefix: seed,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        RequestId::new(self.prefix, n)
    }
}

/// 20 upper-case hex digits: the 32-bit prefix, then the low 48 bits of the
/// counter. Formatted on the stack: no allocation per request.
#[derive(Clone, Copy)]
pub struct RequestId([u8; 20]);

impl RequestId {
    fn new(prefix: u32, n: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [0u8; 20];
        let digits = (u128::from(prefix) << 48) | u128::from(n & 0xFFFF_FFFF_FFFF);
        for (i, byte) in out.iter_mut().enumerate() {
            let shift = 4 * (19 - i);
            *byte = HEX[((digits >> shift) & 0xF) as usize];
        }
        Self(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("00000000000000000000")
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    /// The size of the future an async fn of three arguments returns.
    fn future_size<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_request_future_stays_small() {
        // 15.7 KB before rare paths were boxed (see `handle`).
        let size = future_size(super::handle);
        assert!(
            size <= 8 << 10,
            "pipeline::handle's future is {size} bytes: box the rare path that grew it"
        );
        println!("pipeline::handle's future: {size} bytes");
    }

    #[test]
    fn request_id_is_prefix_then_counter_in_hex() {
        assert_eq!(
            RequestId::new(0xDEADBEEF, 0x1234).as_str(),
            format!("{:08X}{:012X}", 0xDEADBEEFu32, 0x1234u64)
        );
        assert_eq!(
            RequestId::new(0, 0xFFFF_FFFF_FFFF).as_str(),
            "00000000FFFFFFFFFFFF"
        );
        // The counter wraps within its 12 digits instead of widening the id.
        assert_eq!(
            RequestId::new(1, 0x1_0000_0000_0001).as_str(),
            "00000001000000000001"
        );
    }
}
