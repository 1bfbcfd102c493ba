//! `cartwright plan`: what would be launched for these manifests, and why.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::cmd::Output;
use anyhow::{Context, bail};
use cartwright_api::Manifests;
use cartwright_binpack::solver::{Algorithm, Plan};
use cartwright_binpack::{CapacityType, Catalog, CatalogOptions, SpotPriceModel};
use serde::Serialize;

/// Arguments of `cartwright plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kubernetes YAML files (multi-document): Pods, Deployments, StatefulSets, Jobs, DaemonSets, Nodes,
    /// NodePools (`cartwright.sh/v1` or `karpenter.sh/v1`). `-` reads standard input.
    #[arg(long, required_unless_present = "kubeconfig", conflicts_with = "kubeconfig", num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Plan for the live cluster of this kubeconfig instead: its Unschedulable pods over its nodes,
    /// in-flight NodeClaims and NodePools. Reads only; nothing is created.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Which algorithm plans.
    #[arg(long, default_value = "cartwright", value_parser = Algorithm::parse)]
    pub solver: Algorithm,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// AWS region whose embedded catalog and prices to use.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// A catalog file (the JSON `cartwright catalog --output json` prints, edited as you like) instead of
    /// the embedded catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Zones to offer in (comma-separated); defaults to the region's documented zones.
    #[arg(long, value_delimiter = ',')]
    pub zones: Option<Vec<String>>,
    /// Modelled spot discount off on-demand, a fraction in [0, 1).
    #[arg(long, default_value_t = 0.6)]
    pub spot_discount: f64,
}

/// The JSON form of a plan.
#[derive(Debug, Serialize)]
struct Report {
    solver: &'static str,
    new_nodes: Vec<ReportNode>,
    placements: Vec<ReportPlacement>,
    unschedulable: Vec<ReportUnschedulable>,
    cost_per_hour: f64,
    lower_bound_per_hour: Option<f64>,
    lower_bound_kind: Option<&'static str>,
    solve_ms: f64,
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ReportNode {
    nodepool: String,
    instance_type: String,
    zone: String,
    capacity_type: CapacityType,
    price_per_hour: f64,
    pods: Vec<String>,
    alternatives: Vec<ReportOption>,
}

#[derive(Debug, Serialize)]
struct ReportOption {
    instance_type: String,
    zone: String,
    capacity_type: CapacityType,
    price_per_hour: f64,
}

#[derive(Debug, Serialize)]
struct ReportPlacement {
    pod: String,
    node: String,
}

#[derive(Debug, Serialize)]
struct ReportUnschedulable {
    pod: String,
    reason: String,
}

/// Reads the manifests (or the live cluster), plans, prints.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(kubeconfig) = &args.kubeconfig {
        return run_live(&args, kubeconfig);
    }
    let mut manifests = Manifests::default();
    for path in &args.input {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading standard input")?;
            ("<stdin>".to_owned(), text)
        } else {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            (path.display().to_string(), text)
        };
        manifests.add_yaml(&name, &text)?;
    }
    if manifests.nodepools.is_empty() && !manifests.pending.is_empty() {
        bail!(
            "no NodePool in the input: new nodes can only come from a NodePool (cartwright.sh/v1 or karpenter.sh/v1)"
        );
    }
    for warning in &manifests.warnings {
        tracing::warn!("{warning}");
    }
    let problem = manifests.to_problem(catalog(&args)?);
    let started = Instant::now();
    let plan = args.solver.solve(&problem);
    let solve_ms = started.elapsed().as_secs_f64() * 1000.0;
    let report = report(args.solver, &plan, solve_ms, manifests.warnings.clone());
    super::emit(args.output, &report, print_table)
}

fn catalog(args: &Args) -> anyhow::Result<Catalog> {
    let options = CatalogOptions {
        zones: args.zones.clone(),
        spot: SpotPriceModel::flat(args.spot_discount).context("--spot-discount")?,
        ..CatalogOptions::default()
    };
    Ok(match &args.catalog {
        Some(path) => cartwright_api::catalog_file::read(path, &args.region).map_err(anyhow::Error::msg)?,
        None => Catalog::embedded(&args.region, &options)?,
    })
}

