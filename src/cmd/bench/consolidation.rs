//! `cartwright bench --workload consolidation-1000`: a fragmented 1,000-node cluster after a 60 % scale-in;
//! disruption decides and the decisions are applied until it finds nothing more. Reports the decision time,
//! the cost before and after, and the solver's lower bound for the pods left.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use cartwright_binpack::solver::{NodePoolTemplate, PodSpec};
use cartwright_binpack::{
    CapacityType, Catalog, CatalogOptions, Operator, Price, Requirement, Resources, labels,
};
use cartwright_core::disruption::{self, Budget, Candidate, Input, Nodes, PoolPolicy};
use cartwright_core::provisioning::{self, NodeView};
use serde::Serialize;

use crate::cmd::Output;

struct Node {
    name: String,
    labels: BTreeMap<String, String>,
    allocatable: Resources,
    capacity: Resources,
    price: Price,
    pods: Vec<PodSpec>,
}

#[derive(Debug, Serialize)]
struct Report {
    workload: &'static str,
    nodes_before: usize,
    pods: usize,
    /// The slowest decision (the target is under 2 s at 1,000 nodes), and the median.
    decide_ms: f64,
    decide_ms_median: f64,
    decisions: usize,
    cost_before_per_hour: f64,
    cost_after_per_hour: f64,
    lower_bound_per_hour: Option<f64>,
    /// What the solver's own plan for the pods left costs from scratch (every pod on a new node): how far
    /// repacking could go without the disruption rules.
    from_scratch_per_hour: f64,
    from_scratch_nodes: usize,
    nodes_after: usize,
    nodes_disrupted: usize,
}

/// A small deterministic generator (the benchmark must be the same on every machine).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn node_of(catalog: &Catalog, name: String, instance_type: &str) -> Node {
    let t = catalog.get(instance_type).expect("a catalog type");
    let offering = t
        .offerings
        .iter()
        .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::OnDemand)
        .expect("an on-demand offering");
    let mut node_labels = t.requirements.single_valued_labels();
    node_labels.insert(labels::NODEPOOL.into(), "default".into());
    node_labels.insert(labels::ZONE.into(), "us-east-1a".into());
    node_labels.insert(labels::CAPACITY_TYPE.into(), "on-demand".into());
    node_labels.insert(labels::HOSTNAME.into(), name.clone());
    Node {
        name,
        labels: node_labels,
        allocatable: t.allocatable(),
        capacity: t.capacity.clone(),
        price: offering.price,
        pods: vec![],
    }
}

