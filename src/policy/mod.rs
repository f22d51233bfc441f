//! Policy files (reference §7): one TOML file per service, compiled once at load
//! into routing and per-operation rules with their key selectors. This
//! module is the compiled model and routing; `load` reads the files.
//!
//! Loading never stops at the first problem: `soapcache check` reports
//! every problem of every file as `file:line: message` (see `load`).
//!
//! Extensions to reference §7, all compatible:
//! * every operation rule (`ttl`, `expires_daily_at`, `vary_headers`,
//!   `shared`, `cache`) may also be set in `[defaults]`, and every
//!   `[defaults]` key may be overridden in an `[[operation]]`;
//! * `upstream` may be omitted: the service then uses `--upstream`;
//! * element names may be written `prefix:local`, `local` (no namespace) or
//!   `{uri}local`;
//! * `max_entry_size` may be a plain number of bytes;
//! * `expires_daily_at` accepts `08:00:00Z`, `08:00:00`, `08:00Z`, `08:00`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::delivery::reply::ReplyPattern;
use crate::delivery::{DeliveryMode, RetryPolicy};
use crate::key::selector::Selector;
use crate::xml::ExpandedName;

mod load;
mod rules;
mod values;

pub use load::PolicyError;

/// What governs caching of one operation (or of requests no policy routes:
/// [`Rules::default`]).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Obey the service's `CacheControl` blocks.
    pub honor_cache_control: bool,
    /// Upper bound on every lifetime; `None` = no cap.
    pub max_ttl: Option<Duration>,
    /// How long after expiry an entry may still answer when the upstream fails.
    pub stale_if_error: Duration,
    /// How long after expiry an entry may still answer at once while one
    /// background request refreshes it.
    pub stale_while_revalidate: Duration,
    /// Larger answers are not stored (and stream through).
    pub max_entry_size: u64,
    /// Extra SOAP role/actor URIs soapcache plays for `CacheControl` blocks.
    pub roles: Vec<String>,
    /// Cache even without `CacheControl`, for this long.
    pub ttl: Option<Duration>,
    /// Entries expire at the next such UTC time of day at the latest.
    pub expires_daily_at: Option<time::Time>,
    /// Request headers whose values are part of the lookup key.
    pub vary_headers: Vec<hyper::header::HeaderName>,
    /// Cacheable even when the request carries credentials.
    pub shared: bool,
    /// `false`: never cache this operation.
    pub cache: bool,
    /// Forwarded while the requester waits, or queued (reference §10).
    pub delivery: DeliveryMode,
    /// How a queued message is retried and for how long.
    pub retry: RetryPolicy,
    /// Queued messages whose values are equal are delivered one at a time,
    /// in acceptance order.
    pub order_by: Option<Arc<Selector>>,
    /// How long message ids are remembered (zero: not at all; reference §11).
    pub dedup: Duration,
    /// The message id of requests without a WS-Addressing `MessageID`.
    pub message_id: Option<Arc<Selector>>,
    /// Callback addresses a queued operation may answer to (reference §12).
    pub reply_to_allowed: Vec<ReplyPattern>,
    /// How long a queued message's answer is kept for polling, as the
    /// policy says (zero: not kept); unset, [`DEFAULT_RESULT_RETENTION`]
    /// where soapcache has a store for results.
    pub result_retention: Option<Duration>,
}

/// How long answers wait to be fetched when the policy does not say
/// (reference §7.8): an hour is long enough for a requester that went away
/// to come back, and `--results-max-bytes` bounds what that keeps.
pub const DEFAULT_RESULT_RETENTION: Duration = Duration::from_secs(3600);

impl Default for Rules {
    fn default() -> Self {
        Rules {
            honor_cache_control: true,
            max_ttl: None,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            max_entry_size: 1 << 20,
            roles: Vec::new(),
            ttl: None,
            expires_daily_at: None,
            vary_headers: Vec::new(),
            shared: false,
            cache: true,
            delivery: DeliveryMode::Direct,
            retry: RetryPolicy::default(),
            order_by: None,
            dedup: Duration::ZERO,
            message_id: None,
            reply_to_allowed: Vec::new(),
            result_retention: None,
        }
    }
}

/// The rules of a request: its operation's (merged over the service's
/// `[defaults]`), the service's defaults for an operation the policy does
/// not list, or the built-in defaults when no policy routes the request
/// (or its `Body` is empty).
pub fn rules_for<'a>(service: Option<&'a Service>, operation: Option<&ExpandedName>) -> &'a Rules {
    static DEFAULT_RULES: LazyLock<Rules> = LazyLock::new(Rules::default);
    match (service, operation) {
        (Some(service), Some(operation)) => service.rules(operation),
        (Some(service), None) => &service.defaults,
        (None, _) => &DEFAULT_RULES,
    }
}

