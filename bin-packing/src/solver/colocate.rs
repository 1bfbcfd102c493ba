//! Required pod affinity on `kubernetes.io/hostname`, by bundling before the algorithms run.
//!
//! For each term (a `matchLabels` selector S) of a pending pod:
//! - if pods matching S run on existing (or in-flight) nodes, the pod is pinned to those nodes;
//! - otherwise, if the pod matches S itself, it joins the other pending pods that carry the same term and
//!   match it (a self-affine group: Kubernetes lets the first go anywhere and the rest must follow, so the
//!   whole group shares one node);
//! - otherwise it joins one pending pod matching S, chosen round-robin among them so that several such
//!   pods spread over their partners; with no pending partner it is unschedulable.
//!
//! Pods that must share a node are merged into one composite pod: requests summed, node affinities
//! intersected, taints only where every member tolerates them, anti-affinity and zone terms united, and
//! the other members' labels carried as [`PodSpec::companion_labels`] so every selector sees them. Every
//! algorithm then places the composite like any pod, and the plan is expanded back to the members.
//! Members with enforced topology spread are not bundled (their counts would be wrong) and are reported.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels;
use crate::requirements::{NodeAffinity, Operator, Requirement, Requirements};
use crate::taints::{Toleration, tolerates_all};

use super::plan::{Placement, Plan, Unschedulable};
use super::problem::{PodSpec, Problem, selector_matches};

