//! The store's one connection, on a thread of its own. Every change goes
//! through it: commands that arrive while a commit is under way are done
//! together in the next transaction, so concurrent accepts share one
//! durable commit (group commit), and each command is answered only after
//! the commit that holds it. SQLite calls block; none runs on the async
//! runtime.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{Connection, OptionalExtension, Transaction};
use tokio::sync::{oneshot, Notify};

use super::schema::{self, millis, MESSAGE_COLUMNS, PHASE_COLUMNS};
use crate::delivery::retry::DeadReason;
use crate::delivery::{
    Accepted, Claimed, Credentials, DeadLetter, DedupClaim, Depth, Finish, Message, QueueError,
    QueueStats, Recorded, RecordedAnswer, ReplyPlan, ResultState, StoredResult,
};

/// Commands in one transaction, at most: a burst beyond it waits for the
/// next commit, which keeps each transaction's work (and the time its
/// first command waits) bounded.
const MAX_BATCH: usize = 1024;

/// How often a store that could not be opened is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// How often message ids and results past their time are dropped: they
/// are invisible from the moment they expire (every lookup compares), so
/// this only gives their space back.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Rows dropped per statement when a bound is exceeded.
const EVICT_BATCH: i64 = 256;

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

/// What a claim took, and the (service, operation) of each message it
/// found past its time to deliver and dead-lettered instead.
pub type Claim = (Vec<Claimed>, Vec<(String, String)>);

pub enum Command {
    /// A message, and with `dedup` its id, in one commit.
    Insert(Box<Message>, Option<DedupClaim>, Reply<Accepted>),
    /// What a message id of a service was recorded with, if it is still
    /// remembered at `now`.
    DedupLookup {
        service: String,
        id: String,
        now: SystemTime,
        reply: Reply<Option<Recorded>>,
    },
    /// Remembers a message id (a direct operation's, with its answer).
    DedupRecord {
        service: String,
        id: String,
        recorded: Box<Recorded>,
        until: SystemTime,
        reply: Reply<()>,
    },
    /// A kept result, if it is still kept at `now`.
    Result {
        id: String,
        now: SystemTime,
        reply: Reply<Option<StoredResult>>,
    },
    /// Messages due at `now` whose turn it is, at most `limit`; and those
    /// found past their time to deliver, dead-lettered on the way
    /// (service, operation).
    Claim {
        now: SystemTime,
        limit: usize,
        reply: Reply<Claim>,
    },
    Finish(i64, Finish, Reply<()>),
    Stats(Reply<QueueStats>),
    NextDue(Reply<Option<SystemTime>>),
    DeadLetters {
        service: Option<String>,
        limit: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    DeadLetter(String, Reply<Option<Message>>),
    /// Dead letters back to the queue: one id, or all (of one service).
    Retry {
        id: Option<String>,
        service: Option<String>,
        now: SystemTime,
        reply: Reply<u64>,
    },
    Delete(String, Reply<bool>),
}

/// What the writer shares with the queue's handle.
pub struct Shared {
    /// Bytes of the messages stored, for `/queue` and the full check.
    pub bytes: AtomicU64,
    /// Bytes of remembered message ids and of kept results, each bounded
    /// (`--dedup-max-bytes`, `--results-max-bytes`), and how many of each
    /// were dropped to stay within the bound.
    pub dedup_bytes: AtomicU64,
    pub results_bytes: AtomicU64,
    pub dedup_evictions: AtomicU64,
    pub results_evictions: AtomicU64,
    /// The store is open and answered its last commit.
    pub healthy: AtomicBool,
    /// Woken when messages may have become due: an accept, a finished
    /// attempt (the next of its order may go), a retried dead letter.
    pub wake: Notify,
}

/// The bounds the writer keeps.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub queue: u64,
    pub dedup: u64,
    pub results: u64,
}

pub struct Writer {
    path: PathBuf,
    bounds: Bounds,
    conn: Option<Open>,
    last_open_attempt: Option<Instant>,
    last_purge: Instant,
    shared: Arc<Shared>,
}

