//! TCP listeners with a chosen `listen(2)` backlog.
//!
//! `std::net::TcpListener::bind` always asks the kernel for a backlog of 128: after a kas restart a
//! fleet of agents reconnecting at once (and the clients retrying meanwhile) overflows it, and the
//! kernel then drops SYNs, which costs each of them a retransmission timeout. kas binds its listeners
//! with the configured backlog instead (`agent_listener.backlog`, `api_listener.backlog`; the kernel
//! caps it at `net.core.somaxconn`), with `SO_REUSEADDR` as std sets it, so a restarted kas binds the
//! same port at once.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// A listening TCP socket on `addr` with `backlog`.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_accepts() {
        let l = bind("127.0.0.1:0".parse().unwrap(), 17).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l.set_nonblocking(false).unwrap();
        assert!(l.accept().is_ok());
    }
}
