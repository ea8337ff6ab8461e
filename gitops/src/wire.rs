//! The `gitops` tunnel service's messages (protocol/SERVICES.md §9), Sans-IO: kas turns a desired
//! set into bounded chunks ([`encode_set`]), agentk reassembles and checks them ([`Assembler`]), and
//! agentk reports its sync status back ([`report`] / [`decode_report`]).
//!
//! ```text
//!  agentk ──WATCH /, gitops-project: <id>, gitops-commit: <commit it has>──▶ kas: 200
//!  agentk ◀── Begin{commit, objects} · Objects{json…}* · End{commit} ── a new commit's set
//!  agentk ◀── Status{code, commit, message} ── unknown project, fetch or manifest failure, recovery
//!  agentk ──▶ Report{status json} ── after every round (per-object results)
//! ```
//!
//! Every message is a protobuf envelope, length-delimited as every message stream (SERVICES.md
//! §2.8). Objects travel as their JSON ([`Object`]'s serde form), at most [`MAX_CHUNK_BYTES`] of
//! them per message unless one object alone is larger (it then travels alone; one over
//! [`MAX_OBJECT_BYTES`] cannot be sent and the commit is rejected by kas).
//!
//! # Invariants (checked by the [`Assembler`]; a breach is kas's fault and resets the stream)
//! - `Objects` and `End` only inside a `Begin … End` bracket; no `Begin` inside one;
//! - `End` names the `Begin`'s commit and exactly `Begin.objects` objects arrived;
//! - every object decodes, its id agrees with its manifest, and no id appears twice;
//! - at most [`AssemblerLimits::max_objects`] objects and [`AssemblerLimits::max_bytes`] bytes.

use serde::{Deserialize, Serialize};

use crate::manifest::DesiredSet;
use crate::object::{Object, group_of};
use crate::status::ProjectStatus;

/// The request method of a `gitops` stream.
pub const METHOD: &str = "WATCH";
/// Request header naming the manifest project (its `id` as in the agent's configuration).
pub const PROJECT_HEADER: &str = "gitops-project";
/// Request header naming the commit whose set agentk already has (absent: none).
pub const COMMIT_HEADER: &str = "gitops-commit";
/// Longest project id accepted in a head.
pub const MAX_PROJECT_ID: usize = 1024;
/// Longest commit id accepted in a head (SHA-256 object ids are 64 hex digits).
pub const MAX_COMMIT_ID: usize = 64;
/// Target size of one `Objects` message.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Largest JSON of one object that can be sent (a message is at most 16 MiB, SERVICES.md §2.8).
pub const MAX_OBJECT_BYTES: usize = 16 * 1024 * 1024 - 4096;

/// kas → agentk.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMessage {
    /// What it is.
    #[prost(oneof = "server_message::Kind", tags = "1, 2, 3, 4")]
    pub kind: Option<server_message::Kind>,
}

/// The variants of [`ServerMessage`].
pub mod server_message {
    /// One of kas's messages.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A commit's set begins.
        #[prost(message, tag = "1")]
        Begin(super::Begin),
        /// Some of its objects.
        #[prost(message, tag = "2")]
        Objects(super::Objects),
        /// The set is complete.
        #[prost(message, tag = "3")]
        End(super::End),
        /// Where the project's source stands (errors; nothing to apply).
        #[prost(message, tag = "4")]
        Status(super::Status),
    }
}

/// A commit's set begins.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Begin {
    /// The commit.
    #[prost(string, tag = "1")]
    pub commit: String,
    /// How many objects follow.
    #[prost(uint32, tag = "2")]
    pub objects: u32,
}

/// Objects of the set being sent, each the JSON of an [`Object`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Objects {
    /// The objects.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub objects: Vec<Vec<u8>>,
}

/// The set is complete.
#[derive(Clone, PartialEq, prost::Message)]
pub struct End {
    /// The commit (as in `Begin`).
    #[prost(string, tag = "1")]
    pub commit: String,
}

/// Where a project's source stands. agentk changes nothing on any status; it records it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// What.
    #[prost(enumeration = "StatusCode", tag = "1")]
    pub code: i32,
    /// The commit concerned, if any.
    #[prost(string, tag = "2")]
    pub commit: String,
    /// What went wrong, for people.
    #[prost(string, tag = "3")]
    pub message: String,
}

