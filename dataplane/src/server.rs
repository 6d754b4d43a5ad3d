//! The lean HTTP/1.1 server connection: bodyless requests, the
//! small-object hot path.
//!
//! hyper's server connection cost about a fifth of the gateway's
//! instructions per small GET: a general head parser, a dispatcher that
//! moves the request future into its slot, a response encoder that buffers
//! the head and the body apart, and an idle read after every answer. Here
//! the connection's own task reads a request head, runs the pipeline on it,
//! and writes the response head together with the first bytes of its body.
//!
//! It takes only what it can serve completely: an HTTP/1.1 request without
//! a body (no `Transfer-Encoding`, no `Content-Length` other than `0`), no
//! `Expect` and no upgrade. The first request that is anything else — an
//! upload, HTTP/1.0, a head httparse refuses or one over the limits — hands
//! the connection to hyper, together with the bytes read so far (see
//! [`Rewind`]); hyper serves it, and everything after it on that
//! connection, as it always did: its `100 Continue`, its request body
//! framing and its `400`/`431` answers. So what the lean path does not do
//! cannot go wrong here, only be slower.
//!
//! What it keeps of hyper's server (RFC 9112): keep-alive and pipelined
//! requests, `Connection: close` in either direction, the header read
//! timeout (also for an idle keep-alive connection), a `Date` on every
//! answer that has none, `Content-Length` or chunked framing chosen as
//! hyper chooses it, no body for `HEAD`, `204` and `304`, and on drain the
//! current answer finished with `Connection: close` and an idle connection
//! closed at once. A response body that fails, or that ends before or
//! after its `Content-Length`, ends the connection: the client sees a
//! short answer, never a wrong one.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::body::{Body, ClientBody};
use crate::head::{self, Spans, MAX_HEADERS, READ_MIN, SPANS};
use crate::listen::ConnInfo;
use crate::{pipeline, Shared, CONNECTION_BUFFER};

/// Body frames up to this size are copied behind the response head and
/// go out with it; larger ones are written as they are.
const COALESCE: usize = 16 << 10;

/// Why [`serve`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// The connection is over: closed by either side, timed out, drained.
    Closed,
    /// hyper serves the connection from here on, starting with the bytes
    /// left in the buffer. `draining`: the server is shutting down.
    HandOver { draining: bool },
}

/// Serves requests on `io` until the connection ends or a request needs
/// hyper. `buf` holds what was read and not yet served, and is what hyper
/// starts with after [`Next::HandOver`].
pub(crate) async fn serve<I>(
    io: &mut I,
    buf: &mut BytesMut,
    shared: &Shared,
    conn: &Arc<ConnInfo>,
    drain: &mut watch::Receiver<bool>,
) -> io::Result<Next>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let header_timeout = shared.limits.header_timeout;
    // Whether the server is draining is read off a second receiver (one
    // atomic load); the first one's `changed` is polled once, so that the
    // drain wakes a connection that waits for a head.
    let watching = drain.clone();
    let draining_now = || watching.has_changed().unwrap_or(true);
    let mut drained = pin!(drain.changed());
    let mut draining = false;
    let mut watch = Watch::default();
    let mut out = BytesMut::new();
    loop {
        let deadline = Instant::now() + header_timeout;
        let head = loop {
            match parse_head(buf) {
                Parsed::Lean(head) => break head,
                Parsed::HandOver => return Ok(Next::HandOver { draining }),
                Parsed::Partial if buf.len() >= CONNECTION_BUFFER => {
                    // Over the limit: hyper says so (431).
                    return Ok(Next::HandOver { draining });
                }
                Parsed::Partial => {}
            }
            if buf.capacity() - buf.len() < READ_MIN {
                buf.reserve(READ_MIN);
            }
            let event = {
                let read = pin!(io.read_buf(buf));
                Wait {
                    read,
                    drained: (!draining).then_some(drained.as_mut()),
                    draining: &draining_now,
                    watch: &mut watch,
                    deadline,
                }
                .await
            };
            match event {
                Event::Read(0) => return Ok(Next::Closed),
                Event::Read(_) => {}
                Event::Drain if buf.is_empty() => return Ok(Next::Closed),
                // A head on its way is still answered, with the close.
                Event::Drain => draining = true,
                Event::Timeout => {
                    tracing::debug!(peer = %conn.peer, "no request head within the header timeout");
                    return Ok(Next::Closed);
                }
                Event::Failed(e) => return Err(e),
            }
        };
        let close = head.close;
        let method = head.parts.method.clone();
        let request = Request::from_parts(head.parts, ClientBody::Empty);
        let permit = shared.requests.clone().try_acquire_owned();
        let response = match permit {
            Ok(_) => pipeline::handle(shared.cx.clone(), conn.clone(), request).await,
            Err(_) => pipeline::shed(&shared.cx, conn.clone(), request),
        };
        draining = draining || draining_now();
        let keep = write_response(io, &mut out, &method, response, close || draining).await?;
        // The in-flight permit is held until the response has streamed.
        drop(permit);
        if !keep {
            let _ = io.shutdown().await;
            return Ok(Next::Closed);
        }
    }
}

