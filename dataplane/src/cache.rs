//! Local caches of what the control plane said, each entry living for the TTL
//! the control plane attached to it. `try_get_with` coalesces concurrent
//! misses for one key into a single control-plane call. [`PrefixCache`] holds
//! answers that cover every key starting with a prefix. A [`Front`] keeps
//! per-thread copies of the hottest entries in front of a shared cache.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use s3gate_observe::CacheKind;
use s3gate_proto::{Decision, Identity, SigningKeyGrant};

/// A cache lookup's answer, counted as a hit or a miss of `cache`.
#[inline]
pub(crate) fn seen<V>(cache: CacheKind, found: Option<V>) -> Option<V> {
    let metrics = s3gate_observe::metrics();
    match found {
        Some(_) => metrics.cache_hit(cache),
        None => metrics.cache_miss(cache),
    }
    found
}

/// A lookup a [`Front`] answered: a hit of the shared cache behind it.
#[inline]
pub(crate) fn front_hit<V>(cache: CacheKind, value: V) -> V {
    s3gate_observe::metrics().cache_hit(cache);
    value
}

/// A membership test of a negative cache: present is a hit.
#[inline]
pub(crate) fn seen_key(cache: CacheKind, present: bool) -> bool {
    let metrics = s3gate_observe::metrics();
    if present {
        metrics.cache_hit(cache);
    } else {
        metrics.cache_miss(cache);
    }
    present
}

/// An eviction listener counting entries dropped for size or age (not
/// those invalidated or replaced).
pub(crate) fn count_evictions<K, V>(
    cache: CacheKind,
) -> impl Fn(Arc<K>, V, moka::notification::RemovalCause) + Send + Sync + 'static {
    move |_, _, cause| {
        if cause.was_evicted() {
            s3gate_observe::metrics().cache_eviction(cache);
        }
    }
}

/// A value that knows how long it may be cached.
pub trait Ttl {
    fn ttl(&self) -> Duration;
}

impl Ttl for SigningKeyGrant {
    /// A session's grant never outlives the session, whatever TTL came
    /// with it.
    fn ttl(&self) -> Duration {
        match &self.session {
            Some(s) => {
                let left = u64::try_from(s.expires_unix - crate::unix_now()).unwrap_or(0);
                self.ttl.min(Duration::from_secs(left))
            }
            None => self.ttl,
        }
    }
}

