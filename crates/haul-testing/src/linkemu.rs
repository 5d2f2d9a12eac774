//! A user-space WAN link: a UDP relay between one client and one upstream address that applies
//! a bottleneck rate, a drop-tail queue, one-way delay, jitter, random loss and an MTU to each
//! direction independently.
//!
//! Why user space: the test machines' kernels have no `netem` qdisc, and a relay needs no
//! privileges. The model per direction is the classic serialisation one: a packet of `n` bytes
//! leaves the bottleneck at `max(arrival, previous departure) + n * 8 / rate`, waits in a
//! drop-tail queue whose occupancy is exactly the backlog of not-yet-departed bytes, may be lost
//! on the wire after the bottleneck (so a lost packet still used its share of the rate), and is
//! delivered `delay ± jitter` after departure. Without jitter nothing is ever reordered.
//!
//! Each direction runs on one std thread: it sleeps in `poll` until a packet arrives or the next
//! delivery is due, reads what is waiting without blocking, and sends whatever is due. Buffers
//! are recycled so the steady state allocates nothing.
//!
//! The relay must not be what limits the transfer it measures. A gigabit of 1472-byte datagrams
//! is 85,000 packets a second each way through it; read and sent one system call each, the relay
//! took 60% of a core (mostly kernel time) from the two-core benchmark host that also runs both
//! ends. So it reads with UDP GRO and `recvmmsg` and sends with UDP GSO, through `quinn-udp`: a
//! run of same-sized packets due together leaves in one call, as a NIC's interrupt moderation
//! would hand them over. Packets due within [`DELIVERY_SLACK`] of now count as due; each is
//! still scheduled, queued, rate-limited and lost one by one.
//!
//! Every step is counted ([`DirStats`]): bytes through the bottleneck and the serialisation time
//! booked for them, packets that queued, the peak backlog, packets delayed and the delay given
//! them. Those are the model's own figures, not measurements, so a test can check what the link
//! did without timing it on a machine that may be busy.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec};

/// The largest UDP payload on a 1500-byte Ethernet IPv4 path (1500 - 20 IP - 8 UDP), so QUIC
/// path-MTU discovery settles where it would on a real network rather than at loopback's 64 KiB.
pub const ETHERNET_UDP_PAYLOAD: usize = 1472;
/// Longest sleep between checks of the stop flag.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Receive calls per wake-up before due deliveries get their turn, so a flood cannot starve
/// them (each call reads up to [`RECV_BUFFERS`] GRO batches).
const READ_BATCH: usize = 16;
/// Buffers handed to one `recvmmsg`.
const RECV_BUFFERS: usize = 8;
/// One receive buffer: a GRO batch is at most one 64 KiB UDP datagram's worth; twice that
/// leaves room whatever the kernel coalesces.
const RECV_BUFFER: usize = 128 * 1024;
/// The most bytes one GSO send carries (the kernel takes at most 64 KiB per send).
const MAX_SEND: usize = 60_000;
/// A packet due this soon is sent now, with the others due: 100 µs is less than a NIC's
/// interrupt moderation delays packets, and lets a gigabit's packets leave eight at a time.
pub const DELIVERY_SLACK: Duration = Duration::from_micros(100);
/// Kernel buffer asked for on both relay sockets: bursts at 1 Gbit/s overflow the default.
const SOCKET_BUFFER: usize = 32 * 1024 * 1024;
/// Spare buffers kept for reuse; more than this are freed.
const POOL_MAX: usize = 8192;

/// What one direction of the link does to the packets crossing it.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    /// Bottleneck rate in bits per second; 0 means unlimited (no queueing at all).
    pub rate_bits_per_s: u64,
    /// One-way propagation delay added after the bottleneck (the round trip is the sum of both
    /// directions' delays).
    pub delay: Duration,
    /// Each packet's delay is drawn uniformly from `delay ± jitter` (floored at 0); packets may
    /// then be reordered, as on a real jittery path.
    pub jitter: Duration,
    /// Probability in `0..=1` that a packet is lost after the bottleneck.
    pub loss: f64,
    /// Drop-tail queue limit in bytes of backlog; `None` means one round trip at the rate
    /// (`rate * 2 * delay`) plus 128 KiB, see [`queue_limit`](Self::queue_limit).
    pub queue_bytes: Option<usize>,
    /// Packets with a UDP payload larger than this are dropped, like an IP path without
    /// fragmentation.
    pub mtu: usize,
    /// Seed for the loss and jitter draws: the same seed and traffic lose the same packets.
    pub seed: u64,
}

