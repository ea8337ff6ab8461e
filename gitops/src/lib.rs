//! GitOps, the pure parts: from a commit's files to a validated desired set ([`manifest`]), and the
//! sync decision that drives a cluster to it ([`sync::Sync`]: apply, prune, inventory, back-off,
//! drift correction), with the inventory's encoding ([`inventory`]) and the status kas shows
//! ([`status`]).
//!
//! No I/O, no clock, no runtime: kas parses manifests here and streams the [`DesiredSet`]; agentk
//! drives [`Sync`] with server-side apply; the simulator and the property tests drive the same type
//! against model clusters.
#![warn(missing_docs)]

pub mod backoff;
pub mod inventory;
pub mod manifest;
pub mod object;
pub mod order;
pub mod scope;
pub mod status;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

pub use backoff::Backoff;
pub use inventory::{Inventory, InventoryError, InventoryRef, Live, NotOurs};
pub use manifest::{
    DesiredSet, ManifestError, ManifestErrorKind, ManifestLimits, ParsedCommit, RejectedCommit,
};
pub use object::{Object, ObjectId, Source};
pub use scope::{Scope, ScopeResolver, WellKnownScopes};
pub use status::{ObjectResult, ObjectStatus, Phase, ProjectStatus};
pub use sync::{
    Action, ActionId, ApiError, Applied, Outcome, Pruned, RoundOutcome, Sync, SyncConfig, SyncEvent,
};
