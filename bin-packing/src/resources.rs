//! Resource vectors: what a pod requests and what a node offers, as exact integers.
//!
//! cpu is counted in millicores, memory and ephemeral storage in bytes, pods and devices in whole units.
//! The four core dimensions are fields (they are on every hot path); any other resource (GPUs, Neuron
//! devices, `vpc.amazonaws.com/pod-eni`, hugepages) lives in a small sorted list. Absent means zero.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::quantity::{QuantityError, parse_cpu_millis, parse_units};

/// `nvidia.com/gpu`
pub const NVIDIA_GPU: &str = "nvidia.com/gpu";
/// `amd.com/gpu`
pub const AMD_GPU: &str = "amd.com/gpu";
/// `aws.amazon.com/neuron`
pub const AWS_NEURON: &str = "aws.amazon.com/neuron";
/// `aws.amazon.com/neuroncore`
pub const AWS_NEURON_CORE: &str = "aws.amazon.com/neuroncore";
/// `vpc.amazonaws.com/pod-eni`
pub const AWS_POD_ENI: &str = "vpc.amazonaws.com/pod-eni";
/// `vpc.amazonaws.com/efa`
pub const AWS_EFA: &str = "vpc.amazonaws.com/efa";

/// The name of one resource dimension.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResourceName {
    Cpu,
    Memory,
    Pods,
    EphemeralStorage,
    /// Any other resource, by its Kubernetes name (`nvidia.com/gpu`, `hugepages-2Mi`, ...).
    Other(String),
}

impl ResourceName {
    /// The Kubernetes name of the resource.
    pub fn as_str(&self) -> &str {
        match self {
            ResourceName::Cpu => "cpu",
            ResourceName::Memory => "memory",
            ResourceName::Pods => "pods",
            ResourceName::EphemeralStorage => "ephemeral-storage",
            ResourceName::Other(name) => name,
        }
    }

    /// Whether this is an accelerator counted as a GPU-like device.
    pub fn is_accelerator(&self) -> bool {
        matches!(self, ResourceName::Other(n) if [NVIDIA_GPU, AMD_GPU, AWS_NEURON, AWS_NEURON_CORE, "habana.ai/gaudi"].contains(&n.as_str()))
    }
}

impl From<&str> for ResourceName {
    fn from(name: &str) -> Self {
        match name {
            "cpu" => ResourceName::Cpu,
            "memory" => ResourceName::Memory,
            "pods" => ResourceName::Pods,
            "ephemeral-storage" => ResourceName::EphemeralStorage,
            other => ResourceName::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource list entry that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource {name}: {source}")]
    Quantity {
        name: String,
        #[source]
        source: QuantityError,
    },
    #[error("resource {name}: {value:?} must be a whole number (only cpu may be fractional)")]
    Fractional { name: String, value: String },
    #[error("resource name {0:?} is not a valid Kubernetes resource name")]
    BadName(String),
}

/// A vector of resource amounts in exact integer units. Absent dimensions are zero.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// cpu in millicores.
    pub cpu_millis: i64,
    /// memory in bytes.
    pub memory_bytes: i64,
    /// pod slots.
    pub pods: i64,
    /// ephemeral-storage in bytes.
    pub ephemeral_storage_bytes: i64,
    /// Any other resource, sorted by name, never holding a zero.
    extended: Vec<(String, i64)>,
}

impl Resources {
    /// The zero vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builder: sets cpu in millicores.
    pub fn with_cpu_millis(mut self, millis: i64) -> Self {
        self.cpu_millis = millis;
        self
    }

