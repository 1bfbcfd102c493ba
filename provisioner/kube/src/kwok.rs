//! The kwok cloud provider: "launching" creates a Node object with the chosen instance type's capacity,
//! labels and taints and providerID `kwok://<name>`, and marks it Ready after a delay. No machine runs, so
//! Cartwright can be tried on any cluster (pods bound to these nodes stay as they are unless a kwok
//! controller fakes their kubelet).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cartwright_binpack::{Catalog, labels};
use cartwright_core::cloud::{CloudError, CloudProvider, LaunchRequest, Launched, Machine};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The providerID prefix.
pub const SCHEME: &str = "kwok://";

#[derive(Clone, Debug)]
pub struct KwokProvider {
    nodes: Api<Node>,
    catalog: Arc<Catalog>,
    ready_after: Duration,
}

fn other(e: kube::Error) -> CloudError {
    CloudError::Other(e.to_string())
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KwokProvider {
    pub fn new(client: kube::Client, catalog: Arc<Catalog>, ready_after: Duration) -> Self {
        KwokProvider { nodes: Api::all(client), catalog, ready_after }
    }

    /// Marks the node Ready once `ready_after` has passed since it was created (the kubelet's first
    /// heartbeat). Called for every kwok node not yet Ready, so a restart in between loses nothing.
    pub async fn mark_ready_if_due(&self, node: &Node) -> Result<bool, kube::Error> {
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let age = created.map(|c| k8s_openapi::jiff::Timestamp::now().duration_since(c));
        let due = age.is_none_or(|a| a.as_secs_f64() >= self.ready_after.as_secs_f64());
        if !due {
            return Ok(false);
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let status = json!({"status": {"conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kwok: ready", "lastHeartbeatTime": now, "lastTransitionTime": now,
        }]}});
        let name = node.metadata.name.as_deref().unwrap_or_default();
        self.nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
        Ok(true)
    }

    fn node_object(&self, request: &LaunchRequest) -> Result<(Node, Launched), CloudError> {
        let option =
            request.options.first().ok_or_else(|| CloudError::Other("no launch option left".into()))?;
        let instance_type = self.catalog.get(&option.instance_type).ok_or_else(|| {
            CloudError::Other(format!("instance type {} is not in the catalog", option.instance_type))
        })?;
        let mut node_labels: BTreeMap<String, String> = instance_type.requirements.single_valued_labels();
        node_labels.extend(request.labels.clone());
        node_labels.insert(labels::INSTANCE_TYPE.into(), option.instance_type.clone());
        node_labels.insert(labels::ZONE.into(), option.zone.clone());
        node_labels.insert(labels::CAPACITY_TYPE.into(), option.capacity_type.as_str().into());
        node_labels.insert(labels::HOSTNAME.into(), request.nodeclaim.clone());
        node_labels.insert(labels::REGION.into(), self.catalog.region().into());
        node_labels.insert("kwok.x-k8s.io/node".into(), "fake".into());
        let taints: Vec<_> = request
            .taints
            .iter()
            .chain(&request.startup_taints)
            .map(|t| json!({"key": t.key, "value": t.value, "effect": t.effect.to_string()}))
            .collect();
        let provider_id = format!("{SCHEME}{}", request.nodeclaim);
        let capacity = instance_type.capacity.clone();
        let allocatable = instance_type.allocatable();
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": request.nodeclaim, "labels": node_labels,
                "annotations": {"kwok.x-k8s.io/node": "fake"}},
            "spec": {"providerID": provider_id, "taints": taints},
        }))
        .map_err(|e| CloudError::Other(format!("building the Node: {e}")))?;
        let launched = Launched { provider_id, option: option.clone(), capacity, allocatable };
        Ok((node, launched))
    }
}

impl CloudProvider for KwokProvider {
    fn name(&self) -> &'static str {
        "kwok"
    }

    async fn create(&self, request: &LaunchRequest) -> Result<Launched, CloudError> {
        let (node, mut launched) = self.node_object(request)?;
        match self.nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            // Launched before (a restart between the launch and the claim's status): the same node.
            Err(e) if api_code(&e) == Some(409) => {
                let existing = self.nodes.get(&request.nodeclaim).await.map_err(other)?;
                let labels = existing.metadata.labels.unwrap_or_default();
                if let Some(o) = request.options.iter().find(|o| {
                    labels.get(labels::INSTANCE_TYPE) == Some(&o.instance_type)
                        && labels.get(labels::ZONE) == Some(&o.zone)
                        && labels.get(labels::CAPACITY_TYPE).map(String::as_str)
                            == Some(o.capacity_type.as_str())
                }) {
                    launched.option = o.clone();
                }
            }
            Err(e) => return Err(other(e)),
        }
        // The kubelet reports capacity and allocatable in the status.
        let status = json!({"status": {
            "capacity": launched.capacity.to_quantity_strings(),
            "allocatable": launched.allocatable.to_quantity_strings(),
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                "message": "kwok: starting"}],
        }});
        let fresh = self.nodes.get(&request.nodeclaim).await.map_err(other)?;
        let ready = fresh
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if !ready {
            self.nodes
                .patch_status(&request.nodeclaim, &PatchParams::default(), &Patch::Merge(status))
                .await
                .map_err(other)?;
        }
        Ok(launched)
    }

    async fn delete(&self, provider_id: &str) -> Result<(), CloudError> {
        let name = provider_id
            .strip_prefix(SCHEME)
            .ok_or_else(|| CloudError::Other(format!("{provider_id} is not a kwok providerID")))?;
        match self.nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Err(CloudError::NotFound(provider_id.to_owned())),
            Err(e) => Err(other(e)),
        }
    }

    /// The kwok nodes (the machines), each named after its NodeClaim.
    async fn list(&self) -> Result<Vec<Machine>, CloudError> {
        let nodes =
            self.nodes.list(&ListParams::default().labels("kwok.x-k8s.io/node=fake")).await.map_err(other)?;
        Ok(nodes
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .filter_map(|n| {
                let provider_id = n.spec.as_ref()?.provider_id.clone()?;
                provider_id.starts_with(SCHEME).then(|| Machine {
                    nodeclaim: n.metadata.name.clone(),
                    created_ms: n.metadata.creation_timestamp.as_ref().map(crate::controller::ms),
                    provider_id,
                    drifted: None,
                })
            })
            .collect())
    }
}