impl Default for LinkSpec {
    /// A perfect Ethernet-MTU link: unlimited rate, no delay, no loss.
    fn default() -> Self {
        LinkSpec {
            rate_bits_per_s: 0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: None,
            mtu: ETHERNET_UDP_PAYLOAD,
            seed: 0,
        }
    }
}

impl LinkSpec {
    /// A link with this rate, one-way delay and loss probability; the rest is the default.
    pub fn wan(rate_bits_per_s: u64, delay: Duration, loss: f64) -> Self {
        LinkSpec {
            rate_bits_per_s,
            delay,
            loss,
            ..LinkSpec::default()
        }
    }

    /// The drop-tail limit in bytes: `queue_bytes`, or a round trip's worth of bytes at the
    /// rate plus 128 KiB (a bandwidth-delay product of buffering, the usual router rule).
    pub fn queue_limit(&self) -> usize {
        if let Some(limit) = self.queue_bytes {
            return limit;
        }
        let bdp = u128::from(self.rate_bits_per_s) * 2 * self.delay.as_nanos() / 8_000_000_000;
        usize::try_from(bdp)
            .unwrap_or(usize::MAX)
            .saturating_add(128 * 1024)
    }
}

/// Counters of one direction since the link started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets delivered out of the far side.
    pub packets: u64,
    /// UDP payload bytes delivered.
    pub bytes: u64,
    /// Packets lost at random (`loss`).
    pub dropped_loss: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub dropped_queue: u64,
    /// Packets dropped for being larger than the MTU.
    pub dropped_mtu: u64,
    /// Packets whose final `send` failed (the far side went away, or a full kernel buffer).
    pub send_errors: u64,
    /// Packets that went through the rate bottleneck (those lost after it included); 0 when
    /// the rate is unlimited.
    pub paced_packets: u64,
    /// UDP payload bytes in those packets.
    pub paced_bytes: u64,
    /// Serialisation time the bottleneck booked for them, in nanoseconds: `n * 8 / rate` per
    /// packet of `n` bytes, from the configured rate, not measured. So `paced_bytes * 8e9 /
    /// paced_ns` is the rate the link applied, however busy the machine was.
    pub paced_ns: u64,
    /// Of `paced_packets`, those that found the bottleneck busy and waited in its queue.
    pub queued_packets: u64,
    /// The most bytes the queue ever held (the backlog not yet serialised, counting the packet
    /// just admitted): never more than the queue limit.
    pub peak_backlog_bytes: u64,
    /// Packets given a nonzero propagation delay (`delay ± jitter`) after the bottleneck.
    pub delayed_packets: u64,
    /// The delay they were given in all, in nanoseconds: drawn from the spec, not measured.
    pub delay_ns: u64,
}

impl DirStats {
    /// Packets the link has finished with: delivered, dropped for any reason, or failed to
    /// send. Once this equals what the client sent, nothing more is on its way.
    pub fn handled(&self) -> u64 {
        self.packets + self.dropped_loss + self.dropped_queue + self.dropped_mtu + self.send_errors
    }
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Client to upstream.
    pub up: DirStats,
    /// Upstream to client.
    pub down: DirStats,
}

impl fmt::Display for DirStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packets={} bytes={} dropped_loss={} dropped_queue={} dropped_mtu={} send_errors={} \
             paced_packets={} paced_bytes={} paced_ns={} queued_packets={} \
             peak_backlog_bytes={} delayed_packets={} delay_ns={}",
            self.packets,
            self.bytes,
            self.dropped_loss,
            self.dropped_queue,
            self.dropped_mtu,
            self.send_errors,
            self.paced_packets,
            self.paced_bytes,
            self.paced_ns,
            self.queued_packets,
            self.peak_backlog_bytes,
            self.delayed_packets,
            self.delay_ns
        )
    }
}

impl fmt::Display for LinkStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "up: {}; down: {}", self.up, self.down)
    }
}

