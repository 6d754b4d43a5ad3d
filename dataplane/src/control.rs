//! The data plane's client of a remote control plane: [`GrpcControlPlane`]
//! implements the same [`ControlPlane`] trait the embedded mode uses, over
//! `s3gate.v1.Decisions`, with failover across several control-plane URLs;
//! [`watch`] keeps a Watch stream open and turns its events into
//! [`Invalidation`]s, reconnecting with backoff.
//!
//! Failure is never permission: any answer other than a definitive "unknown
//! key" or "no such bucket" from some replica is `Unavailable`, which the
//! pipeline turns into 503.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::pb::decisions_client::DecisionsClient;
use s3gate_proto::{
    pb, AssumedRole, AuthorizeRequest, BucketCors, ControlPlane, ControlPlaneError, Decision,
    Identity, Invalidation, Listing, PresentedCredential, Principal, Route, SigV2Grant,
    SigV2Request, SigningKeyGrant, SigningKeyRequest, StsError, WebIdentityRequest,
};
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, info, warn, Instrument as _};

type Client = DecisionsClient<InterceptedService<Channel, ClusterToken>>;

/// Adds `authorization: Bearer <cluster token>` to every call, when set,
/// and the call's trace context while traces are exported.
#[derive(Clone)]
pub struct ClusterToken(Option<MetadataValue<Ascii>>);

impl ClusterToken {
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the cluster token is not a valid header value".to_owned())
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for ClusterToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        // Called as the call is polled, inside `GrpcControlPlane::call`'s
        // span: the control plane's span becomes its child.
        // An unrecorded request has no span, only ids to pass on.
        if s3gate_proto::trace::exporting() {
            match crate::pipeline::spans::unsampled() {
                Some(ids) => ids.inject_metadata(req.metadata_mut()),
                None => s3gate_proto::trace::inject_metadata(
                    &tracing::Span::current(),
                    req.metadata_mut(),
                ),
            }
        }
        Ok(req)
    }
}

pub struct GrpcControlPlane {
    clients: Vec<(String, Client)>,
    /// Index of the replica that answered last; tried first.
    preferred: AtomicUsize,
}

/// Parses control-plane URLs (`http://host:port`) into lazily connecting
/// endpoints.
pub fn endpoints(urls: &[String], connect_timeout: Duration) -> Result<Vec<Endpoint>, String> {
    if urls.is_empty() {
        return Err("at least one control-plane URL is required".to_owned());
    }
    urls.iter()
        .map(|u| {
            Endpoint::from_shared(u.clone())
                .map(|e| {
                    // Keepalives notice a control plane that stopped answering
                    // without closing the connection: a stalled Watch stream
                    // is then torn down and reconnected elsewhere.
                    e.connect_timeout(connect_timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(5))
                        .keep_alive_timeout(Duration::from_secs(3))
                        .keep_alive_while_idle(true)
                })
                .map_err(|e| format!("invalid control-plane URL {u:?}: {e}"))
        })
        .collect()
}

impl GrpcControlPlane {
    /// `rpc_timeout` bounds every call: a slow control plane is an
    /// unavailable one.
    pub fn new(endpoints: &[Endpoint], rpc_timeout: Duration, token: ClusterToken) -> Self {
        let clients = endpoints
            .iter()
            .map(|e| {
                let channel = e.clone().timeout(rpc_timeout).connect_lazy();
                (
                    e.uri().to_string(),
                    DecisionsClient::with_interceptor(channel, token.clone()),
                )
            })
            .collect();
        Self {
            clients,
            preferred: AtomicUsize::new(0),
        }
    }

