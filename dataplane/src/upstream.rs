//! Pooled HTTP clients towards backends, one per backend: plain http or
//! https over rustls (the webpki roots, an optional extra CA bundle, or —
//! development only — no verification), directly or through an egress
//! proxy, with the backend's connection-pool limit and timeouts.
//!
//! Built on a route-cache miss and kept per backend, so the request path
//! only clones an `Arc`; a backend whose settings changed gets a new one.
//!
//! Every way a backend can fail before answering ends in a
//! [`BackendFailure`] with its [`Cause`]: a refused or timed-out connect, a
//! proxy that is down or refuses the tunnel, a TLS failure, a reset, no
//! answer within `response_timeout`, or no free slot in the pool.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::PROXY_AUTHORIZATION;
use http::uri::Scheme;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use s3gate_proto::{Backend, BackendLimits, Egress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body::Body;
use crate::error::BoxError;
use crate::pool::{Checkout, Pool, ResponseBody, SendError};

/// Opens a backend connection: TCP, through the proxy if any, TLS for
/// https, all within the connect timeout.
pub type Connector = Deadline<HttpsConnector<EgressConnector>>;
/// What [`Connector`] opens.
pub type ConnectorIo = hyper_rustls::MaybeHttpsStream<EgressStream>;

/// How long an unused backend connection stays open.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a free slot in a full backend pool before
/// it is answered 503 SlowDown.
pub const POOL_WAIT: Duration = Duration::from_secs(2);

/// Why a backend request failed, as logged (`cause=`) and as the client's
/// error is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// `max_connections` requests were in flight for [`POOL_WAIT`].
    PoolFull,
    ConnectRefused,
    /// TCP connect, proxy CONNECT and TLS handshake took longer than
    /// `connect_timeout`.
    ConnectTimeout,
    /// Name resolution or another failure to open the connection.
    ConnectFailed,
    ProxyUnreachable,
    /// The proxy answered the CONNECT with something else than 2xx.
    ProxyRefused,
    /// The proxy wants (other) credentials: 407.
    ProxyAuth,
    /// Handshake failure: an unknown CA, a name mismatch, an expired
    /// certificate, a protocol mismatch.
    Tls,
    /// The connection was reset or closed before a response.
    Reset,
    /// No response headers within `response_timeout`.
    ResponseTimeout,
    /// Anything else (a malformed response…).
    Other,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PoolFull => "pool_full",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectFailed => "connect_failed",
            Self::ProxyUnreachable => "proxy_unreachable",
            Self::ProxyRefused => "proxy_refused",
            Self::ProxyAuth => "proxy_auth",
            Self::Tls => "tls",
            Self::Reset => "connection_reset",
            Self::ResponseTimeout => "response_timeout",
            Self::Other => "protocol",
        }
    }

    /// Nothing of the request reached the backend: a retry is safe.
    pub fn before_backend(self) -> bool {
        matches!(
            self,
            Self::PoolFull
                | Self::ConnectRefused
                | Self::ConnectTimeout
                | Self::ConnectFailed
                | Self::ProxyUnreachable
                | Self::ProxyRefused
        )
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend that did not answer. The detail is the error chain, which
/// names addresses and causes but never a credential (proxy credentials are
/// never part of a URL here, backend ones never reach the connector).
#[derive(Debug, thiserror::Error)]
#[error("backend {backend}: {cause}: {detail}")]
pub struct BackendFailure {
    pub backend: Arc<str>,
    pub cause: Cause,
    pub detail: String,
}

/// Opening the connection failed: nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
#[error("connecting failed")]
struct ConnectError(#[source] BoxError);

/// What the egress connector itself reports.
#[derive(Debug, thiserror::Error)]
enum EgressError {
    #[error("proxy {proxy} unreachable")]
    ProxyUnreachable {
        proxy: String,
        #[source]
        source: BoxError,
    },
    #[error("proxy {proxy} answered CONNECT with {status}")]
    ProxyRefused { proxy: String, status: u16 },
    #[error("proxy {proxy} refused the credentials (407)")]
    ProxyAuth { proxy: String },
    #[error("proxy {proxy} sent no valid answer to CONNECT")]
    ProxyProtocol { proxy: String },
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
}

impl EgressError {
    fn cause(&self) -> Cause {
        match self {
            Self::ProxyUnreachable { .. } => Cause::ProxyUnreachable,
            Self::ProxyRefused { .. } | Self::ProxyProtocol { .. } => Cause::ProxyRefused,
            Self::ProxyAuth { .. } => Cause::ProxyAuth,
            Self::ConnectTimeout(_) => Cause::ConnectTimeout,
        }
    }
}

/// The classification of an error from the client: the connector's own
/// errors first, then TLS, then I/O kinds.
fn classify(err: &(dyn std::error::Error + 'static)) -> Cause {
    let mut connect = false;
    let mut found = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        connect |= e.is::<ConnectError>();
        if let Some(eg) = e.downcast_ref::<EgressError>() {
            return eg.cause();
        }
        if e.is::<rustls::Error>() {
            return Cause::Tls;
        }
        if let Some(mut io) = e.downcast_ref::<io::Error>() {
            // io::Error::source() skips the error it wraps, and hyper-rustls
            // wraps tokio-rustls's io::Error in another: look inside.
            while let Some(inner) = io.get_ref() {
                if inner.is::<rustls::Error>() {
                    return Cause::Tls;
                }
                if let Some(eg) = inner.downcast_ref::<EgressError>() {
                    return eg.cause();
                }
                match inner.downcast_ref::<io::Error>() {
                    Some(nested) => io = nested,
                    None => break,
                }
            }
            found = found.or(match io.kind() {
                io::ErrorKind::ConnectionRefused => Some(Cause::ConnectRefused),
                io::ErrorKind::TimedOut => Some(Cause::ConnectTimeout),
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => Some(Cause::Reset),
                _ => None,
            });
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                found = found.or(Some(Cause::Reset));
            }
        }
        next = e.source();
    }
    match found {
        Some(Cause::Reset) if connect => Cause::ConnectFailed,
        Some(c) => c,
        None if connect => Cause::ConnectFailed,
        None => Cause::Other,
    }
}

/// The error chain in one line, bounded.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if !out.is_empty() {
            out.push_str(": ");
        }
        // (An io::Error shows the error it wraps.)
        let _ = write!(out, "{e}");
        if out.len() > 512 {
            break;
        }
        next = e.source();
    }
    out
}

