//! The solver: the cheapest plan for pending pods, as a pure function of a [`Problem`].
//!
//! ```text
//! Problem ──> Index (pod classes × NodePools × instance types, label and taint checks done once)
//!         ──> aggregate LP (HiGHS): a lower bound, and a price for each pod class
//!         ──> greedy: existing nodes first, then new nodes by value per dollar
//!         ──> pattern LP by column generation (no existing nodes): the tight bound for plans that honour
//!             NodePool weights, and a rounding that replaces the greedy's nodes when cheaper
//!         ──> compaction: nodes one instance type holds for less become one (within limits)
//!         ──> Plan (placements, new nodes with ranked alternatives, unschedulable pods with reasons,
//!                   cost, lower bound and which bound it is)
//! ```
//!
//! "Does not fit" is data: a pod no NodePool can hold is listed with a reason, never an error. When an LP
//! cannot be solved the greedy plan stands: classes are then ordered by size and the plan may carry no bound.
//!
//! Constraints honoured so far: every resource dimension, node selectors and required node affinity
//! (Karpenter operators, ORed terms), taints and tolerations (startup taints ignored for fit), NodePool
//! weights (higher first) and limits (charged at the largest alternative, so never exceeded), daemonset
//! overhead per node, `minValues`, unavailable offerings, free room on existing nodes, and required pod
//! anti-affinity on `kubernetes.io/hostname` (matchLabels; host ports are expressed as such), and hard
//! topology spread on zone, capacity type and hostname for pods the selector matches, with `minDomains`,
//! required pod affinity and anti-affinity on zones (`affinity`), and preferred node affinity (relaxed
//! heaviest term first, as Karpenter does), required pod affinity on hostname (`colocate`: pods that
//! must share a node become one composite pod), and preferred pod (anti-)affinity on zone and hostname
//! (required until the pod cannot be placed, then relaxed in Karpenter's order).

mod affinity;
pub mod baselines;
mod bound;
mod colocate;
mod columns;
mod compact;
mod greedy;
mod index;
mod knapsack;
mod plan;
mod problem;
mod reasons;
mod spread;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};

use crate::instance_type::Price;
use crate::resources::Resources;

pub use self::greedy::MAX_ALTERNATIVES;
pub use self::plan::{BoundKind, LaunchOption, LowerBound, NewNode, Placement, Plan, Unschedulable};
pub use self::problem::{
    DaemonSetSpec, ExistingNode, Limits, NodePoolTemplate, PodAffinityTerm, PodSpec, Problem, TopologySpread,
    host_port_label, selector_matches,
};
pub use self::spread::{eligible_domains, eligible_zones};

use self::index::Index;

/// The algorithms `cartwright plan` and `cartwright bench` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Cartwright's solver: aggregate-LP prices, cost-aware greedy, lower bound.
    Cartwright,
    /// Karpenter's scheduler, re-implemented (see [`baselines`]).
    KarpenterGreedy,
    /// Cluster Autoscaler's least-waste expander over one node group per instance type, re-implemented.
    CaLeastWaste,
}

