//! hyper's I/O traits over a futures-io connection, reading without zero-filling hyper's buffer.
//!
//! smol-hyper's `FuturesIo` zero-fills all the spare capacity hyper lends it (8 KiB or more)
//! before every read, also before the reads that find nothing (a keep-alive connection tries one
//! after every request): futures-io reads need initialised memory. [`HttpIo`] reads into a
//! per-thread buffer, initialised once, and copies only the octets read into hyper's buffer.
//! Writes go straight through, as with `FuturesIo`.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use hyper::rt::ReadBufCursor;

/// Most octets one read takes (hyper's buffer starts at 8 KiB and grows for bulk uploads).
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    /// Where this thread's reads land before they are copied to hyper's buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// A connection (TCP or TLS over TCP) as hyper's [`hyper::rt::Read`] and [`hyper::rt::Write`].
#[derive(Debug)]
pub struct HttpIo<I>(I);

impl<I> HttpIo<I> {
    /// Wraps `io`.
    pub fn new(io: I) -> HttpIo<I> {
        HttpIo(io)
    }
}

impl<I: AsyncRead + Unpin> hyper::rt::Read for HttpIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let want = buf.remaining().min(SCRATCH_LEN);
        let io = &mut self.get_mut().0;
        SCRATCH.with_borrow_mut(|scratch| {
            let into = &mut scratch[..want];
            Pin::new(io)
                .poll_read(cx, into)
                .map_ok(|n| buf.put_slice(&into[..n]))
        })
    }
}

impl<I: AsyncWrite + Unpin> hyper::rt::Write for HttpIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_close(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Reads once from `io` into `buf` (which hyper lends as spare capacity); the octets read.
    fn read_once<R: hyper::rt::Read + Unpin>(io: &mut R, buf: &mut [u8]) -> usize {
        let mut rb = hyper::rt::ReadBuf::new(buf);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(io).poll_read(&mut cx, rb.unfilled()) {
            Poll::Ready(Ok(())) => rb.filled().len(),
            other => panic!("not read: {other:?}"),
        }
    }

    #[test]
    fn reads_only_what_arrived_and_leaves_the_rest_of_the_buffer_alone() {
        let mut io = HttpIo::new(futures_lite::io::Cursor::new(
            b"GET / HTTP/1.1\r\n".to_vec(),
        ));
        let mut buf = vec![0xAA; 8192];
        let n = read_once(&mut io, &mut buf);
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        // smol-hyper's FuturesIo zero-fills all 8 KiB before reading.
        assert!(
            buf[n..].iter().all(|&b| b == 0xAA),
            "the spare capacity was written"
        );
        // The end of the input reads as 0 octets.
        assert_eq!(read_once(&mut io, &mut buf), 0);
    }

    #[test]
    fn a_large_input_is_read_whole_in_bounded_reads() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut io = HttpIo::new(futures_lite::io::Cursor::new(data.clone()));
        let mut got = Vec::new();
        let mut buf = vec![0; 100_000];
        // Bounded: every read takes at least one octet until the end.
        loop {
            let n = read_once(&mut io, &mut buf);
            if n == 0 {
                break;
            }
            assert!(n <= SCRATCH_LEN);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, data);
    }
}
