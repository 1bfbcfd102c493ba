//! The CustomResourceDefinitions of Cartwright's resources, as `cartwright crds` prints them and as
//! `charts/cartwright/crds/` carries them (a test fails when the committed copies drift).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::ec2nodeclass::EC2NodeClass;
use crate::nodeclaim::NodeClaim;
use crate::nodepool::NodePool;

/// Every CRD, in a fixed order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![NodePool::crd(), NodeClaim::crd(), EC2NodeClass::crd()]
}

/// A CRD as YAML (one document, no leading `---`).
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, String> {
    yaml_serde::to_string(crd).map_err(|e| format!("{}: {e}", crd.metadata.name.as_deref().unwrap_or("crd")))
}

/// The file name a CRD is committed under: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_charts_crds_are_the_generated_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/cartwright/crds");
        for crd in all() {
            let path = dir.join(file_name(&crd));
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e} (run `cartwright crds --output-dir charts/cartwright/crds`)", path.display())
            });
            assert_eq!(
                committed,
                to_yaml(&crd).unwrap(),
                "{} drifted: run `cartwright crds --output-dir charts/cartwright/crds`",
                path.display()
            );
        }
    }

    #[test]
    fn nodepool_schema_carries_karpenters_defaults_enums_and_validation_rules() {
        let crd = all().into_iter().find(|c| c.spec.names.kind == "NodePool").unwrap();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let disruption = &spec["disruption"];
        assert_eq!(disruption["default"]["consolidationPolicy"], "WhenEmptyOrUnderutilized");
        assert_eq!(disruption["default"]["budgets"][0]["nodes"], "10%");
        // The defaults are values Cartwright itself reads.
        let parsed: crate::nodepool::Disruption =
            serde_json::from_value(disruption["default"].clone()).unwrap();
        assert_eq!(parsed.consolidate_after.as_deref(), Some("0s"));
        let d = &disruption["properties"];
        assert_eq!(
            d["consolidationPolicy"]["enum"],
            serde_json::json!(["WhenEmpty", "WhenEmptyOrUnderutilized"])
        );
        assert_eq!(d["consolidateAfter"]["pattern"], "^(([0-9]+(s|m|h))+|Never)$");
        assert_eq!(d["budgets"]["items"]["properties"]["nodes"]["default"], "10%");
        assert!(
            disruption["x-kubernetes-validations"][0]["rule"]
                .as_str()
                .unwrap()
                .contains("has(x.schedule) == has(x.duration)")
        );
        assert_eq!(spec["weight"]["minimum"], 1.0);
        assert_eq!(spec["weight"]["maximum"], 100.0);
        let template = &spec["template"]["properties"]["spec"]["properties"];
        assert_eq!(template["expireAfter"]["default"], "720h");
        let requirement = &template["requirements"]["items"];
        assert_eq!(template["requirements"]["maxItems"], 100);
        assert_eq!(requirement["properties"]["operator"]["enum"].as_array().unwrap().len(), 8);
        let rules: Vec<&str> = requirement["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"].as_str().unwrap())
            .collect();
        assert!(rules.iter().any(|m| m.contains("'In' must have a value")), "{rules:?}");
        assert!(rules.iter().any(|m| m.contains("minValues")), "{rules:?}");
        assert_eq!(
            template["taints"]["items"]["properties"]["effect"]["enum"],
            serde_json::json!(["NoSchedule", "PreferNoSchedule", "NoExecute"])
        );
    }

    #[test]
    fn crds_have_status_printer_columns_and_descriptions() {
        for crd in all() {
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1");
            assert!(
                version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{:?}",
                crd.metadata.name
            );
            assert!(!version.additional_printer_columns.clone().unwrap_or_default().is_empty());
            let schema = serde_json::to_string(&version.schema).unwrap();
            assert!(schema.contains("\"description\""), "{:?} has no descriptions", crd.metadata.name);
        }
    }
}

#[cfg(test)]
mod karpenter_manifests {
    use crate::ec2nodeclass::EC2NodeClassSpec;
    use crate::nodeclaim::NodeClaim;

    #[test]
    fn karpenter_ec2nodeclass_and_nodeclaim_manifests_parse_after_the_api_version_change() {
        let class: EC2NodeClassSpec = yaml_serde::from_str(
            r#"
role: "KarpenterNodeRole-my-cluster"
amiSelectorTerms:
  - alias: "al2023@latest"
subnetSelectorTerms:
  - tags:
      karpenter.sh/discovery: "my-cluster"
securityGroupSelectorTerms:
  - tags:
      karpenter.sh/discovery: "my-cluster"
kubelet:
  maxPods: 110
  systemReserved: {cpu: 100m}
blockDeviceMappings:
  - deviceName: /dev/xvda
    ebs: {volumeSize: 100Gi, volumeType: gp3, encrypted: true, deleteOnTermination: true}
metadataOptions: {httpEndpoint: enabled, httpProtocolIPv6: disabled, httpPutResponseHopLimit: 1, httpTokens: required}
tags: {team: platform}
"#,
        )
        .unwrap();
        assert_eq!(class.ami_selector_terms[0].alias.as_deref(), Some("al2023@latest"));
        assert_eq!(class.kubelet.as_ref().unwrap()["maxPods"], 110);
        assert!(
            yaml_serde::from_str::<EC2NodeClassSpec>("rol: x\n")
                .unwrap_err()
                .to_string()
                .contains("unknown field `rol`")
        );

        let claim: NodeClaim = yaml_serde::from_str(
            r#"
apiVersion: cartwright.sh/v1
kind: NodeClaim
metadata: {name: default-x7k2p}
spec:
  requirements:
    - {key: node.kubernetes.io/instance-type, operator: In, values: [m5.large, m5a.large]}
  nodeClassRef: {group: aws.cartwright.sh, kind: EC2NodeClass, name: default}
  resources: {requests: {cpu: 1500m, memory: 3Gi, pods: "3"}}
status:
  providerID: aws:///us-east-1a/i-0123456789abcdef0
  conditions: [{type: Launched, status: "True"}]
"#,
        )
        .unwrap();
        assert_eq!(claim.spec.requirements[0].values.len(), 2);
        let status = claim.status.unwrap();
        assert_eq!(status.provider_id.as_deref(), Some("aws:///us-east-1a/i-0123456789abcdef0"));
        assert_eq!(status.conditions[0].type_, "Launched");
    }
}
