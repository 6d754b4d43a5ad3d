//! [`RedisStore`]: the control-plane state in Redis, shared by every replica.
//!
//! # Layout (prefix `p`, default [`DEFAULT_PREFIX`])
//!
//! | key | type | holds |
//! |---|---|---|
//! | `p:version` | integer | the state version; bumped by every change |
//! | `p:keys` | hash | access key → JSON, secret sealed with context `key:<access key>` |
//! | `p:rules` | hash | rule id → JSON |
//! | `p:backends` | hash | name → JSON, secret sealed with `backend:<name>`, session token with `backend:<name>:session-token` |
//! | `p:buckets` | hash | name (exact or pattern) → JSON; the field `:default-backend` → JSON `{"backend": name}` when a default backend is set (no bucket name starts with `:`) |
//! | `p:events` | channel | JSON `{"version": N, "touched": …}` after every change |
//! | `p:session:<access key>` | string | a temporary session as JSON, secret sealed with `session:<access key>`, token as SHA-256 only; `PEXPIREAT` its expiry |
//! | `p:sessions` | sorted set | session access key → expiry (unix seconds); kept a day past expiry, so an expired key is told apart from an unknown one |
//! | `p:sessions-of:<principal>` | sorted set | the principal's session access keys → expiry, for revoke-by-principal; expires with its last session |
//! | `p:session-token:<access key>` | string | base64 SHA-256 of the session's token; kept a day past expiry, so that only a caller showing the token hears `ExpiredToken` |
//! | `p:exchange-lock:<backend>` | string | the replica exchanging the backend's long-lived credential right now (`SET NX PX`) |
//! | `p:exchanged:<backend>` | string | the temporary credential that exchange got, sealed whole with `exchanged:<backend>`; `PEXPIREAT` its expiry |
//!
//! Sessions are not part of the versioned state: they are written without
//! touching `p:version`, and read one at a time (a data plane's key-cache
//! miss), never loaded whole. Their commands need Redis 7 (`PEXPIREAT …
//! NX`/`GT`).
//!
//! Every write runs in `MULTI`/`EXEC` under `WATCH p:version` and bumps the
//! version in the same transaction, so the version changes exactly when the
//! state does. That gives consistent reads too: a pipeline that reads the
//! version before and after the hashes, and sees it unchanged, has read one
//! state.
//!
//! Secrets are sealed with the [`MasterKey`] (see [`crate::crypto`]); a
//! record read with another key, or moved to another hash field, is
//! [`StoreError::Corrupt`].
//!
//! Every Redis call is bounded by [`OP_TIMEOUT`]: a dead Redis gives
//! [`StoreError::Unavailable`] quickly, never a hang. Nothing connects at
//! construction except the event subscriber, which keeps retrying in the
//! background, so a control plane can start before Redis does.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot, Mutex};
use tokio_stream::StreamExt as _;

use crate::config::{AddressingStyleConfig, Effect, Secret};
use crate::credential::CredentialSpec;
use crate::crypto::MasterKey;
use crate::session::{
    SessionInfo, SessionLimits, SessionLookup, SessionRecord, SessionTarget, EXPIRED_KNOWN_FOR,
};
use crate::state::{
    BackendRecord, BucketRecord, Change, CorsRule, KeyRecord, RuleRecord, State, Touched,
};
use crate::store::{Notification, Store, StoreError};

/// The key prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "s3gate";

/// The longest any single Redis call may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// `health()` answers within this.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// How often a conflicting write is retried before giving up.
const MAX_ATTEMPTS: u32 = 32;

/// Reconnect backoff of the event subscriber.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often the subscriber pings, to notice a connection that died
/// silently (no RST, e.g. a network partition).
const SUBSCRIBER_PING: Duration = Duration::from_secs(5);

/// The control-plane state in Redis. See the module docs for the layout.
pub struct RedisStore {
    inner: Arc<Inner>,
    /// Fed by the subscriber task.
    notify: broadcast::Sender<Notification>,
    /// Dropped with the store, which stops the subscriber task.
    _stop: oneshot::Sender<()>,
}

struct Inner {
    client: redis::Client,
    master: MasterKey,
    names: Names,
    conn_config: AsyncConnectionConfig,
    /// The connection reads, health checks and publishes share. Made on
    /// first use, dropped after a connection error, remade on the next call.
    /// Writes use a connection of their own: `WATCH` is per connection.
    shared: Mutex<Option<MultiplexedConnection>>,
}

/// The Redis key names, all under one prefix.
struct Names {
    version: String,
    keys: String,
    rules: String,
    backends: String,
    buckets: String,
    events: String,
    /// Hash: replica name -> unix seconds of its last heartbeat.
    replicas: String,
    /// Sorted set: session access key -> expiry.
    sessions: String,
    /// `p:session:`, followed by an access key.
    session: String,
    /// `p:sessions-of:`, followed by a principal.
    sessions_of: String,
    /// `p:session-token:`, followed by an access key.
    session_token: String,
    /// `p:exchange-lock:`, followed by a backend name.
    exchange_lock: String,
    /// `p:exchanged:`, followed by a backend name.
    exchanged: String,
}

/// What `p:events` carries.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    version: u64,
    touched: Touched,
}

// The stored (serialized) records. Secrets are sealed strings; the plaintext
// records in `state` deliberately have no `Serialize`.

