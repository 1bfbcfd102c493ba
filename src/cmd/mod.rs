//! Subcommands: one module each, exposing `Args` and `run`.

pub mod bench;
pub mod catalog;
pub mod controller;
pub mod convert;
pub mod crds;
pub mod explain;
pub mod plan;
pub mod simulate;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Cartwright: a node autoscaler for Kubernetes on AWS.
#[derive(Debug, Parser)]
#[command(name = "cartwright", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `cartwright_core=debug`.
    #[arg(long, global = true, env = "CARTWRIGHT_LOG", default_value = "warn")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the instance catalog of a region: types, allocatable resources, labels and offerings.
    Catalog(catalog::Args),
    /// Run Cartwright's solver and the re-implemented peers on a built-in workload and compare them.
    Bench(bench::Args),
    /// Run the controller against a cluster: turn Unschedulable pods into nodes and manage their lifecycle.
    Controller(Box<controller::Args>),
    /// Rewrite Karpenter v1 NodePools, NodeClaims and EC2NodeClasses for Cartwright (prints to stdout).
    Convert(convert::Args),
    /// Print the CustomResourceDefinitions of NodePool, NodeClaim and EC2NodeClass.
    Crds(crds::Args),
    /// Explain the controller's view of an object (`explain node NAME`: why it is or is not consolidated).
    Explain(explain::Args),
    /// Plan nodes for Kubernetes manifests (pods, workloads, nodes, NodePools) and print the plan.
    Plan(plan::Args),
    /// Run the simulator (with no arguments: the embedded default scenario).
    Simulate(simulate::Args),
}

/// Parses the command line (exiting with clap's message on bad usage).
pub fn parse() -> Cli {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Repeated multi-value flags keep their grouping only in the raw matches.
    if let (Command::Catalog(args), Some(sub)) = (&mut cli.command, matches.subcommand_matches("catalog")) {
        args.requirement_groups = sub
            .get_occurrences::<String>("requirement")
            .map(|occurrences| occurrences.map(|words| words.cloned().collect()).collect())
            .unwrap_or_default();
    }
    cli
}

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Catalog(args) => catalog::run(args),
        Command::Controller(args) => controller::run(*args),
        Command::Convert(args) => convert::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Simulate(args) => simulate::run(args),
    }
}

/// Logs go to stderr so that stdout stays machine-readable (`--output json`).
pub fn init_logging(global: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // At debug or trace, spans (the solver's phases among them) log their time when they close; at
        // coarser levels that would log every reconcile of kube-runtime's info spans.
        .with_span_events(if global.log_level.contains("debug") || global.log_level.contains("trace") {
            tracing_subscriber::fmt::format::FmtSpan::CLOSE
        } else {
            tracing_subscriber::fmt::format::FmtSpan::NONE
        })
        .with_ansi(std::io::stderr().is_terminal());
    match global.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How a subcommand prints its result.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Prints `report` on stdout: pretty JSON, or the subcommand's table.
pub fn emit<T: serde::Serialize>(
    output: Output,
    report: &T,
    table: impl FnOnce(&mut std::io::StdoutLock<'static>, &T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if matches!(output, Output::Json) {
        serde_json::to_writer_pretty(&mut out, report)?;
        writeln!(out)?;
        Ok(())
    } else {
        table(&mut out, report)
    }
}
