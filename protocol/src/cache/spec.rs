//! Declarative view specifications.
//!
//! A view is "group the objects of one kind (that pass a filter) by some fields, and aggregate some
//! metrics per group". Specs are plain data (serde), so kas or agentk can take more views from
//! configuration without code. JSON form:
//!
//! ```json
//! {
//!   "name": "nodes",
//!   "kind": "Node",
//!   "filter": [{"path": "metadata.labels.tier", "ne": "test"}],
//!   "group_by": [{"name": "zone", "path": "metadata.labels[\"topology.kubernetes.io/zone\"]"}],
//!   "metrics": [
//!     {"name": "count"},
//!     {"name": "ready", "op": "count", "where": [{"path": "status.conditions[type=Ready].status", "eq": "True"}]},
//!     {"name": "cpu", "op": "sum", "path": "status.allocatable.cpu"}
//!   ]
//! }
//! ```
//!
//! - `kind`: a kind name (`Pod`, any group), an exact `group/version/Kind` (`apps/v1/Deployment`), or
//!   `*` for every kind.
//! - `filter` / `where`: predicates that must all hold. Each has a `path` (see [`super::path`]) and one
//!   test: `eq`, `ne`, `in`, `not_in` (values compared as text) or `exists` (`true`/`false`). As in
//!   label selectors, `ne` and `not_in` also hold when the path is absent.
//! - `group_by`: paths whose text forms the row key; an absent value groups as `""`. A plain string
//!   is labelled by its last field name (`status.phase` → `phase`); `{"name", "path"}` sets the label.
//! - `metrics` (default: one `count`): `count` counts matching objects; `sum` adds the number at `path`
//!   ([`Decimal`]: JSON numbers, numeric strings, Kubernetes quantities; absent or
//!   unparsable counts as 0). A metric's `where` restricts which objects of the row it counts.
//!
//! A row exists while at least one object falls into it, so rows appear and disappear with objects.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::decimal::Decimal;
use super::object::ResourceKind;
use super::path::{FieldPath, PathError};
use super::table::ViewSchema;

/// A view definition (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSpec {
    /// Unique name, used in the API (`/views/{name}`) and on the wire.
    pub name: String,
    /// Kind name, `group/version/Kind`, or `*`.
    pub kind: String,
    /// Predicates every counted object must satisfy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Predicate>,
    /// Row key fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<GroupBy>,
    /// Aggregates per row.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricSpec>,
}

fn default_metrics() -> Vec<MetricSpec> {
    vec![MetricSpec::count("count")]
}

/// One row-key field: a path, optionally with an explicit label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupBy {
    /// Labelled by the path's last field name.
    Path(String),
    /// Labelled explicitly.
    Named {
        /// Label.
        name: String,
        /// Path.
        path: String,
    },
}

/// An aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Name of the metric in the row.
    pub name: String,
    /// `count` (default) or `sum`.
    #[serde(default)]
    pub op: AggregateOp,
    /// For `sum`: the number to add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Predicates an object must satisfy to contribute to this metric.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Predicate>,
}

/// How a metric aggregates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateOp {
    /// Number of matching objects.
    #[default]
    Count,
    /// Sum of a numeric field over matching objects.
    Sum,
}

/// A condition on one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Predicate {
    /// Path to test.
    pub path: String,
    /// The test (flattened: `"eq": "True"`).
    #[serde(flatten)]
    pub test: Test,
}

/// The test of a [`Predicate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Present and equal.
    Eq(Scalar),
    /// Absent or different.
    Ne(Scalar),
    /// Present and one of.
    In(Vec<Scalar>),
    /// Absent or none of.
    NotIn(Vec<Scalar>),
    /// `true`: present (not null); `false`: absent.
    Exists(bool),
}

/// A comparison value: written as a JSON string, number or boolean, compared as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scalar(pub String);

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a string, number or boolean",
            )),
        }
    }
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Self {
        Scalar(s.to_owned())
    }
}