/// Everything about a backend that its client is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    https: bool,
    ca_bundle: Option<String>,
    insecure: bool,
    egress: Egress,
    limits: BackendLimits,
}

impl Settings {
    fn of(backend: &Backend) -> Self {
        Self {
            https: backend.endpoint.starts_with("https://"),
            ca_bundle: backend.ca_bundle.clone(),
            insecure: backend.insecure_skip_verify,
            egress: backend.egress.clone(),
            limits: backend.limits,
        }
    }
}

/// One backend's connections, limits and response timeout.
pub struct Upstream {
    name: Arc<str>,
    settings: Settings,
    /// Idle connections per connection worker, whose connections live on
    /// that worker's runtime, and for every other thread (see
    /// [`crate::workers`]); at most `max_connections` open in all.
    pool: Pool,
    /// `max_connections` requests in flight.
    slots: Arc<Semaphore>,
    response_timeout: Duration,
    /// The proxy of an http endpoint: requests through it carry its
    /// `Proxy-Authorization`, and its own 407 is not the backend's answer.
    http_proxy: Option<Arc<Proxy>>,
}

/// Held by a request from before it is sent until its response body is
/// done or dropped: one slot of the backend's pool and the connection,
/// given back to the pool first.
pub struct Slot {
    _connection: Checkout,
    _permit: OwnedSemaphorePermit,
}

impl Upstream {
    /// The idle list of the thread's worker, or the shared one.
    fn home() -> usize {
        crate::workers::Workers::current().unwrap_or(usize::MAX)
    }

    /// Connections open to this backend now.
    pub fn open_connections(&self) -> usize {
        self.pool.open()
    }

