//! Isolation, as a property (reference §3–§5): whatever the interleaving, an
//! answer soapcache gives belongs to the request it answers.
//!
//! A seeded xorshift generates a few thousand requests, sent concurrently
//! in batches, with random part numbers (a small key space, so hits
//! happen), random `X-Tenant` values, random credentials and cookies, and
//! random prefix / whitespace / attribute-order variants of the same
//! request. The policy varies `CatalogPriceRequest` by tenant, leaves
//! `StockRequest` shared by every tenant, and varies `AccountRequest` by
//! `Authorization`, tenant and `Cookie`. The upstream echoes everything that
//! identifies the request (operation, part, every tenant, authorization and
//! cookie value, a serial number), opens a session (`Set-Cookie`) on some
//! answers at random, and marks each answer cacheable with `CacheKey` = the
//! part number alone: deliberately *not* unique per tenant or credential, so
//! that only soapcache's scoping by vary values keeps answers apart.
//!
//! `ISOLATION_SEED=n` replays a seed (the interleaving still depends on
//! scheduling); `ISOLATION_REQUESTS=n` changes the number of requests.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    /// Varies by `X-Tenant`; not shared with credentials.
    Price,
    /// Varies by nothing: one answer for every tenant; not shared with credentials.
    Stock,
    /// Varies by `Authorization`, `X-Tenant` and `Cookie`: cached per
    /// credential.
    Account,
}

impl Op {
    fn element(self) -> &'static str {
        match self {
            Op::Price => "CatalogPriceRequest",
            Op::Stock => "StockRequest",
            Op::Account => "AccountRequest",
        }
    }
    fn varies_by_tenant(self) -> bool {
        matches!(self, Op::Price | Op::Account)
    }
    fn cached_with_credentials(self) -> bool {
        self == Op::Account
    }
    fn of_request(body: &str) -> Op {
        [Op::Price, Op::Stock, Op::Account]
            .into_iter()
            .find(|op| body.contains(op.element()))
            .unwrap_or_else(|| panic!("no known operation in {body}"))
    }
}

const POLICY: &str = r#"
[service]
name  = "iso"
route = "/"

[namespaces]
c = "http://example.org/2001/06/catalog"

[[operation]]
element      = "c:CatalogPriceRequest"
vary_headers = ["X-Tenant"]

[[operation]]
element = "c:StockRequest"

[[operation]]
element      = "c:AccountRequest"
vary_headers = ["Authorization", "X-Tenant", "Cookie"]
"#;

const PARTS: &[&str] = &["P-0", "P-1", "P-2", "P-3", "P-4", "P-5", "P-6"];
/// `""` is sent as an empty `X-Tenant:` header, distinct from none at all.
const TENANTS: &[Option<&str>] = &[None, Some("t1"), Some("t2"), Some("T1"), Some("")];
const CREDENTIALS: &[Option<&str>] = &[
    None,
    None,
    Some("Bearer alice"),
    Some("Bearer bob"),
    Some("bearer alice"),
];
/// Rarer than credentials: a cookie keeps most operations out of the cache.
const COOKIES: &[Option<&str>] = &[
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    Some("JSESSIONID=alice"),
    Some("JSESSIONID=bob"),
];

/// One generated request.
#[derive(Debug, Clone)]
struct Generated {
    index: usize,
    op: Op,
    part: &'static str,
    tenant: Option<&'static str>,
    auth: Option<&'static str>,
    cookie: Option<&'static str>,
    style: u64,
    cache_control: Option<&'static str>,
}

impl Generated {
    fn random(index: usize, rng: &mut Rng) -> Generated {
        let op = *rng.pick(&[Op::Price, Op::Price, Op::Stock, Op::Account, Op::Account]);
        Generated {
            index,
            op,
            part: PARTS[rng.below(PARTS.len() as u64) as usize],
            tenant: *rng.pick(TENANTS),
            auth: *rng.pick(CREDENTIALS),
            cookie: *rng.pick(COOKIES),
            style: rng.below(STYLES),
            cache_control: match rng.below(100) {
                0..=2 => Some("no-cache"),
                3..=4 => Some("no-store"),
                _ => None,
            },
        }
    }

