//! From a commit's files to its desired set: select files by glob, parse multi-document YAML and JSON
//! (JSON is read as the YAML 1.2 it is, by the same bounded loader), flatten `List`s, validate each
//! object, default namespaces, refuse duplicates.
//!
//! Safety first: any error in any selected file rejects the whole commit
//! ([`ParsedCommit::into_desired`] fails) — a commit is applied entirely or not at all, never a
//! half-parsed subset that would prune what failed to parse.
//!
//! Bounded: at most [`ManifestLimits::max_files`] files, [`ManifestLimits::max_file_bytes`] per file
//! and [`ManifestLimits::max_total_bytes`] in all, and a node/expansion budget for the whole commit,
//! so YAML bombs, deep nesting and huge strings fail with a clear error and bounded memory.

use std::collections::BTreeMap;
use std::fmt;

use agent_config::ManifestGlob;
use agent_config::names::{is_dns_label, is_dns_subdomain};
use agent_config::yaml::{self, Node};
use serde::{Deserialize, Serialize};

use crate::object::{CRD_GROUP, CRD_KIND, Object, ObjectId, Source, group_of};
use crate::scope::{CrdScopes, Scope, ScopeResolver};

/// Bounds for one commit. Defaults follow GitLab kas's (5 MiB per file, 20 MiB in all, 1000 files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestLimits {
    /// Most files selected by the globs.
    pub max_files: usize,
    /// Largest manifest file.
    pub max_file_bytes: usize,
    /// Most bytes of all selected files together.
    pub max_total_bytes: usize,
    /// Most YAML nodes in all files together (counting alias expansion).
    pub max_total_nodes: usize,
    /// Most scalar bytes in all files together (counting alias copies).
    pub max_total_expanded_bytes: usize,
    /// Deepest nesting in a manifest.
    pub max_depth: usize,
    /// Most alias uses in one file.
    pub max_aliases: usize,
    /// Most nodes aliases may copy in one file.
    pub max_alias_nodes: usize,
    /// Most objects in the commit.
    pub max_objects: usize,
}

impl Default for ManifestLimits {
    fn default() -> Self {
        ManifestLimits {
            max_files: 1000,
            max_file_bytes: 5 << 20,
            max_total_bytes: 20 << 20,
            max_total_nodes: 1_000_000,
            max_total_expanded_bytes: 32 << 20,
            max_depth: 100,
            max_aliases: 10_000,
            max_alias_nodes: 100_000,
            max_objects: 10_000,
        }
    }
}

/// The class of a manifest error (stable, for metrics and the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestErrorKind {
    /// A file or the commit is over a size or count limit.
    TooLarge,
    /// A file is binary or not UTF-8.
    NotText,
    /// A file is not valid YAML/JSON, or breaks a YAML limit (depth, bombs).
    Syntax,
    /// A document is not a valid Kubernetes object.
    InvalidObject,
    /// Two documents describe the same object.
    Duplicate,
}

