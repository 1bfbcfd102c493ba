//! The compatibility index every algorithm starts from: pods grouped into equivalence classes, and for each
//! (class, NodePool) the instance types a node of that pool could be to hold one pod of the class.
//!
//! Label and taint checks happen here, once per class, so the algorithms' inner loops only compare numbers
//! and look up sets. Cost scales with classes × pools × instance types, not with replicas.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use rustc_hash::FxHashMap;

use crate::instance_type::{InstanceType, Price};
use crate::requirements::{Incompatibility, NodeAffinity, Requirements};
use crate::resources::{ResourceName, Resources};
use crate::taints::{Toleration, first_untolerated};

use super::problem::{Limits, NodePoolTemplate, PodSpec, Problem};

/// Identical pods: same requests, node affinity and tolerations.
#[derive(Debug)]
pub(crate) struct Class<'p> {
    pub spec: &'p PodSpec,
    /// The pod's requests, with at least one pod slot.
    pub requests: Resources,
    /// Indices into `Problem::pods`, in input order.
    pub pods: Vec<usize>,
    /// Per pool (same order as `Index::pools`): how this class may use it, or why it cannot.
    pub per_pool: Vec<Result<ClassPool, PoolRejection>>,
    /// The most pods of the class one node may hold (self anti-affinity, hostname spread).
    pub per_node_cap: i64,
}

/// What makes pods identical for the solver.
type ClassKey<'p> = (
    &'p Resources,
    &'p crate::requirements::NodeAffinity,
    &'p Vec<crate::taints::Toleration>,
    &'p std::collections::BTreeMap<String, String>,
    &'p Vec<std::collections::BTreeMap<String, String>>,
    &'p Vec<super::problem::TopologySpread>,
    (&'p Vec<std::collections::BTreeMap<String, String>>, &'p Vec<super::problem::PodAffinityTerm>, bool),
);

/// How a class may use one NodePool.
#[derive(Debug)]
pub(crate) struct ClassPool {
    /// The pool's node requirements intersected with the class's first compatible affinity alternative.
    pub requirements: Requirements,
    /// Positions in `PoolInfo::types` whose type admits the requirements and holds one pod.
    pub types: Vec<usize>,
    /// The same, as a lookup table over `PoolInfo::types`.
    pub admits: Vec<bool>,
    /// Whether `requirements` are the pool's own (the pod's affinity narrows nothing): such a class shares a
    /// node with any other of the pool as far as labels go.
    pub plain: bool,
    /// Classes with the same `shape` have the same `requirements` in every pool (they share node affinity
    /// and tolerations), so checks on requirements can be remembered per shape.
    pub shape: usize,
}

/// Why a class cannot use a NodePool at all, or no instance type of it.
#[derive(Clone, Debug)]
pub(crate) enum PoolRejection {
    Taint(String),
    Requirements(Incompatibility),
    NoInstanceType,
    NoneFits,
}

/// One instance type as a node of one pool.
#[derive(Debug)]
pub(crate) struct PoolType {
    /// Index into the catalog's instance types.
    pub type_index: usize,
    /// Allocatable minus the daemonset pods that would run on such a node.
    pub usable: Resources,
    /// Offerings admitted by the pool (available only).
    pub offerings: Vec<usize>,
    /// Each of those offerings' place: offerings of the pool in one zone with one capacity type share it.
    pub places: Vec<usize>,
}

/// A NodePool and the instance types it may launch.
#[derive(Debug)]
pub(crate) struct PoolInfo<'p> {
    pub template: &'p NodePoolTemplate,
    pub node_requirements: Requirements,
    pub types: Vec<PoolType>,
}

/// Classes and pools, ready for the algorithms.
#[derive(Debug)]
pub(crate) struct Index<'p> {
    pub problem: &'p Problem,
    pub classes: Vec<Class<'p>>,
    /// NodePools by weight, highest first (ties by name).
    pub pools: Vec<PoolInfo<'p>>,
    /// The resource dimensions any pod requests, in a fixed order.
    pub dims: Vec<ResourceName>,
    /// `conflicts[a][b]`: pods of classes a and b may not share a node (either's hostname anti-affinity
    /// matches the other's labels); the diagonal says whether a class repels itself.
    pub conflicts: Vec<Vec<bool>>,
    /// Per (pool, requirements): the offerings a node of the pool with those requirements may launch as
    /// (see [`Index::admitted`]).
    launches: LaunchCache,
}

/// Per (pool, requirements), the choices [`Index::admitted`] found.
type LaunchCache = RefCell<FxHashMap<(usize, Requirements), Rc<[Choice]>>>;

/// An offering a new node of a pool could launch as: a type of the pool (its position in
/// `PoolInfo::types`), one of the type's offerings, and its price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    pub pos: usize,
    pub offering: usize,
    pub price: Price,
}

