//! The shared state of one tunnel connection: the protocol [`Connection`], one slot per stream, the
//! queue of peer-opened streams, the handshake state and every waker, behind one mutex.
//!
//! Application tasks (stream reads and writes, opens, closes) and the driver task (socket I/O, timers)
//! both act on it. Every command ends in [`Shared::after_command`], which routes the events the
//! command produced and wakes the driver when there is something to transmit: the driver never polls.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::proto::{RequestHead, ResponseHead, Trailer};
use protocol::{
    AgentHello, ApiMisuse, CloseReason, Config, Connection, ErrorCode, Established, Event,
    HelloInfo, Role, StreamError, StreamId,
};

use crate::driver::{Inline, InlineWrite};
use crate::error::Error;
use crate::observer::{ConnectionEvent, Initiator, Observer, Observers};
use crate::wakers::{DeferScope, WakerList, register, wake};

/// Most octets one `poll_write` copies: larger writes take several calls, which keeps every buffer
/// below the allocator's mmap threshold (allocating and unmapping 256 KiB buffers per write costs more
/// than the extra calls).
pub const MAX_WRITE_CHUNK: usize = 64 * 1024;

/// How long a connection whose last handle was dropped may drain before it is aborted.
pub const DROP_GRACE: Duration = Duration::from_secs(10);

/// The hasher of the stream map. Stream ids are integers that count up (ours from the protocol,
/// the peer's refused unless each is above the last, and at most `max_concurrent_streams` open), so
/// a peer cannot fill the map with chosen collisions and SipHash's keyed hashing buys nothing: one
/// multiplication spreads them over the word (FxHash's step) where SipHash runs its rounds, and
/// every read, write and received frame looks its stream up.
#[derive(Debug, Default, Clone, Copy)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        // The product's low bits are poor (odd ids times an odd constant are all odd); hashbrown
        // takes the bucket from the low bits, so bring well-mixed middle bits there (as
        // rustc-hash 2 does).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached by `StreamId` (its `Hash` writes one `u32`); kept correct for any key.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant (the golden ratio's bits).
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// One slot per stream, keyed with [`StreamIdHasher`].
type SlotMap = HashMap<StreamId, Slot, BuildHasherDefault<StreamIdHasher>>;

/// Why a stream cannot be used any more.
#[derive(Debug, Clone)]
enum Failure {
    Reset {
        code: ErrorCode,
        message: String,
        remote: bool,
    },
    Conn(CloseReason),
}

impl Failure {
    fn to_error(&self) -> Error {
        match self {
            Failure::Reset {
                code,
                message,
                remote,
            } => Error::StreamReset {
                code: *code,
                message: message.clone(),
                remote: *remote,
            },
            Failure::Conn(r) => Error::from_close(r),
        }
    }
}

/// What the application side knows about one stream.
#[derive(Debug, Default)]
struct Slot {
    /// Received body not yet read, and its length.
    recv: VecDeque<Bytes>,
    buffered: usize,
    /// The peer ended its direction: `Some(None)` without trailer, `Some(Some(t))` with one.
    recv_end: Option<Option<Trailer>>,
    /// Opener: the acceptor's answer, until the application takes it.
    response: Option<ResponseHead>,
    /// The application took the response head (`take_response`).
    response_taken: bool,
    failure: Option<Failure>,
    /// We ended our direction (FIN or trailer queued, or opened/answered with end of stream).
    send_done: bool,
    /// The handle is gone; the stream only lives on until its FIN is flushed or the peer ends it.
    detached: bool,
    read: Option<Waker>,
    write: Option<Waker>,
    /// Tasks waiting for the response head or the trailer.
    meta: WakerList,
}

impl Slot {
    fn wake_all(&mut self) {
        wake(&mut self.read);
        wake(&mut self.write);
        self.meta.wake_all();
    }
}

/// What the driver learns from one [`Session::step`].
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// When to call `step` again at the latest.
    pub deadline: Option<Instant>,
    /// The connection is over and nothing is left to transmit: flush, shut the transport down, exit.
    pub finished: bool,
    /// The connection is over (its last frames may still wait for transmission).
    pub closed: bool,
    /// Whether the connection wants more input ([`Connection::wants_input`]): false while answers
    /// to the peer's input pile up untransmitted, and the driver stops reading until they are gone.
    pub wants_input: bool,
    /// Output is left that did not fit in this step's batch: step again once the batch is written.
    pub more_output: bool,
}

/// Everything behind the session's mutex.
pub(crate) struct Shared {
    conn: Connection,
    slots: SlotMap,
    incoming: VecDeque<(StreamId, RequestHead)>,
    incoming_wakers: WakerList,
    /// Server: the HELLO awaiting the application's verdict.
    hello: Option<HelloInfo>,
    handshake_wakers: WakerList,
    driver: Option<Waker>,
    /// The driver's transport, for commands that end a stream's data to write from their own task
    /// while the driver is not polling ([`Shared::flush_inline`]); `None` once the driver is gone.
    wire: Option<Arc<dyn InlineWrite>>,
    /// What the driver saw at its last step: the deadline its timer is armed for at the latest,
    /// and whether it stopped reading. An inline write that changes either wakes it.
    driver_deadline: Option<Instant>,
    driver_paused: bool,
    /// A task wrote inline since the driver last handed input over: the next end leaves its
    /// frames to the driver ([`Shared::after_end_command`]).
    inline_since_input: bool,
    close_wakers: WakerList,
    /// Tasks waiting for the connection to drain (GOAWAY either way) or close.
    drain_wakers: WakerList,
    /// Graceful close in progress: abort at this instant.
    close_deadline: Option<Instant>,
    /// Detached streams to reset once everything queued for them has been transmitted.
    cancel_after_flush: Vec<StreamId>,
    /// Synchronous observers and the events they have not seen yet ([`crate::observer`]).
    observers: Observers,
    /// Emptied receive queues of dropped streams, for the next slots (at most [`SPARE_RECV`]): a
    /// connection that opens a stream per request allocates no queue per stream.
    spare_recv: Vec<VecDeque<Bytes>>,
    span: tracing::Span,
}

