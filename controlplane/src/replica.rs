//! One control-plane replica: answers decisions from a local compiled
//! snapshot of the state, and follows the store.
//!
//! Every change, made through any replica, reaches every replica as a store
//! notification; the follower reloads the state, swaps the snapshot and
//! publishes the matching [`Invalidation`]s to its Watch streams (and, in
//! `s3gate serve`, to the in-process data plane). If the store is down, the
//! replica keeps answering from the snapshot it has and retries the reload.
//!
//! [`Replica::reload`] is the one way the replica's config file is read
//! again while it runs (SIGHUP and the Admin `Reload` RPC both call it). It
//! loads and validates the whole file first and changes nothing if any of
//! it fails. Then it swaps in the `[[policy]]` chain, the `[[identity]]`
//! sources and the `[cache]` TTLs, and — when the file is the state's
//! source of truth (a memory store: `serve`, `controlplane` without
//! Redis) — replaces the state (keys, rules, backends, buckets, default
//! backend) at once; the store tells every replica exactly which entries
//! changed. With Redis the store is the source of truth: the state is not
//! read from the file again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use s3gate_proto::{
    AssumedRole, AuthorizeRequest, BucketCors, ControlPlane, ControlPlaneError, Decision, Identity,
    Invalidation, Listing, PresentedCredential, Principal, Route, SigV2Grant, SigV2Request,
    SigningKeyGrant, SigningKeyRequest, StsError, StsErrorCode, WebIdentityRequest,
};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::config::{CacheConfig, FileConfig, LoadOptions, RestartOnly};
use crate::sources::{BuildError, Registry};
use crate::state::{Change, State, StateDiff, Touched};
use crate::store::{Notification, Store, StoreError};
use crate::Snapshot;

/// Invalidations as a replica publishes them: (state version, what
/// changed). Watch streams and the in-process data plane subscribe.
pub type Events = broadcast::Sender<(u64, Invalidation)>;

pub struct Replica {
    store: Arc<dyn Store>,
    /// The TTLs data planes are told; replaced by [`Replica::reload`].
    cache: RwLock<CacheConfig>,
    /// The standing sources: kept across every snapshot; its configured
    /// part replaced by [`Replica::reload`]. Read when a snapshot is
    /// compiled, never on the request path.
    registry: RwLock<Registry>,
    /// The snapshot decisions are answered from. Read on every call (an
    /// `Arc` clone under a briefly held lock), replaced on every change.
    current: RwLock<Arc<Snapshot>>,
    /// The state `current` was compiled from, for a reload to compile the
    /// same state with new sources.
    state: RwLock<Arc<State>>,
    /// Held while a snapshot is compiled and swapped in, so a reload and a
    /// state change never install one built from the other's stale half.
    compiling: Mutex<()>,
    /// The config file a reload reads (set by the process that read it),
    /// and its settings that only a restart changes, as they were at start.
    config_file: OnceLock<(PathBuf, LoadOptions, RestartOnly)>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// The version of `current`, for read-your-writes waits.
    version: watch::Sender<u64>,
    events: Events,
    name: String,
}

impl Replica {
    /// Loads the state and starts following the store. Fails if the store
    /// cannot be read at all: a replica with no state cannot answer.
    pub async fn start(
        store: Arc<dyn Store>,
        cache: CacheConfig,
        name: String,
    ) -> Result<Arc<Self>, StoreError> {
        Self::start_with(store, cache, name, Registry::default()).await
    }