/// A bearer token's identity: the control plane's TTL ends at the token's
/// `exp`.
impl Ttl for Identity {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl Ttl for Decision {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

pub(crate) struct ByValueTtl;

impl<K, V: Ttl> Expiry<K, V> for ByValueTtl {
    fn expire_after_create(&self, _key: &K, value: &V, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// A cached value with the instant its entry ends, fixed once when the
/// value is cached (its [`Ttl`] from then). A [`Front`] copy of it ends
/// exactly when the shared entry does, however late it was copied.
#[derive(Clone)]
pub struct Stamped<V> {
    pub value: V,
    pub expires: Instant,
}

impl<V: Ttl> Stamped<V> {
    pub fn new(value: V) -> Self {
        let now = Instant::now();
        Self {
            expires: now.checked_add(value.ttl().min(FOREVER)).unwrap_or(now),
            value,
        }
    }
}

/// Longer than any TTL means anything (keeps `Instant` arithmetic in range).
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A shared-cache entry of a [`Stamped`] value ends at its stamp.
pub(crate) struct ByStamp;

impl<K, V> Expiry<K, Stamped<V>> for ByStamp {
    fn expire_after_create(
        &self,
        _key: &K,
        value: &Stamped<V>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires.saturating_duration_since(created_at))
    }
}

/// Counts the data plane's invalidations. Each one (any kind: they are
/// rare) makes every [`Front`] entry copied before it unusable.
#[derive(Default)]
pub struct Generation(AtomicU64);

impl Generation {
    /// Read before the shared cache is, so that a copy of what it answers
    /// is stamped no later than the answer.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Called once the shared caches have forgotten what an invalidation
    /// names.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// Shards of a [`Front`]: a thread keeps to one, so that workers (fewer
/// than this) never share one.
const FRONT_SHARDS: usize = 16;

/// Entries a [`Front`] shard holds before it starts again empty.
const FRONT_SHARD_ENTRIES: usize = 2048;

/// Per-thread copies of hot entries of a shared (moka) cache, in front of
/// it. A shared-cache read writes state every worker shares (the entry's
/// access time, the read log of its eviction policy); a front read locks a
/// mutex no other worker takes, and is a plain hash-map lookup.
///
/// A copy is only as good as the shared entry it came from:
/// - it ends when that entry does ([`Stamped::expires`]);
/// - it is stamped with the [`Generation`] read before the shared cache was,
///   and used only while no invalidation has happened since;
/// - a shard is bounded, and emptied when full.
///
/// The shared cache stays the one that is filled, coalesced and counted;
/// a front only remembers what it answered.
pub struct Front<K, V> {
    shards: Box<[Mutex<FrontShard<K, V>>]>,
}

/// One thread's copies, each with the generation it was read at. Hashed
/// with foldhash, seeded per process: the keys are partly the client's
/// (bucket, key prefix, access key id), which std's SipHash defends
/// against at several times the cost per lookup; foldhash's seed keeps
/// colliding keys from being computed ahead, and a shard holds at most
/// [`FRONT_SHARD_ENTRIES`] whatever happens.
type FrontShard<K, V> = HashMap<K, (Stamped<V>, u64), foldhash::quality::RandomState>;

thread_local! {
    /// This thread's shard, the same in every front.
    static FRONT_SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % FRONT_SHARDS
    };
}

impl<K: Hash + Eq, V: Clone> Default for Front<K, V> {
    fn default() -> Self {
        Self {
            shards: (0..FRONT_SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Front<K, V> {
    fn shard(&self) -> Option<MutexGuard<'_, FrontShard<K, V>>> {
        let i = FRONT_SHARD.try_with(|i| *i).ok()?;
        // A poisoned shard is skipped: the shared cache still answers.
        self.shards.get(i)?.lock().ok()
    }

    /// This thread's copy of `key`'s value, if it is still good at
    /// generation `now`.
    pub fn get<Q>(&self, key: &Q, now: u64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard()?;
        let (value, generation) = shard.get(key)?;
        (*generation == now && value.expires > Instant::now()).then(|| value.value.clone())
    }

    /// Copies `value`, read from the shared cache at generation
    /// `generation` (read before the shared cache was).
    pub fn insert(&self, key: K, value: Stamped<V>, generation: u64) {
        if value.expires <= Instant::now() {
            return;
        }
        let Some(mut shard) = self.shard() else {
            return;
        };
        if shard.len() >= FRONT_SHARD_ENTRIES {
            shard.clear();
        }
        shard.insert(key, (value, generation));
    }
}

/// Values that each hold for every key starting with a prefix, grouped under
/// a wide key (for decisions: principal, action, bucket and resource kind).
/// A group is an immutable list, replaced whole when a prefix is added; each
/// element expires on its own.
pub struct PrefixCache<K, V> {
    groups: Cache<K, PrefixGroup<V>>,
    /// Set by `insert`, cleared by `invalidate_all`. While false the cache is
    /// empty and `get` skips it (a stale `true` only costs a lookup).
    used: AtomicBool,
}

type PrefixGroup<V> = Arc<[Prefixed<V>]>;

#[derive(Clone)]
struct Prefixed<V> {
    prefix: Box<str>,
    value: V,
    expires: Instant,
}

/// Most prefixes kept per wide key; adding one more drops the oldest.
const MAX_PREFIXES: usize = 32;

/// Longest a prefix entry is kept, whatever its TTL (keeps `Instant`
/// arithmetic in range).
const MAX_PREFIX_TTL: Duration = Duration::from_secs(24 * 3600);

impl<K, V> PrefixCache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache holding about `max_bytes`, as estimated from the heap bytes
    /// of each wide key and each value; its groups dropped for size or age
    /// count as evictions of `kind`.
    pub fn new(
        kind: CacheKind,
        max_bytes: u64,
        key_bytes: fn(&K) -> usize,
        value_bytes: fn(&V) -> usize,
    ) -> Self {
        let groups = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |k: &K, group: &PrefixGroup<V>| -> u32 {
                // 512: moka's per-entry overhead, as for decisions.
                let elements: usize = group
                    .iter()
                    .map(|e| {
                        std::mem::size_of::<Prefixed<V>>() + e.prefix.len() + value_bytes(&e.value)
                    })
                    .sum();
                u32::try_from(key_bytes(k) + elements + 512).unwrap_or(u32::MAX)
            })
            .expire_after(GroupExpiry)
            .eviction_listener(count_evictions(kind))
            .build();
        Self {
            groups,
            used: AtomicBool::new(false),
        }
    }

    /// The newest unexpired value under `wide` whose prefix `key` starts with.
    pub async fn get(&self, wide: &K, key: &str) -> Option<V> {
        if !self.used.load(Ordering::Relaxed) {
            return None;
        }
        let group = self.groups.get(wide).await?;
        let now = Instant::now();
        group
            .iter()
            .rev()
            .find(|e| e.expires > now && key.starts_with(&*e.prefix))
            .map(|e| e.value.clone())
    }

    /// Adds `value` for every key starting with `prefix`, for `ttl`. Drops
    /// the group's expired elements and those the new prefix covers.
    pub async fn insert(&self, wide: K, prefix: &str, value: V, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let Some(expires) = now.checked_add(ttl.min(MAX_PREFIX_TTL)) else {
            return;
        };
        let new = Prefixed {
            prefix: prefix.into(),
            value,
            expires,
        };
        // Serialized per wide key by moka, so concurrent inserts all land.
        self.groups
            .entry(wide)
            .and_upsert_with(|old| {
                let kept: Vec<Prefixed<V>> = old
                    .map(|e| e.into_value())
                    .iter()
                    .flat_map(|g| g.iter())
                    .filter(|e| e.expires > now && !e.prefix.starts_with(prefix))
                    .cloned()
                    .collect();
                let drop_oldest = (kept.len() + 1).saturating_sub(MAX_PREFIXES);
                let group: PrefixGroup<V> = kept
                    .into_iter()
                    .skip(drop_oldest)
                    .chain(std::iter::once(new))
                    .collect();
                std::future::ready(group)
            })
            .await;
        self.used.store(true, Ordering::Relaxed);
    }

    pub fn invalidate_all(&self) {
        self.used.store(false, Ordering::Relaxed);
        self.groups.invalidate_all();
    }
}

/// A group lives as long as its longest-lived element.
struct GroupExpiry;

impl<K, V> Expiry<K, PrefixGroup<V>> for GroupExpiry {
    fn expire_after_create(
        &self,
        _key: &K,
        group: &PrefixGroup<V>,
        created_at: Instant,
    ) -> Option<Duration> {
        group
            .iter()
            .map(|e| e.expires.saturating_duration_since(created_at))
            .max()
    }

