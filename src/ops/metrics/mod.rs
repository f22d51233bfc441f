//! Prometheus metrics (reference §8) and the counters behind `/stats`.
//!
//! Label cardinality is bounded: the `operation` label is the local name of
//! an operation the policy declares, or of the first `MAX_OPERATION_LABELS`
//! others seen; anything past that is folded into `other`, so a requester
//! cannot grow the metric set without limit.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cache::memory::MemoryTier;
use crate::delivery::QueueStats;

mod delivery;
mod shared;

pub use shared::SharedCacheMetrics;

const MAX_OPERATION_LABELS: usize = 200;

/// How a request was answered: the `result` label and the `X-Cache` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Bypass,
    Stale,
    /// Answered by soapcache itself with an error (bad request, upstream down).
    Error,
    /// Accepted into the queue (202).
    Queued,
    /// A repeat of a message id answered with the recorded answer
    /// (reference §11).
    Replay,
}

impl CacheResult {
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
            CacheResult::Stale => "stale",
            CacheResult::Error => "error",
            CacheResult::Queued => "queued",
            CacheResult::Replay => "replay",
        }
    }
}

/// The counters one kind of answer increments (see `Metrics::counter`).
#[derive(Debug, Clone)]
pub struct RequestCounter {
    requests: Counter,
    service: Arc<ServiceCounts>,
    result: CacheResult,
}

