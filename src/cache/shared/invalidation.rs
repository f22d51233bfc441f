//! Purges and flushes across the fleet. The instance that is asked applies
//! one in Redis and publishes it on [`CHANNEL`]; every other instance
//! applies it to its memory tier (which also voids the memo's shortcuts to
//! what went: they are checked against the tier's generation).
//!
//! Redis pub/sub keeps nothing for a subscriber that is away, so whenever
//! this instance (re)subscribes it flushes its memory tier first: whatever
//! it missed meanwhile cannot be served afterwards. A command that fails
//! while the subscription stays open (a slow Redis) costs no flush: nothing
//! published was missed. An invalidation that
//! Redis could not take (down, slow) is kept here and applied and
//! published once Redis is back, before this instance serves from Redis
//! again: a purge is never lost, only late.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{tier_error, SharedCache};
use crate::cache::tier::TierError;

/// The channel every instance of a fleet publishes on and listens to.
pub const CHANNEL: &str = "soapcache:invalidate";

/// Invalidations kept while Redis is away, at most: past it, they are
/// replaced by one flush (which covers them all).
const MAX_PENDING: usize = 1024;

/// How long the subscription task gives Redis to answer while it
/// reconnects (no request waits on it).
const PROBE_LIMIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Invalidation {
    /// `DELETE /cache?key=K[&service=S][&operation=O]`, or an
    /// `[[invalidate]]` rule.
    Purge {
        key: String,
        service: Option<String>,
        operation: Option<String>,
    },
    /// `DELETE /cache`.
    Flush,
}

/// What goes over the channel: an invalidation, and who sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    from: String,
    #[serde(flatten)]
    invalidation: Invalidation,
}

/// Invalidations Redis has not taken yet.
#[derive(Debug, Default)]
pub(super) struct Pending(Vec<Invalidation>);

impl Pending {
    fn push(&mut self, invalidation: Invalidation) {
        if invalidation == Invalidation::Flush || self.0.len() >= MAX_PENDING {
            self.0 = vec![Invalidation::Flush];
        } else if self.0.first() != Some(&Invalidation::Flush) {
            self.0.push(invalidation);
        }
    }
}

impl SharedCache {
    pub(super) fn keep_pending(&self, invalidation: Invalidation) {
        let mut pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.push(invalidation);
    }

    pub(super) fn pending_len(&self) -> usize {
        let pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.0.len()
    }

    /// Applies `invalidation` in Redis, then publishes it; how many entries
    /// Redis held.
    pub(super) async fn apply_and_publish(
        &self,
        invalidation: &Invalidation,
        limit: Duration,
    ) -> Result<u64, TierError> {
        let removed = match invalidation {
            Invalidation::Purge {
                key,
                service,
                operation,
            } => {
                self.purge_in_redis(key, service.as_deref(), operation.as_deref(), limit)
                    .await?
            }
            // A flush may scan a large database: it has longer, and only
            // an operator waits on it.
            Invalidation::Flush => self.flush_in_redis(limit.max(PROBE_LIMIT)).await?,
        };
        let message = Message {
            from: self.0.instance.clone(),
            invalidation: invalidation.clone(),
        };
        let text = serde_json::to_string(&message)
            .map_err(|e| tier_error(format!("publish: {e}"), Some(Box::new(e))))?;
        let mut commands = self.commands();
        let _: u64 = self
            .call(
                "publish",
                limit,
                redis::cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(text)
                    .query_async(&mut commands),
            )
            .await?;
        Ok(removed)
    }

