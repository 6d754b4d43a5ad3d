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
    /// A bucket sub-resource (`?versioning`, `?policy`, …) read, written or deleted.
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
    /// An object sub-resource (`?tagging`, `?acl`, …).
    ObjectSubresource(&'static str),
}

/// A classified request. Borrowed nothing: it outlives the head it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Request {
    pub op: Op,
    /// The IAM action that authorizes `op` (e.g. `s3:GetObject`).
    pub action: &'static str,
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

impl Op {
    /// The operation's name as S3's API reference spells it; sub-resources
    /// are named after the sub-resource (`versioning`, `tagging`, …).
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
    let raw_path = uri.path();
    if !raw_path.starts_with('/') {
        return Err(S3Error::new(
            S3ErrorCode::InvalidURI,
            "path must start with '/'",
        ));
    }
    let (bucket, raw_key, addressing) = match host.and_then(|h| vhost_bucket(hosts, h)) {
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
    };
    let key = if raw_key.is_empty() {
        None
    } else {
        let key = decode(raw_key)?.into_owned();
        validate_key(&key)?;
        Some(key)
    };
    if let Some(b) = &bucket {
        validate_bucket(b)?;
    }
    let query = Query::parse(uri.query().unwrap_or(""))?;

    let Some(bucket) = bucket else {
        return match *method {
            Method::GET | Method::HEAD if query.unknown_subresource().is_none() => Ok(S3Request {
                op: Op::ListBuckets,
                action: "s3:ListAllMyBuckets",
                bucket: None,
                key: None,
                addressing,
                copy_source: None,
            }),
            _ => Err(S3Error::new(
                S3ErrorCode::NotImplemented,
                "this service-level operation is not supported",
            )),
        };
    };

    let copy_source = match headers.get("x-amz-copy-source") {
        Some(v) => Some(parse_copy_source(
            v.to_str().map_err(|_| bad_copy_source())?,
        )?),
        None => None,
    };

    let (op, action, key) = match key {
        None => {
            let (op, action) = bucket_op(method, &query)?;
            let key = match op {
                Op::ListObjects
                | Op::ListObjectsV2
                | Op::ListObjectVersions
                | Op::ListMultipartUploads => {
                    let prefix = query.get("prefix").unwrap_or_default().into_owned();
                    validate_key(&prefix)?;
                    Some(prefix)
                }
                _ => None,
            };
            (op, action, key)
        }
        Some(key) => {
            let (op, action) = object_op(method, &query, copy_source.is_some())?;
            (op, action, Some(key))
        }
    };
    let copy_source = match op {
        Op::CopyObject | Op::UploadPartCopy => copy_source,
        _ => None,
    };
    Ok(S3Request {
        op,
        action,
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
    validate_key(&key)?;
    validate_bucket(&bucket)?;
    Ok(CopySource {
        bucket,
        key,
        version_id,
    })
}

fn vhost_bucket<'h>(hosts: &HostConfig, host: &'h str) -> Option<&'h str> {
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

/// Refuses keys (and list prefixes) with `.` or `..` segments or a leading
/// `/`. S3 itself treats keys as opaque, but many backends (file-system
/// stores, some gateways) resolve them as paths: `reports/../secret/x` would
/// then escape a rule on `reports/*`, and `./secret/x` a deny on `secret/*`.
pub fn validate_key(key: &str) -> Result<(), S3Error> {
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
pub fn encode_key(key: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(key, ENCODE_PATH)
}

/// Encodes a query name or value.
pub fn encode_component(s: &str) -> impl std::fmt::Display + '_ {
    utf8_percent_encode(s, ENCODE_COMPONENT)
}

// === Query ===

/// The query string split into raw `(name, value)` pairs.
pub struct Query<'a> {
    /// Raw name and raw value; `None` when the parameter has no `=`.
    pairs: Vec<(&'a str, Option<&'a str>)>,
}

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
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            })
            .collect();
        Ok(Self { pairs })
    }

    /// The raw `(name, value)` pairs in request order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + '_ {
        self.pairs.iter().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| *n == name)
    }

    /// The decoded value of the first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.pairs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| percent_decode_str(v.unwrap_or_default()).decode_utf8_lossy())
    }

    /// The first parameter that is neither a known sub-resource, a known plain
    /// parameter, a presign parameter, a `response-*` override nor an `x-*`
    /// parameter (which S3 ignores).
    fn unknown_subresource(&self) -> Option<&'a str> {
        self.pairs.iter().map(|(n, _)| *n).find(|n| {
            !(SUBRESOURCES.contains(n)
                || PLAIN_PARAMS.contains(n)
                || n.starts_with("X-Amz-")
                || n.starts_with("response-")
                || n.starts_with("x-"))
        })
    }

    /// The one sub-resource of this request, if any. Two different
    /// sub-resources in one request are refused: S3 would pick one and we
    /// could authorize the other.
    fn subresource(&self, ignore: &[&str]) -> Result<Option<&'static str>, S3Error> {
        if let Some(unknown) = self.unknown_subresource() {
            return Err(S3Error::new(
                S3ErrorCode::NotImplemented,
                format!("query parameter '{}' is not supported", truncate(unknown)),
            ));
        }
        let mut found: Option<&'static str> = None;
        for (name, _) in &self.pairs {
            if ignore.contains(name) {
                continue;
            }
            if let Some(s) = SUBRESOURCES.iter().find(|s| **s == *name) {
                match found {
                    Some(prev) if prev != *s => {
                        return Err(S3Error::new(
                            S3ErrorCode::InvalidRequest,
                            "conflicting sub-resources in one request",
                        ))
                    }
                    _ => found = Some(s),
                }
            }
        }
        Ok(found)
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

