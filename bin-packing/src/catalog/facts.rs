//! The shape of the embedded instance-type facts (one row of `data/instance_types.csv`) and price tables.
//! The values live in `generated.rs`, written by `cartwright-catalog-gen`.

/// CPU architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The `kubernetes.io/arch` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// The GPUs of an instance type (all of one model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuFacts {
    pub name: &'static str,
    pub manufacturer: &'static str,
    pub count: u32,
    pub memory_mib: u64,
}

/// The non-GPU accelerators of an instance type (Inferentia, Trainium, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcceleratorFacts {
    pub name: &'static str,
    pub manufacturer: &'static str,
    pub count: u32,
}

/// What EC2 says about an instance type, independent of region and of node configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceTypeFacts {
    pub name: &'static str,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub arch: Arch,
    pub os: &'static str,
    pub family: &'static str,
    pub category: &'static str,
    pub generation: u32,
    pub size: &'static str,
    pub hypervisor: Option<&'static str>,
    pub cpu_manufacturer: &'static str,
    pub cpu_sustained_clock_mhz: u32,
    pub network_bandwidth_mbps: Option<u32>,
    pub ebs_bandwidth_mbps: Option<u32>,
    pub local_nvme_gb: Option<u32>,
    pub encryption_in_transit: bool,
    pub capability_flex: bool,
    pub gpu: Option<GpuFacts>,
    pub accelerator: Option<AcceleratorFacts>,
    /// ENI-limited pods: ENIs × (IPv4 addresses per ENI − 1) + 2.
    pub max_pods: u32,
    /// Device-plugin resources a node of this type advertises (`nvidia.com/gpu`, `vpc.amazonaws.com/pod-eni`, ...).
    pub extended_resources: &'static [(&'static str, u32)],
}

/// On-demand Linux prices for one region, as (index into the instance types, nano-dollars per hour).
#[derive(Clone, Copy, Debug)]
pub struct RegionPrices {
    pub region: &'static str,
    pub prices: &'static [(u16, u64)],
}
