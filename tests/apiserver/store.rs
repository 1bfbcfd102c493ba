//! The object store behind the in-memory API server: objects as JSON per resource, one resourceVersion
//! counter, the event history watches replay, finalizer-aware deletion and the status subresource split.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};

/// What the server knows about a resource type.
#[derive(Clone, Copy, Debug)]
pub struct ResourceType {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Writes to the main resource keep the stored status; `/status` writes change only the status.
    pub status_subresource: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn rt(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType { group, version, plural, kind, namespaced, status_subresource }
}

/// The resources served. Anything else is a 404, as on a real server without that API.
pub const RESOURCES: &[ResourceType] = &[
    rt("", "v1", "pods", "Pod", true, true),
    rt("", "v1", "nodes", "Node", false, true),
    rt("", "v1", "namespaces", "Namespace", false, true),
    rt("", "v1", "events", "Event", true, false),
    rt("", "v1", "persistentvolumes", "PersistentVolume", false, true),
    rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true),
    rt("", "v1", "podtemplates", "PodTemplate", true, false),
    rt("apps", "v1", "daemonsets", "DaemonSet", true, true),
    rt("apps", "v1", "deployments", "Deployment", true, true),
    rt("apps", "v1", "statefulsets", "StatefulSet", true, true),
    rt("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, true),
    rt("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    rt("events.k8s.io", "v1", "events", "Event", true, false),
    rt("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, true),
    rt("autoscaling.x-k8s.io", "v1beta1", "capacitybuffers", "CapacityBuffer", true, true),
    rt("cartwright.sh", "v1", "nodepools", "NodePool", false, true),
    rt("cartwright.sh", "v1", "nodeclaims", "NodeClaim", false, true),
    rt("aws.cartwright.sh", "v1", "ec2nodeclasses", "EC2NodeClass", false, true),
];

pub fn resource_type(group: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.plural == plural)
}

/// `group/plural`, the store's key for a resource type.
pub fn key(r: &ResourceType) -> String {
    format!("{}/{}", r.group, r.plural)
}

/// An API error as the server returns it (a `Status`).
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }

    pub fn not_found(r: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", r.plural))
    }

    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

/// One change, as watches see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: String,
    pub object: Value,
    /// The object before the change (`None` when created).
    pub previous: Option<Value>,
    pub deleted: bool,
}

/// How many changes watches can resume from; older resourceVersions get `410 Gone`.
const HISTORY: usize = 50_000;

#[derive(Debug, Default)]
pub struct Store {
    pub rv: u64,
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    pub history: VecDeque<Change>,
    /// Changes at or before this resourceVersion are gone from the history.
    pub compacted: u64,
    uid: u64,
}

pub fn name_of(object: &Value) -> &str {
    object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
}

pub fn namespace_of(object: &Value) -> &str {
    object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default()
}

