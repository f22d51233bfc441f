//! The command line (reference §1). Every flag also reads `SOAPCACHE_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::delivery::QueueBackend;
use crate::units::{parse_duration, parse_positive_duration, parse_size};

#[derive(Debug, Parser)]
#[command(
    name = "soapcache",
    version,
    about = "A caching SOAP intermediary: answers repeat SOAP requests from memory",
    long_about = "soapcache is a reverse proxy for SOAP services. Responses the service marks \
with a CacheControl header block (or that a policy file declares cacheable) are kept in \
memory and later requests that select the same key are answered without contacting the service."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at startup: the size of the `Serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the caching proxy.
    Serve(ServeArgs),
    /// Validate policy files; prints every problem as file:line: message, exits 1 on any.
    Check {
        /// A policy file or a directory of *.toml policy files.
        #[arg(long, env = "SOAPCACHE_POLICIES")]
        policies: PathBuf,
    },
    /// Start a built-in example service and soapcache in front of it, and show a MISS then a HIT.
    Demo(DemoArgs),
    /// Show what soapcache would do with one request message, without contacting anything.
    Explain(ExplainArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExplainArgs {
    /// A policy file or a directory of *.toml policy files.
    #[arg(long, env = "SOAPCACHE_POLICIES")]
    pub policies: PathBuf,
    /// The request's path, which selects the service.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The request body; `-` or none: stdin.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address the proxy listens on.
    #[arg(long, env = "SOAPCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Upstream for requests that no policy routes (e.g. http://127.0.0.1:9000).
    #[arg(long, env = "SOAPCACHE_UPSTREAM")]
    pub upstream: Option<hyper::Uri>,
    /// A policy file or a directory of *.toml policy files.
    #[arg(long, env = "SOAPCACHE_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Address of the admin API (health, metrics, purge, reload).
    #[arg(long, env = "SOAPCACHE_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Bearer token required on admin paths other than /healthz.
    #[arg(long, env = "SOAPCACHE_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Memory bound of the cache in bytes (e.g. 512MiB).
    #[arg(long, env = "SOAPCACHE_CACHE_SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "SOAPCACHE_MAX_BODY", default_value = "16MiB", value_parser = parse_size)]
    pub max_body: u64,
    /// Time allowed for the upstream to answer (headers and body).
    #[arg(long, env = "SOAPCACHE_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,
    /// Time a client has to send a request head and body; slower clients are cut off,
    /// and a connection idle for as long (nothing sent, nothing read) is closed.
    #[arg(long, env = "SOAPCACHE_CLIENT_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub client_timeout: Duration,
    /// Proxy connections open at once; past it new connections get 503.
    #[arg(long, env = "SOAPCACHE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// PEM certificate chain: serve the proxy port over TLS (with --tls-key).
    #[arg(long, env = "SOAPCACHE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SOAPCACHE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for https:// upstreams, besides the system roots.
    #[arg(long, env = "SOAPCACHE_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "SOAPCACHE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Add an X-Cache-Key header (the request's key, percent-encoded) to SOAP answers,
    /// to see which key a policy selects.
    #[arg(long, env = "SOAPCACHE_DEBUG_HEADERS")]
    pub debug_headers: bool,
    /// Directory of the embedded queue's store (queue.sqlite3): required when a
    /// policy queues an operation on the embedded queue.
    #[arg(long, env = "SOAPCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where queued messages are kept: `embedded` (SQLite in --data-dir) or
    /// `amqp://USER:PASS@HOST:PORT/VHOST` (RabbitMQ).
    #[arg(long, env = "SOAPCACHE_QUEUE", default_value = "embedded", value_parser = parse_queue)]
    pub queue: QueueBackend,
    /// Bytes the queue may hold (messages waiting and dead letters); past it,
    /// queued operations get 503.
    #[arg(long, env = "SOAPCACHE_QUEUE_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub queue_max_bytes: u64,
    /// Bytes of message ids (and direct answers) remembered for `dedup`;
    /// the oldest are dropped beyond it.
    #[arg(long, env = "SOAPCACHE_DEDUP_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub dedup_max_bytes: u64,
    /// Bytes of answers kept for `GET /.results/ID`; the oldest fetched or
    /// not are dropped beyond it.
    #[arg(long, env = "SOAPCACHE_RESULTS_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub results_max_bytes: u64,
    /// Queued messages delivered at once.
    #[arg(long, env = "SOAPCACHE_DELIVERY_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub delivery_concurrency: u32,
    /// A Redis shared by a fleet of instances as a second cache tier, with
    /// fleet-wide purges and coalescing: `redis://HOST:PORT[/DB]`.
    #[arg(long, env = "SOAPCACHE_SHARED_CACHE", value_parser = parse_redis_url)]
    pub shared_cache: Option<String>,
    /// The longest a request waits on the shared cache; slower is treated as unreachable.
    #[arg(long, env = "SOAPCACHE_SHARED_CACHE_TIMEOUT", default_value = "50ms", value_parser = parse_positive_duration)]
    pub shared_cache_timeout: Duration,
    /// Testing aid: run the cache clock as if it were now this instant (RFC 3339).
    #[arg(long, hide = true, env = "SOAPCACHE_FAKE_NOW", value_parser = parse_instant)]
    pub fake_now: Option<std::time::SystemTime>,
}

fn parse_queue(text: &str) -> Result<QueueBackend, String> {
    match text.trim() {
        "embedded" => Ok(QueueBackend::Embedded),
        url if url.starts_with("amqp://") || url.starts_with("amqps://") => {
            Ok(QueueBackend::Amqp(url.to_owned()))
        }
        other => Err(format!(
            "'{other}' is neither `embedded` nor an amqp://USER:PASS@HOST:PORT/VHOST URL"
        )),
    }
}

fn parse_redis_url(text: &str) -> Result<String, String> {
    let url = text.trim();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(format!("'{url}' is not a redis://HOST:PORT[/DB] URL"));
    }
    redis::Client::open(url)
        .map(|_| url.to_owned())
        .map_err(|e| format!("'{url}': {e}"))
}

fn parse_instant(text: &str) -> Result<std::time::SystemTime, String> {
    crate::cache::lifetime::parse_date_time(text)
        .ok_or_else(|| format!("'{text}' is not an RFC 3339 date-time"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address the demo proxy listens on (a free port is used when it is taken).
    #[arg(long, env = "SOAPCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the demo's admin API (a free port is used when it is taken).
    #[arg(long, env = "SOAPCACHE_ADMIN", default_value = "127.0.0.1:9090")]
    pub admin: SocketAddr,
    /// Exit after the scripted requests instead of serving until Ctrl-C.
    #[arg(long, hide = true, env = "SOAPCACHE_DEMO_ONCE")]
    pub once: bool,
}
