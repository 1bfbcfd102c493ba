//! The pattern (Gilmore–Gomory) formulation by column generation: a much tighter lower bound than the
//! aggregate LP, and a fractional plan whose rounding can improve the greedy's.
//!
//! A *bin* is a (NodePool, instance type, set of admitted offerings) at its cheapest price; a *column* is a
//! bin with a count of pods per class that fits it. The restricted master LP (HiGHS) covers each class's
//! demand with columns at least cost; its duals price the classes, and a bounded multi-dimensional knapsack
//! (branch and bound, native) finds for every bin the most valuable pattern. Columns whose value exceeds
//! their price join the master; the loop ends when none does (the LP is optimal) or the iteration budget is
//! spent. The Farley bound `z_master / max_bin(value / price)` is valid at every iteration.
//!
//! Budgets are counts (iterations, knapsack nodes), never time, so results are deterministic.
//! The bound ignores NodePool limits, existing nodes and anti-affinity between different classes (a
//! relaxation, so still a bound; per-node caps of a class are modelled); callers use it only when there are no
//! existing nodes.

use good_lp::solvers::highs::highs;
use good_lp::{
    Constraint, DualValues, Expression, ProblemVariables, Solution, SolutionWithDual, SolverModel, Variable,
    constraint, variable,
};

use crate::instance_type::Price;
use crate::resources::Resources;

use super::index::{Index, fit_count};

/// Column-generation budgets.
const MAX_ITERATIONS: usize = 60;
const COLUMNS_PER_ITERATION: usize = 40;
/// Stop when the gap between the master and the bound shrinks by less than this fraction of the master over
/// this many rounds, or is below the target.
const STALL_ROUNDS: usize = 4;
const STALL_FRACTION: f64 = 0.002;
const GAP_TARGET: f64 = 0.002;
/// Weight of the stabilisation centre in the duals priced (Wentges smoothing).
const SMOOTHING: f64 = 0.5;
/// Knapsack search budget per bin and round.
const KNAPSACK_NODES: usize = 2_000;
/// Best-first nodes per bin for the final bound, where the depth-first search ran out of budget.
const TIGHTEN_NODES: usize = 20_000;
/// Pricing work allowed per round, in bins × classes: beyond it (hundreds of instance types times
/// thousands of distinct pod shapes) a round costs seconds, so column generation is not run and the
/// aggregate bound and the greedy plan stand.
pub(crate) const MAX_PRICING_WORK: usize = 800_000;

/// A (pool, type, offering set) a node can be, at its cheapest admitted price.
#[derive(Debug, Clone)]
pub(crate) struct Bin {
    pub pool: usize,
    pub pos: usize,
    pub price: Price,
    /// Per class: whether a pod of the class may go on this bin.
    pub admits: Vec<bool>,
    pub usable: Resources,
}

/// A pattern: a bin and how many pods of each class it holds.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub bin: usize,
    pub counts: Vec<(usize, i64)>,
}

/// What column generation found.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub bins: Vec<Bin>,
    pub columns: Vec<Column>,
    /// A valid lower bound on any plan placing `demand` on new nodes.
    pub bound: Price,
    /// Whether the master LP was proven optimal (no improving column left).
    pub converged: bool,
    /// The last master LP's solution: how many nodes of each column (fractional).
    pub lambda: Vec<f64>,
}

