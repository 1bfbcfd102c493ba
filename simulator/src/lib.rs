//! `cartwright-sim`: a deterministic discrete-event simulator running the core decisions with a simulated
//! cloud, a simulated kube-scheduler and a virtual clock.
//!
//! A [`scenario`] (versioned YAML referring to ordinary Kubernetes manifests) is replayed by the
//! [`engine`]: HPAs follow the Kubernetes algorithm (`cartwright_core::hpa`), unschedulable pods are batched
//! (`cartwright_core::batcher`) and planned by the solver, nodes become ready after a seeded log-normal
//! latency, spot nodes are interrupted with a 2-minute notice, and the [`report`] says what it cost and how
//! long pods waited. Same scenario and seed, same report, byte for byte.
#![forbid(unsafe_code)]

pub mod engine;
pub mod html;
pub mod report;
pub mod scenario;
pub mod trace;

use std::path::Path;

use cartwright_api::Manifests;
use cartwright_binpack::solver::Algorithm;
use cartwright_binpack::{Catalog, CatalogOptions, SpotPriceModel};

pub use engine::{Engine, Options};
pub use report::Report;
pub use scenario::{Scenario, ScenarioError};

/// The scenario `cartwright simulate` runs with no arguments.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.yaml");

/// Reads the scenario's cluster manifests (files relative to `base`, then inline objects).
pub fn manifests(scenario: &Scenario, base: &Path) -> Result<Manifests, String> {
    let mut manifests = Manifests::default();
    for (name, text) in scenario::manifest_files(scenario, base)? {
        manifests.add_yaml(&name, &text).map_err(|e| e.to_string())?;
    }
    for (i, object) in scenario.cluster.objects.iter().enumerate() {
        let text = serde_json::to_string(object).map_err(|e| e.to_string())?;
        manifests.add_yaml(&format!("cluster.objects[{i}]"), &text).map_err(|e| e.to_string())?;
    }
    if manifests.nodepools.is_empty() && manifests.nodes.is_empty() {
        return Err("cluster: no NodePool and no Node: there is nowhere for pods to run".into());
    }
    if !manifests.pending.is_empty() {
        return Err(
            "cluster: Pods and workloads belong under `workloads`, not in the cluster manifests".into()
        );
    }
    Ok(manifests)
}

/// Runs one variant of a scenario to the end.
pub fn run(
    scenario: &Scenario,
    base: &Path,
    algorithm: Algorithm,
    progress: impl FnMut(f64),
) -> Result<Report, String> {
    let manifests = manifests(scenario, base)?;
    let options = CatalogOptions {
        zones: scenario.cluster.zones.clone(),
        spot: SpotPriceModel::flat(scenario.cluster.spot_discount.unwrap_or(0.6))
            .map_err(|e| e.to_string())?,
        ..CatalogOptions::default()
    };
    let catalog = match &scenario.cluster.catalog {
        Some(file) => cartwright_api::catalog_file::read(&base.join(file), &scenario.cluster.region)
            .map_err(|e| format!("cluster.catalog: {e}"))?,
        None => Catalog::embedded(&scenario.cluster.region, &options)
            .map_err(|e| format!("cluster.region: {e}"))?,
    };
    let mut scenario = scenario.clone();
    scenario::load_files(&mut scenario, base)?;
    let engine = Engine::new(&scenario, base, &manifests, catalog, Options { algorithm })?;
    Ok(engine.run(progress))
}

#[cfg(test)]
mod tests;
