//! The embedded store's tables, and how a message is written into and read
//! out of a row. One file, `queue.sqlite3`, readable with the `sqlite3`
//! tool:
//!
//! ```text
//! sqlite3 DATA_DIR/queue.sqlite3 \
//!   "select id, service, operation, state, attempts, reason from messages"
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, Row};

use crate::delivery::{Callback, Credentials, Message, Phase, ReplyPlan, RetryPolicy};

/// Bumped when the tables change; a store of another version is refused
/// rather than misread.
pub const SCHEMA_VERSION: i64 = 1;

/// `reply` says where the service's answer goes: `drop`, `poll` (kept in
/// `results` for `result_retention_ms`) or `callback` (POSTed to
/// `reply_to`, faults to `fault_to`). `phase` is `deliver` until the
/// service has answered a callback message, then `callback`, with the
/// callback's body. `dedup` remembers message ids (with the answer of a
/// direct operation); `results` keeps answers to poll.
///
/// `state` is `ready` (not attempted yet), `in_flight`, `retrying` (failed,
/// waiting for its backoff) or `dead`. `due` is when a waiting message may
/// next be attempted, and NULL for messages not waiting (in flight, dead):
/// its index yields the next messages to claim in order, without a sort.
/// Times are Unix milliseconds.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    service TEXT NOT NULL,
    operation TEXT NOT NULL,
    target TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    remote TEXT NOT NULL,
    order_key TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    accepted_at INTEGER NOT NULL,
    deliver_by INTEGER NOT NULL,
    due INTEGER,
    max_attempts INTEGER NOT NULL,
    retry_backoff_ms INTEGER NOT NULL,
    max_retry_backoff_ms INTEGER NOT NULL,
    deliver_within_ms INTEGER NOT NULL,
    reason TEXT,
    last_error TEXT,
    size INTEGER NOT NULL,
    reply TEXT NOT NULL DEFAULT 'drop',
    reply_credentials BLOB,
    result_retention_ms INTEGER NOT NULL DEFAULT 0,
    reply_to TEXT,
    fault_to TEXT,
    relates_to TEXT,
    action TEXT,
    wsa_namespace TEXT,
    phase TEXT NOT NULL DEFAULT 'deliver',
    callback_to TEXT,
    callback_content_type BLOB,
    callback_body BLOB
);
CREATE INDEX IF NOT EXISTS messages_due ON messages(due) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_deliver_by ON messages(deliver_by) WHERE due IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_order ON messages(order_key, seq) WHERE order_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_id ON messages(id);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state, service);
CREATE TABLE IF NOT EXISTS dedup (
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    digest TEXT NOT NULL,
    credentials BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status INTEGER,
    content_type BLOB,
    body BLOB,
    size INTEGER NOT NULL,
    PRIMARY KEY (service, id)
);
CREATE INDEX IF NOT EXISTS dedup_expires ON dedup(expires_at);
CREATE INDEX IF NOT EXISTS dedup_created ON dedup(created_at);
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    credentials BLOB NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    content_type BLOB,
    body BLOB,
    retention_ms INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS results_expires ON results(expires_at);
CREATE INDEX IF NOT EXISTS results_created ON results(created_at);
";

/// Why a store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store was written by a newer soapcache (schema {found}, this build knows {SCHEMA_VERSION})")]
    Newer { found: i64 },
}

/// Crash-safe settings: WAL, and every commit synced to disk before it
/// returns (`synchronous = FULL`), so that a 202 sent after a commit is
/// never undone by a crash or a power cut.
pub fn prepare(conn: &Connection) -> Result<(), SchemaError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("the queue store runs in journal mode {mode}, not WAL");
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(SchemaError::Newer { found: version });
    }
    conn.execute_batch(TABLES)?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))?;
    Ok(())
}

pub fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub fn time(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

fn duration_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn duration(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// Headers as an HTTP/1.1 header block (`name: value` lines): what an
/// operator reading the store expects to see.
pub fn encode_headers(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The reverse of [`encode_headers`]; a line that does not read as a header
/// is skipped.
pub fn decode_headers(block: &[u8]) -> Vec<(String, Vec<u8>)> {
    block
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?.trim().to_owned();
            let value = line[colon + 1..].trim_ascii().to_vec();
            (!name.is_empty()).then_some((name, value))
        })
        .collect()
}

/// Inserts a new message, waiting for its first attempt; its `seq`.
pub fn insert(conn: &Connection, m: &Message) -> rusqlite::Result<i64> {
    let accepted = millis(m.accepted_at);
    let (reply, credentials, retention) = match &m.reply {
        ReplyPlan::Drop => ("drop", None, 0),
        ReplyPlan::Poll {
            retention,
            credentials,
        } => (
            "poll",
            Some(credentials.0.to_vec()),
            duration_millis(*retention),
        ),
        ReplyPlan::Callback(_) => ("callback", None, 0),
    };
    let callback = match &m.reply {
        ReplyPlan::Callback(c) => Some(c),
        _ => None,
    };
    conn.prepare_cached(
        "INSERT INTO messages (id, service, operation, target, headers, body, remote, order_key,
            state, attempts, accepted_at, deliver_by, due, max_attempts, retry_backoff_ms,
            max_retry_backoff_ms, deliver_within_ms, size, reply, reply_credentials,
            result_retention_ms, reply_to, fault_to, relates_to, action, wsa_namespace)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'ready', 0, ?9, ?10, ?9, ?11, ?12, ?13, ?14, ?15,
            ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)",
    )?
    .execute(rusqlite::params![
        m.id,
        m.service,
        m.operation,
        m.target,
        encode_headers(&m.headers),
        &m.body[..],
        m.remote,
        m.order_key,
        accepted,
        millis(m.deliver_by),
        i64::from(m.retry.max_attempts),
        duration_millis(m.retry.retry_backoff),
        duration_millis(m.retry.max_retry_backoff),
        duration_millis(m.retry.deliver_within),
        i64::try_from(m.size()).unwrap_or(i64::MAX),
        reply,
        credentials,
        retention,
        callback.map(|c| &c.reply_to),
        callback.and_then(|c| c.fault_to.as_ref()),
        callback.map(|c| &c.relates_to),
        callback.and_then(|c| c.action.as_ref()),
        callback.map(|c| &c.namespace),
    ])?;
    Ok(conn.last_insert_rowid())
}

