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
/// Stop when the master improves by less than this fraction over this many rounds.
const STALL_ROUNDS: usize = 4;
const STALL_FRACTION: f64 = 0.002;
/// Knapsack search budget per bin and round.
const KNAPSACK_NODES: usize = 2_000;
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
    let mut history: Vec<f64> = Vec::new();
    for _ in 0..MAX_ITERATIONS {
        let (objective, duals, primal) = master_lp(&bins, &columns, demand, &classes)?;
        lambda = primal;
        history.push(objective);
        // Tailing off: the master moved less than STALL_FRACTION over the last STALL_ROUNDS rounds. What is
        // left is worth less than the rounds it would take; the Farley bound stays valid.
        if history.len() > STALL_ROUNDS
            && history[history.len() - 1 - STALL_ROUNDS] - objective < objective * STALL_FRACTION
        {
            break;
        }
        // Price every bin; keep the columns with the most negative reduced cost.
        let mut best_ratio = 0.0f64;
        let mut improving: Vec<(f64, Column)> = Vec::new();
        for (k, bin) in bins.iter().enumerate() {
            let price = bin.price.usd();
            let (pattern, value, upper) = knapsack(index, bin, &duals, demand, price, KNAPSACK_NODES);
            if value > price * (1.0 + 1e-9) && !pattern.is_empty() {
                improving.push((price - value, Column { bin: k, counts: pattern }));
            }
            if price > 0.0 {
                best_ratio = best_ratio.max(upper / price);
            }
        }
        // Farley: every pattern's value is at most best_ratio × its price, so scaling the duals by
        // 1 / best_ratio gives a feasible dual solution worth objective / best_ratio.
        if best_ratio > 0.0 {
            bound = bound.max(objective / best_ratio.max(1.0));
        }
        // Optimal only when no bin can beat its price, by the knapsacks' upper bounds (a knapsack cut short
        // by its budget may hide a better pattern).
        if best_ratio <= 1.0 + 1e-9 {
            bound = bound.max(objective);
            converged = true;
            break;
        }
        if improving.is_empty() {
            break;
        }
        improving.sort_by(|a, b| a.0.total_cmp(&b.0));
        columns.extend(improving.into_iter().take(COLUMNS_PER_ITERATION).map(|(_, c)| c));
    }
    let nanos = (bound.max(0.0) * Price::NANOS_PER_USD as f64 * (1.0 - 1e-6)).floor();
    Ok(Outcome { bins, columns, bound: Price(nanos as u64), converged, lambda })
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
/// the optimum exceeds `floor` and the search finished within its node budget.
fn knapsack(
    index: &Index,
    bin: &Bin,
    duals: &[f64],
    demand: &[i64],
    floor: f64,
    budget: usize,
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
        // The surrogate size: the item's share of the bin, summed over dimensions.
        let size = weights.iter().zip(&capacity).map(|(&w, &c)| w as f64 / c as f64).sum::<f64>().max(1e-12);
        items.push(Item { class: i, value: duals[i], weights, cap, size });
    }
    if items.is_empty() {
        return (vec![], 0.0, 0.0);
    }
    items.sort_by(|a, b| (b.value / b.size).total_cmp(&(a.value / a.size)).then(a.class.cmp(&b.class)));
    let n = items.len();
    // Suffix maxima of value per unit of each dimension (infinite where an item needs none of it), for a
    // second cheap bound.
    let mut density = vec![vec![0.0f64; dims.len()]; n + 1];
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
    /// (Dantzig) bound over the summed-share constraint and the per-dimension density bounds.
    fn optimistic(&self, j: usize, room: &[i64], value: f64) -> f64 {
        let mut left: f64 = room.iter().zip(self.capacity).map(|(&r, &c)| r as f64 / c as f64).sum();
        let mut surrogate = 0.0;
        for item in &self.items[j..] {
            if left <= 0.0 {
                break;
            }
            let whole = item.cap as f64 * item.size;
            if whole <= left {
                surrogate += item.cap as f64 * item.value;
                left -= whole;
            } else {
                surrogate += item.value * left / item.size;
                left = 0.0;
            }
        }
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
