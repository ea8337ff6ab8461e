//! Fuzz target: arbitrary input to [`Connection::handle_input`], for a fresh server and for both roles
//! after a real handshake, with the application issuing commands and the clock moving in between.
//!
//! The first octet picks the mode (modulo 5), the second the options (small or default settings on each
//! side, chunk sizes, seed):
//! - `0`: raw: the rest is the wire, fed in random chunks to a fresh server (preface, HELLO, ...);
//! - `1`: a server after a handshake with a real agent, driven by the operations below;
//! - `2`: an agent after a handshake with a real server, driven by the operations below;
//! - `3`: raw: the rest is the wire, fed in random chunks to an established server and agent;
//! - `4`: a real agent and a real server wired back to back ([`Pair`]), both applications driven by the
//!   operations, octets delivered in random chunks, the clock moving.
//!
//! Operations (modes 1 and 2), one octet each plus arguments, so that the fuzzer reaches the stream and
//! flow-control states quickly instead of having to discover the framing first: raw octets, a frame with
//! a correct length but arbitrary type/flags/stream/payload, a well-formed frame of a chosen type, flush
//! the pending octets in random chunks, advance the clock, an application command, end of file.
//!
//! Checked, beyond "never panics" and the connection's own `debug_assert!` invariants (cargo fuzz builds
//! with debug assertions):
//! - a correctly formed preface and HELLO is accepted however it is split (mode 1 and 2 handshakes);
//! - everything a connection transmits decodes without error under the limits its peer announced
//!   (a connection never emits an invalid or oversized frame, whatever it was fed);
//! - nothing is reported after `Event::Closed`, and `Closed` comes exactly once if at all;
//! - mode 4: two compliant connections never accuse each other of an error, whatever their applications
//!   do through the API (unless one of them aborts), and every stream's body arrives intact and in order:
//!   a prefix of what was sent at every moment, all of it when the stream finishes.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use protocol::testing::pair::{Pair, Rng};
use protocol::tunnel::frame::{Decoder, Frame, MAX_FRAME_SIZE_LIMIT, PREFACE};
use protocol::{
    AgentHello, CloseReason, Config, Connection, ErrorCode, Event, Settings, StreamId, proto,
};

/// Reads arguments from the fuzz input; zeros once it runs out.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a.to_vec()
    }
}

/// Local settings: the defaults, or small windows and limits so flow control and stream limits bite.
fn config(small: bool) -> Config {
    if !small {
        return Config::default();
    }
    Config {
        settings: Settings {
            max_concurrent_streams: 4,
            initial_stream_window: 4096,
            initial_connection_window: 8192,
            max_header_size: 1024,
            idle_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(2),
            ..Settings::default()
        },
        max_transmit: 4096,
        ..Config::default()
    }
}

/// What one application knows and did, and the checks on what it is told.
#[derive(Default)]
struct App {
    /// Streams the application knows about (opened by either side).
    streams: BTreeSet<u32>,
    /// Body octets delivered and not yet released.
    unreleased: Vec<(StreamId, usize)>,
    /// Body octets `send_data` accepted, per stream.
    sent: BTreeMap<u32, Vec<u8>>,
    /// Body octets received, per stream.
    received: BTreeMap<u32, Vec<u8>>,
    /// How many of `received` were checked against what the peer sent (mode 4).
    verified: BTreeMap<u32, usize>,
    /// Streams whose peer direction finished (END or TRAILER seen).
    finished: Vec<u32>,
    closed: Option<CloseReason>,
    /// The application aborted (or closed with an error code).
    aborted: bool,
}

