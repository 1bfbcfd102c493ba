//! `autoscaling/v2` HorizontalPodAutoscalers in the algorithm's terms (`cartwright-core::hpa`): bounds and
//! behavior (Kubernetes' defaults filled in), and the metric ratio their status reports. The simulator and
//! the controller read HPAs through here.

use cartwright_binpack::Quantity;
use cartwright_core::hpa::{Behavior, HpaSpec, Policy, ScalingRules, SelectPolicy};
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricStatus,
    MetricTarget, MetricValueStatus,
};

/// The default target when an HPA names no metric: 80 % cpu.
pub const DEFAULT_CPU_UTILIZATION: f64 = 80.0;

/// An HPA's spec as the algorithm takes it. `field` prefixes error messages (`workloads[0].hpa`,
/// `HorizontalPodAutoscaler shop/web`). The target utilisation is the cpu `Utilization` target (80 when
/// there is none).
pub fn spec(spec: &HorizontalPodAutoscalerSpec, field: &str) -> Result<HpaSpec, String> {
    let mut target = DEFAULT_CPU_UTILIZATION;
    for (j, metric) in spec.metrics.iter().flatten().enumerate() {
        if let Some(r) = metric.resource.as_ref().filter(|r| metric.type_ == "Resource" && r.name == "cpu")
            && r.target.type_ == "Utilization"
        {
            target =
                f64::from(r.target.average_utilization.ok_or(format!(
                    "{field}.spec.metrics[{j}].resource.target.averageUtilization: missing"
                ))?);
        }
    }
    if target <= 0.0 {
        return Err(format!("{field}: target utilisation must be positive"));
    }
    let min = spec.min_replicas.unwrap_or(1);
    if min < 1 || spec.max_replicas < min {
        return Err(format!("{field}.spec: need 1 <= minReplicas <= maxReplicas"));
    }
    let behavior = match &spec.behavior {
        None => None,
        Some(b) => Some(Behavior {
            scale_up: rules(b.scale_up.as_ref(), ScalingRules::default_scale_up(), field, "scaleUp")?,
            scale_down: rules(b.scale_down.as_ref(), ScalingRules::default_scale_down(), field, "scaleDown")?,
        }),
    };
    Ok(HpaSpec { min_replicas: min, max_replicas: spec.max_replicas, target_utilization: target, behavior })
}

