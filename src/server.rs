//! Starting and stopping soapcache: bind both listeners (failing with one
//! clear line), run them until shutdown, reload policies on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::cli::ServeArgs;
use crate::listener::{self, ClientLimits};
use crate::policy::PolicySet;
use crate::proxy::{self, Settings, Shared};
use crate::shutdown::{self, Shutdown, Signals};
use crate::store::Store;

/// A started soapcache: where it listens, its state, and its tasks.
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
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
) -> Result<Running, String> {
    if listen == admin && listen.port() != 0 {
        return Err(format!("--admin ({admin}) must differ from --listen: the admin API never shares the proxy port"));
    }
    let proxy_listener = bind(listen, "proxy (--listen)").await?;
    let admin_listener = bind(admin, "admin API (--admin)").await?;
    let proxy_addr = proxy_listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let shared = Shared::new(settings, policies)?;
    let shutdown = Shutdown::default();
    let mut tasks = JoinSet::new();

    let proxy_state = shared.clone();
    let handler =
        move |request, remote, busy| proxy::handle(proxy_state.clone(), request, remote, busy);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let limits = shared.settings().client_limits;
    tasks.spawn(listener::serve(
        "proxy",
        proxy_listener,
        tls,
        limits,
        handler,
        shutdown.clone(),
    ));

    let admin = Admin::new(shared.clone(), admin_token);
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

    tasks.spawn(sweep_expired(shared.store.clone(), shutdown.clone()));

    tracing::info!("proxy listening on {proxy_addr}");
    tracing::info!("admin listening on {admin_addr}");
    Ok(Running {
        proxy_addr,
        admin_addr,
        shared,
        shutdown,
        tasks,
    })
}

/// Sweeps entries past their stale window out of the cache until
/// shutdown. A pass over a large cache takes milliseconds, so it runs in
/// the blocking pool, and the next waits 100 times as long as the last
/// took (1 s to 60 s): sweeping costs at most about 1% of a core.
async fn sweep_expired(store: Store, shutdown: Shutdown) {
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

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for the {what}: {e}"))
}

/// `soapcache serve`: runs until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let policies = match &args.policies {
        Some(path) => PolicySet::load(path).map_err(|errors| {
            let first = errors.first().map(ToString::to_string).unwrap_or_default();
            let more = match errors.len() {
                1 => String::new(),
                n => format!(
                    " (and {} more; run `soapcache check --policies {}`)",
                    n - 1,
                    path.display()
                ),
            };
            format!("invalid policy: {first}{more}")
        })?,
        None => PolicySet::empty(),
    };
    if args.upstream.is_none() && policies.services().is_empty() {
        return Err("nothing to proxy: give --upstream URL and/or --policies PATH".into());
    }
    if let Some(upstream) = &args.upstream {
        if !matches!(upstream.scheme_str(), Some("http" | "https")) || upstream.host().is_none() {
            return Err(format!(
                "--upstream {upstream}: an http:// or https://host[:port][/path] URL is required"
            ));
        }
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
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
    for line in running.shared.policies.load().summary() {
        tracing::info!("policy: {line}");
    }
    while signals.next().await == shutdown::SignalAction::Reload {
        // A refused reload is logged by `reload` itself; the old set stays.
        let _ = running.shared.reload();
    }
    running.shutdown.trigger();
    running.stopped().await;
    tracing::info!("stopped");
    Ok(())
}
