//! A fleet of soapcache instances sharing one Redis (reference §13): one
//! cache, fleet-wide purges, one upstream request per key, and Redis
//! outages that never become outages of the proxy. Real `redis-server`
//! processes on loopback ports (tests/support/servers.rs), the real binary.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::servers::RedisServer;
use support::*;

/// A catalog service whose answers carry a serial number, so that a test
/// can tell a fresh answer from one stored before a purge.
async fn serial_catalog(delay: Duration) -> Upstream {
    let serial = Arc::new(AtomicUsize::new(0));
    Upstream::start(move |seen| {
        let n = serial.fetch_add(1, Ordering::SeqCst) + 1;
        let part = part_of(&seen.body);
        let body = if String::from_utf8_lossy(&seen.body).contains("UpdatePriceRequest") {
            format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:UpdatePriceResponse xmlns:c=\"{CATALOG}\"/></soap:Body></soap:Envelope>"
            )
        } else {
            format!(
                "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Header>{}</soap:Header><soap:Body><c:CatalogPriceResponse xmlns:c=\"{CATALOG}\"><c:PartNumber>{part}</c:PartNumber><c:Serial>{n}</c:Serial></c:CatalogPriceResponse></soap:Body></soap:Envelope>",
                control_block(&part, &in_one_hour())
            )
        };
        Reply::xml(200, body).after(delay)
    })
    .await
}

