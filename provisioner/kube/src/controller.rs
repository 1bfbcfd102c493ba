//! The live loop: watchers fill caches; every pass the leader (1) readies kwok nodes, (2) moves each
//! NodeClaim through launch, registration and initialization, (3) terminates deleted NodeClaims through a
//! PDB-respecting drain, and (4) batches Unschedulable pods, plans them with the solver and creates
//! NodeClaims. The decisions come from `cartwright-core`; this module gathers facts and calls the API.
//!
//! State lives in the API server, never only in memory: a NodeClaim is created before anything is
//! launched, providers launch idempotently per NodeClaim name, and in-flight NodeClaims count as nodes when
//! planning. A restart at any point therefore neither launches twice nor forgets a machine.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cartwright_api::EC2NodeClass;
use cartwright_api::manifests::{daemonset_spec, node_manifest, nodepool_template, pod_spec};
use cartwright_api::nodeclaim::{Condition, NodeClaim, NodeClaimSpec, NodeClaimStatus, ResourceRequirements};
use cartwright_api::nodepool::{self, NodePool, NodeSelectorRequirementWithMinValues};
use cartwright_binpack::requirements::SelectorRequirement;
use cartwright_binpack::solver::{self, DaemonSetSpec, LaunchOption, NewNode, NodePoolTemplate, PodSpec};
use cartwright_binpack::{CapacityType, Catalog, Price, Requirements, Resources, Taint, labels, taints};
use cartwright_core::batcher::{BatchWindow, Batcher};
use cartwright_core::cloud::{CloudError, CloudProvider, LaunchRequest, UnavailableOfferings};
use cartwright_core::hpa::Millis;
use cartwright_core::lifecycle::{self, ClaimFacts, ClaimStep, PodFacts, TerminationStep, Timeouts};
use cartwright_core::provisioning::{self, NodeView};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, Pod, PodTemplate};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::kwok::{self, KwokProvider};
use crate::leader::LeaderElector;
use crate::metrics::{Metrics, labels as metric_labels};

/// The finalizer on NodeClaims and Nodes: the machine is terminated before either goes.
pub const FINALIZER: &str = "cartwright.sh/termination";
/// The taint on a node being drained (Karpenter v1 uses `karpenter.sh/disrupted`).
pub const DISRUPTED_TAINT: &str = "cartwright.sh/disrupted";
/// How long a machine may run without its NodeClaim (or a launched NodeClaim go without its machine)
/// before garbage collection acts: longer than the gap between a launch and the claim's status write,
/// and than the cloud's listing lags behind a launch.
const ORPHAN_GRACE_MS: Millis = 30_000;
/// How often the provider's machines are listed for garbage collection.
const GC_EVERY: Duration = Duration::from_secs(15);
/// How often the provider's other resources (launch templates) are collected.
const RESOURCE_GC_EVERY: Duration = Duration::from_secs(300);

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The catalog to plan with; the cloud provider may publish a fresher one (new spot prices).
    pub catalog: tokio::sync::watch::Receiver<Arc<Catalog>>,
    pub batch: BatchWindow,
    pub timeouts: Timeouts,
    /// Pods still pending are planned again this often (in-flight capacity is counted, so nothing is
    /// launched twice).
    pub replan_every: Duration,
    /// Pause between passes.
    pub tick: Duration,
    pub lease: Option<LeaseSettings>,
    pub metrics_addr: Option<SocketAddr>,
    /// How often disruption decides (`None`: never).
    pub disruption_every: Option<Duration>,
    /// A disruption decision is carried out only if it still holds this long after it was made.
    pub disruption_validation: Duration,
    /// HPA headroom and CapacityBuffers (`None`: off). A horizon of `None` is the measured one: the 90th
    /// percentile of recent launch-to-initialized times (60 s until a node has been measured).
    pub headroom: Option<HeadroomSettings>,
}

/// How headroom predicts.
#[derive(Clone, Copy, Debug)]
pub struct HeadroomSettings {
    pub horizon: Option<Duration>,
    pub trend_window: Duration,
}

/// The horizon until a launch has been measured.
const DEFAULT_HORIZON_MS: Millis = 60_000;

/// A replacement in progress: new NodeClaims launching before the old nodes go.
#[derive(Clone, Debug)]
struct Replacing {
    reason: &'static str,
    /// The old nodes and their NodeClaims.
    old: Vec<(String, String)>,
    new_claims: Vec<String>,
    started: Millis,
}

/// Disruption's memory between passes.
#[derive(Debug, Default)]
struct DisruptionState {
    last: Option<Millis>,
    /// Per node: the signature of its reschedulable pods and since when it holds.
    settled: BTreeMap<String, (String, Millis)>,
    /// A decision waiting for validation: its nodes and when it was made.
    pending: Option<(Vec<String>, Millis)>,
    replacing: Option<Replacing>,
    /// The `Disruptable` condition last written on each NodeClaim (its message), so it is written on change.
    told: BTreeMap<String, String>,
    /// NodeClaims whose machine the cloud is taking away, to replace and drain this pass.
    interrupted: BTreeSet<String>,
}

/// The watched objects.
#[derive(Clone)]
struct Stores {
    pods: Store<Pod>,
    nodes: Store<Node>,
    claims: Store<NodeClaim>,
    pools: Store<NodePool>,
    daemonsets: Store<DaemonSet>,
    // Watched so the caches are complete before acting; disruption (PDBs, node classes) and HPA headroom
    // read them.
    node_classes: Store<EC2NodeClass>,
    pdbs: Store<PodDisruptionBudget>,
    hpas: Store<HorizontalPodAutoscaler>,
    // HPA targets: their pod templates and replicas shape headroom.
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    // CapacityBuffers (when their API is installed) and the PodTemplates they may name.
    podtemplates: Store<PodTemplate>,
    buffers: Option<Store<cartwright_api::capacitybuffer::CapacityBuffer>>,
}

/// A cache of `api`'s objects, filled by a watch that runs (and recovers) until the process ends.
pub fn reflect<K>(api: Api<K>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, kind = %K::kind(&K::DynamicType::default()), "watch failed; retrying");
            }
        }
    });
    reader
}

fn now_ms() -> Millis {
    Timestamp::now().as_millisecond().max(0) as Millis
}

pub(crate) fn ms(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Millis {
    t.0.as_millisecond().max(0) as Millis
}

fn pod_facts(pod: &Pod) -> PodFacts {
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_ref());
    PodFacts {
        bound: pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty()),
        unschedulable: conditions.into_iter().flatten().any(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        }),
        daemonset: pod.owner_references().iter().any(|o| o.kind == "DaemonSet"),
        mirror: pod.annotations().contains_key("kubernetes.io/config.mirror"),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        finished: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
    }
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// When a condition last changed, if it says so readably.
fn transition_ms(condition: &Condition) -> Option<Millis> {
    let t = condition.last_transition_time.as_deref()?.parse::<Timestamp>().ok()?;
    Some(t.as_millisecond().max(0) as Millis)
}

fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

fn with_condition(status: Option<&NodeClaimStatus>, type_: &str, reason: &str) -> Vec<Condition> {
    let mut conditions: Vec<Condition> = status
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != type_)
        .collect();
    conditions.push(Condition {
        type_: type_.to_owned(),
        status: "True".into(),
        reason: Some(reason.to_owned()),
        message: None,
        last_transition_time: Some(Timestamp::now().to_string()),
        observed_generation: None,
    });
    conditions
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn provider_id(node: &Node) -> Option<&str> {
    node.spec.as_ref().and_then(|s| s.provider_id.as_deref())
}

fn api_taint(t: &nodepool::Taint) -> Option<Taint> {
    Taint::new(&t.key, t.value.as_deref().unwrap_or_default(), t.effect.parse().ok()?).ok()
}

fn claim_requirements(spec: &NodeClaimSpec) -> Requirements {
    let mut requirements = Requirements::default();
    for r in &spec.requirements {
        let selector = SelectorRequirement {
            key: r.key.clone(),
            operator: r.operator.clone(),
            values: r.values.clone(),
            min_values: r.min_values,
        };
        if let Ok(requirement) = selector.to_requirement() {
            requirements.add(requirement);
        }
    }
    requirements
}

/// A short random suffix for NodeClaim names.
fn suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(now_ms()));
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = h.finish();
    (0..5)
        .map(|_| {
            let c = alphabet[(n % alphabet.len() as u64) as usize] as char;
            n /= alphabet.len() as u64;
            c
        })
        .collect()
}

/// The offering the claim's labels say it launched as (or was planned as).
pub fn claim_option(catalog: &Catalog, claim: &NodeClaim) -> Option<LaunchOption> {
    let l = claim.labels();
    let instance_type = l.get(labels::INSTANCE_TYPE)?.clone();
    let zone = l.get(labels::ZONE)?.clone();
    let capacity_type: CapacityType = l.get(labels::CAPACITY_TYPE)?.parse().ok()?;
    let price = catalog
        .get(&instance_type)?
        .offerings
        .iter()
        .find(|o| o.zone == zone && o.capacity_type == capacity_type)?
        .price;
    Some(LaunchOption { instance_type, zone, capacity_type, price })
}

/// Everything planning reads from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<Arc<Pod>>,
    pub nodes: Vec<Arc<Node>>,
    pub claims: Vec<NodeClaim>,
    pub pools: Vec<Arc<NodePool>>,
    pub daemonsets: Vec<Arc<DaemonSet>>,
}

