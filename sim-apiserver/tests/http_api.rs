//! The HTTP surface of the simulated API server with a bare HTTP/1.1 client: discovery, status
//! codes and `Status` bodies, Table responses, paging and 410, watch framing, auth.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use sim_apiserver::{ApiServer, ApiServerConfig, RunningApiServer};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1_000_000 {
        let Some(pos) = b.windows(2).position(|w| w == b"\r\n") else {
            break;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16)
            .expect("chunk size");
        b = &b[pos + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    out
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

fn server(config: ApiServerConfig) -> RunningApiServer {
    ApiServer::start(config).expect("server starts")
}

fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(r.status, code, "{}", String::from_utf8_lossy(&r.body));
    let s = r.json();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["status"], "Failure");
    assert_eq!(s["code"], code);
    assert_eq!(s["reason"], reason);
    assert!(s["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[test]
fn discovery_documents() {
    let srv = server(ApiServerConfig::default());
    let a = srv.addr();
    let v = get(a, "/version");
    assert_eq!(v.status, 200);
    assert!(
        v.json()["gitVersion"]
            .as_str()
            .is_some_and(|g| g.starts_with("v1."))
    );
    assert_eq!(get(a, "/api").json()["versions"], json!(["v1"]));
    assert_eq!(get(a, "/apis").json()["groups"][0]["name"], "apps");
    let core = get(a, "/api/v1").json();
    assert_eq!(core["kind"], "APIResourceList");
    let pods = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "pods")
        .cloned()
        .unwrap_or_default();
    assert_eq!(pods["shortNames"], json!(["po"]));
    assert_eq!(pods["namespaced"], true);
    assert!(
        pods["verbs"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("watch")))
    );
    let nodes = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "nodes")
        .cloned()
        .unwrap_or_default();
    assert_eq!(nodes["namespaced"], false);
    let apps = get(a, "/apis/apps/v1").json();
    assert_eq!(apps["resources"][0]["name"], "deployments");
    assert_eq!(
        get(a, "/apis/apps").json()["preferredVersion"]["version"],
        "v1"
    );
    assert_eq!(get(a, "/openapi/v2").status, 200);
    assert_eq!(get(a, "/openapi/v1").status, 404);

    // Aggregated discovery, as kubectl 1.32 asks for it first.
    let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
    let agg = request(a, "GET", "/apis", &[("Accept", accept)], b"");
    assert_eq!(agg.status, 200);
    assert_eq!(
        agg.header("content-type"),
        Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    );
    let agg = agg.json();
    assert_eq!(agg["kind"], "APIGroupDiscoveryList");
    assert_eq!(agg["items"][0]["metadata"]["name"], "apps");
    assert_eq!(
        agg["items"][0]["versions"][0]["resources"][0]["resource"],
        "deployments"
    );
    let core = request(a, "GET", "/api", &[("Accept", accept)], b"").json();
    assert_eq!(core["items"][0]["versions"][0]["version"], "v1");
    let legacy = request(a, "GET", "/api", &[("Accept", "application/json")], b"").json();
    assert_eq!(legacy["kind"], "APIVersions");

    // Unknown groups, versions and resources are the real 404 Status.
    for path in [
        "/apis/example.com/v1/widgets",
        "/apis/example.com",
        "/api/v1/widgets",
    ] {
        let r = get(a, path);
        assert_status(&r, 404, "NotFound");
        assert_eq!(
            r.json()["message"],
            "the server could not find the requested resource"
        );
    }
    assert_eq!(get(a, "/healthz").status, 200);
}

