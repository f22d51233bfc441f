//! Queued delivery (reference §10): a write to a queued operation is
//! accepted durably, answered 202 at once, and delivered later by workers,
//! with retries, dead letters and per-`order_by` order.
//!
//! - [`accept`]: from a parsed request to a stored message and its 202 (or
//!   503), called by the proxy;
//! - [`Queue`]: what a queue backend does; [`store`] is the embedded one
//!   (SQLite in `--data-dir`), [`amqp`] the RabbitMQ one, with message ids
//!   and results in Redis ([`records`]) when `--shared-cache` is given;
//! - [`worker`]: one delivery attempt and what its answer means, the same
//!   for every backend; [`retry`]: what follows an attempt.

pub mod accept;
pub mod amqp;
pub mod records;
pub mod reply;
pub mod retry;
pub mod store;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::app::shutdown::Shutdown;
use crate::app::state::State;
use retry::DeadReason;

/// Where queued messages are kept (`--queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueBackend {
    /// SQLite in `--data-dir`.
    Embedded,
    /// A RabbitMQ broker's `amqp://` (or `amqps://`) URL.
    Amqp(String),
}

/// The queue flags `serve` starts with.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub data_dir: Option<PathBuf>,
    pub backend: QueueBackend,
    /// `--queue-max-bytes`.
    pub max_bytes: u64,
    /// `--delivery-concurrency`.
    pub concurrency: usize,
    /// `--dedup-max-bytes`.
    pub dedup_max_bytes: u64,
    /// `--results-max-bytes`.
    pub results_max_bytes: u64,
    /// `--shared-cache`: where the amqp backend keeps message ids and
    /// results (reference §13).
    pub shared_cache: Option<String>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            data_dir: None,
            backend: QueueBackend::Embedded,
            max_bytes: 1 << 30,
            concurrency: 16,
            dedup_max_bytes: 256 << 20,
            results_max_bytes: 256 << 20,
            shared_cache: None,
        }
    }
}

