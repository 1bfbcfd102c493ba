//! Ordinary Kubernetes YAML in, a solver [`Problem`] out.
//!
//! A manifest set is any number of multi-document YAML files holding Pods, Deployments, StatefulSets, Jobs,
//! DaemonSets, Nodes and NodePools (`cartwright.sh/v1`, or `karpenter.sh/v1` unchanged). Pods bound to a
//! node (`spec.nodeName`) count as that node's load; the others, and the replicas of the workloads, are the
//! pending pods. Other kinds (Services, ConfigMaps, EC2NodeClasses, ...) are skipped and listed in
//! [`Manifests::skipped`]. Errors name the document, the object and the field.

use std::collections::BTreeMap;

use cartwright_binpack::labels;
use cartwright_binpack::requirements::SelectorRequirement;
use cartwright_binpack::solver::{
    DaemonSetSpec, Limits, NodePoolTemplate, PodAffinityTerm, PodSpec, Problem,
};
use cartwright_binpack::{Catalog, NodeAffinity, ResourceName, Resources, Taint, TaintEffect, Toleration};
use cartwright_core::provisioning::{self, NodeView};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, PodSpec as K8sPodSpec, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::de::DeserializeOwned;

use crate::nodepool::{self, NodePoolSpec};

/// A manifest that cannot be used, with where it is and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: document {document}{object}: {message}")]
pub struct ManifestError {
    /// The file (or other source) name.
    pub source_name: String,
    /// 1-based document index within the source.
    pub document: usize,
    /// ` (Kind name)` when known.
    pub object: String,
    pub message: String,
}

/// Everything read from a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// Pods waiting for a node: unbound Pods and the replicas of Deployments, StatefulSets and Jobs.
    pub pending: Vec<PodSpec>,
    /// Pods bound to a node: (node name, pod).
    pub bound: Vec<(String, PodSpec)>,
    pub nodes: Vec<NodeManifest>,
    pub nodepools: Vec<NamedNodePool>,
    pub daemonsets: Vec<DaemonSetSpec>,
    /// Objects read but not used (`Kind name`).
    pub skipped: Vec<String>,
    /// Constraints in the manifests the solver does not model yet, so the plan ignores them.
    pub warnings: Vec<String>,
    /// PersistentVolumeClaims each pending pod mounts (`namespace/claim`), resolved in [`Self::to_problem`].
    pub claims: BTreeMap<String, Vec<String>>,
    /// PersistentVolumeClaim (`namespace/name`) -> the PersistentVolume it is bound to.
    pub bound_claims: BTreeMap<String, String>,
    /// PersistentVolume -> where it can be mounted (its node affinity, ORed terms; its zone label).
    pub volume_affinity: BTreeMap<String, NodeAffinity>,
}

/// A Node as read: its scheduling view and its capacity (for NodePool limits).
#[derive(Clone, Debug)]
pub struct NodeManifest {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub capacity: Resources,
    /// True unless the node is cordoned.
    pub schedulable: bool,
}

/// A NodePool with its name, and its template as the solver sees it (full limits, nothing charged).
#[derive(Clone, Debug)]
pub struct NamedNodePool {
    pub name: String,
    pub spec: NodePoolSpec,
    pub template: NodePoolTemplate,
}

