//! The lean HTTP/1.1 client: bodyless `GET` and `HEAD` requests on direct
//! plain-http backend connections, the small-object hot path.
//!
//! hyper's client connection runs as its own task: a request goes to it
//! through a channel, its response comes back through a oneshot, its body
//! through another channel, and the response head is parsed into a header
//! map by a general parser that also serves servers. Per small GET that was
//! about a fifth of the gateway's instructions and one more task wake-up
//! each way. Here the request's own task writes the head, reads the answer
//! and streams the body straight from the socket; the connection goes back
//! to its pool when the body is done.
//!
//! What it keeps of HTTP/1.1 (RFC 9112): interim (1xx) answers are skipped;
//! a body is framed by `Transfer-Encoding: chunked`, by `Content-Length`, or
//! by the connection's close, and a `HEAD` answer, `204` and `304` have
//! none. A connection is used again only after a complete HTTP/1.1 answer
//! that did not say `Connection: close` and sent nothing after its end; an
//! answer framed by close, one with both framings, a malformed or
//! conflicting `Content-Length`, and a head over the buffer limit are not
//! reused (the last two are errors). `Connection` and `Transfer-Encoding`
//! are consumed: they are about this hop, and the response head handed on
//! does not carry them.
//!
//! Everything else (bodies, TLS, proxies) stays on hyper's client: see
//! [`crate::pool`].

use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::BoxError;
use crate::head::{self, MAX_HEADERS, READ_MIN, SPANS};

/// Longest chunk-size line, and most trailer bytes, read.
const MAX_CHUNK_LINE: usize = 4 << 10;
const MAX_TRAILERS: usize = 16 << 10;

/// An open connection to a backend, holding its permit of the backend's
/// `max_connections`.
pub struct Conn {
    io: TcpStream,
    /// The request head on its way out, then what was read and not yet
    /// given out. Empty between exchanges.
    buf: BytesMut,
    /// Largest response head, and largest read.
    max_buf: usize,
    _permit: OwnedSemaphorePermit,
}

/// The peer only: the buffer may hold a signed request head.
impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.io.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: TcpStream, permit: OwnedSemaphorePermit, max_buf: usize) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            max_buf: max_buf.max(READ_MIN),
            _permit: permit,
        }
    }

    /// Whether an idle connection can carry a request: the backend has
    /// neither closed it nor sent anything unasked. Makes no system call
    /// unless the socket was reported readable since it was last read
    /// dry.
    pub fn is_usable(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Response header fields the caller would drop anyway, left out of the
/// map (after their framing is read): no value check, hash or insert for
/// them.
pub type Skip = fn(&HeaderName) -> bool;

/// Keeps every field.
pub fn keep_all(_: &HeaderName) -> bool {
    false
}

/// Where a connection goes when its response is done and it can be used
/// again (its pool's idle list).
pub trait Park: Send + Unpin + 'static {
    fn park(self, conn: Conn);
}

/// Why an exchange gave no response.
#[derive(Debug)]
pub struct Failed {
    pub error: io::Error,
    /// Nothing came back and the connection was found closed or reset: on
    /// a reused connection, the backend had closed it before it could
    /// have read the request, and the request may go again on another.
    pub closed_early: bool,
}

impl Failed {
    fn new(error: io::Error, received: bool) -> Self {
        let closed_early = !received
            && matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            );
        Self {
            error,
            closed_early,
        }
    }
}