/// The columns [`message`] reads, in its order.
pub const MESSAGE_COLUMNS: &str =
    "id, service, operation, target, headers, body, remote, order_key,
    accepted_at, deliver_by, max_attempts, retry_backoff_ms, max_retry_backoff_ms,
    deliver_within_ms, reply, reply_credentials, result_retention_ms, reply_to, fault_to,
    relates_to, action, wsa_namespace";

/// The columns [`phase_at`] reads, in its order.
pub const PHASE_COLUMNS: &str = "phase, callback_to, callback_content_type, callback_body";

/// A message from a row selected with [`MESSAGE_COLUMNS`] first.
pub fn message(row: &Row<'_>) -> rusqlite::Result<Message> {
    message_at(row, 0)
}

/// A message from a row selected with [`MESSAGE_COLUMNS`] from column `at`.
pub fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let headers: Vec<u8> = row.get(at + 4)?;
    let body: Vec<u8> = row.get(at + 5)?;
    Ok(Message {
        id: row.get(at)?,
        service: row.get(at + 1)?,
        operation: row.get(at + 2)?,
        target: row.get(at + 3)?,
        headers: decode_headers(&headers),
        body: Bytes::from(body),
        remote: row.get(at + 6)?,
        order_key: row.get(at + 7)?,
        accepted_at: time(row.get(at + 8)?),
        deliver_by: time(row.get(at + 9)?),
        retry: RetryPolicy {
            max_attempts: u32::try_from(row.get::<_, i64>(at + 10)?)
                .unwrap_or(1)
                .max(1),
            retry_backoff: duration(row.get(at + 11)?),
            max_retry_backoff: duration(row.get(at + 12)?),
            deliver_within: duration(row.get(at + 13)?),
        },
        reply: reply_at(row, at + 14)?,
    })
}

fn reply_at(row: &Row<'_>, at: usize) -> rusqlite::Result<ReplyPlan> {
    let kind: String = row.get(at)?;
    Ok(match kind.as_str() {
        "poll" => {
            let credentials: Option<Vec<u8>> = row.get(at + 1)?;
            let mut digest = [0u8; 32];
            if let Some(c) = credentials.filter(|c| c.len() == 32) {
                digest.copy_from_slice(&c);
            }
            ReplyPlan::Poll {
                retention: duration(row.get(at + 2)?),
                credentials: Credentials(digest),
            }
        }
        "callback" => ReplyPlan::Callback(Callback {
            reply_to: row.get::<_, Option<String>>(at + 3)?.unwrap_or_default(),
            fault_to: row.get(at + 4)?,
            relates_to: row.get::<_, Option<String>>(at + 5)?.unwrap_or_default(),
            action: row.get(at + 6)?,
            namespace: row.get::<_, Option<String>>(at + 7)?.unwrap_or_default(),
        }),
        _ => ReplyPlan::Drop,
    })
}

/// The phase of a row selected with [`PHASE_COLUMNS`] from column `at`.
pub fn phase_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Phase> {
    let phase: String = row.get(at)?;
    if phase != "callback" {
        return Ok(Phase::Deliver);
    }
    let body: Option<Vec<u8>> = row.get(at + 3)?;
    Ok(Phase::Callback {
        to: row.get::<_, Option<String>>(at + 1)?.unwrap_or_default(),
        content_type: row.get(at + 2)?,
        body: Bytes::from(body.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_they_were_written() {
        let headers = vec![
            (
                "content-type".to_owned(),
                b"text/xml; charset=utf-8".to_vec(),
            ),
            ("soapaction".to_owned(), b"\"urn:x:PlaceOrder\"".to_vec()),
            ("x-odd".to_owned(), vec![0xe9, b'a']),
            ("x-empty".to_owned(), Vec::new()),
        ];
        assert_eq!(decode_headers(&encode_headers(&headers)), headers);
        assert!(decode_headers(b"no colon here\r\n: no name\r\n").is_empty());
    }

    #[test]
    fn a_new_store_gets_its_tables_and_a_newer_one_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        prepare(&conn).unwrap();
        prepare(&conn).unwrap();
        conn.execute_batch("PRAGMA user_version = 99").unwrap();
        assert!(matches!(
            prepare(&conn),
            Err(SchemaError::Newer { found: 99 })
        ));
    }
}
