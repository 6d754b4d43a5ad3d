//! Request classification: which S3 operation a request is, which bucket and
//! key it touches, and which IAM-style action authorizes it.
//!
//! Classification is deliberately strict: a query parameter that names a
//! sub-resource we do not know is refused with `NotImplemented` rather than
//! treated as a plain GET/PUT, because the backend would perform an operation
//! the gateway never authorized.

use std::borrow::Cow;

use http::{HeaderMap, Method, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{S3Error, S3ErrorCode};

/// Characters encoded in a path or query component: everything but the
/// RFC 3986 unreserved set.
pub const ENCODE_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Like [`ENCODE_COMPONENT`] but keeps '/', for object keys in paths.
pub const ENCODE_PATH: &AsciiSet = &ENCODE_COMPONENT.remove(b'/');

/// How the client addressed the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    Path,
    VirtualHost,
}

/// One S3 operation, as far as the gateway needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ListBuckets,
    // bucket level
    ListObjects,
    ListObjectsV2,
    ListObjectVersions,
    ListMultipartUploads,
    HeadBucket,
    CreateBucket,
    DeleteBucket,
    DeleteObjects,
    /// A bucket configuration operation (`?versioning`, `?policy`, …), named
    /// as in the S3 API reference (`GetBucketVersioning`, …).
    BucketSubresource(&'static str),
    // object level
    GetObject,
    HeadObject,
    PutObject,
    CopyObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    /// An object sub-resource operation (`?tagging`, `?acl`, …), named as in
    /// the S3 API reference (`GetObjectTagging`, …).
    ObjectSubresource(&'static str),
    /// A browser's CORS preflight (`OPTIONS`), on any path of a bucket.
    /// [`classify`] never returns it: the gateway answers preflights from
    /// the bucket's CORS rules, unauthenticated, and authorizes nothing.
    Preflight,
}

/// A classified request. Borrowed nothing: it outlives the head it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub op: Op,
    /// The IAM action that authorizes `op` (e.g. `s3:GetObject`).
    pub action: &'static str,
    /// Further IAM actions the same request needs on the same resource: a
    /// request naming a `versionId` (`s3:GetObjectVersion`, …), or headers
    /// that do more than the operation (`x-amz-tagging` →
    /// `s3:PutObjectTagging`, ACL headers, object-lock headers). Each one is
    /// authorized; a deny of any of them refuses the request.
    pub also: Vec<&'static str>,
    pub bucket: Option<String>,
    /// The decoded object key; for list operations, the decoded `prefix`.
    pub key: Option<String>,
    pub addressing: Addressing,
    /// For CopyObject / UploadPartCopy: the decoded source bucket and key.
    pub copy_source: Option<CopySource>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    /// The raw `?versionId=…` suffix, if any, kept verbatim.
    pub version_id: Option<String>,
}

impl S3Request {
    /// [`check_key_segments`] of every key the request names: its key (a
    /// listing's prefix) and a copy's source key.
    pub fn check_key_segments(&self) -> Result<(), S3Error> {
        if let Some(key) = &self.key {
            check_key_segments(key)?;
        }
        if let Some(src) = &self.copy_source {
            check_key_segments(&src.key)?;
        }
        Ok(())
    }
}

impl Op {
    /// The operation's name as S3's API reference spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ListBuckets => "ListBuckets",
            Op::ListObjects => "ListObjects",
            Op::ListObjectsV2 => "ListObjectsV2",
            Op::ListObjectVersions => "ListObjectVersions",
            Op::ListMultipartUploads => "ListMultipartUploads",
            Op::HeadBucket => "HeadBucket",
            Op::CreateBucket => "CreateBucket",
            Op::DeleteBucket => "DeleteBucket",
            Op::DeleteObjects => "DeleteObjects",
            Op::BucketSubresource(name) | Op::ObjectSubresource(name) => name,
            Op::Preflight => "PreflightRequest",
            Op::GetObject => "GetObject",
            Op::HeadObject => "HeadObject",
            Op::PutObject => "PutObject",
            Op::CopyObject => "CopyObject",
            Op::DeleteObject => "DeleteObject",
            Op::CreateMultipartUpload => "CreateMultipartUpload",
            Op::UploadPart => "UploadPart",
            Op::UploadPartCopy => "UploadPartCopy",
            Op::CompleteMultipartUpload => "CompleteMultipartUpload",
            Op::AbortMultipartUpload => "AbortMultipartUpload",
            Op::ListParts => "ListParts",
        }
    }
}

impl S3Request {
    /// True for operations whose resource is the bucket rather than an object.
    pub fn is_list(&self) -> bool {
        matches!(
            self.op,
            Op::ListObjects | Op::ListObjectsV2 | Op::ListObjectVersions | Op::ListMultipartUploads
        )
    }
}

/// Where virtual-host-style buckets live: `<bucket>.<base domain>`.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// Lowercase base domains without port, e.g. `s3.example.com`.
    pub base_domains: Vec<String>,
}

/// Classifies a request. `host` is the Host header (or authority) as sent.
pub fn classify(
    hosts: &HostConfig,
    method: &Method,
    uri: &Uri,
    host: Option<&str>,
    headers: &HeaderMap,
) -> Result<S3Request, S3Error> {
    let (bucket, raw_key, addressing) = split_target(hosts, uri, host)?;
    let key = if raw_key.is_empty() {
        None
    } else {
        Some(decode(raw_key)?.into_owned())
    };
    if let Some(b) = &bucket {
        validate_bucket(b)?;
    }
    let query = Query::parse(uri.query().unwrap_or(""))?;

    let Some(bucket) = bucket else {
        let service_level = || {
            S3Error::new(
                S3ErrorCode::NotImplemented,
                "this service-level operation is not supported",
            )
        };
        return match *method {
            Method::GET | Method::HEAD => {
                if !query.subresources(&[])?.is_empty() || query.has("versionId") {
                    return Err(service_level());
                }
                Ok(S3Request {
                    op: Op::ListBuckets,
                    action: "s3:ListAllMyBuckets",
                    also: Vec::new(),
                    bucket: None,
                    key: None,
                    addressing,
                    copy_source: None,
                })
            }
            _ => Err(service_level()),
        };
    };

    let copy_source = match headers.get(crate::names::X_AMZ_COPY_SOURCE) {
        Some(v) => Some(parse_copy_source(
            v.to_str().map_err(|_| bad_copy_source())?,
        )?),
        None => None,
    };

    let (op, action, also, key) = match key {
        None => {
            let (op, action, also) = bucket_op(method, &query, headers)?;
            let key = match op {
                Op::ListObjects
                | Op::ListObjectsV2
                | Op::ListObjectVersions
                | Op::ListMultipartUploads => {
                    Some(query.get("prefix").unwrap_or_default().into_owned())
                }
                _ => None,
            };
            (op, action, also, key)
        }
        Some(key) => {
            let (op, action, also) = object_op(method, &query, headers, copy_source.is_some())?;
            (op, action, also, Some(key))
        }
    };
    let copy_source = match op {
        Op::CopyObject | Op::UploadPartCopy => copy_source,
        _ => None,
    };
    Ok(S3Request {
        op,
        action,
        also,
        bucket: Some(bucket),
        key,
        addressing,
        copy_source,
    })
}

