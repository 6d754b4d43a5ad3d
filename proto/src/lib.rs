//! The contract between the data plane and the control plane.
//!
//! The data plane never reads configuration: everything it knows about keys,
//! policy and backends it asks through [`ControlPlane`]. `s3gate serve` plugs
//! the embedded control plane in directly; the distributed mode puts a gRPC
//! client behind the same trait, generated from `proto/s3gate/v1/*.proto`
//! (the message types here mirror those messages one to one).
//!
//! Nothing here carries a client's long-term secret: the control plane hands
//! out derived SigV4 signing keys, scoped to one date, region and service,
//! and checks legacy SigV2 signatures itself.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use s3gate_s3::sigv4::SigningKey;
pub use s3gate_s3::sts::StsErrorCode;

pub mod buckets;
pub mod convert;
mod redacted;
pub mod trace;

pub use redacted::Redacted;

/// The generated protobuf messages and tonic services of `s3gate.v1`.
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod pb {
    include!("gen/s3gate.v1.rs");

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");
}

/// The generated messages, client and server of `s3gate.plugin.v1`
/// (`proto/s3gate/plugin/v1/plugin.proto`): the service the control plane
/// calls, which users implement (the Python SDK in `sdk/python`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod plugin_pb {
    include!("gen/s3gate.plugin.v1.rs");

    use std::fmt;

    // Secrets: the Debug impls are written by hand, redacted.

    impl fmt::Debug for LookupSecretResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("LookupSecretResponse")
                .field("found", &self.found)
                .field("secret", &"<redacted>")
                .field("principal", &self.principal)
                .field("groups", &self.groups)
                .finish()
        }
    }

    impl fmt::Debug for BucketCredentialsResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("BucketCredentialsResponse")
                .field("found", &self.found)
                .field("access_key", &self.access_key)
                .field("secret_key", &"<redacted>")
                .field("session_token", &"<redacted>")
                .field("per_principal", &self.per_principal)
                .field("expires_unix", &self.expires_unix)
                .finish()
        }
    }
}

/// Everything the data plane may ask the control plane.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// The derived signing key of an access key for one credential scope.
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError>;

    /// The principal behind a credential that is not an access key (a
    /// bearer token, a verified client certificate).
    async fn authenticate(
        &self,
        credential: PresentedCredential,
    ) -> Result<Identity, ControlPlaneError>;

    /// Verifies a legacy SigV2 signature where the secret lives: SigV2 is
    /// an HMAC-SHA1 under the raw secret, so nothing derived from it could
    /// be handed out instead. [`ControlPlaneError::UnknownAccessKey`] for a
    /// key no source knows, [`ControlPlaneError::SignatureMismatch`] for a
    /// signature that does not match. A control plane that cannot verify
    /// SigV2 says it is unavailable (the data plane fails closed).
    async fn verify_sigv2(&self, req: SigV2Request) -> Result<SigV2Grant, ControlPlaneError> {
        let _ = req;
        Err(ControlPlaneError::Unavailable(
            "this control plane does not verify SigV2".to_owned(),
        ))
    }

    /// An authorization decision for one principal, action and resource.
    async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError>;

    /// How to reach the backend of a bucket, with credentials to sign for it.
    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError>;

    /// The route of a bucket for one (authenticated) principal: the same
    /// as [`ControlPlane::route`] unless the bucket's credentials come from
    /// a source that answers per principal, in which case they are this
    /// principal's (and [`BackendCredentials::per_principal`] says so).
    async fn route_for(
        &self,
        bucket: &str,
        principal: &Principal,
    ) -> Result<Route, ControlPlaneError> {
        let _ = principal;
        self.route(bucket).await
    }

    /// A bucket's CORS rules, for preflights, which carry no identity.
    /// Unlike [`ControlPlane::route`], this asks no credential source: a
    /// bucket whose credentials are per principal has no shared route, and
    /// its rules are the bucket's anyway. The default answers from the
    /// shared route.
    async fn bucket_cors(&self, bucket: &str) -> Result<BucketCors, ControlPlaneError> {
        let route = self.route(bucket).await?;
        Ok(BucketCors {
            rules: route.cors,
            ttl: route.ttl,
        })
    }

    /// What answering ListBuckets for `principal` takes: the bucket
    /// entries, the default backend, and credentials to list each backend
    /// that serves any of them. The default: unavailable (ListBuckets then
    /// answers 503).
    async fn listing(&self, principal: &Principal) -> Result<Listing, ControlPlaneError> {
        let _ = principal;
        Err(ControlPlaneError::Unavailable(
            "this control plane gives no bucket listing".to_owned(),
        ))
    }

    /// The configured buckets `principal` may see (for ListBuckets).
    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError>;

    /// STS `AssumeRoleWithWebIdentity`: a temporary session for a verified
    /// web identity token. A control plane that issues no sessions refuses.
    async fn assume_role_with_web_identity(
        &self,
        req: WebIdentityRequest,
    ) -> Result<AssumedRole, StsError> {
        let _ = req;
        Err(StsError::Unavailable(
            "this control plane issues no sessions".to_owned(),
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("unknown access key")]
    UnknownAccessKey,
    /// No identity source accepted the credential; the reason is for logs.
    #[error("credential not accepted: {0}")]
    NotAuthenticated(String),
    /// A SigV2 signature that the access key's secret did not produce.
    #[error("signature does not match")]
    SignatureMismatch,
    /// The credential was good but has expired (S3 `ExpiredToken`); the
    /// reason is for logs.
    #[error("credential expired: {0}")]
    CredentialExpired(String),
    #[error("no such bucket")]
    NoSuchBucket,
    /// A name a pattern or the default backend would serve, but which is
    /// no valid S3 bucket name (as the client gave it, or as its template
    /// makes it).
    #[error("invalid bucket name {0:?}")]
    InvalidBucketName(String),
    /// The control plane could not decide. The data plane fails closed.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
}

// === identity ===

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The principal name; `*anonymous*` for unauthenticated requests.
    pub name: Arc<str>,
    pub groups: Arc<[Arc<str>]>,
    /// The access key that authenticated the request, if any.
    pub access_key: Option<Arc<str>>,
}

