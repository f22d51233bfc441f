//! The memory tier: entries in a moka cache bounded in bytes, and the
//! learned links from lookup keys to the `CacheKey` a service named
//! (reference §3). The first tier every request looks in, and the only one on
//! the hit path, which never waits on anything.
//!
//! `MemoryTier` is a cheap handle; moka does its own fine-grained locking,
//! so no lock of ours is held on the hit path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use moka::notification::RemovalCause;
use moka::sync::Cache;
use smol_str::SmolStr;

use super::entry::{unix_millis, Entry};
use crate::key::lookup::{EntryKey, Hasher, LookupKey, Scope};

/// What an entry costs the tier: head and body, the key, and a fixed
/// allowance for the records around them.
fn weight(entry: &Entry, key: &EntryKey) -> u32 {
    let bytes = entry.len()
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

#[derive(Debug, Clone)]
struct Link {
    cache_key: SmolStr,
    /// The entry's `stale_until`, in Unix milliseconds: past it, the link
    /// leads nowhere.
    until: u64,
}

#[derive(Clone)]
struct LinkWeight;

impl quick_cache::Weighter<LookupKey, Link> for LinkWeight {
    fn weight(&self, key: &LookupKey, link: &Link) -> u64 {
        (key.selector.len() + link.cache_key.len() + 96) as u64
    }
}

/// Counters the admin API and metrics read.
#[derive(Debug, Default)]
pub struct Counters {
    pub evictions: AtomicU64,
    /// Weight inserted since housekeeping last ran (at least).
    unsettled_weight: AtomicU64,
    /// Bumped whenever an entry or link is stored or removed: a
    /// [`EntryHint`] taken at an older generation is not trusted.
    generation: AtomicU64,
}

impl Counters {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The entry a lookup key led to last time, kept by the memo for a
/// byte-identical repeat request: while nothing was stored or removed
/// since, it saves the two moka lookups of [`MemoryTier::lookup`]. The entry is
/// held weakly, so an evicted entry's memory is never kept alive by it.
#[derive(Debug, Default)]
pub struct EntryHint(Mutex<Resolved>);

#[derive(Debug, Default)]
struct Resolved {
    generation: u64,
    entry: Option<Weak<[u8]>>,
    uses: u32,
}

/// One in this many hint uses goes through moka anyway, so that its
/// eviction policy still sees which entries are popular.
const SHORTCUT_USES: u32 = 16;

#[derive(Clone)]
pub struct MemoryTier {
    entries: Cache<EntryKey, Entry, Hasher>,
    /// Links are a quick_cache: a moka record costs several times a link's
    /// key and value besides them; a quick_cache slot costs little more
    /// than the key and value (`cargo bench --bench memory`, `link`). An evicted link needs no generation bump: a
    /// hint taken through it still leads to a valid entry.
    links: Arc<quick_cache::sync::Cache<LookupKey, Link, LinkWeight, Hasher>>,
    counters: Arc<Counters>,
    /// Scopes (with their operation names) kept once, shared by the
    /// entries of an operation: each entry would otherwise cost its own
    /// allocations, a large share of a small entry's cost.
    scopes: Arc<Mutex<std::collections::HashSet<Arc<Scope>, Hasher>>>,
    max_bytes: u64,
}

/// Scopes past this many are simply not shared, nor are scopes with vary
/// values (those may be one per user).
const SHARED_SCOPES: usize = 4096;

impl MemoryTier {
    /// `max_bytes` bounds the entries (body + headers + key, by weight);
    /// links get a separate, smaller budget of their own.
    pub fn new(max_bytes: u64) -> MemoryTier {
        let counters = Arc::new(Counters::default());
        let evictions = counters.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &EntryKey, entry: &Entry| weight(entry, key))
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.evictions.fetch_add(1, Ordering::Relaxed);
                }
                evictions.changed();
            })
            .build_with_hasher(Hasher::default());
        let link_bytes = (max_bytes / 8).max(1 << 20);
        let links = quick_cache::sync::Cache::with(
            usize::try_from(link_bytes / 160).unwrap_or(usize::MAX),
            link_bytes,
            LinkWeight,
            Hasher::default(),
            Default::default(),
        );
        MemoryTier {
            entries,
            links: Arc::new(links),
            counters,
            scopes: Arc::default(),
            max_bytes,
        }
    }

    /// The entry a request leads to: through a learned link first, else
    /// directly under its selector value (a policy key naming the
    /// `CacheKey`). May be expired: the caller decides what it may serve.
    /// An entry or link past its stale window is removed on the way.
    pub fn lookup(&self, key: &LookupKey) -> Option<Entry> {
        let now = unix_millis(crate::clock::now());
        if let Some(link) = self.links.get(key) {
            if link.until <= now {
                self.links.remove(key);
            } else {
                let entry_key = EntryKey {
                    scope: key.scope.clone(),
                    cache_key: link.cache_key,
                };
                if let Some(entry) = self.live_entry(&entry_key, now) {
                    return Some(entry);
                }
            }
        }
        let entry_key = EntryKey {
            scope: key.scope.clone(),
            cache_key: key.selector.clone(),
        };
        self.live_entry(&entry_key, now)
    }

    fn live_entry(&self, key: &EntryKey, now: u64) -> Option<Entry> {
        let entry = self.entries.get(key)?;
        if entry.stale_until_millis() <= now {
            self.entries.invalidate(key);
            return None;
        }
        Some(entry)
    }

    /// [`MemoryTier::lookup`], through `hint` when it is still valid.
    pub fn lookup_with_hint(&self, key: &LookupKey, hint: &EntryHint) -> Option<Entry> {
        let generation = self.counters.generation.load(Ordering::Acquire);
        // Never waits: a hint in use elsewhere is simply not taken.
        if let Ok(mut resolved) = hint.0.try_lock() {
            if resolved.generation == generation && resolved.uses < SHORTCUT_USES {
                if let Some(entry) = resolved.entry.as_ref().and_then(Entry::upgrade) {
                    resolved.uses += 1;
                    return Some(entry);
                }
            }
        }
        let found = self.lookup(key);
        if let Ok(mut resolved) = hint.0.try_lock() {
            // The generation read before the lookup: a change during it
            // makes this hint stale at once.
            *resolved = Resolved {
                generation,
                entry: found.as_ref().map(Entry::downgrade),
                uses: 0,
            };
        }
        found
    }

    /// Stores an entry under `cache_key` and, when the request's selector
    /// value differs, remembers that the request leads to it.
    pub fn insert(&self, lookup: &LookupKey, cache_key: &str, entry: Entry) {
        let cache_key = SmolStr::new(cache_key);
        let scope = self.shared_scope(&lookup.scope);
        if lookup.selector != *cache_key {
            self.links.insert(
                LookupKey {
                    scope: scope.clone(),
                    selector: lookup.selector.clone(),
                },
                Link {
                    cache_key: cache_key.clone(),
                    until: entry.stale_until_millis(),
                },
            );
        }
        let key = EntryKey { scope, cache_key };
        let weight = u64::from(weight(&entry, &key));
        self.entries.insert(key, entry);
        self.counters.changed();
        // moka counts an insert's weight, and evicts for it, in its
        // housekeeping, every so many writes. The byte bound must hold at
        // every moment (reference §4), so housekeeping runs now whenever the
        // inserts since it last ran could take the cache past the bound;
        // not after every insert: each run also flushes crossbeam-epoch's
        // garbage bag, an allocation freed later whose holes in the heap
        // entries of about its size are carved from and whose leftovers stay
        // free (`cargo bench --bench memory`, process variants).
        let unsettled = &self.counters.unsettled_weight;
        let pending = unsettled.fetch_add(weight, Ordering::AcqRel) + weight;
        if self.entries.weighted_size().saturating_add(pending) > self.max_bytes {
            self.entries.run_pending_tasks();
            let _ = unsettled.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(pending))
            });
        }
    }

    /// The one shared copy of `scope`, when it can be shared.
    fn shared_scope(&self, scope: &Arc<Scope>) -> Arc<Scope> {
        if !scope.vary.is_empty() {
            return scope.clone();
        }
        let Ok(mut scopes) = self.scopes.lock() else {
            return scope.clone();
        };
        if let Some(known) = scopes.get(scope) {
            return known.clone();
        }
        if scopes.len() < SHARED_SCOPES {
            scopes.insert(scope.clone());
        }
        scope.clone()
    }

    /// Removes entries stored under `cache_key`, optionally only those of
    /// one service and/or operation (`operation` matches the expanded name
    /// or the local name). Links need no purge: they lead nowhere until a
    /// new entry is stored under that key. Returns how many were removed.
    pub fn purge(&self, cache_key: &str, service: Option<&str>, operation: Option<&str>) -> u64 {
        let now = unix_millis(crate::clock::now());
        let matching: Vec<(Arc<EntryKey>, bool)> = self
            .entries
            .iter()
            .filter(|(key, _)| {
                key.cache_key == cache_key
                    && service.is_none_or(|s| &*key.scope.service == s)
                    && operation.is_none_or(|o| operation_matches(&key.scope.operation, o))
            })
            .map(|(key, entry)| (key, entry.stale_until_millis() > now))
            .collect();
        let mut purged = 0;
        for (key, live) in matching {
            // Entries past their stale window go too, uncounted: for the
            // operator they were gone already.
            if self.entries.remove(&*key).is_some() && live {
                purged += 1;
            }
        }
        self.counters.changed();
        purged
    }

    /// Removes the entries and links past their stale window, which no
    /// request can use any more; returns how many entries went. Lookups
    /// remove those they meet; this catches the ones never asked for
    /// again, and keeps `/stats` and `/metrics` counting live entries.
    ///
    /// Expiry by sweeping instead of by moka's per-entry timers saves each
    /// entry a timer node (a tenth of a small entry's overhead; `cargo bench
    /// --bench memory`) at the cost of a pass over the cache, which the
    /// caller spaces out.
    pub fn remove_expired(&self) -> u64 {
        let now = unix_millis(crate::clock::now());
        let mut removed = 0;
        for (key, entry) in self.entries.iter() {
            if entry.stale_until_millis() <= now {
                self.entries.invalidate(&*key);
                removed += 1;
            }
        }
        self.links.retain(|_, link| link.until > now);
        self.entries.run_pending_tasks();
        removed
    }

    /// Removes every entry and link; returns how many entries there were.
    pub fn flush(&self) -> u64 {
        self.entries.run_pending_tasks();
        let count = self.entries.entry_count();
        self.entries.invalidate_all();
        self.links.clear();
        self.entries.run_pending_tasks();
        self.counters.changed();
        count
    }

    /// Entries stored (for `/stats` and `/metrics`: the inserts moka has
    /// not counted yet are counted first).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub fn evictions(&self) -> u64 {
        self.counters.evictions.load(Ordering::Relaxed)
    }

    /// Entry count and bytes per service, for `/stats`.
    pub fn per_service(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        let mut out = std::collections::BTreeMap::new();
        let now = unix_millis(crate::clock::now());
        for (key, entry) in self.entries.iter() {
            if entry.stale_until_millis() <= now {
                continue;
            }
            let slot: &mut (u64, u64) = out.entry(key.scope.service.to_string()).or_default();
            slot.0 += 1;
            slot.1 += u64::from(weight(&entry, &key));
        }
        out
    }
}

