//! Mirroring a repository on the local file system without a `git` process.
//!
//! gix's `file://` transport spawns `git-upload-pack`; kas never runs `git`. Instead the source
//! repository is opened with gix and the wanted commit's snapshot (the commit, its tree, sub-trees and
//! blobs: depth 1, like the network fetches) is copied object by object into the mirror, skipping every
//! object the mirror already has. Objects are written children first, so a tree or commit present in the
//! mirror is always complete, and an unchanged sub-tree is skipped without descending into it: an update
//! after a small change copies only the changed blobs and the trees above them.

use std::io::Write as _;

use gix::ObjectId;
use gix::objs::Write as _;

use crate::budget::Budget;
use crate::error::Error;
use crate::snapshot::ReadLimits;
use crate::url::RepoUrl;
use crate::want::Want;

/// What the source says a want points to.
pub(crate) struct SourceRef {
    /// The ref's direct target (an annotated tag object for such tags).
    pub target: ObjectId,
    /// For the default branch: the branch `HEAD` points to.
    pub symref_target: Option<String>,
}

/// Opens the source repository; a missing or unreadable one is [`Error::RepoNotFound`].
pub(crate) fn open_source(url: &RepoUrl) -> Result<gix::Repository, Error> {
    let path = url.local_path().ok_or_else(|| Error::InvalidUrl {
        reason: "not a local repository".into(),
    })?;
    gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| Error::RepoNotFound {
        url: url.to_string(),
        detail: crate::error::chain(&e),
    })
}

/// Resolves `want` in the source (`None` when the ref does not exist).
pub(crate) fn resolve(src: &gix::Repository, want: &Want) -> Result<Option<SourceRef>, Error> {
    let bad = |e: gix::Error| {
        Error::bad_content(format!("source repository: {}", crate::error::chain(&e)))
    };
    match want {
        Want::Commit(c) => Ok(src.has_object(c).then_some(SourceRef {
            target: *c,
            symref_target: None,
        })),
        Want::DefaultBranch => {
            let head = src.head().map_err(bad)?;
            let symref_target = head.referent_name().map(|n| n.as_bstr().to_string());
            match head.id() {
                Some(id) => Ok(Some(SourceRef {
                    target: id.detach(),
                    symref_target,
                })),
                None => Ok(None),
            }
        }
        Want::Branch(_) | Want::Tag(_) => {
            let name = want.remote_ref().unwrap_or_default();
            let Some(mut r) = src.try_find_reference(name.as_str()).map_err(bad)? else {
                return Ok(None);
            };
            // Keep a tag ref's direct target (the tag object), like a network fetch does.
            let direct = r.target().try_id().map(|i| i.to_owned());
            let peeled = r.peel_to_id().map_err(bad)?.detach();
            let target = direct.unwrap_or(peeled);
            Ok(Some(SourceRef {
                target,
                symref_target: None,
            }))
        }
    }
}

/// Counts of one copy.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Copied {
    pub objects: u64,
    pub bytes: u64,
}

/// Copies `target` (a commit, or an annotated tag and its commit) with its tree from `src` into `dst`.
/// Returns the commit id and what was copied.
pub(crate) fn copy_snapshot(
    url: &RepoUrl,
    src: &gix::Repository,
    dst: &gix::Repository,
    target: ObjectId,
    budget: &Budget,
    max_object_bytes: u64,
    limits: ReadLimits,
) -> Result<(ObjectId, Copied), Error> {
    let mut copier = Copier {
        url: url.to_string(),
        src,
        dst,
        budget,
        max_object_bytes,
        limits,
        copied: Copied::default(),
        visited: 0,
    };
    // Peel tags (bounded), copying each tag object after what it points to.
    let mut chain = Vec::new();
    let mut id = target;
    loop {
        let (kind, data) = copier.read(id)?;
        match kind {
            gix::object::Kind::Tag => {
                if chain.len() >= 8 {
                    return Err(Error::bad_content("more than 8 nested tags"));
                }
                let tag = gix::objs::TagRef::from_bytes(&data, src.object_hash())
                    .map_err(|e| Error::bad_content(format!("tag {id}: {e}")))?;
                chain.push((id, data.clone()));
                id = tag.target();
            }
            gix::object::Kind::Commit => break,
            other => {
                return Err(Error::NotACommit {
                    id,
                    kind: other.to_string(),
                });
            }
        }
    }
    let commit = id;
    copier.copy_commit(commit)?;
    for (tag_id, data) in chain.into_iter().rev() {
        copier.write(gix::object::Kind::Tag, &data, tag_id)?;
    }
    Ok((commit, copier.copied))
}

struct Copier<'a> {
    url: String,
    src: &'a gix::Repository,
    dst: &'a gix::Repository,
    budget: &'a Budget,
    max_object_bytes: u64,
    limits: ReadLimits,
    copied: Copied,
    visited: usize,
}

