//! Queued delivery (reference §10) through the real binary, a real store
//! (on disk, or a real RabbitMQ broker) and a real service on loopback:
//! accepted durably and answered 202, delivered with retries, dead letters
//! and per-`order_by` order, and nothing answered 202 lost when soapcache
//! is killed.
//!
//! One suite, two backends: a test that holds for any queue takes a
//! [`Backend`] and `on_both_backends!` makes `NAME::embedded` and
//! `NAME::amqp` of it (the amqp one on a vhost of its own on this binary's
//! broker, skipped outside CI when rabbitmq-server is not installed).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::orders::{delivered, field, send_orders};
use support::*;

const ORDERS: &str = "urn:example:orders";

/// The orders service's policy: `PlaceOrder` queued with `extra` keys,
/// `GetOrder` direct.
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

fn order(customer: &str, reference: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:PlaceOrder xmlns:o=\"{ORDERS}\">\
<o:CustomerId>{customer}</o:CustomerId><o:OrderRef>{reference}</o:OrderRef>\
</o:PlaceOrder></soap:Body></soap:Envelope>"
    )
}

fn ok() -> Reply {
    Reply::xml(
        200,
        format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:PlaceOrderResponse xmlns:o=\"{ORDERS}\"/></soap:Body></soap:Envelope>"),
    )
}

fn fault(code: &str, status: u16) -> Reply {
    Reply::xml(
        status,
        format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>no</faultstring></soap:Fault></soap:Body></soap:Envelope>"),
    )
}

struct Setup {
    proxy: Soapcache,
    _policy: ScratchFile,
    data: DataDir,
    backend: Backend,
    /// `--queue URL` for amqp: the same vhost again after a restart.
    queue: Vec<String>,
}

/// Where queued messages are kept in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Embedded,
    Amqp,
}

impl Backend {
    /// The flags for this backend, or `None` (after a `skipping:` line)
    /// when its server is not installed, outside CI.
    fn flags(self, test: &str) -> Option<Vec<String>> {
        match self {
            Backend::Embedded => Some(Vec::new()),
            Backend::Amqp => {
                let broker = servers::RabbitBroker::shared()?;
                let vhost = broker.new_vhost(test);
                Some(vec!["--queue".into(), broker.amqp_url(&vhost)])
            }
        }
    }
}

/// Makes `NAME::embedded` and `NAME::amqp` tests of `async fn NAME(Backend)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread")]
                async fn embedded() {
                    super::$name(super::Backend::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread")]
                async fn amqp() {
                    super::$name(super::Backend::Amqp).await
                }
            }
        )*
    };
}

on_both_backends!(
    a_queued_write_is_answered_202_while_the_service_sleeps_then_delivered_exactly,
    nothing_answered_202_is_lost_when_soapcache_is_killed_while_accepting,
    sigterm_with_messages_waiting_exits_0_and_the_next_start_delivers_them,
    sigterm_during_a_backlog_stops_delivering_and_the_next_start_delivers_the_rest,
    nothing_answered_202_is_lost_when_soapcache_is_killed_while_delivering,
    a_failing_service_is_retried_with_doubling_backoff_until_it_answers,
    a_client_fault_or_a_4xx_is_dead_lettered_at_once,
    a_service_never_up_is_dead_lettered_after_max_attempts,
    a_message_not_delivered_within_its_time_is_dead_lettered_as_expired,
    messages_of_one_order_by_value_arrive_in_acceptance_order_and_others_overlap,
    dead_letters_can_be_listed_read_retried_and_deleted,
    bad_input_to_a_queued_operation_gets_faults_and_is_never_stored,
    a_delivered_write_fires_its_invalidation,
    large_and_multipart_writes_are_queued_whole_and_delivered_exactly,
);

/// On the embedded queue only.
fn serve(test: &str, upstream: SocketAddr, extra: &str, flags: &[&str]) -> Setup {
    serve_on(Backend::Embedded, test, upstream, extra, flags).expect("the embedded queue")
}

fn serve_on(
    backend: Backend,
    test: &str,
    upstream: SocketAddr,
    extra: &str,
    flags: &[&str],
) -> Option<Setup> {
    let queue = backend.flags(test)?;
    let data = DataDir::new(test);
    Some(serve_with_queue(
        backend, test, upstream, extra, flags, data, queue,
    ))
}

/// `setup`'s instance again (after a kill), on the same store or vhost.
fn serve_again(
    setup: &mut Setup,
    test: &str,
    upstream: SocketAddr,
    extra: &str,
    flags: &[&str],
) -> Setup {
    let data = std::mem::replace(&mut setup.data, DataDir::new("unused"));
    serve_with_queue(
        setup.backend,
        test,
        upstream,
        extra,
        flags,
        data,
        setup.queue.clone(),
    )
}

