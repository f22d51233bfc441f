//! Reading a requester's body under `--max-body` and `--client-timeout`:
//! whole when it is small (most SOAP requests arrive whole with their
//! head), or its first part and the rest still to come when it is large.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};

use super::body;

/// Requests larger than this are not held whole: their first part is read
/// to route them and name the operation, the rest streams to the service,
/// and they are never answered from or stored in the cache (reference §6).
pub const STREAM_THRESHOLD: usize = 1 << 20;

/// A request body: whole, or (past `STREAM_THRESHOLD`) its first part and
/// the rest still to come.
pub enum RequestBody {
    Whole(Bytes),
    Large { head: Bytes, rest: Incoming },
}

/// What of a request body there was to take at once.
pub enum BodySoFar {
    /// All of it, in one frame.
    Whole(Bytes),
    /// Not all: what was taken (if anything), for [`read`] to go on from.
    Started(Option<Bytes>),
    Failed(hyper::Error),
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the {max}-byte limit")]
    TooLarge { max: u64 },
    #[error("the request body did not arrive within {0:?}")]
    Timeout(Duration),
    #[error("could not read the request body: {0}")]
    Unreadable(#[source] hyper::Error),
}

/// Takes the body if it is all there now: one frame, ready, that completes
/// the length hyper framed it with. A repeat is then answered without
/// waiting on anything (no [`read`], no timer). hyper's own framing
/// decides what "whole" is (`Content-Length`, not chunked), not the header
/// as sent.
pub fn take_ready(body: &mut Incoming, max_body: u64) -> BodySoFar {
    let small = |len: u64| (1..=max_body.min(STREAM_THRESHOLD as u64)).contains(&len);
    if !hyper::body::Body::size_hint(body)
        .exact()
        .is_some_and(small)
    {
        return BodySoFar::Started(None);
    }
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if hyper::body::Body::is_end_stream(body) => BodySoFar::Whole(data),
            Ok(data) => BodySoFar::Started(Some(data)),
            Err(_) => BodySoFar::Started(None),
        },
        Some(Some(Err(e))) => BodySoFar::Failed(e),
        Some(None) | None => BodySoFar::Started(None),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the request body, after `first` (what [`take_ready`] took):
/// `TooLarge` past `max_body` (decided from `Content-Length` before
/// reading anything when it is given), `Timeout` when it does not arrive
/// within `timeout`. A body refused as too large is drained first (see
/// [`body::DISCARD_LIMIT`]), so that the requester sees the answer.
pub async fn read(
    mut body: Incoming,
    first: Option<Bytes>,
    headers: &HeaderMap,
    max_body: u64,
    timeout: Duration,
) -> Result<RequestBody, BodyError> {
    if let Some(len) = declared_length(headers).filter(|len| *len > max_body) {
        if len <= body::DISCARD_LIMIT {
            Box::pin(body::discard(&mut body, timeout)).await;
        }
        return Err(BodyError::TooLarge { max: max_body });
    }
    let read = async {
        // Most bodies arrive as one frame: kept as it is, not copied.
        let mut first = first;
        let mut buffer = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(BodyError::Unreadable)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match first.take() {
                None if buffer.is_empty() => first = Some(data),
                earlier => {
                    if let Some(earlier) = earlier {
                        buffer.extend_from_slice(&earlier);
                    }
                    buffer.extend_from_slice(&data);
                }
            }
            let read = first.as_ref().map_or(buffer.len(), Bytes::len);
            if read as u64 > max_body {
                Box::pin(body::discard(&mut body, timeout)).await;
                return Err(BodyError::TooLarge { max: max_body });
            }
            if read > STREAM_THRESHOLD {
                let head = first.take().unwrap_or_else(|| buffer.split().freeze());
                return Ok(RequestBody::Large { head, rest: body });
            }
        }
        Ok(RequestBody::Whole(first.unwrap_or_else(|| buffer.freeze())))
    };
    // A small body mostly arrives with the head: taken without arming a
    // timer (a clock read and a timer entry made and dropped per request).
    let mut read = std::pin::pin!(read);
    if let Some(result) = read.as_mut().now_or_never() {
        return result;
    }
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}

/// The whole of a large body: `head`, then the rest, within `max_body`
/// (`TooLarge`, the rest drained, past it) and `timeout`. For a request
/// that must be kept whole after all (a write to a queued operation).
pub async fn read_rest(
    head: Bytes,
    mut rest: Incoming,
    max_body: u64,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let read = async {
        let mut whole = bytes::BytesMut::from(&head[..]);
        while let Some(frame) = rest.frame().await {
            let frame = frame.map_err(BodyError::Unreadable)?;
            if let Ok(data) = frame.into_data() {
                whole.extend_from_slice(&data);
                if whole.len() as u64 > max_body {
                    Box::pin(body::discard(&mut rest, timeout)).await;
                    return Err(BodyError::TooLarge { max: max_body });
                }
            }
        }
        Ok(whole.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(BodyError::Timeout(timeout)),
    }
}
