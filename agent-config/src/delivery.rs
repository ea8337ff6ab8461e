//! The `config` service's message and its one decision (protocol/SERVICES.md §8): what kas sends to
//! agentk, and whether it sends it.
//!
//! - [`ConfigUpdate`] is the message kas → agentk: the commit, a content [`Fingerprint`], agentk's
//!   part of the configuration ([`AgentConfig`]) and the access grants (`ci_access`,
//!   `user_access`, kept by agentk for the authorisation work of issue 14). Its wire form is JSON
//!   (the same stable JSON as [`AgentConfig::to_json`]), framed like every message stream with a
//!   varint length prefix ([`ConfigUpdate::encode_frame`]; protocol's `FrameDecoder` reads it).
//! - [`Delivery`] decides, per stream, whether a good configuration is sent: only when both the
//!   commit *and* the content differ from what the agent has. kas drives it; the simulator and the
//!   conformance suites may drive the same type.
//!
//! Pure: no I/O, no clock.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::{CiAccess, UserAccess};
use crate::agent::{AgentConfig, Fingerprint};
use crate::file::ConfigFile;
use crate::names::ProjectId;

/// One configuration for agentk, as kas sends it on the `config` stream.
///
/// ```json
/// {"commit":"9fceb02…","fingerprint":"3a7b…","config":{"observability":{…},"gitops":{…}},
///  "ci_access":{"projects":[],"groups":[]},"user_access":{…}}
/// ```
///
/// Readers ignore fields they do not know (kas may add fields); `ci_access` and `user_access` may
/// be absent (empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigUpdate {
    /// The config project's commit this configuration was read at.
    pub commit: String,
    /// [`ConfigUpdate::content_fingerprint`] of the three parts below.
    pub fingerprint: Fingerprint,
    /// What agentk applies (log level, manifest projects).
    pub config: AgentConfig,
    /// `ci_access` of the file (enforced by kas; kept by agentk).
    #[serde(default)]
    pub ci_access: CiAccess,
    /// `user_access` of the file (enforced by kas; kept by agentk).
    #[serde(default)]
    pub user_access: UserAccess,
}

/// Why bytes are not a [`ConfigUpdate`] (kas's fault: agentk resets the stream).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Not the JSON of a [`ConfigUpdate`].
    #[error("not a configuration message: {0}")]
    Json(#[from] serde_json::Error),
    /// The fingerprint does not match the content.
    #[error("the fingerprint {claimed} does not match the content ({actual})")]
    Fingerprint {
        /// What the message says.
        claimed: Fingerprint,
        /// What the content hashes to.
        actual: Fingerprint,
    },
}

/// The parts the fingerprint covers, in this order.
#[derive(Serialize)]
struct Content<'a> {
    config: &'a AgentConfig,
    ci_access: &'a CiAccess,
    user_access: &'a UserAccess,
}

impl ConfigUpdate {
    /// The message for `file` at `commit`; manifest projects without an `id` get `config_project`.
    pub fn new(commit: &str, file: &ConfigFile, config_project: &ProjectId) -> ConfigUpdate {
        let config = file.agent_config(config_project);
        let fingerprint =
            ConfigUpdate::content_fingerprint(&config, &file.ci_access, &file.user_access);
        ConfigUpdate {
            commit: commit.to_owned(),
            fingerprint,
            config,
            ci_access: file.ci_access.clone(),
            user_access: file.user_access.clone(),
        }
    }

    /// Lowercase hex SHA-256 of the canonical JSON of the content (commit excluded): equal contents
    /// have equal fingerprints whatever the commit.
    pub fn content_fingerprint(
        config: &AgentConfig,
        ci_access: &CiAccess,
        user_access: &UserAccess,
    ) -> Fingerprint {
        let content = Content {
            config,
            ci_access,
            user_access,
        };
        let json = serde_json::to_vec(&content).expect("the content always serialises");
        Fingerprint(hex::encode(Sha256::digest(json)))
    }

    /// The wire form (JSON, no whitespace).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ConfigUpdate always serialises")
    }

    /// The wire form with its varint length prefix (SERVICES.md §2.8).
    pub fn encode_frame(&self) -> Vec<u8> {
        let json = self.to_json();
        let mut out = Vec::with_capacity(json.len() + 10);
        let mut len = json.len() as u64;
        // Protobuf varint: 7 bits per octet, least significant first, high bit = more follows.
        while len >= 0x80 {
            out.push((len as u8 & 0x7f) | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
        out.extend_from_slice(&json);
        out
    }

    /// Reads the wire form (one message, without its length prefix) and checks the fingerprint.
    pub fn from_json(bytes: &[u8]) -> Result<ConfigUpdate, UpdateError> {
        let update: ConfigUpdate = serde_json::from_slice(bytes)?;
        let actual = ConfigUpdate::content_fingerprint(
            &update.config,
            &update.ci_access,
            &update.user_access,
        );
        if actual != update.fingerprint {
            return Err(UpdateError::Fingerprint {
                claimed: update.fingerprint,
                actual,
            });
        }
        Ok(update)
    }
}

/// What one agent has, as one `config` stream knows it, and the decision whether to send it a good
/// configuration.
///
/// Invariant: [`Delivery::offer`] returns `true` only when the offered commit differs from the
/// agent's *and* the offered content differs from the agent's (an unknown content differs from
/// everything); after it returned `true` the agent has the offered commit and content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    commit: Option<String>,
    fingerprint: Option<Fingerprint>,
}

