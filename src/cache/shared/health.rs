//! Whether the shared tier is usable. Down until the subscription task has
//! connected; down again at the first failed or slow command, until the
//! task has subscribed again. One log line per change of state, however
//! many requests fail in between.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;

use crate::ops::metrics::SharedCacheMetrics;

const STARTING: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub(super) struct Health {
    state: AtomicU8,
    /// Wakes the subscription task when a command finds Redis gone.
    lost: Notify,
    metrics: SharedCacheMetrics,
}

impl Health {
    pub(super) fn new(metrics: SharedCacheMetrics) -> Health {
        Health {
            state: AtomicU8::new(STARTING),
            lost: Notify::new(),
            metrics,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// A command failed (counted), or the subscription did: Redis is
    /// treated as gone until the subscription task is back.
    pub(super) fn failed(&self, what: &str, message: &str) {
        self.metrics.errors.inc();
        self.down(what, message);
    }

    /// Down without counting an error (a connection attempt that failed
    /// is the same outage, not another error).
    pub(super) fn down(&self, what: &str, message: &str) {
        let before = self.state.swap(DOWN, Ordering::AcqRel);
        if before != DOWN {
            self.metrics.up.set(0);
            tracing::warn!(
                "shared cache unreachable ({what}: {message}); serving from the local tier and the service"
            );
            self.lost.notify_one();
        }
    }

    pub(super) fn up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            self.metrics.up.set(1);
            tracing::info!("shared cache connected");
        }
    }

    /// Resolves when a command has found Redis gone (at once if one did
    /// since the last call).
    pub(super) async fn lost(&self) {
        self.lost.notified().await;
    }
}
