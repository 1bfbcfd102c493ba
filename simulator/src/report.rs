//! What a run measured: the summary (cost, pending time, utilisation, node churn, unschedulable pods) and
//! the time series behind the charts. Serialised as `report.json` (schema in docs/scenarios.md).

use std::collections::BTreeMap;

use cartwright_binpack::CapacityType;
use serde::Serialize;

/// One point of the time series.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub t_seconds: u64,
    pub nodes_spot: usize,
    pub nodes_on_demand: usize,
    pub cost_per_hour: f64,
    pub pending_pods: usize,
    pub running_pods: usize,
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
    /// Pods of each workload that exist (any state), by workload name.
    pub workload_pods: BTreeMap<String, usize>,
}

/// One HPA sync of one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HpaPoint {
    pub t_seconds: u64,
    pub workload: String,
    pub load: f64,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
}

/// Pod pending time percentiles, seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Pending {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    /// Pods that were bound (the percentiles are over these).
    pub pods: usize,
}

/// Unschedulable pods grouped by reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnschedulableReason {
    pub reason: String,
    pub pods: usize,
}

/// The headline figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub duration_hours: f64,
    pub cost_total: f64,
    pub cost_per_hour: f64,
    /// Dollars by capacity type (`spot`, `on-demand`).
    pub cost_by_capacity_type: BTreeMap<String, f64>,
    /// Node-hours by instance family.
    pub node_hours_by_family: BTreeMap<String, f64>,
    pub pending_seconds: Pending,
    /// The same for the pods HPAs added by scaling up (what headroom is for).
    pub hpa_pending_seconds: Pending,
    /// Nodes launched for headroom (no pod waiting for them).
    pub headroom_nodes: usize,
    /// Time-averaged requested / allocatable cpu over ready nodes.
    pub cpu_utilization: f64,
    pub memory_utilization: f64,
    pub nodes_launched: usize,
    pub nodes_terminated: usize,
    /// Nodes removed, by reason (`empty`, `spot-interruption`).
    pub terminations: BTreeMap<String, usize>,
    pub interruptions: usize,
    /// Disruption commands carried out (emptiness and consolidation), and the hourly savings they
    /// claimed when decided, summed.
    pub consolidations: usize,
    pub consolidation_savings_per_hour: f64,
    pub peak_nodes: usize,
    pub unschedulable: Vec<UnschedulableReason>,
    /// Pods still pending when the run ended.
    pub still_pending: usize,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub samples: Vec<Sample>,
    pub hpa: Vec<HpaPoint>,
    /// Rollout start times (seconds) by workload.
    pub rollouts: Vec<(u64, String)>,
    /// Launches by instance type and capacity type.
    pub launches: BTreeMap<String, usize>,
    /// Where each workload's running pods are at the end: zone -> pods.
    pub pods_by_zone_at_end: BTreeMap<String, BTreeMap<String, usize>>,
}