fn bad_copy_source() -> S3Error {
    S3Error::new(
        S3ErrorCode::InvalidArgument,
        "invalid x-amz-copy-source header",
    )
}

/// Parses `x-amz-copy-source`: `[/]bucket/key[?versionId=…]`, URL-encoded.
pub fn parse_copy_source(value: &str) -> Result<CopySource, S3Error> {
    let value = value.strip_prefix('/').unwrap_or(value);
    let (path, version_id) = match value.split_once('?') {
        Some((p, q)) => {
            let v = q.strip_prefix("versionId=").ok_or_else(bad_copy_source)?;
            // Passed on verbatim: it must be one value, not more query.
            let plain = |b: u8| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'.' | b'_' | b'-' | b'%' | b'+' | b'=' | b'~')
            };
            if v.is_empty() || !v.bytes().all(plain) {
                return Err(bad_copy_source());
            }
            (p, Some(v.to_owned()))
        }
        None => (value, None),
    };
    let (bucket, key) = path.split_once('/').ok_or_else(bad_copy_source)?;
    let bucket = decode(bucket)?.into_owned();
    let key = decode(key)?.into_owned();
    if bucket.is_empty() || key.is_empty() {
        return Err(bad_copy_source());
    }
    validate_bucket(&bucket)?;
    Ok(CopySource {
        bucket,
        key,
        version_id,
    })
}

/// The bucket a request addresses (`None`: the service itself), whatever
/// its method and query: what a CORS preflight (`OPTIONS`, which S3 answers
/// for any path of a bucket) needs to know, and all it needs.
pub fn bucket_of(
    hosts: &HostConfig,
    uri: &Uri,
    host: Option<&str>,
) -> Result<Option<String>, S3Error> {
    let (bucket, _, _) = split_target(hosts, uri, host)?;
    if let Some(b) = &bucket {
        validate_bucket(b)?;
    }
    Ok(bucket)
}

/// The decoded bucket, the raw key part of the path, and how the bucket was
/// addressed.
fn split_target<'u>(
    hosts: &HostConfig,
    uri: &'u Uri,
    host: Option<&str>,
) -> Result<(Option<String>, &'u str, Addressing), S3Error> {
    let raw_path = uri.path();
    if !raw_path.starts_with('/') {
        return Err(S3Error::new(
            S3ErrorCode::InvalidURI,
            "path must start with '/'",
        ));
    }
    Ok(match host.and_then(|h| vhost_bucket(hosts, h)) {
        Some(bucket) => (
            Some(bucket.to_owned()),
            &raw_path[1..],
            Addressing::VirtualHost,
        ),
        None => {
            let rest = &raw_path[1..];
            match rest.split_once('/') {
                Some((b, k)) => (Some(decode(b)?.into_owned()), k, Addressing::Path),
                None if rest.is_empty() => (None, "", Addressing::Path),
                None => (Some(decode(rest)?.into_owned()), "", Addressing::Path),
            }
        }
    })
}

/// The bucket a Host header names, virtual-host style (`<bucket>.<base
/// domain>[:port]`), if it does.
pub fn virtual_host_bucket<'h>(hosts: &HostConfig, host: &'h str) -> Option<&'h str> {
    vhost_bucket(hosts, host)
}

pub(crate) fn vhost_bucket<'h>(hosts: &HostConfig, host: &'h str) -> Option<&'h str> {
    let name = strip_port(host);
    hosts.base_domains.iter().find_map(|base| {
        let prefix = name.len().checked_sub(base.len() + 1)?;
        let (bucket, rest) = name.split_at_checked(prefix)?;
        (rest.len() == base.len() + 1
            && rest.as_bytes().first() == Some(&b'.')
            && rest[1..].eq_ignore_ascii_case(base)
            && !bucket.is_empty())
        .then_some(bucket)
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // IPv6 literal: never a virtual-host bucket
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn validate_bucket(bucket: &str) -> Result<(), S3Error> {
    let ok = (1..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(S3Error::new(
            S3ErrorCode::InvalidBucketName,
            "the specified bucket is not valid",
        ))
    }
}

/// The key-segment guard: refuses keys (and list prefixes) with `.` or `..`
/// segments or a leading `/`. S3 itself treats keys as opaque, but many
/// backends (file-system stores, some gateways) resolve them as paths:
/// `reports/../secret/x` would then escape a rule on `reports/*`, and
/// `./secret/x` a deny on `secret/*`. Classification accepts such keys;
/// the data plane applies this guard to every key a request names
/// ([`S3Request::check_key_segments`], DeleteObjects keys) unless the
/// request's backend stores keys literally (AWS S3, IBM COS).
pub fn check_key_segments(key: &str) -> Result<(), S3Error> {
    let bad = key.starts_with('/') || key.split('/').any(|seg| seg == "." || seg == "..");
    if bad {
        Err(S3Error::new(
            S3ErrorCode::InvalidArgument,
            "object keys with '.' or '..' segments or a leading '/' are not accepted",
        ))
    } else {
        Ok(())
    }
}

/// Percent-decodes a path component; keys must be valid UTF-8.
pub fn decode(raw: &str) -> Result<Cow<'_, str>, S3Error> {
    percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| S3Error::new(S3ErrorCode::InvalidURI, "path is not valid UTF-8"))
}

/// Encodes an object key for use in a request path.
pub fn encode_key(key: &str) -> percent_encoding::PercentEncode<'_> {
    utf8_percent_encode(key, ENCODE_PATH)
}

/// Encodes a query name or value.
pub fn encode_component(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, ENCODE_COMPONENT)
}

// === Query ===

/// The query string split into `(name, value)` pairs, names percent-decoded.
///
/// A name that appears twice is refused when parsing: S3 would honour one of
/// the copies and a backend another, so the gateway could authorize a
/// different request from the one the backend runs.
pub struct Query<'a> {
    /// Decoded name and raw value; `None` when the parameter has no `=`.
    pairs: Vec<(Cow<'a, str>, Option<&'a str>)>,
}

/// Most query parameters one request may carry. Real S3 requests carry a
/// handful; the bound keeps the duplicate check cheap.
const MAX_QUERY_PARAMS: usize = 64;

/// Query parameters that select a sub-resource, i.e. change which operation a
/// method performs. Anything in neither this list nor [`PLAIN_PARAMS`] is refused.
const SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "location",
    "logging",
    "metadata-table",
    "metadataTable",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "partNumber",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "select-type",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versioning",
    "versions",
    "website",
];