    /// One call, `method` of `s3gate.v1.Decisions`, failing over across
    /// the replicas. Its span (while traces are exported) covers every
    /// attempt; each attempt carries it as `traceparent` ([`ClusterToken`]
    /// puts it in the metadata).
    async fn call<T, F, Fut>(&self, method: &'static str, rpc: F) -> Result<T, ControlPlaneError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        // Inside an unrecorded request: no span (it would start a trace of
        // its own); the call still carries the request's ids.
        let span = if crate::pipeline::spans::unsampled().is_some() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                target: s3gate_proto::trace::TARGET,
                "control plane call",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = "s3gate.v1.Decisions",
                rpc.method = method,
                server.address = tracing::field::Empty,
            )
        };
        let start = std::time::Instant::now();
        let result = if span.is_disabled() {
            self.attempts(&span, rpc).await
        } else {
            let result = self.attempts(&span, rpc).instrument(span.clone()).await;
            if let Err(ControlPlaneError::Unavailable(_)) = &result {
                span.record("otel.status_code", "ERROR");
            }
            result
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(ControlPlaneError::Unavailable(_)) => "unavailable",
            // A definitive answer (an unknown key, no such bucket).
            Err(_) => "answered_error",
        };
        s3gate_observe::metrics().control_plane_call(method, outcome, start.elapsed());
        result
    }

    async fn attempts<T, F, Fut>(
        &self,
        span: &tracing::Span,
        rpc: F,
    ) -> Result<T, ControlPlaneError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.clients.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let (url, client) = &self.clients[idx];
            span.record("server.address", url.as_str());
            match rpc(client.clone()).await {
                Ok(resp) => {
                    if i > 0 {
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(resp.into_inner());
                }
                // Definitive answers: another replica would say the same.
                Err(s) if matches!(s.code(), Code::Unauthenticated | Code::NotFound) => {
                    return Err(s.into())
                }
                Err(s) => {
                    debug!(control_plane = %url, code = ?s.code(), "control plane call failed, trying next");
                    last = Some(s);
                }
            }
        }
        Err(ControlPlaneError::Unavailable(
            last.map(|s| format!("{:?}: {}", s.code(), s.message()))
                .unwrap_or_else(|| "no control plane configured".to_owned()),
        ))
    }
}

fn decode<T, M: TryInto<T, Error = s3gate_proto::convert::DecodeError>>(
    m: M,
) -> Result<T, ControlPlaneError> {
    m.try_into()
        .map_err(|e| ControlPlaneError::Unavailable(e.to_string()))
}

#[async_trait]
impl ControlPlane for GrpcControlPlane {
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError> {
        let msg = pb::SigningKeyRequest {
            access_key: req.access_key,
            date: req.date,
            region: req.region,
            service: req.service,
            // This data plane checks session tokens and expiry.
            session_aware: true,
            security_token_sha256: req
                .security_token_sha256
                .map(|h| h.to_vec())
                .unwrap_or_default(),
        };
        let resp = self.call("SigningKey", |mut c| {
            let msg = msg.clone();
            async move { c.signing_key(msg).await }
        });
        decode(resp.await?)
    }

    async fn authenticate(
        &self,
        credential: PresentedCredential,
    ) -> Result<Identity, ControlPlaneError> {
        let msg = pb::AuthenticateRequest::from(&credential);
        let resp = self.call("Authenticate", |mut c| {
            let msg = msg.clone();
            async move { c.authenticate(msg).await }
        });
        // Unauthenticated here means the credential, not an access key.
        let resp = resp.await.map_err(|e| match e {
            ControlPlaneError::UnknownAccessKey => {
                ControlPlaneError::NotAuthenticated("no identity source accepted it".into())
            }
            other => other,
        })?;
        decode(resp)
    }

    async fn verify_sigv2(&self, req: SigV2Request) -> Result<SigV2Grant, ControlPlaneError> {
        let msg = pb::VerifySigV2Request::from(&req);
        let resp = self.call("VerifySigV2", |mut c| {
            let msg = msg.clone();
            async move { c.verify_sig_v2(msg).await }
        });
        s3gate_proto::convert::sigv2_answer(resp.await?)
            .map_err(|e| ControlPlaneError::Unavailable(e.to_string()))?
    }

