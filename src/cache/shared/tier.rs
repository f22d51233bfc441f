//! Entries and links in Redis, under names every instance derives alike
//! ([`LookupKey::stable_id`], [`EntryKey::stable_id`]):
//!
//! | key | holds | expires |
//! |---|---|---|
//! | `soapcache:e:ID` | hash: `k` the `CacheKey`, `v` the entry's bytes ([`Entry::as_bytes`], versioned), `x` its expiry (Unix ms), `i` and `m` its index and member there | with the entry's stale window |
//! | `soapcache:l:ID` | a lookup key's link: the id of the entry it leads to | same |
//! | `soapcache:i:HASH` | set of `service \x1f operation \x1f entry id` stored under one `CacheKey`, for purges | the longest of its entries |
//! | `soapcache:x:ID` | the fleet lock of a lookup key ([`super::lock`]) | `lock_ttl` |
//!
//! A link outlives a purge of its entry and leads nowhere until an entry
//! is stored under that `CacheKey` again, as in the memory tier.

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use redis::Value;

use super::invalidation::Invalidation;
use super::{tier_error, SharedCache, PREFIX};
use crate::cache::entry::{unix_millis, Entry};
use crate::cache::tier::{Tier, TierError, TierResult};
use crate::key::lookup::{EntryKey, LookupKey};

const ENTRY: &str = "soapcache:e:";
const LINK: &str = "soapcache:l:";
const INDEX: &str = "soapcache:i:";
const LOCK: &str = "soapcache:x:";
/// Separates the fields of an index member.
const SEP: char = '\u{1f}';

/// An entry counts only while its `CacheKey`'s index still names it: a
/// Redis that evicts keys under `maxmemory` may drop an index before its
/// entries, and a purge, which finds entries through the index, would then
/// miss them; this way they are unreachable as soon as the index is.
///
/// Finds what a lookup key leads to in one round trip: through its link,
/// else directly, as the memory tier does. Fresh: `{1, k, v}`. Otherwise
/// the fleet lock's state, and the expired entry if there is one:
/// `{state[, k, v]}`, where with a token (ARGV[2]) the lock is taken if
/// free (2: taken by us, 0: held by another), and without one it is only
/// looked at (0: held, -1: free).
static FIND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local function entry(key)
  local e = redis.call('HMGET', key, 'k', 'v', 'x', 'i', 'm')
  if not e[2] or not e[4] then return nil end
  if redis.call('SISMEMBER', e[4], e[5]) == 0 then return nil end
  return e
end
local found = nil
local id = redis.call('GET', KEYS[1])
if id then found = entry(ARGV[4] .. id) end
if not found then found = entry(KEYS[2]) end
if found and tonumber(found[3]) > tonumber(ARGV[1]) then
  return {1, found[1], found[2]}
end
local state
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[3]) == 1 then state = 0 else state = -1 end
elseif redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  state = 2
else
  state = 0
end
if found then return {state, found[1], found[2]} end
return {state}
",
    )
});

/// What [`SharedCache::find`] saw of a lookup key.
pub(super) struct Found {
    pub lock: LockState,
    /// The entry and the `CacheKey` it is stored under; fresh when
    /// `lock` is [`LockState::Fresh`].
    pub entry: Option<(String, Entry)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LockState {
    /// A fresh entry was found: no lock was looked at.
    Fresh,
    TakenByUs,
    Held,
    Free,
}

pub(super) fn entry_key(key: &EntryKey) -> String {
    format!("{ENTRY}{}", key.stable_id())
}

pub(super) fn lock_key(key: &LookupKey) -> String {
    format!("{LOCK}{}", key.stable_id())
}

fn index_key(cache_key: &str) -> String {
    let digest = blake3::hash(cache_key.as_bytes());
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_bytes()[..16]);
    format!("{INDEX}{id}")
}

impl SharedCache {
    /// The entry `key` leads to, and the fleet lock's state; with `claim`
    /// (a token and how long), the lock is taken if no fresh entry is there
    /// and nobody holds it.
    pub(super) async fn find(
        &self,
        key: &LookupKey,
        claim: Option<(&str, Duration)>,
    ) -> Result<Found, TierError> {
        let direct = EntryKey {
            scope: key.scope.clone(),
            cache_key: key.selector.clone(),
        };
        let now = unix_millis(crate::clock::now());
        let (token, ttl) = claim.unwrap_or(("", Duration::ZERO));
        let mut invocation = FIND.prepare_invoke();
        invocation
            .key(format!("{LINK}{}", key.stable_id()))
            .key(entry_key(&direct))
            .key(lock_key(key))
            .arg(now)
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(ENTRY);
        let mut commands = self.commands();
        let value: Value = self
            .call(
                "lookup",
                self.0.timeout,
                invocation.invoke_async(&mut commands),
            )
            .await?;
        decode_found(value)
    }

    /// Stores `entry` under `cache_key`, linking `key` to it, with the
    /// entry's remaining lifetime and stale window as expiry.
    async fn store(
        &self,
        key: &LookupKey,
        cache_key: &str,
        entry: &Entry,
    ) -> Result<(), TierError> {
        let now = unix_millis(crate::clock::now());
        let Some(ttl) = entry
            .stale_until_millis()
            .checked_sub(now)
            .filter(|t| *t > 0)
        else {
            return Ok(());
        };
        let id = EntryKey {
            scope: key.scope.clone(),
            cache_key: cache_key.into(),
        }
        .stable_id();
        let stored = format!("{ENTRY}{id}");
        let index = index_key(cache_key);
        let member = format!("{}{SEP}{}{SEP}{id}", key.scope.service, key.scope.operation);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &stored,
                &[
                    ("k", cache_key.as_bytes()),
                    ("v", entry.as_bytes()),
                    ("x", entry.expires_at_millis().to_string().as_bytes()),
                    ("i", index.as_bytes()),
                    ("m", member.as_bytes()),
                ],
            )
            .ignore()
            .pexpire(&stored, ttl as i64)
            .ignore();
        if key.selector != cache_key {
            pipe.cmd("SET")
                .arg(format!("{LINK}{}", key.stable_id()))
                .arg(&id)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        // NX gives a new set its expiry, GT lengthens it for a longer-lived
        // entry (Redis 7).
        pipe.sadd(&index, &member)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(ttl)
            .arg("NX")
            .ignore()
            .cmd("PEXPIRE")
            .arg(&index)
            .arg(ttl)
            .arg("GT")
            .ignore();
        let mut commands = self.commands();
        self.call(
            "store",
            self.0.timeout,
            pipe.query_async::<()>(&mut commands),
        )
        .await
    }

