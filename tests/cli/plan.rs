//! `cartwright plan`: Kubernetes manifests in, a plan out; Karpenter's NodePool examples accepted unchanged.

use serde_json::Value;

use super::{expect_failure, expect_success};

fn example(name: &str) -> String {
    format!("{}/examples/plan/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn plan_json(args: &[&str]) -> Value {
    let mut all = vec!["plan", "--output", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&expect_success(&all)).expect("plan prints JSON")
}

fn new_nodes(plan: &Value) -> &Vec<Value> {
    plan["new_nodes"].as_array().expect("new_nodes")
}

fn pods_planned(plan: &Value) -> usize {
    new_nodes(plan).iter().map(|n| n["pods"].as_array().unwrap().len()).sum::<usize>()
        + plan["placements"].as_array().unwrap().len()
}

#[test]
fn getting_started_nodepool_plans_every_replica_on_spot_within_its_requirements() {
    let plan = plan_json(&["--input", &example("karpenter-default.yaml")]);
    assert_eq!(pods_planned(&plan), 5, "{plan:#}");
    assert!(plan["unschedulable"].as_array().unwrap().is_empty());
    let mut cost = 0.0;
    for node in new_nodes(&plan) {
        assert_eq!(node["nodepool"], "default");
        assert_eq!(node["capacity_type"], "spot");
        let family = node["instance_type"].as_str().unwrap();
        assert!(["c", "m", "r"].iter().any(|c| family.starts_with(c)), "{family} outside c/m/r");
        assert!(!node["alternatives"].as_array().unwrap().is_empty());
        cost += node["price_per_hour"].as_f64().unwrap();
    }
    assert!((cost - plan["cost_per_hour"].as_f64().unwrap()).abs() < 1e-6);
    assert!(plan["lower_bound_per_hour"].as_f64().unwrap() <= plan["cost_per_hour"].as_f64().unwrap() + 1e-9);
}

#[test]
fn full_spec_nodepool_honours_zone_arch_taint_cpu_sizes_and_min_values() {
    let plan = plan_json(&["--input", &example("karpenter-full-spec.yaml"), "--region", "us-west-2"]);
    assert_eq!(pods_planned(&plan), 12, "{plan:#}");
    for node in new_nodes(&plan) {
        assert_eq!(node["zone"], "us-west-2b", "the pods' affinity pins the zone");
        let alternatives = node["alternatives"].as_array().unwrap();
        let families: std::collections::BTreeSet<&str> = alternatives
            .iter()
            .map(|a| a["instance_type"].as_str().unwrap().split('.').next().unwrap())
            .collect();
        assert!(families.len() >= 5, "minValues 5 on instance-family: {families:?}");
        let categories: std::collections::BTreeSet<char> =
            families.iter().map(|f| f.chars().next().unwrap()).collect();
        assert!(categories.len() >= 2 && categories.iter().all(|c| "cmr".contains(*c)), "{categories:?}");
    }
}

#[test]
fn weighted_nodepools_fill_the_heavier_pool_up_to_its_cpu_limit_first() {
    let plan = plan_json(&["--input", &example("karpenter-weighted.yaml")]);
    assert_eq!(pods_planned(&plan), 40);
    let reserved: Vec<&Value> = new_nodes(&plan).iter().filter(|n| n["nodepool"] == "reserved").collect();
    assert!(!reserved.is_empty(), "the weight-50 pool is tried first");
    let mut reserved_vcpu = 0;
    for node in &reserved {
        assert_eq!(node["capacity_type"], "on-demand");
        let size = node["instance_type"].as_str().unwrap().split('.').nth(1).unwrap();
        reserved_vcpu += match size {
            "large" => 2,
            "xlarge" => 4,
            s => s.trim_end_matches("xlarge").parse::<i64>().unwrap() * 4,
        };
    }
    assert!(reserved_vcpu <= 16, "cpu limit 16 exceeded: {reserved_vcpu}");
    assert!(new_nodes(&plan).iter().any(|n| n["nodepool"] == "spot"), "the rest goes to the spot pool");
}

#[test]
fn gpu_job_pods_go_to_the_tainted_gpu_pool_and_web_pods_do_not() {
    let plan = plan_json(&["--input", &example("karpenter-gpu.yaml")]);
    assert_eq!(pods_planned(&plan), 5, "2 running job pods (parallelism 2) + 3 replicas: {plan:#}");
    for node in new_nodes(&plan) {
        let pods = node["pods"].as_array().unwrap();
        let has_train = pods.iter().any(|p| p.as_str().unwrap().starts_with("default/train-"));
        assert_eq!(node["nodepool"] == "gpu", has_train, "{node:#}");
        if has_train {
            let family = node["instance_type"].as_str().unwrap().split('.').next().unwrap();
            assert!(["g5", "g6", "p4d"].contains(&family), "{family}");
        }
    }
}

#[test]
fn existing_node_room_is_used_before_new_nodes() {
    let dir = std::env::temp_dir().join(format!("cartwright-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("existing.yaml");
    std::fs::write(
        &path,
        r#"
apiVersion: v1
kind: Node
metadata:
  name: ip-10-0-1-1
  labels:
    kubernetes.io/arch: amd64
    topology.kubernetes.io/zone: us-east-1a
status:
  allocatable: {cpu: 3920m, memory: 14Gi, pods: "58"}
---
apiVersion: v1
kind: Pod
metadata: {name: running, namespace: default}
spec:
  nodeName: ip-10-0-1-1
  containers: [{name: c, image: x, resources: {requests: {cpu: "3"}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: small, namespace: default}
spec:
  containers: [{name: c, image: x, resources: {requests: {cpu: 500m, memory: 1Gi}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: big, namespace: default}
spec:
  containers: [{name: c, image: x, resources: {requests: {cpu: "2"}}}]
---
apiVersion: cartwright.sh/v1
kind: NodePool
metadata: {name: default}
spec:
  template:
    spec:
      requirements: [{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}]
"#,
    )
    .unwrap();
    let plan = plan_json(&["--input", path.to_str().unwrap()]);
    let placements = plan["placements"].as_array().unwrap();
    assert_eq!(placements.len(), 1, "{plan:#}");
    assert_eq!(placements[0]["pod"], "default/small");
    assert_eq!(placements[0]["node"], "ip-10-0-1-1");
    assert_eq!(new_nodes(&plan).len(), 1);
    assert_eq!(new_nodes(&plan)[0]["pods"][0], "default/big");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_manifests_are_rejected_naming_the_document_object_and_field() {
    let dir = std::env::temp_dir().join(format!("cartwright-plan-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: p}\nspec:\n  template:\n    spec:\n      requirements: [{key: a, operator: Between, values: [x]}]\n",
            "document 1 (NodePool p): spec.template.spec.requirements[0]",
        ),
        (
            "apiVersion: karpenter.sh/v1beta1\nkind: NodePool\nmetadata: {name: old}\nspec: {}\n",
            "apiVersion karpenter.sh/v1beta1 is not supported",
        ),
        (
            "kind: ConfigMap\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers: [{name: c, image: x, resources: {requests: {cpu: lots}}}]\n",
            "document 2 (Pod q): spec.containers[0].resources",
        ),
        (
            "apiVersion: karpenter.sh/v1\nkind: NodePool\nmetadata: {name: typo}\nspec:\n  template:\n    spec:\n      requirments: []\n",
            "unknown field `requirments`",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let err = expect_failure(&["plan", "--input", path.to_str().unwrap()]);
        assert!(err.contains(expected), "case {i}: expected {expected:?} in {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_solver_plans_the_same_manifests() {
    for solver in ["cartwright", "karpenter-greedy", "ca-least-waste"] {
        let plan = plan_json(&["--input", &example("karpenter-weighted.yaml"), "--solver", solver]);
        assert_eq!(plan["solver"], solver);
        assert_eq!(pods_planned(&plan) + plan["unschedulable"].as_array().unwrap().len(), 40);
    }
}

#[test]
fn an_edited_catalog_file_replaces_the_embedded_catalog() {
    let dir = std::env::temp_dir().join(format!("cartwright-plan-catalog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Two types only, from the catalog command itself; make m5.xlarge spot absurdly cheap.
    let json = expect_success(&[
        "catalog",
        "--output",
        "json",
        "--requirement",
        "node.kubernetes.io/instance-type",
        "In",
        "m5.large",
        "m5.xlarge",
    ]);
    let mut entries: Value = serde_json::from_str(&json).unwrap();
    for e in entries.as_array_mut().unwrap() {
        let xlarge = e["name"] == "m5.xlarge";
        for o in e["offerings"].as_array_mut().unwrap() {
            if xlarge && o["capacity_type"] == "spot" {
                o["price_per_hour"] = serde_json::json!(0.001);
            }
        }
    }
    let catalog = dir.join("catalog.json");
    std::fs::write(&catalog, serde_json::to_string(&entries).unwrap()).unwrap();
    let plan =
        plan_json(&["--input", &example("karpenter-weighted.yaml"), "--catalog", catalog.to_str().unwrap()]);
    let types: std::collections::BTreeSet<&str> =
        new_nodes(&plan).iter().map(|n| n["instance_type"].as_str().unwrap()).collect();
    assert!(types.iter().all(|t| *t == "m5.large" || *t == "m5.xlarge"), "{types:?}");
    assert!(
        new_nodes(&plan).iter().any(|n| n["instance_type"] == "m5.xlarge" && n["capacity_type"] == "spot"),
        "the edited price is used: {plan:#}"
    );
    std::fs::write(&catalog, "[{\"name\": 1}]").unwrap();
    let err = super::expect_failure(&[
        "plan",
        "--input",
        &example("karpenter-weighted.yaml"),
        "--catalog",
        catalog.to_str().unwrap(),
    ]);
    assert!(err.contains("catalog.json: [0].name"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pod_affinity_puts_web_beside_redis_and_relaxes_preferred_anti_affinity_only_at_the_node_limit() {
    let plan = plan_json(&["--input", &example("pod-affinity.yaml")]);
    assert_eq!(pods_planned(&plan), 17, "{plan:#}");
    assert!(plan["unschedulable"].as_array().unwrap().is_empty(), "{plan:#}");
    let nodes = new_nodes(&plan);
    assert_eq!(nodes.len(), 4, "the NodePool allows 4 nodes: {plan:#}");
    let count = |node: &Value, app: &str| {
        node["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p.as_str().unwrap().contains(&format!("/{app}-")))
            .count()
    };
    for node in nodes {
        // Required: at most one redis per node, and web only beside a redis pod.
        assert!(count(node, "redis") <= 1, "{node:#}");
        if count(node, "web") > 0 {
            assert_eq!(count(node, "redis"), 1, "{node:#}");
        }
        // Preferred: every node holds an api pod before any holds two.
        assert!(count(node, "api") >= 1, "{node:#}");
    }
}
