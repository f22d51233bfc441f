//! A stored answer, in the form every cache tier holds: one allocation of
//! bytes that mean the same in any process (a format version, the times,
//! the `Content-Type`, the stripped body), so that an entry can be kept in
//! memory, written to a shared tier and read back by another instance.
//!
//! The body is sent from the entry's own allocation on a hit
//! ([`Entry::shared_body`]): no copy, no allocation of its own.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderValue;

pub use crate::soap::addressing::AddressingPart;

/// The layout written by this build. An entry of another version is never
/// read ([`Entry::from_bytes`]): a fleet in the middle of an upgrade treats
/// the other version's entries as misses.
pub const FORMAT: u8 = 1;

// The head, all integers little-endian:
const VERSION: usize = 0;
/// Unix milliseconds.
const STORED_AT: usize = 1;
/// Unix milliseconds.
const EXPIRES_AT: usize = 9;
/// Whole seconds after expiry the entry may answer when the upstream fails.
const STALE_IF_ERROR: usize = 17;
/// Whole seconds after expiry the entry may answer while it is refreshed.
const STALE_WHILE_REVALIDATE: usize = 21;
/// The `Content-Type` length (u16), `NO_CONTENT_TYPE` for none; the value
/// follows the head, then the WS-Addressing ranges, then the body.
const CONTENT_TYPE_LEN: usize = 25;
/// How many WS-Addressing ranges follow the `Content-Type` (u8), each a
/// kind byte and two u32 offsets into the body.
const ADDRESSING_COUNT: usize = 27;
const HEAD: usize = 28;
const RANGE_LEN: usize = 9;
const NO_CONTENT_TYPE: u16 = u16::MAX;

/// When an entry was stored and how long it may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub stored_at: SystemTime,
    pub expires_at: SystemTime,
    /// After expiry, how long it may still answer when the upstream fails.
    pub stale_if_error: Duration,
    /// After expiry, how long it may still answer while one request
    /// refreshes it.
    pub stale_while_revalidate: Duration,
}

/// Why bytes from elsewhere (a shared tier) are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry format {found}, this build reads format {FORMAT}")]
    Version { found: u8 },
    #[error("entry truncated: {len} bytes")]
    Truncated { len: usize },
}

#[derive(Debug, Clone)]
pub struct Entry(Arc<[u8]>);

/// `Content-Type` values entries have in common, each kept once for the
/// life of the process, so that a hit copies a static value (no count to
/// bump, no allocation) instead of making one from the entry's bytes.
/// Bounded, so leaking them is too. Entries hold the value itself: this
/// table is only where a hit finds it ready-made.
static CONTENT_TYPES: [OnceLock<HeaderValue>; 32] = [const { OnceLock::new() }; 32];

/// Only short values without a multipart boundary (one per message) are
/// worth a slot.
fn intern(value: &HeaderValue) {
    let bytes = value.as_bytes();
    let boundary = bytes
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"boundary="));
    if bytes.len() > 256 || boundary {
        return;
    }
    let leaked = || {
        let bytes: &'static [u8] = Box::leak(Box::from(bytes));
        HeaderValue::from_maybe_shared(Bytes::from_static(bytes))
            .unwrap_or_else(|_| crate::http::headers::owned(value))
    };
    let _ = CONTENT_TYPES
        .iter()
        .any(|slot| slot.get_or_init(leaked) == value);
}

fn interned(bytes: &[u8]) -> Option<HeaderValue> {
    CONTENT_TYPES
        .iter()
        .map_while(OnceLock::get)
        .find(|value| value.as_bytes() == bytes)
        .cloned()
}

impl Entry {
    /// An entry of `body` (the pieces joined). Times past what the head
    /// holds are shortened to it (stale windows past 136 years).
    pub fn new(body: &[&[u8]], content_type: Option<&HeaderValue>, times: Times) -> Entry {
        Entry::with_addressing(body, content_type, times, &[])
    }

