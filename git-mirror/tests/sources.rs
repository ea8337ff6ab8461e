//! Fetching from every kind of source, against real servers on 127.0.0.1: a local path, `git daemon`,
//! and `git http-backend` behind nginx (basic auth over HTTP, an `Authorization` header over HTTPS with
//! a throw-away CA). Repositories are made and pushed to with the `git` CLI.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use git_mirror::testing::{GitDaemon, HttpAuth, HttpGitServer, TestRepo};
use git_mirror::{
    Auth, Change, Error, Fault, Limits, Mirror, MirrorSet, Remote, RepoUrl, Secret, Want,
};

const TOKEN: &str = "glpat-Zx81token";

/// Held so that the server runs as long as the test; dropping it stops the server.
#[allow(dead_code)]
enum Server {
    Local,
    Daemon(GitDaemon),
    Http(HttpGitServer),
}

/// A served repository, a server for it, and a mirror set in a temporary state directory.
struct Env {
    _dir: tempfile::TempDir,
    repo: TestRepo,
    server: Server,
    set: MirrorSet,
    remote: Remote,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Local,
    Daemon,
    HttpBasic,
    HttpsHeader,
}

fn limits() -> Limits {
    Limits {
        fetch_timeout: Duration::from_secs(20),
        ..Limits::default()
    }
}

fn env(kind: Kind) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let repo = TestRepo::create(&srv, "cfg").unwrap();
    let (server, remote) = start(kind, &srv, dir.path(), "cfg");
    let set = MirrorSet::open(dir.path().join("state"), limits()).unwrap();
    Env {
        _dir: dir,
        repo,
        server,
        set,
        remote,
    }
}

fn start(kind: Kind, srv: &Path, scratch: &Path, name: &str) -> (Server, Remote) {
    match kind {
        Kind::Local => (
            Server::Local,
            Remote::new(RepoUrl::file(&srv.join(format!("{name}.git"))).unwrap()),
        ),
        Kind::Daemon => {
            let d = GitDaemon::start(srv).unwrap();
            let r = Remote::parse(&d.url(name)).unwrap();
            (Server::Daemon(d), r)
        }
        Kind::HttpBasic => {
            let h = HttpGitServer::start(
                srv,
                HttpAuth::Basic {
                    user: "kas".into(),
                    password: TOKEN.into(),
                },
                false,
            )
            .unwrap();
            let r = Remote::parse(&h.url(name)).unwrap().with_auth(Auth::Basic {
                username: "kas".into(),
                token: Secret::new(TOKEN),
            });
            (Server::Http(h), r)
        }
        Kind::HttpsHeader => {
            let h = HttpGitServer::start(srv, HttpAuth::Header(format!("Bearer {TOKEN}")), true)
                .unwrap();
            let header_file = scratch.join("authorization");
            std::fs::write(&header_file, format!("Bearer {TOKEN}\n")).unwrap();
            let r = Remote::parse(&h.url(name))
                .unwrap()
                .with_auth(Auth::HeaderFile(header_file))
                .with_ca_file(h.ca_file.clone().unwrap());
            (Server::Http(h), r)
        }
    }
}

fn read(m: &Mirror, commit: git_mirror::ObjectId, path: &str) -> String {
    String::from_utf8(
        m.snapshot(commit)
            .unwrap()
            .read_file(path, 1 << 20)
            .unwrap(),
    )
    .unwrap()
}

