//! Disruption decisions: which nodes to remove or replace to save money, and why every other node stays.
//!
//! Methods, in order, the first that finds something acts (one command per pass):
//! 0. **Expiry**: the node past its NodePool's `expireAfter` longest is replaced (not held by budgets).
//! 1. **Emptiness**: nodes without reschedulable pods (daemonset and mirror pods do not count) for their
//!    NodePool's `consolidateAfter` are deleted, as many as the budgets allow.
//! 2. **Drift**: a node that no longer matches its NodePool or NodeClass ([`Candidate::drifted`], decided
//!    by the caller) is replaced, empty ones first, within the pool's Drifted budget, whatever
//!    `consolidateAfter` says.
//! 3. **Multi-node consolidation** (`WhenEmptyOrUnderutilized`): candidates ordered by disruption cost
//!    (fewest pods, then the most expensive first); the largest prefix whose pods fit on the remaining
//!    nodes plus at most one new, cheaper node is found by binary search with the solver — never every
//!    subset.
//! 4. **Single-node consolidation**: the first candidate whose pods fit elsewhere (delete) or on one cheaper
//!    node (replace). A spot node is replaced by spot only when at least 15 cheaper offerings exist.
//! 5. **Repack** (Cartwright's own; Karpenter never launches more than one replacement): when neither
//!    finds anything, the multi-node candidates' pods are planned afresh over the other nodes and any new
//!    nodes; the plan acts when it saves at least [`REPACK_MIN_SAVING`] of what it removes. This mends
//!    nodes that are each "full enough" that no single move saves money while a fresh plan of their pods
//!    costs less (sizes or families that suit the pods together, which one replacement never reaches).
//!
//! Safety: disruption budgets per NodePool (count or percent of its nodes, optional cron schedule and
//! duration, reasons), the most restrictive active one wins; nodes with a do-not-disrupt pod or annotation,
//! not yet initialized, or already being disrupted are never chosen. Every node not acted on gets a reason
//! ([`Outcome::kept`]) for `cartwright explain`. Pure: the caller supplies the clock and executes the
//! command (replacements launched and initialized before anything is drained).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cartwright_binpack::solver::{self, DaemonSetSpec, NewNode, NodePoolTemplate, PodSpec};
use cartwright_binpack::{CapacityType, Catalog, Price, Resources};

use crate::hpa::Millis;
use crate::provisioning::{self, NodeView};

/// Karpenter's rule: a spot node is replaced by a cheaper spot node only with this many cheaper offerings,
/// so the replacement is not itself interrupted at once.
pub const SPOT_TO_SPOT_MIN_ALTERNATIVES: usize = 15;
/// How many candidates multi-node consolidation considers at once.
pub const MULTI_NODE_MAX: usize = 100;
/// How many candidates single-node consolidation tries per pass.
pub const SINGLE_NODE_TRIES: usize = 30;
/// Solver runs one decision may spend (each plans the candidates' pods over the whole cluster); cheap
/// screens decide which candidates are worth one.
pub const SOLVES_PER_DECISION: usize = 3;
/// Repacking (several nodes' pods planned afresh, onto any number of new nodes) must save at least this
/// share of what it removes: below it, the churn of moving every pod of the nodes is not worth it.
pub const REPACK_MIN_SAVING: f64 = 0.05;

/// Why a node is disrupted (what budgets name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Empty,
    Underutilized,
    Drifted,
    /// Older than its `expireAfter` (not limited by budgets, as in Karpenter v1).
    Expired,
    /// The cloud is taking the machine away (spot interruption, scheduled maintenance, stop): not limited
    /// by budgets or do-not-disrupt, as in Karpenter.
    Interrupted,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Empty => "Empty",
            Reason::Underutilized => "Underutilized",
            Reason::Drifted => "Drifted",
            Reason::Expired => "Expired",
            Reason::Interrupted => "Interrupted",
        }
    }
}

/// `WhenEmpty` or `WhenEmptyOrUnderutilized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    WhenEmpty,
    WhenEmptyOrUnderutilized,
}

/// How many nodes a budget lets go at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nodes {
    Count(i64),
    /// A percentage of the pool's nodes, rounded up (Karpenter's rounding).
    Percent(i64),
}

/// One disruption budget. `active` is whether its schedule covers now (always, without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub nodes: Nodes,
    /// The reasons it limits; all when empty.
    pub reasons: Vec<Reason>,
    pub active: bool,
}

impl Budget {
    /// Parses `nodes` ("10%", "3") with an optional cron `schedule` and `duration` (Go duration syntax,
    /// e.g. `8h`), evaluated at `now_ms` (Unix milliseconds, UTC).
    pub fn parse(
        nodes: &str,
        reasons: &[String],
        schedule: Option<&str>,
        duration: Option<&str>,
        now_ms: Millis,
    ) -> Result<Budget, String> {
        let parsed = match nodes.strip_suffix('%') {
            Some(p) => {
                Nodes::Percent(p.parse().map_err(|_| format!("nodes: {nodes:?} is not a percentage"))?)
            }
            None => Nodes::Count(nodes.parse().map_err(|_| format!("nodes: {nodes:?} is not a count"))?),
        };
        let reasons = reasons
            .iter()
            .map(|r| match r.as_str() {
                "Empty" => Ok(Reason::Empty),
                "Underutilized" => Ok(Reason::Underutilized),
                "Drifted" => Ok(Reason::Drifted),
                other => Err(format!("reasons: unknown reason {other:?} (Empty, Underutilized or Drifted)")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let active = match (schedule, duration) {
            (None, None) => true,
            (Some(schedule), Some(duration)) => schedule_active(schedule, duration, now_ms)?,
            _ => return Err("schedule and duration must be set together".into()),
        };
        Ok(Budget { nodes: parsed, reasons, active })
    }

    fn allowed(&self, pool_nodes: usize) -> i64 {
        match self.nodes {
            Nodes::Count(n) => n,
            Nodes::Percent(p) => (p * pool_nodes as i64 + 99) / 100,
        }
    }
}

/// Whether a window of `duration` opened by the cron `schedule` (UTC) covers `now_ms`.
fn schedule_active(schedule: &str, duration: &str, now_ms: Millis) -> Result<bool, String> {
    use std::str::FromStr;
    let window =
        parse_duration(duration).ok_or_else(|| format!("duration: {duration:?} is not a duration"))?;
    let cron = croner::Cron::from_str(schedule).map_err(|e| format!("schedule: {schedule:?}: {e}"))?;
    let now = chrono::DateTime::from_timestamp_millis(now_ms as i64).ok_or("the clock is out of range")?;
    let from = now - chrono::Duration::milliseconds(window as i64);
    let next = cron.find_next_occurrence(&from, true).map_err(|e| format!("schedule: {schedule:?}: {e}"))?;
    Ok(next <= now)
}

/// A Kubernetes/Go duration as used by Karpenter (`30s`, `15m`, `8h`, `1h30m`) in milliseconds.
pub fn parse_duration(text: &str) -> Option<Millis> {
    let mut total: Millis = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: Millis = number.parse().ok()?;
        number.clear();
        total += n * match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            _ => return None,
        };
    }
    (number.is_empty() && !text.is_empty()).then_some(total)
}

/// A NodePool's disruption settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolPolicy {
    pub policy: Policy,
    /// `None` is `Never`.
    pub consolidate_after_ms: Option<Millis>,
    pub budgets: Vec<Budget>,
}

