use std::sync::Arc;

use cartwright_binpack::solver::{self, NodePoolTemplate};
use cartwright_binpack::{Catalog, CatalogOptions, Requirement, Requirements, labels};

use super::*;
use crate::hpa::{Behavior, ScalingRules};

fn shape() -> PodSpec {
    let mut pod = PodSpec::new("web", Resources::new().with_cpu_millis(1000).with_memory_mib(1024));
    pod.labels.insert("app".into(), "web".into());
    pod
}

fn spec(max: i32, behavior: Option<Behavior>) -> HpaSpec {
    HpaSpec { min_replicas: 1, max_replicas: max, target_utilization: 70.0, behavior }
}

/// An HPA at 10 replicas whose metric ratio was `ratios[i]` at `i × 15 s`.
fn hpa(max: i32, behavior: Option<Behavior>, ratios: &[f64]) -> HpaModel {
    let mut model = HpaModel::new("shop/web", spec(max, behavior), shape(), 10);
    for (i, &ratio) in ratios.iter().enumerate() {
        model.observe(Observation { at: i as Millis * 15_000, ratio, replicas: 10, desired: 10 });
    }
    model
}

const RISING: &[f64] = &[1.0, 1.1, 1.2, 1.3];
const NOW: Millis = 45_000;

#[test]
fn a_rising_metric_predicts_the_replicas_one_launch_ahead() {
    let model = hpa(100, Some(Behavior::default()), RISING);
    let p = model.predict(NOW, &Settings::default());
    // +0.1 per 15 s: 1.3 now, 1.7 a minute ahead, so 17 of 10 replicas.
    assert!((p.ratio - 1.7).abs() < 1e-9, "{p:?}");
    assert_eq!((p.replicas, p.extra, p.limited_by), (17, 7, None));
    let pods = model.virtual_pods(NOW, &Settings::default());
    assert_eq!(pods.len(), 7);
    assert_eq!(pods[0].name, "shop/web~headroom-0");
    assert_eq!(pods[0].requests, shape().requests, "shaped like the target's pods");
    assert_eq!(hpa_of(&pods[6].name), Some("shop/web"));

    // A flat or falling metric predicts no more than the demand now — even within the HPA's tolerance
    // (1.05 of 10 pods is 11: the HPA will jump the moment the metric leaves it).
    for (ratios, expected) in [(&[1.3, 1.3, 1.3, 1.3][..], 13), (&[1.6, 1.4, 1.2, 1.05], 11), (&[1.0; 4], 10)]
    {
        let p = hpa(100, Some(Behavior::default()), ratios).predict(NOW, &Settings::default());
        assert_eq!((p.replicas, p.extra), (expected, expected - 10), "{ratios:?}");
    }
    // The HPA's own scale-up window delays it: with a 60 s window, it will act on today's metric.
    let mut slow = Behavior::default();
    slow.scale_up.stabilization_window_seconds = 60;
    assert_eq!(hpa(100, Some(slow), RISING).predict(NOW, &Settings::default()).replicas, 13);
    // A desired count the target has not caught up with is headroom too.
    let mut behind = HpaModel::new("shop/web", spec(100, Some(Behavior::default())), shape(), 10);
    behind.observe(Observation { at: 0, ratio: 1.0, replicas: 10, desired: 14 });
    assert_eq!(behind.predict(0, &Settings::default()).extra, 4);
}

