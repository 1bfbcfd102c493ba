//! The `CloudProvider` trait: how the controller launches and terminates machines, whatever the cloud
//! (kwok Node objects, EC2 instances), and the memory of offerings that just ran out of capacity.

use std::collections::BTreeMap;
use std::future::Future;

use cartwright_binpack::solver::LaunchOption;
use cartwright_binpack::{CapacityType, Catalog, Resources, Taint};

use crate::hpa::Millis;

/// One NodeClaim to launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchRequest {
    /// The NodeClaim's name: a provider must treat a second request for the same name as the first (after a
    /// controller restart the same claim is launched again) and never start a second machine for it.
    pub nodeclaim: String,
    pub nodepool: String,
    /// The NodePool's node class (an EC2NodeClass's name); empty for providers without one.
    pub node_class: String,
    /// The offerings to try, best first (the plan's ranked alternatives still available).
    pub options: Vec<LaunchOption>,
    /// Labels the node must carry (NodePool template labels, the NodePool's name, narrowed requirements).
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Taints present at start-up only; removed once the node is ready.
    pub startup_taints: Vec<Taint>,
}

/// A launched machine.
#[derive(Clone, Debug, PartialEq)]
pub struct Launched {
    /// The ID the Node reports as `spec.providerID`.
    pub provider_id: String,
    /// The offering it runs on (one of the request's options).
    pub option: LaunchOption,
    pub capacity: Resources,
    pub allocatable: Resources,
}

/// A machine the provider runs for this cluster (for garbage collection).
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub provider_id: String,
    /// The NodeClaim it was launched for, from its tags.
    pub nodeclaim: Option<String>,
    /// When it was launched, if known.
    pub created_ms: Option<Millis>,
    /// Why it no longer matches what its node class would launch now (an AMI, subnet or security group
    /// no longer selected, the class's other fields changed), when the provider can tell.
    pub drifted: Option<String>,
}

/// What the cloud says is about to happen to a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterruptionKind {
    /// A spot instance will be reclaimed in two minutes.
    SpotInterruption,
    /// Scheduled maintenance will retire or reboot the machine.
    ScheduledChange,
    /// The machine is stopping or terminating (outside Cartwright).
    StateChange,
    /// Spot capacity is at elevated risk; nothing is taken yet (noted, not acted on, as in Karpenter).
    RebalanceRecommendation,
}

impl InterruptionKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            InterruptionKind::SpotInterruption => "spot_interruption",
            InterruptionKind::ScheduledChange => "scheduled_change",
            InterruptionKind::StateChange => "state_change",
            InterruptionKind::RebalanceRecommendation => "rebalance_recommendation",
        }
    }

    /// Whether the machine is going away, so its node is replaced and drained now.
    pub fn takes_the_machine(&self) -> bool {
        !matches!(self, InterruptionKind::RebalanceRecommendation)
    }
}

/// An interruption notice for one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interruption {
    /// The machine's ID as the cloud names it: the providerID or its last segment (an EC2 instance ID).
    pub machine: String,
    pub kind: InterruptionKind,
}

impl Interruption {
    /// Whether it concerns the machine with this providerID.
    pub fn is_for(&self, provider_id: &str) -> bool {
        provider_id == self.machine || provider_id.rsplit('/').next() == Some(self.machine.as_str())
    }
}

/// Why a cloud call failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CloudError {
    /// None of these offerings had capacity: mark them unavailable and plan again.
    #[error("insufficient capacity for {}", describe(.0))]
    InsufficientCapacity(Vec<LaunchOption>),
    /// The machine does not exist (already terminated).
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else (throttling, network, permissions): retried on the next pass.
    #[error("{0}")]
    Other(String),
}

fn describe(options: &[LaunchOption]) -> String {
    let names: Vec<String> = options
        .iter()
        .map(|o| format!("{}/{}/{}", o.instance_type, o.zone, o.capacity_type.as_str()))
        .collect();
    names.join(", ")
}

