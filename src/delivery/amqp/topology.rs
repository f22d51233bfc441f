//! The queues of one service, all durable, all on the default exchange
//! (routed by queue name):
//!
//! - `soapcache.<service>.work`: messages without an `order_by` value,
//!   taken by every instance's workers at once;
//! - `soapcache.<service>.work.<p>` for `p` in `0..PARTITIONS`: messages
//!   with an `order_by` value, by a hash of it. Each has
//!   `x-single-active-consumer`: one consumer of the fleet takes it at a
//!   time, one message at a time, so one value's messages go in order
//!   across the fleet; when that instance dies the broker hands the
//!   partition, unacknowledged messages first, to another;
//! - `soapcache.<service>.delay.<ms>`, one per backoff step: no consumer;
//!   `x-message-ttl` and a dead-letter route back to the work queue bring a
//!   message back when its wait is over (one TTL per queue: a per-message
//!   TTL in one queue would wait behind the longest);
//! - `soapcache.<service>.dead`: dead letters, read by `/dead-letters`.
//!
//! Every instance declares the same arguments: RabbitMQ refuses a declare
//! whose arguments differ from the queue's, so they are fixed here, not
//! settings.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::Channel;

/// Partitions of a service's ordered messages: values hash to one of these.
/// Fixed for the fleet (changing it would move values between partitions).
pub const PARTITIONS: u32 = 8;

/// The backoff steps a retry waits in, in milliseconds (powers of 4 from a
/// quarter second): a wait is split into the largest steps that fit, and a
/// message back before its time goes round again.
pub const DELAY_STEPS_MS: [u64; 6] = [250, 1_000, 4_000, 16_000, 64_000, 256_000];

pub fn work(service: &str) -> String {
    format!("soapcache.{service}.work")
}

pub fn partition(service: &str, p: u32) -> String {
    format!("soapcache.{service}.work.{p}")
}

pub fn delay(service: &str, step_ms: u64) -> String {
    format!("soapcache.{service}.delay.{step_ms}")
}

pub fn dead(service: &str) -> String {
    format!("soapcache.{service}.dead")
}

/// The queue a message of `service` with `order_key` is published to.
pub fn route(service: &str, order_key: Option<&str>) -> String {
    match order_key {
        None => work(service),
        Some(key) => {
            let digest = blake3::hash(key.as_bytes());
            let b = digest.as_bytes();
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            partition(service, n % PARTITIONS)
        }
    }
}

/// The step to wait in for `remaining`: the largest not longer, or the
/// shortest when even that is longer.
pub fn step_for(remaining: Duration) -> u64 {
    let ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    DELAY_STEPS_MS
        .iter()
        .rev()
        .copied()
        .find(|&step| step <= ms)
        .unwrap_or(DELAY_STEPS_MS[0])
}

/// Messages in the queues of one service, as the broker counts them
/// (ready ones: the broker does not count unacknowledged ones here).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub ready: u64,
    pub retrying: u64,
    pub dead: u64,
}

fn arguments(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert(ShortString::from(*name), value.clone());
    }
    table
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Every queue of `service`, with its arguments, in one batch of declares
/// (sent together, answered together); returns the broker's counts.
pub async fn declare(channel: &Channel, service: &str) -> lapin::Result<Counts> {
    let work_queue = work(service);
    // A message that cannot be read is rejected to the dead letters.
    let to_dead = || {
        arguments(&[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(dead(service).as_str().into()),
            ),
        ])
    };
    let mut names = vec![(work_queue.clone(), to_dead(), Kind::Ready)];
    for p in 0..PARTITIONS {
        let mut args = to_dead();
        args.insert(
            ShortString::from("x-single-active-consumer"),
            AMQPValue::Boolean(true),
        );
        names.push((partition(service, p), args, Kind::Ready));
    }
    for step in DELAY_STEPS_MS {
        let args = arguments(&[
            (
                "x-message-ttl",
                AMQPValue::LongLongInt(i64::try_from(step).unwrap_or(i64::MAX)),
            ),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(work_queue.as_str().into()),
            ),
        ]);
        names.push((delay(service, step), args, Kind::Retrying));
    }
    names.push((dead(service), FieldTable::default(), Kind::Dead));
    let declares = names
        .iter()
        .map(|(name, args, _)| channel.queue_declare(name, durable(), args.clone()));
    let answers = futures_util::future::join_all(declares).await;
    let mut counts = Counts::default();
    for ((_, _, kind), answer) in names.iter().zip(answers) {
        let n = u64::from(answer?.message_count());
        match kind {
            Kind::Ready => counts.ready += n,
            Kind::Retrying => counts.retrying += n,
            Kind::Dead => counts.dead += n,
        }
    }
    Ok(counts)
}

enum Kind {
    Ready,
    Retrying,
    Dead,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_goes_in_the_largest_step_that_fits() {
        assert_eq!(step_for(Duration::from_millis(10)), 250);
        assert_eq!(step_for(Duration::from_millis(999)), 250);
        assert_eq!(step_for(Duration::from_secs(1)), 1_000);
        assert_eq!(step_for(Duration::from_secs(300)), 256_000);
    }

    #[test]
    fn one_value_always_goes_to_one_partition() {
        assert_eq!(route("s", Some("C-1")), route("s", Some("C-1")));
        assert_eq!(route("s", None), "soapcache.s.work");
        assert!(route("s", Some("C-2")).starts_with("soapcache.s.work."));
    }
}
