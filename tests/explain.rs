//! `soapcache explain` (reference §1.5): what soapcache would do with one
//! request, from the real binary, without contacting anything.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use support::*;

const POLICY: &str = r#"
[service]
name     = "shop"
route    = "/shop"
upstream = "http://127.0.0.1:1/shop"

[namespaces]
c = "http://example.org/2001/06/catalog"

[[operation]]
element                = "c:CatalogPriceRequest"
key                    = ["string(c:PartNumber)"]
vary_headers           = ["X-Tenant", "Accept-Language"]
ttl                    = "1h"
stale_while_revalidate = "30s"

[[operation]]
element = "c:StockRequest"
key     = ["string(c:Items/c:Item[last()])", "normalize-space(c:PartNumber)"]

[[operation]]
element = "c:SecretRequest"
cache   = false

[[operation]]
element = "c:PlaceOrder"
delivery = "queued"

[[invalidate]]
element = "c:UpdatePriceRequest"
key     = ["string(c:PartNumber)"]
targets = ["c:CatalogPriceRequest"]
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("explain --json prints JSON ({e}): {}", self.stdout))
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `soapcache explain ARGS`, the body on stdin, run in the repository.
fn explain(args: &[&str], body: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .arg("explain")
        .args(args)
        .current_dir(manifest_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start soapcache explain");
    // explain may exit before it reads stdin (an invalid policy is reported
    // first), so a closed pipe here is an answer, not a failure.
    match child.stdin.take().unwrap().write_all(body.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("write stdin: {e}"),
        _ => {}
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Explains `body` to `/shop` under the test policy, as JSON.
fn shop(body: &str, headers: &[&str]) -> serde_json::Value {
    let policy = ScratchFile::new("explain", "shop.toml", POLICY);
    let mut args = vec!["--policies", policy.path_str(), "--path", "/shop", "--json"];
    for h in headers {
        args.extend(["--header", h]);
    }
    let run = explain(&args, body);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    run.json()
}

fn request(op: &str, inner: &str) -> String {
    format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:{op} xmlns:c=\"{CATALOG}\">{inner}</c:{op}></soap:Body></soap:Envelope>"
    )
}

fn price() -> String {
    request("CatalogPriceRequest", "<c:PartNumber>P-1</c:PartNumber>")
}

fn reasons(x: &serde_json::Value) -> Vec<(String, String)> {
    x["cache"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_cacheable_request_shows_its_key_vary_values_and_lifetime() {
    let x = shop(&price(), &["X-Tenant: acme"]);
    assert_eq!(x["service"]["name"], "shop");
    assert_eq!(x["service"]["upstream"], "http://127.0.0.1:1/shop");
    assert_eq!(
        x["operation"]["name"],
        format!("{{{CATALOG}}}CatalogPriceRequest")
    );
    assert_eq!(x["operation"]["declared"], true);
    assert_eq!(x["soap_version"], "1.1");
    assert_eq!(x["delivery"]["mode"], "direct");
    assert_eq!(x["cache"]["use"], "lookup");
    assert_eq!(x["cache"]["store"], true);
    assert!(reasons(&x).is_empty());
    let key = &x["key"];
    assert_eq!(key["kind"], "policy");
    assert_eq!(key["expressions"][0]["expression"], "string(c:PartNumber)");
    assert_eq!(key["expressions"][0]["value"], "P-1");
    assert_eq!(key["expressions"][0]["evaluator"], "streaming");
    let lookup = &x["lookup_key"];
    assert_eq!(lookup["selector"], "P-1");
    assert_eq!(lookup["service"], "shop");
    // Every vary header, sent or not.
    assert_eq!(lookup["vary"][0]["header"], "x-tenant");
    assert_eq!(lookup["vary"][0]["value"], "acme");
    assert_eq!(lookup["vary"][1]["header"], "accept-language");
    assert!(lookup["vary"][1]["value"].is_null());
    assert_eq!(x["lifetime"]["ttl"], "1h");
    assert_eq!(x["lifetime"]["stale_while_revalidate"], "30s");
    assert!(x["invalidates"].is_null());
    // Another tenant: another lookup key.
    let other = shop(&price(), &["X-Tenant: globex"]);
    assert_ne!(other["lookup_key"]["id"], lookup["id"]);
    assert_eq!(other["lookup_key"]["selector"], "P-1");
}

#[test]
fn each_expression_names_its_evaluator() {
    let body = request(
        "StockRequest",
        "<c:Items><c:Item>a</c:Item><c:Item>b</c:Item></c:Items><c:PartNumber>  P-2  </c:PartNumber>",
    );
    let x = shop(&body, &[]);
    let e = &x["key"]["expressions"];
    assert_eq!(e[0]["evaluator"], "sxd-xpath", "a predicate needs the tree");
    assert_eq!(e[0]["value"], "b");
    assert_eq!(e[1]["evaluator"], "streaming");
    assert_eq!(e[1]["value"], "P-2");
    assert_eq!(x["key"]["value"], "b\u{1f}P-2");
    assert_eq!(x["lookup_key"]["selector"], "b\u{1f}P-2");
    // Without a key, the digest, the same for another spelling.
    let y = shop(&request("Unlisted", "<c:A>1</c:A>"), &[]);
    assert_eq!(y["key"]["kind"], "digest");
    assert_eq!(y["operation"]["declared"], false);
    let respelled = format!(
        "<e:Envelope xmlns:e=\"{SOAP11}\">\n <e:Body>\n  <Unlisted xmlns=\"{CATALOG}\">\n   <A>1</A>\n  </Unlisted>\n </e:Body>\n</e:Envelope>"
    );
    let z = shop(&respelled, &[]);
    assert_eq!(y["key"]["value"], z["key"]["value"]);
    assert_eq!(y["key"]["value"].as_str().unwrap().len(), 22);
}

#[test]
fn credentials_are_named_unless_shared_or_varied_by() {
    for (header, named) in [
        ("Authorization: Bearer a", "Authorization"),
        ("Cookie: JSESSIONID=1", "Cookie"),
    ] {
        let x = shop(&price(), &[header]);
        assert_eq!(x["cache"]["use"], "bypass", "{header}");
        assert_eq!(x["cache"]["store"], false);
        let r = reasons(&x);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].0, "credentials");
        assert!(r[0].1.starts_with(named), "{r:?}");
        // A bypassed request is not looked up, but its key still shows.
        assert!(x["lookup_key"].is_null());
        assert_eq!(x["key"]["value"], "P-1");
    }
    let secured = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header><wsse:Security xmlns:wsse=\"urn:wsse\"/></soap:Header><soap:Body><c:CatalogPriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>P-1</c:PartNumber></c:CatalogPriceRequest></soap:Body></soap:Envelope>"
    );
    let x = shop(&secured, &[]);
    assert!(reasons(&x)[0].1.starts_with("WS-Security header"), "{x}");
    // A vary header is not a credential that keeps the request out.
    let policy = POLICY.replace(
        "vary_headers           = [\"X-Tenant\", \"Accept-Language\"]",
        "vary_headers           = [\"Cookie\"]",
    );
    let policy = ScratchFile::new("explain-vary-cookie", "shop.toml", &policy);
    let run = explain(
        &[
            "--policies",
            policy.path_str(),
            "--path",
            "/shop",
            "--header",
            "Cookie: JSESSIONID=1",
            "--json",
        ],
        &price(),
    );
    let x = run.json();
    assert_eq!(x["cache"]["use"], "lookup", "{x}");
    assert_eq!(x["lookup_key"]["vary"][0]["value"], "JSESSIONID=1");
}

#[test]
fn no_store_cache_false_and_writes_are_reasons() {
    let x = shop(&price(), &["Cache-Control: no-store"]);
    assert_eq!(reasons(&x)[0].0, "no-store");
    let x = shop(&price(), &["Cache-Control: no-cache"]);
    assert_eq!(x["cache"]["use"], "refresh");
    assert_eq!(x["cache"]["store"], true);

    let x = shop(&request("SecretRequest", ""), &[]);
    assert_eq!(reasons(&x)[0].0, "cache-false");
    assert_eq!(x["cache"]["use"], "bypass");

    let x = shop(
        &request("UpdatePriceRequest", "<c:PartNumber>P-1</c:PartNumber>"),
        &["Authorization: Bearer a", "Cache-Control: no-store"],
    );
    let labels: Vec<String> = reasons(&x).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        labels,
        ["write-operation", "no-store", "credentials"],
        "every reason, in order"
    );
    assert_eq!(x["invalidates"]["key"], "P-1");
    assert_eq!(
        x["invalidates"]["targets"][0],
        format!("{{{CATALOG}}}CatalogPriceRequest")
    );
}

