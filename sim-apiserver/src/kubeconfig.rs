//! kubeconfig files pointing at a running simulated API server, usable by `kubectl`, the `kube`
//! crate and agentk as they are.

use serde_json::json;

/// A kubeconfig with one cluster, user and context named `context`, pointing at `server`
/// (`http://127.0.0.1:PORT`), with a bearer token if the server requires one.
pub fn kubeconfig_yaml(server: &str, context: &str, token: Option<&str>) -> String {
    let user = match token {
        Some(t) => json!({"token": t}),
        None => json!({}),
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server}}],
        "users": [{"name": context, "user": user}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
        "current-context": context,
        "preferences": {},
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let y = kubeconfig_yaml("http://127.0.0.1:1234", "sim", Some("tok"));
        let v: serde_json::Value = serde_yaml::from_str(&y).unwrap_or_default();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert_eq!(v["current-context"], "sim");
        assert_eq!(v["users"][0]["user"]["token"], "tok");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
    }
}
