//! HPA headroom in the controller: the state index's HPA models, fed from the HPAs' status and their
//! targets (Deployments, StatefulSets), and the NodePools' headroom settings. The decisions are
//! `cartwright-core::headroom`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use cartwright_api::capacitybuffer::{self, CapacityBuffer};
use cartwright_api::manifests::pod_spec;
use cartwright_api::nodepool::NodePool;
use cartwright_binpack::Price;
use cartwright_binpack::Resources;
use cartwright_binpack::solver::PodSpec;
use cartwright_core::headroom::{HpaModel, Observation, PoolHeadroom, Settings};
use cartwright_core::hpa::Millis;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{PodTemplate, PodTemplateSpec};
use kube::ResourceExt;

/// NodePool annotation: `"false"` keeps headroom off the pool (its nodes' room and new nodes).
pub const ENABLED_ANNOTATION: &str = "cartwright.sh/headroom";
/// NodePool annotation: at most this many dollars per hour of headroom nodes (`"2.50"`).
pub const BUDGET_PER_HOUR_ANNOTATION: &str = "cartwright.sh/headroom-budget-per-hour";
/// NodePool annotation: headroom nodes cost at most this percentage of the pool's nodes (`"10"`).
pub const BUDGET_PERCENT_ANNOTATION: &str = "cartwright.sh/headroom-budget-percent";
/// NodeClaim annotation on a node launched for headroom: the HPAs it was launched for.
pub const CLAIM_ANNOTATION: &str = "cartwright.sh/headroom-for";

/// The HPAs as headroom sees them.
#[derive(Debug, Default)]
pub struct HpaIndex {
    pub settings: Settings,
    models: BTreeMap<String, HpaModel>,
    /// The resourceVersions of each HPA and its target last read: an HPA status write is one observation;
    /// a change of the target (its replicas, its pods) is read without one.
    seen: BTreeMap<String, (String, String)>,
    /// HPAs whose spec or target could not be read, with why (logged once per change).
    problems: BTreeMap<String, String>,
}

/// A scale target's pod template, replicas and resourceVersion.
fn target<'a>(
    hpa: &HorizontalPodAutoscaler,
    deployments: &'a [Arc<Deployment>],
    statefulsets: &'a [Arc<StatefulSet>],
) -> Result<(&'a PodTemplateSpec, i32, String), String> {
    let reference = &hpa.spec.scale_target_ref;
    let namespace = hpa.namespace().unwrap_or_default();
    scalable(&namespace, &reference.kind, &reference.name, deployments, statefulsets)
        .map_err(|e| format!("its target: {e}"))
}

impl HpaIndex {
    pub fn new(settings: Settings) -> HpaIndex {
        HpaIndex { settings, ..HpaIndex::default() }
    }

