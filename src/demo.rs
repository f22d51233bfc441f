//! `soapcache demo` (SPEC §9): a built-in catalog price service, soapcache
//! in front of it, a few scripted requests with what happened to each, and
//! then both keep serving so the user can try it with curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::net::TcpListener;

use crate::cli::DemoArgs;
use crate::policy::PolicySet;
use crate::proxy::Settings;
use crate::shutdown::{SignalAction, Signals};

const CATALOG_NS: &str = "http://example.org/2001/06/catalog";
/// How long the example service takes to answer: a slow service is the
/// reason a cache is put in front of it.
const SERVICE_DELAY: Duration = Duration::from_millis(200);

/// What the example service has done: how often it was called and the
/// first body it sent, to show next to what the requester received.
#[derive(Default)]
struct ServiceLog {
    calls: AtomicU64,
    first_sent: Mutex<String>,
}

/// The demo's soapcache: in front of `upstream`, no policies, a 64 MiB
/// cache. Benchmarks that start soapcache in their own process use it too.
pub fn settings(upstream: hyper::Uri) -> Settings {
    Settings {
        default_upstream: Some(upstream),
        policy_path: None,
        cache_size: 64 << 20,
        max_body: 1 << 20,
        upstream_timeout: Duration::from_secs(10),
        debug_headers: false,
        upstream_ca: None,
        client_limits: crate::listener::ClientLimits {
            timeout: Duration::from_secs(30),
            max_connections: 1024,
        },
    }
}

pub async fn run(args: DemoArgs) -> Result<(), String> {
    let log = Arc::new(ServiceLog::default());
    let service_addr = start_catalog_service(log.clone()).await?;
    let service_url = format!("http://{service_addr}/catalog");

    let settings = settings(service_url.parse().map_err(|e| format!("{e}"))?);
    let mut signals = Signals::install()?;
    let listen = free_or_any(args.listen).await;
    let admin = free_or_any(args.admin).await;
    let running =
        crate::server::start(settings, PolicySet::empty(), listen, admin, None, None).await?;
    let proxy_url = format!("http://{}/catalog", running.proxy_addr);

    println!();
    println!("soapcache demo");
    println!("  catalog price service (built in)  {service_url}");
    println!(
        "      answers after {} ms with a CacheControl block: CacheKey = the part number,",
        SERVICE_DELAY.as_millis()
    );
    println!("      Expires = the next 08:00 UTC");
    println!("  soapcache in front of it            {proxy_url}");
    println!(
        "  admin API                           http://{}/stats",
        running.admin_addr
    );
    println!();

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let steps = [
        ("CatalogPriceRequest ABC-1234", request("ABC-1234", false)),
        ("the same request again", request("ABC-1234", false)),
        (
            "same, other prefixes and indentation",
            request("ABC-1234", true),
        ),
        ("CatalogPriceRequest XYZ-9876", request("XYZ-9876", false)),
        (
            "CatalogPriceRequest XYZ-9876 again",
            request("XYZ-9876", false),
        ),
    ];
    println!("  #  request                               X-Cache   time        service calls");
    let mut hit_body = None;
    for (i, (label, body)) in steps.iter().enumerate() {
        let started = Instant::now();
        let (x_cache, answer) = send(&client, &proxy_url, body.clone()).await?;
        let elapsed = started.elapsed();
        println!(
            "  {}  {label:<37} {x_cache:<9} {:>8.3} ms  {}",
            i + 1,
            elapsed.as_secs_f64() * 1e3,
            log.calls.load(Ordering::Relaxed)
        );
        if x_cache == "HIT" && hit_body.is_none() {
            hit_body = Some(answer);
        }
    }
    println!();
    println!("  The service sent for request 1 (CacheControl included):");
    let first = log.first_sent.lock().map(|s| s.clone()).unwrap_or_default();
    println!("{}", indent(&first));
    if let Some(body) = hit_body {
        println!("  The requester received on request 2, a HIT (CacheControl stripped, every other byte as sent):");
        println!("{}", indent(&body));
    }
    println!("  Try it yourself:");
    println!(
        "    curl -si {proxy_url} -H 'Content-Type: text/xml; charset=utf-8' -H 'SOAPAction: \"{CATALOG_NS}/CatalogPrice\"' \\\n      --data '{}'",
        request("ABC-1234", false)
    );
    println!("    curl -s http://{}/stats", running.admin_addr);
    println!();

    if args.once {
        running.shutdown.trigger();
    } else {
        println!("  Serving until Ctrl-C.");
        let shutdown = running.shutdown.clone();
        tokio::spawn(async move {
            // The demo has no policies: SIGHUP has nothing to reload.
            while signals.next().await != SignalAction::Stop {}
            shutdown.trigger();
        });
    }
    running.stopped().await;
    Ok(())
}

