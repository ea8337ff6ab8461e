//! A naive, independent evaluator of view specs: the oracle the incremental views (and their mirrors
//! at kas) are compared with in tests and in the simulator.
//!
//! It reads the [`ViewSpec`] as data and the objects as JSON, and computes every view from scratch the
//! slow, obvious way: for each view, keep the objects of its kind that pass its filter, group them by
//! the text of the group-by paths, and per group count or sum. It shares **no** code with the
//! production evaluator ([`CompiledView`](crate::cache::spec) and its `contribution()`, which both the
//! incremental [`ViewSet`](crate::cache::ViewSet) and [`ViewSet::recompute`](crate::cache::ViewSet::recompute)
//! use): its own path walker, predicate tests, labels and grouping, written from the documentation in
//! [`crate::cache::spec`] and [`crate::cache::path`]. A bug in `contribution()` therefore shows up as a
//! difference here, where comparing the incremental views with `recompute` cannot see it.
//!
//! What it does share: the number type [`Decimal`] and its parser ([`Decimal::from_json`],
//! [`Decimal::parse`]) for `sum` metrics — number parsing is not view logic and has its own tests — and
//! the table types the result is expressed in. Specs are assumed valid (compile them with
//! [`ViewSet::new`](crate::cache::ViewSet::new) first); an invalid path panics here.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;
use smallvec::SmallVec;

use crate::cache::{
    AggregateOp, Decimal, GroupBy, GroupKey, Predicate, ResourceKind, Test, View, ViewSchema,
    ViewSpec, Views,
};

/// The views `specs` define over `objects`, computed from scratch (see the module documentation).
pub fn evaluate<'a>(
    specs: &[ViewSpec],
    objects: impl IntoIterator<Item = (&'a ResourceKind, &'a Value)>,
) -> Views {
    Oracle::new(specs).evaluate(objects)
}

/// [`evaluate`] with the specs read once: each view's schema and paths split into steps, for a
/// caller that evaluates the same specs over and over (the simulator, after every change).
pub struct Oracle {
    views: Vec<Prepared>,
}

/// One spec, read: its schema, and its predicates and paths split into steps.
struct Prepared {
    kind: KindSpec,
    schema: ViewSchema,
    filter: Conditions,
    group_by: Vec<Path>,
    metrics: Vec<(Conditions, Option<Path>)>,
}

/// Predicates with their paths split into steps.
type Conditions = Vec<(Path, Predicate)>;

impl Oracle {
    /// Reads `specs` (valid ones: see the module documentation).
    pub fn new(specs: &[ViewSpec]) -> Oracle {
        Oracle {
            views: specs.iter().map(Prepared::new).collect(),
        }
    }

