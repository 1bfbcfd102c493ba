//! The scenario file: a versioned YAML document naming the cluster (region, NodePools, DaemonSets as ordinary
//! manifests), the workloads (real Deployments, optional real HPAs, load curves), rollouts, events and timing.
//! Unknown versions and fields are rejected with a message naming them. Format: `docs/scenarios.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cartwright_core::hpa::HpaSpec;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use serde::Deserialize;

/// The only scenario version so far.
pub const VERSION: &str = "cartwright.sh/scenario/v1";

/// A scenario that cannot be used, with the field and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ScenarioError {
    pub source_name: String,
    pub message: String,
}

/// A duration written as Kubernetes and Karpenter write them: `90s`, `5m`, `1h30m`, `24h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn millis(&self) -> u64 {
        self.0.as_millis() as u64
    }

    pub fn from_secs(secs: u64) -> Dur {
        Dur(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like 90s, 5m or 1h30m ({e})"))
        })
    }
}

/// The whole scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scenario {
    /// Must be `cartwright.sh/scenario/v1`.
    pub version: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long to simulate.
    pub duration: Dur,
    /// Seed of every random draw (launch latencies, interruptions): same seed, same report.
    #[serde(default)]
    pub seed: u64,
    pub cluster: Cluster,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub rollouts: Vec<Rollout>,
    /// Pods replayed from traces with their creation and deletion times.
    #[serde(default)]
    pub traces: Vec<Trace>,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub timing: Timing,
    /// Capacity kept ahead of HPA-driven workloads.
    #[serde(default)]
    pub headroom: Headroom,
    /// Named alternatives for `--compare`: each replaces the sections it gives.
    #[serde(default)]
    pub variants: Vec<Variant>,
}

/// A named alternative of the scenario: a different cluster (NodePools, a fixed fleet), rollouts, workloads
/// or solver policy; sections it leaves out are the scenario's own.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variant {
    pub name: String,
    /// `cartwright` (default), `karpenter-greedy` or `ca-least-waste`.
    #[serde(default)]
    pub solver: Option<String>,
    #[serde(default)]
    pub cluster: Option<Cluster>,
    #[serde(default)]
    pub workloads: Option<Vec<Workload>>,
    #[serde(default)]
    pub rollouts: Option<Vec<Rollout>>,
    #[serde(default)]
    pub events: Option<Events>,
    #[serde(default)]
    pub timing: Option<Timing>,
    #[serde(default)]
    pub headroom: Option<Headroom>,
}

/// `headroom`: capacity kept ahead of the workloads that have an HPA.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headroom {
    /// `none` (the default), `hpa` (predictive headroom and the consolidation guard of
    /// `cartwright-core::headroom`) or `capacity-buffer` (a static buffer of `percent` of each HPA target's
    /// replicas, as a SIG-Autoscaling CapacityBuffer with a percentage keeps).
    #[serde(default)]
    pub mode: HeadroomMode,
    /// For `capacity-buffer`: the buffer, in percent of the target's replicas (rounded up).
    #[serde(default)]
    pub percent: Option<f64>,
    /// For `hpa`: how far ahead to predict (default 60s, about a node's launch-to-ready time).
    #[serde(default)]
    pub horizon: Option<Dur>,
    /// For `hpa`: the metric history the trend is fitted over (default 2m).
    #[serde(default)]
    pub trend_window: Option<Dur>,
    /// Every NodePool's headroom budget: at most this percentage of the pool's current hourly cost.
    #[serde(default)]
    pub budget_percent: Option<u32>,
    /// Every NodePool's headroom budget: at most this many dollars per hour of headroom nodes.
    #[serde(default)]
    pub budget_per_hour: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeadroomMode {
    #[default]
    None,
    Hpa,
    CapacityBuffer,
}

/// A pod trace to replay (format: [`crate::trace`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trace {
    /// The CSV file, relative to the scenario.
    pub file: PathBuf,
    /// Scheduling constraints of every pod (a `v1` PodSpec: nodeSelector, affinity, tolerations, ...);
    /// requests come from the trace. GPU pods also tolerate `nvidia.com/gpu` taints.
    #[serde(default)]
    pub pod_template: Option<serde_json::Value>,
    /// Trace seconds per simulated second (2 replays twice as fast); 1 by default.
    #[serde(default)]
    pub speedup: Option<f64>,
}

