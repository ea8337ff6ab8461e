//! What GitOps needs from the API server, judged by the real `kubectl` (1.32): server-side
//! apply of object sets with CRDs, field ownership and conflicts, removal of fields a manager
//! stops applying, every kind a manifest repository holds, server-side dry runs, unknown kinds,
//! and deletion propagation through owner references and finalizers.

mod support;

use serde_json::Value;
use sim_apiserver::ApiServerConfig;
use support::{Env, env};

fn small() -> Env {
    env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        ..Default::default()
    })
}

const OBJECT_SET: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: fast
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: gizmo
  namespace: shop
spec:
  size: 3
  color: red
"#;

/// The objects of [`OBJECT_SET`] as `kubectl get` arguments.
const SET_OBJECTS: &[&[&str]] = &[
    &["namespace", "shop"],
    &["configmap", "settings", "-n", "shop"],
    &["deployment", "web", "-n", "shop"],
    &["crd", "widgets.example.com"],
    &["widget", "gizmo", "-n", "shop"],
];

fn versions(e: &Env) -> Vec<String> {
    SET_OBJECTS
        .iter()
        .map(|o| {
            let mut a = vec!["get"];
            a.extend_from_slice(o);
            a.extend(["-o", "jsonpath={.metadata.resourceVersion}"]);
            e.ok(&a)
        })
        .collect()
}

