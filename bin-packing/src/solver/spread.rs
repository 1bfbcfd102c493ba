//! Topology spread (`DoNotSchedule`) over zones and capacity types, in two steps around the algorithms.
//!
//! Before: each spread group (pods whose own labels match the constraint's selector) is split across the
//! domains it may use, always into the domain with the fewest matching pods so far (pods on existing nodes
//! counted), by pinning each pod to its domain (zone first, then capacity type). Pinned pods of a Deployment
//! become one class per domain, so every algorithm handles them as plain node affinity. After: if a group
//! still ended up more skewed than allowed (some pods could not be placed in their domain, e.g. a NodePool
//! limit), the excess pods in the fullest domains are taken off the plan and reported unschedulable, as
//! kube-scheduler would leave them pending.
//!
//! The domains a pod may use are the catalog's zones (or capacity types) that its node affinity admits and
//! that some NodePool admitting the pod allows (Karpenter's domains for a NodePool-driven cluster). With
//! `minDomains` above the number of such domains, the global minimum counts as zero (Kubernetes' rule), so
//! each domain holds at most `maxSkew` matching pods.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels;
use crate::requirements::{Operator, Requirement};
use crate::taints::first_untolerated;

use super::plan::{Plan, Unschedulable};
use super::problem::{PodSpec, Problem, TopologySpread, selector_matches};

/// The topology keys spread by pinning, in the order they are pinned.
pub(crate) const DOMAIN_KEYS: [&str; 2] = [labels::ZONE, labels::CAPACITY_TYPE];

/// The values of `key` (a zone or a capacity type) a pod may be placed in.
pub fn eligible_domains(problem: &Problem, pod: &PodSpec, key: &str) -> Vec<String> {
    domains(problem, pod, key, true, true)
}

/// The values of `key` that count towards a spread constraint's skew for this pod: those of NodePools the
/// constraint's `nodeTaintsPolicy` and `nodeAffinityPolicy` keep (the pod's node affinity applied to the
/// values too when honoured).
fn counted_domains(problem: &Problem, pod: &PodSpec, spread: &TopologySpread, key: &str) -> Vec<String> {
    domains(problem, pod, key, spread.honor_node_affinity, spread.honor_node_taints)
}

fn domains(
    problem: &Problem,
    pod: &PodSpec,
    key: &str,
    honor_affinity: bool,
    honor_taints: bool,
) -> Vec<String> {
    let pools: Vec<_> = problem
        .nodepools
        .iter()
        .filter(|p| !honor_taints || first_untolerated(&pod.tolerations, &p.taints).is_none())
        .map(|p| p.node_requirements())
        .filter(|reqs| !honor_affinity || pod.affinity.compatible(reqs).is_ok())
        .collect();
    let all: BTreeSet<String> = if key == labels::ZONE {
        problem.catalog.zones().iter().cloned().collect()
    } else {
        problem
            .catalog
            .instance_types()
            .iter()
            .flat_map(|t| t.offerings.iter().map(|o| o.capacity_type.as_str().to_owned()))
            .collect()
    };
    all.into_iter()
        .filter(|v| {
            let admits = |r: Option<&Requirement>| r.is_none_or(|r| r.matches(Some(v)));
            (!honor_affinity || pod.affinity.alternatives().iter().any(|alt| admits(alt.get(key))))
                && pools.iter().any(|reqs| admits(reqs.get(key)))
        })
        .collect()
}

/// The zones a pod may be placed in.
pub fn eligible_zones(problem: &Problem, pod: &PodSpec) -> Vec<String> {
    eligible_domains(problem, pod, labels::ZONE)
}

fn constraint<'a>(pod: &'a PodSpec, key: &str) -> Option<&'a TopologySpread> {
    pod.topology_spread.iter().find(|s| s.topology_key == key && s.enforced_for(&pod.labels))
}

