//! The upstream client: a pooled hyper-util client, requests rewritten as an
//! HTTP/1.1 proxy must (hop-by-hop headers, `Via`, `X-Forwarded-For`), and
//! `--upstream-timeout` enforced over the whole exchange.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::body::Body;

/// `Via` value soapcache adds.
pub const VIA: &str = "1.1 soapcache";

/// Why an exchange with the upstream failed. Displayed with the whole
/// `source()` chain: hyper's top-level messages alone ("client error
/// (Connect)") do not tell an operator what happened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream service: {}", chain(.0))]
    Connect(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream exchange failed: {}", chain(.0))]
    Failed(#[source] hyper_util::client::legacy::Error),
    #[error("the upstream answer broke off: {}", chain(.0))]
    Body(#[source] hyper::Error),
}

impl UpstreamError {
    fn of(error: hyper_util::client::legacy::Error) -> UpstreamError {
        if error.is_connect() {
            UpstreamError::Connect(error)
        } else {
            UpstreamError::Failed(error)
        }
    }
}

/// Why a request could not be given an upstream address.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TargetError {
    #[error("no upstream is configured for {path}")]
    NoUpstream { path: String },
    #[error("bad upstream URI: {0}")]
    Uri(String),
}

/// How long the upstream took (to the whole body when it was read whole,
/// to the response head when streamed). Carried in the response's
/// extensions so that metrics and the access log can read it.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub Duration);

/// A response whose body was read up to a limit: whole, or the part read
/// so far plus the rest still streaming.
pub struct Fetched {
    pub parts: hyper::http::response::Parts,
    pub body: FetchedBody,
}

pub enum FetchedBody {
    Whole(Bytes),
    Partial { head: Bytes, rest: Incoming },
}

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

impl UpstreamClient {
    /// A pooled client for `http://` and `https://` upstreams.
    pub fn new(timeout: Duration, tls: rustls::ClientConfig) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(connector);
        UpstreamClient { client, timeout }
    }

    /// Sends a request and reads the response body up to `limit` bytes,
    /// all within the upstream timeout.
    ///
    /// `request` builds the request; it is called a second time only to
    /// retry once after a connect failure, when no byte has reached the
    /// service, so a retry can never repeat an operation.
    pub async fn fetch(
        &self,
        request: impl Fn() -> Request<Body>,
        limit: usize,
    ) -> Result<Fetched, UpstreamError> {
        let started = std::time::Instant::now();
        let exchange = async {
            let response = match self.client.request(request()).await {
                Err(e) if e.is_connect() => self.client.request(request()).await,
                first => first,
            };
            read_answer(response, limit, started).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }

    /// As `fetch`, for a request whose body streams and so cannot be sent
    /// twice: no retry.
    pub async fn fetch_once(
        &self,
        request: Request<Body>,
        limit: usize,
    ) -> Result<Fetched, UpstreamError> {
        let started = std::time::Instant::now();
        let exchange =
            async { read_answer(self.client.request(request).await, limit, started).await };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
    }

    /// Sends `request` and returns the response as it streams in; the
    /// timeout covers the response head only.
    pub async fn send_streaming(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let started = std::time::Instant::now();
        let send = self.client.request(request);
        match tokio::time::timeout(self.timeout, send).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(UpstreamError::of(e)),
            Ok(Ok(mut response)) => {
                response
                    .extensions_mut()
                    .insert(UpstreamTime(started.elapsed()));
                Ok(response)
            }
        }
    }
}

/// Reads an answer's body up to `limit` bytes: whole, or that much and the
/// rest still streaming.
async fn read_answer(
    response: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    limit: usize,
    started: std::time::Instant,
) -> Result<Fetched, UpstreamError> {
    let response = response.map_err(UpstreamError::of)?;
    let (mut parts, mut body) = response.into_parts();
    // Sized once from Content-Length: grown by doubling, a large answer
    // would leave a trail of freed buffers (1, 2, 4, 8 MiB...) behind.
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0);
    let mut buffer = BytesMut::with_capacity(announced.min(limit + 1));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(UpstreamError::Body)?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() > limit {
                parts.extensions.insert(UpstreamTime(started.elapsed()));
                let head = buffer.freeze();
                return Ok(Fetched {
                    parts,
                    body: FetchedBody::Partial { head, rest: body },
                });
            }
        }
    }
    parts.extensions.insert(UpstreamTime(started.elapsed()));
    Ok(Fetched {
        parts,
        body: FetchedBody::Whole(exact(buffer)),
    })
}

/// The body without spare capacity. A chunked answer (no Content-Length)
/// grew its buffer by doubling; stored as it is, an entry could cost up to
/// twice the bytes the cache's weigher counts for it.
fn exact(buffer: BytesMut) -> Bytes {
    if buffer.capacity() - buffer.len() > buffer.len() / 8 {
        Bytes::copy_from_slice(&buffer)
    } else {
        buffer.freeze()
    }
}

