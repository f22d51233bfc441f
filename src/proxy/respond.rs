//! Making answers: from a stored entry (under a prebuilt header template),
//! from an upstream answer read whole or streamed, or a SOAP fault of
//! soapcache's own. Every `X-Cache` / `Cache-Status` value is set here.

use std::sync::LazyLock;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use crate::cache::decision::Uncacheable;
use crate::cache::entry::{AddressingPart, Entry};
use crate::delivery::accept::MessageIdBuffer;
use crate::http::body::{self, Body};
use crate::http::client::{self, UpstreamError};
use crate::http::headers::{CACHE_STATUS, X_CACHE, X_CACHE_KEY, X_REQUEST_ID};
use crate::http::request_body::BodyError;
use crate::key::lookup::LookupKey;
use crate::soap::control::{addressed_blocks_in_head, splice};
use crate::soap::fault::{self, Culprit, Fault};
use crate::soap::SoapVersion;

/// What an answer says of itself in `X-Cache` and `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub x_cache: &'static str,
    pub cache_status: &'static str,
}

impl Mark {
    pub const MISS_STORED: Mark = Mark {
        x_cache: "MISS",
        cache_status: "soapcache; fwd=miss; stored",
    };
    /// A repeat of a message id answered with the recorded answer
    /// (reference §11).
    pub const REPLAY: Mark = Mark {
        x_cache: "REPLAY",
        cache_status: "soapcache; hit; detail=replay",
    };
    /// The first request of a message id: forwarded, its answer recorded
    /// for repeats.
    pub const RECORDED: Mark = Mark {
        x_cache: "BYPASS",
        cache_status: "soapcache; fwd=bypass; detail=recorded",
    };
    /// A queued repeat of a message id: acknowledged again, not stored
    /// again.
    pub const DUPLICATE: Mark = Mark {
        x_cache: "QUEUED",
        cache_status: "soapcache; fwd=queued; detail=duplicate",
    };
    /// Not POST: passed through untouched.
    pub const METHOD: Mark = Mark {
        x_cache: "BYPASS",
        cache_status: "soapcache; fwd=method",
    };

    /// Forwarded past the cache because of `reason`.
    pub fn bypass(reason: Uncacheable) -> Mark {
        Mark {
            x_cache: "BYPASS",
            cache_status: reason.bypass_status(),
        }
    }

    /// A miss whose answer was not stored because of `reason`.
    pub fn miss(reason: Uncacheable) -> Mark {
        Mark {
            x_cache: "MISS",
            cache_status: reason.miss_status(),
        }
    }

    pub fn set(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE, HeaderValue::from_static(self.x_cache));
        headers.insert(CACHE_STATUS, HeaderValue::from_static(self.cache_status));
    }
}

/// The headers of one kind of answer from the cache, in the order they
/// are sent, made once. `Content-Type`, `Age` and `X-Request-ID` are
/// placeholders, at the positions below, that each answer overwrites.
/// The request id has its own template: a header added to a clone would
/// regrow its table.
pub struct CachedHeaders {
    plain: HeaderMap,
    with_id: HeaderMap,
}

const CONTENT_TYPE_AT: usize = 0;
const AGE_AT: usize = 3;
const REQUEST_ID_AT: usize = 5;

impl CachedHeaders {
    fn new(mark: Mark) -> CachedHeaders {
        let mut plain = HeaderMap::with_capacity(5);
        plain.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        mark.set(&mut plain);
        plain.insert(header::AGE, HeaderValue::from_static("0"));
        plain.insert(header::VIA, HeaderValue::from_static(client::VIA));
        let mut with_id = plain.clone();
        with_id.insert(X_REQUEST_ID, HeaderValue::from_static("-"));
        CachedHeaders { plain, with_id }
    }
}