impl Snapshot {
    /// Lists every object once (for `cartwright plan --kubeconfig`).
    pub async fn list(client: &kube::Client) -> Result<Snapshot, kube::Error> {
        async fn all<K>(client: &kube::Client) -> Result<Vec<K>, kube::Error>
        where
            K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
        {
            Ok(Api::<K>::all(client.clone()).list(&Default::default()).await?.items)
        }
        Ok(Snapshot {
            pods: all::<Pod>(client).await?.into_iter().map(Arc::new).collect(),
            nodes: all::<Node>(client).await?.into_iter().map(Arc::new).collect(),
            claims: all::<NodeClaim>(client).await?,
            pools: all::<NodePool>(client).await?.into_iter().map(Arc::new).collect(),
            daemonsets: all::<DaemonSet>(client).await?.into_iter().map(Arc::new).collect(),
        })
    }

    /// The pods provisioning acts on.
    pub fn provisionable(&self) -> Vec<Arc<Pod>> {
        self.pods.iter().filter(|p| pod_facts(p).provisionable()).cloned().collect()
    }
}

/// The conditions a NodeClaim has in the cache.
fn snapshot_conditions(stores: &Stores, claim: &str) -> Vec<Condition> {
    stores
        .claims
        .get(&reflector::ObjectRef::new(claim))
        .and_then(|c| c.status.as_ref().map(|s| s.conditions.clone()))
        .unwrap_or_default()
}

/// Annotations that forbid voluntary disruption of a pod or node.
pub const DO_NOT_DISRUPT: [&str; 2] = ["cartwright.sh/do-not-disrupt", "karpenter.sh/do-not-disrupt"];

fn do_not_disrupt(annotations: &BTreeMap<String, String>) -> bool {
    DO_NOT_DISRUPT.iter().any(|k| annotations.get(*k).is_some_and(|v| v == "true"))
}

/// When a NodeClaim reaches its `expireAfter` (`Never`, absent or unreadable: never).
fn expires_at(claim: &NodeClaim) -> Option<Millis> {
    let after = claim.spec.expire_after.as_deref().filter(|a| *a != "Never")?;
    let after = cartwright_core::disruption::parse_duration(after)?;
    Some(claim.metadata.creation_timestamp.as_ref().map(ms)? + after)
}

/// Why a launched node no longer matches its NodePool: the template's static fields changed since launch
/// (the hash the NodeClaim carries), or one of the node's labels no longer satisfies a requirement. A
/// NodeClaim without the hash (launched by an older version) is judged by its labels only.
fn nodepool_drift(
    model: &Model,
    claim: &NodeClaim,
    node_labels: &BTreeMap<String, String>,
) -> Option<String> {
    let pool_name = claim.labels().get(labels::NODEPOOL)?;
    let pool = model.pools.get(pool_name)?;
    if let Some(launched) = claim.annotations().get(nodepool::HASH_ANNOTATION)
        && *launched != nodepool::template_hash(&pool.spec)
    {
        return Some(format!("NodePool {pool_name}'s template changed since launch"));
    }
    let template = model.templates.iter().find(|t| t.name == *pool_name)?;
    template.requirements.iter().find_map(|r| {
        let value = node_labels.get(r.key())?;
        (!r.matches(Some(value))).then(|| {
            format!("label {}={value} no longer satisfies NodePool {pool_name}'s requirements", r.key())
        })
    })
}

/// One node of the cluster model: a registered Node, or an in-flight NodeClaim counted as one.
#[derive(Clone, Debug)]
pub struct ModelNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub capacity: Resources,
    pub ready: bool,
    /// Cordoned, deleting or draining: takes no new pods.
    pub cordoned: bool,
    /// Every pod on it (daemonset pods included; for an in-flight claim, its daemonsets' requests).
    pub pods: Vec<PodSpec>,
    /// The pods a drain would move (not daemonset or mirror pods).
    pub reschedulable: Vec<PodSpec>,
    /// The NodeClaim behind it, if Cartwright manages it.
    pub claim: Option<String>,
    pub price: Option<Price>,
    pub capacity_type: Option<CapacityType>,
    pub initialized: bool,
    /// A do-not-disrupt annotation on the node or one of its pods.
    pub blocked: Option<String>,
    /// Its NodeClaim is being deleted.
    pub deleting: bool,
    /// When its NodeClaim reaches `expireAfter` (Unix milliseconds).
    pub expires_at: Option<Millis>,
    /// Why it no longer matches its NodePool (or what the cloud provider reports), if it does not.
    pub drifted: Option<String>,
}

impl ModelNode {
    pub fn view(&self) -> NodeView<'_> {
        let nodepool = self.labels.get(labels::NODEPOOL).map(String::as_str);
        NodeView {
            taints: &self.taints,
            ready: self.ready,
            cordoned: self.cordoned,
            ..NodeView::with_pods(
                &self.name,
                &self.labels,
                &self.allocatable,
                &self.capacity,
                &self.pods,
                nodepool,
            )
        }
    }
}

/// The pods bound to a node: all, the reschedulable ones, and why one forbids disruption.
type BoundPods = (Vec<PodSpec>, Vec<PodSpec>, Option<String>);

/// The cluster as planning and disruption see it.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub pools: BTreeMap<String, Arc<NodePool>>,
    pub templates: Vec<NodePoolTemplate>,
    pub daemonsets: Vec<DaemonSetSpec>,
    pub nodes: Vec<ModelNode>,
}

impl Model {
    pub fn build(snapshot: &Snapshot, catalog: &Catalog) -> Model {
        let mut model = Model::default();
        for pool in snapshot.pools.iter().cloned() {
            if pool.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match nodepool_template(&pool.name_any(), &pool.spec) {
                Ok(t) => {
                    model.templates.push(t);
                    model.pools.insert(pool.name_any(), pool);
                }
                Err(e) => tracing::warn!(nodepool = pool.name_any(), error = e, "NodePool ignored"),
            }
        }
        model.daemonsets = snapshot
            .daemonsets
            .iter()
            .filter_map(|ds| daemonset_spec(&ds.name_any(), ds).ok().map(|(d, _)| d))
            .collect();
        // Pods bound to each node: all of them, the reschedulable ones, and whether one forbids disruption.
        let mut bound: BTreeMap<String, BoundPods> = BTreeMap::new();
        for pod in &snapshot.pods {
            let facts = pod_facts(pod);
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let (Some(node), false) = (node, facts.finished)
                && let Some(Ok((spec, _))) =
                    pod.spec.as_ref().map(|s| pod_spec(&pod_key(pod), s, pod.labels().clone()))
            {
                let entry = bound.entry(node).or_default();
                if facts.evictable() {
                    entry.1.push(spec.clone());
                    if do_not_disrupt(pod.annotations()) {
                        entry
                            .2
                            .get_or_insert(format!("pod {} has a do-not-disrupt annotation", pod_key(pod)));
                    }
                }
                entry.0.push(spec);
            }
        }
        let claims_by_id: BTreeMap<&str, &NodeClaim> = snapshot
            .claims
            .iter()
            .filter_map(|c| Some((c.status.as_ref()?.provider_id.as_deref()?, c)))
            .collect();
        let mut registered: BTreeSet<String> = BTreeSet::new();
        for node in &snapshot.nodes {
            let Ok(m) = node_manifest(&node.name_any(), node) else { continue };
            let claim = provider_id(node).and_then(|id| claims_by_id.get(id).copied());
            if let Some(id) = provider_id(node) {
                registered.insert(id.to_owned());
            }
            let deleting = node.metadata.deletion_timestamp.is_some()
                || claim.is_some_and(|c| c.metadata.deletion_timestamp.is_some());
            let draining = deleting || m.taints.iter().any(|t| t.key == DISRUPTED_TAINT);
            let (pods, reschedulable, pod_blocked) = bound.remove(&m.name).unwrap_or_default();
            let blocked = if do_not_disrupt(node.annotations()) {
                Some(format!("node {} has a do-not-disrupt annotation", m.name))
            } else {
                pod_blocked
            };
            let option = claim.and_then(|c| claim_option(catalog, c));
            let drifted = claim.and_then(|c| nodepool_drift(&model, c, &m.labels));
            model.nodes.push(ModelNode {
                drifted,
                name: m.name,
                labels: m.labels,
                taints: m.taints,
                allocatable: m.allocatable,
                capacity: m.capacity,
                ready: node_ready(node),
                cordoned: !m.schedulable || draining,
                pods,
                reschedulable,
                claim: claim.map(|c| c.name_any()),
                price: option.as_ref().map(|o| o.price),
                capacity_type: option.map(|o| o.capacity_type),
                initialized: claim.is_some_and(|c| {
                    condition_true(
                        c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        "Initialized",
                    )
                }),
                blocked,
                deleting,
                expires_at: claim.and_then(expires_at),
            });
        }
        // In-flight NodeClaims: capacity on its way, daemonsets included.
        for claim in &snapshot.claims {
            if claim
                .status
                .as_ref()
                .and_then(|s| s.provider_id.as_ref())
                .is_some_and(|id| registered.contains(id))
            {
                continue;
            }
            let Some(option) = claim_option(catalog, claim) else { continue };
            let Some(instance_type) = catalog.get(&option.instance_type) else { continue };
            let mut node_labels = claim.labels().clone();
            node_labels.insert(labels::HOSTNAME.into(), claim.name_any());
            let node_taints: Vec<Taint> = claim.spec.taints.iter().filter_map(api_taint).collect();
            let mut daemon_pods = Vec::new();
            for ds in &model.daemonsets {
                if ds.affinity.matches_labels(&node_labels)
                    && taints::tolerates_all(&ds.tolerations, &node_taints)
                {
                    daemon_pods.push(PodSpec::new(ds.name.clone(), ds.requests.clone()));
                }
            }
            let deleting = claim.metadata.deletion_timestamp.is_some();
            model.nodes.push(ModelNode {
                name: claim.name_any(),
                labels: node_labels,
                taints: node_taints,
                allocatable: instance_type.allocatable(),
                capacity: instance_type.capacity.clone(),
                ready: false,
                cordoned: deleting,
                pods: daemon_pods,
                reschedulable: Vec::new(),
                claim: Some(claim.name_any()),
                price: Some(option.price),
                capacity_type: Some(option.capacity_type),
                initialized: false,
                blocked: None,
                deleting,
                expires_at: expires_at(claim),
                drifted: None,
            });
        }
        model
    }
}