    async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
        let msg = pb::AuthorizeRequest::from(&req);
        let resp = self.call("Authorize", |mut c| {
            let msg = msg.clone();
            async move { c.authorize(msg).await }
        });
        decode(resp.await?)
    }

    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError> {
        let msg = pb::GetRouteRequest {
            bucket: bucket.to_owned(),
            principal: None,
        };
        let resp = self.call("GetRoute", |mut c| {
            let msg = msg.clone();
            async move { c.get_route(msg).await }
        });
        decode(resp.await?)
    }

    async fn route_for(
        &self,
        bucket: &str,
        principal: &Principal,
    ) -> Result<Route, ControlPlaneError> {
        let msg = pb::GetRouteRequest {
            bucket: bucket.to_owned(),
            principal: Some(principal.into()),
        };
        let resp = self.call("GetRoute", |mut c| {
            let msg = msg.clone();
            async move { c.get_route(msg).await }
        });
        decode(resp.await?)
    }

    async fn bucket_cors(&self, bucket: &str) -> Result<BucketCors, ControlPlaneError> {
        let msg = pb::GetBucketCorsRequest {
            bucket: bucket.to_owned(),
        };
        let resp = self.call("GetBucketCors", |mut c| {
            let msg = msg.clone();
            async move { c.get_bucket_cors(msg).await }
        });
        Ok(resp.await?.into())
    }

    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError> {
        let msg = pb::VisibleBucketsRequest {
            principal: Some(principal.into()),
        };
        let resp = self.call("VisibleBuckets", |mut c| {
            let msg = msg.clone();
            async move { c.visible_buckets(msg).await }
        });
        Ok(resp.await?.buckets)
    }

    async fn listing(&self, principal: &Principal) -> Result<Listing, ControlPlaneError> {
        let msg = pb::ListingRequest {
            principal: Some(principal.into()),
        };
        let resp = self.call("Listing", |mut c| {
            let msg = msg.clone();
            async move { c.listing(msg).await }
        });
        decode(resp.await?)
    }

    async fn assume_role_with_web_identity(
        &self,
        req: WebIdentityRequest,
    ) -> Result<AssumedRole, StsError> {
        let msg = pb::AssumeRoleWithWebIdentityRequest::from(&req);
        let resp = self.call("AssumeRoleWithWebIdentity", |mut c| {
            let msg = msg.clone();
            async move { c.assume_role_with_web_identity(msg).await }
        });
        // A refusal is an answer; only a failure to get one is unavailable.
        match resp.await {
            Ok(answer) => answer
                .into_result()
                .map_err(|e| StsError::Unavailable(e.to_string()))?,
            Err(e) => Err(StsError::Unavailable(e.to_string())),
        }
    }
}

/// Whether a Watch stream to a control plane is up: a data plane's
/// readiness (`/readyz`). A control plane that said Hello has its state
/// loaded and answers; without one, only cached answers can be given.
#[derive(Clone, Default)]
pub struct WatchUp(Arc<std::sync::atomic::AtomicBool>);

impl WatchUp {
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

#[async_trait]
impl s3gate_observe::Readiness for WatchUp {
    async fn check(&self) -> Result<(), String> {
        if self.0.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("no control plane reachable (no Watch stream up)".to_owned())
        }
    }
}

/// Keeps a Watch stream open to one of `endpoints` and forwards what it
/// says; `up` tells whether one is open. On (re)connect, a Hello whose
/// version differs from the last one seen means events may have been
/// missed: everything is flushed. While no stream is up, cached entries
/// still expire by their TTL.
pub fn watch(
    endpoints: Vec<Endpoint>,
    node: String,
    token: ClusterToken,
    up: WatchUp,
) -> mpsc::Receiver<Invalidation> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut last_version: Option<u64> = None;
        let mut backoff = Duration::from_millis(100);
        let mut next = 0usize;
        while !tx.is_closed() {
            let endpoint = &endpoints[next % endpoints.len()];
            next += 1;
            let mut client =
                DecisionsClient::with_interceptor(endpoint.connect_lazy(), token.clone());
            match client.watch(pb::WatchRequest { node: node.clone() }).await {
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(event)) => {
                                backoff = Duration::from_millis(100);
                                let inv = match Invalidation::from_event(&event) {
                                    None if matches!(
                                        event.event,
                                        Some(pb::watch_event::Event::Hello(_))
                                    ) =>
                                    {
                                        info!(control_plane = %endpoint.uri(), version = event.version, "watch connected");
                                        up.set(true);
                                        let stale =
                                            last_version.is_some_and(|v| v != event.version);
                                        last_version = Some(event.version);
                                        if !stale {
                                            continue;
                                        }
                                        Invalidation::All
                                    }
                                    None => Invalidation::All,
                                    Some(inv) => {
                                        last_version = Some(event.version);
                                        inv
                                    }
                                };
                                if tx.send(inv).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(status) => {
                                debug!(code = ?status.code(), "watch stream ended");
                                break;
                            }
                        }
                    }
                    up.set(false);
                    warn!(control_plane = %endpoint.uri(), "watch stream lost, reconnecting");
                }
                Err(status) => {
                    debug!(control_plane = %endpoint.uri(), code = ?status.code(), "watch connect failed");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    rx
}
