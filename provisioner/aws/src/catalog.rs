//! The live catalog: which instance types EC2 offers in which zones of the region (DescribeInstanceTypes,
//! DescribeInstanceTypeOfferings), at today's on-demand prices (the Price List API, GetProducts) and spot
//! prices (DescribeSpotPriceHistory). A type's facts (capacity, overhead, labels) come from the embedded
//! tables; so do on-demand prices the Price List API cannot give (it is unreachable, or the type is not
//! listed), and spot prices are modelled from on-demand when EC2 reports none for the region.

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
    /// How many types' on-demand prices came from the Price List API (the rest from the embedded table).
    pub live_on_demand_prices: usize,
    /// Why the Price List API gave no prices, when it did not.
    pub pricing_error: Option<String>,
}

fn price(usd: f64) -> Price {
    Price((usd * Price::NANOS_PER_USD as f64).round() as u64)
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
    // The Price List API is optional: without it (no permission, a partition that lacks it) the embedded
    // prices stand.
    let (live_on_demand, pricing_error) = match api.on_demand_prices(region).await {
        Ok(prices) if prices.is_empty() => {
            (BTreeMap::new(), Some(format!("the Price List API lists no prices for {region}")))
        }
        Ok(prices) => (prices, None),
        Err(e) => (BTreeMap::new(), Some(e.to_string())),
    };
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
    // The embedded on-demand prices, for types the Price List API did not price.
    let embedded =
        match Catalog::embedded(region, &CatalogOptions { zones: Some(zones.clone()), ..options.clone() }) {
            Ok(catalog) => Some(catalog),
            Err(_) if !live_on_demand.is_empty() => None,
            Err(e) => return Err(Ec2Error { code: None, message: e.to_string() }),
        };
    let embedded_on_demand = |name: &str| {
        embedded
            .as_ref()?
            .get(name)?
            .offerings
            .iter()
            .find(|o| o.capacity_type == CapacityType::OnDemand)
            .map(|o| o.price)
    };
    let facts: BTreeMap<&str, _> = Catalog::embedded_facts().iter().map(|f| (f.name, f)).collect();
    let mut unknown = Vec::new();
    let mut types = Vec::new();
    let mut live_on_demand_prices = 0;
    for info in &live {
        let Some(facts) = facts.get(info.name.as_str()) else {
            unknown.push(info.name.clone());
            continue;
        };
        let live_price = live_on_demand.get(&info.name).copied().filter(|p| p.is_finite() && *p > 0.0);
        let Some(on_demand) = live_price.map(price).or_else(|| embedded_on_demand(&info.name)) else {
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
                spot_price.get(&(info.name.as_str(), *zone)).map(|p| price(*p))
            } else {
                Some(options.spot.spot_price(facts.family, on_demand))
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
        live_on_demand_prices += usize::from(live_price.is_some());
        types.push(instance_type_from_facts(facts, region, &options.node, offerings));
    }
    unknown.sort();
    Ok((
        Catalog::new(region, zones, types),
        Discovery { unknown_types: unknown, live_spot_prices, live_on_demand_prices, pricing_error },
    ))
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
    async fn price_list_prices_replace_the_embedded_ones_and_price_types_the_table_lacks() {
        let fake = FakeEc2::new();
        fake.add_instance_type(info("m5.large"), &["us-east-1a"]);
        fake.add_instance_type(info("c5.large"), &["us-east-1a"]);
        fake.add_on_demand_price("m5.large", 0.1);
        let (catalog, discovery) = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap();
        assert_eq!(discovery.live_on_demand_prices, 1);
        assert_eq!(discovery.pricing_error, None);
        let od = offering(&catalog, "m5.large", "us-east-1a", CapacityType::OnDemand).unwrap();
        assert!((od.price.usd() - 0.1).abs() < 1e-9, "{}", od.price.usd());
        // No spot prices from EC2: the model discounts the live on-demand price (60 % by default).
        let spot = offering(&catalog, "m5.large", "us-east-1a", CapacityType::Spot).unwrap();
        assert!((spot.price.usd() - 0.04).abs() < 1e-9, "{}", spot.price.usd());
        // A type the Price List does not list keeps its embedded price.
        let c5 = offering(&catalog, "c5.large", "us-east-1a", CapacityType::OnDemand).unwrap();
        assert!((c5.price.usd() - 0.085).abs() < 1e-9, "{}", c5.price.usd());

        // A region with no embedded prices is planned with Price List prices alone.
        let fake = FakeEc2::new();
        fake.add_instance_type(info("m5.large"), &["sa-east-1a"]);
        fake.add_instance_type(info("c5.large"), &["sa-east-1a"]);
        fake.add_on_demand_price("m5.large", 0.153);
        let (catalog, discovery) = discover(&fake, "sa-east-1", &CatalogOptions::default()).await.unwrap();
        let names: Vec<&str> = catalog.instance_types().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["m5.large"]);
        assert_eq!(discovery.unknown_types, ["c5.large"]);
    }

    #[tokio::test]
    async fn without_the_price_list_the_embedded_prices_stand_and_discovery_says_why() {
        let fake = FakeEc2::new();
        fake.add_instance_type(info("m5.large"), &["us-east-1a"]);
        fake.add_on_demand_price("m5.large", 0.1);
        fake.fail_next(
            "GetProducts",
            Ec2Error::new("AccessDeniedException", "not authorized: pricing:GetProducts"),
        );
        let (catalog, discovery) = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap();
        assert_eq!(discovery.live_on_demand_prices, 0);
        assert!(discovery.pricing_error.as_deref().unwrap().contains("pricing:GetProducts"), "{discovery:?}");
        let od = offering(&catalog, "m5.large", "us-east-1a", CapacityType::OnDemand).unwrap();
        assert!((od.price.usd() - 0.096).abs() < 1e-9, "{}", od.price.usd());
        // And with neither, a region without embedded prices cannot be planned: the error names it.
        fake.fail_next("GetProducts", Ec2Error::new("AccessDeniedException", "no"));
        let err = discover(&fake, "sa-east-1", &CatalogOptions::default()).await.unwrap_err();
        assert!(err.message.contains("sa-east-1"), "{err}");
    }

    #[tokio::test]
    async fn a_failing_call_fails_discovery() {
        let fake = FakeEc2::new();
        fake.fail_next("DescribeInstanceTypeOfferings", Ec2Error::new("UnauthorizedOperation", "no"));
        let err = discover(&fake, "us-east-1", &CatalogOptions::default()).await.unwrap_err();
        assert_eq!(err.code.as_deref(), Some("UnauthorizedOperation"));
    }
}
