//! The solver's output: where each pod goes, which nodes to launch, what cannot be placed and why.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::instance_type::{CapacityType, Price};

/// One (instance type, zone, capacity type) a new node may be launched as, with its price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LaunchOption {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price: Price,
}

impl LaunchOption {
    /// The order alternatives are listed in: cheapest first, then by instance type, zone and capacity type,
    /// so plans are deterministic.
    pub fn order_key(&self) -> (Price, &str, &str, CapacityType) {
        (self.price, &self.instance_type, &self.zone, self.capacity_type)
    }
}

/// A node to launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NewNode {
    pub nodepool: String,
    /// The chosen offering: the cheapest of `alternatives`.
    pub launch: LaunchOption,
    /// Labels the node carries beyond its instance type's and offering's: the NodePool's template labels and
    /// name, and one value for each requirement key the NodePool leaves open (narrowed by its pods).
    pub labels: BTreeMap<String, String>,
    /// Names of the pods planned onto it.
    pub pods: Vec<String>,
    /// Every offering that would also hold these pods within the NodePool's requirements and limits,
    /// cheapest first (the chosen one included), for launch flexibility.
    pub alternatives: Vec<LaunchOption>,
}

/// A pod placed on an existing or in-flight node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub pod: String,
    pub node: String,
}

/// A pod the plan cannot place, with a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unschedulable {
    pub pod: String,
    pub reason: String,
}

/// How the lower bound was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundKind {
    /// The aggregate covering LP: capacity bought must cover demand per resource, overall and per pod class
    /// over the offerings that class may use.
    AggregateLp,
    /// The LP relaxation of the pattern (Gilmore–Gomory) formulation, solved to optimality by column
    /// generation: the tight bound.
    PatternLp,
    /// The Farley bound of an unfinished column generation (its iteration budget ran out): valid, a little
    /// below the pattern LP.
    PatternFarley,
    /// Nothing to launch: the bound is zero.
    Trivial,
}

impl BoundKind {
    /// The name used in reports (`pattern-lp`, `pattern-farley`, `aggregate-lp`, `trivial`).
    pub fn as_str(&self) -> &'static str {
        match self {
            BoundKind::AggregateLp => "aggregate-lp",
            BoundKind::PatternLp => "pattern-lp",
            BoundKind::PatternFarley => "pattern-farley",
            BoundKind::Trivial => "trivial",
        }
    }
}

/// A lower bound on the hourly cost of any plan that schedules the same pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LowerBound {
    pub price: Price,
    pub kind: BoundKind,
}

/// The solver's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub new_nodes: Vec<NewNode>,
    pub unschedulable: Vec<Unschedulable>,
    /// The hourly price of the new nodes.
    pub cost: Price,
    /// `None` when the bound could not be computed (the LP solver failed); the plan still stands.
    pub lower_bound: Option<LowerBound>,
}

impl Plan {
    /// cost / lower bound (1.0 is optimal); `None` without a positive bound.
    pub fn cost_over_bound(&self) -> Option<f64> {
        let bound = self.lower_bound?.price.0;
        (bound > 0).then(|| self.cost.0 as f64 / bound as f64)
    }
}
