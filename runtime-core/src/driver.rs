//! The driver: the one task per connection that owns the transport. It is a plain `Future` over a
//! futures-io byte stream and the runtime's timer ([`crate::runtime`]), so both runtimes run exactly
//! the same loop:
//!
//! 1. read what the transport has into a buffer (several reads, until the buffer is full or the
//!    transport has nothing more) → one `handle_input` (or `handle_eof` at EOF/error): a quiet
//!    connection reads into its thread's scratch buffer and hands over a copy of what it read, a busy
//!    one reads into 64 KiB buffers of its own that it reuses once their octets are consumed
//!    (`Receive`); after [`FULL_READS`] full buffers the driver yields to the other tasks —
//!    unless the connection wants no input: answers to the peer's earlier input are piling up
//!    untransmitted because the peer does not read, so the driver stops reading too until they are
//!    written (back-pressure: the peer's sends block in TCP, and kas's memory stays bounded);
//! 2. [`Session::step`]: run due timers, take a batch of transmit output, register the task's waker so
//!    that stream commands that produce output wake it;
//! 3. write the batch with vectored writes, flush when it is all written;
//! 4. arm the one timer at the earliest deadline;
//! 5. once the connection is closed, stop reading; once everything is flushed, shut our direction
//!    of the transport down and read (and drop) what the peer still sends until its end of file, so
//!    that the kernel does not reset a connection whose last frames the peer has not read yet
//!    (a lingering close); [`LINGER`] after the close, whether or not the peer reads, finish.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use protocol::Connection;

use crate::runtime::{AsyncTimer, Runtime};
use crate::session::Session;

/// Receive buffer size of a busy connection (one whose read filled the scratch buffer).
pub const READ_BUFFER: usize = 64 * 1024;
/// Size of the per-thread scratch buffer quiet connections read into: a read that fills it makes the
/// connection busy.
pub const READ_BUFFER_SMALL: usize = 4 * 1024;
/// A busy connection whose reads have not filled the scratch buffer for this long becomes quiet
/// again and releases its receive buffers.
pub const READ_BUFFER_SHRINK: Duration = Duration::from_secs(2);
/// Receive buffers a busy connection keeps for reuse: the octets read are handed out as slices, so
/// a buffer can be refilled only once the streams have consumed them. Reusing those allocations
/// instead of taking fresh ones spares the allocator's trimming, the kernel's page faults and the
/// zero-fill of a fresh buffer (futures-io reads only into initialised memory).
const SPARE_BUFFERS: usize = 4;
/// Full receive buffers one poll of the driver reads before it yields: other connections' drivers
/// and the streams' tasks on the same thread get their turn (bounded latency, and the streams consume
/// what was read before more piles up), instead of the driver looping while data keeps coming.
pub const FULL_READS: usize = 4;
/// How much transmit output the driver takes from the connection at once.
pub const WRITE_BATCH: usize = 512 * 1024;
/// Most slices in one vectored write.
const MAX_IOV: usize = 64;
/// Vectored writes of at most this many buffers use a small array.
const FEW_IOV: usize = 4;
/// How long a closed connection may take to flush its last frames before the transport is dropped
/// (a peer that stopped reading must not keep the task alive).
pub const LINGER: Duration = Duration::from_secs(2);
/// Iterations before the driver yields to other tasks.
const BUDGET: usize = 64;

/// The connection's I/O task. Spawn it; it completes when the connection is over.
pub struct Driver<T> {
    session: Session,
    /// The transport and the output waiting for it, shared with the tasks that end streams (they
    /// write from their own task while the driver is not polling: [`InlineWrite`]).
    wire: Arc<Mutex<Wire<T>>>,
    runtime: Arc<dyn Runtime>,
    /// Made at the first deadline.
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    armed: Option<Instant>,
    /// The waker the armed timer holds: it answered `Pending` to a poll with it since it was last
    /// armed. While its instant is still ahead it cannot have fired, and polling it again with the
    /// same waker would only register that waker again (the quiet polls of a connection that
    /// sends a request and waits for the answer would each pay for it).
    timer_waker: Option<Waker>,
    /// Receive buffers: none while quiet (reads go to the thread's scratch buffer).
    recv: Receive,
    /// The last time a read filled the scratch buffer's size.
    last_busy: Instant,
    read_closed: bool,
    write_failed: bool,
    closed: bool,
    linger: Option<Instant>,
    /// The connection wanted no input at the last step: do not read.
    input_paused: bool,
    /// Our direction of the transport is shut down; what the peer still sends is discarded.
    shut_down: bool,
}