impl Default for PoolPolicy {
    /// Karpenter's defaults: `WhenEmptyOrUnderutilized`, `consolidateAfter: 0s`, one budget of 10 %.
    fn default() -> Self {
        PoolPolicy {
            policy: Policy::WhenEmptyOrUnderutilized,
            consolidate_after_ms: Some(0),
            budgets: vec![Budget { nodes: Nodes::Percent(10), reasons: Vec::new(), active: true }],
        }
    }
}

/// A node as disruption sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub view: NodeView<'a>,
    pub price: Price,
    pub capacity_type: CapacityType,
    /// Reschedulable pods on it (not daemonset or mirror pods).
    pub pods: Vec<&'a PodSpec>,
    /// Set when something forbids voluntary disruption (a do-not-disrupt pod or annotation).
    pub blocked: Option<String>,
    pub initialized: bool,
    /// Already being disrupted (deleting, or part of a command in progress).
    pub disrupting: bool,
    /// When its pods last changed (or it became ready): `consolidateAfter` counts from here.
    pub settled_since: Millis,
    /// When it reaches its NodePool's `expireAfter` (`None`: never).
    pub expires_at: Option<Millis>,
    /// Why it no longer matches what its NodePool or NodeClass would launch now (`None`: it does).
    pub drifted: Option<String>,
}

impl<'a> Candidate<'a> {
    /// An initialized candidate with nothing blocking it, settled since time 0.
    pub fn settled(
        view: NodeView<'a>,
        price: Price,
        capacity_type: CapacityType,
        pods: Vec<&'a PodSpec>,
    ) -> Self {
        Candidate {
            view,
            price,
            capacity_type,
            pods,
            blocked: None,
            initialized: true,
            disrupting: false,
            settled_since: 0,
            expires_at: None,
            drifted: None,
        }
    }
}

/// The cluster as disruption sees it.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// Every node, managed (with a NodePool) or not.
    pub nodes: Vec<Candidate<'a>>,
    pub nodepools: Vec<NodePoolTemplate>,
    pub policies: BTreeMap<String, PoolPolicy>,
    pub daemonsets: Vec<DaemonSetSpec>,
    pub catalog: Arc<Catalog>,
    /// Whether to look for consolidations (the solver-backed methods) or only for empty nodes.
    pub consolidate: bool,
    /// Whether to say why each node stays ([`Outcome::kept`]); off, the outcome lists no reasons.
    pub explain: bool,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub reason: Reason,
    /// Names of the nodes to remove.
    pub nodes: Vec<String>,
    /// Nodes to launch (and see initialized) first.
    pub replacements: Vec<NewNode>,
    /// Where the plan puts the other moved pods: (pod, node staying).
    pub placements: Vec<(String, String)>,
    /// Hourly savings.
    pub savings: Price,
}

/// The decision of one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub command: Option<Command>,
    /// Why each managed node not in the command stays.
    pub kept: BTreeMap<String, String>,
}

/// What each pool may still disrupt for `reason`: the most restrictive active budget, minus what is
/// being disrupted already.
fn allowances(input: &Input, reason: Reason) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for pool in &input.nodepools {
        let members: Vec<&Candidate> =
            input.nodes.iter().filter(|n| n.view.nodepool == Some(pool.name.as_str())).collect();
        let disrupting = members.iter().filter(|n| n.disrupting).count() as i64;
        let default = PoolPolicy::default();
        let policy = input.policies.get(&pool.name).unwrap_or(&default);
        let allowed = policy
            .budgets
            .iter()
            .filter(|b| b.active && (b.reasons.is_empty() || b.reasons.contains(&reason)))
            .map(|b| b.allowed(members.len()))
            .min()
            .unwrap_or(i64::MAX);
        out.insert(pool.name.clone(), allowed.saturating_sub(disrupting));
    }
    out
}

/// The reasons nodes stay, recorded only when explaining.
struct Notes {
    on: bool,
    kept: BTreeMap<String, String>,
}

impl Notes {
    fn insert(&mut self, node: &str, why: impl FnOnce() -> String) {
        if self.on {
            self.kept.insert(node.to_owned(), why());
        }
    }

    fn insert_if_absent(&mut self, node: &str, why: impl FnOnce() -> String) {
        if self.on && !self.kept.contains_key(node) {
            self.kept.insert(node.to_owned(), why());
        }
    }
}

