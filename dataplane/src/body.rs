//! Body types and the streaming verifiers that sit between the client and
//! the backend.
//!
//! Both verifiers hold back the most recent frame until the next one arrives,
//! and release the last one only after the whole body verified. A backend
//! therefore never receives all the bytes a request declared unless they were
//! proven authentic; on failure the stream errors, the upstream request is
//! aborted, and the reason is left in a [`FailureSlot`] for the handler.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use s3gate_s3::chunked::ChunkedDecoder;
use s3gate_s3::chunked_encoder::TrailerEncoder;
use s3gate_s3::{S3Error, S3ErrorCode};
use sha2::{Digest, Sha256};
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;
use crate::limits::Reservation;
use crate::pool::ResponseBody;

pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A backend response body that holds `guard` (its slot in the backend's
/// pool) until it is done or dropped: one box, as [`incoming`].
pub fn incoming_holding<G: Send + Unpin + 'static>(body: ResponseBody, guard: G) -> Body {
    Holding {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + 'static,
{
    body.boxed_unsync()
}

pub fn timed(body: TimedBody) -> Body {
    body.boxed_unsync()
}

/// `body`, keeping `guard` alive until the body is done or dropped (an
/// in-flight request permit lives as long as its response streams).
pub fn holding<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Holding {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

struct Holding<G, B = Body> {
    inner: B,
    _guard: G,
}

impl<G: Unpin, B: HttpBody<Data = Bytes, Error = BoxError> + Unpin> HttpBody for Holding<G, B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body verifier records why it failed. Shared with the handler,
/// which otherwise would only see "the upstream request failed".
#[derive(Clone, Default)]
pub struct FailureSlot(Arc<OnceLock<S3Error>>);

impl FailureSlot {
    pub fn set(&self, err: S3Error) -> BoxError {
        let boxed: BoxError = Box::new(err.clone());
        let _ = self.0.set(err);
        boxed
    }

    pub fn get(&self) -> Option<&S3Error> {
        self.0.get()
    }
}

/// `n` frames of `piece`, of unknown size, then an error if `fail`: a
/// response body for tests.
#[cfg(test)]
pub(crate) fn frames(piece: &'static [u8], n: usize, fail: bool) -> Body {
    struct Frames(&'static [u8], usize, bool);
    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.1 == 0 {
                return Poll::Ready(std::mem::take(&mut self.2).then(|| Err("broken".into())));
            }
            self.1 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(self.0)))))
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::default()
        }
    }
    Frames(piece, n, fail).boxed_unsync()
}

// === ClientBody ===

