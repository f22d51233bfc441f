//! The miss path: one request upstream, the answer inspected and stripped
//! of its addressed `CacheControl`, stored when `cache::decision` allows,
//! and the outcome handed to coalesced followers. A failing upstream is
//! answered from a stale entry when `stale_if_error` allows.

use std::sync::Arc;

use hyper::header;

use super::{forward, respond, Exchange, Reply};
use crate::cache::coalesce::FlightOutcome;
use crate::cache::decision::{self, ResponseFacts, Uncacheable};

use crate::cache::entry::{Entry, Times};
use crate::clock;
use crate::http::body;
use crate::http::client::FetchedBody;
use crate::http::headers::Directives;
use crate::key::lookup::LookupKey;
use crate::ops::metrics::CacheResult;
use crate::policy::Rules;
use crate::soap::control::{inspect_response, kept, splice};
use crate::soap::envelope::OperationElement;
use respond::Mark;

/// Fetches `lookup`'s answer and stores it when it may be; `stale` is the
/// entry the lookup found, expired, for `stale_if_error`.
pub(super) async fn fetch_and_store(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    lookup: &LookupKey,
    stale: Option<Entry>,
) -> (Reply, FlightOutcome) {
    let fetched = match forward::fetch(x, rules).await {
        Ok(fetched) => fetched,
        Err(e) => {
            if let Some(reply) = serve_stale(stale.as_ref(), x.message_id.as_deref()) {
                tracing::warn!(service = %x.service_name, "upstream failed, serving stale: {e}");
                return (reply, FlightOutcome::GiveUp);
            }
            let response = forward::upstream_failure(x, &e);
            let outcome = FlightOutcome::UpstreamFailed {
                status: response.status().as_u16(),
                message: Arc::from(e.to_string()),
            };
            return (Reply::error(response), outcome);
        }
    };
    let parts = fetched.parts;
    let bytes = match fetched.body {
        FetchedBody::Whole(bytes) => bytes,
        FetchedBody::Partial { head, rest } => {
            let mark = Mark::miss(Uncacheable::TooLarge);
            let response = respond::streamed(parts, head, rest, &rules.roles, mark);
            let reply =
                Reply::new(response, CacheResult::Miss).because(Some(Uncacheable::TooLarge));
            return (reply, FlightOutcome::GiveUp);
        }
    };
    let envelope = inspect_response(&bytes, &rules.roles);
    if parts.status.is_server_error() && !envelope.as_ref().is_some_and(|e| e.is_fault) {
        if let Some(reply) = serve_stale(stale.as_ref(), x.message_id.as_deref()) {
            tracing::warn!(service = %x.service_name, status = parts.status.as_u16(), "upstream error, serving stale");
            return (reply, FlightOutcome::GiveUp);
        }
    }
    let strip = envelope.as_ref().map_or(&[][..], |e| &e.strip[..]);
    let kept = kept(&bytes, strip);
    let facts = ResponseFacts {
        status: parts.status,
        envelope: envelope.as_ref(),
        directives: Directives::of(&parts.headers),
        stored_len: kept.iter().map(|piece| piece.len()).sum(),
        set_cookie: parts.headers.contains_key(header::SET_COOKIE),
    };
    let now = clock::now();
    let expires_at = match decision::storable(rules, &facts, now) {
        Ok(expires_at) => expires_at,
        Err(reason) => {
            let stripped = splice(&bytes, strip);
            let response = respond::whole(parts, body::full(stripped), Mark::miss(reason));
            let reply = Reply::new(response, CacheResult::Miss).because(Some(reason));
            return (reply, FlightOutcome::GiveUp);
        }
    };
    let control = envelope
        .as_ref()
        .and_then(|e| e.control.as_ref())
        .filter(|_| rules.honor_cache_control);
    let cache_key = control
        .and_then(|c| c.cache_key.as_deref())
        .filter(|k| !k.is_empty())
        .unwrap_or(&lookup.selector)
        .to_owned();
    // The entry is made from the pieces directly, and the answer sent from
    // it: no stripped copy in between.
    let times = Times {
        stored_at: now,
        expires_at,
        stale_if_error: rules.stale_if_error,
        stale_while_revalidate: rules.stale_while_revalidate,
    };
    let addressing = envelope
        .as_ref()
        .map(|e| e.addressing_after_strip())
        .unwrap_or_default();
    let content_type = parts.headers.get(header::CONTENT_TYPE);
    let entry = Entry::with_addressing(&kept, content_type, times, &addressing);
    x.state.cache.store(lookup, &cache_key, entry.clone()).await;
    tracing::debug!(service = %x.service_name, operation = %op.name, cache_key = %cache_key, "stored");
    let response = respond::whole(parts, body::shared(entry.shared_body()), Mark::MISS_STORED);
    (
        Reply::new(response, CacheResult::Miss),
        FlightOutcome::Stored(entry),
    )
}

fn serve_stale(stale: Option<&Entry>, message_id: Option<&str>) -> Option<Reply> {
    let now = clock::now();
    let entry = stale.filter(|e| e.is_usable_stale(now))?;
    let response = respond::from_entry(entry, now, &respond::STALE, None, message_id);
    Some(Reply::new(response, CacheResult::Stale))
}
