//! The RabbitMQ queue backend (`--queue amqp://…`, reference §10, §13):
//! queued messages live in the broker, so that every instance of a fleet
//! accepts and any instance's workers deliver.
//!
//! - [`link`]: the connection, reconnected with backoff by soapcache
//!   itself, and publishing with a confirm (a 202 only after it);
//! - [`topology`]: each service's durable queues (work, ordered
//!   partitions, backoff steps, dead letters);
//! - [`encoding`]: a message in an AMQP body and headers;
//! - [`consumers`]: the workers: manual acknowledgement once an attempt's
//!   outcome is final, prefetch bounded by `--delivery-concurrency`;
//! - [`dead`]: `/dead-letters` on the dead-letter queues.
//!
//! `dedup` ids and results to poll are not kept here: with
//! `--shared-cache` they are in Redis ([`crate::delivery::records`]).

mod consumers;
mod dead;
mod encoding;
mod link;
mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::records::{Claim, RedisRecords};
use super::{
    Accepted, DeadLetter, DedupClaim, Depth, Message, Queue, QueueError, QueueStats, ReplyPlan,
    Which,
};
use crate::app::shutdown::Shutdown;
use crate::app::state::State;
use encoding::Parcel;
use link::Link;

/// `/queue` and `/metrics` read the broker's counts at most this often;
/// a scrape in between gets the last.
const STATS_FOR: Duration = Duration::from_secs(1);

/// What `/metrics` says of the broker: connected or not, and publisher
/// confirms by result since start.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerStats {
    pub up: bool,
    pub confirms_ack: u64,
    pub confirms_nack: u64,
    pub confirms_timeout: u64,
}

pub struct AmqpQueue {
    link: Arc<Link>,
    /// The link's task, started by the first use (`run`, normally).
    connecting: std::sync::Once,
    records: Option<RedisRecords>,
    concurrency: usize,
    draining: AtomicBool,
    /// Services with queued operations (from the policies, kept by the
    /// workers) and those published to: what `/queue` and `/dead-letters`
    /// look at, with each one's queued operations.
    services: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// Attempts under way in this instance, by service.
    in_flight: Mutex<BTreeMap<String, u64>>,
    stats: tokio::sync::Mutex<Option<(Instant, QueueStats)>>,
    /// Set when this instance changed the queues: the next read asks the
    /// broker instead of the cached counts.
    stats_stale: AtomicBool,
    /// One scan of the dead letters at a time in this instance: a scan
    /// holds the messages it has read until it is done.
    scanning: tokio::sync::Mutex<()>,
}