/// Parameters that only modify an operation.
const PLAIN_PARAMS: &[&str] = &[
    "continuation-token",
    "delimiter",
    "encoding-type",
    "fetch-owner",
    "id",
    "key-marker",
    "list-type",
    "marker",
    "max-keys",
    "max-parts",
    "max-uploads",
    "part-number-marker",
    "prefix",
    "start-after",
    "upload-id-marker",
    "version-id-marker",
    "versionId",
    "allow-unordered",
];

impl<'a> Query<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, S3Error> {
        let mut pairs: Vec<(Cow<'a, str>, Option<&'a str>)> = Vec::new();
        for p in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            };
            let name = percent_decode_str(name).decode_utf8().map_err(|_| {
                S3Error::new(
                    S3ErrorCode::InvalidURI,
                    "query parameter names must be valid UTF-8",
                )
            })?;
            if pairs.len() == MAX_QUERY_PARAMS {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidArgument,
                    "too many query parameters",
                ));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidArgument,
                    format!(
                        "query parameter '{}' appears more than once",
                        truncate(&name)
                    ),
                ));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The `(decoded name, raw value)` pairs in request order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, Option<&'a str>)> + '_ {
        self.pairs.iter().map(|(n, v)| (n.as_ref(), *v))
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    /// The decoded value of the parameter called `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| percent_decode_str(v.unwrap_or_default()).decode_utf8_lossy())
    }

    /// The first parameter that is neither a known sub-resource, a known plain
    /// parameter, a presign parameter (SigV4 or SigV2), a `response-*`
    /// override nor an `x-*` parameter (which S3 ignores).
    fn unknown_param(&self) -> Option<&str> {
        self.pairs.iter().map(|(n, _)| n.as_ref()).find(|n| {
            !(SUBRESOURCES.contains(n)
                || PLAIN_PARAMS.contains(n)
                || n.starts_with("X-Amz-")
                || crate::sigv2::QUERY_PARAMS.contains(n)
                || n.starts_with("response-")
                || n.starts_with("x-"))
        })
    }

    /// The sub-resources of this request, in order, without those in `ignore`.
    /// Unknown parameters are refused here.
    fn subresources(&self, ignore: &[&str]) -> Result<Vec<&'static str>, S3Error> {
        if let Some(unknown) = self.unknown_param() {
            return Err(S3Error::new(
                S3ErrorCode::NotImplemented,
                format!("query parameter '{}' is not supported", truncate(unknown)),
            ));
        }
        Ok(self
            .pairs
            .iter()
            .filter(|(n, _)| !ignore.contains(&n.as_ref()))
            .filter_map(|(n, _)| SUBRESOURCES.iter().find(|s| **s == n.as_ref()).copied())
            .collect())
    }

    /// The one sub-resource of this request, if any. Two sub-resources in one
    /// request are no S3 operation: S3 would pick one and we could authorize
    /// the other.
    fn subresource(&self, ignore: &[&str]) -> Result<Option<&'static str>, S3Error> {
        let subs = self.subresources(ignore)?;
        match subs.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            _ => Err(not_implemented("a request with several sub-resources")),
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn not_implemented(what: &str) -> S3Error {
    S3Error::new(
        S3ErrorCode::NotImplemented,
        format!("{what} is not supported by this gateway"),
    )
}

fn method_not_allowed() -> S3Error {
    S3Error::new(
        S3ErrorCode::MethodNotAllowed,
        "the specified method is not allowed against this resource",
    )
}

fn version_not_supported() -> S3Error {
    S3Error::new(
        S3ErrorCode::InvalidArgument,
        "versionId is not valid for this operation",
    )
}

// === The operation tables ===
//
// Every request maps through one of these tables to the S3 operation the
// backend will run and the IAM action that authorizes it. A (method,
// sub-resource) pair outside them is refused before any backend sees it:
// backends that do not know a sub-resource fall back to the plain operation
// (a listing, CreateBucket, DeleteBucket), which was never authorized.

/// The methods S3 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

impl M {
    fn of(method: &Method) -> Result<Self, S3Error> {
        Ok(match *method {
            Method::GET => M::Get,
            Method::HEAD => M::Head,
            Method::PUT => M::Put,
            Method::POST => M::Post,
            Method::DELETE => M::Delete,
            _ => return Err(method_not_allowed()),
        })
    }
}

