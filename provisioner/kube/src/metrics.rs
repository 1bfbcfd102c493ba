//! Prometheus metrics on `/metrics`, and `/healthz` / `/readyz`, served with axum.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Pods waiting for capacity (unschedulable, provisionable).
    pub pods_pending: Gauge,
    /// Pods bound to a node.
    pub pods_scheduled: Gauge,
    pub nodeclaims_created: Family<Labels, Counter>,
    pub nodeclaims_terminated: Family<Labels, Counter>,
    pub solve_duration: Histogram,
    pub cloud_calls: Family<Labels, Counter>,
    pub cloud_errors: Family<Labels, Counter>,
    /// Interruption notices received, by kind.
    pub interruptions: Family<Labels, Counter>,
    /// Orphan machines terminated and NodeClaims whose machine was gone, by kind.
    pub garbage_collected: Family<Labels, Counter>,
    /// Hourly price of the launched nodes by NodePool and capacity type.
    pub cost_per_hour: Family<Labels, Gauge<f64, AtomicU64>>,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Virtual pods kept as spare capacity, by owner (HPA or CapacityBuffer) and kind (`headroom`, `guard`,
    /// `buffer`).
    pub headroom_pods: Family<Labels, Gauge>,
    /// Hourly price of the nodes launched for headroom that are still there, by NodePool.
    pub headroom_cost_per_hour: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cartwright");
        let m = Metrics {
            pods_pending: Gauge::default(),
            pods_scheduled: Gauge::default(),
            nodeclaims_created: Family::default(),
            nodeclaims_terminated: Family::default(),
            solve_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            cloud_calls: Family::default(),
            cloud_errors: Family::default(),
            garbage_collected: Family::default(),
            interruptions: Family::default(),
            cost_per_hour: Family::default(),
            leader: Gauge::default(),
            headroom_pods: Family::default(),
            headroom_cost_per_hour: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "pods_pending",
            "Unschedulable pods waiting for new capacity",
            m.pods_pending.clone(),
        );
        registry.register("pods_scheduled", "Pods bound to a node", m.pods_scheduled.clone());
        registry.register(
            "headroom_pods",
            "Virtual pods kept as spare capacity, by owner (HPA or CapacityBuffer) and kind (headroom, guard, buffer)",
            m.headroom_pods.clone(),
        );
        registry.register(
            "headroom_cost_per_hour",
            "Hourly price of nodes launched for headroom, by NodePool",
            m.headroom_cost_per_hour.clone(),
        );
        registry.register(
            "nodeclaims_created",
            "NodeClaims created, by NodePool",
            m.nodeclaims_created.clone(),
        );
        registry.register(
            "nodeclaims_terminated",
            "NodeClaims terminated, by reason",
            m.nodeclaims_terminated.clone(),
        );
        registry.register("solve_duration_seconds", "Time to plan one batch", m.solve_duration.clone());
        registry.register("cloudprovider_calls", "Cloud provider calls, by method", m.cloud_calls.clone());
        registry.register("cloudprovider_errors", "Cloud provider errors, by method", m.cloud_errors.clone());
        registry.register(
            "interruptions_received",
            "Interruption notices received, by kind",
            m.interruptions.clone(),
        );
        registry.register(
            "garbage_collected",
            "Machines without a NodeClaim terminated and NodeClaims without a machine deleted, by kind",
            m.garbage_collected.clone(),
        );
        registry.register(
            "cluster_cost_per_hour_dollars",
            "Hourly price of launched nodes, by NodePool and capacity type",
            m.cost_per_hour.clone(),
        );
        registry.register("leader", "1 while this replica is the leader", m.leader.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Serves `/metrics`, `/healthz` (the process is up) and `/readyz` (caches synced) until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
}
