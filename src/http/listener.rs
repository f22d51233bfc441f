//! Accepting connections: HTTP/1.1 and h2c on one port (hyper-util's auto
//! builder), each connection on its own task under a watchdog that closes
//! it once idle, and a bounded drain when shutdown is triggered.

use std::convert::Infallible;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::app::shutdown::Shutdown;
use crate::http::body::Body;

/// How long in-flight requests get to finish once shutdown is triggered.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Bounds on what one listener accepts from clients.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    /// A request head (and, in `proxy`, its body) must arrive within this
    /// time: a client trickling bytes (slowloris) is cut off. A connection
    /// idle for this long is closed (see [`watch_idle`]).
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
    H: Fn(Request<Incoming>, SocketAddr, Busy) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper timer: `watch_idle` cuts off slow heads instead.
    builder
        .http1()
        .header_read_timeout(None)
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
        let activity = Arc::new(Activity::default());
        let watched = activity.clone();
        // The handler's future goes to hyper as it is: a wrapper would
        // copy it once more per request.
        let service = service_fn(move |request| handler(request, remote, watched.busy()));
        let Some(acceptor) = &tls else {
            let io = Watched::new(TokioIo::new(stream), activity.clone());
            let connection = builder.serve_connection(io, service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                run_watched(name, remote, connection, &activity, limits.timeout).await;
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
            let io = Watched::new(TokioIo::new(stream), activity.clone());
            let connection = builder.serve_connection(io, service).into_owned();
            let connection = watcher.watch(connection);
            run_watched(name, remote, connection, &activity, limits.timeout).await;
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

/// Drives `connection` until it ends or [`watch_idle`] finds it idle;
/// then it is dropped, which closes it.
async fn run_watched<E: std::fmt::Display>(
    name: &str,
    remote: SocketAddr,
    connection: impl Future<Output = Result<(), E>>,
    activity: &Activity,
    timeout: Duration,
) {
    tokio::select! {
        biased;
        ended = connection => if let Err(e) = ended {
            tracing::debug!("{name}: connection from {remote} ended: {e}");
        },
        () = watch_idle(activity, timeout) => {
            tracing::debug!("{name}: closing idle connection from {remote}");
        }
    }
}

/// What a connection's watchdog looks at. The connection sets it as it
/// goes; [`watch_idle`] reads and clears it.
#[derive(Debug, Default)]
struct Activity {
    /// Requests being answered now.
    busy: AtomicUsize,
    /// A request head arrived, an answer was done or answer bytes went out
    /// since the watchdog last looked.
    progressed: AtomicBool,
}

impl Activity {
    fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.progressed.store(true, Ordering::Relaxed);
        Busy(self.clone())
    }
}

/// Lent to the handler with each request: its connection counts as busy
/// (never idle) until the handler drops it with the request's answer.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.progressed.store(true, Ordering::Relaxed);
    }
}

/// Returns once the connection has been idle for `timeout` to `1.5 ×
/// timeout`: no request head completed, no request being answered, no
/// answer byte written. That is a requester trickling a head (slowloris),
/// an idle keep-alive connection, or a reader that stopped reading an
/// answer; a body that is slow to arrive is the handler's to time out.
///
/// hyper's own header-read timeout arms a timer and takes an extra turn
/// through its read loop on every request, a noticeable share of a cache
/// hit (docs/PERFORMANCE.md, seventh pass). The watchdog wakes twice per
/// `timeout`, and costs a request two counter updates.
async fn watch_idle(activity: &Activity, timeout: Duration) {
    // tokio's interval panics on a zero period.
    let period = (timeout / 2).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut idle_periods = 0;
    loop {
        ticks.tick().await;
        let progressed = activity.progressed.swap(false, Ordering::Relaxed);
        if progressed || activity.busy.load(Ordering::Relaxed) > 0 {
            idle_periods = 0;
            continue;
        }
        idle_periods += 1;
        if idle_periods == 2 {
            return;
        }
    }
}

/// A connection's byte stream, noting in its [`Activity`] when answer bytes
/// go out.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    fn new(io: I, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }

    fn note(&self, written: &Poll<std::io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.progressed.store(true, Ordering::Relaxed);
        }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
