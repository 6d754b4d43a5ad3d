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

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::session::{SessionInfo, SessionLookup, SessionRecord, SessionTarget, EXPIRED_KNOWN_FOR};
use crate::state::{Change, ChangeError, State, Touched};

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

    /// Stores a new session until its expiry.
    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// The session of `access_key`, read from the store itself (never a
    /// replica's copy), so a session minted or revoked through any replica
    /// is seen at once.
    async fn session(&self, access_key: &str) -> Result<SessionLookup, StoreError>;

    /// Live sessions, `principal`'s only if given, sorted by access key.
    async fn sessions(&self, principal: Option<&str>) -> Result<Vec<SessionInfo>, StoreError>;

    /// Deletes sessions and tells every replica (`Touched::Sessions`), so
    /// data planes drop what they cached. Returns the access keys revoked.
    async fn revoke_sessions(&self, target: &SessionTarget) -> Result<Vec<String>, StoreError>;
}

// === MemoryStore ===

pub struct MemoryStore {
    state: Mutex<State>,
    notify: broadcast::Sender<Notification>,
    heartbeats: Mutex<BTreeMap<String, Instant>>,
    /// By access key; expired ones kept for [`EXPIRED_KNOWN_FOR`].
    sessions: Mutex<HashMap<String, SessionRecord>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: broadcast::channel(1024).0,
            heartbeats: Mutex::new(BTreeMap::new()),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions_lock(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, HashMap<String, SessionRecord>>, StoreError> {
        self.sessions
            .lock()
            .map_err(|_| StoreError::Corrupt("session lock poisoned".into()))
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

    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let now = crate::unix_now();
        let mut sessions = self.sessions_lock()?;
        sessions.retain(|_, s| s.info.expires + EXPIRED_KNOWN_FOR > now);
        sessions.insert(session.info.access_key.clone(), session.clone());
        Ok(())
    }

    async fn session(&self, access_key: &str) -> Result<SessionLookup, StoreError> {
        Ok(match self.sessions_lock()?.get(access_key) {
            Some(s) if s.info.expires > crate::unix_now() => {
                SessionLookup::Live(Box::new(s.clone()))
            }
            Some(s) if s.info.expires + EXPIRED_KNOWN_FOR > crate::unix_now() => {
                SessionLookup::Expired
            }
            _ => SessionLookup::Unknown,
        })
    }

    async fn sessions(&self, principal: Option<&str>) -> Result<Vec<SessionInfo>, StoreError> {
        let now = crate::unix_now();
        let mut out: Vec<SessionInfo> = self
            .sessions_lock()?
            .values()
            .filter(|s| s.info.expires > now)
            .filter(|s| principal.is_none_or(|p| s.info.principal == p))
            .map(|s| s.info.clone())
            .collect();
        out.sort_by(|a, b| a.access_key.cmp(&b.access_key));
        Ok(out)
    }

    async fn revoke_sessions(&self, target: &SessionTarget) -> Result<Vec<String>, StoreError> {
        let mut revoked: Vec<String> = {
            let mut sessions = self.sessions_lock()?;
            let keys: Vec<String> = sessions
                .values()
                .filter(|s| match target {
                    SessionTarget::AccessKey(ak) => &s.info.access_key == ak,
                    SessionTarget::Principal(p) => &s.info.principal == p,
                })
                .map(|s| s.info.access_key.clone())
                .collect();
            for k in &keys {
                sessions.remove(k);
            }
            keys
        };
        revoked.sort();
        if !revoked.is_empty() {
            let version = self.lock()?.version;
            let _ = self.notify.send(Notification {
                version,
                touched: Touched::Sessions(revoked.clone()),
            });
        }
        Ok(revoked)
    }
}
