//! The request path, top to bottom in [`handle`]. A repeat of a body seen
//! before is answered at once ([`fast_path`]: body → memo → decision →
//! lookup → hit). Everything else goes on asynchronously
//! ([`answer_in_full`]): route → read body → envelope → decision → key →
//! lookup → (hit | coalesced miss → upstream → inspect/strip/store) →
//! answer.
//!
//! Everything here combines plain data: the XML work is done by the pure
//! modules (`soap`, `key`), whether the cache may be used by
//! `cache::decision`, the cache itself by `cache`, the network by
//! `http::client`. The pieces: [`fast_path`] (the hit path), [`miss`]
//! (fetch, inspect, store), [`forward`] (everything that goes past the
//! cache) and [`respond`] (how answers are made).

pub mod dedup;
mod fast_path;
mod fleet;
mod forward;
mod miss;
pub(crate) mod queued;
pub mod respond;
mod results;
mod revalidate;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};
use smol_str::SmolStr;

use crate::app::state::State;
use crate::cache::coalesce::{self, FlightOutcome, Role, Waited};
use crate::cache::decision::{self, CacheUse, RequestFacts, Uncacheable};
use crate::cache::memo::MemoRecord;
use crate::cache::memory::EntryHint;
use crate::clock;
use crate::delivery::DeliveryMode;
use crate::http::body::Body;
use crate::http::client::UpstreamTime;
use crate::http::headers::{
    content_soap_version, is_multipart, new_request_id, pass_request_id, RequestHeaders,
    X_REQUEST_ID,
};
use crate::http::listener::Busy;
use crate::http::request_body::{self, BodySoFar, RequestBody};
use crate::key::lookup::{LookupKey, Scope};
use crate::ops::access_log;
use crate::ops::metrics::CacheResult;
use crate::policy::{rules_for, Rules, Service};
use crate::soap::envelope::{parse_request, OperationElement, RequestEnvelope};
use crate::soap::fault::{self, Fault};
use crate::soap::SoapVersion;
use fast_path::FastPath;
use respond::{COALESCED, HIT};

/// The service of requests no policy routes.
static DEFAULT_SERVICE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("default"));

/// How one request was answered, before it is counted and logged.
struct Reply {
    response: Response<Body>,
    result: CacheResult,
    /// Why a BYPASS did not use the cache, or a MISS was not stored.
    detail: Option<Uncacheable>,
    /// The id a queued message was accepted under.
    message_id: Option<String>,
}

impl Reply {
    fn new(response: Response<Body>, result: CacheResult) -> Reply {
        Reply {
            response,
            result,
            detail: None,
            message_id: None,
        }
    }

    fn error(response: Response<Body>) -> Reply {
        Reply::new(response, CacheResult::Error)
    }

    fn because(mut self, reason: Option<Uncacheable>) -> Reply {
        self.detail = reason;
        self
    }
}

/// A request's answer, and what its access log line and metrics say of it.
struct Answer {
    reply: Reply,
    service: Arc<str>,
    operation: Option<Arc<str>>,
}

/// One request on its way through the full path: everything the later
/// steps need.
struct Exchange<'a> {
    /// Owned by reference counting, so that work that outlives the request
    /// (a background refresh) can hold it.
    state: &'a Arc<State>,
    service: Option<&'a Service>,
    service_name: Arc<str>,
    parts: Parts,
    body: Bytes,
    target: Uri,
    remote: SocketAddr,
    version: SoapVersion,
    operation: Option<Arc<str>>,
    /// The operation is named in the service's policy.
    declared: bool,
    /// `wsu:Expires`, when the request has one (it has not passed).
    expires: Option<std::time::SystemTime>,
    /// The request's WS-Addressing `MessageID`: what a stored answer
    /// relates to when it answers this request.
    message_id: Option<Arc<str>>,
}

