//! Conversions between the cache's values and the `agent_tunnel.cache.v1` protobuf messages, and
//! decoding with typed errors.

use prost::Message;

use super::decimal::Decimal;
use super::object::ResourceKind;
use super::proto;
use super::store::{ChangeType, ObjectChange};
use super::table::{GroupKey, View, ViewSchema, Views};

/// A cache message that cannot be decoded or is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a valid protobuf encoding of the expected message.
    #[error("cannot decode cache message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Decodes, but breaks a rule of `cache.proto`.
    #[error("malformed cache message: {0}")]
    Malformed(String),
}

fn malformed(reason: impl Into<String>) -> WireError {
    WireError::Malformed(reason.into())
}

/// Decodes a message agentk sent.
pub fn decode_agent_message(bytes: &[u8]) -> Result<proto::AgentToServer, WireError> {
    Ok(proto::AgentToServer::decode(bytes)?)
}

/// Decodes a message kas sent.
pub fn decode_server_message(bytes: &[u8]) -> Result<proto::ServerToAgent, WireError> {
    Ok(proto::ServerToAgent::decode(bytes)?)
}

impl From<&ViewSchema> for proto::ViewSchema {
    fn from(s: &ViewSchema) -> Self {
        proto::ViewSchema {
            name: s.name.clone(),
            kind: s.kind.clone(),
            group_by: s.group_by.clone(),
            metrics: s.metrics.clone(),
        }
    }
}

impl From<&proto::ViewSchema> for ViewSchema {
    fn from(s: &proto::ViewSchema) -> Self {
        ViewSchema {
            name: s.name.clone(),
            kind: s.kind.clone(),
            group_by: s.group_by.clone(),
            metrics: s.metrics.clone(),
        }
    }
}

/// Encodes one row; `nanos` is left empty when every value is whole.
pub(crate) fn row_to_proto(key: &GroupKey, values: &[Decimal]) -> proto::Row {
    row_into_proto(key.clone(), values)
}

/// [`row_to_proto`] with a key the caller no longer needs.
pub(crate) fn row_into_proto(key: GroupKey, values: &[Decimal]) -> proto::Row {
    let mut units = Vec::with_capacity(values.len());
    let mut whole = true;
    for v in values {
        let (u, n) = v.to_parts();
        units.push(u);
        whole &= n == 0;
    }
    let nanos = if whole {
        Vec::new()
    } else {
        values.iter().map(|v| v.to_parts().1).collect()
    };
    proto::Row { key, units, nanos }
}

/// Decodes one row of a view with `schema`, checking its shape.
pub(crate) fn row_from_proto(
    row: &proto::Row,
    schema: &ViewSchema,
) -> Result<(GroupKey, Vec<Decimal>), WireError> {
    let values = row_values(row, schema)?;
    Ok((row.key.clone(), values))
}

/// Checks one row of a view with `schema` as [`row_values`] does, without making its values.
pub(crate) fn check_row(row: &proto::Row, schema: &ViewSchema) -> Result<(), WireError> {
    check_shape(row, schema)?;
    (0..row.units.len()).try_for_each(|i| value(row, i, schema).map(drop))
}

/// The values of one row of a view with `schema`, checking the row's shape (key included).
pub(crate) fn row_values(row: &proto::Row, schema: &ViewSchema) -> Result<Vec<Decimal>, WireError> {
    check_shape(row, schema)?;
    (0..row.units.len())
        .map(|i| value(row, i, schema))
        .collect()
}

/// A row's key and value count fit `schema`.
fn check_shape(row: &proto::Row, schema: &ViewSchema) -> Result<(), WireError> {
    if row.key.len() != schema.group_by.len() {
        return Err(malformed(format!(
            "view {:?}: row key has {} fields, schema {}",
            schema.name,
            row.key.len(),
            schema.group_by.len()
        )));
    }
    if row.units.len() != schema.metrics.len()
        || !(row.nanos.is_empty() || row.nanos.len() == row.units.len())
    {
        return Err(malformed(format!(
            "view {:?}: row has {} values ({} nanos), schema {} metrics",
            schema.name,
            row.units.len(),
            row.nanos.len(),
            schema.metrics.len()
        )));
    }
    Ok(())
}

/// Value `i` of a row whose shape was checked.
fn value(row: &proto::Row, i: usize, schema: &ViewSchema) -> Result<Decimal, WireError> {
    Decimal::from_parts(row.units[i], row.nanos.get(i).copied().unwrap_or(0))
        .ok_or_else(|| malformed(format!("view {:?}: nanos out of range", schema.name)))
}

/// Checks that a removed key fits the schema.
pub(crate) fn check_removed(row: &proto::RemovedRow, schema: &ViewSchema) -> Result<(), WireError> {
    if row.key.len() != schema.group_by.len() {
        return Err(malformed(format!(
            "view {:?}: removed key has {} fields, schema {}",
            schema.name,
            row.key.len(),
            schema.group_by.len()
        )));
    }
    Ok(())
}

/// The views a snapshot carries, validated: view names unique and non-empty, rows shaped as their
/// schema says, no duplicate keys.
pub fn views_from_snapshot(snapshot: &proto::Snapshot) -> Result<Views, WireError> {
    let mut views = Views::new();
    for data in &snapshot.views {
        let schema: ViewSchema = data
            .schema
            .as_ref()
            .map(ViewSchema::from)
            .ok_or_else(|| malformed("snapshot view without schema"))?;
        if schema.name.is_empty() || views.get(&schema.name).is_some() {
            return Err(malformed(format!(
                "snapshot view name {:?} empty or repeated",
                schema.name
            )));
        }
        let mut view = View::new(schema);
        for row in &data.rows {
            let (key, values) = row_from_proto(row, &view.schema)?;
            if view.rows.insert(key, values).is_some() {
                return Err(malformed(format!(
                    "snapshot view {:?} repeats a row key",
                    view.schema.name
                )));
            }
        }
        views.insert(view);
    }
    Ok(views)
}

