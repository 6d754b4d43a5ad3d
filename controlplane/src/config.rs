//! The TOML file that seeds a control plane (and, in `s3gate serve`, also
//! carries the data plane's listen address, region and base domains).
//!
//! Secrets may be written inline or as `env:VAR` references, resolved once at
//! load time. Every secret is held in [`Secret`], whose `Debug` is redacted.
//!
//! Every problem is reported with its place: the file, line and column, and
//! the section and entry (`backends[0] ("local")`, `rules[2] (r003)`) or
//! field (`listen`, `cache.key_ttl`), followed by the offending line.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3gate_proto::{BackendLimits, Egress};
use serde::{Deserialize, Serialize};

use crate::credential::CredentialSpec;
use crate::state::{
    valid_access_key, valid_endpoint, valid_principal, valid_resource, validate_cors,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of a config file. The message says where.
    #[error("{0}")]
    Parse(String),
    /// Well-formed, but not a valid configuration. The message says where.
    #[error("{0}")]
    Invalid(String),
}

/// A secret string. `Debug` never shows it.
pub type Secret = s3gate_proto::Redacted<String>;

/// Resolves an `env:VAR` reference in place; an empty secret is an error.
fn resolve(secret: &mut Secret, field: &str) -> Result<(), String> {
    if let Some(var) = secret.expose().strip_prefix("env:") {
        let value = std::env::var(var)
            .map_err(|_| format!("{field}: environment variable {var} is not set"))?;
        *secret = Secret::new(value);
    }
    if secret.expose().is_empty() {
        return Err(format!("{field}: secret is empty"));
    }
    Ok(())
}

/// What [`FileConfig::restart_only`] gives: settings by name and value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartOnly {
    serve: bool,
    settings: Vec<(&'static str, String)>,
}

impl RestartOnly {
    /// The names of the settings `file` sets otherwise than these.
    pub fn differing(&self, file: &FileConfig) -> Vec<&'static str> {
        let now = file.restart_only(self.serve);
        self.settings
            .iter()
            .zip(&now.settings)
            .filter(|(a, b)| a != b)
            .map(|((name, _), _)| *name)
            .collect()
    }
}

/// How strict [`FileConfig::load_with`] is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Accept a file that configures no backend, bucket, key or rule: a
    /// control plane whose state lives in Redis may read only `[cache]`
    /// from it.
    pub allow_empty: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address of the S3 listener (data plane).
    pub listen: Option<SocketAddr>,
    /// The region clients sign requests for.
    #[serde(default = "default_region")]
    pub region: String,
    /// Base domains for virtual-host-style requests (`<bucket>.<domain>`).
    #[serde(default)]
    pub base_domains: Vec<String>,
    /// Peers (CIDRs or addresses) whose `Forwarded` / `X-Forwarded-*`
    /// headers are believed: the client's address, scheme and host. From
    /// any other peer those headers change nothing.
    #[serde(default, deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// `[[buckets]]`: exact names and patterns (`team-*`).
    #[serde(default)]
    pub buckets: Vec<BucketConfig>,
    /// The backend serving bucket names no `[[buckets]]` entry matches;
    /// unset: such names do not exist (NoSuchBucket).
    #[serde(default)]
    pub default_backend: Option<String>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// `[[oidc]]`: identity providers whose tokens the control plane
    /// verifies (bearer tokens, web identities).
    #[serde(default)]
    pub oidc: Vec<OidcConfig>,
    /// Roles STS `AssumeRoleWithWebIdentity` grants sessions for.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// `[[policy]]`: the decision sources, asked in order (an explicit deny
    /// from any wins; no allow means deny). None: the built-in `[[rules]]`
    /// alone.
    #[serde(default)]
    pub policy: Vec<PolicyConfig>,
    /// `[[identity]]`: where the secrets of access keys that are not
    /// s3gate-issued are looked up, asked in order after the built-in keys.
    #[serde(default)]
    pub identity: Vec<IdentityConfig>,
    /// What clients may cost the gateway (`s3gate serve`; flags override).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The HTTPS listener (`s3gate serve`), and client certificates.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How clients may authenticate (`s3gate serve`).
    #[serde(default)]
    pub auth: AuthConfig,
    /// What is valid but probably not meant (a rule resource naming no
    /// configured bucket), each with its place; whoever loads the file
    /// shows them.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The text and name the file was parsed from, to place problems found
    /// after loading ([`FileConfig::invalid_at`]).
    #[serde(skip)]
    origin: Option<Origin>,
}

#[derive(Clone)]
struct Origin {
    text: String,
    name: Option<String>,
}

impl std::fmt::Debug for Origin {
    // The text holds whatever secrets the file writes inline.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `[tls]`: the HTTPS listener of `s3gate serve` (HTTP/1.1 and HTTP/2 by
/// ALPN) and client certificates (mTLS). Relative paths are relative to the
/// config file's directory ([`FileConfig::relative_to`]). Certificate and
/// key are read when s3gate starts, and again on SIGHUP or when the files
/// change.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Address of the HTTPS listener [default: 127.0.0.1:9443].
    pub listen: Option<SocketAddr>,
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub principal_from: PrincipalFrom,
}

/// Whether the TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; a connection without one is served (its requests sign or
    /// are anonymous), one with a certificate that does not verify is refused.
    Optional,
    /// A connection without a verified client certificate is refused.
    Required,
}

/// Which name of a client certificate becomes the principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalFrom {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS name of the subject alternative names.
    SanDns,
    /// The first URI of the subject alternative names (a SPIFFE ID, say).
    SanUri,
    /// The first email address of the subject alternative names.
    SanEmail,
}

impl TlsConfig {
    /// Where the HTTPS listener listens when neither the file nor a flag says.
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9443";
}

/// `[auth]`: which client signatures the data plane accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Legacy SigV2 (`Authorization: AWS key:signature`, presigned
    /// `AWSAccessKeyId`/`Signature`/`Expires`), verified by the control
    /// plane. On by default, as S3 still accepts it; `false` refuses it
    /// with 400 InvalidRequest.
    #[serde(default = "default_true")]
    pub sigv2: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { sigv2: true }
    }
}

fn default_true() -> bool {
    true
}

/// `[limits]`: unset fields take the data plane's defaults. The data plane
/// documents each one (`s3gate_dataplane::Limits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: Option<usize>,
    pub max_requests: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub body_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub body_deadline: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub send_timeout: Option<Duration>,
    /// Bytes, as a number or with a unit: `"32MiB"`.
    #[serde(default, deserialize_with = "bytes_opt")]
    pub buffer_budget: Option<usize>,
}

/// Parses a byte count: `1048576`, `64KiB`, `32MiB`, `1GiB` (also `K`, `M`,
/// `G`, `KB`, `MB`, `GB`, all powers of 1024).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid byte count {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown byte unit {other:?} in {s:?}")),
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("byte count {s:?} is too large"))
}

fn bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(usize),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => parse_bytes(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Optional `"30s"`-style durations in TOML.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// How long the data plane may keep what the control plane told it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_decision_ttl", with = "humantime_serde_compat")]
    pub decision_ttl: Duration,
    #[serde(default = "default_key_ttl", with = "humantime_serde_compat")]
    pub key_ttl: Duration,
    #[serde(default = "default_route_ttl", with = "humantime_serde_compat")]
    pub route_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            decision_ttl: default_decision_ttl(),
            key_ttl: default_key_ttl(),
            route_ttl: default_route_ttl(),
        }
    }
}

/// `[[backends]]`. The credential is either a `credentials = { kind = … }`
/// table or, for static HMAC keys, the flat `access_key`/`secret_key`/
/// `session_token` fields; either way it reaches the rest of s3gate as one
/// [`CredentialSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawBackendConfig")]
pub struct BackendConfig {
    pub name: String,
    pub endpoint: String,
    pub region: String,
    pub addressing_style: AddressingStyleConfig,
    pub credentials: CredentialSpec,
    pub ca_bundle: Option<String>,
    pub insecure_skip_verify: bool,
    /// Refuse keys with `.`/`..` segments or a leading `/` on this backend
    /// (`s3gate_s3::request::check_key_segments`). On by default: a backend
    /// that resolves keys as paths would let `reports/../x` out of a
    /// `reports/*` grant. Off only for backends that store keys literally.
    pub key_segment_guard: bool,
    /// `proxy`, `no_proxy`, `proxy_credentials`: the egress proxy towards
    /// the backend (none: the data plane's environment decides).
    pub egress: Egress,
    /// `max_connections`, `connect_timeout`, `response_timeout`.
    pub limits: BackendLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendConfig {
    name: String,
    endpoint: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    addressing_style: AddressingStyleConfig,
    #[serde(default)]
    credentials: Option<CredentialSpec>,
    #[serde(default)]
    access_key: Option<String>,
    #[serde(default)]
    secret_key: Option<Secret>,
    #[serde(default)]
    session_token: Option<Secret>,
    #[serde(default)]
    ca_bundle: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    #[serde(default = "yes")]
    key_segment_guard: bool,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    no_proxy: Vec<String>,
    #[serde(default)]
    proxy_credentials: Option<String>,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    response_timeout: Option<Duration>,
}

fn yes() -> bool {
    true
}

// The place (`backends[1] ("name")`) is added where the error is reported.
const BOTH_CREDENTIALS: &str =
    "give either `credentials = { kind = … }` or access_key/secret_key, not both";
const NO_CREDENTIALS: &str = "needs `credentials = { kind = … }` or access_key and secret_key";

impl TryFrom<RawBackendConfig> for BackendConfig {
    type Error = String;