/// The whole life of a mirror against one kind of source.
fn lifecycle(kind: Kind) {
    let mut e = env(kind);
    let repo = &e.repo;
    for i in 0..20 {
        repo.write(&format!("static/file-{i}.yaml"), format!("n: {i}\n"))
            .unwrap();
    }
    repo.write(".gitlab/agents/a1/config.yaml", "level: info\n")
        .unwrap();
    let c1 = repo.commit("first").unwrap();
    let m = e.set.mirror(&e.remote).unwrap();

    // The default branch, resolved through the remote's HEAD.
    let probe = m.probe(&Want::DefaultBranch).unwrap();
    assert!(probe.moved(), "{probe:?}");
    assert_eq!(probe.remote, Some(c1));
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.commit, c1);
    assert_eq!(u.previous, None);
    assert_eq!(u.symref_target.as_deref(), Some("refs/heads/main"));
    assert!(
        matches!(u.change, Change::Updated { objects } if objects >= 25),
        "{u:?}"
    );
    assert_eq!(
        read(&m, c1, ".gitlab/agents/a1/config.yaml"),
        "level: info\n"
    );

    // Unchanged: the probe and the update see it without a pack.
    let p = m.probe(&Want::DefaultBranch).unwrap();
    assert!(!p.moved(), "{p:?}");
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.change, Change::Unchanged, "{u:?}");
    assert_eq!(u.commit, c1);
    // Only the ref advertisement crossed the wire (the first fetch received the whole snapshot).
    assert!(u.received_bytes < 1024, "{u:?}");
    eprintln!(
        "{kind:?}: unchanged update received {} bytes",
        u.received_bytes
    );
    let packs_before = m.stats().packs;

    // A new commit: only the new objects come (the commit, three trees, one blob).
    repo.write(".gitlab/agents/a1/config.yaml", "level: debug\n")
        .unwrap();
    let c2 = repo.commit("second").unwrap();
    assert!(m.probe(&Want::DefaultBranch).unwrap().moved());
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.commit, c2);
    assert_eq!(u.previous, Some(c1));
    eprintln!("{kind:?}: one-file change: {u:?}");
    match u.change {
        Change::Updated { objects } => {
            assert!(objects <= 6, "{objects} objects for a one-file change")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.stats().packs, packs_before + 1);
    assert_eq!(
        read(&m, c2, ".gitlab/agents/a1/config.yaml"),
        "level: debug\n"
    );
    // The old commit is still readable.
    assert_eq!(
        read(&m, c1, ".gitlab/agents/a1/config.yaml"),
        "level: info\n"
    );

    // A branch, a lightweight and an annotated tag.
    let mut r = repo.clone();
    r.checkout("release").unwrap();
    r.write("release.txt", "r1").unwrap();
    let rel = r.commit("release").unwrap();
    let light = r.tag("v1", None).unwrap();
    assert_eq!(light, rel);
    let annotated = r.tag("v2", Some("annotated")).unwrap();
    assert_ne!(annotated, rel);
    let u = m.update(&Want::branch("release").unwrap()).unwrap();
    assert_eq!(u.commit, rel);
    let u = m.update(&Want::tag("v1").unwrap()).unwrap();
    assert_eq!((u.commit, u.target), (rel, rel));
    let u = m.update(&Want::tag("v2").unwrap()).unwrap();
    assert_eq!((u.commit, u.target), (rel, annotated));
    assert_eq!(
        m.update(&Want::tag("v2").unwrap()).unwrap().change,
        Change::Unchanged
    );
    assert_eq!(read(&m, rel, "release.txt"), "r1");

    // An exact commit that the mirror does not have yet (on a branch never fetched), then again:
    // no network at all the second time.
    r.checkout("side").unwrap();
    r.write("side.txt", "s").unwrap();
    let side = r.commit("side").unwrap();
    let want = Want::Commit(side);
    let u = m.update(&want).unwrap();
    assert_eq!(u.commit, side);
    assert!(matches!(u.change, Change::Updated { .. }));
    let u = m.update(&want).unwrap();
    assert_eq!((u.change, u.received_bytes), (Change::Unchanged, 0));

    // A ref that does not exist.
    let err = m.update(&Want::branch("nope").unwrap()).unwrap_err();
    assert!(matches!(err, Error::RefNotFound { .. }), "{err}");
    assert_eq!(err.fault(), Fault::Remote);
    assert!(
        m.probe(&Want::branch("nope").unwrap())
            .unwrap()
            .remote
            .is_none()
    );

    // The default branch changes on the server.
    repo.set_default_branch("release").unwrap();
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.commit, rel);
    assert_eq!(u.symref_target.as_deref(), Some("refs/heads/release"));
    repo.set_default_branch("main").unwrap();
    assert_eq!(m.update(&Want::DefaultBranch).unwrap().commit, c2);

    // Force-push: history rewritten to a new root commit.
    repo.write(".gitlab/agents/a1/config.yaml", "level: warn\n")
        .unwrap();
    let rewritten = repo.rewrite_history("rewritten").unwrap();
    let u = m.update(&Want::DefaultBranch).unwrap();
    assert_eq!(u.commit, rewritten);
    assert_eq!(u.previous, Some(c2));
    assert_eq!(
        read(&m, rewritten, ".gitlab/agents/a1/config.yaml"),
        "level: warn\n"
    );

    // The repository disappears from the server: a typed error, and the last state stays readable.
    repo.delete_on_server().unwrap();
    let err = m.update(&Want::DefaultBranch).unwrap_err();
    eprintln!("{kind:?}: {err}");
    assert!(matches!(err, Error::RepoNotFound { .. }), "{kind:?}: {err}");
    assert_eq!(err.fault(), Fault::Remote);
    let err = m.probe(&Want::DefaultBranch).unwrap_err();
    assert!(matches!(err, Error::RepoNotFound { .. }), "{kind:?}: {err}");
    let (_, last) = m.local(&Want::DefaultBranch).unwrap().unwrap();
    assert_eq!(last, rewritten);
    assert_eq!(
        read(&m, last, ".gitlab/agents/a1/config.yaml"),
        "level: warn\n"
    );
    assert!(m.stats().failures >= 2);

    // A new MirrorSet on the same state directory finds the mirror and its state.
    let root = e.set.root().to_path_buf();
    e.set = MirrorSet::open(root, limits()).unwrap();
    let m2 = e.set.mirror(&e.remote).unwrap();
    assert_eq!(
        m2.local(&Want::DefaultBranch).unwrap().unwrap().1,
        rewritten
    );
    assert_eq!(m2.dir(), m.dir());
    drop(e.server);
}