impl Manifests {
    /// Reads every YAML document of `text` (named `source_name` in errors) into the set.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<(), ManifestError> {
        for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let at = |object: String, message: String| ManifestError {
                source_name: source_name.to_owned(),
                document: i + 1,
                object,
                message,
            };
            let value: serde_json::Value = serde::Deserialize::deserialize(document)
                .map_err(|e| at(String::new(), format!("not valid YAML: {e}")))?;
            if value.is_null() {
                continue;
            }
            let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let name =
                value.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            let object = format!(" ({kind} {name})");
            if kind.is_empty() {
                return Err(at(String::new(), "missing field `kind`".into()));
            }
            self.add_object(&api_version, &kind, &name, value).map_err(|message| at(object, message))?;
        }
        Ok(())
    }

    fn add_object(
        &mut self,
        api_version: &str,
        kind: &str,
        name: &str,
        value: serde_json::Value,
    ) -> Result<(), String> {
        match kind {
            "NodePool" => {
                let group = api_version.split('/').next().unwrap_or_default();
                if group != nodepool::GROUP && group != nodepool::KARPENTER_GROUP {
                    self.skipped.push(format!("{kind} {name} ({api_version})"));
                    return Ok(());
                }
                if !api_version.ends_with("/v1") {
                    return Err(format!(
                        "apiVersion {api_version} is not supported: use {}/v1 or {}/v1",
                        nodepool::GROUP,
                        nodepool::KARPENTER_GROUP
                    ));
                }
                let spec: NodePoolSpec = typed(value.get("spec").cloned().unwrap_or_default(), "spec.")?;
                let template = nodepool_template(name, &spec)?;
                self.nodepools.push(NamedNodePool { name: name.to_owned(), spec, template });
            }
            "Pod" => {
                let pod: Pod = typed(value, "")?;
                let spec = pod.spec.as_ref().ok_or("missing field `spec`")?;
                let namespace = namespace_of(&pod.metadata.namespace);
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let pod_spec = self.pod(&format!("{namespace}/{name}"), spec, labels)?;
                match &spec.node_name {
                    Some(node) => self.bound.push((node.clone(), pod_spec)),
                    None => {
                        let claims = claim_names(namespace, spec);
                        if !claims.is_empty() {
                            self.claims.insert(pod_spec.name.clone(), claims);
                        }
                        self.pending.push(pod_spec);
                    }
                }
            }
            "Deployment" => {
                let d: Deployment = typed(value, "")?;
                let spec = d.spec;
                self.replicas(&d.metadata.namespace, name, &spec.template, spec.replicas.unwrap_or(1))?;
            }
            "StatefulSet" => {
                let s: StatefulSet = typed(value, "")?;
                let spec = s.spec;
                let first = self.pending.len();
                self.replicas(&s.metadata.namespace, name, &spec.template, spec.replicas.unwrap_or(1))?;
                // Replica i mounts `<template>-<statefulset>-<i>` for each volume claim template.
                let namespace = namespace_of(&s.metadata.namespace);
                let templates: Vec<String> = spec
                    .volume_claim_templates
                    .iter()
                    .flatten()
                    .filter_map(|t| t.metadata.name.clone())
                    .collect();
                for (i, pod) in self.pending[first..].iter().enumerate() {
                    let claims = self.claims.entry(pod.name.clone()).or_default();
                    claims.extend(templates.iter().map(|t| format!("{namespace}/{t}-{name}-{i}")));
                }
            }
            "Job" => {
                let j: Job = typed(value, "")?;
                let spec = j.spec.ok_or("missing field `spec`")?;
                let parallelism = spec.parallelism.unwrap_or(1);
                let running = spec.completions.map_or(parallelism, |c| c.min(parallelism));
                self.replicas(&j.metadata.namespace, name, &spec.template, running)?;
            }
            "DaemonSet" => {
                let ds: DaemonSet = typed(value, "")?;
                let (daemonset, notes) = daemonset_spec(name, &ds)?;
                self.note(&daemonset.name, notes);
                self.daemonsets.push(daemonset);
            }
            "Node" => {
                let node: Node = typed(value, "")?;
                self.nodes.push(node_manifest(name, &node)?);
            }
            "PersistentVolumeClaim" => {
                let pvc: PersistentVolumeClaim = typed(value, "")?;
                let namespace = namespace_of(&pvc.metadata.namespace);
                if let Some(volume) = pvc.spec.and_then(|s| s.volume_name).filter(|v| !v.is_empty()) {
                    self.bound_claims.insert(format!("{namespace}/{name}"), volume);
                }
            }
            "PersistentVolume" => {
                let pv: PersistentVolume = typed(value, "")?;
                self.volume_affinity.insert(name.to_owned(), volume_affinity(&pv)?);
            }
            _ => self.skipped.push(format!("{kind} {name}")),
        }
        Ok(())
    }

    fn replicas(
        &mut self,
        namespace: &Option<String>,
        name: &str,
        template: &PodTemplateSpec,
        replicas: i32,
    ) -> Result<(), String> {
        if replicas < 0 {
            return Err(format!("spec.replicas: {replicas} is negative"));
        }
        let spec = template.spec.as_ref().ok_or("missing field `spec.template.spec`")?;
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        let namespace = namespace_of(namespace);
        let first = self.pod(&format!("{namespace}/{name}-0"), spec, labels)?;
        let claims = claim_names(namespace, spec);
        for i in 0..replicas {
            let mut pod = first.clone();
            pod.name = format!("{namespace}/{name}-{i}");
            if !claims.is_empty() {
                self.claims.insert(pod.name.clone(), claims.clone());
            }
            self.pending.push(pod);
        }
        Ok(())
    }

    /// Converts a pod spec, noting the constraints the solver does not model yet.
    fn pod(
        &mut self,
        name: &str,
        spec: &K8sPodSpec,
        labels: BTreeMap<String, String>,
    ) -> Result<PodSpec, String> {
        let (pod, notes) = pod_spec(name, spec, labels)?;
        self.note(name, notes);
        Ok(pod)
    }

    fn note(&mut self, name: &str, notes: Vec<String>) {
        for note in notes {
            let warning = format!("{name}: {note} is not modelled yet and is ignored");
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
    }

    /// The solver's view: pending pods, nodes (with the requests of their bound pods and daemonsets),
    /// NodePool templates with limits left after their existing nodes, daemonsets, over `catalog`.
    pub fn to_problem(&self, catalog: Catalog) -> Problem {
        let views: Vec<NodeView<'_>> = self
            .nodes
            .iter()
            .map(|node| {
                let on_node: Vec<&PodSpec> =
                    self.bound.iter().filter(|(n, _)| *n == node.name).map(|(_, p)| p).collect();
                let mut requested = Resources::new();
                for pod in &on_node {
                    requested.add_assign(&pod.requests);
                }
                NodeView {
                    name: &node.name,
                    labels: &node.labels,
                    taints: &node.taints,
                    allocatable: &node.allocatable,
                    capacity: &node.capacity,
                    requested,
                    pod_labels: on_node.iter().map(|p| &p.labels).collect(),
                    repelled: on_node.iter().flat_map(|p| &p.hostname_anti_affinity).collect(),
                    nodepool: node.labels.get(labels::NODEPOOL).map(String::as_str),
                    ready: true,
                    cordoned: !node.schedulable,
                }
            })
            .collect();
        let templates: Vec<NodePoolTemplate> = self.nodepools.iter().map(|p| p.template.clone()).collect();
        provisioning::problem(
            self.pending_with_volumes(),
            &views,
            &templates,
            &self.daemonsets,
            catalog.into(),
        )
    }

    /// The pending pods, each restricted to where its bound volumes can be mounted (a PersistentVolume with
    /// node affinity, typically a zonal EBS volume, pins the pod to its zone). Claims not bound yet
    /// (`WaitForFirstConsumer`) or not in the input constrain nothing.
    pub fn pending_with_volumes(&self) -> Vec<PodSpec> {
        self.pending
            .iter()
            .map(|pod| {
                let mut pod = pod.clone();
                for claim in self.claims.get(&pod.name).into_iter().flatten() {
                    let volume = self.bound_claims.get(claim).and_then(|v| self.volume_affinity.get(v));
                    if let Some(volume) = volume {
                        let mut alternatives = Vec::new();
                        for a in pod.affinity.alternatives() {
                            for b in volume.alternatives() {
                                alternatives.push(a.intersection(b));
                            }
                        }
                        pod.affinity = NodeAffinity::from_alternatives(alternatives);
                    }
                }
                pod
            })
            .collect()
    }
}

