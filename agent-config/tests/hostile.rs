//! Hostile configuration files: YAML bombs, deep nesting, huge strings, random bytes and random
//! mutations of a real file. Each gets a clear error (or parses), never a panic, and what the loader
//! materialises stays within its limits.

use agent_config::yaml::{self, Limits, YamlErrorKind};
use agent_config::{ConfigFile, ErrorKind, ProjectId};
use proptest::prelude::*;

fn laughs(levels: usize, fan: usize) -> String {
    let items = vec!["lol"; fan].join(", ");
    let mut src = format!("a0: &a0 [{items}]\n");
    for i in 1..levels {
        let refs = vec![format!("*a{}", i - 1); fan].join(", ");
        src.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    src
}

#[test]
fn billion_laughs_is_refused_early() {
    let src = laughs(9, 10); // 10^9 strings if expanded
    let e = yaml::load(&src, &Limits::default()).expect_err("bomb");
    assert!(
        matches!(e.kind, YamlErrorKind::AliasExpansion { max: 10_000 }),
        "{e}"
    );
    // Through the config parser: one syntax error with a position.
    let errors = ConfigFile::parse(&src).expect_err("bomb").errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].kind, ErrorKind::Syntax);
    assert!(
        errors[0].message.contains("YAML bomb"),
        "{}",
        errors[0].message
    );
    assert!(errors[0].line >= 2);
}

#[test]
fn few_aliases_with_large_fan_out_are_refused() {
    // Small node counts, big strings: a 64 KiB string copied through aliases.
    let big = "x".repeat(64 << 10);
    let mut src = format!("s: &s {big}\nl: [");
    src.push_str(&vec!["*s"; 100].join(", "));
    src.push_str("]\n");
    let e = yaml::load(&src, &Limits::default()).expect_err("expansion");
    assert_eq!(e.kind, YamlErrorKind::ExpansionTooLarge { max: 4 << 20 });
}

#[test]
fn alias_count_is_bounded() {
    let mut src = String::from("a: &a 1\nl: [");
    src.push_str(&vec!["*a"; 1001].join(","));
    src.push_str("]\n");
    let e = yaml::load(&src, &Limits::default()).expect_err("aliases");
    assert_eq!(e.kind, YamlErrorKind::TooManyAliases { max: 1000 });
}

#[test]
fn deep_nesting_is_refused_in_every_style() {
    let limits = Limits::default();
    let flow_seq = "[".repeat(10_000);
    let flow_map = "{a: ".repeat(10_000);
    let block_seq: String = (0..1_000)
        .map(|i| format!("{}- \n", " ".repeat(i * 2)))
        .collect();
    let block_map: String = (0..1_000)
        .map(|i| format!("{}k:\n", " ".repeat(i)))
        .collect();
    let compact = format!("{}x\n", "- ".repeat(10_000));
    for src in [flow_seq, flow_map, block_seq, block_map, compact] {
        let e = yaml::load(&src, &limits).expect_err("deep");
        assert!(
            matches!(
                e.kind,
                YamlErrorKind::TooDeep { .. } | YamlErrorKind::Syntax(_)
            ),
            "{e}"
        );
    }
    // Exactly at the limit is fine.
    let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    let loaded = yaml::load(&ok, &limits).expect("64 levels");
    assert_eq!(loaded.stats.max_depth, 64);
    let over = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(
        yaml::load(&over, &limits).expect_err("65").kind,
        YamlErrorKind::TooDeep { max: 64 }
    );
}

#[test]
fn huge_inputs_are_refused_before_parsing() {
    let src = format!("flux:\n  webhook_receiver_url: {}\n", "x".repeat(2 << 20));
    let e = ConfigFile::parse(&src).expect_err("huge").errors;
    assert!(
        e[0].message
            .contains("more than the limit of 1048576 bytes"),
        "{}",
        e[0].message
    );
    // A large but allowed string parses.
    let src = format!("flux:\n  webhook_receiver_url: {}\n", "x".repeat(512 << 10));
    assert!(ConfigFile::parse(&src).is_ok());
}

#[test]
fn many_documents_are_bounded() {
    let src = "---\n{}\n".repeat(17);
    let e = yaml::load(&src, &Limits::default()).expect_err("docs");
    assert_eq!(e.kind, YamlErrorKind::TooManyDocuments { max: 16 });
}

const REAL: &str = "\
gitops:
  manifest_projects:
  - id: group/project
    ref: {branch: main}
    default_namespace: apps
    paths: [{glob: '/manifests/**/*.yaml'}]
    prune_propagation_policy: background
observability:
  logging: {level: info}
ci_access:
  projects:
  - id: group/app
    access_as: {impersonate: {username: u, groups: [g]}}
    environments: ['review/*']
user_access:
  access_as: {agent: {}}
  groups: [{id: group}]
";

fn check(src: &str) {
    // YAML breaks lines at \n, \r and \r\n.
    let lines = src.matches(['\n', '\r']).count() as u32 + 2;
    match ConfigFile::parse(src) {
        Ok(file) => {
            // Whatever parses has a valid wire form that reads back the same.
            let config = file.agent_config(&ProjectId::new("g/c").expect("id"));
            let back = agent_config::AgentConfig::from_json(&config.to_json()).expect("round trip");
            assert_eq!(back, config);
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            for err in &e.errors {
                assert!(
                    err.line >= 1 && err.line <= lines,
                    "{err} (of {lines} lines)"
                );
                assert!(err.column >= 1, "{err}");
                assert!(!err.message.is_empty());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(src in "(?s).{0,400}") {
        check(&src);
    }

    #[test]
    fn yaml_token_soup_never_panics(tokens in proptest::collection::vec(
        prop_oneof![
            Just("gitops:"), Just("manifest_projects:"), Just("- "), Just("  "), Just("\n"), Just("id: "),
            Just("&a "), Just("*a"), Just("<<: "), Just("{"), Just("}"), Just("["), Just("]"), Just(", "),
            Just("ref: "), Just("branch: main"), Just("'"), Just("\""), Just("!!str "), Just("? "), Just("---\n"),
            Just("ci_access:"), Just("access_as:"), Just("agent: {}"), Just("|\n"), Just("#"), Just("\t"),
        ],
        0..80,
    )) {
        check(&tokens.concat());
    }

    #[test]
    fn mutations_of_a_real_file_never_panic(
        edits in proptest::collection::vec((0usize..REAL.len(), 0u8..3, proptest::char::any()), 1..6)
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
        check(&src.into_iter().collect::<String>());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ConfigFile::parse_bytes(&bytes, &Limits::default());
    }

    /// Whatever loads stays within the limits, however the aliases are arranged.
    #[test]
    fn loads_stay_within_limits(levels in 1usize..12, fan in 1usize..12, max_nodes in 10usize..5_000) {
        let limits = Limits { max_nodes, max_aliases: 10_000, max_alias_nodes: usize::MAX, ..Limits::default() };
        if let Ok(loaded) = yaml::load(&laughs(levels, fan), &limits) {
            prop_assert!(loaded.stats.nodes <= max_nodes);
            prop_assert!(loaded.stats.expanded_bytes <= limits.max_expanded_bytes);
        }
    }
}
