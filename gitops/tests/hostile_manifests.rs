//! Hostile manifests: YAML bombs, deep nesting, huge strings, binary files a glob selected, random
//! bytes and mutations of real files. Each gives a clear per-file error (so the commit is rejected)
//! or parses; nothing panics; the commit-wide budgets hold across files.

use gitops::WellKnownScopes;
use gitops::manifest::{self, ManifestErrorKind, ManifestLimits};
use proptest::prelude::*;

fn run(files: &[(&str, Vec<u8>)], limits: &ManifestLimits) -> manifest::ParsedCommit {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_slice())).collect();
    manifest::parse(files, "default", &WellKnownScopes, limits)
}

fn laughs(levels: usize) -> String {
    let mut src = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\nx0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..levels {
        let refs = vec![format!("*x{}", i - 1); 10].join(", ");
        src.push_str(&format!("x{i}: &x{i} [{refs}]\n"));
    }
    src
}

#[test]
fn yaml_bombs_fail_with_a_clear_error() {
    let p = run(
        &[("bomb.yaml", laughs(9).into_bytes())],
        &ManifestLimits::default(),
    );
    assert_eq!(p.errors.len(), 1);
    let e = &p.errors[0];
    assert_eq!(
        (e.path.as_str(), e.kind),
        ("bomb.yaml", ManifestErrorKind::Syntax)
    );
    assert!(e.message.contains("YAML bomb"), "{e}");
    assert!(e.line > 1, "{e}");
    assert!(p.into_desired("c").is_err());
}

#[test]
fn a_huge_string_copied_by_aliases_is_refused() {
    let big = "x".repeat(1 << 20);
    let src = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  a: &a {big}\n  l: [{}]\n",
        vec!["*a"; 40].join(", ")
    );
    let p = run(
        &[("big.yaml", src.into_bytes())],
        &ManifestLimits::default(),
    );
    assert!(
        p.errors[0].message.contains("bytes of scalars in all"),
        "{}",
        p.errors[0]
    );
}

#[test]
fn deep_nesting_fails() {
    let json = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));
    let p = run(
        &[("deep.json", json.into_bytes())],
        &ManifestLimits::default(),
    );
    assert!(
        p.errors[0]
            .message
            .contains("nesting deeper than the limit of 100"),
        "{}",
        p.errors[0]
    );
    let yaml: String = (0..500)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    let p = run(
        &[("deep.yaml", yaml.into_bytes())],
        &ManifestLimits::default(),
    );
    assert!(!p.errors.is_empty());
}

#[test]
fn huge_strings_within_limits_parse_and_beyond_fail() {
    let ok = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata:\n  a: {}\n",
        "y".repeat(4 << 20)
    );
    let p = run(&[("ok.yaml", ok.into_bytes())], &ManifestLimits::default());
    assert!(p.errors.is_empty(), "{:?}", p.errors.first());
    let too_big = "z".repeat(6 << 20);
    let p = run(
        &[("big.yaml", too_big.into_bytes())],
        &ManifestLimits::default(),
    );
    assert_eq!(p.errors[0].kind, ManifestErrorKind::TooLarge);
}

#[test]
fn the_node_budget_is_for_the_whole_commit() {
    let limits = ManifestLimits {
        max_total_nodes: 1000,
        ..ManifestLimits::default()
    };
    let file = |n: usize| {
        let items: Vec<String> = (0..150).map(|i| format!("k{i}: v")).collect();
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{n}}}\ndata: {{{}}}\n",
            items.join(", ")
        )
        .into_bytes()
    };
    // About 310 nodes a file: three fit, the fourth reaches the commit's limit.
    assert!(run(&[("a.yaml", file(0))], &limits).errors.is_empty());
    let p = run(
        &[
            ("a.yaml", file(0)),
            ("b.yaml", file(1)),
            ("c.yaml", file(2)),
            ("d.yaml", file(3)),
        ],
        &limits,
    );
    assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
    assert_eq!(p.errors[0].path, "d.yaml");
    assert!(
        p.errors[0]
            .message
            .contains("more than 1000 YAML nodes in all"),
        "{}",
        p.errors[0]
    );
}

const REAL: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
";

fn check(files: &[(&str, Vec<u8>)]) {
    let p = run(files, &ManifestLimits::default());
    for e in &p.errors {
        assert!(!e.message.is_empty());
        assert!(
            files.iter().any(|(path, _)| *path == e.path) || e.path.is_empty(),
            "{e}"
        );
    }
    let clean = p.errors.is_empty();
    match p.into_desired("c") {
        Ok(set) => {
            assert!(clean);
            for o in &set.objects {
                assert!(!o.id.name.is_empty() && !o.id.kind.is_empty());
                if let Some(ns) = &o.id.namespace {
                    assert_eq!(o.manifest["metadata"]["namespace"], ns.as_str());
                }
            }
        }
        Err(r) => assert!(!r.errors.is_empty()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(a in proptest::collection::vec(any::<u8>(), 0..400), b in "(?s).{0,300}") {
        check(&[("a.yaml", a), ("b.json", b.into_bytes())]);
    }

    #[test]
    fn mutations_of_real_manifests_never_panic(
        edits in proptest::collection::vec((0usize..REAL.len(), 0u8..3, prop_oneof![
            Just(':'), Just('-'), Just(' '), Just('\n'), Just('{'), Just('}'), Just('['), Just('&'), Just('*'),
            Just('#'), Just('\''), Just('"'), Just('\t'), Just('\0'), proptest::char::any()
        ]), 1..8)
    ) {
        let mut src: Vec<char> = REAL.chars().collect();
        for (at, op, c) in edits {
            let at = at % (src.len() + 1);
            match op {
                0 => src.insert(at, c),
                1 if at < src.len() => { src.remove(at); }
                _ if at < src.len() => src[at] = c,
                _ => {}
            }
        }
        check(&[("m.yaml", src.into_iter().collect::<String>().into_bytes())]);
    }

    #[test]
    fn alias_structures_stay_within_budget(levels in 1usize..10, budget in 100usize..50_000) {
        let limits = ManifestLimits { max_total_nodes: budget, max_alias_nodes: usize::MAX, ..ManifestLimits::default() };
        let p = run(&[("a.yaml", laughs(levels).into_bytes())], &limits);
        if p.errors.is_empty() {
            // Parsed: the object holds at most `budget` nodes' worth of values.
            let json = serde_json::to_string(&p.objects).expect("json");
            prop_assert!(json.matches("lol").count() <= budget);
        } else {
            prop_assert!(p.errors[0].message.contains("nodes"), "{}", p.errors[0]);
        }
    }
}
