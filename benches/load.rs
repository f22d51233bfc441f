//! Load benchmark: soapcache against the upstream answered directly and
//! against nginx, with one load generator (wrk) and one set of settings, in
//! one run. `cargo bench --bench load`; see docs/PERFORMANCE.md.
//!
//! Every server (the upstream, soapcache, nginx) is pinned to core 0 with
//! `taskset -c 0`; wrk runs on core 1. Contenders:
//!
//! - (a)  the upstream answered directly: a single-threaded hyper server
//!   (this binary, re-executed with `--serve-upstream PORT MODE`) answering
//!   every POST with a fixed ~600-byte SOAP 1.1 response with `CacheControl`;
//! - (b)  soapcache, every request a hit;
//! - (c)  soapcache, every request a miss (the upstream sends no `CacheControl`);
//! - (c1) soapcache, every request a bypass (request `Cache-Control: no-store`):
//!   forwarded past the cache both ways, `CacheControl` still cut out;
//! - (c2) soapcache, every request a miss and store (request
//!   `Cache-Control: no-cache`): forwarded, `CacheControl` cut out, the
//!   answer stored (refreshing the entry) every time;
//! - (d)  nginx `proxy_cache` keyed on the request body, every request a hit;
//! - (d') nginx as a plain reverse proxy;
//! - (e)  soapcache, 10 000 distinct keys requested uniformly at random,
//!   from an empty cache (so its first 10 000 requests or so are misses);
//! - (e') the same again on the same soapcache, every key now stored: the
//!   hit mix alone;
//! - (f)  soapcache accepting a `delivery = "queued"` operation on its
//!   embedded store (SQLite in `--data-dir`, no `--queue`): 202 to every
//!   request, the messages delivered to the upstream in the background;
//!
//! and (a) and (c) again with one connection, for the latency the miss path
//! adds. The verdicts compare bypass and miss-and-store with (d'), the 10 000
//! key mix with (a), and print the queued accepts against (a) and (d'). Environment: `LOAD_SECONDS` (default 8), `LOAD_CONNECTIONS`
//! (default 64), `LOAD_KEEP_TMP=1` keeps the temporary directory.
//!
//! Run as a test (`cargo test --all-targets`, no `--bench` argument) it only
//! prints how to run it.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SOAP_ACTION: &str = "\"http://example.org/2001/06/catalog/CatalogPriceRequest\"";
const PATH: &str = "/catalog";
/// The part number of the fixed request; in the key-mix script it becomes
/// `ABC-00001` .. `ABC-10000`.
const PART: &str = "ABC-01234";
const DISTINCT_KEYS: u32 = 10_000;
const SERVER_CORE: &str = "0";
const CLIENT_CORE: &str = "1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-upstream") {
        let port: u16 = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("--serve-upstream PORT MODE");
        let mode = args
            .get(i + 2)
            .and_then(|m| Mode::parse(m))
            .expect("--serve-upstream PORT cache|nocache|echo");
        upstream::serve(port, mode);
        return;
    }
    // For benches/instructions.sh: the wrk script the load runs use.
    // `--print-request-script no-cache` (or `no-store`) adds that
    // `Cache-Control` request header.
    if let Some(i) = args.iter().position(|a| a == "--print-request-script") {
        let body = request_body(PART);
        match args.get(i + 1).map(String::as_str) {
            Some(directive @ ("no-cache" | "no-store")) => {
                print!(
                    "{}",
                    fixed_script_with(&body, &[("Cache-Control", directive)])
                );
            }
            Some(other) if !other.starts_with('-') => {
                eprintln!("--print-request-script [no-cache|no-store], not {other}");
                std::process::exit(2);
            }
            _ => print!("{}", fixed_script(&body)),
        }
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "load benchmark: not run in test mode; run it with `cargo bench --bench load` \
             (about 4 min plus the build; see docs/PERFORMANCE.md)"
        );
        return;
    }
    if let Err(e) = run() {
        eprintln!("load benchmark failed: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Messages

/// The ~635-byte SOAP 1.1 CatalogPriceRequest every contender receives.
fn request_body(part: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cat="http://example.org/2001/06/catalog">
  <soap:Header>
    <wsa:MessageID xmlns:wsa="http://www.w3.org/2005/08/addressing">urn:uuid:6b29fc40-ca47-1067-b31d-00dd010662da</wsa:MessageID>
  </soap:Header>
  <soap:Body>
    <cat:CatalogPriceRequest>
      <cat:PartNumber>{part}</cat:PartNumber>
      <cat:Customer>ACME Corp</cat:Customer>
      <cat:Currency>EUR</cat:Currency>
      <cat:Quantity>12</cat:Quantity>
      <cat:Region>EU-West</cat:Region>
    </cat:CatalogPriceRequest>
  </soap:Body>
</soap:Envelope>
"#
    )
}

/// The upstream's modes: a fixed `CacheKey`, no `CacheControl` at all, or
/// the request's part number echoed as `CacheKey`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cache,
    NoCache,
    Echo,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        match s {
            "cache" => Some(Mode::Cache),
            "nocache" => Some(Mode::NoCache),
            "echo" => Some(Mode::Echo),
            _ => None,
        }
    }
    fn arg(self) -> &'static str {
        match self {
            Mode::Cache => "cache",
            Mode::NoCache => "nocache",
            Mode::Echo => "echo",
        }
    }
}

/// The upstream's ~600-byte SOAP 1.1 answer. Without `CacheControl`, a
/// header block of the same length takes its place so that every mode
/// sends the same number of bytes.
fn response_body(mode: Mode, part: &str, expires: &str) -> String {
    let control = format!(
        r#"<ca:CacheControl xmlns:ca="http://example.org/2001/06/cache">
      <ca:CacheKey>{part}</ca:CacheKey>
      <ca:Expires>{expires}</ca:Expires>
    </ca:CacheControl>"#
    );
    let header_block = match mode {
        Mode::Cache | Mode::Echo => control,
        Mode::NoCache => {
            let open = r#"<tr:Trace xmlns:tr="urn:example:trace">"#;
            let close = "</tr:Trace>";
            let pad = control.len() - open.len() - close.len();
            format!("{open}{}{close}", "x".repeat(pad))
        }
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header>
    {header_block}
  </soap:Header>
  <soap:Body>
    <cat:CatalogPriceResponse xmlns:cat="http://example.org/2001/06/catalog">
      <cat:PartNumber>{part}</cat:PartNumber>
      <cat:Price currency="EUR">42.00</cat:Price>
      <cat:LeadTime>P3D</cat:LeadTime>
    </cat:CatalogPriceResponse>
  </soap:Body>
</soap:Envelope>
"#
    )
}

