//! The Sans-IO connection state machine, for either role.
//!
//! A [`Connection`] owns no socket and reads no clock. The driver feeds it received octets
//! ([`Connection::handle_input`]) and expired deadlines ([`Connection::handle_timeout`]), and drains what it
//! produces: octets to send ([`Connection::poll_transmit`]), [`Event`]s ([`Connection::poll_event`]) and the
//! next deadline ([`Connection::poll_timeout`]). The application acts on it through commands
//! (`open_stream`, `send_data`, `send_response`, `finish`, `send_trailer`, `reset`, `release_capacity`,
//! `close`, and on the server `accept`/`reject`).
//!
//! Phases: a server waits for the preface and HELLO ([`Phase::AwaitHello`]), reports it and waits for
//! the application's verdict ([`Phase::HelloPending`]); an agent waits for ACCEPT or REJECT
//! ([`Phase::AwaitAccept`]). Both then run [`Phase::Open`] until [`Phase::Closed`]. GOAWAY does not change
//! the phase: it forbids new streams, and the connection closes gracefully once both sides have sent
//! GOAWAY and every stream has ended.
//!
//! Invariants (checked by `debug_assert!` in [`Connection::check_invariants`] after every call in debug
//! builds):
//! - `conn_queued` (body octets accepted but not yet framed) never exceeds the connection send credit,
//!   and each stream's queued octets never exceed its own credit: accepted data is always sendable;
//! - stream counts by initiator match the table; the transmit rotation holds only streams with
//!   something queued;
//! - once closed, no stream remains and no timer is armed;
//! - answers queued while processing the peer's input never exceed four times
//!   `FloodLimits::max_queued_answers` (beyond, the peer is closed with `ENHANCE_YOUR_CALM`).
//!
//! Abuse (PROTOCOL.md §17): frames that cost work without doing any (PINGs, rapid resets, empty DATA,
//! WINDOW_UPDATEs, unknown frame types) are counted per window ([`FloodKind`],
//! [`crate::tunnel::config::FloodLimits`]), and answers the peer does not read are bounded:
//! [`Connection::wants_input`] tells the driver to stop reading while too many are queued.

mod flood;
mod stats;
pub(crate) mod streams;
mod timer;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use prost::Message;

pub use flood::FloodKind;
pub use stats::ConnectionStats;

use crate::proto;
use crate::tunnel::config::{Config, ReplicaInfo, Settings};

use crate::tunnel::error::{
    ApiMisuse, CloseReason, ConnectionError, ErrorCode, OpenError, RejectCode, StreamError,
};
use crate::tunnel::event::{Established, Event, HelloInfo};
use crate::tunnel::flow::{RecvWindow, SendWindow};
use crate::tunnel::frame::{self, Decoder, Frame, PREFACE, StreamId};
use flood::FloodGuard;
use streams::recv::RecvState;
use streams::send::{Chunk, SendState};
use streams::{Stream, Streams};
use timer::{Timer, Timers};

/// DATA payloads at least this long are handed out without a copy by
/// [`Connection::poll_transmit_vectored`]; shorter ones are copied next to their header (a
/// separate buffer would cost more than the copy).
pub const ZERO_COPY_MIN: usize = 2048;

/// The transmit buffer a connection with stream traffic keeps between batches: each batch is split
/// off it and, once the transport wrote (and dropped) it, its octets are reclaimed for the next
/// ones, so that a request's head, body and end are framed without an allocation. It is taken when
/// fewer than [`OUT_MIN_FREE`] octets are free and cannot be reclaimed; a buffer grown above
/// [`OUT_RETAIN_MAX`] is handed out whole rather than kept, and so is the buffer of a batch without
/// stream frames (a PING or its answer, a window update): a connection whose streams are quiet
/// lets its buffer go at its next keepalive, and an idle one holds none.
const OUT_BUFFER: usize = 4 * 1024;
const OUT_MIN_FREE: usize = 1024;
const OUT_RETAIN_MAX: usize = 16 * 1024;

/// Which end of the tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialing side (agentk): sends HELLO, opens odd stream ids.
    Agent,
    /// The accepting side (kas): answers HELLO, opens even stream ids.
    Server,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Server: waiting for the preface and HELLO.
    AwaitHello,
    /// Server: HELLO reported; waiting for `accept` or `reject`.
    HelloPending {
        /// The version the connection will use if accepted.
        version: u32,
    },
    /// Agent: HELLO sent; waiting for ACCEPT or REJECT.
    AwaitAccept,
    /// Handshake done.
    Open,
    /// Over; only the remaining transmit buffer may still be drained.
    Closed,
}

/// What the agent says about itself in HELLO.
#[derive(Clone, Default)]
pub struct AgentHello {
    /// The agent's token (redacted from `Debug`).
    pub token: String,
    /// Version, capabilities, pod.
    pub meta: proto::AgentMeta,
}

impl std::fmt::Debug for AgentHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHello")
            .field("token", &"<redacted>")
            .field("meta", &self.meta)
            .finish()
    }
}

/// One end of a tunnel connection. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    phase: Phase,
    decoder: Decoder,
    preface_seen: bool,
    /// Encoded control frames (and heads) waiting to be transmitted, before any body data.
    out: BytesMut,
    events: VecDeque<Event>,
    streams: Streams,
    peer: Settings,
    send_conn: SendWindow,
    recv_conn: RecvWindow,
    conn_queued: u64,
    next_local_id: u32,
    last_remote_id: u32,
    goaway_sent: bool,
    goaway_received: bool,
    close_reason: Option<CloseReason>,
    established: Option<Established>,
    timers: Timers,
    ping_outstanding: Option<[u8; 8]>,
    pings: u64,
    stats: ConnectionStats,
    flood: FloodGuard,
    /// Octets queued in `out` while processing input (acknowledgements, RESETs, GOAWAY), since
    /// `poll_transmit` last took it.
    input_answers: usize,
    /// Octets of response heads to streams the peer opened queued in `out` since then.
    responses: usize,
}

impl Connection {
    /// An agent connection: the preface and HELLO are queued for transmission at once.
    pub fn agent(config: Config, hello: AgentHello, now: Instant) -> Connection {
        let mut c = Connection::new(Role::Agent, config, now);
        c.out.extend_from_slice(PREFACE);
        c.push_frame(&Frame::Hello(proto::Hello {
            min_version: c.config.min_version,
            max_version: c.config.max_version,
            token: hello.token,
            meta: Some(hello.meta),
            settings: Some(c.config.settings.to_wire()),
        }));
        c.phase = Phase::AwaitAccept;
        c
    }

