//! Stage 6: rebuild the request for the backend — its address, its bucket
//! name, its addressing style — keep the S3 semantics headers, drop hop-by-hop
//! and client auth, re-sign with the backend credentials, and stream.

use std::time::SystemTime;

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, HOST};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use s3gate_proto::AddressingStyle;
use s3gate_s3::request::{decode, encode_component, encode_key, Op, Query, S3Request};
use s3gate_s3::{S3Error, S3ErrorCode};
use std::fmt::Write as _;

use super::authz::Granted;
use super::payload::{PayloadPlan, UpstreamPayload};
use super::route::RouteEntry;
use crate::body::Body;
use crate::error::Error;

/// Request headers never forwarded: hop-by-hop, and the client's own
/// authentication (the backend request is signed anew).
const DROP_REQUEST: &[&str] = &[
    "authorization",
    "connection",
    "expect",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
];

/// Extra request headers dropped when an aws-chunked body is forwarded decoded.
const DROP_DECODED: &[&str] = &[
    "x-amz-decoded-content-length",
    "x-amz-trailer",
    "x-amz-sdk-checksum-algorithm",
];

/// Response headers never passed back.
const DROP_RESPONSE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Presign parameters: they authenticated the client, not us.
const PRESIGN_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

#[allow(clippy::too_many_arguments)]
pub async fn send(
    route: &RouteEntry,
    source: Option<&std::sync::Arc<RouteEntry>>,
    head: &Parts,
    req: &S3Request,
    // Not read: its type proves authorization ran before anything is sent.
    _grant: &Granted,
    body: Body,
    plan: PayloadPlan,
) -> Result<Response<Body>, Error> {
    let backend = &route.route.backend;
    let object_key = if req.is_list() {
        None
    } else {
        req.key.as_deref()
    };
    let (target, host) = upstream_target(
        &backend.endpoint,
        backend.addressing_style,
        &route.route.backend_bucket,
        object_key,
        head.uri.query().unwrap_or(""),
    )?;

    let headers = upstream_headers(head, &host, &plan, req, source)?;

    // Sign. aws-sigv4 wants &str values: S3 headers must be visible ASCII anyway.
    let mut pairs = Vec::with_capacity(headers.len());
    for (name, value) in &headers {
        let value = value.to_str().map_err(|_| {
            S3Error::new(
                S3ErrorCode::InvalidArgument,
                format!("header {name} must be US-ASCII (encode non-ASCII metadata per RFC 2047)"),
            )
        })?;
        pairs.push((name.as_str(), value));
    }
    let signable_body = match &plan.upstream {
        UpstreamPayload::Sha256(hex) => SignableBody::Precomputed(hex.clone()),
        UpstreamPayload::Unsigned => SignableBody::UnsignedPayload,
        UpstreamPayload::UnsignedTrailer { .. } => SignableBody::StreamingUnsignedPayloadTrailer,
    };
    let signable = SignableRequest::new(
        head.method.as_str(),
        target.as_str(),
        pairs.into_iter(),
        signable_body,
    )
    .map_err(|e| {
        Error::S3(S3Error::new(
            S3ErrorCode::InvalidRequest,
            format!("cannot sign request: {e}"),
        ))
    })?;
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&route.identity)
        .region(&backend.region)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .map_err(|e| Error::ControlPlane(format!("signing parameters: {e}")))?
        .into();
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| {
            Error::S3(S3Error::new(
                S3ErrorCode::InvalidRequest,
                format!("cannot sign request: {e}"),
            ))
        })?
        .into_parts();

    let mut upstream = Request::builder()
        .method(head.method.clone())
        .uri(target.as_str())
        .body(body)
        .map_err(|e| {
            Error::S3(S3Error::new(
                S3ErrorCode::InvalidURI,
                format!("invalid upstream request: {e}"),
            ))
        })?;
    *upstream.headers_mut() = headers;
    instructions.apply_to_request_http1x(&mut upstream);

    let response = route
        .client
        .request(upstream)
        .await
        .map_err(|e| Error::Upstream(Box::new(e)))?;
    let response = downstream_response(response);
    if needs_rewrite(req, route, head, response.status()) {
        rewrite_bucket(response, route, head, req).await
    } else {
        Ok(response)
    }
}