fn managed_fields(e: &Env, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.push("--show-managed-fields");
    e.json(&a)["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn entry(fields: &[Value], manager: &str) -> Value {
    fields
        .iter()
        .find(|m| m["manager"] == manager)
        .cloned()
        .unwrap_or_else(|| panic!("no managedFields entry of {manager}: {fields:#?}"))
}

#[test]
fn apply_server_side_object_set_with_a_crd() {
    let e = small();
    let f = e.file("set.yaml", OBJECT_SET);
    // As against a real cluster: the custom resource cannot be mapped before its definition
    // exists; everything else is applied.
    let o = e.run(&["apply", "--server-side", "-f", &f]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(!o.status.success());
    assert!(
        err.contains("no matches for kind \"Widget\" in version \"example.com/v1\"")
            && err.contains("ensure CRDs are installed first"),
        "{err}"
    );
    for applied in [
        "namespace/shop serverside-applied",
        "configmap/settings serverside-applied",
        "deployment.apps/web serverside-applied",
        "customresourcedefinition.apiextensions.k8s.io/widgets.example.com serverside-applied",
    ] {
        assert!(out.contains(applied), "{out}");
    }
    let established = e.ok(&[
        "get",
        "crd",
        "widgets.example.com",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
    ]);
    assert_eq!(established, "True");

    let out = e.ok(&["apply", "--server-side", "-f", &f]);
    assert!(
        out.contains("widget.example.com/gizmo serverside-applied"),
        "{out}"
    );
    let table = e.ok(&["get", "wd", "-n", "shop"]);
    assert!(
        table.contains("SIZE")
            && table
                .lines()
                .any(|l| l.split_whitespace().eq(["gizmo", "3"])),
        "{table}"
    );

    // Re-applying the same set changes nothing: no new resource versions, no diff.
    let before = versions(&e);
    e.ok(&["apply", "--server-side", "-f", &f]);
    assert_eq!(versions(&e), before);
    assert!(e.run(&["diff", "--server-side", "-f", &f]).status.success());

    // The applier owns exactly what it applied, in the real FieldsV1 format.
    let fields = managed_fields(&e, &["deployment", "web", "-n", "shop"]);
    assert_eq!(fields.len(), 1, "{fields:#?}");
    let kubectl = entry(&fields, "kubectl");
    assert_eq!(kubectl["operation"], "Apply");
    assert_eq!(kubectl["apiVersion"], "apps/v1");
    assert_eq!(kubectl["fieldsType"], "FieldsV1");
    let f1 = &kubectl["fieldsV1"];
    assert_eq!(f1["f:spec"]["f:replicas"], serde_json::json!({}));
    assert_eq!(f1["f:spec"]["f:selector"], serde_json::json!({}));
    let container = &f1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
    assert_eq!(container["."], serde_json::json!({}));
    assert_eq!(container["f:image"], serde_json::json!({}));
    assert!(
        container["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"].is_object(),
        "{container}"
    );
    assert!(
        f1.get("f:status").is_none(),
        "status is never the applier's"
    );

    // Deleting the definition deletes its custom resources and stops serving the kind.
    e.ok(&["delete", "crd", "widgets.example.com"]);
    let err = e.fails(&["get", "widgets", "-n", "shop"]);
    assert!(err.contains("widgets"), "{err}");
    assert!(
        e.server
            .store()
            .list("v1", "Namespace", None)
            .iter()
            .any(|n| n["metadata"]["name"] == "shop")
    );
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: checkout
  labels: {app: checkout}
spec:
  replicas: 1
  selector:
    matchLabels: {app: checkout}
  template:
    metadata:
      labels: {app: checkout}
    spec:
      containers:
      - name: checkout
        image: checkout:1
"#;

#[test]
fn conflicting_managers_get_409_until_forced() {
    let e = small();
    let f = e.file("checkout.yaml", DEPLOYMENT);
    e.ok(&["apply", "-f", &f]);
    let changed = e.file(
        "checkout-2.yaml",
        &DEPLOYMENT
            .replace("replicas: 1", "replicas: 3")
            .replace("checkout:1", "checkout:2"),
    );
    let err = e.fails(&[
        "apply",
        "--server-side",
        "--field-manager=gitops",
        "-f",
        &changed,
    ]);
    assert!(
        err.contains(
            "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"checkout\"].image"
        ),
        "{err}"
    );
    assert!(err.contains("--force-conflicts"), "kubectl explains: {err}");
    let one = e.file(
        "checkout-3.yaml",
        &DEPLOYMENT.replace("replicas: 1", "replicas: 3"),
    );
    let err = e.fails(&[
        "apply",
        "--server-side",
        "--field-manager=gitops",
        "-f",
        &one,
    ]);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"),
        "{err}"
    );
    assert_eq!(
        e.ok(&[
            "get",
            "deploy",
            "checkout",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "1",
        "a conflicting apply changes nothing"
    );

    e.ok(&[
        "apply",
        "--server-side",
        "--field-manager=gitops",
        "--force-conflicts",
        "-f",
        &changed,
    ]);
    assert_eq!(
        e.ok(&[
            "get",
            "deploy",
            "checkout",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "3"
    );
    // The applier owns the fields now (and kubectl folded its client-side apply entry into it,
    // as kubectl does after a successful server-side apply over a client-side one).
    let fields = managed_fields(&e, &["deployment", "checkout"]);
    let gitops = entry(&fields, "gitops");
    assert_eq!(gitops["operation"], "Apply");
    assert!(gitops["fieldsV1"]["f:spec"]["f:replicas"].is_object());
    assert!(
        fields.iter().all(
            |m| m["manager"] == "gitops" || m["fieldsV1"]["f:spec"].get("f:replicas").is_none()
        ),
        "nobody else owns the replicas: {fields:#?}"
    );

    // kubectl's own server-side apply takes over what its client-side apply recorded.
    let f = e.file(
        "checkout.yaml",
        &DEPLOYMENT.replace("name: checkout\n", "name: checkout2\n"),
    );
    e.ok(&["apply", "-f", &f]);
    let f = e.file(
        "checkout.yaml",
        &DEPLOYMENT
            .replace("name: checkout\n", "name: checkout2\n")
            .replace("replicas: 1", "replicas: 4"),
    );
    e.ok(&["apply", "--server-side", "-f", &f]);
    let d = e.json(&["get", "deploy", "checkout2"]);
    assert_eq!(d["spec"]["replicas"], 4);
    let last = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or("");
    assert!(last.contains("\"replicas\":4"), "{last}");
}

#[test]
fn fields_a_manager_stops_applying_are_removed() {
    let e = small();
    let v1 = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {team: a}\ndata:\n  a: \"1\"\n  b: \"2\"\n";
    let f = e.file("cm.yaml", v1);
    e.ok(&["apply", "--server-side", "--field-manager=gitops", "-f", &f]);
    e.ok(&["label", "cm", "settings", "owner=ops"]);
    let f = e.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
    );
    e.ok(&["apply", "--server-side", "--field-manager=gitops", "-f", &f]);
    let cm = e.json(&["get", "cm", "settings"]);
    assert_eq!(cm["data"], serde_json::json!({"a": "1"}));
    assert_eq!(
        cm["metadata"]["labels"],
        serde_json::json!({"owner": "ops"}),
        "the label another manager set stays"
    );
}

const MORE_KINDS: &str = r#"apiVersion: v1
kind: Namespace
metadata: {name: more}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: more}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: more}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bot, namespace: more}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: more}
spec:
  replicas: 2
  serviceName: svc
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: postgres:17}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: more}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: agent:1}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: loose, namespace: more}
spec:
  replicas: 1
  selector: {matchLabels: {app: loose}}
  template:
    metadata: {labels: {app: loose}}
    spec: {containers: [{name: l, image: l:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: single, namespace: more}
spec: {containers: [{name: s, image: busybox}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: more}
spec:
  template:
    spec: {restartPolicy: Never, containers: [{name: once, image: busybox}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: more}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec: {restartPolicy: Never, containers: [{name: n, image: busybox}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: more}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc, port: {number: 5432}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: more}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data, namespace: more}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 5Gi}}
---
apiVersion: v1
kind: Event
metadata: {name: note, namespace: more}
involvedObject: {kind: Pod, name: single, namespace: more}
reason: Noted
message: hello
type: Normal
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: more}
rules: [{apiGroups: [""], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: more}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects: [{kind: ServiceAccount, name: bot, namespace: more}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: more-reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: more-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: more-reader}
subjects: [{kind: ServiceAccount, name: bot, namespace: more}]
"#;

#[test]
fn every_kind_of_a_manifest_repository() {
    let e = small();
    let f = e.file("more.yaml", MORE_KINDS);
    let out = e.ok(&["apply", "--server-side", "-f", &f]);
    assert_eq!(out.lines().count(), 18, "{out}");
    for (kind, name) in [
        ("namespace", "more"),
        ("secret", "creds"),
        ("service", "svc"),
        ("serviceaccount", "bot"),
        ("statefulset", "db"),
        ("daemonset", "agent"),
        ("replicaset", "loose"),
        ("pod", "single"),
        ("job", "once"),
        ("cronjob", "nightly"),
        ("ingress", "web"),
        ("networkpolicy", "deny"),
        ("persistentvolumeclaim", "data"),
        ("role", "reader"),
        ("rolebinding", "reader"),
        ("clusterrole", "more-reader"),
        ("clusterrolebinding", "more-reader"),
        ("node", "sim-node-1"),
    ] {
        let table = e.ok(&["get", kind, name, "-n", "more"]);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains(name)),
            "kubectl get {kind} {name}: {table}"
        );
        let got = e.ok(&["get", kind, name, "-n", "more", "-o", "name"]);
        assert!(got.trim().ends_with(&format!("/{name}")), "{got}");
    }
    let events = e.ok(&["get", "events", "-n", "more"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("pod/single") && l.contains("hello")),
        "{events}"
    );
    let all = e.ok(&["get", "all", "-n", "more", "-o", "name"]);
    for want in [
        "pod/single",
        "service/svc",
        "daemonset.apps/agent",
        "statefulset.apps/db",
        "replicaset.apps/loose",
        "job.batch/once",
        "cronjob.batch/nightly",
    ] {
        assert!(all.lines().any(|l| l == want), "{want} missing: {all}");
    }
    assert_eq!(
        e.ok(&[
            "get",
            "pvc",
            "data",
            "-n",
            "more",
            "-o",
            "jsonpath={.status.phase}"
        ]),
        "Bound"
    );
    assert_eq!(
        e.ok(&[
            "get",
            "sts",
            "db",
            "-n",
            "more",
            "-o",
            "jsonpath={.status.readyReplicas}"
        ]),
        "2"
    );
    // Re-applying changes nothing; deleting the namespace takes everything in it.
    e.ok(&["apply", "--server-side", "-f", &f]);
    assert!(e.run(&["diff", "--server-side", "-f", &f]).status.success());
    e.ok(&["delete", "namespace", "more"]);
    let left = e.ok(&["get", "all", "-n", "more", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
    let ns = e.fails(&["get", "namespace", "more"]);
    assert!(ns.contains("namespaces \"more\" not found"), "{ns}");
    assert!(
        e.ok(&["get", "clusterrole", "more-reader", "-o", "name"])
            .contains("more-reader"),
        "cluster-scoped objects are not in the namespace"
    );
}

#[test]
fn unknown_kinds_and_namespaces_are_404() {
    let e = small();
    let err = e.fails(&["get", "foos"]);
    assert!(
        err.contains("the server doesn't have a resource type \"foos\""),
        "{err}"
    );
    let err = e.fails(&["get", "--raw", "/apis/example.com/v1/foos"]);
    assert!(
        err.contains("NotFound")
            && err.contains("the server could not find the requested resource"),
        "{err}"
    );
    let err = e.fails(&["get", "--raw", "/api/v1/foos"]);
    assert!(err.contains("NotFound"), "{err}");
    let f = e.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  namespace: nowhere\n",
    );
    let err = e.fails(&["apply", "--server-side", "-f", &f]);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
    let err = e.fails(&["create", "-f", &f]);
    assert!(err.contains("namespaces \"nowhere\" not found"), "{err}");
}

