//! soapcache: a caching SOAP intermediary.
//!
//! One folder per subsystem. A request flows
//! `http::listener` → `proxy` → (`cache`, `http::client`) → answer:
//!
//! - [`app`]: the command line, settings and the shared [`app::state::State`]
//!   (policies, cache tiers, memo, flights, upstream client, metrics),
//!   starting and stopping (`server`, `shutdown`), the demo.
//! - [`http`]: accepting connections (`listener`), the body type both sides
//!   share (`body`), reading request bodies under limits (`request_body`),
//!   the headers soapcache reads and writes (`headers`), the upstream
//!   client (`client`), TLS.
//! - [`soap`] and [`xml`]: pure, synchronous readers of SOAP messages: the
//!   request scan (`envelope`), multipart roots, `CacheControl` blocks
//!   (`control`), faults; and the XML helpers they share.
//! - [`key`]: what a request is looked up by: policy XPath (`selector`),
//!   the canonical digest (`canonical`), lookup and entry keys (`lookup`).
//! - [`policy`]: the compiled policy set and routing; `load` reads files.
//! - [`cache`]: the stored form (`entry`), the memory tier and the tier
//!   trait a shared tier implements, whether a request may use or fill the
//!   cache (`decision`), lifetimes, the memo of repeated bodies, request
//!   coalescing.
//! - [`proxy`]: the request path, calling all of the above: `fast_path`
//!   (hits), `miss`, `forward`, `respond`.
//! - [`ops`]: the admin API, metrics, the access log.
//!
//! Where data does not flow one way, on purpose: `ops::admin` reads and
//! steers all of `app::state::State` (it is the operator's view of it);
//! the memo keeps each repeat's metric counters (`ops::metrics`) and its
//! memory-tier hint, so that a hit looks nothing up by name.

pub mod app;
pub mod cache;
pub mod clock;
pub mod delivery;
pub mod http;
pub mod key;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod soap;
pub mod units;
pub mod xml;
