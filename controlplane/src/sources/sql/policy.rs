//! `[[policy]] kind = "sql"`: grants as rows.
//!
//! The query may use the binds of the decision input document:
//! `:principal`, `:groups` (a JSON array as text), `:action`, `:bucket`,
//! `:key` (the object key, or ""), `:prefix` (the listed prefix of a
//! ListBucket, or ""), `:kind` (`object`, `prefix` or `bucket`), and the
//! request's circumstances `:method`, `:client_ip` and `:identity_source`.
//! A query that uses one of the last three answers for the exact request
//! and is not cached (decisions are cached without the circumstances).
//!
//! Each row it returns has an `effect` column, `allow` or `deny`, and
//! optionally `reason`, `ttl_s` and `scope_prefix`. Any deny row denies;
//! else any allow row allows; no row: the source abstains. A row that does
//! not say allow or deny makes the source unable to decide (503), never an
//! allow.

use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{AuthorizeRequest, Resource, Scope};

use super::{Database, Row, Value};
use crate::config::{CacheConfig, SqlSourceConfig};
use crate::sources::policy::{Answer, PolicySource, Verdict, VerdictKind};
use crate::sources::{BuildError, SourceError};

const NAME: &str = "sql";

/// Every bind a policy query may use.
pub const BINDS: &[&str] = &[
    "principal",
    "groups",
    "action",
    "bucket",
    "key",
    "prefix",
    "kind",
    "method",
    "client_ip",
    "identity_source",
];

/// Binds that are not part of a decision's cache key.
const CIRCUMSTANCES: &[&str] = &["method", "client_ip", "identity_source"];

pub struct SqlPolicy {
    db: Database,
    /// The `[cache] decision_ttl`: no answer is cached longer.
    max_ttl: Duration,
    /// The query looks at the request's circumstances: answers are exact
    /// and not cached.
    uncacheable: bool,
}

impl SqlPolicy {
    pub fn new(config: &SqlSourceConfig, cache: &CacheConfig) -> Result<Self, BuildError> {
        let db = Database::open(NAME, "policy", config, BINDS)?;
        let uncacheable = CIRCUMSTANCES.iter().any(|b| db.uses(b));
        Ok(Self {
            db,
            max_ttl: cache.decision_ttl,
            uncacheable,
        })
    }
}

/// The value of the bind `name` for `req`.
fn bind(req: &AuthorizeRequest, name: &str) -> String {
    match name {
        "principal" => req.principal.name.to_string(),
        "groups" => {
            let groups: Vec<&str> = req.principal.groups.iter().map(|g| &**g).collect();
            serde_json::to_string(&groups).unwrap_or_else(|_| "[]".to_owned())
        }
        "action" => req.action.to_string(),
        "bucket" => req.bucket.clone(),
        "key" => match &req.resource {
            Resource::Object(key) => key.clone(),
            _ => String::new(),
        },
        "prefix" => match &req.resource {
            Resource::Prefix(prefix) => prefix.clone(),
            _ => String::new(),
        },
        "kind" => match &req.resource {
            Resource::Object(_) => "object",
            Resource::Prefix(_) => "prefix",
            Resource::Bucket => "bucket",
        }
        .to_owned(),
        "method" => req.context.method.to_string(),
        "client_ip" => req
            .context
            .client_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        "identity_source" => req.context.identity_source.to_string(),
        _ => String::new(),
    }
}

/// One row, read.
struct Grant {
    kind: VerdictKind,
    reason: Option<String>,
    ttl_s: Option<u64>,
    scope_prefix: Option<String>,
}

fn text(row: &Row, column: &str) -> Result<Option<String>, String> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Text(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("column {column} is {}, not text", other.kind())),
    }
}

fn grant(row: &Row) -> Result<Grant, String> {
    let kind = match row.get("effect") {
        None => return Err("the query returns no effect column".to_owned()),
        Some(Value::Text(effect)) if effect.trim().eq_ignore_ascii_case("allow") => {
            VerdictKind::Allow
        }
        Some(Value::Text(effect)) if effect.trim().eq_ignore_ascii_case("deny") => {
            VerdictKind::Deny
        }
        Some(Value::Text(effect)) => {
            return Err(format!("effect {effect:?} is neither 'allow' nor 'deny'"))
        }
        Some(other) => return Err(format!("effect is {}, not 'allow' or 'deny'", other.kind())),
    };
    let ttl_s = match row.get("ttl_s") {
        None | Some(Value::Null) => None,
        Some(Value::Int(n)) => {
            Some(u64::try_from(*n).map_err(|_| format!("ttl_s {n} is negative"))?)
        }
        Some(other) => return Err(format!("ttl_s is {}, not an integer", other.kind())),
    };
    Ok(Grant {
        kind,
        reason: text(row, "reason")?,
        ttl_s,
        scope_prefix: text(row, "scope_prefix")?,
    })
}

