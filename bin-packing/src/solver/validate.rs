//! An independent check of a plan against its problem.
//!
//! It shares no code with the algorithms beyond the domain model: it rebuilds every node's concrete labels
//! and sums every node's pods, then asks the plain questions kube-scheduler and the cloud would ask. Tests
//! run it on every plan; benchmarks run it on every solver's output.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels;
use crate::resources::Resources;
use crate::taints::first_untolerated;

use super::plan::{LaunchOption, Plan};
use super::problem::{NodePoolTemplate, Problem};

/// Every rule the plan breaks, as sentences. Empty means the plan is valid.
pub fn violations(problem: &Problem, plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    let pods: BTreeMap<&str, &super::problem::PodSpec> =
        problem.pods.iter().map(|p| (p.name.as_str(), p)).collect();

    // Every pod exactly once.
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mentioned = plan
        .placements
        .iter()
        .map(|p| p.pod.as_str())
        .chain(plan.new_nodes.iter().flat_map(|n| n.pods.iter().map(String::as_str)))
        .chain(plan.unschedulable.iter().map(|u| u.pod.as_str()));
    for name in mentioned {
        *seen.entry(name).or_default() += 1;
        if !pods.contains_key(name) {
            out.push(format!("pod {name} is not in the problem"));
        }
    }
    for name in pods.keys() {
        match seen.get(name).copied().unwrap_or(0) {
            1 => {}
            n => out.push(format!("pod {name} appears {n} times in the plan")),
        }
    }

    // Existing nodes: labels, taints, room.
    let mut load: BTreeMap<&str, Resources> = BTreeMap::new();
    for placement in &plan.placements {
        let Some(node) = problem.existing.iter().find(|n| n.name == placement.node) else {
            out.push(format!("pod {} is placed on unknown node {}", placement.pod, placement.node));
            continue;
        };
        let Some(pod) = pods.get(placement.pod.as_str()) else { continue };
        if !pod.affinity.matches_labels(&node.labels) {
            out.push(format!("pod {} does not match the labels of node {}", pod.name, node.name));
        }
        if let Some(t) = first_untolerated(&pod.tolerations, &node.taints) {
            out.push(format!("pod {} does not tolerate taint {t} of node {}", pod.name, node.name));
        }
        load.entry(node.name.as_str()).or_insert_with(|| node.requested.clone()).add_assign(&pod.requests);
    }
    let mut on_node: BTreeMap<&str, Vec<&super::problem::PodSpec>> = BTreeMap::new();
    for placement in &plan.placements {
        if let Some(pod) = pods.get(placement.pod.as_str()) {
            on_node.entry(placement.node.as_str()).or_default().push(pod);
        }
    }
    for (name, placed) in &on_node {
        let Some(node) = problem.existing.iter().find(|n| n.name == *name) else { continue };
        if let Some(why) = anti_affinity_violation(placed, &node.pod_labels) {
            out.push(format!("node {name}: {why}"));
        }
        for pod in placed {
            if node.repelled.iter().any(|s| s.iter().all(|(k, v)| pod.labels.get(k) == Some(v))) {
                out.push(format!("node {name}: pod {} joins a pod whose anti-affinity forbids it", pod.name));
            }
        }
    }
    for (name, used) in &load {
        let node = problem.existing.iter().find(|n| n.name == *name).expect("checked above");
        if !used.fits_in(&node.allocatable) {
            out.push(format!("node {name} is overcommitted: {used} requested of {}", node.allocatable));
        }
    }

    // New nodes: the offering, the labels, the pods, the room, the limits.
    let mut charged: BTreeMap<&str, (Resources, i64)> = BTreeMap::new();
    let mut cost = 0u64;
    for (i, node) in plan.new_nodes.iter().enumerate() {
        let Some(pool) = problem.nodepools.iter().find(|p| p.name == node.nodepool) else {
            out.push(format!("new node {i} names unknown NodePool {}", node.nodepool));
            continue;
        };
        cost += node.launch.price.0;
        if node.alternatives.first() != Some(&node.launch) {
            out.push(format!("new node {i}: the launch offering is not the first (cheapest) alternative"));
        }
        if node.alternatives.windows(2).any(|w| w[0].price > w[1].price) {
            out.push(format!("new node {i}: alternatives are not sorted by price"));
        }
        let mut max_capacity = Resources::new();
        for option in &node.alternatives {
            match check_option(problem, pool, node, option) {
                Ok(capacity) => max_capacity.max_assign(&capacity),
                Err(why) => {
                    out.push(format!("new node {i} as {}/{}: {why}", option.instance_type, option.zone))
                }
            }
        }
        let entry = charged.entry(pool.name.as_str()).or_default();
        entry.0.add_assign(&max_capacity);
        entry.1 += 1;
    }
    for (name, (capacity, count)) in &charged {
        let pool = problem.nodepools.iter().find(|p| p.name == *name).expect("checked above");
        if pool.remaining.nodes.is_some_and(|n| *count > n) {
            out.push(format!(
                "NodePool {name}: {count} new nodes exceed the {} left",
                pool.remaining.nodes.unwrap_or(0)
            ));
        }
        for (dim, left) in &pool.remaining.resources {
            if capacity.get(dim) > *left {
                out.push(format!(
                    "NodePool {name}: new nodes may use {} {dim}, more than the {left} left",
                    capacity.get(dim)
                ));
            }
        }
    }

    // Topology spread: zones within maxSkew; per node at most maxSkew pods of a hostname-spread group.
    for (selector, skew, max) in super::spread::skews(problem, plan) {
        if skew > max {
            out.push(format!(
                "topology spread of pods matching {selector}: skew {skew} exceeds maxSkew {max}"
            ));
        }
    }
    out.extend(zone_affinity_violations(problem, plan, &pods));
    out.extend(hostname_affinity_violations(problem, plan, &pods));
    let node_groups = plan
        .new_nodes
        .iter()
        .map(|n| {
            (
                format!("new node for {}", n.pods.first().map_or("", String::as_str)),
                n.pods.clone(),
                Vec::new(),
            )
        })
        .chain(on_node.iter().map(|(name, pods)| {
            let existing = problem
                .existing
                .iter()
                .find(|n| n.name == *name)
                .map(|n| n.pod_labels.clone())
                .unwrap_or_default();
            (format!("node {name}"), pods.iter().map(|p| p.name.clone()).collect(), existing)
        }));
    for (node, names, existing) in node_groups {
        let here: Vec<&super::problem::PodSpec> =
            names.iter().filter_map(|n| pods.get(n.as_str()).copied()).collect();
        for pod in &here {
            for spread in pod
                .topology_spread
                .iter()
                .filter(|s| s.topology_key == labels::HOSTNAME && s.enforced_for(&pod.labels))
            {
                let n = here
                    .iter()
                    .filter(|p| super::problem::selector_matches(&spread.selector, &p.labels))
                    .count()
                    + existing
                        .iter()
                        .filter(|l| super::problem::selector_matches(&spread.selector, l))
                        .count();
                if n as i64 > spread.max_skew {
                    out.push(format!(
                        "{node}: {n} pods matching {:?} exceed hostname maxSkew {}",
                        spread.selector, spread.max_skew
                    ));
                }
            }
        }
    }

    if plan.cost.0 != cost {
        out.push(format!("plan cost {} is not the sum of its launches {cost}", plan.cost.0));
    }
    if let Some(bound) = plan.lower_bound
        && bound.price > plan.cost
    {
        out.push(format!("lower bound {} exceeds the cost {}", bound.price, plan.cost));
    }
    out
}

