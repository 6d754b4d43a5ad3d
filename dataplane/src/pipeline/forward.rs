//! Stage 6: rebuild the request for the backend — its address, its bucket
//! name, its addressing style — keep the S3 semantics headers, drop hop-by-hop
//! and client auth, re-sign with the backend credentials, and stream.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST,
    LOCATION,
};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use s3gate_proto::AddressingStyle;
use s3gate_s3::request::{decode, encode_component, encode_key, Addressing, Op, Query, S3Request};
use s3gate_s3::{names, sigv4, S3Error, S3ErrorCode};
use std::fmt::Write as _;

use super::authz::Granted;
use super::payload::{PayloadPlan, UpstreamPayload};
use super::route::{RouteEntry, UpstreamAuth};
use super::Ctx;
use crate::body::{Body, CollectError};
use crate::error::Error;
use crate::pool::ResponseBody;
use crate::upstream::Slot;
use s3gate_s3::xml::escape;

/// Request headers never forwarded: hop-by-hop, the client's own
/// authentication (the backend request is signed anew), and what proxies
/// in front of the gateway said (the backend's client is the gateway; a
/// backend that believed them could check a signature against a host the
/// gateway did not sign for). A `match` rather than a list searched name
/// by name: every header of every request goes through it.
fn drops_request_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "connection"
            | "expect"
            | "forwarded"
            | "host"
            // The gateway says which IBM service instance (from the
            // backend's credentials); a client never does.
            | "ibm-service-instance-id"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            // A client's trace context: the gateway's own span is the
            // backend request's parent (a trusted proxy's context is its
            // parent's).
            | "traceparent"
            | "tracestate"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "x-amz-content-sha256"
            | "x-amz-date"
            | "x-amz-security-token"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-proto"
            | "x-real-ip"
    )
}

/// Extra request headers dropped when an aws-chunked body is forwarded decoded.
fn drops_decoded_header(name: &str) -> bool {
    matches!(
        name,
        "x-amz-decoded-content-length" | "x-amz-trailer" | "x-amz-sdk-checksum-algorithm"
    )
}

/// Headers that describe the client's body, dropped when the gateway sends a
/// document of its own instead (its checksums too).
fn drops_replaced_header(name: &str) -> bool {
    matches!(name, "content-encoding" | "content-md5")
        || drops_decoded_header(name)
        || name.starts_with("x-amz-checksum-")
}

/// Copy-source headers: meaningful only to CopyObject and UploadPartCopy,
/// whose source was authorized; dropped from every other request.
fn is_copy_source_header(name: &str) -> bool {
    name.starts_with("x-amz-copy-source")
}

/// Whether a backend response header stays behind: hop-by-hop headers,
/// the backend's request ids and software, and its CORS answer (the
/// gateway answers CORS itself). Every header of every response goes
/// through it: standard names compare by their tag, the others by length
/// and bytes, with no string match on the way.
fn is_backend_only(name: &HeaderName) -> bool {
    static STANDARD: [HeaderName; 7] = [
        http::header::CONNECTION,
        http::header::PROXY_AUTHENTICATE,
        http::header::SERVER,
        http::header::TE,
        http::header::TRAILER,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ];
    static OTHER: [HeaderName; 4] = [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        names::X_AMZ_REQUEST_ID,
        names::X_AMZ_ID_2,
    ];
    STANDARD.contains(name) || OTHER.contains(name) || super::cors::is_cors_header(name)
}

/// What the lean client need not put in a backend response's map: what
/// [`strip_backend_headers`] would drop, except the backend's request id
/// it logs.
pub(crate) fn skipped_at_parse(name: &HeaderName) -> bool {
    is_backend_only(name) && *name != names::X_AMZ_REQUEST_ID
}

