//! A catalog as a file: the JSON that `cartwright catalog --output json` prints, read back. Edit it (prices,
//! offerings, types) and hand it to `cartwright plan --catalog` or a scenario's `cluster.catalog`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Catalog, CatalogError};
use crate::instance_type::{CapacityType, InstanceType, Offering, Overhead, Price};
use crate::labels;
use crate::requirements::{Operator, Requirement, Requirements};
use crate::resources::{ResourceName, Resources};

/// One instance type. `labels` and `allocatable` are what planning uses; `vcpu`, `memory_mib`, `arch` and
/// `gpu_count` are there for people reading the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    #[serde(default)]
    pub vcpu: u32,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub gpu_count: u32,
    pub allocatable: EntryAllocatable,
    /// The node labels of the type (zone and capacity type come from the offerings).
    pub labels: BTreeMap<String, String>,
    pub offerings: Vec<EntryOffering>,
}

/// What pods can use on a node of the type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryAllocatable {
    pub cpu_millis: i64,
    pub memory_mib: i64,
    pub pods: i64,
    pub ephemeral_storage_gib: i64,
    /// Extended resources (`nvidia.com/gpu`, `aws.amazon.com/neuron`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, i64>,
}

/// Where and how the type can be bought.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryOffering {
    pub zone: String,
    pub capacity_type: CapacityType,
    pub price_per_hour: f64,
}

