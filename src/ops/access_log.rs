//! The access log: one line per request, in the same text or JSON shape as
//! every other log line, handed to the log writer in batches.
//!
//! Access lines do not go through tracing's formatter: field by field, and
//! with a channel message per line, it cost more than the cache hit it
//! logged (docs/PERFORMANCE.md, seventh pass). A line is formatted here
//! straight into a shared buffer, which goes to the log writer
//! (tracing-appender's thread) when it is full or when the runtime runs
//! out of work ([`flush`] runs on every park), so lines appear as soon as
//! the server is idle for a moment, and under load many go out at once.
//! Whether lines are written is still up to `RUST_LOG`: target
//! `soapcache::access`, level INFO.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::cli::LogFormat;

/// What one line says of a request. Fields that are `None` are left out,
/// as tracing leaves them out.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub message: &'static str,
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub service: Option<&'a str>,
    pub operation: Option<&'a str>,
    pub result: &'a str,
    /// Why a BYPASS or an unstored MISS did not use the cache.
    pub detail: Option<&'a str>,
    pub status: u16,
    pub upstream_micros: Option<u64>,
    pub total_micros: u64,
    pub bytes: Option<u64>,
    /// A queued message's id, on its accept and delivery lines.
    pub message_id: Option<&'a str>,
    /// Which delivery attempt a delivery line is about.
    pub attempt: Option<u32>,
}

/// A field's value, and how the text shape writes it.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    /// As it is (tracing's `%field`).
    Plain(&'a str),
    /// Quoted and escaped as `Debug` does.
    Quoted(&'a str),
    Number(u64),
}

impl<'a> Line<'a> {
    /// The fields after the message, in the order both shapes write them.
    fn fields(&self) -> impl Iterator<Item = (&'static str, Value<'a>)> {
        [
            self.request_id.map(|v| ("request_id", Value::Quoted(v))),
            Some(("method", Value::Plain(self.method))),
            Some(("path", Value::Quoted(self.path))),
            self.service.map(|v| ("service", Value::Plain(v))),
            self.operation.map(|v| ("operation", Value::Quoted(v))),
            Some(("result", Value::Quoted(self.result))),
            self.detail.map(|v| ("detail", Value::Quoted(v))),
            Some(("status", Value::Number(self.status.into()))),
            self.upstream_micros
                .map(|v| ("upstream_micros", Value::Number(v))),
            Some(("total_micros", Value::Number(self.total_micros))),
            self.bytes.map(|v| ("bytes", Value::Number(v))),
            self.message_id.map(|v| ("message_id", Value::Quoted(v))),
            self.attempt.map(|v| ("attempt", Value::Number(v.into()))),
        ]
        .into_iter()
        .flatten()
    }
}

/// Past this many buffered bytes the batch goes out without waiting for
/// the runtime to idle.
const FLUSH_AT: usize = 32 * 1024;

const TARGET: &str = "soapcache::access";

struct Sink {
    style: Style,
    batch: Mutex<Batch>,
    /// Set when the batch has lines: a park that finds it unset costs one
    /// atomic load, not a lock.
    pending: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub format: LogFormat,
    /// Colours as tracing uses them on a terminal (text only).
    pub ansi: bool,
}

struct Batch {
    text: Vec<u8>,
    clock: Clock,
    out: Box<dyn Write + Send>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines to `out` from now on, if `RUST_LOG` lets target
/// `soapcache::access` log at INFO: call it once the subscriber is set.
/// Only the first call counts.
pub fn install(out: impl Write + Send + 'static, style: Style) {
    // The filter does not change while the process runs: asked once, not
    // on every request.
    if !tracing::enabled!(target: "soapcache::access", tracing::Level::INFO) {
        return;
    }
    let _ = SINK.set(Sink {
        style,
        batch: Mutex::new(Batch {
            text: Vec::with_capacity(FLUSH_AT + 1024),
            clock: Clock::default(),
            out: Box::new(out),
        }),
        pending: AtomicBool::new(false),
    });
}

/// Whether a request's line would be written.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Adds `line` to the batch.
pub fn write(line: &Line<'_>) {
    let Some(sink) = SINK.get() else { return };
    let now = SystemTime::now();
    // A poisoned lock means a panic mid-append: the batch is still bytes.
    let mut batch = sink.batch.lock().unwrap_or_else(|e| e.into_inner());
    let Batch { text, clock, .. } = &mut *batch;
    append(text, clock, sink.style, now, line);
    if batch.text.len() >= FLUSH_AT {
        batch.send();
    } else {
        sink.pending.store(true, Ordering::Release);
    }
}

/// Hands the buffered lines to the log writer. Runs on every runtime park
/// and at exit.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    if sink.pending.swap(false, Ordering::Acquire) {
        sink.batch.lock().unwrap_or_else(|e| e.into_inner()).send();
    }
}

