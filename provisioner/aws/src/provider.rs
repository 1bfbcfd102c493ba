//! The EC2 `CloudProvider`: launches a NodeClaim with CreateFleet `instant` over the plan's ranked offerings
//! (one launch template per NodeClass, AMI and user data), finds what it launched before by tag (so a
//! restart never launches twice), terminates, and lists this cluster's instances for garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cartwright_api::ec2nodeclass::{EC2NodeClass, EC2NodeClassSpec};
use cartwright_binpack::solver::LaunchOption;
use cartwright_binpack::{CapacityType, Catalog, labels};
use cartwright_core::cloud::{CloudError, CloudProvider, Interruption, LaunchRequest, Launched, Machine};
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::api::*;
use crate::nodeclass::{self, AmiFamily, ClusterInfo, Resolved};
use crate::userdata::{self, NodeBootstrap};

/// The providerID scheme.
pub const SCHEME: &str = "aws:///";
/// Tags on every instance launched (the IAM policy conditions on the first three).
pub const TAG_NODECLAIM: &str = "cartwright.sh/nodeclaim";
pub const TAG_NODEPOOL: &str = "cartwright.sh/nodepool";
pub const TAG_CLUSTER: &str = "eks:eks-cluster-name";
pub const TAG_NODECLASS: &str = "cartwright.sh/ec2nodeclass";
/// The [`node_class_hash`] of the instance's EC2NodeClass when it was launched.
pub const TAG_NODECLASS_HASH: &str = "cartwright.sh/ec2nodeclass-hash";
/// CreateFleet takes at most this many overrides (Karpenter's cap too).
const MAX_OVERRIDES: usize = 60;
/// How long a NodeClass resolution is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(60);

/// The EC2NodeClasses the provider launches with, by name.
pub trait NodeClasses: Send + Sync {
    fn get(&self, name: &str) -> Option<Arc<EC2NodeClass>>;
}

impl NodeClasses for Store<EC2NodeClass> {
    fn get(&self, name: &str) -> Option<Arc<EC2NodeClass>> {
        Store::get(self, &ObjectRef::new(name))
    }
}

impl NodeClasses for BTreeMap<String, Arc<EC2NodeClass>> {
    fn get(&self, name: &str) -> Option<Arc<EC2NodeClass>> {
        BTreeMap::get(self, name).cloned()
    }
}

/// Provider settings.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub cluster: ClusterInfo,
    /// Tags on every instance, volume and launch template, under the NodeClass's own.
    pub tags: Tags,
}

/// A NodeClass's resolution: when it was made, for which spec (as JSON), and what it found.
type CachedResolution = (Instant, String, Arc<Resolved>);

/// The EC2 provider.
pub struct AwsProvider<A, N> {
    api: Arc<A>,
    classes: N,
    settings: AwsSettings,
    catalog: watch::Receiver<Arc<Catalog>>,
    resolved: Mutex<BTreeMap<String, CachedResolution>>,
    /// Launch templates known to exist, and when this process last launched from (or first saw) each.
    templates: Mutex<BTreeMap<String, TemplateUse>>,
    /// A launch template unused this long is deleted.
    template_ttl: Duration,
    interruptions: Mutex<Vec<Interruption>>,
}

/// What the provider knows of a launch template.
#[derive(Clone, Copy, Debug)]
struct TemplateUse {
    /// When its existence was last checked with EC2.
    checked: Instant,
    /// When a launch last used it (or this process first saw it).
    used: Instant,
}

/// How long a launch template may go unused before it is deleted (Karpenter's cache lifetime is of this
/// order); launching from it again re-creates it.
pub const TEMPLATE_TTL: Duration = Duration::from_secs(3600);
/// How long a template's existence is trusted before EC2 is asked again (another replica, leading in
/// between, may have deleted it).
const TEMPLATE_RECHECK: Duration = Duration::from_secs(300);

impl<A, N> std::fmt::Debug for AwsProvider<A, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsProvider").field("cluster", &self.settings.cluster.name).finish_non_exhaustive()
    }
}

fn other(e: Ec2Error) -> CloudError {
    CloudError::Other(e.to_string())
}