/// Decides one pass at `now`.
pub fn decide(input: &Input, now: Millis) -> Outcome {
    let mut kept = Notes { on: input.explain, kept: BTreeMap::new() };
    let default = PoolPolicy::default();
    // Eligibility shared by every method.
    let mut eligible: Vec<usize> = Vec::new();
    for (i, n) in input.nodes.iter().enumerate() {
        let Some(pool) = n.view.nodepool else { continue };
        let policy = input.policies.get(pool).unwrap_or(&default);
        let why = if n.disrupting {
            Some("already being disrupted".to_owned())
        } else if let Some(b) = &n.blocked {
            Some(b.clone())
        } else if !n.initialized {
            Some("not initialized yet".to_owned())
        } else {
            match policy.consolidate_after_ms {
                None => Some(format!("NodePool {pool} has consolidateAfter: Never")),
                Some(after) if now.saturating_sub(n.settled_since) < after => Some(format!(
                    "consolidateAfter not reached ({} s of {} s)",
                    now.saturating_sub(n.settled_since) / 1000,
                    after / 1000
                )),
                _ => None,
            }
        };
        match why {
            Some(why) => kept.insert(n.view.name, || why),
            None => eligible.push(i),
        }
    }

    // Expiry: the node that expired first is replaced (its pods planned elsewhere, new nodes as needed),
    // whatever it costs; do-not-disrupt still holds.
    let mut expired: Vec<usize> = (0..input.nodes.len())
        .filter(|&i| {
            let n = &input.nodes[i];
            n.view.nodepool.is_some()
                && n.expires_at.is_some_and(|t| now >= t)
                && !n.disrupting
                && n.blocked.is_none()
                && n.initialized
        })
        .collect();
    expired.sort_by_key(|&i| input.nodes[i].expires_at);
    for &i in &expired {
        match replace_expired(input, i) {
            Some(command) => return finish(input, kept, command),
            None => kept.insert(input.nodes[i].view.name, || "expired, but its pods fit nowhere".to_owned()),
        }
    }

    // 1. Emptiness.
    let mut left = allowances(input, Reason::Empty);
    let mut empty = Vec::new();
    for &i in &eligible {
        let n = &input.nodes[i];
        if !n.pods.is_empty() {
            continue;
        }
        let pool = n.view.nodepool.unwrap_or_default();
        let allowance = left.entry(pool.to_owned()).or_insert(0);
        if *allowance > 0 {
            *allowance -= 1;
            empty.push(i);
        } else {
            kept.insert(n.view.name, || format!("disruption budget of NodePool {pool} exhausted (Empty)"));
        }
    }
    if !empty.is_empty() {
        let savings = Price(empty.iter().map(|&i| input.nodes[i].price.0).sum());
        return finish(
            input,
            kept,
            Command {
                reason: Reason::Empty,
                nodes: empty.iter().map(|&i| input.nodes[i].view.name.to_owned()).collect(),
                replacements: Vec::new(),
                placements: Vec::new(),
                savings,
            },
        );
    }

    // 2. Drift: one drifted node per pass, within its pool's Drifted budget, replaced before it drains
    // (not held by consolidateAfter; do-not-disrupt still holds).
    if let Some(command) = drift(input, &mut kept) {
        return finish(input, kept, command);
    }

    if !input.consolidate {
        return Outcome { command: None, kept: kept.kept };
    }
    // Candidates for consolidation: pools that allow it, within budgets, cheapest to disrupt first.
    let left = allowances(input, Reason::Underutilized);
    let mut candidates: Vec<usize> = Vec::new();
    for &i in &eligible {
        let n = &input.nodes[i];
        let pool = n.view.nodepool.unwrap_or_default();
        let policy = input.policies.get(pool).unwrap_or(&default);
        if policy.policy == Policy::WhenEmpty {
            kept.insert(n.view.name, || format!("NodePool {pool} consolidates only empty nodes"));
        } else if left.get(pool).copied().unwrap_or(0) <= 0 {
            kept.insert(n.view.name, || {
                format!("disruption budget of NodePool {pool} exhausted (Underutilized)")
            });
        } else {
            candidates.push(i);
        }
    }
    candidates.sort_by(|&a, &b| {
        let (x, y) = (&input.nodes[a], &input.nodes[b]);
        (x.pods.len(), std::cmp::Reverse(x.price), x.view.name).cmp(&(
            y.pods.len(),
            std::cmp::Reverse(y.price),
            y.view.name,
        ))
    });

    let mut screen = Screen::new(input);

    // 3. Multi-node: the largest feasible prefix (within each pool's budget), by binary search.
    let mut prefix: Vec<usize> = Vec::new();
    let mut budget = left.clone();
    for &i in candidates.iter().take(MULTI_NODE_MAX) {
        let pool = input.nodes[i].view.nodepool.unwrap_or_default().to_owned();
        let b = budget.entry(pool).or_insert(0);
        if *b > 0 {
            *b -= 1;
            prefix.push(i);
        }
    }
    if prefix.len() >= 2 {
        let (mut lo, mut hi) = (2, prefix.len());
        let mut best: Option<Command> = None;
        while lo <= hi {
            let mid = (lo + hi) / 2;
            match screen.evaluate(input, &prefix[..mid]) {
                Some(c) => {
                    best = Some(c);
                    lo = mid + 1;
                }
                None => hi = mid - 1,
            }
        }
        if let Some(command) = best {
            return finish(input, kept, command);
        }
    }

    // 4. Single node.
    for &i in candidates.iter().take(SINGLE_NODE_TRIES) {
        if let Some(command) = screen.evaluate(input, &[i]) {
            return finish(input, kept, command);
        }
    }
    // 5. Repack: the same candidates planned afresh onto any new nodes, when that saves enough to be worth
    // the churn (and a per-dimension floor on what it must buy leaves room for that).
    if prefix.len() >= 2
        && screen.repack_may_save(input, &prefix)
        && let Some(command) = repack(input, &prefix)
    {
        return finish(input, kept, command);
    }
    for &i in &candidates {
        let why = if screen.tried.contains(&i) {
            "its pods fit nowhere cheaper"
        } else {
            "not checked this pass (the solver budget went to cheaper-to-disrupt nodes)"
        };
        kept.insert_if_absent(input.nodes[i].view.name, || why.to_owned());
    }
    Outcome { command: None, kept: kept.kept }
}

fn finish(input: &Input, mut kept: Notes, command: Command) -> Outcome {
    for n in &input.nodes {
        if n.view.nodepool.is_some() && !command.nodes.iter().any(|c| c == n.view.name) {
            kept.insert_if_absent(n.view.name, || "another disruption acts first this pass".into());
        }
    }
    for name in &command.nodes {
        kept.kept.remove(name);
    }
    Outcome { command: Some(command), kept: kept.kept }
}

/// Cheap necessary conditions checked before the solver runs, and the solver budget.
struct Screen {
    /// Room on each node (by index) that could take pods: not cordoned, not being disrupted.
    free: Vec<Option<Resources>>,
    /// Per pool: (price, allocatable) of every launchable offering, cheapest first.
    offerings: Vec<(Price, Resources)>,
    /// The sum of `free`.
    total_free: Resources,
    solves_left: usize,
    /// Single nodes checked and found worth nothing this pass.
    tried: BTreeSet<usize>,
}

