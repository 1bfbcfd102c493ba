//! The in-memory API server against the real kube-rs client: what the controller tests rely on.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::apiserver::{ApiServer, Fault};

pub async fn client(server: &ApiServer) -> kube::Client {
    let mut config = kube::Config::new(format!("http://{}", server.addr).parse().unwrap());
    // As in the controller: a 429 (an eviction a PDB refuses, or throttling) comes back at once, callers retry.
    config.default_retry = false;
    kube::Client::try_from(config).unwrap()
}

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn crud_selectors_conflicts_finalizers_and_the_status_subresource() {
    let server = ApiServer::start().await;
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "default");
    let created = pods.create(&PostParams::default(), &pod("a", "web")).await.unwrap();
    pods.create(&PostParams::default(), &pod("b", "db")).await.unwrap();
    assert_eq!(api_code(pods.create(&PostParams::default(), &pod("a", "web")).await.unwrap_err()), 409);
    let web = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    assert_eq!(web.items.len(), 1);
    assert_eq!(pods.list(&ListParams::default().labels("app in (web,db)")).await.unwrap().items.len(), 2);
    assert_eq!(pods.list(&ListParams::default().fields("spec.nodeName=")).await.unwrap().items.len(), 2);

    // Optimistic concurrency: a replace from a stale copy is refused.
    let mut first = created.clone();
    first.metadata.labels.as_mut().unwrap().insert("v".into(), "1".into());
    pods.replace("a", &PostParams::default(), &first).await.unwrap();
    let mut stale = created.clone();
    stale.metadata.labels.as_mut().unwrap().insert("v".into(), "2".into());
    assert_eq!(api_code(pods.replace("a", &PostParams::default(), &stale).await.unwrap_err()), 409);

    // Merge and JSON patches; status only through the subresource.
    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().node_name.as_deref(), Some("n1"));
    assert!(patched.status.and_then(|s| s.phase).is_none(), "status is ignored on the main resource");
    let status = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}})))
        .await
        .unwrap();
    assert_eq!(status.status.unwrap().phase.as_deref(), Some("Running"));
    let json_patch: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels/tier", "value": "front"}]))
            .unwrap();
    let p = pods.patch("a", &PatchParams::default(), &Patch::<()>::Json(json_patch)).await.unwrap();
    assert_eq!(p.metadata.labels.unwrap()["tier"], "front");
    assert_eq!(pods.list(&ListParams::default().fields("spec.nodeName=n1")).await.unwrap().items.len(), 1);

    // Finalizers hold a deletion until removed.
    let nodes: Api<Node> = Api::all(client(&server).await);
    let node: Node =
        serde_json::from_value(json!({"metadata": {"name": "n1", "finalizers": ["test/hold"]}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    let held = nodes.get("n1").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    nodes
        .patch("n1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert_eq!(api_code(nodes.get("n1").await.unwrap_err()), 404);
}

#[tokio::test]
async fn watches_resume_get_410_after_compaction_and_survive_dropped_streams_and_faults() {
    let server = Arc::new(ApiServer::start().await);
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("a", "web")).await.unwrap();
    let list = pods.list(&ListParams::default()).await.unwrap();
    let version = list.metadata.resource_version.unwrap();
    pods.create(&PostParams::default(), &pod("b", "web")).await.unwrap();

    // Resuming from the list's version replays what happened since.
    let mut stream = pods.watch(&WatchParams::default().timeout(5), &version).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Added(p)) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
        other => panic!("expected b ADDED, got {other:?}"),
    }
    drop(stream);

    // An idle watch that allows bookmarks gets one carrying the current version.
    let params = WatchParams::default().timeout(5);
    assert!(params.bookmarks, "kube-rs asks for bookmarks by default");
    let mut stream = pods.watch(&params, &version).await.unwrap().boxed();
    let mut bookmark = None;
    while let Some(event) = stream.try_next().await.unwrap() {
        if let WatchEvent::Bookmark(b) = event {
            bookmark = Some(b.metadata.resource_version);
            break;
        }
    }
    assert!(bookmark.is_some_and(|v| v.parse::<u64>().unwrap() > version.parse::<u64>().unwrap()));
    drop(stream);

    // After compaction the old version is gone: 410 in an ERROR event.
    server.compact();
    let mut stream = pods.watch(&WatchParams::default().timeout(5), &version).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    drop(stream);

    // kube-runtime's watcher re-lists through 410s, dropped streams and injected 500s and 429s.
    let mut names =
        watcher(pods.clone(), watcher::Config::default()).default_backoff().applied_objects().boxed();
    let mut seen = std::collections::BTreeSet::new();
    let collect = async {
        while seen.len() < 2 {
            if let Some(Ok(p)) = names.next().await {
                seen.insert(p.metadata.name.unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect).await.unwrap();
    server.inject(Fault { method: Some(Method::GET), path_contains: "/pods?".into(), status: 500, count: 2 });
    server.inject(Fault { method: Some(Method::GET), path_contains: "/pods?".into(), status: 429, count: 1 });
    server.compact();
    server.drop_watches();
    pods.create(&PostParams::default(), &pod("c", "web")).await.unwrap();
    let next = async {
        let mut errors = 0;
        loop {
            // The watcher reports each failed request, then retries with backoff.
            match names.next().await {
                Some(Ok(p)) if p.metadata.name.as_deref() == Some("c") => return errors,
                Some(Err(_)) => errors += 1,
                _ => {}
            }
        }
    };
    let errors =
        tokio::time::timeout(Duration::from_secs(20), next).await.expect("the watcher recovers and sees c");
    assert_eq!(server.faults_injected(), 3, "every injected fault was hit");
    assert!(errors >= 1, "the faults surfaced as watcher errors");
}

#[tokio::test]
async fn eviction_respects_pod_disruption_budgets() {
    let server = ApiServer::start().await;
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &pod(name, "web")).await.unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    }
    server
        .create(
            "policy",
            "poddisruptionbudgets",
            "default",
            json!({"metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        )
        .unwrap();
    pods.evict("a", &EvictParams::default()).await.unwrap();
    let refused = pods.evict("b", &EvictParams::default()).await.unwrap_err();
    assert_eq!(api_code(refused), 429, "the budget keeps one web pod");
    assert!(pods.get("b").await.is_ok());
}
