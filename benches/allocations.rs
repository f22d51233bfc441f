//! Heap allocations of the hit path's key computation: the envelope pass,
//! the canonical digest, the lookup key and the store lookup, for one ~1 KB
//! request, counted by a counting global allocator (in this bench target
//! only, so that it slows no other bench). Then the whole process per
//! answer: soapcache started in this process answering cache hits over a
//! keep-alive connection, against the same service answered directly (the
//! baseline), from a client that itself allocates nothing; and the same per
//! miss, every request going upstream: `Cache-Control: no-cache` (forward,
//! cut out `CacheControl`, store the answer) and `Cache-Control: no-store`
//! (bypass: forward, cut out `CacheControl`, store nothing). The service
//! runs in this process too, so a miss's count includes the service's own
//! answer: the count less the direct one is soapcache's share.
//!
//! `cargo bench --bench allocations`; run as a test (no `--bench`
//! argument) it only says how to run it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

mod common;

use soapcache::cache::entry::{Entry, Times};
use soapcache::cache::memory::MemoryTier;
use soapcache::key::canonical::digest;
use soapcache::key::lookup::LookupKey;
use soapcache::policy::PolicySet;
use soapcache::soap::envelope::parse_request;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A reallocation is an allocation as far as cost goes.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes requested while `f` runs, per call, over `n` calls.
fn count<R>(n: u64, mut f: impl FnMut() -> R) -> (f64, f64) {
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..n {
        black_box(f());
    }
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("allocations benchmark: not run in test mode; run it with `cargo bench --bench allocations`");
        return;
    }
    const N: u64 = 10_000;
    let xml = common::request_1k("ABC-1234");
    let body = xml.as_bytes();

    let now = SystemTime::now();
    let store = MemoryTier::new(1 << 30);
    let service: Arc<str> = Arc::from("default");
    let key_of = |body: &[u8]| {
        let envelope = parse_request(body).unwrap();
        let op = envelope.operation.as_ref().unwrap();
        LookupKey {
            scope: common::scope_of(&service, op, envelope.version),
            selector: digest(op).unwrap(),
        }
    };
    // The entry is stored under the CacheKey the service named, so the
    // lookup goes through a learned link, as in the proxy.
    store.insert(
        &key_of(body),
        "ABC-1234",
        Entry::new(
            &[&[b'x'; 800]],
            Some(&HeaderValue::from_static("text/xml; charset=utf-8")),
            Times {
                stored_at: now,
                expires_at: now + Duration::from_secs(86_400),
                stale_if_error: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
            },
        ),
    );
    for i in 0..1000 {
        let other = xml.replace("ABC-1234", &format!("XYZ-{i:04}"));
        store.insert(
            &key_of(other.as_bytes()),
            &format!("XYZ-{i:04}"),
            Entry::new(
                &[&[b'y'; 800]],
                None,
                Times {
                    stored_at: now,
                    expires_at: now + Duration::from_secs(86_400),
                    stale_if_error: Duration::ZERO,
                    stale_while_revalidate: Duration::ZERO,
                },
            ),
        );
    }
    assert!(store.lookup(&key_of(body)).is_some());

    // Warm up whatever is lazily initialised.
    for _ in 0..100 {
        black_box(store.lookup(&key_of(body)));
    }

    let envelope = parse_request(body).unwrap();
    let op = envelope.operation.clone().unwrap();
    let key = key_of(body);

    let parse = count(N, || parse_request(body).unwrap().version);
    let digest_only = count(N, || digest(&op).unwrap());
    let scope = count(N, || common::scope_of(&service, &op, envelope.version));
    let lookup = count(N, || store.lookup(&key).unwrap());
    let all = count(N, || store.lookup(&key_of(body)).unwrap());

    println!(
        "hit-path key computation for one {}-byte SOAP 1.1 request (mean of {N} runs; \
         no policy key: digest selector, lookup through a learned link):",
        body.len()
    );
    println!(
        "  parse_request       {:>6.2} allocations {:>6.0} bytes",
        parse.0, parse.1
    );
    println!(
        "  canonical::digest   {:>6.2} allocations {:>6.0} bytes",
        digest_only.0, digest_only.1
    );
    println!(
        "  lookup key scope    {:>6.2} allocations {:>6.0} bytes",
        scope.0, scope.1
    );
    println!(
        "  MemoryTier::lookup (hit) {:>6.2} allocations {:>6.0} bytes",
        lookup.0, lookup.1
    );
    println!("allocations per hit-path key computation: {:.0}", all.0);
    println!("bytes allocated per hit-path key computation: {:.0}", all.1);

    whole_process(&xml);
}

