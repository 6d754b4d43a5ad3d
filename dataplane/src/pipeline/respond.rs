//! Stage 7: the response. Backend responses arrive here already cleaned by
//! `forward::downstream`; the gateway's own errors become S3 error XML here
//! and nowhere else. Every response gets the gateway's request id, every
//! request one access-log line.

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
/// access log line.
pub fn finish(
    head: &Parts,
    result: Result<Response<Body>, Error>,
    ex: &Exchange,
    req: Option<&S3Request>,
) -> Response<Body> {
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
        response.headers_mut().insert("x-amz-request-id", v);
    }
    let key = trace
        .refused_key
        .as_deref()
        .or_else(|| req.and_then(|r| r.key.as_deref()))
        .unwrap_or("-");
    info!(
        target: "s3gate::access",
        request_id,
        %peer,
        // Only when a trusted proxy named another address than the peer's.
        client = (ex.origin.client_ip != super::forwarded::canonical(peer.ip())).then(|| tracing::field::display(ex.origin.client_ip)),
        principal = trace.principal.as_deref().unwrap_or("-"),
        identity = trace.identity.unwrap_or("-"),
        op = req.map_or(trace.op.unwrap_or("-"), |r| r.op.as_str()),
        bucket = req.and_then(|r| r.bucket.as_deref()).unwrap_or("-"),
        key,
        // Only DeleteObjects has this field; `None` records nothing.
        keys = trace.keys.as_deref(),
        decision = trace.decision.unwrap_or("-"),
        // Only SigV2 requests have this field.
        auth = trace.auth,
        status = response.status().as_u16(),
        latency_us = start.elapsed().as_micros() as u64,
    );
    response
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
        headers.insert("x-amz-request-id", v);
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