/// The running byte counts a transaction updates, written back to
/// [`Shared`] only if it commits.
#[derive(Debug, Clone, Copy, Default)]
struct Sizes {
    queue: u64,
    dedup: u64,
    results: u64,
    dedup_evictions: u64,
    results_evictions: u64,
}

/// The open store, and which file it is: a store whose file was removed
/// or replaced underneath it would go on writing to a file nobody reads.
struct Open {
    conn: Connection,
    device: u64,
    inode: u64,
}

/// What a command does once its transaction commits.
type Answer = Box<dyn FnOnce(Result<(), &QueueError>) + Send>;

impl Writer {
    pub fn new(path: PathBuf, bounds: Bounds, shared: Arc<Shared>) -> Writer {
        Writer {
            path,
            bounds,
            conn: None,
            last_open_attempt: None,
            last_purge: Instant::now(),
            shared,
        }
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, commands: Receiver<Command>) {
        let _ = self.ensure_open();
        loop {
            let first = match commands.recv_timeout(REOPEN_EVERY) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.ensure_open();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.execute(batch);
        }
    }

    /// Opens the store if it is not open (at most once per
    /// `REOPEN_EVERY`), and makes sure the open one is still the file at
    /// its path.
    fn ensure_open(&mut self) -> Result<(), QueueError> {
        if let Some(open) = &self.conn {
            let same = std::fs::metadata(&self.path)
                .is_ok_and(|m| m.dev() == open.device && m.ino() == open.inode);
            if same {
                return Ok(());
            }
            tracing::error!(
                path = %self.path.display(),
                "the queue store's file is gone or was replaced: queued operations answer 503 until it can be opened again"
            );
            self.conn = None;
            self.shared.healthy.store(false, Ordering::Relaxed);
        }
        let due = self
            .last_open_attempt
            .is_none_or(|at| at.elapsed() >= REOPEN_EVERY);
        if !due {
            return Err(QueueError::Unavailable(format!(
                "cannot open {}",
                self.path.display()
            )));
        }
        self.last_open_attempt = Some(Instant::now());
        match open(&self.path) {
            Ok((open, sizes)) => {
                let first = !self.shared.healthy.swap(true, Ordering::Relaxed);
                if first {
                    tracing::info!(path = %self.path.display(), bytes = sizes.queue, dedup_bytes = sizes.dedup, results_bytes = sizes.results, "queue store open");
                }
                self.shared.bytes.store(sizes.queue, Ordering::Relaxed);
                self.shared
                    .dedup_bytes
                    .store(sizes.dedup, Ordering::Relaxed);
                self.shared
                    .results_bytes
                    .store(sizes.results, Ordering::Relaxed);
                self.conn = Some(open);
                self.shared.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                let message = format!("cannot open {}: {e}", self.path.display());
                tracing::error!("queue store unavailable, queued operations answer 503: {message}");
                self.shared.healthy.store(false, Ordering::Relaxed);
                Err(QueueError::Unavailable(message))
            }
        }
    }

