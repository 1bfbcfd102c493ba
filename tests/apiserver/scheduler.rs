//! Stand-ins for the controllers a real cluster runs beside Cartwright: kube-scheduler (binds pending pods
//! to Ready nodes that fit, and marks the rest `PodScheduled=False, reason=Unschedulable`) and the
//! ReplicaSet controller (keeps N pods of a template, recreating evicted ones). They act on the server's
//! store directly, as their own API clients would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cartwright_binpack::solver::PodSpec;
use cartwright_binpack::{Resources, Taint, TaintEffect, taints};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::ApiServer;

struct NodeInfo {
    name: String,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    free: Resources,
    allocatable: Resources,
    pods: Vec<BTreeMap<String, String>>,
}

fn resources(map: Option<&Value>) -> Resources {
    let pairs: Vec<(String, String)> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    Resources::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap_or_default()
}

fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn node_info(node: &Value) -> NodeInfo {
    let mut node_taints = Vec::new();
    for t in node.pointer("/spec/taints").and_then(Value::as_array).into_iter().flatten() {
        let effect: Result<TaintEffect, _> = t["effect"].as_str().unwrap_or_default().parse();
        if let Ok(effect) = effect
            && let Ok(taint) =
                Taint::new(t["key"].as_str().unwrap_or_default(), t["value"].as_str().unwrap_or(""), effect)
        {
            node_taints.push(taint);
        }
    }
    let labels: BTreeMap<String, String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let allocatable = resources(node.pointer("/status/allocatable"));
    NodeInfo {
        name: super::store::name_of(node).to_owned(),
        labels,
        taints: node_taints,
        free: allocatable.clone(),
        allocatable,
        pods: Vec::new(),
    }
}

