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

/// Serves the admin endpoints on `listener` for the life of the process.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
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
            let service = hyper::service::service_fn(move |req| {
                let health = health.clone();
                async move { Ok::<_, Infallible>(answer(req, &health).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
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
