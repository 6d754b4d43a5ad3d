//! How the gateway authenticates to a backend: one [`CredentialSpec`], a
//! tagged enum with one variant per kind, carried unchanged through the
//! config file, the state, the Redis store (secrets sealed) and the Admin
//! API. A [`crate::sources::CredentialSource`] turns a spec into the
//! credentials a data plane signs with.
//!
//! Adding a kind: one variant here (with its arms in [`CredentialSpec::kind`]
//! and [`CredentialSpec::try_map`]), its Admin protobuf message, and the
//! source that resolves it.

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// A backend credential. `S` is how a secret is held: [`Secret`] in memory
/// (which has no `Serialize`, so a plaintext spec cannot be written out by
/// accident), a sealed string in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSpec<S = Secret> {
    /// An access key pair signed with SigV4; a session token makes it
    /// temporary (but s3gate does not refresh it).
    StaticHmac {
        access_key: String,
        secret_key: S,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<S>,
    },
    /// An IBM Cloud API key, exchanged at IAM for bearer tokens that are
    /// sent instead of a signature
    /// ([`crate::sources::exchanged::ibm`]).
    IbmIam {
        api_key: S,
        #[serde(default = "default_iam_endpoint")]
        iam_endpoint: String,
        /// Sent as `ibm-service-instance-id` (IBM needs it to create and
        /// list buckets).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_instance_id: Option<String>,
        /// PEM file of extra CA certificates trusted for the IAM endpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_bundle: Option<String>,
    },
    /// An access key pair that assumes `role_arn` through STS; requests are
    /// signed with the session ([`crate::sources::exchanged::sts`]).
    AwsAssumeRole {
        role_arn: String,
        access_key: String,
        secret_key: S,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<S>,
        #[serde(default = "default_sts_endpoint")]
        sts_endpoint: String,
        /// The session's lifetime (`DurationSeconds`), 15 minutes to 12 hours.
        #[serde(default = "default_role_duration", with = "duration_text")]
        duration: std::time::Duration,
        #[serde(default = "default_session_name")]
        session_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_id: Option<String>,
        /// The region STS requests are signed for; default: the one in the
        /// endpoint's host name (`sts.<region>.amazonaws.com`), else
        /// us-east-1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sts_region: Option<String>,
        /// PEM file of extra CA certificates trusted for the STS endpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_bundle: Option<String>,
    },
}

/// IBM Cloud's public IAM token endpoint.
pub const DEFAULT_IAM_ENDPOINT: &str = "https://iam.cloud.ibm.com/identity/token";
/// AWS's global STS endpoint.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com";
/// The session name when none is given.
pub const DEFAULT_SESSION_NAME: &str = "s3gate";
/// The bounds STS puts on `DurationSeconds`.
pub const MIN_ROLE_DURATION: std::time::Duration = std::time::Duration::from_secs(900);
pub const MAX_ROLE_DURATION: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

fn default_iam_endpoint() -> String {
    DEFAULT_IAM_ENDPOINT.to_owned()
}

fn default_sts_endpoint() -> String {
    DEFAULT_STS_ENDPOINT.to_owned()
}

/// One hour, STS's own default.
pub fn default_role_duration() -> std::time::Duration {
    std::time::Duration::from_secs(3600)
}

fn default_session_name() -> String {
    DEFAULT_SESSION_NAME.to_owned()
}

