//! Memory per stored byte: 100 000 entries of 1 KiB bodies inserted into a
//! `Store` large enough to keep them all; the process's RSS growth
//! (/proc/self/status VmRSS) divided by the body bytes stored. Target ≤ 1.5.
//!
//! Each variant runs in a fresh process (this binary re-executed with
//! `--variant NAME`), so that one's freed memory does not hide the next's:
//! - `link`:   keyed as without a policy `key`: a 64-hex-digit request digest
//!   linked to the `CacheKey` the service named (two cache records);
//! - `direct`: keyed by a policy `key` that selects the `CacheKey` itself.
//!
//! `cargo bench --bench memory`; run as a test (no `--bench` argument) it
//! only says how to run it.

use std::process::Command;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hyper::header::HeaderValue;

use soapcache::envelope::SoapVersion;
use soapcache::store::{Entry, LookupKey, Scope, Store};

const ENTRIES: usize = 100_000;
const BODY: usize = 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        measure(args.get(i + 1).map(String::as_str).unwrap_or("link"));
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
    for variant in ["link", "direct"] {
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
    std::fs::read_to_string("/proc/self/status")
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
            _ => blake3::hash(&body[..8]).to_hex().to_string(),
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
            selector,
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
