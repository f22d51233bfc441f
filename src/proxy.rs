//! The request path, top to bottom in [`handle`]. A repeat of a body seen
//! before is answered at once ([`first_look`]: body → memo → lookup →
//! hit). Everything else goes on asynchronously ([`answer_later`]): route
//! → read body → envelope → cacheability → key → lookup → (hit |
//! coalesced miss → upstream → inspect/strip/store) → answer.
//!
//! Everything here is plain data flowing one way; the XML work is done by
//! the pure modules (`envelope`, `selector`, `canonical`, `control`,
//! `lifetime`), the cache by `store`, the network by `upstream`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};
use smol_str::SmolStr;

use crate::access_log;
use crate::body::{self, Body};
use crate::coalesce::{self, Coalescer, Role, Waited};
use crate::control::{addressed_blocks_in_head, inspect_response, kept, splice};
use crate::envelope::{
    multipart_root, parse_request, parse_request_head, OperationElement, RequestEnvelope,
    SoapVersion,
};
use crate::fault::{self, Culprit, Fault};
use crate::lifetime;
use crate::listener::Busy;
use crate::memo::{Known, Memo};
use crate::metrics::{Metrics, Outcome};
use crate::policy::{PolicySet, Rules, Service};
use crate::store::{owned, Entry, LookupKey, Scope, Shortcut, Store};
use crate::upstream::{self, FetchedBody, Upstream, UpstreamError, UpstreamTime};
use crate::{canonical, clock};

/// Responses are read whole up to this size (or the operation's
/// `max_entry_size`, when larger) so their `CacheControl` can be stripped;
/// larger ones stream through.
const RESPONSE_BUFFER: usize = 8 << 20;

static DEFAULT_RULES: LazyLock<Rules> = LazyLock::new(Rules::default);
static DEFAULT_SERVICE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("default"));

/// Settings `serve` and `demo` start the proxy with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_upstream: Option<Uri>,
    /// Where policies were loaded from, for reloads.
    pub policy_path: Option<std::path::PathBuf>,
    pub cache_size: u64,
    pub max_body: u64,
    pub upstream_timeout: Duration,
    /// Add `X-Cache-Key` (the request's selector value) to SOAP answers.
    pub debug_headers: bool,
    /// A private CA for `https://` upstreams, besides the system roots.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Requesters must send head and body within this time, and keep at
    /// most `max_connections` open.
    pub client_limits: crate::listener::ClientLimits,
}

/// State shared by every connection: the policy set (swapped whole on
/// reload), the cache, flights in progress, the upstream client, metrics.
pub struct Shared {
    pub policies: ArcSwap<PolicySet>,
    pub store: Store,
    pub memo: Memo,
    pub metrics: Metrics,
    flights: Coalescer<LookupKey>,
    upstream: Upstream,
    settings: Settings,
}

impl Shared {
    pub fn new(settings: Settings, policies: PolicySet) -> Result<Arc<Shared>, String> {
        let tls = crate::tls::client_config(settings.upstream_ca.as_deref())?;
        Ok(Arc::new(Shared {
            policies: ArcSwap::from_pointee(policies),
            store: Store::new(settings.cache_size),
            memo: Memo::new((settings.cache_size / 16).clamp(1 << 20, 64 << 20)),
            metrics: Metrics::new(),
            flights: Coalescer::default(),
            upstream: Upstream::new(settings.upstream_timeout, tls),
            settings,
        }))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Loads the policy set again and swaps it in whole; on any error the
    /// running set stays. Returns the new set's summary, or every problem.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let Some(path) = &self.settings.policy_path else {
            return Ok(Vec::new());
        };
        match PolicySet::load(path) {
            Ok(set) => {
                let summary = set.summary();
                self.policies.store(Arc::new(set));
                self.memo.forget_all();
                self.metrics.reloaded();
                tracing::info!(path = %path.display(), services = summary.len(), "policies reloaded");
                Ok(summary)
            }
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                for e in &errors {
                    tracing::error!("reload refused, keeping the running policies: {e}");
                }
                Err(errors)
            }
        }
    }
}

/// What the requester asked of the cache with `Cache-Control`.
#[derive(Debug, Default, Clone, Copy)]
struct Directives {
    no_cache: bool,
    no_store: bool,
    private: bool,
}

impl Directives {
    /// Adds what one `Cache-Control` value says.
    fn read(&mut self, value: &HeaderValue) {
        for directive in value.to_str().unwrap_or_default().split(',') {
            let name = directive.split('=').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case("private") {
                self.private = true;
            }
        }
    }
}

fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    for value in headers.get_all(header::CACHE_CONTROL) {
        d.read(value);
    }
    d
}

/// What a request's headers say that its first look needs, read in one
/// pass over them: looking each header up by name hashes the name, and a
/// repeat asked four of them.
#[derive(Debug, Default)]
struct Asked {
    /// The requester's `X-Request-ID` (its first).
    request_id: Option<HeaderValue>,
    /// Whether the (first) `Content-Type` is `multipart/…`.
    multipart: bool,
    requester: Directives,
    authorization: bool,
}

impl Asked {
    fn of(headers: &HeaderMap) -> Asked {
        let mut asked = Asked::default();
        let mut content_type_seen = false;
        for (name, value) in headers {
            if *name == header::CONTENT_TYPE {
                if !content_type_seen {
                    asked.multipart = value_starts_with(value, "multipart/");
                    content_type_seen = true;
                }
            } else if *name == header::CACHE_CONTROL {
                asked.requester.read(value);
            } else if *name == header::AUTHORIZATION {
                asked.authorization = true;
            } else if *name == X_REQUEST_ID && asked.request_id.is_none() {
                asked.request_id = Some(value.clone());
            }
        }
        asked
    }
}

/// One request on its way through: everything the later steps need.
struct Exchange<'a> {
    shared: &'a Shared,
    service: Option<&'a Service>,
    service_name: Arc<str>,
    parts: Parts,
    body: Bytes,
    target: Uri,
    remote: SocketAddr,
    version: SoapVersion,
    operation: Option<Arc<str>>,
    declared: bool,
}