/// Matching pods on existing nodes, per domain of `key`, counting only the nodes the constraint's policies
/// keep for this pod (its node affinity when honoured, its tolerations when taints are honoured).
fn existing_counts(
    problem: &Problem,
    pod: &PodSpec,
    spread: &TopologySpread,
    key: &str,
) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for node in &problem.existing {
        if spread.honor_node_affinity && !pod.affinity.matches_labels(&node.labels) {
            continue;
        }
        if spread.honor_node_taints && first_untolerated(&pod.tolerations, &node.taints).is_some() {
            continue;
        }
        if let Some(domain) = node.labels.get(key) {
            let n = node.pod_labels.iter().filter(|l| selector_matches(&spread.selector, l)).count() as i64;
            *counts.entry(domain.clone()).or_default() += n;
        }
    }
    counts
}

/// The problem with every spread pod pinned to a domain of each key it spreads on, or `None` when no pod
/// spreads on a zone or capacity type.
pub(crate) fn pin(problem: &Problem) -> Option<Problem> {
    if !problem.pods.iter().any(|p| DOMAIN_KEYS.iter().any(|k| constraint(p, k).is_some())) {
        return None;
    }
    let mut pinned = problem.clone();
    for key in DOMAIN_KEYS {
        // Each key's domains are chosen over the pods as the previous key left them, then pinned.
        let mut pins: Vec<(usize, String)> = Vec::new();
        let mut counts: BTreeMap<&BTreeMap<String, String>, BTreeMap<String, i64>> = BTreeMap::new();
        for (i, pod) in pinned.pods.iter().enumerate() {
            let Some(spread) = constraint(pod, key) else { continue };
            let domains = eligible_domains(&pinned, pod, key);
            let group =
                counts.entry(&spread.selector).or_insert_with(|| existing_counts(&pinned, pod, spread, key));
            let Some(domain) =
                domains.iter().min_by_key(|d| (group.get(*d).copied().unwrap_or(0), (*d).clone()))
            else {
                continue; // no domain at all: the solver reports why
            };
            *group.entry(domain.clone()).or_default() += 1;
            pins.push((i, domain.clone()));
        }
        drop(counts);
        for (i, domain) in pins {
            pinned.pods[i]
                .require(Requirement::new(key, Operator::In, &[domain.as_str()]).expect("one value"));
        }
    }
    Some(pinned)
}

/// Where each pod of a plan landed: its domain of `key`.
fn domains_of(problem: &Problem, plan: &Plan, key: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in &plan.placements {
        if let Some(domain) =
            problem.existing.iter().find(|n| n.name == p.node).and_then(|n| n.labels.get(key))
        {
            out.insert(p.pod.clone(), domain.clone());
        }
    }
    for node in &plan.new_nodes {
        let domain = if key == labels::ZONE {
            node.launch.zone.clone()
        } else {
            node.launch.capacity_type.as_str().to_owned()
        };
        for pod in &node.pods {
            out.insert(pod.clone(), domain.clone());
        }
    }
    out
}

type Groups<'a> = BTreeMap<&'a BTreeMap<String, String>, (&'a TopologySpread, Vec<&'a PodSpec>)>;

/// The spread groups on `key`: per selector, the constraint and the pending pods it governs.
fn groups<'a>(problem: &'a Problem, key: &str) -> Groups<'a> {
    let mut groups: Groups<'a> = BTreeMap::new();
    for pod in &problem.pods {
        if let Some(spread) = constraint(pod, key) {
            groups.entry(&spread.selector).or_insert((spread, Vec::new())).1.push(pod);
        }
    }
    groups
}

