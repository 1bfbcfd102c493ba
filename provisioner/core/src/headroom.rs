//! HPA headroom: capacity for the replicas a HorizontalPodAutoscaler is about to want, and a guard that keeps
//! capacity an HPA has just given back while it may want it again.
//!
//! **Prediction.** Each HPA's demand — its metric ratio (current metric over target, the highest over its
//! metrics) times its replicas, the replicas the metric asks for, which does not jump when the HPA scales —
//! is fitted with a least-squares line over the trend window (and over the last three syncs, where a burst
//! shows first; the steeper wins); the demand one launch horizon ahead (less the HPA's own scale-up
//! stabilisation window, which delays it by that much), rounded up, is what the HPA will want then. The
//! HPA's tolerance is deliberately not applied: the HPA jumps as soon as the metric leaves it, and that
//! moment cannot be timed, so the capacity must be there before. A falling or flat demand predicts no more
//! than the demand now. The prediction is capped by what the HPA's scale-up policies can add within
//! the horizon (simulated sync by sync, 15 s apart, as the HPA controller applies them — or the legacy
//! double-or-four limit without `behavior`) and by `maxReplicas`.
//!
//! **Guard.** The highest replica count (or recommendation) the HPA had within its scale-down stabilisation
//! window is kept as capacity after its replicas drop, until the window passes.
//!
//! **Virtual pods.** Both become pods shaped like the target's pods (`<hpa>~headroom-<i>`,
//! `<hpa>~guard-<i>`), never created in the API. [`plan`] plans them after the real pods, over what the
//! real plan leaves (existing free room, the real plan's new nodes, the NodePools' remaining limits), so
//! real pods always win; headroom nodes are kept within each NodePool's budget. [`assign`] places them on
//! live nodes for disruption, where they count as pods: a node holding them is not empty, and consolidating
//! it must find them room elsewhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use cartwright_binpack::solver::{ExistingNode, NewNode, Plan, PodSpec, Problem};
use cartwright_binpack::taints::tolerates_all;
use cartwright_binpack::{Price, Resources};

use crate::hpa::{DEFAULT_TOLERANCE, HpaSpec, LEGACY_DOWNSCALE_WINDOW_MS, Millis, Policy, SelectPolicy};
use crate::provisioning::{self, NodeView};

/// How often the HPA controller syncs (its default `--horizontal-pod-autoscaler-sync-period`).
pub const HPA_SYNC_MS: Millis = 15_000;
/// How long an HPA's observations are kept at least (the guard needs its scale-down window, the trend
/// its own window).
const KEEP_MS: Millis = 15 * 60_000;

/// The name of a virtual pod: `<hpa>~headroom-<i>`, `<hpa>~guard-<i>`, or `<buffer>~buffer-<i>` for a
/// CapacityBuffer's chunks.
pub fn is_virtual(pod: &str) -> bool {
    pod.contains("~headroom-") || pod.contains("~guard-") || pod.contains("~buffer-")
}

/// The HPA (or CapacityBuffer) a virtual pod stands in for.
pub fn hpa_of(pod: &str) -> Option<&str> {
    is_virtual(pod).then(|| pod.rsplit_once('~').map(|(hpa, _)| hpa)).flatten()
}

/// The launch-to-ready latencies of recent nodes; their 90th percentile is the horizon headroom looks
/// ahead when none is set (capacity asked for now must cover what is wanted until it is ready).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchLatencies {
    recent: VecDeque<Millis>,
}

impl LaunchLatencies {
    /// How many recent launches count.
    pub const KEPT: usize = 50;
    /// The horizon is kept within these bounds whatever is measured.
    pub const MIN_MS: Millis = 30_000;
    pub const MAX_MS: Millis = 300_000;

    pub fn observe(&mut self, latency: Millis) {
        if self.recent.len() == Self::KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(latency);
    }

    /// The 90th percentile of the recent latencies (nearest rank) within [30 s, 5 min]; `None` before any.
    pub fn horizon(&self) -> Option<Millis> {
        let mut sorted: Vec<Millis> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (sorted.len() * 9).div_ceil(10).max(1);
        sorted.get(rank - 1).map(|p90| (*p90).clamp(Self::MIN_MS, Self::MAX_MS))
    }
}

/// Prediction settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// How far ahead to keep capacity: a node's launch-to-ready latency.
    pub horizon_ms: Millis,
    /// The metric history the trend is fitted over.
    pub trend_window_ms: Millis,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { horizon_ms: 60_000, trend_window_ms: 120_000 }
    }
}

