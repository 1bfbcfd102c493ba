//! Compaction: new nodes whose pods one instance type holds for no more than the nodes cost are launched
//! as that one node.
//!
//! Instance sizes of one family are priced per vCPU, so a plan's small nodes (the residual greedy's
//! five-pod nodes, say) usually fit a larger size of their family at the same price. The plan's cost never
//! rises and it needs fewer nodes: fewer launches, kubelets, daemonset pods and IP addresses, and a
//! consolidation that replaces nodes with fewer ones. Only nodes of one NodePool, zone and capacity type
//! merge, and only nodes whose pods carry no per-node constraint (hostname anti-affinity or spread, host
//! ports, hostname pod affinity, conflicts with other classes), so every constraint the plan met still
//! holds.

use std::collections::BTreeMap;

use super::greedy::{self, launch_options};
use super::index::Index;
use super::{LaunchOption, MAX_ALTERNATIVES, NewNode};
use crate::instance_type::Price;
use crate::labels;
use crate::requirements::{Requirement, Requirements};
use crate::resources::Resources;
use crate::solver::Limits;

/// The most neighbouring nodes one merge considers.
const MERGE_WINDOW: usize = 32;

/// Nodes merged into one: what they need together.
struct Merged {
    members: Vec<NewNode>,
    requests: Resources,
    requirements: Requirements,
    /// The cheapest launch that holds them all, no dearer than they are apart.
    price: Price,
}

/// Merges neighbouring new nodes (in plan order, within one NodePool, zone and capacity type) while one
/// instance type holds their pods for no more than they cost apart.
pub(crate) fn compact(index: &Index, nodes: Vec<NewNode>) -> Vec<NewNode> {
    let class_of = index.class_of_pods();
    let free: Vec<bool> = (0..index.classes.len()).map(|c| unconstrained(index, c)).collect();
    // Per pool: its types as (cheapest offering price, position), cheapest first.
    let by_price: Vec<Vec<(Price, usize)>> = index
        .pools
        .iter()
        .map(|pool| {
            let mut types: Vec<(Price, usize)> = pool
                .types
                .iter()
                .enumerate()
                .filter_map(|(pos, pt)| {
                    let t = index.instance_type(pt);
                    pt.offerings.iter().map(|&o| t.offerings[o].price).min().map(|p| (p, pos))
                })
                .collect();
            types.sort();
            types
        })
        .collect();

    let mut buckets: BTreeMap<(usize, String, crate::CapacityType), Vec<NewNode>> = BTreeMap::new();
    let mut out = Vec::new();
    for node in nodes {
        let pool = index.pools.iter().position(|p| p.template.name == node.nodepool);
        let mergeable =
            pool.is_some() && node.pods.iter().all(|p| class_of.get(p.as_str()).is_some_and(|&c| free[c]));
        match pool {
            Some(pool) if mergeable => buckets
                .entry((pool, node.launch.zone.clone(), node.launch.capacity_type))
                .or_default()
                .push(node),
            _ => out.push(node),
        }
    }
    for ((pool, zone, capacity_type), nodes) in buckets {
        let needs: Vec<Option<(Resources, Requirements)>> =
            nodes.iter().map(|n| node_needs(index, pool, &zone, capacity_type, n, &class_of)).collect();
        let mut largest = Resources::new();
        for t in &index.pools[pool].types {
            largest.max_assign(&t.usable);
        }
        let mut nodes = nodes.into_iter().map(Some).collect::<Vec<_>>();
        let mut i = 0;
        while i < nodes.len() {
            // The longest run from i (up to MERGE_WINDOW nodes) that one type holds for no more than it costs.
            let mut best: Option<(usize, Price)> = None;
            if let Some((requests, requirements)) = &needs[i] {
                let mut requests = requests.clone();
                let mut requirements = requirements.clone();
                let mut budget = nodes[i].as_ref().map_or(0, |n| n.launch.price.0);
                for j in i + 1..nodes.len().min(i + MERGE_WINDOW) {
                    let Some((r, q)) = &needs[j] else { break };
                    requests.add_assign(r);
                    requirements = requirements.intersection(q);
                    budget += nodes[j].as_ref().map_or(0, |n| n.launch.price.0);
                    if !requests.fits_in(&largest) || !requirements.is_satisfiable() {
                        break;
                    }
                    if let Some(price) =
                        cheapest_fit(index, pool, &by_price[pool], &requirements, &requests, Price(budget))
                    {
                        best = Some((j, price));
                    }
                }
            }
            match best {
                Some((j, price)) => {
                    // What the run needs together, added up once for the run chosen.
                    let mut merged = Merged {
                        members: Vec::new(),
                        requests: Resources::new(),
                        requirements: Requirements::new(),
                        price,
                    };
                    for (node, need) in nodes[i..=j].iter_mut().zip(&needs[i..=j]) {
                        let (r, q) = need.as_ref().expect("every node of the run has needs");
                        merged.requests.add_assign(r);
                        merged.requirements = merged.requirements.intersection(q);
                        merged.members.extend(node.take());
                    }
                    out.extend(finish(index, pool, merged));
                    i = j + 1;
                }
                None => {
                    out.extend(nodes[i].take());
                    i += 1;
                }
            }
        }
    }
    out
}