/// A client's request body: hyper's, or none at all for a request the lean
/// HTTP/1.1 server took (see `crate::server`), which only takes requests
/// without one.
pub enum ClientBody {
    Hyper(Incoming),
    Empty,
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Hyper(inner) => Pin::new(inner).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(inner) => inner.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(inner) => inner.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

// === TimedBody ===

/// A client's request body that fails with `RequestTimeout` when it sends
/// nothing for `idle`. Only time spent waiting on the client counts: while
/// the backend is not reading, the body is not polled and the clock is not
/// looked at.
///
/// The timer is created on the first wait and re-armed lazily: a frame only
/// records when it arrived, and a timer that fires early is pushed back.
pub struct TimedBody {
    inner: ClientBody,
    idle: Duration,
    last_frame: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
    slot: FailureSlot,
}

impl TimedBody {
    pub fn new(inner: ClientBody, idle: Duration, slot: FailureSlot) -> Self {
        Self {
            inner,
            idle,
            last_frame: Instant::now(),
            timer: None,
            done: false,
            slot,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.last_frame = Instant::now();
                if let Some(data) = frame.data_ref() {
                    s3gate_observe::metrics().received(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        loop {
            let deadline = this.last_frame + this.idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= this.last_frame + this.idle {
                this.done = true;
                let err = S3Error::new(
                    S3ErrorCode::RequestTimeout,
                    "Your socket connection to the server was not read from or written to within the timeout period. Idle connections will be closed.",
                );
                return Poll::Ready(Some(Err(this.slot.set(err))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === Sha256Body ===

/// Checks the body against the hex `x-amz-content-sha256` the client signed.
pub struct Sha256Body {
    inner: TimedBody,
    expected: [u8; 32],
    hasher: Sha256,
    held: Option<Bytes>,
    done: bool,
    len: Option<u64>,
    slot: FailureSlot,
}

impl Sha256Body {
    pub fn new(inner: TimedBody, expected: [u8; 32], len: Option<u64>, slot: FailureSlot) -> Self {
        Self {
            inner,
            expected,
            hasher: Sha256::new(),
            held: None,
            done: false,
            len,
            slot,
        }
    }
}

impl HttpBody for Sha256Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.held.take().map(|b| Ok(Frame::data(b))));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    this.hasher.update(&data);
                    if let Some(prev) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(prev))));
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    this.held = None;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let digest: [u8; 32] = std::mem::take(&mut this.hasher).finalize().into();
                    if digest != this.expected {
                        this.held = None;
                        let err = S3Error::new(
                            S3ErrorCode::XAmzContentSHA256Mismatch,
                            "The provided 'x-amz-content-sha256' header does not match what was computed.",
                        );
                        return Poll::Ready(Some(Err(this.slot.set(err))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

// === ChunkedBody ===

/// Decodes an aws-chunked body, verifying chunk signatures and the trailing
/// checksum. Yields either the decoded payload, or — when the client sent a
/// trailing checksum — the payload re-framed as an unsigned aws-chunked body
/// whose trailer carries that checksum on to the backend.
pub struct ChunkedBody {
    inner: TimedBody,
    buf: BytesMut,
    decoder: ChunkedDecoder,
    encoder: Option<TrailerEncoder>,
    /// Decoded mode: the most recent piece, released when the next arrives
    /// or once everything verified.
    held: Option<Bytes>,
    /// Frames ready to go out.
    out: VecDeque<Bytes>,
    done: bool,
    len: u64,
    slot: FailureSlot,
}

impl ChunkedBody {
    /// `encoder`: re-frame with a trailer (then `len` is the encoded length)
    /// instead of forwarding the decoded payload (`len` = decoded length).
    pub fn new(
        inner: TimedBody,
        decoder: ChunkedDecoder,
        encoder: Option<TrailerEncoder>,
        len: u64,
        slot: FailureSlot,
    ) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            decoder,
            encoder,
            held: None,
            out: VecDeque::new(),
            done: false,
            len,
            slot,
        }
    }

    fn fail(&mut self, err: S3Error) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.held = None;
        self.out.clear();
        Poll::Ready(Some(Err(self.slot.set(err))))
    }

    fn emit(&mut self, data: Bytes) {
        match &mut self.encoder {
            // The encoder only writes the final chunk after `finish`, so the
            // backend cannot complete early: no hold-back needed.
            Some(enc) => enc.push(&data, &mut self.out),
            None => {
                if let Some(prev) = self.held.replace(data) {
                    self.out.push_back(prev);
                }
            }
        }
    }

    fn end(&mut self) -> Result<(), S3Error> {
        match &mut self.encoder {
            Some(enc) => {
                let (_, value) = self.decoder.trailer().ok_or_else(|| {
                    S3Error::new(S3ErrorCode::InvalidRequest, "missing trailing checksum")
                })?;
                enc.finish(value, &mut self.out);
            }
            None => self.out.extend(self.held.take()),
        }
        Ok(())
    }
}

impl HttpBody for ChunkedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.buf.extend_from_slice(&data);
                    match this.decoder.decode(&mut this.buf) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => this.emit(out),
                        Err(e) => return this.fail(S3Error::new(e.code(), e.to_string())),
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    this.held = None;
                    this.out.clear();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    if let Err(e) = this.decoder.finish() {
                        return this.fail(S3Error::new(e.code(), e.to_string()));
                    }
                    if let Err(e) = this.end() {
                        return this.fail(e);
                    }
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Why a body could not be collected.
#[derive(Debug)]
pub enum CollectError {
    /// Larger than the operation allows.
    TooLarge,
    /// The global buffer budget is spent.
    OverBudget,
    /// The body failed: a verifier's verdict, a timeout, a broken connection.
    Body(BoxError),
}

/// Collects a (small) body. Every byte of memory it takes is charged to
/// `reservation` before it is allocated (capacity, not length: the buffer
/// grows by doubling, up to `limit`).
pub async fn collect_limited(
    mut body: Body,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, CollectError> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(CollectError::Body)?;
        if let Ok(data) = frame.into_data() {
            let needed = out.len() + data.len();
            if needed > limit {
                return Err(CollectError::TooLarge);
            }
            if needed > out.capacity() {
                let capacity = needed.max(out.capacity() * 2).max(8 << 10).min(limit);
                if !reservation.grow(capacity - out.capacity()) {
                    return Err(CollectError::OverBudget);
                }
                let mut grown = BytesMut::with_capacity(capacity);
                grown.extend_from_slice(&out);
                out = grown;
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}
