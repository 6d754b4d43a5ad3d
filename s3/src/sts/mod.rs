//! AWS STS at the S3 endpoint, without I/O: which requests are STS calls,
//! what their form parameters say, and the XML documents STS answers with.
//!
//! Only `AssumeRoleWithWebIdentity` is served (the one STS action an
//! unsigned client can call: the web identity token is the credential).
//! The AWS SDKs send it as a `POST /` with an
//! `application/x-www-form-urlencoded` body; `GET /?Action=…` works too.
//!
//! Errors are STS's `ErrorResponse` documents, not S3's `Error`: SDKs parse
//! the query protocol's shape for STS calls.

use std::borrow::Cow;

use http::{HeaderMap, Method, StatusCode, Uri};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::request::{vhost_bucket, HostConfig};
use crate::xml::escape;

/// The XML namespace of STS documents.
pub const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// The one API version STS has.
pub const VERSION: &str = "2011-06-15";

/// The action served.
pub const ASSUME_ROLE_WITH_WEB_IDENTITY: &str = "AssumeRoleWithWebIdentity";

/// Largest form body read (tokens are at most 20000 characters).
pub const MAX_BODY: usize = 64 << 10;

/// The shortest session AWS grants, in seconds; `DurationSeconds` below it
/// is refused.
pub const MIN_DURATION_SECONDS: u64 = 900;

/// What `DurationSeconds` defaults to.
pub const DEFAULT_DURATION_SECONDS: u64 = 3600;

/// The longest session a role may allow (AWS's 12 hours).
pub const MAX_DURATION_SECONDS: u64 = 43_200;

// === errors ===

/// The STS error codes s3gate answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StsErrorCode {
    /// The token is not valid: signature, issuer, audience, shape.
    InvalidIdentityToken,
    /// The token's `exp` has passed.
    ExpiredTokenException,
    /// The identity provider could not be reached to verify the token.
    IDPCommunicationError,
    /// The role does not exist, or the token does not satisfy it.
    AccessDenied,
    /// A parameter is missing or out of range.
    ValidationError,
    /// A parameter has a value s3gate does not accept.
    InvalidParameterValue,
    /// An action other than `AssumeRoleWithWebIdentity`.
    InvalidAction,
    /// No `Action` parameter.
    MissingAction,
    /// The request is valid, but s3gate could not answer it now (retried
    /// by SDKs).
    ServiceUnavailable,
}

impl StsErrorCode {
    pub const ALL: [Self; 9] = [
        Self::InvalidIdentityToken,
        Self::ExpiredTokenException,
        Self::IDPCommunicationError,
        Self::AccessDenied,
        Self::ValidationError,
        Self::InvalidParameterValue,
        Self::InvalidAction,
        Self::MissingAction,
        Self::ServiceUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidIdentityToken => "InvalidIdentityToken",
            Self::ExpiredTokenException => "ExpiredTokenException",
            Self::IDPCommunicationError => "IDPCommunicationError",
            Self::AccessDenied => "AccessDenied",
            Self::ValidationError => "ValidationError",
            Self::InvalidParameterValue => "InvalidParameterValue",
            Self::InvalidAction => "InvalidAction",
            Self::MissingAction => "MissingAction",
            Self::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    /// The code named `s`, if it is one of these.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::AccessDenied => StatusCode::FORBIDDEN,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An STS refusal. `message` is shown to the client: it never holds the
/// token or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsFault {
    pub code: StsErrorCode,
    pub message: String,
}

impl StsFault {
    pub fn new(code: StsErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new(StsErrorCode::ValidationError, message)
    }

    /// The `ErrorResponse` document of the query protocol.
    pub fn to_xml(&self, request_id: &str) -> String {
        let mut out = String::with_capacity(256 + self.message.len());
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str("\n<ErrorResponse xmlns=\"");
        out.push_str(NAMESPACE);
        out.push_str("\"><Error><Type>");
        out.push_str(if self.code.status().is_server_error() {
            "Receiver"
        } else {
            "Sender"
        });
        out.push_str("</Type><Code>");
        out.push_str(self.code.as_str());
        out.push_str("</Code><Message>");
        escape(&mut out, &self.message);
        out.push_str("</Message></Error><RequestId>");
        escape(&mut out, request_id);
        out.push_str("</RequestId></ErrorResponse>");
        out
    }
}

impl std::fmt::Display for StsFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for StsFault {}

// === recognising STS calls ===

/// How an STS call carries its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsCall {
    /// In the query string only (`GET /?Action=…`).
    Query,
    /// In a form body (and possibly the query string too).
    Form,
}

