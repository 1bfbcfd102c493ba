//! `Ec2Api`: the narrow set of AWS calls the provider makes, in the provider's own terms. The SDK
//! implementation (`sdk`) speaks to EC2 and SSM; the fake (`fake`) records calls and injects failures.

use std::collections::BTreeMap;
use std::future::Future;

use cartwright_binpack::CapacityType;

/// Resource tags.
pub type Tags = BTreeMap<String, String>;

/// An EC2 `Filter`: the resource matches when its `name` attribute has one of `values`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = impl Into<String>>) -> Filter {
        Filter { name: name.into(), values: values.into_iter().map(Into::into).collect() }
    }

    /// `tag:KEY = VALUE`, or any value of the tag for `*`.
    pub fn tag(key: &str, value: &str) -> Filter {
        if value == "*" { Filter::new("tag-key", [key]) } else { Filter::new(format!("tag:{key}"), [value]) }
    }
}

/// What DescribeInstanceTypes says of a type (what the live catalog checks against its facts).
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceTypeInfo {
    pub name: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    /// `x86_64`, `arm64`, ...
    pub architectures: Vec<String>,
}

/// An IAM instance profile and the roles in it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceProfile {
    pub name: String,
    pub path: String,
    pub roles: Vec<String>,
    pub tags: Tags,
}

/// The latest spot price of a type in a zone.
#[derive(Clone, Debug, PartialEq)]
pub struct SpotPrice {
    pub instance_type: String,
    pub zone: String,
    pub price_per_hour: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
    pub zone_id: Option<String>,
    pub available_ips: i64,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub tags: Tags,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// ISO 8601, as EC2 reports it (sorts chronologically).
    pub creation_date: String,
    pub tags: Tags,
}

/// An EBS volume of a launch template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockDevice {
    pub device_name: String,
    pub volume_size_gib: Option<i32>,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub delete_on_termination: Option<bool>,
}

/// Instance metadata service settings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MetadataSettings {
    /// `enabled` or `disabled`.
    pub http_endpoint: String,
    /// `required` (IMDSv2) or `optional`.
    pub http_tokens: String,
    pub http_put_response_hop_limit: i32,
    /// `enabled` or `disabled`.
    pub http_protocol_ipv6: String,
}

impl Default for MetadataSettings {
    /// Karpenter's defaults: IMDSv2 only, one hop (pods cannot reach the node's credentials).
    fn default() -> Self {
        MetadataSettings {
            http_endpoint: "enabled".into(),
            http_tokens: "required".into(),
            http_put_response_hop_limit: 1,
            http_protocol_ipv6: "disabled".into(),
        }
    }
}

/// A launch template's content.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LaunchTemplate {
    pub name: String,
    pub image_id: String,
    /// Base64, as EC2 takes it.
    pub user_data: String,
    pub security_group_ids: Vec<String>,
    pub instance_profile: Option<String>,
    pub block_devices: Vec<BlockDevice>,
    pub metadata: MetadataSettings,
    pub associate_public_ip: Option<bool>,
    pub detailed_monitoring: bool,
    /// Tags of the template itself and of the instances and volumes it launches.
    pub tags: Tags,
}

/// One (instance type, subnet) a fleet may launch, on a launch template.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetOverride {
    pub instance_type: String,
    pub subnet_id: String,
    /// Lower is preferred (the plan's ranking).
    pub priority: f64,
}

/// A launch template and the overrides that use it (one per AMI architecture).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetConfig {
    pub launch_template: String,
    pub overrides: Vec<FleetOverride>,
}

/// A CreateFleet `instant` request for one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetRequest {
    /// Idempotency token: the same token never launches twice.
    pub client_token: String,
    pub capacity_type: CapacityType,
    pub configs: Vec<FleetConfig>,
    /// Tags of the instance and its volumes.
    pub tags: Tags,
}

/// A launched fleet instance.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetInstance {
    pub id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
}

/// An override CreateFleet could not launch.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetError {
    pub code: String,
    pub message: String,
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct FleetOutcome {
    pub instances: Vec<FleetInstance>,
    pub errors: Vec<FleetError>,
}

