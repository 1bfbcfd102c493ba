//! Cartwright's cost-aware greedy: free room on existing nodes first, then new nodes chosen by value per
//! dollar, where a pod's value is its price in the aggregate LP (the "dual-priced pattern greedy" of the
//! solver notes §2.5).
//!
//! For the most valuable class with pods left (the seed), every instance type of the highest-weight NodePool
//! that can hold it is packed: seed pods first, then the other classes by value, first fit. The pattern whose
//! packed value divided by price is highest wins, and is repeated while its classes have pods left and the
//! NodePool's limits allow. Each new node is then launched as the cheapest offering that holds its pods, and
//! lists every other offering that would (for launch flexibility and `minValues`).

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::catalog::check_min_values;
use crate::instance_type::{InstanceType, Price};
use crate::labels;
use crate::requirements::Requirements;
use crate::resources::Resources;
use crate::taints::first_untolerated;

use super::index::{Choice, Class, ClassPool, Index, RequirementSets, fit_count};
use super::plan::{LaunchOption, NewNode, Placement, Unschedulable};
use super::problem::Limits;
use super::reasons;

/// The most alternatives a new node lists (CreateFleet takes at most 60 overrides per request in practice).
pub const MAX_ALTERNATIVES: usize = 60;

/// What the greedy decided, before costing and bounding.
#[derive(Debug, Default)]
pub(crate) struct Decisions {
    pub placements: Vec<Placement>,
    pub new_nodes: Vec<NewNode>,
    pub unschedulable: Vec<Unschedulable>,
    /// Per class: pods placed (on existing or new nodes).
    pub placed: Vec<i64>,
}

/// A candidate node: a pool type, an offering and how many pods of each class it holds.
struct Pattern {
    pool: usize,
    /// The instance type it was packed for (a position in the pool's types).
    position: usize,
    counts: Vec<(usize, i64)>,
    requirements: Requirements,
    requests: Resources,
    value: f64,
    price: Price,
}

/// Requirement checks packing repeats for every candidate type, remembered by id: the requirement sets a
/// pattern accumulates, their intersections with class shapes, and the zones and capacity types each shape
/// admits. Only ids and numbers are compared in the packing loop.
#[derive(Default)]
struct Memo {
    sets: RequirementSets,
    /// (pool, class shape) → the class's requirements there, as a set.
    seeds: FxHashMap<(usize, usize), usize>,
    /// (pool, class shape, place) → whether the class admits an offering in that zone and capacity type.
    places: FxHashMap<(usize, usize, usize), bool>,
}

impl Memo {
    /// The class's requirements in pool `p`, as a set.
    fn seed(&mut self, p: usize, cp: &ClassPool) -> usize {
        if let Some(&id) = self.seeds.get(&(p, cp.shape)) {
            return id;
        }
        let id = self.sets.intern(cp.requirements.clone());
        self.seeds.insert((p, cp.shape), id);
        id
    }

    /// The set narrowed by the class's requirements in pool `p`, if anything satisfies both.
    fn join(&mut self, set: usize, p: usize, cp: &ClassPool) -> Option<usize> {
        let class = self.seed(p, cp);
        self.sets.join(set, class)
    }

    /// Whether the class admits offerings of pool `p` in `place` (`offering` is one of them).
    fn admits(
        &mut self,
        p: usize,
        cp: &ClassPool,
        place: usize,
        offering: &crate::instance_type::Offering,
    ) -> bool {
        *self.places.entry((p, cp.shape, place)).or_insert_with(|| offering.is_compatible(&cp.requirements))
    }
}

/// Per pool and position of its types: the classes (as a bit set) that may use the type and hold on it,
/// so packing tests one bit per class instead of reaching into each class's pool entry.
struct Admits(Vec<Vec<Vec<u64>>>);

