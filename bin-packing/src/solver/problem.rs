//! The solver's input: a snapshot of pending pods, existing nodes and NodePool templates over a catalog.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::labels;
use crate::requirements::{NodeAffinity, Requirement, Requirements};
use crate::resources::{ResourceName, Resources};
use crate::taints::{Taint, Toleration};

/// A pending pod: what it asks for and where it may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    /// `namespace/name`, unique within the problem.
    pub name: String,
    /// Total requests (containers, plus overhead; init containers already folded in by the caller).
    pub requests: Resources,
    /// Node selector and required node affinity.
    pub affinity: NodeAffinity,
    pub tolerations: Vec<Toleration>,
    /// The pod's own labels (what other pods' anti-affinity selectors see).
    pub labels: BTreeMap<String, String>,
    /// Required pod anti-affinity on `kubernetes.io/hostname`: one `matchLabels` selector per term. No pod
    /// matching a selector may share the node (a selector matching the pod's own labels means one per node).
    pub hostname_anti_affinity: Vec<BTreeMap<String, String>>,
    /// Topology spread constraints.
    pub topology_spread: Vec<TopologySpread>,
    /// Required pod affinity on `topology.kubernetes.io/zone`: one `matchLabels` selector per term; the pod
    /// must run in a zone where a pod matching each selector runs.
    pub zone_affinity: Vec<BTreeMap<String, String>>,
    /// Required pod anti-affinity on `topology.kubernetes.io/zone`: no other pod matching a selector may run
    /// in the pod's zone.
    pub zone_anti_affinity: Vec<BTreeMap<String, String>>,
    /// Preferred node affinity: `(weight, term)`. Planned as Karpenter does: the heaviest term is required
    /// first; a pod that cannot be placed so drops it and tries the next, then none.
    pub preferred_affinity: Vec<(i32, Requirements)>,
    /// Required pod affinity on `kubernetes.io/hostname`: one `matchLabels` selector per term; the pod must
    /// share its node with a pod matching each selector (or, matching the selector itself, be the first of
    /// such pods anywhere).
    pub hostname_affinity: Vec<BTreeMap<String, String>>,
    /// Preferred pod affinity on zone or hostname: `(weight, term)`. Planned as required until the pod
    /// cannot be placed, then dropped heaviest first (see [`PodSpec::with_preference_level`]).
    pub preferred_pod_affinity: Vec<(i32, PodAffinityTerm)>,
    /// Preferred pod anti-affinity on zone or hostname, relaxed the same way after the affinity terms.
    pub preferred_pod_anti_affinity: Vec<(i32, PodAffinityTerm)>,
    /// The labels of the other pods bundled into this one by the solver (pods that required hostname
    /// affinity puts on one node): a selector matching any of them matches this pod. Empty for real pods.
    pub companion_labels: Vec<BTreeMap<String, String>>,
    /// Preferred anti-affinity terms held as required in this planning round (set by
    /// [`PodSpec::with_preference_level`]). They keep this pod away from matching pods, but do not keep away
    /// pods that have relaxed a preferred anti-affinity term of their own.
    pub held_anti_affinity: Vec<PodAffinityTerm>,
    /// This pod dropped a preferred anti-affinity term to be placed: other pods' held (preferred) terms do
    /// not keep it away, as kube-scheduler only scores them.
    pub relaxed_anti_affinity: bool,
}

/// A pod (anti-)affinity term the solver models: a `matchLabels` selector over a topology key (zone or
/// hostname).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodAffinityTerm {
    pub topology_key: String,
    pub selector: BTreeMap<String, String>,
}

impl PodAffinityTerm {
    /// A term over `topology_key` with these `matchLabels`.
    pub fn new(topology_key: &str, selector: &[(&str, &str)]) -> Self {
        PodAffinityTerm { topology_key: topology_key.to_owned(), selector: label_map(selector) }
    }
}