/// One error in a commit's manifests: the file, the position, what is wrong. All are the manifest
/// author's fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ManifestError {
    /// The class.
    pub kind: ManifestErrorKind,
    /// Repository path (empty for commit-wide limits).
    pub path: String,
    /// Line, from 1 (0 when the error concerns the whole file).
    pub line: u32,
    /// Column, from 1 (0 when the error concerns the whole file).
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            f.write_str(&self.path)?;
            if self.line > 0 {
                write!(f, ":{}:{}", self.line, self.column)?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl ManifestError {
    fn new(
        kind: ManifestErrorKind,
        path: &str,
        pos: yaml::Pos,
        message: impl Into<String>,
    ) -> Self {
        ManifestError {
            kind,
            path: path.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    fn file(kind: ManifestErrorKind, path: &str, message: impl Into<String>) -> Self {
        Self::new(kind, path, yaml::Pos::default(), message)
    }
}

/// The parse of one commit: every valid object and every error. Only an error-free parse may be
/// applied ([`ParsedCommit::into_desired`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedCommit {
    /// Valid objects, sorted by id.
    pub objects: Vec<Object>,
    /// Errors, in file and position order.
    pub errors: Vec<ManifestError>,
    /// Things fixed up that the author may want to know (a namespace on a cluster-scoped object).
    pub warnings: Vec<ManifestError>,
}

/// A commit whose manifests cannot be applied; nothing of it is applied and nothing is pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("commit {commit} rejected: {} error(s), first: {}", errors.len(), errors.first().map(ToString::to_string).unwrap_or_default())]
pub struct RejectedCommit {
    /// The commit.
    pub commit: String,
    /// Why (never empty).
    pub errors: Vec<ManifestError>,
}

/// A commit's complete, valid desired set: what the sync decision drives the cluster to. Its JSON
/// form is the wire form (kas → agentk on the `gitops` service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredSet {
    /// The commit id.
    pub commit: String,
    /// The objects, sorted by id, unique.
    pub objects: Vec<Object>,
}

impl DesiredSet {
    /// A set from objects; duplicates are refused (the error names both sources).
    pub fn new(
        commit: impl Into<String>,
        mut objects: Vec<Object>,
    ) -> Result<DesiredSet, RejectedCommit> {
        let commit = commit.into();
        objects.sort_by(|a, b| a.id.cmp(&b.id));
        let errors: Vec<ManifestError> = objects
            .windows(2)
            .filter(|w| w[0].id == w[1].id)
            .map(|w| duplicate_error(&w[0], &w[1]))
            .collect();
        if errors.is_empty() {
            Ok(DesiredSet { commit, objects })
        } else {
            Err(RejectedCommit { commit, errors })
        }
    }

    /// The ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &ObjectId> {
        self.objects.iter().map(|o| &o.id)
    }

    /// The object with this id.
    pub fn get(&self, id: &ObjectId) -> Option<&Object> {
        self.objects
            .binary_search_by(|o| o.id.cmp(id))
            .ok()
            .map(|i| &self.objects[i])
    }
}

fn duplicate_error(first: &Object, second: &Object) -> ManifestError {
    ManifestError {
        kind: ManifestErrorKind::Duplicate,
        path: second.source.path.clone(),
        line: second.source.line,
        column: 1,
        message: format!(
            "{} is defined twice (also at {}:{})",
            second.id, first.source.path, first.source.line
        ),
    }
}

impl ParsedCommit {
    /// The desired set, or the rejection if anything failed.
    pub fn into_desired(self, commit: impl Into<String>) -> Result<DesiredSet, RejectedCommit> {
        let commit = commit.into();
        if !self.errors.is_empty() {
            return Err(RejectedCommit {
                commit,
                errors: self.errors,
            });
        }
        DesiredSet::new(commit, self.objects)
    }
}

/// The paths a project's globs select, sorted, without duplicates. `paths` are repository paths of
/// files (blobs), with or without a leading `/`.
pub fn select<'a>(
    globs: &[ManifestGlob],
    paths: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = paths
        .into_iter()
        .filter(|p| globs.iter().any(|g| g.matches(p)))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Parses a commit's selected files into objects. `default_namespace` goes to namespaced objects
