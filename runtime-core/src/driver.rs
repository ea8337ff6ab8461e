//! The driver: the one task per connection that owns the transport. It is a plain `Future` over a
//! futures-io byte stream and the runtime's timer ([`crate::runtime`]), so both runtimes run exactly
//! the same loop:
//!
//! 1. read what the transport has into a buffer (several reads, until the buffer is full or the
//!    transport has nothing more) → one `handle_input` (or `handle_eof` at EOF/error) —
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

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_io::{AsyncRead, AsyncWrite};

use crate::runtime::{AsyncTimer, Runtime};
use crate::session::Session;

/// Receive buffer size of a busy connection (one that filled its small buffer).
pub const READ_BUFFER: usize = 64 * 1024;
/// Receive buffer size of a quiet connection. An idle connection holds none at all: the buffer is
/// allocated when the driver reads and released once a read at this size drained the transport.
pub const READ_BUFFER_SMALL: usize = 4 * 1024;
/// A large receive buffer that has not been filled for this long shrinks back to small.
pub const READ_BUFFER_SHRINK: Duration = Duration::from_secs(2);
/// Receive buffers a busy connection keeps for reuse: the octets read are handed out as slices, so
/// a buffer can be refilled only once the streams have consumed them. Reusing those allocations
/// instead of taking fresh ones spares the allocator's trimming and the kernel's page faults.
const SPARE_BUFFERS: usize = 4;
/// How much transmit output the driver takes from the connection at once.
pub const WRITE_BATCH: usize = 512 * 1024;
/// Most slices in one vectored write.
const MAX_IOV: usize = 64;
/// How long a closed connection may take to flush its last frames before the transport is dropped
/// (a peer that stopped reading must not keep the task alive).
pub const LINGER: Duration = Duration::from_secs(2);
/// Iterations before the driver yields to other tasks.
const BUDGET: usize = 64;

/// The connection's I/O task. Spawn it; it completes when the connection is over.
pub struct Driver<T> {
    session: Session,
    io: T,
    runtime: Arc<dyn Runtime>,
    /// Made at the first deadline.
    timer: Option<Pin<Box<dyn AsyncTimer>>>,
    armed: Option<Instant>,
    /// Receive buffer: none while idle, [`READ_BUFFER_SMALL`] while quiet, [`READ_BUFFER`] while busy.
    /// Filled octets are split off and handed to the session without a copy.
    read_buf: BytesMut,
    /// Earlier receive buffers, oldest first, whose slices may still be held by streams
    /// ([`SPARE_BUFFERS`]); emptied whenever `read_buf` is released.
    spare: VecDeque<BytesMut>,
    /// The size `read_buf` is filled to.
    read_size: usize,
    /// The last time a read filled more than the small buffer holds.
    last_busy: Instant,
    read_closed: bool,
    out: VecDeque<Bytes>,
    out_len: usize,
    need_flush: bool,
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
}

