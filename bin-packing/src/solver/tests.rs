use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::catalog::{Catalog, CatalogOptions};
use crate::instance_type::CapacityType;
use crate::labels::{self, aws};
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::{NVIDIA_GPU, ResourceName};
use crate::taints::{Taint, TaintEffect, Toleration};

fn catalog() -> Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap()).clone()
}

fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
    Requirement::new(key, op, values).unwrap()
}

/// `pod("web", 3).cpu(500).mem(1024)`: a builder for a Deployment's worth of identical pods.
struct Pods {
    prefix: String,
    count: usize,
    spec: PodSpec,
}

fn pods(prefix: &str, count: usize) -> Pods {
    Pods { prefix: prefix.to_owned(), count, spec: PodSpec::new("", Resources::new()) }
}

impl Pods {
    fn cpu(mut self, millis: i64) -> Self {
        self.spec.requests.cpu_millis = millis;
        self
    }
    fn mem(mut self, mib: i64) -> Self {
        self.spec.requests.memory_bytes = mib << 20;
        self
    }
    fn gpus(mut self, n: i64) -> Self {
        self.spec.requests.set(&ResourceName::from(NVIDIA_GPU), n);
        self
    }
    fn require(mut self, r: Requirement) -> Self {
        self.spec = self.spec.with_requirement(r);
        self
    }
    fn tolerate(mut self, t: Toleration) -> Self {
        self.spec.tolerations.push(t);
        self
    }
    fn label(mut self, key: &str, value: &str) -> Self {
        self.spec = self.spec.with_label(key, value);
        self
    }
    /// A hard spread on `key` over this Deployment's own pods (selector = its `app` label).
    fn spread(mut self, key: &str, max_skew: i64) -> Self {
        let app = self.spec.labels.get("app").cloned().unwrap_or_default();
        self.spec = self.spec.with_spread(key, max_skew, &[("app", app.as_str())]);
        self
    }
    fn avoid(mut self, key: &str, value: &str) -> Self {
        self.spec = self.spec.with_hostname_anti_affinity(&[(key, value)]);
        self
    }
    /// Required pod affinity on hostname to pods labelled `key: value`.
    fn beside(mut self, key: &str, value: &str) -> Self {
        self.spec = self.spec.with_hostname_affinity(&[(key, value)]);
        self
    }
    /// A preferred pod anti-affinity term on `topology_key` against pods labelled `key: value`.
    fn rather_not_beside(mut self, weight: i32, topology_key: &str, key: &str, value: &str) -> Self {
        self.spec = self
            .spec
            .with_preferred_pod_anti_affinity(weight, PodAffinityTerm::new(topology_key, &[(key, value)]));
        self
    }
    fn build(self) -> Vec<PodSpec> {
        (0..self.count)
            .map(|i| PodSpec { name: format!("{}-{i}", self.prefix), ..self.spec.clone() })
            .collect()
    }
}

fn pool(name: &str) -> NodePoolTemplate {
    NodePoolTemplate::new(name)
}

fn problem(pods: Vec<Vec<PodSpec>>, nodepools: Vec<NodePoolTemplate>) -> Problem {
    Problem {
        pods: pods.into_iter().flatten().collect(),
        existing: vec![],
        nodepools,
        daemonsets: vec![],
        catalog: catalog().into(),
    }
}

/// Solves and checks the plan with the independent validator.
fn expect_valid_plan(problem: &Problem) -> Plan {
    let plan = solve(problem);
    let violations = validate::violations(problem, &plan);
    assert!(violations.is_empty(), "invalid plan:\n{}", violations.join("\n"));
    plan
}

fn node_pods(plan: &Plan) -> Vec<(String, String)> {
    plan.new_nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| (p.clone(), n.launch.instance_type.clone())))
        .collect()
}

#[test]
fn the_cheapest_offering_that_fits_is_chosen() {
    let p = problem(vec![pods("web", 1).cpu(1500).mem(3000).build()], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.new_nodes.len(), 1);
    let node = &plan.new_nodes[0];
    // The cheapest offering in the whole catalog that holds the pod (no daemonsets here).
    let requests = Resources::new().with_cpu_millis(1500).with_memory_mib(3000).with_pods(1);
    let (t, o) = catalog()
        .cheapest(&Requirements::new(), &requests)
        .map(|(t, o)| (t.name.clone(), o.clone()))
        .unwrap();
    assert_eq!(node.launch.price, o.price);
    assert_eq!(node.launch.capacity_type, CapacityType::Spot);
    assert!(node.alternatives.iter().any(|a| a.instance_type == t));
    assert!(node.alternatives.len() > 1 && node.alternatives.len() <= MAX_ALTERNATIVES);
    assert_eq!(node.labels.get(labels::NODEPOOL).map(String::as_str), Some("default"));
    assert_eq!(plan.cost, node.launch.price);
    let bound = plan.lower_bound.unwrap();
    assert!(matches!(bound.kind, BoundKind::PatternLp | BoundKind::PatternFarley), "{bound:?}");
    assert!(bound.price <= plan.cost && bound.price.0 > 0);
}

#[test]
fn identical_pods_share_nodes_and_scale_by_class() {
    let p = problem(
        vec![pods("web", 300).cpu(250).mem(512).build(), pods("api", 40).cpu(1000).mem(2048).build()],
        vec![pool("default")],
    );
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty());
    assert_eq!(node_pods(&plan).len(), 340);
    // Sharing: fewer nodes than a third of the pods, and cheaper than each pod alone on its cheapest type.
    let alone = |cpu: i64, mem: i64| {
        let r = Resources::new().with_cpu_millis(cpu).with_memory_mib(mem).with_pods(1);
        catalog().cheapest(&Requirements::new(), &r).unwrap().1.price.0
    };
    let one_node_per_pod = 300 * alone(250, 512) + 40 * alone(1000, 2048);
    assert!(plan.cost.0 < one_node_per_pod, "{} vs {one_node_per_pod}", plan.cost);
    assert!(plan.new_nodes.len() * 3 < 340, "{} nodes", plan.new_nodes.len());
    let ratio = plan.cost_over_bound().unwrap();
    assert!((1.0..1.6).contains(&ratio), "cost / bound = {ratio}");
}

#[test]
fn existing_node_room_is_used_first() {
    let mut p = problem(vec![pods("web", 4).cpu(500).mem(512).build()], vec![pool("default")]);
    p.existing.push(ExistingNode {
        name: "node-a".into(),
        labels: BTreeMap::from([(labels::ZONE.to_owned(), "us-east-1a".to_owned())]),
        taints: vec![],
        allocatable: Resources::new().with_cpu_millis(1930).with_memory_mib(6903).with_pods(29),
        requested: Resources::new().with_cpu_millis(500).with_memory_mib(512).with_pods(2),
        nodepool: Some("default".into()),
        initialized: true,
        pod_labels: vec![],
        repelled: vec![],
    });
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.placements.len(), 2, "1430m free holds two 500m pods");
    assert!(plan.placements.iter().all(|pl| pl.node == "node-a"));
    assert_eq!(node_pods(&plan).len(), 2);
}

