//! View values: the tables both sides hold (agentk computes them, kas mirrors them) and their JSON form
//! for kas's HTTP API and event feed.
//!
//! A view is a table of rows keyed by the group-by values; each row holds one [`Decimal`] per metric.
//! JSON form of a view (rows flattened into objects of labels and metrics, in key order):
//!
//! ```json
//! {"name": "pods_by_phase", "kind": "Pod", "group_by": ["namespace", "phase"], "metrics": ["count"],
//!  "rows": [{"namespace": "default", "phase": "Running", "count": 3}]}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::decimal::Decimal;

/// A row key: one string per group-by field (`""` for an absent value).
pub type GroupKey = Vec<String>;

/// What a view's columns are. Fixed for an agentk process lifetime (an epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewSchema {
    /// View name.
    pub name: String,
    /// The spec's kind (`Pod`, `apps/v1/Deployment`, `*`).
    pub kind: String,
    /// Labels of the key fields, in key order.
    pub group_by: Vec<String>,
    /// Metric names, in value order.
    pub metrics: Vec<String>,
}

/// One view's current table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Columns.
    pub schema: ViewSchema,
    /// Rows by key; each value has one entry per metric.
    pub rows: BTreeMap<GroupKey, Vec<Decimal>>,
}

impl View {
    /// An empty table.
    pub fn new(schema: ViewSchema) -> Self {
        View {
            schema,
            rows: BTreeMap::new(),
        }
    }

    /// The key as a JSON object of labels.
    pub fn key_json(&self, key: &[String]) -> Map<String, Value> {
        self.schema
            .group_by
            .iter()
            .zip(key)
            .map(|(label, v)| (label.clone(), Value::String(v.clone())))
            .collect()
    }

    /// The values as a JSON object of metrics.
    pub fn values_json(&self, values: &[Decimal]) -> Map<String, Value> {
        self.schema
            .metrics
            .iter()
            .zip(values)
            .map(|(name, v)| (name.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
            .collect()
    }

    /// One row as a flat JSON object of labels and metrics.
    pub fn row_json(&self, key: &[String], values: &[Decimal]) -> Value {
        let mut row = self.key_json(key);
        row.extend(self.values_json(values));
        Value::Object(row)
    }

    /// The value of metric `metric` summed over all rows (e.g. total pods across namespaces).
    pub fn total(&self, metric: &str) -> Option<Decimal> {
        let i = self.schema.metrics.iter().position(|m| m == metric)?;
        Some(
            self.rows
                .values()
                .filter_map(|v| v.get(i))
                .fold(Decimal::ZERO, |a, b| a.saturating_add(*b)),
        )
    }
}

impl Serialize for View {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            #[serde(flatten)]
            schema: &'a ViewSchema,
            rows: Vec<Value>,
        }
        Json {
            schema: &self.schema,
            rows: self.rows.iter().map(|(k, v)| self.row_json(k, v)).collect(),
        }
        .serialize(serializer)
    }
}

/// Every view, by name. Serialises as a JSON object `{name: view}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Views {
    views: BTreeMap<String, View>,
}

impl Views {
    /// No views.
    pub fn new() -> Self {
        Views::default()
    }

    /// One view.
    pub fn get(&self, name: &str) -> Option<&View> {
        self.views.get(name)
    }

