//! `GET /api/v1/agents/{id}/config` and `POST /api/v1/webhooks/git` ([`crate::agent_config`]).
//!
//! ```json
//! {"agent_id": 1, "status": "error", "repository": "git://git.example.com/group/config.git",
//!  "commit": "9fceb02…", "fetched_at": "2026-12-03T10:40:18Z",
//!  "applied_commit": "1b2c3d4…", "applied_at": "2026-12-03T10:35:02Z",
//!  "errors": [{"kind": "syntax", "commit": "9fceb02…", "file": ".gitlab/agents/agent-1/config.yaml",
//!              "path": "", "line": 3, "column": 5, "message": "…"}],
//!  "config": {"observability": {"logging": {"level": "info", …}}, "gitops": {"manifest_projects": []}},
//!  "fingerprint": "3a7b…",
//!  "delivery": {"streams": 1, "commit": "1b2c3d4…", "up_to_date": true,
//!               "delivered_at": "2026-12-03T10:35:02Z"}}
//! ```
//!
//! `status`: `ok`, `error` (the last commit is broken or the last fetch failed: `config` is the last
//! good one, from `applied_commit`), `pending` (not fetched yet), `not_configured` (no config
//! project). Fetch errors have `kind: "fetch"` with `code` and `fault`. 404 for an unknown agent.
//! `fingerprint` is the content fingerprint of `config` (with the access grants) as sent on the
//! `config` stream; `delivery` is `null` while the agent has no `config` stream open, otherwise what
//! kas knows it has (`commit`: the commit it named or was last sent; `up_to_date`: it has the last
//! good configuration).
//!
//! The webhook takes GitLab's push event: `X-Gitlab-Token` must equal the shared secret
//! (`agent_configuration.webhook_secret_file`, compared in constant time; 401 otherwise, the value is
//! never echoed or logged), the JSON body names `project.path_with_namespace` or
//! `project.git_http_url`; every config project that matches is polled at once (202). 404 when no
//! agent uses that repository or no secret is configured; 400 for a body that is not a push event;
//! 413 beyond [`MAX_WEBHOOK_BODY`].

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::json;

use crate::agent_config::WebhookOutcome;
use crate::state::KasState;

use super::response::{self, ApiError, ResponseBody};

/// The largest webhook body read (GitLab's push events list at most 20 commits).
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// One agent's configuration status.
pub fn get(state: &KasState, agent_id: u64) -> Result<Response<ResponseBody>, ApiError> {
    let Some(configs) = &state.agent_config else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "agent configuration is not enabled",
        ));
    };
    if !configs.has_source(agent_id) && super::agents::get(state, agent_id).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("agent {agent_id} does not exist"),
        ));
    }
    Ok(response::json(
        StatusCode::OK,
        &configs.agent_json(agent_id),
    ))
}

/// The push webhook.
pub async fn webhook(
    state: &KasState,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    if req.method() != http::Method::POST {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed here; use POST", req.method()),
        ));
    }
    let Some(configs) = state.agent_config.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no webhook configured",
        ));
    };
    let token = req
        .headers()
        .get("x-gitlab-token")
        .map(|v| v.as_bytes().to_vec());
    let body = http_body_util::Limited::new(req.into_body(), MAX_WEBHOOK_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body exceeds {MAX_WEBHOOK_BODY} bytes"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "cannot read the body")
            }
        })?
        .to_bytes();
    let mut outcome = configs.webhook(token.as_deref(), &body);
    // The same push may name a manifest project (once the secret is checked).
    if matches!(
        outcome,
        WebhookOutcome::NoMatch | WebhookOutcome::Triggered(_)
    ) && let Some(n) = super::gitops::trigger(state, &body)
        && n > 0
    {
        outcome = match outcome {
            WebhookOutcome::Triggered(m) => WebhookOutcome::Triggered(m + n),
            _ => WebhookOutcome::Triggered(n),
        };
    }
    match outcome {
        WebhookOutcome::Disabled => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no webhook secret configured",
        )),
        WebhookOutcome::BadSecret => {
            state.metrics.user_auth_failure("webhook_secret");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong X-Gitlab-Token",
            ))
        }
        WebhookOutcome::BadRequest(message) => Err(ApiError::new(StatusCode::BAD_REQUEST, message)),
        WebhookOutcome::NoMatch => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no agent's config project is this repository",
        )),
        WebhookOutcome::Triggered(n) => Ok(response::json(
            StatusCode::ACCEPTED,
            &json!({"status": "polling", "repositories": n}),
        )),
    }
}
