//! The workers: on each connection, a consumer per service's work queue
//! (any number of messages at once, bounded by `--delivery-concurrency`:
//! the channel's prefetch and a semaphore) and one per ordered partition
//! (one message at a time: the broker hands a partition to a single
//! consumer of the fleet).
//!
//! A message is acknowledged only once its attempt's outcome is final and,
//! when it goes on (a retry, a callback, a dead letter), once its next form
//! is published and confirmed: a crash in between delivers it again (a
//! duplicate), never loses it. An ordered message is retried in place
//! (unacknowledged, by the same worker) so that nothing of its value
//! overtakes it; its attempts are then counted by that worker, and start
//! again from the message's headers if the worker dies.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::Semaphore;

use super::encoding::{DeadNote, DecodeError, Parcel};
use super::link::{LinkState, Live};
use super::{topology, AmqpQueue};
use crate::app::shutdown::Shutdown;
use crate::app::state::State;
use crate::delivery::retry::DeadReason;
use crate::delivery::{worker, Claimed, Finish, Phase, ReplyPlan};
use crate::http::listener::DRAIN_GRACE;

/// A message back from a backoff step less than this before its time is
/// attempted now.
const EARLY_ENOUGH: Duration = Duration::from_millis(20);
/// New services in the policies (after a reload) are consumed within this.
const SERVICES_EVERY: Duration = Duration::from_secs(2);

/// How a message's time with this instance ends.
enum Outcome {
    Finish(Finish),
    /// Shutdown came while an ordered message waited for its retry: back
    /// to its partition, first in line.
    GiveBack,
}

struct Workers {
    queue: Arc<AmqpQueue>,
    state: Arc<State>,
    permits: Arc<Semaphore>,
    shutdown: Shutdown,
}

pub async fn deliver_until(queue: Arc<AmqpQueue>, state: Arc<State>, shutdown: Shutdown) {
    let workers = Arc::new(Workers {
        permits: Arc::new(Semaphore::new(queue.concurrency)),
        queue,
        state,
        shutdown: shutdown.clone(),
    });
    // Known before the first connection: `/queue` counts their queues
    // from the first read.
    for (service, operation) in workers.state.policies.load().queued_operations() {
        workers.queue.know(&service, &operation);
    }
    let mut link = workers.queue.link.watch();
    loop {
        tokio::select! {
            up = link.wait_for(|s| *s == LinkState::Up) => if up.is_err() { break },
            () = shutdown.triggered() => break,
        }
        let Ok(live) = workers.queue.link.live().await else {
            continue;
        };
        if let Err(e) = workers.clone().consume(&live, &mut link).await {
            tracing::warn!("queue: consumers stopped: {e}");
            // The link notices a lost connection within a second.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if shutdown.is_triggered() {
            break;
        }
    }
    workers
        .queue
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Every permit back: no attempt in flight any more.
    let all = u32::try_from(workers.queue.concurrency).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_GRACE, workers.permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("delivery attempts still in flight after {DRAIN_GRACE:?}: the broker delivers them again");
    }
}