/// The bins of the problem: one per (pool, type, distinct admitted-class set), dominated ones removed. A class
/// may use any NodePool that admits it (weight priority is for the plan, not the bound).
pub(crate) fn bins(index: &Index) -> Vec<Bin> {
    let mut all = Vec::new();
    for (p, pool) in index.pools.iter().enumerate() {
        for (pos, pt) in pool.types.iter().enumerate() {
            let t = index.instance_type(pt);
            let mut by_mask: Vec<(Vec<bool>, Price)> = Vec::new();
            for &o in &pt.offerings {
                let offering = &t.offerings[o];
                let admits: Vec<bool> = index
                    .classes
                    .iter()
                    .map(|c| {
                        c.per_pool[p]
                            .as_ref()
                            .is_ok_and(|cp| cp.admits[pos] && offering.is_compatible(&cp.requirements))
                    })
                    .collect();
                if !admits.iter().any(|&a| a) {
                    continue;
                }
                match by_mask.iter_mut().find(|(m, _)| *m == admits) {
                    Some(entry) => entry.1 = entry.1.min(offering.price),
                    None => by_mask.push((admits, offering.price)),
                }
            }
            for (admits, price) in by_mask {
                all.push(Bin { pool: p, pos, price, admits, usable: pt.usable.clone() });
            }
        }
    }
    // Cheapest first; a bin is dominated by a cheaper-or-equal one with at least its room and classes.
    all.sort_by(|a, b| a.price.cmp(&b.price).then(a.pool.cmp(&b.pool)).then(a.pos.cmp(&b.pos)));
    let mut kept: Vec<Bin> = Vec::new();
    for bin in all {
        let dominated = kept.iter().any(|k| {
            k.price <= bin.price
                && bin.usable.fits_in(&k.usable)
                && bin.admits.iter().zip(&k.admits).all(|(&mine, &theirs)| !mine || theirs)
        });
        if !dominated {
            kept.push(bin);
        }
    }
    kept
}

/// Runs column generation for `demand[i]` pods of each class on new nodes.
pub(crate) fn generate(index: &Index, demand: &[i64]) -> Result<Outcome, String> {
    let bins = bins(index);
    let classes: Vec<usize> = (0..demand.len()).filter(|&i| demand[i] > 0).collect();
    if bins.len() * classes.len() > MAX_PRICING_WORK {
        return Err(format!(
            "pricing {} bins × {} classes per round is beyond the budget of {MAX_PRICING_WORK}",
            bins.len(),
            classes.len()
        ));
    }
    // Start with one column per class: as many of its pods as fit its cheapest bin.
    let mut columns: Vec<Column> = Vec::new();
    for &i in &classes {
        let w = &index.classes[i].requests;
        let best =
            bins.iter().enumerate().filter(|(_, b)| b.admits[i] && fit_count(&b.usable, w) > 0).min_by(
                |(_, a), (_, b)| {
                    let per_pod =
                        |bin: &Bin| bin.price.0 as f64 / fit_count(&bin.usable, w).min(demand[i]) as f64;
                    per_pod(a).total_cmp(&per_pod(b))
                },
            );
        let Some((k, bin)) = best else { return Err(format!("class {i} fits no bin")) };
        let per_node = fit_count(&bin.usable, w).min(index.classes[i].per_node_cap);
        columns.push(Column { bin: k, counts: vec![(i, per_node.min(demand[i]))] });
    }

    let mut bound = 0.0f64;
    let mut converged = false;
    let mut lambda = Vec::new();
    let mut gaps: Vec<f64> = Vec::new();
    // The duals with the best bound so far, and that bound: the stabilisation centre.
    let mut center: Option<(Vec<f64>, f64)> = None;
    for _ in 0..MAX_ITERATIONS {
        let (objective, duals, primal) = master_lp(&bins, &columns, demand, &classes)?;
        lambda = primal;
        // Price at duals smoothed toward the best dual point so far (Wentges): it damps the oscillation
        // of the master's duals that makes column generation tail off. When the smoothed duals find no
        // column the master's own duals would take (a mispricing), price again at the master's duals.
        let mut alpha = if center.is_some() { SMOOTHING } else { 0.0 };
        let round = loop {
            let separation: Vec<f64> = match &center {
                Some((c, _)) if alpha > 0.0 => {
                    c.iter().zip(&duals).map(|(&c, &d)| alpha * c + (1.0 - alpha) * d).collect()
                }
                _ => duals.clone(),
            };
            let round = price_bins(index, &bins, &separation, &duals, demand, 0);
            // Farley at any non-negative duals: every pattern's value is at most best_ratio × its price, so
            // the duals scaled by 1 / best_ratio are feasible, worth Σ π_i d_i / best_ratio.
            if round.best_ratio > 0.0 {
                let worth: f64 = classes.iter().map(|&i| separation[i] * demand[i] as f64).sum();
                let lower = worth / round.best_ratio.max(1.0);
                bound = bound.max(lower);
                if center.as_ref().is_none_or(|(_, b)| lower > *b) {
                    center = Some((separation, lower));
                }
            }
            if !round.improving.is_empty() || alpha == 0.0 {
                break round;
            }
            alpha = 0.0;
        };
        tracing::debug!(
            round = gaps.len() + 1,
            master = objective,
            bound,
            smoothing = alpha,
            best_ratio = round.best_ratio,
            found_ratio = round.found_ratio,
            cut_short = round.cut_short,
            improving = round.improving.len(),
            columns = columns.len(),
            "column generation round"
        );
        // Optimal only when no bin can beat its price at the master's duals, by the knapsacks' upper bounds
        // (a knapsack cut short by its budget may hide a better pattern), or when the bound meets the master.
        if alpha == 0.0 && round.best_ratio <= 1.0 + 1e-9 {
            bound = bound.max(objective);
            converged = true;
            break;
        }
        if bound >= objective * (1.0 - 1e-9) {
            converged = true;
            break;
        }
        // Close enough, or tailing off: the gap between the master and the bound shrank by less than
        // STALL_FRACTION of the master over the last STALL_ROUNDS rounds. What is left is worth less than the
        // rounds it would take; the bound stays valid.
        let gap = objective - bound;
        gaps.push(gap);
        if gap <= objective * GAP_TARGET
            || (gaps.len() > STALL_ROUNDS
                && gaps[gaps.len() - 1 - STALL_ROUNDS] - gap < objective * STALL_FRACTION)
        {
            break;
        }
        let mut improving = round.improving;
        if improving.is_empty() {
            break;
        }
        improving.sort_by(|a, b| a.0.total_cmp(&b.0));
        columns.extend(improving.into_iter().take(COLUMNS_PER_ITERATION).map(|(_, c)| c));
    }
    // Stopped early: price once more at the best dual point, searching the knapsacks that ran out of budget
    // further (best-first). Their loose upper bounds are what keeps the Farley bound below the master.
    if !converged && let Some((center, _)) = &center {
        let round = price_bins(index, &bins, center, center, demand, TIGHTEN_NODES);
        if round.best_ratio > 0.0 {
            let worth: f64 = classes.iter().map(|&i| center[i] * demand[i] as f64).sum();
            bound = bound.max(worth / round.best_ratio.max(1.0));
        }
        tracing::debug!(bound, best_ratio = round.best_ratio, cut_short = round.cut_short, "bound tightened");
    }
    let nanos = (bound.max(0.0) * Price::NANOS_PER_USD as f64 * (1.0 - 1e-6)).floor();
    Ok(Outcome { bins, columns, bound: Price(nanos as u64), converged, lambda })
}

