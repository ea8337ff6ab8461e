//! The `kube` crate's client and `kube::runtime::watcher` against the simulated API server,
//! over real sockets on 127.0.0.1.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;
use sim_apiserver::{ApiServer, ApiServerConfig, PodPhase, RunningApiServer};

/// Hang guard for anything awaited in these tests.
const GUARD: Duration = Duration::from_secs(30);

async fn client(server: &RunningApiServer) -> kube::Client {
    let kc =
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig("sim")).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    kube::Client::try_from(cfg).expect("client builds")
}

fn start(config: ApiServerConfig) -> RunningApiServer {
    ApiServer::start(config).expect("server starts")
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items.iter().filter_map(|o| o.meta().name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_get_and_paging() {
    let server = start(ApiServerConfig {
        nodes: 2,
        pods: 7,
        ..Default::default()
    });
    let c = client(&server).await;
    let pods: Api<Pod> = Api::all(c.clone());
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    assert_eq!(list.items.len(), 7);
    let rv: u64 = list
        .metadata
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("list has a resourceVersion");
    assert!(rv > 0);
    let mut expected = names(
        &server
            .store()
            .list("v1", "Pod", None)
            .into_iter()
            .map(|v| serde_json::from_value::<Pod>(v).expect("pod decodes"))
            .collect::<Vec<_>>(),
    );
    expected.sort();
    let mut got = names(&list.items);
    got.sort();
    assert_eq!(got, expected);

    // Paging: 3 + 3 + 1.
    let mut all = Vec::new();
    let mut lp = ListParams::default().limit(3);
    for _ in 0..10 {
        let page = pods.list(&lp).await.expect("list page");
        assert!(page.items.len() <= 3);
        all.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(all.len(), 7);

    // Label selectors.
    let web: Api<Pod> = Api::namespaced(c.clone(), "default");
    let selected = web
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list by label");
    assert!(!selected.items.is_empty());
    assert!(selected.items.iter().all(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .map(String::as_str)
            == Some("web")
    }));
    let none = web
        .list(&ListParams::default().labels("app in (nothing-here)"))
        .await
        .expect("list by set");
    assert!(none.items.is_empty());

    let nodes: Api<Node> = Api::all(c.clone());
    let n = nodes.get("sim-node-1").await.expect("get node");
    assert_eq!(n.metadata.name.as_deref(), Some("sim-node-1"));
    let missing = nodes.get("nope").await.expect_err("missing node");
    match missing {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
        }
        other => panic!("expected a 404 Status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_patch_apply_delete() {
    let server = start(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    });
    let c = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings", "labels": {"team": "a"}},
        "data": {"mode": "fast"}
    }))
    .expect("configmap");
    let created = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    let err = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect_err("duplicate create");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    // Update with the current version works, with a stale one conflicts.
    let mut v1 = created.clone();
    v1.data
        .get_or_insert_default()
        .insert("mode".into(), "slow".into());
    let updated = cms
        .replace("settings", &PostParams::default(), &v1)
        .await
        .expect("replace");
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );
    let err = cms
        .replace("settings", &PostParams::default(), &v1)
        .await
        .expect_err("stale replace");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Merge, JSON and strategic merge patches.
    let p = cms
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "1"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        p.data
            .as_ref()
            .and_then(|d| d.get("extra"))
            .map(String::as_str),
        Some("1")
    );
    let p = cms
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "remove", "path": "/data/extra"}]))
                    .expect("json patch"),
            ),
        )
        .await
        .expect("json patch");
    assert!(p.data.as_ref().is_some_and(|d| !d.contains_key("extra")));
    let p = cms
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"team": "b"}}})),
        )
        .await
        .expect("strategic patch");
    assert_eq!(
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("b")
    );

    // Server-side apply creates, then merges.
    let ssa = PatchParams::apply("simulator-test");
    let applied = cms
        .patch(
            "applied",
            &ssa,
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"a": "1"}})),
        )
        .await
        .expect("apply create");
    assert_eq!(
        applied
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("1")
    );
    let applied = cms
        .patch(
            "applied",
            &ssa,
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"b": "2"}})),
        )
        .await
        .expect("apply merge");
    assert_eq!(
        applied
            .data
            .as_ref()
            .and_then(|d| d.get("b"))
            .map(String::as_str),
        Some("2")
    );

    // Deployments (apps/v1) and the status subresource.
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": {"app": "shop"}},
                              "spec": {"containers": [{"name": "shop", "image": "shop:1"}]}}}
    }))
    .expect("deployment");
    let d = deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    assert_eq!(d.status.as_ref().and_then(|s| s.replicas), Some(2));
    let s = deploys
        .patch_status(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .expect("patch status");
    assert_eq!(s.status.as_ref().and_then(|s| s.ready_replicas), Some(1));

    // Pods created through the API start Pending; the simulated kubelet runs them.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "job-"},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]}
    }))
    .expect("pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let name = pod.metadata.name.clone().expect("generated name");
    assert!(name.starts_with("job-"));
    assert_eq!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    let running = tokio::time::timeout(GUARD, async {
        loop {
            let p = pods.get(&name).await.expect("get pod");
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the simulated kubelet starts the pod");
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("sim-node-1")
    );
    let logs = pods.logs(&name, &Default::default()).await.expect("logs");
    assert!(logs.contains("handled request"), "{logs}");

    // Deleting a config map answers a Success status naming it (as the real registry does
    // for kinds that do not return the deleted object); then it is gone.
    let deleted = cms
        .delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    let status = deleted.right().expect("a Status for a deleted config map");
    assert_eq!(
        status.details.as_ref().map(|d| d.name.as_str()),
        Some("settings")
    );
    let deleted = pods
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete pod");
    assert!(deleted.left().is_some(), "deleting a pod returns the pod");
    let err = cms.get("settings").await.expect_err("deleted");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
    let err = cms
        .delete("settings", &DeleteParams::default())
        .await
        .expect_err("double delete");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

/// Waits for the next watcher event matching `pred`, skipping others (errors included).
async fn next_matching<S, K>(
    stream: &mut S,
    mut pred: impl FnMut(&watcher::Event<K>) -> bool,
) -> watcher::Event<K>
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(GUARD, async {
        loop {
            match stream.next().await {
                Some(Ok(ev)) if pred(&ev) => return ev,
                Some(_) => continue,
                None => panic!("watcher stream ended"),
            }
        }
    })
    .await
    .expect("expected watcher event within the hang guard")
}

fn is_apply_of(ev: &watcher::Event<Pod>, name: &str) -> bool {
    matches!(ev, watcher::Event::Apply(p) if p.metadata.name.as_deref() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_live_changes() {
    let server = start(ApiServerConfig {
        nodes: 1,
        pods: 2,
        ..Default::default()
    });
    let c = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let mut stream = watcher(pods, watcher::Config::default()).boxed();
    let mut initial = 0;
    next_matching(&mut stream, |ev| {
        if matches!(ev, watcher::Event::InitApply(_)) {
            initial += 1;
        }
        matches!(ev, watcher::Event::InitDone)
    })
    .await;
    assert_eq!(initial, 2, "the initial list has both pods");

    let store = server.store();
    store.add_pod("default", "live-1").expect("add pod");
    next_matching(&mut stream, |ev| is_apply_of(ev, "live-1")).await;
    store
        .set_pod_phase("default", "live-1", PodPhase::Failed)
        .expect("set phase");
    let ev = next_matching(&mut stream, |ev| is_apply_of(ev, "live-1")).await;
    let watcher::Event::Apply(p) = ev else {
        unreachable!("matched Apply")
    };
    assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Failed"));
    store.delete_pod("default", "live-1").expect("delete pod");
    next_matching(&mut stream, |ev| matches!(ev, watcher::Event::Delete(p) if p.metadata.name.as_deref() == Some("live-1"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_streaming_list() {
    let server = start(ApiServerConfig {
        nodes: 1,
        pods: 3,
        ..Default::default()
    });
    let c = client(&server).await;
    let pods: Api<Pod> = Api::all(c);
    let mut stream = watcher(pods, watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    next_matching(&mut stream, |ev| {
        if matches!(ev, watcher::Event::InitApply(_)) {
            initial += 1;
        }
        matches!(ev, watcher::Event::InitDone)
    })
    .await;
    assert_eq!(initial, 3);
    server
        .store()
        .add_pod("default", "after-init")
        .expect("add pod");
    next_matching(&mut stream, |ev| is_apply_of(ev, "after-init")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_relists_after_410() {
    // A tiny history: 30 changes to other resources push the watcher's version out of it.
    let server = start(ApiServerConfig {
        nodes: 1,
        pods: 1,
        history_size: 10,
        bookmark_interval: Duration::from_secs(3600),
        kubelet: false,
        ..Default::default()
    });
    let c = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    // Each watch request lasts 1s, so the watcher soon (re)starts its watch from the last
    // version it saw, which the changes below push out of the retained history.
    let mut stream = watcher(pods, watcher::Config::default().timeout(1)).boxed();
    next_matching(&mut stream, |ev| matches!(ev, watcher::Event::InitDone)).await;

    let store = server.store();
    for i in 0..30 {
        store
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": format!("noise-{i}"), "namespace": "default"}}))
            .expect("noise");
    }
    store.add_pod("default", "during-gap").expect("add pod");
    for i in 0..30 {
        store
            .delete("v1", "ConfigMap", Some("default"), &format!("noise-{i}"))
            .expect("noise");
    }
    // The watcher must see the 410, relist (Init ... InitDone) and find the new pod there.
    let mut saw_gone = false;
    let mut relisted_pod = false;
    tokio::time::timeout(GUARD, async {
        let mut in_relist = false;
        loop {
            match stream.next().await {
                Some(Err(watcher::Error::WatchError(e))) if e.code == 410 => saw_gone = true,
                Some(Ok(watcher::Event::Init)) if saw_gone => in_relist = true,
                Some(Ok(watcher::Event::InitApply(p)))
                    if in_relist && p.metadata.name.as_deref() == Some("during-gap") =>
                {
                    relisted_pod = true;
                }
                Some(Ok(watcher::Event::InitDone)) if in_relist => break,
                Some(_) => {}
                None => panic!("watcher ended"),
            }
        }
    })
    .await
    .expect("relist within the hang guard");
    assert!(saw_gone && relisted_pod);
    // And it keeps watching afterwards.
    store.add_pod("default", "after-relist").expect("add pod");
    next_matching(&mut stream, |ev| is_apply_of(ev, "after-relist")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_from_expired_version_gets_410_error_event() {
    let server = start(ApiServerConfig {
        nodes: 0,
        pods: 0,
        history_size: 5,
        ..Default::default()
    });
    let c = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let old = server.store().resource_version();
    for i in 0..10 {
        server
            .store()
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("c{i}"), "namespace": "default"}}))
            .expect("create");
    }
    let mut events = cms
        .watch(&WatchParams::default(), &old.to_string())
        .await
        .expect("watch")
        .boxed();
    let first = tokio::time::timeout(GUARD, events.try_next())
        .await
        .expect("event in time")
        .expect("decodes");
    match first {
        Some(WatchEvent::Error(e)) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    // A recent version replays exactly the newer changes.
    let recent = server.store().resource_version() - 2;
    let mut events = cms
        .watch(&WatchParams::default(), &recent.to_string())
        .await
        .expect("watch")
        .boxed();
    for expected in ["c8", "c9"] {
        let ev = tokio::time::timeout(GUARD, events.try_next())
            .await
            .expect("event in time")
            .expect("decodes");
        match ev {
            Some(WatchEvent::Added(cm)) => assert_eq!(cm.metadata.name.as_deref(), Some(expected)),
            other => panic!("expected ADDED {expected}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_from_kubeconfig() {
    let server = start(ApiServerConfig {
        bearer_token: Some("tok-123".into()),
        ..Default::default()
    });
    let c = client(&server).await;
    let nodes: Api<Node> = Api::all(c);
    let list = nodes
        .list(&ListParams::default())
        .await
        .expect("authorized list");
    assert_eq!(list.items.len(), 3);
    // Same server, kubeconfig without the token: 401.
    let bare = server.kubeconfig("sim").replace("token: tok-123", "{}");
    let kc = kube::config::Kubeconfig::from_yaml(&bare).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    let anon: Api<Node> = Api::all(kube::Client::try_from(cfg).expect("client"));
    let err = anon
        .list(&ListParams::default())
        .await
        .expect_err("no token");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err:?}"
    );
}

/// A one-node cluster without pods, and a client for it.
async fn small() -> (RunningApiServer, kube::Client) {
    let server = start(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    });
    let c = client(&server).await;
    (server, c)
}

fn deployment(name: &str, replicas: i32, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": name, "image": image}]}}}
    })
}

/// Server-side apply as a GitOps agent does it with `kube`: `Patch::Apply` with one field
/// manager, conflicts as typed 409 errors, `force` to take fields over, dry runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_ownership_and_conflicts() {
    let (_server, c) = small().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("gitops").force();
    let doc = json!({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "cfg"}, "data": {"a": "1"}});
    let cm = cms
        .patch("cfg", &pp, &Patch::Apply(&doc))
        .await
        .expect("apply creates");
    let mf = cm.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(mf.len(), 1, "{mf:?}");
    assert_eq!(mf[0].manager.as_deref(), Some("gitops"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(mf[0].fields_type.as_deref(), Some("FieldsV1"));
    let fields = serde_json::to_value(&mf[0].fields_v1).expect("fieldsV1");
    assert_eq!(fields, json!({"f:data": {"f:a": {}}}));
    let again = cms
        .patch("cfg", &pp, &Patch::Apply(&doc))
        .await
        .expect("re-apply");
    assert_eq!(
        again.metadata.resource_version, cm.metadata.resource_version,
        "an unchanged apply writes nothing"
    );

    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let created: Deployment =
        serde_json::from_value(deployment("shop", 1, "shop:1")).expect("deployment");
    deploys
        .create(
            &PostParams {
                field_manager: Some("creator".into()),
                ..Default::default()
            },
            &created,
        )
        .await
        .expect("create");
    let desired = deployment("shop", 3, "shop:1");
    let err = deploys
        .patch(
            "shop",
            &PatchParams::apply("gitops"),
            &Patch::Apply(&desired),
        )
        .await
        .expect_err("the replicas belong to creator");
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"creator\" using apps/v1: .spec.replicas"
    );
    let causes = status.details.map(|d| d.causes).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].field, ".spec.replicas");

    let dry = deploys
        .patch(
            "shop",
            &PatchParams::apply("gitops").force().dry_run(),
            &Patch::Apply(&desired),
        )
        .await
        .expect("dry run");
    assert_eq!(dry.spec.replicas, Some(3));
    let live = deploys.get("shop").await.expect("get");
    assert_eq!(live.spec.replicas, Some(1));

    let forced = deploys
        .patch(
            "shop",
            &PatchParams::apply("gitops").force(),
            &Patch::Apply(&desired),
        )
        .await
        .expect("forced apply");
    assert_eq!(forced.spec.replicas, Some(3));
    let managers: Vec<(String, String)> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        managers,
        vec![
            ("gitops".to_string(), "Apply".to_string()),
            ("creator".to_string(), "Update".to_string())
        ]
    );
}

/// Custom resources, as a GitOps agent applies them: the definition first, then (after
/// discovery sees the new kind) the resources, dynamically typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_through_discovery() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, GroupVersionKind};
    use kube::discovery::Discovery;

    let (_server, c) = small().await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": true}}}]}
    });
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let before = Discovery::new(c.clone()).run().await.expect("discovery");
    assert!(before.resolve_gvk(&gvk).is_none());
    crds.patch(
        "widgets.example.com",
        &PatchParams::apply("gitops"),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the definition");
    let aggregated = Discovery::new(c.clone())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let (ar, caps) = aggregated.resolve_gvk(&gvk).expect("Widget is served");
    assert_eq!(ar.plural, "widgets");
    assert!(
        aggregated
            .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
            .is_some()
    );
    assert!(
        aggregated
            .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Pod"))
            .is_some()
    );
    let discovery = Discovery::new(c.clone()).run().await.expect("discovery");
    let (ar, caps) = {
        let legacy = discovery.resolve_gvk(&gvk).expect("Widget is served");
        assert_eq!(legacy.0, ar);
        assert_eq!(legacy.1.scope, caps.scope);
        legacy
    };
    assert_eq!(ar.plural, "widgets");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": "gizmo"}, "spec": {"size": 3}});
    widgets
        .patch("gizmo", &PatchParams::apply("gitops"), &Patch::Apply(&w))
        .await
        .expect("apply the resource");
    let got = widgets.get("gizmo").await.expect("get");
    assert_eq!(got.data["spec"]["size"], 3);
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await
        .expect("delete the definition");
    let err = widgets
        .get("gizmo")
        .await
        .expect_err("gone with its definition");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

/// Deletion propagation through owner references with `kube`'s `DeleteParams`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_params_propagate_through_owner_references() {
    use k8s_openapi::api::apps::v1::ReplicaSet;

    let (_server, c) = small().await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let apply = PatchParams::apply("gitops");
    let owner_ref = |kind: &str, api: &str, name: &str, uid: Option<String>| {
        json!([{"apiVersion": api, "kind": kind, "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true}])
    };
    let chain = |hold: bool| {
        let (deploys, sets, pods, apply, owner_ref) = (&deploys, &sets, &pods, &apply, &owner_ref);
        async move {
            let d = deploys
                .patch(
                    "shop",
                    apply,
                    &Patch::Apply(deployment("shop", 1, "shop:1")),
                )
                .await
                .expect("deployment");
            let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": "shop-1",
                             "ownerReferences": owner_ref("Deployment", "apps/v1", "shop", d.metadata.uid)},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "shop"}},
                         "template": {"metadata": {"labels": {"app": "shop"}},
                                      "spec": {"containers": [{"name": "shop", "image": "shop:1"}]}}}});
            let rs = sets
                .patch("shop-1", apply, &Patch::Apply(&rs))
                .await
                .expect("replica set");
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "shop-1-a",
                             "ownerReferences": owner_ref("ReplicaSet", "apps/v1", "shop-1", rs.metadata.uid)},
                "spec": {"containers": [{"name": "shop", "image": "shop:1"}]}});
            if hold {
                pod["metadata"]["finalizers"] = json!(["example.com/hold"]);
            }
            pods.patch("shop-1-a", apply, &Patch::Apply(&pod))
                .await
                .expect("pod");
        }
    };
    let exists = |r: Result<(), kube::Error>| r.is_ok();

    chain(false).await;
    deploys
        .delete("shop", &DeleteParams::background())
        .await
        .expect("background delete");
    assert!(!exists(sets.get("shop-1").await.map(drop)));
    assert!(!exists(pods.get("shop-1-a").await.map(drop)));

    chain(false).await;
    deploys
        .delete("shop", &DeleteParams::orphan())
        .await
        .expect("orphan delete");
    let rs = sets
        .get("shop-1")
        .await
        .expect("orphaned replica set stays");
    assert!(rs.metadata.owner_references.is_none());
    assert!(exists(pods.get("shop-1-a").await.map(drop)));
    sets.delete("shop-1", &DeleteParams::background())
        .await
        .expect("delete replica set");
    assert!(!exists(pods.get("shop-1-a").await.map(drop)));

    chain(true).await;
    let d = deploys
        .delete("shop", &DeleteParams::foreground())
        .await
        .expect("foreground delete");
    let d = d.left().expect("still there, being deleted");
    assert!(d.metadata.deletion_timestamp.is_some());
    assert_eq!(
        d.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_string()])
    );
    assert!(
        exists(sets.get("shop-1").await.map(drop)),
        "waits for its pod"
    );
    pods.patch(
        "shop-1-a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release the pod");
    assert!(!exists(pods.get("shop-1-a").await.map(drop)));
    assert!(!exists(sets.get("shop-1").await.map(drop)));
    assert!(!exists(deploys.get("shop").await.map(drop)));
}
