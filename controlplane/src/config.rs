//! The TOML file that seeds a control plane (and, in `s3gate serve`, also
//! carries the data plane's listen address, region and base domains).
//!
//! Secrets may be written inline or as `env:VAR` references, resolved once at
//! load time. Every secret is held in [`Secret`], whose `Debug` is redacted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::credential::CredentialSpec;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A secret string. `Debug` never shows it.
pub type Secret = s3gate_proto::Redacted<String>;

/// Resolves an `env:VAR` reference in place; an empty secret is an error.
fn resolve(secret: &mut Secret, what: &str) -> Result<(), ConfigError> {
    if let Some(var) = secret.expose().strip_prefix("env:") {
        let value = std::env::var(var).map_err(|_| {
            ConfigError::Invalid(format!("{what}: environment variable {var} is not set"))
        })?;
        *secret = Secret::new(value);
    }
    if secret.expose().is_empty() {
        return Err(ConfigError::Invalid(format!("{what}: secret is empty")));
    }
    Ok(())
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
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub buckets: Vec<BucketConfig>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What clients may cost the gateway (`s3gate serve`; flags override).
    #[serde(default)]
    pub limits: LimitsConfig,
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
#[derive(Debug, Clone, Deserialize)]
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
}

impl TryFrom<RawBackendConfig> for BackendConfig {
    type Error = String;

    fn try_from(raw: RawBackendConfig) -> Result<Self, String> {
        let flat =
            raw.access_key.is_some() || raw.secret_key.is_some() || raw.session_token.is_some();
        let credentials = match (raw.credentials, flat) {
            (Some(spec), false) => spec,
            (Some(_), true) => {
                return Err(format!(
                    "backend {:?}: give either `credentials` or access_key/secret_key, not both",
                    raw.name
                ))
            }
            (None, _) => match (raw.access_key, raw.secret_key) {
                (Some(access_key), Some(secret_key)) => CredentialSpec::StaticHmac {
                    access_key,
                    secret_key,
                    session_token: raw.session_token,
                },
                _ => {
                    return Err(format!(
                        "backend {:?}: needs `credentials = {{ kind = … }}` or access_key and secret_key",
                        raw.name
                    ))
                }
            },
        };
        Ok(Self {
            name: raw.name,
            endpoint: raw.endpoint,
            region: raw.region,
            addressing_style: raw.addressing_style,
            credentials,
            ca_bundle: raw.ca_bundle,
            insecure_skip_verify: raw.insecure_skip_verify,
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
    pub name: String,
    pub backend: String,
    #[serde(default)]
    pub backend_bucket: Option<String>,
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
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
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses, resolves `env:` secrets and validates cross references.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut cfg: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_owned()))?;
        cfg.resolve_and_validate()?;
        Ok(cfg)
    }

    fn resolve_and_validate(&mut self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let mut names = HashSet::new();
        for b in &mut self.backends {
            if !names.insert(b.name.clone()) {
                return invalid(format!("duplicate backend {:?}", b.name));
            }
            b.credentials = b.credentials.try_map(|field, secret| {
                let mut secret = secret.clone();
                resolve(&mut secret, &format!("backend {:?} {field}", b.name))?;
                Ok::<_, ConfigError>(secret)
            })?;
            b.credentials
                .validate()
                .map_err(|m| ConfigError::Invalid(format!("backend {:?}: {m}", b.name)))?;
            let rest = b
                .endpoint
                .strip_prefix("http://")
                .or_else(|| b.endpoint.strip_prefix("https://"));
            match rest {
                Some(authority)
                    if !authority.is_empty() && !authority.trim_end_matches('/').contains('/') =>
                {
                    b.endpoint = b.endpoint.trim_end_matches('/').to_owned();
                }
                _ => {
                    return invalid(format!(
                        "backend {:?}: endpoint must be http(s)://host[:port] without a path",
                        b.name
                    ))
                }
            }
        }
        let mut buckets = HashSet::new();
        for b in &self.buckets {
            if !buckets.insert(b.name.clone()) {
                return invalid(format!("duplicate bucket {:?}", b.name));
            }
            if !names.contains(&b.backend) {
                return invalid(format!(
                    "bucket {:?} names unknown backend {:?}",
                    b.name, b.backend
                ));
            }
            let valid = |n: &str| {
                !n.is_empty()
                    && n.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
            };
            if !valid(&b.name) || !b.backend_bucket.as_deref().is_none_or(valid) {
                return invalid(format!("bucket {:?}: invalid bucket name", b.name));
            }
        }
        let mut keys = HashSet::new();
        for k in &mut self.keys {
            if !keys.insert(k.access_key.clone()) {
                return invalid(format!("duplicate access key {:?}", k.access_key));
            }
            if k.access_key.is_empty()
                || !k
                    .access_key
                    .bytes()
                    .all(|c| c.is_ascii_graphic() && c != b'/')
            {
                return invalid(format!(
                    "access key {:?} must be printable ASCII without '/'",
                    k.access_key
                ));
            }
            if k.principal.is_empty() || k.principal == s3gate_proto::Principal::ANONYMOUS {
                return invalid(format!("access key {:?}: invalid principal", k.access_key));
            }
            resolve(
                &mut k.secret_key,
                &format!("key {:?} secret_key", k.access_key),
            )?;
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.principals.is_empty() || r.actions.is_empty() || r.resources.is_empty() {
                return invalid(format!(
                    "rule #{}: principals, actions and resources must not be empty",
                    i + 1
                ));
            }
            for a in &r.actions {
                if !a.starts_with("s3:") && a != "*" {
                    return invalid(format!(
                        "rule #{}: action {a:?} must start with 's3:'",
                        i + 1
                    ));
                }
            }
            for res in &r.resources {
                if res.is_empty() || res.starts_with('/') {
                    return invalid(format!(
                        "rule #{}: resource {res:?} must be 'bucket' or 'bucket/key-glob'",
                        i + 1
                    ));
                }
            }
        }
        for d in &mut self.base_domains {
            *d = d.trim_end_matches('.').to_ascii_lowercase();
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let CredentialSpec::StaticHmac { secret_key, .. } = &cfg.backends[0].credentials;
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
}