// ---------------------------------------------------------------------------
// The upstream server (runs in its own process)

mod upstream {
    use super::{response_body, Mode, PART};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::header::{HeaderValue, CONTENT_TYPE};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    const TEXT_XML: &str = "text/xml; charset=utf-8";

    /// One thread, one current-thread runtime, HTTP/1.1 keep-alive.
    pub fn serve(port: u16, mode: Mode) {
        let expires =
            super::xsd_date_time(time::OffsetDateTime::now_utc() + time::Duration::days(1));
        let fixed = Bytes::from(response_body(mode, PART, &expires));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("upstream: bind");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let fixed = fixed.clone();
                let expires = expires.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let fixed = fixed.clone();
                        let expires = expires.clone();
                        async move {
                            // Read the whole request, as a real service would.
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let answer = match mode {
                                Mode::Echo => {
                                    let part = part_number(&body).unwrap_or(PART);
                                    Bytes::from(response_body(mode, part, &expires))
                                }
                                _ => fixed,
                            };
                            let mut response = Response::new(Full::new(answer));
                            response
                                .headers_mut()
                                .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_XML));
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    /// The text of the first `PartNumber` element, found by a byte search.
    fn part_number(body: &[u8]) -> Option<&str> {
        let text = std::str::from_utf8(body).ok()?;
        let start = text.find("PartNumber>")? + "PartNumber>".len();
        let end = start + text[start..].find('<')?;
        Some(&text[start..end])
    }
}

// ---------------------------------------------------------------------------
// The benchmark

struct Settings {
    seconds: u64,
    connections: u32,
    tmp: PathBuf,
    request: String,
    fixed_script: PathBuf,
    /// The fixed request with `Cache-Control: no-store` (bypass).
    no_store_script: PathBuf,
    /// The fixed request with `Cache-Control: no-cache` (miss and store).
    no_cache_script: PathBuf,
    mix_script: PathBuf,
    /// The fixed request sent to (f)'s queued route.
    queued_script: PathBuf,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Default)]
struct Measured {
    requests_per_second: f64,
    p50_micros: f64,
    p99_micros: f64,
    requests: u64,
    /// Non-2xx/3xx answers plus socket errors.
    errors: u64,
    /// CPU time (user + system) of each server process tree during the run,
    /// per request: the proxy first, then the upstream.
    cpu_micros_per_request: Vec<f64>,
    /// CPU time of all server processes ÷ wall time: how much of core 0
    /// they got (≈ 1.0 when the server side is the bottleneck and nothing
    /// else competes for the core).
    server_core_share: f64,
}

#[derive(Clone)]
struct Row {
    label: String,
    connections: u32,
    measured: Option<Measured>,
    notes: Vec<String>,
}

const LABEL_A: &str = "(a) upstream direct (hyper, 1 thread)";
const LABEL_A1: &str = "(a) upstream direct, 1 connection";
const LABEL_B: &str = "(b) soapcache, all hits";
const LABEL_B_LOGGED: &str = "(b) soapcache, all hits, access log on";
const LABEL_C: &str = "(c) soapcache, all misses (pass-through)";
const LABEL_C1: &str = "(c) soapcache, all misses, 1 connection";
const LABEL_D: &str = "(d) nginx proxy_cache, all hits";
const LABEL_D2: &str = "(d') nginx plain reverse proxy";
const LABEL_C_BYPASS: &str = "(c1) soapcache, bypass (request Cache-Control: no-store)";
const LABEL_C_REFRESH: &str = "(c2) soapcache, miss and store (request Cache-Control: no-cache)";
const LABEL_E: &str = "(e) soapcache, 10 000 keys uniform";
const LABEL_E_WARM: &str = "(e') soapcache, 10 000 keys uniform, warm";
const LABEL_F: &str = "(f) soapcache, queued accepts (202, embedded store)";

