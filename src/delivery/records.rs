//! Message ids of `dedup` (reference §11) and answers kept for polling
//! (§12) in Redis, for a queue the fleet shares (`--queue amqp://…` with
//! `--shared-cache redis://…`): whichever instance a repeat or a poll
//! reaches sees what another recorded.
//!
//! - `soapcache:dedup:<service>:<id>`: what the id was seen with, expiring
//!   with its window; claimed with `SET NX`, so that of two instances
//!   accepting the same id at once exactly one stores the message;
//! - `soapcache:result:<id>`: `pending` from acceptance, then `done` (with
//!   the answer) or `dead`, expiring with the retention.
//!
//! Connections as the shared tier makes them: redis-rs's
//! `ConnectionManager`, which reconnects on its own, each command bounded
//! by a timeout. Redis unreachable: the accept answers 503 (the claim
//! cannot be made), a poll answers 503.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use super::{
    Credentials, Dedup, DedupClaim, QueueError, Recorded, RecordedAnswer, ResultState, Results,
    StoredResult,
};

/// Longer than the shared cache's: an accept can wait for Redis a little,
/// a cache lookup cannot.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a pending result stays after acceptance at most, beyond the
/// message's own time to deliver (a result whose message was lost to an
/// operator's purge must not stay forever).
const PENDING_SLACK: Duration = Duration::from_secs(3_600);

#[derive(Clone)]
pub struct RedisRecords {
    commands: ConnectionManager,
}

/// What a claim found.
pub enum Claim {
    /// The id is ours now.
    New,
    /// Already seen within its window.
    Seen(Recorded),
}

#[derive(Serialize, Deserialize)]
struct StoredAnswer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

#[derive(Serialize, Deserialize)]
struct StoredRecord {
    digest: String,
    credentials: String,
    answer: Option<StoredAnswer>,
}

#[derive(Serialize, Deserialize)]
struct StoredPoll {
    credentials: String,
    /// `pending`, `done` or `dead`.
    state: String,
    answer: Option<StoredAnswer>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

fn to_stored(answer: &RecordedAnswer) -> StoredAnswer {
    StoredAnswer {
        status: answer.status,
        content_type: answer.content_type.as_deref().map(b64),
        body: b64(&answer.body),
    }
}

fn from_stored(answer: StoredAnswer) -> RecordedAnswer {
    RecordedAnswer {
        status: answer.status,
        content_type: answer.content_type.as_deref().map(unb64),
        body: bytes::Bytes::from(unb64(&answer.body)),
    }
}

fn credentials_of(text: &str) -> Credentials {
    let bytes = unb64(text);
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(&bytes);
    }
    Credentials(out)
}

fn dedup_key(service: &str, id: &str) -> String {
    format!("soapcache:dedup:{service}:{id}")
}

fn result_key(id: &str) -> String {
    format!("soapcache:result:{id}")
}

/// Milliseconds from now to `until`, at least 1 (Redis refuses 0).
fn ttl_ms(until: SystemTime) -> u64 {
    let left = until
        .duration_since(crate::clock::now())
        .unwrap_or_default();
    u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("Redis (--shared-cache): {e}"))
}

