//! The steps of soapcache's request path, each on its own, on ~1 KB
//! messages: the envelope pass every POST pays, the digest that keys a
//! request without a policy `key`, the response inspection and splice of
//! the miss path, and store lookups among 20 000 entries (10 000 reached
//! through a learned link, 10 000 stored under their selector value), and
//! the memo's recall of a repeat body, which a hit does instead.
//!
//! `cargo bench --bench hot_path` (add `-- --warm-up-time 1
//! --measurement-time 3` for a quick run); see docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hyper::header::HeaderValue;
use smol_str::SmolStr;

mod common;

use soapcache::cache::entry::{Entry, Times};
use soapcache::cache::memo::{Memo, MemoRecord};
use soapcache::cache::memory::{EntryHint, MemoryTier};
use soapcache::key::canonical::digest;
use soapcache::key::lookup::{LookupKey, Scope};
use soapcache::ops::metrics::{CacheResult, Metrics};
use soapcache::proxy::respond::{self, HIT};
use soapcache::soap::control::{inspect_response, splice};
use soapcache::soap::envelope::parse_request;
use soapcache::soap::SoapVersion;
use soapcache::xml::ExpandedName;

fn entry(body: &[u8]) -> Entry {
    let now = SystemTime::now();
    let expires_at = now + Duration::from_secs(86_400);
    Entry::new(
        &[body],
        Some(&HeaderValue::from_static("text/xml; charset=utf-8")),
        Times {
            stored_at: now,
            expires_at,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        },
    )
}

fn scope() -> Arc<Scope> {
    Arc::new(Scope {
        service: Arc::from("default"),
        operation: Arc::from("{http://example.org/2001/06/catalog}CatalogPriceRequest"),
        version: SoapVersion::V11,
        vary: Box::new([]),
    })
}

