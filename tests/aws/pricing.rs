//! On-demand prices through the SDK's Price List client over HTTP. moto has no Price List API, so a small
//! server here answers `AWSPriceListService.GetProducts` in its JSON protocol, in two pages, and records
//! what the SDK sent; the provider's calls against moto take the embedded-table fallback instead.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use cartwright_aws::api::Ec2Api;
use cartwright_aws::sdk::SdkEc2;
use serde_json::{Value, json};

/// A GetProducts price-list document for a type at an hourly USD price.
fn document(instance_type: &str, usd: &str) -> String {
    json!({
        "product": {
            "productFamily": "Compute Instance",
            "attributes": { "instanceType": instance_type, "operatingSystem": "Linux", "tenancy": "Shared" },
            "sku": format!("SKU-{instance_type}")
        },
        "serviceCode": "AmazonEC2",
        "terms": { "OnDemand": { "T1": { "priceDimensions": { "T1.D1": {
            "unit": "Hrs", "pricePerUnit": { "USD": usd }
        } } } } }
    })
    .to_string()
}

#[derive(Clone, Default)]
struct Recorded {
    /// (credential scope of the signature, request body) per request.
    requests: Arc<Mutex<Vec<(String, Value)>>>,
}

async fn get_products(
    axum::extract::State(recorded): axum::extract::State<Recorded>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if header("x-amz-target") != "AWSPriceListService.GetProducts" {
        return (StatusCode::BAD_REQUEST, "unexpected operation".to_owned());
    }
    // `Credential=AKID/20261124/eu-central-1/pricing/aws4_request, ...`: the region and service signed for.
    let authorization = header("authorization");
    let scope = authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split(',').next())
        .map(|c| c.split('/').skip(2).take(2).collect::<Vec<_>>().join("/"))
        .unwrap_or_default();
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let page = if request.get("NextToken").is_some() {
        json!({ "FormatVersion": "aws_v1", "PriceList": [document("c5.large", "0.0850000000"), document("m5.large", "0.0000000000")] })
    } else {
        json!({ "FormatVersion": "aws_v1", "PriceList": [document("m5.large", "0.0960000000")], "NextToken": "page-2" })
    };
    recorded.requests.lock().unwrap().push((scope, request));
    (StatusCode::OK, page.to_string())
}

#[tokio::test]
async fn on_demand_prices_come_page_by_page_from_the_price_list_endpoint_serving_the_region() {
    let recorded = Recorded::default();
    let app = axum::Router::new().route("/", axum::routing::post(get_products)).with_state(recorded.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let config =
        cartwright_aws::Ec2Settings { region: Some("eu-west-1".into()), endpoint_url: Some(endpoint) }
            .loader()
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
    let prices = SdkEc2::new(&config).on_demand_prices("eu-west-1").await.unwrap();
    // Both pages read; the zero placeholder skipped.
    assert_eq!(
        prices.into_iter().collect::<Vec<_>>(),
        [("c5.large".into(), 0.085), ("m5.large".into(), 0.096)]
    );

    let requests = recorded.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (scope, first) = &requests[0];
    // eu-west-1's prices are asked of the Price List endpoint in eu-central-1.
    assert_eq!(scope, "eu-central-1/pricing");
    assert_eq!(first["ServiceCode"], "AmazonEC2");
    let filters: Vec<(String, String, String)> = first["Filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let field = |k: &str| f[k].as_str().unwrap_or_default().to_owned();
            (field("Type"), field("Field"), field("Value"))
        })
        .collect();
    for (field, value) in [("regionCode", "eu-west-1"), ("operatingSystem", "Linux"), ("tenancy", "Shared")] {
        assert!(
            filters.contains(&("TERM_MATCH".into(), field.into(), value.into())),
            "{field}={value} not in {filters:?}"
        );
    }
    assert_eq!(requests[1].1["NextToken"], "page-2");
}