impl AmqpQueue {
    /// The queue on the broker at `url`. No connection is made here: a
    /// setup refused right after (a policy this queue cannot serve) exits
    /// without having touched the broker; see [`AmqpQueue::connect`].
    pub fn open(url: &str, records: Option<RedisRecords>, concurrency: usize) -> AmqpQueue {
        let link = Link::new(url.to_owned());
        AmqpQueue {
            connecting: std::sync::Once::new(),
            link,
            records,
            concurrency: concurrency.max(1),
            draining: AtomicBool::new(false),
            services: Mutex::default(),
            in_flight: Mutex::default(),
            stats: tokio::sync::Mutex::new(None),
            stats_stale: AtomicBool::new(false),
            scanning: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the connection task, once (within the runtime).
    fn connect(&self) {
        self.connecting
            .call_once(|| drop(tokio::spawn(self.link.clone().run())));
    }

    pub fn broker(&self) -> BrokerStats {
        let c = &self.link.confirms;
        BrokerStats {
            up: self.link.is_up(),
            confirms_ack: c.ack.load(Ordering::Relaxed),
            confirms_nack: c.nack.load(Ordering::Relaxed),
            confirms_timeout: c.timeout.load(Ordering::Relaxed),
        }
    }

    fn know(&self, service: &str, operation: &str) {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.to_owned())
            .or_default()
            .insert(operation.to_owned());
    }

    fn known(&self) -> Vec<(String, BTreeSet<String>)> {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, o)| (s.clone(), o.clone()))
            .collect()
    }

    fn in_flight_changed(&self, service: &str, up: bool) {
        self.stats_stale.store(true, Ordering::Relaxed);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = in_flight.entry(service.to_owned()).or_default();
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    /// Publishes `parcel` to the queue its message goes to.
    async fn enqueue(&self, parcel: &Parcel) -> Result<(), QueueError> {
        let m = &parcel.message;
        let queue = topology::route(&m.service, m.order_key.as_deref());
        let (body, properties) = parcel.encode();
        self.link
            .publish(&m.service, &queue, &body, properties)
            .await
    }

    async fn accept_new(
        &self,
        message: Message,
        dedup: Option<DedupClaim>,
    ) -> Result<Accepted, QueueError> {
        self.connect();
        if self.draining.load(Ordering::Relaxed) {
            return Err(QueueError::Draining);
        }
        // Broker down: 503 at once, before any id is claimed.
        self.link.live().await?;
        self.know(&message.service, &message.operation);
        let claimed = match (&dedup, &self.records) {
            (Some(claim), Some(records)) => {
                match records.claim(&message.service, &message.id, claim).await? {
                    Claim::New => true,
                    Claim::Seen(seen) if seen.digest == claim.digest => {
                        return Ok(Accepted::Duplicate)
                    }
                    Claim::Seen(_) => return Err(QueueError::Reused),
                }
            }
            _ => false,
        };
        let give_back = || async {
            if let (true, Some(records)) = (claimed, &self.records) {
                records.release(&message.service, &message.id).await;
            }
        };
        if let (
            ReplyPlan::Poll {
                retention,
                credentials,
            },
            Some(records),
        ) = (&message.reply, &self.records)
        {
            if let Err(e) = records
                .pending(&message.id, *credentials, message.deliver_by, *retention)
                .await
            {
                give_back().await;
                return Err(e);
            }
        }
        let parcel = Parcel::new(message.clone());
        match self.enqueue(&parcel).await {
            Ok(()) => {
                self.stats_stale.store(true, Ordering::Relaxed);
                Ok(Accepted::New)
            }
            Err(e) => {
                give_back().await;
                Err(e)
            }
        }
    }

    async fn read_stats(&self) -> Result<QueueStats, QueueError> {
        self.connect();
        let mut cached = self.stats.lock().await;
        let stale = self.stats_stale.swap(false, Ordering::Relaxed);
        if let Some((at, stats)) = cached.as_ref() {
            if at.elapsed() < STATS_FOR && !stale {
                return Ok(stats.clone());
            }
        }
        let live = self.link.live().await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| self.link.failed(&live, &e))?;
        let mut depths = Vec::new();
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (service, operations) in self.known() {
            let counts = topology::declare(&channel, &service)
                .await
                .map_err(|e| QueueError::Unavailable(format!("RabbitMQ: {e}")))?;
            // The broker counts by queue, and a service's operations share
            // its queues: one operation named when there is one.
            let operation = match operations.len() {
                1 => operations.into_iter().next().unwrap_or_default(),
                _ => "*".to_owned(),
            };
            depths.push(Depth {
                in_flight: in_flight.get(&service).copied().unwrap_or(0),
                service,
                operation,
                ready: counts.ready,
                retrying: counts.retrying,
                dead: counts.dead,
                oldest_seconds: 0,
            });
        }
        let _ = channel.close(200, "stats read").await;
        let stats = QueueStats {
            depths,
            ..QueueStats::default()
        };
        *cached = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

impl Queue for AmqpQueue {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    fn connected(&self) -> bool {
        self.link.is_up()
    }

    fn broker(&self) -> Option<BrokerStats> {
        Some(AmqpQueue::broker(self))
    }

    fn accept(
        &self,
        message: Message,
        dedup: Option<DedupClaim>,
    ) -> BoxFuture<'_, Result<Accepted, QueueError>> {
        Box::pin(self.accept_new(message, dedup))
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        Box::pin(self.read_stats())
    }

    fn dead_letters<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, QueueError>> {
        Box::pin(async move {
            let mut list = Vec::new();
            self.scan_dead(service, |parcel| {
                list.push(dead::listed(parcel));
                dead::Keep::Leave
            })
            .await?;
            // Queue order is dead-lettering order; the list is by
            // acceptance, as the embedded queue's.
            list.sort_by_key(|d| d.accepted_at);
            list.truncate(limit);
            Ok(list)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Message>, QueueError>> {
        Box::pin(async move {
            let mut found = None;
            self.scan_dead(None, |parcel| {
                if found.is_none() && parcel.message.id == id {
                    found = Some(parcel.message.clone());
                }
                dead::Keep::Leave
            })
            .await?;
            Ok(found)
        })
    }

    fn retry_dead<'a>(&'a self, which: Which<'a>) -> BoxFuture<'a, Result<u64, QueueError>> {
        Box::pin(self.retry_dead_letters(which))
    }

    fn delete_dead<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, QueueError>> {
        Box::pin(async move {
            let deleted = self
                .scan_dead(None, |parcel| {
                    if parcel.message.id == id {
                        dead::Keep::Drop
                    } else {
                        dead::Keep::Leave
                    }
                })
                .await?;
            Ok(deleted > 0)
        })
    }

    fn run(self: Arc<Self>, state: Arc<State>, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        self.connect();
        Box::pin(consumers::deliver_until(self, state, shutdown))
    }
}
