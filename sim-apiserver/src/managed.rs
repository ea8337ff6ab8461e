//! Field management: `metadata.managedFields` and server-side apply, as the real API server's
//! field manager does them.
//!
//! Every write goes through a [`FieldManager`]:
//!
//! * **Update** (create, update, non-apply patch): the writer (the `fieldManager` parameter, or
//!   the `User-Agent` up to the first `/`) takes ownership of every field it added or changed,
//!   taking it away from other managers; removed fields leave every manager's set. Objects
//!   without managed fields stay untracked until their first apply; creates are always tracked.
//!   At most ten update entries are kept; older ones merge into `ancient-changes`.
//! * **Apply** (`application/apply-patch+yaml`): the applied configuration is merged into the
//!   live object; the applier's set becomes exactly the configuration's fields; fields it applied
//!   before and no longer applies, and that no other manager owns, are removed; a field another
//!   manager owns whose value the apply would change is a conflict (409 naming the managers and
//!   paths) unless `force` is set, which takes the field over. Existing fields of an untracked
//!   object first go to a `before-first-apply` manager. For the manager `kubectl`, conflicts on
//!   fields recorded in kubectl's `last-applied-configuration` annotation (and unchanged since)
//!   are allowed, and that annotation is kept up to date — kubectl's client-side to server-side
//!   apply migration.
//!
//! Entries are keyed by manager, operation, subresource and (for updates) API version; `time`
//! changes only when the entry's owner changed the object. Server-owned metadata (`name`,
//! `uid`, `resourceVersion`, ...) is never owned. Writes to the main resource ignore `status`
//! (and those to `status`/`scale` everything else), as the real reset strategies do.

use std::collections::BTreeMap;

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::fieldpath::{Path, PathElement, Set, path_string};
use crate::resource::ResourceType;
use crate::schema::Shape;
use crate::status::ApiError;
use crate::typed::{self, Comparison};

/// kubectl's client-side apply annotation.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Most update entries kept before the oldest are merged.
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// What kind of write an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write.
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// Who owns a set of fields: one entry of `managedFields`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagerId {
    /// The field manager's name.
    pub manager: String,
    /// Apply or Update.
    pub operation: Operation,
    /// For updates the API version written (appliers are one entry across versions).
    pub api_version: String,
    /// `status`, `scale`, or empty for the main resource.
    pub subresource: String,
}

