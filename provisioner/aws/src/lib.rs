//! `cartwright-aws`: the EC2 `CloudProvider`. The SDK configuration comes from the default credential chain
//! (IRSA, EKS Pod Identity, environment) with an optional endpoint override (a local moto server in tests).
#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod fake;
pub mod interruption;
pub mod nodeclass;
pub mod pricing;
pub mod provider;
pub mod sdk;
pub mod status;
pub mod userdata;

use aws_config::{BehaviorVersion, ConfigLoader, Region};

/// Where and how to reach EC2.
#[derive(Clone, Debug, Default)]
pub struct Ec2Settings {
    /// The region; `None` takes it from the environment or IMDS.
    pub region: Option<String>,
    /// An endpoint override, e.g. `http://127.0.0.1:5000` for moto.
    pub endpoint_url: Option<String>,
}

impl Ec2Settings {
    /// The SDK configuration loader for these settings, credentials from the default chain.
    pub fn loader(&self) -> ConfigLoader {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint.clone());
        }
        // Throttling and transient errors: exponential backoff with jitter, up to 5 attempts.
        loader.retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
    }

    /// Loads the SDK configuration and builds an EC2 client.
    pub async fn ec2_client(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&self.loader().load().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPS call through the SDK's own client builds its TLS configuration; with nothing listening it must
    /// come back as a dispatch error, not a crypto-provider panic.
    #[tokio::test]
    async fn https_calls_fail_cleanly_when_nothing_listens() {
        let settings = Ec2Settings {
            region: Some("us-east-1".into()),
            endpoint_url: Some("https://127.0.0.1:9".into()),
        };
        let config = settings
            .loader()
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await;
        let client = aws_sdk_ec2::Client::new(&config);
        assert_eq!(client.config().region().map(|r| r.as_ref()), Some("us-east-1"));
        let err = client.describe_instance_types().send().await.unwrap_err();
        assert!(matches!(err, aws_sdk_ec2::error::SdkError::DispatchFailure(_)), "{err:?}");
    }
}