/// Bucket configuration sub-resources: (method, sub-resource, S3 operation,
/// IAM action). Names as in the S3 API reference and the IAM service
/// authorization reference.
#[rustfmt::skip]
const BUCKET_TABLE: &[(M, &str, &str, &str)] = &[
    (M::Get, "location", "GetBucketLocation", "s3:GetBucketLocation"),
    (M::Get, "accelerate", "GetBucketAccelerateConfiguration", "s3:GetAccelerateConfiguration"),
    (M::Put, "accelerate", "PutBucketAccelerateConfiguration", "s3:PutAccelerateConfiguration"),
    (M::Get, "acl", "GetBucketAcl", "s3:GetBucketAcl"),
    (M::Put, "acl", "PutBucketAcl", "s3:PutBucketAcl"),
    (M::Get, "analytics", "GetBucketAnalyticsConfiguration", "s3:GetAnalyticsConfiguration"),
    (M::Put, "analytics", "PutBucketAnalyticsConfiguration", "s3:PutAnalyticsConfiguration"),
    (M::Delete, "analytics", "DeleteBucketAnalyticsConfiguration", "s3:PutAnalyticsConfiguration"),
    (M::Get, "cors", "GetBucketCors", "s3:GetBucketCORS"),
    (M::Put, "cors", "PutBucketCors", "s3:PutBucketCORS"),
    (M::Delete, "cors", "DeleteBucketCors", "s3:PutBucketCORS"),
    (M::Get, "encryption", "GetBucketEncryption", "s3:GetEncryptionConfiguration"),
    (M::Put, "encryption", "PutBucketEncryption", "s3:PutEncryptionConfiguration"),
    (M::Delete, "encryption", "DeleteBucketEncryption", "s3:PutEncryptionConfiguration"),
    (M::Get, "intelligent-tiering", "GetBucketIntelligentTieringConfiguration", "s3:GetIntelligentTieringConfiguration"),
    (M::Put, "intelligent-tiering", "PutBucketIntelligentTieringConfiguration", "s3:PutIntelligentTieringConfiguration"),
    (M::Delete, "intelligent-tiering", "DeleteBucketIntelligentTieringConfiguration", "s3:PutIntelligentTieringConfiguration"),
    (M::Get, "inventory", "GetBucketInventoryConfiguration", "s3:GetInventoryConfiguration"),
    (M::Put, "inventory", "PutBucketInventoryConfiguration", "s3:PutInventoryConfiguration"),
    (M::Delete, "inventory", "DeleteBucketInventoryConfiguration", "s3:PutInventoryConfiguration"),
    (M::Get, "lifecycle", "GetBucketLifecycleConfiguration", "s3:GetLifecycleConfiguration"),
    (M::Put, "lifecycle", "PutBucketLifecycleConfiguration", "s3:PutLifecycleConfiguration"),
    (M::Delete, "lifecycle", "DeleteBucketLifecycle", "s3:PutLifecycleConfiguration"),
    (M::Get, "logging", "GetBucketLogging", "s3:GetBucketLogging"),
    (M::Put, "logging", "PutBucketLogging", "s3:PutBucketLogging"),
    (M::Get, "metrics", "GetBucketMetricsConfiguration", "s3:GetMetricsConfiguration"),
    (M::Put, "metrics", "PutBucketMetricsConfiguration", "s3:PutMetricsConfiguration"),
    (M::Delete, "metrics", "DeleteBucketMetricsConfiguration", "s3:PutMetricsConfiguration"),
    (M::Get, "notification", "GetBucketNotificationConfiguration", "s3:GetBucketNotification"),
    (M::Put, "notification", "PutBucketNotificationConfiguration", "s3:PutBucketNotification"),
    (M::Get, "object-lock", "GetObjectLockConfiguration", "s3:GetBucketObjectLockConfiguration"),
    (M::Put, "object-lock", "PutObjectLockConfiguration", "s3:PutBucketObjectLockConfiguration"),
    (M::Get, "ownershipControls", "GetBucketOwnershipControls", "s3:GetBucketOwnershipControls"),
    (M::Put, "ownershipControls", "PutBucketOwnershipControls", "s3:PutBucketOwnershipControls"),
    (M::Delete, "ownershipControls", "DeleteBucketOwnershipControls", "s3:PutBucketOwnershipControls"),
    (M::Get, "policy", "GetBucketPolicy", "s3:GetBucketPolicy"),
    (M::Put, "policy", "PutBucketPolicy", "s3:PutBucketPolicy"),
    (M::Delete, "policy", "DeleteBucketPolicy", "s3:DeleteBucketPolicy"),
    (M::Get, "policyStatus", "GetBucketPolicyStatus", "s3:GetBucketPolicyStatus"),
    (M::Get, "publicAccessBlock", "GetPublicAccessBlock", "s3:GetBucketPublicAccessBlock"),
    (M::Put, "publicAccessBlock", "PutPublicAccessBlock", "s3:PutBucketPublicAccessBlock"),
    (M::Delete, "publicAccessBlock", "DeletePublicAccessBlock", "s3:PutBucketPublicAccessBlock"),
    (M::Get, "replication", "GetBucketReplication", "s3:GetReplicationConfiguration"),
    (M::Put, "replication", "PutBucketReplication", "s3:PutReplicationConfiguration"),
    (M::Delete, "replication", "DeleteBucketReplication", "s3:PutReplicationConfiguration"),
    (M::Get, "requestPayment", "GetBucketRequestPayment", "s3:GetBucketRequestPayment"),
    (M::Put, "requestPayment", "PutBucketRequestPayment", "s3:PutBucketRequestPayment"),
    (M::Get, "tagging", "GetBucketTagging", "s3:GetBucketTagging"),
    (M::Put, "tagging", "PutBucketTagging", "s3:PutBucketTagging"),
    (M::Delete, "tagging", "DeleteBucketTagging", "s3:PutBucketTagging"),
    (M::Get, "versioning", "GetBucketVersioning", "s3:GetBucketVersioning"),
    (M::Put, "versioning", "PutBucketVersioning", "s3:PutBucketVersioning"),
    (M::Get, "website", "GetBucketWebsite", "s3:GetBucketWebsite"),
    (M::Put, "website", "PutBucketWebsite", "s3:PutBucketWebsite"),
    (M::Delete, "website", "DeleteBucketWebsite", "s3:DeleteBucketWebsite"),
];

/// Object sub-resources: (method, sub-resource, S3 operation, IAM action,
/// the IAM action a request naming a `versionId` needs as well — `""` where
/// a versionId needs nothing more, `None` where it is not valid).
#[allow(clippy::type_complexity)]
#[rustfmt::skip]
const OBJECT_TABLE: &[(M, &str, &str, &str, Option<&str>)] = &[
    (M::Get, "tagging", "GetObjectTagging", "s3:GetObjectTagging", Some("s3:GetObjectVersionTagging")),
    (M::Put, "tagging", "PutObjectTagging", "s3:PutObjectTagging", Some("s3:PutObjectVersionTagging")),
    (M::Delete, "tagging", "DeleteObjectTagging", "s3:DeleteObjectTagging", Some("s3:DeleteObjectVersionTagging")),
    (M::Get, "acl", "GetObjectAcl", "s3:GetObjectAcl", Some("s3:GetObjectVersionAcl")),
    (M::Put, "acl", "PutObjectAcl", "s3:PutObjectAcl", Some("s3:PutObjectVersionAcl")),
    (M::Get, "attributes", "GetObjectAttributes", "s3:GetObjectAttributes", Some("s3:GetObjectVersionAttributes")),
    (M::Get, "retention", "GetObjectRetention", "s3:GetObjectRetention", Some("")),
    (M::Put, "retention", "PutObjectRetention", "s3:PutObjectRetention", Some("")),
    (M::Get, "legal-hold", "GetObjectLegalHold", "s3:GetObjectLegalHold", Some("")),
    (M::Put, "legal-hold", "PutObjectLegalHold", "s3:PutObjectLegalHold", Some("")),
    (M::Post, "restore", "RestoreObject", "s3:RestoreObject", Some("")),
];

/// The IAM actions the operations outside the tables name: in
/// [`classify`] (ListBuckets), [`bucket_op`], [`object_op`] and
/// [`write_header_actions`]. With the tables' actions they make
/// [`known_actions`]; a unit test classifies every request shape and checks
/// that the two agree.
#[rustfmt::skip]
const OP_ACTIONS: &[&str] = &[
    "s3:ListAllMyBuckets",
    // bucket_op
    "s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads",
    "s3:CreateBucket", "s3:PutBucketAcl", "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketVersioning", "s3:PutBucketOwnershipControls", "s3:DeleteBucket",
    "s3:DeleteObject", "s3:BypassGovernanceRetention",
    // object_op
    "s3:GetObject", "s3:GetObjectVersion", "s3:PutObject", "s3:DeleteObjectVersion",
    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
    // write_header_actions
    "s3:PutObjectTagging", "s3:PutObjectAcl", "s3:PutObjectRetention", "s3:PutObjectLegalHold",
];