impl Principal {
    pub const ANONYMOUS: &'static str = "*anonymous*";

    pub fn anonymous() -> Self {
        Self {
            name: Arc::from(Self::ANONYMOUS),
            groups: Arc::from([]),
            access_key: None,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        &*self.name == Self::ANONYMOUS
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SigningKeyRequest {
    pub access_key: String,
    /// `YYYYMMDD` from the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// SHA-256 of the request's `X-Amz-Security-Token`, if any: an expired
    /// session's key (whose secret is gone, so no signature can be checked)
    /// is answered `ExpiredToken` only to a caller that shows its token.
    pub security_token_sha256: Option<[u8; 32]>,
}

#[derive(Clone)]
pub struct SigningKeyGrant {
    pub key: SigningKey,
    pub principal: Principal,
    /// How long the data plane may cache this grant (never past a session's
    /// expiry).
    pub ttl: Duration,
    /// For a temporary (STS session) key: what a request must also carry.
    /// `None` for a long-term key.
    pub session: Option<Arc<SessionGrant>>,
}

/// What binds requests signed with a session's key to that session.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// SHA-256 of the session token: a request's `X-Amz-Security-Token`
    /// must hash to it.
    pub token_sha256: [u8; 32],
    /// Unix seconds after which the key is refused (`ExpiredToken`).
    pub expires_unix: i64,
    /// The web identity token's claims, for policy.
    pub claims: Arc<[(String, String)]>,
}

impl fmt::Debug for SigningKeyGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyGrant")
            .field("key", &"<redacted>")
            .field("principal", &self.principal)
            .field("ttl", &self.ttl)
            .field("session", &self.session)
            .finish()
    }
}

impl fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGrant")
            .field("token_sha256", &"<redacted>")
            .field("expires_unix", &self.expires_unix)
            .field("claims", &self.claims.len())
            .finish()
    }
}

/// A SigV2 signature to check: the string to sign the data plane rebuilt
/// from the request, and the signature the client presented.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SigV2Request {
    pub access_key: String,
    pub string_to_sign: String,
    /// HMAC-SHA1, 20 bytes.
    pub signature: [u8; 20],
}

impl fmt::Debug for SigV2Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigV2Request")
            .field("access_key", &self.access_key)
            .field(
                "string_to_sign",
                &format_args!("<{} bytes>", self.string_to_sign.len()),
            )
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Who signed a SigV2 request whose signature matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV2Grant {
    pub principal: Principal,
    /// How long the data plane may reuse this answer for the same request
    /// (access key, string to sign, signature).
    pub ttl: Duration,
}

/// A credential the data plane cannot check alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PresentedCredential {
    /// A bearer token (a JWT), as presented.
    BearerToken(Redacted<String>),
    /// A client certificate whose chain the data plane verified.
    ClientCertificate {
        /// The leaf certificate, DER.
        der: Arc<[u8]>,
        /// The identity read from it (CN or a SAN, as configured).
        name: String,
    },
}