/// Responses whose XML names the backend's bucket (or, for
/// CompleteMultipartUpload, the backend's endpoint). These are small
/// documents; object bodies are never rewritten.
fn needs_rewrite(
    req: &S3Request,
    route: &RouteEntry,
    head: &Parts,
    status: http::StatusCode,
) -> bool {
    if head.method == http::Method::HEAD {
        return false;
    }
    let renamed = route.route.backend_bucket != route.route.bucket;
    match req.op {
        Op::CompleteMultipartUpload => true,
        Op::ListObjects
        | Op::ListObjectsV2
        | Op::ListObjectVersions
        | Op::ListMultipartUploads
        | Op::CreateMultipartUpload
        | Op::ListParts => renamed,
        _ => renamed && !status.is_success(),
    }
}

/// Largest response document the gateway rewrites.
const MAX_REWRITE_BODY: usize = 64 << 20;

async fn rewrite_bucket(
    response: Response<Body>,
    route: &RouteEntry,
    head: &Parts,
    req: &S3Request,
) -> Result<Response<Body>, Error> {
    let (mut parts, body) = response.into_parts();
    let bytes = crate::body::collect_limited(body, MAX_REWRITE_BODY)
        .await
        .map_err(Error::Upstream)?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        // Not a text document: pass it on untouched.
        return Ok(Response::from_parts(parts, crate::body::full(bytes)));
    };
    let location = match (req.op, req.key.as_deref()) {
        (Op::CompleteMultipartUpload, Some(key)) => {
            let host = head
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            Some(format!(
                "http://{host}/{}/{}",
                route.route.bucket,
                encode_key(key)
            ))
        }
        _ => None,
    };
    let doc = s3gate_s3::xml::rename_bucket(
        text,
        &route.route.backend_bucket,
        &route.route.bucket,
        location.as_deref(),
    );
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(doc.len()));
    parts.headers.remove("content-md5");
    Ok(Response::from_parts(parts, crate::body::full(doc)))
}

/// The backend URL of a request and the Host it must carry: path style
/// `scheme://authority/bucket/key`, or virtual style
/// `scheme://bucket.authority/key`. Keys and query parameters are re-encoded
/// strictly, so the URL is exactly what aws-sigv4 signs; presign parameters
/// are dropped.
fn upstream_target(
    endpoint: &str,
    style: AddressingStyle,
    bucket: &str,
    object_key: Option<&str>,
    query: &str,
) -> Result<(String, String), Error> {
    let (scheme, authority) = endpoint
        .split_once("://")
        .ok_or_else(|| Error::ControlPlane("backend endpoint has no scheme".to_owned()))?;
    let mut target =
        String::with_capacity(64 + object_key.map_or(0, |k| k.len() * 3) + query.len());
    let host = match style {
        AddressingStyle::Path => {
            let _ = write!(target, "{scheme}://{authority}/{bucket}");
            if let Some(k) = object_key {
                let _ = write!(target, "/{}", encode_key(k));
            }
            authority.to_owned()
        }
        AddressingStyle::Virtual => {
            let host = format!("{bucket}.{authority}");
            let _ = write!(target, "{scheme}://{host}/");
            if let Some(k) = object_key {
                let _ = write!(target, "{}", encode_key(k));
            }
            host
        }
    };
    append_query(&mut target, query)?;
    Ok((target, host))
}

fn append_query(target: &mut String, raw: &str) -> Result<(), Error> {
    let query = Query::parse(raw)?;
    let mut sep = '?';
    for (name, value) in query.pairs() {
        if PRESIGN_PARAMS.contains(&name) {
            continue;
        }
        target.push(sep);
        sep = '&';
        let name = decode(name)?;
        let _ = write!(target, "{}", encode_component(&name));
        if let Some(value) = value {
            let value = decode(value)?;
            let _ = write!(target, "={}", encode_component(&value));
        }
    }
    Ok(())
}

