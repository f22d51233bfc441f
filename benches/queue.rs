//! Queued-delivery accept benchmark (reference §10, §13), one run:
//! `cargo bench --bench queue`.
//!
//! The same load — `QUEUE_CONNECTIONS` keep-alive connections (default 8)
//! sending a queued `PlaceOrder` for `QUEUE_SECONDS` (default 5) each — is
//! sent to:
//! 1. the service directly (a synchronous 200: the baseline);
//! 2. soapcache with the embedded queue (`--data-dir`: SQLite, a commit
//!    before each 202);
//! 3. soapcache with the RabbitMQ queue (`--queue amqp://`: a publisher
//!    confirm before each 202), on a rabbitmq-server this bench starts.
//!
//! Each row gives accepts (answers) per second and the p50/p99 latency of
//! one request, and the ratios to the embedded queue and to the direct
//! service. Deliveries run while accepting, as they do in production; the
//! load generator, the service, soapcache and the broker share the
//! machine's cores, so the figures are ratios within this run.

mod common;
#[path = "../tests/support/servers.rs"]
mod servers;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::processes::{start_upstream, Soapcache};
use servers::RabbitBroker;

const SOAP11: &str = "http://schemas.xmlsoap.org/soap/envelope/";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("queue benchmark: not run in test mode; run it with `cargo bench --bench queue`");
        return;
    }
    let seconds = env_number("QUEUE_SECONDS", 5);
    let connections = env_number("QUEUE_CONNECTIONS", 8) as usize;
    let upstream = start_upstream();
    let dir = std::env::temp_dir().join(format!("soapcache-bench-queue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let policy = dir.join("orders.toml");
    std::fs::write(&policy, policy_text(upstream)).expect("policy");
    let policy = policy.to_str().expect("UTF-8 path").to_owned();
    println!(
        "soapcache queue benchmark; {} cores; {connections} keep-alive connections, {seconds} s per row",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let request = http_request(&place_order());
    let direct = measure(upstream, &request, "/orders", connections, seconds, 200);

    let data_dir = dir.join("data");
    let embedded = Soapcache::start(
        upstream,
        &[
            "--policies",
            &policy,
            "--data-dir",
            data_dir.to_str().expect("UTF-8 path"),
        ],
    );
    let embedded_row = measure(
        embedded.proxy,
        &request,
        "/orders",
        connections,
        seconds,
        202,
    );
    drop(embedded);

    let broker = RabbitBroker::start();
    let amqp_row = broker.as_ref().map(|broker| {
        let vhost = broker.new_vhost("bench");
        let url = broker.amqp_url(&vhost);
        let amqp = Soapcache::start(upstream, &["--policies", &policy, "--queue", &url]);
        amqp.wait_metric("soapcache_queue_broker_up 1", "connect to RabbitMQ");
        measure(amqp.proxy, &request, "/orders", connections, seconds, 202)
    });

    println!(
        "\n| contender | answers/s | p50 | p99 | ÷ embedded (rate) | ÷ direct (rate) |\n|---|---|---|---|---|---|"
    );
    let mut rows = vec![
        ("service directly (synchronous 200)", direct),
        ("soapcache, embedded queue (SQLite)", embedded_row),
    ];
    match amqp_row {
        Some(row) => rows.push(("soapcache, RabbitMQ queue", row)),
        None => println!("(rabbitmq-server is not installed: no RabbitMQ row)"),
    }
    for (label, row) in rows {
        println!(
            "| {label} | {:.0} | {} | {} | {:.2} | {:.2} |",
            row.rate,
            micros(row.p50),
            micros(row.p99),
            row.rate / embedded_row.rate,
            row.rate / direct.rate
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn policy_text(upstream: SocketAddr) -> String {
    format!(
        r#"[service]
name     = "orders"
route    = "/orders"
upstream = "http://{upstream}/orders"

[namespaces]
o = "urn:example:orders"

[[operation]]
element  = "o:PlaceOrder"
delivery = "queued"
"#
    )
}

fn place_order() -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:PlaceOrder xmlns:o=\"urn:example:orders\"><o:CustomerId>C-42</o:CustomerId><o:OrderRef>R-1001</o:OrderRef><o:Lines><o:Line sku=\"SKU-0001\" quantity=\"2\"/><o:Line sku=\"SKU-0002\" quantity=\"1\"/></o:Lines></o:PlaceOrder></soap:Body></soap:Envelope>"
    )
}

fn http_request(body: &str) -> String {
    format!(
        "host: bench\r\ncontent-type: text/xml; charset=utf-8\r\nsoapaction: \"urn:example:orders/PlaceOrder\"\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[derive(Clone, Copy)]
struct Row {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

/// Answers per second and the latency percentiles `connections`
/// keep-alive connections see, each answer checked to be `status`.
fn measure(
    addr: SocketAddr,
    head_and_body: &str,
    path: &str,
    connections: usize,
    seconds: u64,
    status: u16,
) -> Row {
    let request = format!("POST {path} HTTP/1.1\r\n{head_and_body}").into_bytes();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let expected = format!("HTTP/1.1 {status}");
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (measuring, stop, request, expected) = (
                measuring.clone(),
                stop.clone(),
                request.clone(),
                expected.clone(),
            );
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).expect("connect");
                stream.set_nodelay(true).ok();
                let mut buffer = vec![0u8; 64 * 1024];
                let mut latencies = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let (head, _) = common::exchange(&mut stream, &request, &mut buffer);
                    let took = started.elapsed();
                    assert!(head.starts_with(&expected), "{head}");
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(took);
                    }
                }
                latencies
            })
        })
        .collect();
    // Warm-up, then the measured window.
    std::thread::sleep(Duration::from_millis(500));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("load thread"))
        .collect();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Row {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn micros(d: Duration) -> String {
    format!("{} µs", d.as_micros())
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
