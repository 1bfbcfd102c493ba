//! The discrete-event engine: a virtual clock, a simulated kube-scheduler, ReplicaSets driven by HPAs and
//! rollouts, a simulated cloud whose nodes take a log-normal time to become ready, and the provisioning
//! decision (batch window, then the solver) from the same code the controller runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use cartwright_api::Manifests;
use cartwright_binpack::solver::{Algorithm, NewNode, NodePoolTemplate, PodSpec};
use cartwright_binpack::{
    CapacityType, Catalog, Price, ResourceName, Resources, Taint, Toleration, labels, taints,
};
use cartwright_core::batcher::{BatchWindow, Batcher};
use cartwright_core::disruption::{self, Candidate, Input};
use cartwright_core::headroom::{self, HpaModel, Observation, PoolHeadroom};
use cartwright_core::hpa::{HpaSpec, HpaState, MetricSample, Millis};
use cartwright_core::provisioning::{self, NodeView};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::report::{Collector, Report};

/// How often (in simulated time) the solver-backed consolidation methods run; emptiness runs every pass.
const CONSOLIDATION_EVERY: Millis = 600_000;
use crate::scenario::{HeadroomMode, Load, Scenario, Strategy, Timing};

type PodId = usize;
type NodeId = usize;

#[derive(Clone, Debug)]
struct SimPod {
    workload: usize,
    revision: usize,
    spec: Arc<PodSpec>,
    created: Millis,
    node: Option<NodeId>,
    nominated: Option<NodeId>,
    ready_at: Option<Millis>,
    deleted: bool,
    /// Created because its HPA scaled up (what headroom is for).
    hpa_added: bool,
}

#[derive(Clone, Debug)]
struct SimNode {
    name: String,
    nodepool: Option<String>,
    instance_type: String,
    capacity_type: CapacityType,
    price_per_ms: f64,
    price_per_hour: f64,
    labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    allocatable: Resources,
    /// What counts against NodePool limits.
    capacity: Resources,
    requested: Resources,
    pods: Vec<PodId>,
    /// Pending pods the last plan put on this node (launching, or ready with room).
    nominated: Vec<PodId>,
    /// The taints that keep pods off (NoSchedule, NoExecute).
    hard_taints: Vec<Taint>,
    launched: Millis,
    ready: Option<Millis>,
    terminated: Option<Millis>,
    cordoned: bool,
    /// Fixed fleet nodes (from the scenario's Node manifests) are never launched or removed.
    fixed: bool,
    /// When its pods last changed (or it became ready): `consolidateAfter` counts from here.
    settled_since: Millis,
}

impl SimNode {
    fn alive(&self) -> bool {
        self.terminated.is_none()
    }
}

#[derive(Clone, Debug)]
struct ReplicaSet {
    revision: usize,
    replicas: i32,
    pods: Vec<PodId>,
}

#[derive(Clone, Debug)]
enum RolloutPhase {
    Idle,
    Rolling { max_surge: String, max_unavailable: String },
    BlueGreenWaiting { promote_after: Millis, scale_down_delay: Millis, green_ready_since: Option<Millis> },
    BlueGreenPromoted { old_until: Millis },
    Canary { steps: Vec<crate::scenario::CanaryStep>, step: usize, weight: u32, paused_until: Option<Millis> },
}

#[derive(Clone, Debug)]
struct SimWorkload {
    name: String,
    template: Arc<PodSpec>,
    desired: i32,
    hpa: Option<(HpaSpec, HpaState)>,
    /// Its HPA as headroom sees it (observed every sync).
    model: Option<HpaModel>,
    /// Pods its HPA's scale-ups asked for that are not created yet.
    scale_up_owed: i32,
    load: Option<Load>,
    pod_capacity: f64,
    sets: Vec<ReplicaSet>,
    /// A trace's pods, by row: their specs and current pod (a replay, not a ReplicaSet).
    trace: Option<TraceState>,
    /// A Job's progress: its pods complete `duration` after they are ready.
    job: Option<JobState>,
    /// Live pods, and how many of them are ready (kept as counters: the HPA reads them every sync).
    live_pods: i32,
    ready_pods: i32,
    phase: RolloutPhase,
    next_revision: usize,
}

#[derive(Clone, Debug)]
struct JobState {
    parallelism: i32,
    completions: i32,
    succeeded: i32,
    duration_ms: Millis,
}

#[derive(Clone, Debug)]
struct TraceState {
    specs: Vec<Arc<PodSpec>>,
    current: Vec<Option<PodId>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    HpaSync(usize),
    /// Headroom is planned (every HPA sync period).
    Headroom,
    BatchClose,
    NodeReady(NodeId),
    PodReady(PodId),
    Consolidate,
    Sample,
    RolloutStart(usize),
    RolloutTick(usize),
    SpotNotice(Option<NodeId>),
    SpotTerminate(NodeId),
    SpotDraw,
    /// Pod `row` of trace workload `w` is created.
    TraceCreate(usize, usize),
    /// Pod `row` of trace workload `w` is deleted.
    TraceDelete(usize, usize),
    /// A zone outage starts (true) or ends.
    ZoneOutage(usize, bool),
    /// A capacity shortage starts (true) or ends.
    Shortage(usize, bool),
    /// A Job pod finishes its work.
    PodComplete(PodId),
}

/// The simulator's settings beyond the scenario.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub algorithm: Algorithm,
}

/// One run of a scenario.
pub struct Engine {
    now: Millis,
    end: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<(Millis, u64, Event)>>,
    rng: StdRng,
    timing: Timing,
    algorithm: Algorithm,
    catalog: Arc<Catalog>,
    nodepools: Vec<NodePoolTemplate>,
    /// NodePool specs by name: their disruption settings are read every pass (budget windows move).
    pool_specs: BTreeMap<String, cartwright_api::nodepool::NodePoolSpec>,
    /// A consolidation replacing nodes: (old nodes, their replacements) until the replacements are ready.
    replacing: Option<(Vec<NodeId>, Vec<NodeId>)>,
    /// Bumped whenever a pod binds or leaves a node or a node comes or goes: a disruption decision that
    /// found nothing holds until this changes or a node's `consolidateAfter` runs out (`quiet_until`).
    epoch: u64,
    quiet: Option<(u64, Millis)>,
    last_consolidation: Option<Millis>,
    daemonsets: Vec<cartwright_binpack::solver::DaemonSetSpec>,
    pods: Vec<SimPod>,
    /// Live pods not bound to a node.
    pending: BTreeSet<PodId>,
    nodes: Vec<SimNode>,
    /// Nodes not terminated.
    live: BTreeSet<NodeId>,
    workloads: Vec<SimWorkload>,
    rollouts: Vec<crate::scenario::Rollout>,
    batcher: Batcher,
    batch_scheduled: Option<Millis>,
    spot_rate_per_ms: f64,
    /// Per instance family, overriding `spot_rate_per_ms`.
    spot_rate_by_family: BTreeMap<String, f64>,
    zone_outages: Vec<crate::scenario::ZoneOutage>,
    shortages: Vec<crate::scenario::CapacityShortage>,
    headroom: crate::scenario::Headroom,
    headroom_settings: headroom::Settings,
    pool_headroom: BTreeMap<String, PoolHeadroom>,
    /// The last headroom pass's virtual pods and the epoch it saw: unchanged, nothing is planned again.
    last_headroom: Option<(u64, Vec<String>)>,
    /// Virtual pods by the node holding them (what disruption must keep room for).
    held: BTreeMap<String, Vec<PodSpec>>,
    pub(crate) collector: Collector,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("now", &self.now).field("nodes", &self.nodes.len()).finish()
    }
}