    fn body(&self) -> String {
        request_body(self.op.element(), self.part, self.style)
    }

    /// What the echo must show for the tenant: every `X-Tenant` value in
    /// brackets, `""` for none at all.
    fn tenant_echo(&self) -> String {
        self.tenant.map_or_else(String::new, |t| format!("[{t}]"))
    }

    fn auth_echo(&self) -> String {
        self.auth.map_or_else(String::new, |a| format!("[{a}]"))
    }

    fn cookie_echo(&self) -> String {
        self.cookie.map_or_else(String::new, |c| format!("[{c}]"))
    }

    /// The `X-Cache` values this request may be answered with.
    fn expected_x_cache(&self) -> &'static [&'static str] {
        let credentials = self.auth.is_some() || self.cookie.is_some();
        let shareable = !credentials || self.op.cached_with_credentials();
        match self.cache_control {
            _ if !shareable => &["BYPASS"],
            Some("no-store") => &["BYPASS"],
            Some(_) => &["MISS"],
            None => &["HIT", "MISS"],
        }
    }
}

const STYLES: u64 = 6;

/// The same request in one of `STYLES` spellings that reference §3 says share a
/// key: other prefixes, a default namespace, declarations elsewhere,
/// indentation, comments, attribute order.
fn request_body(op: &str, part: &str, style: u64) -> String {
    match style {
        0 => format!(
            "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:c=\"{CATALOG}\"><soap:Body><c:{op} c:rev=\"2\" lang=\"en\"><c:PartNumber>{part}</c:PartNumber></c:{op}></soap:Body></soap:Envelope>"
        ),
        1 => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<env:Envelope xmlns:env=\"{SOAP11}\">\n  <env:Body>\n    <{op} xmlns=\"{CATALOG}\" xmlns:k=\"{CATALOG}\" lang=\"en\" k:rev=\"2\">\n      <PartNumber>{part}</PartNumber>\n    </{op}>\n  </env:Body>\n</env:Envelope>\n"
        ),
        2 => format!(
            "<s:Envelope xmlns:s=\"{SOAP11}\">\r\n\t<s:Header/>\r\n\t<s:Body xmlns:cat=\"{CATALOG}\">\r\n\t\t<cat:{op}   lang=\"en\"\tcat:rev=\"2\" >\r\n\t\t\t<cat:PartNumber>{part}</cat:PartNumber>\r\n\t\t</cat:{op}>\r\n\t</s:Body>\r\n</s:Envelope>"
        ),
        3 => format!(
            "<?xml version='1.0'?><e:Envelope xmlns:e='{SOAP11}' xmlns:x='{CATALOG}'><e:Body><!-- request --><x:{op} x:rev='2' lang='en'><!-- part --><x:PartNumber>{part}</x:PartNumber>\n</x:{op}></e:Body></e:Envelope>"
        ),
        4 => format!(
            "<soapenv:Envelope xmlns:soapenv=\"{SOAP11}\">\n<soapenv:Header></soapenv:Header>\n<soapenv:Body>\n<ns1:{op} xmlns:ns1=\"{CATALOG}\" ns1:rev=\"2\" lang=\"en\"><ns1:PartNumber xmlns:ns1=\"{CATALOG}\">{part}</ns1:PartNumber></ns1:{op}>\n</soapenv:Body>\n</soapenv:Envelope>\n"
        ),
        _ => format!(
            "<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"{SOAP11}\"><SOAP-ENV:Body><m:{op} lang=\"en\" m:rev=\"2\" xmlns:m=\"{CATALOG}\">   <m:PartNumber>{part}</m:PartNumber>   </m:{op}></SOAP-ENV:Body></SOAP-ENV:Envelope>"
        ),
    }
}