impl Scenario {
    /// The scenario as variant `name` sees it, and the solver policy it runs: a variant defined in the file,
    /// or a built-in policy name applied to the scenario as written.
    pub fn variant(&self, name: &str) -> Option<(Scenario, cartwright_binpack::solver::Algorithm)> {
        use cartwright_binpack::solver::Algorithm;
        if let Some(v) = self.variants.iter().find(|v| v.name == name) {
            let mut s = self.clone();
            if let Some(cluster) = &v.cluster {
                s.cluster = cluster.clone();
            }
            if let Some(workloads) = &v.workloads {
                s.workloads = workloads.clone();
            }
            if let Some(rollouts) = &v.rollouts {
                s.rollouts = rollouts.clone();
            }
            if let Some(events) = &v.events {
                s.events = events.clone();
            }
            if let Some(timing) = &v.timing {
                s.timing = timing.clone();
            }
            if let Some(headroom) = &v.headroom {
                s.headroom = headroom.clone();
            }
            let algorithm = Algorithm::from_name(v.solver.as_deref().unwrap_or("cartwright"))?;
            return Some((s, algorithm));
        }
        Algorithm::from_name(name).map(|a| (self.clone(), a))
    }
}

/// `cluster`: where and with what the nodes come.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    /// An embedded catalog region (`us-east-1`, `ap-northeast-2`, ...).
    pub region: String,
    /// A catalog file (the JSON `cartwright catalog --output json` prints), relative to the scenario,
    /// instead of the embedded catalog.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Zones to offer in; the region's documented zones when absent.
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    /// Modelled spot discount off on-demand (0.6 when absent).
    #[serde(default)]
    pub spot_discount: Option<f64>,
    /// Manifest files (paths relative to the scenario): NodePools (`cartwright.sh/v1` or `karpenter.sh/v1`),
    /// DaemonSets, Nodes (a fixed fleet).
    #[serde(default)]
    pub manifests: Vec<PathBuf>,
    /// The same objects written inline.
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
}

/// One workload: a real Deployment, optionally a real `autoscaling/v2` HPA and the load that drives it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// A Deployment (`apps/v1`), inline; or one of `statefulSet` and `job`.
    #[serde(default)]
    pub deployment: Option<serde_json::Value>,
    /// A StatefulSet (`apps/v1`), inline: capacity-wise a Deployment with stable names.
    #[serde(default)]
    pub stateful_set: Option<serde_json::Value>,
    /// A Job (`batch/v1`), inline: `parallelism` pods at a time until `completions` have succeeded.
    #[serde(default)]
    pub job: Option<serde_json::Value>,
    /// How long each Job pod runs once ready (required for a job).
    #[serde(default)]
    pub pod_duration: Option<Dur>,
    /// Its HorizontalPodAutoscaler (`autoscaling/v2`), inline.
    #[serde(default)]
    pub hpa: Option<serde_json::Value>,
    /// The offered load over time, in any unit (requests/s, say).
    #[serde(default)]
    pub load: Option<Load>,
    /// The load one pod serves at 100 % of its cpu request (same unit as `load`).
    #[serde(default)]
    pub pod_capacity: Option<f64>,
}

/// A load curve.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "curve", deny_unknown_fields)]
pub enum Load {
    /// The same load all the time.
    Constant { value: f64 },
    /// A day-long cosine between `base` (at `peakAt` − 12 h) and `peak` (at `peakAt`), optionally with
    /// bursts on top.
    Diurnal {
        base: f64,
        peak: f64,
        peak_at: Dur,
        #[serde(default)]
        bursts: Vec<Burst>,
    },
    /// `value` from each step's `at` on (before the first step: the first value).
    Step { steps: Vec<LoadStep> },
    /// A time series from a CSV file (relative to the scenario) with a header and rows `seconds,value`: each
    /// value holds until the next row.
    Csv {
        file: PathBuf,
        #[serde(skip)]
        points: Vec<(u64, f64)>,
    },
    /// `base`, with `peak` between `at` and `at + for`.
    Spike {
        base: f64,
        peak: f64,
        at: Dur,
        #[serde(rename = "for")]
        lasts: Dur,
    },
}

/// A burst: from `at` the load ramps up over `rise` to `factor` times the curve, holds for `hold`, and
/// ramps back down over `rise`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Burst {
    pub at: Dur,
    pub rise: Dur,
    pub hold: Dur,
    pub factor: f64,
}