/// Who a [`PresentedCredential`] belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// How long the data plane may cache this; never past the credential's
    /// own expiry.
    pub ttl: Duration,
    /// The identity source that vouched (`jwt`, `mtls`); the provider that
    /// issued a token is among the claims.
    pub source: Arc<str>,
    /// Claims a policy may look at.
    pub claims: Arc<[(String, String)]>,
}

// === STS ===

/// An `AssumeRoleWithWebIdentity` call, as the data plane read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentityRequest {
    pub role_arn: String,
    pub role_session_name: String,
    /// The web identity token (a JWT).
    pub token: Redacted<String>,
    /// `DurationSeconds`, when given.
    pub duration_seconds: Option<u64>,
    /// `ProviderId`, when given.
    pub provider_id: Option<String>,
}

/// A session minted for a web identity: what the client gets, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumedRole {
    /// `ASIA…`, 20 characters.
    pub access_key: String,
    pub secret_key: Redacted<String>,
    pub session_token: Redacted<String>,
    /// Unix seconds.
    pub expires_unix: i64,
    /// The token's `sub`.
    pub subject: String,
    /// The token's audience.
    pub audience: String,
    /// The token's issuer.
    pub provider: String,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session name>`.
    pub assumed_role_arn: String,
    /// `AROA…:<session name>`.
    pub assumed_role_id: String,
    /// The session's principal (for the access log).
    pub principal: String,
}

/// Why no session was minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// Refused: the client sees this STS error.
    #[error("{code:?}: {message}")]
    Refused { code: StsErrorCode, message: String },
    /// Could not decide (a store or transport failure). Never a session.
    #[error("sts unavailable: {0}")]
    Unavailable(String),
}

impl StsError {
    pub fn refused(code: StsErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }
}

// === authorization ===

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub principal: Principal,
    /// IAM-style action, e.g. `s3:GetObject`. Borrowed in the data plane,
    /// owned when it arrived over the network.
    pub action: Cow<'static, str>,
    pub bucket: String,
    pub resource: Resource,
    /// What else is known about the request. Decisions are cached without
    /// it: a source whose answer depends on it answers with
    /// [`Scope::Exact`] and a zero TTL.
    pub context: RequestContext,
}

/// The request's circumstances, for policy sources that look at them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub client_ip: Option<std::net::IpAddr>,
    /// `key`, `sts`, `jwt`, `mtls` or `anonymous`: the identity source.
    pub identity_source: Cow<'static, str>,
    pub claims: Arc<[(String, String)]>,
    pub method: Cow<'static, str>,
    /// The headers of [`RequestContext::HEADERS`] the request carried.
    pub headers: Vec<(&'static str, String)>,
}

impl RequestContext {
    /// The request headers a policy may look at (lower-case).
    pub const HEADERS: &'static [&'static str] = &[
        "content-type",
        "x-amz-acl",
        "x-amz-server-side-encryption",
        "x-amz-server-side-encryption-aws-kms-key-id",
        "x-amz-storage-class",
        "x-amz-object-lock-mode",
    ];

    /// The static name of a [`RequestContext::HEADERS`] entry.
    pub fn header_name(name: &str) -> Option<&'static str> {
        Self::HEADERS
            .iter()
            .copied()
            .find(|h| h.eq_ignore_ascii_case(name))
    }
}

/// What inside the bucket a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// The bucket itself (HeadBucket, bucket sub-resources, …).
    Bucket,
    /// One object.
    Object(String),
    /// A listing of the keys under this prefix (`""` = the whole bucket).
    Prefix(String),
}

impl Resource {
    /// The kind, without the key: part of every cache key, because the same
    /// action (`s3:ListBucket`) can address both a bucket and a prefix.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::Bucket => ResourceKind::Bucket,
            Self::Object(_) => ResourceKind::Object,
            Self::Prefix(_) => ResourceKind::Prefix,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Bucket => None,
            Self::Object(k) | Self::Prefix(k) => Some(k),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Bucket,
    Object,
    Prefix,
}

/// What a decision is valid for, so the data plane can cache it for every
/// request the decision equally covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Only this exact (principal, action, bucket, key).
    Exact,
    /// Every key of the bucket starting with this prefix.
    Prefix(String),
    /// Every key of the bucket, and the bucket itself.
    Bucket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// Human-readable: which rule decided, or why nothing matched.
    pub reason: String,
    pub scope: Scope,
    pub ttl: Duration,
    /// What decided: the policy source, and inside it the rule or path
    /// (`rules:readers`); `None` when nothing allowed (the default deny).
    /// Shared, as the decision is cloned out of caches per request.
    pub decided_by: Option<std::sync::Arc<str>>,
}

// === routing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressingStyle {
    Path,
    Virtual,
}

/// How to reach a backend. Shared by all buckets on that backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    /// `http://host:port` or `https://host[:port]`, without path.
    pub endpoint: String,
    pub region: String,
    pub addressing_style: AddressingStyle,
    /// PEM file of extra CA certificates trusted for this backend.
    pub ca_bundle: Option<String>,
    /// Development only: accept any certificate.
    pub insecure_skip_verify: bool,
    /// Refuse keys with `.`/`..` segments or a leading `/`
    /// (`s3gate_s3::request::check_key_segments`); off only for backends
    /// that store keys literally. On the wire as its negation
    /// (`literal_keys`), so an absent field keeps it on.
    pub key_segment_guard: bool,
    /// How the data plane reaches the backend (an egress proxy or not).
    pub egress: Egress,
    /// Connection-pool limit and timeouts.
    pub limits: BackendLimits,
}

