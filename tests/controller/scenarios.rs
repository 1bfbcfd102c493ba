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

/// Creates `count` pods `<prefix>-<i>` from `template` and waits until the scheduler stand-in has marked
/// them all Unschedulable.
async fn create_unschedulable_pods(cluster: &Cluster, prefix: &str, count: usize, template: Value) {
    for i in 0..count {
        let mut pod = template.clone();
        pod["metadata"]["name"] = json!(format!("{prefix}-{i}"));
        cluster.server.create("", "pods", "default", pod).unwrap();
    }
    wait_for("the pods marked unschedulable", MINUTE, || {
        cluster
            .pods()
            .iter()
            .all(|p| p.pointer("/status/conditions/0/reason") == Some(&json!("Unschedulable")))
    })
    .await;
}

/// Samples, every 50 ms for `samples` times, how many pods (with label app=`app`, when given) are Running
/// and not being deleted; resolves to the lowest count seen.
fn lowest_running(
    server: std::sync::Arc<crate::apiserver::ApiServer>,
    app: Option<&'static str>,
    samples: usize,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut lowest = usize::MAX;
        for _ in 0..samples {
            let running = server
                .list("", "pods")
                .iter()
                .filter(|p| app.is_none_or(|a| p.pointer("/metadata/labels/app") == Some(&json!(a))))
                .filter(|p| p.pointer("/status/phase") == Some(&json!("Running")))
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .count();
            lowest = lowest.min(running);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lowest
    })
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

    let count_events = |reason: &str, kind: &str| {
        cluster
            .server
            .list("events.k8s.io", "events")
            .iter()
            .filter(|e| e["reason"] == reason && e.pointer("/regarding/kind") == Some(&json!(kind)))
            .count()
    };
    // Events are written one by one after the plan; on a loaded machine the last may land after the pods
    // are bound.
    wait_for("every pod told which NodeClaim it waits for", MINUTE, || {
        count_events("Nominated", "Pod") == 200
    })
    .await;
    let events = cluster.server.list("events.k8s.io", "events");
    let count = |reason: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e["reason"] == reason && e.pointer("/regarding/kind") == Some(&json!(kind)))
            .count()
    };
    assert_eq!(count("Nominated", "Pod"), 200, "every pod is told which NodeClaim it waits for");
    let claim_events: Vec<&Value> = events.iter().filter(|e| e["reason"] != "Nominated").collect();
    assert_eq!(count("Launched", "NodeClaim"), nodes.len(), "{claim_events:#?}");

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

fn cpu_cores(quantity: &str) -> f64 {
    quantity
        .strip_suffix('m')
        .map_or_else(|| quantity.parse::<f64>().unwrap(), |m| m.parse::<f64>().unwrap() / 1000.0)
}

/// CPU capacity of the nodes of each NodePool.
fn capacity_by_pool(cluster: &Cluster) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for n in cluster.nodes() {
        let cpu = n.pointer("/status/capacity/cpu").and_then(Value::as_str).unwrap_or("0");
        *out.entry(label(&n, "karpenter.sh/nodepool").to_owned()).or_default() += cpu_cores(cpu);
    }
    out
}