/// Answers one request. Never fails: every error becomes an HTTP answer.
///
/// A repeat is answered on the future's first poll, without waiting on
/// anything ([`fast_path::try_answer`]). Everything else goes down the
/// boxed async path ([`answer_in_full`]): hyper moves the future it is
/// given into its connection state, and a hit should not pay for moving
/// the full path's larger state nor for its generator's machinery.
pub fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
    remote: SocketAddr,
    busy: Busy,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    let logged = access_log::enabled();
    let mut headers = RequestHeaders::of(request.headers());
    // The requester's id, or one made when the access log is on: an id
    // that is written nowhere is not worth its cost on every hit.
    let request_id = headers
        .request_id
        .take()
        .or_else(|| logged.then(new_request_id));
    // Taken only when the access log is on: on a hit, even a clock read or
    // a clone counts.
    let line = logged.then(|| RequestLine {
        started: Instant::now(),
        method: request.method().clone(),
        uri: request.uri().clone(),
    });
    let answering = Answering {
        request_id,
        line,
        answered: false,
        _busy: busy,
    };
    // hyper calls this before it has read the body: the fast path waits
    // for the future's first poll, when a body sent with its head is there.
    async move {
        let request_id = answering.request_id.as_ref();
        let answer = match fast_path::try_answer(&state, request, &headers, request_id) {
            FastPath::Answered(answer) => answer,
            FastPath::NotTaken(pending) => {
                let request_id = answering.request_id.clone();
                let mut answer =
                    Box::pin(answer_in_full(&state, pending, request_id.as_ref(), remote)).await;
                // Both ways, the answer goes back with the request's id.
                if let Some(id) = request_id {
                    answer.reply.response.headers_mut().insert(X_REQUEST_ID, id);
                }
                answer
            }
        };
        Ok(answering.finish(&state, answer))
    }
}

/// What the access log line says of a request, taken before the request
/// is consumed.
struct RequestLine {
    started: Instant,
    method: Method,
    uri: Uri,
}

/// A request being answered. Dropped unanswered, it logs the request as
/// abandoned by its requester (hyper then drops the request's future): it
/// would leave no trace otherwise. Status 499 as nginx logs it.
struct Answering {
    request_id: Option<HeaderValue>,
    line: Option<RequestLine>,
    answered: bool,
    /// The connection is not idle while the request is being answered.
    _busy: Busy,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let Some(line) = self.line.as_ref().filter(|_| !self.answered) else {
            return;
        };
        access_log::write(&access_log::Line {
            message: "request abandoned by the requester",
            request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            method: line.method.as_str(),
            path: line.uri.path(),
            service: None,
            operation: None,
            result: "abandoned",
            detail: None,
            status: 499,
            upstream_micros: None,
            total_micros: line.started.elapsed().as_micros() as u64,
            bytes: None,
            message_id: None,
            attempt: None,
        });
    }
}

impl Answering {
    /// Records and logs an answer, and hands the response out.
    fn finish(mut self, state: &State, answer: Answer) -> Response<Body> {
        let Answer {
            reply,
            service,
            operation,
        } = answer;
        self.answered = true;
        let response = reply.response;
        let upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
        if let Some(took) = upstream {
            state.metrics.upstream_duration(took);
        }
        if let Some(line) = &self.line {
            access_log::write(&access_log::Line {
                message: "request",
                request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
                method: line.method.as_str(),
                path: line.uri.path(),
                service: Some(&service),
                operation: Some(operation.as_deref().unwrap_or("-")),
                result: reply.result.label(),
                detail: reply.detail.map(Uncacheable::label),
                status: response.status().as_u16(),
                upstream_micros: upstream.map(|t| t.as_micros() as u64),
                total_micros: line.started.elapsed().as_micros() as u64,
                bytes: hyper::body::Body::size_hint(response.body()).exact(),
                message_id: reply.message_id.as_deref(),
                attempt: None,
            });
        }
        response
    }
}

