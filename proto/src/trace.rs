//! W3C trace context between s3gate's processes and their neighbours: the
//! `traceparent` and `tracestate` headers a trusted client sends, the data
//! plane puts on backend requests and on its control-plane calls (as gRPC
//! metadata), and the control plane reads.
//!
//! Spans are ordinary `tracing` spans at [`TARGET`]. Only the OpenTelemetry
//! layer (`s3gate --otlp-endpoint`) enables that target; without it every
//! span macro aimed at it returns a disabled span without allocating, and
//! each function here returns as soon as it sees one. The span-to-OTel
//! bridge is `tracing-opentelemetry`; this module only moves contexts in
//! and out of headers.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for OpenTelemetry. The log
/// output never shows it (the log filter turns it off), so spans cost
/// nothing unless traces are exported.
pub const TARGET: &str = "s3gate::otel";

/// Makes `span` a child of the context in `headers`, when they carry a
/// valid `traceparent`. Call it only for headers from a party allowed to
/// choose the trace (a trusted proxy, a data plane); a span without a
/// remote parent starts a new trace.
pub fn continue_from(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer, which a span that is
        // enabled at TARGET implies is there.
        let _ = span.set_parent(cx);
    }
}

/// Whether `span` is recorded (sampled), deciding it now if it was not
/// yet. False for a disabled span.
pub fn is_sampled(span: &Span) -> bool {
    !span.is_disabled() && span.context().span().span_context().is_sampled()
}

/// Writes `span`'s context into `headers` as `traceparent` (and
/// `tracestate` when it has one), replacing any there. Nothing when the
/// span is disabled.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(headers));
    }
}

/// [`inject`] into gRPC request metadata.
pub fn inject_metadata(span: &Span, metadata: &mut MetadataMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
    }
}

/// The span of one gRPC call a control plane serves (for tonic's
/// `Server::trace_fn`), a child of the caller's span when the call carries
/// a `traceparent`. Unary `s3gate.v1` calls only: a Watch stream lives as
/// long as its data plane, and health and reflection calls are probes.
pub fn server_span(req: &http::Request<()>) -> Span {
    let path = req.uri().path();
    let method = path.trim_start_matches('/');
    if !method.starts_with("s3gate.v1.") || method.ends_with("/Watch") {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TARGET,
        "rpc served",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
    );
    continue_from(&span, req.headers());
    span
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Without the OpenTelemetry layer the span is disabled and nothing is
    /// read or written: off costs nothing and leaks nothing.
    #[test]
    fn disabled_spans_move_no_context() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let span = tracing::info_span!(target: TARGET, "s3 request");
        assert!(span.is_disabled());
        continue_from(&span, &headers);
        let mut out = HeaderMap::new();
        inject(&span, &mut out);
        assert!(out.is_empty());
        let req = http::Request::builder()
            .uri("/s3gate.v1.Decisions/Authorize")
            .body(())
            .unwrap();
        assert!(server_span(&req).is_disabled());
    }
}
