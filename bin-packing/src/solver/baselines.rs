//! Re-implementations of the peers' provisioning algorithms, run on the same [`Problem`] for side-by-side
//! comparison in `cartwright bench`. They honour the same constraints as Cartwright's solver (so every
//! plan passes the same validator) and reproduce the rules that decide cost:
//!
//! - **`karpenter-greedy`** (kubernetes-sigs/karpenter `provisioning/scheduling`): pods sorted by cpu, then
//!   memory, descending; each pod goes to the first existing node with room (initialized first), else to the
//!   first in-flight NodeClaim, fewest pods first, whose remaining instance-type options can still hold it,
//!   else to a new NodeClaim from the highest-weight NodePool that admits it. A NodeClaim keeps every instance
//!   type that holds its pods and launches the cheapest; creating one charges the NodePool's limits with the
//!   largest option (Karpenter's `subtractMax`).
//! - **`ca-least-waste`** (kubernetes/autoscaler `expander/waste`, `estimator/binpacking`): one fixed node
//!   group per (NodePool, instance type, capacity type), spanning the zones (cheapest allowed zone per node). Each round,
//!   every group estimates how many nodes the pending pods it can hold need (first-fit decreasing by
//!   cpu/allocatable + memory/allocatable); the group with the least wasted cpu fraction + memory fraction
//!   scales up. Price plays no part, as in the real expander.

use crate::instance_type::{InstanceType, Price};
use crate::resources::Resources;

use super::greedy::{MAX_ALTERNATIVES, existing_admits, existing_cap};
use super::index::{Index, fit_count};
use super::plan::{LaunchOption, NewNode, Placement, Plan, Unschedulable};
use super::problem::{Limits, Problem};
use super::reasons;

/// A NodeClaim being built by the Karpenter-style scheduler.
struct Claim {
    pool: usize,
    requirements: crate::requirements::Requirements,
    requests: Resources,
    /// Positions in the pool's type list that still hold every pod.
    options: Vec<usize>,
    pods: Vec<usize>,
    /// The classes among its pods (for anti-affinity).
    classes: Vec<usize>,
    /// Pods per class (for per-node caps).
    per_class: Vec<i64>,
    /// Per class: this claim already refused it (claims only fill up, so it stays refused).
    refused: Vec<bool>,
}

fn cheapest_offering<'a>(
    t: &'a InstanceType,
    offerings: &[usize],
    requirements: &crate::requirements::Requirements,
) -> Option<&'a crate::instance_type::Offering> {
    offerings
        .iter()
        .map(|&o| &t.offerings[o])
        .filter(|o| o.is_compatible(requirements))
        .min_by_key(|o| o.price)
}

