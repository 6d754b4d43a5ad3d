//! `[[buckets]] credentials = { kind = "sql", query = "…" }`: a bucket's
//! backend keys kept in a database (the original `bucket_creds_fetcher`).
//!
//! The query may use `:principal`, `:groups` (a JSON array as text) and
//! `:bucket`, and returns at most one row: `access_key` and `secret_key`
//! (text), optionally `session_token` (text or NULL) and `expires_unix`
//! (an integer, or NULL: they do not expire). The answer is the
//! principal's own — cached by data planes per (bucket, principal) — when
//! the query uses `:principal` or `:groups`; otherwise it is the bucket's,
//! shared by everyone.
//!
//! No row: the principal gets no credentials, and the request fails closed
//! (503), never with the backend's own keys. A database error or a timeout
//! is a 503 too. The secret key stays in [`Redacted`] and leaves the control
//! plane only in the route a data plane signs with.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{BackendAuth, BackendCredentials, Redacted};

use super::{Database, Row, Value};
use crate::config::{Secret, SqlSourceConfig};
use crate::credential::{BucketCredentialSource, SqlCredentials};
use crate::sources::credentials::{CredentialRequest, CredentialSource};
use crate::sources::{BuildError, SourceError};
use crate::state::State;

const NAME: &str = "sql-credentials";

/// Every bind a bucket credentials query may use.
pub const BINDS: &[&str] = &["principal", "groups", "bucket"];

/// One bucket credentials query against one database.
pub struct SqlBucketCredentials {
    db: Database,
    /// The query uses `:principal` or `:groups`: its answer is the
    /// principal's own.
    per_principal: bool,
}

impl SqlBucketCredentials {
    /// Opens the pool (lazily: a background probe connects) for `url`,
    /// already resolved.
    pub fn open(config: &SqlCredentials, url: Secret) -> Result<Self, BuildError> {
        let db = Database::open(
            NAME,
            "buckets",
            &SqlSourceConfig {
                url,
                query: config.query.clone(),
                timeout: config.timeout,
            },
            BINDS,
        )?;
        let per_principal = db.uses("principal") || db.uses("groups");
        Ok(Self { db, per_principal })
    }

    /// Whether answers are per principal.
    pub fn per_principal(&self) -> bool {
        self.per_principal
    }

    /// The credentials for one request.
    pub async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Arc<BackendCredentials>, SourceError> {
        let bucket = req.bucket;
        let principal = match (self.per_principal, req.principal) {
            (true, None) => {
                // A shared route would be cached for everyone: a query
                // that depends on the principal has none to give.
                return Err(SourceError::new(
                    NAME,
                    format!(
                        "bucket {bucket}: its credentials are per principal, and none was given"
                    ),
                ));
            }
            (_, p) => p,
        };
        let mut rows = self
            .db
            .query_rows(|name| match name {
                "principal" => principal.map(|p| p.name.to_string()).unwrap_or_default(),
                "groups" => {
                    let groups: Vec<&str> = principal
                        .map(|p| p.groups.iter().map(|g| &**g).collect())
                        .unwrap_or_default();
                    serde_json::to_string(&groups).unwrap_or_else(|_| "[]".to_owned())
                }
                "bucket" => bucket.to_owned(),
                _ => String::new(),
            })
            .await?;
        let bad = |message: String| {
            tracing::warn!(source = NAME, bucket, error = %message, "a credentials row is not usable");
            SourceError::new(NAME, format!("bucket {bucket}: {message}"))
        };
        let row = match rows.len() {
            // The same error a plugin without credentials gives: never the
            // backend's own keys instead.
            0 => {
                return Err(SourceError::new(
                    NAME,
                    format!("no credentials for bucket {bucket}"),
                ))
            }
            1 => rows.remove(0),
            n => return Err(bad(format!("{n} rows; the query must return one"))),
        };
        let access_key = required_text(&row, "access_key").map_err(bad)?;
        let secret_key = required_text(&row, "secret_key").map_err(bad)?;
        let session_token = match row.get("session_token") {
            None | Some(Value::Null) => None,
            Some(Value::Text(t)) if t.is_empty() => None,
            Some(Value::Text(t)) => Some(Redacted::new(t.clone())),
            Some(other) => return Err(bad(format!("session_token is {}, not text", other.kind()))),
        };
        let expires_unix = match row.get("expires_unix") {
            None | Some(Value::Null) => None,
            Some(Value::Int(t)) => Some(*t),
            Some(other) => {
                return Err(bad(format!(
                    "expires_unix is {}, not an integer",
                    other.kind()
                )))
            }
        };
        Ok(Arc::new(BackendCredentials {
            auth: BackendAuth::SigV4 {
                access_key,
                secret_key: Redacted::new(secret_key),
                session_token,
            },
            expires_unix,
            per_principal: self.per_principal && principal.is_some(),
        }))
    }
}

