//! Reading one commit's tree from a mirror: files under a directory, files matching a glob, one file
//! with a size limit. Nothing is checked out; everything is read from the object database.
//!
//! Hostile content is bounded and reported, never followed: entry names that cannot occur in a
//! well-formed tree (`..`, `.`, empty, containing `/` or NUL, `.git`) are [`Error::BadContent`]; walks stop
//! at [`ReadLimits::max_entries`] and [`ReadLimits::max_depth`]; blob sizes are checked from the
//! object header before anything is decompressed; symbolic links are listed as skipped and, when a
//! single file is read through one, resolved inside the tree only (absolute targets or targets climbing
//! above the root are [`Error::SymlinkEscapes`]); submodules are listed as skipped.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use gix::ObjectId;
use gix::bstr::{BStr, ByteSlice};
use gix::objs::tree::EntryKind as GixKind;

use crate::error::Error;

/// The kind of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Executable,
    Symlink,
    Submodule,
    Directory,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::File => "file",
            EntryKind::Executable => "executable file",
            EntryKind::Symlink => "symbolic link",
            EntryKind::Submodule => "submodule",
            EntryKind::Directory => "directory",
        })
    }
}

impl From<GixKind> for EntryKind {
    fn from(k: GixKind) -> Self {
        match k {
            GixKind::Tree => EntryKind::Directory,
            GixKind::Blob => EntryKind::File,
            GixKind::BlobExecutable => EntryKind::Executable,
            GixKind::Link => EntryKind::Symlink,
            GixKind::Commit => EntryKind::Submodule,
        }
    }
}

/// One entry of a tree, with its path from the repository root (`/`-separated, no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub id: ObjectId,
}

impl Entry {
    /// A regular or executable file.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, EntryKind::File | EntryKind::Executable)
    }
}

/// Why a walk left an entry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Symbolic links are never followed by walks.
    Symlink,
    /// Submodules point into other repositories.
    Submodule,
    /// The name is not UTF-8 (its path is shown lossily).
    NonUtf8Name,
}

/// An entry a walk did not return, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: SkipReason,
}

/// The files a walk or glob found (sorted by path), and what it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub files: Vec<Entry>,
    pub skipped: Vec<Skipped>,
}

/// Bounds on reading trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// The most tree entries one walk visits (directories included).
    pub max_entries: usize,
    /// The deepest directory nesting a walk or lookup descends into.
    pub max_depth: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_entries: 100_000,
            max_depth: 64,
        }
    }
}

/// Symbolic links followed while resolving one path.
const MAX_SYMLINK_HOPS: usize = 8;
/// The longest symbolic link target read.
const MAX_SYMLINK_TARGET: u64 = 4096;
/// The most alternatives a glob's `{a,b}` groups may expand to.
const MAX_GLOB_ALTERNATIVES: usize = 64;

/// One commit of a mirror, for reading. Cheap to create; it holds a thread-local handle to the mirror's
/// object database and can be used while the mirror is being updated (new objects only add).
pub struct Snapshot {
    repo: gix::Repository,
    commit: ObjectId,
    tree: ObjectId,
    limits: ReadLimits,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("commit", &self.commit)
            .field("tree", &self.tree)
            .finish()
    }
}

impl Snapshot {
    pub(crate) fn new(
        repo: gix::Repository,
        commit: ObjectId,
        limits: ReadLimits,
    ) -> Result<Self, Error> {
        let object = find(&repo, commit)?;
        let commit_obj = match object.kind {
            gix::object::Kind::Commit => object.into_commit(),
            other => {
                return Err(Error::NotACommit {
                    id: commit,
                    kind: other.to_string(),
                });
            }
        };
        let tree = commit_obj
            .tree_id()
            .map_err(|e| Error::bad_content(format!("commit {commit}: {e}")))?
            .detach();
        drop(commit_obj);
        Ok(Snapshot {
            repo,
            commit,
            tree,
            limits,
        })
    }

    /// The commit this snapshot reads.
    pub fn commit(&self) -> ObjectId {
        self.commit
    }

    /// The commit's root tree.
    pub fn tree(&self) -> ObjectId {
        self.tree
    }

    /// The entry at `path`, without following a symbolic link at the last component (links in the
    /// directories leading to it are followed inside the tree). `None` if there is none.
    pub fn entry(&self, path: &str) -> Result<Option<Entry>, Error> {
        self.resolve(path, false)
    }

