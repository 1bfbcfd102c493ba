//! `cartwright convert`: Karpenter manifests rewritten for Cartwright plan exactly as before.

use serde_json::Value;

use super::{expect_failure, expect_success};

#[test]
fn converted_karpenter_examples_use_cartwright_groups_and_plan_the_same() {
    for example in [
        "karpenter-default.yaml",
        "karpenter-full-spec.yaml",
        "karpenter-weighted.yaml",
        "karpenter-gpu.yaml",
    ] {
        let path = format!("{}/examples/plan/{example}", env!("CARGO_MANIFEST_DIR"));
        let converted = expect_success(&["convert", &path]);
        assert!(!converted.contains("apiVersion: karpenter.sh/"), "{example}: {converted}");
        assert!(converted.contains("apiVersion: cartwright.sh/v1"), "{example}");
        assert!(!converted.contains("group: karpenter.k8s.aws"), "{example}");
        let out = std::env::temp_dir().join(format!("cartwright-convert-{}-{example}", std::process::id()));
        std::fs::write(&out, &converted).unwrap();
        let plan = |input: &str| -> Value {
            serde_json::from_str(&expect_success(&["plan", "--output", "json", "--input", input])).unwrap()
        };
        let (before, after) = (plan(&path), plan(out.to_str().unwrap()));
        std::fs::remove_file(&out).unwrap();
        assert_eq!(before["cost_per_hour"], after["cost_per_hour"], "{example}");
        assert_eq!(before["new_nodes"], after["new_nodes"], "{example}");
    }
}

#[test]
fn convert_rejects_unknown_fields_naming_file_document_and_field() {
    let path = std::env::temp_dir().join(format!("cartwright-convert-typo-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata:\n  name: x\nspec:\n  template:\n    spec:\n      requirements: []\n      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: d}\n  weigth: 10\n",
    )
    .unwrap();
    let err = expect_failure(&["convert", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("document 1 (NodePool x)") && err.contains("weigth"), "{err}");
}
