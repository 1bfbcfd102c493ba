//! Required pod affinity and anti-affinity on `topology.kubernetes.io/zone`, by pinning before the
//! algorithms run (as zone spread is), so every algorithm honours them as node affinity.
//!
//! - Affinity (`matchLabels` S): the pod goes to a zone where a pod matching S runs (on an existing node, or
//!   pinned earlier in this plan). When none runs anywhere, a pod matching S itself may start the group
//!   (Kubernetes' rule): the group's first pod picks the zone and the rest follow; a pod that does not match
//!   S pulls the pending pods matching S into its zone with it. Otherwise it is unschedulable.
//! - Anti-affinity (S): the pod avoids every zone where another pod matching S runs or is pinned; it takes a
//!   zone of its own, and pods matching S pinned after it avoid that zone too (the rule is symmetric in
//!   Kubernetes: an existing pod's anti-affinity also keeps matching pods out).
//!
//! Zones are chosen first-eligible in name order, so plans are deterministic.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels;
use crate::requirements::{Operator, Requirement};

use super::plan::Unschedulable;
use super::problem::{PodSpec, Problem, selector_matches};
use super::spread::eligible_zones;

fn has_zone_terms(pod: &PodSpec) -> bool {
    !pod.zone_affinity.is_empty() || zone_anti_terms(pod).next().is_some()
}

/// A pod's zone anti-affinity selectors, each with whether it is a held preference (which steers only its
/// own pod).
fn zone_anti_terms(pod: &PodSpec) -> impl Iterator<Item = (&BTreeMap<String, String>, bool)> {
    pod.zone_anti_affinity
        .iter()
        .map(|s| (s, false))
        .chain(pod.held_selectors(labels::ZONE).map(|s| (s, true)))
}

/// Zones holding pods (on existing nodes) that match `selector`.
fn existing_zones(problem: &Problem, selector: &BTreeMap<String, String>) -> BTreeSet<String> {
    problem
        .existing
        .iter()
        .filter(|n| n.pod_labels.iter().any(|l| selector_matches(selector, l)))
        .filter_map(|n| n.labels.get(labels::ZONE).cloned())
        .collect()
}

/// Where the pods matching each zone (anti-)affinity selector of the problem run or are pinned: counted as
/// pods are pinned, so asking costs the selector's zones, not a pass over every pod.
struct Occupancy<'p> {
    /// Per selector: the zones of existing nodes running a matching pod.
    existing: Vec<BTreeSet<String>>,
    /// Per selector: pods pinned so far that match it, per zone.
    counts: Vec<BTreeMap<String, usize>>,
    by_selector: std::collections::HashMap<&'p BTreeMap<String, String>, usize>,
    /// Per pod: the selectors it matches.
    matches: Vec<Vec<usize>>,
    /// The zone each pod is pinned to in this pass.
    pinned: Vec<Option<String>>,
}

impl<'p> Occupancy<'p> {
    fn new(problem: &'p Problem) -> Self {
        let mut by_selector = std::collections::HashMap::new();
        let mut existing = Vec::new();
        for pod in &problem.pods {
            for selector in pod.zone_affinity.iter().chain(zone_anti_terms(pod).map(|(s, _)| s)) {
                by_selector.entry(selector).or_insert_with(|| {
                    existing.push(existing_zones(problem, selector));
                    existing.len() - 1
                });
            }
        }
        let matches = problem
            .pods
            .iter()
            .map(|pod| by_selector.iter().filter(|(s, _)| pod.matched_by(s)).map(|(_, &k)| k).collect())
            .collect();
        Occupancy {
            counts: vec![BTreeMap::new(); existing.len()],
            existing,
            by_selector,
            matches,
            pinned: vec![None; problem.pods.len()],
        }
    }

    /// Zones where pods matching `selector` run or are pinned, pod `me` aside.
    fn zones(&self, selector: &BTreeMap<String, String>, me: usize) -> BTreeSet<String> {
        let Some(&k) = self.by_selector.get(selector) else { return BTreeSet::new() };
        let mine = self.pinned[me].as_ref().filter(|_| self.matches[me].contains(&k));
        let mut zones = self.existing[k].clone();
        zones.extend(
            self.counts[k].iter().filter(|&(z, &n)| n > usize::from(mine == Some(z))).map(|(z, _)| z.clone()),
        );
        zones
    }

    fn pin(&mut self, pod: usize, zone: String) {
        self.unpin(pod);
        for &k in &self.matches[pod] {
            *self.counts[k].entry(zone.clone()).or_default() += 1;
        }
        self.pinned[pod] = Some(zone);
    }

    fn unpin(&mut self, pod: usize) {
        if let Some(zone) = self.pinned[pod].take() {
            for &k in &self.matches[pod] {
                if let Some(n) = self.counts[k].get_mut(&zone) {
                    *n -= 1;
                }
            }
        }
    }
}