    /// The content of the file at `path`, following symbolic links inside the tree.
    /// [`Error::PathNotFound`] if there is none, [`Error::NotAFile`] for a directory or submodule,
    /// [`Error::BlobTooLarge`] (decided from the object header, nothing is decompressed) if it has more
    /// than `max_bytes`.
    pub fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        match self.try_read_file(path, max_bytes)? {
            Some(b) => Ok(b),
            None => Err(Error::PathNotFound {
                commit: self.commit,
                path: path.to_owned(),
            }),
        }
    }

    /// Like [`Snapshot::read_file`], but a missing file is `Ok(None)`.
    pub fn try_read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some(entry) = self.resolve(path, true)? else {
            return Ok(None);
        };
        if !entry.is_file() {
            return Err(Error::NotAFile {
                path: entry.path,
                kind: entry.kind,
            });
        }
        self.read_blob_at(entry.id, &entry.path, max_bytes)
            .map(Some)
    }

    /// The content of a blob by id, with the same size check.
    pub fn read_blob(&self, id: ObjectId, max_bytes: u64) -> Result<Vec<u8>, Error> {
        self.read_blob_at(id, &id.to_string(), max_bytes)
    }

    /// The size of a blob from its header, without decompressing it.
    pub fn blob_size(&self, id: ObjectId) -> Result<u64, Error> {
        let header = self
            .repo
            .find_header(id)
            .map_err(|e| missing_or_corrupt(id, &e))?;
        if header.kind() != gix::object::Kind::Blob {
            return Err(Error::bad_content(format!(
                "{id} is a {}, expected a blob",
                header.kind()
            )));
        }
        Ok(header.size())
    }

    fn read_blob_at(&self, id: ObjectId, path: &str, max_bytes: u64) -> Result<Vec<u8>, Error> {
        let size = self.blob_size(id)?;
        if size > max_bytes {
            return Err(Error::BlobTooLarge {
                path: path.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        let object = find(&self.repo, id)?;
        if object.data.len() as u64 != size {
            return Err(Error::bad_content(format!(
                "blob {id}: header says {size} bytes, content has {}",
                object.data.len()
            )));
        }
        Ok(object.detach().data)
    }

    /// The immediate entries of the directory `dir` (`""` for the root), directories included, in tree
    /// order. Symbolic links and submodules are returned with their kind (nothing is followed).
    pub fn list_dir(&self, dir: &str) -> Result<Vec<Entry>, Error> {
        let tree = match self.dir_tree(dir)? {
            Some(t) => t,
            None => return Ok(Vec::new()),
        };
        let prefix = normal_dir(dir)?;
        let mut out = Vec::new();
        for item in self.entries(tree)? {
            let (name, kind, id) = item?;
            let Some(name) = name else { continue };
            out.push(Entry {
                path: join(&prefix, &name),
                kind,
                id,
            });
            if out.len() > self.limits.max_entries {
                return Err(Error::TooManyEntries {
                    path: prefix,
                    limit: self.limits.max_entries,
                });
            }
        }
        Ok(out)
    }

    /// All files under `dir` (`""` for everything), recursively, sorted by path. Symbolic links,
    /// submodules and non-UTF-8 names are skipped and reported.
    pub fn walk(&self, dir: &str) -> Result<Listing, Error> {
        self.walk_filtered(dir, &|_| true)
    }

    /// All files whose path matches `pattern`, sorted by path, with what was skipped on the way.
    ///
    /// Glob syntax (as GitLab's `gitops.manifest_projects[].paths[].glob`): `*` and `?` match within one
    /// path component, `**/` matches zero or more directories, `[a-z]` classes, and `{a,b}`
    /// alternatives (nestable, at most 64 in total). A leading `/` is ignored. Only the directories below
    /// the pattern's literal prefix are walked.
    pub fn glob(&self, pattern: &str) -> Result<Listing, Error> {
        let alternatives = expand_braces(pattern.trim_start_matches('/'))?;
        let mut roots: Vec<String> = Vec::new();
        for alt in &alternatives {
            if alt.is_empty() {
                return Err(Error::InvalidPath {
                    path: pattern.to_owned(),
                    reason: "empty pattern".into(),
                });
            }
            let root = literal_dir_prefix(alt);
            // A root that is below another root is already covered.
            if !roots.iter().any(|r| is_under(&root, r)) {
                roots.retain(|r| !is_under(r, &root));
                roots.push(root);
            }
        }
        let matches = |path: &str| {
            alternatives.iter().any(|alt| {
                gix::glob::wildmatch(
                    alt.as_bytes().as_bstr(),
                    path.as_bytes().as_bstr(),
                    gix::glob::wildmatch::Mode::NO_MATCH_SLASH_LITERAL,
                )
            })
        };
        let mut merged = BTreeMap::new();
        let mut skipped = Vec::new();
        for root in roots {
            let listing = self.walk_filtered(&root, &matches)?;
            for f in listing.files {
                merged.insert(f.path.clone(), f);
            }
            skipped.extend(listing.skipped);
        }
        Ok(Listing {
            files: merged.into_values().collect(),
            skipped,
        })
    }

    fn walk_filtered(&self, dir: &str, keep: &dyn Fn(&str) -> bool) -> Result<Listing, Error> {
        let prefix = normal_dir(dir)?;
        let Some(tree) = self.dir_tree(&prefix)? else {
            return Ok(Listing::default());
        };
        let base_depth = if prefix.is_empty() {
            0
        } else {
            prefix.split('/').count()
        };
        let mut listing = Listing::default();
        let mut visited = 0usize;
        let mut queue = VecDeque::from([(prefix.clone(), tree, base_depth)]);
        while let Some((path, tree, depth)) = queue.pop_front() {
            for item in self.entries(tree)? {
                let (name, kind, id) = item?;
                visited += 1;
                if visited > self.limits.max_entries {
                    return Err(Error::TooManyEntries {
                        path: prefix,
                        limit: self.limits.max_entries,
                    });
                }
                let Some(name) = name else {
                    listing.skipped.push(Skipped {
                        path: join(&path, "<non-UTF-8 name>"),
                        reason: SkipReason::NonUtf8Name,
                    });
                    continue;
                };
                let full = join(&path, &name);
                match kind {
                    EntryKind::Directory => {
                        if depth + 1 > self.limits.max_depth {
                            return Err(Error::TreeTooDeep {
                                path: full,
                                limit: self.limits.max_depth,
                            });
                        }
                        queue.push_back((full, id, depth + 1));
                    }
                    EntryKind::Symlink | EntryKind::Submodule => {
                        if keep(&full) {
                            listing.skipped.push(Skipped {
                                path: full,
                                reason: if kind == EntryKind::Symlink {
                                    SkipReason::Symlink
                                } else {
                                    SkipReason::Submodule
                                },
                            });
                        }
                    }
                    EntryKind::File | EntryKind::Executable => {
                        if keep(&full) {
                            listing.files.push(Entry {
                                path: full,
                                kind,
                                id,
                            });
                        }
                    }
                }
            }
        }
        listing.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listing)
    }

    /// The tree of directory `dir`, `None` if it does not exist or is not a directory.
    fn dir_tree(&self, dir: &str) -> Result<Option<ObjectId>, Error> {
        if normal_dir(dir)?.is_empty() {
            return Ok(Some(self.tree));
        }
        Ok(match self.resolve(dir, true)? {
            Some(e) if e.kind == EntryKind::Directory => Some(e.id),
            _ => None,
        })
    }

    /// Decodes a tree into validated entries: `(name, kind, id)`, with `None` names for non-UTF-8 ones.
    #[allow(clippy::type_complexity)]
    fn entries(
        &self,
        tree: ObjectId,
    ) -> Result<Vec<Result<(Option<String>, EntryKind, ObjectId), Error>>, Error> {
        let object = find(&self.repo, tree)?;
        if object.kind != gix::object::Kind::Tree {
            return Err(Error::bad_content(format!(
                "{tree} should be a tree but is a {}",
                object.kind
            )));
        }
        let iter = gix::objs::TreeRefIter::from_bytes(&object.data, self.repo.object_hash());
        let mut out = Vec::new();
        for entry in iter {
            let entry = entry.map_err(|e| Error::bad_content(format!("tree {tree}: {e}")))?;
            out.push(
                check_name(entry.filename, tree)
                    .map(|name| (name, entry.mode.kind().into(), entry.oid.to_owned())),
            );
        }
        Ok(out)
    }

    /// Finds the entry named `name` in `tree`.
    fn child(&self, tree: ObjectId, name: &str) -> Result<Option<(EntryKind, ObjectId)>, Error> {
        for item in self.entries(tree)? {
            let (n, kind, id) = item?;
            if n.as_deref() == Some(name) {
                return Ok(Some((kind, id)));
            }
        }
        Ok(None)
    }

    /// Resolves `path` component by component from the root, following symbolic links inside the tree
    /// (always for directories on the way, for the last component only if `follow_last`).
    fn resolve(&self, path: &str, follow_last: bool) -> Result<Option<Entry>, Error> {
        let mut pending: VecDeque<String> = split_user_path(path)?.into();
        // The directories resolved so far: (name, tree id); the root has no name.
        let mut stack: Vec<(String, ObjectId)> = Vec::new();
        let mut hops = 0usize;
        let current =
            |stack: &Vec<(String, ObjectId)>| stack.last().map(|s| s.1).unwrap_or(self.tree);
        let here = |stack: &Vec<(String, ObjectId)>| {
            stack
                .iter()
                .map(|s| s.0.as_str())
                .collect::<Vec<_>>()
                .join("/")
        };
        if pending.is_empty() {
            return Ok(Some(Entry {
                path: String::new(),
                kind: EntryKind::Directory,
                id: self.tree,
            }));
        }
        while let Some(name) = pending.pop_front() {
            // Only symbolic link targets can bring `.` and `..` here (user paths are checked).
            if name == "." {
                continue;
            }
            if name == ".." {
                if stack.pop().is_none() {
                    return Err(Error::SymlinkEscapes {
                        path: path.to_owned(),
                        detail: "a link target climbs above the repository root".into(),
                    });
                }
                continue;
            }
            let Some((kind, id)) = self.child(current(&stack), &name)? else {
                return Ok(None);
            };
            let last = pending.is_empty();
            match kind {
                EntryKind::Directory => {
                    if stack.len() + 1 > self.limits.max_depth {
                        return Err(Error::TreeTooDeep {
                            path: path.to_owned(),
                            limit: self.limits.max_depth,
                        });
                    }
                    if last {
                        return Ok(Some(Entry {
                            path: join(&here(&stack), &name),
                            kind,
                            id,
                        }));
                    }
                    stack.push((name, id));
                }
                EntryKind::Symlink if !last || follow_last => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Error::SymlinkEscapes {
                            path: path.to_owned(),
                            detail: format!("more than {MAX_SYMLINK_HOPS} links followed"),
                        });
                    }
                    let target = self.link_target(id, path)?;
                    let mut parts: Vec<String> = target
                        .split('/')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect();
                    parts.extend(pending.drain(..));
                    pending = parts.into();
                }
                _ if last => {
                    return Ok(Some(Entry {
                        path: join(&here(&stack), &name),
                        kind,
                        id,
                    }));
                }
                // A file, submodule or unfollowed link in the middle of a path: no such path.
                _ => return Ok(None),
            }
        }
        // The path ended in `..` or `.` through a link: the directory reached.
        let id = current(&stack);
        Ok(Some(Entry {
            path: here(&stack),
            kind: EntryKind::Directory,
            id,
        }))
    }

    fn link_target(&self, id: ObjectId, path: &str) -> Result<String, Error> {
        let escapes = |detail: &str| Error::SymlinkEscapes {
            path: path.to_owned(),
            detail: detail.to_owned(),
        };
        if self.blob_size(id)? > MAX_SYMLINK_TARGET {
            return Err(escapes("the link target is too long"));
        }
        let data = find(&self.repo, id)?.detach().data;
        let target =
            String::from_utf8(data).map_err(|_| escapes("the link target is not UTF-8"))?;
        if target.is_empty() || target.contains('\0') {
            return Err(escapes("empty or invalid link target"));
        }
        if target.starts_with('/') || target.starts_with('\\') || target.contains(':') {
            return Err(escapes("the link target is an absolute path"));
        }
        Ok(target)
    }
}