/// Answers one request. Never fails: every error becomes an HTTP answer.
///
/// A repeat is answered on the future's first poll, without waiting on
/// anything ([`first_look`]). Everything else goes down the boxed async
/// path ([`answer_later`]). hyper moves the future it is given into its
/// connection state: with both paths inline it was 1464 bytes, and a hit
/// paid for moving it and for the generator's machinery.
pub fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    remote: SocketAddr,
    busy: Busy,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    let logged = access_log::enabled();
    let mut asked = Asked::of(request.headers());
    // The requester's id, or one made when the access log is on: an id
    // that is written nowhere is not worth its cost on every hit.
    let request_id = asked
        .request_id
        .take()
        .or_else(|| logged.then(new_request_id));
    // Taken only when the access log is on: on a hit, even a clock read or
    // a clone counts.
    let seen = logged.then(|| Seen {
        started: Instant::now(),
        method: request.method().clone(),
        uri: request.uri().clone(),
    });
    let answering = Answering {
        request_id,
        seen,
        answered: false,
        _busy: busy,
    };
    // hyper calls this before it has read the body: the first look waits
    // for the future's first poll, when a body sent with its head is there.
    async move {
        // Both ways, the answer goes back with the request's id.
        let answer = match first_look(&shared, request, &asked, answering.request_id.as_ref()) {
            FirstLook::Answered(answer) => answer,
            FirstLook::Later(later) => {
                let request_id = answering.request_id.clone();
                let mut answer =
                    Box::pin(answer_later(&shared, later, request_id.as_ref(), remote)).await;
                if let Some(id) = request_id {
                    answer.0.headers_mut().insert(X_REQUEST_ID, id);
                }
                answer
            }
        };
        Ok(answering.finish(&shared, answer))
    }
}

/// A request's answer, and what its access log line and metrics say of it.
type Answer = (Response<Body>, Arc<str>, Option<Arc<str>>, Outcome);

/// What the access log line says of a request, taken before the request
/// is consumed.
struct Seen {
    started: Instant,
    method: Method,
    uri: Uri,
}

/// A request being answered. Dropped unanswered, it logs the request as
/// abandoned by its requester (hyper then drops the request's future): it
/// would leave no trace otherwise. Status 499 as nginx logs it.
struct Answering {
    request_id: Option<HeaderValue>,
    seen: Option<Seen>,
    answered: bool,
    /// The connection is not idle while the request is being answered.
    _busy: Busy,
}

impl Drop for Answering {
    fn drop(&mut self) {
        let Some(seen) = self.seen.as_ref().filter(|_| !self.answered) else {
            return;
        };
        access_log::write(&access_log::Line {
            message: "request abandoned by the requester",
            request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
            method: seen.method.as_str(),
            path: seen.uri.path(),
            service: None,
            operation: None,
            result: "abandoned",
            status: 499,
            upstream_micros: None,
            total_micros: seen.started.elapsed().as_micros() as u64,
            bytes: None,
        });
    }
}

impl Answering {
    /// Records and logs an answer, and hands the response out.
    fn finish(mut self, shared: &Shared, answer: Answer) -> Response<Body> {
        let (response, service, operation, outcome) = answer;
        self.answered = true;
        let upstream = response.extensions().get::<UpstreamTime>().map(|t| t.0);
        if let Some(took) = upstream {
            shared.metrics.upstream_duration(took);
        }
        if let Some(seen) = &self.seen {
            access_log::write(&access_log::Line {
                message: "request",
                request_id: self.request_id.as_ref().and_then(|id| id.to_str().ok()),
                method: seen.method.as_str(),
                path: seen.uri.path(),
                service: Some(&service),
                operation: Some(operation.as_deref().unwrap_or("-")),
                result: outcome.label(),
                status: response.status().as_u16(),
                upstream_micros: upstream.map(|t| t.as_micros() as u64),
                total_micros: seen.started.elapsed().as_micros() as u64,
                bytes: hyper::body::Body::size_hint(response.body()).exact(),
            });
        }
        response
    }
}

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
const CACHE_STATUS: header::HeaderName = header::HeaderName::from_static("cache-status");

