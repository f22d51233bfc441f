//! The RabbitMQ queue backend (`--queue amqp://…`, reference §10–§13) with
//! a real `rabbitmq-server` (and a real `redis-server` for message ids
//! and results), real instances of the binary and a real service on
//! loopback: a fleet of instances on one broker delivers everything it
//! answered 202 for, across a `kill -9` of an instance and of the broker,
//! keeps `order_by` order across instances, and with `--shared-cache`
//! shares `dedup` and results to poll. The backend's behaviour on one
//! instance (retries, dead letters, ...) is `tests/delivery.rs`'s suite,
//! which runs on both backends.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::orders::{delivered, field, send_orders, Told};
use support::servers::{RabbitBroker, RedisServer};
use support::*;

const ORDERS: &str = "urn:example:orders";
const WSA: &str = "http://www.w3.org/2005/08/addressing";

fn policy(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"[service]
name = "orders"
route = "/orders"
upstream = "http://{upstream}/orders"

[namespaces]
o = "{ORDERS}"

[[operation]]
element = "o:PlaceOrder"
delivery = "queued"
{extra}
"#
    )
}

/// An order, with `headers` (WS-Addressing) in its SOAP header.
fn order(customer: &str, reference: &str, headers: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:wsa=\"{WSA}\"><soap:Header>{headers}</soap:Header>\
<soap:Body><o:PlaceOrder xmlns:o=\"{ORDERS}\">\
<o:CustomerId>{customer}</o:CustomerId><o:OrderRef>{reference}</o:OrderRef>\
</o:PlaceOrder></soap:Body></soap:Envelope>"
    )
}

fn message_id(id: &str) -> String {
    format!(
        "<wsa:MessageID>{id}</wsa:MessageID><wsa:Action>urn:example:orders/PlaceOrder</wsa:Action>"
    )
}

fn ok(text: &str) -> Reply {
    Reply::xml(
        200,
        format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:PlaceOrderResponse xmlns:o=\"{ORDERS}\">{text}</o:PlaceOrderResponse></soap:Body></soap:Envelope>"),
    )
}

/// Instances of the binary on one queue, with one policy file.
struct Fleet {
    instances: Vec<Soapcache>,
    _policy: ScratchFile,
}

fn fleet(test: &str, n: usize, upstream: SocketAddr, extra: &str, flags: &[&str]) -> Fleet {
    let policy = ScratchFile::new(test, "orders.toml", &policy(upstream, extra));
    let mut args = vec!["--policies", policy.path_str()];
    args.extend_from_slice(flags);
    Fleet {
        instances: (0..n).map(|_| Soapcache::serve(&args)).collect(),
        _policy: policy,
    }
}

/// `--queue URL` on a new vhost of this binary's broker; `None` (skipped)
/// without rabbitmq-server, outside CI.
fn shared_queue(test: &str) -> Option<String> {
    let broker = RabbitBroker::shared()?;
    Some(broker.amqp_url(&broker.new_vhost(test)))
}

async fn queue(http: &Http, proxy: &Soapcache) -> serde_json::Value {
    json(&http.admin("GET", &proxy.admin_url("/queue")).await)
}

/// Nothing ready, in flight or retrying, as every instance sees it.
async fn drained(http: &Http, instances: &[&Soapcache], limit: Duration) -> bool {
    eventually(limit, || async {
        for proxy in instances {
            let q = queue(http, proxy).await;
            let t = &q["totals"];
            if !(t["ready"] == 0 && t["in_flight"] == 0 && t["retrying"] == 0) {
                return false;
            }
        }
        true
    })
    .await
}

