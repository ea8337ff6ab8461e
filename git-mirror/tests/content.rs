//! Reading trees and blobs from mirrors, and hostile repository content: huge files, inflation bombs,
//! oversized fetches, deep trees, many files, symbolic links pointing out of the repository, entry
//! names like `..`. Every case ends in a typed error (or a skip), never a panic or unbounded work, and
//! the mirror keeps its last good state.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use git_mirror::testing::{GitDaemon, TestRepo, raw_tree};
use git_mirror::{
    Change, EntryKind, Error, Fault, Limits, MirrorSet, ObjectId, ReadLimits, Remote, RepoUrl,
    SkipReason, Want,
};

struct Env {
    dir: tempfile::TempDir,
    repo: TestRepo,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let srv = dir.path().join("srv");
        std::fs::create_dir_all(&srv).unwrap();
        let repo = TestRepo::create(&srv, "r").unwrap();
        Env { dir, repo }
    }

    fn set(&self, limits: Limits) -> MirrorSet {
        MirrorSet::open(self.dir.path().join("state"), limits).unwrap()
    }

    fn local(&self) -> Remote {
        Remote::new(RepoUrl::file(&self.repo.served).unwrap())
    }

    fn daemon(&self) -> (GitDaemon, Remote) {
        let d = GitDaemon::start(&self.dir.path().join("srv")).unwrap();
        let r = Remote::parse(&d.url("r")).unwrap();
        (d, r)
    }
}

fn limits() -> Limits {
    Limits {
        fetch_timeout: Duration::from_secs(30),
        ..Limits::default()
    }
}