/// Sends a bodyless request (`target` in origin form) and reads the
/// response head. The body streams from the connection, which is parked
/// with `park` once the body is complete, or closed if it cannot be used
/// again.
pub async fn send<P: Park>(
    mut conn: Conn,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    skip: Skip,
    park: P,
) -> Result<Response<Body<P>>, Failed> {
    debug_assert!(conn.buf.is_empty());
    encode_head(&mut conn.buf, method, target, headers);
    if let Err(e) = conn.io.write_all(&conn.buf).await {
        return Err(Failed::new(e, false));
    }
    conn.buf.clear();
    let head_request = *method == Method::HEAD;
    let head = loop {
        match parse_head(&mut conn.buf, head_request, skip) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => return Err(Failed::new(e, true)),
        }
        if conn.buf.len() >= conn.max_buf {
            return Err(Failed::new(
                invalid("backend response head too large"),
                true,
            ));
        }
        let received = !conn.buf.is_empty();
        conn.buf.reserve(READ_MIN);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) => {
                let e = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "backend closed the connection before a complete response head",
                );
                return Err(Failed::new(e, received));
            }
            Ok(_) => {}
            Err(e) => return Err(Failed::new(e, received)),
        }
    };
    let mut body = Body {
        conn: Some(conn),
        reading: head.framing,
        reusable: head.reusable,
        park: Some(park),
        read_size: READ_MIN,
    };
    if body.reading == Reading::Done {
        body.finish();
    }
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// `METHOD target HTTP/1.1`, the header fields as they are, a blank line.
fn encode_head(buf: &mut BytesMut, method: &Method, target: &str, headers: &HeaderMap) {
    let size = method.as_str().len()
        + target.len()
        + 13
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    buf.reserve(size.max(READ_MIN));
    buf.put_slice(method.as_str().as_bytes());
    buf.put_u8(b' ');
    buf.put_slice(target.as_bytes());
    buf.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        buf.put_slice(name.as_str().as_bytes());
        buf.put_slice(b": ");
        buf.put_slice(value.as_bytes());
        buf.put_slice(b"\r\n");
    }
    buf.put_slice(b"\r\n");
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A parsed response head and how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Reading,
    reusable: bool,
}

/// The response head at the start of `buf`, taken out of it; `None` while
/// it is incomplete. Interim (1xx) answers before it are dropped.
fn parse_head(buf: &mut BytesMut, head_request: bool, skip: Skip) -> io::Result<Option<Head>> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Where each field's name and value sit in `buf`: the parse borrows
        // it, and the values are then cut from it without a copy.
        let (len, code, minor, count, spans) = {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut res,
                buf,
                &mut fields,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(invalid("backend response has too many header fields"))
                }
                Err(_) => return Err(invalid("malformed backend response head")),
            };
            (
                len,
                res.code.unwrap_or(0),
                res.version.unwrap_or(0),
                res.headers.len(),
                head::spans(buf, res.headers),
            )
        };
        if (100..200).contains(&code) {
            if code == 101 {
                return Err(invalid("backend switched protocols"));
            }
            buf.advance(len);
            continue;
        }
        if u32::try_from(len).is_err() {
            return Err(invalid("backend response head too large"));
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| invalid("backend response status invalid"))?;
        let head = buf.split_to(len).freeze();
        let mut fields = Fields {
            headers: HeaderMap::with_capacity(count),
            skip,
            length: None,
            chunked: None,
            close: minor == 0,
            http10: minor == 0,
        };
        if count <= SPANS {
            for &[ns, ne, vs, ve] in &spans[..count] {
                let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
                fields.add(&head[ns..ne], head.slice(vs..ve))?;
            }
        } else {
            let mut parsed = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut res = httparse::Response::new(&mut []);
            httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut res, &head, &mut parsed)
                .map_err(|_| invalid("malformed backend response head"))?;
            for field in res.headers.iter() {
                fields.add(field.name.as_bytes(), head.slice_ref(field.value))?;
            }
        }
        let Fields {
            headers,
            length,
            chunked,
            mut close,
            ..
        } = fields;
        let no_body =
            head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let framing = match (no_body, chunked, length) {
            (true, _, _) => Reading::Done,
            (false, Some(true), _) => {
                // Both framings: the coding wins, the connection ends.
                close |= length.is_some();
                Reading::Chunk(Chunk::Size)
            }
            (false, Some(false), _) | (false, None, None) => {
                close = true;
                Reading::Close
            }
            (false, None, Some(0)) => Reading::Done,
            (false, None, Some(n)) => Reading::Length(n),
        };
        return Ok(Some(Head {
            status,
            version: if minor == 0 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            headers,
            framing,
            reusable: !close,
        }));
    }
}

