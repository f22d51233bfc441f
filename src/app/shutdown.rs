//! Graceful shutdown: one `Shutdown` handle, cloned into every listener.
//! Triggering it makes the listeners stop accepting and drain their
//! connections; it is triggered by SIGTERM/SIGINT or by the demo's end.

use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown { tx, rx }
    }
}

impl Shutdown {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which also means "stop".
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// What a signal asks of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// SIGTERM or SIGINT: stop accepting, drain, exit.
    Stop,
    /// SIGHUP: reload the policies.
    Reload,
}

/// The process's signal handlers. Installed before anything listens: until
/// a handler exists a signal has its default action, and SIGHUP's is to
/// kill the process (a `systemctl reload` right after start would).
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, crate::app::server::StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, signal_name: &'static str| {
            signal(kind).map_err(|source| crate::app::server::StartError::Signal {
                signal: signal_name,
                source,
            })
        };
        Ok(Signals {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
            hangup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for the next signal.
    pub async fn next(&mut self) -> SignalAction {
        tokio::select! {
            _ = self.terminate.recv() => {
                tracing::info!("SIGTERM received: draining");
                SignalAction::Stop
            }
            _ = self.interrupt.recv() => {
                tracing::info!("SIGINT received: draining");
                SignalAction::Stop
            }
            _ = self.hangup.recv() => {
                tracing::info!("SIGHUP received: reloading policies");
                SignalAction::Reload
            }
        }
    }
}