impl Algorithm {
    /// Every algorithm, Cartwright's first.
    pub const ALL: [Algorithm; 3] =
        [Algorithm::Cartwright, Algorithm::KarpenterGreedy, Algorithm::CaLeastWaste];

    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Cartwright => "cartwright",
            Algorithm::KarpenterGreedy => "karpenter-greedy",
            Algorithm::CaLeastWaste => "ca-least-waste",
        }
    }

    /// Parses a name as printed by [`Algorithm::name`].
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Parses a name, or says which names exist.
    pub fn parse(name: &str) -> Result<Algorithm, String> {
        Self::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            format!("unknown solver `{name}` (one of {})", names.join(", "))
        })
    }

    /// Runs the algorithm for a plan made in one go (`cartwright plan`, `cartwright bench`): Cartwright's
    /// new nodes are made as cheap as their pods allow, moving pods between them ([`Fill::Tight`]).
    pub fn solve(&self, problem: &Problem) -> Plan {
        self.solve_with(problem, Fill::Tight)
    }

    /// Runs the algorithm for a live cluster (the controller, the simulator): Cartwright's new nodes keep the
    /// room the greedy left them ([`Fill::Live`]).
    pub fn solve_live(&self, problem: &Problem) -> Plan {
        self.solve_with(problem, Fill::Live)
    }

    /// Runs the algorithm. Zonal topology spread is applied the same way around every algorithm (see
    /// `spread`).
    pub fn solve_with(&self, problem: &Problem, fill: Fill) -> Plan {
        if problem.pods.iter().all(|p| p.preference_steps() == 0) {
            return self.solve_required(problem, fill);
        }
        // Preferences, Karpenter's way: every pod starts with its preferences required; the pods that
        // cannot be placed drop one (in the order of `PodSpec::with_preference_level`) and the problem is
        // planned again, until they have none left. Each round plans the whole problem again, so pods that
        // keep their preferences get the same treatment throughout.
        let mut level = vec![0usize; problem.pods.len()];
        loop {
            let round = problem.with_pods(
                problem.pods.iter().zip(&level).map(|(p, &l)| p.with_preference_level(l)).collect(),
            );
            let plan = self.solve_required(&round, fill);
            let refused: BTreeSet<&str> = plan.unschedulable.iter().map(|u| u.pod.as_str()).collect();
            let mut relaxed = false;
            for (i, pod) in problem.pods.iter().enumerate() {
                if refused.contains(pod.name.as_str()) && level[i] < pod.preference_steps() {
                    level[i] += 1;
                    relaxed = true;
                }
            }
            if !relaxed {
                return plan;
            }
        }
    }

    /// Runs the algorithm with required constraints only (preferences already folded in or ignored).
    fn solve_required(&self, problem: &Problem, fill: Fill) -> Plan {
        let run = |p: &Problem| match self {
            Algorithm::Cartwright => solve_pinned(p, fill),
            Algorithm::KarpenterGreedy => baselines::karpenter_greedy(p),
            Algorithm::CaLeastWaste => baselines::ca_least_waste(p),
        };
        // Pods that must share a node are bundled first, then zone affinity (it may take pods out), then
        // spreads pin what is left.
        let _solve = tracing::debug_span!("solve", algorithm = self.name()).entered();
        let bundled = tracing::debug_span!("colocate").in_scope(|| colocate::bundle(problem));
        let problem = bundled.as_ref().map_or(problem, |b| &b.problem);
        let (base, mut refused) =
            match tracing::debug_span!("zone_affinity").in_scope(|| affinity::pin(problem)) {
                Some((pinned, refused)) => (std::borrow::Cow::Owned(pinned), refused),
                None => (std::borrow::Cow::Borrowed(problem), Vec::new()),
            };
        let mut plan = match tracing::debug_span!("spread_pin").in_scope(|| spread::pin(&base)) {
            None => run(&base),
            Some(pinned) => {
                let mut plan = run(&pinned);
                // Skews are counted as kube-scheduler would: over the domains the pods' own node affinity
                // admits, not the zones pod (anti-)affinity pinned them to.
                if tracing::debug_span!("spread_enforce").in_scope(|| spread::enforce(problem, &mut plan)) {
                    plan.cost = Price(plan.new_nodes.iter().map(|n| n.launch.price.0).sum());
                    // The bound was for the pods placed before the spread removed some; it no longer applies.
                    plan.lower_bound = None;
                }
                plan
            }
        };
        plan.unschedulable.append(&mut refused);
        match bundled {
            Some(bundled) => bundled.expand(plan),
            None => plan,
        }
    }
}

/// How Cartwright finishes a plan's new nodes once every pod has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// As cheap as their pods allow: after merging nodes, pods free to run anywhere move into other new
    /// nodes' spare room (or trade places there) so their node can be a smaller type. For plans made in
    /// one go.
    Tight,
    /// Merged where one node costs no more, but each keeps the room the greedy left it. In a live cluster
    /// the next pending pods land in that room; in the simulator's week, moving pods to take it up left
    /// them nowhere, and cost 0.4 % more with 12 % more launches (docs/benchmarks.md).
    Live,
}

/// Solves a problem with Cartwright's algorithm, for a live cluster (see [`Fill::Live`]).
pub fn solve(problem: &Problem) -> Plan {
    Algorithm::Cartwright.solve_live(problem)
}

