//! Everything that goes past the cache: requests forwarded without caching
//! (BYPASS, each with its reason), requests too large or multipart to hold,
//! non-POST requests streamed through, and the write operations whose
//! success purges what they invalidate.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header;
use hyper::http::request::Parts;
use hyper::{Request, Uri};

use super::queued::{self, QueuedRequest};
use super::{respond, Exchange, Reply};
use crate::app::state::State;
use crate::cache::decision::Uncacheable;
use crate::cache::invalidate;
use crate::delivery::DeliveryMode;
use crate::http::body::{self, Body};
use crate::http::client::{self, Fetched, FetchedBody, UpstreamError};
use crate::http::headers::is_multipart;
use crate::http::request_body::{self, BodyError, RequestBody};
use crate::ops::metrics::CacheResult;
use crate::policy::{rules_for, Rules, Service};
use crate::soap::control::{inspect_response, splice};
use crate::soap::envelope::{parse_request, parse_request_head, OperationElement};
use crate::soap::multipart::multipart_root;
use crate::soap::{fault, SoapVersion};
use respond::Mark;

/// Responses are read whole up to this size (or the operation's
/// `max_entry_size`, when larger) so their `CacheControl` can be stripped;
/// larger ones stream through.
const RESPONSE_BUFFER: usize = 8 << 20;

fn response_limit(rules: &Rules) -> usize {
    RESPONSE_BUFFER.max(usize::try_from(rules.max_entry_size).unwrap_or(usize::MAX))
}

/// Where a request goes if it goes upstream: its service's upstream, else
/// `--upstream`, with the route prefix mapped.
pub(super) fn target(
    state: &State,
    service: Option<&Service>,
    uri: &Uri,
) -> Result<Uri, client::TargetError> {
    let upstream = service
        .and_then(|s| s.upstream.as_ref())
        .or(state.settings.default_upstream.as_ref());
    let route = service.map_or("/", |s| s.route.as_str());
    match upstream {
        Some(upstream) => client::target_uri(upstream, route, uri),
        None => Err(client::TargetError::NoUpstream {
            path: uri.path().to_owned(),
        }),
    }
}

/// Sends the request upstream; the answer is read whole up to
/// [`response_limit`].
pub(super) async fn fetch(x: &Exchange<'_>, rules: &Rules) -> Result<Fetched, UpstreamError> {
    let request = || {
        let body = body::full(x.body.clone());
        client::build_request(&x.parts, x.target.clone(), x.remote, body)
    };
    x.state.upstream.fetch(request, response_limit(rules)).await
}

/// Counts and logs a failed exchange, and answers it with a fault.
pub(super) fn upstream_failure(x: &Exchange<'_>, error: &UpstreamError) -> hyper::Response<Body> {
    x.state.metrics.upstream_error();
    tracing::warn!(service = %x.service_name, operation = x.operation.as_deref().unwrap_or("-"), declared = x.declared, "{error}");
    respond::upstream_fault(x.version, error)
}

/// Forwards without caching (BYPASS, for `reason`): the answer is still
/// stripped of its addressed `CacheControl` block, and a write
/// operation's success purges what it invalidates.
pub(super) async fn bypass(
    x: &Exchange<'_>,
    op: Option<&OperationElement<'_>>,
    reason: Uncacheable,
) -> Reply {
    let rules = rules_for(x.service, op.map(|op| &op.name));
    match fetch(x, rules).await {
        Err(e) => Reply::error(upstream_failure(x, &e)),
        Ok(fetched) => {
            let (response, succeeded) = answer_forwarded(fetched, &rules.roles, reason);
            if let (true, Some(service), Some(op)) = (succeeded, x.service, op) {
                invalidate::after_write(&x.state.cache, service, op).await;
            }
            Reply::new(response, CacheResult::Bypass).because(Some(reason))
        }
    }
}

/// A forwarded answer that will not be stored: addressed `CacheControl`
/// cut out, marked BYPASS for `reason`; and whether it is a success (2xx,
/// a SOAP envelope without Fault), which is what lets a write invalidate.
fn answer_forwarded(
    fetched: Fetched,
    roles: &[String],
    reason: Uncacheable,
) -> (hyper::Response<Body>, bool) {
    let mark = Mark::bypass(reason);
    match fetched.body {
        FetchedBody::Partial { head, rest } => (
            respond::streamed(fetched.parts, head, rest, roles, mark),
            false,
        ),
        FetchedBody::Whole(bytes) => {
            let (stripped, succeeded) = stripped(&bytes, fetched.parts.status, roles);
            (
                respond::whole(fetched.parts, body::full(stripped), mark),
                succeeded,
            )
        }
    }
}

/// A whole answer with its addressed `CacheControl` blocks cut out, and
/// whether it is a success (2xx, a SOAP envelope without Fault).
pub(super) fn stripped(
    bytes: &bytes::Bytes,
    status: hyper::StatusCode,
    roles: &[String],
) -> (bytes::Bytes, bool) {
    let envelope = inspect_response(bytes, roles);
    let stripped = envelope
        .as_ref()
        .map_or_else(|| bytes.clone(), |e| splice(bytes, &e.strip));
    (
        stripped,
        status.is_success() && envelope.is_some_and(|e| !e.is_fault),
    )
}

