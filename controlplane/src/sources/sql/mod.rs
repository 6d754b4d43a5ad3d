//! SQL sources: a configured query against PostgreSQL or SQLite (sqlx).
//!
//! - [`policy::SqlPolicy`]: `[[policy]] kind = "sql"`, grants as rows
//!   (`effect`, `reason`, `ttl_s`, `scope_prefix`).
//! - [`identity::SqlKeys`]: `[[identity]] kind = "sql"`, an access key's
//!   `secret`, `principal` and `groups`; the signing key is derived here and
//!   the secret never leaves the control plane.
//! - [`credentials::SqlBucketCredentials`]: `[[buckets]] credentials =
//!   { kind = "sql" }`, a bucket's backend keys (per principal when the
//!   query uses `:principal` or `:groups`).
//!
//! Both sit on a [`Database`]: one pool, one query whose named binds
//! (`:principal`) were rewritten into the driver's placeholders
//! ([`binds`]), every call through a [`Guard`] (timeout + breaker). Rows
//! come back as named columns ([`Row`]), whatever the driver, so a new
//! SQL-backed source is only the mapping of its binds and columns.
//!
//! A database that cannot be reached does not stop s3gate: the pool connects
//! lazily, a background probe logs until the database answers (and whether
//! the query prepares), and meanwhile the source cannot decide (503).

pub mod binds;
pub mod credentials;
pub mod identity;
pub mod policy;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{Column, ConnectOptions, Executor, Row as _, TypeInfo, ValueRef};
use tokio_stream::StreamExt;

use self::binds::{rewrite, Dialect};
use super::guard::Guard;
use super::{BuildError, SourceError};
use crate::config::SqlSourceConfig;

/// Rows one query may return at most: more is an error (a policy answer
/// cut short could miss its deny row).
pub const MAX_ROWS: usize = 64;

/// Connections per source.
const MAX_CONNECTIONS: u32 = 8;

