//! `cartwright-core`: the cloud- and Kubernetes-neutral controller logic (state index, batching,
//! provisioning, node lifecycle, disruption, HPA headroom), written against the `CloudProvider`,
//! `ClusterApi` and `Clock` traits.
//!
//! So far: the HorizontalPodAutoscaler algorithm ([`hpa`]), the provisioning batch window ([`batcher`]),
//! the provisioning decision ([`provisioning`]: cluster snapshot to solver problem, plan to node labels),
//! the node lifecycle steps ([`lifecycle`]) and the [`cloud::CloudProvider`] trait, pure and driven by the
//! caller's clock, shared by the simulator and the controller.
#![forbid(unsafe_code)]

pub mod batcher;
pub mod cloud;
pub mod disruption;
pub mod headroom;
pub mod hpa;
pub mod lifecycle;
pub mod provisioning;

pub use cartwright_binpack as binpack;