    /// Removes the entries stored under `cache_key` (of one service and/or
    /// operation) from Redis; how many there were.
    pub(super) async fn purge_in_redis(
        &self,
        cache_key: &str,
        service: Option<&str>,
        operation: Option<&str>,
        limit: Duration,
    ) -> Result<u64, TierError> {
        let index = index_key(cache_key);
        let mut commands = self.commands();
        let members: Vec<String> = self
            .call(
                "purge",
                limit,
                redis::cmd("SMEMBERS")
                    .arg(&index)
                    .query_async(&mut commands),
            )
            .await?;
        let matching: Vec<(&String, &str)> = members
            .iter()
            .filter_map(|member| {
                let (of_service, rest) = member.split_once(SEP)?;
                let (of_operation, id) = rest.rsplit_once(SEP)?;
                let wanted = service.is_none_or(|s| s == of_service)
                    && operation
                        .is_none_or(|o| crate::cache::memory::operation_matches(of_operation, o));
                wanted.then_some((member, id))
            })
            .collect();
        if matching.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (_, id) in &matching {
            pipe.del(format!("{ENTRY}{id}"));
        }
        for (member, _) in &matching {
            pipe.srem(&index, *member).ignore();
        }
        let removed: Vec<u64> = self
            .call("purge", limit, pipe.query_async(&mut commands))
            .await?;
        Ok(removed.iter().sum())
    }

    /// Removes every key soapcache wrote; how many entries there were.
    pub(super) async fn flush_in_redis(&self, limit: Duration) -> Result<u64, TierError> {
        let mut commands = self.commands();
        let mut cursor: u64 = 0;
        let mut entries = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .call(
                    "flush",
                    limit,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{PREFIX}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut commands),
                )
                .await?;
            if !keys.is_empty() {
                entries += keys.iter().filter(|k| k.starts_with(ENTRY)).count() as u64;
                let _: u64 = self
                    .call(
                        "flush",
                        limit,
                        redis::cmd("UNLINK").arg(&keys).query_async(&mut commands),
                    )
                    .await?;
            }
            if next == 0 {
                return Ok(entries);
            }
            cursor = next;
        }
    }

    /// Applies `invalidation` in Redis and tells every instance; when Redis
    /// cannot take it now, it is kept and applied when Redis is back
    /// ([`super::invalidation`]). The count is Redis's, 0 when kept.
    async fn invalidate(&self, invalidation: Invalidation) -> Result<u64, TierError> {
        match self.apply_and_publish(&invalidation, self.0.timeout).await {
            Ok(n) => Ok(n),
            Err(e) => {
                self.keep_pending(invalidation);
                Err(e)
            }
        }
    }
}

fn decode_found(value: Value) -> Result<Found, TierError> {
    let bad = || tier_error("unexpected answer to the lookup script".into(), None);
    let Value::Array(items) = value else {
        return Err(bad());
    };
    let lock = match items.first() {
        Some(Value::Int(1)) => LockState::Fresh,
        Some(Value::Int(2)) => LockState::TakenByUs,
        Some(Value::Int(0)) => LockState::Held,
        Some(Value::Int(-1)) => LockState::Free,
        _ => return Err(bad()),
    };
    let entry = match (items.get(1), items.get(2)) {
        (Some(Value::BulkString(k)), Some(Value::BulkString(v))) => {
            let cache_key = String::from_utf8(k.clone()).map_err(|_| bad())?;
            match Entry::from_bytes(v) {
                Ok(entry) => Some((cache_key, entry)),
                // Another format (a fleet mid-upgrade) or damaged: a miss.
                Err(e) => {
                    tracing::debug!("shared entry not read: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let lock = match (lock, &entry) {
        (LockState::Fresh, None) => LockState::Free,
        (lock, _) => lock,
    };
    Ok(Found { lock, entry })
}

impl Tier for SharedCache {
    fn name(&self) -> &'static str {
        "shared"
    }

    fn get<'a>(&'a self, key: &'a LookupKey) -> TierResult<'a, Option<Entry>> {
        Box::pin(async move { Ok(self.find(key, None).await?.entry.map(|(_, e)| e)) })
    }

    fn put<'a>(
        &'a self,
        key: &'a LookupKey,
        cache_key: &'a str,
        entry: &'a Entry,
    ) -> TierResult<'a, ()> {
        Box::pin(self.store(key, cache_key, entry))
    }

    fn purge<'a>(
        &'a self,
        cache_key: &'a str,
        service: Option<&'a str>,
        operation: Option<&'a str>,
    ) -> TierResult<'a, u64> {
        Box::pin(self.invalidate(Invalidation::Purge {
            key: cache_key.to_owned(),
            service: service.map(str::to_owned),
            operation: operation.map(str::to_owned),
        }))
    }

    fn flush(&self) -> TierResult<'_, u64> {
        Box::pin(self.invalidate(Invalidation::Flush))
    }
}
