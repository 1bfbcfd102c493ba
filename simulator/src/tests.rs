//! Simulator behaviour on small scenarios: determinism, rollouts' capacity, interruptions, validation.

use std::path::Path;

use cartwright_binpack::solver::Algorithm;

use crate::report::Report;
use crate::scenario;

const POOLS: &str = r#"
  objects:
    - apiVersion: karpenter.sh/v1
      kind: NodePool
      metadata: {name: spot}
      spec:
        template:
          spec:
            requirements:
              - {key: karpenter.sh/capacity-type, operator: In, values: [spot]}
              - {key: karpenter.k8s.aws/instance-family, operator: In, values: [m6i, c6i]}
        disruption: {consolidateAfter: 30s}
"#;

fn web(replicas: u32) -> String {
    format!(
        r#"
  - deployment:
      apiVersion: apps/v1
      kind: Deployment
      metadata: {{name: web}}
      spec:
        replicas: {replicas}
        selector: {{matchLabels: {{app: web}}}}
        template:
          metadata: {{labels: {{app: web}}}}
          spec:
            containers: [{{name: web, image: web, resources: {{requests: {{cpu: "1", memory: 1Gi}}}}}}]
"#
    )
}

fn scenario(body: &str) -> scenario::Scenario {
    let text = format!("version: cartwright.sh/scenario/v1\nname: t\nseed: 3\n{body}");
    scenario::parse("test", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn run(s: &scenario::Scenario) -> Report {
    crate::run(s, Path::new("."), Algorithm::Cartwright, |_| {}).unwrap()
}

fn peak_pods(report: &Report, workload: &str) -> usize {
    report.samples.iter().map(|s| s.workload_pods.get(workload).copied().unwrap_or(0)).max().unwrap_or(0)
}

/// A one-NodePool (on-demand) scenario with an HPA-driven `api` Deployment (250m pods, target 50 %,
/// 100 load units per pod) under `load`, for `duration`, with `extra` appended.
fn hpa_api(duration: &str, min: i32, max: i32, replicas: i32, load: &str, extra: &str) -> String {
    format!(
        r#"
duration: {duration}
cluster:
  region: us-east-1
  objects:
    - apiVersion: karpenter.sh/v1
      kind: NodePool
      metadata: {{name: od}}
      spec: {{template: {{spec: {{requirements: [{{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}]}}}}}}
workloads:
  - deployment:
      apiVersion: apps/v1
      kind: Deployment
      metadata: {{name: api}}
      spec:
        replicas: {replicas}
        selector: {{matchLabels: {{app: api}}}}
        template:
          metadata: {{labels: {{app: api}}}}
          spec: {{containers: [{{name: api, image: api, resources: {{requests: {{cpu: 250m}}}}}}]}}
    hpa:
      apiVersion: autoscaling/v2
      kind: HorizontalPodAutoscaler
      metadata: {{name: api}}
      spec:
        scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: api}}
        minReplicas: {min}
        maxReplicas: {max}
        metrics: [{{type: Resource, resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 50}}}}}}]
    load: {load}
    podCapacity: 100
{extra}"#
    )
}

#[test]
fn same_seed_same_report_and_a_different_seed_differs() {
    let body = format!(
        "duration: 3h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nevents:\n  spotInterruptions: {{perNodeDay: 6}}\n",
        web(12)
    );
    let a = serde_json::to_string(&run(&scenario(&body))).unwrap();
    let b = serde_json::to_string(&run(&scenario(&body))).unwrap();
    assert_eq!(a, b, "same scenario and seed, same report");
    let other = scenario(&body.replace("seed: 3", "seed: 4"));
    let mut s = other.clone();
    s.seed = 99;
    let c = serde_json::to_string(&run(&s)).unwrap();
    assert_ne!(a, c, "the seed drives latencies and interruptions");
}