fn run() -> Result<(), String> {
    let started = Instant::now();
    let seconds = env_number("LOAD_SECONDS", 8)?;
    let connections = env_number("LOAD_CONNECTIONS", 64)? as u32;
    // One round's pairs vary by ±15% on a shared host; three give a median.
    let rounds = env_number("LOAD_ROUNDS", 3)?;
    if seconds == 0 || connections == 0 || rounds == 0 {
        return Err("LOAD_SECONDS, LOAD_CONNECTIONS and LOAD_ROUNDS must be positive".into());
    }
    ensure_tools()?;

    let tmp = std::env::temp_dir().join(format!("soapcache-load-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let _tmp_guard = TmpDir(tmp.clone());
    let request = request_body(PART);
    let answer = response_body(Mode::Cache, PART, "2001-01-01T00:00:00Z").len();
    assert!(
        (600..680).contains(&request.len()),
        "request is {} bytes",
        request.len()
    );
    assert!((560..640).contains(&answer), "answer is {answer} bytes");
    assert_eq!(
        answer,
        response_body(Mode::NoCache, PART, "2001-01-01T00:00:00Z").len()
    );
    let settings = Settings {
        seconds,
        connections,
        fixed_script: write_file(&tmp, "fixed.lua", &fixed_script(&request))?,
        no_store_script: write_file(
            &tmp,
            "no-store.lua",
            &fixed_script_with(&request, &[("Cache-Control", "no-store")]),
        )?,
        no_cache_script: write_file(
            &tmp,
            "no-cache.lua",
            &fixed_script_with(&request, &[("Cache-Control", "no-cache")]),
        )?,
        mix_script: write_file(&tmp, "mix.lua", &mix_script())?,
        queued_script: write_file(&tmp, "queued.lua", &fixed_script(&request))?,
        tmp: tmp.clone(),
        request,
    };

    let date = xsd_date_time(time::OffsetDateTime::now_utc());
    let load_before = loadavg();
    let mut header = String::new();
    let _ = writeln!(header, "soapcache load benchmark, {date}");
    let _ = writeln!(
        header,
        "machine: {} cores (nproc), {}; load average at start: {load_before}",
        nproc(),
        cpu_model()
    );
    let _ = writeln!(header, "command: {}", command_line());
    let _ = writeln!(
        header,
        "load generator: {} `-t1 -c{connections} -d{seconds}s --latency`, pinned to core {CLIENT_CORE}; \
         every server process (proxy and upstream) pinned to core {SERVER_CORE}; {}",
        tool_version("wrk", &["-v"])
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        if rounds == 1 {
            "one round".to_owned()
        } else {
            format!("{rounds} interleaved rounds, medians shown")
        }
    );
    if let Some(nginx) = nginx_binary() {
        let version = tool_version(&nginx.display().to_string(), &["-v"]);
        let _ = writeln!(
            header,
            "nginx: {} (worker_processes 1, keepalive 64 to the upstream)",
            version.rsplit(' ').next().unwrap_or("?")
        );
    }
    let _ = writeln!(
        header,
        "request: {}-byte SOAP 1.1 CatalogPriceRequest POST; upstream answer {} bytes ({} after soapcache strips CacheControl)",
        settings.request.len(),
        answer,
        answer - control_block_len(),
    );
    print!("{header}");
    println!("measuring ({seconds} s per run)...");

    let mut all: Vec<Vec<Row>> = Vec::new();
    for round in 1..=rounds {
        if rounds > 1 {
            eprintln!(" round {round}/{rounds}");
        }
        all.push(measure_round(&settings)?);
    }
    let paired = paired_hit_ratios(&all, connections);
    let rows = merge(all);

    println!();
    print!("{header}");
    println!("load average at end: {}", loadavg());
    println!();
    println!("{}", table(&rows, connections));
    println!("{}", verdicts(&rows, connections));
    if paired.len() > 1 {
        let list: Vec<String> = paired.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "hits ÷ direct round by round (each pair measured seconds apart): {} (median {:.2})",
            list.join(" "),
            median(paired.clone())
        );
    }
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Every contender once, each with servers of its own.
fn measure_round(settings: &Settings) -> Result<Vec<Row>, String> {
    let connections = settings.connections;
    let fixed = settings.fixed_script.as_path();
    let mut rows: Vec<Row> = Vec::new();

    // (a) the upstream directly.
    {
        let upstream = start_upstream(settings, Mode::Cache, "upstream")?;
        check_status(upstream.addr, &settings.request, None)?;
        // One connection first: (a) then runs just before (b), its pair.
        let single = wrk(settings, LABEL_A1, upstream.addr, fixed, 1, &[&upstream])?;
        let many = wrk(
            settings,
            LABEL_A,
            upstream.addr,
            fixed,
            connections,
            &[&upstream],
        )?;
        rows.push(Row::new(LABEL_A, connections, many));
        rows.push(Row::new(LABEL_A1, 1, single));
    }

    // (b) soapcache, every request a hit: with the access log off, then
    // on (one line per request to a file, as `soapcache serve` runs by
    // default).
    for (label, rust_log, name) in [
        (LABEL_B, "warn", "soapcache-b"),
        (LABEL_B_LOGGED, "info", "soapcache-b-logged"),
    ] {
        let upstream = start_upstream(settings, Mode::Cache, "upstream-b")?;
        let soapcache = start_soapcache(settings, upstream.addr, name, rust_log)?;
        let first = check_status(soapcache.proxy.addr, &settings.request, Some("MISS"))?;
        let second = check_status(soapcache.proxy.addr, &settings.request, Some("HIT"))?;
        let run = run_soapcache(settings, label, &soapcache, &upstream, fixed, connections)?;
        let mut row = Row::new(label, connections, run.measured);
        row.notes.push(format!("warm-up: {first}, then {second}"));
        row.notes.extend(stats_note(run.before, run.after));
        row.notes.push(rss_note(&soapcache.proxy));
        rows.push(row);
    }

    // (c) soapcache, every request a miss.
    {
        let upstream = start_upstream(settings, Mode::NoCache, "upstream-c")?;
        let soapcache = start_soapcache(settings, upstream.addr, "soapcache-c", "warn")?;
        let first = check_status(soapcache.proxy.addr, &settings.request, Some("MISS"))?;
        check_status(soapcache.proxy.addr, &settings.request, Some("MISS"))?;
        for (label, c) in [(LABEL_C, connections), (LABEL_C1, 1)] {
            let run = run_soapcache(settings, label, &soapcache, &upstream, fixed, c)?;
            let mut row = Row::new(label, c, run.measured);
            if c == connections {
                row.notes.push(format!("warm-up: {first}"));
            }
            row.notes.extend(stats_note(run.before, run.after));
            row.notes.push(rss_note(&soapcache.proxy));
            rows.push(row);
        }
    }

    // (c1) bypass: `Cache-Control: no-store` on every request; (c2) miss
    // and store: `Cache-Control: no-cache` on every request. The upstream
    // sends `CacheControl`, which soapcache cuts out either way.
    for (label, directive, script, want, name) in [
        (
            LABEL_C_BYPASS,
            "no-store",
            settings.no_store_script.as_path(),
            "BYPASS",
            "soapcache-c1",
        ),
        (
            LABEL_C_REFRESH,
            "no-cache",
            settings.no_cache_script.as_path(),
            "MISS",
            "soapcache-c2",
        ),
    ] {
        let upstream = start_upstream(settings, Mode::Cache, &format!("upstream-{name}"))?;
        let soapcache = start_soapcache(settings, upstream.addr, name, "warn")?;
        let headers = [("Cache-Control", directive)];
        let first = check(
            soapcache.proxy.addr,
            &settings.request,
            &headers,
            200,
            Some(want),
        )?;
        let second = check(
            soapcache.proxy.addr,
            &settings.request,
            &headers,
            200,
            Some(want),
        )?;
        let SoapcacheRun {
            measured,
            before,
            after,
        } = run_soapcache(settings, label, &soapcache, &upstream, script, connections)?;
        let counter = if directive == "no-store" {
            "bypasses"
        } else {
            "misses"
        };
        let counted = service_count(&after, counter).zip(service_count(&before, counter));
        if let Some((a, b)) = counted {
            // Every request the run sent must have been one of these.
            if a - b < measured.requests {
                return Err(format!(
                    "{label}: /stats counted {} {counter} for {} requests",
                    a - b,
                    measured.requests
                ));
            }
        }
        let mut row = Row::new(label, connections, measured);
        row.notes.push(format!(
            "warm-up: {}, then {}",
            first.x_cache, second.x_cache
        ));
        if !first.cache_status.is_empty() {
            row.notes
                .push(format!("Cache-Status: {}", second.cache_status));
        }
        row.notes.push(service_counts_note(
            before,
            after.clone(),
            &["hits", "misses", "bypasses", "errors"],
        ));
        if directive == "no-cache" {
            row.notes.extend(entries_note(&after));
        }
        row.notes.push(rss_note(&soapcache.proxy));
        rows.push(row);
    }

    // (d) nginx proxy_cache, (d') nginx plain reverse proxy.
    for (label, cache) in [(LABEL_D, true), (LABEL_D2, false)] {
        if nginx_binary().is_none() {
            rows.push(Row {
                label: label.into(),
                connections,
                measured: None,
                notes: vec!["skipped: nginx is not installed".into()],
            });
            continue;
        }
        let upstream = start_upstream(settings, Mode::Cache, "upstream-d")?;
        let nginx = start_nginx(settings, upstream.addr, cache)?;
        let mut notes = Vec::new();
        if cache {
            let first = check_header(nginx.addr, &settings.request, "x-cache-status")?;
            let second = check_header(nginx.addr, &settings.request, "x-cache-status")?;
            if second != "HIT" {
                return Err(format!(
                    "nginx proxy_cache does not hit: X-Cache-Status {first}, then {second}"
                ));
            }
            notes.push(format!("warm-up: {first}, then {second}"));
        } else {
            check_status(nginx.addr, &settings.request, None)?;
        }
        let measured = wrk(
            settings,
            label,
            nginx.addr,
            fixed,
            connections,
            &[&nginx, &upstream],
        )?;
        let mut row = Row::new(label, connections, measured);
        row.notes.extend(notes);
        rows.push(row);
    }

    // (e) soapcache, 10 000 keys chosen uniformly, from an empty cache.
    {
        let upstream = start_upstream(settings, Mode::Echo, "upstream-e")?;
        let soapcache = start_soapcache(settings, upstream.addr, "soapcache-e", "warn")?;
        check_status(
            soapcache.proxy.addr,
            &request_body("ABC-00001"),
            Some("MISS"),
        )?;
        let mix = settings.mix_script.as_path();
        let run = run_soapcache(settings, LABEL_E, &soapcache, &upstream, mix, connections)?;
        let mut row = Row::new(LABEL_E, connections, run.measured);
        let entries = entries_note(&run.after);
        row.notes.extend(stats_note(run.before, run.after));
        row.notes.extend(entries);
        row.notes.push(rss_note(&soapcache.proxy));
        rows.push(row);

        // (e') the same mix again on the same soapcache: every key was
        // stored during (e) (each of the 10 000 is drawn dozens of times),
        // so this is the hit mix alone, without (e)'s 10 000 first misses.
        let run = run_soapcache(
            settings,
            LABEL_E_WARM,
            &soapcache,
            &upstream,
            mix,
            connections,
        )?;
        let count = |v: &Option<serde_json::Value>| v.as_ref()?.get("misses")?.as_u64();
        let misses = count(&run.after)
            .zip(count(&run.before))
            .map(|(after, before)| after.saturating_sub(before));
        if misses != Some(0) {
            return Err(format!(
                "{LABEL_E_WARM}: every key should have been stored by (e), but /stats counted {misses:?} misses"
            ));
        }
        let mut row = Row::new(LABEL_E_WARM, connections, run.measured);
        row.notes.extend(stats_note(run.before, run.after));
        rows.push(row);
    }

    // (f) soapcache accepting queued messages on its embedded store: every
    // request answered 202 after the commit to SQLite; the deliveries to the
    // upstream (which answers any POST) run in the background meanwhile, on
    // the same core, and count in the server CPU.
    {
        let upstream = start_upstream(settings, Mode::Cache, "upstream-f")?;
        let dir = settings.tmp.join("soapcache-f");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let policy = write_file(&dir, "queued.toml", &queued_policy(upstream.addr))?;
        let soapcache = start_soapcache_with(
            settings,
            upstream.addr,
            "soapcache-f",
            "warn",
            &[
                "--policies".into(),
                policy.display().to_string(),
                "--data-dir".into(),
                dir.join("data").display().to_string(),
            ],
        )?;
        let first = check(soapcache.proxy.addr, &settings.request, &[], 202, None)?;
        let upstream_before = tree_cpu_ticks(upstream.process.pid());
        let queued = settings.queued_script.as_path();
        let SoapcacheRun {
            measured,
            before,
            after,
        } = run_soapcache(
            settings,
            LABEL_F,
            &soapcache,
            &upstream,
            queued,
            connections,
        )?;
        let mut row = Row::new(LABEL_F, connections, measured);
        row.notes.push(format!(
            "warm-up: HTTP {}, X-Cache {}",
            first.status, first.x_cache
        ));
        let totals = |v: &Option<serde_json::Value>, k: &str| {
            v.as_ref()?.get("queue")?.get("totals")?.get(k)?.as_u64()
        };
        if let (Some(delivered), Some(ready)) =
            (totals(&after, "delivered"), totals(&after, "ready"))
        {
            let delivered = delivered - totals(&before, "delivered").unwrap_or(0);
            row.notes.push(format!(
                "{delivered} delivered during the run, {ready} waiting at its end"
            ));
        }
        row.notes.push(service_counts_note(
            before,
            after,
            &["queued", "misses", "errors"],
        ));
        row.notes.push(
            "deliveries to the upstream run in the background during the run (upstream CPU counted)"
                .into(),
        );
        if tree_cpu_ticks(upstream.process.pid()) == upstream_before {
            row.notes
                .push("the upstream used no CPU: were any messages delivered?".into());
        }
        row.notes.push(rss_note(&soapcache.proxy));
        rows.push(row);
    }
    Ok(rows)
}

/// (f)'s policy: the catalog route with its operation queued on the
/// embedded store.
fn queued_policy(upstream: SocketAddr) -> String {
    format!(
        r#"[service]
name     = "catalog"
route    = "{PATH}"
upstream = "http://{upstream}{PATH}"

[namespaces]
cat = "http://example.org/2001/06/catalog"

[[operation]]
element  = "cat:CatalogPriceRequest"
delivery = "queued"
"#
    )
}

impl Row {
    fn new(label: &str, connections: u32, measured: Measured) -> Row {
        let mut notes = Vec::new();
        if measured.errors > 0 {
            notes.push(format!("{} errors/non-2xx", measured.errors));
        }
        Row {
            label: label.into(),
            connections,
            measured: Some(measured),
            notes,
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// One row per contender: medians over the rounds, the last round's notes,
/// and the spread of req/s when there was more than one round.
fn merge(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let Some(last) = rounds.last() else {
        return Vec::new();
    };
    let mut merged = Vec::new();
    for row in last {
        let runs: Vec<&Measured> = rounds
            .iter()
            .filter_map(|r| {
                r.iter()
                    .find(|x| x.label == row.label && x.connections == row.connections)
            })
            .filter_map(|x| x.measured.as_ref())
            .collect();
        let mut out = row.clone();
        if runs.len() > 1 {
            let pick = |f: &dyn Fn(&Measured) -> f64| median(runs.iter().map(|m| f(m)).collect());
            let parts = runs[0].cpu_micros_per_request.len();
            let rps: Vec<f64> = runs.iter().map(|m| m.requests_per_second).collect();
            let (lo, hi) = rps
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            out.measured = Some(Measured {
                requests_per_second: pick(&|m| m.requests_per_second),
                p50_micros: pick(&|m| m.p50_micros),
                p99_micros: pick(&|m| m.p99_micros),
                requests: runs.iter().map(|m| m.requests).sum(),
                errors: runs.iter().map(|m| m.errors).sum(),
                cpu_micros_per_request: (0..parts)
                    .map(|i| pick(&|m| m.cpu_micros_per_request.get(i).copied().unwrap_or(0.0)))
                    .collect(),
                server_core_share: pick(&|m| m.server_core_share),
            });
            out.notes.insert(
                0,
                format!("req/s over {} rounds {lo:.0}–{hi:.0}", runs.len()),
            );
        }
        merged.push(out);
    }
    merged
}

/// (b) ÷ (a) within each round: the machine's drift between rounds moves
/// both, so these vary less than the contenders' req/s do.
fn paired_hit_ratios(rounds: &[Vec<Row>], connections: u32) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|round| {
            let a = find(round, LABEL_A, connections)?.requests_per_second;
            let b = find(round, LABEL_B, connections)?.requests_per_second;
            (a > 0.0).then(|| b / a)
        })
        .collect()
}

fn find<'r>(rows: &'r [Row], label: &str, connections: u32) -> Option<&'r Measured> {
    rows.iter()
        .find(|r| r.label == label && r.connections == connections)
        .and_then(|r| r.measured.as_ref())
}

fn table(rows: &[Row], connections: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| contender | conns | req/s | p50 | p99 | req/s ÷ (a) | server CPU µs/req (proxy + upstream) | core 0 busy | notes |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let baseline = if row.connections == 1 {
            find(rows, LABEL_A1, 1)
        } else {
            find(rows, LABEL_A, connections)
        }
        .map(|m| m.requests_per_second);
        match &row.measured {
            Some(m) => {
                let ratio = baseline
                    .filter(|b| *b > 0.0)
                    .map_or("-".into(), |b| format!("{:.2}", m.requests_per_second / b));
                let cpu = m
                    .cpu_micros_per_request
                    .iter()
                    .map(|c| format!("{c:.1}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0}% | {} |",
                    row.label,
                    row.connections,
                    m.requests_per_second,
                    micros(m.p50_micros),
                    micros(m.p99_micros),
                    ratio,
                    cpu,
                    m.server_core_share * 100.0,
                    row.notes.join("; ")
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | {} | - | - | - | - | - | - | {} |",
                    row.label,
                    row.connections,
                    row.notes.join("; ")
                );
            }
        }
    }
    out
}

/// A ratio to print: (what, contender, baseline's name, baseline, target).
type Goal<'r> = (
    &'static str,
    Option<&'r Measured>,
    &'static str,
    Option<&'r Measured>,
    Option<f64>,
);