/// A new request id: a process prefix and a counter, in hex.
fn new_request_id() -> HeaderValue {
    static PREFIX: LazyLock<[u8; 8]> = LazyLock::new(|| {
        let seed = format!("{}-{:?}", std::process::id(), SystemTime::now());
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&blake3::hash(seed.as_bytes()).to_hex().as_bytes()[..8]);
        prefix
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // `prefix-counter`, written into a stack buffer without `format!`:
    // with the access log on, every request makes one.
    let mut id = [0u8; 8 + 1 + 16];
    id[..8].copy_from_slice(&*PREFIX);
    id[8] = b'-';
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, slot) in id[9..9 + digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    HeaderValue::from_bytes(&id[..9 + digits]).unwrap_or(HeaderValue::from_static("-"))
}

/// Adds the request id to a request going upstream, when the requester
/// sent none (a hit never needs it).
fn pass_request_id(headers: &mut HeaderMap, request_id: Option<&HeaderValue>) {
    if let Some(id) = request_id {
        headers.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
    }
}

/// What can be decided about a request without waiting for anything.
enum FirstLook {
    /// A repeat answered from the cache: the hot path, start to end.
    Answered(Answer),
    /// Anything else, with what has been taken of its body.
    Later(Later),
}

/// A request for [`answer_later`].
struct Later {
    parts: Parts,
    body: Incoming,
    /// What [`ready_body`] took of a POST's body; `Started(None)` when
    /// nothing was taken.
    taken: Ready,
}

/// The hot path: a POST whose body came whole with its head, a repeat the
/// memo knows, answered from a fresh entry. Everything else is handed on.
fn first_look(
    shared: &Shared,
    request: Request<Incoming>,
    asked: &Asked,
    request_id: Option<&HeaderValue>,
) -> FirstLook {
    let (parts, mut body) = request.into_parts();
    if parts.method != Method::POST {
        let taken = Ready::Started(None);
        return FirstLook::Later(Later { parts, body, taken });
    }
    let taken = ready_body(&mut body, shared.settings.max_body);
    let whole = match &taken {
        Ready::Whole(whole) if !asked.multipart => whole,
        _ => return FirstLook::Later(Later { parts, body, taken }),
    };
    let policies = shared.policies.load();
    let service = policies.route(parts.uri.path()).map(|s| &**s);
    let service_name = service.map_or(&*DEFAULT_SERVICE, |s| &s.name);
    let headers = &parts.headers;
    let repeat = answer_repeat(
        shared,
        service,
        service_name,
        headers,
        asked,
        whole,
        request_id,
    );
    if let Some(answer) = repeat {
        return FirstLook::Answered(answer);
    }
    FirstLook::Later(Later { parts, body, taken })
}

/// A byte-for-byte repeat of a request seen before, answered from a fresh
/// entry with no XML pass, when the request's headers allow a cached
/// answer. `None` sends the request down the full path. With a
/// `request_id`, the answer carries it.
fn answer_repeat(
    shared: &Shared,
    service: Option<&Service>,
    service_name: &Arc<str>,
    headers: &HeaderMap,
    asked: &Asked,
    body: &Bytes,
    request_id: Option<&HeaderValue>,
) -> Option<Answer> {
    let known = shared.memo.recall(service_name, body)?;
    let rules = service.map_or(&*DEFAULT_RULES, |s| s.rules(&known.name));
    let requester = asked.requester;
    if !rules.cache
        || requester.no_store
        || requester.no_cache
        || !may_share(asked.authorization, known.has_security_header, rules)
    {
        return None;
    }
    let built;
    let (lookup, entry) = match &known.key {
        Some(key) if rules.vary_headers.is_empty() => {
            (key, shared.store.lookup_via(key, &known.shortcut))
        }
        _ => {
            built = lookup_key(service_name, &known, headers, rules);
            (&built, shared.store.lookup(&built))
        }
    };
    let now = clock::now();
    let entry = entry.filter(|e| e.is_fresh(now))?;
    let response = cached_response(&entry, now, &HIT, request_id);
    known.hits.count();
    let operation = Some(known.local_name.clone());
    let response = with_debug_key(shared, response, lookup);
    Some((response, service_name.clone(), operation, Outcome::Hit))
}

/// Every request [`first_look`] did not answer: routed, its body read,
/// then passed through, forwarded, or parsed and answered by its policy.
async fn answer_later(
    shared: &Shared,
    later: Later,
    request_id: Option<&HeaderValue>,
    remote: SocketAddr,
) -> Answer {
    let Later {
        mut parts,
        body,
        taken,
    } = later;
    let policies = shared.policies.load();
    let service = policies.route(parts.uri.path()).map(|s| &**s);
    let service_name: Arc<str> =
        service.map_or_else(|| DEFAULT_SERVICE.clone(), |s| s.name.clone());
    let soap12_content = is_soap12_content(&parts.headers);
    let finish = |response, outcome| {
        shared.metrics.record(&service_name, None, false, outcome);
        (response, service_name.clone(), None, outcome)
    };

    let upstream = service
        .and_then(|s| s.upstream.as_ref())
        .or(shared.settings.default_upstream.as_ref());
    let route = service.map_or("/", |s| s.route.as_str());
    // Where the request goes if it goes upstream.
    let target_of = |uri: &Uri| {
        upstream
            .ok_or_else(|| format!("no upstream is configured for {}", uri.path()))
            .and_then(|u| upstream::target_uri(u, route, uri))
    };
    let bad_gateway = |reason: String| {
        let version = version_of(soap12_content);
        fault_response(&fault::build(
            version,
            Culprit::Receiver,
            StatusCode::BAD_GATEWAY,
            &reason,
        ))
    };

    // Non-POST requests (GET ?wsdl, ...) stream through untouched.
    if parts.method != Method::POST {
        let target = match target_of(&parts.uri) {
            Ok(target) => target,
            Err(reason) => return finish(bad_gateway(reason), Outcome::Error),
        };
        pass_request_id(&mut parts.headers, request_id);
        let request = Request::from_parts(parts, body);
        let (response, outcome) =
            pass_through(shared, request, target, remote, soap12_content).await;
        return finish(response, outcome);
    }

    let limits = shared.settings.client_limits;
    // A whole body came through `first_look`, which asked the memo (a
    // multipart one is forwarded below before the memo is asked).
    let asked_memo = matches!(taken, Ready::Whole(_));
    let read = match taken {
        Ready::Whole(whole) => Ok(RequestBody::Whole(whole)),
        Ready::Failed(e) => Err(unreadable_body(&e, soap12_content)),
        Ready::Started(first) => {
            let max_body = shared.settings.max_body;
            read_body(
                body,
                first,
                &parts.headers,
                soap12_content,
                max_body,
                limits.timeout,
            )
            .await
        }
    };
    let body = match read {
        Ok(RequestBody::Whole(body)) if !is_multipart(&parts.headers) => body,
        Ok(body) => {
            let target = match target_of(&parts.uri) {
                Ok(target) => target,
                Err(reason) => return finish(bad_gateway(reason), Outcome::Error),
            };
            pass_request_id(&mut parts.headers, request_id);
            let (response, operation, outcome) = forward_uncached(
                shared,
                service,
                &parts,
                body,
                target,
                remote,
                soap12_content,
            )
            .await;
            shared
                .metrics
                .record(&service_name, operation.as_deref(), false, outcome);
            return (response, service_name, operation, outcome);
        }
        Err(response) => return finish(response, Outcome::Error),
    };
    if !asked_memo {
        if let Some(answer) = answer_repeat(
            shared,
            service,
            &service_name,
            &parts.headers,
            &Asked::of(&parts.headers),
            &body,
            None,
        ) {
            return answer;
        }
    }
    pass_request_id(&mut parts.headers, request_id);
    let target = match target_of(&parts.uri) {
        Ok(target) => target,
        Err(reason) => return finish(bad_gateway(reason), Outcome::Error),
    };
    let envelope = match parse_request(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            let fault = fault::bad_request(
                e.version,
                soap12_content,
                &format!("not an acceptable SOAP message: {e}"),
            );
            return finish(fault_response(&fault), Outcome::Error);
        }
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
        shared,
        service,
        service_name: service_name.clone(),
        parts,
        body: body.clone(),
        target,
        remote,
        version: envelope.version,
        operation: operation.clone(),
        declared,
    };
    let (response, outcome) = answer_soap(&exchange, &envelope).await;
    shared
        .metrics
        .record(&service_name, operation.as_deref(), declared, outcome);
    (response, service_name.clone(), operation, outcome)
}

