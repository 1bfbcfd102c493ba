use std::collections::BTreeMap;

use super::*;
use crate::labels::aws as aws_labels;
use crate::requirements::Operator;

/// The reference table Karpenter publishes for AL2023 nodes (the `alloc_*` columns).
const REFERENCE_CSV: &str = include_str!("../../../data/instance_types.csv");

fn us_east_1() -> Catalog {
    Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap()
}

fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
    Requirement::new(key, op, values).unwrap()
}

#[test]
fn allocatable_reproduces_the_reference_for_every_row() {
    let mut reader = csv::Reader::from_reader(REFERENCE_CSV.as_bytes());
    let facts: BTreeMap<&str, &InstanceTypeFacts> =
        Catalog::embedded_facts().iter().map(|f| (f.name, f)).collect();
    let settings = NodeSettings::default();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for row in reader.deserialize::<BTreeMap<String, String>>() {
        let row = row.unwrap();
        let name = row["instance_type"].as_str();
        let f = facts[name];
        let capacity = aws::capacity(f, &settings);
        let overhead = aws::overhead(f, &settings);
        let alloc = capacity.minus(&overhead.total());
        let want = |col: &str| row[col].parse::<i64>().unwrap();
        let got =
            (alloc.cpu_millis, alloc.memory_bytes >> 20, alloc.ephemeral_storage_bytes >> 30, alloc.pods);
        let expected = (
            want("alloc_cpu_millicores"),
            want("alloc_memory_mib"),
            want("alloc_ephemeral_storage_gib"),
            want("max_pods"),
        );
        assert_eq!(alloc.memory_bytes % (1 << 20), 0, "{name}: memory is whole MiB");
        if got != expected {
            mismatches.push(format!("{name}: got {got:?}, reference {expected:?}"));
        }
        checked += 1;
    }
    assert_eq!(checked, 1363);
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}

#[test]
fn m5_large_matches_the_documented_worked_example() {
    let catalog = us_east_1();
    let m5 = catalog.get("m5.large").unwrap();
    let alloc = m5.allocatable();
    assert_eq!(alloc.cpu_millis, 1930);
    assert_eq!(alloc.memory_bytes, 6903 << 20);
    assert_eq!(alloc.pods, 29);
    assert_eq!(alloc.ephemeral_storage_bytes, 17 << 30);
    assert_eq!(m5.capacity.memory_bytes, 7577 << 20, "capacity is after the 7.5 % VM overhead");
}

#[test]
fn node_settings_change_allocatable() {
    let facts = Catalog::embedded_facts().iter().find(|f| f.name == "m5.large").unwrap();
    let settings = NodeSettings { max_pods: Some(110), ..NodeSettings::default() };
    let alloc = aws::capacity(facts, &settings).minus(&aws::overhead(facts, &settings).total());
    assert_eq!(alloc.pods, 110);
    assert_eq!(alloc.memory_bytes >> 20, 7577 - (11 * 110 + 255) - 100);
    let settings = NodeSettings { pods_per_core: Some(4), ..NodeSettings::default() };
    assert_eq!(aws::pods(facts, &settings), 8);
    let settings = NodeSettings {
        kube_reserved: Some(Resources::new().with_cpu_millis(500)),
        system_reserved: Resources::new().with_memory_mib(100),
        ..NodeSettings::default()
    };
    let alloc = aws::capacity(facts, &settings).minus(&aws::overhead(facts, &settings).total());
    assert_eq!(alloc.cpu_millis, 1500);
    assert_eq!(alloc.memory_bytes >> 20, 6803);
}

#[test]
fn us_east_1_offers_every_priced_type_in_every_zone() {
    let catalog = us_east_1();
    assert!(catalog.instance_types().len() >= 1300, "{}", catalog.instance_types().len());
    assert_eq!(catalog.zones().len(), 5);
    for t in catalog.instance_types() {
        for zone in catalog.zones() {
            for ct in [CapacityType::OnDemand, CapacityType::Spot] {
                assert!(
                    t.offerings.iter().any(|o| &o.zone == zone && o.capacity_type == ct && o.available),
                    "{} lacks {ct} in {zone}",
                    t.name
                );
            }
        }
    }
    let m5 = catalog.get("m5.large").unwrap();
    let od = m5.offerings.iter().find(|o| o.capacity_type == CapacityType::OnDemand).unwrap();
    assert_eq!(od.price, Price::parse_usd("0.096").unwrap());
    let spot = m5.offerings.iter().find(|o| o.capacity_type == CapacityType::Spot).unwrap();
    assert_eq!(spot.price, Price::parse_usd("0.0384").unwrap(), "60 % off by default");
}

