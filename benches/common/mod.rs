//! Messages shared by the benchmarks (not a bench target itself), and the
//! processes of the end-to-end ones ([`processes`]).
#![allow(dead_code)]

pub mod processes;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use soapcache::key::lookup::Scope;
use soapcache::soap::envelope::OperationElement;
use soapcache::soap::SoapVersion;

/// The scope the proxy builds for a request it parses (no vary headers):
/// the operation's expanded name formatted anew, as on that path.
pub fn scope_of(service: &Arc<str>, op: &OperationElement<'_>, version: SoapVersion) -> Arc<Scope> {
    Arc::new(Scope {
        service: service.clone(),
        operation: Arc::from(op.name.to_string()),
        version,
        vary: Box::new([]),
    })
}

/// A ~1 KB SOAP 1.1 request: a WS-Addressing header and an operation
/// element with a dozen descendants and a few attributes, prefixes declared
/// on the operation element. `part` is the PartNumber.
pub fn request_1k(part: &str) -> String {
    let mut lines = String::new();
    for i in 0..4 {
        lines.push_str(&format!(
            "\n        <cat:Line number=\"{i}\"><cat:Sku>SKU-{i:04}</cat:Sku><cat:Quantity>{}</cat:Quantity></cat:Line>",
            i + 1
        ));
    }
    let xml = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:wsa="http://www.w3.org/2005/08/addressing">
  <soap:Header>
    <wsa:MessageID>urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da</wsa:MessageID>
  </soap:Header>
  <soap:Body>
    <cat:CatalogPriceRequest xmlns:cat="http://example.org/2001/06/catalog" version="2">
      <cat:PartNumber>{part}</cat:PartNumber>
      <cat:Customer tier="gold">ACME Corporation &amp; Sons</cat:Customer>
      <cat:Currency>EUR</cat:Currency>
      <cat:Order>{lines}
      </cat:Order>
      <cat:Region>EU-West</cat:Region>
    </cat:CatalogPriceRequest>
  </soap:Body>
</soap:Envelope>"#
    );
    assert!(
        (950..1150).contains(&xml.len()),
        "request is {} bytes",
        xml.len()
    );
    xml
}

/// A ~1 KB SOAP 1.1 response with a `CacheControl` block (CacheKey
/// ABC-1234, Expires in 2099) and a second header block that stays.
pub fn response_1k() -> String {
    let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header>
    <ca:CacheControl xmlns:ca="http://example.org/2001/06/cache">
      <ca:CacheKey>ABC-1234</ca:CacheKey>
      <ca:Expires>2099-03-09T08:00:00Z</ca:Expires>
    </ca:CacheControl>
    <wsa:RelatesTo xmlns:wsa="http://www.w3.org/2005/08/addressing">urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da</wsa:RelatesTo>
  </soap:Header>
  <soap:Body>
    <cat:CatalogPriceResponse xmlns:cat="http://example.org/2001/06/catalog">
      <cat:PartNumber>ABC-1234</cat:PartNumber>
      <cat:Description>Hex bolt, M8 x 40 mm, stainless steel A2, DIN 933</cat:Description>
      <cat:Price currency="EUR">42.00</cat:Price>
      <cat:Breaks>
        <cat:Break from="10">40.50</cat:Break>
        <cat:Break from="100">38.00</cat:Break>
        <cat:Break from="1000">35.25</cat:Break>
      </cat:Breaks>
      <cat:Availability warehouse="DE-1">in stock</cat:Availability>
      <cat:LeadTime>P3D</cat:LeadTime>
    </cat:CatalogPriceResponse>
  </soap:Body>
</soap:Envelope>"#
        .to_owned();
    assert!(
        (950..1150).contains(&xml.len()),
        "response is {} bytes",
        xml.len()
    );
    xml
}

/// One HTTP/1.1 exchange on a keep-alive connection: writes `request` (a
/// whole prebuilt request) and reads the answer into `buffer`, allocating
/// nothing. Returns the answer's head and its body.
pub fn exchange<'b>(
    stream: &mut TcpStream,
    request: &[u8],
    buffer: &'b mut [u8],
) -> (&'b str, &'b [u8]) {
    stream.write_all(request).expect("send");
    let mut have = 0;
    let (head_end, length) = loop {
        let read = stream.read(&mut buffer[have..]).expect("receive");
        assert!(read > 0, "the server closed the connection");
        have += read;
        let Some(head_end) = find(&buffer[..have], b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buffer[..head_end]).expect("ASCII head");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length: ")
                    .or_else(|| l.strip_prefix("Content-Length: "))
            })
            .and_then(|v| v.trim().parse().ok())
            .expect("Content-Length");
        if have >= head_end + 4 + length {
            break (head_end, length);
        }
    };
    let (head, rest) = buffer[..have].split_at(head_end);
    let head = std::str::from_utf8(head).expect("ASCII head");
    (head, &rest[4..4 + length])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The text of the first `PartNumber` element of a message.
pub fn part_number(message: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(message).ok()?;
    let start = text.find("PartNumber>")? + "PartNumber>".len();
    let end = start + text[start..].find('<')?;
    Some(text[start..end].to_owned())
}
