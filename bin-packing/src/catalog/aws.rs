//! How an EC2 instance type becomes a schedulable node: capacity, overhead and labels, with the formulas
//! Karpenter documents for AL2023 nodes (see `docs/catalog.md`).
//!
//! - memory capacity = instance memory (− 64 MiB on arm64, reserved by the Graviton firmware) − ⌈7.5 %⌉ VM overhead
//! - kube-reserved cpu = 6 % of the first core + 1 % of the second + 0.5 % of cores 3–4 + 0.25 % of the rest,
//!   each tier rounded down to a millicore
//! - kube-reserved memory = 11 MiB × max pods + 255 MiB; kube-reserved ephemeral storage = 1 GiB
//! - eviction threshold: memory 100 MiB, ephemeral storage 10 % of the root volume (20 GiB by default)
//! - pods = the ENI limit unless `maxPods` is set, capped by `podsPerCore × vCPU`
//!
//! These are used for the embedded catalog and, with live DescribeInstanceTypes data, by the AWS provider.

use serde::{Deserialize, Serialize};

use super::facts::InstanceTypeFacts;
use crate::instance_type::Overhead;
use crate::labels::{self, aws};
use crate::requirements::{Requirement, Requirements};
use crate::resources::Resources;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

/// Node settings that change what an instance type offers (the kubelet part of an EC2NodeClass).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Fraction of instance memory the hypervisor keeps, in millionths (Karpenter: 0.075 -> 75,000).
    pub vm_memory_overhead_ppm: u32,
    /// `kubelet.maxPods`: replaces the ENI limit.
    pub max_pods: Option<u32>,
    /// `kubelet.podsPerCore`: caps pods at this many per vCPU.
    pub pods_per_core: Option<u32>,
    /// `kubelet.kubeReserved`: replaces the computed kube-reserved amounts it names.
    pub kube_reserved: Option<Resources>,
    /// `kubelet.systemReserved`.
    pub system_reserved: Resources,
    /// `kubelet.evictionHard` memory.available, in bytes.
    pub eviction_memory_bytes: i64,
    /// `kubelet.evictionHard` nodefs.available, in millionths of the root volume.
    pub eviction_nodefs_ppm: u32,
    /// Root volume size in bytes (the ephemeral-storage capacity).
    pub root_volume_bytes: i64,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            vm_memory_overhead_ppm: 75_000,
            max_pods: None,
            pods_per_core: None,
            kube_reserved: None,
            system_reserved: Resources::new(),
            eviction_memory_bytes: 100 * MIB,
            eviction_nodefs_ppm: 100_000,
            root_volume_bytes: 20 * GIB,
        }
    }
}

/// The number of pods a node of this type runs.
pub fn pods(facts: &InstanceTypeFacts, settings: &NodeSettings) -> i64 {
    let pods = i64::from(settings.max_pods.unwrap_or(facts.max_pods));
    match settings.pods_per_core {
        Some(per_core) if per_core > 0 => pods.min(i64::from(per_core) * i64::from(facts.vcpu)),
        _ => pods,
    }
}

/// What the kubelet reports as capacity.
pub fn capacity(facts: &InstanceTypeFacts, settings: &NodeSettings) -> Resources {
    let mut memory_mib = facts.memory_mib as i64;
    if facts.arch == super::facts::Arch::Arm64 {
        memory_mib -= 64;
    }
    let overhead_mib = ceil_div(memory_mib * i64::from(settings.vm_memory_overhead_ppm), 1_000_000);
    let mut out = Resources::new()
        .with_cpu_millis(i64::from(facts.vcpu) * 1000)
        .with_memory_bytes((memory_mib - overhead_mib) * MIB)
        .with_pods(pods(facts, settings))
        .with_ephemeral_storage_bytes(settings.root_volume_bytes);
    for (name, count) in facts.extended_resources {
        out = out.with(*name, i64::from(*count));
    }
    out
}

/// kube-reserved cpu in millicores for a number of vCPUs.
pub fn kube_reserved_cpu_millis(vcpu: u32) -> i64 {
    // (tier start, tier end) in millicores and the share reserved, in units of 1/10,000.
    const TIERS: [(i64, i64, i64); 4] =
        [(0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, i64::MAX, 25)];
    let millis = i64::from(vcpu) * 1000;
    TIERS
        .iter()
        .filter(|(start, _, _)| millis > *start)
        .map(|(start, end, per_10k)| (millis.min(*end) - start) * per_10k / 10_000)
        .sum()
}

