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
/// Adding a kind (`{ kind = "sql", query = "…" }`): one variant here, its
/// Admin protobuf fields, and its arm in
/// [`crate::sources::plugin::BucketCredentialSources`]' builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BucketCredentialSource {
    /// `BucketCredentials` of an `s3gate.plugin.v1.Plugin`, asked per
    /// principal; the plugin says whether its answer is the principal's own.
    Plugin(RemoteCredentials),
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
