//! The GitLab backend against a small fake GitLab on 127.0.0.1: request shape (bearer token, signed
//! JWT checked independently of kas's own JWT code), answer mapping, positive and negative caching,
//! backend failures, and rate limiting in front of it.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::Mac as _;
use kas::auth::gitlab::AGENT_INFO_PATH;
use kas::auth::{
    AgentAuthenticator, AuthError, BackendError, GitLabAuthenticator, GitLabOptions,
    RateLimitOptions, RateLimited,
};
use kas::config::{AuthCacheConfig, GitLabConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SECRET: [u8; 32] = *b"0123456789abcdef0123456789abcdef";
const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// What the fake GitLab saw in one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    bearer: Option<String>,
    jwt_valid: bool,
}

struct FakeGitLab {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGitLab {
    fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = Arc::clone(&seen);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                // Bounded: a test makes far fewer connections than this.
                for _ in 0..1000 {
                    let Ok((stream, _)) = listener.accept() else {
                        continue;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    serve_one(stream, &seen);
                }
            })
        };
        Ok(Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self) -> usize {
        self.requests().len()
    }
}

impl Drop for FakeGitLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one request. What was seen is recorded before the answer is written, so a client that has
/// its answer always finds its request counted.
fn serve_one(mut stream: TcpStream, seen: &Mutex<Vec<Seen>>) -> Option<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let jwt_valid = headers
        .get("gitlab-kas-api-request")
        .is_some_and(|jwt| check_jwt(jwt));

    let (status, body): (u16, String) = if method != "GET" || path != AGENT_INFO_PATH {
        (404, r#"{"message":"404 Not Found"}"#.into())
    } else if !jwt_valid {
        (
            401,
            r#"{"message":"KAS JWT authentication invalid"}"#.into(),
        )
    } else {
        match bearer.as_deref() {
            Some(t) if t.starts_with("good-") => {
                let id: u64 = t["good-".len()..].parse().unwrap_or(999);
                (200, agent_info_json(id))
            }
            Some("forbidden") => (403, r#"{"message":"403 Forbidden"}"#.into()),
            Some("notfound") => (404, r#"{"message":"404 Not Found"}"#.into()),
            Some("boom") => (500, r#"{"message":"500 Internal Server Error"}"#.into()),
            Some("garbage") => (200, "this is not json".into()),
            Some("hang") => (0, String::new()),
            _ => (401, r#"{"message":"401 Unauthorized"}"#.into()),
        }
    };
    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
        method,
        path,
        bearer,
        jwt_valid,
    });
    if status == 0 {
        // Answer nothing for a while: kas's timeout must fire first.
        std::thread::sleep(Duration::from_secs(3));
        return Some(());
    }
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    Some(())
}

fn agent_info_json(agent_id: u64) -> String {
    serde_json::json!({
        "project_id": 7,
        "agent_id": agent_id,
        "agent_name": format!("agent-{agent_id}"),
        "gitaly_info": {"address": "tcp://gitaly:8075", "token": "gitaly-secret", "features": {}},
        "gitaly_repository": {
            "storage_name": "default",
            "relative_path": "@hashed/aa/bb.git",
            "gl_repository": "project-7",
            "gl_project_path": "group/cluster-management"
        },
        "default_branch": "main"
    })
    .to_string()
}

/// Checks the JWT the way GitLab does, independently of kas's `jwt` module: HS256 over
/// `header.payload` with the shared secret, `iss`/`aud`, and a short validity covering now.
fn check_jwt(jwt: &str) -> bool {
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return false;
    }
    let Ok(header) = URL_SAFE_NO_PAD.decode(parts[0]) else {
        return false;
    };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else {
        return false;
    };
    if header["alg"] != "HS256" {
        return false;
    }
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&SECRET) else {
        return false;
    };
    mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
    let expected = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    if expected != parts[2] {
        return false;
    }
    let Ok(payload) = URL_SAFE_NO_PAD.decode(parts[1]) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let num = |k: &str| claims[k].as_u64().unwrap_or(0);
    claims["iss"] == "gitlab-kas"
        && claims["aud"] == "gitlab"
        && num("nbf") <= now + 5
        && now < num("exp") + 5
        && num("exp") > num("iat")
        && num("exp") - num("iat") <= 300
}

fn options(gitlab: &FakeGitLab) -> GitLabOptions {
    let mut o = GitLabOptions::new(gitlab.url(), SECRET.to_vec());
    o.positive_ttl = Duration::from_secs(300);
    o.negative_ttl = Duration::from_secs(60);
    o.timeout = Duration::from_secs(20);
    o
}