impl Burst {
    /// The multiplier at `t` milliseconds (1 outside the burst).
    fn factor_at(&self, t: u64) -> f64 {
        let (start, rise, hold) = (self.at.millis(), self.rise.millis(), self.hold.millis());
        let envelope = if t < start || t >= start + 2 * rise + hold {
            0.0
        } else if t < start + rise {
            (t - start) as f64 / rise as f64
        } else if t < start + rise + hold {
            1.0
        } else {
            (start + 2 * rise + hold - t) as f64 / rise as f64
        };
        1.0 + (self.factor - 1.0) * envelope
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadStep {
    pub at: Dur,
    pub value: f64,
}

impl Load {
    /// The load at `t` milliseconds.
    pub fn at(&self, t: u64) -> f64 {
        match self {
            Load::Constant { value } => *value,
            Load::Diurnal { base, peak, peak_at, bursts } => {
                let day = 86_400_000.0;
                let phase = (t as f64 - peak_at.millis() as f64) / day * std::f64::consts::TAU;
                let curve = base + (peak - base) * (1.0 + phase.cos()) / 2.0;
                bursts.iter().fold(curve, |load, b| load * b.factor_at(t))
            }
            Load::Step { steps } => {
                let mut value = steps.first().map_or(0.0, |s| s.value);
                for s in steps {
                    if s.at.millis() <= t {
                        value = s.value;
                    }
                }
                value
            }
            Load::Csv { points, .. } => {
                let i = points.partition_point(|(at, _)| *at <= t);
                if i == 0 { points.first().map_or(0.0, |p| p.1) } else { points[i - 1].1 }
            }
            Load::Spike { base, peak, at, lasts } => {
                if t >= at.millis() && t < at.millis() + lasts.millis() {
                    *peak
                } else {
                    *base
                }
            }
        }
    }
}

/// A release of a workload at a time, with a strategy whose capacity cost is what the scenario measures.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// The Deployment's name.
    pub workload: String,
    pub at: Dur,
    pub strategy: Strategy,
}

/// How the new version replaces the old.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase", tag = "type", deny_unknown_fields)]
pub enum Strategy {
    /// A Deployment rolling update: at most `maxSurge` extra pods, at most `maxUnavailable` missing
    /// (counts or percentages of the replicas, rounded as Kubernetes does: surge up, unavailable down).
    RollingUpdate {
        #[serde(default = "default_quarter")]
        max_surge: String,
        #[serde(default = "default_quarter")]
        max_unavailable: String,
    },
    /// A full second copy until promotion; the old copy is removed `scaleDownDelay` after it.
    BlueGreen {
        /// Time from the green copy being ready to the switch.
        #[serde(default = "default_promote")]
        promote_after: Dur,
        #[serde(default = "default_scale_down_delay")]
        scale_down_delay: Dur,
    },
    /// Argo Rollouts canary steps (no traffic router): the canary gets `setWeight` percent of the replicas
    /// and the stable copy the rest; `pause` waits.
    Canary { steps: Vec<CanaryStep> },
}

fn default_quarter() -> String {
    "25%".into()
}

fn default_promote() -> Dur {
    Dur::from_secs(600)
}

fn default_scale_down_delay() -> Dur {
    Dur::from_secs(1800)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryStep {
    #[serde(default)]
    pub set_weight: Option<u32>,
    #[serde(default)]
    pub pause: Option<Dur>,
}

/// Things that happen to the cluster.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Events {
    /// Spot interruptions: a rate, explicit times, or both.
    #[serde(default)]
    pub spot_interruptions: SpotInterruptions,
    #[serde(default)]
    pub zone_outages: Vec<ZoneOutage>,
    #[serde(default)]
    pub capacity_shortages: Vec<CapacityShortage>,
}

/// A zone out of service from `at` for `for`: its nodes go away and nothing launches there.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneOutage {
    pub zone: String,
    pub at: Dur,
    #[serde(rename = "for")]
    pub lasts: Dur,
}

/// Instance types out of capacity (EC2's InsufficientInstanceCapacity) from `at` for `for`: their offerings
/// (in `zones`, of `capacityType`, or all) cannot be launched.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapacityShortage {
    pub instance_types: Vec<String>,
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    /// `spot` or `on-demand`; both when absent.
    #[serde(default)]
    pub capacity_type: Option<String>,
    pub at: Dur,
    #[serde(rename = "for")]
    pub lasts: Dur,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpotInterruptions {
    /// Expected interruptions per spot node per day (Poisson).
    #[serde(default)]
    pub per_node_day: f64,
    /// The same per instance family (`m5`, `c6i`, ...), overriding `perNodeDay` for that family.
    #[serde(default)]
    pub per_family_per_node_day: BTreeMap<String, f64>,
    /// Times at which one running spot node (chosen by the seed) gets its 2-minute notice.
    #[serde(default)]
    pub at: Vec<Dur>,
}