impl<'p> Index<'p> {
    pub fn build(problem: &'p Problem) -> Index<'p> {
        let catalog_types = problem.catalog.instance_types();
        let mut pools: Vec<PoolInfo> =
            problem.nodepools.iter().map(|t| pool_info(problem, t, catalog_types)).collect();
        pools.sort_by(|a, b| {
            b.template.weight.cmp(&a.template.weight).then(a.template.name.cmp(&b.template.name))
        });

        // Labels set pods apart only when some selector could look at them: without pod (anti-)affinity,
        // spreads or repelling pods on existing nodes, a hundred Deployments of six shapes are six classes.
        let no_labels = BTreeMap::new();
        let labels_matter = problem.existing.iter().any(|n| !n.repelled.is_empty())
            || problem.pods.iter().any(PodSpec::has_pod_selectors);
        let mut by_key: HashMap<ClassKey, usize> = HashMap::new();
        let mut grouped: Vec<(&PodSpec, Vec<usize>)> = Vec::new();
        for (i, pod) in problem.pods.iter().enumerate() {
            let key = (
                &pod.requests,
                &pod.affinity,
                &pod.tolerations,
                if labels_matter { &pod.labels } else { &no_labels },
                &pod.hostname_anti_affinity,
                &pod.topology_spread,
                (&pod.companion_labels, &pod.held_anti_affinity, pod.relaxed_anti_affinity),
            );
            match by_key.get(&key) {
                Some(&c) => grouped[c].1.push(i),
                None => {
                    by_key.insert(key, grouped.len());
                    grouped.push((pod, vec![i]));
                }
            }
        }
        // Which types a class may use depends only on its node affinity and tolerations: worked out once
        // per distinct pair (a Deployment's classes differ in requests or labels, rarely in these).
        type Compat = Vec<Result<(Requirements, Vec<usize>), PoolRejection>>;
        let mut compat: HashMap<(&NodeAffinity, &Vec<Toleration>), (usize, Compat)> = HashMap::new();
        let classes: Vec<Class> = grouped
            .into_iter()
            .map(|(spec, pods)| {
                let mut requests = spec.requests.clone();
                requests.pods = requests.pods.max(1);
                let shapes = compat.len();
                let (shape, compatible) =
                    compat.entry((&spec.affinity, &spec.tolerations)).or_insert_with(|| {
                        (
                            shapes,
                            pools.iter().map(|pool| compatible_types(spec, pool, catalog_types)).collect(),
                        )
                    });
                let per_pool = pools
                    .iter()
                    .zip(compatible.iter())
                    .map(|(pool, compatible)| class_pool(compatible, &requests, pool, *shape))
                    .collect();
                Class { spec, requests, pods, per_pool, per_node_cap: spec.per_node_cap() }
            })
            .collect();

        let mut dims =
            vec![ResourceName::Cpu, ResourceName::Memory, ResourceName::Pods, ResourceName::EphemeralStorage];
        let mut extended: Vec<ResourceName> = problem
            .pods
            .iter()
            .flat_map(|p| p.requests.iter().map(|(n, _)| n))
            .filter(|n| matches!(n, ResourceName::Other(_)))
            .collect();
        extended.sort();
        extended.dedup();
        dims.extend(extended);
        // Two classes in one hostname-spread group (pods of a Deployment whose requests differ) share the
        // group's per-node allowance; keeping them on separate nodes holds the group to its `maxSkew` per
        // node (each class is capped at it), at some cost in packing.
        // Whether two classes conflict depends only on what selectors see of them (labels, bundled pods'
        // labels) and what they select (hostname anti-affinity, held terms, hostname spreads): worked out
        // once per distinct such profile, not once per pair of classes (which differ mostly in requests).
        type Profile<'p> = (
            &'p BTreeMap<String, String>,
            &'p Vec<BTreeMap<String, String>>,
            &'p Vec<BTreeMap<String, String>>,
            &'p Vec<super::problem::PodAffinityTerm>,
            bool,
            &'p Vec<super::problem::TopologySpread>,
        );
        let mut profiles: HashMap<Profile, usize> = HashMap::new();
        let mut specs: Vec<&PodSpec> = Vec::new();
        let profile: Vec<usize> = classes
            .iter()
            .map(|c| {
                let spec = c.spec;
                let key = (
                    &spec.labels,
                    &spec.companion_labels,
                    &spec.hostname_anti_affinity,
                    &spec.held_anti_affinity,
                    spec.relaxed_anti_affinity,
                    &spec.topology_spread,
                );
                *profiles.entry(key).or_insert_with(|| {
                    specs.push(spec);
                    specs.len() - 1
                })
            })
            .collect();
        // (repels, hostname spread covers), either way round, per pair of profiles.
        let between: Vec<Vec<(bool, bool)>> = specs
            .iter()
            .map(|a| {
                specs
                    .iter()
                    .map(|b| {
                        (
                            a.repels_pod(b) || b.repels_pod(a),
                            a.hostname_spread_covers(b) || b.hostname_spread_covers(a),
                        )
                    })
                    .collect()
            })
            .collect();
        let conflicts = (0..classes.len())
            .map(|i| {
                let row = &between[profile[i]];
                (0..classes.len())
                    .map(|j| {
                        let (repels, covers) = row[profile[j]];
                        repels || (i != j && covers)
                    })
                    .collect()
            })
            .collect();
        Index { problem, classes, pools, dims, conflicts, launches: RefCell::default() }
    }