fn upstream_headers(
    head: &Parts,
    host: &str,
    plan: &PayloadPlan,
    req: &S3Request,
    source: Option<&std::sync::Arc<RouteEntry>>,
) -> Result<HeaderMap, Error> {
    // Headers named in Connection are hop-by-hop too.
    let connection_listed: Vec<&str> = head
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // Decoded: the aws-chunked framing is gone. Re-framed: it stays, with
    // the trailer headers, and only the length changes.
    let (decoded, reframed_len) = match plan.upstream {
        UpstreamPayload::UnsignedTrailer { encoded_length } => (false, Some(encoded_length)),
        _ => (plan.decoded_length.is_some(), None),
    };
    let mut out = HeaderMap::with_capacity(head.headers.len() + 4);
    for (name, value) in &head.headers {
        let n = name.as_str();
        if DROP_REQUEST.contains(&n)
            || (decoded && DROP_DECODED.contains(&n))
            || connection_listed.iter().any(|c| c.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let host = HeaderValue::from_str(host)
        .map_err(|_| Error::ControlPlane("invalid backend host".to_owned()))?;
    out.insert(HOST, host);
    if let Some(len) = reframed_len {
        out.insert(CONTENT_LENGTH, HeaderValue::from(len));
    } else if let (true, Some(len)) = (decoded, plan.decoded_length) {
        out.insert(CONTENT_LENGTH, HeaderValue::from(len));
        // Drop the aws-chunked coding; keep any other content coding.
        let codings: Vec<String> = out
            .get_all(CONTENT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("aws-chunked"))
            .map(str::to_owned)
            .collect();
        out.remove(CONTENT_ENCODING);
        if !codings.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&codings.join(",")) {
                out.insert(CONTENT_ENCODING, v);
            }
        }
    }
    if let (Some(src), Some(src_route)) = (&req.copy_source, source) {
        let mut value = format!(
            "/{}/{}",
            src_route.route.backend_bucket,
            encode_key(&src.key)
        );
        if let Some(v) = &src.version_id {
            let _ = write!(value, "?versionId={v}");
        }
        let value = HeaderValue::from_str(&value).map_err(|_| {
            S3Error::new(
                S3ErrorCode::InvalidArgument,
                "invalid x-amz-copy-source header",
            )
        })?;
        out.insert(HeaderName::from_static("x-amz-copy-source"), value);
    }
    Ok(out)
}

fn downstream_response(response: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    for name in DROP_RESPONSE {
        parts.headers.remove(*name);
    }
    Response::from_parts(parts, crate::body::incoming(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(style: AddressingStyle, key: Option<&str>, query: &str, want: (&str, &str)) {
        let (target, host) =
            upstream_target("http://localhost:9000", style, "data-prod", key, query).unwrap();
        assert_eq!((target.as_str(), host.as_str()), want);
    }

    #[test]
    fn path_and_virtual_targets() {
        use AddressingStyle::*;
        check(
            Path,
            Some("a b/ü+%"),
            "",
            (
                "http://localhost:9000/data-prod/a%20b/%C3%BC%2B%25",
                "localhost:9000",
            ),
        );
        check(
            Virtual,
            Some("a b/c"),
            "",
            (
                "http://data-prod.localhost:9000/a%20b/c",
                "data-prod.localhost:9000",
            ),
        );
        check(
            Path,
            None,
            "list-type=2&prefix=a+b%2Fc",
            (
                "http://localhost:9000/data-prod?list-type=2&prefix=a%2Bb%2Fc",
                "localhost:9000",
            ),
        );
        check(
            Virtual,
            None,
            "uploads",
            (
                "http://data-prod.localhost:9000/?uploads",
                "data-prod.localhost:9000",
            ),
        );
        check(
            Path,
            Some("k"),
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&versionId=v1&X-Amz-Signature=abc&X-Amz-Credential=x",
            (
                "http://localhost:9000/data-prod/k?versionId=v1",
                "localhost:9000",
            ),
        );
    }
}
