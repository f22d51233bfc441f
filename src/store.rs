//! The cache: entries in a moka cache bounded in bytes, and the learned
//! links from lookup keys to the `CacheKey` a service named (SPEC §3).
//!
//! `Store` is a cheap handle; moka does its own fine-grained locking, so no
//! lock of ours is held on the hit path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use smol_str::SmolStr;

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

/// `(service, operation, selector value, vary values)`. The scope is
/// shared: every entry of an operation points at one, instead of holding
/// a copy of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupKey {
    pub scope: Arc<Scope>,
    /// Digests (22 characters) and most policy keys are held inline.
    pub selector: SmolStr,
}

/// Where an entry lives: its scope and the `CacheKey` it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub scope: Arc<Scope>,
    /// Keys up to 23 bytes (`ABC-1234`, most keys) are held inline: no
    /// allocation of their own per entry, nor per lookup that builds one.
    pub cache_key: SmolStr,
}

/// A stored answer: a small head (when it was stored, when it expires, its
/// `Content-Type`) and the response body already stripped of its
/// `CacheControl` block, ready to be sent as it is — in one allocation.
///
/// A record plus a `Bytes` body took three (the record, the body, and the
/// count `Bytes` allocates on its first clone): about 70 B more per entry,
/// a seventh of a 1 KiB entry's overhead (`cargo bench --bench memory`).
/// The body is sent from here as a [`crate::body::Chunk`], without a copy.
#[derive(Debug, Clone)]
pub struct Entry(Arc<[u8]>);

// The head, little-endian: stored at (Unix milliseconds), the expiry word,
// then a content-type tag.
const STORED_AT: usize = 0;
const EXPIRY: usize = 8;
const TAG: usize = 16;
const HEAD: usize = 17;
/// Tag: no `Content-Type`.
const NO_CONTENT_TYPE: u8 = 0;
/// Tag: the value follows the tag, after its length (u64).
const INLINE_CONTENT_TYPE: u8 = u8::MAX;
// Any other tag `t` names `CONTENT_TYPES[t - 1]`.

/// The expiry word: expiry time (Unix milliseconds, the high 42 bits:
/// until 2109) and `stale_if_error` window (whole seconds, the low 22 bits:
/// up to 48 days).
const STALE_BITS: u32 = 22;
const MAX_STALE_SECS: u64 = (1 << STALE_BITS) - 1;
const MAX_EXPIRES_MILLIS: u64 = (1 << (64 - STALE_BITS)) - 1;

/// `Content-Type` values entries have in common, each kept once for the
/// life of the process: an entry holds a one-byte tag instead of the value,
/// and a hit copies a static value (no count to bump, no allocation).
/// Bounded, so leaking them is too; other values are held in the entry.
static CONTENT_TYPES: [OnceLock<HeaderValue>; 32] = [const { OnceLock::new() }; 32];

/// Only short values without a multipart boundary (one per message) are
/// worth a slot.
fn content_type_tag(value: &HeaderValue) -> Option<u8> {
    let bytes = value.as_bytes();
    let boundary = bytes
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"boundary="));
    if bytes.len() > 256 || boundary {
        return None;
    }
    let leaked = || {
        let bytes: &'static [u8] = Box::leak(Box::from(bytes));
        HeaderValue::from_maybe_shared(Bytes::from_static(bytes)).unwrap_or_else(|_| owned(value))
    };
    CONTENT_TYPES
        .iter()
        .position(|slot| slot.get_or_init(leaked) == value)
        .and_then(|i| u8::try_from(i + 1).ok())
}

impl Entry {
    /// Times past what the head holds are shortened to it: an expiry after
    /// 2109, a stale window longer than 48 days.
    pub fn new(
        body: &[&[u8]],
        content_type: Option<&HeaderValue>,
        stored_at: SystemTime,
        expires_at: SystemTime,
        stale_if_error: Duration,
    ) -> Entry {
        let expires = unix_millis(expires_at).min(MAX_EXPIRES_MILLIS);
        let stale = stale_if_error.as_secs().min(MAX_STALE_SECS);
        let mut head = [0u8; HEAD];
        head[STORED_AT..EXPIRY].copy_from_slice(&unix_millis(stored_at).to_le_bytes());
        head[EXPIRY..TAG].copy_from_slice(&((expires << STALE_BITS) | stale).to_le_bytes());
        match content_type.map(|v| (content_type_tag(v), v)) {
            None => Entry::build(head, &[], body),
            Some((Some(tag), _)) => {
                head[TAG] = tag;
                Entry::build(head, &[], body)
            }
            Some((None, value)) => {
                head[TAG] = INLINE_CONTENT_TYPE;
                let value = value.as_bytes();
                let len = (value.len() as u64).to_le_bytes();
                Entry::build(head, &[&len, value], body)
            }
        }
    }

