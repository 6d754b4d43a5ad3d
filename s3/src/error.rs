//! S3 error codes and the `<Error>` XML document clients expect.

use http::StatusCode;

use crate::xml::escape;

/// The subset of S3 error codes the gateway itself produces.
///
/// Backend errors are passed through untouched and never go through this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum S3ErrorCode {
    /// A CORS preflight the bucket's rules do not allow (or a bucket
    /// without CORS), as S3 answers it.
    AccessForbidden,
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    BadDigest,
    /// A CORS preflight without `Origin` or `Access-Control-Request-Method`.
    BadRequest,
    EntityTooLarge,
    /// A bearer or session token that was good but has expired.
    ExpiredToken,
    IncompleteBody,
    InternalError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidBucketName,
    InvalidChunkSizeError,
    InvalidDigest,
    InvalidRequest,
    /// A bearer or session token that is malformed or not accepted.
    InvalidToken,
    InvalidURI,
    MalformedXML,
    MethodNotAllowed,
    MissingContentLength,
    MissingSecurityHeader,
    NoSuchBucket,
    NotImplemented,
    RequestTimeout,
    RequestTimeTooSkewed,
    ServiceUnavailable,
    SignatureDoesNotMatch,
    SlowDown,
    XAmzContentSHA256Mismatch,
    /// Not an S3 code, but what S3-compatible gateways answer when the
    /// backend cannot be reached.
    BadGateway,
    /// Not an S3 code either: the backend took longer than the gateway
    /// waits for its answer (504, which SDKs retry).
    GatewayTimeout,
}

impl S3ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccessForbidden => "AccessForbidden",
            Self::AccessDenied => "AccessDenied",
            Self::AuthorizationHeaderMalformed => "AuthorizationHeaderMalformed",
            Self::AuthorizationQueryParametersError => "AuthorizationQueryParametersError",
            Self::BadDigest => "BadDigest",
            Self::BadRequest => "BadRequest",
            Self::EntityTooLarge => "EntityTooLarge",
            Self::ExpiredToken => "ExpiredToken",
            Self::IncompleteBody => "IncompleteBody",
            Self::InternalError => "InternalError",
            Self::InvalidAccessKeyId => "InvalidAccessKeyId",
            Self::InvalidArgument => "InvalidArgument",
            Self::InvalidBucketName => "InvalidBucketName",
            Self::InvalidChunkSizeError => "InvalidChunkSizeError",
            Self::InvalidDigest => "InvalidDigest",
            Self::InvalidRequest => "InvalidRequest",
            Self::InvalidToken => "InvalidToken",
            Self::InvalidURI => "InvalidURI",
            Self::MalformedXML => "MalformedXML",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::MissingContentLength => "MissingContentLength",
            Self::MissingSecurityHeader => "MissingSecurityHeader",
            Self::NoSuchBucket => "NoSuchBucket",
            Self::NotImplemented => "NotImplemented",
            Self::RequestTimeout => "RequestTimeout",
            Self::RequestTimeTooSkewed => "RequestTimeTooSkewed",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            Self::SlowDown => "SlowDown",
            Self::XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
            Self::BadGateway => "BadGateway",
            Self::GatewayTimeout => "GatewayTimeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::AccessDenied
            | Self::AccessForbidden
            | Self::InvalidAccessKeyId
            | Self::RequestTimeTooSkewed
            | Self::SignatureDoesNotMatch => StatusCode::FORBIDDEN,
            Self::AuthorizationHeaderMalformed
            | Self::AuthorizationQueryParametersError
            | Self::BadDigest
            | Self::BadRequest
            | Self::EntityTooLarge
            | Self::ExpiredToken
            | Self::IncompleteBody
            | Self::InvalidArgument
            | Self::InvalidBucketName
            | Self::InvalidChunkSizeError
            | Self::InvalidDigest
            | Self::InvalidRequest
            | Self::InvalidToken
            | Self::InvalidURI
            | Self::MalformedXML
            | Self::MissingSecurityHeader
            | Self::RequestTimeout
            | Self::XAmzContentSHA256Mismatch => StatusCode::BAD_REQUEST,
            Self::MissingContentLength => StatusCode::LENGTH_REQUIRED,
            Self::NoSuchBucket => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ServiceUnavailable | Self::SlowDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// One gateway error, ready to be rendered as S3 error XML.
///
/// `message` is shown to clients: it must never contain a secret, a signature
/// or a backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub code: S3ErrorCode,
    pub message: String,
    pub resource: Option<String>,
}

impl S3Error {
    pub fn new(code: S3ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            resource: None,
        }
    }

    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Renders the `<Error>` document S3 clients parse.
    pub fn to_xml(&self, request_id: &str) -> String {
        let mut out = String::with_capacity(256);
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str("\n<Error><Code>");
        out.push_str(self.code.as_str());
        out.push_str("</Code><Message>");
        escape(&mut out, &self.message);
        out.push_str("</Message>");
        if let Some(resource) = &self.resource {
            out.push_str("<Resource>");
            escape(&mut out, resource);
            out.push_str("</Resource>");
        }
        out.push_str("<RequestId>");
        escape(&mut out, request_id);
        out.push_str("</RequestId></Error>");
        out
    }
}

impl std::fmt::Display for S3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for S3Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped_and_complete() {
        let err =
            S3Error::new(S3ErrorCode::NoSuchBucket, "no bucket <x> & co").with_resource("/a&b");
        let xml = err.to_xml("req-1");
        assert!(xml.contains("<Code>NoSuchBucket</Code>"));
        assert!(xml.contains("<Message>no bucket &lt;x&gt; &amp; co</Message>"));
        assert!(xml.contains("<Resource>/a&amp;b</Resource>"));
        assert!(xml.contains("<RequestId>req-1</RequestId>"));
        assert_eq!(S3ErrorCode::NoSuchBucket.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn auth_failures_are_forbidden() {
        for code in [
            S3ErrorCode::AccessDenied,
            S3ErrorCode::SignatureDoesNotMatch,
            S3ErrorCode::InvalidAccessKeyId,
            S3ErrorCode::RequestTimeTooSkewed,
        ] {
            assert_eq!(code.status(), StatusCode::FORBIDDEN, "{code:?}");
        }
        assert_eq!(
            S3ErrorCode::AuthorizationHeaderMalformed.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            S3ErrorCode::XAmzContentSHA256Mismatch.status(),
            StatusCode::BAD_REQUEST
        );
    }
}
