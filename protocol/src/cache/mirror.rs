//! kas's side of view synchronisation: one agent's views, kept current from agentk's updates.
//!
//! The mirror is at a position (epoch, seq) once it has applied a snapshot. An update
//! (epoch, base_seq → seq) applies when the epoch matches and `base_seq <= mirror seq < seq`: its values
//! are absolute, so any state in that range reaches `seq`. An update with `seq <= mirror seq` is old or a
//! duplicate and is ignored (but acknowledged). An update from another epoch, one beyond the mirror
//! (`base_seq > mirror seq`: something was lost), or any update while the mirror has no state yields
//! [`MirrorOutcome::ResyncNeeded`] with the [`proto::ResyncRequest`] to send; further unusable updates
//! are then ignored silently until agentk's answer arrives, so one loss costs one request. Messages that
//! break the protocol (misshapen rows, unknown views, `seq < base_seq`) are rejected with a
//! [`WireError`] and change nothing.
//!
//! The mirror records when it last changed and when it was last confirmed current, for the API's
//! "age of the data".

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::proto;
use super::table::{ViewChange, Views};
use super::wire::{WireError, check_removed, check_row, row_values, views_from_snapshot};

/// What applying a message did, and what to send back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorOutcome {
    /// Applied: send `ack`; `changes` are the rows that changed (for the event feed).
    Applied {
        /// Acknowledgement to send to agentk.
        ack: proto::Ack,
        /// Rows whose values changed, in (view, key) order.
        changes: Vec<ViewChange>,
    },
    /// Nothing to apply (old, duplicate, not a view message, or waiting for a resync). Send `ack` if
    /// present.
    Ignored {
        /// Acknowledgement to send, if the message was for the mirror's epoch.
        ack: Option<proto::Ack>,
    },
    /// The mirror cannot apply the update: send `request`.
    ResyncNeeded {
        /// The request to send to agentk.
        request: proto::ResyncRequest,
    },
}

/// One agent's mirrored views (see the module documentation).
#[derive(Clone, Debug)]
pub struct Mirror {
    position: Option<(u64, u64)>,
    views: Views,
    awaiting_resync: bool,
    requested_at: Option<Instant>,
    resync_interval: Duration,
    connected: bool,
    last_update: Option<Instant>,
    last_confirmed: Option<Instant>,
}

fn ack(epoch: u64, seq: u64) -> proto::Ack {
    proto::Ack { epoch, seq }
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror::new()
    }
}

impl Mirror {
    /// An empty mirror (no state), repeating unanswered resync requests after 1 s.
    pub fn new() -> Self {
        Mirror::with_resync_interval(Duration::from_secs(1))
    }

    /// An empty mirror that repeats an unanswered resync request after `interval`.
    pub fn with_resync_interval(interval: Duration) -> Self {
        Mirror {
            position: None,
            views: Views::new(),
            awaiting_resync: false,
            requested_at: None,
            resync_interval: interval,
            connected: false,
            last_update: None,
            last_confirmed: None,
        }
    }

    /// The agent's stream opened: send the returned request so agentk knows where the mirror is.
    pub fn on_connected(&mut self, now: Instant) -> proto::ResyncRequest {
        self.connected = true;
        self.awaiting_resync = true;
        self.requested_at = Some(now);
        self.request(proto::ResyncReason::Connected)
    }

    /// The agent's stream closed. The views are kept (and served as stale).
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// Whether the agent's stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the mirror has state and is not waiting for a resync answer.
    pub fn is_synced(&self) -> bool {
        self.position.is_some() && !self.awaiting_resync
    }

    /// The current views (empty before the first snapshot).
    pub fn views(&self) -> &Views {
        &self.views
    }

    /// The mirror's epoch, if it has state.
    pub fn epoch(&self) -> Option<u64> {
        self.position.map(|(e, _)| e)
    }

