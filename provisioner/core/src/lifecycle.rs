//! Node lifecycle decisions: which pods provisioning acts on, what a NodeClaim needs next (launch,
//! register, initialize, or give up after a time-out), and which pods a drain evicts. Pure: the adapter
//! gathers the facts and carries out the step.

use crate::hpa::Millis;

/// What provisioning and draining need to know about a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub bound: bool,
    /// `PodScheduled=False` with reason `Unschedulable`: kube-scheduler found no node.
    pub unschedulable: bool,
    /// Owned by a DaemonSet (it follows nodes; it never needs one).
    pub daemonset: bool,
    /// A static pod's mirror (`kubernetes.io/config.mirror` annotation).
    pub mirror: bool,
    /// Has a deletionTimestamp.
    pub terminating: bool,
    /// Succeeded or Failed: holds no resources.
    pub finished: bool,
}

impl PodFacts {
    /// Pods provisioning launches capacity for.
    pub fn provisionable(&self) -> bool {
        !self.bound
            && self.unschedulable
            && !self.daemonset
            && !self.mirror
            && !self.terminating
            && !self.finished
    }

    /// Pods a drain evicts: daemonset and mirror pods stay (they belong to the node), terminating and
    /// finished ones are already leaving.
    pub fn evictable(&self) -> bool {
        !self.daemonset && !self.mirror && !self.terminating && !self.finished
    }
}

/// Launch and registration time-outs (Karpenter: 5 and 15 minutes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub launch_ms: Millis,
    pub registration_ms: Millis,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { launch_ms: 5 * 60_000, registration_ms: 15 * 60_000 }
    }
}

/// What is known of one NodeClaim and its Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimFacts {
    pub created_ms: Millis,
    /// When the cloud provider reported the machine (`Launched=True`).
    pub launched_ms: Option<Millis>,
    /// A Node with the claim's providerID exists.
    pub node_exists: bool,
    /// The claim says `Registered=True`.
    pub registered: bool,
    /// The Node reports `Ready=True`.
    pub node_ready: bool,
    /// The claim says `Initialized=True`.
    pub initialized: bool,
}

/// The next step for a live (not deleting) NodeClaim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// Ask the cloud provider for the machine.
    Launch,
    /// No machine after the launch time-out: delete the claim (its offerings become unavailable).
    LaunchTimedOut,
    /// Launched, Node not seen yet: wait.
    AwaitNode,
    /// No Node after the registration time-out: delete the claim.
    RegistrationTimedOut,
    /// The Node appeared: link it, copy labels and taints, mark `Registered`.
    Register,
    /// Registered, not ready yet: wait.
    AwaitReady,
    /// Ready: remove the start-up taints, mark `Initialized`.
    Initialize,
    /// Nothing to do.
    Done,
}

pub fn next_step(claim: &ClaimFacts, now: Millis, timeouts: &Timeouts) -> ClaimStep {
    match claim.launched_ms {
        None if now.saturating_sub(claim.created_ms) >= timeouts.launch_ms => ClaimStep::LaunchTimedOut,
        None => ClaimStep::Launch,
        Some(launched) if !claim.node_exists => {
            if now.saturating_sub(launched) >= timeouts.registration_ms {
                ClaimStep::RegistrationTimedOut
            } else {
                ClaimStep::AwaitNode
            }
        }
        Some(_) if !claim.registered => ClaimStep::Register,
        Some(_) if !claim.node_ready => ClaimStep::AwaitReady,
        Some(_) if !claim.initialized => ClaimStep::Initialize,
        Some(_) => ClaimStep::Done,
    }
}

/// The next step for a NodeClaim being deleted (it keeps its finalizer until the machine is gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminationStep {
    /// Taint the node `NoSchedule` so nothing new lands while it drains.
    Taint,
    /// Evict the evictable pods still on the node (a PDB may refuse; try again next pass).
    Drain,
    /// Drained (or no node): terminate the machine, delete the Node, then drop the finalizer.
    Terminate,
}

pub fn termination_step(node_exists: bool, tainted: bool, evictable_pods: usize) -> TerminationStep {
    if !node_exists {
        TerminationStep::Terminate
    } else if !tainted {
        TerminationStep::Taint
    } else if evictable_pods > 0 {
        TerminationStep::Drain
    } else {
        TerminationStep::Terminate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisionable_pods_are_unschedulable_unbound_and_not_daemonset_mirror_or_terminating() {
        let pending = PodFacts { unschedulable: true, ..PodFacts::default() };
        assert!(pending.provisionable());
        assert!(
            !PodFacts { unschedulable: false, ..pending.clone() }.provisionable(),
            "scheduler not done yet"
        );
        assert!(!PodFacts { bound: true, ..pending.clone() }.provisionable());
        assert!(!PodFacts { daemonset: true, ..pending.clone() }.provisionable());
        assert!(!PodFacts { mirror: true, ..pending.clone() }.provisionable());
        assert!(!PodFacts { terminating: true, ..pending.clone() }.provisionable());
        let running = PodFacts { bound: true, ..PodFacts::default() };
        assert!(running.evictable());
        assert!(!PodFacts { daemonset: true, ..running.clone() }.evictable());
        assert!(!PodFacts { finished: true, ..running }.evictable());
    }

    #[test]
    fn claims_move_through_launch_registration_and_initialization_with_time_outs() {
        let t = Timeouts::default();
        let mut c = ClaimFacts { created_ms: 1_000, ..ClaimFacts::default() };
        assert_eq!(next_step(&c, 2_000, &t), ClaimStep::Launch);
        assert_eq!(next_step(&c, 1_000 + 300_000, &t), ClaimStep::LaunchTimedOut);
        c.launched_ms = Some(5_000);
        assert_eq!(next_step(&c, 6_000, &t), ClaimStep::AwaitNode);
        assert_eq!(next_step(&c, 5_000 + 900_000, &t), ClaimStep::RegistrationTimedOut);
        c.node_exists = true;
        assert_eq!(next_step(&c, 6_000, &t), ClaimStep::Register);
        c.registered = true;
        assert_eq!(next_step(&c, 6_000, &t), ClaimStep::AwaitReady);
        c.node_ready = true;
        assert_eq!(next_step(&c, 6_000, &t), ClaimStep::Initialize);
        c.initialized = true;
        assert_eq!(next_step(&c, 10_000_000, &t), ClaimStep::Done, "no time-out once initialized");
    }

    #[test]
    fn termination_taints_then_drains_then_terminates() {
        assert_eq!(termination_step(true, false, 3), TerminationStep::Taint);
        assert_eq!(termination_step(true, true, 3), TerminationStep::Drain);
        assert_eq!(termination_step(true, true, 0), TerminationStep::Terminate);
        assert_eq!(termination_step(false, false, 0), TerminationStep::Terminate);
    }
}