    /// Brings the models up to date: every HPA whose status changed since the last call is observed, and
    /// every HPA whose target changed gets its replicas and pod shape again.
    pub fn update(
        &mut self,
        hpas: &[Arc<HorizontalPodAutoscaler>],
        deployments: &[Arc<Deployment>],
        statefulsets: &[Arc<StatefulSet>],
        now: Millis,
    ) {
        let mut live = BTreeMap::new();
        for hpa in hpas {
            let key = format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any());
            live.insert(key.clone(), ());
            let version = hpa.resource_version().unwrap_or_default();
            let read = cartwright_api::hpa::spec(&hpa.spec, &format!("HorizontalPodAutoscaler {key}"))
                .and_then(|spec| {
                    let (template, replicas, target_version) = target(hpa, deployments, statefulsets)?;
                    Ok((spec, template, replicas, target_version))
                });
            let (spec, template, replicas, target_version) = match read {
                Ok(read) => read,
                Err(e) => {
                    self.forget(&key, e);
                    continue;
                }
            };
            let last = self.seen.get(&key);
            let observe = last.is_none_or(|(v, _)| *v != version);
            if !observe && last.is_some_and(|(_, t)| *t == target_version) {
                continue;
            }
            self.seen.insert(key.clone(), (version, target_version));
            let pod =
                template.spec.as_ref().ok_or_else(|| "its target has no pod template".to_owned()).and_then(
                    |pod_spec_of| {
                        let labels =
                            template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
                        pod_spec(&key, pod_spec_of, labels).map(|(pod, _)| pod)
                    },
                );
            let pod = match pod {
                Ok(pod) => pod,
                Err(e) => {
                    self.forget(&key, e);
                    continue;
                }
            };
            self.problems.remove(&key);
            let model = self
                .models
                .entry(key.clone())
                .or_insert_with(|| HpaModel::new(&key, spec.clone(), pod.clone(), replicas));
            model.spec = spec;
            model.pod = pod;
            model.replicas = replicas;
            if !observe {
                continue;
            }
            let status = hpa.status.as_ref();
            let current = status.and_then(|s| s.current_replicas).unwrap_or(replicas);
            if let Some(ratio) = cartwright_api::hpa::ratio(hpa).filter(|_| replicas > 0) {
                model.observe(Observation {
                    at: now,
                    // The demand over the target's replicas (the ratio is measured over the current ones).
                    ratio: ratio * f64::from(current) / f64::from(replicas),
                    replicas,
                    desired: status.map_or(replicas, |s| s.desired_replicas),
                });
            }
        }
        self.models.retain(|k, _| live.contains_key(k));
        self.seen.retain(|k, _| live.contains_key(k));
        self.problems.retain(|k, _| live.contains_key(k));
    }

    /// An HPA that cannot be read (told once per problem) has no model.
    fn forget(&mut self, key: &str, problem: String) {
        if self.problems.get(key) != Some(&problem) {
            tracing::warn!(hpa = key, problem, "no headroom for this HPA");
            self.problems.insert(key.to_owned(), problem);
        }
        self.models.remove(key);
        self.seen.remove(key);
    }

    pub fn models(&self) -> impl Iterator<Item = &HpaModel> {
        self.models.values()
    }

    /// Every HPA's virtual pods at `now`.
    pub fn virtual_pods(&self, now: Millis) -> Vec<PodSpec> {
        self.models.values().flat_map(|m| m.virtual_pods(now, &self.settings)).collect()
    }
}

/// A scalable workload (a `scaleTargetRef` or `scalableRef`): its pod template, replicas and
/// resourceVersion.
fn scalable<'a>(
    namespace: &str,
    kind: &str,
    name: &str,
    deployments: &'a [Arc<Deployment>],
    statefulsets: &'a [Arc<StatefulSet>],
) -> Result<(&'a PodTemplateSpec, i32, String), String> {
    let same = |ns: Option<String>, n: String| ns.unwrap_or_default() == namespace && n == name;
    let version = |v: Option<String>| v.unwrap_or_default();
    match kind {
        "Deployment" => deployments
            .iter()
            .find(|d| same(d.namespace(), d.name_any()))
            .map(|d| (&d.spec.template, d.spec.replicas.unwrap_or(1), version(d.resource_version())))
            .ok_or_else(|| format!("Deployment {namespace}/{name} does not exist")),
        "StatefulSet" => statefulsets
            .iter()
            .find(|s| same(s.namespace(), s.name_any()))
            .map(|s| (&s.spec.template, s.spec.replicas.unwrap_or(1), version(s.resource_version())))
            .ok_or_else(|| format!("StatefulSet {namespace}/{name} does not exist")),
        other => Err(format!("kind {other} is not a Deployment or StatefulSet")),
    }
}

