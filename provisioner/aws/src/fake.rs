//! An in-memory `Ec2Api` for tests: it records every call, answers from the resources put in it, launches
//! the most preferred override that has capacity, and injects what moto cannot produce (insufficient
//! capacity for chosen offerings, one-shot errors such as throttling).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cartwright_binpack::CapacityType;

use crate::api::*;

#[derive(Debug, Default)]
struct State {
    calls: Vec<String>,
    types: Vec<InstanceTypeInfo>,
    offerings: Vec<(String, String)>,
    spot_prices: Vec<SpotPrice>,
    on_demand_prices: BTreeMap<String, f64>,
    subnets: Vec<Subnet>,
    security_groups: Vec<SecurityGroup>,
    images: Vec<Image>,
    parameters: BTreeMap<String, String>,
    templates: BTreeMap<String, LaunchTemplate>,
    profiles: BTreeMap<String, InstanceProfile>,
    instances: Vec<Instance>,
    fleets: BTreeMap<String, FleetOutcome>,
    /// (type, zone, capacity type) without capacity.
    no_capacity: BTreeSet<(String, String, CapacityType)>,
    /// Errors returned once by the next call of an operation.
    fail_next: BTreeMap<String, Vec<Ec2Error>>,
    next_id: u64,
    now_ms: i64,
}

/// The fake. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct FakeEc2 {
    state: Mutex<State>,
}

fn matches(filters: &[Filter], attribute: impl Fn(&str) -> Vec<String>) -> bool {
    filters.iter().all(|f| {
        let have = attribute(&f.name);
        f.values.iter().any(|v| have.iter().any(|h| h == v || v == "*"))
    })
}

fn tag_attribute(tags: &Tags, name: &str) -> Option<Vec<String>> {
    if name == "tag-key" {
        return Some(tags.keys().cloned().collect());
    }
    name.strip_prefix("tag:").map(|k| tags.get(k).cloned().into_iter().collect())
}

impl FakeEc2 {
    pub fn new() -> FakeEc2 {
        FakeEc2::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Records the call and returns the injected error, if any.
    fn call(&self, op: &str) -> Result<(), Ec2Error> {
        self.with(|s| {
            s.calls.push(op.to_owned());
            match s.fail_next.get_mut(op) {
                Some(errors) if !errors.is_empty() => Err(errors.remove(0)),
                _ => Ok(()),
            }
        })
    }

    /// The operations called so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    pub fn count(&self, op: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|c| *c == op).count())
    }

    /// The next call of `op` fails with `error` (once).
    pub fn fail_next(&self, op: &str, error: Ec2Error) {
        self.with(|s| s.fail_next.entry(op.to_owned()).or_default().push(error));
    }

    /// CreateFleet finds no capacity for this offering until `restore_capacity`.
    pub fn remove_capacity(&self, instance_type: &str, zone: &str, capacity_type: CapacityType) {
        self.with(|s| s.no_capacity.insert((instance_type.into(), zone.into(), capacity_type)));
    }

    pub fn restore_capacity(&self) {
        self.with(|s| s.no_capacity.clear());
    }

    pub fn add_instance_type(&self, info: InstanceTypeInfo, zones: &[&str]) {
        self.with(|s| {
            for z in zones {
                s.offerings.push((info.name.clone(), (*z).to_owned()));
            }
            s.types.push(info);
        });
    }

    pub fn add_spot_price(&self, instance_type: &str, zone: &str, price_per_hour: f64) {
        self.with(|s| {
            s.spot_prices.push(SpotPrice {
                instance_type: instance_type.into(),
                zone: zone.into(),
                price_per_hour,
            })
        });
    }

    /// A Price List on-demand price (none by default: discovery then uses the embedded table).
    pub fn add_on_demand_price(&self, instance_type: &str, price_per_hour: f64) {
        self.with(|s| s.on_demand_prices.insert(instance_type.into(), price_per_hour));
    }

