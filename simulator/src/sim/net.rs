//! The network model of one TCP connection between an agent and a kas replica.
//!
//! A [`Link`] is a reliable, ordered byte stream in each direction, like TCP:
//!
//! - **latency**: every segment takes the link's one-way latency plus a random jitter in
//!   `0..jitter`, but never overtakes an earlier one (TCP delivers in order);
//! - **bandwidth**: a direction sends one segment at a time at `bandwidth` bytes/s, so a large
//!   response queues behind itself and delays what follows;
//! - **partitions**: a segment sent while the agent is cut off from the replica is held (TCP keeps
//!   retransmitting) and arrives one latency after the partition heals;
//! - **NAT**: behind a NAT with an idle timeout, a segment passing after more than `idle_timeout` of
//!   silence in both directions finds the mapping gone: the connection is *dead* from then on and every
//!   segment in either direction is lost, without either side being told;
//! - a connection can also be made dead on purpose (a silent drop).
//!
//! Whether a given instant is inside a partition or a NAT window is decided by the caller, which
//! passes the agent's [`PathFaults`].
//!
//! Each link draws its jitter from its own generator (the run's seed, stream = the flow id), so
//! what a connection's segments do depends on that connection's own history only: the world may
//! advance an idle connection's keepalive round by itself, later, and get the same arrivals
//! (`sim::world`, "Keepalive rounds").

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::clock::SimTime;

/// Direction of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// agent → kas
    Up,
    /// kas → agent
    Down,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// A time window `[from, to)` in which a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: SimTime,
    pub to: SimTime,
}

impl Window {
    pub fn contains(&self, t: SimTime) -> bool {
        self.from <= t && t < self.to
    }
}

/// The faults on one agent's network path (most agents have none).
#[derive(Debug, Clone, Default)]
pub struct PathFaults {
    /// Partitions, each towards one replica or all (`None`).
    pub partitions: Vec<(Window, Option<usize>)>,
    /// NAT windows with their idle timeout.
    pub nat: Vec<(Window, Duration)>,
}

impl PathFaults {
    /// The end of the partition between the agent and replica `kas` at `t`, if one is in force.
    pub fn partitioned_until(&self, kas: usize, t: SimTime) -> Option<SimTime> {
        self.partitions
            .iter()
            .filter(|(w, k)| w.contains(t) && k.is_none_or(|k| k == kas))
            .map(|(w, _)| w.to)
            .max()
    }

    /// The NAT idle timeout in force at `t`, if any.
    pub fn nat_timeout(&self, t: SimTime) -> Option<Duration> {
        self.nat
            .iter()
            .filter(|(w, _)| w.contains(t))
            .map(|(_, d)| *d)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty() && self.nat.is_empty()
    }
}

