//! The provisioning decision: from a snapshot of the cluster (pending pods, nodes with what is bound and
//! nominated to them, NodePools, DaemonSets) to a solver problem, and from the solver's plan to the nodes to
//! launch. The controller and the simulator both call these.

use std::collections::BTreeMap;
use std::sync::Arc;

use cartwright_binpack::solver::{DaemonSetSpec, ExistingNode, NewNode, NodePoolTemplate, PodSpec, Problem};
use cartwright_binpack::{Catalog, InstanceType, Resources, Taint, labels};

/// A live node as the provisioning decision sees it.
#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub taints: &'a [Taint],
    pub allocatable: &'a Resources,
    /// What counts against its NodePool's limits.
    pub capacity: &'a Resources,
    /// Requests of the pods bound to it (daemonsets included) and of the pods nominated to it.
    pub requested: Resources,
    /// Labels of those pods (what anti-affinity and spread selectors see).
    pub pod_labels: Vec<&'a BTreeMap<String, String>>,
    /// Their hostname anti-affinity selectors (new pods matching one may not join).
    pub repelled: Vec<&'a BTreeMap<String, String>>,
    pub nodepool: Option<&'a str>,
    /// Registered and ready (false while launching).
    pub ready: bool,
    /// Cordoned or being deleted: takes no new pods, still counts against limits.
    pub cordoned: bool,
}

impl<'a> NodeView<'a> {
    /// A view of a node carrying `pods` (their requests, labels and anti-affinity), ready and schedulable,
    /// without taints.
    pub fn with_pods(
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        allocatable: &'a Resources,
        capacity: &'a Resources,
        pods: &'a [PodSpec],
        nodepool: Option<&'a str>,
    ) -> NodeView<'a> {
        let mut requested = Resources::new();
        for p in pods {
            requested.add_assign(&p.requests);
        }
        NodeView {
            name,
            labels,
            taints: &[],
            allocatable,
            capacity,
            requested,
            pod_labels: pods.iter().map(|p| &p.labels).collect(),
            repelled: pods.iter().flat_map(|p| &p.hostname_anti_affinity).collect(),
            nodepool,
            ready: true,
            cordoned: false,
        }
    }
}

/// The NodePools' limits left after their live nodes: nodes and capacity are charged per pool.
pub fn remaining_limits<'a>(
    nodepools: &[NodePoolTemplate],
    nodes: impl IntoIterator<Item = (Option<&'a str>, &'a Resources)>,
) -> Vec<NodePoolTemplate> {
    let mut used: BTreeMap<&str, (Resources, i64)> = BTreeMap::new();
    for (pool, capacity) in nodes {
        if let Some(pool) = pool {
            let u = used.entry(pool).or_insert((Resources::new(), 0));
            u.0.add_assign(capacity);
            u.1 += 1;
        }
    }
    let mut out = nodepools.to_vec();
    for pool in &mut out {
        if let Some((capacity, count)) = used.get(pool.name.as_str()) {
            if let Some(n) = &mut pool.remaining.nodes {
                *n -= count;
            }
            for (dim, left) in &mut pool.remaining.resources {
                *left -= capacity.get(dim);
            }
        }
    }
    out
}

/// The elementwise minimum of the pods' requests (a dimension absent from any pod counts as zero).
fn smallest_request<'a>(pods: impl IntoIterator<Item = &'a PodSpec>) -> Resources {
    let mut smallest: Option<Resources> = None;
    for pod in pods {
        smallest = Some(match smallest {
            None => pod.requests.clone(),
            Some(m) => {
                let mut out = Resources::new();
                for (dim, amount) in m.iter() {
                    out.set(&dim, amount.min(pod.requests.get(&dim)));
                }
                out
            }
        });
    }
    smallest.unwrap_or_default()
}