/// that name none; `scopes` says which kinds are cluster-scoped (CRDs in the files are learnt first).
pub fn parse<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    default_namespace: &str,
    scopes: &dyn ScopeResolver,
    limits: &ManifestLimits,
) -> ParsedCommit {
    let mut out = ParsedCommit::default();
    let mut files: Vec<(&str, &[u8])> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    if files.len() > limits.max_files {
        out.errors.push(ManifestError::file(
            ManifestErrorKind::TooLarge,
            "",
            format!(
                "the globs select {} files, more than the limit of {}",
                files.len(),
                limits.max_files
            ),
        ));
        return out;
    }
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    if total > limits.max_total_bytes {
        out.errors.push(ManifestError::file(
            ManifestErrorKind::TooLarge,
            "",
            format!(
                "the selected files hold {total} bytes, more than the limit of {}",
                limits.max_total_bytes
            ),
        ));
        return out;
    }

    // Pass 1: load every file into documents within the commit's budget.
    let mut budget = Budget {
        nodes: limits.max_total_nodes,
        bytes: limits.max_total_expanded_bytes,
    };
    let mut documents: Vec<(&str, Node)> = Vec::new();
    for (path, bytes) in &files {
        match load_file(path, bytes, limits, &mut budget) {
            Ok(docs) => documents.extend(docs.into_iter().map(|d| (*path, d))),
            Err(e) => out.errors.push(e),
        }
    }

    // Pass 2: documents to raw objects (List items flattened), learning CRD scopes.
    let mut raw: Vec<RawObject> = Vec::new();
    for (path, doc) in &documents {
        flatten(path, doc, &mut raw, &mut out.errors, 0);
    }
    let mut crds = CrdScopes::new(scopes);
    for r in &raw {
        if r.group == CRD_GROUP && r.kind == CRD_KIND {
            crds.learn(&r.json);
        }
    }
    if raw.len() > limits.max_objects {
        out.errors.push(ManifestError::file(
            ManifestErrorKind::TooLarge,
            "",
            format!(
                "the commit defines {} objects, more than the limit of {}",
                raw.len(),
                limits.max_objects
            ),
        ));
        return out;
    }

    // Pass 3: validate, default namespaces, detect duplicates.
    let mut seen: BTreeMap<ObjectId, Source> = BTreeMap::new();
    for r in raw {
        let Some(object) = finish(
            r,
            default_namespace,
            &crds,
            &mut out.errors,
            &mut out.warnings,
        ) else {
            continue;
        };
        if let Some(first) = seen.get(&object.id) {
            let first = Object {
                source: first.clone(),
                ..object.clone()
            };
            out.errors.push(duplicate_error(&first, &object));
            continue;
        }
        seen.insert(object.id.clone(), object.source.clone());
        out.objects.push(object);
    }
    out.objects.sort_by(|a, b| a.id.cmp(&b.id));
    out.errors
        .sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
    out
}

struct Budget {
    nodes: usize,
    bytes: usize,
}

