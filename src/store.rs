//! The cache: entries in a moka cache bounded in bytes, and the learned
//! links from lookup keys to the `CacheKey` a service named (SPEC §3).
//!
//! `Store` is a cheap handle; moka does its own fine-grained locking, so no
//! lock of ours is held on the hit path.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;

use crate::envelope::SoapVersion;

/// What a key is scoped to: entries of one service, operation and set of
/// vary-header values never answer requests of another.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub service: Arc<str>,
    /// The operation's expanded name, `{ns}local`.
    pub operation: Arc<str>,
    /// A SOAP 1.2 requester must not get a stored 1.1 envelope (or the
    /// reverse), though their operation elements are alike: an extension
    /// of SPEC §3's key.
    pub version: SoapVersion,
    /// Each vary header's values, joined when it was sent more than once.
    pub vary: Box<[Option<HeaderValue>]>,
}

/// `(service, operation, selector value, vary values)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupKey {
    pub scope: Scope,
    pub selector: String,
}

/// Where an entry lives: its scope and the `CacheKey` it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub scope: Scope,
    pub cache_key: Arc<str>,
}

/// A stored answer: the response body already stripped of its
/// `CacheControl` block, ready to be sent as it is.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    pub stored_at: SystemTime,
    pub expires_at: SystemTime,
    /// `expires_at` plus the policy's `stale_if_error` window.
    pub stale_until: SystemTime,
}

impl Entry {
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        now < self.expires_at
    }

    pub fn is_usable_stale(&self, now: SystemTime) -> bool {
        now < self.stale_until
    }

    /// Whole seconds since the entry was stored, for the `Age` header.
    pub fn age(&self, now: SystemTime) -> u64 {
        now.duration_since(self.stored_at)
            .unwrap_or_default()
            .as_secs()
    }

    fn weight(&self, key: &EntryKey) -> u32 {
        // Body, headers and key, plus a fixed allowance for the structs.
        let bytes = self.body.len()
            + self.content_type.as_ref().map_or(0, |v| v.len())
            + key.cache_key.len()
            + key.scope.service.len()
            + key.scope.operation.len()
            + key
                .scope
                .vary
                .iter()
                .flatten()
                .map(|v| v.len())
                .sum::<usize>()
            + 160;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Keeps each entry until its stale window has passed, and each link as long
/// as the entry it was learned from.
struct UntilStale;

impl Expiry<EntryKey, Arc<Entry>> for UntilStale {
    fn expire_after_create(
        &self,
        _: &EntryKey,
        entry: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(remaining(entry.stale_until))
    }
    fn expire_after_update(
        &self,
        _: &EntryKey,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(entry.stale_until))
    }
}

impl Expiry<LookupKey, Link> for UntilStale {
    fn expire_after_create(&self, _: &LookupKey, link: &Link, _: Instant) -> Option<Duration> {
        Some(remaining(link.until))
    }
    fn expire_after_update(
        &self,
        _: &LookupKey,
        link: &Link,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(link.until))
    }
}

fn remaining(until: SystemTime) -> Duration {
    until
        .duration_since(crate::clock::now())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
struct Link {
    cache_key: Arc<str>,
    until: SystemTime,
}

/// Counters the admin API and metrics read.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub evictions: std::sync::atomic::AtomicU64,
}

/// foldhash, randomly seeded per process: keys hold 64-character digests
/// and selector values, which SipHash (the default) hashes several times
/// slower, on every hit. Equality is still checked in full on a match.
pub type Hasher = foldhash::fast::RandomState;

#[derive(Clone)]
pub struct Store {
    entries: Cache<EntryKey, Arc<Entry>, Hasher>,
    links: Cache<LookupKey, Link, Hasher>,
    counters: Arc<StoreCounters>,
}

