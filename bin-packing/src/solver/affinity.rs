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

/// The problem with zone-affinity pods pinned, and the pods no zone can take (taken out of the problem).
pub(crate) fn pin(problem: &Problem) -> Option<(Problem, Vec<Unschedulable>)> {
    if !problem.pods.iter().any(has_zone_terms) {
        return None;
    }
    let mut pods = problem.pods.clone();
    // The zone each pod is pinned to in this pass.
    let mut pinned_zone: Vec<Option<String>> = vec![None; pods.len()];
    let mut unschedulable: BTreeMap<usize, String> = BTreeMap::new();
    // Zones matching pods occupy, per selector: existing nodes plus pods pinned so far.
    let occupied =
        |pods: &[PodSpec], pinned: &[Option<String>], selector: &BTreeMap<String, String>, me: usize| {
            let mut zones = existing_zones(problem, selector);
            for (j, z) in pinned.iter().enumerate() {
                if let Some(z) = z
                    && j != me
                    && pods[j].matched_by(selector)
                {
                    zones.insert(z.clone());
                }
            }
            zones
        };

    // Anti-affinity first: each such pod takes a zone no other matching pod holds.
    // (selector, zone, held preference): pods matching the selector keep out of the zone.
    let mut repelled: Vec<(BTreeMap<String, String>, String, bool)> = Vec::new();
    // A held preference steers its own pod only: kube-scheduler does not keep other pods away for it.
    let kept_out = |pod: &PodSpec, (selector, _, held): &(BTreeMap<String, String>, String, bool)| {
        !*held && pod.matched_by(selector)
    };
    for i in 0..pods.len() {
        let terms: Vec<(BTreeMap<String, String>, bool)> =
            zone_anti_terms(&pods[i]).map(|(s, held)| (s.clone(), held)).collect();
        if terms.is_empty() {
            continue;
        }
        let mut allowed: BTreeSet<String> = eligible_zones(problem, &pods[i]).into_iter().collect();
        for (selector, _) in &terms {
            for z in occupied(&pods, &pinned_zone, selector, i) {
                allowed.remove(&z);
            }
        }
        for r in &repelled {
            if kept_out(&pods[i], r) {
                allowed.remove(&r.1);
            }
        }
        match allowed.into_iter().next() {
            Some(zone) => {
                for (selector, held) in terms {
                    repelled.push((selector, zone.clone(), held));
                }
                pinned_zone[i] = Some(zone);
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
        if pinned_zone[i].is_some() {
            // Pinned by its anti-affinity: the affinity must hold there.
            let zone = pinned_zone[i].clone().expect("checked");
            let ok = pods[i].zone_affinity.iter().all(|s| {
                let zones = occupied(&pods, &pinned_zone, s, i);
                zones.contains(&zone) || (zones.is_empty() && pods[i].matched_by(s))
            });
            if !ok {
                pinned_zone[i] = None;
                unschedulable.insert(i, "pod affinity and anti-affinity on zone cannot both hold".to_owned());
            }
            continue;
        }
        let mut allowed: BTreeSet<String> = eligible_zones(problem, &pods[i]).into_iter().collect();
        let mut why = None;
        for selector in pods[i].zone_affinity.clone() {
            let zones = occupied(&pods, &pinned_zone, &selector, i);
            if !zones.is_empty() {
                allowed.retain(|z| zones.contains(z));
                continue;
            }
            if pods[i].matched_by(&selector) {
                continue; // the first of a self-affine group may go anywhere
            }
            // No pod matching the selector runs: pending ones come along to this pod's zone.
            let targets: Vec<usize> = (0..pods.len())
                .filter(|&j| j != i && pinned_zone[j].is_none() && pods[j].matched_by(&selector))
                .collect();
            let shared = allowed
                .iter()
                .find(|z| targets.iter().any(|&j| eligible_zones(problem, &pods[j]).contains(z)))
                .cloned();
            match shared {
                Some(zone) if !targets.is_empty() => {
                    for j in targets {
                        if eligible_zones(problem, &pods[j]).contains(&zone) {
                            pinned_zone[j] = Some(zone.clone());
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
            (None, Some(zone)) => pinned_zone[i] = Some(zone),
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
        if pinned_zone[i].is_none() {
            let avoid: Vec<&str> =
                repelled.iter().filter(|r| kept_out(pod, r)).map(|(_, z, _)| z.as_str()).collect();
            if !avoid.is_empty() {
                let r = Requirement::new(labels::ZONE, Operator::NotIn, &avoid).expect("values given");
                *pod = pod.clone().with_requirement(r);
            }
        }
    }
    for (i, zone) in pinned_zone.iter().enumerate() {
        if let Some(zone) = zone {
            let r = Requirement::new(labels::ZONE, Operator::In, &[zone.as_str()]).expect("one value");
            pods[i] = pods[i].clone().with_requirement(r);
        }
    }
    let out: Vec<Unschedulable> = unschedulable
        .iter()
        .map(|(&i, reason)| Unschedulable { pod: pods[i].name.clone(), reason: reason.clone() })
        .collect();
    let mut pinned = problem.clone();
    pinned.pods = pods
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !unschedulable.contains_key(i))
        .map(|(_, p)| p)
        .collect();
    Some((pinned, out))
}