/// One observation of an HPA and its target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub at: Millis,
    /// Current metric over its target (1.0 on target), the highest over the HPA's metrics.
    pub ratio: f64,
    /// The target's replicas.
    pub replicas: i32,
    /// The HPA's `status.desiredReplicas` (the target may not have caught up yet).
    pub desired: i32,
}

/// What limited a prediction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The HPA's scale-up policies cannot add more within the horizon.
    ScaleUpPolicy,
    MaxReplicas,
}

/// The replicas an HPA is predicted to want one horizon ahead.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prediction {
    pub replicas: i32,
    /// Replicas beyond the target's current count: the headroom, in pods.
    pub extra: i32,
    /// The predicted metric ratio one horizon ahead at today's replicas.
    pub ratio: f64,
    pub limited_by: Option<Limit>,
}

/// An HPA as the state index keeps it: its spec, its target's pod shape and counts, and its history.
#[derive(Clone, Debug, PartialEq)]
pub struct HpaModel {
    /// `namespace/name`.
    pub name: String,
    pub spec: HpaSpec,
    /// The target's pod template in the solver's terms (requests and scheduling constraints).
    pub pod: PodSpec,
    /// The target's replicas now.
    pub replicas: i32,
    history: VecDeque<Observation>,
}

impl HpaModel {
    pub fn new(name: impl Into<String>, spec: HpaSpec, pod: PodSpec, replicas: i32) -> HpaModel {
        HpaModel { name: name.into(), spec, pod, replicas, history: VecDeque::new() }
    }

    /// Records an observation (in time order; an older one is ignored) and forgets what no window needs.
    pub fn observe(&mut self, observation: Observation) {
        if self.history.back().is_some_and(|last| last.at > observation.at) {
            return;
        }
        self.replicas = observation.replicas;
        self.history.push_back(observation);
        let keep = self.down_window_ms().max(KEEP_MS);
        while self.history.front().is_some_and(|o| observation.at.saturating_sub(o.at) > keep) {
            self.history.pop_front();
        }
    }

    pub fn history(&self) -> impl Iterator<Item = &Observation> {
        self.history.iter()
    }

    fn tolerance_up(&self) -> f64 {
        self.spec.behavior.as_ref().and_then(|b| b.scale_up.tolerance).unwrap_or(DEFAULT_TOLERANCE)
    }

    fn up_window_ms(&self) -> Millis {
        self.spec
            .behavior
            .as_ref()
            .map_or(0, |b| Millis::from(b.scale_up.stabilization_window_seconds) * 1000)
    }

    fn down_window_ms(&self) -> Millis {
        self.spec.behavior.as_ref().map_or(LEGACY_DOWNSCALE_WINDOW_MS, |b| {
            Millis::from(b.scale_down.stabilization_window_seconds) * 1000
        })
    }

    /// What the metric asks for at `ratio` with `replicas` running, before any limit.
    fn recommendation(&self, ratio: f64, replicas: i32) -> i32 {
        if ratio - 1.0 <= self.tolerance_up() {
            replicas
        } else {
            // A hair below an integer product is that integer (0.1 steps are not exact in binary).
            (ratio * f64::from(replicas) - 1e-9).ceil() as i32
        }
    }