impl ManagerId {
    /// How Kubernetes names the manager in conflict messages.
    pub fn describe(&self) -> String {
        let mut s = Value::String(self.manager.clone()).to_string();
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

#[derive(Debug, Clone)]
struct Entry {
    api_version: String,
    set: Set,
    time: Option<String>,
}

/// The decoded `managedFields` of an object.
#[derive(Debug, Clone, Default)]
pub struct Managed {
    entries: BTreeMap<ManagerId, Entry>,
}

impl Managed {
    /// Decodes `metadata.managedFields` of `obj` (absent: empty).
    pub fn decode(obj: &Value) -> Result<Self, String> {
        let mut out = Managed::default();
        let Some(list) = obj.pointer("/metadata/managedFields") else {
            return Ok(out);
        };
        let Value::Array(list) = list else {
            return Err("metadata.managedFields must be a list".to_string());
        };
        for (i, e) in list.iter().enumerate() {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
            let operation = match s("operation") {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                _ => {
                    return Err(format!(
                        "managedFields[{i}]: operation must be `Apply` or `Update`"
                    ));
                }
            };
            if s("apiVersion").is_empty() {
                return Err(format!("managedFields[{i}]: apiVersion must not be empty"));
            }
            match s("fieldsType") {
                "FieldsV1" => {}
                "" => return Err(format!("missing fieldsType in managed fields entry {i}")),
                other => {
                    return Err(format!(
                        "invalid fieldsType {other:?} in managed fields entry {i}"
                    ));
                }
            }
            let set = match e.get("fieldsV1") {
                Some(f) => Set::from_fields_v1(f)?,
                None => Set::new(),
            };
            let id = ManagerId {
                manager: s("manager").to_string(),
                operation,
                api_version: if operation == Operation::Apply {
                    String::new()
                } else {
                    s("apiVersion").to_string()
                },
                subresource: s("subresource").to_string(),
            };
            out.entries.insert(
                id,
                Entry {
                    api_version: s("apiVersion").to_string(),
                    set,
                    time: e.get("time").and_then(Value::as_str).map(str::to_string),
                },
            );
        }
        Ok(out)
    }

    /// Whether no manager owns anything.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The managers, in `managedFields` order.
    pub fn managers(&self) -> Vec<ManagerId> {
        self.sorted()
            .into_iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The fields `id` owns.
    pub fn fields_of(&self, id: &ManagerId) -> Option<&Set> {
        self.entries.get(id).map(|e| &e.set)
    }

    fn sorted(&self) -> Vec<(&ManagerId, &Entry)> {
        let mut v: Vec<(&ManagerId, &Entry)> = self.entries.iter().collect();
        v.sort_by(|(a, ae), (b, be)| {
            a.operation
                .cmp(&b.operation)
                .then_with(|| {
                    ae.time
                        .as_deref()
                        .unwrap_or("")
                        .cmp(be.time.as_deref().unwrap_or(""))
                })
                .then_with(|| a.manager.cmp(&b.manager))
                .then_with(|| ae.api_version.cmp(&be.api_version))
                .then_with(|| a.subresource.cmp(&b.subresource))
        });
        v
    }

    /// The `managedFields` list (`None` when no manager owns anything).
    pub fn encode(&self) -> Option<Value> {
        if self.entries.is_empty() {
            return None;
        }
        let list = self
            .sorted()
            .into_iter()
            .map(|(id, e)| {
                let mut m = Map::new();
                m.insert("manager".into(), json!(id.manager));
                m.insert("operation".into(), json!(id.operation.as_str()));
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                if !id.subresource.is_empty() {
                    m.insert("subresource".into(), json!(id.subresource));
                }
                Value::Object(m)
            })
            .collect();
        Some(Value::Array(list))
    }

    fn strip_meta(&mut self) {
        let mut strip = Set::new();
        let f = |s: &str| PathElement::Field(s.to_string());
        strip.insert(&[f("apiVersion")]);
        strip.insert(&[f("kind")]);
        strip.insert(&[f("metadata")]);
        for m in [
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            strip.insert(&[f("metadata"), f(m)]);
        }
        for e in self.entries.values_mut() {
            e.set = e.set.difference(&strip);
        }
        self.entries.retain(|_, e| !e.set.is_empty());
    }

    /// Merges the oldest update entries into `ancient-changes` (one per API version) until at
    /// most [`MAX_UPDATE_MANAGERS`] remain.
    fn cap_update_managers(&mut self) {
        let mut updaters: Vec<ManagerId> = self
            .entries
            .keys()
            .filter(|id| id.operation == Operation::Update)
            .cloned()
            .collect();
        if updaters.len() <= MAX_UPDATE_MANAGERS {
            return;
        }
        updaters.sort_by(|a, b| {
            let t = |id: &ManagerId| self.entries[id].time.clone().unwrap_or_default();
            t(a).cmp(&t(b)).then_with(|| a.cmp(b))
        });
        let mut first_of_version: BTreeMap<String, ManagerId> = BTreeMap::new();
        let mut length = updaters.len();
        for id in updaters {
            if length <= MAX_UPDATE_MANAGERS {
                break;
            }
            let Some(entry) = self.entries.get(&id).cloned() else {
                continue;
            };
            let bucket = ManagerId {
                manager: "ancient-changes".to_string(),
                operation: Operation::Update,
                api_version: entry.api_version.clone(),
                subresource: String::new(),
            };
            match first_of_version.get(&entry.api_version) {
                Some(first) => {
                    if !self.entries.contains_key(&bucket)
                        && let Some(f) = self.entries.remove(first)
                    {
                        self.entries.insert(bucket.clone(), f);
                    }
                    if let Some(b) = self.entries.get_mut(&bucket) {
                        b.set = b.set.union(&entry.set);
                        b.time = entry.time.clone();
                    }
                    self.entries.remove(&id);
                    length -= 1;
                }
                None => {
                    first_of_version.insert(entry.api_version.clone(), id);
                }
            }
        }
    }
}

/// One apply conflict: a field another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager owning the field.
    pub manager: ManagerId,
    /// The field.
    pub path: Path,
}

/// The 409 `Status` for apply conflicts, worded as Kubernetes words it.
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let message = if let [c] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager.describe(),
            path_string(&c.path)
        )
    } else {
        let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in conflicts {
            by_manager
                .entry(c.manager.describe())
                .or_default()
                .push(path_string(&c.path));
        }
        let mut lines = Vec::new();
        for (m, paths) in by_manager {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", c.manager.describe()),
                "field": path_string(&c.path),
            })
        })
        .collect();
    ApiError {
        details: Some(json!({"causes": causes})),
        ..ApiError::new(StatusCode::CONFLICT, "Conflict", message)
    }
}

