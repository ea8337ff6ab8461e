//! Store semantics: watch events, relists, stale/duplicate suppression, replace, queries.

use protocol::cache::{
    ChangeObserver, ChangeType, KindLookupError, LabelSelector, ObjectChange, ResourceKind, Store,
    StoreError, WatchEvent,
};
use serde_json::{Value, json};

fn pod(ns: &str, name: &str, uid: &str, rv: &str, labels: Value) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "uid": uid, "resourceVersion": rv, "labels": labels},
        "status": {"phase": "Running"}
    })
}

fn p(name: &str, uid: &str, rv: &str) -> Value {
    pod("default", name, uid, rv, json!({}))
}

/// Records observer calls as (old rv, new rv).
#[derive(Default)]
struct Calls(Vec<(Option<String>, Option<String>)>);

impl ChangeObserver for Calls {
    fn observe(&mut self, _: &ResourceKind, old: Option<&Value>, new: Option<&Value>) {
        let rv = |v: Option<&Value>| {
            v.and_then(|v| v["metadata"]["resourceVersion"].as_str())
                .map(str::to_owned)
        };
        self.0.push((rv(old), rv(new)));
    }
}

fn apply(store: &mut Store, e: WatchEvent) -> Vec<(String, ChangeType)> {
    match store.apply(&ResourceKind::pod(), e, &mut ()) {
        Ok(c) => c.into_iter().map(|c| (c.name, c.change_type)).collect(),
        Err(e) => panic!("{e}"),
    }
}

fn rv_of(store: &Store, name: &str) -> Option<String> {
    store
        .get(&ResourceKind::pod(), "default", name)
        .and_then(|o| o["metadata"]["resourceVersion"].as_str())
        .map(str::to_owned)
}

#[test]
fn apply_modify_delete() {
    let mut s = Store::new();
    assert_eq!(
        apply(&mut s, WatchEvent::Apply(p("a", "u1", "1"))),
        vec![("a".into(), ChangeType::Added)]
    );
    assert_eq!(
        apply(&mut s, WatchEvent::Apply(p("a", "u1", "2"))),
        vec![("a".into(), ChangeType::Modified)]
    );
    assert_eq!(rv_of(&s, "a").as_deref(), Some("2"));
    // Duplicate and stale events are no-ops.
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("a", "u1", "2"))), vec![]);
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("a", "u1", "1"))), vec![]);
    assert_eq!(rv_of(&s, "a").as_deref(), Some("2"));
    // Numeric comparison, not lexicographic: "10" is newer than "9".
    assert_eq!(
        apply(&mut s, WatchEvent::Apply(p("a", "u1", "9"))),
        vec![("a".into(), ChangeType::Modified)]
    );
    assert_eq!(
        apply(&mut s, WatchEvent::Apply(p("a", "u1", "10"))),
        vec![("a".into(), ChangeType::Modified)]
    );
    // A stale delete is ignored; a current one removes.
    assert_eq!(apply(&mut s, WatchEvent::Delete(p("a", "u1", "3"))), vec![]);
    assert_eq!(s.len(), 1);
    assert_eq!(
        apply(&mut s, WatchEvent::Delete(p("a", "u1", "11"))),
        vec![("a".into(), ChangeType::Deleted)]
    );
    assert!(s.is_empty());
    assert_eq!(
        apply(&mut s, WatchEvent::Delete(p("a", "u1", "12"))),
        vec![]
    );
    assert_eq!(s.resource_version(&ResourceKind::pod()), Some("11"));
}

#[test]
fn other_uid_is_replace() {
    let mut s = Store::new();
    let mut calls = Calls::default();
    let k = ResourceKind::pod();
    assert!(
        s.apply(&k, WatchEvent::Apply(p("a", "u1", "5")), &mut calls)
            .is_ok()
    );
    // The recreated object may even carry a lower version: another uid is always a replace.
    let changes = s.apply(&k, WatchEvent::Apply(p("a", "u2", "3")), &mut calls);
    let changes: Vec<(String, ChangeType)> = changes
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.uid, c.change_type))
        .collect();
    assert_eq!(
        changes,
        vec![
            ("u1".into(), ChangeType::Deleted),
            ("u2".into(), ChangeType::Added)
        ]
    );
    assert_eq!(
        calls.0,
        vec![
            (None, Some("5".into())),
            (Some("5".into()), None),
            (None, Some("3".into()))
        ]
    );
    // A delete naming the old incarnation does not remove the new one.
    assert_eq!(apply(&mut s, WatchEvent::Delete(p("a", "u1", "6"))), vec![]);
    assert_eq!(rv_of(&s, "a").as_deref(), Some("3"));
}

