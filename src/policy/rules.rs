//! The caching rules of `[defaults]` and `[[operation]]`: which keys they
//! have, and how each value is read and checked onto [`Rules`].

use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use std::sync::Arc;

use super::load::FileContext;
use super::values::compile_key;
use super::Rules;
use crate::delivery::reply::ReplyPattern;
use crate::delivery::DeliveryMode;
use crate::units::{parse_duration, parse_size};

pub(super) const RULE_KEYS: &[&str] = &[
    "honor_cache_control",
    "max_ttl",
    "stale_if_error",
    "stale_while_revalidate",
    "max_entry_size",
    "roles",
    "ttl",
    "expires_daily_at",
    "vary_headers",
    "shared",
    "cache",
    "delivery",
    "max_attempts",
    "retry_backoff",
    "max_retry_backoff",
    "deliver_within",
    "order_by",
    "dedup",
    "message_id",
    "reply_to_allowed",
    "result_retention",
];

/// Keys that mean something only for a queued operation.
const QUEUE_KEYS: &[&str] = &[
    "max_attempts",
    "retry_backoff",
    "max_retry_backoff",
    "deliver_within",
    "order_by",
    "reply_to_allowed",
    "result_retention",
];

/// Keys about caching answers, which a queued operation (answered 202 by
/// soapcache) never uses.
const CACHE_KEYS: &[&str] = &[
    "ttl",
    "expires_daily_at",
    "vary_headers",
    "shared",
    "max_ttl",
    "stale_if_error",
    "stale_while_revalidate",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSection {
    honor_cache_control: Option<bool>,
    max_ttl: Option<Spanned<String>>,
    stale_if_error: Option<Spanned<String>>,
    stale_while_revalidate: Option<Spanned<String>>,
    max_entry_size: Option<Spanned<SizeValue>>,
    roles: Option<Vec<String>>,
    ttl: Option<Spanned<String>>,
    expires_daily_at: Option<Spanned<String>>,
    vary_headers: Option<Vec<Spanned<String>>>,
    shared: Option<Spanned<bool>>,
    cache: Option<bool>,
    delivery: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    retry_backoff: Option<Spanned<String>>,
    max_retry_backoff: Option<Spanned<String>>,
    deliver_within: Option<Spanned<String>>,
    order_by: Option<Spanned<Vec<Spanned<String>>>>,
    dedup: Option<Spanned<String>>,
    message_id: Option<Spanned<Vec<Spanned<String>>>>,
    reply_to_allowed: Option<Spanned<Vec<Spanned<String>>>>,
    result_retention: Option<Spanned<String>>,
}

impl RuleSection {
    /// Where `key` is written in this section, if it is.
    fn span_of(&self, key: &str) -> Option<std::ops::Range<usize>> {
        match key {
            "max_attempts" => self.max_attempts.as_ref().map(Spanned::span),
            "retry_backoff" => self.retry_backoff.as_ref().map(Spanned::span),
            "max_retry_backoff" => self.max_retry_backoff.as_ref().map(Spanned::span),
            "deliver_within" => self.deliver_within.as_ref().map(Spanned::span),
            "order_by" => self.order_by.as_ref().map(Spanned::span),
            "dedup" => self.dedup.as_ref().map(Spanned::span),
            "message_id" => self.message_id.as_ref().map(Spanned::span),
            "reply_to_allowed" => self.reply_to_allowed.as_ref().map(Spanned::span),
            "result_retention" => self.result_retention.as_ref().map(Spanned::span),
            "delivery" => self.delivery.as_ref().map(Spanned::span),
            "ttl" => self.ttl.as_ref().map(Spanned::span),
            "expires_daily_at" => self.expires_daily_at.as_ref().map(Spanned::span),
            "max_ttl" => self.max_ttl.as_ref().map(Spanned::span),
            "stale_if_error" => self.stale_if_error.as_ref().map(Spanned::span),
            "stale_while_revalidate" => self.stale_while_revalidate.as_ref().map(Spanned::span),
            "vary_headers" => self
                .vary_headers
                .as_ref()
                .map(|v| v.first().map_or(0..0, Spanned::span)),
            "shared" => self.shared.as_ref().map(Spanned::span),
            _ => None,
        }
    }
}

/// `"1MiB"` or a plain number of bytes.
enum SizeValue {
    Text(String),
    Bytes(u64),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"1MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                u64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Applies a section's keys over `rules`, reporting invalid values.
pub(super) fn apply_rules(
    cx: &mut FileContext<'_>,
    rules: &mut Rules,
    section: &RuleSection,
    namespaces: &[(String, String)],
) {
    if let Some(v) = section.honor_cache_control {
        rules.honor_cache_control = v;
    }
    let duration =
        |cx: &mut FileContext<'_>, value: &Spanned<String>, key: &str| match parse_duration(
            value.get_ref(),
        ) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.error(value.span(), format!("{key}: {e}"));
                None
            }
        };
    if let Some(v) = &section.max_ttl {
        if let Some(d) = duration(cx, v, "max_ttl") {
            rules.max_ttl = Some(d);
        }
    }
    if let Some(v) = &section.stale_if_error {
        if let Some(d) = duration(cx, v, "stale_if_error") {
            rules.stale_if_error = d;
        }
    }
    if let Some(v) = &section.stale_while_revalidate {
        if let Some(d) = duration(cx, v, "stale_while_revalidate") {
            rules.stale_while_revalidate = d;
        }
    }
    if let Some(v) = &section.ttl {
        if let Some(d) = duration(cx, v, "ttl") {
            rules.ttl = Some(d);
        }
    }
    if let Some(v) = &section.max_entry_size {
        match v.get_ref() {
            SizeValue::Bytes(b) => rules.max_entry_size = *b,
            SizeValue::Text(t) => match parse_size(t) {
                Ok(b) => rules.max_entry_size = b,
                Err(e) => cx.error(v.span(), format!("max_entry_size: {e}")),
            },
        }
    }
    if let Some(v) = &section.roles {
        rules.roles = v.clone();
    }
    if let Some(v) = &section.expires_daily_at {
        match parse_time_of_day(v.get_ref()) {
            Ok(t) => rules.expires_daily_at = Some(t),
            Err(e) => cx.error(v.span(), format!("expires_daily_at: {e}")),
        }
    }
    if let Some(headers) = &section.vary_headers {
        let mut names = Vec::new();
        for h in headers {
            match hyper::header::HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(name) => names.push(name),
                Err(_) => cx.error(
                    h.span(),
                    format!(
                        "vary_headers: '{}' is not a valid HTTP header name",
                        h.get_ref()
                    ),
                ),
            }
        }
        rules.vary_headers = names;
    }
    if let Some(v) = &section.shared {
        rules.shared = *v.get_ref();
    }
    if let Some(v) = section.cache {
        rules.cache = v;
    }
    apply_delivery(cx, rules, section, namespaces);
}