#[test]
fn server_dry_run_changes_nothing() {
    let e = small();
    let f = e.file("checkout.yaml", DEPLOYMENT);
    let out = e.ok(&["apply", "--server-side", "--dry-run=server", "-f", &f]);
    assert!(out.contains("(server dry run)"), "{out}");
    e.fails(&["get", "deploy", "checkout"]);
    e.ok(&["apply", "--server-side", "-f", &f]);
    let rv = e.ok(&[
        "get",
        "deploy",
        "checkout",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let scaled = e.file(
        "checkout-3.yaml",
        &DEPLOYMENT.replace("replicas: 1", "replicas: 3"),
    );
    let dry = e.json(&["apply", "--server-side", "--dry-run=server", "-f", &scaled]);
    assert_eq!(dry["spec"]["replicas"], 3, "the dry run shows the result");
    let diff = e.run(&["diff", "--server-side", "-f", &scaled]);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "kubectl diff exits 1 on changes"
    );
    let text = String::from_utf8_lossy(&diff.stdout);
    assert!(
        text.contains("-  replicas: 1") && text.contains("+  replicas: 3"),
        "{text}"
    );
    e.ok(&["delete", "deploy", "checkout", "--dry-run=server"]);
    e.ok(&[
        "create",
        "configmap",
        "extra",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    e.fails(&["get", "configmap", "extra"]);
    assert_eq!(
        e.ok(&[
            "get",
            "deploy",
            "checkout",
            "-o",
            "jsonpath={.metadata.resourceVersion} {.spec.replicas}"
        ]),
        format!("{rv} 1")
    );
}

/// Deployment → ReplicaSet → Pod, linked by owner references as the controllers link them.
fn chain(e: &Env, pod_finalizer: bool) {
    let f = e.file("checkout.yaml", DEPLOYMENT);
    e.ok(&["apply", "--server-side", "-f", &f]);
    let uid = |kind: &str, name: &str| e.ok(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"]);
    let owner = |kind: &str, api: &str, name: &str| {
        format!(
            "  ownerReferences:\n  - {{apiVersion: {api}, kind: {kind}, name: {name}, uid: {}, controller: true, blockOwnerDeletion: true}}\n",
            uid(kind, name)
        )
    };
    let rs = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: checkout-1\n{}spec:\n  replicas: 1\n  selector: {{matchLabels: {{app: checkout}}}}\n  template:\n    metadata: {{labels: {{app: checkout}}}}\n    spec: {{containers: [{{name: checkout, image: checkout:1}}]}}\n",
        owner("Deployment", "apps/v1", "checkout")
    );
    e.ok(&["apply", "--server-side", "-f", &e.file("rs.yaml", &rs)]);
    let fin = if pod_finalizer {
        "  finalizers: [example.com/hold]\n"
    } else {
        ""
    };
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: checkout-1-x\n  labels: {{app: checkout}}\n{fin}{}spec:\n  containers: [{{name: checkout, image: checkout:1}}]\n",
        owner("ReplicaSet", "apps/v1", "checkout-1")
    );
    e.ok(&["apply", "--server-side", "-f", &e.file("pod.yaml", &pod)]);
}

fn names(e: &Env, kind: &str) -> Vec<String> {
    e.ok(&["get", kind, "-o", "name"])
        .lines()
        .filter(|l| l.contains("checkout"))
        .map(str::to_string)
        .collect()
}

#[test]
fn cascading_deletion_background_orphan_foreground() {
    let e = small();

    chain(&e, false);
    e.ok(&["delete", "deployment", "checkout", "--cascade=background"]);
    assert!(names(&e, "replicasets").is_empty());
    assert!(names(&e, "pods").is_empty());

    chain(&e, false);
    e.ok(&["delete", "deployment", "checkout", "--cascade=orphan"]);
    assert!(names(&e, "deployments").is_empty());
    assert_eq!(names(&e, "replicasets"), vec!["replicaset.apps/checkout-1"]);
    assert_eq!(names(&e, "pods"), vec!["pod/checkout-1-x"]);
    let rs = e.json(&["get", "rs", "checkout-1"]);
    assert!(rs["metadata"].get("ownerReferences").is_none(), "{rs}");
    e.ok(&["delete", "rs", "checkout-1"]);
    assert!(
        names(&e, "pods").is_empty(),
        "the pod still belonged to the replica set"
    );

    // Foreground: the owners wait, marked for deletion, until the held pod is released.
    chain(&e, true);
    e.ok(&[
        "delete",
        "deployment",
        "checkout",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let d = e.json(&["get", "deploy", "checkout"]);
    assert!(d["metadata"]["deletionTimestamp"].is_string(), "{d}");
    assert_eq!(
        d["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"])
    );
    let rs = e.json(&["get", "rs", "checkout-1"]);
    assert_eq!(
        rs["metadata"]["finalizers"],
        serde_json::json!(["foregroundDeletion"])
    );
    let pods = e.ok(&["get", "pod", "checkout-1-x"]);
    assert!(pods.contains("Terminating"), "{pods}");
    let err = e.fails(&[
        "patch",
        "pod",
        "checkout-1-x",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold","example.com/more"]}}"#,
    ]);
    assert!(err.contains("no new finalizers can be added"), "{err}");
    e.ok(&[
        "patch",
        "pod",
        "checkout-1-x",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert!(names(&e, "pods").is_empty());
    assert!(names(&e, "replicasets").is_empty());
    assert!(names(&e, "deployments").is_empty());
}
