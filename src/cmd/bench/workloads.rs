//! The built-in benchmark workloads: deterministic problems over the embedded catalog.

use cartwright_binpack::labels::{self, aws};
use cartwright_binpack::resources::NVIDIA_GPU;
use cartwright_binpack::solver::{NodePoolTemplate, PodSpec, Problem};
use cartwright_binpack::{
    CapacityType, Catalog, CatalogOptions, InstanceType, Offering, Operator, Overhead, Price, Requirement,
    Requirements, Resources, Taint, TaintEffect, Toleration,
};

/// The openb production trace (Alibaba cluster-trace-gpu-v2023; see data/README.md), embedded so the
/// benchmark needs no files at run time.
const OPENB_PODS: &str = include_str!("../../../data/traces/openb_pod_list_default.csv");

/// The names `--workload` accepts.
pub const NAMES: &[&str] = &["karpenter-diverse", "web-mix", "memory-heavy", "gpu", "constrained"];

/// A Deployment's shape: name, cpu millicores, memory MiB, share of the pods, and what it requires.
struct Shape {
    name: &'static str,
    cpu: i64,
    mem_mib: i64,
    weight: u32,
    on_demand: bool,
}

const fn shape(name: &'static str, cpu: i64, mem_mib: i64, weight: u32, on_demand: bool) -> Shape {
    Shape { name, cpu, mem_mib, weight, on_demand }
}

/// Twenty typical web Deployments: front-ends, APIs, workers, a few on-demand-only services.
const WEB_MIX: &[Shape] = &[
    shape("frontend", 250, 512, 12, false),
    shape("api-gateway", 500, 1024, 8, false),
    shape("auth", 250, 256, 6, false),
    shape("catalog-api", 500, 1536, 8, false),
    shape("search", 1000, 4096, 4, false),
    shape("cart", 250, 512, 6, false),
    shape("checkout", 500, 1024, 4, true),
    shape("payments", 1000, 2048, 2, true),
    shape("orders-worker", 1000, 1024, 6, false),
    shape("email-worker", 100, 256, 4, false),
    shape("image-resizer", 2000, 2048, 3, false),
    shape("recommendations", 2000, 8192, 2, false),
    shape("sessions-cache", 500, 4096, 3, true),
    shape("graphql", 750, 1536, 5, false),
    shape("websocket", 250, 768, 5, false),
    shape("analytics-ingest", 1500, 3072, 3, false),
    shape("pdf-render", 1000, 3072, 2, false),
    shape("feature-flags", 100, 128, 3, false),
    shape("admin", 250, 512, 2, true),
    shape("ml-inference-cpu", 4000, 8192, 2, false),
];

/// Ten memory-heavy Deployments: caches, JVM services, analytics.
const MEMORY_HEAVY: &[Shape] = &[
    shape("redis-cache", 500, 8192, 4, false),
    shape("jvm-orders", 1000, 6144, 6, false),
    shape("jvm-inventory", 2000, 12288, 4, false),
    shape("elasticsearch", 2000, 16384, 3, true),
    shape("spark-executor", 4000, 28672, 3, false),
    shape("memcached", 250, 4096, 5, false),
    shape("druid-historical", 4000, 32768, 2, true),
    shape("kafka-streams", 1000, 8192, 4, false),
    shape("pandas-batch", 2000, 16384, 3, false),
    shape("graph-db", 4000, 65536, 1, true),
];

/// Builds a named workload with `pods` pods (the trace workload: at most `pods`; constrained: about
/// `pods` × 0.7). web-mix and memory-heavy use the NodePool of Karpenter's getting-started guide (c, m, r
/// types of generation > 2, spot and on-demand); gpu adds a tainted GPU NodePool; constrained uses three.
pub fn build(name: &str, pods: usize) -> anyhow::Result<Problem> {
    let catalog = Catalog::embedded("us-east-1", &CatalogOptions::default())?;
    match name {
        "web-mix" => Ok(from_shapes(WEB_MIX, pods, catalog)),
        "memory-heavy" => Ok(from_shapes(MEMORY_HEAVY, pods, catalog)),
        "gpu" => gpu(pods, catalog),
        "constrained" => Ok(constrained(pods, catalog)),
        "karpenter-diverse" => Ok(karpenter_diverse(pods)),
        other => anyhow::bail!("unknown workload {other:?} (built in: {})", NAMES.join(", ")),
    }
}

