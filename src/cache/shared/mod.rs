//! The shared tier (reference §13): Redis behind the memory tier, for a
//! fleet of instances that should behave as one cache.
//!
//! - [`tier`]: entries and lookup-key links in Redis ([`crate::cache::tier::Tier`]).
//! - [`lock`]: one upstream request per key across the fleet.
//! - [`invalidation`]: purges and flushes published on `soapcache:invalidate`
//!   and applied by every instance, and the subscription that receives them.
//! - [`health`]: connected or not, one log line per change.
//!
//! Nothing here is on the hit path: a request reaches Redis only after a
//! local miss. A request never fails because of Redis: every command is
//! bounded by `--shared-cache-timeout`, and while Redis is unreachable no
//! command is sent at all (the subscription task probes it instead).
//!
//! redis-rs's `ConnectionManager` multiplexes every command of the process
//! on one connection and reconnects it on its own; the subscription has a
//! connection of its own, as Redis requires.

mod health;
pub mod invalidation;
pub mod lock;
mod tier;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::cache::memory::MemoryTier;
use crate::cache::tier::TierError;
use crate::ops::metrics::SharedCacheMetrics;
use health::Health;
use invalidation::Pending;

/// Every key soapcache writes starts with this: a Redis shared with other
/// applications keeps their keys, and a flush removes only these.
const PREFIX: &str = "soapcache:";

/// What `--shared-cache` and `--shared-cache-timeout` say.
#[derive(Debug, Clone)]
pub struct SharedSettings {
    /// `redis://HOST:PORT[/DB]`
    pub url: String,
    /// The longest a request waits on Redis.
    pub timeout: Duration,
}

/// Why `--shared-cache` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--shared-cache {url}: {source}")]
pub struct SharedSetupError {
    url: String,
    #[source]
    source: redis::RedisError,
}

tokio::task_local! {
    /// Set while the subscription task replays kept invalidations: they
    /// go to Redis before requests may use it.
    static REPLAYING: bool;
}

/// A cheap handle on the shared tier.
#[derive(Clone)]
pub struct SharedCache(Arc<Inner>);

struct Inner {
    client: redis::Client,
    commands: ConnectionManager,
    timeout: Duration,
    /// Names this process in what it publishes, so that it does not apply
    /// its own invalidations twice.
    instance: String,
    /// How long a fleet lock holds when its holder never releases it.
    lock_ttl: Duration,
    locks_taken: AtomicU64,
    health: Health,
    /// Invalidations Redis could not take, applied when it is back.
    pending: Mutex<Pending>,
    memory: MemoryTier,
    metrics: SharedCacheMetrics,
}

impl SharedCache {
    /// The shared tier for `settings`, in front of nothing yet: no
    /// connection is made here (soapcache starts with Redis unreachable);
    /// [`SharedCache::run`] connects and subscribes. `lock_ttl` bounds how
    /// long the fleet waits on one instance's upstream request.
    pub fn open(
        settings: &SharedSettings,
        memory: MemoryTier,
        metrics: SharedCacheMetrics,
        lock_ttl: Duration,
    ) -> Result<SharedCache, SharedSetupError> {
        let failed = |source| SharedSetupError {
            url: settings.url.clone(),
            source,
        };
        let client = redis::Client::open(settings.url.as_str()).map_err(failed)?;
        // The manager's own limits match ours; its reconnect backoff stays
        // short, because while it reconnects no request is waiting on it.
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout.max(Duration::from_millis(500))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let commands =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(failed)?;
        metrics.up.set(0);
        Ok(SharedCache(Arc::new(Inner {
            client,
            commands,
            timeout: settings.timeout,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            lock_ttl,
            locks_taken: AtomicU64::new(0),
            health: Health::new(metrics.clone()),
            pending: Mutex::default(),
            memory,
            metrics,
        })))
    }

    /// Connected and subscribed: commands are sent.
    pub fn is_up(&self) -> bool {
        self.0.health.is_up()
    }

    pub fn hits(&self) -> u64 {
        self.0.metrics.hits.get()
    }

    pub fn errors(&self) -> u64 {
        self.0.metrics.errors.get()
    }

    /// `/stats`: which tier, and whether it is connected.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "enabled": true,
            "tier": "redis",
            "connected": self.is_up(),
            "hits": self.hits(),
            "errors": self.errors(),
            "pending_invalidations": self.pending_len(),
        })
    }

    /// Runs `command` on Redis within `limit`, when Redis is up. A failure
    /// or a timeout is counted, marks Redis down (logged once) and asks the
    /// subscription task to reconnect.
    async fn call<T>(
        &self,
        what: &'static str,
        limit: Duration,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, TierError> {
        let replaying = REPLAYING.try_with(|r| *r).unwrap_or(false);
        if !self.is_up() && !replaying {
            return Err(tier_error(format!("{what}: not connected"), None));
        }
        match tokio::time::timeout(limit, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.0.health.failed(what, &e.to_string());
                Err(tier_error(format!("{what}: {e}"), Some(Box::new(e))))
            }
            Err(_) => {
                let message = format!("no answer within {}", humantime::format_duration(limit));
                self.0.health.failed(what, &message);
                Err(tier_error(format!("{what}: {message}"), None))
            }
        }
    }

    fn commands(&self) -> ConnectionManager {
        self.0.commands.clone()
    }
}

fn tier_error(
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> TierError {
    TierError {
        tier: "shared",
        message,
        source,
    }
}