/// Drops what [`is_backend_only`] names from a backend response head, and
/// returns the backend's `x-amz-request-id` for the debug log. One scan of
/// the head finds the names present, then only those are removed: removing
/// every name on the list cost a hash and a probe per name on every
/// response, present or not.
pub(super) fn strip_backend_headers(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let mut backend_id = None;
    loop {
        // Up to eight names per scan (`keys` yields each name once); a head
        // with more is scanned again.
        let mut found: [Option<HeaderName>; 8] = Default::default();
        let mut n = 0;
        for name in headers.keys().filter(|n| is_backend_only(n)) {
            found[n] = Some(name.clone());
            n += 1;
            if n == found.len() {
                break;
            }
        }
        for name in found.iter().flatten() {
            let removed = headers.remove(name);
            if *name == names::X_AMZ_REQUEST_ID {
                backend_id = removed;
            }
        }
        if n < found.len() {
            return backend_id;
        }
    }
}

/// Presign parameters (SigV4, then SigV2): they authenticated the client,
/// not us.
const PRESIGN_PARAMS: &[&str] = &[
    "AWSAccessKeyId",
    "Signature",
    "Expires",
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
) -> Result<(Response<ResponseBody>, Slot), Error> {
    let object_key = if req.is_list() {
        None
    } else {
        req.key.as_deref()
    };
    let target = route.target.as_ref().map_err(TargetError::to_error)?;
    let uri = target.uri(object_key, head.uri.query().unwrap_or(""))?;
    let headers = upstream_headers(head, target.host(), &plan, req, source)?;

    let signer = match &route.auth {
        UpstreamAuth::SigV4(signer) => signer,
        UpstreamAuth::Bearer {
            authorization,
            service_instance_id,
        } => {
            // Boxed: its future would otherwise be part of every SigV4
            // backend's request future too (see `pipeline::handle`).
            return Box::pin(send_bearer(
                route,
                head,
                uri,
                headers,
                &plan,
                body,
                authorization,
                service_instance_id.as_ref(),
            ))
            .await;
        }
    };

    let mut upstream = Request::new(body);
    *upstream.method_mut() = head.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    let payload = match &plan.upstream {
        UpstreamPayload::Sha256(hex) => hex.as_str(),
        UpstreamPayload::Replaced { sha256_hex, .. } => sha256_hex.as_str(),
        UpstreamPayload::Unsigned => sigv4::UNSIGNED_PAYLOAD,
        UpstreamPayload::UnsignedTrailer { .. } => sigv4::STREAMING_UNSIGNED_TRAILER,
    };
    let (mut parts, body) = upstream.into_parts();
    signer
        .sign(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query().unwrap_or(""),
            &mut parts.headers,
            payload,
            crate::unix_now(),
        )
        .map_err(|e| match e {
            sigv4::SignError::NonAsciiHeader(_) => {
                Error::S3(S3Error::new(S3ErrorCode::InvalidArgument, e.to_string()))
            }
            sigv4::SignError::Clock => Error::Config(e.to_string()),
        })?;
    let mut upstream = Request::from_parts(parts, body);
    // After signing, so unsigned: S3 checks only the headers a signature
    // names, and a proxy on the way may rewrite trace context.
    trace_context(upstream.headers_mut());

    Ok(route.upstream.send(upstream).await?)
}

/// The `forward` stage's span as the backend request's `traceparent`,
/// while traces are exported.
fn trace_context(headers: &mut HeaderMap) {
    super::spans::inject(headers);
}