#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_mtu: AtomicU64,
    send_errors: AtomicU64,
    paced_packets: AtomicU64,
    paced_bytes: AtomicU64,
    paced_ns: AtomicU64,
    queued_packets: AtomicU64,
    peak_backlog_bytes: AtomicU64,
    delayed_packets: AtomicU64,
    delay_ns: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirStats {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            dropped_loss: get(&self.dropped_loss),
            dropped_queue: get(&self.dropped_queue),
            dropped_mtu: get(&self.dropped_mtu),
            send_errors: get(&self.send_errors),
            paced_packets: get(&self.paced_packets),
            paced_bytes: get(&self.paced_bytes),
            paced_ns: get(&self.paced_ns),
            queued_packets: get(&self.queued_packets),
            peak_backlog_bytes: get(&self.peak_backlog_bytes),
            delayed_packets: get(&self.delayed_packets),
            delay_ns: get(&self.delay_ns),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A running relay; both threads stop (and are joined) on drop.
pub struct LinkEmu {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    up: Arc<Counters>,
    down: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for LinkEmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkEmu")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl LinkEmu {
    /// Relays between a client and `upstream`, listening on a free loopback port; `up` shapes
    /// client-to-upstream packets, `down` the replies.
    pub fn start(upstream: SocketAddr, up: LinkSpec, down: LinkSpec) -> io::Result<LinkEmu> {
        let listen = match upstream.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        };
        LinkEmu::start_on(listen, upstream, up, down)
    }

    /// Like [`start`](Self::start), listening on `listen`. The first address that sends to it
    /// becomes the client; datagrams from any other address are ignored.
    pub fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        up: LinkSpec,
        down: LinkSpec,
    ) -> io::Result<LinkEmu> {
        let client_side = Arc::new(bind_big(listen)?);
        let wildcard = match upstream.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        let upstream_side = Arc::new(bind_big(wildcard)?);
        // Connected, so only the upstream's datagrams reach this socket.
        upstream_side.connect(upstream)?;
        let addr = client_side.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let client = Arc::new(OnceLock::new());
        let (up_counters, down_counters) = (Arc::default(), Arc::default());
        let mut threads = Vec::new();
        for (to_upstream, spec, counters) in
            [(true, up, &up_counters), (false, down, &down_counters)]
        {
            let (from, to) = if to_upstream {
                (client_side.clone(), upstream_side.clone())
            } else {
                (upstream_side.clone(), client_side.clone())
            };
            let from_state = UdpSocketState::new((&*from).into())?;
            let to_state = UdpSocketState::new((&*to).into())?;
            // Different streams per direction even with the same seed.
            let salt = if to_upstream { 0x5555 } else { 0xaaaa };
            let dir = Direction {
                from_state,
                to_state,
                upstream,
                batch: Vec::with_capacity(MAX_SEND),
                shaper: Shaper::new(spec, salt, Arc::clone(counters), Instant::now()),
                to_upstream,
                from,
                to,
                client: client.clone(),
                counters: Arc::clone(counters),
                stop: stop.clone(),
                in_flight: VecDeque::new(),
                pool: Vec::new(),
            };
            let name = if to_upstream {
                "linkemu-up"
            } else {
                "linkemu-down"
            };
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || dir.run());
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Ok(LinkEmu {
            addr,
            stop,
            up: up_counters,
            down: down_counters,
            threads,
        })
    }

    /// The address clients send to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far. While packets are crossing, each direction's counters are read
    /// one after another, so relations between them may be off by a packet in flight; see
    /// [`finish`](Self::finish) for final ones.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
        }
    }

    /// Stops the link and returns its final counters: nothing changes them any more, so the
    /// relations between them hold exactly (every paced packet was lost or delayed, and so on).
    /// Packets still in flight at the stop are delayed but never delivered.
    pub fn finish(mut self) -> LinkStats {
        self.halt();
        self.stats()
    }

    /// Stops both threads and waits for them.
    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Binds a UDP socket with large kernel buffers (forced when privileged), so the relay itself
/// does not lose packets the model did not choose to lose.
fn bind_big(addr: SocketAddr) -> io::Result<UdpSocket> {
    use rustix::net::sockopt;
    let socket = UdpSocket::bind(addr)?;
    // Best effort: a smaller buffer still works, it just overflows sooner.
    let _ = sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_recv_buffer_size(&socket, SOCKET_BUFFER));
    let _ = sockopt::set_socket_send_buffer_size_force(&socket, SOCKET_BUFFER)
        .or_else(|_| sockopt::set_socket_send_buffer_size(&socket, SOCKET_BUFFER));
    Ok(socket)
}

/// A packet on its way: payload and the instant it leaves the far side.
struct Scheduled {
    at: Instant,
    payload: Vec<u8>,
}

/// One direction's model apart from its sockets: MTU, drop-tail queue, rate, loss and delay,
/// on the clock its caller passes in (the relay passes `Instant::now()`, tests made-up instants).
struct Shaper {
    spec: LinkSpec,
    queue_limit: usize,
    rng: Rng,
    counters: Arc<Counters>,
    /// When the bottleneck finishes serialising the last admitted packet.
    free_at: Instant,
}

