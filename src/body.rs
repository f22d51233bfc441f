//! The body type on both sides of the proxy: whole bytes, a stored entry's
//! body, or a stream; and reading a requester's body under a limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::store::Entry;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type Body = Either<Full<Chunk>, BoxBody<Chunk, BoxError>>;

/// A piece of a body: bytes as they came, or the body of a stored entry,
/// sent straight from the entry's own allocation. A hit then neither copies
/// its body nor allocates for it, and an entry needs no `Bytes` of its own
/// (see [`Entry`]).
pub enum Chunk {
    Bytes(Bytes),
    Stored { entry: Entry, sent: usize },
}

impl Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Bytes(bytes) => bytes.remaining(),
            Chunk::Stored { entry, sent } => entry.body().len().saturating_sub(*sent),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Bytes(bytes) => bytes.chunk(),
            Chunk::Stored { entry, sent } => entry.body().get(*sent..).unwrap_or_default(),
        }
    }

    fn advance(&mut self, count: usize) {
        match self {
            Chunk::Bytes(bytes) => bytes.advance(count),
            Chunk::Stored { entry, sent } => {
                *sent = sent.saturating_add(count).min(entry.body().len());
            }
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self {
            Chunk::Bytes(bytes) => bytes.copy_to_bytes(len),
            Chunk::Stored { .. } => {
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

/// A stored entry's body, to answer a hit with.
pub fn stored(entry: Entry) -> Body {
    Either::Left(Full::new(Chunk::Stored { entry, sent: 0 }))
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
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_stored_body_is_read_as_it_was_stored_in_any_steps() {
        let now = SystemTime::now();
        let entry = Entry::new(
            &[b"<answer/>"],
            None,
            now,
            now + Duration::from_secs(1),
            Duration::ZERO,
        );
        let mut chunk = Chunk::Stored { entry, sent: 0 };
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