fn namespace_of(namespace: &Option<String>) -> &str {
    namespace.as_deref().unwrap_or("default")
}

/// Deserialises with the failing field's path in the message.
fn typed<T: DeserializeOwned>(value: serde_json::Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            format!("{}", e.inner())
        } else {
            format!("{prefix}{path}: {}", e.inner())
        }
    })
}

fn quantities(list: &BTreeMap<String, Quantity>, field: &str) -> Result<Resources, String> {
    Resources::parse(list.iter().map(|(k, v)| (k.as_str(), v.0.as_str())))
        .map_err(|e| format!("{field}: {e}"))
}

/// A container's requests, with Kubernetes' defaulting of missing requests to the limits.
fn container_requests(
    requests: Option<&BTreeMap<String, Quantity>>,
    limits: Option<&BTreeMap<String, Quantity>>,
    field: &str,
) -> Result<Resources, String> {
    let mut merged: BTreeMap<String, Quantity> = limits.cloned().unwrap_or_default();
    for (k, v) in requests.into_iter().flatten() {
        merged.insert(k.clone(), v.clone());
    }
    quantities(&merged, field)
}

/// A Kubernetes pod spec as the solver sees it, plus the constraints it carries that are not modelled yet.
pub fn pod_spec(
    name: &str,
    spec: &K8sPodSpec,
    labels: BTreeMap<String, String>,
) -> Result<(PodSpec, Vec<String>), String> {
    let mut notes = Vec::new();
    let mut requests = Resources::new();
    let mut host_ports = Vec::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let r = c.resources.as_ref();
        requests.add_assign(&container_requests(
            r.and_then(|r| r.requests.as_ref()),
            r.and_then(|r| r.limits.as_ref()),
            &format!("spec.containers[{i}].resources"),
        )?);
        for port in c.ports.iter().flatten() {
            if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                host_ports.push((port.protocol.clone().unwrap_or_else(|| "TCP".into()), host_port));
            }
        }
    }
    // Init containers run one at a time before the others (sidecars, restartPolicy Always, keep running).
    let mut sidecars = Resources::new();
    let mut init_peak = Resources::new();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let r = c.resources.as_ref();
        let req = container_requests(
            r.and_then(|r| r.requests.as_ref()),
            r.and_then(|r| r.limits.as_ref()),
            &format!("spec.initContainers[{i}].resources"),
        )?;
        init_peak.max_assign(&sidecars.plus(&req));
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add_assign(&req);
        }
    }
    requests.add_assign(&sidecars);
    requests.max_assign(&init_peak);
    if let Some(overhead) = &spec.overhead {
        requests.add_assign(&quantities(overhead, "spec.overhead")?);
    }
    let mut pod = PodSpec::new(name, requests);
    pod.labels = labels;
    for (protocol, port) in host_ports {
        pod = pod.with_host_port(&protocol, port);
    }

    let selector = spec.node_selector.clone().unwrap_or_default();
    let node_affinity = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref());
    let terms: Option<Vec<Vec<SelectorRequirement>>> = node_affinity
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref())
        .map(|sel| {
            sel.node_selector_terms
                .iter()
                .map(|t| {
                    if t.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
                        notes.push("nodeAffinity matchFields".to_owned());
                    }
                    t.match_expressions.iter().flatten().map(selector_requirement).collect()
                })
                .collect()
        });
    pod.affinity =
        NodeAffinity::from_pod_spec(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())), terms.as_deref())
            .map_err(|e| format!("spec.affinity.nodeAffinity: {e}"))?;
    let preferred =
        node_affinity.and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_ref());
    for (i, term) in preferred.into_iter().flatten().enumerate() {
        let mut requirements = cartwright_binpack::Requirements::new();
        for (j, e) in term.preference.match_expressions.iter().flatten().enumerate() {
            let r = selector_requirement(e).to_requirement()
            .map_err(|e| {
                format!("spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference.matchExpressions[{j}]: {e}")
            })?;
            requirements.add(r);
        }
        pod.preferred_affinity.push((term.weight, requirements));
    }

    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let toleration = Toleration::new(
            t.key.as_deref().unwrap_or_default(),
            t.operator.as_deref().unwrap_or_default(),
            t.value.as_deref().unwrap_or_default(),
            t.effect.as_deref(),
        )
        .map_err(|e| format!("spec.tolerations[{i}]: {e}"))?;
        pod.tolerations.push(toleration);
    }

    if let Some(affinity) = spec.affinity.as_ref() {
        // Required terms with a `matchLabels` selector (namespaces: the pod's own) are modelled on zone and
        // hostname keys; anything else is reported.
        let simple = |term: &k8s_openapi::api::core::v1::PodAffinityTerm| {
            let selector = term.label_selector.as_ref();
            let plain = selector.is_some_and(|s| s.match_expressions.as_ref().is_none_or(|e| e.is_empty()));
            plain.then(|| selector.and_then(|s| s.match_labels.clone()).unwrap_or_default())
        };
        // Preferred terms on zone or hostname with a `matchLabels` selector are planned as required until the
        // pod cannot be placed (then relaxed, heaviest first); others are reported.
        let preferred = |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>,
                         what: &str,
                         notes: &mut Vec<String>| {
            let mut out = Vec::new();
            for weighted in terms.into_iter().flatten() {
                let term = &weighted.pod_affinity_term;
                match (labels::normalize_key(&term.topology_key), simple(term)) {
                    (key @ (labels::ZONE | labels::HOSTNAME), Some(selector)) => out
                        .push((weighted.weight, PodAffinityTerm { topology_key: key.to_owned(), selector })),
                    (key, _) => notes.push(format!("preferred {what} on {key} (or with matchExpressions)")),
                }
            }
            out
        };
        if let Some(aff) = &affinity.pod_affinity {
            for term in aff.required_during_scheduling_ignored_during_execution.iter().flatten() {
                match (labels::normalize_key(&term.topology_key), simple(term)) {
                    (labels::ZONE, Some(selector)) => pod.zone_affinity.push(selector),
                    (labels::HOSTNAME, Some(selector)) => pod.hostname_affinity.push(selector),
                    (key, _) => notes.push(format!("pod affinity on {key} (or with matchExpressions)")),
                }
            }
            pod.preferred_pod_affinity = preferred(
                aff.preferred_during_scheduling_ignored_during_execution.as_ref(),
                "pod affinity",
                &mut notes,
            );
        }
        if let Some(anti) = &affinity.pod_anti_affinity {
            for term in anti.required_during_scheduling_ignored_during_execution.iter().flatten() {
                match (labels::normalize_key(&term.topology_key), simple(term)) {
                    (labels::HOSTNAME, Some(selector)) => pod.hostname_anti_affinity.push(selector),
                    (labels::ZONE, Some(selector)) => pod.zone_anti_affinity.push(selector),
                    (key, _) => notes.push(format!("pod anti-affinity on {key} (or with matchExpressions)")),
                }
            }
            pod.preferred_pod_anti_affinity = preferred(
                anti.preferred_during_scheduling_ignored_during_execution.as_ref(),
                "pod anti-affinity",
                &mut notes,
            );
        }
    }

    for c in spec.topology_spread_constraints.iter().flatten() {
        let selector = c.label_selector.as_ref();
        if selector.is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())) {
            notes.push("topology spread with matchExpressions".to_owned());
            continue;
        }
        if c.max_skew < 1 {
            return Err(format!("spec.topologySpreadConstraints: maxSkew {} must be at least 1", c.max_skew));
        }
        let hard = c.when_unsatisfiable != "ScheduleAnyway";
        let key = labels::normalize_key(&c.topology_key);
        if hard && ![labels::ZONE, labels::HOSTNAME, labels::CAPACITY_TYPE].contains(&key) {
            notes.push(format!("topology spread on {key}"));
        }

        pod.topology_spread.push(cartwright_binpack::solver::TopologySpread {
            topology_key: key.to_owned(),
            max_skew: i64::from(c.max_skew),
            hard,
            selector: selector.and_then(|s| s.match_labels.clone()).unwrap_or_default(),
            min_domains: c.min_domains.map(i64::from),
            honor_node_affinity: spread_policy(
                c.node_affinity_policy.as_deref(),
                true,
                "nodeAffinityPolicy",
            )?,
            honor_node_taints: spread_policy(c.node_taints_policy.as_deref(), false, "nodeTaintsPolicy")?,
        });
    }
    Ok((pod, notes))
}

