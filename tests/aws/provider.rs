//! `cartwright-aws` through the SDK against moto: catalog discovery, NodeClass resolution, launch templates,
//! CreateFleet with tags, idempotent re-launch, listing and termination.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use cartwright_api::ec2nodeclass::EC2NodeClass;
use cartwright_aws::catalog::discover;
use cartwright_aws::nodeclass::ClusterInfo;
use cartwright_aws::provider::{AwsProvider, AwsSettings};
use cartwright_aws::sdk::SdkEc2;
use cartwright_binpack::solver::LaunchOption;
use cartwright_binpack::{CapacityType, CatalogOptions, Price};
use cartwright_core::cloud::{CloudError, CloudProvider, LaunchRequest};
use serde_json::json;

use super::{
    K8S_VERSION, Moto, REGION, SSM_ROOT, instance_tag, instances, is_running, node_class_spec, seed,
};

fn cluster(name: &str) -> ClusterInfo {
    ClusterInfo {
        name: name.into(),
        endpoint: "https://api.example.eks.amazonaws.com".into(),
        ca_bundle: "Q0E=".into(),
        service_cidr: None,
        kubernetes_version: K8S_VERSION.into(),
        ssm_root: SSM_ROOT.into(),
    }
}

fn option(instance_type: &str, zone: &str, capacity_type: CapacityType) -> LaunchOption {
    LaunchOption { instance_type: instance_type.into(), zone: zone.into(), capacity_type, price: Price(0) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_is_discovered_from_ec2() {
    let moto = Moto::start().await;
    let api = SdkEc2::new(&moto.config().await);
    let (catalog, discovery) = discover(&api, REGION, &CatalogOptions::default()).await.unwrap();
    assert!(catalog.instance_types().len() > 300, "{} types", catalog.instance_types().len());
    assert!(catalog.zones().iter().any(|z| z == "us-east-1a"), "{:?}", catalog.zones());
    assert!(discovery.live_spot_prices, "moto reports (placeholder) spot prices");
    // moto has no Price List API (tests/aws/pricing.rs covers it): the embedded prices stand, and discovery
    // says why.
    assert_eq!(discovery.live_on_demand_prices, 0);
    assert!(discovery.pricing_error.is_some(), "{discovery:?}");
    let m5 = catalog.get("m5.large").expect("m5.large offered");
    let on_demand = m5
        .offerings
        .iter()
        .find(|o| o.zone == "us-east-1a" && o.capacity_type == CapacityType::OnDemand)
        .expect("on demand in us-east-1a");
    assert!((on_demand.price.usd() - 0.096).abs() < 1e-9, "the embedded on-demand price");
    assert!(m5.offerings.iter().any(|o| o.capacity_type == CapacityType::Spot), "spot priced from EC2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodeclaim_launches_once_with_its_template_and_tags_then_terminates() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let seeded = seed(&config, "alpha").await;
    let api = Arc::new(SdkEc2::new(&config));
    let (catalog, _) = discover(api.as_ref(), REGION, &CatalogOptions::default()).await.unwrap();
    let (_catalog_sender, catalog) = tokio::sync::watch::channel(Arc::new(catalog));
    let class: EC2NodeClass = serde_json::from_value(json!({
        "apiVersion": "aws.cartwright.sh/v1", "kind": "EC2NodeClass",
        "metadata": {"name": "default"}, "spec": node_class_spec("alpha"),
    }))
    .unwrap();
    let classes: BTreeMap<String, Arc<EC2NodeClass>> =
        [("default".to_owned(), Arc::new(class.clone()))].into();
    // Launch templates live no longer than their last use: here, not at all once collected.
    let provider = AwsProvider::new(
        api.clone(),
        classes,
        AwsSettings { cluster: cluster("alpha"), tags: BTreeMap::new() },
        catalog,
    )
    .with_template_ttl(std::time::Duration::ZERO);

    // The NodeClass resolves to what the test created.
    let resolved = provider.resolve("default", &class.spec).await.unwrap();
    assert!(resolved.is_ready(), "{:?}", resolved.problems);
    assert_eq!(resolved.subnets.len(), 3);
    assert_eq!(resolved.security_groups[0].id, seeded.security_group);
    assert_eq!(resolved.ami_for("amd64").unwrap().id, seeded.ami);
    // The role got an instance profile in IAM (under the cluster's path) holding it.
    let profile = resolved.instance_profile.clone().expect("an instance profile for the role");
    assert_eq!(
        super::instance_profiles(&config, "/cartwright/alpha/").await,
        [(profile.clone(), vec!["CartwrightNodeRole-alpha".to_owned()])]
    );

    let request = LaunchRequest {
        nodeclaim: "default-x7k2p".into(),
        nodepool: "default".into(),
        node_class: "default".into(),
        options: vec![
            option("m5.large", "us-east-1b", CapacityType::OnDemand),
            option("c5.large", "us-east-1a", CapacityType::OnDemand),
        ],
        labels: [
            ("karpenter.sh/nodepool".to_owned(), "default".to_owned()),
            ("team".to_owned(), "web".to_owned()),
        ]
        .into(),
        taints: vec![],
        startup_taints: vec![],
    };
    let launched = provider.create(&request).await.unwrap();
    assert_eq!(launched.option.instance_type, "m5.large");
    assert_eq!(launched.option.zone, "us-east-1b");
    assert!(launched.provider_id.starts_with("aws:///us-east-1b/i-"), "{}", launched.provider_id);
    assert!(launched.allocatable.cpu_millis > 1_000 && launched.allocatable.cpu_millis < 2_000);

    let all = instances(&config, "alpha").await;
    assert_eq!(all.len(), 1, "one instance");
    let instance = &all[0];
    assert!(launched.provider_id.ends_with(instance.instance_id().unwrap()));
    assert_eq!(instance.instance_type().unwrap().as_str(), "m5.large");
    let zone_b_subnet = &seeded.subnets.iter().find(|(_, z)| z == "us-east-1b").unwrap().0;
    assert_eq!(instance.subnet_id(), Some(zone_b_subnet.as_str()));
    assert_eq!(instance.image_id(), Some(seeded.ami.as_str()));
    for (key, value) in [
        ("cartwright.sh/nodeclaim", "default-x7k2p"),
        ("cartwright.sh/nodepool", "default"),
        ("eks:eks-cluster-name", "alpha"),
        ("kubernetes.io/cluster/alpha", "owned"),
        ("team", "platform"),
    ] {
        assert_eq!(instance_tag(instance, key).as_deref(), Some(value), "tag {key}");
    }

    // One launch template, named for its content, whose user data joins the cluster with the pool's labels.
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let templates = ec2.describe_launch_templates().send().await.unwrap();
    let names: Vec<&str> =
        templates.launch_templates().iter().filter_map(|t| t.launch_template_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("cartwright/alpha/"), "{names:?}");
    let versions =
        ec2.describe_launch_template_versions().launch_template_name(names[0]).send().await.unwrap();
    let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
    assert_eq!(data.image_id(), Some(seeded.ami.as_str()));
    let user_data = base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap();
    let user_data = String::from_utf8(user_data).unwrap();
    assert!(user_data.contains("kind: NodeConfig") && user_data.contains("name: alpha"), "{user_data}");
    assert!(user_data.contains("--node-labels=karpenter.sh/nodepool=default,team=web"), "{user_data}");
    let metadata = data.metadata_options().unwrap();
    assert_eq!(metadata.http_tokens().map(|t| t.as_str()), Some("required"), "IMDSv2 only");
    assert_eq!(data.iam_instance_profile().and_then(|p| p.name()), Some(profile.as_str()));

    // Asked again (a restart before the claim's status was written): the same instance, nothing new.
    let again = provider.create(&request).await.unwrap();
    assert_eq!(again.provider_id, launched.provider_id);
    assert_eq!(instances(&config, "alpha").await.len(), 1);

    let machines = provider.list().await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(machines[0].provider_id, launched.provider_id);
    assert_eq!(machines[0].nodeclaim.as_deref(), Some("default-x7k2p"));

    provider.delete(&launched.provider_id).await.unwrap();
    assert!(instances(&config, "alpha").await.iter().all(|i| !is_running(i)), "terminated");
    assert!(provider.list().await.unwrap().is_empty());
    assert!(matches!(provider.delete(&launched.provider_id).await, Err(CloudError::NotFound(_))));

    // The launch template goes when collected (DescribeLaunchTemplates by tag, DeleteLaunchTemplate).
    assert_eq!(provider.collect_resources().await.unwrap(), [names[0].to_owned()]);
    let templates = ec2.describe_launch_templates().send().await.unwrap();
    assert!(templates.launch_templates().is_empty(), "{templates:?}");

    // The NodeClass gone and its instances with it: its instance profile is deleted.
    let deleted = provider.collect_instance_profiles(&Default::default()).await.unwrap();
    assert_eq!(deleted, [profile]);
    assert!(super::instance_profiles(&config, "/cartwright/alpha/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodeclass_that_does_not_resolve_says_why_and_launches_nothing() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    seed(&config, "beta").await;
    let api = Arc::new(SdkEc2::new(&config));
    let (catalog, _) = discover(api.as_ref(), REGION, &CatalogOptions::default()).await.unwrap();
    let (_keep, catalog) = tokio::sync::watch::channel(Arc::new(catalog));
    let mut spec = node_class_spec("beta");
    spec["subnetSelectorTerms"] = json!([{"tags": {"karpenter.sh/discovery": "prod"}}]);
    let class: EC2NodeClass = serde_json::from_value(json!({
        "apiVersion": "aws.cartwright.sh/v1", "kind": "EC2NodeClass", "metadata": {"name": "default"}, "spec": spec,
    }))
    .unwrap();
    let classes: BTreeMap<String, Arc<EC2NodeClass>> =
        [("default".to_owned(), Arc::new(class.clone()))].into();
    let provider = AwsProvider::new(
        api,
        classes,
        AwsSettings { cluster: cluster("beta"), tags: BTreeMap::new() },
        catalog,
    );
    let request = LaunchRequest {
        nodeclaim: "default-q1".into(),
        nodepool: "default".into(),
        node_class: "default".into(),
        options: vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)],
        labels: BTreeMap::new(),
        taints: vec![],
        startup_taints: vec![],
    };
    let err = provider.create(&request).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "EC2NodeClass default is not ready: no subnet matches tags karpenter.sh/discovery=prod"
    );
    assert!(instances(&config, "beta").await.is_empty());
}
