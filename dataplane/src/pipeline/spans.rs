//! The request's trace span: made in [`handle`](super::handle) once the
//! request's origin is known, a parent of the stage spans (`staged!`)
//! and, through them, of the control-plane calls (`control.rs`); it ends
//! when the response body has been sent.
//!
//! Its target, [`TARGET`], is enabled only by the OpenTelemetry layer, so
//! without `--otlp-endpoint` [`request`] returns a disabled span without
//! allocating and `handle` skips the rest.
//!
//! With it, a new trace is drawn for before any span exists
//! ([`trace::draw_head`]): a request left unrecorded makes no span and runs
//! in an [`UNSAMPLED`] scope whose ids still go to the backend and the
//! control plane as a `traceparent` with flags `00`.
//!
//! What a span records is chosen to be safe to ship to a trace backend: the
//! operation, the bucket, the principal's name, the decision, the status
//! and sizes, the request id. Never a header value, a query string (a
//! presigned URL's is a credential) or an object key.

use http::request::Parts;
use s3gate_proto::trace::{self, TARGET};
use s3gate_s3::request::S3Request;
use tracing::field::Empty;
use tracing::Span;

use super::{Ctx, Exchange};

tokio::task_local! {
    /// The trace context of an unrecorded request, while its stages run.
    static UNSAMPLED: trace::Unsampled;
}

/// Where a request's trace stands.
pub(super) enum Traced {
    /// No traces are exported.
    Off,
    /// Not recorded: no span, these ids ([`in_unsampled`]).
    Unsampled(trace::Unsampled),
    /// A span, recorded (sampled) or not: only a recorded one has its
    /// attributes filled in.
    Span(Span, bool),
}

/// Runs `fut` (a request's stages) as the unrecorded request `ids`.
///
/// A plain function, not `async fn`: an async fn would keep `fut` twice
/// in its state (as argument and inside the scope), doubling the size of
/// every request's future.
pub(super) fn in_unsampled<F: std::future::Future>(
    ids: trace::Unsampled,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    UNSAMPLED.scope(ids, fut)
}

/// The unrecorded request being served on this task, if it is one.
pub fn unsampled() -> Option<trace::Unsampled> {
    UNSAMPLED.try_with(|ids| *ids).ok()
}

/// Writes the current trace context into `headers` as `traceparent`: the
/// current span's, or an unrecorded request's ids. Nothing when traces are
/// not exported.
pub fn inject(headers: &mut http::HeaderMap) {
    if !trace::exporting() {
        return;
    }
    match unsampled() {
        Some(ids) => ids.inject(headers),
        None => trace::inject(&Span::current(), headers),
    }
}

/// The request's trace: its span, or an unrecorded request's ids. A
/// `traceparent` is believed only from a trusted proxy
/// (`trusted_proxies`): from anyone else the request starts a trace of its
/// own, as its forwarding headers change nothing either.
pub(super) fn request(cx: &Ctx, ex: &Exchange, head: &Parts) -> Traced {
    if !trace::exporting() {
        return Traced::Off;
    }
    let parent = if cx.cfg.trusted_proxies.contains(ex.conn.peer.ip()) {
        trace::remote_parent(&head.headers)
    } else {
        None
    };
    // A new trace is drawn for here; the exporter's sampler records every
    // root request span (`trace::HeadSampler`).
    if parent.is_none() && !trace::draw_head() {
        return Traced::Unsampled(trace::Unsampled::new_root());
    }
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
    if let Some(parent) = parent {
        trace::set_parent(&span, parent);
    }
    if !trace::is_sampled(&span) {
        return Traced::Span(span, false);
    }
    span.record("request_id", ex.request_id.as_str());
    span.record("http.request.method", head.method.as_str());
    span.record(
        "client.address",
        tracing::field::display(ex.origin.client_ip),
    );
    if let Some(len) = super::respond::declared_length(head) {
        span.record("http.request.body.size", int(len));
    }
    Traced::Span(span, true)
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

/// Records how the request ended. The span itself went to the response
/// body (`respond::finish`), which ends it, with the bytes sent, when the
/// body is done.
pub(super) fn finish(ex: &Exchange, status: http::StatusCode) {
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
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// A count as an OTel integer: `tracing-opentelemetry` records `u64`
/// fields as strings.
pub(super) fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
