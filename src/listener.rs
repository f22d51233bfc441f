//! Accepting connections: HTTP/1.1 and h2c on one port (hyper-util's auto
//! builder), each connection on its own task, and a bounded drain when
//! shutdown is triggered.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::shutdown::Shutdown;

/// How long in-flight requests get to finish once shutdown is triggered.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Bounds on what one listener accepts from clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// A request head (and, in `proxy`, its body) must arrive within this
    /// time: a client trickling bytes (slowloris) is cut off.
    pub timeout: Duration,
    /// Connections open at once; past it, new ones get a 503 and are closed.
    pub max_connections: usize,
}

/// Request heads larger than this get 431 from hyper.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a connection past `max_connections` is told before it is closed.
const TOO_MANY_CONNECTIONS: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 52\r\n\r\nsoapcache: too many open connections, retry shortly\n";

/// A TLS handshake must complete within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `handler` on `listener` (over TLS when `tls` is given) until
/// `shutdown`, then drains.
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ClientLimits,
    handler: H,
    shutdown: Shutdown,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.triggered() => break,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep going.
                tracing::warn!("{name}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(
                "{name}: refusing {remote}: {} connections open",
                limits.max_connections
            );
            tokio::spawn(refuse(stream));
            continue;
        };
        let handler = handler.clone();
        // The handler's future goes to hyper as it is: a wrapper would
        // copy it once more per request.
        let service = service_fn(move |request| handler(request, remote));
        let Some(acceptor) = &tls else {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("{name}: connection from {remote} ended: {e}");
                }
                drop(permit);
            });
            continue;
        };
        // The handshake runs on the connection's own task, so a slow client
        // never holds up accepting.
        let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return tracing::debug!("{name}: TLS handshake with {remote} failed: {e}")
                }
                Err(_) => return tracing::debug!("{name}: TLS handshake with {remote} timed out"),
            };
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!("{name}: connection from {remote} ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("{name}: all connections drained"),
        () = tokio::time::sleep(DRAIN_GRACE) => tracing::warn!("{name}: connections still open after {DRAIN_GRACE:?}; closing them"),
    }
}

/// Answers a connection past the limit with a 503 and closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(TOO_MANY_CONNECTIONS).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