    /// Sends `req` within the backend's limits. The returned slot must live
    /// as long as the response body.
    pub async fn send(
        &self,
        mut req: Request<Body>,
    ) -> Result<(Response<ResponseBody>, Slot), BackendFailure> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                match tokio::time::timeout(POOL_WAIT, self.slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        return Err(self.failure(
                            Cause::PoolFull,
                            format!(
                                "{} requests in flight for {POOL_WAIT:?}",
                                self.settings.limits.max_connections
                            ),
                        ))
                    }
                }
            }
        };
        let proxied = self
            .http_proxy
            .as_ref()
            .filter(|p| req.uri().host().is_some_and(|h| p.applies_to(h)));
        if let Some(auth) = proxied.and_then(|p| p.auth.as_ref()) {
            req.headers_mut().insert(PROXY_AUTHORIZATION, auth.clone());
        }
        // Bodyless GET and HEAD on a direct plain-http connection: the
        // lean client.
        let lean = proxied.is_none()
            && !self.settings.https
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && req.body().is_end_stream();
        let proxied = proxied.map(|p| p.display.as_str());
        let timeout = self.response_timeout;
        let response = if req.body().is_end_stream() {
            tokio::time::timeout(timeout, self.pool.send(Self::home(), req, POOL_WAIT, lean))
                .await
                .map_err(|_| self.timed_out())?
        } else {
            // The clock starts when the body has been sent: a large upload
            // may take longer than the timeout; no progress for as long
            // may not.
            let start = Instant::now();
            let progress = Arc::new(AtomicU64::new(0));
            let req = req.map(|body| {
                crate::body::boxed(Progress {
                    inner: body,
                    start,
                    last_ms: progress.clone(),
                })
            });
            let request = self.pool.send(Self::home(), req, POOL_WAIT, false);
            tokio::pin!(request);
            let sleep = tokio::time::sleep(timeout);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    r = &mut request => break r,
                    () = &mut sleep => {
                        let last = start + Duration::from_millis(progress.load(Ordering::Relaxed));
                        let deadline = last + timeout;
                        if deadline <= Instant::now() {
                            return Err(self.timed_out());
                        }
                        sleep.as_mut().reset(deadline);
                    }
                }
            }
        };
        match response {
            Ok((r, _)) if proxied.is_some() && is_proxy_auth_failure(&r) => Err(self.failure(
                Cause::ProxyAuth,
                format!("proxy {} answered 407", proxied.unwrap_or_default()),
            )),
            Ok((r, connection)) => Ok((
                r,
                Slot {
                    _connection: connection,
                    _permit: slot,
                },
            )),
            Err(SendError::Full) => Err(self.failure(
                Cause::PoolFull,
                format!(
                    "{} connections open for {POOL_WAIT:?}",
                    self.settings.limits.max_connections
                ),
            )),
            Err(SendError::Connect(e)) => {
                let e = ConnectError(e);
                Err(self.failure(classify(&e), chain(&e)))
            }
            Err(SendError::Http(e)) => Err(self.failure(classify(&e), chain(&e))),
            Err(SendError::Io(e)) => Err(self.failure(classify(&e), chain(&e))),
        }
    }

    fn timed_out(&self) -> BackendFailure {
        self.failure(
            Cause::ResponseTimeout,
            format!("no response within {:?}", self.response_timeout),
        )
    }

    fn failure(&self, cause: Cause, detail: String) -> BackendFailure {
        s3gate_observe::metrics().upstream_error(&self.name, cause.as_str());
        BackendFailure {
            backend: self.name.clone(),
            cause,
            detail,
        }
    }
}

/// Through a proxy, the proxy's refusal of its credentials, not the
/// backend's answer: 407, or 401 (tinyproxy's way; an S3 backend answers
/// 403, never 401).
fn is_proxy_auth_failure<B>(r: &Response<B>) -> bool {
    matches!(
        r.status(),
        http::StatusCode::PROXY_AUTHENTICATION_REQUIRED | http::StatusCode::UNAUTHORIZED
    )
}

