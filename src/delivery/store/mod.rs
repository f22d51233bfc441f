//! The embedded queue: SQLite in `--data-dir` (`queue.sqlite3` and its
//! WAL), one writer thread with group commit ([`writer`]), and the workers
//! that claim due messages from it and deliver them.
//!
//! SQLite rather than redb: an operator can read and repair the store with
//! the `sqlite3` tool, and WAL with `synchronous = FULL` gives crash-safe
//! commits whose cost is shared by every accept of a batch.

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinSet;

use super::{
    worker, Accepted, Claimed, DeadLetter, Dedup, DedupClaim, Message, Queue, QueueError,
    QueueStats, Recorded, Results, StoredResult, Which,
};
use crate::app::shutdown::Shutdown;
use crate::app::state::State;
use crate::http::listener::DRAIN_GRACE;
pub use writer::Bounds;
use writer::{Command, Shared, Writer};

/// The store's file in `--data-dir`.
pub const FILE: &str = "queue.sqlite3";

/// A queue that found no message due looks again at least this often
/// (besides being woken by accepts and finished attempts).
const IDLE_POLL: Duration = Duration::from_secs(1);

pub struct EmbeddedQueue {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    /// Set once shutdown begins: accepts answer 503 from then on.
    draining: AtomicBool,
    concurrency: usize,
    path: PathBuf,
}

