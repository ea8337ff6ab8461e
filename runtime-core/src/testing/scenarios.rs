//! The scenarios. Each is an `async fn(Rt)` over the one connection and stream API; they panic on
//! failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::proto::{Reject, RejectCode, RequestHead, ResponseHead, Trailer};
use protocol::{
    ApiMisuse, CloseReason, Config, ConnectionError, ErrorCode, OpenError, StreamError,
};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use super::tasks::{Gate, JoinHandle, Rt, sleep, spawn, timeout};
use super::{Pair, Setup};
use crate::error::Error;
use crate::handle::ConnectionHandle as Connection;
use crate::stream::Stream;

/// A bound for one step inside a scenario (far above what it needs; a hang guard).
const STEP: Duration = Duration::from_secs(60);

fn head(path: &str) -> RequestHead {
    RequestHead {
        service: "suite".into(),
        method: "POST".into(),
        path: path.into(),
        ..RequestHead::default()
    }
}

fn status(code: u32) -> ResponseHead {
    ResponseHead {
        status: code,
        headers: vec![],
    }
}

/// The octet at `offset` of the test body with `seed`.
fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(seed, offset + i as u64);
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(seed, 0, &mut v);
    v
}

async fn pair(rt: Rt, setup: Setup) -> Pair {
    match super::pair(rt, setup).await {
        Ok(p) => p,
        Err(e) => panic!("could not connect a pair: {e}"),
    }
}

/// Reads into `buf` through the futures-io trait; a reset or a closed connection is the typed error.
async fn read(mut s: &Stream, buf: &mut [u8]) -> Result<usize, Error> {
    s.read(buf).await.map_err(Error::from)
}

/// Writes all of `buf` through the futures-io trait.
async fn write_all(mut s: &Stream, buf: &[u8]) -> Result<(), Error> {
    s.write_all(buf).await.map_err(Error::from)
}

/// Finishes our direction through the futures-io trait (`close`).
async fn shutdown(mut s: &Stream) -> Result<(), Error> {
    s.close().await.map_err(Error::from)
}