/// A request body that records when it last made progress.
struct Progress {
    inner: Body,
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl HttpBody for Progress {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_)) | None) = &polled {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_ms.store(ms, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The data plane's proxy environment, read once at start:
/// `HTTPS_PROXY`/`https_proxy` for https endpoints,
/// `HTTP_PROXY`/`http_proxy` for http ones, `ALL_PROXY`/`all_proxy` for
/// either, `NO_PROXY`/`no_proxy` for exceptions. (Upper case first, as
/// hyper and reqwest read them.)
#[derive(Debug, Clone, Default)]
pub struct ProxyEnv {
    http: Option<String>,
    https: Option<String>,
    no_proxy: Vec<String>,
}

impl ProxyEnv {
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .find_map(&get)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let all = first(["ALL_PROXY", "all_proxy"]);
        Self {
            http: first(["HTTP_PROXY", "http_proxy"]).or_else(|| all.clone()),
            https: first(["HTTPS_PROXY", "https_proxy"]).or(all),
            no_proxy: first(["NO_PROXY", "no_proxy"])
                .map(|v| split_list(&v))
                .unwrap_or_default(),
        }
    }

    /// Whether any proxy is set (for the start-up log line).
    pub fn is_set(&self) -> bool {
        self.http.is_some() || self.https.is_some()
    }
}

/// `http://user:pw@host:port` → `http://host:port`.
fn without_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    if scheme.is_empty() {
        rest.to_owned()
    } else {
        format!("{scheme}://{rest}")
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

pub struct Upstreams {
    connect_timeout: Duration,
    idle_timeout: Duration,
    env: ProxyEnv,
    /// Response fields never passed on, which the lean client need not
    /// keep.
    skip: crate::client::Skip,
    /// By backend name. Only touched on route-cache misses, never per
    /// request.
    backends: Mutex<HashMap<String, Arc<Upstream>>>,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, env: ProxyEnv) -> Self {
        if env.is_set() {
            // Where, never who: credentials in the URLs are cut off.
            let shown = |u: &Option<String>| u.as_deref().map(without_userinfo);
            tracing::info!(
                http = shown(&env.http),
                https = shown(&env.https),
                no_proxy = env.no_proxy.join(","),
                "egress proxy from the environment for backends without their own"
            );
        }
        Self {
            connect_timeout,
            idle_timeout: IDLE_TIMEOUT,
            env,
            skip: crate::client::keep_all,
            backends: Mutex::new(HashMap::new()),
        }
    }

    /// Response header fields the caller drops from every response: the
    /// lean client leaves them out of the map it fills (framing fields
    /// are still read).
    pub fn skipping(mut self, skip: crate::client::Skip) -> Self {
        self.skip = skip;
        self
    }

    /// The backend's client, built on first use and rebuilt when its
    /// settings changed (requests in flight keep the old one).
    pub fn for_backend(&self, backend: &Backend) -> Result<Arc<Upstream>, String> {
        let settings = Settings::of(backend);
        let mut backends = self
            .backends
            .lock()
            .map_err(|_| "client map poisoned".to_owned())?;
        if let Some(u) = backends.get(&backend.name) {
            if u.settings == settings {
                return Ok(u.clone());
            }
        }
        let upstream = Arc::new(self.build(&backend.name, settings)?);
        backends.insert(backend.name.clone(), upstream.clone());
        Ok(upstream)
    }

    fn build(&self, name: &str, settings: Settings) -> Result<Upstream, String> {
        let tls = tls_config(&settings)?;
        let connect_timeout = settings
            .limits
            .connect_timeout
            .unwrap_or(self.connect_timeout);
        let proxy = self.proxy_for(&settings)?.map(Arc::new);
        let mut http = HttpConnector::new_with_resolver(Resolver(GaiResolver::new()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let egress = EgressConnector {
            http,
            proxy: proxy.clone(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(egress);
        let max = usize::try_from(settings.limits.max_connections.max(1)).unwrap_or(usize::MAX);
        let pool = Pool::new(
            Deadline {
                inner: https,
                timeout: connect_timeout,
            },
            max,
            crate::workers::Workers::count() + 1,
            self.idle_timeout,
            crate::CONNECTION_BUFFER,
            self.skip,
        );
        let http_proxy = proxy.filter(|_| !settings.https);
        Ok(Upstream {
            name: Arc::from(name),
            response_timeout: settings.limits.response_timeout,
            slots: Arc::new(Semaphore::new(max)),
            settings,
            pool,
            http_proxy,
        })
    }

    /// The backend's own proxy, else the environment's for its scheme.
    /// The backend's `no_proxy` applies to either; `NO_PROXY` only to the
    /// environment's.
    fn proxy_for(&self, settings: &Settings) -> Result<Option<Proxy>, String> {
        let own = &settings.egress;
        let (url, mut bypass, auth) = match &own.proxy {
            Some(url) => {
                let auth = match &own.proxy_credentials {
                    Some(reference) => Some(proxy_credentials(reference)?),
                    None => None,
                };
                (url.clone(), Vec::new(), auth)
            }
            None => {
                let env = if settings.https {
                    &self.env.https
                } else {
                    &self.env.http
                };
                let Some(url) = env else { return Ok(None) };
                (url.clone(), self.env.no_proxy.clone(), None)
            }
        };
        bypass.extend(own.no_proxy.iter().cloned());
        let (uri, userinfo) = proxy_uri(&url)?;
        let auth = match (auth, userinfo) {
            (Some(a), _) => Some(a),
            (None, Some(userinfo)) => Some(basic(&userinfo)?),
            (None, None) => None,
        };
        Ok(Some(Proxy {
            display: format!(
                "{}:{}",
                uri.host().unwrap_or(""),
                uri.port_u16().unwrap_or(80)
            ),
            uri,
            auth,
            bypass: NoProxy::new(&bypass),
        }))
    }
}

/// `proxy_credentials = "env:VAR"`, read from this process's environment.
fn proxy_credentials(reference: &str) -> Result<HeaderValue, String> {
    let var = reference
        .strip_prefix("env:")
        .ok_or_else(|| "proxy_credentials must be env:VAR".to_owned())?;
    let value = std::env::var(var).map_err(|_| {
        format!("proxy_credentials: {var} is not set in the data plane's environment")
    })?;
    if !value.contains(':') {
        return Err(format!("proxy_credentials: {var} must hold user:password"));
    }
    basic(&value)
}

fn basic(user_password: &str) -> Result<HeaderValue, String> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(user_password);
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| "proxy credentials are not a valid header".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}

/// A proxy URL as `http://host:port/` and its decoded `user:password`, if
/// it has one (the environment's may; a backend's never does).
fn proxy_uri(url: &str) -> Result<(Uri, Option<String>), String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "proxy scheme {scheme}:// is not supported (only http://)"
            ))
        }
        // As curl: no scheme means http.
        None => url,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((u, h)) => (
            Some(
                percent_encoding::percent_decode_str(u)
                    .decode_utf8_lossy()
                    .into_owned(),
            ),
            h,
        ),
        None => (None, authority),
    };
    let uri: Uri = format!("http://{host_port}/")
        .parse()
        .map_err(|_| "proxy is not a valid http://host:port URL".to_owned())?;
    if uri.host().is_none_or(str::is_empty) {
        return Err("proxy has no host".to_owned());
    }
    Ok((uri, userinfo))
}

