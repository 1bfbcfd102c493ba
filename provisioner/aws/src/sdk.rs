//! `Ec2Api` over the AWS SDK (EC2 and SSM). Throttling and transient errors are retried by the SDK's
//! standard retry strategy (exponential backoff with jitter); what still fails comes back as an `Ec2Error`.

use std::collections::BTreeMap;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types as ec2;

use crate::api::*;
use cartwright_binpack::CapacityType;

/// The EC2 and SSM clients of one region.
#[derive(Clone, Debug)]
pub struct SdkEc2 {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    iam: aws_sdk_iam::Client,
    pricing: aws_sdk_pricing::Client,
}

impl SdkEc2 {
    pub fn new(config: &aws_config::SdkConfig) -> SdkEc2 {
        SdkEc2 {
            ec2: aws_sdk_ec2::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            pricing: pricing_client(config),
        }
    }

    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.ec2
    }
}

/// The Price List API answers in a few regions only: the client goes to the one serving the config's region
/// (an endpoint override, such as a test server, still applies).
fn pricing_client(config: &aws_config::SdkConfig) -> aws_sdk_pricing::Client {
    let region = config.region().map(|r| r.as_ref().to_owned()).unwrap_or_default();
    let pricing = aws_sdk_pricing::config::Builder::from(config)
        .region(aws_sdk_pricing::config::Region::new(crate::pricing::endpoint_region(&region)))
        .build();
    aws_sdk_pricing::Client::from_conf(pricing)
}

fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(e: E) -> Ec2Error {
    let message = e.message().map(str::to_owned).unwrap_or_else(|| {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    });
    Ec2Error { code: e.code().map(str::to_owned), message }
}

fn filters(filters: &[Filter]) -> Option<Vec<ec2::Filter>> {
    Some(
        filters
            .iter()
            .map(|f| ec2::Filter::builder().name(&f.name).set_values(Some(f.values.clone())).build())
            .collect(),
    )
}

fn tags(tags: Option<&[ec2::Tag]>) -> Tags {
    tags.unwrap_or_default()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .collect()
}

fn tag_specification(resource: ec2::ResourceType, tags: &Tags) -> ec2::TagSpecification {
    ec2::TagSpecification::builder()
        .resource_type(resource)
        .set_tags(Some(tags.iter().map(|(k, v)| ec2::Tag::builder().key(k).value(v).build()).collect()))
        .build()
}

fn template_tag_specification(
    resource: ec2::ResourceType,
    tags: &Tags,
) -> ec2::LaunchTemplateTagSpecificationRequest {
    ec2::LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(resource)
        .set_tags(Some(tags.iter().map(|(k, v)| ec2::Tag::builder().key(k).value(v).build()).collect()))
        .build()
}