/// Why the configured queue cannot be used; said in one line at startup.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{service}: operation {operation} is queued (delivery = \"queued\") but no --data-dir is given: the embedded queue keeps messages in that directory")]
    NoDataDir { service: String, operation: String },
    #[error("{service}: operation {operation} uses {key} but no --data-dir is given: message ids and results are kept in that directory")]
    NoStore {
        service: String,
        operation: String,
        key: &'static str,
    },
    #[error("{service}: operation {operation} uses {key}, but --queue amqp:// keeps no message ids or results of its own: give --shared-cache redis://… so that the fleet shares them, or set {key} = 0")]
    NeedsSharedCache {
        service: String,
        operation: String,
        key: &'static str,
    },
    #[error("--queue amqps://…: TLS to RabbitMQ is not built yet; use amqp:// (on a trusted network or through a TLS tunnel)")]
    AmqpsNotBuilt,
    #[error("--shared-cache {url}: {source}")]
    Records {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot start the queue's store thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The stores the write path uses, each absent when not configured: the
/// queue, the message ids of `dedup` (reference §11) and the results kept
/// for polling (§12). The embedded store is all three.
#[derive(Clone, Default)]
pub struct Stores {
    pub queue: Option<Arc<dyn Queue>>,
    pub dedup: Option<Arc<dyn Dedup>>,
    pub results: Option<Arc<dyn Results>>,
    /// Message ids and results would be in Redis (`--queue amqp://`
    /// without `--shared-cache`): what a policy needing them is told.
    pub records_need_shared_cache: bool,
}

impl QueueSettings {
    /// The stores these settings ask for: none without a `--data-dir` on
    /// the embedded backend.
    pub fn open(&self) -> Result<Stores, SetupError> {
        match (&self.backend, &self.data_dir) {
            (QueueBackend::Amqp(url), _) if url.starts_with("amqps://") => {
                Err(SetupError::AmqpsNotBuilt)
            }
            (QueueBackend::Amqp(url), _) => {
                let records = match &self.shared_cache {
                    None => None,
                    Some(redis_url) => {
                        Some(records::RedisRecords::open(redis_url).map_err(|source| {
                            SetupError::Records {
                                url: redis_url.clone(),
                                source,
                            }
                        })?)
                    }
                };
                let queue = Arc::new(amqp::AmqpQueue::open(
                    url,
                    records.clone(),
                    self.concurrency,
                ));
                let dedup = records.clone().map(|r| Arc::new(r) as Arc<dyn Dedup>);
                let results = records.map(|r| Arc::new(r) as Arc<dyn Results>);
                Ok(Stores {
                    queue: Some(queue),
                    dedup,
                    results,
                    records_need_shared_cache: self.shared_cache.is_none(),
                })
            }
            (QueueBackend::Embedded, None) => Ok(Stores::default()),
            (QueueBackend::Embedded, Some(dir)) => {
                let bounds = store::Bounds {
                    queue: self.max_bytes,
                    dedup: self.dedup_max_bytes,
                    results: self.results_max_bytes,
                };
                let embedded = Arc::new(
                    store::EmbeddedQueue::open(dir, bounds, self.concurrency)
                        .map_err(SetupError::Thread)?,
                );
                Ok(Stores {
                    queue: Some(embedded.clone()),
                    dedup: Some(embedded.clone()),
                    results: Some(embedded),
                    records_need_shared_cache: false,
                })
            }
        }
    }
}

/// The first rule of the set that needs a store it does not have.
pub fn unmet_need(policies: &crate::policy::PolicySet, stores: &Stores) -> Option<SetupError> {
    if stores.queue.is_none() {
        if let Some((service, operation)) = policies.queued_operations().into_iter().next() {
            return Some(SetupError::NoDataDir { service, operation });
        }
    }
    type Uses = fn(&crate::policy::Rules) -> bool;
    let needs: [(&'static str, bool, Uses); 2] = [
        ("dedup", stores.dedup.is_some(), |r| !r.dedup.is_zero()),
        ("result_retention", stores.results.is_some(), |r| {
            r.result_retention.is_some_and(|d| !d.is_zero())
        }),
    ];
    for (key, present, uses) in needs {
        if present {
            continue;
        }
        if let Some((service, operation)) = policies.operations_where(uses).into_iter().next() {
            if stores.records_need_shared_cache {
                return Some(SetupError::NeedsSharedCache {
                    service,
                    operation,
                    key,
                });
            }
            return Some(SetupError::NoStore {
                service,
                operation,
                key,
            });
        }
    }
    None
}

/// How an operation's requests reach the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Forwarded while the requester waits (and cached when allowed).
    #[default]
    Direct,
    /// Stored, answered 202, delivered later.
    Queued,
}

impl DeliveryMode {
    pub fn label(self) -> &'static str {
        match self {
            DeliveryMode::Direct => "direct",
            DeliveryMode::Queued => "queued",
        }
    }
}

/// How hard a queued message is tried (policy keys of reference §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failed attempt; doubled after each next.
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// From acceptance: not delivered by then, dead-lettered as expired.
    pub deliver_within: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(300),
            deliver_within: Duration::from_secs(86_400),
        }
    }
}

/// A digest of the credentials a request carried (`Authorization`,
/// `Cookie`, a WS-Security header): an answer recorded for one is given
/// only to a request with the same. All zeros: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Credentials(pub [u8; 32]);

impl Credentials {
    pub fn of(parts: &[&[u8]]) -> Credentials {
        if parts.iter().all(|p| p.is_empty()) {
            return Credentials::default();
        }
        let mut hasher = blake3::Hasher::new();
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        Credentials(*hasher.finalize().as_bytes())
    }
}

/// An answer kept for a repeat (reference §11) or a poll (§12): status,
/// `Content-Type`, the stripped body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub status: u16,
    pub content_type: Option<Vec<u8>>,
    pub body: Bytes,
}