/// The text between `<c:{name}>` and `</c:{name}>` in an echo.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<c:{name}>");
    let close = format!("</c:{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(&text[start..end])
}

/// The text content of the first `PartNumber` element, whatever its prefix
/// and attributes.
fn part_in(body: &str) -> String {
    body.split_once("PartNumber")
        .and_then(|(_, rest)| rest.split_once('>'))
        .and_then(|(_, rest)| rest.split_once('<'))
        .map(|(part, _)| part.to_owned())
        .unwrap_or_default()
}

/// Every value of a header, each in brackets, in order.
fn bracketed(seen: &Seen, name: &str) -> String {
    header_values(&seen.headers, name)
        .iter()
        .map(|v| format!("[{v}]"))
        .collect()
}

/// The serial numbers of the answers that set a cookie.
type Sessions = Arc<Mutex<std::collections::HashSet<usize>>>;

/// The echoing upstream. Returns it, the map from serial number to the
/// body the requester must receive (the sent body less its `CacheControl`),
/// and the answers that opened a session.
async fn echo_upstream(seed: u64) -> (Upstream, Arc<Mutex<HashMap<usize, String>>>, Sessions) {
    let serials = Arc::new(AtomicUsize::new(0));
    let expected: Arc<Mutex<HashMap<usize, String>>> = Arc::default();
    let record = expected.clone();
    let sessions: Sessions = Arc::default();
    let opened = sessions.clone();
    let delays = Arc::new(Mutex::new(Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15)));
    let upstream = Upstream::start(move |seen| {
        let serial = serials.fetch_add(1, Ordering::SeqCst) + 1;
        let body = String::from_utf8_lossy(&seen.body);
        let op = Op::of_request(&body).element();
        let part = part_in(&body);
        let tenant = bracketed(seen, "x-tenant");
        let auth = bracketed(seen, "authorization");
        let cookie = bracketed(seen, "cookie");
        let control = control_block(&part, &in_one_hour());
        let answer = |control: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{control}</soap:Header><soap:Body><c:{op}Response xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber><c:Tenant>{tenant}</c:Tenant><c:Auth>{auth}</c:Auth><c:Cookie>{cookie}</c:Cookie><c:Serial>{serial}</c:Serial></c:{op}Response></soap:Body></soap:Envelope>\n"
            )
        };
        record.lock().unwrap().insert(serial, answer(""));
        // 0–4 ms: long enough for identical requests to overlap and coalesce.
        let (delay, session) = {
            let mut rng = delays.lock().unwrap();
            (Duration::from_micros(rng.below(4000)), rng.below(16) == 0)
        };
        let reply = Reply::xml(200, answer(&control)).after(delay);
        if session {
            opened.lock().unwrap().insert(serial);
            return reply.header("set-cookie", &format!("JSESSIONID=s{serial}; Path=/"));
        }
        reply
    })
    .await;
    (upstream, expected, sessions)
}

#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    by_x_cache: BTreeMap<String, usize>,
    by_op: BTreeMap<String, BTreeMap<String, usize>>,
    credentialed: usize,
    credentialed_hits: usize,
    cookie_hits: usize,
    sessions_opened: usize,
    tenant_checked: usize,
    coalesced: usize,
}

