//! Memory per stored byte: 100 000 entries of 1 KiB bodies inserted into a
//! `MemoryTier` large enough to keep them all; the process's RSS growth
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
//!   each 1 KiB answer cacheable, and the RSS growth of soapcache's process;
//! - `process-results`: 100 000 queued messages whose 1 KiB answers are kept
//!   for polling and never fetched, with `--results-max-bytes 16MiB`: the
//!   results kept stay within the bound (the oldest evicted and counted)
//!   and soapcache's RSS stays flat (reference §12.2).
//!
//! `cargo bench --bench memory`; run as a test (no `--bench` argument) it
//! only says how to run it.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::header::HeaderValue;

mod common;
// The integration tests' service and soapcache process, for the
// whole-process variants.
#[path = "../tests/support/mod.rs"]
mod support;

use support::{json, part_of, rss_bytes, Http, Reply, ScratchFile, Soapcache, Upstream};

use soapcache::cache::entry::{Entry, Times};
use soapcache::cache::memory::MemoryTier;
use soapcache::key::lookup::{LookupKey, Scope};
use soapcache::soap::SoapVersion;

const ENTRIES: usize = 100_000;
const BODY: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        match args.get(i + 1).map(String::as_str).unwrap_or("link") {
            "process-link" => measure_process(false),
            "process-direct" => measure_process(true),
            "process-results" => measure_results(),
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
        "memory per stored byte: {ENTRIES} entries of {BODY}-byte bodies in a MemoryTier of 1 GiB \
         (cargo bench --bench memory)"
    );
    let exe = std::env::current_exe().expect("current exe");
    let mut failed = false;
    for variant in [
        "link",
        "direct",
        "process-link",
        "process-direct",
        "process-results",
    ] {
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
    rss_bytes(std::process::id()).expect("VmRSS in /proc/self/status") / 1024
}