async fn read_to_end(s: &Stream) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read(s, &mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Reads until the stream fails and returns the error (or panics at a clean end).
async fn read_until_error(s: &Stream) -> Error {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match read(s, &mut buf).await {
            Ok(0) => panic!("stream ended cleanly where an error was expected"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// Accepts the next stream on `conn`, answers 200 and reads it until it fails (the task's output).
fn answer_and_read_until_error(rt: Rt, conn: &Connection) -> JoinHandle<Error> {
    let conn = conn.clone();
    spawn(rt, async move {
        let (_, s) = conn.accept_stream().await.expect("a stream");
        s.respond(status(200), false).expect("respond");
        read_until_error(&s).await
    })
}

/// Opens `path`, sends `body` (without finishing) and waits for the 200.
async fn open_answered(conn: &Connection, path: &str, body: &[u8]) -> Stream {
    let s = conn.open(head(path), false).expect("open");
    write_all(&s, body).await.expect("write");
    assert_eq!(s.response().await.expect("response").status, 200);
    // A copy each time, until the head is handed over; then no more.
    assert_eq!(s.take_response().await.expect("response").status, 200);
    let again = s.response().await.expect_err("the head was taken");
    assert!(again.is_misuse(), "{again}");
    s
}

/// The standard handler: `/echo` echoes, `/sink` reads everything and answers with a trailer holding
/// the count, anything else is a 404.
async fn handle(head: RequestHead, s: Arc<Stream>) -> Result<(), Error> {
    match head.path.as_str() {
        "/echo" => {
            s.respond(status(200), false)?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = read(&s, &mut buf).await?;
                if n == 0 {
                    break;
                }
                write_all(&s, &buf[..n]).await?;
            }
            shutdown(&s).await
        }
        "/sink" => {
            s.respond(status(200), false)?;
            let n = read_to_end(&s).await?.len();
            s.send_trailer(Trailer {
                code: 0,
                message: n.to_string(),
                headers: vec![],
            })
        }
        _ => s.respond(status(404), true),
    }
}

/// Serves every stream the peer opens on `conn` with [`handle`].
fn serve(rt: Rt, conn: Connection) {
    spawn(rt, async move {
        while let Some((head, s)) = conn.accept_stream().await {
            spawn(rt, async move {
                let _ = handle(head, Arc::new(s)).await;
            });
        }
    });
}

/// Opens `/echo`, sends `data` from a second task while reading the echo, returns what came back.
async fn echo(rt: Rt, conn: &Connection, data: Arc<Vec<u8>>) -> Result<Vec<u8>, Error> {
    let s = Arc::new(conn.open(head("/echo"), false)?);
    echo_on(rt, s, data).await
}

async fn echo_on(rt: Rt, s: Arc<Stream>, data: Arc<Vec<u8>>) -> Result<Vec<u8>, Error> {
    let writer = {
        let s = s.clone();
        spawn(rt, async move {
            write_all(&s, &data).await?;
            shutdown(&s).await
        })
    };
    let resp = s.response().await?;
    assert_eq!(resp.status, 200);
    let got = read_to_end(&s).await?;
    writer.await?;
    Ok(got)
}

/// Waits (bounded) until `cond` holds.
async fn wait_until(rt: Rt, what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..(STEP.as_millis() / 5) {
        if cond() {
            return;
        }
        sleep(rt, Duration::from_millis(5)).await;
    }
    panic!("{what}: condition not reached within {STEP:?}");
}

async fn step<T>(rt: Rt, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match timeout(rt, STEP, f).await {
        Some(v) => v,
        None => panic!("{what}: did not complete within {STEP:?}"),
    }
}

fn short_keepalive(keepalive: Duration, idle: Duration) -> Config {
    let mut c = Config::default();
    c.settings.keepalive_interval = keepalive;
    c.settings.idle_timeout = idle;
    c
}

// ---------------------------------------------------------------------------------------- echo

/// One stream each way (agent → server and server → agent), 1 MiB echoed; an unknown path is a 404.
pub async fn echo_one_stream_each_direction(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    serve(rt, p.server.clone());
    serve(rt, p.agent.clone());
    let data = Arc::new(pattern(1, 1 << 20));
    let got = echo(rt, &p.agent, data.clone())
        .await
        .expect("agent-opened echo");
    assert!(got == *data, "agent-opened echo returned other octets");
    let got = echo(rt, &p.server, data.clone())
        .await
        .expect("server-opened echo");
    assert!(got == *data, "server-opened echo returned other octets");

    let s = p.agent.open(head("/nope"), true).expect("open");
    assert_eq!(s.response().await.expect("response").status, 404);
    assert!(read_to_end(&s).await.expect("read").is_empty());
    assert_eq!(s.trailer().await.expect("trailer"), None);
}

/// 1,000 streams opened at once (all in flight together), each echoing its own body.
pub async fn echo_1000_concurrent_streams(rt: Rt) {
    const N: usize = 1000;
    let p = pair(rt, Setup::default()).await;
    serve(rt, p.server.clone());
    let streams: Vec<_> = (0..N)
        .map(|_| Arc::new(p.agent.open(head("/echo"), false).expect("open")))
        .collect();
    assert_eq!(p.agent.open_streams().0, N as u32);
    let tasks: Vec<JoinHandle<(usize, bool)>> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            spawn(rt, async move {
                let data = Arc::new(pattern(i as u64, 1000 + (i * 37) % 9000));
                let got = echo_on(rt, s, data.clone()).await;
                match got {
                    Ok(g) => (i, g == *data),
                    Err(e) => panic!("stream {i}: {e}"),
                }
            })
        })
        .collect();
    for t in tasks {
        let (i, same) = t.await;
        assert!(same, "stream {i} echoed other octets");
    }
}

// ------------------------------------------------------------------------ large body, slow reader

/// 64 MiB on one stream whose reader stalls, then reads slowly; 16 other streams complete while it
/// is still incomplete (an ordering assertion), then the large body arrives whole.
pub async fn large_body_slow_reader_does_not_block_others(rt: Rt) {
    const BIG: u64 = 64 << 20;
    const BEFORE_GATE: u64 = 2 << 20;
    const SEED: u64 = 77;
    let p = pair(rt, Setup::default()).await;
    let progress = Arc::new(AtomicU64::new(0));
    let gate = Gate::new();
    {
        let (server, progress, gate) = (p.server.clone(), progress.clone(), gate.clone());
        spawn(rt, async move {
            while let Some((h, s)) = server.accept_stream().await {
                let s = Arc::new(s);
                if h.path != "/slow" {
                    spawn(rt, async move {
                        let _ = handle(h, s).await;
                    });
                    continue;
                }
                let (progress, gate) = (progress.clone(), gate.clone());
                spawn(rt, async move {
                    s.respond(status(200), false).expect("respond");
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut expect = vec![0u8; 16 * 1024];
                    let mut total = 0u64;
                    let mut intact = true;
                    loop {
                        if total >= BEFORE_GATE && !gate.is_open() {
                            gate.wait().await;
                        }
                        // Small reads, and a pause every MiB: a deliberately slow reader.
                        let n = read(&s, &mut buf).await.expect("slow read");
                        if n == 0 {
                            break;
                        }
                        fill_pattern(SEED, total, &mut expect[..n]);
                        intact &= buf[..n] == expect[..n];
                        if (total >> 20) != ((total + n as u64) >> 20) {
                            sleep(rt, Duration::from_millis(1)).await;
                        }
                        total += n as u64;
                        progress.store(total, Ordering::SeqCst);
                    }
                    s.send_trailer(Trailer {
                        code: u32::from(!intact),
                        message: total.to_string(),
                        headers: vec![],
                    })
                    .expect("trailer");
                });
            }
        });
    }
    let slow = Arc::new(p.agent.open(head("/slow"), false).expect("open slow"));
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (slow, writer_done) = (slow.clone(), writer_done.clone());
        spawn(rt, async move {
            let mut chunk = vec![0u8; 256 * 1024];
            let mut off = 0u64;
            while off < BIG {
                fill_pattern(SEED, off, &mut chunk);
                write_all(&slow, &chunk).await.expect("write big body");
                off += chunk.len() as u64;
            }
            shutdown(&slow).await.expect("finish big body");
            writer_done.store(true, Ordering::SeqCst);
        })
    };
    assert_eq!(slow.response().await.expect("slow response").status, 200);
    wait_until(rt, "slow reader reaches its gate", || {
        progress.load(Ordering::SeqCst) >= BEFORE_GATE
    })
    .await;

    let others: Vec<_> = (0..16u64)
        .map(|i| {
            let agent = p.agent.clone();
            spawn(rt, async move {
                let data = Arc::new(pattern(i, 1 << 20));
                let got = echo(rt, &agent, data.clone()).await.expect("other echo");
                assert!(got == *data, "other stream {i} echoed other octets");
            })
        })
        .collect();
    for o in others {
        step(rt, "other streams complete", o).await;
    }
    // The ordering assertion: all the others are done, the large body is not.
    assert!(progress.load(Ordering::SeqCst) < BIG);
    assert!(!writer_done.load(Ordering::SeqCst));

    gate.open();
    writer.await;
    let trailer = slow.trailer().await.expect("trailer").expect("a trailer");
    assert_eq!(trailer.message, BIG.to_string(), "octets received");
    assert_eq!(trailer.code, 0, "the large body arrived altered");
}

