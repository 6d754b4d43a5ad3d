//! Local caches of what the control plane said, each entry living for the TTL
//! the control plane attached to it. `try_get_with` coalesces concurrent
//! misses for one key into a single control-plane call.

use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use s3gate_proto::{Decision, SigningKeyGrant};

/// A value that knows how long it may be cached.
pub trait Ttl {
    fn ttl(&self) -> Duration;
}

impl Ttl for SigningKeyGrant {
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

/// A bounded cache whose entries expire after their own TTL.
pub fn bounded<K, V>(capacity: u64) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Ttl + Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .expire_after(ByValueTtl)
        .build()
}