/// Nothing answered 202 is missing from `delivered`, and at most
/// `refused_yet_delivered` answered 503 are in it: a publish the broker
/// stored just before it was killed, whose confirm never came back, was
/// answered 503 (never a 202 without a confirm) and is delivered all the
/// same; at most one per requester in flight at the kill.
fn assert_none_lost(told: &Told, delivered: &HashMap<String, usize>, refused_yet_delivered: usize) {
    let lost: Vec<&String> = told
        .accepted
        .iter()
        .filter(|r| !delivered.contains_key(*r))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 202 but never delivered: {lost:?}"
    );
    let stored: Vec<&String> = told
        .refused
        .iter()
        .filter(|r| delivered.contains_key(*r))
        .collect();
    assert!(
        stored.len() <= refused_yet_delivered,
        "answered 503 yet delivered: {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_deliver_all_they_accepted_when_one_is_killed_mid_delivery() {
    let Some(url) = shared_queue("kill-one") else {
        return;
    };
    let upstream = Upstream::start(|_| ok("").after(Duration::from_millis(30))).await;
    let mut fleet = fleet(
        "kill-one",
        2,
        upstream.addr,
        "",
        &["--queue", &url, "--delivery-concurrency", "16"],
    );
    let urls: Vec<String> = fleet.instances.iter().map(|p| p.url("/orders")).collect();
    let http = Http::default();
    let stats = json(
        &http
            .admin("GET", &fleet.instances[0].admin_url("/stats"))
            .await,
    );
    assert_eq!(stats["queue"]["backend"], "amqp", "{stats}");
    assert_eq!(stats["queue"]["connected"], true, "{stats}");

    // kill -9 the first instance once 300 deliveries have happened.
    let accepting = tokio::spawn(send_orders(
        urls,
        0,
        1000,
        16,
        |c, r| order(c, r, ""),
        |_| {},
    ));
    assert!(
        eventually(Duration::from_secs(60), || async {
            upstream.count() >= 300
        })
        .await
    );
    fleet.instances[0].kill9();
    let before = upstream.count();
    let told = accepting.await.unwrap();
    assert!(
        told.accepted.len() >= 500,
        "accepted {}",
        told.accepted.len()
    );

    let survivor = &fleet.instances[1];
    assert!(drained(&http, &[survivor], Duration::from_secs(90)).await);
    let delivered = delivered(&upstream);
    assert_none_lost(&told, &delivered, 0);
    // Twice only for attempts the kill cut short: at most the killed
    // instance's prefetch (16).
    let twice: Vec<(&String, &usize)> = delivered.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.iter().all(|(_, &n)| n == 2), "{twice:?}");
    assert!(twice.len() <= 16, "{} delivered twice", twice.len());
    eprintln!(
        "accepted {}, failed {} (the killed instance's), delivered {} before the kill, {} in all, {} twice",
        told.accepted.len(),
        told.failed.len(),
        before,
        delivered.len(),
        twice.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_killed_and_restarted_mid_load_loses_nothing_answered_202() {
    let Some(broker) = RabbitBroker::start() else {
        return;
    };
    let broker = Arc::new(broker);
    let url = broker.amqp_url("/");
    let upstream = Upstream::start(|_| ok("")).await;
    let fleet = fleet("broker-restart", 2, upstream.addr, "", &["--queue", &url]);
    let (a, b) = (&fleet.instances[0], &fleet.instances[1]);
    let urls = vec![a.url("/orders"), b.url("/orders")];
    let http = Http::default();

    // kill -9 of the broker once 150 are accepted, from inside the load.
    let killer = broker.clone();
    let fired = Arc::new(AtomicUsize::new(0));
    let fired_in_load = fired.clone();
    let during = send_orders(
        urls.clone(),
        0,
        600,
        8,
        |c, r| order(c, r, ""),
        move |accepted| {
            if accepted == 150 && fired_in_load.fetch_add(1, Ordering::SeqCst) == 0 {
                let killer = killer.clone();
                std::thread::spawn(move || killer.kill9());
            }
        },
    )
    .await;
    assert_eq!(fired.load(Ordering::SeqCst), 1);
    assert!(
        !during.refused.is_empty(),
        "503s while the broker was down (accepted {}, failed {})",
        during.accepted.len(),
        during.failed.len()
    );
    // Down is said: 503 at once, /queue and the gauge.
    let started = Instant::now();
    let refused = http
        .send(
            "POST",
            &a.url("/orders"),
            &[("content-type", "text/xml")],
            order("C", "DOWN", ""),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(started.elapsed() < Duration::from_secs(2), "503 at once");
    assert_eq!(queue(&http, a).await["connected"], false);
    let m = http.admin("GET", &a.admin_url("/metrics")).await.text();
    assert_eq!(metric(&m, "soapcache_queue_broker_up"), Some(0.0), "{m}");

    let restarter = broker.clone();
    tokio::task::spawn_blocking(move || restarter.restart())
        .await
        .unwrap();
    // Both reconnect on their own.
    let mut probes = HashSet::new();
    for (n, proxy) in [a, b].into_iter().enumerate() {
        let back = eventually(Duration::from_secs(30), || {
            let reference = format!("PROBE-{n}");
            let http = &http;
            let url = proxy.url("/orders");
            async move {
                let answer = http
                    .send(
                        "POST",
                        &url,
                        &[("content-type", "text/xml")],
                        order("C", &reference, ""),
                    )
                    .await;
                answer.status == 202
            }
        })
        .await;
        assert!(back, "instance {n} reconnected");
        probes.insert(format!("PROBE-{n}"));
    }
    let after = send_orders(urls, 1000, 200, 8, |c, r| order(c, r, ""), |_| {}).await;
    assert_eq!(
        after.accepted.len(),
        200,
        "all accepted once the broker is back"
    );

    assert!(drained(&http, &[a, b], Duration::from_secs(60)).await);
    let delivered = delivered(&upstream);
    // The load's 8 requesters: at most 8 publishes in flight at the kill.
    assert_none_lost(&during, &delivered, 8);
    assert_none_lost(&after, &delivered, 0);
    for probe in &probes {
        assert!(delivered.contains_key(probe), "{probe}");
    }
    let m = http.admin("GET", &a.admin_url("/metrics")).await.text();
    assert_eq!(metric(&m, "soapcache_queue_broker_up"), Some(1.0), "{m}");
    assert!(
        metric(&m, "soapcache_queue_confirms_total{result=\"ack\"}").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    eprintln!(
        "during: accepted {}, 503 {}, failed {}; after: {}",
        during.accepted.len(),
        during.refused.len(),
        during.failed.len(),
        after.accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn order_by_holds_across_two_instances_with_retries_and_dead_letters() {
    let Some(url) = shared_queue("order") else {
        return;
    };
    // (customer, reference) in the order the service saw them. R-105
    // fails twice before it is taken; R-207 is refused (dead-lettered).
    let log = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let seen_log = log.clone();
    let upstream = Upstream::start(move |s| {
        let reference: usize = field(s, "OrderRef")
            .trim_start_matches("R-")
            .parse()
            .unwrap();
        seen_log
            .lock()
            .unwrap()
            .push((field(s, "CustomerId"), reference));
        let attempt: u32 = header_values(&s.headers, "x-delivery-attempt")[0]
            .parse()
            .unwrap();
        match reference {
            105 if attempt < 3 => Reply::xml(503, "busy"),
            207 => Reply::xml(400, "no"),
            _ => ok("").after(Duration::from_millis(5)),
        }
    })
    .await;
    let fleet = fleet(
        "order",
        2,
        upstream.addr,
        "order_by = [\"string(o:CustomerId)\"]\nretry_backoff = \"200ms\"\nmax_retry_backoff = \"400ms\"",
        &["--queue", &url],
    );
    let (a, b) = (&fleet.instances[0], &fleet.instances[1]);
    // Each customer's orders alternate between the two instances.
    let mut tasks = Vec::new();
    for c in 0..6 {
        let urls = [a.url("/orders"), b.url("/orders")];
        tasks.push(tokio::spawn(async move {
            let http = Http::default();
            for n in 0..20 {
                let reference = format!("R-{}", c * 100 + n);
                let answer = http
                    .send(
                        "POST",
                        &urls[n % 2],
                        &[("content-type", "text/xml")],
                        order(&format!("C{c}"), &reference, ""),
                    )
                    .await;
                assert_eq!(answer.status, 202, "{}", answer.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let http = Http::default();
    assert!(drained(&http, &[a, b], Duration::from_secs(60)).await);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 120 + 2, "every order once, R-105 three times");
    let mut per_customer: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (customer, reference) in &log {
        per_customer
            .entry(customer.clone())
            .or_default()
            .push(*reference);
    }
    for (customer, references) in &per_customer {
        // Non-decreasing: R-105's retries come before R-106.
        assert!(
            references.windows(2).all(|w| w[0] <= w[1]),
            "{customer} out of order: {references:?}"
        );
    }
    // The dead letter is the fleet's: both instances list it.
    for proxy in [a, b] {
        let dead = json(&http.admin("GET", &proxy.admin_url("/dead-letters")).await);
        let dead = dead.as_array().unwrap();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0]["reason"], "refused");
        assert_eq!(dead[0]["attempts"], 1);
        assert!(dead[0]["last_error"].as_str().unwrap().contains("400"));
    }
    let q = queue(&http, b).await;
    assert_eq!(q["totals"]["dead"], 1, "{q}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_message_id_sent_to_two_instances_is_delivered_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(url) = shared_queue("dedup") else {
        return;
    };
    let upstream = Upstream::start(|_| ok("").after(Duration::from_millis(300))).await;
    let fleet = fleet(
        "dedup",
        2,
        upstream.addr,
        "dedup = \"1h\"\nresult_retention = \"0s\"",
        &["--queue", &url, "--shared-cache", &redis.url()],
    );
    let (a, b) = (&fleet.instances[0], &fleet.instances[1]);
    let http = Http::default();
    let id = "urn:uuid:5f0e8a52-0000-4000-8000-0000000000a1";
    let body = order("C", "R-1", &message_id(id));
    let sends = (0..20).map(|n| {
        let proxy = if n % 2 == 0 { a } else { b };
        let (http, body) = (&http, body.clone());
        async move {
            http.send(
                "POST",
                &proxy.url("/orders"),
                &[("content-type", "text/xml")],
                body,
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    for answer in &answers {
        assert_eq!(answer.status, 202, "{}", answer.text());
        assert_eq!(answer.header("x-message-id"), Some(id));
    }
    let duplicates = answers
        .iter()
        .filter(|a| a.header("cache-status") == Some("soapcache; fwd=queued; detail=duplicate"))
        .count();
    assert_eq!(duplicates, 19, "every repeat, on either instance");
    assert!(drained(&http, &[a, b], Duration::from_secs(15)).await);
    assert_eq!(upstream.count(), 1, "the service saw the message once");
    // After delivery, the repeat is answered as the embedded queue does.
    let again = http
        .send(
            "POST",
            &b.url("/orders"),
            &[("content-type", "text/xml")],
            body.clone(),
        )
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(
        again.header("cache-status"),
        Some("soapcache; fwd=queued; detail=duplicate")
    );
    // The id for another message: refused.
    let reused = http
        .send(
            "POST",
            &a.url("/orders"),
            &[("content-type", "text/xml")],
            order("C", "R-2", &message_id(id)),
        )
        .await;
    assert_eq!(reused.status, 500, "{}", reused.text());
    assert!(
        reused.text().contains("message id reused"),
        "{}",
        reused.text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 1);
}

/// `serve` with a policy of `extra` keys and `queue_flags`: exit code and
/// what it printed.
fn refused_at_startup(extra: &str, queue_flags: &[&str]) -> (Option<i32>, String) {
    let text = policy(free_addr(), extra);
    let policy = ScratchFile::new("amqp-no-redis", "orders.toml", &text);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--policies", policy.path_str()])
        .args(queue_flags)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn dedup_or_results_on_amqp_without_shared_cache_are_refused_in_one_line() {
    // The exit code of the other setup errors: the same policy on the
    // embedded queue without a --data-dir.
    let (setup_error, stderr) = refused_at_startup("dedup = \"1h\"", &[]);
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert_ne!(setup_error, Some(0));
    for (extra, key) in [
        ("dedup = \"1h\"\nresult_retention = \"0s\"", "dedup"),
        ("result_retention = \"1h\"", "result_retention"),
    ] {
        // Refused before any connection: the broker's address is unused.
        let (code, stderr) =
            refused_at_startup(extra, &["--queue", "amqp://guest:guest@127.0.0.1:1/%2f"]);
        assert_eq!(code, setup_error, "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("PlaceOrder uses {key}")),
            "{stderr}"
        );
        assert!(stderr.contains("--shared-cache"), "{stderr}");
    }
}

#[test]
fn amqps_is_refused_at_startup_in_one_line() {
    let (code, stderr) =
        refused_at_startup("", &["--queue", "amqps://guest:guest@127.0.0.1:1/%2f"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("amqps"), "{stderr}");
    assert!(!stderr.contains("guest:guest"), "no password: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_to_poll_work_across_instances_with_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let Some(url) = shared_queue("results") else {
        return;
    };
    let upstream = Upstream::start(|seen| {
        if field(seen, "OrderRef") == "REFUSE" {
            Reply::xml(400, "no")
        } else {
            ok("the result").after(Duration::from_millis(800))
        }
    })
    .await;
    let fleet = fleet(
        "results",
        2,
        upstream.addr,
        "result_retention = \"3s\"\ndedup = \"1h\"",
        &["--queue", &url, "--shared-cache", &redis.url()],
    );
    let (a, b) = (&fleet.instances[0], &fleet.instances[1]);
    let http = Http::default();
    let body = order("C", "R-1", &message_id("urn:uuid:result/1"));
    let accepted = http
        .send(
            "POST",
            &a.url("/orders"),
            &[
                ("content-type", "text/xml; charset=utf-8"),
                ("authorization", "Bearer alice"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    // Polled on the other instance.
    let result = b.url("/.results/urn%3Auuid%3Aresult%2F1");
    let get = |who: &'static str| {
        let (http, result) = (&http, result.clone());
        async move {
            let auth = format!("Bearer {who}");
            http.send("GET", &result, &[("authorization", &auth)], "")
                .await
        }
    };
    assert_eq!(get("alice").await.status, 202, "pending");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get("alice").await.status == 200
        })
        .await
    );
    let fetched = get("alice").await;
    assert!(fetched.text().contains("the result"), "{}", fetched.text());
    assert_eq!(
        get("bob").await.status,
        404,
        "another credential sees nothing"
    );
    // A repeat, on the other instance, gets the result.
    let again = http
        .send(
            "POST",
            &b.url("/orders"),
            &[
                ("content-type", "text/xml; charset=utf-8"),
                ("authorization", "Bearer alice"),
            ],
            body,
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.x_cache(), "REPLAY");
    assert_eq!(again.body, fetched.body);
    assert!(
        eventually(Duration::from_secs(6), || async {
            get("alice").await.status == 404
        })
        .await,
        "gone after its retention"
    );
    assert_eq!(upstream.count(), 1);

    // A dead-lettered message's result: 410, on either instance.
    let refused = order("C", "REFUSE", &message_id("urn:uuid:result-2"));
    let answer = http
        .send(
            "POST",
            &b.url("/orders"),
            &[("content-type", "text/xml")],
            refused,
        )
        .await;
    assert_eq!(answer.status, 202);
    let gone = a.url("/.results/urn:uuid:result-2");
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.send("GET", &gone, &[], "").await.status == 410
        })
        .await
    );
}