impl Store {
    /// `max_bytes` bounds the entries (body + headers + key, by weight);
    /// links get a separate, smaller budget of their own.
    pub fn new(max_bytes: u64) -> Store {
        let counters = Arc::new(StoreCounters::default());
        let evictions = counters.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &EntryKey, entry: &Arc<Entry>| entry.weight(key))
            .expire_after(UntilStale)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions
                        .evictions
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build_with_hasher(Hasher::default());
        let links = Cache::builder()
            .max_capacity((max_bytes / 8).max(1 << 20))
            .weigher(|key: &LookupKey, link: &Link| {
                u32::try_from(key.selector.len() + link.cache_key.len() + 96).unwrap_or(u32::MAX)
            })
            .expire_after(UntilStale)
            .build_with_hasher(Hasher::default());
        Store {
            entries,
            links,
            counters,
        }
    }

    /// The entry a request leads to: through a learned link first, else
    /// directly under its selector value (a policy key naming the
    /// `CacheKey`). May be expired: the caller decides what it may serve.
    pub fn lookup(&self, key: &LookupKey) -> Option<Arc<Entry>> {
        if let Some(link) = self.links.get(key) {
            let entry_key = EntryKey {
                scope: key.scope.clone(),
                cache_key: link.cache_key,
            };
            if let Some(entry) = self.entries.get(&entry_key) {
                return Some(entry);
            }
        }
        let entry_key = EntryKey {
            scope: key.scope.clone(),
            cache_key: Arc::from(key.selector.as_str()),
        };
        self.entries.get(&entry_key)
    }

    /// Stores an entry under `cache_key` and, when the request's selector
    /// value differs, remembers that the request leads to it.
    pub fn insert(&self, lookup: &LookupKey, cache_key: &str, entry: Arc<Entry>) {
        let cache_key: Arc<str> = Arc::from(cache_key);
        if lookup.selector != *cache_key {
            self.links.insert(
                lookup.clone(),
                Link {
                    cache_key: cache_key.clone(),
                    until: entry.stale_until,
                },
            );
        }
        let key = EntryKey {
            scope: lookup.scope.clone(),
            cache_key,
        };
        self.entries.insert(key, entry);
        // Apply evictions now, so the byte bound holds at every moment and
        // not only after moka's next housekeeping.
        self.entries.run_pending_tasks();
    }

    /// Removes entries stored under `cache_key`, optionally only those of
    /// one service and/or operation (`operation` matches the expanded name
    /// or the local name). Links need no purge: they lead nowhere until a
    /// new entry is stored under that key. Returns how many were removed.
    pub fn purge(&self, cache_key: &str, service: Option<&str>, operation: Option<&str>) -> u64 {
        let matching: Vec<Arc<EntryKey>> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                &*key.cache_key == cache_key
                    && service.is_none_or(|s| &*key.scope.service == s)
                    && operation.is_none_or(|o| operation_matches(&key.scope.operation, o))
            })
            .map(|(key, _)| key)
            .collect();
        let mut purged = 0;
        for key in matching {
            if self.entries.remove(&*key).is_some() {
                purged += 1;
            }
        }
        purged
    }

    /// Removes every entry and link; returns how many entries there were.
    pub fn flush(&self) -> u64 {
        self.entries.run_pending_tasks();
        let count = self.entries.entry_count();
        self.entries.invalidate_all();
        self.links.invalidate_all();
        self.entries.run_pending_tasks();
        self.links.run_pending_tasks();
        count
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.entries.weighted_size()
    }

    pub fn evictions(&self) -> u64 {
        self.counters
            .evictions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entry count and bytes per service, for `/stats`.
    pub fn per_service(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let mut out = std::collections::BTreeMap::new();
        for (key, entry) in self.entries.iter() {
            let slot: &mut (u64, u64) = out.entry(key.scope.service.to_string()).or_default();
            slot.0 += 1;
            slot.1 += u64::from(entry.weight(&key));
        }
        out
    }
}

fn operation_matches(expanded: &str, wanted: &str) -> bool {
    expanded == wanted
        || expanded
            .rsplit_once('}')
            .map_or(expanded, |(_, local)| local)
            == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(service: &str) -> Scope {
        Scope {
            service: service.into(),
            operation: "{urn:c}Price".into(),
            version: SoapVersion::V11,
            vary: Box::new([]),
        }
    }

    fn entry(body: &'static [u8], ttl: u64) -> Arc<Entry> {
        let now = SystemTime::now();
        Arc::new(Entry {
            body: Bytes::from_static(body),
            content_type: None,
            stored_at: now,
            expires_at: now + Duration::from_secs(ttl),
            stale_until: now + Duration::from_secs(ttl),
        })
    }

    #[test]
    fn a_learned_link_leads_many_lookups_to_one_entry_and_purge_clears_it() {
        let store = Store::new(1 << 20);
        let a = LookupKey {
            scope: scope("s"),
            selector: "digest-a".into(),
        };
        let b = LookupKey {
            scope: scope("s"),
            selector: "digest-b".into(),
        };
        store.insert(&a, "ABC", entry(b"answer", 60));
        store.insert(&b, "ABC", entry(b"answer", 60));
        assert_eq!(store.lookup(&a).unwrap().body, "answer");
        assert_eq!(store.lookup(&b).unwrap().body, "answer");
        // A policy key that selects the CacheKey itself needs no link.
        let direct = LookupKey {
            scope: scope("s"),
            selector: "ABC".into(),
        };
        assert!(store.lookup(&direct).is_some());
        // Another service never sees it.
        let other = LookupKey {
            scope: scope("t"),
            selector: "ABC".into(),
        };
        assert!(store.lookup(&other).is_none());

        assert_eq!(store.purge("ABC", None, Some("Price")), 1);
        assert!(store.lookup(&a).is_none() && store.lookup(&b).is_none());
    }

    #[test]
    fn the_byte_bound_holds_after_every_insert() {
        let bound = 64 * 1024;
        let store = Store::new(bound);
        static BODY: [u8; 1000] = [b'x'; 1000];
        for i in 0..500 {
            let key = LookupKey {
                scope: scope("s"),
                selector: format!("k{i}"),
            };
            store.insert(&key, &key.selector.clone(), entry(&BODY, 60));
            assert!(
                store.weighted_bytes() <= bound + 1200,
                "{}",
                store.weighted_bytes()
            );
        }
        assert!(store.evictions() > 0);
    }

    #[test]
    fn flush_empties_the_cache() {
        let store = Store::new(1 << 20);
        for i in 0..3 {
            let key = LookupKey {
                scope: scope("s"),
                selector: format!("k{i}"),
            };
            store.insert(&key, &key.selector.clone(), entry(b"x", 60));
        }
        assert_eq!(store.flush(), 3);
        assert_eq!(store.entry_count(), 0);
    }
}
