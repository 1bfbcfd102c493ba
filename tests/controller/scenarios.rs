//! The controller's end-to-end scenarios.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Cluster, name, pod_template, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

fn general_pool(extra_requirements: Value) -> Value {
    let mut requirements = vec![
        json!({"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]}),
        json!({"key": "topology.kubernetes.io/zone", "operator": "In",
            "values": ["us-east-1a", "us-east-1b", "us-east-1c"]}),
    ];
    requirements.extend(extra_requirements.as_array().cloned().unwrap_or_default());
    json!({"template": {"spec": {"requirements": requirements,
        "nodeClassRef": {"group": "aws.cartwright.sh", "kind": "EC2NodeClass", "name": "default"}}}})
}

fn spread_template(cpu: &str, memory: &str, app: &str) -> Value {
    let mut t = pod_template(cpu, memory);
    t["spec"]["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app}}}]);
    t
}

fn label<'a>(object: &'a Value, key: &str) -> &'a str {
    object.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(Value::as_str).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_from_zero_spreads_a_200_replica_deployment_over_three_zones() {
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let _controller = cluster.controller(&[("--metrics-address", "127.0.0.1:18391")]);
    cluster.run_replicas("web", 200, spread_template("500m", "1Gi", "web"));
    wait_for("200 pods bound", MINUTE, || cluster.bound_pods() == 200).await;

    let nodes = cluster.nodes();
    let zone_of: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (name(n).to_owned(), label(n, "topology.kubernetes.io/zone").to_owned()))
        .collect();
    let mut per_zone: BTreeMap<String, usize> = BTreeMap::new();
    for p in cluster.pods() {
        let node = p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap();
        *per_zone.entry(zone_of[node].clone()).or_default() += 1;
    }
    assert_eq!(per_zone.len(), 3, "{per_zone:?}");
    let (min, max) = (per_zone.values().min().unwrap(), per_zone.values().max().unwrap());
    assert!(max - min <= 1, "zone spread within maxSkew 1: {per_zone:?}");
    for n in &nodes {
        assert_eq!(label(n, "karpenter.sh/nodepool"), "default");
        assert!(["c", "m", "r"].contains(&label(n, "karpenter.k8s.aws/instance-category")));
        assert!(n.pointer("/spec/providerID").and_then(Value::as_str).unwrap().starts_with("kwok://"));
    }
    wait_for("every NodeClaim initialized", MINUTE, || {
        cluster.claims().iter().all(|c| {
            c.pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|x| x["type"] == "Initialized" && x["status"] == "True")
        })
    })
    .await;
    for c in cluster.claims() {
        assert_eq!(c.pointer("/metadata/ownerReferences/0/kind"), Some(&json!("NodePool")));
        assert!(c.pointer("/status/nodeName").is_some());
        assert!(
            c.pointer("/metadata/finalizers")
                .unwrap()
                .as_array()
                .unwrap()
                .contains(&json!("cartwright.sh/termination"))
        );
    }
    cluster.assert_no_orphans_or_duplicates();
    // The requested CPU fills most of what was bought: 200 × 500m over the nodes' allocatable.
    let allocatable: f64 = nodes
        .iter()
        .map(|n| {
            let cpu = n.pointer("/status/allocatable/cpu").and_then(Value::as_str).unwrap();
            cpu.strip_suffix('m')
                .map_or_else(|| cpu.parse::<f64>().unwrap(), |m| m.parse::<f64>().unwrap() / 1000.0)
        })
        .sum();
    assert!(100.0 / allocatable > 0.7, "CPU utilisation {:.2}", 100.0 / allocatable);

    let metrics = reqwest_metrics("127.0.0.1:18391").await;
    assert!(metrics.contains("cartwright_nodeclaims_created_total{nodepool=\"default\"}"), "{metrics}");
    assert!(metrics.contains("cartwright_solve_duration_seconds_count"), "{metrics}");
    assert!(metrics.contains("cartwright_cluster_cost_per_hour_dollars{"), "{metrics}");
}

/// GET /metrics over a plain TCP connection (HTTP/1.0, so the server closes when done).
async fn reqwest_metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"), "{out}");
    out
}
