//! kas's inverted request routing: which connection of which agent serves a request.
//!
//! | module | what it is |
//! |---|---|
//! | [`router`] | the [`Router`]: agents, their connections, and the choice of a connection per request |
//! | [`existence`] | [`Existence`]: does agent N exist (one answer for the proxy, `/agents`, `/views`) |
//! | [`holders`] | [`Holders`]: which kas replicas hold connections of an agent (the multi-replica seam) |
//! | [`policy`] | [`KasRouting`]: kas's routing policy over the three (reroute, never processed, forward) |
//! | [`balance`] | [`balance::Balance`]: how many agent connections a replica drains to even out load, and the maximum connection age |

pub mod balance;
pub mod existence;
pub mod holders;
pub mod policy;
pub mod router;

pub use existence::{Existence, Listing};
pub use holders::{Holders, ReplicaId};
pub use policy::{
    DrainCause, KasRouting, OpenFailure, Placement, RequestFailure, RequestSpec, RoutingConfig,
    RoutingEvent, RoutingStats,
};
pub use router::{
    AgentInfo, ConnectionInfo, InvariantViolation, Route, RouteError, Router, RouterConfig,
    RouterError, RouterStats,
};
