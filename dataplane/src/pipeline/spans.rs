//! The request's trace span: made in [`handle`](super::handle) once the
//! request's origin is known, a parent of the stage spans (`stage_span!`)
//! and, through them, of the control-plane calls (`control.rs`); it ends
//! when the response body has been sent.
//!
//! Its target, [`TARGET`], is enabled only by the OpenTelemetry layer, so
//! without `--otlp-endpoint` [`request`] returns a disabled span without
//! allocating and `handle` skips the rest.
//!
//! What a span records is chosen to be safe to ship to a trace backend: the
//! operation, the bucket, the principal's name, the decision, the status
//! and sizes, the request id. Never a header value, a query string (a
//! presigned URL's is a credential) or an object key.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::Response;
use s3gate_proto::trace::{self, TARGET};
use s3gate_s3::request::S3Request;
use tracing::field::Empty;
use tracing::Span;

use super::{Ctx, Exchange};
use crate::body::{self, Body};
use crate::error::BoxError;

/// The span of a request, and whether it is recorded (sampled): only then
/// are its attributes filled in. A `traceparent` is believed only from a
/// trusted proxy (`trusted_proxies`): from anyone else the request starts a
/// trace of its own, as its forwarding headers change nothing either.
pub(super) fn request(cx: &Ctx, ex: &Exchange, head: &Parts) -> (Span, bool) {
    let span = tracing::info_span!(
        target: TARGET,
        "s3 request",
        otel.kind = "server",
        otel.status_code = Empty,
        request_id = Empty,
        http.request.method = Empty,
        client.address = Empty,
        s3.op = Empty,
        s3.bucket = Empty,
        principal = Empty,
        identity = Empty,
        decision = Empty,
        http.response.status_code = Empty,
        http.request.body.size = Empty,
        http.response.body.size = Empty,
    );
    if span.is_disabled() {
        return (span, false);
    }
    if cx.cfg.trusted_proxies.contains(ex.conn.peer.ip()) {
        trace::continue_from(&span, &head.headers);
    }
    if !trace::is_sampled(&span) {
        return (span, false);
    }
    span.record("request_id", ex.request_id.as_str());
    span.record("http.request.method", head.method.as_str());
    span.record(
        "client.address",
        tracing::field::display(ex.origin.client_ip),
    );
    if let Some(len) = declared_length(head) {
        span.record("http.request.body.size", int(len));
    }
    (span, true)
}

/// What the request is, once classified.
pub(super) fn record_request(ex: &Exchange, req: &S3Request) {
    if !ex.traced {
        return;
    }
    let span = &ex.span;
    span.record("s3.op", req.op.as_str());
    if let Some(bucket) = &req.bucket {
        span.record("s3.bucket", bucket.as_str());
    }
}

/// Records how the request ended and hands the span to the response body,
/// so that it ends (and counts bytes) when the body is done.
pub(super) fn finish(ex: &Exchange, response: Response<Body>) -> Response<Body> {
    let span = &ex.span;
    let t = &ex.trace;
    if let Some(principal) = &t.principal {
        span.record("principal", &**principal);
    }
    if let Some(identity) = t.identity {
        span.record("identity", identity);
    }
    if let Some(decision) = t.decision {
        span.record("decision", decision);
    }
    if let Some(op) = t.op {
        span.record("s3.op", op);
    }
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    let (parts, inner) = response.into_parts();
    Response::from_parts(
        parts,
        body::boxed(Traced {
            inner,
            sent: 0,
            span: span.clone(),
        }),
    )
}

/// A count as an OTel integer: `tracing-opentelemetry` records `u64`
/// fields as strings.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The body's length as the client declared it: the decoded length of an
/// aws-chunked body, else `Content-Length`.
fn declared_length(head: &Parts) -> Option<u64> {
    head.headers
        .get("x-amz-decoded-content-length")
        .or_else(|| head.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A response body that counts what it sends and holds the request's
/// span until it is done or dropped.
struct Traced {
    inner: Body,
    sent: u64,
    span: Span,
}

impl HttpBody for Traced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
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

impl Drop for Traced {
    fn drop(&mut self) {
        self.span.record("http.response.body.size", int(self.sent));
    }
}