/// [`Status::code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum StatusCode {
    /// Not set (ignored).
    Unspecified = 0,
    /// The source is fine again (the last error cleared).
    Ok = 1,
    /// The agent's configuration (as kas knows it) has no such manifest project; the stream stays
    /// open and the set follows if the project appears.
    UnknownProject = 2,
    /// The repository could not be fetched (gone, unreachable, credentials refused): the last set
    /// stays in force.
    FetchFailed = 3,
    /// The commit's manifests do not parse or validate: nothing of it is sent, the last set stays.
    Rejected = 4,
}

/// agentk → kas.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AgentMessage {
    /// What it is.
    #[prost(oneof = "agent_message::Kind", tags = "1")]
    pub kind: Option<agent_message::Kind>,
}

/// The variants of [`AgentMessage`].
pub mod agent_message {
    /// One of agentk's messages.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// The project's sync status.
        #[prost(message, tag = "1")]
        Report(super::Report),
    }
}

/// The project's sync status: JSON of [`ProjectStatus<u64>`] (Unix milliseconds), with every
/// object's last result (applied, unchanged, failed with the API server's message, pruned, …).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Report {
    /// The JSON.
    #[prost(bytes = "vec", tag = "1")]
    pub status: Vec<u8>,
}

/// The messages carrying `set`: `Begin`, `Objects` of at most `max_chunk` bytes each (an object
/// larger than that alone), `End`. Fails for an object over [`MAX_OBJECT_BYTES`].
pub fn encode_set(set: &DesiredSet, max_chunk: usize) -> Result<Vec<ServerMessage>, String> {
    let msg = |k| ServerMessage { kind: Some(k) };
    let mut out = vec![msg(server_message::Kind::Begin(Begin {
        commit: set.commit.clone(),
        objects: u32::try_from(set.objects.len()).map_err(|_| "too many objects".to_string())?,
    }))];
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    for object in &set.objects {
        let json = serde_json::to_vec(object).map_err(|e| e.to_string())?;
        if json.len() > MAX_OBJECT_BYTES {
            return Err(format!(
                "{} is {} bytes as JSON, more than the {MAX_OBJECT_BYTES} one message can carry",
                object.id,
                json.len()
            ));
        }
        if !chunk.is_empty() && size + json.len() > max_chunk {
            out.push(msg(server_message::Kind::Objects(Objects {
                objects: std::mem::take(&mut chunk),
            })));
            size = 0;
        }
        size += json.len();
        chunk.push(json);
    }
    if !chunk.is_empty() {
        out.push(msg(server_message::Kind::Objects(Objects {
            objects: chunk,
        })));
    }
    out.push(msg(server_message::Kind::End(End {
        commit: set.commit.clone(),
    })));
    Ok(out)
}

/// A status message.
pub fn status(code: StatusCode, commit: &str, message: &str) -> ServerMessage {
    ServerMessage {
        kind: Some(server_message::Kind::Status(Status {
            code: code as i32,
            commit: commit.to_string(),
            message: message.to_string(),
        })),
    }
}

/// agentk's report message.
pub fn report(status: &ProjectStatus<u64>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Report(Report {
            status: serde_json::to_vec(status).unwrap_or_default(),
        })),
    }
}

/// The status an agent reported; `Ok(None)` for a message kas does not know (ignored).
pub fn decode_report(message: &AgentMessage) -> Result<Option<ProjectStatus<u64>>, String> {
    match &message.kind {
        Some(agent_message::Kind::Report(r)) => serde_json::from_slice(&r.status)
            .map(Some)
            .map_err(|e| format!("the report does not decode: {e}")),
        None => Ok(None),
    }
}

/// Bounds of one set agentk accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerLimits {
    /// Most objects.
    pub max_objects: usize,
    /// Most bytes of object JSON.
    pub max_bytes: usize,
}