impl Ec2Api for SdkEc2 {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let types: Vec<ec2::InstanceTypeInfo> = self
            .ec2
            .describe_instance_types()
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(types
            .iter()
            .filter_map(|t| {
                Some(InstanceTypeInfo {
                    name: t.instance_type()?.as_str().to_owned(),
                    vcpu: t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0) as u32,
                    memory_mib: t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0) as u64,
                    architectures: t
                        .processor_info()
                        .map(|p| p.supported_architectures().iter().map(|a| a.as_str().to_owned()).collect())
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn describe_instance_type_offerings(&self) -> Result<Vec<(String, String)>, Ec2Error> {
        let offerings: Vec<ec2::InstanceTypeOffering> = self
            .ec2
            .describe_instance_type_offerings()
            .location_type(ec2::LocationType::AvailabilityZone)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(offerings
            .iter()
            .filter_map(|o| Some((o.instance_type()?.as_str().to_owned(), o.location()?.to_owned())))
            .collect())
    }

    async fn describe_spot_prices(&self) -> Result<Vec<SpotPrice>, Ec2Error> {
        // With a start time of now, EC2 returns the price in effect now for every (type, zone).
        let now = DateTime::from_secs(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        let history: Vec<ec2::SpotPrice> = self
            .ec2
            .describe_spot_price_history()
            .product_descriptions("Linux/UNIX")
            .start_time(now)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(history
            .iter()
            .filter_map(|p| {
                Some(SpotPrice {
                    instance_type: p.instance_type()?.as_str().to_owned(),
                    zone: p.availability_zone()?.to_owned(),
                    price_per_hour: p.spot_price()?.parse().ok()?,
                })
            })
            .collect())
    }

    async fn on_demand_prices(&self, region: &str) -> Result<BTreeMap<String, f64>, Ec2Error> {
        use aws_sdk_pricing::types::{Filter as PriceFilter, FilterType};
        let filters = crate::pricing::filters(region)
            .into_iter()
            .map(|(field, value)| {
                PriceFilter::builder().r#type(FilterType::TermMatch).field(field).value(value).build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Ec2Error { code: None, message: e.to_string() })?;
        let documents: Vec<String> = self
            .pricing
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        crate::pricing::on_demand_prices(documents.iter().map(String::as_str))
            .map_err(|message| Ec2Error { code: None, message })
    }

    async fn describe_subnets(&self, f: &[Filter]) -> Result<Vec<Subnet>, Ec2Error> {
        let subnets: Vec<ec2::Subnet> = self
            .ec2
            .describe_subnets()
            .set_filters(filters(f))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(subnets
            .iter()
            .filter_map(|s| {
                Some(Subnet {
                    id: s.subnet_id()?.to_owned(),
                    zone: s.availability_zone()?.to_owned(),
                    zone_id: s.availability_zone_id().map(str::to_owned),
                    available_ips: i64::from(s.available_ip_address_count().unwrap_or(0)),
                    tags: tags(Some(s.tags())),
                })
            })
            .collect())
    }

    async fn describe_security_groups(&self, f: &[Filter]) -> Result<Vec<SecurityGroup>, Ec2Error> {
        let groups: Vec<ec2::SecurityGroup> = self
            .ec2
            .describe_security_groups()
            .set_filters(filters(f))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(groups
            .iter()
            .filter_map(|g| {
                Some(SecurityGroup {
                    id: g.group_id()?.to_owned(),
                    name: g.group_name().unwrap_or_default().to_owned(),
                    tags: tags(Some(g.tags())),
                })
            })
            .collect())
    }

    async fn describe_images(&self, f: &[Filter], owners: &[String]) -> Result<Vec<Image>, Ec2Error> {
        let out = self
            .ec2
            .describe_images()
            .set_filters(filters(f))
            .set_owners((!owners.is_empty()).then(|| owners.to_vec()))
            .send()
            .await
            .map_err(error)?;
        Ok(out
            .images()
            .iter()
            .filter_map(|i| {
                Some(Image {
                    id: i.image_id()?.to_owned(),
                    name: i.name().unwrap_or_default().to_owned(),
                    architecture: i.architecture().map(|a| a.as_str().to_owned()).unwrap_or_default(),
                    creation_date: i.creation_date().unwrap_or_default().to_owned(),
                    tags: tags(Some(i.tags())),
                })
            })
            .collect())
    }

    async fn get_parameter(&self, name: &str) -> Result<Option<String>, Ec2Error> {
        match self.ssm.get_parameter().name(name).send().await {
            Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_owned)),
            Err(e) => {
                let e = error(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn existing_launch_templates(&self, names: &[String]) -> Result<Vec<String>, Ec2Error> {
        let templates: Vec<ec2::LaunchTemplate> = self
            .ec2
            .describe_launch_templates()
            .filters(
                ec2::Filter::builder().name("launch-template-name").set_values(Some(names.to_vec())).build(),
            )
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(templates.iter().filter_map(|t| t.launch_template_name().map(str::to_owned)).collect())
    }

    async fn list_launch_templates(&self, f: &[Filter]) -> Result<Vec<String>, Ec2Error> {
        let templates: Vec<ec2::LaunchTemplate> = self
            .ec2
            .describe_launch_templates()
            .set_filters(filters(f))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(templates.iter().filter_map(|t| t.launch_template_name().map(str::to_owned)).collect())
    }

    async fn delete_launch_template(&self, name: &str) -> Result<(), Ec2Error> {
        self.ec2.delete_launch_template().launch_template_name(name).send().await.map_err(error)?;
        Ok(())
    }

    async fn create_launch_template(&self, t: &LaunchTemplate) -> Result<(), Ec2Error> {
        let metadata = ec2::LaunchTemplateInstanceMetadataOptionsRequest::builder()
            .http_endpoint(ec2::LaunchTemplateInstanceMetadataEndpointState::from(
                t.metadata.http_endpoint.as_str(),
            ))
            .http_tokens(ec2::LaunchTemplateHttpTokensState::from(t.metadata.http_tokens.as_str()))
            .http_put_response_hop_limit(t.metadata.http_put_response_hop_limit)
            .http_protocol_ipv6(ec2::LaunchTemplateInstanceMetadataProtocolIpv6::from(
                t.metadata.http_protocol_ipv6.as_str(),
            ))
            .build();
        let devices = t
            .block_devices
            .iter()
            .map(|d| {
                ec2::LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(&d.device_name)
                    .ebs(
                        ec2::LaunchTemplateEbsBlockDeviceRequest::builder()
                            .set_volume_size(d.volume_size_gib)
                            .set_volume_type(d.volume_type.as_deref().map(ec2::VolumeType::from))
                            .set_iops(d.iops)
                            .set_throughput(d.throughput)
                            .set_encrypted(d.encrypted)
                            .set_kms_key_id(d.kms_key_id.clone())
                            .set_snapshot_id(d.snapshot_id.clone())
                            .set_delete_on_termination(d.delete_on_termination)
                            .build(),
                    )
                    .build()
            })
            .collect();
        let mut data = ec2::RequestLaunchTemplateData::builder()
            .image_id(&t.image_id)
            .user_data(&t.user_data)
            .set_block_device_mappings(Some(devices))
            .metadata_options(metadata)
            .monitoring(
                ec2::LaunchTemplatesMonitoringRequest::builder().enabled(t.detailed_monitoring).build(),
            )
            .tag_specifications(template_tag_specification(ec2::ResourceType::Instance, &t.tags))
            .tag_specifications(template_tag_specification(ec2::ResourceType::Volume, &t.tags));
        if let Some(profile) = &t.instance_profile {
            data = data.iam_instance_profile(
                ec2::LaunchTemplateIamInstanceProfileSpecificationRequest::builder().name(profile).build(),
            );
        }
        data = match t.associate_public_ip {
            // A public-IP choice lives on the network interface, which then carries the security groups.
            Some(public) => data.network_interfaces(
                ec2::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(public)
                    .set_groups(Some(t.security_group_ids.clone()))
                    .build(),
            ),
            None => data.set_security_group_ids(Some(t.security_group_ids.clone())),
        };
        match self
            .ec2
            .create_launch_template()
            .launch_template_name(&t.name)
            .launch_template_data(data.build())
            .tag_specifications(tag_specification(ec2::ResourceType::LaunchTemplate, &t.tags))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = error(e);
                // Created by an earlier pass or another replica: templates are named by their content.
                if e.code.as_deref().is_some_and(|c| c.contains("AlreadyExists")) { Ok(()) } else { Err(e) }
            }
        }
    }

    async fn create_fleet(&self, request: &FleetRequest) -> Result<FleetOutcome, Ec2Error> {
        let capacity = match request.capacity_type {
            CapacityType::Spot => ec2::DefaultTargetCapacityType::Spot,
            CapacityType::OnDemand => ec2::DefaultTargetCapacityType::OnDemand,
            CapacityType::Reserved => {
                return Err(Ec2Error::new(
                    "Unsupported",
                    "launching into capacity reservations is not supported yet",
                ));
            }
        };
        let target = ec2::TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(1)
            .default_target_capacity_type(capacity)
            .build();
        let configs = request
            .configs
            .iter()
            .map(|c| {
                ec2::FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        ec2::FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(&c.launch_template)
                            .version("$Latest")
                            .build(),
                    )
                    .set_overrides(Some(
                        c.overrides
                            .iter()
                            .map(|o| {
                                ec2::FleetLaunchTemplateOverridesRequest::builder()
                                    .instance_type(ec2::InstanceType::from(o.instance_type.as_str()))
                                    .subnet_id(&o.subnet_id)
                                    .priority(o.priority)
                                    .build()
                            })
                            .collect(),
                    ))
                    .build()
            })
            .collect();
        let out = self
            .ec2
            .create_fleet()
            .r#type(ec2::FleetType::Instant)
            .client_token(&request.client_token)
            .target_capacity_specification(target)
            .set_launch_template_configs(Some(configs))
            .spot_options(
                ec2::SpotOptionsRequest::builder()
                    .allocation_strategy(ec2::SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            )
            .on_demand_options(
                ec2::OnDemandOptionsRequest::builder()
                    .allocation_strategy(ec2::FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            )
            .tag_specifications(tag_specification(ec2::ResourceType::Instance, &request.tags))
            .tag_specifications(tag_specification(ec2::ResourceType::Volume, &request.tags))
            .send()
            .await
            .map_err(error)?;
        let overrides = |lt: Option<&ec2::LaunchTemplateAndOverridesResponse>| {
            let o = lt.and_then(|l| l.overrides());
            (
                o.and_then(|o| o.instance_type()).map(|t| t.as_str().to_owned()),
                o.and_then(|o| o.subnet_id()).map(str::to_owned),
            )
        };
        let instances = out
            .instances()
            .iter()
            .flat_map(|i| {
                let (instance_type, subnet_id) = overrides(i.launch_template_and_overrides());
                let instance_type = i.instance_type().map(|t| t.as_str().to_owned()).or(instance_type);
                i.instance_ids().iter().map(move |id| FleetInstance {
                    id: id.clone(),
                    instance_type: instance_type.clone().unwrap_or_default(),
                    subnet_id: subnet_id.clone(),
                })
            })
            .collect();
        let errors = out
            .errors()
            .iter()
            .map(|e| {
                let (instance_type, subnet_id) = overrides(e.launch_template_and_overrides());
                FleetError {
                    code: e.error_code().unwrap_or_default().to_owned(),
                    message: e.error_message().unwrap_or_default().to_owned(),
                    instance_type,
                    subnet_id,
                }
            })
            .collect();
        Ok(FleetOutcome { instances, errors })
    }

    async fn describe_instances(&self, f: &[Filter]) -> Result<Vec<Instance>, Ec2Error> {
        let reservations: Vec<ec2::Reservation> = self
            .ec2
            .describe_instances()
            .set_filters(filters(f))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(reservations
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                Some(Instance {
                    id: i.instance_id()?.to_owned(),
                    instance_type: i.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
                    zone: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_owned(),
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_default(),
                    launch_time_ms: i.launch_time().and_then(|t| t.to_millis().ok()),
                    spot: i.instance_lifecycle() == Some(&ec2::InstanceLifecycleType::Spot),
                    image_id: i.image_id().map(str::to_owned),
                    subnet_id: i.subnet_id().map(str::to_owned),
                    security_group_ids: i
                        .security_groups()
                        .iter()
                        .filter_map(|g| g.group_id().map(str::to_owned))
                        .collect(),
                    tags: tags(Some(i.tags())),
                })
            })
            .collect())
    }

    async fn terminate_instances(&self, ids: &[String]) -> Result<(), Ec2Error> {
        self.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await.map_err(error)?;
        Ok(())
    }

    async fn get_instance_profile(&self, name: &str) -> Result<Option<InstanceProfile>, Ec2Error> {
        match self.iam.get_instance_profile().instance_profile_name(name).send().await {
            Ok(out) => Ok(out.instance_profile().map(instance_profile)),
            Err(e) => {
                let e = error(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn list_instance_profiles(&self, path_prefix: &str) -> Result<Vec<InstanceProfile>, Ec2Error> {
        let profiles: Vec<aws_sdk_iam::types::InstanceProfile> = self
            .iam
            .list_instance_profiles()
            .path_prefix(path_prefix)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(error)?;
        Ok(profiles.iter().map(instance_profile).collect())
    }

    async fn create_instance_profile(&self, name: &str, path: &str, tags: &Tags) -> Result<(), Ec2Error> {
        let tags = tags
            .iter()
            .map(|(k, v)| aws_sdk_iam::types::Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Ec2Error { code: None, message: e.to_string() })?;
        self.iam
            .create_instance_profile()
            .instance_profile_name(name)
            .path(path)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn add_role_to_instance_profile(&self, profile: &str, role: &str) -> Result<(), Ec2Error> {
        self.iam
            .add_role_to_instance_profile()
            .instance_profile_name(profile)
            .role_name(role)
            .send()
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn remove_role_from_instance_profile(&self, profile: &str, role: &str) -> Result<(), Ec2Error> {
        self.iam
            .remove_role_from_instance_profile()
            .instance_profile_name(profile)
            .role_name(role)
            .send()
            .await
            .map_err(error)?;
        Ok(())
    }

    async fn delete_instance_profile(&self, name: &str) -> Result<(), Ec2Error> {
        self.iam.delete_instance_profile().instance_profile_name(name).send().await.map_err(error)?;
        Ok(())
    }
}

fn instance_profile(p: &aws_sdk_iam::types::InstanceProfile) -> InstanceProfile {
    InstanceProfile {
        name: p.instance_profile_name().to_owned(),
        path: p.path().to_owned(),
        roles: p.roles().iter().map(|r| r.role_name().to_owned()).collect(),
        tags: p.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect(),
    }
}
