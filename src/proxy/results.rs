//! `GET /.results/ID` (reference §12): the answer kept for a queued
//! message, `202` while it is pending, `404` when the id is unknown, its
//! retention has passed or the credentials differ, `410` when the message
//! was dead-lettered.

use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};

use super::{dedup, queued, Reply};
use crate::app::state::State;
use crate::delivery::ResultState;
use crate::http::body;
use crate::ops::metrics::CacheResult;

pub const PREFIX: &str = "/.results/";

pub(super) async fn fetch(state: &State, parts: &Parts, encoded_id: &str) -> Reply {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut reply = plain(StatusCode::METHOD_NOT_ALLOWED, "GET a result\n");
        reply
            .response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let id = percent_encoding::percent_decode_str(encoded_id).decode_utf8_lossy();
    let Some(results) = &state.results else {
        return plain(StatusCode::NOT_FOUND, "no result with this id\n");
    };
    let kept = match results.result(&id).await {
        Ok(kept) => kept,
        Err(e) => {
            tracing::warn!(message_id = %id, "result not read: {e}");
            let mut reply = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "results cannot be read now\n",
            );
            reply
                .response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from(5));
            return reply;
        }
    };
    // Another requester's result is not there for this one.
    let Some(kept) = kept.filter(|k| k.credentials == queued::poll_credentials(&parts.headers))
    else {
        return plain(StatusCode::NOT_FOUND, "no result with this id\n");
    };
    match kept.state {
        ResultState::Pending => plain(StatusCode::ACCEPTED, ""),
        ResultState::Dead => plain(
            StatusCode::GONE,
            "the message was dead-lettered: see the admin API's /dead-letters\n",
        ),
        ResultState::Done(answer) => {
            let mut reply = dedup::replay(&answer, &id);
            reply.result = CacheResult::Hit;
            reply
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut response = Response::new(body::full(bytes::Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    if !text.is_empty() {
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    let result = if status.is_success() {
        CacheResult::Hit
    } else {
        CacheResult::Error
    };
    Reply::new(response, result)
}
