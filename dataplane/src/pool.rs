//! A backend's HTTP/1.1 connections: kept per connection worker, bounded
//! together.
//!
//! Each worker (see [`crate::workers`]) has its own idle list, so taking a
//! connection is an uncontended lock on the thread that uses it, and a
//! connection's task runs on the runtime of the requests it carries. Every
//! open connection, idle or busy, holds one permit of the backend's
//! `max_connections`: when a worker needs a new connection and none is
//! left, it closes an idle one of another worker first. So the backend
//! never sees more than `max_connections` connections from this process,
//! however the load moves between workers.
//!
//! What hyper-util's pooled client did and this keeps: connections are
//! reused per scheme and authority; a request whose reused connection
//! turned out closed before anything was sent goes again on a new one;
//! idle connections close after the idle timeout; a connection to an http
//! proxy gets requests in absolute form, any other in origin form.
//!
//! Bodyless `GET` and `HEAD` requests on direct plain-http connections go
//! through the lean client ([`crate::client`]) on connections of their own
//! kind, kept in a second idle list: no task per connection, so the pool
//! looks after them itself. Taking one checks, without a system call
//! unless the socket became readable, that the backend has not closed it;
//! one found closed after the request was written is retried on another
//! (both methods are idempotent); a sweep every few seconds closes those
//! idle too long or closed by the backend.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::Connection as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::body::Body;
use crate::client;
use crate::error::BoxError;
use crate::upstream::{Connector, ConnectorIo};

/// A connection's state: idle since (milliseconds after the pool's epoch),
/// or one of these.
const IN_USE: u64 = u64::MAX;
const CLOSED: u64 = u64::MAX - 1;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened within the wait: `max_connections`
    /// were open and none became free.
    Full,
    /// Opening the connection failed (TCP, proxy, TLS).
    Connect(BoxError),
    /// The connection failed while the request was sent or the response
    /// read.
    Http(hyper::Error),
    /// The same, on a lean connection.
    Io(io::Error),
}

/// A backend response's body: from a hyper connection, or read by the lean
/// client.
pub enum ResponseBody {
    Hyper(Incoming),
    Lean(client::Body<Home>),
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Lean(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Lean(b) => b.size_hint(),
        }
    }
}

/// One backend's connections.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// One idle list per worker and a last one for every other thread, by
    /// authority (a virtual-host backend has one per bucket).
    idle: Box<[Mutex<IdleList>]>,
    /// The lean client's idle connections, the same way.
    lean: Box<[Mutex<LeanList>]>,
    /// Whether the sweep of idle lean connections runs.
    sweeping: AtomicBool,
    /// One permit per open connection, `max` in all.
    open: Arc<Semaphore>,
    max: usize,
    connector: Connector,
    idle_timeout: Duration,
    max_buf: usize,
    /// Response fields the lean client leaves out of the map.
    skip: client::Skip,
    epoch: Instant,
}

/// What a connection and the pool share.
struct ConnState {
    /// Idle since (ms after the epoch), [`IN_USE`] or [`CLOSED`]. Whoever
    /// moves it out of an idle value owns the change: a request taking the
    /// connection, or the connection's task closing it.
    state: AtomicU64,
    /// The connection goes to an http proxy: requests in absolute form.
    proxied: bool,
    key: Arc<str>,
}

/// The idle lists' hash: their keys are backend authorities from the
/// configuration, looked up twice per request.
type Hasher = foldhash::fast::RandomState;

/// One worker's idle connections, by authority as the request spelled it
/// (hashed as a plain string: `Authority`'s own hash folds case byte by
/// byte).
type IdleList = HashMap<Arc<str>, Vec<Idle>, Hasher>;

struct Idle {
    sender: http1::SendRequest<Body>,
    conn: Arc<ConnState>,
}

/// By authority; each entry keeps its key, which a connection taken from
/// it parks under again (one allocation less per request).
type LeanList = HashMap<Arc<str>, LeanEntries, Hasher>;

struct LeanEntries {
    key: Arc<str>,
    conns: Vec<LeanIdle>,
}

struct LeanIdle {
    conn: client::Conn,
    /// Idle since (ms after the pool's epoch).
    since: u64,
}

/// Where a lean connection goes back to when its response is done: the
/// idle list of the worker whose request used it.
pub struct Home {
    shared: Arc<Shared>,
    home: usize,
    key: Arc<str>,
}

