//! The shared behaviour suite (`runtime_core::suite`) on tokio, over TCP + TLS on 127.0.0.1.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use protocol::proto::{RequestHead, ResponseHead, Trailer};
use protocol::{CloseReason, ErrorCode, HelloInfo};
use runtime_core::suite::{Pair, Setup, SuiteConn, SuiteRuntime, SuiteStream, Switch, SwitchState};
use runtime_tokio::{Accepted, AgentOptions, Connection, Error, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tunnel_tls::ThrowawayPki;

struct Tokio;

#[derive(Clone)]
struct Conn(Connection);

struct S(Stream);

impl SuiteStream for S {
    async fn read(&self, buf: &mut [u8]) -> Result<usize, Error> {
        (&self.0).read(buf).await.map_err(Error::from)
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), Error> {
        (&self.0).write_all(buf).await.map_err(Error::from)
    }

    async fn shutdown(&self) -> Result<(), Error> {
        (&self.0).shutdown().await.map_err(Error::from)
    }

    fn response(&self) -> impl Future<Output = Result<ResponseHead, Error>> + Send + '_ {
        self.0.response()
    }

    fn respond(&self, head: ResponseHead, end_stream: bool) -> Result<(), Error> {
        self.0.respond(head, end_stream)
    }

    fn trailer(&self) -> impl Future<Output = Result<Option<Trailer>, Error>> + Send + '_ {
        self.0.trailer()
    }

    fn send_trailer(&self, trailer: Trailer) -> Result<(), Error> {
        self.0.send_trailer(trailer)
    }

    fn reset(&self, code: ErrorCode) {
        self.0.reset(code)
    }
}

impl SuiteConn for Conn {
    type Stream = S;

    fn open(&self, head: RequestHead, end_stream: bool) -> Result<S, Error> {
        self.0.open(head, end_stream).map(S)
    }

    async fn accept_stream(&self) -> Option<(RequestHead, S)> {
        self.0.accept_stream().await.map(|(h, s)| (h, S(s)))
    }

    fn close(&self, grace: Duration) -> impl Future<Output = CloseReason> + Send + '_ {
        self.0.close(grace)
    }

    fn closed(&self) -> impl Future<Output = CloseReason> + Send + '_ {
        self.0.closed()
    }

    fn is_draining(&self) -> bool {
        self.0.is_draining()
    }

    fn open_streams(&self) -> (u32, u32) {
        self.0.open_streams()
    }
}

/// A TCP stream the scenario can freeze or kill.
struct Switched {
    inner: TcpStream,
    switch: Switch,
}

fn killed() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "killed by the test")
}

impl AsyncRead for Switched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.switch.check(cx) {
            SwitchState::Normal => Pin::new(&mut self.inner).poll_read(cx, buf),
            SwitchState::Frozen => Poll::Pending,
            SwitchState::Killed => Poll::Ready(Err(killed())),
        }
    }
}

impl AsyncWrite for Switched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.switch.check(cx) {
            SwitchState::Normal => Pin::new(&mut self.inner).poll_write(cx, buf),
            SwitchState::Frozen => Poll::Pending,
            SwitchState::Killed => Poll::Ready(Err(killed())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.switch.check(cx) {
            SwitchState::Normal => Pin::new(&mut self.inner).poll_flush(cx),
            SwitchState::Frozen => Poll::Pending,
            SwitchState::Killed => Poll::Ready(Err(killed())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.switch.check(cx) {
            SwitchState::Normal => Pin::new(&mut self.inner).poll_shutdown(cx),
            SwitchState::Frozen => Poll::Pending,
            SwitchState::Killed => Poll::Ready(Ok(())),
        }
    }
}

async fn make_pair(setup: Setup) -> Result<Pair<Conn>, Error> {
    let pki = ThrowawayPki::generate().expect("pki");
    let server_tls = tunnel_tls::server_config_with(pki.server.identity().expect("identity"), None)
        .expect("server tls");
    let client_tls = tunnel_tls::client_config(&pki.roots(), None).expect("client tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(Error::Io)?;
    let addr = listener.local_addr().map_err(Error::Io)?;
    let Setup {
        agent,
        server,
        reject,
        agent_switch,
        server_switch,
    } = setup;
    let server_side = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.map_err(Error::Io)?;
        tcp.set_nodelay(true).map_err(Error::Io)?;
        let tls = TlsAcceptor::from(server_tls)
            .accept(Switched {
                inner: tcp,
                switch: server_switch,
            })
            .await
            .map_err(Error::Tls)?;
        let auth = move |_hello: HelloInfo, _peer: SocketAddr| {
            let reject = reject.clone();
            async move {
                match reject {
                    Some(r) => Err(r),
                    None => Ok(Accepted {
                        agent_id: 42,
                        connection_id: "suite".into(),
                    }),
                }
            }
        };
        runtime_tokio::accept_over(tls, server, &auth, peer).await
    });
    let tcp = TcpStream::connect(addr).await.map_err(Error::Io)?;
    tcp.set_nodelay(true).map_err(Error::Io)?;
    let tls = TlsConnector::from(client_tls)
        .connect(
            tunnel_tls::server_name("localhost").expect("name"),
            Switched {
                inner: tcp,
                switch: agent_switch,
            },
        )
        .await
        .map_err(Error::Tls)?;
    let opts = AgentOptions {
        token: "suite-token".into(),
        meta: Default::default(),
        config: agent,
    };
    let agent = runtime_tokio::connect_agent_over(tls, opts).await;
    let server = server_side.await.expect("server side task");
    let (agent, established) = agent?;
    let server = server?;
    assert_eq!(established.agent_id, 42);
    assert_eq!(server.agent_id, 42);
    Ok(Pair {
        agent: Conn(agent),
        server: Conn(server.connection),
    })
}

impl SuiteRuntime for Tokio {
    type Conn = Conn;

    fn block_on<F: Future>(f: F) -> F::Output {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f)
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(f: F) {
        tokio::spawn(f);
    }

    fn sleep(d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }

    fn pair(setup: Setup) -> impl Future<Output = Result<Pair<Conn>, Error>> + Send {
        make_pair(setup)
    }
}

runtime_core::behaviour_suite!(Tokio);
