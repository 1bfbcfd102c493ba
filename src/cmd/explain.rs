//! `cartwright explain node NAME`: would disruption remove this node now, and if not, why not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use cartwright_binpack::{Catalog, CatalogOptions};
use cartwright_core::disruption;
use cartwright_core::provisioning;
use cartwright_kube::controller::{Model, Snapshot};

/// Arguments of `cartwright explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Why a node is (or is not) being consolidated: the blocking reason (do-not-disrupt, budget, pods fit
    /// nowhere cheaper, ...) or what would replace it. `consolidateAfter` is taken as elapsed.
    Node {
        /// The Node's name.
        name: String,
        /// A kubeconfig file; without it the in-cluster configuration (or `KUBECONFIG`) is used.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// AWS region whose catalog and prices to use.
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let What::Node { name, kubeconfig, region } = args.what;
    let catalog = Catalog::embedded(&region, &CatalogOptions::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let snapshot = runtime.block_on(async {
        let client = cartwright_kube::client(kubeconfig.as_deref()).await?;
        Snapshot::list(&client).await.context("reading the cluster")
    })?;
    let model = Model::build(&snapshot, &catalog);
    let Some(node) = model.nodes.iter().find(|n| n.name == name) else {
        bail!("node {name} not found");
    };
    if node.claim.is_none() {
        println!("node {name} is not managed by Cartwright (it has no NodeClaim): it is never disrupted");
        return Ok(());
    }
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond().max(0) as u64;
    let launchable = Arc::new(provisioning::launchable(&catalog, &model.templates));
    let (input, errors) =
        cartwright_kube::disruption::input(&model, &BTreeMap::new(), &BTreeSet::new(), launchable, now);
    for e in errors {
        println!("warning: {e}");
    }
    let outcome = disruption::decide(&input, now);
    match outcome.command {
        Some(c) if c.nodes.contains(&name) => {
            let what = match c.replacements.first() {
                None => "deleted; its pods fit on other nodes".to_owned(),
                Some(r) => format!(
                    "replaced by a {} ({}, {})",
                    r.launch.instance_type,
                    r.launch.zone,
                    r.launch.capacity_type.as_str()
                ),
            };
            println!(
                "node {name} would be disrupted now ({}): {what}, with {} node(s) in all, saving ${:.4}/h",
                c.reason.as_str(),
                c.nodes.len(),
                c.savings.usd()
            );
        }
        _ => {
            let why = outcome.kept.get(&name).cloned().unwrap_or_else(|| "nothing to gain".into());
            println!("node {name} stays: {why}");
        }
    }
    // What the controller itself last decided, with what only it knows (HPA headroom and its guard, from
    // the HPAs' history; how long the pods have settled).
    let told = node.claim.as_ref().and_then(|claim| {
        let claim = snapshot.claims.iter().find(|c| c.metadata.name.as_deref() == Some(claim.as_str()))?;
        claim.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Disruptable").cloned()
    });
    if let Some(c) = told {
        let when = c.last_transition_time.unwrap_or_default();
        match c.message.filter(|m| !m.is_empty()) {
            Some(message) => println!("the controller's last decision ({when}): kept: {message}"),
            None => println!("the controller's last decision ({when}): disruptable"),
        }
    }
    Ok(())
}