/// The instance ID in an `aws:///zone/i-...` providerID.
pub fn instance_id(provider_id: &str) -> Option<&str> {
    let rest = provider_id.strip_prefix(SCHEME)?;
    let id = rest.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

/// The first `bytes` bytes of the text's SHA-256, in hex.
/// The IAM path of the instance profiles made for this cluster's NodeClasses.
pub fn profile_path(cluster: &str) -> String {
    format!("/cartwright/{cluster}/")
}

/// The instance profile made for a NodeClass's `role`: the cluster's name and a hash of its endpoint and
/// the NodeClass (unique across clusters of one name in several regions; IAM is global).
pub fn instance_profile_name(cluster: &ClusterInfo, class: &str) -> String {
    format!("{}_{}", cluster.name, hash_hex(&format!("{}/{class}", cluster.endpoint), 8))
}

/// A hash of the EC2NodeClass fields an instance keeps for life (user data, tags, block devices, metadata
/// options, instance profile or role, kubelet, AMI family): a different hash now means a launched
/// instance drifted. The selector terms are left out: what they resolve to is compared instead.
pub fn node_class_hash(spec: &EC2NodeClassSpec) -> String {
    let mut spec = spec.clone();
    spec.subnet_selector_terms.clear();
    spec.security_group_selector_terms.clear();
    spec.ami_selector_terms.clear();
    spec.capacity_reservation_selector_terms.clear();
    hash_hex(&serde_json::to_string(&spec).unwrap_or_default(), 8)
}

/// A NodeClass and what it resolves to now.
type ClassResolution = (Arc<EC2NodeClass>, Arc<Resolved>);

/// Why a launched instance no longer matches its NodeClass as it resolves now, if it does not. Nothing is
/// said while the NodeClass does not resolve (an empty selection is a misconfiguration to report, not a
/// reason to replace every node).
fn drift(instance: &Instance, class: &EC2NodeClass, resolved: &Resolved) -> Option<String> {
    let name = class.metadata.name.as_deref().unwrap_or_default();
    if let Some(launched) = instance.tags.get(TAG_NODECLASS_HASH)
        && *launched != node_class_hash(&class.spec)
    {
        return Some(format!("EC2NodeClass {name} changed since launch"));
    }
    if !resolved.is_ready() {
        return None;
    }
    if let Some(image) = &instance.image_id
        && !resolved.amis.iter().any(|a| a.id == *image)
    {
        return Some(format!("AMI {image} is no longer selected by EC2NodeClass {name}"));
    }
    if let Some(subnet) = &instance.subnet_id
        && !resolved.subnets.iter().any(|s| s.id == *subnet)
    {
        return Some(format!("subnet {subnet} is no longer selected by EC2NodeClass {name}"));
    }
    let has: BTreeSet<&str> = instance.security_group_ids.iter().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = resolved.security_groups.iter().map(|g| g.id.as_str()).collect();
    (!has.is_empty() && has != wanted).then(|| {
        format!(
            "security groups {} are not EC2NodeClass {name}'s {}",
            has.into_iter().collect::<Vec<_>>().join(","),
            wanted.into_iter().collect::<Vec<_>>().join(",")
        )
    })
}

fn hash_hex(text: &str, bytes: usize) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(bytes).map(|b| format!("{b:02x}")).collect()
}

/// Labels that vary per offering (type, zone, ...) or that the kubelet may not set itself stay out of the
/// user data: the controller puts them on the Node when it registers.
fn bootstrap_label(key: &str) -> bool {
    let per_offering = [
        labels::INSTANCE_TYPE,
        labels::ZONE,
        labels::CAPACITY_TYPE,
        labels::ARCH,
        labels::OS,
        labels::HOSTNAME,
    ];
    !per_offering.contains(&key)
        && !key.starts_with("karpenter.k8s.aws/")
        && !key.starts_with("topology.kubernetes.io/")
        && !key.starts_with("node.kubernetes.io/")
}

fn block_devices(spec: &EC2NodeClassSpec, family: AmiFamily) -> Result<Vec<BlockDevice>, String> {
    if spec.block_device_mappings.is_empty() {
        let volume = |name: &str, gib| BlockDevice {
            device_name: name.into(),
            volume_size_gib: Some(gib),
            volume_type: Some("gp3".into()),
            encrypted: Some(true),
            delete_on_termination: Some(true),
            ..Default::default()
        };
        // Karpenter's defaults: one 20 GiB root volume; Bottlerocket a 4 GiB OS volume and a 20 GiB data volume.
        return Ok(match family {
            AmiFamily::Bottlerocket => vec![volume("/dev/xvda", 4), volume("/dev/xvdb", 20)],
            _ => vec![volume("/dev/xvda", 20)],
        });
    }
    spec.block_device_mappings
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("spec.blockDeviceMappings[{i}]");
            let device_name = m.device_name.clone().ok_or(format!("{field}.deviceName: required"))?;
            let ebs = m.ebs.clone().unwrap_or_default();
            let volume_size_gib = match &ebs.volume_size {
                Some(size) => {
                    let bytes = cartwright_binpack::quantity::parse_units(size)
                        .map_err(|e| format!("{field}.ebs.volumeSize: {e}"))?;
                    Some(
                        i32::try_from((bytes + (1 << 30) - 1) >> 30)
                            .map_err(|_| format!("{field}.ebs.volumeSize: too large"))?,
                    )
                }
                None => None,
            };
            let small = |v: Option<i64>, name: &str| {
                v.map(|n| i32::try_from(n).map_err(|_| format!("{field}.ebs.{name}: out of range")))
                    .transpose()
            };
            Ok(BlockDevice {
                device_name,
                volume_size_gib,
                volume_type: ebs.volume_type.clone(),
                iops: small(ebs.iops, "iops")?,
                throughput: small(ebs.throughput, "throughput")?,
                encrypted: ebs.encrypted,
                kms_key_id: ebs.kms_key_id.clone(),
                snapshot_id: ebs.snapshot_id.clone(),
                delete_on_termination: ebs.delete_on_termination,
            })
        })
        .collect()
}

fn metadata(spec: &EC2NodeClassSpec) -> MetadataSettings {
    let mut m = MetadataSettings::default();
    if let Some(o) = &spec.metadata_options {
        if let Some(v) = &o.http_endpoint {
            m.http_endpoint = v.clone();
        }
        if let Some(v) = &o.http_tokens {
            m.http_tokens = v.clone();
        }
        if let Some(v) = o.http_put_response_hop_limit {
            m.http_put_response_hop_limit = v.clamp(1, 64) as i32;
        }
        if let Some(v) = &o.http_protocol_ipv6 {
            m.http_protocol_ipv6 = v.clone();
        }
    }
    m
}

impl<A: Ec2Api, N: NodeClasses> AwsProvider<A, N> {
    pub fn new(
        api: Arc<A>,
        classes: N,
        settings: AwsSettings,
        catalog: watch::Receiver<Arc<Catalog>>,
    ) -> Self {
        AwsProvider {
            api,
            classes,
            settings,
            catalog,
            resolved: Mutex::new(BTreeMap::new()),
            templates: Mutex::new(BTreeMap::new()),
            template_ttl: TEMPLATE_TTL,
            interruptions: Mutex::new(Vec::new()),
        }
    }