    /// [`Entry::new`], with the ranges of the body's WS-Addressing parts
    /// (at most 255; offsets into the joined body).
    pub fn with_addressing(
        body: &[&[u8]],
        content_type: Option<&HeaderValue>,
        times: Times,
        addressing: &[(AddressingPart, std::ops::Range<usize>)],
    ) -> Entry {
        let mut head = [0u8; HEAD];
        head[VERSION] = FORMAT;
        head[STORED_AT..EXPIRES_AT].copy_from_slice(&unix_millis(times.stored_at).to_le_bytes());
        head[EXPIRES_AT..STALE_IF_ERROR]
            .copy_from_slice(&unix_millis(times.expires_at).to_le_bytes());
        let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).to_le_bytes();
        head[STALE_IF_ERROR..STALE_WHILE_REVALIDATE]
            .copy_from_slice(&seconds(times.stale_if_error));
        head[STALE_WHILE_REVALIDATE..CONTENT_TYPE_LEN]
            .copy_from_slice(&seconds(times.stale_while_revalidate));
        // A value longer than the length field holds is not kept: no real
        // Content-Type is 64 KiB long, and the head's 64 KiB limit bounds it.
        let content_type = content_type.filter(|v| v.len() < usize::from(NO_CONTENT_TYPE));
        let value = match content_type {
            Some(value) => {
                intern(value);
                let len = u16::try_from(value.len()).unwrap_or(NO_CONTENT_TYPE);
                head[CONTENT_TYPE_LEN..ADDRESSING_COUNT].copy_from_slice(&len.to_le_bytes());
                value.as_bytes()
            }
            None => {
                head[CONTENT_TYPE_LEN..ADDRESSING_COUNT]
                    .copy_from_slice(&NO_CONTENT_TYPE.to_le_bytes());
                &[]
            }
        };
        let mut ranges = Vec::with_capacity(addressing.len() * RANGE_LEN);
        let offset = |at: usize| u32::try_from(at).unwrap_or(u32::MAX).to_le_bytes();
        for (part, range) in addressing.iter().take(usize::from(u8::MAX)) {
            ranges.push(*part as u8);
            ranges.extend_from_slice(&offset(range.start));
            ranges.extend_from_slice(&offset(range.end));
        }
        head[ADDRESSING_COUNT] = u8::try_from(ranges.len() / RANGE_LEN).unwrap_or(u8::MAX);
        let pieces = [&head[..], value, &ranges[..]]
            .into_iter()
            .chain(body.iter().copied());
        Entry(join(pieces))
    }

    /// An entry read back from its bytes ([`Entry::as_bytes`]), as another
    /// instance wrote them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Entry, EntryError> {
        let truncated = EntryError::Truncated { len: bytes.len() };
        let version = *bytes.first().ok_or(truncated.clone())?;
        if version != FORMAT {
            return Err(EntryError::Version { found: version });
        }
        let entry = Entry(Arc::from(bytes));
        if bytes.len() < HEAD || entry.body_start() > bytes.len() {
            return Err(truncated);
        }
        Ok(entry)
    }

    /// The entry as it is stored: what [`Entry::from_bytes`] reads.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The response body, as it is sent.
    pub fn body(&self) -> &[u8] {
        self.0.get(self.body_start()..).unwrap_or_default()
    }

    /// The entry's allocation and where its body starts in it, for sending
    /// the body without a copy.
    pub fn shared_body(&self) -> (Arc<[u8]>, usize) {
        (self.0.clone(), self.body_start())
    }

    /// The service's `Content-Type`, if it sent one.
    pub fn content_type(&self) -> Option<HeaderValue> {
        let value = self.0.get(HEAD..self.addressing_start())?;
        if self.content_type_len() == NO_CONTENT_TYPE {
            return None;
        }
        interned(value).or_else(|| HeaderValue::from_bytes(value).ok())
    }

    fn content_type_len(&self) -> u16 {
        let mut len = [0u8; 2];
        if let Some(bytes) = self.0.get(CONTENT_TYPE_LEN..ADDRESSING_COUNT) {
            len.copy_from_slice(bytes);
        }
        u16::from_le_bytes(len)
    }

    fn addressing_start(&self) -> usize {
        match self.content_type_len() {
            NO_CONTENT_TYPE => HEAD,
            len => HEAD + usize::from(len),
        }
    }

    fn addressing_count(&self) -> usize {
        usize::from(self.0.get(ADDRESSING_COUNT).copied().unwrap_or(0))
    }

    fn body_start(&self) -> usize {
        self.addressing_start() + self.addressing_count() * RANGE_LEN
    }

    /// Whether a hit must rewrite the body's WS-Addressing parts.
    pub fn has_addressing(&self) -> bool {
        self.addressing_count() > 0
    }

    /// The body's WS-Addressing parts, in the order they were given (by
    /// position); ranges that do not fit the body are left out.
    pub fn addressing(
        &self,
    ) -> impl Iterator<Item = (AddressingPart, std::ops::Range<usize>)> + Clone + '_ {
        let start = self.addressing_start();
        let body_len = self.body().len();
        (0..self.addressing_count()).filter_map(move |i| {
            let at = start + i * RANGE_LEN;
            let part = AddressingPart::from_byte(*self.0.get(at)?)?;
            let from = usize::try_from(self.word::<4>(at + 1)).ok()?;
            let to = usize::try_from(self.word::<4>(at + 5)).ok()?;
            (from <= to && to <= body_len).then_some((part, from..to))
        })
    }

    /// The little-endian integer of `N` bytes at `at` in the head.
    fn word<const N: usize>(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        if let Some(bytes) = self.0.get(at..at + N) {
            word[..N].copy_from_slice(bytes);
        }
        u64::from_le_bytes(word)
    }

    fn stored_at_millis(&self) -> u64 {
        self.word::<8>(STORED_AT)
    }

    pub fn expires_at_millis(&self) -> u64 {
        self.word::<8>(EXPIRES_AT)
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.expires_at_millis()
    }

    /// May answer a request whose upstream failed (`stale_if_error`).
    pub fn is_usable_stale(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.window_end(STALE_IF_ERROR)
    }

    /// May answer at once while one request refreshes it
    /// (`stale_while_revalidate`).
    pub fn is_revalidatable(&self, now: SystemTime) -> bool {
        unix_millis(now) < self.window_end(STALE_WHILE_REVALIDATE)
    }

    /// When the entry may no longer answer any request (Unix milliseconds):
    /// past it, tiers drop it.
    pub fn stale_until_millis(&self) -> u64 {
        self.window_end(STALE_IF_ERROR)
            .max(self.window_end(STALE_WHILE_REVALIDATE))
    }

    fn window_end(&self, window: usize) -> u64 {
        let seconds = self.word::<4>(window);
        self.expires_at_millis()
            .saturating_add(seconds.saturating_mul(1000))
    }

    /// Whole seconds since the entry was stored, for the `Age` header.
    pub fn age(&self, now: SystemTime) -> u64 {
        unix_millis(now).saturating_sub(self.stored_at_millis()) / 1000
    }

    /// Bytes the entry holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The allocation, held weakly (see `memory::EntryHint`).
    pub(super) fn downgrade(&self) -> std::sync::Weak<[u8]> {
        Arc::downgrade(&self.0)
    }

    pub(super) fn upgrade(weak: &std::sync::Weak<[u8]>) -> Option<Entry> {
        weak.upgrade().map(Entry)
    }
}