/// Loads one file's non-empty documents.
fn load_file(
    path: &str,
    bytes: &[u8],
    limits: &ManifestLimits,
    budget: &mut Budget,
) -> Result<Vec<Node>, ManifestError> {
    if bytes.len() > limits.max_file_bytes {
        return Err(ManifestError::file(
            ManifestErrorKind::TooLarge,
            path,
            format!(
                "the file is {} bytes, more than the limit of {}",
                bytes.len(),
                limits.max_file_bytes
            ),
        ));
    }
    if bytes.iter().take(8000).any(|&b| b == 0) {
        return Err(ManifestError::file(
            ManifestErrorKind::NotText,
            path,
            "the file is binary (it contains NUL bytes); a manifest glob selected it",
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        ManifestError::new(
            ManifestErrorKind::NotText,
            path,
            yaml::Pos {
                line: u32::try_from(line).unwrap_or(u32::MAX),
                column: 1,
            },
            "the file is not UTF-8 text; a manifest glob selected it",
        )
    })?;
    let yaml_limits = yaml::Limits {
        max_bytes: limits.max_file_bytes,
        max_depth: limits.max_depth,
        max_nodes: budget.nodes,
        max_expanded_bytes: budget.bytes,
        max_aliases: limits.max_aliases,
        max_alias_nodes: limits.max_alias_nodes,
        max_documents: limits.max_objects,
    };
    let loaded = yaml::load(text, &yaml_limits).map_err(|e| {
        // The node and byte limits are what is left of the commit's budget: say so.
        let message = match e.kind {
            yaml::YamlErrorKind::TooManyNodes { .. } => format!(
                "the commit's manifests hold more than {} YAML nodes in all (counting what aliases expand to); this file reached the limit",
                limits.max_total_nodes
            ),
            yaml::YamlErrorKind::ExpansionTooLarge { .. } => format!(
                "the commit's manifests hold more than {} bytes of scalars in all (counting what aliases copy); this file reached the limit",
                limits.max_total_expanded_bytes
            ),
            other => other.to_string(),
        };
        ManifestError::new(ManifestErrorKind::Syntax, path, e.pos, message)
    })?;
    budget.nodes -= loaded.stats.nodes;
    budget.bytes -= loaded.stats.expanded_bytes;
    Ok(loaded
        .documents
        .into_iter()
        .map(|d| d.root)
        .filter(|n| !n.is_null())
        .collect())
}

/// A document that is a mapping with apiVersion and kind, before validation.
struct RawObject {
    path: String,
    pos: yaml::Pos,
    group: String,
    kind: String,
    api_version: String,
    json: serde_json::Value,
}

/// Documents to objects; `List` kinds (any kind ending in `List` with an `items` sequence) are
/// flattened one level.
fn flatten(
    path: &str,
    node: &Node,
    out: &mut Vec<RawObject>,
    errors: &mut Vec<ManifestError>,
    depth: u8,
) {
    let invalid =
        |pos, msg: String| ManifestError::new(ManifestErrorKind::InvalidObject, path, pos, msg);
    if node.as_map().is_none() {
        errors.push(invalid(
            node.pos,
            format!(
                "a manifest document must be a mapping (a Kubernetes object), found {}",
                node.type_name()
            ),
        ));
        return;
    }
    let api_version = match node.get("apiVersion").map(|n| (n, n.to_json())) {
        Some((_, Ok(serde_json::Value::String(s)))) => s,
        Some((n, _)) => {
            errors.push(invalid(
                n.pos,
                "`apiVersion` must be a string like `v1` or `apps/v1`".into(),
            ));
            return;
        }
        None => {
            errors.push(invalid(node.pos, "`apiVersion` is missing".into()));
            return;
        }
    };
    let kind = match node.get("kind").map(|n| (n, n.to_json())) {
        Some((_, Ok(serde_json::Value::String(s)))) => s,
        Some((n, _)) => {
            errors.push(invalid(
                n.pos,
                "`kind` must be a string like `ConfigMap`".into(),
            ));
            return;
        }
        None => {
            errors.push(invalid(node.pos, "`kind` is missing".into()));
            return;
        }
    };
    if let Some(bad) = check_api_version(&api_version) {
        let pos = node.get("apiVersion").map_or(node.pos, |n| n.pos);
        errors.push(invalid(pos, bad));
        return;
    }
    if !valid_kind(&kind) {
        let pos = node.get("kind").map_or(node.pos, |n| n.pos);
        errors.push(invalid(
            pos,
            format!("`{kind}` is not a valid kind: use letters and digits, starting with a letter"),
        ));
        return;
    }
    if kind.ends_with("List")
        && let Some(items) = node.get("items").and_then(Node::as_seq)
    {
        if depth > 0 {
            errors.push(invalid(
                node.pos,
                "a List inside a List is not supported".into(),
            ));
            return;
        }
        for item in items {
            flatten(path, item, out, errors, depth + 1);
        }
        return;
    }
    match node.to_json() {
        Ok(json) => out.push(RawObject {
            path: path.to_string(),
            pos: node.pos,
            group: group_of(&api_version).to_string(),
            kind,
            api_version,
            json,
        }),
        Err(e) => errors.push(ManifestError::new(
            ManifestErrorKind::InvalidObject,
            path,
            e.pos,
            e.kind.to_string(),
        )),
    }
}

/// Validates metadata, defaults the namespace, builds the object.
fn finish(
    r: RawObject,
    default_namespace: &str,
    scopes: &dyn ScopeResolver,
    errors: &mut Vec<ManifestError>,
    warnings: &mut Vec<ManifestError>,
) -> Option<Object> {
    let RawObject {
        path,
        pos,
        group,
        kind,
        api_version,
        mut json,
    } = r;
    let invalid =
        |msg: String| ManifestError::new(ManifestErrorKind::InvalidObject, &path, pos, msg);
    let what = format!("{kind} in {path}:{}", pos.line);
    let Some(metadata) = json.get("metadata").and_then(serde_json::Value::as_object) else {
        errors.push(invalid(format!(
            "{what}: `metadata` (a mapping with a `name`) is missing"
        )));
        return None;
    };
    let name = match metadata.get("name") {
        Some(serde_json::Value::String(n)) => n.clone(),
        Some(_) => {
            errors.push(invalid(format!("{what}: `metadata.name` must be a string")));
            return None;
        }
        None if metadata.contains_key("generateName") => {
            errors.push(invalid(format!(
                "{what}: `metadata.generateName` cannot be applied declaratively; give a `metadata.name`"
            )));
            return None;
        }
        None => {
            errors.push(invalid(format!("{what}: `metadata.name` is missing")));
            return None;
        }
    };
    if let Some(why) = check_name(&name) {
        errors.push(invalid(format!(
            "{what}: `{name}` is not a valid name: {why}"
        )));
        return None;
    }
    let written_ns = match metadata.get("namespace") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(ns)) if ns.is_empty() => None,
        Some(serde_json::Value::String(ns)) => Some(ns.clone()),
        Some(_) => {
            errors.push(invalid(format!(
                "{what}: `metadata.namespace` must be a string"
            )));
            return None;
        }
    };
    let scope = scopes.scope(&group, &kind).unwrap_or(Scope::Namespaced);
    let namespace = match scope {
        Scope::Cluster => {
            if let Some(ns) = written_ns {
                warnings.push(invalid(format!(
                    "{kind} {name} is cluster-scoped; its `metadata.namespace: {ns}` is ignored"
                )));
                if let Some(m) = json
                    .get_mut("metadata")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    m.remove("namespace");
                }
            }
            None
        }
        Scope::Namespaced => {
            let ns = written_ns.unwrap_or_else(|| default_namespace.to_string());
            if !is_dns_label(&ns) {
                errors.push(invalid(format!(
                    "{what}: `{ns}` is not a valid namespace (an RFC 1123 label)"
                )));
                return None;
            }
            if let Some(m) = json
                .get_mut("metadata")
                .and_then(serde_json::Value::as_object_mut)
            {
                m.insert("namespace".into(), serde_json::Value::String(ns.clone()));
            }
            Some(ns)
        }
    };
    Some(Object {
        id: ObjectId {
            group,
            kind,
            namespace,
            name,
        },
        api_version,
        manifest: json,
        source: Source {
            path,
            line: pos.line,
        },
    })
}

/// `None` if `apiVersion` is `version` or `group/version` with a DNS-subdomain group.
fn check_api_version(v: &str) -> Option<String> {
    let (group, version) = v.rsplit_once('/').unwrap_or(("", v));
    let version_ok = !version.is_empty()
        && version.len() <= 63
        && version
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let group_ok = group.is_empty() || (!group.contains('/') && is_dns_subdomain(group));
    if version_ok && group_ok && !v.starts_with('/') {
        None
    } else {
        Some(format!(
            "`{v}` is not a valid apiVersion: use `version` or `group/version`, like `v1` or `apps/v1`"
        ))
    }
}

fn valid_kind(k: &str) -> bool {
    k.len() <= 63
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Object names are path segments: 1–253 bytes, no `/` or `%`, not `.` or `..`, printable.
fn check_name(n: &str) -> Option<&'static str> {
    if n.is_empty() {
        Some("it is empty")
    } else if n.len() > 253 {
        Some("it is longer than 253 characters")
    } else if n == "." || n == ".." {
        Some("`.` and `..` are not names")
    } else if n.contains('/') || n.contains('%') {
        Some("it contains `/` or `%`")
    } else if n.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    }
}