#[test]
fn higher_weight_nodepools_come_first() {
    let mut on_demand = pool("on-demand");
    on_demand.weight = 50;
    on_demand.requirements.add(req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]));
    let spot = pool("spot");
    let p = problem(vec![pods("web", 10).cpu(1000).mem(1024).build()], vec![spot, on_demand]);
    let plan = expect_valid_plan(&p);
    assert!(
        plan.new_nodes
            .iter()
            .all(|n| n.nodepool == "on-demand" && n.launch.capacity_type == CapacityType::OnDemand)
    );
}

/// Two NodePools that admit the same pods: on-demand first (weight 50), spot (cheaper) second, the first
/// with `cpu_limit` millicores of limits if given.
fn on_demand_before_spot(pods: Vec<Vec<PodSpec>>, cpu_limit: Option<i64>) -> Problem {
    let mut on_demand = pool("on-demand");
    on_demand.weight = 50;
    on_demand.requirements.add(req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]));
    if let Some(limit) = cpu_limit {
        on_demand.remaining.resources.insert(ResourceName::Cpu, limit);
    }
    let mut spot = pool("spot");
    spot.requirements.add(req(labels::CAPACITY_TYPE, Operator::In, &["spot"]));
    problem(pods, vec![spot, on_demand])
}

#[test]
fn the_pattern_bound_honours_nodepool_weights() {
    let web =
        || vec![pods("web", 40).cpu(1000).mem(2048).build(), pods("api", 30).cpu(500).mem(3072).build()];
    let p = on_demand_before_spot(web(), None);
    let plan = expect_valid_plan(&p);
    assert!(plan.new_nodes.iter().all(|n| n.nodepool == "on-demand"));
    let bound = plan.lower_bound.expect("a bound");
    assert!(matches!(bound.kind, BoundKind::PatternLp | BoundKind::PatternFarley), "{:?}", bound.kind);
    assert!(bound.price <= plan.cost);
    // A bound that let the pods use the spot NodePool would be below what they cost there; this one is for
    // plans that put them where the weights say.
    let spot_only = expect_valid_plan(&problem(web(), vec![pool("spot")]));
    assert!(bound.price > spot_only.cost, "bound {} vs spot plan {}", bound.price, spot_only.cost);
    // Within 3 % of the plan (the pods are two shapes on one family's sizes).
    assert!(plan.cost.0 as f64 <= bound.price.0 as f64 * 1.03, "{} vs {}", plan.cost, bound.price);
}

#[test]
fn when_limits_send_pods_down_the_weights_only_the_aggregate_bound_stands() {
    // 40 cores of pods, 8 allowed on demand: the rest go to spot, so the weights-only pattern bound (all on
    // demand) would be above the plan.
    let p = on_demand_before_spot(vec![pods("web", 40).cpu(1000).mem(2048).build()], Some(8_000));
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty());
    assert!(plan.new_nodes.iter().any(|n| n.nodepool == "spot"));
    assert!(plan.new_nodes.iter().any(|n| n.nodepool == "on-demand"));
    let bound = plan.lower_bound.expect("a bound");
    assert_eq!(bound.kind, BoundKind::AggregateLp);
    assert!(bound.price <= plan.cost, "bound {} above the plan {}", bound.price, plan.cost);
    // A limit far beyond the pods' needs cannot refuse them: the pattern bound holds.
    let roomy = expect_valid_plan(&on_demand_before_spot(
        vec![pods("web", 40).cpu(1000).mem(2048).build()],
        Some(1_000_000),
    ));
    let kind = roomy.lower_bound.expect("a bound").kind;
    assert!(matches!(kind, BoundKind::PatternLp | BoundKind::PatternFarley), "{kind:?}");
}

#[test]
fn a_limit_that_never_binds_leaves_the_plan_as_it_is_without_one() {
    // Three shapes whose greedy plan the pattern LP's rounding and the merging of nodes improve on.
    let mix = || {
        vec![
            pods("p", 13).cpu(1700).mem(2500).build(),
            pods("q", 11).cpu(900).mem(7000).build(),
            pods("r", 5).cpu(3100).mem(600).build(),
        ]
    };
    let free = expect_valid_plan(&problem(mix(), vec![pool("default")]));
    let mut limited = pool("default");
    limited.remaining.resources.insert(ResourceName::Cpu, 10_000_000);
    limited.remaining.nodes = Some(10_000);
    let capped = expect_valid_plan(&problem(mix(), vec![limited]));
    // Rounding the pattern LP and merging nodes run under limits too, charging each node as the greedy does.
    assert_eq!(capped.cost, free.cost);
    assert_eq!(capped.new_nodes.len(), free.new_nodes.len());
}

#[test]
fn a_reached_limit_leaves_pods_unschedulable_with_the_reason() {
    let mut limited = pool("small");
    limited.remaining.resources.insert(ResourceName::Cpu, 8000);
    let p = problem(vec![pods("batch", 20).cpu(1000).mem(1024).build()], vec![limited]);
    let plan = expect_valid_plan(&p);
    let placed = node_pods(&plan).len();
    // The limit is spent on nodes that hold the most pods per core, not on the cheapest per pod: 8 cores
    // bought as one 8-vCPU node hold 7 pods of 1 core (as 2-vCPU nodes only 4).
    assert!((6..20).contains(&placed), "{placed} placed: {:?}", plan.new_nodes);
    let cpu_bought: i64 = plan
        .new_nodes
        .iter()
        .map(|n| catalog().get(&n.launch.instance_type).unwrap().capacity.cpu_millis)
        .sum();
    assert!(cpu_bought <= 8000);
    assert_eq!(plan.unschedulable.len(), 20 - placed);
    let reason = &plan.unschedulable[0].reason;
    assert!(reason.contains("NodePool `small` would exceed its limits"), "{reason}");
}

#[test]
fn unavailable_offerings_are_skipped() {
    let p = problem(vec![pods("web", 1).cpu(1500).mem(3000).build()], vec![pool("default")]);
    let first = expect_valid_plan(&p).new_nodes[0].launch.clone();
    let mut p2 = p.clone();
    assert!(std::sync::Arc::make_mut(&mut p2.catalog).set_available(
        &first.instance_type,
        &first.zone,
        first.capacity_type,
        false
    ));
    let second = expect_valid_plan(&p2).new_nodes[0].launch.clone();
    assert_ne!((&second.instance_type, &second.zone), (&first.instance_type, &first.zone));
    assert!(second.price >= first.price);
}