/// An `[[operation]]`: a read whose answers may be cached.
#[derive(Debug)]
pub struct Operation {
    pub name: ExpandedName,
    /// `None`: the key is the digest of the canonical operation element.
    pub key: Option<Selector>,
    /// `[defaults]` overridden by the operation's own keys.
    pub rules: Rules,
}

/// An `[[invalidate]]`: a write that, once it succeeds, purges the entries
/// whose `CacheKey` is its key value, for each target operation.
#[derive(Debug)]
pub struct Invalidation {
    pub name: ExpandedName,
    pub key: Selector,
    pub targets: Vec<ExpandedName>,
}

/// One policy file, compiled.
#[derive(Debug)]
pub struct Service {
    /// Shared, as it is part of every cache key of the service.
    pub name: std::sync::Arc<str>,
    /// Normalised: starts with `/`, no trailing `/` except for `/` itself.
    pub route: String,
    /// `None`: the `--upstream` default applies.
    pub upstream: Option<hyper::Uri>,
    /// The file this service was loaded from.
    pub source: PathBuf,
    pub defaults: Rules,
    pub operations: Vec<Operation>,
    pub invalidations: Vec<Invalidation>,
}

impl Service {
    /// Policies list a handful of operations; a linear scan beats hashing
    /// two strings per lookup.
    pub fn operation(&self, name: &ExpandedName) -> Option<&Operation> {
        self.operations.iter().find(|o| o.name == *name)
    }

    /// The operation's merged rules, or the service defaults for operations
    /// the policy does not list.
    pub fn rules(&self, name: &ExpandedName) -> &Rules {
        self.operation(name).map_or(&self.defaults, |o| &o.rules)
    }

    pub fn invalidation(&self, name: &ExpandedName) -> Option<&Invalidation> {
        self.invalidations.iter().find(|i| i.name == *name)
    }

    /// Path-segment prefix match: `/catalog` matches `/catalog`,
    /// `/catalog/` and `/catalog/x`, not `/catalogue`.
    fn routes(&self, path: &str) -> bool {
        self.route == "/"
            || path
                .strip_prefix(self.route.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// All loaded services, ordered for routing (longest route first).
#[derive(Debug, Default)]
pub struct PolicySet {
    services: Vec<Arc<Service>>,
}

impl PolicySet {
    pub fn empty() -> PolicySet {
        PolicySet::default()
    }

    /// Loads a policy file, or every `*.toml` file of a directory
    /// (non-recursive, in name order). Every problem in every file is
    /// collected; the set is returned only when there are none.
    pub fn load(path: &Path) -> Result<PolicySet, Vec<PolicyError>> {
        load::services(path).map(PolicySet::new)
    }

    /// A set of one policy given as text, for built-in services (the demo);
    /// `name` says where it came from in errors.
    pub fn from_text(name: &Path, text: &str) -> Result<PolicySet, Vec<PolicyError>> {
        load::service_from_text(name, text).map(|service| PolicySet::new(vec![service]))
    }

    fn new(services: Vec<Service>) -> PolicySet {
        let mut services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        services.sort_by(|a, b| {
            b.route
                .len()
                .cmp(&a.route.len())
                .then_with(|| a.route.cmp(&b.route))
        });
        PolicySet { services }
    }

    /// The service whose route is the longest path-segment prefix of `path`
    /// (the request path without its query).
    pub fn route(&self, path: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| s.routes(path))
    }

    /// Every `(service, operation)` the set queues; `[defaults]` that
    /// queue count as the service's `*`.
    pub fn queued_operations(&self) -> Vec<(String, String)> {
        self.operations_where(|rules| rules.delivery == DeliveryMode::Queued)
    }

    /// (service, operation) of every rule set for which `wanted` holds;
    /// a service's defaults count as its operation `*`.
    pub fn operations_where(&self, wanted: impl Fn(&Rules) -> bool) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for service in &self.services {
            if wanted(&service.defaults) {
                found.push((service.name.to_string(), "*".to_owned()));
            }
            for op in &service.operations {
                if wanted(&op.rules) {
                    found.push((service.name.to_string(), op.name.to_string()));
                }
            }
        }
        found
    }

    /// In routing order (longest route first).
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// One line per service, for `soapcache check` and reload logs.
    pub fn summary(&self) -> Vec<String> {
        let mut services: Vec<&Arc<Service>> = self.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        services
            .into_iter()
            .map(|s| {
                let upstream = s
                    .upstream
                    .as_ref()
                    .map_or_else(|| "the --upstream default".to_owned(), |u| u.to_string());
                format!(
                    "{}: route {} -> {}, {}, {} ({})",
                    s.name,
                    s.route,
                    upstream,
                    plural(s.operations.len(), "operation"),
                    plural(s.invalidations.len(), "invalidation"),
                    s.source.display()
                )
            })
            .collect()
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests;