/// An instance, as DescribeInstances reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    /// pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    /// Milliseconds since the epoch.
    pub launch_time_ms: Option<i64>,
    pub spot: bool,
    pub image_id: Option<String>,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub tags: Tags,
}

impl Instance {
    /// Whether it still runs or may run again (not shutting down or gone).
    pub fn is_live(&self) -> bool {
        !matches!(self.state.as_str(), "shutting-down" | "terminated")
    }
}

/// An AWS error: its code (`InsufficientInstanceCapacity`, `RequestLimitExceeded`, ...) and message.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}{message}", code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct Ec2Error {
    pub code: Option<String>,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: &str, message: impl Into<String>) -> Ec2Error {
        Ec2Error { code: Some(code.to_owned()), message: message.into() }
    }

    fn code_is(&self, f: impl Fn(&str) -> bool) -> bool {
        self.code.as_deref().is_some_and(f)
    }

    /// The request was throttled (after the SDK's own retries).
    pub fn is_throttling(&self) -> bool {
        self.code_is(|c| matches!(c, "RequestLimitExceeded" | "Throttling" | "ThrottlingException"))
    }

    /// The resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code_is(|c| {
            c.ends_with(".NotFound")
                || c.ends_with("NotFoundException")
                || c == "ParameterNotFound"
                || c == "NoSuchEntity"
        })
    }
}

/// Whether a CreateFleet error code means "no capacity for this offering now" (Karpenter's list).
pub fn is_insufficient_capacity(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "InsufficientCapacity"
            | "UnfulfillableCapacity"
            | "MaxSpotInstanceCountExceeded"
            | "InsufficientFreeAddressesInSubnet"
            | "Unsupported"
    )
}

/// The AWS calls the provider makes. Each is one API operation (paginated ones return every page).
pub trait Ec2Api: Send + Sync {
    fn describe_instance_types(&self)
    -> impl Future<Output = Result<Vec<InstanceTypeInfo>, Ec2Error>> + Send;
    /// (instance type, zone) pairs offered in the region.
    fn describe_instance_type_offerings(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Ec2Error>> + Send;
    /// The latest Linux spot price of every (type, zone).
    fn describe_spot_prices(&self) -> impl Future<Output = Result<Vec<SpotPrice>, Ec2Error>> + Send;
    /// The Linux on-demand hourly USD price of every instance type in `region` (Price List API).
    fn on_demand_prices(
        &self,
        region: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, f64>, Ec2Error>> + Send;
    fn describe_subnets(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<Subnet>, Ec2Error>> + Send;
    fn describe_security_groups(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<SecurityGroup>, Ec2Error>> + Send;
    fn describe_images(
        &self,
        filters: &[Filter],
        owners: &[String],
    ) -> impl Future<Output = Result<Vec<Image>, Ec2Error>> + Send;
    /// An SSM parameter's value; `None` when it does not exist.
    fn get_parameter(&self, name: &str) -> impl Future<Output = Result<Option<String>, Ec2Error>> + Send;
    /// The names of the launch templates among `names` that exist.
    fn existing_launch_templates(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    fn create_launch_template(
        &self,
        template: &LaunchTemplate,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// The names of the launch templates matching `filters`.
    fn list_launch_templates(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<String>, Ec2Error>> + Send;
    fn delete_launch_template(&self, name: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn create_fleet(
        &self,
        request: &FleetRequest,
    ) -> impl Future<Output = Result<FleetOutcome, Ec2Error>> + Send;
    fn describe_instances(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<Instance>, Ec2Error>> + Send;
    fn terminate_instances(&self, ids: &[String]) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    /// An IAM instance profile; `None` when it does not exist.
    fn get_instance_profile(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<InstanceProfile>, Ec2Error>> + Send;
    /// The instance profiles under an IAM path (tags not filled in).
    fn list_instance_profiles(
        &self,
        path_prefix: &str,
    ) -> impl Future<Output = Result<Vec<InstanceProfile>, Ec2Error>> + Send;
    fn create_instance_profile(
        &self,
        name: &str,
        path: &str,
        tags: &Tags,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn add_role_to_instance_profile(
        &self,
        profile: &str,
        role: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn remove_role_from_instance_profile(
        &self,
        profile: &str,
        role: &str,
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
    fn delete_instance_profile(&self, name: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}
