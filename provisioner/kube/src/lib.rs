//! `cartwright-kube`: the kube-rs adapter: the controller's live loop ([`controller`]: watchers, batching,
//! NodeClaim lifecycle, termination with PDB-respecting drains), leader election with a Lease
//! ([`leader`]), Prometheus metrics and health endpoints ([`metrics`]), the kwok cloud provider
//! ([`kwok`]), and the process-wide TLS set-up every kube client in the binary relies on.
#![forbid(unsafe_code)]

pub mod controller;
pub mod disruption;
pub mod headroom;
pub mod kwok;
pub mod leader;
pub mod metrics;

/// A kube client for a kubeconfig file, or the in-cluster / `KUBECONFIG` configuration when `None`.
///
/// The client's built-in retry of 429 responses is turned off: an eviction refused by a
/// PodDisruptionBudget answers 429 and must come back at once (the drain tries again on its next pass),
/// and every other call is retried by the loops that make it.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let mut config = config(kubeconfig).await?;
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

async fn config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    })
}

/// The CA bundle the client trusts for the API server, as base64 of its PEM (what EKS calls
/// `certificateAuthority.data`), if the configuration names one.
pub async fn ca_bundle(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let Some(certs) = config(kubeconfig).await?.root_cert else { return Ok(None) };
    let mut pem = String::new();
    for der in certs {
        let body = engine.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok((!pem.is_empty()).then(|| engine.encode(pem)))
}

/// Installs aws-lc-rs as the process-wide rustls crypto provider.
///
/// The binary links two TLS users, kube (its HTTPS client) and the AWS SDK. rustls panics with "Could not
/// automatically determine the process-level CryptoProvider" when more than one provider is compiled in and
/// none is installed, which is what kube's default `ring` feature beside the SDK's aws-lc-rs produces. The
/// workspace builds kube with `aws-lc-rs` so only one provider exists; installing it explicitly at start-up
/// keeps the binary working even if a future dependency brings a second one. Calling this twice is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all this function wants.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    /// Building an HTTPS kube client creates a rustls `ClientConfig`, which is where the provider panic
    /// happens. No provider is installed first: the feature set alone must make the choice unambiguous.
    #[tokio::test]
    async fn kube_client_builds_for_https_without_an_installed_provider() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        let client = kube::Client::try_from(config);
        assert!(client.is_ok(), "{:?}", client.err());
    }

    #[test]
    fn installing_the_provider_twice_is_harmless() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