#[test]
fn the_prediction_is_capped_by_scale_up_policies_and_max_replicas() {
    // One pod per minute: a minute ahead the HPA can be at 11, whatever the metric says.
    let one_per_minute = Behavior {
        scale_up: ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![Policy::Pods { value: 1, period_seconds: 60 }],
            tolerance: None,
        },
        ..Behavior::default()
    };
    let p = hpa(100, Some(one_per_minute.clone()), RISING).predict(NOW, &Settings::default());
    assert_eq!((p.replicas, p.limited_by), (11, Some(Limit::ScaleUpPolicy)));
    // A replica added 30 s ago already used this minute's pod.
    let mut model = hpa(100, Some(one_per_minute), &[1.0, 1.1]);
    model.observe(Observation { at: 30_000, ratio: 1.2, replicas: 11, desired: 11 });
    model.observe(Observation { at: 45_000, ratio: 1.3, replicas: 11, desired: 11 });
    let p = model.predict(NOW, &Settings { horizon_ms: 30_000, ..Settings::default() });
    assert_eq!((p.replicas, p.extra), (11, 0), "no more before 90 s");
    let p = model.predict(NOW, &Settings::default());
    assert_eq!((p.replicas, p.extra), (12, 1), "one more at 90 s");
    // Percent policies compound per period; Disabled adds nothing.
    let mut ten_percent = Behavior::default();
    ten_percent.scale_up.policies = vec![Policy::Percent { value: 10, period_seconds: 15 }];
    let p = hpa(100, Some(ten_percent), RISING).predict(NOW, &Settings::default());
    // 10 → 11 → 13 → 15 → 17 (ceil of 16.5) — exactly the metric's 17.
    assert_eq!((p.replicas, p.limited_by), (17, None));
    let mut disabled = Behavior::default();
    disabled.scale_up.select_policy = SelectPolicy::Disabled;
    assert_eq!(hpa(100, Some(disabled), RISING).predict(NOW, &Settings::default()).extra, 0);
    // maxReplicas.
    let p = hpa(12, Some(Behavior::default()), RISING).predict(NOW, &Settings::default());
    assert_eq!((p.replicas, p.limited_by), (12, Some(Limit::MaxReplicas)));
    // Without behavior, the legacy limit: double or four more per sync.
    let p = hpa(100, None, &[1.0, 3.0, 5.0, 7.0])
        .predict(NOW, &Settings { horizon_ms: 15_000, ..Settings::default() });
    assert_eq!((p.replicas, p.limited_by), (20, Some(Limit::ScaleUpPolicy)));
}

#[test]
fn the_guard_holds_for_the_scale_down_window_then_releases() {
    // The HPA scales 20 → 10 at 60 s, the load (ratio × replicas) unchanged.
    let mut model2 = HpaModel::new("shop/web", spec(100, Some(Behavior::default())), shape(), 20);
    for at in [0, 15_000, 30_000, 45_000] {
        model2.observe(Observation { at, ratio: 0.5, replicas: 20, desired: 20 });
    }
    model2.observe(Observation { at: 60_000, ratio: 1.0, replicas: 10, desired: 10 });
    assert_eq!(model2.guard(60_000), 10, "capacity for 20 held");
    assert_eq!(model2.guard(45_000 + 300_000), 10, "still within the 300 s window of the last 20");
    assert_eq!(model2.guard(45_000 + 300_001), 0, "released after it");
    // Guard pods come after headroom pods, as many as the guard exceeds the prediction.
    let pods = model2.virtual_pods(100_000, &Settings::default());
    assert_eq!(pods.len(), 10);
    assert!(pods.iter().all(|p| p.name.contains("~guard-")), "{:?}", pods[0].name);
    // A shorter window releases sooner; the guard never exceeds maxReplicas.
    let mut short = Behavior::default();
    short.scale_down.stabilization_window_seconds = 30;
    let mut model3 = HpaModel::new("shop/web", spec(15, Some(short)), shape(), 20);
    model3.observe(Observation { at: 0, ratio: 1.0, replicas: 20, desired: 20 });
    model3.observe(Observation { at: 10_000, ratio: 1.0, replicas: 10, desired: 10 });
    assert_eq!(model3.guard(20_000), 5, "capped by maxReplicas 15");
    assert_eq!(model3.guard(31_000), 0);
}

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap())
}

fn pool(name: &str) -> NodePoolTemplate {
    let mut pool = NodePoolTemplate::new(name);
    pool.requirements = Requirements::from_iter([
        Requirement::new(labels::INSTANCE_TYPE, cartwright_binpack::Operator::In, &["m5.xlarge"]).unwrap(),
        Requirement::new(labels::CAPACITY_TYPE, cartwright_binpack::Operator::In, &["on-demand"]).unwrap(),
    ]);
    pool
}