/// A response head's fields as they are added, and what they say about
/// the body and the connection.
struct Fields {
    headers: HeaderMap,
    skip: Skip,
    length: Option<u64>,
    /// Whether the last transfer coding is chunked, if there is one.
    chunked: Option<bool>,
    close: bool,
    http10: bool,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: Bytes) -> io::Result<()> {
        let name = s3gate_s3::names::from_bytes(name)
            .map_err(|_| invalid("backend response header name invalid"))?;
        if name == CONTENT_LENGTH {
            let n = head::parse_length(&value)
                .ok_or_else(|| invalid("backend response content-length invalid"))?;
            if self.length.is_some_and(|l| l != n) {
                return Err(invalid("backend response has conflicting content-length"));
            }
            self.length = Some(n);
        } else if name == TRANSFER_ENCODING {
            // The last coding applied decides. Consumed here: it framed
            // this hop only (the gateway drops it from responses anyway).
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .map(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(());
        } else if name == CONNECTION {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if self.http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    self.close = false;
                }
            }
            // The same: about this connection only.
            return Ok(());
        }
        if (self.skip)(&name) {
            return Ok(());
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| invalid("backend response header value invalid"))?;
        self.headers.append(name, value);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Bytes of the body still to come.
    Length(u64),
    Chunk(Chunk),
    /// Until the backend closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines (dropped) up to a blank line;
    /// the bytes read so far.
    Trailers(usize),
}

/// What the buffered bytes give.
enum Step {
    Frame(Bytes),
    NeedMore,
    Done,
}

/// A response body read from its connection.
pub struct Body<P: Park> {
    /// `None` once the body is done or failed.
    conn: Option<Conn>,
    reading: Reading,
    reusable: bool,
    park: Option<P>,
    /// Room given to the next read: doubled each time a read fills it, up
    /// to the connection's buffer limit.
    read_size: usize,
}

impl<P: Park> Body<P> {
    /// The body is complete: the connection goes back to its pool if it
    /// can be used again, else it is closed.
    fn finish(&mut self) {
        self.reading = Reading::Done;
        if let (Some(conn), Some(park)) = (self.conn.take(), self.park.take()) {
            if self.reusable && conn.buf.is_empty() {
                park.park(conn);
            }
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.reading = Reading::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }

    /// The next part of the body from what has been read.
    fn step(&mut self) -> io::Result<Step> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::Done);
        };
        let buf = &mut conn.buf;
        loop {
            match &mut self.reading {
                Reading::Done => return Ok(Step::Done),
                Reading::Length(0) => return Ok(Step::Done),
                Reading::Length(left) | Reading::Chunk(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= n as u64;
                    if let Reading::Chunk(Chunk::Data(0)) = self.reading {
                        self.reading = Reading::Chunk(Chunk::DataEnd);
                    }
                    return Ok(Step::Frame(buf.split_to(n).freeze()));
                }
                Reading::Close => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    return Ok(Step::Frame(buf.split().freeze()));
                }
                Reading::Chunk(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.reading = Reading::Chunk(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                        return Ok(Step::NeedMore)
                    }
                    _ => return Err(invalid("backend response chunk size invalid")),
                },
                Reading::Chunk(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("backend response chunk not ended by CRLF"));
                    }
                    buf.advance(2);
                    self.reading = Reading::Chunk(Chunk::Size);
                }
                Reading::Chunk(Chunk::Trailers(seen)) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if *seen + buf.len() > MAX_TRAILERS {
                            return Err(invalid("backend response trailers too large"));
                        }
                        return Ok(Step::NeedMore);
                    };
                    buf.advance(end + 2);
                    if end == 0 {
                        return Ok(Step::Done);
                    }
                    *seen += end + 2;
                    if *seen > MAX_TRAILERS {
                        return Err(invalid("backend response trailers too large"));
                    }
                }
            }
        }
    }

    /// Reads more of the body into the connection's buffer: the bytes
    /// read, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let mut want = self.read_size;
        if let Reading::Length(left) | Reading::Chunk(Chunk::Data(left)) = self.reading {
            // A small body gets no more room than it needs (and the
            // chunk-size line after a chunk fits).
            want = want.min(
                usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .saturating_add(64),
            );
        }
        let want = want.max(512);
        conn.buf.reserve(want);
        // `reserve` may give more (a reclaimed buffer): a read takes no
        // more than asked, so frames stay within the limit.
        let room = want.min(conn.buf.capacity() - conn.buf.len());
        let finishing = matches!(self.reading, Reading::Length(left) if usize::try_from(left).is_ok_and(|l| l < room));
        let n = if finishing {
            // The body ends within this read: through `AsyncRead`, whose
            // short read clears the socket's readiness, so the idle probe
            // (`Conn::is_usable`) afterwards makes no system call. The
            // future is dropped at once; `read_buf` is cancel-safe.
            let mut limited = (&mut conn.buf).limit(room);
            ready!(std::pin::pin!(conn.io.read_buf(&mut limited)).poll(cx))?
        } else {
            // Mid-body: `try_read_buf` leaves the readiness set after a
            // short read, so the next read goes straight to the socket,
            // where a streaming backend has usually put more by then,
            // instead of waiting for the next readiness event.
            loop {
                ready!(conn.io.poll_read_ready(cx))?;
                match conn.io.try_read_buf(&mut (&mut conn.buf).limit(room)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                    Ok(n) => break n,
                }
            }
        };
        if n == room && self.read_size < conn.max_buf {
            self.read_size = (self.read_size * 2).min(conn.max_buf);
        }
        Poll::Ready(Ok(n))
    }
}

