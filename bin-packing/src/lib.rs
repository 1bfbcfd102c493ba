//! `cartwright-binpack`: the scheduling domain model, the instance catalog and (next) the solver.
//!
//! Everything here is pure, synchronous and deterministic: no Kubernetes client, no AWS SDK, no async
//! runtime. Quantities are parsed once at the boundary into exact integers ([`quantity`], [`resources`]);
//! label constraints follow Karpenter v1 ([`requirements`]); taints follow Kubernetes ([`taints`]); and the
//! [`catalog`] turns EC2 facts into instance types with allocatable resources, labels and priced offerings.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod instance_type;
pub mod labels;
pub mod quantity;
pub mod requirements;
pub mod resources;
pub mod solver;
pub mod taints;

pub use catalog::{Catalog, CatalogError, CatalogOptions, NodeSettings, SpotPriceModel};
pub use instance_type::{CapacityType, InstanceType, Offering, Overhead, Price};
pub use quantity::{Quantity, QuantityError};
pub use requirements::{
    Incompatibility, NodeAffinity, Operator, Requirement, RequirementError, Requirements,
};
pub use resources::{ResourceName, Resources};
pub use taints::{Taint, TaintEffect, Toleration};
