//! `cartwright catalog`: the embedded instance catalog of a region, filtered by Karpenter-style requirements.

use std::io::Write;

use crate::cmd::Output;
use anyhow::{Context, bail};
use cartwright_binpack::catalog::file::CatalogEntry;
use cartwright_binpack::requirements::SelectorRequirement;
use cartwright_binpack::{CapacityType, Catalog, CatalogOptions, InstanceType, Requirements, SpotPriceModel};

/// Arguments of `cartwright catalog`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// AWS region whose embedded prices to use.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Keep only instance types that satisfy a requirement, as in a NodePool:
    /// `--requirement KEY OP [VALUES]...` (operators In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte, Lte).
    /// Repeat to AND several.
    #[arg(long, num_args = 2.., value_names = ["KEY", "OP", "VALUES"], action = clap::ArgAction::Append)]
    pub requirement: Vec<String>,
    /// `--requirement` split per occurrence (clap's derive flattens them; [`super::parse`] fills this in).
    #[arg(skip)]
    pub requirement_groups: Vec<Vec<String>>,
    /// Zones to offer in (comma-separated); defaults to the region's documented zones.
    #[arg(long, value_delimiter = ',')]
    pub zones: Option<Vec<String>>,
    /// Modelled spot discount off on-demand, a fraction in [0, 1).
    #[arg(long, default_value_t = 0.6)]
    pub spot_discount: f64,
}

/// Prints the catalog.
pub fn run(args: Args) -> anyhow::Result<()> {
    let requirements = parse_requirements(&args.requirement_groups)?;
    let options = CatalogOptions {
        zones: args.zones.clone(),
        spot: SpotPriceModel::flat(args.spot_discount).context("--spot-discount")?,
        ..CatalogOptions::default()
    };
    let catalog = Catalog::embedded(&args.region, &options)?;
    let selected: Vec<&InstanceType> = catalog.compatible(&requirements).collect();
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Json => {
            let entries: Vec<CatalogEntry> = selected.iter().map(|t| entry(t, &requirements)).collect();
            serde_json::to_writer_pretty(&mut stdout, &entries)?;
            writeln!(stdout)?;
        }
        Output::Table => {
            writeln!(stdout, "{}", table(&selected, &requirements)?)?;
            writeln!(
                stdout,
                "{} instance types in {} ({} zones); spot prices are modelled at {:.0} % off on-demand",
                selected.len(),
                catalog.region(),
                catalog.zones().len(),
                args.spot_discount * 100.0
            )?;
        }
    }
    Ok(())
}

/// `[[KEY, OP, VALUES...], ...]` into requirements, with errors that name the flag and the key.
fn parse_requirements(raw: &[Vec<String>]) -> anyhow::Result<Requirements> {
    let mut requirements = Requirements::new();
    for words in raw {
        let [key, operator, values @ ..] = words.as_slice() else {
            bail!("--requirement needs KEY OP [VALUES]..., got {words:?}");
        };
        let selector = SelectorRequirement {
            key: key.clone(),
            operator: operator.clone(),
            values: values.to_vec(),
            min_values: None,
        };
        requirements.add(selector.to_requirement().context("--requirement")?);
    }
    if let Some(r) = requirements.unsatisfiable() {
        bail!("--requirement: no node can satisfy {r}");
    }
    Ok(requirements)
}

fn entry(t: &InstanceType, requirements: &Requirements) -> CatalogEntry {
    CatalogEntry::from_type(t, |o| t.compatible_offerings(requirements).any(|c| std::ptr::eq(c, o)))
}

fn table(types: &[&InstanceType], requirements: &Requirements) -> anyhow::Result<comfy_table::Table> {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_header([
        "NAME",
        "VCPU",
        "MEMORY",
        "ARCH",
        "GPU",
        "ALLOC CPU",
        "ALLOC MEMORY",
        "PODS",
        "ON-DEMAND $/H",
        "SPOT $/H",
    ]);
    for t in types {
        let e = entry(t, requirements);
        let cheapest = |ct: CapacityType| {
            t.compatible_offerings(requirements)
                .filter(|o| o.capacity_type == ct)
                .map(|o| o.price)
                .min()
                .map_or("-".to_owned(), |p| format!("{:.4}", p.usd()))
        };
        table.add_row([
            e.name.to_owned(),
            e.vcpu.to_string(),
            format!("{} MiB", e.memory_mib),
            e.arch.to_owned(),
            e.gpu_count.to_string(),
            format!("{}m", e.allocatable.cpu_millis),
            format!("{} MiB", e.allocatable.memory_mib),
            e.allocatable.pods.to_string(),
            cheapest(CapacityType::OnDemand),
            cheapest(CapacityType::Spot),
        ]);
    }
    Ok(table)
}