impl RecordedAnswer {
    pub fn size(&self) -> u64 {
        (self.body.len() + self.content_type.as_ref().map_or(0, Vec::len) + 64) as u64
    }
}

/// What a request's message id was seen with (reference §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The canonical digest of its operation element.
    pub digest: String,
    pub credentials: Credentials,
    /// The service's answer; `None` for a queued message (its 202 is all
    /// a repeat gets) or one still in flight.
    pub answer: Option<RecordedAnswer>,
}

/// A message id to remember with a queued message, in the same commit.
#[derive(Debug, Clone)]
pub struct DedupClaim {
    pub digest: String,
    pub credentials: Credentials,
    pub until: SystemTime,
}

/// How an accept went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// A repeat of a message id seen within its `dedup` window: not
    /// stored again.
    Duplicate,
}

/// Where a queued message's answer goes (reference §12).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReplyPlan {
    /// Nowhere: the service's answer is dropped.
    #[default]
    Drop,
    /// Kept for `GET /.results/ID` this long, for a fetch with these
    /// credentials.
    Poll {
        retention: Duration,
        credentials: Credentials,
    },
    /// POSTed to the requester's `ReplyTo` (faults to `FaultTo`).
    Callback(Callback),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub reply_to: String,
    pub fault_to: Option<String>,
    /// The request's `MessageID`, which the callback relates to.
    pub relates_to: String,
    /// The request's `Action`, for a default reply action.
    pub action: Option<String>,
    /// The WS-Addressing namespace the request used.
    pub namespace: String,
}

/// A kept answer as `GET /.results/ID` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultState {
    Pending,
    Done(RecordedAnswer),
    /// The message was dead-lettered.
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub credentials: Credentials,
    pub state: ResultState,
}

/// What a kept answer's id is found by, and what `dedup` keeps.
pub trait Dedup: Send + Sync {
    /// What `id` of `service` was recorded with, while its window lasts.
    fn lookup<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Recorded>, QueueError>>;

    /// Remembers `recorded` for `id` until `until` (replacing what was).
    fn record<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        recorded: Recorded,
        until: SystemTime,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}

/// Answers kept for polling (reference §12.2).
pub trait Results: Send + Sync {
    fn result<'a>(&'a self, id: &'a str)
        -> BoxFuture<'a, Result<Option<StoredResult>, QueueError>>;
}

/// A request accepted for delivery, as it is stored.
#[derive(Debug, Clone)]
pub struct Message {
    /// `X-Message-Id`: the request's WS-Addressing `MessageID`, or a
    /// generated `urn:uuid:`.
    pub id: String,
    pub service: String,
    /// The operation's local name (metric labels, `/queue`).
    pub operation: String,
    /// Where it goes: the upstream URI at acceptance.
    pub target: String,
    /// The end-to-end request headers as received (hop-by-hop ones and
    /// those soapcache sets on delivery left out).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The exact request bytes.
    pub body: Bytes,
    /// The requester's address, for `X-Forwarded-For`.
    pub remote: String,
    /// Messages of one service with the same key are delivered one at a
    /// time, in acceptance order.
    pub order_key: Option<String>,
    pub accepted_at: SystemTime,
    /// `accepted_at + deliver_within`, or earlier (`wsu:Expires`).
    pub deliver_by: SystemTime,
    pub retry: RetryPolicy,
    pub reply: ReplyPlan,
}

impl Message {
    /// What the message counts against `--queue-max-bytes`.
    pub fn size(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum();
        (self.body.len() + headers + self.target.len() + self.id.len() + 128) as u64
    }
}

/// What an attempt does: deliver the message to the service, or its answer
/// to the requester's callback address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Deliver,
    /// POST `body` (with `content_type`) to `to`.
    Callback {
        to: String,
        content_type: Option<Vec<u8>>,
        body: Bytes,
    },
}

