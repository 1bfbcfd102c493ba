//! Compaction: new nodes whose pods one instance type holds for no more than the nodes cost are launched
//! as that one node.
//!
//! Instance sizes of one family are priced per vCPU, so a plan's small nodes (the residual greedy's
//! five-pod nodes, say) usually fit a larger size of their family at the same price, and nodes whose pods
//! lean on different resources (one full of cpu, one of memory) fit a size smaller than the two together.
//! The plan's cost never rises and it needs fewer nodes: fewer launches, kubelets, daemonset pods and IP
//! addresses, and a consolidation that replaces nodes with fewer ones. Only nodes of one NodePool, zone and
//! capacity type merge, and only while the merged node keeps every per-node constraint its pods' classes
//! carry (hostname anti-affinity and spread as per-node caps and conflicts between classes); pods with
//! hostname pod affinity or preferences on hostname stay where the plan put them. So every constraint the
//! plan met still holds.

use std::collections::BTreeMap;

use super::greedy::{self, launch_options};
use super::index::Index;
use super::{LaunchOption, MAX_ALTERNATIVES, NewNode};
use crate::instance_type::Price;
use crate::labels;
use crate::requirements::{Requirement, Requirements};
use crate::resources::Resources;
use crate::solver::Limits;

/// The most nodes one merged node is made of.
const MERGE_WINDOW: usize = 32;
/// The most nodes a merge looks at for each node it starts from (those its pods may join).
const MERGE_SCAN: usize = 256;
/// The most nodes a merge adds on trial before one instance type holds them for no more than they cost
/// apart (two 3.5-vCPU pods fit the size of two nodes, three need the size of four): the trial is dropped
/// beyond it.
const MERGE_TRIAL: usize = 4;

/// What the pods of one node, or of nodes merged, need from the node they run on.
#[derive(Clone)]
struct Needs {
    requests: Resources,
    /// Their requirements, as an entry of the bucket's `Shapes`.
    shape: usize,
    /// Pods per class, by class.
    classes: Vec<(usize, i64)>,
}

/// The distinct requirements of a bucket's nodes (and of merges of them), each with the pool's types that
/// admit it: requirements are compared once per pair, not once per trial merge.
struct Shapes<'a, 'p> {
    index: &'a Index<'p>,
    pool: usize,
    requirements: Vec<Requirements>,
    /// Per shape: (cheapest admitted offering price, usable room) of each admitting type, cheapest first.
    launches: Vec<Vec<(Price, &'a Resources)>>,
    /// Memoised intersections: `None` when the two cannot hold together.
    joined: BTreeMap<(usize, usize), Option<usize>>,
    /// The most room any type of the pool has.
    largest: Resources,
}

impl<'a, 'p> Shapes<'a, 'p> {
    fn new(index: &'a Index<'p>, pool: usize) -> Self {
        let mut largest = Resources::new();
        for t in &index.pools[pool].types {
            largest.max_assign(&t.usable);
        }
        Shapes {
            index,
            pool,
            requirements: Vec::new(),
            launches: Vec::new(),
            joined: BTreeMap::new(),
            largest,
        }
    }

