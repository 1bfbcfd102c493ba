//! Zonal topology spread (`DoNotSchedule`), in two steps around the algorithms.
//!
//! Before: each spread group (pods whose own labels match the constraint's selector) is split across the
//! zones it may use, always into the zone with the fewest matching pods so far (pods on existing nodes
//! counted), by pinning each pod to its zone. Pinned pods of a Deployment become one class per zone, so every
//! algorithm handles them as plain node affinity. After: if a group still ended up more skewed than allowed
//! (some pods could not be placed in their zone, e.g. a NodePool limit), the excess pods in the fullest zones
//! are taken off the plan and reported unschedulable, as kube-scheduler would leave them pending.
//!
//! The zones a pod may use are the catalog's zones that its node affinity admits and that some NodePool
//! admitting the pod allows (Karpenter's domains for a NodePool-driven cluster).

use std::collections::{BTreeMap, BTreeSet};

use crate::labels;
use crate::requirements::{Operator, Requirement};
use crate::taints::first_untolerated;

use super::plan::{Plan, Unschedulable};
use super::problem::{PodSpec, Problem, TopologySpread, selector_matches};

/// The zones a pod may be placed in.
pub fn eligible_zones(problem: &Problem, pod: &PodSpec) -> Vec<String> {
    let pools: Vec<_> = problem
        .nodepools
        .iter()
        .filter(|p| first_untolerated(&pod.tolerations, &p.taints).is_none())
        .map(|p| p.node_requirements())
        .filter(|reqs| pod.affinity.compatible(reqs).is_ok())
        .collect();
    problem
        .catalog
        .zones()
        .iter()
        .filter(|z| {
            let admits = |r: Option<&Requirement>| r.is_none_or(|r| r.matches(Some(z)));
            pod.affinity.alternatives().iter().any(|alt| admits(alt.get(labels::ZONE)))
                && pools.iter().any(|reqs| admits(reqs.get(labels::ZONE)))
        })
        .cloned()
        .collect()
}

fn zone_constraint(pod: &PodSpec) -> Option<&TopologySpread> {
    pod.topology_spread.iter().find(|s| s.topology_key == labels::ZONE && s.enforced_for(&pod.labels))
}

/// Matching pods on existing nodes, per zone.
fn existing_counts(problem: &Problem, selector: &BTreeMap<String, String>) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for node in &problem.existing {
        if let Some(zone) = node.labels.get(labels::ZONE) {
            let n = node.pod_labels.iter().filter(|l| selector_matches(selector, l)).count() as i64;
            *counts.entry(zone.clone()).or_default() += n;
        }
    }
    counts
}

/// The problem with every zone-spread pod pinned to a zone, or `None` when no pod has a zone spread.
pub(crate) fn pin_zones(problem: &Problem) -> Option<Problem> {
    if !problem.pods.iter().any(|p| zone_constraint(p).is_some()) {
        return None;
    }
    let mut counts: BTreeMap<&BTreeMap<String, String>, BTreeMap<String, i64>> = BTreeMap::new();
    let mut pinned = problem.clone();
    for (i, pod) in problem.pods.iter().enumerate() {
        let Some(spread) = zone_constraint(pod) else { continue };
        let zones = eligible_zones(problem, pod);
        let group =
            counts.entry(&spread.selector).or_insert_with(|| existing_counts(problem, &spread.selector));
        let Some(zone) = zones.iter().min_by_key(|z| (group.get(*z).copied().unwrap_or(0), (*z).clone()))
        else {
            continue; // no zone at all: the solver reports why
        };
        *group.entry(zone.clone()).or_default() += 1;
        let pin = Requirement::new(labels::ZONE, Operator::In, &[zone.as_str()]).expect("one value");
        pinned.pods[i] = pod.clone().with_requirement(pin);
    }
    Some(pinned)
}

/// Where each pod of a plan landed, by zone.
fn zones_of(problem: &Problem, plan: &Plan) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in &plan.placements {
        if let Some(zone) =
            problem.existing.iter().find(|n| n.name == p.node).and_then(|n| n.labels.get(labels::ZONE))
        {
            out.insert(p.pod.clone(), zone.clone());
        }
    }
    for node in &plan.new_nodes {
        for pod in &node.pods {
            out.insert(pod.clone(), node.launch.zone.clone());
        }
    }
    out
}