    /// Builder: sets memory in bytes.
    pub fn with_memory_bytes(mut self, bytes: i64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Builder: sets memory in MiB.
    pub fn with_memory_mib(self, mib: i64) -> Self {
        self.with_memory_bytes(mib << 20)
    }

    /// Builder: sets pod slots.
    pub fn with_pods(mut self, pods: i64) -> Self {
        self.pods = pods;
        self
    }

    /// Builder: sets ephemeral storage in bytes.
    pub fn with_ephemeral_storage_bytes(mut self, bytes: i64) -> Self {
        self.ephemeral_storage_bytes = bytes;
        self
    }

    /// Builder: sets any resource by name.
    pub fn with(mut self, name: impl Into<ResourceName>, amount: i64) -> Self {
        self.set(&name.into(), amount);
        self
    }

    /// Parses a Kubernetes resource list (`{"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}`).
    /// Errors name the resource and the value.
    pub fn parse<'a>(list: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, ResourceError> {
        let mut out = Resources::new();
        for (name, value) in list {
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(ResourceError::BadName(name.to_owned()));
            }
            let resource = ResourceName::from(name);
            let err = |source| ResourceError::Quantity { name: name.to_owned(), source };
            let amount = if resource == ResourceName::Cpu {
                parse_cpu_millis(value).map_err(err)?
            } else {
                let units = parse_units(value).map_err(err)?;
                // Devices and pods are integral in Kubernetes; a fractional request is a typo, not a rounding.
                if !matches!(resource, ResourceName::Memory | ResourceName::EphemeralStorage)
                    && !name.starts_with("hugepages-")
                    && parse_cpu_millis(value).map_err(err)? != units * 1000
                {
                    return Err(ResourceError::Fractional { name: name.to_owned(), value: value.to_owned() });
                }
                units
            };
            out.set(&resource, amount);
        }
        Ok(out)
    }

    /// The amount of one resource (zero when absent).
    pub fn get(&self, name: &ResourceName) -> i64 {
        match name {
            ResourceName::Cpu => self.cpu_millis,
            ResourceName::Memory => self.memory_bytes,
            ResourceName::Pods => self.pods,
            ResourceName::EphemeralStorage => self.ephemeral_storage_bytes,
            ResourceName::Other(n) => self.get_extended(n),
        }
    }

