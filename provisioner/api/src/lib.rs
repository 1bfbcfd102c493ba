//! `cartwright-api`: the custom resources NodePool and NodeClaim (`cartwright.sh/v1`) and EC2NodeClass
//! (`aws.cartwright.sh/v1`), field-compatible with Karpenter v1, with conversions into core types.
//!
//! So far: [`NodePool`] and [`manifests`], which reads ordinary Kubernetes YAML (Pods, workloads,
//! DaemonSets, Nodes, NodePools) into a solver problem. NodeClaim and EC2NodeClass arrive with the controller.
#![forbid(unsafe_code)]

pub mod catalog_file;
pub mod manifests;
pub mod nodepool;

pub use manifests::{ManifestError, Manifests};
pub use nodepool::{NodePool, NodePoolSpec};