#[test]
fn error_statuses() {
    let srv = server(ApiServerConfig::default());
    let a = srv.addr();
    let json_ct = [("Content-Type", "application/json")];
    assert_status(
        &get(a, "/api/v1/namespaces/default/pods/nope"),
        404,
        "NotFound",
    );
    assert_status(&get(a, "/api/v1/widgets"), 404, "NotFound");
    assert_status(
        &request(
            a,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &json_ct,
            b"{not json",
        ),
        400,
        "BadRequest",
    );
    assert_status(
        &request(
            a,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &json_ct,
            br#"{"metadata":{}}"#,
        ),
        422,
        "Invalid",
    );
    assert_status(
        &request(
            a,
            "PUT",
            "/api/v1/namespaces/default/configmaps",
            &json_ct,
            b"{}",
        ),
        405,
        "MethodNotAllowed",
    );
    assert_status(
        &request(
            a,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            &[("Content-Type", "text/plain")],
            b"x",
        ),
        415,
        "UnsupportedMediaType",
    );
    assert_status(
        &request(
            a,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
            &[("Content-Type", "application/json-patch+json")],
            br#"[{"op":"test","path":"/data","value":"no"}]"#,
        ),
        422,
        "Invalid",
    );
    assert_status(
        &request(
            a,
            "PATCH",
            "/api/v1/namespaces/default/configmaps/x",
            &[("Content-Type", "application/apply-patch+yaml")],
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
        ),
        422,
        "Invalid",
    );
    assert_status(
        &get(a, "/api/v1/pods?labelSelector=app%20in%20broken"),
        400,
        "BadRequest",
    );
    assert_status(
        &get(a, "/api/v1/pods?fieldSelector=spec.bogus%3D1"),
        400,
        "BadRequest",
    );
    assert_status(&get(a, "/api/v1/pods?continue=garbage"), 400, "BadRequest");
    // Creating in a namespace that does not exist.
    assert_status(
        &request(
            a,
            "POST",
            "/api/v1/namespaces/ghost/configmaps",
            &json_ct,
            br#"{"metadata":{"name":"x"}}"#,
        ),
        404,
        "NotFound",
    );
    // YAML bodies are accepted.
    let r = request(
        a,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        &[("Content-Type", "application/yaml")],
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n",
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_status(
        &request(
            a,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            &[("Content-Type", "application/yaml")],
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n",
        ),
        409,
        "AlreadyExists",
    );
}

#[test]
fn tables_paging_and_expired_continue() {
    let srv = server(ApiServerConfig {
        nodes: 2,
        pods: 9,
        history_size: 5,
        ..Default::default()
    });
    let a = srv.addr();
    let t = request(
        a,
        "GET",
        "/api/v1/namespaces/default/pods?limit=500",
        &[(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )],
        b"",
    );
    assert_eq!(t.status, 200);
    assert!(
        t.header("content-type")
            .is_some_and(|c| c.contains("as=Table"))
    );
    let t = t.json();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(&cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert!(t["rows"].as_array().is_some_and(|r| !r.is_empty()));
    assert_eq!(t["rows"][0]["cells"][2], "Running");

    let first = get(a, "/api/v1/pods?limit=4").json();
    assert_eq!(first["kind"], "PodList");
    assert_eq!(first["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(first["metadata"]["remainingItemCount"], 5);
    let token = first["metadata"]["continue"]
        .as_str()
        .expect("continue token")
        .to_string();
    let second = get(a, &format!("/api/v1/pods?limit=4&continue={token}")).json();
    assert_eq!(second["items"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    // Push the first page's version out of the retained history.
    for i in 0..10 {
        srv.store()
            .create(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("n{i}"), "namespace": "default"}}))
            .expect("create");
    }
    let gone = get(a, &format!("/api/v1/pods?limit=4&continue={token}"));
    assert_status(&gone, 410, "Expired");

    let by_name = get(a, "/api/v1/nodes?fieldSelector=metadata.name%3Dsim-node-2").json();
    assert_eq!(by_name["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_name["items"][0]["metadata"]["name"], "sim-node-2");
}

#[test]
fn watch_stream_framing_bookmarks_and_timeout() {
    let srv = server(ApiServerConfig {
        nodes: 1,
        pods: 2,
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let a = srv.addr();
    let r = get(
        a,
        "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true&timeoutSeconds=2",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
    );
    let events: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let added = events.iter().filter(|e| e["type"] == "ADDED").count();
    assert_eq!(added, 2, "synthetic ADDED for the current pods");
    let bookmark = events
        .iter()
        .find(|e| e["type"] == "BOOKMARK")
        .expect("a bookmark within the 2s watch");
    assert_eq!(bookmark["object"]["kind"], "Pod");
    assert!(
        bookmark["object"]["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|v| v.parse::<u64>().is_ok())
    );
    // The deprecated watch path with a single object.
    let r = get(a, "/api/v1/watch/nodes/sim-node-1?timeoutSeconds=1");
    let lines: Vec<Value> = String::from_utf8_lossy(&r.body)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["object"]["metadata"]["name"], "sim-node-1");
}

#[test]
fn pod_logs_tail() {
    let srv = server(ApiServerConfig {
        nodes: 1,
        pods: 0,
        log_interval: Duration::from_millis(10),
        ..Default::default()
    });
    let a = srv.addr();
    srv.store().add_pod("default", "chatty").expect("pod");
    std::thread::sleep(Duration::from_millis(100));
    let r = get(a, "/api/v1/namespaces/default/pods/chatty/log?tailLines=2");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_status(
        &get(
            a,
            "/api/v1/namespaces/default/pods/chatty/log?container=nope",
        ),
        400,
        "BadRequest",
    );
    assert_status(
        &get(a, "/api/v1/namespaces/default/pods/ghost/log"),
        404,
        "NotFound",
    );
}

#[test]
fn bearer_token_is_checked() {
    let srv = server(ApiServerConfig {
        bearer_token: Some("s3cret".into()),
        ..Default::default()
    });
    let a = srv.addr();
    assert_status(&get(a, "/api/v1/pods"), 401, "Unauthorized");
    assert_status(
        &request(
            a,
            "GET",
            "/api/v1/pods",
            &[("Authorization", "Bearer wrong!")],
            b"",
        ),
        401,
        "Unauthorized",
    );
    let ok = request(
        a,
        "GET",
        "/api/v1/pods",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(ok.status, 200);
    assert!(srv.kubeconfig("x").contains("s3cret"));
}

#[test]
fn shutdown_stops_serving() {
    let srv = server(ApiServerConfig::default());
    let a = srv.addr();
    assert_eq!(get(a, "/version").status, 200);
    srv.shutdown();
    // The listener is closed once shutdown returns for a server with its own runtime.
    assert!(TcpStream::connect(a).is_err());
}

/// Users by token, impersonation (extras too, which kubectl 1.32 cannot send), the review APIs
/// and RBAC's 403 over bare HTTP, on an open server (no admin token: credential-less requests
/// act as the admin).
#[test]
fn identities_impersonation_and_reviews() {
    use sim_apiserver::User;
    use sim_apiserver::rbac::{self, PolicyRule, Subject};
    let srv = server(ApiServerConfig {
        users: vec![
            User::new("jane-tok", "jane", &["devs"]),
            User::service_account("gitlab-agent", "agentk", "agent-tok"),
        ],
        initial_objects: vec![
            rbac::cluster_role(
                "impersonator",
                &[
                    PolicyRule::resource(&["impersonate"], &[""], &["users", "groups"]),
                    PolicyRule::resource(
                        &["impersonate"],
                        &["authentication.k8s.io"],
                        &["userextras/agent.gitlab.com/id", "uids"],
                    ),
                ],
            ),
            rbac::cluster_role_binding(
                "agentk-impersonates",
                "impersonator",
                &[Subject::ServiceAccount(
                    "gitlab-agent".into(),
                    "agentk".into(),
                )],
            ),
        ],
        ..ApiServerConfig::default()
    });
    let a = srv.addr();
    let review = br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let whoami = |headers: &[(&str, &str)]| {
        request(
            a,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[&[("Content-Type", "application/json")], headers].concat(),
            review,
        )
    };
    // No credential on an open server: the admin.
    let r = whoami(&[]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["status"]["userInfo"]["username"],
        "kubernetes-admin"
    );
    let r = whoami(&[("Authorization", "Bearer jane-tok")]);
    assert_eq!(
        r.json()["status"]["userInfo"],
        json!({"username": "jane", "groups": ["devs", "system:authenticated"]})
    );
    // The agent impersonates a CI job, with extras, as agentk does for kas.
    let r = whoami(&[
        ("Authorization", "Bearer agent-tok"),
        ("Impersonate-User", "gitlab:ci_job:42"),
        ("Impersonate-Group", "gitlab:ci_job"),
        ("Impersonate-Group", "gitlab:project:7"),
        ("Impersonate-Uid", "42"),
        ("Impersonate-Extra-agent.gitlab.com%2Fid", "3"),
    ]);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["status"]["userInfo"],
        json!({"username": "gitlab:ci_job:42", "uid": "42",
            "groups": ["gitlab:ci_job", "gitlab:project:7", "system:authenticated"],
            "extra": {"agent.gitlab.com/id": ["3"]}})
    );
    // An extra the agent's role does not name is refused, as Kubernetes refuses it.
    let r = whoami(&[
        ("Authorization", "Bearer agent-tok"),
        ("Impersonate-User", "x"),
        ("Impersonate-Extra-scopes", "all"),
    ]);
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        "userextras.authentication.k8s.io \"all\" is forbidden: User \"system:serviceaccount:gitlab-agent:agentk\" cannot impersonate resource \"userextras/scopes\" in API group \"authentication.k8s.io\" at the cluster scope"
    );
    // jane may not impersonate at all; groups without a user are a client error.
    let r = whoami(&[
        ("Authorization", "Bearer jane-tok"),
        ("Impersonate-User", "system:admin"),
    ]);
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["details"],
        json!({"name": "system:admin", "group": "", "kind": "users"})
    );
    let r = whoami(&[("Impersonate-Group", "system:masters")]);
    assert_status(&r, 400, "BadRequest");
    // The impersonated CI job has no permissions of its own: 403, worded as Kubernetes does.
    let r = request(
        a,
        "GET",
        "/api/v1/namespaces/default/pods",
        &[
            ("Authorization", "Bearer agent-tok"),
            ("Impersonate-User", "gitlab:ci_job:42"),
        ],
        b"",
    );
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        "pods is forbidden: User \"gitlab:ci_job:42\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // Non-resource paths outside discovery are forbidden too; discovery is readable.
    let r = request(
        a,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer jane-tok")],
        b"",
    );
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.json()["message"],
        "forbidden: User \"jane\" cannot get path \"/metrics\""
    );
    let r = request(
        a,
        "GET",
        "/apis",
        &[("Authorization", "Bearer jane-tok")],
        b"",
    );
    assert_eq!(r.status, 200);
    // SubjectAccessReview needs permission (jane has none); the admin may ask.
    let sar = br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{"user":"system:serviceaccount:gitlab-agent:agentk","resourceAttributes":{"verb":"impersonate","resource":"users","name":"anyone"}}}"#;
    let path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let ct = ("Content-Type", "application/json");
    let r = request(
        a,
        "POST",
        path,
        &[ct, ("Authorization", "Bearer jane-tok")],
        sar,
    );
    assert_status(&r, 403, "Forbidden");
    let r = request(a, "POST", path, &[ct], sar);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"]["allowed"], true);
    // Reviews are never stored or listed.
    let r = get(a, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
    assert_status(&r, 405, "MethodNotAllowed");
    // Discovery lists the review APIs with the create verb only.
    let d = get(a, "/apis/authentication.k8s.io/v1").json();
    assert_eq!(d["resources"][0]["name"], "selfsubjectreviews");
    assert_eq!(d["resources"][0]["verbs"], json!(["create"]));
}
