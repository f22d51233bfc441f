//! Keys of recently seen request bodies.
//!
//! Most repeat requests repeat byte for byte. For those, the envelope pass
//! and the key selection would compute again what they computed before, and
//! on a hit those two XML passes are most of soapcache's own work. The memo
//! remembers, per service, what a body decided: its SOAP version, operation
//! and selector value. Entries are found by the body bytes themselves (hash,
//! then a full comparison), so a hash collision can never hand one request
//! another's key. Everything a request's *headers* decide (credentials,
//! `Cache-Control`, vary values) is still checked on every request.
//!
//! The memo is forgotten whenever policies are reloaded: a selector value
//! is only valid for the policy that computed it.

use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;
use smol_str::SmolStr;

use crate::cache::memory::EntryHint;
use crate::key::lookup::LookupKey;
use crate::ops::metrics::RequestCounter;
use crate::soap::SoapVersion;
use crate::xml::ExpandedName;

/// Bodies larger than this are not remembered: repeats of large requests
/// are rare and each would cost its size again in memory.
const MAX_BODY: usize = 16 * 1024;

/// What a cacheable request's body decided.
#[derive(Debug)]
pub struct MemoRecord {
    /// The service whose policy decided it: the memo is keyed by the body
    /// alone, so that a lookup borrows the body instead of building a key.
    pub service: Arc<str>,
    pub version: SoapVersion,
    pub name: ExpandedName,
    /// `name.local`, shared: a hit reports it (access log, metrics)
    /// without copying it.
    pub local_name: Arc<str>,
    /// `{namespace}local`, as the store's scope holds it.
    pub operation: Arc<str>,
    pub selector: SmolStr,
    /// What the body says that the cache decision needs: a WS-Security
    /// header, and whether the operation is a write.
    pub security_header: bool,
    pub write_operation: bool,
    /// The body's `wsu:Expires`: past it, a repeat is refused, not answered.
    pub expires: Option<std::time::SystemTime>,
    /// The body's WS-Addressing `MessageID` (a repeat byte for byte has the
    /// same): what a stored answer is made to relate to on a hit.
    pub message_id: Option<Arc<str>>,
    /// The metric counters a hit of this request increments.
    pub hits: RequestCounter,
    /// The whole lookup key, when the operation varies by no header: a
    /// repeat then needs not even build it.
    pub key: Option<LookupKey>,
    /// The entry `key` led to last time.
    pub hint: EntryHint,
}

/// The memo is read on every request, hits included, so it is a
/// quick_cache and not a moka cache like the store: a read takes a shard's
/// read lock and sets a bit, where moka's also reads the clock and queues
/// the access for its housekeeping: about twice the cost (`cargo bench
/// --bench hot_path -- memo_recall`; figures in docs/PERFORMANCE.md).
#[derive(Clone)]
pub struct Memo {
    seen: Arc<Cache<Bytes, Arc<MemoRecord>, Weight, crate::key::lookup::Hasher>>,
}

/// A record's cost: the body it is found by, and what it holds.
#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Bytes, Arc<MemoRecord>> for Weight {
    fn weight(&self, body: &Bytes, record: &Arc<MemoRecord>) -> u64 {
        (body.len() + record.selector.len() + record.operation.len() + 128) as u64
    }
}

impl Memo {
    /// A memo holding at most about `max_bytes` of bodies.
    pub fn new(max_bytes: u64) -> Memo {
        let seen = Cache::with(
            usize::try_from(max_bytes / 1024).unwrap_or(usize::MAX),
            max_bytes,
            Weight,
            crate::key::lookup::Hasher::default(),
            Default::default(),
        );
        Memo {
            seen: Arc::new(seen),
        }
    }

    pub fn recall(&self, service: &Arc<str>, body: &Bytes) -> Option<Arc<MemoRecord>> {
        if body.len() > MAX_BODY {
            return None;
        }
        // Two services sent the same bytes: the later one's record
        // replaced the earlier's, and is not this service's answer.
        self.seen
            .get(&body[..])
            .filter(|record| record.service == *service)
    }

    pub fn remember(&self, body: &Bytes, record: MemoRecord) {
        if body.len() > MAX_BODY {
            return;
        }
        // A copy: `body` may be a slice of a larger connection buffer,
        // which the memo must not keep alive.
        self.seen
            .insert(Bytes::copy_from_slice(body), Arc::new(record));
    }

    /// How many bodies are remembered, and their weight in bytes.
    pub fn size(&self) -> (u64, u64) {
        (self.seen.len() as u64, self.seen.weight())
    }

    pub fn forget_all(&self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: &str, selector: &str) -> MemoRecord {
        MemoRecord {
            service: service.into(),
            version: SoapVersion::V11,
            name: ExpandedName {
                namespace: "urn:c".into(),
                local: "Price".into(),
            },
            local_name: "Price".into(),
            operation: "{urn:c}Price".into(),
            selector: selector.into(),
            security_header: false,
            write_operation: false,
            expires: None,
            message_id: None,
            hits: crate::ops::metrics::Metrics::new().counter(
                "s",
                None,
                false,
                crate::ops::metrics::CacheResult::Hit,
            ),
            key: None,
            hint: EntryHint::default(),
        }
    }

    #[test]
    fn only_the_same_bytes_for_the_same_service_are_recalled() {
        let memo = Memo::new(1 << 20);
        let service: Arc<str> = "catalog".into();
        let body = Bytes::from_static(b"<Envelope>one</Envelope>");
        memo.remember(&body, record("catalog", "k1"));
        assert_eq!(memo.recall(&service, &body).unwrap().selector, "k1");
        assert!(memo
            .recall(&service, &Bytes::from_static(b"<Envelope>two</Envelope>"))
            .is_none());
        assert!(memo.recall(&"other".into(), &body).is_none());
        // The same bytes sent to another service: its own record.
        memo.remember(&body, record("other", "k2"));
        assert_eq!(memo.recall(&"other".into(), &body).unwrap().selector, "k2");
        assert!(memo.recall(&service, &body).is_none());
        memo.forget_all();
        assert!(memo.recall(&service, &body).is_none());
    }

    #[test]
    fn the_memo_stays_within_its_bytes() {
        let memo = Memo::new(1 << 20);
        for i in 0..5000 {
            let body = Bytes::from(format!("<Envelope>{i:01000}</Envelope>"));
            memo.remember(&body, record("s", "k"));
        }
        assert!(memo.seen.weight() <= 1 << 20, "{}", memo.seen.weight());
        assert!(
            memo.seen.len() > 500,
            "it still remembers: {}",
            memo.seen.len()
        );
    }

    #[test]
    fn large_bodies_are_not_remembered() {
        let memo = Memo::new(1 << 20);
        let service: Arc<str> = "s".into();
        let body = Bytes::from(vec![b'x'; MAX_BODY + 1]);
        memo.remember(&body, record("s", "k"));
        assert!(memo.recall(&service, &body).is_none());
    }
}
