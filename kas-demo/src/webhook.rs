//! `kas-demo webhook`: what the demo repositories' `post-receive` hooks run. It reads the hook's input
//! (`<old> <new> <ref>` per updated ref) and posts one GitLab-shaped push event per ref to kas's
//! `POST /api/v1/webhooks/git`, with the shared secret in `X-Gitlab-Token` (read from a file, never
//! printed). What it prints reaches the pushing user as `remote: …` lines.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api_client::{ApiClient, ApiClientError, read_file};

/// How long one webhook call may take: a push never hangs on kas.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a webhook call failed (never shows the secret).
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Client(#[from] ApiClientError),
    #[error("{0} is empty")]
    EmptySecret(PathBuf),
    #[error("cannot read the hook's input: {0}")]
    Input(std::io::Error),
}

/// One updated ref, as `post-receive` gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub before: String,
    pub after: String,
    pub git_ref: String,
}

/// Parses the hook's input; malformed lines are skipped.
pub fn parse_updates(input: impl BufRead) -> Result<Vec<RefUpdate>, WebhookError> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.map_err(WebhookError::Input)?;
        let mut parts = line.split_whitespace();
        if let (Some(before), Some(after), Some(git_ref), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            updates.push(RefUpdate {
                before: before.to_owned(),
                after: after.to_owned(),
                git_ref: git_ref.to_owned(),
            });
        }
    }
    Ok(updates)
}

/// GitLab's push event, with the fields kas reads (`ref`, `project.path_with_namespace`).
pub fn push_event(project: &str, update: &RefUpdate) -> serde_json::Value {
    serde_json::json!({
        "object_kind": "push",
        "event_name": "push",
        "before": update.before,
        "after": update.after,
        "ref": update.git_ref,
        "project": {"name": project.rsplit('/').next().unwrap_or(project), "path_with_namespace": project},
    })
}

/// Posts kas's webhook.
#[derive(Debug)]
pub struct WebhookClient {
    path: String,
    secret: String,
    client: ApiClient,
}

impl WebhookClient {
    /// A client for `url` (`https://host:port/api/v1/webhooks/git`) trusting only the CA in
    /// `ca_file`, with the secret from `secret_file`.
    pub fn new(url: &str, ca_file: &Path, secret_file: &Path) -> Result<Self, WebhookError> {
        let secret = String::from_utf8_lossy(&read_file(secret_file)?)
            .trim()
            .to_owned();
        if secret.is_empty() {
            return Err(WebhookError::EmptySecret(secret_file.to_owned()));
        }
        // Split after the authority: the client takes a base and paths.
        let after_scheme = url.find("://").map_or(0, |i| i + 3);
        let split = url[after_scheme..]
            .find('/')
            .map_or(url.len(), |i| after_scheme + i);
        Ok(WebhookClient {
            path: url[split..].to_owned(),
            secret,
            client: ApiClient::new(&url[..split], ca_file, TIMEOUT)?,
        })
    }

    /// Posts one push event; returns kas's status and answer.
    pub fn post(&self, event: &serde_json::Value) -> Result<(u16, String), WebhookError> {
        Ok(self.client.post_json(
            &self.path,
            &[
                ("X-Gitlab-Token", &self.secret),
                ("X-Gitlab-Event", "Push Hook"),
            ],
            event,
        )?)
    }
}

/// What a hook prints for kas's answer to one ref.
pub fn describe(project: &str, update: &RefUpdate, status: u16, body: &str) -> String {
    let short = update.after.get(..12).unwrap_or(&update.after);
    match status {
        202 => format!(
            "kas: {project} {} → {short}: kas is reading it now",
            update.git_ref
        ),
        404 => format!(
            "kas: {project} {} → {short}: no agent polls this repository ({})",
            update.git_ref,
            body.trim()
        ),
        _ => format!(
            "kas: {project} {} → {short}: webhook answered {status} {}",
            update.git_ref,
            body.trim()
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hook_input_is_parsed_and_bad_lines_skipped() {
        let input = b"0000 1111 refs/heads/main\nnonsense\n\n2222 3333 refs/tags/v1 extra\n4444 5555 refs/heads/x\n";
        let u = parse_updates(&input[..]).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].git_ref, "refs/heads/main");
        assert_eq!(u[1].after, "5555");
        let e = push_event("config", &u[0]);
        assert_eq!(e["project"]["path_with_namespace"], "config");
        assert_eq!(e["ref"], "refs/heads/main");
        assert_eq!(e["after"], "1111");
    }
}
