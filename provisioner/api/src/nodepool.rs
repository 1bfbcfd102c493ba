//! `NodePool` (`cartwright.sh/v1`): a template for the nodes Cartwright may launch, field-compatible with
//! Karpenter's `karpenter.sh/v1` NodePool so its manifests work after changing `apiVersion`.

use std::collections::BTreeMap;

use cartwright_core::disruption::{self, Policy, PoolPolicy, parse_duration};
use cartwright_core::hpa::Millis;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group of Cartwright's core resources.
pub const GROUP: &str = "cartwright.sh";
/// Karpenter's group, accepted on input unchanged.
pub const KARPENTER_GROUP: &str = "karpenter.sh";

/// The annotation a NodeClaim carries with [`template_hash`] of its NodePool at launch; a different hash
/// now means the node drifted.
pub const HASH_ANNOTATION: &str = "cartwright.sh/nodepool-hash";

/// A hash of the NodePool's static template fields (labels, annotations, taints, startup taints, node
/// class): what a node launched from it carries. Requirements are checked against the node's labels
/// instead, and `expireAfter` / `terminationGracePeriod` apply to existing nodes without replacing
/// them — as in Karpenter, none of those three is hashed.
pub fn template_hash(spec: &NodePoolSpec) -> String {
    use sha2::Digest;
    let mut template = spec.template.clone();
    template.spec.requirements.clear();
    template.spec.expire_after = None;
    template.spec.termination_grace_period = None;
    let text = serde_json::to_string(&template).expect("a template serializes");
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// What nodes a NodePool launches, how they are disrupted, and how many it may own.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cartwright.sh",
    version = "v1",
    kind = "NodePool",
    plural = "nodepools",
    shortname = "np",
    status = "NodePoolStatus",
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.resources.nodes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePoolSpec {
    /// The NodeClaim template: labels, requirements, taints of every node this pool launches.
    pub template: NodeClaimTemplate,
    /// How nodes of this pool may be disrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "0s",
        "budgets": [{"nodes": "10%"}]}))]
    pub disruption: Option<Disruption>,
    /// Resource totals (cpu, memory, nodes, any resource) the pool's nodes may never exceed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, IntOrQuantity>,
    /// Priority among NodePools (1..100): higher is tried first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
}

/// `spec.template`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClaimTemplate {
    /// Labels and annotations copied onto every NodeClaim and Node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    pub spec: NodeClaimTemplateSpec,
}

/// `spec.template.metadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec.template.spec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClaimTemplateSpec {
    /// Node selector requirements every node of the pool satisfies (Karpenter operators, `minValues`).
    #[serde(default)]
    #[schemars(length(max = 100))]
    pub requirements: Vec<NodeSelectorRequirementWithMinValues>,
    /// Taints put on every node; pods must tolerate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// Taints a daemon removes once the node is ready; pods need not tolerate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub startup_taints: Vec<Taint>,
    /// Node lifetime before it is replaced (`720h` by default, or `Never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(([0-9]+(s|m|h))+|Never)$"), extend("default" = "720h"))]
    pub expire_after: Option<String>,
    /// Longest a drain may take before pods are deleted regardless of PDBs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub termination_grace_period: Option<String>,
    /// The cloud-specific node class (an `EC2NodeClass`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class_ref: Option<NodeClassRef>,
}

/// A node selector requirement with Karpenter's `minValues`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.operator != 'In' || (has(self.values) && self.values.size() != 0)",
     "message": "requirements with operator 'In' must have a value defined"},
    {"rule": "!(self.operator in ['Gt', 'Lt', 'Gte', 'Lte']) || (has(self.values) && self.values.size() == 1 && int(self.values[0]) >= 0)",
     "message": "requirements with operator 'Gt', 'Lt', 'Gte' or 'Lte' must have a single non-negative integer value"},
    {"rule": "!(self.operator == 'In' && has(self.minValues)) || self.values.size() >= self.minValues",
     "message": "requirements with 'minValues' must have at least that many values specified in the 'values' field"},
]))]
pub struct NodeSelectorRequirementWithMinValues {
    /// The label key.
    #[schemars(length(min = 1, max = 316))]
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte, Lte.
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"]))]
    pub operator: String,
    /// The values (for In, NotIn: a set; for Gt, Lt, Gte, Lte: one integer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// At least this many distinct values of the key must remain among a node's launch options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub min_values: Option<u32>,
}

/// A node taint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Taint {
    /// The taint key.
    #[schemars(length(min = 1))]
    pub key: String,
    /// The taint value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// NoSchedule, PreferNoSchedule or NoExecute.
    #[schemars(extend("enum" = ["NoSchedule", "PreferNoSchedule", "NoExecute"]))]
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<String>,
}

