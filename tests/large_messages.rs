//! Large and non-XML messages (reference §6): 200 MB each way stream through
//! with soapcache's memory bounded, and SwA/MTOM multipart messages pass
//! byte for byte.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

const MIB: u64 = 1 << 20;
const LARGE: u64 = 200 * MIB;
const CHUNK: usize = 256 * 1024;

type StreamedBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// `prefix`, then filler up to `total` bytes, then `suffix`, made chunk by
/// chunk: never held whole by the test either.
fn generated(prefix: String, total: u64, suffix: &'static str) -> StreamedBody {
    let filler = total - prefix.len() as u64 - suffix.len() as u64;
    let chunk = Bytes::from(vec![b'z'; CHUNK]);
    let full_chunks = filler / CHUNK as u64;
    let tail = (filler % CHUNK as u64) as usize;
    let body = stream::iter([Ok::<_, std::io::Error>(Bytes::from(prefix))])
        .chain(stream::iter(
            (0..full_chunks).map(move |_| Ok(chunk.clone())),
        ))
        .chain(stream::iter([
            Ok(Bytes::from(vec![b'z'; tail])),
            Ok(Bytes::from_static(suffix.as_bytes())),
        ]));
    use futures_util::StreamExt;
    BodyExt::boxed(StreamBody::new(
        body.map(|c: Result<Bytes, std::io::Error>| c.map(Frame::data)),
    ))
}

fn envelope_start(op: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><u:{op} xmlns:u=\"urn:upload\"><u:Data>"
    )
}
const ENVELOPE_END: &str = "</u:Data></u:Upload></soap:Body></soap:Envelope>";

/// An upstream that counts the request bytes it receives without holding
/// them, and answers with a generated 200 MB SOAP response.
async fn counting_upstream(received: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let mut body = request.into_body();
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Some(data) = frame.data_ref() {
                                received.fetch_add(data.len() as u64, Ordering::SeqCst);
                            }
                        }
                        let mut response = hyper::Response::new(generated(
                            format!(
                                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{}</soap:Header><soap:Body><u:UploadResponse xmlns:u=\"urn:upload\"><u:Data>",
                                control_block("BIG", &in_one_hour())
                            ),
                            LARGE,
                            "</u:Data></u:UploadResponse></soap:Body></soap:Envelope>",
                        ));
                        response
                            .headers_mut()
                            .insert("content-type", "text/xml".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_megabytes_each_way_stream_through_in_bounded_memory() {
    let received = Arc::new(AtomicU64::new(0));
    let upstream = counting_upstream(received.clone()).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream, "--max-body", "256MiB"]);
    let rss_before = rss_bytes(proxy.pid()).unwrap();

    let client: Client<_, StreamedBody> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(proxy.url("/upload"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(generated(envelope_start("Upload"), LARGE, ENVELOPE_END))
        .unwrap();
    let response = client.request(request).await.expect("exchange");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-cache"], "BYPASS");
    let mut body = response.into_body();
    let (mut total, mut first) = (0u64, Vec::new());
    let mut peak_rss = rss_before;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("response frame");
        if let Some(data) = frame.data_ref() {
            if first.len() < 512 {
                first.extend_from_slice(&data[..data.len().min(512 - first.len())]);
            }
            total += data.len() as u64;
            if total % (16 * MIB) < data.len() as u64 {
                peak_rss = peak_rss.max(rss_bytes(proxy.pid()).unwrap());
            }
        }
    }
    assert_eq!(
        received.load(Ordering::SeqCst),
        LARGE,
        "the whole request reached the service"
    );
    let block_len = control_block("BIG", &in_one_hour()).len() as u64;
    assert_eq!(
        total,
        LARGE - block_len,
        "the whole answer, its CacheControl cut out"
    );
    assert!(!String::from_utf8_lossy(&first).contains("CacheControl"));
    let growth = peak_rss
        .saturating_sub(rss_before)
        .max(rss_bytes(proxy.pid()).unwrap().saturating_sub(rss_before));
    assert!(growth < 32 * MIB, "RSS grew by {} MiB", growth / MIB);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_request_past_max_body_gets_413() {
    let received = Arc::new(AtomicU64::new(0));
    let upstream = counting_upstream(received.clone()).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream, "--max-body", "8MiB"]);
    let client: Client<_, StreamedBody> = Client::builder(TokioExecutor::new()).build_http();
    // Chunked (no Content-Length), so the limit is found while streaming.
    let request = hyper::Request::post(proxy.url("/upload"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(generated(envelope_start("Upload"), 20 * MIB, ENVELOPE_END))
        .unwrap();
    let response = client.request(request).await.expect("exchange");
    assert_eq!(response.status(), 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_request_that_is_not_soap_is_refused_from_its_first_bytes() {
    let received = Arc::new(AtomicU64::new(0));
    let upstream = counting_upstream(received.clone()).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream, "--max-body", "64MiB"]);
    let client: Client<_, StreamedBody> = Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(proxy.url("/upload"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(generated(
            "<html><body>".to_owned(),
            4 * MIB,
            "</body></html>",
        ))
        .unwrap();
    let response = client.request(request).await.expect("exchange");
    // A SOAP 1.1 fault (text/xml), so 500 as the SOAP 1.1 binding requires.
    assert_eq!(response.status(), 500);
    assert_eq!(received.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_related_messages_pass_byte_for_byte() {
    let boundary = "MIMEBoundary_7c3f";
    let root = catalog_request("MTOM-1");
    let attachment: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    // The attachment first, the root part (named by `start`) second.
    let mut message = format!(
        "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <att1@example.org>\r\n\r\n"
    )
    .into_bytes();
    message.extend_from_slice(&attachment);
    message.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; type=\"text/xml\"\r\nContent-Transfer-Encoding: binary\r\nContent-ID: <root.message@example.org>\r\n\r\n{root}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    let content_type = format!(
        "multipart/related; type=\"application/xop+xml\"; start=\"<root.message@example.org>\"; start-info=\"text/xml\"; boundary=\"{boundary}\""
    );
    let echo_type = content_type.clone();
    let upstream = Upstream::start(move |seen| Reply {
        status: 200,
        headers: vec![("content-type".into(), echo_type.clone())],
        body: seen.body.clone(),
        delay: std::time::Duration::ZERO,
    })
    .await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    let answer = http
        .send(
            "POST",
            &proxy.url("/"),
            &[("content-type", content_type.as_str())],
            message.clone(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.x_cache(), "BYPASS");
    assert_eq!(
        upstream.seen()[0].body,
        message,
        "the request reached the service byte for byte"
    );
    assert_eq!(
        header_values(&upstream.seen()[0].headers, "content-type"),
        std::slice::from_ref(&content_type)
    );
    assert_eq!(
        answer.body, message,
        "and the answer came back byte for byte"
    );
    assert_eq!(answer.header("content-type"), Some(content_type.as_str()));
}