fn rules(
    r: Option<&HPAScalingRules>,
    default: ScalingRules,
    field: &str,
    dir: &str,
) -> Result<ScalingRules, String> {
    let Some(r) = r else { return Ok(default) };
    let field = format!("{field}.spec.behavior.{dir}");
    let select_policy = match r.select_policy.as_deref() {
        None | Some("Max") => SelectPolicy::Max,
        Some("Min") => SelectPolicy::Min,
        Some("Disabled") => SelectPolicy::Disabled,
        Some(other) => return Err(format!("{field}.selectPolicy: `{other}` is not Max, Min or Disabled")),
    };
    let policies = match &r.policies {
        None => default.policies.clone(),
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let period_seconds = u32::try_from(p.period_seconds)
                    .ok()
                    .filter(|s| (1..=1800).contains(s))
                    .ok_or(format!("{field}.policies[{j}].periodSeconds: must be in 1..1800"))?;
                match p.type_.as_str() {
                    "Pods" => Ok(Policy::Pods { value: p.value, period_seconds }),
                    "Percent" => Ok(Policy::Percent { value: p.value, period_seconds }),
                    other => Err(format!("{field}.policies[{j}].type: `{other}` is not Pods or Percent")),
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let window = match r.stabilization_window_seconds {
        None => default.stabilization_window_seconds,
        Some(w) => u32::try_from(w)
            .ok()
            .filter(|w| *w <= 3600)
            .ok_or(format!("{field}.stabilizationWindowSeconds: must be in 0..3600"))?,
    };
    Ok(ScalingRules {
        stabilization_window_seconds: window,
        select_policy,
        policies,
        tolerance: r
            .tolerance
            .as_ref()
            .map(|q| q.0.parse::<f64>())
            .transpose()
            .map_err(|_| format!("{field}.tolerance: not a number"))?,
    })
}

/// A quantity as a number of units (fractions kept to thousandths).
fn number(q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity) -> Option<f64> {
    Some(Quantity::parse(&q.0).ok()?.to_milli_ceil().ok()? as f64 / 1000.0)
}

/// current / target for one metric's target and its status value.
fn target_ratio(target: &MetricTarget, current: &MetricValueStatus) -> Option<f64> {
    let ratio = match target.type_.as_str() {
        "Utilization" => f64::from(current.average_utilization?) / f64::from(target.average_utilization?),
        "AverageValue" => number(current.average_value.as_ref()?)? / number(target.average_value.as_ref()?)?,
        "Value" => number(current.value.as_ref()?)? / number(target.value.as_ref()?)?,
        _ => return None,
    };
    ratio.is_finite().then_some(ratio)
}

/// The ratio of one spec metric, from the status entry of the same kind and name.
fn metric_ratio(spec: &MetricSpec, statuses: &[MetricStatus]) -> Option<f64> {
    statuses.iter().filter(|s| s.type_ == spec.type_).find_map(|s| match spec.type_.as_str() {
        "Resource" => {
            let (want, have) = (spec.resource.as_ref()?, s.resource.as_ref()?);
            (want.name == have.name).then(|| target_ratio(&want.target, &have.current)).flatten()
        }
        "ContainerResource" => {
            let (want, have) = (spec.container_resource.as_ref()?, s.container_resource.as_ref()?);
            (want.name == have.name && want.container == have.container)
                .then(|| target_ratio(&want.target, &have.current))
                .flatten()
        }
        "Pods" => {
            let (want, have) = (spec.pods.as_ref()?, s.pods.as_ref()?);
            (want.metric.name == have.metric.name)
                .then(|| target_ratio(&want.target, &have.current))
                .flatten()
        }
        "Object" => {
            let (want, have) = (spec.object.as_ref()?, s.object.as_ref()?);
            (want.metric.name == have.metric.name && want.described_object.name == have.described_object.name)
                .then(|| target_ratio(&want.target, &have.current))
                .flatten()
        }
        "External" => {
            let (want, have) = (spec.external.as_ref()?, s.external.as_ref()?);
            (want.metric.name == have.metric.name)
                .then(|| target_ratio(&want.target, &have.current))
                .flatten()
        }
        _ => None,
    })
}

/// The HPA's metric ratio now — current over target, the highest over its metrics, as the HPA scales on
/// the highest — from its status; `None` while the status reports no metric it can be matched with.
pub fn ratio(hpa: &HorizontalPodAutoscaler) -> Option<f64> {
    let statuses = hpa.status.as_ref()?.current_metrics.as_deref().unwrap_or_default();
    let default_cpu;
    let specs: &[MetricSpec] = match hpa.spec.metrics.as_deref() {
        Some(m) if !m.is_empty() => m,
        _ => {
            default_cpu = [serde_json::from_value::<MetricSpec>(serde_json::json!({
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}
            }))
            .ok()?];
            &default_cpu
        }
    };
    specs.iter().filter_map(|m| metric_ratio(m, statuses)).reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hpa(value: serde_json::Value) -> HorizontalPodAutoscaler {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_ratio_is_the_highest_current_over_target_of_the_metrics() {
        let h = hpa(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "maxReplicas": 10,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
                    {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue", "averageValue": "100"}}},
                    {"type": "External", "external": {"metric": {"name": "queue"}, "target": {"type": "Value", "value": "30"}}}
                ]
            },
            "status": {
                "desiredReplicas": 4,
                "currentMetrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 84}}},
                    {"type": "Pods", "pods": {"metric": {"name": "rps"}, "current": {"averageValue": "150"}}},
                    {"type": "External", "external": {"metric": {"name": "queue"}, "current": {"value": "15"}}}
                ]
            }
        }));
        // cpu 84/70 = 1.2, rps 150/100 = 1.5, queue 15/30 = 0.5.
        assert!((ratio(&h).unwrap() - 1.5).abs() < 1e-9, "{:?}", ratio(&h));
        // No status yet: no ratio.
        let mut fresh = h.clone();
        fresh.status = None;
        assert_eq!(ratio(&fresh), None);
    }

    #[test]
    fn an_hpa_without_metrics_is_read_as_80_percent_cpu() {
        let h = hpa(serde_json::json!({
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10},
            "status": {"desiredReplicas": 2, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 40}}}
            ]}
        }));
        assert!((ratio(&h).unwrap() - 0.5).abs() < 1e-9);
        let s = spec(&h.spec, "HPA web").unwrap();
        assert_eq!((s.min_replicas, s.max_replicas, s.target_utilization, s.behavior), (1, 10, 80.0, None));
    }

    #[test]
    fn behavior_gets_kubernetes_defaults_and_bad_fields_are_named() {
        let h = hpa(serde_json::json!({
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 2, "maxReplicas": 10,
                "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}}}
        }));
        let s = spec(&h.spec, "HPA web").unwrap();
        let b = s.behavior.unwrap();
        assert_eq!(b.scale_up.policies, [Policy::Pods { value: 2, period_seconds: 60 }]);
        assert_eq!(b.scale_down, ScalingRules::default_scale_down());
        let bad = hpa(serde_json::json!({
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 10,
                "behavior": {"scaleDown": {"selectPolicy": "Sometimes"}}}
        }));
        let err = spec(&bad.spec, "HPA web").unwrap_err();
        assert_eq!(
            err,
            "HPA web.spec.behavior.scaleDown.selectPolicy: `Sometimes` is not Max, Min or Disabled"
        );
    }
}
