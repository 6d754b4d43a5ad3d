//! `[[identity]] kind = "sql"`: access keys kept in a database.
//!
//! The query gets `:access_key` and returns at most one row with `secret`,
//! `principal` and optionally `groups` (a JSON array as text, or a
//! PostgreSQL `text[]`). No row: the key is not this source's. The secret
//! stays here: the data plane gets the SigV4 signing key derived for one
//! date, region and service, and SigV2 signatures are checked here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{Principal, SigV2Request, SigningKeyGrant, SigningKeyRequest};

use super::{Database, Value};
use crate::config::{CacheConfig, Secret, SqlSourceConfig};
use crate::sources::identity::{IdentitySource, SecretEntry, SigV2Check};
use crate::sources::{BuildError, SourceError};

const NAME: &str = "sql-keys";

/// The one bind a secret lookup query may use.
pub const BINDS: &[&str] = &["access_key"];

pub struct SqlKeys {
    db: Database,
    /// The `[cache] key_ttl`.
    ttl: Duration,
}

impl SqlKeys {
    pub fn new(config: &SqlSourceConfig, cache: &CacheConfig) -> Result<Self, BuildError> {
        Ok(Self {
            db: Database::open(NAME, "identity", config, BINDS)?,
            ttl: cache.key_ttl,
        })
    }

    async fn lookup(&self, access_key: &str) -> Result<Option<SecretEntry>, SourceError> {
        let mut rows = self.db.query_rows(|_| access_key.to_owned()).await?;
        let bad = |message: String| {
            tracing::warn!(source = NAME, error = %message, "a key row is not usable");
            SourceError::new(NAME, message)
        };
        let row = match rows.len() {
            0 => return Ok(None),
            1 => rows.remove(0),
            n => return Err(bad(format!("{n} rows for one access key"))),
        };
        let secret = match row.get("secret") {
            Some(Value::Text(s)) if !s.is_empty() => Secret::new(s.clone()),
            Some(Value::Text(_)) => return Err(bad("the secret is empty".into())),
            Some(other) => return Err(bad(format!("secret is {}, not text", other.kind()))),
            None => return Err(bad("the query returns no secret column".into())),
        };
        let name = match row.get("principal") {
            Some(Value::Text(s)) if !s.is_empty() => s.clone(),
            Some(Value::Text(_)) => return Err(bad("the principal is empty".into())),
            Some(other) => return Err(bad(format!("principal is {}, not text", other.kind()))),
            None => return Err(bad("the query returns no principal column".into())),
        };
        let groups: Vec<String> = match row.get("groups") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::TextArray(groups)) => groups.clone(),
            Some(Value::Text(json)) => serde_json::from_str(json)
                .map_err(|_| bad("groups is not a JSON array of strings".into()))?,
            Some(other) => {
                return Err(bad(format!(
                    "groups is {}, not a JSON array or a text array",
                    other.kind()
                )))
            }
        };
        Ok(Some(SecretEntry {
            secret,
            principal: Principal {
                name: Arc::from(name),
                groups: groups.into_iter().map(Arc::from).collect(),
                access_key: Some(Arc::from(access_key)),
            },
        }))
    }
}

#[async_trait]
impl IdentitySource for SqlKeys {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError> {
        Ok(self
            .lookup(&req.access_key)
            .await?
            .map(|e| e.grant(req, self.ttl)))
    }

    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        Ok(self.lookup(access_key).await?.map(|e| e.principal))
    }

    async fn verify_sigv2(&self, req: &SigV2Request) -> Result<Option<SigV2Check>, SourceError> {
        Ok(self
            .lookup(&req.access_key)
            .await?
            .map(|e| e.check_sigv2(req, self.ttl)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use s3gate_proto::SigningKey;

    fn keys(query: &str) -> SqlKeys {
        let config = SqlSourceConfig {
            url: Secret::new("sqlite::memory:"),
            query: query.to_owned(),
            timeout: Duration::from_secs(2),
        };
        SqlKeys::new(&config, &CacheConfig::default()).unwrap()
    }

    const ONE_KEY: &str = "SELECT 's1' AS secret, 'p1' AS principal, '[\"g1\",\"g2\"]' AS groups \
                           WHERE :access_key = 'AK1'";

    #[tokio::test]
    async fn derives_the_signing_key_from_the_row() {
        let k = keys(ONE_KEY);
        let req = SigningKeyRequest {
            access_key: "AK1".into(),
            date: "20261203".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            security_token_sha256: None,
        };
        let grant = k.signing_key(&req).await.unwrap().unwrap();
        let expected = SigningKey::derive("s1", "20261203", "us-east-1", "s3");
        assert_eq!(grant.key.as_bytes(), expected.as_bytes());
        assert_eq!(&*grant.principal.name, "p1");
        assert_eq!(
            grant
                .principal
                .groups
                .iter()
                .map(|g| &**g)
                .collect::<Vec<_>>(),
            ["g1", "g2"]
        );
        assert_eq!(grant.principal.access_key.as_deref(), Some("AK1"));
        let other = SigningKeyRequest {
            access_key: "AK2".into(),
            ..req
        };
        assert!(k.signing_key(&other).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn checks_sigv2_with_the_secret() {
        let k = keys(ONE_KEY);
        let sts = "GET\n\n\n1764776159\n/b/k";
        let ask = |access_key: &str, secret: &str| SigV2Request {
            access_key: access_key.into(),
            string_to_sign: sts.into(),
            signature: s3gate_s3::sigv2::sign(secret.as_bytes(), sts.as_bytes()),
        };
        assert!(matches!(
            k.verify_sigv2(&ask("AK1", "s1")).await.unwrap(),
            Some(SigV2Check::Match(_))
        ));
        assert!(matches!(
            k.verify_sigv2(&ask("AK1", "s2")).await.unwrap(),
            Some(SigV2Check::Mismatch)
        ));
        assert!(k.verify_sigv2(&ask("AK9", "s1")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn unusable_rows_cannot_decide_and_never_show_the_secret() {
        for query in [
            "SELECT 'hunter2' AS secret, 'p' AS principal, 'g' AS groups",
            "SELECT 'hunter2' AS secret, '' AS principal",
            "SELECT 'hunter2' AS password, 'p' AS principal",
            "SELECT 'hunter2' AS secret, 'p' AS principal UNION ALL SELECT 'x', 'q'",
        ] {
            let err = match keys(query).principal("AK").await {
                Err(e) => e,
                Ok(p) => panic!("{query}: {p:?}"),
            };
            assert!(err.refusal.is_none());
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