/// The egress proxy towards one backend. With no `proxy`, the data plane's
/// environment decides (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
/// `NO_PROXY`, as curl reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Egress {
    /// `http://host:port`: HTTP CONNECT tunnels to https backends,
    /// absolute-form requests to http ones. Never with credentials in it.
    pub proxy: Option<String>,
    /// Hosts, domains (and their subdomains), addresses or CIDRs reached
    /// directly, as in `NO_PROXY`. Applies to the environment's proxy too.
    pub no_proxy: Vec<String>,
    /// `env:VAR`: the variable in the data plane's own environment holding
    /// `user:password` for `Proxy-Authorization: Basic`. A reference, so
    /// the secret never travels over gRPC nor sits in Redis.
    pub proxy_credentials: Option<String>,
}

impl Egress {
    /// Checks what a config file or an Admin API call gives: the proxy an
    /// `http://host:port` URL without credentials or path, the credentials
    /// an `env:` reference, `no_proxy` entries non-empty.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(proxy) = &self.proxy {
            validate_proxy_url(proxy)?;
        }
        if let Some(creds) = &self.proxy_credentials {
            let var = creds.strip_prefix("env:").ok_or_else(|| {
                "proxy_credentials must be an env: reference (env:VAR holding user:password), \
                 so the secret stays in the data plane's environment"
                    .to_owned()
            })?;
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(format!("proxy_credentials: {var:?} is not a variable name"));
            }
            if self.proxy.is_none() {
                return Err("proxy_credentials needs a proxy".to_owned());
            }
        }
        for entry in &self.no_proxy {
            let entry = entry.trim();
            if entry.is_empty() || entry.contains(',') || entry.contains(char::is_whitespace) {
                return Err(format!(
                    "no_proxy entry {entry:?} must be one host, domain, address or CIDR"
                ));
            }
        }
        Ok(())
    }
}

/// The one kind of egress proxy supported: plain `http://host:port`.
fn validate_proxy_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        "proxy must be an http:// URL (https:// and socks proxies are not supported)".to_owned()
    })?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('@') {
        return Err(
            "proxy must not carry credentials: use proxy_credentials = \"env:VAR\"".to_owned(),
        );
    }
    if authority.is_empty() || authority.contains(['/', '?', '#']) {
        return Err("proxy must be http://host:port, without a path".to_owned());
    }
    // host, host:port, [v6] or [v6]:port
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("proxy {url:?} is not a URL"))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !host_ok || port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
        return Err(format!("proxy {url:?} must be http://host:port"));
    }
    Ok(())
}

/// Requests in flight to one backend when the config says nothing.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
/// Time to a backend's response headers when the config says nothing.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// A backend's connection-pool limit and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendLimits {
    /// Requests in flight to the backend at once, each holding one
    /// connection from request to the end of its response body. More wait
    /// briefly for a slot, then get 503 SlowDown.
    pub max_connections: u32,
    /// TCP connect, proxy CONNECT and TLS handshake together; `None`: the
    /// data plane's `--upstream-connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// From the request sent (the last byte of its body) to the response
    /// headers.
    pub response_timeout: Duration,
}

impl Default for BackendLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            connect_timeout: None,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

impl BackendLimits {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".to_owned());
        }
        if self.connect_timeout.is_some_and(|t| t.is_zero()) {
            return Err("connect_timeout must be positive".to_owned());
        }
        if self.response_timeout.is_zero() {
            return Err("response_timeout must be positive".to_owned());
        }
        Ok(())
    }
}

