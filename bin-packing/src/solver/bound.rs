//! The aggregate covering LP (`../shared` solver notes §1.1): the cheapest fractional mix of node types whose
//! capacity covers the demand, per resource, overall and for each group of pod classes over the types those
//! classes may use, after the free room of existing nodes. It ignores that pods cannot be split across nodes,
//! so its optimum is a lower bound on any plan's cost; its duals price each pod, which steers the greedy.
//!
//! Classes are grouped by *reach*: the node types they admit and the existing nodes they may use. For every
//! reach R and every resource dimension r with demand, one row:
//!
//! ```text
//! Σ_{t in R} usable_{t,r} x_t + free_{R,r} ≥ Σ_{i : reach(i) ⊆ R} b_i w_{i,r}
//! ```
//!
//! (pods that may only use what R holds must fit in it), the whole problem being one reach (the total row);
//! then the limits, Σ_{t in pool} capacity_{t,r} x_t ≤ remaining_{pool,r} and Σ x_t ≤ remaining nodes. Here t
//! ranges over (NodePool, instance type) priced at its cheapest admitted offering, usable is allocatable
//! minus daemonset overhead, and free_R is the room on the existing nodes of R. A row per reach rather than
//! per class is as tight (it sums the rows of the classes it covers) and far smaller: thousands of classes
//! that differ in labels or zones share a handful of reaches.

use std::collections::HashMap;

use good_lp::solvers::highs::highs;
use good_lp::{
    Constraint, DualValues, Expression, ProblemVariables, Solution, SolutionWithDual, SolverModel, Variable,
    constraint, variable,
};

use crate::instance_type::Price;
use crate::resources::{ResourceName, Resources};

use super::index::Index;

/// The LP's answer.
#[derive(Clone, Debug)]
pub(crate) struct AggregateLp {
    /// The optimum, rounded down with a safety margin for solver tolerances.
    pub bound: Price,
    /// Per class: the LP value of one pod (dollars per hour), Σ_r w_r × Σ (price of r in each row its pods
    /// count in).
    pub pod_values: Vec<f64>,
}

/// Units that keep the LP well scaled: cores, GiB, pods, GiB, device counts.
fn scaled(dim: &ResourceName, amount: i64) -> f64 {
    match dim {
        ResourceName::Cpu => amount as f64 / 1000.0,
        ResourceName::Memory | ResourceName::EphemeralStorage => amount as f64 / (1u64 << 30) as f64,
        _ => amount as f64,
    }
}

/// Above this many distinct reaches, a reach's row counts only the classes of exactly that reach (and the
/// total row everyone), not those of every reach inside it: the containment test is quadratic in reaches.
const NESTED_REACHES: usize = 400;

/// A set of node types (LP columns) and existing nodes, as bitsets.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Reach {
    columns: Vec<u64>,
    nodes: Vec<u64>,
}

impl Reach {
    fn empty(columns: usize, nodes: usize) -> Reach {
        Reach { columns: vec![0; columns.div_ceil(64)], nodes: vec![0; nodes.div_ceil(64)] }
    }

    fn full(columns: usize, nodes: usize) -> Reach {
        let mut reach = Reach::empty(columns, nodes);
        (0..columns).for_each(|c| set(&mut reach.columns, c));
        (0..nodes).for_each(|n| set(&mut reach.nodes, n));
        reach
    }

    fn within(&self, other: &Reach) -> bool {
        let inside = |a: &[u64], b: &[u64]| a.iter().zip(b).all(|(&x, &y)| x & !y == 0);
        inside(&self.columns, &other.columns) && inside(&self.nodes, &other.nodes)
    }
}

