//! `--bwlimit`: a cap on the rate the sender puts chunk data on the wire.
//!
//! Administrators migrate over links they share with production traffic. All data streams draw
//! from one [`RateLimit`], which paces bytes like a serial line of the given rate: a frame may
//! leave when the frames before it would have finished crossing. Idle time is not saved up
//! beyond a short burst, so a pause is never followed by a flood.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far ahead of the paced schedule a sender may run (a burst), and how far behind it the
/// schedule may lag after idle time before it is reset.
const SLACK: Duration = Duration::from_millis(50);

/// A shared pacing schedule, in bytes per second.
#[derive(Debug)]
pub(crate) struct RateLimit {
    bytes_per_s: u64,
    /// When the bytes scheduled so far will have crossed.
    next_free: Mutex<Instant>,
}

impl RateLimit {
    /// A limit of `bytes_per_s` (at least 1).
    pub(crate) fn new(bytes_per_s: u64) -> Self {
        RateLimit {
            bytes_per_s: bytes_per_s.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Books `bytes` on the schedule and returns how long to wait before sending them.
    fn book(&self, bytes: u64, now: Instant) -> Duration {
        let mut next = crate::lock(&self.next_free);
        // After idle time the schedule restarts from now (minus a burst's worth of credit).
        let start = (*next).max(now.checked_sub(SLACK).unwrap_or(now));
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        *next = start + cost;
        start.saturating_duration_since(now + SLACK)
    }

    /// Waits until `bytes` more may be sent.
    pub(crate) async fn take(&self, bytes: u64) {
        let wait = self.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_paces_to_the_rate() {
        let limit = RateLimit::new(1_000_000);
        let now = Instant::now();
        // Within the burst allowance: no wait.
        assert_eq!(limit.book(10_000, now), Duration::ZERO);
        // 10 MB at 1 MB/s books 10 s; the next booking waits for that (less the burst slack).
        limit.book(10_000_000, now);
        let wait = limit.book(1, now);
        assert!(
            wait > Duration::from_millis(9_900) && wait < Duration::from_millis(10_010),
            "{wait:?}"
        );
    }

    #[test]
    fn idle_time_is_not_saved_up() {
        let limit = RateLimit::new(1_000_000);
        let start = Instant::now();
        limit.book(1_000_000, start);
        // A minute later the schedule is long past: the next large booking starts now, and
        // one after it must wait for it (no minute's worth of credit).
        let later = start + Duration::from_secs(60);
        assert_eq!(limit.book(2_000_000, later), Duration::ZERO);
        let wait = limit.book(1, later);
        assert!(wait > Duration::from_millis(1_800), "{wait:?}");
    }

    #[tokio::test]
    async fn take_really_waits() {
        let limit = RateLimit::new(10_000_000);
        let started = Instant::now();
        // 2 MB at 10 MB/s: at least ~150 ms after the first 50 ms of burst.
        for _ in 0..4 {
            limit.take(500_000).await;
        }
        limit.take(1).await;
        assert!(started.elapsed() >= Duration::from_millis(140));
    }
}