/// A request authenticated with a bearer token (IBM COS with an IAM
/// token) instead of a signature. `x-amz-content-sha256` still says what
/// the body is, as it would in a signed request: a streaming body needs it
/// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`), and a digest lets the backend
/// check the bytes. `ibm-service-instance-id` goes on every request when
/// set (IBM needs it to create and list buckets, and ignores it elsewhere).
#[allow(clippy::too_many_arguments)]
async fn send_bearer(
    route: &RouteEntry,
    head: &Parts,
    uri: Uri,
    mut headers: HeaderMap,
    plan: &PayloadPlan,
    body: Body,
    authorization: &HeaderValue,
    service_instance_id: Option<&HeaderValue>,
) -> Result<(Response<ResponseBody>, Slot), Error> {
    let content_sha256 = match &plan.upstream {
        UpstreamPayload::Sha256(hex) => HeaderValue::from_str(hex),
        UpstreamPayload::Replaced { sha256_hex, .. } => HeaderValue::from_str(sha256_hex),
        UpstreamPayload::Unsigned => Ok(HeaderValue::from_static("UNSIGNED-PAYLOAD")),
        UpstreamPayload::UnsignedTrailer { .. } => Ok(HeaderValue::from_static(
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        )),
    }
    .map_err(|_| Error::Config("invalid payload digest".to_owned()))?;
    headers.insert(names::X_AMZ_CONTENT_SHA256, content_sha256);
    headers.insert(http::header::AUTHORIZATION, authorization.clone());
    if let Some(id) = service_instance_id {
        headers.insert(names::IBM_SERVICE_INSTANCE_ID, id.clone());
    }
    let mut upstream = Request::new(body);
    *upstream.method_mut() = head.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = headers;
    trace_context(upstream.headers_mut());
    Ok(route.upstream.send(upstream).await?)
}

/// The backend's response on its way to the client. Nothing of the backend
/// gets through: hop-by-hop headers and the backend's own request ids are
/// dropped, a `Location` is dropped or rewritten, documents that name the
/// backend bucket are rewritten, and error documents are rebuilt from the
/// few fields that are safe to pass on.
pub async fn downstream(
    cx: &Ctx,
    (response, slot): (Response<ResponseBody>, Slot),
    route: &RouteEntry,
    head: &Parts,
    req: &S3Request,
    ex: &super::Exchange,
) -> Result<Response<Body>, Error> {
    let request_id = ex.request_id.as_str();
    let (mut parts, body) = response.into_parts();
    // The gateway answers CORS, and the backend's software and version are
    // nobody's business.
    if let Some(backend_id) = strip_backend_headers(&mut parts.headers) {
        tracing::debug!(request_id, backend_request_id = ?backend_id, "backend answered");
    }
    if parts.headers.contains_key(LOCATION) {
        parts.headers.remove(LOCATION);
        if req.op == Op::CreateBucket && parts.status.is_success() {
            if let Ok(v) = HeaderValue::from_str(&format!("/{}", route.route.bucket)) {
                parts.headers.insert(LOCATION, v);
            }
        }
    }
    let status = parts.status;
    // The slot in the backend's pool is held until the body is done.
    let body = crate::body::incoming_holding(body, slot);
    let head_only = head.method == http::Method::HEAD;
    if !status.is_success() && status != StatusCode::NOT_MODIFIED {
        return Ok(rewrite_error(cx, parts, body, route, req, request_id, head_only).await);
    }
    let response = Response::from_parts(parts, body);
    if !head_only && needs_rewrite(req, route) {
        rewrite_bucket(cx, response, route, head, req, ex.origin.https).await
    } else {
        Ok(response)
    }
}

/// Responses whose XML names the backend's bucket (or, for
/// CompleteMultipartUpload, the backend's endpoint). These are small
/// documents; object bodies are never rewritten.
fn needs_rewrite(req: &S3Request, route: &RouteEntry) -> bool {
    let renamed = route.route.backend_bucket != route.route.bucket;
    match req.op {
        Op::CompleteMultipartUpload => true,
        Op::ListObjects
        | Op::ListObjectsV2
        | Op::ListObjectVersions
        | Op::ListMultipartUploads
        | Op::CreateMultipartUpload
        | Op::ListParts
        | Op::CopyObject
        | Op::UploadPartCopy
        | Op::DeleteObjects => renamed,
        _ => false,
    }
}

/// Largest response document the gateway rewrites.
const MAX_REWRITE_BODY: usize = 64 << 20;

