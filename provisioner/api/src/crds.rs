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
