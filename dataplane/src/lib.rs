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
mod client;
pub mod control;
mod error;
mod h2;
mod head;
pub mod limits;
pub mod listen;
pub mod pipeline;
mod pool;
mod server;
mod stall;
pub mod tls;
mod upstream;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3gate_proto::{ControlPlane, Invalidation};
use s3gate_s3::request::HostConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

pub use crate::error::Error;
pub use crate::limits::Limits;
pub use crate::listen::{Acceptor, ConnInfo, PlainTcp, TlsAcceptor, TlsInfo};
pub use crate::tls::{ClientAuth, PrincipalFrom};
pub use crate::upstream::ProxyEnv;

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
    /// Which name of a verified client certificate is its principal (on a
    /// TLS listener that asks for client certificates).
    pub principal_from: PrincipalFrom,
    /// Accept legacy SigV2 requests (verified by the control plane); off,
    /// they are refused with 400 InvalidRequest.
    pub sigv2: bool,
    /// Peers whose `Forwarded`/`X-Forwarded-*` headers are believed (the
    /// client's address, scheme and host); empty: nobody's.
    pub trusted_proxies: pipeline::forwarded::TrustedProxies,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` as read at
    /// start: the egress proxy of backends that set none.
    pub proxy_env: upstream::ProxyEnv,
    /// Where one JSON line per decided request goes (`--audit-log`); `None`: nowhere.
    pub audit: Option<Arc<s3gate_observe::Audit>>,
    /// Single-threaded runtimes that connections are handed to at accept
    /// (see [`workers`]); `None`: connections run on the calling runtime.
    pub workers: Option<Arc<workers::Workers>>,
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
            principal_from: PrincipalFrom::default(),
            sigv2: true,
            trusted_proxies: Default::default(),
            proxy_env: Default::default(),
            audit: None,
            workers: None,
        }
    }
}

/// Largest read or write buffer of one connection, client or backend side.
pub(crate) const CONNECTION_BUFFER: usize = 64 << 10;

/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 100;
/// What an HTTP/2 client may send ahead on one stream, and on all of a
/// connection's streams together, before the gateway reads it: the bytes
/// a connection can make the gateway buffer.
const H2_STREAM_WINDOW: u32 = 256 << 10;
const H2_CONNECTION_WINDOW: u32 = 1 << 20;

/// How a connection's HTTP is served, by what its handshake negotiated.
#[derive(Clone)]
struct Http {
    /// HTTP/1.1: plain TCP (no h2c), and TLS connections whose ALPN did not
    /// pick `h2`.
    h1: auto::Builder<TokioExecutor>,
    /// HTTP/2: TLS connections whose ALPN picked `h2`.
    h2: auto::Builder<TokioExecutor>,
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
        let mut h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        h2.http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            // Per stream, what hyper queues before the client's window lets
            // it go (as `max_buf_size` on HTTP/1.1).
            .max_send_buf_size(CONNECTION_BUFFER)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_header_list_size(CONNECTION_BUFFER as u32)
            // A peer that stops answering pings is gone; idle connections
            // are closed by `h2::Activity`.
            .keep_alive_interval(limits.header_timeout)
            .keep_alive_timeout(limits.header_timeout);
        Self { h1, h2 }
    }

    fn for_conn(&self, conn: &ConnInfo) -> &auto::Builder<TokioExecutor> {
        if conn.tls.as_ref().is_some_and(TlsInfo::is_h2) {
            &self.h2
        } else {
            &self.h1
        }
    }
}

/// Where the data plane takes connections: plain HTTP, HTTPS, or both (at
/// least one). Both share everything else: caches, limits, drain.
#[derive(Default)]
pub struct Listeners {
    /// HTTP/1.1 over TCP.
    pub plain: Option<TcpListener>,
    /// HTTP/1.1 and HTTP/2 (by ALPN) over TLS.
    pub tls: Option<(TcpListener, TlsAcceptor)>,
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
    serve_on(
        Listeners {
            plain: Some(listener),
            tls: None,
        },
        cfg,
        control_plane,
        invalidations,
        shutdown,
        drain_timeout,
    )
    .await
}

/// [`serve`] on every listener of `listeners`.
pub async fn serve_on(
    listeners: Listeners,
    cfg: Config,
    control_plane: Arc<dyn ControlPlane>,
    invalidations: mpsc::Receiver<Invalidation>,
    shutdown: impl std::future::Future<Output = ()>,
    drain_timeout: Duration,
) {
    serve_pair(
        listeners.plain.map(|l| (l, PlainTcp)),
        listeners.tls,
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
    invalidations: mpsc::Receiver<Invalidation>,
    shutdown: impl std::future::Future<Output = ()>,
    drain_timeout: Duration,
) {
    serve_pair(
        Some((listener, acceptor)),
        None::<(TcpListener, PlainTcp)>,
        cfg,
        control_plane,
        invalidations,
        shutdown,
        drain_timeout,
    )
    .await
}

/// What every connection task shares.
struct Shared {
    cx: Arc<pipeline::Ctx>,
    http: Http,
    /// A permit per request being handled; at the cap, requests are shed.
    requests: Arc<Semaphore>,
    limits: Limits,
}

/// The accept loop over up to two listeners, each with its acceptor.
async fn serve_pair<A: Acceptor, B: Acceptor>(
    a: Option<(TcpListener, A)>,
    b: Option<(TcpListener, B)>,
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
    let limits = cx.cfg.limits.clone();
    let shared = Arc::new(Shared {
        http: Http::new(&limits),
        requests: Arc::new(Semaphore::new(limits.max_requests.max(1))),
        limits: limits.clone(),
        cx,
    });
    // Every connection task holds a receiver; on shutdown each is told to
    // finish gracefully, and the drain waits until all have dropped theirs.
    let (drain_tx, drain_rx) = watch::channel(false);
    // A permit per open connection, whichever listener; at the cap,
    // accepting pauses.
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
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
            accepted = accept(a.as_ref()) => {
                if let (Some((stream, peer)), Some((_, acceptor))) = (or_back_off(accepted).await, &a) {
                    spawn_conn(&shared, acceptor, stream, peer, permit, &drain_rx);
                }
            }
            accepted = accept(b.as_ref()) => {
                if let (Some((stream, peer)), Some((_, acceptor))) = (or_back_off(accepted).await, &b) {
                    spawn_conn(&shared, acceptor, stream, peer, permit, &drain_rx);
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop((a, b));
    drop(drain_rx);
    invalidator.abort();
    info!("shutting down, draining connections");
    let _ = drain_tx.send(true);
    tokio::select! {
        () = drain_tx.closed() => info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => warn!("drain timeout reached, closing remaining connections"),
    }
}

/// The next connection of `listener`; never resolves without one.
async fn accept<A>(
    listener: Option<&(TcpListener, A)>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some((listener, _)) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The accepted connection, or after a failed accept (usually EMFILE) a
/// pause instead of spinning.
async fn or_back_off(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(a) => Some(a),
        Err(error) => {
            warn!(%error, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Hands an accepted connection to a worker, or without workers spawns it
/// here. A worker's runtime has its own I/O driver: the socket leaves this
/// runtime's and is registered with the worker's.
fn spawn_conn<A: Acceptor>(
    shared: &Arc<Shared>,
    acceptor: &A,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    drain: &watch::Receiver<bool>,
) {
    let (shared, acceptor, drain) = (shared.clone(), acceptor.clone(), drain.clone());
    let Some(workers) = shared.cx.cfg.workers.clone() else {
        tokio::spawn(serve_conn(shared, acceptor, stream, peer, permit, drain));
        return;
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%error, %peer, "connection lost before it reached a worker");
            return;
        }
    };
    workers.spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve_conn(shared, acceptor, stream, peer, permit, drain).await,
            Err(error) => debug!(%error, %peer, "connection not registered with its worker"),
        }
    });
}

/// One connection, from the handshake to its end. `permit` is its place
/// under the connection cap; `drain` says when the server shuts down.
async fn serve_conn<A: Acceptor>(
    shared: Arc<Shared>,
    acceptor: A,
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut drain: watch::Receiver<bool>,
) {
    let _open = s3gate_observe::metrics().connection();
    let (io, conn) = match acceptor.accept(stream, peer).await {
        Ok(accepted) => accepted,
        Err(error) => {
            debug!(%error, %peer, "connection not established");
            return;
        }
    };
    let limits = &shared.limits;
    let send_timeout = limits.send_timeout;
    // HTTP/2 streams are accounted for one by one (see `h2`).
    let activity = conn
        .tls
        .as_ref()
        .is_some_and(TlsInfo::is_h2)
        .then(h2::Activity::new);
    let conn = Arc::new(conn);
    let svc = {
        let shared = shared.clone();
        let conn = conn.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let cx = shared.cx.clone();
            let conn = conn.clone();
            let stream = activity.as_ref().map(h2::Activity::open);
            let permit = shared.requests.clone().try_acquire_owned();
            async move {
                let response = match permit {
                    // The permit is held until the response has
                    // streamed: a download holds a backend
                    // connection as long as an upload does.
                    Ok(permit) => pipeline::handle(cx, conn, req.map(body::ClientBody::Hyper))
                        .await
                        .map(|b| body::holding(b, permit)),
                    Err(_) => pipeline::shed(&cx, conn, req.map(body::ClientBody::Hyper)),
                };
                let response = match stream {
                    Some(stream) => response.map(|b| h2::send_deadline(b, send_timeout, stream)),
                    None => response,
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let mut io = stall::SendTimeout::new(io, send_timeout);
    // HTTP/1.1 starts on the lean server, which hands the connection to
    // hyper at the first request it does not serve itself.
    let mut buf = bytes::BytesMut::new();
    let mut handed_over_draining = false;
    if activity.is_none() {
        match server::serve(&mut io, &mut buf, &shared, &conn, &mut drain).await {
            Ok(server::Next::Closed) => return,
            Ok(server::Next::HandOver { draining }) => handed_over_draining = draining,
            Err(error) => {
                debug!(%error, %peer, "connection ended with error");
                return;
            }
        }
    }
    let io = server::Rewind::new(io, buf.freeze());
    let served = shared
        .http
        .for_conn(&conn)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(served);
    let idle = limits.header_timeout;
    let ending = async {
        match &activity {
            Some(activity) => activity.ending(idle).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(ending);
    // Once the connection was asked to finish (shutdown, or HTTP/2 idle),
    // it is not asked again; after an idle GOAWAY its streams get `idle` to
    // finish (on shutdown, the server's drain timeout bounds them).
    let mut finishing = handed_over_draining;
    if finishing {
        served.as_mut().graceful_shutdown();
    }
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let result = loop {
        tokio::select! {
            r = served.as_mut() => break r,
            _ = drain.changed(), if !finishing => {
                finishing = true;
                served.as_mut().graceful_shutdown();
            }
            why = &mut ending, if !finishing => match why {
                h2::Ending::Idle => {
                    debug!(%peer, "idle HTTP/2 connection closed");
                    finishing = true;
                    served.as_mut().graceful_shutdown();
                    deadline = Some(Box::pin(tokio::time::sleep(idle)));
                }
                // As on HTTP/1.1, a client that takes no response bytes is
                // disconnected.
                h2::Ending::Stalled => break Ok(()),
            },
            () = async {
                match deadline.as_mut() {
                    Some(d) => d.await,
                    None => std::future::pending().await,
                }
            } => break Ok(()),
        }
    };
    if let Err(error) = result {
        let cause = std::error::Error::source(&*error).map(ToString::to_string);
        debug!(%error, cause = cause.as_deref().unwrap_or("-"), %peer, "connection ended with error");
    }
    drop(drain);
    drop(permit);
}

/// Where the data plane listens, as written to a ready file:
/// `{"s3": "addr", "s3_tls": "addr"}`, each when it listens.
pub fn ready_json(s3: Option<SocketAddr>, s3_tls: Option<SocketAddr>) -> String {
    let fields: Vec<String> = [("s3", s3), ("s3_tls", s3_tls)]
        .into_iter()
        .filter_map(|(name, addr)| addr.map(|a| format!("\"{name}\": \"{a}\"")))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