// ------------------------------------------------------------------------------------ half-close

/// The opener sends its whole request and finishes; the acceptor reads to EOF, only then answers with
/// a body and a trailer, which the opener reads to EOF.
pub async fn half_close_opener_finishes_first(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let server = p.server.clone();
    let acceptor = spawn(rt, async move {
        let (h, s) = server.accept_stream().await.expect("a stream");
        assert_eq!(h.path, "/half");
        let request = read_to_end(&s).await.expect("request body");
        s.respond(status(200), false).expect("respond");
        let reply: Vec<u8> = request.iter().rev().copied().collect();
        write_all(&s, &reply).await.expect("reply body");
        s.send_trailer(Trailer {
            code: 0,
            message: "done".into(),
            headers: vec![],
        })
        .expect("trailer");
        request.len()
    });
    let s = p.agent.open(head("/half"), false).expect("open");
    let request = pattern(5, 300 * 1024);
    write_all(&s, &request).await.expect("request");
    shutdown(&s).await.expect("finish");
    match write_all(&s, b"late").await {
        Err(Error::Stream(StreamError::Misuse(ApiMisuse::SendAfterFinish(_)))) => {}
        other => panic!("write after finish: {other:?}"),
    }
    assert_eq!(s.response().await.expect("response").status, 200);
    let reply = read_to_end(&s).await.expect("reply");
    assert!(
        reply.iter().rev().eq(request.iter()),
        "reply is not the reversed request"
    );
    let t = s.trailer().await.expect("trailer").expect("some trailer");
    assert_eq!((t.code, t.message.as_str()), (0, "done"));
    assert_eq!(acceptor.await, request.len());
}

