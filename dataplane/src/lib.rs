//! The s3gate data plane: a stateless S3 proxy.
//!
//! Each request runs through the stages in [`pipeline`]: parse → authenticate
//! → route → authorize → forward → respond. Keys, decisions and routes come
//! from a [`ControlPlane`] and are cached locally with the TTL the control
//! plane names; the data plane holds no durable state and reads no policy
//! configuration of its own.
//!
//! Bodies are never buffered (DeleteObjects' small XML document is the one
//! exception, because authorizing it needs the keys inside; it is charged to
//! a global budget, see [`limits`]). Payload hashes and
//! aws-chunked signatures are verified while streaming, and the final bytes of
//! an upload are held back until verification succeeds, so a forged body never
//! completes at the backend.

mod body;
mod cache;
pub mod control;
mod error;
pub mod limits;
pub mod listen;
pub mod pipeline;
mod stall;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3gate_proto::{ControlPlane, Invalidation};
use s3gate_s3::request::HostConfig;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

pub use crate::error::Error;
pub use crate::limits::Limits;
pub use crate::listen::{Acceptor, ConnInfo, PlainTcp};

/// Data plane settings. Buckets, keys and rules are not here: they come from
/// the control plane.
#[derive(Debug, Clone)]
pub struct Config {
    /// The region clients sign for; other regions are refused.
    pub region: String,
    /// Base domains for virtual-host-style addressing.
    pub hosts: HostConfig,
    /// Largest aws-chunked chunk accepted (the decoder holds one chunk).
    pub max_chunk_size: usize,
    /// Upper bounds on cache sizes (entries).
    pub key_cache_capacity: u64,
    /// Decisions are weighed by their size: this bounds their memory (a
    /// quarter of it for prefix-scoped decisions).
    pub decision_cache_bytes: u64,
    pub route_cache_capacity: u64,
    /// Connect timeout towards backends.
    pub upstream_connect_timeout: Duration,
    /// Connection, request, timeout and buffering limits.
    pub limits: Limits,
    /// Accept legacy SigV2 requests (verified by the control plane); off,
    /// they are refused with 400 InvalidRequest.
    pub sigv2: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: "us-east-1".to_owned(),
            hosts: HostConfig::default(),
            max_chunk_size: 16 << 20,
            key_cache_capacity: 100_000,
            decision_cache_bytes: 64 << 20,
            route_cache_capacity: 10_000,
            upstream_connect_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            sigv2: true,
        }
    }
}

/// Largest read or write buffer of one connection, client or backend side.
pub(crate) const CONNECTION_BUFFER: usize = 64 << 10;

/// How a connection's HTTP is served, by what its handshake negotiated.
#[derive(Clone)]
struct Http {
    /// HTTP/1.1 only: plain TCP (no h2c). HTTP/2 joins here, for TLS
    /// connections whose ALPN picked `h2`, with the TLS listener.
    h1: auto::Builder<TokioExecutor>,
}

impl Http {
    fn new(limits: &Limits) -> Self {
        let mut h1 = auto::Builder::new(TokioExecutor::new()).http1_only();
        h1.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // Bounds what one connection buffers, and so the size of a body
            // frame a verifier may hold back.
            .max_buf_size(CONNECTION_BUFFER)
            .keep_alive(true);
        Self { h1 }
    }

    fn for_conn(&self, _conn: &ConnInfo) -> &auto::Builder<TokioExecutor> {
        &self.h1
    }
}

/// Serves S3 over plain TCP on `listener` until `shutdown` resolves, then
/// drains in-flight requests (bounded by `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    cfg: Config,
    control_plane: Arc<dyn ControlPlane>,
    invalidations: mpsc::Receiver<Invalidation>,
    shutdown: impl std::future::Future<Output = ()>,
    drain_timeout: Duration,
) {
    serve_with(
        listener,
        PlainTcp,
        cfg,
        control_plane,
        invalidations,
        shutdown,
        drain_timeout,
    )
    .await
}

/// [`serve`], with each accepted connection turned into a stream by
/// `acceptor` (TLS terminates there) in the connection's own task.
pub async fn serve_with<A: Acceptor>(
    listener: TcpListener,
    acceptor: A,
    cfg: Config,
    control_plane: Arc<dyn ControlPlane>,
    mut invalidations: mpsc::Receiver<Invalidation>,
    shutdown: impl std::future::Future<Output = ()>,
    drain_timeout: Duration,
) {
    let cx = Arc::new(pipeline::Ctx::new(cfg, control_plane));
    let invalidator = {
        let cx = cx.clone();
        tokio::spawn(async move {
            while let Some(inv) = invalidations.recv().await {
                debug!(?inv, "invalidating");
                cx.invalidate(&inv).await;
            }
        })
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let limits = cx.cfg.limits.clone();
    let http = Http::new(&limits);
    // A permit per open connection; at the cap, accepting pauses.
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // A permit per request being handled; at the cap, requests are shed.
    let requests = Arc::new(Semaphore::new(limits.max_requests.max(1)));
    let mut warned_full = false;
    tokio::pin!(shutdown);
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(p) => {
                warned_full = false;
                p
            }
            Err(_) => {
                if !warned_full {
                    warn!(
                        max = limits.max_connections,
                        "connection limit reached; not accepting until one closes"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    p = connections.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Usually EMFILE: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let cx = cx.clone();
                let requests = requests.clone();
                let acceptor = acceptor.clone();
                let http = http.clone();
                let watcher = graceful.watcher();
                let send_timeout = limits.send_timeout;
                tokio::spawn(async move {
                    let (io, conn) = match acceptor.accept(stream, peer).await {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            debug!(%error, %peer, "connection not established");
                            return;
                        }
                    };
                    let conn = Arc::new(conn);
                    let builder = http.for_conn(&conn);
                    let svc = service_fn(move |req| {
                        let cx = cx.clone();
                        let conn = conn.clone();
                        let permit = requests.clone().try_acquire_owned();
                        async move {
                            let response = match permit {
                                // The permit is held until the response has
                                // streamed: a download holds a backend
                                // connection as long as an upload does.
                                Ok(permit) => pipeline::handle(cx, conn, req)
                                    .await
                                    .map(|b| body::holding(b, permit)),
                                Err(_) => pipeline::shed(&cx, conn, req),
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let io = stall::SendTimeout::new(io, send_timeout);
                    let served = watcher.watch(builder.serve_connection(TokioIo::new(io), svc));
                    if let Err(error) = served.await {
                        let cause = std::error::Error::source(&*error).map(ToString::to_string);
                        debug!(%error, cause = cause.as_deref().unwrap_or("-"), %peer, "connection ended with error");
                    }
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    invalidator.abort();
    info!("shutting down, draining connections");
    tokio::select! {
        () = graceful.shutdown() => info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => warn!("drain timeout reached, closing remaining connections"),
    }
}

/// Where the data plane listens, as written to a ready file.
pub fn ready_json(s3: SocketAddr) -> String {
    format!("{{\"s3\": \"{s3}\"}}")
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