pub fn run(output: Output) -> anyhow::Result<()> {
    let full = Catalog::embedded("us-east-1", &CatalogOptions::default())?;
    let mut pool = NodePoolTemplate::new("default");
    pool.requirements.add(Requirement::new(labels::aws::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"])?);
    pool.requirements.add(Requirement::new(labels::ZONE, Operator::In, &["us-east-1a"])?);
    pool.requirements.add(Requirement::new(labels::CAPACITY_TYPE, Operator::In, &["on-demand"])?);
    let catalog = Arc::new(provisioning::launchable(&full, std::slice::from_ref(&pool)));
    let types = ["m5.xlarge", "m5.2xlarge", "c5.2xlarge", "r5.xlarge", "m5.4xlarge"];
    let shapes: [(i64, i64); 6] =
        [(250, 512), (500, 1024), (1000, 2048), (2000, 4096), (500, 4096), (100, 256)];
    let mut rng = Lcg(7);
    let mut nodes: Vec<Node> = Vec::new();
    let mut count = 0;
    for i in 0..1000 {
        let mut node =
            node_of(&catalog, format!("node-{i:04}"), types[(rng.next() % types.len() as u64) as usize]);
        let mut used = Resources::new();
        let mut misses = 0;
        while misses < 4 {
            let (cpu, mem) = shapes[(rng.next() % shapes.len() as u64) as usize];
            let pod = PodSpec::new(
                format!("pod-{count}"),
                Resources::new().with_cpu_millis(cpu).with_memory_mib(mem),
            )
            .with_label("app", &format!("app-{}", count % 20));
            let after = used.plus(&pod.requests);
            if after.cpu_millis * 100 <= node.allocatable.cpu_millis * 90
                && after.memory_bytes * 100 <= node.allocatable.memory_bytes * 90
                && after.pods <= node.allocatable.pods
            {
                used = after;
                node.pods.push(pod);
                count += 1;
            } else {
                misses += 1;
            }
        }
        // The scale-in: 60 % of the pods go.
        node.pods.retain(|_| rng.next() % 10 < 4);
        nodes.push(node);
    }
    let nodes_before = nodes.len();
    let cost_before: u64 = nodes.iter().map(|n| n.price.0).sum();
    let pods: usize = nodes.iter().map(|n| n.pods.len()).sum();
    let policy = PoolPolicy {
        budgets: vec![Budget { nodes: Nodes::Percent(100), reasons: vec![], active: true }],
        ..PoolPolicy::default()
    };
    let mut times = Vec::new();
    let mut disrupted = 0;
    let mut launched = 0;
    loop {
        let candidates: Vec<Candidate<'_>> = nodes
            .iter()
            .map(|n| {
                let view = NodeView::with_pods(
                    &n.name,
                    &n.labels,
                    &n.allocatable,
                    &n.capacity,
                    &n.pods,
                    Some("default"),
                );
                Candidate::settled(view, n.price, CapacityType::OnDemand, n.pods.iter().collect())
            })
            .collect();
        let input = Input {
            nodes: candidates,
            nodepools: vec![pool.clone()],
            policies: [("default".to_owned(), policy.clone())].into(),
            daemonsets: vec![],
            catalog: catalog.clone(),
            consolidate: true,
            explain: false,
        };
        let start = Instant::now();
        let outcome = disruption::decide(&input, 3_600_000);
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        drop(input);
        let Some(command) = outcome.command else { break };
        // Apply: the removed nodes' pods go where the plan put them.
        let mut moved: BTreeMap<String, PodSpec> = BTreeMap::new();
        nodes.retain_mut(|n| {
            if command.nodes.contains(&n.name) {
                moved.extend(n.pods.drain(..).map(|p| (p.name.clone(), p)));
                false
            } else {
                true
            }
        });
        disrupted += command.nodes.len();
        for (pod, node) in &command.placements {
            if let (Some(p), Some(n)) = (moved.remove(pod), nodes.iter_mut().find(|n| &n.name == node)) {
                n.pods.push(p);
            }
        }
        for r in &command.replacements {
            launched += 1;
            let mut node = node_of(&catalog, format!("replacement-{launched}"), &r.launch.instance_type);
            node.pods = r.pods.iter().filter_map(|p| moved.remove(p)).collect();
            nodes.push(node);
        }
        anyhow::ensure!(moved.is_empty(), "a consolidation left {} pods without a node", moved.len());
    }
    let all: Vec<PodSpec> = nodes.iter().flat_map(|n| n.pods.clone()).collect();
    let bound = provisioning::problem(all, &[], std::slice::from_ref(&pool), &[], catalog.clone());
    let fresh = cartwright_binpack::solver::solve(&bound);
    let bound = fresh.lower_bound;
    let report = Report {
        workload: "consolidation-1000",
        nodes_before,
        pods,
        decide_ms: times.iter().copied().fold(0.0, f64::max),
        decide_ms_median: {
            let mut sorted = times.clone();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2]
        },
        decisions: times.len(),
        cost_before_per_hour: Price(cost_before).usd(),
        cost_after_per_hour: Price(nodes.iter().map(|n| n.price.0).sum()).usd(),
        lower_bound_per_hour: bound.map(|b| b.price.usd()),
        from_scratch_per_hour: fresh.cost.usd(),
        from_scratch_nodes: fresh.new_nodes.len(),
        nodes_after: nodes.len(),
        nodes_disrupted: disrupted,
    };
    crate::cmd::emit(output, &report, |out, r| {
        writeln!(
            out,
            "consolidation-1000: {} nodes / {} pods after a 60 % scale-in; slowest decision {:.0} ms (median {:.0} ms, {} decisions)",
            r.nodes_before, r.pods, r.decide_ms, r.decide_ms_median, r.decisions
        )?;
        writeln!(
            out,
            "cost ${:.2}/h -> ${:.2}/h ({} nodes, {} disrupted); lower bound ${:.2}/h; planned from scratch ${:.2}/h on {} nodes",
            r.cost_before_per_hour,
            r.cost_after_per_hour,
            r.nodes_after,
            r.nodes_disrupted,
            r.lower_bound_per_hour.unwrap_or(0.0),
            r.from_scratch_per_hour,
            r.from_scratch_nodes
        )?;
        Ok(())
    })
}
