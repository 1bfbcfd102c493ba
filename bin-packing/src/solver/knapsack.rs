//! The pricing problem of column generation: a bounded multi-dimensional knapsack, by branch and bound.
//!
//! max Σ v_i a_i subject to Σ w_i a_i ≤ capacity (every dimension), 0 ≤ a_i ≤ cap_i, a integer.
//!
//! Items with the same weights (pod classes of one shape that differ in labels, NodePools or duals) are one
//! *group*: taking k copies of a group means its k most valuable copies, so the search branches once per
//! shape rather than once per class (a fragmented cluster has a hundred classes of six shapes). Bounds: a
//! surrogate (Dantzig) relaxation of the dimensions weighted by `theta`, fitted at the root so it comes
//! close to the LP relaxation, and per-dimension densities. Depth-first first (its first dive is the greedy
//! fill), then optionally best-first to lower the upper bound when the depth-first budget ran out.
//!
//! Budgets are node counts, never time, so results are deterministic.

use std::collections::{BTreeMap, BinaryHeap};

/// One class's part in a knapsack.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub class: usize,
    pub value: f64,
    pub weights: Vec<i64>,
    pub cap: i64,
}

/// What a knapsack search found.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The best pattern found: (class, copies).
    pub pattern: Vec<(usize, i64)>,
    /// Its value.
    pub value: f64,
    /// An upper bound on the optimum: exact whenever the optimum exceeds the floor and the search finished
    /// within its budget; never below the optimum.
    pub upper: f64,
}

/// Items of one shape.
struct Group {
    weights: Vec<i64>,
    /// (class, value, cap), most valuable first.
    members: Vec<(usize, f64, i64)>,
    /// How many copies the members allow in all.
    copies: i64,
    /// The surrogate size of one copy.
    size: f64,
}

impl Group {
    fn copies(&self) -> i64 {
        self.copies
    }

    /// The value of the group's `k` most valuable copies.
    fn value(&self, k: i64) -> f64 {
        let mut left = k;
        let mut total = 0.0;
        for &(_, value, cap) in &self.members {
            if left <= 0 {
                break;
            }
            let take = left.min(cap);
            total += value * take as f64;
            left -= take;
        }
        total
    }
}