/// The cache decision for a well-formed SOAP request.
async fn answer_soap(
    x: &Exchange<'_>,
    envelope: &RequestEnvelope<'_>,
) -> (Response<Body>, Outcome) {
    let Some(op) = envelope.operation.as_ref() else {
        return forward(x, None).await;
    };
    let rules = x.service.map_or(&*DEFAULT_RULES, |s| s.rules(&op.name));
    let requester = directives(&x.parts.headers);
    let writes = x.service.and_then(|s| s.invalidation(&op.name)).is_some();
    let authorization = x.parts.headers.contains_key(header::AUTHORIZATION);
    let shareable = may_share(authorization, envelope.has_security_header, rules);
    if !rules.cache || requester.no_store || writes || !shareable {
        return forward(x, Some(op)).await;
    }

    let Some(selector) = select_key(x, op) else {
        return forward(x, Some(op)).await;
    };
    let mut known = Known {
        service: x.service_name.clone(),
        version: x.version,
        name: op.name.clone(),
        local_name: x
            .operation
            .clone()
            .unwrap_or_else(|| Arc::from(op.name.local.as_str())),
        operation: Arc::from(op.name.to_string()),
        selector,
        has_security_header: envelope.has_security_header,
        hits: x.shared.metrics.tally(
            &x.service_name,
            Some(&op.name.local),
            x.declared,
            Outcome::Hit,
        ),
        key: None,
        shortcut: Shortcut::default(),
    };
    let lookup = lookup_key(&x.service_name, &known, &x.parts.headers, rules);
    known.key = rules.vary_headers.is_empty().then(|| lookup.clone());
    let (response, outcome) = answer_by_key(x, op, rules, &lookup, requester).await;
    // Only a body answered from the cache is remembered: a proven repeat.
    // Bodies seen once (a cache filling up, keys never asked again) would
    // otherwise fill the memo, at the cost of their size again each.
    if outcome == Outcome::Hit {
        x.shared.memo.remember(&x.body, known);
    }
    (with_debug_key(x.shared, response, &lookup), outcome)
}

/// With `--debug-headers`, the request's selector value as `X-Cache-Key`.
fn with_debug_key(
    shared: &Shared,
    mut response: Response<Body>,
    lookup: &LookupKey,
) -> Response<Body> {
    if shared.settings.debug_headers {
        // Percent-encoded: a key may hold any character, a header may not.
        let key: String = form_urlencoded::byte_serialize(lookup.selector.as_bytes()).collect();
        if let Ok(value) = HeaderValue::from_str(&key) {
            response.headers_mut().insert("x-cache-key", value);
        }
    }
    response
}

/// Hit, coalesced wait or fetch, for a request that has a lookup key.
async fn answer_by_key(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    lookup: &LookupKey,
    requester: Directives,
) -> (Response<Body>, Outcome) {
    let now = clock::now();
    let cached = x.shared.store.lookup(lookup);
    if requester.no_cache {
        // Forward, and let the answer refresh the entry.
        return fetch_and_store(x, op, rules, lookup, cached).await.0;
    }
    if let Some(entry) = cached.as_ref().filter(|e| e.is_fresh(now)) {
        return (cached_response(entry, now, &HIT, None), Outcome::Hit);
    }

    match x.shared.flights.join(lookup) {
        Role::Leader(flight) => {
            let (answer, outcome) = fetch_and_store(x, op, rules, lookup, cached).await;
            flight.finish(outcome);
            answer
        }
        Role::Overloaded => {
            let reason = format!(
                "more than {} identical requests are already waiting for the service",
                coalesce::MAX_WAITERS
            );
            let fault = fault::build(
                x.version,
                Culprit::Receiver,
                StatusCode::SERVICE_UNAVAILABLE,
                &reason,
            );
            let mut response = fault_response(&fault);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            (response, Outcome::Error)
        }
        Role::Follower(waiter) => {
            x.shared.metrics.coalesced();
            let patience = x.shared.settings.upstream_timeout + Duration::from_secs(1);
            match coalesce::wait(waiter, patience).await {
                Waited::Done(coalesce::Outcome::Stored(entry)) => (
                    cached_response(&entry, clock::now(), &COALESCED, None),
                    Outcome::Hit,
                ),
                Waited::Done(coalesce::Outcome::UpstreamFailed { status, message }) => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let fault = fault::build(x.version, Culprit::Receiver, status, &message);
                    (fault_response(&fault), Outcome::Error)
                }
                // Not shareable, leader gone or too slow: fetch our own.
                _ => fetch_and_store(x, op, rules, lookup, cached).await.0,
            }
        }
    }
}

/// A request with credentials (HTTP `Authorization`, a WS-Security header)
/// is answered from, or stored in, the shared cache only when the policy
/// says so: `shared = true`, or `Authorization` is one of its vary headers
/// so that each credential gets its own entries.
fn may_share(authorization: bool, has_security_header: bool, rules: &Rules) -> bool {
    if rules.shared {
        return true;
    }
    let varies_by_authorization = rules.vary_headers.contains(&header::AUTHORIZATION);
    !has_security_header && (!authorization || varies_by_authorization)
}

/// The request's selector value: the policy's `key` expressions, or the
/// digest of the operation element. `None` when it cannot be evaluated on
/// this request (then the request is forwarded).
fn select_key(x: &Exchange<'_>, op: &OperationElement<'_>) -> Option<SmolStr> {
    let policy_key = x
        .service
        .and_then(|s| s.operation(&op.name))
        .and_then(|o| o.key.as_ref());
    match policy_key {
        Some(selector) => selector
            .select(op)
            .map(SmolStr::from)
            .map_err(|e| tracing::warn!("key selection failed: {e}"))
            .ok(),
        None => canonical::digest(op)
            .map_err(|e| tracing::warn!("request digest failed: {e}"))
            .ok(),
    }
}