/// A topology spread constraint (`whenUnsatisfiable: DoNotSchedule` when `hard`). Honoured on
/// `topology.kubernetes.io/zone`, `karpenter.sh/capacity-type` and `kubernetes.io/hostname` when the selector
/// matches the pod's own labels (the usual Deployment case); soft (`ScheduleAnyway`) constraints are
/// preferences the solver may ignore.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopologySpread {
    pub topology_key: String,
    pub max_skew: i64,
    pub hard: bool,
    /// `labelSelector.matchLabels`.
    pub selector: BTreeMap<String, String>,
    /// `minDomains`: with fewer eligible domains, the global minimum counts as zero.
    pub min_domains: Option<i64>,
    /// `nodeAffinityPolicy: Honor` (the default): only domains and nodes the pod's node affinity admits
    /// count towards the skew; `Ignore` counts them all.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor`: only domains and nodes whose taints the pod tolerates count; `Ignore`
    /// (the default) counts tainted ones too, so a zone only a tainted NodePool offers holds the minimum
    /// at zero, as kube-scheduler would.
    pub honor_node_taints: bool,
}

impl TopologySpread {
    /// Whether the constraint is one the solver enforces for a pod with these labels.
    pub fn enforced_for(&self, labels: &BTreeMap<String, String>) -> bool {
        self.hard
            && self.max_skew >= 1
            && [labels::ZONE, labels::HOSTNAME, labels::CAPACITY_TYPE].contains(&self.topology_key.as_str())
            && selector_matches(&self.selector, labels)
    }
}

impl PodSpec {
    /// A pod with no constraints and the given requests (one pod slot is always added).
    pub fn new(name: impl Into<String>, requests: Resources) -> Self {
        PodSpec {
            name: name.into(),
            requests: with_pod_slot(requests),
            affinity: NodeAffinity::any(),
            tolerations: vec![],
            labels: BTreeMap::new(),
            hostname_anti_affinity: vec![],
            topology_spread: vec![],
            zone_affinity: vec![],
            zone_anti_affinity: vec![],
            preferred_affinity: vec![],
            hostname_affinity: vec![],
            preferred_pod_affinity: vec![],
            preferred_pod_anti_affinity: vec![],
            companion_labels: vec![],
            held_anti_affinity: vec![],
            relaxed_anti_affinity: false,
        }
    }

    /// Builder: a hard topology spread constraint on `key` (zone or hostname) with these `matchLabels`.
    pub fn with_spread(mut self, key: &str, max_skew: i64, selector: &[(&str, &str)]) -> Self {
        self.topology_spread.push(TopologySpread {
            topology_key: key.to_owned(),
            max_skew,
            hard: true,
            selector: label_map(selector),
            min_domains: None,
            honor_node_affinity: true,
            honor_node_taints: false,
        });
        self
    }

    /// The most pods of its own kind this pod allows on one node: 1 under self anti-affinity, `maxSkew`
    /// under a hostname spread (a new node starts the domain count at 0), otherwise unlimited.
    pub fn per_node_cap(&self) -> i64 {
        let mut cap = if self.repels_pod(self) { 1 } else { i64::MAX };
        for spread in &self.topology_spread {
            if spread.topology_key == labels::HOSTNAME && spread.enforced_for(&self.labels) {
                cap = cap.min(spread.max_skew);
            }
        }
        cap
    }

    /// Builder: a host port (`hostPort` of a container). Two pods using the same port and protocol cannot
    /// share a node. Modelled as a reserved label (`hostport.cartwright.sh/<PROTOCOL>-<port>`) that the pod
    /// carries and repels on `kubernetes.io/hostname`, so every algorithm, the index and the validator honour
    /// it as anti-affinity; pods on existing nodes carry the same label.
    pub fn with_host_port(mut self, protocol: &str, port: i32) -> Self {
        let key = host_port_label(protocol, port);
        if !self.labels.contains_key(&key) {
            self.labels.insert(key.clone(), "used".to_owned());
            self.hostname_anti_affinity.push([(key, "used".to_owned())].into());
        }
        self
    }

    /// Builder: a required pod affinity term on `topology.kubernetes.io/zone` with these `matchLabels`.
    pub fn with_zone_affinity(mut self, selector: &[(&str, &str)]) -> Self {
        self.zone_affinity.push(label_map(selector));
        self
    }

    /// Builder: a required pod anti-affinity term on `topology.kubernetes.io/zone` with these `matchLabels`.
    pub fn with_zone_anti_affinity(mut self, selector: &[(&str, &str)]) -> Self {
        self.zone_anti_affinity.push(label_map(selector));
        self
    }