/// How many emptied receive queues a session keeps for reuse.
const SPARE_RECV: usize = 16;
/// The largest receive queue kept for reuse (in buffers): a bulk stream's grown queue is dropped,
/// so a quiet connection holds at most `16 × 8` spare entries.
const SPARE_RECV_CAPACITY: usize = 8;

/// The session's lock. Releasing it hands the connection events the locked call produced to the
/// observers, outside the lock and in protocol order ([`crate::observer`]).
/// Wake-ups made under the lock are delivered after it is released ([`DeferScope`]).
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, Shared>>,
    inner: &'a Mutex<Shared>,
    /// Dropped after the guard (fields drop after `Drop::drop`, which releases the lock).
    _defer: DeferScope,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Shared {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if guard.observers.pending.is_empty()
            || guard.observers.delivering
            || std::thread::panicking()
        {
            return;
        }
        guard.observers.delivering = true;
        deliver(self.inner, guard);
    }
}

/// Hands queued events to the observers until none is left; the caller set `delivering`. Events queued
/// by other threads meanwhile are delivered here too, after the earlier ones.
fn deliver<'a>(inner: &'a Mutex<Shared>, mut guard: MutexGuard<'a, Shared>) {
    loop {
        let batch: Vec<ConnectionEvent> = guard.observers.pending.drain(..).collect();
        if batch.is_empty() {
            guard.observers.delivering = false;
            return;
        }
        let list = guard.observers.list.clone();
        drop(guard);
        // An observer that panics must not silence the others for good.
        let reset = ResetDelivering(inner);
        for ev in &batch {
            for f in &list {
                f(ev);
            }
        }
        std::mem::forget(reset);
        guard = inner.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

/// Clears `delivering` when an observer panicked.
struct ResetDelivering<'a>(&'a Mutex<Shared>);

impl Drop for ResetDelivering<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.observers.delivering = false;
    }
}

/// A handle on the shared state of one connection. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Mutex<Shared>>,
    span: tracing::Span,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

fn stream_io_error(e: Error) -> io::Error {
    e.into()
}

impl Session {
    /// An agent session; the preface and HELLO are queued at once.
    pub fn agent(config: Config, hello: AgentHello) -> Session {
        Session::new(
            Connection::agent(config, hello, Instant::now()),
            Role::Agent,
        )
    }

    /// A server session, waiting for an agent's HELLO.
    pub fn server(config: Config) -> Session {
        Session::new(Connection::server(config, Instant::now()), Role::Server)
    }

    fn new(conn: Connection, role: Role) -> Session {
        let span = tracing::info_span!(
            "tunnel",
            role = ?role,
            agent_id = tracing::field::Empty,
            connection_id = tracing::field::Empty
        );
        let shared = Shared {
            conn,
            slots: SlotMap::default(),
            incoming: VecDeque::new(),
            incoming_wakers: WakerList::default(),
            hello: None,
            handshake_wakers: WakerList::default(),
            driver: None,
            wire: None,
            driver_deadline: None,
            driver_paused: false,
            inline_since_input: false,
            close_wakers: WakerList::default(),
            drain_wakers: WakerList::default(),
            close_deadline: None,
            cancel_after_flush: Vec::new(),
            observers: Observers::default(),
            spare_recv: Vec::new(),
            span: span.clone(),
        };
        Session {
            inner: Arc::new(Mutex::new(shared)),
            span,
        }
    }

