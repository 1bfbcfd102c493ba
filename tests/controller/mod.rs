//! `cartwright controller` (the real binary) against the in-memory API server, with the kwok provider and
//! the scheduler stand-in binding pods to the nodes it creates.

pub mod apiserver_protocol;
mod scenarios;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::apiserver::{ApiServer, scheduler};

/// A cluster: the API server, the scheduler stand-in and a kubeconfig for the controller.
pub struct Cluster {
    pub server: Arc<ApiServer>,
    pub kubeconfig: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

impl Cluster {
    pub async fn start() -> Cluster {
        let server = Arc::new(ApiServer::start().await);
        let kubeconfig = std::env::temp_dir().join(format!(
            "cartwright-e2e-{}-{}.yaml",
            std::process::id(),
            server.addr.port()
        ));
        std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
        let tasks = vec![scheduler::run(server.clone())];
        Cluster { server, kubeconfig, tasks }
    }

    /// Starts `cartwright controller` with fast test timings; `overrides` are (flag, value) pairs replacing
    /// or adding to them.
    pub fn controller(&self, overrides: &[(&str, &str)]) -> Child {
        self.controller_command(overrides).spawn().expect("starting cartwright controller")
    }

    /// The `cartwright controller` command `controller` runs, to add to before spawning.
    pub fn controller_command(&self, overrides: &[(&str, &str)]) -> Command {
        let mut flags: Vec<(String, String)> = [
            ("--kubeconfig", self.kubeconfig.to_str().unwrap()),
            ("--cloud-provider", "kwok"),
            ("--kwok-ready-after", "1s"),
            ("--batch-idle-duration", "300ms"),
            ("--batch-max-duration", "3s"),
            ("--leader-election-namespace", ""),
            ("--metrics-address", ""),
            ("--tick", "100ms"),
            ("--disruption-interval", "0s"),
            ("--log-level", "warn"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        for (flag, value) in overrides {
            match flags.iter_mut().find(|(k, _)| k == flag) {
                Some(entry) => entry.1 = (*value).to_owned(),
                None => flags.push(((*flag).to_owned(), (*value).to_owned())),
            }
        }
        let mut args = vec!["controller".to_owned()];
        for (k, v) in flags {
            args.push(format!("{k}={v}"));
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_cartwright"));
        command
            .args(&args)
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        command
    }

    /// Runs a ReplicaSet stand-in; the returned counter scales it.
    pub fn run_replicas(
        &mut self,
        name: &str,
        replicas: usize,
        template: Value,
    ) -> Arc<std::sync::atomic::AtomicUsize> {
        let (task, scale) = scheduler::replicas(self.server.clone(), "default", name, replicas, template);
        self.tasks.push(task);
        scale
    }

    pub fn nodepool(&self, name: &str, spec: Value) {
        self.server
            .create("cartwright.sh", "nodepools", "", json!({"metadata": {"name": name}, "spec": spec}))
            .unwrap();
    }

    /// A PodDisruptionBudget keeping `min_available` pods labelled app=`app` running.
    pub fn pdb(&self, app: &str, min_available: u32) {
        let pdb = json!({"metadata": {"name": app},
            "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}}});
        self.server.create("policy", "poddisruptionbudgets", "default", pdb).unwrap();
    }

    pub fn pods(&self) -> Vec<Value> {
        self.server.list("", "pods")
    }

    pub fn bound_pods(&self) -> usize {
        self.pods().iter().filter(|p| p.pointer("/spec/nodeName").is_some()).count()
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.server.list("", "nodes")
    }

    pub fn claims(&self) -> Vec<Value> {
        self.server.list("cartwright.sh", "nodeclaims")
    }

    /// Pods bound per node name (every node listed, empty ones too).
    pub fn pods_per_node(&self) -> BTreeMap<String, usize> {
        let mut out: BTreeMap<String, usize> = self.nodes().iter().map(|n| (name(n).to_owned(), 0)).collect();
        for p in self.pods() {
            if let Some(node) = p.pointer("/spec/nodeName").and_then(Value::as_str) {
                *out.entry(node.to_owned()).or_default() += 1;
            }
        }
        out
    }

    /// Every NodeClaim has its Node and every Node its NodeClaim; no node is empty (nothing launched twice).
    pub fn assert_no_orphans_or_duplicates(&self) {
        let claims: Vec<String> = self.claims().iter().map(|c| name(c).to_owned()).collect();
        let per_node = self.pods_per_node();
        let nodes: Vec<String> = per_node.keys().cloned().collect();
        assert_eq!(claims, nodes, "NodeClaims and Nodes match one to one");
        for (node, pods) in &per_node {
            assert!(*pods > 0, "node {node} is empty: capacity was launched twice ({per_node:?})");
        }
    }
}

pub fn name(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

/// A pod template requesting `cpu` and `memory`.
pub fn pod_template(cpu: &str, memory: &str) -> Value {
    json!({"metadata": {"labels": {}}, "spec": {"containers": [{"name": "app", "image": "app",
        "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}})
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
