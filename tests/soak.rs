//! A bounded soak (reference §2, §4, §5, §8): the real soapcache binary under
//! mixed load from concurrent clients, in front of an upstream that injects
//! faults at random, with a cache small enough that eviction never stops.
//!
//! By default it runs for 20 s so that CI can run it; `SOAK_SECONDS=120`
//! is the documented long run (docs/RELIABILITY.md):
//!
//! ```text
//! SOAK_SECONDS=120 cargo test --release --test soak -- --nocapture
//! ```
//!
//! Load, from `CLIENTS` concurrent tasks: repeat requests over a small hot
//! key space (hits; their entries expire after 2 s, so stale answers and
//! refreshes happen), misses over a large cold key space (so the 2 MiB cache
//! evicts all the time), requests with credentials (bypass), `GET ?wsdl`
//! (streamed pass-through), and bad requests: malformed XML in SOAP 1.1 and
//! 1.2, not XML at all, a DTD, nesting past the depth limit, a body past
//! `--max-body`.
//!
//! The upstream is a raw HTTP/1.1 server on loopback so that it can fail in
//! every way a real one does: SOAP faults (500), a non-SOAP 503, answers
//! slower than `--upstream-timeout`, connections closed after the request
//! was read, and bodies cut short of their `Content-Length`.
//!
//! Checked: every request got an HTTP answer; every answer has a status
//! (and `X-Cache`) its kind allows; the only 5xx soapcache makes itself for
//! a well-formed request are the 502/504 upstream faults; 200 answers are
//! for the part asked; bad requests never reach the upstream; the cache
//! stays within `--cache-size` plus one entry at every sample; resident
//! memory grows less than 64 MiB; `/healthz` still answers at the end.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const CLIENTS: usize = 16;
const CACHE_SIZE: &str = "2MiB";
const CACHE_BYTES: u64 = 2 * 1024 * 1024;
const MAX_BODY: &str = "64KiB";
const MAX_BODY_BYTES: usize = 64 * 1024;
const UPSTREAM_TIMEOUT: &str = "300ms";
/// How long a "slow" upstream answer takes: well past the timeout.
const SLOW: Duration = Duration::from_millis(700);
/// Largest padding in a cacheable answer; the bound allows one entry more.
const MAX_PADDING: usize = 6000;
const RSS_GROWTH_LIMIT: u64 = 64 * 1024 * 1024;
/// Marks bad requests: the upstream counts any body that contains it.
const BAD_MARKER: &str = "BAD-REQUEST-MUST-NOT-BE-FORWARDED";
const HOT_KEYS: u64 = 64;
const COLD_KEYS: u64 = 1_000_000;
const SLOW_KEYS: u64 = 8;
/// How long the upstream takes for the slow keys: within the timeout.
const SLOW_KEY_DELAY: Duration = Duration::from_millis(200);
/// How long an `Abandoned` requester waits.
const PATIENCE: Duration = Duration::from_millis(100);

const POLICY: &str = r#"
[service]
name  = "soak"
route = "/"

[namespaces]
c = "http://example.org/2001/06/catalog"

[defaults]
stale_if_error = "30s"

[[operation]]
element = "c:CatalogPriceRequest"
"#;

// ---------------------------------------------------------------------------
// The faulty upstream

/// What the upstream does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Behaviour {
    Answer,
    SoapFault,
    Unavailable,
    Slow,
    Close,
    Truncate,
}

impl Behaviour {
    fn pick(rng: &mut Rng, method: &str) -> Behaviour {
        match rng.below(100) {
            0..=3 => Behaviour::SoapFault,
            4..=7 => Behaviour::Unavailable,
            8..=9 => Behaviour::Slow,
            10..=11 => Behaviour::Close,
            // A streamed pass-through (GET) cannot turn a body cut short
            // into a fault: its head has already gone to the requester.
            12 if method != "GET" => Behaviour::Truncate,
            _ => Behaviour::Answer,
        }
    }
}

struct FaultyUpstream {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    bad_requests_seen: Arc<AtomicUsize>,
    behaviours: Arc<Mutex<BTreeMap<Behaviour, usize>>>,
}

