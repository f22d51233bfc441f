//! Memory per stored byte: 100 000 entries of 1 KiB bodies inserted into a
//! `Store` large enough to keep them all; the process's RSS growth
//! (/proc/self/status VmRSS) divided by the body bytes stored. Target ≤ 1.5.
//!
//! Each variant runs in a fresh process (this binary re-executed with
//! `--variant NAME`), so that one's freed memory does not hide the next's:
//! - `link`:   keyed as without a policy `key`: a 22-character request digest
//!   linked to the `CacheKey` the service named (two cache records);
//! - `direct`: keyed by a policy `key` that selects the `CacheKey` itself;
//! - `process-link`, `process-direct`: the same two ways of keying, but
//!   through the whole `soapcache` binary (memo, hyper, tokio, allocator
//!   included): 100 000 distinct requests over HTTP to a service that marks
//!   each 1 KiB answer cacheable, and the RSS growth of soapcache's process.
//!
//! `cargo bench --bench memory`; run as a test (no `--bench` argument) it
//! only says how to run it.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

mod common;

use soapcache::envelope::SoapVersion;
use soapcache::store::{Entry, LookupKey, Scope, Store};

const ENTRIES: usize = 100_000;
const BODY: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        match args.get(i + 1).map(String::as_str).unwrap_or("link") {
            "process-link" => measure_process(false),
            "process-direct" => measure_process(true),
            variant => measure(variant),
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "memory benchmark: not run in test mode; run it with `cargo bench --bench memory`"
        );
        return;
    }
    println!(
        "memory per stored byte: {ENTRIES} entries of {BODY}-byte bodies in a Store of 1 GiB \
         (cargo bench --bench memory)"
    );
    let exe = std::env::current_exe().expect("current exe");
    let mut failed = false;
    for variant in ["link", "direct", "process-link", "process-direct"] {
        let output = Command::new(&exe)
            .args(["--variant", variant])
            .output()
            .expect("run a variant");
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        failed |= !output.status.success();
    }
    if failed {
        std::process::exit(1);
    }
}

fn rss_kib() -> u64 {
    rss_kib_of("self")
}

fn rss_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .expect("VmRSS in /proc/self/status")
}

