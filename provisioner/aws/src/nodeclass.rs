//! EC2NodeClass resolution: its selector terms become the subnets, security groups and AMIs to launch
//! with; AMI aliases (`al2023@latest`, `bottlerocket@v1.20.0`) resolve through the public SSM parameters.
//! What does not resolve is said in words, for the NodeClass's status conditions.

use std::collections::{BTreeMap, BTreeSet};

use cartwright_api::ec2nodeclass::{AmiSelectorTerm, EC2NodeClassSpec, SelectorTerm};

use crate::api::{Ec2Api, Ec2Error, Filter, Image, SecurityGroup, Subnet};

/// The AMI families Cartwright writes user data for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmiFamily {
    /// Amazon Linux 2023: nodeadm's `NodeConfig` in a MIME part.
    Al2023,
    /// Bottlerocket: TOML settings.
    Bottlerocket,
    /// The NodeClass's user data as given.
    Custom,
}

impl AmiFamily {
    pub fn parse(name: &str) -> Option<AmiFamily> {
        match name.to_ascii_lowercase().as_str() {
            "al2023" => Some(AmiFamily::Al2023),
            "bottlerocket" => Some(AmiFamily::Bottlerocket),
            "custom" => Some(AmiFamily::Custom),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AmiFamily::Al2023 => "AL2023",
            AmiFamily::Bottlerocket => "Bottlerocket",
            AmiFamily::Custom => "Custom",
        }
    }
}

/// Where the cluster is and which public parameters name its AMIs.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterInfo {
    pub name: String,
    /// The API server's URL as nodes reach it.
    pub endpoint: String,
    /// The cluster CA bundle, base64 of the PEM.
    pub ca_bundle: String,
    /// The service CIDR (nodeadm's `cidr`), if known.
    pub service_cidr: Option<String>,
    /// `1.33`: the AMI parameters are per Kubernetes version.
    pub kubernetes_version: String,
    /// The root of the public AMI parameters (`/aws/service`); tests seed their own.
    pub ssm_root: String,
}

/// A resolution problem, for a status condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// SubnetsReady, SecurityGroupsReady, AMIsReady, InstanceProfileReady, UserDataReady.
    pub condition: &'static str,
    pub message: String,
}

/// What an EC2NodeClass resolved to.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub family: AmiFamily,
    pub subnets: Vec<Subnet>,
    pub security_groups: Vec<SecurityGroup>,
    /// The newest AMI of each architecture (`x86_64`, `arm64`).
    pub amis: Vec<Image>,
    pub instance_profile: Option<String>,
    pub problems: Vec<Problem>,
}

impl Resolved {
    /// Whether nodes can be launched with it.
    pub fn is_ready(&self) -> bool {
        self.problems.is_empty()
    }

    /// The AMI for a Kubernetes architecture (`amd64`, `arm64`).
    pub fn ami_for(&self, arch: &str) -> Option<&Image> {
        let ec2_arch = if arch == "amd64" { "x86_64" } else { arch };
        self.amis.iter().find(|i| i.architecture == ec2_arch)
    }

    /// The subnet to launch in a zone: the one with the most free addresses (Karpenter's rule).
    pub fn subnet_in(&self, zone: &str) -> Option<&Subnet> {
        self.subnets
            .iter()
            .filter(|s| s.zone == zone)
            .max_by_key(|s| (s.available_ips, std::cmp::Reverse(&s.id)))
    }

    /// The zones its subnets span.
    pub fn zones(&self) -> BTreeSet<&str> {
        self.subnets.iter().map(|s| s.zone.as_str()).collect()
    }
}

