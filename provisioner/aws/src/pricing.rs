//! On-demand prices from the AWS Price List Query API (`pricing:GetProducts`).
//!
//! The API answers in a few regions only, so a region's prices are asked of the nearest of them (the
//! same choice Karpenter makes). Each product is a JSON document; the price of a Linux, shared-tenancy,
//! no-preinstalled-software instance is its on-demand term's hourly price in USD.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The region whose Price List endpoint serves `region`'s prices.
pub fn endpoint_region(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "cn-northwest-1"
    } else if region.starts_with("ap-") {
        "ap-south-1"
    } else if region.starts_with("eu-") || region.starts_with("me-") || region.starts_with("af-") {
        "eu-central-1"
    } else {
        "us-east-1"
    }
}

/// The GetProducts `TERM_MATCH` filters (field, value) selecting the Linux on-demand instance prices of
/// `region`.
pub fn filters(region: &str) -> Vec<(&'static str, String)> {
    vec![
        ("regionCode", region.to_owned()),
        ("productFamily", "Compute Instance".to_owned()),
        ("operatingSystem", "Linux".to_owned()),
        ("tenancy", "Shared".to_owned()),
        ("preInstalledSw", "NA".to_owned()),
        ("capacitystatus", "Used".to_owned()),
        ("licenseModel", "No License required".to_owned()),
    ]
}

#[derive(Deserialize)]
struct Product {
    product: ProductInfo,
    #[serde(default)]
    terms: Terms,
}

#[derive(Deserialize)]
struct ProductInfo {
    attributes: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
struct Terms {
    #[serde(rename = "OnDemand", default)]
    on_demand: BTreeMap<String, Term>,
}

#[derive(Deserialize)]
struct Term {
    #[serde(rename = "priceDimensions", default)]
    price_dimensions: BTreeMap<String, PriceDimension>,
}

#[derive(Deserialize)]
struct PriceDimension {
    #[serde(default)]
    unit: String,
    #[serde(rename = "pricePerUnit", default)]
    price_per_unit: BTreeMap<String, String>,
}

/// The instance type and hourly USD price of one GetProducts price-list document; `None` for a product
/// that is not an instance or has no positive hourly USD price (some list a zero placeholder).
pub fn on_demand_price(document: &str) -> Result<Option<(String, f64)>, String> {
    let product: Product =
        serde_json::from_str(document).map_err(|e| format!("unreadable price-list document: {e}"))?;
    let Some(instance_type) = product.product.attributes.get("instanceType") else {
        return Ok(None);
    };
    let price = product
        .terms
        .on_demand
        .values()
        .flat_map(|term| term.price_dimensions.values())
        .filter(|d| d.unit.eq_ignore_ascii_case("hrs"))
        .filter_map(|d| d.price_per_unit.get("USD")?.parse::<f64>().ok())
        .find(|p| p.is_finite() && *p > 0.0);
    Ok(price.map(|p| (instance_type.clone(), p)))
}

/// Every instance type's price in a set of documents (the lowest when a type is listed twice).
pub fn on_demand_prices<'a>(
    documents: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, f64>, String> {
    let mut prices: BTreeMap<String, f64> = BTreeMap::new();
    for document in documents {
        if let Some((instance_type, price)) = on_demand_price(document)? {
            let entry = prices.entry(instance_type).or_insert(price);
            *entry = entry.min(price);
        }
    }
    Ok(prices)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A document in the shape GetProducts returns (trimmed to the fields read and a few others).
    pub(crate) fn document(instance_type: &str, usd: &str) -> String {
        serde_json::json!({
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": instance_type,
                    "regionCode": "us-east-1",
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "vcpu": "2"
                },
                "sku": "ABC"
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    "ABC.JRTCKXETXF": {
                        "priceDimensions": {
                            "ABC.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": { "USD": usd },
                                "description": "$0.096 per On Demand Linux m5.large Instance Hour"
                            }
                        },
                        "sku": "ABC"
                    }
                }
            },
            "version": "20261101000000"
        })
        .to_string()
    }

    #[test]
    fn a_document_gives_its_type_and_hourly_usd_price() {
        assert_eq!(
            on_demand_price(&document("m5.large", "0.0960000000")).unwrap(),
            Some(("m5.large".to_owned(), 0.096))
        );
    }

    #[test]
    fn zero_prices_and_products_without_a_type_are_skipped() {
        assert_eq!(on_demand_price(&document("m5.large", "0.0000000000")).unwrap(), None);
        let no_type = r#"{"product":{"attributes":{"servicecode":"AmazonEC2"}},"terms":{}}"#;
        assert_eq!(on_demand_price(no_type).unwrap(), None);
    }

    #[test]
    fn a_type_listed_twice_keeps_its_lowest_price_and_garbage_is_an_error() {
        let docs =
            [document("m5.large", "0.1"), document("m5.large", "0.096"), document("c5.large", "0.085")];
        let prices = on_demand_prices(docs.iter().map(String::as_str)).unwrap();
        assert_eq!(
            prices.into_iter().collect::<Vec<_>>(),
            [("c5.large".into(), 0.085), ("m5.large".into(), 0.096)]
        );
        let err = on_demand_prices(["{not json"]).unwrap_err();
        assert!(err.contains("unreadable price-list document"), "{err}");
    }

    #[test]
    fn each_region_asks_a_price_list_endpoint_that_exists() {
        assert_eq!(endpoint_region("us-west-2"), "us-east-1");
        assert_eq!(endpoint_region("ap-northeast-2"), "ap-south-1");
        assert_eq!(endpoint_region("eu-west-1"), "eu-central-1");
        assert_eq!(endpoint_region("cn-north-1"), "cn-northwest-1");
        assert!(filters("eu-west-1").contains(&("regionCode", "eu-west-1".to_owned())));
    }
}