impl<S> CredentialSpec<S> {
    /// The `kind` tag, as written in config files and shown by the Admin API.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StaticHmac { .. } => "static_hmac",
            Self::IbmIam { .. } => "ibm_iam",
            Self::AwsAssumeRole { .. } => "aws_assume_role",
        }
    }

    /// What may be shown about the credential (an access key id; empty for
    /// an API key); never a secret.
    pub fn public_id(&self) -> &str {
        match self {
            Self::StaticHmac { access_key, .. } | Self::AwsAssumeRole { access_key, .. } => {
                access_key
            }
            Self::IbmIam { .. } => "",
        }
    }

    /// Whether the control plane exchanges this credential for temporary
    /// ones (what data planes get) rather than handing it out as it is.
    pub fn is_exchanged(&self) -> bool {
        !matches!(self, Self::StaticHmac { .. })
    }

    /// The same spec with every secret passed through `f`, which gets the
    /// field name (to seal under a context bound to it, or to name it in an
    /// error).
    pub fn try_map<T, E>(
        &self,
        mut f: impl FnMut(&'static str, &S) -> Result<T, E>,
    ) -> Result<CredentialSpec<T>, E> {
        Ok(match self {
            Self::StaticHmac {
                access_key,
                secret_key,
                session_token,
            } => CredentialSpec::StaticHmac {
                access_key: access_key.clone(),
                secret_key: f("secret_key", secret_key)?,
                session_token: session_token
                    .as_ref()
                    .map(|t| f("session_token", t))
                    .transpose()?,
            },
            Self::IbmIam {
                api_key,
                iam_endpoint,
                service_instance_id,
                ca_bundle,
            } => CredentialSpec::IbmIam {
                api_key: f("api_key", api_key)?,
                iam_endpoint: iam_endpoint.clone(),
                service_instance_id: service_instance_id.clone(),
                ca_bundle: ca_bundle.clone(),
            },
            Self::AwsAssumeRole {
                role_arn,
                access_key,
                secret_key,
                session_token,
                sts_endpoint,
                duration,
                session_name,
                external_id,
                sts_region,
                ca_bundle,
            } => CredentialSpec::AwsAssumeRole {
                role_arn: role_arn.clone(),
                access_key: access_key.clone(),
                secret_key: f("secret_key", secret_key)?,
                session_token: session_token
                    .as_ref()
                    .map(|t| f("session_token", t))
                    .transpose()?,
                sts_endpoint: sts_endpoint.clone(),
                duration: *duration,
                session_name: session_name.clone(),
                external_id: external_id.clone(),
                sts_region: sts_region.clone(),
                ca_bundle: ca_bundle.clone(),
            },
        })
    }
}

impl CredentialSpec<Secret> {
    /// Checks the non-secret fields; the error starts with the field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::StaticHmac { access_key, .. } if access_key.is_empty() => {
                Err("access_key is empty".to_owned())
            }
            Self::StaticHmac { .. } => Ok(()),
            Self::IbmIam {
                iam_endpoint,
                service_instance_id,
                ca_bundle,
                ..
            } => {
                check_url("iam_endpoint", iam_endpoint)?;
                if service_instance_id.as_deref() == Some("") {
                    return Err("service_instance_id: is empty (leave it out instead)".to_owned());
                }
                check_ca_bundle(ca_bundle.as_deref())
            }
            Self::AwsAssumeRole {
                role_arn,
                access_key,
                sts_endpoint,
                duration,
                session_name,
                external_id,
                sts_region,
                ca_bundle,
                ..
            } => {
                if !(role_arn.starts_with("arn:") && role_arn.contains(":role/")) {
                    return Err(format!(
                        "role_arn: {role_arn:?} is not a role ARN (arn:aws:iam::<account>:role/<name>)"
                    ));
                }
                if access_key.is_empty() {
                    return Err("access_key is empty".to_owned());
                }
                check_url("sts_endpoint", sts_endpoint)?;
                if !(MIN_ROLE_DURATION..=MAX_ROLE_DURATION).contains(duration) {
                    return Err(format!(
                        "duration: {} is outside 15m..12h",
                        humantime::format_duration(*duration)
                    ));
                }
                let name_ok = |s: &str| {
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c))
                };
                if !(2..=64).contains(&session_name.len()) || !name_ok(session_name) {
                    return Err(format!(
                        "session_name: {session_name:?} must be 2 to 64 of A-Z a-z 0-9 +=,.@-_"
                    ));
                }
                if let Some(id) = external_id {
                    if !(2..=1224).contains(&id.len()) || !id.chars().all(|c| c.is_ascii_graphic())
                    {
                        return Err(
                            "external_id: must be 2 to 1224 visible ASCII characters".to_owned()
                        );
                    }
                }
                if let Some(region) = sts_region {
                    if region.is_empty()
                        || !region
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    {
                        return Err(format!("sts_region: {region:?} is not a region name"));
                    }
                }
                check_ca_bundle(ca_bundle.as_deref())
            }
        }
    }
}