/// A topology spread policy (`Honor` or `Ignore`) as whether it is honoured, with Kubernetes' default.
fn spread_policy(value: Option<&str>, default: bool, field: &str) -> Result<bool, String> {
    match value {
        None => Ok(default),
        Some("Honor") => Ok(true),
        Some("Ignore") => Ok(false),
        Some(other) => {
            Err(format!("spec.topologySpreadConstraints: {field} `{other}` is not one of Honor, Ignore"))
        }
    }
}

/// A Kubernetes node selector requirement in the solver's API form.
fn selector_requirement(e: &k8s_openapi::api::core::v1::NodeSelectorRequirement) -> SelectorRequirement {
    SelectorRequirement {
        key: e.key.clone(),
        operator: e.operator.clone(),
        values: e.values.clone().unwrap_or_default(),
        min_values: None,
    }
}

/// The PersistentVolumeClaims a pod spec mounts, as `namespace/claim`.
fn claim_names(namespace: &str, spec: &K8sPodSpec) -> Vec<String> {
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| format!("{namespace}/{}", c.claim_name))
        .collect()
}

/// Where a PersistentVolume can be mounted: its required node affinity (ORed terms), ANDed with its
/// `topology.kubernetes.io/zone` label if it has one.
fn volume_affinity(pv: &PersistentVolume) -> Result<NodeAffinity, String> {
    let zone_label = pv
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::ZONE).or_else(|| l.get("failure-domain.beta.kubernetes.io/zone")));
    let selector: Vec<(&str, &str)> = zone_label.map(|z| (labels::ZONE, z.as_str())).into_iter().collect();
    let terms: Option<Vec<Vec<SelectorRequirement>>> =
        pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()).map(
            |sel| {
                sel.node_selector_terms
                    .iter()
                    .map(|t| t.match_expressions.iter().flatten().map(selector_requirement).collect())
                    .collect()
            },
        );
    NodeAffinity::from_pod_spec(selector, terms.as_deref())
        .map_err(|e| format!("spec.nodeAffinity.required: {e}"))
}