impl FaultyUpstream {
    async fn start(seed: u64) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let upstream = FaultyUpstream {
            addr,
            requests: Arc::default(),
            bad_requests_seen: Arc::default(),
            behaviours: Arc::default(),
        };
        let rng = Arc::new(Mutex::new(Rng::new(seed ^ 0xD1B5_4A32_D192_ED03)));
        let (requests, bad, behaviours) = (
            upstream.requests.clone(),
            upstream.bad_requests_seen.clone(),
            upstream.behaviours.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rng, requests, bad, behaviours) = (
                    rng.clone(),
                    requests.clone(),
                    bad.clone(),
                    behaviours.clone(),
                );
                tokio::spawn(async move {
                    let _ = serve_connection(stream, rng, requests, bad, behaviours).await;
                });
            }
        });
        upstream
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads requests off one keep-alive connection and answers each as the
/// dice say. Returns on EOF, on a read/write error, or to close on purpose.
async fn serve_connection(
    mut stream: TcpStream,
    rng: Arc<Mutex<Rng>>,
    requests: Arc<AtomicUsize>,
    bad: Arc<AtomicUsize>,
    behaviours: Arc<Mutex<BTreeMap<Behaviour, usize>>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buffer, b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let method = head.split(' ').next().unwrap_or_default().to_owned();
        let header = |name: &str| {
            head.lines().skip(1).find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let body_end = if chunked {
            loop {
                if let Some(i) = find(&buffer[head_end..], b"0\r\n\r\n") {
                    break head_end + i + 5;
                }
                if stream.read_buf(&mut buffer).await? == 0 {
                    return Ok(());
                }
            }
        } else {
            while buffer.len() < head_end + length {
                if stream.read_buf(&mut buffer).await? == 0 {
                    return Ok(());
                }
            }
            head_end + length
        };
        let body = String::from_utf8_lossy(&buffer[head_end..body_end]).into_owned();
        buffer.drain(..body_end);
        requests.fetch_add(1, Ordering::Relaxed);
        if body.contains(BAD_MARKER) {
            bad.fetch_add(1, Ordering::Relaxed);
        }

        let (behaviour, padding) = {
            let mut rng = rng.lock().unwrap();
            (
                Behaviour::pick(&mut rng, &method),
                1000 + rng.below((MAX_PADDING - 1000) as u64) as usize,
            )
        };
        *behaviours.lock().unwrap().entry(behaviour).or_default() += 1;
        let (status, content_type, payload) = match behaviour {
            Behaviour::Close => return Ok(()),
            Behaviour::SoapFault => (
                "500 Internal Server Error",
                "text/xml; charset=utf-8",
                format!(
                    "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>injected SOAP fault</faultstring></soap:Fault></soap:Body></soap:Envelope>"
                ),
            ),
            Behaviour::Unavailable => (
                "503 Service Unavailable",
                "text/plain",
                "injected 503: the service is down for maintenance\n".to_owned(),
            ),
            _ if method == "GET" => (
                "200 OK",
                "text/xml; charset=utf-8",
                "<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\" name=\"soak\"/>".to_owned(),
            ),
            _ => {
                let part = part_of(body.as_bytes());
                // Hot and slow-key entries expire quickly: refreshes,
                // stale answers, waits for one another.
                let max_age = match part.chars().next() {
                    Some('H') => 2,
                    Some('S') => 1,
                    _ => 600,
                };
                (
                    "200 OK",
                    "text/xml; charset=utf-8",
                    format!(
                        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header><ca:CacheControl xmlns:ca=\"http://example.org/2001/06/cache\"><ca:CacheKey>{part}</ca:CacheKey><ca:MaxAge>{max_age}</ca:MaxAge></ca:CacheControl></soap:Header><soap:Body><c:CatalogPriceResponse xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber><c:Note>{}</c:Note></c:CatalogPriceResponse></soap:Body></soap:Envelope>",
                        "x".repeat(padding)
                    ),
                )
            }
        };
        if behaviour == Behaviour::Slow {
            tokio::time::sleep(SLOW).await;
        } else if body.contains("PartNumber>S-") {
            tokio::time::sleep(SLOW_KEY_DELAY).await;
        }
        let mut message = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        if behaviour == Behaviour::Truncate {
            // Half the body it announced, then the connection closes.
            message.push_str(&payload[..payload.len() / 2]);
            stream.write_all(message.as_bytes()).await?;
            return Ok(());
        }
        message.push_str(&payload);
        stream.write_all(message.as_bytes()).await?;
    }
}