impl Shaper {
    /// A shaper for `spec` whose bottleneck is idle at `start`; `salt` varies the random
    /// stream between directions that share a seed.
    fn new(spec: LinkSpec, salt: u64, counters: Arc<Counters>, start: Instant) -> Shaper {
        Shaper {
            queue_limit: spec.queue_limit(),
            rng: Rng::new(spec.seed ^ salt),
            spec,
            counters,
            free_at: start,
        }
    }

    /// Runs a packet of `len` bytes arriving at `now` through MTU, queue, rate, loss and delay:
    /// when it leaves the far side, or `None` if it is dropped (and counted as such).
    fn schedule(&mut self, len: usize, now: Instant) -> Option<Instant> {
        if len > self.spec.mtu {
            bump(&self.counters.dropped_mtu, 1);
            return None;
        }
        let mut departure = now;
        if self.spec.rate_bits_per_s > 0 {
            let start = self.free_at.max(now);
            let rate = u128::from(self.spec.rate_bits_per_s);
            let backlog = (start - now).as_nanos() * rate / 8_000_000_000;
            let held = backlog + len as u128;
            if held > self.queue_limit as u128 {
                bump(&self.counters.dropped_queue, 1);
                return None;
            }
            let serialise = len as u128 * 8_000_000_000 / rate;
            self.free_at = start + Duration::from_nanos(serialise as u64);
            departure = self.free_at;
            bump(&self.counters.paced_packets, 1);
            bump(&self.counters.paced_bytes, len as u64);
            bump(&self.counters.paced_ns, serialise as u64);
            if start > now {
                bump(&self.counters.queued_packets, 1);
            }
            self.counters
                .peak_backlog_bytes
                .fetch_max(held as u64, Ordering::Relaxed);
        }
        // Lost on the wire after the bottleneck: it used its share of the rate regardless.
        if self.spec.loss > 0.0 && self.rng.unit() < self.spec.loss {
            bump(&self.counters.dropped_loss, 1);
            return None;
        }
        let mut delay = self.spec.delay;
        if !self.spec.jitter.is_zero() {
            let span = self.spec.jitter.as_nanos() as f64;
            let offset = (self.rng.unit() * 2.0 - 1.0) * span;
            delay = Duration::from_nanos((delay.as_nanos() as f64 + offset).max(0.0) as u64);
        }
        if !delay.is_zero() {
            bump(&self.counters.delayed_packets, 1);
            bump(
                &self.counters.delay_ns,
                u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX),
            );
        }
        Some(departure + delay)
    }
}

/// One direction's state, owned by its thread.
struct Direction {
    shaper: Shaper,
    to_upstream: bool,
    from: Arc<UdpSocket>,
    to: Arc<UdpSocket>,
    /// quinn-udp's state for reading `from` (GRO) and for writing `to` (GSO).
    from_state: UdpSocketState,
    to_state: UdpSocketState,
    /// Where `to` sends: the upstream, or the client once known.
    upstream: SocketAddr,
    client: Arc<OnceLock<SocketAddr>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// Sorted by `at`; without jitter every packet goes to the back.
    in_flight: VecDeque<Scheduled>,
    pool: Vec<Vec<u8>>,
    /// One GSO send being put together.
    batch: Vec<u8>,
}

