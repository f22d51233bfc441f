//! The body type on both sides of the proxy: whole bytes, a stored entry's
//! body, or a stream.

use bytes::{Buf, Bytes};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

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
