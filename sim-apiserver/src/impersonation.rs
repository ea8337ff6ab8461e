//! Kubernetes user impersonation: `Impersonate-User`, `Impersonate-Group` (repeatable),
//! `Impersonate-Uid` and `Impersonate-Extra-<key>` (repeatable) make the request act as another
//! identity, if the authenticated caller may `impersonate` each part of it:
//!
//! | header | checked as (verb `impersonate`) |
//! |---|---|
//! | `Impersonate-User: jane` | `users` `jane` in group `""` |
//! | `Impersonate-User: system:serviceaccount:NS:SA` | `serviceaccounts` `SA` in namespace `NS` |
//! | `Impersonate-Group: g` | `groups` `g` in group `""` |
//! | `Impersonate-Uid: u` | `uids` `u` in group `authentication.k8s.io` |
//! | `Impersonate-Extra-scopes: v` | `userextras/scopes` `v` in group `authentication.k8s.io` |
//!
//! A refused part is the 403 `Status` Kubernetes answers (`users "jane" is forbidden: User
//! "bob" cannot impersonate resource "users" in API group "" at the cluster scope`). Groups,
//! uid or extras without a user are a 400 (Kubernetes answers 500 there; it is the client's
//! fault). The impersonated identity gets `system:authenticated` (and a service account its
//! `system:serviceaccounts` groups), as in Kubernetes; nothing of the caller's identity is kept.

use std::collections::BTreeMap;

use http::HeaderMap;

use super::identity::{self, UserInfo};
use super::rbac::{self, Policy};
use super::request_info::RequestInfo;
use super::status::ApiError;

/// `Impersonate-User`.
pub const USER: &str = "impersonate-user";
/// `Impersonate-Group`.
pub const GROUP: &str = "impersonate-group";
/// `Impersonate-Uid`.
pub const UID: &str = "impersonate-uid";
/// The prefix of `Impersonate-Extra-<key>`.
pub const EXTRA_PREFIX: &str = "impersonate-extra-";