impl Engine {
    /// Builds the initial state: catalog, NodePools, fixed nodes, workloads at their initial replicas.
    pub fn new(
        scenario: &Scenario,
        base: &std::path::Path,
        manifests: &Manifests,
        catalog: Catalog,
        options: Options,
    ) -> Result<Engine, String> {
        let problem = manifests.to_problem(catalog);
        // Plan over the instance types some NodePool can launch (the solver would discard the others on
        // every planning round); the full catalog still prices the fixed fleet.
        let full = problem.catalog.clone();
        let catalog = Arc::new(provisioning::launchable(&full, &problem.nodepools));
        let mut pool_specs = BTreeMap::new();
        for pool in &manifests.nodepools {
            cartwright_api::nodepool::disruption_policy(&pool.spec, 0)
                .map_err(|e| format!("NodePool {}: {e}", pool.name))?;
            pool_specs.insert(pool.name.clone(), pool.spec.clone());
        }
        let timing = scenario.timing.clone();
        let mut engine = Engine {
            now: 0,
            end: scenario.duration.millis(),
            seq: 0,
            queue: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(scenario.seed),
            batcher: Batcher::new(BatchWindow {
                idle_ms: timing.batch_idle.millis(),
                max_ms: timing.batch_max.millis(),
            }),
            timing,
            algorithm: options.algorithm,
            catalog,
            nodepools: problem.nodepools,
            pool_specs,
            replacing: None,
            epoch: 0,
            quiet: None,
            last_consolidation: None,
            daemonsets: problem.daemonsets,
            pods: Vec::new(),
            pending: BTreeSet::new(),
            nodes: Vec::new(),
            live: BTreeSet::new(),
            workloads: Vec::new(),
            rollouts: scenario.rollouts.clone(),
            batch_scheduled: None,
            spot_rate_per_ms: scenario.events.spot_interruptions.per_node_day / 86_400_000.0,
            spot_rate_by_family: scenario
                .events
                .spot_interruptions
                .per_family_per_node_day
                .iter()
                .map(|(family, rate)| (family.clone(), rate / 86_400_000.0))
                .collect(),
            zone_outages: scenario.events.zone_outages.clone(),
            shortages: scenario.events.capacity_shortages.clone(),
            headroom: scenario.headroom.clone(),
            headroom_settings: {
                let defaults = headroom::Settings::default();
                headroom::Settings {
                    horizon_ms: scenario.headroom.horizon.map_or(defaults.horizon_ms, |d| d.millis()),
                    trend_window_ms: scenario
                        .headroom
                        .trend_window
                        .map_or(defaults.trend_window_ms, |d| d.millis()),
                }
            },
            pool_headroom: BTreeMap::new(),
            last_headroom: None,
            held: BTreeMap::new(),
            collector: Collector::default(),
        };
        let budget = PoolHeadroom {
            enabled: true,
            budget_per_hour: scenario
                .headroom
                .budget_per_hour
                .map(|usd| Price((usd * Price::NANOS_PER_USD as f64).round() as u64)),
            budget_percent: scenario.headroom.budget_percent,
        };
        for pool in &engine.nodepools {
            engine.pool_headroom.insert(pool.name.clone(), budget);
        }
        for node in &manifests.nodes {
            let instance_type = node.labels.get(labels::INSTANCE_TYPE).cloned().unwrap_or_default();
            let capacity_type = match node.labels.get(labels::CAPACITY_TYPE).map(String::as_str) {
                Some("spot") => CapacityType::Spot,
                _ => CapacityType::OnDemand,
            };
            let zone = node.labels.get(labels::ZONE).cloned().unwrap_or_default();
            let price = full
                .get(&instance_type)
                .and_then(|t| t.offerings.iter().find(|o| o.capacity_type == capacity_type && o.zone == zone))
                .or_else(|| {
                    full.get(&instance_type)
                        .and_then(|t| t.offerings.iter().find(|o| o.capacity_type == capacity_type))
                })
                .map(|o| o.price.usd())
                .unwrap_or(0.0);
            let id = engine.nodes.len();
            engine.nodes.push(SimNode {
                name: node.name.clone(),
                nodepool: None,
                instance_type,
                capacity_type,
                price_per_ms: price / 3_600_000.0,
                price_per_hour: price,
                labels: node.labels.clone(),
                taints: node.taints.clone(),
                allocatable: node.allocatable.clone(),
                capacity: node.capacity.clone(),
                requested: Resources::new(),
                pods: vec![],
                nominated: vec![],
                hard_taints: node.taints.iter().filter(|t| t.is_hard()).cloned().collect(),
                launched: 0,
                ready: Some(0),
                terminated: None,
                cordoned: !node.schedulable,
                fixed: true,
                settled_since: 0,
            });
            engine.live.insert(id);
            engine.add_daemonset_load(id);
        }
        for (i, w) in scenario.workloads.iter().enumerate() {
            let object = crate::scenario::workload_object(i, w)?;
            let (name, namespace) = (object.name, object.namespace);
            let pod_spec =
                object.template.spec.as_ref().ok_or(format!("workloads[{i}]: spec.template.spec missing"))?;
            let pod_labels =
                object.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
            let (template, notes) =
                cartwright_api::manifests::pod_spec(&format!("{namespace}/{name}"), pod_spec, pod_labels)
                    .map_err(|e| format!("workloads[{i}]: {e}"))?;
            for note in notes {
                tracing::warn!("workload {name}: {note} is not modelled yet and is ignored");
            }
            let hpa = w.hpa.as_ref().map(|h| crate::scenario::hpa(i, h)).transpose()?;
            let mut desired = object.replicas;
            if let Some(h) = &hpa {
                desired = desired.clamp(h.min_replicas, h.max_replicas);
            }
            let model = hpa
                .as_ref()
                .map(|h| HpaModel::new(format!("{namespace}/{name}"), h.clone(), template.clone(), desired));
            engine.workloads.push(SimWorkload {
                name,
                template: Arc::new(template),
                desired,
                hpa: hpa.map(|h| (h, HpaState::default())),
                model,
                scale_up_owed: 0,
                load: w.load.clone(),
                pod_capacity: w.pod_capacity.unwrap_or(1.0),
                sets: vec![ReplicaSet { revision: 0, replicas: desired, pods: vec![] }],
                trace: None,
                job: object.job.map(|(parallelism, completions)| JobState {
                    parallelism,
                    completions,
                    succeeded: 0,
                    duration_ms: w.pod_duration.map_or(0, |d| d.millis()),
                }),
                live_pods: 0,
                ready_pods: 0,
                phase: RolloutPhase::Idle,
                next_revision: 1,
            });
        }
        for (r, rollout) in scenario.rollouts.iter().enumerate() {
            if !engine.workloads.iter().any(|w| w.name == rollout.workload) {
                return Err(format!("rollouts[{r}].workload: no workload named `{}`", rollout.workload));
            }
            engine.push(rollout.at.millis(), Event::RolloutStart(r));
        }
        for (i, o) in scenario.events.zone_outages.iter().enumerate() {
            engine.push(o.at.millis(), Event::ZoneOutage(i, true));
            engine.push(o.at.millis() + o.lasts.millis(), Event::ZoneOutage(i, false));
        }
        for (i, c) in scenario.events.capacity_shortages.iter().enumerate() {
            engine.push(c.at.millis(), Event::Shortage(i, true));
            engine.push(c.at.millis() + c.lasts.millis(), Event::Shortage(i, false));
        }
        for (i, trace) in scenario.traces.iter().enumerate() {
            engine.add_trace(i, trace, base)?;
        }
        for t in &scenario.events.spot_interruptions.at {
            engine.push(t.millis(), Event::SpotNotice(None));
        }
        if engine.spot_rate_per_ms > 0.0 || engine.spot_rate_by_family.values().any(|r| *r > 0.0) {
            engine.push(60_000, Event::SpotDraw);
        }
        for w in 0..engine.workloads.len() {
            if engine.workloads[w].hpa.is_some() {
                engine.push(engine.timing.hpa_sync.millis(), Event::HpaSync(w));
            }
        }
        if engine.headroom.mode != HeadroomMode::None {
            engine.push(engine.timing.hpa_sync.millis(), Event::Headroom);
        }
        engine.push(0, Event::Sample);
        engine.push(engine.timing.consolidation_interval.millis(), Event::Consolidate);
        for w in 0..engine.workloads.len() {
            engine.reconcile(w);
        }
        Ok(engine)
    }