#[test]
fn non_numeric_versions_apply_unless_identical() {
    let mut s = Store::new();
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("a", "u", "x"))).len(), 1);
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("a", "u", "x"))).len(), 0);
    assert_eq!(
        apply(&mut s, WatchEvent::Apply(p("a", "u", "abc"))).len(),
        1
    );
    // Without versions, content decides.
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("b", "u", ""))).len(), 1);
    assert_eq!(apply(&mut s, WatchEvent::Apply(p("b", "u", ""))).len(), 0);
    let changed = pod("default", "b", "u", "", json!({"x": "y"}));
    assert_eq!(apply(&mut s, WatchEvent::Apply(changed)).len(), 1);
}

#[test]
fn relist_swaps_atomically_and_yields_implied_changes() {
    let mut s = Store::new();
    for e in [
        WatchEvent::Apply(p("keep", "k", "1")),
        WatchEvent::Apply(p("change", "c", "1")),
        WatchEvent::Apply(p("gone", "g", "1")),
        WatchEvent::Apply(p("recreated", "r1", "1")),
    ] {
        apply(&mut s, e);
    }
    assert_eq!(apply(&mut s, WatchEvent::Init), vec![]);
    assert!(s.is_listing(&ResourceKind::pod()));
    assert_eq!(
        apply(&mut s, WatchEvent::InitApply(p("keep", "k", "1"))),
        vec![]
    );
    assert_eq!(
        apply(&mut s, WatchEvent::InitApply(p("change", "c", "2"))),
        vec![]
    );
    // The live store still serves the old contents during the relist.
    assert_eq!(rv_of(&s, "change").as_deref(), Some("1"));
    assert!(rv_of(&s, "gone").is_some());
    // A restart of the list discards what was buffered.
    apply(&mut s, WatchEvent::Init);
    for e in [
        WatchEvent::InitApply(p("keep", "k", "1")),
        WatchEvent::InitApply(p("change", "c", "2")),
        WatchEvent::InitApply(p("recreated", "r2", "2")),
        WatchEvent::InitApply(p("new", "n", "2")),
    ] {
        assert_eq!(apply(&mut s, e), vec![]);
    }
    let changes = apply(&mut s, WatchEvent::InitDone);
    assert_eq!(
        changes,
        vec![
            ("change".into(), ChangeType::Modified),
            ("gone".into(), ChangeType::Deleted),
            ("new".into(), ChangeType::Added),
            ("recreated".into(), ChangeType::Deleted),
            ("recreated".into(), ChangeType::Added),
        ]
    );
    assert_eq!(s.len(), 4);
    assert!(s.is_synced(&ResourceKind::pod()));
    assert!(!s.is_listing(&ResourceKind::pod()));
}

#[test]
fn relist_only_replaces_its_own_kind() {
    let mut s = Store::new();
    let node = json!({"metadata": {"name": "n1", "uid": "n1", "resourceVersion": "1"}});
    assert!(
        s.apply(&ResourceKind::node(), WatchEvent::Apply(node), &mut ())
            .is_ok()
    );
    apply(&mut s, WatchEvent::Apply(p("a", "a", "1")));
    apply(&mut s, WatchEvent::Init);
    let changes = apply(&mut s, WatchEvent::InitDone);
    assert_eq!(changes, vec![("a".into(), ChangeType::Deleted)]);
    assert_eq!(s.kind_len(&ResourceKind::node()), 1);
}

#[test]
fn protocol_errors_change_nothing() {
    let mut s = Store::new();
    let k = ResourceKind::pod();
    assert!(matches!(
        s.apply(&k, WatchEvent::InitApply(p("a", "a", "1")), &mut ()),
        Err(StoreError::NotListing { .. })
    ));
    assert!(matches!(
        s.apply(&k, WatchEvent::InitDone, &mut ()),
        Err(StoreError::NotListing { .. })
    ));
    assert!(matches!(
        s.apply(&k, WatchEvent::Apply(json!({"metadata": {}})), &mut ()),
        Err(StoreError::BadObject { .. })
    ));
    assert!(matches!(
        s.apply(&k, WatchEvent::Apply(json!("not an object")), &mut ()),
        Err(StoreError::BadObject { .. })
    ));
    let node = json!({"kind": "Node", "metadata": {"name": "x"}});
    assert!(matches!(
        s.apply(&k, WatchEvent::Apply(node), &mut ()),
        Err(StoreError::BadObject { .. })
    ));
    assert!(s.is_empty());
}

