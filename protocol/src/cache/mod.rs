//! Informer-cache semantics: agentk's object store and views, the view updates it pushes to kas, and
//! kas's mirror of them. Pure: no I/O, no threads, no clock (time is passed in as `Instant`), and every
//! map is ordered, so the same inputs always give the same outputs.
//!
//! # Data flow
//!
//! ```text
//!  agentk                                                             kas
//!  kube watcher ─WatchEvent─▶ Store ─(old,new)─▶ ViewSet ─rows─▶ Publisher ══ViewUpdate/Snapshot══▶ Mirror ─▶ HTTP API, SSE
//!                              │  └─ObjectChange─────────────────────────────ObjectChanges══════▶ event feed
//!                              └◀─ list/get by kind, namespace, label selector (kas cache requests)
//!                                                                 Publisher ◀══Ack/ResyncRequest══ Mirror
//! ```
//!
//! - [`Store`] ([`store`]): objects keyed by (kind, namespace, name), fed `kube-runtime` watcher
//!   events, with relists, stale/duplicate suppression and uid-based replace.
//! - [`ViewSpec`] ([`spec`]): declarative views (filter, group-by, count/sum metrics);
//!   [`default_views`] gives nodes, pods by phase, deployments, objects by kind.
//! - [`ViewSet`] ([`view`]): the views maintained incrementally per event, plus a from-scratch
//!   [`ViewSet::recompute`] (the tests' oracle is the independent `protocol::testing::naive_views`).
//! - [`Publisher`] ([`publisher`]): epochs, sequence numbers, coalescing window, acks, catch-up after
//!   reconnect, snapshots only when needed.
//! - [`Mirror`] ([`mirror`]): kas's copy; detects gaps and epoch changes.
//! - [`AgentCache`] ([`agent`]): store + views + publisher wired together for agentk.
//! - The `views` stream's endpoints ([`endpoint`]): [`AgentViews`] (agentk) and [`MirrorTable`]
//!   (kas), Sans-IO, driven by agentk, kas and the simulator; [`ChangeBatch`] ([`batch`]) batches
//!   object changes; [`messages`] frames the stream's messages.
//! - Messages: [`proto`] (`proto/cache.proto`, package `agent_tunnel.cache.v1`), conversions in
//!   [`wire`]; view values in [`table`]; numbers in [`decimal`].

pub mod agent;
pub mod batch;
pub mod decimal;
pub mod endpoint;
pub mod messages;
pub mod mirror;
pub mod object;
pub mod path;
pub mod publisher;
pub mod selector;
pub mod spec;
pub mod store;
pub mod table;
pub mod view;
pub mod wire;

/// Generated messages of `proto/cache.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/agent_tunnel.cache.v1.rs"));
}

pub use agent::AgentCache;
pub use batch::ChangeBatch;
pub use decimal::Decimal;
pub use endpoint::{
    AgentViews, AgentViewsConfig, AgentViewsEvent, LinkEnd, LinkId, MirrorEvent, MirrorTable,
    MirrorTableConfig, ResponseVerdict, StreamEnd, ViewsRefusal, ViewsStream, ViewsViolation,
    classify_views_response, views_request_head,
};
pub use messages::{MAX_MESSAGE, MessageDecoder, MessageError, encode_message};
pub use mirror::{Mirror, MirrorOutcome};
pub use object::{KindParseError, ObjectError, ResourceKind, compare_resource_versions};
pub use path::{FieldPath, PathError, PathValue};
pub use publisher::{Publisher, PublisherConfig, PublisherStats};
pub use selector::{LabelSelector, Requirement, SelectorError, SelectorOp};
pub use spec::{
    AggregateOp, GroupBy, MetricSpec, Predicate, Scalar, Test, ViewSpec, ViewSpecError,
    default_views,
};
pub use store::{
    ChangeObserver, ChangeType, KindLookupError, ObjectChange, Store, StoreError, WatchEvent,
};
pub use table::{GroupKey, View, ViewChange, ViewSchema, Views};
pub use view::{ChangedKey, ViewSet};
pub use wire::{WireError, decode_agent_message, decode_server_message, object_changes_message};
