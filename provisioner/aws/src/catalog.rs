//! The live catalog: which instance types EC2 offers in which zones of the region (DescribeInstanceTypes,
//! DescribeInstanceTypeOfferings), at today's spot prices (DescribeSpotPriceHistory). A type's facts
//! (capacity, overhead, labels) and its on-demand price come from the embedded tables, which are the
//! fallback for spot prices too when EC2 reports none for the region.

use std::collections::{BTreeMap, BTreeSet};

use cartwright_binpack::catalog::instance_type_from_facts;
use cartwright_binpack::{CapacityType, Catalog, CatalogOptions, Offering, Price};

use crate::api::{Ec2Api, Ec2Error};

/// What discovery found besides the catalog.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovery {
    /// Types EC2 offers that have no embedded facts or no on-demand price in the region (not planned with).
    pub unknown_types: Vec<String>,
    /// Whether spot prices came from EC2 (else from the embedded spot model).
    pub live_spot_prices: bool,
}

/// Builds the region's catalog from EC2.
pub async fn discover<A: Ec2Api>(
    api: &A,
    region: &str,
    options: &CatalogOptions,
) -> Result<(Catalog, Discovery), Ec2Error> {
    let live = api.describe_instance_types().await?;
    let offered = api.describe_instance_type_offerings().await?;
    let spot = api.describe_spot_prices().await?;
    let mut zones_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (t, z) in &offered {
        zones_of.entry(t.as_str()).or_default().insert(z.as_str());
    }
    let mut zones: BTreeSet<String> = offered.iter().map(|(_, z)| z.clone()).collect();
    if let Some(only) = &options.zones {
        zones.retain(|z| only.contains(z));
    }
    let zones: Vec<String> = zones.into_iter().collect();
    let mut spot_price: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for p in &spot {
        if p.price_per_hour.is_finite() && p.price_per_hour > 0.0 {
            spot_price.insert((p.instance_type.as_str(), p.zone.as_str()), p.price_per_hour);
        }
    }
    let live_spot_prices = !spot_price.is_empty();
    // On-demand prices (and the spot model's fallback) from the embedded tables.
    let embedded =
        Catalog::embedded(region, &CatalogOptions { zones: Some(zones.clone()), ..options.clone() })
            .map_err(|e| Ec2Error { code: None, message: e.to_string() })?;
    let facts: BTreeMap<&str, _> = Catalog::embedded_facts().iter().map(|f| (f.name, f)).collect();
    let mut unknown = Vec::new();
    let mut types = Vec::new();
    for info in &live {
        let (Some(facts), Some(priced)) = (facts.get(info.name.as_str()), embedded.get(&info.name)) else {
            unknown.push(info.name.clone());
            continue;
        };
        let price_of = |capacity_type: CapacityType| {
            priced.offerings.iter().find(|o| o.capacity_type == capacity_type).map(|o| o.price)
        };
        let Some(on_demand) = price_of(CapacityType::OnDemand) else {
            unknown.push(info.name.clone());
            continue;
        };
        let mut offerings = Vec::new();
        for zone in
            zones_of.get(info.name.as_str()).into_iter().flatten().filter(|z| zones.iter().any(|k| k == *z))
        {
            offerings.push(Offering {
                zone: (*zone).to_owned(),
                capacity_type: CapacityType::OnDemand,
                price: on_demand,
                available: true,
            });
            let spot = if live_spot_prices {
                spot_price
                    .get(&(info.name.as_str(), *zone))
                    .map(|p| Price((p * Price::NANOS_PER_USD as f64).round() as u64))
            } else {
                price_of(CapacityType::Spot)
            };
            if let Some(price) = spot {
                offerings.push(Offering {
                    zone: (*zone).to_owned(),
                    capacity_type: CapacityType::Spot,
                    price,
                    available: true,
                });
            }
        }
        if offerings.is_empty() {
            continue;
        }
        types.push(instance_type_from_facts(facts, region, &options.node, offerings));
    }
    unknown.sort();
    Ok((Catalog::new(region, zones, types), Discovery { unknown_types: unknown, live_spot_prices }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InstanceTypeInfo;
    use crate::fake::FakeEc2;

    fn info(name: &str) -> InstanceTypeInfo {
        InstanceTypeInfo {
            name: name.into(),
            vcpu: 2,
            memory_mib: 8192,
            architectures: vec!["x86_64".into()],
        }
    }

    fn offering(c: &Catalog, t: &str, zone: &str, ct: CapacityType) -> Option<Offering> {
        c.get(t)?.offerings.iter().find(|o| o.zone == zone && o.capacity_type == ct).cloned()
    }

    #[tokio::test]
    async fn offered_zones_and_live_spot_prices_make_the_catalog() {
        let fake = FakeEc2::new();
        fake.add_instance_type(info("m5.large"), &["us-east-1a", "us-east-1b"]);
        fake.add_instance_type(info("c5.large"), &["us-east-1a"]);
        fake.add_instance_type(info("x99.huge"), &["us-east-1a"]);
        fake.add_spot_price("m5.large", "us-east-1a", 0.031);
        let (catalog, discovery) = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap();
        assert_eq!(catalog.zones(), ["us-east-1a", "us-east-1b"]);
        assert_eq!(discovery.unknown_types, ["x99.huge"]);
        assert!(discovery.live_spot_prices);
        let names: Vec<&str> = catalog.instance_types().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c5.large", "m5.large"]);
        // On demand from the embedded price list, in every offered zone; spot only where EC2 priced it.
        let od = offering(&catalog, "m5.large", "us-east-1b", CapacityType::OnDemand).unwrap();
        assert!((od.price.usd() - 0.096).abs() < 1e-9, "{}", od.price.usd());
        let spot = offering(&catalog, "m5.large", "us-east-1a", CapacityType::Spot).unwrap();
        assert!((spot.price.usd() - 0.031).abs() < 1e-9);
        assert!(offering(&catalog, "m5.large", "us-east-1b", CapacityType::Spot).is_none());
        assert!(offering(&catalog, "c5.large", "us-east-1b", CapacityType::OnDemand).is_none());
        // The requirements follow the offerings.
        let zones =
            catalog.get("c5.large").unwrap().requirements.get(cartwright_binpack::labels::ZONE).unwrap();
        assert_eq!(zones.values().unwrap().iter().collect::<Vec<_>>(), ["us-east-1a"]);
    }

    #[tokio::test]
    async fn without_spot_prices_the_embedded_model_prices_spot() {
        let fake = FakeEc2::new();
        fake.add_instance_type(info("m5.large"), &["us-east-1a"]);
        let (catalog, discovery) = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap();
        assert!(!discovery.live_spot_prices);
        let spot = offering(&catalog, "m5.large", "us-east-1a", CapacityType::Spot).unwrap();
        let od = offering(&catalog, "m5.large", "us-east-1a", CapacityType::OnDemand).unwrap();
        assert!(spot.price < od.price);
    }

    #[tokio::test]
    async fn a_failing_call_fails_discovery() {
        let fake = FakeEc2::new();
        fake.fail_next("DescribeInstanceTypeOfferings", Ec2Error::new("UnauthorizedOperation", "no"));
        let err = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap_err();
        assert_eq!(err.code.as_deref(), Some("UnauthorizedOperation"));
    }
}
