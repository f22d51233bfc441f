//! The connection to the broker, kept by one task: connect, open the
//! publishing channel (in confirm mode), and when the connection is lost,
//! connect again with backoff, on its own. lapin does not reconnect by
//! itself. Each connection starts with no queue declared: a service's
//! topology is declared again before the first publish on it.
//!
//! While there is no connection, callers get `QueueError::Unavailable` at
//! once (a 503), except during the first attempt at startup, which they
//! wait for (bounded by the connect timeout): an instance just started is
//! not down, it is connecting.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};

use super::topology;
use crate::delivery::QueueError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A publish not confirmed within this is counted as a timeout and its
/// 202 is not given.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// The first connection attempt since start is under way.
    Starting,
    Up,
    Down,
}

/// One connection and what was set up on it.
pub struct Live {
    pub connection: Connection,
    publisher: Channel,
    /// Services whose queues are declared on this connection.
    declared: Mutex<HashSet<String>>,
    lost: Arc<Notify>,
}

/// Publisher confirms by result, since start.
#[derive(Default)]
pub struct Confirms {
    pub ack: AtomicU64,
    pub nack: AtomicU64,
    pub timeout: AtomicU64,
}

pub struct Link {
    url: String,
    live: ArcSwapOption<Live>,
    state: watch::Sender<LinkState>,
    pub confirms: Confirms,
}

impl Link {
    pub fn new(url: String) -> Arc<Link> {
        Arc::new(Link {
            url,
            live: ArcSwapOption::empty(),
            state: watch::Sender::new(LinkState::Starting),
            confirms: Confirms::default(),
        })
    }

    pub fn is_up(&self) -> bool {
        *self.state.borrow() == LinkState::Up
    }

    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// The connection now; during the startup attempt, the one it makes.
    pub async fn live(&self) -> Result<Arc<Live>, QueueError> {
        let mut state = self.state.subscribe();
        if *state.borrow_and_update() == LinkState::Starting {
            let _ = tokio::time::timeout(
                CONNECT_TIMEOUT + Duration::from_secs(1),
                state.wait_for(|s| *s != LinkState::Starting),
            )
            .await;
        }
        self.live
            .load_full()
            .ok_or_else(|| QueueError::Unavailable("the RabbitMQ broker is not connected".into()))
    }

    /// Keeps a connection until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        let mut logged_down = false;
        loop {
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
                Ok(Ok(live)) => {
                    backoff = FIRST_BACKOFF;
                    logged_down = false;
                    let lost = live.lost.clone();
                    self.live.store(Some(live.clone()));
                    self.state.send_replace(LinkState::Up);
                    tracing::info!("queue: connected to RabbitMQ");
                    loop {
                        tokio::select! {
                            () = lost.notified() => break,
                            () = tokio::time::sleep(Duration::from_millis(500)) => {
                                if !live.connection.status().connected() || !live.publisher.status().connected() {
                                    break;
                                }
                            }
                        }
                    }
                    self.live.store(None);
                    self.state.send_replace(LinkState::Down);
                    tracing::warn!("queue: lost the RabbitMQ connection; queued operations answer 503 until it is back");
                    let _ = live.connection.close(320, "reconnecting").await;
                }
                Ok(Err(e)) => self.down(&mut logged_down, &e.to_string()),
                Err(_) => self.down(&mut logged_down, "no answer within the connect timeout"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn down(&self, logged: &mut bool, why: &str) {
        self.state.send_replace(LinkState::Down);
        if !*logged {
            tracing::error!("queue: cannot connect to RabbitMQ ({why}); retrying with backoff, queued operations answer 503 meanwhile");
            *logged = true;
        }
    }

    async fn connect(&self) -> lapin::Result<Arc<Live>> {
        let properties = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio::current())
            .with_connection_name("soapcache".into());
        let connection = Connection::connect(&self.url, properties).await?;
        let lost = Arc::new(Notify::new());
        let on_lost = lost.clone();
        let mut events = Box::pin(connection.events_listener());
        tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(e) = event {
                    tracing::debug!("queue: connection error: {e}");
                    on_lost.notify_one();
                    break;
                }
            }
        });
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Arc::new(Live {
            connection,
            publisher,
            declared: Mutex::default(),
            lost,
        }))
    }

    /// Declares `service`'s queues on this connection unless done already.
    pub async fn ensure_topology(&self, live: &Live, service: &str) -> Result<(), QueueError> {
        let done = live
            .declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(service);
        if done {
            return Ok(());
        }
        topology::declare(&live.publisher, service)
            .await
            .map_err(|e| self.failed(live, &e))?;
        live.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_owned());
        Ok(())
    }

    /// Publishes to `queue` (of `service`, whose topology is declared
    /// first) and returns once the broker confirmed it: a message that
    /// returns `Ok` is on disk in a durable queue.
    pub async fn publish(
        &self,
        service: &str,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let live = self.live().await?;
        self.ensure_topology(&live, service).await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = live
            .publisher
            .basic_publish("", queue, options, body, properties)
            .await
            .map_err(|e| self.failed(&live, &e))?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => {
                self.confirms.timeout.fetch_add(1, Ordering::Relaxed);
                Err(QueueError::Unavailable(
                    "RabbitMQ did not confirm the message in time".into(),
                ))
            }
            Ok(Err(e)) => Err(self.failed(&live, &e)),
            Ok(Ok(Confirmation::Ack(returned))) if returned.is_none() => {
                self.confirms.ack.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // Acknowledged but returned: no queue took it (mandatory).
            Ok(Ok(Confirmation::Ack(_))) => {
                self.confirms.nack.fetch_add(1, Ordering::Relaxed);
                Err(QueueError::Unavailable(format!(
                    "RabbitMQ has no queue {queue} to take the message"
                )))
            }
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
                self.confirms.nack.fetch_add(1, Ordering::Relaxed);
                Err(QueueError::Unavailable(
                    "RabbitMQ refused the message (nack)".into(),
                ))
            }
        }
    }

    /// A channel error closes the channel: this connection is dropped and
    /// a new one made, rather than mending channels one by one.
    pub fn failed(&self, live: &Live, e: &lapin::Error) -> QueueError {
        live.lost.notify_one();
        QueueError::Unavailable(format!("RabbitMQ: {e}"))
    }
}