fn serve_with_queue(
    backend: Backend,
    test: &str,
    upstream: SocketAddr,
    extra: &str,
    flags: &[&str],
    data: DataDir,
    queue: Vec<String>,
) -> Setup {
    let policy = ScratchFile::new(test, "orders.toml", &policy(upstream, extra));
    let mut args = vec!["--policies", policy.path_str()];
    match backend {
        Backend::Embedded => args.extend(["--data-dir", data.path_str()]),
        Backend::Amqp => args.extend(queue.iter().map(String::as_str)),
    }
    args.extend_from_slice(flags);
    Setup {
        proxy: Soapcache::serve(&args),
        _policy: policy,
        data,
        backend,
        queue,
    }
}

async fn place(http: &Http, proxy: &Soapcache, customer: &str, reference: &str) -> Answer {
    http.send(
        "POST",
        &proxy.url("/orders"),
        &[
            ("content-type", "text/xml; charset=utf-8"),
            ("soapaction", "\"urn:example:orders/PlaceOrder\""),
        ],
        order(customer, reference),
    )
    .await
}

async fn queue(http: &Http, proxy: &Soapcache) -> serde_json::Value {
    json(&http.admin("GET", &proxy.admin_url("/queue")).await)
}

/// Waits until nothing is ready, in flight or retrying.
async fn drained(http: &Http, proxy: &Soapcache, limit: Duration) -> bool {
    eventually(limit, || async {
        let q = queue(http, proxy).await;
        let t = &q["totals"];
        t["ready"] == 0 && t["in_flight"] == 0 && t["retrying"] == 0
    })
    .await
}

async fn dead_letters(http: &Http, proxy: &Soapcache) -> Vec<serde_json::Value> {
    let list = json(&http.admin("GET", &proxy.admin_url("/dead-letters")).await);
    list.as_array().cloned().unwrap_or_default()
}