/// `(service, operation, selector value, vary values)`, scoped by SOAP
/// version too.
fn lookup_key(service: &Arc<str>, known: &Known, headers: &HeaderMap, rules: &Rules) -> LookupKey {
    let vary = rules
        .vary_headers
        .iter()
        .map(|h| header_value_list(headers, h))
        .collect();
    LookupKey {
        scope: Arc::new(Scope {
            service: service.clone(),
            operation: known.operation.clone(),
            version: known.version,
            vary,
        }),
        selector: known.selector.clone(),
    }
}

/// All the values of a header, as one: a header sent on several lines
/// means the same as its values joined with ", " (RFC 9110 §5.3), and a
/// request that repeats a vary header must not match one that sends only
/// its first value.
fn header_value_list(headers: &HeaderMap, name: &header::HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(owned(first));
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Forwards without caching (BYPASS): the answer is still stripped of its
/// addressed `CacheControl` block, and a write operation's success purges.
async fn forward(x: &Exchange<'_>, op: Option<&OperationElement<'_>>) -> (Response<Body>, Outcome) {
    let rules = match (x.service, op) {
        (Some(s), Some(op)) => s.rules(&op.name),
        _ => &*DEFAULT_RULES,
    };
    match fetch(x, rules).await {
        Err(e) => (upstream_failure(x, &e), Outcome::Error),
        Ok(fetched) => {
            let (response, succeeded) = answer_forwarded(fetched, &rules.roles);
            if succeeded {
                if let Some(op) = op {
                    invalidate(x, op);
                }
            }
            (response, Outcome::Bypass)
        }
    }
}

/// A forwarded answer that will not be stored: addressed `CacheControl`
/// cut out, marked BYPASS; and whether it is a success (2xx, a SOAP
/// envelope without Fault), which is what lets a write invalidate.
fn answer_forwarded(fetched: upstream::Fetched, roles: &[String]) -> (Response<Body>, bool) {
    const MARK: (&str, &str) = ("BYPASS", "soapcache; fwd=bypass");
    match fetched.body {
        FetchedBody::Partial { head, rest } => (
            streamed(fetched.parts, head, rest, roles, MARK.0, MARK.1),
            false,
        ),
        FetchedBody::Whole(bytes) => {
            let info = inspect_response(&bytes, roles);
            let stripped = info
                .as_ref()
                .map_or_else(|| bytes.clone(), |i| splice(&bytes, &i.strip));
            let succeeded = fetched.parts.status.is_success() && info.is_some_and(|i| !i.is_fault);
            (
                whole(fetched.parts, body::full(stripped), MARK.0, MARK.1),
                succeeded,
            )
        }
    }
}

/// Sends the request upstream; the answer is read whole up to the larger of
/// `RESPONSE_BUFFER` and the operation's `max_entry_size`.
async fn fetch(x: &Exchange<'_>, rules: &Rules) -> Result<upstream::Fetched, UpstreamError> {
    let request = || {
        let body = body::full(x.body.clone());
        upstream::build_request(&x.parts, x.target.clone(), x.remote, body)
    };
    let limit = RESPONSE_BUFFER.max(usize::try_from(rules.max_entry_size).unwrap_or(usize::MAX));
    x.shared.upstream.fetch(request, limit).await
}

/// A successful write operation purges the entries its policy targets.
fn invalidate(x: &Exchange<'_>, op: &OperationElement<'_>) {
    let Some(invalidation) = x.service.and_then(|s| s.invalidation(&op.name)) else {
        return;
    };
    let key = match invalidation.key.select(op) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!(service = %x.service_name, "invalidation key selection failed: {e}");
            return;
        }
    };
    let mut purged = 0;
    for target in &invalidation.targets {
        purged += x
            .shared
            .store
            .purge(&key, Some(&x.service_name), Some(&target.to_string()));
    }
    tracing::info!(service = %x.service_name, key = %key, purged, "invalidated by {}", op.name.local);
}

/// The miss path: one request upstream, the answer stripped, stored when
/// every rule of SPEC §4 allows, and the outcome for coalesced followers.
async fn fetch_and_store(
    x: &Exchange<'_>,
    op: &OperationElement<'_>,
    rules: &Rules,
    lookup: &LookupKey,
    stale: Option<Entry>,
) -> ((Response<Body>, Outcome), coalesce::Outcome) {
    let fetched = match fetch(x, rules).await {
        Ok(fetched) => fetched,
        Err(e) => {
            if let Some(answer) = serve_stale(stale.as_ref()) {
                tracing::warn!(service = %x.service_name, "upstream failed, serving stale: {e}");
                return (answer, coalesce::Outcome::GiveUp);
            }
            let response = upstream_failure(x, &e);
            let outcome = coalesce::Outcome::UpstreamFailed {
                status: response.status().as_u16(),
                message: Arc::from(e.to_string()),
            };
            return ((response, Outcome::Error), outcome);
        }
    };
    let parts = fetched.parts;
    let bytes = match fetched.body {
        FetchedBody::Whole(bytes) => bytes,
        FetchedBody::Partial { head, rest } => {
            let response = streamed(
                parts,
                head,
                rest,
                &rules.roles,
                "MISS",
                "soapcache; fwd=miss",
            );
            return ((response, Outcome::Miss), coalesce::Outcome::GiveUp);
        }
    };
    let info = inspect_response(&bytes, &rules.roles);
    if parts.status.is_server_error() && !info.as_ref().is_some_and(|i| i.is_fault) {
        if let Some(answer) = serve_stale(stale.as_ref()) {
            tracing::warn!(service = %x.service_name, status = parts.status.as_u16(), "upstream error, serving stale");
            return (answer, coalesce::Outcome::GiveUp);
        }
    }
    let strip = info.as_ref().map_or(&[][..], |i| &i.strip[..]);
    let kept = kept(&bytes, strip);
    let kept_len: usize = kept.iter().map(|piece| piece.len()).sum();

    // SPEC §4: what may be stored, and under which CacheKey until when.
    let now = clock::now();
    let control = info
        .as_ref()
        .and_then(|i| i.control.as_ref())
        .filter(|_| rules.honor_cache_control);
    let storable = parts.status == StatusCode::OK
        && info.as_ref().is_some_and(|i| !i.is_fault)
        && (control.is_some() || rules.ttl.is_some() || rules.expires_daily_at.is_some())
        && !response_forbids_storing(&parts.headers)
        && kept_len as u64 <= rules.max_entry_size;
    let expires_at = storable
        .then(|| {
            lifetime::expires_at(
                control,
                rules.ttl,
                rules.expires_daily_at,
                rules.max_ttl,
                now,
            )
        })
        .flatten()
        .filter(|at| *at > now);

    let Some(expires_at) = expires_at else {
        let stripped = splice(&bytes, strip);
        let response = whole(parts, body::full(stripped), "MISS", "soapcache; fwd=miss");
        return ((response, Outcome::Miss), coalesce::Outcome::GiveUp);
    };
    let cache_key = control
        .and_then(|c| c.cache_key.as_deref())
        .filter(|k| !k.is_empty())
        .unwrap_or(&lookup.selector)
        .to_owned();
    // The entry is made from the pieces directly, and the answer sent from
    // it: no stripped copy in between.
    let entry = Entry::new(
        &kept,
        parts.headers.get(header::CONTENT_TYPE),
        now,
        expires_at,
        rules.stale_if_error,
    );
    x.shared.store.insert(lookup, &cache_key, entry.clone());
    tracing::debug!(service = %x.service_name, operation = %op.name, cache_key = %cache_key, "stored");
    let response = whole(
        parts,
        body::stored(entry.clone()),
        "MISS",
        "soapcache; fwd=miss; stored",
    );
    ((response, Outcome::Miss), coalesce::Outcome::Stored(entry))
}

