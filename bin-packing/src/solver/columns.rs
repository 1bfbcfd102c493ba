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
//! existing nodes. Which NodePools each class may use is the caller's (`bound::weight_order`: those NodePool
//! weights allow).

use good_lp::solvers::highs::highs;
use good_lp::{
    Constraint, DualValues, Expression, ProblemVariables, Solution, SolutionWithDual, SolverModel, Variable,
    constraint, variable,
};

use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::instance_type::Price;
use crate::resources::{ResourceName, Resources};

use super::index::{Class, Index, fit_count};
use super::knapsack::{self, Item};

/// Column-generation budgets.
const MAX_ITERATIONS: usize = 60;
const COLUMNS_PER_ITERATION: usize = 40;
/// Stop when the gap between the master and the bound shrinks by less than this fraction of the master over
/// this many rounds, or is below the target.
const STALL_ROUNDS: usize = 8;
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
/// may use the NodePools `pools[class]` marks, of those that admit it.
pub(crate) fn bins(index: &Index, pools: &[Vec<bool>]) -> Vec<Bin> {
    let mut all = Vec::new();
    for (p, pool) in index.pools.iter().enumerate() {
        // Whether a class's requirements admit an offering depends only on its affinity shape and the
        // offering's zone and capacity type: checked once per (shape, place).
        let mut compatible: FxHashMap<(usize, usize), bool> = FxHashMap::default();
        for (pos, pt) in pool.types.iter().enumerate() {
            let t = index.instance_type(pt);
            let mut by_mask: Vec<(Vec<bool>, Price)> = Vec::new();
            for (&o, &place) in pt.offerings.iter().zip(&pt.places) {
                let offering = &t.offerings[o];
                let admits: Vec<bool> = index
                    .classes
                    .iter()
                    .zip(pools)
                    .map(|(c, allowed)| {
                        allowed[p]
                            && c.per_pool[p].as_ref().is_ok_and(|cp| {
                                cp.admits[pos]
                                    && *compatible
                                        .entry((cp.shape, place))
                                        .or_insert_with(|| offering.is_compatible(&cp.requirements))
                            })
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

/// Runs column generation for `demand[i]` pods of each class on new nodes, class `i` in the NodePools
/// `pools[i]` marks. `seeds` are patterns known to be good (a plan's nodes, as pods per class): each joins
/// the first master on the cheapest bin that holds it, so the master starts no worse than that plan.
pub(crate) fn generate(
    index: &Index,
    demand: &[i64],
    pools: &[Vec<bool>],
    seeds: &[Vec<(usize, i64)>],
) -> Result<Outcome, String> {
    let bins = bins(index, pools);
    tracing::debug!(bins = bins.len(), "pattern bins");
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

    let mut seeded: Vec<&Vec<(usize, i64)>> = seeds.iter().filter(|s| !s.is_empty()).collect();
    seeded.sort();
    seeded.dedup();
    for seed in seeded {
        let mut requests = Resources::new();
        for &(c, n) in seed {
            requests.add_assign(&index.classes[c].requests.times(n));
        }
        let holds = |bin: &Bin| seed.iter().all(|&(c, _)| bin.admits[c]) && requests.fits_in(&bin.usable);
        // Bins are sorted cheapest first.
        if let Some(k) = bins.iter().position(holds) {
            let counts = seed.iter().map(|&(c, n)| (c, n.min(demand[c]))).filter(|&(_, n)| n > 0).collect();
            columns.push(Column { bin: k, counts });
        }
    }

    let mut bound = 0.0f64;
    let mut converged = false;
    let mut lambda = Vec::new();
    let mut gaps: Vec<f64> = Vec::new();
    // The duals with the best bound so far, and that bound: the stabilisation centre.
    let mut center: Option<(Vec<f64>, f64)> = None;
    for _ in 0..MAX_ITERATIONS {
        let (objective, duals, primal) =
            tracing::debug_span!("master").in_scope(|| master_lp(&bins, &columns, demand, &classes))?;
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
            let round = tracing::debug_span!("pricing")
                .in_scope(|| price_bins(index, &bins, &separation, &duals, demand, 0));
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
        let round = tracing::debug_span!("tighten")
            .in_scope(|| price_bins(index, &bins, center, center, demand, TIGHTEN_NODES));
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
    // Bins are priced independently, on every core; results are taken in bin order, so the round is the
    // same however the work was split.
    let (classes, dims) = (&index.classes[..], &index.dims[..]);
    let found: Vec<_> = bins
        .par_iter()
        .map(|bin| knapsack(classes, dims, bin, separation, demand, KNAPSACK_NODES, tighten))
        .collect();
    for (k, (bin, (pattern, value, upper))) in bins.iter().zip(found).enumerate() {
        let price = bin.price.usd();
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
/// Only patterns worth more than the bin's price matter, so subtrees that cannot beat it are cut.
/// Returns the best pattern found, its value, and an upper bound on the optimum that is exact whenever
/// the optimum exceeds the price and the search finished within its node budget. When the depth-first search
/// runs out of budget, up to `tighten` more nodes are spent best-first to lower that upper bound.
fn knapsack(
    classes: &[Class],
    dims: &[ResourceName],
    bin: &Bin,
    duals: &[f64],
    demand: &[i64],
    budget: usize,
    tighten: usize,
) -> (Vec<(usize, i64)>, f64, f64) {
    let dims: Vec<_> = dims.iter().filter(|d| bin.usable.get(d) > 0).cloned().collect();
    let capacity: Vec<i64> = dims.iter().map(|d| bin.usable.get(d)).collect();
    let mut items: Vec<Item> = Vec::new();
    for (i, class) in classes.iter().enumerate() {
        if demand[i] == 0 || duals[i] <= 1e-12 || !bin.admits[i] {
            continue;
        }
        let cap = fit_count(&bin.usable, &class.requests).min(demand[i]).min(class.per_node_cap);
        if cap == 0 {
            continue;
        }
        let weights: Vec<i64> = dims.iter().map(|d| class.requests.get(d)).collect();
        items.push(Item { class: i, value: duals[i], weights, cap });
    }
    let found = knapsack::pack(items, &capacity, bin.price.usd(), budget, tighten);
    (found.pattern, found.value, found.upper)
}
