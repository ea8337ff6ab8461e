//! RBAC, impersonation and the review APIs, judged by the real kubectl: `auth whoami` (with
//! and without `--as`), `auth can-i` (and `--list`), 403 messages as Kubernetes words them,
//! subresources (`pods/exec`, `pods/log`), group and service-account subjects, resourceNames.

mod support;

use serde_json::Value;
use sim_apiserver::rbac::{self, PolicyRule, Subject};
use sim_apiserver::{ApiServerConfig, User};
use support::{Env, env};

const ADMIN: &str = "admin-token";
const JANE: &str = "jane-token";
const BOB: &str = "bob-token";
const AGENT: &str = "agent-token";

/// A cluster with an admin token and users jane (no groups), bob (group `devs`)
/// and the agent's service account, bound to `view` cluster-wide; jane may list and get pods
/// in `team-a` only.
fn cluster() -> Env {
    let e = env(ApiServerConfig {
        nodes: 1,
        pods: 0,
        bearer_token: Some(ADMIN.into()),
        // kubectl sends bearer tokens only over TLS.
        tls: true,
        users: vec![
            User::new(JANE, "jane", &[]),
            User::new(BOB, "bob", &["devs"]),
            User::service_account("gitlab-agent", "agentk", AGENT),
        ],
        initial_objects: vec![
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
            rbac::role(
                "team-a",
                "pod-reader",
                &[PolicyRule::resource(
                    &["get", "list", "watch"],
                    &[""],
                    &["pods", "pods/log"],
                )],
            ),
            rbac::role_binding(
                "team-a",
                "jane-reads-pods",
                false,
                "pod-reader",
                &[Subject::User("jane".into())],
            ),
            rbac::cluster_role_binding(
                "agentk-view",
                "view",
                &[Subject::ServiceAccount(
                    "gitlab-agent".into(),
                    "agentk".into(),
                )],
            ),
        ],
        ..ApiServerConfig::default()
    });
    for ns in ["team-a", "default"] {
        e.server
            .store()
            .add_pod(ns, "box")
            .unwrap_or_else(|err| panic!("add pod: {err}"));
    }
    e
}

/// kubectl as the holder of `token`: (success, stdout, stderr).
fn as_token(e: &Env, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--token", token];
    all.extend_from_slice(args);
    let o = e.run(&all);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(e: &Env, token: &str, args: &[&str]) -> String {
    let (success, out, err) = as_token(e, token, args);
    assert!(success, "kubectl {args:?} failed: {err}\n{out}");
    out
}

fn forbidden(e: &Env, token: &str, args: &[&str]) -> String {
    let (success, out, err) = as_token(e, token, args);
    assert!(
        !success,
        "kubectl {args:?} should be forbidden, printed {out}"
    );
    assert!(err.contains("(Forbidden)"), "kubectl {args:?}: {err}");
    err
}

/// Creates `obj` in the store (as the cluster's operator would).
fn put(e: &Env, obj: Value) {
    e.server
        .store()
        .create(obj)
        .unwrap_or_else(|err| panic!("{err}"));
}

fn whoami(e: &Env, token: &str, extra: &[&str]) -> Value {
    let mut args = vec!["auth", "whoami", "-o", "json"];
    args.extend_from_slice(extra);
    let out = ok(e, token, &args);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}"));
    v["status"]["userInfo"].clone()
}

fn can_i(e: &Env, token: &str, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (_, out, err) = as_token(e, token, &all);
    assert!(
        err.is_empty() || !err.contains("error"),
        "can-i {args:?}: {err}"
    );
    out.trim().to_string()
}