/// Cartwright's algorithm on a problem whose zone spreads are already pinned.
fn solve_pinned(problem: &Problem, fill: Fill) -> Plan {
    let index = tracing::debug_span!("index").in_scope(|| Index::build(problem));

    // The existing nodes each class may use: their room is free supply in the LP.
    let reachable: Vec<Vec<usize>> = index
        .classes
        .iter()
        .map(|class| {
            (0..problem.existing.len())
                .filter(|&n| greedy::existing_admits(class, &problem.existing[n]))
                .collect()
        })
        .collect();

    // Price pods with the LP over every pod that some NodePool could hold.
    let placeable: Vec<i64> = index
        .classes
        .iter()
        .map(|c| if c.per_pool.iter().any(Result::is_ok) { c.pods.len() as i64 } else { 0 })
        .collect();
    let priced =
        tracing::debug_span!("aggregate_lp").in_scope(|| bound::aggregate_lp(&index, &placeable, &reachable));
    let values = match &priced {
        Ok(lp) => lp.pod_values.clone(),
        Err(_) => vec![0.0; index.classes.len()],
    };

    let mut decisions = tracing::debug_span!("greedy").in_scope(|| greedy::run(&index, &values));

    // The bound covers exactly the pods the plan schedules.
    let mut lower_bound = if decisions.new_nodes.is_empty() {
        Some(LowerBound { price: Price(0), kind: BoundKind::Trivial })
    } else {
        let lp = if decisions.placed == placeable {
            priced
        } else {
            bound::aggregate_lp(&index, &decisions.placed, &reachable)
        };
        lp.ok().map(|lp| LowerBound { price: lp.bound, kind: BoundKind::AggregateLp })
    };

    // With no existing nodes, every placed pod is on a new node: the pattern formulation applies. It gives
    // the tight bound, and its columns may combine into a cheaper plan than the greedy's. It honours NodePool
    // weights as the plan does: each class uses only NodePools that open nodes for the pods they come first
    // for, which holds unless a NodePool's limits refuse such a pod; should that cost less than the pattern
    // bound, only the aggregate bound stands.
    let order = bound::weight_order(&index, &decisions.placed);
    if problem.existing.is_empty()
        && !decisions.new_nodes.is_empty()
        && let Ok(outcome) = tracing::debug_span!("columns").in_scope(|| {
            columns::generate(
                &index,
                &decisions.placed,
                &order.pools,
                &node_patterns(&index, &decisions.new_nodes),
            )
        })
    {
        let kind = if outcome.converged { BoundKind::PatternLp } else { BoundKind::PatternFarley };
        let otherwise = order.refused.map(|r| r.max(lower_bound.map_or(Price(0), |b| b.price)));
        if lower_bound.is_none_or(|b| outcome.bound > b.price) && otherwise.is_none_or(|o| o >= outcome.bound)
        {
            lower_bound = Some(LowerBound { price: outcome.bound, kind });
        }
        tracing::debug_span!("rounding")
            .in_scope(|| improve_with_columns(&index, &outcome, &values, &mut decisions));
    }
    // Nodes one instance type holds for no more than they cost apart become that one node (within the
    // NodePool's limits).
    decisions.new_nodes = tracing::debug_span!("compact")
        .in_scope(|| compact::compact(&index, std::mem::take(&mut decisions.new_nodes), fill == Fill::Tight));

    let cost = Price(decisions.new_nodes.iter().map(|n| n.launch.price.0).sum());
    Plan {
        placements: decisions.placements,
        new_nodes: decisions.new_nodes,
        unschedulable: decisions.unschedulable,
        cost,
        lower_bound,
    }
}

/// Each new node's pods, as pods per class.
fn node_patterns(index: &Index, nodes: &[NewNode]) -> Vec<Vec<(usize, i64)>> {
    let class_of = index.class_of_pods();
    nodes
        .iter()
        .map(|node| {
            let mut counts: BTreeMap<usize, i64> = BTreeMap::new();
            for pod in &node.pods {
                if let Some(&c) = class_of.get(pod.as_str()) {
                    *counts.entry(c).or_default() += 1;
                }
            }
            counts.into_iter().collect()
        })
        .collect()
}

/// Launch options computed for one content of a column (pods taken per class).
struct CachedLaunch {
    takes: Vec<usize>,
    alternatives: Vec<LaunchOption>,
    /// What a node of these alternatives is charged against its NodePool's limits.
    charge: Resources,
    labels: BTreeMap<String, String>,
}

