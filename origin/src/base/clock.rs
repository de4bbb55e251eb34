//! The origin's one clock: the only caller of `SystemTime::now` in the
//! crate (clippy's `disallowed-methods` forbids it everywhere else).
//!
//! Versions are microseconds since the Unix epoch, so a version stays
//! meaningful across restarts and can serve as the change feed's cursor;
//! token expiry is checked in seconds on the same clock. Tests make a
//! [`Clock::manual`] one and move it by hand (a token that expires, a feed
//! horizon that passes) instead of waiting for real time.
//!
//! Monotonic time (deadlines, pauses, ages) is `tokio::time::Instant`,
//! which tests control with tokio's paused time; it is not this clock's job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, from the system or from a test's hand.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock; `Some`: microseconds set by a test.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that reads `micros` until moved with [`Clock::advance`].
    #[cfg(test)]
    pub(crate) fn manual(micros: u64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(micros))),
        }
    }

    /// Moves a manual clock forward (the system clock ignores it).
    #[cfg(test)]
    pub(crate) fn advance(&self, by: std::time::Duration) {
        if let Some(m) = &self.manual {
            let by = u64::try_from(by.as_micros()).unwrap_or(u64::MAX);
            m.fetch_add(by, Ordering::SeqCst);
        }
    }

    /// Microseconds since the Unix epoch.
    pub fn now_micros(&self) -> u64 {
        match &self.manual {
            Some(m) => m.load(Ordering::SeqCst),
            None => {
                #[allow(clippy::disallowed_methods)]
                let now = SystemTime::now();
                now.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            }
        }
    }

    /// Seconds since the Unix epoch (token expiry).
    pub fn unix_secs(&self) -> u64 {
        self.now_micros() / 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_manual_clock_moves_only_by_hand() {
        let c = Clock::manual(5_000_000);
        assert_eq!((c.now_micros(), c.unix_secs()), (5_000_000, 5));
        c.advance(Duration::from_millis(1500));
        assert_eq!((c.now_micros(), c.unix_secs()), (6_500_000, 6));
        let system = Clock::system();
        // After 2020 and moving forward.
        let a = system.now_micros();
        assert!(a > 1_577_836_800_000_000);
        assert!(system.now_micros() >= a);
    }
}
