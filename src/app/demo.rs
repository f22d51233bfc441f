//! `soapcache demo` (reference §9): a built-in catalog price service, soapcache
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

use crate::app::cli::DemoArgs;
use crate::app::server::StartError;
use crate::app::shutdown::{SignalAction, Signals};
use crate::app::state::Settings;
use crate::policy::PolicySet;

const CATALOG_NS: &str = "http://example.org/2001/06/catalog";
/// How long the example service takes to answer: a slow service is the
/// reason a cache is put in front of it.
const SERVICE_DELAY: Duration = Duration::from_millis(200);

/// Why the demo stopped short.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot start the demo service: {0}")]
    Service(#[source] std::io::Error),
    #[error("demo request failed: {0}")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("demo answer broke off: {0}")]
    Answer(#[source] hyper::Error),
    #[error("demo request could not be made: {0}")]
    Http(#[from] hyper::http::Error),
    #[error("demo address: {0}")]
    Uri(#[from] hyper::http::uri::InvalidUri),
    #[error("the demo's policy is invalid: {}", .0.join("; "))]
    Policy(Vec<String>),
}

/// What the example services have done: how often the catalog was called
/// and the first body it sent, to show next to what the requester
/// received; when the order service finished an order.
#[derive(Default)]
struct ServiceLog {
    calls: AtomicU64,
    first_sent: Mutex<String>,
    orders: AtomicU64,
    order_done: Mutex<Option<(Instant, String)>>,
}

const ORDERS_NS: &str = "urn:example:orders";
/// How long the order service takes: a write that the requester should not
/// wait for.
const ORDER_DELAY: Duration = Duration::from_millis(300);

/// The demo's one policy: `PlaceOrder` of the order service is queued.
fn orders_policy(service: SocketAddr) -> String {
    format!(
        r#"[service]
name     = "orders"
route    = "/orders"
upstream = "http://{service}/orders"

[namespaces]
o = "{ORDERS_NS}"

[[operation]]
element  = "o:PlaceOrder"
delivery = "queued"
order_by = ["string(o:CustomerId)"]
"#
    )
}

fn place_order(reference: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
<o:PlaceOrder xmlns:o=\"{ORDERS_NS}\"><o:CustomerId>C-42</o:CustomerId><o:OrderRef>{reference}</o:OrderRef>\
<o:Item sku=\"ABC-1234\" quantity=\"2\"/></o:PlaceOrder></soap:Body></soap:Envelope>"
    )
}

/// A directory for the demo's queue, removed when the demo ends.
struct DemoDataDir(std::path::PathBuf);

impl Drop for DemoDataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        client_limits: crate::http::listener::ClientLimits {
            timeout: Duration::from_secs(30),
            max_connections: 1024,
        },
        queue: crate::delivery::QueueSettings::default(),
        shared_cache: None,
    }
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let log = Arc::new(ServiceLog::default());
    let service_addr = start_catalog_service(log.clone()).await?;
    let service_url = format!("http://{service_addr}/catalog");

    let data_dir =
        DemoDataDir(std::env::temp_dir().join(format!("soapcache-demo-{}", std::process::id())));
    let mut settings = settings(service_url.parse()?);
    settings.queue.data_dir = Some(data_dir.0.clone());
    let policy = orders_policy(service_addr);
    let policies = PolicySet::from_text(std::path::Path::new("demo orders policy"), &policy)
        .map_err(|errors| DemoError::Policy(errors.iter().map(ToString::to_string).collect()))?;
    let mut signals = Signals::install()?;
    let listen = free_or_any(args.listen).await;
    let admin = free_or_any(args.admin).await;
    let running = crate::app::server::start(settings, policies, listen, admin, None, None).await?;
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
    let soap_action = format!("\"{CATALOG_NS}/CatalogPrice\"");
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
        let DemoAnswer {
            x_cache,
            body: answer,
            ..
        } = send(&client, &proxy_url, &soap_action, body.clone()).await?;
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
    let orders_url = format!("http://{}/orders", running.proxy_addr);
    write_path(&client, &orders_url, running.admin_addr, &log).await?;

    println!("  Try it yourself:");
    println!(
        "    curl -si {proxy_url} -H 'Content-Type: text/xml; charset=utf-8' -H 'SOAPAction: \"{CATALOG_NS}/CatalogPrice\"' \\\n      --data '{}'",
        request("ABC-1234", false)
    );
    println!(
        "    curl -si {orders_url} -H 'Content-Type: text/xml; charset=utf-8' \\\n      --data '{}'",
        place_order("R-2002")
    );
    println!("    curl -s http://{}/stats", running.admin_addr);
    println!("    curl -s http://{}/queue", running.admin_addr);
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

/// The write path (reference §9, §10): a one-way PlaceOrder answered 202 by
/// soapcache at once, delivered to the slow order service afterwards.
async fn write_path(
    client: &Client<HttpConnector, Full<Bytes>>,
    orders_url: &str,
    admin: SocketAddr,
    log: &ServiceLog,
) -> Result<(), DemoError> {
    println!(
        "  Write path: PlaceOrder is queued (policy: delivery = \"queued\"); the order service takes {} ms",
        ORDER_DELAY.as_millis()
    );
    println!(
        "  #  request                               answer    time        order service calls"
    );
    let action = format!("\"{ORDERS_NS}/PlaceOrder\"");
    let started = Instant::now();
    let answer = send(client, orders_url, &action, place_order("R-1001")).await?;
    let accepted = started.elapsed();
    println!(
        "  6  PlaceOrder R-1001 (one-way)          {} {:<5} {:>8.3} ms  {}",
        answer.status,
        answer.x_cache,
        accepted.as_secs_f64() * 1e3,
        log.orders.load(Ordering::Relaxed)
    );
    println!("     X-Message-Id: {}", answer.message_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let done = log.order_done.lock().map(|d| d.clone()).unwrap_or_default();
        if done.is_some() || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    match done {
        Some((at, id)) => println!(
            "     delivered by soapcache {:.1} ms after the 202, X-Message-Id {}",
            (at - started - accepted).as_secs_f64() * 1e3,
            if id == answer.message_id {
                "the same"
            } else {
                "DIFFERENT"
            }
        ),
        None => println!("     not delivered within 10 s"),
    }
    // The outcome is recorded right after the service's answer.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queue = get(client, &format!("http://{admin}/queue")).await?;
    let totals = serde_json::from_str::<serde_json::Value>(&queue)
        .map(|q| q["totals"].to_string())
        .unwrap_or(queue);
    println!("     GET /queue totals: {totals}");
    println!();
    Ok(())
}

struct DemoAnswer {
    status: u16,
    x_cache: String,
    message_id: String,
    body: String,
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    soap_action: &str,
    body: String,
) -> Result<DemoAnswer, DemoError> {
    let request = Request::post(url)
        .header("content-type", "text/xml; charset=utf-8")
        .header("soapaction", soap_action)
        .body(Full::new(Bytes::from(body)))?;
    let response = client.request(request).await.map_err(DemoError::Request)?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let (status, x_cache, message_id) = (
        response.status().as_u16(),
        header("x-cache"),
        header("x-message-id"),
    );
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(DemoError::Answer)?
        .to_bytes();
    Ok(DemoAnswer {
        status,
        x_cache,
        message_id,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Result<String, DemoError> {
    let request = Request::get(url).body(Full::new(Bytes::new()))?;
    let response = client.request(request).await.map_err(DemoError::Request)?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(DemoError::Answer)?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
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
    let at = crate::cache::lifetime::next_daily(
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
async fn start_catalog_service(log: Arc<ServiceLog>) -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(DemoError::Service)?;
    let addr = listener.local_addr().map_err(DemoError::Service)?;
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
    let is_order = request.uri().path().starts_with("/orders");
    let message_id = request
        .headers()
        .get("x-message-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if is_order {
        log.orders.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(ORDER_DELAY).await;
        if let Ok(mut done) = log.order_done.lock() {
            *done = Some((Instant::now(), message_id));
        }
        let xml = format!("<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><o:PlaceOrderResponse xmlns:o=\"{ORDERS_NS}\"/></soap:Body></soap:Envelope>");
        let mut response = Response::new(Full::new(Bytes::from(xml)));
        response.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        return Ok(response);
    }
    log.calls.fetch_add(1, Ordering::Relaxed);
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