impl From<ChangeType> for proto::ChangeType {
    fn from(t: ChangeType) -> Self {
        match t {
            ChangeType::Added => proto::ChangeType::Added,
            ChangeType::Modified => proto::ChangeType::Modified,
            ChangeType::Deleted => proto::ChangeType::Deleted,
        }
    }
}

impl From<&ObjectChange> for proto::ObjectChange {
    fn from(c: &ObjectChange) -> Self {
        proto::ObjectChange::from(c.clone())
    }
}

impl From<ObjectChange> for proto::ObjectChange {
    /// As `From<&ObjectChange>`, moving the strings instead of copying them.
    fn from(c: ObjectChange) -> Self {
        proto::ObjectChange {
            group: c.kind.group,
            version: c.kind.version,
            kind: c.kind.kind,
            namespace: c.namespace,
            name: c.name,
            r#type: proto::ChangeType::from(c.change_type) as i32,
            uid: c.uid,
            resource_version: c.resource_version,
        }
    }
}

fn change_type_from_proto(t: i32) -> Result<ChangeType, WireError> {
    match proto::ChangeType::try_from(t) {
        Ok(proto::ChangeType::Added) => Ok(ChangeType::Added),
        Ok(proto::ChangeType::Modified) => Ok(ChangeType::Modified),
        Ok(proto::ChangeType::Deleted) => Ok(ChangeType::Deleted),
        _ => Err(malformed(format!("object change type {t}"))),
    }
}

impl TryFrom<proto::ObjectChange> for ObjectChange {
    type Error = WireError;
    /// As `TryFrom<&proto::ObjectChange>`, moving the strings instead of copying them.
    fn try_from(c: proto::ObjectChange) -> Result<Self, WireError> {
        let change_type = change_type_from_proto(c.r#type)?;
        if c.kind.is_empty() || c.version.is_empty() || c.name.is_empty() {
            return Err(malformed("object change without kind, version or name"));
        }
        Ok(ObjectChange {
            kind: ResourceKind {
                group: c.group,
                version: c.version,
                kind: c.kind,
            },
            namespace: c.namespace,
            name: c.name,
            uid: c.uid,
            resource_version: c.resource_version,
            change_type,
        })
    }
}

impl TryFrom<&proto::ObjectChange> for ObjectChange {
    type Error = WireError;
    fn try_from(c: &proto::ObjectChange) -> Result<Self, WireError> {
        ObjectChange::try_from(c.clone())
    }
}

/// Wraps object changes for the cache stream.
pub fn object_changes_message(changes: &[ObjectChange]) -> proto::AgentToServer {
    proto::AgentToServer {
        msg: Some(proto::agent_to_server::Msg::ObjectChanges(
            proto::ObjectChanges {
                changes: changes.iter().map(proto::ObjectChange::from).collect(),
            },
        )),
    }
}

/// [`object_changes_message`] of changes the caller no longer needs (their strings are moved).
pub(crate) fn object_changes_into_message(changes: Vec<ObjectChange>) -> proto::AgentToServer {
    proto::AgentToServer {
        msg: Some(proto::agent_to_server::Msg::ObjectChanges(
            proto::ObjectChanges {
                changes: changes.into_iter().map(proto::ObjectChange::from).collect(),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ViewSchema {
        ViewSchema {
            name: "v".into(),
            kind: "Pod".into(),
            group_by: vec!["ns".into()],
            metrics: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn rows_round_trip() {
        let key = vec!["default".to_owned()];
        let whole = vec![Decimal::from_int(3), Decimal::from_int(-4)];
        let row = row_to_proto(&key, &whole);
        assert!(row.nanos.is_empty());
        assert_eq!(row_from_proto(&row, &schema()), Ok((key.clone(), whole)));
        let frac = vec![Decimal::from_nanos(1_500_000_000), Decimal::from_nanos(-7)];
        let row = row_to_proto(&key, &frac);
        assert_eq!(row.nanos.len(), 2);
        assert_eq!(row_from_proto(&row, &schema()), Ok((key, frac)));
    }

    #[test]
    fn rejects_misshapen_rows() {
        let ok = proto::Row {
            key: vec!["x".into()],
            units: vec![1, 2],
            nanos: vec![],
        };
        assert!(row_from_proto(&ok, &schema()).is_ok());
        for bad in [
            proto::Row {
                key: vec![],
                ..ok.clone()
            },
            proto::Row {
                units: vec![1],
                ..ok.clone()
            },
            proto::Row {
                nanos: vec![1],
                ..ok.clone()
            },
            proto::Row {
                nanos: vec![0, 1_000_000_000],
                ..ok.clone()
            },
        ] {
            assert!(row_from_proto(&bad, &schema()).is_err(), "{bad:?}");
        }
        assert!(decode_agent_message(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn object_change_round_trip() {
        let c = ObjectChange {
            kind: ResourceKind::deployment(),
            namespace: "ns".into(),
            name: "d".into(),
            uid: "u".into(),
            resource_version: "9".into(),
            change_type: ChangeType::Modified,
        };
        let p = proto::ObjectChange::from(&c);
        assert_eq!(ObjectChange::try_from(&p), Ok(c));
        let unknown = proto::ObjectChange { r#type: 0, ..p };
        assert!(ObjectChange::try_from(&unknown).is_err());
    }
}