fn spec_of(pod: &Value) -> Option<PodSpec> {
    let typed: Pod = serde_json::from_value(pod.clone()).ok()?;
    let labels = typed.metadata.labels.clone().unwrap_or_default();
    let name = format!("{}/{}", super::store::namespace_of(pod), super::store::name_of(pod));
    cartwright_api::manifests::pod_spec(&name, typed.spec.as_ref()?, labels).ok().map(|(p, _)| p)
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether placing `pod` on `node` keeps every hard topology spread constraint within its skew, counting
/// matching pods over the nodes the pod may use.
fn spread_allows(pod: &PodSpec, node: &NodeInfo, eligible: &[&NodeInfo]) -> bool {
    pod.topology_spread.iter().filter(|s| s.hard).all(|s| {
        let Some(domain) = node.labels.get(&s.topology_key) else { return false };
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for n in eligible {
            if let Some(d) = n.labels.get(&s.topology_key) {
                let matching = n.pods.iter().filter(|l| selects(&s.selector, l)).count() as i64;
                *counts.entry(d).or_default() += matching;
            }
        }
        let min = counts.values().copied().min().unwrap_or(0);
        counts.get(domain.as_str()).copied().unwrap_or(0) + 1 - min <= s.max_skew
    })
}

/// One scheduling round over every pending pod; returns how many were bound.
pub fn schedule_once(server: &ApiServer) -> usize {
    let all_nodes = server.list("", "nodes");
    // Spread domains come from every node, ready or not (kube-scheduler's default nodeTaintsPolicy
    // ignores the not-ready taint), so pods do not pile into the zone whose nodes are ready first.
    let mut domains: Vec<NodeInfo> = all_nodes.iter().map(node_info).collect();
    let mut nodes: Vec<NodeInfo> = all_nodes
        .iter()
        .filter(|n| is_ready(n) && n.pointer("/spec/unschedulable") != Some(&json!(true)))
        .filter(|n| n.pointer("/metadata/deletionTimestamp").is_none())
        .map(node_info)
        .collect();
    let pods = server.list("", "pods");
    for pod in &pods {
        let Some(node) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else { continue };
        let Some(spec) = spec_of(pod) else { continue };
        if let Some(n) = nodes.iter_mut().find(|n| n.name == node) {
            n.free = n.free.minus(&spec.requests);
            n.pods.push(spec.labels.clone());
        }
        if let Some(n) = domains.iter_mut().find(|n| n.name == node) {
            n.pods.push(spec.labels);
        }
    }
    let mut bound = 0;
    let mut pending: Vec<&Value> = pods
        .iter()
        .filter(|p| {
            p.pointer("/spec/nodeName").is_none() && p.pointer("/metadata/deletionTimestamp").is_none()
        })
        .collect();
    pending
        .sort_by_key(|p| p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).map(str::to_owned));
    for pod in pending {
        let Some(spec) = spec_of(pod) else { continue };
        let eligible: Vec<usize> = (0..nodes.len())
            .filter(|&i| spec.affinity.matches_labels(&nodes[i].labels))
            .filter(|&i| {
                let hard: Vec<Taint> = nodes[i]
                    .taints
                    .iter()
                    .filter(|t| t.effect != TaintEffect::PreferNoSchedule)
                    .cloned()
                    .collect();
                taints::tolerates_all(&spec.tolerations, &hard)
            })
            .collect();
        let eligible_refs: Vec<&NodeInfo> =
            domains.iter().filter(|n| spec.affinity.matches_labels(&n.labels)).collect();
        let choice = eligible
            .iter()
            .copied()
            .filter(|&i| spec.requests.fits_in(&nodes[i].free))
            .filter(|&i| {
                !spec.hostname_anti_affinity.iter().any(|s| nodes[i].pods.iter().any(|l| selects(s, l)))
            })
            // Required hostname pod affinity: beside a matching pod, or the first of a self-affine group.
            .filter(|&i| {
                spec.hostname_affinity.iter().all(|s| {
                    nodes[i].pods.iter().any(|l| selects(s, l))
                        || (selects(s, &spec.labels)
                            && !nodes.iter().any(|n| n.pods.iter().any(|l| selects(s, l))))
                })
            })
            .filter(|&i| spread_allows(&spec, &nodes[i], &eligible_refs))
            // Most allocated first (bin-packing scoring), then by name.
            .min_by_key(|&i| {
                let free = nodes[i].free.get(&cartwright_binpack::ResourceName::Cpu) * 1000
                    / nodes[i].allocatable.get(&cartwright_binpack::ResourceName::Cpu).max(1);
                (free, nodes[i].name.clone())
            });
        let (namespace, name) = (super::store::namespace_of(pod), super::store::name_of(pod));
        match choice {
            Some(i) => {
                let node = nodes[i].name.clone();
                let result = server.edit("", "pods", namespace, name, |p| {
                    p["spec"]["nodeName"] = json!(node);
                    p["status"] = json!({"phase": "Running", "conditions": [
                        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]});
                });
                if result.is_ok() {
                    nodes[i].free = nodes[i].free.minus(&spec.requests);
                    nodes[i].pods.push(spec.labels.clone());
                    if let Some(n) = domains.iter_mut().find(|n| n.name == node) {
                        n.pods.push(spec.labels.clone());
                    }
                    bound += 1;
                }
            }
            None => {
                let marked = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable");
                if !marked {
                    let message = format!("0/{} nodes are available", nodes.len());
                    let _ = server.edit("", "pods", namespace, name, |p| {
                        p["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                            "status": "False", "reason": "Unschedulable", "message": message}]});
                    });
                }
            }
        }
    }
    bound
}

/// Runs the scheduler stand-in every 100 ms until the returned task is aborted.
pub fn run(server: Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            schedule_once(&server);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The ReplicaSet controller stand-in: keeps `replicas` live pods of `template` (a pod object without a
/// name) labelled `app=<name>` in `namespace`, creating replacements for deleted or evicted ones and
/// deleting the newest when scaled down. The returned counter scales it.
pub fn replicas(
    server: Arc<ApiServer>,
    namespace: &str,
    name: &str,
    replicas: usize,
    template: Value,
) -> (tokio::task::JoinHandle<()>, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let desired = Arc::new(AtomicUsize::new(replicas));
    let scale = desired.clone();
    let task = tokio::spawn(async move {
        loop {
            let mut live: Vec<Value> = server
                .list("", "pods")
                .into_iter()
                .filter(|p| super::store::namespace_of(p) == namespace)
                .filter(|p| p.pointer("/metadata/labels/app").and_then(Value::as_str) == Some(&name))
                .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
                .collect();
            let want = desired.load(Ordering::Relaxed);
            for _ in live.len()..want {
                let mut pod = template.clone();
                pod["metadata"]["generateName"] = json!(format!("{name}-"));
                pod["metadata"]["labels"]["app"] = json!(name);
                pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{name}-rs"), "uid": "rs-uid", "controller": true}]);
                let _ = server.create("", "pods", &namespace, pod);
            }
            if live.len() > want {
                // Newest first, as the ReplicaSet controller prefers (names carry a rising counter).
                live.sort_by_key(|p| std::cmp::Reverse(super::store::name_of(p).to_owned()));
                for p in &live[..live.len() - want] {
                    let _ = server.delete("", "pods", &namespace, super::store::name_of(p));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, scale)
}
