//! A local miss with a shared tier: the fleet's entry if another instance
//! stored it, else one request upstream for the whole fleet
//! (`cache::shared::lock`). Without a shared tier, or with Redis down, a
//! plain fetch.

use super::{miss, respond, Exchange, Reply};
use crate::cache::coalesce::FlightOutcome;
use crate::cache::entry::Entry;
use crate::cache::shared::lock::{Claim, SharedEntry};
use crate::clock;
use crate::key::lookup::LookupKey;
use crate::ops::metrics::CacheResult;
use crate::policy::Rules;
use crate::soap::envelope::OperationElement;

/// The local flight leader's answer for `lookup`; `cached` is the memory
/// tier's expired entry, if any.
pub(super) async fn fetch_once(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    lookup: &LookupKey,
    cached: Option<Entry>,
) -> (Reply, FlightOutcome) {
    let Some(shared) = &x.state.shared else {
        return miss::fetch_and_store(x, op, rules, lookup, cached).await;
    };
    match shared.claim(lookup).await {
        Claim::Fresh(found) => from_fleet(x, lookup, found),
        Claim::Leader { lock, stale } => {
            let fetched = miss::fetch_and_store(x, op, rules, lookup, cached.or(stale)).await;
            // Stored in Redis by now, or not storable: either way the
            // waiting instances may go on.
            lock.release().await;
            fetched
        }
        Claim::Held { stale } => match shared.wait_for(lookup).await {
            Some(found) => from_fleet(x, lookup, found),
            None => miss::fetch_and_store(x, op, rules, lookup, cached.or(stale)).await,
        },
        Claim::Unavailable => miss::fetch_and_store(x, op, rules, lookup, cached).await,
    }
}

/// Answers from an entry another instance stored, and keeps it locally.
fn from_fleet(x: &Exchange<'_>, lookup: &LookupKey, found: SharedEntry) -> (Reply, FlightOutcome) {
    let SharedEntry { cache_key, entry } = found;
    x.state
        .cache
        .memory
        .insert(lookup, &cache_key, entry.clone());
    let response = respond::from_entry(
        &entry,
        clock::now(),
        &respond::SHARED,
        None,
        x.message_id.as_deref(),
    );
    (
        Reply::new(response, CacheResult::Hit),
        FlightOutcome::Stored(entry),
    )
}