    /// Mutable access to one view.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut View> {
        self.views.get_mut(name)
    }

    /// Adds or replaces a view.
    pub fn insert(&mut self, view: View) {
        self.views.insert(view.schema.name.clone(), view);
    }

    /// Views in name order.
    pub fn iter(&self) -> impl Iterator<Item = &View> {
        self.views.values()
    }

    /// View names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }

    /// Number of views.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    /// Whether there are no views.
    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// A change as JSON: `{"view": name, "key": {labels}, "values": {metrics} | null}` (`null` when the
    /// row was removed). Labels are positional if the view is unknown.
    pub fn change_json(&self, change: &ViewChange) -> Value {
        let (key, values) = match self.get(&change.view) {
            Some(view) => (
                Value::Object(view.key_json(&change.key)),
                change
                    .values
                    .as_ref()
                    .map_or(Value::Null, |v| Value::Object(view.values_json(v))),
            ),
            None => (
                serde_json::to_value(&change.key).unwrap_or(Value::Null),
                serde_json::to_value(&change.values).unwrap_or(Value::Null),
            ),
        };
        serde_json::json!({"view": change.view, "key": key, "values": values})
    }

    /// The rows that differ between `self` (before) and `after`, as changes in (view, key) order.
    /// Views only in `self` yield removals of their rows.
    pub fn diff(&self, after: &Views) -> Vec<ViewChange> {
        let mut out = Vec::new();
        let empty = BTreeMap::new();
        let names: std::collections::BTreeSet<&String> =
            self.views.keys().chain(after.views.keys()).collect();
        for name in names {
            let a = self.views.get(name).map_or(&empty, |v| &v.rows);
            let b = after.views.get(name).map_or(&empty, |v| &v.rows);
            for (key, va) in a {
                match b.get(key) {
                    Some(vb) if vb == va => {}
                    Some(vb) => out.push(ViewChange {
                        view: name.clone(),
                        key: key.clone(),
                        values: Some(vb.clone()),
                    }),
                    None => out.push(ViewChange {
                        view: name.clone(),
                        key: key.clone(),
                        values: None,
                    }),
                }
            }
            for (key, vb) in b {
                if !a.contains_key(key) {
                    out.push(ViewChange {
                        view: name.clone(),
                        key: key.clone(),
                        values: Some(vb.clone()),
                    });
                }
            }
        }
        out.sort();
        out
    }
}

impl FromIterator<View> for Views {
    fn from_iter<I: IntoIterator<Item = View>>(iter: I) -> Self {
        let mut views = Views::new();
        for v in iter {
            views.insert(v);
        }
        views
    }
}

/// One row of one view changed: new values, or `None` when the row disappeared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViewChange {
    /// View name.
    pub view: String,
    /// Row key.
    pub key: GroupKey,
    /// New values; `None` if the row was removed.
    pub values: Option<Vec<Decimal>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> View {
        let mut v = View::new(ViewSchema {
            name: "pods".into(),
            kind: "Pod".into(),
            group_by: vec!["namespace".into(), "phase".into()],
            metrics: vec!["count".into()],
        });
        v.rows.insert(
            vec!["default".into(), "Running".into()],
            vec![Decimal::from_int(3)],
        );
        v.rows.insert(
            vec!["kube-system".into(), "Pending".into()],
            vec![Decimal::from_int(1)],
        );
        v
    }

    #[test]
    fn json_form() {
        let views: Views = [pods()].into_iter().collect();
        assert_eq!(
            serde_json::to_value(&views).ok(),
            Some(json!({"pods": {
                "name": "pods", "kind": "Pod", "group_by": ["namespace", "phase"], "metrics": ["count"],
                "rows": [
                    {"namespace": "default", "phase": "Running", "count": 3},
                    {"namespace": "kube-system", "phase": "Pending", "count": 1}
                ]
            }}))
        );
        assert_eq!(
            views.get("pods").and_then(|v| v.total("count")),
            Some(Decimal::from_int(4))
        );
        let change = ViewChange {
            view: "pods".into(),
            key: vec!["default".into(), "Running".into()],
            values: None,
        };
        assert_eq!(
            views.change_json(&change),
            json!({"view": "pods", "key": {"namespace": "default", "phase": "Running"}, "values": null})
        );
    }

    #[test]
    fn diff_finds_every_difference() {
        let before: Views = [pods()].into_iter().collect();
        let mut after_view = pods();
        after_view.rows.insert(
            vec!["default".into(), "Running".into()],
            vec![Decimal::from_int(4)],
        );
        after_view
            .rows
            .remove(&vec!["kube-system".to_owned(), "Pending".to_owned()]);
        after_view
            .rows
            .insert(vec!["x".into(), "Failed".into()], vec![Decimal::ONE]);
        let after: Views = [after_view].into_iter().collect();
        let d = before.diff(&after);
        assert_eq!(d.len(), 3);
        assert_eq!(before.diff(&before), vec![]);
        assert_eq!(after.diff(&Views::new()).len(), 2);
    }
}