    /// The views over `objects`, computed from scratch.
    pub fn evaluate<'a>(
        &self,
        objects: impl IntoIterator<Item = (&'a ResourceKind, &'a Value)>,
    ) -> Views {
        let objects: Vec<(&ResourceKind, &Value)> = objects.into_iter().collect();
        self.views.iter().map(|p| view(p, &objects)).collect()
    }

    /// Brings `views` — what [`evaluate`](Self::evaluate) gave before a change — up to date after
    /// a change that touched objects of the `changed` kinds only: every view whose kind matches
    /// one of them (or that `views` lacks) is computed again from scratch over `objects`; a view
    /// of another kind cannot have changed and is kept.
    pub fn update<'a>(
        &self,
        views: &mut Views,
        changed: &[&ResourceKind],
        objects: impl IntoIterator<Item = (&'a ResourceKind, &'a Value)>,
    ) {
        let stale: Vec<&Prepared> = (self.views.iter())
            .filter(|p| {
                changed.iter().any(|k| p.kind.matches(k)) || views.get(&p.schema.name).is_none()
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        let objects: Vec<(&ResourceKind, &Value)> = objects.into_iter().collect();
        for p in stale {
            views.insert(view(p, &objects));
        }
    }
}

impl Prepared {
    fn new(spec: &ViewSpec) -> Prepared {
        let conditions = |preds: &[Predicate]| -> Conditions {
            preds
                .iter()
                .map(|p| (Path::new(&p.path), p.clone()))
                .collect()
        };
        Prepared {
            kind: KindSpec::new(&spec.kind),
            schema: ViewSchema {
                name: spec.name.clone(),
                kind: spec.kind.clone(),
                group_by: spec.group_by.iter().map(label).collect(),
                metrics: spec.metrics.iter().map(|m| m.name.clone()).collect(),
            },
            filter: conditions(&spec.filter),
            group_by: spec
                .group_by
                .iter()
                .map(|g| Path::new(group_path(g)))
                .collect(),
            metrics: spec
                .metrics
                .iter()
                .map(|m| {
                    let sum = match m.op {
                        AggregateOp::Count => None,
                        AggregateOp::Sum => Some(Path::new(m.path.as_deref().unwrap_or(""))),
                    };
                    (conditions(&m.filter), sum)
                })
                .collect(),
        }
    }
}

/// One view over every object.
fn view(spec: &Prepared, objects: &[(&ResourceKind, &Value)]) -> View {
    let all = |preds: &[(Path, Predicate)], kind: &ResourceKind, object: &Value| {
        preds.iter().all(|(path, p)| holds(path, p, kind, object))
    };
    // Group first (every member object of each row), aggregate afterwards. Key parts are borrowed
    // from the objects until the row is made.
    type Members<'o> = Vec<(&'o ResourceKind, &'o Value)>;
    let mut groups: BTreeMap<SmallVec<[Cow<str>; 4]>, Members> = BTreeMap::new();
    for &(kind, object) in objects {
        if !spec.kind.matches(kind) || !all(&spec.filter, kind, object) {
            continue;
        }
        let key: SmallVec<[Cow<str>; 4]> = spec
            .group_by
            .iter()
            .map(|path| path.text_ref(kind, object).unwrap_or_default())
            .collect();
        groups.entry(key).or_default().push((kind, object));
    }
    let rows = groups
        .into_iter()
        .map(|(key, members)| {
            let values = spec
                .metrics
                .iter()
                .map(|(filter, sum)| {
                    let mut total = Decimal::ZERO;
                    for &(kind, object) in &members {
                        if !all(filter, kind, object) {
                            continue;
                        }
                        let add = match sum {
                            None => Decimal::ONE,
                            Some(path) => path.number(kind, object),
                        };
                        total = total.saturating_add(add);
                    }
                    total
                })
                .collect();
            let key: GroupKey = key.into_iter().map(Cow::into_owned).collect();
            (key, values)
        })
        .collect();
    View {
        schema: spec.schema.clone(),
        rows,
    }
}

/// A spec's kind, split at its slashes once: `*`, a kind name, or an exact `group/version/Kind`
/// (`version/Kind` for the core group).
enum KindSpec {
    Any,
    Name(String),
    Core {
        version: String,
        name: String,
    },
    Full {
        group: String,
        version: String,
        name: String,
    },
    Invalid,
}

impl KindSpec {
    fn new(spec_kind: &str) -> KindSpec {
        if spec_kind == "*" {
            return KindSpec::Any;
        }
        let mut parts = spec_kind.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None, None) => KindSpec::Name(name.to_owned()),
            (Some(version), Some(name), None, None) => KindSpec::Core {
                version: version.to_owned(),
                name: name.to_owned(),
            },
            (Some(group), Some(version), Some(name), None) => KindSpec::Full {
                group: group.to_owned(),
                version: version.to_owned(),
                name: name.to_owned(),
            },
            _ => KindSpec::Invalid,
        }
    }

    fn matches(&self, kind: &ResourceKind) -> bool {
        match self {
            KindSpec::Any => true,
            KindSpec::Name(name) => kind.kind == *name,
            KindSpec::Core { version, name } => {
                kind.group.is_empty() && kind.version == *version && kind.kind == *name
            }
            KindSpec::Full {
                group,
                version,
                name,
            } => kind.group == *group && kind.version == *version && kind.kind == *name,
            KindSpec::Invalid => false,
        }
    }
}

fn group_path(g: &GroupBy) -> &str {
    match g {
        GroupBy::Path(p) => p,
        GroupBy::Named { path, .. } => path,
    }
}

/// A group-by column's label: the explicit name, or the path's last field name.
fn label(g: &GroupBy) -> String {
    match g {
        GroupBy::Named { name, .. } => name.clone(),
        GroupBy::Path(p) if p == "@kind" => "kind".into(),
        GroupBy::Path(p) if p == "@gvk" => "gvk".into(),
        GroupBy::Path(p) => steps(p)
            .into_iter()
            .rev()
            .find_map(|s| match s {
                Step::Key(k) => Some(k),
                _ => None,
            })
            .unwrap_or_else(|| p.clone()),
    }
}