/// Whether an entry of operation `expanded` (`{ns}local`) is one a purge
/// naming `wanted` (expanded or local) means.
pub(crate) fn operation_matches(expanded: &str, wanted: &str) -> bool {
    expanded == wanted
        || expanded
            .rsplit_once('}')
            .map_or(expanded, |(_, local)| local)
            == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Times;
    use crate::soap::SoapVersion;
    use hyper::header::HeaderValue;
    use std::time::{Duration, SystemTime};

    fn scope(service: &str) -> Arc<Scope> {
        Arc::new(Scope {
            service: service.into(),
            operation: "{urn:c}Price".into(),
            version: SoapVersion::V11,
            vary: Box::new([]),
        })
    }

    fn key(service: &str, selector: &str) -> LookupKey {
        LookupKey {
            scope: scope(service),
            selector: selector.into(),
        }
    }

    fn entry(body: &[u8], ttl: u64) -> Entry {
        let now = SystemTime::now();
        Entry::new(&[body], None, times(now, now + Duration::from_secs(ttl), 0))
    }

    fn times(stored_at: SystemTime, expires_at: SystemTime, stale_secs: u64) -> Times {
        Times {
            stored_at,
            expires_at,
            stale_if_error: Duration::from_secs(stale_secs),
            stale_while_revalidate: Duration::ZERO,
        }
    }

    #[test]
    fn a_learned_link_leads_many_lookups_to_one_entry_and_purge_clears_it() {
        let store = MemoryTier::new(1 << 20);
        let a = key("s", "digest-a");
        let b = key("s", "digest-b");
        store.insert(&a, "ABC", entry(b"answer", 60));
        store.insert(&b, "ABC", entry(b"answer", 60));
        assert_eq!(store.lookup(&a).unwrap().body(), b"answer");
        assert_eq!(store.lookup(&b).unwrap().body(), b"answer");
        // A policy key that selects the CacheKey itself needs no link.
        let direct = key("s", "ABC");
        assert!(store.lookup(&direct).is_some());
        // Another service never sees it.
        let other = key("t", "ABC");
        assert!(store.lookup(&other).is_none());

        assert_eq!(store.purge("ABC", None, Some("Price")), 1);
        assert!(store.lookup(&a).is_none() && store.lookup(&b).is_none());
    }

    #[test]
    fn the_byte_bound_holds_after_every_insert() {
        let bound = 64 * 1024;
        let store = MemoryTier::new(bound);
        static BODY: [u8; 1000] = [b'x'; 1000];
        for i in 0..500 {
            let key = key("s", &format!("k{i}"));
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
    fn far_from_the_bound_inserts_leave_housekeeping_to_moka_but_counts_are_exact() {
        let store = MemoryTier::new(1 << 30);
        for i in 0..10 {
            let key = key("s", &format!("k{i}"));
            store.insert(&key, &key.selector.clone(), entry(b"x", 60));
        }
        assert_eq!(
            store.entries.entry_count(),
            0,
            "housekeeping ran per insert"
        );
        assert_eq!(store.entry_count(), 10);
        assert!(store.weighted_bytes() > 10 * 160);
    }

    #[test]
    fn a_hint_never_outlives_a_change_to_the_tier() {
        let store = MemoryTier::new(1 << 20);
        let key = key("s", "digest");
        let hint = EntryHint::default();
        assert!(store.lookup_with_hint(&key, &hint).is_none());
        store.insert(&key, "ABC", entry(b"first", 60));
        assert_eq!(
            store.lookup_with_hint(&key, &hint).unwrap().body(),
            b"first"
        );
        for _ in 0..2 * SHORTCUT_USES {
            assert_eq!(
                store.lookup_with_hint(&key, &hint).unwrap().body(),
                b"first"
            );
        }
        // A refreshed entry is seen at once ...
        store.insert(&key, "ABC", entry(b"second", 60));
        assert_eq!(
            store.lookup_with_hint(&key, &hint).unwrap().body(),
            b"second"
        );
        // ... and a purged or flushed one is gone at once.
        assert_eq!(store.purge("ABC", None, None), 1);
        assert!(store.lookup_with_hint(&key, &hint).is_none());
        store.insert(&key, "ABC", entry(b"third", 60));
        assert_eq!(
            store.lookup_with_hint(&key, &hint).unwrap().body(),
            b"third"
        );
        store.flush();
        assert!(store.lookup_with_hint(&key, &hint).is_none());
    }

    #[test]
    fn a_hint_does_not_keep_an_evicted_entry_alive() {
        let store = MemoryTier::new(1 << 20);
        let key = key("s", "ABC");
        let hint = EntryHint::default();
        store.insert(&key, "ABC", entry(b"answer", 60));
        let found = store.lookup_with_hint(&key, &hint).unwrap();
        let weak = found.downgrade();
        drop(found);
        store.flush();
        // moka frees a removed value once its epoch-based reclamation
        // runs, which takes some further cache operations.
        let freed = (0..100_000).any(|_| {
            store.entries.run_pending_tasks();
            weak.upgrade().is_none()
        });
        assert!(freed, "the hint holds the entry");
    }

    #[test]
    fn entries_of_one_operation_share_their_scope() {
        let store = MemoryTier::new(1 << 20);
        // Each request builds a scope of its own; the store keeps one.
        for i in 0..3 {
            let key = key("s", &format!("digest-{i}"));
            store.insert(&key, &format!("K{i}"), entry(b"x", 60));
        }
        store.entries.run_pending_tasks();
        let scopes: Vec<Arc<Scope>> = store.entries.iter().map(|(k, _)| k.scope.clone()).collect();
        assert_eq!(scopes.len(), 3);
        assert!(scopes.iter().all(|s| Arc::ptr_eq(s, &scopes[0])));
        // A scope with vary values is not shared: it may be one per user.
        let mut varying = (*scope("s")).clone();
        varying.vary = Box::new([Some(HeaderValue::from_static("user-1"))]);
        let key = LookupKey {
            scope: Arc::new(varying),
            selector: "K9".into(),
        };
        store.insert(&key, "K9", entry(b"x", 60));
        assert!(store.lookup(&key).is_some());
        assert_eq!(store.scopes.lock().unwrap().len(), 1);
    }

    #[test]
    fn entries_past_their_stale_window_are_removed_by_lookup_and_by_sweep() {
        let store = MemoryTier::new(1 << 20);
        let now = SystemTime::now();
        let expired = |stale_secs| {
            let (stored, expired) = (now - Duration::from_secs(20), now - Duration::from_secs(10));
            Entry::new(&[b"old"], None, times(stored, expired, stale_secs))
        };
        let (linked, direct) = (key("s", "digest-a"), key("s", "C"));
        store.insert(&linked, "A", expired(5));
        store.insert(&key("s", "digest-b"), "B", expired(60));
        store.insert(&direct, "C", expired(5));
        store.insert(&key("s", "D"), "D", entry(b"new", 60));
        store.entries.run_pending_tasks();
        assert_eq!(store.entry_count(), 4);
        // Past its stale window: never returned, and gone once met.
        assert!(store.lookup(&linked).is_none());
        assert!(store.lookup(&direct).is_none());
        store.entries.run_pending_tasks();
        assert_eq!(store.entry_count(), 3);
        assert_eq!(store.per_service()["s"].0, 2, "/stats counts live entries");
        // The sweep finds the one whose link led nowhere; the stale entry
        // still usable on an upstream error stays.
        assert_eq!(store.remove_expired(), 1);
        assert_eq!(store.entry_count(), 2);
        let stale = store.lookup(&key("s", "digest-b")).unwrap();
        assert!(!stale.is_fresh(now) && stale.is_usable_stale(now));
        assert_eq!(store.links.len(), 1, "dead links went too");
    }

    #[test]
    fn flush_empties_the_cache() {
        let store = MemoryTier::new(1 << 20);
        for i in 0..3 {
            let key = key("s", &format!("k{i}"));
            store.insert(&key, &key.selector.clone(), entry(b"x", 60));
        }
        assert_eq!(store.flush(), 3);
        assert_eq!(store.entry_count(), 0);
    }
}
