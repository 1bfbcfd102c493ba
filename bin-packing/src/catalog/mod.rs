//! The instance catalog: every instance type of a region with its labels, allocatable resources and offerings.
//!
//! [`Catalog::embedded`] builds one from the facts compiled into the binary (`generated.rs`, produced by
//! `cartwright-catalog-gen` from `data/`), so planning and simulation work offline. The AWS provider builds
//! the same structure from live EC2 data. Offline, every instance type priced in a region is offered in each
//! of the region's zones, on demand at the embedded price and as spot at a modelled discount
//! ([`SpotPriceModel`]); live prices replace both.

pub mod aws;
pub mod facts;
pub mod file;
#[rustfmt::skip]
mod generated;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use self::aws::NodeSettings;
pub use self::facts::InstanceTypeFacts;
use crate::instance_type::{CapacityType, InstanceType, Offering, Price};
use crate::labels;
use crate::requirements::{Requirement, Requirements};
use crate::resources::Resources;

/// The zones Cartwright assumes per region when none are given (documented in `docs/catalog.md`).
/// us-east-1e is left out: it is an older zone that lacks most current instance types.
pub const DEFAULT_ZONES: &[(&str, &[&str])] = &[
    ("ap-northeast-2", &["ap-northeast-2a", "ap-northeast-2b", "ap-northeast-2c", "ap-northeast-2d"]),
    ("eu-west-1", &["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    ("us-east-1", &["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]),
    ("us-gov-east-1", &["us-gov-east-1a", "us-gov-east-1b", "us-gov-east-1c"]),
    ("us-gov-west-1", &["us-gov-west-1a", "us-gov-west-1b", "us-gov-west-1c"]),
    ("us-west-2", &["us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"]),
];

/// Spot prices while no live price is known: a discount off on-demand, per instance family or by default.
///
/// The default, 60 %, sits in the middle of the 55–70 % discounts seen for current general-purpose and
/// compute types in us-east-1 in 2026 (`docs/catalog.md` cites the sources); older large types are often
/// cheaper and new generations dearer, so planners should override it with their own figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotPriceModel {
    /// Discount off on-demand, in millionths (600,000 = 60 %).
    pub default_discount_ppm: u32,
    /// Per-family overrides (`m5` -> 550,000).
    pub family_discount_ppm: BTreeMap<String, u32>,
}

impl Default for SpotPriceModel {
    fn default() -> Self {
        SpotPriceModel { default_discount_ppm: 600_000, family_discount_ppm: BTreeMap::new() }
    }
}

impl SpotPriceModel {
    /// A flat discount, as a fraction in [0, 1).
    pub fn flat(fraction: f64) -> Result<Self, CatalogError> {
        Ok(SpotPriceModel {
            default_discount_ppm: discount_ppm(fraction)?,
            family_discount_ppm: BTreeMap::new(),
        })
    }

    /// Overrides the discount for one family, as a fraction in [0, 1).
    pub fn with_family(mut self, family: &str, fraction: f64) -> Result<Self, CatalogError> {
        self.family_discount_ppm.insert(family.to_owned(), discount_ppm(fraction)?);
        Ok(self)
    }

    /// The modelled spot price of a type of `family` whose on-demand price is `on_demand`.
    pub fn spot_price(&self, family: &str, on_demand: Price) -> Price {
        let ppm = self.family_discount_ppm.get(family).copied().unwrap_or(self.default_discount_ppm);
        on_demand.discounted_ppm(ppm)
    }
}

fn discount_ppm(fraction: f64) -> Result<u32, CatalogError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(CatalogError::BadSpotDiscount(fraction));
    }
    Ok((fraction * 1_000_000.0).round() as u32)
}

/// How to build a catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogOptions {
    /// Zones to offer in; `None` uses [`DEFAULT_ZONES`].
    pub zones: Option<Vec<String>>,
    pub spot: SpotPriceModel,
    pub node: NodeSettings,
}

