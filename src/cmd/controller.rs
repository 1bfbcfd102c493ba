//! `cartwright controller`: the in-cluster controller (provisioning, node lifecycle, termination).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cartwright_binpack::{Catalog, CatalogOptions};
use cartwright_core::batcher::BatchWindow;
use cartwright_core::lifecycle::Timeouts;
use cartwright_kube::controller::{LeaseSettings, Settings};
use cartwright_kube::kwok::KwokProvider;

/// Which cloud provider launches nodes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Provider {
    /// Node objects without machines (for trying Cartwright on any cluster).
    Kwok,
}

/// Arguments of `cartwright controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A kubeconfig file; without it the in-cluster configuration (or `KUBECONFIG`) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cloud provider.
    #[arg(long, value_enum, default_value_t = Provider::Kwok)]
    pub provider: Provider,
    /// AWS region whose catalog and prices to plan with.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// A catalog file (`cartwright catalog --output json`) instead of the embedded catalog.
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// A batch closes after this long without a new pending pod...
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch_idle_duration: Duration,
    /// ...or this long after it opened.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub batch_max_duration: Duration,
    /// A NodeClaim without a machine after this long is deleted.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub launch_timeout: Duration,
    /// A launched NodeClaim without a Node after this long is deleted.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub registration_timeout: Duration,
    /// kwok: how long after creation a node turns Ready.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub kwok_ready_after: Duration,
    /// Leader election: the Lease's namespace (empty: no leader election, for a single replica).
    #[arg(long, default_value = "kube-system")]
    pub leader_election_namespace: String,
    /// Leader election: the Lease's name.
    #[arg(long, default_value = "cartwright-leader-election")]
    pub leader_election_name: String,
    /// Leader election: this replica's identity (defaults to the pod's hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Leader election: how long a lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// Where to serve /metrics, /healthz and /readyz (empty: not served).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_address: String,
    /// How often disruption (emptiness, consolidation) decides; `0s` turns disruption off.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub disruption_interval: Duration,
    /// A disruption decision is carried out only if it still holds this long after it was made.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub disruption_validation: Duration,
    /// Pause between controller passes.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let catalog = match &args.catalog {
        Some(path) => cartwright_api::catalog_file::read(path, &args.region).map_err(anyhow::Error::msg)?,
        None => Catalog::embedded(&args.region, &CatalogOptions::default())?,
    };
    let catalog = Arc::new(catalog);
    let metrics_addr: Option<SocketAddr> = if args.metrics_address.is_empty() {
        None
    } else {
        Some(
            args.metrics_address
                .parse()
                .with_context(|| format!("--metrics-address {}", args.metrics_address))?,
        )
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("cartwright-{}", std::process::id()));
    let lease = (!args.leader_election_namespace.is_empty()).then(|| LeaseSettings {
        namespace: args.leader_election_namespace.clone(),
        name: args.leader_election_name.clone(),
        identity,
        duration: args.lease_duration,
    });
    let settings = Settings {
        catalog: catalog.clone(),
        batch: BatchWindow {
            idle_ms: args.batch_idle_duration.as_millis() as u64,
            max_ms: args.batch_max_duration.as_millis() as u64,
        },
        timeouts: Timeouts {
            launch_ms: args.launch_timeout.as_millis() as u64,
            registration_ms: args.registration_timeout.as_millis() as u64,
        },
        replan_every: Duration::from_secs(10).max(args.batch_max_duration),
        tick: args.tick,
        lease,
        metrics_addr,
        disruption_every: (!args.disruption_interval.is_zero()).then_some(args.disruption_interval),
        disruption_validation: args.disruption_validation,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = cartwright_kube::client(args.kubeconfig.as_deref()).await?;
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let shutdown = async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = shutdown => {}
                _ = term.recv() => {}
            }
        };
        match args.provider {
            Provider::Kwok => {
                let kwok = KwokProvider::new(client.clone(), catalog, args.kwok_ready_after);
                cartwright_kube::controller::run(client, kwok.clone(), Some(kwok), settings, shutdown).await
            }
        }
    })
}