    fn try_from(raw: RawBackendConfig) -> Result<Self, String> {
        let flat =
            raw.access_key.is_some() || raw.secret_key.is_some() || raw.session_token.is_some();
        let credentials = match (raw.credentials, flat) {
            (Some(spec), false) => spec,
            (Some(_), true) => return Err(BOTH_CREDENTIALS.to_owned()),
            (None, _) => match (raw.access_key, raw.secret_key) {
                (Some(access_key), Some(secret_key)) => CredentialSpec::StaticHmac {
                    access_key,
                    secret_key,
                    session_token: raw.session_token,
                },
                _ => return Err(NO_CREDENTIALS.to_owned()),
            },
        };
        let egress = Egress {
            proxy: raw.proxy.map(|p| p.trim_end_matches('/').to_owned()),
            no_proxy: raw.no_proxy.iter().map(|e| e.trim().to_owned()).collect(),
            proxy_credentials: raw.proxy_credentials,
        };
        egress.validate()?;
        let defaults = BackendLimits::default();
        let limits = BackendLimits {
            max_connections: raw.max_connections.unwrap_or(defaults.max_connections),
            connect_timeout: raw.connect_timeout,
            response_timeout: raw.response_timeout.unwrap_or(defaults.response_timeout),
        };
        limits.validate()?;
        Ok(Self {
            name: raw.name,
            endpoint: raw.endpoint,
            region: raw.region,
            addressing_style: raw.addressing_style,
            credentials,
            ca_bundle: raw.ca_bundle,
            insecure_skip_verify: raw.insecure_skip_verify,
            key_segment_guard: raw.key_segment_guard,
            egress,
            limits,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AddressingStyleConfig {
    #[default]
    Path,
    Virtual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// An exact bucket name, or a glob over client bucket names (`*`: any
    /// run of characters, `?`: one).
    pub name: String,
    pub backend: String,
    /// The name at the backend; `{name}` stands for the client's name
    /// (`prod-{name}`). Default: the client's name.
    #[serde(default)]
    pub backend_bucket: Option<String>,
    /// `[[buckets.cors]]`: the bucket's CORS rules, in order.
    #[serde(default)]
    pub cors: Vec<CorsRuleConfig>,
    /// `credentials = { kind = "plugin", url = "…", timeout = "…" }`: the
    /// backend credentials come from this source, per principal when it
    /// says so, instead of from the backend's record.
    #[serde(default)]
    pub credentials: Option<crate::credential::BucketCredentialSource>,
}

/// One `[[buckets.cors]]` rule; the names mirror S3's `CORSRule`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsRuleConfig {
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds.
    #[serde(default)]
    pub max_age: Option<u64>,
}

impl CorsRuleConfig {
    pub fn to_rule(&self) -> crate::state::CorsRule {
        crate::state::CorsRule {
            allowed_origins: self.allowed_origins.clone(),
            allowed_methods: self.allowed_methods.clone(),
            allowed_headers: self.allowed_headers.clone(),
            expose_headers: self.expose_headers.clone(),
            max_age: self.max_age,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub access_key: String,
    pub secret_key: Secret,
    pub principal: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub effect: Effect,
    pub principals: Vec<String>,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

/// `[[oidc]]`: an OpenID Connect provider. Its discovery document is read
/// from `{issuer}/.well-known/openid-configuration`, its keys from the
/// `jwks_uri` named there (`crate::oidc`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// What roles and logs call the provider.
    pub name: String,
    /// The provider's issuer URL, exactly as its tokens' `iss` claim says it.
    pub issuer: String,
    /// A token must name at least one of these in its `aud` claim.
    pub audiences: Vec<String>,
    /// The claim whose (string) value is the principal.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// The claim holding the principal's groups: a string or an array of
    /// strings. None: tokens carry no groups.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// PEM file of CA certificates trusted for the provider's https
    /// endpoints (besides the webpki roots), for a private IdP.
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

fn default_principal_claim() -> String {
    "sub".to_owned()
}

/// `[[roles]]`: what a client passes as `RoleArn` to STS
/// `AssumeRoleWithWebIdentity`, which identity provider's tokens it takes,
/// and what the session gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// `arn:aws:iam::<account>:role/<name>`, as clients pass it.
    pub arn: String,
    /// The `[[oidc]]` provider whose tokens this role accepts.
    pub oidc: String,
    /// Added to the token's groups in the session.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Claims the token must carry: a string claim equal to the value, an
    /// array claim containing it; a list of values requires every one.
    #[serde(default)]
    pub require_claims: BTreeMap<String, ClaimValues>,
    /// The longest session (`DurationSeconds`) granted: 15m to 12h.
    #[serde(default = "default_max_session", with = "humantime_serde_compat")]
    pub max_session: Duration,
}

/// The value(s) of a required claim: a string, number or boolean, or a
/// list of them (every one required). Kept as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimValues(pub Vec<String>);

impl<'de> Deserialize<'de> for ClaimValues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            B(bool),
            I(i64),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(Scalar),
            Many(Vec<Scalar>),
        }
        let text = |s: Scalar| match s {
            Scalar::S(s) => s,
            Scalar::B(b) => b.to_string(),
            Scalar::I(i) => i.to_string(),
        };
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "a required claim is a string, number or boolean, or a list of them",
            )
        })? {
            Raw::One(s) => Ok(Self(vec![text(s)])),
            Raw::Many(v) => Ok(Self(v.into_iter().map(text).collect())),
        }
    }
}

/// One `[[policy]]` entry: a decision source, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PolicyConfig {
    /// The built-in `[[rules]]`.
    Builtin(BuiltinPolicyConfig),
    /// Rego files evaluated in-process.
    Rego(RegoPolicyConfig),
    /// An external OPA server, through its REST data API.
    Opa(RemoteSourceConfig),
    /// A query against PostgreSQL or SQLite.
    Sql(SqlSourceConfig),
    /// A plugin serving `s3gate.plugin.v1.Plugin` over gRPC.
    Plugin(RemoteSourceConfig),
}

impl PolicyConfig {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Builtin(_) => "builtin",
            Self::Rego(_) => "rego",
            Self::Opa(_) => "opa",
            Self::Sql(_) => "sql",
            Self::Plugin(_) => "plugin",
        }
    }

    /// One line for `check-config` and the reload report: the kind, the
    /// URL without credentials, the files, the start of the query. Never a
    /// password.
    pub fn summary(&self) -> String {
        match self {
            Self::Builtin(_) => "builtin (the [[rules]])".to_owned(),
            Self::Rego(r) => format!(
                "rego files=[{}] query={}",
                r.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                r.query
            ),
            Self::Opa(r) => format!("opa {}", remote_summary(r)),
            Self::Sql(c) => format!("sql {}", sql_summary(c)),
            Self::Plugin(r) => format!("plugin {}", remote_summary(r)),
        }
    }
}

fn remote_summary(r: &RemoteSourceConfig) -> String {
    format!(
        "{} timeout={}",
        crate::sources::sql::redacted_url(&r.url),
        humantime::format_duration(r.timeout)
    )
}

fn sql_summary(c: &SqlSourceConfig) -> String {
    format!(
        "{} query={:?} timeout={}",
        crate::sources::sql::redacted_url(c.url.expose()),
        crate::sources::sql::query_summary(&c.query),
        humantime::format_duration(c.timeout)
    )
}

/// `kind = "builtin"` takes no settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinPolicyConfig {}

/// `kind = "rego"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegoPolicyConfig {
    /// `.rego` files, relative to the config file's directory.
    pub files: Vec<PathBuf>,
    /// The rule whose value is the decision: a bool, or an object with
    /// `allow`, `deny`, `reason`, `ttl_s`, `scope_prefix`.
    #[serde(default = "default_rego_query")]
    pub query: String,
}

fn default_rego_query() -> String {
    "data.s3gate.decision".to_owned()
}

/// A source reached over the network by URL (`opa`, `plugin`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSourceConfig {
    pub url: String,
    /// How long one answer may take; past it the source cannot decide.
    #[serde(default = "default_source_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// A SQL source (`kind = "sql"`), PostgreSQL or SQLite.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceConfig {
    /// `postgres://…` or `sqlite://…`; may be an `env:VAR` reference (it
    /// can hold a password).
    pub url: Secret,
    /// With named binds (`:principal`, `:access_key`, …), rewritten into
    /// the driver's placeholders.
    pub query: String,
    #[serde(default = "default_source_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

fn default_source_timeout() -> Duration {
    Duration::from_millis(500)
}

/// One `[[identity]]` entry: a secret lookup source, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IdentityConfig {
    /// A query returning `secret`, `principal` and `groups` for
    /// `:access_key`.
    Sql(SqlSourceConfig),
    /// A plugin's `LookupSecret`.
    Plugin(RemoteSourceConfig),
}

impl IdentityConfig {
    /// The `kind` as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sql(_) => "sql",
            Self::Plugin(_) => "plugin",
        }
    }

    /// One line, as [`PolicyConfig::summary`].
    pub fn summary(&self) -> String {
        match self {
            Self::Sql(c) => format!("sql {}", sql_summary(c)),
            Self::Plugin(r) => format!("plugin {}", remote_summary(r)),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One `trusted_proxies` entry: a CIDR network (`10.0.0.0/8`) or a single
/// address (`127.0.0.1`, meaning `/32`). Also parses `s3gate dataplane
/// --trusted-proxies`.
pub fn parse_network(entry: &str) -> Result<ipnet::IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<ipnet::IpNet>()
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{entry:?} is not an address or a CIDR network (like 10.0.0.0/8)"))
}

fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|e| parse_network(e).map_err(serde::de::Error::custom))
        .collect()
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
fn default_decision_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_key_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_route_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_max_session() -> Duration {
    Duration::from_secs(s3gate_s3::sts::DEFAULT_DURATION_SECONDS)
}