#[test]
fn valid_token_is_sent_as_bearer_with_signed_jwt() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join(".gitlab_kas_secret");
    std::fs::write(&secret_file, format!("{}\n", STANDARD.encode(SECRET)))?;
    let auth = GitLabAuthenticator::from_config(&GitLabConfig {
        url: gitlab.url(),
        secret_file,
        ..GitLabConfig::default()
    })?;

    let id = auth.authenticate("good-42", SOURCE)?;
    assert_eq!(id.agent_id, 42);
    assert_eq!(id.name, "agent-42");
    let project = id.project.ok_or("no project")?;
    assert_eq!(project.project_id, 7);
    assert_eq!(project.path.as_deref(), Some("group/cluster-management"));
    assert_eq!(project.default_branch.as_deref(), Some("main"));

    let seen = gitlab.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/api/v4/internal/kubernetes/agent_info");
    assert_eq!(seen[0].bearer.as_deref(), Some("good-42"));
    assert!(seen[0].jwt_valid, "JWT rejected by the independent check");
    Ok(())
}

#[test]
fn positive_answers_are_cached_until_their_ttl() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let auth = GitLabAuthenticator::new(options(&gitlab))?;
    let t0 = Instant::now();
    assert_eq!(auth.authenticate_at("good-1", t0)?.agent_id, 1);
    assert_eq!(
        auth.authenticate_at("good-1", t0 + Duration::from_secs(299))?
            .agent_id,
        1
    );
    assert_eq!(gitlab.count(), 1, "second call must come from the cache");
    assert_eq!(
        auth.authenticate_at("good-1", t0 + Duration::from_secs(300))?
            .agent_id,
        1
    );
    assert_eq!(gitlab.count(), 2, "expired entry must be fetched again");
    Ok(())
}

#[test]
fn negative_answers_are_cached_for_their_own_ttl() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let auth = GitLabAuthenticator::new(options(&gitlab))?;
    let t0 = Instant::now();
    for _ in 0..3 {
        assert!(matches!(
            auth.authenticate_at("wrong", t0),
            Err(AuthError::Unauthenticated)
        ));
    }
    assert_eq!(gitlab.count(), 1);
    for _ in 0..2 {
        assert!(matches!(
            auth.authenticate_at("forbidden", t0),
            Err(AuthError::PermissionDenied)
        ));
        assert!(matches!(
            auth.authenticate_at("notfound", t0),
            Err(AuthError::Unauthenticated)
        ));
    }
    assert_eq!(gitlab.count(), 3);
    let later = t0 + Duration::from_secs(60);
    assert!(matches!(
        auth.authenticate_at("wrong", later),
        Err(AuthError::Unauthenticated)
    ));
    assert_eq!(
        gitlab.count(),
        4,
        "negative entry must expire after negative_ttl"
    );
    Ok(())
}

#[test]
fn zero_ttls_disable_caching() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let mut o = options(&gitlab);
    o.positive_ttl = Duration::ZERO;
    o.negative_ttl = Duration::ZERO;
    let auth = GitLabAuthenticator::new(o)?;
    let t0 = Instant::now();
    auth.authenticate_at("good-1", t0)?;
    auth.authenticate_at("good-1", t0)?;
    let _ = auth.authenticate_at("wrong", t0);
    let _ = auth.authenticate_at("wrong", t0);
    assert_eq!(gitlab.count(), 4);
    Ok(())
}

#[test]
fn backend_failures_are_distinguished_and_not_cached() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let auth = GitLabAuthenticator::new(options(&gitlab))?;
    let t0 = Instant::now();
    for _ in 0..2 {
        match auth.authenticate_at("boom", t0) {
            Err(AuthError::Backend(BackendError::Status {
                status: 500,
                message,
                ..
            })) => {
                assert_eq!(message, "500 Internal Server Error")
            }
            other => panic!("expected a 500 backend error, got {other:?}"),
        }
    }
    assert_eq!(gitlab.count(), 2, "backend failures must not be cached");
    match auth.authenticate_at("garbage", t0) {
        Err(AuthError::Backend(BackendError::InvalidResponse { .. })) => {}
        other => panic!("expected InvalidResponse, got {other:?}"),
    }
    Ok(())
}

#[test]
fn wrong_shared_secret_is_a_backend_error_not_a_bad_token() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let mut o = options(&gitlab);
    o.secret = vec![0xAA; 32];
    let auth = GitLabAuthenticator::new(o)?;
    let t0 = Instant::now();
    for _ in 0..2 {
        match auth.authenticate_at("good-1", t0) {
            Err(AuthError::Backend(BackendError::JwtRejected { message, .. })) => {
                assert!(message.contains("KAS JWT"), "{message}")
            }
            other => panic!("expected JwtRejected, got {other:?}"),
        }
    }
    assert_eq!(gitlab.count(), 2);
    assert!(gitlab.requests().iter().all(|s| !s.jwt_valid));
    Ok(())
}

