//! Well-known node label keys and their normalisation.
//!
//! Cartwright puts the same labels on nodes that Karpenter does, under the same keys, so that pods, NodePools
//! and dashboards written for Karpenter keep working unchanged. `cartwright.sh/capacity-type` and
//! `cartwright.sh/nodepool` are accepted as aliases of the `karpenter.sh/` keys, as are the deprecated beta
//! Kubernetes keys.

/// `topology.kubernetes.io/zone`
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// `topology.kubernetes.io/region`
pub const REGION: &str = "topology.kubernetes.io/region";
/// `node.kubernetes.io/instance-type`
pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// `kubernetes.io/arch`
pub const ARCH: &str = "kubernetes.io/arch";
/// `kubernetes.io/os`
pub const OS: &str = "kubernetes.io/os";
/// `kubernetes.io/hostname`
pub const HOSTNAME: &str = "kubernetes.io/hostname";
/// `node.kubernetes.io/windows-build`
pub const WINDOWS_BUILD: &str = "node.kubernetes.io/windows-build";
/// `karpenter.sh/capacity-type` (values `spot`, `on-demand`, `reserved`)
pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
/// `karpenter.sh/nodepool`
pub const NODEPOOL: &str = "karpenter.sh/nodepool";

/// The AWS instance-type labels, `karpenter.k8s.aws/instance-*`.
pub mod aws {
    pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
    pub const INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED: &str =
        "karpenter.k8s.aws/instance-encryption-in-transit-supported";
    pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
    pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
    pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
    pub const INSTANCE_LOCAL_NVME: &str = "karpenter.k8s.aws/instance-local-nvme";
    pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
    pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
    pub const INSTANCE_CPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-cpu-manufacturer";
    pub const INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ: &str =
        "karpenter.k8s.aws/instance-cpu-sustained-clock-speed-mhz";
    pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
    pub const INSTANCE_EBS_BANDWIDTH: &str = "karpenter.k8s.aws/instance-ebs-bandwidth";
    pub const INSTANCE_NETWORK_BANDWIDTH: &str = "karpenter.k8s.aws/instance-network-bandwidth";
    pub const INSTANCE_GPU_NAME: &str = "karpenter.k8s.aws/instance-gpu-name";
    pub const INSTANCE_GPU_MANUFACTURER: &str = "karpenter.k8s.aws/instance-gpu-manufacturer";
    pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
    pub const INSTANCE_GPU_MEMORY: &str = "karpenter.k8s.aws/instance-gpu-memory";
    pub const INSTANCE_ACCELERATOR_NAME: &str = "karpenter.k8s.aws/instance-accelerator-name";
    pub const INSTANCE_ACCELERATOR_MANUFACTURER: &str = "karpenter.k8s.aws/instance-accelerator-manufacturer";
    pub const INSTANCE_ACCELERATOR_COUNT: &str = "karpenter.k8s.aws/instance-accelerator-count";
    pub const INSTANCE_CAPABILITY_FLEX: &str = "karpenter.k8s.aws/instance-capability-flex";
    pub const INSTANCE_TENANCY: &str = "karpenter.k8s.aws/instance-tenancy";

    /// Every AWS instance-type label key, in a fixed order.
    pub const ALL: &[&str] = &[
        INSTANCE_HYPERVISOR,
        INSTANCE_ENCRYPTION_IN_TRANSIT_SUPPORTED,
        INSTANCE_CATEGORY,
        INSTANCE_FAMILY,
        INSTANCE_GENERATION,
        INSTANCE_LOCAL_NVME,
        INSTANCE_SIZE,
        INSTANCE_CPU,
        INSTANCE_CPU_MANUFACTURER,
        INSTANCE_CPU_SUSTAINED_CLOCK_SPEED_MHZ,
        INSTANCE_MEMORY,
        INSTANCE_EBS_BANDWIDTH,
        INSTANCE_NETWORK_BANDWIDTH,
        INSTANCE_GPU_NAME,
        INSTANCE_GPU_MANUFACTURER,
        INSTANCE_GPU_COUNT,
        INSTANCE_GPU_MEMORY,
        INSTANCE_ACCELERATOR_NAME,
        INSTANCE_ACCELERATOR_MANUFACTURER,
        INSTANCE_ACCELERATOR_COUNT,
        INSTANCE_CAPABILITY_FLEX,
        INSTANCE_TENANCY,
    ];
}

/// The keys a NodePool may leave undefined and still be compatible with a pod that constrains them: the
/// instance types and offerings define them later. Any other key a pod requires must be defined by the
/// NodePool (its requirements or template labels).
pub fn is_well_known(key: &str) -> bool {
    matches!(key, ZONE | REGION | INSTANCE_TYPE | ARCH | OS | WINDOWS_BUILD | CAPACITY_TYPE | NODEPOOL)
        || aws::ALL.contains(&key)
}

/// Maps deprecated and alias keys onto the keys Cartwright uses.
pub fn normalize_key(key: &str) -> &str {
    match key {
        "failure-domain.beta.kubernetes.io/zone" => ZONE,
        "failure-domain.beta.kubernetes.io/region" => REGION,
        "beta.kubernetes.io/arch" => ARCH,
        "beta.kubernetes.io/os" => OS,
        "beta.kubernetes.io/instance-type" => INSTANCE_TYPE,
        "cartwright.sh/capacity-type" => CAPACITY_TYPE,
        "cartwright.sh/nodepool" => NODEPOOL,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_normalise_to_the_karpenter_keys() {
        assert_eq!(normalize_key("failure-domain.beta.kubernetes.io/zone"), ZONE);
        assert_eq!(normalize_key("cartwright.sh/capacity-type"), CAPACITY_TYPE);
        assert_eq!(normalize_key("example.com/team"), "example.com/team");
    }

    #[test]
    fn hostname_and_custom_keys_are_not_well_known() {
        assert!(is_well_known(ZONE));
        assert!(is_well_known(aws::INSTANCE_FAMILY));
        assert!(!is_well_known(HOSTNAME));
        assert!(!is_well_known("example.com/team"));
    }
}