/// A DaemonSet as the solver sees it (its pod's requests, affinity and tolerations), with the constraints
/// not modelled.
pub fn daemonset_spec(name: &str, ds: &DaemonSet) -> Result<(DaemonSetSpec, Vec<String>), String> {
    let pod_spec = ds.spec.template.spec.as_ref().ok_or("missing field `spec.template.spec`")?;
    let namespace = namespace_of(&ds.metadata.namespace);
    let (pod, notes) = self::pod_spec(&format!("{namespace}/{name}"), pod_spec, BTreeMap::new())?;
    let daemonset = DaemonSetSpec {
        name: pod.name,
        requests: pod.requests,
        affinity: pod.affinity,
        tolerations: pod.tolerations,
    };
    Ok((daemonset, notes))
}

/// A Node's scheduling view and capacity.
pub fn node_manifest(name: &str, node: &Node) -> Result<NodeManifest, String> {
    let status = node.status.as_ref();
    let allocatable =
        status.and_then(|s| s.allocatable.as_ref()).ok_or("missing field `status.allocatable`")?;
    let allocatable = quantities(allocatable, "status.allocatable")?;
    let capacity = match status.and_then(|s| s.capacity.as_ref()) {
        Some(c) => quantities(c, "status.capacity")?,
        None => allocatable.clone(),
    };
    let spec = node.spec.as_ref();
    let mut taints = Vec::new();
    for (i, t) in spec.and_then(|s| s.taints.as_ref()).into_iter().flatten().enumerate() {
        let effect: TaintEffect = t.effect.parse().map_err(|e| format!("spec.taints[{i}].effect: {e}"))?;
        let taint = Taint::new(&t.key, t.value.as_deref().unwrap_or_default(), effect)
            .map_err(|e| format!("spec.taints[{i}]: {e}"))?;
        taints.push(taint);
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in node.metadata.labels.iter().flatten() {
        labels.insert(labels::normalize_key(k).to_owned(), v.clone());
    }
    labels.entry(labels::HOSTNAME.to_owned()).or_insert_with(|| name.to_owned());
    Ok(NodeManifest {
        name: name.to_owned(),
        labels,
        taints,
        allocatable,
        capacity,
        schedulable: !spec.and_then(|s| s.unschedulable).unwrap_or(false),
    })
}

fn api_taints(list: &[nodepool::Taint], field: &str) -> Result<Vec<Taint>, String> {
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let effect: TaintEffect = t.effect.parse().map_err(|e| format!("{field}[{i}].effect: {e}"))?;
            Taint::new(&t.key, t.value.as_deref().unwrap_or_default(), effect)
                .map_err(|e| format!("{field}[{i}]: {e}"))
        })
        .collect()
}

