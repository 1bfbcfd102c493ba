//! `cartwright convert`: Karpenter v1 YAML rewritten for Cartwright.
//!
//! Only what differs changes: the `apiVersion` of NodePools and NodeClaims (`karpenter.sh/v1` →
//! `cartwright.sh/v1`) and EC2NodeClasses (`karpenter.k8s.aws/v1` → `aws.cartwright.sh/v1`), and the
//! `nodeClassRef.group` that points at an EC2NodeClass. The rewrite is textual, line by line, so comments,
//! key order and every other document stay exactly as they were; labels and annotations under
//! `karpenter.sh/` keep working unchanged. Each converted document is then read with Cartwright's types,
//! so a field Cartwright does not know is reported before anything is applied.

use crate::manifests::ManifestError;
use crate::{ec2nodeclass, nodeclaim, nodepool};

/// The outcome of a conversion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversion {
    /// The rewritten YAML.
    pub text: String,
    /// `Kind name` of each converted object.
    pub converted: Vec<String>,
}

const AWS_KARPENTER_GROUP: &str = "karpenter.k8s.aws";

fn scalar(value: &str) -> &str {
    let v = value.trim();
    let v = v.split(" #").next().unwrap_or(v).trim();
    v.trim_matches(|c| c == '"' || c == '\'')
}

/// Rewrites one `key: value` line when it is `key: from` (keeping indentation, quotes dropped).
fn rewrite(line: &str, key: &str, from: &str, to: &str, top_level_only: bool) -> Option<String> {
    let indent = line.len() - line.trim_start().len();
    if top_level_only && indent != 0 {
        return None;
    }
    let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
    (scalar(rest) == from).then(|| format!("{}{key}: {to}", &line[..indent]))
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.trim_end() == "---"
}

/// Converts every Karpenter NodePool, NodeClaim and EC2NodeClass in `text` (named `source_name` in errors).
pub fn convert(source_name: &str, text: &str) -> Result<Conversion, ManifestError> {
    let mut documents: Vec<Vec<&str>> = vec![Vec::new()];
    let mut separators: Vec<&str> = Vec::new();
    for line in text.lines() {
        if is_separator(line) {
            separators.push(line);
            documents.push(Vec::new());
        } else {
            documents.last_mut().unwrap().push(line);
        }
    }
    let mut out = Conversion::default();
    for (i, lines) in documents.iter().enumerate() {
        if i > 0 {
            out.text.push_str(separators[i - 1]);
            out.text.push('\n');
        }
        let at = |object: String, message: String| ManifestError {
            source_name: source_name.to_owned(),
            document: i + 1,
            object,
            message,
        };
        let original = lines.join("\n");
        let value: serde_json::Value =
            yaml_serde::from_str(&original).map_err(|e| at(String::new(), format!("not valid YAML: {e}")))?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let name = value.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let object = format!(" ({kind} {name})");
        let target = match (kind.as_str(), api_version.as_str()) {
            ("NodePool" | "NodeClaim", v) if v == format!("{}/v1", nodepool::KARPENTER_GROUP) => {
                Some(format!("{}/v1", nodepool::GROUP))
            }
            ("EC2NodeClass", v) if v == format!("{AWS_KARPENTER_GROUP}/v1") => {
                Some(format!("{}/v1", ec2nodeclass::GROUP))
            }
            ("NodePool" | "NodeClaim" | "EC2NodeClass", v)
                if v.starts_with(nodepool::KARPENTER_GROUP) || v.starts_with(AWS_KARPENTER_GROUP) =>
            {
                return Err(at(
                    object,
                    format!(
                        "apiVersion {v} is not supported: migrate it to Karpenter v1 first, then convert"
                    ),
                ));
            }
            _ => None,
        };
        let Some(target) = target else {
            out.text.push_str(&original);
            if !lines.is_empty() {
                out.text.push('\n');
            }
            continue;
        };
        let mut converted = Vec::with_capacity(lines.len());
        for line in lines {
            let line = rewrite(line, "apiVersion", &api_version, &target, true)
                .or_else(|| rewrite(line, "group", AWS_KARPENTER_GROUP, ec2nodeclass::GROUP, false))
                .unwrap_or_else(|| (*line).to_owned());
            converted.push(line);
        }
        let converted = converted.join("\n");
        check(&kind, &converted).map_err(|message| at(object.clone(), message))?;
        out.text.push_str(&converted);
        out.text.push('\n');
        out.converted.push(format!("{kind} {name}"));
    }
    Ok(out)
}