    /// The mirror's seq, if it has state.
    pub fn seq(&self) -> Option<u64> {
        self.position.map(|(_, s)| s)
    }

    /// When a message last changed the views.
    pub fn last_update(&self) -> Option<Instant> {
        self.last_update
    }

    /// When agentk last confirmed the views current (any applied, duplicate or confirming message).
    pub fn last_confirmed(&self) -> Option<Instant> {
        self.last_confirmed
    }

    /// Time since the last change to the views.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_update.map(|t| now.saturating_duration_since(t))
    }

    fn request(&self, reason: proto::ResyncReason) -> proto::ResyncRequest {
        let (epoch, seq) = self.position.unwrap_or((0, 0));
        proto::ResyncRequest {
            epoch,
            seq,
            reason: reason as i32,
        }
    }

    fn resync(&mut self, reason: proto::ResyncReason, now: Instant) -> MirrorOutcome {
        let recent = self
            .requested_at
            .and_then(|t| t.checked_add(self.resync_interval))
            .is_some_and(|until| now < until);
        if self.awaiting_resync && recent {
            return MirrorOutcome::Ignored { ack: None };
        }
        debug!(?reason, position = ?self.position, "mirror needs a resync");
        self.awaiting_resync = true;
        self.requested_at = Some(now);
        MirrorOutcome::ResyncNeeded {
            request: self.request(reason),
        }
    }

    /// Applies any message from agentk's cache stream. Object changes are not the mirror's business:
    /// they yield `Ignored { ack: None }`.
    pub fn handle(
        &mut self,
        message: &proto::AgentToServer,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        match &message.msg {
            Some(proto::agent_to_server::Msg::Update(u)) => self.apply_update(u, now),
            Some(proto::agent_to_server::Msg::Snapshot(s)) => self.apply_snapshot(s, now),
            Some(proto::agent_to_server::Msg::ObjectChanges(_)) => {
                Ok(MirrorOutcome::Ignored { ack: None })
            }
            None => Err(WireError::Malformed("empty cache message".into())),
        }
    }

    /// [`Mirror::handle`] of a message the caller no longer needs: an update's keys are moved into
    /// the views and the changes instead of being copied.
    pub fn handle_owned(
        &mut self,
        message: proto::AgentToServer,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        match message.msg {
            Some(proto::agent_to_server::Msg::Update(u)) => self.apply_update_owned(u, now),
            Some(proto::agent_to_server::Msg::Snapshot(s)) => self.apply_snapshot(&s, now),
            Some(proto::agent_to_server::Msg::ObjectChanges(_)) => {
                Ok(MirrorOutcome::Ignored { ack: None })
            }
            None => Err(WireError::Malformed("empty cache message".into())),
        }
    }

    /// Applies an update.
    pub fn apply_update(
        &mut self,
        update: &proto::ViewUpdate,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        if let Some(outcome) = self.admit(update, now)? {
            return Ok(outcome);
        }
        self.apply_rows(update.clone(), now)
    }

    /// [`Mirror::apply_update`] of an update the caller no longer needs (its keys are moved).
    pub fn apply_update_owned(
        &mut self,
        update: proto::ViewUpdate,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        if let Some(outcome) = self.admit(&update, now)? {
            return Ok(outcome);
        }
        self.apply_rows(update, now)
    }

    /// The outcome of an update that is not applied (malformed, unusable or old); `None` for one
    /// to apply.
    fn admit(
        &mut self,
        update: &proto::ViewUpdate,
        now: Instant,
    ) -> Result<Option<MirrorOutcome>, WireError> {
        if update.seq < update.base_seq {
            return Err(WireError::Malformed(format!(
                "update seq {} below its base {}",
                update.seq, update.base_seq
            )));
        }
        let Some((epoch, seq)) = self.position else {
            return Ok(Some(self.resync(proto::ResyncReason::NoState, now)));
        };
        if update.epoch != epoch {
            return Ok(Some(self.resync(proto::ResyncReason::EpochChanged, now)));
        }
        if update.base_seq > seq {
            return Ok(Some(self.resync(proto::ResyncReason::Gap, now)));
        }
        // agentk knew our position when it built this message.
        self.awaiting_resync = false;
        self.last_confirmed = Some(now);
        if update.seq <= seq {
            return Ok(Some(MirrorOutcome::Ignored {
                ack: Some(ack(epoch, seq)),
            }));
        }
        Ok(None)
    }

    /// Applies an admitted update ([`Mirror::admit`]), validating it whole first.
    fn apply_rows(
        &mut self,
        update: proto::ViewUpdate,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        let Some((epoch, _)) = self.position else {
            return Ok(self.resync(proto::ResyncReason::NoState, now));
        };
        // Validate everything before changing anything (without copying anything: the rows are
        // read again to be applied, each delta's view looked up once per pass).
        let mut rows = 0;
        for delta in &update.views {
            let Some(view) = self.views.get(&delta.view) else {
                return Err(WireError::Malformed(format!(
                    "unknown view {:?}",
                    delta.view
                )));
            };
            for row in &delta.upserts {
                check_row(row, &view.schema)?;
            }
            for row in &delta.removed {
                check_removed(row, &view.schema)?;
            }
            rows += delta.upserts.len() + delta.removed.len();
        }
        let mut changes = Vec::with_capacity(rows);
        let mut deltas = update.views;
        // Every removal first, then every upsert.
        for delta in &mut deltas {
            let Some(view) = self.views.get_mut(&delta.view) else {
                continue;
            };
            for removed in std::mem::take(&mut delta.removed) {
                if view.rows.remove(&removed.key).is_some() {
                    changes.push(ViewChange {
                        view: delta.view.clone(),
                        key: removed.key,
                        values: None,
                    });
                }
            }
        }
        for delta in deltas {
            let Some(view) = self.views.get_mut(&delta.view) else {
                continue;
            };
            for row in delta.upserts {
                // Checked above: cannot fail.
                let values = row_values(&row, &view.schema)?;
                let key = row.key;
                // A changed row (the common case) is updated in place: its key is not cloned.
                match view.rows.get_mut(&key) {
                    Some(row) if *row == values => continue,
                    Some(row) => row.clone_from(&values),
                    None => {
                        view.rows.insert(key.clone(), values.clone());
                    }
                }
                changes.push(ViewChange {
                    view: delta.view.clone(),
                    key,
                    values: Some(values),
                });
            }
        }
        changes.sort();
        self.position = Some((epoch, update.seq));
        self.last_update = Some(now);
        Ok(MirrorOutcome::Applied {
            ack: ack(epoch, update.seq),
            changes,
        })
    }

    /// Applies a snapshot: it replaces the views unless it is older than the mirror's state in the
    /// same epoch.
    pub fn apply_snapshot(
        &mut self,
        snapshot: &proto::Snapshot,
        now: Instant,
    ) -> Result<MirrorOutcome, WireError> {
        if snapshot.epoch == 0 {
            return Err(WireError::Malformed("snapshot with epoch 0".into()));
        }
        let views = views_from_snapshot(snapshot)?;
        if let Some((epoch, seq)) = self.position
            && epoch == snapshot.epoch
            && snapshot.seq < seq
        {
            warn!(
                epoch,
                seq,
                snapshot_seq = snapshot.seq,
                "older snapshot ignored"
            );
            return Ok(MirrorOutcome::Ignored {
                ack: Some(ack(epoch, seq)),
            });
        }
        let changes = self.views.diff(&views);
        self.views = views;
        self.position = Some((snapshot.epoch, snapshot.seq));
        self.awaiting_resync = false;
        self.last_update = Some(now);
        self.last_confirmed = Some(now);
        Ok(MirrorOutcome::Applied {
            ack: ack(snapshot.epoch, snapshot.seq),
            changes,
        })
    }
}
