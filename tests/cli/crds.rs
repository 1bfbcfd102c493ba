//! `cartwright crds`: the CRDs of the three resources, the same as the chart carries.

use super::expect_success;

#[test]
fn crds_prints_the_three_resources_as_the_chart_carries_them() {
    let out = expect_success(&["crds"]);
    let docs: Vec<&str> = out.split("---\n").filter(|d| !d.trim().is_empty()).collect();
    assert_eq!(docs.len(), 3);
    let chart = format!("{}/charts/cartwright/crds", env!("CARGO_MANIFEST_DIR"));
    for (doc, file) in docs.iter().zip([
        "nodepools.cartwright.sh.yaml",
        "nodeclaims.cartwright.sh.yaml",
        "ec2nodeclasses.aws.cartwright.sh.yaml",
    ]) {
        assert!(doc.starts_with("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"));
        assert_eq!(*doc, std::fs::read_to_string(format!("{chart}/{file}")).unwrap(), "{file}");
    }
    assert!(docs[2].contains("group: aws.cartwright.sh"));
    assert!(docs[0].contains("scope: Cluster"));
}