    /// A trace becomes a workload whose pods are created and deleted at the traced times.
    fn add_trace(
        &mut self,
        i: usize,
        trace: &crate::scenario::Trace,
        base: &std::path::Path,
    ) -> Result<(), String> {
        let path = base.join(&trace.file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("traces[{i}].file: cannot read {}: {e}", path.display()))?;
        let rows =
            crate::trace::parse(&text).map_err(|e| format!("traces[{i}].file {}: {e}", path.display()))?;
        let (template, notes) = match &trace.pod_template {
            None => (PodSpec::new("", Resources::new()), vec![]),
            Some(value) => {
                let spec: k8s_openapi::api::core::v1::PodSpec =
                    serde_path_to_error::deserialize(value.clone())
                        .map_err(|e| format!("traces[{i}].podTemplate.{}: {}", e.path(), e.inner()))?;
                cartwright_api::manifests::pod_spec("", &spec, Default::default())
                    .map_err(|e| format!("traces[{i}].podTemplate: {e}"))?
            }
        };
        for note in notes {
            tracing::warn!("trace {i}: {note} is not modelled yet and is ignored");
        }
        let name =
            path.file_stem().map_or_else(|| format!("trace-{i}"), |s| s.to_string_lossy().into_owned());
        let speedup = trace.speedup.unwrap_or(1.0);
        let w = self.workloads.len();
        let gpu_toleration = Toleration::exists(cartwright_binpack::resources::NVIDIA_GPU, None);
        let specs: Vec<Arc<PodSpec>> = rows
            .iter()
            .map(|r| {
                let mut spec = template.clone();
                spec.name = format!("{name}/{}", r.name);
                spec.requests =
                    Resources::new().with_cpu_millis(r.cpu_milli).with_memory_mib(r.memory_mib).with_pods(1);
                if r.gpus > 0 {
                    spec.requests =
                        spec.requests.clone().with(cartwright_binpack::resources::NVIDIA_GPU, r.gpus);
                    spec.tolerations.push(gpu_toleration.clone());
                }
                Arc::new(spec)
            })
            .collect();
        self.workloads.push(SimWorkload {
            name: name.clone(),
            template: Arc::new(template),
            desired: 0,
            hpa: None,
            model: None,
            scale_up_owed: 0,
            load: None,
            pod_capacity: 1.0,
            sets: vec![ReplicaSet { revision: 0, replicas: 0, pods: vec![] }],
            trace: Some(TraceState { specs, current: vec![None; rows.len()] }),
            job: None,
            live_pods: 0,
            ready_pods: 0,
            phase: RolloutPhase::Idle,
            next_revision: 1,
        });
        let at = |seconds: u64| (seconds as f64 * 1000.0 / speedup) as Millis;
        for (row, r) in rows.iter().enumerate() {
            if at(r.created_s) > self.end {
                continue;
            }
            self.push(at(r.created_s), Event::TraceCreate(w, row));
            if let Some(d) = r.deleted_s {
                self.push(at(d), Event::TraceDelete(w, row));
            }
        }
        Ok(())
    }

    fn push(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    /// Runs to the end of the scenario and returns the report; `progress` is told the fraction done.
    pub fn run(mut self, mut progress: impl FnMut(f64)) -> Report {
        let mut last_progress = 0;
        while let Some(Reverse((at, _, event))) = self.queue.pop() {
            if at > self.end {
                break;
            }
            self.now = at;
            self.handle(event);
            if self.now / 60_000 != last_progress {
                last_progress = self.now / 60_000;
                progress(self.now as f64 / self.end as f64);
            }
        }
        self.now = self.end;
        self.sample();
        let end = self.end;
        let mut cost_by_capacity: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut node_hours: BTreeMap<String, f64> = BTreeMap::new();
        for n in &self.nodes {
            let until = n.terminated.unwrap_or(end).min(end);
            let ms = until.saturating_sub(n.launched) as f64;
            *cost_by_capacity.entry(n.capacity_type.as_str()).or_default() += ms * n.price_per_ms;
            let family = n.instance_type.split('.').next().unwrap_or_default().to_owned();
            *node_hours.entry(family).or_default() += ms / 3_600_000.0;
        }
        for p in &self.pods {
            if p.node.is_none() && !p.deleted {
                self.collector.still_pending(end.saturating_sub(p.created));
            }
        }
        let mut by_zone: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for &n in &self.live {
            let zone = self.nodes[n].labels.get(labels::ZONE).cloned().unwrap_or_default();
            for &p in &self.nodes[n].pods {
                let workload = self.workloads[self.pods[p].workload].name.clone();
                *by_zone.entry(workload).or_default().entry(zone.clone()).or_default() += 1;
            }
        }
        let mut report = self.collector.finish(end, cost_by_capacity, node_hours);
        report.pods_by_zone_at_end = by_zone;
        report
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::HpaSync(w) => {
                self.hpa_sync(w);
                self.push(self.now + self.timing.hpa_sync.millis(), Event::HpaSync(w));
            }
            Event::Headroom => {
                self.plan_headroom();
                self.push(self.now + self.timing.hpa_sync.millis(), Event::Headroom);
            }
            Event::BatchClose => {
                self.batch_scheduled = None;
                if self.batcher.close_if_due(self.now) {
                    self.provision();
                } else if let Some(deadline) = self.batcher.deadline() {
                    self.schedule_batch(deadline);
                }
            }
            Event::NodeReady(n) => {
                if self.nodes[n].alive() {
                    self.nodes[n].ready = Some(self.now);
                    self.nodes[n].settled_since = self.now;
                    self.epoch += 1;
                    self.node_ready(n);
                }
            }
            Event::PodReady(p) => {
                if !self.pods[p].deleted && self.pods[p].node.is_some() {
                    self.pods[p].ready_at = Some(self.now);
                    let w = self.pods[p].workload;
                    self.workloads[w].ready_pods += 1;
                    if let Some(job) = &self.workloads[w].job {
                        let done = self.now + job.duration_ms;
                        self.push(done, Event::PodComplete(p));
                    }
                    if !matches!(self.workloads[w].phase, RolloutPhase::Idle) {
                        self.rollout_progress(w);
                    }
                }
            }
            Event::Consolidate => {
                self.retry_unplanned();
                self.disrupt();
                self.push(self.now + self.timing.consolidation_interval.millis(), Event::Consolidate);
            }
            Event::Sample => {
                self.sample();
                self.push(self.now + self.timing.sample_interval.millis(), Event::Sample);
            }
            Event::RolloutStart(r) => self.start_rollout(r),
            Event::RolloutTick(w) => self.rollout_progress(w),
            Event::SpotNotice(node) => self.spot_notice(node),
            Event::SpotTerminate(n) => self.terminate(n),
            Event::TraceCreate(w, row) => self.trace_create(w, row),
            Event::TraceDelete(w, row) => self.trace_delete(w, row),
            Event::ZoneOutage(i, start) => self.zone_outage(i, start),
            Event::Shortage(i, start) => self.shortage(i, start),
            Event::PodComplete(p) => self.pod_complete(p),
            Event::SpotDraw => {
                // Thinning: each spot node is interrupted with probability rate × minute in this minute.
                let minute = 60_000.0;
                let spot = self.spot_nodes(false);
                for n in spot {
                    let family = self.nodes[n].instance_type.split('.').next().unwrap_or_default();
                    let rate = self.spot_rate_by_family.get(family).copied().unwrap_or(self.spot_rate_per_ms);
                    if self.rng.random::<f64>() < rate * minute {
                        self.spot_notice(Some(n));
                    }
                }
                self.push(self.now + 60_000, Event::SpotDraw);
            }
        }
    }

    // ---- workloads -------------------------------------------------------------------------------

    fn ready_pods(&self, w: usize) -> (i32, i32) {
        let workload = &self.workloads[w];
        (workload.ready_pods, workload.live_pods - workload.ready_pods)
    }