/// What one [`Driver::read`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Not reading (closed or lingering).
    Nothing,
    /// The transport has nothing more for now (whatever was read has been handled); its waker is
    /// registered, so reading again in this poll would only repeat a failing system call.
    Drained,
    /// Input was read and more may be waiting, or the transport ended: go round again.
    Progress,
    /// The buffer was filled: more is probably waiting (counts towards [`FULL_READS`]).
    Full,
}

/// What one [`fill`] gave.
#[derive(Debug, Clone, Copy)]
struct Fill {
    filled: usize,
    /// The buffer is full.
    full: bool,
    /// End of file or a read error.
    eof: bool,
    /// The transport had nothing more (its waker is registered).
    drained: bool,
}

/// Reads into `buf` until it is full, the transport has nothing more, or it ended. Bounded by the
/// buffer: every round fills some of it or ends the loop.
fn fill<T: AsyncRead + Unpin>(io: &mut T, cx: &mut Context<'_>, buf: &mut [u8]) -> Fill {
    let mut out = Fill {
        filled: 0,
        full: false,
        eof: false,
        drained: false,
    };
    while out.filled < buf.len() {
        match Pin::new(&mut *io).poll_read(cx, &mut buf[out.filled..]) {
            Poll::Ready(Ok(0)) => {
                tracing::debug!("transport reached end of file");
                out.eof = true;
                break;
            }
            Poll::Ready(Ok(n)) => out.filled += n,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "transport read failed");
                out.eof = true;
                break;
            }
            Poll::Pending => {
                out.drained = true;
                break;
            }
        }
    }
    out.full = !buf.is_empty() && out.filled == buf.len();
    out
}

/// Inputs up to this size are copied into one allocation that holds both the octets and the
/// reference count ([`SmallInput`]); a request or answer of a few small frames fits in the first
/// size.
const SMALL_INPUT: [usize; 2] = [192, 512];

/// The octets of a small read and their length, owned by the `Bytes` that [`copy_input`] makes.
struct SmallInput<const N: usize> {
    len: usize,
    data: [u8; N],
}

impl<const N: usize> AsRef<[u8]> for SmallInput<N> {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

fn small_input<const N: usize>(input: &[u8]) -> Bytes {
    let mut owner = SmallInput {
        len: input.len(),
        data: [0; N],
    };
    owner.data[..input.len()].copy_from_slice(input);
    Bytes::from_owner(owner)
}

/// A copy of `input` as `Bytes`. A small input takes one allocation: `Bytes::copy_from_slice`
/// allocates the octets, and the decoder's first slice of them a shared header besides; an owner
/// holding both costs one, and its slices only count references.
fn copy_input(input: &[u8]) -> Bytes {
    if input.len() <= SMALL_INPUT[0] {
        small_input::<{ SMALL_INPUT[0] }>(input)
    } else if input.len() <= SMALL_INPUT[1] {
        small_input::<{ SMALL_INPUT[1] }>(input)
    } else {
        Bytes::copy_from_slice(input)
    }
}

thread_local! {
    /// The scratch receive buffer of the quiet connections whose drivers run on this thread.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER_SMALL]);
}

/// Runs `f` on this thread's scratch buffer ([`READ_BUFFER_SMALL`] initialised octets), or on a
/// buffer of its own if the scratch buffer is in use (a driver polled from inside another's read)
/// or gone (thread teardown).
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut f = Some(f);
    let out = SCRATCH
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let f = f.take()?;
            Some(f(&mut s[..]))
        })
        .ok()
        .flatten();
    match (out, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut vec![0; READ_BUFFER_SMALL]),
        (None, None) => unreachable!("the closure ran, so it produced a value"),
    }
}

/// The receive buffers of a busy connection: one to read into (initialised, [`READ_BUFFER`] octets)
/// and up to [`SPARE_BUFFERS`] earlier ones whose slices may still be held by streams. A quiet
/// connection holds none (it reads into the thread's scratch buffer).
#[derive(Debug, Default)]
struct Receive {
    busy: bool,
    /// Taken for a read and given back (unused) or kept as a spare (used).
    current: Option<BytesMut>,
    /// Used buffers, oldest first, each whole (its full length, so that once its slices are gone
    /// it converts back to an initialised `BytesMut` without a zero-fill).
    spare: VecDeque<Bytes>,
}