/// The targets, computed from this run's rows.
fn verdicts(rows: &[Row], connections: u32) -> String {
    let mut out = String::from("targets (ratios within this run):\n");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let direct = find(rows, LABEL_A, connections);
    let hits = find(rows, LABEL_B, connections);
    let nginx = find(rows, LABEL_D, connections);
    if let (Some(a), Some(b)) = (direct, hits) {
        let r = b.requests_per_second / a.requests_per_second;
        let _ = writeln!(
            out,
            "  soapcache hits ÷ upstream direct        = {r:.2} (target ≥ 0.85: {})",
            verdict(r >= 0.85)
        );
    }
    if let (Some(a), Some(b)) = (direct, find(rows, LABEL_B_LOGGED, connections)) {
        let _ = writeln!(
            out,
            "    the same with the access log on       = {:.2}",
            b.requests_per_second / a.requests_per_second
        );
    }
    if let (Some(d), Some(b)) = (nginx, hits) {
        let r = b.requests_per_second / d.requests_per_second;
        let _ = writeln!(
            out,
            "  soapcache hits ÷ nginx proxy_cache hits = {r:.2} (target ≥ 1.5: {})",
            verdict(r >= 1.5)
        );
    }
    if let (Some(a1), Some(c1)) = (find(rows, LABEL_A1, 1), find(rows, LABEL_C1, 1)) {
        let added = c1.p50_micros - a1.p50_micros;
        let _ = writeln!(
            out,
            "  miss path p50 added at 1 connection     = {added:.0} µs ({} → {}; target ≤ 150 µs: {})",
            micros(a1.p50_micros),
            micros(c1.p50_micros),
            verdict(added <= 150.0)
        );
    }
    let plain = find(rows, LABEL_D2, connections);
    let bypass = find(rows, LABEL_C_BYPASS, connections);
    let refresh = find(rows, LABEL_C_REFRESH, connections);
    let mix = find(rows, LABEL_E, connections);
    let warm_mix = find(rows, LABEL_E_WARM, connections);
    let queued = find(rows, LABEL_F, connections);
    // (what, contender, baseline name, baseline, target)
    let goals: [Goal; 6] = [
        ("bypass", bypass, "nginx plain proxy", plain, Some(0.8)),
        (
            "miss and store",
            refresh,
            "nginx plain proxy",
            plain,
            Some(0.8),
        ),
        (
            "10k-key hit mix",
            warm_mix,
            "upstream direct",
            direct,
            Some(0.8),
        ),
        (
            "10k keys from empty",
            mix,
            "upstream direct",
            direct,
            Some(0.8),
        ),
        ("queued accepts", queued, "upstream direct", direct, None),
        ("queued accepts", queued, "nginx plain proxy", plain, None),
    ];
    for (what, contender, base_name, base, target) in goals {
        let (Some(c), Some(b)) = (contender, base) else {
            continue;
        };
        if b.requests_per_second <= 0.0 {
            continue;
        }
        let r = c.requests_per_second / b.requests_per_second;
        let name = format!("{what} ÷ {base_name}");
        let _ = match target {
            Some(t) => writeln!(
                out,
                "  {name:<39} = {r:.2} (target ≥ {t}: {})",
                verdict(r >= t)
            ),
            None => writeln!(out, "  {name:<39} = {r:.2} (no target)"),
        };
    }
    // CPU per request is far less sensitive to other load on the machine
    // than req/s: what the ratios would be if core 0 were the bottleneck.
    let cpu = |m: &Measured| m.cpu_micros_per_request.iter().sum::<f64>();
    for (what, contender, base_name, base, target) in goals {
        let (Some(c), Some(b)) = (contender, base) else {
            continue;
        };
        if cpu(c) <= 0.0 {
            continue;
        }
        let r = cpu(b) / cpu(c);
        let target = target.map_or(String::new(), |t| {
            format!(" (target ≥ {t}: {})", verdict(r >= t))
        });
        let _ = writeln!(
            out,
            "  by server CPU per request: {what} {:.1} µs vs {base_name} {:.1} µs → capacity ratio {r:.2}{target}",
            cpu(c),
            cpu(b),
        );
    }
    if let (Some(a), Some(b)) = (direct, hits) {
        if cpu(b) > 0.0 {
            let _ = writeln!(
                out,
                "  by server CPU per request: hits {:.1} µs vs direct {:.1} µs → capacity ratio {:.2}",
                cpu(b),
                cpu(a),
                cpu(a) / cpu(b)
            );
        }
    }
    if let (Some(d), Some(b)) = (nginx, hits) {
        if cpu(b) > 0.0 {
            let _ = writeln!(
                out,
                "  by server CPU per request: hits {:.1} µs vs nginx cache hits {:.1} µs → capacity ratio {:.2}",
                cpu(b),
                cpu(d),
                cpu(d) / cpu(b)
            );
        }
    }
    let share = rows
        .iter()
        .filter(|r| r.connections == connections)
        .filter_map(|r| r.measured.as_ref())
        .map(|m| m.server_core_share)
        .fold(f64::MAX, f64::min);
    if share < 0.9 {
        let _ = writeln!(
            out,
            "  note: the server side got only {:.0}% of core 0 in some runs: something else was \
             using it (or the load generator was the bottleneck); compare CPU µs/req then",
            share * 100.0
        );
    }
    out
}