fn from_shapes(shapes: &[Shape], pods: usize, catalog: Catalog) -> Problem {
    let total_weight: u32 = shapes.iter().map(|s| s.weight).sum();
    let mut out = Vec::with_capacity(pods);
    let mut assigned = 0usize;
    for (i, s) in shapes.iter().enumerate() {
        // The last Deployment takes the rounding remainder so the total is exact.
        let replicas = if i + 1 == shapes.len() {
            pods - assigned
        } else {
            pods * s.weight as usize / total_weight as usize
        };
        assigned += replicas;
        let mut spec = PodSpec::new("", Resources::new().with_cpu_millis(s.cpu).with_memory_mib(s.mem_mib));
        if s.on_demand {
            spec = spec.with_requirement(single_in(labels::CAPACITY_TYPE, "on-demand"));
        }
        out.extend(
            (0..replicas).map(|r| PodSpec { name: format!("default/{}-{r}", s.name), ..spec.clone() }),
        );
    }
    Problem {
        pods: out,
        existing: vec![],
        nodepools: vec![getting_started_nodepool()],
        daemonsets: vec![],
        catalog: catalog.into(),
    }
}

/// The NodePool of Karpenter's getting-started guide, with spot allowed: current c, m and r types.
fn getting_started_nodepool() -> NodePoolTemplate {
    let mut pool = NodePoolTemplate::new("default");
    pool.requirements
        .add(Requirement::new(aws::INSTANCE_CATEGORY, Operator::In, &["c", "m", "r"]).expect("values"));
    pool.requirements.add(Requirement::new(aws::INSTANCE_GENERATION, Operator::Gt, &["2"]).expect("integer"));
    pool.requirements
        .add(Requirement::new(labels::CAPACITY_TYPE, Operator::In, &["spot", "on-demand"]).expect("values"));
    pool
}

fn single_in(key: &str, value: &str) -> Requirement {
    Requirement::new(key, Operator::In, &[value]).expect("one value")
}

/// The openb trace, all pods at once (or the first `pods`): GPU pods request whole GPUs (a fractional share
/// needs one whole device without GPU sharing) and tolerate the GPU NodePool's taint; CPU pods go elsewhere.
fn gpu(pods: usize, catalog: Catalog) -> anyhow::Result<Problem> {
    let gpu_taint = Taint::new(NVIDIA_GPU, "true", TaintEffect::NoSchedule)?;
    let rows = cartwright_sim::trace::parse(OPENB_PODS).map_err(|e| anyhow::anyhow!("openb trace: {e}"))?;
    let mut out = Vec::new();
    for row in rows.into_iter().take(pods) {
        let mut spec = PodSpec::new(
            format!("openb/{}", row.name),
            Resources::new().with_cpu_millis(row.cpu_milli).with_memory_mib(row.memory_mib),
        );
        if row.gpus > 0 {
            spec.requests = spec.requests.with(NVIDIA_GPU, row.gpus);
            spec = spec.with_toleration(Toleration::exists(NVIDIA_GPU, None));
        }
        out.push(spec);
    }
    let mut gpu_pool = NodePoolTemplate::new("gpu");
    gpu_pool.weight = 10;
    gpu_pool.taints.push(gpu_taint);
    gpu_pool.requirements.add(single_in(aws::INSTANCE_GPU_MANUFACTURER, "nvidia"));
    Ok(Problem {
        pods: out,
        existing: vec![],
        nodepools: vec![gpu_pool, NodePoolTemplate::new("default")],
        daemonsets: vec![],
        catalog: catalog.into(),
    })
}

