//! Stage 1: what is this request? Pure; no I/O.

use http::request::Parts;
use s3gate_s3::request::{classify, HostConfig, S3Request};

use crate::error::Error;

pub fn s3_request(hosts: &HostConfig, head: &Parts) -> Result<S3Request, Error> {
    // HTTP/1.1 requests carry Host; an absolute-form URI carries the authority.
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()));
    Ok(classify(
        hosts,
        &head.method,
        &head.uri,
        host,
        &head.headers,
    )?)
}