/// Searches `items` in a bin of `capacity`. Only patterns worth more than `floor` matter, so subtrees that
/// cannot beat it are cut. Up to `budget` nodes depth-first; when that runs out, up to `tighten` more
/// best-first to lower the upper bound.
pub(crate) fn pack(items: Vec<Item>, capacity: &[i64], floor: f64, budget: usize, tighten: usize) -> Outcome {
    // Most bins of most pricing rounds cannot beat their price even by the surrogate bound at equal
    // weights: that is known before any search is set up.
    let quick = equal_weight_bound(&items, capacity);
    if quick <= floor * (1.0 + 1e-12) {
        return Outcome { pattern: vec![], value: 0.0, upper: quick };
    }
    let mut by_shape: BTreeMap<Vec<i64>, Vec<(usize, f64, i64)>> = BTreeMap::new();
    for item in items.into_iter().filter(|i| i.cap > 0 && i.value > 0.0) {
        by_shape.entry(item.weights).or_default().push((item.class, item.value, item.cap));
    }
    if by_shape.is_empty() {
        return Outcome { pattern: vec![], value: 0.0, upper: 0.0 };
    }
    let mut groups: Vec<Group> = by_shape
        .into_iter()
        .map(|(weights, mut members)| {
            members.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let copies = members.iter().map(|&(_, _, cap)| cap).sum();
            Group { weights, members, copies, size: 0.0 }
        })
        .collect();
    // The surrogate constraint: the dimensions' shares of the bin, weighted by `theta`, summed. Any
    // non-negative weights give a valid bound; these make the root bound about as tight as one constraint can.
    let theta = surrogate_weights(&groups, capacity);
    for group in &mut groups {
        group.size = surrogate_size(&group.weights, capacity, &theta);
    }
    let best_density = |g: &Group| g.members[0].1 / g.size;
    groups.sort_by(|a, b| best_density(b).total_cmp(&best_density(a)).then(a.weights.cmp(&b.weights)));
    // Every member, by value per surrogate size: the order of the Dantzig bound.
    let mut keyed: Vec<(f64, (usize, f64, i64))> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.members.iter().map(move |&(_, v, c)| (v / group.size, (g, v, c))))
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.0.cmp(&b.1.0)));
    let order: Vec<(usize, f64, i64)> = keyed.into_iter().map(|(_, unit)| unit).collect();
    // The same order from each group on (`suffixes[j]`: the members of groups `j..`), so a bound deep in
    // the tree reads only the groups still open.
    let suffixes: Vec<Vec<(usize, f64, i64)>> =
        (0..=groups.len()).map(|j| order.iter().copied().filter(|&(g, _, _)| g >= j).collect()).collect();
    // Suffix maxima of value per unit of each dimension (infinite where a group needs none of it).
    let n = groups.len();
    let mut density = vec![vec![0.0f64; capacity.len()]; n + 1];
    for j in (0..n).rev() {
        let (head, tail) = density.split_at_mut(j + 1);
        for ((slot, next), &w) in head[j].iter_mut().zip(&tail[0]).zip(&groups[j].weights) {
            let own = if w > 0 { groups[j].members[0].1 / w as f64 } else { f64::INFINITY };
            *slot = next.max(own);
        }
    }
    let mut search = Search {
        groups: &groups,
        suffixes: &suffixes,
        density: &density,
        capacity,
        theta: &theta,
        floor,
        budget,
        best: 0.0,
        best_counts: vec![0; n],
        counts: vec![0; n],
        nodes: 0,
        cut_off: 0.0,
    };
    let mut room = capacity.to_vec();
    let root = search.optimistic(0, 0, &room, 0.0);
    if root > floor * (1.0 + 1e-12) {
        search.dfs(0, &mut room, 0.0);
    }
    // Everything not explored was bounded by `floor`, by `best`, or (budget) by `cut_off`.
    if search.cut_off > search.best.max(floor) && tighten > 0 {
        search.cut_off = search.best_first(root, tighten);
    }
    let upper = search.best.max(search.cut_off).max(floor.min(root));
    // Copies of a group go to its most valuable members first, as `Group::value` counts them.
    let mut pattern = Vec::new();
    for (group, &count) in groups.iter().zip(&search.best_counts) {
        let mut left = count;
        for &(class, _, cap) in &group.members {
            if left == 0 {
                break;
            }
            let take = left.min(cap);
            pattern.push((class, take));
            left -= take;
        }
    }
    pattern.sort_unstable();
    Outcome { pattern, value: search.best, upper }
}