#[test]
fn local_path_lifecycle() {
    lifecycle(Kind::Local);
}

#[test]
fn git_daemon_lifecycle() {
    lifecycle(Kind::Daemon);
}

#[test]
fn http_basic_auth_lifecycle() {
    lifecycle(Kind::HttpBasic);
}

#[test]
fn https_header_auth_lifecycle() {
    lifecycle(Kind::HttpsHeader);
}

#[test]
fn shallow_mirror_holds_one_commit_of_history() {
    let e = env(Kind::Daemon);
    for i in 0..5 {
        e.repo.write("f.txt", format!("{i}")).unwrap();
        e.repo.commit(&format!("c{i}")).unwrap();
    }
    let m = e.set.mirror(&e.remote).unwrap();
    let u = m.update(&Want::branch("main").unwrap()).unwrap();
    // depth 1: the mirror has the tip, not its parent.
    let parent = e.repo.git(&["rev-parse", "HEAD~1"]).unwrap();
    let parent = git_mirror::ObjectId::from_hex(parent.as_bytes()).unwrap();
    assert!(matches!(
        m.snapshot(parent).unwrap_err(),
        Error::MissingObject { .. }
    ));
    assert!(m.snapshot(u.commit).is_ok());
    let shallow = std::fs::read_to_string(m.dir().join("shallow")).unwrap();
    assert!(shallow.contains(&u.commit.to_string()), "{shallow}");
}

#[test]
fn concurrent_updates_of_one_want_share_fetches() {
    let e = env(Kind::Daemon);
    e.repo.write("a.txt", "1").unwrap();
    let c = e.repo.commit("one").unwrap();
    let m = e.set.mirror(&e.remote).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let m: Arc<Mirror> = m.clone();
            std::thread::spawn(move || m.update(&Want::DefaultBranch).unwrap().commit)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), c);
    }
    let s = m.stats();
    // Eight callers, at most two fetches' worth of waiting rounds: the first fetch, and one more
    // for every caller that arrived while it ran.
    assert!(s.updates <= 2, "{s:?}");
    assert_eq!(s.updates + s.coalesced, 8, "{s:?}");
    assert_eq!(s.packs, 1, "{s:?}");
    // The key is the same for every caller, and for other spellings of the URL.
    let other = Remote::parse(
        &e.remote
            .url
            .to_string()
            .replace("127.0.0.1", "127.0.0.1:9418"),
    );
    if let Ok(other) = other {
        assert_ne!(
            other.url.id(),
            e.remote.url.id(),
            "a different port is another repo"
        );
    }
    assert_eq!(m.key(&Want::DefaultBranch), m.key(&Want::DefaultBranch));
}