/// The identity a request asks to act as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Impersonation {
    /// `Impersonate-User`.
    pub user: String,
    /// `Impersonate-Group` values.
    pub groups: Vec<String>,
    /// `Impersonate-Uid`.
    pub uid: Option<String>,
    /// `Impersonate-Extra-<key>` values (keys lower case, percent-decoded).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Impersonation {
    /// The impersonation a request asks for (`None` if it has no `Impersonate-*` header).
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let text = |v: &http::HeaderValue| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::bad_request("an Impersonate-* header value is not valid text")
            })
        };
        let mut imp = Self::default();
        let mut any = false;
        for (name, value) in headers {
            let name = name.as_str();
            if name == USER {
                imp.user = text(value)?;
            } else if name == GROUP {
                imp.groups.push(text(value)?);
            } else if name == UID {
                imp.uid = Some(text(value)?);
            } else if let Some(key) = name.strip_prefix(EXTRA_PREFIX) {
                let key = percent_encoding::percent_decode_str(key)
                    .decode_utf8_lossy()
                    .to_ascii_lowercase();
                imp.extra.entry(key).or_default().push(text(value)?);
            } else {
                continue;
            }
            any = true;
        }
        if !any {
            return Ok(None);
        }
        if imp.user.is_empty() {
            return Err(ApiError::bad_request(
                "impersonating groups, a uid or extra attributes requires impersonating a user (Impersonate-User)",
            ));
        }
        Ok(Some(imp))
    }

    /// The checks this impersonation needs, each a request for verb `impersonate`.
    pub fn checks(&self) -> Vec<RequestInfo> {
        let check = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| RequestInfo {
            resource_request: true,
            verb: "impersonate".to_string(),
            api_group: group.to_string(),
            api_version: "v1".to_string(),
            namespace: ns.to_string(),
            resource: resource.to_string(),
            subresource: sub.to_string(),
            name: name.to_string(),
            path: String::new(),
        };
        let mut out = vec![match identity::service_account_of(&self.user) {
            Some((ns, sa)) => check("", "serviceaccounts", "", ns, sa),
            None => check("", "users", "", "", &self.user),
        }];
        out.extend(self.groups.iter().map(|g| check("", "groups", "", "", g)));
        if let Some(uid) = &self.uid {
            out.push(check("authentication.k8s.io", "uids", "", "", uid));
        }
        for (k, vs) in &self.extra {
            for v in vs {
                out.push(check("authentication.k8s.io", "userextras", k, "", v));
            }
        }
        out
    }

    /// The identity acted as.
    pub fn identity(&self) -> UserInfo {
        let mut groups = self.groups.clone();
        if let Some((ns, _)) = identity::service_account_of(&self.user) {
            for g in [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
            ] {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        let info = UserInfo {
            username: self.user.clone(),
            uid: self.uid.clone().unwrap_or_default(),
            groups,
            extra: self.extra.clone(),
        };
        if self.user == "system:anonymous" {
            info
        } else {
            info.authenticated()
        }
    }

    /// The identity `caller` acts as, if `policy` lets it impersonate every part; otherwise the
    /// 403 of the first refused part.
    pub fn authorize(&self, caller: &UserInfo, policy: &Policy) -> Result<UserInfo, ApiError> {
        for c in self.checks() {
            if !policy.authorize(caller, &c).allowed() {
                tracing::debug!(caller = %caller.username, resource = %c.resource, name = %c.name, "impersonation refused");
                return Err(rbac::forbidden(caller, &c));
            }
        }
        Ok(self.identity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn parses_headers() {
        assert_eq!(Impersonation::from_headers(&HeaderMap::new()), Ok(None));
        let imp = Impersonation::from_headers(&headers(&[
            ("Impersonate-User", "jane"),
            ("Impersonate-Group", "a"),
            ("Impersonate-Group", "b"),
            ("Impersonate-Uid", "42"),
            ("Impersonate-Extra-Agent.gitlab.com%2Fid", "7"),
        ]))
        .ok()
        .flatten()
        .unwrap_or_default();
        assert_eq!(imp.user, "jane");
        assert_eq!(imp.groups, vec!["a", "b"]);
        assert_eq!(imp.extra["agent.gitlab.com/id"], vec!["7"]);
        let id = imp.identity();
        assert_eq!(id.groups, vec!["a", "b", "system:authenticated"]);
        assert_eq!(id.uid, "42");
        assert_eq!(imp.checks().len(), 5);
        assert_eq!(imp.checks()[4].subresource, "agent.gitlab.com/id");
        let e = Impersonation::from_headers(&headers(&[("Impersonate-Group", "a")]));
        assert_eq!(e.map_err(|e| e.code.as_u16()), Err(400));
    }

    #[test]
    fn checks_each_part() {
        let policy = Policy::new(&[
            json!({"kind": "ClusterRole", "metadata": {"name": "imp"}, "rules": [
                {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["jane"]},
                {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["groups"]},
            ]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "imp"},
                "roleRef": {"kind": "ClusterRole", "name": "imp"},
                "subjects": [{"kind": "User", "name": "bob"}]}),
        ]);
        let bob = UserInfo::new("bob", &[]);
        let as_jane = Impersonation {
            user: "jane".into(),
            groups: vec!["dev".into()],
            ..Impersonation::default()
        };
        assert_eq!(
            as_jane.authorize(&bob, &policy).map(|u| u.username),
            Ok("jane".to_string())
        );
        let as_admin = Impersonation {
            user: "system:admin".into(),
            ..Impersonation::default()
        };
        let e = as_admin
            .authorize(&bob, &policy)
            .err()
            .unwrap_or_else(|| ApiError::bad_request(""));
        assert_eq!(e.code.as_u16(), 403);
        assert_eq!(
            e.message,
            "users \"system:admin\" is forbidden: User \"bob\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        let with_uid = Impersonation {
            uid: Some("1".into()),
            ..as_jane
        };
        let e = with_uid
            .authorize(&bob, &policy)
            .err()
            .unwrap_or_else(|| ApiError::bad_request(""));
        assert_eq!(
            e.message,
            "uids.authentication.k8s.io \"1\" is forbidden: User \"bob\" cannot impersonate resource \"uids\" in API group \"authentication.k8s.io\" at the cluster scope"
        );
        let sa = Impersonation {
            user: "system:serviceaccount:ns:sa".into(),
            ..Impersonation::default()
        };
        let e = sa
            .authorize(&bob, &policy)
            .err()
            .unwrap_or_else(|| ApiError::bad_request(""));
        assert!(
            e.message.starts_with("serviceaccounts \"sa\" is forbidden"),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with("in the namespace \"ns\""),
            "{}",
            e.message
        );
        // The admin may impersonate anyone.
        assert!(sa.authorize(&UserInfo::admin(), &policy).is_ok());
    }
}