/// What ends a wait for request bytes.
enum Event {
    Read(usize),
    Drain,
    Timeout,
    Failed(io::Error),
}

/// The connection's registrations for a wait: the drain signal's waker
/// and the header timer, each made once and kept.
#[derive(Default)]
struct Watch {
    /// The drain signal's `changed` was polled: it wakes this task.
    drain: bool,
    /// The header timer, armed at its deadline when it last was polled.
    timer: Option<Pin<Box<Sleep>>>,
}

/// A read of request bytes, racing the drain signal and the header
/// timeout. Both are registered once per connection, not once per wait:
/// the timer is pushed back only when it fires before the current
/// deadline, so a keep-alive request costs no timer registration, and the
/// drain is seen through a version check.
struct Wait<'a, R, D: ?Sized, F> {
    read: Pin<&'a mut R>,
    drained: Option<Pin<&'a mut D>>,
    draining: &'a F,
    watch: &'a mut Watch,
    deadline: Instant,
}

impl<R, D, F> Future for Wait<'_, R, D, F>
where
    R: Future<Output = io::Result<usize>>,
    D: Future + ?Sized,
    F: Fn() -> bool,
{
    type Output = Event;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event> {
        let this = &mut *self;
        if let Poll::Ready(read) = this.read.as_mut().poll(cx) {
            return Poll::Ready(match read {
                Ok(n) => Event::Read(n),
                Err(e) => Event::Failed(e),
            });
        }
        if let Some(drained) = this.drained.as_mut() {
            if !this.watch.drain {
                this.watch.drain = true;
                if drained.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
            }
            if (this.draining)() {
                return Poll::Ready(Event::Drain);
            }
        }
        let deadline = this.deadline;
        let timer = match &mut this.watch.timer {
            Some(timer) if !timer.is_elapsed() => return Poll::Pending,
            Some(timer) => timer,
            none => none.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            if Instant::now() >= deadline {
                return Poll::Ready(Event::Timeout);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// A request head the lean path serves.
struct Head {
    parts: http::request::Parts,
    /// The client asked for the connection to end after the answer.
    close: bool,
}

// Returned once per request and taken apart at once: a box would be an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Lean(Head),
    HandOver,
}

/// The request head at the start of `buf`, taken out of it if the lean
/// path serves it; a head it does not serve is left where it is.
fn parse_head(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let (len, method, target, count, close, spans) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &buf[..],
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::HandOver,
        };
        if req.version != Some(1) || u32::try_from(len).is_err() {
            return Parsed::HandOver;
        }
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Parsed::HandOver;
        };
        let mut close = false;
        for field in req.headers.iter() {
            match lean_field(field.name.as_bytes(), field.value) {
                Field::Plain => {}
                Field::Close => close = true,
                Field::Refused => return Parsed::HandOver,
            }
        }
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::HandOver;
        };
        let start = head::offset(buf, target.as_bytes()) as usize;
        (
            len,
            method,
            start..start + target.len(),
            req.headers.len(),
            close,
            head::spans(buf, req.headers),
        )
    };
    // Only the origin form (`/path?query`) and the absolute form; hyper
    // judges the rest (`*`, authority form).
    let form = buf.get(target.clone()).unwrap_or_default();
    let scheme = |s: &[u8]| {
        form.get(..s.len())
            .is_some_and(|f| f.eq_ignore_ascii_case(s))
    };
    if !(form.starts_with(b"/") || scheme(b"http://") || scheme(b"https://")) {
        return Parsed::HandOver;
    }
    let frozen = buf.split_to(len).freeze();
    match build(&frozen, method, target, &spans, count, close) {
        Some(head) => Parsed::Lean(head),
        None => {
            // Something httparse let through and `http` does not: hyper's
            // call. The head goes back where it was (rare: a copy).
            let mut restored = BytesMut::with_capacity(frozen.len() + buf.len());
            restored.put_slice(&frozen);
            restored.put_slice(buf);
            *buf = restored;
            Parsed::HandOver
        }
    }
}