impl Direction {
    fn run(mut self) {
        let mut buffers: [Vec<u8>; RECV_BUFFERS] = std::array::from_fn(|_| vec![0; RECV_BUFFER]);
        let mut meta = [RecvMeta::default(); RECV_BUFFERS];
        while !self.stop.load(Ordering::Relaxed) {
            // What is due this soon goes now (see `DELIVERY_SLACK`); sleep until the next is.
            let due = Instant::now() + DELIVERY_SLACK;
            self.deliver_due(due);
            let wait = self
                .in_flight
                .front()
                .map_or(IDLE_WAIT, |p| p.at.saturating_duration_since(due))
                .min(IDLE_WAIT);
            if !wait.is_zero() {
                let mut fds = [PollFd::new(&*self.from, PollFlags::IN)];
                let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000_000,
                });
                // An interrupted or failed poll just means another turn of the loop.
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
            for _ in 0..READ_BATCH {
                let mut slices = buffers.each_mut().map(|b| IoSliceMut::new(b));
                let got = match self
                    .from_state
                    .recv((&*self.from).into(), &mut slices, &mut meta)
                {
                    Ok(got) => got,
                    // WouldBlock ends the batch; so does a refused upstream (an ICMP error
                    // reported once), which the next turn of the loop gets past.
                    Err(_) => break,
                };
                for (buffer, meta) in buffers.iter().zip(&meta).take(got) {
                    if !self.accepts(meta.addr) {
                        continue;
                    }
                    // A GRO batch: same-sized datagrams back to back (the last may be shorter).
                    for packet in buffer[..meta.len].chunks(meta.stride.max(1)) {
                        self.admit(packet);
                    }
                }
            }
        }
    }

    /// Whether a datagram from `from` belongs to the link: the upstream's socket is connected,
    /// and the client side takes the first sender as the client and ignores strangers.
    fn accepts(&self, from: SocketAddr) -> bool {
        if !self.to_upstream {
            return true;
        }
        *self.client.get_or_init(|| from) == from
    }

    /// Runs one arriving packet through the [`Shaper`] and, unless dropped, schedules it.
    fn admit(&mut self, packet: &[u8]) {
        let Some(at) = self.shaper.schedule(packet.len(), Instant::now()) else {
            return;
        };
        let mut payload = self.pool.pop().unwrap_or_default();
        payload.clear();
        payload.extend_from_slice(packet);
        let mut slot = self.in_flight.len();
        while slot > 0 && self.in_flight[slot - 1].at > at {
            slot -= 1;
        }
        self.in_flight.insert(slot, Scheduled { at, payload });
    }

    /// Sends every packet whose time has come, runs of equal-sized ones in one GSO send.
    fn deliver_due(&mut self, due: Instant) {
        let destination = if self.to_upstream {
            self.upstream
        } else {
            match self.client.get() {
                Some(client) => *client,
                // Nothing can arrive from upstream before the client spoke.
                None => return,
            }
        };
        let mut segment = 0;
        let mut segments = 0u64;
        while let Some(packet) = self.in_flight.front() {
            if packet.at > due {
                break;
            }
            let len = packet.payload.len();
            // A GSO run is equal-sized segments, the last one possibly shorter: a packet that
            // is longer, or one after a shorter one, starts a new run.
            let fits = segments == 0
                || (len <= segment
                    && self.batch.len().is_multiple_of(segment)
                    && self.batch.len() + len <= MAX_SEND
                    && (segments as usize) < self.to_state.max_gso_segments());
            if !fits {
                self.flush(destination, segment, segments);
                segments = 0;
                continue;
            }
            let Some(packet) = self.in_flight.pop_front() else {
                break;
            };
            if segments == 0 {
                segment = len;
            }
            self.batch.extend_from_slice(&packet.payload);
            segments += 1;
            if self.pool.len() < POOL_MAX {
                self.pool.push(packet.payload);
            }
        }
        self.flush(destination, segment, segments);
    }

    /// Sends the batch of `segments` packets of `segment` bytes (the last may be shorter).
    fn flush(&mut self, destination: SocketAddr, segment: usize, segments: u64) {
        if segments == 0 {
            return;
        }
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.batch,
            segment_size: (segments > 1).then_some(segment),
            src_ip: None,
        };
        match self.to_state.try_send((&*self.to).into(), &transmit) {
            Ok(()) => {
                bump(&self.counters.packets, segments);
                bump(&self.counters.bytes, self.batch.len() as u64);
            }
            Err(_) => bump(&self.counters.send_errors, segments),
        }
        self.batch.clear();
    }
}