impl App {
    /// Drains and checks the events of `conn`.
    fn events(&mut self, conn: &mut Connection) {
        for _ in 0..100_000 {
            let Some(ev) = conn.poll_event() else {
                break;
            };
            assert!(self.closed.is_none(), "event after Closed: {ev:?}");
            match ev {
                Event::StreamOpened { id, end_stream, .. } => {
                    self.streams.insert(id.0);
                    if end_stream {
                        self.finished.push(id.0);
                    }
                }
                Event::Response {
                    id,
                    end_stream: true,
                    ..
                } => self.finished.push(id.0),
                Event::Data { id, data } => {
                    self.unreleased.push((id, data.len()));
                    self.received
                        .entry(id.0)
                        .or_default()
                        .extend_from_slice(&data);
                }
                Event::Finished { id } | Event::Trailer { id, .. } => self.finished.push(id.0),
                Event::Closed(r) => self.closed = Some(r),
                _ => {}
            }
        }
    }

    fn pick_stream(&self, sel: u8) -> StreamId {
        if self.streams.is_empty() || sel == 0xff {
            StreamId(u32::from(sel))
        } else {
            let known: Vec<u32> = self.streams.iter().copied().collect();
            StreamId(known[usize::from(sel) % known.len()])
        }
    }

    /// An application command chosen by the input. Misuse of the API is allowed and must give a typed
    /// error, never a panic: results are ignored except for bookkeeping.
    fn command(&mut self, c: &mut Connection, input: &mut Input) {
        let which = input.u8() % 9;
        let sel = input.u8();
        let id = self.pick_stream(sel);
        let len = usize::from(input.u16()) % 40_000;
        let flag = input.u8();
        match which {
            0 => {
                let head = proto::RequestHead {
                    service: "fuzz".into(),
                    method: "GET".into(),
                    path: "/".repeat(usize::from(flag) * 8),
                    ..Default::default()
                };
                if let Ok(id) = c.open_stream(head, flag & 1 == 1) {
                    self.streams.insert(id.0);
                }
            }
            1 => {
                let _ = c.send_response(
                    id,
                    proto::ResponseHead {
                        status: 200,
                        headers: vec![],
                    },
                    flag & 1 == 1,
                );
            }
            2 => {
                let body: Vec<u8> = (0..len).map(|i| flag.wrapping_add(i as u8)).collect();
                if let Ok(n) = c.send_data(id, Bytes::from(body.clone()), flag & 1 == 1) {
                    self.sent
                        .entry(id.0)
                        .or_default()
                        .extend_from_slice(&body[..n]);
                }
            }
            3 => {
                let _ = c.finish(id);
            }
            4 => {
                let _ = c.send_trailer(
                    id,
                    proto::Trailer {
                        code: u32::from(flag),
                        message: "done".into(),
                        headers: vec![],
                    },
                );
            }
            5 => c.reset(id, ErrorCode::from_u32(u32::from(flag % 13)), "fuzz"),
            6 => {
                for (id, n) in std::mem::take(&mut self.unreleased) {
                    c.release_capacity(id, n);
                }
            }
            7 => c.close(ErrorCode::NoError, "fuzz goaway"),
            _ => {
                self.aborted = true;
                c.abort(ErrorCode::from_u32(u32::from(flag % 13)), "fuzz abort");
            }
        }
    }
}

/// The connection under test, its application, and the checker of what it transmits.
struct Harness {
    conn: Connection,
    now: Instant,
    /// Decodes everything `conn` transmits, with the limits of the peer that would receive it.
    out: Decoder,
    app: App,
    rng: Rng,
}

impl Harness {
    fn new(conn: Connection, now: Instant, peer_limits: (u32, u32), seed: u64) -> Harness {
        Harness {
            conn,
            now,
            out: Decoder::new(peer_limits.0, peer_limits.1),
            app: App::default(),
            rng: Rng::new(seed),
        }
    }

