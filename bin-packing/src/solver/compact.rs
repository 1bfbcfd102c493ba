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

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;

use super::greedy;
use super::index::{Index, RequirementSets};
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
/// The most nodes a rebalance searches for a pod to exchange, for each pod that fits nowhere as it is.
const SWAP_SCAN: usize = 64;
/// How far apart a node's cpu and memory shares must be for its pods to be exchanged.
const SWAP_IMBALANCE: f64 = 0.2;
/// Exchange searches in a row that find none before a node stops searching.
const SWAP_MISSES: usize = 8;

/// The types of a pool that admit some requirements, as launches.
struct Launches<'a> {
    /// (cheapest admitted offering price, usable room) of each admitting type, cheapest first.
    by_price: Vec<(Price, &'a Resources)>,
    /// The lowest price per millicore and per byte of memory among them (no launch that holds some
    /// requests costs less than the requests at these rates).
    rates: (f64, f64),
}

impl<'a> Launches<'a> {
    fn new(index: &'a Index, pool: usize, requirements: &Requirements) -> Self {
        // The admitted offerings come cheapest first: each type's first is its cheapest. Ties in price go
        // by the type's position in the pool.
        let types = &index.pools[pool].types;
        let mut seen = vec![false; types.len()];
        let mut cheapest: Vec<(Price, usize)> = Vec::new();
        for choice in index.admitted(pool, requirements).iter() {
            if !std::mem::replace(&mut seen[choice.pos], true) {
                cheapest.push((choice.price, choice.pos));
            }
        }
        cheapest.sort_unstable();
        let by_price: Vec<(Price, &'a Resources)> =
            cheapest.into_iter().map(|(price, pos)| (price, &types[pos].usable)).collect();
        let rate =
            |size: i64, price: Price| if size > 0 { price.0 as f64 / size as f64 } else { f64::INFINITY };
        let rates = by_price.iter().fold((f64::INFINITY, f64::INFINITY), |(cpu, memory), (price, usable)| {
            (cpu.min(rate(usable.cpu_millis, *price)), memory.min(rate(usable.memory_bytes, *price)))
        });
        Launches { by_price, rates }
    }

    /// The cheapest, at most `budget`, that holds `requests`.
    fn cheapest_fit(&self, requests: &Resources, budget: Price) -> Option<(Price, &'a Resources)> {
        // Launches cheaper than the requests at the lowest rates cannot hold them: skip them at once.
        let (cpu, memory) = self.rates;
        let floor =
            (requests.cpu_millis as f64 * cpu).max(requests.memory_bytes as f64 * memory) * (1.0 - 1e-9);
        let first = self.by_price.partition_point(|(price, _)| (price.0 as f64) < floor);
        self.by_price[first..]
            .iter()
            .take_while(|(price, _)| *price <= budget)
            .find(|(_, usable)| requests.fits_in(usable))
            .copied()
    }
}

/// What the pods of one node, or of nodes merged, need from the node they run on.
#[derive(Clone)]
struct Needs {
    requests: Resources,
    /// Their requirements, as an entry of the pool's `Shapes`.
    shape: usize,
    /// Pods per class, for the classes with a per-node cap or conflicts (the others go anywhere).
    classes: Vec<(usize, i64)>,
}

/// The distinct requirements of a pool's nodes and classes (and of merges of them), each with the pool's
/// types that admit it (worked out when first needed): requirements are compared once per pair, not once
/// per trial merge.
struct Shapes<'a, 'p> {
    index: &'a Index<'p>,
    pool: usize,
    sets: RequirementSets,
    /// Per shape (set id), once asked for: its launches.
    launches: Vec<Option<Launches<'a>>>,
    /// The most room any type of the pool has.
    largest: Resources,
}

impl<'a, 'p> Shapes<'a, 'p> {
    fn new(index: &'a Index<'p>, pool: usize) -> Self {
        let mut largest = Resources::new();
        for t in &index.pools[pool].types {
            largest.max_assign(&t.usable);
        }
        Shapes { index, pool, sets: RequirementSets::default(), launches: Vec::new(), largest }
    }