fn paths(l: &git_mirror::Listing) -> Vec<&str> {
    l.files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn globs_walks_links_and_submodules() {
    let e = Env::new();
    let r = &e.repo;
    r.write("manifests/a.yaml", "a").unwrap();
    r.write("manifests/b.yml", "b").unwrap();
    r.write("manifests/c.json", "{}").unwrap();
    r.write("manifests/README.md", "readme").unwrap();
    r.write("manifests/sub/d.yaml", "d").unwrap();
    r.write("other/e.yaml", "e").unwrap();
    r.write("run.sh", "#!/bin/sh").unwrap();
    std::fs::set_permissions(
        r.work.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Links inside the tree, out of it, absolute, looping, and to a directory.
    r.symlink("link.yaml", "manifests/a.yaml").unwrap();
    r.symlink("manifests/up.yaml", "../other/e.yaml").unwrap();
    r.symlink("mdir", "manifests").unwrap();
    r.symlink("escape.yaml", "../../../../etc/passwd").unwrap();
    r.symlink("absolute.yaml", "/etc/passwd").unwrap();
    r.symlink("loop1", "loop2").unwrap();
    r.symlink("loop2", "loop1").unwrap();
    r.git(&["add", "-A"]).unwrap();
    // A submodule entry (gitlink).
    r.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        "160000,1111111111111111111111111111111111111111,vendor/sub",
    ])
    .unwrap();
    // Commit the index as it is (`commit()` would `add -A` and drop the gitlink).
    r.git(&["commit", "-q", "-m", "content"]).unwrap();
    r.push().unwrap();
    let c = ObjectId::from_hex(r.git(&["rev-parse", "HEAD"]).unwrap().as_bytes()).unwrap();

    let set = e.set(limits());
    let m = set.mirror(&e.local()).unwrap();
    assert_eq!(m.update(&Want::DefaultBranch).unwrap().commit, c);
    let s = m.snapshot(c).unwrap();

    let g = s.glob("manifests/**/*.{yaml,yml,json}").unwrap();
    assert_eq!(
        paths(&g),
        [
            "manifests/a.yaml",
            "manifests/b.yml",
            "manifests/c.json",
            "manifests/sub/d.yaml"
        ]
    );
    assert_eq!(g.skipped.len(), 1, "{:?}", g.skipped);
    assert_eq!(g.skipped[0].path, "manifests/up.yaml");
    assert_eq!(g.skipped[0].reason, SkipReason::Symlink);

    let g = s.glob("/**/*.yaml").unwrap();
    assert_eq!(
        paths(&g),
        ["manifests/a.yaml", "manifests/sub/d.yaml", "other/e.yaml"]
    );
    assert!(s.glob("nothing/**").unwrap().files.is_empty());
    assert!(s.glob("{unbalanced").is_err());

    let w = s.walk("").unwrap();
    assert!(paths(&w).contains(&"run.sh"));
    let run = w.files.iter().find(|f| f.path == "run.sh").unwrap();
    assert_eq!(run.kind, EntryKind::Executable);
    assert!(
        w.skipped
            .iter()
            .any(|k| k.path == "vendor/sub" && k.reason == SkipReason::Submodule)
    );
    assert_eq!(
        paths(&s.walk("manifests/sub").unwrap()),
        ["manifests/sub/d.yaml"]
    );
    let dir: Vec<_> = s
        .list_dir("manifests")
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect();
    assert!(dir.contains(&("manifests/sub".into(), EntryKind::Directory)));
    assert!(dir.contains(&("manifests/up.yaml".into(), EntryKind::Symlink)));

    // Reading through links stays inside the tree.
    assert_eq!(s.read_file("link.yaml", 100).unwrap(), b"a");
    assert_eq!(s.read_file("manifests/up.yaml", 100).unwrap(), b"e");
    assert_eq!(s.read_file("mdir/sub/d.yaml", 100).unwrap(), b"d");
    assert_eq!(
        s.entry("link.yaml").unwrap().unwrap().kind,
        EntryKind::Symlink
    );
    for escaping in ["escape.yaml", "absolute.yaml", "loop1"] {
        let err = s.read_file(escaping, 100).unwrap_err();
        assert!(
            matches!(err, Error::SymlinkEscapes { .. }),
            "{escaping}: {err}"
        );
        assert_eq!(err.fault(), Fault::Content);
    }
    // Paths with `..` are refused, not resolved.
    assert!(matches!(
        s.read_file("manifests/../other/e.yaml", 100).unwrap_err(),
        Error::InvalidPath { .. }
    ));
    // Missing files, directories and submodules are typed.
    assert!(matches!(
        s.read_file("missing.yaml", 100).unwrap_err(),
        Error::PathNotFound { .. }
    ));
    assert_eq!(s.try_read_file("missing/x.yaml", 100).unwrap(), None);
    assert!(matches!(
        s.read_file("manifests", 100).unwrap_err(),
        Error::NotAFile {
            kind: EntryKind::Directory,
            ..
        }
    ));
    assert!(matches!(
        s.read_file("vendor/sub", 100).unwrap_err(),
        Error::NotAFile {
            kind: EntryKind::Submodule,
            ..
        }
    ));
    // The same content over git:// reads the same.
    let (_d, remote) = e.daemon();
    let m2 = set.mirror(&remote).unwrap();
    assert_eq!(m2.update(&Want::DefaultBranch).unwrap().commit, c);
    let s2 = m2.snapshot(c).unwrap();
    assert_eq!(
        s2.glob("**/*.{yaml,yml,json}").unwrap(),
        s.glob("**/*.{yaml,yml,json}").unwrap()
    );
}