pub static HIT: LazyLock<CachedHeaders> = LazyLock::new(|| {
    CachedHeaders::new(Mark {
        x_cache: "HIT",
        cache_status: "soapcache; hit",
    })
});
pub static COALESCED: LazyLock<CachedHeaders> = LazyLock::new(|| {
    CachedHeaders::new(Mark {
        x_cache: "HIT",
        cache_status: "soapcache; hit; detail=coalesced",
    })
});
/// A local miss answered from the shared tier (reference §13).
pub static SHARED: LazyLock<CachedHeaders> = LazyLock::new(|| {
    CachedHeaders::new(Mark {
        x_cache: "HIT",
        cache_status: "soapcache; hit; detail=shared",
    })
});
pub static STALE: LazyLock<CachedHeaders> = LazyLock::new(|| {
    CachedHeaders::new(Mark {
        x_cache: "STALE",
        cache_status: "soapcache; hit; fwd=stale",
    })
});
/// An expired entry inside its `stale_while_revalidate` window, answered
/// while it is refreshed.
pub static REVALIDATING: LazyLock<CachedHeaders> = LazyLock::new(|| {
    CachedHeaders::new(Mark {
        x_cache: "STALE",
        cache_status: "soapcache; hit; detail=revalidating",
    })
});

/// An answer from a stored entry: the stored bytes as they are, under a
/// copy of one of the [`CachedHeaders`] templates, with `request_id` if
/// given.
pub fn from_entry(
    entry: &Entry,
    now: SystemTime,
    kind: &CachedHeaders,
    request_id: Option<&HeaderValue>,
    message_id: Option<&str>,
) -> Response<Body> {
    let body = match entry.has_addressing() {
        false => body::shared(entry.shared_body()),
        true => body::full(readdressed(entry, message_id)),
    };
    let mut response = Response::new(body);
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

/// A stored answer's body with its WS-Addressing reply headers made this
/// requester's (reference §5): `RelatesTo` says `message_id` (or goes, when
/// the requester sent none), `MessageID` is fresh; every other byte as
/// stored.
fn readdressed(entry: &Entry, message_id: Option<&str>) -> Bytes {
    let body = entry.body();
    let mut id_buffer = MessageIdBuffer::default();
    let fresh = id_buffer.fresh();
    let escaped = message_id.map(quick_xml::escape::escape);
    let relates_to = escaped.as_deref();
    // What replaces each part: ranges are in order, and one inside a part
    // already replaced (the text of a dropped RelatesTo) is skipped.
    let mut at = 0;
    let replacements = entry.addressing().filter_map(move |(part, range)| {
        if range.start < at {
            return None;
        }
        let replacement: &[u8] = match part {
            AddressingPart::RelatesToElement if relates_to.is_none() => b"",
            AddressingPart::RelatesToElement => return None,
            AddressingPart::RelatesToText => relates_to.unwrap_or_default().as_bytes(),
            AddressingPart::MessageIdText => fresh.as_bytes(),
        };
        at = range.end;
        Some((range, replacement))
    });
    // Exactly the length it will have: `Bytes` then takes the buffer as
    // it is, with no second allocation for its bookkeeping.
    let length = replacements
        .clone()
        .fold(body.len(), |n, (range, new)| n - range.len() + new.len());
    let mut out = Vec::with_capacity(length);
    let mut at = 0;
    for (range, replacement) in replacements {
        out.extend_from_slice(&body[at..range.start]);
        out.extend_from_slice(replacement);
        at = range.end;
    }
    out.extend_from_slice(&body[at..]);
    Bytes::from(out)
}

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
pub fn whole(parts: hyper::http::response::Parts, body: Body, mark: Mark) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.extensions_mut() = parts.extensions;
    let mut headers = client::response_headers(&parts.headers);
    // The body may have changed length; hyper sets it from the body.
    headers.remove(header::CONTENT_LENGTH);
    mark.set(&mut headers);
    *response.headers_mut() = headers;
    response
}

