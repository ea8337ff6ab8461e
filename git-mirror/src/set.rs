//! All mirrors of one kas: [`MirrorSet`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::auth::Remote;
use crate::error::Error;
use crate::mirror::{Limits, Mirror, Probe, Update};
use crate::url::RepoId;
use crate::want::Want;

/// HTTP agents (connection pools) shared by all mirrors, one per trust configuration.
pub(crate) struct Agents {
    user_agent: String,
    by_ca: Mutex<HashMap<Option<PathBuf>, ureq::Agent>>,
}

impl Agents {
    pub(crate) fn get(&self, ca_file: Option<&Path>) -> Result<ureq::Agent, Error> {
        let mut map = self.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        let key = ca_file.map(Path::to_path_buf);
        if let Some(a) = map.get(&key) {
            return Ok(a.clone());
        }
        let roots = match ca_file {
            Some(path) => Some(
                crate::http::read_roots(path).map_err(|detail| Error::Local {
                    detail: format!("CA file: {detail}"),
                })?,
            ),
            None => None,
        };
        let agent = crate::http::agent(roots, &self.user_agent);
        map.insert(key, agent.clone());
        Ok(agent)
    }
}

/// The mirrors of every repository kas reads, under one state directory: `<root>/<name>.git`, the name
/// derived from the normalised URL ([`crate::RepoUrl::mirror_dir_name`]: a slug and a hash, never a path
/// traversal). Mirrors are opened (or created) on first use and kept open.
pub struct MirrorSet {
    root: PathBuf,
    limits: Limits,
    agents: Arc<Agents>,
    mirrors: Mutex<HashMap<RepoId, Arc<Mirror>>>,
}

impl std::fmt::Debug for MirrorSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorSet")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl MirrorSet {
    /// Opens (creating it if needed) the state directory `root`.
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> Result<Self, Error> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::local(&format!("creating {}", root.display()), e))?;
        Ok(MirrorSet {
            root,
            limits,
            agents: Arc::new(Agents {
                user_agent: format!("kas-git-mirror/{}", env!("CARGO_PKG_VERSION")),
                by_ca: Mutex::new(HashMap::new()),
            }),
            mirrors: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The mirror of `remote`'s repository, opened or created on first use. Remotes that normalise to
    /// the same URL share one mirror; the latest credentials given are used for its next fetch.
    pub fn mirror(&self, remote: &Remote) -> Result<Arc<Mirror>, Error> {
        remote.validate()?;
        let id = remote.url.id();
        let mut mirrors = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = mirrors.get(&id) {
            m.set_remote(remote.clone());
            return Ok(m.clone());
        }
        let dir = self.root.join(remote.url.mirror_dir_name());
        debug_assert_eq!(dir.parent(), Some(self.root.as_path()));
        let mirror = Arc::new(Mirror::open_or_init(
            dir,
            remote.clone(),
            self.agents.clone(),
            self.limits,
        )?);
        mirrors.insert(id, mirror.clone());
        Ok(mirror)
    }

    /// The mirror with this identity, if it was opened.
    pub fn get(&self, id: &RepoId) -> Option<Arc<Mirror>> {
        self.mirrors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// The number of mirrors opened.
    pub fn len(&self) -> usize {
        self.mirrors.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`Mirror::update`] of `remote`'s mirror.
    pub fn update(&self, remote: &Remote, want: &Want) -> Result<Update, Error> {
        self.mirror(remote)?.update(want)
    }

    /// [`Mirror::probe`] of `remote`'s mirror.
    pub fn probe(&self, remote: &Remote, want: &Want) -> Result<Probe, Error> {
        self.mirror(remote)?.probe(want)
    }
}
