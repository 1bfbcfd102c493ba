//! The cluster model as `cartwright-core::disruption` sees it: NodePool policies (consolidation policy,
//! `consolidateAfter`, budgets evaluated now) and one candidate per node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cartwright_binpack::{CapacityType, Catalog, Price};
use cartwright_core::disruption::{Budget, Candidate, Input, PoolPolicy};
use cartwright_core::hpa::Millis;
use kube::ResourceExt;

use crate::controller::Model;

/// The disruption input over `model`. `settled` says since when each node's pods are unchanged (absent:
/// long ago); `in_progress` names nodes a running command is already disrupting. A NodePool whose
/// settings are invalid disrupts nothing (its budget is zero) and is reported in the returned errors.
pub fn input<'a>(
    model: &'a Model,
    settled: &BTreeMap<String, Millis>,
    in_progress: &BTreeSet<String>,
    catalog: Arc<Catalog>,
    now_ms: Millis,
) -> (Input<'a>, Vec<String>) {
    let mut errors = Vec::new();
    let mut policies = BTreeMap::new();
    for (name, pool) in &model.pools {
        let p = cartwright_api::nodepool::disruption_policy(&pool.spec, now_ms).unwrap_or_else(|e| {
            errors.push(format!("NodePool {}: {e}", pool.name_any()));
            PoolPolicy {
                budgets: vec![Budget::parse("0", &[], None, None, now_ms).expect("a valid budget")],
                ..PoolPolicy::default()
            }
        });
        policies.insert(name.clone(), p);
    }
    let nodes = model
        .nodes
        .iter()
        .map(|n| {
            let mut view = n.view();
            // Only nodes Cartwright launched (with a NodeClaim) are candidates.
            if n.claim.is_none() {
                view.nodepool = None;
            }
            Candidate {
                view,
                price: n.price.unwrap_or(Price(0)),
                capacity_type: n.capacity_type.unwrap_or(CapacityType::OnDemand),
                pods: n.reschedulable.iter().collect(),
                blocked: n.blocked.clone(),
                initialized: n.initialized,
                disrupting: n.deleting || in_progress.contains(&n.name),
                settled_since: settled.get(&n.name).copied().unwrap_or(0),
                expires_at: n.expires_at,
                drifted: n.drifted.clone(),
            }
        })
        .collect();
    let input = Input {
        nodes,
        nodepools: model.templates.clone(),
        policies,
        daemonsets: model.daemonsets.clone(),
        catalog,
        consolidate: true,
        explain: true,
    };
    (input, errors)
}