impl Admits {
    fn new(index: &Index) -> Self {
        let words = index.classes.len().div_ceil(64);
        let mut out: Vec<Vec<Vec<u64>>> =
            index.pools.iter().map(|pool| vec![vec![0u64; words]; pool.types.len()]).collect();
        for (c, class) in index.classes.iter().enumerate() {
            for (p, cp) in class.per_pool.iter().enumerate() {
                if let Ok(cp) = cp {
                    for &pos in &cp.types {
                        out[p][pos][c / 64] |= 1 << (c % 64);
                    }
                }
            }
        }
        Admits(out)
    }

    fn get(&self, p: usize, pos: usize, c: usize) -> bool {
        self.0[p][pos][c / 64] & (1 << (c % 64)) != 0
    }
}

struct State<'i, 'p> {
    index: &'i Index<'p>,
    memo: RefCell<Memo>,
    admits: Admits,
    /// Per class: its requests (a copy close at hand for the packing loop).
    requests: Vec<Resources>,
    /// Per (pool, class shape): the cheapest price of each of the pool's types among the offerings the
    /// shape admits (`None` when it admits none), by position.
    type_prices: FxHashMap<(usize, usize), Vec<Option<Price>>>,
    /// The least cpu and memory any class with pods left requests: a node with less room is full.
    smallest: (i64, i64),
    values: &'i [f64],
    remaining: Vec<i64>,
    next_pod: Vec<usize>,
    limits: Vec<Limits>,
    /// Per pool: whether some class had a candidate there that limits or minValues stopped.
    blocked_by_limits: Vec<Vec<bool>>,
    out: Decisions,
}

/// Places pods on existing nodes (first fit, initialized nodes first), in `order`.
fn place_on_existing(state: &mut State, order: &[usize]) {
    let problem = state.index.problem;
    let mut nodes: Vec<usize> = (0..problem.existing.len()).collect();
    nodes.sort_by_key(|&n| !problem.existing[n].initialized);
    let mut free: Vec<Resources> = problem.existing.iter().map(|n| n.free()).collect();
    // Classes placed on each node in this pass, for anti-affinity between them.
    let mut placed_here: Vec<Vec<usize>> = vec![Vec::new(); problem.existing.len()];
    for &c in order {
        let class = &state.index.classes[c];
        for &n in &nodes {
            if state.remaining[c] == 0 {
                break;
            }
            let node = &problem.existing[n];
            if !existing_admits(class, node) || placed_here[n].iter().any(|&o| state.index.conflicts[c][o]) {
                continue;
            }
            let mut k = fit_count(&free[n], &class.requests).min(state.remaining[c]);
            k = k.min(existing_cap(class, node));
            if k > 0 {
                placed_here[n].push(c);
            }
            for _ in 0..k {
                let pod = take_pod(state, c);
                state.out.placements.push(Placement { pod, node: node.name.clone() });
            }
            free[n].sub_times(&class.requests, k);
        }
    }
}

/// How many pods of the class an existing node may still take by the class's per-node cap (hostname spread
/// counts the matching pods already there).
pub(crate) fn existing_cap(class: &Class, node: &super::problem::ExistingNode) -> i64 {
    let mut cap = class.per_node_cap;
    for spread in &class.spec.topology_spread {
        if spread.topology_key == labels::HOSTNAME && spread.enforced_for(&class.spec.labels) {
            let there = node
                .pod_labels
                .iter()
                .filter(|l| super::problem::selector_matches(&spread.selector, l))
                .count();
            cap = cap.min(spread.max_skew - there as i64);
        }
    }
    cap.max(0)
}

/// Whether a pod of the class may run on an existing node (labels, hard taints, and its anti-affinity
/// against the pods already there; not room).
pub(crate) fn existing_admits(class: &Class, node: &super::problem::ExistingNode) -> bool {
    first_untolerated(&class.spec.tolerations, &node.taints).is_none()
        && class.spec.affinity.matches_labels(&node.labels)
        && !node.pod_labels.iter().any(|labels| class.spec.repels(labels))
        && !node.repelled.iter().any(|s| class.spec.matched_by(s))
}

