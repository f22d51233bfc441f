//! Fleet benchmark (reference §13), one run: `cargo bench --bench fleet`.
//!
//! 1. Throughput, as ratios to the upstream answered directly, of a local
//!    hit (without and with `--shared-cache`) and of a Redis-tier hit (an
//!    instance with `--cache-size 1`, so that every request misses locally
//!    and is answered from Redis).
//! 2. Fleet hit ratio: 30 000 requests for 10 000 keys chosen uniformly at
//!    random, spread round-robin over 3 instances sharing one Redis, then
//!    over 3 independent instances.
//!
//! The load generator (keep-alive connections on blocking threads), the
//! upstream, soapcache and redis-server share the machine's cores: the
//! figures are ratios within this run, not absolute capacities.
//! Environment: `FLEET_SECONDS` (default 5), `FLEET_CONNECTIONS` (default 8).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const CATALOG: &str = "http://example.org/2001/06/catalog";
const KEYS: u64 = 10_000;
const FLEET_REQUESTS: u64 = 30_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet benchmark: not run in test mode; run it with `cargo bench --bench fleet`");
        return;
    }
    let seconds = env_number("FLEET_SECONDS", 5);
    let connections = env_number("FLEET_CONNECTIONS", 8) as usize;
    let Some(redis) = Redis::start() else {
        eprintln!("fleet benchmark: redis-server is not installed (apt-get install redis-server)");
        std::process::exit(1);
    };
    let upstream = start_upstream();
    println!(
        "soapcache fleet benchmark; {} cores; {connections} keep-alive connections, {seconds} s per row; redis {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        redis.url
    );

    let request = http_request(&catalog_request("ABC-01234"));
    let direct = throughput(upstream, &request, connections, seconds);
    let local = Soapcache::start(upstream, &[]);
    let shared_local = Soapcache::start(upstream, &["--shared-cache", &redis.url]);
    let shared_only = Soapcache::start(
        upstream,
        &["--shared-cache", &redis.url, "--cache-size", "1"],
    );
    shared_local.wait_connected();
    shared_only.wait_connected();
    assert!(probe(local.proxy, &request).contains("x-cache: MISS"));
    assert!(probe(local.proxy, &request).contains("x-cache: HIT"));
    assert!(probe(shared_local.proxy, &request).contains("x-cache: MISS"));
    assert!(probe(shared_local.proxy, &request).contains("x-cache: HIT"));
    let head = probe(shared_only.proxy, &request);
    assert!(
        head.contains("detail=shared"),
        "not a Redis-tier hit: {head}"
    );
    let rows = [
        ("upstream directly", direct),
        (
            "soapcache, local hit",
            throughput(local.proxy, &request, connections, seconds),
        ),
        (
            "soapcache --shared-cache, local hit",
            throughput(shared_local.proxy, &request, connections, seconds),
        ),
        (
            "soapcache --shared-cache --cache-size 1, Redis-tier hit",
            throughput(shared_only.proxy, &request, connections, seconds),
        ),
    ];
    println!("\n| contender | requests/s | ÷ direct |\n|---|---|---|");
    for (label, rate) in rows {
        println!("| {label} | {rate:.0} | {:.2} |", rate / direct);
    }
    drop((local, shared_local, shared_only));

    println!(
        "\nfleet hit ratio, {FLEET_REQUESTS} requests over {KEYS} uniformly random keys, round-robin over 3 instances:"
    );
    println!("| fleet | hits | hit ratio | upstream requests |\n|---|---|---|---|");
    for shared in [true, false] {
        redis.flush();
        let extra: Vec<&str> = if shared {
            vec!["--shared-cache", &redis.url]
        } else {
            Vec::new()
        };
        let fleet: Vec<Soapcache> = (0..3).map(|_| Soapcache::start(upstream, &extra)).collect();
        if shared {
            fleet.iter().for_each(Soapcache::wait_connected);
        }
        let before = upstream_count();
        let hits = fleet_hits(&fleet);
        let label = if shared {
            "3 sharing one Redis"
        } else {
            "3 independent"
        };
        println!(
            "| {label} | {hits} | {:.3} | {} |",
            hits as f64 / FLEET_REQUESTS as f64,
            upstream_count() - before
        );
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn catalog_request(part: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:c=\"{CATALOG}\"><soap:Body><c:CatalogPriceRequest><c:PartNumber>{part}</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
    )
}

fn http_request(body: &str) -> Vec<u8> {
    format!(
        "POST /catalog HTTP/1.1\r\nhost: bench\r\ncontent-type: text/xml; charset=utf-8\r\nsoapaction: \"\"\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The head of one answer to `request`.
fn probe(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut buffer = vec![0u8; 64 * 1024];
    let (head, _) = common::exchange(&mut stream, request, &mut buffer);
    head.to_owned()
}

/// Requests per second `connections` keep-alive connections get.
fn throughput(addr: SocketAddr, request: &[u8], connections: usize, seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (done, stop, request) = (done.clone(), stop.clone(), request.to_vec());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut buffer = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let (head, _) = common::exchange(&mut stream, &request, &mut buffer);
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm-up, then the measured window.
    std::thread::sleep(Duration::from_millis(500));
    let (start, started) = (done.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let counted = done.load(Ordering::Relaxed) - start;
    let rate = counted as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .for_each(|t| t.join().expect("load thread"));
    rate
}

/// Sends the fleet workload (a seeded xorshift), 8 requests in flight;
/// how many were hits.
fn fleet_hits(fleet: &[Soapcache]) -> u64 {
    let hits = Arc::new(AtomicU64::new(0));
    let addrs: Vec<SocketAddr> = fleet.iter().map(|s| s.proxy).collect();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (hits, addrs) = (hits.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut streams: Vec<TcpStream> = addrs
                    .iter()
                    .map(|a| TcpStream::connect(a).expect("connect"))
                    .collect();
                let mut buffer = vec![0u8; 64 * 1024];
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (t + 1);
                for n in (t..FLEET_REQUESTS).step_by(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let part = format!("K-{:05}", state % KEYS);
                    let request = http_request(&catalog_request(&part));
                    let stream = &mut streams[(n % 3) as usize];
                    let (head, _) = common::exchange(stream, &request, &mut buffer);
                    if head.contains("x-cache: HIT") || head.contains("X-Cache: HIT") {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    threads
        .into_iter()
        .for_each(|t| t.join().expect("fleet thread"));
    hits.load(Ordering::Relaxed)
}

static UPSTREAM_REQUESTS: AtomicU64 = AtomicU64::new(0);

fn upstream_count() -> u64 {
    UPSTREAM_REQUESTS.load(Ordering::SeqCst)
}

/// A catalog service on its own thread: every answer cacheable under its
/// part number until 2099.
fn start_upstream() -> SocketAddr {
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
                        let part = common::part_number(&body).unwrap_or_default();
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Soapcache {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Soapcache {
    fn start(upstream: SocketAddr, extra: &[&str]) -> Soapcache {
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

    fn wait_connected(&self) {
        let request = b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n";
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut text = String::new();
            if let Ok(mut stream) = TcpStream::connect(self.admin) {
                use std::io::{Read, Write};
                let _ = stream.write_all(request);
                let _ = stream.read_to_string(&mut text);
            }
            if text.lines().any(|l| l == "soapcache_shared_cache_up 1") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "soapcache did not connect to Redis"
            );
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

struct Redis {
    child: Child,
    url: String,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn flush(&self) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("redis");
        stream.write_all(b"FLUSHALL\r\n").expect("FLUSHALL");
        let mut answer = [0u8; 5];
        stream.read_exact(&mut answer).expect("+OK");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