/// The whole `source()` chain in one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The upstream URI for a request: with an upstream that has no path, the
/// request's path is kept; otherwise the route prefix is replaced by the
/// upstream's path (as nginx's `proxy_pass` with a URI does). The query is kept.
pub fn target_uri(upstream: &Uri, route: &str, request: &Uri) -> Result<Uri, TargetError> {
    let path = request.path();
    let base = upstream.path();
    let new_path = if base.is_empty() || base == "/" || path.starts_with(base) && route == "/" {
        path.to_owned()
    } else {
        let rest = path
            .strip_prefix(route.trim_end_matches('/'))
            .unwrap_or(path);
        if rest.is_empty() || rest == "/" {
            base.to_owned()
        } else {
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                rest.trim_start_matches('/')
            )
        }
    };
    let path_and_query = match request.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| TargetError::Uri(format!("bad path: {e}")))?,
    );
    Uri::from_parts(parts).map_err(|e| TargetError::Uri(e.to_string()))
}

/// Headers that describe one connection and must not be forwarded
/// (RFC 9110 §7.6.1), plus those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: a look at the few names present
    // costs less than eleven hashed removals that find nothing.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The headers [`remove_hop_by_hop`] always removes (it also removes those
/// a `Connection` header names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// The request to send upstream: same method, headers (less hop-by-hop;
/// `Host` and `SOAPAction` unchanged), plus `Via` and `X-Forwarded-For`.
pub fn build_request(parts: &Parts, target: Uri, remote: SocketAddr, body: Body) -> Request<Body> {
    let mut headers = parts.headers.clone();
    remove_hop_by_hop(&mut headers);
    if !headers.contains_key(header::HOST) {
        // HTTP/2 requests carry the host in the URI authority.
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, host);
        }
    }
    headers.append(header::VIA, HeaderValue::from_static(VIA));
    let client = remote.ip().to_string();
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", value);
    }
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = target;
    *request.headers_mut() = headers;
    request
}

/// Response headers to pass on: the upstream's, less hop-by-hop, plus `Via`.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = upstream.clone();
    remove_hop_by_hop(&mut headers);
    headers.append(header::VIA, HeaderValue::from_static(VIA));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn upstream_paths_follow_the_route() {
        let t = |up: &str, route: &str, req: &str| {
            target_uri(&uri(up), route, &uri(req)).unwrap().to_string()
        };
        assert_eq!(
            t("http://h:9000", "/", "/soap?x=1"),
            "http://h:9000/soap?x=1"
        );
        assert_eq!(
            t("http://h:9000/catalog", "/catalog", "/catalog"),
            "http://h:9000/catalog"
        );
        assert_eq!(
            t("http://h:9000/catalog", "/catalog", "/catalog/v2"),
            "http://h:9000/catalog/v2"
        );
        assert_eq!(
            t("http://h:9000/svc", "/prices", "/prices"),
            "http://h:9000/svc"
        );
        assert_eq!(t("http://h:9000/svc", "/", "/svc"), "http://h:9000/svc");
        assert_eq!(t("http://h:9000/svc", "/", "/"), "http://h:9000/svc");
        assert_eq!(
            t("http://h:9000/svc", "/", "/other"),
            "http://h:9000/svc/other"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_via_added() {
        let mut request = Request::builder()
            .uri("/x")
            .header("connection", "close, x-private")
            .header("x-private", "1")
            .header("keep-alive", "timeout=5")
            .header("soapaction", "\"urn:a\"")
            .header("host", "front.example")
            .body(())
            .unwrap();
        request
            .headers_mut()
            .append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let (parts, ()) = request.into_parts();
        let out = build_request(
            &parts,
            uri("http://h/x"),
            "127.0.0.1:5000".parse().unwrap(),
            crate::http::body::full(Bytes::new()),
        );
        let h = out.headers();
        assert!(
            h.get("connection").is_none()
                && h.get("x-private").is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h["soapaction"], "\"urn:a\"");
        assert_eq!(h["host"], "front.example");
        assert_eq!(h["via"], VIA);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }

    #[test]
    fn a_grown_body_is_kept_without_its_spare_capacity() {
        let mut grown = BytesMut::new();
        for _ in 0..33 {
            grown.extend_from_slice(&[b'x'; 32]);
        }
        assert!(grown.capacity() >= 2 * 1024, "{}", grown.capacity());
        let kept = exact(grown).try_into_mut().unwrap();
        assert_eq!(kept.len(), 33 * 32);
        assert!(kept.capacity() < 33 * 32 * 9 / 8, "{}", kept.capacity());

        let mut sized = BytesMut::with_capacity(1000);
        sized.extend_from_slice(&[b'x'; 1000]);
        let at = sized.as_ptr();
        assert_eq!(
            exact(sized).as_ptr(),
            at,
            "a buffer of the right size is not copied"
        );
    }
}
