//! Why a pod cannot be placed, in words a person can act on: one clause per NodePool, highest weight first.

use super::index::{Index, PoolRejection};

/// The reason for class `c`; `blocked_by_limits[p]` says whether pool `p` could hold it but for its limits
/// (or its `minValues`).
pub(crate) fn explain(index: &Index, c: usize, blocked_by_limits: &[bool]) -> String {
    let class = &index.classes[c];
    if index.pools.is_empty() {
        return "no NodePool exists and no existing node has room".to_owned();
    }
    let wanted = match class.spec.affinity.alternatives() {
        [] => "a node affinity whose terms are all empty".to_owned(),
        [only] if only.is_empty() => String::new(),
        [only] => format!(" with {only}"),
        many => format!(
            " with one of [{}]",
            many.iter().map(|a| a.to_string()).collect::<Vec<_>>().join("] or [")
        ),
    };
    let clauses: Vec<String> = index
        .pools
        .iter()
        .zip(&class.per_pool)
        .enumerate()
        .map(|(p, (pool, result))| {
            let name = &pool.template.name;
            match result {
                Err(PoolRejection::Taint(taint)) => format!("NodePool `{name}` has taint {taint}, which the pod does not tolerate"),
                Err(PoolRejection::Requirements(why)) => format!("NodePool `{name}` does not allow it: {why}"),
                Err(PoolRejection::NoInstanceType) => {
                    format!("no instance type in NodePool `{name}` is offered{wanted}")
                }
                Err(PoolRejection::NoneFits) => format!(
                    "no instance type in NodePool `{name}`{wanted} has room for {} plus daemonset overhead",
                    class.requests
                ),
                Ok(_) if blocked_by_limits[p] => {
                    let limits = &pool.template.remaining;
                    let mut left: Vec<String> = limits.resources.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    if let Some(n) = limits.nodes {
                        left.push(format!("nodes={n}"));
                    }
                    if pool.template.has_min_values() && left.is_empty() {
                        format!("NodePool `{name}` cannot meet its minValues with instance types that hold the pod")
                    } else {
                        format!("NodePool `{name}` would exceed its limits (left before this plan: {})", left.join(", "))
                    }
                }
                Ok(_) => format!("NodePool `{name}` could hold it but was not chosen"),
            }
        })
        .collect();
    clauses.join("; ")
}