    /// A server connection, waiting for an agent's preface and HELLO.
    pub fn server(config: Config, now: Instant) -> Connection {
        Connection::new(Role::Server, config, now)
    }

    fn new(role: Role, config: Config, now: Instant) -> Connection {
        let s = config.settings;
        debug_assert!(s.validate().is_ok(), "invalid local settings");
        let handshake = now + config.handshake_timeout;
        Connection {
            role,
            phase: Phase::AwaitHello,
            decoder: Decoder::new(s.max_frame_size, s.max_header_size),
            preface_seen: role == Role::Agent,
            out: BytesMut::new(),
            events: VecDeque::new(),
            streams: Streams::default(),
            peer: Settings::default(),
            send_conn: SendWindow::new(0),
            recv_conn: RecvWindow::new(s.initial_connection_window),
            conn_queued: 0,
            next_local_id: if role == Role::Agent { 1 } else { 2 },
            last_remote_id: 0,
            goaway_sent: false,
            goaway_received: false,
            close_reason: None,
            established: None,
            timers: Timers {
                handshake: Some(handshake),
                ..Timers::default()
            },
            ping_outstanding: None,
            pings: 0,
            stats: ConnectionStats::default(),
            flood: FloodGuard::new(config.flood),
            input_answers: 0,
            responses: 0,
            config,
        }
    }

    // ------------------------------------------------------------------ queries

    /// Which side this connection is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the handshake is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once the connection is over (the transmit buffer may still hold a final GOAWAY).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// The handshake result, once connected.
    pub fn established(&self) -> Option<&Established> {
        self.established.as_ref()
    }

    /// Whether either side sent GOAWAY (no new streams).
    pub fn is_draining(&self) -> bool {
        self.goaway_sent || self.goaway_received
    }

    /// Streams currently open, by initiator: (ours, peer's).
    pub fn open_streams(&self) -> (u32, u32) {
        (self.streams.open_local, self.streams.open_remote)
    }

    /// Settings the peer announced (defaults before the handshake).
    pub fn peer_settings(&self) -> &Settings {
        &self.peer
    }

    /// Our own settings.
    pub fn local_settings(&self) -> &Settings {
        &self.config.settings
    }

    /// Counters since the connection was created.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// Body octets `send_data` would accept on this stream right now.
    pub fn send_capacity(&self, id: StreamId) -> usize {
        match self.streams.map.get(&id) {
            Some(s) if s.send.can_write() => {
                let conn = self.send_conn.available().saturating_sub(self.conn_queued);
                usize::try_from(s.send.unclaimed_credit().min(conn)).unwrap_or(usize::MAX)
            }
            _ => 0,
        }
    }

    /// Whether the stream exists (is neither idle nor closed).
    pub fn stream_exists(&self, id: StreamId) -> bool {
        self.streams.map.contains_key(&id)
    }

