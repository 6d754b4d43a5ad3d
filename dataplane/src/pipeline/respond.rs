//! Stage 7: the response. Backend responses arrive here already cleaned by
//! `forward::downstream`; the gateway's own errors become S3 error XML here
//! and nowhere else. Every response gets the gateway's request id, every
//! request one access-log line and its metrics, every decided request one
//! audit line (written when its response body is done, so it has the
//! bytes sent).

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Method, Response};
use s3gate_s3::request::S3Request;
use s3gate_s3::{S3Error, S3ErrorCode};
use tracing::{debug, info, warn};

use super::Exchange;
use crate::body::{self, Body};
use crate::error::Error;

/// The response for a request's result, and the request's observers: the
/// access log line, the metrics, the audit line.
pub fn finish(
    head: &Parts,
    result: Result<Response<Body>, Error>,
    ex: &mut Exchange,
    req: Option<&S3Request>,
) -> Response<Body> {
    // A denial names what decided it; an allow left that in the trace.
    if let Err(Error::Denied { reason, decided_by }) = &result {
        ex.trace.decided_by = decided_by.clone();
        if ex.audit.is_some() {
            ex.trace.reason = Some(reason.clone());
        }
    }
    let (slot, trace, request_id) = (&ex.slot, &ex.trace, ex.request_id.as_str());
    let (peer, start) = (ex.conn.peer, ex.start);
    let mut response = match result {
        Ok(r) => r,
        Err(err) => {
            // A body verifier's verdict beats the transport error it caused.
            let s3 = match (&err, slot.get()) {
                (Error::Upstream(_) | Error::Backend(_), Some(verdict)) => verdict.clone(),
                _ => err.to_s3(),
            };
            if err.is_server_fault() && slot.get().is_none() {
                warn!(request_id, error = %err, "request failed");
            } else {
                debug!(request_id, error = %err, code = s3.code.as_str(), "request refused");
            }
            let mut response = error_response(&s3, request_id, head.method == Method::HEAD);
            // (HTTP/2 has no `Connection`: the stream alone ends.)
            if (s3.code == S3ErrorCode::RequestTimeout || has_body(head))
                && head.version != http::Version::HTTP_2
            {
                // The rest of the body will not be read: the connection
                // cannot carry another request. A request refused before
                // its body was read is the same: botocore sends a small
                // body right behind its `Expect: 100-continue` head, and
                // those bytes would be parsed as the next request (a 400
                // for an innocent GET) or the connection would be dropped
                // under the client's next request.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    // Every response carries the gateway's request id, backend ones included.
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response
            .headers_mut()
            .insert(s3gate_s3::names::X_AMZ_REQUEST_ID, v);
    }
    let key = trace
        .refused_key
        .as_deref()
        .or_else(|| req.and_then(|r| r.key.as_deref()));
    let op = req.map_or(trace.op.unwrap_or("-"), |r| r.op.as_str());
    let status = response.status().as_u16();
    let identity = trace.identity.unwrap_or("-");
    let decision = trace.decision.unwrap_or("-");
    let keys = trace
        .keys
        .as_ref()
        .and_then(|k| serde_json::to_string(k).ok());
    let ttfb = start.elapsed();
    access_log(&s3gate_observe::access::Line {
        request_id,
        peer,
        // Only when a trusted proxy named another address than the peer's.
        client: (ex.origin.client_ip != super::forwarded::canonical(peer.ip()))
            .then_some(ex.origin.client_ip),
        principal: trace.principal.as_deref().unwrap_or("-"),
        identity,
        op,
        bucket: req.and_then(|r| r.bucket.as_deref()).unwrap_or("-"),
        key: key.unwrap_or("-"),
        // Only DeleteObjects has this field.
        keys: keys.as_deref(),
        decision,
        // Only SigV2 requests have this field.
        auth: trace.auth,
        status,
        latency_us: u64::try_from(ttfb.as_micros()).unwrap_or(u64::MAX),
    });
    let metrics = s3gate_observe::metrics();
    metrics.request(op, status, decision, identity, ttfb);
    // Policy decisions only: not CORS preflights, not refusals before one.
    let audit = match (&ex.audit, decision) {
        (Some(audit), "allow" | "deny") => Some(Box::new(Pending {
            audit: audit.clone(),
            request_id: ex.request_id,
            principal: trace.principal.clone(),
            identity,
            client: ex.origin.client_ip,
            action: req.map_or("-", |r| r.action),
            op,
            bucket: req.and_then(|r| r.bucket.clone()),
            key: key.map(str::to_owned),
            keys: ex.trace.keys.take(),
            decision,
            decided_by: ex.trace.decided_by.take(),
            reason: ex.trace.reason.take(),
            status,
            bytes_in: declared_length(head).unwrap_or(0),
        })),
        _ => None,
    };
    let in_flight = ex.in_flight.take();
    // A recorded trace's span ends with the body (`spans`).
    let span = ex.traced.then(|| ex.span.clone());
    if !metrics.enabled() && audit.is_none() && span.is_none() {
        // Nothing to observe while the body streams: no wrapper.
        drop(in_flight);
        return response;
    }
    response.map(|inner| {
        body::boxed(Observed {
            inner,
            sent: 0,
            op,
            start,
            _in_flight: in_flight,
            audit,
            span,
        })
    })
}

/// The request's access-log line (target `s3gate::access`), when the log
/// filter lets it through: formatted directly into the log thread's buffer
/// when that is set up (`s3gate_observe::access`), else as a tracing event
/// (same bytes, slower).
fn access_log(l: &s3gate_observe::access::Line<'_>) {
    if !tracing::enabled!(target: "s3gate::access", tracing::Level::INFO) {
        return;
    }
    if s3gate_observe::access::write(l) {
        return;
    }
    info!(
        target: "s3gate::access",
        request_id = l.request_id,
        peer = %l.peer,
        client = l.client.map(tracing::field::display),
        principal = l.principal,
        identity = l.identity,
        op = l.op,
        bucket = l.bucket,
        key = l.key,
        keys = l.keys,
        decision = l.decision,
        auth = l.auth,
        status = l.status,
        latency_us = l.latency_us,
    );
}

/// A response body on its way to the client, counted; when it is done (or
/// dropped: the client went away) the request's duration is recorded, its
/// audit line written and its trace span ended with the bytes sent.
struct Observed {
    inner: Body,
    sent: u64,
    op: &'static str,
    start: std::time::Instant,
    _in_flight: Option<s3gate_observe::Open>,
    audit: Option<Box<Pending>>,
    span: Option<tracing::Span>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.sent += n;
                s3gate_observe::metrics().sent(n);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        s3gate_observe::metrics().request_done(self.op, took);
        if let Some(pending) = self.audit.take() {
            pending.write(self.sent, took);
        }
        if let Some(span) = &self.span {
            span.record("http.response.body.size", super::spans::int(self.sent));
        }
    }
}

/// An audit line waiting for its response body to be done.
struct Pending {
    audit: std::sync::Arc<s3gate_observe::Audit>,
    request_id: super::RequestId,
    principal: Option<std::sync::Arc<str>>,
    identity: &'static str,
    client: std::net::IpAddr,
    action: &'static str,
    op: &'static str,
    bucket: Option<String>,
    key: Option<String>,
    keys: Option<Vec<String>>,
    decision: &'static str,
    decided_by: Option<std::sync::Arc<str>>,
    reason: Option<String>,
    status: u16,
    bytes_in: u64,
}

impl Pending {
    fn write(&self, bytes_out: u64, took: std::time::Duration) {
        self.audit.record(&s3gate_observe::AuditRecord {
            time: s3gate_observe::audit::now(),
            request_id: self.request_id.as_str(),
            principal: self.principal.as_deref().unwrap_or("-"),
            identity: self.identity,
            client: self.client,
            action: self.action,
            op: self.op,
            bucket: self.bucket.as_deref(),
            key: self.key.as_deref(),
            keys: self.keys.as_deref(),
            decision: self.decision,
            decided_by: self.decided_by.as_deref(),
            reason: self.reason.as_deref(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out,
            duration_ms: took.as_secs_f64() * 1e3,
        });
    }
}

/// The body length a request declared: the decoded length of an
/// aws-chunked upload, else its Content-Length.
pub(super) fn declared_length(head: &Parts) -> Option<u64> {
    head.headers
        .get(s3gate_s3::names::X_AMZ_DECODED_CONTENT_LENGTH)
        .or_else(|| head.headers.get(CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub fn error_response(err: &S3Error, request_id: &str, head_only: bool) -> Response<Body> {
    let xml = err.to_xml(request_id);
    let mut response = Response::new(if head_only {
        body::empty()
    } else {
        body::full(xml.clone())
    });
    *response.status_mut() = err.code.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if !head_only {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(xml.len()));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(s3gate_s3::names::X_AMZ_REQUEST_ID, v);
    }
    response
}

/// Whether the request declared a body (which an error answer may have
/// left unread).
fn has_body(head: &Parts) -> bool {
    head.headers.contains_key(TRANSFER_ENCODING)
        || head
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