    /// The least-squares slope of the demand (ratio × replicas) per millisecond over the trend window ending
    /// at `now`, never negative (a falling demand predicts nothing beyond what the HPA wants now).
    fn slope(&self, now: Millis, window: Millis) -> f64 {
        let points: Vec<(f64, f64)> = self
            .history
            .iter()
            .filter(|o| o.at <= now && now - o.at <= window)
            .map(|o| (o.at as f64, o.ratio * f64::from(o.replicas)))
            .collect();
        if points.len() < 2 {
            return 0.0;
        }
        let n = points.len() as f64;
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_r = points.iter().map(|p| p.1).sum::<f64>() / n;
        let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
        if var <= 0.0 {
            return 0.0;
        }
        let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_r)).sum();
        (cov / var).max(0.0)
    }

    /// The replicas the HPA is predicted to want `settings.horizon_ms` after `now`.
    pub fn predict(&self, now: Millis, settings: &Settings) -> Prediction {
        let current = self.replicas;
        let Some(latest) = self.history.iter().rev().find(|o| o.at <= now) else {
            return Prediction { replicas: current, extra: 0, ratio: 1.0, limited_by: None };
        };
        if current <= 0 {
            // A target scaled to zero disables its HPA.
            return Prediction { replicas: 0, extra: 0, ratio: latest.ratio, limited_by: None };
        }
        // The HPA's scale-up window makes it act on the metric that long ago: look that much less ahead.
        let lead = settings.horizon_ms.saturating_sub(self.up_window_ms());
        // The steeper of the whole window's trend and the last three syncs' (a burst shows there first).
        let recent = settings.trend_window_ms.min(3 * HPA_SYNC_MS);
        let slope = self.slope(now, settings.trend_window_ms).max(self.slope(now, recent));
        let demand = latest.ratio * f64::from(latest.replicas) + slope * lead as f64;
        let ratio = demand / f64::from(current);
        // The demand itself, rounded up — not the HPA's recommendation, which waits for the metric to leave
        // its tolerance: the HPA jumps as soon as it does, a moment no trend can time, so capacity for the
        // demand must be ready before.
        let wanted = ((demand - 1e-9).ceil() as i32).max(current).max(latest.desired);
        let reachable = self.reachable(now, settings.horizon_ms);
        let mut replicas = wanted;
        let mut limited_by = None;
        if replicas > reachable {
            replicas = reachable;
            limited_by = Some(Limit::ScaleUpPolicy);
        }
        if replicas > self.spec.max_replicas {
            replicas = self.spec.max_replicas;
            limited_by = Some(Limit::MaxReplicas);
        }
        let replicas = replicas.max(current);
        Prediction { replicas, extra: replicas - current, ratio, limited_by }
    }

    /// The most replicas the HPA's scale-up rules allow `horizon` after `now`, sync by sync, each policy
    /// measured from the replicas one period before (from the history for the past).
    fn reachable(&self, now: Millis, horizon: Millis) -> i32 {
        let mut timeline: Vec<(Millis, i32)> =
            self.history.iter().filter(|o| o.at < now).map(|o| (o.at, o.replicas)).collect();
        timeline.push((now, self.replicas));
        let at = |timeline: &[(Millis, i32)], t: i64| -> i32 {
            timeline.iter().rev().find(|(when, _)| (*when as i64) <= t).unwrap_or(&timeline[0]).1
        };
        let mut replicas = self.replicas;
        let syncs = (horizon / HPA_SYNC_MS).max(1);
        for k in 1..=syncs {
            let t = now + k * HPA_SYNC_MS;
            let limit = match &self.spec.behavior {
                None => (2 * replicas).max(4),
                Some(behavior) => {
                    let rules = &behavior.scale_up;
                    if rules.select_policy == SelectPolicy::Disabled || rules.policies.is_empty() {
                        return self.replicas;
                    }
                    let proposals = rules.policies.iter().map(|p| {
                        let (value, period) = match *p {
                            Policy::Pods { value, period_seconds }
                            | Policy::Percent { value, period_seconds } => {
                                (value, Millis::from(period_seconds) * 1000)
                            }
                        };
                        let start = at(&timeline, t as i64 - period as i64);
                        match p {
                            Policy::Pods { .. } => start + value,
                            Policy::Percent { .. } => {
                                (f64::from(start) * (1.0 + f64::from(value) / 100.0)).ceil() as i32
                            }
                        }
                    });
                    let chosen = if rules.select_policy == SelectPolicy::Min {
                        proposals.min()
                    } else {
                        proposals.max()
                    };
                    chosen.unwrap_or(replicas)
                }
            };
            replicas = limit.max(replicas);
            timeline.push((t, replicas));
        }
        replicas
    }

    /// Replicas beyond the current count to keep capacity for: the highest count or recommendation within
    /// the scale-down stabilisation window ending at `now`, capped by `maxReplicas`.
    pub fn guard(&self, now: Millis) -> i32 {
        let window = self.down_window_ms();
        let highest = self
            .history
            .iter()
            .filter(|o| o.at <= now && now - o.at <= window)
            .map(|o| o.replicas.max(self.recommendation(o.ratio, o.replicas)))
            .max()
            .unwrap_or(self.replicas)
            .min(self.spec.max_replicas);
        (highest - self.replicas).max(0)
    }

    /// The virtual pods for this HPA at `now`: the predicted extra replicas (`~headroom-`), then as many
    /// more as the guard keeps (`~guard-`).
    pub fn virtual_pods(&self, now: Millis, settings: &Settings) -> Vec<PodSpec> {
        let headroom = self.predict(now, settings).extra.max(0);
        let guard = self.guard(now);
        let pod =
            |kind: &str, i: i32| PodSpec { name: format!("{}~{kind}-{i}", self.name), ..self.pod.clone() };
        (0..headroom).map(|i| pod("headroom", i)).chain((headroom..guard).map(|i| pod("guard", i))).collect()
    }
}