fn holds(path: &Path, p: &Predicate, kind: &ResourceKind, object: &Value) -> bool {
    let v = path.text_ref(kind, object);
    let v = v.as_deref();
    match &p.test {
        Test::Eq(s) => v == Some(s.0.as_str()),
        Test::Ne(s) => v != Some(s.0.as_str()),
        Test::In(set) => set.iter().any(|s| Some(s.0.as_str()) == v),
        Test::NotIn(set) => !set.iter().any(|s| Some(s.0.as_str()) == v),
        Test::Exists(present) => v.is_some() == *present,
    }
}

/// A path as written, and its steps.
struct Path {
    text: String,
    steps: Vec<Step>,
}

impl Path {
    fn new(text: &str) -> Path {
        let steps = if text.starts_with('@') {
            Vec::new()
        } else {
            steps(text)
        };
        Path {
            text: text.to_owned(),
            steps,
        }
    }

    /// The text the path finds (see [`json_text`]), borrowed where it can be.
    fn text_ref<'a>(&self, kind: &'a ResourceKind, object: &'a Value) -> Option<Cow<'a, str>> {
        match find(self, kind, object)? {
            Found::Json(Value::String(s)) => Some(Cow::Borrowed(s)),
            Found::Json(v) => json_text(v).map(Cow::Owned),
            Found::Text(t) => Some(t),
        }
    }

    /// The number a `sum` adds: absent or unparsable counts as zero.
    fn number(&self, kind: &ResourceKind, object: &Value) -> Decimal {
        let n = match find(self, kind, object) {
            Some(Found::Json(v)) => Decimal::from_json(v),
            Some(Found::Text(t)) => Decimal::parse(&t),
            None => None,
        };
        n.unwrap_or(Decimal::ZERO)
    }
}

/// One step of a path.
#[derive(Debug)]
enum Step {
    /// `.field` or `["quoted key"]`.
    Key(String),
    /// `[3]`.
    Index(usize),
    /// `[field=value]`: the first array element whose `field` has that text.
    Select(String, String),
}

/// Splits a path into steps, the obvious way (valid paths only).
fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .unwrap_or_else(|| panic!("naive evaluator: unclosed '[' in {path:?}"));
            let inner = &after[..end];
            rest = &after[end + 1..];
            if inner.len() >= 2 && inner.starts_with('"') && inner.ends_with('"') {
                out.push(Step::Key(inner[1..inner.len() - 1].to_owned()));
            } else if let Ok(i) = inner.parse::<usize>() {
                out.push(Step::Index(i));
            } else if let Some((field, value)) = inner.split_once('=') {
                let value = value.trim_matches('"');
                out.push(Step::Select(field.to_owned(), value.to_owned()));
            } else {
                panic!("naive evaluator: bad bracket {inner:?} in {path:?}");
            }
        } else {
            let body = rest.strip_prefix('.').unwrap_or(rest);
            let end = body.find(['.', '[']).unwrap_or(body.len());
            out.push(Step::Key(body[..end].to_owned()));
            rest = &body[end..];
        }
    }
    out
}

