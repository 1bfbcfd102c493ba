//! The aggregate covering LP (`../shared` solver notes §1.1): the cheapest fractional mix of node types whose
//! capacity covers the demand, per resource, overall and for each pod class over the types that class may
//! use, after the free room of existing nodes. It ignores that pods cannot be split across nodes, so its
//! optimum is a lower bound on any plan's cost; its duals price each pod, which steers the greedy.
//!
//! Rows, for every resource dimension r with demand:
//! - total:     Σ_t usable_{t,r} x_t + free_r     ≥ Σ_i b_i w_{i,r}
//! - per class: Σ_{t admits i} usable_{t,r} x_t + free_{i,r} ≥ b_i w_{i,r}
//! - limits:    Σ_{t in pool} capacity_{t,r} x_t ≤ remaining_{pool,r}, and Σ x_t ≤ remaining nodes
//!
//! where t ranges over (NodePool, instance type) priced at its cheapest admitted offering, usable is
//! allocatable minus daemonset overhead, and free is the room on existing nodes the class may use.

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
    /// Per class: the LP value of one pod (dollars per hour), Σ_r w_r × (price of r overall + for the class).
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

/// Solves the aggregate LP for `counts[i]` pods of each class, with `free[i]` the existing-node room class i
/// may use and `free_total` the room on all existing nodes.
pub(crate) fn aggregate_lp(
    index: &Index,
    counts: &[i64],
    free: &[Resources],
    free_total: &Resources,
) -> Result<AggregateLp, String> {
    if counts.iter().all(|&c| c == 0) {
        return Ok(AggregateLp { bound: Price(0), pod_values: vec![0.0; counts.len()] });
    }
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

    let mut rows: Vec<Constraint> = Vec::new();
    let mut total_rows: Vec<usize> = Vec::new(); // per dim: row position or usize::MAX
    let mut class_rows: Vec<Vec<usize>> = vec![Vec::new(); counts.len()];
    for dim in &index.dims {
        let demand: f64 =
            index.classes.iter().zip(counts).map(|(c, &n)| scaled(dim, c.requests.get(dim)) * n as f64).sum();
        let need = demand - scaled(dim, free_total.get(dim).max(0));
        if demand <= 0.0 || need <= 0.0 {
            total_rows.push(usize::MAX);
        } else {
            let supply: Expression = columns
                .iter()
                .map(|&(p, pos, x)| x * scaled(dim, index.pools[p].types[pos].usable.get(dim)))
                .sum();
            total_rows.push(rows.len());
            rows.push(constraint!(supply >= need));
        }
        for (i, class) in index.classes.iter().enumerate() {
            let demand = scaled(dim, class.requests.get(dim)) * counts[i] as f64;
            let need = demand - scaled(dim, free[i].get(dim).max(0));
            if demand <= 0.0 || need <= 0.0 {
                class_rows[i].push(usize::MAX);
                continue;
            }
            let supply: Expression = columns
                .iter()
                .filter(|&&(p, pos, _)| class.per_pool[p].as_ref().is_ok_and(|cp| cp.admits[pos]))
                .map(|&(p, pos, x)| x * scaled(dim, index.pools[p].types[pos].usable.get(dim)))
                .sum();
            class_rows[i].push(rows.len());
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
    let dual = |row: usize| if row == usize::MAX { 0.0 } else { duals.dual(refs[row].clone()).abs() };
    let pod_values = index
        .classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            index
                .dims
                .iter()
                .enumerate()
                .map(|(d, dim)| {
                    scaled(dim, class.requests.get(dim)) * (dual(total_rows[d]) + dual(class_rows[i][d]))
                })
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