#[test]
fn a_request_no_policy_routes_gets_the_built_in_rules() {
    let policy = ScratchFile::new("explain-unrouted", "shop.toml", POLICY);
    let run = explain(
        &[
            "--policies",
            policy.path_str(),
            "--path",
            "/elsewhere",
            "--json",
        ],
        &price(),
    );
    let x = run.json();
    assert_eq!(x["service"]["name"], "default");
    assert_eq!(x["service"]["routed"], false);
    assert!(x["service"]["upstream"].is_null(), "the --upstream default");
    assert_eq!(x["key"]["kind"], "digest");
    assert!(x["lifetime"]["ttl"].is_null());
    let text = explain(
        &["--policies", policy.path_str(), "--path", "/elsewhere"],
        &price(),
    );
    assert!(
        text.stdout
            .contains("default: no policy route matches /elsewhere"),
        "{}",
        text.stdout
    );
}

#[test]
fn a_multipart_message_is_streamed_and_never_cached() {
    let body = format!(
        "--b1\r\nContent-Type: text/xml\r\n\r\n{}\r\n--b1\r\nContent-Type: application/octet-stream\r\n\r\nBYTES\r\n--b1--\r\n",
        price()
    );
    let x = shop(
        &body,
        &["Content-Type: multipart/related; type=\"text/xml\"; boundary=b1"],
    );
    assert_eq!(
        x["operation"]["name"],
        format!("{{{CATALOG}}}CatalogPriceRequest")
    );
    assert_eq!(reasons(&x)[0].0, "multipart");
    assert_eq!(x["cache"]["use"], "bypass");
}