/// Timing of the simulated cloud and control loops (defaults from docs/scenarios.md; any field may be left out).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Timing {
    /// Median time from launch to a Ready node (log-normal).
    pub launch_median: Dur,
    /// Its 99th percentile.
    pub launch_p99: Dur,
    /// Time from binding to a Ready pod (image pull, start, readiness).
    pub pod_startup: Dur,
    pub hpa_sync: Dur,
    pub batch_idle: Dur,
    pub batch_max: Dur,
    /// How often empty nodes are looked for.
    pub consolidation_interval: Dur,
    /// How often the report samples the cluster.
    pub sample_interval: Dur,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            launch_median: Dur::from_secs(45),
            launch_p99: Dur::from_secs(90),
            pod_startup: Dur::from_secs(10),
            hpa_sync: Dur::from_secs(15),
            batch_idle: Dur::from_secs(1),
            batch_max: Dur::from_secs(10),
            consolidation_interval: Dur::from_secs(30),
            sample_interval: Dur::from_secs(60),
        }
    }
}

/// Reads a scenario; `base` resolves its relative manifest paths.
pub fn parse(source_name: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let err = |message: String| ScenarioError { source_name: source_name.to_owned(), message };
    let value: serde_json::Value =
        yaml_serde::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
    match value.get("version").and_then(|v| v.as_str()) {
        Some(VERSION) => {}
        Some(other) => {
            return Err(err(format!("version: `{other}` is not supported (expected `{VERSION}`)")));
        }
        None => return Err(err(format!("version: missing (expected `{VERSION}`)"))),
    }
    let scenario: Scenario =
        serde_path_to_error::deserialize(value).map_err(|e| err(format!("{}: {}", e.path(), e.inner())))?;
    validate(&scenario).map_err(err)?;
    Ok(scenario)
}