/// What a path points at.
enum Found<'a> {
    Json(&'a Value),
    Text(Cow<'a, str>),
}

fn find<'a>(path: &Path, kind: &'a ResourceKind, object: &'a Value) -> Option<Found<'a>> {
    match path.text.as_str() {
        "@kind" => return Some(Found::Text(Cow::Borrowed(&kind.kind))),
        "@gvk" => {
            let gvk = if kind.group.is_empty() {
                format!("{}/{}", kind.version, kind.kind)
            } else {
                format!("{}/{}/{}", kind.group, kind.version, kind.kind)
            };
            return Some(Found::Text(Cow::Owned(gvk)));
        }
        _ => {}
    }
    let mut cur = object;
    for step in &path.steps {
        cur = match step {
            Step::Key(k) => cur.as_object()?.get(k)?,
            Step::Index(i) => cur.as_array()?.get(*i)?,
            Step::Select(field, value) => cur.as_array()?.iter().find(|item| {
                item.as_object()
                    .and_then(|o| o.get(field))
                    .is_some_and(|v| match v {
                        Value::String(s) => s == value,
                        v => json_text(v).is_some_and(|t| t == *value),
                    })
            })?,
        };
    }
    Some(Found::Json(cur))
}

/// A JSON value as text: strings as they are, `true`/`false`, numbers as JSON writes them, arrays and
/// objects as compact JSON; `null` is no value.
fn json_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{MetricSpec, ViewSet, default_views};
    use serde_json::json;

    fn objects() -> Vec<(ResourceKind, Value)> {
        vec![
            (
                ResourceKind::node(),
                json!({"metadata": {"name": "n1", "labels": {"zone": "a"}},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                  "allocatable": {"cpu": "1500m"}}}),
            ),
            (
                ResourceKind::node(),
                json!({"metadata": {"name": "n2"}, "status": {"allocatable": {"cpu": 2}}}),
            ),
            (
                ResourceKind::pod(),
                json!({"metadata": {"namespace": "web", "name": "p", "labels": {"app.kubernetes.io/name": "x"}},
                       "status": {"phase": "Running"}}),
            ),
            (
                ResourceKind::deployment(),
                json!({"metadata": {"namespace": "web", "name": "d"},
                       "spec": {"replicas": 3}, "status": {"availableReplicas": 2}}),
            ),
        ]
    }

    #[test]
    fn default_views_by_hand() {
        let objs = objects();
        let v = evaluate(&default_views(), objs.iter().map(|(k, o)| (k, o)));
        let row = |view: &str, key: &[&str]| {
            let key: GroupKey = key.iter().map(|s| (*s).to_owned()).collect();
            v.get(view).and_then(|t| t.rows.get(&key)).map(|vals| {
                vals.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        assert_eq!(row("nodes", &[]).as_deref(), Some("2,1,1"));
        assert_eq!(
            row("pods_by_phase", &["web", "Running"]).as_deref(),
            Some("1")
        );
        assert_eq!(row("deployments", &["web"]).as_deref(), Some("1,3,0,2"));
        assert_eq!(row("objects_by_kind", &["Node", ""]).as_deref(), Some("2"));
        assert_eq!(
            row("objects_by_kind", &["Pod", "web"]).as_deref(),
            Some("1")
        );
        assert_eq!(
            v.get("deployments").map(|t| t.schema.group_by.clone()),
            Some(vec!["namespace".to_owned()])
        );
    }

    #[test]
    fn agrees_with_the_production_evaluator_on_paths_it_supports() {
        let specs = vec![
            ViewSpec::new("cpu", "v1/Node")
                .group_by_named("zone", "metadata.labels.zone")
                .metric(MetricSpec::sum("cpu", "status.allocatable.cpu"))
                .metric(MetricSpec::count("ready").only_where(Predicate::eq(
                    "status.conditions[type=\"Ready\"].status",
                    "True",
                ))),
            ViewSpec::new("names", "*")
                .group_by("@gvk")
                .group_by("metadata.labels[\"app.kubernetes.io/name\"]")
                .metric(MetricSpec::count("n")),
        ];
        let objs = objects();
        let set = ViewSet::new(&specs).unwrap_or_else(|e| panic!("{e}"));
        let naive = evaluate(&specs, objs.iter().map(|(k, o)| (k, o)));
        assert_eq!(naive, set.recompute(objs.iter().map(|(k, o)| (k, o))));
        let cpu = naive.get("cpu").map(|v| v.rows.clone()).unwrap_or_default();
        assert_eq!(
            cpu.get(&vec!["a".to_owned()]).map(|v| v[0].to_string()),
            Some("1.5".into())
        );
        let names = naive.get("names").map(|v| v.schema.group_by.clone());
        assert_eq!(
            names,
            Some(vec!["gvk".to_owned(), "app.kubernetes.io/name".to_owned()])
        );
    }

    #[test]
    fn update_recomputes_exactly_the_views_of_the_changed_kinds() {
        let oracle = Oracle::new(&default_views());
        let mut objs = objects();
        let mut views = oracle.evaluate(objs.iter().map(|(k, o)| (k, o)));
        // A pod changes phase: only views that may hold pods can differ.
        objs[2].1 =
            json!({"metadata": {"namespace": "web", "name": "p"}, "status": {"phase": "Failed"}});
        let pod = ResourceKind::pod();
        let mut updated = views.clone();
        oracle.update(&mut updated, &[&pod], objs.iter().map(|(k, o)| (k, o)));
        let full = oracle.evaluate(objs.iter().map(|(k, o)| (k, o)));
        assert_eq!(updated, full);
        assert_ne!(updated, views, "the change shows");
        // Told of no change, a view of a changed kind is kept as it was: update trusts `changed`.
        oracle.update(&mut views, &[], objs.iter().map(|(k, o)| (k, o)));
        assert_ne!(views, full);
        // A view missing from the table is computed whatever changed.
        let mut partial = Views::new();
        oracle.update(&mut partial, &[], objs.iter().map(|(k, o)| (k, o)));
        assert_eq!(partial, full);
    }
}
