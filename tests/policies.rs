//! Policy-directed caching end to end (reference §3, §4, §7, §8): policy files
//! written to a scratch directory, the real soapcache binary started with
//! `--policies`, a real HTTP client and real upstream SOAP services on
//! loopback. The upstreams send no `CacheControl` unless a test says so:
//! whatever is cached here is cached because a policy says so.
//!
//! Clock-dependent behaviour (`expires_daily_at`) uses the hidden
//! `--fake-now` flag to start the cache clock a few seconds before a daily
//! boundary; no test sleeps for more than a few seconds.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// Namespace of the operations the tests invent.
const T: &str = "urn:example:soapcache:policy-tests";
const WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";

// ---------------------------------------------------------------------------
// Scratch policy directories

/// A directory of policy files under the system temp dir, removed on drop.
struct PolicyDir(PathBuf);

impl PolicyDir {
    fn new(test: &str) -> PolicyDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "soapcache-policies-{}-{n}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create policy dir");
        PolicyDir(dir)
    }

    /// Writes (or rewrites) one policy file; returns its path. Written
    /// beside it and renamed, so that a reload never reads half a file.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        let partial = self.0.join(format!(".{name}.partial"));
        std::fs::write(&partial, text).expect("write policy");
        std::fs::rename(&partial, &path).expect("rename policy");
        path
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for PolicyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[service]` and `[namespaces]` of a test policy (`t` = the tests'
/// namespace, `c` = the catalog's); `upstream: None` uses `--upstream`.
fn service_header(name: &str, route: &str, upstream: Option<&str>) -> String {
    let upstream = upstream.map_or_else(String::new, |u| format!("upstream = \"{u}\"\n"));
    format!(
        "[service]\nname = \"{name}\"\nroute = \"{route}\"\n{upstream}\n[namespaces]\nt = \"{T}\"\nc = \"{CATALOG}\"\n\n"
    )
}

/// soapcache with `policy` as its only policy file and `upstream` as the
/// `--upstream` default, plus `extra` flags.
fn serve_policy(dir: &PolicyDir, upstream: &Upstream, policy: &str, extra: &[&str]) -> Soapcache {
    dir.write("policy.toml", policy);
    let default = upstream.url();
    let mut args = vec!["--policies", dir.path(), "--upstream", &default];
    args.extend_from_slice(extra);
    Soapcache::serve(&args)
}

// ---------------------------------------------------------------------------
// Messages

fn envelope(header: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<s:Envelope xmlns:s=\"{SOAP11}\"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>\n"
    )
}

/// `<t:{op}><t:Part>{part}</t:Part></t:{op}>` in a SOAP 1.1 envelope.
fn request(op: &str, part: &str) -> String {
    envelope(
        "",
        &format!("<t:{op} xmlns:t=\"{T}\"><t:Part>{part}</t:Part></t:{op}>"),
    )
}

/// An answer the requester can tell apart from every other one: `serial`
/// is the upstream's count of answers so far.
fn answer(header: &str, serial: usize) -> String {
    envelope(
        header,
        &format!("<t:Answer xmlns:t=\"{T}\"><t:Serial>{serial}</t:Serial></t:Answer>"),
    )
}

/// The serial number in an answer.
fn serial(answer: &Answer) -> usize {
    let text = answer.text();
    text.split("Serial>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no serial in {text}"))
}

/// The operation's local name: the first element in the request's Body.
fn operation_of(seen: &Seen) -> String {
    let text = String::from_utf8_lossy(&seen.body);
    let after = text.split("Body>").nth(1).unwrap_or_default();
    let start = after.find('<').map_or("", |i| &after[i + 1..]);
    let name: String = start
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '>' && *c != '/')
        .collect();
    name.rsplit(':').next().unwrap_or_default().to_owned()
}

/// The `<t:Part>` text of a request.
fn part_in(seen: &Seen) -> String {
    let text = String::from_utf8_lossy(&seen.body);
    text.split("Part>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// A `CacheControl` block; `attrs` e.g. `s:actor="urn:x"`.
fn cache_control(attrs: &str, key: &str, lifetime: &str) -> String {
    format!(
        "<ca:CacheControl {attrs} xmlns:ca=\"http://example.org/2001/06/cache\"><ca:CacheKey>{key}</ca:CacheKey>{lifetime}</ca:CacheControl>"
    )
}

fn soap_fault(text: &str) -> String {
    envelope(
        "",
        &format!(
            "<s:Fault><faultcode>s:Server</faultcode><faultstring>{text}</faultstring></s:Fault>"
        ),
    )
}

/// An upstream that answers every request with `answer(header(seen), n)`.
async fn numbered_upstream(header: impl Fn(&Seen) -> String + Send + Sync + 'static) -> Upstream {
    let n = AtomicUsize::new(0);
    Upstream::start(move |seen| {
        let serial = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::xml(200, answer(&header(seen), serial))
    })
    .await
}

/// An upstream that never sends `CacheControl`.
async fn plain_upstream() -> Upstream {
    numbered_upstream(|_| String::new()).await
}

/// X-Cache of a SOAP 1.1 request for `op`/`part`.
async fn x_cache(http: &Http, url: &str, op: &str, part: &str) -> String {
    http.soap(url, &request(op, part))
        .await
        .x_cache()
        .to_owned()
}

async fn metrics(http: &Http, proxy: &Soapcache) -> String {
    let answer = http.admin("GET", &proxy.admin_url("/metrics")).await;
    assert_eq!(answer.status, 200);
    answer.text()
}

/// The value of the `soapcache_requests_total` series with these labels
/// (0 when absent).
fn requests_total(metrics: &str, service: &str, operation: &str, result: &str) -> f64 {
    let labels = [
        format!("service=\"{service}\""),
        format!("operation=\"{operation}\""),
        format!("result=\"{result}\""),
    ];
    metrics
        .lines()
        .filter(|l| l.starts_with("soapcache_requests_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

// ---------------------------------------------------------------------------
// Keys (reference §3)

#[tokio::test(flavor = "multi_thread")]
async fn an_xpath_key_matches_requests_that_differ_only_in_prefixes_and_indentation() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("xpath-key");
    let policy = format!(
        "{}[[operation]]\nelement = \"c:CatalogPriceRequest\"\nkey = [\"string(c:PartNumber)\"]\nttl = \"1h\"\n",
        service_header("catalog", "/catalog", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &["--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/catalog");

    let first = http.soap(&url, &catalog_request("ABC-1234")).await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.header("x-cache-key"), Some("ABC-1234"));

    // Another prefix, a default namespace, an XML declaration, indentation,
    // an extra child the key does not look at: the same key.
    let variants = [
        catalog_request_reformatted("ABC-1234"),
        format!(
            "<e:Envelope xmlns:e=\"{SOAP11}\">\n  <e:Body>\n    <p:CatalogPriceRequest xmlns:p=\"{CATALOG}\">\n        <p:Note>ignored by the key</p:Note>\n        <p:PartNumber>ABC-1234</p:PartNumber>\n    </p:CatalogPriceRequest>\n  </e:Body>\n</e:Envelope>"
        ),
    ];
    for variant in &variants {
        let hit = http.soap(&url, variant).await;
        assert_eq!(hit.x_cache(), "HIT", "{variant}");
        assert_eq!(hit.header("x-cache-key"), Some("ABC-1234"));
        assert_eq!(hit.body, first.body);
    }
    assert_eq!(upstream.count(), 1);

    // Another key value is another entry.
    let other = http.soap(&url, &catalog_request("XYZ-9876")).await;
    assert_eq!(other.x_cache(), "MISS");
    assert_eq!(other.header("x-cache-key"), Some("XYZ-9876"));
    // Whitespace inside the value is part of string(): a different key.
    let padded = http.soap(&url, &catalog_request(" ABC-1234 ")).await;
    assert_eq!(padded.x_cache(), "MISS");
    assert_eq!(padded.header("x-cache-key"), Some("+ABC-1234+"));
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn several_key_expressions_are_joined_and_predicates_are_evaluated_by_sxd_xpath() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("multi-key");
    // The second expression has a predicate: not streamable, so the request
    // is parsed into a tree and evaluated with sxd-xpath.
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Lookup\"\nkey = [\"normalize-space(t:Part)\", \"string(t:Option[@kind = 'colour'])\"]\nttl = \"1h\"\n",
        service_header("shop", "/shop", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &["--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/shop");
    let lookup = |part: &str, options: &str| {
        envelope(
            "",
            &format!("<t:Lookup xmlns:t=\"{T}\"><t:Part>{part}</t:Part>{options}</t:Lookup>"),
        )
    };

    let first = http
        .soap(
            &url,
            &lookup(
                "P/1",
                "<t:Option kind=\"size\">XL</t:Option><t:Option kind=\"colour\">red</t:Option>",
            ),
        )
        .await;
    assert_eq!(first.x_cache(), "MISS");
    // U+001F between the values; the header is percent-encoded.
    assert_eq!(first.header("x-cache-key"), Some("P%2F1%1Fred"));

    // Options in another order, padding normalize-space() removes: same key.
    let same = http
        .soap(
            &url,
            &lookup(
                "  P/1\n",
                "<t:Option kind=\"colour\">red</t:Option><t:Option kind=\"size\">S</t:Option>",
            ),
        )
        .await;
    assert_eq!(same.x_cache(), "HIT");
    assert_eq!(same.header("x-cache-key"), Some("P%2F1%1Fred"));

    let blue = http
        .soap(
            &url,
            &lookup("P/1", "<t:Option kind=\"colour\">blue</t:Option>"),
        )
        .await;
    assert_eq!(blue.x_cache(), "MISS");
    assert_eq!(blue.header("x-cache-key"), Some("P%2F1%1Fblue"));
    // No colour at all: the empty string.
    let none = http.soap(&url, &lookup("P/1", "")).await;
    assert_eq!(none.header("x-cache-key"), Some("P%2F1%1F"));
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_with_different_key_values_never_share_an_entry_whichever_evaluator_runs() {
    // Both keys select the text of the Part child. `string(t:Part)` streams;
    // the predicate sends `string(t:Part[1])` to sxd-xpath. The requests
    // declare the namespace twice on the operation element, as a prefix and
    // as the default namespace, and write the child unprefixed: by the
    // Namespaces spec the child is {T}Part.
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("evaluators");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Streamed\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\n\n[[operation]]\nelement = \"t:Tree\"\nkey = [\"string(t:Part[1])\"]\nttl = \"1h\"\n",
        service_header("evaluators", "/evaluators", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &["--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/evaluators");
    let ask = |op: &str, part: &str| {
        envelope(
            "",
            &format!("<t:{op} xmlns:t=\"{T}\" xmlns=\"{T}\"><Part>{part}</Part></t:{op}>"),
        )
    };

    for op in ["Streamed", "Tree"] {
        let a = http.soap(&url, &ask(op, "A")).await;
        assert_eq!(a.x_cache(), "MISS", "{op}");
        let b = http.soap(&url, &ask(op, "B")).await;
        assert_eq!(
            b.header("x-cache-key"),
            Some("B"),
            "{op}: the key of part B (part A's was {:?})",
            a.header("x-cache-key")
        );
        assert_eq!(
            b.x_cache(),
            "MISS",
            "{op}: part B answered from part A's entry"
        );
        assert_ne!(serial(&b), serial(&a), "{op}: part B got part A's answer");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn debug_logging_names_the_cache_key_of_every_stored_answer() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("debug-log");
    dir.write(
        "policy.toml",
        &format!(
            "{}[[operation]]\nelement = \"t:Price\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\n",
            service_header("prices", "/prices", Some(&upstream.url()))
        ),
    );
    let proxy = Soapcache::serve_env(
        &["--policies", dir.path()],
        &[("RUST_LOG", "soapcache=debug")],
    );
    let http = Http::default();
    assert_eq!(
        x_cache(&http, &proxy.url("/prices"), "Price", "LOG-1").await,
        "MISS"
    );
    let found = eventually(Duration::from_secs(5), || {
        let logs = proxy.logs();
        async move {
            logs.iter()
                .any(|l| l.contains("stored") && l.contains("cache_key=LOG-1"))
        }
    })
    .await;
    assert!(
        found,
        "no 'stored' line naming the key: {:#?}",
        proxy.logs()
    );
}

// ---------------------------------------------------------------------------
// What is stored, and for how long (reference §4)

#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_caches_answers_that_carry_no_cache_control() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("ttl");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Price\"\nkey = [\"string(t:Part)\"]\nttl = \"10m\"\n\n[[operation]]\nelement = \"t:NoTtl\"\n",
        service_header("prices", "/prices", Some(&upstream.url()))
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/prices");

    let miss = http.soap(&url, &request("Price", "A")).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(
        miss.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );
    let hit = http.soap(&url, &request("Price", "A")).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(serial(&hit), serial(&miss));

    // An operation without ttl, from a service that sends no CacheControl,
    // is not stored.
    for _ in 0..2 {
        let answer = http.soap(&url, &request("NoTtl", "A")).await;
        assert_eq!(answer.x_cache(), "MISS");
        assert_eq!(
            answer.header("cache-status"),
            Some("soapcache; fwd=miss; detail=no-lifetime")
        );
    }
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_false_never_caches_even_when_the_service_says_so() {
    let upstream = numbered_upstream(|seen| {
        cache_control(
            "",
            &part_in(seen),
            &format!("<ca:Expires>{}</ca:Expires>", in_one_hour()),
        )
    })
    .await;
    let dir = PolicyDir::new("cache-false");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Live\"\nttl = \"1h\"\ncache = false\n",
        service_header("live", "/live", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/live");
    for _ in 0..2 {
        let answer = http.soap(&url, &request("Live", "L-1")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.x_cache(), "BYPASS");
        assert_eq!(
            answer.header("cache-status"),
            Some("soapcache; fwd=bypass; detail=cache-false")
        );
        assert!(
            !answer.text().contains("CacheControl"),
            "stripped even though not cached: {}",
            answer.text()
        );
    }
    assert_eq!(upstream.count(), 2);
    // Other operations of the service still follow the service's CacheControl.
    assert_eq!(x_cache(&http, &url, "Other", "L-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Other", "L-1").await, "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn honor_cache_control_false_ignores_the_service_block_but_still_strips_it() {
    let upstream = numbered_upstream(|seen| {
        cache_control(
            "",
            &part_in(seen),
            &format!("<ca:Expires>{}</ca:Expires>", in_one_hour()),
        )
    })
    .await;
    let dir = PolicyDir::new("honor");
    let policy = format!(
        "{}[defaults]\nhonor_cache_control = false\n\n[[operation]]\nelement = \"t:WithTtl\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\n",
        service_header("distrust", "/distrust", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/distrust");

    for _ in 0..2 {
        let answer = http.soap(&url, &request("NoTtl", "H-1")).await;
        assert_eq!(answer.x_cache(), "MISS");
        assert_eq!(
            answer.header("cache-status"),
            Some("soapcache; fwd=miss; detail=no-lifetime")
        );
        assert!(!answer.text().contains("CacheControl"), "{}", answer.text());
        assert!(answer.text().contains("<s:Header></s:Header>"));
    }
    assert_eq!(upstream.count(), 2);

    // With a ttl it is cached by the policy (under the policy's key).
    let miss = http.soap(&url, &request("WithTtl", "H-1")).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert!(!miss.text().contains("CacheControl"));
    assert_eq!(x_cache(&http, &url, "WithTtl", "H-1").await, "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_ttl_caps_a_far_expires_from_the_service() {
    let upstream = numbered_upstream(|seen| {
        cache_control(
            "",
            &part_in(seen),
            "<ca:Expires>2099-01-01T00:00:00Z</ca:Expires>",
        )
    })
    .await;
    let dir = PolicyDir::new("max-ttl");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Capped\"\nmax_ttl = \"2s\"\n\n[[operation]]\nelement = \"t:Uncapped\"\n",
        service_header("capped", "/capped", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/capped");

    let stored = Instant::now();
    assert_eq!(x_cache(&http, &url, "Capped", "M-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Uncapped", "M-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Capped", "M-1").await, "HIT");
    assert_eq!(x_cache(&http, &url, "Uncapped", "M-1").await, "HIT");
    assert!(
        stored.elapsed() < Duration::from_secs(2),
        "too slow to judge"
    );

    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(stored.elapsed())).await;
    assert_eq!(
        x_cache(&http, &url, "Capped", "M-1").await,
        "MISS",
        "kept past max_ttl"
    );
    assert_eq!(x_cache(&http, &url, "Uncapped", "M-1").await, "HIT");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_larger_than_max_entry_size_are_passed_on_but_not_stored() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("max-entry-size");
    let policy = format!(
        "{}[defaults]\nttl = \"1h\"\n\n[[operation]]\nelement = \"t:Tiny\"\nmax_entry_size = 100\n\n[[operation]]\nelement = \"t:Roomy\"\nmax_entry_size = \"1KiB\"\n",
        service_header("sizes", "/sizes", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/sizes");

    for _ in 0..2 {
        let answer = http.soap(&url, &request("Tiny", "S-1")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.x_cache(), "MISS");
        assert!(answer.body.len() > 100, "the answer must exceed the limit");
        assert!(answer.text().contains("<t:Answer"));
    }
    assert_eq!(upstream.count(), 2);
    assert_eq!(x_cache(&http, &url, "Roomy", "S-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Roomy", "S-1").await, "HIT");
}

#[tokio::test(flavor = "multi_thread")]
async fn expires_daily_at_ends_entries_at_the_next_daily_instant() {
    let upstream = plain_upstream().await;
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Daily\"\nkey = [\"string(t:Part)\"]\nttl = \"24h\"\nexpires_daily_at = \"08:00:00Z\"\n\n[[operation]]\nelement = \"t:DailyOnly\"\nkey = [\"string(t:Part)\"]\nexpires_daily_at = \"08:00:00Z\"\n",
        service_header("daily", "/daily", None)
    );
    let (near_dir, far_dir) = (PolicyDir::new("daily-near"), PolicyDir::new("daily-far"));
    // The cache clock starts 4 s before 08:00 UTC ...
    let spawned = Instant::now();
    let near = serve_policy(
        &near_dir,
        &upstream,
        &policy,
        &["--fake-now", "2026-11-25T07:59:56Z"],
    );
    let near_ready = Instant::now();
    // ... or an hour after it: the next 08:00 is 23 h away.
    let far = serve_policy(
        &far_dir,
        &upstream,
        &policy,
        &["--fake-now", "2026-11-25T09:00:00Z"],
    );
    let http = Http::default();
    let (near_url, far_url) = (near.url("/daily"), far.url("/daily"));

    for url in [&near_url, &far_url] {
        for op in ["Daily", "DailyOnly"] {
            assert_eq!(x_cache(&http, url, op, "D-1").await, "MISS", "{op}");
            assert_eq!(x_cache(&http, url, op, "D-1").await, "HIT", "{op}");
        }
    }
    // The near clock read less than 08:00 for all of the above.
    assert!(
        spawned.elapsed() < Duration::from_millis(3800),
        "too slow to judge the boundary ({:?})",
        spawned.elapsed()
    );

    // Past 08:00 on the near clock (4 s after it started, at the latest
    // when it said it was listening).
    tokio::time::sleep(Duration::from_millis(4300).saturating_sub(near_ready.elapsed())).await;
    for op in ["Daily", "DailyOnly"] {
        assert_eq!(
            x_cache(&http, &near_url, op, "D-1").await,
            "MISS",
            "{op}: served past the daily expiry"
        );
        // Stored again, now until tomorrow 08:00.
        assert_eq!(x_cache(&http, &near_url, op, "D-1").await, "HIT", "{op}");
    }
    // Far from the boundary the 24 h ttl (and the daily-only lifetime) hold.
    for op in ["Daily", "DailyOnly"] {
        let hit = http.soap(&far_url, &request(op, "D-1")).await;
        assert_eq!(hit.x_cache(), "HIT", "{op}");
        let age: u64 = hit.header("age").unwrap().parse().unwrap();
        assert!(age >= 3, "{op}: age {age}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_headers_keep_one_entry_per_header_value() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("vary");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Rate\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\nvary_headers = [\"X-Tenant\"]\n",
        service_header("rates", "/rates", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/rates");
    let ask = |tenant: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.soap_with(&url, &request("Rate", "EUR"), &[("x-tenant", tenant)])
                .await
        }
    };

    let a1 = ask("A").await;
    assert_eq!(a1.x_cache(), "MISS");
    let b1 = ask("B").await;
    assert_eq!(b1.x_cache(), "MISS");
    assert_ne!(serial(&a1), serial(&b1));
    let a2 = ask("A").await;
    assert_eq!(a2.x_cache(), "HIT");
    assert_eq!(serial(&a2), serial(&a1), "tenant A gets its own answer");
    let b2 = ask("b").await;
    assert_eq!(b2.x_cache(), "MISS", "header values are compared exactly");
    let b3 = ask("B").await;
    assert_eq!(b3.x_cache(), "HIT");
    assert_eq!(serial(&b3), serial(&b1), "tenant B gets its own answer");
    // Without the header: one more entry of its own.
    assert_eq!(x_cache(&http, &url, "Rate", "EUR").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Rate", "EUR").await, "HIT");

    let tenants: Vec<Vec<String>> = upstream
        .seen()
        .iter()
        .map(|s| header_values(&s.headers, "x-tenant"))
        .collect();
    assert_eq!(
        tenants,
        vec![
            vec!["A".to_owned()],
            vec!["B".to_owned()],
            vec!["b".to_owned()],
            vec![]
        ]
    );
}

// ---------------------------------------------------------------------------
// Credentials

#[tokio::test(flavor = "multi_thread")]
async fn requests_with_credentials_bypass_the_cache_unless_the_policy_allows_it() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("creds-private");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Private\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\n",
        service_header("creds", "/creds", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/creds");
    let alice = [("authorization", "Bearer alice")];

    for _ in 0..2 {
        let answer = http
            .soap_with(&url, &request("Private", "K-1"), &alice)
            .await;
        assert_eq!(answer.x_cache(), "BYPASS");
    }
    assert_eq!(upstream.count(), 2, "a credentialed answer is not stored");
    // An anonymous entry is not handed to a request with credentials either.
    assert_eq!(x_cache(&http, &url, "Private", "K-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Private", "K-1").await, "HIT");
    let answer = http
        .soap_with(&url, &request("Private", "K-1"), &alice)
        .await;
    assert_eq!(answer.x_cache(), "BYPASS");
    // WS-Security in the SOAP header counts as credentials.
    let wsse = envelope(
        &format!("<wsse:Security xmlns:wsse=\"{WSSE}\"><wsse:UsernameToken><wsse:Username>u</wsse:Username></wsse:UsernameToken></wsse:Security>"),
        &format!("<t:Private xmlns:t=\"{T}\"><t:Part>K-1</t:Part></t:Private>"),
    );
    assert_eq!(http.soap(&url, &wsse).await.x_cache(), "BYPASS");
    assert_eq!(upstream.count(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_true_caches_answers_to_requests_with_credentials_for_everyone() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("creds-shared");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Public\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\nshared = true\n",
        service_header("creds", "/creds", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/creds");

    let first = http
        .soap_with(
            &url,
            &request("Public", "K-1"),
            &[("authorization", "Bearer alice")],
        )
        .await;
    assert_eq!(first.x_cache(), "MISS");
    let bob = http
        .soap_with(
            &url,
            &request("Public", "K-1"),
            &[("authorization", "Bearer bob")],
        )
        .await;
    assert_eq!(bob.x_cache(), "HIT");
    assert_eq!(serial(&bob), serial(&first));
    assert_eq!(x_cache(&http, &url, "Public", "K-1").await, "HIT");
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn varying_by_authorization_caches_one_entry_per_credential() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("creds-vary");
    let policy = format!(
        "{}[[operation]]\nelement = \"t:Mine\"\nkey = [\"string(t:Part)\"]\nttl = \"1h\"\nvary_headers = [\"Authorization\"]\n",
        service_header("creds", "/creds", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &[]);
    let http = Http::default();
    let url = proxy.url("/creds");
    let ask = |token: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.soap_with(&url, &request("Mine", "K-1"), &[("authorization", token)])
                .await
        }
    };

    let alice = ask("Bearer alice").await;
    assert_eq!(alice.x_cache(), "MISS");
    let again = ask("Bearer alice").await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(serial(&again), serial(&alice));
    let bob = ask("Bearer bob").await;
    assert_eq!(bob.x_cache(), "MISS", "another credential, another entry");
    assert_ne!(serial(&bob), serial(&alice));
    assert_eq!(ask("Bearer bob").await.x_cache(), "HIT");
    // Anonymous requests never see a credentialed answer.
    assert_eq!(x_cache(&http, &url, "Mine", "K-1").await, "MISS");
    assert_eq!(upstream.count(), 3);
}

// ---------------------------------------------------------------------------
// [[invalidate]]

/// The catalog with a price read and a price write; `update` says how the
/// service answers UpdatePriceRequest (0 ok, 1 a 500 fault, 2 a 200 fault).
async fn catalog_with_updates(update: Arc<AtomicU8>) -> Upstream {
    let n = AtomicUsize::new(0);
    Upstream::start(move |seen| {
        let serial = n.fetch_add(1, Ordering::SeqCst) + 1;
        if String::from_utf8_lossy(&seen.body).contains("UpdatePriceRequest") {
            match update.load(Ordering::SeqCst) {
                0 => Reply::xml(200, answer("", serial)),
                1 => Reply::xml(500, soap_fault("update refused")),
                _ => Reply::xml(200, soap_fault("update refused")),
            }
        } else {
            Reply::xml(200, answer("", serial))
        }
    })
    .await
}

fn invalidating_policy() -> String {
    format!(
        "{}[[operation]]\nelement = \"c:CatalogPriceRequest\"\nkey = [\"string(c:PartNumber)\"]\nttl = \"1h\"\n\n[[invalidate]]\nelement = \"c:UpdatePriceRequest\"\nkey = [\"string(c:PartNumber)\"]\ntargets = [\"c:CatalogPriceRequest\"]\n",
        service_header("catalog", "/catalog", None)
    )
}

fn update_request(part: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><cat:UpdatePriceRequest xmlns:cat=\"{CATALOG}\"><cat:PartNumber>{part}</cat:PartNumber><cat:Price>9.99</cat:Price></cat:UpdatePriceRequest></soap:Body></soap:Envelope>"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_write_purges_the_targeted_entry_of_its_key_and_no_other() {
    let upstream = catalog_with_updates(Arc::new(AtomicU8::new(0))).await;
    let dir = PolicyDir::new("invalidate");
    let proxy = serve_policy(&dir, &upstream, &invalidating_policy(), &[]);
    let http = Http::default();
    let url = proxy.url("/catalog");

    for part in ["P-1", "Q-2"] {
        assert_eq!(
            http.soap(&url, &catalog_request(part)).await.x_cache(),
            "MISS"
        );
        assert_eq!(
            http.soap(&url, &catalog_request(part)).await.x_cache(),
            "HIT"
        );
    }
    let update = http.soap(&url, &update_request("P-1")).await;
    assert_eq!(update.status, 200);
    assert_eq!(update.x_cache(), "BYPASS", "writes are never cached");
    assert_eq!(upstream.count(), 3);

    assert_eq!(
        http.soap(&url, &catalog_request("P-1")).await.x_cache(),
        "MISS",
        "the updated part is fetched again"
    );
    assert_eq!(
        http.soap(&url, &catalog_request("Q-2")).await.x_cache(),
        "HIT",
        "another part is untouched"
    );
    assert_eq!(upstream.count(), 4);
    // Log lines reach the test through a pipe, not always at once.
    let logged = eventually(Duration::from_secs(5), || {
        let logs = proxy.logs();
        async move {
            logs.iter()
                .any(|l| l.contains("invalidated by UpdatePriceRequest") && l.contains("purged=1"))
        }
    })
    .await;
    assert!(logged, "{:#?}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_write_purges_nothing() {
    let mode = Arc::new(AtomicU8::new(1));
    let upstream = catalog_with_updates(mode.clone()).await;
    let dir = PolicyDir::new("invalidate-fault");
    let proxy = serve_policy(&dir, &upstream, &invalidating_policy(), &[]);
    let http = Http::default();
    let url = proxy.url("/catalog");

    assert_eq!(
        http.soap(&url, &catalog_request("P-1")).await.x_cache(),
        "MISS"
    );
    // A fault with HTTP 500, then a fault with HTTP 200: neither succeeded.
    for (fault_mode, status) in [(1, 500), (2, 200)] {
        mode.store(fault_mode, Ordering::SeqCst);
        let update = http.soap(&url, &update_request("P-1")).await;
        assert_eq!(update.status, status);
        assert!(update.text().contains("update refused"));
        assert_eq!(
            http.soap(&url, &catalog_request("P-1")).await.x_cache(),
            "HIT",
            "purged by a failed update (HTTP {status})"
        );
    }
    assert_eq!(upstream.count(), 3);
}

// ---------------------------------------------------------------------------
// Routing, metrics, stats

#[tokio::test(flavor = "multi_thread")]
async fn the_longest_route_prefix_picks_the_service_and_unrouted_paths_go_to_the_default() {
    let (up_a, up_b, up_default) = (
        plain_upstream().await,
        plain_upstream().await,
        plain_upstream().await,
    );
    let dir = PolicyDir::new("routes");
    dir.write(
        "a.toml",
        &format!(
            "{}[defaults]\nttl = \"1h\"\n",
            service_header("alpha", "/a", Some(&format!("{}/alpha", up_a.url())))
        ),
    );
    dir.write(
        "b.toml",
        &format!(
            "{}[defaults]\nttl = \"1h\"\n",
            service_header("beta", "/a/b", Some(&up_b.url()))
        ),
    );
    // No upstream: this service's requests go to --upstream.
    dir.write(
        "g.toml",
        &format!(
            "{}[defaults]\nttl = \"1h\"\n",
            service_header("gamma", "/g", None)
        ),
    );
    let default = up_default.url();
    let proxy = Soapcache::serve(&["--policies", dir.path(), "--upstream", &default]);
    let http = Http::default();
    let body = request("Route", "R-1");

    let cases = [
        ("/a", "MISS"),
        ("/a/x", "HIT"),  // same service, same key
        ("/a/b", "MISS"), // another service: another entry
        ("/a/b/c?x=1", "HIT"),
        ("/ab", "MISS"), // not under /a: the default service
        ("/", "MISS"),   // no ttl for the default service: not stored
        ("/g/1", "MISS"),
        ("/g/2", "HIT"),
    ];
    for (path, expected) in cases {
        let answer = http.soap(&proxy.url(path), &body).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.x_cache(), expected, "{path}");
    }
    let paths = |u: &Upstream| -> Vec<String> {
        u.seen().iter().map(|s| s.path_and_query.clone()).collect()
    };
    assert_eq!(paths(&up_a), vec!["/alpha"]);
    assert_eq!(paths(&up_b), vec!["/a/b"]);
    assert_eq!(paths(&up_default), vec!["/ab", "/", "/g/1"]);

    let text = metrics(&http, &proxy).await;
    assert_eq!(
        requests_total(&text, "alpha", "Route", "miss"),
        1.0,
        "{text}"
    );
    assert_eq!(
        requests_total(&text, "alpha", "Route", "hit"),
        1.0,
        "{text}"
    );
    assert_eq!(
        requests_total(&text, "beta", "Route", "miss"),
        1.0,
        "{text}"
    );
    assert_eq!(requests_total(&text, "beta", "Route", "hit"), 1.0, "{text}");
    assert_eq!(
        requests_total(&text, "default", "Route", "miss"),
        2.0,
        "{text}"
    );
    assert_eq!(
        requests_total(&text, "gamma", "Route", "hit"),
        1.0,
        "{text}"
    );

    let stats = json(&http.admin("GET", &proxy.admin_url("/stats")).await);
    let services = &stats["services"];
    for (name, hits, misses, entries) in [
        ("alpha", 1, 1, 1),
        ("beta", 1, 1, 1),
        ("gamma", 1, 1, 1),
        ("default", 0, 2, 0),
    ] {
        let s = &services[name];
        assert_eq!(s["hits"], hits, "{name}: {stats}");
        assert_eq!(s["misses"], misses, "{name}: {stats}");
        assert_eq!(s["entries"], entries, "{name}: {stats}");
    }
    assert_eq!(stats["entries"], 3, "{stats}");
}

// ---------------------------------------------------------------------------
// stale_if_error (reference §5)

/// How the failing upstream answers: 0 normally, 1 a 503 with a non-SOAP
/// body, 2 a SOAP fault with HTTP 500, 3 too slowly.
async fn failing_upstream(mode: Arc<AtomicU8>) -> Upstream {
    let n = AtomicUsize::new(0);
    Upstream::start(move |seen| {
        let serial = n.fetch_add(1, Ordering::SeqCst) + 1;
        match mode.load(Ordering::SeqCst) {
            0 => {
                let header = if operation_of(seen) == "ByMaxAge" {
                    cache_control("", &part_in(seen), "<ca:MaxAge>1</ca:MaxAge>")
                } else {
                    String::new()
                };
                Reply::xml(200, answer(&header, serial))
            }
            1 => Reply {
                status: 503,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: "service down for maintenance".into(),
                delay: Duration::ZERO,
            },
            2 => Reply::xml(500, soap_fault("no price today")),
            _ => Reply::xml(200, answer("", serial)).after(Duration::from_secs(3)),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_answers_with_an_expired_entry_while_the_service_fails() {
    let mode = Arc::new(AtomicU8::new(0));
    let upstream = failing_upstream(mode.clone()).await;
    let dir = PolicyDir::new("stale");
    let policy = format!(
        "{}[defaults]\nstale_if_error = \"30s\"\n\n[[operation]]\nelement = \"t:ByTtl\"\nttl = \"1s\"\n\n[[operation]]\nelement = \"t:ByMaxAge\"\n\n[[operation]]\nelement = \"t:NoStale\"\nttl = \"1s\"\nstale_if_error = \"0s\"\n",
        service_header("stale", "/stale", None)
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &["--upstream-timeout", "500ms"]);
    let http = Http::default();
    let url = proxy.url("/stale");

    let stored = Instant::now();
    let mut fresh = Vec::new();
    for op in ["ByTtl", "ByMaxAge", "NoStale"] {
        let miss = http.soap(&url, &request(op, "S-1")).await;
        assert_eq!(miss.x_cache(), "MISS", "{op}");
        assert_eq!(
            miss.header("cache-status"),
            Some("soapcache; fwd=miss; stored"),
            "{op}"
        );
        fresh.push(miss);
    }
    mode.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(stored.elapsed())).await;

    // HTTP 503 with a non-SOAP body.
    for (op, miss) in ["ByTtl", "ByMaxAge"].iter().zip(&fresh) {
        let stale = http.soap(&url, &request(op, "S-1")).await;
        assert_eq!(stale.status, 200, "{op}");
        assert_eq!(stale.x_cache(), "STALE", "{op}");
        assert_eq!(
            stale.header("cache-status"),
            Some("soapcache; hit; fwd=stale")
        );
        assert_eq!(stale.body, miss.body, "{op}");
    }
    let passed = http.soap(&url, &request("NoStale", "S-1")).await;
    assert_eq!(
        passed.status, 503,
        "without stale_if_error the failure is passed"
    );
    assert_eq!(passed.text(), "service down for maintenance");

    // A timeout is a failure too.
    mode.store(3, Ordering::SeqCst);
    let stale = http.soap(&url, &request("ByTtl", "S-1")).await;
    assert_eq!(stale.x_cache(), "STALE");
    let timed_out = http.soap(&url, &request("NoStale", "S-1")).await;
    assert_eq!(timed_out.status, 504);

    // A SOAP fault is the service's answer, not a failure: passed on.
    mode.store(2, Ordering::SeqCst);
    let fault = http.soap(&url, &request("ByTtl", "S-1")).await;
    assert_eq!(fault.status, 500);
    assert!(fault.text().contains("no price today"), "{}", fault.text());
    assert_ne!(fault.x_cache(), "STALE");

    // Once the service is back, the entry is refreshed.
    mode.store(0, Ordering::SeqCst);
    let refreshed = http.soap(&url, &request("ByTtl", "S-1")).await;
    assert_eq!(refreshed.x_cache(), "MISS");
    assert!(serial(&refreshed) > serial(&fresh[0]));
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_covers_a_service_that_cannot_be_reached() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("stale-unreachable");
    let policy = |url: &str| {
        format!(
            "{}[defaults]\nstale_if_error = \"30s\"\nttl = \"1s\"\n\n[[operation]]\nelement = \"t:NoStale\"\nstale_if_error = \"0s\"\n",
            service_header("stale", "/stale", Some(url))
        )
    };
    let proxy = serve_policy(&dir, &upstream, &policy(&upstream.url()), &[]);
    let http = Http::default();
    let url = proxy.url("/stale");
    let stored = Instant::now();
    let fresh = http.soap(&url, &request("Price", "U-1")).await;
    assert_eq!(fresh.x_cache(), "MISS");
    assert_eq!(x_cache(&http, &url, "NoStale", "U-1").await, "MISS");

    // The service moves to a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    dir.write("policy.toml", &policy(&dead));
    let reloaded = http.admin("POST", &proxy.admin_url("/reload")).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    tokio::time::sleep(Duration::from_millis(1300).saturating_sub(stored.elapsed())).await;

    let stale = http.soap(&url, &request("Price", "U-1")).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.body, fresh.body);
    let failed = http.soap(&url, &request("NoStale", "U-1")).await;
    assert_eq!(failed.status, 502);
    assert!(failed.text().contains("faultstring"), "{}", failed.text());
}

// ---------------------------------------------------------------------------
// Reload (reference §7, §8)

fn reload_policy(rules: &str) -> String {
    format!(
        "{}[[operation]]\nelement = \"t:Quote\"\nkey = [\"string(t:Part)\"]\n{rules}",
        service_header("quotes", "/quotes", None)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn post_reload_swaps_the_policies_and_refuses_a_broken_set() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("reload");
    let proxy = serve_policy(&dir, &upstream, &reload_policy(""), &[]);
    let http = Http::default();
    let url = proxy.url("/quotes");

    // No ttl, no CacheControl: not stored.
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "MISS");

    dir.write("policy.toml", &reload_policy("ttl = \"1h\"\n"));
    let reloaded = http.admin("POST", &proxy.admin_url("/reload")).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let body = json(&reloaded);
    assert_eq!(body["reloaded"], true);
    let summary = body["services"][0].as_str().unwrap();
    assert!(
        summary.starts_with(
            "quotes: route /quotes -> the --upstream default, 1 operation, 0 invalidations ("
        ),
        "{summary}"
    );
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "HIT");

    // A broken rewrite: refused with its errors, the running set stays.
    let broken = reload_policy("ttl = \"one hour\"\ncolour = \"blue\"\n");
    let line_of = |needle: &str| broken.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let (ttl_line, colour_line) = (line_of("ttl"), line_of("colour"));
    dir.write("policy.toml", &broken);
    let refused = http.admin("POST", &proxy.admin_url("/reload")).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let body = json(&refused);
    assert_eq!(body["reloaded"], false);
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains(&format!(
            "policy.toml:{ttl_line}: ttl: invalid duration 'one hour'"
        ))),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("policy.toml:{colour_line}: unknown key 'colour'"))),
        "{errors:#?}"
    );
    // Still the ttl policy: a new key is stored.
    assert_eq!(x_cache(&http, &url, "Quote", "Q-2").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Quote", "Q-2").await, "HIT");

    let text = metrics(&http, &proxy).await;
    assert!(
        text.lines()
            .any(|l| l == "soapcache_policy_reloads_total 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_policies_too() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("sighup");
    let proxy = serve_policy(&dir, &upstream, &reload_policy("ttl = \"1h\"\n"), &[]);
    let http = Http::default();
    let url = proxy.url("/quotes");
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "MISS");
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "HIT");

    dir.write(
        "policy.toml",
        &reload_policy("ttl = \"1h\"\ncache = false\n"),
    );
    proxy.signal("HUP");
    let swapped = eventually(Duration::from_secs(5), || {
        let (http, url) = (http.clone(), url.clone());
        async move { x_cache(&http, &url, "Quote", "Q-1").await == "BYPASS" }
    })
    .await;
    assert!(swapped, "SIGHUP did not reload: {:#?}", proxy.logs());
    let logged = eventually(Duration::from_secs(5), || {
        let logs = proxy.logs();
        async move { logs.iter().any(|l| l.contains("policies reloaded")) }
    })
    .await;
    assert!(logged, "{:#?}", proxy.logs());

    // A broken file on SIGHUP: logged, and the running set stays.
    dir.write("policy.toml", "[service]\nname = \"quotes\"\n");
    proxy.signal("HUP");
    let refused = eventually(Duration::from_secs(5), || {
        let logs = proxy.logs();
        async move { logs.iter().any(|l| l.contains("reload refused")) }
    })
    .await;
    assert!(refused, "{:#?}", proxy.logs());
    assert_eq!(x_cache(&http, &url, "Quote", "Q-1").await, "BYPASS");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_sent_as_soon_as_soapcache_says_it_is_listening_reloads_and_never_kills_it() {
    // What `systemctl reload` (ExecReload=kill -HUP) or a config-reloader
    // sidecar does right after a (re)start. The default action of SIGHUP is
    // to terminate the process, so the handler must be in place by the time
    // soapcache announces that it is listening.
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("sighup-early");
    dir.write("policy.toml", &reload_policy("ttl = \"1h\"\n"));
    let default = upstream.url();
    let tries = 24;
    let mut started = Vec::new();
    for _ in 0..tries {
        let hangup = ArmedSignal::new("HUP");
        let proxy = Soapcache::serve(&["--policies", dir.path(), "--upstream", &default]);
        hangup.fire(proxy.pid());
        started.push(proxy);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut killed = Vec::new();
    for proxy in &mut started {
        match proxy.wait_exit(Duration::from_millis(1)) {
            Some(status) => killed.push(status.to_string()),
            None => {
                let reloaded = eventually(Duration::from_secs(5), || {
                    let logs = proxy.logs();
                    async move { logs.iter().any(|l| l.contains("policies reloaded")) }
                })
                .await;
                assert!(reloaded, "{:#?}", proxy.logs());
            }
        }
    }
    assert!(
        killed.is_empty(),
        "{} of {tries} soapcache processes died of a SIGHUP sent right after 'admin listening on' ({})",
        killed.len(),
        killed[0]
    );
}

// ---------------------------------------------------------------------------
// roles

#[tokio::test(flavor = "multi_thread")]
async fn cache_control_for_a_role_the_policy_plays_is_obeyed_and_stripped_and_others_left_alone() {
    let upstream = numbered_upstream(|seen| {
        let actor = if part_in(seen) == "OURS" {
            "urn:x:cache"
        } else {
            "urn:x:other"
        };
        cache_control(
            &format!("s:actor=\"{actor}\""),
            &part_in(seen),
            &format!("<ca:Expires>{}</ca:Expires>", in_one_hour()),
        )
    })
    .await;
    let dir = PolicyDir::new("roles");
    dir.write(
        "roles.toml",
        &format!(
            "{}[defaults]\nroles = [\"urn:x:cache\"]\n",
            service_header("roles", "/roles", None)
        ),
    );
    dir.write("plain.toml", &service_header("noroles", "/noroles", None));
    let default = upstream.url();
    let proxy = Soapcache::serve(&["--policies", dir.path(), "--upstream", &default]);
    let http = Http::default();
    let url = proxy.url("/roles");

    let ours = http.soap(&url, &request("Get", "OURS")).await;
    assert_eq!(ours.x_cache(), "MISS");
    assert_eq!(
        ours.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );
    assert!(!ours.text().contains("CacheControl"), "{}", ours.text());
    assert_eq!(x_cache(&http, &url, "Get", "OURS").await, "HIT");

    for _ in 0..2 {
        let theirs = http.soap(&url, &request("Get", "THEIRS")).await;
        assert_eq!(theirs.x_cache(), "MISS");
        assert!(
            theirs.text().contains("s:actor=\"urn:x:other\""),
            "a block for another role stays: {}",
            theirs.text()
        );
    }
    // A service whose policy does not play urn:x:cache leaves it alone.
    let url = proxy.url("/noroles");
    for _ in 0..2 {
        let answer = http.soap(&url, &request("Get", "OURS")).await;
        assert_eq!(answer.x_cache(), "MISS");
        assert!(answer.text().contains("s:actor=\"urn:x:cache\""));
    }
    assert_eq!(upstream.count(), 5);
}

// ---------------------------------------------------------------------------
// Extensions to the contract (docs/reference.md)

#[tokio::test(flavor = "multi_thread")]
async fn defaults_may_hold_operation_rules_and_elements_may_be_written_as_uri_names() {
    let upstream = plain_upstream().await;
    let dir = PolicyDir::new("extensions");
    // No upstream (--upstream is used), a ttl and vary_headers in
    // [defaults], an operation named {uri}local overriding them.
    let policy = format!(
        "[service]\nname = \"ext\"\nroute = \"/ext\"\n\n[defaults]\nttl = \"1h\"\nvary_headers = [\"X-Tenant\"]\n\n[[operation]]\nelement = \"{{{T}}}Volatile\"\ncache = false\n"
    );
    let proxy = serve_policy(&dir, &upstream, &policy, &["--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/ext");

    // An operation the policy does not list: the defaults' ttl, a digest key.
    let miss = http
        .soap_with(&url, &request("Anything", "E-1"), &[("x-tenant", "A")])
        .await;
    assert_eq!(miss.x_cache(), "MISS");
    let digest = miss.header("x-cache-key").unwrap().to_owned();
    assert!(
        digest.len() == 22
            && digest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "a digest key: {digest}"
    );
    let hit = http
        .soap_with(&url, &request("Anything", "E-1"), &[("x-tenant", "A")])
        .await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("x-cache-key"), Some(digest.as_str()));
    // vary_headers from [defaults].
    let other_tenant = http
        .soap_with(&url, &request("Anything", "E-1"), &[("x-tenant", "B")])
        .await;
    assert_eq!(other_tenant.x_cache(), "MISS");

    for _ in 0..2 {
        assert_eq!(x_cache(&http, &url, "Volatile", "E-1").await, "BYPASS");
    }
    assert_eq!(upstream.count(), 4);
    // The digest is the CacheKey: the admin API purges by it.
    let purged = http
        .admin(
            "DELETE",
            &proxy.admin_url(&format!(
                "/cache?key={digest}&service=ext&operation=Anything"
            )),
        )
        .await;
    // One CacheKey, one entry per tenant: both go.
    assert_eq!(json(&purged)["purged"], 2);
    let after = http
        .soap_with(&url, &request("Anything", "E-1"), &[("x-tenant", "A")])
        .await;
    assert_eq!(after.x_cache(), "MISS");
}

// ---------------------------------------------------------------------------
// The shipped example policies (policies/*.toml)

/// The shipped policy `name`, its `upstream` line pointing at `upstream`
/// (same path as in the file).
fn shipped_policy(name: &str, upstream: &Upstream) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("shipped policy");
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("upstream") && trimmed.contains('=') {
                replaced += 1;
                let old = trimmed.split('"').nth(1).expect("quoted upstream");
                let uri: hyper::Uri = old.parse().expect("upstream URL");
                format!("upstream = \"{}{}\"", upstream.url(), uri.path())
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "one upstream line in {}", path.display());
    lines.join("\n") + "\n"
}

/// Answers the operations of both shipped policies; no CacheControl.
/// `GetRate` for `BIG/BIG` answers with 70 KiB.
async fn shipped_services() -> Upstream {
    let n = AtomicUsize::new(0);
    Upstream::start(move |seen| {
        let serial = n.fetch_add(1, Ordering::SeqCst) + 1;
        let body = String::from_utf8_lossy(&seen.body);
        let padding = if body.contains("BIG") {
            format!("<!-- {} -->", "x".repeat(70 << 10))
        } else {
            String::new()
        };
        Reply::xml(200, answer(&padding, serial))
    })
    .await
}

fn catalog_price(part: &str) -> String {
    catalog_request(part)
}

fn fx(op: &str, from: &str, to: &str, extra: &str) -> String {
    envelope(
        "",
        &format!(
            "<fx:{op} xmlns:fx=\"urn:example:fx:2024\"><fx:From>{from}</fx:From><fx:To>{to}</fx:To>{extra}</fx:{op}>"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_catalog_policy_caches_prices_and_purges_them_on_update() {
    let upstream = shipped_services().await;
    let dir = PolicyDir::new("shipped-catalog");
    dir.write("catalog.toml", &shipped_policy("catalog.toml", &upstream));
    dir.write("currency.toml", &shipped_policy("currency.toml", &upstream));
    let proxy = Soapcache::serve(&["--policies", dir.path(), "--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/catalog");

    // "Cache for a day even when the service sends no CacheControl"; the
    // key is the part number, whatever the prefixes.
    let miss = http.soap(&url, &catalog_price("ABC-1234")).await;
    assert_eq!(miss.x_cache(), "MISS");
    assert_eq!(miss.header("x-cache-key"), Some("ABC-1234"));
    assert_eq!(
        miss.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );
    let hit = http
        .soap(&url, &catalog_request_reformatted("ABC-1234"))
        .await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(
        http.soap(&url, &catalog_price("XYZ-9")).await.x_cache(),
        "MISS"
    );

    // "a price update purges the cached price of that part at once".
    let update = http.soap(&url, &update_request("ABC-1234")).await;
    assert_eq!(update.x_cache(), "BYPASS");
    assert_eq!(
        http.soap(&url, &catalog_price("ABC-1234")).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        http.soap(&url, &catalog_price("XYZ-9")).await.x_cache(),
        "HIT"
    );

    // Operations the file does not list get [defaults]: no ttl, not cached.
    let search = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:CatalogSearch xmlns:c=\"{CATALOG}\"><c:Text>bolt</c:Text></c:CatalogSearch></soap:Body></soap:Envelope>"
    );
    assert_eq!(http.soap(&url, &search).await.x_cache(), "MISS");
    assert_eq!(http.soap(&url, &search).await.x_cache(), "MISS");

    // "/catalog or below it (/catalog/v2, not /catalogue)".
    assert_eq!(
        http.soap(&proxy.url("/catalog/v2"), &catalog_price("XYZ-9"))
            .await
            .x_cache(),
        "HIT"
    );
    let elsewhere = http
        .soap(&proxy.url("/catalogue"), &catalog_price("XYZ-9"))
        .await;
    assert_eq!(
        elsewhere.status, 502,
        "no policy and no --upstream for /catalogue"
    );

    let paths: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.path_and_query.clone())
        .collect();
    assert!(paths.iter().all(|p| p.starts_with("/catalog")), "{paths:?}");
    assert_eq!(upstream.count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_catalog_policy_keeps_prices_until_0800_utc() {
    let upstream = shipped_services().await;
    let dir = PolicyDir::new("shipped-0800");
    dir.write("catalog.toml", &shipped_policy("catalog.toml", &upstream));
    let spawned = Instant::now();
    let proxy = Soapcache::serve(&[
        "--policies",
        dir.path(),
        "--fake-now",
        "2026-11-25T07:59:56Z",
    ]);
    let ready = Instant::now();
    let http = Http::default();
    let url = proxy.url("/catalog");
    assert_eq!(
        http.soap(&url, &catalog_price("ABC-1234")).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        http.soap(&url, &catalog_price("ABC-1234")).await.x_cache(),
        "HIT"
    );
    assert!(
        spawned.elapsed() < Duration::from_millis(3800),
        "too slow to judge"
    );
    tokio::time::sleep(Duration::from_millis(4300).saturating_sub(ready.elapsed())).await;
    assert_eq!(
        http.soap(&url, &catalog_price("ABC-1234")).await.x_cache(),
        "MISS",
        "\"never past the next 08:00 UTC, when prices change\""
    );
    assert_eq!(
        http.soap(&url, &catalog_price("ABC-1234")).await.x_cache(),
        "HIT"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_currency_policy_caches_rates_per_tenant_and_pair() {
    let upstream = shipped_services().await;
    let dir = PolicyDir::new("shipped-currency");
    dir.write("catalog.toml", &shipped_policy("catalog.toml", &upstream));
    dir.write("currency.toml", &shipped_policy("currency.toml", &upstream));
    let proxy = Soapcache::serve(&["--policies", dir.path(), "--debug-headers"]);
    let http = Http::default();
    let url = proxy.url("/rates");
    let ask = |body: String, extra: Vec<(&'static str, &'static str)>| {
        let (http, url) = (http.clone(), url.clone());
        async move { http.soap_with(&url, &body, &extra).await }
    };
    let tenant_a = vec![("x-tenant", "A")];
    let tenant_b = vec![("x-tenant", "B")];

    // GetRate: "One entry per currency pair: EUR/USD", per tenant.
    let a = ask(fx("GetRate", "EUR", "USD", ""), tenant_a.clone()).await;
    assert_eq!(a.x_cache(), "MISS");
    assert_eq!(a.header("x-cache-key"), Some("EUR%2FUSD"));
    // normalize-space(): padding inside the values does not matter.
    let padded = ask(fx("GetRate", " EUR\n", "\tUSD ", ""), tenant_a.clone()).await;
    assert_eq!(padded.x_cache(), "HIT");
    assert_eq!(serial(&padded), serial(&a));
    let b = ask(fx("GetRate", "EUR", "USD", ""), tenant_b.clone()).await;
    assert_eq!(b.x_cache(), "MISS", "X-Tenant is part of every key");
    assert_eq!(
        ask(fx("GetRate", "EUR", "GBP", ""), tenant_a.clone())
            .await
            .x_cache(),
        "MISS"
    );
    // max_entry_size = 64KiB: a 70 KiB answer passes, unstored.
    for _ in 0..2 {
        let big = ask(fx("GetRate", "BIG", "BIG", ""), tenant_a.clone()).await;
        assert_eq!(big.status, 200);
        assert_eq!(big.x_cache(), "MISS");
        assert!(big.body.len() > 64 << 10);
    }
    assert_eq!(upstream.count(), 5);

    // GetRateTable: "never cache it".
    for _ in 0..2 {
        let table = ask(fx("GetRateTable", "EUR", "*", ""), tenant_a.clone()).await;
        assert_eq!(table.x_cache(), "BYPASS");
    }
    assert_eq!(upstream.count(), 7);

    // GetHistoricalRate: two-part key, same for every tenant, shared even
    // with credentials.
    let date = "<fx:Date>2024-01-02</fx:Date>";
    let first = ask(
        fx("GetHistoricalRate", "EUR", "USD", date),
        tenant_a.clone(),
    )
    .await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(first.header("x-cache-key"), Some("EUR%2FUSD%1F2024-01-02"));
    let other_tenant = ask(
        fx("GetHistoricalRate", "EUR", "USD", date),
        tenant_b.clone(),
    )
    .await;
    assert_eq!(other_tenant.x_cache(), "HIT");
    let with_credentials = ask(
        fx("GetHistoricalRate", "EUR", "USD", date),
        vec![("x-tenant", "C"), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(with_credentials.x_cache(), "HIT");
    assert_eq!(serial(&with_credentials), serial(&first));
    let other_day = ask(
        fx(
            "GetHistoricalRate",
            "EUR",
            "USD",
            "<fx:Date>2024-01-03</fx:Date>",
        ),
        tenant_a.clone(),
    )
    .await;
    assert_eq!(other_day.x_cache(), "MISS");
    assert_eq!(upstream.count(), 9);

    // GetRate is not shared: credentials bypass it.
    let private = ask(
        fx("GetRate", "EUR", "USD", ""),
        vec![("x-tenant", "A"), ("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(private.x_cache(), "BYPASS");
    assert_eq!(upstream.count(), 10);

    // SetRate "purges the cached GetRate answers for that pair" (for
    // every tenant), not those of another pair.
    let set = ask(
        fx("SetRate", "EUR", "USD", "<fx:Rate>1.1</fx:Rate>"),
        tenant_a.clone(),
    )
    .await;
    assert_eq!(set.x_cache(), "BYPASS");
    assert_eq!(upstream.count(), 11);
    assert_eq!(
        ask(fx("GetRate", "EUR", "USD", ""), tenant_a.clone())
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        ask(fx("GetRate", "EUR", "USD", ""), tenant_b.clone())
            .await
            .x_cache(),
        "MISS"
    );
    assert_eq!(
        ask(fx("GetRate", "EUR", "GBP", ""), tenant_a.clone())
            .await
            .x_cache(),
        "HIT"
    );
    assert_eq!(upstream.count(), 13);
    assert!(upstream.seen().iter().all(|s| s.path_and_query == "/rates"));
}