/// How one headline row of a summary is printed.
pub type SummaryRow = (&'static str, fn(&Summary) -> String);

/// The headline rows, in order, as the terminal table and the HTML report print them.
pub fn summary_rows() -> Vec<SummaryRow> {
    vec![
        ("cost total ($)", |s| format!("{:.2}", s.cost_total)),
        ("cost per hour ($)", |s| format!("{:.3}", s.cost_per_hour)),
        ("  spot ($)", |s| format!("{:.2}", s.cost_by_capacity_type.get("spot").copied().unwrap_or(0.0))),
        ("  on-demand ($)", |s| {
            format!("{:.2}", s.cost_by_capacity_type.get("on-demand").copied().unwrap_or(0.0))
        }),
        ("pending p50 / p95 / p99 / max (s)", |s| {
            let p = &s.pending_seconds;
            format!("{:.0} / {:.0} / {:.0} / {:.0}", p.p50, p.p95, p.p99, p.max)
        }),
        ("HPA-added pods pending p50 / p95 / p99 / max (s)", |s| {
            let p = &s.hpa_pending_seconds;
            format!("{:.0} / {:.0} / {:.0} / {:.0}", p.p50, p.p95, p.p99, p.max)
        }),
        ("headroom nodes launched", |s| s.headroom_nodes.to_string()),
        ("cpu / memory utilisation", |s| {
            format!("{:.0}% / {:.0}%", s.cpu_utilization * 100.0, s.memory_utilization * 100.0)
        }),
        ("nodes launched / terminated", |s| format!("{} / {}", s.nodes_launched, s.nodes_terminated)),
        ("peak nodes", |s| s.peak_nodes.to_string()),
        ("consolidations (saving $/h)", |s| {
            format!("{} ({:.3})", s.consolidations, s.consolidation_savings_per_hour)
        }),
        ("spot interruptions", |s| s.interruptions.to_string()),
        ("pods still pending at end", |s| s.still_pending.to_string()),
    ]
}

/// Accumulates a run's measurements.
#[derive(Clone, Debug, Default)]
pub struct Collector {
    waits_ms: Vec<u64>,
    hpa_waits_ms: Vec<u64>,
    headroom_nodes: usize,
    still_pending: usize,
    samples: Vec<Sample>,
    hpa: Vec<HpaPoint>,
    rollouts: Vec<(u64, String)>,
    launches: BTreeMap<String, usize>,
    launched: usize,
    terminations: BTreeMap<String, usize>,
    interruptions: usize,
    consolidations: usize,
    consolidation_savings: f64,
    unschedulable: BTreeMap<String, usize>,
}

impl Collector {
    /// A pod was bound after `waited_ms` pending; `hpa_added` when an HPA's scale-up created it.
    pub fn pod_bound(&mut self, waited_ms: u64, hpa_added: bool) {
        self.waits_ms.push(waited_ms);
        if hpa_added {
            self.hpa_waits_ms.push(waited_ms);
        }
    }

    pub fn headroom_node(&mut self) {
        self.headroom_nodes += 1;
    }

    pub fn still_pending(&mut self, _waited_ms: u64) {
        self.still_pending += 1;
    }

    pub fn sample(&mut self, sample: Sample) {
        self.samples.push(sample);
    }

    pub fn hpa(&mut self, now_ms: u64, workload: &str, load: f64, desired: i32, ready: i32) {
        self.hpa.push(HpaPoint {
            t_seconds: now_ms / 1000,
            workload: workload.to_owned(),
            load,
            desired_replicas: desired,
            ready_replicas: ready,
        });
    }

    pub fn rollout(&mut self, now_ms: u64, workload: &str) {
        self.rollouts.push((now_ms / 1000, workload.to_owned()));
    }

    pub fn node_launched(&mut self, instance_type: &str, capacity_type: CapacityType) {
        self.launched += 1;
        *self.launches.entry(format!("{instance_type} {}", capacity_type.as_str())).or_default() += 1;
    }

    pub fn node_terminated(&mut self, reason: &str) {
        *self.terminations.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn consolidation(&mut self, savings_per_hour: f64) {
        self.consolidations += 1;
        self.consolidation_savings += savings_per_hour;
    }

    pub fn interruption(&mut self) {
        self.interruptions += 1;
    }

    /// A planning round could not place a pod; counted once per round and reason.
    pub fn unschedulable(&mut self, reason: &str) {
        *self.unschedulable.entry(reason.to_owned()).or_default() += 1;
    }

    /// Closes the run at `end_ms`.
    pub fn finish(
        mut self,
        end_ms: u64,
        cost_by_capacity: BTreeMap<&'static str, f64>,
        node_hours: BTreeMap<String, f64>,
    ) -> Report {
        let pending = percentiles(std::mem::take(&mut self.waits_ms));
        let hpa_pending = percentiles(std::mem::take(&mut self.hpa_waits_ms));
        let hours = end_ms as f64 / 3_600_000.0;
        let cost_total: f64 = cost_by_capacity.values().sum();
        let n = self.samples.len().max(1) as f64;
        let summary = Summary {
            duration_hours: hours,
            cost_total,
            cost_per_hour: if hours > 0.0 { cost_total / hours } else { 0.0 },
            cost_by_capacity_type: cost_by_capacity.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            node_hours_by_family: node_hours,
            pending_seconds: pending,
            hpa_pending_seconds: hpa_pending,
            headroom_nodes: self.headroom_nodes,
            cpu_utilization: self.samples.iter().map(|s| s.cpu_utilization).sum::<f64>() / n,
            memory_utilization: self.samples.iter().map(|s| s.memory_utilization).sum::<f64>() / n,
            nodes_launched: self.launched,
            nodes_terminated: self.terminations.values().sum(),
            terminations: self.terminations,
            interruptions: self.interruptions,
            consolidations: self.consolidations,
            consolidation_savings_per_hour: self.consolidation_savings,
            peak_nodes: self.samples.iter().map(|s| s.nodes_spot + s.nodes_on_demand).max().unwrap_or(0),
            unschedulable: self
                .unschedulable
                .into_iter()
                .map(|(reason, pods)| UnschedulableReason { reason, pods })
                .collect(),
            still_pending: self.still_pending,
        };
        Report {
            summary,
            samples: self.samples,
            hpa: self.hpa,
            rollouts: self.rollouts,
            launches: self.launches,
            pods_by_zone_at_end: BTreeMap::new(),
        }
    }
}

/// Nearest-rank percentiles of waits in milliseconds, in seconds.
fn percentiles(mut waits_ms: Vec<u64>) -> Pending {
    waits_ms.sort_unstable();
    let pct = |q: f64| -> f64 {
        if waits_ms.is_empty() {
            return 0.0;
        }
        let rank = ((q * waits_ms.len() as f64).ceil() as usize).clamp(1, waits_ms.len());
        waits_ms[rank - 1] as f64 / 1000.0
    };
    Pending {
        p50: pct(0.50),
        p95: pct(0.95),
        p99: pct(0.99),
        max: waits_ms.last().map_or(0.0, |w| *w as f64 / 1000.0),
        pods: waits_ms.len(),
    }
}