/// Checks one launch option of a new node; returns the type's capacity (for limits).
fn check_option(
    problem: &Problem,
    pool: &NodePoolTemplate,
    node: &super::plan::NewNode,
    option: &LaunchOption,
) -> Result<Resources, String> {
    let t = problem.catalog.get(&option.instance_type).ok_or("unknown instance type")?;
    let offering = t
        .offerings
        .iter()
        .find(|o| o.zone == option.zone && o.capacity_type == option.capacity_type)
        .ok_or("no such offering")?;
    if !offering.available {
        return Err("the offering is unavailable".into());
    }
    if offering.price != option.price {
        return Err(format!("price {} differs from the catalog's {}", option.price, offering.price));
    }
    // The concrete labels: the type's single-valued labels, the offering's, and the node's own.
    let mut node_labels = t.requirements.single_valued_labels();
    node_labels.insert(labels::ZONE.to_owned(), option.zone.clone());
    node_labels.insert(labels::CAPACITY_TYPE.to_owned(), option.capacity_type.as_str().to_owned());
    for (k, v) in &node.labels {
        if let Some(existing) = node_labels.insert(k.clone(), v.clone())
            && existing != *v
        {
            return Err(format!("label {k} is both {existing} and {v}"));
        }
    }
    for (k, v) in &pool.labels {
        if node_labels.get(k) != Some(v) {
            return Err(format!("NodePool label {k}={v} is missing"));
        }
    }
    if node_labels.get(labels::NODEPOOL) != Some(&pool.name) {
        return Err("the NodePool name label is missing".into());
    }
    if let Some(r) = pool.requirements.first_mismatch(&node_labels) {
        return Err(format!("breaks the NodePool requirement {r}"));
    }
    let mut used = Resources::new();
    let pool_taints: Vec<_> = pool.taints.iter().chain(&pool.startup_taints).cloned().collect();
    for ds in &problem.daemonsets {
        if first_untolerated(&ds.tolerations, &pool_taints).is_none()
            && ds.affinity.matches_labels(&node_labels)
        {
            used.add_assign(&ds.requests);
        }
    }
    let mut names = BTreeSet::new();
    let mut placed = Vec::new();
    for name in &node.pods {
        let pod =
            problem.pods.iter().find(|p| &p.name == name).ok_or_else(|| format!("unknown pod {name}"))?;
        names.insert(name);
        if !pod.affinity.matches_labels(&node_labels) {
            return Err(format!("pod {name} does not match the node's labels"));
        }
        if let Some(taint) = first_untolerated(&pod.tolerations, &pool.taints) {
            return Err(format!("pod {name} does not tolerate taint {taint}"));
        }
        let mut requests = pod.requests.clone();
        requests.pods = requests.pods.max(1);
        used.add_assign(&requests);
        placed.push(pod);
    }
    if let Some(why) = anti_affinity_violation(&placed, &[]) {
        return Err(why);
    }
    if !used.fits_in(&t.allocatable()) {
        return Err(format!("overcommitted: {used} requested (daemonsets included) of {}", t.allocatable()));
    }
    Ok(t.capacity.clone())
}