/// One pricing round over every bin.
struct Pricing {
    /// Patterns with a negative reduced cost at the master's duals: (reduced cost, column).
    improving: Vec<(f64, Column)>,
    /// max over bins of (an upper bound on the best pattern's value at the separation duals) / price.
    best_ratio: f64,
    /// max over bins of (the best pattern found) / price, at the separation duals.
    found_ratio: f64,
    /// Bins whose knapsack ran out of budget before proving its pattern best.
    cut_short: usize,
}

/// Prices every bin at `separation` duals; the columns found are kept when they improve the master at
/// `master` duals.
fn price_bins(
    index: &Index,
    bins: &[Bin],
    separation: &[f64],
    master: &[f64],
    demand: &[i64],
    tighten: usize,
) -> Pricing {
    let mut out = Pricing { improving: Vec::new(), best_ratio: 0.0, found_ratio: 0.0, cut_short: 0 };
    for (k, bin) in bins.iter().enumerate() {
        let price = bin.price.usd();
        let (pattern, value, upper) =
            knapsack(index, bin, separation, demand, price, KNAPSACK_NODES, tighten);
        let reduced = price - pattern.iter().map(|&(i, n)| master[i] * n as f64).sum::<f64>();
        if reduced < -price * 1e-9 && !pattern.is_empty() {
            out.improving.push((reduced, Column { bin: k, counts: pattern }));
        }
        if price > 0.0 {
            out.best_ratio = out.best_ratio.max(upper / price);
            out.found_ratio = out.found_ratio.max(value / price);
            if upper > value.max(price) * (1.0 + 1e-9) {
                out.cut_short += 1;
            }
        }
    }
    out
}