/// Every IAM action s3gate may ask a policy about, sorted: the `action` and
/// `also` of every request [`classify`] accepts. (The data plane's own
/// checks — each key of a DeleteObjects document, the source of a copy —
/// ask `s3:DeleteObject`, `s3:DeleteObjectVersion`, `s3:GetObject` and
/// `s3:GetObjectVersion`, which are among them.) A rule naming an action
/// outside this list could never apply.
pub fn known_actions() -> &'static [&'static str] {
    static ACTIONS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ACTIONS.get_or_init(|| {
        let mut all: Vec<&'static str> = BUCKET_TABLE
            .iter()
            .map(|row| row.3)
            .chain(
                OBJECT_TABLE
                    .iter()
                    .flat_map(|row| [Some(row.3), row.4])
                    .flatten(),
            )
            .chain(OP_ACTIONS.iter().copied())
            .filter(|a| !a.is_empty())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    })
}

type Classified = (Op, &'static str, Vec<&'static str>);

fn bucket_op(method: &Method, q: &Query<'_>, headers: &HeaderMap) -> Result<Classified, S3Error> {
    let m = M::of(method)?;
    let sub = q.subresource(&[])?;
    if q.has("versionId") {
        return Err(version_not_supported());
    }
    let mut also = Vec::new();
    let (op, action) = match (m, sub) {
        (M::Get, None) => match q.get("list-type").as_deref() {
            None => (Op::ListObjects, "s3:ListBucket"),
            Some("2") => (Op::ListObjectsV2, "s3:ListBucket"),
            Some(_) => {
                return Err(S3Error::new(
                    S3ErrorCode::InvalidArgument,
                    "list-type must be 2",
                ))
            }
        },
        (M::Head, None) => (Op::HeadBucket, "s3:ListBucket"),
        (M::Put, None) => {
            if has_acl_headers(headers) {
                also.push("s3:PutBucketAcl");
            }
            if headers.contains_key("x-amz-bucket-object-lock-enabled") {
                also.push("s3:PutBucketObjectLockConfiguration");
                also.push("s3:PutBucketVersioning");
            }
            if headers.contains_key("x-amz-object-ownership") {
                also.push("s3:PutBucketOwnershipControls");
            }
            (Op::CreateBucket, "s3:CreateBucket")
        }
        (M::Delete, None) => (Op::DeleteBucket, "s3:DeleteBucket"),
        (M::Post, Some("delete")) => {
            if headers.contains_key("x-amz-bypass-governance-retention") {
                also.push("s3:BypassGovernanceRetention");
            }
            (Op::DeleteObjects, "s3:DeleteObject")
        }
        (M::Get, Some("versions")) => (Op::ListObjectVersions, "s3:ListBucketVersions"),
        (M::Get, Some("uploads")) => (Op::ListMultipartUploads, "s3:ListBucketMultipartUploads"),
        (m, Some(sub)) => {
            let row = BUCKET_TABLE
                .iter()
                .find(|(tm, ts, _, _)| *tm == m && *ts == sub)
                .ok_or_else(|| not_implemented("this bucket operation"))?;
            (Op::BucketSubresource(row.2), row.3)
        }
        (M::Post, None) => return Err(not_implemented("this bucket operation")),
    };
    Ok((op, action, also))
}

fn object_op(
    method: &Method,
    q: &Query<'_>,
    headers: &HeaderMap,
    has_copy_source: bool,
) -> Result<Classified, S3Error> {
    let m = M::of(method)?;
    // `uploadId` + `partNumber` mean UploadPart, and GET/HEAD with
    // `partNumber` reads one part: `partNumber` alone selects no operation.
    let sub = q.subresource(&["partNumber"])?;
    let part = q.has("partNumber");
    let versioned = q.has("versionId");
    let mut also = Vec::new();
    // The IAM action a versionId adds, where one is valid.
    let mut version_action: Option<&'static str> = None;
    let (op, action) = match (m, sub) {
        (M::Get, None) => {
            version_action = Some("s3:GetObjectVersion");
            (Op::GetObject, "s3:GetObject")
        }
        (M::Head, None) => {
            version_action = Some("s3:GetObjectVersion");
            (Op::HeadObject, "s3:GetObject")
        }
        (M::Put, None) if !part => {
            write_header_actions(headers, &mut also);
            if has_copy_source {
                (Op::CopyObject, "s3:PutObject")
            } else {
                (Op::PutObject, "s3:PutObject")
            }
        }
        (M::Delete, None) if !part => {
            version_action = Some("s3:DeleteObjectVersion");
            if headers.contains_key("x-amz-bypass-governance-retention") {
                also.push("s3:BypassGovernanceRetention");
            }
            (Op::DeleteObject, "s3:DeleteObject")
        }
        (M::Put, Some("uploadId")) if part && has_copy_source => {
            (Op::UploadPartCopy, "s3:PutObject")
        }
        (M::Put, Some("uploadId")) if part => (Op::UploadPart, "s3:PutObject"),
        (M::Post, Some("uploads")) if !part => {
            write_header_actions(headers, &mut also);
            (Op::CreateMultipartUpload, "s3:PutObject")
        }
        (M::Post, Some("uploadId")) if !part => (Op::CompleteMultipartUpload, "s3:PutObject"),
        (M::Delete, Some("uploadId")) if !part => {
            (Op::AbortMultipartUpload, "s3:AbortMultipartUpload")
        }
        (M::Get, Some("uploadId")) if !part => (Op::ListParts, "s3:ListMultipartUploadParts"),
        (m, Some(sub)) if !part => {
            let row = OBJECT_TABLE
                .iter()
                .find(|(tm, ts, ..)| *tm == m && *ts == sub)
                .ok_or_else(|| not_implemented("this object operation"))?;
            version_action = row.4;
            if sub == "retention" && headers.contains_key("x-amz-bypass-governance-retention") {
                also.push("s3:BypassGovernanceRetention");
            }
            (Op::ObjectSubresource(row.2), row.3)
        }
        _ => return Err(not_implemented("this object operation")),
    };
    if versioned {
        match version_action {
            None => return Err(version_not_supported()),
            Some("") => {}
            Some(extra) => also.push(extra),
        }
    }
    Ok((op, action, also))
}

/// ACL and grant headers set permissions; IAM needs `s3:Put*Acl` for them.
fn has_acl_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|n| n.as_str() == "x-amz-acl" || n.as_str().starts_with("x-amz-grant-"))
}

