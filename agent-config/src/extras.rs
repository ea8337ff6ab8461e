//! The sections agentk does not act on yet — `container_scanning`, `remote_development`, `flux` —
//! typed so that their keys are checked like the rest (a typo is an error, not silently ignored).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, Fields};
use crate::duration;
use crate::error::ErrorKind;
use crate::yaml::Node;

/// `container_scanning:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerScanning {
    /// A five-field cron expression.
    pub cadence: Option<String>,
    /// Which namespaces/resources to scan.
    pub vulnerability_report: Option<VulnerabilityReport>,
    /// The scanner pod's resources.
    pub resource_requirements: Option<ResourceRequirements>,
    /// Scanner timeout.
    #[serde(with = "duration::serde_opt_secs", default)]
    pub scanner_timeout: Option<Duration>,
    /// Largest report, in bytes.
    pub report_max_size: Option<i64>,
}

/// `container_scanning.vulnerability_report`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VulnerabilityReport {
    /// Namespaces to scan (empty: all).
    pub namespaces: Vec<String>,
    /// Filters.
    pub filters: Vec<ScanFilter>,
}

/// `vulnerability_report.filters[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScanFilter {
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// Resource names.
    pub resources: Vec<String>,
    /// Container names.
    pub containers: Vec<String>,
    /// Kinds.
    pub kinds: Vec<String>,
}

/// Kubernetes-style `requests`/`limits`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// Requests.
    pub requests: Option<Resources>,
    /// Limits.
    pub limits: Option<Resources>,
}

/// CPU and memory quantities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU (`500m`).
    pub cpu: Option<String>,
    /// Memory (`512Mi`).
    pub memory: Option<String>,
}

/// `remote_development:` (workspaces; acted on by GitLab's Rails, kept here for validation and display).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RemoteDevelopment {
    /// Enabled.
    pub enabled: bool,
    /// DNS zone of the workspaces.
    pub dns_zone: Option<String>,
    /// `gitlab_workspaces_proxy`.
    pub gitlab_workspaces_proxy: Option<WorkspacesProxy>,
    /// `network_policy`.
    pub network_policy: Option<NetworkPolicy>,
    /// Default per-container resources.
    pub default_resources_per_workspace_container: Option<ResourceRequirements>,
    /// Maximum per-workspace resources.
    pub max_resources_per_workspace: Option<ResourceRequirements>,
    /// Maximum workspaces (-1: unlimited).
    pub workspaces_quota: Option<i64>,
    /// Maximum workspaces per user (-1: unlimited).
    pub workspaces_per_user_quota: Option<i64>,
    /// Use Kubernetes user namespaces.
    pub use_kubernetes_user_namespaces: Option<bool>,
    /// Default RuntimeClass.
    pub default_runtime_class: Option<String>,
    /// Allow privilege escalation.
    pub allow_privilege_escalation: Option<bool>,
    /// Image pull secrets.
    pub image_pull_secrets: Vec<SecretRef>,
    /// Annotations for workspace objects.
    pub annotations: BTreeMap<String, String>,
    /// Labels for workspace objects.
    pub labels: BTreeMap<String, String>,
    /// Hours a workspace may run before it is stopped.
    pub max_active_hours_before_stop: Option<i64>,
    /// Hours a stopped workspace is kept.
    pub max_stopped_hours_before_termination: Option<i64>,
    /// One namespace for all workspaces.
    pub shared_namespace: Option<String>,
    /// Partial reconcile interval.
    #[serde(with = "duration::serde_opt_secs", default)]
    pub partial_sync_interval: Option<Duration>,
    /// Full reconcile interval.
    #[serde(with = "duration::serde_opt_secs", default)]
    pub full_sync_interval: Option<Duration>,
}

/// `remote_development.gitlab_workspaces_proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WorkspacesProxy {
    /// Namespace of the proxy.
    pub namespace: Option<String>,
    /// HTTP access enabled.
    pub http_enabled: Option<bool>,
    /// SSH access enabled.
    pub ssh_enabled: Option<bool>,
}

/// `remote_development.network_policy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Enabled.
    pub enabled: Option<bool>,
    /// Egress rules.
    pub egress: Vec<EgressRule>,
}

/// `network_policy.egress[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EgressRule {
    /// Allowed CIDR.
    pub allow: String,
    /// Excepted CIDRs.
    pub except: Vec<String>,
}