impl Delivery {
    /// An agent that named `commit` (and, optionally, the `fingerprint` of its content) when it
    /// opened the stream; `None`: it has applied nothing.
    pub fn new(commit: Option<String>, fingerprint: Option<Fingerprint>) -> Delivery {
        Delivery {
            commit,
            fingerprint,
        }
    }

    /// Whether `update` must be sent; if so, the agent is assumed to have it from now on.
    pub fn offer(&mut self, update: &ConfigUpdate) -> bool {
        let same_commit = self.commit.as_deref() == Some(update.commit.as_str());
        let same_content = self.fingerprint.as_ref() == Some(&update.fingerprint);
        if same_commit || same_content {
            return false;
        }
        self.commit = Some(update.commit.clone());
        self.fingerprint = Some(update.fingerprint.clone());
        true
    }

    /// Whether the agent has the content of `update` (or its commit).
    pub fn is_up_to_date(&self, update: &ConfigUpdate) -> bool {
        self.commit.as_deref() == Some(update.commit.as_str())
            || self.fingerprint.as_ref() == Some(&update.fingerprint)
    }

    /// The commit the agent has, if known.
    pub fn commit(&self) -> Option<&str> {
        self.commit.as_deref()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn update(commit: &str, yaml: &str) -> ConfigUpdate {
        let file = ConfigFile::parse(yaml).unwrap();
        ConfigUpdate::new(commit, &file, &ProjectId::new("group/config").unwrap())
    }

    #[test]
    fn the_wire_form_round_trips_and_the_fingerprint_is_checked() {
        let u = update(
            "c1",
            "observability: {logging: {level: debug}}\nuser_access: {access_as: {agent: {}}, projects: [{id: g/p}]}\n",
        );
        let back = ConfigUpdate::from_json(&u.to_json()).unwrap();
        assert_eq!(back, u);
        // The frame is the JSON with its length prefix.
        let frame = u.encode_frame();
        let json = u.to_json();
        assert_eq!(&frame[frame.len() - json.len()..], &json[..]);
        let mut tampered = u.clone();
        tampered.config.observability.logging.level = crate::LogLevel::Off;
        assert!(matches!(
            ConfigUpdate::from_json(&tampered.to_json()),
            Err(UpdateError::Fingerprint { .. })
        ));
        assert!(matches!(
            ConfigUpdate::from_json(b"{\"commit\":1}"),
            Err(UpdateError::Json(_))
        ));
        // Unknown fields are ignored.
        let mut v: serde_json::Value = serde_json::from_slice(&u.to_json()).unwrap();
        v["future"] = serde_json::json!({"x": 1});
        assert_eq!(
            ConfigUpdate::from_json(&serde_json::to_vec(&v).unwrap()).unwrap(),
            u
        );
    }

    #[test]
    fn long_messages_get_multi_octet_prefixes() {
        let mut u = update("c1", "");
        u.commit = "a".repeat(300);
        let frame = u.encode_frame();
        let len = u.to_json().len();
        assert!(len >= 128);
        assert_eq!(frame.len(), len + 2);
        assert_eq!(
            usize::from(frame[0] & 0x7f) | (usize::from(frame[1]) << 7),
            len
        );
    }

    #[test]
    fn only_a_new_commit_with_new_content_is_sent() {
        let a1 = update("c1", "observability: {logging: {level: debug}}\n");
        let a2 = update("c2", "observability: {logging: {level: debug}}\n");
        let b3 = update("c3", "observability: {logging: {level: error}}\n");
        // A fresh agent gets the first one, and nothing again.
        let mut d = Delivery::new(None, None);
        assert!(d.offer(&a1));
        assert!(!d.offer(&a1));
        // A new commit with the same content is not sent.
        assert!(!d.offer(&a2));
        assert!(d.is_up_to_date(&a2));
        assert!(d.offer(&b3));
        // A reconnecting agent naming its commit gets nothing; naming only an old commit, it does.
        assert!(!Delivery::new(Some("c3".into()), None).offer(&b3));
        assert!(Delivery::new(Some("c1".into()), None).offer(&b3));
        assert!(
            !Delivery::new(Some("c1".into()), Some(a1.fingerprint.clone())).offer(&a2),
            "same content under another commit"
        );
    }

    proptest! {
        /// Whatever the sequence of good configurations, an update is sent exactly when its commit
        /// and content both differ from what the agent last got, and the agent ends up with the
        /// content of the last one.
        #[test]
        fn the_agent_converges_and_never_gets_a_duplicate(
            seq in prop::collection::vec((0u8..4, 0u8..3), 1..30),
        ) {
            let levels = ["debug", "info", "error"];
            let mut d = Delivery::new(None, None);
            let mut has: Option<(String, Fingerprint)> = None;
            for (c, l) in seq {
                let u = update(&format!("c{c}"), &format!("observability: {{logging: {{level: {}}}}}\n", levels[l as usize]));
                let expected = has.as_ref().is_none_or(|(hc, hf)| *hc != u.commit && *hf != u.fingerprint);
                prop_assert_eq!(d.offer(&u), expected);
                if expected {
                    has = Some((u.commit.clone(), u.fingerprint.clone()));
                }
                prop_assert!(d.is_up_to_date(&u));
            }
        }
    }
}