/// Karpenter's scheduling benchmark (`scheduling_benchmark_test.go`), re-created: 400 synthetic instance
/// types, type i with i+1 vCPU and 2(i+1) GiB, priced as Karpenter's KWOK provider prices them
/// ($0.25 per vCPU + $0.01 per GiB an hour, spot at 0.7 of that), in three zones; pods one fifth each
/// generic, zonal topology spread, hostname topology spread, zonal self-affinity and hostname
/// anti-affinity (ten label groups per constrained kind), cpu from {100, 250, 500, 1000, 1500}m and memory
/// from {100, 256, 512, 1024, 2048, 4096}Mi in a fixed pseudo-random pattern.
fn karpenter_diverse(pods: usize) -> Problem {
    let zones: Vec<String> = ["test-zone-a", "test-zone-b", "test-zone-c"].map(str::to_owned).to_vec();
    let types = (0..400i64)
        .map(|i| {
            let vcpu = i + 1;
            let gib = 2 * (i + 1);
            let name = format!("fake-it-{vcpu}");
            let on_demand =
                Price(((0.25 * vcpu as f64 + 0.01 * gib as f64) * Price::NANOS_PER_USD as f64) as u64);
            let spot = on_demand.discounted_ppm(300_000);
            let offerings: Vec<Offering> = zones
                .iter()
                .flat_map(|z| {
                    [(CapacityType::OnDemand, on_demand), (CapacityType::Spot, spot)].map(
                        |(capacity_type, price)| Offering {
                            zone: z.clone(),
                            capacity_type,
                            price,
                            available: true,
                        },
                    )
                })
                .collect();
            let mut requirements = Requirements::new();
            requirements.add(single_in(labels::INSTANCE_TYPE, &name));
            requirements.add(single_in(labels::ARCH, "amd64"));
            requirements.add(single_in(labels::OS, "linux"));
            requirements.add(single_in(aws::INSTANCE_CPU, &vcpu.to_string()));
            let zone_values: Vec<&str> = zones.iter().map(String::as_str).collect();
            requirements.add(Requirement::new(labels::ZONE, Operator::In, &zone_values).expect("values"));
            requirements.add(
                Requirement::new(labels::CAPACITY_TYPE, Operator::In, &["on-demand", "spot"])
                    .expect("values"),
            );
            InstanceType {
                name,
                requirements,
                capacity: Resources::new()
                    .with_cpu_millis(vcpu * 1000)
                    .with_memory_mib(gib * 1024)
                    .with_pods(110),
                overhead: Overhead::default(),
                offerings,
            }
        })
        .collect();
    let catalog = Catalog::new("synthetic", zones, types);
    const CPU: [i64; 5] = [100, 250, 500, 1000, 1500];
    const MEM: [i64; 6] = [100, 256, 512, 1024, 2048, 4096];
    let out = (0..pods)
        .map(|i| {
            // Deterministic, well-mixed picks (multiplicative hashing of the index).
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let cpu = CPU[(h >> 33) as usize % CPU.len()];
            let mem = MEM[(h >> 17) as usize % MEM.len()];
            let kind = i % 5;
            let group = format!("g{}", (i / 5) % 10);
            let spec = PodSpec::new(
                format!("diverse/{i}"),
                Resources::new().with_cpu_millis(cpu).with_memory_mib(mem),
            );
            match kind {
                0 => spec,
                1 => {
                    let app = format!("zone-spread-{group}");
                    spec.with_label("app", &app).with_spread(labels::ZONE, 1, &[("app", app.as_str())])
                }
                2 => {
                    let app = format!("host-spread-{group}");
                    spec.with_label("app", &app).with_spread(labels::HOSTNAME, 1, &[("app", app.as_str())])
                }
                3 => {
                    let app = format!("zone-affinity-{group}");
                    spec.with_label("app", &app).with_zone_affinity(&[("app", app.as_str())])
                }
                _ => {
                    let app = format!("anti-affinity-{group}");
                    spec.with_label("app", &app).with_hostname_anti_affinity(&[("app", app.as_str())])
                }
            }
        })
        .collect();
    Problem {
        pods: out,
        existing: vec![],
        nodepools: vec![NodePoolTemplate::new("default")],
        daemonsets: vec![],
        catalog: catalog.into(),
    }
}

/// Thirty Deployments with the constraints users combine, over three NodePools with limits: every Deployment
/// spreads across zones (maxSkew 1); every third is one pod per node (hostname anti-affinity) with a tenth of
/// the replicas; five need arm64; five run only on a tainted on-demand `batch` NodePool.
fn constrained(pods: usize, catalog: Catalog) -> Problem {
    let per_deployment = (pods / 30).max(1);
    let mut out = Vec::new();
    for i in 0..30 {
        let s = &WEB_MIX[i % WEB_MIX.len()];
        let app = format!("{}-{i}", s.name);
        let mut spec = PodSpec::new("", Resources::new().with_cpu_millis(s.cpu).with_memory_mib(s.mem_mib))
            .with_label("app", &app)
            .with_spread(labels::ZONE, 1, &[("app", app.as_str())]);
        let mut replicas = per_deployment;
        if i % 3 == 0 {
            spec = spec.with_hostname_anti_affinity(&[("app", app.as_str())]);
            replicas = (per_deployment / 10).max(1);
        }
        if (10..15).contains(&i) {
            spec = spec.with_requirement(single_in(labels::ARCH, "arm64"));
        }
        if (20..25).contains(&i) {
            spec = spec
                .with_requirement(single_in(labels::NODEPOOL, "batch"))
                .with_toleration(Toleration::equal("dedicated", "batch", None));
        }
        out.extend((0..replicas).map(|r| PodSpec { name: format!("default/{app}-{r}"), ..spec.clone() }));
    }
    let mut general = getting_started_nodepool();
    general.name = "general".into();
    general.weight = 10;
    general.remaining.resources.insert(cartwright_binpack::ResourceName::Cpu, 2_000_000);
    let mut arm = NodePoolTemplate::new("arm");
    arm.weight = 5;
    arm.requirements.add(single_in(labels::ARCH, "arm64"));
    arm.remaining.resources.insert(cartwright_binpack::ResourceName::Cpu, 1_000_000);
    let mut batch = NodePoolTemplate::new("batch");
    batch.requirements.add(single_in(labels::CAPACITY_TYPE, "on-demand"));
    batch.taints.push(Taint::new("dedicated", "batch", TaintEffect::NoSchedule).expect("key"));
    batch.remaining.nodes = Some(200);
    Problem {
        pods: out,
        existing: vec![],
        nodepools: vec![general, arm, batch],
        daemonsets: vec![],
        catalog: catalog.into(),
    }
}