#[test]
fn bookmarks_only_advance_the_version() {
    let mut s = Store::new();
    apply(&mut s, WatchEvent::Apply(p("a", "a", "1")));
    assert_eq!(
        apply(
            &mut s,
            WatchEvent::Bookmark {
                resource_version: "77".into()
            }
        ),
        vec![]
    );
    assert_eq!(s.resource_version(&ResourceKind::pod()), Some("77"));
    assert_eq!(s.len(), 1);
}

#[test]
fn queries_by_namespace_and_selector() {
    let mut s = Store::new();
    let objs = [
        pod("a", "web-1", "1", "1", json!({"app": "web", "env": "prod"})),
        pod("a", "web-2", "2", "1", json!({"app": "web", "env": "dev"})),
        pod("a", "db-1", "3", "1", json!({"app": "db"})),
        pod("ab", "web-3", "4", "1", json!({"app": "web"})),
        pod("b", "x", "5", "1", json!({})),
    ];
    for o in objs {
        apply(&mut s, WatchEvent::Apply(o));
    }
    let names = |ns: Option<&str>, sel: &str| -> Vec<String> {
        let sel = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
        s.list(&ResourceKind::pod(), ns, &sel)
            .into_iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(names(Some("a"), ""), vec!["db-1", "web-1", "web-2"]);
    assert_eq!(names(None, "app=web"), vec!["web-1", "web-2", "web-3"]);
    assert_eq!(names(Some("a"), "app=web,env!=prod"), vec!["web-2"]);
    assert_eq!(names(None, "env in (prod,dev)"), vec!["web-1", "web-2"]);
    assert_eq!(names(None, "app notin (web)"), vec!["db-1", "x"]);
    assert_eq!(names(None, "!app"), vec!["x"]);
    assert_eq!(names(None, "env"), vec!["web-1", "web-2"]);
    assert_eq!(names(Some("nope"), ""), Vec::<String>::new());
    // Stored objects are self-describing, and the List form carries them.
    let list = s.list_json(
        &ResourceKind::pod(),
        Some("b"),
        &LabelSelector::everything(),
    );
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["kind"], "Pod");
    assert_eq!(list["items"][0]["apiVersion"], "v1");
    assert!(s.get(&ResourceKind::pod(), "a", "db-1").is_some());
    assert!(s.get(&ResourceKind::pod(), "b", "db-1").is_none());
    // The serialised form is the same octets, without copying the objects.
    for (ns, sel) in [(None, ""), (Some("a"), "app=web"), (Some("nope"), "")] {
        let sel = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{e}"));
        let want = serde_json::to_vec(&s.list_json(&ResourceKind::pod(), ns, &sel));
        let have = s.list_json_vec(&ResourceKind::pod(), ns, &sel);
        assert_eq!(
            have.map(String::from_utf8).ok(),
            want.map(String::from_utf8).ok()
        );
    }
}

#[test]
fn kind_lookup() {
    let mut s = Store::new();
    let dep = json!({"metadata": {"name": "d", "namespace": "x"}});
    assert!(
        s.apply(
            &ResourceKind::deployment(),
            WatchEvent::Apply(dep.clone()),
            &mut ()
        )
        .is_ok()
    );
    assert!(
        s.apply(
            &ResourceKind::new("extensions", "v1beta1", "Deployment"),
            WatchEvent::Apply(dep),
            &mut ()
        )
        .is_ok()
    );
    apply(&mut s, WatchEvent::Apply(p("a", "a", "1")));
    assert_eq!(s.find_kind("pods"), Ok(ResourceKind::pod()));
    assert_eq!(s.find_kind("Pod"), Ok(ResourceKind::pod()));
    assert_eq!(s.find_kind("v1/Pod"), Ok(ResourceKind::pod()));
    assert_eq!(
        s.find_kind("apps/v1/Deployment"),
        Ok(ResourceKind::deployment())
    );
    assert!(matches!(
        s.find_kind("deployments"),
        Err(KindLookupError::Ambiguous { .. })
    ));
    assert!(matches!(
        s.find_kind("nodes"),
        Err(KindLookupError::Unknown(_))
    ));
}

#[test]
fn change_records_serialise_compactly() {
    let c = ObjectChange {
        kind: ResourceKind::pod(),
        namespace: "default".into(),
        name: "web".into(),
        uid: "u".into(),
        resource_version: "5".into(),
        change_type: ChangeType::Added,
    };
    assert_eq!(
        serde_json::to_value(&c).ok(),
        Some(
            json!({"group": "", "version": "v1", "kind": "Pod", "namespace": "default", "name": "web",
                    "uid": "u", "resource_version": "5", "type": "Added"})
        )
    );
}