/// `"30s"`-style durations in TOML.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl FileConfig {
    /// Reads, parses and validates `path`; refuses a file that configures
    /// nothing.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, LoadOptions::default())
    }

    pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let mut cfg = Self::parse_with(&text, Some(&name), opts)?;
        cfg.relative_to(path);
        Ok(cfg)
    }

    /// Makes the file names in the config (`[tls]`) that are relative
    /// relative to the directory of the config file at `config_path`.
    pub fn relative_to(&mut self, config_path: &Path) {
        let Some(dir) = config_path.parent() else {
            return;
        };
        for p in &mut self.policy {
            if let PolicyConfig::Rego(r) = p {
                for path in &mut r.files {
                    if path.is_relative() {
                        *path = dir.join(&*path);
                    }
                }
            }
        }
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.cert, &mut tls.key]
                .into_iter()
                .chain(tls.client_ca.as_mut())
            {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        }
    }

    /// A problem found after loading (a certificate file that does not
    /// parse), placed like every other: `invalid config <file>:<line>:<col>:
    /// <section>.<field>: <message>` and the line, marked.
    pub fn invalid_at(
        &self,
        section: &str,
        field: &str,
        message: impl std::fmt::Display,
    ) -> ConfigError {
        let problem = |span| Problem {
            path: format!("{section}.{field}"),
            message: message.to_string(),
            span,
        };
        match &self.origin {
            Some(origin) => {
                let src = Source::new(&origin.text, origin.name.as_deref());
                let span = src.table_span(section, field);
                ConfigError::Invalid(src.render(&problem(span)))
            }
            None => ConfigError::Invalid(Source::new("", None).render(&problem(None))),
        }
    }

    /// Parses, resolves `env:` secrets and validates cross references.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, None, LoadOptions::default())
    }

    /// [`FileConfig::parse`] of a file called `name` (messages start with
    /// it; without, with the line and column only).
    pub fn parse_with(
        text: &str,
        name: Option<&str>,
        opts: LoadOptions,
    ) -> Result<Self, ConfigError> {
        let src = Source::new(text, name);
        let mut cfg =
            Self::deserialize_located(&src).map_err(|p| ConfigError::Parse(src.render(&p)))?;
        cfg.resolve_and_validate(&src)
            .map_err(|p| ConfigError::Invalid(src.render(&p)))?;
        if !opts.allow_empty && cfg.configures_nothing() {
            return Err(ConfigError::Invalid(src.render(&Problem {
                path: String::new(),
                message: NOTHING_CONFIGURED.to_owned(),
                span: None,
            })));
        }
        cfg.warnings = cfg.lint(&src).iter().map(|p| src.render_line(p)).collect();
        cfg.origin = Some(Origin {
            text: text.to_owned(),
            name: name.map(str::to_owned),
        });
        Ok(cfg)
    }

    /// The file as written: parsed, but `env:` references not resolved and
    /// nothing validated. `s3gate check-config` shows secrets from it (an
    /// `env:VAR` reference by name, never a value).
    pub fn parse_unresolved(text: &str) -> Result<Self, ConfigError> {
        let src = Source::new(text, None);
        Self::deserialize_located(&src).map_err(|p| ConfigError::Parse(src.render(&p)))
    }

    /// The settings a running process keeps until it restarts, each by
    /// its name in the file and its value as text (no secret is among
    /// them): in `s3gate serve` (`serve`) the data plane's listeners,
    /// region, hosts, proxies, limits and `[auth]`, and in every process
    /// the `[[oidc]]` providers. A reload compares them
    /// with those the process started with and names the ones that differ.
    pub fn restart_only(&self, serve: bool) -> RestartOnly {
        let mut settings = Vec::new();
        if serve {
            settings.extend([
                ("listen", format!("{:?}", self.listen)),
                ("region", self.region.clone()),
                ("base_domains", format!("{:?}", self.base_domains)),
                ("trusted_proxies", format!("{:?}", self.trusted_proxies)),
                ("limits", format!("{:?}", self.limits)),
                ("tls", format!("{:?}", self.tls)),
                ("auth", format!("{:?}", self.auth)),
            ]);
        }
        settings.push(("oidc", format!("{:?}", self.oidc)));
        RestartOnly { serve, settings }
    }

    /// True when the file sets up no backend, bucket, key or rule: it
    /// would serve nothing.
    pub fn configures_nothing(&self) -> bool {
        self.backends.is_empty()
            && self.buckets.is_empty()
            && self.keys.is_empty()
            && self.rules.is_empty()
    }

    /// Deserializes with the path of the failing field recorded, so a
    /// message names `backends[1]` and not only what was wrong there.
    fn deserialize_located(src: &Source<'_>) -> Result<Self, Problem> {
        serde_path_to_error::deserialize(toml::Deserializer::new(src.text)).map_err(|e| {
            let segments: Vec<_> = e.path().iter().cloned().collect();
            let inner = e.into_inner();
            src.problem_at_path(&segments, inner.message(), inner.span())
        })
    }

    fn resolve_and_validate(&mut self, src: &Source<'_>) -> Result<(), Problem> {
        let mut names: HashSet<String> = HashSet::new();
        for (i, b) in self.backends.iter_mut().enumerate() {
            let at = |field: &str, message: String| {
                src.entry_problem("backends", i, field, None, message)
            };
            if !names.insert(b.name.clone()) {
                return Err(at("name", format!("duplicate backend name {:?}", b.name)));
            }
            b.credentials = b.credentials.try_map(|field, secret| {
                let mut secret = secret.clone();
                resolve(&mut secret, field).map_err(|m| at(field, m))?;
                Ok::<_, Problem>(secret)
            })?;
            b.credentials.validate().map_err(|m| at("credentials", m))?;
            // A trailing `/` is forgiven in the file.
            let endpoint = b.endpoint.trim_end_matches('/');
            if !valid_endpoint(endpoint) {
                return Err(at(
                    "endpoint",
                    format!(
                        "endpoint {:?} must be http(s)://host[:port] without a path",
                        b.endpoint
                    ),
                ));
            }
            b.endpoint = endpoint.to_owned();
        }
        let mut buckets = HashSet::new();
        for (i, b) in self.buckets.iter().enumerate() {
            let at = |field: &str, message: String| {
                src.entry_problem("buckets", i, field, None, message)
            };
            if !buckets.insert(b.name.clone()) {
                return Err(at("name", format!("duplicate bucket name {:?}", b.name)));
            }
            if !names.contains(&b.backend) {
                let mut known: Vec<&str> = self.backends.iter().map(|b| b.name.as_str()).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "there is no [[backends]] entry".to_owned()
                } else {
                    format!("backends: {}", known.join(", "))
                };
                return Err(at(
                    "backend",
                    format!("backend {:?} is not configured ({known})", b.backend),
                ));
            }
            s3gate_proto::buckets::valid_entry_name(&b.name).map_err(|m| at("name", m))?;
            let backend_bucket =
                crate::state::default_backend_bucket(&b.name, b.backend_bucket.as_deref());
            if let Err(m) = s3gate_proto::buckets::Template::parse(Some(&backend_bucket)) {
                return Err(at("backend_bucket", m));
            }
            let earlier: Vec<crate::state::BucketRecord> = self.buckets[..i]
                .iter()
                .map(|e| crate::state::BucketRecord {
                    name: e.name.clone(),
                    backend: e.backend.clone(),
                    backend_bucket: String::new(),
                    cors: Vec::new(),
                    credentials: None,
                })
                .collect();
            if let Err(m) = crate::state::check_placement(&b.name, &backend_bucket, earlier.iter())
            {
                // Say which entry it collides with, by its place.
                let field = if m.contains("overlaps") {
                    "name"
                } else {
                    "backend_bucket"
                };
                let m = match earlier
                    .iter()
                    .position(|e| m.contains(&format!("{:?}", e.name)))
                {
                    Some(j) if m.contains("overlaps") => format!("{m}: buckets[{j}]"),
                    _ => m,
                };
                return Err(at(field, m));
            }
            let cors: Vec<_> = b.cors.iter().map(CorsRuleConfig::to_rule).collect();
            validate_cors(&cors).map_err(|m| at("cors", m))?;
        }
        if let Some(d) = &self.default_backend {
            if !names.contains(d) {
                return Err(Problem {
                    path: "default_backend".to_owned(),
                    message: format!("default_backend {d:?} is not a configured backend"),
                    span: None,
                });
            }
        }
        let mut keys = HashSet::new();
        for (i, k) in self.keys.iter_mut().enumerate() {
            let at =
                |field: &str, message: String| src.entry_problem("keys", i, field, None, message);
            if !keys.insert(k.access_key.clone()) {
                return Err(at(
                    "access_key",
                    format!("duplicate access key {:?}", k.access_key),
                ));
            }
            if !valid_access_key(&k.access_key) {
                return Err(at(
                    "access_key",
                    format!(
                        "access key {:?} must be printable ASCII without '/'",
                        k.access_key
                    ),
                ));
            }
            if !valid_principal(&k.principal) {
                return Err(at(
                    "principal",
                    format!("invalid principal {:?}", k.principal),
                ));
            }
            resolve(&mut k.secret_key, "secret_key").map_err(|m| at("secret_key", m))?;
        }
        for (i, r) in self.rules.iter().enumerate() {
            let at = |field: &str, needle: Option<&str>, message: String| {
                src.entry_problem("rules", i, field, needle, message)
            };
            for (field, list) in [
                ("principals", &r.principals),
                ("actions", &r.actions),
                ("resources", &r.resources),
            ] {
                if list.is_empty() {
                    return Err(at(field, None, format!("{field} must not be empty")));
                }
            }
            for a in &r.actions {
                crate::policy::check_action(a).map_err(|m| at("actions", Some(a), m))?;
            }
            for res in &r.resources {
                if !valid_resource(res) {
                    return Err(at(
                        "resources",
                        Some(res),
                        format!("resource {res:?} must be 'bucket' or 'bucket/key-glob'"),
                    ));
                }
            }
        }
        let mut providers = HashSet::new();
        for (i, o) in self.oidc.iter().enumerate() {
            let at = |field: &str, needle: Option<&str>, message: String| {
                src.entry_problem("oidc", i, field, needle, message)
            };
            if !valid_provider_name(&o.name) {
                return Err(at(
                    "name",
                    None,
                    format!(
                        "provider name {:?} must be 1-64 characters of A-Z a-z 0-9 . _ -",
                        o.name
                    ),
                ));
            }
            if !providers.insert(o.name.clone()) {
                return Err(at(
                    "name",
                    None,
                    format!("duplicate provider name {:?}", o.name),
                ));
            }
            if !valid_issuer(&o.issuer) {
                return Err(at(
                    "issuer",
                    None,
                    format!(
                        "issuer {:?} must be an http(s)://host[:port][/path] URL without query or fragment",
                        o.issuer
                    ),
                ));
            }
            if o.audiences.is_empty() {
                return Err(at(
                    "audiences",
                    None,
                    "audiences must not be empty: name what the provider puts in `aud` for s3gate"
                        .to_owned(),
                ));
            }
            if let Some(a) = o.audiences.iter().find(|a| a.is_empty()) {
                return Err(at(
                    "audiences",
                    Some(a),
                    "an audience must not be empty".to_owned(),
                ));
            }
            if o.principal_claim.is_empty() {
                return Err(at(
                    "principal_claim",
                    None,
                    "principal_claim must not be empty".to_owned(),
                ));
            }
            if o.groups_claim.as_deref() == Some("") {
                return Err(at(
                    "groups_claim",
                    None,
                    "groups_claim must not be empty (leave it out for no groups)".to_owned(),
                ));
            }
            if o.ca_bundle.as_deref() == Some("") {
                return Err(at(
                    "ca_bundle",
                    None,
                    "ca_bundle must not be empty".to_owned(),
                ));
            }
        }
        let mut arns = HashSet::new();
        for (i, r) in self.roles.iter().enumerate() {
            let at = |field: &str, needle: Option<&str>, message: String| {
                src.entry_problem("roles", i, field, needle, message)
            };
            if let Err(m) = crate::roles::parse_role_arn(&r.arn) {
                return Err(at("arn", None, m));
            }
            if !arns.insert(r.arn.clone()) {
                return Err(at("arn", None, format!("duplicate role {:?}", r.arn)));
            }
            if !providers.contains(&r.oidc) {
                let mut known: Vec<&str> = self.oidc.iter().map(|o| o.name.as_str()).collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "there is no [[oidc]] entry".to_owned()
                } else {
                    format!("providers: {}", known.join(", "))
                };
                return Err(at(
                    "oidc",
                    None,
                    format!("oidc provider {:?} is not configured ({known})", r.oidc),
                ));
            }
            if let Some(g) = r.groups.iter().find(|g| g.is_empty()) {
                return Err(at(
                    "groups",
                    Some(g),
                    "a group name must not be empty".into(),
                ));
            }
            for (claim, values) in &r.require_claims {
                if claim.is_empty() || values.0.is_empty() {
                    return Err(at(
                        "require_claims",
                        None,
                        "each required claim needs a name and at least one value".into(),
                    ));
                }
            }
            let (min, max) = (
                Duration::from_secs(s3gate_s3::sts::MIN_DURATION_SECONDS),
                Duration::from_secs(s3gate_s3::sts::MAX_DURATION_SECONDS),
            );
            if r.max_session < min || r.max_session > max {
                return Err(at(
                    "max_session",
                    None,
                    format!(
                        "max_session must be between 15m and 12h (is {})",
                        humantime::format_duration(r.max_session)
                    ),
                ));
            }
        }
        for (i, p) in self.policy.iter_mut().enumerate() {
            let at =
                |field: &str, message: String| src.entry_problem("policy", i, field, None, message);
            match p {
                PolicyConfig::Rego(r) if r.files.is_empty() => {
                    return Err(at("files", "a rego source needs at least one file".into()));
                }
                PolicyConfig::Sql(q) => resolve(&mut q.url, "url").map_err(|m| at("url", m))?,
                _ => {}
            }
        }
        for (i, p) in self.identity.iter_mut().enumerate() {
            if let IdentityConfig::Sql(q) = p {
                resolve(&mut q.url, "url")
                    .map_err(|m| src.entry_problem("identity", i, "url", None, m))?;
            }
        }
        // A bucket's plugin credentials default to the plugin the policy
        // or identity entries already name.
        let default_plugin_url = self
            .policy
            .iter()
            .find_map(|p| match p {
                PolicyConfig::Plugin(r) => Some(r.url.clone()),
                _ => None,
            })
            .or_else(|| {
                self.identity.iter().find_map(|p| match p {
                    IdentityConfig::Plugin(r) => Some(r.url.clone()),
                    _ => None,
                })
            });
        let has_sql_entry = crate::sources::sql_default_url(&self.policy, &self.identity).is_some();
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if let Some(c) = &b.credentials {
                c.validate()
                    .map_err(|m| src.entry_problem("buckets", i, "credentials", None, m))?;
            }
            match &mut b.credentials {
                Some(crate::credential::BucketCredentialSource::Sql(c))
                    if c.url.is_empty() && !has_sql_entry =>
                {
                    return Err(src.entry_problem(
                        "buckets",
                        i,
                        "credentials",
                        None,
                        "credentials of kind sql need a url (no [[policy]] or [[identity]] sql \
                         entry names a database)"
                            .into(),
                    ));
                }
                Some(crate::credential::BucketCredentialSource::Plugin(r)) if r.url.is_empty() => {
                    r.url = default_plugin_url.clone().ok_or_else(|| {
                        src.entry_problem(
                            "buckets",
                            i,
                            "credentials",
                            None,
                            "credentials of kind plugin need a url (no [[policy]] or \
                             [[identity]] plugin entry names one)"
                                .into(),
                        )
                    })?;
                }
                _ => {}
            }
        }
        for d in &mut self.base_domains {
            *d = d.trim_end_matches('.').to_ascii_lowercase();
        }
        if let Some(tls) = &self.tls {
            let at = |field: &str, message: String| Problem {
                path: format!("tls.{field}"),
                message,
                span: src.table_span("tls", field),
            };
            for (field, path) in [
                ("cert", Some(&tls.cert)),
                ("key", Some(&tls.key)),
                ("client_ca", tls.client_ca.as_ref()),
            ] {
                if path.is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(at(field, format!("{field} must name a file")));
                }
            }
            if tls.client_auth != ClientAuth::None && tls.client_ca.is_none() {
                return Err(at(
                    "client_auth",
                    format!(
                        "client_auth = {:?} needs client_ca, the CA certificates (PEM) client certificates must chain to",
                        client_auth_name(tls.client_auth)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What is valid but probably a mistake: a rule resource whose bucket
    /// part matches no configured bucket can never apply.
    fn lint(&self, src: &Source<'_>) -> Vec<Problem> {
        let mut buckets: Vec<&str> = self.buckets.iter().map(|b| b.name.as_str()).collect();
        buckets.sort_unstable();
        let known = if buckets.is_empty() {
            "there is no [[buckets]] entry".to_owned()
        } else {
            format!("buckets: {}", buckets.join(", "))
        };
        let mut out = Vec::new();
        if self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some() && t.client_auth == ClientAuth::None)
        {
            out.push(Problem {
                path: "tls.client_ca".to_owned(),
                message: "client_ca is set but client_auth is \"none\", so no client certificate is asked for; set client_auth = \"optional\" or \"required\"".to_owned(),
                span: src.table_span("tls", "client_ca"),
            });
        }
        for (i, r) in self.rules.iter().enumerate() {
            for res in &r.resources {
                // With a default backend every name exists.
                if self.default_backend.is_none()
                    && !buckets
                        .iter()
                        .any(|b| crate::policy::resource_names_bucket(res, b))
                {
                    out.push(src.entry_problem(
                        "rules",
                        i,
                        "resources",
                        Some(res),
                        format!("resource {res:?} names no configured bucket ({known})"),
                    ));
                }
            }
        }
        for (i, o) in self.oidc.iter().enumerate() {
            if o.issuer.starts_with("http://") && !issuer_is_loopback(&o.issuer) {
                out.push(src.entry_problem(
                    "oidc",
                    i,
                    "issuer",
                    None,
                    format!(
                        "issuer {:?} is plain http: whoever is on the path to it can serve s3gate \
                         keys of their own",
                        o.issuer
                    ),
                ));
            }
        }
        out
    }
}

/// `none`, `optional`, `required`: as written in the file.
pub fn client_auth_name(a: ClientAuth) -> &'static str {
    match a {
        ClientAuth::None => "none",
        ClientAuth::Optional => "optional",
        ClientAuth::Required => "required",
    }
}

/// `cn`, `san_dns`, `san_uri`, `san_email`: as written in the file.
pub fn principal_from_name(p: PrincipalFrom) -> &'static str {
    match p {
        PrincipalFrom::Cn => "cn",
        PrincipalFrom::SanDns => "san_dns",
        PrincipalFrom::SanUri => "san_uri",
        PrincipalFrom::SanEmail => "san_email",
    }
}