// ---------------------------------------------------------------------------
// The clients

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A repeat request over a small key space: HITs.
    Hot,
    /// A request over a large key space: MISSes, evictions.
    Cold,
    /// A hot request with `Authorization`: BYPASS.
    Credentialed,
    /// `GET ?wsdl`: streamed through.
    Wsdl,
    /// A request over a few keys the upstream answers slowly (but within
    /// the timeout), so that identical requests wait for one another.
    SlowKey,
    /// The same, from a requester that gives up after 100 ms: the request
    /// soapcache is fetching for others goes away mid-flight.
    Abandoned,
    Malformed11,
    Malformed12,
    NotXml,
    Dtd,
    TooDeep,
    TooLarge,
}

impl Kind {
    fn pick(rng: &mut Rng) -> Kind {
        match rng.below(100) {
            0..=39 => Kind::Hot,
            40..=64 => Kind::Cold,
            65..=67 => Kind::SlowKey,
            68..=69 => Kind::Abandoned,
            70..=74 => Kind::Credentialed,
            75..=78 => Kind::Wsdl,
            79..=82 => Kind::Malformed11,
            83..=86 => Kind::Malformed12,
            87..=90 => Kind::NotXml,
            91..=94 => Kind::Dtd,
            95..=97 => Kind::TooDeep,
            _ => Kind::TooLarge,
        }
    }

    fn well_formed(self) -> bool {
        matches!(
            self,
            Kind::Hot
                | Kind::Cold
                | Kind::Credentialed
                | Kind::Wsdl
                | Kind::SlowKey
                | Kind::Abandoned
        )
    }
}

/// One request of a kind: method, headers, body, and the part it asks for.
fn make_request(
    kind: Kind,
    rng: &mut Rng,
) -> (&'static str, Vec<(&'static str, String)>, String, String) {
    let soap11 = ("content-type", "text/xml; charset=utf-8".to_owned());
    let soap12 = (
        "content-type",
        "application/soap+xml; charset=utf-8".to_owned(),
    );
    let action = ("soapaction", "\"urn:price\"".to_owned());
    let bad = |body: String| (vec![soap11.clone(), action.clone()], body);
    let (method, part) = ("POST", String::new());
    let (headers, body, part) = match kind {
        Kind::Hot | Kind::Credentialed => {
            let part = format!("H-{}", rng.below(HOT_KEYS));
            let mut headers = vec![soap11.clone(), action.clone()];
            if kind == Kind::Credentialed {
                headers.push(("authorization", format!("Bearer user{}", rng.below(4))));
            }
            let body = if rng.below(2) == 0 {
                catalog_request(&part)
            } else {
                catalog_request_reformatted(&part)
            };
            (headers, body, part)
        }
        Kind::SlowKey | Kind::Abandoned => {
            let part = format!("S-{}", rng.below(SLOW_KEYS));
            (
                vec![soap11.clone(), action.clone()],
                catalog_request(&part),
                part,
            )
        }
        Kind::Cold => {
            let part = format!("C-{}", rng.below(COLD_KEYS));
            (vec![soap11.clone(), action.clone()], catalog_request(&part), part)
        }
        Kind::Wsdl => return ("GET", vec![], String::new(), part),
        Kind::Malformed11 => {
            let (h, b) = bad(format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>{BAD_MARKER}</c:Part></soap:Body></soap:Envelope>"
            ));
            (h, b, part)
        }
        Kind::Malformed12 => (
            vec![soap12],
            format!(
                "<env:Envelope xmlns:env=\"{SOAP12}\"><env:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>{BAD_MARKER}</c:PartNumber></env:Body>"
            ),
            part,
        ),
        Kind::NotXml => {
            let (h, b) = bad(format!("{BAD_MARKER} this is {{not}} XML <at all"));
            (h, b, part)
        }
        Kind::Dtd => {
            let (h, b) = bad(format!(
                "<?xml version=\"1.0\"?><!DOCTYPE lol [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>&lol2;{BAD_MARKER}</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
            ));
            (h, b, part)
        }
        Kind::TooDeep => {
            let depth = 300;
            let (h, b) = bad(format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\">{}{BAD_MARKER}{}</c:CatalogPriceRequest></soap:Body></soap:Envelope>",
                "<c:n>".repeat(depth),
                "</c:n>".repeat(depth)
            ));
            (h, b, part)
        }
        Kind::TooLarge => {
            let (h, b) = bad(format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>{BAD_MARKER}</c:PartNumber><c:Pad>{}</c:Pad></c:CatalogPriceRequest></soap:Body></soap:Envelope>",
                "y".repeat(MAX_BODY_BYTES + 16 * 1024)
            ));
            (h, b, part)
        }
    };
    (method, headers, body, part)
}

