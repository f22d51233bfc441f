//! The body type on both sides of the proxy: whole bytes, a stored entry's
//! body, or a stream; and reading a requester's body under a limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Body = Either<Full<Chunk>, BoxBody<Chunk, BoxError>>;

/// A piece of a body: bytes as they came, or the tail of a shared
/// allocation from `at` on, sent as it is: a cache entry's body is sent
/// from the entry itself, so a hit neither copies its body nor allocates
/// for it, and an entry needs no `Bytes` of its own.
pub enum Chunk {
    Bytes(Bytes),
    Shared { bytes: Arc<[u8]>, at: usize },
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(bytes) => bytes.remaining(),
            Chunk::Shared { bytes, at } => bytes.len().saturating_sub(*at),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(bytes) => bytes.chunk(),
            Chunk::Shared { bytes, at } => bytes.get(*at..).unwrap_or_default(),
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Chunk::Bytes(bytes) => bytes.advance(count),
            Chunk::Shared { bytes, at } => {
                *at = at.saturating_add(count).min(bytes.len());
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self {
            Chunk::Bytes(bytes) => bytes.copy_to_bytes(len),
            Chunk::Shared { .. } => {
                let len = len.min(self.remaining());
                let bytes = Bytes::copy_from_slice(&self.chunk()[..len]);
                self.advance(len);
                bytes
            }
        }
    }
}

pub fn full(bytes: Bytes) -> Body {
    Either::Left(Full::new(Chunk::Bytes(bytes)))
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// The bytes of `bytes` from `at` on, sent from that allocation: a stored
/// entry's body, to answer a hit with.
pub fn shared((bytes, at): (Arc<[u8]>, usize)) -> Body {
    Either::Left(Full::new(Chunk::Shared { bytes, at }))
}

pub fn stream(body: Incoming) -> Body {
    Either::Right(
        body.map_frame(|frame| frame.map_data(Chunk::Bytes))
            .map_err(BoxError::from)
            .boxed(),
    )
}

/// A bound on a streamed request body.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub max: u64,
    /// How long to go on reading (and dropping) a body past `max` before
    /// giving up on it: see [`DISCARD_LIMIT`].
    pub linger: Duration,
}

/// A body of `head` followed by the rest of `rest` as it arrives. With a
/// `limit`, the whole may not exceed it: past it, what the requester still
/// sends is read and dropped ([`discard`]), then the stream ends in an
/// error and `exceeded` is set, so the caller can answer 413.
pub fn head_then(head: Bytes, rest: Incoming, limit: Option<Limit>) -> (Body, Arc<AtomicBool>) {
    struct Streaming {
        head: Option<Bytes>,
        rest: Incoming,
        total: u64,
        limit: Option<Limit>,
        exceeded: Arc<AtomicBool>,
        ended: bool,
    }
    let exceeded = Arc::new(AtomicBool::new(false));
    let start = Streaming {
        total: head.len() as u64,
        head: Some(head),
        rest,
        limit,
        exceeded: exceeded.clone(),
        ended: false,
    };
    let frames = futures_util::stream::unfold(start, |mut s| async move {
        if s.ended {
            return None;
        }
        if let Some(head) = s.head.take() {
            return Some((Ok(Frame::data(Chunk::Bytes(head))), s));
        }
        let frame = match s.rest.frame().await? {
            Ok(frame) => frame,
            Err(e) => {
                s.ended = true;
                return Some((Err(BoxError::from(e)), s));
            }
        };
        s.total += frame.data_ref().map_or(0, |d| d.len() as u64);
        if let Some(limit) = s.limit.filter(|l| s.total > l.max) {
            s.exceeded.store(true, Ordering::Relaxed);
            discard(&mut s.rest, limit.linger).await;
            s.ended = true;
            let e = BoxError::from("the request body is larger than --max-body");
            return Some((Err(e), s));
        }
        Some((Ok(frame.map_data(Chunk::Bytes)), s))
    });
    (Either::Right(StreamBody::new(frames).boxed()), exceeded)
}

/// A refused body up to this size is read and dropped before the 413 goes
/// out: answering while the requester is still sending makes the closing
/// connection reset, and the requester may never see the 413.
pub const DISCARD_LIMIT: u64 = 64 << 20;

/// Reads and drops what remains of a body, at most `DISCARD_LIMIT` bytes
/// and `timeout`; nothing is kept.
pub async fn discard(body: &mut Incoming, timeout: Duration) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DISCARD_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_body_is_read_from_its_start_in_any_steps() {
        let bytes: Arc<[u8]> = Arc::from(&b"head<answer/>"[..]);
        let mut chunk = Chunk::Shared { bytes, at: 4 };
        assert_eq!((chunk.remaining(), chunk.chunk()), (9, &b"<answer/>"[..]));
        chunk.advance(1);
        assert_eq!(chunk.copy_to_bytes(6), "answer");
        assert_eq!(chunk.chunk(), b"/>");
        // More than remains ends it, and never panics.
        assert_eq!(chunk.copy_to_bytes(100), "/>");
        chunk.advance(5);
        assert_eq!((chunk.remaining(), chunk.chunk()), (0, &b""[..]));
    }
}