#[test]
fn other_regions_and_bad_input() {
    let seoul = Catalog::embedded("ap-northeast-2", &CatalogOptions::default()).unwrap();
    assert!(seoul.get("t3.medium").is_some());
    assert_eq!(seoul.zones()[0], "ap-northeast-2a");
    let err = Catalog::embedded("mars-north-1", &CatalogOptions::default()).unwrap_err();
    assert!(err.to_string().contains("mars-north-1") && err.to_string().contains("us-east-1"), "{err}");
    let opts = CatalogOptions { zones: Some(vec!["eu-west-1a".into()]), ..CatalogOptions::default() };
    assert!(matches!(Catalog::embedded("us-east-1", &opts), Err(CatalogError::ZoneOutsideRegion { .. })));
    let opts = CatalogOptions { zones: Some(vec![]), ..CatalogOptions::default() };
    assert!(matches!(Catalog::embedded("us-east-1", &opts), Err(CatalogError::NoZones(_))));
    assert!(SpotPriceModel::flat(1.0).is_err());
    assert!(SpotPriceModel::flat(-0.1).is_err());
}

#[test]
fn spot_model_is_overridable_per_family() {
    let spot = SpotPriceModel::flat(0.5).unwrap().with_family("m5", 0.9).unwrap();
    let opts = CatalogOptions { spot, ..CatalogOptions::default() };
    let catalog = Catalog::embedded("us-east-1", &opts).unwrap();
    let price = |name: &str| {
        let t = catalog.get(name).unwrap();
        t.offerings.iter().find(|o| o.capacity_type == CapacityType::Spot).unwrap().price
    };
    assert_eq!(price("m5.large"), Price(9_600_000));
    assert_eq!(price("c5.large"), Price::parse_usd("0.085").unwrap().discounted_ppm(500_000));
}

#[test]
fn labels_are_the_ones_karpenter_sets() {
    let catalog = us_east_1();
    let g5 = catalog.get("g5.xlarge").unwrap();
    assert_eq!(g5.label(labels::INSTANCE_TYPE), Some("g5.xlarge"));
    assert_eq!(g5.label(labels::ARCH), Some("amd64"));
    assert_eq!(g5.label(labels::OS), Some("linux"));
    assert_eq!(g5.label(labels::REGION), Some("us-east-1"));
    assert_eq!(g5.label(aws_labels::INSTANCE_FAMILY), Some("g5"));
    assert_eq!(g5.label(aws_labels::INSTANCE_CATEGORY), Some("g"));
    assert_eq!(g5.label(aws_labels::INSTANCE_GENERATION), Some("5"));
    assert_eq!(g5.label(aws_labels::INSTANCE_SIZE), Some("xlarge"));
    assert_eq!(g5.label(aws_labels::INSTANCE_CPU), Some("4"));
    assert_eq!(g5.label(aws_labels::INSTANCE_MEMORY), Some("16384"));
    assert_eq!(g5.label(aws_labels::INSTANCE_GPU_NAME), Some("a10g"));
    assert_eq!(g5.label(aws_labels::INSTANCE_GPU_COUNT), Some("1"));
    assert_eq!(g5.label(aws_labels::INSTANCE_GPU_MANUFACTURER), Some("nvidia"));
    assert_eq!(g5.label(aws_labels::INSTANCE_LOCAL_NVME), Some("250"));
    assert_eq!(g5.capacity.get_extended(crate::resources::NVIDIA_GPU), 1);
    let m5 = catalog.get("m5.large").unwrap();
    assert!(
        m5.requirements.get(aws_labels::INSTANCE_GPU_NAME).unwrap().matches(None),
        "no GPU: DoesNotExist"
    );
    assert_eq!(m5.label(aws_labels::INSTANCE_HYPERVISOR), Some("nitro"));
    let inf2 = catalog.get("inf2.xlarge").unwrap();
    assert_eq!(inf2.label(aws_labels::INSTANCE_ACCELERATOR_NAME), Some("inferentia2"));
    assert_eq!(inf2.capacity.get_extended(crate::resources::AWS_NEURON), 1);
}