fn set(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn has(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// Solves the aggregate LP for `counts[i]` pods of each class, where `nodes[i]` lists the existing nodes
/// class i may use (positions in `Problem::existing`).
pub(crate) fn aggregate_lp(
    index: &Index,
    counts: &[i64],
    nodes: &[Vec<usize>],
) -> Result<AggregateLp, String> {
    if counts.iter().all(|&c| c == 0) {
        return Ok(AggregateLp { bound: Price(0), pod_values: vec![0.0; counts.len()] });
    }
    let existing = &index.problem.existing;
    let mut vars = ProblemVariables::new();
    // Columns: (pool position, pool-type position) that some class with demand admits.
    let mut columns: Vec<(usize, usize, Variable)> = Vec::new();
    let mut objective = Expression::from(0.0);
    for (p, pool) in index.pools.iter().enumerate() {
        for (pos, pt) in pool.types.iter().enumerate() {
            let used = index.classes.iter().zip(counts).any(|(class, &count)| {
                count > 0 && class.per_pool[p].as_ref().is_ok_and(|cp| cp.admits[pos])
            });
            if !used {
                continue;
            }
            let t = index.instance_type(pt);
            let Some(price) = pt.offerings.iter().map(|&o| t.offerings[o].price).min() else { continue };
            let x = vars.add(variable().min(0.0));
            objective += x * price.usd();
            columns.push((p, pos, x));
        }
    }

    // Each class's reach, and the distinct reaches with the classes of exactly that reach; the total row's
    // reach (everything) is always one.
    let mut reaches: Vec<Reach> = vec![Reach::full(columns.len(), existing.len())];
    let mut reach_of: HashMap<Reach, usize> = HashMap::from([(reaches[0].clone(), 0)]);
    let mut class_reach: Vec<Option<usize>> = vec![None; counts.len()];
    for (i, class) in index.classes.iter().enumerate() {
        if counts[i] == 0 {
            continue;
        }
        let mut reach = Reach::empty(columns.len(), existing.len());
        for (k, &(p, pos, _)) in columns.iter().enumerate() {
            if class.per_pool[p].as_ref().is_ok_and(|cp| cp.admits[pos]) {
                set(&mut reach.columns, k);
            }
        }
        for &n in &nodes[i] {
            set(&mut reach.nodes, n);
        }
        let r = match reach_of.get(&reach) {
            Some(&r) => r,
            None => {
                reaches.push(reach.clone());
                reach_of.insert(reach, reaches.len() - 1);
                reaches.len() - 1
            }
        };
        class_reach[i] = Some(r);
    }
    // `inside[r]`: the reaches whose classes count in reach r's rows (r itself, and those within it).
    let nested = reaches.len() <= NESTED_REACHES;
    let inside: Vec<Vec<usize>> = (0..reaches.len())
        .map(|r| {
            (0..reaches.len())
                .filter(|&q| q == r || r == 0 || (nested && reaches[q].within(&reaches[r])))
                .collect()
        })
        .collect();
    let free: Vec<Resources> = reaches
        .iter()
        .map(|reach| {
            existing
                .iter()
                .enumerate()
                .filter(|&(n, _)| has(&reach.nodes, n))
                .fold(Resources::new(), |acc, (_, node)| acc.plus(&node.free().clamp_non_negative()))
        })
        .collect();

    let mut rows: Vec<Constraint> = Vec::new();
    // Per reach, per dimension: the row's position, when it has one.
    let mut reach_rows: Vec<Vec<Option<usize>>> = vec![Vec::new(); reaches.len()];
    for dim in &index.dims {
        let mut own = vec![0.0f64; reaches.len()];
        for (i, class) in index.classes.iter().enumerate() {
            if let Some(r) = class_reach[i] {
                own[r] += scaled(dim, class.requests.get(dim)) * counts[i] as f64;
            }
        }
        for (r, reach) in reaches.iter().enumerate() {
            let demand: f64 = inside[r].iter().map(|&q| own[q]).sum();
            let need = demand - scaled(dim, free[r].get(dim).max(0));
            if demand <= 0.0 || need <= 0.0 {
                reach_rows[r].push(None);
                continue;
            }
            let supply: Expression = columns
                .iter()
                .enumerate()
                .filter(|&(k, _)| has(&reach.columns, k))
                .map(|(_, &(p, pos, x))| x * scaled(dim, index.pools[p].types[pos].usable.get(dim)))
                .sum();
            reach_rows[r].push(Some(rows.len()));
            rows.push(constraint!(supply >= need));
        }
    }
    for (p, pool) in index.pools.iter().enumerate() {
        let remaining = &pool.template.remaining;
        let in_pool: Vec<(usize, Variable)> =
            columns.iter().filter(|c| c.0 == p).map(|&(_, pos, x)| (pos, x)).collect();
        if in_pool.is_empty() {
            continue;
        }
        if let Some(nodes) = remaining.nodes {
            let count: Expression = in_pool.iter().map(|&(_, x)| Expression::from(x)).sum();
            rows.push(constraint!(count <= nodes.max(0) as f64));
        }
        for (dim, &limit) in &remaining.resources {
            let used: Expression = in_pool
                .iter()
                .map(|&(pos, x)| {
                    let t = index.instance_type(&pool.types[pos]);
                    x * scaled(dim, t.capacity.get(dim))
                })
                .sum();
            rows.push(constraint!(used <= scaled(dim, limit.max(0))));
        }
    }

    let mut model = vars.minimise(objective.clone()).using(highs);
    let refs: Vec<_> = rows.into_iter().map(|r| model.add_constraint(r)).collect();
    let mut solution = model.solve().map_err(|e| format!("aggregate LP: {e}"))?;
    let optimum = solution.eval(&objective);
    let duals = solution.compute_dual();
    let dual = |row: Option<usize>| row.map_or(0.0, |row| duals.dual(refs[row].clone()).abs());
    // A pod counts in the rows of every reach its class's reach is inside of.
    let mut outside: Vec<Vec<usize>> = vec![Vec::new(); reaches.len()];
    for (r, members) in inside.iter().enumerate() {
        for &q in members {
            outside[q].push(r);
        }
    }
    let prices: Vec<Vec<f64>> = outside
        .iter()
        .map(|rows| {
            (0..index.dims.len()).map(|d| rows.iter().map(|&r| dual(reach_rows[r][d])).sum()).collect()
        })
        .collect();
    let pod_values = index
        .classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            // A class without demand is priced as the total row prices it.
            let r = class_reach[i].unwrap_or(0);
            index
                .dims
                .iter()
                .zip(&prices[r])
                .map(|(dim, price)| scaled(dim, class.requests.get(dim)) * price)
                .sum()
        })
        .collect();
    // Solver tolerances are ~1e-7 relative; shave 1e-6 so the bound stays a bound.
    let nanos = (optimum.max(0.0) * Price::NANOS_PER_USD as f64 * (1.0 - 1e-6)).floor();
    Ok(AggregateLp { bound: Price(nanos as u64), pod_values })
}