impl ViewSpec {
    /// A view of `kind` with no filter, no grouping and no metrics yet.
    pub fn new(name: &str, kind: &str) -> Self {
        ViewSpec {
            name: name.to_owned(),
            kind: kind.to_owned(),
            filter: Vec::new(),
            group_by: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Adds a filter predicate.
    #[must_use]
    pub fn filter(mut self, predicate: Predicate) -> Self {
        self.filter.push(predicate);
        self
    }

    /// Adds a row-key field labelled by its last field name.
    #[must_use]
    pub fn group_by(mut self, path: &str) -> Self {
        self.group_by.push(GroupBy::Path(path.to_owned()));
        self
    }

    /// Adds a row-key field with an explicit label.
    #[must_use]
    pub fn group_by_named(mut self, name: &str, path: &str) -> Self {
        self.group_by.push(GroupBy::Named {
            name: name.to_owned(),
            path: path.to_owned(),
        });
        self
    }

    /// Adds a metric.
    #[must_use]
    pub fn metric(mut self, metric: MetricSpec) -> Self {
        self.metrics.push(metric);
        self
    }
}

impl MetricSpec {
    /// Counts matching objects.
    pub fn count(name: &str) -> Self {
        MetricSpec {
            name: name.to_owned(),
            op: AggregateOp::Count,
            path: None,
            filter: Vec::new(),
        }
    }

    /// Sums the number at `path`.
    pub fn sum(name: &str, path: &str) -> Self {
        MetricSpec {
            name: name.to_owned(),
            op: AggregateOp::Sum,
            path: Some(path.to_owned()),
            filter: Vec::new(),
        }
    }

    /// Restricts the metric to objects satisfying `predicate`.
    #[must_use]
    pub fn only_where(mut self, predicate: Predicate) -> Self {
        self.filter.push(predicate);
        self
    }
}

impl Predicate {
    /// `path` equals `value`.
    pub fn eq(path: &str, value: &str) -> Self {
        Predicate {
            path: path.to_owned(),
            test: Test::Eq(value.into()),
        }
    }

    /// `path` is absent or differs from `value`.
    pub fn ne(path: &str, value: &str) -> Self {
        Predicate {
            path: path.to_owned(),
            test: Test::Ne(value.into()),
        }
    }

    /// `path` is one of `values`.
    pub fn is_in(path: &str, values: &[&str]) -> Self {
        Predicate {
            path: path.to_owned(),
            test: Test::In(values.iter().map(|v| Scalar::from(*v)).collect()),
        }
    }

    /// `path` is absent or none of `values`.
    pub fn not_in(path: &str, values: &[&str]) -> Self {
        Predicate {
            path: path.to_owned(),
            test: Test::NotIn(values.iter().map(|v| Scalar::from(*v)).collect()),
        }
    }

    /// `path` is present (`true`) or absent (`false`).
    pub fn exists(path: &str, present: bool) -> Self {
        Predicate {
            path: path.to_owned(),
            test: Test::Exists(present),
        }
    }
}

/// The path of the node Ready condition's status.
const NODE_READY: &str = "status.conditions[type=Ready].status";

/// The default views:
///
/// - `nodes`: `count`, `ready` (Ready condition `True`), `not_ready` (anything else, including no
///   condition);
/// - `pods_by_phase`: `count` per `namespace` and `phase`;
/// - `deployments`: per `namespace`: `count`, `desired` (Σ `spec.replicas`), `ready`
///   (Σ `status.readyReplicas`), `available` (Σ `status.availableReplicas`);
/// - `objects_by_kind`: `count` per `kind` and `namespace`, over every kind.
pub fn default_views() -> Vec<ViewSpec> {
    vec![
        ViewSpec::new("nodes", "Node")
            .metric(MetricSpec::count("count"))
            .metric(MetricSpec::count("ready").only_where(Predicate::eq(NODE_READY, "True")))
            .metric(MetricSpec::count("not_ready").only_where(Predicate::ne(NODE_READY, "True"))),
        ViewSpec::new("pods_by_phase", "Pod")
            .group_by("metadata.namespace")
            .group_by("status.phase")
            .metric(MetricSpec::count("count")),
        ViewSpec::new("deployments", "apps/v1/Deployment")
            .group_by("metadata.namespace")
            .metric(MetricSpec::count("count"))
            .metric(MetricSpec::sum("desired", "spec.replicas"))
            .metric(MetricSpec::sum("ready", "status.readyReplicas"))
            .metric(MetricSpec::sum("available", "status.availableReplicas")),
        ViewSpec::new("objects_by_kind", "*")
            .group_by("@kind")
            .group_by("metadata.namespace")
            .metric(MetricSpec::count("count")),
    ]
}

/// A spec that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewSpecError {
    /// The view name is empty.
    #[error("a view has an empty name")]
    EmptyName,
    /// Two views share a name.
    #[error("duplicate view name {0:?}")]
    DuplicateView(String),
    /// The kind is neither a name, `group/version/Kind` nor `*`.
    #[error("view {view:?}: invalid kind {kind:?}")]
    BadKind {
        /// View name.
        view: String,
        /// The kind as written.
        kind: String,
    },
    /// A path does not parse.
    #[error("view {view:?}: {source}")]
    BadPath {
        /// View name.
        view: String,
        /// The path error.
        source: PathError,
    },
    /// Two columns (group-by labels and metric names) share a name, or one is empty.
    #[error("view {view:?}: column name {column:?} is empty or used twice")]
    BadColumn {
        /// View name.
        view: String,
        /// The column.
        column: String,
    },
    /// `sum` without a path, or `count` with one.
    #[error("view {view:?}: metric {metric:?}: {reason}")]
    BadMetric {
        /// View name.
        view: String,
        /// Metric name.
        metric: String,
        /// What is wrong.
        reason: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KindMatch {
    Any,
    Name(String),
    Exact(ResourceKind),
}

impl KindMatch {
    pub(crate) fn matches(&self, kind: &ResourceKind) -> bool {
        match self {
            KindMatch::Any => true,
            KindMatch::Name(n) => &kind.kind == n,
            KindMatch::Exact(k) => k == kind,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledPredicate {
    path: FieldPath,
    test: Test,
}

impl CompiledPredicate {
    pub(crate) fn holds(&self, kind: &ResourceKind, object: &Value) -> bool {
        let v = self.path.eval_text(kind, object);
        let v = v.as_deref();
        match &self.test {
            Test::Eq(s) => v == Some(s.0.as_str()),
            Test::Ne(s) => v != Some(s.0.as_str()),
            Test::In(set) => v.is_some_and(|v| set.iter().any(|s| s.0 == v)),
            Test::NotIn(set) => v.is_none_or(|v| !set.iter().any(|s| s.0 == v)),
            Test::Exists(present) => v.is_some() == *present,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CompiledMetric {
    sum: Option<FieldPath>,
    filter: Vec<CompiledPredicate>,
}

/// A validated spec, ready to evaluate.
#[derive(Clone, Debug)]
pub(crate) struct CompiledView {
    pub(crate) schema: ViewSchema,
    pub(crate) kind: KindMatch,
    filter: Vec<CompiledPredicate>,
    group_by: Vec<FieldPath>,
    metrics: Vec<CompiledMetric>,
}

/// One object's share of a view: its row key and its metric values. The key borrows from the object
/// where it can, so comparing an object's contributions before and after a change allocates no
/// strings ([`Contribution::owned_key`] makes the table's key when a row is touched).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contribution<'a> {
    pub(crate) key: Small<Cow<'a, str>>,
    pub(crate) values: Small<Decimal>,
}

/// A contribution's key parts or values: built for every view an event touches (twice: before and
/// after), and views rarely have more than a few columns, so up to four are kept in place.
pub(crate) type Small<T> = smallvec::SmallVec<[T; 4]>;

impl Contribution<'_> {
    /// The row key as the tables hold it.
    pub(crate) fn owned_key(&self) -> Vec<String> {
        self.key.iter().map(|k| k.as_ref().to_owned()).collect()
    }
}

impl CompiledView {
    pub(crate) fn compile(spec: &ViewSpec) -> Result<CompiledView, ViewSpecError> {
        let view = &spec.name;
        if view.is_empty() {
            return Err(ViewSpecError::EmptyName);
        }
        let bad_kind = || ViewSpecError::BadKind {
            view: view.clone(),
            kind: spec.kind.clone(),
        };
        let kind = if spec.kind == "*" {
            KindMatch::Any
        } else if spec.kind.contains('/') {
            KindMatch::Exact(spec.kind.parse().map_err(|_| bad_kind())?)
        } else if !spec.kind.is_empty() && spec.kind.bytes().all(|b| b.is_ascii_alphanumeric()) {
            KindMatch::Name(spec.kind.clone())
        } else {
            return Err(bad_kind());
        };
        let path = |p: &str| {
            FieldPath::parse(p).map_err(|source| ViewSpecError::BadPath {
                view: view.clone(),
                source,
            })
        };
        let predicates = |ps: &[Predicate]| -> Result<Vec<CompiledPredicate>, ViewSpecError> {
            ps.iter()
                .map(|p| {
                    Ok(CompiledPredicate {
                        path: path(&p.path)?,
                        test: p.test.clone(),
                    })
                })
                .collect()
        };
        let mut columns = BTreeSet::new();
        let mut column = |name: &str| {
            if name.is_empty() || !columns.insert(name.to_owned()) {
                return Err(ViewSpecError::BadColumn {
                    view: view.clone(),
                    column: name.to_owned(),
                });
            }
            Ok(name.to_owned())
        };
        let mut group_by = Vec::with_capacity(spec.group_by.len());
        let mut labels = Vec::with_capacity(spec.group_by.len());
        for g in &spec.group_by {
            let (label, p) = match g {
                GroupBy::Path(p) => {
                    let p = path(p)?;
                    (p.label(), p)
                }
                GroupBy::Named { name, path: p } => (name.clone(), path(p)?),
            };
            labels.push(column(&label)?);
            group_by.push(p);
        }
        let mut metrics = Vec::with_capacity(spec.metrics.len());
        let mut names = Vec::with_capacity(spec.metrics.len());
        for m in &spec.metrics {
            names.push(column(&m.name)?);
            let bad = |reason| ViewSpecError::BadMetric {
                view: view.clone(),
                metric: m.name.clone(),
                reason,
            };
            let sum = match (m.op, &m.path) {
                (AggregateOp::Count, None) => None,
                (AggregateOp::Count, Some(_)) => {
                    return Err(bad("count takes no path (use `where` to restrict it)"));
                }
                (AggregateOp::Sum, Some(p)) => Some(path(p)?),
                (AggregateOp::Sum, None) => return Err(bad("sum needs a path")),
            };
            metrics.push(CompiledMetric {
                sum,
                filter: predicates(&m.filter)?,
            });
        }
        Ok(CompiledView {
            schema: ViewSchema {
                name: view.clone(),
                kind: spec.kind.clone(),
                group_by: labels,
                metrics: names,
            },
            kind,
            filter: predicates(&spec.filter)?,
            group_by,
            metrics,
        })
    }

    /// The object's row key and metric values, or `None` if the view does not count it.
    pub(crate) fn contribution<'a>(
        &self,
        kind: &'a ResourceKind,
        object: &'a Value,
    ) -> Option<Contribution<'a>> {
        if !self.kind.matches(kind) {
            return None;
        }
        self.contribution_of_kind(kind, object)
    }

    /// [`CompiledView::contribution`] of an object whose kind the caller checked with
    /// `self.kind.matches(kind)` (the view set does once per event, not once per object).
    pub(crate) fn contribution_of_kind<'a>(
        &self,
        kind: &'a ResourceKind,
        object: &'a Value,
    ) -> Option<Contribution<'a>> {
        if !self.filter.iter().all(|p| p.holds(kind, object)) {
            return None;
        }
        #[cfg_attr(not(feature = "testing"), allow(unused_mut))]
        let mut key: Small<Cow<'a, str>> = self
            .group_by
            .iter()
            .map(|p| p.eval_text(kind, object).unwrap_or_default())
            .collect();
        #[cfg(feature = "testing")]
        let fault = crate::testing::faults::view_fault();
        #[cfg(feature = "testing")]
        if fault == Some(crate::testing::faults::ViewFault::FailedCountsAsPending) {
            for k in key.iter_mut().filter(|k| *k == "Failed") {
                *k = Cow::Borrowed("Pending");
            }
        }
        let values = self
            .metrics
            .iter()
            .map(|m| {
                #[cfg(feature = "testing")]
                let ignore_filter =
                    fault == Some(crate::testing::faults::ViewFault::IgnoreMetricFilter);
                #[cfg(not(feature = "testing"))]
                let ignore_filter = false;
                if !ignore_filter && !m.filter.iter().all(|p| p.holds(kind, object)) {
                    return Decimal::ZERO;
                }
                match &m.sum {
                    None => Decimal::ONE,
                    Some(p) => match p.eval(kind, object) {
                        Some(super::path::PathValue::Json(v)) => {
                            Decimal::from_json(v).unwrap_or(Decimal::ZERO)
                        }
                        Some(super::path::PathValue::Str(s)) => {
                            Decimal::parse(&s).unwrap_or(Decimal::ZERO)
                        }
                        None => Decimal::ZERO,
                    },
                }
            })
            .collect();
        Some(Contribution { key, values })
    }
}

/// Compiles a set of specs, checking names are unique.
pub(crate) fn compile_all(specs: &[ViewSpec]) -> Result<Vec<CompiledView>, ViewSpecError> {
    let mut names = BTreeSet::new();
    specs
        .iter()
        .map(|s| {
            if !names.insert(s.name.as_str()) {
                return Err(ViewSpecError::DuplicateView(s.name.clone()));
            }
            CompiledView::compile(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_form_parses() {
        let spec: Result<ViewSpec, _> = serde_json::from_value(json!({
            "name": "nodes",
            "kind": "Node",
            "filter": [{"path": "metadata.labels.tier", "ne": "test"}],
            "group_by": ["metadata.namespace", {"name": "condition", "path": NODE_READY}],
            "metrics": [
                {"name": "count"},
                {"name": "ready", "op": "count", "where": [{"path": NODE_READY, "eq": "True"}]},
                {"name": "cpu", "op": "sum", "path": "status.allocatable.cpu"},
                {"name": "big", "where": [{"path": "status.capacity.pods", "in": [110, "250"]}]}
            ]
        }));
        let spec = match spec {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            spec.filter,
            vec![Predicate::ne("metadata.labels.tier", "test")]
        );
        assert_eq!(
            spec.metrics[1].filter,
            vec![Predicate::eq(NODE_READY, "True")]
        );
        assert_eq!(
            spec.metrics[3].filter,
            vec![Predicate::is_in("status.capacity.pods", &["110", "250"])]
        );
        let compiled = CompiledView::compile(&spec);
        assert_eq!(
            compiled.map(|c| c.schema.group_by).ok(),
            Some(vec!["namespace".to_owned(), "condition".to_owned()])
        );
        // Serialising and parsing again gives the same spec.
        let text = serde_json::to_string(&spec).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ViewSpec>(&text).ok(), Some(spec));
    }

    #[test]
    fn metrics_default_to_count() {
        let spec: Result<ViewSpec, _> =
            serde_json::from_value(json!({"name": "pods", "kind": "Pod"}));
        assert_eq!(
            spec.ok().map(|s| s.metrics),
            Some(vec![MetricSpec::count("count")])
        );
    }

    #[test]
    fn rejects_bad_specs() {
        let base = || ViewSpec::new("v", "Pod").metric(MetricSpec::count("count"));
        let cases: Vec<(ViewSpec, &str)> = vec![
            (ViewSpec::new("", "Pod"), "empty name"),
            (ViewSpec::new("v", "Po d"), "kind"),
            (ViewSpec::new("v", "x/y/z/w"), "kind"),
            (base().group_by("a..b"), "path"),
            (base().group_by("metadata.count"), "column clash"),
            (base().group_by_named("", "a"), "empty column"),
            (
                base().metric(MetricSpec {
                    path: None,
                    ..MetricSpec::sum("s", "x")
                }),
                "sum without path",
            ),
            (
                base().metric(MetricSpec {
                    path: Some("x".into()),
                    ..MetricSpec::count("c")
                }),
                "count with path",
            ),
            (base().filter(Predicate::eq("[", "x")), "filter path"),
        ];
        for (spec, what) in cases {
            assert!(CompiledView::compile(&spec).is_err(), "{what}");
        }
        assert!(matches!(
            compile_all(&[base(), base()]),
            Err(ViewSpecError::DuplicateView(_))
        ));
        assert!(
            serde_json::from_value::<ViewSpec>(json!({"name": "a", "kind": "Pod", "extra": 1}))
                .is_err()
        );
        assert!(compile_all(&default_views()).is_ok());
    }

    #[test]
    fn contribution_of_a_node() {
        let views = compile_all(&default_views()).unwrap_or_default();
        let node = json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}});
        let node_kind = ResourceKind::node();
        let c = views[0].contribution(&node_kind, &node);
        assert_eq!(
            c,
            Some(Contribution {
                key: Small::from_iter([]),
                values: [Decimal::ONE, Decimal::ZERO, Decimal::ONE]
                    .into_iter()
                    .collect()
            })
        );
        assert_eq!(views[1].contribution(&node_kind, &node), None);
        let by_kind = views[3].contribution(&node_kind, &node);
        assert_eq!(
            by_kind.map(|c| c.owned_key()),
            Some(vec!["Node".to_owned(), String::new()])
        );
    }

    #[test]
    fn predicate_semantics() {
        let k = ResourceKind::pod();
        let o = json!({"a": "x", "n": 3});
        let holds = |p: Predicate| {
            CompiledPredicate {
                path: FieldPath::parse(&p.path).unwrap_or_else(|e| panic!("{e}")),
                test: p.test,
            }
            .holds(&k, &o)
        };
        assert!(holds(Predicate::eq("a", "x")));
        assert!(!holds(Predicate::eq("b", "x")));
        assert!(holds(Predicate::ne("b", "x")));
        assert!(!holds(Predicate::ne("a", "x")));
        assert!(holds(Predicate::eq("n", "3")));
        assert!(holds(Predicate::is_in("a", &["y", "x"])));
        assert!(!holds(Predicate::is_in("b", &["x"])));
        assert!(holds(Predicate::not_in("b", &["x"])));
        assert!(!holds(Predicate::not_in("a", &["x"])));
        assert!(holds(Predicate::exists("a", true)));
        assert!(holds(Predicate::exists("b", false)));
    }
}
