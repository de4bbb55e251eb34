//! The one retry schedule: exponential backoff, optionally with full
//! jitter.
//!
//! Every retry in the origin takes its pauses from a [`Backoff`]: the
//! flusher's per-key retries, its drain at shutdown, the warm load while the
//! store is unreachable, and the pusher while the edge fails. A crate such
//! as `backon` models a retry as an iterator owned by one retrying loop;
//! the backlog instead keeps only an attempt count per pending key (a
//! hundred thousand keys may be backing off at once), so the schedule here
//! is a pure function of the attempt number, and [`Retry`] is the
//! iterator-style view for the loops.

use std::time::Duration;

/// Pauses that double from `base` up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: bool,
}

impl Backoff {
    /// Doubling pauses from `base`, never longer than `cap`.
    pub(crate) const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            jitter: false,
        }
    }

    /// The same schedule with full jitter (a uniform pause between zero and
    /// the ceiling), so that many keys failing together do not retry in
    /// lockstep.
    pub(crate) const fn with_jitter(self) -> Backoff {
        Backoff {
            jitter: true,
            ..self
        }
    }

    /// The longest pause of the schedule.
    #[cfg(test)]
    pub(crate) fn cap(&self) -> Duration {
        self.cap
    }

    /// The pause before retry number `attempt` (0 is the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        if self.jitter {
            ceiling.mul_f64(fastrand::f64())
        } else {
            ceiling
        }
    }

    /// A fresh sequence of pauses for one retrying loop.
    pub(crate) fn retry(self) -> Retry {
        Retry {
            schedule: self,
            attempt: 0,
        }
    }
}

/// One loop's position in a [`Backoff`] schedule.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    schedule: Backoff,
    attempt: u32,
}

impl Retry {
    /// The next pause (and counts the attempt).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.schedule.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first pause after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_jitter_stays_below_the_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let pauses: Vec<u64> = (0..8).map(|a| b.delay(a).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(5));
        let j = b.with_jitter();
        for a in 0..40 {
            assert!(j.delay(a) <= b.delay(a));
        }
        let mut r = b.retry();
        assert_eq!(r.next_delay(), Duration::from_millis(100));
        assert_eq!(r.next_delay(), Duration::from_millis(200));
        r.reset();
        assert_eq!(r.next_delay(), Duration::from_millis(100));
    }
}