/// The rows' answer for a request on `key`: any deny, else any allow, else
/// abstain. Among several rows of the deciding effect, the shortest TTL
/// and the narrowest scope: a scope only if every such row gave one that
/// covers the key.
fn answer(rows: &[Row], key: Option<&str>) -> Result<Answer, String> {
    let grants = rows.iter().map(grant).collect::<Result<Vec<_>, _>>()?;
    let kind = if grants.iter().any(|g| g.kind == VerdictKind::Deny) {
        VerdictKind::Deny
    } else if grants.is_empty() {
        return Ok(Answer {
            kind: VerdictKind::Abstain,
            reason: None,
            ttl_s: None,
            scope_prefix: None,
        });
    } else {
        VerdictKind::Allow
    };
    let deciding: Vec<&Grant> = grants.iter().filter(|g| g.kind == kind).collect();
    let reason = deciding.iter().find_map(|g| g.reason.clone());
    let ttl_s = deciding.iter().filter_map(|g| g.ttl_s).min();
    let covers = |g: &&Grant| match (&g.scope_prefix, key) {
        (Some(p), Some(k)) => k.starts_with(p.as_str()),
        _ => false,
    };
    let scope_prefix = if deciding.iter().all(covers) {
        deciding
            .iter()
            .filter_map(|g| g.scope_prefix.clone())
            .max_by_key(String::len)
    } else {
        None
    };
    Ok(Answer {
        kind,
        reason,
        ttl_s,
        scope_prefix,
    })
}

