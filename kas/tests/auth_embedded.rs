//! The embedded default as the demo uses it: generate agents and users into a state directory, write
//! kas.yaml there, load and validate it, build the authenticator from it, and authenticate with the
//! token files, as a separately started kas and agentk would.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use kas::auth::{
    AgentAuthenticator, AgentsFile, AgentsFileError, AuthError, RateLimitOptions, RateLimited,
    authenticator_from_config,
};
use kas::config::{AuthBackendConfig, Config, ConfigError, ValidationError};
use kas::users::{TokenKind, UserAuthError, UsersFile, format_bearer};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn write_dummy_tls(dir: &Path) -> std::io::Result<()> {
    std::fs::write(dir.join("kas.crt"), "cert")?;
    std::fs::write(dir.join("kas.key"), "key")
}

#[test]
fn demo_state_dir_round_trip() -> TestResult {
    let state = tempfile::tempdir()?;
    let agents = AgentsFile::generate(2, state.path())?;
    let demo = UsersFile::generate_demo(state.path())?;
    write_dummy_tls(state.path())?;

    // The config the demo writes: relative paths, so the directory can be moved.
    let mut config = Config::default();
    config.api_listener.address = "127.0.0.1:0".parse()?;
    config.write(state.path().join("kas.yaml"))?;

    // A kas started by hand from that directory.
    let loaded = Config::load(state.path().join("kas.yaml"))?;
    loaded.validate()?;
    assert_eq!(loaded.agent_auth.backend, AuthBackendConfig::Embedded);
    let auth = authenticator_from_config(&loaded)?;
    for a in &agents {
        let token = std::fs::read_to_string(&a.token_file)?;
        let id = auth.authenticate(token.trim(), SOURCE)?;
        assert_eq!(id.agent_id, a.id);
        assert_eq!(id.name, a.name);
    }
    assert!(matches!(
        auth.authenticate("not-a-token", SOURCE),
        Err(AuthError::Unauthenticated)
    ));

    let users = UsersFile::load(&loaded.users.file)?;
    let token = std::fs::read_to_string(&demo.token_file)?;
    let header = format!("Bearer {}", format_bearer(TokenKind::Pat, 2, token.trim()));
    let who = users.authorize_header(&header)?;
    assert_eq!((who.name.as_str(), who.agent_id), ("demo", 2));
    assert_eq!(
        users.authorize_header("Bearer pat:2:nope"),
        Err(UserAuthError::Unauthenticated)
    );
    Ok(())
}

#[test]
fn agents_file_backend_from_config_and_missing_file_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let agents = AgentsFile::generate(1, dir.path().join("elsewhere"))?;
    std::fs::write(
        dir.path().join("kas.yaml"),
        "agent_auth:\n  backend:\n    agents_file: elsewhere/agents.yaml\n",
    )?;
    let config = Config::load(dir.path().join("kas.yaml"))?;
    let auth = authenticator_from_config(&config)?;
    assert_eq!(auth.authenticate(&agents[0].token, SOURCE)?.agent_id, 1);

    // Validation names what is missing; building the authenticator fails with a typed error.
    let config = Config::load({
        std::fs::write(
            dir.path().join("kas2.yaml"),
            "agent_auth: { backend: { agents_file: missing.yaml } }\n",
        )?;
        dir.path().join("kas2.yaml")
    })?;
    let errors = match config.validate() {
        Err(e) => e.0,
        Ok(()) => return Err("missing files accepted".into()),
    };
    assert!(
        errors.iter().any(|e| matches!(e, ValidationError::MissingFile { what: "agents file", path } if path.ends_with("missing.yaml"))),
        "{errors:?}"
    );
    assert!(matches!(
        authenticator_from_config(&config),
        Err(kas::auth::AuthSetupError::AgentsFile(
            AgentsFileError::Read { .. }
        ))
    ));
    Ok(())
}

#[test]
fn broken_yaml_files_name_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kas.yaml");
    std::fs::write(&path, "log:\n  level: info\n  format: [json\n")?;
    match Config::load(&path) {
        Err(ConfigError::Yaml(e)) => {
            assert_eq!(e.path, path);
            assert!(e.line.is_some(), "{e}");
            assert!(e.to_string().contains("kas.yaml"), "{e}");
        }
        other => return Err(format!("expected a YAML error, got {other:?}").into()),
    }
    let agents = dir.path().join("agents.yaml");
    std::fs::write(
        &agents,
        "agents:\n  - id: 1\n    name: a\n    token_sha256: [\n",
    )?;
    match AgentsFile::load(&agents) {
        Err(AgentsFileError::Yaml(e)) => {
            assert_eq!(e.path, agents);
            assert!(e.line.is_some_and(|l| l >= 4), "{e}");
        }
        other => return Err(format!("expected a YAML error, got {other:?}").into()),
    }
    Ok(())
}

#[test]
fn rate_limit_from_config_protects_the_agents_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let agents = AgentsFile::generate(1, dir.path())?;
    let file = AgentsFile::load(dir.path().join("agents.yaml"))?;
    let limited = RateLimited::new(
        file,
        RateLimitOptions::from(&kas::config::RateLimitConfig {
            max_failures: 2,
            window: Duration::from_secs(30),
            max_sources: 10,
        }),
    );
    let t0 = Instant::now();
    for _ in 0..2 {
        assert!(matches!(
            limited.authenticate_at("guess", SOURCE, t0),
            Err(AuthError::Unauthenticated)
        ));
    }
    // The failing credential is refused from this source, without reading the file...
    assert!(matches!(
        limited.authenticate_at("guess", SOURCE, t0),
        Err(AuthError::RateLimited { .. })
    ));
    // ...but a valid token from the same source is never locked out by it.
    assert_eq!(
        limited
            .authenticate_at(&agents[0].token, SOURCE, t0)?
            .agent_id,
        1
    );
    assert!(matches!(
        limited.authenticate_at("guess", SOURCE, t0 + Duration::from_secs(30)),
        Err(AuthError::Unauthenticated)
    ));
    Ok(())
}