/// What discarding the peer's last octets gave.
enum Discard {
    /// End of file or an error: the transport can be dropped.
    Done,
    Progress,
    Pending,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Driver<T> {
    pub fn new(session: Session, io: T, runtime: Arc<dyn Runtime>) -> Self {
        Driver {
            session,
            io,
            runtime,
            timer: None,
            armed: None,
            read_buf: BytesMut::new(),
            spare: VecDeque::new(),
            read_size: 0,
            last_busy: Instant::now(),
            read_closed: false,
            out: VecDeque::new(),
            out_len: 0,
            need_flush: false,
            write_failed: false,
            closed: false,
            linger: None,
            input_paused: false,
            shut_down: false,
        }
    }

    /// Reads what the transport has (several reads, up to the buffer's size) and hands it to the
    /// session in one call: one lock, one dispatch and one wake-up per stream for many TLS records.
    fn read(&mut self, cx: &mut Context<'_>, now: Instant) -> Read {
        if self.read_closed || self.closed || self.linger.is_some() {
            return Read::Nothing;
        }
        if self.read_size == 0 {
            self.read_size = READ_BUFFER_SMALL;
        }
        let size = self.read_size;
        // Zero-filled room to read into (futures-io reads into initialised memory); the octets of
        // earlier reads were split off, so this reuses the allocation once they are consumed.
        self.read_buf.clear();
        self.recycle(size);
        self.read_buf.resize(size, 0);
        let mut filled = 0;
        let mut eof = false;
        let mut drained = false;
        // Bounded by the buffer: every round fills some of it or ends the loop.
        while filled < size {
            match Pin::new(&mut self.io).poll_read(cx, &mut self.read_buf[filled..]) {
                Poll::Ready(Ok(0)) => {
                    tracing::debug!("transport reached end of file");
                    eof = true;
                    break;
                }
                Poll::Ready(Ok(n)) => filled += n,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "transport read failed");
                    eof = true;
                    break;
                }
                Poll::Pending => {
                    drained = true;
                    break;
                }
            }
        }
        self.read_buf.truncate(filled);
        if filled > 0 {
            let data = self.read_buf.split().freeze();
            self.session.handle_input_bytes(data, now);
        }
        if eof {
            self.read_closed = true;
            self.session.handle_eof();
        }
        if filled > READ_BUFFER_SMALL {
            self.last_busy = now;
        }
        if filled == size && size < READ_BUFFER {
            // A full small buffer: this connection is busy.
            self.read_size = READ_BUFFER;
            self.last_busy = now;
        } else if filled == 0 {
            if size > READ_BUFFER_SMALL && now.duration_since(self.last_busy) >= READ_BUFFER_SHRINK
            {
                self.read_size = READ_BUFFER_SMALL;
                self.read_buf = BytesMut::new();
                self.spare.clear();
            } else if size <= READ_BUFFER_SMALL {
                // Nothing to read and quiet: an idle connection holds no receive buffer.
                self.read_size = 0;
                self.read_buf = BytesMut::new();
                self.spare.clear();
            }
        } else if drained && size <= READ_BUFFER_SMALL {
            // Quiet: what the transport had fitted the small buffer and the next wake-up may be a
            // keepalive away, so hold none until then (4 KiB per idle connection otherwise).
            self.read_size = 0;
            self.read_buf = BytesMut::new();
            self.spare.clear();
        }
        if eof {
            Read::Progress
        } else if drained {
            // The transport's waker is registered: new input wakes the task.
            Read::Drained
        } else {
            // The buffer filled up: there may be more.
            Read::Progress
        }
    }

    /// Makes `read_buf` (empty) hold room for `size` octets without a fresh allocation when it can:
    /// its own allocation or a spare one whose slices have all been consumed. A buffer still in
    /// use is kept as a spare (the oldest spare is dropped when there are too many).
    fn recycle(&mut self, size: usize) {
        if self.read_buf.capacity() >= size || self.read_buf.try_reclaim(size) {
            return;
        }
        let reusable = self.spare.iter_mut().position(|b| {
            b.clear();
            b.try_reclaim(size)
        });
        let next = match reusable {
            Some(i) => self.spare.remove(i).unwrap_or_default(),
            // a fresh allocation (by `resize`)
            None => BytesMut::new(),
        };
        let old = std::mem::replace(&mut self.read_buf, next);
        if self.spare.len() >= SPARE_BUFFERS {
            self.spare.pop_front();
        }
        self.spare.push_back(old);
    }

    /// Lingering close: after our last frames and our shutdown, reads and drops what the peer still
    /// sends until its end of file (bounded by [`LINGER`] at the caller). Dropping a socket with
    /// unread input makes the kernel reset the connection, and a reset destroys what the peer has
    /// not read yet — the GOAWAY saying why it was closed, for one.
    fn discard(&mut self, cx: &mut Context<'_>) -> Discard {
        if self.read_closed {
            return Discard::Done;
        }
        if self.read_buf.len() < READ_BUFFER_SMALL {
            self.read_buf.clear();
            self.read_buf.resize(READ_BUFFER_SMALL, 0);
        }
        let mut progress = false;
        for _ in 0..BUDGET {
            match Pin::new(&mut self.io).poll_read(cx, &mut self.read_buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.read_closed = true;
                    return Discard::Done;
                }
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Pending => break,
            }
        }
        if progress {
            Discard::Progress
        } else {
            Discard::Pending
        }
    }

    fn write_failed(&mut self, e: &io::Error) {
        tracing::debug!(error = %e, "transport write failed");
        self.write_failed = true;
        self.out.clear();
        self.out_len = 0;
        self.session.handle_eof();
    }

    fn write(&mut self, cx: &mut Context<'_>) -> bool {
        if self.write_failed {
            self.out.clear();
            self.out_len = 0;
            return false;
        }
        let mut progress = false;
        while !self.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for b in self.out.iter().take(MAX_IOV) {
                iov[k] = IoSlice::new(b);
                k += 1;
            }
            match Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..k]) {
                Poll::Ready(Ok(0)) => {
                    self.write_failed(&io::ErrorKind::WriteZero.into());
                    return true;
                }
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
                Poll::Ready(Err(e)) => {
                    self.write_failed(&e);
                    return true;
                }
                Poll::Pending => return progress,
            }
        }
        if self.need_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.need_flush = false;
                    progress = true;
                }
                Poll::Ready(Err(e)) => {
                    self.write_failed(&e);
                    return true;
                }
                Poll::Pending => {}
            }
        }
        progress
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Future for Driver<T> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.session.span().clone();
        let _entered = span.enter();
        let mut drained = false;
        for _ in 0..BUDGET {
            let now = this.runtime.now();
            let mut progress = false;
            if !this.input_paused && !drained {
                match this.read(cx, now) {
                    Read::Progress => progress = true,
                    Read::Drained => drained = true,
                    Read::Nothing => {}
                }
            }
            let step = this.session.step(
                now,
                cx.waker(),
                &mut this.out,
                &mut this.out_len,
                WRITE_BATCH,
            );
            let failed_before = this.write_failed;
            this.write(cx);
            // Another round for the writer only if the write failed (the session must see it) or
            // the batch is out and the session has more; a pending write has registered the
            // transport's waker, and commands that produce output wake the task (registered in
            // `step`).
            progress |= this.write_failed != failed_before
                || (step.more_output && this.out.is_empty() && !this.need_flush);
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
                let flushed = this.out.is_empty() && !this.need_flush;
                if flushed && !this.shut_down {
                    match Pin::new(&mut this.io).poll_close(cx) {
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
                    match this.discard(cx) {
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
                                }
                            }
                            t
                        }
                        None => {
                            this.armed = Some(d);
                            this.timer.insert(this.runtime.new_timer(d))
                        }
                    };
                    if timer.as_mut().poll(cx).is_ready() {
                        this.armed = None;
                        progress = true;
                    }
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