/// Karpenter's scheduler, re-implemented.
pub fn karpenter_greedy(problem: &Problem) -> Plan {
    let index = Index::build(problem);
    let n_classes = index.classes.len();
    // Pods, not classes: Karpenter's queue is per pod (cpu desc, memory desc, then input order).
    let mut queue: Vec<(usize, usize)> = index
        .classes
        .iter()
        .enumerate()
        .flat_map(|(c, class)| class.pods.iter().map(move |&p| (c, p)))
        .collect();
    queue.sort_by(|&(ca, pa), &(cb, pb)| {
        let (a, b) = (&index.classes[ca].requests, &index.classes[cb].requests);
        b.cpu_millis.cmp(&a.cpu_millis).then(b.memory_bytes.cmp(&a.memory_bytes)).then(pa.cmp(&pb))
    });

    let mut existing_order: Vec<usize> = (0..problem.existing.len()).collect();
    existing_order.sort_by_key(|&n| !problem.existing[n].initialized);
    let mut free: Vec<Resources> = problem.existing.iter().map(|n| n.free()).collect();
    let mut limits: Vec<Limits> = index.remaining_limits();
    let mut claims: Vec<Claim> = Vec::new();
    let mut placements = Vec::new();
    let mut unschedulable_classes: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    let mut blocked = vec![vec![false; n_classes]; index.pools.len()];

    let mut placed_here: Vec<Vec<usize>> = vec![Vec::new(); problem.existing.len()];
    'pods: for (c, pod) in queue {
        let class = &index.classes[c];
        for &n in &existing_order {
            if existing_admits(class, &problem.existing[n])
                && !placed_here[n].iter().any(|&o| index.conflicts[c][o])
                && (placed_here[n].iter().filter(|&&o| o == c).count() as i64)
                    < existing_cap(class, &problem.existing[n])
                && class.requests.fits_in(&free[n])
            {
                free[n].sub_assign(&class.requests);
                placed_here[n].push(c);
                placements.push(Placement {
                    pod: problem.pods[pod].name.clone(),
                    node: problem.existing[n].name.clone(),
                });
                continue 'pods;
            }
        }
        // In-flight NodeClaims, fewest pods first (stable by creation).
        let mut order: Vec<usize> = (0..claims.len()).collect();
        order.sort_by_key(|&i| claims[i].pods.len());
        for i in order {
            let claim = &mut claims[i];
            if claim.refused[c] {
                continue;
            }
            let Ok(cp) = &class.per_pool[claim.pool] else {
                claim.refused[c] = true;
                continue;
            };
            if claim.requirements.intersects(&cp.requirements).is_err()
                || claim.classes.iter().any(|&o| index.conflicts[c][o])
                || claim.per_class[c] >= class.per_node_cap
            {
                claim.refused[c] = true;
                continue;
            }
            let requirements = claim.requirements.intersection(&cp.requirements);
            let requests = claim.requests.plus(&class.requests);
            let pool = &index.pools[claim.pool];
            let options: Vec<usize> = claim
                .options
                .iter()
                .copied()
                .filter(|&pos| {
                    let pt = &pool.types[pos];
                    cp.admits[pos]
                        && requests.fits_in(&pt.usable)
                        && cheapest_offering(index.instance_type(pt), &pt.offerings, &requirements).is_some()
                })
                .collect();
            if options.is_empty() {
                claim.refused[c] = true;
                continue;
            }
            claim.requirements = requirements;
            claim.requests = requests;
            claim.options = options;
            claim.pods.push(pod);
            claim.per_class[c] += 1;
            if !claim.classes.contains(&c) {
                claim.classes.push(c);
            }
            continue 'pods;
        }
        // A new NodeClaim from the first NodePool (by weight) that admits the pod within its limits.
        for (p, pool) in index.pools.iter().enumerate() {
            let Ok(cp) = &class.per_pool[p] else { continue };
            let options: Vec<usize> = cp
                .types
                .iter()
                .copied()
                .filter(|&pos| {
                    let pt = &pool.types[pos];
                    let t = index.instance_type(pt);
                    limits[p].allows(&t.capacity)
                        && cheapest_offering(t, &pt.offerings, &cp.requirements).is_some()
                })
                .collect();
            if options.is_empty() {
                blocked[p][c] = true;
                continue;
            }
            limits[p].consume(&max_capacity(&index, p, &options), 1);
            claims.push(Claim {
                pool: p,
                requirements: cp.requirements.clone(),
                requests: class.requests.clone(),
                options,
                pods: vec![pod],
                classes: vec![c],
                per_class: {
                    let mut v = vec![0; n_classes];
                    v[c] = 1;
                    v
                },
                refused: vec![false; n_classes],
            });
            continue 'pods;
        }
        unschedulable_classes[c].push(pod);
    }

    let new_nodes: Vec<NewNode> = claims
        .iter()
        .map(|claim| {
            let pool = &index.pools[claim.pool];
            let mut alternatives: Vec<LaunchOption> = claim
                .options
                .iter()
                .flat_map(|&pos| {
                    let pt = &pool.types[pos];
                    let t = index.instance_type(pt);
                    pt.offerings.iter().map(move |&o| (t, &t.offerings[o]))
                })
                .filter(|(_, o)| o.is_compatible(&claim.requirements))
                .map(|(t, o)| LaunchOption {
                    instance_type: t.name.clone(),
                    zone: o.zone.clone(),
                    capacity_type: o.capacity_type,
                    price: o.price,
                })
                .collect();
            alternatives.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            alternatives.truncate(MAX_ALTERNATIVES);
            NewNode {
                nodepool: pool.template.name.clone(),
                launch: alternatives[0].clone(),
                labels: super::greedy::node_labels(
                    &claim.requirements,
                    problem.catalog.get(&alternatives[0].instance_type),
                ),
                pods: claim.pods.iter().map(|&p| problem.pods[p].name.clone()).collect(),
                alternatives,
            }
        })
        .collect();
    finish(&index, placements, new_nodes, unschedulable_classes, &blocked)
}

fn max_capacity(index: &Index, p: usize, options: &[usize]) -> Resources {
    let mut max = Resources::new();
    for &pos in options {
        max.max_assign(&index.instance_type(&index.pools[p].types[pos]).capacity);
    }
    max
}

/// What one estimated node holds: (class, count) pairs.
type Bin = Vec<(usize, i64)>;

/// An estimate: per node, the zones its pods allow and what it holds.
type Estimate = Vec<(Vec<bool>, Bin)>;

/// One CA node group: a (pool, instance type, capacity type) at its cheapest zone.
struct Group {
    pool: usize,
    pos: usize,
    /// The group's offerings, one per zone, cheapest first.
    zones: Vec<LaunchOption>,
    requirements: crate::requirements::Requirements,
}

