//! `cartwright catalog`: the embedded instance catalog of a region, filtered by Karpenter-style requirements.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};
use cartwright_binpack::labels::{self, aws};
use cartwright_binpack::requirements::SelectorRequirement;
use cartwright_binpack::{CapacityType, Catalog, CatalogOptions, InstanceType, Requirements, SpotPriceModel};
use clap::ValueEnum;
use serde::Serialize;

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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// One instance type as printed by `--output json`.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    name: &'a str,
    vcpu: u32,
    memory_mib: u64,
    arch: &'a str,
    gpu_count: u32,
    allocatable: Allocatable,
    labels: BTreeMap<String, String>,
    offerings: Vec<EntryOffering<'a>>,
}

#[derive(Debug, Serialize)]
struct Allocatable {
    cpu_millis: i64,
    memory_mib: i64,
    pods: i64,
    ephemeral_storage_gib: i64,
}

#[derive(Debug, Serialize)]
struct EntryOffering<'a> {
    zone: &'a str,
    capacity_type: CapacityType,
    price_per_hour: f64,
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
            let entries: Vec<Entry> =
                selected.iter().map(|t| entry(t, &requirements)).collect::<anyhow::Result<_>>()?;
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

fn numeric_label<T: std::str::FromStr>(t: &InstanceType, key: &str) -> anyhow::Result<T> {
    t.label(key)
        .with_context(|| format!("{} has no {key} label", t.name))?
        .parse()
        .map_err(|_| anyhow::anyhow!("{}: label {key} is not a number", t.name))
}

fn entry<'a>(t: &'a InstanceType, requirements: &'a Requirements) -> anyhow::Result<Entry<'a>> {
    let alloc = t.allocatable();
    let mut labels = t.requirements.single_valued_labels();
    // Zone and capacity type belong to offerings, not to the type.
    labels.remove(labels::ZONE);
    labels.remove(labels::CAPACITY_TYPE);
    Ok(Entry {
        name: &t.name,
        vcpu: numeric_label(t, aws::INSTANCE_CPU)?,
        memory_mib: numeric_label(t, aws::INSTANCE_MEMORY)?,
        arch: t.label(labels::ARCH).unwrap_or_default(),
        gpu_count: t
            .label(aws::INSTANCE_GPU_COUNT)
            .map_or(Ok(0), |_| numeric_label(t, aws::INSTANCE_GPU_COUNT))?,
        allocatable: Allocatable {
            cpu_millis: alloc.cpu_millis,
            memory_mib: alloc.memory_bytes >> 20,
            pods: alloc.pods,
            ephemeral_storage_gib: alloc.ephemeral_storage_bytes >> 30,
        },
        labels,
        offerings: t
            .compatible_offerings(requirements)
            .map(|o| EntryOffering {
                zone: &o.zone,
                capacity_type: o.capacity_type,
                price_per_hour: o.price.usd(),
            })
            .collect(),
    })
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
        let e = entry(t, requirements)?;
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