    /// The head, what follows it, then the body, allocated once at its
    /// final size and filled in place: no temporary buffer, no second copy.
    fn build(head: [u8; HEAD], after_head: &[&[u8]], body: &[&[u8]]) -> Entry {
        let pieces = std::iter::once(&head[..])
            .chain(after_head.iter().copied())
            .chain(body.iter().copied());
        let len = pieces.clone().map(<[u8]>::len).sum();
        let mut bytes: Arc<[u8]> = std::iter::repeat_n(0, len).collect();
        if let Some(out) = Arc::get_mut(&mut bytes) {
            let mut at = 0;
            for piece in pieces {
                out[at..at + piece.len()].copy_from_slice(piece);
                at += piece.len();
            }
        }
        Entry(bytes)
    }

    /// The response body, as it is sent.
    pub fn body(&self) -> &[u8] {
        self.0.get(self.body_start()..).unwrap_or_default()
    }

    /// The service's `Content-Type`, if it sent one.
    pub fn content_type(&self) -> Option<HeaderValue> {
        match self.tag() {
            NO_CONTENT_TYPE => None,
            INLINE_CONTENT_TYPE => {
                let value = self.0.get(HEAD + 8..self.body_start())?;
                HeaderValue::from_bytes(value).ok()
            }
            tag => CONTENT_TYPES.get(usize::from(tag) - 1)?.get().cloned(),
        }
    }

    fn tag(&self) -> u8 {
        self.0.get(TAG).copied().unwrap_or(NO_CONTENT_TYPE)
    }

    fn body_start(&self) -> usize {
        if self.tag() != INLINE_CONTENT_TYPE {
            return HEAD;
        }
        let len = usize::try_from(self.word(HEAD)).unwrap_or(usize::MAX);
        HEAD.saturating_add(8).saturating_add(len)
    }

    /// The little-endian word at `at` in the head.
    fn word(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        if let Some(bytes) = self.0.get(at..at + 8) {
            word.copy_from_slice(bytes);
        }
        u64::from_le_bytes(word)
    }

    fn stored_at_millis(&self) -> u64 {
        self.word(STORED_AT)
    }

    fn expires_at_millis(&self) -> u64 {
        self.word(EXPIRY) >> STALE_BITS
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.expires_at_millis()
    }

    pub fn is_usable_stale(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.stale_until_millis()
    }

    /// When the entry may no longer answer even a failed request (Unix
    /// milliseconds).
    fn stale_until_millis(&self) -> u64 {
        let stale_secs = self.word(EXPIRY) & MAX_STALE_SECS;
        self.expires_at_millis() + stale_secs * 1000
    }

    /// Whole seconds since the entry was stored, for the `Age` header.
    pub fn age(&self, now: SystemTime) -> u64 {
        unix_millis(now).saturating_sub(self.stored_at_millis()) / 1000
    }