/// `image_pull_secrets[]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Secret namespace.
    pub namespace: String,
}

/// `flux:`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Flux {
    /// Where agentk calls Flux's webhook receiver.
    pub webhook_receiver_url: Option<String>,
}

fn strings(d: &mut Decoder, f: &Fields<'_>, key: &str) -> Vec<String> {
    f.get(key).map_or_else(Vec::new, |n| {
        d.list(n, &f.path_of(key), |d, item, path| d.string(item, path))
    })
}

fn string(d: &mut Decoder, f: &Fields<'_>, key: &str) -> Option<String> {
    f.get(key).and_then(|n| d.string(n, &f.path_of(key)))
}

fn boolean(d: &mut Decoder, f: &Fields<'_>, key: &str) -> Option<bool> {
    f.get(key).and_then(|n| d.boolean(n, &f.path_of(key)))
}

fn duration_of(d: &mut Decoder, f: &Fields<'_>, key: &str) -> Option<Duration> {
    f.get(key)
        .and_then(|n| d.checked(n, &f.path_of(key), duration::parse))
}

fn integer_at_least(d: &mut Decoder, f: &Fields<'_>, key: &str, min: i64) -> Option<i64> {
    let n = f.get(key)?;
    let v = d.integer(n, &f.path_of(key))?;
    if v < min {
        d.error(
            ErrorKind::InvalidValue,
            &f.path_of(key),
            n.pos,
            format!("{v} is too small; the least allowed value is {min}"),
        );
        return None;
    }
    Some(v)
}

fn string_map(d: &mut Decoder, f: &Fields<'_>, key: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(n) = f.get(key) else {
        return out;
    };
    let path = f.path_of(key);
    match n.as_map() {
        Some(entries) => {
            for e in entries {
                if let Some(v) = d.string(&e.value, &crate::decode::join(&path, &e.key)) {
                    out.insert(e.key.clone(), v);
                }
            }
        }
        None => d.error(
            ErrorKind::InvalidType,
            &path,
            n.pos,
            format!("expected a mapping of strings, found {}", n.type_name()),
        ),
    }
    out
}

fn resources(d: &mut Decoder, f: &Fields<'_>, key: &str) -> Option<ResourceRequirements> {
    let n = f.get(key)?;
    let r = d.fields(n, &f.path_of(key), &["requests", "limits"])?;
    let mut out = ResourceRequirements::default();
    for (k, slot) in [("requests", &mut out.requests), ("limits", &mut out.limits)] {
        if let Some(n) = r.get(k)
            && let Some(q) = d.fields(n, &r.path_of(k), &["cpu", "memory"])
        {
            *slot = Some(Resources {
                cpu: string(d, &q, "cpu"),
                memory: string(d, &q, "memory"),
            });
        }
    }
    Some(out)
}

pub(crate) fn decode_container_scanning(
    d: &mut Decoder,
    node: &Node,
    path: &str,
) -> Option<ContainerScanning> {
    let keys = &[
        "cadence",
        "vulnerability_report",
        "resource_requirements",
        "scanner_timeout",
        "report_max_size",
    ];
    let f = d.fields(node, path, keys)?;
    let cadence = f.get("cadence").and_then(|n| {
        d.checked(n, &f.path_of("cadence"), |s| {
            if s.split_whitespace().count() == 5 {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "`{s}` is not a cron expression: use five fields, like `0 0 * * *`"
                ))
            }
        })
    });
    let vulnerability_report = f.get("vulnerability_report").and_then(|n| {
        let v = d.fields(
            n,
            &f.path_of("vulnerability_report"),
            &["namespaces", "filters"],
        )?;
        let namespaces = strings(d, &v, "namespaces");
        let filters = v.get("filters").map_or_else(Vec::new, |n| {
            d.list(n, &v.path_of("filters"), |d, item, path| {
                let g = d.fields(
                    item,
                    path,
                    &["namespaces", "resources", "containers", "kinds"],
                )?;
                Some(ScanFilter {
                    namespaces: strings(d, &g, "namespaces"),
                    resources: strings(d, &g, "resources"),
                    containers: strings(d, &g, "containers"),
                    kinds: strings(d, &g, "kinds"),
                })
            })
        });
        Some(VulnerabilityReport {
            namespaces,
            filters,
        })
    });
    Some(ContainerScanning {
        cadence,
        vulnerability_report,
        resource_requirements: resources(d, &f, "resource_requirements"),
        scanner_timeout: duration_of(d, &f, "scanner_timeout"),
        report_max_size: integer_at_least(d, &f, "report_max_size", 1),
    })
}