/// Whether pods of class `c` may share a node with anything else of the plan: no per-node cap, no conflict
/// with any class, no hostname pod affinity, no bundled partners.
fn unconstrained(index: &Index, c: usize) -> bool {
    let class = &index.classes[c];
    let spec = class.spec;
    class.per_node_cap == i64::MAX
        && !index.conflicts[c].iter().any(|&x| x)
        && !index.conflicts.iter().any(|row| row[c])
        && spec.hostname_anti_affinity.is_empty()
        && spec.hostname_affinity.is_empty()
        && spec.companion_labels.is_empty()
        && spec.held_anti_affinity.is_empty()
        && spec.topology_spread.iter().all(|s| s.topology_key != labels::HOSTNAME)
        && spec
            .preferred_pod_affinity
            .iter()
            .chain(&spec.preferred_pod_anti_affinity)
            .all(|(_, t)| t.topology_key != labels::HOSTNAME)
}

/// A node's requests (its pods', each with its pod slot) and requirements (the pool's, its zone and
/// capacity type, and every pod class's); `None` when a pod's class cannot use the pool.
fn node_needs(
    index: &Index,
    pool: usize,
    zone: &str,
    capacity_type: crate::CapacityType,
    node: &NewNode,
    class_of: &BTreeMap<&str, usize>,
) -> Option<(Resources, Requirements)> {
    let mut requirements = index.pools[pool]
        .node_requirements
        .clone()
        .with(Requirement::single(labels::ZONE, zone))
        .with(Requirement::single(labels::CAPACITY_TYPE, capacity_type.as_str()));
    let mut requests = Resources::new();
    let mut seen: Vec<usize> = Vec::new();
    for pod in &node.pods {
        let &c = class_of.get(pod.as_str())?;
        let class = &index.classes[c];
        requests.add_assign(&class.requests);
        if !seen.contains(&c) {
            seen.push(c);
            let Ok(cp) = &class.per_pool[pool] else { return None };
            requirements = requirements.intersection(&cp.requirements);
        }
    }
    requirements.is_satisfiable().then_some((requests, requirements))
}

/// The cheapest offering of the pool, at most `budget`, on a type that holds `requests` and admits
/// `requirements`.
fn cheapest_fit(
    index: &Index,
    pool: usize,
    by_price: &[(Price, usize)],
    requirements: &Requirements,
    requests: &Resources,
    budget: Price,
) -> Option<Price> {
    let info = &index.pools[pool];
    let mut best: Option<Price> = None;
    for &(cheapest, pos) in by_price {
        if cheapest > budget || best.is_some_and(|b| cheapest >= b) {
            break;
        }
        let pt = &info.types[pos];
        if !requests.fits_in(&pt.usable) {
            continue;
        }
        let t = index.instance_type(pt);
        if t.requirements.intersects(requirements).is_err() {
            continue;
        }
        let price = pt
            .offerings
            .iter()
            .map(|&o| &t.offerings[o])
            .filter(|o| o.is_compatible(requirements))
            .map(|o| o.price)
            .min();
        if let Some(price) = price.filter(|&p| p <= budget) {
            best = Some(best.map_or(price, |b| b.min(price)));
        }
    }
    best
}