    pub(crate) fn lock(&self) -> Locked<'_> {
        let defer = DeferScope::new();
        Locked {
            guard: Some(self.inner.lock().unwrap_or_else(PoisonError::into_inner)),
            inner: &self.inner,
            _defer: defer,
        }
    }

    /// Registers a synchronous observer ([`crate::observer`]): called with each later
    /// [`ConnectionEvent`] right after the session lock is released, and at once with the events that
    /// already happened (replay), in order. Must not block.
    pub(crate) fn on_event(&self, f: Observer) {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        guard.observers.list.push(f.clone());
        let replay = guard.observers.delivered();
        if guard.observers.delivering {
            // Another thread is handing out events: it will hand the later ones to `f` too.
            drop(guard);
            for ev in &replay {
                f(ev);
            }
            return;
        }
        guard.observers.delivering = true;
        drop(guard);
        let reset = ResetDelivering(&self.inner);
        for ev in &replay {
            f(ev);
        }
        std::mem::forget(reset);
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        deliver(&self.inner, guard);
    }

    /// The tracing span of this connection (fields `role`, `agent_id`, `connection_id`).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    // ------------------------------------------------------------------ driver side

    /// The driver's transport, which commands that end a stream's data may write to.
    pub(crate) fn attach_wire(&self, wire: Arc<dyn InlineWrite>) {
        self.lock().wire = Some(wire);
    }

    /// The driver is gone, and its transport with it.
    pub(crate) fn detach_wire(&self) {
        let wire = self.lock().wire.take();
        // Dropped outside the lock: the last reference closes the transport.
        drop(wire);
    }

    /// Octets received from the transport.
    pub fn handle_input(&self, data: &[u8], now: Instant) {
        let mut s = self.lock();
        s.inline_since_input = false;
        s.conn.handle_input(data, now);
        s.dispatch();
    }

    /// Octets received from the transport, handed over without a copy (DATA payloads reach the
    /// streams as slices of `data`).
    pub fn handle_input_bytes(&self, data: Bytes, now: Instant) {
        let mut s = self.lock();
        s.inline_since_input = false;
        s.conn.handle_input_bytes(data, now);
        s.dispatch();
    }

    /// The transport reached end of file or failed.
    pub fn handle_eof(&self) {
        let mut s = self.lock();
        s.conn.handle_eof();
        s.dispatch();
    }

    /// Runs due timers, moves up to `limit` octets of transmit output into `out`, and registers
    /// `waker` to be woken when more output (or a close) is produced by a command.
    pub fn step(
        &self,
        now: Instant,
        waker: &Waker,
        out: &mut VecDeque<Bytes>,
        out_len: &mut usize,
        limit: usize,
    ) -> Step {
        let mut s = self.lock();
        s.step(now, waker, out, out_len, limit)
    }

    // ------------------------------------------------------------------ handshake

    /// Server: the agent's HELLO, once it arrived.
    pub fn poll_hello(&self, cx: &mut Context<'_>) -> Poll<Result<HelloInfo, Error>> {
        let mut s = self.lock();
        if let Some(h) = s.hello.take() {
            return Poll::Ready(Ok(h));
        }
        if let Some(r) = s.conn.close_reason() {
            return Poll::Ready(Err(Error::from_close(r)));
        }
        s.handshake_wakers.register(cx.waker());
        Poll::Pending
    }

    /// Server: accepts the agent whose HELLO was reported.
    pub fn accept(&self, agent_id: u64, connection_id: String) {
        let mut s = self.lock();
        s.conn.accept(agent_id, connection_id, Instant::now());
        s.after_command();
        // The accept armed the keepalive timers: the driver must look at them.
        wake(&mut s.driver);
    }

    /// Server: refuses the agent whose HELLO was reported.
    pub fn reject(&self, reject: protocol::proto::Reject) {
        let mut s = self.lock();
        s.conn.reject(reject);
        s.after_command();
    }

    /// Both sides: the handshake result.
    pub fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<Established, Error>> {
        let mut s = self.lock();
        if let Some(e) = s.conn.established() {
            return Poll::Ready(Ok(e.clone()));
        }
        if let Some(r) = s.conn.close_reason() {
            return Poll::Ready(Err(Error::from_close(r)));
        }
        s.handshake_wakers.register(cx.waker());
        Poll::Pending
    }

    // ------------------------------------------------------------------ connection

    /// Opens a stream; see [`crate::StreamHandle`].
    pub(crate) fn open(&self, head: &RequestHead, end_stream: bool) -> Result<StreamId, Error> {
        let mut s = self.lock();
        if let Some(r) = s.conn.close_reason() {
            return Err(Error::from_close(r));
        }
        let id = s.conn.open_stream(head, end_stream)?;
        let slot = Slot {
            send_done: end_stream,
            recv: s.spare_recv.pop().unwrap_or_default(),
            ..Slot::default()
        };
        s.slots.insert(id, slot);
        if end_stream {
            s.after_end_command();
        } else {
            s.after_command();
        }
        Ok(id)
    }

    /// The next stream the peer opened; `None` once the connection is over.
    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(StreamId, RequestHead)>> {
        let mut s = self.lock();
        if let Some(x) = s.incoming.pop_front() {
            return Poll::Ready(Some(x));
        }
        if s.conn.is_closed() {
            return Poll::Ready(None);
        }
        s.incoming_wakers.register(cx.waker());
        Poll::Pending
    }

    /// Starts a graceful close (GOAWAY); the connection is aborted if streams are still open after
    /// `grace`.
    pub(crate) fn start_close(&self, grace: Duration) {
        let mut s = self.lock();
        if s.conn.is_closed() {
            return;
        }
        let deadline = Instant::now() + grace;
        s.close_deadline = Some(s.close_deadline.map_or(deadline, |d| d.min(deadline)));
        s.conn.close(ErrorCode::NoError, "closing");
        s.after_command();
        wake(&mut s.driver);
    }

    /// Closes at once with `code`; every stream fails.
    pub(crate) fn abort(&self, code: ErrorCode, message: &str) {
        let mut s = self.lock();
        s.conn.abort(code, message);
        s.after_command();
    }

    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut s = self.lock();
        if let Some(r) = s.conn.close_reason() {
            return Poll::Ready(r.clone());
        }
        s.close_wakers.register(cx.waker());
        Poll::Pending
    }

    /// Ready once either side sent GOAWAY (a real drain, reported by the protocol as
    /// [`Event::GoAway`] or caused by our own close), or the connection is over.
    pub(crate) fn poll_draining(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.lock();
        if s.conn.is_draining() || s.conn.is_closed() {
            return Poll::Ready(());
        }
        s.drain_wakers.register(cx.waker());
        Poll::Pending
    }

    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.lock().conn)
    }

    // ------------------------------------------------------------------ streams

    pub(crate) fn poll_read(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(slot) = s.slots.get_mut(&id) else {
            return Poll::Ready(Err(stream_io_error(Error::Stream(StreamError::Gone(id)))));
        };
        if slot.buffered > 0 {
            let mut n = 0;
            while n < buf.len() {
                let Some(front) = slot.recv.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&front[..k]);
                n += k;
                if k == front.len() {
                    slot.recv.pop_front();
                } else {
                    let _ = front.split_to(k);
                }
            }
            slot.buffered -= n;
            if n > 0 {
                s.release(id, n);
                s.after_command();
            }
            return Poll::Ready(Ok(n));
        }
        if slot.recv_end.is_some() || buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Some(f) = &slot.failure {
            return Poll::Ready(Err(stream_io_error(f.to_error())));
        }
        register(&mut slot.read, cx.waker());
        Poll::Pending
    }

    /// Zero-copy read: the next received chunk (at most `max` octets), `None` at end of stream.
    pub(crate) fn poll_read_chunk(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<io::Result<Bytes>>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(slot) = s.slots.get_mut(&id) else {
            return Poll::Ready(Some(Err(stream_io_error(Error::Stream(
                StreamError::Gone(id),
            )))));
        };
        if let Some(front) = slot.recv.front_mut() {
            let chunk = if front.len() <= max {
                slot.recv.pop_front().unwrap_or_default()
            } else {
                front.split_to(max)
            };
            slot.buffered -= chunk.len();
            s.release(id, chunk.len());
            s.after_command();
            return Poll::Ready(Some(Ok(chunk)));
        }
        if slot.recv_end.is_some() {
            return Poll::Ready(None);
        }
        if let Some(f) = &slot.failure {
            return Poll::Ready(Some(Err(stream_io_error(f.to_error()))));
        }
        register(&mut slot.read, cx.waker());
        Poll::Pending
    }

    pub(crate) fn poll_write(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(id, cx, buf.len(), |take| {
            Bytes::copy_from_slice(&buf[..take])
        })
    }

    /// Zero-copy write: sends a prefix of `data` (what the windows allow, at most
    /// [`MAX_WRITE_CHUNK`]) as a slice of it, and advances `data` past it.
    pub(crate) fn poll_write_bytes(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        data: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let len = data.len();
        let sent = std::task::ready!(self.poll_send(id, cx, len, |take| data.slice(..take)))?;
        bytes::Buf::advance(data, sent);
        Poll::Ready(Ok(sent))
    }

    /// Offers up to `len` octets, made by `chunk(n)` for the `n` the windows allow.
    fn poll_send(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        len: usize,
        chunk: impl FnOnce(usize) -> Bytes,
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(slot) = s.slots.get_mut(&id) else {
            return Poll::Ready(Err(stream_io_error(Error::Stream(StreamError::Gone(id)))));
        };
        if let Some(f) = &slot.failure {
            return Poll::Ready(Err(stream_io_error(f.to_error())));
        }
        if slot.send_done {
            return Poll::Ready(Err(stream_io_error(Error::Stream(
                ApiMisuse::SendAfterFinish(id).into(),
            ))));
        }
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        // Offer what the windows allow; when they allow nothing, offer one octet so that the
        // connection remembers to report `Writable` (it is refused, or taken if credit just came).
        let cap = s.conn.send_capacity(id).max(1);
        let take = len.min(cap).min(MAX_WRITE_CHUNK);
        match s.conn.send_data(id, chunk(take), false) {
            Ok(0) => {
                register(&mut slot.write, cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                s.after_command();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(stream_io_error(Error::Stream(e)))),
        }
    }

    /// Ends our direction of the stream (idempotent).
    pub(crate) fn finish(&self, id: StreamId) -> Result<(), Error> {
        self.end_send(id, |conn| conn.finish(id))
    }

    pub(crate) fn send_trailer(&self, id: StreamId, trailer: Trailer) -> Result<(), Error> {
        self.end_send(id, |conn| conn.send_trailer(id, trailer))
    }

    fn end_send(
        &self,
        id: StreamId,
        f: impl FnOnce(&mut Connection) -> Result<(), StreamError>,
    ) -> Result<(), Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let slot = s
            .slots
            .get_mut(&id)
            .ok_or(Error::Stream(StreamError::Gone(id)))?;
        if let Some(f) = &slot.failure {
            return Err(f.to_error());
        }
        if slot.send_done {
            return Ok(());
        }
        f(&mut s.conn)?;
        slot.send_done = true;
        s.after_end_command();
        Ok(())
    }

    pub(crate) fn respond(
        &self,
        id: StreamId,
        head: ResponseHead,
        end_stream: bool,
    ) -> Result<(), Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let slot = s
            .slots
            .get_mut(&id)
            .ok_or(Error::Stream(StreamError::Gone(id)))?;
        if let Some(f) = &slot.failure {
            return Err(f.to_error());
        }
        s.conn.send_response(id, head, end_stream)?;
        slot.send_done |= end_stream;
        if end_stream {
            s.after_end_command();
        } else {
            s.after_command();
        }
        Ok(())
    }

    pub(crate) fn reset(&self, id: StreamId, code: ErrorCode) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(slot) = s.slots.get_mut(&id) else {
            return;
        };
        if slot.failure.is_some() {
            return;
        }
        tracing::debug!(parent: &s.span, stream = id.0, %code, "resetting stream");
        s.conn.reset(id, code, "reset by application");
        s.fail_stream(
            id,
            Failure::Reset {
                code,
                message: "reset by application".into(),
                remote: false,
            },
        );
        s.after_end_command();
    }

    /// The response head once it arrived: a copy, or with `take` the head itself, after which a
    /// further call fails with [`ApiMisuse::ResponseTaken`].
    pub(crate) fn poll_response(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
        take: bool,
    ) -> Poll<Result<ResponseHead, Error>> {
        let mut s = self.lock();
        let Some(slot) = s.slots.get_mut(&id) else {
            return Poll::Ready(Err(Error::Stream(StreamError::Gone(id))));
        };
        if take && let Some(h) = slot.response.take() {
            slot.response_taken = true;
            return Poll::Ready(Ok(h));
        }
        if let Some(h) = &slot.response {
            return Poll::Ready(Ok(h.clone()));
        }
        if slot.response_taken {
            return Poll::Ready(Err(Error::Stream(ApiMisuse::ResponseTaken(id).into())));
        }
        if let Some(f) = &slot.failure {
            return Poll::Ready(Err(f.to_error()));
        }
        slot.meta.register(cx.waker());
        Poll::Pending
    }

    pub(crate) fn poll_trailer(
        &self,
        id: StreamId,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Trailer>, Error>> {
        let mut s = self.lock();
        let Some(slot) = s.slots.get_mut(&id) else {
            return Poll::Ready(Err(Error::Stream(StreamError::Gone(id))));
        };
        if let Some(end) = &slot.recv_end {
            return Poll::Ready(Ok(end.clone()));
        }
        if let Some(f) = &slot.failure {
            return Poll::Ready(Err(f.to_error()));
        }
        slot.meta.register(cx.waker());
        Poll::Pending
    }

    /// The application dropped its handle on the stream. Unread octets are released (the connection
    /// window must not leak); a stream whose sending is unfinished is reset with CANCEL; one that
    /// finished sending but still expects data is reset once its end has been transmitted.
    pub(crate) fn drop_stream(&self, id: StreamId) {
        let mut guard = self.lock();
        let s = &mut *guard;
        let Some(mut slot) = s.slots.remove(&id) else {
            return;
        };
        if slot.buffered > 0 {
            s.release(id, slot.buffered);
        }
        if slot.failure.is_none() && s.conn.stream_exists(id) {
            if !slot.send_done {
                tracing::debug!(parent: &s.span, stream = id.0, "stream dropped unfinished: reset with CANCEL");
                s.conn.reset(id, ErrorCode::Cancel, "stream dropped");
            } else if slot.recv_end.is_none() {
                slot.recv.clear();
                slot.buffered = 0;
                slot.detached = true;
                s.slots.insert(id, slot);
                s.cancel_after_flush.push(id);
                wake(&mut s.driver);
                s.after_command();
                return;
            }
        }
        s.recycle(slot);
        s.after_command();
    }
}

