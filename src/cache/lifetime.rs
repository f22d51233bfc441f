//! How long an entry may be served (reference §4): from the service's
//! `Expires`/`MaxAge`, else the policy's `ttl` shortened by
//! `expires_daily_at`, always capped by `max_ttl`. Pure functions of their
//! inputs and an explicit `now`, so the clock can be injected in tests.

use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::soap::control::ControlBlock;

/// When an entry stops being fresh, or `None` when nothing gives it a life.
pub fn expires_at(
    control: Option<&ControlBlock>,
    ttl: Option<Duration>,
    expires_daily_at: Option<time::Time>,
    max_ttl: Option<Duration>,
    now: SystemTime,
) -> Option<SystemTime> {
    let from_service = control.and_then(|c| {
        let by_date = c.expires.as_deref().and_then(parse_date_time);
        let by_age = c
            .max_age
            .as_deref()
            .and_then(parse_max_age)
            .and_then(|age| now.checked_add(age));
        by_date.or(by_age)
    });
    // A daily refresh time alone is a lifetime too: until the next refresh.
    let lifetime = from_service.or_else(|| {
        let by_ttl = ttl.and_then(|ttl| now.checked_add(ttl));
        let by_daily = expires_daily_at.map(|at| next_daily(at, now));
        match (by_ttl, by_daily) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    })?;
    Some(match max_ttl.and_then(|cap| now.checked_add(cap)) {
        Some(cap) => lifetime.min(cap),
        None => lifetime,
    })
}

/// xsd:dateTime (a missing zone means UTC) or an HTTP-date.
pub fn parse_date_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.into());
    }
    if let Ok(t) = OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339) {
        return Some(t.into());
    }
    httpdate::parse_http_date(text).ok()
}

/// Seconds (`3600`) or an xsd:duration (`PT1H`).
pub fn parse_max_age(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    iso8601::duration(text).ok().map(Duration::from)
}

/// The first instant strictly after `now` whose UTC time of day is `at`.
pub fn next_daily(at: time::Time, now: SystemTime) -> SystemTime {
    let now = OffsetDateTime::from(now);
    let today = now.replace_time(at);
    let next = if today > now {
        today
    } else {
        today + time::Duration::DAY
    };
    next.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, time};

    fn at(t: OffsetDateTime) -> SystemTime {
        t.into()
    }

    fn control(expires: Option<&str>, max_age: Option<&str>) -> ControlBlock {
        ControlBlock {
            cache_key: Some("k".into()),
            expires: expires.map(Into::into),
            max_age: max_age.map(Into::into),
        }
    }

    #[test]
    fn expires_in_xsd_and_http_date_forms() {
        let want = Some(at(datetime!(2001-03-09 08:00:00 UTC)));
        assert_eq!(parse_date_time("2001-03-09T08:00:00Z"), want);
        assert_eq!(parse_date_time("2001-03-09T08:00:00"), want);
        assert_eq!(parse_date_time("2001-03-09T09:00:00+01:00"), want);
        assert_eq!(parse_date_time("Fri, 09 Mar 2001 08:00:00 GMT"), want);
        assert_eq!(parse_date_time("tomorrow"), None);
    }

    #[test]
    fn max_age_in_seconds_or_xsd_duration() {
        assert_eq!(parse_max_age("3600"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_max_age("PT1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_max_age("P1DT30M"),
            Some(Duration::from_secs(86_400 + 1800))
        );
        assert_eq!(parse_max_age("-5"), None);
    }

    #[test]
    fn the_service_wins_over_the_policy_ttl_and_max_ttl_caps_it() {
        let now = at(datetime!(2026-11-25 12:00:00 UTC));
        let c = control(Some("2026-11-27T12:00:00Z"), None);
        let hour = Duration::from_secs(3600);
        assert_eq!(
            expires_at(Some(&c), Some(hour), None, None, now),
            Some(at(datetime!(2026-11-27 12:00:00 UTC)))
        );
        assert_eq!(
            expires_at(Some(&c), None, None, Some(Duration::from_secs(86_400)), now),
            Some(at(datetime!(2026-11-26 12:00:00 UTC)))
        );
        let by_age = control(None, Some("60"));
        assert_eq!(
            expires_at(Some(&by_age), None, None, None, now),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(
            expires_at(Some(&control(None, None)), None, None, None, now),
            None
        );
    }

    #[test]
    fn daily_expiry_shortens_the_ttl_around_the_boundary() {
        let day = Duration::from_secs(86_400);
        let eight = time!(08:00:00);
        let before = at(datetime!(2026-11-25 07:59:59 UTC));
        assert_eq!(
            expires_at(None, Some(day), Some(eight), None, before),
            Some(at(datetime!(2026-11-25 08:00:00 UTC)))
        );
        let exactly = at(datetime!(2026-11-25 08:00:00 UTC));
        assert_eq!(
            expires_at(None, Some(day), Some(eight), None, exactly),
            Some(at(datetime!(2026-11-26 08:00:00 UTC)))
        );
        let short = Duration::from_secs(60);
        let noon = at(datetime!(2026-11-25 12:00:00 UTC));
        assert_eq!(
            expires_at(None, Some(short), Some(eight), None, noon),
            Some(noon + short),
            "a ttl ending before the daily time is kept"
        );
        assert_eq!(
            expires_at(None, None, Some(eight), None, noon),
            Some(at(datetime!(2026-11-26 08:00:00 UTC))),
            "the daily time alone is a lifetime"
        );
    }
}
