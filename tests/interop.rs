//! Interop with a real third-party SOAP client: python-zeep (installed by
//! `.ci/run` from PyPI) fetches the WSDL through soapcache and calls the
//! catalog service through it. zeep must decode every answer, MISS or HIT,
//! with the CacheControl block stripped. On the write path, zeep with its
//! WS-Addressing plugin gets 202 for a queued operation and the answer as
//! a callback to its `ReplyTo`, which it parses; an expired WS-Security
//! timestamp gets a fault zeep reads.

mod support;

use std::process::Command;

use support::*;

const WSDL: &str = include_str!("interop/catalog.wsdl");
const ORDERS_WSDL: &str = include_str!("interop/orders.wsdl");

fn zeep_available() -> bool {
    Command::new("python3")
        .args(["-c", "import zeep"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn python_zeep_calls_the_service_through_soapcache() {
    if !zeep_available() {
        // CI installs zeep; a developer machine without it is told how.
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 -m pip install zeep: required in CI"
        );
        eprintln!("SKIPPED: python zeep is not installed (python3 -m pip install zeep)");
        return;
    }
    // The proxy's address is only known once it runs, so the upstream reads
    // it from a cell filled in after start.
    let proxy_addr = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let address = proxy_addr.clone();
    let upstream = Upstream::start(move |seen| {
        if seen.method == "GET" {
            let location = format!(
                "http://{}/catalog",
                address.get().cloned().unwrap_or_default()
            );
            Reply::xml(200, WSDL.replace("ADDRESS", &location))
        } else {
            Reply::xml(200, catalog_response(&part_of(&seen.body), &in_one_hour()))
        }
    })
    .await;
    let proxy = Soapcache::serve(&["--upstream", &upstream.url()]);
    proxy_addr.set(proxy.proxy.to_string()).unwrap();

    let wsdl_url = proxy.url("/catalog?wsdl");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/zeep_client.py"),
                &wsdl_url,
            ])
            .args(["ABC-1234", "ABC-1234", "XYZ-9", "ABC-1234"])
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "zeep failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );

    let calls: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|c| {
            (
                c["part"].as_str().unwrap(),
                c["price"].as_str().unwrap(),
                c["x_cache"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            ("ABC-1234", "56.00", "MISS"),
            ("ABC-1234", "56.00", "HIT"),
            ("XYZ-9", "35.00", "MISS"),
            ("ABC-1234", "56.00", "HIT"),
        ]
    );
    let posts = upstream
        .seen()
        .iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 2, "two distinct parts, two service calls");
    let soap_action = upstream
        .seen()
        .iter()
        .find(|s| s.method == "POST")
        .unwrap()
        .headers["soapaction"]
        .clone();
    assert_eq!(
        soap_action,
        "\"http://example.org/2001/06/catalog/CatalogPrice\""
    );
}

/// The orders service of tests/interop/orders.wsdl behind soapcache, with
/// `Quote` queued and callbacks allowed to `127.0.0.1:callback_port`.
struct Orders {
    upstream: Upstream,
    proxy: Soapcache,
    _policy: ScratchFile,
    _data: DataDir,
}

async fn orders(test: &str, callback_port: u16) -> Orders {
    let proxy_addr = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let address = proxy_addr.clone();
    let upstream = Upstream::start(move |seen| {
        if seen.method == "GET" {
            let location = format!("http://{}/orders", address.get().cloned().unwrap_or_default());
            return Reply::xml(200, ORDERS_WSDL.replace("ADDRESS", &location));
        }
        let text = String::from_utf8_lossy(&seen.body);
        let item = text
            .split("Item>")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .unwrap_or_default()
            .to_owned();
        Reply::xml(
            200,
            format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><o:QuoteResponse xmlns:o=\"urn:example:orders\">\
<o:Item>{item}</o:Item><o:Price>12.50</o:Price></o:QuoteResponse></soap:Body></soap:Envelope>"
            ),
        )
    })
    .await;
    let policy = ScratchFile::new(
        test,
        "orders.toml",
        &format!(
            r#"[service]
name = "orders"
route = "/orders"
upstream = "http://{}/orders"

[namespaces]
o = "urn:example:orders"

[[operation]]
element = "o:Quote"
delivery = "queued"
reply_to_allowed = ["http://127.0.0.1:{callback_port}/callbacks/*"]
"#,
            upstream.addr
        ),
    );
    let data = DataDir::new(test);
    let proxy = Soapcache::serve(&[
        "--policies",
        policy.path_str(),
        "--data-dir",
        data.path_str(),
    ]);
    proxy_addr.set(proxy.proxy.to_string()).unwrap();
    Orders {
        upstream,
        proxy,
        _policy: policy,
        _data: data,
    }
}

async fn zeep(args: Vec<String>) -> Vec<serde_json::Value> {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/interop/zeep_wsa.py"
            ))
            .args(args)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "zeep failed:\n{}\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn zeep_with_ws_addressing_gets_202_then_the_answer_at_its_reply_to() {
    if !zeep_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 -m pip install zeep: required in CI"
        );
        eprintln!("SKIPPED: python zeep is not installed (python3 -m pip install zeep)");
        return;
    }
    let callback_port = free_addr().port();
    let orders = orders("zeep-callback", callback_port).await;
    let wsdl = orders.proxy.url("/orders?wsdl");
    let out = zeep(vec![
        "callback".into(),
        wsdl,
        callback_port.to_string(),
        "widget".into(),
    ])
    .await;
    let call = &out[0];
    assert_eq!(
        call["immediate"],
        serde_json::Value::Null,
        "202: zeep returns None"
    );
    assert_eq!(call["status"], 202);
    assert_eq!(call["x_cache"], "QUEUED");
    assert_eq!(
        call["x_message_id"], call["message_id"],
        "the 202 names zeep's MessageID"
    );
    assert_eq!(call["path"], "/callbacks/quotes");
    assert_eq!(call["relates_to"], call["message_id"]);
    assert_eq!(
        call["to"],
        format!("http://127.0.0.1:{callback_port}/callbacks/quotes")
    );
    assert_eq!(call["ticket"], "T-42");
    assert_eq!(call["ticket_marked"], "true");
    assert_eq!(
        (call["item"].as_str(), call["price"].as_str()),
        (Some("widget"), Some("12.50"))
    );
    let posts: Vec<_> = orders
        .upstream
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1);
    let delivered = String::from_utf8_lossy(&posts[0].body).into_owned();
    assert!(
        delivered.contains("http://www.w3.org/2005/08/addressing/anonymous"),
        "the service answers on its connection: {delivered}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn zeep_with_an_expired_ws_security_timestamp_gets_message_expired() {
    if !zeep_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 -m pip install zeep: required in CI"
        );
        eprintln!("SKIPPED: python zeep is not installed (python3 -m pip install zeep)");
        return;
    }
    let orders = orders("zeep-expired", free_addr().port()).await;
    let out = zeep(vec![
        "expired".into(),
        orders.proxy.url("/orders?wsdl"),
        "widget".into(),
    ])
    .await;
    let fault = out[0]["fault"].as_str().unwrap_or_default();
    assert!(fault.contains("MessageExpired"), "{fault}");
    let posts = orders
        .upstream
        .seen()
        .into_iter()
        .filter(|s| s.method == "POST")
        .count();
    assert_eq!(posts, 0, "the service is untouched");
}