struct Search<'a> {
    groups: &'a [Group],
    /// Per group `j`: every member of groups `j..`, by value per surrogate size.
    suffixes: &'a [Vec<(usize, f64, i64)>],
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
    /// An upper bound on what groups `j..` can add to `value` in `room` when `taken` copies of group `j` are
    /// already in it: the smaller of the surrogate (Dantzig) bound over the weighted-share constraint and the
    /// per-dimension density bounds.
    fn optimistic(&self, j: usize, taken: i64, room: &[i64], value: f64) -> f64 {
        let mut skip = taken;
        let units = self.suffixes[j].iter().map(|&(g, v, cap)| {
            let mut copies = cap;
            if g == j && skip > 0 {
                // The group's most valuable copies are taken already; they come first in `order` too.
                let used = skip.min(copies);
                skip -= used;
                copies -= used;
            }
            (v, self.groups[g].size, copies)
        });
        let surrogate = dantzig(units, surrogate_size(room, self.capacity, self.theta));
        let per_dim =
            room.iter()
                .enumerate()
                // A dimension no remaining group uses bounds nothing.
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
        if j == self.groups.len() {
            return;
        }
        let bound = self.optimistic(j, 0, room, value);
        if bound <= self.best.max(self.floor) * (1.0 + 1e-12) {
            return;
        }
        self.nodes += 1;
        if self.nodes >= self.budget {
            self.cut_off = self.cut_off.max(bound);
            return;
        }
        let group = &self.groups[j];
        let mut most = group.copies();
        for (d, &w) in group.weights.iter().enumerate() {
            if w > 0 {
                most = most.min(room[d] / w);
            }
        }
        // Most copies first: the first path is the greedy fill.
        for k in (0..=most).rev() {
            for (d, &w) in group.weights.iter().enumerate() {
                room[d] -= w * k;
            }
            self.counts[j] = k;
            self.dfs(j + 1, room, value + group.value(k));
            for (d, &w) in group.weights.iter().enumerate() {
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

    /// Best-first search from the root for up to `budget` nodes, pruning by the incumbent found depth-first:
    /// returns an upper bound on what the unexplored part of the tree can hold (at most `root`), lower than
    /// the depth-first search's because the most promising open node is always the one expanded. Node
    /// `(j, taken)` stands for the patterns with groups before `j` as fixed and at least `taken` copies of
    /// group `j`; its children take one more copy, or fix group `j` at `taken` and move on.
    fn best_first(&self, root: f64, budget: usize) -> f64 {
        let n = self.groups.len();
        let mut incumbent = self.best;
        let mut heap = BinaryHeap::new();
        heap.push(Open { bound: root, j: 0, taken: 0, value: 0.0, room: self.capacity.to_vec() });
        for _ in 0..budget {
            let Some(node) = heap.pop() else { return incumbent };
            if node.bound <= incumbent.max(self.floor) * (1.0 + 1e-12) {
                return incumbent; // nothing open can beat what is known
            }
            if node.j == n {
                continue;
            }
            let group = &self.groups[node.j];
            // One more copy of group j.
            if node.taken < group.copies() && group.weights.iter().zip(&node.room).all(|(&w, &r)| w <= r) {
                let room: Vec<i64> = node.room.iter().zip(&group.weights).map(|(&r, &w)| r - w).collect();
                let taken = node.taken + 1;
                let value = node.value + group.value(taken) - group.value(node.taken);
                // A feasible pattern; its counts are not kept, its value only prunes.
                incumbent = incumbent.max(value);
                let bound = self.optimistic(node.j, taken, &room, value);
                if bound > incumbent.max(self.floor) * (1.0 + 1e-12) {
                    heap.push(Open { bound, j: node.j, taken, value, room });
                }
            }
            // Group j fixed at `taken`.
            let bound = self.optimistic(node.j + 1, 0, &node.room, node.value);
            if bound > incumbent.max(self.floor) * (1.0 + 1e-12) {
                heap.push(Open { bound, j: node.j + 1, taken: 0, value: node.value, room: node.room });
            }
        }
        heap.peek().map_or(incumbent, |open| open.bound.min(root).max(incumbent))
    }
}

/// An open node of the best-first search, ordered by its bound.
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

/// The surrogate bound of an empty bin with dimension weights `theta` (summing to 1). `units` is scratch
/// space, reused across calls (the weight search evaluates this dozens of times per knapsack).
fn root_surrogate(
    groups: &[Group],
    capacity: &[i64],
    theta: &[f64],
    units: &mut Vec<(f64, f64, f64, i64)>,
) -> f64 {
    units.clear();
    for g in groups {
        let size = surrogate_size(&g.weights, capacity, theta);
        units.extend(g.members.iter().map(|&(_, v, c)| (v / size, v, size, c)));
    }
    units.sort_by(|a, b| b.0.total_cmp(&a.0));
    dantzig(units.iter().map(|&(_, v, size, c)| (v, size, c)), surrogate_size(capacity, capacity, theta))
}

/// The surrogate (Dantzig) bound of an empty bin with equal weights on the dimensions the items use (the
/// weight search's starting point): an upper bound on any pattern's value.
fn equal_weight_bound(items: &[Item], capacity: &[i64]) -> f64 {
    let items: Vec<&Item> = items.iter().filter(|i| i.cap > 0 && i.value > 0.0).collect();
    let Some(theta) = equal_weights(capacity.len(), |d| items.iter().any(|i| i.weights[d] > 0)) else {
        return f64::INFINITY; // nothing to weigh: the search decides
    };
    let mut units: Vec<(f64, f64, f64, i64)> = items
        .iter()
        .map(|i| {
            let size = surrogate_size(&i.weights, capacity, &theta);
            (i.value / size, i.value, size, i.cap)
        })
        .collect();
    units.sort_by(|a, b| b.0.total_cmp(&a.0));
    dantzig(units.iter().map(|&(_, v, size, c)| (v, size, c)), surrogate_size(capacity, capacity, &theta))
}

/// Equal weights on the dimensions some item `uses` (none on the others: weight there loosens the bound
/// and does nothing else); `None` when no item uses any.
fn equal_weights(dims: usize, uses: impl Fn(usize) -> bool) -> Option<Vec<f64>> {
    let used: Vec<bool> = (0..dims).map(uses).collect();
    let n = used.iter().filter(|&&u| u).count();
    (n > 0).then(|| used.iter().map(|&u| if u { 1.0 / n as f64 } else { 0.0 }).collect())
}

/// The Dantzig bound of a one-constraint bounded knapsack: units `(value, size, copies)`, in order of value
/// per size, taken whole until the next one does not fit, which is taken fractionally.
fn dantzig(units: impl Iterator<Item = (f64, f64, i64)>, mut room: f64) -> f64 {
    let mut total = 0.0;
    for (value, size, copies) in units {
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

/// Dimension weights (on the simplex) that make the root surrogate bound small: a pattern search that moves
/// weight between pairs of the dimensions the items use, in shrinking steps. The surrogate dual is
/// quasi-convex, so this approaches the best single-constraint relaxation; equal weights are the start.
fn surrogate_weights(groups: &[Group], capacity: &[i64]) -> Vec<f64> {
    let Some(mut theta) = equal_weights(capacity.len(), |d| groups.iter().any(|g| g.weights[d] > 0)) else {
        return vec![1.0 / capacity.len() as f64; capacity.len()];
    };
    let used: Vec<usize> = (0..capacity.len()).filter(|&d| theta[d] > 0.0).collect();
    if used.len() == 1 {
        return theta;
    }
    let mut units = Vec::new();
    let mut best = root_surrogate(groups, capacity, &theta, &mut units);
    let mut step = 0.25;
    while step >= 0.01 {
        let mut moved = false;
        for &from in &used {
            for &to in &used {
                if from == to || theta[from] < step - 1e-12 {
                    continue;
                }
                let mut next = theta.clone();
                next[from] -= step;
                next[to] += step;
                let value = root_surrogate(groups, capacity, &next, &mut units);
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

    /// Items from raw draws; weights come from a few shapes so that groups of one shape occur.
    fn items(raw: &[(u8, u8, u8, u8)]) -> Vec<Item> {
        raw.iter()
            .enumerate()
            .map(|(class, &(value, a, b, cap))| Item {
                class,
                value: f64::from(value) + 1.0,
                weights: vec![i64::from(a % 4) * 9 + 3, i64::from(b % 3) * 13],
                cap: i64::from(cap % 5) + 1,
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// The pattern found fits and is worth what is reported; the upper bound is never below the true
        /// optimum (whatever the budgets), and a search with budget enough finds the optimum.
        #[test]
        fn bounds_hold_for_any_budget(
            raw in proptest::collection::vec((0u8..50, 0u8..80, 0u8..80, 0u8..10), 1..8),
            capacity in (20i64..100, 10i64..100),
            floor in 0.0f64..60.0,
            budget in 1usize..30,
            tighten in 0usize..30,
        ) {
            let capacity = vec![capacity.0, capacity.1];
            let all = items(&raw);
            let best = optimum(&all, &capacity);
            for (budget, tighten) in [(budget, tighten), (1_000_000, 0)] {
                let found = pack(items(&raw), &capacity, floor, budget, tighten);
                let mut used = [0i64; 2];
                let mut worth = 0.0;
                for &(class, count) in &found.pattern {
                    prop_assert!(count <= all[class].cap);
                    used[0] += all[class].weights[0] * count;
                    used[1] += all[class].weights[1] * count;
                    worth += all[class].value * count as f64;
                }
                prop_assert!(used[0] <= capacity[0] && used[1] <= capacity[1], "{:?} overfills", found.pattern);
                prop_assert!((worth - found.value).abs() < 1e-9);
                prop_assert!(found.value <= best + 1e-9);
                prop_assert!(found.upper >= best - 1e-9, "upper {} below the optimum {best}", found.upper);
                if budget == 1_000_000 && best > floor * (1.0 + 1e-9) {
                    prop_assert!((found.value - best).abs() < 1e-9, "found {}, optimum {best}", found.value);
                }
            }
        }

        /// Classes of one shape are searched as one group: with many of them the search still proves its
        /// pattern best within a small budget.
        #[test]
        fn many_classes_of_few_shapes_are_solved_exactly(values in proptest::collection::vec(1u8..100, 20..60)) {
            let shapes = [[500i64, 4], [250, 1], [1000, 2], [100, 1]];
            let items: Vec<Item> = values
                .iter()
                .enumerate()
                .map(|(class, &v)| {
                    let weights = shapes[class % shapes.len()].to_vec();
                    Item { class, value: f64::from(v) * weights[0] as f64 / 100.0, weights, cap: 3 }
                })
                .collect();
            let found = pack(items, &[6_000, 40], 0.0, 2_000, 0);
            prop_assert!(found.upper <= found.value * (1.0 + 1e-9), "not proven: {} vs {}", found.value, found.upper);
        }
    }
}