impl<P: Park> HttpBody for Body<P> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Step::Frame(data)) => {
                    if matches!(this.reading, Reading::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Done) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if this.reading == Reading::Close => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection before the body's end",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done | Reading::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    use super::*;

    /// Parks into a channel, so a test sees whether and when the
    /// connection was given back.
    struct ToChannel(mpsc::Sender<Conn>);

    impl Park for ToChannel {
        fn park(self, conn: Conn) {
            let _ = self.0.send(conn);
        }
    }

    /// A backend that, per connection, answers each request head it reads
    /// with the next of `answers` (written in pieces of `piece` bytes),
    /// then closes. Returns its address and the request heads it read.
    async fn backend(
        answers: Vec<&'static [u8]>,
        piece: usize,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut heads = Vec::new();
            let mut got = Vec::new();
            for answer in answers {
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return heads,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                heads.push(String::from_utf8_lossy(&got[..end]).into_owned());
                got.drain(..end);
                for part in answer.chunks(piece) {
                    tcp.write_all(part).await.unwrap();
                    if piece < answer.len() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            heads
        });
        (addr, task)
    }

    async fn connect(addr: std::net::SocketAddr) -> Conn {
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        Conn::new(TcpStream::connect(addr).await.unwrap(), permit, 64 << 10)
    }