    /// Whether the connection wants more input now. False while the answers to the peer's earlier
    /// input — PING acknowledgements, RESETs, and response heads to the streams it opened — exceed
    /// `FloodLimits::max_queued_answers` and have not been taken by `poll_transmit`: the peer is not
    /// reading them, so a driver stops reading too until they are transmitted (back-pressure: the
    /// peer can then not make us queue more). Input fed anyway is still processed; a peer whose
    /// frames make four times the bound pile up in one go is closed with `ENHANCE_YOUR_CALM`.
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Closed || self.queued_answers() <= self.config.flood.max_queued_answers
    }

    /// Octets of answers to the peer (acknowledgements, RESETs, response heads) waiting in the
    /// transmit buffer.
    pub fn queued_answers(&self) -> usize {
        self.input_answers + self.responses
    }

    /// The transmit buffer was taken (or found empty): no answers wait in it any more.
    fn answers_taken(&mut self) {
        self.input_answers = 0;
        self.responses = 0;
    }

    /// Whether `poll_transmit` has something to return.
    pub fn has_pending_transmit(&self) -> bool {
        !self.out.is_empty() || !self.streams.ready.is_empty()
    }

    // ------------------------------------------------------------------ driving

    /// Feeds octets received from the transport.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        self.decoder.feed(data);
        self.process_input(data, now);
    }

    /// Feeds octets received from the transport, handed over without a copy: DATA payloads are
    /// delivered as slices of `data` (see [`Decoder::feed_bytes`]). Same effect as
    /// [`handle_input`](Self::handle_input).
    pub fn handle_input_bytes(&mut self, data: Bytes, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        // `process_input` reads `data` only for the preface: after it, no clone (a clone of a
        // unique `Bytes` allocates its shared header).
        let view = if self.preface_seen {
            Bytes::new()
        } else {
            data.clone()
        };
        self.decoder.feed_bytes(data);
        self.process_input(&view, now);
    }

    /// Decodes and handles what the decoder holds after `data` was fed to it.
    fn process_input(&mut self, data: &[u8], now: Instant) {
        if !self.preface_seen {
            match self.decoder.take_raw(PREFACE.len()) {
                None => {
                    // A peer that is plainly not one of ours (e.g. an HTTP client) is told at once.
                    // Everything buffered so far is preface: `data` sits at its end, so compare it
                    // with the preface octets at the same offset (input may split anywhere).
                    let end = self.decoder.buffered();
                    let start = end.saturating_sub(data.len());
                    if PREFACE.get(start..end) != Some(data) {
                        self.fail(frame_err(crate::tunnel::error::FrameError::BadPreface));
                    }
                    return;
                }
                Some(p) if p[..] == PREFACE[..] => self.preface_seen = true,
                Some(_) => {
                    self.fail(frame_err(crate::tunnel::error::FrameError::BadPreface));
                    return;
                }
            }
        }
        if self.phase == Phase::Open {
            self.arm_liveness(now);
        }
        loop {
            if self.phase == Phase::Closed {
                break;
            }
            let before = self.out.len();
            match self.decoder.decode() {
                Ok(None) => break,
                Ok(Some(f)) => {
                    self.stats.frames_received += 1;
                    if let Err(e) = self.on_frame(f, now) {
                        self.fail(e);
                    }
                }
                Err(e) => self.fail(ConnectionError::Frame(e)),
            }
            // Everything queued while processing the peer's frame answers it.
            self.input_answers += self.out.len().saturating_sub(before);
            let bound = self.config.flood.max_queued_answers;
            if bound > 0
                && self.phase != Phase::Closed
                && self.input_answers > bound.saturating_mul(4)
            {
                self.fail(ConnectionError::UnreadAnswers {
                    queued: self.input_answers,
                    bound,
                });
            }
        }
        self.check_invariants();
    }

    /// The transport reached end-of-file or failed.
    pub fn handle_eof(&mut self) {
        if self.phase != Phase::Closed {
            self.close_now(CloseReason::TransportClosed, ErrorCode::Cancel);
        }
    }

    /// The earliest deadline at which `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            None
        } else {
            self.timers.next()
        }
    }

    /// Processes deadlines that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.expired(now) {
            if self.phase == Phase::Closed {
                break;
            }
            match t {
                Timer::Handshake => {
                    if matches!(
                        self.phase,
                        Phase::AwaitHello | Phase::HelloPending { .. } | Phase::AwaitAccept
                    ) {
                        self.fail(ConnectionError::HandshakeTimeout);
                    }
                }
                Timer::Idle => self.fail(ConnectionError::IdleTimeout),
                Timer::Keepalive => {
                    if self.ping_outstanding.is_none() {
                        self.pings += 1;
                        let payload = self.pings.to_be_bytes();
                        self.ping_outstanding = Some(payload);
                        self.stats.pings_sent += 1;
                        self.push_frame(&Frame::Ping {
                            ack: false,
                            payload,
                        });
                    }
                    self.timers.keepalive = Some(now + self.keepalive_interval());
                }
            }
        }
        self.check_invariants();
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`poll_event`](Self::poll_event) has an event to return.
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Next batch of octets to write to the transport, at most `Config::max_transmit` long (one frame
    /// may make it a little longer). Control frames and heads go first, then body data taken round-robin
    /// from the streams that have some, one frame per stream per turn.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let filled = self.transmit(None);
        if filled.is_empty() {
            None
        } else {
            Some(filled)
        }
    }

    /// The same batch as [`poll_transmit`](Self::poll_transmit), octet for octet, appended to `out`
    /// as several buffers for a vectored write: DATA payloads of at least [`ZERO_COPY_MIN`] octets
    /// are slices of the buffers the application sent (not copied), everything else is framed into
    /// one buffer between them. Returns the number of octets appended (0: nothing to send).
    pub fn poll_transmit_vectored(&mut self, out: &mut VecDeque<Bytes>) -> usize {
        let mut len = 0;
        let last = self.transmit(Some((out, &mut len)));
        if !last.is_empty() {
            len += last.len();
            out.push_back(last);
        }
        len
    }

    /// Frames the next batch; with `slices`, large DATA payloads (and the octets framed before
    /// them) go there, counted in its `usize`. Returns the framed octets not handed out yet.
    fn transmit(&mut self, mut slices: Option<(&mut VecDeque<Bytes>, &mut usize)>) -> Bytes {
        if !self.has_pending_transmit() {
            // Nothing to frame (every driver asks once more after its last batch): no answers wait
            // in the (empty) buffer, and no buffer is touched (splitting an empty one would make it
            // a shared one: an allocation, then reference counting).
            self.answers_taken();
            return Bytes::new();
        }
        let max = self.config.max_transmit;
        // Frames are written into `out`, which keeps the rest of its allocation between calls: `split`
        // hands out the filled part (no copy). An idle connection holds no transmit buffer.
        let mut buf = std::mem::take(&mut self.out);
        self.answers_taken();
        let stream_frames = !self.streams.ready.is_empty();
        if stream_frames
            && buf.capacity() - buf.len() < OUT_MIN_FREE
            && !buf.try_reclaim(OUT_MIN_FREE)
        {
            // Stream traffic: frame into a buffer kept for the next batches (see OUT_BUFFER).
            buf.reserve(OUT_BUFFER);
        }
        let before = slices.as_ref().map_or(0, |(_, n)| **n);
        // Bounded: each turn takes one frame of one ready stream, and the batch is at most `max`.
        while buf.len() + slices.as_ref().map_or(0, |(_, n)| **n - before) < max {
            let Some(id) = self.streams.ready.pop_front() else {
                break;
            };
            self.transmit_one(
                id,
                &mut buf,
                slices.as_mut().map(|(o, n)| (&mut **o, &mut **n)),
            );
        }
        // A full buffer (one keepalive frame in a buffer reserved for it, say) has no rest to
        // keep: hand the buffer itself over, which spares `split`'s shared header (an allocation)
        // and its reference counting; so is a large one, and one without stream traffic: neither
        // is kept (see OUT_BUFFER).
        let filled =
            if buf.len() == buf.capacity() || buf.capacity() > OUT_RETAIN_MAX || !stream_frames {
                std::mem::take(&mut buf)
            } else {
                buf.split()
            };
        self.out = buf;
        self.check_invariants();
        let sent = filled.len() + slices.as_ref().map_or(0, |(_, n)| **n - before);
        self.stats.bytes_sent += sent as u64;
        filled.freeze()
    }

    /// Frames the next queued chunk of stream `id` into `buf`; with `slices`, a large payload goes
    /// there as a slice after what `buf` holds so far (see [`transmit`](Self::transmit)).
    fn transmit_one(
        &mut self,
        id: StreamId,
        buf: &mut BytesMut,
        slices: Option<(&mut VecDeque<Bytes>, &mut usize)>,
    ) {
        let max_frame = self.peer.max_frame_size as usize;
        let Some(s) = self.streams.map.get_mut(&id) else {
            return;
        };
        let mut ended = false;
        match s.send.queue.pop_front() {
            Some(Chunk::Data(mut data)) => {
                let n = data.len().min(max_frame);
                let chunk = data.split_to(n);
                let fin_next = data.is_empty() && matches!(s.send.queue.front(), Some(Chunk::Fin));
                if !data.is_empty() {
                    s.send.queue.push_front(Chunk::Data(data));
                } else if fin_next {
                    s.send.queue.pop_front();
                    ended = true;
                }
                frame::encode_data_header(id, n, fin_next, buf);
                match slices {
                    Some((out, len)) if n >= ZERO_COPY_MIN => {
                        let framed = buf.split().freeze();
                        *len += framed.len() + n;
                        out.push_back(framed);
                        out.push_back(chunk);
                    }
                    _ => buf.extend_from_slice(&chunk),
                }
                s.send.window.consume(n as u64);
                s.send.queued -= n as u64;
                self.send_conn.consume(n as u64);
                self.conn_queued -= n as u64;
                self.stats.data_bytes_sent += n as u64;
            }
            Some(Chunk::Fin) => {
                frame::encode_data_header(id, 0, true, buf);
                ended = true;
            }
            Some(Chunk::Trailer(trailer)) => {
                Frame::Trailer {
                    stream: id,
                    trailer,
                }
                .encode(buf);
                ended = true;
            }
            None => {}
        }
        self.stats.frames_sent += 1;
        if ended {
            s.send.state = SendState::Closed;
            s.send.queue.clear();
            self.maybe_remove(id);
        } else {
            self.streams.schedule(id);
        }
    }

    // ------------------------------------------------------------------ handshake commands

    /// Server: accepts the agent whose HELLO was reported.
    pub fn accept(&mut self, agent_id: u64, connection_id: String, now: Instant) {
        let Phase::HelloPending { version } = self.phase else {
            return;
        };
        let replica = self.config.replica.clone();
        self.push_frame(&Frame::Accept(proto::Accept {
            version,
            agent_id,
            settings: Some(self.config.settings.to_wire()),
            connection_id: connection_id.clone(),
            replica_id: replica.replica_id.clone(),
            connections_wanted: replica.connections_wanted,
        }));
        self.on_established(version, agent_id, connection_id, replica, now);
        self.check_invariants();
    }

    /// Server: refuses the agent whose HELLO was reported (or any time during the handshake).
    /// The connection closes once the REJECT is transmitted.
    pub fn reject(&mut self, reject: proto::Reject) {
        if !matches!(self.phase, Phase::HelloPending { .. } | Phase::AwaitHello) {
            return;
        }
        let reason = CloseReason::Refused {
            code: RejectCode::from_wire(reject.code),
            message: reject.message.clone(),
            retry_after_ms: reject.retry_after_ms,
        };
        self.push_frame(&Frame::Reject(reject));
        self.close_now(reason, ErrorCode::Cancel);
    }

    fn on_established(
        &mut self,
        version: u32,
        agent_id: u64,
        connection_id: String,
        replica: ReplicaInfo,
        now: Instant,
    ) {
        self.phase = Phase::Open;
        self.send_conn = SendWindow::new(self.peer.initial_connection_window);
        self.timers.handshake = None;
        self.arm_liveness(now);
        let e = Established {
            version,
            agent_id,
            connection_id,
            replica_id: replica.replica_id,
            connections_wanted: replica.connections_wanted.max(1),
            peer_settings: self.peer,
        };
        self.established = Some(e.clone());
        self.events.push_back(Event::Connected(e));
    }

    /// We PING when we heard nothing for our keepalive interval, and at least twice within the
    /// peer's idle timeout so that it never closes a healthy connection.
    fn keepalive_interval(&self) -> std::time::Duration {
        self.config
            .settings
            .keepalive_interval
            .min(self.peer.idle_timeout / 2)
    }

    fn arm_liveness(&mut self, now: Instant) {
        self.timers.idle = Some(now + self.config.settings.idle_timeout);
        self.timers.keepalive = Some(now + self.keepalive_interval());
    }

    // ------------------------------------------------------------------ stream commands

    /// Opens a stream with a request head. `end_stream`: no body follows. The head is only
    /// encoded: a caller that keeps it (to send it again elsewhere) passes `&head`, no clone.
    pub fn open_stream(
        &mut self,
        head: impl std::borrow::Borrow<proto::RequestHead>,
        end_stream: bool,
    ) -> Result<StreamId, OpenError> {
        self.open_stream_ref(head.borrow(), end_stream)
    }

    /// [`Connection::open_stream`]'s body, not generic.
    fn open_stream_ref(
        &mut self,
        head: &proto::RequestHead,
        end_stream: bool,
    ) -> Result<StreamId, OpenError> {
        if self.phase != Phase::Open {
            return Err(OpenError::NotEstablished);
        }
        if self.is_draining() {
            return Err(OpenError::GoingAway);
        }
        if self.streams.open_local >= self.peer.max_concurrent_streams {
            return Err(OpenError::LimitReached {
                limit: self.peer.max_concurrent_streams,
            });
        }
        let len = head.encoded_len();
        if len > self.peer.max_header_size as usize {
            return Err(OpenError::HeadTooLarge {
                len,
                max: self.peer.max_header_size,
            });
        }
        if self.next_local_id > frame::MAX_WINDOW {
            return Err(OpenError::IdsExhausted);
        }
        let id = StreamId(self.next_local_id);
        self.next_local_id += 2;
        let mut s = Stream::opened_locally(
            self.peer.initial_stream_window,
            self.config.settings.initial_stream_window,
        );
        if end_stream {
            s.send.state = SendState::Closed;
        }
        self.streams.insert(id, s);
        self.stats.streams_opened_local += 1;
        self.stats.frames_sent += 1;
        frame::encode_request(id, head, end_stream, &mut self.out);
        self.check_invariants();
        Ok(id)
    }

    /// Answers a stream the peer opened with a response head. `end_stream`: no body follows.
    pub fn send_response(
        &mut self,
        id: StreamId,
        head: proto::ResponseHead,
        end_stream: bool,
    ) -> Result<(), StreamError> {
        self.check_head_size(head.encoded_len())?;
        let s = self.streams.map.get_mut(&id).ok_or(StreamError::Gone(id))?;
        if s.local {
            return Err(ApiMisuse::NotAcceptor(id).into());
        }
        if s.send.state != SendState::AwaitingHead {
            return Err(ApiMisuse::AlreadyResponded(id).into());
        }
        s.send.state = if end_stream {
            SendState::Closed
        } else {
            SendState::Open
        };
        let before = self.out.len();
        self.push_frame(&Frame::Response {
            stream: id,
            head,
            end_stream,
        });
        // An answer to the peer's REQUEST: counted for back-pressure like the others.
        self.responses += self.out.len() - before;
        self.maybe_remove(id);
        self.check_invariants();
        Ok(())
    }

    /// Offers body octets; returns how many were accepted (flow control). If fewer than offered, a
    /// `Writable` event follows when more can be taken. `end_stream` applies only if all were accepted.
    pub fn send_data(
        &mut self,
        id: StreamId,
        mut data: Bytes,
        end_stream: bool,
    ) -> Result<usize, StreamError> {
        let conn_free = self.send_conn.available().saturating_sub(self.conn_queued);
        let s = self.streams.map.get_mut(&id).ok_or(StreamError::Gone(id))?;
        match s.send.state {
            SendState::AwaitingHead => return Err(ApiMisuse::NoResponseYet(id).into()),
            SendState::Ending | SendState::Closed => {
                return Err(ApiMisuse::SendAfterFinish(id).into());
            }
            SendState::Open => {}
        }
        let offered = data.len();
        let n = usize::try_from(s.send.unclaimed_credit().min(conn_free))
            .unwrap_or(usize::MAX)
            .min(offered);
        if n > 0 {
            let chunk = data.split_to(n);
            s.send.queue.push_back(Chunk::Data(chunk));
            s.send.queued += n as u64;
            self.conn_queued += n as u64;
        }
        if n < offered {
            s.send.wants_writable = true;
        } else if end_stream {
            s.send.queue.push_back(Chunk::Fin);
            s.send.state = SendState::Ending;
        }
        self.streams.schedule(id);
        self.check_invariants();
        Ok(n)
    }

    /// Ends our direction of the stream (after any queued data).
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.end_with(id, Chunk::Fin)
    }

    /// Ends our direction of the stream with a trailer (after any queued data).
    pub fn send_trailer(
        &mut self,
        id: StreamId,
        trailer: proto::Trailer,
    ) -> Result<(), StreamError> {
        self.check_head_size(trailer.encoded_len())?;
        self.end_with(id, Chunk::Trailer(trailer))
    }

    fn end_with(&mut self, id: StreamId, end: Chunk) -> Result<(), StreamError> {
        let s = self.streams.map.get_mut(&id).ok_or(StreamError::Gone(id))?;
        match s.send.state {
            SendState::AwaitingHead => return Err(ApiMisuse::NoResponseYet(id).into()),
            SendState::Ending | SendState::Closed => {
                return Err(ApiMisuse::SendAfterFinish(id).into());
            }
            SendState::Open => {}
        }
        s.send.queue.push_back(end);
        s.send.state = SendState::Ending;
        self.streams.schedule(id);
        self.check_invariants();
        Ok(())
    }

    /// Abandons a stream in both directions. Queued data is dropped. No event is reported for it.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode, message: &str) {
        if self.remove_stream(id).is_some() {
            self.stats.streams_reset_sent += 1;
            self.push_frame(&Frame::Reset {
                stream: id,
                reset: proto::Reset {
                    code: code.to_u32(),
                    message: message.to_owned(),
                },
            });
            self.check_drained();
        }
        self.check_invariants();
    }

    /// The application consumed `n` octets of body received on `id`. Must be called for every octet a
    /// `Data` event delivered, also after the stream ended (the connection window depends on it).
    pub fn release_capacity(&mut self, id: StreamId, n: usize) {
        if self.phase == Phase::Closed {
            return;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(inc) = self.recv_conn.release(n) {
            self.push_frame(&Frame::WindowUpdate {
                stream: StreamId::CONNECTION,
                increment: inc,
            });
        }
        if let Some(s) = self.streams.map.get_mut(&id)
            && s.recv.state == RecvState::Open
            && let Some(inc) = s.recv.window.release(n)
        {
            self.push_frame(&Frame::WindowUpdate {
                stream: id,
                increment: inc,
            });
        }
        self.check_invariants();
    }

    /// Starts a graceful shutdown: GOAWAY with `code`; no new streams; in-flight streams finish. With an
    /// error code the connection closes at once instead.
    pub fn close(&mut self, code: ErrorCode, message: &str) {
        match self.phase {
            Phase::Closed => {}
            Phase::Open if code == ErrorCode::NoError => {
                if !self.goaway_sent {
                    self.send_goaway(code, message);
                }
                self.check_drained();
            }
            _ => self.abort(code, message),
        }
        self.check_invariants();
    }

    /// Closes at once: GOAWAY with `code`, every stream reset.
    pub fn abort(&mut self, code: ErrorCode, message: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Open {
            self.send_goaway(code, message);
        }
        self.close_now(
            CloseReason::Aborted {
                code,
                message: message.to_owned(),
            },
            code,
        );
    }

    // ------------------------------------------------------------------ input processing

    fn on_frame(&mut self, f: Frame, now: Instant) -> Result<(), ConnectionError> {
        match self.phase {
            Phase::AwaitHello => match f {
                Frame::Hello(h) => self.on_hello(h),
                other => Err(ConnectionError::BeforeHandshake {
                    frame: frame_name(&other),
                }),
            },
            Phase::AwaitAccept => match f {
                Frame::Accept(a) => self.on_accept(a, now),
                Frame::Reject(r) => {
                    let reason = CloseReason::Refused {
                        code: RejectCode::from_wire(r.code),
                        message: r.message,
                        retry_after_ms: r.retry_after_ms,
                    };
                    self.close_now(reason, ErrorCode::Cancel);
                    Ok(())
                }
                other => Err(ConnectionError::BeforeHandshake {
                    frame: frame_name(&other),
                }),
            },
            Phase::HelloPending { .. } => Err(ConnectionError::BeforeHandshake {
                frame: frame_name(&f),
            }),
            Phase::Open => self.on_open_frame(f, now),
            Phase::Closed => Ok(()),
        }
    }

    fn on_hello(&mut self, h: proto::Hello) -> Result<(), ConnectionError> {
        let reject = |code: proto::RejectCode, message: String, c: &Config| proto::Reject {
            code: code as i32,
            message,
            retry_after_ms: 0,
            min_version: c.min_version,
            max_version: c.max_version,
        };
        let lo = self.config.min_version.max(h.min_version);
        let hi = self.config.max_version.min(h.max_version);
        if lo > hi {
            let e = ConnectionError::VersionMismatch {
                ours_min: self.config.min_version,
                ours_max: self.config.max_version,
                theirs_min: h.min_version,
                theirs_max: h.max_version,
            };
            let r = reject(
                proto::RejectCode::VersionUnsupported,
                e.to_string(),
                &self.config,
            );
            self.push_frame(&Frame::Reject(r));
            self.close_now(CloseReason::Local(e), ErrorCode::Cancel);
            return Ok(());
        }
        let settings = match Settings::from_wire(h.settings.as_ref()) {
            Ok(s) => s,
            Err(reason) => {
                let r = reject(proto::RejectCode::BadHello, reason.clone(), &self.config);
                self.push_frame(&Frame::Reject(r));
                self.close_now(
                    CloseReason::Local(ConnectionError::BadSettings { reason }),
                    ErrorCode::Cancel,
                );
                return Ok(());
            }
        };
        self.peer = settings;
        self.phase = Phase::HelloPending { version: hi };
        self.events.push_back(Event::Hello(HelloInfo {
            token: h.token,
            meta: h.meta.unwrap_or_default(),
            version: hi,
            settings,
        }));
        Ok(())
    }

    fn on_accept(&mut self, a: proto::Accept, now: Instant) -> Result<(), ConnectionError> {
        if a.version < self.config.min_version || a.version > self.config.max_version {
            return Err(ConnectionError::VersionMismatch {
                ours_min: self.config.min_version,
                ours_max: self.config.max_version,
                theirs_min: a.version,
                theirs_max: a.version,
            });
        }
        self.peer = Settings::from_wire(a.settings.as_ref())
            .map_err(|reason| ConnectionError::BadSettings { reason })?;
        let replica = ReplicaInfo {
            replica_id: a.replica_id,
            connections_wanted: a.connections_wanted,
        };
        self.on_established(a.version, a.agent_id, a.connection_id, replica, now);
        Ok(())
    }

    /// Whether `id` has the parity of streams the peer opens.
    fn is_peer_parity(&self, id: StreamId) -> bool {
        id.is_agent_initiated() == (self.role == Role::Server)
    }

    /// A stream id that was never used (so no frame but REQUEST may name it).
    fn is_idle(&self, id: StreamId) -> bool {
        if self.is_peer_parity(id) {
            id.0 > self.last_remote_id
        } else {
            id.0 >= self.next_local_id
        }
    }

    /// For a frame naming a stream that is not in the table: an error if the stream is idle, otherwise
    /// (the stream closed, frames may still be in flight) nothing.
    fn unknown_stream(&self, id: StreamId) -> Result<(), ConnectionError> {
        if self.is_idle(id) {
            Err(ConnectionError::IdleStream { stream: id })
        } else {
            Ok(())
        }
    }

    fn on_open_frame(&mut self, f: Frame, now: Instant) -> Result<(), ConnectionError> {
        match f {
            Frame::Data {
                stream,
                data,
                end_stream,
            } => {
                if data.is_empty() && !end_stream {
                    self.flood.record(FloodKind::EmptyData, now)?;
                }
                self.on_data(stream, data, end_stream)
            }
            Frame::Request {
                stream,
                head,
                end_stream,
            } => self.on_request(stream, head, end_stream, now),
            Frame::Response {
                stream,
                head,
                end_stream,
            } => {
                let Some(s) = self.streams.map.get_mut(&stream) else {
                    return self.unknown_stream(stream);
                };
                if !s.local || s.recv.state != RecvState::AwaitingHead {
                    self.stream_violation(stream, "RESPONSE");
                    return Ok(());
                }
                s.recv.state = if end_stream {
                    RecvState::Closed
                } else {
                    RecvState::Open
                };
                self.events.push_back(Event::Response {
                    id: stream,
                    head,
                    end_stream,
                });
                self.maybe_remove(stream);
                Ok(())
            }
            Frame::Trailer { stream, trailer } => {
                let Some(s) = self.streams.map.get_mut(&stream) else {
                    return self.unknown_stream(stream);
                };
                if s.recv.state != RecvState::Open {
                    self.stream_violation(stream, "TRAILER");
                    return Ok(());
                }
                s.recv.state = RecvState::Closed;
                self.events.push_back(Event::Trailer {
                    id: stream,
                    trailer,
                });
                self.maybe_remove(stream);
                Ok(())
            }
            Frame::Reset { stream, reset } => {
                if let Some(s) = self.remove_stream(stream) {
                    self.stats.streams_reset_received += 1;
                    self.events.push_back(Event::Reset {
                        id: stream,
                        code: ErrorCode::from_u32(reset.code),
                        message: reset.message,
                        remote: true,
                    });
                    self.check_drained();
                    if !s.local && s.send.state == SendState::AwaitingHead {
                        // Opened and abandoned before we could answer: work for nothing.
                        self.flood.record(FloodKind::RapidReset, now)?;
                    }
                    Ok(())
                } else {
                    self.unknown_stream(stream)
                }
            }
            Frame::WindowUpdate { stream, increment } => {
                self.flood.record(FloodKind::WindowUpdate, now)?;
                self.on_window_update(stream, increment)
            }
            Frame::Ping {
                ack: false,
                payload,
            } => {
                self.flood.record(FloodKind::Ping, now)?;
                self.push_frame(&Frame::Ping { ack: true, payload });
                Ok(())
            }
            Frame::Ping { ack: true, payload } => {
                // An acknowledgement we did not ask for is harmless: ignore it (but count it).
                if self.ping_outstanding == Some(payload) {
                    self.ping_outstanding = None;
                } else {
                    self.flood.record(FloodKind::Ping, now)?;
                }
                Ok(())
            }
            Frame::GoAway(g) => {
                self.on_goaway(g);
                Ok(())
            }
            Frame::Hello(_) | Frame::Accept(_) | Frame::Reject(_) => {
                Err(ConnectionError::UnexpectedHandshake {
                    frame: frame_name(&f),
                })
            }
            Frame::Unknown { kind, .. } => {
                tracing::trace!(kind, "ignoring unknown frame type");
                self.stats.unknown_frames_ignored += 1;
                self.flood.record(FloodKind::UnknownFrame, now)
            }
        }
    }

    fn on_data(&mut self, id: StreamId, data: Bytes, end: bool) -> Result<(), ConnectionError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.recv_conn
            .receive(len)
            .map_err(|_| ConnectionError::ConnectionWindowExceeded)?;
        self.stats.data_bytes_received += u64::from(len);
        let Some(s) = self.streams.map.get_mut(&id) else {
            self.unknown_stream(id)?;
            // Data in flight on a stream we already closed: return its connection credit.
            self.release_orphan(len);
            return Ok(());
        };
        match s.recv.state {
            RecvState::Open => {}
            RecvState::AwaitingHead => {
                self.release_orphan(len);
                self.stream_violation(id, "DATA before RESPONSE");
                return Ok(());
            }
            RecvState::Closed => {
                self.release_orphan(len);
                self.reset_with(id, ErrorCode::StreamClosed, "DATA after end of stream");
                return Ok(());
            }
        }
        s.recv
            .window
            .receive(len)
            .map_err(|_| ConnectionError::StreamWindowExceeded { stream: id })?;
        if end {
            s.recv.state = RecvState::Closed;
        }
        if !data.is_empty() {
            self.events.push_back(Event::Data { id, data });
        }
        if end {
            self.events.push_back(Event::Finished { id });
            self.maybe_remove(id);
        }
        Ok(())
    }

    fn on_request(
        &mut self,
        id: StreamId,
        head: proto::RequestHead,
        end: bool,
        now: Instant,
    ) -> Result<(), ConnectionError> {
        if !self.is_peer_parity(id) {
            return Err(ConnectionError::WrongParity { stream: id });
        }
        if id.0 <= self.last_remote_id {
            return Err(ConnectionError::StreamIdReused { stream: id });
        }
        self.last_remote_id = id.0;
        let refuse = if self.goaway_sent {
            Some("connection is going away")
        } else if self.streams.open_remote >= self.config.settings.max_concurrent_streams {
            Some("too many concurrent streams")
        } else {
            None
        };
        if let Some(why) = refuse {
            tracing::debug!(stream = id.0, why, "refusing stream");
            self.stats.streams_refused += 1;
            self.flood.record(FloodKind::RapidReset, now)?;
            self.push_frame(&Frame::Reset {
                stream: id,
                reset: proto::Reset {
                    code: ErrorCode::RefusedStream.to_u32(),
                    message: why.to_owned(),
                },
            });
            return Ok(());
        }
        let mut s = Stream::opened_remotely(
            self.peer.initial_stream_window,
            self.config.settings.initial_stream_window,
        );
        if end {
            s.recv.state = RecvState::Closed;
        }
        self.streams.insert(id, s);
        self.stats.streams_opened_remote += 1;
        self.events.push_back(Event::StreamOpened {
            id,
            head,
            end_stream: end,
        });
        Ok(())
    }

    fn on_window_update(&mut self, id: StreamId, inc: u32) -> Result<(), ConnectionError> {
        if id == StreamId::CONNECTION {
            self.send_conn
                .grow(inc)
                .map_err(|_| ConnectionError::WindowOverflow { stream: id })?;
            let waiting: Vec<StreamId> = self
                .streams
                .map
                .iter()
                .filter(|(_, s)| s.send.wants_writable)
                .map(|(id, _)| *id)
                .collect();
            for w in waiting {
                self.notify_writable(w);
            }
            return Ok(());
        }
        let Some(s) = self.streams.map.get_mut(&id) else {
            return self.unknown_stream(id);
        };
        if s.send.window.grow(inc).is_err() {
            self.reset_with(id, ErrorCode::FlowControl, "stream window overflow");
            return Ok(());
        }
        self.notify_writable(id);
        Ok(())
    }

    fn notify_writable(&mut self, id: StreamId) {
        let conn_free = self.send_conn.available().saturating_sub(self.conn_queued);
        if let Some(s) = self.streams.map.get_mut(&id)
            && s.send.wants_writable
            && s.send.can_write()
            && s.send.unclaimed_credit() > 0
            && conn_free > 0
        {
            s.send.wants_writable = false;
            self.events.push_back(Event::Writable { id });
        }
    }

    fn on_goaway(&mut self, g: proto::GoAway) {
        let code = ErrorCode::from_u32(g.code);
        self.goaway_received = true;
        self.events.push_back(Event::GoAway {
            last_stream_id: g.last_stream_id,
            code,
            message: g.message.clone(),
        });
        if code != ErrorCode::NoError {
            self.close_now(
                CloseReason::Remote {
                    code,
                    message: g.message,
                },
                code,
            );
            return;
        }
        // Our streams above last_stream_id were not and will not be processed: report them refused.
        let refused: Vec<StreamId> = self
            .streams
            .map
            .iter()
            .filter(|(id, s)| s.local && id.0 > g.last_stream_id)
            .map(|(id, _)| *id)
            .collect();
        for id in refused {
            self.remove_stream(id);
            self.events.push_back(Event::Reset {
                id,
                code: ErrorCode::RefusedStream,
                message: "not processed before GOAWAY".into(),
                remote: true,
            });
        }
        if !self.goaway_sent {
            self.send_goaway(ErrorCode::NoError, "peer is going away");
        }
        self.check_drained();
    }

    // ------------------------------------------------------------------ helpers

    fn check_head_size(&self, len: usize) -> Result<(), StreamError> {
        if len > self.peer.max_header_size as usize {
            Err(StreamError::HeadTooLarge {
                len,
                max: self.peer.max_header_size,
            })
        } else {
            Ok(())
        }
    }

    fn push_frame(&mut self, f: &Frame) {
        if !matches!(f, Frame::Data { .. }) {
            self.stats.frames_sent += 1;
        }
        f.encode(&mut self.out);
    }

    fn send_goaway(&mut self, code: ErrorCode, message: &str) {
        self.goaway_sent = true;
        self.push_frame(&Frame::GoAway(proto::GoAway {
            last_stream_id: self.last_remote_id,
            code: code.to_u32(),
            message: message.to_owned(),
        }));
    }

    /// Returns connection credit for octets that no application will ever release.
    fn release_orphan(&mut self, n: u32) {
        if let Some(inc) = self.recv_conn.release(n) {
            self.push_frame(&Frame::WindowUpdate {
                stream: StreamId::CONNECTION,
                increment: inc,
            });
        }
    }

    /// The peer broke the stream's state rules: reset it with PROTOCOL_ERROR and tell the application.
    fn stream_violation(&mut self, id: StreamId, frame: &'static str) {
        tracing::debug!(stream = id.0, frame, "stream state violation");
        self.reset_with(id, ErrorCode::Protocol, frame);
    }

    /// Resets a stream because of the peer and reports it to the application.
    fn reset_with(&mut self, id: StreamId, code: ErrorCode, message: &str) {
        // The event goes first: resetting the last stream of a draining connection closes it, and
        // `Closed` must stay the last event.
        self.events.push_back(Event::Reset {
            id,
            code,
            message: message.to_owned(),
            remote: false,
        });
        self.reset(id, code, message);
    }

    fn remove_stream(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.streams.remove(id)?;
        self.conn_queued -= s.send.queued;
        Some(s)
    }

    fn maybe_remove(&mut self, id: StreamId) {
        if self.streams.map.get(&id).is_some_and(Stream::is_done) {
            if let Some(s) = self.remove_stream(id) {
                self.streams.recycle(s);
            }
            self.check_drained();
        }
    }

    /// Both sides said GOAWAY and nothing is left in flight: the connection is over.
    fn check_drained(&mut self) {
        if self.phase == Phase::Open
            && self.goaway_sent
            && self.goaway_received
            && self.streams.map.is_empty()
        {
            self.close_now(CloseReason::Graceful, ErrorCode::NoError);
        }
    }

    /// A connection error: GOAWAY with its code, everything reset.
    fn fail(&mut self, e: ConnectionError) {
        if self.phase == Phase::Closed {
            return;
        }
        tracing::debug!(error = %e, code = %e.code(), "connection error");
        let code = e.code();
        self.send_goaway(code, &e.to_string());
        self.close_now(CloseReason::Local(e), code);
    }

    /// Ends the connection now: every stream is reported reset with `code`, then `Closed`.
    fn close_now(&mut self, reason: CloseReason, code: ErrorCode) {
        let ids: Vec<StreamId> = self.streams.map.keys().copied().collect();
        let remote = matches!(reason, CloseReason::Remote { .. });
        for id in ids {
            self.remove_stream(id);
            self.events.push_back(Event::Reset {
                id,
                code,
                message: reason.to_string(),
                remote,
            });
        }
        self.phase = Phase::Closed;
        self.timers = Timers::default();
        self.close_reason = Some(reason.clone());
        self.events.push_back(Event::Closed(reason));
    }

    /// Checks the invariants in the module documentation (debug builds only).
    pub fn check_invariants(&self) {
        if cfg!(debug_assertions) {
            self.streams.check_invariants();
            let queued: u64 = self.streams.map.values().map(|s| s.send.queued).sum();
            debug_assert_eq!(queued, self.conn_queued);
            debug_assert!(
                self.conn_queued <= self.send_conn.available(),
                "accepted data exceeds connection credit"
            );
            if self.phase == Phase::Closed {
                debug_assert!(self.streams.map.is_empty());
                debug_assert!(self.timers.next().is_none());
            }
        }
    }
}

