//! Back-pressure in the driver against a rogue peer over real TCP on 127.0.0.1: the peer sends PINGs
//! (each needs an acknowledgement) and never reads. The server must stop reading once the
//! acknowledgements pile up (the peer's writes then block in TCP) instead of buffering them without
//! bound, keep the connection, and resume when the peer reads again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use protocol::tunnel::frame::{Decoder, Frame, PREFACE};
use protocol::{Config, proto};
use runtime_smol::{Accepted, Server};

const GUARD: Duration = Duration::from_secs(60);

fn ping(n: u64) -> Vec<u8> {
    Frame::Ping {
        ack: false,
        payload: n.to_be_bytes(),
    }
    .to_bytes()
    .to_vec()
}

/// Reads frames until `pick` returns something (hang guard [`GUARD`]).
fn read_until<T>(
    tcp: &mut TcpStream,
    d: &mut Decoder,
    mut pick: impl FnMut(Frame) -> Option<T>,
) -> T {
    let deadline = Instant::now() + GUARD;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = d.decode().expect("valid frames") {
            if let Some(t) = pick(f) {
                return t;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing suitable arrived (hang guard)"
        );
        tcp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match tcp.read(&mut buf) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => d.feed(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

#[test]
fn a_peer_that_does_not_read_is_paused_not_buffered() {
    let mut config = Config::default();
    // Only back-pressure is under test: no flood limit on PINGs.
    config.flood.pings = 0;
    smol::block_on(async {
        let auth = |_: protocol::HelloInfo, _| async {
            Ok(Accepted {
                agent_id: 1,
                connection_id: "c1".into(),
            })
        };
        let server = Server::bind("127.0.0.1:0", None, config, auth)
            .await
            .unwrap();
        let addr = server.local_addr();
        let client = std::thread::spawn(move || {
            let mut tcp = TcpStream::connect(addr).unwrap();
            let mut hello = PREFACE.to_vec();
            hello.extend_from_slice(
                &Frame::Hello(proto::Hello {
                    min_version: 1,
                    max_version: 1,
                    token: "t".into(),
                    meta: None,
                    settings: None,
                })
                .to_bytes(),
            );
            tcp.write_all(&hello).unwrap();
            let mut d = Decoder::new(1 << 24, 1 << 24);
            read_until(&mut tcp, &mut d, |f| {
                matches!(f, Frame::Accept(_)).then_some(())
            });
            // PINGs in 64 KiB batches, never reading, until a write blocks for 2 s (the server
            // stopped reading) or 256 MiB went out (it did not).
            tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut batch = Vec::new();
            let mut n = 0u64;
            while batch.len() < 64 * 1024 {
                batch.extend_from_slice(&ping(n));
                n += 1;
            }
            let mut written = 0usize;
            let mut pos = 0usize;
            let blocked = loop {
                if written >= 256 << 20 {
                    break false;
                }
                match tcp.write(&batch[pos..]) {
                    Ok(k) => {
                        written += k;
                        pos = (pos + k) % batch.len();
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break true;
                    }
                    Err(e) => panic!("write failed after {written} octets: {e}"),
                }
            };
            // The rest of the batch that blocked, so that only whole frames were sent.
            let rest = batch[pos..].to_vec();
            (tcp, d, written, blocked, rest)
        });
        let accepted = server.accept().await.unwrap();
        let (mut tcp, mut d, written, blocked, rest) = client.join().unwrap();
        assert!(
            blocked,
            "the server read {written} octets of PINGs without its answers being read"
        );
        assert!(
            written < 128 << 20,
            "the server took {written} octets before pausing"
        );
        assert!(
            !accepted.connection.is_closed(),
            "the server closed instead of pausing: {:?}",
            accepted.connection.close_reason()
        );
        // The peer reads again: every acknowledgement arrives, then the one for a last PING.
        let marker = u64::MAX;
        let mut writer = tcp.try_clone().unwrap();
        writer.set_write_timeout(Some(GUARD)).unwrap();
        let reader = std::thread::spawn(move || {
            read_until(&mut tcp, &mut d, |f| match f {
                Frame::Ping { ack: true, payload } if payload == marker.to_be_bytes() => Some(()),
                _ => None,
            });
        });
        writer.write_all(&rest).unwrap();
        writer.write_all(&ping(marker)).unwrap();
        reader
            .join()
            .unwrap_or_else(|_| panic!("no acknowledgement after reading resumed"));
        assert!(!accepted.connection.is_closed());
    });
}
