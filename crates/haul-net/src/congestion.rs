//! A congestion controller for bulk transfer over long paths with a little random loss.
//!
//! Loss-based controllers (CUBIC, Reno) cut their window at every loss. A WAN or VPN path that
//! drops 0.1% of packets at random, congested or not, holds them to about 1% of a gigabit
//! link at 40 ms. quinn's BBR ignores random loss but, being an old and unmaintained
//! implementation, paces from its inflated window and kept a 10 MB router queue overflowing
//! (a quarter of all packets dropped, 58% of the link delivered).
//!
//! [`LossTolerant`] wraps CUBIC and passes a loss on only when it looks like congestion: when
//! the bytes lost over the last two round trips exceed 1% of the bytes sent in them (the
//! threshold BBRv2 uses for the same decision) and at least three packets' worth. Scattered random loss stays under it; a
//! queue that overflows drops a burst and crosses it, and CUBIC then backs off as usual.
//! Persistent congestion (a path that went silent) is always passed on, and so is every loss
//! on a path with a round trip under 5 ms (a LAN, this host): random loss is a WAN
//! phenomenon, and on loopback a loss is the receiver's socket overflowing. Ignoring those let
//! a sender keep a busy receiver dropping every other packet until quinn gave up on a stream
//! with more than 1024 gaps.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Loss over the last two round trips, as a share of what was delivered or lost in them,
/// above which a loss is congestion.
const LOSS_THRESHOLD: f64 = 0.01;
/// Fewer bytes than this lost over the last two round trips are never congestion: while the
/// window is small (slow start) a single random loss is a large share, and backing off for
/// it would end slow start at a fraction of the path's capacity. Three packets' worth.
const MIN_CONGESTION_LOSS: u64 = 3 * 1200;
/// Below this round trip the path is a LAN or this host, where packets are not lost at random:
/// every loss there is a full buffer (often the receiver's socket), and is passed on as it is.
const LAN_RTT: Duration = Duration::from_millis(5);
/// The shortest accounting period (on a LAN the round trip is too short to count over).
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Builds [`LossTolerant`] controllers.
#[derive(Debug, Default)]
pub struct LossTolerantConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for LossTolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.cubic.clone().build(now, current_mtu),
            loss: LossWindow::new(now),
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    acked: u64,
    lost: u64,
}

/// Bytes delivered and lost over the last two periods of about one round trip.
#[derive(Clone, Copy, Debug)]
struct LossWindow {
    period_start: Instant,
    period: Duration,
    /// The smoothed round trip, once measured.
    rtt: Option<Duration>,
    current: Counts,
    previous: Counts,
}

impl LossWindow {
    fn new(now: Instant) -> Self {
        LossWindow {
            period_start: now,
            period: MIN_PERIOD,
            rtt: None,
            current: Counts::default(),
            previous: Counts::default(),
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.period_start);
        if elapsed >= 2 * self.period {
            // Idle for more than a period: nothing recent to compare with.
            self.previous = Counts::default();
            self.current = Counts::default();
            self.period_start = now;
        } else if elapsed >= self.period {
            self.previous = self.current;
            self.current = Counts::default();
            self.period_start = now;
        }
    }

    fn acked(&mut self, now: Instant, bytes: u64, rtt: Duration) {
        self.rtt = Some(rtt);
        self.period = rtt.max(MIN_PERIOD);
        self.roll(now);
        self.current.acked += bytes;
    }

    /// Counts a loss; true if the loss over the last two periods is more than random loss.
    fn lost(&mut self, now: Instant, bytes: u64) -> bool {
        self.roll(now);
        self.current.lost += bytes;
        if self.rtt.is_some_and(|rtt| rtt < LAN_RTT) {
            return true;
        }
        let acked = self.current.acked + self.previous.acked;
        let lost = self.current.lost + self.previous.lost;
        lost >= MIN_CONGESTION_LOSS && lost as f64 > LOSS_THRESHOLD * (acked + lost) as f64
    }
}

/// CUBIC that does not back off for scattered random loss (see the module docs).
pub struct LossTolerant {
    inner: Box<dyn Controller>,
    loss: LossWindow,
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.loss.acked(now, bytes, rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if self.loss.lost(now, lost_bytes) || is_persistent_congestion {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.inner.clone_box(),
            loss: self.loss,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(40);

    /// Acks `bytes` evenly over `over` from `start`; returns when the last ack came.
    fn deliver(w: &mut LossWindow, start: Instant, bytes: u64, over: Duration) -> Instant {
        let packets = bytes / 1200;
        let mut now = start;
        for n in 0..packets {
            now = start + over.mul_f64(n as f64 / packets as f64);
            w.acked(now, 1200, RTT);
        }
        now
    }

    #[test]
    fn scattered_random_loss_is_not_congestion() {
        let start = Instant::now();
        let mut w = LossWindow::new(start);
        let mut now = start;
        // 0.1% loss for two seconds: one packet in a thousand, every round trip.
        for _ in 0..50 {
            now = deliver(&mut w, now, 6_000_000, RTT);
            assert!(
                !w.lost(now, 6_000),
                "0.1% loss must not count as congestion"
            );
        }
    }

    #[test]
    fn a_burst_of_loss_is_congestion() {
        let start = Instant::now();
        let mut w = LossWindow::new(start);
        let now = deliver(&mut w, start, 6_000_000, 3 * RTT);
        // A queue overflowing: 5% of the last round trips' packets at once.
        assert!(w.lost(now, 300_000));
    }

    #[test]
    fn old_deliveries_do_not_dilute_new_loss() {
        let start = Instant::now();
        let mut w = LossWindow::new(start);
        let now = deliver(&mut w, start, 600_000_000, Duration::from_secs(4));
        // Four seconds later, little has been delivered lately: the same loss now counts.
        let later = now + Duration::from_secs(4);
        w.acked(later, 100_000, RTT);
        assert!(w.lost(later, 6_000));
        // One lost packet while the window is small (slow start) is not congestion.
        let mut fresh = LossWindow::new(start);
        fresh.acked(start, 12_000, RTT);
        assert!(!fresh.lost(start, 1_200));
    }

    #[test]
    fn on_a_lan_every_loss_is_congestion() {
        let start = Instant::now();
        let mut w = LossWindow::new(start);
        let mut now = start;
        for _ in 0..100 {
            now += Duration::from_micros(100);
            w.acked(now, 64_000, Duration::from_micros(300));
        }
        assert!(
            w.lost(now, 1_200),
            "one loss in thousands on loopback is still congestion"
        );
    }

    #[test]
    fn the_controller_passes_congestion_on_and_ignores_random_loss() {
        let start = Instant::now();
        let mut c = Arc::new(LossTolerantConfig::default()).build(start, 1200);
        let before = c.window();
        // One packet lost before anything was delivered: too little to be congestion.
        c.on_congestion_event(start, start, false, 1200);
        assert_eq!(c.window(), before);
        // A burst with nothing delivered: congestion, and CUBIC backs off.
        c.on_congestion_event(start, start, false, 12_000);
        assert!(c.window() < before);
        let shrunk = c.window();
        c.on_congestion_event(start, start, true, 1200);
        assert!(
            c.window() <= shrunk,
            "persistent congestion is always passed on"
        );
    }
}
