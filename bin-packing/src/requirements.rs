//! Label requirements with Karpenter v1 semantics: In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte, Lte and
//! `minValues`, with intersection, compatibility and satisfiability.
//!
//! A [`Requirement`] is the set of states a node's label may be in: *absent*, or *present with a value*.
//! Each operator is one such set (`NotIn` and `DoesNotExist` admit an absent label; `In`, `Exists`, `Gt`
//! and `Lt` do not, as in Kubernetes), and intersecting two requirements intersects the sets exactly. This
//! makes "is satisfiable" a plain emptiness test, where Karpenter collapses an empty `In` into
//! `DoesNotExist` and special-cases it in its compatibility check.
//!
//! Numeric bounds keep their integer meaning: `Gt 3` with `Lt 4` admits no value; `Gte n` is `Gt n-1`.
//! A value with bounds must parse as an `i64`, as the Kubernetes `Gt`/`Lt` operators require.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::labels;

/// Node selector operators, Kubernetes' six plus Karpenter's `Gte` and `Lte`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
    Gte,
    Lte,
}

impl FromStr for Operator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            "Gt" => Operator::Gt,
            "Lt" => Operator::Lt,
            "Gte" => Operator::Gte,
            "Lte" => Operator::Lte,
            other => return Err(other.to_owned()),
        })
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A requirement that cannot be built as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequirementError {
    #[error("requirement has an empty key")]
    EmptyKey,
    #[error(
        "requirement {key}: unknown operator {operator:?} (expected In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte or Lte)"
    )]
    UnknownOperator { key: String, operator: String },
    #[error("requirement {key}: operator {operator} needs at least one value")]
    MissingValues { key: String, operator: Operator },
    #[error("requirement {key}: operator {operator} takes no values, got {count}")]
    UnexpectedValues { key: String, operator: Operator, count: usize },
    #[error("requirement {key}: operator {operator} takes exactly one integer value, got {count} values")]
    WrongValueCount { key: String, operator: Operator, count: usize },
    #[error("requirement {key}: operator {operator} needs an integer, got {value:?}")]
    NotAnInteger { key: String, operator: Operator, value: String },
    #[error("requirement {key}: minValues {min_values} {problem}")]
    MinValues { key: String, min_values: u32, problem: &'static str },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Values {
    /// The label, when present, must have one of these values.
    Only(BTreeSet<String>),
    /// The label, when present, must have none of these values.
    Except(BTreeSet<String>),
}

/// One label key's constraint: the set of admitted label states (absent, or present with a value).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    absent_ok: bool,
    values: Values,
    /// Present values must be integers strictly greater than this. Never set together with `Only`.
    greater_than: Option<i64>,
    /// Present values must be integers strictly less than this. Never set together with `Only`.
    less_than: Option<i64>,
    min_values: Option<u32>,
}

impl Requirement {
    /// Builds a requirement from its API form; the key is normalised (`beta.kubernetes.io/arch` ->
    /// `kubernetes.io/arch`, `cartwright.sh/capacity-type` -> `karpenter.sh/capacity-type`).
    pub fn new<S: AsRef<str>>(key: &str, operator: Operator, values: &[S]) -> Result<Self, RequirementError> {
        let key = labels::normalize_key(key.trim());
        if key.is_empty() {
            return Err(RequirementError::EmptyKey);
        }
        let key_owned = key.to_owned();
        let set: BTreeSet<String> = values.iter().map(|v| v.as_ref().to_owned()).collect();
        let count = values.len();
        let integer = || -> Result<i64, RequirementError> {
            if count != 1 {
                return Err(RequirementError::WrongValueCount { key: key_owned.clone(), operator, count });
            }
            let raw = values[0].as_ref();
            raw.trim().parse::<i64>().map_err(|_| RequirementError::NotAnInteger {
                key: key_owned.clone(),
                operator,
                value: raw.to_owned(),
            })
        };
        let mut r = Requirement {
            key: key_owned.clone(),
            absent_ok: false,
            values: Values::Except(BTreeSet::new()),
            greater_than: None,
            less_than: None,
            min_values: None,
        };
        match operator {
            Operator::In | Operator::NotIn if set.is_empty() => {
                return Err(RequirementError::MissingValues { key: key_owned, operator });
            }
            Operator::Exists | Operator::DoesNotExist if count > 0 => {
                return Err(RequirementError::UnexpectedValues { key: key_owned, operator, count });
            }
            Operator::In => r.values = Values::Only(set),
            Operator::NotIn => {
                r.absent_ok = true;
                r.values = Values::Except(set);
            }
            Operator::Exists => {}
            Operator::DoesNotExist => {
                r.absent_ok = true;
                r.values = Values::Only(BTreeSet::new());
            }
            // An unrepresentable bound (Gte i64::MIN) admits every integer: no bound at all.
            Operator::Gt => r.greater_than = Some(integer()?),
            Operator::Gte => r.greater_than = integer()?.checked_sub(1),
            Operator::Lt => r.less_than = Some(integer()?),
            Operator::Lte => r.less_than = integer()?.checked_add(1),
        }
        Ok(r)
    }