/// One backend's egress proxy.
pub struct Proxy {
    /// `http://host:port/`.
    uri: Uri,
    /// `host:port`, for logs and errors.
    display: String,
    /// `Proxy-Authorization` (sensitive), if any.
    auth: Option<HeaderValue>,
    bypass: NoProxy,
}

impl Proxy {
    fn applies_to(&self, host: &str) -> bool {
        !self.bypass.matches(host)
    }
}

/// `no_proxy` entries as curl reads them: `*` (everything), an address, a
/// CIDR, or a domain that matches itself and its subdomains (a leading dot
/// is optional). A port after a host is ignored.
#[derive(Debug, Default)]
struct NoProxy {
    all: bool,
    nets: Vec<ipnet::IpNet>,
    domains: Vec<String>,
}

impl NoProxy {
    fn new(entries: &[String]) -> Self {
        let mut out = Self::default();
        for e in entries.iter().flat_map(|e| e.split(',')) {
            let e = e.trim();
            if e.is_empty() {
                continue;
            }
            if e == "*" {
                out.all = true;
            } else if let Ok(net) = e.parse::<ipnet::IpNet>() {
                out.nets.push(net);
            } else if let Ok(ip) = e.trim_matches(['[', ']']).parse::<IpAddr>() {
                out.nets.push(ip.into());
            } else {
                let host = match e.rsplit_once(':') {
                    Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => e,
                };
                let domain = host.trim_start_matches('.');
                if !domain.is_empty() {
                    out.domains.push(domain.to_ascii_lowercase());
                }
            }
        }
        out
    }

    fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_matches(['[', ']']);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.nets.iter().any(|n| n.contains(&ip));
        }
        let host = host.trim_end_matches('.');
        self.domains.iter().any(|d| {
            let Some(start) = host.len().checked_sub(d.len()) else {
                return false;
            };
            host.get(start..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(d))
                && (start == 0 || host.as_bytes().get(start - 1) == Some(&b'.'))
        })
    }
}

/// Opens connections for one backend: directly, or through its proxy (a
/// CONNECT tunnel for https, a connection to the proxy marked as proxied
/// for http, so requests go in absolute form).
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector<Resolver>,
    proxy: Option<Arc<Proxy>>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<EgressStream, BoxError>> + Send>>;

impl tower_service::Service<Uri> for EgressConnector {
    type Response = EgressStream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The resolver (getaddrinfo on the blocking pool) is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let proxy = self
            .proxy
            .clone()
            .filter(|p| dst.host().is_some_and(|h| p.applies_to(h)));
        Box::pin(async move {
            let Some(proxy) = proxy else {
                let io = http.call(dst).await?;
                return Ok(EgressStream { io, proxied: false });
            };
            let io =
                http.call(proxy.uri.clone())
                    .await
                    .map_err(|e| EgressError::ProxyUnreachable {
                        proxy: proxy.display.clone(),
                        source: e.into(),
                    })?;
            if dst.scheme() == Some(&Scheme::HTTPS) {
                let io = tunnel(io, &dst, &proxy).await?;
                Ok(EgressStream { io, proxied: false })
            } else {
                Ok(EgressStream { io, proxied: true })
            }
        })
    }
}

/// Largest CONNECT response head read.
const MAX_CONNECT_RESPONSE: usize = 8 << 10;

/// `CONNECT host:port` on a connection to the proxy; the connection is the
/// tunnel once the proxy answered 2xx.
async fn tunnel(
    mut io: TokioIo<TcpStream>,
    dst: &Uri,
    proxy: &Proxy,
) -> Result<TokioIo<TcpStream>, EgressError> {
    let host = dst.host().unwrap_or("");
    let port = dst.port_u16().unwrap_or(443);
    let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(auth) = &proxy.auth {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.to_str().unwrap_or(""));
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let unreachable = |e: io::Error| EgressError::ProxyUnreachable {
        proxy: proxy.display.clone(),
        source: e.into(),
    };
    let stream = io.inner_mut();
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(unreachable)?;
    drop(head);
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await.map_err(unreachable)?;
        if n == 0 {
            return Err(EgressError::ProxyProtocol {
                proxy: proxy.display.clone(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > MAX_CONNECT_RESPONSE {
            return Err(EgressError::ProxyProtocol {
                proxy: proxy.display.clone(),
            });
        }
    }
    // "HTTP/1.1 200 Connection established"
    let status = buf
        .strip_prefix(b"HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(io),
        // tinyproxy answers 401 where RFC 9110 says 407.
        Some(401 | 407) => Err(EgressError::ProxyAuth {
            proxy: proxy.display.clone(),
        }),
        Some(status) => Err(EgressError::ProxyRefused {
            proxy: proxy.display.clone(),
            status,
        }),
        None => Err(EgressError::ProxyProtocol {
            proxy: proxy.display.clone(),
        }),
    }
}

/// The TCP connection of a direct plain-http connection (for the lean
/// client); `None` for anything else.
pub fn into_direct(io: ConnectorIo) -> Option<TcpStream> {
    match io {
        hyper_rustls::MaybeHttpsStream::Http(EgressStream { io, proxied: false }) => {
            Some(io.into_inner())
        }
        _ => None,
    }
}

/// A connection to a backend or its proxy; `proxied` makes hyper send
/// absolute-form requests (an http backend through a proxy).
pub struct EgressStream {
    io: TokioIo<TcpStream>,
    proxied: bool,
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for EgressStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        hyper::rt::Read::poll_read(Pin::new(&mut self.io), cx, buf)
    }
}

impl hyper::rt::Write for EgressStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write(Pin::new(&mut self.io), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_flush(Pin::new(&mut self.io), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        hyper::rt::Write::poll_shutdown(Pin::new(&mut self.io), cx)
    }

    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.io)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        hyper::rt::Write::poll_write_vectored(Pin::new(&mut self.io), cx, bufs)
    }
}