fn serial(answer: &Answer) -> String {
    let text = answer.text();
    text.split("Serial>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("none")
        .to_owned()
}

/// An instance on `redis`, in front of `upstream`, with `extra` flags.
fn instance(redis: &RedisServer, upstream: &Upstream, timeout: &str, extra: &[&str]) -> Soapcache {
    let url = redis.url();
    let upstream = upstream.url();
    let mut args = vec![
        "--upstream",
        &upstream,
        "--shared-cache",
        &url,
        "--shared-cache-timeout",
        timeout,
    ];
    args.extend_from_slice(extra);
    Soapcache::serve(&args)
}

async fn metric_of(http: &Http, proxy: &Soapcache, name: &str) -> Option<f64> {
    let text = http.admin("GET", &proxy.admin_url("/metrics")).await.text();
    metric(&text, name)
}

/// Waits until every instance says it is connected to Redis.
async fn all_connected(http: &Http, fleet: &[&Soapcache], limit: Duration) -> bool {
    for proxy in fleet {
        let up = eventually(limit, || async {
            metric_of(http, proxy, "soapcache_shared_cache_up").await == Some(1.0)
        })
        .await;
        if !up {
            return false;
        }
    }
    true
}

async fn local_entries(http: &Http, proxy: &Soapcache) -> u64 {
    json(&http.admin("GET", &proxy.admin_url("/stats")).await)["entries"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_on_one_instance_is_a_hit_on_the_others_with_its_age() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::ZERO).await;
    let (a, b, c) = (
        instance(&redis, &upstream, "500ms", &[]),
        instance(&redis, &upstream, "500ms", &[]),
        instance(&redis, &upstream, "500ms", &[]),
    );
    let http = Http::default();
    assert!(all_connected(&http, &[&a, &b, &c], Duration::from_secs(10)).await);

    let request = catalog_request("P-1");
    let first = http.soap(&a.url("/"), &request).await;
    assert_eq!(first.x_cache(), "MISS");
    let stored = Instant::now();
    let on_b = http.soap(&b.url("/"), &request).await;
    assert_eq!(on_b.x_cache(), "HIT");
    assert_eq!(
        on_b.header("cache-status"),
        Some("soapcache; hit; detail=shared")
    );
    assert_eq!(on_b.body, first.body, "the same bytes as A answered");
    // Then from B's own memory.
    let again = http.soap(&b.url("/"), &request).await;
    assert_eq!(again.header("cache-status"), Some("soapcache; hit"));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let on_c = http.soap(&c.url("/"), &request).await;
    assert_eq!(on_c.x_cache(), "HIT");
    let age: u64 = on_c.header("age").unwrap().parse().unwrap();
    let since = stored.elapsed().as_secs();
    assert!(age >= 2 && age <= since, "Age {age}, stored {since} s ago");
    assert_eq!(upstream.count(), 1, "one upstream request in all");
    assert_eq!(
        metric_of(&http, &c, "soapcache_shared_cache_hits_total").await,
        Some(1.0)
    );
}

/// Purge by key, flush, and `[[invalidate]]`: asked of one instance, the
/// others stop answering the old entry, within a measured delay; a
/// repeat of byte-identical bodies (the memo's shortcut) included.
#[tokio::test(flavor = "multi_thread")]
async fn purge_flush_and_invalidate_on_one_instance_reach_every_instance() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::ZERO).await;
    let policy = ScratchFile::new(
        "fleet-invalidate",
        "catalog.toml",
        "[service]\nname = \"catalog\"\nroute = \"/\"\n\n[namespaces]\nc = \"http://example.org/2001/06/catalog\"\n\n[[operation]]\nelement = \"c:CatalogPriceRequest\"\nkey = [\"string(c:PartNumber)\"]\nttl = \"1h\"\n\n[[invalidate]]\nelement = \"c:UpdatePriceRequest\"\nkey = [\"string(c:PartNumber)\"]\ntargets = [\"c:CatalogPriceRequest\"]\n",
    );
    let extra = ["--policies", policy.path_str()];
    let fleet = [
        instance(&redis, &upstream, "500ms", &extra),
        instance(&redis, &upstream, "500ms", &extra),
        instance(&redis, &upstream, "500ms", &extra),
    ];
    let [a, b, c] = &fleet;
    let http = Http::default();
    assert!(all_connected(&http, &[a, b, c], Duration::from_secs(10)).await);
    let request = catalog_request("P-7");

    let update = format!(
        "<soap:Envelope xmlns:soap=\"{SOAP11}\"><soap:Body><c:UpdatePriceRequest xmlns:c=\"{CATALOG}\"><c:PartNumber>P-7</c:PartNumber></c:UpdatePriceRequest></soap:Body></soap:Envelope>"
    );
    let purges: [(&str, &Soapcache); 3] = [("purge", b), ("flush", b), ("invalidate", c)];
    for (what, through) in purges {
        // Every instance holds the entry, and has answered it often
        // enough from memory for the memo to take its shortcut.
        let stored = http.soap(&a.url("/"), &request).await;
        let old = serial(&stored);
        for proxy in [a, b, c] {
            for _ in 0..3 {
                let answer = http.soap(&proxy.url("/"), &request).await;
                assert_eq!(answer.x_cache(), "HIT", "{what}");
                assert_eq!(serial(&answer), old, "{what}");
            }
        }
        let asked = Instant::now();
        let answer = match what {
            "purge" => {
                http.admin("DELETE", &through.admin_url("/cache?key=P-7"))
                    .await
            }
            "flush" => http.admin("DELETE", &through.admin_url("/cache")).await,
            _ => http.soap(&through.url("/"), &update).await,
        };
        assert_eq!(answer.status, 200, "{what}: {}", answer.text());
        // Each instance drops its copy: measured, bounded.
        for proxy in [a, c] {
            let gone = eventually(Duration::from_secs(5), || async {
                local_entries(&http, proxy).await == 0
            })
            .await;
            assert!(gone, "{what}: an instance kept its copy");
        }
        println!(
            "fleet: {what} through one instance reached the others in {:.1} ms",
            asked.elapsed().as_secs_f64() * 1000.0
        );
        let before = upstream.count();
        let on_a = http.soap(&a.url("/"), &request).await;
        assert_eq!(on_a.x_cache(), "MISS", "{what}: A answers MISS next");
        assert_ne!(serial(&on_a), old, "{what}");
        let on_c = http.soap(&c.url("/"), &request).await;
        assert_ne!(serial(&on_c), old, "{what}: C never serves the old entry");
        assert_eq!(serial(&on_c), serial(&on_a), "{what}: C shares A's new one");
        assert_eq!(upstream.count(), before + 1, "{what}");
        // The next round starts from nothing.
        http.admin("DELETE", &a.admin_url("/cache")).await;
        for proxy in [a, b, c] {
            assert!(
                eventually(Duration::from_secs(5), || async {
                    local_entries(&http, proxy).await == 0
                })
                .await
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_concurrent_misses_over_three_instances_send_one_request() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::from_millis(300)).await;
    let fleet = [
        instance(&redis, &upstream, "500ms", &[]),
        instance(&redis, &upstream, "500ms", &[]),
        instance(&redis, &upstream, "500ms", &[]),
    ];
    let http = Http::default();
    assert!(
        all_connected(
            &http,
            &[&fleet[0], &fleet[1], &fleet[2]],
            Duration::from_secs(10)
        )
        .await
    );
    let urls: Vec<String> = fleet.iter().map(|p| p.url("/")).collect();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (http, url) = (http.clone(), urls[i % 3].clone());
        set.spawn(async move { http.soap(&url, &catalog_request("SAME-1")).await });
    }
    let mut serials = std::collections::BTreeSet::new();
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    while let Some(answer) = set.join_next().await {
        let answer = answer.unwrap();
        assert_eq!(answer.status, 200);
        serials.insert(serial(&answer));
        *by_status
            .entry(answer.header("cache-status").unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    println!("fleet: 30 concurrent misses answered as {by_status:?}");
    assert_eq!(upstream.count(), 1, "{by_status:?}");
    assert_eq!(serials.len(), 1);
}

/// Redis killed with SIGKILL under load: no request fails, hits from the
/// local tier go on, errors are counted and logged once; Redis back (empty):
/// instances reconnect, flush their local tier, and share again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_load_costs_no_request_and_the_fleet_shares_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::ZERO).await;
    let (a, b) = (
        instance(&redis, &upstream, "200ms", &[]),
        instance(&redis, &upstream, "200ms", &[]),
    );
    let http = Http::default();
    assert!(all_connected(&http, &[&a, &b], Duration::from_secs(10)).await);
    // Warm: parts 0..10 in A's and B's memory.
    for i in 0..10 {
        let request = catalog_request(&format!("W-{i}"));
        http.soap(&a.url("/"), &request).await;
        assert_eq!(http.soap(&b.url("/"), &request).await.x_cache(), "HIT");
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (http, stop) = (http.clone(), stop.clone());
        let urls = [a.url("/"), b.url("/")];
        load.spawn(async move {
            let (mut ok, mut failed, mut hits) = (0, Vec::new(), 0);
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                // Mostly warm parts, some new ones (local misses).
                let part = if n % 4 == 0 {
                    format!("N-{worker}-{n}")
                } else {
                    format!("W-{}", n % 10)
                };
                let url = &urls[n % 2];
                let headers = [
                    ("content-type", "text/xml; charset=utf-8"),
                    ("soapaction", "\"\""),
                ];
                match http
                    .try_send(
                        "POST",
                        url,
                        &headers,
                        catalog_request(&part),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(answer) if answer.status == 200 => {
                        ok += 1;
                        if answer.x_cache() == "HIT" {
                            hits += 1;
                        }
                    }
                    Ok(answer) => failed.push(format!("{part}: {}", answer.status)),
                    Err(e) => failed.push(format!("{part}: {e}")),
                }
            }
            (ok, failed, hits)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(done) = load.join_next().await {
        let (o, f, _) = done.unwrap();
        ok += o;
        failed.extend(f);
    }
    println!(
        "fleet: {ok} requests answered around the kill, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");

    // After the kill: hits from the local tier, counted errors, down.
    for proxy in [&a, &b] {
        let answer = http.soap(&proxy.url("/"), &catalog_request("W-3")).await;
        assert_eq!(answer.x_cache(), "HIT");
        assert!(metric_of(&http, proxy, "soapcache_shared_cache_errors_total").await >= Some(1.0));
        assert_eq!(
            metric_of(&http, proxy, "soapcache_shared_cache_up").await,
            Some(0.0)
        );
        let new = http.soap(&proxy.url("/"), &catalog_request("DOWN-1")).await;
        assert_eq!(new.status, 200, "a miss with Redis gone goes upstream");
    }
    println!(
        "fleet: Redis down for {:.1} s so far",
        killed.elapsed().as_secs_f64()
    );

    redis.restart();
    assert!(all_connected(&http, &[&a, &b], Duration::from_secs(15)).await);
    for proxy in [&a, &b] {
        let lines: Vec<String> = proxy
            .logs()
            .into_iter()
            .filter(|l| l.contains("shared cache unreachable"))
            .collect();
        assert_eq!(lines.len(), 1, "one line per change of state: {lines:#?}");
        assert_eq!(
            local_entries(&http, proxy).await,
            0,
            "the local tier is flushed on resubscribing"
        );
    }
    let request = catalog_request("AFTER-1");
    assert_eq!(http.soap(&a.url("/"), &request).await.x_cache(), "MISS");
    let on_b = http.soap(&b.url("/"), &request).await;
    assert_eq!(
        on_b.header("cache-status"),
        Some("soapcache; hit; detail=shared")
    );
}

/// A Redis that accepts connections and answers nothing (SIGSTOP): requests
/// wait at most about the timeout on it, nothing hangs, and once it
/// answers again the instance is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_delays_a_request_by_at_most_the_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::ZERO).await;
    let a = instance(&redis, &upstream, "200ms", &[]);
    let http = Http::default();
    assert!(all_connected(&http, &[&a], Duration::from_secs(10)).await);
    http.soap(&a.url("/"), &catalog_request("HOT")).await;

    redis.pause();
    let mut slowest = Duration::ZERO;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (http, url) = (http.clone(), a.url("/"));
        set.spawn(async move {
            let started = Instant::now();
            let headers = [
                ("content-type", "text/xml; charset=utf-8"),
                ("soapaction", "\"\""),
            ];
            let answer = http
                .try_send(
                    "POST",
                    &url,
                    &headers,
                    catalog_request(&format!("S-{i}")),
                    Duration::from_secs(10),
                )
                .await;
            (answer, started.elapsed())
        });
    }
    while let Some(done) = set.join_next().await {
        let (answer, took) = done.unwrap();
        let answer = answer.expect("answered while Redis is stopped");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.x_cache(), "MISS");
        slowest = slowest.max(took);
    }
    let hot = http.soap(&a.url("/"), &catalog_request("HOT")).await;
    assert_eq!(
        hot.x_cache(),
        "HIT",
        "the local tier answers with Redis stopped"
    );
    println!(
        "fleet: 20 misses with Redis stopped, slowest {:.0} ms (timeout 200 ms)",
        slowest.as_secs_f64() * 1000.0
    );
    // The bound is the timeout; the margin is for a loaded machine.
    assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    assert_eq!(
        metric_of(&http, &a, "soapcache_shared_cache_up").await,
        Some(0.0)
    );

    redis.resume();
    assert!(all_connected(&http, &[&a], Duration::from_secs(15)).await);
    // Its subscription stayed open throughout: nothing published was
    // missed, so the local tier was kept.
    let hot = http.soap(&a.url("/"), &catalog_request("HOT")).await;
    assert_eq!(hot.header("cache-status"), Some("soapcache; hit"));
    let lines = a
        .logs()
        .into_iter()
        .filter(|l| l.contains("shared cache unreachable"))
        .count();
    assert_eq!(lines, 1, "one line per change of state");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_redis_at_startup_does_not_stop_serving() {
    let upstream = serial_catalog(Duration::ZERO).await;
    let port = free_addr().port().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let a = Soapcache::serve(&["--upstream", &upstream.url(), "--shared-cache", &url]);
    let http = Http::default();
    let down = eventually(Duration::from_secs(10), || async {
        metric_of(&http, &a, "soapcache_shared_cache_up").await == Some(0.0)
    })
    .await;
    assert!(down);
    let request = catalog_request("P-1");
    assert_eq!(http.soap(&a.url("/"), &request).await.x_cache(), "MISS");
    assert_eq!(http.soap(&a.url("/"), &request).await.x_cache(), "HIT");
    let stats = json(&http.admin("GET", &a.admin_url("/stats")).await);
    assert_eq!(stats["shared_cache"]["connected"], false);
    // A bad URL is refused at startup with one clear line.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_soapcache"))
        .args([
            "serve",
            "--upstream",
            &upstream.url(),
            "--shared-cache",
            "http://x",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("redis://"));
}

/// A purge asked while Redis answers nothing is applied where it was asked
/// at once, and on every other instance once Redis answers again: never
/// lost, only late.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_asked_while_redis_is_stopped_reaches_the_fleet_when_it_is_back() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = serial_catalog(Duration::ZERO).await;
    let (a, b) = (
        instance(&redis, &upstream, "200ms", &[]),
        instance(&redis, &upstream, "200ms", &[]),
    );
    let http = Http::default();
    assert!(all_connected(&http, &[&a, &b], Duration::from_secs(10)).await);
    let request = catalog_request("P-9");
    let old = serial(&http.soap(&a.url("/"), &request).await);
    assert_eq!(serial(&http.soap(&b.url("/"), &request).await), old);

    redis.pause();
    let purged = http.admin("DELETE", &b.admin_url("/cache?key=P-9")).await;
    assert_eq!(purged.status, 200);
    let on_b = http.soap(&b.url("/"), &request).await;
    assert_ne!(serial(&on_b), old, "purged where it was asked");
    let stats = json(&http.admin("GET", &b.admin_url("/stats")).await);
    assert_eq!(stats["shared_cache"]["pending_invalidations"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();

    let reached = eventually(Duration::from_secs(15), || async {
        local_entries(&http, &a).await == 0
    })
    .await;
    assert!(reached, "the kept purge never reached A");
    assert_ne!(serial(&http.soap(&a.url("/"), &request).await), old);
    let stats = json(&http.admin("GET", &b.admin_url("/stats")).await);
    assert_eq!(stats["shared_cache"]["pending_invalidations"], 0);
}

/// Redis may evict keys under `maxmemory`: an entry whose index (what a
/// purge finds entries by) went is not served, so no purge can miss it.
#[tokio::test(flavor = "multi_thread")]
async fn an_entry_whose_purge_index_was_evicted_is_not_served() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    if !support::servers::require("redis-cli", "redis-tools") {
        return;
    }
    let upstream = serial_catalog(Duration::ZERO).await;
    let (a, b) = (
        instance(&redis, &upstream, "500ms", &[]),
        instance(&redis, &upstream, "500ms", &[]),
    );
    let http = Http::default();
    assert!(all_connected(&http, &[&a, &b], Duration::from_secs(10)).await);
    let (one, two) = (catalog_request("E-1"), catalog_request("E-2"));
    http.soap(&a.url("/"), &one).await;
    http.soap(&a.url("/"), &two).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let indexes = cli(&["--scan", "--pattern", "soapcache:i:*"]);
    let indexes: Vec<&str> = indexes.lines().collect();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    // E-1's index, found by its member's entry: drop the first one.
    cli(&["DEL", indexes[0]]);
    let answers = [
        http.soap(&b.url("/"), &one).await,
        http.soap(&b.url("/"), &two).await,
    ];
    let shared = answers
        .iter()
        .filter(|a| a.header("cache-status") == Some("soapcache; hit; detail=shared"))
        .count();
    assert_eq!(
        shared, 1,
        "the entry without its index is a miss, the other a hit"
    );
}