/// Server-opened stream (kas → agent): the acceptor (agent) answers and finishes its direction
/// before reading anything; the opener reads that to EOF, then sends its own body and finishes.
pub async fn half_close_acceptor_finishes_first(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let agent = p.agent.clone();
    let reply = Arc::new(pattern(9, 200 * 1024));
    let acceptor = {
        let reply = reply.clone();
        spawn(rt, async move {
            let (_, s) = agent.accept_stream().await.expect("a stream");
            s.respond(status(200), false).expect("respond");
            write_all(&s, &reply).await.expect("reply");
            shutdown(&s).await.expect("finish");
            read_to_end(&s).await.expect("request after finishing")
        })
    };
    let s = p.server.open(head("/half"), false).expect("open");
    assert_eq!(s.response().await.expect("response").status, 200);
    let got = read_to_end(&s).await.expect("reply");
    assert!(got == *reply);
    assert_eq!(s.trailer().await.expect("trailer"), None);
    // Our direction is still open.
    let request = pattern(10, 100 * 1024);
    write_all(&s, &request)
        .await
        .expect("request after the peer finished");
    shutdown(&s).await.expect("finish");
    assert!(acceptor.await == request);
}

// ---------------------------------------------------------------------------------------- resets

/// The opener resets mid-body: the acceptor's read fails with the remote reset and its code.
pub async fn reset_by_opener(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let acceptor = answer_and_read_until_error(rt, &p.server);
    let s = open_answered(&p.agent, "/reset", &pattern(1, 64 * 1024)).await;
    s.reset(ErrorCode::Cancel);
    match read(&s, &mut [0u8; 16]).await {
        Err(Error::StreamReset {
            code: ErrorCode::Cancel,
            remote: false,
            ..
        }) => {}
        other => panic!("read after own reset: {other:?}"),
    }
    assert!(write_all(&s, b"x").await.is_err());
    match acceptor.await {
        Error::StreamReset {
            code: ErrorCode::Cancel,
            remote: true,
            ..
        } => {}
        other => panic!("acceptor saw {other:?}"),
    }
}

/// The acceptor resets without answering: the opener's `response()` and writes fail with the remote
/// reset and its code.
pub async fn reset_by_acceptor(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let server = p.server.clone();
    spawn(rt, async move {
        if let Some((_, s)) = server.accept_stream().await {
            s.reset(ErrorCode::Internal);
        }
    });
    let s = p.agent.open(head("/reset"), false).expect("open");
    match s.response().await {
        Err(Error::StreamReset {
            code: ErrorCode::Internal,
            remote: true,
            ..
        }) => {}
        other => panic!("response after peer reset: {other:?}"),
    }
    match write_all(&s, b"x").await {
        Err(Error::StreamReset { remote: true, .. }) => {}
        other => panic!("write after peer reset: {other:?}"),
    }
    match read(&s, &mut [0u8; 4]).await {
        Err(Error::StreamReset { remote: true, .. }) => {}
        other => panic!("read after peer reset: {other:?}"),
    }
}

/// Streams dropped with unread body give their connection credit back: with a 256 KiB connection
/// window, eight 128 KiB bodies dropped unread, then a 1 MiB echo, all complete.
pub async fn dropped_streams_return_connection_window(rt: Rt) {
    let mut setup = Setup::default();
    setup.server.settings.initial_connection_window = 256 * 1024;
    setup.server.settings.initial_stream_window = 128 * 1024;
    let p = pair(rt, setup).await;
    let server = p.server.clone();
    spawn(rt, async move {
        while let Some((h, s)) = server.accept_stream().await {
            spawn(rt, async move {
                if h.path == "/drop" {
                    // The whole body is buffered once the end arrived; drop it unread.
                    let _ = s.trailer().await;
                    let _ = s.respond(status(200), true);
                    drop(s);
                } else {
                    let _ = handle(h, Arc::new(s)).await;
                }
            });
        }
    });
    for i in 0..8 {
        let s = p.agent.open(head("/drop"), false).expect("open");
        step(rt, "body into a dropped stream", async {
            write_all(&s, &pattern(i, 128 * 1024)).await.expect("write");
            shutdown(&s).await.expect("finish");
            assert_eq!(s.response().await.expect("response").status, 200);
            assert!(read_to_end(&s).await.expect("read").is_empty());
        })
        .await;
    }
    let data = Arc::new(pattern(3, 1 << 20));
    let got = step(
        rt,
        "echo after dropped streams",
        echo(rt, &p.agent, data.clone()),
    )
    .await
    .expect("echo");
    assert!(got == *data);
}