#[test]
fn blobs_over_the_read_limit_are_refused_from_the_header() {
    let e = Env::new();
    e.repo.write("big.bin", vec![b'x'; 2 << 20]).unwrap();
    e.repo.write("small.yaml", "ok").unwrap();
    let c = e.repo.commit("big").unwrap();
    let (_d, remote) = e.daemon();
    let set = e.set(limits());
    let m = set.mirror(&remote).unwrap();
    m.update(&Want::DefaultBranch).unwrap();
    let s = m.snapshot(c).unwrap();
    let err = s.read_file("big.bin", 1 << 20).unwrap_err();
    match &err {
        Error::BlobTooLarge { path, size, limit } => {
            assert_eq!(
                (path.as_str(), *size, *limit),
                ("big.bin", 2 << 20, 1 << 20)
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.fault(), Fault::Content);
    assert_eq!(s.read_file("big.bin", 4 << 20).unwrap().len(), 2 << 20);
    assert_eq!(s.read_file("small.yaml", 1 << 20).unwrap(), b"ok");
}

/// A commit whose only change is a blob that inflates far beyond the object limit (zeros compress
/// about 1000:1): the fetch is refused while the pack is indexed, and the mirror keeps the last state.
#[test]
fn inflation_bombs_and_oversized_fetches_are_refused() {
    let e = Env::new();
    e.repo.write("config.yaml", "good").unwrap();
    let good = e.repo.commit("good").unwrap();
    let (_d, daemon) = e.daemon();
    let mut l = limits();
    l.max_object_bytes = 1 << 20;
    l.max_fetch_bytes = 4 << 20;
    let set = e.set(l);
    for remote in [daemon.clone(), e.local()] {
        let m = set.mirror(&remote).unwrap();
        assert_eq!(m.update(&Want::DefaultBranch).unwrap().commit, good);
    }

    e.repo.write("bomb.bin", vec![0u8; 16 << 20]).unwrap();
    let bomb = e.repo.commit("bomb").unwrap();
    let packed = e.repo.git_served(&["count-objects", "-v"]).unwrap();
    eprintln!("served repository after the bomb: {packed}");
    for remote in [daemon.clone(), e.local()] {
        let m = set.mirror(&remote).unwrap();
        let err = m.update(&Want::DefaultBranch).unwrap_err();
        eprintln!("{err}");
        assert!(
            matches!(err, Error::ObjectTooLarge { .. }),
            "{}: {err}",
            remote.url
        );
        assert_eq!(err.fault(), Fault::Content);
        let (_, last) = m.local(&Want::DefaultBranch).unwrap().unwrap();
        assert_eq!(last, good);
        assert!(m.snapshot(bomb).is_err());
    }

    // Incompressible data beyond the fetch limit: the download stops at the limit.
    let mut noise = Vec::with_capacity(6 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..(6 << 20) / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    e.repo.remove("bomb.bin").unwrap();
    for i in 0..8 {
        e.repo
            .write(
                &format!("noise/{i}.bin"),
                &noise[i * (768 << 10)..(i + 1) * (768 << 10)],
            )
            .unwrap();
    }
    e.repo.commit("noise").unwrap();
    for remote in [daemon, e.local()] {
        let m = set.mirror(&remote).unwrap();
        let err = m.update(&Want::DefaultBranch).unwrap_err();
        eprintln!("{err}");
        assert!(
            matches!(err, Error::FetchTooLarge { .. }),
            "{}: {err}",
            remote.url
        );
        assert_eq!(m.local(&Want::DefaultBranch).unwrap().unwrap().1, good);
    }
}

#[test]
fn deep_trees_and_many_files_are_bounded() {
    let e = Env::new();
    let deep: String = (0..80).map(|i| format!("d{i}/")).collect();
    e.repo.write(&format!("{deep}leaf.yaml"), "deep").unwrap();
    for i in 0..3000 {
        e.repo.write(&format!("many/f{i:04}.yaml"), "x").unwrap();
    }
    let c = e.repo.commit("hostile shapes").unwrap();
    let mut l = limits();
    l.read = ReadLimits {
        max_entries: 1000,
        max_depth: 32,
    };
    let set = e.set(l);

    // Over the network the pack is accepted (its size is within limits) and reading is bounded.
    let (_d, remote) = e.daemon();
    let m = set.mirror(&remote).unwrap();
    assert_eq!(m.update(&Want::DefaultBranch).unwrap().commit, c);
    let s = m.snapshot(c).unwrap();
    let err = s.walk("").unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyEntries { limit: 1000, .. } | Error::TreeTooDeep { .. }
        ),
        "{err}"
    );
    assert!(matches!(
        s.glob("many/*.yaml").unwrap_err(),
        Error::TooManyEntries { limit: 1000, .. }
    ));
    let err = s.read_file(&format!("{deep}leaf.yaml"), 100).unwrap_err();
    assert!(matches!(err, Error::TreeTooDeep { limit: 32, .. }), "{err}");
    let err = s.walk("d0").unwrap_err();
    assert!(matches!(err, Error::TreeTooDeep { limit: 32, .. }), "{err}");
    assert_eq!(err.fault(), Fault::Content);
    // What is within the limits still reads.
    assert_eq!(s.read_file("many/f0001.yaml", 10).unwrap(), b"x");

    // A local copy walks the tree itself and stops at the same bounds.
    let m = set.mirror(&e.local()).unwrap();
    let err = m.update(&Want::DefaultBranch).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyEntries { .. } | Error::TreeTooDeep { .. }
        ),
        "{err}"
    );
    assert!(m.local(&Want::DefaultBranch).unwrap().is_none());
}

