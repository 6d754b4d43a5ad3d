//! The control plane over gRPC: the `s3gate.v1.Decisions` service, plus the
//! standard health service and server reflection (so `grpcurl list` works
//! without .proto files).
//!
//! The service is a thin adapter: it decodes messages, asks a
//! [`Replica`] through [`ControlPlane`] (the same trait the embedded mode hands the data plane
//! directly) and encodes the answer. Watch streams fan out [`Invalidation`]s
//! from a broadcast channel; a subscriber that falls behind is told to flush
//! everything rather than silently missing events.

use std::future::Future;
use std::sync::Arc;

use s3gate_proto::pb::admin_server::AdminServer;
use s3gate_proto::pb::decisions_server::{Decisions, DecisionsServer};

use crate::admin::{require_token, AdminService};
use s3gate_proto::{pb, ControlPlane, ControlPlaneError, SigningKeyRequest};

use crate::replica::{next_invalidation, Replica};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};
use tracing::info;

/// Streams one gRPC connection may have open at once. A data plane needs
/// one Watch plus its concurrent decision calls; tonic alone sets no limit
/// (hyper's default of 200 is removed), so a peer could otherwise open
/// streams without bound on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Largest header block a peer may send (metadata is a token and a
/// `traceparent`); hyper's default is 16 MiB.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// HTTP/2 pings on idle connections find peers that vanished without a FIN
/// (a data plane's host lost), so their Watch streams and tasks are freed.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// A ping not answered within this closes the connection.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Clone)]
pub struct DecisionsService {
    /// Answers every call from its local snapshot; its events feed Watch.
    replica: Arc<Replica>,
    /// Flips to true when the server shuts down, ending every Watch stream
    /// (otherwise graceful shutdown would wait for them forever).
    stop: watch::Receiver<bool>,
}

impl DecisionsService {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self {
            replica,
            stop: watch::channel(false).1,
        }
    }
}

type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

/// Counts an answered RPC (`s3gate_rpc_served_total`) and passes it on.
fn served<T>(rpc: &'static str, answer: Result<T, Status>) -> Result<T, Status> {
    let result = match &answer {
        Ok(_) => "ok",
        Err(status) => match status.code() {
            tonic::Code::NotFound => "not_found",
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::InvalidArgument => "invalid_argument",
            tonic::Code::PermissionDenied => "permission_denied",
            _ => "error",
        },
    };
    s3gate_observe::metrics().rpc_served(rpc, result);
    answer
}

#[tonic::async_trait]
impl Decisions for DecisionsService {
    async fn signing_key(
        &self,
        req: Request<pb::SigningKeyRequest>,
    ) -> Result<Response<pb::SigningKeyResponse>, Status> {
        let answer: Result<Response<pb::SigningKeyResponse>, Status> = async {
            let r = req.into_inner();
            let grant = self
                .replica
                .signing_key(SigningKeyRequest {
                    access_key: r.access_key,
                    date: r.date,
                    region: r.region,
                    service: r.service,
                    security_token_sha256: r.security_token_sha256.as_slice().try_into().ok(),
                })
                .await?;
            // A data plane that would not check a session's token and expiry
            // never gets a session's key.
            if grant.session.is_some() && !r.session_aware {
                return Err(ControlPlaneError::UnknownAccessKey.into());
            }
            Ok(Response::new((&grant).into()))
        }
        .await;
        served("SigningKey", answer)
    }

    async fn verify_sig_v2(
        &self,
        req: Request<pb::VerifySigV2Request>,
    ) -> Result<Response<pb::VerifySigV2Response>, Status> {
        let answer: Result<Response<pb::VerifySigV2Response>, Status> = async {
            let ask = req.into_inner().try_into()?;
            let answer = self.replica.verify_sigv2(ask).await;
            match s3gate_proto::convert::sigv2_response(&answer) {
                Some(response) => Ok(Response::new(response)),
                None => Err(answer
                    .err()
                    .map_or_else(|| Status::internal("no SigV2 answer"), Status::from)),
            }
        }
        .await;
        served("VerifySigV2", answer)
    }

