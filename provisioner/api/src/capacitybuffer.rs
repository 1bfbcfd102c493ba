//! The SIG-Autoscaling `CapacityBuffer` (`autoscaling.x-k8s.io/v1beta1`), which Cluster Autoscaler and
//! Karpenter share: spare capacity as a number of "chunks" shaped like a PodTemplate or a scalable
//! workload's pods. Cartwright reads it (its CRD is installed by whoever ships the API) and keeps the
//! chunks as virtual pods; it does not write its status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The only provisioning strategy Cartwright acts on (the API's default): launch nodes for the buffer.
pub const ACTIVE_CAPACITY: &str = "buffer.x-k8s.io/active-capacity";

/// Spare capacity for chunks of one pod shape.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(group = "autoscaling.x-k8s.io", version = "v1beta1", kind = "CapacityBuffer", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct CapacityBufferSpec {
    /// `buffer.x-k8s.io/active-capacity` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_strategy: Option<String>,
    /// A PodTemplate in the same namespace giving the chunk's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_ref: Option<LocalObjectRef>,
    /// A workload with a scale subresource (Deployment, StatefulSet) whose pods give the chunk's shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalable_ref: Option<ScalableRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Of the scalable workload's replicas, rounded up, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<i32>,
    /// The chunks' total requests stay within these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub limits: Option<BTreeMap<String, Quantity>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectRef {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalableRef {
    #[serde(default)]
    pub api_group: String,
    pub kind: String,
    pub name: String,
}

/// How many chunks a buffer asks for, given the scalable workload's replicas (when it names one), each
/// chunk's requests, and `fits_in_limits(n)` saying whether `n` chunks stay within its limits:
/// the larger of `replicas` and the percentage; with neither, as many as the limits allow; never more
/// than the limits allow. `None` when nothing bounds it (no replicas, no percentage, no limits).
pub fn chunks(
    spec: &CapacityBufferSpec,
    scalable_replicas: Option<i32>,
    fits_in_limits: impl Fn(i64) -> bool,
) -> Option<i64> {
    let from_percentage = match (spec.percentage, scalable_replicas) {
        (Some(p), Some(r)) => Some(((i64::from(p.max(0)) * i64::from(r.max(0)) + 99) / 100).max(1)),
        _ => None,
    };
    let wanted = match (spec.replicas.map(|r| i64::from(r.max(0))), from_percentage) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let has_limits = spec.limits.as_ref().is_some_and(|l| !l.is_empty());
    if !has_limits {
        return wanted;
    }
    // The most chunks within the limits (found by doubling, then bisection), capped by what is wanted.
    let cap = wanted.unwrap_or(100_000);
    if !fits_in_limits(1) || cap == 0 {
        return Some(0);
    }
    let (mut lo, mut hi) = (1_i64, 2_i64);
    while hi <= cap && fits_in_limits(hi) {
        lo = hi;
        hi *= 2;
    }
    let mut hi = hi.min(cap + 1);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits_in_limits(mid) { lo = mid } else { hi = mid }
    }
    Some(lo.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(replicas: Option<i32>, percentage: Option<i32>, limits: bool) -> CapacityBufferSpec {
        CapacityBufferSpec {
            replicas,
            percentage,
            limits: limits.then(|| BTreeMap::from([("cpu".to_owned(), Quantity("10".into()))])),
            ..CapacityBufferSpec::default()
        }
    }

    #[test]
    fn chunks_take_the_larger_of_replicas_and_percentage_within_the_limits() {
        let within_10_cpus_of_2 = |n: i64| n * 2 <= 10;
        assert_eq!(chunks(&spec(Some(3), None, false), None, |_| true), Some(3));
        // 10 % of 25 replicas is 2.5: 3.
        assert_eq!(chunks(&spec(None, Some(10), false), Some(25), |_| true), Some(3));
        // At least one.
        assert_eq!(chunks(&spec(None, Some(1), false), Some(4), |_| true), Some(1));
        assert_eq!(chunks(&spec(Some(2), Some(50), false), Some(10), |_| true), Some(5));
        // Limits cap it; alone they ask for as many as fit.
        assert_eq!(chunks(&spec(Some(8), None, true), None, within_10_cpus_of_2), Some(5));
        assert_eq!(chunks(&spec(None, None, true), None, within_10_cpus_of_2), Some(5));
        assert_eq!(chunks(&spec(Some(3), None, true), None, within_10_cpus_of_2), Some(3));
        // Nothing bounds it.
        assert_eq!(chunks(&spec(None, None, false), None, |_| true), None);
        // A percentage without a scalable workload is nothing.
        assert_eq!(chunks(&spec(None, Some(10), false), None, |_| true), None);
    }

    #[test]
    fn the_upstream_shape_reads() {
        let buffer: CapacityBuffer = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling.x-k8s.io/v1beta1", "kind": "CapacityBuffer",
            "metadata": {"name": "web-buffer", "namespace": "shop"},
            "spec": {"scalableRef": {"apiGroup": "apps", "kind": "Deployment", "name": "web"},
                "percentage": 20, "limits": {"cpu": "8"}},
            "status": {"replicas": 2}
        }))
        .unwrap();
        assert_eq!(buffer.spec.scalable_ref.unwrap().name, "web");
        assert_eq!(buffer.spec.percentage, Some(20));
    }
}
