//! Test support: a real upstream SOAP service on loopback (counting what it
//! receives, recording the exact bytes it sends), the real soapcache binary
//! started as a process, and a small HTTP client; real Redis and RabbitMQ
//! servers in [`servers`].
#![allow(dead_code)]

pub mod orders;
pub mod servers;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const CATALOG: &str = "http://example.org/2001/06/catalog";

/// What the upstream service saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub delay: Duration,
}

impl Reply {
    pub fn xml(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/xml; charset=utf-8".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Responder = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A real SOAP service on a loopback port.
pub struct Upstream {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<Mutex<Vec<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().unwrap(), responder).await
    }

    /// [`Upstream::start`] on a given address: a service that comes up
    /// where soapcache was told it would be (retrying while the port is
    /// still held by a service stopped a moment ago).
    pub async fn start_on(
        addr: SocketAddr,
        responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("bind upstream on {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let responder: Arc<Responder> = Arc::new(responder);
        let (c, s, b) = (count.clone(), seen.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (c, s, b, r) = (c.clone(), s.clone(), b.clone(), responder.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (c, s, b, r) = (c.clone(), s.clone(), b.clone(), r.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            c.fetch_add(1, Ordering::SeqCst);
                            let reply = r(&seen);
                            s.lock().unwrap().push(seen);
                            // Even a zero sleep waits for the timer's next tick (~1 ms).
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            b.lock().unwrap().push(reply.body.clone());
                            let mut response = Response::new(Full::new(reply.body));
                            *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                response.headers_mut().append(
                                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            count,
            seen,
            sent,
            task,
        }
    }

    /// A catalog service that marks every price cacheable: CacheKey = the
    /// part number, Expires = one hour from now.
    pub async fn catalog() -> Upstream {
        Upstream::slow_catalog(Duration::ZERO).await
    }

    /// [`Upstream::catalog`], each answer sent after `delay`.
    pub async fn slow_catalog(delay: Duration) -> Upstream {
        Upstream::start(move |seen| {
            Reply::xml(200, catalog_response(&part_of(&seen.body), &in_one_hour())).after(delay)
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Answers the service has finished sending (after their delay).
    pub fn answered(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    pub fn last_sent(&self) -> Bytes {
        self.sent
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream sent something")
    }

    /// Stops accepting; connections already open end with their tasks.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// The part number between `PartNumber>` tags, whatever the prefix.
pub fn part_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split("PartNumber>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub fn in_one_hour() -> String {
    httpdate_to_xsd(std::time::SystemTime::now() + Duration::from_secs(3600))
}

pub fn httpdate_to_xsd(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

pub fn control_block(key: &str, expires: &str) -> String {
    format!(
        "<ca:CacheControl xmlns:ca=\"http://example.org/2001/06/cache\">\n      <ca:CacheKey>{key}</ca:CacheKey>\n      <ca:Expires>{expires}</ca:Expires>\n    </ca:CacheControl>"
    )
}

/// A SOAP 1.1 catalog response with a CacheControl block, with a comment,
/// a declaration and odd whitespace that must all survive stripping.
pub fn catalog_response(part: &str, expires: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- catalog v2 -->\n<soap:Envelope xmlns:soap=\"{SOAP11}\">\n  <soap:Header>\n    {}\n  </soap:Header>\n  <soap:Body>\n    <c:CatalogPriceResponse xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber>\n\t<c:Price>{}.00</c:Price></c:CatalogPriceResponse>\n  </soap:Body>\n</soap:Envelope>\n",
        control_block(part, expires),
        part.len() * 7
    )
}

pub fn catalog_request(part: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:c=\"{CATALOG}\"><soap:Body><c:CatalogPriceRequest><c:PartNumber>{part}</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
    )
}

/// The same request as `catalog_request`, written with other prefixes,
/// a default namespace and indentation.
pub fn catalog_request_reformatted(part: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<env:Envelope xmlns:env=\"{SOAP11}\">\n  <env:Body>\n    <CatalogPriceRequest xmlns=\"{CATALOG}\">\n      <PartNumber>{part}</PartNumber>\n    </CatalogPriceRequest>\n  </env:Body>\n</env:Envelope>"
    )
}

pub fn soap12_request(part: &str) -> String {
    format!(
        "<env:Envelope xmlns:env=\"{SOAP12}\"><env:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber></c:CatalogPriceRequest></env:Body></env:Envelope>"
    )
}

/// The real soapcache binary, started with `serve` on free loopback ports.
pub struct Soapcache {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Soapcache {
    pub fn serve(args: &[&str]) -> Soapcache {
        Soapcache::serve_env(args, &[])
    }

    pub fn serve_env(args: &[&str], env: &[(&str, &str)]) -> Soapcache {
        let mut command = Command::new(env!("CARGO_BIN_EXE_soapcache"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start soapcache");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                sink.lock().unwrap().push(line);
            }
        });
        let (mut proxy, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while proxy.is_none() || admin.is_none() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                // Not left running after the test that started it fails.
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "soapcache did not start; its output: {:?}",
                    logs.lock().unwrap()
                )
            };
            // Text or JSON log lines: the address is what follows, up to a quote.
            let address = |marker: &str| {
                let rest = line.split(marker).nth(1)?;
                let end = rest
                    .find(|c: char| c == '"' || c.is_whitespace())
                    .unwrap_or(rest.len());
                rest[..end].parse::<SocketAddr>().ok()
            };
            proxy = proxy.or_else(|| address("proxy listening on "));
            admin = admin.or_else(|| address("admin listening on "));
        }
        Soapcache {
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Soapcache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer as the requester sees it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn x_cache(&self) -> &str {
        self.header("x-cache").unwrap_or("-")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("answer within 30 s")
            .expect("HTTP exchange");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// A SOAP 1.1 POST.
    pub async fn soap(&self, url: &str, body: &str) -> Answer {
        self.send(
            "POST",
            url,
            &[
                ("content-type", "text/xml; charset=utf-8"),
                ("soapaction", "\"urn:price\""),
            ],
            body.to_owned(),
        )
        .await
    }

    pub async fn soap_with(&self, url: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
        let mut headers = vec![("content-type", "text/xml; charset=utf-8")];
        headers.extend_from_slice(extra);
        self.send("POST", url, &headers, body.to_owned()).await
    }

    pub async fn admin(&self, method: &str, url: &str) -> Answer {
        self.send(method, url, &[], Bytes::new()).await
    }
}

/// Parses a JSON answer.
pub fn json(answer: &Answer) -> serde_json::Value {
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text()))
}

/// Counts headers for assertions on what reached the upstream.
pub fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .collect()
}

pub type Counts = HashMap<String, usize>;

impl Soapcache {
    /// The process id of the soapcache process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no drain, no flush, nothing but what is on disk.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 20 ms until it is true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port, for a service started later.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A scratch directory for `--data-dir`, removed on drop.
pub struct DataDir(pub std::path::PathBuf);

impl DataDir {
    pub fn new(test: &str) -> DataDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("soapcache-data-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    pub fn path_str(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shell already running and waiting to send a signal with its built-in
/// `kill`, so that the signal leaves within microseconds of [`fire`]
/// (spawning `kill` takes milliseconds, long enough to hide races).
///
/// [`fire`]: ArmedSignal::fire
pub struct ArmedSignal {
    child: Child,
}

impl ArmedSignal {
    pub fn new(signal: &str) -> ArmedSignal {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read pid && kill -{signal} \"$pid\""))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sh");
        ArmedSignal { child }
    }

    /// Sends the signal to `pid` and waits for the shell to finish.
    pub fn fire(mut self, pid: u32) {
        use std::io::Write;
        let mut stdin = self.child.stdin.take().expect("piped stdin");
        writeln!(stdin, "{pid}").expect("write pid");
        drop(stdin);
        let status = self.child.wait().expect("wait for sh");
        assert!(status.success(), "kill failed: {status:?}");
    }
}

impl Http {
    /// Like [`Http::send`], but a failed exchange (connection refused or
    /// reset, no answer within `limit`) is returned as an error instead of
    /// panicking, so that load tests can count lost requests.
    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        limit: Duration,
    ) -> Result<Answer, String> {
        let mut request = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(body.into()))
            .map_err(|e| format!("building the request: {e}"))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("HTTP exchange: {e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")))
    }
}

/// A scratch directory under the system temp dir holding one file, removed
/// on drop: for policy files written by a test.
pub struct ScratchFile {
    dir: std::path::PathBuf,
    pub path: std::path::PathBuf,
}

impl ScratchFile {
    pub fn new(test: &str, name: &str, text: &str) -> ScratchFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "soapcache-scratch-{}-{n}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write scratch file");
        ScratchFile { dir, path }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// VmRSS of a process in bytes, from /proc (Linux); `None` elsewhere.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The value of one unlabelled series (`name value`) in a Prometheus text
/// exposition, or the sum over every labelled series of `name{...}`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(rest) = rest.strip_prefix(' ') {
            rest
        } else if rest.starts_with('{') {
            match rest.rsplit_once("} ") {
                Some((_, v)) => v,
                None => continue,
            }
        } else {
            continue;
        };
        if let Ok(v) = value
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .parse::<f64>()
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A tiny xorshift64* generator for the randomised tests: seeded, so a
/// failing run can be repeated.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// The seed named by environment variable `var`, else one from the
    /// clock (the test prints it, so a failing run can be repeated).
    pub fn seed_from_env(var: &str) -> u64 {
        std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