/// What the data plane authenticates backend requests with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendCredentials {
    pub auth: BackendAuth,
    /// Unix seconds after which temporary credentials stop working; `None`
    /// for static ones. The data plane refreshes a route before this.
    pub expires_unix: Option<i64>,
    /// The requesting principal's own credentials: the data plane caches
    /// the route per (bucket, principal). `false`: shared by everyone.
    pub per_principal: bool,
}

/// One variant per way of authenticating to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAuth {
    /// AWS Signature Version 4 with an access key pair; a session token
    /// makes it temporary.
    SigV4 {
        access_key: String,
        secret_key: Redacted<String>,
        session_token: Option<Redacted<String>>,
    },
    /// `Authorization: Bearer <token>` instead of a signature (IBM Cloud
    /// Object Storage with an IAM token); `ibm-service-instance-id` too
    /// when set.
    Bearer {
        token: Redacted<String>,
        service_instance_id: Option<String>,
    },
}

impl BackendCredentials {
    /// What may be shown of them (the access key id; empty for a bearer
    /// token); never a secret.
    pub fn public_id(&self) -> &str {
        match &self.auth {
            BackendAuth::SigV4 { access_key, .. } => access_key,
            BackendAuth::Bearer { .. } => "",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// The name clients use.
    pub bucket: String,
    /// The bucket's name at the backend.
    pub backend_bucket: String,
    pub backend: Arc<Backend>,
    pub credentials: Arc<BackendCredentials>,
    pub ttl: Duration,
    /// The bucket's CORS rules, in order; empty: CORS is not enabled.
    /// Shared, as the bucket's placement is, by every route handed out.
    pub cors: Arc<[CorsRule]>,
}

/// What a data plane needs to answer ListBuckets (see
/// [`ControlPlane::listing`]).
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Exact names and patterns with their templates and backends.
    pub entries: Vec<BucketEntry>,
    /// The backend for names no entry matches; `None`: off.
    pub default_backend: Option<String>,
    /// One per (backend, credentials) serving any entry or the default.
    pub backends: Vec<BackendListing>,
}

/// One bucket entry: an exact name or a glob, its backend, and its
/// `backend_bucket` template (`{name}`: the client's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketEntry {
    pub name: String,
    pub backend: String,
    pub backend_bucket: String,
}

/// A backend to list, and what to sign the listing with.
#[derive(Debug, Clone)]
pub struct BackendListing {
    pub backend: Arc<Backend>,
    pub credentials: Arc<BackendCredentials>,
}

impl Listing {
    /// The entries in lookup form, with each entry's backend name.
    pub fn table(&self) -> Result<buckets::Table<String>, String> {
        let mut table = buckets::Table::default();
        for e in &self.entries {
            let template = buckets::Template::parse(Some(&e.backend_bucket))?;
            table.insert(&e.name, template, e.backend.clone())?;
        }
        table.set_default(self.default_backend.clone());
        Ok(table)
    }
}

/// A bucket's CORS rules without its route (see
/// [`ControlPlane::bucket_cors`]).
#[derive(Debug, Clone)]
pub struct BucketCors {
    /// In order; empty: CORS is not enabled.
    pub rules: Arc<[CorsRule]>,
    /// How long they may be cached (the route's TTL).
    pub ttl: Duration,
}

/// One CORS rule of a bucket, as S3's `CORSRule`: which origins may use
/// which methods, which request headers a preflight may ask for, which
/// response headers a page may read, and how long a browser may cache a
/// preflight answer. Checked when it enters the state (the control plane's
/// `state::validate_cors`); the data plane only matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsRule {
    /// Each with at most one `*`; `*` alone allows every origin.
    pub allowed_origins: Vec<String>,
    /// Among GET, PUT, HEAD, POST, DELETE.
    pub allowed_methods: Vec<String>,
    /// Case-insensitive, at most one `*` each.
    pub allowed_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Seconds.
    pub max_age: Option<u64>,
}

// === invalidation ===

/// What a control plane tells data planes to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// An access key was created, revoked or rotated.
    Key(String),
    /// Rules changed: every cached decision is suspect.
    Policy,
    /// A bucket's route or backend changed. May be a glob (a pattern
    /// entry, or `*` when the default backend changed): every route and
    /// remembered unknown bucket it matches goes.
    Bucket(String),
    /// Forget everything (e.g. after missing events).
    All,
}