/// What the pattern bound may assume of a plan that honours NodePool weights as Cartwright's do: every new
/// node is opened for a pod in the first NodePool (by weight) that admits it, unless that NodePool refuses the
/// pod (its limits are spent, or its `minValues` cannot be met) and a later one takes it.
#[derive(Debug)]
pub(crate) struct WeightOrder {
    /// Per class, per pool: whether the class's pods may be on the pool's nodes when no NodePool refuses a
    /// pod it comes first for (the pools some class comes first for, among those admitting the class).
    pub pools: Vec<Vec<bool>>,
    /// The least a plan costs in which some NodePool does refuse such a pod and a later one could take it:
    /// what the refusing NodePool's spent limits cost at its cheapest rates (zero when `minValues` may
    /// refuse); `None` when no NodePool can refuse.
    pub refused: Option<Price>,
}

/// Works out the [`WeightOrder`] for the classes with pods to place.
pub(crate) fn weight_order(index: &Index, placed: &[i64]) -> WeightOrder {
    let n = index.pools.len();
    let first: Vec<Option<usize>> =
        index.classes.iter().map(|c| c.per_pool.iter().position(Result::is_ok)).collect();
    let mut opens = vec![false; n];
    for (c, &f) in first.iter().enumerate() {
        if let Some(p) = f
            && placed[c] > 0
        {
            opens[p] = true;
        }
    }
    let pools = index
        .classes
        .iter()
        .map(|class| (0..n).map(|p| opens[p] && class.per_pool[p].is_ok()).collect())
        .collect();
    let mut refused: Option<Price> = None;
    // Per pool, once asked for: its lowest prices per node and per unit of each limited resource.
    let mut rates: Vec<Option<Rates>> = (0..n).map(|_| None).collect();
    for (c, class) in index.classes.iter().enumerate() {
        let Some(p) = first[c] else { continue };
        // A pod refused where nothing later admits it is unschedulable, not placed elsewhere.
        if placed[c] == 0 || !class.per_pool[p + 1..].iter().any(Result::is_ok) {
            continue;
        }
        let Ok(cp) = &class.per_pool[p] else { continue };
        let rates = rates[p].get_or_insert_with(|| Rates::of(index, p));
        if let Some(cost) = refusal_cost(index, p, rates, &cp.types) {
            refused = Some(refused.map_or(cost, |r| r.min(cost)));
        }
    }
    WeightOrder { pools, refused }
}