/// A request the fast path did not answer, with what it took of its body.
struct PendingRequest {
    parts: Parts,
    body: Incoming,
    taken: BodySoFar,
}

/// Every request the fast path did not answer: routed, its body read,
/// then passed through, forwarded, or parsed and answered by its policy.
async fn answer_in_full(
    state: &Arc<State>,
    pending: PendingRequest,
    request_id: Option<&HeaderValue>,
    remote: SocketAddr,
) -> Answer {
    let PendingRequest {
        mut parts,
        body,
        taken,
    } = pending;
    let policies = state.policies.load();
    let service = policies.route(parts.uri.path()).map(|s| &**s);
    let service_name: Arc<str> =
        service.map_or_else(|| DEFAULT_SERVICE.clone(), |s| s.name.clone());
    let content_soap = content_soap_version(&parts.headers);
    let answer = |reply: Reply, operation: Option<Arc<str>>, declared: bool| {
        let result = reply.result;
        state
            .metrics
            .record(&service_name, operation.as_deref(), declared, result);
        Answer {
            reply,
            service: service_name.clone(),
            operation,
        }
    };
    let target = |parts: &Parts| forward::target(state, service, &parts.uri);
    // A request with nowhere to go: 502.
    let no_target = |e: crate::http::client::TargetError| {
        let version = fault::content_version(content_soap);
        let response = respond::receiver_fault(version, StatusCode::BAD_GATEWAY, &e.to_string());
        answer(Reply::error(response), None, false)
    };

    // soapcache's own path, ahead of every route (reference §12).
    if let Some(id) = parts.uri.path().strip_prefix(results::PREFIX) {
        let reply = results::fetch(state, &parts, id).await;
        return answer(reply, None, false);
    }
    // Non-POST requests (GET ?wsdl, ...) stream through untouched.
    if parts.method != Method::POST {
        let target = match target(&parts) {
            Ok(target) => target,
            Err(e) => return no_target(e),
        };
        pass_request_id(&mut parts.headers, request_id);
        let request = Request::from_parts(parts, body);
        let reply = forward::pass_through(state, request, target, remote, content_soap).await;
        return answer(reply, None, false);
    }

    // A whole body came through the fast path, which asked the memo (a
    // multipart one is forwarded below before the memo is asked).
    let asked_memo = matches!(taken, BodySoFar::Whole(_));
    let limits = state.settings.client_limits;
    let read = match taken {
        BodySoFar::Whole(whole) => Ok(RequestBody::Whole(whole)),
        BodySoFar::Failed(e) => Err(request_body::BodyError::Unreadable(e)),
        BodySoFar::Started(first) => {
            let max_body = state.settings.max_body;
            request_body::read(body, first, &parts.headers, max_body, limits.timeout).await
        }
    };
    let body = match read {
        Ok(RequestBody::Whole(body)) if !is_multipart(&parts.headers) => body,
        Ok(body) => {
            let target = match target(&parts) {
                Ok(target) => target,
                Err(e) => return no_target(e),
            };
            pass_request_id(&mut parts.headers, request_id);
            let (reply, operation) =
                forward::uncached(state, service, &parts, body, target, remote, content_soap).await;
            return answer(reply, operation, false);
        }
        Err(e) => {
            let response = respond::body_fault(&e, content_soap);
            return answer(Reply::error(response), None, false);
        }
    };
    if !asked_memo {
        let headers = RequestHeaders::of(&parts.headers);
        if let Some(answer) = fast_path::answer_repeat(
            state,
            service,
            &service_name,
            &parts.headers,
            &headers,
            &body,
            None,
        ) {
            return answer;
        }
    }
    pass_request_id(&mut parts.headers, request_id);
    let target = match target(&parts) {
        Ok(target) => target,
        Err(e) => return no_target(e),
    };
    let envelope = match parse_request(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            let reason = format!("not an acceptable SOAP message: {e}");
            let fault = fault::bad_request(e.version, content_soap, &reason);
            return answer(Reply::error(respond::fault_response(&fault)), None, false);
        }
    };
    let expires = match expiry(&envelope) {
        Ok(expires) => expires,
        Err(fault) => return answer(Reply::error(respond::fault_response(&fault)), None, false),
    };

    let operation = envelope
        .operation
        .as_ref()
        .map(|op| Arc::from(op.name.local.as_str()));
    let declared = envelope
        .operation
        .as_ref()
        .is_some_and(|op| service.is_some_and(|s| s.operation(&op.name).is_some()));
    let exchange = Exchange {
        state,
        service,
        service_name: service_name.clone(),
        parts,
        body: body.clone(),
        target,
        remote,
        version: envelope.version,
        operation: operation.clone(),
        declared,
        expires,
        message_id: envelope.addressing.message_id.as_deref().map(Arc::from),
    };
    let reply = answer_soap(&exchange, &envelope).await;
    answer(reply, operation, declared)
}