impl CatalogEntry {
    /// The entry for an instance type, with the offerings `keep` selects.
    pub fn from_type(t: &InstanceType, keep: impl Fn(&Offering) -> bool) -> CatalogEntry {
        let alloc = t.allocatable();
        let mut labels = t.requirements.single_valued_labels();
        labels.remove(labels::ZONE);
        labels.remove(labels::CAPACITY_TYPE);
        let number = |key: &str| labels.get(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        CatalogEntry {
            name: t.name.clone(),
            vcpu: number(labels::aws::INSTANCE_CPU) as u32,
            memory_mib: number(labels::aws::INSTANCE_MEMORY),
            arch: labels.get(labels::ARCH).cloned().unwrap_or_default(),
            gpu_count: number(labels::aws::INSTANCE_GPU_COUNT) as u32,
            allocatable: EntryAllocatable {
                cpu_millis: alloc.cpu_millis,
                memory_mib: alloc.memory_bytes >> 20,
                pods: alloc.pods,
                ephemeral_storage_gib: alloc.ephemeral_storage_bytes >> 30,
                extended: alloc
                    .iter()
                    .filter_map(|(k, v)| match k {
                        ResourceName::Other(name) => Some((name, v)),
                        _ => None,
                    })
                    .collect(),
            },
            offerings: t
                .offerings
                .iter()
                .filter(|o| keep(o))
                .map(|o| EntryOffering {
                    zone: o.zone.clone(),
                    capacity_type: o.capacity_type,
                    price_per_hour: o.price.usd(),
                })
                .collect(),
            labels,
        }
    }

    fn to_instance_type(&self, region: &str) -> Result<InstanceType, CatalogError> {
        let bad = |message: String| CatalogError::BadEntry { name: self.name.clone(), message };
        let a = &self.allocatable;
        if a.cpu_millis < 0 || a.memory_mib < 0 || a.pods < 0 || a.ephemeral_storage_gib < 0 {
            return Err(bad("allocatable: negative amount".into()));
        }
        let mut capacity = Resources::new()
            .with_cpu_millis(a.cpu_millis)
            .with_memory_mib(a.memory_mib)
            .with_pods(a.pods)
            .with_ephemeral_storage_bytes(a.ephemeral_storage_gib << 30);
        for (name, amount) in &a.extended {
            if *amount < 0 {
                return Err(bad(format!("allocatable.extended.{name}: negative amount")));
            }
            capacity = capacity.with(name.as_str(), *amount);
        }
        let mut requirements = Requirements::new();
        for (key, value) in &self.labels {
            if key == labels::ZONE || key == labels::CAPACITY_TYPE {
                return Err(bad(format!("labels.{key}: belongs to the offerings")));
            }
            requirements.add(Requirement::single(key, value.clone()));
        }
        requirements.add(Requirement::single(labels::INSTANCE_TYPE, self.name.clone()));
        if !requirements.has(labels::REGION) {
            requirements.add(Requirement::single(labels::REGION, region.to_owned()));
        }
        // Well-known keys the type lacks are absent, not open (as for the embedded types).
        for key in labels::aws::ALL.iter().chain(&[labels::WINDOWS_BUILD]) {
            if !requirements.has(key) {
                requirements.add(Requirement::does_not_exist(key));
            }
        }
        let mut offerings = Vec::new();
        for (i, o) in self.offerings.iter().enumerate() {
            if !o.price_per_hour.is_finite() || o.price_per_hour < 0.0 {
                return Err(bad(format!(
                    "offerings[{i}].price_per_hour: {} is not a price",
                    o.price_per_hour
                )));
            }
            let price = Price((o.price_per_hour * Price::NANOS_PER_USD as f64).round() as u64);
            offerings.push(Offering {
                zone: o.zone.clone(),
                capacity_type: o.capacity_type,
                price,
                available: true,
            });
        }
        let zones: Vec<String> = offerings.iter().map(|o| o.zone.clone()).collect();
        let capacity_types: Vec<&str> = offerings.iter().map(|o| o.capacity_type.as_str()).collect();
        for (key, values) in [
            (labels::ZONE, zones.iter().map(String::as_str).collect::<Vec<_>>()),
            (labels::CAPACITY_TYPE, capacity_types),
        ] {
            requirements.add(if values.is_empty() {
                Requirement::does_not_exist(key)
            } else {
                Requirement::new(key, Operator::In, &values).map_err(|e| bad(e.to_string()))?
            });
        }
        Ok(InstanceType {
            name: self.name.clone(),
            requirements,
            capacity,
            overhead: Overhead::default(),
            offerings,
        })
    }
}

impl Catalog {
    /// A catalog from file entries; its zones are those the offerings name.
    pub fn from_entries(region: &str, entries: &[CatalogEntry]) -> Result<Catalog, CatalogError> {
        let mut seen = std::collections::BTreeSet::new();
        let mut types = Vec::with_capacity(entries.len());
        for e in entries {
            if !seen.insert(e.name.as_str()) {
                return Err(CatalogError::BadEntry { name: e.name.clone(), message: "listed twice".into() });
            }
            types.push(e.to_instance_type(region)?);
        }
        let zones: std::collections::BTreeSet<String> =
            types.iter().flat_map(|t| t.offerings.iter().map(|o| o.zone.clone())).collect();
        Ok(Catalog::new(region, zones.into_iter().collect(), types))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogOptions;

    #[test]
    fn the_embedded_catalog_round_trips_through_its_file_form() {
        let catalog = Catalog::embedded("us-east-1", &CatalogOptions::default()).unwrap();
        let entries: Vec<CatalogEntry> =
            catalog.instance_types().iter().map(|t| CatalogEntry::from_type(t, |_| true)).collect();
        let json = serde_json::to_string(&entries).unwrap();
        let back: Vec<CatalogEntry> = serde_json::from_str(&json).unwrap();
        let loaded = Catalog::from_entries("us-east-1", &back).unwrap();
        assert_eq!(loaded.instance_types().len(), catalog.instance_types().len());
        assert_eq!(loaded.zones(), catalog.zones());
        for (a, b) in catalog.instance_types().iter().zip(loaded.instance_types()) {
            assert_eq!(a.name, b.name);
            // Allocatable round-trips to the MiB / GiB the file carries.
            let (x, y) = (a.allocatable(), b.allocatable());
            assert_eq!((x.cpu_millis, x.pods), (y.cpu_millis, y.pods), "{}", a.name);
            assert_eq!(x.memory_bytes >> 20, y.memory_bytes >> 20, "{}", a.name);
            assert_eq!(
                x.get_extended(crate::resources::NVIDIA_GPU),
                y.get_extended(crate::resources::NVIDIA_GPU)
            );
            assert_eq!(a.offerings, b.offerings, "{}", a.name);
            assert_eq!(
                a.requirements.single_valued_labels(),
                b.requirements.single_valued_labels(),
                "{}",
                a.name
            );
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let mut e = CatalogEntry {
            name: "x.large".into(),
            vcpu: 2,
            memory_mib: 0,
            arch: String::new(),
            gpu_count: 0,
            allocatable: EntryAllocatable {
                cpu_millis: 1930,
                memory_mib: 7000,
                pods: 29,
                ephemeral_storage_gib: 17,
                extended: BTreeMap::new(),
            },
            labels: BTreeMap::new(),
            offerings: vec![EntryOffering {
                zone: "z1".into(),
                capacity_type: CapacityType::Spot,
                price_per_hour: -1.0,
            }],
        };
        let err = Catalog::from_entries("r", &[e.clone()]).unwrap_err().to_string();
        assert!(err.contains("x.large") && err.contains("offerings[0].price_per_hour"), "{err}");
        e.offerings[0].price_per_hour = 0.05;
        assert!(
            Catalog::from_entries("r", &[e.clone(), e.clone()])
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        e.labels.insert(labels::ZONE.into(), "z1".into());
        assert!(
            Catalog::from_entries("r", &[e]).unwrap_err().to_string().contains("belongs to the offerings")
        );
    }
}