/// An http(s) URL with a host and without userinfo.
fn check_url(field: &str, url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{field}: {url:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!(
            "{field}: {url:?} must start with https:// (or http://)"
        ));
    }
    match uri.authority() {
        Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => Ok(()),
        _ => Err(format!(
            "{field}: {url:?} needs a host and no user:password@"
        )),
    }
}

fn check_ca_bundle(path: Option<&str>) -> Result<(), String> {
    match path {
        Some("") => Err("ca_bundle: is empty (leave it out instead)".to_owned()),
        Some(p) if !std::path::Path::new(p).is_file() => {
            Err(format!("ca_bundle: {p}: no such file"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tagged_by_kind_and_strict() {
        let spec: CredentialSpec =
            toml::from_str("kind = \"static_hmac\"\naccess_key = \"AK\"\nsecret_key = \"SK\"\n")
                .unwrap();
        assert_eq!(spec.kind(), "static_hmac");
        assert_eq!(spec.public_id(), "AK");
        assert!(!format!("{spec:?}").contains("SK"));
        for bad in [
            "kind = \"nope\"\naccess_key = \"AK\"\nsecret_key = \"SK\"\n",
            "kind = \"static_hmac\"\naccess_key = \"AK\"\nsecret_key = \"SK\"\nextra = 1\n",
            "access_key = \"AK\"\nsecret_key = \"SK\"\n",
        ] {
            assert!(toml::from_str::<CredentialSpec>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn try_map_visits_every_secret_with_its_field() {
        let spec = CredentialSpec::StaticHmac {
            access_key: "AK".into(),
            secret_key: Secret::new("SK"),
            session_token: Some(Secret::new("TOK")),
        };
        let sealed: CredentialSpec<String> = spec
            .try_map(|field, s| Ok::<_, ()>(format!("{field}={}", s.expose().len())))
            .unwrap();
        let json = serde_json::to_value(&sealed).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "static_hmac", "access_key": "AK",
                "secret_key": "secret_key=2", "session_token": "session_token=3"})
        );
        let back: CredentialSpec<String> = serde_json::from_value(json).unwrap();
        assert_eq!(back, sealed);
    }

    #[test]
    fn ibm_iam_defaults_and_validation() {
        let spec: CredentialSpec =
            toml::from_str("kind = \"ibm_iam\"\napi_key = \"APIKEY123\"\n").unwrap();
        assert_eq!(spec.kind(), "ibm_iam");
        assert_eq!(spec.public_id(), "");
        assert!(spec.is_exchanged());
        let CredentialSpec::IbmIam { iam_endpoint, .. } = &spec else {
            panic!("{spec:?}")
        };
        assert_eq!(iam_endpoint, DEFAULT_IAM_ENDPOINT);
        assert!(spec.validate().is_ok());
        assert!(!format!("{spec:?}").contains("APIKEY123"));
        for (extra, field) in [
            ("iam_endpoint = \"ftp://x\"", "iam_endpoint"),
            ("iam_endpoint = \"https://u:p@iam\"", "iam_endpoint"),
            ("service_instance_id = \"\"", "service_instance_id"),
            ("ca_bundle = \"/nonexistent/ca.pem\"", "ca_bundle"),
        ] {
            let spec: CredentialSpec =
                toml::from_str(&format!("kind = \"ibm_iam\"\napi_key = \"K\"\n{extra}\n")).unwrap();
            let e = spec.validate().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
        // The api key is a secret: sealed like the others.
        let sealed: CredentialSpec<String> = spec
            .try_map(|field, _| Ok::<_, ()>(field.to_owned()))
            .unwrap();
        assert_eq!(
            serde_json::to_value(&sealed).unwrap(),
            serde_json::json!({"kind": "ibm_iam", "api_key": "api_key",
                "iam_endpoint": DEFAULT_IAM_ENDPOINT})
        );
        assert!(toml::from_str::<CredentialSpec>("kind = \"ibm_iam\"\n").is_err());
    }

    #[test]
    fn aws_assume_role_defaults_and_validation() {
        let base =
            "kind = \"aws_assume_role\"\nrole_arn = \"arn:aws:iam::123456789012:role/s3gate\"\n\
                    access_key = \"AKIAX\"\nsecret_key = \"SECRETX\"\n";
        let spec: CredentialSpec = toml::from_str(base).unwrap();
        assert_eq!(spec.kind(), "aws_assume_role");
        assert_eq!(spec.public_id(), "AKIAX");
        spec.validate().unwrap();
        let CredentialSpec::AwsAssumeRole {
            sts_endpoint,
            duration,
            session_name,
            ..
        } = &spec
        else {
            panic!("{spec:?}")
        };
        assert_eq!(sts_endpoint, DEFAULT_STS_ENDPOINT);
        assert_eq!(*duration, std::time::Duration::from_secs(3600));
        assert_eq!(session_name, "s3gate");
        let with: CredentialSpec = toml::from_str(&format!("{base}duration = \"2h\"\n")).unwrap();
        with.validate().unwrap();
        for (extra, field) in [
            ("duration = \"5m\"", "duration"),
            ("duration = \"13h\"", "duration"),
            ("session_name = \"a b\"", "session_name"),
            ("external_id = \"x\"", "external_id"),
            ("sts_region = \"EU WEST\"", "sts_region"),
            ("sts_endpoint = \"sts.amazonaws.com\"", "sts_endpoint"),
        ] {
            let spec: CredentialSpec = toml::from_str(&format!("{base}{extra}\n")).unwrap();
            let e = spec.validate().unwrap_err();
            assert!(e.starts_with(field), "{extra}: {e}");
        }
        let bad_arn: CredentialSpec =
            toml::from_str(&base.replace("arn:aws:iam::123456789012:role/s3gate", "s3gate"))
                .unwrap();
        assert!(bad_arn.validate().unwrap_err().starts_with("role_arn"));
        assert!(toml::from_str::<CredentialSpec>(&format!("{base}duration = \"soon\"\n")).is_err());
        // Both secrets are visited, and the duration survives the store.
        let sealed: CredentialSpec<String> = with
            .try_map(|field, _| Ok::<_, ()>(format!("sealed-{field}")))
            .unwrap();
        let json = serde_json::to_value(&sealed).unwrap();
        assert_eq!(json["secret_key"], "sealed-secret_key");
        assert_eq!(json["duration"], "2h");
        let back: CredentialSpec<String> = serde_json::from_value(json).unwrap();
        assert_eq!(back, sealed);
    }
}

/// Where a bucket's backend credentials come from when not from its
/// backend's record: `credentials = { kind = "plugin", … }` in
/// `[[buckets]]`, carried unchanged through the state, the store and the
/// Admin API. It holds no secret (the source hands them out per request).
///
/// Adding a kind: one variant here, its Admin protobuf fields, and its
/// compiled source in [`crate::sources::Sources::compile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BucketCredentialSource {
    /// `BucketCredentials` of an `s3gate.plugin.v1.Plugin`, asked per
    /// principal; the plugin says whether its answer is the principal's own.
    Plugin(RemoteCredentials),
    /// A query returning `access_key`, `secret_key` (and optionally
    /// `session_token`, `expires_unix`) for `:principal`, `:groups`,
    /// `:bucket` ([`crate::sources::sql::credentials`]).
    Sql(SqlCredentials),
}

/// `credentials = { kind = "sql", url = "…", query = "…", timeout = "…" }`.
///
/// The URL is kept as written, so no database password reaches the store
/// or the Admin API: empty means the control plane's own database (the
/// first `[[policy]]` or `[[identity]]` sql entry of its config file), an
/// `env:VAR` reference is resolved by the control plane when it opens the
/// pool, and a URL carrying a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlCredentials {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// With the named binds `:principal`, `:groups` (a JSON array as text)
    /// and `:bucket`. The answer is the principal's own when the query
    /// uses `:principal` or `:groups`.
    pub query: String,
    /// How long one answer may take; past it, the request gets 503.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: std::time::Duration,
}

impl SqlCredentials {
    /// Checks what can be checked without the database: a query, binds
    /// the source knows (named in the error), and a URL of a supported
    /// database that carries no password.
    pub fn validate(&self) -> Result<(), String> {
        use crate::sources::sql::{binds, credentials::BINDS};
        if self.query.trim().is_empty() {
            return Err("credentials of kind sql need a query".to_owned());
        }
        let url = self.url.as_str();
        let dialect = if url.starts_with("sqlite:") {
            binds::Dialect::Sqlite
        } else {
            binds::Dialect::Postgres
        };
        if !url.is_empty() && !url.starts_with("env:") {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(
                    "url: must start with postgres:// (or postgresql://) or sqlite:, or be an \
                     env:VAR reference"
                        .to_owned(),
                );
            }
            if crate::sources::sql::url_has_password(url) {
                return Err(
                    "url: carries a password, which would be stored and listed with the bucket; \
                     write url = \"env:VAR\" (resolved by the control plane) or leave url out \
                     to use the database of the first [[policy]] or [[identity]] sql entry"
                        .to_owned(),
                );
            }
        }
        let rewritten = binds::rewrite(&self.query, dialect).map_err(|e| format!("query: {e}"))?;
        if let Some(name) = rewritten
            .binds
            .iter()
            .find(|name| !BINDS.contains(&name.as_str()))
        {
            return Err(format!(
                "query: unknown bind :{name} (bucket credentials bind :principal, :groups, \
                 :bucket)"
            ));
        }
        Ok(())
    }

    /// Whether the answer depends on who asks.
    pub fn per_principal(&self) -> bool {
        let dialect = if self.url.starts_with("sqlite:") {
            crate::sources::sql::binds::Dialect::Sqlite
        } else {
            crate::sources::sql::binds::Dialect::Postgres
        };
        crate::sources::sql::binds::rewrite(&self.query, dialect).map_or(true, |r| {
            r.binds.iter().any(|b| b == "principal" || b == "groups")
        })
    }
}

/// A credential source reached by URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteCredentials {
    /// Empty in a config file: the URL of the first `[[policy]]` or
    /// `[[identity]]` plugin entry (filled in when the file is loaded).
    #[serde(default)]
    pub url: String,
    /// How long one answer may take; past it, the request gets 503.
    #[serde(default = "default_timeout", with = "duration_text")]
    pub timeout: std::time::Duration,
}

impl BucketCredentialSource {
    /// The `kind` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Plugin(_) => "plugin",
            Self::Sql(_) => "sql",
        }
    }

    /// Checks the settings (a plugin URL is checked when it is dialled).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::Plugin(_) => Ok(()),
            Self::Sql(c) => c.validate(),
        }
    }

    /// One line for listings: the kind, the URL without credentials, and
    /// for SQL the start of the query. Never a password.
    pub fn summary(&self) -> String {
        match self {
            Self::Plugin(r) => format!(
                "plugin {} timeout={}",
                crate::sources::sql::redacted_url(&r.url),
                humantime::format_duration(r.timeout)
            ),
            Self::Sql(c) => format!(
                "sql {} query={:?} timeout={}{}",
                if c.url.is_empty() {
                    "(the first [[policy]]/[[identity]] sql database)".to_owned()
                } else {
                    crate::sources::sql::redacted_url(&c.url)
                },
                crate::sources::sql::query_summary(&c.query),
                humantime::format_duration(c.timeout),
                if c.per_principal() {
                    " per_principal"
                } else {
                    ""
                }
            ),
        }
    }
}

fn default_timeout() -> std::time::Duration {
    std::time::Duration::from_millis(500)
}

/// A duration as humantime text (`"500ms"`), both ways.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}
