//! The admin API (reference §8), on its own listener: health, metrics, stats,
//! purge, reload. With `--admin-token`, every path except `/healthz` needs
//! `Authorization: Bearer <token>`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::state::State;
use crate::http::body::{full, Body};

mod queue;

/// The token, kept as a BLAKE3 digest: comparing digests is constant-time
/// (blake3's `Hash` equality), so response timing does not leak the token.
#[derive(Clone)]
pub struct Admin {
    state: Arc<State>,
    token: Option<blake3::Hash>,
}

impl Admin {
    pub fn new(state: Arc<State>, token: Option<&str>) -> Admin {
        Admin {
            state,
            token: token.map(|t| blake3::hash(t.as_bytes())),
        }
    }

    pub async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path != "/healthz" && !self.authorized(&request) {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required\n",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"soapcache\""),
            );
            return response;
        }
        let state = &self.state;
        let memory = &state.cache.memory;
        let query = request.uri().query().unwrap_or_default();
        let delivered = state.metrics.delivery.delivered();
        if let Some(answer) = queue::handle(
            state.queue.as_ref(),
            &delivered,
            request.method(),
            path,
            query,
        )
        .await
        {
            return answer;
        }
        let queue_stats = match &state.queue {
            Some(q) if matches!(path, "/metrics" | "/stats") => q.stats().await.ok(),
            _ => None,
        };
        match (request.method(), path) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/metrics") => {
                if let Some(broker) = state.queue.as_ref().and_then(|q| q.broker()) {
                    state.metrics.broker(&broker);
                }
                let mut response = text(StatusCode::OK, &state.metrics.encode(memory, state.memo.size(), queue_stats.as_ref()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/stats") => {
                let mut stats = state.metrics.stats(memory);
                let queue = queue::queue_json(state.queue.as_deref(), &queue_stats.unwrap_or_default(), &delivered);
                stats["queue"] = queue;
                stats["shared_cache"] = state.shared.as_ref().map_or_else(|| serde_json::json!({"enabled": false, "connected": false}), |s| s.stats());
                json(StatusCode::OK, &stats)
            }
            (&Method::DELETE, "/cache") => {
                let query = request.uri().query().unwrap_or_default();
                let param = |name: &str| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                let purged = match param("key") {
                    Some(key) => state.cache.purge(&key, param("service").as_deref(), param("operation").as_deref()).await,
                    None if param("service").is_some() || param("operation").is_some() => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": "service and operation narrow a purge by key: give key too"}),
                        );
                    }
                    None => state.cache.flush().await,
                };
                tracing::info!(purged, query, "cache purge");
                json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
            }
            (&Method::POST, "/reload") => match state.reload() {
                Ok(summary) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true, "services": summary })),
                Err(errors) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "reloaded": false, "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>() }),
                ),
            },
            (_, "/healthz" | "/metrics" | "/stats" | "/cache" | "/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: GET /healthz, GET /metrics, GET /stats, DELETE /cache[?key=K], POST /reload, \
GET /queue, GET /dead-letters, GET|DELETE /dead-letters/ID, POST /dead-letters/ID/retry, POST /dead-letters/retry\n",
            ),
        }
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(expected) = self.token else {
            return true;
        };
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or_default();
        blake3::hash(given.trim().as_bytes()) == expected
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