/// The CapacityBuffers' chunks as virtual pods (`<namespace>/<buffer>~buffer-<i>`), and the buffers that
/// could not be read, with why.
pub fn buffer_pods(
    buffers: &[Arc<CapacityBuffer>],
    templates: &[Arc<PodTemplate>],
    deployments: &[Arc<Deployment>],
    statefulsets: &[Arc<StatefulSet>],
) -> (Vec<PodSpec>, Vec<String>) {
    let mut pods = Vec::new();
    let mut problems = Vec::new();
    for buffer in buffers {
        let namespace = buffer.namespace().unwrap_or_default();
        let key = format!("{namespace}/{}", buffer.name_any());
        let spec = &buffer.spec;
        if spec.provisioning_strategy.as_deref().is_some_and(|s| s != capacitybuffer::ACTIVE_CAPACITY) {
            continue; // another autoscaler's strategy
        }
        let shape = match (&spec.pod_template_ref, &spec.scalable_ref) {
            (Some(t), None) => templates
                .iter()
                .find(|p| p.namespace().unwrap_or_default() == namespace && p.name_any() == t.name)
                .and_then(|p| p.template.as_ref())
                .map(|t| (t, None))
                .ok_or_else(|| format!("PodTemplate {namespace}/{} does not exist", t.name)),
            (None, Some(r)) => scalable(&namespace, &r.kind, &r.name, deployments, statefulsets)
                .map(|(t, replicas, _)| (t, Some(replicas)))
                .map_err(|e| format!("scalableRef: {e}")),
            _ => Err("give exactly one of podTemplateRef and scalableRef".to_owned()),
        };
        let read = shape.and_then(|(template, replicas)| {
            let pod_spec_of = template.spec.as_ref().ok_or("its pod template has no spec")?;
            let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            let (pod, _) = pod_spec(&key, pod_spec_of, labels)?;
            let limits = match &spec.limits {
                None => Resources::new(),
                Some(l) => Resources::parse(l.iter().map(|(k, v)| (k.as_str(), v.0.as_str())))
                    .map_err(|e| format!("spec.limits: {e}"))?,
            };
            let fits = |n: i64| limits.iter().all(|(dim, limit)| pod.requests.get(&dim) * n <= limit);
            let count = capacitybuffer::chunks(spec, replicas, fits)
                .ok_or("set replicas, percentage (with scalableRef) or limits")?;
            Ok((pod, count))
        });
        match read {
            Ok((pod, count)) => {
                pods.extend((0..count).map(|i| PodSpec { name: format!("{key}~buffer-{i}"), ..pod.clone() }))
            }
            Err(e) => problems.push(format!("CapacityBuffer {key}: {e}")),
        }
    }
    (pods, problems)
}