fn describe_tags(tags: &BTreeMap<String, String>) -> String {
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn describe_term(term: &SelectorTerm) -> String {
    let mut parts = Vec::new();
    if !term.tags.is_empty() {
        parts.push(format!("tags {}", describe_tags(&term.tags)));
    }
    if let Some(id) = &term.id {
        parts.push(format!("id {id}"));
    }
    if let Some(name) = &term.name {
        parts.push(format!("name {name}"));
    }
    parts.join(" and ")
}

fn term_filters(term: &SelectorTerm, id_attribute: &str, name_attribute: Option<&str>) -> Vec<Filter> {
    let mut filters: Vec<Filter> = term.tags.iter().map(|(k, v)| Filter::tag(k, v)).collect();
    if let Some(id) = &term.id {
        filters.push(Filter::new(id_attribute, [id.clone()]));
    }
    if let (Some(name), Some(attribute)) = (&term.name, name_attribute) {
        filters.push(Filter::new(attribute, [name.clone()]));
    }
    filters
}

/// Architectures of the public AMI parameters, as the parameter paths and EC2 spell them.
const ARCHES: [&str; 2] = ["x86_64", "arm64"];

/// The SSM parameters an alias names, one per architecture.
fn alias_parameters(alias: &str, cluster: &ClusterInfo) -> Result<(AmiFamily, Vec<String>), String> {
    let (family, version) = alias
        .split_once('@')
        .ok_or_else(|| format!("alias {alias}: expected family@version, e.g. al2023@latest"))?;
    let family = AmiFamily::parse(family)
        .filter(|f| *f != AmiFamily::Custom)
        .ok_or_else(|| format!("alias {alias}: family {family} is not supported (al2023, bottlerocket)"))?;
    let (root, k8s) = (cluster.ssm_root.trim_end_matches('/'), &cluster.kubernetes_version);
    let parameters = ARCHES
        .iter()
        .map(|arch| match (family, version) {
            (AmiFamily::Al2023, "latest") => {
                format!("{root}/eks/optimized-ami/{k8s}/amazon-linux-2023/{arch}/standard/recommended/image_id")
            }
            (AmiFamily::Al2023, v) => format!(
                "{root}/eks/optimized-ami/{k8s}/amazon-linux-2023/{arch}/standard/amazon-eks-node-al2023-{arch}-standard-{k8s}-{v}/image_id"
            ),
            (_, "latest") => format!("{root}/bottlerocket/aws-k8s-{k8s}/{arch}/latest/image_id"),
            (_, v) => format!("{root}/bottlerocket/aws-k8s-{k8s}/{arch}/{}/image_id", v.trim_start_matches('v')),
        })
        .collect();
    Ok((family, parameters))
}

async fn resolve_amis<A: Ec2Api>(
    api: &A,
    terms: &[AmiSelectorTerm],
    cluster: &ClusterInfo,
    problems: &mut Vec<Problem>,
) -> Result<(Option<AmiFamily>, Vec<Image>), Ec2Error> {
    let mut family = None;
    let mut found: Vec<Image> = Vec::new();
    let mut missing = Vec::new();
    for term in terms {
        let mut ids = Vec::new();
        let mut filters = Vec::new();
        if let Some(alias) = &term.alias {
            match alias_parameters(alias, cluster) {
                Ok((f, parameters)) => {
                    family = Some(f);
                    for p in parameters {
                        if let Some(id) = api.get_parameter(&p).await? {
                            ids.push(id);
                        }
                    }
                    if ids.is_empty() {
                        missing.push(format!("alias {alias} (no SSM parameter under {})", cluster.ssm_root));
                        continue;
                    }
                }
                Err(message) => {
                    problems.push(Problem { condition: "AMIsReady", message });
                    continue;
                }
            }
        }
        if let Some(parameter) = &term.ssm_parameter {
            match api.get_parameter(parameter).await? {
                Some(id) => ids.push(id),
                None => {
                    missing.push(format!("SSM parameter {parameter}"));
                    continue;
                }
            }
        }
        if !ids.is_empty() {
            filters.push(Filter::new("image-id", ids));
        }
        if let Some(id) = &term.id {
            filters.push(Filter::new("image-id", [id.clone()]));
        }
        if let Some(name) = &term.name {
            filters.push(Filter::new("name", [name.clone()]));
        }
        filters.extend(term.tags.iter().map(|(k, v)| Filter::tag(k, v)));
        if filters.is_empty() {
            problems.push(Problem {
                condition: "AMIsReady",
                message: "an amiSelectorTerm selects nothing".into(),
            });
            continue;
        }
        let owners: Vec<String> = term.owner.iter().cloned().collect();
        let images = api.describe_images(&filters, &owners).await?;
        if images.is_empty() {
            let what = term
                .alias
                .as_ref()
                .map(|a| format!("alias {a}"))
                .or_else(|| term.id.as_ref().map(|i| format!("id {i}")))
                .or_else(|| term.name.as_ref().map(|n| format!("name {n}")))
                .or_else(|| term.ssm_parameter.as_ref().map(|p| format!("SSM parameter {p}")))
                .unwrap_or_else(|| format!("tags {}", describe_tags(&term.tags)));
            missing.push(what);
        }
        found.extend(images);
    }
    if !missing.is_empty() && found.is_empty() {
        problems.push(Problem {
            condition: "AMIsReady",
            message: format!("no AMI matches {}", missing.join("; ")),
        });
    }
    // The newest image of each architecture.
    found.sort_by(|a, b| {
        (&a.architecture, &b.creation_date, &a.id).cmp(&(&b.architecture, &a.creation_date, &b.id))
    });
    found.dedup_by(|b, a| a.architecture == b.architecture);
    Ok((family, found))
}

/// Resolves a NodeClass. AWS errors (permissions, throttling) come back as errors; selectors that match
/// nothing come back as problems.
pub async fn resolve<A: Ec2Api>(
    api: &A,
    spec: &EC2NodeClassSpec,
    cluster: &ClusterInfo,
) -> Result<Resolved, Ec2Error> {
    let mut problems = Vec::new();
    let mut subnets: Vec<Subnet> = Vec::new();
    for term in &spec.subnet_selector_terms {
        let found = api.describe_subnets(&term_filters(term, "subnet-id", None)).await?;
        if found.is_empty() {
            problems.push(Problem {
                condition: "SubnetsReady",
                message: format!("no subnet matches {}", describe_term(term)),
            });
        }
        subnets.extend(found);
    }
    if spec.subnet_selector_terms.is_empty() {
        problems
            .push(Problem { condition: "SubnetsReady", message: "spec.subnetSelectorTerms is empty".into() });
    }
    subnets.sort_by(|a, b| a.id.cmp(&b.id));
    subnets.dedup_by(|a, b| a.id == b.id);
    let mut groups: Vec<SecurityGroup> = Vec::new();
    for term in &spec.security_group_selector_terms {
        let found = api.describe_security_groups(&term_filters(term, "group-id", Some("group-name"))).await?;
        if found.is_empty() {
            problems.push(Problem {
                condition: "SecurityGroupsReady",
                message: format!("no security group matches {}", describe_term(term)),
            });
        }
        groups.extend(found);
    }
    if spec.security_group_selector_terms.is_empty() {
        problems.push(Problem {
            condition: "SecurityGroupsReady",
            message: "spec.securityGroupSelectorTerms is empty".into(),
        });
    }
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    groups.dedup_by(|a, b| a.id == b.id);
    let (alias_family, amis) = resolve_amis(api, &spec.ami_selector_terms, cluster, &mut problems).await?;
    if spec.ami_selector_terms.is_empty() {
        problems.push(Problem { condition: "AMIsReady", message: "spec.amiSelectorTerms is empty".into() });
    }
    let family = match spec.ami_family.as_deref() {
        Some(name) => AmiFamily::parse(name).unwrap_or_else(|| {
            problems.push(Problem {
                condition: "UserDataReady",
                message: format!("amiFamily {name} is not supported (AL2023, Bottlerocket, Custom)"),
            });
            AmiFamily::Custom
        }),
        None => alias_family.unwrap_or_else(|| {
            if !spec.ami_selector_terms.is_empty() {
                problems.push(Problem {
                    condition: "UserDataReady",
                    message: "amiFamily is required when amiSelectorTerms has no alias".into(),
                });
            }
            AmiFamily::Custom
        }),
    };
    let instance_profile = match (&spec.instance_profile, &spec.role) {
        (Some(profile), _) => Some(profile.clone()),
        // The provider makes (and keeps) a profile holding the role: `AwsProvider::resolve`.
        (None, Some(_)) => None,
        (None, None) => {
            problems.push(Problem {
                condition: "InstanceProfileReady",
                message: "set spec.role or spec.instanceProfile".into(),
            });
            None
        }
    };
    Ok(Resolved { family, subnets, security_groups: groups, amis, instance_profile, problems })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake::FakeEc2;

    pub(crate) fn cluster() -> ClusterInfo {
        ClusterInfo {
            name: "prod".into(),
            endpoint: "https://ABC.gr7.us-east-1.eks.amazonaws.com".into(),
            ca_bundle: "Q0E=".into(),
            service_cidr: Some("10.100.0.0/16".into()),
            kubernetes_version: "1.33".into(),
            ssm_root: "/aws/service".into(),
        }
    }

    fn tagged(key: &str, value: &str) -> BTreeMap<String, String> {
        [(key.to_owned(), value.to_owned())].into()
    }

    pub(crate) fn seeded() -> FakeEc2 {
        let fake = FakeEc2::new();
        for (id, zone, ips) in [
            ("subnet-a", "us-east-1a", 100),
            ("subnet-a2", "us-east-1a", 300),
            ("subnet-b", "us-east-1b", 50),
        ] {
            fake.add_subnet(Subnet {
                id: id.into(),
                zone: zone.into(),
                zone_id: None,
                available_ips: ips,
                tags: tagged("karpenter.sh/discovery", "prod"),
            });
        }
        fake.add_subnet(Subnet {
            id: "subnet-other".into(),
            zone: "us-east-1c".into(),
            zone_id: None,
            available_ips: 999,
            tags: tagged("karpenter.sh/discovery", "staging"),
        });
        fake.add_security_group(SecurityGroup {
            id: "sg-1".into(),
            name: "nodes".into(),
            tags: tagged("karpenter.sh/discovery", "prod"),
        });
        for (id, arch, date) in [
            ("ami-old", "x86_64", "2026-01-01T00:00:00.000Z"),
            ("ami-new", "x86_64", "2026-06-01T00:00:00.000Z"),
            ("ami-arm", "arm64", "2026-06-01T00:00:00.000Z"),
        ] {
            fake.add_image(Image {
                id: id.into(),
                name: format!("al2023-{id}"),
                architecture: arch.into(),
                creation_date: date.into(),
                tags: BTreeMap::new(),
            });
        }
        let root = "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023";
        fake.put_parameter(&format!("{root}/x86_64/standard/recommended/image_id"), "ami-new");
        fake.put_parameter(&format!("{root}/arm64/standard/recommended/image_id"), "ami-arm");
        fake
    }

    pub(crate) fn spec() -> EC2NodeClassSpec {
        EC2NodeClassSpec {
            subnet_selector_terms: vec![SelectorTerm {
                tags: tagged("karpenter.sh/discovery", "prod"),
                ..Default::default()
            }],
            security_group_selector_terms: vec![SelectorTerm {
                tags: tagged("karpenter.sh/discovery", "prod"),
                ..Default::default()
            }],
            ami_selector_terms: vec![AmiSelectorTerm {
                alias: Some("al2023@latest".into()),
                ..Default::default()
            }],
            instance_profile: Some("nodes-profile".into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn selectors_resolve_to_subnets_groups_and_the_alias_amis() {
        let fake = seeded();
        let r = resolve(&fake, &spec(), &cluster()).await.unwrap();
        assert!(r.is_ready(), "{:?}", r.problems);
        assert_eq!(r.family, AmiFamily::Al2023);
        let ids: Vec<&str> = r.subnets.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["subnet-a", "subnet-a2", "subnet-b"]);
        assert_eq!(r.subnet_in("us-east-1a").unwrap().id, "subnet-a2", "the most free addresses");
        assert_eq!(r.security_groups[0].id, "sg-1");
        assert_eq!(r.ami_for("amd64").unwrap().id, "ami-new");
        assert_eq!(r.ami_for("arm64").unwrap().id, "ami-arm");
        assert_eq!(r.instance_profile.as_deref(), Some("nodes-profile"));
    }

    #[tokio::test]
    async fn ids_names_and_tags_select_and_the_newest_ami_wins() {
        let fake = seeded();
        let mut spec = spec();
        spec.subnet_selector_terms = vec![SelectorTerm { id: Some("subnet-b".into()), ..Default::default() }];
        spec.security_group_selector_terms =
            vec![SelectorTerm { name: Some("nodes".into()), ..Default::default() }];
        spec.ami_selector_terms = vec![
            AmiSelectorTerm { id: Some("ami-old".into()), ..Default::default() },
            AmiSelectorTerm { name: Some("al2023-ami-new".into()), ..Default::default() },
        ];
        spec.ami_family = Some("AL2023".into());
        let r = resolve(&fake, &spec, &cluster()).await.unwrap();
        assert!(r.is_ready(), "{:?}", r.problems);
        assert_eq!(r.subnets.len(), 1);
        assert_eq!(r.ami_for("amd64").unwrap().id, "ami-new");
        assert!(r.ami_for("arm64").is_none());
    }

    #[tokio::test]
    async fn what_does_not_resolve_is_named() {
        let fake = seeded();
        let mut spec = spec();
        spec.subnet_selector_terms =
            vec![SelectorTerm { tags: tagged("karpenter.sh/discovery", "dev"), ..Default::default() }];
        spec.ami_selector_terms =
            vec![AmiSelectorTerm { alias: Some("bottlerocket@latest".into()), ..Default::default() }];
        spec.instance_profile = None;
        let r = resolve(&fake, &spec, &cluster()).await.unwrap();
        let messages: Vec<String> =
            r.problems.iter().map(|p| format!("{}: {}", p.condition, p.message)).collect();
        assert!(
            messages.contains(&"SubnetsReady: no subnet matches tags karpenter.sh/discovery=dev".to_owned()),
            "{messages:?}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("AMIsReady: no AMI matches alias bottlerocket@latest")),
            "{messages:?}"
        );
        assert!(
            messages.contains(&"InstanceProfileReady: set spec.role or spec.instanceProfile".to_owned()),
            "{messages:?}"
        );
        assert!(!r.is_ready());
        // A role: the provider makes its profile (provider.rs); resolving alone names no problem.
        spec.role = Some("KarpenterNodeRole-prod".into());
        let r = resolve(&fake, &spec, &cluster()).await.unwrap();
        assert!(r.problems.iter().all(|p| p.condition != "InstanceProfileReady"), "{:?}", r.problems);
    }

    #[test]
    fn alias_versions_name_their_parameters() {
        let (family, p) = alias_parameters("bottlerocket@v1.20.0", &cluster()).unwrap();
        assert_eq!(family, AmiFamily::Bottlerocket);
        assert_eq!(p[1], "/aws/service/bottlerocket/aws-k8s-1.33/arm64/1.20.0/image_id");
        let (_, p) = alias_parameters("al2023@v20250101", &cluster()).unwrap();
        assert_eq!(
            p[0],
            "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/amazon-eks-node-al2023-x86_64-standard-1.33-v20250101/image_id"
        );
        assert!(alias_parameters("windows2022@latest", &cluster()).unwrap_err().contains("not supported"));
        assert!(alias_parameters("al2023", &cluster()).unwrap_err().contains("family@version"));
    }
}