impl Receive {
    fn is_busy(&self) -> bool {
        self.busy
    }

    /// Quiet connections hold no buffer.
    fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
        if !busy {
            self.current = None;
            self.spare.clear();
        }
    }

    /// A buffer of [`READ_BUFFER`] initialised octets: the current one, else a spare whose octets
    /// have all been consumed, else a fresh one.
    fn take_buffer(&mut self) -> BytesMut {
        if let Some(b) = self.current.take() {
            return b;
        }
        for _ in 0..self.spare.len() {
            let Some(b) = self.spare.pop_front() else {
                break;
            };
            match b.try_into_mut() {
                Ok(b) => return b,
                Err(b) => self.spare.push_back(b),
            }
        }
        BytesMut::zeroed(READ_BUFFER)
    }

    /// Gives back a buffer nothing was read into.
    fn put_back(&mut self, buf: BytesMut) {
        self.current = Some(buf);
    }

    /// Keeps a buffer that was read into as a spare and returns it whole (the caller hands out a
    /// slice of it); the oldest spare is let go when there are too many.
    fn keep(&mut self, buf: BytesMut) -> Bytes {
        let whole = buf.freeze();
        if self.spare.len() >= SPARE_BUFFERS {
            self.spare.pop_front();
        }
        self.spare.push_back(whole.clone());
        whole
    }
}

/// What discarding the peer's last octets gave.
enum Discard {
    /// End of file or an error: the transport can be dropped.
    Done,
    Progress,
    Pending,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Driver<T> {
    pub fn new(session: Session, io: T, runtime: Arc<dyn Runtime>) -> Self {
        let wire = Arc::new(Mutex::new(Wire {
            io,
            out: VecDeque::new(),
            out_len: 0,
            need_flush: false,
            error: None,
        }));
        session.attach_wire(wire.clone());
        Driver {
            session,
            wire,
            runtime,
            timer: None,
            armed: None,
            timer_waker: None,
            recv: Receive::default(),
            last_busy: Instant::now(),
            read_closed: false,
            write_failed: false,
            closed: false,
            linger: None,
            input_paused: false,
            shut_down: false,
        }
    }

    /// Reads what the transport has (several reads, up to the buffer's size) and hands it to the
    /// session in one call: one lock, one dispatch and one wake-up per stream for many TLS records.
    fn read(&mut self, w: &mut Wire<T>, cx: &mut Context<'_>, now: Instant) -> Read {
        if self.read_closed || self.closed || self.linger.is_some() {
            return Read::Nothing;
        }
        let outcome = if self.recv.is_busy() {
            let mut buf = self.recv.take_buffer();
            let outcome = fill(&mut w.io, cx, &mut buf);
            if outcome.filled > READ_BUFFER_SMALL {
                let data = self.recv.keep(buf).slice(..outcome.filled);
                self.session.handle_input_bytes(data, now);
            } else {
                // Little was read: a copy of it costs less than tying the whole buffer up until
                // the streams consumed it.
                if outcome.filled > 0 {
                    self.session
                        .handle_input_bytes(copy_input(&buf[..outcome.filled]), now);
                }
                self.recv.put_back(buf);
            }
            outcome
        } else {
            let (io, session) = (&mut w.io, &self.session);
            with_scratch(|scratch| {
                let outcome = fill(io, cx, scratch);
                if outcome.filled > 0 {
                    // A copy of exactly what was read: the connection holds no buffer between
                    // reads, and the frames are slices of the copy.
                    session.handle_input_bytes(copy_input(&scratch[..outcome.filled]), now);
                }
                outcome
            })
        };
        let Fill {
            filled,
            full,
            eof,
            drained,
        } = outcome;
        if eof {
            self.read_closed = true;
            self.session.handle_eof();
        }
        if filled >= READ_BUFFER_SMALL {
            self.last_busy = now;
        }
        if full && !self.recv.is_busy() {
            // A full scratch buffer: this connection is busy.
            self.recv.set_busy(true);
            self.last_busy = now;
        } else if self.recv.is_busy()
            && filled < READ_BUFFER_SMALL
            && now.duration_since(self.last_busy) >= READ_BUFFER_SHRINK
        {
            self.recv.set_busy(false);
        }
        if eof {
            Read::Progress
        } else if drained {
            // The transport's waker is registered: new input wakes the task.
            Read::Drained
        } else if full {
            // The buffer filled up: there may be more.
            Read::Full
        } else {
            Read::Progress
        }
    }

    /// Lingering close: after our last frames and our shutdown, reads and drops what the peer still
    /// sends until its end of file (bounded by [`LINGER`] at the caller). Dropping a socket with
    /// unread input makes the kernel reset the connection, and a reset destroys what the peer has
    /// not read yet — the GOAWAY saying why it was closed, for one.
    fn discard(&mut self, w: &mut Wire<T>, cx: &mut Context<'_>) -> Discard {
        if self.read_closed {
            return Discard::Done;
        }
        let io = &mut w.io;
        let done = with_scratch(|scratch| {
            let mut progress = false;
            for _ in 0..BUDGET {
                match Pin::new(&mut *io).poll_read(cx, scratch) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Discard::Done,
                    Poll::Ready(Ok(_)) => progress = true,
                    Poll::Pending => break,
                }
            }
            if progress {
                Discard::Progress
            } else {
                Discard::Pending
            }
        });
        if matches!(done, Discard::Done) {
            self.read_closed = true;
        }
        done
    }