    /// `key In [value]`: the requirement a node label states.
    pub fn single(key: &str, value: impl Into<String>) -> Self {
        Requirement {
            key: labels::normalize_key(key).to_owned(),
            absent_ok: false,
            values: Values::Only(BTreeSet::from([value.into()])),
            greater_than: None,
            less_than: None,
            min_values: None,
        }
    }

    /// `key DoesNotExist`.
    pub fn does_not_exist(key: &str) -> Self {
        Requirement::new::<&str>(key, Operator::DoesNotExist, &[]).expect("DoesNotExist takes no values")
    }

    /// `key Exists`.
    pub fn exists(key: &str) -> Self {
        Requirement::new::<&str>(key, Operator::Exists, &[]).expect("Exists takes no values")
    }

    /// Sets `minValues`: at least this many distinct values of the key must stay possible (Karpenter's launch
    /// flexibility rule). Must be 1..=50 and, for `In`, no more than the number of values.
    pub fn with_min_values(mut self, min_values: u32) -> Result<Self, RequirementError> {
        let err = |problem| RequirementError::MinValues { key: self.key.clone(), min_values, problem };
        if !(1..=50).contains(&min_values) {
            return Err(err("must be between 1 and 50"));
        }
        if let Values::Only(set) = &self.values
            && set.len() < min_values as usize
        {
            return Err(err("exceeds the number of values"));
        }
        self.min_values = Some(min_values);
        Ok(self)
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `minValues`, when set.
    pub fn min_values(&self) -> Option<u32> {
        self.min_values
    }

    /// Whether a node without this label satisfies the requirement.
    pub fn admits_absent(&self) -> bool {
        self.absent_ok
    }

    /// The finite set of admitted values, when the requirement names one (`In`, or `DoesNotExist` as empty).
    pub fn values(&self) -> Option<&BTreeSet<String>> {
        match &self.values {
            Values::Only(set) => Some(set),
            Values::Except(_) => None,
        }
    }

    /// Whether a node whose label is `value` (`None`: no such label) satisfies the requirement.
    pub fn matches(&self, value: Option<&str>) -> bool {
        match value {
            None => self.absent_ok,
            Some(v) => self.admits_value(v),
        }
    }

    /// Whether a present label value is admitted.
    pub fn admits_value(&self, value: &str) -> bool {
        let listed = match &self.values {
            Values::Only(set) => set.contains(value),
            Values::Except(set) => !set.contains(value),
        };
        listed && self.within_bounds(value)
    }

    fn within_bounds(&self, value: &str) -> bool {
        if self.greater_than.is_none() && self.less_than.is_none() {
            return true;
        }
        let Ok(n) = value.parse::<i64>() else { return false };
        self.greater_than.is_none_or(|gt| n > gt) && self.less_than.is_none_or(|lt| n < lt)
    }

    /// Whether some present value is admitted.
    pub fn admits_some_value(&self) -> bool {
        match &self.values {
            Values::Only(set) => !set.is_empty(),
            // With bounds, every integer in the open interval has endless spellings ("7", "07", "+7"), so
            // excluded strings cannot empty it; without bounds the complement is infinite.
            Values::Except(_) => self.integer_range().is_some_and(|(lo, hi)| lo <= hi),
        }
    }

    /// The inclusive integer range the bounds admit (`None` when the bounds cannot be met).
    fn integer_range(&self) -> Option<(i64, i64)> {
        let lo = match self.greater_than {
            Some(gt) => gt.checked_add(1)?,
            None => i64::MIN,
        };
        let hi = match self.less_than {
            Some(lt) => lt.checked_sub(1)?,
            None => i64::MAX,
        };
        Some((lo, hi))
    }

    /// Whether any node could satisfy the requirement.
    pub fn is_satisfiable(&self) -> bool {
        self.absent_ok || self.admits_some_value()
    }

    /// Whether `minValues` can still be met by the admitted values.
    pub fn min_values_possible(&self) -> bool {
        match (&self.values, self.min_values) {
            (Values::Only(set), Some(min)) => set.len() >= min as usize,
            _ => true,
        }
    }

    /// The requirement both `self` and `other` impose (keys must be equal).
    pub fn intersection(&self, other: &Requirement) -> Requirement {
        debug_assert_eq!(self.key, other.key, "intersecting requirements of different keys");
        let values = match (&self.values, &other.values) {
            (Values::Only(a), Values::Only(b)) => Values::Only(a.intersection(b).cloned().collect()),
            (Values::Only(a), Values::Except(b)) | (Values::Except(b), Values::Only(a)) => {
                Values::Only(a.difference(b).cloned().collect())
            }
            (Values::Except(a), Values::Except(b)) => Values::Except(a.union(b).cloned().collect()),
        };
        let mut out = Requirement {
            key: self.key.clone(),
            absent_ok: self.absent_ok && other.absent_ok,
            values,
            greater_than: max_opt(self.greater_than, other.greater_than),
            less_than: min_opt(self.less_than, other.less_than),
            min_values: max_opt(self.min_values, other.min_values),
        };
        out.normalize();
        out
    }

    /// A finite value set absorbs the bounds, so `Only` never carries them.
    fn normalize(&mut self) {
        if let Values::Only(set) = &self.values
            && (self.greater_than.is_some() || self.less_than.is_some())
        {
            let kept: BTreeSet<String> = set.iter().filter(|v| self.within_bounds(v)).cloned().collect();
            self.values = Values::Only(kept);
            self.greater_than = None;
            self.less_than = None;
        }
    }

    /// The closest single operator, for display and for the API form.
    pub fn operator(&self) -> Operator {
        match (&self.values, self.absent_ok) {
            (Values::Only(set), true) if set.is_empty() => Operator::DoesNotExist,
            (Values::Only(_), _) => Operator::In,
            (Values::Except(set), true) if !set.is_empty() => Operator::NotIn,
            (Values::Except(_), _) if self.greater_than.is_some() => Operator::Gt,
            (Values::Except(_), _) if self.less_than.is_some() => Operator::Lt,
            (Values::Except(_), _) => Operator::Exists,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        write!(f, "{}", self.key)?;
        match (&self.values, self.absent_ok) {
            (Values::Only(set), true) if set.is_empty() => write!(f, " DoesNotExist")?,
            (Values::Only(set), false) if set.is_empty() => write!(f, " In [] (no value possible)")?,
            (Values::Only(set), absent) => {
                write!(f, " In [{}]", list(set))?;
                if absent {
                    write!(f, " or absent")?;
                }
            }
            (Values::Except(set), absent) => {
                let mut wrote = false;
                if !set.is_empty() {
                    write!(f, " NotIn [{}]", list(set))?;
                    wrote = true;
                }
                if let Some(gt) = self.greater_than {
                    write!(f, " Gt {gt}")?;
                    wrote = true;
                }
                if let Some(lt) = self.less_than {
                    write!(f, " Lt {lt}")?;
                    wrote = true;
                }
                if !wrote {
                    write!(f, "{}", if absent { " (any or absent)" } else { " Exists" })?;
                } else if !absent && !set.is_empty() {
                    write!(f, " (must exist)")?;
                }
            }
        }
        if let Some(min) = self.min_values {
            write!(f, " minValues {min}")?;
        }
        Ok(())
    }
}

fn max_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Why two requirement sets cannot both hold: the key, what was asked and what is offered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Incompatibility {
    #[error("{wanted} conflicts with {offered}")]
    Conflict { key: String, wanted: String, offered: String },
    #[error("label {key} is not defined here (wanted {wanted})")]
    Undefined { key: String, wanted: String },
}

impl Incompatibility {
    /// The label key in conflict.
    pub fn key(&self) -> &str {
        match self {
            Incompatibility::Conflict { key, .. } | Incompatibility::Undefined { key, .. } => key,
        }
    }
}

/// A conjunction of requirements, at most one per key (adding a second one intersects them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Requirements {
    by_key: BTreeMap<String, Requirement>,
}

impl Requirements {
    /// No requirements: everything matches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requirements stating a node's labels: `key In [value]` for each.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        labels.into_iter().map(|(k, v)| Requirement::single(k, v)).collect()
    }

