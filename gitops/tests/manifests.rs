//! Manifest parsing as kas does it for a commit: glob selection, multi-document YAML and JSON, Lists,
//! validation, namespaces, duplicates — and the all-or-nothing rule: any error rejects the commit.

use gitops::manifest::{self, ManifestErrorKind, ManifestLimits, ParsedCommit};
use gitops::{DesiredSet, ObjectId, WellKnownScopes};

fn parse(files: &[(&str, &str)]) -> ParsedCommit {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
    manifest::parse(files, "apps", &WellKnownScopes, &ManifestLimits::default())
}

fn ids(p: &ParsedCommit) -> Vec<String> {
    p.objects.iter().map(|o| o.id.to_string()).collect()
}

#[test]
fn selection_follows_gitlab_globs() {
    let globs = [
        agent_config::ManifestGlob::new("/manifests/**/*.{yaml,yml}").expect("glob"),
        agent_config::ManifestGlob::new("/extra.json").expect("glob"),
    ];
    let paths = [
        "manifests/a.yaml",
        "manifests/sub/b.yml",
        "manifests/readme.md",
        "manifests/.hidden/c.yaml",
        ".gitlab/agents/x/config.yaml",
        "extra.json",
        "other/d.yaml",
    ];
    assert_eq!(
        manifest::select(&globs, paths),
        vec!["extra.json", "manifests/a.yaml", "manifests/sub/b.yml"]
    );
}

#[test]
fn multi_document_yaml_json_and_lists() {
    let p = parse(&[
        (
            "a.yaml",
            "# leading comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n# only a comment\n---\n\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: prod}\n...\n",
        ),
        (
            "b.json",
            r#"{"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}},
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
            ]}"#,
        ),
        (
            "c.yaml",
            "apiVersion: v1\nkind: ConfigMapList\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: two}\n",
        ),
    ]);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    assert_eq!(
        ids(&p),
        vec![
            "ConfigMap apps/one",
            "ConfigMap apps/two",
            "Namespace prod",
            "Secret apps/s",
            "Deployment.apps prod/web",
        ]
    );
    // Namespaces are defaulted in the manifest too; sources point at the documents.
    let one = &p.objects[0];
    assert_eq!(one.manifest["metadata"]["namespace"], "apps");
    assert_eq!((one.source.path.as_str(), one.source.line), ("a.yaml", 3));
    let web = p.objects.iter().find(|o| o.id.name == "web").expect("web");
    assert_eq!(web.source.line, 11);
    assert_eq!(web.api_version, "apps/v1");
    let set = p.into_desired("c0ffee").expect("valid");
    assert_eq!(set.objects.len(), 5);
    // The wire form reads back.
    let json = serde_json::to_vec(&set).expect("json");
    assert_eq!(
        serde_json::from_slice::<DesiredSet>(&json).expect("reads"),
        set
    );
}

#[test]
fn scopes_come_from_kubernetes_and_crds_in_the_set() {
    let p = parse(&[(
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: clusterwidgets.example.com}\nspec:\n  group: example.com\n  scope: Cluster\n  names: {kind: ClusterWidget, plural: clusterwidgets}\n---\napiVersion: example.com/v1\nkind: ClusterWidget\nmetadata: {name: w}\n---\napiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: 'system:reader', namespace: ignored}\n",
    )]);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let by_name = |n: &str| {
        p.objects
            .iter()
            .find(|o| o.id.name == n)
            .expect(n)
            .id
            .clone()
    };
    assert_eq!(
        by_name("w").namespace,
        None,
        "the CRD in the set says Cluster"
    );
    assert_eq!(
        by_name("g").namespace.as_deref(),
        Some("apps"),
        "unknown kinds are namespaced"
    );
    assert_eq!(by_name("system:reader").namespace, None);
    assert_eq!(p.warnings.len(), 1);
    assert!(
        p.warnings[0].message.contains("cluster-scoped"),
        "{}",
        p.warnings[0]
    );
    let role = p
        .objects
        .iter()
        .find(|o| o.id.name == "system:reader")
        .expect("role");
    assert!(role.manifest["metadata"].get("namespace").is_none());
}

#[test]
fn invalid_objects_are_errors_with_positions_and_reject_the_commit() {
    let p = parse(&[(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\n---\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nmetadata: {name: a}\n---\n- just\n- a list\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: 'a/b'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, namespace: Not_OK}\n---\napiVersion: 'apps/v1/x'\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: v1\nkind: 'Config Map'\nmetadata: {name: d}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\n",
    )]);
    let got: Vec<(u32, ManifestErrorKind, &str)> = p
        .errors
        .iter()
        .map(|e| (e.line, e.kind, e.message.as_str()))
        .collect();
    let lines: Vec<u32> = got.iter().map(|g| g.0).collect();
    assert_eq!(lines, vec![1, 4, 7, 10, 13, 17, 21, 25, 30], "{got:#?}");
    assert!(
        got[0]
            .2
            .contains("`metadata` (a mapping with a `name`) is missing"),
        "{}",
        got[0].2
    );
    assert!(got[1].2.contains("`apiVersion` is missing"));
    assert!(got[2].2.contains("`kind` is missing"));
    assert!(got[3].2.contains("must be a mapping"));
    assert!(got[4].2.contains("generateName"));
    assert!(got[5].2.contains("contains `/`"));
    assert!(got[6].2.contains("not a valid namespace"));
    assert!(got[7].2.contains("not a valid apiVersion"));
    assert!(got[8].2.contains("not a valid kind"));
    assert_eq!(ids(&p), vec!["ConfigMap apps/good"]);
    // Safety first: one bad document rejects the whole commit.
    let rejected = p.into_desired("bad").expect_err("rejected");
    assert_eq!(rejected.errors.len(), 9);
    assert!(
        rejected
            .to_string()
            .starts_with("commit bad rejected: 9 error(s), first: bad.yaml:1:1:"),
        "{rejected}"
    );
}