/// A problem with bundled pods, and how to expand plans of it.
pub(crate) struct Bundled {
    pub problem: Problem,
    /// Composite name → member names (the composite takes its first member's name).
    members: BTreeMap<String, Vec<String>>,
    /// Pods refused before planning.
    pub refused: Vec<Unschedulable>,
    /// Whether some bundle came from a choice of partner (a cheaper pairing might exist, so the plan's
    /// bound no longer bounds every valid plan).
    pub chose_partners: bool,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

const TERM: &str = "required pod affinity on kubernetes.io/hostname";

/// Bundles the problem's hostname-affine pods; `None` when no pod has such a term.
pub(crate) fn bundle(problem: &Problem) -> Option<Bundled> {
    if problem.pods.iter().all(|p| p.hostname_affinity.is_empty()) {
        return None;
    }
    let pods = &problem.pods;
    let mut groups = UnionFind((0..pods.len()).collect());
    let mut pinned: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut refused: BTreeMap<usize, String> = BTreeMap::new();
    let mut next_partner: BTreeMap<&BTreeMap<String, String>, usize> = BTreeMap::new();
    let mut chose_partners = false;
    // Per selector: the pending pods it matches (computed once per distinct selector).
    let mut matching: BTreeMap<&BTreeMap<String, String>, Vec<usize>> = BTreeMap::new();
    for pod in pods {
        for selector in &pod.hostname_affinity {
            matching
                .entry(selector)
                .or_insert_with(|| (0..pods.len()).filter(|&j| pods[j].matched_by(selector)).collect());
        }
    }
    // Per selector: the existing nodes running a pod it matches.
    let mut running_on: BTreeMap<&BTreeMap<String, String>, BTreeSet<String>> = BTreeMap::new();
    // Per selector: the first pod of its self-affine group, which the others join.
    let mut leader: BTreeMap<&BTreeMap<String, String>, usize> = BTreeMap::new();
    for (i, pod) in pods.iter().enumerate() {
        for selector in &pod.hostname_affinity {
            let running = running_on.entry(selector).or_insert_with(|| {
                problem
                    .existing
                    .iter()
                    .filter(|n| n.pod_labels.iter().any(|l| selector_matches(selector, l)))
                    .map(|n| n.name.clone())
                    .collect()
            });
            if !running.is_empty() {
                let nodes = pinned.entry(i).or_insert_with(|| running.clone());
                nodes.retain(|n| running.contains(n));
                if nodes.is_empty() {
                    refused.insert(i, format!("{TERM}: no node runs pods matching all of its terms"));
                }
                continue;
            }
            if pod.matched_by(selector) {
                let first = *leader.entry(selector).or_insert(i);
                groups.union(first, i);
                continue;
            }
            let partners = &matching[selector];
            if partners.is_empty() {
                refused.insert(i, format!("{TERM}: no pod matching {selector:?} runs or is pending"));
                continue;
            }
            let turn = next_partner.entry(selector).or_default();
            groups.union(i, partners[*turn % partners.len()]);
            *turn += 1;
            chose_partners |= partners.len() > 1;
        }
    }

    let mut components: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..pods.len() {
        let root = groups.find(i);
        components.entry(root).or_default().push(i);
    }
    let mut out_pods = Vec::new();
    let mut members = BTreeMap::new();
    for group in components.values() {
        if let Some(why) = group.iter().find_map(|i| refused.get(i)) {
            let why =
                if group.len() > 1 { format!("a pod it must share a node with: {why}") } else { why.clone() };
            for &i in group {
                refused.entry(i).or_insert_with(|| why.clone());
            }
            continue;
        }
        match composite(problem, group, &pinned) {
            Ok(pod) => {
                if group.len() > 1 {
                    members.insert(pod.name.clone(), group.iter().map(|&i| pods[i].name.clone()).collect());
                }
                out_pods.push(pod);
            }
            Err(why) => {
                for &i in group {
                    refused.insert(i, format!("{TERM}: {why}"));
                }
            }
        }
    }
    let mut bundled = problem.clone();
    bundled.pods = out_pods;
    Some(Bundled {
        problem: bundled,
        members,
        refused: refused
            .into_iter()
            .map(|(i, reason)| Unschedulable { pod: pods[i].name.clone(), reason })
            .collect(),
        chose_partners,
    })
}

/// One pod standing for a group that must share a node.
fn composite(
    problem: &Problem,
    group: &[usize],
    pinned: &BTreeMap<usize, BTreeSet<String>>,
) -> Result<PodSpec, String> {
    let pods: Vec<&PodSpec> = group.iter().map(|&i| &problem.pods[i]).collect();
    let mut pod = pods[0].clone();
    pod.hostname_affinity.clear();
    // Nodes the group is pinned to (existing nodes running pods its terms need).
    let mut on: Option<BTreeSet<String>> = None;
    for i in group {
        if let Some(nodes) = pinned.get(i) {
            on = Some(match on {
                None => nodes.clone(),
                Some(prev) => prev.intersection(nodes).cloned().collect(),
            });
        }
    }
    if pods.len() > 1 {
        for (a, first) in pods.iter().enumerate() {
            if first.topology_spread.iter().any(|s| s.enforced_for(&first.labels)) {
                return Err(format!(
                    "it must share a node with {} other pods, and bundling pods with a topology spread \
                     constraint is not modelled",
                    pods.len() - 1
                ));
            }
            for second in &pods[a + 1..] {
                if first.repels_pod(second) || second.repels_pod(first) {
                    return Err(format!(
                        "it puts {} and {} on one node, which their pod anti-affinity forbids",
                        first.name, second.name
                    ));
                }
            }
        }
        pod.requests = pods.iter().fold(crate::resources::Resources::new(), |acc, p| acc.plus(&p.requests));
        let mut alternatives: Vec<Requirements> = pods[0].affinity.alternatives().to_vec();
        for other in &pods[1..] {
            if other.affinity == pods[0].affinity {
                continue;
            }
            alternatives = alternatives
                .iter()
                .flat_map(|a| other.affinity.alternatives().iter().map(move |b| a.intersection(b)))
                .filter(Requirements::is_satisfiable)
                .collect();
            alternatives.dedup();
        }
        if alternatives.is_empty() {
            return Err("the node affinities of the pods that must share a node do not overlap".into());
        }
        pod.affinity = NodeAffinity::from_alternatives(alternatives);
        if pods.iter().any(|p| p.tolerations != pods[0].tolerations) {
            // Tolerate everything, and keep out of the NodePools and nodes whose taints some member does
            // not tolerate.
            let tolerated =
                |taints: &[crate::taints::Taint]| pods.iter().all(|p| tolerates_all(&p.tolerations, taints));
            let pools: Vec<&str> =
                problem.nodepools.iter().filter(|n| !tolerated(&n.taints)).map(|n| n.name.as_str()).collect();
            let nodes: Vec<&str> =
                problem.existing.iter().filter(|n| !tolerated(&n.taints)).map(|n| n.name.as_str()).collect();
            pod.tolerations = vec![Toleration::everything()];
            if !pools.is_empty() {
                pod = pod.with_requirement(
                    Requirement::new(labels::NODEPOOL, Operator::NotIn, &pools).expect("values given"),
                );
            }
            if !nodes.is_empty() {
                pod = pod.with_requirement(
                    Requirement::new(labels::HOSTNAME, Operator::NotIn, &nodes).expect("values given"),
                );
            }
        }
        for other in &pods[1..] {
            pod.companion_labels.push(other.labels.clone());
            pod.companion_labels.extend(other.companion_labels.iter().cloned());
            for s in &other.hostname_anti_affinity {
                if !pod.hostname_anti_affinity.contains(s) {
                    pod.hostname_anti_affinity.push(s.clone());
                }
            }
            for t in &other.held_anti_affinity {
                if !pod.held_anti_affinity.contains(t) {
                    pod.held_anti_affinity.push(t.clone());
                }
            }
            pod.zone_affinity
                .extend(other.zone_affinity.iter().filter(|s| !pods[0].zone_affinity.contains(s)).cloned());
            pod.zone_anti_affinity.extend(
                other.zone_anti_affinity.iter().filter(|s| !pods[0].zone_anti_affinity.contains(s)).cloned(),
            );
        }
        pod.relaxed_anti_affinity = pods.iter().all(|p| p.relaxed_anti_affinity);
        pod.zone_affinity.dedup();
        pod.zone_anti_affinity.dedup();
    }
    if let Some(nodes) = on {
        if nodes.is_empty() {
            return Err("no node runs pods matching all of the group's terms".into());
        }
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        pod = pod.with_requirement(
            Requirement::new(labels::HOSTNAME, Operator::In, &nodes).expect("values given"),
        );
    }
    Ok(pod)
}

impl Bundled {
    /// The plan of the bundled problem, for the original pods.
    pub fn expand(&self, mut plan: Plan) -> Plan {
        let members = |name: &str| -> Vec<String> {
            self.members.get(name).cloned().unwrap_or_else(|| vec![name.to_owned()])
        };
        plan.placements = plan
            .placements
            .into_iter()
            .flat_map(|p| members(&p.pod).into_iter().map(move |pod| Placement { pod, node: p.node.clone() }))
            .collect();
        for node in &mut plan.new_nodes {
            node.pods = node.pods.iter().flat_map(|p| members(p)).collect();
        }
        plan.unschedulable = plan
            .unschedulable
            .into_iter()
            .flat_map(|u| {
                let group = members(&u.pod);
                let reason = if group.len() > 1 {
                    format!("{TERM} puts it on one node with {} other pods: {}", group.len() - 1, u.reason)
                } else {
                    u.reason
                };
                group.into_iter().map(move |pod| Unschedulable { pod, reason: reason.clone() })
            })
            .collect();
        plan.unschedulable.extend(self.refused.iter().cloned());
        if self.chose_partners {
            plan.lower_bound = None;
        }
        plan
    }
}