    fn expire_after_update(
        &self,
        key: &K,
        group: &PrefixGroup<V>,
        updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, group, updated_at)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cache() -> PrefixCache<&'static str, u32> {
        PrefixCache::new(CacheKind::Prefixes, 1 << 20, |k| k.len(), |_| 0)
    }

    /// `s3gate_cache_evictions_total{cache="…"}` as the registry shows it.
    fn evictions(cache: &str) -> f64 {
        let text = s3gate_observe::metrics().encode();
        let want = format!("s3gate_cache_evictions_total{{cache=\"{cache}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn groups_dropped_for_size_count_as_evictions() {
        // Room for a few groups only: each weighs its key, its elements
        // and 512 bytes of overhead.
        let c: PrefixCache<String, u32> =
            PrefixCache::new(CacheKind::Prefixes, 4 << 10, |k| k.len(), |_| 0);
        let before = evictions("prefix_decisions");
        for i in 0..64u32 {
            c.insert(format!("wide-{i}"), "p/", i, MINUTE).await;
        }
        c.groups.run_pending_tasks().await;
        let counted = evictions("prefix_decisions") - before;
        assert!(counted >= 50.0, "{counted} evictions counted");
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn finds_the_newest_covering_prefix() {
        let c = cache();
        assert_eq!(c.get(&"w", "a/b").await, None);
        c.insert("w", "a/", 1, MINUTE).await;
        c.insert("w", "b/", 2, MINUTE).await;
        assert_eq!(c.get(&"w", "a/b").await, Some(1));
        assert_eq!(c.get(&"w", "b/").await, Some(2));
        assert_eq!(c.get(&"w", "c").await, None);
        assert_eq!(c.get(&"other", "a/b").await, None);
        // A narrower prefix added later answers first where it applies.
        c.insert("w", "a/x", 3, MINUTE).await;
        assert_eq!(c.get(&"w", "a/xy").await, Some(3));
        assert_eq!(c.get(&"w", "a/y").await, Some(1));
        // A wider one replaces what it covers.
        c.insert("w", "a", 4, MINUTE).await;
        assert_eq!(c.get(&"w", "a/xy").await, Some(4));
        assert_eq!(c.groups.get(&"w").await.map(|g| g.len()), Some(2));
    }

    #[tokio::test]
    async fn keeps_at_most_max_prefixes_per_wide_key() {
        let c = cache();
        for i in 0..=MAX_PREFIXES as u32 {
            c.insert("w", &format!("{i}/"), i, MINUTE).await;
        }
        assert_eq!(c.get(&"w", "0/k").await, None, "the oldest is dropped");
        assert_eq!(c.get(&"w", "1/k").await, Some(1));
        let last = MAX_PREFIXES as u32;
        assert_eq!(c.get(&"w", &format!("{last}/k")).await, Some(last));
        assert_eq!(
            c.groups.get(&"w").await.map(|g| g.len()),
            Some(MAX_PREFIXES)
        );
    }

    #[tokio::test]
    async fn each_prefix_expires_on_its_own() {
        let c = cache();
        c.insert("w", "long/", 1, MINUTE).await;
        c.insert("w", "short/", 2, Duration::from_millis(30)).await;
        c.insert("w", "never/", 3, Duration::ZERO).await;
        assert_eq!(c.get(&"w", "short/k").await, Some(2));
        assert_eq!(c.get(&"w", "never/k").await, None);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(c.get(&"w", "short/k").await, None);
        assert_eq!(c.get(&"w", "long/k").await, Some(1));
        // A TTL beyond what an Instant can hold is capped, not a panic.
        c.insert("w", "max/", 4, Duration::MAX).await;
        assert_eq!(c.get(&"w", "max/k").await, Some(4));
    }

    fn stamped(value: u32, ttl: Duration) -> Stamped<u32> {
        Stamped {
            value,
            expires: Instant::now() + ttl,
        }
    }

    #[test]
    fn a_front_copy_is_good_until_the_next_invalidation() {
        let front: Front<String, u32> = Front::default();
        let generation = Generation::default();
        let g = generation.current();
        front.insert("k".into(), stamped(1, MINUTE), g);
        assert_eq!(front.get("k", generation.current()), Some(1));
        assert_eq!(front.get("other", generation.current()), None);
        generation.advance();
        assert_eq!(front.get("k", generation.current()), None);
        // A copy of what was read before an invalidation, stored after it,
        // is never used.
        front.insert("k".into(), stamped(2, MINUTE), g);
        assert_eq!(front.get("k", generation.current()), None);
        front.insert("k".into(), stamped(3, MINUTE), generation.current());
        assert_eq!(front.get("k", generation.current()), Some(3));
    }

    #[test]
    fn a_front_copy_ends_when_the_shared_entry_does() {
        let front: Front<String, u32> = Front::default();
        let g = 0;
        front.insert("gone".into(), stamped(1, Duration::ZERO), g);
        assert_eq!(front.get("gone", g), None);
        front.insert("short".into(), stamped(2, Duration::from_millis(30)), g);
        assert_eq!(front.get("short", g), Some(2));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(front.get("short", g), None);
    }

    #[test]
    fn a_front_shard_is_bounded_and_each_thread_has_its_own() {
        let front: Arc<Front<String, u32>> = Arc::new(Front::default());
        for i in 0..(FRONT_SHARD_ENTRIES as u32 * 2 + 7) {
            front.insert(format!("k{i}"), stamped(i, MINUTE), 0);
        }
        let held: usize = front
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(held <= FRONT_SHARD_ENTRIES, "{held} entries held");
        front.insert("mine".into(), stamped(1, MINUTE), 0);
        let other = front.clone();
        let seen = std::thread::spawn(move || other.get("mine", 0))
            .join()
            .unwrap();
        assert_eq!(seen, None, "another thread has its own copies");
        assert_eq!(front.get("mine", 0), Some(1));
    }

    #[tokio::test]
    async fn invalidate_all_forgets_everything() {
        let c = cache();
        c.insert("w", "a/", 1, MINUTE).await;
        c.invalidate_all();
        assert_eq!(c.get(&"w", "a/k").await, None);
        c.insert("w", "b/", 2, MINUTE).await;
        assert_eq!(c.get(&"w", "b/k").await, Some(2));
        assert_eq!(c.get(&"w", "a/k").await, None);
    }
}