/// Why a catalog could not be built or queried.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CatalogError {
    #[error("region {region:?} has no embedded prices (embedded regions: {known})")]
    UnknownRegion { region: String, known: String },
    #[error("zone {zone:?} is not in region {region:?}")]
    ZoneOutsideRegion { zone: String, region: String },
    #[error("no zones given for region {0:?}")]
    NoZones(String),
    #[error("spot discount {0} must be a fraction in [0, 1)")]
    BadSpotDiscount(f64),
    #[error("catalog entry {name}: {message}")]
    BadEntry { name: String, message: String },
}

/// Not enough distinct values of a key remain to honour a `minValues` requirement.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "minValues {needed} for {key} not met: only {found} distinct value(s) among the instance types that fit"
)]
pub struct MinValuesError {
    pub key: String,
    pub needed: u32,
    pub found: usize,
}

/// The instance types of one region.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    region: String,
    zones: Vec<String>,
    instance_types: Vec<InstanceType>,
}

impl Catalog {
    /// The regions with embedded prices.
    pub fn embedded_regions() -> Vec<&'static str> {
        generated::ON_DEMAND_PRICES.iter().map(|r| r.region).collect()
    }

    /// Every embedded instance type's facts, whether or not a region prices it.
    pub fn embedded_facts() -> &'static [InstanceTypeFacts] {
        &generated::INSTANCE_TYPES
    }

    /// The embedded catalog of a region: every instance type with an on-demand price there, offered on demand
    /// and as spot in each zone.
    pub fn embedded(region: &str, options: &CatalogOptions) -> Result<Catalog, CatalogError> {
        let prices = generated::ON_DEMAND_PRICES.iter().find(|r| r.region == region).ok_or_else(|| {
            CatalogError::UnknownRegion {
                region: region.to_owned(),
                known: Self::embedded_regions().join(", "),
            }
        })?;
        let zones = match &options.zones {
            Some(zones) => zones.clone(),
            None => DEFAULT_ZONES
                .iter()
                .find(|(r, _)| *r == region)
                .map(|(_, z)| z.iter().map(|s| (*s).to_owned()).collect())
                .unwrap_or_default(),
        };
        if zones.is_empty() {
            return Err(CatalogError::NoZones(region.to_owned()));
        }
        if let Some(zone) = zones.iter().find(|z| !z.starts_with(region)) {
            return Err(CatalogError::ZoneOutsideRegion { zone: zone.clone(), region: region.to_owned() });
        }
        let instance_types = prices
            .prices
            .iter()
            .map(|&(index, nanos)| {
                let facts = &generated::INSTANCE_TYPES[usize::from(index)];
                let on_demand = Price(nanos);
                let spot = options.spot.spot_price(facts.family, on_demand);
                let offerings = zones
                    .iter()
                    .flat_map(|zone| {
                        [(CapacityType::OnDemand, on_demand), (CapacityType::Spot, spot)].map(
                            |(capacity_type, price)| Offering {
                                zone: zone.clone(),
                                capacity_type,
                                price,
                                available: true,
                            },
                        )
                    })
                    .collect();
                instance_type_from_facts(facts, region, &options.node, offerings)
            })
            .collect();
        Ok(Catalog::new(region, zones, instance_types))
    }

    /// A catalog from instance types built elsewhere (live EC2 data, tests, benchmarks), sorted by name.
    pub fn new(region: &str, zones: Vec<String>, mut instance_types: Vec<InstanceType>) -> Catalog {
        instance_types.sort_by(|a, b| a.name.cmp(&b.name));
        Catalog { region: region.to_owned(), zones, instance_types }
    }

    /// The region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The zones offered in.
    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Every instance type, by name.
    pub fn instance_types(&self) -> &[InstanceType] {
        &self.instance_types
    }

    /// An instance type by name.
    pub fn get(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.instance_types[i])
    }

    /// Marks an offering (un)available, as when EC2 reports insufficient capacity. Returns whether it existed.
    pub fn set_available(
        &mut self,
        instance_type: &str,
        zone: &str,
        capacity_type: CapacityType,
        available: bool,
    ) -> bool {
        let Ok(i) = self.instance_types.binary_search_by(|t| t.name.as_str().cmp(instance_type)) else {
            return false;
        };
        let mut found = false;
        for o in &mut self.instance_types[i].offerings {
            if o.zone == zone && o.capacity_type == capacity_type {
                o.available = available;
                found = true;
            }
        }
        found
    }

    /// Marks every offering `select(instance type name, offering)` picks as available or not; returns how many.
    pub fn set_available_where(
        &mut self,
        select: impl Fn(&str, &Offering) -> bool,
        available: bool,
    ) -> usize {
        let mut count = 0;
        for t in &mut self.instance_types {
            for o in &mut t.offerings {
                if select(&t.name, o) {
                    o.available = available;
                    count += 1;
                }
            }
        }
        count
    }

    /// The instance types a node satisfying `requirements` could be: labels compatible and some available
    /// offering admitted.
    pub fn compatible<'a>(
        &'a self,
        requirements: &'a Requirements,
    ) -> impl Iterator<Item = &'a InstanceType> + 'a {
        self.instance_types.iter().filter(move |t| t.check_compatible(requirements).is_ok())
    }

    /// The compatible instance types whose allocatable resources hold `requests`.
    pub fn fitting<'a>(
        &'a self,
        requirements: &'a Requirements,
        requests: &'a Resources,
    ) -> impl Iterator<Item = &'a InstanceType> + 'a {
        self.compatible(requirements).filter(move |t| t.fits(requests))
    }

    /// The cheapest (instance type, offering) that satisfies the requirements and holds the requests.
    /// Ties go to the instance type listed first (by name), then to the offering listed first.
    pub fn cheapest<'a>(
        &'a self,
        requirements: &'a Requirements,
        requests: &'a Resources,
    ) -> Option<(&'a InstanceType, &'a Offering)> {
        self.fitting(requirements, requests)
            .filter_map(|t| t.cheapest_offering(requirements).map(|o| (t, o)))
            .min_by_key(|(_, o)| o.price)
    }
}