#[derive(Serialize, Deserialize)]
struct StoredKey {
    access_key: String,
    secret: String,
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    created: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredRule {
    id: String,
    effect: Effect,
    principals: Vec<String>,
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredBackend {
    name: String,
    endpoint: String,
    region: String,
    addressing_style: AddressingStyleConfig,
    /// Every secret sealed with [`credential_context`].
    #[serde(default)]
    credentials: Option<CredentialSpec<String>>,
    /// Records written before `credentials` existed hold a static HMAC pair
    /// in these (read, never written).
    #[serde(default, skip_serializing)]
    access_key: Option<String>,
    #[serde(default, skip_serializing)]
    secret: Option<String>,
    #[serde(default, skip_serializing)]
    session_token: Option<String>,
    #[serde(default)]
    ca_bundle: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
    /// Absent in records stored before it existed: on.
    #[serde(default = "guarded")]
    key_segment_guard: bool,
    /// The egress proxy and limits; absent in older records (no proxy,
    /// defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    no_proxy: Vec<String>,
    /// An `env:` reference, never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy_credentials: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connect_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_timeout_ms: Option<u64>,
}

fn guarded() -> bool {
    true
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize, Deserialize)]
struct StoredSession {
    access_key: String,
    /// Sealed with [`session_context`].
    secret: String,
    /// Base64 of the SHA-256 of the session token.
    token_sha256: String,
    principal: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    claims: Vec<(String, String)>,
    role_arn: String,
    session_name: String,
    subject: String,
    provider: String,
    created: i64,
    expires: i64,
}

#[derive(Serialize, Deserialize)]
struct StoredBucket {
    name: String,
    backend: String,
    backend_bucket: String,
    /// Added later: records written before it load without CORS.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cors: Vec<StoredCorsRule>,
    /// Added later: records written before it use their backend's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<crate::credential::BucketCredentialSource>,
}

#[derive(Serialize, Deserialize)]
struct StoredCorsRule {
    allowed_origins: Vec<String>,
    allowed_methods: Vec<String>,
    #[serde(default)]
    allowed_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    max_age: Option<u64>,
}

/// The raw hashes and the version of one snapshot.
struct RawState {
    version: Option<u64>,
    keys: BTreeMap<String, String>,
    rules: BTreeMap<String, String>,
    backends: BTreeMap<String, String>,
    buckets: BTreeMap<String, String>,
}

// === impl RedisStore ===

impl RedisStore {
    /// A store at `url` (`redis://[:password@]host:port[/db]`) with keys
    /// under `prefix`. Does not need Redis to be up: it starts the event
    /// subscriber, waits for its first attempt (so a subscriber made right
    /// after this sees every later change when Redis is up), and returns.
    /// Fails only on an invalid URL.
    pub async fn connect(url: &str, master: MasterKey, prefix: &str) -> Result<Self, StoreError> {
        // The URL may hold a password: never echo it.
        let client = redis::Client::open(url)
            .map_err(|_| StoreError::Unavailable("invalid Redis URL".into()))?;
        let inner = Arc::new(Inner {
            client,
            master,
            names: Names::new(prefix),
            conn_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(OP_TIMEOUT))
                .set_response_timeout(Some(OP_TIMEOUT)),
            shared: Mutex::new(None),
        });
        let notify = broadcast::channel(1024).0;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(subscriber(inner.clone(), notify.clone(), ready_tx, stop_rx));
        // Bounded: the attempt itself is bounded by OP_TIMEOUT per step.
        let _ = tokio::time::timeout(OP_TIMEOUT * 3, ready_rx).await;
        Ok(Self {
            inner,
            notify,
            _stop: stop_tx,
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self) -> Result<State, StoreError> {
        let inner = &self.inner;
        let raw = inner
            .on_shared(|mut conn| async move { inner.snapshot(&mut conn).await })
            .await?;
        raw.decode(&inner.master)
    }

    async fn apply(&self, change: Change) -> Result<u64, StoreError> {
        let version = self.inner.apply(&change).await?;
        self.inner.publish(version, change.touched()).await;
        Ok(version)
    }

    async fn seed(&self, seed: &State) -> Result<bool, StoreError> {
        let seeded = self.inner.seed(seed).await?;
        if seeded {
            // Replicas that loaded the empty store before the seed landed.
            self.inner.publish(1, Touched::All).await;
        }
        Ok(seeded)
    }

    fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notify.subscribe()
    }

    async fn health(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let ping = inner.on_shared(|mut conn| async move {
            call(redis::cmd("PING").query_async::<String>(&mut conn)).await
        });
        match tokio::time::timeout(HEALTH_TIMEOUT, ping).await {
            Ok(result) => result.map(|_pong| ()),
            Err(_) => {
                inner.drop_shared().await;
                Err(StoreError::Unavailable(
                    "redis did not answer PING in time".into(),
                ))
            }
        }
    }