#[test]
fn whoami_shows_the_caller_and_the_impersonated_identity() {
    let e = cluster();
    let admin = whoami(&e, ADMIN, &[]);
    assert_eq!(admin["username"], "kubernetes-admin");
    assert_eq!(
        admin["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );
    let agent = whoami(&e, AGENT, &[]);
    assert_eq!(
        agent["username"],
        "system:serviceaccount:gitlab-agent:agentk"
    );
    // The human-readable table too.
    let table = ok(&e, JANE, &["auth", "whoami"]);
    assert!(
        table.contains("Username") && table.contains("jane"),
        "{table}"
    );

    // The admin may impersonate anyone, with groups and a uid (kubectl 1.32 has no flag for
    // extras: tests/http_api.rs sends `Impersonate-Extra-*` itself).
    let imp = whoami(
        &e,
        ADMIN,
        &[
            "--as",
            "gitlab:ci_job:42",
            "--as-group",
            "gitlab:ci_job",
            "--as-group",
            "gitlab:project:7",
            "--as-uid",
            "42",
        ],
    );
    assert_eq!(imp["username"], "gitlab:ci_job:42");
    assert_eq!(imp["uid"], "42");
    assert_eq!(
        imp["groups"],
        serde_json::json!(["gitlab:ci_job", "gitlab:project:7", "system:authenticated"])
    );

    // jane may not impersonate: the 403 names what was refused (`get --raw`: kubectl's
    // discovery reports a 403 only as "unknown", as against a real cluster).
    let err = forbidden(
        &e,
        JANE,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/team-a/pods",
            "--as",
            "system:admin",
        ],
    );
    assert!(
        err.contains(
            "users \"system:admin\" is forbidden: User \"jane\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        ),
        "{err}"
    );
    // kubectl auth whoami reports a refused review in its own words.
    let (success, _, err) = as_token(&e, JANE, &["auth", "whoami", "--as", "system:admin"]);
    assert!(!success && err.contains("do not have permission"), "{err}");
    // ... until a ClusterRole lets her impersonate bob (by name) and the group devs.
    put(
        &e,
        rbac::cluster_role(
            "impersonate-bob",
            &[
                PolicyRule {
                    resource_names: vec!["bob".into()],
                    ..PolicyRule::resource(&["impersonate"], &[""], &["users"])
                },
                PolicyRule {
                    resource_names: vec!["devs".into()],
                    ..PolicyRule::resource(&["impersonate"], &[""], &["groups"])
                },
            ],
        ),
    );
    put(
        &e,
        rbac::cluster_role_binding(
            "jane-impersonates-bob",
            "impersonate-bob",
            &[Subject::User("jane".into())],
        ),
    );
    let as_bob = whoami(&e, JANE, &["--as", "bob", "--as-group", "devs"]);
    assert_eq!(as_bob["username"], "bob");
    assert_eq!(
        as_bob["groups"],
        serde_json::json!(["devs", "system:authenticated"])
    );
    // Each part is checked: another group, a uid or another user are still refused.
    let err = forbidden(
        &e,
        JANE,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/team-a/pods",
            "--as",
            "bob",
            "--as-group",
            "admins",
        ],
    );
    assert!(err.contains("groups \"admins\" is forbidden"), "{err}");
    let err = forbidden(
        &e,
        JANE,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/team-a/pods",
            "--as",
            "bob",
            "--as-uid",
            "1",
        ],
    );
    assert!(
        err.contains("uids.authentication.k8s.io \"1\" is forbidden"),
        "{err}"
    );
    forbidden(
        &e,
        JANE,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/team-a/pods",
            "--as",
            "carol",
        ],
    );
    // Acting as bob, jane has bob's permissions, not her own.
    forbidden(
        &e,
        JANE,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/team-a/pods",
            "--as",
            "bob",
        ],
    );
}