#[test]
fn a_queued_operation_says_so() {
    let x = shop(&request("PlaceOrder", "<c:Ref>1</c:Ref>"), &[]);
    assert_eq!(x["delivery"]["mode"], "queued");
    assert_eq!(x["cache"]["use"], "queued");
    assert_eq!(x["cache"]["store"], false);
    assert!(x["lookup_key"].is_null());
}

#[test]
fn a_message_that_is_not_acceptable_soap_exits_1_with_the_fault_reason() {
    let policy = ScratchFile::new("explain-bad", "shop.toml", POLICY);
    let dtd = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE x []><soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body/></soap:Envelope>"
    );
    let run = explain(
        &[
            "--policies",
            policy.path_str(),
            "--header",
            "Content-Type: text/xml",
        ],
        &dtd,
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stdout.contains("a SOAP 1.1 fault, HTTP 500") && run.stdout.contains("DTD"),
        "{}",
        run.stdout
    );
    let run = explain(&["--policies", policy.path_str(), "--json"], "<order/>");
    assert_eq!(run.code, Some(1));
    let x = run.json();
    assert_eq!(x["fault"]["status"], 400);
    assert!(x["fault"]["reason"]
        .as_str()
        .unwrap()
        .contains("not a SOAP Envelope"));
    // Invalid policies are reported as check reports them.
    let broken = ScratchFile::new("explain-broken", "shop.toml", "[service]\nname = 1\n");
    let run = explain(&["--policies", broken.path_str()], &price());
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("problem(s) found"), "{}", run.stderr);
}

/// What `explain` says the key is, the proxy uses: `--debug-headers` shows
/// the same selector value on a live request.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_selects_the_key_explain_shows() {
    let upstream = Upstream::catalog().await;
    // Without the queued operation, which would need a --data-dir.
    let text = POLICY
        .replace(
            "http://127.0.0.1:1/shop",
            &format!("{}/shop", upstream.url()),
        )
        .replace("delivery = \"queued\"", "");
    let policy = ScratchFile::new("explain-live", "shop.toml", &text);
    let body = request(
        "StockRequest",
        "<c:Items><c:Item>x</c:Item></c:Items><c:PartNumber>P-9</c:PartNumber>",
    );
    let run = explain(
        &["--policies", policy.path_str(), "--path", "/shop", "--json"],
        &body,
    );
    let selector = run.json()["lookup_key"]["selector"]
        .as_str()
        .unwrap()
        .to_owned();
    let proxy = Soapcache::serve(&["--policies", policy.path_str(), "--debug-headers"]);
    let answer = Http::default().soap(&proxy.url("/shop"), &body).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let sent: String = form_urlencoded::byte_serialize(selector.as_bytes()).collect();
    assert_eq!(answer.header("x-cache-key"), Some(sent.as_str()));
}

