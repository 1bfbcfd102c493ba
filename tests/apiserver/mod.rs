//! An in-memory Kubernetes API server for the end-to-end tests. It speaks the real HTTP protocol to the
//! real kube-rs client in the `cartwright` binary: list and watch with resourceVersions (resume, `410 Gone`
//! for compacted versions, bookmarks), create/get/replace, merge, JSON and apply patches, delete with
//! finalizers, optimistic concurrency (409), the status subresource, label and field selectors, the
//! Eviction subresource (429 when a PodDisruptionBudget forbids), Leases, and injected faults (5xx, 429,
//! dropped watches).
//!
//! Deliberate simplifications: strategic-merge and server-side-apply patches are applied as JSON merge
//! patches (without field ownership); lists are never paginated; pods are deleted at once (no kubelet).

pub mod scheduler;
mod selector;
pub mod store;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use selector::Selector;
use store::{ApiError, ResourceType, Store, resource_type};

/// A fault to inject: the next `count` requests whose method and path match answer `status`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: Option<Method>,
    pub path_contains: String,
    pub status: u16,
    pub count: usize,
}

#[derive(Debug, Default)]
struct Faults {
    rules: Vec<Fault>,
    /// Bumped to end every open watch.
    watch_generation: u64,
    /// Requests answered with an injected fault.
    injected: usize,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    /// The latest resourceVersion, for watches to wait on.
    latest: watch::Sender<u64>,
    /// Every request served: (method, path and query).
    log: Mutex<Vec<(Method, String)>>,
}

/// A running server; dropped, it stops.
#[derive(Debug)]
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    pub async fn start() -> ApiServer {
        let (latest, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            faults: Mutex::new(Faults::default()),
            latest,
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = shared.clone();
        let app =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { handle(state, method, uri, headers, body).await }
            });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let server = ApiServer { addr, shared, task };
        server.create("", "namespaces", "", json!({"metadata": {"name": "default"}})).unwrap();
        server
    }

    /// A kubeconfig pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: memory\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: memory\n  context:\n    cluster: memory\n    user: nobody\n\
             current-context: memory\nusers:\n- name: nobody\n  user: {{}}\n",
            self.addr
        )
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap()
    }

    fn changed(&self) {
        let rv = self.store().rv;
        self.shared.latest.send_replace(rv);
    }

    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = resource_type(group, plural).unwrap();
        self.store().get(r, namespace, name).cloned()
    }

    pub fn list(&self, group: &str, plural: &str) -> Vec<Value> {
        let r = resource_type(group, plural).unwrap();
        self.store().list(r, None).into_iter().cloned().collect()
    }

    pub fn create(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        object: Value,
    ) -> Result<Value, ApiError> {
        let r = resource_type(group, plural).unwrap();
        let out = self.store().create(r, namespace, object);
        self.changed();
        out
    }

    /// Reads, edits and writes back one object (with its own status), as a controller would.
    pub fn edit(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let r = resource_type(group, plural).unwrap();
        let out = {
            let mut store = self.store();
            let mut object =
                store.get(r, namespace, name).cloned().ok_or_else(|| ApiError::not_found(r, name))?;
            edit(&mut object);
            let status = object.get("status").cloned();
            let out = store.update(r, namespace, name, object, false, false)?;
            match status {
                Some(status) if r.status_subresource => {
                    let mut with_status = out.clone();
                    with_status["status"] = status;
                    store.update(r, namespace, name, with_status, true, false)
                }
                _ => Ok(out),
            }
        };
        self.changed();
        out
    }

    pub fn delete(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let r = resource_type(group, plural).unwrap();
        let out = self.store().delete(r, namespace, name);
        self.changed();
        out
    }

    /// Forgets the change history: watches resuming from before now get `410 Gone` and must re-list.
    pub fn compact(&self) {
        self.store().compact();
    }

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().rules.push(fault);
    }

    /// Removes the injected faults not yet used up.
    pub fn clear_faults(&self) {
        self.shared.faults.lock().unwrap().rules.clear();
    }

    /// Ends every open watch stream, as a restarting API server or a broken connection does.
    pub fn drop_watches(&self) {
        self.shared.faults.lock().unwrap().watch_generation += 1;
        self.shared.latest.send_modify(|_| {});
    }

    /// How many requests were answered with an injected fault.
    pub fn faults_injected(&self) -> usize {
        self.shared.faults.lock().unwrap().injected
    }

    /// Every request served so far: method and path with query.
    pub fn request_log(&self) -> Vec<(Method, String)> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Requests served so far whose method and path match.
    pub fn requests(&self, method: &Method, path_contains: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == method && p.contains(path_contains))
            .count()
    }
}

