//! Starting, failing upstreams and stopping (reference §1, §2).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_gets_a_502_fault_that_says_so() {
    let proxy = Soapcache::serve(&["--upstream", &format!("http://127.0.0.1:{}", closed_port())]);
    let http = Http::default();
    let answer = http.soap(&proxy.url("/"), &catalog_request("X")).await;
    assert_eq!(answer.status, 502);
    assert!(
        answer.text().contains("<faultcode>soap:Server</faultcode>"),
        "{}",
        answer.text()
    );
    assert!(
        answer.text().contains("cannot connect"),
        "{}",
        answer.text()
    );

    let soap12 = http
        .send(
            "POST",
            &proxy.url("/"),
            &[("content-type", "application/soap+xml")],
            soap12_request("X"),
        )
        .await;
    assert_eq!(soap12.status, 502);
    assert!(soap12.text().contains("env:Receiver"), "{}", soap12.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upstream_gets_a_504_fault_after_the_timeout() {
    let upstream =
        Upstream::start(|_| Reply::xml(200, "<late/>").after(Duration::from_secs(5))).await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--upstream-timeout", "300ms"]);
    let answer = Http::default()
        .soap(&proxy.url("/"), &catalog_request("SLOW"))
        .await;
    assert_eq!(answer.status, 504);
    assert!(
        answer.text().contains("did not answer within"),
        "{}",
        answer.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let upstream = Upstream::slow_catalog(Duration::from_millis(800)).await;
    let mut proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    let http = Http::default();
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let (http, url) = (http.clone(), proxy.url("/"));
            tokio::spawn(async move { http.soap(&url, &catalog_request(&format!("T-{i}"))).await })
        })
        .collect();
    // Let the requests reach the upstream, then ask soapcache to stop.
    while upstream.count() < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.signal("TERM");
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "in-flight request completed");
        assert!(answer.text().contains("CatalogPriceResponse"));
    }
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    // It no longer accepts connections.
    assert!(std::net::TcpStream::connect(proxy.proxy).is_err());
}

fn run_serve(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .arg("serve")
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run soapcache");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_port_in_use_is_one_clear_line_and_a_failure_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = run_serve(&[
        "--listen",
        &addr,
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&addr) && lines[0].contains("in use"),
        "{stderr}"
    );
}

#[test]
fn bad_flags_and_missing_upstreams_are_refused_at_startup() {
    let (ok, stderr) = run_serve(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(stderr.contains("--upstream"), "{stderr}");

    let (ok, stderr) = run_serve(&["--cache-size", "lots", "--upstream", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(stderr.contains("lots"), "{stderr}");

    let (ok, stderr) = run_serve(&[
        "--upstream",
        "ftp://example/x",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("http://"), "{stderr}");

    // A client timeout of nothing would close every connection at once.
    let (ok, stderr) = run_serve(&["--client-timeout", "0s", "--upstream", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(stderr.contains("must be more than zero"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_can_come_from_the_environment() {
    let upstream = Upstream::catalog().await;
    let url = upstream.url();
    let proxy = Soapcache::serve_env(
        &[],
        &[("SOAPCACHE_UPSTREAM", &url), ("SOAPCACHE_MAX_BODY", "1KiB")],
    );
    let http = Http::default();
    assert_eq!(
        http.soap(&proxy.url("/"), &catalog_request("ENV"))
            .await
            .status,
        200
    );
    let big = catalog_request(&"x".repeat(2048));
    assert_eq!(http.soap(&proxy.url("/"), &big).await.status, 413);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_health_and_requires_its_token() {
    let upstream = Upstream::catalog().await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url(), "--admin-token", "s3cret"]);
    let http = Http::default();
    assert_eq!(
        http.admin("GET", &proxy.admin_url("/healthz")).await.text(),
        "ok"
    );
    assert_eq!(
        http.admin("DELETE", &proxy.admin_url("/cache"))
            .await
            .status,
        401
    );
    let wrong = http
        .send(
            "DELETE",
            &proxy.admin_url("/cache"),
            &[("authorization", "Bearer nope")],
            "",
        )
        .await;
    assert_eq!(wrong.status, 401);
    let right = http
        .send(
            "DELETE",
            &proxy.admin_url("/cache"),
            &[("authorization", "Bearer s3cret")],
            "",
        )
        .await;
    assert_eq!(right.status, 200);
    assert_eq!(json(&right)["purged"], 0);
}

#[test]
fn a_missing_or_invalid_policy_path_is_one_clear_startup_error() {
    let (ok, stderr) = run_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--policies",
        "/nonexistent/policies",
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/policies"), "{stderr}");

    let dir = std::env::temp_dir().join(format!("soapcache-bad-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[service]\nname = \"x\"\nroute = \"/x\"\nbogus = 1\n",
    )
    .unwrap();
    let (ok, stderr) = run_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--policies",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bad.toml:4"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_path_no_policy_routes_without_a_default_upstream_gets_a_502_fault() {
    let upstream = Upstream::catalog().await;
    let dir = std::env::temp_dir().join(format!("soapcache-unrouted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("only.toml");
    std::fs::write(
        &file,
        format!(
            "[service]\nname = \"only\"\nroute = \"/only\"\nupstream = \"{}\"\n",
            upstream.url()
        ),
    )
    .unwrap();
    let proxy = Soapcache::serve(&["--policies", file.to_str().unwrap()]);
    let http = Http::default();
    let answer = http
        .soap(&proxy.url("/elsewhere"), &catalog_request("X"))
        .await;
    assert_eq!(answer.status, 502);
    assert!(
        answer
            .text()
            .contains("no upstream is configured for /elsewhere"),
        "{}",
        answer.text()
    );
    assert_eq!(
        http.soap(&proxy.url("/only"), &catalog_request("X"))
            .await
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_that_queues_needs_a_data_dir_said_in_one_line() {
    let orders = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/orders.toml");
    let (ok, stderr) = run_serve(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--policies",
        orders,
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("PlaceOrder") && stderr.contains("--data-dir"),
        "{stderr}"
    );

    // With one, the shipped example serves: an order is queued.
    let data = DataDir::new("orders-example");
    let proxy = Soapcache::serve(&["--policies", orders, "--data-dir", data.path_str()]);
    let order = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
<o:PlaceOrder xmlns:o=\"urn:example:orders\"><o:CustomerId>C-42</o:CustomerId><o:OrderRef>R-1</o:OrderRef></o:PlaceOrder>\
</soap:Body></soap:Envelope>";
    let answer = Http::default().soap(&proxy.url("/orders"), order).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert!(data.0.join("queue.sqlite3").is_file());

    // An unknown queue backend is refused by the flag parser.
    let (ok, stderr) = run_serve(&["--queue", "kafka://x", "--upstream", "http://127.0.0.1:1"]);
    assert!(!ok);
    assert!(
        stderr.contains("neither `embedded` nor an amqp://"),
        "{stderr}"
    );
}
