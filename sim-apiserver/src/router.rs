//! URL routing: maps a request path to what it names (discovery document, collection, object or
//! subresource), following the Kubernetes REST layout:
//!
//! ```text
//! /api/v1/{plural}                                     cluster-scoped or all-namespaces collection
//! /api/v1/{plural}/{name}[/{subresource}]              cluster-scoped object
//! /api/v1/namespaces/{ns}/{plural}[/{name}[/{sub}]]    namespaced collection / object
//! /apis/{group}/{version}/...                          the same for named groups
//! /api/v1/watch/...                                    deprecated watch paths
//! ```

use percent_encoding::percent_decode_str;

use super::resource::{Registry, Resource};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/version`
    Version,
    /// `/healthz`, `/livez`, `/readyz`
    Health,
    /// `/api`
    CoreVersions,
    /// `/apis`
    GroupList,
    /// `/apis/{group}`
    Group(String),
    /// `/api/v1`, `/apis/{group}/{version}`
    ResourceList {
        /// API group ("" for core).
        group: String,
        /// Version.
        version: String,
    },
    /// A collection of objects.
    Collection {
        /// Resource type.
        resource: Resource,
        /// Namespace (`None`: cluster-scoped or all namespaces).
        namespace: Option<String>,
        /// Reached through a deprecated `/watch/` path.
        watch_path: bool,
    },
    /// One object, or one of its subresources.
    Object {
        /// Resource type.
        resource: Resource,
        /// Namespace (`None` for cluster-scoped).
        namespace: Option<String>,
        /// Object name.
        name: String,
        /// Subresource (`status`, `log`, ...).
        subresource: Option<String>,
        /// Reached through a deprecated `/watch/` path.
        watch_path: bool,
    },
    /// `/openapi/v2`
    OpenApiV2,
    /// `/openapi/v3`
    OpenApiIndex,
    /// `/openapi/v3/{api/v1 | apis/G/V}`
    OpenApiGroupVersion(String),
    /// Nothing served here.
    NotFound,
}

/// Routes `path` (without query string) to what `registry` serves there.
pub fn route(path: &str, registry: &Registry) -> Route {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["api"] => Route::CoreVersions,
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiIndex,
        ["openapi", "v3", rest @ ..] => Route::OpenApiGroupVersion(rest.join("/")),
        ["apis"] => Route::GroupList,
        ["apis", g] => Route::Group((*g).to_string()),
        ["api", v] => Route::ResourceList {
            group: String::new(),
            version: (*v).to_string(),
        },
        ["apis", g, v] => Route::ResourceList {
            group: (*g).to_string(),
            version: (*v).to_string(),
        },
        ["api", v, rest @ ..] => resource_route(registry, "", v, rest),
        ["apis", g, v, rest @ ..] => resource_route(registry, g, v, rest),
        _ => Route::NotFound,
    }
}

fn resource_route(registry: &Registry, group: &str, version: &str, rest: &[&str]) -> Route {
    let (watch_path, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    // /namespaces/{ns}/{plural}... addresses namespaced resources.
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(r) = registry.by_plural(group, version, plural)
    {
        if !r.namespaced {
            return Route::NotFound;
        }
        let namespace = Some((*ns).to_string());
        return match tail {
            [] => Route::Collection {
                resource: r,
                namespace,
                watch_path,
            },
            [name] => Route::Object {
                resource: r,
                namespace,
                name: (*name).to_string(),
                subresource: None,
                watch_path,
            },
            [name, sub] => Route::Object {
                resource: r,
                namespace,
                name: (*name).to_string(),
                subresource: Some((*sub).to_string()),
                watch_path,
            },
            _ => Route::NotFound,
        };
    }
    let Some((plural, tail)) = rest.split_first() else {
        return Route::NotFound;
    };
    let Some(r) = registry.by_plural(group, version, plural) else {
        return Route::NotFound;
    };
    match tail {
        [] => Route::Collection {
            resource: r,
            namespace: None,
            watch_path,
        },
        // Namespaced objects are only addressable inside their namespace.
        _ if r.namespaced => Route::NotFound,
        [name] => Route::Object {
            resource: r,
            namespace: None,
            name: (*name).to_string(),
            subresource: None,
            watch_path,
        },
        [name, sub] => Route::Object {
            resource: r,
            namespace: None,
            name: (*name).to_string(),
            subresource: Some((*sub).to_string()),
            watch_path,
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::known;

    fn route(path: &str) -> Route {
        super::route(path, &Registry::builtin())
    }

    #[test]
    fn routes() {
        assert_eq!(route("/version"), Route::Version);
        assert_eq!(route("/api"), Route::CoreVersions);
        assert_eq!(route("/apis/apps"), Route::Group("apps".into()));
        assert_eq!(
            route("/api/v1"),
            Route::ResourceList {
                group: String::new(),
                version: "v1".into()
            }
        );
        assert_eq!(
            route("/api/v1/pods"),
            Route::Collection {
                resource: known::pod(),
                namespace: None,
                watch_path: false
            }
        );
        assert_eq!(
            route("/api/v1/namespaces/default/pods/web-1/log"),
            Route::Object {
                resource: known::pod(),
                namespace: Some("default".into()),
                name: "web-1".into(),
                subresource: Some("log".into()),
                watch_path: false
            }
        );
        assert_eq!(
            route("/api/v1/namespaces/kube-system"),
            Route::Object {
                resource: known::namespace(),
                namespace: None,
                name: "kube-system".into(),
                subresource: None,
                watch_path: false
            }
        );
        assert_eq!(
            route("/api/v1/namespaces/kube-system/status"),
            Route::Object {
                resource: known::namespace(),
                namespace: None,
                name: "kube-system".into(),
                subresource: Some("status".into()),
                watch_path: false
            }
        );
        assert_eq!(
            route("/apis/apps/v1/watch/namespaces/default/deployments"),
            Route::Collection {
                resource: known::deployment(),
                namespace: Some("default".into()),
                watch_path: true
            }
        );
        assert_eq!(route("/api/v1/pods/x"), Route::NotFound);
        assert_eq!(route("/api/v1/namespaces/default/nodes"), Route::NotFound);
        assert_eq!(route("/api/v1/widgets"), Route::NotFound);
        assert_eq!(route("/openapi/v2"), Route::OpenApiV2);
        assert_eq!(route("/openapi/v1"), Route::NotFound);
        assert_eq!(route("/openapi/v3"), Route::OpenApiIndex);
        assert_eq!(
            route("/openapi/v3/apis/apps/v1"),
            Route::OpenApiGroupVersion("apis/apps/v1".into())
        );
        assert_eq!(
            route("/api/v1/nodes/n%31"),
            Route::Object {
                resource: known::node(),
                namespace: None,
                name: "n1".into(),
                subresource: None,
                watch_path: false
            }
        );
    }
}
