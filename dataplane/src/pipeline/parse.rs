//! Stage 1: what is this request? Pure; no I/O.

use http::request::Parts;
use s3gate_s3::request::{classify, HostConfig, S3Request};

use crate::error::Error;

pub fn s3_request(hosts: &HostConfig, head: &Parts) -> Result<S3Request, Error> {
    Ok(classify(
        hosts,
        &head.method,
        &head.uri,
        host(head),
        &head.headers,
    )?)
}

/// The host the request was sent to: HTTP/1.1 requests carry Host; an
/// absolute-form URI (and HTTP/2) carries the authority.
pub fn host(head: &Parts) -> Option<&str> {
    head.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
}
