//! Orders sent in bulk to a queued operation and counted where the service
//! received them: the load behind the tests that kill soapcache or its
//! broker and count that nothing answered 202 was lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Http, Seen, Upstream};

/// What each order was told.
#[derive(Default)]
pub struct Told {
    pub accepted: HashSet<String>,
    /// Answered 503 (with `Retry-After`, which the load checks).
    pub refused: HashSet<String>,
    /// No answer: the connection failed or timed out.
    pub failed: HashSet<String>,
}

/// `total` orders `R-{first + n}` from `requesters` concurrent requesters,
/// requester `r` sending `order("C-{r}", reference)` to
/// `urls[r % urls.len()]`; `on_accept` sees the running count of 202s.
/// Any answer but a 202 must be a 503 with `Retry-After`.
pub async fn send_orders(
    urls: Vec<String>,
    first: usize,
    total: usize,
    requesters: usize,
    order: fn(&str, &str) -> String,
    on_accept: impl Fn(usize) + Send + Sync + 'static,
) -> Told {
    let told = Arc::new(Mutex::new(Told::default()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let on_accept = Arc::new(on_accept);
    let mut tasks = Vec::new();
    for r in 0..requesters {
        let (told, accepted, on_accept) = (told.clone(), accepted.clone(), on_accept.clone());
        let url = urls[r % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let http = Http::default();
            for n in (r..total).step_by(requesters) {
                let reference = format!("R-{}", first + n);
                let answer = http
                    .try_send(
                        "POST",
                        &url,
                        &[("content-type", "text/xml; charset=utf-8")],
                        order(&format!("C-{r}"), &reference),
                        Duration::from_secs(15),
                    )
                    .await;
                let mut told = told.lock().unwrap();
                match answer {
                    Ok(a) if a.status == 202 => {
                        told.accepted.insert(reference);
                        drop(told);
                        on_accept(accepted.fetch_add(1, Ordering::SeqCst) + 1);
                    }
                    Ok(a) => {
                        assert_eq!(a.status, 503, "{}", a.text());
                        assert!(a.header("retry-after").is_some());
                        told.refused.insert(reference);
                    }
                    Err(_) => {
                        told.failed.insert(reference);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(told).ok().unwrap().into_inner().unwrap()
}

/// The text of the first `<…name>` element of a request the service saw.
pub fn field(seen: &Seen, name: &str) -> String {
    let text = String::from_utf8_lossy(&seen.body);
    text.split(&format!("{name}>"))
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_default()
        .to_owned()
}

/// Deliveries per `OrderRef`.
pub fn delivered(upstream: &Upstream) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for seen in upstream.seen() {
        *counts.entry(field(&seen, "OrderRef")).or_insert(0) += 1;
    }
    counts
}