/// When the request's `wsu:Timestamp/wsu:Expires` says it expires; the
/// fault that refuses it when that has passed, or cannot be read (a
/// deadline that cannot be checked is not ignored: reference §11.2).
pub fn expiry(envelope: &RequestEnvelope<'_>) -> Result<Option<std::time::SystemTime>, Fault> {
    let Some(text) = envelope.addressing.expires.as_deref() else {
        return Ok(None);
    };
    let Some(at) = crate::cache::lifetime::parse_date_time(text) else {
        let reason = format!("wsu:Expires '{text}' is not an xsd:dateTime");
        return Err(fault::bad_request(Some(envelope.version), None, &reason));
    };
    if at <= clock::now() {
        tracing::info!(expires = text, "expired message refused");
        return Err(fault::message_expired(envelope.version, text));
    }
    Ok(Some(at))
}

/// The cache decision for a well-formed SOAP request, and what follows it.
async fn answer_soap(x: &Exchange<'_>, envelope: &RequestEnvelope<'_>) -> Reply {
    let Some(op) = envelope.operation.as_ref() else {
        return forward::bypass(x, None, Uncacheable::NoOperation).await;
    };
    let rules = rules_for(x.service, Some(&op.name));
    if rules.delivery == DeliveryMode::Queued {
        return queued::accept(x.queued(&envelope.addressing), op, rules).await;
    }
    if !rules.dedup.is_zero() {
        match dedup::message_id(&envelope.addressing, rules, op) {
            Ok(Some(id)) => return dedup::direct(x, op, rules, id, &envelope.addressing).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(service = %x.service_name, "message_id cannot be evaluated: {e}")
            }
        }
    }
    let facts = RequestFacts::of(
        &x.parts.headers,
        envelope.has_security_header,
        x.service.and_then(|s| s.invalidation(&op.name)).is_some(),
    );
    let refresh = match decision::for_request(rules, &facts) {
        CacheUse::Bypass(reason) => return forward::bypass(x, Some(op), reason).await,
        CacheUse::Refresh => true,
        CacheUse::Lookup => false,
    };
    let Some(selector) = select_key(x, op) else {
        return forward::bypass(x, Some(op), Uncacheable::KeyFailed).await;
    };
    let mut record = MemoRecord {
        service: x.service_name.clone(),
        version: x.version,
        name: op.name.clone(),
        local_name: x
            .operation
            .clone()
            .unwrap_or_else(|| Arc::from(op.name.local.as_str())),
        operation: Arc::from(op.name.to_string()),
        selector,
        security_header: facts.security_header,
        write_operation: facts.write_operation,
        expires: x.expires,
        message_id: x.message_id.clone(),
        hits: x.state.metrics.counter(
            &x.service_name,
            Some(&op.name.local),
            x.declared,
            CacheResult::Hit,
        ),
        key: None,
        hint: EntryHint::default(),
    };
    let lookup = lookup_key(&record, &x.parts.headers, rules);
    record.key = rules.vary_headers.is_empty().then(|| lookup.clone());
    let reply = answer_by_key(x, op, rules, &lookup, refresh).await;
    // Only a body answered from the cache is remembered: a proven repeat.
    // Bodies seen once (a cache filling up, keys never asked again) would
    // otherwise fill the memo, at the cost of their size again each.
    if reply.result == CacheResult::Hit {
        x.state.memo.remember(&x.body, record);
    }
    let response = respond::with_debug_key(x.state.settings.debug_headers, reply.response, &lookup);
    Reply { response, ..reply }
}