impl Default for AssemblerLimits {
    /// 10,000 objects, 64 MiB (the manifest limits' order of magnitude, with JSON overhead).
    fn default() -> Self {
        AssemblerLimits {
            max_objects: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

/// kas broke the `gitops` message rules (its fault; the stream is reset).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WireError {
    /// `Objects` or `End` outside a set, or `Begin` inside one.
    #[error("{0} out of sequence")]
    OutOfSequence(&'static str),
    /// `End` names another commit than `Begin`.
    #[error("End names commit {end}, Begin named {begin}")]
    CommitMismatch {
        /// `Begin`'s.
        begin: String,
        /// `End`'s.
        end: String,
    },
    /// Not as many objects as announced.
    #[error("Begin announced {announced} objects, {received} arrived")]
    CountMismatch {
        /// Announced.
        announced: u32,
        /// Received.
        received: usize,
    },
    /// Over [`AssemblerLimits`].
    #[error("the set exceeds the limit of {0}")]
    TooLarge(String),
    /// An object does not decode or is inconsistent.
    #[error("bad object: {0}")]
    BadObject(String),
    /// The set has duplicates.
    #[error("the set is invalid: {0}")]
    BadSet(String),
    /// An empty message.
    #[error("a message without content")]
    Empty,
}

/// What a message meant to agentk.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// Part of a set; more follows.
    Partial,
    /// A complete set.
    Set(DesiredSet),
    /// A status.
    Status(Status),
}

struct Partial {
    commit: String,
    announced: u32,
    objects: Vec<Object>,
    bytes: usize,
}

/// Reassembles sets from kas's messages (agentk's side). See the module's invariants.
pub struct Assembler {
    limits: AssemblerLimits,
    partial: Option<Partial>,
}

impl Assembler {
    /// An assembler with these bounds.
    pub fn new(limits: AssemblerLimits) -> Self {
        Assembler {
            limits,
            partial: None,
        }
    }

    /// Takes one message. After an error the stream must be abandoned.
    pub fn handle(&mut self, message: ServerMessage) -> Result<Received, WireError> {
        use server_message::Kind;
        match message.kind.ok_or(WireError::Empty)? {
            Kind::Status(s) => Ok(Received::Status(s)),
            Kind::Begin(b) => {
                if self.partial.is_some() {
                    return Err(WireError::OutOfSequence("Begin"));
                }
                if b.objects as usize > self.limits.max_objects {
                    return Err(WireError::TooLarge(format!(
                        "{} objects",
                        self.limits.max_objects
                    )));
                }
                self.partial = Some(Partial {
                    commit: b.commit,
                    announced: b.objects,
                    objects: Vec::new(),
                    bytes: 0,
                });
                Ok(Received::Partial)
            }
            Kind::Objects(o) => {
                let partial = self
                    .partial
                    .as_mut()
                    .ok_or(WireError::OutOfSequence("Objects"))?;
                for json in o.objects {
                    partial.bytes += json.len();
                    if partial.objects.len() >= partial.announced as usize {
                        return Err(WireError::CountMismatch {
                            announced: partial.announced,
                            received: partial.objects.len() + 1,
                        });
                    }
                    if partial.bytes > self.limits.max_bytes {
                        return Err(WireError::TooLarge(format!(
                            "{} bytes",
                            self.limits.max_bytes
                        )));
                    }
                    let object: Object = serde_json::from_slice(&json)
                        .map_err(|e| WireError::BadObject(e.to_string()))?;
                    check_object(&object)?;
                    partial.objects.push(object);
                }
                Ok(Received::Partial)
            }
            Kind::End(e) => {
                let partial = self.partial.take().ok_or(WireError::OutOfSequence("End"))?;
                if e.commit != partial.commit {
                    return Err(WireError::CommitMismatch {
                        begin: partial.commit,
                        end: e.commit,
                    });
                }
                if partial.objects.len() != partial.announced as usize {
                    return Err(WireError::CountMismatch {
                        announced: partial.announced,
                        received: partial.objects.len(),
                    });
                }
                DesiredSet::new(partial.commit, partial.objects)
                    .map(Received::Set)
                    .map_err(|r| WireError::BadSet(r.to_string()))
            }
        }
    }
}

/// An object's id agrees with its manifest (kind, group, name, namespace).
fn check_object(object: &Object) -> Result<(), WireError> {
    let m = &object.manifest;
    let bad = |what: &str| Err(WireError::BadObject(format!("{}: {what}", object.id)));
    if m["kind"].as_str() != Some(object.id.kind.as_str()) {
        return bad("kind differs from the manifest's");
    }
    if m["apiVersion"].as_str() != Some(object.api_version.as_str())
        || group_of(&object.api_version) != object.id.group
    {
        return bad("apiVersion differs from the manifest's or the group");
    }
    if m["metadata"]["name"].as_str() != Some(object.id.name.as_str()) {
        return bad("name differs from the manifest's");
    }
    if m["metadata"]["namespace"].as_str() != object.id.namespace.as_deref() {
        return bad("namespace differs from the manifest's");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::object::{ObjectId, Source};
    use proptest::prelude::*;
    use prost::Message as _;

    fn object(ns: &str, name: &str, pad: usize) -> Object {
        Object {
            id: ObjectId::namespaced("", "ConfigMap", ns, name),
            api_version: "v1".into(),
            manifest: serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns},
                "data": {"pad": "x".repeat(pad)},
            }),
            source: Source {
                path: "a.yaml".into(),
                line: 1,
            },
        }
    }