    /// The shape of these requirements, added when new.
    fn intern(&mut self, requirements: Requirements) -> usize {
        if let Some(known) = self.requirements.iter().position(|r| *r == requirements) {
            return known;
        }
        let info = &self.index.pools[self.pool];
        let mut launches: Vec<(Price, &'a Resources)> = info
            .types
            .iter()
            .filter_map(|pt| {
                let t = self.index.instance_type(pt);
                if t.requirements.intersects(&requirements).is_err() {
                    return None;
                }
                let price = pt
                    .offerings
                    .iter()
                    .map(|&o| &t.offerings[o])
                    .filter(|o| o.is_compatible(&requirements))
                    .map(|o| o.price)
                    .min()?;
                Some((price, &pt.usable))
            })
            .collect();
        launches.sort_by_key(|&(price, _)| price);
        self.requirements.push(requirements);
        self.launches.push(launches);
        self.requirements.len() - 1
    }

    /// Both shapes on one node, if their requirements can hold together.
    fn join(&mut self, a: usize, b: usize) -> Option<usize> {
        if a == b {
            return Some(a);
        }
        let key = (a.min(b), a.max(b));
        if let Some(&known) = self.joined.get(&key) {
            return known;
        }
        let both = self.requirements[a].intersection(&self.requirements[b]);
        let joined = both.is_satisfiable().then(|| self.intern(both));
        self.joined.insert(key, joined);
        joined
    }

    /// The cheapest launch of this shape, at most `budget`, that holds `requests`.
    fn cheapest_fit(&self, shape: usize, requests: &Resources, budget: Price) -> Option<Price> {
        self.launches[shape]
            .iter()
            .take_while(|(price, _)| *price <= budget)
            .find(|(_, usable)| requests.fits_in(usable))
            .map(|&(price, _)| price)
    }

    /// Both sets of pods on one node, when their classes allow it (per-node caps, conflicts), their
    /// requirements hold together and some type of the pool could be large enough.
    fn join_needs(&mut self, a: &Needs, b: &Needs) -> Option<Needs> {
        let index = self.index;
        for &(c, k) in &b.classes {
            for &(d, n) in &a.classes {
                if c == d {
                    let total = n + k;
                    if total > index.classes[c].per_node_cap || (index.conflicts[c][c] && total > 1) {
                        return None;
                    }
                } else if index.conflicts[c][d] {
                    return None;
                }
            }
        }
        let requests = a.requests.plus(&b.requests);
        if !requests.fits_in(&self.largest) {
            return None;
        }
        let shape = self.join(a.shape, b.shape)?;
        let mut classes = a.classes.clone();
        for &(c, k) in &b.classes {
            match classes.iter_mut().find(|(d, _)| *d == c) {
                Some(entry) => entry.1 += k,
                None => classes.push((c, k)),
            }
        }
        Some(Needs { requests, shape, classes })
    }
}

/// Merges new nodes of one NodePool, zone and capacity type while one instance type holds their pods for no
/// more than they cost apart.
pub(crate) fn compact(index: &Index, nodes: Vec<NewNode>) -> Vec<NewNode> {
    let class_of = index.class_of_pods();
    let free: Vec<bool> = (0..index.classes.len()).map(|c| mergeable(index, c)).collect();
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
        let bucket = Bucket { index, pool, zone: &zone, capacity_type, class_of: &class_of };
        let mut shapes = Shapes::new(index, pool);
        // Merges that save first, so nodes of complementary shapes find each other before merges at
        // equal price fill the large nodes with more of the same; then those, for fewer nodes.
        let nodes = bucket.merge(nodes, &mut shapes, true);
        out.extend(bucket.merge(nodes, &mut shapes, false));
    }
    out
}

/// The nodes of one NodePool, zone and capacity type, and what merging them needs to know.
struct Bucket<'a, 'i, 'p> {
    index: &'a Index<'p>,
    pool: usize,
    zone: &'a str,
    capacity_type: crate::CapacityType,
    class_of: &'a BTreeMap<&'i str, usize>,
}

impl Bucket<'_, '_, '_> {
    /// One pass: each node, largest first, gathers the later nodes that lower the cost when added (or, unless
    /// `saving`, keep it); a node that would raise it may still join with the next few when together they
    /// lower it.
    fn merge(&self, mut nodes: Vec<NewNode>, shapes: &mut Shapes, saving: bool) -> Vec<NewNode> {
        let (index, pool) = (self.index, self.pool);
        // Largest first (stable): small nodes join the large ones, whose spare room they fill.
        nodes.sort_by_key(|n| std::cmp::Reverse(n.launch.price));
        let needs: Vec<Option<Needs>> = nodes.iter().map(|n| self.node_needs(n, shapes)).collect();
        let mut out = Vec::new();
        let mut nodes = nodes.into_iter().map(Some).collect::<Vec<_>>();
        for i in 0..nodes.len() {
            let Some(first) = nodes[i].take() else { continue };
            let Some(start) = &needs[i] else {
                out.push(first);
                continue;
            };
            // What is merged so far (its members, needs and price), and what is on trial beyond it.
            let mut members = vec![first];
            let mut merged = start.clone();
            let mut price = members[0].launch.price;
            let mut trial: Vec<usize> = Vec::new();
            let (mut trial_needs, mut trial_cost) = (merged.clone(), price.0);
            let mut scanned = 0;
            for j in i + 1..nodes.len() {
                if scanned == MERGE_SCAN || members.len() + trial.len() >= MERGE_WINDOW {
                    break;
                }
                let (Some(node), Some(need)) = (&nodes[j], &needs[j]) else { continue };
                let Some(joined) = shapes.join_needs(&trial_needs, need) else { continue };
                scanned += 1;
                trial.push(j);
                trial_cost += node.launch.price.0;
                trial_needs = joined;
                let budget = Price(if saving { trial_cost.saturating_sub(1) } else { trial_cost });
                match shapes.cheapest_fit(trial_needs.shape, &trial_needs.requests, budget) {
                    Some(cheaper) => {
                        members.extend(trial.drain(..).filter_map(|k| nodes[k].take()));
                        merged = trial_needs.clone();
                        price = cheaper;
                        trial_cost = price.0;
                    }
                    None if trial.len() >= MERGE_TRIAL => {
                        trial.clear();
                        trial_needs = merged.clone();
                        trial_cost = price.0;
                    }
                    None => {}
                }
            }
            let requirements = shapes.requirements[merged.shape].clone();
            out.extend(finish(
                index,
                pool,
                Merged { members, requests: merged.requests, requirements, price },
            ));
        }
        out
    }

    /// A node's requests (its pods', each with its pod slot), requirements (the pool's, its zone and
    /// capacity type, and every pod class's) and pods per class; `None` when a pod's class cannot use the
    /// pool.
    fn node_needs(&self, node: &NewNode, shapes: &mut Shapes) -> Option<Needs> {
        let index = self.index;
        let mut requirements = index.pools[self.pool]
            .node_requirements
            .clone()
            .with(Requirement::single(labels::ZONE, self.zone))
            .with(Requirement::single(labels::CAPACITY_TYPE, self.capacity_type.as_str()));
        let mut requests = Resources::new();
        let mut classes: Vec<(usize, i64)> = Vec::new();
        for pod in &node.pods {
            let &c = self.class_of.get(pod.as_str())?;
            let class = &index.classes[c];
            requests.add_assign(&class.requests);
            match classes.iter_mut().find(|(d, _)| *d == c) {
                Some(entry) => entry.1 += 1,
                None => {
                    let Ok(cp) = &class.per_pool[self.pool] else { return None };
                    if !cp.plain {
                        requirements = requirements.intersection(&cp.requirements);
                    }
                    classes.push((c, 1));
                }
            }
        }
        requirements.is_satisfiable().then(|| Needs { requests, shape: shapes.intern(requirements), classes })
    }
}