    /// Drains events and transmits, checking both.
    fn poll(&mut self) {
        self.app.events(&mut self.conn);
        for _ in 0..100_000 {
            let Some(b) = self.conn.poll_transmit() else {
                break;
            };
            self.out.feed(&b);
            loop {
                match self.out.decode() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => panic!("the connection transmitted an invalid frame: {e}"),
                }
            }
        }
    }

    /// Feeds `wire` in random chunks of up to `max_chunk` octets.
    fn deliver(&mut self, wire: &[u8], max_chunk: usize) {
        let mut pos = 0;
        while pos < wire.len() {
            let n = (1 + self.rng.below(max_chunk as u64) as usize).min(wire.len() - pos);
            self.conn.handle_input(&wire[pos..pos + n], self.now);
            pos += n;
            self.poll();
        }
    }

    fn command(&mut self, input: &mut Input) {
        self.app.command(&mut self.conn, input);
        self.poll();
    }

    /// Moves the clock and fires what is due.
    fn advance(&mut self, input: &mut Input) {
        let step = input.u16();
        let d = if step & 0x8000 != 0 {
            Duration::from_secs(u64::from(step & 0x7fff) % 200)
        } else {
            Duration::from_millis(u64::from(step))
        };
        let before = self.now;
        self.now += d;
        // Fire every deadline up to now, in order, as a driver sleeping until each would (bounded).
        for _ in 0..1000 {
            match self.conn.poll_timeout() {
                Some(t) if t <= self.now => {
                    self.conn.handle_timeout(t.max(before));
                    self.poll();
                }
                _ => break,
            }
        }
        self.conn.handle_timeout(self.now);
        self.poll();
    }
}

fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    let len = payload.len() as u32;
    b.put_slice(&len.to_be_bytes()[1..]);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u32(stream);
    b.put_slice(payload);
    b.to_vec()
}

/// A well-formed frame of a type chosen by the input, on a small stream id.
fn good_frame(input: &mut Input, h: &mut Harness) -> Vec<u8> {
    let which = input.u8() % 9;
    let stream = {
        let sel = input.u8();
        if sel < 0x40 {
            StreamId(u32::from(sel))
        } else {
            h.app.pick_stream(sel)
        }
    };
    let flag = input.u8();
    let end_stream = flag & 1 == 1;
    let f = match which {
        0 => {
            let n = usize::from(input.u16()) % 20_000;
            Frame::Data {
                stream,
                data: Bytes::from(vec![flag; n]),
                end_stream,
            }
        }
        1 => Frame::Request {
            stream,
            head: proto::RequestHead {
                service: "svc".into(),
                method: "POST".into(),
                path: "/x".repeat(usize::from(input.u8())),
                headers: vec![],
                timeout_ms: u32::from(flag),
                impersonation: None,
            },
            end_stream,
        },
        2 => Frame::Response {
            stream,
            head: proto::ResponseHead {
                status: u32::from(input.u16()),
                headers: vec![],
            },
            end_stream,
        },
        3 => Frame::Trailer {
            stream,
            trailer: proto::Trailer {
                code: u32::from(flag),
                message: String::new(),
                headers: vec![],
            },
        },
        4 => Frame::Reset {
            stream,
            reset: proto::Reset {
                code: u32::from(flag % 13),
                message: "r".into(),
            },
        },
        5 => Frame::WindowUpdate {
            stream: if flag & 2 == 0 { StreamId(0) } else { stream },
            increment: input.u32() & 0x7fff_ffff,
        },
        6 => Frame::Ping {
            ack: end_stream,
            payload: [flag; 8],
        },
        7 => Frame::GoAway(proto::GoAway {
            last_stream_id: input.u32() & 0x7fff_ffff,
            code: u32::from(flag % 13) * u32::from(flag & 0x10 != 0),
            message: "bye".into(),
        }),
        _ => Frame::Unknown {
            kind: 0x0B | flag,
            flags: flag,
            stream,
            payload: Bytes::from(input.bytes(16)),
        },
    };
    f.to_bytes().to_vec()
}