    async fn heartbeat(&self, name: &str) -> Result<(), StoreError> {
        let now = crate::unix_now();
        self.inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("HSET")
                    .arg(&self.inner.names.replicas)
                    .arg(name)
                    .arg(now)
                    .clone();
                async move { call(cmd.query_async::<i64>(&mut conn)).await }
            })
            .await
            .map(|_| ())
    }

    async fn replicas(&self, fresh: Duration) -> Result<Vec<String>, StoreError> {
        let beats: Vec<(String, i64)> = self
            .inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("HGETALL")
                    .arg(&self.inner.names.replicas)
                    .clone();
                async move { call(cmd.query_async::<Vec<(String, i64)>>(&mut conn)).await }
            })
            .await?;
        let oldest =
            crate::unix_now().saturating_sub(i64::try_from(fresh.as_secs()).unwrap_or(i64::MAX));
        let mut names: Vec<String> = beats
            .into_iter()
            .filter(|(_, at)| *at >= oldest)
            .map(|(name, _)| name)
            .collect();
        names.sort();
        Ok(names)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn put_session(
        &self,
        session: &SessionRecord,
        limits: SessionLimits,
    ) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let n = &inner.names;
        let info = &session.info;
        let json = inner.encode_session(session)?;
        let now = crate::unix_now();
        let live_after = format!("({now}");
        // The bound is checked, not reserved: replicas minting at the same
        // moment may pass it by a few, which is all it needs to be.
        let live: usize = inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("ZCOUNT")
                    .arg(&n.sessions)
                    .arg(&live_after)
                    .arg("+inf")
                    .clone();
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        if live >= limits.total {
            return Err(StoreError::Full(format!(
                "{live} sessions are live, the most this gateway keeps"
            )));
        }
        let expires_ms = info.expires.saturating_mul(1000);
        let record = format!("{}{}", n.session, info.access_key);
        let index = format!("{}{}", n.sessions_of, info.principal);
        let token = format!("{}{}", n.session_token, info.access_key);
        let mut tx = redis::pipe();
        tx.atomic()
            .set(&record, json)
            .ignore()
            .set(
                &token,
                base64::engine::general_purpose::STANDARD.encode(session.token_sha256),
            )
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&token)
            .arg((info.expires + EXPIRED_KNOWN_FOR).saturating_mul(1000))
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&record)
            .arg(expires_ms)
            .ignore()
            .zadd(&n.sessions, &info.access_key, info.expires)
            .ignore()
            .zrembyscore(&n.sessions, "-inf", now - EXPIRED_KNOWN_FOR)
            .ignore()
            .zadd(&index, &info.access_key, info.expires)
            .ignore()
            .zrembyscore(&index, "-inf", now)
            .ignore()
            // The index lives as long as its longest session: set on a new
            // index (NX), pushed later by a longer session (GT).
            .cmd("PEXPIREAT")
            .arg(&index)
            .arg(expires_ms)
            .arg("NX")
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&index)
            .arg(expires_ms)
            .arg("GT")
            .ignore()
            .cmd("ZCOUNT")
            .arg(&index)
            .arg(&live_after)
            .arg("+inf");
        let (held,): (usize,) = inner
            .on_shared(|mut conn| {
                let tx = tx.clone();
                async move { call(tx.query_async(&mut conn)).await }
            })
            .await?;
        if held <= limits.per_principal {
            return Ok(Vec::new());
        }
        // Past the principal's bound: end its sessions that expire first
        // (never the new one).
        let excess = held - limits.per_principal.max(1);
        let oldest: Vec<String> = inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(&live_after)
                    .arg("+inf")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(excess + 1)
                    .clone();
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        let mut evicted = Vec::new();
        for key in oldest
            .into_iter()
            .filter(|k| k != &info.access_key)
            .take(excess)
        {
            evicted.extend(inner.revoke_session(&key).await?);
        }
        if !evicted.is_empty() {
            let version = inner.current_version().await;
            inner
                .publish(version, Touched::Sessions(evicted.clone()))
                .await;
        }
        Ok(evicted)
    }

    async fn session(&self, access_key: &str) -> Result<SessionLookup, StoreError> {
        let inner = &self.inner;
        let n = &inner.names;
        let record = format!("{}{access_key}", n.session);
        let token = format!("{}{access_key}", n.session_token);
        let (json, expiry, token): (Option<String>, Option<f64>, Option<String>) = inner
            .on_shared(|mut conn| {
                let mut p = redis::pipe();
                p.get(&record).zscore(&n.sessions, access_key).get(&token);
                async move { call(p.query_async(&mut conn)).await }
            })
            .await?;
        let now = crate::unix_now();
        let token_sha256 = token
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .and_then(|t| <[u8; 32]>::try_from(t).ok());
        let known_expired = |expires: i64| {
            if expires + EXPIRED_KNOWN_FOR > now {
                SessionLookup::Expired { token_sha256 }
            } else {
                SessionLookup::Unknown
            }
        };
        Ok(match (json, expiry) {
            (Some(json), _) => {
                let session = decode_session(&json, access_key, &inner.master)?;
                if session.info.expires > now {
                    SessionLookup::Live(Box::new(session))
                } else {
                    known_expired(session.info.expires)
                }
            }
            // Deleted at its expiry; the index remembers when that was.
            (None, Some(expires)) if (expires as i64) <= now => known_expired(expires as i64),
            (None, _) => SessionLookup::Unknown,
        })
    }

    fn shares_exchanges(&self) -> bool {
        true
    }

    async fn lock_exchange(
        &self,
        backend: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = format!("{}{backend}", self.inner.names.exchange_lock);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .inner
            .on_shared(|mut conn| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key).arg(holder).arg("NX").arg("PX").arg(ms);
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        Ok(set.is_some())
    }

    async fn unlock_exchange(&self, backend: &str, holder: &str) -> Result<(), StoreError> {
        let key = format!("{}{backend}", self.inner.names.exchange_lock);
        // Only the holder's own lock: one that expired and was taken by
        // another replica stays.
        const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                              return redis.call('DEL', KEYS[1]) else return 0 end";
        let _: i64 = self
            .inner
            .on_shared(|mut conn| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(UNLOCK).arg(1).arg(&key).arg(holder);
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        Ok(())
    }

    async fn exchanged(&self, backend: &str) -> Result<Option<Secret>, StoreError> {
        let key = format!("{}{backend}", self.inner.names.exchanged);
        let sealed: Option<String> = self
            .inner
            .on_shared(|mut conn| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(&key);
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        sealed
            .map(|sealed| {
                self.inner
                    .master
                    .open(&sealed, &exchanged_context(backend))
                    .map_err(|e| {
                        StoreError::Corrupt(format!("exchanged credential of {backend}: {e}"))
                    })
            })
            .transpose()
    }

    async fn put_exchanged(
        &self,
        backend: &str,
        value: &Secret,
        expires_unix: i64,
    ) -> Result<(), StoreError> {
        let key = format!("{}{backend}", self.inner.names.exchanged);
        let sealed = self.inner.seal(value, &exchanged_context(backend))?;
        let at_ms = expires_unix.saturating_mul(1000);
        let _: () = self
            .inner
            .on_shared(|mut conn| {
                let mut p = redis::pipe();
                p.atomic()
                    .set(&key, &sealed)
                    .ignore()
                    .cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(at_ms)
                    .ignore();
                async move { call(p.query_async(&mut conn)).await }
            })
            .await?;
        Ok(())
    }

    async fn sessions(&self, principal: Option<&str>) -> Result<Vec<SessionInfo>, StoreError> {
        let inner = &self.inner;
        let n = &inner.names;
        let index = match principal {
            Some(p) => format!("{}{p}", n.sessions_of),
            None => n.sessions.clone(),
        };
        let now = crate::unix_now();
        let keys: Vec<String> = inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .clone();
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let records: Vec<String> = keys.iter().map(|k| format!("{}{k}", n.session)).collect();
        let jsons: Vec<Option<String>> = inner
            .on_shared(|mut conn| {
                let cmd = redis::cmd("MGET").arg(&records).clone();
                async move { call(cmd.query_async(&mut conn)).await }
            })
            .await?;
        let mut out = Vec::new();
        for (key, json) in keys.iter().zip(jsons) {
            // Gone since the index was read (expired, revoked).
            let Some(json) = json else { continue };
            let info = decode_session_info(&json, key)?.0;
            if info.expires > now && principal.is_none_or(|p| info.principal == p) {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.access_key.cmp(&b.access_key));
        Ok(out)
    }

    async fn revoke_sessions(&self, target: &SessionTarget) -> Result<Vec<String>, StoreError> {
        let revoked = match target {
            SessionTarget::AccessKey(ak) => self.inner.revoke_session(ak).await?,
            SessionTarget::Principal(p) => self.inner.revoke_principal(p).await?,
        };
        if !revoked.is_empty() {
            let version = self.inner.current_version().await;
            self.inner
                .publish(version, Touched::Sessions(revoked.clone()))
                .await;
        }
        Ok(revoked)
    }
}

// === impl Inner ===

impl Inner {
    /// Runs `op` on the shared connection. A reused connection found broken
    /// (Redis restarted since its last use) is replaced and `op` retried
    /// once, so a restart costs no error; a slow Redis is not retried.
    async fn on_shared<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let (conn, reused) = self.shared_conn().await?;
        let error = match op(conn).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        self.drop_shared().await;
        if !(reused && error.is_broken_connection()) {
            return Err(error.into());
        }
        let (conn, _) = self.shared_conn().await?;
        let result = op(conn).await;
        if result.is_err() {
            self.drop_shared().await;
        }
        result.map_err(StoreError::from)
    }

    /// The shared connection, and whether it was made before this call.
    async fn shared_conn(&self) -> Result<(MultiplexedConnection, bool), StoreError> {
        let mut shared = self.shared.lock().await;
        if let Some(conn) = shared.as_ref() {
            return Ok((conn.clone(), true));
        }
        let conn = self.new_conn().await?;
        *shared = Some(conn.clone());
        Ok((conn, false))
    }

    async fn drop_shared(&self) {
        *self.shared.lock().await = None;
    }

    /// A connection nobody else uses, for `WATCH`.
    async fn new_conn(&self) -> Result<MultiplexedConnection, StoreError> {
        timed(
            self.client
                .get_multiplexed_async_connection_with_config(&self.conn_config),
        )
        .await
    }

    /// One consistent state, in a `MULTI`/`EXEC` block.
    async fn snapshot(&self, conn: &mut MultiplexedConnection) -> Result<RawState, CallError> {
        let n = &self.names;
        let (version, keys, rules, backends, buckets) = call(
            redis::pipe()
                .atomic()
                .get(&n.version)
                .hgetall(&n.keys)
                .hgetall(&n.rules)
                .hgetall(&n.backends)
                .hgetall(&n.buckets)
                .query_async(conn),
        )
        .await?;
        Ok(RawState {
            version,
            keys,
            rules,
            backends,
            buckets,
        })
    }

    /// The state as read on a connection that has a `WATCH` in force (so
    /// no `MULTI`, which would end it), or `None` if a write landed while
    /// reading.
    async fn watched_snapshot(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Option<RawState>, StoreError> {
        let n = &self.names;
        type Reply = (
            Option<u64>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            BTreeMap<String, String>,
            Option<u64>,
        );
        let (version, keys, rules, backends, buckets, after): Reply = timed(
            redis::pipe()
                .get(&n.version)
                .hgetall(&n.keys)
                .hgetall(&n.rules)
                .hgetall(&n.backends)
                .hgetall(&n.buckets)
                .get(&n.version)
                .query_async(conn),
        )
        .await?;
        // Every write bumps the version atomically with its records.
        if version != after {
            return Ok(None);
        }
        Ok(Some(RawState {
            version,
            keys,
            rules,
            backends,
            buckets,
        }))
    }

    async fn apply(&self, change: &Change) -> Result<u64, StoreError> {
        let n = &self.names;
        let mut conn = self.new_conn().await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(contention_backoff(attempt)).await;
            }
            timed(redis::cmd("WATCH").arg(&n.version).exec_async(&mut conn)).await?;
            let Some(raw) = self.watched_snapshot(&mut conn).await? else {
                continue;
            };
            let mut state = raw.decode(&self.master)?;
            // Validated against a consistent snapshot: a failure is real.
            state.apply(change)?;

            let mut tx = redis::pipe();
            tx.atomic();
            match change {
                Change::PutKey(k) => tx.hset(&n.keys, &k.access_key, self.encode_key(k)?),
                Change::DeleteKey(ak) => tx.hdel(&n.keys, ak),
                Change::PutRule(r) => tx.hset(&n.rules, &r.id, encode_rule(r)?),
                Change::DeleteRule(id) => tx.hdel(&n.rules, id),
                Change::PutBackend(b) => tx.hset(&n.backends, &b.name, self.encode_backend(b)?),
                Change::DeleteBackend(name) => tx.hdel(&n.backends, name),
                Change::PutBucket(b) => tx.hset(&n.buckets, &b.name, encode_bucket(b)?),
                Change::DeleteBucket(name) => tx.hdel(&n.buckets, name),
                Change::SetDefaultBackend(Some(backend)) => {
                    tx.hset(&n.buckets, DEFAULT_BACKEND_FIELD, encode_default(backend)?)
                }
                Change::SetDefaultBackend(None) => tx.hdel(&n.buckets, DEFAULT_BACKEND_FIELD),
            }
            .ignore()
            .incr(&n.version, 1u64);
            // `None`: EXEC aborted because the version moved since WATCH.
            let committed: Option<(u64,)> = timed(tx.query_async(&mut conn)).await?;
            if let Some((version,)) = committed {
                return Ok(version);
            }
        }
        Err(StoreError::Unavailable(
            "too much contention: the state kept changing during the write".into(),
        ))
    }

    async fn seed(&self, seed: &State) -> Result<bool, StoreError> {
        let n = &self.names;
        let keys = seed
            .keys
            .values()
            .map(|k| Ok((k.access_key.clone(), self.encode_key(k)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let rules = seed
            .rules
            .values()
            .map(|r| Ok((r.id.clone(), encode_rule(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let backends = seed
            .backends
            .values()
            .map(|b| Ok((b.name.clone(), self.encode_backend(b)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let mut buckets = seed
            .buckets
            .values()
            .map(|b| Ok((b.name.clone(), encode_bucket(b)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        if let Some(backend) = &seed.default_backend {
            buckets.push((DEFAULT_BACKEND_FIELD.to_owned(), encode_default(backend)?));
        }
        let all = [&n.version, &n.keys, &n.rules, &n.backends, &n.buckets];

        let mut conn = self.new_conn().await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(contention_backoff(attempt)).await;
            }
            timed(redis::cmd("WATCH").arg(&all).exec_async(&mut conn)).await?;
            // Anything there, even records without a version, is state not
            // to overwrite.
            let existing: u64 =
                timed(redis::cmd("EXISTS").arg(&all).query_async(&mut conn)).await?;
            if existing > 0 {
                timed(redis::cmd("UNWATCH").exec_async(&mut conn)).await?;
                return Ok(false);
            }
            let mut tx = redis::pipe();
            tx.atomic();
            for (hash, items) in [
                (&n.keys, &keys),
                (&n.rules, &rules),
                (&n.backends, &backends),
                (&n.buckets, &buckets),
            ] {
                if !items.is_empty() {
                    tx.hset_multiple(hash, items).ignore();
                }
            }
            tx.set(&n.version, 1u64).ignore().get(&n.version);
            let committed: Option<(u64,)> = timed(tx.query_async(&mut conn)).await?;
            if committed.is_some() {
                return Ok(true);
            }
        }
        Err(StoreError::Unavailable(
            "too much contention: the state kept changing during the seed".into(),
        ))
    }

    /// Tells every replica. A change is committed before this runs, so a
    /// failure here is only logged: replicas that miss it reload everything
    /// when their subscription comes back.
    async fn publish(&self, version: u64, touched: Touched) {
        let event = Event { version, touched };
        let payload = match serde_json::to_string(&event) {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "cannot encode state change event");
                return;
            }
        };
        let result = self
            .on_shared(|mut conn| {
                let publish = redis::cmd("PUBLISH")
                    .arg(&self.names.events)
                    .arg(&payload)
                    .clone();
                async move { call(publish.query_async::<u64>(&mut conn)).await }
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, version, "state change committed but not published");
        }
    }

    /// The stored version, or 0 when Redis cannot tell.
    async fn current_version(&self) -> u64 {
        self.on_shared(|mut conn| {
            let get = redis::cmd("GET").arg(&self.names.version).clone();
            async move { call(get.query_async::<Option<u64>>(&mut conn)).await }
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
    }

    fn encode_key(&self, k: &KeyRecord) -> Result<String, StoreError> {
        let stored = StoredKey {
            access_key: k.access_key.clone(),
            secret: self.seal(&k.secret, &key_context(&k.access_key))?,
            principal: k.principal.clone(),
            groups: k.groups.clone(),
            created: k.created,
        };
        to_json(&stored)
    }

    fn encode_backend(&self, b: &BackendRecord) -> Result<String, StoreError> {
        let credentials = b
            .credentials
            .try_map(|field, secret| self.seal(secret, &credential_context(&b.name, field)))?;
        let stored = StoredBackend {
            name: b.name.clone(),
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            addressing_style: b.addressing_style,
            credentials: Some(credentials),
            access_key: None,
            secret: None,
            session_token: None,
            ca_bundle: b.ca_bundle.clone(),
            insecure_skip_verify: b.insecure_skip_verify,
            key_segment_guard: b.key_segment_guard,
            proxy: b.egress.proxy.clone(),
            no_proxy: b.egress.no_proxy.clone(),
            proxy_credentials: b.egress.proxy_credentials.clone(),
            max_connections: Some(b.limits.max_connections),
            connect_timeout_ms: b.limits.connect_timeout.map(millis),
            response_timeout_ms: Some(millis(b.limits.response_timeout)),
        };
        to_json(&stored)
    }

    fn encode_session(&self, session: &SessionRecord) -> Result<String, StoreError> {
        let info = &session.info;
        to_json(&StoredSession {
            access_key: info.access_key.clone(),
            secret: self.seal(&session.secret, &session_context(&info.access_key))?,
            token_sha256: base64::engine::general_purpose::STANDARD.encode(session.token_sha256),
            principal: info.principal.clone(),
            groups: info.groups.clone(),
            claims: info.claims.clone(),
            role_arn: info.role_arn.clone(),
            session_name: info.session_name.clone(),
            subject: info.subject.clone(),
            provider: info.provider.clone(),
            created: info.created,
            expires: info.expires,
        })
    }

    /// Deletes one session and its index entries. Returns it if it was
    /// there.
    async fn revoke_session(&self, access_key: &str) -> Result<Vec<String>, StoreError> {
        let n = &self.names;
        let record = format!("{}{access_key}", n.session);
        let json: Option<String> = self
            .on_shared(|mut conn| {
                let get = redis::cmd("GET").arg(&record).clone();
                async move { call(get.query_async(&mut conn)).await }
            })
            .await?;
        let Some(json) = json else {
            return Ok(Vec::new());
        };
        let principal = decode_session_info(&json, access_key)?.0.principal;
        let mut tx = redis::pipe();
        tx.atomic()
            .del(&record)
            .del(format!("{}{access_key}", n.session_token))
            .ignore()
            .zrem(&n.sessions, access_key)
            .ignore()
            .zrem(format!("{}{principal}", n.sessions_of), access_key)
            .ignore();
        let (deleted,): (u64,) = self
            .on_shared(|mut conn| {
                let tx = tx.clone();
                async move { call(tx.query_async(&mut conn)).await }
            })
            .await?;
        Ok(if deleted > 0 {
            vec![access_key.to_owned()]
        } else {
            Vec::new()
        })
    }

    /// Deletes every session of `principal`, under `WATCH` of its index, so
    /// a session minted meanwhile is not left out.
    async fn revoke_principal(&self, principal: &str) -> Result<Vec<String>, StoreError> {
        let n = &self.names;
        let index = format!("{}{principal}", n.sessions_of);
        let mut conn = self.new_conn().await?;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(contention_backoff(attempt)).await;
            }
            timed(redis::cmd("WATCH").arg(&index).exec_async(&mut conn)).await?;
            let keys: Vec<String> = timed(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(format!("({}", crate::unix_now()))
                    .arg("+inf")
                    .query_async(&mut conn),
            )
            .await?;
            let mut tx = redis::pipe();
            tx.atomic();
            for k in &keys {
                tx.del(format!("{}{k}", n.session))
                    .ignore()
                    .del(format!("{}{k}", n.session_token))
                    .ignore()
                    .zrem(&n.sessions, k)
                    .ignore();
            }
            tx.del(&index).ignore();
            let committed: Option<()> = timed(tx.query_async(&mut conn)).await?;
            if committed.is_some() {
                return Ok(keys);
            }
        }
        Err(StoreError::Unavailable(
            "too much contention: the principal kept getting sessions during the revocation".into(),
        ))
    }

    fn seal(&self, secret: &Secret, context: &str) -> Result<String, StoreError> {
        // The error names no secret; the context is a record name.
        self.master
            .seal(secret.expose(), context)
            .map_err(|e| StoreError::Unavailable(format!("cannot seal secret for {context}: {e}")))
    }
}

// === impl RawState ===

impl RawState {
    fn decode(self, master: &MasterKey) -> Result<State, StoreError> {
        let open = |sealed: &str, context: &str| {
            master
                .open(sealed, context)
                .map_err(|e| StoreError::Corrupt(format!("{context}: {e}")))
        };
        let mut state = State {
            version: self.version.unwrap_or(0),
            ..State::default()
        };
        for (field, json) in self.keys {
            let s: StoredKey = from_json(&json, "access key", &field)?;
            check_name("access key", &field, &s.access_key)?;
            let secret = open(&s.secret, &key_context(&field))?;
            let record = KeyRecord {
                access_key: s.access_key,
                secret,
                principal: s.principal,
                groups: s.groups,
                created: s.created,
            };
            state.keys.insert(field, record);
        }
        for (field, json) in self.rules {
            let s: StoredRule = from_json(&json, "rule", &field)?;
            check_name("rule", &field, &s.id)?;
            let record = RuleRecord {
                id: s.id,
                effect: s.effect,
                principals: s.principals,
                actions: s.actions,
                resources: s.resources,
            };
            state.rules.insert(field, record);
        }
        for (field, json) in self.backends {
            let s: StoredBackend = from_json(&json, "backend", &field)?;
            check_name("backend", &field, &s.name)?;
            let credentials = match (&s.credentials, &s.access_key, &s.secret) {
                (Some(sealed), _, _) => {
                    sealed.try_map(|f, sealed| open(sealed, &credential_context(&field, f)))?
                }
                (None, Some(access_key), Some(secret)) => CredentialSpec::StaticHmac {
                    access_key: access_key.clone(),
                    secret_key: open(secret, &backend_context(&field))?,
                    session_token: match &s.session_token {
                        Some(t) => Some(open(t, &session_token_context(&field))?),
                        None => None,
                    },
                },
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "backend {field:?} has no credentials"
                    )))
                }
            };
            let record = BackendRecord {
                name: s.name,
                endpoint: s.endpoint,
                region: s.region,
                addressing_style: s.addressing_style,
                credentials,
                ca_bundle: s.ca_bundle,
                insecure_skip_verify: s.insecure_skip_verify,
                key_segment_guard: s.key_segment_guard,
                egress: s3gate_proto::Egress {
                    proxy: s.proxy,
                    no_proxy: s.no_proxy,
                    proxy_credentials: s.proxy_credentials,
                },
                limits: {
                    let d = s3gate_proto::BackendLimits::default();
                    s3gate_proto::BackendLimits {
                        max_connections: s.max_connections.unwrap_or(d.max_connections),
                        connect_timeout: s.connect_timeout_ms.map(Duration::from_millis),
                        response_timeout: s
                            .response_timeout_ms
                            .map_or(d.response_timeout, Duration::from_millis),
                    }
                },
            };
            state.backends.insert(field, record);
        }
        for (field, json) in self.buckets {
            if field == DEFAULT_BACKEND_FIELD {
                let d: StoredDefault = from_json(&json, "default backend", &field)?;
                state.default_backend = Some(d.backend);
                continue;
            }
            let s: StoredBucket = from_json(&json, "bucket", &field)?;
            check_name("bucket", &field, &s.name)?;
            let record = BucketRecord {
                credentials: s.credentials,
                name: s.name,
                backend: s.backend,
                backend_bucket: s.backend_bucket,
                cors: s
                    .cors
                    .into_iter()
                    .map(|r| CorsRule {
                        allowed_origins: r.allowed_origins,
                        allowed_methods: r.allowed_methods,
                        allowed_headers: r.allowed_headers,
                        expose_headers: r.expose_headers,
                        max_age: r.max_age,
                    })
                    .collect(),
            };
            state.buckets.insert(field, record);
        }
        Ok(state)
    }
}

// === impl Names ===

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            version: format!("{prefix}:version"),
            keys: format!("{prefix}:keys"),
            rules: format!("{prefix}:rules"),
            backends: format!("{prefix}:backends"),
            buckets: format!("{prefix}:buckets"),
            events: format!("{prefix}:events"),
            replicas: format!("{prefix}:replicas"),
            sessions: format!("{prefix}:sessions"),
            session: format!("{prefix}:session:"),
            sessions_of: format!("{prefix}:sessions-of:"),
            session_token: format!("{prefix}:session-token:"),
            exchange_lock: format!("{prefix}:exchange-lock:"),
            exchanged: format!("{prefix}:exchanged:"),
        }
    }
}

// === the event subscriber ===

/// Holds a subscription to `p:events` and forwards what arrives, until the
/// store is dropped (`stop`). After every reconnect — and after the first
/// connect if the first attempt failed — it sends `Touched::All`, because
/// changes may have been missed meanwhile.
async fn subscriber(
    inner: Arc<Inner>,
    notify: broadcast::Sender<Notification>,
    ready: oneshot::Sender<()>,
    stop: oneshot::Receiver<()>,
) {
    let run = async {
        let mut ready = Some(ready);
        // Whether events may have been missed since the first attempt.
        let mut gap = false;
        let mut backoff = MIN_BACKOFF;
        loop {
            let subscribed = subscribe_events(&inner).await;
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            match subscribed {
                Ok((sink, stream)) => {
                    backoff = MIN_BACKOFF;
                    if gap {
                        let version = inner.current_version().await;
                        tracing::info!(version, "state events resubscribed, reloading everything");
                        let _ = notify.send(Notification {
                            version,
                            touched: Touched::All,
                        });
                    }
                    gap = true;
                    pump_events(&inner, &notify, sink, stream).await;
                    tracing::warn!("lost the state events subscription, reconnecting");
                }
                Err(error) => {
                    gap = true;
                    tracing::warn!(%error, "cannot subscribe to state events, retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    };
    tokio::select! {
        _ = stop => {}
        () = run => {}
    }
}

async fn subscribe_events(
    inner: &Inner,
) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), StoreError> {
    let pubsub = timed(inner.client.get_async_pubsub()).await?;
    let (mut sink, stream) = pubsub.split();
    timed(sink.subscribe(&inner.names.events)).await?;
    Ok((sink, stream))
}

/// Forwards events until the connection is lost.
async fn pump_events(
    inner: &Inner,
    notify: &broadcast::Sender<Notification>,
    mut sink: redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
) {
    let mut ping = tokio::time::interval(SUBSCRIBER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let notification = match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
                    Ok(e) => Notification { version: e.version, touched: e.touched },
                    Err(error) => {
                        // Something changed, but what is unknown: reload all.
                        tracing::warn!(%error, "undecodable state change event");
                        Notification { version: inner.current_version().await, touched: Touched::All }
                    }
                };
                let _ = notify.send(notification);
            }
            _ = ping.tick() => {
                let pong: Result<redis::Value, _> = timed(sink.ping()).await;
                if let Err(error) = pong {
                    tracing::warn!(%error, "state events connection does not answer");
                    return;
                }
            }
        }
    }
}

// === helpers ===

/// A failed Redis call, before it becomes a [`StoreError`].
enum CallError {
    Redis(RedisError),
    Timeout,
}

impl CallError {
    /// The connection is gone (e.g. Redis restarted), rather than slow.
    fn is_broken_connection(&self) -> bool {
        match self {
            CallError::Redis(e) => {
                (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout()
            }
            CallError::Timeout => false,
        }
    }
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Redis(e) => redis_error(e),
            CallError::Timeout => StoreError::Unavailable(format!(
                "redis did not answer within {}s",
                OP_TIMEOUT.as_secs()
            )),
        }
    }
}

/// One Redis call, bounded by [`OP_TIMEOUT`].
async fn call<T>(fut: impl Future<Output = RedisResult<T>>) -> Result<T, CallError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Redis(e)),
        Err(_) => Err(CallError::Timeout),
    }
}