/// Static properties of a link.
#[derive(Debug, Clone, Copy)]
pub struct LinkParams {
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second, each direction.
    pub bandwidth: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Lane {
    /// The sender is busy serialising until then.
    busy_until: SimTime,
    /// Arrival of the last segment (later ones never arrive earlier).
    last_arrival: SimTime,
    /// Octets sent on this lane.
    bytes: u64,
}

/// One TCP connection's network state (see the module docs).
#[derive(Debug, Clone)]
pub struct Link {
    params: LinkParams,
    /// This link's jitter (see the module docs).
    rng: ChaCha8Rng,
    lanes: [Lane; 2],
    /// Last time a segment passed the agent's NAT (either direction).
    nat_last: SimTime,
    dead: bool,
}

impl Link {
    pub fn new(params: LinkParams, now: SimTime, rng: ChaCha8Rng) -> Link {
        Link {
            params,
            rng,
            lanes: [Lane::default(); 2],
            nat_last: now,
            dead: false,
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Whether the connection is dead (NAT mapping lost, or silently dropped).
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Nothing in flight either way at `now` (every segment sent has arrived, and not at `now`
    /// itself: one arriving now may not have been handled yet), and the connection is not dead.
    pub fn is_quiet(&self, now: SimTime) -> bool {
        !self.dead
            && self
                .lanes
                .iter()
                .all(|l| l.last_arrival < now && l.busy_until <= now)
    }

    /// Kills the connection silently.
    pub fn kill(&mut self) {
        self.dead = true;
    }

    /// Octets sent in a direction so far.
    pub fn bytes(&self, dir: Dir) -> u64 {
        self.lanes[dir.index()].bytes
    }

    /// Sends `len` octets at `now`; returns when they arrive, or `None` if they are lost (the
    /// connection is or just became dead).
    pub fn send(
        &mut self,
        dir: Dir,
        now: SimTime,
        len: usize,
        kas: usize,
        faults: &PathFaults,
    ) -> Option<SimTime> {
        if self.dead {
            return None;
        }
        let jitter_ns = u64::try_from(self.params.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter_ns == 0 {
            0
        } else {
            self.rng.random_range(0..jitter_ns)
        };
        let lane = &mut self.lanes[dir.index()];
        let start = lane.busy_until.max(now);
        let serialise = serialise_ns(len, self.params.bandwidth);
        lane.busy_until = SimTime(start.0.saturating_add(serialise));
        let mut arrival = lane
            .busy_until
            .plus(self.params.latency)
            .plus(Duration::from_nanos(jitter));
        if !faults.is_empty()
            && let Some(heal) = faults.partitioned_until(kas, now)
        {
            arrival = arrival.max(heal.plus(self.params.latency));
        }
        let arrival = arrival.max(lane.last_arrival);
        lane.last_arrival = arrival;
        lane.bytes += len as u64;
        // The NAT sits at the agent: an upward segment passes it when sent, a downward one when it
        // arrives.
        let at_nat = match dir {
            Dir::Up => now,
            Dir::Down => arrival,
        };
        if !faults.is_empty()
            && let Some(idle) = faults.nat_timeout(at_nat)
            && at_nat.since(self.nat_last) > idle
        {
            self.dead = true;
            return None;
        }
        self.nat_last = self.nat_last.max(at_nat);
        Some(arrival)
    }

    /// When a zero-length signal (FIN, RST) sent now would arrive; `None` if the link is dead.
    pub fn signal(
        &mut self,
        dir: Dir,
        now: SimTime,
        kas: usize,
        faults: &PathFaults,
    ) -> Option<SimTime> {
        self.send(dir, now, 0, kas, faults)
    }
}

/// Nanoseconds `len` octets take at `bandwidth` octets per second (at least 1), saturating: in
/// 64 bits when `len * 10^9` fits (every segment), which spares a 128-bit division per segment.
fn serialise_ns(len: usize, bandwidth: u64) -> u64 {
    let bandwidth = bandwidth.max(1);
    match (len as u64).checked_mul(1_000_000_000) {
        Some(n) => n / bandwidth,
        None => {
            (len as u128 * 1_000_000_000 / u128::from(bandwidth)).min(u128::from(u64::MAX)) as u64
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn serialise_ns_is_the_128_bit_quotient() {
        let wide = |len: usize, bw: u64| {
            (len as u128 * 1_000_000_000 / u128::from(bw.max(1))).min(u128::from(u64::MAX)) as u64
        };
        for len in [0, 1, 9, 1500, 65_535, 1 << 24, usize::MAX / 3, usize::MAX] {
            for bw in [0, 1, 3, 125_000, 12_500_000, 1 << 40, u64::MAX] {
                assert_eq!(serialise_ns(len, bw), wide(len, bw), "{len} at {bw}");
            }
        }
    }

    fn params() -> LinkParams {
        LinkParams {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            bandwidth: 1_000_000,
        }
    }

    #[test]
    fn in_order_with_latency_and_bandwidth() {
        let mut l = Link::new(params(), SimTime::ZERO, ChaCha8Rng::seed_from_u64(1));
        let none = PathFaults::default();
        let a = l.send(Dir::Up, SimTime::ZERO, 100_000, 0, &none).unwrap();
        // 100 kB at 1 MB/s = 100 ms, plus 10 ms latency.
        assert!(a >= SimTime::from_duration(Duration::from_millis(110)));
        assert!(a < SimTime::from_duration(Duration::from_millis(115)));
        let b = l.send(Dir::Up, SimTime(1), 1, 0, &none).unwrap();
        assert!(b >= a, "a later segment never overtakes");
    }

    #[test]
    fn partitions_hold_and_nat_kills() {
        let rng = ChaCha8Rng::seed_from_u64(1);
        let mut l = Link::new(params(), SimTime::ZERO, rng.clone());
        let s = |x: u64| SimTime::from_duration(Duration::from_secs(x));
        let faults = PathFaults {
            partitions: vec![(
                Window {
                    from: s(10),
                    to: s(20),
                },
                Some(0),
            )],
            nat: vec![(
                Window {
                    from: s(30),
                    to: s(100),
                },
                Duration::from_secs(5),
            )],
        };
        let held = l.send(Dir::Down, s(12), 10, 0, &faults).unwrap();
        assert!(held >= s(20));
        // Another replica is not partitioned.
        let mut other = Link::new(params(), SimTime::ZERO, rng);
        assert!(other.send(Dir::Down, s(12), 10, 1, &faults).unwrap() < s(13));
        // Quiet for more than the NAT timeout inside the NAT window: dead, both ways, for good.
        assert!(l.send(Dir::Up, s(40), 10, 0, &faults).is_none());
        assert!(l.is_dead());
        assert!(l.send(Dir::Down, s(41), 10, 0, &faults).is_none());
    }
}