impl client::Park for Home {
    fn park(self, conn: client::Conn) {
        let since = self.shared.now_ms();
        if let Ok(mut idle) = self.shared.lean[self.home].lock() {
            let entry = LeanIdle { conn, since };
            match idle.get_mut(&*self.key) {
                Some(list) => list.conns.push(entry),
                None => {
                    let entries = LeanEntries {
                        key: self.key.clone(),
                        conns: vec![entry],
                    };
                    idle.insert(self.key, entries);
                }
            }
        }
    }
}

/// A connection in use by one request. Given back when dropped after its
/// response arrived; closed when dropped before (an error, a timeout).
pub struct Checkout {
    /// Taken when dropped, to go back to the idle list as it is.
    live: Option<Idle>,
    answered: bool,
    /// The idle list it goes back to.
    home: usize,
    shared: Arc<Shared>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(entry) = self.live.take() else {
            return;
        };
        if !self.answered || entry.sender.is_closed() {
            return;
        }
        // Still IN_USE: neither eviction nor the idle timer moves a busy
        // connection, so a plain store is safe.
        entry
            .conn
            .state
            .store(self.shared.now_ms(), Ordering::Release);
        if let Ok(mut idle) = self.shared.idle[self.home].lock() {
            match idle.get_mut(&*entry.conn.key) {
                Some(list) => list.push(entry),
                None => {
                    let key = entry.conn.key.clone();
                    idle.insert(key, vec![entry]);
                }
            }
        }
    }
}

