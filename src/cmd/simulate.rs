//! `cartwright simulate`: offline capacity planning on the real decision code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::cmd::Output;
use anyhow::{Context, bail};
use cartwright_binpack::solver::Algorithm;
use cartwright_sim::report::Summary;
use cartwright_sim::{Report, Scenario};
use serde::Serialize;

/// Arguments of `cartwright simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A scenario file (docs/scenarios.md); without one, the embedded default scenario runs.
    pub scenario: Option<PathBuf>,
    /// Run several variants side by side (comma-separated): variants named in the scenario's `variants`,
    /// or the built-in solver policies `cartwright`, `karpenter-greedy`, `ca-least-waste`.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Where to write `report.json` and `report.html` (created if missing).
    #[arg(long, default_value = "cartwright-report")]
    pub output_dir: PathBuf,
    /// Print the summary as a table (default) or the whole report as JSON on stdout.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `report.json`.
#[derive(Debug, Serialize)]
struct FileReport<'a> {
    scenario: &'a str,
    description: &'a str,
    seed: u64,
    /// The first variant's summary.
    summary: &'a Summary,
    variants: Vec<Variant<'a>>,
}

#[derive(Debug, Serialize)]
struct Variant<'a> {
    name: &'a str,
    summary: &'a Summary,
    report: &'a Report,
}

/// Runs the scenario (each variant), prints the summary and writes the report.
pub fn run(args: Args) -> anyhow::Result<()> {
    let (scenario, base) = match &args.scenario {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let scenario = cartwright_sim::scenario::parse(&path.display().to_string(), &text)?;
            (scenario, path.parent().map(Path::to_path_buf).unwrap_or_default())
        }
        None => (
            cartwright_sim::scenario::parse("<default scenario>", cartwright_sim::DEFAULT_SCENARIO)?,
            PathBuf::new(),
        ),
    };
    let variants: Vec<String> =
        if args.compare.is_empty() { vec!["cartwright".into()] } else { args.compare.clone() };
    let mut results = Vec::new();
    for name in &variants {
        let Some((variant, algorithm)) = scenario.variant(name) else {
            let mut names: Vec<&str> = scenario.variants.iter().map(|v| v.name.as_str()).collect();
            names.extend(Algorithm::ALL.iter().map(|a| a.name()));
            bail!("--compare: unknown variant `{name}` (one of {})", names.join(", "));
        };
        let report = run_variant(&variant, &base, algorithm, name, args.quiet)
            .with_context(|| format!("variant {name}"))?;
        results.push((name.as_str(), report));
    }
    let file = FileReport {
        scenario: &scenario.name,
        description: &scenario.description,
        seed: scenario.seed,
        summary: &results[0].1.summary,
        variants: results.iter().map(|(name, r)| Variant { name, summary: &r.summary, report: r }).collect(),
    };
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    let json_path = args.output_dir.join("report.json");
    let json = serde_json::to_string_pretty(&file)?;
    std::fs::write(&json_path, &json).with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = args.output_dir.join("report.html");
    let pairs: Vec<(&str, &Report)> = results.iter().map(|(n, r)| (*n, r)).collect();
    let html = cartwright_sim::html::render(&scenario.name, &scenario.description, &pairs);
    std::fs::write(&html_path, html).with_context(|| format!("writing {}", html_path.display()))?;
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => writeln!(out, "{json}")?,
        Output::Table => {
            print_summary(&mut out, &scenario, &results)?;
            writeln!(out, "\nreport written to {} and {}", json_path.display(), html_path.display())?;
        }
    }
    Ok(())
}

fn run_variant(
    scenario: &Scenario,
    base: &Path,
    algorithm: Algorithm,
    name: &str,
    quiet: bool,
) -> anyhow::Result<Report> {
    let show = !quiet && std::io::stderr().is_terminal();
    let bar = show.then(|| {
        let bar = indicatif::ProgressBar::new(1000);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>18} [{bar:40}] {percent:>3}% {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_owned());
        bar
    });
    let report = cartwright_sim::run(scenario, base, algorithm, |fraction| {
        if let Some(bar) = &bar {
            bar.set_position((fraction * 1000.0) as u64);
        }
    })
    .map_err(anyhow::Error::msg)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

fn print_summary(
    out: &mut impl Write,
    scenario: &Scenario,
    results: &[(&str, Report)],
) -> anyhow::Result<()> {
    writeln!(out, "scenario {}: {}", scenario.name, scenario.description)?;
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    let mut header = vec!["".to_owned()];
    header.extend(results.iter().map(|(name, _)| name.to_string()));
    table.set_header(header);
    let rows = cartwright_sim::report::summary_rows();
    for (label, f) in rows {
        let mut row = vec![label.to_owned()];
        row.extend(results.iter().map(|(_, r)| f(&r.summary)));
        table.add_row(row);
    }
    writeln!(out, "{table}")?;
    for (name, r) in results {
        let s = &r.summary;
        let families: Vec<String> = s
            .node_hours_by_family
            .iter()
            .filter(|(_, h)| **h > 0.0)
            .map(|(f, h)| format!("{f} {h:.1}"))
            .collect();
        writeln!(out, "{name}: node-hours by family: {}", families.join(", "))?;
        for u in &s.unschedulable {
            writeln!(out, "{name}: unschedulable ({} planning rounds): {}", u.pods, u.reason)?;
        }
    }
    Ok(())
}