/// An upstream answer too large to hold: what was read (its addressed
/// `CacheControl` blocks cut out), then the rest as it arrives.
pub fn streamed(
    parts: hyper::http::response::Parts,
    head: Bytes,
    rest: Incoming,
    roles: &[String],
    mark: Mark,
) -> Response<Body> {
    let cut = addressed_blocks_in_head(&head, roles);
    let (body, _) = body::head_then(splice(&head, &cut), rest, None);
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.extensions_mut() = parts.extensions;
    let mut headers = client::response_headers(&parts.headers);
    if !cut.is_empty() {
        // Shorter than announced: send it chunked instead.
        headers.remove(header::CONTENT_LENGTH);
    }
    mark.set(&mut headers);
    *response.headers_mut() = headers;
    response
}

/// An upstream answer passed through as it streams (not POST).
pub fn passed_through(response: Response<Incoming>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let mut response = Response::new(body::stream(body));
    *response.status_mut() = parts.status;
    *response.extensions_mut() = parts.extensions;
    *response.headers_mut() = client::response_headers(&parts.headers);
    Mark::METHOD.set(response.headers_mut());
    response
}

/// 202 for a request accepted into the queue: no body, its message id.
pub fn queued(message_id: &str) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(message_id) {
        headers.insert(crate::delivery::worker::X_MESSAGE_ID, id);
    }
    Mark {
        x_cache: "QUEUED",
        cache_status: "soapcache; fwd=queued",
    }
    .set(headers);
    headers.insert(header::VIA, HeaderValue::from_static(client::VIA));
    response
}

/// With `--debug-headers`, the request's selector value as `X-Cache-Key`.
pub fn with_debug_key(
    debug_headers: bool,
    mut response: Response<Body>,
    lookup: &LookupKey,
) -> Response<Body> {
    if debug_headers {
        // Percent-encoded: a key may hold any character, a header may not.
        let key: String = form_urlencoded::byte_serialize(lookup.selector.as_bytes()).collect();
        if let Ok(value) = HeaderValue::from_str(&key) {
            response.headers_mut().insert(X_CACHE_KEY, value);
        }
    }
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

/// soapcache's own fault for a failure on the service's side.
pub fn receiver_fault(version: SoapVersion, status: StatusCode, reason: &str) -> Response<Body> {
    fault_response(&fault::build(version, Culprit::Receiver, status, reason))
}

/// 502 or 504 for an exchange with the upstream that failed.
pub fn upstream_fault(version: SoapVersion, error: &UpstreamError) -> Response<Body> {
    let status = match error {
        UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    receiver_fault(version, status, &error.to_string())
}

/// 503 with `Retry-After`: soapcache cannot take this request now.
pub fn unavailable(version: SoapVersion, reason: &str, retry_after: u32) -> Response<Body> {
    let mut response = receiver_fault(version, StatusCode::SERVICE_UNAVAILABLE, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

/// The fault for a body that was not read: 413, 408, or a bad request.
pub fn body_fault(error: &BodyError, content_soap: Option<SoapVersion>) -> Response<Body> {
    let reason = error.to_string();
    let version = fault::content_version(content_soap);
    let fault = match error {
        BodyError::TooLarge { .. } => fault::build(
            version,
            Culprit::Sender,
            StatusCode::PAYLOAD_TOO_LARGE,
            &reason,
        ),
        BodyError::Timeout(_) => fault::build(
            version,
            Culprit::Sender,
            StatusCode::REQUEST_TIMEOUT,
            &reason,
        ),
        BodyError::Unreadable(_) => fault::bad_request(None, content_soap, &reason),
    };
    fault_response(&fault)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::entry::Times;

    #[test]
    fn answers_from_the_cache_carry_their_own_content_type_and_age() {
        let stored = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let times = Times {
            stored_at: stored,
            expires_at: stored + Duration::from_secs(3600),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        };
        let now = stored + Duration::from_secs(42);
        let soap12 = HeaderValue::from_static("application/soap+xml; charset=utf-8");
        let with = Entry::new(&[b"<a/>"], Some(&soap12), times);
        let without = Entry::new(&[b"<a/>"], None, times);

        let id = HeaderValue::from_static("req-1");
        let answer = from_entry(&with, now, &STALE, Some(&id), None);
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
        let answer = from_entry(&without, now, &HIT, None, None);
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