impl RedisRecords {
    /// No connection is made here; the manager connects on first use.
    pub fn open(url: &str) -> Result<RedisRecords, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let commands = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisRecords { commands })
    }

    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Result<T, QueueError> {
        let mut connection = self.commands.clone();
        match tokio::time::timeout(COMMAND_TIMEOUT, command.query_async(&mut connection)).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable("no answer in time")),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<T>, QueueError> {
        let value: Option<String> = self.run(redis::cmd("GET").arg(key).clone()).await?;
        Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
    }

    /// Claims `id` for a message about to be queued, or says what it was
    /// seen with.
    pub async fn claim(
        &self,
        service: &str,
        id: &str,
        claim: &DedupClaim,
    ) -> Result<Claim, QueueError> {
        let record = StoredRecord {
            digest: claim.digest.clone(),
            credentials: b64(&claim.credentials.0),
            answer: None,
        };
        let value = serde_json::to_string(&record).unwrap_or_default();
        let key = dedup_key(service, id);
        // Twice at most: a record that expires between SET NX and GET is
        // claimed again.
        for _ in 0..2 {
            let set: Option<String> = self
                .run(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&value)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms(claim.until))
                        .clone(),
                )
                .await?;
            if set.is_some() {
                return Ok(Claim::New);
            }
            if let Some(seen) = self.lookup_record(service, id).await? {
                return Ok(Claim::Seen(seen));
            }
        }
        Err(unavailable("the message id could not be claimed"))
    }

    /// Gives a claim back: the message it was for was not queued.
    pub async fn release(&self, service: &str, id: &str) {
        let deleted: Result<i64, _> = self
            .run(redis::cmd("DEL").arg(dedup_key(service, id)).clone())
            .await;
        if let Err(e) = deleted {
            tracing::warn!(service, message_id = id, "a message id claimed for a message not queued stays claimed until its window ends: {e}");
        }
    }

    async fn lookup_record(&self, service: &str, id: &str) -> Result<Option<Recorded>, QueueError> {
        let stored: Option<StoredRecord> = self.get_json(dedup_key(service, id)).await?;
        Ok(stored.map(|r| Recorded {
            digest: r.digest,
            credentials: credentials_of(&r.credentials),
            answer: r.answer.map(from_stored),
        }))
    }

    async fn put_result(&self, id: &str, poll: &StoredPoll, ttl: u64) -> Result<(), QueueError> {
        let value = serde_json::to_string(poll).unwrap_or_default();
        let _: () = self
            .run(
                redis::cmd("SET")
                    .arg(result_key(id))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl)
                    .clone(),
            )
            .await?;
        Ok(())
    }

    /// A result to poll for, pending until the message is delivered.
    pub async fn pending(
        &self,
        id: &str,
        credentials: Credentials,
        deliver_by: SystemTime,
        retention: Duration,
    ) -> Result<(), QueueError> {
        let poll = StoredPoll {
            credentials: b64(&credentials.0),
            state: "pending".into(),
            answer: None,
        };
        let ttl = ttl_ms(deliver_by) + ms(retention) + ms(PENDING_SLACK);
        self.put_result(id, &poll, ttl).await
    }

    /// The message's answer, kept `retention` from now; or, with no
    /// answer, its dead-lettering.
    pub async fn finished(
        &self,
        id: &str,
        credentials: Credentials,
        answer: Option<&RecordedAnswer>,
        retention: Duration,
    ) -> Result<(), QueueError> {
        let poll = StoredPoll {
            credentials: b64(&credentials.0),
            state: if answer.is_some() { "done" } else { "dead" }.into(),
            answer: answer.map(to_stored),
        };
        self.put_result(id, &poll, ms(retention)).await
    }
}

impl Dedup for RedisRecords {
    fn lookup<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Recorded>, QueueError>> {
        Box::pin(self.lookup_record(service, id))
    }

    fn record<'a>(
        &'a self,
        service: &'a str,
        id: &'a str,
        recorded: Recorded,
        until: SystemTime,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let record = StoredRecord {
                digest: recorded.digest,
                credentials: b64(&recorded.credentials.0),
                answer: recorded.answer.as_ref().map(to_stored),
            };
            let value = serde_json::to_string(&record).unwrap_or_default();
            let _: () = self
                .run(
                    redis::cmd("SET")
                        .arg(dedup_key(service, id))
                        .arg(value)
                        .arg("PX")
                        .arg(ttl_ms(until))
                        .clone(),
                )
                .await?;
            Ok(())
        })
    }
}

impl Results for RedisRecords {
    fn result<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredResult>, QueueError>> {
        Box::pin(async move {
            let stored: Option<StoredPoll> = self.get_json(result_key(id)).await?;
            Ok(stored.map(|p| StoredResult {
                credentials: credentials_of(&p.credentials),
                state: match (p.state.as_str(), p.answer) {
                    ("done", Some(answer)) => ResultState::Done(from_stored(answer)),
                    ("pending", _) => ResultState::Pending,
                    _ => ResultState::Dead,
                },
            }))
        })
    }
}