pub fn resource_version_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Store {
    pub fn get(&self, r: &ResourceType, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(r))?.get(&(namespace.to_owned(), name.to_owned()))
    }

    /// Every object of `r`, in `namespace` when given, in name order.
    pub fn list(&self, r: &ResourceType, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .get(&key(r))
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .collect()
    }

    fn record(&mut self, r: &ResourceType, object: Value, previous: Option<Value>, deleted: bool) {
        self.history.push_back(Change { rv: self.rv, resource: key(r), object, previous, deleted });
        while self.history.len() > HISTORY {
            let dropped = self.history.pop_front().unwrap();
            self.compacted = dropped.rv;
        }
    }

    /// Forgets the whole history: every watch resuming from an older version gets `410 Gone`.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    fn stamp(&mut self, object: &mut Value) {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }

    pub fn create(
        &mut self,
        r: &ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::new(400, "BadRequest", "the body is not a JSON object"));
        }
        if object.get("metadata").is_none_or(|m| !m.is_object()) {
            object["metadata"] = json!({});
        }
        let mut name = name_of(&object).to_owned();
        if name.is_empty() {
            let prefix = object.pointer("/metadata/generateName").and_then(Value::as_str).unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            self.uid += 1;
            name = format!("{prefix}{:05x}", self.uid);
        }
        let namespace = if r.namespaced { namespace.to_owned() } else { String::new() };
        if self.get(r, &namespace, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.plural),
            ));
        }
        self.uid += 1;
        let metadata = &mut object["metadata"];
        metadata["name"] = json!(name);
        if r.namespaced {
            metadata["namespace"] = json!(namespace);
        }
        metadata["uid"] = json!(format!("00000000-0000-0000-0000-{:012x}", self.uid));
        metadata["creationTimestamp"] = json!(now());
        metadata["generation"] = json!(1);
        if let Some(m) = metadata.as_object_mut() {
            m.remove("deletionTimestamp");
        }
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind);
        self.stamp(&mut object);
        self.objects.entry(key(r)).or_default().insert((namespace, name), object.clone());
        self.record(r, object.clone(), None, false);
        Ok(object)
    }

    /// Stores `new` in place of the current object: 409 when `new` carries a stale resourceVersion (or
    /// `require_version` and it carries none). `status_only` takes only the new status; otherwise the
    /// status is kept when the type has a status subresource.
    pub fn update(
        &mut self,
        r: &ResourceType,
        namespace: &str,
        name: &str,
        mut new: Value,
        status_only: bool,
        require_version: bool,
    ) -> Result<Value, ApiError> {
        let namespace = if r.namespaced { namespace } else { "" };
        let old = self.get(r, namespace, name).cloned().ok_or_else(|| ApiError::not_found(r, name))?;
        let current = resource_version_of(&old).unwrap_or_default().to_owned();
        match resource_version_of(&new) {
            Some(v) if v != current => {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        r.plural
                    ),
                ));
            }
            None if require_version => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.resourceVersion: Invalid value: must be specified for an update",
                ));
            }
            _ => {}
        }
        if status_only {
            let status = new.get("status").cloned().unwrap_or(Value::Null);
            new = old.clone();
            new["status"] = status;
        } else {
            // Identity and server-owned metadata cannot change.
            for field in ["name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "generation"]
            {
                match old["metadata"].get(field) {
                    Some(v) => new["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if r.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            if new.get("spec") != old.get("spec") {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                new["metadata"]["generation"] = json!(generation);
            }
            new["apiVersion"] = json!(r.api_version());
            new["kind"] = json!(r.kind);
        }
        if new == old {
            return Ok(old);
        }
        self.stamp(&mut new);
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new.pointer("/metadata/finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty());
        if finalized {
            self.remove(r, namespace, name, new.clone(), old);
            return Ok(new);
        }
        self.objects.entry(key(r)).or_default().insert((namespace.to_owned(), name.to_owned()), new.clone());
        self.record(r, new.clone(), Some(old), false);
        Ok(new)
    }

    fn remove(&mut self, r: &ResourceType, namespace: &str, name: &str, last: Value, previous: Value) {
        self.objects.entry(key(r)).or_default().remove(&(namespace.to_owned(), name.to_owned()));
        // A DELETED event carries the object with the deletion's own resourceVersion.
        self.record(r, last, Some(previous), true);
    }

    /// Deletes the object, or marks it with a deletionTimestamp while finalizers remain.
    pub fn delete(&mut self, r: &ResourceType, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let namespace = if r.namespaced { namespace } else { "" };
        let old = self.get(r, namespace, name).cloned().ok_or_else(|| ApiError::not_found(r, name))?;
        let has_finalizers =
            old.pointer("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
        let mut new = old.clone();
        if has_finalizers {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok(old);
            }
            new["metadata"]["deletionTimestamp"] = json!(now());
            self.stamp(&mut new);
            self.objects
                .entry(key(r))
                .or_default()
                .insert((namespace.to_owned(), name.to_owned()), new.clone());
            self.record(r, new.clone(), Some(old), false);
        } else {
            self.stamp(&mut new);
            self.remove(r, namespace, name, new.clone(), old);
        }
        Ok(new)
    }
}
