//! A deterministic in-memory harness wiring an agent and a server [`Connection`] back to back on a
//! simulated clock, in the manner of quinn-proto's `Pair`. Octets are delivered in chunks of random
//! size (seeded), so every decoder path that depends on where the input splits gets exercised.
//!
//! Used by this crate's tests and benchmarks, and by anyone testing code on top of the protocol
//! without sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::tunnel::config::Config;
use crate::tunnel::connection::{AgentHello, Connection};
use crate::tunnel::event::Event;

/// Which end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The agent's connection.
    Agent,
    /// kas's connection.
    Server,
}

/// A small deterministic PRNG (xorshift64*), so the harness needs no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Two connections, two in-flight queues, one clock.
#[derive(Debug)]
pub struct Pair {
    /// The agent's side.
    pub agent: Connection,
    /// kas's side.
    pub server: Connection,
    /// The simulated clock.
    pub now: Instant,
    /// The harness's randomness (chunk sizes).
    pub rng: Rng,
    /// Largest chunk delivered at once (chunks are 1..=max_chunk octets, chosen at random).
    pub max_chunk: usize,
    to_server: VecDeque<Bytes>,
    to_agent: VecDeque<Bytes>,
    /// Octets moved in each direction so far.
    pub moved: (u64, u64),
}

impl Pair {
    /// A pair whose agent has already queued its HELLO; `now` is the start of simulated time.
    pub fn new(agent: Config, server: Config, hello: AgentHello, seed: u64, now: Instant) -> Pair {
        Pair {
            agent: Connection::agent(agent, hello, now),
            server: Connection::server(server, now),
            now,
            rng: Rng::new(seed),
            max_chunk: 64 * 1024,
            to_server: VecDeque::new(),
            to_agent: VecDeque::new(),
            moved: (0, 0),
        }
    }

    /// A pair with default configs, connected as agent `agent_id`.
    pub fn connected(seed: u64, now: Instant) -> Pair {
        let mut p = Pair::new(
            Config::default(),
            Config::default(),
            AgentHello::default(),
            seed,
            now,
        );
        p.handshake(1);
        p
    }

    /// Runs the handshake, accepting the agent as `agent_id`. Events other than the handshake's stay
    /// queued in the connections.
    pub fn handshake(&mut self, agent_id: u64) {
        self.drive();
        while let Some(ev) = self.server.poll_event() {
            if let Event::Hello(_) = ev {
                self.server
                    .accept(agent_id, format!("c{agent_id}"), self.now);
            }
        }
        self.drive();
        while let Some(ev) = self.agent.poll_event() {
            if let Event::Connected(_) = ev {
                break;
            }
        }
    }

    /// The connection of `side`.
    pub fn conn(&mut self, side: Side) -> &mut Connection {
        match side {
            Side::Agent => &mut self.agent,
            Side::Server => &mut self.server,
        }
    }

    /// Collects transmits from both sides into the in-flight queues.
    fn collect(&mut self) {
        while let Some(b) = self.agent.poll_transmit() {
            self.to_server.push_back(b);
        }
        while let Some(b) = self.server.poll_transmit() {
            self.to_agent.push_back(b);
        }
    }

    /// Delivers one random-size chunk in each direction. Returns whether anything moved.
    pub fn step(&mut self) -> bool {
        self.collect();
        let a = Self::deliver(
            &mut self.to_server,
            &mut self.server,
            &mut self.rng,
            self.max_chunk,
            self.now,
        );
        let b = Self::deliver(
            &mut self.to_agent,
            &mut self.agent,
            &mut self.rng,
            self.max_chunk,
            self.now,
        );
        self.moved.0 += a as u64;
        self.moved.1 += b as u64;
        a + b > 0
    }

    fn deliver(
        q: &mut VecDeque<Bytes>,
        to: &mut Connection,
        rng: &mut Rng,
        max_chunk: usize,
        now: Instant,
    ) -> usize {
        let Some(front) = q.front_mut() else {
            return 0;
        };
        let n = 1 + rng.below(max_chunk as u64) as usize;
        let n = n.min(front.len());
        let chunk = front.split_to(n);
        if front.is_empty() {
            q.pop_front();
        }
        to.handle_input(&chunk, now);
        n
    }

    /// Moves octets until neither side has anything to send (bounded: panics after 10 million steps,
    /// which would mean a livelock).
    pub fn drive(&mut self) {
        for _ in 0..10_000_000u32 {
            if !self.step() {
                return;
            }
        }
        panic!("pair did not quiesce: livelock");
    }

    /// Advances the clock by `d`, firing every deadline on the way in order and delivering what the
    /// timers make the connections send (with no delay).
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.agent.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = self.now.max(t);
            self.agent.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
            self.drive();
        }
        self.now = end;
    }

    /// Drops everything in flight (a cut cable) without telling either side.
    pub fn cut(&mut self) {
        self.collect();
        self.to_server.clear();
        self.to_agent.clear();
    }
}
