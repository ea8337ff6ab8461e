//! kas's inverted request routing: which connection of which agent serves a request.
//!
//! | module | what it is |
//! |---|---|
//! | [`router`] | the [`Router`]: agents, their connections, and the choice of a connection per request |

pub mod router;

pub use router::{
    AgentInfo, ConnectionInfo, InvariantViolation, Route, RouteError, Router, RouterConfig,
    RouterError, RouterStats,
};