fn serve_stale(stale: Option<&Entry>) -> Option<(Response<Body>, Outcome)> {
    let now = clock::now();
    let entry = stale.filter(|e| e.is_usable_stale(now))?;
    Some((cached_response(entry, now, &STALE, None), Outcome::Stale))
}

/// `Cache-Control: no-store` or `private` on the service's answer.
fn response_forbids_storing(headers: &HeaderMap) -> bool {
    let d = directives(headers);
    d.no_store || d.private
}

/// Non-POST requests (GET ?wsdl, ...): both directions stream, untouched.
async fn pass_through(
    shared: &Shared,
    request: Request<Incoming>,
    target: Uri,
    remote: SocketAddr,
    soap12_content: bool,
) -> (Response<Body>, Outcome) {
    let (parts, body) = request.into_parts();
    let outgoing = upstream::build_request(&parts, target, remote, body::stream(body));
    match shared.upstream.send_streaming(outgoing).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let mut response = Response::new(body::stream(body));
            *response.status_mut() = parts.status;
            *response.extensions_mut() = parts.extensions;
            *response.headers_mut() = upstream::response_headers(&parts.headers);
            mark(response.headers_mut(), "BYPASS", "soapcache; fwd=method");
            (response, Outcome::Bypass)
        }
        Err(e) => {
            shared.metrics.upstream_error();
            let fault = upstream_fault(version_of(soap12_content), &e);
            (fault_response(&fault), Outcome::Error)
        }
    }
}

/// Requests larger than this are not held whole: their first part is read
/// to route them and name the operation, the rest streams to the service,
/// and they are never answered from or stored in the cache (SPEC §6).
const STREAM_THRESHOLD: usize = 1 << 20;

/// A request body: whole, or (past `STREAM_THRESHOLD`) its first part and
/// the rest still to come.
enum RequestBody {
    Whole(Bytes),
    Large { head: Bytes, rest: Incoming },
}

/// What of a request body is there to take at once.
enum Ready {
    /// All of it, in one frame.
    Whole(Bytes),
    /// Not all: what was taken (if anything), for [`read_body`] to go on.
    Started(Option<Bytes>),
    Failed(hyper::Error),
}

/// Most SOAP requests arrive whole with their head: the body is one frame,
/// ready now, that completes the length hyper framed it with. Taken here,
/// a repeat is answered without waiting on anything (no [`read_body`],
/// no timer). hyper's own framing decides what "whole" is
/// (`Content-Length`, not chunked), not the header as sent.
fn ready_body(body: &mut Incoming, max_body: u64) -> Ready {
    let small = |len: u64| (1..=max_body.min(STREAM_THRESHOLD as u64)).contains(&len);
    if !hyper::body::Body::size_hint(body)
        .exact()
        .is_some_and(small)
    {
        return Ready::Started(None);
    }
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if hyper::body::Body::is_end_stream(body) => Ready::Whole(data),
            Ok(data) => Ready::Started(Some(data)),
            Err(_) => Ready::Started(None),
        },
        Some(Some(Err(e))) => Ready::Failed(e),
        Some(None) | None => Ready::Started(None),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn unreadable_body(error: &hyper::Error, soap12: bool) -> Response<Body> {
    let reason = format!("could not read the request body: {error}");
    fault_response(&fault::bad_request(None, soap12, &reason))
}

/// Reads the request body, after `first` (what [`ready_body`] took): 413
/// past `max_body` (decided from `Content-Length` before reading anything
/// when it is given), 408 when it does not arrive within `timeout`.
async fn read_body(
    mut body: Incoming,
    first: Option<Bytes>,
    headers: &HeaderMap,
    soap12: bool,
    max_body: u64,
    timeout: Duration,
) -> Result<RequestBody, Response<Body>> {
    if let Some(len) = declared_length(headers).filter(|len| *len > max_body) {
        if len <= body::DISCARD_LIMIT {
            Box::pin(body::discard(&mut body, timeout)).await;
        }
        return Err(too_large(soap12, max_body));
    }
    let read = async {
        // Most bodies arrive as one frame: kept as it is, not copied.
        let mut first = first;
        let mut buffer = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreadable_body(&e, soap12))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match first.take() {
                None if buffer.is_empty() => first = Some(data),
                earlier => {
                    if let Some(earlier) = earlier {
                        buffer.extend_from_slice(&earlier);
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            let read = first.as_ref().map_or(buffer.len(), Bytes::len);
            if read as u64 > max_body {
                Box::pin(body::discard(&mut body, timeout)).await;
                return Err(too_large(soap12, max_body));
            }
            if read > STREAM_THRESHOLD {
                let head = first.take().unwrap_or_else(|| buffer.split().freeze());
                return Ok(RequestBody::Large { head, rest: body });
            }
        }
        Ok(RequestBody::Whole(first.unwrap_or_else(|| buffer.freeze())))
    };
    // A small body mostly arrives with the head: taken without arming a
    // timer (a clock read and a timer entry made and dropped per request).
    let mut read = std::pin::pin!(read);
    if let Some(result) = read.as_mut().now_or_never() {
        return result;
    }
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => {
            let reason = format!("the request body did not arrive within {timeout:?}");
            let fault = fault::build(
                version_of(soap12),
                Culprit::Sender,
                StatusCode::REQUEST_TIMEOUT,
                &reason,
            );
            Err(fault_response(&fault))
        }
    }
}

