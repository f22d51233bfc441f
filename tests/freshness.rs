//! `stale_while_revalidate` (reference §5.5): right after expiry, requesters
//! are answered from the expired entry at once while one background request
//! refreshes it; a failed refresh leaves the entry; past the window nothing
//! stale is served.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// Entries live 1 s (the policy's `ttl`; the service's one-hour `Expires`
/// is not honoured), then may answer stale for `window` more.
fn policy(test: &str, window: &str) -> ScratchFile {
    let text = format!(
        "[service]\nname = \"catalog\"\nroute = \"/\"\n\n[namespaces]\nc = \"{CATALOG}\"\n\n[defaults]\nhonor_cache_control = false\n\n[[operation]]\nelement = \"c:CatalogPriceRequest\"\nttl = \"1s\"\nstale_while_revalidate = \"{window}\"\n"
    );
    ScratchFile::new(test, "catalog.toml", &text)
}

fn serve(upstream: &Upstream, policy: &ScratchFile) -> Soapcache {
    Soapcache::serve(&[
        "--upstream",
        &upstream.url(),
        "--policies",
        policy.path_str(),
    ])
}

const REVALIDATING: &str = "soapcache; hit; detail=revalidating";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requesters_right_after_expiry_are_answered_stale_while_one_request_refreshes() {
    let upstream = Upstream::slow_catalog(Duration::from_millis(300)).await;
    let policy = policy("swr-20", "30s");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("S-1");
    let first = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(
        first.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let answers = futures_util::future::join_all((0..20).map(|_| {
        let (http, url, request) = (http.clone(), proxy.url("/"), request.clone());
        async move { http.soap(&url, &request).await }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.x_cache(), "STALE");
        assert_eq!(answer.header("cache-status"), Some(REVALIDATING));
        assert_eq!(part_of(&answer.body), "S-1");
        assert!(answer.header("age").is_some());
    }
    // One refresh, and once it is stored the next request is a fresh hit
    // (requests in the meantime are answered stale and start no other).
    assert!(
        eventually(Duration::from_secs(10), || async {
            http.soap(&proxy.url("/"), &request).await.x_cache() == "HIT"
        })
        .await,
        "the refreshed entry answers"
    );
    assert_eq!(upstream.count(), 2, "one request refreshed the entry");
    let hit = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(hit.header("cache-status"), Some("soapcache; hit"));
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_leaves_the_entry_and_nothing_stale_is_served_past_the_window() {
    // The first answer is cacheable; every later one is a 503 that is not a
    // SOAP fault.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_calls = calls.clone();
    let upstream = Upstream::start(move |seen| {
        if seen_calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::xml(200, catalog_response(&part_of(&seen.body), &in_one_hour()))
        } else {
            Reply::xml(503, "service restarting").header("content-type", "text/plain")
        }
    })
    .await;
    let policy = policy("swr-fail", "3s");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("S-2");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "MISS");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let stale = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(stale.header("cache-status"), Some(REVALIDATING));
    assert!(
        eventually(Duration::from_secs(2), || async {
            upstream.answered() >= 2
        })
        .await,
        "the refresh reached the service"
    );
    // The refresh failed: the entry still answers, and asks again.
    assert!(
        eventually(Duration::from_secs(2), || async {
            let again = http.soap(&proxy.url("/"), &request).await;
            assert_eq!(again.x_cache(), "STALE", "{}", again.text());
            assert_eq!(part_of(&again.body), "S-2");
            upstream.count() >= 3
        })
        .await,
        "another refresh after the failed one"
    );
    // Past expiry + 3 s, the entry answers no one.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let past = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(past.status, 503, "{}", past.text());
    assert_ne!(past.x_cache(), "STALE");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_window_an_expired_entry_is_a_miss() {
    let upstream = Upstream::catalog().await;
    let policy = policy("swr-off", "0s");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("S-3");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "MISS");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "HIT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(expired.x_cache(), "MISS");
    assert_eq!(upstream.count(), 2);
}