/// Handshake between a real agent and a real server, every message split into random chunks. Returns
/// both connections, established, with their transmit queues drained.
fn handshake(
    now: Instant,
    agent_small: bool,
    server_small: bool,
    seed: u64,
) -> (Connection, Connection) {
    let mut agent = Connection::agent(
        config(agent_small),
        AgentHello {
            token: "t".into(),
            meta: proto::AgentMeta::default(),
        },
        now,
    );
    let mut server = Connection::server(config(server_small), now);
    let mut rng = Rng::new(seed);
    let mut hello = Vec::new();
    while let Some(b) = agent.poll_transmit() {
        hello.extend_from_slice(&b);
    }
    assert!(hello.starts_with(PREFACE));
    let max_chunk = 1 + seed % 16;
    let mut pos = 0;
    while pos < hello.len() {
        let n = (1 + rng.below(max_chunk) as usize).min(hello.len() - pos);
        server.handle_input(&hello[pos..pos + n], now);
        pos += n;
    }
    match server.poll_event() {
        Some(Event::Hello(_)) => {}
        other => panic!("a valid preface and HELLO split into chunks was not accepted: {other:?}"),
    }
    server.accept(7, "fuzz".into(), now);
    let mut accept = Vec::new();
    while let Some(b) = server.poll_transmit() {
        accept.extend_from_slice(&b);
    }
    let mut pos = 0;
    while pos < accept.len() {
        let n = (1 + rng.below(max_chunk) as usize).min(accept.len() - pos);
        agent.handle_input(&accept[pos..pos + n], now);
        pos += n;
    }
    match agent.poll_event() {
        Some(Event::Connected(e)) => assert_eq!(e.agent_id, 7),
        other => panic!("the agent did not connect: {other:?}"),
    }
    while server.poll_event().is_some() {}
    (agent, server)
}

fn limits(s: &Settings) -> (u32, u32) {
    (s.max_frame_size, s.max_header_size)
}

fn run_ops(h: &mut Harness, input: &mut Input) {
    let mut pending: Vec<u8> = Vec::new();
    // Bounded: every operation consumes at least one octet of the input.
    while !input.is_empty() {
        match input.u8() % 8 {
            0 => {
                let n = usize::from(input.u8());
                pending.extend(input.bytes(n));
            }
            1 => {
                let kind = input.u8();
                let flags = input.u8();
                let stream = if input.u8() & 1 == 0 {
                    u32::from(input.u8())
                } else {
                    input.u32()
                };
                let n = usize::from(input.u8());
                let payload = input.bytes(n);
                pending.extend(raw_frame(kind, flags, stream, &payload));
            }
            2 | 3 => {
                let f = good_frame(input, h);
                pending.extend(f);
            }
            4 => {
                let max_chunk = 1 + usize::from(input.u8()) * 64;
                let wire = std::mem::take(&mut pending);
                h.deliver(&wire, max_chunk);
            }
            5 => h.advance(input),
            6 => h.command(input),
            _ => {
                if input.u8() == 0xEE {
                    h.conn.handle_eof();
                    h.poll();
                }
            }
        }
    }
    let wire = std::mem::take(&mut pending);
    h.deliver(&wire, 4096);
}

/// Checks both applications of a pair after delivering their events.
fn check_pair(p: &mut Pair, apps: &mut [App; 2]) {
    apps[0].events(&mut p.agent);
    apps[1].events(&mut p.server);
    let aborted = apps[0].aborted || apps[1].aborted;
    for (me, other) in [(0usize, 1usize), (1, 0)] {
        if !aborted {
            match &apps[me].closed {
                None | Some(CloseReason::Graceful) => {}
                Some(r) => panic!("a compliant peer was accused: {r}"),
            }
        }
        // Incremental: only octets received since the last check are compared.
        let (a, b) = apps.split_at_mut(1);
        let (mine, theirs) = if me == 0 {
            (&mut a[0], &b[0])
        } else {
            (&mut b[0], &a[0])
        };
        for (id, got) in &mine.received {
            let from = mine.verified.entry(*id).or_insert(0);
            if *from == got.len() {
                continue;
            }
            let sent = theirs.sent.get(id).map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                sent.len() >= got.len() && sent[*from..got.len()] == got[*from..],
                "stream {id}: {} octets received are not a prefix of the {} sent",
                got.len(),
                sent.len()
            );
            *from = got.len();
        }
        let finished = std::mem::take(&mut apps[me].finished);
        for id in finished {
            let got = apps[me].received.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            let sent = apps[other].sent.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            assert!(
                got == sent,
                "stream {id} finished with {} of {} octets",
                got.len(),
                sent.len()
            );
        }
    }
}

