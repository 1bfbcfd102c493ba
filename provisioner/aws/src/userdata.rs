//! User data per AMI family: how a new instance joins the cluster with the NodePool's labels and taints and
//! the NodeClass's kubelet settings. AL2023 gets nodeadm's `NodeConfig` as a MIME part after the user's own
//! parts; Bottlerocket gets TOML settings merged over the user's; Custom gets the user's data unchanged.

use std::collections::BTreeMap;

use base64::Engine;
use cartwright_binpack::Taint;
use serde_json::{Value, json};

use crate::nodeclass::{AmiFamily, ClusterInfo};

/// What a node must join with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeBootstrap {
    pub labels: BTreeMap<String, String>,
    /// Taints registered with the node (the NodePool's taints and start-up taints).
    pub taints: Vec<Taint>,
    /// The NodeClass's `kubelet` (KubeletConfiguration fields).
    pub kubelet: Option<Value>,
    /// The NodeClass's `userData`.
    pub user_data: Option<String>,
}

const BOUNDARY: &str = "//";

fn taint_flag(t: &Taint) -> String {
    if t.value.is_empty() {
        format!("{}:{}", t.key, t.effect)
    } else {
        format!("{}={}:{}", t.key, t.value, t.effect)
    }
}

/// The MIME parts of user data: as they are when it is MIME multipart, else one part.
fn user_parts(user: &str) -> Result<Vec<String>, String> {
    let trimmed = user.trim_start();
    if !trimmed.starts_with("MIME-Version") {
        let content_type = if trimmed.starts_with("apiVersion: node.eks.aws") {
            "application/node.eks.aws"
        } else if trimmed.starts_with("#cloud-config") {
            "text/cloud-config"
        } else {
            "text/x-shellscript; charset=\"us-ascii\""
        };
        return Ok(vec![format!("Content-Type: {content_type}\n\n{}", user.trim_end())]);
    }
    let boundary = trimmed
        .lines()
        .find_map(|l| l.split_once("boundary=").map(|(_, b)| b.trim().trim_matches('"').to_owned()))
        .ok_or("userData: MIME user data without a boundary")?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    for chunk in trimmed.split(&delimiter).skip(1) {
        if chunk.starts_with("--") {
            break;
        }
        let part = chunk.trim_matches(|c| c == '\r' || c == '\n');
        if !part.is_empty() {
            parts.push(part.to_owned());
        }
    }
    Ok(parts)
}

fn al2023(cluster: &ClusterInfo, node: &NodeBootstrap) -> Result<String, String> {
    let mut flags = Vec::new();
    if !node.labels.is_empty() {
        let labels: Vec<String> = node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        flags.push(format!("--node-labels={}", labels.join(",")));
    }
    if !node.taints.is_empty() {
        let taints: Vec<String> = node.taints.iter().map(taint_flag).collect();
        flags.push(format!("--register-with-taints={}", taints.join(",")));
    }
    let mut kubelet = json!({"flags": flags});
    if let Some(config) = &node.kubelet {
        kubelet["config"] = config.clone();
    }
    let mut cluster_spec = json!({
        "name": cluster.name,
        "apiServerEndpoint": cluster.endpoint,
        "certificateAuthority": cluster.ca_bundle,
    });
    if let Some(cidr) = &cluster.service_cidr {
        cluster_spec["cidr"] = json!(cidr);
    }
    let config = json!({
        "apiVersion": "node.eks.aws/v1alpha1",
        "kind": "NodeConfig",
        "spec": {"cluster": cluster_spec, "kubelet": kubelet},
    });
    let yaml = yaml_serde::to_string(&config).map_err(|e| format!("NodeConfig: {e}"))?;
    let mut parts = match &node.user_data {
        Some(user) => user_parts(user)?,
        None => Vec::new(),
    };
    parts.push(format!("Content-Type: application/node.eks.aws\n\n{}", yaml.trim_end()));
    let mut out = format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n\n");
    for part in parts {
        out.push_str(&format!("--{BOUNDARY}\n{part}\n\n"));
    }
    out.push_str(&format!("--{BOUNDARY}--\n"));
    Ok(out)
}