    fn hpa_sync(&mut self, w: usize) {
        let (ready, unready) = self.ready_pods(w);
        let workload = &self.workloads[w];
        let load = workload.load.as_ref().map_or(0.0, |l| l.at(self.now));
        let utilization =
            if ready > 0 { load / (f64::from(ready) * workload.pod_capacity) * 100.0 } else { 0.0 };
        let current = workload.desired;
        let now = self.now;
        let workload = &mut self.workloads[w];
        let Some((spec, state)) = workload.hpa.as_mut() else { return };
        let decision =
            spec.sync(state, now, current, MetricSample { ready, utilization, unready, missing: 0 });
        if let Some(model) = workload.model.as_mut().filter(|_| ready > 0 && decision.replicas > 0) {
            // The demand in pods (utilisation of the ready pods over the target), over the new count.
            let demand = utilization * f64::from(ready) / spec.target_utilization;
            model.observe(Observation {
                at: now,
                ratio: demand / f64::from(decision.replicas),
                replicas: decision.replicas,
                desired: decision.replicas,
            });
        }
        self.collector.hpa(now, &workload.name, load, decision.replicas, ready);
        if decision.replicas > current {
            workload.scale_up_owed += decision.replicas - current;
        } else if decision.replicas < current {
            workload.scale_up_owed = 0;
        }
        if decision.replicas != current {
            workload.desired = decision.replicas;
            self.apply_desired(w);
        }
    }

    /// Spreads the workload's desired count over its ReplicaSets as its rollout phase dictates.
    fn apply_desired(&mut self, w: usize) {
        let workload = &mut self.workloads[w];
        let d = workload.desired;
        match &workload.phase {
            RolloutPhase::Idle => {
                if let Some(set) = workload.sets.last_mut() {
                    set.replicas = d;
                }
            }
            RolloutPhase::BlueGreenWaiting { .. } => {
                for set in &mut workload.sets {
                    set.replicas = d;
                }
            }
            RolloutPhase::BlueGreenPromoted { .. } => {
                if let Some(set) = workload.sets.last_mut() {
                    set.replicas = d;
                }
            }
            RolloutPhase::Canary { weight, .. } => {
                let canary = (f64::from(d) * f64::from(*weight) / 100.0).ceil() as i32;
                let stable = d - (f64::from(d) * f64::from(*weight) / 100.0).floor() as i32;
                match workload.sets.as_mut_slice() {
                    [.., stable_set, canary_set] => {
                        stable_set.replicas = stable;
                        canary_set.replicas = canary;
                    }
                    // The stable copy is gone (weight 100): the canary is all there is.
                    [only] => only.replicas = d,
                    [] => {}
                }
            }
            RolloutPhase::Rolling { .. } => {}
        }
        self.reconcile(w);
        if matches!(self.workloads[w].phase, RolloutPhase::Rolling { .. }) {
            self.rollout_progress(w);
        }
    }

    /// Creates or deletes pods so each ReplicaSet has its replica count.
    /// A new pending pod of workload `w`, ReplicaSet `s`, scheduled at once if a node has room.
    fn create_pod(&mut self, w: usize, s: usize, spec: PodSpec) -> PodId {
        let id = self.pods.len();
        let revision = self.workloads[w].sets[s].revision;
        let hpa_added = self.workloads[w].scale_up_owed > 0;
        if hpa_added {
            self.workloads[w].scale_up_owed -= 1;
        }
        self.pods.push(SimPod {
            workload: w,
            revision,
            spec: Arc::new(spec),
            created: self.now,
            node: None,
            nominated: None,
            ready_at: None,
            deleted: false,
            hpa_added,
        });
        self.workloads[w].sets[s].pods.push(id);
        self.workloads[w].live_pods += 1;
        self.pending.insert(id);
        self.schedule_pod(id);
        id
    }

    fn reconcile(&mut self, w: usize) {
        if self.workloads[w].trace.is_some() {
            return;
        }
        for s in 0..self.workloads[w].sets.len() {
            let want = self.workloads[w].sets[s].replicas.max(0) as usize;
            let have = self.workloads[w].sets[s].pods.len();
            if have < want {
                let revision = self.workloads[w].sets[s].revision;
                for _ in have..want {
                    let mut spec = (*self.workloads[w].template).clone();
                    spec.name = format!("{}-r{revision}-{}", spec.name, self.pods.len());
                    self.create_pod(w, s, spec);
                }
            } else if have > want {
                // ReplicaSet downscale order: unscheduled first, then not ready, then pods on the
                // least-loaded nodes, newest first.
                let mut victims = self.workloads[w].sets[s].pods.clone();
                victims.sort_by_key(|&p| {
                    let pod = &self.pods[p];
                    let node_pods = pod.node.map_or(0, |n| self.nodes[n].pods.len());
                    (pod.node.is_some(), pod.ready_at.is_some(), node_pods, Reverse(pod.created), Reverse(p))
                });
                victims.truncate(have - want);
                for p in victims {
                    self.delete_pod(p);
                }
            }
        }
        // Old ReplicaSets scaled to zero with no pods left go away; the newest always stays.
        let last = self.workloads[w].sets.len().saturating_sub(1);
        let mut i = 0;
        self.workloads[w].sets.retain(|s| {
            let keep = i == last || s.replicas > 0 || !s.pods.is_empty();
            i += 1;
            keep
        });
    }

    fn delete_pod(&mut self, p: PodId) {
        self.epoch += 1;
        self.clear_nomination(p);
        self.pending.remove(&p);
        let pod = &mut self.pods[p];
        pod.deleted = true;
        let w = pod.workload;
        self.workloads[w].live_pods -= 1;
        if pod.ready_at.is_some() {
            self.workloads[w].ready_pods -= 1;
        }
        let revision = pod.revision;
        if let Some(n) = pod.node.take() {
            let requests = pod.spec.requests.clone();
            let node = &mut self.nodes[n];
            node.requested.sub_assign(&requests);
            node.pods.retain(|&q| q != p);
            node.settled_since = self.now;
        }
        if let Some(set) = self.workloads[w].sets.iter_mut().find(|s| s.revision == revision) {
            set.pods.retain(|&q| q != p);
        }
    }

    // ---- scheduling ------------------------------------------------------------------------------

    fn fits(&self, pod: &PodSpec, n: NodeId) -> bool {
        let node = &self.nodes[n];
        if !node.alive() || node.cordoned || node.ready.is_none() {
            return false;
        }
        if !pod.requests.fits_in(&node.allocatable.minus(&node.requested)) {
            return false;
        }
        if !pod.affinity.matches_labels(&node.labels) {
            return false;
        }
        if !taints::tolerates_all(&pod.tolerations, &node.hard_taints) {
            return false;
        }
        let cap = pod.per_node_cap();
        if cap < i64::MAX {
            let same = node.pods.iter().filter(|&&q| self.pods[q].spec.labels == pod.labels).count() as i64;
            if same >= cap {
                return false;
            }
        }
        node.pods
            .iter()
            .all(|&q| !pod.repels(&self.pods[q].spec.labels) && !self.pods[q].spec.repels(&pod.labels))
    }

    /// kube-scheduler stand-in: the feasible node with the most cpu already requested (bin-packing
    /// scoring, `MostAllocated`), preferring the node the pod was nominated to.
    /// The domains (zones, capacity types) a pod may join without breaking its hard spread constraints,
    /// per topology key; empty when it has none. As kube-scheduler does by default, the domains are those
    /// of schedulable nodes that match the pod's node affinity (taints ignored), pods are counted where
    /// they are bound, and with fewer domains than `minDomains` the global minimum is zero.
    fn spread_allowed(&self, pod: &PodSpec) -> Vec<(&'static str, BTreeSet<String>)> {
        let mut out = Vec::new();
        for key in [labels::ZONE, labels::CAPACITY_TYPE] {
            let constraints: Vec<_> = pod
                .topology_spread
                .iter()
                .filter(|c| c.topology_key == key && c.enforced_for(&pod.labels))
                .collect();
            if constraints.is_empty() {
                continue;
            }
            let domains: BTreeSet<&String> = self
                .live
                .iter()
                .map(|&n| &self.nodes[n])
                .filter(|node| !node.cordoned && pod.affinity.matches_labels(&node.labels))
                .filter_map(|node| node.labels.get(key))
                .collect();
            let mut allowed: BTreeSet<String> = domains.iter().map(|d| (*d).clone()).collect();
            for c in constraints {
                let mut counts: BTreeMap<&String, i64> = domains.iter().map(|d| (*d, 0)).collect();
                for &n in &self.live {
                    let node = &self.nodes[n];
                    let Some(count) = node.labels.get(key).and_then(|d| counts.get_mut(d)) else { continue };
                    *count += node
                        .pods
                        .iter()
                        .filter(|&&q| {
                            cartwright_binpack::solver::selector_matches(
                                &c.selector,
                                &self.pods[q].spec.labels,
                            )
                        })
                        .count() as i64;
                }
                let min = if c.min_domains.is_some_and(|m| (counts.len() as i64) < m) {
                    0
                } else {
                    counts.values().copied().min().unwrap_or(0)
                };
                allowed.retain(|d| counts.get(d).is_some_and(|count| count + 1 - min <= c.max_skew));
            }
            out.push((key, allowed));
        }
        out
    }

