//! The data plane's own failures. Only `pipeline::respond` turns them into
//! S3 error responses; backend errors never pass through here.

use s3gate_s3::chunked::ChunkError;
use s3gate_s3::sigv4::VerifyError;
use s3gate_s3::{S3Error, S3ErrorCode};

use s3gate_proto::ControlPlaneError;

use crate::body::CollectError;
use crate::upstream::{BackendFailure, Cause};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request the gateway refuses on its face (bad path, unsupported op…).
    #[error("{0}")]
    S3(#[from] S3Error),
    #[error("authentication failed: {0}")]
    Auth(#[from] VerifyError),
    #[error("invalid aws-chunked body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("unknown access key")]
    UnknownAccessKey,
    /// No identity source accepted a token or certificate (the reason is
    /// for the log, never the client).
    #[error("credential not accepted: {0}")]
    NotAuthenticated(String),
    /// A token that was good but has expired (the reason is for the log).
    #[error("credential expired: {0}")]
    CredentialExpired(String),
    #[error("access denied: {reason}")]
    Denied {
        reason: String,
        /// The policy source and rule, when a policy decided (the audit
        /// log's `decided_by`); `None` for the gateway's own refusals.
        decided_by: Option<std::sync::Arc<str>>,
    },
    #[error("no such bucket")]
    NoSuchBucket,
    #[error("control plane unavailable: {0}")]
    ControlPlane(String),
    /// The gateway's own configuration cannot serve the request (a backend
    /// whose CA bundle does not load, an endpoint without a scheme…): the
    /// client gets 500 InternalError, the log the cause.
    #[error("configuration fault: {0}")]
    Config(String),
    #[error("upstream request failed: {0}")]
    Upstream(#[source] BoxError),
    /// The backend did not answer: unreachable, a TLS or proxy failure, a
    /// timeout, or its pool full. The log gets the backend and the cause.
    #[error("{0}")]
    Backend(#[from] BackendFailure),
}

impl Error {
    /// The S3 error a client sees. Messages never carry secrets or backend
    /// addresses.
    pub fn to_s3(&self) -> S3Error {
        match self {
            Self::S3(e) => e.clone(),
            Self::Auth(e) => S3Error::new(e.code(), auth_message(e)),
            Self::Chunk(e) => S3Error::new(e.code(), e.to_string()),
            Self::UnknownAccessKey => S3Error::new(
                S3ErrorCode::InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records.",
            ),
            Self::NotAuthenticated(_) => S3Error::new(
                S3ErrorCode::InvalidToken,
                "The provided token is malformed or otherwise invalid.",
            ),
            Self::CredentialExpired(_) => {
                S3Error::new(S3ErrorCode::ExpiredToken, "The provided token has expired.")
            }
            Self::Denied { .. } => S3Error::new(S3ErrorCode::AccessDenied, "Access Denied"),
            Self::NoSuchBucket => S3Error::new(S3ErrorCode::NoSuchBucket, "The specified bucket does not exist"),
            Self::ControlPlane(_) => S3Error::new(
                S3ErrorCode::ServiceUnavailable,
                "Please reduce your request rate or retry: the authorization service is unavailable.",
            ),
            Self::Upstream(_) => S3Error::new(S3ErrorCode::BadGateway, "The storage backend could not be reached."),
            Self::Backend(f) => backend_error(f.cause),
            Self::Config(_) => S3Error::new(
                S3ErrorCode::InternalError,
                "We encountered an internal error. Please try again.",
            ),
        }
    }

    /// The gateway is at a limit (in-flight requests, buffer budget): 503,
    /// which SDKs retry with backoff.
    pub fn slow_down() -> Self {
        Self::S3(S3Error::new(
            S3ErrorCode::SlowDown,
            "Please reduce your request rate.",
        ))
    }

    /// A body the gateway reads whole did not arrive in time.
    pub fn body_deadline() -> Self {
        Self::S3(S3Error::new(
            S3ErrorCode::RequestTimeout,
            "Your socket connection to the server was not read from or written to within the timeout period.",
        ))
    }

    /// A body the gateway reads whole could not be read.
    pub fn from_collect(e: CollectError) -> Self {
        match e {
            CollectError::TooLarge => Self::S3(S3Error::new(
                S3ErrorCode::EntityTooLarge,
                "request body is too large for this operation",
            )),
            CollectError::OverBudget => Self::slow_down(),
            CollectError::Body(e) => match e.downcast::<S3Error>() {
                Ok(s3) => Self::S3(*s3),
                Err(_) => Self::S3(S3Error::new(
                    S3ErrorCode::IncompleteBody,
                    "could not read the request body",
                )),
            },
        }
    }

    /// Whether this is the gateway's (or a backend's) fault rather than the
    /// client's: decides the log level.
    pub fn is_server_fault(&self) -> bool {
        match self {
            Self::ControlPlane(_) | Self::Upstream(_) | Self::Config(_) => true,
            // A full pool is load, not a fault: logged like shed requests.
            Self::Backend(f) => f.cause != Cause::PoolFull,
            _ => false,
        }
    }
}

/// The one mapping of control-plane answers to gateway errors: only an
/// unknown key and an unknown bucket are definitive, anything else fails
/// closed as 503.
impl From<&ControlPlaneError> for Error {
    fn from(e: &ControlPlaneError) -> Self {
        match e {
            ControlPlaneError::UnknownAccessKey => Self::UnknownAccessKey,
            ControlPlaneError::NotAuthenticated(m) => Self::NotAuthenticated(m.clone()),
            ControlPlaneError::SignatureMismatch => {
                Self::S3(s3gate_s3::sigv2::SigV2Error::SignatureMismatch.into())
            }
            ControlPlaneError::CredentialExpired(m) => Self::CredentialExpired(m.clone()),
            ControlPlaneError::NoSuchBucket => Self::NoSuchBucket,
            ControlPlaneError::InvalidBucketName(_) => Self::S3(S3Error::new(
                S3ErrorCode::InvalidBucketName,
                "The specified bucket is not valid.",
            )),
            ControlPlaneError::Unavailable(m) => Self::ControlPlane(m.clone()),
        }
    }
}

impl From<ControlPlaneError> for Error {
    fn from(e: ControlPlaneError) -> Self {
        Self::from(&e)
    }
}

/// What a client sees when a backend did not answer. All are statuses SDKs
/// retry (502, 503, 504): 503 when nothing reached the backend (safe to
/// retry anywhere), 502 when the backend's identity could not be verified
/// or the connection broke after the request went out, 504 when it did not
/// answer in time.
fn backend_error(cause: Cause) -> S3Error {
    match cause {
        Cause::PoolFull => S3Error::new(S3ErrorCode::SlowDown, "Please reduce your request rate."),
        Cause::ConnectRefused
        | Cause::ConnectTimeout
        | Cause::ConnectFailed
        | Cause::ProxyUnreachable
        | Cause::ProxyRefused => S3Error::new(
            S3ErrorCode::ServiceUnavailable,
            "The storage backend is unavailable. Please retry.",
        ),
        Cause::ProxyAuth | Cause::Tls | Cause::Reset | Cause::Other => S3Error::new(
            S3ErrorCode::BadGateway,
            "The storage backend could not be reached.",
        ),
        Cause::ResponseTimeout => S3Error::new(
            S3ErrorCode::GatewayTimeout,
            "The storage backend did not answer in time. Please retry.",
        ),
    }
}

fn auth_message(e: &VerifyError) -> String {
    match e.code() {
        S3ErrorCode::SignatureDoesNotMatch => {
            "The request signature we calculated does not match the signature you provided. Check your key and signing method."
                .to_owned()
        }
        _ => e.to_string(),
    }
}
