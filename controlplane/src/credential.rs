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
}

impl<S> CredentialSpec<S> {
    /// The `kind` tag, as written in config files and shown by the Admin API.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::StaticHmac { .. } => "static_hmac",
        }
    }

    /// What may be shown about the credential (an access key id); never a
    /// secret.
    pub fn public_id(&self) -> &str {
        match self {
            Self::StaticHmac { access_key, .. } => access_key,
        }
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
        })
    }
}

impl CredentialSpec<Secret> {
    /// Checks the non-secret fields.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::StaticHmac { access_key, .. } if access_key.is_empty() => {
                Err("access_key is empty".to_owned())
            }
            Self::StaticHmac { .. } => Ok(()),
        }
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