    fn execute(&mut self, batch: Vec<Command>) {
        let fail_all = |batch: Vec<Command>, error: &QueueError| {
            for command in batch {
                command.fail(error);
            }
        };
        if let Err(e) = self.ensure_open() {
            return fail_all(batch, &e);
        }
        let Some(open) = self.conn.as_mut() else {
            return fail_all(batch, &QueueError::Unavailable("not open".into()));
        };
        let transaction = match open.conn.transaction() {
            Ok(t) => t,
            Err(e) => return fail_all(batch, &QueueError::Store(e)),
        };
        let mut sizes = Sizes {
            queue: self.shared.bytes.load(Ordering::Relaxed),
            dedup: self.shared.dedup_bytes.load(Ordering::Relaxed),
            results: self.shared.results_bytes.load(Ordering::Relaxed),
            ..Sizes::default()
        };
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        let mut wake = false;
        let mut remembered = false;
        for command in batch {
            wake |= matches!(
                command,
                Command::Insert(..) | Command::Finish(..) | Command::Retry { .. }
            );
            remembered |= matches!(
                command,
                Command::Insert(..) | Command::DedupRecord { .. } | Command::Finish(..)
            );
            answers.push(apply(&transaction, command, &mut sizes, self.bounds));
        }
        let purge = self.last_purge.elapsed() >= PURGE_EVERY;
        let kept = if remembered || purge {
            if purge {
                self.last_purge = Instant::now();
            }
            keep_within(&transaction, &mut sizes, self.bounds, purge)
        } else {
            Ok(())
        };
        if let Err(e) = kept {
            // Only space is at stake: the batch still commits.
            tracing::warn!("queue store could not drop old message ids or results: {e}");
        }
        let committed = transaction.commit().map_err(QueueError::Store);
        match &committed {
            Ok(()) => {
                self.shared.bytes.store(sizes.queue, Ordering::Relaxed);
                self.shared
                    .dedup_bytes
                    .store(sizes.dedup, Ordering::Relaxed);
                self.shared
                    .results_bytes
                    .store(sizes.results, Ordering::Relaxed);
                self.shared
                    .dedup_evictions
                    .fetch_add(sizes.dedup_evictions, Ordering::Relaxed);
                self.shared
                    .results_evictions
                    .fetch_add(sizes.results_evictions, Ordering::Relaxed);
                self.shared.healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!("queue store commit failed, nothing of it was kept: {e}");
                self.shared.healthy.store(false, Ordering::Relaxed);
            }
        }
        for answer in answers {
            answer(committed.as_ref().map(|_| ()));
        }
        if wake && committed.is_ok() {
            self.shared.wake.notify_one();
        }
    }
}