async fn rewrite_bucket(
    cx: &Ctx,
    response: Response<Body>,
    route: &RouteEntry,
    head: &Parts,
    req: &S3Request,
    https: bool,
) -> Result<Response<Body>, Error> {
    let (mut parts, body) = response.into_parts();
    let mut budget = cx.budget.reservation();
    let bytes = crate::body::collect_limited(body, MAX_REWRITE_BODY, &mut budget)
        .await
        .map_err(|e| match e {
            CollectError::OverBudget => Error::slow_down(),
            CollectError::TooLarge => {
                Error::Upstream("backend response document too large to rewrite".into())
            }
            CollectError::Body(e) => Error::Upstream(e),
        })?;
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
            // The scheme the client used: this listener's, or what a
            // trusted proxy in front of it says.
            let scheme = if https { "https" } else { "http" };
            // Addressed as the client addressed the bucket: in the host
            // (virtual-host style) or in the path.
            Some(match req.addressing {
                Addressing::VirtualHost => format!("{scheme}://{host}/{}", encode_key(key)),
                Addressing::Path => format!(
                    "{scheme}://{host}/{}/{}",
                    route.route.bucket,
                    encode_key(key)
                ),
            })
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
    parts.headers.remove(names::CONTENT_MD5);
    Ok(Response::from_parts(parts, crate::body::full(doc)))
}

/// Where a route's backend requests go: the backend URL's scheme and
/// authority and the `Host` they carry, parsed once when the route is
/// filled. Path style sends `scheme://authority/bucket/key`, virtual style
/// `scheme://bucket.authority/key`.
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    style: AddressingStyle,
    /// `/bucket` in path style; empty in virtual style.
    prefix: String,
}

/// Why a route has no [`Target`]: reported when a request would use it, as
/// the request's error.
pub enum TargetError {
    /// The backend endpoint names no scheme (a configuration error).
    NoScheme,
    /// The endpoint and bucket make no valid URL authority.
    InvalidUri(String),
}

impl Target {
    pub fn new(endpoint: &str, style: AddressingStyle, bucket: &str) -> Result<Self, TargetError> {
        let (scheme, authority) = endpoint.split_once("://").ok_or(TargetError::NoScheme)?;
        let invalid = |e: &dyn std::fmt::Display| TargetError::InvalidUri(e.to_string());
        let scheme = Scheme::try_from(scheme).map_err(|e| invalid(&e))?;
        let (authority, prefix) = match style {
            AddressingStyle::Path => (authority.to_owned(), format!("/{bucket}")),
            AddressingStyle::Virtual => (format!("{bucket}.{authority}"), String::new()),
        };
        let host = HeaderValue::from_str(&authority).map_err(|e| invalid(&e))?;
        let authority = Authority::try_from(authority).map_err(|e| invalid(&e))?;
        Ok(Self {
            scheme,
            authority,
            host,
            style,
            prefix,
        })
    }

    /// The `Host` backend requests carry.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The backend URL of a request. Keys and query parameters are
    /// re-encoded strictly, so the URL is exactly what the signer signs;
    /// presign parameters are dropped.
    fn uri(&self, object_key: Option<&str>, query: &str) -> Result<Uri, Error> {
        let mut path = String::with_capacity(
            self.prefix.len() + 2 + object_key.map_or(0, |k| k.len() * 3) + query.len(),
        );
        path.push_str(&self.prefix);
        match (self.style, object_key) {
            (_, Some(k)) => {
                path.push('/');
                path.extend(encode_key(k));
            }
            (AddressingStyle::Virtual, None) => path.push('/'),
            (AddressingStyle::Path, None) => {}
        }
        append_query(&mut path, query)?;
        let path = PathAndQuery::try_from(path).map_err(|e| invalid_upstream_uri(&e))?;
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts).map_err(|e| invalid_upstream_uri(&e))
    }
}