/// Waits until the NodeClaim count has not changed for `quiet`.
async fn settle(cluster: &Cluster, quiet: Duration) {
    let mut last = (cluster.claims().len(), cluster.bound_pods());
    let mut since = tokio::time::Instant::now();
    let deadline = since + MINUTE;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = (cluster.claims().len(), cluster.bound_pods());
        if now != last {
            last = now;
            since = tokio::time::Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the cluster never settled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodepools_are_used_by_weight_and_their_limits_are_never_exceeded() {
    let mut cluster = Cluster::start().await;
    let mut preferred = general_pool(
        json!([{"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["m5"]}]),
    );
    preferred["weight"] = json!(50);
    preferred["limits"] = json!({"cpu": "8"});
    cluster.nodepool("preferred", preferred);
    let mut fallback = general_pool(json!([]));
    fallback["weight"] = json!(10);
    fallback["limits"] = json!({"cpu": "16"});
    cluster.nodepool("fallback", fallback);
    let _controller = cluster.controller(&[]);
    cluster.run_replicas("batch", 40, pod_template("1", "1Gi"));
    wait_for("some pods bound", MINUTE, || cluster.bound_pods() > 0).await;
    settle(&cluster, Duration::from_secs(4)).await;

    let capacity = capacity_by_pool(&cluster);
    assert!(capacity["preferred"] <= 8.0 && capacity["fallback"] <= 16.0, "limits exceeded: {capacity:?}");
    assert!(capacity["preferred"] >= 4.0, "the heavier pool is filled first: {capacity:?}");
    assert!(capacity["fallback"] > 0.0, "the rest spills to the lighter pool: {capacity:?}");
    for n in cluster.nodes() {
        if label(&n, "karpenter.sh/nodepool") == "preferred" {
            assert_eq!(label(&n, "karpenter.k8s.aws/instance-family"), "m5");
        }
    }
    let bound = cluster.bound_pods();
    let per_node = cluster.pods_per_node();
    let types: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| {
            format!(
                "{} {}: {} pods",
                label(n, "karpenter.sh/nodepool"),
                label(n, "node.kubernetes.io/instance-type"),
                per_node[name(n)]
            )
        })
        .collect();
    assert!((15..40).contains(&bound), "the limits leave some pods pending: {bound} bound on {types:?}");
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_during_the_batch_window_gets_no_capacity() {
    let cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let _controller = cluster.controller(&[("--batch-idle-duration", "2s"), ("--batch-max-duration", "5s")]);
    create_unschedulable_pods(&cluster, "job", 10, pod_template("1", "1Gi")).await;
    assert!(cluster.claims().is_empty(), "the batch is still open");
    for i in 0..4 {
        cluster.server.delete("", "pods", "default", &format!("job-{i}")).unwrap();
    }
    wait_for("the 6 remaining pods bound", MINUTE, || cluster.bound_pods() == 6).await;
    let planned: f64 = cluster
        .claims()
        .iter()
        .map(|c| cpu_cores(c.pointer("/spec/resources/requests/cpu").and_then(Value::as_str).unwrap_or("0")))
        .sum();
    assert!((planned - 6.0).abs() < 1e-9, "claims were planned for the 6 live pods only: {planned} cores");
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_restarted_mid_provisioning_neither_duplicates_nor_orphans() {
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let slow = [("--kwok-ready-after", "4s")];
    let mut first = cluster.controller(&slow);
    cluster.run_replicas("web", 60, pod_template("500m", "1Gi"));
    wait_for("the first NodeClaim", MINUTE, || !cluster.claims().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().await.unwrap();
    let before: Vec<String> = cluster.claims().iter().map(|c| name(c).to_owned()).collect();
    assert_eq!(cluster.bound_pods(), 0, "killed while the nodes were still starting");
    let _second = cluster.controller(&slow);
    wait_for("60 pods bound", MINUTE, || cluster.bound_pods() == 60).await;
    settle(&cluster, Duration::from_secs(2)).await;
    let after: Vec<String> = cluster.claims().iter().map(|c| name(c).to_owned()).collect();
    for claim in &before {
        assert!(after.contains(claim), "{claim} was adopted after the restart");
    }
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_nodeclaim_drains_its_node_within_the_pod_disruption_budget() {
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let _controller = cluster.controller(&[]);
    cluster.pdb("db", 5);
    cluster.run_replicas("db", 6, pod_template("1", "2Gi"));
    wait_for("6 pods bound", MINUTE, || cluster.bound_pods() == 6).await;
    let per_node = cluster.pods_per_node();
    let (victim, on_victim) = per_node.iter().max_by_key(|(_, n)| **n).map(|(k, v)| (k.clone(), *v)).unwrap();
    assert!(on_victim >= 2, "a node with several pods to drain: {per_node:?}");

    // Watch the running count while the node drains.
    let lowest = lowest_running(cluster.server.clone(), None, 300);
    cluster.server.delete("cartwright.sh", "nodeclaims", "", &victim).unwrap();
    wait_for("the NodeClaim and its node gone", MINUTE, || {
        !cluster.claims().iter().any(|c| name(c) == victim)
            && !cluster.nodes().iter().any(|n| name(n) == victim)
    })
    .await;
    wait_for("6 pods bound again", MINUTE, || cluster.bound_pods() == 6).await;
    let lowest = lowest.await.unwrap();
    assert!(lowest >= 5, "the budget kept 5 pods running; the lowest seen was {lowest}");
    let evictions = cluster.server.requests(&axum::http::Method::POST, "/eviction");
    assert!(
        evictions > on_victim,
        "some evictions were refused and retried ({evictions} for {on_victim} pods)"
    );
    let blocked = cluster
        .server
        .list("events.k8s.io", "events")
        .iter()
        .filter(|e| e["reason"] == "DisruptionBlocked")
        .count();
    assert!(blocked >= 1, "the refused eviction is reported as an event on the pod");
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_leader_acts_and_the_other_takes_over() {
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let lease = [("--leader-election-namespace", "default"), ("--lease-duration", "2s")];
    let mut a = cluster.controller(&[lease[0], lease[1], ("--identity", "replica-a")]);
    wait_for("replica-a holds the lease", MINUTE, || {
        cluster.server.get("coordination.k8s.io", "leases", "default", "cartwright-leader-election").is_some()
    })
    .await;
    let _b = cluster.controller(&[lease[0], lease[1], ("--identity", "replica-b")]);
    cluster.run_replicas("web", 30, pod_template("500m", "1Gi"));
    wait_for("30 pods bound", MINUTE, || cluster.bound_pods() == 30).await;
    settle(&cluster, Duration::from_secs(2)).await;
    let holder = |c: &Cluster| {
        c.server
            .get("coordination.k8s.io", "leases", "default", "cartwright-leader-election")
            .and_then(|l| l.pointer("/spec/holderIdentity").and_then(Value::as_str).map(str::to_owned))
    };
    assert_eq!(holder(&cluster).as_deref(), Some("replica-a"));
    cluster.assert_no_orphans_or_duplicates();

    a.kill().await.unwrap();
    cluster.run_replicas("api", 20, pod_template("500m", "1Gi"));
    wait_for("50 pods bound after the takeover", MINUTE, || cluster.bound_pods() == 50).await;
    assert_eq!(holder(&cluster).as_deref(), Some("replica-b"));
    settle(&cluster, Duration::from_secs(2)).await;
    cluster.assert_no_orphans_or_duplicates();
    // Everything both replicas asked of the API server (leases included) is what the chart grants.
    let checked = crate::deploy::rbac::assert_chart_allows(&cluster.server.request_log(), "kwok", "default");
    assert!(checked > 50, "{checked} requests checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_and_dropped_watches_delay_but_do_not_break_provisioning() {
    use axum::http::Method;

    use crate::apiserver::Fault;
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    cluster.server.inject(Fault {
        method: Some(Method::POST),
        path_contains: "/nodeclaims".into(),
        status: 500,
        count: 2,
    });
    cluster.server.inject(Fault {
        method: Some(Method::PATCH),
        path_contains: "/nodeclaims/".into(),
        status: 503,
        count: 2,
    });
    cluster.server.inject(Fault {
        method: Some(Method::GET),
        path_contains: "/pods?".into(),
        status: 429,
        count: 2,
    });
    let _controller = cluster.controller(&[]);
    cluster.run_replicas("web", 40, pod_template("500m", "1Gi"));
    wait_for("a NodeClaim despite the failed creations", MINUTE, || !cluster.claims().is_empty()).await;
    cluster.server.compact();
    cluster.server.drop_watches();
    wait_for("40 pods bound", MINUTE, || cluster.bound_pods() == 40).await;
    settle(&cluster, Duration::from_secs(2)).await;
    assert_eq!(cluster.server.faults_injected(), 6, "every injected fault was hit");
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_with_a_kubeconfig_shows_what_would_launch_and_writes_nothing() {
    let cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    create_unschedulable_pods(&cluster, "api", 5, pod_template("2", "4Gi")).await;
    let writes_before = cluster.server.requests(&axum::http::Method::POST, "/");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartwright"))
        .args(["plan", "--output", "json", "--kubeconfig", cluster.kubeconfig.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let planned: usize =
        plan["new_nodes"].as_array().unwrap().iter().map(|n| n["pods"].as_array().unwrap().len()).sum();
    assert_eq!(planned, 5, "{plan:#}");
    assert!(plan["cost_per_hour"].as_f64().unwrap() > 0.0);
    assert!(cluster.claims().is_empty() && cluster.nodes().is_empty(), "a dry run creates nothing");
    assert_eq!(cluster.server.requests(&axum::http::Method::POST, "/"), writes_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_that_times_out_is_replaced_on_another_offering() {
    use axum::http::Method;

    use crate::apiserver::Fault;
    let mut cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    // The kwok provider cannot create Nodes: every launch fails until the fault is cleared.
    cluster.server.inject(Fault {
        method: Some(Method::POST),
        path_contains: "/api/v1/nodes".into(),
        status: 500,
        count: 10_000,
    });
    let _controller =
        cluster.controller(&[("--launch-timeout", "2s"), ("--metrics-address", "127.0.0.1:18392")]);
    cluster.run_replicas("web", 4, pod_template("1", "2Gi"));
    wait_for("a NodeClaim", MINUTE, || !cluster.claims().is_empty()).await;
    let first = cluster.claims()[0].clone();
    let offering = |c: &Value| {
        ["node.kubernetes.io/instance-type", "topology.kubernetes.io/zone", "karpenter.sh/capacity-type"]
            .map(|k| label(c, k).to_owned())
    };
    let first_offering = offering(&first);
    wait_for("the timed-out NodeClaim replaced", MINUTE, || {
        let claims = cluster.claims();
        !claims.iter().any(|c| name(c) == name(&first))
            && claims.iter().any(|c| offering(c) != first_offering)
    })
    .await;
    let metrics = reqwest_metrics("127.0.0.1:18392").await;
    assert!(
        metrics.contains("cartwright_nodeclaims_terminated_total{reason=\"launch_timeout\"}"),
        "{metrics}"
    );
    cluster.server.clear_faults();
    wait_for("4 pods bound once launches work", MINUTE, || cluster.bound_pods() == 4).await;
    settle(&cluster, Duration::from_secs(2)).await;
    cluster.assert_no_orphans_or_duplicates();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_terminates_its_nodeclaim_and_its_pods_move() {
    let mut cluster = Cluster::start().await;
    let mut pool = general_pool(json!([]));
    pool["template"]["spec"]["taints"] =
        json!([{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]);
    cluster.nodepool("default", pool);
    let _controller = cluster.controller(&[]);
    let mut template = pod_template("1", "2Gi");
    template["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]);
    cluster.run_replicas("web", 3, template);
    wait_for("3 pods bound", MINUTE, || cluster.bound_pods() == 3).await;
    // Registration (labels, finalizer) is the controller's next pass after the node appears; a conflicting
    // write (kwok readying the node) delays it by a pass.
    wait_for("the node registered", MINUTE, || {
        cluster.nodes().iter().all(|n| {
            n.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| f.contains(&json!("cartwright.sh/termination")))
        })
    })
    .await;
    let node = cluster.nodes()[0].clone();
    let taints = node.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
    assert!(
        taints.iter().any(|t| t["key"] == "dedicated"),
        "the NodePool's taint is on the node: {taints:?}"
    );
    let finalizers =
        node.pointer("/metadata/finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
    assert!(finalizers.contains(&json!("cartwright.sh/termination")));
    let victim = name(&node).to_owned();
    cluster.server.delete("", "nodes", "", &victim).unwrap();
    wait_for("the node and its NodeClaim gone", MINUTE, || {
        !cluster.nodes().iter().any(|n| name(n) == victim)
            && !cluster.claims().iter().any(|c| name(c) == victim)
    })
    .await;
    wait_for("3 pods bound elsewhere", MINUTE, || cluster.bound_pods() == 3).await;
    settle(&cluster, Duration::from_secs(2)).await;
    cluster.assert_no_orphans_or_duplicates();
}

fn hourly_cost(cluster: &Cluster) -> f64 {
    let catalog = cartwright_binpack::Catalog::embedded("us-east-1", &Default::default()).unwrap();
    cluster
        .nodes()
        .iter()
        .map(|n| {
            let t = catalog.get(label(n, "node.kubernetes.io/instance-type")).unwrap();
            let ct = label(n, "karpenter.sh/capacity-type");
            let zone = label(n, "topology.kubernetes.io/zone");
            t.offerings.iter().find(|o| o.zone == zone && o.capacity_type.as_str() == ct).unwrap().price.usd()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_scale_in_the_cluster_shrinks_honouring_pdbs_and_do_not_disrupt() {
    let mut cluster = Cluster::start().await;
    let mut pool = general_pool(json!([]));
    pool["disruption"] = json!({"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1s",
        "budgets": [{"nodes": "50%"}]});
    cluster.nodepool("default", pool);
    let _controller =
        cluster.controller(&[("--disruption-interval", "1s"), ("--disruption-validation", "1s")]);
    cluster.pdb("web", 8);
    let mut pinned = pod_template("250m", "256Mi");
    pinned["metadata"]["name"] = json!("batch-job");
    pinned["metadata"]["annotations"] = json!({"karpenter.sh/do-not-disrupt": "true"});
    // On a small type of its own choosing: the node it pins is cheap whatever batch it lands in, so the
    // cost floor it leaves does not depend on timing.
    pinned["spec"]["nodeSelector"] = json!({"node.kubernetes.io/instance-type": "m5.large"});
    cluster.server.create("", "pods", "default", pinned).unwrap();
    let web = cluster.run_replicas("web", 100, pod_template("500m", "512Mi"));
    wait_for("101 pods bound", MINUTE, || cluster.bound_pods() == 101).await;
    settle(&cluster, Duration::from_secs(2)).await;
    let before = hourly_cost(&cluster);
    let nodes_before = cluster.nodes().len();
    let pinned = cluster.server.get("", "pods", "default", "batch-job").unwrap();
    let pinned_node = pinned.pointer("/spec/nodeName").and_then(Value::as_str).unwrap().to_owned();

    // Scale in and watch the running web pods while the cluster shrinks.
    web.store(10, std::sync::atomic::Ordering::Relaxed);
    wait_for("10 web pods left", MINUTE, || cluster.pods().len() == 11).await;
    let lowest = lowest_running(cluster.server.clone(), Some("web"), 400);
    wait_for("the cluster to shrink", 2 * MINUTE, || {
        cluster.bound_pods() == 11
            && cluster.nodes().len() < nodes_before
            && hourly_cost(&cluster) < before * 0.6
    })
    .await;
    settle(&cluster, Duration::from_secs(3)).await;
    let after = hourly_cost(&cluster);
    eprintln!(
        "scale-in: {nodes_before} nodes ${before:.3}/h -> {} nodes ${after:.3}/h",
        cluster.nodes().len()
    );
    assert!(after < before * 0.6, "cost fell from ${before:.3}/h to ${after:.3}/h");
    let still = cluster.server.get("", "pods", "default", "batch-job").unwrap();
    assert_eq!(
        still["metadata"]["uid"], pinned["metadata"]["uid"],
        "the do-not-disrupt pod was never evicted"
    );
    assert!(cluster.nodes().iter().any(|n| name(n) == pinned_node), "its node stays");
    assert!(lowest.await.unwrap() >= 8, "the PDB kept 8 web pods running");
    wait_for("11 pods bound", MINUTE, || cluster.bound_pods() == 11).await;
    cluster.assert_no_orphans_or_duplicates();
    // Evictions, taints, node and NodeClaim deletions, events: all granted by the chart's RBAC.
    crate::deploy::rbac::assert_chart_allows(&cluster.server.request_log(), "kwok", "kube-system");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_node_names_what_keeps_a_node() {
    let cluster = Cluster::start().await;
    cluster.nodepool("default", general_pool(json!([])));
    let _controller =
        cluster.controller(&[("--disruption-interval", "1s"), ("--disruption-validation", "1s")]);
    let mut pinned = pod_template("500m", "512Mi");
    pinned["metadata"]["name"] = json!("batch-job");
    pinned["metadata"]["annotations"] = json!({"karpenter.sh/do-not-disrupt": "true"});
    cluster.server.create("", "pods", "default", pinned).unwrap();
    wait_for("the pod bound", MINUTE, || cluster.bound_pods() == 1).await;
    wait_for("the NodeClaim initialized", MINUTE, || {
        cluster.claims().iter().all(|c| {
            c.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Initialized"))
        })
    })
    .await;
    let node = name(&cluster.nodes()[0]).to_owned();
    let explain = |node: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartwright"))
            .args(["explain", "node", node, "--kubeconfig", cluster.kubeconfig.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = tokio::task::block_in_place(|| explain(&node));
    assert!(ok, "{text}");
    assert!(
        text.contains("stays") && text.contains("pod default/batch-job has a do-not-disrupt annotation"),
        "{text}"
    );
    let (ok, text) = tokio::task::block_in_place(|| explain("no-such-node"));
    assert!(!ok && text.contains("node no-such-node not found"), "{text}");
    // The controller says the same on the NodeClaim, as the `Disruptable` condition.
    wait_for("the Disruptable condition", MINUTE, || {
        cluster.claims().iter().any(|c| {
            c.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().any(|x| {
                x["type"] == "Disruptable"
                    && x["status"] == "False"
                    && x["message"].as_str().is_some_and(|m| m.contains("do-not-disrupt"))
            })
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nodes_are_replaced_before_they_drain() {
    let mut cluster = Cluster::start().await;
    let mut pool = general_pool(json!([]));
    pool["template"]["spec"]["expireAfter"] = json!("8s");
    pool["disruption"] = json!({"consolidateAfter": "Never"});
    cluster.nodepool("default", pool);
    let _controller =
        cluster.controller(&[("--disruption-interval", "1s"), ("--disruption-validation", "1s")]);
    cluster.pdb("web", 2);
    cluster.run_replicas("web", 3, pod_template("1", "2Gi"));
    wait_for("3 pods bound", MINUTE, || cluster.bound_pods() == 3).await;
    let first: Vec<String> = cluster.nodes().iter().map(|n| name(n).to_owned()).collect();
    let lowest = lowest_running(cluster.server.clone(), Some("web"), 300);
    wait_for("the first nodes replaced", MINUTE, || {
        let nodes = cluster.nodes();
        !nodes.is_empty()
            && nodes.iter().all(|n| !first.contains(&name(n).to_owned()))
            && cluster.bound_pods() == 3
    })
    .await;
    let claims = cluster.claims();
    assert!(
        claims.iter().all(|c| c["spec"]["expireAfter"] == "8s"),
        "claims carry the NodePool's expireAfter"
    );
    let lowest = lowest.await.unwrap();
    assert!(lowest >= 2, "with a replacement ready first, the PDB (minAvailable 2) holds: lowest {lowest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_drift_when_their_nodepool_changes_and_are_replaced_one_by_one() {
    let mut cluster = Cluster::start().await;
    let mut pool = general_pool(json!([]));
    // Consolidation held off (consolidateAfter: Never): only drift replaces nodes here.
    pool["disruption"] = json!({"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "Never",
        "budgets": [{"nodes": "1"}]});
    cluster.nodepool("default", pool);
    let _controller =
        cluster.controller(&[("--disruption-interval", "1s"), ("--disruption-validation", "1s")]);
    cluster.run_replicas("web", 12, pod_template("1500m", "1Gi"));
    wait_for("12 pods bound", MINUTE, || cluster.bound_pods() == 12).await;
    settle(&cluster, Duration::from_secs(2)).await;
    let before: Vec<String> = cluster.nodes().iter().map(|n| name(n).to_owned()).collect();
    assert!(before.len() >= 2, "{before:?}");
    let claims_before = cluster.claims();
    assert!(
        claims_before
            .iter()
            .all(|c| c.pointer("/metadata/annotations/cartwright.sh~1nodepool-hash").is_some()),
        "every NodeClaim carries its NodePool's template hash"
    );

    // A new label on the template: every node drifts, and is replaced (one at a time, the budget).
    cluster
        .server
        .edit("cartwright.sh", "nodepools", "", "default", |p| {
            p["spec"]["template"]["metadata"] = json!({"labels": {"team": "web"}});
        })
        .unwrap();
    let most_nodes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let server = cluster.server.clone();
        let most = most_nodes.clone();
        tokio::spawn(async move {
            loop {
                let draining = server
                    .list("", "nodes")
                    .iter()
                    .filter(|n| {
                        n.pointer("/spec/taints")
                            .and_then(Value::as_array)
                            .is_some_and(|t| t.iter().any(|t| t["key"] == "cartwright.sh/disrupted"))
                    })
                    .count();
                most.fetch_max(draining, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_for("every node replaced by one with the new label", 3 * MINUTE, || {
        let nodes = cluster.nodes();
        !nodes.is_empty()
            && nodes.iter().all(|n| label(n, "team") == "web")
            && nodes.iter().all(|n| !before.contains(&name(n).to_owned()))
            && cluster.bound_pods() == 12
    })
    .await;
    watcher.abort();
    assert!(most_nodes.load(std::sync::atomic::Ordering::Relaxed) <= 1, "the budget of one node held");
    settle(&cluster, Duration::from_secs(2)).await;
    cluster.assert_no_orphans_or_duplicates();
    crate::deploy::rbac::assert_chart_allows(&cluster.server.request_log(), "kwok", "kube-system");
}

/// The NodeClaims launched for the headroom of `owner` (an HPA or CapacityBuffer, `namespace/name`).
fn claims_for(cluster: &Cluster, owner: &str) -> Vec<Value> {
    cluster
        .claims()
        .into_iter()
        .filter(|c| c.pointer("/metadata/annotations/cartwright.sh~1headroom-for") == Some(&json!(owner)))
        .collect()
}

/// The HPA controller's status write: `utilization` % cpu over `current` pods, wanting `desired`.
fn hpa_status(cluster: &Cluster, current: u32, desired: u32, utilization: u32) {
    cluster
        .server
        .edit("autoscaling", "horizontalpodautoscalers", "default", "web", |h| {
            h["status"] = json!({"currentReplicas": current, "desiredReplicas": desired, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": utilization}}}]});
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_hpa_metric_gets_headroom_nodes_before_the_new_replicas_appear() {
    let mut cluster = Cluster::start().await;
    // Empty nodes go at once: only the headroom they hold keeps the headroom nodes.
    let mut pool = general_pool(json!([]));
    pool["disruption"] = json!({"consolidationPolicy": "WhenEmpty", "consolidateAfter": "0s"});
    cluster.nodepool("default", pool);
    let mut template = pod_template("1", "1Gi");
    template["metadata"]["labels"]["app"] = json!("web");
    let deployment = json!({"metadata": {"name": "web"}, "spec": {"replicas": 4,
        "selector": {"matchLabels": {"app": "web"}}, "template": template}});
    cluster.server.create("apps", "deployments", "default", deployment).unwrap();
    let scale = cluster.run_replicas("web", 4, template);
    // Disruption decisions hold only if they still stand 2 s later (15 s by default): new replicas bind
    // within that, so an emptied headroom node is not taken from under them.
    let _controller = cluster.controller(&[
        ("--headroom-horizon", "60s"),
        ("--disruption-interval", "500ms"),
        ("--disruption-validation", "2s"),
    ]);
    wait_for("4 pods bound", MINUTE, || cluster.bound_pods() == 4).await;
    let before: Vec<String> = cluster.claims().iter().map(|c| name(c).to_owned()).collect();

    // The HPA: cpu target 50 %, 2..12 replicas, no behavior (the legacy double-or-four limit).
    let hpa = json!({"metadata": {"name": "web"}, "spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": 2, "maxReplicas": 12,
        "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}});
    cluster.server.create("autoscaling", "horizontalpodautoscalers", "default", hpa).unwrap();
    // Load rises; the HPA has not scaled yet (its tolerance, its sync): only its status moves.
    for utilization in [50, 55, 60, 65, 70] {
        hpa_status(&cluster, 4, 4, utilization);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let headroom_claims = || claims_for(&cluster, "default/web");
    wait_for("NodeClaims launched for the HPA's headroom", MINUTE, || !headroom_claims().is_empty()).await;
    wait_for("the headroom nodes registered", MINUTE, || {
        let nodes: Vec<String> = cluster.nodes().iter().map(|n| name(n).to_owned()).collect();
        headroom_claims().iter().all(|c| nodes.iter().any(|n| n == name(c)))
    })
    .await;
    assert_eq!(cluster.pods().len(), 4, "the headroom came before any new replica");
    // Empty of real pods, they are kept for the headroom they hold, and their NodeClaims say so.
    wait_for("the headroom NodeClaims' Disruptable condition", MINUTE, || {
        let claims = headroom_claims();
        !claims.is_empty()
            && claims.iter().all(|c| {
                c.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|conditions| {
                    conditions.iter().any(|k| {
                        k["type"] == "Disruptable"
                            && k["message"].as_str().is_some_and(|m| {
                                m.starts_with("holds headroom for the predicted scale-up of HPA default/web")
                            })
                    })
                })
            })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!headroom_claims().is_empty(), "emptiness left the headroom nodes alone");
    assert!(before.iter().all(|c| !headroom_claims().iter().any(|h| name(h) == c)));

    // The HPA acts: 12 replicas. They land on the capacity already there; nothing new is launched.
    let claims_then: Vec<String> = cluster.claims().iter().map(|c| name(c).to_owned()).collect();
    cluster
        .server
        .edit("apps", "deployments", "default", "web", |d| d["spec"]["replicas"] = json!(12))
        .unwrap();
    scale.store(12, std::sync::atomic::Ordering::Relaxed);
    hpa_status(&cluster, 12, 12, 30);
    wait_for("12 pods bound", MINUTE, || cluster.bound_pods() == 12).await;
    settle(&cluster, Duration::from_secs(3)).await;
    let claims_now: Vec<String> = cluster.claims().iter().map(|c| name(c).to_owned()).collect();
    // (A headroom node no new replica landed on is empty once the prediction is met, and may go.)
    assert!(
        claims_now.iter().all(|c| claims_then.contains(c)),
        "no NodeClaim was needed after the scale-up: {claims_then:?} then, {claims_now:?} now"
    );
    let headroom_nodes: Vec<String> = headroom_claims().iter().map(|c| name(c).to_owned()).collect();
    let on_headroom = cluster
        .pods()
        .iter()
        .filter(|p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| headroom_nodes.iter().any(|h| h == n))
        })
        .count();
    assert!(on_headroom > 0, "new replicas run on the headroom nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_buffer_keeps_spare_nodes_until_it_is_deleted() {
    let mut cluster = Cluster::start().await;
    let mut pool = general_pool(json!([]));
    pool["disruption"] = json!({"consolidationPolicy": "WhenEmpty", "consolidateAfter": "0s"});
    cluster.nodepool("default", pool);
    let mut template = pod_template("2", "2Gi");
    template["metadata"]["labels"]["app"] = json!("api");
    let deployment = json!({"metadata": {"name": "api"}, "spec": {"replicas": 2,
        "selector": {"matchLabels": {"app": "api"}}, "template": template}});
    cluster.server.create("apps", "deployments", "default", deployment).unwrap();
    cluster.run_replicas("api", 2, template);
    let _controller =
        cluster.controller(&[("--disruption-interval", "500ms"), ("--disruption-validation", "0s")]);
    wait_for("2 pods bound", MINUTE, || cluster.bound_pods() == 2).await;

    // Three spare chunks shaped like the Deployment's pods (2 vCPU each).
    let buffer = json!({"metadata": {"name": "spare"}, "spec": {
        "scalableRef": {"apiGroup": "apps", "kind": "Deployment", "name": "api"}, "replicas": 3}});
    cluster.server.create("autoscaling.x-k8s.io", "capacitybuffers", "default", buffer).unwrap();
    let buffer_claims = || claims_for(&cluster, "default/spare");
    wait_for("NodeClaims for the buffer", MINUTE, || !buffer_claims().is_empty()).await;
    wait_for("the buffer nodes initialized", MINUTE, || {
        let nodes: Vec<String> = cluster.nodes().iter().map(|n| name(n).to_owned()).collect();
        buffer_claims().iter().all(|c| nodes.iter().any(|n| n == name(c)))
    })
    .await;
    // The nodes' spare room holds the three chunks (a chunk may sit in room beside the Deployment's own
    // pods), and emptiness leaves the buffer's nodes alone.
    let spare = || {
        let allocatable: f64 = cluster
            .nodes()
            .iter()
            .filter_map(|n| n.pointer("/status/allocatable/cpu").and_then(Value::as_str).map(cpu_cores))
            .sum();
        allocatable - 2.0 * 2.0
    };
    wait_for("room for 3 × 2 vCPU beside the 2 pods", MINUTE, || spare() >= 6.0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!buffer_claims().is_empty(), "empty nodes holding the buffer stay");
    assert_eq!(cluster.pods().len(), 2, "no pod was created for the buffer");

    // Without the buffer they are empty, and go.
    cluster.server.delete("autoscaling.x-k8s.io", "capacitybuffers", "default", "spare").unwrap();
    wait_for("the buffer's nodes removed", MINUTE, || buffer_claims().is_empty()).await;
    assert_eq!(cluster.bound_pods(), 2);
}
