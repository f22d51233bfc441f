//! Limits with clear answers, and upstreams that misbehave: every case gets
//! a defined answer and nothing of it is stored.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn raw_connect(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A SOAP POST of `body` on a keep-alive connection, as bytes to write.
fn keep_alive_post(body: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: \"\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads until the peer closes or `limit` passes; returns what was read.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trickling_its_headers_is_cut_off() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--client-timeout", "1s"]);
    let addr = proxy.proxy;
    let closed_after = tokio::task::spawn_blocking(move || {
        let mut stream = raw_connect(addr);
        let started = Instant::now();
        stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
        // Never finish the head: the server must give up on its own.
        let _ = read_to_close(&mut stream);
        started.elapsed()
    })
    .await
    .unwrap();
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_after_the_client_timeout() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--client-timeout", "1s"]);
    let addr = proxy.proxy;
    let body = catalog_request("IDLE-1");
    let request = keep_alive_post(&body);
    let (answer, closed_after) = tokio::task::spawn_blocking(move || {
        let mut stream = raw_connect(addr);
        stream.write_all(request.as_bytes()).unwrap();
        let started = Instant::now();
        // The answer, then nothing more from either side until the server
        // closes the connection.
        let answer = read_to_close(&mut stream);
        (answer, started.elapsed())
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
}

/// The watchdog closes idle connections only: a request waiting on a
/// service slower than the client timeout is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_waiting_for_a_slow_service_is_not_idle() {
    let upstream = Upstream::slow_catalog(Duration::from_millis(2500)).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--client-timeout", "1s"]);
    let http = Http::default();
    let answer = http.soap(&proxy.url("/"), &catalog_request("SLOW-1")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.x_cache(), "MISS");
    assert_eq!(upstream.count(), 1);
}