/// The merged node (or the lone node unchanged).
fn finish(index: &Index, pool: usize, merged: Merged) -> Vec<NewNode> {
    let mut members = merged.members;
    if members.len() == 1 {
        return members;
    }
    let mut alternatives: Vec<LaunchOption> =
        launch_options(index, pool, &merged.requirements, &merged.requests, &Limits::default())
            .into_iter()
            .map(|(_, o)| o)
            .collect();
    alternatives.truncate(MAX_ALTERNATIVES);
    let Some(launch) = alternatives.first().cloned().filter(|l| l.price <= merged.price) else {
        return members; // cannot happen: `cheapest_fit` found this launch
    };
    let pods = members.iter_mut().flat_map(|n| std::mem::take(&mut n.pods)).collect();
    vec![NewNode {
        nodepool: index.pools[pool].template.name.clone(),
        labels: greedy::node_labels(&merged.requirements, index.problem.catalog.get(&launch.instance_type)),
        launch,
        pods,
        alternatives,
    }]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{Catalog, CatalogOptions};
    use crate::requirements::Operator;
    use crate::solver::{NodePoolTemplate, PodSpec, Problem, validate};

    /// Pods of 3.5 vCPU in a pool of m5 on-demand in one zone, each planned alone on an m5.xlarge (the
    /// cheapest node that holds one).
    fn one_per_node(pods: Vec<PodSpec>) -> (Problem, Vec<NewNode>) {
        let mut pool = NodePoolTemplate::new("default");
        for (key, value) in [
            (labels::aws::INSTANCE_FAMILY, "m5"),
            (labels::ZONE, "us-east-1a"),
            (labels::CAPACITY_TYPE, "on-demand"),
        ] {
            pool.requirements.add(Requirement::new(key, Operator::In, &[value]).unwrap());
        }
        let catalog = Arc::new(Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap());
        let problem = Problem { pods, existing: vec![], nodepools: vec![pool], daemonsets: vec![], catalog };
        let index = Index::build(&problem);
        let nodes = problem
            .pods
            .iter()
            .map(|p| {
                let requirements = index.pools[0].node_requirements.clone();
                let options: Vec<LaunchOption> =
                    launch_options(&index, 0, &requirements, &p.requests, &Limits::default())
                        .into_iter()
                        .map(|(_, o)| o)
                        .collect();
                assert_eq!(options[0].instance_type, "m5.xlarge");
                NewNode {
                    nodepool: "default".into(),
                    labels: BTreeMap::new(),
                    launch: options[0].clone(),
                    pods: vec![p.name.clone()],
                    alternatives: options,
                }
            })
            .collect();
        drop(index);
        (problem, nodes)
    }

    fn pod(i: usize) -> PodSpec {
        PodSpec::new(format!("p{i}"), Resources::new().with_cpu_millis(3500).with_memory_mib(4096))
    }

    fn plan(nodes: Vec<NewNode>) -> crate::solver::Plan {
        crate::solver::Plan {
            placements: vec![],
            cost: Price(nodes.iter().map(|n| n.launch.price.0).sum()),
            new_nodes: nodes,
            unschedulable: vec![],
            lower_bound: None,
        }
    }

    #[test]
    fn small_nodes_a_larger_size_holds_for_no_more_become_one_node() {
        let (problem, nodes) = one_per_node((0..8).map(pod).collect());
        let before: u64 = nodes.iter().map(|n| n.launch.price.0).sum();
        let index = Index::build(&problem);
        let merged = compact(&index, nodes);
        // Eight 3.5-vCPU pods: an m5.8xlarge (32 vCPU) holds them at the price of eight m5.xlarge.
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].launch.instance_type, "m5.8xlarge");
        assert!(merged[0].launch.price.0 <= before);
        assert_eq!(merged[0].pods.len(), 8);
        assert!(merged[0].alternatives.iter().all(|a| a.price >= merged[0].launch.price));
        let plan = plan(merged);
        assert_eq!(validate::violations(&problem, &plan), Vec::<String>::new());
    }

    #[test]
    fn pods_that_must_not_share_a_node_keep_their_own_nodes() {
        let pods: Vec<PodSpec> = (0..4)
            .map(|i| pod(i).with_label("app", "db").with_hostname_anti_affinity(&[("app", "db")]))
            .collect();
        let (problem, nodes) = one_per_node(pods);
        let index = Index::build(&problem);
        let merged = compact(&index, nodes.clone());
        assert_eq!(merged, nodes, "one pod per node stays one pod per node");
    }

    #[test]
    fn a_merge_that_would_cost_more_is_not_made() {
        // Two 3.5-vCPU pods fit an m5.2xlarge at twice an m5.xlarge; three would need an m5.4xlarge (four
        // times): the third stays alone.
        let (problem, nodes) = one_per_node((0..3).map(pod).collect());
        let index = Index::build(&problem);
        let merged = compact(&index, nodes);
        let sizes: Vec<(String, usize)> =
            merged.iter().map(|n| (n.launch.instance_type.clone(), n.pods.len())).collect();
        assert_eq!(sizes, [("m5.2xlarge".to_owned(), 2), ("m5.xlarge".to_owned(), 1)]);
    }
}