fn find(repo: &gix::Repository, id: ObjectId) -> Result<gix::Object<'_>, Error> {
    repo.find_object(id).map_err(|e| missing_or_corrupt(id, &e))
}

fn missing_or_corrupt(id: ObjectId, e: &gix::Error) -> Error {
    if e.is_not_found() {
        Error::MissingObject { id }
    } else if e.is_resource_exhausted() {
        Error::bad_content(format!("object {id} exceeds the allocation limit"))
    } else {
        Error::bad_content(format!("object {id}: {}", crate::error::chain(e)))
    }
}

/// Validates a tree entry name; `Ok(None)` for names that are not UTF-8.
fn check_name(name: &BStr, tree: ObjectId) -> Result<Option<String>, Error> {
    let hostile = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(&b'/')
        || name.contains(&b'\0')
        || name.eq_ignore_ascii_case(b".git");
    if hostile {
        return Err(Error::bad_content(format!(
            "tree {tree} has an entry named {:?}",
            name.to_str_lossy()
        )));
    }
    Ok(name.to_str().ok().map(str::to_owned))
}

/// A user-supplied path as components: no leading or trailing `/` needed, no `.`, `..` or empty parts.
fn split_user_path(path: &str) -> Result<Vec<String>, Error> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    for c in trimmed.split('/') {
        if c.is_empty() || c == "." || c == ".." || c.contains('\0') {
            return Err(Error::InvalidPath {
                path: path.chars().take(200).collect(),
                reason: "paths must not contain empty, '.' or '..' components".into(),
            });
        }
        parts.push(c.to_owned());
    }
    Ok(parts)
}