fn take_pod(state: &mut State, c: usize) -> String {
    let class = &state.index.classes[c];
    let pod = &state.index.problem.pods[class.pods[state.next_pod[c]]];
    state.next_pod[c] += 1;
    state.remaining[c] -= 1;
    state.out.placed[c] += 1;
    pod.name.clone()
}

fn pack(state: &State, order: &[usize], seed: usize, p: usize, pos: usize) -> Option<Pattern> {
    let index = state.index;
    let pool = &index.pools[p];
    let pt = &pool.types[pos];
    let t: &InstanceType = index.instance_type(pt);
    let seed_pool = index.classes[seed].per_pool[p].as_ref().ok()?;
    let mut memo = state.memo.borrow_mut();
    let (place, offering) = pt
        .offerings
        .iter()
        .zip(&pt.places)
        .map(|(&o, &place)| (place, &t.offerings[o]))
        .filter(|&(place, o)| memo.admits(p, seed_pool, place, o))
        .min_by_key(|(_, o)| o.price)?;
    let mut free = pt.usable.clone();
    let mut requirements = memo.seed(p, seed_pool);
    let mut counts = Vec::new();
    let mut requests = Resources::new();
    let mut value = 0.0;
    for &c in std::iter::once(&seed).chain(order.iter().filter(|&&c| c != seed)) {
        // Cheapest tests first: pods left, the type admits the class, room for one.
        if state.remaining[c] == 0 || !state.admits.get(p, pos, c) || !state.requests[c].fits_in(&free) {
            continue;
        }
        let class = &index.classes[c];
        let Ok(cp) = &class.per_pool[p] else { continue };
        // A class without affinity of its own has the pool's requirements, which every type and offering
        // of the pool meets: only size matters.
        let joined = if cp.plain {
            requirements
        } else {
            if !memo.admits(p, cp, place, offering) {
                continue;
            }
            let Some(joined) = memo.join(requirements, p, cp) else { continue };
            joined
        };
        if counts.iter().any(|&(o, _): &(usize, i64)| index.conflicts[c][o]) {
            continue;
        }
        let wants = &state.requests[c];
        let k = fit_count(&free, wants).min(state.remaining[c]).min(class.per_node_cap);
        if k == 0 {
            continue;
        }
        requirements = joined;
        free.sub_times(wants, k);
        requests.add_times(wants, k);
        value += state.values[c] * k as f64;
        counts.push((c, k));
        if free.pods <= 0 || free.cpu_millis < state.smallest.0 || free.memory_bytes < state.smallest.1 {
            break; // no pod of any class fits any more
        }
    }
    (!counts.is_empty() && counts[0].0 == seed).then(|| Pattern {
        pool: p,
        position: pos,
        counts,
        requirements: memo.sets.get(requirements).clone(),
        requests,
        value,
        price: offering.price,
    })
}

/// The offerings of the pool that hold `requests` under `requirements` within the limits, in the order
/// alternatives are listed (cheapest first); at most `most` of them.
pub(crate) fn launch_choices(
    index: &Index,
    p: usize,
    requirements: &Requirements,
    requests: &Resources,
    limits: &Limits,
    most: usize,
) -> Vec<Choice> {
    let types = &index.pools[p].types;
    let unlimited = limits.is_unlimited();
    index
        .admitted(p, requirements)
        .iter()
        .filter(|c| {
            requests.fits_in(&types[c.pos].usable)
                && (unlimited || limits.allows(&index.choice_type(p, c).capacity))
        })
        .take(most)
        .copied()
        .collect()
}

/// How many launch choices [`limited_alternatives`] needs to list a node of pool `p` under `limits`: every
/// one when the NodePool has `minValues` or resource limits (it filters by them), else the first
/// [`MAX_ALTERNATIVES`], which is all it keeps.
pub(crate) fn choices_needed(index: &Index, p: usize, limits: &Limits) -> usize {
    if index.pools[p].template.has_min_values() || !limits.resources.is_empty() {
        usize::MAX
    } else {
        MAX_ALTERNATIVES
    }
}

