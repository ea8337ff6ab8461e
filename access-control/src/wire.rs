//! The identity a request acts as, on the wire: [`ActAs`] ↔ the tunnel request head's
//! `impersonation` field (PROTOCOL.md §9.4). kas writes it, agentk (and the conformance self-test
//! agent) read it: one mapping both ways.

use protocol::proto::{Impersonation, ImpersonationExtra};

use crate::ActAs;

/// The head's `impersonation` for `act_as` (`None`: the agent's own identity).
pub fn impersonation_of(act_as: &ActAs) -> Option<Impersonation> {
    match act_as {
        ActAs::Agent => None,
        ActAs::Impersonate {
            user,
            uid,
            groups,
            extra,
        } => Some(Impersonation {
            user: user.clone(),
            uid: uid.clone().unwrap_or_default(),
            groups: groups.clone(),
            extra: extra
                .iter()
                .map(|(key, values)| ImpersonationExtra {
                    key: key.clone(),
                    values: values.clone(),
                })
                .collect(),
        }),
    }
}

/// Whom a head's `impersonation` says the request acts as (an empty `uid` is none). Whether `user`
/// is empty is the reader's to check.
pub fn act_as_of(imp: &Impersonation) -> ActAs {
    ActAs::Impersonate {
        user: imp.user.clone(),
        uid: (!imp.uid.is_empty()).then(|| imp.uid.clone()),
        groups: imp.groups.clone(),
        extra: imp
            .extra
            .iter()
            .map(|e| (e.key.clone(), e.values.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonation_carries_every_part_both_ways() {
        let act_as = ActAs::Impersonate {
            user: "gitlab:ci_job:1".into(),
            uid: Some("u".into()),
            groups: vec!["a".into(), "b".into()],
            extra: [("k".to_owned(), vec!["v1".to_owned(), "v2".to_owned()])].into(),
        };
        let i = impersonation_of(&act_as).expect("impersonates");
        assert_eq!(i.user, "gitlab:ci_job:1");
        assert_eq!(i.uid, "u");
        assert_eq!(i.groups, ["a", "b"]);
        assert_eq!(i.extra[0].key, "k");
        assert_eq!(i.extra[0].values, ["v1", "v2"]);
        assert_eq!(act_as_of(&i), act_as);
        assert_eq!(impersonation_of(&ActAs::Agent), None);
    }
}
