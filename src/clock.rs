//! The wall clock soapcache judges lifetimes by. It is the system clock,
//! unless shifted once at startup (the hidden `--fake-now` flag) so that
//! black-box tests can check daily expiry around a boundary without
//! sleeping. Time keeps running from the shifted instant.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// `(ahead, by)`: the clock runs `by` ahead of (or behind) the system's.
static SHIFT: OnceLock<(bool, Duration)> = OnceLock::new();

/// Makes `now()` read `fake` at this instant. Only the first call counts.
pub fn pretend_now_is(fake: SystemTime) {
    let real = SystemTime::now();
    let shift = match fake.duration_since(real) {
        Ok(ahead) => (true, ahead),
        Err(behind) => (false, behind.duration()),
    };
    let _ = SHIFT.set(shift);
}

pub fn now() -> SystemTime {
    let real = SystemTime::now();
    match SHIFT.get() {
        None => real,
        Some((true, by)) => real + *by,
        Some((false, by)) => real - *by,
    }
}