/// KubeletConfiguration fields Bottlerocket names differently.
fn bottlerocket_kubelet(config: &Value) -> toml::Table {
    let mut out = toml::Table::new();
    let Some(fields) = config.as_object() else { return out };
    for (field, value) in fields {
        let key = match field.as_str() {
            "maxPods" => "max-pods",
            "podsPerCore" => "pods-per-core",
            "kubeReserved" => "kube-reserved",
            "systemReserved" => "system-reserved",
            "evictionHard" => "eviction-hard",
            "evictionSoft" => "eviction-soft",
            "evictionSoftGracePeriod" => "eviction-soft-grace-period",
            "evictionMaxPodGracePeriod" => "eviction-max-pod-grace-period",
            "imageGCHighThresholdPercent" => "image-gc-high-threshold-percent",
            "imageGCLowThresholdPercent" => "image-gc-low-threshold-percent",
            "cpuCFSQuota" => "cpu-cfs-quota-enforced",
            "clusterDNS" => {
                if let Some(ip) = value.as_array().and_then(|a| a.first()).and_then(Value::as_str) {
                    out.insert("cluster-dns-ip".into(), toml::Value::String(ip.to_owned()));
                }
                continue;
            }
            _ => continue,
        };
        if let Ok(v) = toml::Value::try_from(value) {
            out.insert(key.into(), v);
        }
    }
    out
}

fn bottlerocket(cluster: &ClusterInfo, node: &NodeBootstrap) -> Result<String, String> {
    let mut doc: toml::Table = match &node.user_data {
        Some(user) => user.parse().map_err(|e| format!("userData: not Bottlerocket TOML: {e}"))?,
        None => toml::Table::new(),
    };
    let settings = doc.entry("settings").or_insert_with(|| toml::Value::Table(Default::default()));
    let Some(settings) = settings.as_table_mut() else {
        return Err("userData: settings is not a table".into());
    };
    let kubernetes = settings.entry("kubernetes").or_insert_with(|| toml::Value::Table(Default::default()));
    let Some(kubernetes) = kubernetes.as_table_mut() else {
        return Err("userData: settings.kubernetes is not a table".into());
    };
    if let Some(config) = &node.kubelet {
        kubernetes.extend(bottlerocket_kubelet(config));
    }
    // The cluster's own settings, labels and taints win over the user's.
    kubernetes.insert("cluster-name".into(), cluster.name.clone().into());
    kubernetes.insert("api-server".into(), cluster.endpoint.clone().into());
    kubernetes.insert("cluster-certificate".into(), cluster.ca_bundle.clone().into());
    let labels = kubernetes.entry("node-labels").or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(labels) = labels.as_table_mut() {
        labels.extend(node.labels.iter().map(|(k, v)| (k.clone(), toml::Value::String(v.clone()))));
    }
    let taints = kubernetes.entry("node-taints").or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(taints) = taints.as_table_mut() {
        let mut by_key: BTreeMap<&str, Vec<toml::Value>> = BTreeMap::new();
        for t in &node.taints {
            by_key.entry(&t.key).or_default().push(format!("{}:{}", t.value, t.effect).into());
        }
        for (key, values) in by_key {
            taints.insert(key.to_owned(), toml::Value::Array(values));
        }
    }
    toml::to_string(&doc).map_err(|e| format!("Bottlerocket settings: {e}"))
}

/// The user data for a family, as plain text (not yet base64).
pub fn render(family: AmiFamily, cluster: &ClusterInfo, node: &NodeBootstrap) -> Result<String, String> {
    match family {
        AmiFamily::Al2023 => al2023(cluster, node),
        AmiFamily::Bottlerocket => bottlerocket(cluster, node),
        AmiFamily::Custom => Ok(node.user_data.clone().unwrap_or_default()),
    }
}