/// A fault soapcache made itself (SOAP 1.1 `faultactor` or 1.2 `Role`).
fn is_own_fault(answer: &Answer, code: &str) -> bool {
    let text = answer.text();
    (text.contains("<faultactor>soapcache</faultactor>")
        || text.contains("<env:Role>soapcache</env:Role>"))
        && text.contains(code)
}

/// Whether `answer` is one the request's kind allows; `Err` says why not.
fn check(kind: Kind, part: &str, answer: &Answer) -> Result<(), String> {
    let x_cache = answer.header("x-cache");
    let text = answer.text();
    let allowed = match (kind, answer.status) {
        // Bad requests: a fault from soapcache, never forwarded.
        (Kind::Malformed11 | Kind::TooDeep, 500) => is_own_fault(answer, "soap:Client"),
        (Kind::Malformed12, 400) => is_own_fault(answer, "env:Sender"),
        // Sent as text/xml: the version is SOAP 1.1, so 500 (reference §2).
        (Kind::NotXml | Kind::Dtd, 500) => is_own_fault(answer, "soap:Client"),
        (Kind::TooLarge, 413) => is_own_fault(answer, "soap:Client"),
        (k, _) if !k.well_formed() => false,

        // Answers from the cache or the upstream, for the part asked.
        (Kind::Hot | Kind::Cold | Kind::SlowKey | Kind::Abandoned, 200) => {
            matches!(x_cache, Some("HIT" | "MISS" | "STALE")) && part_of(&answer.body) == part
        }
        (Kind::Credentialed, 200) => x_cache == Some("BYPASS") && part_of(&answer.body) == part,
        (Kind::Wsdl, 200) => x_cache == Some("BYPASS") && text.contains("<definitions"),
        // The upstream's own failures, passed on.
        (_, 500) => {
            matches!(x_cache, Some("MISS" | "BYPASS")) && text.contains("injected SOAP fault")
        }
        (_, 503) => matches!(x_cache, Some("MISS" | "BYPASS")) && text.contains("injected 503"),
        // soapcache's own upstream faults: the only 5xx it may make.
        (_, 502) => x_cache.is_none() && is_own_fault(answer, "soap:Server"),
        (_, 504) => {
            x_cache.is_none() && is_own_fault(answer, "soap:Server") && text.contains("within")
        }
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{kind:?} {part}: unexpected {} X-Cache {:?}: {}",
            answer.status,
            x_cache,
            text.chars().take(300).collect::<String>()
        ))
    }
}

#[derive(Default)]
struct Results {
    /// kind → "status X-Cache" → count
    answers: BTreeMap<Kind, BTreeMap<String, usize>>,
    lost: Vec<String>,
    unexpected: Vec<String>,
    max_latency: Duration,
    /// kind → (total time, longest)
    latency: BTreeMap<Kind, (Duration, Duration)>,
}

