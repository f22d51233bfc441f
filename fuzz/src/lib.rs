//! Shared pieces of the soapcache fuzz targets (see fuzz/README.md):
//! a heap meter, a generator of equivalent renderings of XML trees, and a
//! generator of SOAP responses with `CacheControl` blocks.

pub mod alloc;
pub mod response;
pub mod xml;

/// Namespace bindings of the policies the selector and policy targets use.
pub fn policy_namespaces() -> Vec<(String, String)> {
    [
        ("c", xml::CATALOG),
        ("p", "urn:a"),
        ("q", "urn:b"),
        ("r", "urn:a"),
        ("xsi", xml::XSI),
    ]
    .iter()
    .map(|(p, u)| (p.to_string(), u.to_string()))
    .collect()
}

/// Small real requests the selector target evaluates expressions on.
pub const REQUESTS: [&str; 3] = [
    r#"<?xml version="1.0"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="http://example.org/2001/06/catalog">
  <soap:Header><c:PartNumber>FROM-HEADER</c:PartNumber></soap:Header>
  <soap:Body>
    <c:CatalogPriceRequest id="r1" xmlns:o="urn:a" o:id="o1">
      <c:PartNumber> ABC-1234 </c:PartNumber>
      <c:Region lang="en">EU</c:Region>
      <c:Items><c:Item n="1">a</c:Item><c:Item n="2">b<![CDATA[<c>]]>&amp;</c:Item></c:Items>
    </c:CatalogPriceRequest>
  </soap:Body>
</soap:Envelope>"#,
    r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><GetRate xmlns="urn:a"><From>EUR</From><To> USD
</To><q:Date xmlns:q="urn:b">2024-01-01</q:Date></GetRate></env:Body></env:Envelope>"#,
    r#"<e:Envelope xmlns:e="http://www.w3.org/2001/12/soap-envelope"><e:Body><Op/></e:Body></e:Envelope>"#,
];

/// With `SOAPCACHE_FUZZ_SHOW=1`, targets print what they generate (run a
/// target on a few corpus files to see what its generator writes).
pub fn show(label: &str, text: &str) {
    use std::sync::OnceLock;
    static SHOW: OnceLock<bool> = OnceLock::new();
    if *SHOW.get_or_init(|| std::env::var_os("SOAPCACHE_FUZZ_SHOW").is_some()) {
        eprintln!("--- {label}\n{text}");
    }
}