    /// The amount of an extended resource by name (zero when absent).
    pub fn get_extended(&self, name: &str) -> i64 {
        match self.extended.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => self.extended[i].1,
            Err(_) => 0,
        }
    }

    /// Sets the amount of one resource.
    pub fn set(&mut self, name: &ResourceName, amount: i64) {
        match name {
            ResourceName::Cpu => self.cpu_millis = amount,
            ResourceName::Memory => self.memory_bytes = amount,
            ResourceName::Pods => self.pods = amount,
            ResourceName::EphemeralStorage => self.ephemeral_storage_bytes = amount,
            ResourceName::Other(n) => match self.extended.binary_search_by(|(k, _)| k.as_str().cmp(n)) {
                Ok(i) if amount == 0 => {
                    self.extended.remove(i);
                }
                Ok(i) => self.extended[i].1 = amount,
                Err(_) if amount == 0 => {}
                Err(i) => self.extended.insert(i, (n.clone(), amount)),
            },
        }
    }

    /// Every non-zero dimension, core ones first, then extended ones by name.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceName, i64)> + '_ {
        [
            (ResourceName::Cpu, self.cpu_millis),
            (ResourceName::Memory, self.memory_bytes),
            (ResourceName::Pods, self.pods),
            (ResourceName::EphemeralStorage, self.ephemeral_storage_bytes),
        ]
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .chain(self.extended.iter().map(|(k, v)| (ResourceName::Other(k.clone()), *v)))
    }

    /// Whether every dimension is zero.
    pub fn is_zero(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Adds `other` in place (saturating: amounts never wrap).
    pub fn add_assign(&mut self, other: &Resources) {
        self.zip_assign(other, i64::saturating_add);
    }

    /// Subtracts `other` in place (saturating; the result may be negative).
    pub fn sub_assign(&mut self, other: &Resources) {
        self.zip_assign(other, i64::saturating_sub);
    }

    /// `self + other`.
    pub fn plus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.add_assign(other);
        out
    }

    /// `self - other` (may be negative in some dimension).
    pub fn minus(&self, other: &Resources) -> Resources {
        let mut out = self.clone();
        out.sub_assign(other);
        out
    }

    /// `self × n`, saturating.
    pub fn times(&self, n: i64) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
            pods: self.pods.saturating_mul(n),
            ephemeral_storage_bytes: self.ephemeral_storage_bytes.saturating_mul(n),
            extended: self
                .extended
                .iter()
                .map(|(k, v)| (k, v.saturating_mul(n)))
                .filter(|&(_, v)| v != 0)
                .map(|(k, v)| (k.clone(), v))
                .collect(),
        }
    }

    /// `self += other × n`, without building the product.
    pub fn add_times(&mut self, other: &Resources, n: i64) {
        self.zip_assign(other, |a, b| a.saturating_add(b.saturating_mul(n)));
    }

    /// `self -= other × n`, without building the product.
    pub fn sub_times(&mut self, other: &Resources, n: i64) {
        self.zip_assign(other, |a, b| a.saturating_sub(b.saturating_mul(n)));
    }

    /// How many copies of these requests fit in `free`, counting every dimension they request (0 when they
    /// request nothing).
    pub fn copies_in(&self, free: &Resources) -> i64 {
        let mut n = i64::MAX;
        let mut dim = |want: i64, have: i64| {
            if want > 0 {
                n = n.min(have.max(0) / want);
            }
        };
        dim(self.cpu_millis, free.cpu_millis);
        dim(self.memory_bytes, free.memory_bytes);
        dim(self.pods, free.pods);
        dim(self.ephemeral_storage_bytes, free.ephemeral_storage_bytes);
        for (k, v) in &self.extended {
            dim(*v, free.get_extended(k));
        }
        if n == i64::MAX { 0 } else { n }
    }

    /// Raises each dimension to at least `other`'s (the element-wise maximum, in place).
    pub fn max_assign(&mut self, other: &Resources) {
        for (name, v) in other.iter() {
            if v > self.get(&name) {
                self.set(&name, v);
            }
        }
    }

    /// Each dimension clamped to at least zero.
    pub fn clamp_non_negative(&self) -> Resources {
        let mut out = Resources::new();
        for (name, v) in self.iter() {
            out.set(&name, v.max(0));
        }
        out
    }

    /// Whether `self` fits within `capacity` in every dimension.
    pub fn fits_in(&self, capacity: &Resources) -> bool {
        self.cpu_millis <= capacity.cpu_millis
            && self.memory_bytes <= capacity.memory_bytes
            && self.pods <= capacity.pods
            && self.ephemeral_storage_bytes <= capacity.ephemeral_storage_bytes
            && self.extended.iter().all(|(k, v)| *v <= capacity.get_extended(k))
    }

    /// The dimensions in which `self` exceeds `capacity`, for "does not fit" reasons.
    pub fn exceeding(&self, capacity: &Resources) -> Vec<ResourceName> {
        self.iter().filter(|(name, v)| *v > capacity.get(name)).map(|(name, _)| name).collect()
    }

    /// The resource list as Kubernetes quantity strings (cpu in millicores, the rest in units).
    pub fn to_quantity_strings(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(name, v)| {
                let text = if name == ResourceName::Cpu {
                    if v % 1000 == 0 { (v / 1000).to_string() } else { format!("{v}m") }
                } else if v != 0 && v % (1 << 30) == 0 {
                    format!("{}Gi", v >> 30)
                } else if v != 0
                    && v % (1 << 20) == 0
                    && matches!(name, ResourceName::Memory | ResourceName::EphemeralStorage)
                {
                    format!("{}Mi", v >> 20)
                } else {
                    v.to_string()
                };
                (name.as_str().to_owned(), text)
            })
            .collect()
    }

    fn zip_assign(&mut self, other: &Resources, op: impl Fn(i64, i64) -> i64) {
        self.cpu_millis = op(self.cpu_millis, other.cpu_millis);
        self.memory_bytes = op(self.memory_bytes, other.memory_bytes);
        self.pods = op(self.pods, other.pods);
        self.ephemeral_storage_bytes = op(self.ephemeral_storage_bytes, other.ephemeral_storage_bytes);
        for (k, v) in &other.extended {
            match self.extended.binary_search_by(|(mine, _)| mine.as_str().cmp(k)) {
                Ok(i) => {
                    let amount = op(self.extended[i].1, *v);
                    if amount == 0 {
                        self.extended.remove(i);
                    } else {
                        self.extended[i].1 = amount;
                    }
                }
                Err(i) => {
                    let amount = op(0, *v);
                    if amount != 0 {
                        self.extended.insert(i, (k.clone(), amount));
                    }
                }
            }
        }
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            self.to_quantity_strings().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        if parts.is_empty() { f.write_str("{}") } else { write!(f, "{{{}}}", parts.join(", ")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_resource_list() {
        let r = Resources::parse([("cpu", "1500m"), ("memory", "2Gi"), (NVIDIA_GPU, "1"), ("pods", "3")])
            .unwrap();
        assert_eq!(r.cpu_millis, 1500);
        assert_eq!(r.memory_bytes, 2 << 30);
        assert_eq!(r.pods, 3);
        assert_eq!(r.get_extended(NVIDIA_GPU), 1);
        assert_eq!(r.get(&ResourceName::from(AMD_GPU)), 0);
    }

    #[test]
    fn errors_name_the_resource_and_value() {
        let err = Resources::parse([("memory", "lots")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resource memory: invalid quantity \"lots\": expected a number such as \"500m\", \"1.5\" or \"2Gi\""
        );
        let err = Resources::parse([(NVIDIA_GPU, "0.5")]).unwrap_err();
        assert!(matches!(err, ResourceError::Fractional { .. }), "{err}");
        assert!(err.to_string().contains("nvidia.com/gpu"));
        assert!(Resources::parse([("", "1")]).is_err());
        assert!(Resources::parse([("cpu", "-1")]).is_err());
    }

    #[test]
    fn arithmetic_and_fit() {
        let node =
            Resources::new().with_cpu_millis(2000).with_memory_mib(4096).with_pods(10).with(NVIDIA_GPU, 1);
        let pod = Resources::new().with_cpu_millis(500).with_memory_mib(1024).with_pods(1);
        assert!(pod.fits_in(&node));
        assert!(pod.times(4).fits_in(&node));
        assert!(!pod.times(5).fits_in(&node));
        assert_eq!(pod.times(5).exceeding(&node), vec![ResourceName::Cpu, ResourceName::Memory]);
        let gpu_pod = pod.clone().with(NVIDIA_GPU, 2);
        assert_eq!(gpu_pod.exceeding(&node), vec![ResourceName::Other(NVIDIA_GPU.into())]);
        let left = node.minus(&pod.times(3));
        assert_eq!(left.cpu_millis, 500);
        assert_eq!(left.get_extended(NVIDIA_GPU), 1);
        assert_eq!(left.plus(&pod.times(3)), node);
        let mut max = pod.clone().with(NVIDIA_GPU, 2);
        max.max_assign(&node);
        assert_eq!((max.cpu_millis, max.get_extended(NVIDIA_GPU)), (2000, 2));
        let gone = node.minus(&Resources::new().with(NVIDIA_GPU, 1));
        assert_eq!(gone.get_extended(NVIDIA_GPU), 0);
        assert!(
            gone.iter().all(|(n, _)| n != ResourceName::Other(NVIDIA_GPU.into())),
            "zero entries are dropped"
        );
    }

    #[test]
    fn scaled_arithmetic_matches_products() {
        let node =
            Resources::new().with_cpu_millis(4000).with_memory_mib(8192).with_pods(10).with(NVIDIA_GPU, 4);
        let pod =
            Resources::new().with_cpu_millis(500).with_memory_mib(1024).with_pods(1).with(NVIDIA_GPU, 1);
        for k in [0, 1, 3, 4] {
            let mut left = node.clone();
            left.sub_times(&pod, k);
            assert_eq!(left, node.minus(&pod.times(k)), "k = {k}");
            let mut back = left.clone();
            back.add_times(&pod, k);
            assert_eq!(back, node, "k = {k}");
        }
        // Every requested dimension counts, the extended ones included; a dimension not requested does not.
        assert_eq!(pod.copies_in(&node), 4);
        assert_eq!(pod.clone().with(NVIDIA_GPU, 0).copies_in(&node), 8);
        assert_eq!(pod.copies_in(&node.minus(&Resources::new().with(NVIDIA_GPU, 4))), 0);
        assert_eq!(Resources::new().copies_in(&node), 0);
        // Room already overdrawn holds none.
        assert_eq!(pod.copies_in(&Resources::new().with_cpu_millis(-1).with_memory_mib(8192)), 0);
        // Using up an extended resource drops its entry, as `minus` does.
        let mut gpus = Resources::new().with(NVIDIA_GPU, 2);
        gpus.sub_times(&Resources::new().with(NVIDIA_GPU, 1), 2);
        assert!(gpus.is_zero());
    }

    #[test]
    fn quantity_strings_round_trip() {
        let r = Resources::new().with_cpu_millis(1500).with_memory_mib(1536).with(AWS_NEURON, 2);
        let strings = r.to_quantity_strings();
        assert_eq!(strings["cpu"], "1500m");
        assert_eq!(strings["memory"], "1536Mi");
        let back = Resources::parse(strings.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, r);
    }
}