fn too_large(soap12: bool, max_body: u64) -> Response<Body> {
    let reason = format!("the request body is larger than the {max_body}-byte limit");
    fault_response(&fault::build(
        version_of(soap12),
        Culprit::Sender,
        StatusCode::PAYLOAD_TOO_LARGE,
        &reason,
    ))
}

/// Requests forwarded as they come and never cached (SPEC §6): those too
/// large to hold, and multipart/related ones (SwA, MTOM/XOP). They are
/// checked on their first bytes (for multipart, the root part's), which
/// also name the operation; the rest streams with `--max-body` enforced.
async fn forward_uncached(
    shared: &Shared,
    service: Option<&Service>,
    parts: &Parts,
    body: RequestBody,
    target: Uri,
    remote: SocketAddr,
    soap12_content: bool,
) -> (Response<Body>, Option<Arc<str>>, Outcome) {
    let (head, rest) = match body {
        RequestBody::Whole(whole) => (whole, None),
        RequestBody::Large { head, rest } => (head, Some(rest)),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request_head = match content_type.filter(|_| is_multipart(&parts.headers)) {
        // A root part we cannot read is forwarded all the same: the
        // service is the judge of its own attachments.
        Some(content_type) => {
            multipart_root(&head, content_type).and_then(|root| parse_request_head(root).ok())
        }
        None => match parse_request_head(&head) {
            Ok(request_head) => Some(request_head),
            Err(e) => {
                // Drain what is still coming, or the requester, still
                // sending, may see a reset instead of the fault.
                if let Some(mut rest) = rest {
                    body::discard(&mut rest, shared.settings.client_limits.timeout).await;
                }
                let reason = format!("not an acceptable SOAP message: {e}");
                let fault = fault::bad_request(e.version, soap12_content, &reason);
                return (fault_response(&fault), None, Outcome::Error);
            }
        },
    };
    let version = request_head
        .as_ref()
        .map_or(version_of(soap12_content), |h| h.version);
    let operation_name = request_head.and_then(|h| h.operation);
    let operation = operation_name
        .as_ref()
        .map(|op| Arc::from(op.local.as_str()));
    let rules = match (service, &operation_name) {
        (Some(s), Some(op)) => s.rules(op),
        _ => &*DEFAULT_RULES,
    };
    let (body, exceeded) = match rest {
        None => (body::full(head), Default::default()),
        Some(rest) => {
            let limit = body::Limit {
                max: shared.settings.max_body,
                linger: shared.settings.client_limits.timeout,
            };
            body::head_then(head, rest, Some(limit))
        }
    };
    let outgoing = upstream::build_request(parts, target, remote, body);
    let limit = RESPONSE_BUFFER.max(usize::try_from(rules.max_entry_size).unwrap_or(usize::MAX));
    match shared.upstream.fetch_once(outgoing, limit).await {
        Err(_) if exceeded.load(std::sync::atomic::Ordering::Relaxed) => (
            too_large(soap12_content, shared.settings.max_body),
            operation,
            Outcome::Error,
        ),
        Err(e) => {
            shared.metrics.upstream_error();
            tracing::warn!(operation = operation.as_deref().unwrap_or("-"), "{e}");
            (
                fault_response(&upstream_fault(version, &e)),
                operation,
                Outcome::Error,
            )
        }
        Ok(fetched) => (
            answer_forwarded(fetched, &rules.roles).0,
            operation,
            Outcome::Bypass,
        ),
    }
}

fn upstream_fault(version: SoapVersion, error: &UpstreamError) -> Fault {
    let status = match error {
        UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    fault::build(version, Culprit::Receiver, status, &error.to_string())
}

fn upstream_failure(x: &Exchange<'_>, error: &UpstreamError) -> Response<Body> {
    x.shared.metrics.upstream_error();
    tracing::warn!(service = %x.service_name, operation = x.operation.as_deref().unwrap_or("-"), declared = x.declared, "{error}");
    fault_response(&upstream_fault(x.version, error))
}

fn version_of(soap12_content: bool) -> SoapVersion {
    if soap12_content {
        SoapVersion::V12
    } else {
        SoapVersion::V11
    }
}

fn is_soap12_content(headers: &HeaderMap) -> bool {
    content_type_is(headers, "application/soap+xml")
}

fn is_multipart(headers: &HeaderMap) -> bool {
    content_type_is(headers, "multipart/")
}

fn content_type_is(headers: &HeaderMap, prefix: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| value_starts_with(v, prefix))
}

/// Compared as bytes, ignoring case: every request asks, and `to_str`
/// would check the whole value first.
fn value_starts_with(value: &HeaderValue, prefix: &str) -> bool {
    value
        .as_bytes()
        .trim_ascii_start()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn mark(headers: &mut HeaderMap, x_cache: &'static str, cache_status: &'static str) {
    headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    headers.insert(CACHE_STATUS, HeaderValue::from_static(cache_status));
}

/// An answer from a stored entry: the stored bytes as they are, under a
/// copy of one of the [`FromCache`] templates, with `request_id` if given.
fn cached_response(
    entry: &Entry,
    now: SystemTime,
    kind: &FromCache,
    request_id: Option<&HeaderValue>,
) -> Response<Body> {
    let mut response = Response::new(body::stored(entry.clone()));
    // A clone copies the template's table as it is; inserting the same
    // headers would hash each name and grow the table twice.
    *response.headers_mut() = match request_id {
        None => kind.plain.clone(),
        Some(_) => kind.with_id.clone(),
    };
    let content_type = entry.content_type();
    // The values that differ are found by position: by name, each would
    // be hashed again.
    let mut values = response.headers_mut().values_mut();
    if let (Some(slot), Some(value)) = (values.next(), &content_type) {
        *slot = value.clone();
    }
    if let Some(slot) = values.nth(AGE_AT - CONTENT_TYPE_AT - 1) {
        *slot = age_value(entry.age(now));
    }
    if let (Some(slot), Some(id)) = (values.nth(REQUEST_ID_AT - AGE_AT - 1), request_id) {
        *slot = id.clone();
    }
    if content_type.is_none() {
        response.headers_mut().remove(header::CONTENT_TYPE);
    }
    response
}

/// The headers of one kind of answer from the cache, in the order they
/// are sent, made once. `Content-Type`, `Age` and `X-Request-ID` are
/// placeholders, at the positions below, that each answer overwrites.
/// The request id has its own template: a header added to a clone would
/// regrow its table.
struct FromCache {
    plain: HeaderMap,
    with_id: HeaderMap,
}

const CONTENT_TYPE_AT: usize = 0;
const AGE_AT: usize = 3;
const REQUEST_ID_AT: usize = 5;

impl FromCache {
    fn new(x_cache: &'static str, cache_status: &'static str) -> FromCache {
        let mut plain = HeaderMap::with_capacity(5);
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        mark(&mut plain, x_cache, cache_status);
        plain.insert(header::AGE, HeaderValue::from_static("0"));
        plain.insert(header::VIA, HeaderValue::from_static("1.1 soapcache"));
        let mut with_id = plain.clone();
        with_id.insert(X_REQUEST_ID, HeaderValue::from_static("-"));
        FromCache { plain, with_id }
    }
}

static HIT: LazyLock<FromCache> = LazyLock::new(|| FromCache::new("HIT", "soapcache; hit"));
static COALESCED: LazyLock<FromCache> =
    LazyLock::new(|| FromCache::new("HIT", "soapcache; hit; detail=coalesced"));
static STALE: LazyLock<FromCache> =
    LazyLock::new(|| FromCache::new("STALE", "soapcache; hit; fwd=stale"));

/// An `Age` value. Most hits are younger than ten minutes: those values
/// are made once, so a hit does not allocate one.
fn age_value(seconds: u64) -> HeaderValue {
    static YOUNG: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..600u64)
            .map(|s| HeaderValue::from_static(Box::leak(s.to_string().into_boxed_str())))
            .collect()
    });
    usize::try_from(seconds)
        .ok()
        .and_then(|s| YOUNG.get(s))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

