//! The admin HTTP listener (`--admin-listen`): `/metrics`, `/healthz`,
//! `/readyz`. Separate from the S3 and gRPC ports, so scrapes and probes
//! never queue behind client traffic and can be firewalled apart.
//!
//! It keeps serving while the process drains: that is when `/readyz`
//! answering 503 matters.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// How long one `/readyz` check may take before it counts as not ready.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Header deadline of an admin connection: probes are small and quick.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the process can do its work right now, apart from draining
/// (which [`Health`] knows itself).
#[async_trait]
pub trait Readiness: Send + Sync {
    /// `Err` says why not, in one line, for the probe's body and logs.
    async fn check(&self) -> Result<(), String>;
}

/// Always ready (an embedded control plane, which the process itself is).
pub struct AlwaysReady;

#[async_trait]
impl Readiness for AlwaysReady {
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What `/healthz` and `/readyz` answer from.
pub struct Health {
    draining: AtomicBool,
    readiness: Arc<dyn Readiness>,
}

impl Health {
    pub fn new(readiness: Arc<dyn Readiness>) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            readiness,
        })
    }

    /// From now on `/readyz` answers 503: the process is shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Ready, or why not.
    pub async fn ready(&self) -> Result<(), String> {
        if self.draining() {
            return Err("draining".to_owned());
        }
        match tokio::time::timeout(READY_CHECK_TIMEOUT, self.readiness.check()).await {
            Ok(result) => result,
            Err(_) => Err("readiness check timed out".to_owned()),
        }
    }
}

/// Admin connections served at once. Probes and scrapes need a handful; a
/// client that opens more waits in the kernel's accept queue instead of
/// costing the process a task and buffers each.
pub const MAX_CONNECTIONS: usize = 64;
/// How long one admin connection may live. Prometheus keeps its scrape
/// connection open; after this it is closed gracefully (the request in
/// progress finishes) and the scraper reconnects, so an idle or slow peer
/// cannot hold one of the [`MAX_CONNECTIONS`] slots forever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// After the graceful close starts, how long the request in progress has.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves the admin endpoints on `listener` for the life of the process,
/// with the default bounds.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    serve_bounded(listener, health, MAX_CONNECTIONS, CONNECTION_LIFETIME).await
}

/// [`serve`] with explicit bounds: at most `max_connections` at once (the
/// next is accepted when one ends), each closed after `lifetime`.
pub async fn serve_bounded(
    listener: TcpListener,
    health: Arc<Health>,
    max_connections: usize,
    lifetime: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        // Take the slot before accepting: past the cap, connections wait in
        // the listen backlog rather than being accepted and parked.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(error) => {
                // Out of file descriptors, say: do not spin.
                warn!(%error, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(req, &health).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = tokio::time::sleep(lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                        Ok(result) => result,
                        Err(_) => Ok(()), // dropped: the socket closes
                    }
                }
            };
            if let Err(error) = result {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
}

async fn answer(req: Request<Incoming>, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_owned());
    }
    match req.uri().path() {
        "/metrics" => {
            let body = crate::metrics().encode();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match health.ready().await {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn healthz(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test]
    async fn connections_are_capped_and_idle_ones_end_after_their_lifetime() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::new(Arc::new(AlwaysReady));
        tokio::spawn(serve_bounded(
            listener,
            health,
            2,
            Duration::from_millis(800),
        ));

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));

        // The third connects (the kernel's backlog) but is not served while
        // the two hold their slots.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
        assert!(early.is_err(), "a third connection was served past the cap");

        // The idle two are closed at the end of their lifetime, which frees
        // the slots: the third is answered.
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("the third connection was never served")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "an idle connection outlived its lifetime"
        );
    }
}