#[cfg(test)]
impl Session {
    /// The streams whose peer ended its direction.
    pub(crate) fn ended_streams(&self) -> Vec<StreamId> {
        let s = self.lock();
        let mut ids: Vec<StreamId> = s
            .slots
            .iter()
            .filter(|(_, slot)| slot.recv_end.is_some())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Whether a driver's transport is attached.
    pub(crate) fn has_wire(&self) -> bool {
        self.lock().wire.is_some()
    }
}

impl Shared {
    /// Routes the events a call produced and wakes the driver if it has something to do.
    fn after_command(&mut self) {
        self.after(false);
    }

    /// [`Shared::after_command`] for a command that ends a stream's data (end of stream, trailer,
    /// reset): nothing more of that stream is coming to batch with, so its frames are written from
    /// the commanding task at once if the driver is not polling ([`Shared::flush_inline`]) — once
    /// per input the driver hands over. Further ends before the next input leave their frames to
    /// the driver, which writes those that wait in one batch (one TLS record, one system call): at
    /// 64 concurrent proxied requests, writing each request's frames on its own cost kas and
    /// agentk about a fifth more CPU per request (`scripts/bench.sh`'s service proxy, alternating
    /// builds). A request–answer exchange at a time still writes each end at once.
    fn after_end_command(&mut self) {
        self.after(true);
    }

