//! The EC2 provider against a local moto server (`python3 -m moto.server`, which `scripts/test.sh`
//! installs) through the real AWS SDK over HTTP. Each test starts its own server, so tests share no state.

mod controller;
mod policy;
mod pricing;
mod provider;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

/// The region every test uses.
pub const REGION: &str = "us-east-1";
/// The root the tests seed AMI parameters under (moto refuses writes under `/aws/service`).
pub const SSM_ROOT: &str = "/cartwright-test/aws/service";
/// The Kubernetes version of the seeded AMI parameters.
pub const K8S_VERSION: &str = "1.33";

/// A moto server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let python = std::env::var("CARTWRIGHT_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {python} -m moto.server (scripts/test.sh installs moto): {e}")
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "moto server exited ({status}): is moto[server] installed? pip install 'moto[server]'"
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "moto did not listen within a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Moto { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// SDK configuration for this server, with moto's test credentials.
    pub async fn config(&self) -> aws_config::SdkConfig {
        cartwright_aws::Ec2Settings { region: Some(REGION.into()), endpoint_url: Some(self.endpoint.clone()) }
            .loader()
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await
    }

    /// The environment the `cartwright` binary needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// What `seed` created.
#[derive(Debug)]
pub struct Seeded {
    /// (subnet ID, zone), one per zone a, b, c.
    pub subnets: Vec<(String, String)>,
    pub security_group: String,
    pub ami: String,
}

/// A VPC with one subnet in each of three zones and a security group, tagged
/// `karpenter.sh/discovery=<cluster>`, an AL2023 AMI parameter for `al2023@latest`, and the nodes' IAM role
/// `CartwrightNodeRole-<cluster>`.
pub async fn seed(config: &aws_config::SdkConfig, cluster: &str) -> Seeded {
    let ec2 = aws_sdk_ec2::Client::new(config);
    let discovery = || {
        TagSpecification::builder()
            .resource_type(ResourceType::Subnet)
            .tags(tag("karpenter.sh/discovery", cluster))
            .build()
    };
    let vpc = ec2.create_vpc().cidr_block("10.0.0.0/16").send().await.unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let mut subnets = Vec::new();
    for (i, zone) in ["us-east-1a", "us-east-1b", "us-east-1c"].iter().enumerate() {
        let out = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(format!("10.0.{i}.0/24"))
            .availability_zone(*zone)
            .tag_specifications(discovery())
            .send()
            .await
            .unwrap();
        subnets.push((out.subnet().unwrap().subnet_id().unwrap().to_owned(), (*zone).to_owned()));
    }
    let group = ec2
        .create_security_group()
        .group_name(format!("{cluster}-nodes"))
        .description("nodes")
        .vpc_id(&vpc_id)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SecurityGroup)
                .tags(tag("karpenter.sh/discovery", cluster))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let images = ec2
        .describe_images()
        .owners("amazon")
        .filters(Filter::builder().name("architecture").values("x86_64").build())
        .send()
        .await
        .unwrap();
    let ami = images.images().first().and_then(|i| i.image_id()).expect("moto has an x86_64 AMI").to_owned();
    aws_sdk_ssm::Client::new(config)
        .put_parameter()
        .name(format!("{SSM_ROOT}/eks/optimized-ami/{K8S_VERSION}/amazon-linux-2023/x86_64/standard/recommended/image_id"))
        .value(&ami)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    // The nodes' role the example EC2NodeClass names (the install guide's CloudFormation stack makes it).
    aws_sdk_iam::Client::new(config)
        .create_role()
        .role_name(format!("CartwrightNodeRole-{cluster}"))
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .unwrap();
    Seeded { subnets, security_group: group.group_id().unwrap().to_owned(), ami }
}

/// The instance profiles under `path` in moto and the roles they hold.
pub async fn instance_profiles(config: &aws_config::SdkConfig, path: &str) -> Vec<(String, Vec<String>)> {
    let out =
        aws_sdk_iam::Client::new(config).list_instance_profiles().path_prefix(path).send().await.unwrap();
    out.instance_profiles()
        .iter()
        .map(|p| {
            (
                p.instance_profile_name().to_owned(),
                p.roles().iter().map(|r| r.role_name().to_owned()).collect(),
            )
        })
        .collect()
}

/// An EC2NodeClass spec selecting what `seed` made.
pub fn node_class_spec(cluster: &str) -> serde_json::Value {
    // The example the EKS install guide applies, with the cluster's name filled in as the guide does: the
    // moto tests launch with exactly what users are told to write.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/eks/ec2nodeclass.yaml"))
            .unwrap()
            .replace("${CLUSTER_NAME}", cluster);
    let class: serde_json::Value = yaml_serde::from_str(&text).expect("the example is YAML");
    assert_eq!(class["kind"], "EC2NodeClass");
    class["spec"].clone()
}

/// This cluster's instances in moto, every state.
pub async fn instances(config: &aws_config::SdkConfig, cluster: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    let out = aws_sdk_ec2::Client::new(config)
        .describe_instances()
        .filters(Filter::builder().name("tag:eks:eks-cluster-name").values(cluster).build())
        .send()
        .await
        .unwrap();
    out.reservations().iter().flat_map(|r| r.instances().iter().cloned()).collect()
}

pub fn instance_tag(instance: &aws_sdk_ec2::types::Instance, key: &str) -> Option<String> {
    instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value()).map(str::to_owned)
}

pub fn is_running(instance: &aws_sdk_ec2::types::Instance) -> bool {
    let state = instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();
    state == "pending" || state == "running"
}