/// Each NodePool's headroom settings from its annotations; a bad value is reported and ignored.
pub fn pool_settings(
    pools: &BTreeMap<String, Arc<NodePool>>,
) -> (BTreeMap<String, PoolHeadroom>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, pool) in pools {
        let annotations = pool.annotations();
        let mut settings = PoolHeadroom::default();
        if let Some(v) = annotations.get(ENABLED_ANNOTATION) {
            match v.as_str() {
                "true" => {}
                "false" => settings.enabled = false,
                other => errors
                    .push(format!("NodePool {name}: {ENABLED_ANNOTATION}: `{other}` is not true or false")),
            }
        }
        if let Some(v) = annotations.get(BUDGET_PER_HOUR_ANNOTATION) {
            match v.parse::<f64>() {
                Ok(usd) if usd.is_finite() && usd >= 0.0 => {
                    settings.budget_per_hour = Some(Price((usd * Price::NANOS_PER_USD as f64).round() as u64));
                }
                _ => errors.push(format!(
                    "NodePool {name}: {BUDGET_PER_HOUR_ANNOTATION}: `{v}` is not a non-negative number of dollars"
                )),
            }
        }
        if let Some(v) = annotations.get(BUDGET_PERCENT_ANNOTATION) {
            match v.trim_end_matches('%').parse::<u32>() {
                Ok(p) => settings.budget_percent = Some(p),
                _ => errors
                    .push(format!("NodePool {name}: {BUDGET_PERCENT_ANNOTATION}: `{v}` is not a percentage")),
            }
        }
        out.insert(name.clone(), settings);
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                        {"name": "web", "image": "web", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}}
            }))
            .unwrap(),
        )
    }

    fn hpa(version: &str, utilization: i32) -> Arc<HorizontalPodAutoscaler> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": version},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                    "minReplicas": 2, "maxReplicas": 12,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 50}}}]},
                "status": {"currentReplicas": 4, "desiredReplicas": 4, "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": utilization}}}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn status_writes_become_observations_and_a_rising_metric_virtual_pods_shaped_like_the_target() {
        let mut index = HpaIndex::new(Settings::default());
        let deployments = [deployment()];
        for (i, utilization) in [50, 55, 60, 65].into_iter().enumerate() {
            let at = i as Millis * 15_000;
            index.update(&[hpa(&i.to_string(), utilization)], &deployments, &[], at);
            // The same version again is not a new observation.
            index.update(&[hpa(&i.to_string(), utilization)], &deployments, &[], at + 1);
        }
        let model = index.models().next().unwrap();
        assert_eq!(model.history().count(), 4);
        assert_eq!((model.name.as_str(), model.replicas), ("shop/web", 4));
        // Demand 4 → 5.2 pods in 45 s: 6.8 a minute later, so 7 pods: 3 more than the 4 running.
        let pods = index.virtual_pods(45_000);
        assert_eq!(pods.len(), 3, "{:?}", pods.iter().map(|p| &p.name).collect::<Vec<_>>());
        assert_eq!(pods[0].name, "shop/web~headroom-0");
        assert_eq!(pods[0].labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pods[0].requests, index.models().next().unwrap().pod.requests);
        // The target scaled (its resourceVersion moved) without a new HPA status: its replicas are read
        // again, without an observation, and the headroom is counted from them.
        let mut scaled = (*deployment()).clone();
        scaled.spec.replicas = Some(7);
        scaled.metadata.resource_version = Some("d2".into());
        index.update(&[hpa("3", 65)], &[Arc::new(scaled)], &[], 50_000);
        let model = index.models().next().unwrap();
        assert_eq!((model.replicas, model.history().count()), (7, 4));
        assert_eq!(index.virtual_pods(50_000).len(), 0, "7 pods cover a demand of 6.8");
        // An HPA whose target is gone is dropped.
        index.update(&[hpa("9", 90)], &[], &[], 60_000);
        assert_eq!(index.models().count(), 0);
        assert!(index.virtual_pods(60_000).is_empty());
    }

    #[test]
    fn capacity_buffers_become_chunks_shaped_like_their_workload_or_template() {
        let buffer = |spec: serde_json::Value| -> Arc<CapacityBuffer> {
            Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": "spare", "namespace": "shop"}, "spec": spec}),
                )
                .unwrap(),
            )
        };
        let template: Arc<PodTemplate> = Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "chunk", "namespace": "shop"},
                "template": {"spec": {"containers": [{"name": "c", "image": "pause",
                    "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}}}))
            .unwrap(),
        );
        let buffers = [
            // 50 % of the Deployment's 4 replicas: 2 chunks of its pods.
            buffer(
                json!({"scalableRef": {"apiGroup": "apps", "kind": "Deployment", "name": "web"}, "percentage": 50}),
            ),
            // As many 2-cpu chunks as 5 cpus allow: 2.
            buffer(json!({"podTemplateRef": {"name": "chunk"}, "limits": {"cpu": "5"}})),
            // Another autoscaler's strategy: ignored.
            buffer(
                json!({"provisioningStrategy": "buffer.gke.io/standby-capacity", "podTemplateRef": {"name": "chunk"}, "replicas": 9}),
            ),
            // Broken: named, no pods.
            buffer(json!({"podTemplateRef": {"name": "missing"}, "replicas": 1})),
        ];
        let (pods, problems) = buffer_pods(&buffers, &[template], &[deployment()], &[]);
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["shop/spare~buffer-0", "shop/spare~buffer-1", "shop/spare~buffer-0", "shop/spare~buffer-1"]
        );
        assert_eq!(pods[0].labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(pods[2].requests.get(&cartwright_binpack::ResourceName::Cpu), 2000);
        assert_eq!(problems, ["CapacityBuffer shop/spare: PodTemplate shop/missing does not exist"]);
    }

    #[test]
    fn nodepool_annotations_set_headroom_and_bad_values_are_named() {
        let pool = |annotations: serde_json::Value| -> Arc<NodePool> {
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "p", "annotations": annotations},
                    "spec": {"template": {"spec": {"requirements": [], "nodeClassRef": {"group": "g", "kind": "k", "name": "n"}}}}}))
                .unwrap(),
            )
        };
        let pools = BTreeMap::from([
            ("off".to_owned(), pool(json!({ENABLED_ANNOTATION: "false"}))),
            (
                "capped".to_owned(),
                pool(json!({BUDGET_PER_HOUR_ANNOTATION: "2.5", BUDGET_PERCENT_ANNOTATION: "10%"})),
            ),
            ("bad".to_owned(), pool(json!({ENABLED_ANNOTATION: "maybe", BUDGET_PERCENT_ANNOTATION: "ten"}))),
        ]);
        let (settings, errors) = pool_settings(&pools);
        assert!(!settings["off"].enabled);
        assert_eq!(settings["capped"].budget_per_hour, Some(Price(2_500_000_000)));
        assert_eq!(settings["capped"].budget_percent, Some(10));
        assert!(settings["bad"].enabled, "a bad value is ignored");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("cartwright.sh/headroom: `maybe` is not true or false"), "{errors:?}");
    }
}