    /// The shape of these requirements, added when new.
    fn intern(&mut self, requirements: Requirements) -> usize {
        self.sets.intern(requirements)
    }

    /// Both shapes on one node, if their requirements can hold together.
    fn join(&mut self, a: usize, b: usize) -> Option<usize> {
        self.sets.join(a, b)
    }

    fn requirements(&self, shape: usize) -> &Requirements {
        self.sets.get(shape)
    }

    /// The cheapest launch of this shape, at most `budget`, that holds `requests`: its price and room.
    fn cheapest_fit(
        &mut self,
        shape: usize,
        requests: &Resources,
        budget: Price,
    ) -> Option<(Price, &'a Resources)> {
        let (index, pool) = (self.index, self.pool);
        self.launches.resize_with(self.sets.len(), || None);
        let requirements = self.sets.get(shape);
        self.launches[shape]
            .get_or_insert_with(|| Launches::new(index, pool, requirements))
            .cheapest_fit(requests, budget)
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
pub(crate) fn compact(index: &Index, nodes: Vec<NewNode>, rebalance: bool) -> Vec<NewNode> {
    let class_of = index.class_of_pods();
    let free: Vec<bool> = (0..index.classes.len()).map(|c| mergeable(index, c)).collect();
    // `conflicts` is symmetric, so a class's row says whether it conflicts with any class.
    let limited: Vec<bool> = index
        .classes
        .iter()
        .zip(&index.conflicts)
        .map(|(class, row)| class.per_node_cap != i64::MAX || row.iter().any(|&x| x))
        .collect();
    let movable: Vec<bool> = (0..index.classes.len()).map(|c| !limited[c] && movable(index, c)).collect();
    // Per pool, its nodes by zone and capacity type.
    let mut buckets: BTreeMap<usize, BTreeMap<(String, crate::CapacityType), Vec<NewNode>>> = BTreeMap::new();
    // Per pool: what its limits leave after every node of the plan, each charged as the greedy charges it.
    let mut slack: Vec<Limits> = index.remaining_limits();
    let mut out = Vec::new();
    for node in nodes {
        let pool = index.pools.iter().position(|p| p.template.name == node.nodepool);
        if let Some(p) = pool
            && !slack[p].is_unlimited()
        {
            slack[p].consume(&greedy::charge(index, &node.alternatives), 1);
        }
        // Under minValues a merged node's alternatives might not keep enough values open: left alone.
        let pool = pool.filter(|&p| !index.pools[p].template.has_min_values());
        let mergeable =
            pool.is_some() && node.pods.iter().all(|p| class_of.get(p.as_str()).is_some_and(|&c| free[c]));
        match pool {
            Some(pool) if mergeable => buckets
                .entry(pool)
                .or_default()
                .entry((node.launch.zone.clone(), node.launch.capacity_type))
                .or_default()
                .push(node),
            _ => out.push(node),
        }
    }
    for (pool, by_zone) in buckets {
        if by_zone.values().map(Vec::len).sum::<usize>() < 2 {
            out.extend(by_zone.into_values().flatten());
            continue;
        }
        let nodes = PoolNodes { index, pool, class_of: &class_of, limited: &limited };
        let limits = &mut slack[pool];
        let mut shapes = Shapes::new(index, pool);
        let mut merged = Vec::new();
        for bucket in by_zone.into_values() {
            let bucket: Vec<(NewNode, Option<Needs>)> = bucket
                .into_iter()
                .map(|node| {
                    let needs = nodes.node_needs(&node, &mut shapes);
                    (node, needs)
                })
                .collect();
            // Merges that save first, so nodes of complementary shapes find each other before merges at
            // equal price fill the large nodes with more of the same; then those, for fewer nodes.
            let bucket = nodes.merge(bucket, &mut shapes, limits, true);
            merged.extend(nodes.merge(bucket, &mut shapes, limits, false));
        }
        // Merging stops where nodes carry per-node constraints (one pod of each group per node, the pod
        // limit): what is left unbalanced sheds the pods free to go elsewhere in the pool.
        // A rebalanced node may become a type larger in a limited resource than it was: not under limits.
        if rebalance && limits.is_unlimited() {
            out.extend(nodes.rebalance(merged, &mut shapes, &movable));
        } else {
            out.extend(merged.into_iter().map(|(n, _)| n));
        }
    }
    out
}

/// The new nodes of one NodePool, and what merging them needs to know.
struct PoolNodes<'a, 'i, 'p> {
    index: &'a Index<'p>,
    pool: usize,
    class_of: &'a FxHashMap<&'i str, usize>,
    /// Per class: whether it has a per-node cap or conflicts with some class.
    limited: &'a [bool],
}

impl PoolNodes<'_, '_, '_> {
    /// One pass: each node, largest first, gathers the later nodes that lower the cost when added (or, unless
    /// `saving`, keep it); a node that would raise it may still join with the next few when together they
    /// lower it.
    fn merge(
        &self,
        mut nodes: Vec<(NewNode, Option<Needs>)>,
        shapes: &mut Shapes,
        limits: &mut Limits,
        saving: bool,
    ) -> Vec<(NewNode, Option<Needs>)> {
        let (index, pool) = (self.index, self.pool);
        // Largest first (stable): small nodes join the large ones, whose spare room they fill.
        nodes.sort_by_key(|(n, _)| std::cmp::Reverse(n.launch.price));
        let (nodes, needs): (Vec<NewNode>, Vec<Option<Needs>>) = nodes.into_iter().unzip();
        let mut out = Vec::new();
        let mut nodes = nodes.into_iter().map(Some).collect::<Vec<_>>();
        for i in 0..nodes.len() {
            let Some(first) = nodes[i].take() else { continue };
            let Some(start) = &needs[i] else {
                out.push((first, None));
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
                    Some((cheaper, _)) => {
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
            if members.len() == 1 {
                out.extend(members.into_iter().map(|n| (n, Some(merged.clone()))));
                continue;
            }
            let requirements = shapes.requirements(merged.shape).clone();
            match finish(
                index,
                pool,
                Merged { members, requests: merged.requests.clone(), requirements, price },
                limits,
            ) {
                Ok(node) => out.push((node, Some(merged))),
                Err(members) => out.extend(members.into_iter().map(|n| (n, None))),
            }
        }
        out
    }

    /// Moves pods of classes without per-node constraints off a node into the spare room of the pool's
    /// other nodes, when that lets the node be a cheaper type (or go): the dearest nodes shed first, their
    /// pods heaviest first in the resource the node is fullest in. A node that takes pods keeps its type
    /// (or a cheaper one that still holds them), so the plan's cost only falls.
    fn rebalance(
        &self,
        nodes: Vec<(NewNode, Option<Needs>)>,
        shapes: &mut Shapes,
        movable: &[bool],
    ) -> Vec<NewNode> {
        let index = self.index;
        let info = &index.pools[self.pool];
        // Nodes whose needs or type are unknown here stay as they are.
        let mut out = Vec::new();
        let mut kept_nodes = Vec::new();
        let mut needs = Vec::new();
        let mut usable: Vec<&Resources> = Vec::new();
        let by_name: HashMap<&str, &Resources> =
            info.types.iter().map(|pt| (index.instance_type(pt).name.as_str(), &pt.usable)).collect();
        for (node, need) in nodes {
            match (need, by_name.get(node.launch.instance_type.as_str())) {
                (Some(need), Some(&room)) => {
                    kept_nodes.push(node);
                    needs.push(need);
                    usable.push(room);
                }
                _ => out.push(node),
            }
        }
        let mut nodes = kept_nodes;
        let mut room: Vec<Resources> = needs.iter().zip(&usable).map(|(n, u)| u.minus(&n.requests)).collect();
        let mut price: Vec<Price> = nodes.iter().map(|n| n.launch.price).collect();
        let mut changed = vec![false; nodes.len()];
        // Per node: each pod's class, in the order of its pods.
        let mut classes_of: Vec<Vec<usize>> = nodes
            .iter()
            .map(|n| {
                n.pods.iter().map(|p| self.class_of.get(p.as_str()).copied().unwrap_or(usize::MAX)).collect()
            })
            .collect();
        // Per class: its requirements as a shape (whether a node admits its pods).
        let mut class_shape: BTreeMap<usize, Option<usize>> = BTreeMap::new();
        let mut dearest: Vec<usize> = (0..nodes.len()).collect();
        dearest.sort_by_key(|&i| std::cmp::Reverse(price[i]));
        for &d in &dearest {
            let fullest = index
                .dims
                .iter()
                .filter(|dim| usable[d].get(dim) > 0)
                .max_by(|a, b| {
                    let share = |dim: &crate::resources::ResourceName| {
                        needs[d].requests.get(dim) as f64 / usable[d].get(dim) as f64
                    };
                    share(a).total_cmp(&share(b))
                })
                .cloned();
            let Some(fullest) = fullest else { continue };
            let mut pods: Vec<(usize, usize)> = classes_of[d]
                .iter()
                .enumerate()
                .filter(|&(_, &c)| movable.get(c) == Some(&true))
                .map(|(k, &c)| (k, c))
                .collect();
            // Exchanges are searched for only where cpu and memory are far apart in how full they are (else
            // the node is full all round and shedding pods that fit nowhere gains nothing), and only until a
            // few searches in a row find none.
            let share = |dim: &crate::resources::ResourceName| {
                needs[d].requests.get(dim) as f64 / usable[d].get(dim).max(1) as f64
            };
            let imbalance = (share(&crate::resources::ResourceName::Cpu)
                - share(&crate::resources::ResourceName::Memory))
            .abs();
            let mut swap_misses = if imbalance > SWAP_IMBALANCE { 0 } else { SWAP_MISSES };
            if pods.is_empty() {
                continue;
            }
            pods.sort_by_key(|&(k, c)| (std::cmp::Reverse(index.classes[c].requests.get(&fullest)), k));
            // Where each pod would go (straight into another node's room, or in exchange for a pod of that
            // node lighter in the resource this one is fullest in), and what the node keeps.
            let mut moves: Vec<Move> = Vec::new();
            let mut kept = needs[d].requests.clone();
            for (k, c) in pods {
                let requests = &index.classes[c].requests;
                let shape = *class_shape.entry(c).or_insert_with(|| self.class_needs(c, shapes));
                let Some(shape) = shape else { continue };
                let candidates = dearest.iter().copied().filter(|&r| r != d && !nodes[r].pods.is_empty());
                let mut admits = |r: usize| shapes.join(needs[r].shape, shape) == Some(needs[r].shape);
                let direct =
                    candidates.clone().take(MERGE_SCAN).find(|&r| requests.fits_in(&room[r]) && admits(r));
                if let Some(r) = direct {
                    room[r].sub_assign(requests);
                    kept.sub_assign(requests);
                    moves.push(Move { pod: k, class: c, from: d, to: r });
                    continue;
                }
                // An exchange: a pod q of a receiver, movable here, lighter in the fullest resource, whose
                // going makes room for this one.
                if swap_misses >= SWAP_MISSES {
                    continue;
                }
                let receivers: Vec<usize> =
                    candidates.take(MERGE_SCAN).filter(|&r| admits(r)).take(SWAP_SCAN).collect();
                let swap = receivers.iter().find_map(|&r| {
                    classes_of[r].iter().enumerate().find_map(|(q, &e)| {
                        let usable_here = movable.get(e) == Some(&true)
                            && index.classes[e].requests.get(&fullest) < requests.get(&fullest)
                            && !moves.iter().any(|m| m.from == r && m.pod == q)
                            && requests.fits_in(&room[r].plus(&index.classes[e].requests));
                        if !usable_here {
                            return None;
                        }
                        let their_shape =
                            *class_shape.entry(e).or_insert_with(|| self.class_needs(e, shapes));
                        (their_shape.and_then(|t| shapes.join(needs[d].shape, t)) == Some(needs[d].shape))
                            .then_some((r, q, e))
                    })
                });
                if swap.is_none() {
                    swap_misses += 1;
                }
                if let Some((r, q, e)) = swap {
                    swap_misses = 0;
                    let theirs = &index.classes[e].requests;
                    room[r].add_assign(theirs);
                    room[r].sub_assign(requests);
                    kept.sub_assign(requests);
                    kept.add_assign(theirs);
                    moves.push(Move { pod: k, class: c, from: d, to: r });
                    moves.push(Move { pod: q, class: e, from: r, to: d });
                }
            }
            if moves.is_empty() {
                continue;
            }
            let emptied = moves.iter().all(|m| m.from == d) && moves.len() == nodes[d].pods.len();
            let cheaper = if emptied {
                None
            } else {
                shapes.cheapest_fit(needs[d].shape, &kept, Price(price[d].0.saturating_sub(1)))
            };
            if !emptied && cheaper.is_none() {
                for m in &moves {
                    let requests = &index.classes[m.class].requests;
                    if m.from == d {
                        room[m.to].add_assign(requests);
                    } else {
                        room[m.from].sub_assign(requests);
                    }
                }
                continue;
            }
            // Commit: the pods change nodes (new ones join the end of a node's list, so the positions of
            // those leaving stay valid until they are removed), the node shrinks (or goes).
            let mut leaving: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for m in &moves {
                let pod = nodes[m.from].pods[m.pod].clone();
                nodes[m.to].pods.push(pod);
                classes_of[m.to].push(m.class);
                leaving.entry(m.from).or_default().push(m.pod);
                let requests = &index.classes[m.class].requests;
                if m.to != d {
                    needs[m.to].requests.add_assign(requests);
                }
                if m.from != d {
                    needs[m.from].requests.sub_assign(requests);
                }
                changed[m.to] = true;
                changed[m.from] = true;
            }
            for (node, mut positions) in leaving {
                positions.sort_unstable();
                for k in positions.into_iter().rev() {
                    nodes[node].pods.remove(k);
                    classes_of[node].remove(k);
                }
            }
            needs[d].requests = kept;
            changed[d] = true;
            match cheaper {
                Some((p, u)) => {
                    price[d] = p;
                    usable[d] = u;
                    room[d] = u.minus(&needs[d].requests);
                }
                None => room[d] = Resources::new(),
            }
        }
        for (i, mut node) in nodes.into_iter().enumerate() {
            if node.pods.is_empty() {
                continue;
            }
            if changed[i] {
                let requirements = shapes.requirements(needs[i].shape);
                let alternatives: Vec<LaunchOption> = greedy::launch_choices(
                    index,
                    self.pool,
                    requirements,
                    &needs[i].requests,
                    &Limits::default(),
                    MAX_ALTERNATIVES,
                )
                .iter()
                .map(|c| greedy::launch_option(index, self.pool, c))
                .collect();
                if let Some(launch) = alternatives.first().cloned() {
                    node.labels =
                        greedy::node_labels(requirements, index.problem.catalog.get(&launch.instance_type));
                    node.launch = launch;
                    node.alternatives = alternatives;
                }
            }
            out.push(node);
        }
        out
    }

    /// The requirements of a class's pods in this pool, as a shape.
    fn class_needs(&self, c: usize, shapes: &mut Shapes) -> Option<usize> {
        let Ok(cp) = &self.index.classes[c].per_pool[self.pool] else { return None };
        Some(shapes.intern(cp.requirements.clone()))
    }

    /// A node's requests (its pods', each with its pod slot), requirements (the pool's, its zone and
    /// capacity type, and every pod class's) and pods per class; `None` when a pod's class cannot use the
    /// pool.
    fn node_needs(&self, node: &NewNode, shapes: &mut Shapes) -> Option<Needs> {
        let index = self.index;
        let mut requirements = index.pools[self.pool]
            .node_requirements
            .clone()
            .with(Requirement::single(labels::ZONE, &node.launch.zone))
            .with(Requirement::single(labels::CAPACITY_TYPE, node.launch.capacity_type.as_str()));
        let mut requests = Resources::new();
        let mut classes: Vec<(usize, i64)> = Vec::new();
        let mut seen: Vec<usize> = Vec::new();
        for pod in &node.pods {
            let &c = self.class_of.get(pod.as_str())?;
            let class = &index.classes[c];
            requests.add_assign(&class.requests);
            if !seen.contains(&c) {
                seen.push(c);
                let Ok(cp) = &class.per_pool[self.pool] else { return None };
                if !cp.plain {
                    requirements = requirements.intersection(&cp.requirements);
                }
            }
            if self.limited[c] {
                match classes.iter_mut().find(|(d, _)| *d == c) {
                    Some(entry) => entry.1 += 1,
                    None => classes.push((c, 1)),
                }
            }
        }
        requirements.is_satisfiable().then(|| Needs { requests, shape: shapes.intern(requirements), classes })
    }
}

/// One pod changing nodes in a rebalance: its position on the node it leaves, and its class.
struct Move {
    pod: usize,
    class: usize,
    from: usize,
    to: usize,
}

/// Whether pods of class `c`, given it has no per-node cap and no conflict with any class, may move to any
/// node of the pool whose requirements admit them and that has room: no hostname pod affinity, no bundled
/// partners, no hostname spread or preference.
fn movable(index: &Index, c: usize) -> bool {
    let spec = index.classes[c].spec;
    spec.hostname_anti_affinity.is_empty()
        && spec.companion_labels.is_empty()
        && spec.held_anti_affinity.is_empty()
        && spec.topology_spread.iter().all(|s| s.topology_key != labels::HOSTNAME)
        && mergeable(index, c)
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

/// The merged node (or, should no launch hold it after all, or its NodePool's limits not take it in place
/// of its members, the nodes as they were). `limits` is what the NodePool's limits leave, updated.
fn finish(index: &Index, pool: usize, merged: Merged, limits: &mut Limits) -> Result<NewNode, Vec<NewNode>> {
    let mut members = merged.members;
    let options = greedy::launch_choices(
        index,
        pool,
        &merged.requirements,
        &merged.requests,
        &Limits::default(),
        greedy::choices_needed(index, pool, limits),
    );
    let (alternatives, charged) = greedy::limited_alternatives(index, pool, limits, options);
    let Some(launch) = alternatives.first().cloned().filter(|l| l.price <= merged.price) else {
        return Err(members); // cannot happen: `cheapest_fit` found this launch
    };
    if !limits.is_unlimited() {
        let mut after = limits.clone();
        for member in &members {
            after.consume(&greedy::charge(index, &member.alternatives), -1);
        }
        after.consume(&charged, 1);
        if !after.resources.values().all(|&left| left >= 0) {
            return Err(members);
        }
        *limits = after;
    }
    let pods = members.iter_mut().flat_map(|n| std::mem::take(&mut n.pods)).collect();
    Ok(NewNode {
        nodepool: index.pools[pool].template.name.clone(),
        labels: greedy::node_labels(&merged.requirements, index.problem.catalog.get(&launch.instance_type)),
        launch,
        pods,
        alternatives,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{Catalog, CatalogOptions};
    use crate::requirements::Operator;
    use crate::solver::greedy::launch_options;
    use crate::solver::{NodePoolTemplate, PodSpec, Problem, validate};

    /// Pods of 3.5 vCPU in a pool of m5 on-demand in one zone, each planned alone on an m5.xlarge (the
    /// cheapest node that holds one).
    fn one_per_node(pods: Vec<PodSpec>) -> (Problem, Vec<NewNode>) {
        let problem = m5_problem(pods);
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

    /// The pods, in a pool of m5 on-demand in one zone.
    fn m5_problem(pods: Vec<PodSpec>) -> Problem {
        let mut pool = NodePoolTemplate::new("default");
        for (key, value) in [
            (labels::aws::INSTANCE_FAMILY, "m5"),
            (labels::ZONE, "us-east-1a"),
            (labels::CAPACITY_TYPE, "on-demand"),
        ] {
            pool.requirements.add(Requirement::new(key, Operator::In, &[value]).unwrap());
        }
        let catalog = Arc::new(Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap());
        Problem { pods, existing: vec![], nodepools: vec![pool], daemonsets: vec![], catalog }
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
        let merged = compact(&index, nodes, true);
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
        let merged = compact(&index, nodes.clone(), true);
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
        let merged = compact(&index, nodes, true);
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
        let merged = compact(&index, nodes, true);
        assert_eq!(merged.len(), 1, "{merged:?}");
        assert_eq!(merged[0].launch.instance_type, "m5.xlarge");
        assert_eq!(merged[0].launch.price.0 * 2, before);
        assert_eq!(validate::violations(&problem, &plan(merged)), Vec::<String>::new());
    }

    #[test]
    fn a_pod_free_to_go_anywhere_moves_to_spare_room_so_its_node_can_shrink() {
        // Two pods of one group (one per node) cannot share a node, so the nodes cannot merge; the free pod
        // beside the second moves to the first node's spare room and the second node becomes smaller.
        let grouped = |name: &str, cpu: i64| {
            PodSpec::new(name, Resources::new().with_cpu_millis(cpu).with_memory_mib(4096))
                .with_label("app", "g")
                .with_hostname_anti_affinity(&[("app", "g")])
        };
        let free = PodSpec::new("free", Resources::new().with_cpu_millis(2500).with_memory_mib(8192));
        let problem = m5_problem(vec![grouped("g1", 5000), grouped("g2", 3000), free]);
        let index = Index::build(&problem);
        let node = |names: &[&str]| {
            let mut requests = Resources::new();
            for name in names {
                let mut pod = problem.pods.iter().find(|p| p.name == *name).unwrap().requests.clone();
                pod.pods = 1;
                requests.add_assign(&pod);
            }
            let requirements = index.pools[0].node_requirements.clone();
            let options: Vec<LaunchOption> =
                launch_options(&index, 0, &requirements, &requests, &Limits::default())
                    .into_iter()
                    .map(|(_, o)| o)
                    .collect();
            NewNode {
                nodepool: "default".into(),
                labels: BTreeMap::new(),
                launch: options[0].clone(),
                pods: names.iter().map(|n| n.to_string()).collect(),
                alternatives: options,
            }
        };
        let nodes = vec![node(&["g1"]), node(&["g2", "free"])];
        let types: Vec<&str> = nodes.iter().map(|n| n.launch.instance_type.as_str()).collect();
        assert_eq!(types, ["m5.2xlarge", "m5.2xlarge"]);
        let before: u64 = nodes.iter().map(|n| n.launch.price.0).sum();
        let after = compact(&index, nodes, true);
        let mut sizes: Vec<(String, Vec<String>)> =
            after.iter().map(|n| (n.launch.instance_type.clone(), n.pods.clone())).collect();
        sizes.sort();
        assert_eq!(
            sizes,
            [
                ("m5.2xlarge".to_owned(), vec!["g1".to_owned(), "free".to_owned()]),
                ("m5.xlarge".to_owned(), vec!["g2".to_owned()])
            ]
        );
        assert!(after.iter().map(|n| n.launch.price.0).sum::<u64>() < before);
        assert_eq!(validate::violations(&problem, &plan(after)), Vec::<String>::new());
    }

    #[test]
    fn a_merge_that_would_cost_more_is_not_made() {
        // Two 3.5-vCPU pods fit an m5.2xlarge at twice an m5.xlarge; three would need an m5.4xlarge (four
        // times): the third stays alone.
        let (problem, nodes) = one_per_node((0..3).map(pod).collect());
        let index = Index::build(&problem);
        let merged = compact(&index, nodes, true);
        let sizes: Vec<(String, usize)> =
            merged.iter().map(|n| (n.launch.instance_type.clone(), n.pods.len())).collect();
        assert_eq!(sizes, [("m5.2xlarge".to_owned(), 2), ("m5.xlarge".to_owned(), 1)]);
    }
}