fn normal_dir(dir: &str) -> Result<String, Error> {
    Ok(split_user_path(dir)?.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty() || path == dir || path.starts_with(&format!("{dir}/"))
}

/// The directories of a pattern before its first component with a wildcard.
fn literal_dir_prefix(pattern: &str) -> String {
    let parts: Vec<&str> = pattern.split('/').collect();
    let mut out = Vec::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if part.contains(['*', '?', '[', '\\']) || part.is_empty() || *part == "." || *part == ".."
        {
            break;
        }
        out.push(*part);
    }
    out.join("/")
}

/// Expands `{a,b}` groups (nestable) into alternatives, at most [`MAX_GLOB_ALTERNATIVES`].
fn expand_braces(pattern: &str) -> Result<Vec<String>, Error> {
    let invalid = |reason: &str| Error::InvalidPath {
        path: pattern.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    if pattern.len() > 4096 {
        return Err(invalid("pattern longer than 4096 bytes"));
    }
    let mut results = vec![String::new()];
    expand_into(pattern, &mut results).map_err(invalid)?;
    Ok(results)
}

fn expand_into(pattern: &str, results: &mut Vec<String>) -> Result<(), &'static str> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'{' => {
                let close = matching_brace(bytes, i).ok_or("unbalanced '{'")?;
                let lit = &pattern[literal_start..i];
                for r in results.iter_mut() {
                    r.push_str(lit);
                }
                let mut next = Vec::new();
                for option in split_top_level(&pattern[i + 1..close]) {
                    let mut sub = results.clone();
                    expand_into(option, &mut sub)?;
                    next.extend(sub);
                    if next.len() > MAX_GLOB_ALTERNATIVES {
                        return Err("too many {…} alternatives");
                    }
                }
                *results = next;
                i = close + 1;
                literal_start = i;
            }
            b'}' => return Err("unbalanced '}'"),
            _ => i += 1,
        }
    }
    let lit = &pattern[literal_start.min(pattern.len())..];
    for r in results.iter_mut() {
        r.push_str(lit);
    }
    Ok(())
}