/// The request head in `frozen`, whose fields `spans` locates (all of them
/// if there are no more than [`SPANS`]).
fn build(
    frozen: &Bytes,
    method: Method,
    target: std::ops::Range<usize>,
    spans: &Spans,
    count: usize,
    close: bool,
) -> Option<Head> {
    let uri = Uri::from_maybe_shared(frozen.slice(target)).ok()?;
    let mut headers = HeaderMap::with_capacity(count);
    if count <= SPANS {
        spans[..count].iter().try_for_each(|&[ns, ne, vs, ve]| {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            add(&mut headers, &frozen[ns..ne], frozen.slice(vs..ve))
        })?;
    } else {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, frozen, &mut fields)
            .ok()?;
        req.headers
            .iter()
            .try_for_each(|f| add(&mut headers, f.name.as_bytes(), frozen.slice_ref(f.value)))?;
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Some(Head { parts, close })
}

fn add(headers: &mut HeaderMap, name: &[u8], value: Bytes) -> Option<()> {
    let name = s3gate_s3::names::from_bytes(name).ok()?;
    let value = HeaderValue::from_maybe_shared(value).ok()?;
    headers.append(name, value);
    Some(())
}

/// What one request header field means for the lean path.
enum Field {
    Plain,
    /// `Connection: close`.
    Close,
    /// A body, an expectation or an upgrade: hyper's.
    Refused,
}

fn lean_field(name: &[u8], value: &[u8]) -> Field {
    if name.eq_ignore_ascii_case(b"content-length") {
        return if value.trim_ascii() == b"0" {
            Field::Plain
        } else {
            Field::Refused
        };
    }
    if name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"expect")
        || name.eq_ignore_ascii_case(b"upgrade")
    {
        return Field::Refused;
    }
    if name.eq_ignore_ascii_case(b"connection") {
        let mut close = false;
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"upgrade") {
                return Field::Refused;
            }
            close |= token.eq_ignore_ascii_case(b"close");
        }
        if close {
            return Field::Close;
        }
    }
    Field::Plain
}

/// How a response body goes out.
enum Framing {
    /// No body (`HEAD`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
}

/// Writes `response` and says whether the connection stays open. `close`:
/// it does not, and the response says so.
async fn write_response<I>(
    io: &mut I,
    out: &mut BytesMut,
    method: &Method,
    response: Response<Body>,
    mut close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let framing = encode_head(
        out,
        method,
        &parts.status,
        &parts.headers,
        &body,
        &mut close,
    );
    drop(parts);
    let mut left = match framing {
        Framing::None => {
            drop(body);
            io.write_all(out).await?;
            out.clear();
            io.flush().await?;
            return Ok(!close);
        }
        Framing::Length(n) => Some(n),
        Framing::Chunked => None,
    };
    let mut body = Pin::new(&mut body);
    loop {
        let frame = match poll_frame_now(body.as_mut()).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // Nothing more yet: what is buffered goes out while the
                // body waits.
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                    io.flush().await?;
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: HTTP/1.1 responses carry none here (hyper
                // sends them only to clients that ask; no S3 client does).
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut left {
            Some(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("response body longer than its length"))?;
            }
            None => {
                put_hex(out, data.len());
                out.put_slice(b"\r\n");
            }
        }
        if data.len() <= COALESCE && out.len() + data.len() <= CONNECTION_BUFFER {
            out.put_slice(&data);
        } else {
            if !out.is_empty() {
                io.write_all(out).await?;
                out.clear();
            }
            io.write_all(&data).await?;
        }
        if left.is_none() {
            out.put_slice(b"\r\n");
        }
    }
    match left {
        Some(0) => {}
        Some(_) => return Err(io::Error::other("response body shorter than its length")),
        None => out.put_slice(b"0\r\n\r\n"),
    }
    io.write_all(out).await?;
    out.clear();
    io.flush().await?;
    Ok(!close)
}