    fn after(&mut self, inline: bool) {
        self.dispatch();
        // Our own GOAWAY (close, abort) produces no event: tell the drain waiters here.
        if self.conn.is_draining() || self.conn.is_closed() {
            self.note_local_drain();
            self.drain_wakers.wake_all();
        }
        if self.conn.has_pending_transmit() || self.conn.is_closed() {
            // One inline write per input read: a second stream ending before the peer sent
            // anything more means several are ending at once (many requests in flight), and the
            // driver's run, queued behind the tasks already woken, writes them together.
            let inline = inline && !self.inline_since_input;
            if inline && !self.conn.is_closed() && self.flush_inline() {
                return;
            }
            wake(&mut self.driver);
        }
    }

    /// Writes the transmit output from this task if the driver's transport is free (the driver
    /// is parked, or woken but not yet running); true if the driver need not be woken for it:
    /// everything was written (or the transport is full and the driver's waker is registered with
    /// it) and nothing the driver acts on changed — no output left over, no close, no resets
    /// waiting for the flush, no deadline earlier than its timer's, no paused input to resume.
    /// A driver that was woken already runs anyway and finds nothing left to write.
    fn flush_inline(&mut self) -> bool {
        let Some(wire) = self.wire.as_deref() else {
            return false;
        };
        // The transport remembers this waker where it is not ready: the driver's, so that it is
        // woken to write the rest; if it was woken already, it writes the rest in that run.
        // Borrowed, not cloned: no reference counts to touch on this path taken per request.
        let waker = self.driver.as_ref().unwrap_or(Waker::noop());
        match wire.try_write(&mut self.conn, waker) {
            Inline::Busy | Inline::Failed => return false,
            Inline::Written | Inline::Pending => {}
        }
        self.inline_since_input = true;
        // Transmitting a stream's end can complete it, and with it a graceful close.
        self.dispatch();
        let deadline = match (self.conn.poll_timeout(), self.close_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let earlier = match (deadline, self.driver_deadline) {
            (Some(d), Some(armed)) => d < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        !(self.conn.has_pending_transmit()
            || self.conn.is_closed()
            || self.conn.is_draining()
            || !self.cancel_after_flush.is_empty()
            || earlier
            || (self.driver_paused && self.conn.wants_input()))
    }

    /// Our own GOAWAY (no protocol event reports it): a `Draining` for the observers, unless the
    /// connection is already over or a drain was reported.
    fn note_local_drain(&mut self) {
        if self.conn.is_draining() && !self.conn.is_closed() {
            self.observers.note_draining(Initiator::Local, None);
        }
    }

    /// Keeps the receive queue of a slot that is gone, for a later one.
    fn recycle(&mut self, slot: Slot) {
        let mut q = slot.recv;
        if q.capacity() > 0
            && q.capacity() <= SPARE_RECV_CAPACITY
            && self.spare_recv.len() < SPARE_RECV
        {
            q.clear();
            self.spare_recv.push(q);
        }
    }

    /// Hands consumed octets back to flow control.
    fn release(&mut self, id: StreamId, n: usize) {
        if !self.conn.is_closed() {
            self.conn.release_capacity(id, n);
        }
    }

    fn fail_stream(&mut self, id: StreamId, failure: Failure) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.detached {
            self.slots.remove(&id);
            return;
        }
        if slot.recv_end.is_none() && slot.buffered > 0 {
            // The body is incomplete and will never be read: give its credit back now.
            let n = slot.buffered;
            slot.recv.clear();
            slot.buffered = 0;
            if !self.conn.is_closed() {
                self.conn.release_capacity(id, n);
            }
        }
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.failure = Some(failure);
            slot.wake_all();
        }
    }