/// Residual rounding of the pattern LP: ⌊λ⌋ nodes of each column, then the greedy for the pods left. When
/// that is cheaper than the greedy alone, its nodes replace the greedy's. The master LP models neither
/// NodePool limits, `minValues` nor anti-affinity between classes, so the rounding does: a column whose
/// classes repel each other is left to the greedy, each node is charged against its NodePool's limits as
/// the greedy's are (copies the limits cannot take are left to the greedy, which runs within what is left),
/// and a node whose alternatives lack `minValues` is left to the greedy. For problems with no existing nodes.
fn improve_with_columns(
    index: &Index,
    outcome: &columns::Outcome,
    values: &[f64],
    decisions: &mut greedy::Decisions,
) {
    let greedy_cost: u64 = decisions.new_nodes.iter().map(|n| n.launch.price.0).sum();
    let mut start = vec![0usize; index.classes.len()];
    let mut limits: Vec<Limits> = index.remaining_limits();
    let mut nodes = Vec::new();
    for (column, &lambda) in outcome.columns.iter().zip(&outcome.lambda) {
        let bin = &outcome.bins[column.bin];
        let pool = &index.pools[bin.pool];
        let first_choice = column
            .counts
            .iter()
            .all(|&(c, _)| index.classes[c].per_pool.iter().position(Result::is_ok) == Some(bin.pool));
        let repels = column.counts.iter().any(|&(c, k)| {
            (k > 1 && index.conflicts[c][c])
                || column.counts.iter().any(|&(d, _)| d != c && index.conflicts[c][d])
        });
        if !first_choice || repels {
            continue; // these pods go to the greedy below, which honours NodePool weights and conflicts
        }
        // Copies of a column usually hold the same pods: launch options are computed once per content.
        let mut last: Option<CachedLaunch> = None;
        for _ in 0..(lambda + 1e-9).floor() as i64 {
            let mut requirements = pool.node_requirements.clone();
            let mut requests = Resources::new();
            let mut takes = Vec::with_capacity(column.counts.len());
            for &(c, k) in &column.counts {
                let class = &index.classes[c];
                let Ok(cp) = &class.per_pool[bin.pool] else { return };
                // Never more of a class than the greedy placed: the rest is unschedulable either way.
                let take = (k as usize).min(decisions.placed[c] as usize - start[c]);
                takes.push(take);
                if take == 0 {
                    continue;
                }
                if requirements.intersects(&cp.requirements).is_err() {
                    return; // classes that cannot share a node: keep the greedy plan
                }
                requirements = requirements.intersection(&cp.requirements);
                requests.add_assign(&class.requests.times(take as i64));
            }
            if takes.iter().all(|&t| t == 0) {
                continue;
            }
            let stale = last.as_ref().is_none_or(|l| l.takes != takes || !limits[bin.pool].allows(&l.charge));
            if stale {
                let limit = &limits[bin.pool];
                let most = greedy::choices_needed(index, bin.pool, limit);
                let options = greedy::launch_choices(index, bin.pool, &requirements, &requests, limit, most);
                let (alternatives, charge) =
                    greedy::limited_alternatives(index, bin.pool, &limits[bin.pool], options);
                let types: Vec<_> =
                    alternatives.iter().filter_map(|a| index.problem.catalog.get(&a.instance_type)).collect();
                let usable = !alternatives.is_empty()
                    && crate::catalog::check_min_values(&pool.template.requirements, types.iter().copied())
                        .is_ok()
                    && limits[bin.pool].allows(&charge);
                if !usable {
                    break; // the rest of this column's copies go to the greedy
                }
                let labels = greedy::node_labels(
                    &requirements,
                    index.problem.catalog.get(&alternatives[0].instance_type),
                );
                last = Some(CachedLaunch { takes: takes.clone(), alternatives, charge, labels });
            }
            let CachedLaunch { alternatives, charge, labels, .. } = last.as_ref().expect("set above");
            let mut pods = Vec::new();
            for (&(c, _), &take) in column.counts.iter().zip(&takes) {
                let class = &index.classes[c];
                pods.extend(
                    class.pods[start[c]..start[c] + take].iter().map(|&p| index.problem.pods[p].name.clone()),
                );
                start[c] += take;
            }
            limits[bin.pool].consume(charge, 1);
            nodes.push(NewNode {
                nodepool: pool.template.name.clone(),
                labels: labels.clone(),
                launch: alternatives[0].clone(),
                pods,
                alternatives: alternatives.clone(),
            });
        }
    }
    let residual = greedy::run_from(index, values, &start, limits);
    let placed: Vec<i64> = start.iter().zip(&residual.placed).map(|(&s, &r)| s as i64 + r).collect();
    nodes.extend(residual.new_nodes);
    let cost: u64 = nodes.iter().map(|n| n.launch.price.0).sum();
    if cost < greedy_cost && placed == decisions.placed {
        decisions.new_nodes = nodes;
        decisions.unschedulable = residual.unschedulable;
    }
}

#[cfg(test)]
mod tests;