fn open(path: &std::path::Path) -> Result<(Open, Sizes), QueueError> {
    let conn = Connection::open(path)?;
    schema::prepare(&conn).map_err(|e| QueueError::Unavailable(e.to_string()))?;
    recover(&conn)?;
    let total = |table: &str| -> rusqlite::Result<u64> {
        let bytes: i64 = conn.query_row(
            &format!("SELECT COALESCE(SUM(size), 0) FROM {table}"),
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    };
    let sizes = Sizes {
        queue: total("messages")?,
        dedup: total("dedup")?,
        results: total("results")?,
        ..Sizes::default()
    };
    let metadata = std::fs::metadata(path)
        .map_err(|e| QueueError::Unavailable(format!("{}: {e}", path.display())))?;
    Ok((
        Open {
            conn,
            device: metadata.dev(),
            inode: metadata.ino(),
        },
        sizes,
    ))
}

/// Attempts cut short by a crash go back to the queue, and do not count:
/// their outcome is unknown, and the retry is the attempt that decides.
fn recover(conn: &Connection) -> rusqlite::Result<()> {
    let now = millis(crate::clock::now());
    let recovered = conn.execute(
        "UPDATE messages SET attempts = MAX(attempts - 1, 0), due = ?1,
             state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'ready' END
         WHERE state = 'in_flight'",
        [now],
    )?;
    if recovered > 0 {
        tracing::warn!(
            messages = recovered,
            "delivery attempts cut short by the last stop go again (the service may see them twice)"
        );
    }
    Ok(())
}

impl Command {
    fn fail(self, error: &QueueError) {
        let e = || again(error);
        match self {
            Command::Insert(_, _, r) => drop(r.send(Err(e()))),
            Command::Finish(_, _, r) | Command::DedupRecord { reply: r, .. } => {
                drop(r.send(Err(e())))
            }
            Command::DedupLookup { reply, .. } => drop(reply.send(Err(e()))),
            Command::Result { reply, .. } => drop(reply.send(Err(e()))),
            Command::Claim { reply, .. } => drop(reply.send(Err(e()))),
            Command::Stats(r) => drop(r.send(Err(e()))),
            Command::NextDue(r) => drop(r.send(Err(e()))),
            Command::DeadLetters { reply, .. } => drop(reply.send(Err(e()))),
            Command::DeadLetter(_, r) => drop(r.send(Err(e()))),
            Command::Retry { reply, .. } => drop(reply.send(Err(e()))),
            Command::Delete(_, r) => drop(r.send(Err(e()))),
        }
    }
}

/// The same error for another command of the batch it failed.
fn again(error: &QueueError) -> QueueError {
    match error {
        QueueError::Unavailable(message) => QueueError::Unavailable(message.clone()),
        QueueError::Full { max_bytes } => QueueError::Full {
            max_bytes: *max_bytes,
        },
        QueueError::Draining => QueueError::Draining,
        QueueError::Reused => QueueError::Reused,
        QueueError::Store(e) => QueueError::Unavailable(e.to_string()),
    }
}

/// Does one command in `t`; the answer it gives once `t` commits (or not).
fn apply(t: &Transaction<'_>, command: Command, sizes: &mut Sizes, bounds: Bounds) -> Answer {
    /// Sends `result` if the transaction commits, the commit's error if not.
    fn after_commit<T: Send + 'static>(reply: Reply<T>, result: Result<T, QueueError>) -> Answer {
        Box::new(move |committed| {
            let result = match committed {
                Ok(()) => result,
                Err(e) => Err(again(e)),
            };
            let _ = reply.send(result);
        })
    }
    match command {
        Command::Insert(message, claim, reply) => after_commit(
            reply,
            insert(t, &message, claim.as_ref(), sizes, bounds.queue),
        ),
        Command::DedupLookup {
            service,
            id,
            now,
            reply,
        } => after_commit(
            reply,
            dedup_lookup(t, &service, &id, now).map_err(QueueError::Store),
        ),
        Command::DedupRecord {
            service,
            id,
            recorded,
            until,
            reply,
        } => after_commit(
            reply,
            dedup_record(t, &service, &id, &recorded, until, sizes).map_err(QueueError::Store),
        ),
        Command::Result { id, now, reply } => {
            after_commit(reply, result(t, &id, now).map_err(QueueError::Store))
        }
        Command::Claim { now, limit, reply } => {
            after_commit(reply, claim(t, now, limit).map_err(QueueError::Store))
        }
        Command::Finish(seq, finish, reply) => after_commit(
            reply,
            finish_one(t, seq, &finish, sizes).map_err(QueueError::Store),
        ),
        Command::Stats(reply) => {
            let stats = stats(t, sizes, bounds);
            after_commit(reply, stats.map_err(QueueError::Store))
        }
        Command::NextDue(reply) => {
            let due = t
                .query_row(
                    "SELECT MIN(due) FROM messages WHERE due IS NOT NULL",
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .map(|due| due.map(schema::time));
            after_commit(reply, due.map_err(QueueError::Store))
        }
        Command::DeadLetters {
            service,
            limit,
            reply,
        } => after_commit(
            reply,
            dead_letters(t, service.as_deref(), limit).map_err(QueueError::Store),
        ),
        Command::DeadLetter(id, reply) => {
            let found = t
                .query_row(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND state = 'dead'
                         ORDER BY seq LIMIT 1"
                    ),
                    [&id],
                    schema::message,
                )
                .optional();
            after_commit(reply, found.map_err(QueueError::Store))
        }
        Command::Retry {
            id,
            service,
            now,
            reply,
        } => {
            let now = millis(now);
            let retried = t
                .prepare_cached(
                    "UPDATE messages SET state = 'ready', attempts = 0, due = ?1,
                         deliver_by = ?1 + deliver_within_ms, reason = NULL
                     WHERE state = 'dead' AND (?2 IS NULL OR id = ?2)
                       AND (?3 IS NULL OR service = ?3)",
                )
                .and_then(|mut s| s.execute(rusqlite::params![now, id, service]))
                .map(|n| n as u64);
            after_commit(reply, retried.map_err(QueueError::Store))
        }
        Command::Delete(id, reply) => {
            let deleted = t
                .query_row(
                    "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM messages WHERE id = ?1 AND state = 'dead'",
                    [&id],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .and_then(|(size, count)| {
                    t.execute("DELETE FROM messages WHERE id = ?1 AND state = 'dead'", [&id])?;
                    sizes.queue = sizes.queue.saturating_sub(u64::try_from(size).unwrap_or(0));
                    Ok(count > 0)
                });
            after_commit(reply, deleted.map_err(QueueError::Store))
        }
    }
}

/// Stores `message`, and with a claim its id, unless the id is already
/// remembered: then nothing is stored, and the message is a duplicate (the
/// same digest) or a reuse of the id for another message.
fn insert(
    t: &Transaction<'_>,
    message: &Message,
    claim: Option<&DedupClaim>,
    sizes: &mut Sizes,
    max_bytes: u64,
) -> Result<Accepted, QueueError> {
    if let Some(claim) = claim {
        let now = message.accepted_at;
        if let Some(seen) = dedup_lookup(t, &message.service, &message.id, now)? {
            return if seen.digest == claim.digest {
                Ok(Accepted::Duplicate)
            } else {
                Err(QueueError::Reused)
            };
        }
    }
    let size = message.size();
    if sizes.queue.saturating_add(size) > max_bytes {
        return Err(QueueError::Full { max_bytes });
    }
    schema::insert(t, message)?;
    sizes.queue += size;
    if let Some(claim) = claim {
        let recorded = Recorded {
            digest: claim.digest.clone(),
            credentials: claim.credentials,
            answer: None,
        };
        dedup_record(
            t,
            &message.service,
            &message.id,
            &recorded,
            claim.until,
            sizes,
        )?;
    }
    if let ReplyPlan::Poll { credentials, .. } = &message.reply {
        let size = result_size(&message.id, None);
        let replaced = t
            .query_row(
                "SELECT size FROM results WHERE id = ?1",
                [&message.id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?;
        t.prepare_cached(
            "INSERT OR REPLACE INTO results (id, service, credentials, state, retention_ms,
                 created_at, expires_at, size)
             VALUES (?1, ?2, ?3, 'pending', 0, ?4, NULL, ?5)",
        )?
        .execute(rusqlite::params![
            message.id,
            message.service,
            &credentials.0[..],
            millis(message.accepted_at),
            size,
        ])?;
        sizes.results = sizes.results + size as u64 - unsigned(replaced.unwrap_or(0));
    }
    Ok(Accepted::New)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn credentials(bytes: Option<Vec<u8>>) -> Credentials {
    let mut digest = [0u8; 32];
    if let Some(b) = bytes.filter(|b| b.len() == 32) {
        digest.copy_from_slice(&b);
    }
    Credentials(digest)
}

fn answer_of(
    status: Option<i64>,
    content_type: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
) -> Option<RecordedAnswer> {
    Some(RecordedAnswer {
        status: u16::try_from(status?).ok()?,
        content_type,
        body: bytes::Bytes::from(body.unwrap_or_default()),
    })
}

fn dedup_lookup(
    t: &Transaction<'_>,
    service: &str,
    id: &str,
    now: SystemTime,
) -> rusqlite::Result<Option<Recorded>> {
    t.prepare_cached(
        "SELECT digest, credentials, status, content_type, body FROM dedup
         WHERE service = ?1 AND id = ?2 AND expires_at > ?3",
    )?
    .query_row(rusqlite::params![service, id, millis(now)], |r| {
        Ok(Recorded {
            digest: r.get(0)?,
            credentials: credentials(r.get(1)?),
            answer: answer_of(r.get(2)?, r.get(3)?, r.get(4)?),
        })
    })
    .optional()
}

fn dedup_size(id: &str, recorded: &Recorded) -> i64 {
    let answer = recorded.answer.as_ref().map_or(0, RecordedAnswer::size);
    i64::try_from(id.len() as u64 + recorded.digest.len() as u64 + 96 + answer).unwrap_or(i64::MAX)
}

fn result_size(id: &str, answer: Option<&RecordedAnswer>) -> i64 {
    i64::try_from(id.len() as u64 + 96 + answer.map_or(0, RecordedAnswer::size)).unwrap_or(i64::MAX)
}

fn dedup_record(
    t: &Transaction<'_>,
    service: &str,
    id: &str,
    recorded: &Recorded,
    until: SystemTime,
    sizes: &mut Sizes,
) -> rusqlite::Result<()> {
    let replaced = t
        .query_row(
            "SELECT size FROM dedup WHERE service = ?1 AND id = ?2",
            [service, id],
            |r| r.get::<_, i64>(0),
        )
        .optional()?;
    let size = dedup_size(id, recorded);
    let answer = recorded.answer.as_ref();
    t.prepare_cached(
        "INSERT OR REPLACE INTO dedup (service, id, digest, credentials, created_at, expires_at,
             status, content_type, body, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(rusqlite::params![
        service,
        id,
        recorded.digest,
        &recorded.credentials.0[..],
        millis(crate::clock::now()),
        millis(until),
        answer.map(|a| i64::from(a.status)),
        answer.and_then(|a| a.content_type.as_deref()),
        answer.map(|a| &a.body[..]),
        size,
    ])?;
    sizes.dedup = (sizes.dedup + unsigned(size)).saturating_sub(unsigned(replaced.unwrap_or(0)));
    Ok(())
}

fn result(
    t: &Transaction<'_>,
    id: &str,
    now: SystemTime,
) -> rusqlite::Result<Option<StoredResult>> {
    t.prepare_cached(
        "SELECT credentials, state, status, content_type, body FROM results
         WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
    )?
    .query_row(rusqlite::params![id, millis(now)], |r| {
        let state: String = r.get(1)?;
        let state = match state.as_str() {
            "dead" => ResultState::Dead,
            "done" => match answer_of(r.get(2)?, r.get(3)?, r.get(4)?) {
                Some(answer) => ResultState::Done(answer),
                None => ResultState::Dead,
            },
            _ => ResultState::Pending,
        };
        Ok(StoredResult {
            credentials: credentials(r.get(0)?),
            state,
        })
    })
    .optional()
}

/// Drops message ids and results past their time (when `purge`), then the
/// oldest of each while their bytes exceed their bound, counting those.
/// Pending results are never dropped: their message is still queued.
fn keep_within(
    t: &Transaction<'_>,
    sizes: &mut Sizes,
    bounds: Bounds,
    purge: bool,
) -> rusqlite::Result<()> {
    let drop_rows = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> rusqlite::Result<(u64, u64)> {
        let mut statement = t.prepare_cached(sql)?;
        let mut rows = statement.query(params)?;
        let (mut count, mut bytes) = (0, 0);
        while let Some(row) = rows.next()? {
            count += 1;
            bytes += unsigned(row.get(0)?);
        }
        Ok((count, bytes))
    };
    if purge {
        let now = millis(crate::clock::now());
        let (_, bytes) = drop_rows(
            "DELETE FROM dedup WHERE expires_at <= ?1 RETURNING size",
            &[&now],
        )?;
        sizes.dedup = sizes.dedup.saturating_sub(bytes);
        let (_, bytes) = drop_rows(
            "DELETE FROM results WHERE expires_at IS NOT NULL AND expires_at <= ?1 RETURNING size",
            &[&now],
        )?;
        sizes.results = sizes.results.saturating_sub(bytes);
    }
    while sizes.dedup > bounds.dedup {
        let (count, bytes) = drop_rows(
            "DELETE FROM dedup WHERE rowid IN
                 (SELECT rowid FROM dedup ORDER BY created_at LIMIT ?1) RETURNING size",
            &[&EVICT_BATCH],
        )?;
        if count == 0 {
            sizes.dedup = 0;
            break;
        }
        sizes.dedup = sizes.dedup.saturating_sub(bytes);
        sizes.dedup_evictions += count;
    }
    while sizes.results > bounds.results {
        let (count, bytes) = drop_rows(
            "DELETE FROM results WHERE id IN
                 (SELECT id FROM results WHERE state <> 'pending' ORDER BY created_at LIMIT ?1)
             RETURNING size",
            &[&EVICT_BATCH],
        )?;
        if count == 0 {
            break;
        }
        sizes.results = sizes.results.saturating_sub(bytes);
        sizes.results_evictions += count;
    }
    Ok(())
}

fn claim(t: &Transaction<'_>, now: SystemTime, limit: usize) -> rusqlite::Result<Claim> {
    let now = millis(now);
    // Past their time to deliver while they waited: dead, not delivered
    // late. A callback past its time is dead as a callback.
    let expired: Vec<(String, String)> = t
        .prepare_cached(
            "UPDATE messages SET state = 'dead', due = NULL,
                 reason = CASE WHEN phase = 'callback' THEN 'callback' ELSE 'expired' END,
                 last_error = COALESCE(last_error, 'not delivered in time (deliver_within, or the message''s wsu:Expires)')
             WHERE due IS NOT NULL AND deliver_by <= ?1
             RETURNING service, operation",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    mark_results_dead(t, now)?;
    // In due order; a message with an order key only when every earlier
    // message of its key is done (delivered, so gone, or dead).
    let mut select = t.prepare_cached(&format!(
        "SELECT seq, attempts, {PHASE_COLUMNS}, {MESSAGE_COLUMNS} FROM messages AS m
         WHERE due IS NOT NULL AND due <= ?1
           AND (order_key IS NULL OR NOT EXISTS (
               SELECT 1 FROM messages AS p
               WHERE p.order_key = m.order_key AND p.seq < m.seq AND p.state <> 'dead'))
         ORDER BY due, seq LIMIT ?2"
    ))?;
    let rows = select.query_map(
        rusqlite::params![now, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            let seq: i64 = r.get(0)?;
            let attempts: i64 = r.get(1)?;
            let phase = schema::phase_at(r, 2)?;
            let message = schema::message_at(r, 6)?;
            Ok((seq, attempts, phase, message))
        },
    )?;
    let mut claimed = Vec::new();
    for row in rows {
        let (seq, attempts, phase, message) = row?;
        claimed.push(Claimed {
            message,
            phase,
            attempt: u32::try_from(attempts + 1).unwrap_or(u32::MAX),
            token: seq,
        });
    }
    drop(select);
    let mut take = t.prepare_cached(
        "UPDATE messages SET state = 'in_flight', due = NULL, attempts = attempts + 1 WHERE seq = ?1",
    )?;
    for c in &claimed {
        take.execute([c.token])?;
    }
    Ok((claimed, expired))
}

/// The pending results of messages dead-lettered since: `410` from now,
/// kept for their retention.
fn mark_results_dead(t: &Transaction<'_>, now: i64) -> rusqlite::Result<()> {
    t.prepare_cached(
        "UPDATE results SET state = 'dead', created_at = ?1,
             expires_at = ?1 + (SELECT m.result_retention_ms FROM messages AS m
                                WHERE m.id = results.id AND m.state = 'dead' LIMIT 1)
         WHERE state = 'pending' AND id IN (SELECT id FROM messages WHERE state = 'dead' AND reply = 'poll')",
    )?
    .execute([now])?;
    Ok(())
}

fn finish_one(
    t: &Transaction<'_>,
    seq: i64,
    finish: &Finish,
    sizes: &mut Sizes,
) -> rusqlite::Result<()> {
    let now = millis(crate::clock::now());
    match finish {
        Finish::Delivered(answer) => {
            let removed: Option<(i64, String, String, i64)> = t
                .query_row(
                    "DELETE FROM messages WHERE seq = ?1
                     RETURNING size, id, reply, result_retention_ms",
                    [seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((size, id, reply, retention)) = removed else {
                return Ok(());
            };
            sizes.queue = sizes.queue.saturating_sub(unsigned(size));
            if let (Some(answer), "poll") = (answer, reply.as_str()) {
                let new_size = result_size(&id, Some(answer));
                let old: Option<i64> = t
                    .query_row("SELECT size FROM results WHERE id = ?1", [&id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                t.prepare_cached(
                    "UPDATE results SET state = 'done', status = ?2, content_type = ?3,
                         body = ?4, retention_ms = ?5, created_at = ?6,
                         expires_at = ?6 + ?5, size = ?7
                     WHERE id = ?1",
                )?
                .execute(rusqlite::params![
                    id,
                    i64::from(answer.status),
                    answer.content_type.as_deref(),
                    &answer.body[..],
                    retention,
                    now,
                    new_size
                ])?;
                if let Some(old) = old {
                    sizes.results =
                        (sizes.results + unsigned(new_size)).saturating_sub(unsigned(old));
                }
            }
        }
        Finish::CallBack {
            to,
            content_type,
            body,
        } => {
            let added = i64::try_from(body.len() + to.len()).unwrap_or(i64::MAX);
            t.prepare_cached(
                "UPDATE messages SET phase = 'callback', callback_to = ?2,
                     callback_content_type = ?3, callback_body = ?4, state = 'ready',
                     attempts = 0, due = ?5, deliver_by = ?5 + deliver_within_ms,
                     last_error = NULL, size = size + ?6
                 WHERE seq = ?1",
            )?
            .execute(rusqlite::params![
                seq,
                to,
                content_type.as_deref(),
                &body[..],
                now,
                added
            ])?;
            sizes.queue += unsigned(added);
        }
        Finish::RetryAt { at, error } => {
            t.prepare_cached(
                "UPDATE messages SET state = 'retrying', due = ?2, last_error = ?3 WHERE seq = ?1",
            )?
            .execute(rusqlite::params![seq, millis(*at), error])?;
        }
        Finish::Dead { reason, error } => {
            t.prepare_cached(
                "UPDATE messages SET state = 'dead', due = NULL, reason = ?2, last_error = ?3
                 WHERE seq = ?1",
            )?
            .execute(rusqlite::params![seq, reason.label(), error])?;
            mark_results_dead(t, now)?;
        }
    }
    Ok(())
}

fn stats(t: &Transaction<'_>, sizes: &Sizes, bounds: Bounds) -> rusqlite::Result<QueueStats> {
    let now = millis(crate::clock::now());
    let count = |sql: &str| -> rusqlite::Result<u64> {
        t.query_row(sql, [now], |r| r.get::<_, i64>(0))
            .map(unsigned)
    };
    Ok(QueueStats {
        depths: depths(t, now)?,
        bytes: sizes.queue,
        max_bytes: bounds.queue,
        dedup_records: count("SELECT COUNT(*) FROM dedup WHERE expires_at > ?1")?,
        dedup_bytes: sizes.dedup,
        dedup_evictions: 0,
        results: count(
            "SELECT COUNT(*) FROM results WHERE state <> 'pending' AND expires_at > ?1",
        )?,
        results_bytes: sizes.results,
        results_evictions: 0,
    })
}

fn depths(t: &Transaction<'_>, now: i64) -> rusqlite::Result<Vec<Depth>> {
    let mut select = t.prepare_cached(
        "SELECT service, operation, state, COUNT(*), MIN(accepted_at) FROM messages
         GROUP BY service, operation, state ORDER BY service, operation",
    )?;
    let rows = select.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
        ))
    })?;
    let mut depths: Vec<Depth> = Vec::new();
    for row in rows {
        let (service, operation, state, count, oldest) = row?;
        let fresh = depths
            .last()
            .is_none_or(|d| d.service != service || d.operation != operation);
        if fresh {
            depths.push(Depth {
                service: service.clone(),
                operation: operation.clone(),
                ..Depth::default()
            });
        }
        let Some(depth) = depths.last_mut() else {
            continue;
        };
        let count = u64::try_from(count).unwrap_or(0);
        match state.as_str() {
            "ready" => depth.ready = count,
            "in_flight" => depth.in_flight = count,
            "retrying" => depth.retrying = count,
            _ => depth.dead = count,
        }
        if state != "dead" {
            let age = u64::try_from((now - oldest) / 1000).unwrap_or(0);
            depth.oldest_seconds = depth.oldest_seconds.max(age);
        }
    }
    Ok(depths)
}

fn dead_letters(
    t: &Transaction<'_>,
    service: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut select = t.prepare_cached(
        "SELECT id, service, operation, attempts, accepted_at, reason, last_error FROM messages
         WHERE state = 'dead' AND (?1 IS NULL OR service = ?1) ORDER BY seq LIMIT ?2",
    )?;
    let rows = select.query_map(
        rusqlite::params![service, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(DeadLetter {
                id: r.get(0)?,
                service: r.get(1)?,
                operation: r.get(2)?,
                attempts: u32::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                accepted_at: schema::time(r.get(4)?),
                reason: r
                    .get::<_, Option<String>>(5)?
                    .unwrap_or_else(|| DeadReason::Failed.label().to_owned()),
                last_error: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            })
        },
    )?;
    rows.collect()
}
