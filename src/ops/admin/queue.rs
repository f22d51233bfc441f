//! The queue's admin paths (reference §10): depths, and dead letters an
//! operator can read, requeue and drop.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{json, text};
use crate::delivery::{Depth, Queue, QueueError, QueueStats, Which};
use crate::http::body::{full, Body};

/// Dead letters listed at once unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;

/// Answers a queue path, or `None` for any other path.
pub async fn handle(
    queue: Option<&Arc<dyn Queue>>,
    delivered: &BTreeMap<(String, String), u64>,
    method: &Method,
    path: &str,
    query: &str,
) -> Option<Response<Body>> {
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let answer = match (method, path) {
        (&Method::GET, "/queue") => match queue {
            None => Ok(json(
                StatusCode::OK,
                &queue_json(None, &QueueStats::default(), delivered),
            )),
            Some(q) => Ok(match q.stats().await {
                Ok(stats) => json(StatusCode::OK, &queue_json(Some(&**q), &stats, delivered)),
                Err(e) => {
                    let mut body = queue_json(Some(&**q), &QueueStats::default(), delivered);
                    body["connected"] = false.into();
                    body["error"] = e.to_string().into();
                    json(StatusCode::SERVICE_UNAVAILABLE, &body)
                }
            }),
        },
        (_, "/queue") => Ok(method_not_allowed()),
        (&Method::GET, "/dead-letters") => {
            let limit = match param("limit").map(|l| l.parse::<usize>()) {
                None => DEFAULT_LIMIT,
                Some(Ok(limit)) => limit,
                Some(Err(_)) => return Some(bad_request("limit must be a number")),
            };
            match queue {
                None => Ok(json(StatusCode::OK, &serde_json::json!([]))),
                Some(q) => q
                    .dead_letters(param("service").as_deref(), limit)
                    .await
                    .map(|list| json(StatusCode::OK, &dead_letters_json(&list))),
            }
        }
        (&Method::POST, "/dead-letters/retry") => match queue {
            None => Ok(json(StatusCode::OK, &serde_json::json!({"retried": 0}))),
            Some(q) => {
                let service = param("service");
                q.retry_dead(Which::All {
                    service: service.as_deref(),
                })
                .await
                .map(|n| json(StatusCode::OK, &serde_json::json!({ "retried": n })))
            }
        },
        (_, "/dead-letters" | "/dead-letters/retry") => Ok(method_not_allowed()),
        (_, path) => {
            let rest = path.strip_prefix("/dead-letters/")?;
            let (id, retry) = match rest.strip_suffix("/retry") {
                Some(id) => (id, true),
                None => (rest, false),
            };
            let id = percent_decode(id);
            let not_found = || text(StatusCode::NOT_FOUND, "no dead letter with this id\n");
            let Some(q) = queue else {
                return Some(not_found());
            };
            match (method, retry) {
                (&Method::POST, true) => q.retry_dead(Which::One(&id)).await.map(|n| match n {
                    0 => not_found(),
                    n => json(StatusCode::OK, &serde_json::json!({ "retried": n })),
                }),
                (&Method::GET, false) => q.dead_letter(&id).await.map(|m| match m {
                    None => not_found(),
                    Some(message) => message_response(&message),
                }),
                (&Method::DELETE, false) => q.delete_dead(&id).await.map(|deleted| match deleted {
                    false => not_found(),
                    true => json(StatusCode::OK, &serde_json::json!({ "deleted": id })),
                }),
                _ => Ok(method_not_allowed()),
            }
        }
    };
    Some(answer.unwrap_or_else(|e| unavailable(&e)))
}

/// A path segment's percent-encoding undone (`+` stays `+`: this is a
/// path, not a form).
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn method_not_allowed() -> Response<Body> {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

fn bad_request(reason: &str) -> Response<Body> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": reason }),
    )
}

fn unavailable(e: &QueueError) -> Response<Body> {
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({ "error": e.to_string() }),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// The message as it was received, with its own `Content-Type`.
fn message_response(message: &crate::delivery::Message) -> Response<Body> {
    let mut response = Response::new(full(message.body.clone()));
    let content_type = message
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, value)| HeaderValue::from_bytes(value).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    if let Ok(id) = HeaderValue::from_str(&message.id) {
        response.headers_mut().insert("x-message-id", id);
    }
    response
}

fn rfc3339(at: std::time::SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn dead_letters_json(list: &[crate::delivery::DeadLetter]) -> serde_json::Value {
    list.iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id,
                "service": d.service,
                "operation": d.operation,
                "attempts": d.attempts,
                "accepted_at": rfc3339(d.accepted_at),
                "reason": d.reason,
                "last_error": d.last_error,
            })
        })
        .collect()
}

fn depth_json(d: &Depth, delivered: u64) -> serde_json::Value {
    serde_json::json!({
        "ready": d.ready,
        "in_flight": d.in_flight,
        "retrying": d.retrying,
        "dead": d.dead,
        "oldest_seconds": d.oldest_seconds,
        "delivered": delivered,
    })
}

/// `/queue` (and the `queue` of `/stats`): per service and operation, and
/// totals; `delivered` counts since start, from the metrics (the queue
/// forgets a message once delivered).
pub fn queue_json(
    queue: Option<&dyn Queue>,
    stats: &QueueStats,
    delivered: &BTreeMap<(String, String), u64>,
) -> serde_json::Value {
    let mut depths: BTreeMap<(&str, &str), Depth> = BTreeMap::new();
    for d in &stats.depths {
        depths.insert((&d.service, &d.operation), d.clone());
    }
    for (service, operation) in delivered.keys() {
        depths.entry((service, operation)).or_default();
    }
    let mut services: BTreeMap<&str, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
    let mut total = Depth::default();
    let mut total_delivered = 0;
    for ((service, operation), d) in &depths {
        let done = delivered
            .get(&(service.to_string(), operation.to_string()))
            .copied()
            .unwrap_or(0);
        services
            .entry(service)
            .or_default()
            .insert(operation.to_string(), depth_json(d, done));
        total.ready += d.ready;
        total.in_flight += d.in_flight;
        total.retrying += d.retrying;
        total.dead += d.dead;
        total.oldest_seconds = total.oldest_seconds.max(d.oldest_seconds);
        total_delivered += done;
    }
    serde_json::json!({
        "backend": queue.map_or("none", |q| q.kind()),
        "connected": queue.is_some_and(|q| q.connected()),
        "bytes": stats.bytes,
        "max_bytes": stats.max_bytes,
        "services": services,
        "totals": depth_json(&total, total_delivered),
        "dedup": {
            "records": stats.dedup_records,
            "bytes": stats.dedup_bytes,
            "evictions": stats.dedup_evictions,
        },
        "results": {
            "retained": stats.results,
            "bytes": stats.results_bytes,
            "evictions": stats.results_evictions,
        },
    })
}