fn matching_brace(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn split_top_level(s: &str) -> Vec<&str> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start.min(s.len())..]);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_and_are_bounded() {
        assert_eq!(
            expand_braces("**/*.{yaml,yml,json}").unwrap(),
            vec!["**/*.yaml", "**/*.yml", "**/*.json"]
        );
        assert_eq!(
            expand_braces("{a,b/{c,d}}/x").unwrap(),
            vec!["a/x", "b/c/x", "b/d/x"]
        );
        assert_eq!(expand_braces("plain").unwrap(), vec!["plain"]);
        assert!(expand_braces("{a,b").is_err());
        assert!(expand_braces("a}").is_err());
        assert!(expand_braces("{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}").is_err());
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(literal_dir_prefix("manifests/**/*.yaml"), "manifests");
        assert_eq!(literal_dir_prefix("a/b/c.yaml"), "a/b");
        assert_eq!(literal_dir_prefix("**/*.yaml"), "");
        assert_eq!(literal_dir_prefix("x*/y"), "");
        assert!(is_under("a/b", "a") && !is_under("ab", "a") && is_under("x", ""));
    }

    #[test]
    fn user_paths() {
        assert_eq!(split_user_path("/a/b/").unwrap(), vec!["a", "b"]);
        assert!(split_user_path("a/../b").is_err());
        assert!(split_user_path("a//b").is_err());
        assert!(split_user_path("").unwrap().is_empty());
    }

    #[test]
    fn hostile_names() {
        let t = ObjectId::null(gix::hash::Kind::Sha1);
        for bad in ["..", ".", "", "a/b", ".GIT", "a\0b"] {
            assert!(check_name(bad.as_bytes().as_bstr(), t).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_name(b"ok.yaml".as_bstr(), t).unwrap().as_deref(),
            Some("ok.yaml")
        );
        assert_eq!(check_name(b"\xff".as_bstr(), t).unwrap(), None);
    }
}