/// Why a node holding virtual pods is kept: the HPAs whose predicted scale-up it holds room for, or whose
/// recent scale-down it keeps capacity for (the guard).
fn held_reason(pods: &[PodSpec]) -> String {
    let names = |kind: &str| -> Vec<&str> {
        let mark = format!("~{kind}-");
        cartwright_core::headroom::held_for(
            pods.iter().map(|p| p.name.as_str()).filter(|n| n.contains(&mark)),
        )
        .into_iter()
        .collect()
    };
    let (headroom, guard, buffer) = (names("headroom"), names("guard"), names("buffer"));
    let mut parts = Vec::new();
    if !headroom.is_empty() {
        parts.push(format!("holds headroom for the predicted scale-up of HPA {}", headroom.join(", ")));
    }
    if !guard.is_empty() {
        parts.push(format!(
            "keeps capacity HPA {} gave back within its scale-down stabilisation window",
            guard.join(", ")
        ));
    }
    if !buffer.is_empty() {
        parts.push(format!("holds CapacityBuffer {}", buffer.join(", ")));
    }
    format!("{} ({} pods)", parts.join("; "), pods.len())
}

/// How long a NodeClaim took from creation to Initialized, if it is.
fn initialized_after(claim: &NodeClaim) -> Option<Millis> {
    let created = ms(claim.metadata.creation_timestamp.as_ref()?);
    let condition =
        claim.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Initialized" && c.status == "True")?;
    Some(transition_ms(condition)?.saturating_sub(created))
}

/// Each NodePool's hourly cost: the prices of its nodes and in-flight NodeClaims.
fn pool_costs(model: &Model) -> BTreeMap<String, Price> {
    let mut out: BTreeMap<String, Price> = BTreeMap::new();
    for node in &model.nodes {
        if let (Some(pool), Some(price)) = (node.labels.get(labels::NODEPOOL), node.price) {
            out.entry(pool.clone()).or_insert(Price(0)).0 += price.0;
        }
    }
    out
}

/// The solver problem: provisionable pods over live nodes and in-flight NodeClaims (counted as nodes, so
/// planning again never launches twice), over `catalog` (unavailable offerings already marked).
pub fn problem(
    snapshot: &Snapshot,
    provisionable: &[Arc<Pod>],
    catalog: &Catalog,
) -> Option<(solver::Problem, BTreeMap<String, Arc<NodePool>>)> {
    let model = Model::build(snapshot, catalog);
    if model.templates.is_empty() {
        tracing::warn!(pods = provisionable.len(), "pods are pending but there is no usable NodePool");
        return None;
    }
    let problem = model_problem(&model, provisionable, catalog);
    Some((problem, model.pools))
}

/// The solver problem of `provisionable` pods over an already built model.
fn model_problem(model: &Model, provisionable: &[Arc<Pod>], catalog: &Catalog) -> solver::Problem {
    let mut pending = Vec::new();
    for pod in provisionable {
        let labels = pod.labels().clone();
        match pod.spec.as_ref().map(|s| pod_spec(&pod_key(pod), s, labels)) {
            Some(Ok((spec, _))) => pending.push(spec),
            Some(Err(e)) => tracing::warn!(pod = pod_key(pod), error = e, "pod ignored"),
            None => {}
        }
    }
    let views: Vec<NodeView<'_>> = model.nodes.iter().map(ModelNode::view).collect();
    let catalog = provisioning::launchable(catalog, &model.templates);
    provisioning::problem(pending, &views, &model.templates, &model.daemonsets, Arc::new(catalog))
}

struct Controller<P> {
    client: kube::Client,
    provider: P,
    kwok: Option<KwokProvider>,
    settings: Settings,
    stores: Stores,
    metrics: Arc<Metrics>,
    batcher: Batcher,
    seen: HashSet<String>,
    last_plan: Option<Millis>,
    last_gc: Option<Instant>,
    /// This pass's catalog.
    catalog: Arc<Catalog>,
    unavailable: UnavailableOfferings,
    /// NodeClaims created by this process that the cache may not show yet.
    created: BTreeMap<String, NodeClaim>,
    /// What the cloud provider's last listing said had drifted, by NodeClaim name.
    machine_drift: BTreeMap<String, String>,
    /// When the provider's other resources (launch templates) were last collected.
    last_resource_gc: Option<Instant>,
    claims: Api<NodeClaim>,
    nodes: Api<Node>,
    recorder: Recorder,
    /// What each pending pod (by uid) was last told: the node it is nominated to, or why it cannot get one.
    told: BTreeMap<String, String>,
    disruption: DisruptionState,
    /// This pass's nodes by providerID.
    nodes_by_id: BTreeMap<String, Arc<Node>>,
    /// The HPAs as headroom sees them.
    hpa_index: crate::headroom::HpaIndex,
    /// When headroom was last planned, and the virtual pods it planned.
    last_headroom: Option<(Millis, Vec<String>)>,
    /// CapacityBuffers that could not be read, with why (logged when this changes).
    buffer_problems: Vec<String>,
    /// Recent launch-to-initialized times (the measured headroom horizon), filled from the claims already
    /// initialized on the first pass.
    launch_latencies: Option<cartwright_core::headroom::LaunchLatencies>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run<P: CloudProvider + 'static>(
    client: kube::Client,
    provider: P,
    kwok: Option<KwokProvider>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = settings.metrics_addr {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, metrics, ready).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let stores = Stores {
        pods: reflect(Api::<Pod>::all(client.clone())),
        nodes: reflect(Api::<Node>::all(client.clone())),
        claims: reflect(Api::<NodeClaim>::all(client.clone())),
        pools: reflect(Api::<NodePool>::all(client.clone())),
        daemonsets: reflect(Api::<DaemonSet>::all(client.clone())),
        node_classes: reflect(Api::<EC2NodeClass>::all(client.clone())),
        pdbs: reflect(Api::<PodDisruptionBudget>::all(client.clone())),
        hpas: reflect(Api::<HorizontalPodAutoscaler>::all(client.clone())),
        deployments: reflect(Api::<Deployment>::all(client.clone())),
        statefulsets: reflect(Api::<StatefulSet>::all(client.clone())),
        podtemplates: reflect(Api::<PodTemplate>::all(client.clone())),
        buffers: capacity_buffers(&client).await,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let synced = async {
        let _ = futures::join!(
            stores.pods.wait_until_ready(),
            stores.nodes.wait_until_ready(),
            stores.claims.wait_until_ready(),
            stores.pools.wait_until_ready(),
            stores.daemonsets.wait_until_ready(),
            stores.node_classes.wait_until_ready(),
            stores.pdbs.wait_until_ready(),
            stores.hpas.wait_until_ready(),
            stores.deployments.wait_until_ready(),
            stores.statefulsets.wait_until_ready(),
            stores.podtemplates.wait_until_ready(),
            async {
                if let Some(buffers) = &stores.buffers {
                    let _ = buffers.wait_until_ready().await;
                }
            },
        );
    };
    tokio::select! {
        _ = &mut shutdown => return Ok(()),
        _ = synced => {}
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!("caches synced");
    let elector = settings
        .lease
        .as_ref()
        .map(|l| LeaderElector::new(client.clone(), &l.namespace, &l.name, &l.identity, l.duration));
    let reporter = Reporter {
        controller: "cartwright".into(),
        instance: settings.lease.as_ref().map(|l| l.identity.clone()),
    };
    let catalog = settings.catalog.borrow().clone();
    let settings_headroom = settings.headroom;
    let mut controller = Controller {
        recorder: Recorder::new(client.clone(), reporter),
        told: BTreeMap::new(),
        disruption: DisruptionState::default(),
        nodes_by_id: BTreeMap::new(),
        claims: Api::all(client.clone()),
        nodes: Api::all(client.clone()),
        client,
        provider,
        kwok,
        batcher: Batcher::new(settings.batch),
        settings,
        stores,
        metrics: metrics.clone(),
        seen: HashSet::new(),
        last_plan: None,
        last_gc: None,
        catalog,
        unavailable: UnavailableOfferings::default(),
        created: BTreeMap::new(),
        machine_drift: BTreeMap::new(),
        last_resource_gc: None,
        hpa_index: crate::headroom::HpaIndex::new(cartwright_core::headroom::Settings {
            horizon_ms: settings_headroom
                .and_then(|h| h.horizon)
                .map_or(DEFAULT_HORIZON_MS, |h| h.as_millis() as Millis),
            trend_window_ms: settings_headroom
                .map_or(cartwright_core::headroom::Settings::default().trend_window_ms, |h| {
                    h.trend_window.as_millis() as Millis
                }),
        }),
        launch_latencies: None,
        last_headroom: None,
        buffer_problems: Vec::new(),
    };
    let mut leading = elector.is_none();
    let mut last_renewal: Option<Instant> = None;
    // A standby replica asks for the lease every STANDBY_RETRY at most (not every tick: replicas waiting
    // would otherwise read the Lease several times a second).
    let mut last_attempt: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(controller.settings.tick) => {}
        }
        if let Some(elector) = &elector {
            let due = if leading {
                last_renewal.is_none_or(|t| t.elapsed() >= elector.renew_every())
            } else {
                last_attempt.is_none_or(|t| t.elapsed() >= elector.renew_every().min(STANDBY_RETRY))
            };
            if due {
                last_attempt = Some(Instant::now());
                match elector.try_acquire_or_renew().await {
                    Ok(now_leading) => {
                        if now_leading && !leading {
                            tracing::info!(identity = elector.identity(), "became the leader");
                        } else if !now_leading && leading {
                            tracing::warn!(identity = elector.identity(), "lost the leader lease");
                        }
                        leading = now_leading;
                        if leading {
                            last_renewal = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the leader lease failed");
                        // Step down before the lease can expire and another replica take it.
                        let lease =
                            controller.settings.lease.as_ref().map(|l| l.duration).unwrap_or_default();
                        if last_renewal.is_none_or(|t| t.elapsed() >= lease * 2 / 3) {
                            leading = false;
                        }
                    }
                }
            }
        }
        metrics.leader.set(i64::from(leading));
        if leading {
            controller.pass().await;
        }
    }
    if let Some(elector) = &elector
        && leading
        && let Err(e) = elector.release().await
    {
        tracing::warn!(error = %e, "releasing the leader lease failed");
    }
    Ok(())
}

/// A cache of CapacityBuffers when their API (`autoscaling.x-k8s.io/v1beta1`, installed with Cluster
/// Autoscaler or Karpenter) is served; `None`, and buffers unused, when it is not.
async fn capacity_buffers(
    client: &kube::Client,
) -> Option<Store<cartwright_api::capacitybuffer::CapacityBuffer>> {
    let api = Api::<cartwright_api::capacitybuffer::CapacityBuffer>::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Some(reflect(api)),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!(
                "the CapacityBuffer API (autoscaling.x-k8s.io/v1beta1) is not installed: no buffers"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CapacityBuffers: buffers unused");
            None
        }
    }
}