/// Nodes merged into one: what they need together.
struct Merged {
    members: Vec<NewNode>,
    requests: Resources,
    requirements: Requirements,
    /// The cheapest launch that holds them all, no dearer than they are apart.
    price: Price,
}

/// Whether pods of class `c` may join other pods on a merged node, given the per-node caps and conflicts
/// between classes (which `Shapes::join_needs` checks): not with hostname pod affinity or hostname
/// preferences, whose pods the plan placed deliberately.
fn mergeable(index: &Index, c: usize) -> bool {
    let spec = index.classes[c].spec;
    spec.hostname_affinity.is_empty()
        && spec
            .preferred_pod_affinity
            .iter()
            .chain(&spec.preferred_pod_anti_affinity)
            .all(|(_, t)| t.topology_key != labels::HOSTNAME)
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
    fn pods_that_repel_only_their_own_group_pair_up_with_other_groups() {
        // Two groups, each one pod per node, whose pods differ in size (so a group is two classes that
        // repel each other): a pod of `a` and a pod of `b` share an m5.2xlarge (the price of two
        // m5.xlarge), two pods of one group never do.
        let group = |i: usize, app: &str, cpu: i64| {
            PodSpec::new(format!("p{i}"), Resources::new().with_cpu_millis(cpu).with_memory_mib(4096))
                .with_label("app", app)
                .with_hostname_anti_affinity(&[("app", app)])
        };
        let pods = vec![group(0, "a", 3500), group(1, "a", 3000), group(2, "b", 3500), group(3, "b", 3000)];
        let (problem, nodes) = one_per_node(pods);
        let index = Index::build(&problem);
        let merged = compact(&index, nodes);
        assert_eq!(merged.len(), 2, "{merged:?}");
        for node in &merged {
            assert_eq!(node.launch.instance_type, "m5.2xlarge");
            let apps: Vec<&str> = node
                .pods
                .iter()
                .map(|p| problem.pods.iter().find(|q| &q.name == p).unwrap().labels["app"].as_str())
                .collect();
            assert!(apps.contains(&"a") && apps.contains(&"b"), "{apps:?}");
        }
        assert_eq!(validate::violations(&problem, &plan(merged)), Vec::<String>::new());
    }

    #[test]
    fn a_node_short_of_cpu_and_one_short_of_memory_become_one_node_for_less() {
        // Each needs an m5.xlarge alone (one for its cpu, one for its memory); together they fit one.
        let cpu_heavy = PodSpec::new("cpu", Resources::new().with_cpu_millis(3000).with_memory_mib(2048));
        let memory_heavy =
            PodSpec::new("memory", Resources::new().with_cpu_millis(500).with_memory_mib(10240));
        let (problem, nodes) = one_per_node(vec![cpu_heavy, memory_heavy]);
        let before: u64 = nodes.iter().map(|n| n.launch.price.0).sum();
        let index = Index::build(&problem);
        let merged = compact(&index, nodes);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].launch.instance_type, "m5.xlarge");
        assert_eq!(merged[0].launch.price.0 * 2, before);
        assert_eq!(validate::violations(&problem, &plan(merged)), Vec::<String>::new());
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