#[test]
fn role_bindings_limit_a_user_to_its_namespace() {
    let e = cluster();
    let out = ok(&e, JANE, &["get", "pods", "-n", "team-a", "-o", "name"]);
    assert_eq!(out.trim(), "pod/box");
    ok(&e, JANE, &["get", "pod", "box", "-n", "team-a"]);
    ok(&e, JANE, &["logs", "box", "-n", "team-a"]);
    let err = forbidden(&e, JANE, &["get", "pods", "-n", "default"]);
    assert!(
        err.contains(
            "Error from server (Forbidden): pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    let err = forbidden(&e, JANE, &["delete", "pod", "box", "-n", "team-a"]);
    assert!(
        err.contains(
            "pods \"box\" is forbidden: User \"jane\" cannot delete resource \"pods\" in API group \"\" in the namespace \"team-a\""
        ),
        "{err}"
    );
    let err = forbidden(&e, JANE, &["get", "nodes"]);
    assert!(
        err.contains("cannot list resource \"nodes\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    let err = forbidden(&e, JANE, &["get", "deployments", "-n", "team-a"]);
    assert!(err.contains("in API group \"apps\""), "{err}");
    // Without a credential the server (which has an admin token) answers 401.
    let o = e.run(&[
        "--token",
        "",
        "--kubeconfig",
        "/dev/null",
        "--server",
        &e.server.url(),
        "get",
        "pods",
    ]);
    assert!(!o.status.success());
    // The service account is bound to `view`: it reads everywhere, writes nowhere.
    ok(&e, AGENT, &["get", "pods", "-A"]);
    forbidden(&e, AGENT, &["get", "secrets", "-n", "default"]);
    forbidden(&e, AGENT, &["delete", "pod", "box", "-n", "default"]);
    // The admin is not limited.
    ok(
        &e,
        ADMIN,
        &["delete", "pod", "box", "-n", "default", "--wait=false"],
    );
}

#[test]
fn can_i_answers_yes_and_no() {
    let e = cluster();
    assert_eq!(can_i(&e, JANE, &["list", "pods", "-n", "team-a"]), "yes");
    assert_eq!(can_i(&e, JANE, &["get", "pods/log", "-n", "team-a"]), "yes");
    assert_eq!(can_i(&e, JANE, &["list", "pods", "-n", "default"]), "no");
    assert_eq!(can_i(&e, JANE, &["delete", "pods", "-n", "team-a"]), "no");
    assert_eq!(
        can_i(&e, JANE, &["create", "pods/exec", "-n", "team-a"]),
        "no"
    );
    assert_eq!(can_i(&e, ADMIN, &["delete", "nodes"]), "yes");
    assert_eq!(can_i(&e, AGENT, &["list", "deployments.apps", "-A"]), "yes");
    assert_eq!(can_i(&e, AGENT, &["get", "secrets", "-n", "default"]), "no");
    // The exit code says it too.
    let (yes, _, _) = as_token(&e, JANE, &["auth", "can-i", "list", "pods", "-n", "team-a"]);
    let (no, _, _) = as_token(
        &e,
        JANE,
        &["auth", "can-i", "list", "pods", "-n", "default"],
    );
    assert!(yes && !no);
    // Asked about someone else (SubjectAccessReview-like, through impersonation by the admin).
    assert_eq!(
        can_i(&e, ADMIN, &["list", "pods", "-n", "team-a", "--as", "jane"]),
        "yes"
    );
    assert_eq!(
        can_i(
            &e,
            ADMIN,
            &["list", "pods", "-n", "default", "--as", "jane"]
        ),
        "no"
    );
    // Non-resource URLs.
    assert_eq!(can_i(&e, JANE, &["get", "/apis"]), "yes");
    assert_eq!(can_i(&e, JANE, &["get", "/metrics"]), "no");
    // --list (SelfSubjectRulesReview).
    let list = ok(&e, JANE, &["auth", "can-i", "--list", "-n", "team-a"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("pods ") && l.contains("[get list watch]")),
        "{list}"
    );
    assert!(
        list.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{list}"
    );
}

#[test]
fn exec_needs_create_on_pods_exec() {
    let e = cluster();
    let err = forbidden(
        &e,
        JANE,
        &["exec", "box", "-n", "team-a", "--", "echo", "hi"],
    );
    assert!(
        err.contains(
            "pods \"box\" is forbidden: User \"jane\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"team-a\""
        ),
        "{err}"
    );
    put(
        &e,
        rbac::role(
            "team-a",
            "exec",
            &[PolicyRule::resource(&["create"], &[""], &["pods/exec"])],
        ),
    );
    put(
        &e,
        rbac::role_binding(
            "team-a",
            "jane-exec",
            false,
            "exec",
            &[Subject::User("jane".into())],
        ),
    );
    let out = ok(
        &e,
        JANE,
        &["exec", "box", "-n", "team-a", "--", "echo", "hi"],
    );
    assert_eq!(out.trim(), "hi");
    // Only in team-a, and `create` on pods does not give pods/exec.
    forbidden(
        &e,
        JANE,
        &["exec", "box", "-n", "default", "--", "echo", "hi"],
    );
}

#[test]
fn group_subjects_and_resource_names() {
    let e = cluster();
    for name in ["allowed", "other"] {
        put(
            &e,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "team-a"}, "data": {"k": name}}),
        );
    }
    put(
        &e,
        rbac::role(
            "team-a",
            "one-configmap",
            &[PolicyRule {
                resource_names: vec!["allowed".into()],
                ..PolicyRule::resource(&["get", "update", "patch"], &[""], &["configmaps"])
            }],
        ),
    );
    put(
        &e,
        rbac::role_binding(
            "team-a",
            "devs-one-configmap",
            false,
            "one-configmap",
            &[Subject::Group("devs".into())],
        ),
    );
    // bob is in devs: the named object only.
    let out = ok(
        &e,
        BOB,
        &[
            "get",
            "configmap",
            "allowed",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.k}",
        ],
    );
    assert_eq!(out, "allowed");
    ok(
        &e,
        BOB,
        &["label", "configmap", "allowed", "-n", "team-a", "x=y"],
    );
    let err = forbidden(&e, BOB, &["get", "configmap", "other", "-n", "team-a"]);
    assert!(
        err.contains(
            "configmaps \"other\" is forbidden: User \"bob\" cannot get resource \"configmaps\""
        ),
        "{err}"
    );
    forbidden(&e, BOB, &["get", "configmaps", "-n", "team-a"]);
    // jane is not in devs; as devs (impersonated by the admin) she is.
    forbidden(&e, JANE, &["get", "configmap", "allowed", "-n", "team-a"]);
    ok(
        &e,
        ADMIN,
        &[
            "get",
            "configmap",
            "allowed",
            "-n",
            "team-a",
            "--as",
            "jane",
            "--as-group",
            "devs",
        ],
    );
    assert_eq!(
        can_i(&e, BOB, &["get", "configmaps/allowed", "-n", "team-a"]),
        "yes"
    );
    assert_eq!(
        can_i(&e, BOB, &["get", "configmaps/other", "-n", "team-a"]),
        "no"
    );
    // RBAC objects are ordinary objects: deleting the binding takes the permission away.
    ok(
        &e,
        ADMIN,
        &[
            "delete",
            "rolebinding",
            "devs-one-configmap",
            "-n",
            "team-a",
        ],
    );
    forbidden(&e, BOB, &["get", "configmap", "allowed", "-n", "team-a"]);
}