/// Which part of the object a write may change (the rest is reset by the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The main resource (its `status` is ignored when the kind has a status subresource).
    Main,
    /// The `status` subresource: only `status`.
    Status,
    /// The `scale` subresource: only `spec.replicas`.
    Scale,
}

impl Target {
    fn subresource(self) -> &'static str {
        match self {
            Self::Main => "",
            Self::Status => "status",
            Self::Scale => "scale",
        }
    }
}

/// The field manager of one resource type and write target.
pub struct FieldManager<'a> {
    resource: &'a ResourceType,
    target: Target,
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    o
}

fn set_managed_fields(obj: &mut Value, managed: &Managed) {
    if let Some(o) = obj.as_object_mut() {
        let m = o.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = m.as_object_mut() {
            match managed.encode() {
                Some(v) => m.insert("managedFields".to_string(), v),
                None => m.remove("managedFields"),
            };
        }
    }
}

/// Whether a client asks to reset managed fields (`[]` or `[{}]`).
fn is_reset(obj: &Value) -> bool {
    match obj.pointer("/metadata/managedFields") {
        Some(Value::Array(a)) if a.is_empty() => true,
        Some(Value::Array(a)) if a.len() == 1 => a[0] == json!({}),
        _ => false,
    }
}

fn f(s: &str) -> PathElement {
    PathElement::Field(s.to_string())
}

/// The fields of `objs` outside `keep` (paths of field names): what a subresource write ignores.
fn outside(keep: &[&str], objs: &[&Value]) -> Set {
    let mut set = Set::new();
    let Some((first, rest)) = keep.split_first() else {
        return set;
    };
    let mut next: Vec<&Value> = Vec::new();
    for o in objs {
        if let Value::Object(m) = o {
            for (k, v) in m {
                if k == first {
                    next.push(v);
                } else {
                    set.insert(&[f(k)]);
                }
            }
        }
    }
    let below = outside(rest, &next);
    for p in below.paths() {
        let mut full = vec![f(first)];
        full.extend(p);
        set.insert(&full);
    }
    set
}

const CURRENT_OPERATION: &str = "\u{0}current-operation";

impl<'a> FieldManager<'a> {
    /// The field manager for writes of `target` of objects of type `resource`.
    pub fn new(resource: &'a ResourceType, target: Target) -> Self {
        Self { resource, target }
    }

