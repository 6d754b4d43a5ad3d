//! Where the authoritative control-plane state lives.
//!
//! - [`MemoryStore`]: one process (`s3gate serve`, or a control plane without
//!   Redis). Changes are lost on restart; the config file seeds it.
//! - `RedisStore` ([`crate::redis_store`]): shared by every replica; secrets
//!   encrypted at rest; a pub/sub channel tells every replica what changed.
//!
//! Replicas never answer decisions from the store directly: they keep a local
//! compiled snapshot and reload it when notified (see [`crate::replica`]), so
//! losing the store costs writes, not reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::config::Secret;
use crate::session::{
    SessionInfo, SessionLimits, SessionLookup, SessionRecord, SessionTarget, EXPIRED_KNOWN_FOR,
};
use crate::state::{Change, ChangeError, State, StateDiff, Touched};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached. Reads go on from local state; writes fail.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// Stored data that cannot be decoded or decrypted (wrong master key?).
    #[error("stored state is unreadable: {0}")]
    Corrupt(String),
    /// A bound is reached (sessions: [`SessionLimits::total`]).
    #[error("{0}")]
    Full(String),
}

/// A change somewhere, as every replica hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The state version after the change.
    pub version: u64,
    pub touched: Touched,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The whole state, with its version.
    async fn load(&self) -> Result<State, StoreError>;

    /// Applies one change atomically — validated against the current stored
    /// state, so concurrent writers through different replicas cannot break
    /// referential integrity — bumps the version and notifies every replica.
    /// Returns the new version.
    async fn apply(&self, change: Change) -> Result<u64, StoreError>;

    /// Writes `seed` if the store holds no state yet. Returns whether it did.
    async fn seed(&self, seed: &State) -> Result<bool, StoreError>;

    /// Whether the config file is this store's source of truth: the store
    /// is one process's own (memory), seeded from the file, and a reload
    /// of the file replaces its state ([`Store::replace`]). A shared store
    /// (Redis) is the source of truth itself: the file only seeds it empty.
    fn follows_config_file(&self) -> bool {
        false
    }

    /// Replaces the whole state at once with `next` (its version ignored),
    /// bumps the version if anything differs and notifies every replica of
    /// exactly what did. Returns the version in force and the difference.
    /// Only a store that [`Store::follows_config_file`] does this.
    async fn replace(&self, next: State) -> Result<(u64, StateDiff), StoreError> {
        let _ = next;
        Err(StoreError::Unavailable(format!(
            "the {} store is the source of truth: change it through the Admin API",
            self.kind()
        )))
    }

    /// Changes made through any replica, this one included. After a gap (a
    /// lost subscription, a lagging receiver) the store sends `Touched::All`.
    fn subscribe(&self) -> broadcast::Receiver<Notification>;

    /// Whether the store answers right now.
    async fn health(&self) -> Result<(), StoreError>;

    /// Records that replica `name` is alive (called every few seconds).
    async fn heartbeat(&self, name: &str) -> Result<(), StoreError>;

    /// Replicas that sent a heartbeat within `fresh`, sorted.
    async fn replicas(&self, fresh: Duration) -> Result<Vec<String>, StoreError>;

    /// "memory" or "redis", for status.
    fn kind(&self) -> &'static str;

    // --- temporary sessions (not part of the versioned state) ---

    /// Stores a new session until its expiry, within `limits`: refused
    /// ([`StoreError::Full`]) when the store holds `limits.total` live
    /// sessions; past `limits.per_principal`, the principal's sessions that
    /// expire first are revoked (and every replica told). Returns the
    /// access keys revoked so.
    async fn put_session(
        &self,
        session: &SessionRecord,
        limits: SessionLimits,
    ) -> Result<Vec<String>, StoreError>;

    /// The session of `access_key`, read from the store itself (never a
    /// replica's copy), so a session minted or revoked through any replica
    /// is seen at once.
    async fn session(&self, access_key: &str) -> Result<SessionLookup, StoreError>;

    /// Live sessions, `principal`'s only if given, sorted by access key.
    async fn sessions(&self, principal: Option<&str>) -> Result<Vec<SessionInfo>, StoreError>;

    /// Deletes sessions and tells every replica (`Touched::Sessions`), so
    /// data planes drop what they cached. Returns the access keys revoked.
    async fn revoke_sessions(&self, target: &SessionTarget) -> Result<Vec<String>, StoreError>;

    // Exchanged backend credentials (`crate::sources::exchanged`): one
    // exchange at a time per backend across the replicas sharing the store,
    // and its result shared. A store that is one replica's own (memory)
    // shares nothing: the defaults say so.

    /// Whether other replicas share this store (and so exchanges).
    fn shares_exchanges(&self) -> bool {
        false
    }

    /// Takes `backend`'s exchange lock for `holder` for at most `ttl`;
    /// `false`: another holder has it.
    async fn lock_exchange(
        &self,
        _backend: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Releases the lock if `holder` still has it.
    async fn unlock_exchange(&self, _backend: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// The last exchange's result for `backend` (as given to
    /// [`Store::put_exchanged`]), unless it has expired.
    async fn exchanged(&self, _backend: &str) -> Result<Option<Secret>, StoreError> {
        Ok(None)
    }

    /// Keeps an exchange's result (a secret: sealed at rest) until
    /// `expires_unix`.
    async fn put_exchanged(
        &self,
        _backend: &str,
        _value: &Secret,
        _expires_unix: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

// === MemoryStore ===

pub struct MemoryStore {
    state: Mutex<State>,
    notify: broadcast::Sender<Notification>,
    heartbeats: Mutex<BTreeMap<String, Instant>>,
    sessions: Mutex<MemorySessions>,
}

/// The sessions of a [`MemoryStore`]: live ones by access key and by
/// principal; expired ones as their expiry alone (no secret) for
/// [`EXPIRED_KNOWN_FOR`].
#[derive(Default)]
struct MemorySessions {
    live: HashMap<String, SessionRecord>,
    /// (expiry, access key) of each principal's live sessions.
    by_principal: HashMap<String, BTreeSet<(i64, String)>>,
    /// Access key → expiry and token SHA-256, for sessions that expired.
    expired: HashMap<String, (i64, [u8; 32])>,
    /// When expired sessions were last moved out of `live` (Unix seconds):
    /// at most once a second, so a put costs O(1) amortized.
    swept: i64,
}

impl MemorySessions {
    fn insert(&mut self, record: SessionRecord) {
        self.by_principal
            .entry(record.info.principal.clone())
            .or_default()
            .insert((record.info.expires, record.info.access_key.clone()));
        self.live.insert(record.info.access_key.clone(), record);
    }

    fn remove(&mut self, access_key: &str) -> Option<SessionRecord> {
        let record = self.live.remove(access_key)?;
        if let Some(index) = self.by_principal.get_mut(&record.info.principal) {
            index.remove(&(record.info.expires, record.info.access_key.clone()));
            if index.is_empty() {
                self.by_principal.remove(&record.info.principal);
            }
        }
        Some(record)
    }

    /// Moves sessions past their expiry to `expired`, and forgets those
    /// expired longer than [`EXPIRED_KNOWN_FOR`] ago; the expired are kept
    /// to at most `bound` (beyond it, the key is simply unknown).
    fn sweep(&mut self, now: i64, bound: usize) {
        if self.swept == now {
            return;
        }
        self.swept = now;
        let gone: Vec<String> = self
            .live
            .values()
            .filter(|s| s.info.expires <= now)
            .map(|s| s.info.access_key.clone())
            .collect();
        for key in gone {
            if let Some(record) = self.remove(&key) {
                self.expired
                    .insert(key, (record.info.expires, record.token_sha256));
            }
        }
        self.expired
            .retain(|_, (expires, _)| *expires + EXPIRED_KNOWN_FOR > now);
        if self.expired.len() > bound {
            let mut excess = self.expired.len() - bound;
            self.expired.retain(|_, _| {
                let keep = excess == 0;
                excess = excess.saturating_sub(1);
                keep
            });
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: broadcast::channel(1024).0,
            heartbeats: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(MemorySessions::default()),
        }
    }

    fn sessions_lock(&self) -> Result<std::sync::MutexGuard<'_, MemorySessions>, StoreError> {
        self.sessions
            .lock()
            .map_err(|_| StoreError::Corrupt("session lock poisoned".into()))
    }

    /// Tells every replica that these sessions are gone.
    fn sessions_revoked(&self, access_keys: &[String]) -> Result<(), StoreError> {
        if !access_keys.is_empty() {
            let version = self.lock()?.version;
            let _ = self.notify.send(Notification {
                version,
                touched: Touched::Sessions(access_keys.to_vec()),
            });
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Corrupt("state lock poisoned".into()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self) -> Result<State, StoreError> {
        Ok(self.lock()?.clone())
    }

    async fn apply(&self, change: Change) -> Result<u64, StoreError> {
        let version = {
            let mut state = self.lock()?;
            let mut next = state.clone();
            next.apply(&change)?;
            next.version += 1;
            *state = next;
            state.version
        };
        let _ = self.notify.send(Notification {
            version,
            touched: change.touched(),
        });
        Ok(version)
    }

    async fn seed(&self, seed: &State) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if state.version != 0 || !state.keys.is_empty() || !state.backends.is_empty() {
            return Ok(false);
        }
        *state = seed.clone();
        state.version = 1;
        Ok(true)
    }

    fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.notify.subscribe()
    }

    fn follows_config_file(&self) -> bool {
        true
    }

    async fn replace(&self, next: State) -> Result<(u64, StateDiff), StoreError> {
        let (version, diff) = {
            let mut state = self.lock()?;
            let diff = StateDiff::between(&state, &next);
            if !diff.is_empty() {
                let version = state.version + 1;
                *state = next;
                state.version = version;
            }
            (state.version, diff)
        };
        if let Some(touched) = diff.notification() {
            let _ = self.notify.send(Notification { version, touched });
        }
        Ok((version, diff))
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn heartbeat(&self, name: &str) -> Result<(), StoreError> {
        self.heartbeats
            .lock()
            .map_err(|_| StoreError::Corrupt("heartbeat lock poisoned".into()))?
            .insert(name.to_owned(), Instant::now());
        Ok(())
    }

    async fn replicas(&self, fresh: Duration) -> Result<Vec<String>, StoreError> {
        let beats = self
            .heartbeats
            .lock()
            .map_err(|_| StoreError::Corrupt("heartbeat lock poisoned".into()))?;
        Ok(beats
            .iter()
            .filter(|(_, at)| at.elapsed() <= fresh)
            .map(|(name, _)| name.clone())
            .collect())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn put_session(
        &self,
        session: &SessionRecord,
        limits: SessionLimits,
    ) -> Result<Vec<String>, StoreError> {
        let now = crate::unix_now();
        let evicted = {
            let mut sessions = self.sessions_lock()?;
            sessions.sweep(now, limits.total);
            if sessions.live.len() >= limits.total {
                return Err(StoreError::Full(format!(
                    "{} sessions are live, the most this gateway keeps",
                    sessions.live.len()
                )));
            }
            let principal = &session.info.principal;
            let held = sessions
                .by_principal
                .get(principal)
                .map_or(0, BTreeSet::len);
            let evicted: Vec<String> = match sessions.by_principal.get(principal) {
                Some(index) if held >= limits.per_principal => index
                    .iter()
                    .take(held + 1 - limits.per_principal.max(1))
                    .map(|(_, key)| key.clone())
                    .collect(),
                _ => Vec::new(),
            };
            for key in &evicted {
                sessions.remove(key);
            }
            sessions.insert(session.clone());
            evicted
        };
        self.sessions_revoked(&evicted)?;
        Ok(evicted)
    }

    async fn session(&self, access_key: &str) -> Result<SessionLookup, StoreError> {
        let now = crate::unix_now();
        let sessions = self.sessions_lock()?;
        Ok(match sessions.live.get(access_key) {
            Some(s) if s.info.expires > now => SessionLookup::Live(Box::new(s.clone())),
            Some(s) if s.info.expires + EXPIRED_KNOWN_FOR > now => SessionLookup::Expired {
                token_sha256: Some(s.token_sha256),
            },
            Some(_) => SessionLookup::Unknown,
            None => match sessions.expired.get(access_key) {
                Some((expires, token)) if expires + EXPIRED_KNOWN_FOR > now => {
                    SessionLookup::Expired {
                        token_sha256: Some(*token),
                    }
                }
                _ => SessionLookup::Unknown,
            },
        })
    }

    async fn sessions(&self, principal: Option<&str>) -> Result<Vec<SessionInfo>, StoreError> {
        let now = crate::unix_now();
        let sessions = self.sessions_lock()?;
        let live = |s: &&SessionRecord| s.info.expires > now;
        let mut out: Vec<SessionInfo> = match principal {
            Some(p) => sessions
                .by_principal
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(|(_, key)| sessions.live.get(key))
                .filter(live)
                .map(|s| s.info.clone())
                .collect(),
            None => sessions
                .live
                .values()
                .filter(live)
                .map(|s| s.info.clone())
                .collect(),
        };
        out.sort_by(|a, b| a.access_key.cmp(&b.access_key));
        Ok(out)
    }

    async fn revoke_sessions(&self, target: &SessionTarget) -> Result<Vec<String>, StoreError> {
        let mut revoked: Vec<String> = {
            let mut sessions = self.sessions_lock()?;
            let keys: Vec<String> = match target {
                SessionTarget::AccessKey(ak) => sessions
                    .live
                    .get(ak)
                    .map(|s| s.info.access_key.clone())
                    .into_iter()
                    .collect(),
                SessionTarget::Principal(p) => sessions
                    .by_principal
                    .get(p)
                    .into_iter()
                    .flatten()
                    .map(|(_, key)| key.clone())
                    .collect(),
            };
            for k in &keys {
                sessions.remove(k);
            }
            keys
        };
        revoked.sort();
        self.sessions_revoked(&revoked)?;
        Ok(revoked)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn session(ak: &str, principal: &str, expires_in: i64) -> SessionRecord {
        let now = crate::unix_now();
        SessionRecord {
            info: SessionInfo {
                access_key: ak.into(),
                principal: principal.into(),
                groups: vec![],
                claims: vec![],
                role_arn: "arn:aws:iam::000000000000:role/r".into(),
                session_name: "s".into(),
                subject: principal.into(),
                provider: "iss".into(),
                created: now,
                expires: now + expires_in,
            },
            secret: Secret::new("x"),
            token_sha256: [0; 32],
        }
    }

    #[tokio::test]
    async fn memory_sessions_are_bounded_in_all_and_per_principal() {
        let store = MemoryStore::new();
        let mut heard = store.subscribe();
        let limits = SessionLimits {
            total: 4,
            per_principal: 2,
        };
        let put = |ak: &'static str, p: &'static str, exp| {
            let store = &store;
            async move { store.put_session(&session(ak, p, exp), limits).await }
        };
        assert!(put("A1", "alice", 600).await.unwrap().is_empty());
        assert!(put("A2", "alice", 900).await.unwrap().is_empty());
        // The new session expires first; the oldest other one ends instead.
        assert_eq!(put("A3", "alice", 300).await.unwrap(), ["A1"]);
        assert_eq!(
            heard.try_recv().unwrap().touched,
            Touched::Sessions(vec!["A1".into()])
        );
        assert_eq!(store.session("A1").await.unwrap(), SessionLookup::Unknown);
        let alice: Vec<_> = store.sessions(Some("alice")).await.unwrap();
        assert_eq!(
            alice
                .iter()
                .map(|s| s.access_key.as_str())
                .collect::<Vec<_>>(),
            ["A2", "A3"]
        );
        put("B1", "bob", 600).await.unwrap();
        put("C1", "carol", 600).await.unwrap();
        assert!(matches!(
            put("D1", "dave", 600).await,
            Err(StoreError::Full(_))
        ));
        store
            .revoke_sessions(&SessionTarget::Principal("carol".into()))
            .await
            .unwrap();
        put("D1", "dave", 600).await.unwrap();
    }

    #[tokio::test]
    async fn expired_sessions_leave_their_expiry_and_free_their_place() {
        let store = MemoryStore::new();
        let limits = SessionLimits {
            total: 2,
            per_principal: 2,
        };
        store
            .put_session(&session("E1", "erin", -5), limits)
            .await
            .unwrap();
        store
            .put_session(&session("E2", "erin", -5), limits)
            .await
            .unwrap();
        // A second later the sweep moves both out: the bound counts live
        // sessions only, and the expired are still known as expired.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        store
            .put_session(&session("E3", "erin", 600), limits)
            .await
            .unwrap();
        store
            .put_session(&session("F1", "frank", 600), limits)
            .await
            .unwrap();
        assert_eq!(
            store.session("E1").await.unwrap(),
            SessionLookup::Expired {
                token_sha256: Some([0; 32])
            }
        );
        let sessions = store.sessions_lock().unwrap();
        assert_eq!(sessions.live.len(), 2);
        assert_eq!(sessions.expired.len(), 2);
        assert!(!sessions.by_principal["erin"].contains(&(0, "E1".into())));
    }
}
