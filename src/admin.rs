//! The admin API (SPEC §8), on its own listener: health, metrics, stats,
//! purge, reload. With `--admin-token`, every path except `/healthz` needs
//! `Authorization: Bearer <token>`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::body::{full, Body};
use crate::proxy::Shared;

/// The token, kept as a BLAKE3 digest: comparing digests is constant-time
/// (blake3's `Hash` equality), so response timing does not leak the token.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
    token: Option<blake3::Hash>,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, token: Option<&str>) -> Admin {
        Admin {
            shared,
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
        let shared = &self.shared;
        match (request.method(), path) {
            (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok"),
            (&Method::GET, "/metrics") => {
                let mut response = text(StatusCode::OK, &shared.metrics.encode(&shared.store, shared.memo.size()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                response
            }
            (&Method::GET, "/stats") => json(StatusCode::OK, &shared.metrics.stats(&shared.store)),
            (&Method::DELETE, "/cache") => {
                let query = request.uri().query().unwrap_or_default();
                let param = |name: &str| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                let purged = match param("key") {
                    Some(key) => shared.store.purge(&key, param("service").as_deref(), param("operation").as_deref()),
                    None if param("service").is_some() || param("operation").is_some() => {
                        return json(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": "service and operation narrow a purge by key: give key too"}),
                        );
                    }
                    None => shared.store.flush(),
                };
                tracing::info!(purged, query, "cache purge");
                json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
            }
            (&Method::POST, "/reload") => match shared.reload() {
                Ok(summary) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true, "services": summary })),
                Err(errors) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &serde_json::json!({ "reloaded": false, "errors": errors }),
                ),
            },
            (_, "/healthz" | "/metrics" | "/stats" | "/cache" | "/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: GET /healthz, GET /metrics, GET /stats, DELETE /cache[?key=K], POST /reload\n",
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