/// `[[oidc]]` names: short, and safe in logs and role references.
fn valid_provider_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `http(s)://host[:port][/path]`: what discovery can be appended to.
fn valid_issuer(issuer: &str) -> bool {
    let Some(rest) = issuer
        .strip_prefix("https://")
        .or_else(|| issuer.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    !authority.is_empty()
        && !authority.contains('@')
        && !issuer.contains(['?', '#'])
        && issuer.bytes().all(|c| c.is_ascii_graphic())
}

/// Whether an `http://` issuer is on this host (where plain http is fine).
fn issuer_is_loopback(issuer: &str) -> bool {
    let rest = issuer.strip_prefix("http://").unwrap_or(issuer);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why an empty file is refused, and what the smallest useful one holds.
const NOTHING_CONFIGURED: &str = "the file configures nothing, so s3gate would serve nothing; \
a minimal config needs a [[backends]] entry (an S3 endpoint and its credentials), a [[buckets]] \
entry served by it, a [[keys]] entry (a client's access key, secret and principal) and a \
[[rules]] entry allowing that principal actions on the bucket (see README.md, \"Configuration\")";

// === Places in the file ===

/// One problem found in a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    /// The section and entry, and the field within it: `backends[0]
    /// ("local")`, `rules[2] (r003)`, `backends[0] ("local"), credentials`,
    /// `listen`, `cache.key_ttl`. Empty: the file as a whole.
    path: String,
    message: String,
    /// The bytes of the file the problem is about, when known.
    span: Option<Range<usize>>,
}

/// A config file's text and name, and where its entries are: what turns a
/// [`Problem`] into a message that says where.
struct Source<'a> {
    text: &'a str,
    name: Option<&'a str>,
    /// Parsed again for the places alone; empty when the text is not TOML
    /// or its sections are not arrays of tables (the parse error says so).
    entries: Entries,
}

/// The `[[section]]` arrays of a config file, each entry with its span and
/// the span and value of each field.
#[derive(Debug, Default, Deserialize)]
struct Entries {
    #[serde(default)]
    backends: Vec<Entry>,
    #[serde(default)]
    buckets: Vec<Entry>,
    #[serde(default)]
    keys: Vec<Entry>,
    #[serde(default)]
    rules: Vec<Entry>,
    /// `[tls]`, a single table.
    #[serde(default)]
    tls: Option<Entry>,
    #[serde(default)]
    oidc: Vec<Entry>,
    #[serde(default)]
    roles: Vec<Entry>,
    #[serde(default)]
    policy: Vec<Entry>,
    #[serde(default)]
    identity: Vec<Entry>,
}

type Entry = toml::Spanned<BTreeMap<String, toml::Spanned<toml::Value>>>;

impl<'a> Source<'a> {
    fn new(text: &'a str, name: Option<&'a str>) -> Self {
        Self {
            text,
            name,
            entries: toml::from_str(text).unwrap_or_default(),
        }
    }

    fn entry(&self, section: &str, index: usize) -> Option<&Entry> {
        match section {
            "backends" => &self.entries.backends,
            "buckets" => &self.entries.buckets,
            "keys" => &self.entries.keys,
            "rules" => &self.entries.rules,
            "oidc" => &self.entries.oidc,
            "roles" => &self.entries.roles,
            "policy" => &self.entries.policy,
            "identity" => &self.entries.identity,
            _ => return None,
        }
        .get(index)
    }