#[test]
fn taints_keep_pods_off_pools_they_do_not_tolerate() {
    let gpu_taint = Taint::new(NVIDIA_GPU, "true", TaintEffect::NoSchedule).unwrap();
    let mut gpu = pool("gpu");
    gpu.weight = 10;
    gpu.taints.push(gpu_taint);
    gpu.requirements.add(req(aws::INSTANCE_GPU_COUNT, Operator::Gt, &["0"]));
    let default = pool("default");
    let p = problem(
        vec![
            pods("web", 5).cpu(500).mem(512).build(),
            pods("train", 2)
                .cpu(4000)
                .mem(16000)
                .gpus(1)
                .tolerate(Toleration::exists(NVIDIA_GPU, None))
                .build(),
        ],
        vec![gpu, default],
    );
    let plan = expect_valid_plan(&p);
    for n in &plan.new_nodes {
        let is_gpu_node = n.pods.iter().any(|pod| pod.starts_with("train"));
        assert_eq!(n.nodepool == "gpu", is_gpu_node, "{n:?}");
    }
}

#[test]
fn unschedulable_reasons_say_what_to_change() {
    let mut gpu = pool("gpu");
    gpu.requirements.add(req(aws::INSTANCE_GPU_MANUFACTURER, Operator::In, &["nvidia"]));
    let p = problem(
        vec![
            pods("big", 1)
                .cpu(8000)
                .mem(32000)
                .gpus(8)
                .require(req(labels::ARCH, Operator::In, &["arm64"]))
                .build(),
        ],
        vec![gpu],
    );
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.unschedulable.len(), 1);
    let reason = &plan.unschedulable[0].reason;
    assert!(reason.contains("no instance type in NodePool `gpu`"), "{reason}");
    assert!(reason.contains("kubernetes.io/arch In [arm64]"), "{reason}");
    assert!(reason.contains("nvidia.com/gpu=8"), "{reason}");

    let mut team = pool("team-a");
    team.labels.insert("team".into(), "a".into());
    let p =
        problem(vec![pods("x", 1).cpu(100).require(req("team", Operator::In, &["b"])).build()], vec![team]);
    let reason = &expect_valid_plan(&p).unschedulable[0].reason;
    assert!(reason.contains("NodePool `team-a` does not allow it") && reason.contains("team"), "{reason}");

    let p = problem(vec![pods("x", 1).cpu(100).build()], vec![]);
    assert!(expect_valid_plan(&p).unschedulable[0].reason.contains("no NodePool"));
}

#[test]
fn daemonset_overhead_is_reserved_on_every_new_node() {
    let mut p = problem(vec![pods("web", 1).cpu(1500).mem(3000).build()], vec![pool("default")]);
    let ds = DaemonSetSpec {
        name: "logging".into(),
        requests: Resources::new().with_cpu_millis(400).with_memory_mib(1024).with_pods(1),
        affinity: crate::requirements::NodeAffinity::any(),
        tolerations: vec![Toleration::everything()],
    };
    p.daemonsets.push(ds);
    let plan = expect_valid_plan(&p);
    let t = catalog().get(&plan.new_nodes[0].launch.instance_type).unwrap().clone();
    let alloc = t.allocatable();
    assert!(alloc.cpu_millis >= 1900 && alloc.memory_bytes >= 4024 << 20, "{} {alloc}", t.name);
}

#[test]
fn min_values_keeps_enough_instance_families_open() {
    let mut flexible = pool("flexible");
    flexible.requirements.add(
        req(aws::INSTANCE_FAMILY, Operator::In, &["m5", "m6i", "m6a", "m7i", "c5", "c6i"])
            .with_min_values(4)
            .unwrap(),
    );
    let p = problem(vec![pods("web", 3).cpu(1000).mem(2048).build()], vec![flexible]);
    let plan = expect_valid_plan(&p);
    for node in &plan.new_nodes {
        let families: std::collections::BTreeSet<&str> = node
            .alternatives
            .iter()
            .map(|a| catalog().get(&a.instance_type).unwrap().label(aws::INSTANCE_FAMILY).unwrap().to_owned())
            .map(|f| Box::leak(f.into_boxed_str()) as &str)
            .collect();
        assert!(families.len() >= 4, "{families:?}");
    }
}

#[test]
fn node_selector_on_zone_and_capacity_type() {
    let p = problem(
        vec![
            pods("db", 2)
                .cpu(2000)
                .mem(8000)
                .require(req(labels::ZONE, Operator::In, &["us-east-1c"]))
                .require(req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]))
                .build(),
        ],
        vec![pool("default")],
    );
    let plan = expect_valid_plan(&p);
    for n in &plan.new_nodes {
        assert_eq!(n.launch.zone, "us-east-1c");
        assert!(
            n.alternatives
                .iter()
                .all(|a| a.zone == "us-east-1c" && a.capacity_type == CapacityType::OnDemand)
        );
    }
}

// ---- property test: any plan passes the independent validator, and cost >= bound ----