/// A NodePool's headroom settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolHeadroom {
    /// Whether headroom may use this pool (its nodes' free room and new nodes).
    pub enabled: bool,
    /// At most this much per hour of new nodes for headroom.
    pub budget_per_hour: Option<Price>,
    /// At most this percentage of the pool's current hourly cost.
    pub budget_percent: Option<u32>,
}

impl Default for PoolHeadroom {
    fn default() -> Self {
        PoolHeadroom { enabled: true, budget_per_hour: None, budget_percent: None }
    }
}

impl PoolHeadroom {
    /// The hourly budget for a pool whose nodes cost `pool_cost` now; `None` is unlimited.
    pub fn budget(&self, pool_cost: Price) -> Option<Price> {
        let percent = self.budget_percent.map(|p| Price(pool_cost.0 / 100 * u64::from(p)));
        match (self.budget_per_hour, percent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The two plans of one provisioning round.
#[derive(Clone, Debug)]
pub struct HeadroomPlan {
    /// The real pods' plan: exactly what planning without headroom gives.
    pub real: Plan,
    /// The virtual pods' plan over what the real plan leaves; its new nodes are the headroom nodes to
    /// launch (within budget).
    pub headroom: Plan,
    /// Virtual pods whose node the budget or an opted-out pool refused.
    pub over_budget: Vec<String>,
}

/// Plans `problem`'s real pods, then `virtual_pods` over what that plan leaves. `settings` are per NodePool
/// (absent: enabled, unlimited); `pool_cost` is each pool's current hourly cost (for percentage budgets).
pub fn plan(
    problem: &Problem,
    virtual_pods: Vec<PodSpec>,
    settings: &BTreeMap<String, PoolHeadroom>,
    pool_cost: &BTreeMap<String, Price>,
    solve: impl Fn(&Problem) -> Plan,
) -> HeadroomPlan {
    let real = solve(problem);
    if virtual_pods.is_empty() {
        let headroom = Plan {
            placements: vec![],
            new_nodes: vec![],
            unschedulable: vec![],
            cost: Price(0),
            lower_bound: None,
        };
        return HeadroomPlan { real, headroom, over_budget: vec![] };
    }
    let enabled = |pool: Option<&str>| pool.is_none_or(|p| settings.get(p).is_none_or(|s| s.enabled));
    let requests: BTreeMap<&str, &PodSpec> = problem.pods.iter().map(|p| (p.name.as_str(), p)).collect();
    // The existing nodes with the real placements on them.
    let mut existing: Vec<ExistingNode> = problem.existing.clone();
    for placement in &real.placements {
        if let (Some(node), Some(pod)) =
            (existing.iter_mut().find(|n| n.name == placement.node), requests.get(placement.pod.as_str()))
        {
            add_pod(node, pod);
        }
    }
    // The real plan's new nodes, as in-flight nodes.
    for (i, new) in real.new_nodes.iter().enumerate() {
        if let Some(node) = planned_node(problem, new, i) {
            let mut node = node;
            for pod in new.pods.iter().filter_map(|p| requests.get(p.as_str())) {
                add_pod(&mut node, pod);
            }
            existing.push(node);
        }
    }
    existing.retain(|n| enabled(n.nodepool.as_deref()));
    let capacities: Vec<(String, Resources)> = real
        .new_nodes
        .iter()
        .filter_map(|n| {
            Some((n.nodepool.clone(), problem.catalog.get(&n.launch.instance_type)?.capacity.clone()))
        })
        .collect();
    let mut nodepools = provisioning::remaining_limits(
        &problem.nodepools,
        capacities.iter().map(|(pool, capacity)| (Some(pool.as_str()), capacity)),
    );
    nodepools.retain(|p| enabled(Some(&p.name)));
    let second = Problem {
        pods: virtual_pods,
        existing,
        nodepools,
        daemonsets: problem.daemonsets.clone(),
        catalog: problem.catalog.clone(),
    };
    let mut headroom = solve(&second);
    // Budgets: per pool, the cheapest nodes per pod first, while they fit.
    let mut spent: BTreeMap<String, Price> = BTreeMap::new();
    let mut order: Vec<NewNode> = std::mem::take(&mut headroom.new_nodes);
    order.sort_by(|a, b| {
        let per_pod = |n: &NewNode| n.launch.price.0 as f64 / n.pods.len().max(1) as f64;
        per_pod(a).total_cmp(&per_pod(b))
    });
    let mut over_budget = Vec::new();
    for node in order {
        let budget = settings
            .get(&node.nodepool)
            .and_then(|s| s.budget(pool_cost.get(&node.nodepool).copied().unwrap_or(Price(0))));
        let used = spent.entry(node.nodepool.clone()).or_insert(Price(0));
        if budget.is_some_and(|b| used.0 + node.launch.price.0 > b.0) {
            over_budget.extend(node.pods.iter().cloned());
            continue;
        }
        used.0 += node.launch.price.0;
        headroom.new_nodes.push(node);
    }
    headroom.cost = Price(headroom.new_nodes.iter().map(|n| n.launch.price.0).sum());
    HeadroomPlan { real, headroom, over_budget }
}

fn add_pod(node: &mut ExistingNode, pod: &PodSpec) {
    node.requested.add_assign(&pod.requests);
    node.pod_labels.push(pod.labels.clone());
    node.repelled.extend(pod.hostname_anti_affinity.iter().cloned());
}

/// A planned new node as an in-flight node carrying its daemonsets (its pods are added by the caller).
fn planned_node(problem: &Problem, new: &NewNode, i: usize) -> Option<ExistingNode> {
    let instance_type = problem.catalog.get(&new.launch.instance_type)?;
    let pool = problem.nodepools.iter().find(|p| p.name == new.nodepool)?;
    let name = format!("planned-{}-{i}", new.nodepool);
    let labels = provisioning::node_labels(instance_type, new, &name);
    let taints: Vec<_> = pool.taints.iter().chain(&pool.startup_taints).cloned().collect();
    let mut requested = Resources::new();
    for ds in &problem.daemonsets {
        if tolerates_all(&ds.tolerations, &taints) && ds.affinity.matches_labels(&labels) {
            requested.add_assign(&ds.requests);
        }
    }
    Some(ExistingNode {
        name,
        labels,
        taints: pool.taints.clone(),
        allocatable: instance_type.allocatable(),
        requested,
        nodepool: Some(new.nodepool.clone()),
        initialized: false,
        pod_labels: vec![],
        repelled: vec![],
    })
}

/// Places virtual pods on live nodes (no new nodes), for disruption: each node's share, by node name.
/// Pods that fit nowhere are left out (they would need new nodes, which provisioning launches).
pub fn assign(
    virtual_pods: Vec<PodSpec>,
    nodes: &[NodeView<'_>],
    settings: &BTreeMap<String, PoolHeadroom>,
    solve: impl Fn(&Problem) -> Plan,
) -> BTreeMap<String, Vec<PodSpec>> {
    if virtual_pods.is_empty() {
        return BTreeMap::new();
    }
    let enabled = |pool: Option<&str>| pool.is_none_or(|p| settings.get(p).is_none_or(|s| s.enabled));
    let usable: Vec<NodeView<'_>> = nodes.iter().filter(|n| enabled(n.nodepool)).cloned().collect();
    let by_name: BTreeMap<String, PodSpec> =
        virtual_pods.iter().map(|p| (p.name.clone(), p.clone())).collect();
    let catalog = std::sync::Arc::new(cartwright_binpack::Catalog::new("", vec![], vec![]));
    let problem = provisioning::problem(virtual_pods, &usable, &[], &[], catalog);
    let plan = solve(&problem);
    let mut out: BTreeMap<String, Vec<PodSpec>> = BTreeMap::new();
    for placement in plan.placements {
        if let Some(pod) = by_name.get(&placement.pod) {
            out.entry(placement.node).or_default().push(pod.clone());
        }
    }
    out
}

/// The HPAs whose virtual pods a node holds, for `cartwright explain` ("holds capacity for HPA ...").
pub fn held_for<'a>(pods: impl IntoIterator<Item = &'a str>) -> BTreeSet<&'a str> {
    pods.into_iter().filter_map(hpa_of).collect()
}

#[cfg(test)]
mod tests;