impl TargetError {
    /// The error a request routed here gets.
    fn to_error(&self) -> Error {
        match self {
            Self::NoScheme => Error::Config("backend endpoint has no scheme".to_owned()),
            Self::InvalidUri(e) => invalid_upstream_uri(e),
        }
    }
}

/// The error of a request whose backend URL cannot be made.
fn invalid_upstream_uri(e: &dyn std::fmt::Display) -> Error {
    Error::S3(S3Error::new(
        S3ErrorCode::InvalidURI,
        format!("invalid upstream request: {e}"),
    ))
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

/// A value with tabs is sent with each run of blanks as one space and no
/// blanks at either end: how SigV4 canonicalizes header values is read
/// differently by different signers (aws-sigv4 collapses only spaces,
/// others all whitespace), and the value in canonical form means the same
/// to all of them.
fn normalize_whitespace(value: &HeaderValue) -> HeaderValue {
    let bytes = value.as_bytes();
    if !bytes.contains(&b'\t') {
        return value.clone();
    }
    let mut out = Vec::with_capacity(bytes.len());
    for word in bytes
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| value.clone())
}

fn upstream_headers(
    head: &Parts,
    host: &HeaderValue,
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
    let replaced = matches!(plan.upstream, UpstreamPayload::Replaced { .. });
    let copies = matches!(req.op, Op::CopyObject | Op::UploadPartCopy);
    let mut out = HeaderMap::with_capacity(head.headers.len() + 4);
    for (name, value) in &head.headers {
        let n = name.as_str();
        if drops_request_header(n)
            || (decoded && drops_decoded_header(n))
            || (replaced && drops_replaced_header(n))
            || (!copies && is_copy_source_header(n))
            || super::cors::is_request_header(n)
            || connection_listed.iter().any(|c| c.eq_ignore_ascii_case(n))
        {
            continue;
        }
        out.append(name.clone(), normalize_whitespace(value));
    }
    if let UpstreamPayload::Replaced {
        content_md5, len, ..
    } = &plan.upstream
    {
        out.insert(CONTENT_LENGTH, HeaderValue::from(*len));
        if let Ok(v) = HeaderValue::from_str(content_md5) {
            out.insert(names::CONTENT_MD5, v);
        }
    }
    out.insert(HOST, host.clone());
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
        out.insert(names::X_AMZ_COPY_SOURCE, value);
    }
    Ok(out)
}

/// Largest backend error document read; a larger one is replaced unread.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Rebuilds a backend error response. Only the error code passes as is; the
/// message passes only if it names nothing of the backend (its bucket, its
/// endpoint, its access key), else S3's generic text for the code is used.
/// Everything else a backend puts in an error (`HostId`, `Endpoint`,
/// `StringToSign`, `AWSAccessKeyId`, argument values…) is dropped, and
/// `Resource`, `BucketName` and `Key` are written from the client's request.
async fn rewrite_error(
    cx: &Ctx,
    mut parts: http::response::Parts,
    body: Body,
    route: &RouteEntry,
    req: &S3Request,
    request_id: &str,
    head_only: bool,
) -> Response<Body> {
    for name in [
        "content-length",
        "content-encoding",
        "content-md5",
        "etag",
        "content-type",
    ] {
        parts.headers.remove(name);
    }
    let (code, message) = if head_only {
        (None, None)
    } else {
        let mut budget = cx.budget.reservation();
        match crate::body::collect_limited(body, MAX_ERROR_BODY, &mut budget).await {
            Ok(doc) => backend_error_fields(&doc),
            Err(_) => (None, None),
        }
    };
    let code = code.unwrap_or_else(|| code_for_status(parts.status).to_owned());
    let message = message
        .filter(|m| !names_backend(m, route))
        .unwrap_or_else(|| generic_message(&code).to_owned());
    let bucket = &route.route.bucket;
    let mut xml = String::with_capacity(256);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>");
    escape(&mut xml, &code);
    xml.push_str("</Code><Message>");
    escape(&mut xml, &message);
    xml.push_str("</Message>");
    match req.key.as_deref().filter(|_| !req.is_list()) {
        Some(key) => {
            xml.push_str("<Key>");
            escape(&mut xml, key);
            xml.push_str("</Key><BucketName>");
            escape(&mut xml, bucket);
            xml.push_str("</BucketName><Resource>/");
            escape(&mut xml, bucket);
            xml.push('/');
            escape(&mut xml, key);
        }
        None => {
            xml.push_str("<BucketName>");
            escape(&mut xml, bucket);
            xml.push_str("</BucketName><Resource>/");
            escape(&mut xml, bucket);
        }
    }
    xml.push_str("</Resource><RequestId>");
    escape(&mut xml, request_id);
    xml.push_str("</RequestId></Error>");
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if head_only {
        return Response::from_parts(parts, crate::body::empty());
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(xml.len()));
    Response::from_parts(parts, crate::body::full(xml))
}

