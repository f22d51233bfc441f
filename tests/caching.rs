//! Service-directed caching end to end (reference §3–§5): soapcache as a process
//! between a real HTTP client and a real upstream SOAP service on loopback.

mod support;

use std::time::{Duration, SystemTime};

use support::*;

fn serve_in_front_of(upstream: &Upstream) -> Soapcache {
    Soapcache::serve(&["--upstream", &upstream.url()])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_request_is_answered_from_the_cache() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();

    let first = http
        .soap(&proxy.url("/catalog"), &catalog_request("ABC-1234"))
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );

    let second = http
        .soap(&proxy.url("/catalog"), &catalog_request("ABC-1234"))
        .await;
    assert_eq!(second.status, 200);
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(second.header("cache-status"), Some("soapcache; hit"));
    assert!(second.header("age").is_some());
    assert_eq!(
        second.header("content-type"),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.count(), 1, "the hit must not reach the service");

    let other = http
        .soap(&proxy.url("/catalog"), &catalog_request("XYZ-9"))
        .await;
    assert_eq!(other.x_cache(), "MISS");
    assert_eq!(upstream.count(), 2);
}

/// Sends `body` to `addr` as a POST in the given pieces, each after a
/// pause, over a raw connection, and returns the answer's head.
fn post_in_pieces(addr: std::net::SocketAddr, head: &str, pieces: &[&[u8]]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    for piece in pieces {
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(piece).unwrap();
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "closed before an answer");
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).to_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_whose_body_arrives_in_pieces_or_chunked_is_a_hit_too() {
    // A body that came whole with its head is answered on the first look;
    // one that trickles in, or comes chunked, is read first and must find
    // the same entry.
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let request = catalog_request("ABC-1234");
    let first = http.soap(&proxy.url("/catalog"), &request).await;
    let second = http.soap(&proxy.url("/catalog"), &request).await;
    assert_eq!((first.x_cache(), second.x_cache()), ("MISS", "HIT"));

    let addr = proxy.proxy;
    let (in_pieces, chunked) = tokio::task::spawn_blocking(move || {
        let body = request.as_bytes();
        let (front, back) = body.split_at(body.len() / 2);
        let head = format!(
            "POST /catalog HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
             SOAPAction: \"\"\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // The head with half the body, then the rest.
        let in_pieces = post_in_pieces(addr, &(head + &String::from_utf8_lossy(front)), &[back]);
        let head = "POST /catalog HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
                    SOAPAction: \"\"\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunk =
            |part: &[u8]| [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
        let (a, b) = (chunk(front), [chunk(back), b"0\r\n\r\n".to_vec()].concat());
        let chunked = post_in_pieces(addr, head, &[&a, &b]);
        (in_pieces, chunked)
    })
    .await
    .unwrap();
    for answer in [&in_pieces, &chunked] {
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("x-cache: hit"), "{answer}");
    }
    assert_eq!(
        upstream.count(),
        1,
        "the repeats must not reach the service"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_hit_carries_the_content_type_its_service_sent() {
    // Short values are kept once per process and long ones in the entry:
    // both must come back exactly as sent.
    let long = format!("text/xml; charset=utf-8; x-trace=\"{}\"", "t".repeat(300));
    let content_types = [
        "text/xml;charset=UTF-8".to_owned(),
        long,
        "application/xml".to_owned(),
    ];
    let types = content_types.clone();
    let upstream = Upstream::start(move |seen| {
        let part = part_of(&seen.body);
        let n: usize = part.trim_start_matches("T-").parse().unwrap_or(0);
        Reply {
            status: 200,
            headers: vec![("content-type".into(), types[n % types.len()].clone())],
            body: catalog_response(&part, &in_one_hour()).into(),
            delay: Duration::ZERO,
        }
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    for (n, content_type) in content_types.iter().enumerate() {
        let request = catalog_request(&format!("T-{n}"));
        let first = http.soap(&proxy.url("/catalog"), &request).await;
        let second = http.soap(&proxy.url("/catalog"), &request).await;
        assert_eq!((first.x_cache(), second.x_cache()), ("MISS", "HIT"));
        assert_eq!(first.header("content-type"), Some(content_type.as_str()));
        assert_eq!(second.header("content-type"), Some(content_type.as_str()));
        assert_eq!(second.body, first.body);
        assert!(second.text().contains(&format!("T-{n}")));
    }
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_control_block_is_stripped_and_every_other_byte_kept() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();

    let miss = http
        .soap(&proxy.url("/catalog"), &catalog_request("ABC-1234"))
        .await;
    let sent = String::from_utf8(upstream.last_sent().to_vec()).unwrap();
    let block_start = sent.find("<ca:CacheControl").unwrap();
    let block_end = sent.find("</ca:CacheControl>").unwrap() + "</ca:CacheControl>".len();
    let expected = format!("{}{}", &sent[..block_start], &sent[block_end..]);
    assert_eq!(miss.text(), expected);
    assert!(!miss.text().contains("CacheControl"));
    assert!(miss
        .text()
        .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- catalog v2 -->"));

    let hit = http
        .soap(&proxy.url("/catalog"), &catalog_request("ABC-1234"))
        .await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.text(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_differing_only_in_prefixes_and_indentation_share_an_entry() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();

    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("P-1"))
            .await
            .x_cache(),
        "MISS"
    );
    let variant = http
        .soap(&proxy.url("/"), &catalog_request_reformatted("P-1"))
        .await;
    assert_eq!(variant.x_cache(), "HIT");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_that_have_already_expired_are_not_stored() {
    let upstream = Upstream::start(|seen| {
        Reply::xml(
            200,
            catalog_response(&part_of(&seen.body), "2001-03-09T08:00:00Z"),
        )
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    for _ in 0..2 {
        let answer = http.soap(&proxy.url("/"), &catalog_request("OLD-1")).await;
        assert_eq!(answer.x_cache(), "MISS");
        assert_eq!(
            answer.header("cache-status"),
            Some("soapcache; fwd=miss; detail=expired")
        );
        assert!(
            !answer.text().contains("CacheControl"),
            "stripped even when not stored"
        );
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_age_gives_a_lifetime_too() {
    let upstream = Upstream::start(|seen| {
        let part = part_of(&seen.body);
        let body = catalog_response(&part, "x")
            .replace("<ca:Expires>x</ca:Expires>", "<ca:MaxAge>PT1H</ca:MaxAge>");
        Reply::xml(200, body)
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    http.soap(&proxy.url("/"), &catalog_request("AGE-1")).await;
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("AGE-1"))
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_are_never_stored() {
    let fault = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{}</soap:Header><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>price unavailable</faultstring></soap:Fault></soap:Body></soap:Envelope>",
        control_block("F-1", &in_one_hour())
    );
    let upstream = Upstream::start(move |_| Reply::xml(500, fault.clone())).await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    for _ in 0..2 {
        let answer = http.soap(&proxy.url("/"), &catalog_request("F-1")).await;
        assert_eq!(answer.status, 500);
        assert_eq!(answer.x_cache(), "MISS");
        assert!(answer.text().contains("price unavailable"));
        assert!(!answer.text().contains("CacheControl"));
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_fault_is_not_stored_either() {
    let fault = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{}</soap:Header><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>x</faultstring></soap:Fault></soap:Body></soap:Envelope>",
        control_block("F-2", &in_one_hour())
    );
    let upstream = Upstream::start(move |_| Reply::xml(200, fault.clone())).await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    http.soap(&proxy.url("/"), &catalog_request("F-2")).await;
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("F-2"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_with_credentials_are_neither_answered_from_nor_stored_in_the_cache() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let url = proxy.url("/");

    // Stored by an anonymous request ...
    http.soap(&url, &catalog_request("C-1")).await;
    // ... but never handed to a request with credentials.
    let with_auth = http
        .soap_with(
            &url,
            &catalog_request("C-1"),
            &[("authorization", "Basic dTpw")],
        )
        .await;
    assert_eq!(with_auth.x_cache(), "BYPASS");
    assert_eq!(
        with_auth.header("cache-status"),
        Some("soapcache; fwd=bypass; detail=credentials")
    );
    assert_eq!(upstream.count(), 2);
    // The access log says why, too.
    let id = with_auth.header("x-request-id").expect("a request id");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let logs = proxy.logs();
        if let Some(line) = logs.iter().find(|l| l.contains(id)) {
            assert!(
                line.contains("result=\"bypass\" detail=\"credentials\""),
                "{line}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line for {id}: {logs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A credentialed answer is not stored for anyone.
    http.soap_with(
        &url,
        &catalog_request("C-2"),
        &[("authorization", "Bearer t")],
    )
    .await;
    assert_eq!(
        http.soap(&url, &catalog_request("C-2")).await.x_cache(),
        "MISS"
    );
    assert_eq!(upstream.count(), 4);

    // WS-Security in the SOAP header counts as credentials too.
    let wsse = catalog_request("C-3").replace(
        "<soap:Body>",
        "<soap:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\"><wsse:UsernameToken><wsse:Username>u</wsse:Username></wsse:UsernameToken></wsse:Security></soap:Header><soap:Body>",
    );
    let secured = http.soap(&url, &wsse).await;
    assert_eq!(secured.x_cache(), "BYPASS");
    assert_eq!(
        secured.header("cache-status"),
        Some("soapcache; fwd=bypass; detail=credentials")
    );
    assert_eq!(
        http.soap(&url, &catalog_request("C-3")).await.x_cache(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_no_store_and_private_answers_are_not_stored() {
    for directive in ["no-store", "private"] {
        let upstream = Upstream::start(move |seen| {
            Reply::xml(200, catalog_response(&part_of(&seen.body), &in_one_hour()))
                .header("cache-control", directive)
        })
        .await;
        let proxy = serve_in_front_of(&upstream);
        let http = Http::default();
        http.soap(&proxy.url("/"), &catalog_request("N-1")).await;
        let again = http.soap(&proxy.url("/"), &catalog_request("N-1")).await;
        assert_eq!(again.x_cache(), "MISS", "{directive}");
        assert_eq!(upstream.count(), 2, "{directive}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requester_no_cache_refreshes_and_no_store_bypasses() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let url = proxy.url("/");
    http.soap(&url, &catalog_request("R-1")).await;

    let refreshed = http
        .soap_with(
            &url,
            &catalog_request("R-1"),
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(refreshed.x_cache(), "MISS");
    assert_eq!(upstream.count(), 2);
    assert_eq!(
        http.soap(&url, &catalog_request("R-1")).await.x_cache(),
        "HIT"
    );

    let bypass = http
        .soap_with(
            &url,
            &catalog_request("R-2"),
            &[("cache-control", "no-store")],
        )
        .await;
    assert_eq!(bypass.x_cache(), "BYPASS");
    assert_eq!(
        http.soap(&url, &catalog_request("R-2")).await.x_cache(),
        "MISS",
        "no-store stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_addressed_to_another_role_are_left_alone() {
    let upstream = Upstream::start(|seen| {
        let body = catalog_response(&part_of(&seen.body), &in_one_hour()).replace(
            "<ca:CacheControl ",
            "<ca:CacheControl soap:actor=\"urn:some-other-node\" ",
        );
        Reply::xml(200, body)
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let first = http.soap(&proxy.url("/"), &catalog_request("A-1")).await;
    assert!(
        first.text().contains("urn:some-other-node"),
        "not ours to strip"
    );
    assert_eq!(upstream.last_sent(), first.body);
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("A-1"))
            .await
            .x_cache(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_1_2_is_cached_and_its_faults_are_1_2() {
    let upstream = Upstream::start(|seen| {
        let part = part_of(&seen.body);
        let body = format!(
            "<env:Envelope xmlns:env=\"{SOAP12}\"><env:Header>{}</env:Header><env:Body><c:P xmlns:c=\"{CATALOG}\">{part}</c:P></env:Body></env:Envelope>",
            control_block(&part, &in_one_hour())
        );
        Reply::xml(200, body).header("content-type", "application/soap+xml; charset=utf-8")
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let ct = [(
        "content-type",
        "application/soap+xml; charset=utf-8; action=\"urn:price\"",
    )];
    let first = http
        .send("POST", &proxy.url("/"), &ct, soap12_request("S-1"))
        .await;
    assert_eq!(first.x_cache(), "MISS");
    let second = http
        .send("POST", &proxy.url("/"), &ct, soap12_request("S-1"))
        .await;
    assert_eq!(second.x_cache(), "HIT");
    assert_eq!(upstream.count(), 1);

    let broken = http
        .send(
            "POST",
            &proxy.url("/"),
            &ct,
            soap12_request("S-1").replace("</env:Body>", ""),
        )
        .await;
    assert_eq!(broken.status, 400);
    assert!(broken.text().contains("env:Sender"), "{}", broken.text());
    assert!(broken
        .header("content-type")
        .unwrap()
        .starts_with("application/soap+xml"));
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_2001_draft_envelope_is_accepted() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let draft = soap12_request("D-1").replace(SOAP12, "http://www.w3.org/2001/12/soap-envelope");
    let answer = http.soap(&proxy.url("/"), &draft).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.x_cache(), "MISS");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn purging_a_key_makes_the_next_request_a_miss() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    http.soap(&proxy.url("/"), &catalog_request("K-1")).await;
    http.soap(&proxy.url("/"), &catalog_request_reformatted("K-1"))
        .await;
    http.soap(&proxy.url("/"), &catalog_request("K-2")).await;
    assert_eq!(upstream.count(), 2);

    let purged = http
        .admin("DELETE", &proxy.admin_url("/cache?key=K-1"))
        .await;
    assert_eq!(purged.status, 200);
    assert_eq!(json(&purged)["purged"], 1);
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request_reformatted("K-1"))
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("K-2"))
            .await
            .x_cache(),
        "HIT"
    );

    let flushed = http.admin("DELETE", &proxy.admin_url("/cache")).await;
    assert_eq!(json(&flushed)["purged"], 2);
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("K-2"))
            .await
            .x_cache(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_identical_misses_send_one_request_upstream() {
    let upstream = Upstream::slow_catalog(Duration::from_millis(400)).await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let url = proxy.url("/");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.soap(&url, &catalog_request("HOT-1")).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200);
        bodies.push(answer.body);
    }
    assert_eq!(
        upstream.count(),
        1,
        "50 concurrent misses, one upstream request"
    );
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_whose_answer_cannot_be_shared_are_each_forwarded() {
    // No CacheControl: not storable, so every requester gets its own answer.
    let upstream = Upstream::start(|seen| {
        let part = part_of(&seen.body);
        Reply::xml(
            200,
            format!("<s:Envelope xmlns:s=\"{SOAP11}\"><s:Body><r>{part}</r></s:Body></s:Envelope>"),
        )
        .after(Duration::from_millis(200))
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let url = proxy.url("/");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.soap(&url, &catalog_request("U-1")).await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.text().contains("<r>U-1</r>"));
    }
    assert_eq!(upstream.count(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_via_and_forwarded_for() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let answer = http
        .soap_with(
            &proxy.url("/catalog?v=2"),
            &catalog_request("H-1"),
            &[
                ("soapaction", "\"urn:price\""),
                ("connection", "x-secret"),
                ("x-secret", "1"),
            ],
        )
        .await;
    assert_eq!(answer.header("via"), Some("1.1 soapcache"));
    let seen = &upstream.seen()[0];
    assert_eq!(seen.path_and_query, "/catalog?v=2");
    assert_eq!(
        header_values(&seen.headers, "soapaction"),
        ["\"urn:price\""]
    );
    assert_eq!(
        header_values(&seen.headers, "host"),
        [proxy.proxy.to_string()]
    );
    assert!(
        seen.headers.get("x-secret").is_none(),
        "named in Connection: hop-by-hop"
    );
    assert_eq!(header_values(&seen.headers, "via"), ["1.1 soapcache"]);
    assert_eq!(
        header_values(&seen.headers, "x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_requests_such_as_wsdl_pass_through_untouched() {
    let upstream = Upstream::start(|seen| {
        Reply::xml(
            200,
            format!("<definitions name=\"{}\"/>", seen.path_and_query),
        )
        .header("x-from", "upstream")
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let answer = http.send("GET", &proxy.url("/catalog?wsdl"), &[], "").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "<definitions name=\"/catalog?wsdl\"/>");
    assert_eq!(answer.header("x-from"), Some("upstream"));
    assert_eq!(answer.x_cache(), "BYPASS");
    assert_eq!(upstream.seen()[0].method, "GET");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_entries_are_never_served() {
    // MaxAge of one second: fresh at once, expired two seconds later.
    let upstream = Upstream::start(|seen| {
        let body = catalog_response(&part_of(&seen.body), "x")
            .replace("<ca:Expires>x</ca:Expires>", "<ca:MaxAge>1</ca:MaxAge>");
        Reply::xml(200, body)
    })
    .await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let started = SystemTime::now();
    http.soap(&proxy.url("/"), &catalog_request("E-1")).await;
    let again = http.soap(&proxy.url("/"), &catalog_request("E-1")).await;
    if started.elapsed().unwrap() < Duration::from_millis(900) {
        assert_eq!(again.x_cache(), "HIT");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("E-1"))
            .await
            .x_cache(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_requesters_are_served_too() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut results = Vec::new();
    for _ in 0..2 {
        let request = hyper::Request::post(proxy.url("/catalog"))
            .header("content-type", "text/xml; charset=utf-8")
            .body(Full::new(bytes::Bytes::from(catalog_request("H2-1"))))
            .unwrap();
        let response = client.request(request).await.expect("h2c exchange");
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
        results.push(x_cache);
    }
    assert_eq!(results, ["MISS", "HIT"]);
    assert_eq!(upstream.count(), 1);
    // The upstream still gets a Host header: the h2 authority.
    assert_eq!(
        header_values(&upstream.seen()[0].headers, "host"),
        [proxy.proxy.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_1_1_and_1_2_requesters_never_share_an_entry() {
    let upstream = Upstream::catalog().await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("V-1"))
            .await
            .x_cache(),
        "MISS"
    );
    let ct = [("content-type", "application/soap+xml; charset=utf-8")];
    let soap12 = http
        .send("POST", &proxy.url("/"), &ct, soap12_request("V-1"))
        .await;
    assert_eq!(
        soap12.x_cache(),
        "MISS",
        "a 1.1 envelope is no answer to a 1.2 requester"
    );
    assert_eq!(upstream.count(), 2);
}

/// A WS-Addressing-aware catalog: its answer relates to the request's
/// MessageID and has a MessageID of its own, and is cacheable.
fn addressed_answer(seen: &Seen) -> Reply {
    let text = String::from_utf8_lossy(&seen.body).into_owned();
    let request_id = text
        .find("</wsa:MessageID>")
        .map(|end| {
            let start = text[..end].rfind('>').map_or(end, |s| s + 1);
            text[start..end].to_owned()
        })
        .unwrap_or_default();
    Reply::xml(
        200,
        format!(
            "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:wsa=\"http://www.w3.org/2005/08/addressing\"><soap:Header>\
<wsa:Action>urn:price/Response</wsa:Action><wsa:MessageID>urn:uuid:service-answer-1</wsa:MessageID>\
<wsa:RelatesTo>{request_id}</wsa:RelatesTo>{}</soap:Header><soap:Body>\
<c:CatalogPriceResponse xmlns:c=\"{CATALOG}\"><c:Price>9.99</c:Price></c:CatalogPriceResponse></soap:Body></soap:Envelope>",
            control_block(&part_of(&seen.body), &in_one_hour())
        ),
    )
}

fn addressed_request(part: &str, message_id: Option<&str>) -> String {
    let header = message_id.map_or(String::new(), |id| {
        format!("<soap:Header><wsa:MessageID xmlns:wsa=\"http://www.w3.org/2005/08/addressing\">{id}</wsa:MessageID></soap:Header>")
    });
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:c=\"{CATALOG}\">{header}<soap:Body>\
<c:CatalogPriceRequest><c:PartNumber>{part}</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
    )
}

fn between<'t>(text: &'t str, open: &str, close: &str) -> Option<&'t str> {
    text.split(open).nth(1)?.split(close).next()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hit_relates_to_this_requests_message_id_and_has_a_fresh_one() {
    let upstream = Upstream::start(addressed_answer).await;
    let proxy = serve_in_front_of(&upstream);
    let http = Http::default();
    let url = proxy.url("/");

    let first = http
        .soap(&url, &addressed_request("W-1", Some("urn:uuid:first")))
        .await;
    assert_eq!(first.x_cache(), "MISS");
    let first_text = first.text();
    assert_eq!(
        between(&first_text, "<wsa:RelatesTo>", "</wsa:RelatesTo>"),
        Some("urn:uuid:first")
    );

    let second = http
        .soap(&url, &addressed_request("W-1", Some("urn:uuid:second")))
        .await;
    assert_eq!(second.x_cache(), "HIT");
    let text = second.text();
    assert_eq!(
        between(&text, "<wsa:RelatesTo>", "</wsa:RelatesTo>"),
        Some("urn:uuid:second")
    );
    let message_id = between(&text, "<wsa:MessageID>", "</wsa:MessageID>").unwrap();
    assert!(
        message_id.starts_with("urn:uuid:") && message_id != "urn:uuid:service-answer-1",
        "{message_id}"
    );
    // Every other byte as stored.
    let normalize = |t: &str, relates: &str, id: &str| t.replace(relates, "R").replace(id, "M");
    assert_eq!(
        normalize(&text, "urn:uuid:second", message_id),
        normalize(&first_text, "urn:uuid:first", "urn:uuid:service-answer-1")
    );

    // A byte-identical repeat (answered by the fast path) too.
    let again = http
        .soap(&url, &addressed_request("W-1", Some("urn:uuid:second")))
        .await;
    assert_eq!(again.x_cache(), "HIT");
    let again_text = again.text();
    assert_eq!(
        between(&again_text, "<wsa:RelatesTo>", "</wsa:RelatesTo>"),
        Some("urn:uuid:second")
    );
    assert_ne!(
        between(&again_text, "<wsa:MessageID>", "</wsa:MessageID>"),
        Some(message_id),
        "fresh every time"
    );

    // A requester without a MessageID gets no RelatesTo at all.
    let anonymous = http.soap(&url, &addressed_request("W-1", None)).await;
    assert_eq!(anonymous.x_cache(), "HIT");
    assert!(
        !anonymous.text().contains("RelatesTo"),
        "{}",
        anonymous.text()
    );
    assert!(anonymous
        .text()
        .contains("<wsa:Action>urn:price/Response</wsa:Action>"));
    // Ids with characters XML escapes come back escaped.
    let odd = http
        .soap(&url, &addressed_request("W-1", Some("urn:x:a&amp;b")))
        .await;
    assert!(
        odd.text()
            .contains("<wsa:RelatesTo>urn:x:a&amp;b</wsa:RelatesTo>"),
        "{}",
        odd.text()
    );
    assert_eq!(upstream.count(), 1);
}
