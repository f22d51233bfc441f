//! Key selection cost for a ~1 KB SOAP request: the envelope pass every POST
//! pays, then the policy selector evaluated by the streaming plan and, for
//! comparison, forced through sxd-xpath (document parse + XPath).

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use soapcache::key::selector::Selector;
use soapcache::soap::envelope::parse_request;

/// A realistic request of about 1 KB: a WS-Addressing header, the key deep
/// enough that the pass cannot stop on the first element.
fn request() -> String {
    let mut lines = String::new();
    for i in 0..4 {
        lines.push_str(&format!(
            "<c:Line number=\"{i}\"><c:Sku>SKU-{i:04}</c:Sku><c:Quantity>{}</c:Quantity></c:Line>",
            i + 1
        ));
    }
    let xml = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:wsa="http://www.w3.org/2005/08/addressing">
  <soap:Header>
    <wsa:Action>http://example.org/2001/06/catalog/CatalogPriceRequest</wsa:Action>
    <wsa:MessageID>urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da</wsa:MessageID>
    <wsa:To>http://127.0.0.1:8080/catalog</wsa:To>
  </soap:Header>
  <soap:Body>
    <cat:CatalogPriceRequest xmlns:cat="http://example.org/2001/06/catalog" version="2">
      <cat:Customer tier="gold">ACME Corporation &amp; Sons</cat:Customer>
      <cat:Currency>EUR</cat:Currency>
      <cat:Order xmlns:c="http://example.org/2001/06/catalog">{lines}</cat:Order>
      <cat:PartNumber>ABC-1234</cat:PartNumber>
      <cat:Region>EU-West</cat:Region>
    </cat:CatalogPriceRequest>
  </soap:Body>
</soap:Envelope>"#
    );
    assert!(
        (900..1300).contains(&xml.len()),
        "request is {} bytes",
        xml.len()
    );
    xml
}

fn key_selection(c: &mut Criterion) {
    let xml = request();
    let body = xml.as_bytes();
    let namespaces = vec![(
        "c".to_owned(),
        "http://example.org/2001/06/catalog".to_owned(),
    )];
    let expressions = vec![
        "string(c:PartNumber)".to_owned(),
        "concat(c:Currency, '/', c:Region)".to_owned(),
    ];
    let streaming = Selector::compile(&expressions, &namespaces).expect("compiles");
    assert!(streaming.is_streaming());
    let sxd = Selector::compile_with_sxd_only(&expressions, &namespaces).expect("compiles");

    let envelope = parse_request(body).expect("valid request");
    let op = envelope.operation.expect("operation");
    assert_eq!(streaming.select(&op).unwrap(), sxd.select(&op).unwrap());

    let mut group = c.benchmark_group("key_selection_1KB");
    group.bench_function("parse_request", |b| {
        b.iter(|| parse_request(black_box(body)).unwrap())
    });
    group.bench_function("select_streaming", |b| {
        b.iter(|| streaming.select(black_box(&op)).unwrap())
    });
    group.bench_function("select_sxd_xpath", |b| {
        b.iter(|| sxd.select(black_box(&op)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, key_selection);
criterion_main!(benches);