/// Launches and terminates machines. Implementations: the kwok provider (Node objects without machines)
/// and EC2.
pub trait CloudProvider: Send + Sync {
    /// The provider's name (`kwok`, `aws`), as in metrics and the providerID scheme.
    fn name(&self) -> &'static str;

    /// Launches a machine for the request, idempotently per `request.nodeclaim`.
    fn create(&self, request: &LaunchRequest) -> impl Future<Output = Result<Launched, CloudError>> + Send;

    /// Terminates the machine; `NotFound` when it is already gone.
    fn delete(&self, provider_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send;

    /// This cluster's machines that still run, launched by Cartwright.
    fn list(&self) -> impl Future<Output = Result<Vec<Machine>, CloudError>> + Send;

    /// Interruption notices received since the last call (none for providers without them).
    fn take_interruptions(&self) -> Vec<Interruption> {
        Vec::new()
    }

    /// Deletes what the provider made besides machines and no longer needs (EC2: launch templates
    /// unused for an hour). Called by the leader with machine garbage collection; returns what went.
    fn collect_resources(&self) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send {
        async { Ok(Vec::new()) }
    }
}

impl<P: CloudProvider> CloudProvider for std::sync::Arc<P> {
    fn name(&self) -> &'static str {
        P::name(self)
    }

    fn create(&self, request: &LaunchRequest) -> impl Future<Output = Result<Launched, CloudError>> + Send {
        P::create(self, request)
    }

    fn delete(&self, provider_id: &str) -> impl Future<Output = Result<(), CloudError>> + Send {
        P::delete(self, provider_id)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<Machine>, CloudError>> + Send {
        P::list(self)
    }

    fn take_interruptions(&self) -> Vec<Interruption> {
        P::take_interruptions(self)
    }

    fn collect_resources(&self) -> impl Future<Output = Result<Vec<String>, CloudError>> + Send {
        P::collect_resources(self)
    }
}

/// Offerings that recently failed to launch, unavailable until their time runs out (Karpenter keeps
/// them 3 minutes).
#[derive(Clone, Debug, Default)]
pub struct UnavailableOfferings {
    until: BTreeMap<(String, String, CapacityType), Millis>,
}

impl UnavailableOfferings {
    /// How long an offering stays unavailable.
    pub const TTL_MS: Millis = 180_000;

    pub fn mark(&mut self, option: &LaunchOption, now: Millis) {
        let key = (option.instance_type.clone(), option.zone.clone(), option.capacity_type);
        self.until.insert(key, now + Self::TTL_MS);
    }

    pub fn is_unavailable(&self, option: &LaunchOption, now: Millis) -> bool {
        let key = (option.instance_type.clone(), option.zone.clone(), option.capacity_type);
        self.until.get(&key).is_some_and(|&t| now < t)
    }

    /// The catalog with the offerings still unavailable at `now` marked so; expired entries are dropped.
    pub fn apply(&mut self, catalog: &mut Catalog, now: Millis) {
        self.until.retain(|_, t| now < *t);
        for (instance_type, zone, capacity_type) in self.until.keys() {
            catalog.set_available(instance_type, zone, *capacity_type, false);
        }
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartwright_binpack::{CatalogOptions, Price};

    #[test]
    fn failed_offerings_are_unavailable_for_three_minutes() {
        let mut catalog = Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap();
        let option = LaunchOption {
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            capacity_type: CapacityType::Spot,
            price: Price(0),
        };
        let mut unavailable = UnavailableOfferings::default();
        unavailable.mark(&option, 1_000);
        assert!(unavailable.is_unavailable(&option, 180_999));
        assert!(!unavailable.is_unavailable(&option, 181_000));
        unavailable.apply(&mut catalog, 2_000);
        let offering = |c: &Catalog| {
            c.get("m5.large")
                .unwrap()
                .offerings
                .iter()
                .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::Spot)
                .unwrap()
                .available
        };
        assert!(!offering(&catalog));
        let mut fresh = Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap();
        unavailable.apply(&mut fresh, 181_000);
        assert!(offering(&fresh), "expired entries no longer apply");
        assert!(unavailable.is_empty());
    }
}