/// A pool's lowest price for a node, and per unit of each resource its limits name (nano-dollars).
struct Rates {
    node: f64,
    per_unit: Vec<f64>,
}

impl Rates {
    fn of(index: &Index, p: usize) -> Rates {
        let pool = &index.pools[p];
        let offers = || {
            pool.types.iter().flat_map(|pt| {
                let t = index.instance_type(pt);
                pt.offerings.iter().map(move |&o| (&t.capacity, t.offerings[o].price.0 as f64))
            })
        };
        let node = offers().map(|(_, price)| price).fold(f64::INFINITY, f64::min);
        let per_unit = pool
            .template
            .remaining
            .resources
            .keys()
            .map(|dim| {
                offers()
                    .map(|(capacity, price)| {
                        let amount = capacity.get(dim);
                        if amount > 0 { price / amount as f64 } else { 0.0 }
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        Rates { node, per_unit }
    }
}

/// The least the nodes of pool `p` cost once its limits refuse a pod whose admitting types are `types`
/// (positions in the pool's type list), or `None` when nothing can make the pool refuse it. New nodes are
/// charged against limits at the capacity of the type they launch as (`greedy::limited_alternatives`), and a
/// pod is refused when no admitting type fits in what is left: under one resource limit, less is left than
/// the smallest admitting type; under several, less than the largest in one of them; under a node limit, no
/// node. Each unit spent costs at least the pool's lowest price per unit (`rates`).
fn refusal_cost(index: &Index, p: usize, rates: &Rates, types: &[usize]) -> Option<Price> {
    let pool = &index.pools[p];
    if pool.template.has_min_values() {
        return Some(Price(0));
    }
    let limits = &pool.template.remaining;
    let finite = |rate: f64| if rate.is_finite() { rate } else { 0.0 };
    let mut cheapest: Option<f64> = limits.nodes.map(|nodes| nodes.max(0) as f64 * finite(rates.node));
    let single = limits.resources.len() == 1;
    for ((dim, &left), &rate) in limits.resources.iter().zip(&rates.per_unit) {
        let sizes = types.iter().map(|&pos| index.instance_type(&pool.types[pos]).capacity.get(dim));
        let size = if single { sizes.min() } else { sizes.max() }.unwrap_or(0);
        let cost = (left - size).max(0) as f64 * finite(rate);
        cheapest = Some(cheapest.map_or(cost, |c| c.min(cost)));
    }
    cheapest.map(|c| Price((c * (1.0 - 1e-9)).floor() as u64))
}