fn arb_pods() -> impl Strategy<Value = Vec<PodSpec>> {
    let shape = (
        prop::sample::select(vec![100i64, 250, 500, 1000, 2000, 4000]),
        prop::sample::select(vec![128i64, 512, 1024, 4096, 16384]),
        1usize..40,
        0usize..14,
    );
    prop::collection::vec(shape, 1..6).prop_map(|shapes| {
        let mut out = Vec::new();
        for (i, (cpu, mem, count, constraint)) in shapes.into_iter().enumerate() {
            let mut builder = pods(&format!("d{i}"), count).cpu(cpu).mem(mem);
            builder = match constraint {
                0 => builder.require(req(labels::ARCH, Operator::In, &["arm64"])),
                1 => builder.require(req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"])),
                2 => builder.require(req(labels::ZONE, Operator::NotIn, &["us-east-1a", "us-east-1b"])),
                3 => builder.require(req(aws::INSTANCE_CATEGORY, Operator::In, &["r"])),
                4 => builder.tolerate(Toleration::exists("dedicated", None)),
                5 => builder.label("app", &format!("d{i}")).avoid("app", &format!("d{i}")),
                6 => builder.label("app", &format!("d{i}")).avoid("app", "d0"),
                7 => builder.label("app", &format!("d{i}")).spread(labels::ZONE, 1),
                8 => builder.label("app", &format!("d{i}")).spread(labels::HOSTNAME, 2),
                9 => builder.label("app", &format!("d{i}")).beside("app", &format!("d{i}")),
                10 => builder.label("app", &format!("d{i}")).beside("app", "d0"),
                11 => builder.label("app", &format!("d{i}")).rather_not_beside(
                    100,
                    labels::HOSTNAME,
                    "app",
                    &format!("d{i}"),
                ),
                12 => builder.label("app", &format!("d{i}")).rather_not_beside(50, labels::ZONE, "app", "d0"),
                _ => builder.label("app", &format!("d{i}")),
            };
            out.extend(builder.build());
        }
        out
    })
}

fn arb_pools() -> impl Strategy<Value = Vec<NodePoolTemplate>> {
    // Half the cases have no limits at all: the path where the pattern LP's rounding may replace the greedy.
    (any::<bool>(), prop::option::of(0i64..64_000), any::<bool>()).prop_map(|(tainted, cpu_limit, second)| {
        let mut a = pool("a");
        a.weight = 10;
        if tainted {
            a.taints.push(Taint::new("dedicated", "x", TaintEffect::NoSchedule).unwrap());
        }
        if let Some(limit) = cpu_limit {
            a.remaining.resources.insert(ResourceName::Cpu, limit);
        }
        a.requirements.add(req(aws::INSTANCE_GENERATION, Operator::Gt, &["4"]));
        let mut pools = vec![a];
        if second {
            let mut b = pool("b");
            b.requirements.add(req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]));
            if cpu_limit.is_some() {
                b.remaining.nodes = Some(5);
            }
            pools.push(b);
        }
        pools
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn every_plan_is_valid_and_bounded(pods in arb_pods(), pools in arb_pools()) {
        let p = Problem { pods, existing: vec![], nodepools: pools, daemonsets: vec![], catalog: catalog().into() };
        let plan = solve(&p);
        let violations = validate::violations(&p, &plan);
        prop_assert!(violations.is_empty(), "{}", violations.join("\n"));
        if let Some(b) = plan.lower_bound {
            prop_assert!(b.price <= plan.cost);
        }
        // Made in one go, the same pods are placed, pods moved between new nodes break no rule, and the
        // plan never costs more than the live one.
        let tight = Algorithm::Cartwright.solve(&p);
        let violations = validate::violations(&p, &tight);
        prop_assert!(violations.is_empty(), "tight: {}", violations.join("\n"));
        prop_assert_eq!(&tight.unschedulable, &plan.unschedulable);
        prop_assert!(tight.cost <= plan.cost, "tight {:?} above live {:?}", tight.cost, plan.cost);
        if let Some(b) = tight.lower_bound {
            prop_assert!(b.price <= tight.cost);
        }
        // The baselines obey the same rules, and the bound holds for them too when they schedule exactly the
        // same pods (the bound is for that set; under limits they may choose other pods) and put them where
        // the NodePool weights say, as the pattern bound assumes: Karpenter's scheduler does unless limits,
        // which it charges at a NodeClaim's largest option, send pods down the weights sooner than
        // Cartwright's plans would; Cluster Autoscaler's least-waste expander ignores weights.
        let limited = p.nodepools.iter().any(|pool| pool.remaining != Limits::default());
        for algorithm in [Algorithm::KarpenterGreedy, Algorithm::CaLeastWaste] {
            let by_weight = match algorithm {
                Algorithm::KarpenterGreedy => !limited,
                _ => p.nodepools.len() == 1,
            };
            let other = algorithm.solve(&p);
            let violations = validate::violations(&p, &other);
            prop_assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
            let unplaced = |plan: &Plan| plan.unschedulable.iter().map(|u| u.pod.clone()).collect::<std::collections::BTreeSet<_>>();
            // With preferences, each plan's bound is for the preferences it kept, which may differ.
            let preferences = p.pods.iter().any(|pod| pod.preference_steps() > 0);
            if let Some(b) = plan.lower_bound && unplaced(&other) == unplaced(&plan) && !preferences && by_weight {
                prop_assert!(b.price <= other.cost, "{} below the bound", algorithm.name());
            }
        }
    }
}

#[test]
fn baselines_reproduce_their_peers_rules() {
    let p = problem(vec![pods("web", 30).cpu(500).mem(1024).build()], vec![pool("default")]);
    let karpenter = Algorithm::KarpenterGreedy.solve(&p);
    assert!(validate::violations(&p, &karpenter).is_empty());
    // Karpenter grows NodeClaims: 30 small pods land on few large nodes.
    assert!(karpenter.new_nodes.len() <= 3, "{} nodes", karpenter.new_nodes.len());
    let ca = Algorithm::CaLeastWaste.solve(&p);
    assert!(validate::violations(&p, &ca).is_empty());
    // One fixed group: every node is the same type.
    let types: std::collections::BTreeSet<&str> =
        ca.new_nodes.iter().map(|n| n.launch.instance_type.as_str()).collect();
    assert_eq!(types.len(), 1, "{types:?}");
    let ours = solve(&p);
    assert!(
        ours.cost <= karpenter.cost && ours.cost <= ca.cost,
        "{} vs {} / {}",
        ours.cost,
        karpenter.cost,
        ca.cost
    );
    assert_eq!(Algorithm::from_name("ca-least-waste"), Some(Algorithm::CaLeastWaste));
}

#[test]
fn hostname_anti_affinity_puts_one_replica_per_node() {
    let mut p = problem(
        vec![
            pods("db", 5).cpu(500).mem(1024).label("app", "db").avoid("app", "db").build(),
            pods("web", 10).cpu(250).mem(512).label("app", "web").build(),
            pods("cache", 3).cpu(250).mem(512).label("app", "cache").avoid("app", "db").build(),
        ],
        vec![pool("default")],
    );
    p.existing.push(ExistingNode {
        name: "node-a".into(),
        labels: BTreeMap::new(),
        taints: vec![],
        allocatable: Resources::new().with_cpu_millis(8000).with_memory_mib(16000).with_pods(50),
        requested: Resources::new(),
        nodepool: None,
        initialized: true,
        pod_labels: vec![BTreeMap::from([("app".to_owned(), "db".to_owned())])],
        repelled: vec![],
    });
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let db_nodes: Vec<usize> =
            plan.new_nodes.iter().map(|n| n.pods.iter().filter(|x| x.starts_with("db")).count()).collect();
        assert!(db_nodes.iter().all(|&k| k <= 1), "{}: {db_nodes:?}", algorithm.name());
        assert_eq!(
            db_nodes.iter().sum::<usize>(),
            5,
            "{}: no db pod on node-a, which already runs one",
            algorithm.name()
        );
        assert!(plan.placements.iter().all(|pl| !pl.pod.starts_with("db") && !pl.pod.starts_with("cache")));
        assert!(plan.placements.iter().any(|pl| pl.pod.starts_with("web")), "web may use node-a");
    }
}

#[test]
fn zone_spread_balances_across_zones_counting_existing_pods() {
    let mut three_zones = pool("default");
    three_zones.requirements.add(req(
        labels::ZONE,
        Operator::In,
        &["us-east-1a", "us-east-1b", "us-east-1c"],
    ));
    let mut p = problem(
        vec![pods("web", 9).cpu(500).mem(1024).label("app", "web").spread(labels::ZONE, 1).build()],
        vec![three_zones],
    );
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &plan.new_nodes {
            *per_zone.entry(n.launch.zone.as_str()).or_default() += n.pods.len();
        }
        assert_eq!(
            per_zone.values().copied().collect::<Vec<_>>(),
            vec![3, 3, 3],
            "{}: {per_zone:?}",
            algorithm.name()
        );
    }
    // Three matching pods already run in us-east-1a: the new ones fill b and c first, then one per zone.
    p.existing.push(ExistingNode {
        name: "node-a".into(),
        labels: BTreeMap::from([(labels::ZONE.to_owned(), "us-east-1a".to_owned())]),
        taints: vec![Taint::new("full", "", TaintEffect::NoSchedule).unwrap()],
        allocatable: Resources::new().with_cpu_millis(4000).with_memory_mib(8000).with_pods(20),
        requested: Resources::new(),
        nodepool: None,
        initialized: true,
        pod_labels: vec![BTreeMap::from([("app".to_owned(), "web".to_owned())]); 3],
        repelled: vec![],
    });
    let plan = expect_valid_plan(&p);
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &plan.new_nodes {
        *per_zone.entry(n.launch.zone.as_str()).or_default() += n.pods.len();
    }
    assert_eq!(per_zone, BTreeMap::from([("us-east-1a", 1), ("us-east-1b", 4), ("us-east-1c", 4)]));
}