    /// An invalidation another instance published, applied here.
    fn received(&self, payload: &[u8]) {
        let message: Message = match serde_json::from_slice(payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!("unreadable message on {CHANNEL} ignored: {e}");
                return;
            }
        };
        if message.from == self.0.instance {
            return;
        }
        let memory = &self.0.memory;
        match message.invalidation {
            Invalidation::Purge {
                key,
                service,
                operation,
            } => {
                let purged = memory.purge(&key, service.as_deref(), operation.as_deref());
                tracing::debug!(key, purged, from = message.from, "purge from the fleet");
            }
            Invalidation::Flush => {
                let flushed = memory.flush();
                tracing::debug!(flushed, from = message.from, "flush from the fleet");
            }
        }
    }

    /// Keeps this instance subscribed until `stop` resolves: connects,
    /// subscribes, applies what is pending, flushes the memory tier, and
    /// only then lets requests use Redis; receives invalidations until the
    /// subscription or a command fails, then starts over with backoff.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = async {
                match self.resubscribe().await {
                    Ok(stream) => {
                        self.listen(stream).await;
                        true
                    }
                    Err(e) => {
                        self.0.health.down("connect", &e.message);
                        false
                    }
                }
            };
            tokio::select! {
                connected = attempt => {
                    if connected {
                        backoff = Duration::from_millis(100);
                    }
                }
                _ = &mut stop => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn resubscribe(&self) -> Result<redis::aio::PubSubStream, TierError> {
        let mut pubsub = within("subscribe", self.0.client.get_async_pubsub()).await?;
        within("subscribe", pubsub.subscribe(CHANNEL)).await?;
        // The command connection too: requests use it as soon as this
        // returns.
        let mut commands = self.commands();
        within("ping", redis::cmd("PING").query_async::<()>(&mut commands)).await?;
        self.replay_pending().await?;
        let flushed = self.0.memory.flush();
        tracing::debug!(flushed, "subscribed to {CHANNEL}; local tier flushed");
        self.0.health.up();
        Ok(pubsub.into_on_message())
    }

    /// Applies the invalidations Redis missed, in order; those it still
    /// cannot take stay.
    async fn replay_pending(&self) -> Result<(), TierError> {
        let pending = {
            let mut pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut pending.0)
        };
        let mut left = pending.into_iter();
        while let Some(invalidation) = left.next() {
            let applied = super::REPLAYING
                .scope(true, self.apply_and_publish(&invalidation, PROBE_LIMIT))
                .await;
            if let Err(e) = applied {
                let mut kept = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::take(&mut kept.0);
                for again in std::iter::once(invalidation).chain(left).chain(newer) {
                    kept.push(again);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    async fn listen(&self, mut stream: redis::aio::PubSubStream) {
        loop {
            tokio::select! {
                message = stream.next() => match message {
                    Some(message) => self.received(message.get_payload_bytes()),
                    None => {
                        self.0.health.failed("subscription", "connection closed");
                        return;
                    }
                },
                _ = self.0.health.lost() => {
                    if !self.is_up() && !self.recover(&mut stream).await {
                        return;
                    }
                }
            }
        }
    }

    /// A command failed or was slow while the subscription stayed open:
    /// nothing published was missed, so the local tier is kept; commands
    /// resume once Redis answers a `PING` and has taken what was kept.
    /// False when the subscription ends meanwhile (then it is renewed, and
    /// the local tier flushed).
    async fn recover(&self, stream: &mut redis::aio::PubSubStream) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let probe = async {
                let mut commands = self.commands();
                within("ping", redis::cmd("PING").query_async::<()>(&mut commands)).await?;
                self.replay_pending().await
            };
            let mut probe = std::pin::pin!(probe);
            let probed = loop {
                tokio::select! {
                    result = &mut probe => break result,
                    message = stream.next() => match message {
                        Some(message) => self.received(message.get_payload_bytes()),
                        None => return false,
                    },
                }
            };
            if probed.is_ok() {
                self.0.health.up();
                return true;
            }
            let pause = tokio::time::sleep(backoff);
            let mut pause = std::pin::pin!(pause);
            loop {
                tokio::select! {
                    _ = &mut pause => break,
                    message = stream.next() => match message {
                        Some(message) => self.received(message.get_payload_bytes()),
                        None => return false,
                    },
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// `step` within [`PROBE_LIMIT`], its error as a tier error.
async fn within<T>(
    what: &'static str,
    step: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, TierError> {
    match tokio::time::timeout(PROBE_LIMIT, step).await {
        Ok(result) => result.map_err(|e| tier_error(format!("{what}: {e}"), Some(Box::new(e)))),
        Err(_) => Err(tier_error(format!("{what}: no answer within 1s"), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge(key: &str) -> Invalidation {
        Invalidation::Purge {
            key: key.into(),
            service: None,
            operation: Some("Price".into()),
        }
    }

    #[test]
    fn kept_invalidations_stay_in_order_and_a_flush_covers_them_all() {
        let mut pending = Pending::default();
        pending.push(purge("A"));
        pending.push(purge("B"));
        assert_eq!(pending.0, [purge("A"), purge("B")]);
        pending.push(Invalidation::Flush);
        pending.push(purge("C"));
        assert_eq!(pending.0, [Invalidation::Flush]);
        let mut many = Pending::default();
        for i in 0..=MAX_PENDING {
            many.push(purge(&i.to_string()));
        }
        assert_eq!(many.0, [Invalidation::Flush], "past the bound, one flush");
    }

    #[test]
    fn the_channel_message_is_json_naming_its_sender() {
        let message = Message {
            from: "i1".into(),
            invalidation: purge("K"),
        };
        let text = serde_json::to_string(&message).unwrap();
        assert_eq!(
            text,
            r#"{"from":"i1","op":"purge","key":"K","service":null,"operation":"Price"}"#
        );
        let read: Message = serde_json::from_str(r#"{"from":"i2","op":"flush"}"#).unwrap();
        assert_eq!(read.invalidation, Invalidation::Flush);
    }
}