/// `n` in hexadecimal, as a chunk-size line has it.
fn put_hex(out: &mut BytesMut, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// The body's next frame if it has one now; `Pending` registers the task
/// to be woken when it does.
async fn poll_frame_now(
    body: Pin<&mut Body>,
) -> Poll<Option<Result<http_body::Frame<Bytes>, crate::error::BoxError>>> {
    let mut body = Some(body);
    std::future::poll_fn(|cx| match body.take() {
        Some(b) => Poll::Ready(b.poll_frame(cx)),
        None => Poll::Ready(Poll::Pending),
    })
    .await
}

/// The status line and header fields of a response into `out`, and how its
/// body is framed, as hyper's server encodes them: a `Content-Length` the
/// response names is kept; without one, a body of known size gets one and
/// any other is chunked; `HEAD`, `204` and `304` answers have no body. A
/// `Transfer-Encoding` of the response is not passed on (the framing is
/// this hop's). `close` grows by a `Connection: close` of the response, and
/// when set is said in the head.
fn encode_head(
    out: &mut BytesMut,
    method: &Method,
    status: &StatusCode,
    headers: &HeaderMap,
    body: &Body,
    close: &mut bool,
) -> Framing {
    // The buffer is the connection's and keeps its room between answers.
    out.reserve(1024);
    if *status == StatusCode::OK {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.put_slice(b"\r\n");
    }
    let head_request = *method == Method::HEAD;
    let no_body = head_request
        || *status == StatusCode::NO_CONTENT
        || *status == StatusCode::NOT_MODIFIED
        || status.is_informational();
    let empty = body.is_end_stream();
    let mut length = None;
    let mut dated = false;
    let closing = *close;
    for (name, value) in headers {
        if *name == CONTENT_LENGTH {
            if length.is_some() || (empty && !head_request) {
                // Said once; an empty body's is written below.
                continue;
            }
            let Some(n) = head::parse_length(value.as_bytes()) else {
                continue;
            };
            length = Some(n);
        } else if *name == TRANSFER_ENCODING {
            continue;
        } else if *name == CONNECTION {
            if closing {
                continue;
            }
            *close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if *name == DATE {
            dated = true;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    let framing = if no_body {
        Framing::None
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        match body.size_hint().exact() {
            Some(n) => {
                out.put_slice(b"content-length: ");
                out.put_slice(itoa::Buffer::new().format(n).as_bytes());
                out.put_slice(b"\r\n");
                Framing::Length(n)
            }
            None => {
                out.put_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
        }
    };
    if closing {
        out.put_slice(b"connection: close\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
    match framing {
        Framing::Length(0) => Framing::None,
        other => other,
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once per second
    /// per thread.
    static NOW: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [b' '; 29])) };
}

fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == 29 {
                cached.1.copy_from_slice(formatted.as_bytes());
                cached.0 = secs;
            } else {
                out.put_slice(formatted.as_bytes());
                return;
            }
        }
        out.put_slice(&cached.1);
    });
}

/// A stream that first gives out `pre`, the bytes the lean path read
/// before it handed the connection to hyper.
pub(crate) struct Rewind<I> {
    pre: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(crate) fn new(inner: I, pre: Bytes) -> Self {
        Self { pre, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::body::frames;
    use http::HeaderName;

    fn lean(buf: &mut BytesMut) -> Head {
        match parse_head(buf) {
            Parsed::Lean(head) => head,
            Parsed::Partial => panic!("partial"),
            Parsed::HandOver => panic!("handed over"),
        }
    }

    #[test]
    fn pipelined_heads_are_taken_one_by_one() {
        let mut buf = BytesMut::from(
            &b"GET /b/k?x=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: d\r\nx-amz-date: e\r\n\r\n\
               HEAD /b/k2 HTTP/1.1\r\nhost: h\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\nDEL"[..],
        );
        let first = lean(&mut buf);
        assert_eq!(first.parts.method, Method::GET);
        assert_eq!(first.parts.uri, "/b/k?x=1");
        assert_eq!(first.parts.version, Version::HTTP_11);
        assert!(!first.close);
        let dates: Vec<_> = first.parts.headers.get_all("x-amz-date").iter().collect();
        assert_eq!(dates, ["d", "e"], "repeated fields keep their order");
        assert_eq!(first.parts.headers["host"], "h");
        let second = lean(&mut buf);
        assert_eq!(second.parts.method, Method::HEAD);
        assert!(second.close);
        assert_eq!(second.parts.headers["content-length"], "0");
        assert!(matches!(parse_head(&mut buf), Parsed::Partial));
        assert_eq!(&buf[..], b"DEL", "the start of the next head stays");
    }

    #[test]
    fn what_the_lean_path_does_not_serve_is_left_for_hyper() {
        for head in [
            &b"PUT /b/k HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nhello"[..],
            b"PUT /b/k HTTP/1.1\r\nhost: h\r\nCoNtEnT-LeNgTh: 7\r\n\r\n",
            b"PUT /b/k HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PUT /b/k HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\nexpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\n\r\n",
            b"GET /b/k HTTP/1.0\r\nhost: h\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nhost: h\r\n\r\n",
            b"CONNECT h:443 HTTP/1.1\r\nhost: h\r\n\r\n",
            b"GET /b/k HTTP/1.1\r\nhost: h\r\nno colon\r\n\r\n",
            b"GET /b/k HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            assert!(
                matches!(parse_head(&mut buf), Parsed::HandOver),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(
                &buf[..],
                head,
                "bytes were taken from a head left for hyper"
            );
        }
        let many: Vec<u8> = [&b"GET / HTTP/1.1\r\n"[..]]
            .into_iter()
            .chain((0..101).map(|_| &b"x: y\r\n"[..]))
            .chain([&b"\r\n"[..]])
            .flatten()
            .copied()
            .collect();
        let mut buf = BytesMut::from(&many[..]);
        assert!(matches!(parse_head(&mut buf), Parsed::HandOver));
        assert_eq!(buf.len(), many.len());
    }

    #[test]
    fn partial_heads_wait_and_absolute_targets_are_kept() {
        let mut buf = BytesMut::from(&b"GET /b/k HTTP/1.1\r\nhost: h\r\n"[..]);
        assert!(matches!(parse_head(&mut buf), Parsed::Partial));
        buf.put_slice(b"\r\n");
        assert_eq!(lean(&mut buf).parts.uri, "/b/k");
        let mut buf = BytesMut::from(&b"GET http://h:9000/b/k HTTP/1.1\r\nhost: h\r\n\r\n"[..]);
        let head = lean(&mut buf);
        assert_eq!(head.parts.uri.authority().unwrap(), "h:9000");
        assert_eq!(head.parts.uri.path(), "/b/k");
    }

    #[test]
    fn heads_with_many_fields_keep_them_all_in_order() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..60 {
            raw.extend_from_slice(format!("x-f{i}: v{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&raw[..]);
        let head = lean(&mut buf);
        let fields: Vec<_> = head.parts.headers.iter().collect();
        assert_eq!(fields.len(), 60);
        for (i, (name, value)) in fields.iter().enumerate() {
            assert_eq!(name.as_str(), format!("x-f{i}"));
            assert_eq!(*value, &format!("v{i}"));
        }
        assert!(buf.is_empty());
    }

    async fn written(
        method: Method,
        response: Response<Body>,
        close: bool,
    ) -> (io::Result<bool>, String) {
        let mut out = BytesMut::new();
        let mut sink = Vec::new();
        let kept = write_response(&mut sink, &mut out, &method, response, close).await;
        (kept, String::from_utf8(sink).unwrap())
    }

    fn response(status: u16, fields: &[(&str, &str)], body: Body) -> Response<Body> {
        let mut r = Response::new(body);
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in fields {
            r.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    fn date_of(text: &str) -> String {
        let dates: Vec<_> = text.lines().filter(|l| l.starts_with("date: ")).collect();
        assert_eq!(dates.len(), 1, "{text}");
        dates[0].to_owned()
    }

    #[tokio::test]
    async fn bodies_of_unknown_size_are_chunked() {
        let body = frames(b"0123456789abcdefghij", 3, false);
        let (kept, text) = written(Method::GET, response(200, &[("x-a", "1")], body), false).await;
        assert!(kept.unwrap());
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n"));
        assert!(date_of(head).ends_with(" GMT"));
        assert_eq!(
            body,
            "14\r\n0123456789abcdefghij\r\n".repeat(3) + "0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn lengths_are_kept_or_added() {
        let body = crate::body::full(&b"hello"[..]);
        let (kept, text) = written(
            Method::GET,
            response(404, &[("content-length", "5"), ("date", "then")], body),
            false,
        )
        .await;
        assert!(kept.unwrap());
        assert_eq!(
            text,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\ndate: then\r\n\r\nhello"
        );
        let body = crate::body::full(&b"hello"[..]);
        let (_, text) = written(Method::GET, response(200, &[], body), false).await;
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\nhello"));
        // Empty: a zero length, said.
        let (_, text) = written(
            Method::DELETE,
            response(200, &[], crate::body::empty()),
            false,
        )
        .await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let body = crate::body::full(&b"not sent"[..]);
        let (kept, text) = written(
            Method::HEAD,
            response(200, &[("content-length", "1234")], body),
            false,
        )
        .await;
        assert!(kept.unwrap());
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndate: "));
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        for status in [204, 304] {
            let body = frames(b"x", 2, false);
            let (_, text) = written(Method::GET, response(status, &[], body), false).await;
            assert!(text.ends_with("\r\n\r\n"), "{text}");
            assert!(
                !text.contains("transfer-encoding") && !text.contains("content-length"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn closing_is_said_and_a_closing_answer_is_obeyed() {
        let (kept, text) =
            written(Method::GET, response(200, &[], crate::body::empty()), true).await;
        assert!(!kept.unwrap());
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        let (kept, text) = written(
            Method::GET,
            response(503, &[("connection", "close")], crate::body::empty()),
            false,
        )
        .await;
        assert!(!kept.unwrap());
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        // Hop fields of the response are not passed on.
        let (_, text) = written(
            Method::GET,
            response(
                200,
                &[("transfer-encoding", "gzip")],
                frames(b"x", 1, false),
            ),
            false,
        )
        .await;
        assert_eq!(text.matches("transfer-encoding").count(), 1, "{text}");
        assert!(text.ends_with("1\r\nx\r\n0\r\n\r\n"), "{text}");
    }

    #[tokio::test]
    async fn bodies_that_fail_or_miss_their_length_end_the_connection() {
        let (kept, _) = written(
            Method::GET,
            response(200, &[], frames(b"abc", 2, true)),
            false,
        )
        .await;
        assert!(kept.is_err(), "a failed body was ended as if whole");
        let (kept, _) = written(
            Method::GET,
            response(200, &[("content-length", "10")], frames(b"abc", 2, false)),
            false,
        )
        .await;
        assert!(kept.is_err(), "a short body was ended as if whole");
        let (kept, _) = written(
            Method::GET,
            response(200, &[("content-length", "4")], frames(b"abc", 2, false)),
            false,
        )
        .await;
        assert!(kept.is_err(), "a long body was cut and the connection kept");
    }

    #[tokio::test]
    async fn large_frames_are_written_whole_and_in_order() {
        static BIG: [u8; 100_000] = [b'z'; 100_000];
        let body = frames(&BIG, 3, false);
        let (kept, text) = written(
            Method::GET,
            response(200, &[("content-length", "300000")], body),
            false,
        )
        .await;
        assert!(kept.unwrap());
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 300_000);
    }

    #[tokio::test]
    async fn rewind_gives_out_what_was_read_first() {
        use tokio::io::AsyncReadExt as _;
        let inner: &[u8] = b" world";
        let mut io = Rewind::new(inner, Bytes::from_static(b"hello"));
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