/// The reservations of a node of this type.
pub fn overhead(facts: &InstanceTypeFacts, settings: &NodeSettings) -> Overhead {
    let pods = pods(facts, settings);
    let mut kube_reserved = Resources::new()
        .with_cpu_millis(kube_reserved_cpu_millis(facts.vcpu))
        .with_memory_bytes((11 * pods + 255) * MIB)
        .with_ephemeral_storage_bytes(GIB);
    if let Some(explicit) = &settings.kube_reserved {
        for (name, amount) in explicit.iter() {
            kube_reserved.set(&name, amount);
        }
    }
    let eviction_threshold =
        Resources::new().with_memory_bytes(settings.eviction_memory_bytes).with_ephemeral_storage_bytes(
            ceil_div(settings.root_volume_bytes * i64::from(settings.eviction_nodefs_ppm), 1_000_000),
        );
    Overhead { kube_reserved, system_reserved: settings.system_reserved.clone(), eviction_threshold }
}

/// The labels a node of this type carries, as requirements: `In [value]` for labels it has and
/// `DoesNotExist` for the well-known labels it lacks (so a pod asking for a GPU name never matches a CPU type).
/// Zone and capacity type come from the offerings and are added by the catalog.
pub fn requirements(facts: &InstanceTypeFacts, region: &str) -> Requirements {
    let mut r = Requirements::new();
    let mut set = |key: &str, value: Option<String>| {
        r.add(match value {
            Some(v) => Requirement::single(key, v),
            None => Requirement::does_not_exist(key),
        });
    };
    set(labels::INSTANCE_TYPE, Some(facts.name.to_owned()));
    set(labels::ARCH, Some(facts.arch.as_str().to_owned()));
    set(labels::OS, Some(facts.os.to_owned()));
    set(labels::REGION, Some(region.to_owned()));
    set(labels::WINDOWS_BUILD, None);
    set(aws::INSTANCE_HYPERVISOR, facts.hypervisor.map(str::to_owned));
    set(aws::INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED, Some(facts.encryption_in_transit.to_string()));
    set(aws::INSTANCE_CATEGORY, Some(facts.category.to_owned()));
    set(aws::INSTANCE_FAMILY, Some(facts.family.to_owned()));
    set(aws::INSTANCE_GENERATION, Some(facts.generation.to_string()));
    set(aws::INSTANCE_LOCAL_NVME, facts.local_nvme_gb.map(|g| g.to_string()));
    set(aws::INSTANCE_SIZE, Some(facts.size.to_owned()));
    set(aws::INSTANCE_CPU, Some(facts.vcpu.to_string()));
    set(aws::INSTANCE_CPU_MANUFACTURER, Some(facts.cpu_manufacturer.to_owned()));
    set(aws::INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ, Some(facts.cpu_sustained_clock_mhz.to_string()));
    set(aws::INSTANCE_MEMORY, Some(facts.memory_mib.to_string()));
    set(aws::INSTANCE_EBS_BANDWIDTH, facts.ebs_bandwidth_mbps.map(|b| b.to_string()));
    set(aws::INSTANCE_NETWORK_BANDWIDTH, facts.network_bandwidth_mbps.map(|b| b.to_string()));
    set(aws::INSTANCE_GPU_NAME, facts.gpu.map(|g| g.name.to_owned()));
    set(aws::INSTANCE_GPU_MANUFACTURER, facts.gpu.map(|g| g.manufacturer.to_owned()));
    set(aws::INSTANCE_GPU_COUNT, facts.gpu.map(|g| g.count.to_string()));
    set(aws::INSTANCE_GPU_MEMORY, facts.gpu.map(|g| g.memory_mib.to_string()));
    set(aws::INSTANCE_ACCELERATOR_NAME, facts.accelerator.map(|a| a.name.to_owned()));
    set(aws::INSTANCE_ACCELERATOR_MANUFACTURER, facts.accelerator.map(|a| a.manufacturer.to_owned()));
    set(aws::INSTANCE_ACCELERATOR_COUNT, facts.accelerator.map(|a| a.count.to_string()));
    set(aws::INSTANCE_CAPABILITY_FLEX, Some(facts.capability_flex.to_string()));
    set(aws::INSTANCE_TENANCY, Some("default".to_owned()));
    r
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1).div_euclid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_tiers() {
        assert_eq!(kube_reserved_cpu_millis(1), 60);
        assert_eq!(kube_reserved_cpu_millis(2), 70);
        assert_eq!(kube_reserved_cpu_millis(4), 80);
        assert_eq!(kube_reserved_cpu_millis(8), 90);
        assert_eq!(kube_reserved_cpu_millis(5), 82, "0.25 % of one core is 2.5 m, rounded down");
        assert_eq!(kube_reserved_cpu_millis(96), 80 + 92 * 25 / 10);
    }
}