/// `spec.template.spec.nodeClassRef`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeClassRef {
    /// The API group of the node class (`aws.cartwright.sh`).
    #[schemars(length(min = 1))]
    pub group: String,
    /// Its kind (`EC2NodeClass`).
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Its name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// `spec.disruption`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.budgets) || self.budgets.all(x, has(x.schedule) == has(x.duration))",
     "message": "'schedule' must be set with 'duration'"},
]))]
pub struct Disruption {
    /// `WhenEmpty` or `WhenEmptyOrUnderutilized` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["WhenEmpty", "WhenEmptyOrUnderutilized"], "default" = "WhenEmptyOrUnderutilized"))]
    pub consolidation_policy: Option<String>,
    /// How long a node must be consolidatable before it is acted on (a duration or `Never`; `0s` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(([0-9]+(s|m|h))+|Never)$"), extend("default" = "0s"))]
    pub consolidate_after: Option<String>,
    /// How many nodes may be disrupted at once (the most restrictive active budget wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), extend("default" = [{"nodes": "10%"}]))]
    pub budgets: Vec<Budget>,
}

/// A disruption budget.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    /// A count or a percentage of the pool's nodes (`10%` by default).
    #[schemars(regex(pattern = r"^((100|[0-9]{1,2})%|[0-9]+)$"), extend("default" = "10%"))]
    pub nodes: String,
    /// Cron schedule at which the budget becomes active (UTC; `@daily` style macros allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly))|((.+)\s(.+)\s(.+)\s(.+)\s(.+))$"
    ))]
    pub schedule: Option<String>,
    /// How long it stays active after each scheduled start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^((([0-9]+(h|m))|([0-9]+h[0-9]+m))(0s)?)$"))]
    pub duration: Option<String>,
    /// Which disruption reasons it limits (Empty, Underutilized, Drifted); all when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "string", "enum": ["Empty", "Underutilized", "Drifted"]}))]
    pub reasons: Vec<String>,
}

/// `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    /// Resources of the pool's nodes, `nodes` included.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, String>,
}

/// A resource quantity written as a string (`"1000"`, `"4Gi"`) or a bare number (`1000`), as
/// Kubernetes accepts in resource lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct IntOrQuantity(pub String);

impl<'de> Deserialize<'de> for IntOrQuantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        Ok(IntOrQuantity(
            match Raw::deserialize(deserializer).map_err(|_| {
                serde::de::Error::custom("expected a quantity: a number or a string such as \"4Gi\"")
            })? {
                Raw::Int(i) => i.to_string(),
                Raw::Float(f) => f.to_string(),
                Raw::Text(s) => s,
            },
        ))
    }
}

impl JsonSchema for IntOrQuantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrQuantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$",
            "x-kubernetes-int-or-string": true
        })
    }
}

/// A NodePool's disruption settings at `now_ms` (Unix milliseconds; budgets' cron windows are evaluated
/// then), with Karpenter's defaults for what is absent.
pub fn disruption_policy(spec: &NodePoolSpec, now_ms: Millis) -> Result<PoolPolicy, String> {
    let mut out = PoolPolicy::default();
    let Some(d) = &spec.disruption else { return Ok(out) };
    if let Some(p) = &d.consolidation_policy {
        out.policy = match p.as_str() {
            "WhenEmpty" => Policy::WhenEmpty,
            "WhenEmptyOrUnderutilized" => Policy::WhenEmptyOrUnderutilized,
            other => return Err(format!("spec.disruption.consolidationPolicy: unknown policy {other:?}")),
        };
    }
    if let Some(after) = &d.consolidate_after {
        out.consolidate_after_ms =
            if after == "Never" {
                None
            } else {
                Some(parse_duration(after).ok_or_else(|| {
                    format!("spec.disruption.consolidateAfter: {after:?} is not a duration")
                })?)
            };
    }
    if !d.budgets.is_empty() {
        out.budgets = d
            .budgets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                disruption::Budget::parse(
                    &b.nodes,
                    &b.reasons,
                    b.schedule.as_deref(),
                    b.duration.as_deref(),
                    now_ms,
                )
                .map_err(|e| format!("spec.disruption.budgets[{i}].{e}"))
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    fn spec(yaml: &str) -> NodePoolSpec {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn the_template_hash_changes_with_static_fields_only() {
        let base = spec(
            "template:\n  metadata: {labels: {team: web}}\n  spec:\n    requirements: [{key: kubernetes.io/arch, operator: In, values: [amd64]}]\n    expireAfter: 720h\n",
        );
        let hash = template_hash(&base);
        assert_eq!(hash.len(), 16);
        assert_eq!(hash, template_hash(&base.clone()), "stable");
        // Requirements, expireAfter, terminationGracePeriod, limits and disruption settings: same hash.
        let mut same = base.clone();
        same.template.spec.requirements[0].values = vec!["arm64".into()];
        same.template.spec.expire_after = Some("24h".into());
        same.template.spec.termination_grace_period = Some("1h".into());
        same.weight = Some(50);
        assert_eq!(template_hash(&same), hash);
        // A label or a taint: a new hash.
        let mut labelled = base.clone();
        labelled.template.metadata.as_mut().unwrap().labels.insert("team".into(), "api".into());
        assert_ne!(template_hash(&labelled), hash);
        let tainted = spec(
            "template:\n  metadata: {labels: {team: web}}\n  spec:\n    requirements: []\n    taints: [{key: dedicated, value: web, effect: NoSchedule}]\n",
        );
        assert_ne!(template_hash(&tainted), hash);
    }
}
