//! `cartwright-api`: the custom resources NodePool and NodeClaim (`cartwright.sh/v1`) and EC2NodeClass
//! (`aws.cartwright.sh/v1`), field-compatible with Karpenter v1, with conversions into core types.
//!
//! The three resources ([`NodePool`], [`NodeClaim`], [`EC2NodeClass`]) and their CRDs ([`crds`]), and
//! [`manifests`], which reads ordinary Kubernetes YAML (Pods, workloads, DaemonSets, Nodes, volumes,
//! NodePools) into a solver problem.
#![forbid(unsafe_code)]

pub mod capacitybuffer;
pub mod catalog_file;
pub mod convert;
pub mod crds;
pub mod ec2nodeclass;
pub mod hpa;
pub mod manifests;
pub mod nodeclaim;
pub mod nodepool;

pub use ec2nodeclass::{EC2NodeClass, EC2NodeClassSpec};
pub use manifests::{ManifestError, Manifests};
pub use nodeclaim::{NodeClaim, NodeClaimSpec};
pub use nodepool::{NodePool, NodePoolSpec};
