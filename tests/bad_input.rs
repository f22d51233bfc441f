//! Bad requests are answered by soapcache itself with a SOAP fault of the
//! right version and status, and never reach the service (reference §2).

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
    // Cut inside the Envelope start tag: the version comes from text/xml.
    assert_soap11_client_fault(&http.soap(&proxy.url("/"), &request[..40]).await, "");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dtd_is_refused_and_billion_laughs_cannot_expand() {
    let (upstream, proxy, http) = setup().await;
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\"><!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\"><!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:X xmlns:c=\"urn:c\">&lol3;</c:X></soap:Body></soap:Envelope>"
    );
    // The DTD comes before the envelope, so the version is text/xml's:
    // a SOAP 1.1 fault, and so HTTP 500 as the SOAP 1.1 binding requires.
    let answer = http.soap(&proxy.url("/"), &laughs).await;
    assert_soap11_client_fault(&answer, "DTD");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn xml_that_is_not_soap_gets_a_fault() {
    let (upstream, proxy, http) = setup().await;
    let answer = http
        .soap(&proxy.url("/"), "<order><item>1</item></order>")
        .await;
    assert_soap11_client_fault(&answer, "not a SOAP Envelope");
    let empty = http.soap(&proxy.url("/"), "").await;
    assert_eq!(empty.status, 500);
    let binary = http
        .send(
            "POST",
            &proxy.url("/"),
            &[("content-type", "text/xml")],
            vec![0u8, 159, 146, 150, 255],
        )
        .await;
    assert_eq!(binary.status, 500);
    assert_eq!(upstream.count(), 0);
}

/// The form of a fault soapcache answered: `Some(true)` SOAP 1.1,
/// `Some(false)` SOAP 1.2, `None` not a sender fault at all.
fn fault_form(answer: &Answer) -> Option<bool> {
    let text = answer.text();
    if text.contains(SOAP11) && text.contains("<faultcode>soap:Client</faultcode>") {
        Some(true)
    } else if text.contains(SOAP12) && text.contains("<env:Value>env:Sender</env:Value>") {
        Some(false)
    } else {
        None
    }
}

/// Reference §2: the version is the envelope's, else the content type's;
/// a fault in SOAP 1.1 form carries HTTP 500, one in SOAP 1.2 form 400, and
/// a request that names no version gets 400 in 1.2 form.
#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_500_in_soap_11_form_and_400_in_soap_12_form() {
    let (upstream, proxy, http) = setup().await;
    let dtd11 = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e \"e\">]><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:X xmlns:c=\"urn:c\">&e;</c:X></soap:Body></soap:Envelope>"
    );
    let dtd12 = dtd11.replace(SOAP11, SOAP12);
    let unclosed11 = catalog_request("T-1").replace("</c:PartNumber>", "");
    let unclosed12 = soap12_request("T-1").replace("</c:PartNumber>", "");
    let request = catalog_request("T-1");
    let cut_in_start_tag = request[..40].to_owned();
    let deep11 = request.replace(
        "<c:PartNumber>T-1</c:PartNumber>",
        &format!("{}{}", "<c:a>".repeat(300), "</c:a>".repeat(300)),
    );
    let undeclared12 =
        format!("<env:Envelope xmlns:env=\"{SOAP12}\"><env:Body><q:x/></env:Body></env:Envelope>");
    let expired11 = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\"><wsu:Timestamp><wsu:Expires>2001-01-01T00:00:00Z</wsu:Expires></wsu:Timestamp></wsse:Security></soap:Header><soap:Body><c:X xmlns:c=\"urn:c\"/></soap:Body></soap:Envelope>"
    );
    let expired12 = expired11.replace(SOAP11, SOAP12);
    let not_soap = "<order><item>1</item></order>".to_owned();
    let garbage = "<<<>>>".to_owned();
    let empty = String::new();
    // (what, body, the envelope's version when the scan can tell it)
    let bodies: [(&str, &String, Option<bool>); 12] = [
        ("a DTD before a 1.1 envelope", &dtd11, None),
        ("a DTD before a 1.2 envelope", &dtd12, None),
        ("unclosed 1.1", &unclosed11, Some(true)),
        ("unclosed 1.2", &unclosed12, Some(false)),
        ("cut inside the Envelope start tag", &cut_in_start_tag, None),
        ("nested too deep, 1.1", &deep11, Some(true)),
        ("an undeclared prefix, 1.2", &undeclared12, Some(false)),
        ("wsu:Expires passed, 1.1", &expired11, Some(true)),
        ("wsu:Expires passed, 1.2", &expired12, Some(false)),
        ("XML that is not SOAP", &not_soap, None),
        ("garbage", &garbage, None),
        ("an empty body", &empty, None),
    ];
    let content_types: [(&str, Option<bool>); 3] = [
        ("text/xml; charset=utf-8", Some(true)),
        ("application/soap+xml; charset=utf-8", Some(false)),
        ("application/octet-stream", None),
    ];
    for (what, body, envelope) in bodies {
        for (content_type, named) in content_types {
            let answer = http
                .send(
                    "POST",
                    &proxy.url("/"),
                    &[("content-type", content_type)],
                    body.clone(),
                )
                .await;
            let case = format!(
                "{what} as {content_type}: {} {}",
                answer.status,
                answer.text()
            );
            let form = fault_form(&answer).unwrap_or_else(|| panic!("not a sender fault: {case}"));
            let want_11 = envelope.or(named).unwrap_or(false);
            assert_eq!(form, want_11, "form: {case}");
            let status = if form { 500 } else { 400 };
            assert_eq!(
                answer.status, status,
                "1.1 form ⇔ 500, 1.2 form ⇔ 400: {case}"
            );
        }
    }
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
