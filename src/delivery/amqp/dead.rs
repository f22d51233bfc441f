//! `/dead-letters` on the dead-letter queues. RabbitMQ has no way to look
//! at a queue's messages in place: a scan takes each message with
//! `basic.get` (not acknowledged), decides, and closing its channel puts
//! the ones left back where they were. One scan at a time per instance;
//! a dead letter being scanned by another instance is not seen by this one
//! meanwhile.

use lapin::options::{BasicAckOptions, BasicGetOptions};

use super::encoding::Parcel;
use super::{topology, AmqpQueue};
use crate::delivery::{DeadLetter, QueueError, Which};

/// What a scan does with one dead letter.
pub enum Keep {
    Leave,
    Drop,
    /// Back to its service's queue, attempts reset.
    Retry,
}

pub fn listed(parcel: &Parcel) -> DeadLetter {
    let m = &parcel.message;
    let (reason, last_error) = parcel
        .dead
        .as_ref()
        .map(|d| (d.reason.clone(), d.last_error.clone()))
        .unwrap_or_default();
    DeadLetter {
        id: m.id.clone(),
        service: m.service.clone(),
        operation: m.operation.clone(),
        attempts: parcel.attempts,
        accepted_at: m.accepted_at,
        reason,
        last_error,
    }
}

impl AmqpQueue {
    /// Scans the dead letters of `service` (all when `None`), oldest
    /// first, asking `decide` of each; returns how many were dropped or
    /// retried.
    pub(super) async fn scan_dead(
        &self,
        service: Option<&str>,
        mut decide: impl FnMut(&Parcel) -> Keep,
    ) -> Result<u64, QueueError> {
        self.connect();
        let _one_at_a_time = self.scanning.lock().await;
        let live = self.link.live().await?;
        let mut changed = 0;
        for (name, _) in self.known() {
            if service.is_some_and(|s| s != name) {
                continue;
            }
            let channel = live
                .connection
                .create_channel()
                .await
                .map_err(|e| self.link.failed(&live, &e))?;
            let broker = |e: lapin::Error| QueueError::Unavailable(format!("RabbitMQ: {e}"));
            let counts = topology::declare(&channel, &name).await.map_err(broker)?;
            let queue = topology::dead(&name);
            for _ in 0..counts.dead {
                let Some(got) = channel
                    .basic_get(&queue, BasicGetOptions { no_ack: false })
                    .await
                    .map_err(broker)?
                else {
                    break;
                };
                let Ok(mut parcel) = Parcel::decode(&got.delivery.data, &got.delivery.properties)
                else {
                    tracing::warn!(queue, "a dead letter that cannot be read is left in place");
                    continue;
                };
                match decide(&parcel) {
                    Keep::Leave => {}
                    Keep::Drop => {
                        got.delivery
                            .acker
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(broker)?;
                        changed += 1;
                    }
                    Keep::Retry => {
                        let now = crate::clock::now();
                        parcel.attempts = 0;
                        parcel.due = None;
                        parcel.dead = None;
                        parcel.message.deliver_by = now + parcel.message.retry.deliver_within;
                        // Published (and confirmed) before the dead letter
                        // goes: a crash in between leaves both, never none.
                        self.enqueue(&parcel).await?;
                        got.delivery
                            .acker
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(broker)?;
                        changed += 1;
                    }
                }
            }
            // Closing gives back every message left unacknowledged.
            let _ = channel.close(200, "dead letters scanned").await;
        }
        Ok(changed)
    }

    pub(super) async fn retry_dead_letters(&self, which: Which<'_>) -> Result<u64, QueueError> {
        match which {
            Which::One(id) => {
                let mut done = false;
                self.scan_dead(None, |parcel| {
                    if !done && parcel.message.id == id {
                        done = true;
                        Keep::Retry
                    } else {
                        Keep::Leave
                    }
                })
                .await
            }
            Which::All { service } => self.scan_dead(service, |_| Keep::Retry).await,
        }
    }
}
