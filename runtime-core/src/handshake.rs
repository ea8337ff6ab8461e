//! The tunnel handshake as the runtimes run it, after TLS: the agent waits for ACCEPT or REJECT; the
//! server waits for HELLO, asks the application's (asynchronous) authenticator, and answers.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;

use protocol::proto::{AgentMeta, Reject};
use protocol::{AgentHello, Config, Established, HelloInfo};

use crate::error::Error;
use crate::handle::ConnectionHandle;
use crate::session::Session;

/// What an agent presents when it connects.
#[derive(Clone, Default)]
pub struct AgentOptions {
    /// The agent's secret token (never logged).
    pub token: String,
    pub meta: AgentMeta,
    pub config: Config,
}

impl std::fmt::Debug for AgentOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOptions")
            .field("token", &"<redacted>")
            .field("meta", &self.meta)
            .field("config", &self.config)
            .finish()
    }
}

impl AgentOptions {
    /// The session an agent connection starts with.
    pub fn session(&self) -> Session {
        Session::agent(
            self.config.clone(),
            AgentHello {
                token: self.token.clone(),
                meta: self.meta.clone(),
            },
        )
    }
}

/// The authenticator's positive verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub agent_id: u64,
    /// Opaque id of this connection for logs on both sides.
    pub connection_id: String,
}

/// A boxed authentication future.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Accepted, Reject>> + Send>>;

/// Decides whether an agent may connect. Implemented for every
/// `Fn(HelloInfo, SocketAddr) -> impl Future<Output = Result<Accepted, Reject>>`, so the verdict may be
/// computed asynchronously (a database or a REST call on a blocking pool).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, hello: HelloInfo, peer: SocketAddr) -> AuthFuture;
}

impl<F, Fut> Authenticator for F
where
    F: Fn(HelloInfo, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Accepted, Reject>> + Send + 'static,
{
    fn authenticate(&self, hello: HelloInfo, peer: SocketAddr) -> AuthFuture {
        Box::pin(self(hello, peer))
    }
}

/// A connection the server accepted, with the identity of its agent.
#[derive(Debug, Clone)]
pub struct ServerConnection<C = ConnectionHandle> {
    pub connection: C,
    pub agent_id: u64,
    pub connection_id: String,
    /// What the agent said about itself.
    pub meta: AgentMeta,
    pub peer: SocketAddr,
    pub established: Established,
}

impl<C> ServerConnection<C> {
    /// The same connection with its handle converted (the runtimes wrap [`ConnectionHandle`]).
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> ServerConnection<D> {
        ServerConnection {
            connection: f(self.connection),
            agent_id: self.agent_id,
            connection_id: self.connection_id,
            meta: self.meta,
            peer: self.peer,
            established: self.established,
        }
    }
}

/// Agent side, once its driver runs: waits for ACCEPT (or REJECT, or the handshake timeout).
pub async fn agent_handshake(session: Session) -> Result<(ConnectionHandle, Established), Error> {
    let handle = ConnectionHandle::new(session.clone());
    let established = poll_fn(|cx| session.poll_established(cx)).await?;
    Ok((handle, established))
}

/// Server side, once its driver runs: HELLO → authenticator → ACCEPT or REJECT.
pub async fn server_handshake(
    session: Session,
    auth: &dyn Authenticator,
    peer: SocketAddr,
) -> Result<ServerConnection<ConnectionHandle>, Error> {
    let handle = ConnectionHandle::new(session.clone());
    let hello = poll_fn(|cx| session.poll_hello(cx)).await?;
    let meta = hello.meta.clone();
    match auth.authenticate(hello, peer).await {
        Ok(a) => {
            session.accept(a.agent_id, a.connection_id.clone());
            let established = poll_fn(|cx| session.poll_established(cx)).await?;
            Ok(ServerConnection {
                connection: handle,
                agent_id: a.agent_id,
                connection_id: a.connection_id,
                meta,
                peer,
                established,
            })
        }
        Err(r) => {
            let _e = session.span().enter();
            tracing::info!(%peer, code = r.code, message = %r.message, "agent refused");
            let err = Error::Refused {
                code: protocol::RejectCode::from_wire(r.code),
                message: r.message.clone(),
                retry_after: (r.retry_after_ms > 0)
                    .then(|| std::time::Duration::from_millis(r.retry_after_ms.into())),
            };
            session.reject(r);
            Err(err)
        }
    }
}
