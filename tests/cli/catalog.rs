use serde_json::Value;

use super::{expect_failure, expect_success};

fn catalog_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["catalog", "--output", "json"];
    all.extend_from_slice(args);
    let out = expect_success(&all);
    serde_json::from_str::<Value>(&out).expect("JSON").as_array().expect("an array").clone()
}

fn find<'a>(types: &'a [Value], name: &str) -> &'a Value {
    types.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn us_east_1_lists_every_type_with_spot_and_on_demand_in_every_zone() {
    let types = catalog_json(&["--region", "us-east-1"]);
    assert!(types.len() >= 1300, "only {} instance types", types.len());
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"];
    for t in &types {
        let offerings = t["offerings"].as_array().unwrap();
        for zone in zones {
            for ct in ["on-demand", "spot"] {
                assert!(
                    offerings.iter().any(|o| o["zone"] == zone
                        && o["capacity_type"] == ct
                        && o["price_per_hour"].as_f64().unwrap() > 0.0),
                    "{} has no {ct} offering in {zone}",
                    t["name"]
                );
            }
        }
    }
}

#[test]
fn m5_large_allocatable_and_labels() {
    let types = catalog_json(&["--region", "us-east-1"]);
    let m5 = find(&types, "m5.large");
    assert_eq!(m5["vcpu"], 2);
    assert_eq!(m5["memory_mib"], 8192);
    assert_eq!(m5["arch"], "amd64");
    assert_eq!(m5["gpu_count"], 0);
    assert_eq!(m5["allocatable"]["cpu_millis"], 1930);
    assert_eq!(m5["allocatable"]["memory_mib"], 6903);
    assert_eq!(m5["allocatable"]["pods"], 29);
    assert_eq!(m5["allocatable"]["ephemeral_storage_gib"], 17);
    let labels = &m5["labels"];
    assert_eq!(labels["node.kubernetes.io/instance-type"], "m5.large");
    assert_eq!(labels["kubernetes.io/arch"], "amd64");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["karpenter.k8s.aws/instance-family"], "m5");
    assert_eq!(labels["karpenter.k8s.aws/instance-category"], "m");
    assert_eq!(labels["karpenter.k8s.aws/instance-generation"], "5");
    assert_eq!(labels["karpenter.k8s.aws/instance-size"], "large");
    assert_eq!(labels["karpenter.k8s.aws/instance-cpu"], "2");
    assert_eq!(labels["karpenter.k8s.aws/instance-memory"], "8192");
    assert_eq!(labels["karpenter.k8s.aws/instance-hypervisor"], "nitro");
    assert!(labels.get("karpenter.k8s.aws/instance-gpu-name").is_none());
    let od = m5["offerings"].as_array().unwrap().iter().find(|o| o["capacity_type"] == "on-demand").unwrap();
    assert_eq!(od["price_per_hour"], 0.096);
}

#[test]
fn requirements_filter_types_and_offerings() {
    let types = catalog_json(&[
        "--requirement",
        "karpenter.k8s.aws/instance-family",
        "In",
        "c7g",
        "m7g",
        "--requirement",
        "karpenter.k8s.aws/instance-cpu",
        "Lte",
        "4",
        "--requirement",
        "karpenter.sh/capacity-type",
        "In",
        "spot",
        "--requirement",
        "topology.kubernetes.io/zone",
        "NotIn",
        "us-east-1a",
    ]);
    assert!(!types.is_empty());
    for t in &types {
        let family = t["labels"]["karpenter.k8s.aws/instance-family"].as_str().unwrap();
        assert!(family == "c7g" || family == "m7g", "{family}");
        assert!(t["vcpu"].as_u64().unwrap() <= 4);
        assert_eq!(t["arch"], "arm64");
        for o in t["offerings"].as_array().unwrap() {
            assert_eq!(o["capacity_type"], "spot");
            assert_ne!(o["zone"], "us-east-1a");
        }
    }
    let gpus = catalog_json(&["--requirement", "karpenter.k8s.aws/instance-gpu-count", "Gte", "8"]);
    assert!(!gpus.is_empty() && gpus.iter().all(|t| t["gpu_count"].as_u64().unwrap() >= 8));
}

#[test]
fn table_output_and_other_regions() {
    let out = expect_success(&[
        "catalog",
        "--region",
        "ap-northeast-2",
        "--requirement",
        "node.kubernetes.io/instance-type",
        "In",
        "t3.medium",
    ]);
    assert!(out.contains("t3.medium") && out.contains("1 instance types in ap-northeast-2"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let err = expect_failure(&["catalog", "--requirement", "team", "Within", "a"]);
    assert!(err.contains("--requirement") && err.contains("team") && err.contains("Within"), "{err}");
    let err = expect_failure(&["catalog", "--requirement", "karpenter.k8s.aws/instance-cpu", "Gt", "many"]);
    assert!(err.contains("needs an integer") && err.contains("many"), "{err}");
    let err = expect_failure(&["catalog", "--region", "mars-north-1"]);
    assert!(err.contains("mars-north-1") && err.contains("us-east-1"), "{err}");
    let err = expect_failure(&[
        "catalog",
        "--requirement",
        "kubernetes.io/arch",
        "In",
        "amd64",
        "--requirement",
        "kubernetes.io/arch",
        "In",
        "arm64",
    ]);
    assert!(err.contains("no node can satisfy"), "{err}");
    let err = expect_failure(&["catalog", "--spot-discount", "1.5"]);
    assert!(err.contains("--spot-discount"), "{err}");
}