/// The problem with zone-affinity pods pinned, and the pods no zone can take (taken out of the problem).
pub(crate) fn pin(problem: &Problem) -> Option<(Problem, Vec<Unschedulable>)> {
    if !problem.pods.iter().any(has_zone_terms) {
        return None;
    }
    let mut pods = problem.pods.clone();
    let mut occupancy = Occupancy::new(problem);
    let mut unschedulable: BTreeMap<usize, String> = BTreeMap::new();

    // Anti-affinity first: each such pod takes a zone no other matching pod holds.
    // (selector, zone, held preference): pods matching the selector keep out of the zone.
    let mut repelled: Vec<(BTreeMap<String, String>, String, bool)> = Vec::new();
    // A held preference steers its own pod only: kube-scheduler does not keep other pods away for it.
    let kept_out = |pod: &PodSpec, (selector, _, held): &(BTreeMap<String, String>, String, bool)| {
        !*held && pod.matched_by(selector)
    };
    for (i, pod) in pods.iter().enumerate() {
        let terms: Vec<(BTreeMap<String, String>, bool)> =
            zone_anti_terms(pod).map(|(s, held)| (s.clone(), held)).collect();
        if terms.is_empty() {
            continue;
        }
        let mut allowed: BTreeSet<String> = eligible_zones(problem, pod).into_iter().collect();
        for (selector, _) in &terms {
            for z in occupancy.zones(selector, i) {
                allowed.remove(&z);
            }
        }
        for r in &repelled {
            if kept_out(pod, r) {
                allowed.remove(&r.1);
            }
        }
        match allowed.into_iter().next() {
            Some(zone) => {
                for (selector, held) in terms {
                    repelled.push((selector, zone.clone(), held));
                }
                occupancy.pin(i, zone);
            }
            None => {
                unschedulable.insert(
                    i,
                    "pod anti-affinity on topology.kubernetes.io/zone: every zone it may use already holds a \
                     matching pod"
                        .to_owned(),
                );
            }
        }
    }

    // Affinity: follow the group's zone, start it, or pull the targets along.
    for i in 0..pods.len() {
        if pods[i].zone_affinity.is_empty() || unschedulable.contains_key(&i) {
            continue;
        }
        if let Some(zone) = occupancy.pinned[i].clone() {
            // Pinned by its anti-affinity: the affinity must hold there.
            let ok = pods[i].zone_affinity.iter().all(|s| {
                let zones = occupancy.zones(s, i);
                zones.contains(&zone) || (zones.is_empty() && pods[i].matched_by(s))
            });
            if !ok {
                occupancy.unpin(i);
                unschedulable.insert(i, "pod affinity and anti-affinity on zone cannot both hold".to_owned());
            }
            continue;
        }
        let mut allowed: BTreeSet<String> = eligible_zones(problem, &pods[i]).into_iter().collect();
        let mut why = None;
        for selector in pods[i].zone_affinity.clone() {
            let zones = occupancy.zones(&selector, i);
            if !zones.is_empty() {
                allowed.retain(|z| zones.contains(z));
                continue;
            }
            if pods[i].matched_by(&selector) {
                continue; // the first of a self-affine group may go anywhere
            }
            // No pod matching the selector runs: pending ones come along to this pod's zone.
            let targets: Vec<usize> = (0..pods.len())
                .filter(|&j| j != i && occupancy.pinned[j].is_none() && pods[j].matched_by(&selector))
                .collect();
            let shared = allowed
                .iter()
                .find(|z| targets.iter().any(|&j| eligible_zones(problem, &pods[j]).contains(z)))
                .cloned();
            match shared {
                Some(zone) if !targets.is_empty() => {
                    for j in targets {
                        if eligible_zones(problem, &pods[j]).contains(&zone) {
                            occupancy.pin(j, zone.clone());
                        }
                    }
                    allowed.retain(|z| *z == zone);
                }
                _ => {
                    why = Some(format!(
                        "pod affinity on topology.kubernetes.io/zone: no pod matching {selector:?} runs or can run in a zone it may use"
                    ))
                }
            }
        }
        match (why, allowed.into_iter().next()) {
            (None, Some(zone)) => occupancy.pin(i, zone),
            (why, _) => {
                unschedulable.insert(
                    i,
                    why.unwrap_or_else(|| {
                        "pod affinity on topology.kubernetes.io/zone: the zones its selectors require are not \
                         ones it may use"
                            .to_owned()
                    }),
                );
            }
        }
    }

    // Pods matching an anti-affinity pod's selector keep out of its zone.
    for (i, pod) in pods.iter_mut().enumerate() {
        if occupancy.pinned[i].is_none() {
            let avoid: Vec<&str> =
                repelled.iter().filter(|r| kept_out(pod, r)).map(|(_, z, _)| z.as_str()).collect();
            if !avoid.is_empty() {
                pod.require(Requirement::new(labels::ZONE, Operator::NotIn, &avoid).expect("values given"));
            }
        }
    }
    for (i, zone) in occupancy.pinned.iter().enumerate() {
        if let Some(zone) = zone {
            pods[i]
                .require(Requirement::new(labels::ZONE, Operator::In, &[zone.as_str()]).expect("one value"));
        }
    }
    let out: Vec<Unschedulable> = unschedulable
        .iter()
        .map(|(&i, reason)| Unschedulable { pod: pods[i].name.clone(), reason: reason.clone() })
        .collect();
    let pods = pods.into_iter().enumerate().filter(|(i, _)| !unschedulable.contains_key(i)).map(|(_, p)| p);
    Some((problem.with_pods(pods.collect()), out))
}
