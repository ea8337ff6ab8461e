//! kubeconfig files pointing at a running simulated API server, usable by `kubectl`, the `kube`
//! crate and agentk as they are.

use serde_json::json;

/// A kubeconfig with one cluster, user and context named `context`, pointing at `server`
/// (`http://127.0.0.1:PORT`), with a bearer token if the server requires one.
pub fn kubeconfig_yaml(server: &str, context: &str, token: Option<&str>) -> String {
    kubeconfig_yaml_tls(server, context, token, None)
}

/// [`kubeconfig_yaml`] for an HTTPS server (`https://127.0.0.1:PORT`) whose certificate is
/// issued by the CA `ca_pem` (`None`: plain HTTP).
pub fn kubeconfig_yaml_tls(
    server: &str,
    context: &str,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> String {
    use base64::Engine as _;
    let user = match token {
        Some(t) => json!({"token": t}),
        None => json!({}),
    };
    let mut cluster = json!({"server": server});
    if let (Some(ca), Some(o)) = (ca_pem, cluster.as_object_mut()) {
        o.insert(
            "certificate-authority-data".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(ca)),
        );
    }
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
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