impl Screen {
    fn new(input: &Input) -> Screen {
        let free: Vec<Option<Resources>> = input
            .nodes
            .iter()
            .map(|n| {
                (!n.view.cordoned && !n.disrupting)
                    .then(|| n.view.allocatable.minus(&n.view.requested).clamp_non_negative())
            })
            .collect();
        let mut total_free = Resources::new();
        for f in free.iter().flatten() {
            total_free.add_assign(f);
        }
        let mut offerings = Vec::new();
        for pool in &input.nodepools {
            let requirements = pool.node_requirements();
            for t in input.catalog.compatible(&requirements) {
                if let Some(price) = t
                    .offerings
                    .iter()
                    .filter(|o| o.available && o.is_compatible(&requirements))
                    .map(|o| o.price)
                    .min()
                {
                    offerings.push((price, t.allocatable()));
                }
            }
        }
        offerings.sort_by_key(|(p, _)| *p);
        Screen { free, offerings, total_free, solves_left: SOLVES_PER_DECISION, tried: BTreeSet::new() }
    }

    /// The room on the nodes other than `chosen`, in total.
    fn room_elsewhere(&self, chosen: &[usize]) -> Resources {
        let mut room = self.total_free.clone();
        for &i in chosen {
            if let Some(f) = &self.free[i] {
                room.sub_assign(f);
            }
        }
        room
    }

    /// Whether the pods could plausibly go: first-fit (largest first, by cpu) into the other nodes' room,
    /// or all of them onto one offering cheaper than what is removed.
    fn plausible(&self, chosen: &[usize], pods: &[&PodSpec], removed_cost: u64) -> bool {
        let mut total = Resources::new();
        for p in pods {
            total.add_assign(&p.requests);
        }
        if self
            .offerings
            .iter()
            .take_while(|(price, _)| price.0 < removed_cost)
            .any(|(_, alloc)| total.fits_in(alloc))
        {
            return true;
        }
        // The room left elsewhere must hold the pods in total before first fit is worth trying.
        if !total.fits_in(&self.room_elsewhere(chosen)) {
            return false;
        }
        // First fit, copying only the rooms it changes.
        let mut taken: BTreeMap<usize, Resources> = BTreeMap::new();
        let mut sorted: Vec<&&PodSpec> = pods.iter().collect();
        sorted.sort_by_key(|p| std::cmp::Reverse(p.requests.cpu_millis));
        sorted.iter().all(|p| {
            let found = self.free.iter().enumerate().find_map(|(i, f)| {
                let f = f.as_ref()?;
                if chosen.contains(&i) {
                    return None;
                }
                let room = taken.get(&i).unwrap_or(f);
                p.requests.fits_in(room).then_some(i)
            });
            match found {
                Some(i) => {
                    let room = taken.entry(i).or_insert_with(|| self.free[i].clone().unwrap_or_default());
                    room.sub_assign(&p.requests);
                    true
                }
                None => false,
            }
        })
    }

    /// Whether repacking `chosen` could save [`REPACK_MIN_SAVING`]: what the other nodes' room cannot
    /// take, in each dimension, bought at the lowest price per unit any offering has, must cost less.
    fn repack_may_save(&self, input: &Input, chosen: &[usize]) -> bool {
        let mut demand = Resources::new();
        for &i in chosen {
            for p in &input.nodes[i].pods {
                demand.add_assign(&p.requests);
            }
        }
        let room = self.room_elsewhere(chosen);
        let removed_cost: u64 = chosen.iter().map(|&i| input.nodes[i].price.0).sum();
        let floor = demand
            .iter()
            .map(|(dim, want)| {
                let short = (want - room.get(&dim)).max(0) as f64;
                let per_unit = self
                    .offerings
                    .iter()
                    .filter(|(_, alloc)| alloc.get(&dim) > 0)
                    .map(|(price, alloc)| price.0 as f64 / alloc.get(&dim) as f64)
                    .fold(f64::INFINITY, f64::min);
                if short > 0.0 { short * per_unit } else { 0.0 }
            })
            .fold(0.0, f64::max);
        floor < removed_cost as f64 * (1.0 - REPACK_MIN_SAVING)
    }

    fn evaluate(&mut self, input: &Input, chosen: &[usize]) -> Option<Command> {
        let pods: Vec<&PodSpec> = chosen.iter().flat_map(|&i| input.nodes[i].pods.iter().copied()).collect();
        let removed_cost: u64 = chosen.iter().map(|&i| input.nodes[i].price.0).sum();
        if self.solves_left == 0 {
            return None;
        }
        if let [single] = chosen {
            self.tried.insert(*single);
        }
        if !self.plausible(chosen, &pods, removed_cost) {
            return None;
        }
        self.solves_left -= 1;
        evaluate(input, chosen)
    }
}

/// The drifted node to replace this pass, if any: empty drifted nodes first, then the others, each within
/// its pool's Drifted budget and only when its pods have somewhere to go.
fn drift(input: &Input, kept: &mut Notes) -> Option<Command> {
    let mut drifted: Vec<usize> = (0..input.nodes.len())
        .filter(|&i| {
            let n = &input.nodes[i];
            n.view.nodepool.is_some()
                && n.drifted.is_some()
                && !n.disrupting
                && n.blocked.is_none()
                && n.initialized
        })
        .collect();
    drifted.sort_by_key(|&i| (!input.nodes[i].pods.is_empty(), input.nodes[i].view.name));
    let left = allowances(input, Reason::Drifted);
    for (k, &i) in drifted.iter().enumerate() {
        let n = &input.nodes[i];
        let pool = n.view.nodepool.unwrap_or_default();
        let why = n.drifted.as_deref().unwrap_or_default();
        if left.get(pool).copied().unwrap_or(0) <= 0 {
            kept.insert(n.view.name, || {
                format!(
                    "drifted ({why}), but the disruption budget of NodePool {pool} is exhausted (Drifted)"
                )
            });
            continue;
        }
        let (command, all_placed) = replace(input, i, Reason::Drifted);
        if all_placed {
            for &j in &drifted[k + 1..] {
                let other = &input.nodes[j];
                let why = other.drifted.as_deref().unwrap_or_default();
                kept.insert(other.view.name, || format!("drifted ({why}); replaced after {}", n.view.name));
            }
            return Some(command);
        }
        kept.insert(n.view.name, || format!("drifted ({why}), but its pods fit nowhere"));
    }
    None
}

/// The expired node's pods planned over the other nodes and as many new nodes as they need.
fn replace_expired(input: &Input, i: usize) -> Option<Command> {
    let (command, all_placed) = replace(input, i, Reason::Expired);
    all_placed.then_some(command)
}