/// A choice as the plan lists it.
pub(crate) fn launch_option(index: &Index, p: usize, choice: &Choice) -> LaunchOption {
    let t = index.choice_type(p, choice);
    let o = &t.offerings[choice.offering];
    LaunchOption {
        instance_type: t.name.clone(),
        zone: o.zone.clone(),
        capacity_type: o.capacity_type,
        price: o.price,
    }
}

/// [`launch_choices`] as the plan lists them, each with its type's position in the pool.
#[cfg(test)]
pub(crate) fn launch_options(
    index: &Index,
    p: usize,
    requirements: &Requirements,
    requests: &Resources,
    limits: &Limits,
) -> Vec<(usize, LaunchOption)> {
    launch_choices(index, p, requirements, requests, limits, usize::MAX)
        .iter()
        .map(|c| (c.pos, launch_option(index, p, c)))
        .collect()
}

fn alternatives(state: &State, p: usize, requirements: &Requirements, requests: &Resources) -> Vec<Choice> {
    let limits = &state.limits[p];
    launch_choices(state.index, p, requirements, requests, limits, choices_needed(state.index, p, limits))
}

/// Class evaluations one pattern search may spend packing candidate types. Packing is linear in the
/// classes, so with hundreds of admitted types and thousands of distinct pod shapes trying every type
/// costs seconds; past `PACK_BUDGET / classes` candidates (never fewer than `MIN_CANDIDATES`) the cheapest
/// half are kept and the rest sampled evenly (the largest included), which keeps the small types that fit
/// a few pods and the big ones that pack many. Problems with few classes try every type.
const PACK_BUDGET: usize = 64_000;
const MIN_CANDIDATES: usize = 64;

fn sample_candidates(sorted: Vec<(Price, usize)>, classes: usize) -> Vec<(Price, usize)> {
    let cap = (PACK_BUDGET / classes.max(1)).max(MIN_CANDIDATES);
    if sorted.len() <= cap {
        return sorted;
    }
    let head = cap / 2;
    let rest = &sorted[head..];
    let picks = cap - head;
    let mut out: Vec<(Price, usize)> = sorted[..head].to_vec();
    for k in 1..=picks {
        out.push(rest[(k * rest.len()) / picks - 1]);
    }
    out
}

/// The limits of a NodePool that the pods still to place would exhaust: then a node's worth is the
/// pods it holds per share of what the limits have left, not value per dollar, so the limited pool places as
/// many pods as it can (Karpenter users expect a `cpu: 16` limit to hold about 16 cores of pods, not
/// half that on the cheapest small nodes).
struct Scarce {
    /// (dimension, what is left) for the binding resource limits.
    resources: Vec<(crate::resources::ResourceName, i64)>,
    /// Nodes left when the node-count limit binds.
    nodes: Option<i64>,
}

impl Scarce {
    /// The largest share of a binding limit one node of this capacity uses.
    fn share(&self, capacity: &Resources) -> f64 {
        let mut share = self.nodes.map_or(0.0, |n| 1.0 / n.max(1) as f64);
        for (dim, left) in &self.resources {
            share = share.max(capacity.get(dim) as f64 / (*left).max(1) as f64);
        }
        share.max(f64::MIN_POSITIVE)
    }
}

fn scarce_limits(state: &State, p: usize) -> Option<Scarce> {
    let index = state.index;
    let limits = &state.limits[p];
    if limits.is_unlimited() {
        return None;
    }
    let mut demand = Resources::new();
    let mut pods = 0i64;
    for (c, class) in index.classes.iter().enumerate() {
        if state.remaining[c] > 0 && class.per_pool[p].is_ok() {
            demand.add_times(&class.requests, state.remaining[c]);
            pods += state.remaining[c];
        }
    }
    let resources: Vec<_> = limits
        .resources
        .iter()
        .filter(|(dim, left)| demand.get(dim) > **left)
        .map(|(dim, left)| (dim.clone(), *left))
        .collect();
    // Without pod density facts, a node limit binds when fewer nodes are left than a tenth of the pods, or
    // when one node is left for several pods (a consolidation's single replacement).
    let nodes = limits.nodes.filter(|&n| n.saturating_mul(10) < pods || (n <= 1 && pods > 1));
    (!resources.is_empty() || nodes.is_some()).then_some(Scarce { resources, nodes })
}