    pub fn add_subnet(&self, subnet: Subnet) {
        self.with(|s| s.subnets.push(subnet));
    }

    pub fn add_security_group(&self, group: SecurityGroup) {
        self.with(|s| s.security_groups.push(group));
    }

    /// The instance profiles, by name.
    pub fn instance_profiles(&self) -> BTreeMap<String, InstanceProfile> {
        self.with(|s| s.profiles.clone())
    }

    pub fn add_image(&self, image: Image) {
        self.with(|s| s.images.push(image));
    }

    pub fn put_parameter(&self, name: &str, value: &str) {
        self.with(|s| s.parameters.insert(name.into(), value.into()));
    }

    /// Starts an instance outside the provider (a leak to collect, say).
    pub fn add_instance(&self, instance: Instance) {
        self.with(|s| s.instances.push(instance));
    }

    pub fn set_now_ms(&self, now_ms: i64) {
        self.with(|s| s.now_ms = now_ms);
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.with(|s| s.instances.clone())
    }

    pub fn templates(&self) -> Vec<LaunchTemplate> {
        self.with(|s| s.templates.values().cloned().collect())
    }

    fn zone_of(s: &State, subnet_id: &str) -> Option<String> {
        s.subnets.iter().find(|n| n.id == subnet_id).map(|n| n.zone.clone())
    }
}