/// Solves the restricted master LP: its optimum, the duals per class, and the columns' values.
fn master_lp(
    bins: &[Bin],
    columns: &[Column],
    demand: &[i64],
    classes: &[usize],
) -> Result<(f64, Vec<f64>, Vec<f64>), String> {
    let mut vars = ProblemVariables::new();
    let lambdas: Vec<Variable> = columns.iter().map(|_| vars.add(variable().min(0.0))).collect();
    let objective: Expression = columns.iter().zip(&lambdas).map(|(c, &x)| x * bins[c.bin].price.usd()).sum();
    let mut model = vars.minimise(objective.clone()).using(highs);
    let mut refs = Vec::new();
    for &i in classes {
        let cover: Expression = columns
            .iter()
            .zip(&lambdas)
            .filter_map(|(c, &x)| c.counts.iter().find(|(ci, _)| *ci == i).map(|&(_, n)| x * n as f64))
            .sum();
        let row: Constraint = constraint!(cover >= demand[i] as f64);
        refs.push((i, model.add_constraint(row)));
    }
    let mut solution = model.solve().map_err(|e| format!("master LP: {e}"))?;
    let value = solution.eval(&objective);
    let primal = lambdas.iter().map(|&x| solution.value(x)).collect();
    let duals = solution.compute_dual();
    let mut out = vec![0.0; demand.len()];
    for (i, r) in refs {
        out[i] = duals.dual(r).abs();
    }
    Ok((value, out, primal))
}

/// The most valuable pattern for a bin: max Σ π_i a_i subject to the bin's room, 0 ≤ a_i ≤ demand_i.
/// Only patterns worth more than `floor` (the bin's price) matter, so subtrees that cannot beat it are cut.
/// Returns the best pattern found, its value, and an upper bound on the optimum that is exact whenever
/// the optimum exceeds `floor` and the search finished within its node budget. When the depth-first search
/// runs out of budget, up to `tighten` more nodes are spent best-first to lower that upper bound.
fn knapsack(
    index: &Index,
    bin: &Bin,
    duals: &[f64],
    demand: &[i64],
    floor: f64,
    budget: usize,
    tighten: usize,
) -> (Vec<(usize, i64)>, f64, f64) {
    let dims: Vec<_> = index.dims.iter().filter(|d| bin.usable.get(d) > 0).cloned().collect();
    let capacity: Vec<i64> = dims.iter().map(|d| bin.usable.get(d)).collect();
    let mut items: Vec<Item> = Vec::new();
    for (i, class) in index.classes.iter().enumerate() {
        if demand[i] == 0 || duals[i] <= 1e-12 || !bin.admits[i] {
            continue;
        }
        let cap = fit_count(&bin.usable, &class.requests).min(demand[i]).min(class.per_node_cap);
        if cap == 0 {
            continue;
        }
        let weights: Vec<i64> = dims.iter().map(|d| class.requests.get(d)).collect();
        items.push(Item { class: i, value: duals[i], weights, cap, size: 0.0 });
    }
    pack(items, &capacity, floor, budget, tighten)
}

