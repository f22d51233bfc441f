//! Interop with a real third-party SOAP client: python-zeep (installed by
//! `.ci/run` from PyPI) fetches the WSDL through soapcache and calls the
//! catalog service through it. zeep must decode every answer, MISS or HIT,
//! with the CacheControl block stripped.

mod support;

use std::process::Command;

use support::*;

const WSDL: &str = include_str!("interop/catalog.wsdl");

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