/// A live m5.xlarge with room for `free` one-vCPU pods.
fn node_with_room(catalog: &Catalog, free: i64) -> ExistingNode {
    let t = catalog.get("m5.xlarge").unwrap();
    let mut labels = t.requirements.single_valued_labels();
    labels.insert(labels::NODEPOOL.into(), "default".into());
    labels.insert(labels::ZONE.into(), "us-east-1a".into());
    labels.insert(labels::CAPACITY_TYPE.into(), "on-demand".into());
    labels.insert(labels::HOSTNAME.into(), "live".into());
    let allocatable = t.allocatable();
    let cpu = allocatable.get(&cartwright_binpack::ResourceName::Cpu);
    let requested = Resources::new().with_cpu_millis(cpu - free * 1000);
    ExistingNode {
        name: "live".into(),
        labels,
        taints: vec![],
        allocatable,
        requested,
        nodepool: Some("default".into()),
        initialized: true,
        pod_labels: vec![],
        repelled: vec![],
    }
}

/// A problem of `pods` over `existing` nodes and one NodePool, no daemonsets.
fn problem_of(
    pods: Vec<PodSpec>,
    existing: Vec<ExistingNode>,
    pool: NodePoolTemplate,
    catalog: &Arc<Catalog>,
) -> Problem {
    Problem { pods, existing, nodepools: vec![pool], daemonsets: vec![], catalog: catalog.clone() }
}

/// Headroom for `virtual_pods` with no NodePool settings or costs.
fn plan_unlimited(problem: &Problem, virtual_pods: Vec<PodSpec>) -> HeadroomPlan {
    super::plan(problem, virtual_pods, &BTreeMap::new(), &BTreeMap::new(), solver::solve)
}

fn pods(prefix: &str, n: usize) -> Vec<PodSpec> {
    (0..n).map(|i| PodSpec { name: format!("{prefix}-{i}"), ..shape() }).collect()
}

#[test]
fn real_pods_take_existing_room_and_limits_first_and_headroom_gets_what_is_left() {
    let catalog = catalog();
    let problem =
        problem_of(pods("shop/real", 2), vec![node_with_room(&catalog, 2)], pool("default"), &catalog);
    let plan = plan_unlimited(&problem, pods("shop/web~headroom", 2));
    // The real pods get the live node's room, as without headroom.
    assert_eq!(plan.real.placements.len(), 2, "{:?}", plan.real);
    assert!(plan.real.placements.iter().all(|p| p.node == "live"));
    assert!(plan.real.new_nodes.is_empty());
    // The headroom needs a new node.
    assert_eq!(plan.headroom.new_nodes.len(), 1, "{:?}", plan.headroom);
    assert_eq!(plan.headroom.new_nodes[0].pods.len(), 2);
    assert!(plan.headroom.new_nodes[0].pods.iter().all(|p| is_virtual(p)));

    // With a node limit of one more node, the real pods that need a node get it and the headroom none.
    let mut limited = pool("default");
    limited.remaining.nodes = Some(1);
    let problem = problem_of(pods("shop/real", 3), vec![], limited, &catalog);
    let plan = plan_unlimited(&problem, pods("shop/web~headroom", 2));
    assert_eq!(plan.real.new_nodes.len(), 1);
    assert!(plan.real.unschedulable.is_empty(), "{:?}", plan.real.unschedulable);
    assert!(plan.headroom.new_nodes.is_empty(), "{:?}", plan.headroom.new_nodes);
    assert_eq!(plan.headroom.unschedulable.len(), 2);
}

