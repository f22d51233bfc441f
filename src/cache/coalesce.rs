//! Request coalescing (reference §5): concurrent misses for one lookup key send
//! one request upstream. The first request becomes the *leader* and holds a
//! [`Flight`]; the others *follow* and wait for its outcome.
//!
//! Every state a follower can observe is named (after pingora's cache lock),
//! and a leader that goes away without finishing (its task cancelled, a
//! panic) leaves the defined state `Dangling` through `Drop`, never a hang.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::entry::Entry;

/// What followers learn from the leader.
#[derive(Debug, Clone)]
pub enum FlightOutcome {
    /// The leader is still fetching.
    Waiting,
    /// The answer was stored: serve this entry.
    Stored(Entry),
    /// The answer may not be shared (a fault, no `CacheControl`, too big):
    /// each follower fetches its own.
    GiveUp,
    /// The upstream could not be reached or timed out: followers get the
    /// same error answer rather than hammering a failing service.
    UpstreamFailed { status: u16, message: Arc<str> },
    /// The leader disappeared without an outcome: fetch your own.
    Dangling,
}

/// A follower's view once waiting is over.
#[derive(Debug, Clone)]
pub enum Waited {
    Done(FlightOutcome),
    /// The leader took longer than the follower is willing to wait.
    TimedOut,
}

pub enum Role<K: Eq + Hash + Clone> {
    Leader(Flight<K>),
    Follower(Waiter),
    /// `MAX_WAITERS` already wait for this flight: refuse rather than queue
    /// without bound behind a slow service.
    Overloaded,
}

/// Followers one flight may have.
pub const MAX_WAITERS: usize = 4096;

/// Flights under way: each key's outcome channel and its waiter slots.
type Flights<K> = Arc<Mutex<HashMap<K, (watch::Receiver<FlightOutcome>, Arc<()>)>>>;

/// The table of flights in progress. A `std::sync::Mutex` because it is
/// held only to insert or remove one map entry, never across an `.await`.
pub struct Coalescer<K> {
    flights: Flights<K>,
}

impl<K> Clone for Coalescer<K> {
    fn clone(&self) -> Self {
        Coalescer {
            flights: self.flights.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone> Default for Coalescer<K> {
    fn default() -> Self {
        Coalescer {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: Eq + Hash + Clone> Coalescer<K> {
    /// Become the leader for `key`, or follow the flight already under way.
    pub fn join(&self, key: &K) -> Role<K> {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rx, slots)) = flights.get(key) {
            // The table holds one `slots` reference, each waiter another.
            if Arc::strong_count(slots) > MAX_WAITERS {
                return Role::Overloaded;
            }
            return Role::Follower(Waiter {
                rx: rx.clone(),
                _slot: slots.clone(),
            });
        }
        let (tx, rx) = watch::channel(FlightOutcome::Waiting);
        flights.insert(key.clone(), (rx, Arc::new(())));
        Role::Leader(Flight {
            key: Some(key.clone()),
            tx,
            flights: self.flights.clone(),
        })
    }

    /// Flights under way, for tests and metrics.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A follower's place in a flight: its view of the outcome, and a slot that
/// counts it against `MAX_WAITERS` until it stops waiting.
pub struct Waiter {
    rx: watch::Receiver<FlightOutcome>,
    _slot: Arc<()>,
}

/// Waits for the leader's outcome, at most `patience`.
pub async fn wait(waiter: Waiter, patience: Duration) -> Waited {
    let Waiter { mut rx, _slot } = waiter;
    let done = tokio::time::timeout(
        patience,
        rx.wait_for(|o| !matches!(o, FlightOutcome::Waiting)),
    )
    .await;
    match done {
        Ok(Ok(outcome)) => Waited::Done(outcome.clone()),
        // The sender went away without a final value.
        Ok(Err(_)) => Waited::Done(FlightOutcome::Dangling),
        Err(_) => Waited::TimedOut,
    }
}

/// The leader's permit. Finishing it publishes the outcome and removes the
/// flight, so the next miss starts a new one.
pub struct Flight<K: Eq + Hash + Clone> {
    key: Option<K>,
    tx: watch::Sender<FlightOutcome>,
    flights: Flights<K>,
}

impl<K: Eq + Hash + Clone> Flight<K> {
    pub fn finish(mut self, outcome: FlightOutcome) {
        self.close(outcome);
    }

    fn close(&mut self, outcome: FlightOutcome) {
        if let Some(key) = self.key.take() {
            // Remove first: a request arriving after this point finds the
            // entry in the store (or starts afresh), never a finished flight.
            self.flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            self.tx.send_replace(outcome);
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Flight<K> {
    fn drop(&mut self) {
        self.close(FlightOutcome::Dangling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_receive_the_leaders_outcome() {
        let c: Coalescer<u32> = Coalescer::default();
        let Role::Leader(flight) = c.join(&1) else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = c.join(&1) else {
            panic!("second follows")
        };
        assert!(matches!(c.join(&2), Role::Leader(_)));
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        flight.finish(FlightOutcome::GiveUp);
        assert!(matches!(
            waiter.await.unwrap(),
            Waited::Done(FlightOutcome::GiveUp)
        ));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_leaves_followers_dangling_not_hanging() {
        let c: Coalescer<u32> = Coalescer::default();
        let leader = c.join(&1);
        let Role::Follower(rx) = c.join(&1) else {
            panic!()
        };
        drop(leader);
        assert!(matches!(
            wait(rx, Duration::from_secs(5)).await,
            Waited::Done(FlightOutcome::Dangling)
        ));
        assert!(
            matches!(c.join(&1), Role::Leader(_)),
            "a new flight can start"
        );
    }

    #[tokio::test]
    async fn a_slow_leader_times_followers_out() {
        let c: Coalescer<u32> = Coalescer::default();
        let _leader = c.join(&1);
        let Role::Follower(rx) = c.join(&1) else {
            panic!()
        };
        assert!(matches!(
            wait(rx, Duration::from_millis(20)).await,
            Waited::TimedOut
        ));
    }

    #[tokio::test]
    async fn waiters_past_the_bound_are_refused_and_slots_free_up() {
        let c: Coalescer<u32> = Coalescer::default();
        let _leader = c.join(&1);
        let mut waiters: Vec<Waiter> = (0..MAX_WAITERS - 1)
            .map(|_| match c.join(&1) {
                Role::Follower(w) => w,
                _ => panic!("room for MAX_WAITERS followers"),
            })
            .collect();
        let Role::Follower(last) = c.join(&1) else {
            panic!("the last slot")
        };
        assert!(matches!(c.join(&1), Role::Overloaded));
        drop(last);
        let Role::Follower(again) = c.join(&1) else {
            panic!("a freed slot is usable")
        };
        waiters.push(again);
    }
}