#[test]
fn nobody_grants_what_they_do_not_hold() {
    let e = cluster();
    // bob administers team-a (the built-in `admin` role includes roles and rolebindings).
    put(
        &e,
        rbac::role_binding(
            "team-a",
            "bob-admin",
            true,
            "admin",
            &[Subject::User("bob".into())],
        ),
    );
    ok(
        &e,
        BOB,
        &[
            "create",
            "role",
            "pod-viewer",
            "-n",
            "team-a",
            "--verb=get,list",
            "--resource=pods",
        ],
    );
    ok(
        &e,
        BOB,
        &[
            "create",
            "rolebinding",
            "jane-views",
            "-n",
            "team-a",
            "--role=pod-viewer",
            "--user=jane",
        ],
    );
    let err = forbidden(
        &e,
        BOB,
        &[
            "create",
            "role",
            "node-reader",
            "-n",
            "team-a",
            "--verb=get",
            "--resource=nodes",
        ],
    );
    assert!(
        err.contains(
            "roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"bob\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"
        ) && err.contains("{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}"),
        "{err}"
    );
    // (kubectl's typed `create rolebinding` words a refusal as "failed to create".)
    let (success, _, err) = as_token(
        &e,
        BOB,
        &[
            "create",
            "rolebinding",
            "root",
            "-n",
            "team-a",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    );
    assert!(!success, "bob bound cluster-admin to himself");
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    // Patching a held role up to more is refused the same way; the admin may.
    let patch = r#"{"rules":[{"apiGroups":[""],"resources":["*"],"verbs":["*"]}]}"#;
    let widen = [
        "patch",
        "role",
        "pod-viewer",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        patch,
    ];
    forbidden(&e, BOB, &widen);
    ok(&e, ADMIN, &widen);
}