/// Finds the best pattern for the seed class in the first NodePool (by weight) that can hold it.
fn best_pattern(state: &mut State, order: &[usize], seed: usize) -> Option<(Pattern, Vec<Choice>)> {
    let index = state.index;
    for p in 0..index.pools.len() {
        let Ok(cp) = &index.classes[seed].per_pool[p] else { continue };
        // Cheapest first, so a type no better than a cheaper one already tried can be skipped.
        let prices = state.type_prices.entry((p, cp.shape)).or_insert_with(|| {
            // The admitted offerings come cheapest first: a type's first is its price.
            let mut prices = vec![None; index.pools[p].types.len()];
            for choice in index.admitted(p, &cp.requirements).iter() {
                prices[choice.pos].get_or_insert(choice.price);
            }
            prices
        });
        let limits = &state.limits[p];
        let unlimited = limits.is_unlimited();
        let mut candidates: Vec<(Price, usize)> = cp
            .types
            .iter()
            .filter(|&&pos| {
                unlimited || limits.allows(&index.instance_type(&index.pools[p].types[pos]).capacity)
            })
            .filter_map(|&pos| prices[pos].map(|price| (price, pos)))
            .collect();
        if candidates.is_empty() {
            state.blocked_by_limits[p][seed] = true;
            continue;
        }
        candidates.sort();
        let candidates = sample_candidates(candidates, index.classes.len());
        let scarce = scarce_limits(state, p);
        let mut frontier: Vec<&Resources> = Vec::new();
        let mut best: Option<Pattern> = None;
        for &(_, pos) in &candidates {
            let usable = &index.pools[p].types[pos].usable;
            // A cheaper type offers at least as much room (under binding limits, room per limit matters
            // and the cheaper type may use more of the limit, so every candidate is tried).
            if scarce.is_none() && frontier.iter().any(|f| usable.fits_in(f)) {
                continue;
            }
            frontier.push(usable);
            let Some(pattern) = pack(state, order, seed, p, pos) else { continue };
            let capacity = &index.instance_type(&index.pools[p].types[pos]).capacity;
            let score = |pattern: &Pattern, capacity: &Resources| match &scarce {
                None => pattern.value / pattern.price.0.max(1) as f64,
                // Pods held per share of the limit (pod prices may all be zero when the limit binds).
                Some(scarce) => {
                    pattern.counts.iter().map(|&(_, k)| k).sum::<i64>() as f64 / scarce.share(capacity)
                }
            };
            let better = match &best {
                None => true,
                Some(b) => {
                    let b_capacity = &index.instance_type(&index.pools[b.pool].types[b.position]).capacity;
                    let (s, bs) = (score(&pattern, capacity), score(b, b_capacity));
                    s > bs * (1.0 + 1e-9) || ((s - bs).abs() <= bs * 1e-9 && pattern.price < b.price)
                }
            };
            if better {
                best = Some(pattern);
            }
        }
        let Some(mut pattern) = best else { continue };
        // minValues: drop pods from the pattern until enough distinct values remain among the alternatives.
        loop {
            let alts = alternatives(state, p, &pattern.requirements, &pattern.requests);
            let requirements = &index.pools[p].template.requirements;
            if !alts.is_empty()
                && (!index.pools[p].template.has_min_values()
                    || check_min_values(requirements, alts.iter().map(|c| index.choice_type(p, c))).is_ok())
            {
                return Some((pattern, alts));
            }
            let Some(last) = pattern.counts.last_mut() else { break };
            let class = &index.classes[last.0];
            last.1 -= 1;
            pattern.requests.sub_assign(&class.requests);
            pattern.value -= state.values[last.0];
            if last.1 == 0 {
                pattern.counts.pop();
            }
            if pattern.counts.is_empty() {
                break;
            }
        }
        state.blocked_by_limits[p][seed] = true;
    }
    None
}