#[test]
fn hostname_spread_caps_pods_per_node() {
    let p = problem(
        vec![pods("web", 7).cpu(250).mem(256).label("app", "web").spread(labels::HOSTNAME, 2).build()],
        vec![pool("default")],
    );
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        assert!(validate::violations(&p, &plan).is_empty(), "{}", algorithm.name());
        assert!(plan.new_nodes.iter().all(|n| n.pods.len() <= 2), "{}", algorithm.name());
        assert_eq!(node_pods(&plan).len(), 7);
    }
}

#[test]
fn pods_sharing_a_host_port_never_share_a_node() {
    let pods: Vec<PodSpec> = (0..4)
        .map(|i| {
            PodSpec::new(format!("ingress-{i}"), Resources::new().with_cpu_millis(100).with_memory_mib(64))
                .with_host_port("TCP", 443)
        })
        .chain((0..4).map(|i| {
            PodSpec::new(format!("other-{i}"), Resources::new().with_cpu_millis(100).with_memory_mib(64))
                .with_host_port("tcp", 8080)
        }))
        .collect();
    let p = problem(vec![pods], vec![NodePoolTemplate::new("default")]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty());
    for node in &plan.new_nodes {
        let ingress = node.pods.iter().filter(|n| n.starts_with("ingress")).count();
        let other = node.pods.iter().filter(|n| n.starts_with("other")).count();
        assert!(ingress <= 1 && other <= 1, "{:?}", node.pods);
    }
    assert_eq!(plan.new_nodes.len(), 4, "one of each port per node: 4 nodes, each with one of each");
}

#[test]
fn capacity_type_spread_splits_pods_between_spot_and_on_demand() {
    let p = problem(
        vec![
            pods("api", 10).cpu(1000).mem(2048).label("app", "api").spread(labels::CAPACITY_TYPE, 2).build(),
        ],
        vec![pool("default")],
    );
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &plan.new_nodes {
            *per_type.entry(n.launch.capacity_type.as_str()).or_default() += n.pods.len();
        }
        let (spot, od) =
            (per_type.get("spot").copied().unwrap_or(0), per_type.get("on-demand").copied().unwrap_or(0));
        assert_eq!(spot + od, 10, "{}", algorithm.name());
        assert!(spot.abs_diff(od) <= 2, "{}: {per_type:?}", algorithm.name());
    }
}

#[test]
fn min_domains_above_the_available_zones_caps_each_zone_at_max_skew() {
    let mut two_zones = pool("default");
    two_zones.requirements.add(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b"]));
    let mut spec = pods("web", 6).cpu(500).mem(512).label("app", "web").spread(labels::ZONE, 1).build();
    for pod in &mut spec {
        pod.topology_spread[0].min_domains = Some(3);
    }
    let p = problem(vec![spec], vec![two_zones]);
    let plan = expect_valid_plan(&p);
    let placed: usize = plan.new_nodes.iter().map(|n| n.pods.len()).sum();
    assert_eq!(placed, 2, "one per zone: with minDomains 3 and 2 zones the global minimum is 0");
    assert_eq!(plan.unschedulable.len(), 4);
    assert!(plan.unschedulable[0].reason.contains("minDomains 3"), "{}", plan.unschedulable[0].reason);
}

#[test]
fn zone_self_affinity_keeps_a_group_in_one_zone_and_follows_existing_pods() {
    let group = |n| {
        pods("cache", n)
            .cpu(500)
            .mem(512)
            .label("app", "cache")
            .build()
            .into_iter()
            .map(|p| p.with_zone_affinity(&[("app", "cache")]))
            .collect::<Vec<_>>()
    };
    let mut p = problem(vec![group(12)], vec![pool("default")]);
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let zones: BTreeSet<&str> = plan.new_nodes.iter().map(|n| n.launch.zone.as_str()).collect();
        assert_eq!(zones.len(), 1, "{}: {zones:?}", algorithm.name());
        assert_eq!(plan.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>(), 12);
    }
    // A matching pod already runs in us-east-1c: the group joins it there.
    p.existing.push(ExistingNode {
        name: "node-c".into(),
        labels: BTreeMap::from([(labels::ZONE.to_owned(), "us-east-1c".to_owned())]),
        taints: vec![],
        allocatable: Resources::new().with_cpu_millis(1000).with_memory_mib(1000).with_pods(10),
        requested: Resources::new().with_cpu_millis(1000),
        nodepool: None,
        initialized: true,
        pod_labels: vec![BTreeMap::from([("app".to_owned(), "cache".to_owned())])],
        repelled: vec![],
    });
    let plan = expect_valid_plan(&p);
    assert!(plan.new_nodes.iter().all(|n| n.launch.zone == "us-east-1c"));
}