impl RequestCounter {
    pub fn count(&self) {
        self.requests.inc();
        let c = &self.service;
        let counter = match self.result {
            CacheResult::Hit => &c.hits,
            CacheResult::Miss => &c.misses,
            CacheResult::Bypass => &c.bypasses,
            CacheResult::Stale => &c.stale,
            CacheResult::Error => &c.errors,
            CacheResult::Queued => &c.queued,
            CacheResult::Replay => &c.replays,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    operation: String,
    result: &'static str,
}

#[derive(Debug, Default)]
struct ServiceCounts {
    hits: AtomicU64,
    misses: AtomicU64,
    bypasses: AtomicU64,
    stale: AtomicU64,
    errors: AtomicU64,
    queued: AtomicU64,
    replays: AtomicU64,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Histogram,
    entries: Gauge,
    bytes: Gauge,
    memo_bodies: Gauge,
    memo_bytes: Gauge,
    evictions: Counter,
    coalesced: Counter,
    upstream_errors: Counter,
    reloads: Counter,
    resident_bytes: Gauge,
    open_fds: Gauge,
    operation_labels: RwLock<HashSet<String>>,
    per_service: RwLock<HashMap<String, Arc<ServiceCounts>>>,
    pub delivery: delivery::DeliveryMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let entries = Gauge::default();
        let bytes = Gauge::default();
        let memo_bodies = Gauge::default();
        let memo_bytes = Gauge::default();
        let evictions = Counter::default();
        let coalesced = Counter::default();
        let upstream_errors = Counter::default();
        let reloads = Counter::default();
        let delivery = delivery::DeliveryMetrics::register(&mut registry);
        registry.register(
            "soapcache_requests",
            "Requests answered, by service, operation and cache result",
            requests.clone(),
        );
        registry.register(
            "soapcache_upstream_request_duration_seconds",
            "Time from sending a request upstream to having its response",
            upstream_duration.clone(),
        );
        registry.register(
            "soapcache_cache_entries",
            "Entries in the cache",
            entries.clone(),
        );
        registry.register(
            "soapcache_cache_bytes",
            "Bytes held by cache entries (by weight)",
            bytes.clone(),
        );
        registry.register(
            "soapcache_memo_bodies",
            "Repeated request bodies remembered with their cache key (no XML pass on a repeat)",
            memo_bodies.clone(),
        );
        registry.register(
            "soapcache_memo_bytes",
            "Bytes held by remembered request bodies (by weight), besides the cache's",
            memo_bytes.clone(),
        );
        registry.register(
            "soapcache_evictions",
            "Entries evicted to keep the cache within its size",
            evictions.clone(),
        );
        registry.register(
            "soapcache_coalesced_requests",
            "Requests answered by waiting for an identical request already upstream",
            coalesced.clone(),
        );
        registry.register(
            "soapcache_upstream_errors",
            "Upstream exchanges that failed (connect error, timeout, broken response)",
            upstream_errors.clone(),
        );
        registry.register(
            "soapcache_policy_reloads",
            "Successful policy reloads",
            reloads.clone(),
        );
        // Process figures under the names Prometheus client libraries use.
        let resident_bytes = Gauge::default();
        let open_fds = Gauge::default();
        let start_time: Gauge = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            resident_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            open_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            start_time.clone(),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        start_time.set(i64::try_from(started.as_secs()).unwrap_or(0));
        registry.register(
            "soapcache_build",
            "soapcache build information",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            upstream_duration,
            entries,
            bytes,
            memo_bodies,
            memo_bytes,
            evictions,
            coalesced,
            upstream_errors,
            reloads,
            resident_bytes,
            open_fds,
            operation_labels: RwLock::new(HashSet::new()),
            per_service: RwLock::new(HashMap::new()),
            delivery,
        }
    }

    /// Counts one answered request. `declared` says the operation is named
    /// in a policy, so its label is always allowed.
    pub fn record(
        &self,
        service: &str,
        operation: Option<&str>,
        declared: bool,
        result: CacheResult,
    ) {
        self.counter(service, operation, declared, result).count();
    }

    /// The counters an answer of this kind increments, looked up once:
    /// the memo keeps the counter of a repeat request's hits, so counting
    /// them needs no label lookup.
    pub fn counter(
        &self,
        service: &str,
        operation: Option<&str>,
        declared: bool,
        result: CacheResult,
    ) -> RequestCounter {
        let operation = match operation {
            None => "none".to_owned(),
            Some(op) if declared => op.to_owned(),
            Some(op) => self.bounded_operation_label(op),
        };
        let requests = self
            .requests
            .get_or_create(&RequestLabels {
                service: service.to_owned(),
                operation,
                result: result.label(),
            })
            .clone();
        RequestCounter {
            requests,
            service: self.service_counts(service),
            result,
        }
    }

    fn bounded_operation_label(&self, op: &str) -> String {
        if self
            .operation_labels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(op)
        {
            return op.to_owned();
        }
        let mut labels = self
            .operation_labels
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if labels.len() < MAX_OPERATION_LABELS {
            labels.insert(op.to_owned());
            op.to_owned()
        } else {
            "other".to_owned()
        }
    }

    fn service_counts(&self, service: &str) -> Arc<ServiceCounts> {
        if let Some(c) = self
            .per_service
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
        {
            return c.clone();
        }
        self.per_service
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(service.to_owned())
            .or_default()
            .clone()
    }

    /// See [`delivery::DeliveryMetrics::delivery`].
    pub fn delivery(
        &self,
        service: &str,
        operation: &str,
        result: &'static str,
        took: Option<Duration>,
    ) {
        self.delivery.delivery(service, operation, result, took);
    }

    pub fn upstream_duration(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    pub fn coalesced(&self) {
        self.coalesced.inc();
    }

    pub fn upstream_error(&self) {
        self.upstream_errors.inc();
    }

    pub fn reloaded(&self) {
        self.reloads.inc();
    }

    /// The broker's series (reference §13.4) as `broker` says now;
    /// registered by the first call, so only a queue with a broker has
    /// them.
    pub fn broker(&self, broker: &crate::delivery::amqp::BrokerStats) {
        self.delivery.set_broker(&self.registry, broker);
    }

    /// Registers the shared tier's series (see [`SharedCacheMetrics`]).
    pub fn shared_cache(&self) -> SharedCacheMetrics {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        SharedCacheMetrics::register(&mut registry)
    }

    /// The Prometheus text exposition, with the cache gauges read now;
    /// `memo` is the memo's `(bodies, bytes)`.
    pub fn encode(
        &self,
        store: &MemoryTier,
        memo: (u64, u64),
        queue: Option<&QueueStats>,
    ) -> String {
        if let Some(queue) = queue {
            self.delivery.set_queue(queue);
        }
        self.memo_bodies
            .set(i64::try_from(memo.0).unwrap_or(i64::MAX));
        self.memo_bytes
            .set(i64::try_from(memo.1).unwrap_or(i64::MAX));
        self.entries
            .set(i64::try_from(store.entry_count()).unwrap_or(i64::MAX));
        self.bytes
            .set(i64::try_from(store.weighted_bytes()).unwrap_or(i64::MAX));
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Counters only go up: add what the store counted since last time.
        let evicted = store.evictions();
        let seen = self.evictions.get();
        if evicted > seen {
            self.evictions.inc_by(evicted - seen);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// `/stats`: totals and per-service figures as JSON.
    pub fn stats(&self, store: &MemoryTier) -> serde_json::Value {
        let per_store = store.per_service();
        let counts = self.per_service.read().unwrap_or_else(|p| p.into_inner());
        let mut services = BTreeMap::new();
        let (mut hits, mut misses) = (0u64, 0u64);
        let names: HashSet<&String> = counts.keys().chain(per_store.keys()).collect();
        for name in names {
            let c = counts.get(name).cloned().unwrap_or_default();
            let (entries, bytes) = per_store.get(name).copied().unwrap_or_default();
            let h = c.hits.load(Ordering::Relaxed);
            let m = c.misses.load(Ordering::Relaxed);
            hits += h;
            misses += m;
            services.insert(
                name.clone(),
                serde_json::json!({
                    "entries": entries,
                    "bytes": bytes,
                    "hits": h,
                    "misses": m,
                    "bypasses": c.bypasses.load(Ordering::Relaxed),
                    "stale": c.stale.load(Ordering::Relaxed),
                    "errors": c.errors.load(Ordering::Relaxed),
                    "queued": c.queued.load(Ordering::Relaxed),
                    "replays": c.replays.load(Ordering::Relaxed),
                    "hit_ratio": ratio(h, m),
                }),
            );
        }
        serde_json::json!({
            "entries": store.entry_count(),
            "bytes": store.weighted_bytes(),
            "hits": hits,
            "misses": misses,
            "hit_ratio": ratio(hits, misses),
            "evictions": store.evictions(),
            "services": services,
        })
    }
}

/// VmRSS from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn ratio(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_series_of_the_spec() {
        let m = Metrics::new();
        let store = MemoryTier::new(1 << 20);
        m.record(
            "catalog",
            Some("CatalogPriceRequest"),
            true,
            CacheResult::Hit,
        );
        m.coalesced();
        m.upstream_error();
        m.upstream_duration(Duration::from_millis(3));
        let text = m.encode(&store, (0, 0), None);
        for name in [
            "soapcache_requests_total{",
            "soapcache_upstream_request_duration_seconds_bucket",
            "soapcache_cache_entries ",
            "soapcache_cache_bytes ",
            "soapcache_evictions_total ",
            "soapcache_coalesced_requests_total 1",
            "soapcache_upstream_errors_total 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(r#"service="catalog""#) && text.contains(r#"result="hit""#));
    }

    #[test]
    fn undeclared_operation_labels_are_bounded() {
        let m = Metrics::new();
        for i in 0..(MAX_OPERATION_LABELS + 50) {
            m.record("default", Some(&format!("Op{i}")), false, CacheResult::Miss);
        }
        let text = m.encode(&MemoryTier::new(1024), (0, 0), None);
        assert!(text.contains(r#"operation="other""#));
        assert!(!text.contains(&format!("Op{}", MAX_OPERATION_LABELS + 10)));
    }
}