/// The keys of reference §10: how a queued operation is delivered.
fn apply_delivery(
    cx: &mut FileContext<'_>,
    rules: &mut Rules,
    section: &RuleSection,
    namespaces: &[(String, String)],
) {
    if let Some(v) = &section.delivery {
        match v.get_ref().as_str() {
            "direct" => rules.delivery = DeliveryMode::Direct,
            "queued" => rules.delivery = DeliveryMode::Queued,
            other => cx.error(
                v.span(),
                format!("delivery: '{other}' is not \"direct\" or \"queued\""),
            ),
        }
    }
    if let Some(v) = &section.max_attempts {
        match u32::try_from(*v.get_ref()) {
            Ok(n @ 1..) => rules.retry.max_attempts = n,
            _ => cx.error(
                v.span(),
                format!(
                    "max_attempts: {} is not a number of attempts (1 or more: the first attempt counts)",
                    v.get_ref()
                ),
            ),
        }
    }
    let positive =
        |cx: &mut FileContext<'_>, value: &Spanned<String>, key: &str| match parse_duration(
            value.get_ref(),
        ) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                cx.error(value.span(), format!("{key}: must be more than zero"));
                None
            }
            Err(e) => {
                cx.error(value.span(), format!("{key}: {e}"));
                None
            }
        };
    if let Some(d) = section
        .retry_backoff
        .as_ref()
        .and_then(|v| positive(cx, v, "retry_backoff"))
    {
        rules.retry.retry_backoff = d;
    }
    if let Some(d) = section
        .max_retry_backoff
        .as_ref()
        .and_then(|v| positive(cx, v, "max_retry_backoff"))
    {
        rules.retry.max_retry_backoff = d;
    }
    if let Some(d) = section
        .deliver_within
        .as_ref()
        .and_then(|v| positive(cx, v, "deliver_within"))
    {
        rules.retry.deliver_within = d;
    }
    if let Some(key) = &section.order_by {
        rules.order_by = compile_key(cx, key, namespaces, "order_by").map(Arc::new);
    }
    apply_messaging(cx, rules, section, namespaces);
}

