//! soapcache: a caching SOAP intermediary.
//!
//! Data flows one way through the modules:
//! `listener` → `proxy` (routing via `policy`, `envelope`, key selection via
//! `selector`/`canonical`, lookup in `store`, misses through `coalesce` and
//! `upstream`, answers read by `control` and `lifetime`) → answer. `body`
//! carries bytes, stored entries and streams through; `fault`
//! turns errors into SOAP faults; `access_log` writes one line per request;
//! `admin` and `metrics` observe and steer;
//! `server` starts and stops it all; `demo` shows it.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod canonical;
pub mod cli;
pub mod clock;
pub mod coalesce;
pub mod control;
pub mod demo;
pub mod envelope;
pub mod fault;
pub mod lifetime;
pub mod listener;
pub mod memo;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod selector;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod tls;
pub mod units;
pub mod upstream;
