//! One upstream request per key across the fleet. Each instance coalesces
//! its own concurrent misses first (`cache::coalesce`); its leader then
//! claims the key in Redis, in the same round trip that looks for the
//! entry ([`SharedCache::claim`]). Every state is named:
//!
//! - [`Claim::Fresh`]: another instance stored it: answer from it.
//! - [`Claim::Leader`]: this instance fetches, stores, and releases the
//!   [`FleetLock`]. A holder that dies releases by expiry (`lock_ttl`);
//!   one whose future is dropped releases at once (`Drop`).
//! - [`Claim::Held`]: another instance is fetching: wait for its entry
//!   ([`SharedCache::wait_for`]), bounded by `lock_ttl`; when the lock goes
//!   without an entry (the answer could not be shared) or the wait is over,
//!   fetch upstream as if there were no fleet.
//! - [`Claim::Unavailable`]: Redis down or slow: fetch upstream.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::tier::{lock_key, Found, LockState};
use super::SharedCache;
use crate::cache::entry::Entry;
use crate::key::lookup::LookupKey;

/// An entry read from Redis, with the `CacheKey` it is stored under.
pub struct SharedEntry {
    pub cache_key: String,
    pub entry: Entry,
}

pub enum Claim {
    Fresh(SharedEntry),
    /// `stale` is the expired entry Redis holds, if any (for
    /// `stale_if_error`).
    Leader {
        lock: FleetLock,
        stale: Option<Entry>,
    },
    Held {
        stale: Option<Entry>,
    },
    Unavailable,
}

/// First and longest pause between two looks at a held key.
const FIRST_POLL: Duration = Duration::from_millis(2);
const LONGEST_POLL: Duration = Duration::from_millis(50);

impl SharedCache {
    /// Looks for `key`'s entry and, when there is no fresh one, claims
    /// the right to fetch it for the fleet.
    pub async fn claim(&self, key: &LookupKey) -> Claim {
        let n = self.0.locks_taken.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}:{n}", self.0.instance);
        let found = match self.find(key, Some((&token, self.0.lock_ttl))).await {
            Ok(found) => found,
            Err(_) => return Claim::Unavailable,
        };
        let Found { lock, entry } = found;
        match (lock, entry) {
            (LockState::Fresh, Some((cache_key, entry))) => {
                self.0.metrics.hits.inc();
                Claim::Fresh(SharedEntry { cache_key, entry })
            }
            (LockState::TakenByUs, stale) => Claim::Leader {
                lock: FleetLock {
                    cache: self.clone(),
                    key: lock_key(key),
                    token: Some(token),
                },
                stale: stale.map(|(_, e)| e),
            },
            (_, stale) => Claim::Held {
                stale: stale.map(|(_, e)| e),
            },
        }
    }

    /// Waits, bounded by the lock's lifetime, for the instance that holds
    /// `key`'s lock to store its entry; `None` when it released the lock
    /// without one, the wait is over, or Redis fails.
    pub async fn wait_for(&self, key: &LookupKey) -> Option<SharedEntry> {
        let deadline = Instant::now() + self.0.lock_ttl;
        let mut pause = FIRST_POLL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(LONGEST_POLL);
            match self.find(key, None).await.ok()? {
                Found {
                    lock: LockState::Fresh,
                    entry: Some((cache_key, entry)),
                } => {
                    self.0.metrics.hits.inc();
                    return Some(SharedEntry { cache_key, entry });
                }
                Found {
                    lock: LockState::Held,
                    ..
                } => continue,
                _ => return None,
            }
        }
    }
}

/// The right to fetch one key for the fleet, until released or expired.
pub struct FleetLock {
    cache: SharedCache,
    key: String,
    token: Option<String>,
}

/// Deletes the lock only if it is still ours: one that expired and was
/// taken by another instance stays.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

impl FleetLock {
    /// Lets the waiting instances go on: the entry is in Redis now, or
    /// will not be.
    pub async fn release(mut self) {
        if let Some(token) = self.token.take() {
            release(&self.cache, &self.key, &token).await;
        }
    }
}

async fn release(cache: &SharedCache, key: &str, token: &str) {
    let mut invocation = RELEASE.prepare_invoke();
    invocation.key(key).arg(token);
    let mut commands = cache.commands();
    let _ = cache
        .call(
            "unlock",
            cache.0.timeout,
            invocation.invoke_async::<i64>(&mut commands),
        )
        .await;
}

impl Drop for FleetLock {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        // Dropped unreleased (the request was abandoned): release it now
        // rather than make the fleet wait for its expiry.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (cache, key) = (self.cache.clone(), std::mem::take(&mut self.key));
            runtime.spawn(async move { release(&cache, &key, &token).await });
        }
    }
}