    /// Where `field` of the single table `[section]` is written (else the
    /// table itself).
    fn table_span(&self, section: &str, field: &str) -> Option<Range<usize>> {
        let table = match section {
            "tls" => self.entries.tls.as_ref()?,
            _ => return None,
        };
        Some(
            table
                .get_ref()
                .get(field)
                .map_or_else(|| table.span(), |v| v.span()),
        )
    }

    /// `rules[2] (r003)`, `backends[0] ("local")`: the entry by index and by
    /// what names it (a rule's id is its position, as `State::from_config`
    /// numbers them).
    fn entry_name(&self, section: &str, index: usize) -> String {
        let label = match section {
            "rules" => Some(format!("r{:03}", index + 1)),
            _ => {
                let field = match section {
                    "keys" => "access_key",
                    "roles" => "arn",
                    _ => "name",
                };
                self.entry(section, index)
                    .and_then(|e| e.get_ref().get(field))
                    .and_then(|v| v.get_ref().as_str())
                    .map(|v| format!("{v:?}"))
            }
        };
        match label {
            Some(label) => format!("{section}[{index}] ({label})"),
            None => format!("{section}[{index}]"),
        }
    }

    /// Where `field` of an entry is (else the entry itself), narrowed to
    /// `needle` when the field's text holds it as a quoted string (one
    /// action of a list).
    fn entry_span(
        &self,
        section: &str,
        index: usize,
        field: &str,
        needle: Option<&str>,
    ) -> Option<Range<usize>> {
        let entry = self.entry(section, index)?;
        // A backend's secrets may sit in its `credentials` table.
        let fields = entry.get_ref();
        let Some(value) = fields.get(field).or_else(|| fields.get("credentials")) else {
            return Some(entry.span());
        };
        let span = value.span();
        let found = needle.and_then(|n| {
            let within = self.text.get(span.clone())?;
            [format!("\"{n}\""), format!("'{n}'")]
                .iter()
                .find_map(|quoted| within.find(quoted.as_str()).map(|at| (at, quoted.len())))
        });
        Some(match found {
            Some((at, len)) => span.start + at..span.start + at + len,
            None => span,
        })
    }

    /// A problem with an entry of a `[[section]]`, located at `field`.
    fn entry_problem(
        &self,
        section: &str,
        index: usize,
        field: &str,
        needle: Option<&str>,
        message: String,
    ) -> Problem {
        Problem {
            path: self.entry_name(section, index),
            message,
            span: self.entry_span(section, index, field, needle),
        }
    }