#[test]
fn zone_affinity_to_other_pods_pulls_them_into_one_zone_and_anti_affinity_takes_distinct_zones() {
    let web: Vec<PodSpec> = pods("web", 4)
        .cpu(250)
        .mem(256)
        .label("app", "web")
        .build()
        .into_iter()
        .map(|p| p.with_zone_affinity(&[("app", "db")]))
        .collect();
    let db = pods("db", 2).cpu(1000).mem(2048).label("app", "db").build();
    let p = problem(vec![web, db], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    let zones: BTreeSet<&str> = plan.new_nodes.iter().map(|n| n.launch.zone.as_str()).collect();
    assert_eq!(zones.len(), 1, "web follows db, db pulled along: {zones:?}");
    assert!(plan.unschedulable.is_empty());

    // One replica per zone: five zones in us-east-1, so the sixth replica cannot be placed.
    let spread: Vec<PodSpec> = pods("zk", 6)
        .cpu(500)
        .mem(512)
        .label("app", "zk")
        .build()
        .into_iter()
        .map(|p| p.with_zone_anti_affinity(&[("app", "zk")]))
        .collect();
    let p = problem(vec![spread], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    let zones: BTreeSet<&str> = plan.new_nodes.iter().map(|n| n.launch.zone.as_str()).collect();
    assert_eq!(zones.len(), 5);
    assert_eq!(plan.unschedulable.len(), 1);
    assert!(plan.unschedulable[0].reason.contains("anti-affinity on topology.kubernetes.io/zone"));
}

#[test]
fn the_validator_catches_zone_affinity_broken_by_hand() {
    let web: Vec<PodSpec> = pods("web", 2)
        .cpu(250)
        .mem(256)
        .label("app", "web")
        .build()
        .into_iter()
        .map(|p| p.with_zone_anti_affinity(&[("app", "web")]))
        .collect();
    let p = problem(vec![web], vec![pool("default")]);
    let mut plan = expect_valid_plan(&p);
    // Move the second pod onto the first one's node: same zone.
    let moved = plan.new_nodes[1].pods.pop().unwrap();
    plan.new_nodes[0].pods.push(moved);
    plan.new_nodes.retain(|n| !n.pods.is_empty());
    let v = validate::violations(&p, &plan);
    assert!(v.iter().any(|v| v.contains("zone anti-affinity")), "{v:?}");
}

#[test]
fn a_hostname_spread_group_with_mixed_requests_stays_within_max_skew_per_node() {
    // One group (same label and selector), two request shapes: two classes that must share the allowance.
    let small = pods("small", 6).cpu(100).mem(128).label("app", "mixed").spread(labels::HOSTNAME, 1).build();
    let big = pods("big", 6).cpu(400).mem(512).label("app", "mixed").spread(labels::HOSTNAME, 1).build();
    let p = problem(vec![small, big], vec![pool("default")]);
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        assert!(plan.new_nodes.iter().all(|n| n.pods.len() == 1), "{}", algorithm.name());
    }
}

#[test]
fn preferred_node_affinity_is_honoured_when_possible_and_relaxed_heaviest_first() {
    let prefer = |family: &str| Requirements::new().with(req(aws::INSTANCE_FAMILY, Operator::In, &[family]));
    // Prefer m7i (weight 80), then r7i (weight 20): m7i holds them.
    let web: Vec<PodSpec> = pods("web", 4)
        .cpu(1000)
        .mem(2048)
        .build()
        .into_iter()
        .map(|p| p.with_preference(20, prefer("r7i")).with_preference(80, prefer("m7i")))
        .collect();
    let p = problem(vec![web.clone()], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert!(
        plan.new_nodes.iter().all(|n| n.launch.instance_type.starts_with("m7i.")),
        "{:?}",
        node_pods(&plan)
    );
    // A NodePool that offers no m7i: the heaviest preference is dropped and r7i is used.
    let mut no_m7i = pool("default");
    no_m7i.requirements.add(req(aws::INSTANCE_FAMILY, Operator::NotIn, &["m7i"]));
    let p = problem(vec![web.clone()], vec![no_m7i]);
    let plan = expect_valid_plan(&p);
    assert!(
        plan.new_nodes.iter().all(|n| n.launch.instance_type.starts_with("r7i.")),
        "{:?}",
        node_pods(&plan)
    );
    // Neither offered: every preference is dropped and the pods still run.
    let mut neither = pool("default");
    neither.requirements.add(req(aws::INSTANCE_FAMILY, Operator::NotIn, &["m7i", "r7i"]));
    let p = problem(vec![web], vec![neither]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty());
    assert_eq!(plan.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>(), 4);
}

#[test]
fn running_pods_anti_affinity_keeps_matching_pods_off_their_node() {
    // An existing node with room, running a pod that repels `app: noisy`.
    let mut p = problem(
        vec![
            pods("noisy", 1).cpu(100).mem(64).label("app", "noisy").build(),
            pods("quiet", 1).cpu(100).mem(64).label("app", "quiet").build(),
        ],
        vec![pool("default")],
    );
    p.existing.push(ExistingNode {
        name: "node-1".into(),
        labels: BTreeMap::from([(labels::ZONE.to_owned(), "us-east-1a".to_owned())]),
        taints: vec![],
        allocatable: Resources::new().with_cpu_millis(4000).with_memory_mib(8000).with_pods(20),
        requested: Resources::new(),
        nodepool: None,
        initialized: true,
        pod_labels: vec![BTreeMap::from([("app".to_owned(), "db".to_owned())])],
        repelled: vec![BTreeMap::from([("app".to_owned(), "noisy".to_owned())])],
    });
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let on_existing: Vec<&str> = plan.placements.iter().map(|x| x.pod.as_str()).collect();
        assert_eq!(on_existing, ["quiet-0"], "{}", algorithm.name());
        assert_eq!(plan.new_nodes.len(), 1, "{}", algorithm.name());
    }
}

fn existing_node(name: &str, cpu_millis: i64, pod_labels: &[(&str, &str)]) -> ExistingNode {
    ExistingNode {
        name: name.into(),
        labels: BTreeMap::from([
            (labels::ZONE.to_owned(), "us-east-1a".to_owned()),
            (labels::HOSTNAME.to_owned(), name.to_owned()),
        ]),
        taints: vec![],
        allocatable: Resources::new().with_cpu_millis(cpu_millis).with_memory_mib(16_000).with_pods(50),
        requested: Resources::new(),
        nodepool: None,
        initialized: true,
        pod_labels: pod_labels
            .iter()
            .map(|(k, v)| BTreeMap::from([((*k).to_owned(), (*v).to_owned())]))
            .collect(),
        repelled: vec![],
    }
}

/// The pods of each new node, as name sets, and each placement's node.
fn groups(plan: &Plan) -> Vec<BTreeSet<String>> {
    plan.new_nodes.iter().map(|n| n.pods.iter().cloned().collect()).collect()
}

#[test]
fn hostname_self_affinity_keeps_a_group_on_one_node_and_follows_running_pods() {
    let cache = pods("cache", 4).cpu(500).mem(512).label("app", "cache").beside("app", "cache").build();
    let other = pods("other", 3).cpu(500).mem(512).label("app", "other").build();
    let p = problem(vec![cache.clone(), other.clone()], vec![pool("default")]);
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        let holding: Vec<usize> = plan
            .new_nodes
            .iter()
            .map(|n| n.pods.iter().filter(|p| p.starts_with("cache")).count())
            .filter(|&c| c > 0)
            .collect();
        assert_eq!(holding, [4], "{}: {:?}", algorithm.name(), groups(&plan));
    }
    // A cache pod already runs on node-2: the group joins it there (node-1 has room but no cache).
    let mut p = problem(vec![cache], vec![pool("default")]);
    p.existing.push(existing_node("node-1", 8000, &[]));
    p.existing.push(existing_node("node-2", 8000, &[("app", "cache")]));
    let plan = expect_valid_plan(&p);
    assert!(plan.new_nodes.is_empty(), "{:?}", groups(&plan));
    assert!(plan.placements.iter().all(|x| x.node == "node-2"), "{:?}", plan.placements);
    assert_eq!(plan.placements.len(), 4);
    // node-2 is too small for them: they cannot go anywhere else.
    let mut small = p.clone();
    small.existing[1].allocatable.cpu_millis = 1000;
    let plan = expect_valid_plan(&small);
    assert!(plan.new_nodes.is_empty());
    assert_eq!(plan.placements.len(), 2, "two fit beside the running cache pod");
    assert_eq!(plan.unschedulable.len(), 2);
}