/// The solver problem for `pending` pods. Cordoned nodes take nothing; nodes without room for the smallest
/// request in every dimension are left out (they can take none of these pods, and big clusters plan
/// faster) unless a pending pod has topology spread, which counts pods on every node. Limits are charged
/// with every live node's capacity.
pub fn problem(
    pending: Vec<PodSpec>,
    nodes: &[NodeView<'_>],
    nodepools: &[NodePoolTemplate],
    daemonsets: &[DaemonSetSpec],
    catalog: Arc<Catalog>,
) -> Problem {
    let spread = pending.iter().any(|p| !p.topology_spread.is_empty());
    let smallest = smallest_request(&pending);
    let existing = nodes
        .iter()
        .filter(|n| !n.cordoned)
        .filter(|n| spread || smallest.fits_in(&n.allocatable.minus(&n.requested)))
        .map(|n| ExistingNode {
            name: n.name.to_owned(),
            labels: n.labels.clone(),
            taints: n.taints.to_vec(),
            allocatable: n.allocatable.clone(),
            requested: n.requested.clone(),
            nodepool: n.nodepool.map(str::to_owned),
            initialized: n.ready,
            pod_labels: n.pod_labels.iter().map(|l| (*l).clone()).collect(),
            repelled: n.repelled.iter().map(|s| (*s).clone()).collect(),
        })
        .collect();
    let nodepools = remaining_limits(nodepools, nodes.iter().map(|n| (n.nodepool, n.capacity)));
    Problem { pods: pending, existing, nodepools, daemonsets: daemonsets.to_vec(), catalog }
}

/// The catalog restricted to instance types some NodePool can launch: planning rounds skip the rest.
pub fn launchable(catalog: &Catalog, nodepools: &[NodePoolTemplate]) -> Catalog {
    let requirements: Vec<_> = nodepools.iter().map(NodePoolTemplate::node_requirements).collect();
    let types = catalog
        .instance_types()
        .iter()
        .filter(|t| requirements.iter().any(|r| t.check_intersects(r).is_ok()))
        .cloned()
        .collect();
    Catalog::new(catalog.region(), catalog.zones().to_vec(), types)
}

/// The labels of a node launched for `new` as `instance_type`: the type's labels, the plan's (NodePool
/// template labels and name, narrowed open keys), the zone, the capacity type and the hostname.
pub fn node_labels(instance_type: &InstanceType, new: &NewNode, hostname: &str) -> BTreeMap<String, String> {
    let mut out = instance_type.requirements.single_valued_labels();
    out.extend(new.labels.clone());
    out.insert(labels::ZONE.to_owned(), new.launch.zone.clone());
    out.insert(labels::CAPACITY_TYPE.to_owned(), new.launch.capacity_type.as_str().to_owned());
    out.insert(labels::HOSTNAME.to_owned(), hostname.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartwright_binpack::solver::Limits;
    use cartwright_binpack::{CatalogOptions, ResourceName};

    fn view<'a>(
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        alloc: &'a Resources,
        requested: Resources,
        pool: Option<&'a str>,
    ) -> NodeView<'a> {
        NodeView {
            name,
            labels,
            taints: &[],
            allocatable: alloc,
            capacity: alloc,
            requested,
            pod_labels: vec![],
            repelled: vec![],
            nodepool: pool,
            ready: true,
            cordoned: false,
        }
    }

    #[test]
    fn full_and_cordoned_nodes_are_left_out_but_still_charge_limits() {
        let labels = BTreeMap::new();
        let alloc = Resources::new().with_cpu_millis(4000).with_memory_mib(8192).with_pods(110);
        let mut pool = NodePoolTemplate::new("p");
        pool.remaining = Limits { resources: [(ResourceName::Cpu, 10_000)].into(), nodes: Some(5) };
        let full = view("full", &labels, &alloc, alloc.clone(), Some("p"));
        let roomy = view("roomy", &labels, &alloc, Resources::new(), Some("p"));
        let mut cordoned = view("cordoned", &labels, &alloc, Resources::new(), Some("p"));
        cordoned.cordoned = true;
        let pod = PodSpec::new("a", Resources::new().with_cpu_millis(500));
        let catalog = Arc::new(Catalog::new("test", vec![], vec![]));
        let p = problem(
            vec![pod.clone()],
            &[full.clone(), roomy.clone(), cordoned.clone()],
            &[pool.clone()],
            &[],
            catalog.clone(),
        );
        let names: Vec<&str> = p.existing.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["roomy"]);
        assert_eq!(p.nodepools[0].remaining.nodes, Some(2));
        assert_eq!(p.nodepools[0].remaining.resources[&ResourceName::Cpu], -2000);
        // With topology spread every schedulable node is passed (spread counts pods everywhere).
        let spread = pod.with_spread(labels::ZONE, 1, &[("app", "a")]);
        let p = problem(vec![spread], &[full, roomy, cordoned], &[pool], &[], catalog);
        assert_eq!(p.existing.len(), 2);
    }

    #[test]
    fn launchable_keeps_the_types_some_nodepool_admits() {
        let catalog = Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap();
        let mut pool = NodePoolTemplate::new("m5");
        pool.requirements.add(
            cartwright_binpack::Requirement::new(
                labels::aws::INSTANCE_FAMILY,
                cartwright_binpack::Operator::In,
                &["m5"],
            )
            .unwrap(),
        );
        let narrowed = launchable(&catalog, &[pool]);
        assert!(!narrowed.instance_types().is_empty());
        assert!(narrowed.instance_types().iter().all(|t| t.name.starts_with("m5.")));
        assert_eq!(narrowed.zones(), catalog.zones());
    }
}