    /// A deserialization error at `path` (serde's), with TOML's span: the
    /// entry named as in [`Source::entry_name`], and the span narrowed to
    /// the entry when TOML's covers more (an error raised after a table was
    /// read, such as a backend's credential check, gets the whole array).
    fn problem_at_path(
        &self,
        path: &[serde_path_to_error::Segment],
        message: &str,
        span: Option<Range<usize>>,
    ) -> Problem {
        use serde_path_to_error::Segment;
        let mut out = String::new();
        let mut span = span;
        let mut rest = path;
        if let [Segment::Map { key }, Segment::Seq { index }, tail @ ..] = path {
            if let Some(entry) = self.entry(key, *index) {
                out = self.entry_name(key, *index);
                let outer = entry.span();
                let field = match tail.first() {
                    Some(Segment::Map { key: field }) => {
                        entry.get_ref().get(field).map(|v| v.span())
                    }
                    _ => None,
                };
                let inside = |s: &Range<usize>| s.start >= outer.start && s.end <= outer.end;
                if !span.as_ref().is_some_and(inside) {
                    span = Some(field.unwrap_or(outer));
                }
                if !tail.is_empty() {
                    out.push_str(", ");
                }
                rest = tail;
            }
        }
        for (i, segment) in rest.iter().enumerate() {
            match segment {
                Segment::Map { key } => {
                    if i > 0 {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                Segment::Seq { index } => {
                    let _ = write!(out, "[{index}]");
                }
                Segment::Enum { .. } | Segment::Unknown => {}
            }
        }
        Problem {
            path: out,
            // TOML's parse errors can run over several lines ("invalid
            // string\nexpected `\"`"): one line reads better in a log.
            message: message.trim().lines().collect::<Vec<_>>().join(", "),
            span,
        }
    }

    /// `<file>:<line>:<column>`, 1-based, the column in characters.
    fn location(&self, span: &Option<Range<usize>>) -> String {
        let line_col = span.as_ref().and_then(|s| self.line_col(s.start));
        match (self.name, line_col) {
            (Some(name), Some((line, col))) => format!(" {name}:{line}:{col}"),
            (Some(name), None) => format!(" {name}"),
            (None, Some((line, col))) => format!(" at line {line}, column {col}"),
            (None, None) => String::new(),
        }
    }

    fn line_col(&self, offset: usize) -> Option<(usize, usize)> {
        let before = self.text.get(..offset)?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        Some((line, before[line_start..].chars().count() + 1))
    }

    /// `invalid config <file>:<line>:<col>: <path>: <message>`, then the
    /// line with the place marked.
    fn render(&self, p: &Problem) -> String {
        let mut out = format!("invalid config{}: ", self.location(&p.span));
        if !p.path.is_empty() {
            out.push_str(&p.path);
            out.push_str(": ");
        }
        out.push_str(&p.message);
        if let Some(snippet) = p.span.as_ref().and_then(|s| self.snippet(s)) {
            out.push('\n');
            out.push_str(&snippet);
        }
        out
    }

    /// A warning on one line: `<file>:<line>:<col>: <path>: <message>`.
    fn render_line(&self, p: &Problem) -> String {
        let mut out = self.location(&p.span).trim_start().to_owned();
        if !out.is_empty() {
            out.push_str(": ");
        }
        if !p.path.is_empty() {
            out.push_str(&p.path);
            out.push_str(": ");
        }
        out.push_str(&p.message);
        out
    }

    /// The line `span` starts on, with the span marked (as TOML's own
    /// errors show it):
    ///
    /// ```text
    ///   |
    /// 3 | [[backends]]
    ///   | ^^^^^^^^^^^^
    /// ```
    fn snippet(&self, span: &Range<usize>) -> Option<String> {
        let (line, col) = self.line_col(span.start)?;
        let content = mask_secrets(self.text.lines().nth(line - 1).unwrap_or(""));
        let rest = content.chars().count().saturating_sub(col - 1);
        let marked = self
            .text
            .get(span.clone())
            .map_or(1, |s| s.chars().count())
            .clamp(1, rest.max(1));
        let gutter = " ".repeat(line.to_string().len());
        Some(format!(
            "{gutter} |\n{line} | {content}\n{gutter} | {}{}",
            " ".repeat(col - 1),
            "^".repeat(marked)
        ))
    }
}

/// Keys whose values are secrets wherever they appear in a config file.
const SECRET_KEYS: &[&str] = &[
    "secret_key",
    "session_token",
    "password",
    "api_key",
    "client_secret",
    "token",
    "secret",
];

/// A config line as an error may quote it: the value of every secret key
/// (`secret_key = "…"`, also inline and in URL queries as `password=…`)
/// and the password of every URL's userinfo replaced by `*`, one for each
/// character so the marks under the line still point at the right place.
/// `env:` references are names, not secrets, and are kept.
fn mask_secrets(line: &str) -> String {
    let mut chars: Vec<char> = line.chars().collect();
    let n = chars.len();
    let mask = |chars: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut chars[from..to] {
            *c = '*';
        }
    };
    // `<secret key> = <value>` and `…?password=<value>`.
    for name in SECRET_KEYS {
        let name: Vec<char> = name.chars().collect();
        let mut i = 0;
        while i + name.len() <= n {
            let boundary =
                i == 0 || matches!(chars[i - 1], ' ' | '\t' | '{' | ',' | '.' | '?' | '&' | '"');
            if !boundary || chars[i..i + name.len()] != name[..] {
                i += 1;
                continue;
            }
            let mut j = i + name.len();
            if chars.get(j) == Some(&'"') {
                j += 1; // a quoted key
            }
            while chars.get(j).is_some_and(|c| *c == ' ' || *c == '\t') {
                j += 1;
            }
            if chars.get(j) != Some(&'=') {
                i += 1;
                continue;
            }
            j += 1;
            while chars.get(j).is_some_and(|c| *c == ' ' || *c == '\t') {
                j += 1;
            }
            let (start, end) = match chars.get(j) {
                Some(&q @ ('"' | '\'')) => {
                    let end = (j + 1..n).find(|&k| chars[k] == q).unwrap_or(n);
                    (j + 1, end)
                }
                _ => {
                    let end = (j..n)
                        .find(|&k| matches!(chars[k], ',' | '}' | ' ' | '\t' | '&' | '#' | '"'))
                        .unwrap_or(n);
                    (j, end)
                }
            };
            let value: String = chars[start..end].iter().collect();
            if !value.starts_with("env:") {
                mask(&mut chars, start, end);
            }
            i = end.max(i + 1);
        }
    }
    // `scheme://user:password@host`.
    let mut i = 0;
    while i + 3 <= n {
        if chars[i..i + 3] != [':', '/', '/'] {
            i += 1;
            continue;
        }
        let start = i + 3;
        let stop = (start..n)
            .find(|&k| matches!(chars[k], '/' | '"' | '\'' | ' ' | '@' | '?' | '#'))
            .unwrap_or(n);
        if chars.get(stop) == Some(&'@') {
            if let Some(colon) = (start..stop).find(|&k| chars[k] == ':') {
                mask(&mut chars, colon + 1, stop);
            }
        }
        i = stop.max(start);
    }
    chars.into_iter().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoted_lines_never_show_a_secret() {
        for (line, secret) in [
            (r#"secret_key = "hunter2secret""#, "hunter2secret"),
            (r#"secret_key = "hunter2secret"#, "hunter2secret"),
            (r#"secret_key = 'hunter2secret'"#, "hunter2secret"),
            (r#"session_token="tok-hunter2""#, "tok-hunter2"),
            (r#"  "secret_key" = "hunter2secret""#, "hunter2secret"),
            (
                r#"credentials = { kind = "static_hmac", access_key = "AK", secret_key = "hunter2secret" }"#,
                "hunter2secret",
            ),
            (
                r#"url = "postgres://u:hunter2secret@127.0.0.1/db""#,
                "hunter2secret",
            ),
            (
                r#"url = "postgres://127.0.0.1/db?user=u&password=hunter2secret""#,
                "hunter2secret",
            ),
            (r#"api_key = hunter2secret"#, "hunter2secret"),
        ] {
            let masked = mask_secrets(line);
            assert!(!masked.contains(secret), "{line} -> {masked}");
            assert_eq!(masked.chars().count(), line.chars().count(), "{masked}");
        }
        for kept in [
            r#"secret_key = "env:BACKEND_SECRET""#,
            r#"access_key = "AKIAEXAMPLE""#,
            r#"endpoint = "http://127.0.0.1:9000/""#,
            r#"url = "postgres://u@127.0.0.1/db""#,
            r#"name = "token-bucket""#,
        ] {
            assert_eq!(mask_secrets(kept), kept);
        }
    }

    #[test]
    fn a_config_error_does_not_quote_the_secret_on_its_line() {
        let dir = std::env::temp_dir().join(format!("s3gate-mask-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, text) in [
            "[[backends]]\nname = \"b\"\nendpoint = \"http://127.0.0.1:9\"\naccess_key = \"AK\"\nsecret_key = \"hunter2secret\n",
            "[[backends]]\nname = \"b\"\nendpoint = \"http://127.0.0.1:9\"\naccess_key = \"AK\"\nsecret_key = \"hunter2secret\"\nsecret_key = \"hunter2secret\"\n",
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.join(format!("c{i}.toml"));
            std::fs::write(&path, text).unwrap();
            let err = FileConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains("secret_key"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    const SAMPLE: &str = r#"
listen = "127.0.0.1:9080"
region = "us-east-1"
[[backends]]
name = "local"
endpoint = "http://127.0.0.1:9000/"
region = "us-east-1"
addressing_style = "path"
access_key = "BACKENDKEY"
secret_key = "BACKENDSECRET"
[[buckets]]
name = "data"
backend = "local"
backend_bucket = "data-prod"
[[keys]]
access_key = "S3GATEALICE01"
secret_key = "alice-secret-000000000"
principal = "alice"
groups = ["analysts"]
[[rules]]
effect = "allow"
principals = ["alice", "group:analysts"]
actions = ["s3:GetObject", "s3:PutObject", "s3:ListBucket"]
resources = ["data", "data/reports/*"]
"#;

    #[test]
    fn parses_issue_sample() {
        let cfg = FileConfig::parse(SAMPLE).unwrap();
        assert_eq!(cfg.backends[0].endpoint, "http://127.0.0.1:9000");
        assert_eq!(cfg.buckets[0].backend_bucket.as_deref(), Some("data-prod"));
        assert_eq!(cfg.rules[0].effect, Effect::Allow);
        assert_eq!(cfg.cache.decision_ttl, Duration::from_secs(30));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let cfg = FileConfig::parse(SAMPLE).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("BACKENDSECRET"), "{dbg}");
        assert!(!dbg.contains("alice-secret"), "{dbg}");
    }

    #[test]
    fn env_secrets_resolve_or_fail() {
        let text = SAMPLE.replace("\"BACKENDSECRET\"", "\"env:S3GATE_TEST_UNSET_VAR_XYZ\"");
        let err = FileConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("S3GATE_TEST_UNSET_VAR_XYZ"), "{err}");
        // PATH is always set: it resolves
        let text = SAMPLE.replace("\"BACKENDSECRET\"", "\"env:PATH\"");
        let cfg = FileConfig::parse(&text).unwrap();
        let CredentialSpec::StaticHmac { secret_key, .. } = &cfg.backends[0].credentials else {
            panic!("not static_hmac")
        };
        assert_eq!(*secret_key.expose(), std::env::var("PATH").unwrap());
    }

    #[test]
    fn rejects_bad_references() {
        let text = SAMPLE.replace("backend = \"local\"", "backend = \"nope\"");
        assert!(FileConfig::parse(&text).is_err());
        let text = SAMPLE.replace("effect = \"allow\"", "effect = \"maybe\"");
        assert!(FileConfig::parse(&text).is_err());
        let text = SAMPLE.replace("http://127.0.0.1:9000/", "http://127.0.0.1:9000/prefix");
        assert!(FileConfig::parse(&text).is_err());
        let text = format!("{SAMPLE}\nunknown_field = 1\n");
        assert!(FileConfig::parse(&text).is_err());
    }

    /// The message for `text` as the file `s3gate.toml`.
    fn error(text: &str) -> String {
        FileConfig::parse_with(text, Some("s3gate.toml"), LoadOptions::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn toml_syntax_error_says_line_and_column() {
        let text = SAMPLE.replace(
            "region = \"us-east-1\"\n[[backends]]",
            "region = \"us-east-1\n[[backends]]",
        );
        assert_eq!(
            error(&text),
            "invalid config s3gate.toml:3:20: invalid basic string
  |
3 | region = \"us-east-1
  |                    ^"
        );
    }

    #[test]
    fn missing_field_names_the_entry() {
        let text = SAMPLE.replace("endpoint = \"http://127.0.0.1:9000/\"\n", "");
        assert_eq!(
            error(&text),
            "invalid config s3gate.toml:4:1: backends[0] (\"local\"): missing field `endpoint`
  |
4 | [[backends]]
  | ^^^^^^^^^^^^"
        );
    }

    #[test]
    fn bad_listen_names_the_field() {
        let text = SAMPLE.replace("127.0.0.1:9080", "127.0.0.1");
        assert_eq!(
            error(&text),
            "invalid config s3gate.toml:2:10: listen: invalid socket address syntax
  |
2 | listen = \"127.0.0.1\"
  |          ^^^^^^^^^^^"
        );
    }

    #[test]
    fn unknown_action_names_the_rule() {
        let text = SAMPLE.replace("\"s3:PutObject\"", "\"s3:GetObjekt\"");
        assert_eq!(
            error(&text),
            "invalid config s3gate.toml:23:28: rules[0] (r001): action \"s3:GetObjekt\" is not an S3 action s3gate authorizes (did you mean \"s3:GetObject\"?)
   |
23 | actions = [\"s3:GetObject\", \"s3:GetObjekt\", \"s3:ListBucket\"]
   |                            ^^^^^^^^^^^^^^"
        );
        let text = SAMPLE.replace("\"s3:PutObject\"", "\"s3:Gte*\"");
        assert!(
            error(&text).starts_with(
                "invalid config s3gate.toml:23:28: rules[0] (r001): action pattern \"s3:Gte*\" \
                 matches no S3 action s3gate authorizes\n"
            ),
            "{}",
            error(&text)
        );
        let globs = SAMPLE.replace("\"s3:PutObject\"", "\"s3:Put*\", \"s3:*\", \"*\"");
        assert!(FileConfig::parse(&globs).is_ok());
    }

    #[test]
    fn empty_config_is_refused_with_what_a_minimal_one_needs() {
        assert_eq!(
            error("# nothing yet\nlisten = \"127.0.0.1:9080\"\n"),
            "invalid config s3gate.toml: the file configures nothing, so s3gate would serve \
             nothing; a minimal config needs a [[backends]] entry (an S3 endpoint and its \
             credentials), a [[buckets]] entry served by it, a [[keys]] entry (a client's access \
             key, secret and principal) and a [[rules]] entry allowing that principal actions on \
             the bucket (see README.md, \"Configuration\")"
        );
        let seed_only = "[cache]\nkey_ttl = \"5s\"\n";
        let opts = LoadOptions { allow_empty: true };
        let cfg = FileConfig::parse_with(seed_only, None, opts).unwrap();
        assert_eq!(cfg.cache.key_ttl, Duration::from_secs(5));
    }

    #[test]
    fn backend_errors_name_the_backend_and_point_at_it() {
        // An error raised after the table was read (the credential check of
        // `try_from`) points at that backend, not at the first one.
        let second = "[[backends]]\nname = \"other\"\nendpoint = \"http://127.0.0.1:9001\"\n";
        let text = SAMPLE.replace("[[buckets]]", &format!("{second}[[buckets]]"));
        assert_eq!(
            error(&text),
            "invalid config s3gate.toml:11:1: backends[1] (\"other\"): needs `credentials = { \
             kind = … }` or access_key and secret_key
   |
11 | [[backends]]
   | ^^^^^^^^^^^^"
        );
        let text = SAMPLE.replace("addressing_style = \"path\"", "addressing_style = \"pth\"");
        assert!(error(&text).starts_with(
            "invalid config s3gate.toml:8:20: backends[0] (\"local\"), addressing_style: unknown \
             variant `pth`, expected `path` or `virtual`\n"
        ));
        let text = SAMPLE.replace("\"BACKENDSECRET\"", "\"env:S3GATE_TEST_UNSET_VAR_XYZ\"");
        assert!(error(&text).starts_with(
            "invalid config s3gate.toml:10:14: backends[0] (\"local\"): secret_key: environment \
             variable S3GATE_TEST_UNSET_VAR_XYZ is not set\n"
        ));
        let text = SAMPLE.replace("backend = \"local\"", "backend = \"nope\"");
        assert!(error(&text).starts_with(
            "invalid config s3gate.toml:13:11: buckets[0] (\"data\"): backend \"nope\" is not \
             configured (backends: local)\n"
        ));
    }

    #[test]
    fn cors_rules_are_read_and_checked_with_their_place() {
        let cors = "[[buckets.cors]]\nallowed_origins = [\"https://app.example.com\", \"https://*.example.org\"]\n\
                    allowed_methods = [\"GET\", \"PUT\"]\nallowed_headers = [\"*\"]\n\
                    expose_headers = [\"ETag\"]\nmax_age = 600\n\
                    [[buckets.cors]]\nallowed_origins = [\"*\"]\nallowed_methods = [\"GET\"]\n";
        let text = SAMPLE.replace("[[keys]]", &format!("{cors}[[keys]]"));
        let cfg =
            FileConfig::parse_with(&text, Some("s3gate.toml"), LoadOptions::default()).unwrap();
        let state = crate::state::State::from_config(&cfg);
        let rules = &state.buckets["data"].cors;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].allowed_origins[1], "https://*.example.org");
        assert_eq!(rules[0].max_age, Some(600));
        assert!(rules[1].allowed_headers.is_empty() && rules[1].max_age.is_none());

        let bad = |from: &str, to: &str| error(&text.replacen(from, to, 1));
        let e = bad("\"GET\", \"PUT\"", "\"GET\", \"PATCH\"");
        assert!(e.starts_with("invalid config s3gate.toml:"), "{e}");
        assert!(e.contains("buckets[0] (\"data\"): cors[0]: unknown method \"PATCH\" in allowed_methods (one of GET, PUT, HEAD, POST, DELETE)"), "{e}");
        let e = bad("https://*.example.org", "https://*.*.example.org");
        assert!(e.contains("buckets[0] (\"data\"): cors[0]: allowed origin \"https://*.*.example.org\" can have at most one * wildcard"), "{e}");
        let e = bad("allowed_origins = [\"*\"]", "allowed_origins = []");
        assert!(
            e.contains("buckets[0] (\"data\"): cors[1]: allowed_origins must not be empty"),
            "{e}"
        );
        let e = bad("max_age = 600", "max_age = 600\nmax_age_seconds = 1");
        assert!(e.contains("buckets[0] (\"data\")"), "{e}");
        assert!(e.contains("unknown field `max_age_seconds`"), "{e}");
        let e = bad("allowed_methods = [\"GET\"]\n", "");
        assert!(e.contains("missing field `allowed_methods`"), "{e}");
    }

    #[test]
    fn nested_fields_are_named_by_path() {
        let text = format!("{SAMPLE}\n[cache]\nkey_ttl = \"5 parsecs\"\n");
        assert!(error(&text).starts_with("invalid config s3gate.toml:27:11: cache.key_ttl: "));
        let text = format!("{SAMPLE}\n[limits]\nbuffer_budget = \"32XB\"\n");
        assert!(error(&text).starts_with(
            "invalid config s3gate.toml:27:17: limits.buffer_budget: unknown byte unit \"xb\" in \"32XB\"\n"
        ));
        // without a file name, the line and column still
        let err = FileConfig::parse(&SAMPLE.replace("127.0.0.1:9080", "x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid config at line 2, column 10: listen: "),
            "{err}"
        );
    }

    #[test]
    fn auth_sigv2_switch() {
        let on = FileConfig::parse(SAMPLE).unwrap();
        assert!(on.auth.sigv2, "SigV2 is on unless turned off");
        let off = FileConfig::parse(&format!("{SAMPLE}\n[auth]\nsigv2 = false\n")).unwrap();
        assert!(!off.auth.sigv2);
        let text = format!("{SAMPLE}\n[auth]\nsigv2 = \"no\"\n");
        assert!(
            error(&text).starts_with("invalid config s3gate.toml:27:9: auth.sigv2: "),
            "{}",
            error(&text)
        );
        let text = format!("{SAMPLE}\n[auth]\nsigv3 = true\n");
        assert!(
            error(&text).starts_with(
                "invalid config s3gate.toml:27:1: auth.sigv3: unknown field `sigv3`, expected `sigv2`"
            ),
            "{}",
            error(&text)
        );
    }

    #[test]
    fn rules_on_unconfigured_buckets_are_warnings() {
        let text = SAMPLE.replace("\"data/reports/*\"", "\"dta/reports/*\", \"*\"");
        let cfg =
            FileConfig::parse_with(&text, Some("s3gate.toml"), LoadOptions::default()).unwrap();
        assert_eq!(
            cfg.warnings,
            ["s3gate.toml:24:22: rules[0] (r001): resource \"dta/reports/*\" names no configured bucket (buckets: data)"]
        );
        assert!(FileConfig::parse(SAMPLE).unwrap().warnings.is_empty());
    }

    #[test]
    fn bucket_patterns_templates_and_the_default_backend() {
        let with = |extra: &str| SAMPLE.replace("[[keys]]", &format!("{extra}[[keys]]"));
        let pattern = |name: &str, bb: &str| {
            format!("[[buckets]]\nname = \"{name}\"\nbackend = \"local\"\n{bb}")
        };
        let text =
            with(&(pattern("team-*", "backend_bucket = \"prod-{name}\"\n") + &pattern("t*-x", "")));
        let e = FileConfig::parse_with(&text, Some("s3gate.toml"), LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("buckets[2] (\"t*-x\"): pattern \"t*-x\" overlaps pattern \"team-*\" (some bucket name matches both): buckets[1]"),
            "{e}"
        );
        let e = FileConfig::parse(&with(&pattern("lab-*", "backend_bucket = \"fixed\"\n")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must contain {name}"), "{e}");
        // A rule on buckets a pattern serves names a configured bucket.
        let text = with(&pattern("team-*", "")).replace("\"data/reports/*\"", "\"team-a/*\"");
        let cfg = FileConfig::parse(&text).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let state = crate::state::State::from_config(&cfg);
        assert_eq!(state.buckets["team-*"].backend_bucket, "{name}");
        assert_eq!(state.buckets["data"].backend_bucket, "data-prod");
        // With a default backend every name is served: no warning.
        let text = SAMPLE.replace("\"data/reports/*\"", "\"elsewhere/*\"");
        assert_eq!(FileConfig::parse(&text).unwrap().warnings.len(), 1);
        let cfg = FileConfig::parse(&format!("default_backend = \"local\"\n{text}")).unwrap();
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        assert_eq!(
            crate::state::State::from_config(&cfg)
                .default_backend
                .as_deref(),
            Some("local")
        );
        let e = FileConfig::parse(&format!("default_backend = \"nope\"\n{SAMPLE}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("default_backend \"nope\" is not a configured backend"),
            "{e}"
        );
    }

    const OIDC: &str = r#"
[[oidc]]
name = "corp"
issuer = "http://127.0.0.1:8080"
audiences = ["s3gate"]
groups_claim = "groups"
"#;

    #[test]
    fn oidc_providers_parse_with_defaults() {
        let cfg = FileConfig::parse(&format!("{SAMPLE}{OIDC}")).unwrap();
        let o = &cfg.oidc[0];
        assert_eq!(
            (o.name.as_str(), o.issuer.as_str()),
            ("corp", "http://127.0.0.1:8080")
        );
        assert_eq!(o.audiences, ["s3gate"]);
        assert_eq!(o.principal_claim, "sub");
        assert_eq!(o.groups_claim.as_deref(), Some("groups"));
        assert_eq!(o.ca_bundle, None);
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        // a control plane may read only its providers from the file
        let opts = LoadOptions { allow_empty: true };
        assert_eq!(
            FileConfig::parse_with(OIDC, None, opts).unwrap().oidc.len(),
            1
        );
    }

    #[test]
    fn oidc_errors_name_the_provider() {
        let with = |from: &str, to: &str| {
            let oidc = OIDC.replace(from, to);
            assert_ne!(oidc, OIDC, "{from}");
            error(&format!("{SAMPLE}{oidc}"))
        };
        assert_eq!(
            with("audiences = [\"s3gate\"]", "audiences = []"),
            "invalid config s3gate.toml:29:13: oidc[0] (\"corp\"): audiences must not be empty: \
             name what the provider puts in `aud` for s3gate
   |
29 | audiences = []
   |             ^^"
        );
        assert!(with("http://127.0.0.1:8080", "127.0.0.1:8080").starts_with(
            "invalid config s3gate.toml:28:10: oidc[0] (\"corp\"): issuer \"127.0.0.1:8080\" must \
             be an http(s)://host[:port][/path] URL without query or fragment\n"
        ));
        assert!(with("http://127.0.0.1:8080", "https://idp/x?y").contains("issuer"));
        assert!(with("name = \"corp\"", "name = \"c o r p\"").contains("provider name"));
        assert!(with("groups_claim = \"groups\"", "groups_claim = \"\"").contains("groups_claim"));
        assert!(with("groups_claim = \"groups\"", "principal_claim = \"\"")
            .contains("principal_claim must not be empty"));
        assert!(with("groups_claim", "group_claim").contains("unknown field `group_claim`"));
        let twice = error(&format!("{SAMPLE}{OIDC}{OIDC}"));
        assert!(
            twice.starts_with(
                "invalid config s3gate.toml:33:8: oidc[1] (\"corp\"): duplicate provider name \"corp\"\n"
            ),
            "{twice}"
        );
    }

    #[test]
    fn plain_http_issuers_off_this_host_are_warned_about() {
        let text = format!("{SAMPLE}{}", OIDC.replace("127.0.0.1", "idp.example.com"));
        let cfg =
            FileConfig::parse_with(&text, Some("s3gate.toml"), LoadOptions::default()).unwrap();
        assert_eq!(
            cfg.warnings,
            [
                "s3gate.toml:28:10: oidc[0] (\"corp\"): issuer \"http://idp.example.com:8080\" is \
              plain http: whoever is on the path to it can serve s3gate keys of their own"
            ]
        );
        for local in [
            "http://localhost:1",
            "http://[::1]:8080/realms/x",
            "https://idp.example.com",
        ] {
            let text = format!("{SAMPLE}{}", OIDC.replace("http://127.0.0.1:8080", local));
            assert!(
                FileConfig::parse(&text).unwrap().warnings.is_empty(),
                "{local}"
            );
        }
    }

    #[test]
    fn tls_section_parses_and_places_its_errors() {
        let tls = "\n[tls]\nlisten = \"127.0.0.1:9443\"\ncert = \"tls/server.pem\"\nkey = \"/etc/key.pem\"\nclient_ca = \"tls/ca.pem\"\nclient_auth = \"required\"\nprincipal_from = \"san_uri\"\n";
        let mut cfg = FileConfig::parse(&format!("{SAMPLE}{tls}")).unwrap();
        cfg.relative_to(Path::new("/srv/s3gate/s3gate.toml"));
        let t = cfg.tls.as_ref().unwrap();
        assert_eq!(t.cert, Path::new("/srv/s3gate/tls/server.pem"));
        assert_eq!(t.key, Path::new("/etc/key.pem"));
        assert_eq!(
            t.client_ca.as_deref(),
            Some(Path::new("/srv/s3gate/tls/ca.pem"))
        );
        assert_eq!(t.client_auth, ClientAuth::Required);
        assert_eq!(t.principal_from, PrincipalFrom::SanUri);
        // Defaults: no client certificates, the CN.
        let minimal = format!("{SAMPLE}\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
        let t = FileConfig::parse(&minimal).unwrap().tls.unwrap();
        assert_eq!(
            (t.listen, t.client_auth, t.principal_from),
            (None, ClientAuth::None, PrincipalFrom::Cn)
        );

        let bad = format!("{SAMPLE}{}", tls.replace("\"required\"", "\"sometimes\""));
        assert_eq!(
            error(&bad),
            "invalid config s3gate.toml:31:15: tls.client_auth: unknown variant `sometimes`, expected one of `none`, `optional`, `required`
   |
31 | client_auth = \"sometimes\"
   |               ^^^^^^^^^^^"
        );
        let no_ca = format!(
            "{SAMPLE}{}",
            tls.replace("client_ca = \"tls/ca.pem\"\n", "")
        );
        assert_eq!(
            error(&no_ca),
            "invalid config s3gate.toml:30:15: tls.client_auth: client_auth = \"required\" needs client_ca, the CA certificates (PEM) client certificates must chain to
   |
30 | client_auth = \"required\"
   |               ^^^^^^^^^^"
        );
        let bad_from = format!("{SAMPLE}{}", tls.replace("san_uri", "ou"));
        assert!(
            error(&bad_from).starts_with(
                "invalid config s3gate.toml:32:18: tls.principal_from: unknown variant `ou`"
            ),
            "{}",
            error(&bad_from)
        );
        let no_key = format!("{SAMPLE}{}", tls.replace("key = \"/etc/key.pem\"\n", ""));
        assert!(
            error(&no_key).starts_with("invalid config s3gate.toml:26:1: tls: missing field `key`"),
            "{}",
            error(&no_key)
        );

        // A client CA nobody is asked against is a warning.
        let unused = format!(
            "{SAMPLE}{}",
            tls.replace("client_auth = \"required\"\n", "")
        );
        let cfg =
            FileConfig::parse_with(&unused, Some("s3gate.toml"), LoadOptions::default()).unwrap();
        assert_eq!(cfg.warnings.len(), 1);
        assert!(
            cfg.warnings[0].starts_with(
                "s3gate.toml:30:13: tls.client_ca: client_ca is set but client_auth is \"none\""
            ),
            "{:?}",
            cfg.warnings
        );

        // A problem found after loading (a certificate that does not
        // parse) is placed the same way.
        let cfg = FileConfig::parse_with(
            &format!("{SAMPLE}{tls}"),
            Some("s3gate.toml"),
            LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(
            cfg.invalid_at("tls", "cert", "tls/server.pem: no certificate")
                .to_string(),
            "invalid config s3gate.toml:28:8: tls.cert: tls/server.pem: no certificate
   |
28 | cert = \"tls/server.pem\"
   |        ^^^^^^^^^^^^^^^^"
        );
        assert!(!format!("{cfg:?}").contains("BACKENDSECRET"));
    }

    #[test]
    fn role_errors_name_the_role() {
        let oidc = "\n[[oidc]]\nname = \"corp\"\nissuer = \"https://idp.example.com\"\naudiences = [\"s3gate\"]\n";
        let role = |body: &str| format!("{SAMPLE}{oidc}\n[[roles]]\n{body}\n");
        let ok = role("arn = \"arn:aws:iam::000000000000:role/analysts\"\noidc = \"corp\"\nrequire_claims = { groups = \"analysts\", email_verified = true, amr = [\"mfa\"] }");
        let cfg = FileConfig::parse(&ok).unwrap();
        assert_eq!(cfg.roles[0].max_session, Duration::from_secs(3600));
        assert_eq!(
            cfg.roles[0].require_claims["email_verified"],
            ClaimValues(vec!["true".into()])
        );
        assert_eq!(
            error(&role("arn = \"arn:aws:iam::000000000000:role/analysts\"\noidc = \"crop\"")),
            "invalid config s3gate.toml:33:8: roles[0] (\"arn:aws:iam::000000000000:role/analysts\"): oidc provider \"crop\" is not configured (providers: corp)
   |
33 | oidc = \"crop\"
   |        ^^^^^^"
        );
        assert!(error(&role("arn = \"analysts\"\noidc = \"corp\"")).starts_with(
            "invalid config s3gate.toml:32:7: roles[0] (\"analysts\"): role arn \"analysts\" must look like"
        ));
        assert!(error(&role(
            "arn = \"arn:aws:iam::000000000000:role/a\"\noidc = \"corp\"\nmax_session = \"13h\""
        ))
        .contains("max_session must be between 15m and 12h (is 13h)"));
        assert!(error(&role(
            "arn = \"arn:aws:iam::000000000000:role/a\"\noidc = \"corp\"\nrequire_claims = { groups = [] }"
        ))
        .contains("each required claim needs a name and at least one value"));
        assert!(error(&role(
            "arn = \"arn:aws:iam::000000000000:role/a\"\noidc = \"corp\"\nrequire_claims = { groups = { x = 1 } }"
        ))
        .contains("a required claim is a string, number or boolean, or a list of them"));
        let twice = format!(
            "{ok}\n[[roles]]\narn = \"arn:aws:iam::000000000000:role/analysts\"\noidc = \"corp\"\n"
        );
        assert!(error(&twice)
            .contains("roles[1] (\"arn:aws:iam::000000000000:role/analysts\"): duplicate role"));
    }

    #[test]
    fn policy_and_identity_sources_by_kind() {
        let text = format!(
            "{SAMPLE}
[[policy]]
kind = \"builtin\"
[[policy]]
kind = \"rego\"
files = [\"policies/s3.rego\"]
[[policy]]
kind = \"opa\"
url = \"http://127.0.0.1:8181/v1/data/s3gate/decision\"
timeout = \"200ms\"
[[policy]]
kind = \"sql\"
url = \"postgres://s3gate:PGPASSWORD@127.0.0.1/s3gate\"
query = \"SELECT effect FROM grants WHERE principal = :principal\"
[[policy]]
kind = \"plugin\"
url = \"http://127.0.0.1:50061\"
[[identity]]
kind = \"plugin\"
url = \"http://127.0.0.1:50061\"
"
        );
        let cfg = FileConfig::parse(&text).unwrap();
        let kinds: Vec<_> = cfg.policy.iter().map(PolicyConfig::kind).collect();
        assert_eq!(kinds, ["builtin", "rego", "opa", "sql", "plugin"]);
        match (&cfg.policy[1], &cfg.policy[2], &cfg.policy[4]) {
            (PolicyConfig::Rego(r), PolicyConfig::Opa(o), PolicyConfig::Plugin(p)) => {
                assert_eq!(r.query, "data.s3gate.decision");
                assert_eq!(o.timeout, Duration::from_millis(200));
                assert_eq!(p.timeout, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.identity[0].kind(), "plugin");
        // The database URL can hold a password.
        assert!(!format!("{cfg:?}").contains("PGPASSWORD"));
        let unknown =
            format!("{SAMPLE}\n[[policy]]\nkind = \"rego\"\nfiles = [\"a.rego\"]\nqeury = \"x\"\n");
        assert!(error(&unknown).contains("qeury"), "{}", error(&unknown));
        let empty = format!("{SAMPLE}\n[[policy]]\nkind = \"rego\"\nfiles = []\n");
        assert!(error(&empty).contains("policy[0]"), "{}", error(&empty));
        assert!(error(&empty).contains("at least one file"));
        let kind = format!("{SAMPLE}\n[[policy]]\nkind = \"ldap\"\n");
        assert!(error(&kind).contains("ldap"), "{}", error(&kind));
    }

    #[test]
    fn backend_credentials_flat_or_tagged() {
        let tagged = SAMPLE.replace(
            "access_key = \"BACKENDKEY\"\nsecret_key = \"BACKENDSECRET\"",
            "credentials = { kind = \"static_hmac\", access_key = \"BACKENDKEY\", secret_key = \"BACKENDSECRET\" }",
        );
        assert_ne!(tagged, SAMPLE);
        let flat = FileConfig::parse(SAMPLE).unwrap();
        let tagged = FileConfig::parse(&tagged).unwrap();
        assert_eq!(flat.backends[0].credentials, tagged.backends[0].credentials);
        assert_eq!(tagged.backends[0].credentials.public_id(), "BACKENDKEY");
        // both, or neither
        let both = SAMPLE.replace(
            "access_key = \"BACKENDKEY\"",
            "access_key = \"BACKENDKEY\"\ncredentials = { kind = \"static_hmac\", access_key = \"A\", secret_key = \"B\" }",
        );
        assert!(FileConfig::parse(&both).is_err());
        let neither = SAMPLE.replace(
            "access_key = \"BACKENDKEY\"\nsecret_key = \"BACKENDSECRET\"\n",
            "",
        );
        assert!(FileConfig::parse(&neither).is_err());
    }

    #[test]
    fn exchanged_backend_credentials() {
        let flat = "access_key = \"BACKENDKEY\"\nsecret_key = \"BACKENDSECRET\"";
        let ibm = SAMPLE.replace(
            flat,
            "credentials = { kind = \"ibm_iam\", api_key = \"env:PATH\", service_instance_id = \"crn:v1:x\" }",
        );
        let cfg = FileConfig::parse(&ibm).unwrap();
        let CredentialSpec::IbmIam { api_key, .. } = &cfg.backends[0].credentials else {
            panic!("{:?}", cfg.backends[0].credentials)
        };
        assert_eq!(*api_key.expose(), std::env::var("PATH").unwrap());
        let aws = SAMPLE.replace(
            flat,
            "credentials = { kind = \"aws_assume_role\", role_arn = \"arn:aws:iam::123456789012:role/s3gate\", \
             access_key = \"AKIAX\", secret_key = \"ROLESECRETX\", duration = \"2h\" }",
        );
        let cfg = FileConfig::parse(&aws).unwrap();
        assert_eq!(cfg.backends[0].credentials.kind(), "aws_assume_role");
        // Errors name the entry, the field and the line; never the secret.
        let e = FileConfig::parse(&aws.replace("\"2h\"", "\"13h\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 9") && e.contains("backends[0] (\"local\")") && e.contains("duration"),
            "{e}"
        );
        assert!(!e.contains("ROLESECRETX"), "{e}");
        let e = FileConfig::parse(&ibm.replace("env:PATH", "env:S3GATE_TEST_UNSET_VAR_XYZ"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api_key") && e.contains("S3GATE_TEST_UNSET_VAR_XYZ"),
            "{e}"
        );
        let e = FileConfig::parse(&ibm.replace(
            "kind = \"ibm_iam\", ",
            "kind = \"ibm_iam\", role_arn = \"x\", ",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("role_arn"), "{e}");
    }
}
