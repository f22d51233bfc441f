//! Where entries live. The memory tier is always there and always first;
//! a shared tier (Redis, for a fleet) may stand behind it. A shared tier
//! is reached over the network, so its methods are asynchronous and may
//! fail: a request never fails because of it, it only misses.
//!
//! The hit path never goes through this trait: it calls the memory tier
//! directly and synchronously. [`Tiers`] is what the miss path, purges and
//! invalidations use.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::entry::Entry;
use super::memory::MemoryTier;
use crate::key::lookup::LookupKey;

/// A tier that could not do what it was asked; the caller goes on without
/// it.
#[derive(Debug, thiserror::Error)]
#[error("{tier} tier: {message}")]
pub struct TierError {
    pub tier: &'static str,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type TierResult<'a, T> = BoxFuture<'a, Result<T, TierError>>;

/// What a cache tier does. `purge` and `flush` return how many entries
/// they removed (as far as the tier can tell).
pub trait Tier: Send + Sync {
    fn name(&self) -> &'static str;

    /// The entry `key` leads to, possibly expired (the caller decides what
    /// it may serve).
    fn get<'a>(&'a self, key: &'a LookupKey) -> TierResult<'a, Option<Entry>>;

    /// Stores `entry` under `cache_key`, remembering that `key` leads to it.
    fn put<'a>(
        &'a self,
        key: &'a LookupKey,
        cache_key: &'a str,
        entry: &'a Entry,
    ) -> TierResult<'a, ()>;

    /// Removes the entries stored under `cache_key`, optionally only those
    /// of one service and/or operation.
    fn purge<'a>(
        &'a self,
        cache_key: &'a str,
        service: Option<&'a str>,
        operation: Option<&'a str>,
    ) -> TierResult<'a, u64>;

    fn flush(&self) -> TierResult<'_, u64>;
}

impl Tier for MemoryTier {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a LookupKey) -> TierResult<'a, Option<Entry>> {
        Box::pin(std::future::ready(Ok(self.lookup(key))))
    }

    fn put<'a>(
        &'a self,
        key: &'a LookupKey,
        cache_key: &'a str,
        entry: &'a Entry,
    ) -> TierResult<'a, ()> {
        self.insert(key, cache_key, entry.clone());
        Box::pin(std::future::ready(Ok(())))
    }

    fn purge<'a>(
        &'a self,
        cache_key: &'a str,
        service: Option<&'a str>,
        operation: Option<&'a str>,
    ) -> TierResult<'a, u64> {
        let purged = MemoryTier::purge(self, cache_key, service, operation);
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn flush(&self) -> TierResult<'_, u64> {
        Box::pin(std::future::ready(Ok(MemoryTier::flush(self))))
    }
}

/// The memory tier and, when configured, the shared tier behind it.
#[derive(Clone)]
pub struct Tiers {
    pub memory: MemoryTier,
    pub shared: Option<Arc<dyn Tier>>,
}

impl Tiers {
    pub fn new(memory: MemoryTier, shared: Option<Arc<dyn Tier>>) -> Tiers {
        Tiers { memory, shared }
    }

    /// Every tier, the memory tier first.
    fn all(&self) -> impl Iterator<Item = &dyn Tier> {
        std::iter::once(&self.memory as &dyn Tier).chain(self.shared.as_deref())
    }

    /// Stores a fetched entry in every tier: at once in memory, then in the
    /// shared tier (bounded by its timeout), so that the fleet finds it
    /// before this instance releases its fleet lock.
    pub async fn store(&self, key: &LookupKey, cache_key: &str, entry: Entry) {
        self.memory.insert(key, cache_key, entry.clone());
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.put(key, cache_key, &entry).await {
                tracing::debug!("not stored in the {} tier: {e}", shared.name());
            }
        }
    }

    /// Purges `cache_key` from every tier; the count is the largest any
    /// tier reports (an entry held in both tiers is one entry). A tier that
    /// fails is skipped; it logs its own outages, once each, and the
    /// shared tier applies the purge when it is back.
    pub async fn purge(
        &self,
        cache_key: &str,
        service: Option<&str>,
        operation: Option<&str>,
    ) -> u64 {
        let mut purged = 0;
        for tier in self.all() {
            match tier.purge(cache_key, service, operation).await {
                Ok(n) => purged = purged.max(n),
                Err(e) => tracing::debug!("purge of {cache_key:?} incomplete: {e}"),
            }
        }
        purged
    }

    /// Flushes every tier; the count as for [`Tiers::purge`].
    pub async fn flush(&self) -> u64 {
        let mut flushed = 0;
        for tier in self.all() {
            match tier.flush().await {
                Ok(n) => flushed = flushed.max(n),
                Err(e) => tracing::debug!("flush incomplete: {e}"),
            }
        }
        flushed
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::cache::entry::Times;
    use crate::key::lookup::Scope;
    use crate::soap::SoapVersion;

    fn key(selector: &str) -> LookupKey {
        LookupKey {
            scope: Arc::new(Scope {
                service: "s".into(),
                operation: "{u}Op".into(),
                version: SoapVersion::V11,
                vary: Box::new([]),
            }),
            selector: selector.into(),
        }
    }

    fn entry() -> Entry {
        let now = SystemTime::now();
        Entry::new(
            &[b"<a/>"],
            None,
            Times {
                stored_at: now,
                expires_at: now + Duration::from_secs(60),
                stale_if_error: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
            },
        )
    }

    #[tokio::test]
    async fn the_memory_tier_behind_the_trait_is_the_memory_tier() {
        let memory = MemoryTier::new(1 << 20);
        let tier: &dyn Tier = &memory;
        tier.put(&key("digest"), "K", &entry()).await.unwrap();
        assert!(memory.lookup(&key("digest")).is_some());
        assert!(tier.get(&key("K")).await.unwrap().is_some());
        assert_eq!(tier.purge("K", Some("s"), None).await.unwrap(), 1);
        assert!(tier.get(&key("digest")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn purge_and_flush_reach_every_tier() {
        let (near, far) = (MemoryTier::new(1 << 20), MemoryTier::new(1 << 20));
        let tiers = Tiers::new(near.clone(), Some(Arc::new(far.clone())));
        near.insert(&key("K"), "K", entry());
        far.insert(&key("K"), "K", entry());
        far.insert(&key("L"), "L", entry());
        assert_eq!(tiers.purge("K", None, None).await, 1);
        assert!(near.lookup(&key("K")).is_none() && far.lookup(&key("K")).is_none());
        assert_eq!(tiers.flush().await, 1);
        assert!(far.lookup(&key("L")).is_none());
    }
}