/// `<Code>` and `<Message>` of a backend `<Error>` document, if it is one.
fn backend_error_fields(doc: &[u8]) -> (Option<String>, Option<String>) {
    use quick_xml::events::Event;
    let Ok(text) = std::str::from_utf8(doc) else {
        return (None, None);
    };
    let mut reader = quick_xml::Reader::from_str(text);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut code, mut message) = (None::<String>, None::<String>);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => path.push(e.local_name().as_ref().to_vec()),
            Ok(Event::End(_)) => {
                path.pop();
            }
            Ok(Event::Text(t)) if path.len() == 2 && path[0] == b"Error" => {
                let Ok(value) = t.unescape() else { break };
                let slot = match path[1].as_slice() {
                    b"Code" => &mut code,
                    b"Message" => &mut message,
                    _ => continue,
                };
                slot.get_or_insert_with(String::new).push_str(&value);
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    // A code is an identifier; anything else is not passed on.
    let code = code.filter(|c| {
        (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
    });
    let message = message.filter(|m| m.len() <= 1024);
    (code, message)
}

/// Whether `text` names the backend: its bucket (when renamed), its endpoint
/// host, or its access key.
fn names_backend(text: &str, route: &RouteEntry) -> bool {
    let lower = text.to_ascii_lowercase();
    let backend = &route.route.backend;
    let host = backend
        .endpoint
        .split_once("://")
        .map_or(backend.endpoint.as_str(), |(_, a)| a)
        .to_ascii_lowercase();
    let host_only = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    let bucket = route.route.backend_bucket.to_ascii_lowercase();
    (route.route.backend_bucket != route.route.bucket && lower.contains(&bucket))
        || lower.contains(&host)
        || (!host_only.is_empty() && lower.contains(host_only))
        || (!route.route.credentials.public_id().is_empty()
            && text.contains(route.route.credentials.public_id()))
}

fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        301 | 307 => "PermanentRedirect",
        304 => "NotModified",
        400 => "InvalidRequest",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        405 => "MethodNotAllowed",
        409 => "OperationAborted",
        411 => "MissingContentLength",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        501 => "NotImplemented",
        503 => "ServiceUnavailable",
        s if s >= 500 => "InternalError",
        _ => "InvalidRequest",
    }
}

