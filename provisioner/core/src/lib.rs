//! `cartwright-core`: the cloud- and Kubernetes-neutral controller logic (state index, batching,
//! provisioning, node lifecycle, disruption, HPA headroom), written against the `CloudProvider`,
//! `ClusterApi` and `Clock` traits.
//!
//! Nothing is here yet: the crate exists so the dependency direction (binpack <- core <- adapters) is fixed
//! and checked from the start. It re-exports the domain model it builds on.
#![forbid(unsafe_code)]

pub use cartwright_binpack as binpack;
