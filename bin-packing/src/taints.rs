//! Taints and tolerations with the Kubernetes matching rules.
//!
//! A toleration matches a taint when its effect is empty or equal, its key is empty (only with `Exists`) or
//! equal, and, for `Equal`, the values are equal. For placing a pod, `NoSchedule` and `NoExecute` taints must
//! all be tolerated; `PreferNoSchedule` is a preference the solver may break.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A taint's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl FromStr for TaintEffect {
    type Err = TaintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "NoSchedule" => Ok(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
            "NoExecute" => Ok(TaintEffect::NoExecute),
            other => Err(TaintError::UnknownEffect(other.to_owned())),
        }
    }
}

impl fmt::Display for TaintEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A malformed taint or toleration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaintError {
    #[error("unknown taint effect {0:?} (expected NoSchedule, PreferNoSchedule or NoExecute)")]
    UnknownEffect(String),
    #[error("taint has an empty key")]
    EmptyKey,
    #[error("toleration {key:?}: unknown operator {operator:?} (expected Equal or Exists)")]
    UnknownOperator { key: String, operator: String },
    #[error("toleration with an empty key must use operator Exists")]
    EmptyKeyNeedsExists,
    #[error("toleration {key:?}: operator Exists takes no value, got {value:?}")]
    ExistsWithValue { key: String, value: String },
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    #[serde(default)]
    pub value: String,
    pub effect: TaintEffect,
}

impl Taint {
    /// A taint; the key must not be empty.
    pub fn new(key: &str, value: &str, effect: TaintEffect) -> Result<Self, TaintError> {
        if key.trim().is_empty() {
            return Err(TaintError::EmptyKey);
        }
        Ok(Taint { key: key.to_owned(), value: value.to_owned(), effect })
    }

    /// Whether the taint keeps pods that do not tolerate it off the node (NoSchedule, NoExecute).
    pub fn is_hard(&self) -> bool {
        self.effect != TaintEffect::PreferNoSchedule
    }
}

impl fmt::Display for Taint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// A toleration operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

/// A pod toleration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Toleration {
    /// Empty matches every key (with `Exists`).
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// `None` matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    /// Builds a toleration from its API form, validated as the API server does. An empty operator means Equal.
    pub fn new(key: &str, operator: &str, value: &str, effect: Option<&str>) -> Result<Self, TaintError> {
        let op = match operator {
            "" | "Equal" => TolerationOperator::Equal,
            "Exists" => TolerationOperator::Exists,
            other => {
                return Err(TaintError::UnknownOperator { key: key.to_owned(), operator: other.to_owned() });
            }
        };
        if key.is_empty() && op != TolerationOperator::Exists {
            return Err(TaintError::EmptyKeyNeedsExists);
        }
        if op == TolerationOperator::Exists && !value.is_empty() {
            return Err(TaintError::ExistsWithValue { key: key.to_owned(), value: value.to_owned() });
        }
        let effect = match effect {
            None | Some("") => None,
            Some(e) => Some(e.parse()?),
        };
        Ok(Toleration { key: key.to_owned(), operator: op, value: value.to_owned(), effect })
    }

    /// Tolerates every taint (`operator: Exists` with no key and no effect).
    pub fn everything() -> Self {
        Toleration {
            key: String::new(),
            operator: TolerationOperator::Exists,
            value: String::new(),
            effect: None,
        }
    }

    /// Tolerates `key` with any value, for the given effect (`None`: any).
    pub fn exists(key: &str, effect: Option<TaintEffect>) -> Self {
        Toleration { key: key.to_owned(), operator: TolerationOperator::Exists, value: String::new(), effect }
    }

    /// Tolerates `key=value`, for the given effect (`None`: any).
    pub fn equal(key: &str, value: &str, effect: Option<TaintEffect>) -> Self {
        Toleration {
            key: key.to_owned(),
            operator: TolerationOperator::Equal,
            value: value.to_owned(),
            effect,
        }
    }

    /// Whether this toleration matches the taint.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            TolerationOperator::Exists => true,
            TolerationOperator::Equal => self.value == taint.value,
        }
    }
}