async fn a_queued_write_is_answered_202_while_the_service_sleeps_then_delivered_exactly(
    backend: Backend,
) {
    let upstream = Upstream::start(|_| ok().after(Duration::from_secs(1))).await;
    let Some(setup) = serve_on(backend, "accept", upstream.addr, "", &[]) else {
        return;
    };
    let http = Http::default();
    let body = order("C-1", "R-1");
    let answer = http
        .send(
            "POST",
            &setup.proxy.url("/orders"),
            &[
                ("content-type", "text/xml; charset=utf-8"),
                ("soapaction", "\"urn:example:orders/PlaceOrder\""),
                ("x-request-id", "req-42"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(
        upstream.answered(),
        0,
        "the 202 came before the service answered"
    );
    assert!(answer.body.is_empty());
    assert_eq!(answer.x_cache(), "QUEUED");
    assert_eq!(answer.header("cache-status"), Some("soapcache; fwd=queued"));
    let id = answer
        .header("x-message-id")
        .expect("X-Message-Id")
        .to_owned();
    assert!(id.starts_with("urn:uuid:"), "{id}");

    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream.answered() == 1
        })
        .await
    );
    let seen = &upstream.seen()[0];
    assert_eq!(seen.body, body.as_bytes(), "the exact request bytes");
    assert_eq!(seen.path_and_query, "/orders");
    let header = |name| header_values(&seen.headers, name);
    assert_eq!(header("soapaction"), ["\"urn:example:orders/PlaceOrder\""]);
    assert_eq!(header("content-type"), ["text/xml; charset=utf-8"]);
    assert_eq!(header("x-message-id"), std::slice::from_ref(&id));
    assert_eq!(header("x-delivery-attempt"), ["1"]);
    assert_eq!(header("x-request-id"), ["req-42"]);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(5)).await);
    assert_eq!(upstream.count(), 1);

    // Accept and delivery are in the access log, with the message id.
    let logged = eventually(Duration::from_secs(5), || async {
        let logs = setup.proxy.logs();
        logs.iter()
            .any(|l| l.contains("result=\"queued\"") && l.contains(&id))
            && logs.iter().any(|l| {
                l.contains("delivery")
                    && l.contains("result=\"delivered\"")
                    && l.contains(&id)
                    && l.contains("attempt=1")
            })
    })
    .await;
    assert!(logged, "{:?}", setup.proxy.logs());
    // The metrics count it.
    let metrics = http
        .admin("GET", &setup.proxy.admin_url("/metrics"))
        .await
        .text();
    assert!(metrics.contains(r#"soapcache_deliveries_total{service="orders",operation="PlaceOrder",result="delivered"} 1"#), "{metrics}");
    assert!(
        metrics.contains(
            r#"soapcache_requests_total{service="orders",operation="PlaceOrder",result="queued"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("soapcache_queue_bytes 0"), "{metrics}");
    // The broker's series only where there is a broker (deploy/'s alerts
    // on them must not fire for an embedded instance).
    match backend {
        Backend::Embedded => assert!(!metrics.contains("soapcache_queue_broker_up"), "{metrics}"),
        Backend::Amqp => {
            assert!(metrics.contains("soapcache_queue_broker_up 1"), "{metrics}");
            assert!(
                metrics.contains(r#"soapcache_queue_confirms_total{result="ack"}"#),
                "{metrics}"
            );
        }
    }
}

async fn nothing_answered_202_is_lost_when_soapcache_is_killed_while_accepting(backend: Backend) {
    let service = free_addr();
    let Some(mut setup) = serve_on(
        backend,
        "kill-accept",
        service,
        "retry_backoff = \"100ms\"\nmax_retry_backoff = \"200ms\"",
        &[],
    ) else {
        return;
    };
    let url = setup.proxy.url("/orders");
    // kill -9 once 400 have been accepted, from inside the load.
    let armed = Arc::new(Mutex::new(Some(ArmedSignal::new("KILL"))));
    let pid = setup.proxy.pid();
    let trigger = armed.clone();
    let told = send_orders(vec![url], 0, 1000, 16, order, move |accepted| {
        if accepted == 400 {
            if let Some(signal) = trigger.lock().unwrap().take() {
                signal.fire(pid);
            }
        }
    })
    .await;
    setup.proxy.kill9();
    assert!(
        told.accepted.len() >= 400,
        "accepted {}",
        told.accepted.len()
    );
    assert!(told.accepted.len() < 1000, "the kill came mid-stream");

    // Restart on the same store, bring the service up.
    let restarted = serve_again(
        &mut setup,
        "kill-accept",
        service,
        "retry_backoff = \"100ms\"\nmax_retry_backoff = \"200ms\"",
        &[],
    );
    let upstream = Upstream::start_on(service, |_| ok()).await;
    let http = Http::default();
    assert!(drained(&http, &restarted.proxy, Duration::from_secs(60)).await);

    let delivered = delivered(&upstream);
    let lost: Vec<&String> = told
        .accepted
        .iter()
        .filter(|r| !delivered.contains_key(*r))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 202 but never delivered: {lost:?}"
    );
    for r in delivered.keys() {
        assert!(!told.refused.contains(r), "{r} was refused yet delivered");
    }
    // Delivered without a 202: only requests whose answer the kill cut off.
    let unconfirmed: Vec<&String> = delivered
        .keys()
        .filter(|r| !told.accepted.contains(*r))
        .collect();
    assert!(unconfirmed.iter().all(|r| told.failed.contains(*r)));
    assert!(
        unconfirmed.len() <= 16,
        "{} delivered without a 202",
        unconfirmed.len()
    );
    // The service was down before the kill: nothing was delivered twice on
    // the embedded queue, whose retry is one commit. On amqp a retry is a
    // publish to a delay queue, then the acknowledgement of the attempt: a
    // kill between the two leaves both copies, at most one per message the
    // instance held (its prefetch, 16).
    let twice = delivered.values().filter(|&&n| n > 1).count();
    assert!(delivered.values().all(|&n| n <= 2), "{delivered:?}");
    match backend {
        Backend::Embedded => assert_eq!(twice, 0),
        Backend::Amqp => assert!(twice <= 16, "{twice} delivered twice"),
    }
    assert!(dead_letters(&http, &restarted.proxy).await.is_empty());
    eprintln!(
        "accepted {}, connection errors {}, delivered {} ({} without a 202)",
        told.accepted.len(),
        told.failed.len(),
        delivered.len(),
        unconfirmed.len()
    );
}

async fn nothing_answered_202_is_lost_when_soapcache_is_killed_while_delivering(backend: Backend) {
    let service = free_addr();
    let Some(mut setup) = serve_on(
        backend,
        "kill-deliver",
        service,
        "",
        &["--delivery-concurrency", "16"],
    ) else {
        return;
    };
    let told = send_orders(vec![setup.proxy.url("/orders")], 0, 600, 16, order, |_| {}).await;
    assert_eq!(
        told.accepted.len(),
        600,
        "all accepted while the service is down"
    );

    let upstream = Upstream::start_on(service, |_| ok().after(Duration::from_millis(20))).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            upstream.count() >= 150
        })
        .await
    );
    setup.proxy.kill9();
    let before = upstream.count();

    let restarted = serve_again(
        &mut setup,
        "kill-deliver",
        service,
        "",
        &["--delivery-concurrency", "16"],
    );
    let http = Http::default();
    assert!(drained(&http, &restarted.proxy, Duration::from_secs(60)).await);
    let delivered = delivered(&upstream);
    let lost: Vec<&String> = told
        .accepted
        .iter()
        .filter(|r| !delivered.contains_key(*r))
        .collect();
    assert!(
        lost.is_empty(),
        "answered 202 but never delivered: {lost:?}"
    );
    // Twice only for the attempts the kill cut short: at most one per worker.
    let twice: Vec<(&String, &usize)> = delivered.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.iter().all(|(_, &n)| n == 2), "{twice:?}");
    assert!(twice.len() <= 16, "{} delivered twice", twice.len());
    eprintln!(
        "delivered {} before the kill, {} in all; {} twice (attempts cut short)",
        before,
        delivered.len(),
        twice.len()
    );
}