/// Requests forwarded as they come and never cached (reference §6): those too
/// large to hold, and multipart/related ones (SwA, MTOM/XOP). They are
/// checked on their first bytes (for multipart, the root part's), which
/// also name the operation; the rest streams with `--max-body` enforced.
pub(super) async fn uncached(
    state: &State,
    service: Option<&Service>,
    parts: &Parts,
    body: RequestBody,
    target: Uri,
    remote: SocketAddr,
    content_soap: Option<SoapVersion>,
) -> (Reply, Option<Arc<str>>) {
    let (head, rest) = match body {
        RequestBody::Whole(whole) => (whole, None),
        RequestBody::Large { head, rest } => (head, Some(rest)),
    };
    let multipart = is_multipart(&parts.headers);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request_head = match content_type.filter(|_| multipart) {
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
                    body::discard(&mut rest, state.settings.client_limits.timeout).await;
                }
                let reason = format!("not an acceptable SOAP message: {e}");
                let fault = fault::bad_request(e.version, content_soap, &reason);
                return (Reply::error(respond::fault_response(&fault)), None);
            }
        },
    };
    let version = request_head
        .as_ref()
        .map_or(fault::content_version(content_soap), |h| h.version);
    let operation_name = request_head.and_then(|h| h.operation);
    let operation = operation_name
        .as_ref()
        .map(|op| Arc::from(op.local.as_str()));
    let rules = rules_for(service, operation_name.as_ref());
    if rules.delivery == DeliveryMode::Queued {
        let name = service.map_or("default", |s| &s.name);
        let reply = queue_whole(
            state,
            name,
            parts,
            head,
            rest,
            &target,
            remote,
            rules,
            content_soap,
        )
        .await;
        return (reply, operation);
    }
    let (body, exceeded) = match rest {
        None => (body::full(head), Default::default()),
        Some(rest) => {
            let limit = body::Limit {
                max: state.settings.max_body,
                linger: state.settings.client_limits.timeout,
            };
            body::head_then(head, rest, Some(limit))
        }
    };
    let reason = if multipart {
        Uncacheable::Multipart
    } else {
        Uncacheable::TooLarge
    };
    let outgoing = client::build_request(parts, target, remote, body);
    let reply = match state
        .upstream
        .fetch_once(outgoing, response_limit(rules))
        .await
    {
        Err(_) if exceeded.load(Ordering::Relaxed) => {
            let too_large = BodyError::TooLarge {
                max: state.settings.max_body,
            };
            Reply::error(respond::body_fault(&too_large, content_soap))
        }
        Err(e) => {
            state.metrics.upstream_error();
            tracing::warn!(operation = operation.as_deref().unwrap_or("-"), "{e}");
            Reply::error(respond::upstream_fault(version, &e))
        }
        Ok(fetched) => {
            let (response, _) = answer_forwarded(fetched, &rules.roles, reason);
            Reply::new(response, CacheResult::Bypass).because(Some(reason))
        }
    };
    (reply, operation)
}

/// A large or multipart request to a queued operation: read whole after
/// all (the queue keeps the exact bytes), checked as any SOAP request is,
/// then accepted.
#[allow(clippy::too_many_arguments)]
async fn queue_whole(
    state: &State,
    service_name: &str,
    parts: &Parts,
    head: bytes::Bytes,
    rest: Option<Incoming>,
    target: &Uri,
    remote: SocketAddr,
    rules: &Rules,
    content_soap: Option<SoapVersion>,
) -> Reply {
    let limits = &state.settings;
    let body = match rest {
        None => head,
        Some(rest) => {
            let timeout = limits.client_limits.timeout;
            match request_body::read_rest(head, rest, limits.max_body, timeout).await {
                Ok(body) => body,
                Err(e) => return Reply::error(respond::body_fault(&e, content_soap)),
            }
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let envelope_bytes = match is_multipart(&parts.headers) {
        true => multipart_root(&body, content_type).unwrap_or_default(),
        false => &body[..],
    };
    let envelope = match parse_request(envelope_bytes) {
        Ok(envelope) => envelope,
        Err(e) => {
            let reason = format!("not an acceptable SOAP message: {e}");
            let fault = fault::bad_request(e.version, content_soap, &reason);
            return Reply::error(respond::fault_response(&fault));
        }
    };
    let Some(op) = envelope.operation.as_ref() else {
        let fault = fault::bad_request(
            Some(envelope.version),
            content_soap,
            "a queued operation needs an operation element in Body",
        );
        return Reply::error(respond::fault_response(&fault));
    };
    let expires = match super::expiry(&envelope) {
        Ok(expires) => expires,
        Err(fault) => return Reply::error(respond::fault_response(&fault)),
    };
    let request = QueuedRequest {
        state,
        service_name,
        version: envelope.version,
        headers: &parts.headers,
        body: body.clone(),
        target,
        remote,
        addressing: &envelope.addressing,
        expires,
    };
    queued::accept(request, op, rules).await
}

/// Non-POST requests (GET ?wsdl, ...): both directions stream, untouched.
pub(super) async fn pass_through(
    state: &State,
    request: Request<Incoming>,
    target: Uri,
    remote: SocketAddr,
    content_soap: Option<SoapVersion>,
) -> Reply {
    let (parts, body) = request.into_parts();
    let outgoing = client::build_request(&parts, target, remote, body::stream(body));
    match state.upstream.send_streaming(outgoing).await {
        Ok(response) => Reply::new(respond::passed_through(response), CacheResult::Bypass),
        Err(e) => {
            state.metrics.upstream_error();
            let version: SoapVersion = fault::content_version(content_soap);
            Reply::error(respond::upstream_fault(version, &e))
        }
    }
}
