//! The shared cache tier's metrics (reference §13), registered only when
//! soapcache runs with `--shared-cache`: an instance without one exports
//! no `soapcache_shared_cache_up`, so an alert on it cannot fire for it.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Cheap handles (each an `Arc` inside): the shared tier keeps a copy.
#[derive(Debug, Clone, Default)]
pub struct SharedCacheMetrics {
    pub up: Gauge,
    pub errors: Counter,
    pub hits: Counter,
}

impl SharedCacheMetrics {
    pub(super) fn register(registry: &mut Registry) -> SharedCacheMetrics {
        let metrics = SharedCacheMetrics::default();
        registry.register(
            "soapcache_shared_cache_up",
            "1 while the shared cache (Redis) is connected and subscribed, else 0",
            metrics.up.clone(),
        );
        registry.register(
            "soapcache_shared_cache_errors",
            "Shared cache commands that failed or outlasted --shared-cache-timeout",
            metrics.errors.clone(),
        );
        registry.register(
            "soapcache_shared_cache_hits",
            "Local misses answered from the shared cache",
            metrics.hits.clone(),
        );
        metrics
    }
}