    fn shape(&self) -> Shape<'a> {
        Shape::root(self.resource)
    }

    fn ignored(&self, a: &Value, b: &Value) -> Set {
        match self.target {
            Target::Main if self.resource.has_status => {
                let mut s = Set::new();
                s.insert(&[f("status")]);
                s
            }
            Target::Main => Set::new(),
            Target::Status => outside(&["status"], &[a, b]),
            Target::Scale => outside(&["spec", "replicas"], &[a, b]),
        }
    }

    fn id(&self, manager: &str, operation: Operation) -> ManagerId {
        ManagerId {
            manager: if manager.is_empty() {
                "unknown".to_string()
            } else {
                manager.to_string()
            },
            operation,
            api_version: if operation == Operation::Update {
                self.resource.api_version()
            } else {
                String::new()
            },
            subresource: self.target.subresource().to_string(),
        }
    }

    /// The empty object a create starts from.
    fn skeleton(&self, like: &Value) -> Value {
        let mut meta = Map::new();
        for k in ["name", "namespace"] {
            if let Some(v) = like.pointer(&format!("/metadata/{k}")) {
                meta.insert(k.to_string(), v.clone());
            }
        }
        json!({
            "apiVersion": self.resource.api_version(),
            "kind": self.resource.kind,
            "metadata": meta,
        })
    }

    /// The core of an update: `workflow` takes what changed; nobody keeps what was removed.
    /// With `force` false, changes to fields others own are conflicts.
    fn track(
        &self,
        live: &Value,
        new: &Value,
        managed: &mut Managed,
        workflow: &ManagerId,
        force: bool,
    ) -> Result<Comparison, Vec<Conflict>> {
        let ignored = self.ignored(live, new);
        let mut cmp = typed::compare(live, new, &self.shape());
        cmp.exclude(&ignored);
        let changed = cmp.modified.union(&cmp.added);
        let mut conflicts = Vec::new();
        for (id, e) in &managed.entries {
            if id == workflow {
                continue;
            }
            let c = e.set.intersection(&changed);
            for path in c.paths() {
                conflicts.push(Conflict {
                    manager: id.clone(),
                    path,
                });
            }
        }
        if !force && !conflicts.is_empty() {
            return Err(conflicts);
        }
        for (id, e) in managed.entries.iter_mut() {
            if id == workflow {
                continue;
            }
            e.set = e.set.difference(&changed).difference(&cmp.removed);
        }
        managed.entries.retain(|_, e| !e.set.is_empty());
        Ok(cmp)
    }

    /// A non-apply write by `id` changing `live` into `new`.
    fn update_managed(
        &self,
        live: &Value,
        new: &Value,
        managed: &mut Managed,
        id: &ManagerId,
        now: &str,
    ) {
        let current = ManagerId {
            manager: CURRENT_OPERATION.to_string(),
            ..id.clone()
        };
        let Ok(cmp) = self.track(live, new, managed, &current, true) else {
            return;
        };
        let ignored = self.ignored(live, new);
        let set = cmp
            .modified
            .union(&cmp.added)
            .recursive_difference(&ignored);
        if !set.is_empty() {
            managed.entries.insert(
                current.clone(),
                Entry {
                    api_version: self.resource.api_version(),
                    set,
                    time: None,
                },
            );
        }
        managed.strip_meta();
        if let Some(e) = managed.entries.remove(&current) {
            let set = match managed.entries.get(id) {
                Some(prev) => e.set.union(&prev.set),
                None => e.set,
            };
            managed.entries.insert(
                id.clone(),
                Entry {
                    api_version: self.resource.api_version(),
                    set,
                    time: Some(now.to_string()),
                },
            );
        }
    }

    /// Records a create or update of `new` over `live` (`None`: a create) by `manager`;
    /// returns `new` with its `managedFields`.
    pub fn update(&self, live: Option<&Value>, new: Value, manager: &str, now: &str) -> Value {
        let decoded_live = || live.map(Managed::decode).and_then(Result::ok);
        let mut managed = if self.target != Target::Main {
            decoded_live().unwrap_or_default()
        } else if is_reset(&new) {
            Managed::default()
        } else {
            match Managed::decode(&new) {
                Ok(m) if !m.is_empty() => m,
                _ => decoded_live().unwrap_or_default(),
            }
        };
        let mut new_obj = without_managed_fields(&new);
        let live_obj = match live {
            Some(l) => without_managed_fields(l),
            None => self.skeleton(&new_obj),
        };
        // Objects nobody tracked stay untracked until their first apply.
        if managed.is_empty() && live.is_some() {
            return new_obj;
        }
        let id = self.id(manager, Operation::Update);
        self.update_managed(&live_obj, &new_obj, &mut managed, &id, now);
        managed.cap_update_managers();
        set_managed_fields(&mut new_obj, &managed);
        new_obj
    }

    /// Applies `config` for `manager` to `live` (`None`: the object does not exist yet).
    /// Returns the resulting object with its `managedFields` (equal to `live` when the apply
    /// changes nothing), or the conflicts.
    pub fn apply(
        &self,
        live: Option<&Value>,
        config: &Value,
        manager: &str,
        force: bool,
        now: &str,
    ) -> Result<Value, ApiError> {
        if config.pointer("/metadata/managedFields").is_some() {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        typed::validate(config, &self.shape()).map_err(|e| {
            ApiError::from(crate::store::StoreError::Invalid {
                kind: self.resource.qualified_kind(),
                name: config
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                errors: vec![format!(
                    "{}: Invalid value: {}",
                    e.path.trim_start_matches('.'),
                    e.message
                )],
            })
        })?;
        let live_obj = match live {
            Some(l) => without_managed_fields(l),
            None => self.skeleton(config),
        };
        let managed = live
            .map(Managed::decode)
            .and_then(Result::ok)
            .unwrap_or_default();
        let first = self.apply_tracked(
            live.is_some(),
            &live_obj,
            config,
            managed.clone(),
            manager,
            force,
            now,
        );
        let (mut obj, managed) = match first {
            Ok(r) => r,
            Err(conflicts) if manager == "kubectl" => {
                // kubectl's client-side to server-side apply migration: fields recorded in
                // the last-applied annotation (and unchanged since) may be taken over.
                let Some(allowed) = self.allowed_from_last_applied(&live_obj) else {
                    return Err(conflict_error(&conflicts));
                };
                let remaining: Vec<Conflict> = conflicts
                    .into_iter()
                    .filter(|c| !allowed.has(&c.path))
                    .collect();
                if !remaining.is_empty() {
                    return Err(conflict_error(&remaining));
                }
                self.apply_tracked(
                    live.is_some(),
                    &live_obj,
                    config,
                    managed,
                    manager,
                    true,
                    now,
                )
                .map_err(|c| conflict_error(&c))?
            }
            Err(conflicts) => return Err(conflict_error(&conflicts)),
        };
        if manager == "kubectl" && has_last_applied(&obj) {
            set_last_applied(&mut obj, config);
        }
        set_managed_fields(&mut obj, &managed);
        Ok(obj)
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_tracked(
        &self,
        exists: bool,
        live: &Value,
        config: &Value,
        mut managed: Managed,
        manager: &str,
        force: bool,
        now: &str,
    ) -> Result<(Value, Managed), Vec<Conflict>> {
        let mut live = live.clone();
        if managed.is_empty() && exists {
            // What was there before the first apply is owned by `before-first-apply`.
            let id = self.id("before-first-apply", Operation::Update);
            let empty = self.skeleton(&live);
            self.update_managed(&empty, &live, &mut managed, &id, now);
            live = without_managed_fields(&live);
        }
        let shape = self.shape();
        let id = self.id(manager, Operation::Apply);
        let mut merged = typed::merge(&live, config, &shape);
        let last = managed.entries.get(&id).map(|e| e.set.clone());
        let previous_time = managed.entries.get(&id).and_then(|e| e.time.clone());
        let ignored = self.ignored(&live, config);
        let set = typed::to_field_set(config, &shape).recursive_difference(&ignored);
        managed.entries.insert(
            id.clone(),
            Entry {
                api_version: self.resource.api_version(),
                set,
                time: previous_time,
            },
        );
        if let Some(last) = last.filter(|l| !l.is_empty()) {
            merged = self.prune(&merged, &managed, &last);
        }
        self.track(&live, &merged, &mut managed, &id, force)?;
        managed.strip_meta();
        if merged == live {
            return Ok((live, managed));
        }
        if let Some(e) = managed.entries.get_mut(&id) {
            e.time = Some(now.to_string());
        }
        Ok((merged, managed))
    }

    /// Removes what the applier applied last time, no longer applies, and nobody else owns.
    fn prune(&self, merged: &Value, managed: &Managed, last: &Set) -> Value {
        let shape = self.shape();
        let ensure = |s: &Set| typed::ensure_named_fields_are_members(s, &shape);
        let last = ensure(last);
        let pruned = typed::remove_items(merged, &last, &shape);
        // Add back what anyone (the applier's new configuration included) owns.
        let owned = managed
            .entries
            .values()
            .fold(Set::new(), |acc, e| acc.union(&e.set));
        let merged_set = ensure(&typed::to_field_set(merged, &shape));
        let pruned_set = ensure(&typed::to_field_set(&pruned, &shape));
        let pruned = typed::remove_items(
            merged,
            &merged_set.difference(&pruned_set.union(&ensure(&owned))),
            &shape,
        );
        // Add back what was removed but never was the applier's.
        let pruned_set = ensure(&typed::to_field_set(&pruned, &shape));
        typed::remove_items(
            merged,
            &merged_set.difference(&pruned_set).intersection(&last),
            &shape,
        )
    }

    /// The fields recorded in kubectl's last-applied annotation that still have those values.
    fn allowed_from_last_applied(&self, live: &Value) -> Option<Set> {
        let text = live
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(LAST_APPLIED))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())?;
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(Value::as_str) != Some(&self.resource.api_version()) {
            return None;
        }
        let shape = self.shape();
        let cmp = typed::compare(&last, live, &shape);
        Some(
            typed::to_field_set(&last, &shape)
                .difference(&cmp.modified)
                .difference(&cmp.added)
                .difference(&cmp.removed),
        )
    }
}