#[test]
fn wrong_token_is_an_auth_error_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let repo = TestRepo::create(&srv, "p").unwrap();
    repo.write("a", "1").unwrap();
    repo.commit("one").unwrap();
    let set = MirrorSet::open(dir.path().join("state"), limits()).unwrap();

    // Basic auth over HTTP (loopback) with a wrong token.
    let h = HttpGitServer::start(
        &srv,
        HttpAuth::Basic {
            user: "kas".into(),
            password: TOKEN.into(),
        },
        false,
    )
    .unwrap();
    let wrong = "glpat-WRONGwrong42";
    let remote = Remote::parse(&h.url("p")).unwrap().with_auth(Auth::Basic {
        username: "kas".into(),
        token: Secret::new(wrong),
    });
    for result in [
        set.update(&remote, &Want::DefaultBranch).map(|_| ()),
        set.probe(&remote, &Want::DefaultBranch).map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                Error::AuthRefused {
                    status: Some(401),
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.fault(), Fault::Credentials);
        let text = format!("{err} {err:?}");
        assert!(!text.contains(wrong) && !text.contains("WRONG"), "{text}");
    }
    // No credentials at all.
    let err = set
        .update(&Remote::parse(&h.url("p")).unwrap(), &Want::DefaultBranch)
        .unwrap_err();
    assert!(matches!(err, Error::AuthRefused { .. }), "{err}");
    // Credentials in the URL are taken as basic auth and never shown.
    let in_url = h
        .url("p")
        .replace("http://", &format!("http://kas:{wrong}@"));
    let remote = Remote::parse(&in_url).unwrap();
    assert!(!remote.url.to_string().contains(wrong));
    let err = set.update(&remote, &Want::DefaultBranch).unwrap_err();
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    let ok = Remote::parse(
        &h.url("p")
            .replace("http://", &format!("http://kas:{TOKEN}@")),
    )
    .unwrap();
    assert!(set.update(&ok, &Want::DefaultBranch).is_ok());
    drop(h);

    // A header file with the wrong token over HTTPS.
    let h = HttpGitServer::start(&srv, HttpAuth::Header(format!("Bearer {TOKEN}")), true).unwrap();
    let file = dir.path().join("auth");
    std::fs::write(&file, format!("Bearer {wrong}")).unwrap();
    let remote = Remote::parse(&h.url("p"))
        .unwrap()
        .with_auth(Auth::HeaderFile(file.clone()))
        .with_ca_file(h.ca_file.clone().unwrap());
    let err = set.update(&remote, &Want::DefaultBranch).unwrap_err();
    assert!(matches!(err, Error::AuthRefused { .. }), "{err}");
    assert!(!format!("{err:?}").contains(wrong));
    // The file is read on every fetch: fixing it fixes the next fetch, without a restart.
    std::fs::write(&file, format!("Bearer {TOKEN}")).unwrap();
    assert!(set.update(&remote, &Want::DefaultBranch).is_ok());

    // TLS with the wrong trust roots (the built-in web PKI does not know the throw-away CA).
    let untrusted = Remote::parse(&h.url("p"))
        .unwrap()
        .with_auth(Auth::HeaderFile(file));
    let err = set.probe(&untrusted, &Want::DefaultBranch).unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("cert"), "{err}");
}

#[test]
fn credentials_are_refused_over_plain_http_to_other_hosts() {
    let remote = Remote::parse("http://git.example.com/g/p.git")
        .unwrap()
        .with_auth(Auth::Basic {
            username: "u".into(),
            token: Secret::new("t0ken"),
        });
    let dir = tempfile::tempdir().unwrap();
    let set = MirrorSet::open(dir.path(), limits()).unwrap();
    let err = set.mirror(&remote).unwrap_err();
    assert_eq!(err.fault(), Fault::Request);
    assert!(
        set.mirror(&Remote::parse("http://git.example.com/g/p.git").unwrap())
            .is_ok()
    );
}

#[test]
fn unreachable_and_silent_servers_fail_fast_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits();
    l.fetch_timeout = Duration::from_millis(1500);
    let set = MirrorSet::open(dir.path(), l).unwrap();

    // Nothing listens.
    let port = git_mirror::testing::free_port().unwrap();
    for url in [
        format!("git://127.0.0.1:{port}/r.git"),
        format!("http://127.0.0.1:{port}/r.git"),
    ] {
        let err = set
            .update(&Remote::parse(&url).unwrap(), &Want::DefaultBranch)
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{url}: {err}");
        assert!(err.is_transient());
    }

    // A server that accepts and never answers: the fetch timeout bounds the wait.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        listener.set_nonblocking(true).unwrap();
        while Instant::now() < deadline && conns.len() < 2 {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_secs(4));
        drop(conns);
    });
    for url in [
        format!("git://127.0.0.1:{port}/r.git"),
        format!("http://127.0.0.1:{port}/r.git"),
    ] {
        let started = Instant::now();
        let err = set
            .probe(&Remote::parse(&url).unwrap(), &Want::DefaultBranch)
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{url}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{url}: {:?}",
            started.elapsed()
        );
    }
    held.join().unwrap();
}

#[test]
fn mirrors_live_in_one_safe_directory_each() {
    let dir = tempfile::tempdir().unwrap();
    let set = MirrorSet::open(dir.path().join("state"), limits()).unwrap();
    let hostile = [
        "https://h/../../etc/passwd",
        "https://h/%2e%2e/%2e%2e/x",
        "git://h/..%2f..%2fx",
        "https://h/a/.git",
    ];
    for url in hostile {
        if let Ok(remote) = Remote::parse(url)
            && let Ok(m) = set.mirror(&remote)
        {
            assert_eq!(m.dir().parent(), Some(set.root()), "{url}");
        }
    }
    let names: Vec<_> = std::fs::read_dir(set.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') && n.ends_with(".git")),
        "{names:?}"
    );
}