fn measure(variant: &str) {
    let now = SystemTime::now();
    let expires_at = now + Duration::from_secs(86_400);

    let before = rss_kib();
    let store = Store::new(1 << 30);
    let empty = rss_kib();
    let started = Instant::now();
    for i in 0..ENTRIES {
        // Everything of its own, as the proxy builds it for each new
        // request and response: the body, the scope with its operation
        // name, the Content-Type value.
        let mut body = vec![b'x'; BODY];
        body[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let cache_key = format!("ABC-{i:06}");
        let selector = match variant {
            "direct" => cache_key.clone(),
            // As long as `canonical::digest`'s 22 characters.
            _ => blake3::hash(&body[..8]).to_hex()[..22].to_owned(),
        };
        let lookup = LookupKey {
            scope: Arc::new(Scope {
                service: Arc::from("default"),
                operation: Arc::from(
                    "{http://example.org/2001/06/catalog}CatalogPriceRequest".to_owned(),
                ),
                version: SoapVersion::V11,
                vary: Box::new([]),
            }),
            selector: selector.into(),
        };
        let content_type = HeaderValue::from_bytes(b"text/xml; charset=utf-8").unwrap();
        // The proxy sends the body it stores: the clone makes `Bytes`
        // share it, which costs a small allocation of its own.
        let body = Bytes::from(body);
        drop(body.clone());
        store.insert(
            &lookup,
            &cache_key,
            Arc::new(Entry::new(
                body,
                Some(store.content_type(&content_type)),
                now,
                expires_at,
                Duration::ZERO,
            )),
        );
    }
    let took = started.elapsed();
    let after = rss_kib();
    assert_eq!(
        store.entry_count(),
        ENTRIES as u64,
        "the store evicted entries"
    );
    let stored = (ENTRIES * BODY) as f64;
    let growth = (after - before) as f64 * 1024.0;
    println!(
        "  {variant:<6} RSS {:.1} MiB → {:.1} MiB (empty store {:+.1} MiB); growth {:.1} MiB for {:.1} MiB of bodies: \
         {:.2} × stored bytes (target ≤ 1.5); {:.0} B overhead per entry; store's own weight {:.1} MiB; \
         inserts {:.1} µs each",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (empty - before) as f64 / 1024.0,
        growth / (1 << 20) as f64,
        stored / (1 << 20) as f64,
        growth / stored,
        (growth - stored) / ENTRIES as f64,
        store.weighted_bytes() as f64 / (1 << 20) as f64,
        took.as_secs_f64() * 1e6 / ENTRIES as f64,
    );
    // Keep the store alive until after the measurement.
    drop(store);
}

/// The whole process: `soapcache serve --cache-size 1GiB` in front of a
/// service in this process; `ENTRIES` distinct requests, each answer
/// stored (checked on `/stats`); soapcache's RSS growth ÷ stored bodies.
fn measure_process(policy_key: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let service = runtime.block_on(start_service());
    let scratch = std::env::temp_dir().join(format!("soapcache-memory-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let policy = scratch.join("catalog.toml");
    std::fs::write(&policy, policy_text(policy_key)).expect("write the policy");
    let mut soapcache = Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--cache-size", "1GiB", "--upstream"])
        .arg(format!("http://{service}/catalog"))
        .arg("--policies")
        .arg(&policy)
        .env("RUST_LOG", "warn,soapcache=info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start soapcache");
    let (proxy, admin) = listening_addresses(soapcache.stderr.take().expect("stderr"));
    let pid = soapcache.id().to_string();

    // A warm-up (connections, buffers, the first allocator arenas), then
    // the measured requests, each with its own key.
    let warm_up = 2_000;
    let stored_body = send_distinct(proxy, 0..warm_up);
    let before = rss_kib_of(&pid);
    let started = Instant::now();
    send_distinct(proxy, warm_up..warm_up + ENTRIES);
    let took = started.elapsed();
    let after = rss_kib_of(&pid);
    let stats = http_get(admin, "/stats");
    let stored = (ENTRIES * stored_body) as f64;
    let growth = (after.saturating_sub(before)) as f64 * 1024.0;
    let variant = if policy_key {
        "process-direct"
    } else {
        "process-link"
    };
    println!(
        "  {variant:<14} soapcache RSS {:.1} MiB → {:.1} MiB; growth {:.1} MiB for {:.1} MiB of \
         {stored_body}-byte bodies: {:.2} × stored bytes (target ≤ 1.5); {:.0} B overhead per entry; \
         {:.0} requests/s; /stats: {}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        growth / (1 << 20) as f64,
        stored / (1 << 20) as f64,
        growth / stored,
        (growth - stored) / ENTRIES as f64,
        ENTRIES as f64 / took.as_secs_f64(),
        stats.split_whitespace().collect::<String>(),
    );
    let entries = (warm_up + ENTRIES).to_string();
    assert!(
        stats.contains(&format!("\"entries\":{entries}"))
            || stats.contains(&format!("\"entries\": {entries}")),
        "soapcache did not keep every answer: {stats}"
    );
    let _ = soapcache.kill();
    let _ = soapcache.wait();
    let _ = std::fs::remove_dir_all(&scratch);
    drop(runtime);
}

fn policy_text(policy_key: bool) -> String {
    let key = if policy_key {
        "key = [\"c:PartNumber\"]\n"
    } else {
        ""
    };
    format!(
        "[service]\nname = \"catalog\"\nroute = \"/catalog\"\n\n\
         [namespaces]\nc = \"http://example.org/2001/06/catalog\"\n\n\
         [[operation]]\nelement = \"c:CatalogPriceRequest\"\n{key}"
    )
}

/// The addresses soapcache logs when it starts listening.
fn listening_addresses(stderr: std::process::ChildStderr) -> (SocketAddr, SocketAddr) {
    use std::io::BufRead;
    let (mut proxy, mut admin) = (None, None);
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut log = Vec::new();
    while proxy.is_none() || admin.is_none() {
        let Some(Ok(line)) = lines.next() else {
            panic!("soapcache exited before it listened; its log: {log:#?}");
        };
        log.push(line.clone());
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
    // Keep draining its log, so that soapcache never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (proxy.expect("proxy address"), admin.expect("admin address"))
}

/// Sends one request per number in `parts` (PartNumber `P-nnnnnnnn`), on
/// two keep-alive connections, and checks each was a miss that was stored.
/// Returns the length of the body soapcache stored for each.
fn send_distinct(proxy: SocketAddr, parts: std::ops::Range<usize>) -> usize {
    let halves = [
        parts.start..parts.start + parts.len() / 2,
        parts.start + parts.len() / 2..parts.end,
    ];
    let lengths: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = halves
            .into_iter()
            .map(|half| {
                scope.spawn(move || {
                    let mut stream = TcpStream::connect(proxy).expect("connect to soapcache");
                    stream.set_nodelay(true).expect("nodelay");
                    let mut buffer = vec![0u8; 16 * 1024];
                    let mut length = 0;
                    for part in half {
                        let body = common::request_1k(&format!("P-{part:08}"));
                        let request = format!(
                            "POST /catalog HTTP/1.1\r\nHost: bench\r\n\
                             Content-Type: text/xml; charset=utf-8\r\n\
                             SOAPAction: \"urn:CatalogPriceRequest\"\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let (head, body) =
                            common::exchange(&mut stream, request.as_bytes(), &mut buffer);
                        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                        assert!(head.contains("stored"), "not stored: {head}");
                        length = body.len();
                    }
                    length
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a client thread"))
            .collect()
    });
    lengths.into_iter().max().unwrap_or(0)
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin API");
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut buffer = vec![0u8; 64 * 1024];
    let (head, body) = common::exchange(&mut stream, request.as_bytes(), &mut buffer);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    String::from_utf8_lossy(body).into_owned()
}

/// A catalog service: each answer is 1 KiB once soapcache has removed its
/// `CacheControl` block, which names the request's PartNumber as the key.
async fn start_service() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the service");
    let addr = listener.local_addr().expect("service address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: hyper::Request<Incoming>| async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let part = common::part_number(&body).unwrap_or_default();
                    let mut response =
                        hyper::Response::new(Full::new(Bytes::from(answer_of_1k(&part))));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/xml; charset=utf-8"),
                    );
                    Ok::<_, hyper::Error>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An answer whose body is exactly `BODY` bytes without its control block.
fn answer_of_1k(part: &str) -> String {
    let head = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
        <soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
        <soap:Header>";
    let control = format!(
        "<ca:CacheControl xmlns:ca=\"http://example.org/2001/06/cache\">\
         <ca:CacheKey>{part}</ca:CacheKey><ca:Expires>2099-03-09T08:00:00Z</ca:Expires>\
         </ca:CacheControl>"
    );
    let open = format!(
        "</soap:Header><soap:Body>\
         <c:CatalogPriceResponse xmlns:c=\"http://example.org/2001/06/catalog\">\
         <c:PartNumber>{part}</c:PartNumber><c:Description>"
    );
    let close = "</c:Description></c:CatalogPriceResponse></soap:Body></soap:Envelope>";
    let padding = BODY.saturating_sub(head.len() + open.len() + close.len());
    format!("{head}{control}{open}{}{close}", "x".repeat(padding))
}
