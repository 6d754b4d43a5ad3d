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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SamplingResult, ShouldSample};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of every span meant for OpenTelemetry. The log
/// output never shows it (the log filter turns it off), so spans cost
/// nothing unless traces are exported.
pub const TARGET: &str = "s3gate::otel";

/// The name of a data plane's request span: the root of a request's trace
/// unless a trusted proxy sent a trace context.
pub const REQUEST_SPAN: &str = "s3 request";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Whether this process exports traces: set once by whoever installs the
/// layer that records the spans at [`TARGET`] (the CLI, with an OTLP
/// endpoint). The request path asks this rather than `tracing::enabled!`:
/// the log and trace layers filter differently, which makes every such
/// check a walk of the layered subscriber (about 0.7 k instructions per
/// request each), for an answer that never changes while the process runs.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says whether spans at [`TARGET`] are recorded (see [`exporting`]).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans at [`TARGET`] are recorded: the same answer as
/// `tracing::enabled!(target: TARGET, Level::INFO)` in a process whose
/// subscriber was set up with [`set_exporting`], at the cost of one load.
#[inline]
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` a child of the context in `headers`, when they carry a
/// valid `traceparent`. Call it only for headers from a party allowed to
/// choose the trace (a trusted proxy, a data plane); a span without a
/// remote parent starts a new trace.
pub fn continue_from(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() {
        return;
    }
    if let Some(cx) = remote_parent(headers) {
        // Fails only without the OpenTelemetry layer, which a span that is
        // enabled at TARGET implies is there.
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of `parent` (from [`remote_parent`]).
pub fn set_parent(span: &Span, parent: opentelemetry::Context) {
    // Fails only without the OpenTelemetry layer, which a span that is
    // enabled at TARGET implies is there.
    let _ = span.set_parent(parent);
}

/// The valid trace context in `headers` (`traceparent`, `tracestate`), if
/// any.
pub fn remote_parent(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

// === head sampling ===

/// The sampling ratio of new traces as `f64` bits; 1.0 until
/// [`set_head_ratio`].
static HEAD_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Sets the share of new request traces that are recorded (the exporter's
/// `--trace-sample-ratio`).
pub fn set_head_ratio(ratio: f64) {
    HEAD_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
}

/// Decides, before any span exists, whether a new request trace is
/// recorded. A request that draws `false` makes no span at all and carries
/// an [`Unsampled`] context instead: at 1 % sampling, 99 requests in 100
/// cost a random number, not a span in the registry and the OTel layer.
/// [`HeadSampler`] records every root request span, since this drew for it.
pub fn draw_head() -> bool {
    let ratio = f64::from_bits(HEAD_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || fastrand::f64() < ratio
}

/// The exporter's sampler: a root [`REQUEST_SPAN`] was drawn for by
/// [`draw_head`] (only drawn requests make one), so it is recorded; every
/// other span follows its parent, or the ratio when it has none.
#[derive(Debug, Clone)]
pub struct HeadSampler {
    otherwise: Sampler,
}

impl HeadSampler {
    pub fn new(ratio: f64) -> Self {
        Self {
            otherwise: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
        }
    }
}

impl ShouldSample for HeadSampler {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let root = !parent_context.is_some_and(|cx| cx.has_active_span());
        let sampler = if root && name == REQUEST_SPAN {
            &Sampler::AlwaysOn
        } else {
            &self.otherwise
        };
        sampler.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// The trace context of a request that [`draw_head`] left unrecorded: no
/// span, only ids, so that the backend and the control plane still hear
/// "this trace is not sampled" (`traceparent` with flags `00`) and do not
/// start traces of their own for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsampled {
    trace_id: u128,
    span_id: u64,
}

impl Unsampled {
    /// A new trace's ids (never the all-zero invalid ones).
    pub fn new_root() -> Self {
        Self {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
        }
    }

    /// `00-<trace id>-<span id>-00`.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        // The slices are exactly twice the ids' lengths, so neither fails.
        let written = hex::encode_to_slice(self.trace_id.to_be_bytes(), &mut out[3..35])
            .and_then(|()| hex::encode_to_slice(self.span_id.to_be_bytes(), &mut out[36..52]));
        match written {
            Ok(()) => {
                HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
            }
            Err(_) => HeaderValue::from_static(""),
        }
    }

    /// Writes `traceparent` into `headers`, replacing any there.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT, self.traceparent());
    }

    /// [`inject`](Self::inject) into gRPC request metadata.
    pub fn inject_metadata(&self, metadata: &mut MetadataMap) {
        if let Ok(value) = MetadataValue::try_from(self.traceparent().as_bytes()) {
            metadata.insert("traceparent", value);
        }
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

    #[test]
    fn unsampled_traceparent_is_valid_and_not_sampled() {
        let u = Unsampled {
            trace_id: 0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            span_id: 0xb7ad_6b71_6920_3331,
        };
        assert_eq!(
            u.traceparent(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        );
        let mut headers = HeaderMap::new();
        Unsampled::new_root().inject(&mut headers);
        let cx = TraceContextPropagator::new().extract(&Headers(&headers));
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && !sc.is_sampled(), "{headers:?}");
        let mut md = MetadataMap::new();
        u.inject_metadata(&mut md);
        assert_eq!(
            md.get("traceparent").unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        );
    }

    #[test]
    fn head_sampler_records_drawn_roots_and_follows_parents() {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        use opentelemetry_sdk::trace::SamplingDecision;
        let sampler = HeadSampler::new(0.0);
        let decide = |parent: Option<&opentelemetry::Context>, name: &str| {
            sampler
                .should_sample(parent, TraceId::from(7), name, &SpanKind::Server, &[], &[])
                .decision
        };
        let none = opentelemetry::Context::new();
        assert_eq!(
            decide(None, REQUEST_SPAN),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(
            decide(Some(&none), REQUEST_SPAN),
            SamplingDecision::RecordAndSample
        );
        // Any other root goes by the ratio (0 here).
        assert_eq!(
            decide(Some(&none), "control plane call"),
            SamplingDecision::Drop
        );
        // A request span under a remote unsampled parent follows it.
        let parent = none.with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            opentelemetry::trace::SpanId::from(9),
            TraceFlags::default(),
            true,
            TraceState::default(),
        ));
        assert_eq!(decide(Some(&parent), REQUEST_SPAN), SamplingDecision::Drop);
    }

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