#[test]
fn hostname_affinity_to_other_pods_puts_each_beside_a_partner() {
    // Web must run beside a cache pod; cache pods keep one per node.
    let web = pods("web", 6).cpu(250).mem(256).label("app", "web").beside("app", "cache").build();
    let cache = pods("cache", 3).cpu(1000).mem(4096).label("app", "cache").avoid("app", "cache").build();
    let p = problem(vec![web, cache], vec![pool("default")]);
    for algorithm in Algorithm::ALL {
        let plan = algorithm.solve(&p);
        let violations = validate::violations(&p, &plan);
        assert!(violations.is_empty(), "{}: {}", algorithm.name(), violations.join("\n"));
        assert!(plan.unschedulable.is_empty(), "{}", algorithm.name());
        for node in groups(&plan) {
            let caches = node.iter().filter(|p| p.starts_with("cache")).count();
            assert_eq!(caches, 1, "{}: {node:?}", algorithm.name());
        }
        // Spread over their partners, two each.
        assert_eq!(plan.new_nodes.len(), 3, "{}", algorithm.name());
        // Pairing is a choice: the plan carries no bound that would claim to cover other pairings.
        if algorithm == Algorithm::Cartwright {
            assert!(plan.lower_bound.is_none());
        }
    }
}

#[test]
fn hostname_affinity_that_cannot_hold_says_why() {
    let lonely = pods("lonely", 2).cpu(250).mem(256).label("app", "lonely").beside("app", "missing").build();
    // 800 vCPU fits one u7in.224xlarge (896 vCPU); 1,600 fits nothing.
    let huge = pods("huge", 200).cpu(8000).mem(8192).label("app", "huge").beside("app", "huge").build();
    let fine = pods("fine", 2).cpu(250).mem(256).build();
    let p = problem(vec![lonely, huge, fine], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    let reasons: BTreeMap<&str, &str> =
        plan.unschedulable.iter().map(|u| (u.pod.as_str(), u.reason.as_str())).collect();
    assert_eq!(reasons.len(), 202);
    assert!(reasons["lonely-0"].contains("no pod matching"), "{}", reasons["lonely-0"]);
    assert!(reasons["huge-7"].contains("on one node with 199 other pods"), "{}", reasons["huge-7"]);
    assert_eq!(plan.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>(), 2);
}

#[test]
fn the_validator_catches_hostname_affinity_broken_by_hand() {
    let cache = pods("cache", 2).cpu(500).mem(512).label("app", "cache").beside("app", "cache").build();
    let p = problem(vec![cache], vec![pool("default")]);
    let mut plan = expect_valid_plan(&p);
    assert_eq!(plan.new_nodes.len(), 1);
    // Split the pair over two nodes.
    let mut second = plan.new_nodes[0].clone();
    second.pods = vec![plan.new_nodes[0].pods.pop().unwrap()];
    plan.cost = Price(plan.cost.0 * 2);
    plan.new_nodes.push(second);
    let v = validate::violations(&p, &plan);
    assert!(v.iter().any(|v| v.contains("only one group may start")), "{v:?}");
}

#[test]
fn preferred_hostname_anti_affinity_spreads_one_per_node_until_the_limit_then_shares() {
    let web = pods("web", 6).cpu(500).mem(512).label("app", "web").rather_not_beside(
        100,
        labels::HOSTNAME,
        "app",
        "web",
    );
    let p = problem(vec![web.build()], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.new_nodes.len(), 6, "{:?}", groups(&plan));
    // Three nodes allowed: three pods keep their preference, the other three relax it and share.
    let mut limited = pool("default");
    limited.remaining.nodes = Some(3);
    let web = pods("web", 6).cpu(500).mem(512).label("app", "web").rather_not_beside(
        100,
        labels::HOSTNAME,
        "app",
        "web",
    );
    let p = problem(vec![web.build()], vec![limited]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty(), "{:?}", plan.unschedulable);
    assert_eq!(plan.new_nodes.len(), 3, "{:?}", groups(&plan));
    assert!(plan.new_nodes.iter().all(|n| n.pods.len() == 2), "{:?}", groups(&plan));
}

#[test]
fn preferred_zone_anti_affinity_takes_distinct_zones_then_relaxes() {
    // Seven replicas that would rather not share a zone; us-east-1 has five zones.
    let zk = pods("zk", 7)
        .cpu(500)
        .mem(512)
        .label("app", "zk")
        .rather_not_beside(100, labels::ZONE, "app", "zk")
        .build();
    let p = problem(vec![zk], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty(), "{:?}", plan.unschedulable);
    let zones: BTreeSet<&str> = plan.new_nodes.iter().map(|n| n.launch.zone.as_str()).collect();
    assert_eq!(zones.len(), 5, "{:?}", node_pods(&plan));
    assert_eq!(plan.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>(), 7);
}

#[test]
fn preferences_relax_pod_affinity_before_node_affinity() {
    // Preferred: beside a pod that never comes (weight 100), and on m7i (weight 1). The pod affinity goes
    // first (Karpenter's order), so the node affinity still holds.
    let m7i = Requirements::new().with(req(aws::INSTANCE_FAMILY, Operator::In, &["m7i"]));
    let web: Vec<PodSpec> = pods("web", 3)
        .cpu(1000)
        .mem(2048)
        .label("app", "web")
        .build()
        .into_iter()
        .map(|p| {
            p.with_preferred_pod_affinity(100, PodAffinityTerm::new(labels::HOSTNAME, &[("app", "ghost")]))
                .with_preference(1, m7i.clone())
        })
        .collect();
    let p = problem(vec![web.clone()], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty());
    assert!(
        plan.new_nodes.iter().all(|n| n.launch.instance_type.starts_with("m7i.")),
        "{:?}",
        node_pods(&plan)
    );
    // Preferred hostname affinity to a partner that exists: honoured.
    let db = pods("db", 1).cpu(2000).mem(4096).label("app", "ghost").build();
    let p = problem(vec![web, db], vec![pool("default")]);
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.new_nodes.len(), 1, "all beside the db pod: {:?}", groups(&plan));
}

/// Pods of `app` spreading on zones with maxSkew 1 and the given policies.
fn spread_with_policies(name: &str, count: usize, honor_affinity: bool, honor_taints: bool) -> Vec<PodSpec> {
    let mut built = pods(name, count).cpu(500).mem(512).label("app", name).spread(labels::ZONE, 1).build();
    for pod in &mut built {
        pod.topology_spread[0].honor_node_affinity = honor_affinity;
        pod.topology_spread[0].honor_node_taints = honor_taints;
    }
    built
}

