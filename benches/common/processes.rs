//! Processes the end-to-end benchmarks run: a catalog service on loopback
//! and soapcache itself (the release binary), each on free ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const CATALOG: &str = "http://example.org/2001/06/catalog";

pub static UPSTREAM_REQUESTS: AtomicU64 = AtomicU64::new(0);

pub fn upstream_count() -> u64 {
    UPSTREAM_REQUESTS.load(Ordering::SeqCst)
}

/// A catalog service on its own thread: every answer cacheable under its
/// part number until 2099 (any other request gets the same 200 answer,
/// which is what a queued delivery needs).
pub fn start_upstream() -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        UPSTREAM_REQUESTS.fetch_add(1, Ordering::SeqCst);
                        let part = super::part_number(&body).unwrap_or_default();
                        let answer = format!(
                            "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header><ca:CacheControl xmlns:ca=\"http://example.org/2001/06/cache\"><ca:CacheKey>{part}</ca:CacheKey><ca:Expires>2099-03-09T08:00:00Z</ca:Expires></ca:CacheControl></soap:Header><soap:Body><c:CatalogPriceResponse xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber><c:Description>Hex bolt, M8 x 40 mm, stainless steel A2, DIN 933</c:Description><c:Price currency=\"EUR\">42.00</c:Price></c:CatalogPriceResponse></soap:Body></soap:Envelope>"
                        );
                        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer)));
                        response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/xml; charset=utf-8"));
                        Ok::<_, hyper::Error>(response)
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    });
    addr
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

pub struct Soapcache {
    child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
}

impl Soapcache {
    pub fn start(upstream: SocketAddr, extra: &[&str]) -> Soapcache {
        let (proxy, admin) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_soapcache"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{proxy}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("http://{upstream}")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start soapcache");
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .for_each(drop)
        });
        let soapcache = Soapcache {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], proxy)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(soapcache.proxy).is_err() {
            assert!(Instant::now() < deadline, "soapcache did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        soapcache
    }

    /// Waits until soapcache's Redis tier is connected.
    pub fn wait_connected(&self) {
        self.wait_metric("soapcache_shared_cache_up 1", "connect to Redis");
    }

    /// Waits until `/metrics` has the line `line`.
    pub fn wait_metric(&self, line: &str, what: &str) {
        let request = b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut text = String::new();
            if let Ok(mut stream) = TcpStream::connect(self.admin) {
                let _ = stream.write_all(request);
                let _ = stream.read_to_string(&mut text);
            }
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(Instant::now() < deadline, "soapcache did not {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Soapcache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