    fn roundtrip(messages: Vec<ServerMessage>) -> Result<Vec<Received>, WireError> {
        let mut a = Assembler::new(AssemblerLimits::default());
        messages
            .into_iter()
            .map(|m| {
                // Through the wire encoding, as the stream carries it.
                let m = ServerMessage::decode(m.encode_to_vec().as_slice()).unwrap();
                a.handle(m)
            })
            .collect()
    }

    proptest! {
        /// Any set survives chunking and reassembly unchanged, and no message carries more than
        /// one chunk's worth unless a single object is larger.
        #[test]
        fn sets_survive_chunking(
            sizes in prop::collection::vec(0usize..3000, 0..40),
            chunk in 1usize..8000,
        ) {
            let objects: Vec<Object> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| object("default", &format!("o{i}"), *s))
                .collect();
            let set = DesiredSet::new("c1", objects).unwrap();
            let messages = encode_set(&set, chunk).unwrap();
            for m in &messages {
                if let Some(server_message::Kind::Objects(o)) = &m.kind {
                    let total: usize = o.objects.iter().map(Vec::len).sum();
                    prop_assert!(o.objects.len() == 1 || total <= chunk);
                }
            }
            let got = roundtrip(messages).unwrap();
            prop_assert_eq!(got.last(), Some(&Received::Set(set)));
        }
    }

    #[test]
    fn breaches_are_errors() {
        let set = DesiredSet::new("c1", vec![object("a", "x", 1)]).unwrap();
        let m = encode_set(&set, 10).unwrap();
        // Objects without Begin.
        assert!(matches!(
            roundtrip(m[1..].to_vec()),
            Err(WireError::OutOfSequence("Objects"))
        ));
        // Begin inside a set.
        assert!(matches!(
            roundtrip(vec![m[0].clone(), m[0].clone()]),
            Err(WireError::OutOfSequence("Begin"))
        ));
        // Fewer objects than announced.
        assert!(matches!(
            roundtrip(vec![m[0].clone(), m[2].clone()]),
            Err(WireError::CountMismatch { .. })
        ));
        // An object whose id disagrees with its manifest.
        let mut bad = object("a", "x", 1);
        bad.id.name = "y".into();
        let lying = ServerMessage {
            kind: Some(server_message::Kind::Objects(Objects {
                objects: vec![serde_json::to_vec(&bad).unwrap()],
            })),
        };
        assert!(matches!(
            roundtrip(vec![m[0].clone(), lying]),
            Err(WireError::BadObject(_))
        ));
        // Over the object limit.
        let mut a = Assembler::new(AssemblerLimits {
            max_objects: 0,
            max_bytes: 10,
        });
        assert!(matches!(
            a.handle(m[0].clone()),
            Err(WireError::TooLarge(_))
        ));
        assert_eq!(
            Assembler::new(AssemblerLimits::default()).handle(ServerMessage { kind: None }),
            Err(WireError::Empty)
        );
    }
}