fn respond(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(e: ApiError) -> Response {
    respond(e.code, &e.status())
}

/// Where a request points.
struct Target {
    r: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Err(ApiError::new(404, "NotFound", format!("the server could not find {path}"))),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::new(404, "NotFound", format!("the server could not find {path}"))),
    };
    let r = resource_type(group, plural).ok_or_else(|| {
        ApiError::new(404, "NotFound", format!("the server could not find the resource {plural}"))
    })?;
    Ok(Target { r, namespace, name: name.map(str::to_owned), subresource: subresource.map(str::to_owned) })
}

fn query(uri: &Uri) -> Vec<(String, String)> {
    url_pairs(uri.query().unwrap_or_default())
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn injected_fault(shared: &Shared, method: &Method, path: &str) -> Option<u16> {
    let mut faults = shared.faults.lock().unwrap();
    let i = faults.rules.iter().position(|f| {
        f.count > 0 && f.method.as_ref().is_none_or(|m| m == method) && path.contains(&f.path_contains)
    })?;
    faults.rules[i].count -= 1;
    faults.injected += 1;
    Some(faults.rules[i].status)
}

async fn handle(shared: Arc<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let full = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    shared.log.lock().unwrap().push((method.clone(), full.clone()));
    if let Some(code) = injected_fault(&shared, &method, &full) {
        let reason = if code == 429 { "TooManyRequests" } else { "InternalError" };
        let mut response = error(ApiError::new(code, reason, "injected fault"));
        if code == 429 {
            response.headers_mut().insert(header::RETRY_AFTER, "1".parse().unwrap());
        }
        return response;
    }
    let target = match target(&path) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let params = query(&uri);
    let result = if method == Method::GET && target.name.is_none() {
        let watching = matches!(param(&params, "watch"), Some("true" | "1"));
        return if watching {
            watch_response(shared, &target, &params)
        } else {
            list(&shared, &target, &params)
        };
    } else {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let out = write(&shared, &method, &target, content_type, &params, &body);
        let rv = shared.store.lock().unwrap().rv;
        shared.latest.send_replace(rv);
        out
    };
    match result {
        Ok((code, body)) => respond(code, &body),
        Err(e) => error(e),
    }
}

fn selectors(params: &[(String, String)]) -> Result<(Selector, Selector), ApiError> {
    let bad = |e| ApiError::new(400, "BadRequest", e);
    let labels = Selector::parse(param(params, "labelSelector").unwrap_or(""), false).map_err(bad)?;
    let fields = Selector::parse(param(params, "fieldSelector").unwrap_or(""), true).map_err(bad)?;
    Ok((labels, fields))
}

fn list(shared: &Shared, target: &Target, params: &[(String, String)]) -> Response {
    let (labels, fields) = match selectors(params) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let store = shared.store.lock().unwrap();
    let items: Vec<&Value> = store
        .list(target.r, target.namespace.as_deref())
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .collect();
    respond(
        200,
        &json!({
            "apiVersion": target.r.api_version(),
            "kind": format!("{}List", target.r.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON body: {e}")))
}

fn write(
    shared: &Shared,
    method: &Method,
    target: &Target,
    content_type: &str,
    params: &[(String, String)],
    body: &Bytes,
) -> Result<(u16, Value), ApiError> {
    let r = target.r;
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut store = shared.store.lock().unwrap();
    let Some(name) = target.name.as_deref() else {
        return if *method == Method::POST {
            Ok((201, store.create(r, &namespace, parse_body(body)?)?))
        } else {
            Err(ApiError::new(405, "MethodNotAllowed", format!("{method} on a collection")))
        };
    };
    let status_only = match target.subresource.as_deref() {
        None => false,
        Some("status") if r.status_subresource => true,
        Some("eviction") if r.plural == "pods" && *method == Method::POST => {
            return evict(&mut store, &namespace, name);
        }
        Some(other) => {
            return Err(ApiError::new(404, "NotFound", format!("no subresource {other} on {}", r.plural)));
        }
    };
    let ns = if r.namespaced { namespace.as_str() } else { "" };
    match *method {
        Method::GET => {
            store.get(r, ns, name).cloned().map(|v| (200, v)).ok_or_else(|| ApiError::not_found(r, name))
        }
        Method::PUT => {
            let object = parse_body(body)?;
            if store::name_of(&object) != name {
                return Err(ApiError::new(400, "BadRequest", "the name in the body does not match the URL"));
            }
            Ok((200, store.update(r, ns, name, object, status_only, true)?))
        }
        Method::PATCH => {
            let patch = parse_body(body)?;
            let apply = content_type.starts_with("application/apply-patch");
            let Some(current) = store.get(r, ns, name).cloned() else {
                if apply && !status_only {
                    return Ok((201, store.create(r, &namespace, patch)?));
                }
                return Err(ApiError::not_found(r, name));
            };
            let mut patched = current.clone();
            let precondition = store::resource_version_of(&patch).is_some();
            if content_type.starts_with("application/json-patch+json") {
                let ops: json_patch::Patch = serde_json::from_value(patch)
                    .map_err(|e| ApiError::new(400, "BadRequest", format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut patched, &ops).map_err(|e| {
                    ApiError::new(422, "Invalid", format!("the JSON patch does not apply: {e}"))
                })?;
            } else {
                // merge-patch, strategic-merge-patch and apply-patch: a JSON merge patch here.
                json_patch::merge(&mut patched, &patch);
            }
            if !precondition {
                patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            }
            Ok((200, store.update(r, ns, name, patched, status_only, false)?))
        }
        Method::DELETE => {
            let _ = params;
            Ok((200, store.delete(r, ns, name)?))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported"))),
    }
}

/// The Eviction subresource: deletes the pod unless a PodDisruptionBudget selecting it has no disruption
/// left, computed from the pods it selects now (healthy = Running and not being deleted).
fn evict(store: &mut Store, namespace: &str, name: &str) -> Result<(u16, Value), ApiError> {
    let pods_type = resource_type("", "pods").unwrap();
    let pod =
        store.get(pods_type, namespace, name).cloned().ok_or_else(|| ApiError::not_found(pods_type, name))?;
    if pod.pointer("/metadata/deletionTimestamp").is_none() {
        let pdb_type = resource_type("policy", "poddisruptionbudgets").unwrap();
        for pdb in store.list(pdb_type, Some(namespace)) {
            let selector = label_selector(pdb.pointer("/spec/selector").unwrap_or(&Value::Null));
            if !selector.matches(&pod) {
                continue;
            }
            let selected: Vec<&Value> =
                store.list(pods_type, Some(namespace)).into_iter().filter(|p| selector.matches(p)).collect();
            let expected = selected.len() as i64;
            let healthy = selected
                .iter()
                .filter(|p| {
                    p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                        && p.pointer("/metadata/deletionTimestamp").is_none()
                })
                .count() as i64;
            let allowed = if let Some(min) = pdb.pointer("/spec/minAvailable") {
                healthy - int_or_percent(min, expected, true)
            } else if let Some(max) = pdb.pointer("/spec/maxUnavailable") {
                int_or_percent(max, expected, false) - (expected - healthy)
            } else {
                1
            };
            let pod_healthy = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running");
            if allowed < 1 && pod_healthy {
                let pdb_name = store::name_of(pdb);
                return Err(ApiError::new(
                    429,
                    "TooManyRequests",
                    format!("Cannot evict pod as it would violate the pod's disruption budget {pdb_name}."),
                ));
            }
        }
    }
    store.delete(pods_type, namespace, name)?;
    Ok((201, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})))
}

fn int_or_percent(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// A `metav1.LabelSelector` object as a selector.
pub fn label_selector(selector: &Value) -> Selector {
    let mut terms = Vec::new();
    for (k, v) in selector.get("matchLabels").and_then(Value::as_object).into_iter().flatten() {
        terms.push(format!("{k}={}", v.as_str().unwrap_or_default()));
    }
    for e in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> =
            e["values"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        terms.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "DoesNotExist" => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    Selector::parse(&terms.join(","), false).unwrap_or_default()
}

/// One watch: replays changes after the requested resourceVersion, then streams new ones, as
/// newline-delimited JSON events, until `timeoutSeconds` or a dropped-watch fault.
fn watch_response(shared: Arc<Shared>, target: &Target, params: &[(String, String)]) -> Response {
    let (labels, fields) = match selectors(params) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let bookmarks = param(params, "allowWatchBookmarks") == Some("true");
    let timeout = param(params, "timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(300u64);
    let requested: Option<u64> =
        param(params, "resourceVersion").filter(|v| !v.is_empty()).and_then(|v| v.parse().ok());
    let r = target.r;
    let namespace = target.namespace.clone();
    let generation = shared.faults.lock().unwrap().watch_generation;
    let mut first = Vec::new();
    let cursor = {
        let store = shared.store.lock().unwrap();
        match requested {
            Some(v) if v != 0 && v < store.compacted => {
                let gone = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {v} ({})", store.compacted),
                );
                first.push(json!({"type": "ERROR", "object": gone.status()}));
                u64::MAX
            }
            Some(v) if v != 0 => v,
            _ => {
                // No version: the current objects as ADDED events, then changes.
                for o in store.list(r, namespace.as_deref()) {
                    if labels.matches(o) && fields.matches(o) {
                        first.push(json!({"type": "ADDED", "object": o}));
                    }
                }
                store.rv
            }
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let rx = shared.latest.subscribe();
    struct State {
        shared: Arc<Shared>,
        rx: watch::Receiver<u64>,
        cursor: u64,
        first: Vec<Value>,
        done: bool,
    }
    let state = State { shared, rx, cursor, first, done: false };
    let stream = futures::stream::unfold(state, move |mut s| {
        let (labels, fields, namespace) = (labels.clone(), fields.clone(), namespace.clone());
        async move {
            if s.done {
                return None;
            }
            if !s.first.is_empty() {
                let chunk = lines(&std::mem::take(&mut s.first));
                if s.cursor == u64::MAX {
                    s.done = true;
                }
                return Some((Ok::<_, std::io::Error>(chunk), s));
            }
            loop {
                if s.shared.faults.lock().unwrap().watch_generation != generation {
                    return None;
                }
                s.rx.borrow_and_update();
                let mut events = Vec::new();
                let expired = s.cursor < s.shared.store.lock().unwrap().compacted;
                if expired {
                    let gone = ApiError::new(410, "Expired", "too old resource version");
                    s.done = true;
                    return Some((Ok(lines(&[json!({"type": "ERROR", "object": gone.status()})])), s));
                }
                {
                    let store = s.shared.store.lock().unwrap();
                    let key = store::key(r);
                    let start = store.history.partition_point(|c| c.rv <= s.cursor);
                    for change in store.history.range(start..) {
                        s.cursor = change.rv;
                        if change.resource != key
                            || namespace.as_deref().is_some_and(|n| n != store::namespace_of(&change.object))
                        {
                            continue;
                        }
                        let now = labels.matches(&change.object) && fields.matches(&change.object);
                        let before =
                            change.previous.as_ref().is_some_and(|p| labels.matches(p) && fields.matches(p));
                        let kind = match (change.deleted, before, now) {
                            (true, true, _) | (true, _, true) | (false, true, false) => "DELETED",
                            (false, false, true) => "ADDED",
                            (false, true, true) => "MODIFIED",
                            _ => continue,
                        };
                        events.push(json!({"type": kind, "object": change.object}));
                    }
                    if events.is_empty() {
                        s.cursor = s.cursor.max(store.rv);
                    }
                }
                if !events.is_empty() {
                    return Some((Ok(lines(&events)), s));
                }
                let wait = tokio::time::timeout(Duration::from_secs(1), s.rx.changed());
                match tokio::time::timeout_at(deadline, wait).await {
                    Err(_) => return None,
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(_))) => return None,
                    Ok(Err(_)) if bookmarks => {
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "apiVersion": r.api_version(), "kind": r.kind,
                            "metadata": {"resourceVersion": s.cursor.to_string()}}});
                        return Some((Ok(lines(&[bookmark])), s));
                    }
                    Ok(Err(_)) => {}
                }
            }
        }
    });
    Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn lines(events: &[Value]) -> Bytes {
    let mut out = String::new();
    for e in events {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    Bytes::from(out)
}