    /// Whether this pod's enforced hostname spread counts `other` (its selector matches the other's labels).
    pub fn hostname_spread_covers(&self, other: &PodSpec) -> bool {
        self.topology_spread.iter().any(|s| {
            s.topology_key == labels::HOSTNAME
                && s.enforced_for(&self.labels)
                && other.matched_by(&s.selector)
        })
    }

    /// Whether a `matchLabels` selector matches this pod: its own labels, or those of a pod bundled with it.
    pub fn matched_by(&self, selector: &BTreeMap<String, String>) -> bool {
        selector_matches(selector, &self.labels)
            || self.companion_labels.iter().any(|l| selector_matches(selector, l))
    }

    /// Whether this pod's hostname anti-affinity forbids sharing a node with `other` (bundles included).
    /// Held preferred terms do not forbid pods that relaxed their own.
    pub fn repels_pod(&self, other: &PodSpec) -> bool {
        self.hostname_anti_affinity.iter().any(|s| other.matched_by(s))
            || (!other.relaxed_anti_affinity
                && self.held_selectors(labels::HOSTNAME).any(|s| other.matched_by(s)))
    }

    /// The selectors of held preferred anti-affinity terms on `key`.
    pub fn held_selectors<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> + 'a {
        self.held_anti_affinity.iter().filter(move |t| t.topology_key == key).map(|t| &t.selector)
    }

    /// Builder: a required pod affinity term on `kubernetes.io/hostname` with these `matchLabels`.
    pub fn with_hostname_affinity(mut self, selector: &[(&str, &str)]) -> Self {
        self.hostname_affinity.push(label_map(selector));
        self
    }

    /// Builder: a preferred pod affinity term.
    pub fn with_preferred_pod_affinity(mut self, weight: i32, term: PodAffinityTerm) -> Self {
        self.preferred_pod_affinity.push((weight, term));
        self
    }

    /// Builder: a preferred pod anti-affinity term.
    pub fn with_preferred_pod_anti_affinity(mut self, weight: i32, term: PodAffinityTerm) -> Self {
        self.preferred_pod_anti_affinity.push((weight, term));
        self
    }

    /// Whether the pod has a term whose selector looks at other pods' labels (pod affinity or
    /// anti-affinity, required or preferred, topology spread, bundled partners).
    pub fn has_pod_selectors(&self) -> bool {
        !(self.hostname_anti_affinity.is_empty()
            && self.topology_spread.is_empty()
            && self.zone_affinity.is_empty()
            && self.zone_anti_affinity.is_empty()
            && self.hostname_affinity.is_empty()
            && self.preferred_pod_affinity.is_empty()
            && self.preferred_pod_anti_affinity.is_empty()
            && self.companion_labels.is_empty()
            && self.held_anti_affinity.is_empty())
    }

    /// How many relaxation steps the pod's preferences allow (see [`PodSpec::with_preference_level`]).
    pub fn preference_steps(&self) -> usize {
        self.preferred_pod_affinity.len()
            + self.preferred_pod_anti_affinity.len()
            + self.preferred_affinity.len()
    }

    /// Builder: a preferred node affinity term.
    pub fn with_preference(mut self, weight: i32, term: Requirements) -> Self {
        self.preferred_affinity.push((weight, term));
        self
    }

    /// The pod with its preferences required, less the first `level` relaxation steps, in Karpenter's order:
    /// preferred pod affinity terms (heaviest first), then preferred pod anti-affinity terms (heaviest
    /// first), then preferred node affinity, where only the heaviest term left is required at a time. Past
    /// the last step, the pod as written. Terms on keys other than zone and hostname are not modelled and
    /// are ignored.
    pub fn with_preference_level(&self, level: usize) -> PodSpec {
        fn heaviest_first<T>(terms: &[(i32, T)]) -> Vec<&T> {
            let mut sorted: Vec<&(i32, T)> = terms.iter().collect();
            sorted.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
            sorted.into_iter().map(|(_, t)| t).collect()
        }
        let mut pod = self.clone();
        pod.preferred_pod_affinity.clear();
        pod.preferred_pod_anti_affinity.clear();
        pod.preferred_affinity.clear();
        let mut skip = level;
        let affinity = heaviest_first(&self.preferred_pod_affinity);
        for term in affinity.iter().skip(skip) {
            match term.topology_key.as_str() {
                labels::HOSTNAME => pod.hostname_affinity.push(term.selector.clone()),
                labels::ZONE => pod.zone_affinity.push(term.selector.clone()),
                _ => {}
            }
        }
        skip = skip.saturating_sub(affinity.len());
        let anti = heaviest_first(&self.preferred_pod_anti_affinity);
        pod.held_anti_affinity.extend(
            anti.iter()
                .skip(skip)
                .filter(|t| [labels::HOSTNAME, labels::ZONE].contains(&t.topology_key.as_str()))
                .map(|t| (*t).clone()),
        );
        pod.relaxed_anti_affinity = skip > 0 && !anti.is_empty();
        skip = skip.saturating_sub(anti.len());
        if let Some(term) = heaviest_first(&self.preferred_affinity).get(skip) {
            let alternatives = pod.affinity.alternatives().iter().map(|a| a.intersection(term)).collect();
            pod.affinity = NodeAffinity::from_alternatives(alternatives);
        }
        pod
    }

    /// Builder: a label.
    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Builder: a required anti-affinity term on `kubernetes.io/hostname` with these `matchLabels`.
    pub fn with_hostname_anti_affinity(mut self, selector: &[(&str, &str)]) -> Self {
        self.hostname_anti_affinity.push(label_map(selector));
        self
    }

    /// Whether this pod's anti-affinity forbids sharing a node with a pod labelled `labels`.
    pub fn repels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.hostname_anti_affinity
            .iter()
            .chain(self.held_selectors(labels::HOSTNAME))
            .any(|selector| selector_matches(selector, labels))
    }

    /// Builder: the node affinity.
    pub fn with_affinity(mut self, affinity: NodeAffinity) -> Self {
        self.affinity = affinity;
        self
    }

    /// Builder: a node selector requirement (ANDed into every affinity alternative).
    pub fn with_requirement(mut self, requirement: Requirement) -> Self {
        self.require(requirement);
        self
    }

    /// Adds a node selector requirement in place (ANDed into every affinity alternative).
    pub fn require(&mut self, requirement: Requirement) {
        let alternatives =
            self.affinity.alternatives().iter().map(|alt| alt.clone().with(requirement.clone())).collect();
        self.affinity = NodeAffinity::from_alternatives(alternatives);
    }

    /// Builder: a toleration.
    pub fn with_toleration(mut self, toleration: Toleration) -> Self {
        self.tolerations.push(toleration);
        self
    }
}