/// The knapsack search over `items` (their `size` is set here) in a bin of `capacity`: see [`knapsack`].
fn pack(
    mut items: Vec<Item>,
    capacity: &[i64],
    floor: f64,
    budget: usize,
    tighten: usize,
) -> (Vec<(usize, i64)>, f64, f64) {
    if items.is_empty() {
        return (vec![], 0.0, 0.0);
    }
    let capacity = capacity.to_vec();
    // The surrogate constraint: the dimensions' shares of the bin, weighted by `theta` (chosen to make the
    // root bound as tight as it gets), summed. Any non-negative weights give a valid bound.
    let theta = surrogate_weights(&items, &capacity);
    for item in &mut items {
        item.size = surrogate_size(&item.weights, &capacity, &theta);
    }
    items.sort_by(|a, b| (b.value / b.size).total_cmp(&(a.value / a.size)).then(a.class.cmp(&b.class)));
    let n = items.len();
    // Suffix maxima of value per unit of each dimension (infinite where an item needs none of it), for a
    // second cheap bound.
    let mut density = vec![vec![0.0f64; capacity.len()]; n + 1];
    for j in (0..n).rev() {
        let (head, tail) = density.split_at_mut(j + 1);
        for ((slot, next), &w) in head[j].iter_mut().zip(&tail[0]).zip(&items[j].weights) {
            let own = if w > 0 { items[j].value / w as f64 } else { f64::INFINITY };
            *slot = next.max(own);
        }
    }
    let mut search = Search {
        items: &items,
        density: &density,
        capacity: &capacity,
        theta: &theta,
        floor,
        budget,
        best: 0.0,
        best_counts: vec![0; n],
        counts: vec![0; n],
        nodes: 0,
        cut_off: 0.0,
    };
    let mut room = capacity.clone();
    let root = search.optimistic(0, &room, 0.0);
    if root > floor * (1.0 + 1e-12) {
        search.dfs(0, &mut room, 0.0);
    }
    // Everything not explored was bounded by `floor`, by `best`, or (budget) by `cut_off`.
    if search.cut_off > search.best.max(floor) && tighten > 0 {
        search.cut_off = search.best_first(root, tighten);
    }
    let upper = search.best.max(search.cut_off).max(floor.min(root));
    let pattern = search
        .best_counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(j, &c)| (items[j].class, c))
        .collect();
    (pattern, search.best, upper)
}

struct Item {
    class: usize,
    value: f64,
    weights: Vec<i64>,
    cap: i64,
    size: f64,
}

struct Search<'a> {
    items: &'a [Item],
    density: &'a [Vec<f64>],
    capacity: &'a [i64],
    theta: &'a [f64],
    floor: f64,
    budget: usize,
    best: f64,
    best_counts: Vec<i64>,
    counts: Vec<i64>,
    nodes: usize,
    /// The largest optimistic bound of a subtree abandoned for lack of budget.
    cut_off: f64,
}