#[test]
fn unreachable_gitlab_is_a_transport_error() -> TestResult {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    }; // closed again: connections are refused
    let auth = GitLabAuthenticator::new(GitLabOptions::new(
        format!("http://127.0.0.1:{port}"),
        SECRET.to_vec(),
    ))?;
    match auth.authenticate("good-1", SOURCE) {
        Err(AuthError::Backend(BackendError::Transport { url, .. })) => {
            assert!(url.ends_with(AGENT_INFO_PATH), "{url}")
        }
        other => panic!("expected Transport, got {other:?}"),
    }
    Ok(())
}

#[test]
fn silent_gitlab_times_out_as_a_backend_error() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let mut o = options(&gitlab);
    o.timeout = Duration::from_millis(300);
    let auth = GitLabAuthenticator::new(o)?;
    match auth.authenticate("hang", SOURCE) {
        Err(AuthError::Backend(BackendError::Transport { .. })) => Ok(()),
        other => Err(format!("expected a timeout, got {other:?}").into()),
    }
}

#[test]
fn cache_is_bounded() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let mut o = options(&gitlab);
    o.max_cache_entries = 2;
    let auth = GitLabAuthenticator::new(o)?;
    let t0 = Instant::now();
    for t in ["good-1", "good-2", "good-3"] {
        auth.authenticate_at(t, t0)?;
    }
    assert_eq!(gitlab.count(), 3);
    auth.authenticate_at("good-3", t0)?;
    assert_eq!(gitlab.count(), 3, "most recent entry kept");
    auth.authenticate_at("good-1", t0)?;
    assert_eq!(gitlab.count(), 4, "oldest entry evicted");
    Ok(())
}

#[test]
fn unsendable_tokens_are_rejected_without_asking() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let auth = GitLabAuthenticator::new(options(&gitlab))?;
    for t in ["", "good-1\r\nX-Injected: 1", "good 1", "tök"] {
        assert!(
            matches!(
                auth.authenticate(t, SOURCE),
                Err(AuthError::Unauthenticated)
            ),
            "{t:?}"
        );
    }
    assert_eq!(gitlab.count(), 0);
    Ok(())
}

#[test]
fn rate_limiting_stops_requests_from_a_failing_source() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let limited = RateLimited::new(
        GitLabAuthenticator::new(options(&gitlab))?,
        RateLimitOptions {
            max_failures: 3,
            window: Duration::from_secs(60),
            max_sources: 100,
        },
    );
    let attacker = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 8));
    let t0 = Instant::now();
    // Cached rejections still count as failures.
    for _ in 0..3 {
        assert!(matches!(
            limited.authenticate_at("guess", attacker, t0),
            Err(AuthError::Unauthenticated)
        ));
    }
    assert_eq!(gitlab.count(), 1);
    let before = gitlab.count();
    match limited.authenticate_at("guess", attacker, t0 + Duration::from_secs(1)) {
        Err(AuthError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(59))
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(
        gitlab.count(),
        before,
        "limited attempt must not reach GitLab"
    );
    // A valid token from the same address (the same NAT) is not locked out by the failing one.
    assert_eq!(
        limited
            .authenticate_at("good-5", attacker, t0 + Duration::from_secs(1))?
            .agent_id,
        5
    );
    assert_eq!(limited.authenticate_at("good-5", other, t0)?.agent_id, 5);
    // Once the window has passed, the failing credential may be tried again.
    assert!(matches!(
        limited.authenticate_at("guess", attacker, t0 + Duration::from_secs(60)),
        Err(AuthError::Unauthenticated)
    ));
    Ok(())
}

#[test]
fn config_cache_settings_reach_the_authenticator() -> TestResult {
    let gitlab = FakeGitLab::start()?;
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, STANDARD.encode(SECRET))?;
    let auth = GitLabAuthenticator::from_config(&GitLabConfig {
        url: gitlab.url(),
        secret_file,
        cache: AuthCacheConfig {
            positive_ttl: Duration::from_secs(1),
            negative_ttl: Duration::ZERO,
            max_entries: 10,
        },
        ..GitLabConfig::default()
    })?;
    let t0 = Instant::now();
    auth.authenticate_at("good-1", t0)?;
    auth.authenticate_at("good-1", t0 + Duration::from_millis(500))?;
    assert_eq!(gitlab.count(), 1);
    auth.authenticate_at("good-1", t0 + Duration::from_secs(1))?;
    assert_eq!(gitlab.count(), 2);
    let _ = auth.authenticate_at("wrong", t0);
    let _ = auth.authenticate_at("wrong", t0);
    assert_eq!(gitlab.count(), 4, "negative_ttl 0 caches no rejections");
    Ok(())
}