/// What headers on an object write do besides writing: each needs its own
/// IAM action, as S3 itself requires.
fn write_header_actions(headers: &HeaderMap, also: &mut Vec<&'static str>) {
    if headers.contains_key("x-amz-tagging") {
        also.push("s3:PutObjectTagging");
    }
    if has_acl_headers(headers) {
        also.push("s3:PutObjectAcl");
    }
    if headers.contains_key("x-amz-object-lock-mode")
        || headers.contains_key("x-amz-object-lock-retain-until-date")
    {
        also.push("s3:PutObjectRetention");
    }
    if headers.contains_key("x-amz-object-lock-legal-hold") {
        also.push("s3:PutObjectLegalHold");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn check(method: &str, target: &str, expect: Option<(Op, &str, Option<&str>, Option<&str>)>) {
        let hosts = HostConfig {
            base_domains: vec!["s3.example.com".into()],
        };
        let (host, path) = match target.split_once(' ') {
            Some((h, p)) => (Some(h), p),
            None => (None, target),
        };
        let uri: Uri = path.parse().unwrap();
        let method: Method = method.parse().unwrap();
        let mut headers = HeaderMap::new();
        if path.contains("COPY") {
            headers.insert("x-amz-copy-source", "/src/a%20b".parse().unwrap());
        }
        let got = classify(&hosts, &method, &uri, host, &headers);
        match expect {
            Some((op, action, bucket, key)) => {
                let got = got.unwrap_or_else(|e| panic!("{method} {target}: {e}"));
                assert_eq!(got.op, op, "{method} {target}");
                assert_eq!(got.action, action, "{method} {target}");
                assert_eq!(got.bucket.as_deref(), bucket, "{method} {target}");
                assert_eq!(got.key.as_deref(), key, "{method} {target}");
            }
            None => assert!(
                got.is_err(),
                "{method} {target} should be refused, got {got:?}"
            ),
        }
    }

    #[test]
    fn routing_table() {
        use Op::*;
        check(
            "GET",
            "/",
            Some((ListBuckets, "s3:ListAllMyBuckets", None, None)),
        );
        check(
            "GET",
            "/b",
            Some((ListObjects, "s3:ListBucket", Some("b"), Some(""))),
        );
        check(
            "GET",
            "/b/",
            Some((ListObjects, "s3:ListBucket", Some("b"), Some(""))),
        );
        check(
            "GET",
            "/b?list-type=2&prefix=reports%2F2024",
            Some((
                ListObjectsV2,
                "s3:ListBucket",
                Some("b"),
                Some("reports/2024"),
            )),
        );
        check(
            "GET",
            "/b/k",
            Some((GetObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        check(
            "GET",
            "/b/a%20b/c+d",
            Some((GetObject, "s3:GetObject", Some("b"), Some("a b/c+d"))),
        );
        check(
            "GET",
            "/b/k?versionId=3&response-content-type=x",
            Some((GetObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        check(
            "HEAD",
            "/b/k",
            Some((HeadObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        check(
            "HEAD",
            "/b",
            Some((HeadBucket, "s3:ListBucket", Some("b"), None)),
        );
        check(
            "PUT",
            "/b/k",
            Some((PutObject, "s3:PutObject", Some("b"), Some("k"))),
        );
        check("PUT", "/b/k?COPY", None);
        check(
            "PUT",
            "/b/k?x-COPY",
            Some((CopyObject, "s3:PutObject", Some("b"), Some("k"))),
        );
        check(
            "PUT",
            "/b/k?partNumber=1&uploadId=x",
            Some((UploadPart, "s3:PutObject", Some("b"), Some("k"))),
        );
        check("PUT", "/b/k?uploadId=x", None);
        check(
            "POST",
            "/b/k?uploads",
            Some((CreateMultipartUpload, "s3:PutObject", Some("b"), Some("k"))),
        );
        check(
            "POST",
            "/b/k?uploadId=x",
            Some((
                CompleteMultipartUpload,
                "s3:PutObject",
                Some("b"),
                Some("k"),
            )),
        );
        check(
            "DELETE",
            "/b/k?uploadId=x",
            Some((
                AbortMultipartUpload,
                "s3:AbortMultipartUpload",
                Some("b"),
                Some("k"),
            )),
        );
        check(
            "GET",
            "/b/k?uploadId=x",
            Some((
                ListParts,
                "s3:ListMultipartUploadParts",
                Some("b"),
                Some("k"),
            )),
        );
        check(
            "DELETE",
            "/b/k",
            Some((DeleteObject, "s3:DeleteObject", Some("b"), Some("k"))),
        );
        check(
            "POST",
            "/b?delete",
            Some((DeleteObjects, "s3:DeleteObject", Some("b"), None)),
        );
        check(
            "GET",
            "/b?uploads",
            Some((
                ListMultipartUploads,
                "s3:ListBucketMultipartUploads",
                Some("b"),
                Some(""),
            )),
        );
        check(
            "GET",
            "/b?location",
            Some((
                BucketSubresource("GetBucketLocation"),
                "s3:GetBucketLocation",
                Some("b"),
                None,
            )),
        );
        check(
            "PUT",
            "/b?policy",
            Some((
                BucketSubresource("PutBucketPolicy"),
                "s3:PutBucketPolicy",
                Some("b"),
                None,
            )),
        );
        check(
            "GET",
            "/b/k?tagging",
            Some((
                ObjectSubresource("GetObjectTagging"),
                "s3:GetObjectTagging",
                Some("b"),
                Some("k"),
            )),
        );
        check(
            "PUT",
            "/b",
            Some((CreateBucket, "s3:CreateBucket", Some("b"), None)),
        );
        // virtual-host style
        check(
            "GET",
            "data.s3.example.com:9080 /k/x",
            Some((GetObject, "s3:GetObject", Some("data"), Some("k/x"))),
        );
        check(
            "GET",
            "data.S3.Example.com /",
            Some((ListObjects, "s3:ListBucket", Some("data"), Some(""))),
        );
        check(
            "GET",
            "s3.example.com /b/k",
            Some((GetObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        check(
            "GET",
            "127.0.0.1:9080 /b/k",
            Some((GetObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        // refused
        check("GET", "/b/k?torrent", None);
        check("GET", "/b/k?somethingnew", None);
        check("GET", "/b/k?tagging&acl", None);
        check("PATCH", "/b/k", None);
        check("POST", "/", None);
        check("GET", "/b%ff/k", None);
        check("GET", "/bad%2Fbucket/k", None);
        // Dot segments and a leading '/' are keys like any other here: the
        // key-segment guard is per backend (below, and in the data plane).
        check(
            "GET",
            "/b/reports/%2E%2E/secret",
            Some((
                GetObject,
                "s3:GetObject",
                Some("b"),
                Some("reports/../secret"),
            )),
        );
        check(
            "GET",
            "/b//secret/x",
            Some((GetObject, "s3:GetObject", Some("b"), Some("/secret/x"))),
        );
        check(
            "GET",
            "/b/a..b/.c/d.",
            Some((GetObject, "s3:GetObject", Some("b"), Some("a..b/.c/d."))),
        );
        check(
            "GET",
            "/b/a//b/",
            Some((GetObject, "s3:GetObject", Some("b"), Some("a//b/"))),
        );
        // Shapes a backend would run as another operation are refused.
        for (method, target) in [
            ("GET", "/b?retention"),
            ("GET", "/b?attributes"),
            ("GET", "/b?legal-hold"),
            ("GET", "/b?metadata-table"),
            ("POST", "/b?restore"),
            ("DELETE", "/b?versioning"),
            ("DELETE", "/b?logging"),
            ("DELETE", "/b?notification"),
            ("DELETE", "/b?object-lock"),
            ("DELETE", "/b?acl"),
            ("PUT", "/b?location"),
            ("HEAD", "/b?acl"),
            ("HEAD", "/b/k?tagging"),
            ("HEAD", "/b/k?acl"),
            ("POST", "/b/k?select&select-type=2"),
            ("GET", "/b/k?versioning"),
            ("DELETE", "/b/k?acl"),
            ("PUT", "/b/k?partNumber=1"),
            ("DELETE", "/b/k?partNumber=1"),
            ("POST", "/b/k"),
            ("POST", "/b"),
            ("GET", "/b?versionId=1"),
            ("PUT", "/b/k?versionId=1"),
            ("GET", "/b?list-type=1"),
            ("GET", "/?acl"),
        ] {
            check(method, target, None);
        }
        // Repeated parameters are refused, however they are spelled.
        for target in [
            "/b?prefix=reports/&prefix=",
            "/b?list-type=2&list-type=2",
            "/b/k?versionId=a&versionId=b",
            "/b/k?uploadId=a&partNumber=1&uploadId=b",
            "/b?prefix=a&%70refix=b",
            "/b/k?x-id=1&x-id=2",
        ] {
            check("GET", target, None);
        }
        check(
            "GET",
            "/b?%70refix=a",
            Some((ListObjects, "s3:ListBucket", Some("b"), Some("a"))),
        );
        check(
            "GET",
            "/b/k?partNumber=2",
            Some((GetObject, "s3:GetObject", Some("b"), Some("k"))),
        );
        check(
            "DELETE",
            "/b?cors",
            Some((
                BucketSubresource("DeleteBucketCors"),
                "s3:PutBucketCORS",
                Some("b"),
                None,
            )),
        );
    }

    fn classify_with(method: &str, target: &str, headers: &[(&str, &str)]) -> S3Request {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        classify(
            &HostConfig::default(),
            &method.parse().unwrap(),
            &uri,
            None,
            &h,
        )
        .unwrap()
    }

    #[test]
    fn versions_and_headers_need_their_own_actions() {
        let r = classify_with("DELETE", "/b/k?versionId=v1", &[]);
        assert_eq!(
            (r.action, r.also),
            ("s3:DeleteObject", vec!["s3:DeleteObjectVersion"])
        );
        let r = classify_with("GET", "/b/k?versionId=v1", &[]);
        assert_eq!(r.also, vec!["s3:GetObjectVersion"]);
        let r = classify_with("PUT", "/b/k?tagging&versionId=v1", &[]);
        assert_eq!(r.also, vec!["s3:PutObjectVersionTagging"]);
        let r = classify_with("GET", "/b/k?retention&versionId=v1", &[]);
        assert!(r.also.is_empty());
        let r = classify_with(
            "PUT",
            "/b/k",
            &[
                ("x-amz-tagging", "a=b"),
                ("x-amz-grant-read", "id=x"),
                ("x-amz-object-lock-mode", "GOVERNANCE"),
                ("x-amz-object-lock-legal-hold", "ON"),
            ],
        );
        assert_eq!(
            r.also,
            vec![
                "s3:PutObjectTagging",
                "s3:PutObjectAcl",
                "s3:PutObjectRetention",
                "s3:PutObjectLegalHold"
            ]
        );
        let r = classify_with(
            "DELETE",
            "/b/k",
            &[("x-amz-bypass-governance-retention", "true")],
        );
        assert_eq!(r.also, vec!["s3:BypassGovernanceRetention"]);
        let r = classify_with("PUT", "/b", &[("x-amz-acl", "public-read")]);
        assert_eq!(r.also, vec!["s3:PutBucketAcl"]);
        let r = classify_with("GET", "/b/k", &[]);
        assert!(r.also.is_empty());
    }

    /// Every IAM action classification can produce, from the IAM service
    /// authorization reference for Amazon S3. Nothing invented.
    #[rustfmt::skip]
    const KNOWN_IAM_ACTIONS: &[&str] = &[
        "s3:AbortMultipartUpload", "s3:BypassGovernanceRetention", "s3:CreateBucket",
        "s3:DeleteBucket", "s3:DeleteBucketPolicy", "s3:DeleteBucketWebsite", "s3:DeleteObject",
        "s3:DeleteObjectTagging", "s3:DeleteObjectVersion", "s3:DeleteObjectVersionTagging",
        "s3:GetAccelerateConfiguration", "s3:GetAnalyticsConfiguration", "s3:GetBucketAcl",
        "s3:GetBucketCORS", "s3:GetBucketLocation", "s3:GetBucketLogging",
        "s3:GetBucketNotification", "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketOwnershipControls", "s3:GetBucketPolicy", "s3:GetBucketPolicyStatus",
        "s3:GetBucketPublicAccessBlock", "s3:GetBucketRequestPayment", "s3:GetBucketTagging",
        "s3:GetBucketVersioning", "s3:GetBucketWebsite", "s3:GetEncryptionConfiguration",
        "s3:GetIntelligentTieringConfiguration", "s3:GetInventoryConfiguration",
        "s3:GetLifecycleConfiguration", "s3:GetMetricsConfiguration", "s3:GetObject",
        "s3:GetObjectAcl", "s3:GetObjectAttributes", "s3:GetObjectLegalHold",
        "s3:GetObjectRetention", "s3:GetObjectTagging", "s3:GetObjectVersion",
        "s3:GetObjectVersionAcl", "s3:GetObjectVersionAttributes", "s3:GetObjectVersionTagging",
        "s3:GetReplicationConfiguration", "s3:ListAllMyBuckets", "s3:ListBucket",
        "s3:ListBucketMultipartUploads", "s3:ListBucketVersions", "s3:ListMultipartUploadParts",
        "s3:PutAccelerateConfiguration", "s3:PutAnalyticsConfiguration", "s3:PutBucketAcl",
        "s3:PutBucketCORS", "s3:PutBucketLogging", "s3:PutBucketNotification",
        "s3:PutBucketObjectLockConfiguration", "s3:PutBucketOwnershipControls",
        "s3:PutBucketPolicy", "s3:PutBucketPublicAccessBlock", "s3:PutBucketRequestPayment",
        "s3:PutBucketTagging", "s3:PutBucketVersioning", "s3:PutBucketWebsite",
        "s3:PutEncryptionConfiguration", "s3:PutIntelligentTieringConfiguration",
        "s3:PutInventoryConfiguration", "s3:PutLifecycleConfiguration",
        "s3:PutMetricsConfiguration", "s3:PutObject", "s3:PutObjectAcl", "s3:PutObjectLegalHold",
        "s3:PutObjectRetention", "s3:PutObjectTagging", "s3:PutObjectVersionAcl",
        "s3:PutObjectVersionTagging", "s3:PutReplicationConfiguration", "s3:RestoreObject",
    ];

    /// Every sub-resource S3 defines, with every method, at bucket and object
    /// level, with and without a versionId: either refused, or classified with
    /// real IAM actions only.
    #[test]
    fn every_shape_is_refused_or_names_real_actions() {
        let mut accepted = 0;
        for method in ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"] {
            for sub in SUBRESOURCES.iter().copied().chain([""]) {
                for path in ["/", "/b", "/b/k"] {
                    for version in ["", "&versionId=v"] {
                        let target = format!("{path}?{sub}{version}");
                        let uri: Uri = target.parse().unwrap();
                        let got = classify(
                            &HostConfig::default(),
                            &method.parse().unwrap(),
                            &uri,
                            None,
                            &HeaderMap::new(),
                        );
                        if let Ok(r) = got {
                            accepted += 1;
                            for a in std::iter::once(&r.action).chain(&r.also) {
                                assert!(
                                    KNOWN_IAM_ACTIONS.contains(a),
                                    "{method} {target}: invented action {a}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(accepted > 60, "only {accepted} shapes accepted");
    }

    /// `known_actions` is exactly what the classifier can ask: every method,
    /// sub-resource, part number, version, copy source and action-adding
    /// header, at service, bucket and object level.
    #[test]
    fn known_actions_are_exactly_what_classify_asks() {
        let mut all_headers = HeaderMap::new();
        for (name, value) in [
            ("x-amz-acl", "private"),
            ("x-amz-tagging", "a=b"),
            ("x-amz-bucket-object-lock-enabled", "true"),
            ("x-amz-object-ownership", "BucketOwnerEnforced"),
            ("x-amz-bypass-governance-retention", "true"),
            ("x-amz-object-lock-mode", "GOVERNANCE"),
            ("x-amz-object-lock-legal-hold", "ON"),
        ] {
            all_headers.insert(name, value.parse().unwrap());
        }
        let mut copy = all_headers.clone();
        copy.insert("x-amz-copy-source", "/src/k".parse().unwrap());
        let mut asked = std::collections::BTreeSet::new();
        for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
            for sub in SUBRESOURCES.iter().copied().chain([""]) {
                for path in ["/", "/b", "/b/k"] {
                    for extra in [
                        "",
                        "&partNumber=1",
                        "&versionId=v",
                        "&partNumber=1&versionId=v",
                    ] {
                        for headers in [&HeaderMap::new(), &all_headers, &copy] {
                            let uri: Uri = format!("{path}?{sub}{extra}").parse().unwrap();
                            let method: Method = method.parse().unwrap();
                            let got =
                                classify(&HostConfig::default(), &method, &uri, None, headers);
                            if let Ok(r) = got {
                                asked.insert(r.action);
                                asked.extend(r.also);
                            }
                        }
                    }
                }
            }
        }
        let known: std::collections::BTreeSet<_> = known_actions().iter().copied().collect();
        assert_eq!(asked, known);
        assert!(
            known_actions().windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        for a in known_actions() {
            assert!(KNOWN_IAM_ACTIONS.contains(a), "{a} is not an IAM action");
        }
    }

    #[test]
    fn copy_source_forms() {
        let c = parse_copy_source("/src/a%20b%2Bc?versionId=v1").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.key.as_str(), c.version_id.as_deref()),
            ("src", "a b+c", Some("v1"))
        );
        let c = parse_copy_source("src/k/x").unwrap();
        assert_eq!((c.bucket.as_str(), c.key.as_str()), ("src", "k/x"));
        assert!(parse_copy_source("src").is_err());
        assert!(parse_copy_source("/src/").is_err());
        assert!(parse_copy_source("/src/k?acl").is_err());
        assert!(parse_copy_source("/src/k?versionId=v1&acl").is_err());
        assert!(parse_copy_source("/src/k?versionId=").is_err());
        assert_eq!(parse_copy_source("/src/a/../b").unwrap().key, "a/../b");
    }

    #[test]
    fn the_key_segment_guard_sees_every_key_a_request_names() {
        let hosts = HostConfig::default();
        let req = |path: &str, copy: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(c) = copy {
                headers.insert("x-amz-copy-source", c.parse().unwrap());
            }
            let method = if copy.is_some() {
                Method::PUT
            } else {
                Method::GET
            };
            classify(&hosts, &method, &path.parse().unwrap(), None, &headers).unwrap()
        };
        for bad in [
            "/b/reports/../secret",
            "/b/reports/%2E%2E/secret",
            "/b/./secret/x",
            "/b/secret/./x",
            "/b//secret/x",
            "/b/..",
            "/b?prefix=reports/../",
            "/b?list-type=2&prefix=./x",
        ] {
            let e = req(bad, None).check_key_segments().unwrap_err();
            assert_eq!(e.code, S3ErrorCode::InvalidArgument, "{bad}");
        }
        assert!(req("/b/k", Some("/src/a/../b"))
            .check_key_segments()
            .is_err());
        for good in [
            "/b/a..b/.c/d.",
            "/b/k",
            "/b?prefix=reports/",
            "/b/...",
            "/b/a/.../b",
        ] {
            assert!(req(good, None).check_key_segments().is_ok(), "{good}");
        }
        assert!(req("/b/k", Some("/src/a..b")).check_key_segments().is_ok());
    }

    proptest::proptest! {
        #[test]
        fn classify_never_panics(
            method in "(GET|PUT|POST|DELETE|HEAD|PATCH|OPTIONS)",
            path in "/[a-z0-9%./ +?=&~-]{0,48}",
            host in proptest::option::of("[a-zA-Z0-9.:\\[\\]-]{0,40}"),
            copy in proptest::option::of("[a-z0-9%./?=-]{0,40}"),
        ) {
            let Ok(uri) = path.parse::<Uri>() else { return Ok(()) };
            let method: Method = method.parse().unwrap();
            let mut headers = HeaderMap::new();
            if let Some(c) = copy.as_deref().and_then(|c| c.parse().ok()) {
                headers.insert("x-amz-copy-source", c);
            }
            let hosts = HostConfig { base_domains: vec!["s3.example.com".into()] };
            if let Ok(req) = classify(&hosts, &method, &uri, host.as_deref(), &headers) {
                // whatever is accepted names a valid bucket
                if let Some(b) = &req.bucket {
                    proptest::prop_assert!(validate_bucket(b).is_ok());
                }
                proptest::prop_assert!(req.action.starts_with("s3:"));
            }
        }
    }
}