/// `--kubeconfig`: the controller's own planning over a one-time read of the cluster.
fn run_live(args: &Args, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let catalog = catalog(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let snapshot = runtime.block_on(async {
        let client = cartwright_kube::client(Some(kubeconfig)).await?;
        let snapshot =
            cartwright_kube::controller::Snapshot::list(&client).await.context("reading the cluster")?;
        anyhow::Ok(snapshot)
    })?;
    let pending = snapshot.provisionable();
    let started = Instant::now();
    let plan = if pending.is_empty() {
        Plan {
            placements: Vec::new(),
            new_nodes: Vec::new(),
            unschedulable: Vec::new(),
            cost: cartwright_binpack::Price(0),
            lower_bound: None,
        }
    } else {
        let Some((problem, _)) = cartwright_kube::controller::problem(&snapshot, &pending, &catalog) else {
            bail!("{} pods are pending but the cluster has no usable NodePool", pending.len());
        };
        args.solver.solve(&problem)
    };
    let solve_ms = started.elapsed().as_secs_f64() * 1000.0;
    let report = report(args.solver, &plan, solve_ms, Vec::new());
    super::emit(args.output, &report, print_table)
}

fn report(solver: Algorithm, plan: &Plan, solve_ms: f64, warnings: Vec<String>) -> Report {
    Report {
        solver: solver.name(),
        new_nodes: plan
            .new_nodes
            .iter()
            .map(|n| ReportNode {
                nodepool: n.nodepool.clone(),
                instance_type: n.launch.instance_type.clone(),
                zone: n.launch.zone.clone(),
                capacity_type: n.launch.capacity_type,
                price_per_hour: n.launch.price.usd(),
                pods: n.pods.clone(),
                alternatives: n
                    .alternatives
                    .iter()
                    .map(|a| ReportOption {
                        instance_type: a.instance_type.clone(),
                        zone: a.zone.clone(),
                        capacity_type: a.capacity_type,
                        price_per_hour: a.price.usd(),
                    })
                    .collect(),
            })
            .collect(),
        placements: plan
            .placements
            .iter()
            .map(|p| ReportPlacement { pod: p.pod.clone(), node: p.node.clone() })
            .collect(),
        unschedulable: plan
            .unschedulable
            .iter()
            .map(|u| ReportUnschedulable { pod: u.pod.clone(), reason: u.reason.clone() })
            .collect(),
        cost_per_hour: plan.cost.usd(),
        lower_bound_per_hour: plan.lower_bound.map(|b| b.price.usd()),
        lower_bound_kind: plan.lower_bound.map(|b| b.kind.as_str()),
        solve_ms,
        warnings,
    }
}

fn print_table(out: &mut impl Write, report: &Report) -> anyhow::Result<()> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header([
        "NODEPOOL",
        "INSTANCE TYPE",
        "ZONE",
        "CAPACITY",
        "$/HOUR",
        "PODS",
        "ALTERNATIVES",
    ]);
    for n in &report.new_nodes {
        table.add_row([
            n.nodepool.clone(),
            n.instance_type.clone(),
            n.zone.clone(),
            n.capacity_type.as_str().to_owned(),
            format!("{:.4}", n.price_per_hour),
            n.pods.len().to_string(),
            n.alternatives.len().to_string(),
        ]);
    }
    writeln!(out, "{table}")?;
    writeln!(
        out,
        "\n{} new nodes, {} pods placed on existing nodes, {} unschedulable; ${:.4}/h",
        report.new_nodes.len(),
        report.placements.len(),
        report.unschedulable.len(),
        report.cost_per_hour
    )?;
    if let (Some(bound), Some(kind)) = (report.lower_bound_per_hour, report.lower_bound_kind) {
        writeln!(
            out,
            "lower bound ${bound:.4}/h ({kind}); solved in {:.1} ms by {}",
            report.solve_ms, report.solver
        )?;
    }
    for u in &report.unschedulable {
        writeln!(out, "unschedulable {}: {}", u.pod, u.reason)?;
    }
    for w in &report.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