    /// Adds a requirement, intersecting it with any already present for the key.
    pub fn add(&mut self, requirement: Requirement) {
        match self.by_key.get_mut(&requirement.key) {
            Some(existing) => *existing = existing.intersection(&requirement),
            None => {
                self.by_key.insert(requirement.key.clone(), requirement);
            }
        }
    }

    /// Builder form of [`Requirements::add`].
    pub fn with(mut self, requirement: Requirement) -> Self {
        self.add(requirement);
        self
    }

    /// The requirement for a key.
    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.by_key.get(labels::normalize_key(key))
    }

    /// Whether the key is constrained.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The requirements, by key.
    pub fn iter(&self) -> impl Iterator<Item = &Requirement> {
        self.by_key.values()
    }

    /// The number of keys constrained.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is constrained.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Both sets of requirements at once.
    pub fn intersection(&self, other: &Requirements) -> Requirements {
        let mut out = self.clone();
        for r in other.iter() {
            out.add(r.clone());
        }
        out
    }

    /// The first requirement no node can satisfy, if any.
    pub fn unsatisfiable(&self) -> Option<&Requirement> {
        self.iter().find(|r| !r.is_satisfiable())
    }

    /// Whether some node could satisfy every requirement.
    pub fn is_satisfiable(&self) -> bool {
        self.unsatisfiable().is_none()
    }

    /// Whether the keys both sets constrain admit a common state (keys only one side names are ignored).
    pub fn intersects(&self, other: &Requirements) -> Result<(), Incompatibility> {
        for theirs in other.iter() {
            if let Some(ours) = self.by_key.get(&theirs.key)
                && !ours.intersection(theirs).is_satisfiable()
            {
                return Err(Incompatibility::Conflict {
                    key: theirs.key.clone(),
                    wanted: theirs.to_string(),
                    offered: ours.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Karpenter's compatibility check, `self` being the node side (a NodePool template, an instance type):
    /// every key `incoming` constrains must intersect with ours. A key we leave undefined is accepted when it
    /// is well-known (instance types and offerings define it later) or when `incoming` admits an absent label
    /// (`NotIn`, `DoesNotExist`); any other undefined key cannot be met.
    pub fn compatible(&self, incoming: &Requirements) -> Result<(), Incompatibility> {
        self.compatible_with(incoming, labels::is_well_known)
    }

    /// [`Requirements::compatible`] with a caller-chosen set of keys that may stay undefined.
    pub fn compatible_with(
        &self,
        incoming: &Requirements,
        allow_undefined: impl Fn(&str) -> bool,
    ) -> Result<(), Incompatibility> {
        for theirs in incoming.iter() {
            match self.by_key.get(&theirs.key) {
                Some(ours) if !ours.intersection(theirs).is_satisfiable() => {
                    return Err(Incompatibility::Conflict {
                        key: theirs.key.clone(),
                        wanted: theirs.to_string(),
                        offered: ours.to_string(),
                    });
                }
                Some(_) => {}
                None if theirs.absent_ok || allow_undefined(&theirs.key) => {}
                None => {
                    return Err(Incompatibility::Undefined {
                        key: theirs.key.clone(),
                        wanted: theirs.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether a concrete node's labels satisfy every requirement.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.first_mismatch(labels).is_none()
    }

    /// The first requirement a concrete node's labels violate.
    pub fn first_mismatch(&self, labels: &BTreeMap<String, String>) -> Option<&Requirement> {
        self.iter().find(|r| !r.matches(labels.get(&r.key).map(String::as_str)))
    }

    /// The labels these requirements pin to exactly one value (what a node launched for them will carry).
    pub fn single_valued_labels(&self) -> BTreeMap<String, String> {
        self.iter()
            .filter(|r| !r.absent_ok)
            .filter_map(|r| match &r.values {
                Values::Only(set) if set.len() == 1 => Some((r.key.clone(), set.first()?.clone())),
                _ => None,
            })
            .collect()
    }
}

impl FromIterator<Requirement> for Requirements {
    fn from_iter<I: IntoIterator<Item = Requirement>>(iter: I) -> Self {
        let mut out = Requirements::new();
        for r in iter {
            out.add(r);
        }
        out
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// One node selector requirement in its API form (`{key, operator, values, minValues}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_values: Option<u32>,
}

impl SelectorRequirement {
    /// Parses the API form into a [`Requirement`], with errors naming the key.
    pub fn to_requirement(&self) -> Result<Requirement, RequirementError> {
        let operator: Operator = self
            .operator
            .parse()
            .map_err(|operator| RequirementError::UnknownOperator { key: self.key.clone(), operator })?;
        let r = Requirement::new(&self.key, operator, &self.values)?;
        match self.min_values {
            Some(min) => r.with_min_values(min),
            None => Ok(r),
        }
    }
}

/// Where a pod may run: its node selector and required node affinity, as alternatives (the affinity's
/// ORed `nodeSelectorTerms`, each ANDed with the node selector). A pod matches a node when any alternative does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAffinity {
    alternatives: Vec<Requirements>,
}

impl NodeAffinity {
    /// No constraint: any node.
    pub fn any() -> Self {
        NodeAffinity { alternatives: vec![Requirements::new()] }
    }

    /// From a pod's `nodeSelector` and the `matchExpressions` of each required `nodeSelectorTerm`.
    /// As in Kubernetes, a term with no expressions matches nothing; with no terms, only the selector applies.
    pub fn from_pod_spec<'a>(
        node_selector: impl IntoIterator<Item = (&'a str, &'a str)>,
        required_terms: Option<&[Vec<SelectorRequirement>]>,
    ) -> Result<Self, RequirementError> {
        let base = Requirements::from_labels(node_selector);
        let alternatives = match required_terms {
            None => vec![base],
            Some(terms) => {
                let mut alternatives = Vec::with_capacity(terms.len());
                for term in terms.iter().filter(|t| !t.is_empty()) {
                    let mut reqs = base.clone();
                    for expr in term {
                        reqs.add(expr.to_requirement()?);
                    }
                    alternatives.push(reqs);
                }
                alternatives
            }
        };
        Ok(NodeAffinity { alternatives })
    }

    /// Builds from explicit alternatives.
    pub fn from_alternatives(alternatives: Vec<Requirements>) -> Self {
        NodeAffinity { alternatives }
    }

    /// The ORed alternatives.
    pub fn alternatives(&self) -> &[Requirements] {
        &self.alternatives
    }

    /// The first alternative compatible with the node side, or the reason the first one is not.
    pub fn compatible(&self, node: &Requirements) -> Result<&Requirements, Incompatibility> {
        let mut first_err = None;
        for alt in &self.alternatives {
            match node.compatible(alt) {
                Ok(()) => return Ok(alt),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| Incompatibility::Undefined {
            key: "nodeAffinity".into(),
            wanted: "a required node affinity whose terms are all empty, which matches no node".into(),
        }))
    }

    /// Whether a concrete node's labels satisfy some alternative.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.alternatives.iter().any(|alt| alt.matches_labels(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{ARCH, CAPACITY_TYPE, ZONE};
    use proptest::prelude::*;

    fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
        Requirement::new(key, op, values).unwrap()
    }

    #[test]
    fn operators_admit_the_kubernetes_states() {
        let r#in = req("k", Operator::In, &["a", "b"]);
        assert!(r#in.matches(Some("a")) && !r#in.matches(Some("c")) && !r#in.matches(None));
        let not_in = req("k", Operator::NotIn, &["a"]);
        assert!(!not_in.matches(Some("a")) && not_in.matches(Some("c")) && not_in.matches(None));
        let exists = req("k", Operator::Exists, &[]);
        assert!(exists.matches(Some("x")) && !exists.matches(None));
        let dne = req("k", Operator::DoesNotExist, &[]);
        assert!(!dne.matches(Some("x")) && dne.matches(None));
        let gt = req("k", Operator::Gt, &["4"]);
        assert!(
            gt.matches(Some("5")) && !gt.matches(Some("4")) && !gt.matches(Some("x")) && !gt.matches(None)
        );
        let gte = req("k", Operator::Gte, &["4"]);
        assert!(gte.matches(Some("4")) && !gte.matches(Some("3")));
        let lt = req("k", Operator::Lt, &["4"]);
        assert!(lt.matches(Some("3")) && !lt.matches(Some("4")) && lt.matches(Some("-7")));
        let lte = req("k", Operator::Lte, &["4"]);
        assert!(lte.matches(Some("4")) && !lte.matches(Some("5")));
    }

    #[test]
    fn intersection_of_sets() {
        let a = req("k", Operator::In, &["a", "b", "c"]);
        let b = req("k", Operator::In, &["b", "c", "d"]);
        let both = a.intersection(&b);
        assert_eq!(both.values().unwrap().iter().map(String::as_str).collect::<Vec<_>>(), ["b", "c"]);
        let not_b = req("k", Operator::NotIn, &["b"]);
        assert_eq!(both.intersection(&not_b).values().unwrap().len(), 1);
        let not_c = req("k", Operator::NotIn, &["c"]);
        let neither = not_b.intersection(&not_c);
        assert_eq!(neither.operator(), Operator::NotIn);
        assert!(neither.matches(None) && neither.matches(Some("a")) && !neither.matches(Some("c")));
    }

    #[test]
    fn unsatisfiable_cases() {
        let a = req("k", Operator::In, &["a"]);
        let b = req("k", Operator::In, &["b"]);
        assert!(!a.intersection(&b).is_satisfiable(), "disjoint In sets");
        assert!(
            !a.intersection(&req("k", Operator::DoesNotExist, &[])).is_satisfiable(),
            "In vs DoesNotExist"
        );
        assert!(
            !a.intersection(&req("k", Operator::NotIn, &["a"])).is_satisfiable(),
            "In vs NotIn same value"
        );
        assert!(
            !req("k", Operator::Exists, &[])
                .intersection(&req("k", Operator::DoesNotExist, &[]))
                .is_satisfiable(),
            "Exists vs DoesNotExist"
        );
        assert!(
            !req("k", Operator::Gt, &["3"]).intersection(&req("k", Operator::Lt, &["4"])).is_satisfiable(),
            "no integer in (3, 4)"
        );
        assert!(
            req("k", Operator::Gt, &["3"]).intersection(&req("k", Operator::Lt, &["5"])).is_satisfiable()
        );
        assert!(
            !req("k", Operator::Gte, &["5"]).intersection(&req("k", Operator::Lte, &["4"])).is_satisfiable()
        );
        assert!(
            req("k", Operator::Gte, &["5"]).intersection(&req("k", Operator::Lte, &["5"])).is_satisfiable()
        );
        assert!(
            !req("k", Operator::In, &["2", "x"])
                .intersection(&req("k", Operator::Gt, &["2"]))
                .is_satisfiable(),
            "bounds filter a finite set, non-integers included"
        );
        // NotIn and DoesNotExist both admit an absent label, so they are compatible.
        assert!(
            req("k", Operator::NotIn, &["a"])
                .intersection(&req("k", Operator::DoesNotExist, &[]))
                .is_satisfiable()
        );
    }

    #[test]
    fn bounds_with_finite_sets_and_extremes() {
        let r =
            req("k", Operator::In, &["1", "8", "16", "big"]).intersection(&req("k", Operator::Gte, &["8"]));
        assert_eq!(r.values().unwrap().iter().map(String::as_str).collect::<Vec<_>>(), ["16", "8"]);
        assert_eq!(r.operator(), Operator::In);
        let r = req("k", Operator::Gt, &["9223372036854775807"]);
        assert!(!r.is_satisfiable(), "nothing is above i64::MAX");
        let r = req("k", Operator::Gte, &["-9223372036854775808"]);
        assert!(r.matches(Some("-9223372036854775808")));
    }

    #[test]
    fn bad_requirements_are_errors_naming_the_key() {
        let err = Requirement::new::<&str>("team", Operator::In, &[]).unwrap_err();
        assert_eq!(err.to_string(), "requirement team: operator In needs at least one value");
        let err = Requirement::new("team", Operator::Gt, &["x"]).unwrap_err();
        assert_eq!(err.to_string(), "requirement team: operator Gt needs an integer, got \"x\"");
        assert!(matches!(
            Requirement::new("k", Operator::Lt, &["1", "2"]),
            Err(RequirementError::WrongValueCount { .. })
        ));
        assert!(matches!(
            Requirement::new("k", Operator::Exists, &["1"]),
            Err(RequirementError::UnexpectedValues { .. })
        ));
        assert!(matches!(
            Requirement::new::<&str>("  ", Operator::Exists, &[]),
            Err(RequirementError::EmptyKey)
        ));
        let sel = SelectorRequirement {
            key: "k".into(),
            operator: "Within".into(),
            values: vec![],
            min_values: None,
        };
        assert_eq!(
            sel.to_requirement().unwrap_err().to_string(),
            "requirement k: unknown operator \"Within\" (expected In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte or Lte)"
        );
    }

    #[test]
    fn min_values() {
        let r = req("k", Operator::In, &["a", "b", "c"]).with_min_values(2).unwrap();
        assert_eq!(r.min_values(), Some(2));
        assert!(r.min_values_possible());
        let narrowed = r.intersection(&req("k", Operator::In, &["a", "z"]));
        assert_eq!(narrowed.min_values(), Some(2), "minValues survives intersection");
        assert!(!narrowed.min_values_possible(), "one value left, two needed");
        assert!(narrowed.is_satisfiable(), "minValues is a launch-flexibility rule, not satisfiability");
        assert!(req("k", Operator::In, &["a"]).with_min_values(2).is_err());
        assert!(req("k", Operator::Exists, &[]).with_min_values(0).is_err());
        assert!(req("k", Operator::Exists, &[]).with_min_values(51).is_err());
        let higher = req("k", Operator::Exists, &[]).with_min_values(3).unwrap();
        assert_eq!(r.intersection(&higher).min_values(), Some(3), "the larger minValues wins");
        let sel = SelectorRequirement {
            key: "k".into(),
            operator: "In".into(),
            values: vec!["a".into()],
            min_values: Some(2),
        };
        assert!(matches!(sel.to_requirement(), Err(RequirementError::MinValues { .. })));
    }

    #[test]
    fn keys_are_normalised() {
        let r = req("beta.kubernetes.io/arch", Operator::In, &["arm64"]);
        assert_eq!(r.key(), ARCH);
        let reqs = Requirements::new().with(req("cartwright.sh/capacity-type", Operator::In, &["spot"]));
        assert!(reqs.get(CAPACITY_TYPE).is_some());
    }

    #[test]
    fn compatibility_follows_karpenter() {
        let nodepool = Requirements::new()
            .with(req(ZONE, Operator::In, &["us-east-1a", "us-east-1b"]))
            .with(req("team", Operator::In, &["web"]));
        // Defined keys must intersect.
        assert!(
            nodepool.compatible(&Requirements::new().with(req(ZONE, Operator::In, &["us-east-1b"]))).is_ok()
        );
        let err = nodepool
            .compatible(&Requirements::new().with(req(ZONE, Operator::In, &["us-east-1c"])))
            .unwrap_err();
        assert_eq!(err.key(), ZONE);
        assert!(err.to_string().contains("us-east-1c"), "{err}");
        // Undefined well-known keys are allowed; undefined custom keys are not, unless absence is admitted.
        assert!(nodepool.compatible(&Requirements::new().with(req(ARCH, Operator::In, &["arm64"]))).is_ok());
        let err =
            nodepool.compatible(&Requirements::new().with(req("gpu", Operator::Exists, &[]))).unwrap_err();
        assert!(matches!(err, Incompatibility::Undefined { .. }), "{err}");
        assert!(
            nodepool.compatible(&Requirements::new().with(req("gpu", Operator::DoesNotExist, &[]))).is_ok()
        );
        assert!(
            nodepool.compatible(&Requirements::new().with(req("gpu", Operator::NotIn, &["a100"]))).is_ok()
        );
        // intersects ignores keys only one side has.
        assert!(nodepool.intersects(&Requirements::new().with(req("gpu", Operator::Exists, &[]))).is_ok());
    }

    #[test]
    fn concrete_labels() {
        let labels: BTreeMap<String, String> = [("team", "web"), (ZONE, "us-east-1a")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let reqs = Requirements::new().with(req("team", Operator::In, &["web"])).with(req(
            "gpu",
            Operator::DoesNotExist,
            &[],
        ));
        assert!(reqs.matches_labels(&labels));
        let reqs = reqs.with(req(ZONE, Operator::NotIn, &["us-east-1a"]));
        assert_eq!(reqs.first_mismatch(&labels).unwrap().key(), ZONE);
        let pinned = Requirements::new().with(req(ZONE, Operator::In, &["a"])).with(req(
            "x",
            Operator::In,
            &["1", "2"],
        ));
        assert_eq!(pinned.single_valued_labels().len(), 1);
    }

    #[test]
    fn node_affinity_terms_are_ored_and_anded_with_the_selector() {
        let term = |k: &str, op: &str, v: &[&str]| SelectorRequirement {
            key: k.into(),
            operator: op.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
            min_values: None,
        };
        let terms = vec![vec![term(ZONE, "In", &["us-east-1a"])], vec![term(ARCH, "In", &["arm64"])], vec![]];
        let affinity = NodeAffinity::from_pod_spec([("team", "web")], Some(&terms)).unwrap();
        assert_eq!(affinity.alternatives().len(), 2, "the empty term matches nothing and is dropped");
        let node = |zone: &str, arch: &str| -> BTreeMap<String, String> {
            [("team", "web"), (ZONE, zone), (ARCH, arch)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(affinity.matches_labels(&node("us-east-1a", "amd64")));
        assert!(affinity.matches_labels(&node("us-east-1b", "arm64")));
        assert!(!affinity.matches_labels(&node("us-east-1b", "amd64")));
        let mut other_team = node("us-east-1a", "arm64");
        other_team.insert("team".into(), "db".into());
        assert!(!affinity.matches_labels(&other_team), "the node selector applies to every term");

        let only_empty = NodeAffinity::from_pod_spec([], Some(&[vec![]])).unwrap();
        assert!(only_empty.compatible(&Requirements::new()).is_err());
        let bad = NodeAffinity::from_pod_spec([], Some(&[vec![term("k", "Gt", &["x"])]]));
        assert!(bad.is_err());
    }

    fn arb_requirement() -> impl Strategy<Value = Requirement> {
        let values = proptest::collection::vec(prop_oneof!["[a-c]", "[0-9]"], 1..3);
        (0usize..8, values).prop_map(|(op, values)| {
            let ops = [
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
                Operator::Gt,
                Operator::Lt,
                Operator::Gte,
                Operator::Lte,
            ];
            let op = ops[op];
            match op {
                Operator::Exists | Operator::DoesNotExist => Requirement::new::<&str>("k", op, &[]).unwrap(),
                Operator::Gt | Operator::Lt | Operator::Gte | Operator::Lte => {
                    let n: String = values[0].chars().filter(char::is_ascii_digit).collect();
                    Requirement::new("k", op, &[if n.is_empty() { "5".to_string() } else { n }]).unwrap()
                }
                _ => Requirement::new("k", op, &values).unwrap(),
            }
        })
    }

    fn states() -> Vec<Option<String>> {
        let mut s: Vec<Option<String>> = vec![None];
        s.extend(["a", "b", "c", "x"].iter().map(|v| Some(v.to_string())));
        s.extend((-1..=11).map(|n| Some(n.to_string())));
        s
    }

    proptest! {
        /// The intersection admits exactly the states both sides admit.
        #[test]
        fn intersection_is_exact(a in arb_requirement(), b in arb_requirement()) {
            let both = a.intersection(&b);
            for state in states() {
                let s = state.as_deref();
                prop_assert_eq!(both.matches(s), a.matches(s) && b.matches(s), "state {:?}: {} ∩ {} = {}", s, a, b, both);
            }
            prop_assert_eq!(both, b.intersection(&a));
        }

        /// Satisfiable exactly when some state matches (the sampled states cover every value the generator
        /// can name, plus an integer beyond each bound it can write).
        #[test]
        fn satisfiable_iff_some_state_matches(a in arb_requirement(), b in arb_requirement()) {
            let both = a.intersection(&b);
            let some_state = states().iter().any(|s| both.matches(s.as_deref()));
            prop_assert_eq!(both.is_satisfiable(), some_state, "{}", both);
        }
    }
}