/// Cluster Autoscaler's least-waste expander over one node group per instance type, re-implemented.
pub fn ca_least_waste(problem: &Problem) -> Plan {
    let index = Index::build(problem);
    let n_classes = index.classes.len();
    let mut remaining: Vec<i64> = index.classes.iter().map(|c| c.pods.len() as i64).collect();
    let mut next_pod = vec![0usize; n_classes];
    let mut placements = Vec::new();

    // Existing nodes first, first fit (the scheduler's job before CA acts).
    let mut free: Vec<Resources> = problem.existing.iter().map(|n| n.free()).collect();
    let mut placed_here: Vec<Vec<usize>> = vec![Vec::new(); problem.existing.len()];
    for (c, class) in index.classes.iter().enumerate() {
        for (n, node) in problem.existing.iter().enumerate() {
            if remaining[c] == 0
                || !existing_admits(class, node)
                || placed_here[n].iter().any(|&o| index.conflicts[c][o])
            {
                continue;
            }
            let k = fit_count(&free[n], &class.requests).min(remaining[c]).min(existing_cap(class, node));
            if k > 0 {
                placed_here[n].push(c);
            }
            for _ in 0..k {
                placements.push(Placement {
                    pod: problem.pods[class.pods[next_pod[c]]].name.clone(),
                    node: node.name.clone(),
                });
                next_pod[c] += 1;
            }
            remaining[c] -= k;
            free[n].sub_assign(&class.requests.times(k));
        }
    }

    // One group per (pool, type, capacity type) spanning the zones, as a multi-AZ node group a user would
    // configure separately for spot and on-demand; each new node goes to the cheapest zone its pods allow.
    let mut groups = Vec::new();
    for (p, pool) in index.pools.iter().enumerate() {
        for (pos, pt) in pool.types.iter().enumerate() {
            let t = index.instance_type(pt);
            let capacity_types: std::collections::BTreeSet<_> =
                pt.offerings.iter().map(|&o| t.offerings[o].capacity_type).collect();
            for ct in capacity_types {
                let mut zones: Vec<LaunchOption> = pt
                    .offerings
                    .iter()
                    .map(|&o| &t.offerings[o])
                    .filter(|o| o.capacity_type == ct)
                    .map(|o| LaunchOption {
                        instance_type: t.name.clone(),
                        zone: o.zone.clone(),
                        capacity_type: ct,
                        price: o.price,
                    })
                    .collect();
                zones.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
                let requirements = pool.node_requirements.intersection(&t.requirements).with(
                    crate::requirements::Requirement::single(crate::labels::CAPACITY_TYPE, ct.as_str()),
                );
                groups.push(Group { pool: p, pos, zones, requirements });
            }
        }
    }
    // Per group and class: the group's zones the class may use (none: the group cannot hold it).
    let zone_masks: Vec<Vec<Vec<bool>>> = groups
        .iter()
        .map(|g| {
            index
                .classes
                .iter()
                .map(|class| match &class.per_pool[g.pool] {
                    Ok(cp) if cp.admits[g.pos] && g.requirements.intersects(&cp.requirements).is_ok() => g
                        .zones
                        .iter()
                        .map(|z| {
                            cp.requirements.get(crate::labels::ZONE).is_none_or(|r| r.matches(Some(&z.zone)))
                        })
                        .collect(),
                    _ => vec![false; g.zones.len()],
                })
                .collect()
        })
        .collect();
    let admits: Vec<Vec<bool>> =
        zone_masks.iter().map(|per_class| per_class.iter().map(|m| m.iter().any(|&z| z)).collect()).collect();

    let mut limits: Vec<Limits> = index.remaining_limits();
    let mut new_nodes = Vec::new();
    let mut blocked = vec![vec![false; n_classes]; index.pools.len()];
    loop {
        let mut best: Option<(f64, usize, Estimate)> = None;
        for (g, group) in groups.iter().enumerate() {
            let pt = &index.pools[group.pool].types[group.pos];
            let t = index.instance_type(pt);
            let allowed = limits[group.pool].count_allowed(&t.capacity);
            if allowed == 0 {
                for c in 0..n_classes {
                    if remaining[c] > 0 && admits[g][c] {
                        blocked[group.pool][c] = true;
                    }
                }
                continue;
            }
            let bins = estimate(&index, &remaining, &zone_masks[g], &pt.usable, allowed);
            if bins.is_empty() {
                continue;
            }
            let alloc = t.allocatable();
            let n = bins.len() as f64;
            let (mut cpu, mut mem) = (0i64, 0i64);
            for (_, bin) in &bins {
                for &(c, k) in bin {
                    cpu += index.classes[c].requests.cpu_millis * k;
                    mem += index.classes[c].requests.memory_bytes * k;
                }
            }
            let waste = |used: i64, per: i64| {
                if per > 0 { (n * per as f64 - used as f64) / (n * per as f64) } else { 0.0 }
            };
            let score = waste(cpu, alloc.cpu_millis) + waste(mem, alloc.memory_bytes);
            if best.as_ref().is_none_or(|(s, _, _)| score < *s - 1e-12) {
                best = Some((score, g, bins));
            }
        }
        let Some((_, g, bins)) = best else { break };
        let group = &groups[g];
        let t = index.instance_type(&index.pools[group.pool].types[group.pos]);
        limits[group.pool].consume(&t.capacity, bins.len() as i64);
        for (mask, bin) in bins {
            // The cheapest zone every pod of the node allows (zones are sorted by price).
            let launch = group
                .zones
                .iter()
                .zip(&mask)
                .find(|(_, ok)| **ok)
                .map(|(z, _)| z.clone())
                .expect("non-empty");
            let mut pods = Vec::new();
            for (c, k) in bin {
                for _ in 0..k {
                    pods.push(problem.pods[index.classes[c].pods[next_pod[c]]].name.clone());
                    next_pod[c] += 1;
                }
                remaining[c] -= k;
            }
            new_nodes.push(NewNode {
                nodepool: index.pools[group.pool].template.name.clone(),
                labels: super::greedy::node_labels(&group.requirements, Some(t)),
                pods,
                alternatives: vec![launch.clone()],
                launch,
            });
        }
    }
    let unschedulable_classes: Vec<Vec<usize>> =
        (0..n_classes).map(|c| index.classes[c].pods[next_pod[c]..].to_vec()).collect();
    finish(&index, placements, new_nodes, unschedulable_classes, &blocked)
}

