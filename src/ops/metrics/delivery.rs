//! The write path's metrics (reference §10–§12): queue depth by state, the
//! oldest message, the store's bytes, remembered message ids and kept
//! results (read from the queue at each scrape), deliveries and callbacks
//! by result, and duplicates suppressed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::delivery::QueueStats;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    service: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    service: String,
    operation: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    service: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfirmLabels {
    /// `ack`, `nack` or `timeout`.
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DuplicateLabels {
    service: String,
    /// `queued` (acknowledged again) or `direct` (answer replayed).
    delivery: &'static str,
}

/// A counter that follows a running total kept elsewhere (the store's
/// eviction counts), so that it stays a counter.
#[derive(Default)]
struct FollowedCounter {
    counter: Counter,
    seen: AtomicU64,
}

impl FollowedCounter {
    fn follow(&self, total: u64) {
        let before = self.seen.swap(total, Ordering::Relaxed);
        if total > before {
            self.counter.inc_by(total - before);
        }
    }
}

pub struct DeliveryMetrics {
    /// Messages delivered since start, by service and operation, for
    /// `/queue` (the queue itself forgets a message once delivered).
    delivered: Mutex<BTreeMap<(String, String), u64>>,
    messages: Family<StateLabels, Gauge>,
    oldest: Family<ServiceLabels, Gauge>,
    bytes: Gauge,
    deliveries: Family<DeliveryLabels, Counter>,
    duration: Histogram,
    callbacks: Family<ResultLabels, Counter>,
    duplicates: Family<DuplicateLabels, Counter>,
    dedup_records: Gauge,
    dedup_bytes: Gauge,
    dedup_evictions: FollowedCounter,
    results_retained: Gauge,
    results_bytes: Gauge,
    results_evictions: FollowedCounter,
    /// The broker's series, registered only for a queue with a broker.
    broker: std::sync::OnceLock<BrokerMetrics>,
}

/// The series of `--queue amqp://` (reference §13.4), under the names
/// deploy/'s dashboards and alerts use. Registered only on an instance
/// with a broker: an embedded instance exports none, so that it never
/// alerts as a broker down.
pub struct BrokerMetrics {
    up: Gauge,
    /// Publisher confirms by result, following the queue's own counts.
    confirms: [(&'static str, FollowedCounter); 3],
    family: Family<ConfirmLabels, Counter>,
}

impl BrokerMetrics {
    pub fn register(registry: &mut Registry) -> BrokerMetrics {
        let metrics = BrokerMetrics {
            up: Gauge::default(),
            confirms: [
                ("ack", FollowedCounter::default()),
                ("nack", FollowedCounter::default()),
                ("timeout", FollowedCounter::default()),
            ],
            family: Family::default(),
        };
        registry.register(
            "soapcache_queue_broker_up",
            "Whether the RabbitMQ broker of --queue amqp:// is connected (1) or not (0)",
            metrics.up.clone(),
        );
        registry.register(
            "soapcache_queue_confirms",
            "Publisher confirms of RabbitMQ by result (ack, nack, timeout)",
            metrics.family.clone(),
        );
        metrics
    }

    /// The series as the amqp queue says now.
    fn set(&self, broker: &crate::delivery::amqp::BrokerStats) {
        self.up.set(i64::from(broker.up));
        for (result, followed) in &self.confirms {
            let total = match *result {
                "ack" => broker.confirms_ack,
                "nack" => broker.confirms_nack,
                _ => broker.confirms_timeout,
            };
            let before = followed.seen.swap(total, Ordering::Relaxed);
            if total > before {
                self.family
                    .get_or_create(&ConfirmLabels { result })
                    .inc_by(total - before);
            }
        }
    }
}

impl DeliveryMetrics {
    pub fn register(registry: &mut Registry) -> DeliveryMetrics {
        let metrics = DeliveryMetrics {
            delivered: Mutex::default(),
            messages: Family::default(),
            oldest: Family::default(),
            bytes: Gauge::default(),
            deliveries: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            callbacks: Family::default(),
            duplicates: Family::default(),
            dedup_records: Gauge::default(),
            dedup_bytes: Gauge::default(),
            dedup_evictions: FollowedCounter::default(),
            results_retained: Gauge::default(),
            results_bytes: Gauge::default(),
            results_evictions: FollowedCounter::default(),
            broker: std::sync::OnceLock::new(),
        };
        registry.register(
            "soapcache_queue_messages",
            "Queued messages by service and state (ready, in_flight, retrying, dead)",
            metrics.messages.clone(),
        );
        registry.register(
            "soapcache_queue_oldest_seconds",
            "Age of the oldest queued message not dead-lettered, by service",
            metrics.oldest.clone(),
        );
        registry.register(
            "soapcache_queue_bytes",
            "Bytes held by the queue's messages",
            metrics.bytes.clone(),
        );
        registry.register(
            "soapcache_deliveries",
            "Delivery attempts by result (delivered, retried, dead_lettered)",
            metrics.deliveries.clone(),
        );
        registry.register(
            "soapcache_delivery_duration_seconds",
            "Time from sending a queued message upstream to having the answer",
            metrics.duration.clone(),
        );
        registry.register(
            "soapcache_callbacks",
            "Callbacks to a requester's ReplyTo/FaultTo by result (delivered, retried, dead_lettered)",
            metrics.callbacks.clone(),
        );
        registry.register(
            "soapcache_duplicates",
            "Repeats of a remembered message id: acknowledged again (queued) or replayed (direct)",
            metrics.duplicates.clone(),
        );
        registry.register(
            "soapcache_dedup_records",
            "Message ids remembered for dedup",
            metrics.dedup_records.clone(),
        );
        registry.register(
            "soapcache_dedup_bytes",
            "Bytes of remembered message ids and their recorded answers",
            metrics.dedup_bytes.clone(),
        );
        registry.register(
            "soapcache_dedup_evictions",
            "Message ids dropped before their time to stay within --dedup-max-bytes",
            metrics.dedup_evictions.counter.clone(),
        );
        registry.register(
            "soapcache_results_retained",
            "Answers kept for GET /.results/ID",
            metrics.results_retained.clone(),
        );
        registry.register(
            "soapcache_results_bytes",
            "Bytes of answers kept for GET /.results/ID",
            metrics.results_bytes.clone(),
        );
        registry.register(
            "soapcache_results_evictions",
            "Kept answers dropped before their time to stay within --results-max-bytes",
            metrics.results_evictions.counter.clone(),
        );
        metrics
    }

    /// Counts one callback attempt's outcome.
    pub fn callback(&self, service: &str, result: &'static str) {
        self.callbacks
            .get_or_create(&ResultLabels {
                service: service.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a repeat of a remembered message id.
    pub fn duplicate(&self, service: &str, delivery: &'static str) {
        self.duplicates
            .get_or_create(&DuplicateLabels {
                service: service.to_owned(),
                delivery,
            })
            .inc();
    }

    /// Counts one attempt's outcome (or a message dead-lettered without
    /// one), and how long the service took when it answered.
    pub fn delivery(
        &self,
        service: &str,
        operation: &str,
        result: &'static str,
        took: Option<Duration>,
    ) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                service: service.to_owned(),
                operation: operation.to_owned(),
                result,
            })
            .inc();
        if let Some(took) = took {
            self.duration.observe(took.as_secs_f64());
        }
        if result == "delivered" {
            let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
            *delivered
                .entry((service.to_owned(), operation.to_owned()))
                .or_default() += 1;
        }
    }

    /// Messages delivered since start, by (service, operation).
    pub fn delivered(&self) -> BTreeMap<(String, String), u64> {
        self.delivered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The broker's series as the amqp queue says now, registered with
    /// `registry` the first time.
    pub fn set_broker(
        &self,
        registry: &std::sync::Mutex<Registry>,
        broker: &crate::delivery::amqp::BrokerStats,
    ) {
        self.broker
            .get_or_init(|| {
                let mut registry = registry.lock().unwrap_or_else(|p| p.into_inner());
                BrokerMetrics::register(&mut registry)
            })
            .set(broker);
    }

    /// The gauges as the queue says now: series of services with nothing
    /// left go, instead of keeping their last value.
    pub fn set_queue(&self, stats: &QueueStats) {
        self.messages.clear();
        self.oldest.clear();
        let gauge = |g: &Gauge, value: u64| g.set(i64::try_from(value).unwrap_or(i64::MAX));
        gauge(&self.bytes, stats.bytes);
        gauge(&self.dedup_records, stats.dedup_records);
        gauge(&self.dedup_bytes, stats.dedup_bytes);
        gauge(&self.results_retained, stats.results);
        gauge(&self.results_bytes, stats.results_bytes);
        self.dedup_evictions.follow(stats.dedup_evictions);
        self.results_evictions.follow(stats.results_evictions);
        let mut services: Vec<&str> = stats.depths.iter().map(|d| d.service.as_str()).collect();
        services.dedup();
        for service in services {
            let depths = stats.depths.iter().filter(|d| d.service == service);
            let (mut ready, mut in_flight, mut retrying, mut dead, mut oldest) = (0, 0, 0, 0, 0);
            for d in depths {
                ready += d.ready;
                in_flight += d.in_flight;
                retrying += d.retrying;
                dead += d.dead;
                oldest = oldest.max(d.oldest_seconds);
            }
            for (state, count) in [
                ("ready", ready),
                ("in_flight", in_flight),
                ("retrying", retrying),
                ("dead", dead),
            ] {
                self.messages
                    .get_or_create(&StateLabels {
                        service: service.to_owned(),
                        state,
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            self.oldest
                .get_or_create(&ServiceLabels {
                    service: service.to_owned(),
                })
                .set(i64::try_from(oldest).unwrap_or(i64::MAX));
        }
    }
}