/// A message taken for an attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: Message,
    pub phase: Phase,
    /// Which attempt this is, 1 for the first.
    pub attempt: u32,
    /// The backend's handle on it, for [`Queue::finish`].
    pub token: i64,
}

/// How a claimed message ends its attempt.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Done; the service's answer, kept when the message's reply plan
    /// polls.
    Delivered(Option<RecordedAnswer>),
    /// Delivered to the service; its answer goes to a callback address
    /// next (attempts start again).
    CallBack {
        to: String,
        content_type: Option<Vec<u8>>,
        body: Bytes,
    },
    RetryAt {
        at: SystemTime,
        error: String,
    },
    Dead {
        reason: DeadReason,
        error: String,
    },
}

/// One dead letter as `/dead-letters` lists it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub service: String,
    pub operation: String,
    pub attempts: u32,
    pub accepted_at: SystemTime,
    pub reason: String,
    pub last_error: String,
}

/// Messages of one service and operation, by state (reference §10).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depth {
    pub service: String,
    pub operation: String,
    pub ready: u64,
    pub in_flight: u64,
    pub retrying: u64,
    pub dead: u64,
    /// The oldest message not dead-lettered, accepted this long ago.
    pub oldest_seconds: u64,
}

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub depths: Vec<Depth>,
    pub bytes: u64,
    pub max_bytes: u64,
    /// Message ids remembered for `dedup`, their bytes, and how many were
    /// dropped to stay within `--dedup-max-bytes`.
    pub dedup_records: u64,
    pub dedup_bytes: u64,
    pub dedup_evictions: u64,
    /// Answers kept for polling, their bytes, and how many were dropped to
    /// stay within `--results-max-bytes`.
    pub results: u64,
    pub results_bytes: u64,
    pub results_evictions: u64,
}

/// Why a queue could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is full ({max_bytes} bytes): retry later")]
    Full { max_bytes: u64 },
    #[error("soapcache is shutting down: retry later")]
    Draining,
    #[error("message id reused for a different message")]
    Reused,
    #[error("the queue's store is unavailable: {0}")]
    Unavailable(String),
    #[error("the queue's store failed: {0}")]
    Store(#[from] rusqlite::Error),
}

/// Which dead letters a retry is about.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    One(&'a str),
    All { service: Option<&'a str> },
}

/// What a queue backend does. Accepting is durable: `accept` returns only
/// once the message would survive a crash.
pub trait Queue: Send + Sync {
    /// `embedded` or `amqp`.
    fn kind(&self) -> &'static str;

    /// Whether the store (or broker) answered last time it was asked.
    fn connected(&self) -> bool;

    /// The broker's connection and publisher confirms, for a backend
    /// that has a broker.
    fn broker(&self) -> Option<amqp::BrokerStats> {
        None
    }

    /// Stores `message`; with `dedup`, atomically with its id: a repeat
    /// within the window is not stored again.
    fn accept(
        &self,
        message: Message,
        dedup: Option<DedupClaim>,
    ) -> BoxFuture<'_, Result<Accepted, QueueError>>;

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>>;

    fn dead_letters<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, QueueError>>;

    /// A dead letter's message as it was received.
    fn dead_letter<'a>(&'a self, id: &'a str)
        -> BoxFuture<'a, Result<Option<Message>, QueueError>>;

    /// Back to the queue with attempts reset; how many went.
    fn retry_dead<'a>(&'a self, which: Which<'a>) -> BoxFuture<'a, Result<u64, QueueError>>;

    /// Dropped; whether there was one.
    fn delete_dead<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, QueueError>>;

    /// Runs the delivery workers until `shutdown`, then lets attempts in
    /// flight finish (bounded) and returns.
    fn run(self: Arc<Self>, state: Arc<State>, shutdown: Shutdown) -> BoxFuture<'static, ()>;
}