impl Ec2Api for FakeEc2 {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        self.call("DescribeInstanceTypes")?;
        Ok(self.with(|s| s.types.clone()))
    }

    async fn describe_instance_type_offerings(&self) -> Result<Vec<(String, String)>, Ec2Error> {
        self.call("DescribeInstanceTypeOfferings")?;
        Ok(self.with(|s| s.offerings.clone()))
    }

    async fn describe_spot_prices(&self) -> Result<Vec<SpotPrice>, Ec2Error> {
        self.call("DescribeSpotPriceHistory")?;
        Ok(self.with(|s| s.spot_prices.clone()))
    }

    async fn on_demand_prices(&self, _region: &str) -> Result<BTreeMap<String, f64>, Ec2Error> {
        self.call("GetProducts")?;
        Ok(self.with(|s| s.on_demand_prices.clone()))
    }

    async fn describe_subnets(&self, filters: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        self.call("DescribeSubnets")?;
        Ok(self.with(|s| {
            s.subnets
                .iter()
                .filter(|n| {
                    matches(filters, |name| match name {
                        "subnet-id" => vec![n.id.clone()],
                        "availability-zone" => vec![n.zone.clone()],
                        other => tag_attribute(&n.tags, other).unwrap_or_default(),
                    })
                })
                .cloned()
                .collect()
        }))
    }

    async fn describe_security_groups(&self, filters: &[Filter]) -> Result<Vec<SecurityGroup>, Ec2Error> {
        self.call("DescribeSecurityGroups")?;
        Ok(self.with(|s| {
            s.security_groups
                .iter()
                .filter(|g| {
                    matches(filters, |name| match name {
                        "group-id" => vec![g.id.clone()],
                        "group-name" => vec![g.name.clone()],
                        other => tag_attribute(&g.tags, other).unwrap_or_default(),
                    })
                })
                .cloned()
                .collect()
        }))
    }

    async fn describe_images(&self, filters: &[Filter], _owners: &[String]) -> Result<Vec<Image>, Ec2Error> {
        self.call("DescribeImages")?;
        Ok(self.with(|s| {
            s.images
                .iter()
                .filter(|i| {
                    matches(filters, |name| match name {
                        "image-id" => vec![i.id.clone()],
                        "name" => vec![i.name.clone()],
                        "architecture" => vec![i.architecture.clone()],
                        other => tag_attribute(&i.tags, other).unwrap_or_default(),
                    })
                })
                .cloned()
                .collect()
        }))
    }

    async fn get_parameter(&self, name: &str) -> Result<Option<String>, Ec2Error> {
        self.call("GetParameter")?;
        Ok(self.with(|s| s.parameters.get(name).cloned()))
    }

    async fn existing_launch_templates(&self, names: &[String]) -> Result<Vec<String>, Ec2Error> {
        self.call("DescribeLaunchTemplates")?;
        Ok(self.with(|s| names.iter().filter(|n| s.templates.contains_key(*n)).cloned().collect()))
    }

    async fn list_launch_templates(&self, filters: &[Filter]) -> Result<Vec<String>, Ec2Error> {
        self.call("DescribeLaunchTemplates")?;
        Ok(self.with(|s| {
            s.templates
                .values()
                .filter(|t| {
                    matches(filters, |name| {
                        tag_attribute(&t.tags, name).unwrap_or_else(|| {
                            if name == "launch-template-name" { vec![t.name.clone()] } else { vec![] }
                        })
                    })
                })
                .map(|t| t.name.clone())
                .collect()
        }))
    }

    async fn delete_launch_template(&self, name: &str) -> Result<(), Ec2Error> {
        self.call("DeleteLaunchTemplate")?;
        self.with(|s| match s.templates.remove(name) {
            Some(_) => Ok(()),
            None => Err(Ec2Error::new(
                "InvalidLaunchTemplateName.NotFoundException",
                format!("no template {name}"),
            )),
        })
    }

    async fn create_launch_template(&self, template: &LaunchTemplate) -> Result<(), Ec2Error> {
        self.call("CreateLaunchTemplate")?;
        self.with(|s| {
            if s.templates.contains_key(&template.name) {
                return Err(Ec2Error::new(
                    "InvalidLaunchTemplateName.AlreadyExistsException",
                    format!("{} already exists", template.name),
                ));
            }
            s.templates.insert(template.name.clone(), template.clone());
            Ok(())
        })
    }

    async fn create_fleet(&self, request: &FleetRequest) -> Result<FleetOutcome, Ec2Error> {
        self.call("CreateFleet")?;
        self.with(|s| {
            if let Some(done) = s.fleets.get(&request.client_token) {
                return Ok(done.clone());
            }
            let mut candidates: Vec<(&FleetConfig, &FleetOverride)> =
                request.configs.iter().flat_map(|c| c.overrides.iter().map(move |o| (c, o))).collect();
            candidates.sort_by(|a, b| a.1.priority.total_cmp(&b.1.priority));
            let mut outcome = FleetOutcome::default();
            for (config, o) in candidates {
                let Some(template) = s.templates.get(&config.launch_template).cloned() else {
                    return Err(Ec2Error::new(
                        "InvalidLaunchTemplateName.NotFoundException",
                        format!("no launch template {}", config.launch_template),
                    ));
                };
                let Some(zone) = Self::zone_of(s, &o.subnet_id) else {
                    return Err(Ec2Error::new(
                        "InvalidSubnetID.NotFound",
                        format!("no subnet {}", o.subnet_id),
                    ));
                };
                if s.no_capacity.contains(&(o.instance_type.clone(), zone.clone(), request.capacity_type)) {
                    outcome.errors.push(FleetError {
                        code: "InsufficientInstanceCapacity".into(),
                        message: format!(
                            "no {} capacity for {} in {zone}",
                            request.capacity_type.as_str(),
                            o.instance_type
                        ),
                        instance_type: Some(o.instance_type.clone()),
                        subnet_id: Some(o.subnet_id.clone()),
                    });
                    continue;
                }
                s.next_id += 1;
                let id = format!("i-{:017x}", s.next_id);
                let mut tags = template.tags.clone();
                tags.extend(request.tags.clone());
                s.instances.push(Instance {
                    id: id.clone(),
                    instance_type: o.instance_type.clone(),
                    zone,
                    state: "pending".into(),
                    launch_time_ms: Some(s.now_ms),
                    spot: request.capacity_type == CapacityType::Spot,
                    image_id: Some(template.image_id.clone()),
                    subnet_id: Some(o.subnet_id.clone()),
                    security_group_ids: template.security_group_ids.clone(),
                    tags,
                });
                outcome.instances.push(FleetInstance {
                    id,
                    instance_type: o.instance_type.clone(),
                    subnet_id: Some(o.subnet_id.clone()),
                });
                break;
            }
            s.fleets.insert(request.client_token.clone(), outcome.clone());
            Ok(outcome)
        })
    }

    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>, Ec2Error> {
        self.call("DescribeInstances")?;
        Ok(self.with(|s| {
            s.instances
                .iter()
                .filter(|i| {
                    matches(filters, |name| match name {
                        "instance-id" => vec![i.id.clone()],
                        "instance-state-name" => vec![i.state.clone()],
                        other => tag_attribute(&i.tags, other).unwrap_or_default(),
                    })
                })
                .cloned()
                .collect()
        }))
    }

    async fn terminate_instances(&self, ids: &[String]) -> Result<(), Ec2Error> {
        self.call("TerminateInstances")?;
        self.with(|s| {
            for id in ids {
                let Some(i) = s.instances.iter_mut().find(|i| &i.id == id) else {
                    return Err(Ec2Error::new("InvalidInstanceID.NotFound", format!("no instance {id}")));
                };
                i.state = "terminated".into();
            }
            Ok(())
        })
    }

    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, Ec2Error> {
        self.call("GetInstanceProfile")?;
        Ok(self.with(|s| s.profiles.get(name).cloned()))
    }

    async fn list_instance_profiles(&self, path_prefix: &str) -> Result<Vec<InstanceProfile>, Ec2Error> {
        self.call("ListInstanceProfiles")?;
        Ok(self.with(|s| {
            s.profiles
                .values()
                .filter(|p| p.path.starts_with(path_prefix))
                .map(|p| InstanceProfile { tags: Tags::new(), ..p.clone() })
                .collect()
        }))
    }

    async fn create_instance_profile(&self, name: &str, path: &str, tags: &Tags) -> Result<(), Ec2Error> {
        self.call("CreateInstanceProfile")?;
        self.with(|s| {
            if s.profiles.contains_key(name) {
                return Err(Ec2Error::new("EntityAlreadyExists", format!("instance profile {name} exists")));
            }
            let profile =
                InstanceProfile { name: name.into(), path: path.into(), roles: vec![], tags: tags.clone() };
            s.profiles.insert(name.into(), profile);
            Ok(())
        })
    }

    async fn add_role_to_instance_profile(&self, profile: &str, role: &str) -> Result<(), Ec2Error> {
        self.call("AddRoleToInstanceProfile")?;
        self.with(|s| {
            let p = s.profiles.get_mut(profile).ok_or_else(|| no_profile(profile))?;
            if !p.roles.is_empty() {
                // IAM allows one role per instance profile.
                return Err(Ec2Error::new("LimitExceeded", format!("{profile} already holds a role")));
            }
            p.roles.push(role.into());
            Ok(())
        })
    }

    async fn remove_role_from_instance_profile(&self, profile: &str, role: &str) -> Result<(), Ec2Error> {
        self.call("RemoveRoleFromInstanceProfile")?;
        self.with(|s| {
            let p = s.profiles.get_mut(profile).ok_or_else(|| no_profile(profile))?;
            p.roles.retain(|r| r != role);
            Ok(())
        })
    }

    async fn delete_instance_profile(&self, name: &str) -> Result<(), Ec2Error> {
        self.call("DeleteInstanceProfile")?;
        self.with(|s| {
            let p = s.profiles.get(name).ok_or_else(|| no_profile(name))?;
            if !p.roles.is_empty() {
                return Err(Ec2Error::new("DeleteConflict", format!("{name} still holds a role")));
            }
            s.profiles.remove(name);
            Ok(())
        })
    }
}

fn no_profile(name: &str) -> Ec2Error {
    Ec2Error::new("NoSuchEntity", format!("instance profile {name} not found"))
}
