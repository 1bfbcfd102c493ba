//! `cartwright controller`: the in-cluster controller (provisioning, node lifecycle, termination).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cartwright_api::ec2nodeclass::EC2NodeClass;
use cartwright_aws::nodeclass::ClusterInfo;
use cartwright_aws::provider::{AwsProvider, AwsSettings};
use cartwright_aws::sdk::SdkEc2;
use cartwright_binpack::{Catalog, CatalogOptions};
use cartwright_core::batcher::BatchWindow;
use cartwright_core::lifecycle::Timeouts;
use cartwright_kube::controller::{LeaseSettings, Settings};
use cartwright_kube::kwok::KwokProvider;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

/// Which cloud provider launches nodes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Provider {
    /// Node objects without machines (for trying Cartwright on any cluster).
    Kwok,
    /// EC2 instances.
    Aws,
}

/// Arguments of `cartwright controller`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A kubeconfig file; without it the in-cluster configuration (or `KUBECONFIG`) is used.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cloud provider.
    #[arg(long, visible_alias = "provider", value_enum, default_value_t = Provider::Kwok)]
    pub cloud_provider: Provider,
    /// AWS region whose catalog and prices to plan with (aws: default from the environment or IMDS;
    /// kwok: us-east-1).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// A catalog file (`cartwright catalog --output json`) instead of the embedded catalog (kwok only:
    /// aws discovers its catalog from EC2).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// aws: the EKS cluster's name (tags, user data).
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// aws: the API server URL nodes join (`aws eks describe-cluster --query cluster.endpoint`).
    #[arg(long, env = "CLUSTER_ENDPOINT")]
    pub cluster_endpoint: Option<String>,
    /// aws: the cluster CA bundle, base64 (`... --query cluster.certificateAuthority.data`); default: the
    /// CA this controller trusts for the API server.
    #[arg(long, env = "CLUSTER_CA_BUNDLE")]
    pub cluster_ca_bundle: Option<String>,
    /// aws: the cluster's service CIDR, for nodeadm (optional).
    #[arg(long)]
    pub service_cidr: Option<String>,
    /// aws: the Kubernetes version whose AMIs aliases resolve to (default: the API server's).
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    /// aws: an EC2/SSM endpoint instead of AWS's (a local moto server, a VPC endpoint).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// aws: the root of the public AMI parameters in SSM.
    #[arg(long, default_value = "/aws/service")]
    pub ami_parameter_root: String,
    /// aws: the SQS queue (name or URL) EventBridge sends interruption events to; none: not watched.
    #[arg(long, env = "INTERRUPTION_QUEUE")]
    pub interruption_queue: Option<String>,
    /// aws: how often instance types, offerings and spot prices are read again.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub catalog_refresh: Duration,
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
    /// Keep capacity ahead of HPA scale-ups and hold capacity an HPA just gave back (docs/headroom.md);
    /// NodePools opt out with the `cartwright.sh/headroom: "false"` annotation.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub headroom: bool,
    /// How far ahead headroom predicts HPAs; by default the 90th percentile of the recent nodes'
    /// launch-to-ready times (60s until one is measured).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub headroom_horizon: Option<Duration>,
    /// The HPA metric history headroom fits its trend over.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub headroom_trend_window: Duration,
}

/// How often EC2NodeClass statuses are resolved and written.
const NODE_CLASS_EVERY: Duration = Duration::from_secs(30);