fn bucket_op(method: &Method, q: &Query<'_>) -> Result<(Op, &'static str), S3Error> {
    let sub = q.subresource(&[])?;
    Ok(match (method, sub) {
        (&Method::GET, None) => {
            if q.get("list-type").as_deref() == Some("2") {
                (Op::ListObjectsV2, "s3:ListBucket")
            } else {
                (Op::ListObjects, "s3:ListBucket")
            }
        }
        (&Method::HEAD, None) => (Op::HeadBucket, "s3:ListBucket"),
        (&Method::PUT, None) => (Op::CreateBucket, "s3:CreateBucket"),
        (&Method::DELETE, None) => (Op::DeleteBucket, "s3:DeleteBucket"),
        (&Method::POST, Some("delete")) => (Op::DeleteObjects, "s3:DeleteObject"),
        (&Method::GET, Some("versions")) => (Op::ListObjectVersions, "s3:ListBucketVersions"),
        (&Method::GET, Some("uploads")) => {
            (Op::ListMultipartUploads, "s3:ListBucketMultipartUploads")
        }
        (&Method::GET, Some("location")) => {
            (Op::BucketSubresource("location"), "s3:GetBucketLocation")
        }
        (&Method::GET, Some("torrent" | "select" | "select-type")) | (&Method::POST, _) => {
            return Err(not_implemented("this bucket operation"))
        }
        (&Method::GET | &Method::HEAD, Some(s)) => {
            (Op::BucketSubresource(s), bucket_action("s3:GetBucket", s))
        }
        (&Method::PUT, Some(s)) => (Op::BucketSubresource(s), bucket_action("s3:PutBucket", s)),
        (&Method::DELETE, Some(s)) => (
            Op::BucketSubresource(s),
            bucket_action("s3:DeleteBucket", s),
        ),
        _ => return Err(method_not_allowed()),
    })
}