    fn weight(&self, key: &EntryKey) -> u32 {
        // Head and body (shared content types are not counted), the key,
        // plus a fixed allowance for the structs.
        let bytes = self.0.len()
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

/// Milliseconds since the Unix epoch; 0 for earlier times, `u64::MAX` for
/// those too far ahead to count.
fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
pub struct StoreCounters {
    pub evictions: AtomicU64,
    /// Weight inserted since housekeeping last ran (at least).
    unsettled_weight: AtomicU64,
    /// Bumped whenever an entry or link is stored or removed: a
    /// [`Shortcut`] taken at an older generation is not trusted.
    generation: AtomicU64,
}

impl StoreCounters {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The entry a lookup key led to last time, kept by the memo for a
/// byte-identical repeat request: while nothing was stored or removed
/// since, it saves the two moka lookups of [`Store::lookup`]. The entry is
/// held weakly, so an evicted entry's memory is never kept alive by it.
#[derive(Debug, Default)]
pub struct Shortcut(Mutex<Resolved>);

#[derive(Debug, Default)]
struct Resolved {
    generation: u64,
    entry: Option<Weak<[u8]>>,
    uses: u32,
}

/// One in this many shortcut uses goes through moka anyway, so that its
/// eviction policy still sees which entries are popular.
const SHORTCUT_USES: u32 = 16;

/// foldhash, randomly seeded per process: keys hold digests and selector
/// values, which SipHash (the default) hashes several times
/// slower, on every hit. Equality is still checked in full on a match.
pub type Hasher = foldhash::fast::RandomState;

#[derive(Clone)]
pub struct Store {
    entries: Cache<EntryKey, Entry, Hasher>,
    /// Links are a quick_cache: a moka record costs ~300 B besides its key
    /// and value, which for a link is most of its cost; a quick_cache slot
    /// costs little more than the key and value (`cargo bench --bench
    /// memory`, `link`). An evicted link needs no generation bump: a
    /// shortcut taken through it still leads to a valid entry.
    links: Arc<quick_cache::sync::Cache<LookupKey, Link, LinkWeight, Hasher>>,
    counters: Arc<StoreCounters>,
    /// Scopes (with their operation names) kept once, shared by the
    /// entries of an operation: each entry would otherwise cost its own
    /// allocations (well over 100 B).
    scopes: Arc<Mutex<std::collections::HashSet<Arc<Scope>, Hasher>>>,
    max_bytes: u64,
}

/// Scopes past this many are simply not shared, nor are scopes with vary
/// values (those may be one per user).
const SHARED_SCOPES: usize = 4096;

impl Store {
    /// `max_bytes` bounds the entries (body + headers + key, by weight);
    /// links get a separate, smaller budget of their own.
    pub fn new(max_bytes: u64) -> Store {
        let counters = Arc::new(StoreCounters::default());
        let evictions = counters.clone();
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &EntryKey, entry: &Entry| entry.weight(key))
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
        Store {
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

    /// [`Store::lookup`], through `shortcut` when it is still valid.
    pub fn lookup_via(&self, key: &LookupKey, shortcut: &Shortcut) -> Option<Entry> {
        let generation = self.counters.generation.load(Ordering::Acquire);
        // Never waits: a shortcut in use elsewhere is simply not taken.
        if let Ok(mut resolved) = shortcut.0.try_lock() {
            if resolved.generation == generation && resolved.uses < SHORTCUT_USES {
                if let Some(entry) = resolved.entry.as_ref().and_then(Weak::upgrade) {
                    resolved.uses += 1;
                    return Some(Entry(entry));
                }
            }
        }
        let found = self.lookup(key);
        if let Ok(mut resolved) = shortcut.0.try_lock() {
            // The generation read before the lookup: a change during it
            // makes this shortcut stale at once.
            *resolved = Resolved {
                generation,
                entry: found.as_ref().map(|e| Arc::downgrade(&e.0)),
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
        let weight = u64::from(entry.weight(&key));
        self.entries.insert(key, entry);
        self.counters.changed();
        // moka counts an insert's weight, and evicts for it, in its
        // housekeeping, every so many writes. The byte bound must hold at
        // every moment (SPEC §4), so housekeeping runs now whenever the
        // inserts since it last ran could take the cache past the bound;
        // not after every insert: each run also flushes crossbeam-epoch's
        // garbage bag, a 2 KiB allocation freed later, whose holes in the
        // heap cost a 1 KiB entry about 60 B (`cargo bench --bench memory`,
        // process variants).
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
    /// entry a timer node (64 B of a 1 KiB entry's ~500 B overhead;
    /// `cargo bench --bench memory`) at the cost of a pass over the cache
    /// (about 0.3 µs per entry), which the caller spaces out.
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
            slot.1 += u64::from(entry.weight(&key));
        }
        out
    }
}

/// A header value in its own allocation. Values hyper parsed are slices of
/// the connection's read buffer; one kept in the cache would keep that
/// whole buffer (8 KiB and more) alive with it.
pub fn owned(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
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
        Entry::new(
            &[body],
            None,
            now,
            now + Duration::from_secs(ttl),
            Duration::ZERO,
        )
    }

    #[test]
    fn a_learned_link_leads_many_lookups_to_one_entry_and_purge_clears_it() {
        let store = Store::new(1 << 20);
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
        let store = Store::new(bound);
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
        let store = Store::new(1 << 30);
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
    fn a_shortcut_never_outlives_a_change_to_the_store() {
        let store = Store::new(1 << 20);
        let key = key("s", "digest");
        let shortcut = Shortcut::default();
        assert!(store.lookup_via(&key, &shortcut).is_none());
        store.insert(&key, "ABC", entry(b"first", 60));
        assert_eq!(store.lookup_via(&key, &shortcut).unwrap().body(), b"first");
        for _ in 0..2 * SHORTCUT_USES {
            assert_eq!(store.lookup_via(&key, &shortcut).unwrap().body(), b"first");
        }
        // A refreshed entry is seen at once ...
        store.insert(&key, "ABC", entry(b"second", 60));
        assert_eq!(store.lookup_via(&key, &shortcut).unwrap().body(), b"second");
        // ... and a purged or flushed one is gone at once.
        assert_eq!(store.purge("ABC", None, None), 1);
        assert!(store.lookup_via(&key, &shortcut).is_none());
        store.insert(&key, "ABC", entry(b"third", 60));
        assert_eq!(store.lookup_via(&key, &shortcut).unwrap().body(), b"third");
        store.flush();
        assert!(store.lookup_via(&key, &shortcut).is_none());
    }

    #[test]
    fn a_shortcut_does_not_keep_an_evicted_entry_alive() {
        let store = Store::new(1 << 20);
        let key = key("s", "ABC");
        let shortcut = Shortcut::default();
        store.insert(&key, "ABC", entry(b"answer", 60));
        let found = store.lookup_via(&key, &shortcut).unwrap();
        let weak = Arc::downgrade(&found.0);
        drop(found);
        store.flush();
        // moka frees a removed value once its epoch-based reclamation
        // runs, which takes some further cache operations.
        let freed = (0..100_000).any(|_| {
            store.entries.run_pending_tasks();
            weak.upgrade().is_none()
        });
        assert!(freed, "the shortcut holds the entry");
    }

    #[test]
    fn entries_of_one_operation_share_their_scope() {
        let store = Store::new(1 << 20);
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
        let store = Store::new(1 << 20);
        let now = SystemTime::now();
        let expired = |stale_secs| {
            Entry::new(
                &[b"old"],
                None,
                now - Duration::from_secs(20),
                now - Duration::from_secs(10),
                Duration::from_secs(stale_secs),
            )
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
    fn an_entry_keeps_its_times_to_the_millisecond_and_shortens_extreme_ones() {
        let stored = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        let expires = stored + Duration::from_millis(1_500);
        let entry = Entry::new(&[], None, stored, expires, Duration::from_secs(7));
        let at = |ms: u64| stored + Duration::from_millis(ms);
        assert!(entry.is_fresh(at(1_499)) && !entry.is_fresh(at(1_500)));
        assert!(entry.is_usable_stale(at(8_499)) && !entry.is_usable_stale(at(8_500)));
        assert_eq!((entry.age(at(999)), entry.age(at(1_000))), (0, 1));
        // Year 3000, a year's stale window: kept to 2109 and 48 days.
        let far = UNIX_EPOCH + Duration::from_secs(32_503_680_000);
        let entry = Entry::new(&[], None, stored, far, Duration::from_secs(31_536_000));
        assert!(entry.is_fresh(UNIX_EPOCH + Duration::from_secs(4_300_000_000)));
        assert!(!entry.is_fresh(UNIX_EPOCH + Duration::from_secs(4_400_000_000)));
        assert_eq!(
            entry.stale_until_millis() - entry.expires_at_millis(),
            MAX_STALE_SECS * 1000
        );
    }

    #[test]
    fn an_entry_is_its_body_after_a_small_head_in_one_allocation() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let body = b"<soap:Envelope/>";
        let plain = Entry::new(&[body], None, now, later, Duration::ZERO);
        assert_eq!((plain.body(), plain.content_type()), (&body[..], None));
        assert_eq!(plain.0.len(), HEAD + body.len());

        // A common content type is a one-byte tag, shared by every entry.
        let xml = HeaderValue::from_static("text/xml; charset=utf-8");
        let tagged = Entry::new(&[body], Some(&xml), now, later, Duration::ZERO);
        assert_eq!(tagged.body(), body);
        assert_eq!(tagged.content_type(), Some(xml.clone()));
        assert_eq!(tagged.0.len(), HEAD + body.len());
        let again = Entry::new(&[], Some(&xml), now, later, Duration::ZERO);
        assert_eq!(again.tag(), tagged.tag());

        // A multipart boundary is one per message: held in the entry.
        let multipart = HeaderValue::from_static(
            "multipart/related; type=\"application/xop+xml\"; boundary=\"uuid:1\"",
        );
        let inline = Entry::new(&[body], Some(&multipart), now, later, Duration::ZERO);
        assert_eq!(inline.tag(), INLINE_CONTENT_TYPE);
        assert_eq!(inline.content_type(), Some(multipart.clone()));
        assert_eq!(inline.body(), body);
        assert_eq!(inline.0.len(), HEAD + 8 + multipart.len() + body.len());
        // An empty value held in the entry (when every slot is taken).
        let mut head = [0u8; HEAD];
        head[TAG] = INLINE_CONTENT_TYPE;
        let empty_value = Entry::build(head, &[&0u64.to_le_bytes(), b""], &[body]);
        let empty_header = HeaderValue::from_static("");
        assert_eq!(empty_value.content_type(), Some(empty_header));
        assert_eq!(empty_value.body(), body);
        // The head survives an empty body, and the body any bytes.
        let empty = Entry::new(&[], Some(&multipart), now, later, Duration::ZERO);
        assert_eq!(
            (empty.body(), empty.content_type()),
            (&b""[..], Some(multipart))
        );
        assert!(empty.is_fresh(now) && !empty.is_fresh(later));
    }

    #[test]
    fn flush_empties_the_cache() {
        let store = Store::new(1 << 20);
        for i in 0..3 {
            let key = key("s", &format!("k{i}"));
            store.insert(&key, &key.selector.clone(), entry(b"x", 60));
        }
        assert_eq!(store.flush(), 3);
        assert_eq!(store.entry_count(), 0);
    }
}