    /// The offerings of pool `p` whose type and offering admit `requirements`, whatever their size, in the
    /// order alternatives are listed (`LaunchOption::order_key`: cheapest first, then by type name, zone and
    /// capacity type). Worked out once per distinct requirements: the greedy, the rounding and compaction ask
    /// again for every node, and each answer compares labels of every type of the pool.
    pub fn admitted(&self, p: usize, requirements: &Requirements) -> Rc<[Choice]> {
        let key = (p, requirements.clone());
        if let Some(known) = self.launches.borrow().get(&key) {
            return known.clone();
        }
        let mut out = Vec::new();
        for (pos, pt) in self.pools[p].types.iter().enumerate() {
            let t = self.instance_type(pt);
            if t.requirements.intersects(requirements).is_err() {
                continue;
            }
            for &o in &pt.offerings {
                let offering = &t.offerings[o];
                if offering.is_compatible(requirements) {
                    out.push(Choice { pos, offering: o, price: offering.price });
                }
            }
        }
        let key_of = |c: &Choice| {
            let t = self.instance_type(&self.pools[p].types[c.pos]);
            let o = &t.offerings[c.offering];
            (c.price, t.name.as_str(), o.zone.as_str(), o.capacity_type)
        };
        out.sort_by(|a, b| key_of(a).cmp(&key_of(b)));
        let out: Rc<[Choice]> = out.into();
        self.launches.borrow_mut().insert(key, out.clone());
        out
    }

    /// The instance type of a choice in pool `p`.
    pub fn choice_type(&self, p: usize, choice: &Choice) -> &'p InstanceType {
        self.instance_type(&self.pools[p].types[choice.pos])
    }

    /// What each pool's limits leave for new nodes, in pool order (a fresh copy to charge nodes against).
    pub fn remaining_limits(&self) -> Vec<Limits> {
        self.pools.iter().map(|p| p.template.remaining.clone()).collect()
    }

    /// Each pod's class, by pod name.
    pub fn class_of_pods(&self) -> FxHashMap<&'p str, usize> {
        let mut out = FxHashMap::default();
        for (c, class) in self.classes.iter().enumerate() {
            for &p in &class.pods {
                out.insert(self.problem.pods[p].name.as_str(), c);
            }
        }
        out
    }

    pub fn instance_type(&self, pool_type: &PoolType) -> &'p InstanceType {
        &self.problem.catalog.instance_types()[pool_type.type_index]
    }
}

fn pool_info<'p>(
    problem: &'p Problem,
    template: &'p NodePoolTemplate,
    catalog_types: &[InstanceType],
) -> PoolInfo<'p> {
    let node_requirements = template.node_requirements();
    let types = catalog_types
        .iter()
        .enumerate()
        .filter(|(_, t)| t.check_intersects(&node_requirements).is_ok())
        .filter_map(|(type_index, t)| {
            let offerings: Vec<usize> = t
                .offerings
                .iter()
                .enumerate()
                .filter(|(_, o)| o.available && o.is_compatible(&node_requirements))
                .map(|(i, _)| i)
                .collect();
            let overhead = daemonset_overhead(problem, template, &node_requirements, t);
            let usable = t.allocatable().minus(&overhead);
            // A type whose daemonsets alone overflow it can hold nothing.
            let holds_anything = usable.iter().all(|(_, v)| v >= 0) && usable.pods > 0;
            (!offerings.is_empty() && holds_anything).then_some((type_index, usable, offerings))
        })
        .collect::<Vec<_>>();
    // The (zone, capacity type) pairs the pool's offerings are in.
    let mut places: Vec<(String, crate::instance_type::CapacityType)> = Vec::new();
    let types = types
        .into_iter()
        .map(|(type_index, usable, offerings)| {
            let t = &catalog_types[type_index];
            let places_here = offerings
                .iter()
                .map(|&o| {
                    let o = &t.offerings[o];
                    match places.iter().position(|(z, c)| *z == o.zone && *c == o.capacity_type) {
                        Some(i) => i,
                        None => {
                            places.push((o.zone.clone(), o.capacity_type));
                            places.len() - 1
                        }
                    }
                })
                .collect();
            PoolType { type_index, usable, offerings, places: places_here }
        })
        .collect();
    PoolInfo { template, node_requirements, types }
}

