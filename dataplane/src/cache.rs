//! Local caches of what the control plane said, each entry living for the TTL
//! the control plane attached to it. `try_get_with` coalesces concurrent
//! misses for one key into a single control-plane call. [`PrefixCache`] holds
//! answers that cover every key starting with a prefix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