async fn a_failing_service_is_retried_with_doubling_backoff_until_it_answers(backend: Backend) {
    let calls = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let seen = calls.clone();
    let upstream = Upstream::start(move |s| {
        let mut calls = seen.lock().unwrap();
        let attempt = header_values(&s.headers, "x-delivery-attempt").join(",");
        calls.push((Instant::now(), attempt));
        if calls.len() < 4 {
            Reply::xml(503, "busy")
        } else {
            ok()
        }
    })
    .await;
    let Some(setup) = serve_on(
        backend,
        "retry",
        upstream.addr,
        "max_attempts = 5\nretry_backoff = \"300ms\"\nmax_retry_backoff = \"5s\"",
        &[],
    ) else {
        return;
    };
    let http = Http::default();
    assert_eq!(place(&http, &setup.proxy, "C", "R").await.status, 202);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(15)).await);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "delivered on attempt 4");
    let attempts: Vec<&str> = calls.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    for (i, expected) in [300.0, 600.0, 1200.0].into_iter().enumerate() {
        let gap = (calls[i + 1].0 - calls[i].0).as_secs_f64() * 1e3;
        assert!(
            gap >= expected * 0.8 - 5.0 && gap <= expected * 1.2 + 400.0,
            "gap {i}: {gap:.0} ms, expected {expected} ms ± 20%"
        );
    }
    assert!(dead_letters(&http, &setup.proxy).await.is_empty());
}

async fn a_client_fault_or_a_4xx_is_dead_lettered_at_once(backend: Backend) {
    let upstream = Upstream::start(|s| {
        if field(s, "OrderRef") == "FAULT" {
            fault("Client", 500)
        } else {
            Reply::xml(404, "no such thing")
        }
    })
    .await;
    let Some(setup) = serve_on(
        backend,
        "refused",
        upstream.addr,
        "max_attempts = 5\nretry_backoff = \"100ms\"",
        &[],
    ) else {
        return;
    };
    let http = Http::default();
    let fault_id = place(&http, &setup.proxy, "C", "FAULT").await;
    let http_id = place(&http, &setup.proxy, "C", "NOTFOUND").await;
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert_eq!(
        upstream.count(),
        2,
        "one attempt each: retrying cannot help"
    );
    let dead = dead_letters(&http, &setup.proxy).await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for (letter, answer) in dead.iter().zip([&fault_id, &http_id]) {
        assert_eq!(letter["id"], answer.header("x-message-id").unwrap());
        assert_eq!(letter["reason"], "refused");
        assert_eq!(letter["attempts"], 1);
        assert_eq!(letter["service"], "orders");
        assert_eq!(letter["operation"], "PlaceOrder");
    }
    assert!(dead[0]["last_error"]
        .as_str()
        .unwrap()
        .contains("sender fault"));
    assert!(dead[1]["last_error"].as_str().unwrap().contains("404"));
}