/// The reserved label a pod using `protocol`/`port` as a host port carries.
pub fn host_port_label(protocol: &str, port: i32) -> String {
    format!("hostport.cartwright.sh/{}-{port}", protocol.to_ascii_uppercase())
}

/// A `matchLabels` map from `(key, value)` pairs, for the builders.
fn label_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// `matchLabels` semantics: every pair of the selector is among the labels (an empty selector matches all).
pub fn selector_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every pod takes one pod slot, whether or not its spec says so.
fn with_pod_slot(mut requests: Resources) -> Resources {
    if requests.pods < 1 {
        requests.pods = 1;
    }
    requests
}

/// A DaemonSet: one pod of it runs on every node it is compatible with, so it costs room on each new node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSetSpec {
    pub name: String,
    pub requests: Resources,
    pub affinity: NodeAffinity,
    pub tolerations: Vec<Toleration>,
}

/// A node that exists or is already being launched; pods may use its free room at no extra cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// Requests of the pods already bound (or nominated) to it, daemonset pods included.
    pub requested: Resources,
    /// The NodePool that owns it, if any (its capacity counts against that NodePool's limits).
    pub nodepool: Option<String>,
    /// False for nodes still launching (in flight); initialized nodes are preferred.
    pub initialized: bool,
    /// The labels of the pods already on it (what new pods' anti-affinity selectors see).
    pub pod_labels: Vec<BTreeMap<String, String>>,
    /// The hostname anti-affinity selectors of the pods already on it: a new pod matching one may not join
    /// (Kubernetes checks running pods' anti-affinity too).
    pub repelled: Vec<BTreeMap<String, String>>,
}