/// The longest pause between two probes of a database that cannot be reached.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// The `user:password@` part of `url`'s authority and the query string,
/// split out: `(userinfo, query)`.
fn url_parts(url: &str) -> (Option<&str>, Option<&str>) {
    let Some((_, rest)) = url.split_once("://") else {
        return (None, url.split_once('?').map(|(_, q)| q));
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let userinfo = authority.rfind('@').map(|at| &authority[..at]);
    (userinfo, rest.split_once('?').map(|(_, q)| q))
}

/// Whether a database URL carries a password (`user:pw@host` or
/// `?password=`).
pub fn url_has_password(url: &str) -> bool {
    let (userinfo, query) = url_parts(url);
    userinfo.is_some_and(|u| u.contains(':'))
        || query.is_some_and(|q| {
            q.split('&').any(|p| {
                p.split('=')
                    .next()
                    .unwrap_or("")
                    .eq_ignore_ascii_case("password")
            })
        })
}

/// A URL as it may be shown: the userinfo (`user:password@`) replaced by
/// `***@` and a `password=` parameter's value by `***`. An `env:VAR`
/// reference is shown as it is (a name, not a value).
pub fn redacted_url(url: &str) -> String {
    if url.starts_with("env:") {
        return url.to_owned();
    }
    let (userinfo, query) = url_parts(url);
    let mut out = match (userinfo, url.split_once("://")) {
        (Some(u), Some((scheme, rest))) => {
            format!("{scheme}://***@{}", &rest[u.len() + 1..])
        }
        _ => url.to_owned(),
    };
    if let Some(q) = query {
        let redacted: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        if let Some((head, _)) = out.split_once('?') {
            out = format!("{head}?{}", redacted.join("&"));
        }
    }
    out
}

/// The start of a query, on one line, for listings and the reload report.
pub fn query_summary(query: &str) -> String {
    let one_line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(72) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

/// One column's value, as the sources read it.
#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Real(f64),
    Bool(bool),
    /// A PostgreSQL `text[]` (or `varchar[]`).
    TextArray(Vec<String>),
}

impl Value {
    /// What kind of value this is, for error messages (never the value:
    /// it may be a secret).
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Text(_) => "text",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Bool(_) => "a boolean",
            Value::TextArray(_) => "a text array",
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

/// One row: its columns by name (as the database names them; looked up
/// without regard to case).
#[derive(Clone, Default)]
pub struct Row {
    columns: Vec<(String, Value)>,
}

impl Row {
    pub fn new(columns: Vec<(String, Value)>) -> Self {
        Self { columns }
    }

    /// The column called `name`; `None` when the query has no such column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for Row {
    /// Column names and kinds, never values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.columns.iter().map(|(n, v)| (n, v)))
            .finish()
    }
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A configured query against one database, run through a guard.
pub struct Database {
    source_name: &'static str,
    pool: Pool,
    sql: Arc<str>,
    /// The value of placeholder `i + 1` is the bind called `binds[i]`.
    binds: Vec<&'static str>,
    guard: Guard,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("source_name", &self.source_name)
            .field("binds", &self.binds)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// The database of one `[section]` entry (`policy`, `identity`), for a
    /// query that may use the binds in `allowed`. Refuses a URL that is
    /// neither PostgreSQL nor SQLite, a query that does not tokenize, and a
    /// bind not in `allowed` (named in the error). Does not connect: a
    /// background probe does, logging until the database answers.
    pub fn open(
        source_name: &'static str,
        section: &'static str,
        config: &SqlSourceConfig,
        allowed: &[&'static str],
    ) -> Result<Self, BuildError> {
        let error = |message: String| BuildError {
            section,
            kind: "sql",
            message,
        };
        let url = config.url.expose();
        let timeout = config.timeout;
        let (pool, dialect) = if url.starts_with("postgres://") || url.starts_with("postgresql://")
        {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| error(format!("url: {e}")))?
                .application_name("s3gate")
                // The server gives up on a query when the guard does, so a
                // slow one does not hold its connection any longer.
                .options([(
                    "statement_timeout",
                    format!("{}ms", timeout.as_millis().max(1)),
                )])
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(timeout)
                // No ping before each query: it would double the round
                // trips. A connection found broken fails one call (503)
                // and is dropped.
                .test_before_acquire(false)
                .connect_lazy_with(options);
            (Pool::Postgres(pool), Dialect::Postgres)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| error(format!("url: {e}")))?
                .busy_timeout(timeout)
                .disable_statement_logging();
            let pool = SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .acquire_timeout(timeout)
                .test_before_acquire(false)
                .connect_lazy_with(options);
            (Pool::Sqlite(pool), Dialect::Sqlite)
        } else {
            return Err(error(
                "url: must start with postgres:// (or postgresql://) or sqlite:".into(),
            ));
        };
        let rewritten =
            rewrite(&config.query, dialect).map_err(|e| error(format!("query: {e}")))?;
        let binds = rewritten
            .binds
            .iter()
            .map(|name| {
                allowed.iter().copied().find(|a| a == name).ok_or_else(|| {
                    error(format!(
                        "query: unknown bind :{name} (this source binds {})",
                        allowed
                            .iter()
                            .map(|a| format!(":{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sql: Arc<str> = Arc::from(rewritten.text);
        tokio::spawn(probe(pool.clone(), sql.clone(), binds.len(), section));
        Ok(Self {
            source_name,
            pool,
            sql,
            binds,
            guard: Guard::new(source_name, timeout),
        })
    }

    /// Whether the query uses the bind `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.binds.contains(&name)
    }

    /// Runs the query with each bind's value from `value` (asked once per
    /// distinct bind), through the guard. At most [`MAX_ROWS`] rows.
    pub async fn query_rows(
        &self,
        value: impl Fn(&'static str) -> String,
    ) -> Result<Vec<Row>, SourceError> {
        let values: Vec<String> = self.binds.iter().map(|name| value(name)).collect();
        let source = self.source_name;
        self.guard
            .run(async {
                match &self.pool {
                    Pool::Postgres(pool) => {
                        let mut query = sqlx::query(&self.sql);
                        for v in values {
                            query = query.bind(v);
                        }
                        collect(query.fetch(pool), pg_row).await
                    }
                    Pool::Sqlite(pool) => {
                        let mut query = sqlx::query(&self.sql);
                        for v in values {
                            query = query.bind(v);
                        }
                        collect(query.fetch(pool), sqlite_row).await
                    }
                }
                .map_err(|message| SourceError::new(source, message))
            })
            .await
    }
}

/// The rows of a result stream, decoded; an error past [`MAX_ROWS`].
async fn collect<R, S>(
    mut rows: S,
    decode: fn(&R) -> Result<Row, String>,
) -> Result<Vec<Row>, String>
where
    S: tokio_stream::Stream<Item = Result<R, sqlx::Error>> + Unpin,
{
    let mut out = Vec::new();
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| format!("query failed: {e}"))?;
        if out.len() == MAX_ROWS {
            return Err(format!(
                "the query returned more than {MAX_ROWS} rows; it should return the few that apply"
            ));
        }
        out.push(decode(&row)?);
    }
    Ok(out)
}

fn unreadable(column: &str, ty: &str) -> String {
    format!(
        "column {column} has type {ty}, which s3gate does not read (cast it to text or an integer)"
    )
}

fn pg_row(row: &PgRow) -> Result<Row, String> {
    let mut columns = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            let ty = raw.type_info().name().to_owned();
            let got = match ty.as_str() {
                "BOOL" => row.try_get::<bool, _>(i).map(Value::Bool),
                "INT2" => row.try_get::<i16, _>(i).map(|v| Value::Int(v.into())),
                "INT4" => row.try_get::<i32, _>(i).map(|v| Value::Int(v.into())),
                "INT8" => row.try_get::<i64, _>(i).map(Value::Int),
                "FLOAT4" => row.try_get::<f32, _>(i).map(|v| Value::Real(v.into())),
                "FLOAT8" => row.try_get::<f64, _>(i).map(Value::Real),
                t if t.ends_with("[]") => row.try_get::<Vec<String>, _>(i).map(Value::TextArray),
                _ => row.try_get::<String, _>(i).map(Value::Text),
            };
            got.map_err(|_| unreadable(name, &ty))?
        };
        columns.push((name.to_owned(), value));
    }
    Ok(Row { columns })
}

fn sqlite_row(row: &SqliteRow) -> Result<Row, String> {
    let mut columns = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let name = column.name();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            Value::Null
        } else {
            let ty = raw.type_info().name().to_owned();
            let got = match ty.as_str() {
                "INTEGER" | "BOOLEAN" => row.try_get::<i64, _>(i).map(Value::Int),
                "REAL" => row.try_get::<f64, _>(i).map(Value::Real),
                _ => row.try_get::<String, _>(i).map(Value::Text),
            };
            got.map_err(|_| unreadable(name, &ty))?
        };
        columns.push((name.to_owned(), value));
    }
    Ok(Row { columns })
}

/// Why a probe failed.
enum ProbeError {
    /// The database cannot be reached (yet): try again.
    Unreachable(String),
    /// The database answered that the query is wrong (syntax, a missing
    /// table or column).
    Prepare(String),
}

impl Pool {
    /// Connects and prepares `sql` (with `binds` text parameters) once.
    ///
    /// The parameters are declared text, as the queries bind them: the
    /// connection keeps the prepared statement for the queries, and one
    /// prepared without types would take PostgreSQL's guess (`:groups::jsonb`
    /// makes it a jsonb parameter, which a text value then does not fit).
    async fn check(&self, sql: &str, binds: usize) -> Result<(), ProbeError> {
        let prepared = match self {
            Pool::Postgres(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
                let text = <String as sqlx::Type<sqlx::Postgres>>::type_info();
                conn.prepare_with(sql, &vec![text; binds]).await.map(drop)
            }
            Pool::Sqlite(pool) => {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(|e| ProbeError::Unreachable(e.to_string()))?;
                let text = <String as sqlx::Type<sqlx::Sqlite>>::type_info();
                conn.prepare_with(sql, &vec![text; binds]).await.map(drop)
            }
        };
        prepared.map_err(|e| match e {
            sqlx::Error::Database(e) => ProbeError::Prepare(e.to_string()),
            e => ProbeError::Unreachable(e.to_string()),
        })
    }
}

/// Connects in the background and says in the log when the database
/// answers, and whether the query prepares; retries (with a growing pause)
/// while it cannot be reached.
async fn probe(pool: Pool, sql: Arc<str>, binds: usize, section: &'static str) {
    let mut pause = Duration::from_millis(250);
    loop {
        let checked = tokio::time::timeout(Duration::from_secs(10), pool.check(&sql, binds))
            .await
            .unwrap_or_else(|_| Err(ProbeError::Unreachable("no answer within 10s".into())));
        match checked {
            Ok(()) => {
                tracing::info!(section, kind = "sql", "database reachable, query prepared");
                return;
            }
            Err(ProbeError::Prepare(error)) => {
                tracing::error!(
                    section,
                    kind = "sql",
                    %error,
                    "the query does not prepare: this source cannot decide (503) until the query or the schema is fixed"
                );
                return;
            }
            Err(ProbeError::Unreachable(error)) => {
                tracing::warn!(
                    section,
                    kind = "sql",
                    %error,
                    retry_in = ?pause,
                    "cannot reach the database: this source cannot decide (503) until it can"
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PROBE_INTERVAL);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn config(url: &str, query: &str) -> SqlSourceConfig {
        SqlSourceConfig {
            url: Secret::new(url),
            query: query.to_owned(),
            timeout: Duration::from_millis(500),
        }
    }

    #[test]
    fn urls_are_shown_without_passwords() {
        for (url, shown, password) in [
            (
                "postgres://u:hunter2@db:5432/x",
                "postgres://***@db:5432/x",
                true,
            ),
            ("postgres://u@db/x", "postgres://***@db/x", false),
            (
                "postgres://db/x?user=u&password=hunter2",
                "postgres://db/x?user=u&password=***",
                true,
            ),
            (
                "sqlite:///var/lib/s3gate/keys.db",
                "sqlite:///var/lib/s3gate/keys.db",
                false,
            ),
            ("sqlite::memory:", "sqlite::memory:", false),
            ("env:S3GATE_DB", "env:S3GATE_DB", false),
            ("postgres://u:p@w@db/x", "postgres://***@db/x", true),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
            assert_eq!(url_has_password(url), password, "{url}");
        }
        assert_eq!(query_summary("SELECT a\n  FROM   t"), "SELECT a FROM t");
        assert!(query_summary(&"x ".repeat(100)).ends_with('…'));
    }

    #[tokio::test]
    async fn unknown_binds_and_urls_are_config_errors() {
        let err = Database::open(
            "sql",
            "policy",
            &config("sqlite::memory:", "SELECT 1 WHERE :principal = :princpal"),
            &["principal"],
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown bind :princpal"), "{err}");
        let err = Database::open(
            "sql",
            "policy",
            &config("mysql://u:hunter2@h/db", "SELECT 1"),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("postgres://"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn rows_come_back_as_named_columns() {
        let db = Database::open(
            "sql",
            "policy",
            &config(
                "sqlite::memory:",
                "SELECT :a AS a, 42 AS n, NULL AS z, 1.5 AS r, :a || :b AS ab",
            ),
            &["a", "b"],
        )
        .unwrap();
        assert!(db.uses("a") && !db.uses("c"));
        let rows = db.query_rows(|name| format!("<{name}>")).await.unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.get("A"), Some(&Value::Text("<a>".into())));
        assert_eq!(row.get("n"), Some(&Value::Int(42)));
        assert_eq!(row.get("z"), Some(&Value::Null));
        assert_eq!(row.get("r"), Some(&Value::Real(1.5)));
        assert_eq!(row.get("ab"), Some(&Value::Text("<a><b>".into())));
        assert_eq!(row.get("missing"), None);
        // Debug shows the kinds, never the values.
        assert!(!format!("{row:?}").contains("<a>"));
    }

    #[tokio::test]
    async fn too_many_rows_and_bad_queries_cannot_decide() {
        let many = format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) SELECT i FROM n",
            MAX_ROWS + 1
        );
        let db = Database::open("sql", "policy", &config("sqlite::memory:", &many), &[]).unwrap();
        let err = db.query_rows(|_| String::new()).await.unwrap_err();
        assert!(err.message.contains("more than"), "{err}");
        assert!(err.refusal.is_none());
        let db = Database::open(
            "sql",
            "policy",
            &config("sqlite::memory:", "SELECT * FROM no_such_table"),
            &[],
        )
        .unwrap();
        let err = db.query_rows(|_| String::new()).await.unwrap_err();
        assert!(err.message.contains("no_such_table"), "{err}");
    }
}