/// Whether a request is an STS call, and where its parameters are. Only
/// requests for the service root (`/` on a host that is not a
/// virtual-host bucket) can be: a form `POST`, or any request whose query
/// names an `Action`. Cheap for every other request: one comparison of the
/// path.
pub fn recognise(
    hosts: &HostConfig,
    method: &Method,
    uri: &Uri,
    host: Option<&str>,
    headers: &HeaderMap,
) -> Option<StsCall> {
    if uri.path() != "/" || host.is_some_and(|h| vhost_bucket(hosts, h).is_some()) {
        return None;
    }
    if method == Method::POST && is_form(headers) {
        return Some(StsCall::Form);
    }
    let query = uri.query().unwrap_or("");
    form_pairs(query.as_bytes())
        .any(|(name, _)| name == "Action")
        .then_some(StsCall::Query)
}

/// Whether the body is `application/x-www-form-urlencoded` (any charset).
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `name=value` pairs of a form (or query string), `+` and `%XX` decoded.
/// A pair that is not UTF-8 after decoding keeps its bytes lossily: it
/// can only fail validation later.
fn form_pairs(raw: &[u8]) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    raw.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (form_decode(name), form_decode(value))
        })
}

fn form_decode(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'+') && !raw.contains(&b'%') {
        return String::from_utf8_lossy(raw);
    }
    let plus_decoded: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let decoded: Vec<u8> = percent_encoding::percent_decode(&plus_decoded).collect();
    Cow::Owned(String::from_utf8_lossy(&decoded).into_owned())
}

// === parameters ===

/// The parameters of an `AssumeRoleWithWebIdentity` call, validated for
/// shape (whether the role exists and the token holds is the control
/// plane's business).
#[derive(Clone, PartialEq, Eq)]
pub struct WebIdentityParams {
    pub role_arn: String,
    pub role_session_name: String,
    /// The token, a trailing newline removed.
    pub web_identity_token: String,
    pub duration_seconds: Option<u64>,
    pub provider_id: Option<String>,
}

impl std::fmt::Debug for WebIdentityParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebIdentityParams")
            .field("role_arn", &self.role_arn)
            .field("role_session_name", &self.role_session_name)
            .field("web_identity_token", &"<redacted>")
            .field("duration_seconds", &self.duration_seconds)
            .field("provider_id", &self.provider_id)
            .finish()
    }
}

/// Reads an STS call from its query string and form body (empty for a
/// query call). A parameter given twice, in either or across both, is
/// refused: one parse, one meaning.
pub fn parse(query: &str, body: &[u8]) -> Result<WebIdentityParams, StsFault> {
    let mut params: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    for (name, value) in form_pairs(query.as_bytes()).chain(form_pairs(body)) {
        if params.iter().any(|(n, _)| *n == name) {
            return Err(StsFault::validation(format!(
                "parameter {} is given more than once",
                shown(&name)
            )));
        }
        params.push((name, value));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    };
    match get("Action") {
        None | Some("") => {
            return Err(StsFault::new(
                StsErrorCode::MissingAction,
                "the request needs an Action parameter",
            ))
        }
        Some(ASSUME_ROLE_WITH_WEB_IDENTITY) => {}
        Some(other) => {
            return Err(StsFault::new(
                StsErrorCode::InvalidAction,
                format!(
                    "could not find operation {} for version {VERSION}: this endpoint serves \
                     AssumeRoleWithWebIdentity only",
                    shown(other)
                ),
            ))
        }
    }
    match get("Version") {
        Some(VERSION) => {}
        None => return Err(StsFault::validation("the Version parameter is required")),
        Some(other) => {
            return Err(StsFault::new(
                StsErrorCode::InvalidAction,
                format!(
                    "could not find operation {ASSUME_ROLE_WITH_WEB_IDENTITY} for version {}",
                    shown(other)
                ),
            ))
        }
    }
    if get("Policy").is_some()
        || params
            .iter()
            .any(|(n, _)| n.starts_with("PolicyArns.") || n == "PolicyArns")
    {
        return Err(StsFault::new(
            StsErrorCode::InvalidParameterValue,
            "session policies (Policy, PolicyArns) are not supported by s3gate: what a session \
             may do is decided by s3gate's rules on its principal and groups",
        ));
    }
    let required = |name: &str| {
        get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StsFault::validation(format!("the {name} parameter is required")))
    };
    let role_arn = required("RoleArn")?;
    if !(20..=2048).contains(&role_arn.len()) {
        return Err(StsFault::validation(
            "RoleArn must be between 20 and 2048 characters long",
        ));
    }
    let role_session_name = required("RoleSessionName")?;
    if !valid_session_name(role_session_name) {
        return Err(StsFault::validation(
            "RoleSessionName must be 2 to 64 characters of letters, digits and +=,.@_-",
        ));
    }
    let token = required("WebIdentityToken")?.trim_end_matches(['\n', '\r']);
    if !(4..=20_000).contains(&token.len()) {
        return Err(StsFault::validation(
            "WebIdentityToken must be between 4 and 20000 characters long",
        ));
    }
    let duration_seconds = match get("DurationSeconds") {
        None => None,
        Some(d) => Some(
            Some(d)
                .filter(|d| (1..=10).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
                .ok_or_else(|| {
                    StsFault::new(
                        StsErrorCode::InvalidParameterValue,
                        "DurationSeconds must be a whole number of seconds",
                    )
                })?,
        ),
    };
    Ok(WebIdentityParams {
        role_arn: role_arn.to_owned(),
        role_session_name: role_session_name.to_owned(),
        web_identity_token: token.to_owned(),
        duration_seconds,
        provider_id: get("ProviderId")
            .filter(|p| !p.is_empty())
            .map(str::to_owned),
    })
}