#[test]
fn node_taints_policy_decides_whether_a_tainted_pools_zone_holds_the_minimum() {
    // The general pool offers us-east-1a and 1b; a tainted GPU pool also offers 1c.
    let mut general = pool("general");
    general.requirements.add(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b"]));
    let mut gpu = pool("gpu");
    gpu.requirements.add(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b", "us-east-1c"]));
    gpu.taints.push(Taint::new("nvidia.com/gpu", "true", TaintEffect::NoSchedule).unwrap());
    // Ignore (Kubernetes' default): 1c counts and stays empty, so 1a and 1b take one pod each.
    let p = problem(vec![spread_with_policies("web", 4, true, false)], vec![general.clone(), gpu.clone()]);
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>(), 2);
    assert_eq!(plan.unschedulable.len(), 2);
    assert!(plan.unschedulable[0].reason.contains("us-east-1c holds 0"), "{}", plan.unschedulable[0].reason);
    // Honor: only the zones of pools whose taints the pods tolerate count.
    let p = problem(vec![spread_with_policies("web", 4, true, true)], vec![general, gpu]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty(), "{:?}", plan.unschedulable);
    let zones: BTreeMap<&str, usize> = plan.new_nodes.iter().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n.launch.zone.as_str()).or_default() += n.pods.len();
        m
    });
    assert_eq!(zones, BTreeMap::from([("us-east-1a", 2), ("us-east-1b", 2)]));
}

#[test]
fn node_affinity_policy_decides_which_zones_and_running_pods_count() {
    let pick = |honor: bool| {
        let mut built = spread_with_policies("web", 4, honor, false);
        for pod in &mut built {
            *pod = pod
                .clone()
                .with_requirement(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b"]))
                .with_requirement(req(aws::INSTANCE_FAMILY, Operator::In, &["m5"]));
        }
        built
    };
    let mut default = pool("default");
    default.requirements.add(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b", "us-east-1c"]));
    // Honor (the default): 1c is not the pods' to use, so it does not count.
    let p = problem(vec![pick(true)], vec![default.clone()]);
    let plan = expect_valid_plan(&p);
    assert!(plan.unschedulable.is_empty(), "{:?}", plan.unschedulable);
    // Ignore: 1c counts and stays empty.
    let p = problem(vec![pick(false)], vec![default.clone()]);
    let plan = expect_valid_plan(&p);
    assert_eq!(plan.unschedulable.len(), 2, "{:?}", plan.unschedulable);
    // Honor: running web pods on a c5 node in 1a do not count (the pods require m5), so the new ones split
    // evenly; with Ignore they count and the new pods go to 1b first.
    let mut default = pool("default");
    default.requirements.add(req(labels::ZONE, Operator::In, &["us-east-1a", "us-east-1b"]));
    let mut c5 = existing_node("c5-node", 100, &[("app", "web"), ("app", "web"), ("app", "web")]);
    c5.labels.insert(aws::INSTANCE_FAMILY.to_owned(), "c5".to_owned());
    let per_zone = |honor: bool| {
        let mut p = problem(vec![pick(honor)], vec![default.clone()]);
        p.existing.push(c5.clone());
        let plan = expect_valid_plan(&p);
        plan.new_nodes.iter().fold(BTreeMap::new(), |mut m: BTreeMap<String, usize>, n| {
            *m.entry(n.launch.zone.clone()).or_default() += n.pods.len();
            m
        })
    };
    assert_eq!(per_zone(true), BTreeMap::from([("us-east-1a".to_owned(), 2), ("us-east-1b".to_owned(), 2)]));
    assert_eq!(per_zone(false), BTreeMap::from([("us-east-1a".to_owned(), 1), ("us-east-1b".to_owned(), 3)]));
}

#[test]
fn column_generation_starts_from_the_seed_plan_and_never_ends_above_it() {
    let problem = problem(
        vec![pods("web", 30).cpu(700).mem(1536).build(), pods("api", 20).cpu(1300).mem(700).build()],
        vec![pool("default")],
    );
    let index = Index::build(&problem);
    let demand: Vec<i64> = index.classes.iter().map(|c| c.pods.len() as i64).collect();
    // A seed pattern that mixes both classes on one node.
    let seed: Vec<(usize, i64)> = vec![(0, 3), (1, 1)];
    let pools = vec![vec![true]; index.classes.len()];
    let outcome = columns::generate(&index, &demand, &pools, std::slice::from_ref(&seed)).unwrap();
    // The seed joins the first master on the cheapest bin that holds it.
    let seeded = outcome.columns.iter().find(|c| c.counts == seed).expect("the seed is a column");
    let bin = &outcome.bins[seeded.bin];
    let mut requests = Resources::new();
    for &(c, n) in &seed {
        requests.add_assign(&index.classes[c].requests.times(n));
    }
    assert!(requests.fits_in(&bin.usable));
    let cheaper_holds = outcome.bins.iter().any(|b| b.price < bin.price && requests.fits_in(&b.usable));
    assert!(!cheaper_holds, "a cheaper bin holds the seed");
    // The bound is below the greedy plan, whose nodes are patterns the master could use.
    let plan = solve(&problem);
    assert!(outcome.bound <= plan.cost, "{:?} > {:?}", outcome.bound, plan.cost);
}

#[test]
fn labels_set_pods_apart_only_when_some_selector_could_see_them() {
    let plain = problem(
        vec![
            pods("a", 5).cpu(500).mem(512).label("app", "a").build(),
            pods("b", 5).cpu(500).mem(512).label("app", "b").build(),
        ],
        vec![pool("default")],
    );
    assert_eq!(Index::build(&plain).classes.len(), 1, "ten pods of one shape, no selectors: one class");
    let plan = expect_valid_plan(&plain);
    assert_eq!(node_pods(&plan).len(), 10);

    // One pod of `a` keeps away from `b`: now labels matter, and `b` may not share its node.
    let mut picky = plain.clone();
    picky.pods[0] = picky.pods[0].clone().with_hostname_anti_affinity(&[("app", "b")]);
    assert_eq!(Index::build(&picky).classes.len(), 3);
    let plan = expect_valid_plan(&picky);
    let node_of = |pod: &str| plan.new_nodes.iter().position(|n| n.pods.iter().any(|p| p == pod));
    assert!((0..5).all(|i| node_of(&format!("b-{i}")) != node_of("a-0")), "{:?}", plan.new_nodes);
}

#[test]
fn plans_are_the_same_every_time_though_pricing_runs_on_every_core() {
    // Mixed cpu and memory shapes over the whole catalog, some on-demand only: column generation runs
    // several rounds, each pricing hundreds of bins in parallel.
    let on_demand = || req(labels::CAPACITY_TYPE, Operator::In, &["on-demand"]);
    let p = problem(
        vec![
            pods("web", 60).cpu(250).mem(512).build(),
            pods("api", 40).cpu(500).mem(1024).build(),
            pods("search", 20).cpu(1000).mem(4096).build(),
            pods("cache", 12).cpu(500).mem(6144).build(),
            pods("pay", 10).cpu(1000).mem(2048).require(on_demand()).build(),
            pods("batch", 16).cpu(2000).mem(1024).build(),
        ],
        vec![pool("default")],
    );
    let first = expect_valid_plan(&p);
    assert!(matches!(
        first.lower_bound.map(|b| b.kind),
        Some(BoundKind::PatternLp | BoundKind::PatternFarley)
    ));
    for _ in 0..3 {
        assert_eq!(solve(&p), first);
    }
}
