//! What an operator sees: metrics that match the traffic, /stats, the
//! per-request log line (text and JSON), request ids (reference §8).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

/// Parses the Prometheus/OpenMetrics text strictly: every line is a
/// comment or `name{labels} value`, and every value a number.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        let name_ok = series.split('{').next().is_some_and(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        });
        assert!(name_ok, "bad metric name in: {line}");
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "unterminated labels in: {line}");
        }
        samples.insert(series.to_owned(), value);
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_the_requests_made() {
    let upstream = Upstream::catalog().await;
    let dead = Upstream::catalog().await;
    dead.stop();
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    for part in ["M-1", "M-2"] {
        http.soap(&proxy.url("/"), &catalog_request(part)).await;
    }
    for _ in 0..3 {
        http.soap(&proxy.url("/"), &catalog_request("M-1")).await;
    }
    http.soap_with(
        &proxy.url("/"),
        &catalog_request("M-1"),
        &[("authorization", "Bearer x")],
    )
    .await;
    http.soap(&proxy.url("/"), "<broken").await;

    let answer = http.admin("GET", &proxy.admin_url("/metrics")).await;
    assert_eq!(answer.status, 200);
    assert!(answer
        .header("content-type")
        .unwrap()
        .contains("openmetrics-text"));
    let m = parse_metrics(&answer.text());
    let requests = |result: &str, op: &str| {
        m.get(&format!(
            "soapcache_requests_total{{service=\"default\",operation=\"{op}\",result=\"{result}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(requests("miss", "CatalogPriceRequest"), 2.0);
    assert_eq!(requests("hit", "CatalogPriceRequest"), 3.0);
    assert_eq!(requests("bypass", "CatalogPriceRequest"), 1.0);
    assert_eq!(requests("error", "none"), 1.0);
    assert_eq!(m["soapcache_cache_entries"], 2.0);
    assert!(m["soapcache_cache_bytes"] > 0.0);
    assert_eq!(m["soapcache_upstream_request_duration_seconds_count"], 3.0);
    assert_eq!(m["soapcache_evictions_total"], 0.0);
    assert_eq!(m["soapcache_coalesced_requests_total"], 0.0);
    assert_eq!(m["soapcache_upstream_errors_total"], 0.0);
    assert!(m["process_resident_memory_bytes"] > 1e6);
    assert!(m["process_open_fds"] > 0.0);
    assert_eq!(
        m[&format!(
            "soapcache_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )],
        1.0
    );

    let stats = json(&http.admin("GET", &proxy.admin_url("/stats")).await);
    assert_eq!(stats["entries"], 2);
    assert_eq!(stats["hits"], 3);
    assert_eq!(stats["misses"], 2);
    assert_eq!(stats["hit_ratio"], 0.6);
    assert_eq!(stats["services"]["default"]["hits"], 3);
    assert_eq!(stats["services"]["default"]["entries"], 2);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_entries_leave_the_counts_without_further_traffic() {
    let upstream = Upstream::start(|seen| {
        let expires = std::time::SystemTime::now() + Duration::from_secs(2);
        Reply::xml(
            200,
            catalog_response(&part_of(&seen.body), &httpdate_to_xsd(expires)),
        )
    })
    .await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    http.soap(&proxy.url("/"), &catalog_request("SHORT")).await;
    let entries = || async {
        let stats = json(&http.admin("GET", &proxy.admin_url("/stats")).await);
        stats["entries"].as_u64().unwrap()
    };
    assert_eq!(entries().await, 1);
    // No request asks for it again: the periodic sweep removes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while entries().await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an expired entry is still counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = parse_metrics(&http.admin("GET", &proxy.admin_url("/metrics")).await.text());
    assert_eq!(m["soapcache_cache_entries"], 0.0);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_request_bodies_answered_from_the_cache_are_remembered() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    let memo = || async {
        let m = parse_metrics(&http.admin("GET", &proxy.admin_url("/metrics")).await.text());
        (m["soapcache_memo_bodies"], m["soapcache_memo_bytes"])
    };
    let parts: Vec<String> = (0..20).map(|i| format!("MEMO-{i}")).collect();
    // Twenty distinct requests, each stored: none is a repeat yet.
    for part in &parts {
        let answer = http.soap(&proxy.url("/"), &catalog_request(part)).await;
        assert_eq!(answer.x_cache(), "MISS");
    }
    assert_eq!(memo().await, (0.0, 0.0));
    // Their repeats are hits, and from now on each body is remembered.
    for _ in 0..2 {
        for part in parts.iter().take(5) {
            let answer = http.soap(&proxy.url("/"), &catalog_request(part)).await;
            assert_eq!(answer.x_cache(), "HIT");
            assert!(answer.text().contains(part.as_str()));
        }
    }
    let (bodies, bytes) = memo().await;
    assert_eq!(bodies, 5.0);
    assert!(
        bytes >= 5.0 * catalog_request("MEMO-0").len() as f64,
        "{bytes}"
    );
    assert_eq!(upstream.count(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requester_that_leaves_before_its_answer_is_logged_as_abandoned() {
    let upstream = Upstream::slow_catalog(Duration::from_secs(2)).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let body = catalog_request("GONE-1");
    let request = format!(
        "POST /catalog HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: \"\"\r\nX-Request-Id: gone-42\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let addr = proxy.proxy;
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Gone before the slow service answered.
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let logs = proxy.logs();
        if let Some(line) = logs.iter().find(|l| l.contains("abandoned")) {
            assert!(line.contains("gone-42"), "{line}");
            assert!(line.contains("499"), "{line}");
            assert!(line.contains("/catalog"), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no abandoned line in {logs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // An answered request is not logged as abandoned.
    let http = Http::default();
    let hit_or_miss = http
        .soap(&proxy.url("/catalog"), &catalog_request("STAYS-1"))
        .await;
    assert_eq!(hit_or_miss.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let abandoned = proxy
        .logs()
        .iter()
        .filter(|l| l.contains("abandoned"))
        .count();
    assert_eq!(abandoned, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_errors_are_counted() {
    let upstream = Upstream::catalog().await;
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("E"))
            .await
            .status,
        502
    );
    let m = parse_metrics(&http.admin("GET", &proxy.admin_url("/metrics")).await.text());
    assert_eq!(m["soapcache_upstream_errors_total"], 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_request_is_one_json_log_line_with_its_fields() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--log-format", "json"]);
    let http = Http::default();
    http.soap_with(
        &proxy.url("/catalog"),
        &catalog_request("L-1"),
        &[("x-request-id", "req-42")],
    )
    .await;
    let hit = http
        .soap(&proxy.url("/catalog"), &catalog_request("L-1"))
        .await;
    let generated = hit
        .header("x-request-id")
        .expect("a generated request id")
        .to_owned();
    // A requester's id goes back with a hit too.
    let own = http
        .soap_with(
            &proxy.url("/catalog"),
            &catalog_request("L-1"),
            &[("x-request-id", "req-43")],
        )
        .await;
    assert_eq!(own.x_cache(), "HIT");
    assert_eq!(own.header("x-request-id"), Some("req-43"));

    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = proxy
            .logs()
            .into_iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
            .filter(|l| l["target"] == "soapcache::access")
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 3, "{:?}", proxy.logs());
    assert_eq!(lines[2]["request_id"], "req-43");
    assert_eq!(lines[2]["result"], "hit");
    let miss = &lines[0];
    assert_eq!(miss["request_id"], "req-42");
    assert_eq!(miss["method"], "POST");
    assert_eq!(miss["path"], "/catalog");
    assert_eq!(miss["service"], "default");
    assert_eq!(miss["operation"], "CatalogPriceRequest");
    assert_eq!(miss["result"], "miss");
    assert_eq!(miss["status"], 200);
    assert!(miss["upstream_micros"].as_u64().is_some());
    assert!(miss["total_micros"].as_u64().unwrap() >= miss["upstream_micros"].as_u64().unwrap());
    assert!(miss["bytes"].as_u64().unwrap() > 100);
    let hit_line = &lines[1];
    assert_eq!(hit_line["result"], "hit");
    assert_eq!(hit_line["request_id"], generated.as_str());
    assert!(hit_line.get("upstream_micros").is_none_or(|v| v.is_null()));

    // The id reached the service.
    assert_eq!(
        header_values(&upstream.seen()[0].headers, "x-request-id"),
        ["req-42"]
    );
}

/// Access lines go out in batches (when the buffer fills, and whenever the
/// server idles): a burst larger than a batch still leaves exactly one
/// whole line per request, each soon after the burst ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_requests_leaves_one_whole_access_line_each() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    let answers = futures_util::future::join_all((0..400).map(|i| {
        let http = http.clone();
        let url = proxy.url("/catalog");
        async move {
            let part = format!("BURST-{}", i % 10);
            http.soap(&url, &catalog_request(&part)).await
        }
    }))
    .await;
    let mut ids: Vec<String> = answers
        .iter()
        .map(|a| a.header("x-request-id").expect("an id").to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);

    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = proxy
            .logs()
            .into_iter()
            .filter(|l| l.contains(" soapcache::access: "))
            .collect();
        if lines.len() >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 400);
    let mut logged: Vec<String> = lines
        .iter()
        .map(|l| {
            assert!(l.contains(" status=200 "), "{l}");
            assert!(
                l.contains(" INFO soapcache::access: request request_id=\""),
                "{l}"
            );
            let id = l
                .split("request_id=\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            id.expect("an id in each line").to_owned()
        })
        .collect();
    logged.sort();
    assert_eq!(logged, ids);
    let hits = lines
        .iter()
        .filter(|l| l.contains("result=\"hit\""))
        .count();
    assert!(hits > 0, "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_request_ids_are_unique_and_forwarded() {
    let upstream = Upstream::start(|_| Reply::xml(200, "<not-cached/>")).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    let a = http.soap(&proxy.url("/"), &catalog_request("I-1")).await;
    let b = http.soap(&proxy.url("/"), &catalog_request("I-1")).await;
    let (a, b) = (
        a.header("x-request-id").unwrap().to_owned(),
        b.header("x-request-id").unwrap().to_owned(),
    );
    assert_ne!(a, b);
    let seen = upstream.seen();
    assert_eq!(header_values(&seen[0].headers, "x-request-id"), [a]);
    assert_eq!(header_values(&seen[1].headers, "x-request-id"), [b]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_access_log_off_only_the_requesters_ids_travel() {
    let upstream = Upstream::start(|_| Reply::xml(200, "<not-cached/>")).await;
    let proxy = Soapcache::serve_env(
        &["--upstream", &upstream.url()],
        &[("RUST_LOG", "info,soapcache::access=off")],
    );
    let http = Http::default();
    let sent = http
        .soap_with(
            &proxy.url("/"),
            &catalog_request("I-2"),
            &[("x-request-id", "req-7")],
        )
        .await;
    let unsent = http.soap(&proxy.url("/"), &catalog_request("I-2")).await;
    assert_eq!(sent.header("x-request-id"), Some("req-7"));
    // No log line to tie it to: no id is made up.
    assert_eq!(unsent.header("x-request-id"), None);
    let seen = upstream.seen();
    assert_eq!(header_values(&seen[0].headers, "x-request-id"), ["req-7"]);
    assert!(header_values(&seen[1].headers, "x-request-id").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_through_the_admin_api_shows_in_metrics() {
    let upstream = Upstream::catalog().await;
    let dir = std::env::temp_dir().join(format!("soapcache-ops-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("svc.toml");
    let write = |route: &str| {
        let text = format!(
            "[service]\nname = \"svc\"\nroute = \"{route}\"\nupstream = \"{}\"\n",
            upstream.url()
        );
        std::fs::write(&policy, text).unwrap();
    };
    write("/svc");
    let proxy = Soapcache::serve(&["--policies", policy.to_str().unwrap(), "--admin-token", "t"]);
    let http = Http::default();
    let auth = [("authorization", "Bearer t")];
    let metrics = |text: String| parse_metrics(&text);

    write("/other");
    let reload = http
        .send("POST", &proxy.admin_url("/reload"), &auth, "")
        .await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let m = metrics(
        http.send("GET", &proxy.admin_url("/metrics"), &auth, "")
            .await
            .text(),
    );
    assert_eq!(m["soapcache_policy_reloads_total"], 1.0);

    std::fs::write(&policy, "[service]\nname = 1\n").unwrap();
    let refused = http
        .send("POST", &proxy.admin_url("/reload"), &auth, "")
        .await;
    assert_eq!(refused.status, 422);
    assert!(
        json(&refused)["errors"][0]
            .as_str()
            .unwrap()
            .contains("svc.toml:2"),
        "{}",
        refused.text()
    );
    let m = metrics(
        http.send("GET", &proxy.admin_url("/metrics"), &auth, "")
            .await
            .text(),
    );
    assert_eq!(
        m["soapcache_policy_reloads_total"], 1.0,
        "a refused reload is not counted"
    );
    // The running set is the reloaded one: /other routes to the service.
    let answer = http.soap(&proxy.url("/other"), &catalog_request("R")).await;
    assert_eq!(answer.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}
