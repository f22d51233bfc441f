//! Request and response headers soapcache reads or writes: `Cache-Control`
//! directives, what a request's headers say in one pass, request ids, and
//! the names of soapcache's own headers.

use std::sync::LazyLock;
use std::time::SystemTime;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::soap::SoapVersion;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub const X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");

/// What one side asked of caches with `Cache-Control`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Directives {
    pub no_cache: bool,
    pub no_store: bool,
    pub private: bool,
}

impl Directives {
    /// Every `Cache-Control` value of `headers`.
    pub fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            d.read(value);
        }
        d
    }

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

/// What a request's headers say that the cache decision needs, read in
/// one pass over them: looking each header up by name hashes the name, and
/// a repeat needs four of them.
#[derive(Debug, Default)]
pub struct RequestHeaders {
    /// The requester's `X-Request-ID` (its first).
    pub request_id: Option<HeaderValue>,
    /// Whether the (first) `Content-Type` is `multipart/…`.
    pub multipart: bool,
    pub directives: Directives,
    pub authorization: bool,
    pub cookie: bool,
}

impl RequestHeaders {
    pub fn of(headers: &HeaderMap) -> RequestHeaders {
        let mut read = RequestHeaders::default();
        let mut content_type_seen = false;
        for (name, value) in headers {
            if *name == header::CONTENT_TYPE {
                if !content_type_seen {
                    read.multipart = value_starts_with(value, "multipart/");
                    content_type_seen = true;
                }
            } else if *name == header::CACHE_CONTROL {
                read.directives.read(value);
            } else if *name == header::AUTHORIZATION {
                read.authorization = true;
            } else if *name == header::COOKIE {
                read.cookie = true;
            } else if *name == X_REQUEST_ID && read.request_id.is_none() {
                read.request_id = Some(value.clone());
            }
        }
        read
    }
}

/// A new request id: a process prefix and a counter, in hex.
pub fn new_request_id() -> HeaderValue {
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
pub fn pass_request_id(headers: &mut HeaderMap, request_id: Option<&HeaderValue>) {
    if let Some(id) = request_id {
        headers.entry(X_REQUEST_ID).or_insert_with(|| id.clone());
    }
}

/// The SOAP version a request's `Content-Type` names: `text/xml` is the
/// SOAP 1.1 binding's, `application/soap+xml` the SOAP 1.2 binding's;
/// `None` for any other (or none).
pub fn content_soap_version(headers: &HeaderMap) -> Option<SoapVersion> {
    if content_type_is(headers, "application/soap+xml") {
        Some(SoapVersion::V12)
    } else if content_type_is(headers, "text/xml") {
        Some(SoapVersion::V11)
    } else {
        None
    }
}

pub fn is_multipart(headers: &HeaderMap) -> bool {
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

/// All the values of a header, as one: a header sent on several lines
/// means the same as its values joined with ", " (RFC 9110 §5.3), and a
/// request that repeats a vary header must not match one that sends only
/// its first value.
pub fn header_value_list(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
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

/// A header value in its own allocation. Values hyper parsed are slices of
/// the connection's read buffer; one kept in the cache would keep that
/// whole buffer (8 KiB and more) alive with it.
pub fn owned(value: &HeaderValue) -> HeaderValue {
    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone())
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
    fn one_pass_reads_what_the_decision_needs() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(" Multipart/related; x"),
        );
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Store"),
        );
        headers.append(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        headers.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=1"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("first"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("second"));
        let read = RequestHeaders::of(&headers);
        assert!(read.multipart && read.authorization && read.cookie);
        assert_eq!(read.request_id.unwrap(), "first");
        assert_eq!(read.directives, Directives::of(&headers));
        assert!(read.directives.no_store && read.directives.no_cache && !read.directives.private);
    }
}