    /// [`Replica::start`] with standing sources besides the built-ins.
    pub async fn start_with(
        store: Arc<dyn Store>,
        cache: CacheConfig,
        name: String,
        registry: Registry,
    ) -> Result<Arc<Self>, StoreError> {
        // Subscribe first: a change between load and subscribe is not lost.
        let notes = store.subscribe();
        let state = store.load().await?;
        info!(
            version = state.version,
            store = store.kind(),
            keys = state.keys.len(),
            rules = state.rules.len(),
            buckets = state.buckets.len(),
            "control plane state loaded"
        );
        let policy_changed = registry.policy_changed.subscribe();
        let replica = Arc::new(Self {
            current: RwLock::new(Arc::new(Snapshot::compile(&state, &cache, &registry))),
            version: watch::channel(state.version).0,
            state: RwLock::new(Arc::new(state)),
            compiling: Mutex::new(()),
            config_file: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            events: broadcast::channel(1024).0,
            store,
            cache: RwLock::new(cache),
            registry: RwLock::new(registry),
            name,
        });
        tokio::spawn(follow(Arc::downgrade(&replica), notes));
        tokio::spawn(policy_reloads(Arc::downgrade(&replica), policy_changed));
        tokio::spawn(heartbeat(Arc::downgrade(&replica)));
        Ok(replica)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// The replica's invalidations as a channel, for a data plane in the
    /// same process (`s3gate serve`): what a remote one gets over Watch.
    pub fn invalidations(&self) -> mpsc::Receiver<Invalidation> {
        let (tx, rx) = mpsc::channel(1024);
        let mut events = self.events.subscribe();
        tokio::spawn(async move {
            while let Some((_, inv)) = next_invalidation(&mut events).await {
                if tx.send(inv).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// The full state, from the store (for Admin listings).
    pub async fn load(&self) -> Result<State, StoreError> {
        self.store.load().await
    }

    /// Applies a change through the store and waits (briefly) until this
    /// replica serves it, so an admin reads its own writes.
    pub async fn apply(&self, change: Change) -> Result<u64, StoreError> {
        let version = self.store.apply(change).await?;
        let mut rx = self.version.subscribe();
        if tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|v| *v >= version))
            .await
            .is_err()
        {
            warn!(version, "change applied but not yet loaded by this replica");
        }
        Ok(version)
    }

    fn registry(&self) -> Registry {
        match self.registry.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn cache(&self) -> CacheConfig {
        match self.cache.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_sources(&self, registry: Registry, cache: CacheConfig) {
        match self.registry.write() {
            Ok(mut guard) => *guard = registry,
            Err(poisoned) => *poisoned.into_inner() = registry,
        }
        match self.cache.write() {
            Ok(mut guard) => *guard = cache,
            Err(poisoned) => *poisoned.into_inner() = cache,
        }
    }

    fn installed_state(&self) -> Arc<State> {
        match self.state.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, state: &State) {
        let _compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let next = Arc::new(Snapshot::compile(state, &self.cache(), &self.registry()));
        self.swap(next);
        match self.state.write() {
            Ok(mut guard) => *guard = Arc::new(state.clone()),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(state.clone()),
        }
        self.version.send_replace(state.version);
    }

    fn swap(&self, next: Arc<Snapshot>) {
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The config file [`Replica::reload`] reads; set once, by the process
    /// that loaded it at start (none: reload answers
    /// [`ReloadError::NoConfigFile`]). `started`: its settings that only a
    /// restart changes, as the process runs with them.
    pub fn set_config_file(&self, path: PathBuf, options: LoadOptions, started: RestartOnly) {
        let _ = self.config_file.set((path, options, started));
    }

    /// Re-reads the config file and puts it in force as a whole, or keeps
    /// everything in force when any of it fails (the error says where):
    ///
    /// 1. load and validate the file (parse, cross references, `env:`
    ///    secrets); when the store follows the file, check its state as the
    ///    Admin API checks a change; build the `[[policy]]` and
    ///    `[[identity]]` sources;
    /// 2. swap in the sources and the `[cache]` TTLs, and (store follows
    ///    the file) replace the state in the store, which tells every
    ///    replica exactly what changed: data planes forget the keys and
    ///    buckets touched, and decisions when rules changed;
    /// 3. tell data planes to forget cached decisions (the sources may
    ///    decide differently) — and everything when identity sources are
    ///    involved before or after, or the TTLs changed.
    ///
    /// Settings only a restart changes (listen addresses, region, `[tls]`,
    /// …) keep their running values; [`Reloaded::restart_needed`] names
    /// those the file now sets otherwise.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (path, options, started) = self.config_file.get().ok_or(ReloadError::NoConfigFile)?;
        let _one = self.reloading.lock().await;
        let file = FileConfig::load_with(path, *options)
            .map_err(|e| ReloadError::Config(e.to_string()))?;
        for warning in &file.warnings {
            warn!(%warning, "config file: probably not what was meant");
        }
        let from_file = self.store.follows_config_file();
        let next_state = if from_file {
            Some(
                State::from_config_checked(&file)
                    .map_err(|e| ReloadError::State(format!("{}: {e}", path.display())))?,
            )
        } else {
            None
        };
        let before = self.registry();
        let cache_before = self.cache();
        let configured = crate::sources::configure(
            &file.policy,
            &file.identity,
            &file.cache,
            &before.policy_changed,
        )
        .await
        .map_err(ReloadError::Build)?;
        let next = before.with_configured(configured);
        // Signing keys come from identity sources: when those may have
        // changed, data planes forget keys (and everything else) too; and
        // everything they cached under the old TTLs when those changed.
        let cache_changed = cache_before != file.cache;
        let wide = !before.configured_identity.is_empty()
            || !next.configured_identity.is_empty()
            || cache_changed;
        // No snapshot uses the new sources until one is compiled: the one
        // installed next, with the new state when there is one.
        self.set_sources(next, file.cache.clone());
        let diff = match next_state {
            Some(mut state) => match self.store.replace(state.clone()).await {
                Ok((version, diff)) => {
                    state.version = version;
                    self.install(&state);
                    Some(diff)
                }
                Err(error) => {
                    self.set_sources(before, cache_before);
                    return Err(ReloadError::Store(error));
                }
            },
            None => {
                let _compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
                let state = self.installed_state();
                self.swap(Arc::new(Snapshot::compile(
                    &state,
                    &self.cache(),
                    &self.registry(),
                )));
                None
            }
        };
        // STS roles apply to the sessions minted from now on. Without an
        // STS engine (no roles, or no [[oidc]], at start) there is none to
        // give them to until a restart.
        let mut restart_needed = started.differing(&file);
        let sts = self.registry().sessions;
        let roles_set =
            sts.is_some_and(|sts| sts.set_roles(crate::roles::Roles::from_config(&file.roles)));
        if !roles_set && !file.roles.is_empty() {
            restart_needed.push("roles");
        }
        // Their database may be the default one, which may have changed.
        let sql_buckets: Vec<String> = self
            .installed_state()
            .buckets
            .values()
            .filter(|b| {
                matches!(
                    b.credentials,
                    Some(crate::credential::BucketCredentialSource::Sql(_))
                )
            })
            .map(|b| b.name.clone())
            .collect();
        let invalidation = if wide {
            Invalidation::All
        } else {
            Invalidation::Policy
        };
        let _ = self.events.send((self.version(), invalidation.clone()));
        if !wide {
            for bucket in sql_buckets {
                let _ = self
                    .events
                    .send((self.version(), Invalidation::Bucket(bucket)));
            }
        }
        let reloaded = Reloaded {
            config_file: path.clone(),
            policy: if file.policy.is_empty() {
                vec!["builtin (the [[rules]]; no [[policy]] entry)".to_owned()]
            } else {
                file.policy.iter().map(|p| p.summary()).collect()
            },
            identity: file.identity.iter().map(|i| i.summary()).collect(),
            invalidated: match invalidation {
                Invalidation::All => "all",
                _ => "policy",
            },
            state: diff,
            state_version: self.version(),
            cache_changed,
            roles: if roles_set { file.roles.len() } else { 0 },
            restart_needed,
        };
        reloaded.log(self.store.kind());
        Ok(reloaded)
    }
}

/// What [`Replica::reload`] put in force. Counts and summaries only: no
/// secret, no key or bucket name.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub config_file: PathBuf,
    /// The policy chain, one summary per entry (no secret).
    pub policy: Vec<String>,
    /// The identity sources, likewise.
    pub identity: Vec<String>,
    /// `policy` or `all`: what data planes were told to forget besides
    /// the entries `state` counts.
    pub invalidated: &'static str,
    /// How the state changed; `None`: the store (Redis) is the state's
    /// source of truth, and the file's state was not read.
    pub state: Option<StateDiff>,
    /// The state version in force after the reload.
    pub state_version: u64,
    /// Whether the `[cache]` TTLs changed.
    pub cache_changed: bool,
    /// The STS `[[roles]]` now in force (sessions already minted keep
    /// theirs).
    pub roles: usize,
    /// Settings the file now sets otherwise than the process runs with,
    /// which keep their running values until a restart.
    pub restart_needed: Vec<&'static str>,
}

impl Reloaded {
    fn log(&self, store: &str) {
        match &self.state {
            Some(d) => info!(
                file = %self.config_file.display(),
                version = self.state_version,
                keys = %d.keys,
                rules = %d.rules,
                backends = %d.backends,
                buckets = %d.buckets,
                default_backend_changed = d.default_backend,
                cache_changed = self.cache_changed,
                roles = self.roles,
                policy = ?self.policy,
                identity = ?self.identity,
                invalidated = self.invalidated,
                "config reloaded (counts: +added -removed ~changed)"
            ),
            None => info!(
                file = %self.config_file.display(),
                store,
                cache_changed = self.cache_changed,
                roles = self.roles,
                policy = ?self.policy,
                identity = ?self.identity,
                invalidated = self.invalidated,
                "configured sources reloaded; keys, rules, backends and buckets live in the \
                 store and change only through the Admin API (the file only seeds an empty store)"
            ),
        }
        if !self.restart_needed.is_empty() {
            warn!(
                file = %self.config_file.display(),
                settings = ?self.restart_needed,
                "these settings changed in the file but take effect only after a restart; \
                 the running values stay"
            );
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this control plane was started without a config file: nothing to reload")]
    NoConfigFile,
    /// The file does not read, parse or validate (the message places it).
    #[error("the config file does not load, the config in force stays: {0}")]
    Config(String),
    /// The file's keys, rules, backends and buckets do not make a valid
    /// state together.
    #[error("the config file's state is invalid, the config in force stays: {0}")]
    State(String),
    #[error("a source does not build, the config in force stays: {0}")]
    Build(#[from] BuildError),
    #[error("the state was not replaced, the config in force stays: {0}")]
    Store(StoreError),
}

/// The next event for a subscriber of [`Replica::events`]. A subscriber
/// that fell behind missed some, so it is told to forget everything
/// (`Invalidation::All`, version 0). `None` once the replica is gone.
pub async fn next_invalidation(
    rx: &mut broadcast::Receiver<(u64, Invalidation)>,
) -> Option<(u64, Invalidation)> {
    match rx.recv().await {
        Ok(event) => Some(event),
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            tracing::debug!(
                missed,
                "invalidation subscriber lagged; flushing everything"
            );
            Some((0, Invalidation::All))
        }
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// How often a replica announces itself, and how long it counts as alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
pub const ALIVE_FOR: Duration = Duration::from_secs(15);

/// Announces the replica in the store until it is dropped.
async fn heartbeat(replica: Weak<Replica>) {
    loop {
        let Some(r) = replica.upgrade() else { return };
        if let Err(error) = r.store.heartbeat(&r.name).await {
            tracing::debug!(%error, "heartbeat not recorded");
        }
        drop(r);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Follows store notifications until the replica is dropped.
async fn follow(replica: Weak<Replica>, mut notes: broadcast::Receiver<Notification>) {
    loop {
        let note = match notes.recv().await {
            Ok(n) => n,
            Err(broadcast::error::RecvError::Lagged(_)) => Notification {
                version: 0,
                touched: Touched::All,
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(replica) = replica.upgrade() else {
            return;
        };
        // Revoked sessions are not state: nothing to reload, only cached
        // signing keys to drop everywhere.
        if let Touched::Sessions(keys) = &note.touched {
            for k in keys {
                let _ = replica
                    .events
                    .send((replica.version(), Invalidation::Key(k.clone())));
            }
            continue;
        }
        let mut backoff = Duration::from_millis(100);
        let state = loop {
            match replica.store.load().await {
                Ok(state) => break state,
                Err(error) => {
                    warn!(%error, "cannot reload control-plane state; serving the previous snapshot");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        if state.version != replica.version() {
            replica.install(&state);
        }
        for inv in invalidations(&note.touched, &state) {
            let _ = replica.events.send((state.version, inv));
        }
    }
}

/// Announces a policy invalidation whenever a standing policy source
/// reloaded its policy (not a state change: the version stays), until the
/// replica is dropped.
async fn policy_reloads(replica: Weak<Replica>, mut changed: watch::Receiver<u64>) {
    while changed.changed().await.is_ok() {
        let Some(r) = replica.upgrade() else { return };
        info!("policy source reloaded; telling data planes to forget decisions");
        let _ = r.events.send((r.version(), Invalidation::Policy));
    }
}

/// What data planes must forget after a change.
fn invalidations(touched: &Touched, state: &State) -> Vec<Invalidation> {
    match touched {
        Touched::Key(k) => vec![Invalidation::Key(k.clone())],
        Touched::Rules => vec![Invalidation::Policy],
        Touched::Bucket(b) => vec![Invalidation::Bucket(b.clone())],
        Touched::Backend(name) => {
            // Bucket names may be patterns: data planes drop every route
            // they match (and `*` drops the default backend's).
            let mut out: Vec<Invalidation> = state
                .buckets
                .values()
                .filter(|b| &b.backend == name)
                .map(|b| Invalidation::Bucket(b.name.clone()))
                .collect();
            if state.default_backend.as_ref() == Some(name) {
                out.push(Invalidation::Bucket("*".to_owned()));
            }
            out
        }
        Touched::Sessions(keys) => keys.iter().cloned().map(Invalidation::Key).collect(),
        Touched::Several(all) => {
            let mut out: Vec<Invalidation> = Vec::new();
            for t in all {
                for inv in invalidations(t, state) {
                    if !out.contains(&inv) {
                        out.push(inv);
                    }
                }
                // Past this many, one flush costs data planes less.
                if out.len() > MAX_INVALIDATIONS {
                    return vec![Invalidation::All];
                }
            }
            out
        }
        Touched::All => vec![Invalidation::All],
    }
}

/// The most invalidations one notification is told as; beyond, `All`.
const MAX_INVALIDATIONS: usize = 256;

#[async_trait]
impl ControlPlane for Replica {
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError> {
        self.snapshot().signing_key(req).await
    }

    async fn verify_sigv2(&self, req: SigV2Request) -> Result<SigV2Grant, ControlPlaneError> {
        self.snapshot().verify_sigv2(req).await
    }

    async fn authenticate(
        &self,
        credential: PresentedCredential,
    ) -> Result<Identity, ControlPlaneError> {
        self.snapshot().authenticate(credential).await
    }

    async fn authorize(&self, req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
        self.snapshot().authorize(req).await
    }

    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError> {
        self.snapshot().route(bucket).await
    }

    async fn route_for(
        &self,
        bucket: &str,
        principal: &Principal,
    ) -> Result<Route, ControlPlaneError> {
        self.snapshot().route_for(bucket, principal).await
    }

    async fn bucket_cors(&self, bucket: &str) -> Result<BucketCors, ControlPlaneError> {
        self.snapshot().bucket_cors(bucket).await
    }

    async fn visible_buckets(
        &self,
        principal: &Principal,
    ) -> Result<Vec<String>, ControlPlaneError> {
        self.snapshot().visible_buckets(principal).await
    }

    async fn listing(&self, principal: &Principal) -> Result<Listing, ControlPlaneError> {
        self.snapshot().listing(principal).await
    }

    async fn assume_role_with_web_identity(
        &self,
        req: WebIdentityRequest,
    ) -> Result<AssumedRole, StsError> {
        let sessions = self.registry().sessions;
        match sessions {
            Some(issuer) => issuer.assume_role_with_web_identity(req).await,
            None => Err(StsError::refused(
                StsErrorCode::AccessDenied,
                "Not authorized to perform sts:AssumeRoleWithWebIdentity: no [[roles]] are \
                 configured",
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::state::KeyRecord;
    use crate::store::MemoryStore;

    fn key_ak1() -> KeyRecord {
        KeyRecord {
            access_key: "AK1".into(),
            secret: Secret::new("s1"),
            principal: "p".into(),
            groups: vec![],
            created: 0,
        }
    }

    #[tokio::test]
    async fn changes_are_served_and_announced() {
        let store = Arc::new(MemoryStore::new());
        let replica = Replica::start(store, CacheConfig::default(), "r1".into())
            .await
            .unwrap();
        let mut events = replica.events().subscribe();
        let ask = || SigningKeyRequest {
            access_key: "AK1".into(),
            date: "20240101".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            security_token_sha256: None,
        };
        assert!(matches!(
            replica.signing_key(ask()).await,
            Err(ControlPlaneError::UnknownAccessKey)
        ));
        let v = replica.apply(Change::PutKey(key_ak1())).await.unwrap();
        // read-your-writes: served as soon as apply returns
        assert_eq!(replica.version(), v);
        assert_eq!(
            &*replica.signing_key(ask()).await.unwrap().principal.name,
            "p"
        );
        let (ver, inv) = tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((ver, inv), (v, Invalidation::Key("AK1".into())));

        replica
            .apply(Change::DeleteKey("AK1".into()))
            .await
            .unwrap();
        assert!(replica.signing_key(ask()).await.is_err());
    }

    #[tokio::test]
    async fn revoked_sessions_are_announced_without_a_reload() {
        use crate::session::{SessionInfo, SessionLimits, SessionRecord, SessionTarget};
        let store = Arc::new(MemoryStore::new());
        let replica = Replica::start(store.clone(), CacheConfig::default(), "r1".into())
            .await
            .unwrap();
        let v = replica.apply(Change::PutKey(key_ak1())).await.unwrap();
        let mut events = replica.events().subscribe();
        let session = |ak: &str| SessionRecord {
            info: SessionInfo {
                access_key: ak.into(),
                principal: "p".into(),
                groups: vec![],
                claims: vec![],
                role_arn: "arn:aws:iam::000000000000:role/r".into(),
                session_name: "s".into(),
                subject: "p".into(),
                provider: "iss".into(),
                created: 0,
                expires: crate::unix_now() + 60,
            },
            secret: Secret::new("x"),
            token_sha256: [0; 32],
        };
        for ak in ["ASIAAAAAAAAAAAAAAAA2", "ASIAAAAAAAAAAAAAAAA3"] {
            store
                .put_session(&session(ak), SessionLimits::default())
                .await
                .unwrap();
        }
        let revoked = store
            .revoke_sessions(&SessionTarget::Principal("p".into()))
            .await
            .unwrap();
        assert_eq!(revoked.len(), 2);
        for ak in revoked {
            let (ver, inv) = tokio::time::timeout(Duration::from_secs(1), events.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!((ver, inv), (v, Invalidation::Key(ak)));
        }
        // not a state change
        assert_eq!(replica.version(), v);
    }

    /// A standing source that counts what it was asked: state it would lose
    /// if it were rebuilt with the snapshot.
    struct Warm {
        asked: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl crate::sources::PolicySource for Warm {
        fn name(&self) -> &'static str {
            "warm"
        }

        async fn decide(
            &self,
            _req: &AuthorizeRequest,
        ) -> Result<crate::sources::Verdict, crate::sources::SourceError> {
            self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(crate::sources::Verdict {
                kind: crate::sources::VerdictKind::Allow,
                reason: "warm".into(),
                by: None,
                scope: s3gate_proto::Scope::Exact,
                ttl: Duration::from_secs(1),
            })
        }
    }

    #[tokio::test]
    async fn standing_sources_outlive_state_changes() {
        use crate::sources::{PolicySlot, Registry};
        let warm = Arc::new(Warm {
            asked: Default::default(),
        });
        let registry = Registry {
            policy: vec![PolicySlot::Rules, PolicySlot::Source(warm.clone())],
            ..Registry::default()
        };
        let store = Arc::new(MemoryStore::new());
        let replica = Replica::start_with(store, CacheConfig::default(), "r1".into(), registry)
            .await
            .unwrap();
        let ask = || AuthorizeRequest {
            principal: Principal::anonymous(),
            action: "s3:GetObject".into(),
            bucket: "data".into(),
            resource: s3gate_proto::Resource::Object("k".into()),
            context: Default::default(),
        };
        assert!(replica.authorize(ask()).await.unwrap().allow);
        replica.apply(Change::PutKey(key_ak1())).await.unwrap();
        assert!(replica.authorize(ask()).await.unwrap().allow);
        // The same instance answered before and after the new snapshot.
        assert_eq!(warm.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A new empty directory for a test's config files.
    fn scratch_dir(tag: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A real config file, rewritten between reloads; the sources are
    /// SQLite queries (in memory) that answer allow or deny.
    #[tokio::test]
    async fn reload_swaps_the_configured_sources_or_keeps_them() {
        let dir = scratch_dir("s3gate-reload");
        let path = dir.join("s3gate.toml");
        let policy = |query: &str| {
            format!("[[policy]]\nkind = \"sql\"\nurl = \"sqlite::memory:\"\nquery = \"{query}\"\n")
        };
        std::fs::write(
            &path,
            policy("SELECT 'allow' AS effect WHERE :bucket = 'data'"),
        )
        .unwrap();
        let file = FileConfig::load_with(&path, LoadOptions { allow_empty: true }).unwrap();
        let mut registry = Registry::default();
        crate::sources::register_configured(
            &mut registry,
            &file.policy,
            &file.identity,
            &file.cache,
        )
        .await
        .unwrap();
        let store = Arc::new(MemoryStore::new());
        let replica = Replica::start_with(store, CacheConfig::default(), "r1".into(), registry)
            .await
            .unwrap();
        let ask = || AuthorizeRequest {
            principal: Principal::anonymous(),
            action: "s3:GetObject".into(),
            bucket: "data".into(),
            resource: s3gate_proto::Resource::Object("k".into()),
            context: Default::default(),
        };
        assert!(matches!(
            replica.reload().await,
            Err(ReloadError::NoConfigFile)
        ));
        replica.set_config_file(
            path.clone(),
            LoadOptions { allow_empty: true },
            RestartOnly::default(),
        );
        assert!(replica.authorize(ask()).await.unwrap().allow);

        let mut events = replica.events().subscribe();
        std::fs::write(
            &path,
            policy("SELECT 'deny' AS effect, 'reloaded' AS reason"),
        )
        .unwrap();
        let reloaded = replica.reload().await.unwrap();
        assert_eq!(reloaded.invalidated, "policy");
        assert_eq!(reloaded.policy.len(), 1);
        assert!(
            reloaded.policy[0].starts_with("sql sqlite::memory: query="),
            "{reloaded:?}"
        );
        let decision = replica.authorize(ask()).await.unwrap();
        assert!(!decision.allow);
        assert!(decision.reason.contains("reloaded"), "{}", decision.reason);
        assert_eq!(events.recv().await.unwrap().1, Invalidation::Policy);

        // A bind the source does not know: the deny stays in force, and the
        // error names the section and the kind.
        std::fs::write(&path, policy("SELECT 'allow' AS effect WHERE :nope = 1")).unwrap();
        let err = replica.reload().await.unwrap_err().to_string();
        assert!(
            err.contains("[[policy]] sql") && err.contains(":nope"),
            "{err}"
        );
        assert!(!replica.authorize(ask()).await.unwrap().allow);
        // A file that does not parse: likewise.
        std::fs::write(&path, "[[policy]]\nkind = \"nope\"\n").unwrap();
        let err = replica.reload().await.unwrap_err().to_string();
        assert!(err.contains("does not load"), "{err}");
        assert!(!replica.authorize(ask()).await.unwrap().allow);

        // Back to no [[policy]]: the built-in rules alone (none: deny), and
        // a state change after the reload keeps the reloaded chain.
        std::fs::write(&path, "[[identity]]\nkind = \"sql\"\nurl = \"sqlite::memory:\"\nquery = \"SELECT 1 WHERE :access_key = ''\"\n").unwrap();
        let reloaded = replica.reload().await.unwrap();
        assert_eq!(reloaded.invalidated, "all", "identity sources changed");
        assert_eq!(reloaded.identity.len(), 1);
        replica.apply(Change::PutKey(key_ak1())).await.unwrap();
        let decision = replica.authorize(ask()).await.unwrap();
        assert!(!decision.allow);
        assert!(!decision.reason.contains("reloaded"), "{}", decision.reason);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The whole file reloaded over a memory store: keys, rules, backends
    /// and buckets replaced at once and announced entry by entry; a file
    /// that does not parse, a bucket naming a missing backend and an unset
    /// `env:` secret each keep everything in force.
    #[tokio::test]
    async fn reload_replaces_the_state_of_a_memory_store_or_keeps_it() {
        let dir = scratch_dir("s3gate-reload-state");
        let path = dir.join("s3gate.toml");
        let backend = |name: &str, port: u16| {
            format!("[[backends]]\nname = \"{name}\"\nendpoint = \"http://127.0.0.1:{port}\"\naccess_key = \"A\"\nsecret_key = \"s\"\n")
        };
        let bucket = |name: &str, backend: &str| {
            format!("[[buckets]]\nname = \"{name}\"\nbackend = \"{backend}\"\n")
        };
        let key = |ak: &str, secret: &str| {
            format!("[[keys]]\naccess_key = \"{ak}\"\nsecret_key = \"{secret}\"\nprincipal = \"alice\"\n")
        };
        let rule = |bucket: &str| {
            format!("[[rules]]\neffect = \"allow\"\nprincipals = [\"alice\"]\nactions = [\"s3:GetObject\"]\nresources = [\"{bucket}/*\"]\n")
        };
        let v1 = [
            backend("b1", 9000),
            bucket("data", "b1"),
            key("AK1", "s1"),
            rule("data"),
        ]
        .concat();
        std::fs::write(&path, &v1).unwrap();
        let file = FileConfig::load(&path).unwrap();
        let store = Arc::new(MemoryStore::new());
        store.seed(&State::from_config(&file)).await.unwrap();
        let replica = Replica::start(store, file.cache.clone(), "r1".into())
            .await
            .unwrap();
        replica.set_config_file(
            path.clone(),
            LoadOptions::default(),
            file.restart_only(true),
        );
        let ask = |bucket: &str| AuthorizeRequest {
            principal: Principal {
                name: "alice".into(),
                ..Principal::anonymous()
            },
            action: "s3:GetObject".into(),
            bucket: bucket.into(),
            resource: s3gate_proto::Resource::Object("k".into()),
            context: Default::default(),
        };
        let signing = |ak: &str| SigningKeyRequest {
            access_key: ak.into(),
            date: "20240101".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            security_token_sha256: None,
        };
        assert!(replica.authorize(ask("data")).await.unwrap().allow);
        assert!(replica.route("logs").await.is_err());
        let version = replica.version();

        // Nothing changed: the state version stays.
        let same = replica.reload().await.unwrap();
        assert_eq!(same.state.as_ref().map(StateDiff::is_empty), Some(true));
        assert_eq!(same.state_version, version);

        let mut events = replica.events().subscribe();
        let v2 = [
            "listen = \"127.0.0.1:1\"\n".to_owned(),
            backend("b1", 9000),
            backend("b2", 9001),
            bucket("data", "b1"),
            bucket("logs", "b2"),
            key("AK2", "s2"),
            rule("logs"),
        ]
        .concat();
        std::fs::write(&path, &v2).unwrap();
        let reloaded = replica.reload().await.unwrap();
        let diff = reloaded.state.clone().unwrap();
        let c = |added, removed, changed| crate::state::Counts {
            added,
            removed,
            changed,
        };
        assert_eq!(
            (diff.keys, diff.rules, diff.backends, diff.buckets),
            (c(1, 1, 0), c(1, 1, 0), c(1, 0, 0), c(1, 0, 0))
        );
        assert_eq!(reloaded.restart_needed, ["listen"]);
        assert_eq!(reloaded.state_version, version + 1);
        // In force as soon as reload returns.
        assert!(!replica.authorize(ask("data")).await.unwrap().allow);
        assert!(replica.authorize(ask("logs")).await.unwrap().allow);
        assert_eq!(replica.route("logs").await.unwrap().backend.name, "b2");
        assert!(matches!(
            replica.signing_key(signing("AK1")).await,
            Err(ControlPlaneError::UnknownAccessKey)
        ));
        assert!(replica.signing_key(signing("AK2")).await.is_ok());
        // Data planes hear of each touched entry (the follower's), and of
        // the decisions (the reload's), in either order.
        let mut heard = Vec::new();
        while heard.len() < 5 {
            let (_, inv) = tokio::time::timeout(Duration::from_secs(2), events.recv())
                .await
                .unwrap()
                .unwrap();
            heard.push(inv);
        }
        for want in [
            Invalidation::Key("AK1".into()),
            Invalidation::Key("AK2".into()),
            Invalidation::Policy,
            Invalidation::Bucket("logs".into()),
        ] {
            assert!(heard.contains(&want), "{want:?} not in {heard:?}");
        }

        // Each of these keeps v2 in force, and says where.
        let broken = [
            (format!("{v2}[[keys]\n"), "s3gate.toml:"),
            (
                [v2.as_str(), &bucket("more", "nope")].concat(),
                "backend \"nope\" is not configured",
            ),
            (
                [v2.as_str(), &key("AK3", "env:S3GATE_TEST_SURELY_UNSET")].concat(),
                "S3GATE_TEST_SURELY_UNSET is not set",
            ),
        ];
        for (text, says) in broken {
            std::fs::write(&path, &text).unwrap();
            let err = replica.reload().await.unwrap_err().to_string();
            assert!(err.contains("does not load") && err.contains(says), "{err}");
            assert_eq!(replica.version(), version + 1);
            assert!(replica.authorize(ask("logs")).await.unwrap().allow);
            assert!(replica.signing_key(signing("AK2")).await.is_ok());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