impl Batch {
    fn send(&mut self) {
        if !self.text.is_empty() {
            // The writer does not block; if it falls behind it drops lines,
            // as it does for every other log line.
            let _ = self.out.write_all(&self.text);
            self.text.clear();
        }
    }
}

/// The timestamp's date and time to the second, made once a second.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-11-26T04:07:49.`
    prefix: Vec<u8>,
}

impl Clock {
    /// `now` as tracing writes it: RFC 3339, UTC, microseconds.
    fn write(&mut self, out: &mut Vec<u8>, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.prefix.is_empty() || since.as_secs() != self.second {
            self.second = since.as_secs();
            self.prefix.clear();
            let t = i64::try_from(self.second)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let format =
                time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].");
            let _ = t.format_into(&mut self.prefix, format);
        }
        out.extend_from_slice(&self.prefix);
        let micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        let mut rest = micros;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

/// Formats `line` onto `out`, newline included.
fn append(out: &mut Vec<u8>, clock: &mut Clock, style: Style, now: SystemTime, line: &Line<'_>) {
    match style.format {
        LogFormat::Text => Text {
            out,
            ansi: style.ansi,
        }
        .line(clock, now, line),
        LogFormat::Json => Json { out }.line(clock, now, line),
    }
}

/// tracing-subscriber's default text shape: strings quoted and escaped as
/// Rust's `Debug` does, `method` and `service` as they are.
struct Text<'o> {
    out: &'o mut Vec<u8>,
    ansi: bool,
}

impl Text<'_> {
    fn line(mut self, clock: &mut Clock, now: SystemTime, line: &Line<'_>) {
        self.dimmed(|out| clock.write(out, now));
        if self.ansi {
            self.out.extend_from_slice(b" \x1b[32m INFO\x1b[0m ");
        } else {
            self.out.extend_from_slice(b"  INFO ");
        }
        self.dimmed(|out| out.extend_from_slice(TARGET.as_bytes()));
        self.dimmed(|out| out.push(b':'));
        self.out.push(b' ');
        self.out.extend_from_slice(line.message.as_bytes());
        for (name, value) in line.fields() {
            match value {
                Value::Plain(v) => self.plain(name, v),
                Value::Quoted(v) => self.quoted(name, v),
                Value::Number(n) => self.number(name, n),
            }
        }
        self.out.push(b'\n');
    }

    fn dimmed(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.ansi {
            self.out.extend_from_slice(b"\x1b[2m");
            write(self.out);
            self.out.extend_from_slice(b"\x1b[0m");
        } else {
            write(self.out);
        }
    }

    fn name(&mut self, name: &str) {
        self.out.push(b' ');
        if self.ansi {
            self.out.extend_from_slice(b"\x1b[3m");
            self.out.extend_from_slice(name.as_bytes());
            self.out.extend_from_slice(b"\x1b[0m\x1b[2m=\x1b[0m");
        } else {
            self.out.extend_from_slice(name.as_bytes());
            self.out.push(b'=');
        }
    }

    fn plain(&mut self, name: &str, value: &str) {
        self.name(name);
        self.out.extend_from_slice(value.as_bytes());
    }

    fn quoted(&mut self, name: &str, value: &str) {
        self.name(name);
        // The common case skips the formatter.
        if value.bytes().all(|b| AS_IS[usize::from(b)]) {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            let _ = write!(self.out, "{value:?}");
        }
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
}

/// The bytes `Debug` writes as they are between quotes: printable ASCII
/// other than `"` and `\`.
static AS_IS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        table[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    table
};

/// tracing-subscriber's JSON shape with `flatten_event(true)`: timestamp,
/// level, message, the fields, target.
struct Json<'o> {
    out: &'o mut Vec<u8>,
}