#[test]
fn queries_by_requirements_and_resources() {
    let catalog = us_east_1();
    let arm_c7g = Requirements::new().with(req(labels::ARCH, Operator::In, &["arm64"])).with(req(
        aws_labels::INSTANCE_FAMILY,
        Operator::In,
        &["c7g"],
    ));
    let names: Vec<&str> = catalog.compatible(&arm_c7g).map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"c7g.large") && names.iter().all(|n| n.starts_with("c7g.")), "{names:?}");

    // GPU count > 4 and arm64: none exist among the embedded types with a price in us-east-1.
    let gpu_arm = Requirements::new()
        .with(req(aws_labels::INSTANCE_GPU_COUNT, Operator::Gt, &["4"]))
        .with(req(labels::ARCH, Operator::In, &["arm64"]));
    assert_eq!(catalog.compatible(&gpu_arm).count(), 0);
    let gpu8 = Requirements::new().with(req(aws_labels::INSTANCE_GPU_COUNT, Operator::Gte, &["8"]));
    assert!(catalog.compatible(&gpu8).all(|t| t.capacity.get_extended(crate::resources::NVIDIA_GPU) >= 8
        || t.capacity.get_extended(crate::resources::AMD_GPU) >= 8));

    // The cheapest node for 3 vCPU / 6 GiB, any type, spot.
    let request = Resources::new().with_cpu_millis(3000).with_memory_mib(6 * 1024).with_pods(1);
    let spot = Requirements::new().with(req(labels::CAPACITY_TYPE, Operator::In, &["spot"]));
    let (t, o) = catalog.cheapest(&spot, &request).unwrap();
    assert_eq!(o.capacity_type, CapacityType::Spot);
    assert!(t.fits(&request));
    for other in catalog.fitting(&spot, &request) {
        assert!(
            other.cheapest_offering(&spot).unwrap().price >= o.price,
            "{} is cheaper than {}",
            other.name,
            t.name
        );
    }

    // Zones restrict offerings; an unknown zone leaves nothing.
    let zone_b = Requirements::new().with(req(labels::ZONE, Operator::In, &["us-east-1b"]));
    let (_, o) = catalog.cheapest(&zone_b, &request).unwrap();
    assert_eq!(o.zone, "us-east-1b");
    let nowhere = Requirements::new().with(req(labels::ZONE, Operator::In, &["us-east-1e"]));
    assert_eq!(catalog.compatible(&nowhere).count(), 0);
}

#[test]
fn unavailable_offerings_are_never_chosen() {
    let mut catalog = us_east_1();
    let request = Resources::new().with_cpu_millis(1500).with_memory_mib(2000);
    let pinned = Requirements::new().with(req(labels::INSTANCE_TYPE, Operator::In, &["m5.large"])).with(req(
        labels::CAPACITY_TYPE,
        Operator::In,
        &["spot"],
    ));
    let (_, first) = catalog.cheapest(&pinned, &request).unwrap();
    let first_zone = first.zone.clone();
    assert!(catalog.set_available("m5.large", &first_zone, CapacityType::Spot, false));
    let (_, second) = catalog.cheapest(&pinned, &request).unwrap();
    assert_ne!(second.zone, first_zone);
    for zone in catalog.zones().to_vec() {
        catalog.set_available("m5.large", &zone, CapacityType::Spot, false);
    }
    assert!(catalog.cheapest(&pinned, &request).is_none());
    let err = catalog.get("m5.large").unwrap().check_compatible(&pinned).unwrap_err();
    assert!(err.to_string().contains("no available offering"), "{err}");
    assert!(!catalog.set_available("m5.nonexistent", "us-east-1a", CapacityType::Spot, false));
}

#[test]
fn min_values_counts_distinct_values_among_types() {
    let catalog = us_east_1();
    let five_families = Requirements::new().with(
        req(aws_labels::INSTANCE_FAMILY, Operator::In, &["m5", "c5", "r5", "m6i", "c6i", "r6i"])
            .with_min_values(5)
            .unwrap(),
    );
    let request = Resources::new().with_cpu_millis(1000);
    let fitting: Vec<&InstanceType> = catalog.fitting(&five_families, &request).collect();
    assert!(check_min_values(&five_families, fitting.iter().copied()).is_ok());
    let only_m5: Vec<&InstanceType> = fitting.iter().copied().filter(|t| t.name.starts_with("m5.")).collect();
    let err = check_min_values(&five_families, only_m5.iter().copied()).unwrap_err();
    assert_eq!((err.needed, err.found), (5, 1));
    assert!(err.to_string().contains(aws_labels::INSTANCE_FAMILY));
}