async fn a_service_never_up_is_dead_lettered_after_max_attempts(backend: Backend) {
    let Some(setup) = serve_on(
        backend,
        "failed",
        free_addr(),
        "max_attempts = 3\nretry_backoff = \"100ms\"\nmax_retry_backoff = \"100ms\"",
        &[],
    ) else {
        return;
    };
    let http = Http::default();
    assert_eq!(place(&http, &setup.proxy, "C", "R").await.status, 202);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    let dead = dead_letters(&http, &setup.proxy).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "failed");
    assert_eq!(dead[0]["attempts"], 3, "max_attempts counts every attempt");
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("connect"),
        "{dead:?}"
    );
    let metrics = http
        .admin("GET", &setup.proxy.admin_url("/metrics"))
        .await
        .text();
    assert!(metrics.contains(r#"result="retried"} 2"#), "{metrics}");
    assert!(
        metrics.contains(r#"result="dead_lettered"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"soapcache_queue_messages{service="orders",state="dead"} 1"#),
        "{metrics}"
    );
}

async fn a_message_not_delivered_within_its_time_is_dead_lettered_as_expired(backend: Backend) {
    let Some(setup) = serve_on(
        backend,
        "expired",
        free_addr(),
        "deliver_within = \"1s\"\nretry_backoff = \"2s\"\nmax_retry_backoff = \"2s\"",
        &[],
    ) else {
        return;
    };
    let http = Http::default();
    assert_eq!(place(&http, &setup.proxy, "C", "R").await.status, 202);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    let dead = dead_letters(&http, &setup.proxy).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["reason"], "expired");
}

async fn messages_of_one_order_by_value_arrive_in_acceptance_order_and_others_overlap(
    backend: Backend,
) {
    // (customer, reference, start, end) of each request the service handled.
    let log = Arc::new(Mutex::new(Vec::<(String, usize, Instant)>::new()));
    let in_service = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (l, most_seen) = (log.clone(), most.clone());
    let counter = in_service.clone();
    let rng = Mutex::new(Rng::new(Rng::seed_from_env("SOAPCACHE_ORDER_SEED")));
    let upstream = Upstream::start(move |s| {
        let reference: usize = field(s, "OrderRef").parse().unwrap();
        l.lock()
            .unwrap()
            .push((field(s, "CustomerId"), reference, Instant::now()));
        // Requests overlap when one arrives before the one before ends.
        let now_in = counter.fetch_add(1, Ordering::SeqCst) + 1;
        most_seen.fetch_max(now_in, Ordering::SeqCst);
        let delay = Duration::from_millis(5 + rng.lock().unwrap().below(25));
        let counter = counter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            counter.fetch_sub(1, Ordering::SeqCst);
        });
        ok().after(delay)
    })
    .await;
    let Some(setup) = serve_on(
        backend,
        "order",
        upstream.addr,
        "order_by = [\"string(o:CustomerId)\"]",
        &["--delivery-concurrency", "16"],
    ) else {
        return;
    };
    let url = setup.proxy.url("/orders");
    let mut tasks = Vec::new();
    for c in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let http = Http::default();
            for n in 0..20 {
                let reference = (c * 100 + n).to_string();
                let answer = http
                    .send(
                        "POST",
                        &url,
                        &[("content-type", "text/xml")],
                        order(&format!("C{c}"), &reference),
                    )
                    .await;
                assert_eq!(answer.status, 202);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let http = Http::default();
    assert!(drained(&http, &setup.proxy, Duration::from_secs(60)).await);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 200);
    let mut per_customer: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (customer, reference, _) in &log {
        per_customer
            .entry(customer.clone())
            .or_default()
            .push(*reference);
    }
    for (customer, references) in &per_customer {
        let mut sorted = references.clone();
        sorted.sort_unstable();
        assert_eq!(references, &sorted, "{customer} out of order");
    }
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "different customers' messages were never delivered at once"
    );
}