/// The replacement of a node the cloud is taking away: its pods planned over the other nodes and as many
/// new nodes as they need, launched at once (there is no waiting for a warning's two minutes). Pods that
/// fit nowhere are left to provisioning once they are evicted. `None` when no such node is in the input.
pub fn replace_interrupted(input: &Input, node: &str) -> Option<Command> {
    let i = input.nodes.iter().position(|n| n.view.name == node)?;
    Some(replace(input, i, Reason::Interrupted).0)
}

/// The node's pods planned elsewhere, and whether every one of them found a place.
fn replace(input: &Input, i: usize, reason: Reason) -> (Command, bool) {
    let node = &input.nodes[i];
    let pods: Vec<PodSpec> = node.pods.iter().map(|p| (*p).clone()).collect();
    let others: Vec<NodeView> = input
        .nodes
        .iter()
        .enumerate()
        .filter(|(j, n)| *j != i && !n.disrupting)
        .map(|(_, n)| n.view.clone())
        .collect();
    let problem =
        provisioning::problem(pods, &others, &input.nodepools, &input.daemonsets, input.catalog.clone());
    let plan = solver::solve(&problem);
    let all_placed = plan.unschedulable.is_empty();
    let command = Command {
        reason,
        nodes: vec![node.view.name.to_owned()],
        placements: plan.placements.iter().map(|p| (p.pod.clone(), p.node.clone())).collect(),
        savings: Price(node.price.0.saturating_sub(plan.cost.0)),
        replacements: plan.new_nodes,
    };
    (command, all_placed)
}

/// Repacking `chosen`: their pods planned over the other nodes and as many new nodes as the plan wants,
/// worth it when every pod is placed and the saving is at least [`REPACK_MIN_SAVING`] of what is removed
/// (the plan's nodes carry their daemonset overhead, so more, smaller nodes are chosen only when they cost
/// less with it). Spot nodes replaced by spot need [`SPOT_TO_SPOT_MIN_ALTERNATIVES`] launch options each,
/// as in single-node consolidation.
fn repack(input: &Input, chosen: &[usize]) -> Option<Command> {
    let (problem, removed_cost) = replan(input, chosen);
    let plan = solver::solve(&problem);
    let saving = removed_cost.checked_sub(plan.cost.0)?;
    if !plan.unschedulable.is_empty() || (saving as f64) < REPACK_MIN_SAVING * removed_cost as f64 {
        return None;
    }
    let all_spot = chosen.iter().all(|&i| input.nodes[i].capacity_type == CapacityType::Spot);
    if all_spot
        && plan.new_nodes.iter().any(|n| {
            n.launch.capacity_type == CapacityType::Spot
                && n.alternatives.len() < SPOT_TO_SPOT_MIN_ALTERNATIVES
        })
    {
        return None;
    }
    Some(Command {
        reason: Reason::Underutilized,
        nodes: chosen.iter().map(|&i| input.nodes[i].view.name.to_owned()).collect(),
        placements: plan.placements.iter().map(|p| (p.pod.clone(), p.node.clone())).collect(),
        replacements: plan.new_nodes,
        savings: Price(saving),
    })
}

/// The problem of planning the pods of `chosen` over the other nodes (never onto nodes being disrupted) and
/// new nodes, and what `chosen` costs.
fn replan(input: &Input, chosen: &[usize]) -> (solver::Problem, u64) {
    let pods: Vec<PodSpec> =
        chosen.iter().flat_map(|&i| input.nodes[i].pods.iter().map(|p| (*p).clone())).collect();
    let removed_cost: u64 = chosen.iter().map(|&i| input.nodes[i].price.0).sum();
    let others: Vec<NodeView> = input
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !chosen.contains(i) && !n.disrupting)
        .map(|(_, n)| n.view.clone())
        .collect();
    let problem =
        provisioning::problem(pods, &others, &input.nodepools, &input.daemonsets, input.catalog.clone());
    (problem, removed_cost)
}