    async fn assume_role_with_web_identity(
        &self,
        req: Request<pb::AssumeRoleWithWebIdentityRequest>,
    ) -> Result<Response<pb::AssumeRoleWithWebIdentityResponse>, Status> {
        let answer: Result<Response<pb::AssumeRoleWithWebIdentityResponse>, Status> = async {
            let result = self
                .replica
                .assume_role_with_web_identity(req.into_inner().into())
                .await;
            pb::AssumeRoleWithWebIdentityResponse::from_result(&result).map(Response::new)
        }
        .await;
        served("AssumeRoleWithWebIdentity", answer)
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let answer: Result<Response<pb::AuthenticateResponse>, Status> = async {
            let credential = req.into_inner().try_into()?;
            let identity = self.replica.authenticate(credential).await?;
            Ok(Response::new((&identity).into()))
        }
        .await;
        served("Authenticate", answer)
    }

    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let answer: Result<Response<pb::AuthorizeResponse>, Status> = async {
            let ask = req.into_inner().try_into()?;
            let decision = self.replica.authorize(ask).await?;
            Ok(Response::new((&decision).into()))
        }
        .await;
        served("Authorize", answer)
    }

    async fn get_route(
        &self,
        req: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::GetRouteResponse>, Status> {
        let answer: Result<Response<pb::GetRouteResponse>, Status> = async {
            let req = req.into_inner();
            let route = match req.principal {
                Some(p) => {
                    let principal = p.try_into()?;
                    self.replica.route_for(&req.bucket, &principal).await?
                }
                None => self.replica.route(&req.bucket).await?,
            };
            Ok(Response::new((&route).into()))
        }
        .await;
        served("GetRoute", answer)
    }

    async fn get_bucket_cors(
        &self,
        req: Request<pb::GetBucketCorsRequest>,
    ) -> Result<Response<pb::GetBucketCorsResponse>, Status> {
        let answer: Result<Response<pb::GetBucketCorsResponse>, Status> = async {
            let cors = self.replica.bucket_cors(&req.into_inner().bucket).await?;
            Ok(Response::new((&cors).into()))
        }
        .await;
        served("GetBucketCors", answer)
    }

    async fn visible_buckets(
        &self,
        req: Request<pb::VisibleBucketsRequest>,
    ) -> Result<Response<pb::VisibleBucketsResponse>, Status> {
        let answer: Result<Response<pb::VisibleBucketsResponse>, Status> = async {
            let principal = req
                .into_inner()
                .principal
                .ok_or_else(|| Status::invalid_argument("missing principal"))?
                .try_into()?;
            let buckets = self.replica.visible_buckets(&principal).await?;
            Ok(Response::new(pb::VisibleBucketsResponse { buckets }))
        }
        .await;
        served("VisibleBuckets", answer)
    }

    async fn listing(
        &self,
        req: Request<pb::ListingRequest>,
    ) -> Result<Response<pb::ListingResponse>, Status> {
        let answer: Result<Response<pb::ListingResponse>, Status> = async {
            let principal = req
                .into_inner()
                .principal
                .ok_or_else(|| Status::invalid_argument("missing principal"))?
                .try_into()?;
            let listing = self.replica.listing(&principal).await?;
            Ok(Response::new((&listing).into()))
        }
        .await;
        served("Listing", answer)
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let node = req.into_inner().node;
        // Subscribe before reading the version: an event published in
        // between is then delivered, never lost.
        let rx = self.replica.events().subscribe();
        let version = self.replica.version();
        info!(node, version, "data plane watching");
        let hello = pb::WatchEvent {
            version,
            event: Some(pb::watch_event::Event::Hello(pb::Hello {
                control_plane: self.replica.name().to_owned(),
            })),
        };
        let (tx, out) = mpsc::channel(64);
        let mut stop = self.stop.clone();
        let mut rx = rx;
        tokio::spawn(async move {
            if tx.send(Ok(hello)).await.is_err() {
                return;
            }
            loop {
                let event = tokio::select! {
                    _ = stop.wait_for(|stopping| *stopping) => return,
                    () = tx.closed() => return,
                                        item = next_invalidation(&mut rx) => match item {
                        Some((version, inv)) => inv.to_event(version),
                        None => return,
                    },
                };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// Serves Decisions (requiring `cluster_token` when given: its answers
/// include backend credentials), health, reflection and — when `admin`
/// carries a token — the Admin service on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    mut service: DecisionsService,
    cluster_token: Option<String>,
    admin: Option<(AdminService, String)>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Decisions are small request/response pairs: without TCP_NODELAY,
    // Nagle plus delayed ACKs add ~40 ms to some of them (seen at p99.9).
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            let _ = stream.set_nodelay(true);
        })
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    service.stop = stop_rx;
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Both reflection versions: grpcurl and grpcio's client still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<DecisionsServer<DecisionsService>>()
        .await;
    // A span per unary Decisions/Admin call, a child of the data plane's
    // call span when it sent a `traceparent` (disabled unless traces are
    // exported).
    let mut server = tonic::transport::Server::builder()
        .trace_fn(s3gate_proto::trace::server_span)
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_SIZE))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    let router = server
        .add_service(health)
        .add_optional_service(cluster_token.clone().map(|t| {
            DecisionsServer::with_interceptor(service.clone(), require_token(t, "cluster token"))
        }))
        .add_optional_service(
            cluster_token
                .is_none()
                .then(|| DecisionsServer::new(service)),
        )
        .add_optional_service(admin.map(|(svc, token)| {
            AdminServer::with_interceptor(svc, require_token(token, "admin token"))
        }));
    let router = match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => router.add_service(v1).add_service(v1alpha),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "gRPC reflection unavailable");
            router
        }
    };
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