fn frame_err(e: crate::tunnel::error::FrameError) -> ConnectionError {
    ConnectionError::Frame(e)
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Data { .. } => "DATA",
        Frame::Request { .. } => "REQUEST",
        Frame::Response { .. } => "RESPONSE",
        Frame::Trailer { .. } => "TRAILER",
        Frame::Reset { .. } => "RESET",
        Frame::WindowUpdate { .. } => "WINDOW_UPDATE",
        Frame::Ping { .. } => "PING",
        Frame::GoAway(_) => "GOAWAY",
        Frame::Hello(_) => "HELLO",
        Frame::Accept(_) => "ACCEPT",
        Frame::Reject(_) => "REJECT",
        Frame::Unknown { .. } => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair::Pair;

    /// Moves everything both sides of `p` have to send until both are quiet; returns the events
    /// kas's side reported (the agent's are drained too).
    fn settle(p: &mut Pair) -> Vec<Event> {
        p.drive();
        while p.agent.poll_event().is_some() {}
        std::iter::from_fn(|| p.server.poll_event()).collect()
    }

    #[test]
    fn stream_traffic_reuses_one_transmit_buffer_and_a_quiet_connection_lets_it_go() {
        let mut p = Pair::connected(7, Instant::now());
        let now = p.now;
        // The handshake kept no buffer.
        assert_eq!(p.agent.out.capacity(), 0);
        let (mut agent_base, mut server_base) = (None, None);
        // One batch taken from `c`: split off the kept buffer (its rest stays), within the same
        // 4 KiB allocation as the first batch: 100 batches of ~100 octets need it reclaimed.
        let take = |c: &mut Connection, base: &mut Option<usize>, i: usize| {
            let batch = c.poll_transmit().expect("a batch");
            assert!(batch.len() > 64 + 2 * 9, "{}", batch.len());
            assert!(c.out.capacity() > 0, "batch {i}: the buffer was not kept");
            let at = batch.as_ptr() as usize;
            let base = *base.get_or_insert(at);
            assert!(
                (base..base + OUT_BUFFER).contains(&at),
                "batch {i} at {at:#x}, outside the buffer at {base:#x}"
            );
            batch
        };
        for i in 0..100 {
            let head = proto::RequestHead {
                service: "echo".into(),
                method: "POST".into(),
                path: format!("/request/{i}"),
                ..Default::default()
            };
            // A request: head, 64 octets and the end in one batch.
            let id = p.agent.open_stream(head, false).expect("open");
            assert_eq!(
                p.agent.send_data(id, Bytes::from(vec![7u8; 64]), true),
                Ok(64)
            );
            let batch = take(&mut p.agent, &mut agent_base, i);
            p.server.handle_input(&batch, now);
            drop(batch);
            let ev = settle(&mut p);
            assert!(ev.iter().any(|e| matches!(e, Event::StreamOpened { .. })));
            // Its answer likewise (a head and a body whose batch an exactly grown buffer would
            // fill: it used to be handed out whole, and the next answer allocated again).
            let answer = proto::ResponseHead {
                status: 200,
                headers: vec![],
            };
            p.server.send_response(id, answer, false).expect("respond");
            assert_eq!(
                p.server.send_data(id, Bytes::from(vec![7u8; 64]), true),
                Ok(64)
            );
            let batch = take(&mut p.server, &mut server_base, i);
            p.agent.handle_input(&batch, now);
            drop(batch);
            settle(&mut p);
        }
        let (agent, server) = (&mut p.agent, &mut p.server);
        assert_eq!(agent.open_streams(), (0, 0));
        // Quiet for a keepalive interval: the PING goes out in the kept buffer, handed out whole,
        // and the peer's answer likewise (a peer that only answers PINGs, as kas does for a quiet
        // agent, keeps no buffer either); nothing is kept.
        assert!(agent.out.capacity() > 0 && server.out.capacity() > 0);
        let at = agent.poll_timeout().expect("keepalive armed");
        agent.handle_timeout(at);
        let ping = agent.poll_transmit().expect("a ping");
        assert_eq!(ping.len(), 9 + 8);
        assert_eq!(agent.out.capacity(), 0);
        server.handle_input(&ping, at);
        let ack = server.poll_transmit().expect("the PING's answer");
        assert_eq!(ack.len(), 9 + 8);
        assert_eq!(server.out.capacity(), 0);
    }
}