/// A new node's alternatives as the NodePool's limits see them, and what the node is charged against them.
/// Under resource limits, only alternatives no larger than the cheapest in the limited dimensions are kept
/// (unless that loses minValues): charging a limit for a 192-vCPU alternative of a 4-vCPU node would exhaust
/// it after a few nodes. Then at most [`MAX_ALTERNATIVES`] (unless that loses minValues). The charge is the
/// largest capacity among those kept, so whichever one launches stays within the limits.
pub(crate) fn limited_alternatives(
    index: &Index,
    p: usize,
    limits: &Limits,
    mut alternatives: Vec<Choice>,
) -> (Vec<LaunchOption>, Resources) {
    let pool = &index.pools[p];
    let min_values_hold = |kept: &[Choice]| {
        !pool.template.has_min_values()
            || check_min_values(&pool.template.requirements, kept.iter().map(|c| index.choice_type(p, c)))
                .is_ok()
    };
    if !limits.resources.is_empty()
        && let Some(first) = alternatives.first().map(|c| index.choice_type(p, c))
    {
        let no_larger = |c: &Choice| {
            let t = index.choice_type(p, c);
            limits.resources.keys().all(|d| t.capacity.get(d) <= first.capacity.get(d))
        };
        let kept: Vec<Choice> = alternatives.iter().filter(|c| no_larger(c)).copied().collect();
        if min_values_hold(&kept) {
            alternatives = kept;
        }
    }
    if alternatives.len() > MAX_ALTERNATIVES && min_values_hold(&alternatives[..MAX_ALTERNATIVES]) {
        alternatives.truncate(MAX_ALTERNATIVES);
    }
    let mut charge = Resources::new();
    for c in &alternatives {
        charge.max_assign(&index.choice_type(p, c).capacity);
    }
    (alternatives.iter().map(|c| launch_option(index, p, c)).collect(), charge)
}

/// What a node with these alternatives is charged against its NodePool's limits: the largest capacity among
/// them, so whichever one launches stays within the limits.
pub(crate) fn charge(index: &Index, alternatives: &[LaunchOption]) -> Resources {
    let mut capacity = Resources::new();
    for alternative in alternatives {
        if let Some(t) = index.problem.catalog.get(&alternative.instance_type) {
            capacity.max_assign(&t.capacity);
        }
    }
    capacity
}

fn emit(state: &mut State, pattern: Pattern, alternatives: Vec<Choice>) {
    let index = state.index;
    let pool = &index.pools[pattern.pool];
    let catalog = &index.problem.catalog;
    let (alternatives, max_capacity) =
        limited_alternatives(index, pattern.pool, &state.limits[pattern.pool], alternatives);
    let mut reps = pattern.counts.iter().map(|&(c, k)| state.remaining[c] / k).min().unwrap_or(0);
    reps = reps.min(state.limits[pattern.pool].count_allowed(&max_capacity)).max(1);
    let launch = alternatives[0].clone();
    let labels = node_labels(&pattern.requirements, catalog.get(&launch.instance_type));
    for _ in 0..reps {
        let mut pods = Vec::new();
        for &(c, k) in &pattern.counts {
            for _ in 0..k {
                pods.push(take_pod(state, c));
            }
        }
        state.out.new_nodes.push(NewNode {
            nodepool: pool.template.name.clone(),
            launch: launch.clone(),
            labels: labels.clone(),
            pods,
            alternatives: alternatives.clone(),
        });
    }
    state.limits[pattern.pool].consume(&max_capacity, reps);
}