#[test]
fn duplicates_name_both_places() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
    let p = parse(&[("x.yaml", cm), ("y/z.yaml", &format!("# x\n{cm}"))]);
    assert_eq!(p.errors.len(), 1);
    let e = &p.errors[0];
    assert_eq!(e.kind, ManifestErrorKind::Duplicate);
    assert_eq!((e.path.as_str(), e.line), ("y/z.yaml", 2));
    assert!(e.message.contains("also at x.yaml:1"), "{}", e.message);
    // Same name in another namespace or kind is not a duplicate.
    let p = parse(&[
        ("x.yaml", cm),
        (
            "y.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: other}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: a}\n",
        ),
    ]);
    assert!(p.errors.is_empty());
    // An explicit namespace equal to the default is a duplicate of an implicit one.
    let p = parse(&[
        ("x.yaml", cm),
        (
            "y.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: apps}\n",
        ),
    ]);
    assert_eq!(p.errors.len(), 1);
}

#[test]
fn binary_and_non_utf8_files_are_per_file_errors() {
    let files: Vec<(&str, &[u8])> = vec![
        ("image.yaml", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"),
        (
            "latin1.yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caf\xe9}\n",
        ),
        (
            "ok.yaml",
            b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
        ),
    ];
    let p = manifest::parse(files, "apps", &WellKnownScopes, &ManifestLimits::default());
    assert_eq!(p.errors.len(), 2, "{:?}", p.errors);
    assert_eq!(p.errors[0].path, "image.yaml");
    assert_eq!(p.errors[0].kind, ManifestErrorKind::NotText);
    assert!(p.errors[0].message.contains("binary"));
    assert_eq!(
        (p.errors[1].path.as_str(), p.errors[1].line),
        ("latin1.yaml", 3)
    );
    assert!(p.errors[1].message.contains("not UTF-8"));
    assert_eq!(p.objects.len(), 1);
}

#[test]
fn limits_on_files_bytes_and_objects() {
    let limits = ManifestLimits {
        max_files: 2,
        max_file_bytes: 100,
        max_total_bytes: 150,
        max_objects: 2,
        ..ManifestLimits::default()
    };
    let cm = |n: usize| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{n}}}\n");
    let run = |files: Vec<(String, String)>| {
        let files: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_bytes()))
            .collect();
        manifest::parse(files, "apps", &WellKnownScopes, &limits)
    };
    let p = run((0..3).map(|i| (format!("{i}.yaml"), cm(i))).collect());
    assert!(
        p.errors[0]
            .message
            .contains("3 files, more than the limit of 2"),
        "{:?}",
        p.errors
    );
    let p = run(vec![(
        "big.yaml".into(),
        format!("{}# {}", cm(0), "x".repeat(60)),
    )]);
    assert!(
        p.errors[0].message.contains("more than the limit of 100"),
        "{:?}",
        p.errors
    );
    assert_eq!(p.errors[0].path, "big.yaml");
    let p = run(vec![
        ("a.yaml".into(), format!("{}#{}", cm(0), "x".repeat(40))),
        ("b.yaml".into(), format!("{}#{}", cm(1), "x".repeat(40))),
    ]);
    assert!(
        p.errors[0].message.contains("more than the limit of 150"),
        "{:?}",
        p.errors
    );
    let p = run(vec![(
        "a.yaml".into(),
        format!("{}---\n{}---\n{}", cm(0), cm(1), cm(2))
            .chars()
            .take(100)
            .collect(),
    )]);
    assert!(!p.errors.is_empty());
}

#[test]
fn empty_commit_is_an_empty_set() {
    let p = parse(&[
        ("empty.yaml", ""),
        ("comments.yaml", "# nothing\n---\n---\n"),
    ]);
    assert!(p.errors.is_empty());
    assert!(p.into_desired("e").expect("valid").objects.is_empty());
}

#[test]
fn object_id_display_and_helpers() {
    let id = ObjectId::namespaced("apps", "Deployment", "web", "api");
    assert_eq!(id.to_string(), "Deployment.apps web/api");
    assert!(ObjectId::cluster("", "Namespace", "x").is_namespace());
    assert!(ObjectId::cluster("apiextensions.k8s.io", "CustomResourceDefinition", "x").is_crd());
}