/// A text column that must be there and not empty. The message names the
/// column, never its value.
fn required_text(row: &Row, column: &str) -> Result<String, String> {
    match row.get(column) {
        Some(Value::Text(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Text(_)) => Err(format!("{column} is empty")),
        Some(Value::Null) => Err(format!("{column} is NULL")),
        Some(other) => Err(format!("{column} is {}, not text", other.kind())),
        None => Err(format!("the query returns no {column} column")),
    }
}

/// The databases of bucket credential sources, kept across snapshots (a
/// pool, its probe and its breaker outlive a state change), keyed by
/// resolved URL, query and timeout. One per replica (in its `Registry`).
#[derive(Clone, Default)]
pub struct Pools(Arc<Mutex<HashMap<PoolKey, Arc<SqlBucketCredentials>>>>);

type PoolKey = (String, String, Duration);

/// The credential source of every bucket configured with `credentials =
/// { kind = "sql" }`, compiled from each state version. A bucket whose
/// source cannot be opened (no default database, an unset `env:` variable)
/// keeps an entry that fails closed (503), so its backend's keys are never
/// used instead.
pub struct SqlCredentialSources {
    by_bucket: HashMap<String, Result<Arc<SqlBucketCredentials>, String>>,
}

impl SqlCredentialSources {
    /// The SQL buckets of `state`; `default_url`: the database a bucket
    /// without a URL uses.
    pub fn from_state(state: &State, pools: &Pools, default_url: Option<&Secret>) -> Self {
        let mut pools = pools.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut used = HashSet::new();
        let mut by_bucket = HashMap::new();
        for bucket in state.buckets.values() {
            let Some(BucketCredentialSource::Sql(c)) = &bucket.credentials else {
                continue;
            };
            let opened = resolve_url(&c.url, default_url).and_then(|url| {
                let key = (url.expose().clone(), c.query.clone(), c.timeout);
                used.insert(key.clone());
                match pools.get(&key) {
                    Some(source) => Ok(source.clone()),
                    None => {
                        let source = Arc::new(
                            SqlBucketCredentials::open(c, url).map_err(|e| e.to_string())?,
                        );
                        pools.insert(key, source.clone());
                        Ok(source)
                    }
                }
            });
            if let Err(error) = &opened {
                tracing::warn!(%error, bucket = %bucket.name, "bucket credentials from sql cannot be asked: its requests get 503");
            }
            by_bucket.insert(bucket.name.clone(), opened);
        }
        pools.retain(|key, _| used.contains(key));
        Self { by_bucket }
    }
}

/// The URL a bucket's source connects to: its own (an `env:VAR` read now),
/// else the default.
fn resolve_url(url: &str, default_url: Option<&Secret>) -> Result<Secret, String> {
    if url.is_empty() {
        return default_url.cloned().ok_or_else(|| {
            "no url, and this control plane has no [[policy]] or [[identity]] sql entry whose \
             database it could use"
                .to_owned()
        });
    }
    match url.strip_prefix("env:") {
        Some(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Secret::new(value)),
            _ => Err(format!(
                "url: environment variable {var} is not set on this control plane"
            )),
        },
        None => Ok(Secret::new(url.to_owned())),
    }
}