// ------------------------------------------------------------------------------------ peer death

/// The server's transport dies with eight streams open: every stream on both sides fails with the
/// typed `TransportClosed`, both connections report it, and opening fails the same way.
pub async fn peer_killed_mid_stream(rt: Rt) {
    const N: usize = 8;
    let setup = Setup::default();
    let kill = setup.server_switch.clone();
    let p = pair(rt, setup).await;
    let server = p.server.clone();
    let acceptor = spawn(rt, async move {
        let mut readers = Vec::new();
        for _ in 0..N {
            let (_, s) = server.accept_stream().await.expect("a stream");
            s.respond(status(200), false).expect("respond");
            readers.push(spawn(rt, async move { read_until_error(&s).await }));
        }
        readers
    });
    let streams: Vec<_> = (0..N)
        .map(|_| p.agent.open(head("/doomed"), false).expect("open"))
        .collect();
    for (i, s) in streams.iter().enumerate() {
        write_all(s, &pattern(i as u64, 10_000))
            .await
            .expect("write");
        assert_eq!(s.response().await.expect("response").status, 200);
    }
    let readers = acceptor.await;
    kill.kill();
    for s in &streams {
        match step(rt, "agent stream fails", read_until_error(s)).await {
            Error::TransportClosed => {}
            other => panic!("agent stream saw {other:?}"),
        }
        assert!(write_all(s, b"x").await.is_err());
    }
    for r in readers {
        match step(rt, "server stream fails", r).await {
            Error::TransportClosed => {}
            other => panic!("server stream saw {other:?}"),
        }
    }
    assert_eq!(p.agent.closed().await, CloseReason::TransportClosed);
    assert_eq!(p.server.closed().await, CloseReason::TransportClosed);
    match p.agent.open(head("/late"), false) {
        Err(Error::TransportClosed) => {}
        other => panic!("open after death: {:?}", other.map(|_| ())),
    }
}