impl EmbeddedQueue {
    /// The queue in `dir`, created if need be. A store that cannot be
    /// opened (a read-only or missing directory, a damaged file) does not
    /// stop soapcache: queued operations answer 503, the rest of the proxy
    /// runs, and the store is tried again every second.
    pub fn open(dir: &Path, bounds: Bounds, concurrency: usize) -> std::io::Result<EmbeddedQueue> {
        if let Err(e) = create_private_dir(dir) {
            tracing::error!(dir = %dir.display(), "cannot create --data-dir: {e}");
        }
        let path = dir.join(FILE);
        let shared = Arc::new(Shared {
            bytes: AtomicU64::new(0),
            dedup_bytes: AtomicU64::new(0),
            results_bytes: AtomicU64::new(0),
            dedup_evictions: AtomicU64::new(0),
            results_evictions: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let (commands, received) = std::sync::mpsc::channel();
        let writer = Writer::new(path.clone(), bounds, shared.clone());
        std::thread::Builder::new()
            .name("queue-store".into())
            .spawn(move || writer.run(received))?;
        Ok(EmbeddedQueue {
            commands,
            shared,
            draining: AtomicBool::new(false),
            concurrency: concurrency.max(1),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store answered its last commit.
    pub fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, QueueError>>) -> Command,
    ) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| QueueError::Unavailable("the store's thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| QueueError::Unavailable("the store's thread has stopped".into()))?
    }

    async fn claim(&self, state: &State, limit: usize) -> Result<Vec<Claimed>, QueueError> {
        let now = crate::clock::now();
        let (claimed, expired) = self
            .ask(|reply| Command::Claim { now, limit, reply })
            .await?;
        for (service, operation) in expired {
            worker::expired_while_waiting(state, &service, &operation);
        }
        Ok(claimed)
    }

    async fn next_due(&self) -> Option<SystemTime> {
        self.ask(Command::NextDue).await.ok().flatten()
    }

    /// Claims due messages as workers are free and delivers them, until
    /// shutdown; then waits for attempts in flight, at most `DRAIN_GRACE`.
    async fn deliver_until(self: Arc<Self>, state: Arc<State>, shutdown: Shutdown) {
        let workers = Arc::new(Semaphore::new(self.concurrency));
        let mut attempts = JoinSet::new();
        // Checked on every turn, not only where the loop waits: with a
        // backlog, each claim comes back full and the loop claims again
        // without waiting, so a waiting point alone would deliver the
        // whole backlog before it saw the shutdown.
        while !shutdown.is_triggered() {
            while attempts.try_join_next().is_some() {}
            let free = workers.available_permits();
            if free == 0 {
                tokio::select! {
                    permit = workers.clone().acquire_owned() => drop(permit),
                    () = shutdown.triggered() => break,
                }
                continue;
            }
            let claimed = match self.claim(&state, free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::debug!("no delivery claimed: {e}");
                    Vec::new()
                }
            };
            let full = claimed.len() == free;
            for claimed in claimed {
                let Ok(permit) = workers.clone().try_acquire_owned() else {
                    break;
                };
                let (queue, state) = (self.clone(), state.clone());
                attempts.spawn(async move {
                    let finish = worker::deliver(&state, &claimed).await;
                    let token = claimed.token;
                    if let Err(e) = queue.ask(|reply| Command::Finish(token, finish, reply)).await {
                        // The attempt stays in flight in the store and is
                        // retried at the next start.
                        tracing::error!(message_id = %claimed.message.id, "delivery outcome not recorded: {e}");
                    }
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            let wait = match self.next_due().await {
                Some(due) => due
                    .duration_since(crate::clock::now())
                    .unwrap_or_default()
                    .min(IDLE_POLL),
                None => IDLE_POLL,
            };
            tokio::select! {
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.triggered() => break,
            }
        }
        self.draining.store(true, Ordering::Relaxed);
        let in_flight = attempts.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for delivery attempts in flight");
        }
        let drained = tokio::time::timeout(DRAIN_GRACE, async {
            while attempts.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "delivery attempts still in flight after {DRAIN_GRACE:?}: they go again at the next start"
            );
        }
    }
}

/// `--data-dir` holds request bodies and headers (credentials among them):
/// created readable by soapcache's user only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Queue for EmbeddedQueue {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn connected(&self) -> bool {
        self.healthy()
    }

    fn accept(
        &self,
        message: Message,
        dedup: Option<DedupClaim>,
    ) -> BoxFuture<'_, Result<Accepted, QueueError>> {
        Box::pin(async move {
            if self.draining.load(Ordering::Relaxed) {
                return Err(QueueError::Draining);
            }
            self.ask(|reply| Command::Insert(Box::new(message), dedup, reply))
                .await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(async move {
            let mut stats = self.ask(Command::Stats).await?;
            stats.dedup_evictions = self.shared.dedup_evictions.load(Ordering::Relaxed);
            stats.results_evictions = self.shared.results_evictions.load(Ordering::Relaxed);
            Ok(stats)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, QueueError>> {
        let service = service.map(str::to_owned);
        Box::pin(self.ask(move |reply| Command::DeadLetters {
            service,
            limit,
            reply,
        }))
    }

    fn dead_letter<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Message>, QueueError>> {
        let id = id.to_owned();
        Box::pin(self.ask(move |reply| Command::DeadLetter(id, reply)))
    }

    fn retry_dead<'a>(&'a self, which: Which<'a>) -> BoxFuture<'a, Result<u64, QueueError>> {
        let (id, service) = match which {
            Which::One(id) => (Some(id.to_owned()), None),
            Which::All { service } => (None, service.map(str::to_owned)),
        };
        let now = crate::clock::now();
        Box::pin(self.ask(move |reply| Command::Retry {
            id,
            service,
            now,
            reply,
        }))
    }

    fn delete_dead<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, QueueError>> {
        let id = id.to_owned();
        Box::pin(self.ask(move |reply| Command::Delete(id, reply)))
    }

    fn run(self: Arc<Self>, state: Arc<State>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(self.deliver_until(state, shutdown))
    }
}

impl Dedup for EmbeddedQueue {
    fn lookup<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Recorded>, QueueError>> {
        let (service, id) = (service.to_owned(), id.to_owned());
        let now = crate::clock::now();
        Box::pin(self.ask(move |reply| Command::DedupLookup {
            service,
            id,
            now,
            reply,
        }))
    }

    fn record<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        recorded: Recorded,
        until: SystemTime,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let (service, id) = (service.to_owned(), id.to_owned());
        Box::pin(self.ask(move |reply| Command::DedupRecord {
            service,
            id,
            recorded: Box::new(recorded),
            until,
            reply,
        }))
    }
}

impl Results for EmbeddedQueue {
    fn result<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredResult>, QueueError>> {
        let id = id.to_owned();
        let now = crate::clock::now();
        Box::pin(self.ask(move |reply| Command::Result { id, now, reply }))
    }
}