#[test]
fn pods_wait_for_a_node_launch_and_nodes_cost_money_for_their_lifetime() {
    let body = format!("duration: 2h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}", web(6));
    let r = run(&scenario(&body));
    let s = &r.summary;
    assert_eq!(s.pending_seconds.pods, 6);
    // Batch (1 s idle) + launch (45 s median, log-normal) + nothing else.
    assert!(s.pending_seconds.p50 > 10.0 && s.pending_seconds.max < 300.0, "{:?}", s.pending_seconds);
    assert!(s.nodes_launched >= 1 && s.still_pending == 0);
    // Cost = sum of node lifetimes at their prices: the nodes run the whole 2 h.
    let per_hour = r.samples.last().unwrap().cost_per_hour;
    assert!(
        (s.cost_total - per_hour * 2.0).abs() < per_hour * 0.05,
        "{} vs {}",
        s.cost_total,
        per_hour * 2.0
    );
    assert_eq!(s.cost_by_capacity_type.get("on-demand"), None);
}

#[test]
fn blue_green_peaks_at_twice_the_replicas_then_returns() {
    let body = format!(
        "duration: 3h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nrollouts:\n  - {{workload: web, at: 1h, strategy: {{type: blueGreen, promoteAfter: 5m, scaleDownDelay: 20m}}}}\n",
        web(5)
    );
    let r = run(&scenario(&body));
    assert_eq!(peak_pods(&r, "web"), 10, "a full green copy beside blue");
    assert_eq!(r.samples.last().unwrap().workload_pods["web"], 5, "blue scaled down after the delay");
    // Blue/green holds double capacity for promoteAfter + scaleDownDelay, then the extra capacity goes
    // (emptied nodes, or the green pods consolidated off them) and the cost returns to where it started.
    let before = r.samples.iter().find(|s| s.t_seconds == 3000).unwrap().cost_per_hour;
    let peak = r.samples.iter().map(|s| s.cost_per_hour).fold(0.0, f64::max);
    let after = r.samples.last().unwrap().cost_per_hour;
    assert!(peak > before, "green runs on extra capacity: {before} -> {peak}");
    assert!(after <= before + 1e-9, "back to {before} after the rollout, not {after}");
    assert!(r.summary.nodes_terminated >= 1, "{:?}", r.summary.terminations);
}

#[test]
fn rolling_update_surges_by_at_most_max_surge() {
    let body = format!(
        "duration: 2h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nrollouts:\n  - {{workload: web, at: 30m, strategy: {{type: rollingUpdate, maxSurge: \"1\", maxUnavailable: \"0\"}}}}\n",
        web(4)
    );
    let r = run(&scenario(&body));
    assert_eq!(peak_pods(&r, "web"), 5);
    assert_eq!(r.samples.last().unwrap().workload_pods["web"], 4);
    assert_eq!(r.summary.still_pending, 0);
}

#[test]
fn canary_steps_end_with_the_replica_count_unchanged() {
    let body = format!(
        "duration: 3h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nrollouts:\n  - workload: web\n    at: 30m\n    strategy: {{type: canary, steps: [{{setWeight: 10}}, {{pause: 5m}}, {{setWeight: 50}}, {{pause: 5m}}, {{setWeight: 100}}]}}\n",
        web(10)
    );
    let r = run(&scenario(&body));
    // 10 % of 10: one canary pod beside 9 stable, never more than 10 + 1 in flight at a step.
    let peak = peak_pods(&r, "web");
    assert!((10..=11).contains(&peak), "{peak}");
    assert_eq!(r.samples.last().unwrap().workload_pods["web"], 10);
}

#[test]
fn a_spot_interruption_drains_the_node_and_replacement_capacity_is_launched() {
    let body = format!(
        "duration: 2h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nevents:\n  spotInterruptions: {{at: [1h]}}\n",
        web(4)
    );
    let r = run(&scenario(&body));
    let s = &r.summary;
    assert_eq!(s.interruptions, 1);
    assert_eq!(s.terminations.get("spot-interruption"), Some(&1));
    assert!(s.nodes_launched >= 2, "a replacement was launched: {}", s.nodes_launched);
    assert!(s.pending_seconds.pods > 4, "the evicted pods were recreated and bound again");
    assert_eq!(r.samples.last().unwrap().running_pods, 4, "every pod runs again");
}