impl Pool {
    /// `lists` idle lists (workers + 1); at most `max` connections open.
    pub fn new(
        connector: Connector,
        max: usize,
        lists: usize,
        idle_timeout: Duration,
        max_buf: usize,
        skip: client::Skip,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                idle: (0..lists.max(1))
                    .map(|_| Mutex::new(HashMap::default()))
                    .collect(),
                lean: (0..lists.max(1))
                    .map(|_| Mutex::new(HashMap::default()))
                    .collect(),
                sweeping: AtomicBool::new(false),
                open: Arc::new(Semaphore::new(max.max(1))),
                max: max.max(1),
                connector,
                idle_timeout,
                max_buf,
                skip,
                epoch: Instant::now(),
            }),
        }
    }

    /// Sends `req` (absolute URI) on a connection of list `home`: an idle
    /// one, else a new one. `wait` bounds the wait for a free connection.
    /// `lean`: the request is a bodyless `GET` or `HEAD` to a direct
    /// plain-http backend, for the lean client.
    pub async fn send(
        &self,
        home: usize,
        mut req: Request<Body>,
        wait: Duration,
        lean: bool,
    ) -> Result<(Response<ResponseBody>, Checkout), SendError> {
        let home = home.min(self.shared.idle.len() - 1);
        let (scheme, authority) = match (req.uri().scheme(), req.uri().authority()) {
            (Some(s), Some(a)) => (s.clone(), a.clone()),
            _ => return Err(SendError::Connect("request URI is not absolute".into())),
        };
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = HeaderValue::from_str(host_header(&scheme, &authority)) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        if lean {
            return self.send_lean(home, req, &scheme, &authority, wait).await;
        }
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // A request that never left on a reused connection goes again; a
        // new connection is the last try.
        for _ in 0..4 {
            let (mut checkout, reused) = match self.shared.take_idle(home, &authority) {
                Some(c) => (c, true),
                // Boxed: rare, and its future is the largest part of this
                // one.
                None => (
                    Box::pin(self.connect(home, &scheme, &authority, wait)).await?,
                    false,
                ),
            };
            let Some(live) = checkout.live.as_mut() else {
                return Err(SendError::Connect("connection lost".into()));
            };
            set_form(&mut req, live.conn.proxied, &scheme, &authority, &path);
            match live.sender.try_send_request(req).await {
                Ok(response) => {
                    checkout.answered = true;
                    return Ok((response.map(ResponseBody::Hyper), checkout));
                }
                // The checkout is dropped unanswered: the connection is
                // done.
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        Err(SendError::Connect(
            "reused connections kept closing before the request was sent".into(),
        ))
    }

    /// [`Self::send`] through the lean client. A reused connection that
    /// turns out closed before anything came back is given up and the
    /// request goes again (it is a `GET` or `HEAD`: idempotent); a new
    /// connection is the last try.
    async fn send_lean(
        &self,
        home: usize,
        req: Request<Body>,
        scheme: &Scheme,
        authority: &Authority,
        wait: Duration,
    ) -> Result<(Response<ResponseBody>, Checkout), SendError> {
        let (parts, _) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        for _ in 0..4 {
            let (conn, key, reused) = match self.shared.take_lean(home, authority) {
                Some((c, key)) => (c, key, true),
                None => (
                    Box::pin(self.connect_lean(scheme, authority, wait)).await?,
                    authority.as_str().into(),
                    false,
                ),
            };
            let park = Home {
                shared: self.shared.clone(),
                home,
                key,
            };
            match client::send(
                conn,
                &parts.method,
                target,
                &parts.headers,
                self.shared.skip,
                park,
            )
            .await
            {
                Ok(response) => {
                    let checkout = Checkout {
                        live: None,
                        answered: true,
                        home,
                        shared: self.shared.clone(),
                    };
                    return Ok((response.map(ResponseBody::Lean), checkout));
                }
                Err(failed) if reused && failed.closed_early => {
                    tracing::debug!(error = %failed.error, "reused backend connection was closed; sending again");
                }
                Err(failed) => return Err(SendError::Io(failed.error)),
            }
        }
        Err(SendError::Connect(
            "reused connections kept closing before the request was sent".into(),
        ))
    }

    /// A permit and an open connection (TCP, proxy, TLS), within `wait`
    /// for the permit.
    async fn open_conn(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        wait: Duration,
    ) -> Result<(ConnectorIo, OwnedSemaphorePermit), SendError> {
        let shared = &self.shared;
        let permit = match shared.open.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: close an idle connection (another worker's, or one
                // to another bucket) and take its permit when it is gone.
                shared.evict_one();
                match tokio::time::timeout(wait, shared.open.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(SendError::Full),
                }
            }
        };
        let dst = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let mut connector = shared.connector.clone();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut connector, cx))
            .await
            .map_err(SendError::Connect)?;
        let io = tower_service::Service::call(&mut connector, dst)
            .await
            .map_err(SendError::Connect)?;
        Ok((io, permit))
    }

    async fn connect_lean(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        wait: Duration,
    ) -> Result<client::Conn, SendError> {
        let (io, permit) = self.open_conn(scheme, authority, wait).await?;
        let tcp = crate::upstream::into_direct(io).ok_or_else(|| {
            SendError::Connect("a lean request got a proxied or TLS connection".into())
        })?;
        if !self.shared.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(&self.shared)));
        }
        Ok(client::Conn::new(tcp, permit, self.shared.max_buf))
    }

    async fn connect(
        &self,
        home: usize,
        scheme: &Scheme,
        authority: &Authority,
        wait: Duration,
    ) -> Result<Checkout, SendError> {
        let shared = &self.shared;
        let (io, permit) = self.open_conn(scheme, authority, wait).await?;
        let proxied = io.connected().is_proxied();
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(shared.max_buf)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let conn = Arc::new(ConnState {
            state: AtomicU64::new(IN_USE),
            proxied,
            key: authority.as_str().into(),
        });
        tokio::spawn(run(
            connection,
            permit,
            conn.clone(),
            shared.idle_timeout,
            shared.epoch,
        ));
        Ok(Checkout {
            live: Some(Idle { sender, conn }),
            answered: false,
            home,
            shared: shared.clone(),
        })
    }

    /// Connections open now, idle or busy.
    pub fn open(&self) -> usize {
        self.shared.max - self.shared.open.available_permits()
    }
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(CLOSED - 1)
    }

    /// The newest ready idle connection to `key` in list `home`. Closed
    /// ones are dropped on the way; ones not yet ready (their last response
    /// is still being read) are left.
    fn take_idle(self: &Arc<Self>, home: usize, key: &Authority) -> Option<Checkout> {
        let mut idle = self.idle[home].lock().ok()?;
        let list = idle.get_mut(key.as_str())?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let entry = &list[i];
            if entry.sender.is_closed() {
                list.remove(i);
                continue;
            }
            if !entry.sender.is_ready() {
                continue;
            }
            let since = entry.conn.state.load(Ordering::Acquire);
            let taken = since < CLOSED
                && entry
                    .conn
                    .state
                    .compare_exchange(since, IN_USE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            let entry = list.remove(i);
            if taken {
                return Some(Checkout {
                    live: Some(entry),
                    answered: false,
                    home,
                    shared: self.clone(),
                });
            }
        }
        None
    }

    /// The newest usable idle lean connection to `key` in list `home`;
    /// closed ones are dropped on the way.
    /// The list's key comes along: the connection parks under it again.
    fn take_lean(&self, home: usize, key: &Authority) -> Option<(client::Conn, Arc<str>)> {
        let mut idle = self.lean[home].lock().ok()?;
        let list = idle.get_mut(key.as_str())?;
        while let Some(entry) = list.conns.pop() {
            if entry.conn.is_usable() {
                return Some((entry.conn, list.key.clone()));
            }
        }
        None
    }

    /// Closes the idle lean connections that were idle for the idle timeout
    /// or were closed by the backend.
    fn sweep_lean(&self) {
        let now = self.now_ms();
        let timeout = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        for list in self.lean.iter() {
            let Ok(mut idle) = list.lock() else { continue };
            idle.retain(|_, entries| {
                entries
                    .conns
                    .retain(|e| now.saturating_sub(e.since) < timeout && e.conn.is_usable());
                !entries.conns.is_empty()
            });
        }
    }

    /// Closes one idle connection of any list, if there is one.
    fn evict_one(&self) {
        for list in self.lean.iter() {
            let Ok(mut idle) = list.lock() else { continue };
            for entries in idle.values_mut() {
                if entries.conns.pop().is_some() {
                    // Dropping it closes it and gives its permit back.
                    return;
                }
            }
        }
        for list in self.idle.iter() {
            let Ok(mut idle) = list.lock() else { continue };
            for entries in idle.values_mut() {
                while let Some(entry) = entries.pop() {
                    let since = entry.conn.state.load(Ordering::Acquire);
                    if since < CLOSED
                        && entry
                            .conn
                            .state
                            .compare_exchange(since, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        // Dropping the sender ends the connection's task,
                        // which gives its permit back.
                        return;
                    }
                }
            }
        }
    }
}

