//! Lifetimes (reference §4): `CacheControl/Expires` and `MaxAge` as the service
//! writes them, and `expires_at` combining them with the policy.
//!
//! Invariants:
//! * `parse_date_time` and `parse_max_age` never panic, and ignore
//!   surrounding whitespace;
//! * a plain number of seconds is exactly that many seconds;
//! * an instant written as an HTTP-date or as an RFC 3339 dateTime (Z or a
//!   numeric offset) reads back as that instant;
//! * `expires_at` never panics and never exceeds `now + max_ttl`; without
//!   a service lifetime it never exceeds `now + ttl`.
#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use soapcache::soap::control::ControlBlock;
use soapcache::cache::lifetime::{expires_at, parse_date_time, parse_max_age};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let date = parse_date_time(&text);
    let age = parse_max_age(&text);
    assert_eq!(parse_date_time(&format!(" \n{text}\t ")), date);
    assert_eq!(parse_max_age(&format!(" {text}\n")), age);
    if let Ok(n) = text.trim().parse::<u64>() {
        assert_eq!(age, Some(Duration::from_secs(n)));
    }

    let mut u = Unstructured::new(data);
    let secs: u64 = u.int_in_range(0..=253_402_300_799).unwrap_or(0); // up to 9999-12-31
    let instant = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let http = httpdate::fmt_http_date(instant);
    assert_eq!(parse_date_time(&http), Some(instant), "{http}");
    let t = time::OffsetDateTime::from(instant);
    let offset_minutes: i16 = u.int_in_range(-23 * 60 - 59..=23 * 60 + 59).unwrap_or(0);
    let offset = time::UtcOffset::from_whole_seconds(i32::from(offset_minutes) * 60).unwrap();
    if let Some(local) = t.checked_to_offset(offset) {
        if (1..=9999).contains(&local.year()) {
            let rfc = local
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format");
            assert_eq!(parse_date_time(&rfc), Some(instant), "{rfc}");
        }
    }

    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u.int_in_range(0..=4_102_444_800).unwrap_or(0));
    let ttl = u
        .arbitrary::<Option<u32>>()
        .unwrap_or(None)
        .map(|s| Duration::from_secs(s.into()));
    let max_ttl = u
        .arbitrary::<Option<u32>>()
        .unwrap_or(None)
        .map(|s| Duration::from_secs(s.into()));
    let daily = u
        .arbitrary::<Option<(u8, u8, u8)>>()
        .unwrap_or(None)
        .and_then(|(h, m, s)| time::Time::from_hms(h % 24, m % 60, s % 60).ok());
    let control = ControlBlock {
        cache_key: None,
        expires: u
            .arbitrary::<bool>()
            .unwrap_or(false)
            .then(|| text.to_string()),
        max_age: u
            .arbitrary::<bool>()
            .unwrap_or(false)
            .then(|| text.to_string()),
    };
    let with_service = expires_at(Some(&control), ttl, daily, max_ttl, now);
    let without = expires_at(None, ttl, daily, max_ttl, now);
    for at in [with_service, without].into_iter().flatten() {
        if let Some(cap) = max_ttl {
            assert!(at <= now + cap, "lifetime beyond max_ttl");
        }
    }
    if let (Some(at), Some(ttl)) = (without, ttl) {
        assert!(at <= now + ttl, "lifetime beyond ttl");
    }
});