/// The pieces in one allocation, made at its final size and filled in
/// place: no temporary buffer, no second copy.
fn join<'a>(pieces: impl Iterator<Item = &'a [u8]> + Clone) -> Arc<[u8]> {
    let len = pieces.clone().map(<[u8]>::len).sum();
    let mut bytes: Arc<[u8]> = std::iter::repeat_n(0, len).collect();
    if let Some(out) = Arc::get_mut(&mut bytes) {
        let mut at = 0;
        for piece in pieces {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        }
    }
    bytes
}

/// Milliseconds since the Unix epoch; 0 for earlier times, `u64::MAX` for
/// those too far ahead to count.
pub fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(stored_at: SystemTime, expires_at: SystemTime) -> Times {
        Times {
            stored_at,
            expires_at,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        }
    }

    #[test]
    fn an_entry_keeps_its_times_to_the_millisecond() {
        let stored = UNIX_EPOCH + Duration::from_millis(1_764_000_000_123);
        let expires = stored + Duration::from_millis(1_500);
        let entry = Entry::new(
            &[],
            None,
            Times {
                stale_if_error: Duration::from_secs(7),
                stale_while_revalidate: Duration::from_secs(3),
                ..times(stored, expires)
            },
        );
        let at = |ms: u64| stored + Duration::from_millis(ms);
        assert!(entry.is_fresh(at(1_499)) && !entry.is_fresh(at(1_500)));
        assert!(entry.is_usable_stale(at(8_499)) && !entry.is_usable_stale(at(8_500)));
        assert!(entry.is_revalidatable(at(4_499)) && !entry.is_revalidatable(at(4_500)));
        assert_eq!(entry.stale_until_millis(), unix_millis(at(8_500)));
        assert_eq!((entry.age(at(999)), entry.age(at(1_000))), (0, 1));
        // Year 3000 and a century's stale window fit.
        let far = UNIX_EPOCH + Duration::from_secs(32_503_680_000);
        let century = Duration::from_secs(3_155_760_000);
        let entry = Entry::new(
            &[],
            None,
            Times {
                stale_if_error: century,
                ..times(stored, far)
            },
        );
        assert!(entry.is_fresh(far - Duration::from_secs(1)) && !entry.is_fresh(far));
        assert!(entry.is_usable_stale(far + century - Duration::from_secs(1)));
    }

    #[test]
    fn an_entry_is_its_head_content_type_and_body_in_one_allocation() {
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let body = b"<soap:Envelope/>";
        let plain = Entry::new(&[body], None, times(now, later));
        assert_eq!((plain.body(), plain.content_type()), (&body[..], None));
        assert_eq!(plain.len(), HEAD + body.len());
        assert!(!plain.has_addressing());

        let xml = HeaderValue::from_static("text/xml; charset=utf-8");
        let with = Entry::new(&[&body[..5], &body[5..]], Some(&xml), times(now, later));
        assert_eq!(with.body(), body);
        assert_eq!(with.content_type(), Some(xml.clone()));
        assert_eq!(with.len(), HEAD + xml.len() + body.len());

        // A multipart boundary is not interned, but kept all the same.
        let multipart = HeaderValue::from_static(
            "multipart/related; type=\"application/xop+xml\"; boundary=\"uuid:1\"",
        );
        let inline = Entry::new(&[body], Some(&multipart), times(now, later));
        assert_eq!(inline.content_type(), Some(multipart.clone()));
        assert_eq!(inline.body(), body);
        // An empty value, and an empty body.
        let empty = HeaderValue::from_static("");
        let entry = Entry::new(&[], Some(&empty), times(now, later));
        assert_eq!(
            (entry.body(), entry.content_type()),
            (&b""[..], Some(empty))
        );
        let (bytes, start) = inline.shared_body();
        assert_eq!(&bytes[start..], body);
    }

    #[test]
    fn addressing_ranges_are_kept_with_the_body() {
        let now = SystemTime::now();
        let body = b"<h><r>urn:a</r><m>urn:b</m></h>";
        let parts = [
            (AddressingPart::RelatesToElement, 3..15),
            (AddressingPart::RelatesToText, 6..11),
            (AddressingPart::MessageIdText, 18..23),
        ];
        let xml = HeaderValue::from_static("text/xml");
        let entry = Entry::with_addressing(&[body], Some(&xml), times(now, now), &parts);
        assert!(entry.has_addressing());
        assert_eq!(entry.body(), body);
        assert_eq!(entry.content_type(), Some(xml));
        assert_eq!(entry.addressing().collect::<Vec<_>>(), parts);
        assert_eq!(&entry.body()[6..11], b"urn:a");
        let read = Entry::from_bytes(entry.as_bytes()).unwrap();
        assert_eq!(read.addressing().collect::<Vec<_>>(), parts);
        // A range past the body (a damaged entry) is left out.
        let bad = Entry::with_addressing(
            &[b"<x/>"],
            None,
            times(now, now),
            &[(AddressingPart::MessageIdText, 2..99)],
        );
        assert_eq!(bad.addressing().count(), 0);
    }

    #[test]
    fn entry_bytes_carry_their_format_and_nothing_of_the_process() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let xml = HeaderValue::from_static("application/soap+xml");
        let entry = Entry::new(&[b"<a/>"], Some(&xml), times(now, now));
        let bytes = entry.as_bytes();
        assert_eq!(bytes[0], FORMAT);
        // The value itself, not a process-local tag.
        assert!(bytes.windows(xml.len()).any(|w| w == xml.as_bytes()));
        let read = Entry::from_bytes(bytes).unwrap();
        assert_eq!(read.as_bytes(), bytes);
        assert_eq!(read.content_type(), Some(xml));
        assert_eq!(read.body(), b"<a/>");
        // Another format, or bytes cut short, are refused.
        let mut other = bytes.to_vec();
        other[0] = FORMAT + 1;
        assert_eq!(
            Entry::from_bytes(&other).unwrap_err(),
            EntryError::Version { found: FORMAT + 1 }
        );
        assert!(Entry::from_bytes(&bytes[..HEAD + 3]).is_err());
        assert!(Entry::from_bytes(&[]).is_err());
        // A golden head: the layout is a contract between instances.
        assert_eq!(
            &bytes[..HEAD],
            &[
                1, 0, 80, 92, 24, 163, 1, 0, 0, 0, 80, 92, 24, 163, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 20, 0, 0
            ]
        );
    }
}