impl Copier<'_> {
    fn read(&mut self, id: ObjectId) -> Result<(gix::object::Kind, Vec<u8>), Error> {
        self.budget.remaining().map_err(|_| Error::Timeout {
            url: self.url.clone(),
            timeout: self.budget.timeout(),
        })?;
        let header = self.src.find_header(id).map_err(|e| {
            if e.is_not_found() {
                Error::bad_content(format!("source repository misses object {id}"))
            } else {
                Error::bad_content(format!("source object {id}: {}", crate::error::chain(&e)))
            }
        })?;
        if header.size() > self.max_object_bytes {
            return Err(Error::ObjectTooLarge {
                url: self.url.clone(),
                limit: self.max_object_bytes,
                detail: format!("{} {id} has {} bytes", header.kind(), header.size()),
            });
        }
        let object = self.src.find_object(id).map_err(|e| {
            Error::bad_content(format!("source object {id}: {}", crate::error::chain(&e)))
        })?;
        Ok((object.kind, object.detach().data))
    }

    fn write(
        &mut self,
        kind: gix::object::Kind,
        data: &[u8],
        expected: ObjectId,
    ) -> Result<(), Error> {
        if self.dst.has_object(expected) {
            return Ok(());
        }
        self.budget
            .charge(data.len())
            .map_err(|_| Error::FetchTooLarge {
                url: self.url.clone(),
                limit: self.budget.max_bytes(),
            })?;
        let written = self
            .dst
            .objects
            .write_buf(kind, data)
            .map_err(|e| Error::local("writing an object into the mirror", e))?;
        if written != expected {
            return Err(Error::bad_content(format!(
                "source object {expected} hashes to {written}"
            )));
        }
        self.copied.objects += 1;
        self.copied.bytes += data.len() as u64;
        Ok(())
    }

    fn copy_commit(&mut self, id: ObjectId) -> Result<(), Error> {
        if self.dst.has_object(id) {
            return Ok(());
        }
        let (_, data) = self.read(id)?;
        let commit = gix::objs::CommitRef::from_bytes(&data, self.src.object_hash())
            .map_err(|e| Error::bad_content(format!("commit {id}: {e}")))?;
        let tree = commit.tree();
        self.copy_tree(tree, 0)?;
        self.write(gix::object::Kind::Commit, &data, id)
    }

    fn copy_tree(&mut self, id: ObjectId, depth: usize) -> Result<(), Error> {
        if self.dst.has_object(id) {
            return Ok(());
        }
        if depth > self.limits.max_depth {
            return Err(Error::TreeTooDeep {
                path: format!("tree {id}"),
                limit: self.limits.max_depth,
            });
        }
        let (kind, data) = self.read(id)?;
        if kind != gix::object::Kind::Tree {
            return Err(Error::bad_content(format!(
                "{id} should be a tree but is a {kind}"
            )));
        }
        let mut children = Vec::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&data, self.src.object_hash()) {
            let entry = entry.map_err(|e| Error::bad_content(format!("tree {id}: {e}")))?;
            self.visited += 1;
            if self.visited > self.limits.max_entries {
                return Err(Error::TooManyEntries {
                    path: String::new(),
                    limit: self.limits.max_entries,
                });
            }
            children.push((entry.mode.kind(), entry.oid.to_owned()));
        }
        for (kind, child) in children {
            use gix::objs::tree::EntryKind as K;
            match kind {
                K::Tree => self.copy_tree(child, depth + 1)?,
                K::Blob | K::BlobExecutable | K::Link => {
                    if !self.dst.has_object(child) {
                        let (k, blob) = self.read(child)?;
                        if k != gix::object::Kind::Blob {
                            return Err(Error::bad_content(format!(
                                "{child} should be a blob but is a {k}"
                            )));
                        }
                        self.write(k, &blob, child)?;
                    }
                }
                // Submodules live in other repositories.
                K::Commit => {}
            }
        }
        self.write(gix::object::Kind::Tree, &data, id)
    }
}

/// Adds `commit` to the mirror's `shallow` file (its parents were not copied), atomically.
pub(crate) fn mark_shallow(dst: &gix::Repository, commit: ObjectId) -> Result<(), Error> {
    let path = dst.path().join("shallow");
    let mut lines: Vec<String> = match std::fs::read_to_string(&path) {
        Ok(s) => s.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::local("reading the shallow file", e)),
    };
    let hex = commit.to_string();
    if lines.contains(&hex) {
        return Ok(());
    }
    lines.push(hex);
    lines.sort();
    let tmp = dst.path().join("shallow.kas-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        for l in &lines {
            writeln!(f, "{l}")?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::local("writing the shallow file", e))
}