pub(crate) fn decode_remote_development(
    d: &mut Decoder,
    node: &Node,
    path: &str,
) -> Option<RemoteDevelopment> {
    let keys = &[
        "enabled",
        "dns_zone",
        "gitlab_workspaces_proxy",
        "network_policy",
        "default_resources_per_workspace_container",
        "max_resources_per_workspace",
        "workspaces_quota",
        "workspaces_per_user_quota",
        "use_kubernetes_user_namespaces",
        "default_runtime_class",
        "allow_privilege_escalation",
        "image_pull_secrets",
        "annotations",
        "labels",
        "max_active_hours_before_stop",
        "max_stopped_hours_before_termination",
        "shared_namespace",
        "partial_sync_interval",
        "full_sync_interval",
    ];
    let f = d.fields(node, path, keys)?;
    let gitlab_workspaces_proxy = f.get("gitlab_workspaces_proxy").and_then(|n| {
        let p = d.fields(
            n,
            &f.path_of("gitlab_workspaces_proxy"),
            &["namespace", "http_enabled", "ssh_enabled"],
        )?;
        Some(WorkspacesProxy {
            namespace: string(d, &p, "namespace"),
            http_enabled: boolean(d, &p, "http_enabled"),
            ssh_enabled: boolean(d, &p, "ssh_enabled"),
        })
    });
    let network_policy = f.get("network_policy").and_then(|n| {
        let p = d.fields(n, &f.path_of("network_policy"), &["enabled", "egress"])?;
        let egress = p.get("egress").map_or_else(Vec::new, |n| {
            d.list(n, &p.path_of("egress"), |d, item, path| {
                let e = d.fields(item, path, &["allow", "except"])?;
                Some(EgressRule {
                    allow: string(d, &e, "allow").unwrap_or_default(),
                    except: strings(d, &e, "except"),
                })
            })
        });
        Some(NetworkPolicy {
            enabled: boolean(d, &p, "enabled"),
            egress,
        })
    });
    let image_pull_secrets = f.get("image_pull_secrets").map_or_else(Vec::new, |n| {
        d.list(n, &f.path_of("image_pull_secrets"), |d, item, path| {
            let s = d.fields(item, path, &["name", "namespace"])?;
            Some(SecretRef {
                name: string(d, &s, "name").unwrap_or_default(),
                namespace: string(d, &s, "namespace").unwrap_or_default(),
            })
        })
    });
    Some(RemoteDevelopment {
        enabled: boolean(d, &f, "enabled").unwrap_or(false),
        dns_zone: string(d, &f, "dns_zone"),
        gitlab_workspaces_proxy,
        network_policy,
        default_resources_per_workspace_container: resources(
            d,
            &f,
            "default_resources_per_workspace_container",
        ),
        max_resources_per_workspace: resources(d, &f, "max_resources_per_workspace"),
        workspaces_quota: integer_at_least(d, &f, "workspaces_quota", -1),
        workspaces_per_user_quota: integer_at_least(d, &f, "workspaces_per_user_quota", -1),
        use_kubernetes_user_namespaces: boolean(d, &f, "use_kubernetes_user_namespaces"),
        default_runtime_class: string(d, &f, "default_runtime_class"),
        allow_privilege_escalation: boolean(d, &f, "allow_privilege_escalation"),
        image_pull_secrets,
        annotations: string_map(d, &f, "annotations"),
        labels: string_map(d, &f, "labels"),
        max_active_hours_before_stop: integer_at_least(d, &f, "max_active_hours_before_stop", 1),
        max_stopped_hours_before_termination: integer_at_least(
            d,
            &f,
            "max_stopped_hours_before_termination",
            1,
        ),
        shared_namespace: string(d, &f, "shared_namespace"),
        partial_sync_interval: duration_of(d, &f, "partial_sync_interval"),
        full_sync_interval: duration_of(d, &f, "full_sync_interval"),
    })
}

pub(crate) fn decode_flux(d: &mut Decoder, node: &Node, path: &str) -> Option<Flux> {
    let f = d.fields(node, path, &["webhook_receiver_url"])?;
    Some(Flux {
        webhook_receiver_url: string(d, &f, "webhook_receiver_url"),
    })
}