/// CA's binpacking estimator: first-fit decreasing (by cpu/alloc + memory/alloc) of the pending pods the
/// group can hold into at most `max_nodes` identical nodes, a node's pods sharing at least one zone. Returns
/// per node the zones left open and the (class, count) it holds.
fn estimate(
    index: &Index,
    remaining: &[i64],
    zone_masks: &[Vec<bool>],
    usable: &Resources,
    max_nodes: i64,
) -> Estimate {
    let mut order: Vec<usize> =
        (0..remaining.len()).filter(|&c| remaining[c] > 0 && zone_masks[c].iter().any(|&z| z)).collect();
    let size = |c: usize| {
        let r = &index.classes[c].requests;
        r.cpu_millis as f64 / usable.cpu_millis.max(1) as f64
            + r.memory_bytes as f64 / usable.memory_bytes.max(1) as f64
    };
    order
        .sort_by(|&a, &b| size(b).partial_cmp(&size(a)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    let mut bins: Vec<(Resources, Vec<bool>, Bin)> = Vec::new();
    for c in order {
        let requests = &index.classes[c].requests;
        let cap = per_node(&index.classes[c]);
        let mut left = remaining[c];
        for (free, mask, content) in bins.iter_mut() {
            if left == 0 {
                break;
            }
            if content.iter().any(|&(o, _)| index.conflicts[c][o])
                || !mask.iter().zip(&zone_masks[c]).any(|(&a, &b)| a && b)
            {
                continue;
            }
            let k = fit_count(free, requests).min(left).min(cap);
            if k > 0 {
                free.sub_assign(&requests.times(k));
                content.push((c, k));
                for (m, &z) in mask.iter_mut().zip(&zone_masks[c]) {
                    *m = *m && z;
                }
                left -= k;
            }
        }
        while left > 0 && (bins.len() as i64) < max_nodes {
            let k = fit_count(usable, requests).min(left).min(cap);
            if k == 0 {
                break;
            }
            bins.push((usable.minus(&requests.times(k)), zone_masks[c].clone(), vec![(c, k)]));
            left -= k;
        }
    }
    bins.into_iter().map(|(_, mask, content)| (mask, content)).collect()
}

/// The most pods of a class one node may hold, by its anti-affinity.
fn per_node(class: &super::index::Class) -> i64 {
    class.per_node_cap
}

fn finish(
    index: &Index,
    placements: Vec<Placement>,
    new_nodes: Vec<NewNode>,
    unschedulable_classes: Vec<Vec<usize>>,
    blocked: &[Vec<bool>],
) -> Plan {
    let mut unschedulable = Vec::new();
    for (c, pods) in unschedulable_classes.iter().enumerate() {
        if pods.is_empty() {
            continue;
        }
        let per_pool: Vec<bool> = blocked.iter().map(|b| b[c]).collect();
        let reason = reasons::explain(index, c, &per_pool);
        unschedulable.extend(
            pods.iter()
                .map(|&p| Unschedulable { pod: index.problem.pods[p].name.clone(), reason: reason.clone() }),
        );
    }
    let cost = Price(new_nodes.iter().map(|n| n.launch.price.0).sum());
    Plan {
        placements,
        new_nodes,
        unschedulable,
        cost,
        // Baselines report no bound of their own; `cartwright bench` divides by the solver's bound.
        lower_bound: None,
    }
}