async fn dead_letters_can_be_listed_read_retried_and_deleted(backend: Backend) {
    let accept = Arc::new(AtomicBool::new(false));
    let flag = accept.clone();
    let upstream = Upstream::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            ok()
        } else {
            fault("Client", 500)
        }
    })
    .await;
    let Some(setup) = serve_on(backend, "dead", upstream.addr, "", &[]) else {
        return;
    };
    let http = Http::default();
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            place(&http, &setup.proxy, "C", &format!("D-{n}"))
                .await
                .header("x-message-id")
                .unwrap()
                .to_owned(),
        );
    }
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert_eq!(dead_letters(&http, &setup.proxy).await.len(), 4);
    let admin = |path: &str| setup.proxy.admin_url(path);
    let encoded = |id: &str| id.replace(':', "%3A");

    // Read one: the message as received.
    let read = http
        .admin(
            "GET",
            &admin(&format!("/dead-letters/{}", encoded(&ids[0]))),
        )
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, order("C", "D-0").as_bytes());
    assert_eq!(read.header("content-type"), Some("text/xml; charset=utf-8"));
    let limited = json(
        &http
            .admin("GET", &admin("/dead-letters?service=orders&limit=2"))
            .await,
    );
    assert_eq!(limited.as_array().unwrap().len(), 2);
    assert!(json(
        &http
            .admin("GET", &admin("/dead-letters?service=other"))
            .await
    )
    .as_array()
    .unwrap()
    .is_empty());

    // Retry one, with the service fixed: delivered, attempts reset.
    accept.store(true, Ordering::SeqCst);
    let retried = http
        .admin("POST", &admin(&format!("/dead-letters/{}/retry", ids[0])))
        .await;
    assert_eq!(retried.status, 200, "{}", retried.text());
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert_eq!(dead_letters(&http, &setup.proxy).await.len(), 3);
    let last = upstream.seen().pop().unwrap();
    assert_eq!(field(&last, "OrderRef"), "D-0");
    assert_eq!(header_values(&last.headers, "x-delivery-attempt"), ["1"]);

    // Delete one; then retry the rest at once.
    let deleted = http
        .admin("DELETE", &admin(&format!("/dead-letters/{}", ids[1])))
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(
        http.admin("GET", &admin(&format!("/dead-letters/{}", ids[1])))
            .await
            .status,
        404
    );
    let all = json(&http.admin("POST", &admin("/dead-letters/retry")).await);
    assert_eq!(all["retried"], 2);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert!(dead_letters(&http, &setup.proxy).await.is_empty());
    let refs: HashSet<String> = upstream
        .seen()
        .iter()
        .skip(4)
        .map(|s| field(s, "OrderRef"))
        .collect();
    assert_eq!(
        refs,
        ["D-0", "D-2", "D-3"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // Unknown ids are 404 everywhere.
    for (method, path) in [
        ("GET", "/dead-letters/urn:uuid:nope"),
        ("DELETE", "/dead-letters/urn:uuid:nope"),
        ("POST", "/dead-letters/urn:uuid:nope/retry"),
    ] {
        assert_eq!(
            http.admin(method, &admin(path)).await.status,
            404,
            "{method} {path}"
        );
    }
}

async fn bad_input_to_a_queued_operation_gets_faults_and_is_never_stored(backend: Backend) {
    let upstream = Upstream::start(|_| ok()).await;
    let Some(setup) = serve_on(backend, "bad", upstream.addr, "", &["--max-body", "4KiB"]) else {
        return;
    };
    let http = Http::default();
    let url = setup.proxy.url("/orders");
    let malformed = http.soap(&url, "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><o:PlaceOrder").await;
    assert_eq!(malformed.status, 500, "{}", malformed.text());
    assert!(malformed.text().contains("soap:Client"));
    let dtd = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{}", order("C", "R"));
    let with_dtd = http.soap(&url, &dtd).await;
    assert!(with_dtd.text().contains("DTD"), "{}", with_dtd.text());
    let huge = order("C", &"x".repeat(8192));
    assert_eq!(http.soap(&url, &huge).await.status, 413);
    let q = queue(&http, &setup.proxy).await;
    assert_eq!(q["bytes"], 0, "{q}");
    assert_eq!(q["totals"]["ready"], 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_503_and_accepts_again_once_drained() {
    let service = free_addr();
    let setup = serve(
        "full",
        service,
        "retry_backoff = \"100ms\"\nmax_retry_backoff = \"100ms\"",
        &["--queue-max-bytes", "4KiB"],
    );
    let http = Http::default();
    let mut accepted = 0;
    let refused = loop {
        let answer = place(&http, &setup.proxy, "C", &format!("F-{accepted}")).await;
        if answer.status != 202 {
            break answer;
        }
        accepted += 1;
        assert!(accepted < 100, "never full");
    };
    assert!(accepted >= 2, "{accepted}");
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert!(refused.text().contains("full"), "{}", refused.text());
    let upstream = Upstream::start_on(service, |_| ok()).await;
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert_eq!(upstream.count(), accepted);
    assert_eq!(place(&http, &setup.proxy, "C", "AGAIN").await.status, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_data_dir_answers_503_with_a_log_line_and_no_202() {
    let setup = serve("vanish", free_addr(), "", &[]);
    let http = Http::default();
    assert_eq!(place(&http, &setup.proxy, "C", "1").await.status, 202);
    std::fs::remove_dir_all(&setup.data.0).unwrap();
    let answer = place(&http, &setup.proxy, "C", "2").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(answer.header("retry-after").is_some());
    assert!(answer.text().contains("soap:Server"), "{}", answer.text());
    let logged = eventually(Duration::from_secs(5), || async {
        setup
            .proxy
            .logs()
            .iter()
            .any(|l| l.contains("queue store") && l.contains("gone"))
    })
    .await;
    assert!(logged, "{:?}", setup.proxy.logs());
    // The read path goes on.
    assert_eq!(
        http.admin("GET", &setup.proxy.admin_url("/healthz"))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_data_dir_answers_503_and_the_proxy_still_starts() {
    // A data dir inside a regular file cannot be made, by root either.
    let blocker = ScratchFile::new("unusable", "file", "not a directory");
    let inside = blocker.path.join("data");
    let policy = ScratchFile::new("unusable", "orders.toml", &policy(free_addr(), ""));
    let proxy = Soapcache::serve(&[
        "--policies",
        policy.path_str(),
        "--data-dir",
        inside.to_str().unwrap(),
    ]);
    let http = Http::default();
    let answer = place(&http, &proxy, "C", "1").await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    let logged = eventually(Duration::from_secs(5), || async {
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("queue store unavailable"))
    })
    .await;
    assert!(logged, "{:?}", proxy.logs());
    let status = http.admin("GET", &proxy.admin_url("/queue")).await;
    assert_eq!(status.status, 503);
    let q = json(&status);
    assert_eq!(
        (&q["backend"], &q["connected"]),
        (&"embedded".into(), &false.into()),
        "{q}"
    );
    assert!(q["error"].as_str().unwrap().contains("cannot open"), "{q}");
}

async fn sigterm_with_messages_waiting_exits_0_and_the_next_start_delivers_them(backend: Backend) {
    let service = free_addr();
    let Some(mut setup) = serve_on(backend, "sigterm", service, "", &[]) else {
        return;
    };
    let told = send_orders(vec![setup.proxy.url("/orders")], 0, 500, 8, order, |_| {}).await;
    assert_eq!(told.accepted.len(), 500);
    let started = Instant::now();
    setup.proxy.signal("TERM");
    let status = setup
        .proxy
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the drain time");
    assert!(status.success(), "{status:?}");
    eprintln!("stopped in {:?}", started.elapsed());

    let upstream = Upstream::start_on(service, |_| ok()).await;
    let restarted = serve_again(&mut setup, "sigterm", service, "", &[]);
    let http = Http::default();
    assert!(drained(&http, &restarted.proxy, Duration::from_secs(30)).await);
    let delivered = delivered(&upstream);
    assert!(told.accepted.iter().all(|r| delivered.contains_key(r)));
    assert_eq!(delivered.len(), 500);
}

/// SIGTERM while a backlog is being delivered as fast as the service
/// answers: the attempts in flight finish, no new one starts (before the
/// fix the loop kept claiming full batches and delivered the whole backlog
/// first), and the next start delivers the rest, each message once.
async fn sigterm_during_a_backlog_stops_delivering_and_the_next_start_delivers_the_rest(
    backend: Backend,
) {
    const TOTAL: usize = 1500;
    const CONCURRENCY: usize = 4;
    let service = free_addr();
    let flags = ["--delivery-concurrency", "4"];
    let backoff = "retry_backoff = \"100ms\"\nmax_retry_backoff = \"100ms\"";
    let Some(mut setup) = serve_on(backend, "sigterm-backlog", service, backoff, &flags) else {
        return;
    };
    let told = send_orders(
        vec![setup.proxy.url("/orders")],
        0,
        TOTAL,
        16,
        order,
        |_| {},
    )
    .await;
    assert_eq!(
        told.accepted.len(),
        TOTAL,
        "all accepted while the service is down"
    );

    // The service comes up: every message is due, and answered at once.
    let upstream = Upstream::start_on(service, |_| ok()).await;
    assert!(
        eventually(Duration::from_secs(30), || async { upstream.count() >= 50 }).await,
        "deliveries started"
    );
    setup.proxy.signal("TERM");
    let at_signal = upstream.count();
    let status = setup
        .proxy
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the drain time");
    assert!(status.success(), "{status:?}");
    let after_signal = upstream.count() - at_signal;
    // Those in flight at the signal, and any the store handed out just
    // before it: at most one claim of every worker.
    assert!(
        after_signal <= 2 * CONCURRENCY,
        "{after_signal} deliveries after SIGTERM with {CONCURRENCY} workers"
    );
    assert!(
        at_signal + after_signal < TOTAL,
        "the backlog outlived the signal"
    );

    let restarted = serve_again(&mut setup, "sigterm-backlog", service, backoff, &flags);
    let http = Http::default();
    assert!(drained(&http, &restarted.proxy, Duration::from_secs(60)).await);
    let delivered = delivered(&upstream);
    assert!(told.accepted.iter().all(|r| delivered.contains_key(r)));
    assert_eq!(delivered.len(), TOTAL);
    let twice = delivered.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "a drained shutdown delivers nothing twice");
    eprintln!(
        "{at_signal} delivered before SIGTERM, {after_signal} after it, the rest after the restart"
    );
}

async fn a_delivered_write_fires_its_invalidation(backend: Backend) {
    // GetPrice is cached by ttl; PlaceOrder, queued, invalidates it.
    let upstream = Upstream::start(|s| {
        let text = String::from_utf8_lossy(&s.body).into_owned();
        if text.contains("GetPrice") {
            Reply::xml(200, format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:Price xmlns:o=\"{ORDERS}\">{}</o:Price></soap:Body></soap:Envelope>", s.body.len()))
        } else {
            ok()
        }
    })
    .await;
    let extra = "\n[[operation]]\nelement = \"o:GetPrice\"\nkey = [\"string(o:CustomerId)\"]\nttl = \"1h\"\n\n[[invalidate]]\nelement = \"o:PlaceOrder\"\nkey = [\"string(o:CustomerId)\"]\ntargets = [\"o:GetPrice\"]\n";
    let Some(setup) = serve_on(backend, "invalidate", upstream.addr, extra, &[]) else {
        return;
    };
    let http = Http::default();
    let get = format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:GetPrice xmlns:o=\"{ORDERS}\"><o:CustomerId>C-9</o:CustomerId></o:GetPrice></soap:Body></soap:Envelope>");
    assert_eq!(
        http.soap(&setup.proxy.url("/orders"), &get).await.x_cache(),
        "MISS"
    );
    assert_eq!(
        http.soap(&setup.proxy.url("/orders"), &get).await.x_cache(),
        "HIT"
    );
    assert_eq!(place(&http, &setup.proxy, "C-9", "W").await.status, 202);
    assert!(drained(&http, &setup.proxy, Duration::from_secs(10)).await);
    assert_eq!(
        http.soap(&setup.proxy.url("/orders"), &get).await.x_cache(),
        "MISS"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_would_queue_without_a_data_dir_is_refused() {
    let direct = policy(free_addr(), "").replace("delivery = \"queued\"\n", "");
    let file = ScratchFile::new("reload-queue", "orders.toml", &direct);
    let proxy = Soapcache::serve(&["--policies", file.path_str()]);
    std::fs::write(&file.path, policy(free_addr(), "")).unwrap();
    let http = Http::default();
    let reload = http.admin("POST", &proxy.admin_url("/reload")).await;
    assert_eq!(reload.status, 422, "{}", reload.text());
    assert!(reload.text().contains("--data-dir"), "{}", reload.text());
}

async fn large_and_multipart_writes_are_queued_whole_and_delivered_exactly(backend: Backend) {
    let upstream = Upstream::start(|_| ok()).await;
    let Some(setup) = serve_on(backend, "large", upstream.addr, "", &["--max-body", "4MiB"]) else {
        return;
    };
    let http = Http::default();
    let large = order("C", &"L".repeat(2 << 20));
    let answer = http.soap(&setup.proxy.url("/orders"), &large).await;
    assert_eq!(answer.status, 202, "{}", answer.text());

    let boundary = "MIME_boundary";
    let root = order("C", "MTOM");
    let multipart = format!(
        "--{boundary}\r\nContent-Type: text/xml; charset=UTF-8\r\nContent-ID: <root>\r\n\r\n{root}\r\n\
--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-ID: <att>\r\n\r\nBINARY\r\n--{boundary}--\r\n"
    );
    let content_type =
        format!("multipart/related; type=\"text/xml\"; start=\"<root>\"; boundary={boundary}");
    let answer = http
        .send(
            "POST",
            &setup.proxy.url("/orders"),
            &[("content-type", &content_type)],
            multipart.clone(),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.text());

    assert!(drained(&http, &setup.proxy, Duration::from_secs(20)).await);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    let large_seen = seen
        .iter()
        .find(|s| s.body.len() > 1 << 20)
        .expect("the large one");
    assert_eq!(large_seen.body, large.as_bytes());
    let mtom = seen
        .iter()
        .find(|s| s.body.len() < 1 << 20)
        .expect("the multipart one");
    assert_eq!(mtom.body, multipart.as_bytes());
    assert_eq!(header_values(&mtom.headers, "content-type"), [content_type]);

    // Past --max-body: 413, nothing stored.
    let too_large = order("C", &"L".repeat(5 << 20));
    assert_eq!(
        http.soap(&setup.proxy.url("/orders"), &too_large)
            .await
            .status,
        413
    );
    assert_eq!(queue(&http, &setup.proxy).await["bytes"], 0);
}