fn validate(s: &Scenario) -> Result<(), String> {
    if s.duration.millis() == 0 {
        return Err("duration: must be positive".into());
    }
    if s.cluster.spot_discount.is_some_and(|d| !(0.0..1.0).contains(&d)) {
        return Err("cluster.spotDiscount: must be in [0, 1)".into());
    }
    for (i, w) in s.workloads.iter().enumerate() {
        let given = [w.deployment.is_some(), w.stateful_set.is_some(), w.job.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(format!("workloads[{i}]: give exactly one of deployment, statefulSet or job"));
        }
        if w.job.is_some() && w.pod_duration.is_none() {
            return Err(format!("workloads[{i}].podDuration: a job needs how long its pods run"));
        }
        if w.job.is_some() && w.hpa.is_some() {
            return Err(format!("workloads[{i}].hpa: a job is not scaled by an HPA"));
        }
        if w.hpa.is_some() && (w.load.is_none() || w.pod_capacity.is_none()) {
            return Err(format!(
                "workloads[{i}]: an hpa needs `load` and `podCapacity` to compute utilisation"
            ));
        }
        if w.pod_capacity.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return Err(format!("workloads[{i}].podCapacity: must be positive"));
        }
    }
    for (i, r) in s.rollouts.iter().enumerate() {
        if let Strategy::Canary { steps } = &r.strategy {
            for (j, step) in steps.iter().enumerate() {
                if step.set_weight.is_some() == step.pause.is_some() {
                    return Err(format!(
                        "rollouts[{i}].strategy.steps[{j}]: give exactly one of setWeight or pause"
                    ));
                }
                if step.set_weight.is_some_and(|w| w > 100) {
                    return Err(format!("rollouts[{i}].strategy.steps[{j}].setWeight: at most 100"));
                }
            }
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, v) in s.variants.iter().enumerate() {
        if !names.insert(v.name.as_str()) {
            return Err(format!("variants[{i}].name: `{}` is defined twice", v.name));
        }
        if let Some(solver) =
            v.solver.as_deref().filter(|n| cartwright_binpack::solver::Algorithm::from_name(n).is_none())
        {
            return Err(format!(
                "variants[{i}].solver: `{solver}` is not cartwright, karpenter-greedy or ca-least-waste"
            ));
        }
        let mut variant = s.clone();
        variant.variants.clear();
        if let Some(w) = &v.workloads {
            variant.workloads = w.clone();
        }
        if let Some(r) = &v.rollouts {
            variant.rollouts = r.clone();
        }
        if let Some(e) = &v.events {
            variant.events = e.clone();
        }
        if let Some(t) = &v.timing {
            variant.timing = t.clone();
        }
        validate(&variant).map_err(|e| format!("variants[{i}] ({}): {e}", v.name))?;
    }
    for (i, c) in s.events.capacity_shortages.iter().enumerate() {
        if let Some(ct) = c.capacity_type.as_deref().filter(|ct| *ct != "spot" && *ct != "on-demand") {
            return Err(format!(
                "events.capacityShortages[{i}].capacityType: `{ct}` is not spot or on-demand"
            ));
        }
        if c.instance_types.is_empty() {
            return Err(format!("events.capacityShortages[{i}].instanceTypes: name at least one"));
        }
    }
    for (i, t) in s.traces.iter().enumerate() {
        if t.speedup.is_some_and(|x| x.is_nan() || x <= 0.0) {
            return Err(format!("traces[{i}].speedup: must be positive"));
        }
    }
    if let Some((family, _)) =
        s.events.spot_interruptions.per_family_per_node_day.iter().find(|(_, r)| r.is_nan() || **r < 0.0)
    {
        return Err(format!("events.spotInterruptions.perFamilyPerNodeDay.{family}: must not be negative"));
    }
    if s.events.spot_interruptions.per_node_day < 0.0 {
        return Err("events.spotInterruptions.perNodeDay: must not be negative".into());
    }
    if s.timing.launch_p99 < s.timing.launch_median {
        return Err("timing.launchP99: must not be below timing.launchMedian".into());
    }
    if s.timing.hpa_sync.millis() == 0
        || s.timing.sample_interval.millis() == 0
        || s.timing.consolidation_interval.millis() == 0
    {
        return Err("timing: hpaSync, sampleInterval and consolidationInterval must be positive".into());
    }
    for (i, w) in s.workloads.iter().enumerate() {
        if let Some(Load::Diurnal { bursts, .. }) = &w.load {
            for (j, b) in bursts.iter().enumerate() {
                if !(b.factor.is_finite() && b.factor > 0.0) {
                    return Err(format!("workloads[{i}].load.bursts[{j}].factor: must be positive"));
                }
                if b.rise.millis() == 0 {
                    return Err(format!("workloads[{i}].load.bursts[{j}].rise: must be positive"));
                }
            }
        }
    }
    let h = &s.headroom;
    match (h.mode, h.percent) {
        (HeadroomMode::CapacityBuffer, None) => {
            return Err("headroom.percent: required with mode capacity-buffer".into());
        }
        (_, Some(p)) if !(p > 0.0 && p <= 1000.0) => {
            return Err(format!("headroom.percent: {p} is not in (0, 1000]"));
        }
        _ => {}
    }
    if h.budget_per_hour.is_some_and(|b| b.is_nan() || b < 0.0) {
        return Err("headroom.budgetPerHour: must not be negative".into());
    }
    if h.horizon.is_some_and(|d| d.millis() == 0) || h.trend_window.is_some_and(|d| d.millis() == 0) {
        return Err("headroom: horizon and trendWindow must be positive".into());
    }
    Ok(())
}

/// Reads the manifest files named by the scenario, relative to `base`.
pub fn manifest_files(s: &Scenario, base: &Path) -> Result<Vec<(String, String)>, String> {
    s.cluster
        .manifests
        .iter()
        .map(|p| {
            let path = base.join(p);
            std::fs::read_to_string(&path)
                .map(|text| (path.display().to_string(), text))
                .map_err(|e| format!("cluster.manifests: cannot read {}: {e}", path.display()))
        })
        .collect()
}

/// A Deployment as written in `workloads[i].deployment`.
/// A workload's pods as written: name, namespace, pod template, initial replicas, and for a Job its
/// parallelism and completions.
#[derive(Clone, Debug)]
pub struct WorkloadObject {
    pub name: String,
    pub namespace: String,
    pub template: k8s_openapi::api::core::v1::PodTemplateSpec,
    pub replicas: i32,
    pub job: Option<(i32, i32)>,
}

fn typed<T: serde::de::DeserializeOwned>(
    i: usize,
    field: &str,
    kind: &str,
    value: &serde_json::Value,
) -> Result<T, String> {
    if value.get("kind").and_then(|k| k.as_str()) != Some(kind) {
        return Err(format!("workloads[{i}].{field}: kind must be {kind}"));
    }
    serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("workloads[{i}].{field}.{}: {}", e.path(), e.inner()))
}

