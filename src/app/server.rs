//! Starting and stopping soapcache: bind both listeners (failing with one
//! clear line), run them and the background tasks until shutdown, reload
//! policies on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::app::cli::ServeArgs;
use crate::app::shutdown::{self, Shutdown, Signals};
use crate::app::state::{Settings, State};
use crate::cache::memory::MemoryTier;
use crate::cache::shared::SharedSettings;
use crate::delivery::QueueSettings;
use crate::http::listener::{self, ClientLimits};
use crate::http::tls::TlsError;
use crate::ops::admin::Admin;
use crate::policy::PolicyError;
use crate::policy::PolicySet;
use crate::proxy;

/// Why soapcache could not start (or the demo run): one line each.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("--admin ({0}) must differ from --listen: the admin API never shares the proxy port")]
    AdminOnProxyPort(SocketAddr),
    #[error("invalid policy: {first}{more}")]
    Policy { first: PolicyError, more: String },
    #[error("nothing to proxy: give --upstream URL and/or --policies PATH")]
    NothingToProxy,
    #[error("--upstream {0}: an http:// or https://host[:port][/path] URL is required")]
    BadUpstream(hyper::Uri),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] crate::app::state::StateError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A started soapcache: where it listens, its state, and its tasks.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub state: Arc<State>,
    pub shutdown: Shutdown,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until both listeners have stopped and drained.
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds the proxy and admin listeners and starts serving.
pub async fn start(
    settings: Settings,
    policies: PolicySet,
    listen: SocketAddr,
    admin: SocketAddr,
    admin_token: Option<&str>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, StartError> {
    if listen == admin && listen.port() != 0 {
        return Err(StartError::AdminOnProxyPort(admin));
    }
    let proxy_listener = bind(listen, "proxy (--listen)").await?;
    let admin_listener = bind(admin, "admin API (--admin)").await?;
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| StartError::Io {
            what: "cannot read the bound address",
            source,
        })
    };
    let proxy_addr = local(&proxy_listener)?;
    let admin_addr = local(&admin_listener)?;

    let state = State::new(settings, policies)?;
    let shutdown = Shutdown::default();
    let mut tasks = JoinSet::new();

    let proxy_state = state.clone();
    let handler =
        move |request, remote, busy| proxy::handle(proxy_state.clone(), request, remote, busy);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let limits = state.settings.client_limits;
    tasks.spawn(listener::serve(
        "proxy",
        proxy_listener,
        tls,
        limits,
        handler,
        shutdown.clone(),
    ));

    let admin = Admin::new(state.clone(), admin_token);
    let handler = move |request, _remote, busy: listener::Busy| {
        let admin = admin.clone();
        async move {
            let answer = admin.handle(request).await;
            drop(busy);
            Ok(answer)
        }
    };
    // The admin API serves operators and scrapers: a few connections suffice.
    let admin_limits = ClientLimits {
        max_connections: 64,
        ..limits
    };
    tasks.spawn(listener::serve(
        "admin",
        admin_listener,
        None,
        admin_limits,
        handler,
        shutdown.clone(),
    ));

    tasks.spawn(sweep_expired(state.cache.memory.clone(), shutdown.clone()));
    if let Some(queue) = state.queue.clone() {
        tasks.spawn(queue.run(state.clone(), shutdown.clone()));
    }
    if let Some(shared) = state.shared.clone() {
        let stop = shutdown.clone();
        tasks.spawn(shared.run(async move { stop.triggered().await }));
    }

    tracing::info!("proxy listening on {proxy_addr}");
    tracing::info!("admin listening on {admin_addr}");
    Ok(Running {
        proxy_addr,
        admin_addr,
        state,
        shutdown,
        tasks,
    })
}

/// Sweeps entries past their stale window out of the cache until
/// shutdown. A pass over a large cache takes milliseconds, so it runs in
/// the blocking pool, and the next waits 100 times as long as the last
/// took (1 s to 60 s): sweeping costs at most about 1% of a core.
async fn sweep_expired(store: MemoryTier, shutdown: Shutdown) {
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.triggered() => return,
        }
        let started = Instant::now();
        let store = store.clone();
        if let Ok(removed @ 1..) = tokio::task::spawn_blocking(move || store.remove_expired()).await
        {
            tracing::debug!(removed, "expired entries swept");
        }
        pause = (started.elapsed() * 100).clamp(Duration::from_secs(1), Duration::from_secs(60));
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

/// The first problem of a refused policy set, and how many more there are.
fn refused(path: &std::path::Path, errors: Vec<PolicyError>) -> StartError {
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(
            " (and {} more; run `soapcache check --policies {}`)",
            n - 1,
            path.display()
        ),
    };
    let first = errors.into_iter().next().unwrap_or_else(|| PolicyError {
        file: path.to_path_buf(),
        line: 0,
        message: "refused".into(),
    });
    StartError::Policy { first, more }
}

/// `soapcache serve`: runs until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(args: ServeArgs) -> Result<(), StartError> {
    let policies = match &args.policies {
        Some(path) => PolicySet::load(path).map_err(|errors| refused(path, errors))?,
        None => PolicySet::empty(),
    };
    if args.upstream.is_none() && policies.services().is_empty() {
        return Err(StartError::NothingToProxy);
    }
    if let Some(upstream) = &args.upstream {
        if !matches!(upstream.scheme_str(), Some("http" | "https")) || upstream.host().is_none() {
            return Err(StartError::BadUpstream(upstream.clone()));
        }
    }
    // clap makes each of --tls-cert and --tls-key require the other.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::http::tls::server_config(cert, key)?),
        _ => None,
    };
    let settings = Settings {
        default_upstream: args.upstream.clone(),
        policy_path: args.policies.clone(),
        cache_size: args.cache_size,
        max_body: args.max_body,
        upstream_timeout: args.upstream_timeout,
        debug_headers: args.debug_headers,
        upstream_ca: args.upstream_ca.clone(),
        client_limits: ClientLimits {
            timeout: args.client_timeout,
            max_connections: args.max_connections.max(1),
        },
        queue: QueueSettings {
            data_dir: args.data_dir.clone(),
            backend: args.queue.clone(),
            max_bytes: args.queue_max_bytes,
            concurrency: usize::try_from(args.delivery_concurrency).unwrap_or(16),
            dedup_max_bytes: args.dedup_max_bytes,
            results_max_bytes: args.results_max_bytes,
            shared_cache: args.shared_cache.clone(),
        },
        shared_cache: args.shared_cache.clone().map(|url| SharedSettings {
            url,
            timeout: args.shared_cache_timeout,
        }),
    };
    if let Some(fake) = args.fake_now {
        crate::clock::pretend_now_is(fake);
        tracing::warn!("the cache clock is shifted (--fake-now): for tests only");
    }
    let mut signals = Signals::install()?;
    let running = start(
        settings,
        policies,
        args.listen,
        args.admin,
        args.admin_token.as_deref(),
        tls,
    )
    .await?;
    for line in running.state.policies.load().summary() {
        tracing::info!("policy: {line}");
    }
    while signals.next().await == shutdown::SignalAction::Reload {
        // A refused reload is logged by `reload` itself; the old set stays.
        let _ = running.state.reload();
    }
    running.shutdown.trigger();
    running.stopped().await;
    tracing::info!("stopped");
    Ok(())
}