fn has_last_applied(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

fn set_last_applied(obj: &mut Value, config: &Value) {
    let mut last = config.clone();
    if let Some(a) = last
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
        if a.is_empty()
            && let Some(m) = last.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("annotations");
        }
    }
    let text = format!("{}\n", serde_json::to_string(&last).unwrap_or_default());
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(LAST_APPLIED.to_string(), Value::String(text));
    }
}

/// The manager of a non-apply write: the `fieldManager` parameter, else the client's
/// `User-Agent` up to the first `/` (printable characters, at most 128).
pub fn manager_or_user_agent(field_manager: Option<&str>, user_agent: &str) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_string();
    }
    user_agent
        .split('/')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(129)
        .collect()
}

/// Checks a `fieldManager` parameter as the real server does.
pub fn validate_field_manager(m: &str) -> Result<(), ApiError> {
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: {why}"),
        )
    };
    if m.chars().count() > 128 {
        return Err(invalid(
            "Too long: may not be more than 128 bytes".to_string(),
        ));
    }
    if m.chars().any(char::is_control) {
        return Err(invalid(format!(
            "Invalid value: {m:?}: must only contain printable characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;

    const NOW: &str = "2025-01-01T00:00:00Z";
    const LATER: &str = "2025-01-01T00:01:00Z";

    fn deploy(replicas: Option<i64>, image: &str) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "app", "image": image}]}}
            }
        });
        if let Some(r) = replicas {
            d["spec"]["replicas"] = json!(r);
        }
        d
    }

    fn stored(mut v: Value) -> Value {
        v["metadata"]["uid"] = json!("u-1");
        v["metadata"]["resourceVersion"] = json!("5");
        v
    }

    #[test]
    fn create_then_apply_conflicts_then_force() {
        let d = known::deployment();
        let fm = FieldManager::new(&d, Target::Main);
        let created = stored(fm.update(
            None,
            deploy(Some(1), "nginx:1"),
            "kubectl-client-side-apply",
            NOW,
        ));
        let mf = &created["metadata"]["managedFields"];
        // As the real server records a create: typed structs (spec, template) are not added
        // as a whole, maps and lists that were absent are.
        assert!(mf[0]["fieldsV1"]["f:spec"].get(".").is_none(), "{mf}");
        assert!(
            mf[0]["fieldsV1"]["f:spec"]["f:template"].get(".").is_none(),
            "{mf}"
        );
        assert_eq!(
            mf[0]["fieldsV1"]["f:spec"]["f:template"]["f:metadata"]["f:labels"]["."],
            json!({})
        );
        assert!(
            mf[0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]
                .get(".")
                .is_none(),
            "{mf}"
        );
        assert_eq!(mf[0]["manager"], "kubectl-client-side-apply");
        assert_eq!(mf[0]["operation"], "Update");
        assert_eq!(mf[0]["apiVersion"], "apps/v1");
        assert_eq!(mf[0]["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        assert!(mf[0]["fieldsV1"].get("f:apiVersion").is_none(), "stripped");

        let err = fm
            .apply(
                Some(&created),
                &deploy(Some(3), "nginx:1"),
                "gitops",
                false,
                LATER,
            )
            .err()
            .unwrap_or_else(|| ApiError::bad_request("no conflict"));
        assert_eq!(err.code, StatusCode::CONFLICT);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
        let details = err.details.unwrap_or_default();
        assert_eq!(details["causes"][0]["field"], ".spec.replicas");
        assert_eq!(details["causes"][0]["reason"], "FieldManagerConflict");

        // Same values: shared ownership, no conflict.
        let shared = fm
            .apply(
                Some(&created),
                &deploy(Some(1), "nginx:1"),
                "gitops",
                false,
                LATER,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let managers: Vec<&str> = shared["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, vec!["gitops", "kubectl-client-side-apply"]);

        let forced = fm
            .apply(
                Some(&created),
                &deploy(Some(3), "nginx:1"),
                "gitops",
                true,
                LATER,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(forced["spec"]["replicas"], 3);
        let mf = forced["metadata"]["managedFields"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(mf[0]["manager"], "gitops");
        assert_eq!(mf[0]["operation"], "Apply");
        assert_eq!(mf[0]["time"], LATER);
        assert_eq!(mf[1]["manager"], "kubectl-client-side-apply", "{mf:#?}");
        assert!(
            mf[1]["fieldsV1"]["f:spec"]["f:selector"].is_object(),
            "{mf:#?}"
        );
        assert!(
            mf[1]["fieldsV1"]["f:spec"].get("f:replicas").is_none(),
            "taken over: {mf:?}"
        );
    }

    #[test]
    fn reapply_is_a_noop_and_dropped_fields_are_pruned() {
        let d = known::deployment();
        let fm = FieldManager::new(&d, Target::Main);
        let mut cfg = deploy(Some(2), "nginx:1");
        cfg["metadata"]["labels"] = json!({"team": "a"});
        let first = stored(
            fm.apply(None, &cfg, "gitops", false, NOW)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let again = fm
            .apply(Some(&first), &cfg, "gitops", false, LATER)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again, first,
            "re-applying the same configuration changes nothing"
        );

        // Another manager adds a label by update; the applier then drops its own label and
        // the replicas: both go, the other manager's label stays.
        let mut edited = first.clone();
        edited["metadata"]["labels"]["other"] = json!("x");
        let edited = fm.update(Some(&first), edited, "kubectl-edit", LATER);
        let mut smaller = deploy(None, "nginx:1");
        smaller["metadata"]
            .as_object_mut()
            .map(|m| m.remove("labels"));
        let out = fm
            .apply(Some(&edited), &smaller, "gitops", false, LATER)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(out["spec"].get("replicas").is_none(), "{out}");
        assert_eq!(out["metadata"]["labels"], json!({"other": "x"}));
    }

    #[test]
    fn untracked_objects_get_before_first_apply() {
        let d = known::deployment();
        let fm = FieldManager::new(&d, Target::Main);
        let live = stored(deploy(Some(2), "nginx:1"));
        let untouched = fm.update(Some(&live), live.clone(), "kubelet", NOW);
        assert!(untouched["metadata"].get("managedFields").is_none());
        let err = fm.apply(
            Some(&live),
            &deploy(Some(4), "nginx:1"),
            "gitops",
            false,
            NOW,
        );
        let msg = err.err().map(|e| e.message).unwrap_or_default();
        assert!(
            msg.contains("conflict with \"before-first-apply\" using apps/v1: .spec.replicas"),
            "{msg}"
        );
    }

    #[test]
    fn kubectl_takes_over_its_client_side_apply_fields() {
        let d = known::deployment();
        let fm = FieldManager::new(&d, Target::Main);
        let mut cfg = deploy(Some(1), "nginx:1");
        let text = serde_json::to_string(&cfg).unwrap_or_default();
        cfg["metadata"]["annotations"] = json!({LAST_APPLIED: text});
        let created = stored(fm.update(None, cfg, "kubectl-client-side-apply", NOW));
        let out = fm
            .apply(
                Some(&created),
                &deploy(Some(5), "nginx:1"),
                "kubectl",
                false,
                LATER,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out["spec"]["replicas"], 5);
        let last = out["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap_or("");
        assert!(last.contains("\"replicas\":5"), "{last}");
    }

    #[test]
    fn status_writes_own_only_status() {
        let d = known::deployment();
        let fm = FieldManager::new(&d, Target::Main);
        let created = stored(fm.update(None, deploy(Some(1), "a"), "creator", NOW));
        let mut new = created.clone();
        new["status"] = json!({"replicas": 1});
        new["spec"]["replicas"] = json!(9);
        let sfm = FieldManager::new(&d, Target::Status);
        let out = sfm.update(Some(&created), new, "controller", LATER);
        let entry = out["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["manager"] == "controller")
            .cloned()
            .unwrap_or_default();
        assert_eq!(entry["subresource"], "status");
        assert_eq!(entry["fieldsV1"], json!({"f:status": {"f:replicas": {}}}));
    }

    #[test]
    fn manager_names() {
        assert_eq!(
            manager_or_user_agent(None, "kubectl/v1.32.0 (linux/amd64)"),
            "kubectl"
        );
        assert_eq!(manager_or_user_agent(Some("gitops"), "x"), "gitops");
        assert!(validate_field_manager(&"x".repeat(129)).is_err());
        assert!(validate_field_manager("ok").is_ok());
    }
}