/// Allocations per answer of the whole process (proxy, hyper, tokio), for
/// soapcache hits and for the service it fronts answering directly.
fn whole_process(request_body: &str) {
    const N: u64 = 20_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (service, proxy) = runtime.block_on(async {
        let service = start_service().await;
        let settings =
            soapcache::app::demo::settings(format!("http://{service}/catalog").parse().unwrap());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running =
            soapcache::app::server::start(settings, PolicySet::empty(), any, any, None, None)
                .await
                .expect("soapcache starts");
        let proxy = running.proxy_addr;
        // Keep it serving for the rest of the run.
        std::mem::forget(running);
        (service, proxy)
    });
    let request_with = |extra: &str| {
        format!(
            "POST /catalog HTTP/1.1\r\nHost: bench\r\nContent-Type: text/xml; charset=utf-8\r\n\
             SOAPAction: \"http://example.org/2001/06/catalog/CatalogPriceRequest\"\r\n\
             {extra}Content-Length: {}\r\n\r\n{request_body}",
            request_body.len()
        )
    };
    let request = request_with("");
    let direct = per_answer(service, request.as_bytes(), N, "");
    let hits = per_answer(proxy, request.as_bytes(), N, "x-cache: HIT");
    let refresh = request_with("Cache-Control: no-cache\r\n");
    let misses = per_answer(proxy, refresh.as_bytes(), N, "x-cache: MISS");
    let no_store = request_with("Cache-Control: no-store\r\n");
    let bypasses = per_answer(proxy, no_store.as_bytes(), N, "x-cache: BYPASS");
    println!(
        "whole process per answer, one keep-alive connection, {N} requests \
         (soapcache and the service in this process, on one tokio worker):"
    );
    println!(
        "  the service answered directly {:>6.2} allocations {:>6.0} bytes",
        direct.0, direct.1
    );
    println!(
        "  soapcache, cache hit          {:>6.2} allocations {:>6.0} bytes",
        hits.0, hits.1
    );
    for (label, (allocations, bytes)) in [
        ("soapcache, miss and store", misses),
        ("soapcache, bypass", bypasses),
    ] {
        println!(
            "  {label:<29} {allocations:>6.2} allocations {bytes:>6.0} bytes \
             (less the service's answer: {:.2} allocations {:.0} bytes)",
            allocations - direct.0,
            bytes - direct.1
        );
    }
    println!(
        "  (miss and store: request Cache-Control: no-cache, the answer's CacheControl cut out and \
         stored each time; bypass: Cache-Control: no-store)"
    );
    println!(
        "allocations per hit ÷ per direct answer: {:.2}",
        hits.0 / direct.0
    );
    println!(
        "allocations per miss and store ÷ per direct answer: {:.2}",
        misses.0 / direct.0
    );
    println!(
        "allocations per bypass ÷ per direct answer: {:.2}",
        bypasses.0 / direct.0
    );
    drop(runtime);
}

/// A hyper service answering every request with the 1 KB catalog
/// response (`CacheControl` included), as the bench's upstream.
async fn start_service() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Bytes::from(common::response_1k());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request| {
                    let mut response = hyper::Response::new(Full::new(answer.clone()));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        HeaderValue::from_static("text/xml; charset=utf-8"),
                    );
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Sends `request` `n` times over one connection (after a warm-up) and
/// counts the process's allocations meanwhile. The client writes a
/// prebuilt request and reads into a stack buffer: it allocates nothing.
fn per_answer(addr: SocketAddr, request: &[u8], n: u64, expect: &str) -> (f64, f64) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut buffer = [0u8; 16 * 1024];
    let mut exchange = |stream: &mut TcpStream, expect: &str| {
        let (head, _) = common::exchange(stream, request, &mut buffer);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(expect), "{head}");
    };
    // The first answer through soapcache is its miss (or, with a
    // Cache-Control request header, each is).
    for _ in 0..200 {
        exchange(&mut stream, "");
    }
    count(n, || exchange(&mut stream, expect))
}
