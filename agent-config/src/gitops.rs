//! `gitops:` — the manifest projects agentk keeps applied (GitLab's legacy GitOps, cli-utils style).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, index, join};
use crate::duration;
use crate::error::ErrorKind;
use crate::glob::ManifestGlob;
use crate::names::{Namespace, ProjectId, check_commit, check_ref_name};
use crate::yaml::Node;

/// Most `paths` one manifest project may list (GitLab kas's `max_number_of_paths`).
pub const MAX_PATHS: usize = 100;

/// `gitops:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GitopsConfig {
    /// `gitops.manifest_projects`.
    #[serde(default)]
    pub manifest_projects: Vec<ManifestProject>,
}

/// The Git ref a manifest project is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitRef {
    /// `ref: {branch: main}`.
    Branch(String),
    /// `ref: {tag: v1.0}`.
    Tag(String),
    /// `ref: {commit: <40 hex>}` (lowercase).
    Commit(String),
    /// No `ref`: the project's default branch (`HEAD`).
    DefaultBranch,
}

impl GitRef {
    /// The ref to fetch: `refs/heads/<b>`, `refs/tags/<t>`, the commit id, or `HEAD`.
    pub fn to_refspec(&self) -> String {
        match self {
            GitRef::Branch(b) => format!("refs/heads/{b}"),
            GitRef::Tag(t) => format!("refs/tags/{t}"),
            GitRef::Commit(c) => c.clone(),
            GitRef::DefaultBranch => "HEAD".to_string(),
        }
    }
}

/// `dry_run_strategy` (cli-utils).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunStrategy {
    /// Really apply (the default).
    #[default]
    None,
    /// Compute what would change without sending any mutation to the API server.
    Client,
    /// Send mutations with `dryRun=All`: the API server validates and admits, persists nothing.
    Server,
}

/// `prune_propagation_policy`: Kubernetes deletion propagation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropagationPolicy {
    /// Leave dependents.
    Orphan,
    /// Delete now, dependents in the background.
    Background,
    /// Delete dependents first (the default).
    #[default]
    Foreground,
}

impl PropagationPolicy {
    /// The Kubernetes spelling (`Orphan`, `Background`, `Foreground`).
    pub fn as_kubernetes(&self) -> &'static str {
        match self {
            PropagationPolicy::Orphan => "Orphan",
            PropagationPolicy::Background => "Background",
            PropagationPolicy::Foreground => "Foreground",
        }
    }
}

/// `inventory_policy` (cli-utils): may we take over objects another inventory, or none, owns?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryPolicy {
    /// Only objects that do not exist yet or that name our inventory (the default).
    #[default]
    MustMatch,
    /// Also objects that name no inventory.
    AdoptIfNoInventory,
    /// Any object, even one another inventory owns.
    AdoptAll,
}

/// One `gitops.manifest_projects[]` entry, with GitLab's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProject {
    /// The project holding the manifests; `None` in the file means the config project itself
    /// (always set in an [`crate::AgentConfig`]).
    pub id: Option<ProjectId>,
    /// Which ref to read.
    #[serde(rename = "ref")]
    pub git_ref: GitRef,
    /// Namespace for namespaced objects that name none (`None`: `default`).
    pub default_namespace: Option<Namespace>,
    /// Which files are manifests (default [`ManifestGlob::DEFAULT`]).
    pub paths: Vec<ManifestGlob>,
    /// How long one sync round may take (default 3600 s).
    #[serde(with = "duration::serde_secs")]
    pub reconcile_timeout: Duration,
    /// Dry run strategy (default none).
    pub dry_run_strategy: DryRunStrategy,
    /// Delete objects that left the set (default true).
    pub prune: bool,
    /// How long pruning may take (default 3600 s).
    #[serde(with = "duration::serde_secs")]
    pub prune_timeout: Duration,
    /// Deletion propagation when pruning (default foreground).
    pub prune_propagation_policy: PropagationPolicy,
    /// Which existing objects may be taken over (default must_match).
    pub inventory_policy: InventoryPolicy,
}

impl ManifestProject {
    /// A project with every default (the config project, its default branch, all YAML/JSON files).
    pub fn with_defaults(id: Option<ProjectId>) -> Self {
        ManifestProject {
            id,
            git_ref: GitRef::DefaultBranch,
            default_namespace: None,
            paths: vec![ManifestGlob::default_glob()],
            reconcile_timeout: Duration::from_secs(3600),
            dry_run_strategy: DryRunStrategy::None,
            prune: true,
            prune_timeout: Duration::from_secs(3600),
            prune_propagation_policy: PropagationPolicy::Foreground,
            inventory_policy: InventoryPolicy::MustMatch,
        }
    }

    /// The namespace for namespaced objects that name none.
    pub fn namespace_or_default(&self) -> &str {
        self.default_namespace
            .as_ref()
            .map_or("default", Namespace::as_str)
    }
}

const PROJECT_KEYS: &[&str] = &[
    "id",
    "ref",
    "default_namespace",
    "paths",
    "reconcile_timeout",
    "dry_run_strategy",
    "prune",
    "prune_timeout",
    "prune_propagation_policy",
    "inventory_policy",
];

