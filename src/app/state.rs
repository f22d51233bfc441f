//! What every request shares: the settings soapcache started with, the
//! policy set (swapped whole on reload), the cache tiers, the memo,
//! flights in progress, the upstream client and the metrics. One
//! `Arc<State>` is handed to every connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::Uri;

use crate::cache::coalesce::Coalescer;
use crate::cache::memo::Memo;
use crate::cache::memory::MemoryTier;
use crate::cache::shared::{SharedCache, SharedSettings, SharedSetupError};
use crate::cache::tier::{Tier, Tiers};
use crate::delivery::{Dedup, Queue, QueueSettings, Results, SetupError, Stores};
use crate::http::client::UpstreamClient;
use crate::http::listener::ClientLimits;
use crate::http::tls::TlsError;
use crate::key::lookup::LookupKey;
use crate::ops::metrics::Metrics;
use crate::policy::{PolicyError, PolicySet};

/// Settings `serve` and `demo` start the proxy with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_upstream: Option<Uri>,
    /// Where policies were loaded from, for reloads.
    pub policy_path: Option<PathBuf>,
    pub cache_size: u64,
    pub max_body: u64,
    pub upstream_timeout: Duration,
    /// Add `X-Cache-Key` (the request's selector value) to SOAP answers.
    pub debug_headers: bool,
    /// A private CA for `https://` upstreams, besides the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// Requesters must send head and body within this time, and keep at
    /// most `max_connections` open.
    pub client_limits: ClientLimits,
    /// Where queued operations go (reference §10).
    pub queue: QueueSettings,
    /// `--shared-cache`: the Redis tier of a fleet (reference §13).
    pub shared_cache: Option<SharedSettings>,
}

pub struct State {
    pub policies: ArcSwap<PolicySet>,
    pub cache: Tiers,
    pub memo: Memo,
    pub metrics: Metrics,
    pub flights: Coalescer<LookupKey>,
    pub upstream: UpstreamClient,
    /// The queue of queued operations; `None` without one configured.
    pub queue: Option<Arc<dyn Queue>>,
    /// Where `dedup` remembers message ids (reference §11).
    pub dedup: Option<Arc<dyn Dedup>>,
    /// Where answers wait to be fetched (reference §12).
    pub results: Option<Arc<dyn Results>>,
    /// Repeats of a direct operation's message id waiting for the first's
    /// answer.
    pub repeats: crate::proxy::dedup::InFlight,
    /// The shared tier (also in `cache`), for the fleet lock and `/stats`.
    pub shared: Option<SharedCache>,
    pub settings: Settings,
}

/// Why the shared state could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Queue(#[from] SetupError),
    #[error(transparent)]
    SharedCache(#[from] SharedSetupError),
}

impl State {
    pub fn new(settings: Settings, policies: PolicySet) -> Result<Arc<State>, StateError> {
        let tls = crate::http::tls::client_config(settings.upstream_ca.as_deref())?;
        let stores = settings.queue.open()?;
        if let Some(e) = crate::delivery::unmet_need(&policies, &stores) {
            return Err(e.into());
        }
        let Stores {
            queue,
            dedup,
            results,
            ..
        } = stores;
        let metrics = Metrics::new();
        let memory = MemoryTier::new(settings.cache_size);
        let shared = match &settings.shared_cache {
            Some(shared) => {
                // A fleet waits on one instance's upstream request at most
                // this long before each instance asks on its own.
                let lock_ttl = (settings.upstream_timeout + Duration::from_secs(1))
                    .min(Duration::from_secs(10));
                let cache =
                    SharedCache::open(shared, memory.clone(), metrics.shared_cache(), lock_ttl)?;
                Some(cache)
            }
            None => None,
        };
        let tier = shared.clone().map(|s| Arc::new(s) as Arc<dyn Tier>);
        Ok(Arc::new(State {
            policies: ArcSwap::from_pointee(policies),
            cache: Tiers::new(memory, tier),
            // A 16th of the cache, within 1..64 MiB: see `cache::memo`.
            memo: Memo::new((settings.cache_size / 16).clamp(1 << 20, 64 << 20)),
            metrics,
            flights: Coalescer::default(),
            upstream: UpstreamClient::new(settings.upstream_timeout, tls),
            queue,
            dedup,
            results,
            repeats: Default::default(),
            shared,
            settings,
        }))
    }

    pub fn stores(&self) -> Stores {
        Stores {
            queue: self.queue.clone(),
            dedup: self.dedup.clone(),
            results: self.results.clone(),
            records_need_shared_cache: matches!(
                self.settings.queue.backend,
                crate::delivery::QueueBackend::Amqp(_)
            ) && self.settings.queue.shared_cache.is_none(),
        }
    }

    /// Loads the policy set again and swaps it in whole; on any error the
    /// running set stays. Returns the new set's summary, or every problem.
    pub fn reload(&self) -> Result<Vec<String>, Vec<PolicyError>> {
        let Some(path) = &self.settings.policy_path else {
            return Ok(Vec::new());
        };
        let loaded = PolicySet::load(path).and_then(|set| {
            match crate::delivery::unmet_need(&set, &self.stores()) {
                Some(e) => Err(vec![PolicyError {
                    file: path.clone(),
                    line: 0,
                    message: e.to_string(),
                }]),
                None => Ok(set),
            }
        });
        match loaded {
            Ok(set) => {
                let summary = set.summary();
                self.policies.store(Arc::new(set));
                // A remembered selector value is only valid for the policy
                // that computed it.
                self.memo.forget_all();
                self.metrics.reloaded();
                tracing::info!(path = %path.display(), services = summary.len(), "policies reloaded");
                Ok(summary)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("reload refused, keeping the running policies: {e}");
                }
                Err(errors)
            }
        }
    }
}