impl Json<'_> {
    fn line(mut self, clock: &mut Clock, now: SystemTime, line: &Line<'_>) {
        self.out.extend_from_slice(b"{\"timestamp\":\"");
        clock.write(self.out, now);
        self.out.extend_from_slice(b"\",\"level\":\"INFO\"");
        self.string("message", line.message);
        for (name, value) in line.fields() {
            match value {
                Value::Plain(v) | Value::Quoted(v) => self.string(name, v),
                Value::Number(n) => self.number(name, n),
            }
        }
        self.string("target", TARGET);
        self.out.extend_from_slice(b"}\n");
    }

    fn name(&mut self, name: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, name: &str, value: &str) {
        self.name(name);
        // serde_json escapes what JSON requires; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, value);
    }

    fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line() -> Line<'static> {
        Line {
            message: "request",
            request_id: Some("8d510eb9-1"),
            method: "POST",
            path: "/catalog",
            service: Some("default"),
            operation: Some("CatalogPriceRequest"),
            result: "miss",
            detail: None,
            status: 200,
            upstream_micros: Some(267),
            total_micros: 291,
            bytes: Some(327),
            message_id: None,
            attempt: None,
        }
    }

    /// 2026-11-26T04:07:20.083126Z
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_795_666_040_083_126)
    }

    fn formatted(style: Style, line: &Line<'_>) -> String {
        let mut out = Vec::new();
        append(&mut out, &mut Clock::default(), style, at(), line);
        String::from_utf8(out).unwrap()
    }

    const TEXT: Style = Style {
        format: LogFormat::Text,
        ansi: false,
    };
    const JSON: Style = Style {
        format: LogFormat::Json,
        ansi: false,
    };

    #[test]
    fn a_text_line_reads_as_tracing_writes_one() {
        assert_eq!(
            formatted(TEXT, &line()),
            "2026-11-26T04:07:20.083126Z  INFO soapcache::access: request \
             request_id=\"8d510eb9-1\" method=POST path=\"/catalog\" service=default \
             operation=\"CatalogPriceRequest\" result=\"miss\" status=200 \
             upstream_micros=267 total_micros=291 bytes=327\n"
        );
    }

    #[test]
    fn fields_without_a_value_are_left_out() {
        let mut l = line();
        (l.request_id, l.upstream_micros, l.bytes) = (None, None, None);
        let text = formatted(TEXT, &l);
        assert!(!text.contains("request_id") && !text.contains("upstream_micros"));
        assert!(!text.contains("bytes="));
        let json: serde_json::Value = serde_json::from_str(&formatted(JSON, &l)).unwrap();
        assert!(json.get("request_id").is_none() && json.get("bytes").is_none());
    }

    #[test]
    fn a_reason_follows_the_result() {
        let mut l = line();
        l.detail = Some("no-lifetime");
        let text = formatted(TEXT, &l);
        assert!(
            text.contains("result=\"miss\" detail=\"no-lifetime\" status=200"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&formatted(JSON, &l)).unwrap();
        assert_eq!(json["detail"], "no-lifetime");
    }

    #[test]
    fn text_quotes_and_escapes_strings_as_debug_does() {
        let mut l = line();
        l.path = "/a \"b\"\\c\n\u{e9}";
        let text = formatted(TEXT, &l);
        assert!(text.contains(&format!("path={:?} ", l.path)), "{text}");
    }

    #[test]
    fn a_json_line_has_every_field_and_parses() {
        let mut l = line();
        l.path = "/a \"b\"\\c\n\u{e9}";
        let text = formatted(JSON, &l);
        assert!(text.starts_with("{\"timestamp\":\"2026-11-26T04:07:20.083126Z\",\"level\":\"INFO\",\"message\":\"request\","));
        assert!(text.ends_with(",\"target\":\"soapcache::access\"}\n"));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["path"], l.path);
        assert_eq!(json["request_id"], "8d510eb9-1");
        assert_eq!(json["status"], 200);
        assert_eq!(json["upstream_micros"], 267);
        assert_eq!(json["bytes"], 327);
    }

    #[test]
    fn on_a_terminal_text_is_coloured_as_tracing_colours_it() {
        let text = formatted(
            Style {
                format: LogFormat::Text,
                ansi: true,
            },
            &line(),
        );
        assert!(text.starts_with(
            "\x1b[2m2026-11-26T04:07:20.083126Z\x1b[0m \x1b[32m INFO\x1b[0m \
             \x1b[2msoapcache::access\x1b[0m\x1b[2m:\x1b[0m request \
             \x1b[3mrequest_id\x1b[0m\x1b[2m=\x1b[0m\"8d510eb9-1\""
        ));
    }

    #[test]
    fn the_clock_keeps_its_second_and_pads_microseconds() {
        let mut clock = Clock::default();
        let mut out = Vec::new();
        clock.write(&mut out, at());
        out.push(b' ');
        clock.write(&mut out, at() + Duration::from_micros(900_000));
        out.push(b' ');
        clock.write(&mut out, at() + Duration::from_secs(3600 * 20));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-26T04:07:20.083126Z 2026-11-26T04:07:20.983126Z 2026-11-27T00:07:20.083126Z"
        );
    }
}