/// Reads a converted document with Cartwright's types (unknown fields are errors naming the path).
fn check(kind: &str, text: &str) -> Result<(), String> {
    let value: serde_json::Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    let spec = value.get("spec").cloned().unwrap_or_default();
    let typed = |result: Result<(), serde_path_to_error::Error<serde_json::Error>>| {
        result.map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
    };
    match kind {
        "NodePool" => {
            typed(serde_path_to_error::deserialize::<_, nodepool::NodePoolSpec>(spec).map(drop))?;
            let mut manifests = crate::Manifests::default();
            manifests.add_yaml("converted", text).map_err(|e| e.message)
        }
        "NodeClaim" => typed(serde_path_to_error::deserialize::<_, nodeclaim::NodeClaimSpec>(spec).map(drop)),
        _ => typed(serde_path_to_error::deserialize::<_, ec2nodeclass::EC2NodeClassSpec>(spec).map(drop)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KARPENTER: &str = "\
# Karpenter's getting-started NodePool
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: default
spec:
  template:
    metadata:
      labels:
        karpenter.sh/team: web   # labels stay
    spec:
      requirements:
        - key: karpenter.sh/capacity-type
          operator: In
          values: [\"spot\"]
      nodeClassRef:
        group: karpenter.k8s.aws
        kind: EC2NodeClass
        name: default
  limits:
    cpu: 1000
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: default
spec:
  role: KarpenterNodeRole-demo
  amiSelectorTerms:
    - alias: al2023@latest
  subnetSelectorTerms:
    - tags:
        karpenter.sh/discovery: demo
  securityGroupSelectorTerms:
    - tags:
        karpenter.sh/discovery: demo
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: inflate   # untouched
spec:
  template:
    spec:
      containers: []
";

    #[test]
    fn rewrites_only_the_api_versions_and_node_class_group_keeping_everything_else() {
        let out = convert("k.yaml", KARPENTER).unwrap();
        assert_eq!(out.converted, ["NodePool default", "EC2NodeClass default"]);
        let expected = KARPENTER
            .replace("apiVersion: karpenter.sh/v1", "apiVersion: cartwright.sh/v1")
            .replace("apiVersion: karpenter.k8s.aws/v1", "apiVersion: aws.cartwright.sh/v1")
            .replace("group: karpenter.k8s.aws", "group: aws.cartwright.sh");
        assert_eq!(out.text, expected);
        assert!(out.text.contains("# Karpenter's getting-started NodePool"));
        assert!(out.text.contains("karpenter.sh/team: web   # labels stay"));
        // Converting again changes nothing.
        let again = convert("k.yaml", &out.text).unwrap();
        assert_eq!(again.text, out.text);
        assert!(again.converted.is_empty());
    }

    #[test]
    fn old_api_versions_and_unknown_fields_are_errors_naming_the_document_and_field() {
        let old = "apiVersion: karpenter.sh/v1beta1\nkind: NodePool\nmetadata:\n  name: old\nspec: {}\n";
        let e = convert("old.yaml", old).unwrap_err().to_string();
        assert!(e.contains("old.yaml: document 1 (NodePool old)") && e.contains("v1beta1"), "{e}");
        let typo = KARPENTER.replace("  limits:\n", "  limitz:\n");
        let e = convert("typo.yaml", &typo).unwrap_err().to_string();
        assert!(e.contains("document 1 (NodePool default)") && e.contains("limitz"), "{e}");
    }
}