#[async_trait]
impl CredentialSource for SqlCredentialSources {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn credentials(
        &self,
        req: &CredentialRequest<'_>,
    ) -> Result<Option<Arc<BackendCredentials>>, SourceError> {
        match self.by_bucket.get(req.entry) {
            None => Ok(None),
            Some(Ok(source)) => source.credentials(req).await.map(Some),
            Some(Err(message)) => Err(SourceError::new(
                NAME,
                format!("bucket {}: {message}", req.bucket),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use s3gate_proto::Principal;

    fn principal(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: Arc::from(name),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            access_key: None,
        }
    }

    fn state_with(buckets: &[(&str, Option<SqlCredentials>)]) -> State {
        let mut state = State::default();
        for (name, sql) in buckets {
            state.buckets.insert(
                (*name).into(),
                crate::state::BucketRecord {
                    name: (*name).into(),
                    backend: "b1".into(),
                    backend_bucket: (*name).into(),
                    cors: Vec::new(),
                    credentials: sql.clone().map(BucketCredentialSource::Sql),
                },
            );
        }
        state
    }

    fn sql(url: &str, query: &str) -> SqlCredentials {
        SqlCredentials {
            url: url.to_owned(),
            query: query.to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// A SQLite file with one key pair per principal on bucket `data`, and
    /// one shared pair on `shared`.
    async fn database(dir: &std::path::Path) -> String {
        let url = format!("sqlite://{}?mode=rwc", dir.join("keys.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for stmt in [
            "CREATE TABLE bucket_keys (principal text, bucket text, access_key text, secret_key text, session_token text)",
            "INSERT INTO bucket_keys VALUES ('alice', 'data', 'AK-ALICE', 'sk-alice-hunter2', NULL)",
            "INSERT INTO bucket_keys VALUES ('bob', 'data', 'AK-BOB', 'sk-bob', 'tok-bob')",
            "INSERT INTO bucket_keys VALUES ('group:eng', 'data', 'AK-ENG', 'sk-eng', '')",
            "INSERT INTO bucket_keys VALUES ('', 'shared', 'AK-SHARED', 'sk-shared', NULL)",
            "INSERT INTO bucket_keys VALUES ('carol', 'data', 'AK-CAROL', NULL, NULL)",
        ] {
            sqlx::query(stmt).execute(&pool).await.unwrap();
        }
        pool.close().await;
        url
    }

    const PER_PRINCIPAL: &str = "SELECT access_key, secret_key, session_token FROM bucket_keys \
         WHERE bucket = :bucket AND (principal = :principal \
         OR (principal LIKE 'group:%' AND substr(principal, 7) IN (SELECT value FROM json_each(:groups)) \
             AND NOT EXISTS (SELECT 1 FROM bucket_keys WHERE bucket = :bucket AND principal = :principal)))";

    #[tokio::test]
    async fn a_row_per_principal_signs_for_that_principal_alone() {
        let dir = std::env::temp_dir().join(format!(
            "s3gate-sql-credentials-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = database(&dir).await;
        let state = state_with(&[
            ("data", Some(sql(&url, PER_PRINCIPAL))),
            (
                "shared",
                Some(sql(
                    "",
                    "SELECT access_key, secret_key FROM bucket_keys WHERE bucket = :bucket",
                )),
            ),
            ("plain", None),
        ]);
        let pools = Pools::default();
        let source =
            SqlCredentialSources::from_state(&state, &pools, Some(&Secret::new(url.clone())));
        let ask = |bucket, principal| CredentialRequest {
            backend: "b1",
            bucket,
            entry: bucket,
            principal,
        };
        let alice = principal("alice", &[]);
        let c = source
            .credentials(&ask("data", Some(&alice)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.public_id(), "AK-ALICE");
        assert!(c.per_principal);
        let BackendAuth::SigV4 {
            secret_key,
            session_token,
            ..
        } = &c.auth
        else {
            panic!("{c:?}")
        };
        assert_eq!(secret_key.expose(), "sk-alice-hunter2");
        assert!(session_token.is_none());
        assert!(!format!("{c:?}").contains("hunter2"));

        let bob = principal("bob", &[]);
        let c = source
            .credentials(&ask("data", Some(&bob)))
            .await
            .unwrap()
            .unwrap();
        let BackendAuth::SigV4 { session_token, .. } = &c.auth else {
            panic!("{c:?}")
        };
        assert_eq!(
            (
                c.public_id(),
                session_token.as_ref().map(|t| t.expose().as_str())
            ),
            ("AK-BOB", Some("tok-bob"))
        );
        // By group, with an empty token read as none.
        let erin = principal("erin", &["eng"]);
        let c = source
            .credentials(&ask("data", Some(&erin)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.public_id(), "AK-ENG");

        // No row: fail closed, with the plugin's message.
        let mallory = principal("mallory", &["ops"]);
        let err = source
            .credentials(&ask("data", Some(&mallory)))
            .await
            .unwrap_err();
        assert_eq!(err.message, "no credentials for bucket data");
        // A per-principal query has nothing to share.
        assert!(source.credentials(&ask("data", None)).await.is_err());
        // A NULL secret is a bad row, and the error names no value.
        let carol = principal("carol", &[]);
        let err = source
            .credentials(&ask("data", Some(&carol)))
            .await
            .unwrap_err();
        assert!(err.message.contains("secret_key is NULL"), "{err}");

        // A query without :principal/:groups answers for the bucket (the
        // default database, as no url was given).
        let c = source
            .credentials(&ask("shared", Some(&alice)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.public_id(), "AK-SHARED");
        assert!(!c.per_principal);
        assert!(source
            .credentials(&ask("plain", Some(&alice)))
            .await
            .unwrap()
            .is_none());

        // The pools outlive a recompile of the same state; a bucket gone
        // takes its pool with it.
        let again = SqlCredentialSources::from_state(&state, &pools, Some(&Secret::new(url)));
        assert!(Arc::ptr_eq(
            again.by_bucket["data"].as_ref().unwrap(),
            source.by_bucket["data"].as_ref().unwrap()
        ));
        let _ = SqlCredentialSources::from_state(&state_with(&[]), &pools, None);
        assert!(pools.0.lock().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn no_database_to_ask_fails_closed() {
        let state = state_with(&[
            (
                "data",
                Some(sql("", "SELECT access_key, secret_key FROM k")),
            ),
            (
                "env",
                Some(sql(
                    "env:S3GATE_TEST_UNSET_DB_URL",
                    "SELECT access_key, secret_key FROM k",
                )),
            ),
        ]);
        let source = SqlCredentialSources::from_state(&state, &Pools::default(), None);
        for bucket in ["data", "env"] {
            let err = source
                .credentials(&CredentialRequest {
                    backend: "b1",
                    bucket,
                    entry: bucket,
                    principal: None,
                })
                .await
                .unwrap_err();
            assert!(err.refusal.is_none(), "{err}");
        }
    }

    #[tokio::test]
    async fn a_failing_query_cannot_decide() {
        let state = state_with(&[(
            "data",
            Some(sql(
                "sqlite::memory:",
                "SELECT access_key, secret_key FROM no_such_table WHERE :bucket = 'data'",
            )),
        )]);
        let source = SqlCredentialSources::from_state(&state, &Pools::default(), None);
        let err = source
            .credentials(&CredentialRequest {
                backend: "b1",
                bucket: "data",
                entry: "data",
                principal: None,
            })
            .await
            .unwrap_err();
        assert!(err.message.contains("no_such_table"), "{err}");
    }

    #[test]
    fn settings_are_checked_before_any_database_is_asked() {
        let ok = sql(
            "postgres://s3gate@db/s3gate",
            "SELECT access_key, secret_key FROM k WHERE principal = :principal AND bucket = :bucket",
        );
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.per_principal());
        assert!(!sql(
            "",
            "SELECT access_key, secret_key FROM k WHERE bucket = :bucket"
        )
        .per_principal());
        for (bad, says) in [
            (
                sql("", "SELECT 1 WHERE principal = :princpal"),
                "unknown bind :princpal",
            ),
            (
                sql("", "SELECT 1 WHERE k = :action"),
                "unknown bind :action",
            ),
            (sql("", "  "), "need a query"),
            (sql("mysql://db/x", "SELECT 1"), "postgres://"),
            (sql("postgres://u:hunter2@db/x", "SELECT 1"), "password"),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // The tagged form of a config file and the store.
        let parsed: BucketCredentialSource = toml::from_str(
            "kind = \"sql\"\nquery = \"SELECT 1 WHERE :bucket = 'b'\"\ntimeout = \"200ms\"\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            BucketCredentialSource::Sql(SqlCredentials {
                url: String::new(),
                query: "SELECT 1 WHERE :bucket = 'b'".into(),
                timeout: Duration::from_millis(200),
            })
        );
        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(
            serde_json::from_str::<BucketCredentialSource>(&json).unwrap(),
            parsed
        );
    }
}