/// A NodePool's template as the solver sees it, with its full limits (nothing charged yet).
pub fn nodepool_template(name: &str, spec: &NodePoolSpec) -> Result<NodePoolTemplate, String> {
    let mut template = NodePoolTemplate::new(name);
    template.weight = spec.weight.unwrap_or(0);
    if !(0..=100).contains(&template.weight) {
        return Err(format!("spec.weight: {} is outside 1..100", template.weight));
    }
    let t = &spec.template;
    for (i, r) in t.spec.requirements.iter().enumerate() {
        let requirement = SelectorRequirement {
            key: r.key.clone(),
            operator: r.operator.clone(),
            values: r.values.clone(),
            min_values: r.min_values,
        }
        .to_requirement()
        .map_err(|e| format!("spec.template.spec.requirements[{i}]: {e}"))?;
        template.requirements.add(requirement);
    }
    if let Some(metadata) = &t.metadata {
        template.labels = metadata.labels.clone();
    }
    template.taints = api_taints(&t.spec.taints, "spec.template.spec.taints")?;
    template.startup_taints = api_taints(&t.spec.startup_taints, "spec.template.spec.startupTaints")?;
    let mut limits = Limits::default();
    for (key, value) in &spec.limits {
        let value = &value.0;
        if key == "nodes" {
            let n = cartwright_binpack::quantity::parse_units(value)
                .map_err(|e| format!("spec.limits.nodes: {e}"))?;
            limits.nodes = Some(n);
        } else {
            let parsed = Resources::parse([(key.as_str(), value.as_str())])
                .map_err(|e| format!("spec.limits.{key}: {e}"))?;
            let dim = ResourceName::from(key.as_str());
            limits.resources.insert(dim.clone(), parsed.get(&dim));
        }
    }
    template.remaining = limits;
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_yaml("test.yaml", text).unwrap();
        m
    }

    #[test]
    fn requests_default_to_limits_and_init_containers_take_their_peak() {
        let m = read(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  initContainers:
    - {name: migrate, image: x, resources: {requests: {cpu: "2", memory: 1Gi}}}
    - {name: proxy, image: x, restartPolicy: Always, resources: {requests: {cpu: 100m, memory: 64Mi}}}
  containers:
    - {name: a, image: x, resources: {limits: {cpu: 500m, memory: 256Mi}}}
    - {name: b, image: x, resources: {requests: {cpu: 250m}, limits: {cpu: "1", memory: 128Mi}}}
"#,
        );
        let pod = &m.pending[0];
        assert_eq!(pod.name, "default/p");
        // containers: 500m + 250m (request wins over limit) + sidecar 100m = 850m; init peak 2000m wins.
        assert_eq!(pod.requests.get(&ResourceName::Cpu), 2000);
        // memory: 256Mi + 128Mi + 64Mi = 448Mi against init peak 1Gi.
        assert_eq!(pod.requests.get(&ResourceName::Memory), 1 << 30);
        assert_eq!(pod.requests.pods, 1);
    }

    #[test]
    fn workloads_expand_to_replicas_with_their_template_labels() {
        let m = read(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: data}
spec:
  replicas: 3
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: db}}
      containers: [{name: c, image: x, resources: {requests: {cpu: "1"}}}]