/// The first hard taint (NoSchedule or NoExecute) that no toleration matches: the reason a pod cannot be
/// placed on a node with these taints. `None` means the pod may be placed.
pub fn first_untolerated<'a>(tolerations: &[Toleration], taints: &'a [Taint]) -> Option<&'a Taint> {
    taints.iter().filter(|t| t.is_hard()).find(|t| !tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// Whether a pod with these tolerations may be placed on a node with these taints.
pub fn tolerates_all(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    first_untolerated(tolerations, taints).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaintEffect::*;

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint::new(key, value, effect).unwrap()
    }

    #[test]
    fn equal_needs_key_value_and_effect() {
        let t = taint("dedicated", "gpu", NoSchedule);
        assert!(Toleration::equal("dedicated", "gpu", Some(NoSchedule)).tolerates(&t));
        assert!(Toleration::equal("dedicated", "gpu", None).tolerates(&t), "no effect matches all effects");
        assert!(!Toleration::equal("dedicated", "cpu", Some(NoSchedule)).tolerates(&t));
        assert!(!Toleration::equal("dedicated", "gpu", Some(NoExecute)).tolerates(&t));
        assert!(!Toleration::equal("other", "gpu", None).tolerates(&t));
        let empty_value = taint("spot", "", NoSchedule);
        assert!(Toleration::equal("spot", "", None).tolerates(&empty_value));
    }

    #[test]
    fn exists_ignores_value_and_empty_key_matches_everything() {
        let t = taint("dedicated", "gpu", NoExecute);
        assert!(Toleration::exists("dedicated", None).tolerates(&t));
        assert!(!Toleration::exists("dedicated", Some(NoSchedule)).tolerates(&t));
        assert!(Toleration::everything().tolerates(&t));
        assert!(Toleration::exists("", Some(NoExecute)).tolerates(&t), "empty key, matching effect");
        assert!(!Toleration::exists("", Some(NoSchedule)).tolerates(&t));
    }

    #[test]
    fn prefer_no_schedule_does_not_block_placement() {
        let taints =
            vec![taint("a", "1", PreferNoSchedule), taint("b", "", NoSchedule), taint("c", "", NoExecute)];
        assert_eq!(first_untolerated(&[], &taints).unwrap().key, "b");
        let tols = vec![Toleration::exists("b", None)];
        assert_eq!(first_untolerated(&tols, &taints).unwrap().key, "c");
        let tols = vec![Toleration::exists("b", None), Toleration::equal("c", "", Some(NoExecute))];
        assert!(tolerates_all(&tols, &taints));
        assert!(tolerates_all(&[], &[]));
    }

    #[test]
    fn api_validation() {
        assert_eq!(Toleration::new("", "Equal", "", None), Err(TaintError::EmptyKeyNeedsExists));
        assert!(matches!(Toleration::new("k", "Exists", "v", None), Err(TaintError::ExistsWithValue { .. })));
        assert!(matches!(Toleration::new("k", "Like", "", None), Err(TaintError::UnknownOperator { .. })));
        assert_eq!(
            Toleration::new("k", "", "v", Some("NoRun")).unwrap_err().to_string(),
            "unknown taint effect \"NoRun\" (expected NoSchedule, PreferNoSchedule or NoExecute)"
        );
        let t = Toleration::new("k", "", "v", Some("NoSchedule")).unwrap();
        assert_eq!(t.operator, TolerationOperator::Equal);
        assert_eq!(Toleration::new("", "Exists", "", None).unwrap(), Toleration::everything());
        assert_eq!(Taint::new(" ", "", NoSchedule), Err(TaintError::EmptyKey));
        assert_eq!(taint("k", "v", NoSchedule).to_string(), "k=v:NoSchedule");
    }
}