async fn client(
    id: usize,
    seed: u64,
    http: Http,
    base: String,
    until: Instant,
    results: Arc<Mutex<Results>>,
) {
    let mut rng = Rng::new(seed.wrapping_add((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    while Instant::now() < until {
        let kind = Kind::pick(&mut rng);
        let (method, headers, body, part) = make_request(kind, &mut rng);
        let url = if kind == Kind::Wsdl {
            format!("{base}?wsdl")
        } else {
            base.clone()
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let limit = if kind == Kind::Abandoned {
            PATIENCE
        } else {
            Duration::from_secs(30)
        };
        let started = Instant::now();
        let outcome = http.try_send(method, &url, &headers, body, limit).await;
        let took = started.elapsed();
        let mut results = results.lock().unwrap();
        results.max_latency = results.max_latency.max(took);
        let slot = results.latency.entry(kind).or_default();
        slot.0 += took;
        slot.1 = slot.1.max(took);
        match outcome {
            Err(_) if kind == Kind::Abandoned => {
                *results
                    .answers
                    .entry(kind)
                    .or_default()
                    .entry("gave up".to_owned())
                    .or_default() += 1;
            }
            Err(e) => results.lost.push(format!("{kind:?}: {e}")),
            Ok(answer) => {
                let label = format!(
                    "{} {}",
                    answer.status,
                    answer.header("x-cache").unwrap_or("-")
                );
                *results
                    .answers
                    .entry(kind)
                    .or_default()
                    .entry(label)
                    .or_default() += 1;
                if let Err(e) = check(kind, &part, &answer) {
                    results.unexpected.push(e);
                }
            }
        }
    }
}

/// Samples of what soapcache reports while the load runs.
#[derive(Default, Debug)]
struct Samples {
    rss: Vec<u64>,
    cache_bytes: Vec<u64>,
    cache_entries: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_mixed_load_with_a_failing_upstream() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = Rng::seed_from_env("SOAK_SEED");
    let upstream = FaultyUpstream::start(seed).await;
    let policy = ScratchFile::new("soak", "soak.toml", POLICY);
    let proxy = Soapcache::serve_env(
        &[
            "--policies",
            policy.path_str(),
            "--upstream",
            &upstream.url(),
            "--cache-size",
            CACHE_SIZE,
            "--max-body",
            MAX_BODY,
            "--upstream-timeout",
            UPSTREAM_TIMEOUT,
        ],
        // An access line per request would only fill the test's memory.
        &[("RUST_LOG", "info,soapcache::access=warn")],
    );
    let pid = proxy.pid();
    let http = Http::default();
    let rss_start = rss_bytes(pid).expect("VmRSS of soapcache");
    println!(
        "soak: {seconds} s, {CLIENTS} clients, seed {seed} (SOAK_SEED={seed}), cache {CACHE_SIZE}, max body {MAX_BODY}, upstream timeout {UPSTREAM_TIMEOUT}"
    );

    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let results = Arc::new(Mutex::new(Results::default()));
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        clients.spawn(client(
            id,
            seed,
            http.clone(),
            proxy.url("/soak"),
            until,
            results.clone(),
        ));
    }
    // Sample memory and the cache gauges every second while the load runs.
    let samples = Arc::new(Mutex::new(Samples::default()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, done, http) = (samples.clone(), done.clone(), http.clone());
        let metrics_url = proxy.admin_url("/metrics");
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rss = rss_bytes(pid);
                let metrics = http
                    .try_send("GET", &metrics_url, &[], "", Duration::from_secs(10))
                    .await;
                let mut s = samples.lock().unwrap();
                s.rss.extend(rss);
                if let Ok(m) = metrics {
                    let text = m.text();
                    s.cache_bytes
                        .extend(metric(&text, "soapcache_cache_bytes").map(|v| v as u64));
                    s.cache_entries
                        .extend(metric(&text, "soapcache_cache_entries").map(|v| v as u64));
                }
            }
        })
    };
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let healthz = http
        .try_send(
            "GET",
            &proxy.admin_url("/healthz"),
            &[],
            "",
            Duration::from_secs(5),
        )
        .await;
    let still_proxies = http
        .try_send(
            "POST",
            &proxy.url("/soak"),
            &[("content-type", "text/xml; charset=utf-8")],
            catalog_request("H-0"),
            Duration::from_secs(5),
        )
        .await;
    let rss_end = rss_bytes(pid).expect("VmRSS of soapcache at the end");
    let stats = json(&http.admin("GET", &proxy.admin_url("/stats")).await);
    let metrics = http.admin("GET", &proxy.admin_url("/metrics")).await.text();
    let m = |name: &str| metric(&metrics, name).unwrap_or(-1.0);

    // ----- the report
    let results = results.lock().unwrap();
    let samples = samples.lock().unwrap();
    let total: usize = results
        .answers
        .values()
        .flat_map(|m| m.values())
        .sum::<usize>()
        + results.lost.len();
    let gave_up = results
        .answers
        .get(&Kind::Abandoned)
        .and_then(|a| a.get("gave up"))
        .copied()
        .unwrap_or(0);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss_peak = samples
        .rss
        .iter()
        .copied()
        .max()
        .unwrap_or(rss_end)
        .max(rss_end);
    let bytes_peak = samples.cache_bytes.iter().copied().max().unwrap_or(0);
    println!(
        "\nsoak report ({:.1} s{})",
        elapsed.as_secs_f64(),
        if seconds >= 60 { ", long run" } else { "" }
    );
    println!("| kind | requests | answers (status X-Cache: count) | mean / max ms |");
    println!("|---|---:|---|---:|");
    for (kind, answers) in &results.answers {
        let n: usize = answers.values().sum();
        let detail: Vec<String> = answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let (sum, max) = results.latency.get(kind).copied().unwrap_or_default();
        println!(
            "| {kind:?} | {n} | {} | {:.1} / {:.0} |",
            detail.join(", "),
            sum.as_secs_f64() * 1000.0 / n.max(1) as f64,
            max.as_secs_f64() * 1000.0
        );
    }
    println!(
        "| **total** | {total} | {:.0} req/s, lost {}, unexpected {} | max {:.0} |",
        total as f64 / elapsed.as_secs_f64(),
        results.lost.len(),
        results.unexpected.len(),
        results.max_latency.as_secs_f64() * 1000.0
    );
    println!(
        "upstream: {} requests reached it, behaviours {:?}, bad requests forwarded {}",
        upstream.requests.load(Ordering::Relaxed),
        upstream.behaviours.lock().unwrap(),
        upstream.bad_requests_seen.load(Ordering::Relaxed)
    );
    println!(
        "RSS: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({} samples)",
        mib(rss_start),
        mib(rss_peak),
        mib(rss_end),
        samples.rss.len()
    );
    println!(
        "cache: entries {} (peak {}), bytes {} (peak {}, bound {} + one entry), evictions {}, coalesced {}, upstream errors {}",
        m("soapcache_cache_entries"),
        samples.cache_entries.iter().max().copied().unwrap_or(0),
        m("soapcache_cache_bytes"),
        bytes_peak,
        CACHE_BYTES,
        m("soapcache_evictions_total"),
        m("soapcache_coalesced_requests_total"),
        m("soapcache_upstream_errors_total"),
    );
    println!(
        "/stats: entries {} bytes {} hits {} misses {} hit_ratio {} evictions {}",
        stats["entries"],
        stats["bytes"],
        stats["hits"],
        stats["misses"],
        stats["hit_ratio"],
        stats["evictions"]
    );
    println!(
        "soapcache_requests_total (sum over labels) {}, requests sent {total}",
        m("soapcache_requests_total")
    );

    // ----- the assertions
    assert!(
        results.lost.is_empty(),
        "{} requests got no HTTP answer; the first: {:#?}",
        results.lost.len(),
        &results.lost[..results.lost.len().min(10)]
    );
    assert!(
        results.unexpected.is_empty(),
        "{} unexpected answers; the first: {:#?}",
        results.unexpected.len(),
        &results.unexpected[..results.unexpected.len().min(10)]
    );
    assert_eq!(
        upstream.bad_requests_seen.load(Ordering::Relaxed),
        0,
        "bad requests reached the upstream"
    );
    assert!(
        matches!(&healthz, Ok(a) if a.status == 200),
        "/healthz after the run: {healthz:?}"
    );
    assert!(
        matches!(&still_proxies, Ok(a) if a.status < 600),
        "the proxy after the run: {still_proxies:?}"
    );
    let one_entry = (MAX_PADDING + 2048) as u64;
    for bytes in samples
        .cache_bytes
        .iter()
        .chain(std::iter::once(&(m("soapcache_cache_bytes") as u64)))
    {
        assert!(
            *bytes <= CACHE_BYTES + one_entry,
            "soapcache_cache_bytes {bytes} past the bound {CACHE_BYTES} + {one_entry}"
        );
    }
    assert!(
        m("soapcache_evictions_total") > 0.0,
        "the cache never evicted: the test did not test the bound"
    );
    assert!(
        rss_end.saturating_sub(rss_start) < RSS_GROWTH_LIMIT,
        "RSS grew from {rss_start} to {rss_end} bytes"
    );
    // soapcache counts a request when it answers it: requesters that gave
    // up may or may not have been counted.
    let counted = m("soapcache_requests_total") as usize;
    assert!(
        counted <= total + 1 && counted + gave_up > total,
        "soapcache counted {counted} requests; {total} were sent ({gave_up} abandoned) plus one after the run"
    );
    // Every kind of answer was exercised.
    let seen = |kind: Kind, label: &str| {
        results
            .answers
            .get(&kind)
            .is_some_and(|a| a.keys().any(|k| k.starts_with(label)))
    };
    for (kind, label) in [
        (Kind::Hot, "200 HIT"),
        (Kind::Cold, "200 MISS"),
        (Kind::Credentialed, "200 BYPASS"),
        (Kind::Wsdl, "200 BYPASS"),
        (Kind::TooLarge, "413"),
        (Kind::SlowKey, "200 HIT"),
        (Kind::Abandoned, "gave up"),
    ] {
        assert!(seen(kind, label), "no {label} answer for {kind:?}");
    }
    if seconds >= 10 {
        for label in ["200 STALE", "502", "504", "500 MISS", "503 MISS"] {
            assert!(
                seen(Kind::Hot, label) || seen(Kind::Cold, label),
                "no {label} answer in {seconds} s"
            );
        }
    }
}