/// How often a replica that does not lead asks for the lease (client-go's retry period).
const STANDBY_RETRY: Duration = Duration::from_secs(2);

impl<P: CloudProvider> Controller<P> {
    async fn pass(&mut self) {
        let now = now_ms();
        self.catalog = self.settings.catalog.borrow().clone();
        // Nodes by providerID, once per pass (every NodeClaim step looks its node up).
        self.nodes_by_id = self
            .stores
            .nodes
            .state()
            .into_iter()
            .filter_map(|n| Some((provider_id(&n)?.to_owned(), n.clone())))
            .collect();
        let claims = self.stores.claims.state();
        for c in &claims {
            self.created.remove(&c.name_any());
        }
        self.ready_kwok_nodes().await;
        self.collect_garbage(&claims, now).await;
        for claim in &claims {
            if claim.metadata.deletion_timestamp.is_some() {
                self.terminate(claim).await;
            } else {
                self.advance(claim, now).await;
            }
        }
        self.deleted_nodes(&claims).await;
        self.interrupt(&claims, now).await;
        if let Some(headroom) = self.settings.headroom {
            let latencies = self.launch_latencies.get_or_insert_with(|| {
                let mut latencies = cartwright_core::headroom::LaunchLatencies::default();
                for claim in &claims {
                    if let Some(latency) = initialized_after(claim) {
                        latencies.observe(latency);
                    }
                }
                latencies
            });
            if headroom.horizon.is_none() {
                self.hpa_index.settings.horizon_ms = latencies.horizon().unwrap_or(DEFAULT_HORIZON_MS);
            }
            self.hpa_index.update(
                &self.stores.hpas.state(),
                &self.stores.deployments.state(),
                &self.stores.statefulsets.state(),
                now,
            );
        }
        self.provision(now).await;
        self.provision_headroom(now).await;
        self.disrupt(now).await;
        self.update_gauges(&claims);
    }

    fn node_for(&self, claim: &NodeClaim) -> Option<Arc<Node>> {
        let id = claim.status.as_ref()?.provider_id.as_deref()?;
        self.nodes_by_id.get(id).cloned()
    }

    fn node_named(&self, name: &str) -> Option<Arc<Node>> {
        self.stores.nodes.get(&reflector::ObjectRef::new(name))
    }

    /// kwok: marks kwok nodes Ready when due.
    async fn ready_kwok_nodes(&self) {
        let Some(kwok) = &self.kwok else { return };
        for node in self.stores.nodes.state() {
            if !provider_id(&node).is_some_and(|p| p.starts_with(kwok::SCHEME)) {
                continue;
            }
            if !node_ready(&node)
                && node.status.as_ref().and_then(|s| s.allocatable.as_ref()).is_some()
                && let Err(e) = kwok.mark_ready_if_due(&node).await
            {
                tracing::warn!(node = node.name_any(), error = %e, "marking the kwok node ready failed");
            }
        }
    }