impl Search<'_> {
    /// An upper bound on what items `j..` can add to `value` in `room`: the smaller of the surrogate
    /// (Dantzig) bound over the weighted-share constraint and the per-dimension density bounds.
    fn optimistic(&self, j: usize, room: &[i64], value: f64) -> f64 {
        self.optimistic_after(j, 0, room, value)
    }

    /// [`Search::optimistic`] when `taken` copies of item `j` are already in `value` and `room`.
    fn optimistic_after(&self, j: usize, taken: i64, room: &[i64], value: f64) -> f64 {
        let left = surrogate_size(room, self.capacity, self.theta);
        let caps = self.items[j..]
            .iter()
            .enumerate()
            .map(|(k, item)| if k == 0 { item.cap - taken } else { item.cap });
        let surrogate =
            dantzig(self.items[j..].iter().zip(caps).map(|(item, cap)| (item.value, item.size, cap)), left);
        let per_dim =
            room.iter()
                .enumerate()
                // A dimension some remaining item does not use bounds nothing.
                .map(|(d, &r)| {
                    if self.density[j][d].is_finite() { r as f64 * self.density[j][d] } else { f64::INFINITY }
                })
                .fold(f64::INFINITY, f64::min);
        value + surrogate.min(per_dim)
    }

    /// Best-first search from the root for up to `budget` nodes, pruning by the incumbent found depth-first:
    /// returns an upper bound on what the unexplored part of the tree can hold (at most `root`), lower than
    /// the depth-first search's because the most promising open node is always the one expanded. Node
    /// `(j, taken)` stands for the patterns with items before `j` as fixed and at least `taken` copies of
    /// item `j`; its children take one more copy, or fix item `j` at `taken` and move on.
    fn best_first(&self, root: f64, budget: usize) -> f64 {
        struct Open {
            bound: f64,
            j: usize,
            taken: i64,
            value: f64,
            room: Vec<i64>,
        }
        impl PartialEq for Open {
            fn eq(&self, other: &Self) -> bool {
                self.bound.total_cmp(&other.bound).is_eq()
            }
        }
        impl Eq for Open {}
        impl PartialOrd for Open {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
        impl Ord for Open {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.bound.total_cmp(&other.bound)
            }
        }
        let n = self.items.len();
        let mut incumbent = self.best;
        let mut heap = std::collections::BinaryHeap::new();
        heap.push(Open { bound: root, j: 0, taken: 0, value: 0.0, room: self.capacity.to_vec() });
        for _ in 0..budget {
            let Some(node) = heap.pop() else { return incumbent };
            if node.bound <= incumbent.max(self.floor) * (1.0 + 1e-12) {
                return incumbent; // nothing open can beat what is known
            }
            if node.j == n {
                continue;
            }
            let item = &self.items[node.j];
            // One more copy of item j.
            if node.taken < item.cap && item.weights.iter().zip(&node.room).all(|(&w, &r)| w <= r) {
                let room: Vec<i64> = node.room.iter().zip(&item.weights).map(|(&r, &w)| r - w).collect();
                let value = node.value + item.value;
                // A feasible pattern; its counts are not kept, its value only prunes.
                incumbent = incumbent.max(value);
                let bound = self.optimistic_after(node.j, node.taken + 1, &room, value);
                if bound > incumbent.max(self.floor) * (1.0 + 1e-12) {
                    heap.push(Open { bound, j: node.j, taken: node.taken + 1, value, room });
                }
            }
            // Item j fixed at `taken`.
            let bound = self.optimistic(node.j + 1, &node.room, node.value);
            if bound > incumbent.max(self.floor) * (1.0 + 1e-12) {
                heap.push(Open { bound, j: node.j + 1, taken: 0, value: node.value, room: node.room });
            }
        }
        heap.peek().map_or(incumbent, |open| open.bound.min(root).max(incumbent))
    }

    fn dfs(&mut self, j: usize, room: &mut [i64], value: f64) {
        if value > self.best {
            self.best = value;
            self.best_counts.clone_from(&self.counts);
        }
        if j == self.items.len() {
            return;
        }
        let bound = self.optimistic(j, room, value);
        if bound <= self.best.max(self.floor) * (1.0 + 1e-12) {
            return;
        }
        self.nodes += 1;
        if self.nodes >= self.budget {
            self.cut_off = self.cut_off.max(bound);
            return;
        }
        let item = &self.items[j];
        let mut most = item.cap;
        for (d, &w) in item.weights.iter().enumerate() {
            if w > 0 {
                most = most.min(room[d] / w);
            }
        }
        // Most copies first: the first path is the greedy fill.
        for k in (0..=most).rev() {
            for (d, &w) in item.weights.iter().enumerate() {
                room[d] -= w * k;
            }
            self.counts[j] = k;
            self.dfs(j + 1, room, value + item.value * k as f64);
            for (d, &w) in item.weights.iter().enumerate() {
                room[d] += w * k;
            }
            self.counts[j] = 0;
            if self.nodes >= self.budget {
                // Out of budget: what this loop would still explore is within this node's bound.
                self.cut_off = self.cut_off.max(bound);
                return;
            }
        }
    }
}

/// The weighted share of a bin that `amounts` (one per dimension) take.
fn surrogate_size(amounts: &[i64], capacity: &[i64], theta: &[f64]) -> f64 {
    amounts
        .iter()
        .zip(capacity)
        .zip(theta)
        .map(|((&w, &c), &t)| t * w as f64 / c as f64)
        .sum::<f64>()
        .max(1e-12)
}

/// The Dantzig bound of a one-constraint bounded knapsack: items `(value, size, copies)` taken whole by value
/// per size (the iterator must be in that order), the last one fractionally, until `room` is used.
fn dantzig(items: impl Iterator<Item = (f64, f64, i64)>, mut room: f64) -> f64 {
    let mut total = 0.0;
    for (value, size, copies) in items {
        if room <= 0.0 {
            break;
        }
        let whole = copies as f64 * size;
        if whole <= room {
            total += copies as f64 * value;
            room -= whole;
        } else {
            total += value * room / size;
            room = 0.0;
        }
    }
    total
}

/// The surrogate bound of an empty bin with dimension weights `theta` (summing to 1).
fn root_surrogate(items: &[Item], capacity: &[i64], theta: &[f64]) -> f64 {
    let mut scored: Vec<(f64, f64, i64)> =
        items.iter().map(|i| (i.value, surrogate_size(&i.weights, capacity, theta), i.cap)).collect();
    scored.sort_by(|a, b| (b.0 / b.1).total_cmp(&(a.0 / a.1)));
    dantzig(scored.into_iter(), surrogate_size(capacity, capacity, theta))
}