/// An upstream answer read whole (and possibly stripped).
fn whole(
    parts: hyper::http::response::Parts,
    body: Body,
    x_cache: &'static str,
    cache_status: &'static str,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.extensions_mut() = parts.extensions;
    let mut headers = upstream::response_headers(&parts.headers);
    // The body may have changed length; hyper sets it from the body.
    headers.remove(header::CONTENT_LENGTH);
    mark(&mut headers, x_cache, cache_status);
    *response.headers_mut() = headers;
    response
}

/// An upstream answer too large to hold: what was read (its addressed
/// `CacheControl` blocks cut out), then the rest as it arrives.
fn streamed(
    parts: hyper::http::response::Parts,
    head: Bytes,
    rest: Incoming,
    roles: &[String],
    x_cache: &'static str,
    cache_status: &'static str,
) -> Response<Body> {
    let cut = addressed_blocks_in_head(&head, roles);
    let (body, _) = body::head_then(splice(&head, &cut), rest, None);
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.extensions_mut() = parts.extensions;
    let mut headers = upstream::response_headers(&parts.headers);
    if !cut.is_empty() {
        // Shorter than announced: send it chunked instead.
        headers.remove(header::CONTENT_LENGTH);
    }
    mark(&mut headers, x_cache, cache_status);
    *response.headers_mut() = headers;
    response
}

pub fn fault_response(fault: &Fault) -> Response<Body> {
    let mut response = Response::new(body::full(fault.body.clone()));
    *response.status_mut() = fault.status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, fault.content_type.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_a_hex_prefix_and_a_hex_counter() {
        let ids: Vec<String> = (0..20)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let (prefix, counter) = id.split_once('-').unwrap();
            assert_eq!(prefix.len(), 8, "{id}");
            assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(u64::from_str_radix(counter, 16).is_ok(), "{id}");
            assert!(!counter.starts_with('0'), "{id}");
        }
        let counters: Vec<u64> = ids
            .iter()
            .map(|id| u64::from_str_radix(id.split_once('-').unwrap().1, 16).unwrap())
            .collect();
        assert!(counters.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn answers_from_the_cache_carry_their_own_content_type_and_age() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = stored + Duration::from_secs(3600);
        let now = stored + Duration::from_secs(42);
        let text_xml = HeaderValue::from_static("application/soap+xml; charset=utf-8");
        let with = Entry::new(&[b"<a/>"], Some(&text_xml), stored, expires, Duration::ZERO);
        let without = Entry::new(&[b"<a/>"], None, stored, expires, Duration::ZERO);

        let id = HeaderValue::from_static("req-1");
        let answer = cached_response(&with, now, &STALE, Some(&id));
        let headers: Vec<(&str, &str)> = answer
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("content-type", "application/soap+xml; charset=utf-8"),
                ("x-cache", "STALE"),
                ("cache-status", "soapcache; hit; fwd=stale"),
                ("age", "42"),
                ("via", "1.1 soapcache"),
                ("x-request-id", "req-1"),
            ]
        );
        let answer = cached_response(&without, now, &HIT, None);
        assert_eq!(answer.headers().get(header::CONTENT_TYPE), None);
        assert_eq!(answer.headers()[header::AGE], "42");
        assert_eq!(answer.headers()[X_CACHE], "HIT");
        assert_eq!(answer.headers().len(), 4);
        // The templates are not changed by the answers made from them.
        assert_eq!(HIT.plain[header::AGE], "0");
        assert_eq!(HIT.plain[header::CONTENT_TYPE], "text/xml");
        assert_eq!(STALE.with_id[X_REQUEST_ID], "-");
    }

    #[test]
    fn age_values_are_decimal_seconds() {
        for seconds in [0, 7, 599, 600, 86_400, u64::MAX] {
            assert_eq!(age_value(seconds), seconds.to_string().as_str());
        }
    }
}