#[async_trait]
impl PolicySource for SqlPolicy {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn decide(&self, req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
        let rows = self.db.query_rows(|name| bind(req, name)).await?;
        let answer = answer(&rows, req.resource.key()).map_err(|error| {
            tracing::warn!(source = NAME, %error, "a policy row is not an answer");
            SourceError::new(NAME, error)
        })?;
        let mut verdict = answer.into_verdict(NAME, req, self.max_ttl);
        if self.uncacheable {
            verdict.scope = Scope::Exact;
            verdict.ttl = Duration::ZERO;
        }
        Ok(verdict)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use s3gate_proto::{Principal, RequestContext};

    use super::*;
    use crate::config::Secret;

    fn row(effect: &str, ttl: Option<i64>, prefix: Option<&str>) -> Row {
        let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
        Row::new(vec![
            ("effect".into(), Value::Text(effect.into())),
            ("reason".into(), Value::Text(format!("{effect} row"))),
            ("ttl_s".into(), opt(ttl.map(Value::Int))),
            (
                "scope_prefix".into(),
                opt(prefix.map(|p| Value::Text(p.into()))),
            ),
        ])
    }

    #[test]
    fn rows_combine_deny_first_narrowest_and_shortest() {
        let key = Some("reports/2024/q1.csv");
        let a = answer(&[], key).unwrap();
        assert_eq!(a.kind, VerdictKind::Abstain);
        let a = answer(
            &[
                row("allow", Some(60), Some("reports/")),
                row("ALLOW", Some(5), Some("reports/2024/")),
            ],
            key,
        )
        .unwrap();
        assert_eq!(a.kind, VerdictKind::Allow);
        assert_eq!(a.ttl_s, Some(5));
        assert_eq!(a.scope_prefix.as_deref(), Some("reports/2024/"));
        // One allow row without a scope: exact.
        let a = answer(
            &[
                row("allow", None, Some("reports/")),
                row("allow", None, None),
            ],
            key,
        )
        .unwrap();
        assert_eq!((a.ttl_s, a.scope_prefix), (None, None));
        // A deny beats any number of allows, with its own scope.
        let a = answer(
            &[
                row("allow", Some(5), Some("reports/")),
                row("deny", Some(9), Some("reports/2024/")),
            ],
            key,
        )
        .unwrap();
        assert_eq!(a.kind, VerdictKind::Deny);
        assert_eq!(a.reason.as_deref(), Some("deny row"));
        assert_eq!(a.ttl_s, Some(9));
        assert_eq!(a.scope_prefix.as_deref(), Some("reports/2024/"));
        // A scope that does not cover the key is dropped.
        let a = answer(&[row("allow", None, Some("other/"))], key).unwrap();
        assert_eq!(a.scope_prefix, None);
    }

    #[test]
    fn rows_that_are_not_answers_cannot_decide() {
        for bad in [
            row("permit", None, None),
            row("allow", Some(-1), None),
            Row::new(vec![("allowed".into(), Value::Bool(true))]),
            Row::new(vec![("effect".into(), Value::Int(1))]),
        ] {
            assert!(answer(&[row("allow", None, None), bad], None).is_err());
        }
    }

    fn request(resource: Resource) -> AuthorizeRequest {
        AuthorizeRequest {
            principal: Principal {
                name: Arc::from("alice"),
                groups: Arc::from(vec![Arc::from("analysts"), Arc::from("o\"ps")]),
                access_key: None,
            },
            action: Cow::Borrowed("s3:GetObject"),
            bucket: "data".to_owned(),
            resource,
            context: RequestContext {
                client_ip: Some("127.0.0.1".parse().unwrap()),
                identity_source: Cow::Borrowed("key"),
                method: Cow::Borrowed("GET"),
                ..Default::default()
            },
        }
    }

    #[test]
    fn binds_follow_the_input_document() {
        let req = request(Resource::Object("reports/q1.csv".into()));
        assert_eq!(bind(&req, "groups"), r#"["analysts","o\"ps"]"#);
        assert_eq!(bind(&req, "key"), "reports/q1.csv");
        assert_eq!(bind(&req, "prefix"), "");
        assert_eq!(bind(&req, "kind"), "object");
        assert_eq!(bind(&req, "client_ip"), "127.0.0.1");
        let list = request(Resource::Prefix("reports/".into()));
        assert_eq!(
            (
                bind(&list, "key"),
                bind(&list, "prefix"),
                bind(&list, "kind")
            ),
            (String::new(), "reports/".to_owned(), "prefix".to_owned())
        );
        assert_eq!(bind(&request(Resource::Bucket), "kind"), "bucket");
    }

    fn policy(query: &str) -> SqlPolicy {
        let config = SqlSourceConfig {
            url: Secret::new("sqlite::memory:"),
            query: query.to_owned(),
            timeout: Duration::from_secs(2),
        };
        SqlPolicy::new(&config, &CacheConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn answers_from_sqlite_with_scope_ttl_and_circumstances() {
        let p = policy(
            "SELECT 'allow' AS effect, 'reports/' AS scope_prefix, 7 AS ttl_s \
             WHERE :principal = 'alice' AND :key LIKE 'reports/%' \
             AND EXISTS (SELECT 1 FROM json_each(:groups) WHERE value = 'analysts')",
        );
        let v = p
            .decide(&request(Resource::Object("reports/q1.csv".into())))
            .await
            .unwrap();
        assert_eq!(v.kind, VerdictKind::Allow);
        assert_eq!(v.scope, Scope::Prefix("reports/".into()));
        assert_eq!(v.ttl, Duration::from_secs(7));
        let v = p
            .decide(&request(Resource::Object("other/x".into())))
            .await
            .unwrap();
        assert_eq!(v.kind, VerdictKind::Abstain);
        assert_eq!(v.scope, Scope::Exact);
        // The same, looking at the method: exact and not cached.
        let p =
            policy("SELECT 'allow' AS effect, 'reports/' AS scope_prefix WHERE :method = 'GET'");
        let v = p
            .decide(&request(Resource::Object("reports/q1.csv".into())))
            .await
            .unwrap();
        assert_eq!(v.kind, VerdictKind::Allow);
        assert_eq!((v.scope, v.ttl), (Scope::Exact, Duration::ZERO));
        // A bad effect: cannot decide.
        let p = policy("SELECT 'yes' AS effect");
        let err = p.decide(&request(Resource::Bucket)).await.unwrap_err();
        assert!(err.message.contains("neither"), "{err}");
    }
}
