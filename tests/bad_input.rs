//! Bad requests are answered by soapcache itself with a SOAP fault of the
//! right version and status, and never reach the service (SPEC §2).

mod support;

use support::*;

async fn setup() -> (Upstream, Soapcache, Http) {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--max-body", "64KiB"]);
    (upstream, proxy, Http::default())
}

fn assert_soap11_client_fault(answer: &Answer, hint: &str) {
    assert_eq!(answer.status, 500, "{}", answer.text());
    assert!(
        answer.text().contains("<faultcode>soap:Client</faultcode>"),
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains(hint),
        "fault should say '{hint}': {}",
        answer.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_xml_gets_a_client_fault_and_is_not_forwarded() {
    let (upstream, proxy, http) = setup().await;
    let unclosed = catalog_request("M-1").replace("</c:PartNumber>", "");
    assert_soap11_client_fault(&http.soap(&proxy.url("/"), &unclosed).await, "malformed");
    // Cut after the Envelope start tag, so the version is known.
    let request = catalog_request("M-1");
    let truncated = &request[..request.find("<c:PartNumber>").unwrap()];
    assert_soap11_client_fault(&http.soap(&proxy.url("/"), truncated).await, "malformed");
    // Cut inside the Envelope start tag: the version is unknown, so 400.
    let answer = http.soap(&proxy.url("/"), &request[..40]).await;
    assert_eq!(answer.status, 400);
    assert!(answer.text().contains("Fault"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dtd_is_refused_and_billion_laughs_cannot_expand() {
    let (upstream, proxy, http) = setup().await;
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:X xmlns:c=\"urn:c\">&lol3;</c:X></soap:Body></soap:Envelope>"
    );
    let answer = http.soap(&proxy.url("/"), &laughs).await;
    assert_eq!(
        answer.status, 400,
        "the DTD comes before the envelope: version unknown → 400"
    );
    assert!(answer.text().contains("DTD"), "{}", answer.text());
    // A DTD inside a recognised 1.1 envelope cannot occur (DOCTYPE precedes
    // the root), so the version is unknown; the fault is still SOAP.
    assert!(answer.text().contains("Fault"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn xml_that_is_not_soap_gets_a_fault() {
    let (upstream, proxy, http) = setup().await;
    let answer = http
        .soap(&proxy.url("/"), "<order><item>1</item></order>")
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.text().contains("not a SOAP Envelope"),
        "{}",
        answer.text()
    );
    let empty = http.soap(&proxy.url("/"), "").await;
    assert_eq!(empty.status, 400);
    let binary = http
        .send(
            "POST",
            &proxy.url("/"),
            &[("content-type", "text/xml")],
            vec![0u8, 159, 146, 150, 255],
        )
        .await;
    assert_eq!(binary.status, 400);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_without_reaching_the_service() {
    let (upstream, proxy, http) = setup().await;
    let big = catalog_request(&"9".repeat(70 * 1024));
    let answer = http.soap(&proxy.url("/"), &big).await;
    assert_eq!(answer.status, 413);
    assert!(answer.text().contains("Fault"));
    assert_eq!(upstream.count(), 0);
    // The connection and the process are fine afterwards.
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("OK-1"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deeply_nested_xml_is_refused() {
    let (upstream, proxy, http) = setup().await;
    let deep = catalog_request("D").replace(
        "<c:PartNumber>D</c:PartNumber>",
        &format!("{}{}", "<c:a>".repeat(300), "</c:a>".repeat(300)),
    );
    let answer = http.soap(&proxy.url("/"), &deep).await;
    assert_eq!(answer.status, 500);
    assert!(answer.text().contains("nesting"), "{}", answer.text());
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_survives_a_stream_of_garbage() {
    let (_upstream, proxy, http) = setup().await;
    let samples = [
        "<", "<<<>>>", "<a", "<?xml?>", "<soap:Envelope>", "&amp;", "<a>&undefined;</a>",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>&#0;</s:Body></s:Envelope>",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><x a='1' a='2'/></s:Body></s:Envelope>",
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><q:x/></s:Body></s:Envelope>",
        "\u{feff}<?xml version='1.0'?><s:Envelope xmlns:s='urn:not-soap'/>",
    ];
    for sample in samples {
        let answer = http.soap(&proxy.url("/"), sample).await;
        assert!(
            answer.status == 400 || answer.status == 500,
            "{sample}: {}",
            answer.status
        );
        assert!(answer.text().contains("Fault"), "{sample}");
    }
    assert_eq!(
        http.admin("GET", &proxy.admin_url("/healthz")).await.status,
        200
    );
}