    fn write_failed(&mut self, w: &mut Wire<T>, e: &io::Error) {
        tracing::debug!(error = %e, "transport write failed");
        self.write_failed = true;
        w.out.clear();
        w.out_len = 0;
        self.session.handle_eof();
    }

    fn write(&mut self, w: &mut Wire<T>, cx: &mut Context<'_>) -> bool {
        if self.write_failed {
            w.out.clear();
            w.out_len = 0;
            return false;
        }
        // A write from a task that failed (`InlineWrite`): the session learns it here.
        let result = match w.error.take() {
            Some(e) => Err(e),
            None => w.write_out(cx),
        };
        match result {
            Ok(progress) => progress,
            Err(e) => {
                self.write_failed(w, &e);
                true
            }
        }
    }
}

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        // The transport goes with the driver: no task may write to it any more.
        self.session.detach_wire();
    }
}

/// The transport and the output taken from the connection for it.
pub(crate) struct Wire<T> {
    io: T,
    out: VecDeque<Bytes>,
    out_len: usize,
    need_flush: bool,
    /// A write error met by a task's inline write, for the driver to handle.
    error: Option<io::Error>,
}

/// One vectored write of the first (at most `N`) buffers of `out`.
fn write_vectored<T: AsyncWrite + Unpin, const N: usize>(
    io: &mut T,
    cx: &mut Context<'_>,
    out: &VecDeque<Bytes>,
) -> Poll<io::Result<usize>> {
    let mut iov = [IoSlice::new(&[]); N];
    let mut k = 0;
    for b in out.iter().take(N) {
        iov[k] = IoSlice::new(b);
        k += 1;
    }
    Pin::new(io).poll_write_vectored(cx, &iov[..k])
}