/// Base64, as a launch template takes user data.
pub fn encode(user_data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(user_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartwright_binpack::taints::TaintEffect as Effect;

    fn cluster() -> ClusterInfo {
        ClusterInfo {
            name: "prod".into(),
            endpoint: "https://ABC.eks.amazonaws.com".into(),
            ca_bundle: "Q0E=".into(),
            service_cidr: Some("10.100.0.0/16".into()),
            kubernetes_version: "1.33".into(),
            ssm_root: "/aws/service".into(),
        }
    }

    fn node() -> NodeBootstrap {
        NodeBootstrap {
            labels: [
                ("team".to_owned(), "web".to_owned()),
                ("cartwright.sh/nodepool".to_owned(), "default".to_owned()),
            ]
            .into(),
            taints: vec![
                Taint { key: "dedicated".into(), value: "web".into(), effect: Effect::NoSchedule },
                Taint { key: "startup".into(), value: String::new(), effect: Effect::NoExecute },
            ],
            kubelet: Some(json!({"maxPods": 58, "clusterDNS": ["10.100.0.10"]})),
            user_data: None,
        }
    }

    #[test]
    fn al2023_carries_a_nodeconfig_after_the_users_script() {
        let mut node = node();
        node.user_data = Some("#!/bin/bash\necho hello\n".into());
        let text = render(AmiFamily::Al2023, &cluster(), &node).unwrap();
        assert!(text.starts_with("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"//\""));
        let script = text.find("echo hello").unwrap();
        let config = text.find("kind: NodeConfig").unwrap();
        assert!(script < config, "the user's part runs first");
        assert!(text.trim_end().ends_with("--//--"));
        // The NodeConfig part parses back with the cluster, labels, taints and kubelet settings.
        let part = text[text.find("apiVersion: node.eks.aws").unwrap()..].split("\n--//").next().unwrap();
        let parsed: Value = yaml_serde::from_str(part).unwrap();
        assert_eq!(parsed["spec"]["cluster"]["name"], "prod");
        assert_eq!(parsed["spec"]["cluster"]["apiServerEndpoint"], "https://ABC.eks.amazonaws.com");
        assert_eq!(parsed["spec"]["cluster"]["certificateAuthority"], "Q0E=");
        assert_eq!(parsed["spec"]["cluster"]["cidr"], "10.100.0.0/16");
        assert_eq!(parsed["spec"]["kubelet"]["config"]["maxPods"], 58);
        let flags: Vec<&str> = parsed["spec"]["kubelet"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(
            flags,
            [
                "--node-labels=cartwright.sh/nodepool=default,team=web",
                "--register-with-taints=dedicated=web:NoSchedule,startup:NoExecute"
            ]
        );
    }

    #[test]
    fn al2023_keeps_the_parts_of_mime_user_data() {
        let mut node = node();
        node.user_data = Some(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"BOUNDARY\"\n\n--BOUNDARY\nContent-Type: text/x-shellscript\n\necho one\n\n--BOUNDARY\nContent-Type: text/x-shellscript\n\necho two\n\n--BOUNDARY--\n"
                .into(),
        );
        let text = render(AmiFamily::Al2023, &cluster(), &node).unwrap();
        assert_eq!(text.matches("\n--//\n").count(), 3, "{text}");
        assert!(text.find("echo one").unwrap() < text.find("echo two").unwrap());
        let bad = NodeBootstrap { user_data: Some("MIME-Version: 1.0\n\nno boundary".into()), ..node };
        assert!(render(AmiFamily::Al2023, &cluster(), &bad).unwrap_err().contains("boundary"));
    }

    #[test]
    fn bottlerocket_merges_the_users_settings_under_the_clusters() {
        let mut node = node();
        node.user_data = Some("[settings.kubernetes]\ncluster-name = \"wrong\"\nimage-gc-high-threshold-percent = 85\n[settings.host-containers.admin]\nenabled = true\n".into());
        let text = render(AmiFamily::Bottlerocket, &cluster(), &node).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        let k = &doc["settings"]["kubernetes"];
        assert_eq!(k["cluster-name"].as_str(), Some("prod"));
        assert_eq!(k["api-server"].as_str(), Some("https://ABC.eks.amazonaws.com"));
        assert_eq!(k["cluster-certificate"].as_str(), Some("Q0E="));
        assert_eq!(k["max-pods"].as_integer(), Some(58));
        assert_eq!(k["cluster-dns-ip"].as_str(), Some("10.100.0.10"));
        assert_eq!(k["image-gc-high-threshold-percent"].as_integer(), Some(85));
        assert_eq!(k["node-labels"]["team"].as_str(), Some("web"));
        assert_eq!(k["node-taints"]["dedicated"].as_array().unwrap()[0].as_str(), Some("web:NoSchedule"));
        assert_eq!(k["node-taints"]["startup"].as_array().unwrap()[0].as_str(), Some(":NoExecute"));
        assert_eq!(doc["settings"]["host-containers"]["admin"]["enabled"].as_bool(), Some(true));
        let bad = NodeBootstrap { user_data: Some("not = [toml".into()), ..node };
        assert!(
            render(AmiFamily::Bottlerocket, &cluster(), &bad)
                .unwrap_err()
                .starts_with("userData: not Bottlerocket TOML")
        );
    }

    #[test]
    fn custom_user_data_is_passed_through_and_encoded() {
        let node =
            NodeBootstrap { user_data: Some("#!/bin/sh\n/etc/eks/bootstrap.sh prod\n".into()), ..node() };
        let text = render(AmiFamily::Custom, &cluster(), &node).unwrap();
        assert_eq!(text, "#!/bin/sh\n/etc/eks/bootstrap.sh prod\n");
        assert_eq!(encode("hi"), "aGk=");
    }
}