/// The authenticator refuses: the agent gets the typed refusal with code, message and back-off.
pub async fn handshake_refused(rt: Rt) {
    let setup = Setup {
        reject: Some(Reject {
            code: RejectCode::Unauthenticated as i32,
            message: "unknown token".into(),
            retry_after_ms: 1500,
            ..Reject::default()
        }),
        ..Setup::default()
    };
    match super::pair(rt, setup).await {
        Err(Error::Refused {
            code,
            message,
            retry_after,
        }) => {
            assert_eq!(code, protocol::RejectCode::Unauthenticated);
            assert_eq!(message, "unknown token");
            assert_eq!(retry_after, Some(Duration::from_millis(1500)));
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

// ------------------------------------------------------------------------------------- keepalive

/// With keepalive 200 ms / idle 600 ms, the server's transport goes silent (it neither reads nor
/// writes): both ends close with the typed idle timeout, and the in-flight stream fails with it.
pub async fn keepalive_timeout_on_silent_peer(rt: Rt) {
    let cfg = short_keepalive(Duration::from_millis(200), Duration::from_millis(600));
    let setup = Setup {
        agent: cfg.clone(),
        server: cfg,
        ..Setup::default()
    };
    let freeze = setup.server_switch.clone();
    let p = pair(rt, setup).await;
    serve(rt, p.server.clone());
    let s = p.agent.open(head("/echo"), false).expect("open");
    write_all(&s, b"hello").await.expect("write");
    assert_eq!(s.response().await.expect("response").status, 200);
    let mut buf = [0u8; 5];
    assert_eq!(read(&s, &mut buf).await.expect("echo"), 5);
    freeze.freeze();
    let idle = CloseReason::Local(ConnectionError::IdleTimeout);
    assert_eq!(step(rt, "agent closes", p.agent.closed()).await, idle);
    let e = read_until_error(&s).await;
    assert!(e.is_idle_timeout(), "stream saw {e:?}");
    assert_eq!(step(rt, "server closes", p.server.closed()).await, idle);
}

/// With keepalive 100 ms / idle 3 s, a connection with no application traffic for 7 s stays open
/// (the pings keep it alive) and still works.
pub async fn keepalive_keeps_idle_connection_open(rt: Rt) {
    // PINGs every 100 ms against a 3 s idle timeout: a busy machine may delay a PING or its ACK by
    // almost 3 s before the connection would wrongly close. Idle for 7 s, more than twice the idle
    // timeout, so a connection whose keepalive did not work would have closed.
    let cfg = short_keepalive(Duration::from_millis(100), Duration::from_secs(3));
    let p = pair(
        rt,
        Setup {
            agent: cfg.clone(),
            server: cfg,
            ..Setup::default()
        },
    )
    .await;
    serve(rt, p.server.clone());
    let closed = timeout(rt, Duration::from_secs(7), p.agent.closed()).await;
    assert_eq!(closed, None, "an idle but healthy connection closed");
    let data = Arc::new(pattern(4, 10_000));
    assert!(echo(rt, &p.agent, data.clone()).await.expect("echo") == *data);
}

// ----------------------------------------------------------------------------------------- goaway

/// The server closes gracefully while a stream is in flight: both sides refuse new streams with
/// `GoingAway`, the in-flight stream completes, and both ends close `Graceful`.
pub async fn goaway_drains_in_flight_streams(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let gate = Gate::new();
    {
        let (server, gate) = (p.server.clone(), gate.clone());
        spawn(rt, async move {
            while let Some((h, s)) = server.accept_stream().await {
                let gate = gate.clone();
                spawn(rt, async move {
                    gate.wait().await;
                    let _ = handle(h, Arc::new(s)).await;
                });
            }
        });
    }
    let data = Arc::new(pattern(8, 1 << 20));
    let s = Arc::new(p.agent.open(head("/echo"), false).expect("open"));
    let echoed = spawn(rt, echo_on(rt, s, data.clone()));
    wait_until(rt, "server sees the stream", || {
        p.server.open_streams().1 == 1
    })
    .await;
    let closing = {
        let server = p.server.clone();
        spawn(
            rt,
            async move { server.close(Duration::from_secs(60)).await },
        )
    };
    wait_until(rt, "agent sees GOAWAY", || p.agent.is_draining()).await;
    match p.agent.open(head("/echo"), false) {
        Err(e) if e.is_going_away() => {}
        other => panic!("agent open while draining: {:?}", other.map(|_| ())),
    }
    match p.server.open(head("/echo"), false) {
        Err(e) if e.is_going_away() => {}
        other => panic!("server open while draining: {:?}", other.map(|_| ())),
    }
    gate.open();
    let got = echoed.await.expect("in-flight echo");
    assert!(got == *data, "in-flight stream altered");
    assert_eq!(closing.await, CloseReason::Graceful);
    assert_eq!(p.agent.closed().await, CloseReason::Graceful);
}

/// A stream that never finishes is cut when the graceful close's deadline passes: the closer reports
/// `Aborted`, the peer `Remote { CANCEL }`, and the stream fails on both sides.
pub async fn goaway_deadline_aborts_stuck_streams(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    let stuck = answer_and_read_until_error(rt, &p.server);
    let s = open_answered(&p.agent, "/stuck", b"never finished").await;
    let reason = p.server.close(Duration::from_millis(300)).await;
    assert!(
        matches!(
            reason,
            CloseReason::Aborted {
                code: ErrorCode::Cancel,
                ..
            }
        ),
        "closer: {reason:?}"
    );
    let peer = p.agent.closed().await;
    assert!(
        matches!(
            peer,
            CloseReason::Remote {
                code: ErrorCode::Cancel,
                ..
            }
        ),
        "peer: {peer:?}"
    );
    match read_until_error(&s).await {
        Error::Closed(CloseReason::Remote { .. }) => {}
        other => panic!("agent stream saw {other:?}"),
    }
    match stuck.await {
        Error::Closed(CloseReason::Aborted { .. }) => {}
        other => panic!("server stream saw {other:?}"),
    }
}

/// Past the peer's concurrency limit, `open` fails with the typed `LimitReached`; once a stream is
/// done, opening works again.
pub async fn stream_limit_is_a_typed_error(rt: Rt) {
    let mut setup = Setup::default();
    setup.server.settings.max_concurrent_streams = 4;
    let p = pair(rt, setup).await;
    serve(rt, p.server.clone());
    let streams: Vec<_> = (0..4)
        .map(|_| p.agent.open(head("/echo"), false).expect("open"))
        .collect();
    match p.agent.open(head("/echo"), false) {
        Err(Error::Open(OpenError::LimitReached { limit: 4 })) => {}
        other => panic!("fifth open: {:?}", other.map(|_| ())),
    }
    let first = &streams[0];
    write_all(first, b"ping").await.expect("write");
    shutdown(first).await.expect("finish");
    assert_eq!(read_to_end(first).await.expect("echo"), b"ping");
    let late = p
        .agent
        .open(head("/echo"), true)
        .expect("open after one finished");
    assert_eq!(late.response().await.expect("response").status, 200);
}

// ------------------------------------------------------------------------------------- draining

/// The server starts a graceful close with a stream in flight: `draining()` resolves on both sides,
/// woken by the GOAWAY itself (each await is under the step guard; nothing polls `is_draining`),
/// opens then fail with `GoingAway`, and the in-flight stream still completes. Before the close,
/// `draining()` does not resolve.
pub async fn draining_is_reported_without_polling(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    serve(rt, p.server.clone());
    let in_flight = p.agent.open(head("/echo"), false).expect("open");
    write_all(&in_flight, b"before").await.expect("write");
    assert_eq!(in_flight.response().await.expect("response").status, 200);
    let early = timeout(rt, Duration::from_millis(50), p.agent.draining()).await;
    assert!(early.is_none(), "draining() resolved before any GOAWAY");
    let waiter = {
        let agent = p.agent.clone();
        spawn(rt, async move { agent.draining().await })
    };
    p.server.start_close(Duration::from_secs(60));
    step(rt, "server reports draining", p.server.draining()).await;
    step(rt, "agent is woken by the GOAWAY", waiter).await;
    assert!(p.agent.is_draining());
    match p.agent.open(head("/echo"), false) {
        Err(e) if e.is_going_away() => {}
        other => panic!("agent open after draining(): {:?}", other.map(|_| ())),
    }
    shutdown(&in_flight).await.expect("finish");
    assert_eq!(read_to_end(&in_flight).await.expect("echo"), b"before");
    drop(in_flight);
    assert_eq!(
        step(rt, "graceful end", p.agent.closed()).await,
        CloseReason::Graceful
    );
}

// ------------------------------------------------------------------------------------- I/O traits

/// The one stream type through the futures-io traits (the whole stream, and its split halves) and,
/// with the `tokio` feature, through `tokio::io`'s: each echoes a body intact.
pub async fn io_traits_roundtrip(rt: Rt) {
    let p = pair(rt, Setup::default()).await;
    serve(rt, p.server.clone());
    let data = pattern(21, 300 * 1024);

    // futures-io on the owned stream: write, close (finish), read to end.
    let mut s = p.agent.open(head("/echo"), false).expect("open");
    let writer_data = data.clone();
    let (mut recv, mut send) = {
        s.write_all(&writer_data[..1000]).await.expect("write");
        assert_eq!(s.response().await.expect("response").status, 200);
        let mut first = vec![0u8; 1000];
        s.read_exact(&mut first).await.expect("read first echo");
        assert_eq!(first, writer_data[..1000]);
        s.split()
    };
    // The halves from two tasks: the sender writes the rest and closes, the receiver reads to EOF.
    let sender = spawn(rt, async move {
        send.write_all(&writer_data[1000..])
            .await
            .expect("half write");
        send.close().await.expect("half close");
    });
    let mut rest = Vec::new();
    recv.read_to_end(&mut rest).await.expect("half read");
    sender.await;
    assert!(rest == data[1000..], "futures-io echo altered");

    #[cfg(feature = "tokio")]
    tokio_io::roundtrip(&p.agent, &data).await;
}

/// The tokio half of [`io_traits_roundtrip`], in a module of its own: with both extension traits in
/// scope, method calls would be ambiguous.
#[cfg(feature = "tokio")]
mod tokio_io {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{Connection, head};

    pub(super) async fn roundtrip(conn: &Connection, data: &[u8]) {
        let mut s = conn.open(head("/echo"), false).expect("open");
        s.write_all(data).await.expect("tokio write");
        s.shutdown().await.expect("tokio shutdown");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("tokio read");
        assert!(got == data, "tokio::io echo altered");
        // Through a shared reference, as with `&TcpStream`.
        let s = conn.open(head("/echo"), false).expect("open");
        (&s).write_all(b"shared").await.expect("write via &Stream");
        (&s).shutdown().await.expect("shutdown via &Stream");
        let mut got = Vec::new();
        (&s).read_to_end(&mut got).await.expect("read via &Stream");
        assert_eq!(got, b"shared");
    }
}