/// Reads `workloads[i]`'s Deployment, StatefulSet or Job.
pub fn workload_object(i: usize, w: &Workload) -> Result<WorkloadObject, String> {
    let (metadata, template, replicas, job) = if let Some(v) = &w.deployment {
        let d: Deployment = typed(i, "deployment", "Deployment", v)?;
        (d.metadata, d.spec.template, d.spec.replicas.unwrap_or(1), None)
    } else if let Some(v) = &w.stateful_set {
        let s: StatefulSet = typed(i, "statefulSet", "StatefulSet", v)?;
        (s.metadata, s.spec.template, s.spec.replicas.unwrap_or(1), None)
    } else if let Some(v) = &w.job {
        let j: Job = typed(i, "job", "Job", v)?;
        let spec = j.spec.ok_or(format!("workloads[{i}].job.spec: missing"))?;
        let parallelism = spec.parallelism.unwrap_or(1);
        let completions = spec.completions.unwrap_or(parallelism);
        if parallelism < 1 || completions < 1 {
            return Err(format!("workloads[{i}].job.spec: parallelism and completions must be at least 1"));
        }
        (j.metadata, spec.template, parallelism.min(completions), Some((parallelism, completions)))
    } else {
        return Err(format!("workloads[{i}]: give exactly one of deployment, statefulSet or job"));
    };
    if replicas < 0 {
        return Err(format!("workloads[{i}]: replicas must not be negative"));
    }
    Ok(WorkloadObject {
        name: metadata.name.unwrap_or_else(|| format!("workload-{i}")),
        namespace: metadata.namespace.unwrap_or_else(|| "default".into()),
        template,
        replicas,
        job,
    })
}

/// An `autoscaling/v2` HPA as written in `workloads[i].hpa`, turned into the algorithm's spec.
pub fn hpa(i: usize, value: &serde_json::Value) -> Result<HpaSpec, String> {
    if value.get("apiVersion").and_then(|k| k.as_str()) != Some("autoscaling/v2") {
        return Err(format!("workloads[{i}].hpa: apiVersion must be autoscaling/v2"));
    }
    let hpa: HorizontalPodAutoscaler = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| format!("workloads[{i}].hpa.{}: {}", e.path(), e.inner()))?;
    let spec = hpa.spec;
    for (j, metric) in spec.metrics.iter().flatten().enumerate() {
        let cpu_utilization = metric.type_ == "Resource"
            && metric.resource.as_ref().is_some_and(|r| r.name == "cpu" && r.target.type_ == "Utilization");
        if !cpu_utilization {
            return Err(format!(
                "workloads[{i}].hpa.spec.metrics[{j}]: only a cpu Resource metric with a Utilization target is simulated"
            ));
        }
    }
    cartwright_api::hpa::spec(&spec, &format!("workloads[{i}].hpa"))
}

/// Reads the files a scenario names besides manifests (CSV load curves), relative to `base`.
pub fn load_files(s: &mut Scenario, base: &Path) -> Result<(), String> {
    for (i, w) in s.workloads.iter_mut().enumerate() {
        if let Some(Load::Csv { file, points }) = &mut w.load {
            let path = base.join(&*file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("workloads[{i}].load.file: cannot read {}: {e}", path.display()))?;
            *points = parse_series(&text)
                .map_err(|e| format!("workloads[{i}].load.file {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// `seconds,value` rows after a header, seconds ascending.
fn parse_series(text: &str) -> Result<Vec<(u64, f64)>, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut points: Vec<(u64, f64)> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| format!("line {line}: {e}"))?;
        let seconds: f64 = record
            .get(0)
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| format!("line {line}: seconds is not a number"))?;
        let value: f64 = record
            .get(1)
            .unwrap_or_default()
            .trim()
            .parse()
            .map_err(|_| format!("line {line}: value is not a number"))?;
        if seconds.is_nan() || seconds < 0.0 || !value.is_finite() {
            return Err(format!("line {line}: seconds must be non-negative and the value finite"));
        }
        let ms = (seconds * 1000.0) as u64;
        if points.last().is_some_and(|(prev, _)| *prev > ms) {
            return Err(format!("line {line}: seconds must not go backwards"));
        }
        points.push((ms, value));
    }
    if points.is_empty() {
        return Err("no rows".into());
    }
    Ok(points)
}
