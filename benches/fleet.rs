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

use common::processes::{free_port, start_upstream, upstream_count, Soapcache};

use std::net::{SocketAddr, TcpStream};
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