fn micros(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

// ---------------------------------------------------------------------------
// wrk

fn lua_long_string(s: &str) -> String {
    assert!(!s.contains("]==]"));
    format!("[==[{s}]==]")
}

fn lua_headers() -> String {
    format!(
        "wrk.headers[\"Content-Type\"] = \"text/xml; charset=utf-8\"\nwrk.headers[\"SOAPAction\"] = {}\n",
        lua_long_string(SOAP_ACTION)
    )
}

/// The same request every time.
fn fixed_script(body: &str) -> String {
    fixed_script_with(body, &[])
}

/// The same request every time, with `extra_headers` as well.
fn fixed_script_with(body: &str, extra_headers: &[(&str, &str)]) -> String {
    let mut script = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\n{}",
        lua_long_string(body),
        lua_headers()
    );
    for (name, value) in extra_headers {
        // `[ [==[` with the space: `[[` would open a Lua long string.
        let _ = writeln!(
            script,
            "wrk.headers[ {} ] = {}",
            lua_long_string(name),
            lua_long_string(value)
        );
    }
    script
}

/// A request with a part number drawn uniformly from 10 000 per request.
/// The 10 000 requests are formatted once per thread in `init` (wrk's
/// `request()` then only picks one), so that building bodies does not slow
/// the load generator down.
fn mix_script() -> String {
    let template = request_body(PART);
    let (prefix, suffix) = template.split_once(PART).expect("part number in body");
    format!(
        r#"wrk.method = "POST"
{headers}
local prefix = {prefix}
local suffix = {suffix}
local requests = {{}}
function init(args)
  math.randomseed(os.time())
  for i = 1, {n} do
    local body = prefix .. string.format("ABC-%05d", i) .. suffix
    requests[i] = wrk.format("POST", nil, nil, body)
  end
end
function request()
  return requests[math.random(1, {n})]
end
"#,
        headers = lua_headers(),
        prefix = lua_long_string(prefix),
        suffix = lua_long_string(suffix),
        n = DISTINCT_KEYS,
    )
}