async fn timed<T>(fut: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
    call(fut).await.map_err(StoreError::from)
}

fn redis_error(e: RedisError) -> StoreError {
    // A value of the wrong type where a record or the version should be.
    // The message would quote the value: leave it out.
    let wrong_type = matches!(
        e.kind(),
        redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse
    ) || e
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == "WRONGTYPE"));
    if wrong_type {
        return StoreError::Corrupt("redis holds a value of an unexpected type or encoding".into());
    }
    StoreError::Unavailable(format!("redis: {e}"))
}

/// A random pause before retrying a conflicting write, growing with the
/// attempt, so writers that collided do not collide again in lockstep.
fn contention_backoff(attempt: u32) -> Duration {
    let cap_ms = 1u64 << attempt.min(6); // up to 64 ms
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Duration::from_millis(random % cap_ms + 1)
}

fn key_context(access_key: &str) -> String {
    format!("key:{access_key}")
}

/// What a backend credential's secret field is sealed to: the backend and
/// the field, so a sealed value moved to another record or field fails to
/// open.
fn credential_context(name: &str, field: &str) -> String {
    format!("backend:{name}:credentials.{field}")
}

/// The contexts of records written before [`CredentialSpec`] (read only).
fn backend_context(name: &str) -> String {
    format!("backend:{name}")
}