/// The zone spread groups: per selector, the constraint and the pending pods it governs.
fn groups(problem: &Problem) -> BTreeMap<&BTreeMap<String, String>, (&TopologySpread, Vec<&PodSpec>)> {
    let mut groups: BTreeMap<&BTreeMap<String, String>, (&TopologySpread, Vec<&PodSpec>)> = BTreeMap::new();
    for pod in &problem.pods {
        if let Some(spread) = zone_constraint(pod) {
            groups.entry(&spread.selector).or_insert((spread, Vec::new())).1.push(pod);
        }
    }
    groups
}

/// A group's matching pods per zone after the plan: every zone its members may use (zero if empty), pods
/// on existing nodes, and the members the plan placed.
fn group_counts(
    problem: &Problem,
    zone_of: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    members: &[&PodSpec],
) -> BTreeMap<String, i64> {
    let zones: BTreeSet<String> = members.iter().flat_map(|p| eligible_zones(problem, p)).collect();
    let mut counts: BTreeMap<String, i64> = zones.into_iter().map(|z| (z, 0)).collect();
    for (zone, n) in existing_counts(problem, selector) {
        if let Some(c) = counts.get_mut(&zone) {
            *c += n;
        }
    }
    for pod in members {
        if let Some(zone) = zone_of.get(&pod.name) {
            *counts.entry(zone.clone()).or_default() += 1;
        }
    }
    counts
}

/// Takes pods off the plan until every zone spread group is within its `maxSkew`; returns whether any
/// pod was removed (the caller then drops empty nodes and re-costs).
pub(crate) fn enforce(problem: &Problem, plan: &mut Plan) -> bool {
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    let zone_of = zones_of(problem, plan);
    for (selector, (spread, members)) in groups(problem) {
        let mut counts = group_counts(problem, &zone_of, selector, &members);
        // Placed members by zone, latest last, so the last placed go first.
        let mut placed: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for pod in &members {
            if let Some(zone) = zone_of.get(&pod.name) {
                placed.entry(zone.clone()).or_default().push(&pod.name);
            }
        }
        while let Some((min_zone, min)) =
            counts.iter().min_by_key(|(z, c)| (**c, (*z).clone())).map(|(z, c)| (z.clone(), *c))
        {
            let Some((max_zone, max)) = counts
                .iter()
                .filter(|(z, _)| placed.get(*z).is_some_and(|v| !v.is_empty()))
                .max_by_key(|(z, c)| (**c, std::cmp::Reverse((*z).clone())))
                .map(|(z, c)| (z.clone(), *c))
            else {
                break;
            };
            if max - min <= spread.max_skew {
                break;
            }
            let pod = placed.get_mut(&max_zone).and_then(Vec::pop).expect("filtered above");
            *counts.get_mut(&max_zone).expect("counted") -= 1;
            removed.insert(pod.to_owned());
            reasons.insert(
                pod.to_owned(),
                format!(
                    "topology spread on {} (maxSkew {}): {max_zone} would hold {max} matching pods while {min_zone} \
                     holds {min}, and no more could be placed there",
                    labels::ZONE,
                    spread.max_skew
                ),
            );
        }
    }
    if removed.is_empty() {
        return false;
    }
    plan.placements.retain(|p| !removed.contains(&p.pod));
    for node in &mut plan.new_nodes {
        node.pods.retain(|p| !removed.contains(p));
    }
    plan.new_nodes.retain(|n| !n.pods.is_empty());
    for (pod, reason) in reasons {
        plan.unschedulable.push(Unschedulable { pod, reason });
    }
    true
}

/// Every zone spread group's skew, for the validator: (selector, max - min over its zones, maxSkew).
pub(crate) fn skews(problem: &Problem, plan: &Plan) -> Vec<(String, i64, i64)> {
    let zone_of = zones_of(problem, plan);
    groups(problem)
        .into_iter()
        .map(|(selector, (spread, members))| {
            let counts = group_counts(problem, &zone_of, selector, &members);
            let (min, max) =
                (counts.values().min().copied().unwrap_or(0), counts.values().max().copied().unwrap_or(0));
            (format!("{selector:?}"), max - min, spread.max_skew)
        })
        .collect()
}