fn wrk(
    settings: &Settings,
    label: &str,
    addr: SocketAddr,
    script: &Path,
    connections: u32,
    servers: &[&Server],
) -> Result<Measured, String> {
    eprintln!("  {label}: wrk -c{connections} -d{}s", settings.seconds);
    let cpu_before: Vec<u64> = servers
        .iter()
        .map(|s| tree_cpu_ticks(s.process.pid()))
        .collect();
    let wall = Instant::now();
    let out_path = settings.tmp.join("wrk.out");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("taskset")
        .args(["-c", CLIENT_CORE, "wrk", "-t1"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", settings.seconds))
        .args(["--latency", "--timeout", "5s", "-s"])
        .arg(script)
        .arg(format!("http://{addr}{PATH}"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))?;
    let mut wrk = Proc::new("wrk", child);
    let deadline = Duration::from_secs(settings.seconds + 30);
    if !wrk.wait_for_exit(deadline) {
        return Err(format!("{label}: wrk did not finish within {deadline:?}"));
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu: Vec<f64> = servers
        .iter()
        .zip(cpu_before)
        .map(|(s, before)| {
            tree_cpu_ticks(s.process.pid()).saturating_sub(before) as f64 / clock_ticks_per_second()
        })
        .collect();
    let output = std::fs::read_to_string(&out_path).map_err(|e| e.to_string())?;
    // wrk reports a script that does not load and then runs without it
    // (plain GETs): that is no measurement of the row.
    if output.contains(".lua:") {
        return Err(format!("{label}: wrk could not load its script:\n{output}"));
    }
    let mut measured = parse_wrk(&output)
        .ok_or_else(|| format!("{label}: cannot read wrk's output:\n{output}"))?;
    let requests = measured.requests.max(1) as f64;
    measured.cpu_micros_per_request = cpu.iter().map(|s| s * 1e6 / requests).collect();
    measured.server_core_share = cpu.iter().sum::<f64>() / wall;
    Ok(measured)
}

/// User + system CPU time, in clock ticks, of a process and its children
/// (nginx's worker is a child of its master).
fn tree_cpu_ticks(root: u32) -> u64 {
    let mut total = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15): fields after the
        // command name, which may hold spaces, start at field 3.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if pid != root && ppid != root {
            continue;
        }
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += ticks(11) + ticks(12);
    }
    total
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn parse_wrk(output: &str) -> Option<Measured> {
    let mut m = Measured::default();
    let mut in_distribution = false;
    let mut got = (false, false, false);
    for line in output.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if in_distribution && fields.len() == 2 {
            match fields[0] {
                "50%" => m.p50_micros = duration_micros(fields[1])?,
                "99%" => {
                    m.p99_micros = duration_micros(fields[1])?;
                    got.1 = true;
                    in_distribution = false;
                }
                _ => {}
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            m.requests_per_second = rest.trim().parse().ok()?;
            got.0 = true;
        } else if line.contains("requests in") {
            m.requests = fields.first()?.parse().ok()?;
            got.2 = true;
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            m.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            m.errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (got.0 && got.1 && got.2).then_some(m)
}

/// wrk prints `812.00us`, `1.23ms`, `2.01s`.
fn duration_micros(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "ns" => n / 1000.0,
        "us" => n,
        "ms" => n * 1000.0,
        "s" => n * 1_000_000.0,
        "m" => n * 60_000_000.0,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Processes

/// A child process, stopped when dropped (also on panic): SIGTERM, then
/// SIGKILL if it is still there after 3 s.
struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &str, child: Child) -> Proc {
        Proc {
            name: name.into(),
            child: Some(child),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until the process exits by itself; kills it after `limit`.
    fn wait_for_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("  {}: no exit 3 s after SIGTERM, killing it", self.name);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A server process and the address it answers on.
struct Server {
    addr: SocketAddr,
    process: Proc,
}

/// Starts `program args` on the server core, logs to `name.log`, and waits
/// (10 s at most) until `addr` accepts connections.
fn start_pinned(
    settings: &Settings,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    addr: SocketAddr,
) -> Result<Server, String> {
    let log_path = settings.tmp.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new("taskset");
    command
        .args(["-c", SERVER_CORE])
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {name} ({}): {e}", program.display()))?;
    let mut process = Proc::new(name, child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(Server { addr, process });
        }
        if let Some(status) = process.exited() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("{name} exited ({status}) before listening:\n{log}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not listen on {addr} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_upstream(settings: &Settings, mode: Mode, name: &str) -> Result<Server, String> {
    let port = free_port()?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    start_pinned(
        settings,
        name,
        &exe,
        &[
            "--serve-upstream".into(),
            port.to_string(),
            mode.arg().into(),
        ],
        &[],
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

struct Soapcache {
    proxy: Server,
    admin: SocketAddr,
}

/// `rust_log`: `warn` keeps the access log off; `info` is the default.
fn start_soapcache(
    settings: &Settings,
    upstream: SocketAddr,
    name: &str,
    rust_log: &str,
) -> Result<Soapcache, String> {
    start_soapcache_with(settings, upstream, name, rust_log, &[])
}

/// [`start_soapcache`] with more `soapcache serve` arguments.
fn start_soapcache_with(
    settings: &Settings,
    upstream: SocketAddr,
    name: &str,
    rust_log: &str,
    extra: &[String],
) -> Result<Soapcache, String> {
    let port = free_port()?;
    let admin_port = free_port()?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--admin".into(),
        admin.to_string(),
        "--upstream".into(),
        format!("http://{upstream}"),
    ];
    args.extend_from_slice(extra);
    let proxy = start_pinned(
        settings,
        name,
        Path::new(env!("CARGO_BIN_EXE_soapcache")),
        &args,
        &[("RUST_LOG", rust_log)],
        SocketAddr::from(([127, 0, 0, 1], port)),
    )?;
    Ok(Soapcache { proxy, admin })
}

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn start_nginx(settings: &Settings, upstream: SocketAddr, cache: bool) -> Result<Server, String> {
    let port = free_port()?;
    let name = if cache { "nginx-cache" } else { "nginx-plain" };
    let dir = settings.tmp.join(name);
    // A fresh cache each time: every round starts from a miss.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let d = dir.display();
    let cache_path = if cache {
        format!("    proxy_cache_path {d}/cache levels=1:2 keys_zone=soap:10m max_size=256m inactive=1d use_temp_path=off;\n")
    } else {
        String::new()
    };
    let cache_directives = if cache {
        r#"            proxy_cache soap;
            proxy_cache_methods POST;
            proxy_cache_key "$request_uri|$request_body";
            proxy_cache_valid 200 1d;
            proxy_cache_lock on;
            proxy_ignore_headers Cache-Control Expires;
            add_header X-Cache-Status $upstream_cache_status;
"#
    } else {
        ""
    };
    let user = if is_root() { "user root;\n" } else { "" };
    let conf = format!(
        r#"# generated by benches/load.rs
{user}worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
{cache_path}    upstream soap_upstream {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_body_buffer_size 16k;
        client_max_body_size 1m;
        location / {{
            proxy_pass http://soap_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{cache_directives}        }}
    }}
}}
"#
    );
    let conf_path = write_file(&dir, "nginx.conf", &conf)?;
    let nginx = nginx_binary().ok_or("nginx is not installed")?;
    start_pinned(
        settings,
        name,
        &nginx,
        &[
            "-p".into(),
            format!("{d}/"),
            "-e".into(),
            format!("{d}/error.log"),
            "-c".into(),
            conf_path.display().to_string(),
        ],
        &[],
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------------------
// A minimal HTTP client for warm-up requests and checks

struct Answer {
    status: u16,
    head: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<Answer, String> {
    http_with(addr, method, path, body, &[])
}

/// [`http`] with `extra_headers`.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let extra: String = extra_headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml; charset=utf-8\r\n\
         SOAPAction: {SOAP_ACTION}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {head}"))?;
    Ok(Answer {
        status,
        head: head.to_owned(),
    })
}

/// POSTs the request; requires 200 and, when given, that `X-Cache`.
fn check_status(addr: SocketAddr, body: &str, x_cache: Option<&str>) -> Result<String, String> {
    check(addr, body, &[], 200, x_cache).map(|checked| checked.x_cache)
}

/// What [`check`] saw.
struct Checked {
    status: u16,
    x_cache: String,
    cache_status: String,
}

/// POSTs the request with `extra_headers`; requires `status` and, when
/// given, that `X-Cache`.
fn check(
    addr: SocketAddr,
    body: &str,
    extra_headers: &[(&str, &str)],
    status: u16,
    x_cache: Option<&str>,
) -> Result<Checked, String> {
    let answer = http_with(addr, "POST", PATH, body, extra_headers)?;
    if answer.status != status {
        return Err(format!(
            "{addr}: HTTP {} to the warm-up request (expected {status}):\n{}",
            answer.status, answer.head
        ));
    }
    let got = answer.header("x-cache").unwrap_or("-").to_owned();
    if let Some(want) = x_cache {
        if got != want {
            return Err(format!(
                "{addr}: X-Cache {got}, expected {want}:\n{}",
                answer.head
            ));
        }
    }
    Ok(Checked {
        status: answer.status,
        x_cache: got,
        cache_status: answer.header("cache-status").unwrap_or("").to_owned(),
    })
}

fn check_header(addr: SocketAddr, body: &str, name: &str) -> Result<String, String> {
    let answer = http(addr, "POST", PATH, body)?;
    if answer.status != 200 {
        return Err(format!("{addr}: HTTP {}:\n{}", answer.status, answer.head));
    }
    Ok(answer.header(name).unwrap_or("-").to_owned())
}

/// One wrk run against soapcache (its upstream's CPU counted with it),
/// with soapcache's `/stats` read just before and just after.
struct SoapcacheRun {
    measured: Measured,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

fn run_soapcache(
    settings: &Settings,
    label: &str,
    soapcache: &Soapcache,
    upstream: &Server,
    script: &Path,
    connections: u32,
) -> Result<SoapcacheRun, String> {
    let before = stats(soapcache.admin);
    let servers = [&soapcache.proxy, upstream];
    let address = soapcache.proxy.addr;
    let measured = wrk(settings, label, address, script, connections, &servers)?;
    let after = stats(soapcache.admin);
    Ok(SoapcacheRun {
        measured,
        before,
        after,
    })
}

/// How many entries `/stats` counted.
fn entries_note(stats: &Option<serde_json::Value>) -> Option<String> {
    let entries = stats.as_ref()?.get("entries")?.as_u64()?;
    Some(format!("{entries} entries"))
}

fn stats(admin: SocketAddr) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET /stats HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    serde_json::from_str(body.trim()).ok()
}

/// Hits and misses counted by soapcache during the run.
fn stats_note(before: Option<serde_json::Value>, after: Option<serde_json::Value>) -> Vec<String> {
    let count = |v: &Option<serde_json::Value>, k: &str| {
        v.as_ref().and_then(|v| v.get(k)).and_then(|n| n.as_u64())
    };
    match (
        count(&before, "hits"),
        count(&after, "hits"),
        count(&before, "misses"),
        count(&after, "misses"),
    ) {
        (Some(h0), Some(h1), Some(m0), Some(m1)) => {
            let (h, m) = (h1 - h0, m1 - m0);
            let ratio = if h + m > 0 {
                h as f64 / (h + m) as f64
            } else {
                0.0
            };
            vec![format!("{h} hits, {m} misses (hit ratio {ratio:.3})")]
        }
        _ => vec!["no /stats".into()],
    }
}

/// A per-service `/stats` counter summed over the services.
fn service_count(stats: &Option<serde_json::Value>, key: &str) -> Option<u64> {
    let services = stats.as_ref()?.get("services")?.as_object()?;
    Some(
        services
            .values()
            .filter_map(|s| s.get(key).and_then(|n| n.as_u64()))
            .sum(),
    )
}

/// Per-service counters (`hits`, `misses`, `bypasses`, `queued`, ...)
/// summed over the services in `/stats`, counted during the run.
fn service_counts_note(
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
    keys: &[&str],
) -> String {
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let n = service_count(&after, k)?.checked_sub(service_count(&before, k)?)?;
            Some(format!("{n} {k}"))
        })
        .collect();
    if parts.is_empty() {
        "no /stats".into()
    } else {
        format!("/stats per service: {}", parts.join(", "))
    }
}

fn rss_note(server: &Server) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.process.pid()));
    let rss = status.ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    match rss {
        Some(kib) => format!("RSS {:.1} MiB", kib as f64 / 1024.0),
        None => "RSS unknown".into(),
    }
}

// ---------------------------------------------------------------------------
// Tools and the machine

fn ensure_tools() -> Result<(), String> {
    if which("taskset").is_none() {
        return Err("taskset (util-linux) is required".into());
    }
    let mut missing = Vec::new();
    if which("wrk").is_none() {
        missing.push("wrk");
    }
    if nginx_binary().is_none() {
        missing.push("nginx");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        if missing.contains(&"wrk") {
            return Err(format!(
                "wrk is not installed; install it with `apt-get install -y {}`",
                missing.join(" ")
            ));
        }
        eprintln!("nginx is not installed: the nginx rows are skipped");
        return Ok(());
    }
    println!(
        "installing {} (apt-get update && apt-get install -y {})",
        missing.join(", "),
        missing.join(" ")
    );
    let apt = |args: &[&str]| -> Result<(), String> {
        println!("  $ apt-get {}", args.join(" "));
        let child = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("apt-get: {e}"))?;
        let mut p = Proc::new("apt-get", child);
        let mut status = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Some(s) = p.exited() {
                status = Some(s);
                p.child = None;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("apt-get {} failed: {s}", args.join(" "))),
            None => Err(format!("apt-get {} took over 10 minutes", args.join(" "))),
        }
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter());
    apt(&install)?;
    if which("wrk").is_none() {
        return Err("wrk is still not installed".into());
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn tool_version(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output();
    output
        .ok()
        .and_then(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| program.to_owned())
}

fn nproc() -> String {
    std::thread::available_parallelism().map_or("?".into(), |n| n.to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn command_line() -> String {
    let mut env = String::new();
    for k in ["LOAD_SECONDS", "LOAD_CONNECTIONS", "LOAD_ROUNDS"] {
        if let Ok(v) = std::env::var(k) {
            let _ = write!(env, "{k}={v} ");
        }
    }
    format!("{env}cargo bench --bench load")
}

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v}: a whole number is required")),
        Err(_) => Ok(default),
    }
}

fn xsd_date_time(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Bytes of the `CacheControl` block soapcache cuts out of the answer.
fn control_block_len() -> usize {
    let body = response_body(Mode::Cache, PART, "2001-01-01T00:00:00Z");
    let start = body.find("<ca:CacheControl").expect("block");
    let end = body.find("</ca:CacheControl>").expect("block") + "</ca:CacheControl>".len();
    end - start
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, String> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Removes the temporary directory at the end (also on panic), unless
/// `LOAD_KEEP_TMP` is set.
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("LOAD_KEEP_TMP").is_some() {
            eprintln!("kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
