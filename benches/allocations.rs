//! Heap allocations of the hit path's key computation: the envelope pass,
//! the canonical digest, the lookup key and the store lookup, for one ~1 KB
//! request, counted by a counting global allocator (in this bench target
//! only, so that it slows no other bench).
//!
//! `cargo bench --bench allocations`; run as a test (no `--bench`
//! argument) it only says how to run it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;

mod common;

use soapcache::canonical::digest;
use soapcache::envelope::parse_request;
use soapcache::store::{Entry, LookupKey, Store};

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
    let store = Store::new(1 << 30);
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
        Arc::new(Entry::new(
            Bytes::from(vec![b'x'; 800]),
            Some(Arc::new(HeaderValue::from_static(
                "text/xml; charset=utf-8",
            ))),
            now,
            now + Duration::from_secs(86_400),
            Duration::ZERO,
        )),
    );
    for i in 0..1000 {
        let other = xml.replace("ABC-1234", &format!("XYZ-{i:04}"));
        store.insert(
            &key_of(other.as_bytes()),
            &format!("XYZ-{i:04}"),
            Arc::new(Entry::new(
                Bytes::from(vec![b'y'; 800]),
                None,
                now,
                now + Duration::from_secs(86_400),
                Duration::ZERO,
            )),
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
        "  Store::lookup (hit) {:>6.2} allocations {:>6.0} bytes",
        lookup.0, lookup.1
    );
    println!("allocations per hit-path key computation: {:.0}", all.0);
    println!("bytes allocated per hit-path key computation: {:.0}", all.1);
}