/// A requester that stops reading a large answer is disconnected once
/// nothing more could be written for the client timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_stops_reading_is_disconnected() {
    let big = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><r>{}</r></soap:Body></soap:Envelope>",
        "y".repeat(64 << 20)
    );
    let total = big.len();
    let upstream = Upstream::start(move |_| Reply::xml(200, big.clone())).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--client-timeout", "1s"]);
    let addr = proxy.proxy;
    let body = catalog_request("STALL-1");
    let request = keep_alive_post(&body);
    let read = tokio::task::spawn_blocking(move || {
        let mut stream = raw_connect(addr);
        stream.write_all(request.as_bytes()).unwrap();
        // Read nothing for a while: the socket buffers fill, writing stops.
        std::thread::sleep(Duration::from_secs(4));
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        out.len()
    })
    .await
    .unwrap();
    assert!(read > 0 && read < total, "read {read} of {total} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_trickling_its_body_gets_408() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--client-timeout", "1s"]);
    let addr = proxy.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = raw_connect(addr);
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n\r\n<soap:Env")
            .unwrap();
        read_to_close(&mut stream)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_sent_in_parts_is_read_whole() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let addr = proxy.proxy;
    let body = catalog_request("PARTS-1");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: \"\"\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.split_at(body.len() / 2);
    let (first, rest) = (format!("{head}{first}"), rest.to_owned());
    // The head with half the body, the rest a moment later: the first part
    // is there at once, the whole body is not.
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = raw_connect(addr);
        stream.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stream.write_all(rest.as_bytes()).unwrap();
        read_to_close(&mut stream)
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("PARTS-1"), "{answer}");
    assert_eq!(
        upstream.seen()[0].body,
        body.as_bytes(),
        "the service got the body whole"
    );
    // The same body sent at once selects the same key.
    let http = Http::default();
    assert_eq!(http.soap(&proxy.url("/"), &body).await.x_cache(), "HIT");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_is_read_to_its_last_chunk() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let body = catalog_request("CHUNKS-1");
    let (first, rest) = body.split_at(body.len() / 2);
    // Chunked, and (conflicting, as a smuggling attempt would) a
    // Content-Length exactly as long as the first chunk: the length must
    // not make soapcache take the first chunk for the whole body.
    for content_length in [None, Some(first.len())] {
        let head = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
             SOAPAction: \"\"\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n{}\r\n",
            content_length.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"))
        );
        let start = format!("{head}{:x}\r\n{first}\r\n", first.len());
        let end = format!("{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len());
        let addr = proxy.proxy;
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = raw_connect(addr);
            stream.write_all(start.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let _ = stream.write_all(end.as_bytes());
            read_to_close(&mut stream)
        })
        .await
        .unwrap();
        if answer.starts_with("HTTP/1.1 400") {
            continue; // refused as malformed: also safe
        }
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("CHUNKS-1"), "{answer}");
    }
    // Whatever reached the service was the whole body.
    for seen in upstream.seen() {
        assert_eq!(seen.body, body.as_bytes());
    }
    assert!(upstream.count() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_bound_are_refused_with_503() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--max-connections", "2"]);
    let addr = proxy.proxy;
    let third = tokio::task::spawn_blocking(move || {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = raw_connect(addr);
            stream.write_all(request).unwrap();
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the first two are served");
            held.push(stream);
        }
        let mut third = raw_connect(addr);
        let answer = read_to_close(&mut third);
        drop(held);
        answer
    })
    .await
    .unwrap();
    assert!(third.starts_with("HTTP/1.1 503"), "{third}");
    assert!(third.contains("too many open connections"));
    // Once the others are gone, new connections are served again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        Http::default()
            .soap(&proxy.url("/"), &catalog_request("OK"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_request_heads_get_431() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let big = "x".repeat(100 * 1024);
    let answer = Http::default()
        .soap_with(
            &proxy.url("/"),
            &catalog_request("H"),
            &[("x-big", big.as_str())],
        )
        .await;
    assert_eq!(answer.status, 431);
    assert_eq!(upstream.count(), 0);
}

/// A raw upstream that reads a request head and answers with `response`
/// bytes, then closes: for answers a well-behaved server never gives.
async fn raw_upstream(response: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_breaks_off_mid_answer_gets_a_502_fault() {
    let url = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 500\r\n\r\n<soap:Envelope xmlns:soap=\"http://schemas").await;
    let proxy = Soapcache::serve(&["--upstream", &url]);
    let answer = Http::default()
        .soap(&proxy.url("/"), &catalog_request("CUT"))
        .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.text().contains("<faultcode>soap:Server</faultcode>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_speaks_no_http_gets_a_502_fault() {
    let url = raw_upstream(b"SSH-2.0-OpenSSH_9.0\r\n").await;
    let proxy = Soapcache::serve(&["--upstream", &url]);
    let answer = Http::default()
        .soap(&proxy.url("/"), &catalog_request("NOHTTP"))
        .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(answer.text().contains("Fault"));
}

#[tokio::test(flavor = "multi_thread")]
async fn non_xml_and_5xx_answers_pass_through_and_are_never_stored() {
    for (status, body) in [(200, "plain text, not XML"), (503, "<html>down</html>")] {
        let upstream =
            Upstream::start(move |_| Reply::xml(status, body).header("x-upstream", "yes")).await;
        let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
        let http = Http::default();
        for _ in 0..2 {
            let answer = http.soap(&proxy.url("/"), &catalog_request("P")).await;
            assert_eq!(answer.status, status);
            assert_eq!(answer.text(), body);
            assert_eq!(answer.x_cache(), "MISS");
        }
        assert_eq!(upstream.count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_larger_than_the_buffer_stream_through_unstored() {
    // 9 MiB: past the 8 MiB response buffer, so it streams.
    let big = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{}</soap:Header><soap:Body><r>{}</r></soap:Body></soap:Envelope>",
        control_block("BIG", &in_one_hour()),
        "y".repeat(9 << 20)
    );
    let block = control_block("BIG", "x");
    let expected_len = big.len() - block.len() + "x".len() - in_one_hour().len();
    let upstream = Upstream::start(move |_| Reply::xml(200, big.clone())).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    for _ in 0..2 {
        let answer = http.soap(&proxy.url("/"), &catalog_request("BIG")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body.len(),
            expected_len,
            "the block is cut even from a streamed answer"
        );
        assert!(!answer.body[..200].windows(12).any(|w| w == b"CacheControl"));
        assert!(answer.body.ends_with(b"</r></soap:Body></soap:Envelope>"));
        assert_eq!(answer.x_cache(), "MISS");
    }
    assert_eq!(upstream.count(), 2);
}