fn measure(variant: &str) {
    let now = SystemTime::now();
    let expires_at = now + Duration::from_secs(86_400);

    let before = rss_kib();
    let store = MemoryTier::new(1 << 30);
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
        store.insert(
            &lookup,
            &cache_key,
            Entry::new(
                &[&body],
                Some(&content_type),
                Times {
                    stored_at: now,
                    expires_at,
                    stale_if_error: Duration::ZERO,
                    stale_while_revalidate: Duration::ZERO,
                },
            ),
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
/// service, both from the integration tests' support; `ENTRIES` distinct
/// requests, each answer stored (checked on `/stats`); soapcache's RSS
/// growth ÷ stored bodies.
fn measure_process(policy_key: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let service = runtime.block_on(Upstream::start(|seen| {
        Reply::xml(200, answer_of_1k(&part_of(&seen.body)))
    }));
    let policy = ScratchFile::new("memory", "catalog.toml", &policy_text(policy_key));
    // Startup lines only: the access log would cost soapcache memory of its own.
    let soapcache = Soapcache::serve_env(
        &[
            "--cache-size",
            "1GiB",
            "--upstream",
            &service.url(),
            "--policies",
            policy.path_str(),
        ],
        &[("RUST_LOG", "info,soapcache::access=off")],
    );
    let rss = || rss_bytes(soapcache.pid()).expect("soapcache's VmRSS");

    // A warm-up (connections, buffers, the first allocator arenas), then
    // the measured requests, each with its own key.
    let warm_up = 2_000;
    let stored_body = send_distinct(soapcache.proxy, 0..warm_up);
    let before = rss();
    let started = Instant::now();
    send_distinct(soapcache.proxy, warm_up..warm_up + ENTRIES);
    let took = started.elapsed();
    let after = rss();
    let stats = runtime.block_on(async {
        json(
            &Http::default()
                .admin("GET", &soapcache.admin_url("/stats"))
                .await,
        )
    });
    let stored = (ENTRIES * stored_body) as f64;
    let growth = after.saturating_sub(before) as f64;
    let variant = if policy_key {
        "process-direct"
    } else {
        "process-link"
    };
    println!(
        "  {variant:<14} soapcache RSS {:.1} MiB → {:.1} MiB; growth {:.1} MiB for {:.1} MiB of \
         {stored_body}-byte bodies: {:.2} × stored bytes (target ≤ 1.5); {:.0} B overhead per entry; \
         {:.0} requests/s; /stats: {stats}",
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        growth / (1 << 20) as f64,
        stored / (1 << 20) as f64,
        growth / stored,
        (growth - stored) / ENTRIES as f64,
        ENTRIES as f64 / took.as_secs_f64(),
    );
    assert_eq!(
        stats["entries"],
        (warm_up + ENTRIES) as u64,
        "soapcache did not keep every answer"
    );
    drop(soapcache);
    drop(runtime);
}

fn measure_results() {
    const BOUND: u64 = 16 << 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let service = runtime.block_on(Upstream::start(|seen| {
        Reply::xml(200, answer_of_1k(&part_of(&seen.body)))
    }));
    let policy = ScratchFile::new(
        "memory-results",
        "catalog.toml",
        &format!(
            "{}delivery = \"queued\"\nresult_retention = \"1h\"\n",
            policy_text(false)
        ),
    );
    let data = support::DataDir::new("memory-results");
    let soapcache = Soapcache::serve_env(
        &[
            "--upstream",
            &service.url(),
            "--policies",
            policy.path_str(),
            "--data-dir",
            data.path_str(),
            "--results-max-bytes",
            "16MiB",
            "--delivery-concurrency",
            "32",
        ],
        &[("RUST_LOG", "info,soapcache::access=off")],
    );
    let rss = || rss_bytes(soapcache.pid()).expect("soapcache's VmRSS");
    let queue = || {
        runtime.block_on(async {
            json(
                &Http::default()
                    .admin("GET", &soapcache.admin_url("/queue"))
                    .await,
            )
        })
    };
    let drained = |sent: u64| loop {
        let q = queue();
        if q["totals"]["delivered"].as_u64() >= Some(sent) {
            return q;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let warm_up = 20_000;
    send_queued(soapcache.proxy, 0..warm_up);
    drained(warm_up as u64);
    let before = rss();
    let started = Instant::now();
    send_queued(soapcache.proxy, warm_up..warm_up + ENTRIES);
    let q = drained((warm_up + ENTRIES) as u64);
    let took = started.elapsed();
    let after = rss();
    let results = &q["results"];
    println!(
        "  {:<14} {ENTRIES} queued messages with 1 KiB answers never fetched, --results-max-bytes 16MiB: \
         results kept {} ({:.1} MiB ≤ 16 MiB), evicted {}; soapcache RSS {:.1} MiB → {:.1} MiB; \
         {:.0} messages/s accepted and delivered",
        "process-results",
        results["retained"],
        results["bytes"].as_u64().unwrap_or(0) as f64 / (1 << 20) as f64,
        results["evictions"],
        before as f64 / (1 << 20) as f64,
        after as f64 / (1 << 20) as f64,
        ENTRIES as f64 / took.as_secs_f64(),
    );
    assert!(results["bytes"].as_u64().unwrap_or(u64::MAX) <= BOUND);
    assert!(results["evictions"].as_u64().unwrap_or(0) > 0);
    drop(soapcache);
    drop(runtime);
}

/// Sends one queued request per number in `parts` on two keep-alive
/// connections; each must be answered 202.
fn send_queued(proxy: SocketAddr, parts: std::ops::Range<usize>) {
    let halves = [
        parts.start..parts.start + parts.len() / 2,
        parts.start + parts.len() / 2..parts.end,
    ];
    std::thread::scope(|scope| {
        for half in halves {
            scope.spawn(move || {
                let mut stream = TcpStream::connect(proxy).expect("connect to soapcache");
                stream.set_nodelay(true).expect("nodelay");
                let mut buffer = vec![0u8; 16 * 1024];
                for part in half {
                    let body = common::request_1k(&format!("P-{part:08}"));
                    let request = format!(
                        "POST /catalog HTTP/1.1\r\nHost: bench\r\n\
                         Content-Type: text/xml; charset=utf-8\r\n\
                         SOAPAction: \"urn:CatalogPriceRequest\"\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let (head, _) = common::exchange(&mut stream, request.as_bytes(), &mut buffer);
                    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
                }
            });
        }
    });
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