    /// Whether a node is in an allowed domain of every spread key.
    fn in_domains(&self, allowed: &[(&'static str, BTreeSet<String>)], n: NodeId) -> bool {
        allowed
            .iter()
            .all(|(key, domains)| self.nodes[n].labels.get(*key).is_some_and(|d| domains.contains(d)))
    }

    /// Whether the pod may be bound to the node now: it fits, and the node's domains keep its spreads
    /// within maxSkew.
    fn can_bind(&self, pod: &PodSpec, n: NodeId) -> bool {
        self.fits(pod, n) && self.in_domains(&self.spread_allowed(pod), n)
    }

    fn schedule_pod(&mut self, p: PodId) -> bool {
        let spec = self.pods[p].spec.clone();
        let allowed = self.spread_allowed(&spec);
        let in_zone = |engine: &Engine, n: NodeId| engine.in_domains(&allowed, n);
        // A nomination stands while its node is still launching; a ready node that cannot take the pod
        // (its room went to others) releases it for the next planning round.
        if let Some(n) = self.pods[p].nominated {
            let node = &self.nodes[n];
            if !node.alive() || (node.ready.is_some() && !(self.fits(&spec, n) && in_zone(self, n))) {
                self.clear_nomination(p);
            }
        }
        let nominated = self.pods[p].nominated.filter(|&n| self.fits(&spec, n) && in_zone(self, n));
        let choice = nominated.or_else(|| {
            self.live.iter().copied().filter(|&n| self.fits(&spec, n) && in_zone(self, n)).max_by_key(|&n| {
                let node = &self.nodes[n];
                let cpu = node.allocatable.get(&ResourceName::Cpu).max(1);
                (node.requested.get(&ResourceName::Cpu) * 1000 / cpu, Reverse(n))
            })
        });
        match choice {
            Some(n) => {
                self.bind(p, n);
                true
            }
            None => {
                if self.pods[p].nominated.is_none() {
                    let deadline = self.batcher.observe(self.now);
                    self.schedule_batch(deadline);
                }
                false
            }
        }
    }

    fn schedule_batch(&mut self, deadline: Millis) {
        if self.batch_scheduled != Some(deadline) {
            self.batch_scheduled = Some(deadline);
            self.push(deadline, Event::BatchClose);
        }
    }

    fn bind(&mut self, p: PodId, n: NodeId) {
        self.epoch += 1;
        self.clear_nomination(p);
        self.pending.remove(&p);
        let pod = &mut self.pods[p];
        pod.node = Some(n);
        let waited = self.now.saturating_sub(pod.created);
        let hpa_added = pod.hpa_added;
        let requests = pod.spec.requests.clone();
        let node = &mut self.nodes[n];
        node.requested.add_assign(&requests);
        node.pods.push(p);
        node.settled_since = self.now;
        self.collector.pod_bound(waited, hpa_added);
        self.push(self.now + self.timing.pod_startup.millis(), Event::PodReady(p));
    }

    fn pending(&self) -> Vec<PodId> {
        self.pending.iter().copied().collect()
    }

    fn nominate(&mut self, p: PodId, n: NodeId) {
        self.clear_nomination(p);
        self.pods[p].nominated = Some(n);
        self.nodes[n].nominated.push(p);
    }

    fn clear_nomination(&mut self, p: PodId) {
        if let Some(n) = self.pods[p].nominated.take() {
            self.nodes[n].nominated.retain(|&q| q != p);
        }
    }

    /// A node became ready: its nominated pods go first, then other unplanned pending pods that fit it.
    fn node_ready(&mut self, n: NodeId) {
        for p in self.nodes[n].nominated.clone() {
            self.schedule_pod(p);
        }
        let others: Vec<PodId> =
            self.pending.iter().copied().filter(|&p| self.pods[p].nominated.is_none()).collect();
        for p in others {
            if self.can_bind(&self.pods[p].spec, n) {
                self.bind(p, n);
            }
        }
    }

    /// Pods no plan covers (the last plan could not place them, or their node went away) are planned
    /// again: the batch window opens for them.
    fn retry_unplanned(&mut self) {
        if self.batcher.deadline().is_none() && self.pending.iter().any(|&p| self.pods[p].nominated.is_none())
        {
            let deadline = self.batcher.observe(self.now);
            self.schedule_batch(deadline);
        }
    }

    // ---- provisioning ----------------------------------------------------------------------------

    fn add_daemonset_load(&mut self, n: NodeId) {
        for ds in &self.daemonsets {
            let node = &self.nodes[n];
            let hard: Vec<Taint> = node.taints.iter().filter(|t| t.is_hard()).cloned().collect();
            if ds.affinity.matches_labels(&node.labels) && taints::tolerates_all(&ds.tolerations, &hard) {
                let requests = ds.requests.clone();
                self.nodes[n].requested.add_assign(&requests);
            }
        }
    }

    /// The batch closed: plan the pods that no node (ready or launching) will take.
    fn provision(&mut self) {
        let pending: Vec<PodId> =
            self.pending().into_iter().filter(|&p| self.pods[p].nominated.is_none()).collect();
        if pending.is_empty() {
            return;
        }
        let live: Vec<NodeId> = self.live.iter().copied().collect();
        let views = self.views(&live);
        let by_name: BTreeMap<String, PodId> =
            pending.iter().map(|&p| (self.pods[p].spec.name.clone(), p)).collect();
        let problem = provisioning::problem(
            pending.iter().map(|&p| (*self.pods[p].spec).clone()).collect(),
            &views,
            &self.nodepools,
            &self.daemonsets,
            self.catalog.clone(),
        );
        drop(views);
        let existing_ids = live;
        let plan = self.algorithm.solve_live(&problem);
        let node_by_name: BTreeMap<String, NodeId> =
            existing_ids.iter().map(|&n| (self.nodes[n].name.clone(), n)).collect();
        for placement in &plan.placements {
            if let (Some(&p), Some(&n)) = (by_name.get(&placement.pod), node_by_name.get(&placement.node)) {
                // Room on a ready node is taken now (what kube-scheduler would do); a launching node is
                // nominated.
                if self.nodes[n].ready.is_some() && self.can_bind(&self.pods[p].spec, n) {
                    self.bind(p, n);
                } else {
                    self.nominate(p, n);
                }
            }
        }
        for new in &plan.new_nodes {
            self.launch(new, &by_name);
        }
        for u in &plan.unschedulable {
            self.collector.unschedulable(&u.reason);
        }
    }

    /// The provisioning decision's view of `nodes`: launching nodes count with the pods nominated to them.
    fn views(&self, nodes: &[NodeId]) -> Vec<NodeView<'_>> {
        nodes
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                let mut requested = node.requested.clone();
                let mut pod_labels: Vec<&BTreeMap<String, String>> =
                    node.pods.iter().map(|&q| &self.pods[q].spec.labels).collect();
                for &q in &node.nominated {
                    requested.add_assign(&self.pods[q].spec.requests);
                    pod_labels.push(&self.pods[q].spec.labels);
                }
                NodeView {
                    name: &node.name,
                    labels: &node.labels,
                    taints: &node.taints,
                    allocatable: &node.allocatable,
                    capacity: &node.capacity,
                    requested,
                    pod_labels,
                    repelled: node
                        .pods
                        .iter()
                        .chain(&node.nominated)
                        .flat_map(|&q| &self.pods[q].spec.hostname_anti_affinity)
                        .collect(),
                    nodepool: node.nodepool.as_deref(),
                    ready: node.ready.is_some(),
                    cordoned: node.cordoned,
                }
            })
            .collect()
    }

    /// The virtual pods headroom keeps room for now: per HPA workload, its predicted extra replicas and
    /// guard (`hpa`), or a buffer of a percentage of its replicas (`capacity-buffer`).
    fn virtual_pods(&self) -> Vec<PodSpec> {
        let mut out = Vec::new();
        for w in &self.workloads {
            let Some(model) = &w.model else { continue };
            match self.headroom.mode {
                HeadroomMode::None => {}
                HeadroomMode::Hpa => out.extend(model.virtual_pods(self.now, &self.headroom_settings)),
                HeadroomMode::CapacityBuffer => {
                    let percent = self.headroom.percent.unwrap_or(0.0);
                    let count = (f64::from(w.desired.max(0)) * percent / 100.0).ceil() as usize;
                    out.extend((0..count).map(|i| PodSpec {
                        name: format!("{}~headroom-{i}", model.name),
                        ..(*w.template).clone()
                    }));
                }
            }
        }
        out
    }

    /// Headroom: the virtual pods are planned over the nodes as they are (pods nominated to launching
    /// nodes count), after the real pods, which the batch window plans; nodes the virtual pods need are
    /// launched with nothing nominated, and each node's share is kept for disruption. Nothing is planned
    /// while neither the virtual pods nor the cluster changed.
    fn plan_headroom(&mut self) {
        let pods = self.virtual_pods();
        let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        if self.last_headroom.as_ref().is_some_and(|(epoch, last)| *epoch == self.epoch && *last == names) {
            return;
        }
        if self.last_headroom.as_ref().is_none_or(|(_, last)| *last != names) {
            // Disruption must look again: a node may hold more, or nothing, now.
            self.epoch += 1;
        }
        let live: Vec<NodeId> = self.live.iter().copied().collect();
        let mut pool_cost: BTreeMap<String, Price> = BTreeMap::new();
        for &n in &live {
            if let Some(pool) = &self.nodes[n].nodepool {
                let price =
                    Price((self.nodes[n].price_per_hour * Price::NANOS_PER_USD as f64).round() as u64);
                pool_cost.entry(pool.clone()).or_insert(Price(0)).0 += price.0;
            }
        }
        let views = self.views(&live);
        let problem =
            provisioning::problem(vec![], &views, &self.nodepools, &self.daemonsets, self.catalog.clone());
        drop(views);
        let virtual_by_name: BTreeMap<String, PodSpec> =
            pods.iter().map(|p| (p.name.clone(), p.clone())).collect();
        let algorithm = self.algorithm;
        let plan =
            headroom::plan(&problem, pods, &self.pool_headroom, &pool_cost, |p| algorithm.solve_live(p));
        let mut held: BTreeMap<String, Vec<PodSpec>> = BTreeMap::new();
        for placement in &plan.headroom.placements {
            if let Some(pod) = virtual_by_name.get(&placement.pod) {
                held.entry(placement.node.clone()).or_default().push(pod.clone());
            }
        }
        for new in &plan.headroom.new_nodes {
            if let Some(id) = self.launch(new, &BTreeMap::new()) {
                self.collector.headroom_node();
                let pods = new.pods.iter().filter_map(|p| virtual_by_name.get(p).cloned()).collect();
                held.insert(self.nodes[id].name.clone(), pods);
            }
        }
        self.held = held;
        self.last_headroom = Some((self.epoch, names));
    }

    /// Launches a planned node; its pods (by name, when pending) are nominated to it.
    fn launch(&mut self, new: &NewNode, by_name: &BTreeMap<String, PodId>) -> Option<NodeId> {
        let instance_type = self.catalog.get(&new.launch.instance_type)?;
        let allocatable = instance_type.allocatable();
        let capacity = instance_type.capacity.clone();
        let id = self.nodes.len();
        let name = format!("{}-{id}", new.nodepool);
        let node_labels = provisioning::node_labels(instance_type, new, &name);
        let taints = self
            .nodepools
            .iter()
            .find(|p| p.name == new.nodepool)
            .map(|p| p.taints.clone())
            .unwrap_or_default();
        let price = new.launch.price.usd();
        self.nodes.push(SimNode {
            name,
            nodepool: Some(new.nodepool.clone()),
            instance_type: new.launch.instance_type.clone(),
            capacity_type: new.launch.capacity_type,
            price_per_ms: price / 3_600_000.0,
            price_per_hour: price,
            labels: node_labels,
            taints: taints.clone(),
            allocatable,
            capacity,
            requested: Resources::new(),
            pods: vec![],
            nominated: vec![],
            hard_taints: taints.iter().filter(|t| t.is_hard()).cloned().collect(),
            launched: self.now,
            ready: None,
            terminated: None,
            cordoned: false,
            fixed: false,
            settled_since: self.now,
        });
        self.live.insert(id);
        self.add_daemonset_load(id);
        self.collector.node_launched(&new.launch.instance_type, new.launch.capacity_type);
        for pod in &new.pods {
            if let Some(&p) = by_name.get(pod) {
                self.nominate(p, id);
            }
        }
        let latency = self.launch_latency();
        self.push(self.now + latency, Event::NodeReady(id));
        Some(id)
    }

    /// A log-normal launch-to-ready latency with the configured median and 99th percentile.
    fn launch_latency(&mut self) -> Millis {
        let median = self.timing.launch_median.millis() as f64;
        let p99 = self.timing.launch_p99.millis() as f64;
        let sigma = if median > 0.0 { (p99 / median).ln() / 2.326_347_874 } else { 0.0 };
        // Box–Muller from two uniforms in (0, 1].
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (median * (sigma * z).exp()).round() as Millis
    }

    // ---- disruption ------------------------------------------------------------------------------

    /// Disruption, with the controller's decisions (`cartwright-core::disruption`): emptiness, then
    /// multi- and single-node consolidation within the NodePools' budgets. A replacement is launched
    /// first; the old nodes go when it is ready (their pods then move). Scenario time 0 is 00:00 UTC of
    /// 1 January 1970 for budget schedules.
    fn disrupt(&mut self) {
        if let Some((old, new)) = self.replacing.clone() {
            if new.iter().any(|&n| !self.nodes[n].alive()) {
                for &n in &old {
                    self.nodes[n].cordoned = false;
                }
                self.replacing = None;
            } else if new.iter().all(|&n| self.nodes[n].ready.is_some()) {
                for &n in &old {
                    self.terminate(n);
                    self.collector.node_terminated("underutilized");
                }
                self.replacing = None;
            }
            return;
        }
        if !self.pending.is_empty() {
            return; // capacity is being added: consolidating now would fight it
        }
        if self.quiet.is_some_and(|(epoch, until)| epoch == self.epoch && self.now < until) {
            return;
        }
        let mut policies = BTreeMap::new();
        for (name, spec) in &self.pool_specs {
            if let Ok(policy) = cartwright_api::nodepool::disruption_policy(spec, self.now) {
                policies.insert(name.clone(), policy);
            }
        }
        let consolidate = self.last_consolidation.is_none_or(|t| self.now >= t + CONSOLIDATION_EVERY);
        // Between consolidation passes only empty nodes can go: look for one before building the input.
        let empty_due = self.live.iter().any(|&n| {
            let node = &self.nodes[n];
            let after =
                node.nodepool.as_ref().and_then(|p| policies.get(p)).and_then(|p| p.consolidate_after_ms);
            !node.fixed
                && node.ready.is_some()
                && node.pods.is_empty()
                && node.nominated.is_empty()
                && !self.held.contains_key(&node.name)
                && after.is_some_and(|a| self.now >= node.settled_since + a)
        });
        if !consolidate && !empty_due {
            return;
        }
        let live: Vec<NodeId> = self.live.iter().copied().collect();
        let candidates: Vec<Candidate<'_>> = live
            .iter()
            .map(|&n| {
                let node = &self.nodes[n];
                // Headroom held on the node counts as its pods: it must find room elsewhere to go.
                let held = self.held.get(&node.name).map_or(&[][..], Vec::as_slice);
                let mut requested = node.requested.clone();
                for pod in held {
                    requested.add_assign(&pod.requests);
                }
                Candidate {
                    view: NodeView {
                        name: &node.name,
                        labels: &node.labels,
                        taints: &node.taints,
                        allocatable: &node.allocatable,
                        capacity: &node.capacity,
                        requested,
                        pod_labels: node
                            .pods
                            .iter()
                            .map(|&q| &self.pods[q].spec.labels)
                            .chain(held.iter().map(|p| &p.labels))
                            .collect(),
                        repelled: node
                            .pods
                            .iter()
                            .flat_map(|&q| &self.pods[q].spec.hostname_anti_affinity)
                            .chain(held.iter().flat_map(|p| &p.hostname_anti_affinity))
                            .collect(),
                        // Fixed fleet nodes take pods but are never disrupted.
                        nodepool: if node.fixed { None } else { node.nodepool.as_deref() },
                        ready: node.ready.is_some(),
                        cordoned: node.cordoned,
                    },
                    price: Price((node.price_per_hour * Price::NANOS_PER_USD as f64).round() as u64),
                    capacity_type: node.capacity_type,
                    pods: node.pods.iter().map(|&q| &*self.pods[q].spec).chain(held).collect(),
                    blocked: (!node.nominated.is_empty()).then(|| "pods are nominated to it".to_owned()),
                    initialized: node.ready.is_some(),
                    disrupting: node.cordoned,
                    settled_since: node.settled_since,
                    // Nodes do not expire or drift in the simulator yet.
                    expires_at: None,
                    drifted: None,
                }
            })
            .collect();
        let input = Input {
            nodes: candidates,
            nodepools: self.nodepools.clone(),
            policies,
            daemonsets: self.daemonsets.clone(),
            catalog: self.catalog.clone(),
            // The solver-backed methods run at most every CONSOLIDATION_EVERY of simulated time (emptiness
            // on every pass): a week at 1,000 nodes stays a minute's run.
            consolidate,
            explain: false,
        };
        if input.consolidate {
            self.last_consolidation = Some(self.now);
        }
        let Some(command) = disruption::decide(&input, self.now).command else {
            // Nothing to do until something changes, a node's consolidateAfter runs out, or (when this
            // pass only looked for empty nodes) consolidation is due.
            let until = input
                .nodes
                .iter()
                .filter_map(|c| {
                    let after = input.policies.get(c.view.nodepool?)?.consolidate_after_ms?;
                    Some(c.settled_since + after).filter(|t| *t > self.now)
                })
                .min()
                .unwrap_or(Millis::MAX);
            let consolidation_due = self.last_consolidation.map_or(self.now, |t| t + CONSOLIDATION_EVERY);
            self.quiet = Some((self.epoch, until.min(consolidation_due)));
            return;
        };
        drop(input);
        let by_name: BTreeMap<&str, NodeId> =
            live.iter().map(|&n| (self.nodes[n].name.as_str(), n)).collect();
        let old: Vec<NodeId> =
            command.nodes.iter().filter_map(|name| by_name.get(name.as_str()).copied()).collect();
        self.collector.consolidation(command.savings.usd());
        if command.replacements.is_empty() {
            let reason = match command.reason {
                disruption::Reason::Empty => "empty",
                disruption::Reason::Expired => "expired",
                _ => "underutilized",
            };
            for n in old {
                self.terminate(n);
                self.collector.node_terminated(reason);
            }
            return;
        }
        for &n in &old {
            self.nodes[n].cordoned = true;
        }
        let new: Vec<NodeId> =
            command.replacements.iter().filter_map(|r| self.launch(r, &BTreeMap::new())).collect();
        self.replacing = Some((old, new));
    }

    fn terminate(&mut self, n: NodeId) {
        self.epoch += 1;
        if !self.nodes[n].alive() {
            return;
        }
        self.nodes[n].terminated = Some(self.now);
        self.live.remove(&n);
        let orphans = std::mem::take(&mut self.nodes[n].nominated);
        for &p in &orphans {
            self.pods[p].nominated = None;
        }
        let pods = std::mem::take(&mut self.nodes[n].pods);
        for p in pods {
            self.evict(p);
        }
        self.nodes[n].requested = Resources::new();
        for p in orphans {
            self.schedule_pod(p);
        }
    }

    /// The pod goes away and its ReplicaSet replaces it with a new pending pod.
    fn evict(&mut self, p: PodId) {
        let w = self.pods[p].workload;
        self.pods[p].node = None;
        self.delete_pod(p);
        // A traced pod is recreated by its controller, like a ReplicaSet's.
        let row = self.workloads[w].trace.as_ref().and_then(|t| t.current.iter().position(|c| *c == Some(p)));
        match row {
            Some(row) => self.trace_create(w, row),
            None => self.reconcile(w),
        }
    }

    /// A Job pod succeeded: it goes away, and the Job runs `min(parallelism, completions left)` pods.
    fn pod_complete(&mut self, p: PodId) {
        if self.pods[p].deleted || self.pods[p].node.is_none() {
            return;
        }
        let w = self.pods[p].workload;
        self.delete_pod(p);
        let Some(job) = &mut self.workloads[w].job else { return };
        job.succeeded += 1;
        let active = job.parallelism.min(job.completions - job.succeeded).max(0);
        self.workloads[w].desired = active;
        if let Some(set) = self.workloads[w].sets.last_mut() {
            set.replicas = active;
        }
        self.reconcile(w);
    }

    fn trace_create(&mut self, w: usize, row: usize) {
        let Some(trace) = &self.workloads[w].trace else { return };
        let spec = (*trace.specs[row]).clone();
        let id = self.create_pod(w, 0, spec);
        if let Some(trace) = &mut self.workloads[w].trace {
            trace.current[row] = Some(id);
        }
    }

    fn trace_delete(&mut self, w: usize, row: usize) {
        let current = self.workloads[w].trace.as_mut().and_then(|t| t.current[row].take());
        if let Some(p) = current {
            self.delete_pod(p);
        }
    }

    /// Makes offerings unavailable (or available again) and, for a zone outage, takes the zone's nodes away.
    fn zone_outage(&mut self, i: usize, start: bool) {
        let outage = self.zone_outages[i].clone();
        Arc::make_mut(&mut self.catalog).set_available_where(|_, o| o.zone == outage.zone, !start);
        let in_zone: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.alive() && n.labels.get(labels::ZONE) == Some(&outage.zone))
            .map(|(id, _)| id)
            .collect();
        for n in in_zone {
            if self.nodes[n].fixed {
                // A fixed node is down for the outage and back after it.
                self.nodes[n].cordoned = start;
                if start {
                    for p in std::mem::take(&mut self.nodes[n].pods) {
                        self.evict(p);
                    }
                    self.nodes[n].requested = Resources::new();
                    self.add_daemonset_load(n);
                }
            } else if start {
                self.terminate(n);
                self.collector.node_terminated("zone-outage");
            }
        }
        if !start {
            self.retry_unplanned();
        }
    }

    fn shortage(&mut self, i: usize, start: bool) {
        let c = self.shortages[i].clone();
        Arc::make_mut(&mut self.catalog).set_available_where(
            |name, o| {
                c.instance_types.iter().any(|t| t == name)
                    && c.zones.as_ref().is_none_or(|z| z.contains(&o.zone))
                    && c.capacity_type.as_deref().is_none_or(|ct| ct == o.capacity_type.as_str())
            },
            !start,
        );
        if !start {
            self.retry_unplanned();
        }
    }

    /// Running spot nodes not yet cordoned (only ready ones with `ready_only`).
    fn spot_nodes(&self, ready_only: bool) -> Vec<NodeId> {
        self.live
            .iter()
            .copied()
            .filter(|&n| {
                let node = &self.nodes[n];
                !node.cordoned
                    && node.capacity_type == CapacityType::Spot
                    && (!ready_only || node.ready.is_some())
            })
            .collect()
    }

    fn spot_notice(&mut self, node: Option<NodeId>) {
        let n = match node {
            Some(n) => n,
            None => {
                let spot = self.spot_nodes(true);
                if spot.is_empty() {
                    return;
                }
                spot[self.rng.random_range(0..spot.len())]
            }
        };
        self.collector.interruption();
        // Karpenter cordons and drains on the notice and provisions replacements at once.
        self.nodes[n].cordoned = true;
        let pods = std::mem::take(&mut self.nodes[n].pods);
        for p in pods {
            self.evict(p);
        }
        self.nodes[n].requested = Resources::new();
        self.push(self.now + 120_000, Event::SpotTerminate(n));
        self.collector.node_terminated("spot-interruption");
    }

    // ---- rollouts --------------------------------------------------------------------------------

    fn start_rollout(&mut self, r: usize) {
        let rollout = self.rollouts[r].clone();
        let Some(w) = self.workloads.iter().position(|x| x.name == rollout.workload) else { return };
        let workload = &mut self.workloads[w];
        if !matches!(workload.phase, RolloutPhase::Idle) {
            tracing::warn!(
                "rollout of {} at {} ms skipped: one is already in progress",
                workload.name,
                self.now
            );
            return;
        }
        let revision = workload.next_revision;
        workload.next_revision += 1;
        let d = workload.desired;
        match rollout.strategy {
            Strategy::RollingUpdate { max_surge, max_unavailable } => {
                workload.sets.push(ReplicaSet { revision, replicas: 0, pods: vec![] });
                workload.phase = RolloutPhase::Rolling { max_surge, max_unavailable };
            }
            Strategy::BlueGreen { promote_after, scale_down_delay } => {
                workload.sets.push(ReplicaSet { revision, replicas: d, pods: vec![] });
                workload.phase = RolloutPhase::BlueGreenWaiting {
                    promote_after: promote_after.millis(),
                    scale_down_delay: scale_down_delay.millis(),
                    green_ready_since: None,
                };
            }
            Strategy::Canary { steps } => {
                workload.sets.push(ReplicaSet { revision, replicas: 0, pods: vec![] });
                workload.phase = RolloutPhase::Canary { steps, step: 0, weight: 0, paused_until: None };
            }
        }
        self.collector.rollout(self.now, &self.workloads[w].name);
        self.reconcile(w);
        self.rollout_progress(w);
    }

    fn rollout_progress(&mut self, w: usize) {
        let now = self.now;
        let d = self.workloads[w].desired;
        let ready_of = |engine: &Engine, set: &ReplicaSet| {
            set.pods.iter().filter(|&&p| engine.pods[p].ready_at.is_some()).count() as i32
        };
        let phase = self.workloads[w].phase.clone();
        match phase {
            RolloutPhase::Idle => {}
            RolloutPhase::Rolling { max_surge, max_unavailable } => {
                let surge = percent_or_count(&max_surge, d, true);
                let unavailable = percent_or_count(&max_unavailable, d, false);
                let (surge, unavailable) =
                    if surge == 0 && unavailable == 0 { (1, 0) } else { (surge, unavailable) };
                let n = self.workloads[w].sets.len();
                let old_total: i32 = self.workloads[w].sets[..n - 1].iter().map(|s| s.replicas).sum();
                let new = &self.workloads[w].sets[n - 1];
                let new_target = (d + surge - old_total).clamp(new.replicas, d);
                self.workloads[w].sets[n - 1].replicas = new_target;
                let ready: i32 = self.workloads[w].sets.iter().map(|s| ready_of(self, s)).sum();
                let mut removable = (ready - (d - unavailable)).max(0);
                for s in 0..n - 1 {
                    let take = removable.min(self.workloads[w].sets[s].replicas);
                    self.workloads[w].sets[s].replicas -= take;
                    removable -= take;
                }
                self.reconcile(w);
                let n = self.workloads[w].sets.len();
                let done = n == 1 && ready_of(self, &self.workloads[w].sets[0]) >= d;
                if done {
                    self.workloads[w].phase = RolloutPhase::Idle;
                } else {
                    self.push(now + 5_000, Event::RolloutTick(w));
                }
            }
            RolloutPhase::BlueGreenWaiting { promote_after, scale_down_delay, green_ready_since } => {
                let n = self.workloads[w].sets.len();
                let green_ready = ready_of(self, &self.workloads[w].sets[n - 1]) >= d;
                let since = match (green_ready_since, green_ready) {
                    (Some(s), _) => Some(s),
                    (None, true) => Some(now),
                    (None, false) => None,
                };
                if let Some(s) = since {
                    if now >= s + promote_after {
                        self.workloads[w].phase =
                            RolloutPhase::BlueGreenPromoted { old_until: now + scale_down_delay };
                        self.push(now + scale_down_delay, Event::RolloutTick(w));
                        return;
                    }
                    self.push(s + promote_after, Event::RolloutTick(w));
                }
                self.workloads[w].phase = RolloutPhase::BlueGreenWaiting {
                    promote_after,
                    scale_down_delay,
                    green_ready_since: since,
                };
            }
            RolloutPhase::BlueGreenPromoted { old_until } => {
                if now >= old_until {
                    let n = self.workloads[w].sets.len();
                    for s in 0..n - 1 {
                        self.workloads[w].sets[s].replicas = 0;
                    }
                    self.workloads[w].phase = RolloutPhase::Idle;
                    self.reconcile(w);
                }
            }
            RolloutPhase::Canary { steps, mut step, weight, paused_until } => {
                if paused_until.is_some_and(|u| now < u) {
                    return;
                }
                let n = self.workloads[w].sets.len();
                // A weight step completes when the canary's pods are all ready; poll until then.
                let canary = &self.workloads[w].sets[n - 1];
                if ready_of(self, canary) < canary.replicas {
                    self.push(now + 5_000, Event::RolloutTick(w));
                    return;
                }
                let Some(next) = steps.get(step).cloned() else {
                    // Every step done: the canary becomes the stable copy.
                    for s in 0..n - 1 {
                        self.workloads[w].sets[s].replicas = 0;
                    }
                    self.workloads[w].sets[n - 1].replicas = d;
                    self.workloads[w].phase = RolloutPhase::Idle;
                    self.reconcile(w);
                    return;
                };
                step += 1;
                if let Some(weight) = next.set_weight {
                    self.workloads[w].phase =
                        RolloutPhase::Canary { steps, step, weight, paused_until: None };
                    self.apply_desired(w);
                    self.push(now + 5_000, Event::RolloutTick(w));
                } else {
                    let until = now + next.pause.map_or(0, |p| p.millis());
                    self.workloads[w].phase =
                        RolloutPhase::Canary { steps, step, weight, paused_until: Some(until) };
                    self.push(until, Event::RolloutTick(w));
                }
            }
        }
    }

    // ---- sampling --------------------------------------------------------------------------------

    fn sample(&mut self) {
        let mut cost_per_hour = 0.0;
        let mut by_capacity: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut requested = Resources::new();
        let mut allocatable = Resources::new();
        for node in self.live.iter().map(|&n| &self.nodes[n]) {
            cost_per_hour += node.price_per_hour;
            *by_capacity.entry(node.capacity_type.as_str()).or_default() += 1;
            if node.ready.is_some() {
                requested.add_assign(&node.requested);
                allocatable.add_assign(&node.allocatable);
            }
        }
        let pending = self.pending.len();
        let running: usize = self.live.iter().map(|&n| self.nodes[n].pods.len()).sum();
        let ratio = |dim: ResourceName| {
            let a = allocatable.get(&dim);
            if a > 0 { requested.get(&dim) as f64 / a as f64 } else { 0.0 }
        };
        self.collector.sample(crate::report::Sample {
            t_seconds: self.now / 1000,
            nodes_spot: by_capacity.get("spot").copied().unwrap_or(0),
            nodes_on_demand: by_capacity.get("on-demand").copied().unwrap_or(0),
            cost_per_hour,
            pending_pods: pending,
            running_pods: running,
            cpu_utilization: ratio(ResourceName::Cpu),
            memory_utilization: ratio(ResourceName::Memory),
            workload_pods: self
                .workloads
                .iter()
                .map(|w| (w.name.clone(), w.sets.iter().map(|s| s.pods.len()).sum()))
                .collect(),
        });
    }
}

/// `maxSurge` / `maxUnavailable`: a count, or a percentage of `of` rounded up (surge) or down (unavailable).
fn percent_or_count(text: &str, of: i32, round_up: bool) -> i32 {
    match text.strip_suffix('%') {
        Some(p) => {
            let p: f64 = p.trim().parse().unwrap_or(0.0);
            let v = f64::from(of) * p / 100.0;
            if round_up { v.ceil() as i32 } else { v.floor() as i32 }
        }
        None => text.trim().parse().unwrap_or(0),
    }
}
