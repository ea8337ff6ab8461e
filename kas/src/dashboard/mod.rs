//! The dashboard: one page served by kas at `/` — every agent with its status and views (nodes
//! ready/not ready, pods by phase, deployments available/desired), its configuration (commit, status,
//! first error with its line) and GitOps status (per manifest project: desired and synced commit,
//! phase, objects applied/unchanged/failed/pruned, last error), and a live event feed, updated in
//! place from the Server-Sent Events of `/api/v1/events` (a `config` or `gitops` event re-reads that
//! agent's `/config` and `/gitops`). Strings from the API, Git content among them, are set as text only.
//!
//! Plain HTML, CSS and JavaScript with no build step and no dependencies, embedded in the binary
//! (`include_str!`): `/` (the page), `/ui/dashboard.js`, `/ui/dashboard.css`. The page reads only the
//! public JSON API ([`crate::api`]); a `Content-Security-Policy` restricts it to kas's own origin.

use http::{HeaderValue, Response, StatusCode, header};

use crate::api::response::{self, ResponseBody};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// The page's paths.
pub const PATHS: &[&str] = &["/", "/index.html", "/ui/dashboard.js", "/ui/dashboard.css"];

/// The asset at `path`, if it is one of [`PATHS`].
pub fn asset(path: &str) -> Option<Response<ResponseBody>> {
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/ui/dashboard.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/ui/dashboard.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    let mut resp = response::with_body(StatusCode::OK, content_type, body);
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_page_and_its_assets() {
        for path in PATHS {
            let resp = asset(path);
            assert!(resp.is_some(), "{path}");
        }
        assert!(asset("/ui/other.js").is_none());
        let page = asset("/").map(|r| r.headers()[header::CONTENT_TYPE].clone());
        assert_eq!(
            page,
            Some(HeaderValue::from_static("text/html; charset=utf-8"))
        );
        // The page loads what is served.
        assert!(INDEX.contains("/ui/dashboard.js") && INDEX.contains("/ui/dashboard.css"));
        assert!(SCRIPT.contains("/api/v1/events"));
        assert!(SCRIPT.contains("/config") && SCRIPT.contains("/gitops"));
        // Data from the API (Git content among it) is only ever set as text.
        for markup in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(markup), "{markup}");
        }
    }
}