/// AWS's pattern for RoleSessionName: `[\w+=,.@-]{2,64}`.
pub fn valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// A client-supplied value as quoted in a message: at most 64 characters,
/// so a huge parameter does not become a huge error.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    format!("{cut:?}")
}

// === the response ===

/// What an `AssumeRoleWithWebIdentityResponse` says.
pub struct WebIdentityResult<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub session_token: &'a str,
    /// Unix seconds.
    pub expiration: i64,
    pub subject: &'a str,
    pub audience: &'a str,
    pub provider: &'a str,
    pub assumed_role_arn: &'a str,
    pub assumed_role_id: &'a str,
}

impl WebIdentityResult<'_> {
    pub fn to_xml(&self, request_id: &str) -> String {
        let mut out = String::with_capacity(1024 + self.session_token.len());
        let element = |out: &mut String, name: &str, value: &str| {
            out.push('<');
            out.push_str(name);
            out.push('>');
            escape(out, value);
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        };
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
        out.push_str("\n<AssumeRoleWithWebIdentityResponse xmlns=\"");
        out.push_str(NAMESPACE);
        out.push_str("\"><AssumeRoleWithWebIdentityResult>");
        element(&mut out, "SubjectFromWebIdentityToken", self.subject);
        element(&mut out, "Audience", self.audience);
        out.push_str("<AssumedRoleUser>");
        element(&mut out, "Arn", self.assumed_role_arn);
        element(&mut out, "AssumedRoleId", self.assumed_role_id);
        out.push_str("</AssumedRoleUser><Credentials>");
        element(&mut out, "AccessKeyId", self.access_key_id);
        element(&mut out, "SecretAccessKey", self.secret_access_key);
        element(&mut out, "SessionToken", self.session_token);
        element(&mut out, "Expiration", &iso8601(self.expiration));
        out.push_str("</Credentials>");
        element(&mut out, "Provider", self.provider);
        out.push_str("</AssumeRoleWithWebIdentityResult><ResponseMetadata>");
        element(&mut out, "RequestId", request_id);
        out.push_str("</ResponseMetadata></AssumeRoleWithWebIdentityResponse>");
        out
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

// === session tokens ===

/// The SHA-256 of a session token: all a control plane keeps of it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is the token whose SHA-256 is `expected`, compared
/// in constant time.
pub fn token_matches(presented: &str, expected: &[u8; 32]) -> bool {
    token_hash_matches(&token_sha256(presented), expected)
}

/// Whether two token SHA-256s are equal, compared in constant time.
pub fn token_hash_matches(presented_sha256: &[u8; 32], expected: &[u8; 32]) -> bool {
    bool::from(presented_sha256.ct_eq(expected))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