fn session_token_context(name: &str) -> String {
    format!("backend:{name}:session-token")
}

fn exchanged_context(backend: &str) -> String {
    format!("exchanged:{backend}")
}

fn session_context(access_key: &str) -> String {
    format!("session:{access_key}")
}

/// A stored session without opening its secret (for listings), and the
/// stored form.
fn decode_session_info(
    json: &str,
    access_key: &str,
) -> Result<(SessionInfo, StoredSession), StoreError> {
    let s: StoredSession = from_json(json, "session", access_key)?;
    check_name("session", access_key, &s.access_key)?;
    let info = SessionInfo {
        access_key: s.access_key.clone(),
        principal: s.principal.clone(),
        groups: s.groups.clone(),
        claims: s.claims.clone(),
        role_arn: s.role_arn.clone(),
        session_name: s.session_name.clone(),
        subject: s.subject.clone(),
        provider: s.provider.clone(),
        created: s.created,
        expires: s.expires,
    };
    Ok((info, s))
}

fn decode_session(
    json: &str,
    access_key: &str,
    master: &MasterKey,
) -> Result<SessionRecord, StoreError> {
    let (info, stored) = decode_session_info(json, access_key)?;
    let context = session_context(access_key);
    let secret = master
        .open(&stored.secret, &context)
        .map_err(|e| StoreError::Corrupt(format!("{context}: {e}")))?;
    let token_sha256 = base64::engine::general_purpose::STANDARD
        .decode(&stored.token_sha256)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{context}: token hash is malformed")))?;
    Ok(SessionRecord {
        info,
        secret,
        token_sha256,
    })
}