/// Sweeps the pool's idle lean connections a few times per idle timeout,
/// until the pool is gone.
async fn sweep(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => (s.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        match shared.upgrade() {
            Some(s) => s.sweep_lean(),
            None => return,
        }
    }
}

/// The connection's task: drives it until it ends or has been idle for
/// `idle_timeout`, holding its permit.
async fn run(
    connection: http1::Connection<crate::upstream::ConnectorIo, Body>,
    permit: OwnedSemaphorePermit,
    conn: Arc<ConnState>,
    idle_timeout: Duration,
    epoch: Instant,
) {
    let _permit = permit;
    tokio::pin!(connection);
    let timer = tokio::time::sleep(idle_timeout);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "backend connection ended");
                }
                return;
            }
            () = &mut timer => {
                let now = epoch.elapsed();
                let since = conn.state.load(Ordering::Acquire);
                let next = match since {
                    CLOSED => return,
                    IN_USE => idle_timeout,
                    ms => {
                        let idle = now.saturating_sub(Duration::from_millis(ms));
                        if idle >= idle_timeout {
                            if conn
                                .state
                                .compare_exchange(ms, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                            {
                                // Dropping the connection closes the socket.
                                return;
                            }
                            idle_timeout
                        } else {
                            idle_timeout - idle
                        }
                    }
                };
                timer.as_mut().reset(Instant::now() + next);
            }
        }
    }
}

/// Origin form (`/path?query`) on a direct connection, absolute form
/// through an http proxy.
fn set_form(
    req: &mut Request<Body>,
    proxied: bool,
    scheme: &Scheme,
    authority: &Authority,
    path: &PathAndQuery,
) {
    let absolute = req.uri().scheme().is_some();
    if proxied == absolute {
        return;
    }
    *req.uri_mut() = if proxied {
        Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path.clone())
            .build()
            .unwrap_or_else(|_| Uri::from(path.clone()))
    } else {
        Uri::from(path.clone())
    };
}

/// The `Host` value for an authority: without a default port.
fn host_header<'a>(scheme: &Scheme, authority: &'a Authority) -> &'a str {
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    if authority.port_u16() == Some(default) {
        authority.host()
    } else {
        authority.as_str()
    }
}