/// The transcripts in docs/policies.md are this build's own output:
/// every fenced block starting `$ soapcache explain ...` is run and
/// compared. `SOAPCACHE_BLESS=1` rewrites them instead.
#[test]
fn the_transcripts_in_docs_policies_md_are_what_explain_prints() {
    let doc_path = manifest_dir().join("docs/policies.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let bless = std::env::var_os("SOAPCACHE_BLESS").is_some();
    let mut out = String::new();
    let mut rest = doc.as_str();
    let mut ran = Vec::new();
    let mut stale = Vec::new();
    while let Some(at) = rest.find("```\n$ soapcache explain ") {
        let start = at + 4;
        out.push_str(&rest[..start]);
        let block = &rest[start..];
        let end = block.find("```\n").expect("a closed block");
        let (command, shown) = block[..end].split_once('\n').unwrap();
        let args = words(command.trim_start_matches("$ soapcache explain "));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = explain(&args, "");
        if run.stdout != shown {
            stale.push(format!(
                "{command}\n--- docs say:\n{shown}--- explain prints:\n{}",
                run.stdout
            ));
        }
        ran.push(command.to_owned());
        out.push_str(command);
        out.push('\n');
        out.push_str(&run.stdout);
        rest = &block[end..];
    }
    out.push_str(rest);
    for policy in [
        "policies/catalog.toml",
        "policies/currency.toml",
        "policies/orders.toml",
    ] {
        let service = std::fs::read_to_string(manifest_dir().join(policy)).unwrap();
        let route = service
            .lines()
            .find_map(|l| {
                l.strip_prefix("route").map(|r| {
                    r.trim_start_matches([' ', '='])
                        .trim_matches('"')
                        .to_owned()
                })
            })
            .unwrap();
        assert!(
            ran.iter().any(|c| c.contains(&format!("--path {route} "))),
            "docs/policies.md explains no request to {policy} ({route}): {ran:?}"
        );
    }
    if bless {
        std::fs::write(&doc_path, out).unwrap();
        return;
    }
    assert!(
        stale.is_empty(),
        "docs/policies.md is stale (SOAPCACHE_BLESS=1 cargo test --test explain rewrites it):\n{}",
        stale.join("\n")
    );
}

/// Words of a shell command line: spaces separate, single quotes group.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// A queued operation's message id, duplicate window, reply plan, retries
/// and order are shown as the proxy would decide them.
#[test]
fn a_queued_operation_shows_its_message_id_repeats_reply_retries_and_order() {
    let policy = ScratchFile::new(
        "explain-queued",
        "orders.toml",
        r#"
[service]
name     = "orders"
route    = "/orders"
upstream = "http://127.0.0.1:1/orders"

[namespaces]
o = "urn:example:orders"

[[operation]]
element          = "o:PlaceOrder"
delivery         = "queued"
dedup            = "10m"
max_attempts     = 4
order_by         = ["string(o:CustomerId)"]
reply_to_allowed = ["http://127.0.0.1:8080/callbacks/*"]
"#,
    );
    let with = |headers: &str| {
        format!(
            "<soap:Envelope xmlns:soap=\"{SOAP11}\" xmlns:wsa=\"http://www.w3.org/2005/08/addressing\"><soap:Header>{headers}</soap:Header><soap:Body><o:PlaceOrder xmlns:o=\"urn:example:orders\"><o:CustomerId>C-42</o:CustomerId></o:PlaceOrder></soap:Body></soap:Envelope>"
        )
    };
    let run_json = |body: &str| {
        let run = explain(
            &[
                "--policies",
                policy.path_str(),
                "--path",
                "/orders",
                "--json",
            ],
            body,
        );
        assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
        run.json()
    };

    let callback = with(
        "<wsa:MessageID>urn:uuid:7</wsa:MessageID><wsa:ReplyTo><wsa:Address>http://127.0.0.1:8080/callbacks/orders</wsa:Address></wsa:ReplyTo>",
    );
    let d = run_json(&callback)["delivery"].clone();
    assert_eq!(d["mode"], "queued");
    assert_eq!(d["message_id"], "urn:uuid:7");
    assert_eq!(d["message_id_from"], "wsa:MessageID");
    assert_eq!(d["dedup"], "10m");
    assert_eq!(d["reply"]["kind"], "callback");
    assert_eq!(
        d["reply"]["reply_to"],
        "http://127.0.0.1:8080/callbacks/orders"
    );
    assert_eq!(d["retry"]["max_attempts"], 4);
    assert_eq!(d["order_by"], "C-42");
    let text = explain(
        &["--policies", policy.path_str(), "--path", "/orders"],
        &callback,
    )
    .stdout;
    for expected in [
        "message id   urn:uuid:7 (wsa:MessageID)",
        "repeats      a repeat of this id within 10m is stored once",
        "reply        callback: the answer POSTed to http://127.0.0.1:8080/callbacks/orders",
        "retries      at most 4 attempts",
        "order        one at a time, in acceptance order, with the other messages whose order_by is \"C-42\"",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }

    // No id: one is generated, and with no ReplyTo the result is polled.
    let d = run_json(&with(""))["delivery"].clone();
    assert!(d["message_id"].is_null());
    assert_eq!(d["reply"]["kind"], "poll");
    assert_eq!(d["reply"]["retention"], "1h");

    // A ReplyTo the policy does not allow is refused, as the proxy would.
    let d = run_json(&with(
        "<wsa:MessageID>urn:uuid:8</wsa:MessageID><wsa:ReplyTo><wsa:Address>http://evil.example/x</wsa:Address></wsa:ReplyTo>",
    ))["delivery"]
        .clone();
    assert_eq!(d["reply"]["kind"], "refused");
    assert!(d["reply"]["refused"]
        .as_str()
        .unwrap()
        .contains("reply_to_allowed"));
}