#[test]
fn headroom_nodes_stay_within_each_pools_budget_and_out_of_opted_out_pools() {
    let catalog = catalog();
    let price = catalog
        .get("m5.xlarge")
        .unwrap()
        .offerings
        .iter()
        .filter(|o| o.capacity_type == cartwright_binpack::CapacityType::OnDemand)
        .map(|o| o.price)
        .min()
        .unwrap();
    let problem = problem_of(vec![], vec![], pool("default"), &catalog);
    // Twelve one-vCPU pods need four m5.xlarge nodes (3 pods each after system reserve); the budget pays for
    // two.
    let budget = PoolHeadroom { budget_per_hour: Some(Price(price.0 * 2)), ..PoolHeadroom::default() };
    let settings = BTreeMap::from([("default".to_owned(), budget)]);
    let plan =
        super::plan(&problem, pods("shop/web~headroom", 12), &settings, &BTreeMap::new(), solver::solve);
    assert_eq!(plan.headroom.new_nodes.len(), 2, "{:?}", plan.headroom.new_nodes);
    assert_eq!(
        plan.over_budget.len(),
        12 - plan.headroom.new_nodes.iter().map(|n| n.pods.len()).sum::<usize>()
    );
    assert!(plan.headroom.cost.0 <= price.0 * 2);
    // A percentage of the pool's current cost: 10 % of ten nodes' worth pays for one.
    let percent = PoolHeadroom { budget_percent: Some(10), ..PoolHeadroom::default() };
    let settings = BTreeMap::from([("default".to_owned(), percent)]);
    let cost = BTreeMap::from([("default".to_owned(), Price(price.0 * 10))]);
    let plan = super::plan(&problem, pods("shop/web~headroom", 12), &settings, &cost, solver::solve);
    assert_eq!(plan.headroom.new_nodes.len(), 1);
    // Opted out: nothing.
    let off = PoolHeadroom { enabled: false, ..PoolHeadroom::default() };
    let settings = BTreeMap::from([("default".to_owned(), off)]);
    let plan =
        super::plan(&problem, pods("shop/web~headroom", 3), &settings, &BTreeMap::new(), solver::solve);
    assert!(plan.headroom.new_nodes.is_empty());
}

#[test]
fn virtual_pods_are_assigned_to_live_room_for_disruption() {
    let catalog = catalog();
    let live = node_with_room(&catalog, 2);
    let capacity = catalog.get("m5.xlarge").unwrap().capacity.clone();
    let view = NodeView {
        name: &live.name,
        labels: &live.labels,
        taints: &[],
        allocatable: &live.allocatable,
        capacity: &capacity,
        requested: live.requested.clone(),
        pod_labels: vec![],
        repelled: vec![],
        nodepool: Some("default"),
        ready: true,
        cordoned: false,
    };
    let assigned =
        assign(pods("shop/web~guard", 3), std::slice::from_ref(&view), &BTreeMap::new(), solver::solve);
    assert_eq!(assigned.get("live").map(Vec::len), Some(2), "two fit, the third needs a new node");
    assert_eq!(held_for(assigned["live"].iter().map(|p| p.name.as_str())), BTreeSet::from(["shop/web"]));
    let off =
        BTreeMap::from([("default".to_owned(), PoolHeadroom { enabled: false, ..PoolHeadroom::default() })]);
    assert!(assign(pods("shop/web~guard", 3), &[view], &off, solver::solve).is_empty());
}

#[test]
fn the_default_horizon_is_the_90th_percentile_of_recent_launches_within_bounds() {
    let mut latencies = LaunchLatencies::default();
    assert_eq!(latencies.horizon(), None);
    for seconds in [40, 42, 45, 45, 47, 50, 52, 55, 60, 95] {
        latencies.observe(seconds * 1000);
    }
    assert_eq!(latencies.horizon(), Some(60_000));
    // Only the last 50 count, and the result stays within [30 s, 5 min].
    for _ in 0..LaunchLatencies::KEPT {
        latencies.observe(5_000);
    }
    assert_eq!(latencies.horizon(), Some(LaunchLatencies::MIN_MS));
    latencies.observe(3_600_000);
    for _ in 0..10 {
        latencies.observe(3_600_000);
    }
    assert_eq!(latencies.horizon(), Some(LaunchLatencies::MAX_MS));
}