/// Required pod affinity and anti-affinity on zones, checked on where pods ended up.
fn zone_affinity_violations(
    problem: &Problem,
    plan: &Plan,
    pods: &BTreeMap<&str, &super::problem::PodSpec>,
) -> Vec<String> {
    let mut out = Vec::new();
    // (zone, labels) of every pod in the cluster after the plan: existing ones and placed ones.
    let mut zone_of: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &plan.placements {
        if let Some(z) =
            problem.existing.iter().find(|n| n.name == p.node).and_then(|n| n.labels.get(labels::ZONE))
        {
            zone_of.insert(&p.pod, z);
        }
    }
    for n in &plan.new_nodes {
        for p in &n.pods {
            zone_of.insert(p, &n.launch.zone);
        }
    }
    let mut everyone: Vec<(Option<&str>, &str, &BTreeMap<String, String>)> = Vec::new();
    for n in &problem.existing {
        for l in &n.pod_labels {
            everyone.push((n.labels.get(labels::ZONE).map(String::as_str), "", l));
        }
    }
    for (name, zone) in &zone_of {
        if let Some(pod) = pods.get(name) {
            everyone.push((Some(zone), name, &pod.labels));
        }
    }
    let matches = |s: &BTreeMap<String, String>, l: &BTreeMap<String, String>| {
        s.iter().all(|(k, v)| l.get(k) == Some(v))
    };
    for (name, zone) in &zone_of {
        let Some(pod) = pods.get(name) else { continue };
        for s in &pod.zone_affinity {
            let others: Vec<Option<&str>> =
                everyone.iter().filter(|(_, n, l)| n != name && matches(s, l)).map(|(z, _, _)| *z).collect();
            let ok = others.contains(&Some(zone)) || (others.is_empty() && matches(s, &pod.labels));
            if !ok {
                out.push(format!(
                    "pod {name} in {zone} has no pod matching its zone affinity {s:?} in its zone"
                ));
            }
        }
        for s in &pod.zone_anti_affinity {
            if everyone.iter().any(|(z, n, l)| n != name && *z == Some(zone) && matches(s, l)) {
                out.push(format!("pod {name} shares {zone} with a pod its zone anti-affinity {s:?} forbids"));
            }
        }
    }
    out
}