"#,
        );
        let names: Vec<&str> = m.pending.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["data/db-0", "data/db-1", "data/db-2"]);
        assert!(m.pending.iter().all(|p| p.per_node_cap() == 1), "self anti-affinity: one per node");
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn unmodelled_constraints_are_warned_about_once_per_pod() {
        let m = read(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: cache}}}
        - {topologyKey: topology.kubernetes.io/zone, labelSelector: {matchLabels: {app: cache}}}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 10
          podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: db}}}
        - weight: 20
          podAffinityTerm: {topologyKey: example.com/rack, labelSelector: {matchLabels: {app: db}}}
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - {topologyKey: topology.kubernetes.io/zone, labelSelector: {matchLabels: {app: p}}}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: p}}}
    nodeAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 50
          preference: {matchExpressions: [{key: karpenter.sh/capacity-type, operator: In, values: [spot]}]}
  containers: [{name: c, image: x, ports: [{containerPort: 80, hostPort: 80}]}]
"#,
        );
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert_eq!(m.pending[0].preferred_affinity.len(), 1);
        assert_eq!(m.pending[0].preferred_affinity[0].0, 50);
        assert!(m.warnings[0].contains("preferred pod affinity on example.com/rack"), "{:?}", m.warnings);
        // The host port is modelled: the pod repels others using it, itself included.
        let pod = &m.pending[0];
        assert_eq!(pod.zone_affinity, [BTreeMap::from([("app".to_owned(), "cache".to_owned())])]);
        assert_eq!(pod.zone_anti_affinity, [BTreeMap::from([("app".to_owned(), "p".to_owned())])]);
        assert_eq!(pod.hostname_affinity, [BTreeMap::from([("app".to_owned(), "cache".to_owned())])]);
        assert_eq!(
            pod.preferred_pod_affinity,
            [(10, PodAffinityTerm::new(labels::HOSTNAME, &[("app", "db")]))]
        );
        assert_eq!(
            pod.preferred_pod_anti_affinity,
            [(100, PodAffinityTerm::new(labels::HOSTNAME, &[("app", "p")]))]
        );
        assert_eq!(pod.per_node_cap(), 1);
        assert!(
            pod.repels(&[(cartwright_binpack::solver::host_port_label("TCP", 80), "used".to_owned())].into())
        );
    }

    #[test]
    fn bound_volumes_pin_pods_to_where_the_volume_can_be_mounted() {
        let m = read(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-a}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: topology.kubernetes.io/zone, operator: In, values: [us-east-1a]}]
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-b, labels: {topology.kubernetes.io/zone: us-east-1b}}
spec: {capacity: {storage: 10Gi}, accessModes: [ReadWriteOnce]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-db-0, namespace: prod}
spec: {volumeName: pv-a, accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data-db-1, namespace: prod}
spec: {volumeName: pv-b, accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: prod}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c, image: x}]}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Gi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: prod}
spec:
  nodeSelector: {kubernetes.io/arch: arm64}
  volumes: [{name: d, persistentVolumeClaim: {claimName: data-db-1}}]
  containers: [{name: c, image: x}]