/// Dimension weights (on the simplex) that make the root surrogate bound small: a pattern search that moves
/// weight between pairs of dimensions in shrinking steps. The surrogate dual is quasi-convex, so this
/// approaches the best single-constraint relaxation; equal weights are the start and the fallback.
fn surrogate_weights(items: &[Item], capacity: &[i64]) -> Vec<f64> {
    let d = capacity.len();
    let mut theta = vec![1.0 / d as f64; d];
    let mut best = root_surrogate(items, capacity, &theta);
    let mut step = 0.25;
    while step >= 0.01 {
        let mut moved = false;
        for from in 0..d {
            for to in 0..d {
                if from == to || theta[from] < step - 1e-12 {
                    continue;
                }
                let mut next = theta.clone();
                next[from] -= step;
                next[to] += step;
                let value = root_surrogate(items, capacity, &next);
                if value < best * (1.0 - 1e-9) {
                    best = value;
                    theta = next;
                    moved = true;
                }
            }
        }
        if !moved {
            step /= 2.0;
        }
    }
    theta
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Item, pack};

    /// Every pattern of `items` in `capacity`, by brute force: the best value.
    fn optimum(items: &[Item], capacity: &[i64]) -> f64 {
        fn go(items: &[Item], room: &mut Vec<i64>) -> f64 {
            let Some((item, rest)) = items.split_first() else { return 0.0 };
            let mut best = go(rest, room);
            for k in 1..=item.cap {
                if item.weights.iter().zip(room.iter()).any(|(&w, &r)| w * k > r) {
                    break;
                }
                room.iter_mut().zip(&item.weights).for_each(|(r, &w)| *r -= w * k);
                best = best.max(item.value * k as f64 + go(rest, room));
                room.iter_mut().zip(&item.weights).for_each(|(r, &w)| *r += w * k);
            }
            best
        }
        go(items, &mut capacity.to_vec())
    }

    fn items(raw: &[(u8, u8, u8, u8)]) -> Vec<Item> {
        raw.iter()
            .enumerate()
            .map(|(class, &(value, a, b, cap))| Item {
                class,
                value: f64::from(value) + 1.0,
                weights: vec![i64::from(a % 40) + 1, i64::from(b % 40)],
                cap: i64::from(cap % 5) + 1,
                size: 0.0,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// The pattern found fits and is worth what is reported; the upper bound is never below the true
        /// optimum (whatever the budgets), and a search with budget enough finds the optimum.
        #[test]
        fn knapsack_bounds_hold_for_any_budget(
            raw in proptest::collection::vec((0u8..50, 0u8..80, 0u8..80, 0u8..10), 1..7),
            capacity in (20i64..100, 10i64..100),
            floor in 0.0f64..60.0,
            budget in 1usize..30,
            tighten in 0usize..30,
        ) {
            let capacity = vec![capacity.0, capacity.1];
            let best = optimum(&items(&raw), &capacity);
            for (budget, tighten) in [(budget, tighten), (1_000_000, 0)] {
                let (pattern, value, upper) = pack(items(&raw), &capacity, floor, budget, tighten);
                let all = items(&raw);
                let mut used = [0i64; 2];
                let mut worth = 0.0;
                for &(class, count) in &pattern {
                    prop_assert!(count <= all[class].cap);
                    used[0] += all[class].weights[0] * count;
                    used[1] += all[class].weights[1] * count;
                    worth += all[class].value * count as f64;
                }
                prop_assert!(used[0] <= capacity[0] && used[1] <= capacity[1], "{pattern:?} overfills");
                prop_assert!((worth - value).abs() < 1e-9);
                prop_assert!(value <= best + 1e-9);
                prop_assert!(upper >= best - 1e-9, "upper {upper} below the optimum {best}");
                if budget == 1_000_000 && best > floor * (1.0 + 1e-9) {
                    prop_assert!((value - best).abs() < 1e-9, "found {value}, optimum {best}");
                }
            }
        }
    }
}