/// Hit, coalesced wait or fetch, for a request that has a lookup key.
async fn answer_by_key(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    lookup: &LookupKey,
    refresh: bool,
) -> Reply {
    let now = clock::now();
    let cached = x.state.cache.memory.lookup(lookup);
    if refresh {
        // Forward, and let the answer refresh the entry.
        return miss::fetch_and_store(x, op, rules, lookup, cached).await.0;
    }
    if let Some(entry) = cached.as_ref().filter(|e| e.is_fresh(now)) {
        return Reply::new(
            respond::from_entry(entry, now, &HIT, None, x.message_id.as_deref()),
            CacheResult::Hit,
        );
    }
    if let Some(entry) = cached.as_ref().filter(|e| e.is_revalidatable(now)) {
        revalidate::start(x, lookup);
        let response = respond::from_entry(
            entry,
            now,
            &respond::REVALIDATING,
            None,
            x.message_id.as_deref(),
        );
        return Reply::new(response, CacheResult::Stale);
    }

    match x.state.flights.join(lookup) {
        Role::Leader(flight) => {
            let (reply, outcome) = fleet::fetch_once(x, op, rules, lookup, cached).await;
            flight.finish(outcome);
            reply
        }
        Role::Overloaded => {
            let reason = format!(
                "more than {} identical requests are already waiting for the service",
                coalesce::MAX_WAITERS
            );
            Reply::error(respond::unavailable(x.version, &reason, 1))
        }
        Role::Follower(waiter) => {
            x.state.metrics.coalesced();
            let patience = x.state.settings.upstream_timeout + Duration::from_secs(1);
            match coalesce::wait(waiter, patience).await {
                Waited::Done(FlightOutcome::Stored(entry)) => {
                    let response = respond::from_entry(
                        &entry,
                        clock::now(),
                        &COALESCED,
                        None,
                        x.message_id.as_deref(),
                    );
                    Reply::new(response, CacheResult::Hit)
                }
                Waited::Done(FlightOutcome::UpstreamFailed { status, message }) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    Reply::error(respond::receiver_fault(x.version, status, &message))
                }
                // Not shareable, leader gone or too slow: fetch our own.
                _ => miss::fetch_and_store(x, op, rules, lookup, cached).await.0,
            }
        }
    }
}

/// The request's selector value: the policy's `key` expressions, or the
/// digest of the operation element. `None` when it cannot be evaluated on
/// this request (then the request is forwarded).
fn select_key(x: &Exchange<'_>, op: &OperationElement<'_>) -> Option<SmolStr> {
    let policy_key = x
        .service
        .and_then(|s| s.operation(&op.name))
        .and_then(|o| o.key.as_ref());
    crate::key::selector_value(policy_key, op)
        .map_err(|e| tracing::warn!("{e}"))
        .ok()
}

/// `(service, operation, selector value, vary values)`, scoped by SOAP
/// version too.
fn lookup_key(record: &MemoRecord, headers: &hyper::HeaderMap, rules: &Rules) -> LookupKey {
    LookupKey {
        scope: Arc::new(Scope::of(
            record.service.clone(),
            record.operation.clone(),
            record.version,
            headers,
            &rules.vary_headers,
        )),
        selector: record.selector.clone(),
    }
}
