//! Reliable messaging and asynchronous replies (reference §11, §12)
//! through the real binary, a real store on disk and real services on
//! loopback: repeats of a message id acknowledged or replayed and never
//! processed twice (also after `kill -9`), ids reused for another message
//! refused, expired messages never delivered, callbacks to allowed
//! `ReplyTo` addresses only, results kept for polling within their bounds.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

const ORDERS: &str = "urn:example:orders";
const WSA: &str = "http://www.w3.org/2005/08/addressing";

/// The orders service: `PlaceOrder` queued and `Charge` direct, each with
/// `extra` keys.
fn policy(upstream: SocketAddr, queued: &str, direct: &str) -> String {
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
retry_backoff = "200ms"
max_retry_backoff = "400ms"
{queued}

[[operation]]
element = "o:Charge"
cache = false
{direct}
"#
    )
}

/// A request with WS-Addressing headers `headers` (MessageID, ReplyTo...).
fn message(operation: &str, reference: &str, headers: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:wsa=\"{WSA}\"><soap:Header>{headers}</soap:Header>\
<soap:Body><o:{operation} xmlns:o=\"{ORDERS}\"><o:OrderRef>{reference}</o:OrderRef>\
</o:{operation}></soap:Body></soap:Envelope>"
    )
}

fn message_id(id: &str) -> String {
    format!("<wsa:MessageID>{id}</wsa:MessageID><wsa:Action>urn:example:orders/Op</wsa:Action>")
}

fn answer_with(text: &str) -> Reply {
    Reply::xml(
        200,
        format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:Done xmlns:o=\"{ORDERS}\">{text}</o:Done></soap:Body></soap:Envelope>"),
    )
}

fn client_fault() -> Reply {
    Reply::xml(
        500,
        format!("<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><soap:Fault><faultcode>soap:Client</faultcode><faultstring>bad order</faultstring></soap:Fault></soap:Body></soap:Envelope>"),
    )
}

struct Setup {
    proxy: Soapcache,
    policy: ScratchFile,
    data: DataDir,
}

impl Setup {
    fn new(test: &str, upstream: SocketAddr, queued: &str, direct: &str, flags: &[&str]) -> Setup {
        let policy = ScratchFile::new(test, "orders.toml", &policy(upstream, queued, direct));
        let data = DataDir::new(test);
        let proxy = start(&policy, &data, flags);
        Setup {
            proxy,
            policy,
            data,
        }
    }

    /// Killed with SIGKILL and started again on the same store.
    fn restart_after_kill9(&mut self, flags: &[&str]) {
        self.proxy.kill9();
        self.proxy = start(&self.policy, &self.data, flags);
    }
}

fn start(policy: &ScratchFile, data: &DataDir, flags: &[&str]) -> Soapcache {
    let mut args = vec![
        "--policies",
        policy.path_str(),
        "--data-dir",
        data.path_str(),
    ];
    args.extend_from_slice(flags);
    Soapcache::serve(&args)
}

async fn post(http: &Http, proxy: &Soapcache, body: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("content-type", "text/xml; charset=utf-8")];
    headers.extend_from_slice(extra);
    http.send("POST", &proxy.url("/orders"), &headers, body.to_owned())
        .await
}

async fn queue(http: &Http, proxy: &Soapcache) -> serde_json::Value {
    json(&http.admin("GET", &proxy.admin_url("/queue")).await)
}

async fn drained(http: &Http, proxy: &Soapcache) -> bool {
    eventually(Duration::from_secs(15), || async {
        let t = &queue(http, proxy).await["totals"];
        t["ready"] == 0 && t["in_flight"] == 0 && t["retrying"] == 0
    })
    .await
}

async fn metrics(http: &Http, proxy: &Soapcache) -> String {
    http.admin("GET", &proxy.admin_url("/metrics")).await.text()
}