fn check_name(what: &str, field: &str, inside: &str) -> Result<(), StoreError> {
    if field != inside {
        return Err(StoreError::Corrupt(format!(
            "{what} {field:?} holds the record of {inside:?}"
        )));
    }
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode record: {e}")))
}

fn from_json<'a, T: Deserialize<'a>>(
    json: &'a str,
    what: &str,
    field: &str,
) -> Result<T, StoreError> {
    // serde_json errors name a position and the expected type, never the
    // (possibly sealed) value.
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what} {field:?}: {e}")))
}

fn encode_rule(r: &RuleRecord) -> Result<String, StoreError> {
    to_json(&StoredRule {
        id: r.id.clone(),
        effect: r.effect,
        principals: r.principals.clone(),
        actions: r.actions.clone(),
        resources: r.resources.clone(),
    })
}

/// The field of `p:buckets` that holds the default backend. No bucket
/// name starts with `:`.
const DEFAULT_BACKEND_FIELD: &str = ":default-backend";

#[derive(Serialize, Deserialize)]
struct StoredDefault {
    backend: String,
}

fn encode_default(backend: &str) -> Result<String, StoreError> {
    to_json(&StoredDefault {
        backend: backend.to_owned(),
    })
}

fn encode_bucket(b: &BucketRecord) -> Result<String, StoreError> {
    to_json(&StoredBucket {
        credentials: b.credentials.clone(),
        name: b.name.clone(),
        backend: b.backend.clone(),
        backend_bucket: b.backend_bucket.clone(),
        cors: b
            .cors
            .iter()
            .map(|r| StoredCorsRule {
                allowed_origins: r.allowed_origins.clone(),
                allowed_methods: r.allowed_methods.clone(),
                allowed_headers: r.allowed_headers.clone(),
                expose_headers: r.expose_headers.clone(),
                max_age: r.max_age,
            })
            .collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn master() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap()
    }

    fn raw() -> RawState {
        RawState {
            version: Some(3),
            keys: BTreeMap::new(),
            rules: BTreeMap::new(),
            backends: BTreeMap::new(),
            buckets: BTreeMap::new(),
        }
    }

    fn key(ak: &str) -> KeyRecord {
        KeyRecord {
            access_key: ak.into(),
            secret: Secret::new(format!("secret-of-{ak}")),
            principal: "alice".into(),
            groups: vec!["g".into()],
            created: 7,
        }
    }

    fn inner(master: MasterKey) -> Inner {
        Inner {
            client: redis::Client::open("redis://127.0.0.1:1").unwrap(),
            master,
            names: Names::new(DEFAULT_PREFIX),
            conn_config: AsyncConnectionConfig::new(),
            shared: Mutex::new(None),
        }
    }

    #[test]
    fn records_round_trip_through_the_stored_form() {
        let m = master();
        let i = inner(m.clone());
        let backend = BackendRecord {
            name: "b1".into(),
            endpoint: "http://127.0.0.1:9000".into(),
            region: "r".into(),
            addressing_style: AddressingStyleConfig::Virtual,
            credentials: CredentialSpec::StaticHmac {
                access_key: "BAK".into(),
                secret_key: Secret::new("backend-secret"),
                session_token: Some(Secret::new("session-token-value")),
            },
            ca_bundle: Some("/ca.pem".into()),
            insecure_skip_verify: true,
            key_segment_guard: true,
            egress: s3gate_proto::Egress {
                proxy: Some("http://127.0.0.1:3128".into()),
                no_proxy: vec![".internal".into()],
                proxy_credentials: Some("env:PROXY_AUTH".into()),
            },
            limits: s3gate_proto::BackendLimits {
                max_connections: 7,
                connect_timeout: Some(Duration::from_millis(1500)),
                response_timeout: Duration::from_secs(9),
            },
        };
        let mut r = raw();
        r.keys
            .insert("AK1".into(), i.encode_key(&key("AK1")).unwrap());
        r.backends
            .insert("b1".into(), i.encode_backend(&backend).unwrap());
        for json in r.keys.values().chain(r.backends.values()) {
            assert!(!json.contains("secret-of-") && !json.contains("backend-secret"));
            assert!(!json.contains("session-token-value"));
        }
        let state = r.decode(&m).unwrap();
        assert_eq!(state.version, 3);
        assert_eq!(state.keys["AK1"], key("AK1"));
        assert_eq!(state.backends["b1"], backend);

        // A record in the stored form from before `credentials` still reads.
        let legacy = serde_json::json!({
            "name": "b1", "endpoint": "http://127.0.0.1:9000", "region": "r",
            "addressing_style": "virtual",
            "access_key": "BAK",
            "secret": m.seal("backend-secret", "backend:b1").unwrap(),
            "session_token": m.seal("session-token-value", "backend:b1:session-token").unwrap(),
            "ca_bundle": "/ca.pem", "insecure_skip_verify": true,
        });
        let mut r = raw();
        r.backends.insert("b1".into(), legacy.to_string());
        // (Nor proxy nor limits then: the defaults.)
        let old = BackendRecord {
            egress: Default::default(),
            limits: Default::default(),
            ..backend.clone()
        };
        assert_eq!(r.decode(&m).unwrap().backends["b1"], old);
        // Sealed secrets swapped between the fields of one credential fail.
        let mut swapped: serde_json::Value =
            serde_json::from_str(&i.encode_backend(&backend).unwrap()).unwrap();
        let creds = &mut swapped["credentials"];
        let secret_key = creds["secret_key"].clone();
        creds["secret_key"] = creds["session_token"].clone();
        creds["session_token"] = secret_key;
        let mut r = raw();
        r.backends.insert("b1".into(), swapped.to_string());
        assert!(matches!(r.decode(&m), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn the_default_backend_is_a_field_of_the_buckets_hash() {
        let m = master();
        let mut r = raw();
        assert_eq!(raw().decode(&m).unwrap().default_backend, None);
        r.buckets.insert(
            DEFAULT_BACKEND_FIELD.into(),
            encode_default("minio").unwrap(),
        );
        let state = r.decode(&m).unwrap();
        assert_eq!(state.default_backend.as_deref(), Some("minio"));
        assert!(state.buckets.is_empty(), "not a bucket");
    }

    #[test]
    fn buckets_keep_their_cors_rules_and_old_records_still_load() {
        let m = master();
        let bucket = BucketRecord {
            name: "web".into(),
            backend: "b1".into(),
            backend_bucket: "web".into(),
            cors: vec![
                CorsRule {
                    allowed_origins: vec!["https://app.example.com".into()],
                    allowed_methods: vec!["GET".into(), "PUT".into()],
                    allowed_headers: vec!["*".into()],
                    expose_headers: vec!["ETag".into()],
                    max_age: Some(600),
                },
                CorsRule {
                    allowed_origins: vec!["*".into()],
                    allowed_methods: vec!["GET".into()],
                    ..CorsRule::default()
                },
            ],
            credentials: Some(crate::credential::BucketCredentialSource::Plugin(
                crate::credential::RemoteCredentials {
                    url: "http://127.0.0.1:50061".into(),
                    timeout: std::time::Duration::from_millis(250),
                },
            )),
        };
        let mut r = raw();
        r.buckets
            .insert("web".into(), encode_bucket(&bucket).unwrap());
        assert_eq!(r.decode(&m).unwrap().buckets["web"], bucket);
        // SQL bucket credentials: the settings as given, no secret in them.
        let sql = BucketRecord {
            credentials: Some(crate::credential::BucketCredentialSource::Sql(
                crate::credential::SqlCredentials {
                    url: "env:S3GATE_CREDS_DB".into(),
                    query: "SELECT access_key, secret_key FROM k WHERE principal = :principal"
                        .into(),
                    timeout: std::time::Duration::from_millis(200),
                },
            )),
            ..bucket.clone()
        };
        let mut r = raw();
        r.buckets.insert("web".into(), encode_bucket(&sql).unwrap());
        assert!(
            r.buckets["web"].contains(r#""kind":"sql""#),
            "{}",
            r.buckets["web"]
        );
        assert_eq!(r.decode(&m).unwrap().buckets["web"], sql);
        // Written before buckets had CORS rules: loads without any.
        let mut r = raw();
        r.buckets.insert(
            "web".into(),
            r#"{"name":"web","backend":"b1","backend_bucket":"web"}"#.into(),
        );
        let old = r.decode(&m).unwrap();
        assert!(old.buckets["web"].cors.is_empty());
        // And a bucket without rules is stored as before.
        let plain = BucketRecord {
            cors: Vec::new(),
            credentials: None,
            ..bucket
        };
        assert!(!encode_bucket(&plain).unwrap().contains("cors"));
    }

    #[test]
    fn swapped_records_are_corrupt() {
        let m = master();
        let i = inner(m.clone());
        // The whole record moved to another field.
        let mut r = raw();
        r.keys
            .insert("AK2".into(), i.encode_key(&key("AK1")).unwrap());
        assert!(matches!(r.decode(&m), Err(StoreError::Corrupt(_))));
        // Only the sealed secret moved: the context no longer matches.
        let mut one: serde_json::Value =
            serde_json::from_str(&i.encode_key(&key("AK1")).unwrap()).unwrap();
        let two: serde_json::Value =
            serde_json::from_str(&i.encode_key(&key("AK2")).unwrap()).unwrap();
        one["secret"] = two["secret"].clone();
        let mut r = raw();
        r.keys.insert("AK1".into(), one.to_string());
        let err = r.decode(&m).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(!err.to_string().contains("secret-of-"));
    }

    #[test]
    fn events_have_a_stable_form() {
        let e = Event {
            version: 4,
            touched: Touched::Key("AK".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"version":4,"touched":{"Key":"AK"}}"#
        );
        let all: Event = serde_json::from_str(r#"{"version":9,"touched":"All"}"#).unwrap();
        assert_eq!(all.touched, Touched::All);
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 1..40 {
            let d = contention_backoff(attempt);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(65));
        }
    }
}