/// Trees that `git` itself never writes (names `..`, `.git`, `a/b`), served by `git daemon` as they are.
#[test]
fn hostile_entry_names_are_rejected_when_read() {
    let e = Env::new();
    e.repo.write("ok.yaml", "ok").unwrap();
    let good = e.repo.commit("good").unwrap();
    let blob = e.repo.write_raw_object("blob", b"pwned").unwrap();
    let (_d, remote) = e.daemon();
    let set = e.set(limits());
    let m = set.mirror(&remote).unwrap();
    m.update(&Want::DefaultBranch).unwrap();

    for (i, name) in [&b".."[..], b".git", b"a/b", b"."].iter().enumerate() {
        let tree = e
            .repo
            .write_raw_object("tree", &raw_tree(&[("100644", name, blob)]))
            .unwrap();
        let branch = format!("hostile{i}");
        let commit = e.repo.commit_tree_on_server(tree, &branch).unwrap();
        let want = Want::branch(&branch).unwrap();
        for remote in [remote.clone(), e.local()] {
            let m = set.mirror(&remote).unwrap();
            let u = m.update(&want).unwrap();
            assert_eq!(u.commit, commit);
            let s = m.snapshot(commit).unwrap();
            for result in [
                s.walk("").map(|_| ()),
                s.glob("**").map(|_| ()),
                s.read_file("x", 10).map(|_| ()),
            ] {
                let err = result.unwrap_err();
                assert!(matches!(err, Error::BadContent { .. }), "{name:?}: {err}");
                assert_eq!(err.fault(), Fault::Content);
            }
        }
    }
    // The good commit is untouched.
    let s = m.snapshot(good).unwrap();
    assert_eq!(s.read_file("ok.yaml", 10).unwrap(), b"ok");
}

#[test]
fn unchanged_local_and_commit_wants_use_no_transfer() {
    let e = Env::new();
    e.repo.write("a", "1").unwrap();
    let c = e.repo.commit("one").unwrap();
    let set = e.set(limits());
    let m = set.mirror(&e.local()).unwrap();
    assert!(matches!(
        m.update(&Want::DefaultBranch).unwrap().change,
        Change::Updated { .. }
    ));
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!((u.change, u.received_bytes), (Change::Unchanged, 0));
    let p = m.probe(&Want::Commit(c)).unwrap();
    assert!(!p.moved());
    let absent = ObjectId::from_hex(b"2222222222222222222222222222222222222222").unwrap();
    assert!(m.probe(&Want::Commit(absent)).unwrap().moved());
    let err = m.update(&Want::Commit(absent)).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");
    assert!(matches!(
        m.snapshot(absent).unwrap_err(),
        Error::MissingObject { .. }
    ));
}

#[test]
fn a_broken_mirror_is_recreated_and_refetched() {
    let e = Env::new();
    e.repo.write("a", "1").unwrap();
    let c = e.repo.commit("one").unwrap();
    let dir = {
        let set = e.set(limits());
        let m = set.mirror(&e.local()).unwrap();
        m.update(&Want::DefaultBranch).unwrap();
        assert!(m.disk_usage().unwrap() > 0);
        m.dir().to_path_buf()
    };
    // Damage it: no HEAD, garbage config.
    std::fs::remove_file(dir.join("HEAD")).unwrap();
    std::fs::write(dir.join("config"), "[[[ not a config").unwrap();
    let set = e.set(limits());
    let m = set.mirror(&e.local()).unwrap();
    assert_eq!(m.dir(), dir);
    assert!(m.local(&Want::DefaultBranch).unwrap().is_none());
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.commit, c);
    assert_eq!(m.snapshot(c).unwrap().read_file("a", 10).unwrap(), b"1");
}