    /// How long a launch template may go unused before it is deleted ([`TEMPLATE_TTL`] by default).
    pub fn with_template_ttl(mut self, ttl: Duration) -> Self {
        self.template_ttl = ttl;
        self
    }

    /// Queues interruption notices for the controller's next pass.
    pub fn push_interruptions(&self, notices: Vec<Interruption>) {
        self.interruptions.lock().unwrap().extend(notices);
    }

    pub fn api(&self) -> &Arc<A> {
        &self.api
    }

    /// The NodeClass resolved, reused for a minute unless its spec changed.
    pub async fn resolve(&self, name: &str, spec: &EC2NodeClassSpec) -> Result<Arc<Resolved>, Ec2Error> {
        let key = serde_json::to_string(spec).unwrap_or_default();
        if let Some((at, k, r)) = self.resolved.lock().unwrap().get(name)
            && *k == key
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(r.clone());
        }
        let mut r = nodeclass::resolve(self.api.as_ref(), spec, &self.settings.cluster).await?;
        if let (None, Some(role)) = (&spec.instance_profile, &spec.role) {
            match self.ensure_instance_profile(name, role).await {
                Ok(profile) => r.instance_profile = Some(profile),
                Err(e) => r.problems.push(nodeclass::Problem {
                    condition: "InstanceProfileReady",
                    message: format!("role {role}: making its instance profile failed: {e}"),
                }),
            }
        }
        let r = Arc::new(r);
        self.resolved.lock().unwrap().insert(name.to_owned(), (Instant::now(), key, r.clone()));
        Ok(r)
    }

    /// The instance profile Cartwright keeps for a NodeClass's `role` (Karpenter's behaviour): created
    /// under this cluster's IAM path and tagged for it, holding exactly that role.
    async fn ensure_instance_profile(&self, class: &str, role: &str) -> Result<String, Ec2Error> {
        let cluster = &self.settings.cluster;
        let name = instance_profile_name(cluster, class);
        // A role given as an ARN: IAM wants its name.
        let role = role.rsplit('/').next().unwrap_or(role);
        let roles = match self.api.get_instance_profile(&name).await? {
            Some(profile) => profile.roles,
            None => {
                let mut tags = Tags::new();
                tags.insert(TAG_CLUSTER.into(), cluster.name.clone());
                tags.insert(format!("kubernetes.io/cluster/{}", cluster.name), "owned".into());
                tags.insert(TAG_NODECLASS.into(), class.to_owned());
                self.api.create_instance_profile(&name, &profile_path(&cluster.name), &tags).await?;
                tracing::info!(nodeclass = class, instance_profile = name, "created the instance profile");
                Vec::new()
            }
        };
        if roles.iter().any(|r| r == role) {
            return Ok(name);
        }
        // One role per profile: a changed `role` replaces the old one.
        for old in &roles {
            self.api.remove_role_from_instance_profile(&name, old).await?;
        }
        self.api.add_role_to_instance_profile(&name, role).await?;
        tracing::info!(
            nodeclass = class,
            instance_profile = name,
            role,
            "the instance profile holds the role"
        );
        Ok(name)
    }

    /// Deletes the instance profiles made for NodeClasses that no longer exist or no longer use `role`,
    /// once no instance of this cluster was launched from that NodeClass. Returns the profiles deleted.
    pub async fn collect_instance_profiles(
        &self,
        using_role: &BTreeSet<String>,
    ) -> Result<Vec<String>, Ec2Error> {
        let cluster = &self.settings.cluster;
        let keep: BTreeSet<String> = using_role.iter().map(|c| instance_profile_name(cluster, c)).collect();
        let mut deleted = Vec::new();
        let mut instances: Option<Vec<Instance>> = None;
        for listed in self.api.list_instance_profiles(&profile_path(&cluster.name)).await? {
            if keep.contains(&listed.name) {
                continue;
            }
            // Only profiles this cluster made (the path is ours, the tags say so).
            let Some(profile) = self.api.get_instance_profile(&listed.name).await? else { continue };
            if profile.tags.get(TAG_CLUSTER) != Some(&cluster.name) {
                continue;
            }
            let class = profile.tags.get(TAG_NODECLASS).cloned().unwrap_or_default();
            if instances.is_none() {
                instances = Some(self.instances(None).await?);
            }
            let in_use = instances.iter().flatten().any(|i| i.tags.get(TAG_NODECLASS) == Some(&class));
            if in_use {
                continue;
            }
            for role in &profile.roles {
                self.api.remove_role_from_instance_profile(&profile.name, role).await?;
            }
            self.api.delete_instance_profile(&profile.name).await?;
            tracing::info!(
                instance_profile = profile.name,
                nodeclass = class,
                "deleted an unused instance profile"
            );
            deleted.push(profile.name);
        }
        Ok(deleted)
    }

    fn cluster_tags(&self, class: &EC2NodeClass) -> Tags {
        let mut tags = self.settings.tags.clone();
        tags.extend(class.spec.tags.clone());
        let cluster = &self.settings.cluster.name;
        tags.insert(TAG_CLUSTER.into(), cluster.clone());
        tags.insert(format!("kubernetes.io/cluster/{cluster}"), "owned".into());
        tags.insert(TAG_NODECLASS.into(), class.metadata.name.clone().unwrap_or_default());
        tags
    }

    /// The launch template for this class, AMI and bootstrap, created when missing.
    async fn template(
        &self,
        class: &EC2NodeClass,
        resolved: &Resolved,
        image: &Image,
        user_data: &str,
    ) -> Result<String, CloudError> {
        let spec = &class.spec;
        let devices = block_devices(spec, resolved.family).map_err(CloudError::Other)?;
        let mut template = LaunchTemplate {
            name: String::new(),
            image_id: image.id.clone(),
            user_data: userdata::encode(user_data),
            security_group_ids: resolved.security_groups.iter().map(|g| g.id.clone()).collect(),
            instance_profile: resolved.instance_profile.clone(),
            block_devices: devices,
            metadata: metadata(spec),
            associate_public_ip: spec.associate_public_ip_address,
            detailed_monitoring: spec.detailed_monitoring.unwrap_or(false),
            tags: self.cluster_tags(class),
        };
        template.name =
            format!("cartwright/{}/{}", self.settings.cluster.name, hash_hex(&format!("{template:?}"), 8));
        let now = Instant::now();
        if let Some(known) = self.templates.lock().unwrap().get_mut(&template.name)
            && known.checked.elapsed() < TEMPLATE_RECHECK
        {
            known.used = now;
            return Ok(template.name);
        }
        let existing =
            self.api.existing_launch_templates(std::slice::from_ref(&template.name)).await.map_err(other)?;
        if existing.is_empty() {
            self.api.create_launch_template(&template).await.map_err(other)?;
            tracing::info!(template = template.name, image = image.id, "created a launch template");
        }
        self.templates.lock().unwrap().insert(template.name.clone(), TemplateUse { checked: now, used: now });
        Ok(template.name)
    }

    /// Deletes this cluster's launch templates that no launch used for the template TTL. Templates made
    /// before this process started count as used when it first lists them.
    async fn collect_launch_templates(&self) -> Result<Vec<String>, Ec2Error> {
        let cluster = &self.settings.cluster.name;
        let prefix = format!("cartwright/{cluster}/");
        let listed = self.api.list_launch_templates(&[Filter::tag(TAG_CLUSTER, cluster)]).await?;
        let now = Instant::now();
        let stale: Vec<String> = {
            let mut known = self.templates.lock().unwrap();
            listed
                .into_iter()
                .filter(|name| name.starts_with(&prefix))
                .filter(|name| {
                    let seen = known.entry(name.clone()).or_insert(TemplateUse { checked: now, used: now });
                    seen.used.elapsed() >= self.template_ttl
                })
                .collect()
        };
        let mut deleted = Vec::new();
        for name in stale {
            self.templates.lock().unwrap().remove(&name);
            match self.api.delete_launch_template(&name).await {
                Ok(()) => {
                    tracing::info!(template = name, "deleted an unused launch template");
                    deleted.push(name);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// This cluster's live instances, or the one of a NodeClaim.
    async fn instances(&self, nodeclaim: Option<&str>) -> Result<Vec<Instance>, Ec2Error> {
        let mut filters = vec![
            Filter::tag(TAG_CLUSTER, &self.settings.cluster.name),
            Filter::new("instance-state-name", ["pending", "running", "stopping", "stopped"]),
        ];
        filters.push(match nodeclaim {
            Some(name) => Filter::tag(TAG_NODECLAIM, name),
            None => Filter::tag(TAG_NODECLAIM, "*"),
        });
        Ok(self.api.describe_instances(&filters).await?.into_iter().filter(Instance::is_live).collect())
    }

    fn launched(
        &self,
        id: &str,
        instance_type: &str,
        zone: &str,
        spot: bool,
        request: &LaunchRequest,
    ) -> Result<Launched, CloudError> {
        let capacity_type = if spot { CapacityType::Spot } else { CapacityType::OnDemand };
        let catalog = self.catalog.borrow().clone();
        let t = catalog.get(instance_type).ok_or_else(|| {
            CloudError::Other(format!("launched {instance_type}, which is not in the catalog"))
        })?;
        let option = request
            .options
            .iter()
            .find(|o| o.instance_type == instance_type && o.zone == zone && o.capacity_type == capacity_type)
            .cloned()
            .unwrap_or_else(|| LaunchOption {
                instance_type: instance_type.to_owned(),
                zone: zone.to_owned(),
                capacity_type,
                price: t
                    .offerings
                    .iter()
                    .find(|o| o.zone == zone && o.capacity_type == capacity_type)
                    .map(|o| o.price)
                    .unwrap_or_default(),
            });
        Ok(Launched {
            provider_id: format!("{SCHEME}{zone}/{id}"),
            option,
            capacity: t.capacity.clone(),
            allocatable: t.allocatable(),
        })
    }

    /// Writes what each NodeClass resolved to into its status (only when it changed).
    pub async fn reconcile_node_class(
        &self,
        client: &kube::Client,
        class: &EC2NodeClass,
    ) -> Result<(), String> {
        let name = class.metadata.name.clone().unwrap_or_default();
        let resolved = self.resolve(&name, &class.spec).await.map_err(|e| e.to_string())?;
        let status = crate::status::status(&resolved, class.status.as_ref(), class.metadata.generation);
        if class.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: kube::Api<EC2NodeClass> = kube::Api::all(client.clone());
        let patch = serde_json::json!({"status": status});
        api.patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(patch))
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl<A: Ec2Api + 'static, N: NodeClasses + 'static> CloudProvider for AwsProvider<A, N> {
    fn name(&self) -> &'static str {
        "aws"
    }

    async fn create(&self, request: &LaunchRequest) -> Result<Launched, CloudError> {
        // Launched before (a restart between CreateFleet and the NodeClaim's status): the same instance.
        if let Some(i) = self.instances(Some(&request.nodeclaim)).await.map_err(other)?.first() {
            return self.launched(&i.id, &i.instance_type, &i.zone, i.spot, request);
        }
        let class = self
            .classes
            .get(&request.node_class)
            .ok_or_else(|| CloudError::Other(format!("EC2NodeClass {} not found", request.node_class)))?;
        let resolved = self.resolve(&request.node_class, &class.spec).await.map_err(other)?;
        if !resolved.is_ready() {
            let problems: Vec<String> = resolved.problems.iter().map(|p| p.message.clone()).collect();
            return Err(CloudError::Other(format!(
                "EC2NodeClass {} is not ready: {}",
                request.node_class,
                problems.join("; ")
            )));
        }
        let first =
            request.options.first().ok_or_else(|| CloudError::Other("no launch option left".into()))?;
        let capacity_type = first.capacity_type;
        let bootstrap = NodeBootstrap {
            labels: request
                .labels
                .iter()
                .filter(|(k, _)| bootstrap_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            taints: request.taints.iter().chain(&request.startup_taints).cloned().collect(),
            kubelet: class.spec.kubelet.clone(),
            user_data: class.spec.user_data.clone(),
        };
        let user_data = userdata::render(resolved.family, &self.settings.cluster, &bootstrap)
            .map_err(|e| CloudError::Other(format!("EC2NodeClass {}: {e}", request.node_class)))?;
        let catalog = self.catalog.borrow().clone();
        let mut configs: BTreeMap<String, FleetConfig> = BTreeMap::new();
        let mut tried = Vec::new();
        let mut unplaceable = Vec::new();
        let mut templates: BTreeMap<String, String> = BTreeMap::new();
        for option in request.options.iter().filter(|o| o.capacity_type == capacity_type).take(MAX_OVERRIDES)
        {
            let arch = catalog
                .get(&option.instance_type)
                .and_then(|t| t.requirements.get(labels::ARCH)?.values()?.iter().next().cloned())
                .unwrap_or_else(|| "amd64".into());
            let (Some(image), Some(subnet)) = (resolved.ami_for(&arch), resolved.subnet_in(&option.zone))
            else {
                unplaceable.push(option.clone());
                continue;
            };
            // One template per AMI: built (hashed, looked up) once per launch, not once per offering.
            let template = match templates.get(&image.id) {
                Some(name) => name.clone(),
                None => {
                    let name = self.template(&class, &resolved, image, &user_data).await?;
                    templates.insert(image.id.clone(), name.clone());
                    name
                }
            };
            let rank = tried.len() as f64;
            configs
                .entry(template.clone())
                .or_insert_with(|| FleetConfig { launch_template: template, overrides: Vec::new() })
                .overrides
                .push(FleetOverride {
                    instance_type: option.instance_type.clone(),
                    subnet_id: subnet.id.clone(),
                    priority: rank,
                });
            tried.push((option.clone(), subnet.id.clone()));
        }
        if tried.is_empty() {
            // No subnet in the offerings' zones, or no AMI for their architecture: not launchable now.
            return Err(CloudError::InsufficientCapacity(unplaceable));
        }
        let mut tags = self.cluster_tags(&class);
        tags.insert(TAG_NODECLASS_HASH.into(), node_class_hash(&class.spec));
        tags.insert(TAG_NODECLAIM.into(), request.nodeclaim.clone());
        tags.insert(TAG_NODEPOOL.into(), request.nodepool.clone());
        tags.insert("Name".into(), request.nodeclaim.clone());
        // The same claim with the same overrides is one launch however often it is asked for.
        let overrides: Vec<String> = tried.iter().map(|(o, s)| format!("{}/{s}", o.instance_type)).collect();
        // A hex SHA-256 is 64 characters, CreateFleet's limit for client tokens.
        let client_token = hash_hex(&format!("{}/{}", request.nodeclaim, overrides.join(",")), 32);
        let fleet =
            FleetRequest { client_token, capacity_type, configs: configs.into_values().collect(), tags };
        let outcome = self.api.create_fleet(&fleet).await.map_err(other)?;
        if let Some(instance) = outcome.instances.first() {
            let zone = tried
                .iter()
                .find(|(_, s)| Some(s) == instance.subnet_id.as_ref())
                .map(|(o, _)| o.zone.clone())
                .unwrap_or_else(|| first.zone.clone());
            return self.launched(
                &instance.id,
                &instance.instance_type,
                &zone,
                capacity_type == CapacityType::Spot,
                request,
            );
        }
        let capacity_errors: Vec<&FleetError> =
            outcome.errors.iter().filter(|e| is_insufficient_capacity(&e.code)).collect();
        if !outcome.errors.is_empty() && capacity_errors.len() == outcome.errors.len() {
            let failed: Vec<LaunchOption> = tried
                .iter()
                .filter(|(o, s)| {
                    capacity_errors.iter().any(|e| {
                        e.instance_type.as_deref().is_none_or(|t| t == o.instance_type)
                            && e.subnet_id.as_ref().is_none_or(|es| es == s)
                    })
                })
                .map(|(o, _)| o.clone())
                .chain(unplaceable)
                .collect();
            return Err(CloudError::InsufficientCapacity(failed));
        }
        let reason = outcome
            .errors
            .iter()
            .find(|e| !is_insufficient_capacity(&e.code))
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_else(|| "CreateFleet launched nothing and said why not".into());
        Err(CloudError::Other(reason))
    }

    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        let id = instance_id(provider_id)
            .ok_or_else(|| CloudError::Other(format!("{provider_id} is not an EC2 providerID")))?;
        let found = self.api.describe_instances(&[Filter::new("instance-id", [id])]).await.map_err(other)?;
        if !found.iter().any(Instance::is_live) {
            return Err(CloudError::NotFound(provider_id.to_owned()));
        }
        match self.api.terminate_instances(&[id.to_owned()]).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Err(CloudError::NotFound(provider_id.to_owned())),
            Err(e) => Err(other(e)),
        }
    }

    fn take_interruptions(&self) -> Vec<Interruption> {
        std::mem::take(&mut *self.interruptions.lock().unwrap())
    }

    async fn collect_resources(&self) -> Result<Vec<String>, CloudError> {
        self.collect_launch_templates().await.map_err(other)
    }

    async fn list(&self) -> Result<Vec<Machine>, CloudError> {
        let instances = self.instances(None).await.map_err(other)?;
        // Each NodeClass the instances name, resolved once (from the cache when fresh) for drift.
        let mut classes: BTreeMap<String, Option<ClassResolution>> = BTreeMap::new();
        for name in instances.iter().filter_map(|i| i.tags.get(TAG_NODECLASS)) {
            if classes.contains_key(name) {
                continue;
            }
            let resolved = match self.classes.get(name) {
                Some(class) => match self.resolve(name, &class.spec).await {
                    Ok(r) => Some((class, r)),
                    Err(e) => {
                        tracing::warn!(nodeclass = name, error = %e, "resolving the NodeClass for drift failed");
                        None
                    }
                },
                None => None,
            };
            classes.insert(name.clone(), resolved);
        }
        Ok(instances
            .into_iter()
            .map(|i| {
                let drifted = i
                    .tags
                    .get(TAG_NODECLASS)
                    .and_then(|n| classes.get(n)?.as_ref())
                    .and_then(|(class, resolved)| drift(&i, class, resolved));
                Machine {
                    provider_id: format!("{SCHEME}{}/{}", i.zone, i.id),
                    nodeclaim: i.tags.get(TAG_NODECLAIM).cloned(),
                    created_ms: i.launch_time_ms.map(|t| t.max(0) as u64),
                    drifted,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeEc2;
    use cartwright_binpack::{CatalogOptions, Price};

    fn class(spec: EC2NodeClassSpec) -> Arc<EC2NodeClass> {
        let mut c = EC2NodeClass::new("default", spec);
        c.metadata.name = Some("default".into());
        Arc::new(c)
    }

    fn provider(fake: Arc<FakeEc2>) -> AwsProvider<FakeEc2, BTreeMap<String, Arc<EC2NodeClass>>> {
        let mut spec = crate::nodeclass::tests::spec();
        spec.ami_selector_terms[0].alias = Some("al2023@latest".into());
        let classes = [("default".to_owned(), class(spec))].into();
        let catalog = Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap();
        // The receiver keeps the last catalog after the sender is gone.
        let (_, receiver) = watch::channel(Arc::new(catalog));
        let settings = AwsSettings {
            cluster: crate::nodeclass::tests::cluster(),
            tags: [("env".to_owned(), "test".to_owned())].into(),
        };
        AwsProvider::new(fake, classes, settings, receiver)
    }

    fn option(t: &str, zone: &str, ct: CapacityType) -> LaunchOption {
        LaunchOption { instance_type: t.into(), zone: zone.into(), capacity_type: ct, price: Price(0) }
    }

    fn request(options: Vec<LaunchOption>) -> LaunchRequest {
        LaunchRequest {
            nodeclaim: "default-abc12".into(),
            nodepool: "default".into(),
            node_class: "default".into(),
            options,
            labels: [
                (labels::NODEPOOL.to_owned(), "default".to_owned()),
                (labels::INSTANCE_TYPE.to_owned(), "m5.large".to_owned()),
                ("team".to_owned(), "web".to_owned()),
            ]
            .into(),
            taints: vec![],
            startup_taints: vec![],
        }
    }

    #[tokio::test]
    async fn insufficient_capacity_names_the_offerings_and_the_next_launch_skips_them() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        fake.remove_capacity("m5.large", "us-east-1a", CapacityType::Spot);
        fake.remove_capacity("c5.large", "us-east-1b", CapacityType::Spot);
        let p = provider(fake.clone());
        let options = vec![
            option("m5.large", "us-east-1a", CapacityType::Spot),
            option("c5.large", "us-east-1b", CapacityType::Spot),
            option("m5.large", "us-east-1a", CapacityType::OnDemand),
        ];
        let err = p.create(&request(options.clone())).await.unwrap_err();
        // Only spot was tried (one capacity type per fleet); both spot offerings ran out.
        let CloudError::InsufficientCapacity(failed) = err else { panic!("{err:?}") };
        assert_eq!(failed, options[..2].to_vec());
        assert!(fake.instances().is_empty());
        // Re-planned without them (the controller marks them unavailable): on demand launches.
        let launched = p.create(&request(options[2..].to_vec())).await.unwrap();
        assert_eq!(launched.option, options[2]);
        assert_eq!(fake.instances().len(), 1);
        assert!(!fake.instances()[0].spot);
    }

    #[tokio::test]
    async fn spot_launches_the_most_preferred_offering_with_capacity() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        fake.remove_capacity("m5.large", "us-east-1a", CapacityType::Spot);
        let p = provider(fake.clone());
        let options = vec![
            option("m5.large", "us-east-1a", CapacityType::Spot),
            option("m6g.large", "us-east-1b", CapacityType::Spot),
        ];
        let launched = p.create(&request(options.clone())).await.unwrap();
        assert_eq!(launched.option, options[1]);
        assert!(launched.provider_id.starts_with("aws:///us-east-1b/i-"));
        let instance = &fake.instances()[0];
        assert!(instance.spot);
        assert_eq!(instance.image_id.as_deref(), Some("ami-arm"), "arm64 types launch the arm64 AMI");
        assert_eq!(instance.subnet_id.as_deref(), Some("subnet-b"));
        // One template per AMI: the x86_64 and arm64 overrides went in separate configs.
        let templates = fake.templates();
        assert_eq!(templates.len(), 2);
        assert!(templates.iter().all(|t| t.tags.get(TAG_CLUSTER).map(String::as_str) == Some("prod")));
        assert!(templates.iter().all(|t| t.tags.get("env").map(String::as_str) == Some("test")));
        let tags = &instance.tags;
        assert_eq!(tags.get(TAG_NODECLAIM).map(String::as_str), Some("default-abc12"));
        assert_eq!(tags.get(TAG_NODEPOOL).map(String::as_str), Some("default"));
        // The user data carries the pool's labels but not the per-offering ones.
        let user_data =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &templates[0].user_data)
                .unwrap();
        let user_data = String::from_utf8(user_data).unwrap();
        assert!(user_data.contains("--node-labels=karpenter.sh/nodepool=default,team=web"), "{user_data}");
    }

    #[tokio::test]
    async fn a_throttled_launch_fails_and_the_retry_launches_once() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        fake.fail_next("CreateFleet", Ec2Error::new("RequestLimitExceeded", "Request limit exceeded."));
        let p = provider(fake.clone());
        let r = request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)]);
        let err = p.create(&r).await.unwrap_err();
        assert_eq!(err, CloudError::Other("RequestLimitExceeded: Request limit exceeded.".into()));
        let first = p.create(&r).await.unwrap();
        let second = p.create(&r).await.unwrap();
        assert_eq!(first.provider_id, second.provider_id);
        assert_eq!(fake.instances().len(), 1);
        assert_eq!(fake.count("CreateFleet"), 2, "the third call found the instance by its tag");
        assert_eq!(fake.count("CreateLaunchTemplate"), 1, "the template is created once");
    }

    #[tokio::test]
    async fn offerings_without_a_subnet_are_not_launchable() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        let p = provider(fake.clone());
        let options = vec![option("m5.large", "us-east-1d", CapacityType::OnDemand)];
        assert_eq!(p.create(&request(options.clone())).await, Err(CloudError::InsufficientCapacity(options)));
        assert_eq!(fake.count("CreateFleet"), 0);
    }

    #[tokio::test]
    async fn list_and_delete_cover_this_clusters_instances_only() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        let p = provider(fake.clone());
        let launched =
            p.create(&request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)])).await.unwrap();
        fake.add_instance(Instance {
            id: "i-other".into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            state: "running".into(),
            launch_time_ms: Some(0),
            spot: false,
            image_id: None,
            subnet_id: None,
            security_group_ids: vec![],
            tags: [
                (TAG_CLUSTER.to_owned(), "staging".to_owned()),
                (TAG_NODECLAIM.to_owned(), "x".to_owned()),
            ]
            .into(),
        });
        let machines = p.list().await.unwrap();
        assert_eq!(machines.len(), 1);
        assert_eq!(machines[0].provider_id, launched.provider_id);
        p.delete(&launched.provider_id).await.unwrap();
        assert!(p.list().await.unwrap().is_empty());
        assert_eq!(
            p.delete(&launched.provider_id).await,
            Err(CloudError::NotFound(launched.provider_id.clone()))
        );
        assert!(matches!(p.delete("kwok://x").await, Err(CloudError::Other(_))));
    }

    fn with_class(
        fake: Arc<FakeEc2>,
        edit: impl FnOnce(&mut EC2NodeClassSpec),
    ) -> AwsProvider<FakeEc2, BTreeMap<String, Arc<EC2NodeClass>>> {
        let mut p = provider(fake);
        let mut spec = p.classes["default"].spec.clone();
        edit(&mut spec);
        p.classes.insert("default".into(), class(spec));
        p
    }

    #[tokio::test]
    async fn listing_reports_instances_whose_ami_security_groups_or_class_drifted() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        let p = provider(fake.clone());
        p.create(&request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)])).await.unwrap();
        let machines = p.list().await.unwrap();
        assert_eq!(machines[0].drifted, None, "launched from what the class selects now");

        // A new AMI release behind al2023@latest: the instance runs an AMI no longer selected.
        fake.add_image(Image {
            id: "ami-newer".into(),
            name: "al2023-ami-newer".into(),
            architecture: "x86_64".into(),
            creation_date: "2026-09-01T00:00:00.000Z".into(),
            tags: BTreeMap::new(),
        });
        let root = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023";
        fake.put_parameter(&format!("{root}/x86_64/standard/recommended/image_id"), "ami-newer");
        let machines = provider(fake.clone()).list().await.unwrap();
        assert_eq!(
            machines[0].drifted.as_deref(),
            Some("AMI ami-new is no longer selected by EC2NodeClass default")
        );
        // The parameter back on the AMI it runs: no drift.
        fake.put_parameter(&format!("{root}/x86_64/standard/recommended/image_id"), "ami-new");
        assert_eq!(provider(fake.clone()).list().await.unwrap()[0].drifted, None);

        // Another security group selected: the instance's set differs.
        fake.add_security_group(SecurityGroup {
            id: "sg-2".into(),
            name: "more".into(),
            tags: [("karpenter.sh/discovery".to_owned(), "prod".to_owned())].into(),
        });
        assert_eq!(
            provider(fake.clone()).list().await.unwrap()[0].drifted.as_deref(),
            Some("security groups sg-1 are not EC2NodeClass default's sg-1,sg-2")
        );

        // A field the instance keeps for life (its tags): drifted whatever the selectors say.
        let retagged = with_class(fake, |s| {
            s.tags.insert("team".into(), "platform".into());
        });
        assert_eq!(
            retagged.list().await.unwrap()[0].drifted.as_deref(),
            Some("EC2NodeClass default changed since launch")
        );
    }

    #[tokio::test]
    async fn a_role_gets_an_instance_profile_that_follows_it_and_goes_when_unused() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        let p = with_class(fake.clone(), |s| {
            s.instance_profile = None;
            s.role = Some("arn:aws:iam::111122223333:role/nodes/NodeRole-prod".into());
        });
        let class = p.classes["default"].clone();
        let resolved = p.resolve("default", &class.spec).await.unwrap();
        assert!(resolved.is_ready(), "{:?}", resolved.problems);
        let name = resolved.instance_profile.clone().unwrap();
        assert!(name.starts_with("prod_") && name.len() == "prod_".len() + 16, "{name}");
        let profiles = fake.instance_profiles();
        let profile = &profiles[&name];
        assert_eq!(profile.path, "/cartwright/prod/");
        assert_eq!(profile.roles, ["NodeRole-prod"], "the role's name, from its ARN");
        assert_eq!(profile.tags.get(TAG_CLUSTER).map(String::as_str), Some("prod"));
        assert_eq!(profile.tags.get(TAG_NODECLASS).map(String::as_str), Some("default"));
        // The launch template names it.
        let launched =
            p.create(&request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)])).await.unwrap();
        let templates = fake.templates();
        assert!(
            templates.iter().all(|t| t.instance_profile.as_deref() == Some(name.as_str())),
            "{templates:?}"
        );

        // Resolving again changes nothing; a new role replaces the old one in the same profile.
        let calls = fake.calls().len();
        let again = with_class(fake.clone(), |s| {
            s.instance_profile = None;
            s.role = Some("NodeRole-prod".into());
        });
        again.resolve("default", &again.classes["default"].spec).await.unwrap();
        assert!(
            !fake.calls()[calls..].iter().any(|c| c.contains("Create") || c.contains("Role")),
            "{:?}",
            &fake.calls()[calls..]
        );
        let renamed = with_class(fake.clone(), |s| {
            s.instance_profile = None;
            s.role = Some("NodeRole-prod-v2".into());
        });
        renamed.resolve("default", &renamed.classes["default"].spec).await.unwrap();
        assert_eq!(fake.instance_profiles()[&name].roles, ["NodeRole-prod-v2"]);

        // Kept while the class uses a role, or while an instance launched from it runs; then deleted.
        assert!(p.collect_instance_profiles(&["default".to_owned()].into()).await.unwrap().is_empty());
        assert!(
            p.collect_instance_profiles(&BTreeSet::new()).await.unwrap().is_empty(),
            "an instance uses it"
        );
        p.delete(&launched.provider_id).await.unwrap();
        assert_eq!(p.collect_instance_profiles(&BTreeSet::new()).await.unwrap(), [name]);
        assert!(fake.instance_profiles().is_empty());
    }

    #[tokio::test]
    async fn launch_templates_unused_for_their_ttl_are_deleted_and_made_again_when_needed() {
        let fake = Arc::new(crate::nodeclass::tests::seeded());
        let p = provider(fake.clone());
        p.create(&request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)])).await.unwrap();
        let made = fake.templates();
        assert_eq!(made.len(), 1);
        // Another cluster's template, and one not named by Cartwright, are never touched.
        let mut other = made[0].clone();
        other.name = "cartwright/staging/abc".into();
        other.tags.insert(TAG_CLUSTER.into(), "staging".into());
        fake.create_launch_template(&other).await.unwrap();
        let mut foreign = made[0].clone();
        foreign.name = "hand-made".into();
        fake.create_launch_template(&foreign).await.unwrap();

        assert!(p.collect_resources().await.unwrap().is_empty(), "used just now");
        let p = provider(fake.clone()).with_template_ttl(Duration::ZERO);
        // A process that never used it sees it first now; with no time to live it goes.
        assert_eq!(p.collect_resources().await.unwrap(), [made[0].name.clone()]);
        let left: Vec<String> = fake.templates().into_iter().map(|t| t.name).collect();
        assert_eq!(left, ["cartwright/staging/abc", "hand-made"]);
        // Needed again: made again.
        let mut again = request(vec![option("m5.large", "us-east-1a", CapacityType::OnDemand)]);
        again.nodeclaim = "default-def34".into();
        p.create(&again).await.unwrap();
        assert!(fake.templates().iter().any(|t| t.name == made[0].name));
    }

    #[test]
    fn block_devices_default_per_family_and_parse_sizes() {
        let spec = EC2NodeClassSpec::default();
        assert_eq!(block_devices(&spec, AmiFamily::Bottlerocket).unwrap().len(), 2);
        let spec: EC2NodeClassSpec = serde_json::from_value(serde_json::json!({
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "100Gi", "volumeType": "gp3", "iops": 3000}}]
        }))
        .unwrap();
        let d = block_devices(&spec, AmiFamily::Al2023).unwrap();
        assert_eq!(d[0].volume_size_gib, Some(100));
        assert_eq!(d[0].iops, Some(3000));
        let bad: EC2NodeClassSpec = serde_json::from_value(
            serde_json::json!({"blockDeviceMappings": [{"ebs": {"volumeSize": "1Ti"}}]}),
        )
        .unwrap();
        assert_eq!(
            block_devices(&bad, AmiFamily::Al2023).unwrap_err(),
            "spec.blockDeviceMappings[0].deviceName: required"
        );
    }

    #[test]
    fn provider_ids_name_their_instance() {
        assert_eq!(instance_id("aws:///us-east-1a/i-0abc"), Some("i-0abc"));
        assert_eq!(instance_id("kwok://node"), None);
        assert_eq!(instance_id("aws:///us-east-1a/vol-1"), None);
    }
}