/// Bucket sub-resource actions: `s3:GetBucketPolicy`, `s3:PutBucketVersioning`, …
fn bucket_action(verb: &'static str, sub: &str) -> &'static str {
    macro_rules! table {
        ($($sub:literal => $name:literal),* $(,)?) => {
            match (verb, sub) {
                $(("s3:GetBucket", $sub) => concat!("s3:GetBucket", $name),
                  ("s3:PutBucket", $sub) => concat!("s3:PutBucket", $name),
                  ("s3:DeleteBucket", $sub) => concat!("s3:DeleteBucket", $name),)*
                _ => "s3:BucketConfiguration",
            }
        };
    }
    table! {
        "accelerate" => "Accelerate", "acl" => "Acl", "analytics" => "Analytics",
        "cors" => "Cors", "encryption" => "Encryption", "intelligent-tiering" => "IntelligentTiering",
        "inventory" => "Inventory", "lifecycle" => "Lifecycle", "logging" => "Logging",
        "metadata-table" => "MetadataTable", "metrics" => "Metrics", "notification" => "Notification",
        "object-lock" => "ObjectLock", "ownershipControls" => "OwnershipControls", "policy" => "Policy",
        "policyStatus" => "PolicyStatus", "publicAccessBlock" => "PublicAccessBlock",
        "replication" => "Replication", "requestPayment" => "RequestPayment", "tagging" => "Tagging",
        "versioning" => "Versioning", "website" => "Website",
    }
}

fn object_op(
    method: &Method,
    q: &Query<'_>,
    has_copy_source: bool,
) -> Result<(Op, &'static str), S3Error> {
    // `uploadId` + `partNumber` together mean UploadPart; neither is a sub-resource on its own there.
    let sub = q.subresource(&["partNumber"])?;
    Ok(match (method, sub) {
        (&Method::GET, None) => (Op::GetObject, "s3:GetObject"),
        (&Method::HEAD, None) => (Op::HeadObject, "s3:GetObject"),
        (&Method::PUT, None) if has_copy_source => (Op::CopyObject, "s3:PutObject"),
        (&Method::PUT, None) => (Op::PutObject, "s3:PutObject"),
        (&Method::DELETE, None) => (Op::DeleteObject, "s3:DeleteObject"),
        (&Method::PUT, Some("uploadId")) if q.has("partNumber") && has_copy_source => {
            (Op::UploadPartCopy, "s3:PutObject")
        }
        (&Method::PUT, Some("uploadId")) if q.has("partNumber") => (Op::UploadPart, "s3:PutObject"),
        (&Method::POST, Some("uploads")) => (Op::CreateMultipartUpload, "s3:PutObject"),
        (&Method::POST, Some("uploadId")) => (Op::CompleteMultipartUpload, "s3:PutObject"),
        (&Method::DELETE, Some("uploadId")) => {
            (Op::AbortMultipartUpload, "s3:AbortMultipartUpload")
        }
        (&Method::GET, Some("uploadId")) => (Op::ListParts, "s3:ListMultipartUploadParts"),
        (&Method::GET | &Method::HEAD, Some("tagging")) => {
            (Op::ObjectSubresource("tagging"), "s3:GetObjectTagging")
        }
        (&Method::PUT, Some("tagging")) => {
            (Op::ObjectSubresource("tagging"), "s3:PutObjectTagging")
        }
        (&Method::DELETE, Some("tagging")) => {
            (Op::ObjectSubresource("tagging"), "s3:DeleteObjectTagging")
        }
        (&Method::GET | &Method::HEAD, Some("acl")) => {
            (Op::ObjectSubresource("acl"), "s3:GetObjectAcl")
        }
        (&Method::PUT, Some("acl")) => (Op::ObjectSubresource("acl"), "s3:PutObjectAcl"),
        (&Method::GET | &Method::HEAD, Some("attributes")) => (
            Op::ObjectSubresource("attributes"),
            "s3:GetObjectAttributes",
        ),
        (&Method::GET | &Method::HEAD, Some("retention")) => {
            (Op::ObjectSubresource("retention"), "s3:GetObjectRetention")
        }
        (&Method::PUT, Some("retention")) => {
            (Op::ObjectSubresource("retention"), "s3:PutObjectRetention")
        }
        (&Method::GET | &Method::HEAD, Some("legal-hold")) => {
            (Op::ObjectSubresource("legal-hold"), "s3:GetObjectLegalHold")
        }
        (&Method::PUT, Some("legal-hold")) => {
            (Op::ObjectSubresource("legal-hold"), "s3:PutObjectLegalHold")
        }
        (&Method::POST, Some("restore")) => (Op::ObjectSubresource("restore"), "s3:RestoreObject"),
        (_, Some("torrent" | "select" | "select-type")) => {
            return Err(not_implemented("this object operation"))
        }
        (&Method::GET | &Method::HEAD | &Method::PUT | &Method::DELETE | &Method::POST, _) => {
            return Err(method_not_allowed())
        }
        _ => return Err(method_not_allowed()),
    })
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
                BucketSubresource("location"),
                "s3:GetBucketLocation",
                Some("b"),
                None,
            )),
        );
        check(
            "PUT",
            "/b?policy",
            Some((
                BucketSubresource("policy"),
                "s3:PutBucketPolicy",
                Some("b"),
                None,
            )),
        );
        check(
            "GET",
            "/b/k?tagging",
            Some((
                ObjectSubresource("tagging"),
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
        check("GET", "/b/reports/../secret", None);
        check("GET", "/b/reports/%2E%2E/secret", None);
        check("GET", "/b/./secret/x", None);
        check("GET", "/b//secret/x", None);
        check("GET", "/b/..", None);
        check("GET", "/b?prefix=reports/../", None);
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
        assert!(parse_copy_source("/src/a/../b").is_err());
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
                // whatever is accepted names a valid bucket and a key without dot segments
                if let Some(k) = &req.key {
                    proptest::prop_assert!(validate_key(k).is_ok());
                }
                proptest::prop_assert!(req.action.starts_with("s3:"));
            }
        }
    }
}