/// A connector with one deadline over everything it does: TCP connect,
/// proxy CONNECT and TLS handshake.
#[derive(Clone)]
pub struct Deadline<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for Deadline<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(EgressError::ConnectTimeout(timeout).into()),
            }
        })
    }
}

fn tls_config(settings: &Settings) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls config: {e}"))?;
    Ok(if settings.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &settings.ca_bundle {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("ca bundle {path}: {e}"))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca bundle {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca bundle {path}: {e}"))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    })
}

/// The system resolver, except that `localhost` and `*.localhost` are
/// loopback without asking it (RFC 6761 §6.3): virtual-host-style requests
/// to a backend on `localhost` need `<bucket>.localhost` to resolve, and
/// glibc does not do that by itself.
#[derive(Clone)]
pub struct Resolver(GaiResolver);

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if is_localhost(name.as_str()) {
            let addrs = vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
            ];
            return Box::pin(std::future::ready(Ok(addrs.into_iter())));
        }
        let lookup = self.0.call(name);
        Box::pin(async move { Ok(lookup.await?.collect::<Vec<_>>().into_iter()) })
    }
}

fn is_localhost(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host
            .len()
            .checked_sub(".localhost".len())
            .and_then(|i| host.get(i..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(".localhost"))
}

/// Accepts any server certificate. Only reachable through a backend's
/// `insecure_skip_verify = true`, which is documented as development-only.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_proxy(entries: &[&str]) -> NoProxy {
        NoProxy::new(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn no_proxy_matches_like_curl() {
        let n = no_proxy(&[
            ".internal",
            "example.com",
            "10.0.0.0/8",
            "::1",
            "minio:9000",
        ]);
        for host in [
            "a.internal",
            "internal",
            "example.com",
            "s3.EXAMPLE.com",
            "10.1.2.3",
            "[::1]",
            "minio",
        ] {
            assert!(n.matches(host), "{host}");
        }
        for host in [
            "notexample.com",
            "example.com.evil",
            "11.0.0.1",
            "127.0.0.1",
            "internal.x",
        ] {
            assert!(!n.matches(host), "{host}");
        }
        assert!(no_proxy(&["*"]).matches("anything"));
        assert!(!no_proxy(&[]).matches("anything"));
        // One NO_PROXY value with commas.
        assert!(no_proxy(&["a.com, b.com"]).matches("x.b.com"));
    }

    #[test]
    fn proxy_urls() {
        let (uri, user) = proxy_uri("http://127.0.0.1:3128").unwrap();
        assert_eq!(
            (uri.to_string(), user),
            ("http://127.0.0.1:3128/".to_owned(), None)
        );
        let (uri, user) = proxy_uri("http://u%40x:p%3Aw@proxy:8080/").unwrap();
        assert_eq!(uri.to_string(), "http://proxy:8080/");
        assert_eq!(user.as_deref(), Some("u@x:p:w"));
        // No scheme: http, as curl.
        assert_eq!(
            proxy_uri("proxy:3128").unwrap().0.to_string(),
            "http://proxy:3128/"
        );
        assert!(proxy_uri("socks5://proxy:1080").is_err());
        assert!(proxy_uri("https://proxy:443").is_err());
        assert_eq!(
            without_userinfo("http://u:secret@proxy:1"),
            "http://proxy:1"
        );
    }

    #[test]
    fn proxy_environment_upper_case_first() {
        let env = ProxyEnv::from_lookup(|name| match name {
            "HTTPS_PROXY" => Some("http://upper:1".into()),
            "https_proxy" => Some("http://lower:1".into()),
            "all_proxy" => Some("http://all:1".into()),
            "no_proxy" => Some("a.com, ,b.com".into()),
            _ => None,
        });
        assert_eq!(env.https.as_deref(), Some("http://upper:1"));
        assert_eq!(env.http.as_deref(), Some("http://all:1"));
        assert_eq!(env.no_proxy, ["a.com", "b.com"]);
        assert!(!ProxyEnv::from_lookup(|_| None).is_set());
    }

    async fn fake_proxy(answer: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(answer).await.unwrap();
            got
        });
        (addr, task)
    }

    fn proxy_at(addr: SocketAddr, auth: Option<&str>) -> Proxy {
        Proxy {
            uri: format!("http://{addr}/").parse().unwrap(),
            display: addr.to_string(),
            auth: auth.map(|a| basic(a).unwrap()),
            bypass: NoProxy::default(),
        }
    }

    #[tokio::test]
    async fn connect_tunnel_answers() {
        let dst: Uri = "https://bucket.s3.example:9443/".parse().unwrap();
        for (answer, want) in [
            (&b"HTTP/1.1 200 Connection established\r\n\r\n"[..], None),
            (
                b"HTTP/1.0 407 Proxy Authentication Required\r\nX: y\r\n\r\n",
                Some(Cause::ProxyAuth),
            ),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", Some(Cause::ProxyRefused)),
            (b"garbage\r\n\r\n", Some(Cause::ProxyRefused)),
        ] {
            let (addr, task) = fake_proxy(answer).await;
            let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
            let r = tunnel(io, &dst, &proxy_at(addr, Some("user:pw"))).await;
            assert_eq!(r.as_ref().err().map(EgressError::cause), want);
            let sent = String::from_utf8(task.await.unwrap()).unwrap();
            assert!(
                sent.starts_with("CONNECT bucket.s3.example:9443 HTTP/1.1\r\n"),
                "{sent}"
            );
            // base64("user:pw")
            assert!(
                sent.contains("Proxy-Authorization: Basic dXNlcjpwdw==\r\n"),
                "{sent}"
            );
        }
    }

    #[tokio::test]
    async fn refused_connects_are_classified() {
        // A port nobody listens on: bind, learn the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let backend = plain_backend(
            "gone",
            SocketAddr::from(([127, 0, 0, 1], port)),
            BackendLimits::default().max_connections,
        );
        let ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        let u = ups.for_backend(&backend).unwrap();
        assert!(Arc::ptr_eq(&u, &ups.for_backend(&backend).unwrap()));
        let req = Request::get(format!("http://127.0.0.1:{port}/b/k"))
            .body(crate::body::empty())
            .unwrap();
        let err = u.send(req).await.err().unwrap();
        assert_eq!(err.cause, Cause::ConnectRefused, "{err}");
        assert!(
            err.to_string()
                .starts_with("backend gone: connect_refused: "),
            "{err}"
        );
        // Through a proxy that is down, the proxy is the cause.
        let mut proxied = backend.clone();
        proxied.egress.proxy = Some(format!("http://127.0.0.1:{port}"));
        let u2 = ups.for_backend(&proxied).unwrap();
        assert!(!Arc::ptr_eq(&u, &u2));
        let req = Request::get("http://backend.example:9000/b/k")
            .body(crate::body::empty())
            .unwrap();
        let err = u2.send(req).await.err().unwrap();
        assert_eq!(err.cause, Cause::ProxyUnreachable, "{err}");
    }

    /// An http backend on 127.0.0.1 whose handler waits `delay`: counts
    /// connections accepted and open now.
    struct Counted {
        addr: SocketAddr,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        open: Arc<std::sync::atomic::AtomicUsize>,
    }

    async fn counted_backend(delay: Duration) -> Counted {
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (a, o) = (accepted.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counted {
            addr,
            accepted,
            open,
        }
    }

    fn plain_backend(name: &str, addr: SocketAddr, max_connections: u32) -> Backend {
        Backend {
            name: name.into(),
            endpoint: format!("http://{addr}"),
            region: "us-east-1".into(),
            addressing_style: s3gate_proto::AddressingStyle::Path,
            ca_bundle: None,
            insecure_skip_verify: false,
            key_segment_guard: true,
            egress: Egress::default(),
            limits: BackendLimits {
                max_connections,
                ..BackendLimits::default()
            },
        }
    }

    /// Sends one request to `addr` and reads its whole body; the status.
    async fn send_one(
        u: &Upstream,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<u16, String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(http::header::HOST, addr.to_string())
            .body(body)
            .map_err(|e| e.to_string())?;
        let (response, slot) = u.send(req).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = crate::body::incoming_holding(response.into_body(), slot);
        http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }

    /// Sends `n` GETs at once and reads every body; the statuses.
    async fn burst(u: Arc<Upstream>, addr: SocketAddr, n: usize) -> Vec<Result<u16, String>> {
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..n {
            let u = u.clone();
            sends.spawn(async move {
                send_one(
                    &u,
                    addr,
                    Method::GET,
                    &format!("/b/k{i}"),
                    crate::body::empty(),
                )
                .await
            });
        }
        let mut out = Vec::new();
        while let Some(r) = sends.join_next().await {
            out.push(r.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backend_connections_stay_within_max_connections_across_workers() {
        let workers = crate::workers::Workers::start(2).unwrap();
        let count = crate::workers::Workers::count();
        assert!(count >= 2);
        let backend = counted_backend(Duration::from_millis(40)).await;
        let ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        let u = ups
            .for_backend(&plain_backend("capped", backend.addr, 2))
            .unwrap();
        // Bursts of 4 on one worker after another: each worker's idle
        // connections are still open when the next worker's burst starts.
        for round in 0..2 * count {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (mine, addr) = (u.clone(), backend.addr);
            workers.spawn_on(round % count, async move {
                let on = crate::workers::Workers::current();
                let _ = tx.send((on, burst(mine, addr, 4).await));
            });
            let (on, results) = rx.await.unwrap();
            assert_eq!(on, Some(round % count));
            assert!(results.iter().all(|r| r == &Ok(200)), "{results:?}");
            assert!(u.open_connections() <= 2, "{}", u.open_connections());
            // The backend learns of a close when it reads the FIN: give it
            // a moment, then count what it holds open.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let open = backend.open.load(Ordering::SeqCst);
            assert!(open <= 2, "the backend holds {open} connections");
        }
        // Connections are reused, not opened per request.
        let accepted = backend.accepted.load(Ordering::SeqCst);
        assert!(accepted < 4 * 2 * count, "{accepted} connections");
    }

    #[tokio::test]
    async fn a_kept_connection_closed_after_the_request_left_is_retried() {
        // Answers the first request on each connection; reads the second
        // and closes without an answer (a keep-alive timeout that struck
        // just as the request arrived).
        use std::sync::atomic::AtomicUsize;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answer in [true, false] {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if answer {
                            let _ = tcp
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        let ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        let u = ups.for_backend(&plain_backend("racer", addr, 4)).unwrap();
        for round in 1..=3 {
            assert_eq!(burst(u.clone(), addr, 1).await, vec![Ok(200)], "{round}");
        }
        // The second and third requests each found their kept connection
        // closed after writing, and went again on a new one.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn lean_and_hyper_connections_share_max_connections() {
        let backend = counted_backend(Duration::ZERO).await;
        let ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        let u = ups
            .for_backend(&plain_backend("mixed", backend.addr, 1))
            .unwrap();
        let addr = backend.addr;
        // GET and HEAD: lean; PUT with a body: hyper. One connection at a
        // time: each kind closes the other's idle one to get its permit.
        for (method, body) in [
            (Method::GET, crate::body::empty()),
            (Method::HEAD, crate::body::empty()),
            (Method::PUT, crate::body::full("data")),
            (Method::GET, crate::body::empty()),
            (Method::PUT, crate::body::full("more")),
        ] {
            assert_eq!(
                send_one(&u, addr, method.clone(), "/b/k", body).await,
                Ok(200),
                "{method}"
            );
            assert!(u.open_connections() <= 1, "{}", u.open_connections());
        }
        // GET, HEAD on one lean connection, then one per change of kind.
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 4);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(backend.open.load(Ordering::SeqCst) <= 1);
    }

    #[tokio::test]
    async fn idle_connections_close_and_closed_ones_are_not_used() {
        let backend = counted_backend(Duration::ZERO).await;
        let mut ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        ups.idle_timeout = Duration::from_millis(300);
        let u = ups
            .for_backend(&plain_backend("idle", backend.addr, 8))
            .unwrap();
        assert_eq!(burst(u.clone(), backend.addr, 1).await, vec![Ok(200)]);
        assert_eq!(burst(u.clone(), backend.addr, 1).await, vec![Ok(200)]);
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 1, "reused");
        assert_eq!(u.open_connections(), 1);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(u.open_connections(), 0, "closed after the idle timeout");
        assert_eq!(backend.open.load(Ordering::SeqCst), 0);
        assert_eq!(burst(u.clone(), backend.addr, 1).await, vec![Ok(200)]);
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_backend_closing_kept_alive_connections_fails_no_request() {
        // Answers keep-alive, then closes the socket anyway.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let mut ups = Upstreams::new(Duration::from_secs(2), ProxyEnv::default());
        ups.idle_timeout = Duration::from_secs(2);
        let u = ups.for_backend(&plain_backend("closer", addr, 4)).unwrap();
        for _ in 0..5 {
            assert_eq!(burst(u.clone(), addr, 1).await, vec![Ok(200)]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A lean connection has no task: the next request or the sweep
        // (a quarter of the idle timeout) finds it closed.
        let deadline = Instant::now() + Duration::from_secs(2);
        while u.open_connections() != 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(u.open_connections(), 0);
    }

    #[test]
    fn localhost_names() {
        for h in [
            "localhost",
            "LOCALHOST",
            "data.localhost",
            "a.b.localhost.",
            "x.LocalHost",
        ] {
            assert!(is_localhost(h), "{h}");
        }
        for h in [
            "localhost.com",
            "notlocalhost",
            "example.com",
            "",
            "localhos",
        ] {
            assert!(!is_localhost(h), "{h}");
        }
    }
}