/// Mode 4: a real agent and a real server back to back, both applications driven by the input.
fn run_pair(input: &mut Input, opts: u8, now: Instant) {
    let mut p = Pair::new(
        config(opts & 1 == 1),
        config(opts & 2 == 2),
        AgentHello {
            token: "t".into(),
            meta: proto::AgentMeta::default(),
        },
        u64::from(opts),
        now,
    );
    p.max_chunk = 64 + usize::from(opts >> 2) * 512;
    p.handshake(7);
    assert!(p.agent.established().is_some() && p.server.established().is_some());
    while p.server.poll_event().is_some() {}
    let mut apps = [App::default(), App::default()];
    // Bounded: every operation consumes at least one octet of the input.
    while !input.is_empty() {
        match input.u8() % 6 {
            0 | 1 => {
                if input.u8() & 1 == 0 {
                    apps[0].command(&mut p.agent, input);
                } else {
                    apps[1].command(&mut p.server, input);
                }
            }
            2 => {
                for _ in 0..=input.u8() {
                    if !p.step() {
                        break;
                    }
                }
            }
            // Up to 25.5 s at once: enough to cross keepalive intervals and idle timeouts.
            3 => p.advance(Duration::from_millis(u64::from(input.u8()) * 100)),
            4 => {
                let side = usize::from(input.u8() & 1);
                let conn = if side == 0 {
                    &mut p.agent
                } else {
                    &mut p.server
                };
                for (id, n) in std::mem::take(&mut apps[side].unreleased) {
                    conn.release_capacity(id, n);
                }
            }
            _ => {
                for _ in 0..10_000 {
                    if !p.step() {
                        break;
                    }
                }
            }
        }
        check_pair(&mut p, &mut apps);
    }
    for _ in 0..100_000 {
        let moved = p.step();
        check_pair(&mut p, &mut apps);
        if !moved {
            break;
        }
    }
    if !apps[0].aborted && !apps[1].aborted {
        let graceful = |a: &App| matches!(a.closed, Some(CloseReason::Graceful));
        assert_eq!(
            graceful(&apps[0]),
            graceful(&apps[1]),
            "one side finished a graceful shutdown, the other did not"
        );
    }
}

/// The target's body: runs one input through the checks above; panics on a violation.
pub fn run(data: &[u8]) {
    let mut input = Input { data };
    let mode = input.u8();
    let opts = input.u8();
    let now = Instant::now();
    let seed = u64::from(opts);
    match mode % 5 {
        0 => {
            let server = Connection::server(config(opts & 1 == 1), now);
            let mut h = Harness::new(
                server,
                now,
                (MAX_FRAME_SIZE_LIMIT, MAX_FRAME_SIZE_LIMIT),
                seed,
            );
            let wire = input.bytes(usize::MAX);
            h.deliver(&wire, 1 + usize::from(opts >> 1) * 16);
            h.advance(&mut Input { data: &[0x80, 20] });
        }
        1 | 2 => {
            let (agent_small, server_small) = (opts & 1 == 1, opts & 2 == 2);
            let (agent, server) = handshake(now, agent_small, server_small, seed);
            let mut h = if mode % 5 == 1 {
                let peer = limits(agent.local_settings());
                Harness::new(server, now, peer, seed)
            } else {
                let peer = limits(server.local_settings());
                Harness::new(agent, now, peer, seed)
            };
            run_ops(&mut h, &mut input);
        }
        4 => run_pair(&mut input, opts, now),
        _ => {
            let (agent, server) = handshake(now, opts & 1 == 1, opts & 2 == 2, seed);
            let wire = input.bytes(usize::MAX);
            let agent_limits = limits(agent.local_settings());
            let server_limits = limits(server.local_settings());
            let mut hs = Harness::new(server, now, agent_limits, seed);
            hs.deliver(&wire, 1 + usize::from(opts >> 2) * 16);
            let mut ha = Harness::new(agent, now, server_limits, seed);
            ha.deliver(&wire, 1 + usize::from(opts >> 2) * 16);
        }
    }
}