    fn end_recv(&mut self, id: StreamId, trailer: Option<Trailer>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.detached {
            self.slots.remove(&id);
            return;
        }
        slot.recv_end = Some(trailer);
        wake(&mut slot.read);
        slot.meta.wake_all();
    }

    fn dispatch(&mut self) {
        // Called after every command and several times per driver step, mostly with nothing to do.
        if self.conn.has_events() {
            self.dispatch_events();
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Hello(h) => {
                    self.hello = Some(h);
                    self.handshake_wakers.wake_all();
                }
                Event::Connected(e) => {
                    self.span.record("agent_id", e.agent_id);
                    self.span.record("connection_id", e.connection_id.as_str());
                    tracing::debug!(parent: &self.span, version = e.version, "tunnel connection established");
                    self.handshake_wakers.wake_all();
                }
                Event::StreamOpened {
                    id,
                    head,
                    end_stream,
                } => {
                    let slot = Slot {
                        recv_end: end_stream.then_some(None),
                        recv: self.spare_recv.pop().unwrap_or_default(),
                        ..Slot::default()
                    };
                    self.slots.insert(id, slot);
                    self.incoming.push_back((id, head));
                    self.incoming_wakers.wake_all();
                }
                Event::Response {
                    id,
                    head,
                    end_stream,
                } => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.response = Some(head);
                        slot.meta.wake_all();
                    }
                    if end_stream {
                        self.end_recv(id, None);
                    }
                }
                Event::Data { id, data } => match self.slots.get_mut(&id) {
                    Some(slot) if !slot.detached && slot.failure.is_none() => {
                        slot.buffered += data.len();
                        slot.recv.push_back(data);
                        wake(&mut slot.read);
                    }
                    _ => {
                        if !self.conn.is_closed() {
                            self.conn.release_capacity(id, data.len());
                        }
                    }
                },
                Event::Finished { id } => self.end_recv(id, None),
                Event::Trailer { id, trailer } => self.end_recv(id, Some(trailer)),
                Event::Reset {
                    id,
                    code,
                    message,
                    remote,
                } => {
                    tracing::debug!(parent: &self.span, stream = id.0, %code, remote, %message, "stream reset");
                    self.fail_stream(
                        id,
                        Failure::Reset {
                            code,
                            message,
                            remote,
                        },
                    );
                }
                Event::Writable { id } => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        wake(&mut slot.write);
                    }
                }
                Event::GoAway {
                    last_stream_id,
                    code,
                    message,
                } => {
                    tracing::debug!(parent: &self.span, last_stream_id, %code, %message, "peer is going away");
                    self.observers
                        .note_draining(Initiator::Peer, Some(last_stream_id));
                    self.drain_wakers.wake_all();
                }
                Event::Closed(reason) => self.on_closed(reason),
            }
        }
    }

    fn on_closed(&mut self, reason: CloseReason) {
        {
            match &reason {
                CloseReason::Graceful => {
                    tracing::debug!(parent: &self.span, %reason, "tunnel connection closed")
                }
                _ => tracing::info!(parent: &self.span, %reason, "tunnel connection closed"),
            }
        }
        self.observers.note_closed(&reason);
        // The streams the close reset carry the connection's reason rather than a bare RESET.
        let text = reason.to_string();
        self.slots.retain(|_, s| !s.detached);
        for slot in self.slots.values_mut() {
            if matches!(&slot.failure, Some(Failure::Reset { message, .. }) if *message == text) {
                slot.failure = Some(Failure::Conn(reason.clone()));
            }
            slot.wake_all();
        }
        self.cancel_after_flush.clear();
        self.close_deadline = None;
        self.handshake_wakers.wake_all();
        self.incoming_wakers.wake_all();
        self.close_wakers.wake_all();
        self.drain_wakers.wake_all();
        wake(&mut self.driver);
    }

    fn step(
        &mut self,
        now: Instant,
        waker: &Waker,
        out: &mut VecDeque<Bytes>,
        out_len: &mut usize,
        limit: usize,
    ) -> Step {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        if self.close_deadline.is_some_and(|d| d <= now) {
            self.close_deadline = None;
            tracing::info!(parent: &self.span, "graceful close deadline passed with streams open: aborting");
            self.conn
                .abort(ErrorCode::Cancel, "graceful close deadline passed");
        }
        self.dispatch();
        for _ in 0..2 {
            // Large DATA payloads go out as slices of the application's buffers (no copy).
            while *out_len < limit {
                let n = self.conn.poll_transmit_vectored(out);
                if n == 0 {
                    break;
                }
                *out_len += n;
            }
            // Transmitting a stream's end can complete it, and with it a graceful close.
            self.dispatch();
            if self.conn.has_pending_transmit() || self.cancel_after_flush.is_empty() {
                break;
            }
            // Everything queued (including the FINs of detached streams) has been handed over: the
            // resets go after it on the wire.
            for id in std::mem::take(&mut self.cancel_after_flush) {
                if self.slots.get(&id).is_some_and(|s| s.detached) {
                    self.slots.remove(&id);
                    self.conn.reset(id, ErrorCode::Cancel, "stream dropped");
                }
            }
            self.dispatch();
        }
        register(&mut self.driver, waker);
        let deadline = match (self.conn.poll_timeout(), self.close_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.driver_deadline = deadline;
        self.driver_paused = !self.conn.wants_input();
        // A GOAWAY we sent because of a timer (idle timeout) or the close deadline.
        if self.conn.is_draining() {
            self.note_local_drain();
            self.drain_wakers.wake_all();
        }
        Step {
            deadline,
            finished: self.conn.is_closed() && !self.conn.has_pending_transmit(),
            closed: self.conn.is_closed(),
            wants_input: self.conn.wants_input(),
            more_output: self.conn.has_pending_transmit(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ConnectionHandle, StreamHandle};

    /// Moves every transmitted octet between the two sessions until both are quiet.
    pub(crate) fn pump(a: &Session, b: &Session) {
        let w = Waker::noop();
        for _ in 0..1000 {
            let mut moved = false;
            for (from, to) in [(a, b), (b, a)] {
                let mut out = VecDeque::new();
                let mut len = 0;
                from.step(Instant::now(), w, &mut out, &mut len, usize::MAX);
                for bytes in out {
                    moved = true;
                    to.handle_input(&bytes, Instant::now());
                }
            }
            if !moved {
                return;
            }
        }
        panic!("sessions never went quiet");
    }

    pub(crate) fn connected() -> (ConnectionHandle, ConnectionHandle) {
        let agent = Session::agent(Config::default(), AgentHello::default());
        let server = Session::server(Config::default());
        pump(&agent, &server);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(server.poll_hello(&mut cx), Poll::Ready(Ok(_))));
        server.accept(1, "c".into());
        pump(&agent, &server);
        assert!(matches!(
            agent.poll_established(&mut cx),
            Poll::Ready(Ok(_))
        ));
        (ConnectionHandle::new(agent), ConnectionHandle::new(server))
    }

    pub(crate) fn accept(c: &ConnectionHandle) -> StreamHandle {
        let mut cx = Context::from_waker(Waker::noop());
        match c.poll_accept_stream(&mut cx) {
            Poll::Ready(Some((_, s))) => s,
            _ => panic!("no incoming stream"),
        }
    }

    pub(crate) fn write(s: &StreamHandle, data: &[u8]) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(s.poll_write(&mut cx, data), Poll::Ready(Ok(n)) if n == data.len()));
    }

    pub(crate) fn read(s: &StreamHandle) -> Poll<io::Result<Vec<u8>>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut buf = vec![0u8; 4096];
        s.poll_read(&mut cx, &mut buf)
            .map(|r| r.map(|n| buf[..n].to_vec()))
    }

    #[test]
    fn stream_ids_spread_over_the_hashs_top_bits() {
        // hashbrown picks the bucket from the low bits and the tag it compares first from the top
        // seven: ids of one side (all odd or all even) must spread over both about as well as
        // random hashes (128 of them in 128 buckets fill ~81; a constant low bit caps it at 64).
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<StreamIdHasher>::default();
        let hashes: Vec<u64> = (0..128u32)
            .map(|i| build.hash_one(StreamId(2 * i + 1)))
            .collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 127).collect();
        assert!(tags.len() >= 64, "{} distinct tags", tags.len());
        assert!(buckets.len() >= 72, "{} distinct buckets", buckets.len());
    }

    #[test]
    fn complete_body_stays_readable_after_a_later_reset() {
        let (agent, server) = connected();
        let s = agent.open(RequestHead::default(), false).expect("open");
        write(&s, b"whole body");
        s.finish().expect("finish");
        pump(agent.session(), server.session());
        let r = accept(&server);
        s.reset(ErrorCode::Cancel);
        pump(agent.session(), server.session());
        // The body ended before the reset came: it is delivered whole, then EOF.
        assert!(matches!(read(&r), Poll::Ready(Ok(ref v)) if v == b"whole body"));
        assert!(matches!(read(&r), Poll::Ready(Ok(ref v)) if v.is_empty()));
    }

    #[test]
    fn incomplete_body_fails_with_the_reset() {
        let (agent, server) = connected();
        let s = agent.open(RequestHead::default(), false).expect("open");
        write(&s, b"partial");
        pump(agent.session(), server.session());
        let r = accept(&server);
        s.reset(ErrorCode::Cancel);
        pump(agent.session(), server.session());
        match read(&r) {
            Poll::Ready(Err(e)) => assert!(matches!(
                Error::from(e),
                Error::StreamReset {
                    code: ErrorCode::Cancel,
                    remote: true,
                    ..
                }
            )),
            other => panic!("expected the reset, got {other:?}"),
        }
    }

    #[test]
    fn dropping_an_unfinished_stream_resets_it() {
        let (agent, server) = connected();
        let s = agent.open(RequestHead::default(), false).expect("open");
        pump(agent.session(), server.session());
        let r = accept(&server);
        drop(r);
        pump(agent.session(), server.session());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            s.poll_response(&mut cx),
            Poll::Ready(Err(Error::StreamReset {
                code: ErrorCode::Cancel,
                remote: true,
                ..
            }))
        ));
        assert_eq!(server.open_streams(), (0, 0));
    }

    #[test]
    fn dropped_finished_stream_is_cancelled_after_its_end_is_sent() {
        let (agent, server) = connected();
        let s = agent.open(RequestHead::default(), false).expect("open");
        write(&s, b"fire and forget");
        s.finish().expect("finish");
        drop(s);
        pump(agent.session(), server.session());
        // The body and its end arrived before the cancel.
        let r = accept(&server);
        assert!(matches!(read(&r), Poll::Ready(Ok(ref v)) if v == b"fire and forget"));
        assert!(matches!(read(&r), Poll::Ready(Ok(ref v)) if v.is_empty()));
        assert_eq!(agent.open_streams(), (0, 0));
        assert!(agent.session().lock().slots.is_empty());
    }

    /// A waker that counts its wake-ups.
    pub(crate) struct Counter(pub(crate) std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub(crate) fn counting_waker() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(std::sync::atomic::AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn drain_waiters_are_woken_by_the_peers_goaway() {
        let (agent, server) = connected();
        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(server.poll_draining(&mut cx).is_pending());
        assert!(server.poll_draining(&mut cx).is_pending());
        // A stream keeps the connection open while it drains.
        let _s = agent.open(RequestHead::default(), false).expect("open");
        agent.start_close(Duration::from_secs(60));
        pump(agent.session(), server.session());
        assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert!(server.poll_draining(&mut cx).is_ready());
        assert!(server.is_draining() && !server.is_closed());
    }

    /// An observer that records what it sees.
    fn recorder(c: &ConnectionHandle) -> Arc<Mutex<Vec<ConnectionEvent>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        c.on_event(move |ev| s.lock().expect("lock").push(ev.clone()));
        seen
    }

    fn events(seen: &Arc<Mutex<Vec<ConnectionEvent>>>) -> Vec<ConnectionEvent> {
        seen.lock().expect("lock").clone()
    }

    #[test]
    fn observers_see_the_peers_goaway_then_the_close_in_order() {
        let (agent, server) = connected();
        let seen = recorder(&server);
        let s = agent.open(RequestHead::default(), true).expect("open");
        pump(agent.session(), server.session());
        let accepted = accept(&server);
        agent.start_close(Duration::from_secs(60));
        // The observer ran inside handle_input, before anything after it was transmitted.
        pump(agent.session(), server.session());
        assert_eq!(
            events(&seen),
            vec![ConnectionEvent::Draining {
                initiator: Initiator::Peer,
                last_stream_id: Some(0)
            }]
        );
        accepted
            .respond(protocol::proto::ResponseHead::default(), true)
            .expect("respond");
        drop(s);
        drop(accepted);
        pump(agent.session(), server.session());
        assert_eq!(events(&seen).len(), 2, "{:?}", events(&seen));
        assert!(matches!(events(&seen)[1], ConnectionEvent::Closed(_)));
    }

    #[test]
    fn our_own_goaway_is_reported_as_local_and_an_abort_only_as_closed() {
        let (agent, server) = connected();
        let seen_agent = recorder(&agent);
        let seen_server = recorder(&server);
        agent.start_close(Duration::from_secs(60));
        assert_eq!(
            events(&seen_agent),
            vec![ConnectionEvent::Draining {
                initiator: Initiator::Local,
                last_stream_id: None
            }]
        );
        let (agent2, _server2) = connected();
        let seen_abort = recorder(&agent2);
        agent2.abort(ErrorCode::Internal, "gone");
        let ev = events(&seen_abort);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(matches!(ev[0], ConnectionEvent::Closed(_)));
        pump(agent.session(), server.session());
        assert!(matches!(
            events(&seen_server).first(),
            Some(ConnectionEvent::Draining {
                initiator: Initiator::Peer,
                ..
            })
        ));
    }

    #[test]
    fn a_late_observer_gets_the_past_replayed() {
        let (agent, server) = connected();
        agent.start_close(Duration::from_secs(60));
        pump(agent.session(), server.session());
        let seen = recorder(&server);
        let ev = events(&seen);
        assert!(
            matches!(
                ev.first(),
                Some(ConnectionEvent::Draining {
                    initiator: Initiator::Peer,
                    ..
                })
            ),
            "{ev:?}"
        );
        assert!(
            matches!(ev.last(), Some(ConnectionEvent::Closed(_))),
            "{ev:?}"
        );
        assert_eq!(ev.len(), 2);
    }

    #[test]
    fn observers_may_call_the_connection() {
        let (agent, server) = connected();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), server.clone());
        server.on_event(move |ev| {
            // The session lock is free: querying and even opening (refused while draining) work.
            let refused = s.open(RequestHead::default(), true).is_err();
            c.lock().expect("lock").push((
                matches!(ev, ConnectionEvent::Draining { .. }),
                s.is_draining(),
                refused,
            ));
        });
        agent.start_close(Duration::from_secs(60));
        pump(agent.session(), server.session());
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(calls.first(), Some(&(true, true, true)), "{calls:?}");
    }

    #[test]
    fn drain_waiters_are_woken_by_our_own_goaway_and_by_the_end() {
        let (agent, server) = connected();
        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(agent.poll_draining(&mut cx).is_pending());
        agent.start_close(Duration::from_secs(60));
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(agent.poll_draining(&mut cx).is_ready());

        let (woken, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(server.poll_draining(&mut cx).is_pending());
        server.abort(ErrorCode::Internal, "gone");
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(server.poll_draining(&mut cx).is_ready());
    }

    #[test]
    fn a_refused_open_does_not_drain_the_connection() {
        // A head larger than the peer accepts fails that open only.
        let (agent, server) = connected();
        let big = RequestHead {
            headers: vec![protocol::proto::Header {
                name: "x-big".into(),
                value: Bytes::from(vec![b'a'; 70 * 1024]),
            }],
            ..RequestHead::default()
        };
        assert!(matches!(
            server.open(big, true),
            Err(Error::Open(protocol::OpenError::HeadTooLarge { .. }))
        ));
        let (_, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(server.poll_draining(&mut cx).is_pending());
        assert!(!server.is_draining());
        assert!(server.open(RequestHead::default(), true).is_ok());
        drop(agent);
    }

    #[test]
    fn unread_octets_of_a_dropped_stream_return_to_the_connection_window() {
        let mut small = Config::default();
        small.settings.initial_connection_window = 64 * 1024;
        small.settings.initial_stream_window = 64 * 1024;
        let agent = Session::agent(Config::default(), AgentHello::default());
        let server = Session::server(small);
        pump(&agent, &server);
        server.accept(1, "c".into());
        pump(&agent, &server);
        let (agent, server) = (ConnectionHandle::new(agent), ConnectionHandle::new(server));
        let body = vec![7u8; 64 * 1024];
        for _ in 0..4 {
            let s = agent.open(RequestHead::default(), false).expect("open");
            // With a leaked window the second stream could not send anything.
            write(&s, &body);
            s.finish().expect("finish");
            pump(agent.session(), server.session());
            drop(accept(&server));
            pump(agent.session(), server.session());
        }
    }
}
