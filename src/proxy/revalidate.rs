//! `stale_while_revalidate` (reference §5.5): an entry that expired less
//! than the policy's window ago answers at once, and one request in the
//! background refreshes it, as Varnish's grace and nginx's
//! `proxy_cache_background_update` do: no requester waits for the service
//! because an entry happened to expire just before it asked.
//!
//! The refresh is an ordinary miss ([`miss::fetch_and_store`]) that holds
//! the key's coalescing flight, so there is one per lookup key, shared with
//! any miss for the same key, and requests that arrive while it runs are
//! answered from the stale entry without starting another. It runs on its
//! own task: a requester that hangs up does not cancel it. A refresh that
//! fails stores nothing, which leaves the entry as it was (and usable by
//! `stale_if_error`) until its windows end.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::Uri;

use super::{miss, Exchange};
use crate::app::state::State;
use crate::cache::coalesce::{Flight, FlightOutcome, Role};
use crate::clock;
use crate::key::lookup::LookupKey;
use crate::policy::rules_for;
use crate::soap::envelope::parse_request;
use crate::soap::SoapVersion;

/// Starts the background refresh of `lookup`'s entry, unless a request for
/// it is already on its way to the service (a refresh or a miss).
pub(super) fn start(x: &Exchange<'_>, lookup: &LookupKey) {
    let Role::Leader(flight) = x.state.flights.join(lookup) else {
        return;
    };
    // A refresh stores its entry before it ends its flight: one that ended
    // between this request's lookup and now left a fresh entry, which
    // needs no other refresh.
    let refreshed = x.state.cache.memory.lookup(lookup);
    if let Some(entry) = refreshed.filter(|e| e.is_fresh(clock::now())) {
        flight.finish(FlightOutcome::Stored(entry));
        return;
    }
    let refresh = Refresh {
        state: x.state.clone(),
        service_name: x.service_name.clone(),
        parts: x.parts.clone(),
        body: x.body.clone(),
        target: x.target.clone(),
        remote: x.remote,
        version: x.version,
        operation: x.operation.clone(),
        declared: x.declared,
        lookup: lookup.clone(),
    };
    tokio::spawn(refresh.run(flight));
}

/// What the refresh needs of the request that found the entry stale, owned
/// so that it outlives that request.
struct Refresh {
    state: Arc<State>,
    service_name: Arc<str>,
    parts: Parts,
    body: Bytes,
    target: Uri,
    remote: SocketAddr,
    version: SoapVersion,
    operation: Option<Arc<str>>,
    declared: bool,
    lookup: LookupKey,
}

impl Refresh {
    async fn run(self, flight: Flight<LookupKey>) {
        // The policies in force now: a reload since the request only makes
        // the refresh follow the new rules.
        let policies = self.state.policies.load_full();
        let service = policies.route(self.parts.uri.path()).map(|s| &**s);
        let Ok(envelope) = parse_request(&self.body) else {
            // The request parsed before it found the entry; this cannot
            // fail, and if it did there would be nothing to refresh.
            flight.finish(FlightOutcome::GiveUp);
            return;
        };
        let Some(op) = envelope.operation.as_ref() else {
            flight.finish(FlightOutcome::GiveUp);
            return;
        };
        let rules = rules_for(service, Some(&op.name));
        let x = Exchange {
            state: &self.state,
            service,
            service_name: self.service_name.clone(),
            parts: self.parts,
            body: self.body.clone(),
            target: self.target,
            remote: self.remote,
            version: self.version,
            operation: self.operation,
            declared: self.declared,
            expires: None,
            message_id: None,
        };
        // No stale entry for `stale_if_error`: nobody waits for this answer.
        let (reply, outcome) = miss::fetch_and_store(&x, op, rules, &self.lookup, None).await;
        if !matches!(outcome, FlightOutcome::Stored(_)) {
            tracing::warn!(
                service = %x.service_name,
                operation = x.operation.as_deref().unwrap_or("-"),
                status = reply.response.status().as_u16(),
                "background refresh stored nothing; the stale entry stays until its window ends"
            );
        }
        flight.finish(outcome);
    }
}