/// splitmix64: tiny, fast, and good enough to decide which packets are lost.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long a test waits for the link to finish with what it was sent before calling it a
    /// hang. A guard only: no assertion depends on how quickly the link works.
    const HANG: Duration = Duration::from_secs(60);

    /// A receiving socket standing in for the upstream, with a big buffer so the test itself
    /// drops nothing. Its read timeout is only how often [`drain`] looks at the counters.
    fn upstream() -> UdpSocket {
        let socket = bind_big("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        socket
    }

    fn client() -> UdpSocket {
        bind_big("127.0.0.1:0".parse().unwrap()).unwrap()
    }

    /// A link that shapes nothing, with its upstream and a client.
    fn plain_link() -> (UdpSocket, LinkEmu, UdpSocket) {
        let server = upstream();
        let link = LinkEmu::start(
            server.local_addr().unwrap(),
            LinkSpec::default(),
            LinkSpec::default(),
        )
        .unwrap();
        (server, link, client())
    }

    /// Receives what the link delivers upstream until its counters say it has handled all
    /// `sent` packets (delivered, dropped or failed) and every delivered one has arrived. No
    /// quiet period is guessed, so a busy machine makes this slower, never shorter. Returns each
    /// payload with the time it arrived.
    fn drain(socket: &UdpSocket, link: &LinkEmu, sent: u64) -> Vec<(Instant, Vec<u8>)> {
        let give_up = Instant::now() + HANG;
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        loop {
            let stats = link.stats().up;
            if stats.handled() == sent && got.len() as u64 == stats.packets {
                return got;
            }
            assert!(
                Instant::now() < give_up,
                "after {HANG:?} the link has handled {} of {sent} packets, and {} of the {} it \
                 delivered arrived: {stats}",
                stats.handled(),
                got.len(),
                stats.packets
            );
            match socket.recv(&mut buf) {
                Ok(len) => got.push((Instant::now(), buf[..len].to_vec())),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("receiving from the link: {e}"),
            }
        }
    }

    /// One direction's model on a made-up clock, its counters, and the instant it starts idle.
    fn shaper(spec: LinkSpec) -> (Shaper, Arc<Counters>, Instant) {
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        (
            Shaper::new(spec, 0, counters.clone(), start),
            counters,
            start,
        )
    }

    #[test]
    fn the_bottleneck_books_each_packet_its_serialisation_time() {
        let (mut link, counters, t0) = shaper(LinkSpec {
            rate_bits_per_s: 20_000_000,
            queue_bytes: Some(8 << 20),
            ..LinkSpec::default()
        });
        // 1400 bytes at 20 Mbit/s take 560 µs. A burst all at once leaves one serialisation
        // time apart, the first after one.
        let per_packet = Duration::from_micros(560);
        for i in 1..=1500 {
            assert_eq!(
                link.schedule(1400, t0),
                Some(t0 + per_packet * i),
                "packet {i}"
            );
        }
        // An idle bottleneck starts at once; idle time is not saved up as credit.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(link.schedule(1400, later), Some(later + per_packet));
        let stats = counters.snapshot();
        assert_eq!(
            (stats.paced_packets, stats.paced_bytes, stats.paced_ns),
            (1501, 1501 * 1400, 1501 * 560_000),
            "{stats}"
        );
        assert_eq!(stats.queued_packets, 1499, "all of the burst but its first");
        assert_eq!(stats.peak_backlog_bytes, 1500 * 1400, "{stats}");
        assert_eq!((stats.dropped_queue, stats.delayed_packets), (0, 0));
    }

    #[test]
    fn the_queue_admits_exactly_its_limit() {
        let (mut link, counters, t0) = shaper(LinkSpec {
            rate_bits_per_s: 1_000_000,
            queue_bytes: Some(20_000),
            ..LinkSpec::default()
        });
        // 1000 bytes at 1 Mbit/s take 8 ms: 20 packets fill 20,000 bytes of backlog.
        let admitted = (0..100)
            .filter(|_| link.schedule(1000, t0).is_some())
            .count();
        assert_eq!(admitted, 20);
        // 8 ms later one packet has left: room for exactly one more.
        let later = t0 + Duration::from_millis(8);
        assert_eq!(
            link.schedule(1000, later),
            Some(t0 + Duration::from_millis(168))
        );
        assert_eq!(link.schedule(1000, later), None);
        let stats = counters.snapshot();
        assert_eq!(
            (
                stats.paced_packets,
                stats.dropped_queue,
                stats.peak_backlog_bytes
            ),
            (21, 81, 20_000),
            "{stats}"
        );
    }

    #[test]
    fn delay_and_jitter_are_booked_per_packet() {
        let (mut link, counters, t0) = shaper(LinkSpec::wan(0, Duration::from_millis(40), 0.0));
        assert_eq!(link.schedule(100, t0), Some(t0 + Duration::from_millis(40)));
        let stats = counters.snapshot();
        assert_eq!((stats.delayed_packets, stats.delay_ns), (1, 40_000_000));
        assert_eq!(stats.paced_packets, 0, "an unlimited rate paces nothing");

        let (mut link, counters, t0) = shaper(LinkSpec {
            jitter: Duration::from_millis(10),
            ..LinkSpec::wan(0, Duration::from_millis(40), 0.0)
        });
        let mut total = 0;
        for _ in 0..1000 {
            let delay = link.schedule(100, t0).unwrap() - t0;
            assert!(
                (Duration::from_millis(30)..=Duration::from_millis(50)).contains(&delay),
                "{delay:?}"
            );
            total += delay.as_nanos() as u64;
        }
        let stats = counters.snapshot();
        assert_eq!((stats.delayed_packets, stats.delay_ns), (1000, total));
    }

    #[test]
    fn loss_follows_the_probability_and_the_seed() {
        let run = |seed| {
            let server = upstream();
            let spec = LinkSpec {
                loss: 0.1,
                seed,
                ..LinkSpec::default()
            };
            let link =
                LinkEmu::start(server.local_addr().unwrap(), spec, LinkSpec::default()).unwrap();
            let c = client();
            for i in 0..5000u32 {
                c.send_to(&i.to_be_bytes(), link.addr()).unwrap();
            }
            let got = drain(&server, &link, 5000).len() as u64;
            let stats = link.stats().up;
            assert_eq!(stats.packets, got);
            assert_eq!(stats.packets + stats.dropped_loss, 5000, "{stats}");
            stats.dropped_loss
        };
        let lost = run(7);
        assert!((400..=600).contains(&lost), "lost {lost} of 5000 at 10%");
        assert_eq!(run(7), lost, "the same seed loses the same packets");
    }

    #[test]
    fn the_rate_limits_delivery() {
        let server = upstream();
        let spec = LinkSpec {
            rate_bits_per_s: 20_000_000,
            queue_bytes: Some(8 << 20),
            ..LinkSpec::default()
        };
        let link = LinkEmu::start(server.local_addr().unwrap(), spec, LinkSpec::default()).unwrap();
        let c = client();
        let packet = [7u8; 1400];
        let count = 1500;
        let started = Instant::now();
        for _ in 0..count {
            c.send_to(&packet, link.addr()).unwrap();
        }
        let got = drain(&server, &link, count);
        let stats = link.stats().up;
        assert_eq!(got.len() as u64, count, "{stats}");
        // Each packet was booked 1400 * 8 bits / 20 Mbit/s = 560 µs of the bottleneck: the rate
        // the link applied, as it counted it rather than as a busy machine would time it.
        assert_eq!(
            (stats.paced_packets, stats.paced_bytes, stats.paced_ns),
            (count, count * 1400, count * 560_000),
            "{stats}"
        );
        assert_eq!(
            stats.paced_bytes * 8 * 1_000_000_000 / stats.paced_ns,
            20_000_000
        );
        // The client sent far faster than 560 µs a packet, so packets really queued.
        assert!(stats.queued_packets > 0, "{stats}");
        assert!(stats.peak_backlog_bytes <= 8 << 20, "{stats}");
        assert_eq!(stats.dropped_queue, 0, "{stats}");
        // And the relay kept to the schedule: the last packet cannot arrive before the
        // bottleneck has serialised all of them, less the slack deliveries may leave early by.
        // A lower bound only: a busy machine makes delivery late, never early.
        let span = got[got.len() - 1].0 - started;
        let booked = Duration::from_nanos(stats.paced_ns);
        assert!(
            span >= booked - DELIVERY_SLACK,
            "{count} packets of 1400 bytes crossed 20 Mbit/s in {span:?}, faster than {booked:?}"
        );
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        let server = upstream();
        let spec = LinkSpec {
            rate_bits_per_s: 1_000_000,
            queue_bytes: Some(20_000),
            ..LinkSpec::default()
        };
        let link = LinkEmu::start(server.local_addr().unwrap(), spec, LinkSpec::default()).unwrap();
        let c = client();
        for _ in 0..100 {
            c.send_to(&[1u8; 1000], link.addr()).unwrap();
        }
        let got = drain(&server, &link, 100);
        let stats = link.stats().up;
        assert_eq!(stats.packets, got.len() as u64);
        assert_eq!(stats.dropped_queue + stats.packets, 100, "{stats}");
        // The first 20 always fit (the backlog only shrinks while the client sends). Fitting
        // all 100 would take the client 0.64 s, at the link's 8 ms a packet after the first 20.
        assert!(stats.packets >= 20, "{stats}");
        assert!(stats.dropped_queue > 0, "{stats}");
        // The queue never held more than its limit, and it dropped only when (nearly) full:
        // with less than a packet of room.
        assert!(
            (19_001..=20_000).contains(&stats.peak_backlog_bytes),
            "{stats}"
        );
    }

    #[test]
    fn delay_applies_each_way() {
        let server = upstream();
        server.set_read_timeout(Some(HANG)).unwrap();
        let spec = LinkSpec::wan(0, Duration::from_millis(40), 0.0);
        let link = LinkEmu::start(server.local_addr().unwrap(), spec.clone(), spec).unwrap();
        let c = client();
        c.set_read_timeout(Some(HANG)).unwrap();
        let sent = Instant::now();
        c.send_to(b"ping", link.addr()).unwrap();
        let mut buf = [0u8; 64];
        let (len, from) = server.recv_from(&mut buf).unwrap();
        let one_way = sent.elapsed();
        server.send_to(&buf[..len], from).unwrap();
        let (len, reply_from) = c.recv_from(&mut buf).unwrap();
        let rtt = sent.elapsed();
        assert_eq!(&buf[..len], b"ping");
        assert_eq!(reply_from, link.addr(), "replies come from the relay");
        // Each way, the relay delayed the one packet by the configured 40 ms (booked when it
        // was scheduled; `packets` may not count the reply yet, it is bumped after the send).
        let stats = link.stats();
        for dir in [stats.up, stats.down] {
            assert_eq!(
                (dir.delayed_packets, dir.delay_ns),
                (1, 40_000_000),
                "{stats}"
            );
        }
        // Lower bounds only: a delayed packet cannot arrive before its delay (less the slack
        // the relay may send early by); how much later it arrives is up to the machine.
        assert!(
            one_way >= Duration::from_millis(40) - DELIVERY_SLACK,
            "{one_way:?}"
        );
        assert!(
            rtt >= Duration::from_millis(80) - DELIVERY_SLACK * 2,
            "{rtt:?}"
        );
    }

    #[test]
    fn a_gso_burst_crosses_as_its_packets_and_leaves_in_order() {
        let (server, link, c) = plain_link();
        let state = UdpSocketState::new((&c).into()).unwrap();
        // 30 numbered 1000-byte packets and a 300-byte tail in one send, as QUIC sends them.
        let mut burst = Vec::new();
        for i in 0..30u8 {
            burst.extend_from_slice(&[i; 1000]);
        }
        burst.extend_from_slice(&[30; 300]);
        let transmit = Transmit {
            destination: link.addr(),
            ecn: None,
            contents: &burst,
            segment_size: Some(1000),
            src_ip: None,
        };
        state.try_send((&c).into(), &transmit).unwrap();
        let got: Vec<(u8, usize)> = drain(&server, &link, 31)
            .into_iter()
            .map(|(_, payload)| (payload[0], payload.len()))
            .collect();
        let want: Vec<(u8, usize)> = (0..30).map(|i| (i, 1000)).chain([(30, 300)]).collect();
        assert_eq!(got, want, "{}", link.stats());
        let stats = link.stats().up;
        assert_eq!((stats.packets, stats.bytes), (31, 30_300), "{stats}");
        assert_eq!(
            (stats.paced_packets, stats.delayed_packets),
            (0, 0),
            "a plain link neither paces nor delays: {stats}"
        );
    }

    /// Sends 300 numbered packets through a link with `jitter` and returns the order they came.
    fn arrival_order(jitter: Duration) -> Vec<u32> {
        let server = upstream();
        let spec = LinkSpec {
            jitter,
            ..LinkSpec::wan(50_000_000, Duration::from_millis(30), 0.0)
        };
        let link = LinkEmu::start(server.local_addr().unwrap(), spec, LinkSpec::default()).unwrap();
        let c = client();
        for i in 0..300u32 {
            c.send_to(&i.to_be_bytes(), link.addr()).unwrap();
        }
        drain(&server, &link, 300)
            .into_iter()
            .map(|(_, payload)| u32::from_be_bytes(payload[..4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn only_jitter_reorders() {
        let steady = arrival_order(Duration::ZERO);
        assert_eq!(steady, (0..300).collect::<Vec<_>>());
        let mut jittery = arrival_order(Duration::from_millis(20));
        assert_ne!(
            jittery, steady,
            "20 ms of jitter never reordered 300 packets"
        );
        jittery.sort_unstable();
        assert_eq!(jittery, steady, "jitter must not lose or duplicate");
    }

    #[test]
    fn oversize_packets_and_strangers_do_not_pass() {
        let (server, link, c) = plain_link();
        c.send_to(&[0u8; ETHERNET_UDP_PAYLOAD + 1], link.addr())
            .unwrap();
        // A second sender is not the client, so it is ignored. It is sent before the client's
        // last packet, so the link has dealt with it by the time it has dealt with that one.
        client().send_to(b"stranger", link.addr()).unwrap();
        c.send_to(&[0u8; ETHERNET_UDP_PAYLOAD], link.addr())
            .unwrap();
        let got = drain(&server, &link, 2);
        assert_eq!(
            got.iter().map(|g| g.1.len()).collect::<Vec<_>>(),
            [ETHERNET_UDP_PAYLOAD]
        );
        let stats = link.stats().up;
        assert_eq!((stats.dropped_mtu, stats.packets), (1, 1), "{stats}");
    }

    #[test]
    fn the_default_queue_holds_a_round_trip() {
        let spec = LinkSpec::wan(1_000_000_000, Duration::from_millis(20), 0.0);
        assert_eq!(spec.queue_limit(), 5_000_000 + 128 * 1024);
        let fixed = LinkSpec {
            queue_bytes: Some(9),
            ..spec
        };
        assert_eq!(fixed.queue_limit(), 9);
    }
}