pub(crate) fn decode(d: &mut Decoder, node: &Node, path: &str) -> GitopsConfig {
    let Some(f) = d.fields(node, path, &["manifest_projects"]) else {
        return GitopsConfig::default();
    };
    // (project, its node, whether it decoded without error)
    let mut projects: Vec<(ManifestProject, &Node, bool)> = Vec::new();
    if let Some(list) = f.get("manifest_projects") {
        let path = f.path_of("manifest_projects");
        match list.as_seq() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let before = d.errors.len();
                    if let Some(p) = project(d, item, &index(&path, i)) {
                        projects.push((p, item, d.errors.len() == before));
                    }
                }
            }
            None => {
                // Reports the type error.
                let _: Vec<()> = d.list(list, &path, |_, _, _| None);
            }
        }
    }
    // Two entries for the same project would share one inventory and prune each other's objects.
    // Entries that had errors are not compared: their defaults could collide spuriously.
    for (i, (p, node, clean)) in projects.iter().enumerate() {
        let twin = projects[..i].iter().any(|(q, _, ok)| *ok && q.id == p.id);
        if *clean && twin {
            let name =
                p.id.as_ref()
                    .map_or("(the config project)", ProjectId::as_str);
            d.error(
                ErrorKind::InvalidValue,
                &index(&f.path_of("manifest_projects"), i),
                node.pos,
                format!("manifest project {name} is listed twice; list it once with one ref and several paths (two entries would prune each other's objects)"),
            );
        }
    }
    GitopsConfig {
        manifest_projects: projects.into_iter().map(|(p, _, _)| p).collect(),
    }
}

fn project(d: &mut Decoder, node: &Node, path: &str) -> Option<ManifestProject> {
    let f = d.fields(node, path, PROJECT_KEYS)?;
    let mut p = ManifestProject::with_defaults(None);
    if let Some(n) = f.get("id") {
        p.id = d.checked(n, &f.path_of("id"), ProjectId::new);
    }
    if let Some(n) = f.get("ref")
        && let Some(r) = git_ref(d, n, &f.path_of("ref"))
    {
        p.git_ref = r;
    }
    if let Some(n) = f.get("default_namespace") {
        p.default_namespace = d.checked(n, &f.path_of("default_namespace"), Namespace::new);
    }
    if let Some(n) = f.get("paths") {
        let paths_path = f.path_of("paths");
        let paths = d.bounded_list(n, &paths_path, MAX_PATHS, |d, item, path| {
            let g = d.fields(item, path, &["glob"])?;
            let Some(glob) = g.get("glob") else {
                d.error(
                    ErrorKind::Missing,
                    &join(path, "glob"),
                    item.pos,
                    "`glob` is required",
                );
                return None;
            };
            d.checked(glob, &join(path, "glob"), ManifestGlob::new)
        });
        if !paths.is_empty() {
            p.paths = paths;
        }
    }
    if let Some(n) = f.get("reconcile_timeout")
        && let Some(t) = d.checked(n, &f.path_of("reconcile_timeout"), duration::parse)
    {
        p.reconcile_timeout = t;
    }
    if let Some(n) = f.get("prune_timeout")
        && let Some(t) = d.checked(n, &f.path_of("prune_timeout"), duration::parse)
    {
        p.prune_timeout = t;
    }
    if let Some(n) = f.get("dry_run_strategy") {
        use DryRunStrategy::*;
        // An empty string is the default, as in GitLab's schema.
        let choices = [
            ("none", None),
            ("client", Client),
            ("server", Server),
            ("", None),
        ];
        if let Some(v) = d.one_of(n, &f.path_of("dry_run_strategy"), &choices) {
            p.dry_run_strategy = v;
        }
    }
    if let Some(n) = f.get("prune")
        && let Some(v) = d.boolean(n, &f.path_of("prune"))
    {
        p.prune = v;
    }
    if let Some(n) = f.get("prune_propagation_policy") {
        use PropagationPolicy::*;
        let choices = [
            ("orphan", Orphan),
            ("background", Background),
            ("foreground", Foreground),
            ("", Foreground),
        ];
        if let Some(v) = d.one_of(n, &f.path_of("prune_propagation_policy"), &choices) {
            p.prune_propagation_policy = v;
        }
    }
    if let Some(n) = f.get("inventory_policy") {
        use InventoryPolicy::*;
        let choices = [
            ("must_match", MustMatch),
            ("adopt_if_no_inventory", AdoptIfNoInventory),
            ("adopt_all", AdoptAll),
            ("", MustMatch),
        ];
        if let Some(v) = d.one_of(n, &f.path_of("inventory_policy"), &choices) {
            p.inventory_policy = v;
        }
    }
    Some(p)
}

fn git_ref(d: &mut Decoder, node: &Node, path: &str) -> Option<GitRef> {
    let f = d.fields(node, path, &["branch", "tag", "commit"])?;
    let present: Vec<_> = f.present().collect();
    match present.as_slice() {
        [] => {
            d.error(
                ErrorKind::Missing,
                path,
                f.pos,
                "exactly one of `branch`, `tag` or `commit` is required",
            );
            None
        }
        [one] => {
            let p = join(path, &one.key);
            match one.key.as_str() {
                "branch" => d
                    .checked(&one.value, &p, |s| {
                        check_ref_name(s).map(|()| s.to_string())
                    })
                    .map(GitRef::Branch),
                "tag" => d
                    .checked(&one.value, &p, |s| {
                        check_ref_name(s).map(|()| s.to_string())
                    })
                    .map(GitRef::Tag),
                "commit" => d.checked(&one.value, &p, check_commit).map(GitRef::Commit),
                _ => None, // an unknown key, already reported
            }
        }
        [first, rest @ ..] => {
            for e in rest {
                d.error(
                    ErrorKind::InvalidValue,
                    &join(path, &e.key),
                    e.key_pos,
                    format!(
                        "`{}` and `{}` are both set; give exactly one of `branch`, `tag` or `commit`",
                        first.key, e.key
                    ),
                );
            }
            None
        }
    }
}