/// Required pod affinity on hostname, as kube-scheduler could have reached it placing pods one by one: a pod
/// whose term it does not match itself needs a matching pod beside it; pods matching their own term need,
/// on their node, a *seed* (a running pod or a planned pod without the term that matches it), except on at
/// most one node per term, where the first of the group may start it when no matching pod ran before.
fn hostname_affinity_violations(
    problem: &Problem,
    plan: &Plan,
    pods: &BTreeMap<&str, &super::problem::PodSpec>,
) -> Vec<String> {
    type Labels = BTreeMap<String, String>;
    let mut out = Vec::new();
    // Node → (planned pod, if any; its labels) for every pod on it after the plan.
    let mut nodes: BTreeMap<String, Vec<(Option<&super::problem::PodSpec>, &Labels)>> = BTreeMap::new();
    for n in &problem.existing {
        nodes.entry(n.name.clone()).or_default().extend(n.pod_labels.iter().map(|l| (None, l)));
    }
    let mut node_of: BTreeMap<&str, String> = BTreeMap::new();
    let planned = plan.placements.iter().map(|p| (p.pod.as_str(), p.node.clone())).chain(
        plan.new_nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.pods.iter().map(move |p| (p.as_str(), format!("new node {i}")))),
    );
    for (name, node) in planned {
        if let Some(pod) = pods.get(name) {
            nodes.entry(node.clone()).or_default().push((Some(pod), &pod.labels));
            node_of.insert(&pod.name, node);
        }
    }
    let matches = |s: &Labels, l: &Labels| s.iter().all(|(k, v)| l.get(k) == Some(v));
    // Per term: the nodes where a group started without a seed.
    let mut started: BTreeMap<&Labels, BTreeSet<&str>> = BTreeMap::new();
    for (name, node) in &node_of {
        let pod = pods[name];
        for s in &pod.hostname_affinity {
            let here = &nodes[node];
            if !matches(s, &pod.labels) {
                if !here.iter().any(|(other, l)| other.is_none_or(|o| o.name != *name) && matches(s, l)) {
                    out.push(format!(
                        "pod {name} on {node} has no pod matching its hostname affinity {s:?} beside it"
                    ));
                }
                continue;
            }
            let seeded = here
                .iter()
                .any(|(other, l)| matches(s, l) && other.is_none_or(|o| !o.hostname_affinity.contains(s)));
            if !seeded {
                started.entry(s).or_default().insert(node);
            }
        }
    }
    for (s, at) in started {
        let ran_before = problem.existing.iter().any(|n| n.pod_labels.iter().any(|l| matches(s, l)));
        if at.len() > 1 || ran_before {
            out.push(format!(
                "pods with hostname affinity {s:?} start groups on {} without a matching pod there ({})",
                at.into_iter().collect::<Vec<_>>().join(", "),
                if ran_before { "matching pods already run" } else { "only one group may start" }
            ));
        }
    }
    out
}

/// The first pair of pods on one node that hostname anti-affinity forbids, with the node's existing pods'
/// labels counted as neighbours too.
fn anti_affinity_violation(
    placed: &[&super::problem::PodSpec],
    existing: &[BTreeMap<String, String>],
) -> Option<String> {
    for (i, pod) in placed.iter().enumerate() {
        if existing.iter().any(|labels| pod.repels(labels)) {
            return Some(format!(
                "pod {} shares the node with an existing pod its anti-affinity forbids",
                pod.name
            ));
        }
        for other in &placed[i + 1..] {
            if pod.repels(&other.labels) || other.repels(&pod.labels) {
                return Some(format!(
                    "pods {} and {} share the node against their anti-affinity",
                    pod.name, other.name
                ));
            }
        }
    }
    None
}