/// Builds an [`InstanceType`] from facts: capacity, overhead and labels for the given node settings, and
/// the offerings' zones and capacity types added to its requirements.
pub fn instance_type_from_facts(
    facts: &InstanceTypeFacts,
    region: &str,
    settings: &NodeSettings,
    offerings: Vec<Offering>,
) -> InstanceType {
    let mut requirements = aws::requirements(facts, region);
    let zones: Vec<&str> =
        offerings.iter().map(|o| o.zone.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    let capacity_types: Vec<&str> =
        offerings.iter().map(|o| o.capacity_type.as_str()).collect::<BTreeSet<_>>().into_iter().collect();
    for (key, values) in [(labels::ZONE, zones), (labels::CAPACITY_TYPE, capacity_types)] {
        requirements.add(if values.is_empty() {
            Requirement::does_not_exist(key)
        } else {
            Requirement::new(key, crate::requirements::Operator::In, &values).expect("non-empty In")
        });
    }
    InstanceType {
        name: facts.name.to_owned(),
        requirements,
        capacity: aws::capacity(facts, settings),
        overhead: aws::overhead(facts, settings),
        offerings,
    }
}

/// Checks every `minValues` requirement against a set of instance types: at least that many distinct values
/// of the key must be admitted among them (Karpenter's launch-flexibility rule, e.g. "at least 5 families").
pub fn check_min_values<'a>(
    requirements: &Requirements,
    instance_types: impl IntoIterator<Item = &'a InstanceType> + Clone,
) -> Result<(), MinValuesError> {
    for r in requirements.iter() {
        let Some(needed) = r.min_values() else { continue };
        let mut values = BTreeSet::new();
        for t in instance_types.clone() {
            if let Some(own) = t.requirements.get(r.key()).and_then(|own| own.values()) {
                values.extend(own.iter().filter(|v| r.admits_value(v)).cloned());
            }
        }
        if values.len() < needed as usize {
            return Err(MinValuesError { key: r.key().to_owned(), needed, found: values.len() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