    /// Garbage collection, every `GC_EVERY`: machines running without a NodeClaim (a launch whose claim
    /// was deleted before its status was written, a crash in between) are terminated, and launched
    /// NodeClaims whose machine is gone (terminated outside Cartwright) are deleted.
    async fn collect_garbage(&mut self, claims: &[Arc<NodeClaim>], now: Millis) {
        if self.last_gc.is_some_and(|t| t.elapsed() < GC_EVERY) {
            return;
        }
        self.last_gc = Some(Instant::now());
        let method = metric_labels(&[("provider", self.provider.name()), ("method", "list")]);
        self.metrics.cloud_calls.get_or_create(&method).inc();
        let machines = match self.provider.list().await {
            Ok(m) => m,
            Err(e) => {
                self.metrics.cloud_errors.get_or_create(&method).inc();
                tracing::warn!(error = %e, "listing machines for garbage collection failed");
                return;
            }
        };
        if self.last_resource_gc.is_none_or(|t| t.elapsed() >= RESOURCE_GC_EVERY) {
            self.last_resource_gc = Some(Instant::now());
            match self.provider.collect_resources().await {
                Ok(deleted) => {
                    let kind = metric_labels(&[("kind", "resource")]);
                    self.metrics.garbage_collected.get_or_create(&kind).inc_by(deleted.len() as u64);
                }
                Err(e) => tracing::warn!(error = %e, "collecting unused cloud resources failed"),
            }
        }
        self.machine_drift =
            machines.iter().filter_map(|m| Some((m.nodeclaim.clone()?, m.drifted.clone()?))).collect();
        let claim_ids: HashSet<&str> =
            claims.iter().filter_map(|c| c.status.as_ref()?.provider_id.as_deref()).collect();
        let claim_names: HashSet<String> = claims.iter().map(|c| c.name_any()).collect();
        for machine in &machines {
            let owned = claim_ids.contains(machine.provider_id.as_str())
                || machine
                    .nodeclaim
                    .as_ref()
                    .is_some_and(|n| claim_names.contains(n) || self.created.contains_key(n));
            let age = machine.created_ms.map(|t| now.saturating_sub(t)).unwrap_or(0);
            if owned || age < ORPHAN_GRACE_MS {
                continue;
            }
            tracing::info!(provider_id = machine.provider_id, nodeclaim = ?machine.nodeclaim, "terminating a machine without a NodeClaim");
            let delete = metric_labels(&[("provider", self.provider.name()), ("method", "delete")]);
            self.metrics.cloud_calls.get_or_create(&delete).inc();
            match self.provider.delete(&machine.provider_id).await {
                Ok(()) | Err(CloudError::NotFound(_)) => {
                    self.metrics
                        .garbage_collected
                        .get_or_create(&metric_labels(&[("kind", "machine")]))
                        .inc();
                    if let Some(node) = self.nodes_by_id.get(&machine.provider_id).cloned() {
                        self.release_node(&node).await;
                    }
                }
                Err(e) => {
                    self.metrics.cloud_errors.get_or_create(&delete).inc();
                    tracing::warn!(provider_id = machine.provider_id, error = %e, "terminating an orphan failed");
                }
            }
        }
        let running: HashSet<&str> = machines.iter().map(|m| m.provider_id.as_str()).collect();
        for claim in claims {
            let Some(id) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()) else { continue };
            let launched_at = claim
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Launched"))
                .and_then(transition_ms);
            let settled = launched_at.is_some_and(|t| now.saturating_sub(t) >= ORPHAN_GRACE_MS);
            if claim.metadata.deletion_timestamp.is_none() && settled && !running.contains(id) {
                tracing::info!(
                    nodeclaim = claim.name_any(),
                    provider_id = id,
                    "the NodeClaim's machine is gone"
                );
                self.metrics.garbage_collected.get_or_create(&metric_labels(&[("kind", "nodeclaim")])).inc();
                self.delete_claim(&claim.name_any(), "machine_gone").await;
            }
        }
    }

    /// Removes our finalizer from the Node and deletes it.
    async fn release_node(&self, node: &Node) {
        let name = node.name_any();
        if node.finalizers().iter().any(|f| f == FINALIZER) {
            let rest: Vec<&String> = node.finalizers().iter().filter(|f| *f != FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": node.resource_version()}});
            if let Err(e) = self.nodes.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                tracing::warn!(node = name, error = %e, "removing the node finalizer failed");
                return;
            }
        }
        if node.metadata.deletion_timestamp.is_none()
            && let Err(e) = self.nodes.delete(&name, &DeleteParams::default()).await
            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
        {
            tracing::warn!(node = name, error = %e, "deleting the node failed");
        }
    }

    /// One step of a live NodeClaim's lifecycle.
    async fn advance(&mut self, claim: &NodeClaim, now: Millis) {
        let name = claim.name_any();
        let status = claim.status.as_ref();
        let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let node = self.node_for(claim);
        let launched_ms = conditions
            .iter()
            .find(|c| c.type_ == "Launched" && c.status == "True")
            .map(|c| transition_ms(c).unwrap_or(now));
        let facts = ClaimFacts {
            created_ms: claim.metadata.creation_timestamp.as_ref().map_or(now, ms),
            launched_ms,
            node_exists: node.is_some(),
            registered: condition_true(conditions, "Registered"),
            node_ready: node.as_deref().is_some_and(node_ready),
            initialized: condition_true(conditions, "Initialized"),
        };
        match lifecycle::next_step(&facts, now, &self.settings.timeouts) {
            ClaimStep::Launch => self.launch(claim, now).await,
            step @ (ClaimStep::LaunchTimedOut | ClaimStep::RegistrationTimedOut) => {
                let reason =
                    if step == ClaimStep::LaunchTimedOut { "launch_timeout" } else { "registration_timeout" };
                tracing::warn!(nodeclaim = name, reason, "giving up on the NodeClaim");
                if let Some(option) = claim_option(&self.catalog, claim) {
                    self.unavailable.mark(&option, now);
                }
                self.delete_claim(&name, reason).await;
            }
            ClaimStep::Register => {
                let node = node.expect("a registered step has a node");
                let mut node_labels = claim.labels().clone();
                node_labels.retain(|k, _| k != labels::HOSTNAME);
                let mut finalizers: Vec<String> = node.finalizers().to_vec();
                if !finalizers.iter().any(|f| f == FINALIZER) {
                    finalizers.push(FINALIZER.into());
                }
                // The claim's taints (and start-up taints, until initialized) on the node, whatever the
                // kubelet registered with.
                let mut taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
                for t in claim.spec.taints.iter().chain(&claim.spec.startup_taints) {
                    if !taints.iter().any(|n| n.key == t.key && n.effect == t.effect) {
                        taints.push(k8s_openapi::api::core::v1::Taint {
                            key: t.key.clone(),
                            value: t.value.clone(),
                            effect: t.effect.clone(),
                            time_added: None,
                        });
                    }
                }
                let patch = json!({"metadata": {"labels": node_labels, "finalizers": finalizers,
                    "resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
                if let Err(e) =
                    self.nodes.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
                {
                    tracing::warn!(nodeclaim = name, error = %e, "labelling the node failed");
                    return;
                }
                let status = json!({"status": {"nodeName": node.name_any(),
                    "conditions": with_condition(status, "Registered", "Registered")}});
                self.patch_claim_status(&name, status).await;
                tracing::info!(nodeclaim = name, node = node.name_any(), "registered");
            }
            ClaimStep::Initialize => {
                let node = node.expect("an initialize step has a node");
                let startup: Vec<(String, String)> =
                    claim.spec.startup_taints.iter().map(|t| (t.key.clone(), t.effect.clone())).collect();
                let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
                let kept: Vec<_> =
                    taints.iter().filter(|t| !startup.contains(&(t.key.clone(), t.effect.clone()))).collect();
                if kept.len() != taints.len() {
                    let patch = json!({"metadata": {"resourceVersion": node.resource_version()},
                        "spec": {"taints": kept}});
                    if let Err(e) = self
                        .nodes
                        .patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        tracing::warn!(nodeclaim = name, error = %e, "removing start-up taints failed");
                        return;
                    }
                }
                let status =
                    json!({"status": {"conditions": with_condition(status, "Initialized", "Initialized")}});
                self.patch_claim_status(&name, status).await;
                if let (Some(latencies), Some(created)) =
                    (&mut self.launch_latencies, claim.metadata.creation_timestamp.as_ref())
                {
                    latencies.observe(now.saturating_sub(ms(created)));
                }
                tracing::info!(nodeclaim = name, "initialized");
                self.event(claim, false, "Initialized", format!("Node {} is ready", node.name_any())).await;
            }
            ClaimStep::AwaitNode | ClaimStep::AwaitReady | ClaimStep::Done => {}
        }
    }

    /// Publishes an event about `object` (failures are logged: events are best effort).
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "publishing an event failed");
        }
    }

    /// Tells each pod, once per change, which node it is nominated to or why none can be launched.
    async fn tell_pods(
        &mut self,
        pods: &BTreeMap<String, Arc<Pod>>,
        plan: &solver::Plan,
        claim_of: &BTreeMap<String, String>,
    ) {
        let mut messages: Vec<(&Arc<Pod>, bool, &str, String)> = Vec::new();
        for p in &plan.placements {
            if let Some(pod) = pods.get(&p.pod) {
                messages.push((pod, false, "Nominated", format!("Pod should schedule on node {}", p.node)));
            }
        }
        for (pod_name, claim) in claim_of {
            if let Some(pod) = pods.get(pod_name) {
                messages.push((pod, false, "Nominated", format!("Pod should schedule on nodeclaim {claim}")));
            }
        }
        for u in &plan.unschedulable {
            if let Some(pod) = pods.get(&u.pod) {
                messages.push((
                    pod,
                    true,
                    "FailedProvisioning",
                    format!("cannot provision a node: {}", u.reason),
                ));
            }
        }
        let mut sent = 0;
        for (pod, warning, reason, note) in messages {
            let uid = pod.uid().unwrap_or_default();
            if self.told.get(&uid) == Some(&note) {
                continue;
            }
            self.event(pod.as_ref(), warning, reason, note.clone()).await;
            self.told.insert(uid, note);
            sent += 1;
        }
        tracing::debug!(events = sent, "pod events published");
    }

    async fn patch_claim_status(&self, name: &str, status: serde_json::Value) {
        if let Err(e) = self.claims.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await {
            tracing::warn!(nodeclaim = name, error = %e, "updating the NodeClaim status failed");
        }
    }

    async fn delete_claim(&mut self, name: &str, reason: &str) {
        match self.claims.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                self.metrics.nodeclaims_terminated.get_or_create(&metric_labels(&[("reason", reason)])).inc();
            }
            Err(e) => tracing::warn!(nodeclaim = name, error = %e, "deleting the NodeClaim failed"),
        }
    }

    /// The offerings a claim may launch as, cheapest first: its requirements over the catalog, without
    /// the ones that recently ran out of capacity.
    fn launch_options(&self, claim: &NodeClaim, now: Millis) -> Vec<LaunchOption> {
        let requirements = claim_requirements(&claim.spec);
        let mut options: Vec<LaunchOption> = self
            .catalog
            .compatible(&requirements)
            .flat_map(|t| {
                t.offerings.iter().filter(|o| o.available && o.is_compatible(&requirements)).map(|o| {
                    LaunchOption {
                        instance_type: t.name.clone(),
                        zone: o.zone.clone(),
                        capacity_type: o.capacity_type,
                        price: o.price,
                    }
                })
            })
            .filter(|o| !self.unavailable.is_unavailable(o, now))
            .collect();
        // The planned offering first, then the rest cheapest first.
        let planned = claim_option(&self.catalog, claim);
        options.sort_by(|a, b| {
            let pa = Some(a) != planned.as_ref();
            let pb = Some(b) != planned.as_ref();
            (pa, a.order_key()).cmp(&(pb, b.order_key()))
        });
        options
    }

    async fn launch(&mut self, claim: &NodeClaim, now: Millis) {
        let name = claim.name_any();
        let options = self.launch_options(claim, now);
        if options.is_empty() {
            tracing::warn!(
                nodeclaim = name,
                "no offering left for the NodeClaim; its pods will be planned again"
            );
            self.delete_claim(&name, "no_offerings").await;
            return;
        }
        let mut request_labels = claim.labels().clone();
        for key in [labels::INSTANCE_TYPE, labels::ZONE, labels::CAPACITY_TYPE] {
            request_labels.remove(key);
        }
        let request = LaunchRequest {
            nodeclaim: name.clone(),
            nodepool: claim.labels().get(labels::NODEPOOL).cloned().unwrap_or_default(),
            node_class: claim.spec.node_class_ref.name.clone(),
            options,
            labels: request_labels,
            taints: claim.spec.taints.iter().filter_map(api_taint).collect(),
            startup_taints: claim.spec.startup_taints.iter().filter_map(api_taint).collect(),
        };
        let method = metric_labels(&[("provider", self.provider.name()), ("method", "create")]);
        self.metrics.cloud_calls.get_or_create(&method).inc();
        match self.provider.create(&request).await {
            Ok(launched) => {
                let o = &launched.option;
                let patch = json!({"metadata": {"labels": {
                    labels::INSTANCE_TYPE: o.instance_type, labels::ZONE: o.zone,
                    labels::CAPACITY_TYPE: o.capacity_type.as_str()}}});
                if let Err(e) = self.claims.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await
                {
                    tracing::warn!(nodeclaim = name, error = %e, "labelling the NodeClaim failed");
                }
                let status = json!({"status": {
                    "providerID": launched.provider_id,
                    "capacity": launched.capacity.to_quantity_strings(),
                    "allocatable": launched.allocatable.to_quantity_strings(),
                    "conditions": with_condition(claim.status.as_ref(), "Launched", "Launched"),
                }});
                self.patch_claim_status(&name, status).await;
                tracing::info!(
                    nodeclaim = name,
                    instance_type = o.instance_type,
                    zone = o.zone,
                    capacity_type = o.capacity_type.as_str(),
                    "launched"
                );
                let note =
                    format!("Launched {} in {} ({})", o.instance_type, o.zone, o.capacity_type.as_str());
                self.event(claim, false, "Launched", note).await;
            }
            Err(CloudError::InsufficientCapacity(options)) => {
                self.metrics.cloud_errors.get_or_create(&method).inc();
                for o in &options {
                    self.unavailable.mark(o, now);
                }
                tracing::warn!(
                    nodeclaim = name,
                    count = options.len(),
                    "insufficient capacity; offerings unavailable for 3 minutes"
                );
            }
            Err(e) => {
                self.metrics.cloud_errors.get_or_create(&method).inc();
                tracing::warn!(nodeclaim = name, error = %e, "launch failed; retrying");
            }
        }
    }

    /// One step of a deleted NodeClaim's termination: taint, drain (PDBs respected), terminate.
    async fn terminate(&mut self, claim: &NodeClaim) {
        let name = claim.name_any();
        if !claim.finalizers().iter().any(|f| f == FINALIZER) {
            return;
        }
        let node = self.node_for(claim).or_else(|| {
            let node_name = claim.status.as_ref()?.node_name.as_deref()?;
            self.node_named(node_name)
        });
        let evictable: Vec<Arc<Pod>> = match &node {
            Some(node) => self
                .stores
                .pods
                .state()
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.name_any().as_str())
                })
                .filter(|p| pod_facts(p).evictable())
                .collect(),
            None => Vec::new(),
        };
        let taints =
            node.as_ref().and_then(|n| n.spec.as_ref()).and_then(|s| s.taints.clone()).unwrap_or_default();
        let tainted = taints.iter().any(|t| t.key == DISRUPTED_TAINT);
        match lifecycle::termination_step(node.is_some(), tainted, evictable.len()) {
            TerminationStep::Taint => {
                let node = node.expect("a node to taint");
                let mut taints = serde_json::to_value(&taints).unwrap_or_default();
                if let Some(list) = taints.as_array_mut() {
                    list.push(json!({"key": DISRUPTED_TAINT, "effect": "NoSchedule"}));
                }
                let patch = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": {"taints": taints}});
                match self.nodes.patch(&node.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
                {
                    Ok(_) => tracing::info!(nodeclaim = name, node = node.name_any(), "tainted for draining"),
                    Err(e) => tracing::warn!(nodeclaim = name, error = %e, "tainting the node failed"),
                }
            }
            TerminationStep::Drain => {
                for pod in evictable {
                    let api: Api<Pod> =
                        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
                    match api.evict(&pod.name_any(), &EvictParams::default()).await {
                        Ok(_) => tracing::info!(pod = pod_key(&pod), nodeclaim = name, "evicted"),
                        Err(kube::Error::Api(s)) if s.code == 429 => {
                            tracing::info!(
                                pod = pod_key(&pod),
                                nodeclaim = name,
                                message = s.message,
                                "eviction refused by a PodDisruptionBudget; retrying"
                            );
                            let note = format!("Draining nodeclaim {name} waits: {}", s.message);
                            self.event(pod.as_ref(), true, "DisruptionBlocked", note).await;
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => tracing::warn!(pod = pod_key(&pod), error = %e, "eviction failed"),
                    }
                }
            }
            TerminationStep::Terminate => {
                if let Some(id) = claim.status.as_ref().and_then(|s| s.provider_id.as_deref()) {
                    let method = metric_labels(&[("provider", self.provider.name()), ("method", "delete")]);
                    self.metrics.cloud_calls.get_or_create(&method).inc();
                    match self.provider.delete(id).await {
                        Ok(()) | Err(CloudError::NotFound(_)) => {}
                        Err(e) => {
                            self.metrics.cloud_errors.get_or_create(&method).inc();
                            tracing::warn!(nodeclaim = name, error = %e, "terminating failed; retrying");
                            return;
                        }
                    }
                }
                if let Some(node) = &node {
                    self.release_node(node).await;
                }
                let rest: Vec<&String> = claim.finalizers().iter().filter(|f| *f != FINALIZER).collect();
                let patch =
                    json!({"metadata": {"finalizers": rest, "resourceVersion": claim.resource_version()}});
                match self.claims.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Ok(_) => {
                        self.metrics
                            .nodeclaims_terminated
                            .get_or_create(&metric_labels(&[("reason", "deleted")]))
                            .inc();
                        tracing::info!(nodeclaim = name, "terminated");
                    }
                    Err(e) => {
                        tracing::warn!(nodeclaim = name, error = %e, "removing the NodeClaim finalizer failed")
                    }
                }
            }
        }
    }

    /// Nodes deleted by someone else: their NodeClaim is deleted (and terminates the node); nodes without
    /// a NodeClaim just lose our finalizer.
    async fn deleted_nodes(&mut self, claims: &[Arc<NodeClaim>]) {
        for node in self.stores.nodes.state() {
            if node.metadata.deletion_timestamp.is_none() || !node.finalizers().iter().any(|f| f == FINALIZER)
            {
                continue;
            }
            let id = provider_id(&node);
            match claims.iter().find(|c| c.status.as_ref().and_then(|s| s.provider_id.as_deref()) == id) {
                Some(claim) if claim.metadata.deletion_timestamp.is_none() => {
                    let claim_name = claim.name_any();
                    self.delete_claim(&claim_name, "node_deleted").await;
                }
                Some(_) => {}
                None => self.release_node(&node).await,
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pods: self.stores.pods.state(),
            nodes: self.stores.nodes.state(),
            claims: self
                .stores
                .claims
                .state()
                .iter()
                .map(|c| (**c).clone())
                .chain(self.created.values().cloned())
                .collect(),
            pools: self.stores.pools.state(),
            daemonsets: self.stores.daemonsets.state(),
        }
    }

    /// One disruption pass (every `disruption_every`): progress a replacement, or decide, validate after
    /// `disruption_validation`, and act.
    async fn disrupt(&mut self, now: Millis) {
        let Some(every) = self.settings.disruption_every else { return };
        if self.disruption.last.is_some_and(|t| now < t + every.as_millis() as Millis) {
            return;
        }
        self.disruption.last = Some(now);
        let snapshot = self.snapshot();
        let mut catalog = (*self.catalog).clone();
        self.unavailable.apply(&mut catalog, now);
        let mut model = Model::build(&snapshot, &catalog);
        // The cloud's view of drift (AMI, subnet, security groups, NodeClass) where the NodePool sees none.
        for node in &mut model.nodes {
            if node.drifted.is_none() {
                node.drifted = node.claim.as_ref().and_then(|c| self.machine_drift.get(c)).cloned();
            }
        }
        // consolidateAfter counts from the last change of a node's pods.
        let mut settled = BTreeMap::new();
        for n in &model.nodes {
            let mut names: Vec<&str> = n.reschedulable.iter().map(|p| p.name.as_str()).collect();
            names.sort_unstable();
            let signature = names.join(",");
            let entry = self.disruption.settled.entry(n.name.clone()).or_insert((signature.clone(), now));
            if entry.0 != signature {
                *entry = (signature, now);
            }
            settled.insert(n.name.clone(), entry.1);
        }
        self.disruption.settled.retain(|k, _| settled.contains_key(k));
        // Headroom held on a node counts as its pods: the node is not empty, and consolidating it must find
        // the headroom room elsewhere.
        let held = self.held_headroom(&model, now);
        for node in &mut model.nodes {
            if let Some(pods) = held.get(&node.name) {
                node.pods.extend(pods.iter().cloned());
                node.reschedulable.extend(pods.iter().cloned());
            }
        }
        if self.disruption.replacing.is_some() {
            self.progress_replacement(&snapshot, now).await;
            return;
        }
        if !snapshot.provisionable().is_empty() {
            return; // capacity is being added: consolidating now would fight it
        }
        let catalog = Arc::new(provisioning::launchable(&catalog, &model.templates));
        let (input, errors) = crate::disruption::input(&model, &settled, &BTreeSet::new(), catalog, now);
        for e in errors {
            tracing::warn!(error = e, "disruption settings ignored");
        }
        let started = Instant::now();
        let outcome = cartwright_core::disruption::decide(&input, now);
        tracing::debug!(decide_ms = started.elapsed().as_millis() as u64, command = ?outcome.command, "disruption decided");
        drop(input);
        let mut kept = outcome.kept.clone();
        for (node, reason) in &mut kept {
            if let Some(pods) = held.get(node) {
                *reason = format!("{}; {reason}", held_reason(pods));
            }
        }
        self.tell_claims(&model, &kept).await;
        let Some(command) = outcome.command else {
            self.disruption.pending = None;
            return;
        };
        let validation = self.settings.disruption_validation.as_millis() as Millis;
        match &self.disruption.pending {
            Some((nodes, at)) if *nodes == command.nodes && now >= at + validation => {
                self.disruption.pending = None;
            }
            Some((nodes, _)) if *nodes == command.nodes => return,
            _ => {
                tracing::info!(nodes = ?command.nodes, reason = command.reason.as_str(), savings_per_hour = command.savings.usd(),
                    "disruption decided; validating");
                self.disruption.pending = Some((command.nodes.clone(), now));
                if validation > 0 {
                    return;
                }
                self.disruption.pending = None;
            }
        }
        let reason = match command.reason {
            cartwright_core::disruption::Reason::Empty => "empty",
            cartwright_core::disruption::Reason::Underutilized => "underutilized",
            cartwright_core::disruption::Reason::Drifted => "drifted",
            cartwright_core::disruption::Reason::Expired => "expired",
            cartwright_core::disruption::Reason::Interrupted => "interrupted",
        };
        let old: Vec<(String, String)> = command
            .nodes
            .iter()
            .filter_map(|n| model.nodes.iter().find(|m| &m.name == n))
            .filter_map(|m| Some((m.name.clone(), m.claim.clone()?)))
            .collect();
        if command.replacements.is_empty() {
            for (node, claim) in &old {
                tracing::info!(node, nodeclaim = claim, reason, "disrupting");
                self.delete_claim(claim, reason).await;
            }
            return;
        }
        // Replace: keep new pods off the old nodes, launch the replacements, and delete the old nodes only
        // once the replacements are initialized.
        for (node, _) in &old {
            self.set_disrupted_taint(node, true).await;
        }
        let pods: BTreeMap<String, PodSpec> = model
            .nodes
            .iter()
            .filter(|m| command.nodes.contains(&m.name))
            .flat_map(|m| m.reschedulable.iter().map(|p| (p.name.clone(), p.clone())))
            .collect();
        let mut new_claims = Vec::new();
        for new in &command.replacements {
            if let Some(name) = self.create_claim(new, &model.pools, &pods).await {
                new_claims.push(name);
            }
        }
        tracing::info!(old = ?old, new = ?new_claims, reason, savings_per_hour = command.savings.usd(), "replacing");
        self.disruption.replacing = Some(Replacing { reason, old, new_claims, started: now });
    }

    /// The virtual pods now: the HPAs' headroom and guard, and the CapacityBuffers' chunks.
    fn virtual_pods(&mut self, now: Millis) -> Vec<PodSpec> {
        let mut pods = self.hpa_index.virtual_pods(now);
        if let Some(buffers) = &self.stores.buffers {
            let (chunks, problems) = crate::headroom::buffer_pods(
                &buffers.state(),
                &self.stores.podtemplates.state(),
                &self.stores.deployments.state(),
                &self.stores.statefulsets.state(),
            );
            if problems != self.buffer_problems {
                for p in &problems {
                    tracing::warn!(problem = p, "CapacityBuffer ignored");
                }
                self.buffer_problems = problems;
            }
            pods.extend(chunks);
        }
        pods
    }

    /// The virtual pods each live node holds (none when headroom is off).
    fn held_headroom(&mut self, model: &Model, now: Millis) -> BTreeMap<String, Vec<PodSpec>> {
        if self.settings.headroom.is_none() {
            return BTreeMap::new();
        }
        let pods = self.virtual_pods(now);
        let (settings, _) = crate::headroom::pool_settings(&model.pools);
        let views: Vec<NodeView<'_>> = model.nodes.iter().map(ModelNode::view).collect();
        cartwright_core::headroom::assign(pods, &views, &settings, solver::solve)
    }

    /// Interruption notices: a machine the cloud is taking away gets its replacements launched at once
    /// (its pods planned over the other nodes and new ones), its node tainted so nothing new lands there,
    /// and its NodeClaim deleted, which drains it within PDBs. Budgets and do-not-disrupt do not hold the
    /// machine back (it goes either way). A rebalance recommendation is only recorded as an event.
    async fn interrupt(&mut self, claims: &[Arc<NodeClaim>], now: Millis) {
        for notice in self.provider.take_interruptions() {
            let kind = notice.kind.as_str();
            self.metrics.interruptions.get_or_create(&metric_labels(&[("kind", kind)])).inc();
            let Some(claim) = claims.iter().find(|c| {
                c.status.as_ref().and_then(|s| s.provider_id.as_deref()).is_some_and(|id| notice.is_for(id))
            }) else {
                tracing::debug!(machine = notice.machine, kind, "an interruption notice for no NodeClaim");
                continue;
            };
            let note = format!("{} for {}", kind.replace('_', " "), notice.machine);
            self.event(claim.as_ref(), true, "Interrupted", note).await;
            if notice.kind.takes_the_machine() && claim.metadata.deletion_timestamp.is_none() {
                self.disruption.interrupted.insert(claim.name_any());
            }
        }
        if self.disruption.interrupted.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        let mut catalog = (*self.catalog).clone();
        self.unavailable.apply(&mut catalog, now);
        let model = Model::build(&snapshot, &catalog);
        let in_progress: BTreeSet<String> =
            self.disruption.replacing.iter().flat_map(|r| r.old.iter().map(|(n, _)| n.clone())).collect();
        let catalog = Arc::new(provisioning::launchable(&catalog, &model.templates));
        let (input, _) = crate::disruption::input(&model, &BTreeMap::new(), &in_progress, catalog, now);
        for claim in std::mem::take(&mut self.disruption.interrupted) {
            let Some(node) = model.nodes.iter().find(|n| n.claim.as_deref() == Some(claim.as_str())) else {
                // Not registered yet: nothing runs there, the claim just goes.
                self.delete_claim(&claim, "interrupted").await;
                continue;
            };
            if node.deleting {
                continue;
            }
            let command = cartwright_core::disruption::replace_interrupted(&input, &node.name);
            self.set_disrupted_taint(&node.name, true).await;
            let pods: BTreeMap<String, PodSpec> =
                node.reschedulable.iter().map(|p| (p.name.clone(), p.clone())).collect();
            let mut new_claims = Vec::new();
            for new in command.iter().flat_map(|c| &c.replacements) {
                if let Some(name) = self.create_claim(new, &model.pools, &pods).await {
                    new_claims.push(name);
                }
            }
            tracing::info!(node = node.name, nodeclaim = claim, replacements = ?new_claims, "interrupted: replacing and draining");
            self.delete_claim(&claim, "interrupted").await;
        }
    }

    /// Writes why each managed node stays as its NodeClaim's `Disruptable=False` condition (the reason's
    /// stable part; written only when it changes), and `Disruptable=True` when nothing holds it.
    async fn tell_claims(&mut self, model: &Model, kept: &BTreeMap<String, String>) {
        for node in &model.nodes {
            let Some(claim) = &node.claim else { continue };
            if node.deleting || !node.initialized {
                continue;
            }
            let why = kept.get(&node.name).map(|w| w.split(" (").next().unwrap_or(w).to_owned());
            let message = why.clone().unwrap_or_default();
            if self.disruption.told.get(claim) == Some(&message) {
                continue;
            }
            let condition = Condition {
                type_: "Disruptable".into(),
                status: if why.is_some() { "False" } else { "True" }.into(),
                reason: Some(if why.is_some() { "DisruptionBlocked" } else { "Disruptable" }.into()),
                message: why,
                last_transition_time: Some(Timestamp::now().to_string()),
                observed_generation: None,
            };
            let current = snapshot_conditions(&self.stores, claim);
            let mut conditions: Vec<Condition> =
                current.into_iter().filter(|c| c.type_ != "Disruptable").collect();
            conditions.push(condition);
            self.patch_claim_status(claim, json!({"status": {"conditions": conditions}})).await;
            self.disruption.told.insert(claim.clone(), message);
        }
    }

    async fn progress_replacement(&mut self, snapshot: &Snapshot, now: Millis) {
        let Some(r) = self.disruption.replacing.clone() else { return };
        let initialized = |name: &str| {
            snapshot.claims.iter().any(|c| {
                c.name_any() == name
                    && condition_true(
                        c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default(),
                        "Initialized",
                    )
            })
        };
        let gone = r.new_claims.iter().any(|n| !snapshot.claims.iter().any(|c| c.name_any() == *n));
        let limit = self.settings.timeouts.launch_ms + self.settings.timeouts.registration_ms;
        if gone || r.new_claims.is_empty() || now >= r.started + limit {
            tracing::warn!(old = ?r.old, "the replacement failed; the old nodes stay");
            for (node, _) in &r.old {
                self.set_disrupted_taint(node, false).await;
            }
            self.disruption.replacing = None;
            return;
        }
        if r.new_claims.iter().all(|n| initialized(n)) {
            for (node, claim) in &r.old {
                tracing::info!(node, nodeclaim = claim, reason = r.reason, "replacement ready; disrupting");
                self.delete_claim(claim, r.reason).await;
            }
            self.disruption.replacing = None;
        }
    }

    /// Adds or removes the `cartwright.sh/disrupted:NoSchedule` taint.
    async fn set_disrupted_taint(&self, node: &str, on: bool) {
        let Some(current) = self.node_named(node) else {
            return;
        };
        let mut taints = current.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let has = taints.iter().any(|t| t.key == DISRUPTED_TAINT);
        if has == on {
            return;
        }
        if on {
            taints.push(k8s_openapi::api::core::v1::Taint {
                key: DISRUPTED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
        } else {
            taints.retain(|t| t.key != DISRUPTED_TAINT);
        }
        let patch =
            json!({"metadata": {"resourceVersion": current.resource_version()}, "spec": {"taints": taints}});
        if let Err(e) = self.nodes.patch(node, &PatchParams::default(), &Patch::Merge(patch)).await {
            tracing::warn!(node, error = %e, "updating the disrupted taint failed");
        }
    }

    fn update_gauges(&self, claims: &[Arc<NodeClaim>]) {
        let pods = self.stores.pods.state();
        self.metrics.pods_scheduled.set(pods.iter().filter(|p| pod_facts(p).bound).count() as i64);
        let mut cost: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut headroom: BTreeMap<String, f64> = BTreeMap::new();
        for pool in self.stores.pools.state() {
            for ct in [CapacityType::Spot, CapacityType::OnDemand] {
                cost.insert((pool.name_any(), ct.as_str().to_owned()), 0.0);
            }
            headroom.insert(pool.name_any(), 0.0);
        }
        for claim in claims {
            let launched = claim.status.as_ref().is_some_and(|s| s.provider_id.is_some());
            if let (true, Some(o)) = (launched, claim_option(&self.catalog, claim)) {
                let pool = claim.labels().get(labels::NODEPOOL).cloned().unwrap_or_default();
                if claim.annotations().contains_key(crate::headroom::CLAIM_ANNOTATION) {
                    *headroom.entry(pool.clone()).or_default() += o.price.usd();
                }
                *cost.entry((pool, o.capacity_type.as_str().to_owned())).or_default() += o.price.usd();
            }
        }
        for (pool, usd) in headroom {
            self.metrics
                .headroom_cost_per_hour
                .get_or_create(&metric_labels(&[("nodepool", &pool)]))
                .set(usd);
        }
        for ((pool, ct), usd) in cost {
            self.metrics
                .cost_per_hour
                .get_or_create(&metric_labels(&[("nodepool", &pool), ("capacity_type", &ct)]))
                .set(usd);
        }
    }

    /// Batches provisionable pods and, when the batch closes, plans them and creates NodeClaims.
    async fn provision(&mut self, now: Millis) {
        let pods = self.stores.pods.state();
        let provisionable: Vec<Arc<Pod>> =
            pods.iter().filter(|p| pod_facts(p).provisionable()).cloned().collect();
        self.metrics.pods_pending.set(provisionable.len() as i64);
        let uids: HashSet<String> = provisionable.iter().filter_map(|p| p.uid()).collect();
        for uid in &uids {
            if self.seen.insert(uid.clone()) {
                self.batcher.observe(now);
            }
        }
        self.seen.retain(|u| uids.contains(u));
        self.told.retain(|u, _| uids.contains(u));
        let replan = self.settings.replan_every.as_millis() as Millis;
        if !uids.is_empty()
            && self.batcher.deadline().is_none()
            && self.last_plan.is_none_or(|t| now >= t + replan)
        {
            self.batcher.observe(now);
        }
        if !self.batcher.close_if_due(now) || provisionable.is_empty() {
            return;
        }
        self.last_plan = Some(now);
        let snapshot = self.snapshot();
        let mut catalog = (*self.catalog).clone();
        self.unavailable.apply(&mut catalog, now);
        let Some((problem, pools)) = problem(&snapshot, &provisionable, &catalog) else { return };
        let pending: BTreeMap<String, PodSpec> =
            problem.pods.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let started = Instant::now();
        let plan = match tokio::task::spawn_blocking(move || solver::solve(&problem)).await {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(error = %e, "the solver failed");
                return;
            }
        };
        self.metrics.solve_duration.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            pods = pending.len(),
            new_nodes = plan.new_nodes.len(),
            placed = plan.placements.len(),
            unschedulable = plan.unschedulable.len(),
            cost_per_hour = plan.cost.usd(),
            solve_ms = started.elapsed().as_millis() as u64,
            "planned"
        );
        if let Some(first) = plan.unschedulable.first() {
            tracing::warn!(
                pods = plan.unschedulable.len(),
                first_pod = first.pod,
                reason = first.reason,
                "cannot provision nodes for some pods"
            );
        }
        let mut claim_of = BTreeMap::new();
        for new in &plan.new_nodes {
            if let Some(claim) = self.create_claim(new, &pools, &pending).await {
                for pod in &new.pods {
                    claim_of.insert(pod.clone(), claim.clone());
                }
            }
        }
        let by_name: BTreeMap<String, Arc<Pod>> =
            provisionable.iter().map(|p| (pod_key(p), p.clone())).collect();
        self.tell_pods(&by_name, &plan, &claim_of).await;
    }

    /// Headroom: the HPAs' virtual pods are planned over the cluster as it is (in-flight NodeClaims and the
    /// pods nominated to them count, so nothing is launched twice) after the real pods, which `provision`
    /// plans; NodeClaims are created for the nodes they need, within each NodePool's headroom budget.
    /// Planned when the virtual pods change, and every `replan_every` while there are some.
    async fn provision_headroom(&mut self, now: Millis) {
        if self.settings.headroom.is_none() {
            return;
        }
        let pods = self.virtual_pods(now);
        let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        self.metrics.headroom_pods.clear();
        for name in &names {
            if let Some((owner, kind)) = name.rsplit_once('~') {
                let kind = kind.split('-').next().unwrap_or(kind);
                self.metrics
                    .headroom_pods
                    .get_or_create(&metric_labels(&[("owner", owner), ("kind", kind)]))
                    .inc();
            }
        }
        let replan = self.settings.replan_every.as_millis() as Millis;
        let due = match &self.last_headroom {
            None => !names.is_empty(),
            Some((at, last)) => *last != names || (!names.is_empty() && now >= at + replan),
        };
        if !due {
            return;
        }
        self.last_headroom = Some((now, names));
        if pods.is_empty() {
            return;
        }
        let snapshot = self.snapshot();
        let mut catalog = (*self.catalog).clone();
        self.unavailable.apply(&mut catalog, now);
        let model = Model::build(&snapshot, &catalog);
        if model.templates.is_empty() {
            return;
        }
        let problem = model_problem(&model, &[], &catalog);
        let (settings, errors) = crate::headroom::pool_settings(&model.pools);
        for e in errors {
            tracing::warn!(error = e, "headroom setting ignored");
        }
        let pool_cost = pool_costs(&model);
        let by_name: BTreeMap<String, PodSpec> = pods.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let plan = tokio::task::spawn_blocking(move || {
            cartwright_core::headroom::plan(&problem, pods, &settings, &pool_cost, solver::solve)
        })
        .await;
        let plan = match plan {
            Ok(plan) => plan,
            Err(e) => {
                tracing::error!(error = %e, "the solver failed");
                return;
            }
        };
        if !plan.over_budget.is_empty() {
            tracing::info!(pods = plan.over_budget.len(), "headroom pods over their NodePool's budget");
        }
        for new in &plan.headroom.new_nodes {
            if let Some(claim) = self.create_claim(new, &model.pools, &by_name).await {
                tracing::info!(nodeclaim = claim, pods = new.pods.len(), "launching for headroom");
            }
        }
    }

    /// Creates the NodeClaim for a planned node; returns its name.
    async fn create_claim(
        &mut self,
        new: &NewNode,
        pools: &BTreeMap<String, Arc<NodePool>>,
        pending: &BTreeMap<String, PodSpec>,
    ) -> Option<String> {
        // A node launched only for virtual pods says which HPAs it is for.
        let held = cartwright_core::headroom::held_for(new.pods.iter().map(String::as_str));
        let headroom_for = (!held.is_empty()).then(|| held.into_iter().collect::<Vec<_>>().join(","));
        let pool = pools.get(&new.nodepool)?;
        let name = format!("{}-{}", new.nodepool, suffix());
        let template = &pool.spec.template;
        let mut requirements: Vec<NodeSelectorRequirementWithMinValues> = template
            .spec
            .requirements
            .iter()
            .filter(|r| {
                ![labels::INSTANCE_TYPE, labels::ZONE, labels::CAPACITY_TYPE].contains(&r.key.as_str())
            })
            .cloned()
            .collect();
        let mut narrowed = |key: &str, values: Vec<String>| {
            let min_values =
                template.spec.requirements.iter().find(|r| r.key == key).and_then(|r| r.min_values);
            requirements.push(NodeSelectorRequirementWithMinValues {
                key: key.to_owned(),
                operator: "In".into(),
                values,
                min_values,
            });
        };
        let mut types: Vec<String> = Vec::new();
        let mut zones: BTreeSet<String> = BTreeSet::new();
        let mut capacity_types: BTreeSet<&str> = BTreeSet::new();
        for o in &new.alternatives {
            if !types.contains(&o.instance_type) {
                types.push(o.instance_type.clone());
            }
            zones.insert(o.zone.clone());
            capacity_types.insert(o.capacity_type.as_str());
        }
        narrowed(labels::INSTANCE_TYPE, types);
        narrowed(labels::ZONE, zones.into_iter().collect());
        narrowed(labels::CAPACITY_TYPE, capacity_types.into_iter().map(str::to_owned).collect());
        let mut claim_labels = new.labels.clone();
        claim_labels.insert(labels::NODEPOOL.into(), new.nodepool.clone());
        claim_labels.insert(labels::INSTANCE_TYPE.into(), new.launch.instance_type.clone());
        claim_labels.insert(labels::ZONE.into(), new.launch.zone.clone());
        claim_labels.insert(labels::CAPACITY_TYPE.into(), new.launch.capacity_type.as_str().into());
        let mut requests = Resources::new();
        for pod in &new.pods {
            if let Some(p) = pending.get(pod) {
                requests.add_assign(&p.requests);
            }
        }
        let claim = NodeClaim {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                labels: Some(claim_labels),
                annotations: Some(
                    [(nodepool::HASH_ANNOTATION.to_owned(), nodepool::template_hash(&pool.spec))]
                        .into_iter()
                        .chain(headroom_for.map(|h| (crate::headroom::CLAIM_ANNOTATION.to_owned(), h)))
                        .collect(),
                ),
                finalizers: Some(vec![FINALIZER.into()]),
                owner_references: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                        api_version: format!("{}/v1", nodepool::GROUP),
                        kind: "NodePool".into(),
                        name: pool.name_any(),
                        uid: pool.uid().unwrap_or_default(),
                        block_owner_deletion: Some(true),
                        controller: None,
                    },
                ]),
                ..Default::default()
            },
            spec: NodeClaimSpec {
                requirements,
                taints: template.spec.taints.clone(),
                startup_taints: template.spec.startup_taints.clone(),
                resources: Some(ResourceRequirements { requests: requests.to_quantity_strings() }),
                node_class_ref: template.spec.node_class_ref.clone().unwrap_or_default(),
                termination_grace_period: template.spec.termination_grace_period.clone(),
                expire_after: template.spec.expire_after.clone(),
            },
            status: None,
        };
        match self.claims.create(&PostParams::default(), &claim).await {
            Ok(created) => {
                self.metrics
                    .nodeclaims_created
                    .get_or_create(&metric_labels(&[("nodepool", &new.nodepool)]))
                    .inc();
                tracing::info!(
                    nodeclaim = name,
                    nodepool = new.nodepool,
                    instance_type = new.launch.instance_type,
                    zone = new.launch.zone,
                    pods = new.pods.len(),
                    "created NodeClaim"
                );
                self.created.insert(name.clone(), created);
                Some(name)
            }
            Err(e) => {
                tracing::warn!(nodeclaim = name, error = %e, "creating the NodeClaim failed");
                None
            }
        }
    }
}