pub fn run(args: Args) -> anyhow::Result<()> {
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
    let settings = |catalog| Settings {
        catalog,
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
        lease: lease.clone(),
        metrics_addr,
        disruption_every: (!args.disruption_interval.is_zero()).then_some(args.disruption_interval),
        disruption_validation: args.disruption_validation,
        headroom: args.headroom.then_some(cartwright_kube::controller::HeadroomSettings {
            horizon: args.headroom_horizon,
            trend_window: args.headroom_trend_window,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
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
        match args.cloud_provider {
            Provider::Kwok => {
                let region = args.region.as_deref().unwrap_or("us-east-1");
                let catalog = match &args.catalog {
                    Some(path) => {
                        cartwright_api::catalog_file::read(path, region).map_err(anyhow::Error::msg)?
                    }
                    None => Catalog::embedded(region, &CatalogOptions::default())?,
                };
                let catalog = Arc::new(catalog);
                let (_keep, receiver) = tokio::sync::watch::channel(catalog.clone());
                let kwok = KwokProvider::new(client.clone(), catalog, args.kwok_ready_after);
                cartwright_kube::controller::run(
                    client,
                    kwok.clone(),
                    Some(kwok),
                    settings(receiver),
                    shutdown,
                )
                .await
            }
            Provider::Aws => {
                let (provider, receiver) = aws_provider(&args, &client).await?;
                cartwright_kube::controller::run(client, provider, None, settings(receiver), shutdown).await
            }
        }
    })
}

/// The EC2 provider: the live catalog (refreshed in the background), the NodeClass cache and the loop
/// that writes NodeClass statuses.
async fn aws_provider(
    args: &Args,
    client: &kube::Client,
) -> anyhow::Result<(Arc<AwsProvider<SdkEc2, Store<EC2NodeClass>>>, watch::Receiver<Arc<Catalog>>)> {
    anyhow::ensure!(args.catalog.is_none(), "--catalog: the aws provider discovers its catalog from EC2");
    let cluster_name =
        args.cluster_name.clone().context("--cluster-name is required with --cloud-provider aws")?;
    let endpoint =
        args.cluster_endpoint.clone().context("--cluster-endpoint is required with --cloud-provider aws")?;
    let ca_bundle = match &args.cluster_ca_bundle {
        Some(ca) => ca.clone(),
        None => cartwright_kube::ca_bundle(args.kubeconfig.as_deref())
            .await?
            .context("--cluster-ca-bundle: the kubeconfig names no CA to pass on; set it")?,
    };
    let kubernetes_version = match &args.kubernetes_version {
        Some(v) => v.clone(),
        None => {
            let info = client.apiserver_version().await.context("reading the API server's version")?;
            format!("{}.{}", info.major, info.minor.trim_end_matches('+'))
        }
    };
    let config = cartwright_aws::Ec2Settings {
        region: args.region.clone(),
        endpoint_url: args.aws_endpoint_url.clone(),
    }
    .loader()
    .load()
    .await;
    let region = config
        .region()
        .map(|r| r.to_string())
        .context("no AWS region: set --region or AWS_REGION (or run where IMDS answers)")?;
    let api = Arc::new(SdkEc2::new(&config));
    let options = CatalogOptions::default();
    let (catalog, discovery) = cartwright_aws::catalog::discover(api.as_ref(), &region, &options)
        .await
        .with_context(|| format!("discovering the instance types of {region}"))?;
    tracing::info!(
        region,
        instance_types = catalog.instance_types().len(),
        zones = catalog.zones().len(),
        unknown = discovery.unknown_types.len(),
        live_spot_prices = discovery.live_spot_prices,
        live_on_demand_prices = discovery.live_on_demand_prices,
        "discovered the EC2 catalog"
    );
    if let Some(error) = &discovery.pricing_error {
        tracing::warn!(%error, "on-demand prices from the embedded table: the Price List API gave none");
    }
    let (sender, receiver) = watch::channel(Arc::new(catalog));
    let refresh = args.catalog_refresh;
    {
        let api = api.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(refresh).await;
                match cartwright_aws::catalog::discover(api.as_ref(), &region, &options).await {
                    Ok((catalog, discovery)) => {
                        tracing::info!(
                            instance_types = catalog.instance_types().len(),
                            live_on_demand_prices = discovery.live_on_demand_prices,
                            "refreshed the EC2 catalog"
                        );
                        if let Some(error) = &discovery.pricing_error {
                            tracing::warn!(%error, "on-demand prices from the embedded table");
                        }
                        if sender.send(Arc::new(catalog)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "refreshing the EC2 catalog failed; keeping the last one")
                    }
                }
            }
        });
    }
    let classes = cartwright_kube::controller::reflect(kube::Api::<EC2NodeClass>::all(client.clone()));
    let cluster = ClusterInfo {
        name: cluster_name,
        endpoint,
        ca_bundle,
        service_cidr: args.service_cidr.clone(),
        kubernetes_version,
        ssm_root: args.ami_parameter_root.clone(),
    };
    let provider = Arc::new(AwsProvider::new(
        api,
        classes.clone(),
        AwsSettings { cluster, tags: Default::default() },
        receiver.clone(),
    ));
    {
        let (provider, client) = (provider.clone(), client.clone());
        tokio::spawn(async move {
            // Until the NodeClasses are listed, every instance profile would look unused.
            if classes.wait_until_ready().await.is_err() {
                return;
            }
            loop {
                let mut using_role = std::collections::BTreeSet::new();
                for class in classes.state() {
                    if let Err(e) = provider.reconcile_node_class(&client, &class).await {
                        tracing::warn!(nodeclass = class.metadata.name.as_deref().unwrap_or(""), error = %e, "resolving the EC2NodeClass failed");
                    }
                    if class.spec.role.is_some() && class.spec.instance_profile.is_none() {
                        using_role.insert(class.metadata.name.clone().unwrap_or_default());
                    }
                }
                if let Err(e) = provider.collect_instance_profiles(&using_role).await {
                    tracing::warn!(error = %e, "collecting unused instance profiles failed");
                }
                tokio::time::sleep(NODE_CLASS_EVERY).await;
            }
        });
    }
    if let Some(queue) = &args.interruption_queue {
        let queue = cartwright_aws::interruption::SdkQueue::new(&config, queue)
            .await
            .with_context(|| format!("--interruption-queue {queue}"))?;
        let provider = provider.clone();
        tokio::spawn(async move {
            loop {
                match cartwright_aws::interruption::poll(&queue).await {
                    Ok(notices) => provider.push_interruptions(notices),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the interruption queue failed; retrying");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
    }
    Ok((provider, receiver))
}
