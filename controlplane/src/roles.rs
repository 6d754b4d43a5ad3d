//! `[[roles]]`, compiled: what STS `AssumeRoleWithWebIdentity` checks a
//! verified token against, and what a session of the role gets. Pure: the
//! STS engine ([`crate::sts`]) does the verifying and the minting.

use std::collections::HashMap;

use ring::digest::{digest, SHA256};
use serde_json::Value;

use crate::config::RoleConfig;

/// A role ARN's parts: `arn:<partition>:iam::<account>:role/<path/><name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn {
    pub partition: String,
    pub account: String,
    /// The role's name (without its path).
    pub name: String,
}

/// Reads a role ARN; the error says what shape is expected.
pub fn parse_role_arn(arn: &str) -> Result<RoleArn, String> {
    let bad = || {
        format!(
            "role arn {arn:?} must look like \"arn:aws:iam::000000000000:role/NAME\" \
             (a 12-digit account, an optional path)"
        )
    };
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    let name = resource
        .strip_prefix("role/")
        .and_then(|path| path.rsplit('/').next())
        .filter(|n| {
            (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
        })
        .ok_or_else(bad)?;
    let valid_partition = !partition.is_empty()
        && partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_partition || account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(RoleArn {
        partition: partition.to_owned(),
        account: account.to_owned(),
        name: name.to_owned(),
    })
}

/// One role, ready to check tokens against.
#[derive(Debug, Clone)]
pub struct Role {
    pub arn: String,
    pub parsed: RoleArn,
    /// `AROA` and 17 characters derived from the ARN: stable, like AWS's
    /// role ids.
    pub id: String,
    /// The `[[oidc]]` provider it takes tokens of.
    pub oidc: String,
    pub groups: Vec<String>,
    pub require_claims: Vec<(String, Vec<String>)>,
    pub max_session: u64,
}

/// Every configured role, by ARN.
#[derive(Debug, Clone, Default)]
pub struct Roles(HashMap<String, Role>);

impl Roles {
    /// The roles of a validated config (an ARN that does not parse, which
    /// validation refuses, is left out).
    pub fn from_config(roles: &[RoleConfig]) -> Self {
        Self(
            roles
                .iter()
                .filter_map(|r| {
                    let parsed = parse_role_arn(&r.arn).ok()?;
                    let role = Role {
                        id: role_id(&r.arn),
                        arn: r.arn.clone(),
                        parsed,
                        oidc: r.oidc.clone(),
                        groups: r.groups.clone(),
                        require_claims: r
                            .require_claims
                            .iter()
                            .map(|(k, v)| (k.clone(), v.0.clone()))
                            .collect(),
                        max_session: r.max_session.as_secs(),
                    };
                    Some((r.arn.clone(), role))
                })
                .collect(),
        )
    }

    pub fn get(&self, arn: &str) -> Option<&Role> {
        self.0.get(arn)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn role_id(arn: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = digest(&SHA256, arn.as_bytes());
    let mut id = String::from("AROA");
    id.extend(
        hash.as_ref()
            .iter()
            .take(17)
            .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
    );
    id
}

impl Role {
    /// The session length for `DurationSeconds` (`asked`), at least `min`
    /// (900 s unless a test lowers it), at most the role's `max_session`;
    /// without it, an hour (or `max_session` if shorter). The error is the
    /// client's message.
    pub fn duration(&self, asked: Option<u64>, min: u64) -> Result<u64, String> {
        let max = self.max_session;
        match asked {
            None => Ok(s3gate_s3::sts::DEFAULT_DURATION_SECONDS.min(max)),
            Some(d) if d < min => Err(format!(
                "1 validation error detected: Value '{d}' at 'durationSeconds' failed to \
                 satisfy constraint: Member must have value greater than or equal to {min}"
            )),
            Some(d) if d > max => Err(format!(
                "The requested DurationSeconds ({d}) exceeds the MaxSessionDuration ({max}) set \
                 for this role."
            )),
            Some(d) => Ok(d),
        }
    }

    /// The first required claim the token's `claims` do not satisfy.
    pub fn unmet_claim(&self, claims: &serde_json::Map<String, Value>) -> Option<&str> {
        self.require_claims
            .iter()
            .find(|(name, wanted)| {
                let have = claims.get(name.as_str());
                !wanted.iter().all(|w| have.is_some_and(|v| carries(v, w)))
            })
            .map(|(name, _)| name.as_str())
    }

    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub fn assumed_role_arn(&self, session_name: &str) -> String {
        format!(
            "arn:{}:sts::{}:assumed-role/{}/{session_name}",
            self.parsed.partition, self.parsed.account, self.parsed.name
        )
    }

    /// `AROA…:<session>`.
    pub fn assumed_role_id(&self, session_name: &str) -> String {
        format!("{}:{session_name}", self.id)
    }

    /// The token's groups, then the role's, each once.
    pub fn session_groups(&self, token_groups: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(token_groups.len() + self.groups.len());
        for g in token_groups.iter().chain(&self.groups) {
            if !out.contains(g) {
                out.push(g.clone());
            }
        }
        out
    }
}

/// Whether a claim value carries `wanted`: equal as text (a string, or the
/// number or boolean written out), or an array with such an element.
fn carries(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Bool(b) => wanted == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == wanted,
        Value::Array(items) => items.iter().any(|v| !v.is_array() && carries(v, wanted)),
        Value::Null | Value::Object(_) => false,
    }
}

/// Claims as (name, text) pairs for policy: strings as they are, anything
/// else as compact JSON.
pub fn flatten_claims(claims: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    claims
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::config::ClaimValues;

    fn role(require: &[(&str, &[&str])], max: u64) -> Role {
        let cfg = RoleConfig {
            arn: "arn:aws:iam::000000000000:role/team/analysts".into(),
            oidc: "corp".into(),
            groups: vec!["analysts".into()],
            require_claims: require
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        ClaimValues(v.iter().map(|s| (*s).to_owned()).collect()),
                    )
                })
                .collect(),
            max_session: Duration::from_secs(max),
        };
        Roles::from_config(&[cfg]).get(&cfg_arn()).unwrap().clone()
    }

    fn cfg_arn() -> String {
        "arn:aws:iam::000000000000:role/team/analysts".into()
    }

    #[test]
    fn arns_parse_or_say_what_is_expected() {
        let a = parse_role_arn("arn:aws:iam::123456789012:role/analysts").unwrap();
        assert_eq!(
            (a.partition.as_str(), a.account.as_str(), a.name.as_str()),
            ("aws", "123456789012", "analysts")
        );
        let a = parse_role_arn("arn:aws-cn:iam::123456789012:role/path/to/ci").unwrap();
        assert_eq!(a.name, "ci");
        for bad in [
            "analysts",
            "arn:aws:iam::12345:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam:us-east-1:123456789012:role/x",
            "arn:aws:iam::123456789012:role/",
            "arn:AWS:iam::123456789012:role/x",
            "arn:aws:iam::123456789012:role/bad name",
        ] {
            let err = parse_role_arn(bad).unwrap_err();
            assert!(
                err.contains("arn:aws:iam::000000000000:role/NAME"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations_within_the_role() {
        let r = role(&[], 43_200);
        assert_eq!(r.duration(None, 900), Ok(3600));
        assert_eq!(r.duration(Some(900), 900), Ok(900));
        assert_eq!(r.duration(Some(43_200), 900), Ok(43_200));
        assert!(r
            .duration(Some(899), 900)
            .unwrap_err()
            .contains("greater than or equal to 900"));
        assert!(r
            .duration(Some(43_201), 900)
            .unwrap_err()
            .contains("MaxSessionDuration"));
        // A role shorter than an hour defaults to its maximum.
        assert_eq!(role(&[], 1800).duration(None, 900), Ok(1800));
        // The test-only minimum.
        assert_eq!(r.duration(Some(2), 1), Ok(2));
    }

    #[test]
    fn required_claims_match_strings_arrays_and_scalars() {
        let r = role(
            &[("groups", &["analysts"]), ("email_verified", &["true"])],
            3600,
        );
        let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(
            r.unmet_claim(&claims(
                json!({"groups": ["dev", "analysts"], "email_verified": true})
            )),
            None
        );
        assert_eq!(
            r.unmet_claim(&claims(
                json!({"groups": "analysts", "email_verified": true})
            )),
            None
        );
        assert_eq!(
            r.unmet_claim(&claims(json!({"groups": ["dev"], "email_verified": true}))),
            Some("groups")
        );
        assert_eq!(
            r.unmet_claim(&claims(json!({"groups": ["analysts"]}))),
            Some("email_verified")
        );
        assert_eq!(
            r.unmet_claim(&claims(
                json!({"groups": ["analysts"], "email_verified": "false"})
            )),
            Some("email_verified")
        );
        assert_eq!(
            r.unmet_claim(&claims(
                json!({"groups": [["analysts"]], "email_verified": true})
            )),
            Some("groups")
        );
        // Every listed value is required.
        let both = role(&[("groups", &["a", "b"])], 3600);
        assert_eq!(
            both.unmet_claim(&claims(json!({"groups": ["a", "b", "c"]}))),
            None
        );
        assert_eq!(
            both.unmet_claim(&claims(json!({"groups": ["a"]}))),
            Some("groups")
        );
        assert_eq!(role(&[], 3600).unmet_claim(&claims(json!({}))), None);
    }

    #[test]
    fn session_names_and_groups() {
        let r = role(&[], 3600);
        assert_eq!(
            r.assumed_role_arn("s1"),
            "arn:aws:sts::000000000000:assumed-role/analysts/s1"
        );
        let id = r.assumed_role_id("s1");
        assert!(
            id.starts_with("AROA") && id.ends_with(":s1") && id.len() == 21 + 3,
            "{id}"
        );
        assert_eq!(id, role(&[], 900).assumed_role_id("s1"), "stable");
        assert_eq!(
            r.session_groups(&["dev".into(), "analysts".into()]),
            ["dev", "analysts"]
        );
        assert_eq!(r.session_groups(&[]), ["analysts"]);
        let flat = flatten_claims(
            json!({"sub": "a", "groups": ["x"], "n": 1})
                .as_object()
                .unwrap(),
        );
        assert!(flat.contains(&("sub".into(), "a".into())));
        assert!(flat.contains(&("groups".into(), "[\"x\"]".into())));
        assert!(flat.contains(&("n".into(), "1".into())));
    }
}