    fn get_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("backend:9000"));
        h.insert("x-amz-date", HeaderValue::from_static("20261207T000000Z"));
        h
    }

    /// Sends `method /b/k` on `conn`: the status, the body (or its error)
    /// and the connection if it was parked.
    async fn exchange(
        conn: Conn,
        method: Method,
    ) -> Result<(StatusCode, HeaderMap, Result<Vec<u8>, String>, Option<Conn>), Failed> {
        let (tx, rx) = mpsc::channel();
        let response = send(
            conn,
            &method,
            "/b/k?x=1",
            &get_headers(),
            keep_all,
            ToChannel(tx),
        )
        .await?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .map_err(|e| e.to_string());
        Ok((parts.status, parts.headers, body, rx.try_recv().ok()))
    }

    /// `GET /` on a new connection to `addr`, fields left out by `skip`:
    /// the response, and where its connection is parked if it is.
    async fn get_root(
        addr: std::net::SocketAddr,
        skip: Skip,
    ) -> (Response<Body<ToChannel>>, mpsc::Receiver<Conn>) {
        let (tx, rx) = mpsc::channel();
        let response = send(
            connect(addr).await,
            &Method::GET,
            "/",
            &get_headers(),
            skip,
            ToChannel(tx),
        )
        .await
        .unwrap();
        (response, rx)
    }

    #[tokio::test]
    async fn writes_the_head_and_reuses_the_connection() {
        let (addr, heads) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-amz-request-id: r1\r\netag: \"e\"\r\n\r\nhello",
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!",
            ],
            usize::MAX,
        )
        .await;
        let (status, headers, body, parked) =
            exchange(connect(addr).await, Method::GET).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap(), b"hello");
        assert_eq!(headers["x-amz-request-id"], "r1");
        assert_eq!(headers["etag"], "\"e\"");
        let conn = parked.expect("parked after a complete response");
        assert!(conn.is_usable());
        let (status, _, body, parked) = exchange(conn, Method::GET).await.unwrap();
        assert_eq!(
            (status, body.unwrap()),
            (StatusCode::NOT_FOUND, b"no!".to_vec())
        );
        assert!(parked.is_some());
        let heads = heads.await.unwrap();
        assert_eq!(
            heads[0],
            "GET /b/k?x=1 HTTP/1.1\r\nhost: backend:9000\r\nx-amz-date: 20261207T000000Z\r\n\r\n"
        );
        assert_eq!(heads.len(), 2, "both on one connection");
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers() {
        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"],
            7,
        )
        .await;
        let (_, headers, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), b"hello world");
        assert!(
            !headers.contains_key("transfer-encoding"),
            "hop-by-hop fields are consumed"
        );
        assert!(
            parked.is_some(),
            "a complete chunked answer keeps the connection"
        );
    }

    #[tokio::test]
    async fn skipped_fields_are_left_out_and_still_frame() {
        fn skip(name: &HeaderName) -> bool {
            matches!(name.as_str(), "server" | "content-length" | "connection")
        }
        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nX-Keep: y\r\nConnection: close\r\n\r\nhello"],
            usize::MAX,
        )
        .await;
        let (response, rx) = get_root(addr, skip).await;
        let (parts, body) = response.into_parts();
        assert!(!parts.headers.contains_key("server"));
        assert!(!parts.headers.contains_key("content-length"));
        assert_eq!(parts.headers["x-keep"], "y");
        assert_eq!(body.size_hint().exact(), Some(5), "the length still frames");
        let body = body.collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        assert!(rx.try_recv().is_err(), "`Connection: close` is still seen");
    }

    #[tokio::test]
    async fn bytes_arriving_one_at_a_time() {
        let (addr, _) = backend(
            vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"],
            1,
        )
        .await;
        let (status, _, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert_eq!(status, StatusCode::OK, "the interim answer is skipped");
        assert_eq!(body.unwrap(), b"hello world");
        assert!(parked.is_some());
    }

    #[tokio::test]
    async fn answers_without_a_body() {
        let (addr, _) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            ],
            usize::MAX,
        )
        .await;
        let mut conn = connect(addr).await;
        for method in [Method::HEAD, Method::GET, Method::GET, Method::GET] {
            let (_, headers, body, parked) = exchange(conn, method).await.unwrap();
            assert_eq!(body.unwrap(), b"");
            if let Some(n) = headers.get("content-length") {
                assert!(n == "100" || n == "9" || n == "0");
            }
            conn = parked.expect("parked at once");
        }
    }

    #[tokio::test]
    async fn close_delimited_and_connection_close_are_not_reused() {
        let cases: [(&str, &'static [u8], &[u8]); 5] = [
            (
                "connection: close",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                b"ok",
            ),
            (
                "no framing: the body ends with the connection",
                b"HTTP/1.1 200 OK\r\n\r\nall of it",
                b"all of it",
            ),
            (
                "HTTP/1.0 without keep-alive",
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
                b"ok",
            ),
            (
                "both framings: chunked wins",
                b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                b"ok",
            ),
            (
                "more than the answer",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
                b"ok",
            ),
        ];
        for (case, answer, want) in cases {
            let (addr, _) = backend(vec![answer], usize::MAX).await;
            let (_, _, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
            assert_eq!(body.unwrap(), want, "{case}");
            assert!(parked.is_none(), "{case}: not reused");
        }
    }

    #[tokio::test]
    async fn heads_with_many_fields_keep_them_all_in_order() {
        let mut answer = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 0..45 {
            answer.push_str(&format!("x-amz-meta-m{i}: v{i}\r\nx-dup: {i}\r\n"));
        }
        answer.push_str("\r\nok");
        let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
        // Few fields (one parse) and many (a second parse of the frozen head).
        let (addr, _) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nx-dup: a\r\ncontent-length: 2\r\nx-dup: b\r\n\r\nok",
                answer,
            ],
            usize::MAX,
        )
        .await;
        let (_, headers, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        let dups: Vec<_> = headers.get_all("x-dup").iter().collect();
        assert_eq!(dups, ["a", "b"]);
        let (_, headers, body, _) = exchange(parked.unwrap(), Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        assert_eq!(headers.len(), 91);
        for i in 0..45 {
            assert_eq!(
                headers[format!("x-amz-meta-m{i}").as_str()],
                format!("v{i}").as_str()
            );
        }
        let dups: Vec<String> = headers
            .get_all("x-dup")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(dups, (0..45).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn http_1_0_keep_alive_is_reused() {
        let (addr, _) = backend(
            vec![b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nok"],
            usize::MAX,
        )
        .await;
        let (_, _, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), b"ok");
        assert!(parked.is_some());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"],
            usize::MAX,
        )
        .await;
        let (_, _, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert!(body.unwrap_err().contains("before the body's end"));
        assert!(parked.is_none());

        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel"],
            usize::MAX,
        )
        .await;
        let (_, _, body, _) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert!(body.is_err());
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            let (addr, _) = backend(vec![answer], usize::MAX).await;
            let failed = exchange(connect(addr).await, Method::GET)
                .await
                .unwrap_err();
            assert_eq!(
                failed.error.kind(),
                io::ErrorKind::InvalidData,
                "{answer:?}"
            );
            assert!(!failed.closed_early);
        }
        // A bad chunk size fails the body.
        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"],
            usize::MAX,
        )
        .await;
        let (_, _, body, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        assert!(body.unwrap_err().contains("chunk size"));
        assert!(parked.is_none());
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("x-filler: {}\r\n", "a".repeat(1000));
            for _ in 0..200 {
                if tcp.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let failed = exchange(connect(addr).await, Method::GET)
            .await
            .unwrap_err();
        assert_eq!(failed.error.kind(), io::ErrorKind::InvalidData);
        assert!(
            failed.error.to_string().contains("too large"),
            "{}",
            failed.error
        );
    }

    #[tokio::test]
    async fn a_closed_connection_is_seen_and_marked_for_a_retry() {
        let (addr, _) = backend(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            usize::MAX,
        )
        .await;
        let (_, _, _, parked) = exchange(connect(addr).await, Method::GET).await.unwrap();
        let conn = parked.unwrap();
        // The backend task ends and closes its side.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.is_usable(), "the close is seen before a request");
        let failed = exchange(conn, Method::GET).await.unwrap_err();
        assert!(failed.closed_early, "{:?}", failed.error);

        // Something came back before the close: no retry.
        let (addr, _) = backend(vec![b"HTTP/1.1 200 O"], usize::MAX).await;
        let failed = exchange(connect(addr).await, Method::GET)
            .await
            .unwrap_err();
        assert_eq!(failed.error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(!failed.closed_early);
    }

    #[tokio::test]
    async fn large_bodies_stream_in_growing_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let len = 3 << 20;
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
            tcp.write_all(head.as_bytes()).await.unwrap();
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            tcp.write_all(&body).await.unwrap();
            let _ = tcp.read(&mut buf).await;
        });
        let (response, rx) = get_root(addr, keep_all).await;
        let mut body = response.into_body();
        assert_eq!(body.size_hint().exact(), Some(len as u64));
        let (mut seen, mut frames, mut largest) = (0usize, 0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == ((seen + i) % 251) as u8));
            seen += data.len();
            frames += 1;
            largest = largest.max(data.len());
        }
        assert_eq!(seen, len);
        assert!(
            largest <= 64 << 10,
            "reads stay within the buffer limit: {largest}"
        );
        assert!(frames < len / 4096, "{frames} frames");
        assert!(body.is_end_stream());
        assert!(rx.try_recv().is_ok());
    }
}