fn hot_path(c: &mut Criterion) {
    let xml = common::request_1k("ABC-1234");
    let body = xml.as_bytes();
    let envelope = parse_request(body).expect("valid request");
    let op = envelope.operation.clone().expect("operation");

    let mut group = c.benchmark_group("request_1KB");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(body)).unwrap())
    });
    group.bench_function("canonical_digest", |b| {
        b.iter(|| digest(black_box(&op)).unwrap())
    });
    group.bench_function("parse_request+digest", |b| {
        b.iter(|| {
            let envelope = parse_request(black_box(body)).unwrap();
            digest(envelope.operation.as_ref().unwrap()).unwrap()
        })
    });
    group.finish();

    let response = Bytes::from(common::response_1k());
    let mut group = c.benchmark_group("response_1KB");
    group.throughput(Throughput::Bytes(response.len() as u64));
    group.bench_function("inspect_response", |b| {
        b.iter(|| inspect_response(black_box(&response), &[]).unwrap())
    });
    let info = inspect_response(&response, &[]).unwrap();
    assert_eq!(info.strip.len(), 1);
    assert!(info.control.is_some());
    group.bench_function("splice", |b| {
        b.iter(|| splice(black_box(&response), black_box(&info.strip)))
    });
    group.bench_function("inspect_response+splice", |b| {
        b.iter(|| {
            let info = inspect_response(black_box(&response), &[]).unwrap();
            splice(&response, &info.strip)
        })
    });
    group.finish();

    // A hit's answer made from an entry: the stored bytes as they are, or
    // (an answer with WS-Addressing reply headers) with `RelatesTo` and
    // `MessageID` rewritten for this requester (reference §5.3).
    let mut group = c.benchmark_group("hit_answer_1KB");
    let plain = entry(&splice(&response, &info.strip));
    let addressed_xml = common::response_1k().replacen(
        "<soap:Header>",
        "<soap:Header><wsa:MessageID xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da</wsa:MessageID>\
<wsa:RelatesTo xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">urn:uuid:00000000-0000-4000-8000-000000000001</wsa:RelatesTo>",
        1,
    );
    let addressed_bytes = Bytes::from(addressed_xml);
    let addressed_info = inspect_response(&addressed_bytes, &[]).unwrap();
    assert_eq!(
        addressed_info.addressing.len(),
        3,
        "RelatesTo (element, text) and MessageID"
    );
    let stripped = splice(&addressed_bytes, &addressed_info.strip);
    let addressed = Entry::with_addressing(
        &[&stripped],
        Some(&HeaderValue::from_static("text/xml; charset=utf-8")),
        Times {
            stored_at: SystemTime::now(),
            expires_at: SystemTime::now() + Duration::from_secs(86_400),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        },
        &addressed_info.addressing_after_strip(),
    );
    assert!(addressed.has_addressing());
    let now = SystemTime::now();
    let requester = Some("urn:uuid:11111111-2222-4333-8444-555555555555");
    group.bench_function("without_ws_addressing", |b| {
        b.iter(|| respond::from_entry(black_box(&plain), now, &HIT, None, requester))
    });
    group.bench_function("with_ws_addressing", |b| {
        b.iter(|| respond::from_entry(black_box(&addressed), now, &HIT, None, requester))
    });
    group.finish();

    // 10 000 entries as the proxy stores them without a policy key: a
    // learned link from the request digest to the CacheKey, then the entry.
    // Fewer in test mode (`cargo test --all-targets` runs each bench once,
    // unoptimised): the point there is only that it works.
    let entries: u32 = if std::env::args().any(|a| a == "--bench") {
        10_000
    } else {
        1_000
    };
    let store = MemoryTier::new(1 << 30);
    let stored = Bytes::from(vec![b'x'; 800]);
    // As long as `canonical::digest`'s 22 characters.
    let digest_of = |i: u32| -> SmolStr {
        SmolStr::new(&blake3::hash(format!("request {i}").as_bytes()).to_hex()[..22])
    };
    for i in 0..entries {
        let key = LookupKey {
            scope: scope(),
            selector: digest_of(i),
        };
        store.insert(&key, &format!("ABC-{i:05}"), entry(&stored));
    }
    // And as many under a policy key that selects the CacheKey itself.
    for i in 0..entries {
        let key = LookupKey {
            scope: scope(),
            selector: format!("DIRECT-{i:05}").into(),
        };
        store.insert(&key, &key.selector.clone(), entry(&stored));
    }
    let via_link = LookupKey {
        scope: scope(),
        selector: digest_of(321),
    };
    let direct = LookupKey {
        scope: scope(),
        selector: "DIRECT-00321".into(),
    };
    let absent = LookupKey {
        scope: scope(),
        selector: digest_of(99_999),
    };
    assert!(store.lookup(&via_link).is_some());
    assert!(store.lookup(&direct).is_some());
    assert!(store.lookup(&absent).is_none());

    let mut group = c.benchmark_group("store_20k_entries");
    group.bench_function("lookup_hit_via_link", |b| {
        b.iter(|| store.lookup(black_box(&via_link)).unwrap())
    });
    group.bench_function("lookup_hit_direct", |b| {
        b.iter(|| store.lookup(black_box(&direct)).unwrap())
    });
    group.bench_function("lookup_miss", |b| {
        b.iter(|| store.lookup(black_box(&absent)))
    });
    group.finish();

    // The whole key computation of a hit, as the proxy does it without a
    // policy: envelope pass, digest, the lookup key's scope, the lookup.
    let mut group = c.benchmark_group("hit_path_key");
    let key_body = xml.replace("ABC-1234", "ABC-4321");
    let key_digest = {
        let env = parse_request(key_body.as_bytes()).unwrap();
        digest(env.operation.as_ref().unwrap()).unwrap()
    };
    store.insert(
        &LookupKey {
            scope: scope(),
            selector: key_digest,
        },
        "ABC-4321",
        entry(&stored),
    );
    let service: Arc<str> = Arc::from("default");
    group.bench_function("parse+digest+scope+lookup", |b| {
        b.iter(|| {
            let envelope = parse_request(black_box(key_body.as_bytes())).unwrap();
            let op = envelope.operation.as_ref().unwrap();
            let key = LookupKey {
                scope: common::scope_of(&service, op, envelope.version),
                selector: digest(op).unwrap(),
            };
            store.lookup(&key).unwrap()
        })
    });
    // What replaces the line above for a byte-identical repeat: the memo
    // finds the body's key among 10 000 remembered bodies.
    let memo = Memo::new(64 << 20);
    let body = Bytes::from(key_body.clone());
    for i in 0..10_000 {
        let other = Bytes::from(xml.replace("ABC-1234", &format!("XYZ-{i:04}")));
        memo.remember(&other, record(&service));
    }
    memo.remember(&body, record(&service));
    group.bench_function("memo_recall", |b| {
        b.iter(|| memo.recall(&service, black_box(&body)).unwrap())
    });
    group.finish();
}

/// A memo record of the kind the proxy keeps for a repeat body.
fn record(service: &Arc<str>) -> MemoRecord {
    MemoRecord {
        service: service.clone(),
        version: SoapVersion::V11,
        name: ExpandedName {
            namespace: "http://example.org/2001/06/catalog".into(),
            local: "CatalogPriceRequest".into(),
        },
        local_name: "CatalogPriceRequest".into(),
        operation: "{http://example.org/2001/06/catalog}CatalogPriceRequest".into(),
        selector: "0".repeat(22).into(),
        security_header: false,
        write_operation: false,
        expires: None,
        message_id: None,
        hits: Metrics::new().counter(service, None, false, CacheResult::Hit),
        key: None,
        hint: EntryHint::default(),
    }
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