impl ExistingNode {
    /// The room left for new pods.
    pub fn free(&self) -> Resources {
        self.allocatable.minus(&self.requested)
    }
}

/// NodePool limits: resource totals and a node count that the NodePool's nodes may never exceed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Resource limits, in the units of [`Resources`]; only the dimensions named are limited.
    pub resources: BTreeMap<ResourceName, i64>,
    pub nodes: Option<i64>,
}

impl Limits {
    /// Whether nothing is limited (no resource total, no node count).
    pub fn is_unlimited(&self) -> bool {
        self.resources.is_empty() && self.nodes.is_none()
    }

    /// Whether one more node of this capacity stays within the limits.
    pub fn allows(&self, capacity: &Resources) -> bool {
        self.count_allowed(capacity) >= 1
    }

    /// How many nodes of this capacity the limits allow (`i64::MAX` when unlimited).
    pub fn count_allowed(&self, capacity: &Resources) -> i64 {
        let mut n = self.nodes.unwrap_or(i64::MAX);
        for (dim, left) in &self.resources {
            let per = capacity.get(dim);
            if per > 0 {
                n = n.min(left.max(&0) / per);
            } else if *left < 0 {
                n = 0;
            }
        }
        n.max(0)
    }

    /// Charges `count` nodes of this capacity.
    pub fn consume(&mut self, capacity: &Resources, count: i64) {
        if let Some(n) = &mut self.nodes {
            *n -= count;
        }
        for (dim, left) in &mut self.resources {
            *left -= capacity.get(dim).saturating_mul(count);
        }
    }
}

/// A NodePool as the solver sees it: which nodes it may launch and what they carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePoolTemplate {
    pub name: String,
    /// Higher weight is tried first.
    pub weight: i32,
    /// `spec.template.spec.requirements`.
    pub requirements: Requirements,
    /// `spec.template.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// Taints pods must tolerate.
    pub taints: Vec<Taint>,
    /// Taints removed once the node is ready; pods need not tolerate them to be planned.
    pub startup_taints: Vec<Taint>,
    /// Limits left for new nodes: the NodePool's limits minus what its existing nodes already use.
    pub remaining: Limits,
}

impl NodePoolTemplate {
    /// A NodePool with no requirements, labels, taints or limits.
    pub fn new(name: impl Into<String>) -> Self {
        NodePoolTemplate {
            name: name.into(),
            weight: 0,
            requirements: Requirements::new(),
            labels: BTreeMap::new(),
            taints: vec![],
            startup_taints: vec![],
            remaining: Limits::default(),
        }
    }

    /// The requirements every node of this pool satisfies: its own, its template labels, and its name label.
    /// Whether some requirement carries `minValues`.
    pub fn has_min_values(&self) -> bool {
        self.requirements.iter().any(|r| r.min_values().is_some())
    }

    pub fn node_requirements(&self) -> Requirements {
        let mut r = self.requirements.clone();
        for (k, v) in &self.labels {
            r.add(Requirement::single(k, v.clone()));
        }
        r.add(Requirement::single(labels::NODEPOOL, self.name.clone()));
        r
    }
}

/// Everything the solver needs, as a snapshot.
#[derive(Clone, Debug)]
pub struct Problem {
    pub pods: Vec<PodSpec>,
    pub existing: Vec<ExistingNode>,
    pub nodepools: Vec<NodePoolTemplate>,
    pub daemonsets: Vec<DaemonSetSpec>,
    /// Shared: a caller planning many times (the simulator, the controller) reuses one catalog.
    pub catalog: Arc<Catalog>,
}

impl Problem {
    /// The same problem with other pending pods (the rest is copied; the pods are not).
    pub fn with_pods(&self, pods: Vec<PodSpec>) -> Problem {
        Problem {
            pods,
            existing: self.existing.clone(),
            nodepools: self.nodepools.clone(),
            daemonsets: self.daemonsets.clone(),
            catalog: self.catalog.clone(),
        }
    }
}