/// A group's matching pods per domain after the plan: every domain its members may use (zero if empty),
/// pods on existing nodes, and the members the plan placed.
fn group_counts(
    problem: &Problem,
    domain_of: &BTreeMap<String, String>,
    spread: &TopologySpread,
    members: &[&PodSpec],
    key: &str,
) -> BTreeMap<String, i64> {
    let domains: BTreeSet<String> =
        members.iter().flat_map(|p| counted_domains(problem, p, spread, key)).collect();
    let mut counts: BTreeMap<String, i64> = domains.into_iter().map(|d| (d, 0)).collect();
    if let Some(first) = members.first() {
        for (domain, n) in existing_counts(problem, first, spread, key) {
            if let Some(c) = counts.get_mut(&domain) {
                *c += n;
            }
        }
    }
    for pod in members {
        if let Some(domain) = domain_of.get(&pod.name) {
            *counts.entry(domain.clone()).or_default() += 1;
        }
    }
    counts
}

/// The global minimum the skew is measured against: zero while fewer domains than `minDomains` exist.
fn global_min(spread: &TopologySpread, counts: &BTreeMap<String, i64>) -> i64 {
    if spread.min_domains.is_some_and(|m| (counts.len() as i64) < m) {
        return 0;
    }
    counts.values().min().copied().unwrap_or(0)
}

/// Takes pods off the plan until every spread group is within its `maxSkew`; returns whether any pod was
/// removed (the caller then drops empty nodes and re-costs).
pub(crate) fn enforce(problem: &Problem, plan: &mut Plan) -> bool {
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    for key in DOMAIN_KEYS {
        let domain_of = domains_of(problem, plan, key);
        for (_, (spread, members)) in groups(problem, key) {
            let members: Vec<&PodSpec> = members.into_iter().filter(|p| !removed.contains(&p.name)).collect();
            let mut counts = group_counts(problem, &domain_of, spread, &members, key);
            // Placed members by domain, latest last, so the last placed go first.
            let mut placed: BTreeMap<String, Vec<&str>> = BTreeMap::new();
            for pod in &members {
                if let Some(domain) = domain_of.get(&pod.name) {
                    placed.entry(domain.clone()).or_default().push(&pod.name);
                }
            }
            loop {
                let min = global_min(spread, &counts);
                let min_domain = counts
                    .iter()
                    .min_by_key(|(d, c)| (**c, (*d).clone()))
                    .map(|(d, _)| d.clone())
                    .unwrap_or_default();
                let Some((max_domain, max)) = counts
                    .iter()
                    .filter(|(d, _)| placed.get(*d).is_some_and(|v| !v.is_empty()))
                    .max_by_key(|(d, c)| (**c, std::cmp::Reverse((*d).clone())))
                    .map(|(d, c)| (d.clone(), *c))
                else {
                    break;
                };
                if max - min <= spread.max_skew {
                    break;
                }
                let pod = placed.get_mut(&max_domain).and_then(Vec::pop).expect("filtered above");
                *counts.get_mut(&max_domain).expect("counted") -= 1;
                removed.insert(pod.to_owned());
                let why = match spread.min_domains.filter(|m| (counts.len() as i64) < *m) {
                    Some(m) => format!("only {} of minDomains {m} domains are possible", counts.len()),
                    None => format!("{min_domain} holds {min}, and no more could be placed there"),
                };
                reasons.insert(
                    pod.to_owned(),
                    format!(
                        "topology spread on {key} (maxSkew {}): {max_domain} would hold {max} matching pods; {why}",
                        spread.max_skew
                    ),
                );
            }
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

/// Every spread group's skew, for the validator: (key and selector, max - global min, maxSkew).
pub(crate) fn skews(problem: &Problem, plan: &Plan) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for key in DOMAIN_KEYS {
        let domain_of = domains_of(problem, plan, key);
        for (selector, (spread, members)) in groups(problem, key) {
            let counts = group_counts(problem, &domain_of, spread, &members, key);
            // Skew that running pods already had is not the plan's doing: only domains it adds to count.
            let receiving: BTreeSet<&String> =
                members.iter().filter_map(|p| domain_of.get(&p.name)).collect();
            let max =
                counts.iter().filter(|(d, _)| receiving.contains(d)).map(|(_, c)| *c).max().unwrap_or(0);
            out.push((format!("{key} {selector:?}"), max - global_min(spread, &counts), spread.max_skew));
        }
    }
    out
}
