//! `soapcache demo` (reference §9), run as a user runs it: the read path
//! (a MISS, then HITs) and the write path (a queued PlaceOrder answered 202
//! at once, then delivered), and nothing left behind.

use std::process::Command;

#[test]
fn the_demo_shows_hits_and_a_queued_write_delivered() {
    let output = Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--once",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = |start: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(start))
            .unwrap_or_else(|| panic!("no line starting {start:?} in\n{text}"))
            .to_owned()
    };
    assert!(line("1  CatalogPriceRequest ABC-1234").contains("MISS"));
    assert!(line("2  the same request again").contains("HIT"));
    assert!(line("3  same, other prefixes").contains("HIT"));
    let order = line("6  PlaceOrder R-1001");
    assert!(order.contains("202 QUEUED"), "{order}");
    assert!(
        order.trim_end().ends_with(" 0"),
        "202 before any service call: {order}"
    );
    assert!(line("delivered by soapcache").contains("X-Message-Id the same"));
    assert!(
        line("GET /queue totals").contains("\"delivered\":1"),
        "{text}"
    );
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("soapcache-demo-")
        })
        .count();
    assert_eq!(leftovers, 0, "the demo removes its data dir");
}