/// 20 concurrent and 20 sequential sends of `body`.
async fn forty_times(
    http: &Http,
    proxy: &Soapcache,
    body: &str,
    extra: &[(&str, &str)],
) -> Vec<Answer> {
    let concurrent = (0..20).map(|_| post(http, proxy, body, extra));
    let mut answers = futures_util::future::join_all(concurrent).await;
    for _ in 0..20 {
        answers.push(post(http, proxy, body, extra).await);
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_repeats_of_a_message_id_are_acknowledged_again_and_delivered_once() {
    let upstream = Upstream::start(|_| answer_with("ok").after(Duration::from_millis(300))).await;
    // No result kept: every repeat gets the 202 (with one, a repeat after
    // delivery gets the result: see the results test).
    let queued = "dedup = \"1h\"\nresult_retention = \"0s\"";
    let mut setup = Setup::new("dedup-queued", upstream.addr, queued, "", &[]);
    let http = Http::default();
    let id = "urn:uuid:5f0e8a52-0000-4000-8000-000000000001";
    let body = message("PlaceOrder", "R-1", &message_id(id));

    let answers = forty_times(&http, &setup.proxy, &body, &[]).await;
    for a in &answers {
        assert_eq!(a.status, 202, "{}", a.text());
        assert_eq!(a.header("x-message-id"), Some(id));
        assert!(a.body.is_empty());
    }
    let duplicates = answers
        .iter()
        .filter(|a| a.header("cache-status") == Some("soapcache; fwd=queued; detail=duplicate"))
        .count();
    assert_eq!(duplicates, 39, "every repeat is marked a duplicate");
    assert!(drained(&http, &setup.proxy).await);
    assert_eq!(upstream.count(), 1, "the service saw the message once");
    let m = metrics(&http, &setup.proxy).await;
    assert_eq!(
        metric(
            &m,
            "soapcache_duplicates_total{service=\"orders\",delivery=\"queued\"}"
        ),
        Some(39.0)
    );
    let q = queue(&http, &setup.proxy).await;
    assert_eq!(q["dedup"]["records"], 1, "{q}");

    // The id outlives the process.
    setup.restart_after_kill9(&[]);
    let again = post(&http, &setup.proxy, &body, &[]).await;
    assert_eq!(again.status, 202);
    assert_eq!(
        again.header("cache-status"),
        Some("soapcache; fwd=queued; detail=duplicate")
    );

    // The same id for another message: refused, nothing stored.
    let other = message("PlaceOrder", "R-2", &message_id(id));
    let reused = post(&http, &setup.proxy, &other, &[]).await;
    assert_eq!(reused.status, 500, "a SOAP 1.1 fault: {}", reused.text());
    assert!(reused
        .text()
        .contains("message id reused for a different message"));
    assert!(reused.text().contains("Client"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.count(), 1);
    assert_eq!(queue(&http, &setup.proxy).await["totals"]["delivered"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_repeats_are_replayed_byte_for_byte_and_reach_the_service_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = Upstream::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        answer_with(&format!("charge-{n}")).after(Duration::from_millis(300))
    })
    .await;
    let mut setup = Setup::new("dedup-direct", upstream.addr, "", "dedup = \"1h\"", &[]);
    let http = Http::default();
    let id = "urn:uuid:5f0e8a52-0000-4000-8000-000000000002";
    let body = message("Charge", "C-1", &message_id(id));

    let answers = forty_times(&http, &setup.proxy, &body, &[]).await;
    let first = &answers[0];
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.text().contains("charge-0"));
    for a in &answers {
        assert_eq!(a.status, 200);
        assert_eq!(a.body, first.body, "every requester gets the same bytes");
        assert_eq!(a.header("content-type"), Some("text/xml; charset=utf-8"));
    }
    let replays = answers.iter().filter(|a| a.x_cache() == "REPLAY").count();
    assert_eq!(replays, 39, "one went upstream, 39 were replayed");
    assert_eq!(upstream.count(), 1, "the service saw the request once");

    setup.restart_after_kill9(&[]);
    let again = post(&http, &setup.proxy, &body, &[]).await;
    assert_eq!(again.x_cache(), "REPLAY");
    assert_eq!(
        again.header("cache-status"),
        Some("soapcache; hit; detail=replay")
    );
    assert_eq!(again.body, first.body);

    let reused = post(
        &http,
        &setup.proxy,
        &message("Charge", "C-2", &message_id(id)),
        &[],
    )
    .await;
    assert_eq!(reused.status, 500);
    assert!(reused
        .text()
        .contains("message id reused for a different message"));
    assert_eq!(upstream.count(), 1, "a reused id goes nowhere");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_answer_is_replayed_only_to_the_same_credentials() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let upstream = Upstream::start(move |_| {
        answer_with(&format!(
            "charge-{}",
            counter.fetch_add(1, Ordering::SeqCst)
        ))
    })
    .await;
    let setup = Setup::new(
        "dedup-credentials",
        upstream.addr,
        "",
        "dedup = \"1h\"",
        &[],
    );
    let http = Http::default();
    let body = message("Charge", "C-1", &message_id("urn:uuid:credentials-1"));
    let alice = [("authorization", "Basic YWxpY2U6YQ==")];
    let bob = [("authorization", "Basic Ym9iOmI=")];

    let first = post(&http, &setup.proxy, &body, &alice).await;
    assert!(first.text().contains("charge-0"));
    let repeat = post(&http, &setup.proxy, &body, &alice).await;
    assert_eq!(repeat.x_cache(), "REPLAY");
    let other = post(&http, &setup.proxy, &body, &bob).await;
    assert_ne!(other.x_cache(), "REPLAY");
    assert!(other.text().contains("charge-1"), "forwarded as new");
    let anonymous = post(&http, &setup.proxy, &body, &[]).await;
    assert!(anonymous.text().contains("charge-2"));
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn message_id_expressions_name_requests_without_ws_addressing() {
    let upstream = Upstream::start(|_| answer_with("once")).await;
    let setup = Setup::new(
        "dedup-expression",
        upstream.addr,
        "",
        "dedup = \"1h\"\nmessage_id = [\"string(o:OrderRef)\"]",
        &[],
    );
    let http = Http::default();
    let body = message("Charge", "REF-77", "");
    assert_eq!(
        post(&http, &setup.proxy, &body, &[]).await.x_cache(),
        "BYPASS"
    );
    let repeat = post(&http, &setup.proxy, &body, &[]).await;
    assert_eq!(repeat.x_cache(), "REPLAY");
    assert_eq!(repeat.header("x-message-id"), Some("REF-77"));
    // Another reference is another message.
    post(&http, &setup.proxy, &message("Charge", "REF-78", ""), &[]).await;
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_message_whose_timestamp_passes_while_the_service_is_down_is_dead_lettered_as_expired(
) {
    let upstream = Upstream::start(|_| Reply::xml(503, "down")).await;
    let setup = Setup::new("expires-queued", upstream.addr, "", "", &[]);
    let http = Http::default();
    let expires = httpdate_to_xsd(std::time::SystemTime::now() + Duration::from_secs(2));
    let security = format!(
        "<wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\">\
<wsu:Timestamp><wsu:Created>2026-01-01T00:00:00Z</wsu:Created><wsu:Expires>{expires}</wsu:Expires></wsu:Timestamp></wsse:Security>"
    );
    let accepted = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "R-9", &security),
        &[],
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = accepted.header("x-message-id").unwrap().to_owned();
    let dead = eventually(Duration::from_secs(15), || async {
        let list = json(
            &http
                .admin("GET", &setup.proxy.admin_url("/dead-letters"))
                .await,
        );
        list.as_array().is_some_and(|l| {
            l.iter()
                .any(|d| d["id"] == id.as_str() && d["reason"] == "expired")
        })
    })
    .await;
    assert!(dead, "dead-lettered as expired");
    let attempts = upstream.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        upstream.count(),
        attempts,
        "never attempted after it expired"
    );
    let q = queue(&http, &setup.proxy).await;
    assert_eq!(q["totals"]["delivered"], 0, "never delivered: {q}");
}

/// A TCP listener that counts the connections made to it.
struct Listener {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Listener {
    async fn start() -> Listener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Listener { addr, connections }
    }
}

fn reply_to(address: &str, parameters: &str) -> String {
    format!("<wsa:ReplyTo><wsa:Address>{address}</wsa:Address>{parameters}</wsa:ReplyTo>")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reply_to_that_no_pattern_allows_is_refused_before_anything_is_stored() {
    let upstream = Upstream::start(|_| answer_with("ok")).await;
    let elsewhere = Listener::start().await;
    let setup = Setup::new(
        "reply-to-refused",
        upstream.addr,
        "reply_to_allowed = [\"http://127.0.0.1:1/callbacks/*\"]",
        "",
        &[],
    );
    let http = Http::default();
    let headers = format!(
        "{}{}",
        message_id("urn:uuid:reply-1"),
        reply_to(&format!("http://{}/callbacks/x", elsewhere.addr), "")
    );
    let refused = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "R-1", &headers),
        &[],
    )
    .await;
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert!(
        refused.text().contains("reply_to_allowed"),
        "{}",
        refused.text()
    );
    let fault_to = format!(
        "{}<wsa:FaultTo><wsa:Address>http://{}/f</wsa:Address></wsa:FaultTo>",
        message_id("urn:uuid:reply-2"),
        elsewhere.addr
    );
    let refused = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "R-2", &fault_to),
        &[],
    )
    .await;
    assert_eq!(
        refused.status, 500,
        "a FaultTo is held to the same patterns"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let q = queue(&http, &setup.proxy).await;
    assert_eq!(q["totals"]["ready"], 0, "nothing stored: {q}");
    assert_eq!(q["totals"]["dead"], 0);
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        elsewhere.connections.load(Ordering::SeqCst),
        0,
        "no connection attempted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_answer_is_called_back_to_reply_to_and_a_fault_to_fault_to() {
    let upstream = Upstream::start(|seen| {
        if String::from_utf8_lossy(&seen.body).contains("BAD") {
            client_fault()
        } else {
            answer_with("quoted")
        }
    })
    .await;
    let client = Upstream::start(|_| Reply::xml(202, "")).await;
    let setup = Setup::new(
        "callback",
        upstream.addr,
        &format!("reply_to_allowed = [\"http://{}/cb/*\"]", client.addr),
        "",
        &[],
    );
    let http = Http::default();
    let reply_address = format!("http://{}/cb/replies", client.addr);
    let parameters =
        "<wsa:ReferenceParameters><c:Ticket xmlns:c=\"urn:client\">T-9</c:Ticket></wsa:ReferenceParameters>";
    let headers = format!(
        "{}{}<wsa:FaultTo><wsa:Address>http://{}/cb/faults</wsa:Address></wsa:FaultTo>",
        message_id("urn:uuid:callback-1"),
        reply_to(&reply_address, parameters),
        client.addr
    );
    let accepted = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "R-1", &headers),
        &[],
    )
    .await;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    assert!(eventually(Duration::from_secs(10), || async { client.count() == 1 }).await);

    // The service was told to answer on its connection.
    let delivered = String::from_utf8_lossy(&upstream.seen()[0].body).into_owned();
    assert!(
        delivered.contains("http://www.w3.org/2005/08/addressing/anonymous"),
        "{delivered}"
    );
    assert!(!delivered.contains(&reply_address));

    let callback = &client.seen()[0];
    assert_eq!(callback.path_and_query, "/cb/replies");
    let text = String::from_utf8_lossy(&callback.body).into_owned();
    let doc = roxmltree::Document::parse(&text).expect("the callback is XML");
    let header = doc
        .descendants()
        .find(|n| n.tag_name().name() == "Header")
        .expect("a Header");
    let block = |name: &str| {
        header
            .children()
            .find(|n| n.tag_name().name() == name && n.tag_name().namespace() == Some(WSA))
            .and_then(|n| n.text())
            .map(str::to_owned)
    };
    assert_eq!(block("To").as_deref(), Some(reply_address.as_str()));
    assert_eq!(block("RelatesTo").as_deref(), Some("urn:uuid:callback-1"));
    assert!(block("Action").is_some());
    let ticket = header
        .children()
        .find(|n| n.tag_name().name() == "Ticket")
        .expect("the reference parameter is echoed");
    assert_eq!(
        ticket.attribute((WSA, "IsReferenceParameter")),
        Some("true")
    );
    assert_eq!(ticket.text(), Some("T-9"));
    assert!(text.contains("quoted"), "the service's answer: {text}");
    assert_eq!(
        block("Action").as_deref(),
        Some("urn:example:orders/OpResponse")
    );
    assert_eq!(
        header_values(&callback.headers, "soapaction"),
        ["\"urn:example:orders/OpResponse\""],
        "a SOAP 1.1 callback names its action"
    );

    // A fault that blames the request goes to FaultTo.
    let headers = format!(
        "{}{}<wsa:FaultTo><wsa:Address>http://{}/cb/faults</wsa:Address></wsa:FaultTo>",
        message_id("urn:uuid:callback-2"),
        reply_to(&reply_address, ""),
        client.addr
    );
    let accepted = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "BAD", &headers),
        &[],
    )
    .await;
    assert_eq!(accepted.status, 202);
    assert!(eventually(Duration::from_secs(10), || async { client.count() == 2 }).await);
    let fault = &client.seen()[1];
    assert_eq!(fault.path_and_query, "/cb/faults");
    let fault_text = String::from_utf8_lossy(&fault.body).into_owned();
    assert!(fault_text.contains("bad order"));
    assert!(fault_text.contains(&format!("{WSA}/fault")), "{fault_text}");
    let m = metrics(&http, &setup.proxy).await;
    assert_eq!(
        metric(
            &m,
            "soapcache_callbacks_total{service=\"orders\",result=\"delivered\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callback_that_cannot_be_delivered_is_retried_then_dead_lettered_as_callback() {
    let upstream = Upstream::start(|_| answer_with("quoted")).await;
    let client = Upstream::start(|_| Reply::xml(503, "busy")).await;
    let setup = Setup::new(
        "callback-dead",
        upstream.addr,
        &format!(
            "max_attempts = 2\nreply_to_allowed = [\"http://{}/*\"]",
            client.addr
        ),
        "",
        &[],
    );
    let http = Http::default();
    let headers = format!(
        "{}{}",
        message_id("urn:uuid:callback-dead"),
        reply_to(&format!("http://{}/cb", client.addr), "")
    );
    let accepted = post(
        &http,
        &setup.proxy,
        &message("PlaceOrder", "R-1", &headers),
        &[],
    )
    .await;
    assert_eq!(accepted.status, 202);
    let dead = eventually(Duration::from_secs(15), || async {
        let list = json(
            &http
                .admin("GET", &setup.proxy.admin_url("/dead-letters"))
                .await,
        );
        list.as_array()
            .is_some_and(|l| l.iter().any(|d| d["reason"] == "callback"))
    })
    .await;
    assert!(dead);
    assert_eq!(upstream.count(), 1, "the service is not asked again");
    assert_eq!(client.count(), 2, "two callback attempts");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_is_pending_then_kept_then_gone_after_its_retention() {
    let upstream = Upstream::start(|seen| {
        if String::from_utf8_lossy(&seen.body).contains("REFUSE") {
            Reply::xml(400, "no")
        } else {
            answer_with("the result").after(Duration::from_millis(800))
        }
    })
    .await;
    let setup = Setup::new(
        "results",
        upstream.addr,
        "result_retention = \"3s\"\ndedup = \"1h\"",
        "",
        &[],
    );
    let http = Http::default();
    let auth = [("authorization", "Bearer alice")];
    let body = message("PlaceOrder", "R-1", &message_id("urn:uuid:result/1"));
    let accepted = post(&http, &setup.proxy, &body, &auth).await;
    assert_eq!(accepted.status, 202);
    let url = setup.proxy.url("/.results/urn%3Auuid%3Aresult%2F1");
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let http = &http;
        let url = url.clone();
        async move { http.send("GET", &url, headers, "").await }
    };
    const ALICE: &[(&str, &str)] = &[("authorization", "Bearer alice")];
    const BOB: &[(&str, &str)] = &[("authorization", "Bearer bob")];
    assert_eq!(get(ALICE).await.status, 202, "pending");
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(ALICE).await.status == 200
        })
        .await
    );
    let fetched = get(ALICE).await;
    assert!(fetched.text().contains("the result"));
    assert_eq!(
        fetched.header("content-type"),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(
        get(BOB).await.status,
        404,
        "another credential sees nothing"
    );
    assert_eq!(get(&[]).await.status, 404);
    // With dedup, sending the message again answers with the result.
    let again = post(&http, &setup.proxy, &body, &auth).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.x_cache(), "REPLAY");
    assert_eq!(again.body, fetched.body);
    let m = metrics(&http, &setup.proxy).await;
    assert_eq!(metric(&m, "soapcache_results_retained"), Some(1.0));
    assert!(
        eventually(Duration::from_secs(6), || async {
            get(ALICE).await.status == 404
        })
        .await
    );
    assert_eq!(upstream.count(), 1);

    // A dead-lettered message's result: 410.
    let refused = message("PlaceOrder", "REFUSE", &message_id("urn:uuid:result-2"));
    assert_eq!(post(&http, &setup.proxy, &refused, &[]).await.status, 202);
    let gone = setup.proxy.url("/.results/urn:uuid:result-2");
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.send("GET", &gone, &[], "").await.status == 410
        })
        .await
    );
    assert_eq!(
        http.send("GET", &setup.proxy.url("/.results/unknown"), &[], "")
            .await
            .status,
        404
    );
    assert_eq!(
        http.send("POST", &setup.proxy.url("/.results/x"), &[], "")
            .await
            .status,
        405
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_never_fetched_stay_within_results_max_bytes() {
    let kib = "x".repeat(1024);
    let upstream = Upstream::start(move |_| answer_with(&kib)).await;
    let setup = Setup::new(
        "results-bound",
        upstream.addr,
        "result_retention = \"1h\"",
        "",
        &[
            "--results-max-bytes",
            "512KiB",
            "--delivery-concurrency",
            "64",
        ],
    );
    let http = Http::default();
    const MESSAGES: usize = 3000;
    let mut sent = 0;
    let mut ids = Vec::new();
    while sent < MESSAGES {
        let batch = (sent..(sent + 100).min(MESSAGES)).map(|i| {
            let body = message("PlaceOrder", &format!("R-{i}"), "");
            let http = &http;
            let proxy = &setup.proxy;
            async move {
                let a = post(http, proxy, &body, &[]).await;
                (
                    a.status,
                    a.header("x-message-id").unwrap_or_default().to_owned(),
                )
            }
        });
        let answers = futures_util::future::join_all(batch).await;
        assert!(answers.iter().all(|(s, _)| *s == 202), "{answers:?}");
        sent += answers.len();
        ids.extend(answers.into_iter().map(|(_, id)| id));
    }
    assert!(
        eventually(Duration::from_secs(60), || async {
            upstream.answered() >= MESSAGES
                && queue(&http, &setup.proxy).await["totals"]["ready"] == 0
        })
        .await
    );
    assert!(drained(&http, &setup.proxy).await);
    let q = queue(&http, &setup.proxy).await;
    let bytes = q["results"]["bytes"].as_u64().unwrap();
    assert!(
        bytes <= 512 * 1024,
        "retained bytes {bytes} stay within the bound"
    );
    let evictions = q["results"]["evictions"].as_u64().unwrap();
    let retained = q["results"]["retained"].as_u64().unwrap();
    assert!(evictions > 0);
    assert_eq!(retained + evictions, MESSAGES as u64, "{q}");
    let m = metrics(&http, &setup.proxy).await;
    assert_eq!(
        metric(&m, "soapcache_results_evictions_total"),
        Some(evictions as f64)
    );
    // The oldest went first; the newest is there.
    let result = |id: &str| setup.proxy.url(&format!("/.results/{id}"));
    assert_eq!(
        http.send("GET", &result(&ids[0]), &[], "").await.status,
        404
    );
    assert_eq!(
        http.send("GET", &result(&ids[MESSAGES - 1]), &[], "")
            .await
            .status,
        200
    );
}

#[test]
fn dedup_and_results_without_a_data_dir_are_refused_at_startup() {
    let text = format!(
        "[service]\nname = \"orders\"\nroute = \"/orders\"\nupstream = \"http://127.0.0.1:1/\"\n\
[namespaces]\no = \"{ORDERS}\"\n\n[[operation]]\nelement = \"o:Charge\"\ndedup = \"1h\"\n"
    );
    let policy = ScratchFile::new("dedup-no-store", "orders.toml", &text);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--policies", policy.path_str()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Charge uses dedup but no --data-dir"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