#[test]
fn hpa_follows_the_load_within_its_bounds() {
    let body = hpa_api(
        "6h",
        2,
        12,
        2,
        "{curve: step, steps: [{at: 0s, value: 100}, {at: 2h, value: 400}, {at: 4h, value: 5000}]}",
        "",
    );
    let r = run(&scenario(&body));
    let at = |secs: u64| r.hpa.iter().rev().find(|p| p.t_seconds <= secs).unwrap().desired_replicas;
    assert_eq!(at(7000), 2, "100 / (2 x 100) = 50 %: on target");
    assert_eq!(at(4 * 3600 - 60), 8, "400 at 50 % of 100 per pod needs 8");
    assert_eq!(at(6 * 3600 - 60), 12, "capped at maxReplicas");
}

#[test]
fn scenario_errors_name_the_field() {
    let cases = [
        (
            "version: v0\nname: x\nduration: 1h\ncluster: {region: us-east-1}\n",
            "version: `v0` is not supported",
        ),
        (
            "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {region: us-east-1}\nworklods: []\n",
            "unknown field `worklods`",
        ),
        (
            "version: cartwright.sh/scenario/v1\nname: x\nduration: soon\ncluster: {region: us-east-1}\n",
            "duration",
        ),
        (
            "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {region: us-east-1}\nworkloads: [{deployment: {kind: Deployment}, hpa: {apiVersion: autoscaling/v2}}]\n",
            "workloads[0]: an hpa needs `load` and `podCapacity`",
        ),
        (
            "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {region: us-east-1}\nrollouts: [{workload: w, at: 1h, strategy: {type: canary, steps: [{setWeight: 10, pause: 1m}]}}]\n",
            "rollouts[0].strategy.steps[0]: give exactly one of setWeight or pause",
        ),
        (
            "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {region: us-east-1}\nevents: {spotInterruptions: {perDay: 1}}\n",
            "events.spotInterruptions.perDay: unknown field `perDay`",
        ),
    ];
    for (text, expected) in cases {
        let err = scenario::parse("s.yaml", text).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    // Errors found when the run starts name their place too.
    let s = scenario("duration: 1h\ncluster:\n  region: us-east-1\n");
    let err = crate::run(&s, Path::new("."), Algorithm::Cartwright, |_| {}).unwrap_err();
    assert!(err.contains("no NodePool and no Node"), "{err}");
    let s = scenario(&format!("duration: 1h\ncluster:\n  region: mars-1\n{POOLS}"));
    let err = crate::run(&s, Path::new("."), Algorithm::Cartwright, |_| {}).unwrap_err();
    assert!(err.contains("cluster.region"), "{err}");
    let s = scenario(&format!(
        "duration: 1h\ncluster:\n  region: us-east-1\n{POOLS}\nrollouts: [{{workload: nope, at: 1m, strategy: {{type: blueGreen}}}}]\n"
    ));
    let err = crate::run(&s, Path::new("."), Algorithm::Cartwright, |_| {}).unwrap_err();
    assert!(err.contains("rollouts[0].workload: no workload named `nope`"), "{err}");
}

#[test]
fn the_default_scenario_parses_and_names_its_parts() {
    let s = scenario::parse("default", crate::DEFAULT_SCENARIO).unwrap();
    assert_eq!(s.duration.millis(), 24 * 3_600_000);
    assert_eq!(s.workloads.len(), 2);
    assert_eq!(s.rollouts.len(), 2);
}

#[test]
fn variants_replace_the_sections_they_give_and_are_validated() {
    let body = format!(
        "duration: 1h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nvariants:\n  - name: greedy\n    solver: karpenter-greedy\n  - name: released\n    rollouts: [{{workload: web, at: 10m, strategy: {{type: blueGreen, promoteAfter: 1m, scaleDownDelay: 5m}}}}]\n",
        web(3)
    );
    let s = scenario(&body);
    let (greedy, algorithm) = s.variant("greedy").unwrap();
    assert_eq!(algorithm, Algorithm::KarpenterGreedy);
    assert!(greedy.rollouts.is_empty());
    let (released, algorithm) = s.variant("released").unwrap();
    assert_eq!(algorithm, Algorithm::Cartwright);
    assert_eq!(released.rollouts.len(), 1);
    assert_eq!(peak_pods(&run(&released), "web"), 6);
    assert_eq!(
        s.variant("ca-least-waste").unwrap().1,
        Algorithm::CaLeastWaste,
        "built-in policies still work"
    );
    assert!(s.variant("nope").is_none());
    let dup = body.replace("name: released", "name: greedy");
    let err =
        scenario::parse("s", &format!("version: cartwright.sh/scenario/v1\nname: t\n{dup}")).unwrap_err();
    assert!(err.to_string().contains("variants[1].name: `greedy` is defined twice"), "{err}");
    let bad = body.replace("solver: karpenter-greedy", "solver: fastest");
    let err =
        scenario::parse("s", &format!("version: cartwright.sh/scenario/v1\nname: t\n{bad}")).unwrap_err();
    assert!(err.to_string().contains("variants[0].solver"), "{err}");
}

#[test]
fn canary_to_full_weight_with_an_hpa_never_loses_the_stable_copy_bookkeeping() {
    // An HPA resizing the workload after the stable copy is gone (weight 100) must not break the rollout.
    let body = hpa_api(
        "3h",
        2,
        20,
        4,
        "{curve: diurnal, base: 100, peak: 2000, peakAt: 3h}",
        "rollouts:\n  - {workload: api, at: 30m, strategy: {type: canary, steps: [{setWeight: 50}, {setWeight: 100}]}}\n  - {workload: api, at: 90m, strategy: {type: canary, steps: [{setWeight: 100}]}}\n",
    );
    let r = run(&scenario(&body));
    let last_desired = r.hpa.last().unwrap().desired_replicas as usize;
    assert!(last_desired > 4, "the HPA kept resizing through the rollouts");
    assert_eq!(r.samples.last().unwrap().workload_pods["api"], last_desired, "one copy at the HPA's count");
    assert_eq!(r.summary.still_pending, 0);
}

#[test]
fn a_trace_is_replayed_at_its_times_and_sped_up_on_request() {
    let dir = std::env::temp_dir().join(format!("cartwright-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("t.csv"),
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,creation_time,deletion_time\n\
         a,1000,1024,0,0,0,7200\nb,1000,1024,0,0,3600,\nc,2000,2048,0,0,3600,10800\n",
    )
    .unwrap();
    let body = format!(
        "duration: 2h\ncluster:\n  region: us-east-1\n{POOLS}\ntraces: [{{file: t.csv, speedup: 2, podTemplate: {{tolerations: [{{operator: Exists}}]}}}}]\ntiming: {{sampleInterval: 5m}}\n"
    );
    let r = crate::run(&scenario(&body), &dir, Algorithm::Cartwright, |_| {}).unwrap();
    // At speedup 2: a lives 0-1 h, b from 30 min on, c 30 min-1.5 h.
    let at =
        |minutes: u64| r.samples.iter().find(|s| s.t_seconds == minutes * 60).unwrap().workload_pods["t"];
    assert_eq!(at(20), 1);
    assert_eq!(at(40), 3);
    assert_eq!(at(70), 2);
    assert_eq!(at(100), 1);
    assert_eq!(r.summary.pending_seconds.pods, 3);
    let err =
        crate::run(&scenario(&body.replace("t.csv", "missing.csv")), &dir, Algorithm::Cartwright, |_| {});
    assert!(err.unwrap_err().starts_with("traces[0].file: cannot read"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_zone_outage_moves_pods_to_other_zones_and_nothing_launches_there_until_it_ends() {
    let body = format!(
        "duration: 3h\ncluster:\n  region: us-east-1\n  zones: [us-east-1a, us-east-1b]\n{POOLS}\nworkloads:{}\nevents:\n  zoneOutages: [{{zone: us-east-1a, at: 1h, for: 1h}}]\n",
        web(8)
    );
    let r = run(&scenario(&body));
    assert_eq!(r.samples.last().unwrap().running_pods, 8);
    assert_eq!(r.summary.still_pending, 0);
    // Prices are equal across zones, so the first nodes land in us-east-1a (the first in launch order) and go
    // away with it; their pods are planned again in us-east-1b.
    assert!(
        r.summary.terminations.get("zone-outage").copied().unwrap_or(0) >= 1,
        "{:?}",
        r.summary.terminations
    );
    assert!(r.summary.pending_seconds.pods > 8, "evicted pods were planned again");
    // During the outage every running pod is outside the zone: the samples never show pending pods stuck.
    let during: Vec<_> = r.samples.iter().filter(|s| (3900..7100).contains(&s.t_seconds)).collect();
    assert!(during.iter().all(|s| s.running_pods == 8), "pods run in us-east-1b during the outage");
}

#[test]
fn a_capacity_shortage_makes_the_plan_use_other_types() {
    let base = format!("duration: 1h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}", web(4));
    let normal = run(&scenario(&base));
    let chosen: Vec<String> =
        normal.launches.keys().map(|k| k.split(' ').next().unwrap().to_owned()).collect();
    let shortage = format!(
        "{base}\nevents:\n  capacityShortages: [{{instanceTypes: [{}], at: 0s, for: 2h}}]\n",
        chosen.join(", ")
    );
    let short = run(&scenario(&shortage));
    assert_eq!(short.samples.last().unwrap().running_pods, 4);
    for k in short.launches.keys() {
        let t = k.split(' ').next().unwrap();
        assert!(!chosen.iter().any(|c| c == t), "{t} was out of capacity");
    }
}

#[test]
fn a_csv_load_curve_drives_the_hpa() {
    let dir = std::env::temp_dir().join(format!("cartwright-csv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("load.csv"), "seconds,rps\n0,100\n3600,600\n").unwrap();
    let body = hpa_api("2h", 2, 20, 2, "{curve: csv, file: load.csv}", "");
    let r = crate::run(&scenario(&body), &dir, Algorithm::Cartwright, |_| {}).unwrap();
    assert_eq!(r.hpa.last().unwrap().desired_replicas, 12, "600 at 50 % of 100 per pod");
    assert_eq!(r.hpa.iter().find(|p| p.t_seconds == 1800).unwrap().desired_replicas, 2);
    std::fs::write(dir.join("load.csv"), "seconds,rps\n10,1\n5,2\n").unwrap();
    let err = crate::run(&scenario(&body), &dir, Algorithm::Cartwright, |_| {}).unwrap_err();
    assert!(err.contains("line 3: seconds must not go backwards"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_example_scenario_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("examples/seoul-bluegreen.yaml"), root.join("examples/hpa-burst.yaml")];
    for entry in std::fs::read_dir(root.join("examples/scenarios")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("version: cartwright.sh/scenario/v1") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let s = scenario::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        crate::manifests(&s, path.parent().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn the_openb_trace_replays_on_gpu_and_general_nodepools() {
    // The example scenario, 100 times faster: all 8,152 pods come and go within two simulated days.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios");
    let text = std::fs::read_to_string(root.join("openb-trace.yaml")).unwrap();
    let text = text.replace("duration: 150d", "duration: 2d").replace(
        "  - file: ../../data/traces/openb_pod_list_default.csv",
        "  - file: ../../data/traces/openb_pod_list_default.csv\n    speedup: 100",
    );
    let s = scenario::parse("openb", &text).unwrap();
    let r = crate::run(&s, &root, Algorithm::Cartwright, |_| {}).unwrap();
    // At 100x a pod living less than a node launch may be deleted before it is bound; most are bound.
    let bound = r.summary.pending_seconds.pods;
    assert!((8152 * 9 / 10..=8152).contains(&bound), "{bound} of 8152 traced pods bound");
    assert_eq!(r.summary.still_pending, 0);
    assert_eq!(r.samples.last().unwrap().running_pods, 0, "every traced pod was deleted");
    assert!(
        r.launches.keys().any(|k| k.starts_with('g') || k.starts_with('p')),
        "GPU nodes: {:?}",
        r.launches
    );
    assert!(
        r.summary
            .node_hours_by_family
            .keys()
            .any(|f| f.starts_with('c') || f.starts_with('m') || f.starts_with('r'))
    );
}

#[test]
fn the_scheduler_stand_in_keeps_zone_spread_within_max_skew() {
    // Three fixed nodes, one per zone; fillers leave the b and c nodes nearly full, so bin-packing scoring
    // alone would pile the spread pods onto b and c. The spread constraint must even them out.
    let node = |name: &str, zone: &str| {
        format!(
            "    - {{apiVersion: v1, kind: Node, metadata: {{name: {name}, labels: {{topology.kubernetes.io/zone: {zone}, kubernetes.io/hostname: {name}}}}}, status: {{allocatable: {{cpu: '4', memory: 16Gi, pods: '110'}}}}}}\n"
        )
    };
    let filler = |name: &str| {
        format!(
            "  - deployment: {{apiVersion: apps/v1, kind: Deployment, metadata: {{name: fill-{name}}}, spec: {{replicas: 1, selector: {{matchLabels: {{app: fill-{name}}}}}, template: {{metadata: {{labels: {{app: fill-{name}}}}}, spec: {{nodeSelector: {{kubernetes.io/hostname: {name}}}, containers: [{{name: f, image: f, resources: {{requests: {{cpu: '3'}}}}}}]}}}}}}}}\n"
        )
    };
    let body = format!(
        "duration: 10m\ncluster:\n  region: us-east-1\n  objects:\n{}{}{}workloads:\n{}{}  - deployment: {{apiVersion: apps/v1, kind: Deployment, metadata: {{name: web}}, spec: {{replicas: 6, selector: {{matchLabels: {{app: web}}}}, template: {{metadata: {{labels: {{app: web}}}}, spec: {{topologySpreadConstraints: [{{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: web}}}}}}], containers: [{{name: w, image: w, resources: {{requests: {{cpu: 250m}}}}}}]}}}}}}}}\n",
        node("node-a", "us-east-1a"),
        node("node-b", "us-east-1b"),
        node("node-c", "us-east-1c"),
        filler("node-b"),
        filler("node-c"),
    );
    let r = run(&scenario(&body));
    let zones = &r.pods_by_zone_at_end["web"];
    assert_eq!(zones.values().sum::<usize>(), 6, "{zones:?}");
    assert!(
        zones.len() == 3 && zones.values().all(|&c| c == 2),
        "maxSkew 1 over 6 pods and 3 zones: {zones:?}"
    );
}

#[test]
fn a_job_runs_parallelism_pods_until_its_completions_succeed() {
    let body = format!(
        "duration: 2h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:\n  - job: {{apiVersion: batch/v1, kind: Job, metadata: {{name: etl}}, spec: {{parallelism: 3, completions: 7, template: {{spec: {{restartPolicy: Never, containers: [{{name: e, image: e, resources: {{requests: {{cpu: '1'}}}}}}]}}}}}}}}\n    podDuration: 10m\n  - statefulSet: {{apiVersion: apps/v1, kind: StatefulSet, metadata: {{name: db}}, spec: {{replicas: 2, serviceName: db, selector: {{matchLabels: {{app: db}}}}, template: {{metadata: {{labels: {{app: db}}}}, spec: {{containers: [{{name: d, image: d, resources: {{requests: {{cpu: '1'}}}}}}]}}}}}}}}\n"
    );
    let r = run(&scenario(&body));
    let peak = peak_pods(&r, "etl");
    assert_eq!(peak, 3, "parallelism 3");
    assert_eq!(r.samples.last().unwrap().workload_pods["etl"], 0, "all 7 completed");
    assert_eq!(r.samples.last().unwrap().workload_pods["db"], 2);
    // 7 pods in rounds of 3, 3, 1, each ~10 min after a node launch: done well within the 2 h.
    let done = r.samples.iter().find(|s| s.workload_pods["etl"] == 0 && s.t_seconds > 0).unwrap().t_seconds;
    assert!((1800..=3600).contains(&done), "{done}");
    let bad = body.replace("    podDuration: 10m\n", "");
    let err =
        scenario::parse("s", &format!("version: cartwright.sh/scenario/v1\nname: t\n{bad}")).unwrap_err();
    assert!(err.to_string().contains("workloads[0].podDuration"), "{err}");
}

#[test]
fn spot_interruption_rates_can_differ_by_family() {
    let body = format!(
        "duration: 12h\ncluster:\n  region: us-east-1\n{POOLS}\nworkloads:{}\nevents:\n  spotInterruptions: {{perNodeDay: 0, perFamilyPerNodeDay: {{FAMILY: 20}}}}\n",
        web(8)
    );
    let quiet = run(&scenario(&body.replace("FAMILY", "x9z")));
    assert_eq!(quiet.summary.interruptions, 0, "no node of that family");
    let family = quiet.launches.keys().next().unwrap().split('.').next().unwrap().to_owned();
    let noisy = run(&scenario(&body.replace("FAMILY", &family)));
    assert!(noisy.summary.interruptions > 0, "{family} nodes are interrupted");
}

#[test]
fn after_a_scale_in_consolidation_shrinks_the_cluster_and_cost_falls() {
    // 2 h at a high load, then 4 h at a tenth of it: the HPA scales in and the half-empty nodes go.
    let body = hpa_api(
        "6h",
        2,
        400,
        200,
        "{curve: step, steps: [{at: 0s, value: 10000}, {at: 2h, value: 1000}]}",
        "",
    );
    let r = run(&scenario(&body));
    let cost_at =
        |seconds: u64| r.samples.iter().rfind(|s| s.t_seconds <= seconds).map(|s| s.cost_per_hour).unwrap();
    let (before, after) = (cost_at(2 * 3600 - 60), cost_at(6 * 3600 - 60));
    assert!(after < before * 0.25, "cost per hour fell from {before:.3} to {after:.3}");
    let underutilized = r.summary.terminations.get("underutilized").copied().unwrap_or(0);
    assert!(
        r.summary.consolidations >= 1 && r.summary.consolidation_savings_per_hour > 0.0,
        "{:?}",
        r.summary
    );
    assert!(underutilized + r.summary.terminations.get("empty").copied().unwrap_or(0) >= 1);
}

/// Two bursts (ramping over 3 minutes to 3 times the load, holding 10) on the `api` HPA, 3 hours, with
/// the three headroom variants.
fn bursty_api() -> scenario::Scenario {
    let load = "{curve: diurnal, base: 1000, peak: 1000, peakAt: 0s, bursts: [{at: 40m, rise: 3m, hold: 10m, factor: 3}, {at: 2h, rise: 3m, hold: 10m, factor: 3}]}";
    let variants = r#"
variants:
  - {name: none, headroom: {mode: none}}
  - {name: buffer, headroom: {mode: capacity-buffer, percent: 10}}
  - {name: hpa, headroom: {mode: hpa, horizon: 90s}}
"#;
    scenario(&hpa_api("3h", 2, 200, 20, load, variants))
}

#[test]
fn a_burst_envelope_ramps_holds_and_ramps_back() {
    let s = bursty_api();
    let load = s.workloads[0].load.as_ref().unwrap();
    let at = |minutes: f64| load.at((minutes * 60_000.0) as u64);
    assert_eq!(at(39.0), 1000.0);
    assert!((at(41.5) - 2000.0).abs() < 1e-6, "half way up: {}", at(41.5));
    assert_eq!(at(45.0), 3000.0);
    assert!((at(54.5) - 2000.0).abs() < 1e-6, "half way down: {}", at(54.5));
    assert_eq!(at(56.0), 1000.0);
}

#[test]
fn hpa_headroom_has_nodes_ready_before_a_burst_needs_them() {
    let base = bursty_api();
    let run_variant = |name: &str| {
        let (s, algorithm) = base.variant(name).unwrap();
        crate::run(&s, Path::new("."), algorithm, |_| {}).unwrap()
    };
    let (none, buffer, hpa) = (run_variant("none"), run_variant("buffer"), run_variant("hpa"));
    let p95 = |r: &Report| r.summary.hpa_pending_seconds.p95;
    assert!(none.summary.hpa_pending_seconds.pods > 40, "{:?}", none.summary.hpa_pending_seconds);
    assert_eq!(none.summary.headroom_nodes, 0);
    assert!(
        p95(&none) >= 30.0,
        "without headroom burst pods wait for nodes: {:?}",
        none.summary.hpa_pending_seconds
    );
    // Headroom launches nodes no pod waits for, and the burst's pods find them: most wait for nothing, and
    // the slowest (the first of a burst, before its trend shows) wait less.
    assert!(hpa.summary.headroom_nodes > 0 && buffer.summary.headroom_nodes > 0);
    assert_eq!(hpa.summary.hpa_pending_seconds.p50, 0.0, "{:?}", hpa.summary.hpa_pending_seconds);
    assert!(none.summary.hpa_pending_seconds.p50 >= 30.0, "{:?}", none.summary.hpa_pending_seconds);
    assert!(p95(&hpa) < p95(&none) - 15.0, "{} vs {}", p95(&hpa), p95(&none));
    assert!(p95(&hpa) < p95(&buffer), "{} vs {}", p95(&hpa), p95(&buffer));
    // It is not free.
    assert!(hpa.summary.cost_total > none.summary.cost_total);
}

#[test]
fn headroom_settings_are_validated() {
    let cases = [
        ("headroom: {mode: capacity-buffer}", "headroom.percent: required with mode capacity-buffer"),
        ("headroom: {mode: hpa, percent: -5}", "headroom.percent: -5 is not in (0, 1000]"),
        ("headroom: {mode: predictive}", "unknown variant `predictive`"),
        ("headroom: {mode: hpa, horizon: 0s}", "headroom: horizon and trendWindow must be positive"),
    ];
    for (extra, expected) in cases {
        let text = format!(
            "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {{region: us-east-1}}\n{extra}\n"
        );
        let err = scenario::parse("s.yaml", &text).unwrap_err().to_string();
        assert!(err.contains(expected), "expected {expected:?} in {err:?}");
    }
    let text = "version: cartwright.sh/scenario/v1\nname: x\nduration: 1h\ncluster: {region: us-east-1}\nworkloads: [{deployment: {kind: Deployment}, load: {curve: diurnal, base: 1, peak: 2, peakAt: 1h, bursts: [{at: 1m, rise: 0s, hold: 1m, factor: 2}]}}]\n";
    let err = scenario::parse("s.yaml", text).unwrap_err().to_string();
    assert!(err.contains("workloads[0].load.bursts[0].rise: must be positive"), "{err}");
}