/// The keys of reference §11 and §12: duplicates, message ids, callbacks
/// and results.
fn apply_messaging(
    cx: &mut FileContext<'_>,
    rules: &mut Rules,
    section: &RuleSection,
    namespaces: &[(String, String)],
) {
    let duration = |cx: &mut FileContext<'_>, value: &Spanned<String>, key: &str| {
        parse_duration(value.get_ref())
            .map_err(|e| cx.error(value.span(), format!("{key}: {e}")))
            .ok()
    };
    if let Some(d) = section
        .dedup
        .as_ref()
        .and_then(|v| duration(cx, v, "dedup"))
    {
        rules.dedup = d;
    }
    if let Some(d) = section
        .result_retention
        .as_ref()
        .and_then(|v| duration(cx, v, "result_retention"))
    {
        rules.result_retention = Some(d);
    }
    if let Some(key) = &section.message_id {
        rules.message_id = compile_key(cx, key, namespaces, "message_id").map(Arc::new);
    }
    if let Some(patterns) = &section.reply_to_allowed {
        let mut allowed = Vec::new();
        for pattern in patterns.get_ref() {
            match ReplyPattern::parse(pattern.get_ref()) {
                Ok(p) => allowed.push(p),
                Err(e) => cx.error(pattern.span(), format!("reply_to_allowed: {e}")),
            }
        }
        rules.reply_to_allowed = allowed;
    }
}

/// Settings that contradict each other, reported at the key that makes
/// the contradiction. `operation`: the section is an `[[operation]]`
/// (whose keys must make sense for that operation); else `[defaults]`
/// (whose queue keys may be meant for the queued operations only).
pub(super) fn check_rules(
    cx: &mut FileContext<'_>,
    rules: &Rules,
    section: &RuleSection,
    operation: bool,
) {
    let retry = &rules.retry;
    if retry.max_retry_backoff < retry.retry_backoff {
        let at = section
            .span_of("max_retry_backoff")
            .or_else(|| section.span_of("retry_backoff"));
        if let Some(at) = at {
            cx.error(
                at,
                format!(
                    "max_retry_backoff ({:?}) is shorter than retry_backoff ({:?}): the first retry would already wait longer than the cap",
                    retry.max_retry_backoff, retry.retry_backoff
                ),
            );
        }
    }
    if !operation {
        return;
    }
    if rules.delivery == DeliveryMode::Direct && rules.dedup.is_zero() {
        if let Some(at) = section.span_of("message_id") {
            cx.error(
                at,
                "message_id has no effect on a direct operation without dedup (add dedup = \"1h\", or delivery = \"queued\" to name its messages)",
            );
        }
    }
    match rules.delivery {
        DeliveryMode::Direct => {
            for key in QUEUE_KEYS {
                if let Some(at) = section.span_of(key) {
                    cx.error(
                        at,
                        format!("{key} applies only to queued operations, and this one has delivery = \"direct\" (add delivery = \"queued\" or remove {key})"),
                    );
                }
            }
        }
        DeliveryMode::Queued => {
            for key in CACHE_KEYS {
                if let Some(at) = section.span_of(key) {
                    cx.error(
                        at,
                        format!("{key} has no effect on a queued operation: soapcache answers it 202 and never caches its answers (remove {key}, or make delivery \"direct\")"),
                    );
                }
            }
        }
    }
}

/// `08:00:00Z`, `08:00:00`, `08:00Z`, `08:00` (also `+00:00` for `Z`): a
/// UTC time of day.
fn parse_time_of_day(text: &str) -> Result<time::Time, String> {
    let bad = || format!("'{text}' is not a UTC time of day like \"08:00:00Z\"");
    let clock = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .unwrap_or(text);
    let parts: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let number = |i: usize| {
        parts
            .get(i)
            .map_or(0, |p| p.parse::<u8>().expect("two digits"))
    };
    let (h, m, s) = (number(0), number(1), number(2));
    time::Time::from_hms(h, m, s)
        .map_err(|_| format!("'{text}' is out of range (00:00:00 to 23:59:59)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_day_in_several_spellings() {
        let t = |s| parse_time_of_day(s);
        assert_eq!(t("08:00:00Z"), Ok(time::macros::time!(08:00:00)));
        assert_eq!(t("08:00:00"), Ok(time::macros::time!(08:00:00)));
        assert_eq!(t("08:30Z"), Ok(time::macros::time!(08:30:00)));
        assert_eq!(t("23:59:59+00:00"), Ok(time::macros::time!(23:59:59)));
        assert!(t("24:00:00Z").unwrap_err().contains("out of range"));
        assert!(t("8:00").is_err());
        assert!(t("08:00:00+02:00").is_err());
    }
}