/// The requested address when it is free, else any free port on loopback:
/// the demo should run even where 8080 is taken.
async fn free_or_any(addr: SocketAddr) -> SocketAddr {
    match TcpListener::bind(addr).await {
        Ok(probe) => {
            drop(probe);
            addr
        }
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: String,
) -> Result<(String, String), String> {
    let request = Request::post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", format!("\"{CATALOG_NS}/CatalogPrice\""))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("demo request failed: {e}"))?;
    let x_cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((x_cache, String::from_utf8_lossy(&body).into_owned()))
}

fn request(part: &str, reformatted: bool) -> String {
    if reformatted {
        format!(
            "<e:Envelope xmlns:e=\"http://schemas.xmlsoap.org/soap/envelope/\">\n  <e:Body>\n    \
<p:CatalogPriceRequest xmlns:p=\"{CATALOG_NS}\">\n      <p:PartNumber>{part}</p:PartNumber>\n    \
</p:CatalogPriceRequest>\n  </e:Body>\n</e:Envelope>"
        )
    } else {
        format!(
            "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:c=\"{CATALOG_NS}\">\
<soap:Body><c:CatalogPriceRequest><c:PartNumber>{part}</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
        )
    }
}

fn next_eight_utc() -> String {
    let at = crate::lifetime::next_daily(
        time::Time::from_hms(8, 0, 0).unwrap_or(time::Time::MIDNIGHT),
        SystemTime::now(),
    );
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn catalog_response(part: &str, expires: String) -> String {
    // A price derived from the part number, so different parts differ.
    let cents: u32 = part.bytes().map(u32::from).sum::<u32>() * 7 % 10_000;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header>
    <ca:CacheControl xmlns:ca="http://example.org/2001/06/cache">
      <ca:CacheKey>{part}</ca:CacheKey>
      <ca:Expires>{expires}</ca:Expires>
    </ca:CacheControl>
  </soap:Header>
  <soap:Body>
    <c:CatalogPriceResponse xmlns:c="{CATALOG_NS}">
      <c:PartNumber>{part}</c:PartNumber>
      <c:Price currency="USD">{}.{:02}</c:Price>
    </c:CatalogPriceResponse>
  </soap:Body>
</soap:Envelope>"#,
        cents / 100,
        cents % 100
    )
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

/// The example service: `CatalogPriceRequest(PartNumber)` answered after
/// `SERVICE_DELAY`; anything else gets a SOAP fault.
async fn start_catalog_service(log: Arc<ServiceLog>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("cannot start the demo service: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, log.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(
    request: Request<Incoming>,
    log: Arc<ServiceLog>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    log.calls.fetch_add(1, Ordering::Relaxed);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    tokio::time::sleep(SERVICE_DELAY).await;
    let text = String::from_utf8_lossy(&body);
    let part = text
        .split("PartNumber>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let (status, xml) = match part {
        Some(part) => (200, catalog_response(part, next_eight_utc())),
        None => (
            500,
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>expected a CatalogPriceRequest with a PartNumber</faultstring></soap:Fault></soap:Body></soap:Envelope>"#.to_owned(),
        ),
    };
    if let Ok(mut first) = log.first_sent.lock() {
        if first.is_empty() {
            first.clone_from(&xml);
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(xml)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    Ok(response)
}