"#,
        );
        let pods = m.pending_with_volumes();
        let zone_of = |name: &str| {
            let pod = pods.iter().find(|p| p.name == name).unwrap();
            let zones: Vec<bool> = ["us-east-1a", "us-east-1b"]
                .iter()
                .map(|z| {
                    pod.affinity.matches_labels(
                        &[
                            (labels::ZONE.to_owned(), (*z).to_owned()),
                            (labels::ARCH.to_owned(), "arm64".to_owned()),
                        ]
                        .into(),
                    )
                })
                .collect();
            zones
        };
        assert_eq!(zone_of("prod/db-0"), [true, false], "pv-a's node affinity");
        assert_eq!(zone_of("prod/db-1"), [false, true], "pv-b's zone label");
        assert_eq!(zone_of("prod/db-2"), [true, true], "no bound claim yet: anywhere");
        assert_eq!(zone_of("prod/reader"), [false, true]);
        let reader = pods.iter().find(|p| p.name == "prod/reader").unwrap();
        assert!(
            !reader.affinity.matches_labels(
                &[
                    (labels::ZONE.to_owned(), "us-east-1b".to_owned()),
                    (labels::ARCH.to_owned(), "amd64".to_owned())
                ]
                .into()
            ),
            "its own node selector still holds"
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn existing_nodes_carry_their_pods_and_charge_their_nodepool_limits() {
        let m = read(
            r#"
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: pool}
spec:
  limits: {cpu: 10, nodes: "3"}
  template: {spec: {requirements: []}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {karpenter.sh/nodepool: pool}}
spec: {taints: [{key: dedicated, value: db, effect: NoSchedule}]}
status:
  capacity: {cpu: "4", memory: 16Gi, pods: "58"}
  allocatable: {cpu: 3920m, memory: 15Gi, pods: "58"}
---
apiVersion: v1
kind: Pod
metadata: {name: bound, labels: {app: x}}
spec:
  nodeName: n1
  containers: [{name: c, image: x, resources: {requests: {cpu: "1"}}}]
---
apiVersion: v1
kind: Service
metadata: {name: svc}
"#,
        );
        assert_eq!(m.skipped, ["Service svc"]);
        let catalog = Catalog::new("test", vec![], vec![]);
        let problem = m.to_problem(catalog);
        let node = &problem.existing[0];
        assert_eq!(node.requested.get(&ResourceName::Cpu), 1000);
        assert_eq!(node.taints.len(), 1);
        assert_eq!(node.nodepool.as_deref(), Some("pool"));
        assert_eq!(node.pod_labels[0].get("app").map(String::as_str), Some("x"));
        assert_eq!(node.labels.get(labels::HOSTNAME).map(String::as_str), Some("n1"));
        let pool = &problem.nodepools[0];
        assert_eq!(pool.remaining.resources[&ResourceName::Cpu], 6000, "10 cpu minus the node's capacity 4");
        assert_eq!(pool.remaining.nodes, Some(2));
    }

    #[test]
    fn spread_policies_default_as_in_kubernetes_and_are_read_when_given() {
        let m = read(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: p, labels: {app: p}}
spec:
  topologySpreadConstraints:
    - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: p}}}
    - {maxSkew: 2, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: p}},
       nodeAffinityPolicy: Ignore, nodeTaintsPolicy: Honor}
  containers: [{name: c, image: x}]
"#,
        );
        let spreads = &m.pending[0].topology_spread;
        assert!(spreads[0].honor_node_affinity && !spreads[0].honor_node_taints);
        assert!(!spreads[1].honor_node_affinity && spreads[1].honor_node_taints);
    }

    #[test]
    fn errors_name_the_source_document_object_and_field() {
        let mut m = Manifests::default();
        let err = m
            .add_yaml(
                "pods.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec: {containers: []}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  tolerations: [{key: k, operator: Maybe}]\n  containers: []\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pods.yaml: document 2 (Pod bad): spec.tolerations[0]"), "{err}");
        let err = m
            .add_yaml(
                "spread.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec:\n  topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Sometimes}]\n  containers: []\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodeTaintsPolicy `Sometimes` is not one of Honor, Ignore"), "{err}");
        let err =
            m.add_yaml("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 5}\n");
        let err = err.unwrap_err().to_string();
        assert!(err.contains("containers"), "{err}");
    }
}
