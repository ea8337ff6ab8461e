//! The self-test agent's side of the `gitops` service (protocol/SERVICES.md §9): one stream per
//! manifest project of the configuration it applied, opened with the commit whose set it has;
//! kas's sets are reassembled and checked ([`gitops::wire::Assembler`]) and answered with a
//! `Report` naming the commit. It applies nothing (it has no cluster): the report says `dry_run`.
//!
//! What it has survives reconnects (it lives in the process, not in the connection).

use std::collections::BTreeMap;
use std::sync::Mutex;

use gitops::wire::{self, Assembler, AssemblerLimits, Received, ServerMessage};
use prost::Message as _;
use protocol::cache::MessageDecoder;
use protocol::{Connection, StreamId, proto};

/// Manifest project id → the commit whose set the agent has (`None`: none yet).
static HAVE: Mutex<BTreeMap<String, Option<String>>> = Mutex::new(BTreeMap::new());

fn have() -> std::sync::MutexGuard<'static, BTreeMap<String, Option<String>>> {
    HAVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The applied configuration's manifest projects: projects that left are forgotten.
pub fn set_projects(ids: impl IntoIterator<Item = String>) {
    let mut have = have();
    let mut next = BTreeMap::new();
    for id in ids {
        let commit = have.remove(&id).flatten();
        next.insert(id, commit);
    }
    *have = next;
}

/// The request head of a project's stream.
fn head(project: &str, commit: Option<&str>) -> proto::RequestHead {
    let header = |name: &str, value: &str| proto::Header {
        name: name.into(),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
    };
    let mut headers = vec![header(wire::PROJECT_HEADER, project)];
    if let Some(c) = commit {
        headers.push(header(wire::COMMIT_HEADER, c));
    }
    proto::RequestHead {
        service: protocol::service::GITOPS.into(),
        method: wire::METHOD.into(),
        path: "/".into(),
        headers,
        ..Default::default()
    }
}

struct Link {
    project: String,
    decoder: MessageDecoder,
    assembler: Assembler,
}

/// The `gitops` streams of one connection.
#[derive(Default)]
pub struct GitopsStreams {
    links: BTreeMap<StreamId, Link>,
}

impl GitopsStreams {
    /// Opens a stream for every project without one on this connection; `forget_commit` (a fault)
    /// leaves out the commit the agent has.
    pub fn open_missing(&mut self, conn: &mut Connection, forget_commit: bool) {
        let wanted: Vec<(String, Option<String>)> =
            have().iter().map(|(p, c)| (p.clone(), c.clone())).collect();
        for (project, commit) in wanted {
            if self.links.values().any(|l| l.project == project) {
                continue;
            }
            let commit = commit.filter(|_| !forget_commit);
            if let Ok(id) = conn.open_stream(head(&project, commit.as_deref()), false) {
                self.links.insert(
                    id,
                    Link {
                        project,
                        decoder: MessageDecoder::default(),
                        assembler: Assembler::new(AssemblerLimits::default()),
                    },
                );
            }
        }
    }

    /// Whether `id` is one of these streams.
    pub fn owns(&self, id: StreamId) -> bool {
        self.links.contains_key(&id)
    }

    /// The stream ended or failed.
    pub fn remove(&mut self, id: StreamId) {
        self.links.remove(&id);
    }

    /// kas's octets on stream `id`: every complete set is recorded and reported. An error is kas's
    /// fault (the caller resets the stream with `PROTOCOL_ERROR` and forgets it).
    pub fn on_data(
        &mut self,
        conn: &mut Connection,
        id: StreamId,
        data: &[u8],
    ) -> Result<(), String> {
        let Some(link) = self.links.get_mut(&id) else {
            return Ok(());
        };
        link.decoder.push(data);
        // Bounded by the buffered octets.
        while let Some(bytes) = link.decoder.next_message().map_err(|e| e.to_string())? {
            let m = ServerMessage::decode(bytes.as_ref()).map_err(|e| e.to_string())?;
            let Received::Set(set) = link.assembler.handle(m).map_err(|e| e.to_string())? else {
                continue;
            };
            if let Some(c) = have().get_mut(&link.project) {
                *c = Some(set.commit.clone());
            }
            let status = gitops::ProjectStatus::<u64> {
                project: link.project.clone(),
                inventory: String::new(),
                commit: Some(set.commit.clone()),
                synced_commit: Some(set.commit.clone()),
                phase: gitops::Phase::Synced,
                dry_run: true,
                objects: Vec::new(),
                last_error: None,
                rejected_commit: None,
                consecutive_failures: 0,
                last_attempt_at: None,
                last_synced_at: None,
                next_attempt_at: None,
            };
            let report = protocol::cache::encode_message(&wire::report(&status));
            conn.send_data(id, report, false)
                .map_err(|e| format!("cannot report: {e}"))?;
        }
        Ok(())
    }
}