/// The requests of the daemonset pods that would run on a node of `template` and type `t`: those that tolerate
/// the pool's taints and whose node affinity the node's labels admit.
pub(crate) fn daemonset_overhead(
    problem: &Problem,
    template: &NodePoolTemplate,
    node_requirements: &Requirements,
    t: &InstanceType,
) -> Resources {
    if problem.daemonsets.is_empty() {
        return Resources::new();
    }
    let node = node_requirements.intersection(&t.requirements);
    let taints: Vec<_> = template.taints.iter().chain(&template.startup_taints).cloned().collect();
    let mut total = Resources::new();
    for ds in &problem.daemonsets {
        if first_untolerated(&ds.tolerations, &taints).is_none() && ds.affinity.compatible(&node).is_ok() {
            total.add_assign(&ds.requests);
        }
    }
    total
}

/// The pool's requirements narrowed by the pod's node affinity, and the positions of the pool's types that
/// admit them (by labels and offerings, whatever the size), or why there are none.
fn compatible_types(
    spec: &PodSpec,
    pool: &PoolInfo,
    catalog_types: &[InstanceType],
) -> Result<(Requirements, Vec<usize>), PoolRejection> {
    // Startup taints are removed before pods land, so only the pool's taints must be tolerated.
    if let Some(taint) = first_untolerated(&spec.tolerations, &pool.template.taints) {
        return Err(PoolRejection::Taint(taint.to_string()));
    }
    let alternative =
        spec.affinity.compatible(&pool.node_requirements).map_err(PoolRejection::Requirements)?;
    let requirements = pool.node_requirements.intersection(alternative);
    let positions: Vec<usize> = pool
        .types
        .iter()
        .enumerate()
        .filter(|(_, pt)| {
            let t = &catalog_types[pt.type_index];
            pt.offerings.iter().any(|&o| t.offerings[o].is_compatible(&requirements))
                && t.requirements.intersects(&requirements).is_ok()
        })
        .map(|(pos, _)| pos)
        .collect();
    if positions.is_empty() {
        return Err(PoolRejection::NoInstanceType);
    }
    Ok((requirements, positions))
}

/// How a class of `requests` may use the pool, given the types its affinity admits.
fn class_pool(
    compatible: &Result<(Requirements, Vec<usize>), PoolRejection>,
    requests: &Resources,
    pool: &PoolInfo,
    shape: usize,
) -> Result<ClassPool, PoolRejection> {
    let (requirements, positions) = compatible.as_ref().map_err(Clone::clone)?;
    let mut types = Vec::new();
    let mut admits = vec![false; pool.types.len()];
    for &pos in positions {
        if requests.fits_in(&pool.types[pos].usable) {
            types.push(pos);
            admits[pos] = true;
        }
    }
    if types.is_empty() {
        return Err(PoolRejection::NoneFits);
    }
    let plain = *requirements == pool.node_requirements;
    Ok(ClassPool { requirements: requirements.clone(), types, admits, plain, shape })
}

/// Requirement sets by id, with their intersections remembered, so loops that combine the requirements of
/// pods (packing a node, merging nodes) compare ids rather than label strings.
#[derive(Debug, Default)]
pub(crate) struct RequirementSets {
    sets: Vec<Requirements>,
    ids: FxHashMap<Requirements, usize>,
    /// (smaller id, larger id) → the id of their intersection, `None` when nothing satisfies both.
    joins: FxHashMap<(usize, usize), Option<usize>>,
}

impl RequirementSets {
    /// The id of these requirements, added when new.
    pub fn intern(&mut self, requirements: Requirements) -> usize {
        if let Some(&id) = self.ids.get(&requirements) {
            return id;
        }
        self.sets.push(requirements.clone());
        self.ids.insert(requirements, self.sets.len() - 1);
        self.sets.len() - 1
    }

    pub fn get(&self, id: usize) -> &Requirements {
        &self.sets[id]
    }

    /// How many sets there are (ids run from 0).
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Both sets at once, if some node can satisfy them.
    pub fn join(&mut self, a: usize, b: usize) -> Option<usize> {
        if a == b {
            return Some(a);
        }
        let key = (a.min(b), a.max(b));
        if let Some(&known) = self.joins.get(&key) {
            return known;
        }
        let both = self.sets[a].intersection(&self.sets[b]);
        let joined = both.is_satisfiable().then(|| self.intern(both));
        self.joins.insert(key, joined);
        joined
    }
}

/// How many pods of `requests` fit in `free` (every requested dimension counts).
pub(crate) fn fit_count(free: &Resources, requests: &Resources) -> i64 {
    requests.copies_in(free)
}