impl<T: AsyncWrite + Unpin> Wire<T> {
    /// Writes `out` with vectored writes and flushes once it is all written; whether anything
    /// moved. A pending write or flush has registered `cx`'s waker.
    fn write_out(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while !self.out.is_empty() {
            let written = if self.out.len() <= FEW_IOV {
                // The usual small batch (a few frames): no 64-entry array to set up per write.
                write_vectored::<T, FEW_IOV>(&mut self.io, cx, &self.out)
            } else {
                write_vectored::<T, MAX_IOV>(&mut self.io, cx, &self.out)
            };
            match written {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(mut n)) => {
                    progress = true;
                    self.need_flush = true;
                    self.out_len -= n;
                    while n > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        if front.len() <= n {
                            n -= front.len();
                            self.out.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
        if self.need_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.need_flush = false;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Everything taken has been written and flushed.
    fn flushed(&self) -> bool {
        self.out.is_empty() && !self.need_flush
    }
}

/// What a task's attempt to write the connection's output itself gave ([`InlineWrite`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inline {
    /// The driver is polling (or the lock is poisoned): nothing was done, wake it.
    Busy,
    /// Output was taken and all of it written and flushed.
    Written,
    /// Output was taken; the transport is full, and the waker given is registered with it.
    Pending,
    /// The write failed; the driver must run to report it.
    Failed,
}

/// A transport that a task other than the driver may write to while the driver is not polling:
/// the session calls this when a command ends a stream's data, so the frames go out from the
/// commanding task at once instead of after a wake-up of the driver (and, on another thread, a
/// context switch).
pub(crate) trait InlineWrite: Send + Sync {
    /// If the transport is free, takes one batch of `conn`'s transmit output (at most
    /// `Config::max_transmit` and a frame; none if earlier output still waits) and writes it,
    /// registering `waker` (the driver's) where the transport is not ready. One batch: the task
    /// writes under the session's lock, so a command that ends one stream must not encrypt a
    /// backlog of other streams' data while every other command waits; the driver writes the rest.
    fn try_write(&self, conn: &mut Connection, waker: &Waker) -> Inline;
}

impl<T: AsyncWrite + Unpin + Send> InlineWrite for Mutex<Wire<T>> {
    fn try_write(&self, conn: &mut Connection, waker: &Waker) -> Inline {
        // Never waits: the driver holds the lock for the whole of its poll.
        let Ok(mut guard) = self.try_lock() else {
            return Inline::Busy;
        };
        let w = &mut *guard;
        if w.error.is_some() {
            return Inline::Failed;
        }
        if w.out.is_empty() {
            w.out_len += conn.poll_transmit_vectored(&mut w.out);
        }
        let mut cx = Context::from_waker(waker);
        match w.write_out(&mut cx) {
            Ok(_) if w.flushed() => Inline::Written,
            Ok(_) => Inline::Pending,
            Err(e) => {
                w.error = Some(e);
                Inline::Failed
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for Driver<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.session.span().clone();
        let _entered = span.enter();
        // Held for the whole poll: a task that ends a stream meanwhile leaves the writing to us.
        let wire = this.wire.clone();
        let mut guard = wire.lock().unwrap_or_else(PoisonError::into_inner);
        let w = &mut *guard;
        let mut drained = false;
        let mut full_reads = 0;
        for _ in 0..BUDGET {
            let now = this.runtime.now();
            let mut progress = false;
            if !this.input_paused && !drained && full_reads < FULL_READS {
                match this.read(w, cx, now) {
                    Read::Progress => progress = true,
                    Read::Full => {
                        progress = true;
                        full_reads += 1;
                    }
                    Read::Drained => drained = true,
                    Read::Nothing => {}
                }
            }
            let step = this
                .session
                .step(now, cx.waker(), &mut w.out, &mut w.out_len, WRITE_BATCH);
            let failed_before = this.write_failed;
            this.write(w, cx);
            // Another round for the writer only if the write failed (the session must see it) or
            // the batch is out and the session has more; a pending write has registered the
            // transport's waker, and commands that produce output wake the task (registered in
            // `step`).
            progress |= this.write_failed != failed_before || (step.more_output && w.flushed());
            // A change between paused (no input wanted) and reading.
            if this.input_paused == step.wants_input {
                if this.input_paused {
                    // Reading resumes: the read has to be attempted (and its waker registered).
                    progress = true;
                } else {
                    tracing::debug!("peer does not read its answers: pausing input");
                }
                this.input_paused = !step.wants_input;
            }
            if step.closed && this.linger.is_none() {
                // The connection is over: nothing more is read, and its last frames get LINGER to
                // leave however slowly (or not at all) the peer reads.
                this.linger = Some(now + LINGER);
            }
            if step.finished {
                this.closed = true;
            }
            if this.linger.is_some_and(|l| l <= now) || (this.closed && this.write_failed) {
                return Poll::Ready(());
            }
            if this.closed {
                let flushed = w.flushed();
                if flushed && !this.shut_down {
                    match Pin::new(&mut w.io).poll_close(cx) {
                        Poll::Ready(r) => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "transport shutdown failed");
                                return Poll::Ready(());
                            }
                            this.shut_down = true;
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
                if this.shut_down {
                    match this.discard(w, cx) {
                        Discard::Done => return Poll::Ready(()),
                        Discard::Progress => progress = true,
                        Discard::Pending => {}
                    }
                }
            }
            let deadline = match (step.deadline, this.linger) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(d) = deadline {
                if d <= now {
                    progress = true;
                } else {
                    // Every input moves the idle and keepalive deadlines later; a timer armed
                    // earlier is left as it is (it fires, finds nothing due, and is re-armed at
                    // the later deadline), so that busy connections do not touch the runtime's
                    // timer structures on every read.
                    let timer = match &mut this.timer {
                        Some(t) => {
                            match this.armed {
                                Some(a) if a <= d => {}
                                _ => {
                                    t.as_mut().reset(d);
                                    this.armed = Some(d);
                                    this.timer_waker = None;
                                }
                            }
                            t
                        }
                        None => {
                            this.armed = Some(d);
                            this.timer_waker = None;
                            this.timer.insert(this.runtime.new_timer(d))
                        }
                    };
                    // Polled only if it may have fired (its instant has come: timers do not fire
                    // early) or does not hold this task's waker yet.
                    let holds_waker = this.armed.is_some_and(|a| a > now)
                        && this
                            .timer_waker
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()));
                    if !holds_waker {
                        if timer.as_mut().poll(cx).is_ready() {
                            this.armed = None;
                            this.timer_waker = None;
                            progress = true;
                        } else {
                            this.timer_waker = Some(cx.waker().clone());
                        }
                    }
                }
            }
            if full_reads >= FULL_READS {
                // Enough read for one turn; the last read was not told "pending", so no waker is
                // registered with the transport: come back after the other tasks.
                break;
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{BoxFuture, BoxIo, Listener};
    use crate::session::tests::{accept, connected, read, write};
    use protocol::proto::RequestHead;
    use std::sync::Mutex;
    use std::task::Waker;

    /// A runtime for a driver polled by hand: its timers never fire, and nothing is spawned.
    #[derive(Debug)]
    struct Manual;

    #[derive(Debug)]
    struct Never;

    impl AsyncTimer for Never {
        fn reset(self: Pin<&mut Self>, _: Instant) {}
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    impl Runtime for Manual {
        fn spawn(&self, _: BoxFuture<()>) {
            unreachable!("the driver spawns nothing")
        }
        fn new_timer(&self, _: Instant) -> Pin<Box<dyn AsyncTimer>> {
            Box::pin(Never)
        }
        fn connect(&self, _: String, _: u16) -> BoxFuture<io::Result<BoxIo>> {
            Box::pin(async { Err(io::ErrorKind::Unsupported.into()) })
        }
        fn listen(&self, _: std::net::TcpListener) -> io::Result<Box<dyn Listener>> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// A transport whose reads return the queued chunks one per call (then "pending"), and whose
    /// writes are kept.
    #[derive(Clone, Default)]
    struct Scripted {
        reads: Arc<Mutex<VecDeque<Vec<u8>>>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let mut reads = self.reads.lock().expect("lock");
            let Some(front) = reads.front_mut() else {
                return Poll::Pending;
            };
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                reads.pop_front();
            }
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.lock().expect("lock").extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Scripted {
        /// Queues one read.
        fn push_read(&self, bytes: &[u8]) {
            self.reads.lock().expect("lock").push_back(bytes.to_vec());
        }

        /// Whether every queued read has been taken.
        fn reads_done(&self) -> bool {
            self.reads.lock().expect("lock").is_empty()
        }

        /// What has been written since the last call.
        fn take_written(&self) -> Vec<u8> {
            std::mem::take(&mut *self.written.lock().expect("lock"))
        }
    }

    /// A connected pair, and a driver of the agent's side over a [`Scripted`] transport.
    fn agent_driver() -> (
        crate::ConnectionHandle,
        crate::ConnectionHandle,
        Scripted,
        Driver<Scripted>,
    ) {
        let (agent, server) = connected();
        let io = Scripted::default();
        let driver = Driver::new(agent.session().clone(), io.clone(), Arc::new(Manual));
        (agent, server, io, driver)
    }

    fn poll(d: &mut Driver<Scripted>) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(d).poll(&mut cx).is_pending());
    }

    /// What `session` has to transmit, as the peer's driver would write it.
    fn transmit(session: &Session) -> Vec<u8> {
        let mut out = VecDeque::new();
        let mut len = 0;
        session.step(
            Instant::now(),
            Waker::noop(),
            &mut out,
            &mut len,
            usize::MAX,
        );
        out.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn read_all(s: &crate::StreamHandle) -> Vec<u8> {
        let mut got = Vec::new();
        while let Poll::Ready(Ok(v)) = read(s) {
            if v.is_empty() {
                break;
            }
            got.extend_from_slice(&v);
        }
        got
    }

    #[test]
    fn a_quiet_connection_keeps_a_partial_frame_across_reads_and_holds_no_buffer() {
        let (agent, server, io, mut driver) = agent_driver();
        let s = server.open(RequestHead::default(), false).expect("open");
        write(&s, b"hello, agent");
        s.finish().expect("finish");
        let wire = transmit(server.session());
        // Split inside the DATA frame's payload: the first read ends mid-frame.
        let cut = wire.len() - 5;
        io.push_read(&wire[..cut]);
        poll(&mut driver);
        assert!(!driver.recv.is_busy());
        assert!(driver.recv.current.is_none() && driver.recv.spare.is_empty());
        let r = accept(&agent);
        // The stream opened, but its body's frame is not complete yet.
        assert!(read(&r).is_pending());
        io.push_read(&wire[cut..]);
        poll(&mut driver);
        assert_eq!(read_all(&r), b"hello, agent");
        assert!(driver.recv.current.is_none() && driver.recv.spare.is_empty());
    }

    #[test]
    fn a_busy_connection_reuses_its_consumed_buffers_and_yields_after_full_reads() {
        let (agent, server, io, mut driver) = agent_driver();
        let s = server.open(RequestHead::default(), false).expect("open");
        let body: Vec<u8> = (0..(FULL_READS + 2) * READ_BUFFER)
            .map(|i| (i % 251) as u8)
            .collect();
        for c in body.chunks(crate::session::MAX_WRITE_CHUNK) {
            write(&s, c);
        }
        s.finish().expect("finish");
        let mut wire = transmit(server.session());
        while wire.len() < body.len() {
            wire.extend(transmit(server.session()));
        }
        // One read of the scratch buffer's size makes the connection busy; then the rest comes in
        // reads of odd sizes, so that frames straddle the buffers.
        io.push_read(&wire[..READ_BUFFER_SMALL]);
        for c in wire[READ_BUFFER_SMALL..].chunks(7_777) {
            io.push_read(c);
        }
        poll(&mut driver);
        assert!(driver.recv.is_busy());
        // The driver stopped after its full reads: input is left for its next turn.
        assert!(!io.reads_done());
        let r = accept(&agent);
        let mut got = read_all(&r);
        // Everything read has been consumed: the next read refills a kept buffer.
        let spare = driver.recv.spare.len();
        assert!(spare > 0);
        let reused = driver.recv.spare.front().map(|b| b.as_ptr());
        poll(&mut driver);
        assert!(driver.recv.spare.iter().any(|b| Some(b.as_ptr()) == reused));
        for _ in 0..100 {
            got.extend(read_all(&r));
            if io.reads_done() {
                break;
            }
            poll(&mut driver);
        }
        got.extend(read_all(&r));
        assert_eq!(got.len(), body.len());
        assert!(got == body);
    }

    /// The server side of `wire` as it arrives: the stream ids it ended (END_STREAM seen).
    fn finished_streams(server: &crate::ConnectionHandle, wire: &[u8]) -> Vec<protocol::StreamId> {
        server.session().handle_input(wire, Instant::now());
        server.session().ended_streams()
    }

    #[test]
    fn ending_a_stream_writes_from_the_callers_task_when_the_driver_is_parked() {
        let (agent, server, io, mut driver) = agent_driver();
        let s = agent.open(RequestHead::default(), false).expect("open");
        write(&s, b"request");
        let (woken, waker) = crate::session::tests::counting_waker();
        let mut cx = Context::from_waker(&waker);
        // The driver writes the head and the body, and parks.
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        let sent = io.take_written();
        assert!(finished_streams(&server, &sent).is_empty());
        let before = woken.0.load(std::sync::atomic::Ordering::SeqCst);
        s.finish().expect("finish");
        // The end of stream went out from this task, and the driver was not woken for it.
        let sent = io.take_written();
        assert_eq!(finished_streams(&server, &sent), vec![s.id()]);
        assert_eq!(woken.0.load(std::sync::atomic::Ordering::SeqCst), before);
    }

    #[test]
    fn ending_a_stream_wakes_the_driver_when_it_holds_the_transport() {
        let (agent, server, io, mut driver) = agent_driver();
        let s = agent.open(RequestHead::default(), false).expect("open");
        let (woken, waker) = crate::session::tests::counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        let sent = io.take_written();
        assert!(finished_streams(&server, &sent).is_empty());
        let before = woken.0.load(std::sync::atomic::Ordering::SeqCst);
        {
            // As while the driver polls (on another thread).
            let _busy = driver.wire.lock().expect("lock");
            s.finish().expect("finish");
        }
        assert!(io.take_written().is_empty());
        assert_eq!(
            woken.0.load(std::sync::atomic::Ordering::SeqCst),
            before + 1
        );
        // The woken driver writes it.
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        let sent = io.take_written();
        assert_eq!(finished_streams(&server, &sent), vec![s.id()]);
    }

    #[test]
    fn a_second_end_before_the_next_input_is_left_to_the_driver() {
        let (agent, server, io, mut driver) = agent_driver();
        let streams: Vec<_> = (0..4)
            .map(|_| agent.open(RequestHead::default(), false).expect("open"))
            .collect();
        let ids: Vec<_> = streams.iter().map(|s| s.id()).collect();
        let (woken, waker) = crate::session::tests::counting_waker();
        let mut cx = Context::from_waker(&waker);
        let woken = || woken.0.load(std::sync::atomic::Ordering::SeqCst);
        // The driver writes the heads and parks.
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        assert!(finished_streams(&server, &io.take_written()).is_empty());
        // The first end goes out from its own task, the driver not woken.
        let before = woken();
        streams[0].finish().expect("finish");
        let sent = io.take_written();
        assert_eq!(finished_streams(&server, &sent), ids[..1]);
        assert_eq!(woken(), before);
        // The next ones, before any input arrived, are left to the driver: it is woken, and its
        // one run writes both. (The server's list of ended streams is cumulative.)
        let before = woken();
        streams[1].finish().expect("finish");
        streams[2].finish().expect("finish");
        assert!(io.take_written().is_empty());
        assert!(woken() > before);
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        let sent = io.take_written();
        assert_eq!(finished_streams(&server, &sent), ids[..3]);
        // Input arrives (the answer to the first stream) and is read: the next end goes out from
        // its task again.
        let answer = accept(&server);
        answer
            .respond(protocol::proto::ResponseHead::default(), true)
            .expect("respond");
        io.push_read(&transmit(server.session()));
        assert!(Pin::new(&mut driver).poll(&mut cx).is_pending());
        io.take_written();
        let before = woken();
        streams[3].finish().expect("finish");
        let sent = io.take_written();
        assert_eq!(finished_streams(&server, &sent), ids);
        assert_eq!(woken(), before);
    }

    #[test]
    fn an_inline_write_takes_a_bounded_batch_and_leaves_the_rest_to_the_driver() {
        let (agent, server, io, mut driver) = agent_driver();
        poll(&mut driver);
        io.take_written();
        // A backlog of another stream's body, not yet written by the driver.
        let a = agent.open(RequestHead::default(), false).expect("open");
        let chunk = vec![1u8; crate::session::MAX_WRITE_CHUNK];
        for _ in 0..8 {
            write(&a, &chunk);
        }
        let b = agent.open(RequestHead::default(), false).expect("open");
        b.finish().expect("finish");
        let inline = io.take_written();
        let batch = protocol::Config::default().max_transmit;
        assert!(
            !inline.is_empty() && inline.len() <= batch + 17 * 1024,
            "{} octets",
            inline.len()
        );
        finished_streams(&server, &inline);
        poll(&mut driver);
        let sent = io.take_written();
        assert!(sent.len() >= 8 * chunk.len() - inline.len());
        assert_eq!(finished_streams(&server, &sent), vec![b.id()]);
    }

    #[test]
    fn a_finished_driver_lets_go_of_the_transport() {
        let (agent, _server, io, driver) = agent_driver();
        // The driver and the session hold it (plus `io` here).
        assert_eq!(Arc::strong_count(&io.written), 2);
        drop(driver);
        assert_eq!(Arc::strong_count(&io.written), 1);
        assert!(!agent.session().has_wire());
    }
}
