//! `cartwright bench`: Cartwright's solver and the re-implemented peers on the same problem, in one process.
//!
//! Every plan is checked by the independent validator; cost is divided by the lower bound Cartwright's solver
//! computes for the same pods. Solve time is the median of `--runs` runs. Timings are reported, never asserted.

mod consolidation;
mod workloads;

use std::io::Write;
use std::time::Instant;

use crate::cmd::Output;
use anyhow::Context;
use cartwright_binpack::solver::{Algorithm, BoundKind, LowerBound, Plan, Problem, validate};
use serde::Serialize;

/// Arguments of `cartwright bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Built-in workload: solver workloads web-mix, memory-heavy, gpu, constrained, karpenter-diverse;
    /// or consolidation-1000 (disruption on a fragmented 1,000-node cluster; `--pods` and `--solvers`
    /// do not apply).
    #[arg(long, default_value = "web-mix")]
    pub workload: String,
    /// Number of pods.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Runs per solver; the median solve time is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Solvers to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "cartwright,karpenter-greedy,ca-least-waste")]
    pub solvers: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Serialize)]
struct Report {
    workload: String,
    pods: usize,
    lower_bound_per_hour: Option<f64>,
    /// Which bound: `pattern-lp` (proven), `pattern-farley`, `aggregate-lp` or `trivial`.
    lower_bound_kind: Option<BoundKind>,
    results: Vec<SolverResult>,
}

#[derive(Debug, Serialize)]
struct SolverResult {
    solver: &'static str,
    solve_ms_median: f64,
    cost_per_hour: f64,
    cost_over_bound: Option<f64>,
    nodes: usize,
    cpu_utilization: f64,
    memory_utilization: f64,
    unschedulable: usize,
    violations: usize,
}

/// Runs the benchmark and prints the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    if args.workload == "consolidation-1000" {
        return consolidation::run(args.output);
    }
    let algorithms: Vec<Algorithm> = args
        .solvers
        .iter()
        .map(|s| Algorithm::parse(s).map_err(|e| anyhow::anyhow!("--solvers: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let problem = workloads::build(&args.workload, args.pods).context("--workload")?;

    let mut results = Vec::new();
    let mut bound: Option<LowerBound> = None;
    for algorithm in algorithms {
        let mut times = Vec::with_capacity(args.runs);
        let mut plan = None;
        for _ in 0..args.runs {
            let start = Instant::now();
            let p = algorithm.solve(&problem);
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            plan = Some(p);
        }
        let plan = plan.expect("runs >= 1");
        if algorithm == Algorithm::Cartwright {
            bound = plan.lower_bound;
        }
        times.sort_by(f64::total_cmp);
        results.push((algorithm, times[times.len() / 2], plan));
    }
    // Without Cartwright in the run, compute its bound once (untimed) so ratios stay comparable.
    if bound.is_none() && !results.iter().any(|(a, _, _)| *a == Algorithm::Cartwright) {
        bound = Algorithm::Cartwright.solve(&problem).lower_bound;
    }

    let report = Report {
        workload: args.workload.clone(),
        pods: problem.pods.len(),
        lower_bound_per_hour: bound.map(|b| b.price.usd()),
        lower_bound_kind: bound.map(|b| b.kind),
        results: results
            .iter()
            .map(|(algorithm, ms, plan)| summarize(&problem, *algorithm, *ms, plan, bound.map(|b| b.price)))
            .collect(),
    };
    super::emit(args.output, &report, print_table)
}

fn summarize(
    problem: &Problem,
    algorithm: Algorithm,
    ms: f64,
    plan: &Plan,
    bound: Option<cartwright_binpack::Price>,
) -> SolverResult {
    let (mut req_cpu, mut req_mem, mut alloc_cpu, mut alloc_mem) = (0i64, 0i64, 0i64, 0i64);
    let by_name: std::collections::HashMap<&str, &cartwright_binpack::solver::PodSpec> =
        problem.pods.iter().map(|p| (p.name.as_str(), p)).collect();
    for node in &plan.new_nodes {
        if let Some(t) = problem.catalog.get(&node.launch.instance_type) {
            let a = t.allocatable();
            alloc_cpu += a.cpu_millis;
            alloc_mem += a.memory_bytes;
        }
        for pod in &node.pods {
            if let Some(p) = by_name.get(pod.as_str()) {
                req_cpu += p.requests.cpu_millis;
                req_mem += p.requests.memory_bytes;
            }
        }
    }
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    SolverResult {
        solver: algorithm.name(),
        solve_ms_median: (ms * 100.0).round() / 100.0,
        cost_per_hour: plan.cost.usd(),
        cost_over_bound: bound.filter(|b| b.0 > 0).map(|b| plan.cost.0 as f64 / b.0 as f64),
        nodes: plan.new_nodes.len(),
        cpu_utilization: ratio(req_cpu, alloc_cpu),
        memory_utilization: ratio(req_mem, alloc_mem),
        unschedulable: plan.unschedulable.len(),
        violations: {
            let v = validate::violations(problem, plan);
            for line in v.iter().take(5) {
                tracing::warn!("{}: {line}", algorithm.name());
            }
            v.len()
        },
    }
}

fn print_table(out: &mut impl Write, report: &Report) -> anyhow::Result<()> {
    writeln!(
        out,
        "workload {} ({} pods); lower bound {} ({})",
        report.workload,
        report.pods,
        report.lower_bound_per_hour.map_or("n/a".to_owned(), |b| format!("${b:.4}/h")),
        report.lower_bound_kind.map_or("none", |k| k.as_str())
    )?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header([
        "SOLVER",
        "SOLVE MS",
        "$/H",
        "COST/BOUND",
        "NODES",
        "CPU UTIL",
        "MEM UTIL",
        "UNSCHEDULABLE",
        "VIOLATIONS",
    ]);
    for r in &report.results {
        table.add_row([
            r.solver.to_owned(),
            format!("{:.1}", r.solve_ms_median),
            format!("{:.4}", r.cost_per_hour),
            r.cost_over_bound.map_or("n/a".to_owned(), |x| format!("{x:.3}")),
            r.nodes.to_string(),
            format!("{:.1} %", r.cpu_utilization * 100.0),
            format!("{:.1} %", r.memory_utilization * 100.0),
            r.unschedulable.to_string(),
            r.violations.to_string(),
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(())
}
