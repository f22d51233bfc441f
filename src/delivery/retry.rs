//! What happens after a delivery attempt (reference §10): delivered,
//! dead-lettered at once, or retried after a backoff with jitter until the
//! attempts or the time to deliver are spent. Pure functions of the attempt
//! and the clock, the same for every queue backend.

use std::time::{Duration, SystemTime};

use super::RetryPolicy;

/// How one attempt went, as the service answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// 2xx without a `Fault`.
    Delivered,
    /// HTTP 4xx, or a `Client`/`env:Sender` fault: retrying cannot help.
    Refused(String),
    /// Connection error, timeout, 5xx without a fault, a `Server`/
    /// `env:Receiver` fault, or an answer that is neither: may succeed later.
    Failed(String),
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    Refused,
    /// `max_attempts` spent.
    Failed,
    /// `deliver_within` (or the message's own `wsu:Expires`) passed.
    Expired,
    /// The answer could not be delivered to the requester's `ReplyTo`.
    Callback,
}

impl DeadReason {
    pub fn label(self) -> &'static str {
        match self {
            DeadReason::Refused => "refused",
            DeadReason::Failed => "failed",
            DeadReason::Expired => "expired",
            DeadReason::Callback => "callback",
        }
    }

    pub fn from_label(label: &str) -> Option<DeadReason> {
        [
            DeadReason::Refused,
            DeadReason::Failed,
            DeadReason::Expired,
            DeadReason::Callback,
        ]
        .into_iter()
        .find(|r| r.label() == label)
    }
}

/// What to do with a message after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Done: remove it from the queue.
    Delivered,
    /// Try again at this time.
    RetryAt(SystemTime),
    Dead(DeadReason),
}

/// Decides what follows attempt number `attempt` (1 for the first) of a
/// message that must be delivered by `deliver_by`. `id` seeds the jitter,
/// so that messages failing together do not retry together, and a
/// message's schedule is the same whoever computes it.
pub fn next(
    attempted: &Attempted,
    attempt: u32,
    policy: &RetryPolicy,
    deliver_by: SystemTime,
    now: SystemTime,
    id: &str,
) -> Next {
    match attempted {
        Attempted::Delivered => Next::Delivered,
        Attempted::Refused(_) => Next::Dead(DeadReason::Refused),
        Attempted::Failed(_) if attempt >= policy.max_attempts => Next::Dead(DeadReason::Failed),
        Attempted::Failed(_) => {
            let at = now + backoff(policy, attempt, id);
            if at > deliver_by {
                Next::Dead(DeadReason::Expired)
            } else {
                Next::RetryAt(at)
            }
        }
    }
}

/// The wait after failed attempt `attempt`: `retry_backoff` doubled for
/// each attempt after the first, capped at `max_retry_backoff`, then moved
/// by up to ±20%.
pub fn backoff(policy: &RetryPolicy, attempt: u32, id: &str) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base = policy
        .retry_backoff
        .saturating_mul(1u32 << doublings.min(31))
        .min(policy.max_retry_backoff);
    // A fraction in [-0.2, 0.2] from a hash of the message and attempt.
    let seed = format!("{id}\u{1f}{attempt}");
    let hash = blake3::hash(seed.as_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&hash.as_bytes()[..8]);
    let unit = u64::from_le_bytes(word) as f64 / u64::MAX as f64;
    base.mul_f64(0.8 + 0.4 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            retry_backoff: Duration::from_secs(1),
            max_retry_backoff: Duration::from_secs(5),
            deliver_within: Duration::from_secs(3600),
        }
    }

    #[test]
    fn backoff_doubles_within_twenty_percent_and_stops_at_the_cap() {
        let p = policy();
        for (attempt, base) in [
            (1, 1.0),
            (2, 2.0),
            (3, 4.0),
            (4, 5.0),
            (30, 5.0),
            (u32::MAX, 5.0),
        ] {
            for id in ["a", "b", "c", "urn:uuid:1"] {
                let wait = backoff(&p, attempt, id).as_secs_f64();
                assert!(
                    (base * 0.8..=base * 1.2).contains(&wait),
                    "attempt {attempt}: {wait}"
                );
            }
        }
        // Jitter differs between messages, and is the same when recomputed.
        assert_ne!(backoff(&p, 1, "a"), backoff(&p, 1, "b"));
        assert_eq!(backoff(&p, 1, "a"), backoff(&p, 1, "a"));
    }

    #[test]
    fn a_success_is_delivered_and_a_refusal_is_dead_at_once() {
        let now = SystemTime::now();
        let by = now + Duration::from_secs(60);
        assert_eq!(
            next(&Attempted::Delivered, 1, &policy(), by, now, "m"),
            Next::Delivered
        );
        assert_eq!(
            next(
                &Attempted::Refused("400".into()),
                1,
                &policy(),
                by,
                now,
                "m"
            ),
            Next::Dead(DeadReason::Refused)
        );
    }

    #[test]
    fn a_failure_is_retried_until_the_last_attempt_then_dead() {
        let now = SystemTime::now();
        let by = now + Duration::from_secs(3600);
        let failed = Attempted::Failed("503".into());
        for attempt in 1..4 {
            match next(&failed, attempt, &policy(), by, now, "m") {
                Next::RetryAt(at) => assert!(at > now),
                other => panic!("attempt {attempt}: {other:?}"),
            }
        }
        // max_attempts counts every attempt, the first included.
        assert_eq!(
            next(&failed, 4, &policy(), by, now, "m"),
            Next::Dead(DeadReason::Failed)
        );
    }

    #[test]
    fn a_retry_past_the_time_to_deliver_is_dead_as_expired() {
        let now = SystemTime::now();
        let failed = Attempted::Failed("timeout".into());
        let soon = now + Duration::from_millis(500);
        assert_eq!(
            next(&failed, 1, &policy(), soon, now, "m"),
            Next::Dead(DeadReason::Expired)
        );
    }

    #[test]
    fn reasons_read_back_from_their_labels() {
        for r in [
            DeadReason::Refused,
            DeadReason::Failed,
            DeadReason::Expired,
            DeadReason::Callback,
        ] {
            assert_eq!(DeadReason::from_label(r.label()), Some(r));
        }
        assert_eq!(DeadReason::from_label("other"), None);
    }
}