impl Workers {
    /// Consumes on `live` until the connection goes or shutdown.
    async fn consume(
        self: Arc<Self>,
        live: &Live,
        link: &mut tokio::sync::watch::Receiver<LinkState>,
    ) -> lapin::Result<()> {
        let prefetch = u16::try_from(self.queue.concurrency).unwrap_or(u16::MAX);
        let work = live.connection.create_channel().await?;
        work.basic_qos(prefetch, BasicQosOptions { global: true })
            .await?;
        let ordered = live.connection.create_channel().await?;
        ordered
            .basic_qos(prefetch, BasicQosOptions { global: true })
            .await?;
        ordered
            .basic_qos(1, BasicQosOptions { global: false })
            .await?;
        let mut consuming = std::collections::HashSet::new();
        let mut tags = Vec::new();
        loop {
            let queued = self.state.policies.load().queued_operations();
            for (service, operation) in queued {
                self.queue.know(&service, &operation);
                if !consuming.insert(service.clone()) {
                    continue;
                }
                if let Err(e) = self.queue.link.ensure_topology(live, &service).await {
                    tracing::warn!(service, "queue: cannot declare the service's queues: {e}");
                    consuming.remove(&service);
                    continue;
                }
                tags.push((
                    work.clone(),
                    self.clone()
                        .start(&work, &topology::work(&service), false)
                        .await?,
                ));
                for p in 0..topology::PARTITIONS {
                    let name = topology::partition(&service, p);
                    tags.push((
                        ordered.clone(),
                        self.clone().start(&ordered, &name, true).await?,
                    ));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(SERVICES_EVERY) => {}
                changed = link.changed() => if changed.is_err() || *link.borrow() != LinkState::Up { return Ok(()) },
                () = self.shutdown.triggered() => {
                    // No new deliveries; those taken finish and are acked
                    // on these channels, which stay open.
                    for (channel, tag) in tags {
                        let _ = channel.basic_cancel(&tag, BasicCancelOptions::default()).await;
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Starts a consumer on `queue`; returns its tag.
    async fn start(
        self: Arc<Self>,
        channel: &Channel,
        queue: &str,
        ordered: bool,
    ) -> lapin::Result<String> {
        let tag = format!("soapcache-{}-{queue}", uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                queue,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let workers = self;
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    () = workers.shutdown.triggered() => break,
                };
                let Some(Ok(delivery)) = next else { break };
                // In flight from the moment the broker handed it over:
                // no longer ready there.
                let decoded = Parcel::decode(&delivery.data, &delivery.properties);
                let service = decoded
                    .as_ref()
                    .map(|p| p.message.service.clone())
                    .unwrap_or_default();
                workers.queue.in_flight_changed(&service, true);
                let Ok(permit) = workers.permits.clone().acquire_owned().await else {
                    break;
                };
                if ordered {
                    workers.handle(delivery, decoded, true).await;
                    workers.queue.in_flight_changed(&service, false);
                    drop(permit);
                } else {
                    let workers = workers.clone();
                    tokio::spawn(async move {
                        workers.handle(delivery, decoded, false).await;
                        workers.queue.in_flight_changed(&service, false);
                        drop(permit);
                    });
                }
            }
        });
        Ok(tag)
    }

    async fn handle(
        &self,
        delivery: Delivery,
        decoded: Result<Parcel, DecodeError>,
        ordered: bool,
    ) {
        let mut parcel = match decoded {
            Ok(parcel) => parcel,
            Err(e) => {
                // Rejected: the work queue routes it to the dead letters.
                tracing::error!(
                    "queue: a message that cannot be read goes to the dead letters: {e}"
                );
                let _ = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: false })
                    .await;
                return;
            }
        };
        if let Some(due) = parcel.due {
            if let Ok(early) = due.duration_since(crate::clock::now()) {
                if early > EARLY_ENOUGH && !ordered {
                    self.settle(
                        parcel,
                        Outcome::Finish(Finish::RetryAt {
                            at: due,
                            error: String::new(),
                        }),
                        delivery,
                        false,
                    )
                    .await;
                    return;
                }
            }
        }
        let outcome = self.attempt(&mut parcel, ordered).await;
        self.settle(parcel, outcome, delivery, true).await;
    }

    /// Attempts until the outcome leaves this worker: at once for an
    /// unordered message, after in-place retries for an ordered one.
    async fn attempt(&self, parcel: &mut Parcel, ordered: bool) -> Outcome {
        loop {
            let now = crate::clock::now();
            if parcel.message.deliver_by <= now {
                worker::expired_while_waiting(
                    &self.state,
                    &parcel.message.service,
                    &parcel.message.operation,
                );
                return Outcome::Finish(Finish::Dead {
                    reason: DeadReason::Expired,
                    error: "not delivered within deliver_within".into(),
                });
            }
            let claimed = Claimed {
                message: parcel.message.clone(),
                phase: parcel.phase.clone(),
                attempt: parcel.attempts + 1,
                token: 0,
            };
            let finish = worker::deliver(&self.state, &claimed).await;
            parcel.attempts += 1;
            match finish {
                Finish::RetryAt { at, .. } if ordered => {
                    let wait = at.duration_since(crate::clock::now()).unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.triggered() => return Outcome::GiveBack,
                    }
                }
                Finish::CallBack {
                    to,
                    content_type,
                    body,
                } if ordered => {
                    parcel.phase = Phase::Callback {
                        to,
                        content_type,
                        body,
                    };
                    parcel.attempts = 0;
                    parcel.message.deliver_by =
                        crate::clock::now() + parcel.message.retry.deliver_within;
                }
                other => return Outcome::Finish(other),
            }
        }
    }

    /// Records the outcome: publishes what comes next, then acknowledges.
    async fn settle(
        &self,
        mut parcel: Parcel,
        outcome: Outcome,
        delivery: Delivery,
        attempted: bool,
    ) {
        let id = parcel.message.id.clone();
        let service = parcel.message.service.clone();
        let next = match outcome {
            Outcome::GiveBack => {
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
                return;
            }
            Outcome::Finish(finish) => finish,
        };
        let published = match next {
            Finish::Delivered(answer) => {
                if let (
                    ReplyPlan::Poll {
                        retention,
                        credentials,
                    },
                    Some(records),
                    Some(answer),
                ) = (&parcel.message.reply, &self.queue.records, answer.as_ref())
                {
                    if let Err(e) = records
                        .finished(&id, *credentials, Some(answer), *retention)
                        .await
                    {
                        tracing::warn!(message_id = %id, "the answer to poll for is not kept: {e}");
                    }
                }
                Ok(())
            }
            Finish::CallBack {
                to,
                content_type,
                body,
            } => {
                parcel.phase = Phase::Callback {
                    to,
                    content_type,
                    body,
                };
                parcel.attempts = 0;
                parcel.due = None;
                parcel.message.deliver_by =
                    crate::clock::now() + parcel.message.retry.deliver_within;
                self.queue.enqueue(&parcel).await
            }
            Finish::RetryAt { at, .. } => {
                parcel.due = Some(at);
                let wait = at.duration_since(crate::clock::now()).unwrap_or_default();
                let queue = topology::delay(&service, topology::step_for(wait));
                let (body, properties) = parcel.encode();
                self.queue
                    .link
                    .publish(&service, &queue, &body, properties)
                    .await
            }
            Finish::Dead { reason, error } => {
                parcel.dead = Some(DeadNote {
                    reason: reason.label().to_owned(),
                    last_error: error,
                });
                parcel.due = None;
                let (body, properties) = parcel.encode();
                let queue = topology::dead(&service);
                let published = self
                    .queue
                    .link
                    .publish(&service, &queue, &body, properties)
                    .await;
                if let (
                    ReplyPlan::Poll {
                        retention,
                        credentials,
                    },
                    Some(records),
                ) = (&parcel.message.reply, &self.queue.records)
                {
                    if let Err(e) = records.finished(&id, *credentials, None, *retention).await {
                        tracing::warn!(message_id = %id, "the dead-lettering is not kept for polling: {e}");
                    }
                }
                published
            }
        };
        match published {
            Ok(()) => {
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(message_id = %id, "queue: acknowledgement lost, the broker delivers the message again: {e}");
                }
            }
            Err(e) => {
                if attempted {
                    tracing::warn!(message_id = %id, "queue: the attempt's outcome could not be published; the broker delivers the message again: {e}");
                }
                let _ = delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
            }
        }
    }
}