/// soapcache in front of `upstream` with the test's policy (kept in a
/// scratch file that lives as long as the returned guard).
fn serve_with_policy(name: &str, upstream: &Upstream, extra: &[&str]) -> (Soapcache, ScratchFile) {
    let policy = ScratchFile::new(name, "iso.toml", POLICY);
    let upstream = upstream.url();
    let mut args = vec!["--policies", policy.path_str(), "--upstream", &upstream];
    args.extend_from_slice(extra);
    let proxy = Soapcache::serve(&args);
    (proxy, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_belongs_to_the_request_it_answers() {
    let seed = Rng::seed_from_env("ISOLATION_SEED");
    let (upstream, expected_bodies, sessions) = echo_upstream(seed).await;
    let (proxy, _policy) = serve_with_policy("isolation", &upstream, &[]);
    check_isolation(seed, &[&proxy], &upstream, &expected_bodies, &sessions).await;
}

/// The same property across two instances sharing one Redis (reference
/// §13): requests alternate between them, so that entries one stored answer
/// the other's requests, and flushes sent to one reach the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_belongs_to_the_request_it_answers_across_two_instances_sharing_redis() {
    let Some(redis) = support::servers::RedisServer::start() else {
        return;
    };
    let seed = Rng::seed_from_env("ISOLATION_SEED");
    let (upstream, expected_bodies, sessions) = echo_upstream(seed).await;
    let shared = [
        "--shared-cache",
        &redis.url(),
        "--shared-cache-timeout",
        "1s",
    ];
    let (a, _policy_a) = serve_with_policy("isolation-fleet-a", &upstream, &shared);
    let (b, _policy_b) = serve_with_policy("isolation-fleet-b", &upstream, &shared);
    let http = Http::default();
    for proxy in [&a, &b] {
        let up = eventually(Duration::from_secs(10), || async {
            let text = http.admin("GET", &proxy.admin_url("/metrics")).await.text();
            metric(&text, "soapcache_shared_cache_up") == Some(1.0)
        })
        .await;
        assert!(up, "an instance did not connect to Redis");
    }
    check_isolation(seed, &[&a, &b], &upstream, &expected_bodies, &sessions).await;
    let shared_hits: f64 = {
        let mut sum = 0.0;
        for proxy in [&a, &b] {
            let text = http.admin("GET", &proxy.admin_url("/metrics")).await.text();
            sum += metric(&text, "soapcache_shared_cache_hits_total").unwrap_or(0.0);
        }
        sum
    };
    println!("isolation: {shared_hits} answers from the shared tier");
    assert!(shared_hits > 0.0, "the shared tier answered nothing");
}

/// Sends the generated requests, spread over `fleet`, and checks every
/// answer against the request it answers.
async fn check_isolation(
    seed: u64,
    fleet: &[&Soapcache],
    upstream: &Upstream,
    expected_bodies: &Arc<Mutex<HashMap<usize, String>>>,
    sessions: &Sessions,
) {
    let total: usize = std::env::var("ISOLATION_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20000);
    // A bound on the run, whatever the machine: stop issuing batches after it.
    let budget = Duration::from_secs(20);
    const BATCH: usize = 64;
    const FLUSH_EVERY: usize = 12;
    println!("isolation: seed {seed} (replay with ISOLATION_SEED={seed}), {total} requests");

    let urls: Vec<String> = fleet.iter().map(|p| p.url("/iso")).collect();
    let http = Http::default();

    let mut rng = Rng::new(seed);
    let requests: Vec<Generated> = (0..total).map(|i| Generated::random(i, &mut rng)).collect();

    let started = Instant::now();
    let mut answers: Vec<(Generated, Answer)> = Vec::with_capacity(total);
    let mut flushes = 0;
    for (n, batch) in requests.chunks(BATCH).enumerate() {
        if started.elapsed() > budget {
            println!(
                "isolation: time budget reached after {} requests",
                answers.len()
            );
            break;
        }
        // Now and then, empty the cache: the next batch is then mostly
        // concurrent misses for the same keys, which soapcache coalesces.
        if n % FLUSH_EVERY == FLUSH_EVERY - 1 {
            let through = fleet[n % fleet.len()];
            let flushed = http.admin("DELETE", &through.admin_url("/cache")).await;
            assert_eq!(flushed.status, 200);
            flushes += 1;
        }
        let mut set = tokio::task::JoinSet::new();
        for request in batch {
            let url = urls[request.index % urls.len()].clone();
            let (http, request) = (http.clone(), request.clone());
            set.spawn(async move {
                let mut headers: Vec<(&str, &str)> = vec![
                    ("content-type", "text/xml; charset=utf-8"),
                    ("soapaction", "\"\""),
                ];
                if let Some(t) = request.tenant {
                    headers.push(("x-tenant", t));
                }
                if let Some(a) = request.auth {
                    headers.push(("authorization", a));
                }
                if let Some(c) = request.cookie {
                    headers.push(("cookie", c));
                }
                if let Some(cc) = request.cache_control {
                    headers.push(("cache-control", cc));
                }
                let answer = http.send("POST", &url, &headers, request.body()).await;
                (request, answer)
            });
        }
        while let Some(done) = set.join_next().await {
            answers.push(done.expect("request task"));
        }
    }
    let elapsed = started.elapsed();
    answers.sort_by_key(|(r, _)| r.index);

    // Every answer, checked against the request it answers.
    let expected_bodies = expected_bodies.lock().unwrap().clone();
    let sessions = sessions.lock().unwrap().clone();
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |r: &Generated, a: &Answer, what: String| {
        failures.push(format!(
            "#{} {:?} part {} tenant {:?} auth {:?} cookie {:?} style {} cc {:?} → {} {}: {what}\n    body: {}",
            r.index,
            r.op,
            r.part,
            r.tenant,
            r.auth,
            r.cookie,
            r.style,
            r.cache_control,
            a.status,
            a.x_cache(),
            a.text()
        ))
    };
    let mut tally = Tally::default();
    // serial → how many non-HIT answers carried it.
    let mut forwarded_serials: HashMap<usize, usize> = HashMap::new();
    for (r, a) in &answers {
        tally.requests += 1;
        *tally.by_x_cache.entry(a.x_cache().to_owned()).or_default() += 1;
        *tally
            .by_op
            .entry(format!("{:?}", r.op))
            .or_default()
            .entry(a.x_cache().to_owned())
            .or_default() += 1;
        if a.header("cache-status") == Some("soapcache; hit; detail=coalesced") {
            tally.coalesced += 1;
        }
        if a.status != 200 {
            fail(r, a, format!("status {}", a.status));
            continue;
        }
        if !r.expected_x_cache().contains(&a.x_cache()) {
            fail(
                r,
                a,
                format!(
                    "X-Cache {} where {:?} was expected",
                    a.x_cache(),
                    r.expected_x_cache()
                ),
            );
        }
        let text = a.text();
        if !text.contains(&format!("<c:{}Response", r.op.element())) {
            fail(r, a, "the answer is for another operation".into());
        }
        if field(&text, "PartNumber") != Some(r.part) {
            fail(r, a, "the answer is for another part".into());
        }
        if r.op.varies_by_tenant() {
            tally.tenant_checked += 1;
            if field(&text, "Tenant") != Some(r.tenant_echo().as_str()) {
                fail(r, a, "the answer is for another tenant".into());
            }
        }
        // A credentialed answer only for the same credential; an
        // uncredentialed request never gets an answer that carried one.
        let auth = field(&text, "Auth").unwrap_or("?");
        if auth != r.auth_echo() {
            let what = match r.auth {
                None => format!("an uncredentialed request got an answer made for {auth}"),
                Some(_) => format!("the answer was made for credential {auth:?}"),
            };
            fail(r, a, what);
        }
        if r.auth.is_some() {
            tally.credentialed += 1;
            if a.x_cache() == "HIT" {
                tally.credentialed_hits += 1;
            }
        }
        // The same for cookies.
        let cookie = field(&text, "Cookie").unwrap_or("?");
        if cookie != r.cookie_echo() {
            fail(r, a, format!("the answer was made for cookie {cookie:?}"));
        }
        if r.cookie.is_some() && a.x_cache() == "HIT" {
            tally.cookie_hits += 1;
        }
        let Some(serial) = field(&text, "Serial").and_then(|s| s.parse::<usize>().ok()) else {
            fail(r, a, "no serial number".into());
            continue;
        };
        // A session is its requester's alone: never stored, never replayed.
        let set_cookie = a.header("set-cookie");
        if sessions.contains(&serial) {
            tally.sessions_opened += 1;
            if a.x_cache() == "HIT" {
                fail(
                    r,
                    a,
                    format!("answered from #{serial}, which opened a session"),
                );
            } else if set_cookie != Some(format!("JSESSIONID=s{serial}; Path=/").as_str()) {
                fail(
                    r,
                    a,
                    format!("its own session cookie was lost: {set_cookie:?}"),
                );
            }
        } else if set_cookie.is_some() {
            fail(
                r,
                a,
                format!("a Set-Cookie it was not sent: {set_cookie:?}"),
            );
        }
        match expected_bodies.get(&serial) {
            Some(body) if *body == text => {}
            Some(_) => fail(
                r,
                a,
                format!("not byte for byte what the upstream sent as #{serial}"),
            ),
            None => fail(
                r,
                a,
                format!("serial {serial} was never sent by the upstream"),
            ),
        }
        if a.x_cache() != "HIT" {
            *forwarded_serials.entry(serial).or_default() += 1;
        }
    }
    // A HIT never reached the service; everything else reached it once:
    // serial numbers repeat only for HITs.
    let repeated: Vec<_> = forwarded_serials.iter().filter(|(_, n)| **n > 1).collect();
    let forwarded: usize = forwarded_serials.values().sum();
    let upstream_requests = upstream.count();

    // Each instance's figures, summed.
    let mut service = serde_json::json!({"hits": 0, "misses": 0, "bypasses": 0, "errors": 0});
    for proxy in fleet {
        let stats = json(&http.admin("GET", &proxy.admin_url("/stats")).await);
        for field in ["hits", "misses", "bypasses", "errors"] {
            let sum = service[field].as_u64().unwrap_or(0)
                + stats["services"]["iso"][field].as_u64().unwrap_or(0);
            service[field] = sum.into();
        }
    }
    let service = &service;
    println!(
        "isolation: {} requests in {:.1} s ({:.0}/s), batches of {BATCH}, {flushes} cache flushes, {} upstream requests",
        tally.requests,
        elapsed.as_secs_f64(),
        tally.requests as f64 / elapsed.as_secs_f64(),
        upstream_requests
    );
    println!("isolation: by X-Cache {:?}", tally.by_x_cache);
    for (op, counts) in &tally.by_op {
        println!("isolation:   {op:8} {counts:?}");
    }
    println!(
        "isolation: {} tenant-scoped answers checked, {} credentialed requests ({} HITs), {} HITs with a cookie, {} sessions opened, {} coalesced HITs",
        tally.tenant_checked,
        tally.credentialed,
        tally.credentialed_hits,
        tally.cookie_hits,
        tally.sessions_opened,
        tally.coalesced
    );
    println!(
        "isolation: soapcache /stats for the service: hits {} misses {} bypasses {} errors {}",
        service["hits"], service["misses"], service["bypasses"], service["errors"]
    );

    assert!(
        failures.is_empty(),
        "{} of {} answers broke isolation (seed {seed}); the first ones:\n{}",
        failures.len(),
        tally.requests,
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        repeated.is_empty(),
        "serial numbers carried by more than one non-HIT answer (seed {seed}): {repeated:?}"
    );
    assert_eq!(
        forwarded, upstream_requests,
        "every MISS/BYPASS is one upstream request and no HIT is one (seed {seed})"
    );
    let hits = tally.by_x_cache.get("HIT").copied().unwrap_or(0);
    let count = |k: &str| tally.by_x_cache.get(k).copied().unwrap_or(0) as u64;
    assert_eq!(service["hits"].as_u64(), Some(count("HIT")), "/stats hits");
    assert_eq!(
        service["misses"].as_u64(),
        Some(count("MISS")),
        "/stats misses"
    );
    assert_eq!(
        service["bypasses"].as_u64(),
        Some(count("BYPASS")),
        "/stats bypasses"
    );
    // The property is only tested if all paths were taken.
    assert!(
        hits > tally.requests / 4,
        "too few hits to test anything: {tally:?}"
    );
    assert!(
        tally.credentialed_hits > 0 && tally.cookie_hits > 0,
        "no credentialed hit, or none with a cookie: {tally:?}"
    );
    assert!(tally.sessions_opened > 0, "no session opened: {tally:?}");
    assert!(count("BYPASS") > 0 && count("MISS") > 0, "{tally:?}");
}

/// A vary header sent twice (`X-Tenant: t1` and `X-Tenant: t2` as two
/// header lines) reaches the service with both values; the entry it makes
/// must not answer a request that sends only one of them, or one requester
/// can plant an answer the service made for another tenant (or credential)
/// in the entry every `t1` requester reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_vary_header_is_keyed_by_all_its_values() {
    let (upstream, _, _) = echo_upstream(1).await;
    let (proxy, _policy) = serve_with_policy("isolation-repeated", &upstream, &[]);
    let url = proxy.url("/iso");
    let http = Http::default();
    let ct = ("content-type", "text/xml; charset=utf-8");

    let mut report = Vec::new();
    for (op, name, first, second) in [
        ("CatalogPriceRequest", "x-tenant", "t1", "t2"),
        (
            "AccountRequest",
            "authorization",
            "Bearer alice",
            "Bearer bob",
        ),
    ] {
        let body = request_body(op, "P-9", 0);
        let both = http
            .send(
                "POST",
                &url,
                &[ct, (name, first), (name, second)],
                body.clone(),
            )
            .await;
        assert_eq!(both.status, 200);
        let alone = http.send("POST", &url, &[ct, (name, first)], body).await;
        assert_eq!(alone.status, 200);
        let field_name = if name == "x-tenant" { "Tenant" } else { "Auth" };
        let got = field(&alone.text(), field_name).unwrap_or("?").to_owned();
        if got != format!("[{first}]") {
            report.push(format!(
                "{op}: a request with only `{name}: {first}` got {} {} with the answer made for {got} (first request: {})",
                alone.status,
                alone.x_cache(),
                both.x_cache()
            ));
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

/// The spellings the property test mixes are one request to reference §3: after
/// the first, every other spelling is a HIT on the same entry. (Without
/// this, the property test could pass by never sharing anything.)
#[tokio::test(flavor = "multi_thread")]
async fn the_spellings_the_property_test_mixes_share_one_entry() {
    let (upstream, _, _) = echo_upstream(2).await;
    let (proxy, _policy) = serve_with_policy("isolation-spellings", &upstream, &[]);
    let url = proxy.url("/iso");
    let http = Http::default();
    let headers = [
        ("content-type", "text/xml; charset=utf-8"),
        ("x-tenant", "t1"),
        ("authorization", "Bearer alice"),
    ];
    for op in [Op::Price, Op::Stock, Op::Account] {
        // Credentials only where the operation caches them.
        let headers = if op.cached_with_credentials() {
            &headers[..]
        } else {
            &headers[..2]
        };
        let before = upstream.count();
        for style in 0..STYLES {
            let answer = http
                .send(
                    "POST",
                    &url,
                    headers,
                    request_body(op.element(), "P-1", style),
                )
                .await;
            assert_eq!(
                answer.status,
                200,
                "{op:?} style {style}: {}",
                answer.text()
            );
            let expected = if style == 0 { "MISS" } else { "HIT" };
            assert_eq!(answer.x_cache(), expected, "{op:?} style {style}");
        }
        assert_eq!(upstream.count(), before + 1, "{op:?}");
    }
}