/// Whether removing `chosen` saves money: their pods re-planned over the other nodes (never onto nodes
/// being disrupted) fit with at most one new node, cheaper than what is removed.
fn evaluate(input: &Input, chosen: &[usize]) -> Option<Command> {
    let removed: Vec<&Candidate> = chosen.iter().map(|&i| &input.nodes[i]).collect();
    let (mut problem, removed_cost) = replan(input, chosen);
    let mut plan = solver::solve(&problem);
    if plan.unschedulable.is_empty() && plan.new_nodes.len() > 1 {
        // Replacements are one node (as Karpenter does, to limit churn): plan again with every NodePool
        // allowed a single new node, which packs the pods onto the one that holds them all, if any.
        for pool in &mut problem.nodepools {
            pool.remaining.nodes = Some(pool.remaining.nodes.unwrap_or(1).min(1));
        }
        plan = solver::solve(&problem);
    }
    if !plan.unschedulable.is_empty() || plan.new_nodes.len() > 1 || plan.cost.0 >= removed_cost {
        return None;
    }
    if let Some(new) = plan.new_nodes.first() {
        let all_spot = removed.iter().all(|n| n.capacity_type == CapacityType::Spot);
        if all_spot && new.launch.capacity_type == CapacityType::Spot {
            let cheaper = new.alternatives.iter().filter(|a| a.price.0 < removed_cost).count();
            if cheaper < SPOT_TO_SPOT_MIN_ALTERNATIVES {
                return None;
            }
        }
    }
    Some(Command {
        reason: Reason::Underutilized,
        nodes: removed.iter().map(|n| n.view.name.to_owned()).collect(),
        placements: plan.placements.iter().map(|p| (p.pod.clone(), p.node.clone())).collect(),
        replacements: plan.new_nodes,
        savings: Price(removed_cost - plan.cost.0),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cartwright_binpack::solver::NodePoolTemplate;
    use cartwright_binpack::{CatalogOptions, Resources, labels};

    use super::*;

    /// A node of the embedded catalog's `instance_type` with pods of `cpu_millis` each.
    struct Owned {
        name: String,
        labels: BTreeMap<String, String>,
        allocatable: Resources,
        capacity: Resources,
        pods: Vec<PodSpec>,
        price: Price,
        capacity_type: CapacityType,
    }

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap())
    }

    fn node(
        catalog: &Catalog,
        name: &str,
        instance_type: &str,
        capacity_type: CapacityType,
        pods: &[i64],
    ) -> Owned {
        let t = catalog.get(instance_type).unwrap();
        let offering =
            t.offerings.iter().find(|o| o.capacity_type == capacity_type && o.zone == "us-east-1a").unwrap();
        let mut labels = t.requirements.single_valued_labels();
        labels.insert(labels::NODEPOOL.into(), "default".into());
        labels.insert(labels::ZONE.into(), "us-east-1a".into());
        labels.insert(labels::CAPACITY_TYPE.into(), capacity_type.as_str().into());
        labels.insert(labels::HOSTNAME.into(), name.into());
        let pods = pods
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                PodSpec::new(
                    format!("{name}-pod-{i}"),
                    Resources::new().with_cpu_millis(cpu).with_memory_mib(cpu),
                )
            })
            .collect();
        Owned {
            name: name.into(),
            labels,
            allocatable: t.allocatable(),
            capacity: t.capacity.clone(),
            pods,
            price: offering.price,
            capacity_type,
        }
    }

    fn candidates(nodes: &[Owned]) -> Vec<Candidate<'_>> {
        nodes
            .iter()
            .map(|n| {
                let view = NodeView::with_pods(
                    &n.name,
                    &n.labels,
                    &n.allocatable,
                    &n.capacity,
                    &n.pods,
                    Some("default"),
                );
                Candidate::settled(view, n.price, n.capacity_type, n.pods.iter().collect())
            })
            .collect()
    }

    fn input<'a>(nodes: Vec<Candidate<'a>>, policy: PoolPolicy, catalog: Arc<Catalog>) -> Input<'a> {
        let mut pool = NodePoolTemplate::new("default");
        pool.requirements.add(
            cartwright_binpack::Requirement::new(
                labels::ZONE,
                cartwright_binpack::Operator::In,
                &["us-east-1a"],
            )
            .unwrap(),
        );
        Input {
            nodes,
            nodepools: vec![pool],
            policies: [("default".to_owned(), policy)].into(),
            daemonsets: vec![],
            catalog,
            consolidate: true,
            explain: true,
        }
    }

    /// [`input`] with the pool narrowed to on-demand m5 (sizes priced linearly).
    fn m5_on_demand<'a>(owned: &'a [Owned], policy: PoolPolicy, c: &Arc<Catalog>) -> Input<'a> {
        let mut input = input(candidates(owned), policy, c.clone());
        for (key, value) in [(labels::aws::INSTANCE_FAMILY, "m5"), (labels::CAPACITY_TYPE, "on-demand")] {
            input.nodepools[0].requirements.add(
                cartwright_binpack::Requirement::new(key, cartwright_binpack::Operator::In, &[value])
                    .unwrap(),
            );
        }
        input
    }

    #[test]
    fn empty_nodes_go_after_consolidate_after_within_the_budget() {
        let c = catalog();
        let owned = [
            node(&c, "a", "m5.large", CapacityType::OnDemand, &[]),
            node(&c, "b", "m5.large", CapacityType::OnDemand, &[]),
            node(&c, "c", "m5.large", CapacityType::OnDemand, &[]),
            node(&c, "busy", "m5.large", CapacityType::OnDemand, &[1500]),
        ];
        let policy = PoolPolicy {
            consolidate_after_ms: Some(30_000),
            budgets: vec![Budget { nodes: Nodes::Count(2), reasons: vec![], active: true }],
            ..PoolPolicy::default()
        };
        let early = decide(&input(candidates(&owned), policy.clone(), c.clone()), 10_000);
        assert_eq!(early.command, None);
        assert!(early.kept["a"].contains("consolidateAfter not reached"), "{:?}", early.kept);
        let out = decide(&input(candidates(&owned), policy, c), 40_000);
        let command = out.command.unwrap();
        assert_eq!(command.reason, Reason::Empty);
        assert_eq!(command.nodes, ["a", "b"], "two of three empty nodes: the budget allows 2");
        assert!(out.kept["c"].contains("budget"), "{:?}", out.kept);
    }

    #[test]
    fn do_not_disrupt_uninitialized_and_disrupting_nodes_are_never_chosen() {
        let c = catalog();
        let owned = [
            node(&c, "a", "m5.large", CapacityType::OnDemand, &[]),
            node(&c, "b", "m5.large", CapacityType::OnDemand, &[]),
            node(&c, "d", "m5.large", CapacityType::OnDemand, &[]),
        ];
        let mut nodes = candidates(&owned);
        nodes[0].blocked = Some("pod default/db-0 has karpenter.sh/do-not-disrupt".into());
        nodes[1].initialized = false;
        nodes[2].disrupting = true;
        let out = decide(&input(nodes, PoolPolicy::default(), c), 60_000);
        assert_eq!(out.command, None);
        assert!(out.kept["a"].contains("do-not-disrupt"));
        assert!(out.kept["b"].contains("not initialized"));
        assert!(out.kept["d"].contains("already being disrupted"));
    }

    #[test]
    fn underutilized_nodes_are_consolidated_together_onto_fewer_cheaper_nodes() {
        let c = catalog();
        // Four big nodes each running one small pod: one small node holds them all.
        let owned: Vec<Owned> = (0..4)
            .map(|i| node(&c, &format!("n{i}"), "m5.4xlarge", CapacityType::OnDemand, &[400]))
            .collect();
        let policy = PoolPolicy {
            budgets: vec![Budget { nodes: Nodes::Percent(100), reasons: vec![], active: true }],
            ..PoolPolicy::default()
        };
        let out = decide(&input(candidates(&owned), policy, c.clone()), 60_000);
        let command = out.command.expect("a consolidation");
        assert_eq!(command.reason, Reason::Underutilized);
        assert_eq!(command.nodes.len(), 4, "multi-node consolidation takes all four: {command:?}");
        assert_eq!(command.replacements.len(), 1, "onto one node: {command:?}");
        let removed: u64 = owned.iter().map(|n| n.price.0).sum();
        assert_eq!(command.savings.0, removed - command.replacements[0].launch.price.0);
        assert_eq!(command.replacements[0].pods.len(), 4);
    }

    #[test]
    fn a_lone_oversized_node_is_replaced_and_a_node_whose_pods_fit_elsewhere_is_deleted() {
        let c = catalog();
        let owned = [node(&c, "big", "m5.8xlarge", CapacityType::OnDemand, &[1000, 1000])];
        let out = decide(&input(candidates(&owned), PoolPolicy::default(), c.clone()), 60_000);
        let command = out.command.expect("a replacement");
        assert_eq!(command.nodes, ["big"]);
        assert_eq!(command.replacements.len(), 1);
        assert!(command.replacements[0].launch.price < owned[0].price);

        let owned = [
            node(&c, "roomy", "m5.2xlarge", CapacityType::OnDemand, &[1000]),
            node(&c, "small", "m5.large", CapacityType::OnDemand, &[500]),
        ];
        let out = decide(&input(candidates(&owned), PoolPolicy::default(), c), 60_000);
        let command = out.command.expect("a deletion");
        assert!(command.replacements.is_empty(), "{command:?}");
        assert_eq!(command.nodes, ["roomy"], "the dearer node goes; its pod fits on the small one");
        assert_eq!(command.savings, owned[0].price);
    }

    #[test]
    fn nodes_no_single_move_improves_are_repacked_onto_cheaper_new_nodes() {
        let c = catalog();
        // Three m5.4xlarge (16 vCPU) each running three 3.7-vCPU pods, in a pool of m5 only (prices linear
        // in size): no pod fits in another node's room, a smaller size holds no node's pods, and one node for
        // all nine would be an m5.12xlarge at the price of all three. Planned afresh, an m5.8xlarge takes
        // eight and an m5.xlarge the ninth: 2.25 nodes' worth instead of 3.
        let owned: Vec<Owned> = (0..3)
            .map(|i| node(&c, &format!("n{i}"), "m5.4xlarge", CapacityType::OnDemand, &[3700, 3700, 3700]))
            .collect();
        let policy = PoolPolicy {
            budgets: vec![Budget { nodes: Nodes::Percent(100), reasons: vec![], active: true }],
            ..PoolPolicy::default()
        };
        let input = m5_on_demand(&owned, policy, &c);
        let out = decide(&input, 60_000);
        let command = out.command.expect("a repack");
        assert_eq!(command.reason, Reason::Underutilized);
        assert_eq!(command.nodes, ["n0", "n1", "n2"]);
        let removed: u64 = owned.iter().map(|n| n.price.0).sum();
        let launched: u64 = command.replacements.iter().map(|r| r.launch.price.0).sum();
        assert!(command.replacements.len() > 1, "more than one replacement: {command:?}");
        assert_eq!(command.savings.0, removed - launched);
        assert!(launched as f64 <= removed as f64 * (1.0 - REPACK_MIN_SAVING), "{launched} vs {removed}");
        let moved: usize = command.replacements.iter().map(|r| r.pods.len()).sum();
        assert_eq!(moved + command.placements.len(), 9, "every pod has a place");

        // Once repacked, planning the same pods afresh saves nothing more: no churn loop.
        let repacked: Vec<Owned> = command
            .replacements
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut n = node(&c, &format!("r{i}"), &r.launch.instance_type, CapacityType::OnDemand, &[]);
                n.pods = r.pods.iter().map(|_| owned[0].pods[0].clone()).collect();
                for (k, p) in n.pods.iter_mut().enumerate() {
                    p.name = format!("r{i}-{k}");
                }
                n
            })
            .collect();
        let mut again = input.clone();
        again.nodes = candidates(&repacked);
        assert_eq!(decide(&again, 60_000).command, None);
    }

    #[test]
    fn repack_is_only_tried_when_what_it_must_buy_could_cost_less() {
        let c = catalog();
        // Two m5.xlarge nearly full of cpu: 7.8 vCPU at m5's price per vCPU is over 95 % of what they cost.
        let full: Vec<Owned> = (0..2)
            .map(|i| node(&c, &format!("f{i}"), "m5.xlarge", CapacityType::OnDemand, &[3900]))
            .collect();
        let input = m5_on_demand(&full, PoolPolicy::default(), &c);
        assert!(!Screen::new(&input).repack_may_save(&input, &[0, 1]));
        // Three m5.4xlarge at 70 %: 33.3 vCPU could cost 0.69 of them.
        let loose: Vec<Owned> = (0..3)
            .map(|i| node(&c, &format!("l{i}"), "m5.4xlarge", CapacityType::OnDemand, &[3700, 3700, 3700]))
            .collect();
        let input = m5_on_demand(&loose, PoolPolicy::default(), &c);
        assert!(Screen::new(&input).repack_may_save(&input, &[0, 1, 2]));
    }

    #[test]
    fn when_empty_pools_and_spot_without_enough_cheaper_offerings_keep_their_nodes() {
        let c = catalog();
        let owned = [node(&c, "big", "m5.8xlarge", CapacityType::OnDemand, &[1000])];
        let policy = PoolPolicy { policy: Policy::WhenEmpty, ..PoolPolicy::default() };
        let out = decide(&input(candidates(&owned), policy, c.clone()), 60_000);
        assert_eq!(out.command, None);
        assert!(out.kept["big"].contains("only empty"));

        // A spot node in a pool restricted to two instance types: too few cheaper spot offerings.
        let owned = [node(&c, "spot", "m5.2xlarge", CapacityType::Spot, &[500])];
        let mut input = input(candidates(&owned), PoolPolicy::default(), c);
        input.nodepools[0].requirements.add(
            cartwright_binpack::Requirement::new(
                labels::INSTANCE_TYPE,
                cartwright_binpack::Operator::In,
                &["m5.large", "m5.2xlarge"],
            )
            .unwrap(),
        );
        input.nodepools[0].requirements.add(
            cartwright_binpack::Requirement::new(
                labels::CAPACITY_TYPE,
                cartwright_binpack::Operator::In,
                &["spot"],
            )
            .unwrap(),
        );
        let out = decide(&input, 60_000);
        assert_eq!(out.command, None, "spot-to-spot needs {SPOT_TO_SPOT_MIN_ALTERNATIVES} cheaper offerings");
        assert!(out.kept["spot"].contains("fit nowhere cheaper"));
    }

    #[test]
    fn budgets_parse_counts_percentages_reasons_and_cron_windows() {
        // 2026-11-24 10:00 UTC is inside "0 9 * * *" for 8h, and 20:00 is not.
        let ten = chrono::DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap().timestamp_millis()
            as Millis;
        let twenty = ten + 10 * 3_600_000;
        let b = Budget::parse("0", &["Underutilized".into()], Some("0 9 * * *"), Some("8h"), ten).unwrap();
        assert!(b.active);
        assert_eq!(b.reasons, [Reason::Underutilized]);
        assert!(!Budget::parse("0", &[], Some("0 9 * * *"), Some("8h"), twenty).unwrap().active);
        assert_eq!(Budget::parse("10%", &[], None, None, ten).unwrap().allowed(25), 3, "rounded up");
        assert!(Budget::parse("x", &[], None, None, ten).unwrap_err().contains("nodes"));
        assert!(
            Budget::parse("1", &["Sometimes".into()], None, None, ten).unwrap_err().contains("Sometimes")
        );
        assert!(Budget::parse("1", &[], Some("0 9 * * *"), None, ten).is_err());
        assert_eq!(parse_duration("1h30m"), Some(5_400_000));
        assert_eq!(parse_duration("0s"), Some(0));
        assert_eq!(parse_duration("5d"), None);
    }

    #[test]
    fn an_expired_node_is_replaced_even_when_it_saves_nothing_unless_do_not_disrupt() {
        let c = catalog();
        let owned = [node(&c, "old", "m5.large", CapacityType::OnDemand, &[1500])];
        let mut nodes = candidates(&owned);
        nodes[0].expires_at = Some(50_000);
        let policy = PoolPolicy { consolidate_after_ms: None, ..PoolPolicy::default() };
        let out = decide(&input(nodes.clone(), policy.clone(), c.clone()), 40_000);
        assert_eq!(out.command, None, "not expired yet (and consolidateAfter: Never)");
        let out = decide(&input(nodes.clone(), policy.clone(), c.clone()), 60_000);
        let command = out.command.expect("an expiry");
        assert_eq!(command.reason, Reason::Expired);
        assert_eq!(command.nodes, ["old"]);
        assert_eq!(command.replacements.len(), 1, "its pod needs a new node: {command:?}");
        nodes[0].blocked = Some("pod default/x has a do-not-disrupt annotation".into());
        let out = decide(&input(nodes, policy, c), 60_000);
        assert_eq!(out.command, None);
    }

    #[test]
    fn an_interrupted_node_is_replaced_whatever_holds_it() {
        let c = catalog();
        let owned = [
            node(&c, "spot", "m5.large", CapacityType::Spot, &[1500]),
            node(&c, "roomy", "m5.xlarge", CapacityType::OnDemand, &[500]),
        ];
        let mut nodes = candidates(&owned);
        nodes[0].blocked = Some("pod default/x has a do-not-disrupt annotation".into());
        let policy = PoolPolicy { consolidate_after_ms: None, ..PoolPolicy::default() };
        let input = input(nodes, policy, c);
        let command = replace_interrupted(&input, "spot").expect("the node is in the input");
        assert_eq!(command.reason, Reason::Interrupted);
        assert_eq!(command.nodes, ["spot"]);
        // Its 1.5-CPU pod fits on the roomy node: nothing new to launch.
        assert!(command.replacements.is_empty(), "{command:?}");
        assert_eq!(command.placements.len(), 1);
        assert_eq!(command.placements[0].1, "roomy");
        assert!(replace_interrupted(&input, "gone").is_none());
    }

    #[test]
    fn a_drifted_node_is_replaced_within_the_drift_budget_unless_do_not_disrupt() {
        let c = catalog();
        let owned = [
            node(&c, "a-drifted", "m5.large", CapacityType::OnDemand, &[1500]),
            node(&c, "b-drifted", "m5.large", CapacityType::OnDemand, &[1500]),
            node(&c, "c-current", "m5.large", CapacityType::OnDemand, &[1500]),
        ];
        let mut nodes = candidates(&owned);
        nodes[0].drifted = Some("NodePool default changed (template hash)".into());
        nodes[1].drifted = Some("AMI ami-1 is no longer selected".into());
        // consolidateAfter: Never holds consolidation, not drift.
        let policy = PoolPolicy { consolidate_after_ms: None, ..PoolPolicy::default() };
        let out = decide(&input(nodes.clone(), policy.clone(), c.clone()), 1_000);
        let command = out.command.expect("a drift replacement");
        assert_eq!(command.reason, Reason::Drifted);
        assert_eq!(command.nodes, ["a-drifted"], "one node per pass");
        assert_eq!(command.replacements.len(), 1, "its pod needs a new node first: {command:?}");
        assert_eq!(
            out.kept.get("b-drifted").map(String::as_str),
            Some("drifted (AMI ami-1 is no longer selected); replaced after a-drifted")
        );

        // A budget that excludes drift stops it, and the node says why.
        let no_drift = PoolPolicy {
            budgets: vec![Budget::parse("0", &["Drifted".into()], None, None, 0).unwrap()],
            ..policy.clone()
        };
        let out = decide(&input(nodes.clone(), no_drift, c.clone()), 1_000);
        assert_eq!(out.command, None);
        let why = &out.kept["a-drifted"];
        assert!(why.contains("drifted (NodePool default changed") && why.contains("budget"), "{why}");

        // The first in flight uses the budget: 10 % of 3 nodes is one at a time.
        nodes[0].disrupting = true;
        let out = decide(&input(nodes.clone(), policy.clone(), c.clone()), 1_000);
        assert_eq!(out.command, None, "{:?}", out.kept);
        assert!(out.kept["b-drifted"].contains("budget"), "{:?}", out.kept);

        // do-not-disrupt holds drift off.
        nodes[0].disrupting = false;
        nodes[0].blocked = Some("pod default/x has a do-not-disrupt annotation".into());
        let out = decide(&input(nodes, policy, c), 1_000);
        let command = out.command.expect("the other drifted node");
        assert_eq!(command.nodes, ["b-drifted"]);
    }

    #[test]
    fn an_empty_drifted_node_goes_first_and_needs_no_replacement() {
        let c = catalog();
        let owned = [
            node(&c, "a-busy", "m5.large", CapacityType::OnDemand, &[1500]),
            node(&c, "b-empty", "m5.large", CapacityType::OnDemand, &[]),
        ];
        let mut nodes = candidates(&owned);
        nodes[0].drifted = Some("NodePool default changed".into());
        nodes[1].drifted = Some("NodePool default changed".into());
        // Not yet empty long enough for emptiness: drift acts on it.
        let policy = PoolPolicy { consolidate_after_ms: Some(600_000), ..PoolPolicy::default() };
        let out = decide(&input(nodes, policy, c), 1_000);
        let command = out.command.expect("drift");
        assert_eq!(
            (command.reason, command.nodes.as_slice()),
            (Reason::Drifted, ["b-empty".to_owned()].as_slice())
        );
        assert!(command.replacements.is_empty());
    }
}
