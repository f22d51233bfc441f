//! The hot path: a POST whose body came whole with its head, a
//! byte-for-byte repeat the memo knows, answered from a fresh entry, on the
//! future's first poll, with no XML pass and nothing awaited. Everything
//! else is handed on to the full path.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request};

use super::{respond, Answer, PendingRequest, Reply, DEFAULT_SERVICE};
use crate::app::state::State;
use crate::cache::decision::{self, CacheUse, RequestFacts};
use crate::clock;
use crate::http::headers::RequestHeaders;
use crate::http::request_body::{self, BodySoFar};
use crate::ops::metrics::CacheResult;
use crate::policy::{rules_for, Service};

/// What can be decided about a request without waiting for anything.
pub(super) enum FastPath {
    /// A repeat answered from the cache: the hot path, start to end.
    Answered(Answer),
    /// Anything else, with what has been taken of its body.
    NotTaken(PendingRequest),
}

pub(super) fn try_answer(
    state: &State,
    request: Request<Incoming>,
    headers: &RequestHeaders,
    request_id: Option<&HeaderValue>,
) -> FastPath {
    let (parts, mut body) = request.into_parts();
    if parts.method != Method::POST {
        let taken = BodySoFar::Started(None);
        return FastPath::NotTaken(PendingRequest { parts, body, taken });
    }
    let taken = request_body::take_ready(&mut body, state.settings.max_body);
    let whole = match &taken {
        BodySoFar::Whole(whole) if !headers.multipart => whole,
        _ => return FastPath::NotTaken(PendingRequest { parts, body, taken }),
    };
    let policies = state.policies.load();
    let service = policies.route(parts.uri.path()).map(|s| &**s);
    let service_name = service.map_or(&*DEFAULT_SERVICE, |s| &s.name);
    let repeat = answer_repeat(
        state,
        service,
        service_name,
        &parts.headers,
        headers,
        whole,
        request_id,
    );
    match repeat {
        Some(answer) => FastPath::Answered(answer),
        None => FastPath::NotTaken(PendingRequest { parts, body, taken }),
    }
}

/// A byte-for-byte repeat of a request seen before, answered from a fresh
/// entry with no XML pass, when the cache decision allows a cached answer.
/// `None` sends the request down the full path. With a `request_id`, the
/// answer carries it.
pub(super) fn answer_repeat(
    state: &State,
    service: Option<&Service>,
    service_name: &Arc<str>,
    header_map: &HeaderMap,
    headers: &RequestHeaders,
    body: &Bytes,
    request_id: Option<&HeaderValue>,
) -> Option<Answer> {
    let record = state.memo.recall(service_name, body)?;
    let now = clock::now();
    // An expired repeat takes the full path, which refuses it.
    if record.expires.is_some_and(|at| at <= now) {
        return None;
    }
    let rules = rules_for(service, Some(&record.name));
    let facts = RequestFacts {
        directives: headers.directives,
        authorization: headers.authorization,
        cookie: headers.cookie,
        security_header: record.security_header,
        write_operation: record.write_operation,
    };
    // A refresh or a bypass takes the full path, which says why.
    if decision::for_request(rules, &facts) != CacheUse::Lookup {
        return None;
    }
    let memory = &state.cache.memory;
    let built;
    let (lookup, entry) = match &record.key {
        Some(key) if rules.vary_headers.is_empty() => {
            (key, memory.lookup_with_hint(key, &record.hint))
        }
        _ => {
            built = super::lookup_key(&record, header_map, rules);
            (&built, memory.lookup(&built))
        }
    };
    let entry = entry.filter(|e| e.is_fresh(now))?;
    let response = respond::from_entry(
        &entry,
        now,
        &respond::HIT,
        request_id,
        record.message_id.as_deref(),
    );
    record.hits.count();
    let response = respond::with_debug_key(state.settings.debug_headers, response, lookup);
    Some(Answer {
        reply: Reply::new(response, CacheResult::Hit),
        service: service_name.clone(),
        operation: Some(record.local_name.clone()),
    })
}