/// S3's own wording for the common codes; a neutral sentence for the rest.
fn generic_message(code: &str) -> &'static str {
    match code {
        "NoSuchKey" => "The specified key does not exist.",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchUpload" => "The specified multipart upload does not exist. The upload ID might be invalid, or the multipart upload might have been aborted or completed.",
        "AccessDenied" => "Access Denied",
        "PreconditionFailed" => "At least one of the pre-conditions you specified did not hold",
        "InvalidRange" => "The requested range is not satisfiable",
        "BucketNotEmpty" => "The bucket you tried to delete is not empty",
        "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" => "The requested bucket name is not available.",
        "SlowDown" => "Please reduce your request rate.",
        "NotImplemented" => "A header you provided implies functionality that is not implemented.",
        "InternalError" => "We encountered an internal error. Please try again.",
        _ => "The storage backend refused the request.",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(style: AddressingStyle, key: Option<&str>, query: &str, want: (&str, &str)) {
        let Ok(target) = Target::new("http://localhost:9000", style, "data-prod") else {
            panic!("no target");
        };
        let uri = target.uri(key, query).unwrap();
        assert_eq!(
            (uri.to_string().as_str(), target.host().to_str().unwrap()),
            want
        );
    }

    #[test]
    fn backend_only_response_headers_are_dropped_in_one_scan() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("etag", "\"e\""),
            ("content-length", "4"),
            ("x-amz-request-id", "BACKEND-ID"),
            ("x-amz-id-2", "host-id"),
            ("server", "AmazonS3"),
            ("access-control-allow-origin", "*"),
            ("x-amz-version-id", "v1"),
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        for name in [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let name = HeaderName::from_static(name);
            h.append(name.clone(), HeaderValue::from_static("a"));
            h.append(name.clone(), HeaderValue::from_static("b"));
        }
        let id = strip_backend_headers(&mut h);
        assert_eq!(id.as_ref().map(|v| v.as_bytes()), Some(&b"BACKEND-ID"[..]));
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "etag", "x-amz-version-id"]);
        // More than one scan's worth: every CORS header goes.
        for i in 0..20 {
            h.insert(
                HeaderName::from_bytes(format!("access-control-x-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert_eq!(strip_backend_headers(&mut h), None);
        assert_eq!(h.len(), 3);
        // Nothing to drop: nothing changes, and no id.
        assert_eq!(strip_backend_headers(&mut h), None);
        assert_eq!(h.len(), 3);
        // The lean client's part: the same names however the backend
        // spells them, less the request id the debug log wants.
        for name in [
            "Server",
            "KEEP-ALIVE",
            "X-Amz-Id-2",
            "Access-Control-Allow-Origin",
        ] {
            assert!(
                skipped_at_parse(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
        for name in [
            "X-Amz-Request-Id",
            "Content-Length",
            "ETag",
            "x-amz-version-id",
            "keep",
        ] {
            assert!(
                !skipped_at_parse(&HeaderName::from_bytes(name.as_bytes()).unwrap()),
                "{name}"
            );
        }
    }

    #[test]
    fn dropped_request_headers_are_the_listed_ones() {
        for name in [
            "authorization",
            "connection",
            "expect",
            "forwarded",
            "host",
            "ibm-service-instance-id",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "traceparent",
            "tracestate",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-security-token",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-proto",
            "x-real-ip",
        ] {
            assert!(drops_request_header(name), "{name} must not be forwarded");
        }
        for name in [
            "range",
            "if-match",
            "content-type",
            "content-length",
            "x-amz-meta-a",
            "x-amz-server-side-encryption",
            "x-amz-dat",
            "hos",
            "authorizations",
        ] {
            assert!(!drops_request_header(name), "{name} is forwarded");
        }
        for name in [
            "x-amz-decoded-content-length",
            "x-amz-trailer",
            "x-amz-sdk-checksum-algorithm",
        ] {
            assert!(drops_decoded_header(name) && drops_replaced_header(name));
        }
        for name in ["content-encoding", "content-md5", "x-amz-checksum-crc32"] {
            assert!(drops_replaced_header(name) && !drops_decoded_header(name));
        }
        assert!(!drops_replaced_header("content-type"));
    }

    #[test]
    fn a_target_without_scheme_or_with_a_bad_authority_fails_its_requests() {
        assert!(matches!(
            Target::new("localhost:9000", AddressingStyle::Path, "b"),
            Err(TargetError::NoScheme)
        ));
        assert!(matches!(
            Target::new("http://localhost:9000", AddressingStyle::Virtual, "b c"),
            Err(TargetError::InvalidUri(_))
        ));
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
