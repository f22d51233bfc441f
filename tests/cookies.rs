//! Per-user answers are never shared (reference §4.3): a `Cookie` is a
//! credential, an answer that sets a cookie is not stored, and a stored
//! answer never replays a `Set-Cookie`.

mod support;

use support::*;

/// A catalog service that opens a session with every answer.
async fn session_catalog() -> Upstream {
    Upstream::start(|seen| {
        Reply::xml(200, catalog_response(&part_of(&seen.body), &in_one_hour()))
            .header("set-cookie", "JSESSIONID=s1; Path=/; HttpOnly")
    })
    .await
}

fn policy(test: &str, rules: &str) -> ScratchFile {
    let text = format!(
        "[service]\nname = \"catalog\"\nroute = \"/\"\n\n[namespaces]\nc = \"{CATALOG}\"\n\n[[operation]]\nelement = \"c:CatalogPriceRequest\"\n{rules}\n"
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

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_sets_a_cookie_is_not_stored() {
    let upstream = session_catalog().await;
    let policy = policy("cookies-set", "");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("C-1");
    let first = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        Some("soapcache; fwd=miss; detail=set-cookie")
    );
    // Its own requester still gets the cookie.
    assert_eq!(
        first.header("set-cookie"),
        Some("JSESSIONID=s1; Path=/; HttpOnly")
    );
    let second = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(
        second.x_cache(),
        "MISS",
        "the next requester is not handed the session"
    );
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_shared_true_it_is_stored_but_a_hit_never_replays_the_cookie() {
    let upstream = session_catalog().await;
    let policy = policy("cookies-shared", "shared = true");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("C-2");
    let first = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(
        first.header("cache-status"),
        Some("soapcache; fwd=miss; stored")
    );
    assert!(first.header("set-cookie").is_some());
    let hit = http.soap(&proxy.url("/"), &request).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.header("set-cookie"), None);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_with_a_cookie_is_never_answered_from_the_cache() {
    let upstream = Upstream::catalog().await;
    let policy = policy("cookies-request", "");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("C-3");
    // An entry made for a requester without a cookie...
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "MISS");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "HIT");
    // ...is not used for one with a cookie, nor does such a request store.
    let cookie = [("cookie", "JSESSIONID=alice")];
    for _ in 0..2 {
        let answer = http.soap_with(&proxy.url("/"), &request, &cookie).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.x_cache(), "BYPASS");
        assert_eq!(
            answer.header("cache-status"),
            Some("soapcache; fwd=bypass; detail=credentials")
        );
    }
    let other = catalog_request("C-4");
    for _ in 0..2 {
        let answer = http.soap_with(&proxy.url("/"), &other, &cookie).await;
        assert_eq!(answer.x_cache(), "BYPASS");
    }
    assert_eq!(http.soap(&proxy.url("/"), &other).await.x_cache(), "MISS");
    assert_eq!(upstream.count(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn varying_by_cookie_keeps_one_entry_per_cookie() {
    let upstream = Upstream::catalog().await;
    let policy = policy("cookies-vary", "vary_headers = [\"Cookie\"]");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("C-5");
    let send = |cookie: &'static str| {
        let (http, url, request) = (http.clone(), proxy.url("/"), request.clone());
        async move {
            http.soap_with(&url, &request, &[("cookie", cookie)])
                .await
                .x_cache()
                .to_owned()
        }
    };
    assert_eq!(send("JSESSIONID=alice").await, "MISS");
    assert_eq!(send("JSESSIONID=alice").await, "HIT");
    assert_eq!(send("JSESSIONID=bob").await, "MISS");
    assert_eq!(send("JSESSIONID=bob").await, "HIT");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "MISS");
    assert_eq!(upstream.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_shared_true_a_cookie_does_not_keep_a_request_from_the_cache() {
    let upstream = Upstream::catalog().await;
    let policy = policy("cookies-request-shared", "shared = true");
    let proxy = serve(&upstream, &policy);
    let http = Http::default();
    let request = catalog_request("C-6");
    let cookie = [("cookie", "JSESSIONID=alice")];
    let first = http.soap_with(&proxy.url("/"), &request, &cookie).await;
    assert_eq!(first.x_cache(), "MISS");
    assert_eq!(http.soap(&proxy.url("/"), &request).await.x_cache(), "HIT");
    assert_eq!(upstream.count(), 1);
}