/// The labels a new node carries beyond its instance type's and offering's: every requirement key the type
/// does not define, pinned to one admitted value (the first, for determinism).
pub(crate) fn node_labels(requirements: &Requirements, t: Option<&InstanceType>) -> BTreeMap<String, String> {
    requirements
        .iter()
        .filter(|r| t.is_none_or(|t| !t.requirements.has(r.key())))
        .filter(|r| ![labels::ZONE, labels::CAPACITY_TYPE].contains(&r.key()))
        .filter_map(|r| r.values().and_then(|v| v.first()).map(|v| (r.key().to_owned(), v.clone())))
        .collect()
}

/// Runs the greedy with the given per-class pod values (higher is placed first and weighs more).
pub(crate) fn run(index: &Index, values: &[f64]) -> Decisions {
    run_from(index, values, &vec![0; index.classes.len()], index.remaining_limits())
}

/// [`run`] for the pods of each class from `start[c]` on (the earlier ones are placed elsewhere), within
/// `limits` per NodePool (what those placements left).
pub(crate) fn run_from(index: &Index, values: &[f64], start: &[usize], limits: Vec<Limits>) -> Decisions {
    let n = index.classes.len();
    let mut state = State {
        index,
        memo: RefCell::new(Memo::default()),
        admits: Admits::new(index),
        requests: index.classes.iter().map(|c| c.requests.clone()).collect(),
        type_prices: FxHashMap::default(),
        values,
        remaining: index.classes.iter().zip(start).map(|(c, &s)| (c.pods.len() - s) as i64).collect(),
        next_pod: start.to_vec(),
        limits,
        blocked_by_limits: vec![vec![false; n]; index.pools.len()],
        out: Decisions { placed: vec![0; n], ..Decisions::default() },
        smallest: (0, 0),
    };
    let order = class_order(index, values);
    place_on_existing(&mut state, &order);
    let mut given_up = vec![false; n];
    // The classes with pods left, in order: packing looks at no other.
    let mut active: Vec<usize> = order.iter().copied().filter(|&c| state.remaining[c] > 0).collect();
    state.smallest = smallest(index, &active);
    while let Some(&seed) = active.iter().find(|&&c| !given_up[c]) {
        match best_pattern(&mut state, &active, seed) {
            Some((pattern, alts)) => {
                emit(&mut state, pattern, alts);
                active.retain(|&c| state.remaining[c] > 0);
                state.smallest = smallest(index, &active);
            }
            None => given_up[seed] = true,
        }
    }
    for c in 0..n {
        if state.remaining[c] == 0 {
            continue;
        }
        let blocked: Vec<bool> = state.blocked_by_limits.iter().map(|per_class| per_class[c]).collect();
        let reason = reasons::explain(index, c, &blocked);
        while state.remaining[c] > 0 {
            let class = &index.classes[c];
            let pod = index.problem.pods[class.pods[state.next_pod[c]]].name.clone();
            state.next_pod[c] += 1;
            state.remaining[c] -= 1;
            state.out.unschedulable.push(Unschedulable { pod, reason: reason.clone() });
        }
    }
    state.out
}

/// The least cpu and memory any of the classes requests.
fn smallest(index: &Index, classes: &[usize]) -> (i64, i64) {
    let requests = || classes.iter().map(|&c| &index.classes[c].requests);
    (
        requests().map(|r| r.cpu_millis).min().unwrap_or(0),
        requests().map(|r| r.memory_bytes).min().unwrap_or(0),
    )
}

/// Classes by value, highest first; ties by cpu, then memory, then input order.
pub(crate) fn class_order(index: &Index, values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..index.classes.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, cb) = (&index.classes[a], &index.classes[b]);
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(cb.requests.cpu_millis.cmp(&ca.requests.cpu_millis))
            .then(cb.requests.memory_bytes.cmp(&ca.requests.memory_bytes))
            .then(ca.pods[0].cmp(&cb.pods[0]))
    });
    order
}
